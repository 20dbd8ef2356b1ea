//! A merge computed by the host's fused evaluator and by the device evaluator (candle's ops, run
//! here on `Device::Cpu`) writes the same bytes and reports the same NaN/Inf counts, in every
//! output dtype: the counts are of the f32 results before their rounding into the file dtype,
//! computed here independently. So `--check-finite` gives one answer for one file.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use checkpoint_save::merge::{merge, Operation, Recipe};
use checkpoint_save::synthetic::{self, SyntheticOptions};
use checkpoint_save::{
    save_to_path, Arch, ComponentDtypes, ComponentKind, Components, Error, SaveOptions, Saved,
    TargetDtype,
};

/// Pairs `(a, b)` planted at the start of the merged tensor: every kind of sum `a + b`.
const PLANTED: [(f32, f32); 9] = [
    (f32::NAN, 1.0),                    // NaN in an input
    (f32::INFINITY, 1.0),               // Inf in an input: fp8 saturates it, still counted
    (f32::INFINITY, f32::NEG_INFINITY), // NaN made by the arithmetic
    (3e38, 3e38),                       // Inf made by the f32 arithmetic, before the rounding
    (60000.0, 60000.0),                 // finite; overflows f16 in the rounding: not counted
    (-1e5, 0.5),                        // finite; overflows f16 and e5m2's range: not counted
    (400.0, 100.0),                     // finite; saturates in e4m3: not counted
    (f32::MAX, 0.0),                    // finite; rounds up to Inf in bf16: not counted
    (1e-8, 1e-8),                       // finite, subnormal in f16
];

fn tiny(seed: u64) -> Components {
    let o = SyntheticOptions::new(Arch::Sd15)
        .tiny()
        .with_seed(seed)
        .with_dtype(DType::F32);
    synthetic::build(&o, &Device::Cpu).unwrap()
}

/// `c` with the denoiser's tensors replaced by `f` of them.
fn with_model(c: &Components, f: impl Fn(&str, &Tensor) -> Tensor) -> Components {
    let model: BTreeMap<String, Tensor> = c
        .get(ComponentKind::Model)
        .unwrap()
        .iter()
        .map(|(k, t)| (k.clone(), f(k, t.as_candle().unwrap())))
        .collect();
    let mut out = c.clone();
    out.set(ComponentKind::Model, model);
    out
}

/// Two tiny f32 SD1.5 models, `PLANTED` written into the first elements of one tensor; returns
/// them, the tensor's key, and the count of non-finite sums `a + b` of that tensor (f32, here).
fn inputs() -> (Components, Components, String, u64) {
    let (a, b) = (tiny(1), tiny(2));
    let key = a
        .get(ComponentKind::Model)
        .unwrap()
        .iter()
        .find(|(_, t)| t.info().numel() >= 64)
        .map(|(k, _)| k.clone())
        .unwrap();
    let planted = key.as_str();
    let plant = |side: fn(&(f32, f32)) -> f32| {
        move |k: &str, t: &Tensor| {
            if k != planted {
                return t.clone();
            }
            let mut v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            for (x, pair) in v.iter_mut().zip(&PLANTED) {
                *x = side(pair);
            }
            Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap()
        }
    };
    let a = with_model(&a, plant(|p| p.0));
    let b = with_model(&b, plant(|p| p.1));
    let values = |c: &Components| -> Vec<f32> {
        let t = c.candle(ComponentKind::Model, &key).unwrap();
        t.flatten_all().unwrap().to_vec1().unwrap()
    };
    let want = values(&a)
        .iter()
        .zip(values(&b))
        .filter(|(x, y)| !(**x + y).is_finite())
        .count();
    (a, b, key, want as u64)
}

/// Saves `c` as `dir/<sub>/x.safetensors` (one file name for all, so headers can be compared).
fn save(
    c: &Components,
    dir: &Path,
    sub: &str,
    dtype: TargetDtype,
    check: bool,
) -> Result<(Saved, Vec<u8>), Error> {
    let mut opts = SaveOptions {
        dtypes: ComponentDtypes::all(dtype),
        check_finite: check,
        ..SaveOptions::default()
    };
    opts.metadata.provenance = false;
    std::fs::create_dir_all(dir.join(sub)).unwrap();
    let path = dir.join(sub).join("x.safetensors");
    let saved = save_to_path(c, &path, &opts)?;
    let bytes = std::fs::read(&path).unwrap();
    Ok((saved, bytes))
}

/// Regression (issue 20): the device evaluator rounded to the output dtype first and counted
/// what it rounded to (18,434 overflows of an f16 save counted where the host counted 0, an fp8
/// save's Inf saturated out of sight), so `--check-finite` refused one of two identical files.
#[test]
fn both_evaluators_write_the_same_bytes_and_counts() {
    let (a, b, key, want) = inputs();
    assert_eq!(want, 4, "NaN, Inf, Inf − Inf and 3e38 + 3e38");
    let host = Recipe {
        operation: Operation::Add,
        ..Recipe::default()
    };
    let device = Recipe {
        device: Some(Device::Cpu),
        ..host.clone()
    };
    let (h, _) = merge(&[&a, &b], &[], &host).unwrap();
    let (d, _) = merge(&[&a, &b], &[], &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for dtype in [
        TargetDtype::F32,
        TargetDtype::F16,
        TargetDtype::BF16,
        TargetDtype::F8E4M3,
        TargetDtype::F8E5M2,
    ] {
        let (hs, hb) = save(&h, dir.path(), &format!("host-{dtype}"), dtype, false).unwrap();
        let (ds, db) = save(&d, dir.path(), &format!("device-{dtype}"), dtype, false).unwrap();
        assert!(
            hb == db,
            "{dtype}: the two evaluators wrote different bytes"
        );
        assert_eq!(hs.non_finite, ds.non_finite, "{dtype}");
        let name = format!("model.diffusion_model.{key}");
        assert_eq!(hs.non_finite, vec![(name.clone(), want)], "{dtype}");
        // `--check-finite` refuses both, naming the same tensor and count, and writes nothing.
        for (which, c) in [("host", &h), ("device", &d)] {
            let path = format!("checked-{which}-{dtype}");
            match save(c, dir.path(), &path, dtype, true) {
                Err(Error::NonFinite {
                    first, first_count, ..
                }) => assert_eq!(
                    (first, first_count),
                    (name.clone(), want),
                    "{which} {dtype}"
                ),
                other => panic!("{which} {dtype}: {:?}", other.map(|s| s.0.non_finite)),
            }
            assert!(!dir.path().join(&path).join("x.safetensors").exists());
        }
    }
}

/// Finite values that only overflow in the rounding into the file dtype are not counted, by
/// either evaluator: `--check-finite` accepts both files.
#[test]
fn overflow_in_the_final_rounding_is_not_counted_by_either_evaluator() {
    // Every sum is 2^17 or more: Inf in f16 (18,434 of them in the model).
    let big = |c: &Components| with_model(c, |_, t| (t.abs().unwrap() + 65536.0).unwrap());
    let (a, b) = (big(&tiny(3)), big(&tiny(4)));
    let dir = tempfile::tempdir().unwrap();
    for device in [None, Some(Device::Cpu)] {
        let recipe = Recipe {
            operation: Operation::Add,
            device: device.clone(),
            ..Recipe::default()
        };
        let (m, _) = merge(&[&a, &b], &[], &recipe).unwrap();
        let name = format!("{}", device.is_some());
        let (saved, bytes) = save(&m, dir.path(), &name, TargetDtype::F16, true).unwrap();
        assert!(
            saved.non_finite.is_empty(),
            "{device:?}: {:?}",
            saved.non_finite
        );
        // The file does hold Inf for them: the count is of the values saved, not of the file.
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (_, view) = st
            .tensors()
            .into_iter()
            .find(|(k, _)| k.starts_with("model.diffusion_model."))
            .unwrap();
        assert!(view
            .data()
            .chunks_exact(2)
            .all(|h| u16::from_le_bytes([h[0], h[1]]) & 0x7fff == 0x7c00));
    }
}
