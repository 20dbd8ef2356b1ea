use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Device, DeviceLocation, Tensor};

use super::*;
use crate::layout::{self, GenericPrefixes, LayoutKind};
use crate::model::merged::{Merged, Patch, PatchValue};
use crate::model::{Components, InputMap, Prediction};
use crate::plan::{HostBytes, PlanOptions};

const CUDA: DeviceLocation = DeviceLocation::Cuda { gpu_id: 0 };
const METAL: DeviceLocation = DeviceLocation::Metal { gpu_id: 0 };

fn piece(source: PieceSource, src: Dtype, dst: Dtype, units: usize) -> Piece {
    Piece {
        source,
        src_dtype: src,
        dst_dtype: dst,
        start: 0,
        units,
        tensor: 0,
    }
}

fn candle(t: &Tensor) -> PieceSource {
    PieceSource::Candle {
        tensor: t.clone(),
        offset: 0,
    }
}

/// The CPU standing in for a device that has a pipeline.
fn on_cpu(p: &Piece) -> bool {
    source_on(p, Device::is_cpu).is_some()
}

#[test]
fn the_kernels_codes_cover_the_cast_targets() {
    for d in [
        Dtype::F32,
        Dtype::F16,
        Dtype::BF16,
        Dtype::F8_E4M3,
        Dtype::F8_E5M2,
    ] {
        assert!(Code::of(d).is_some_and(Code::is_target));
    }
    assert!(Code::of(Dtype::F4).is_none());
    assert!(!Code::F64.is_target());
}

#[test]
fn a_pipeline_owns_candle_pieces_in_dtypes_its_kernel_handles() {
    let f32s = Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap();
    let f64s = Tensor::zeros(8, DType::F64, &Device::Cpu).unwrap();
    let ints = Tensor::zeros(8, DType::I64, &Device::Cpu).unwrap();
    let f4 = Tensor::from_raw_buffer(&[0u8; 4], DType::F4, &[8], &Device::Cpu).unwrap();
    for (p, owned) in [
        (piece(candle(&f32s), Dtype::F32, Dtype::F16, 8), true),
        (piece(candle(&f32s), Dtype::F32, Dtype::F8_E5M2, 8), true),
        (piece(candle(&f32s), Dtype::F32, Dtype::F32, 8), true),
        (piece(candle(&f64s), Dtype::F64, Dtype::BF16, 8), true),
        (piece(candle(&f64s), Dtype::F64, Dtype::F64, 8), true),
        (piece(candle(&ints), Dtype::I64, Dtype::I64, 8), true),
        // The kernel encodes no f64, and reads no packed format.
        (piece(candle(&f32s), Dtype::F32, Dtype::F64, 8), false),
        (piece(candle(&f4), Dtype::F4, Dtype::F4, 4), false),
        // A piece whose source dtype is not the tensor's is not the kernel's to read.
        (piece(candle(&f32s), Dtype::F16, Dtype::F16, 8), false),
    ] {
        assert_eq!(on_cpu(&p), owned, "{p:?}");
        // A device without a pipeline (every device in this build's CPU tests) owns nothing.
        assert!(source_on(&p, |_| false).is_none());
        assert_eq!(
            pipeline_source(&p).is_some(),
            cuda::has_pipeline(&Device::Cpu) && owned
        );
    }
}

#[test]
fn only_candle_tensors_as_held_or_transposed_are_owned() {
    let t = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
    let held = InputTensor::Candle(t.clone());
    let transposed = piece(
        PieceSource::Transposed {
            tensor: held.clone(),
            offset: 0,
        },
        Dtype::F32,
        Dtype::F16,
        8,
    );
    assert!(on_cpu(&transposed));
    // A transpose of a join is made on the host from the parts' bytes.
    let joined = InputTensor::joined(
        "j",
        vec![(held.clone(), 0..4), (held.clone(), 4..8)],
        vec![2, 4],
    )
    .unwrap();
    let of_joined = PieceSource::Transposed {
        tensor: joined,
        offset: 0,
    };
    assert!(!on_cpu(&piece(of_joined, Dtype::F32, Dtype::F16, 8)));
    let patch = Patch {
        strength: 1.0,
        strength_model: 1.0,
        value: PatchValue::Tensor(held.clone()),
    };
    let merged = Merged::new("m", held, vec![patch]).unwrap();
    let merged = PieceSource::Merged {
        merged: Arc::new(merged),
        offset: 0,
    };
    assert!(!on_cpu(&piece(merged, Dtype::F32, Dtype::F16, 8)));
    let bytes: HostBytes = Arc::new(vec![0u8; 32]);
    let host = PieceSource::Host { bytes, offset: 0 };
    assert!(!on_cpu(&piece(host, Dtype::F32, Dtype::F32, 8)));
}

/// Regression (issue 20): the save asked "is any tensor a CUDA candle tensor" of the held
/// tensors, the writer asked of the planned pieces, so pieces of a `Joined` or `Transposed`
/// tensor were grouped for a pipeline while the save chose direct I/O, whose units wrote them a
/// second time and counted their NaNs twice. Both now ask the pieces: the parts of a join and a
/// transposed tensor are owned, a merge is not.
#[test]
fn nested_candle_tensors_are_owned_through_their_planned_pieces() {
    let a = Tensor::arange(0f32, 12., &Device::Cpu).unwrap();
    let b = Tensor::arange(12f32, 24., &Device::Cpu).unwrap();
    let square = Tensor::arange(0f32, 6., &Device::Cpu)
        .unwrap()
        .reshape((2, 3))
        .unwrap();
    let joined = InputTensor::joined(
        "qkv",
        vec![
            (InputTensor::Candle(a.clone()), 4..12),
            (InputTensor::Candle(b.clone()), 0..4),
        ],
        vec![3, 4],
    )
    .unwrap();
    let merged = Merged::new(
        "m",
        InputTensor::Candle(a.clone()),
        vec![Patch {
            strength: 0.5,
            strength_model: 0.5,
            value: PatchValue::Tensor(InputTensor::Candle(b.clone())),
        }],
    )
    .unwrap();
    let mut model = InputMap::new();
    model.insert("joined".into(), joined);
    model.insert("proj".into(), InputTensor::Candle(square).transposed());
    model.insert("merged".into(), InputTensor::Merged(Arc::new(merged)));
    let mut c = Components::default();
    c.set_inputs(crate::model::ComponentKind::Model, model);
    let kind = LayoutKind::Generic(GenericPrefixes::default());
    let l = layout::layout(&kind, &c.shapes(), Prediction::Flow).unwrap();
    let opts = PlanOptions {
        dtypes: crate::plan::ComponentDtypes::all(crate::model::dtype::TargetDtype::F16),
        ..PlanOptions::default()
    };
    let plan = Plan::new(&l, &c, &BTreeMap::new(), &opts).unwrap();
    let owned: Vec<(String, bool)> = plan
        .pieces()
        .iter()
        .map(|p| (plan.tensors()[p.tensor].name.clone(), on_cpu(p)))
        .collect();
    let name = |k: &str| format!("model.diffusion_model.{k}");
    assert_eq!(
        owned,
        vec![
            (name("joined"), true),
            (name("joined"), true),
            (name("merged"), false),
            (name("proj"), true),
        ]
    );
}

#[test]
fn each_device_casts_only_what_it_rounds_as_the_host_does() {
    let all_from = [
        DType::F64,
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::F8E4M3,
    ];
    let all_to = [
        Dtype::F64,
        Dtype::F32,
        Dtype::F16,
        Dtype::BF16,
        Dtype::F8_E4M3,
        Dtype::F8_E5M2,
    ];
    let cuda_casts = [
        (DType::F32, Dtype::F16, DType::F16),
        (DType::F32, Dtype::BF16, DType::BF16),
        (DType::F64, Dtype::F32, DType::F32),
    ];
    for from in all_from {
        for to in all_to {
            // The host casts in the fill itself; Metal has no fp8 or f64 cast, and copies
            // to host memory it shares (issue 20: `--dtype f8_e4m3` on Metal failed here).
            assert_eq!(device_cast(&DeviceLocation::Cpu, from, to), None);
            assert_eq!(device_cast(&METAL, from, to), None, "{from:?} -> {to}");
            let want = cuda_casts
                .iter()
                .find(|(f, t, _)| *f == from && *t == to)
                .map(|c| c.2);
            assert_eq!(device_cast(&CUDA, from, to), want, "{from:?} -> {to}");
            if let Some(d) = want {
                // Only casts that shrink what crosses the bus, into the file dtype itself.
                assert!(d.size_in_bytes() < from.size_in_bytes());
                assert_eq!(file_dtype(d), to);
            }
        }
    }
}

/// Values at every edge of the casts: NaN, ±Inf, finite values that overflow f16 (and bf16),
/// values that round, subnormals.
fn edges() -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        1.0,
        0.1,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        65504.0,
        65519.0,
        65520.0,
        -1e5,
        448.0,
        500.0,
        f32::MAX,
        -f32::MAX,
        1e-8,
        1e-40,
        f32::from_bits(0x7f80_0001),
    ];
    v.extend((0..1000).map(|i| (i as f32 * 0.731).sin() * 70000.0));
    v
}

fn count_of(values: &[f32]) -> u64 {
    values.iter().filter(|v| !v.is_finite()).count() as u64
}

fn host_cast(src: &Tensor, dst: Dtype) -> (Vec<u8>, u64) {
    let bytes = crate::offload::host_bytes(&InputTensor::Candle(src.clone())).unwrap();
    let mut out = vec![0u8; src.elem_count() * unit_width(dst)];
    let n = cast::convert("t", &bytes, file_dtype(src.dtype()), &mut out, dst).unwrap();
    (out, n)
}

/// Regression (issue 20): the device cast first and counted the NaN/Inf of what it rounded to,
/// so a finite value that overflowed f16 was counted there and not on the host, and an Inf that
/// fp8 saturates was not counted at all. Cast on the device (the CPU standing in) or on the
/// host, the count is of the values before the rounding, and the bytes are the host cast's.
#[test]
fn a_range_cast_on_the_device_counts_before_the_rounding() {
    let values = edges();
    let n = values.len();
    let t = Tensor::from_vec(values.clone(), n, &Device::Cpu).unwrap();
    let range = 3..n - 5;
    let want_count = count_of(&values[range.clone()]);
    assert!(want_count >= 4);
    let sub = t.narrow(0, range.start, range.len()).unwrap();
    for (dst, cast_on_device) in [
        (Dtype::F16, Some(DType::F16)),
        (Dtype::BF16, Some(DType::BF16)),
        (Dtype::F16, None),
        (Dtype::F8_E4M3, None),
        (Dtype::F8_E5M2, None),
        (Dtype::F32, None),
    ] {
        let mut out = vec![0u8; range.len() * unit_width(dst)];
        let got = read_range(&t, range.clone(), "t", &mut out, dst, cast_on_device).unwrap();
        assert_eq!(
            got, want_count,
            "{dst} cast on the device: {cast_on_device:?}"
        );
        let (want, host_count) = host_cast(&sub, dst);
        assert_eq!(got, host_count, "{dst}");
        assert_eq!(out, want, "{dst} cast on the device: {cast_on_device:?}");
    }
    // f64 → f32: 1e300 overflows to Inf in the file, and is not counted; NaN is.
    let wide = Tensor::new(&[1e300f64, f64::NAN, 1.5, -1e-320], &Device::Cpu).unwrap();
    let mut out = vec![0u8; 16];
    let got = read_range(&wide, 0..4, "w", &mut out, Dtype::F32, Some(DType::F32)).unwrap();
    assert_eq!(got, 1);
    assert_eq!(
        f32::from_le_bytes(out[..4].try_into().unwrap()),
        f32::INFINITY
    );
    assert_eq!(f32::from_le_bytes(out[8..12].try_into().unwrap()), 1.5);
}

#[test]
fn counts_on_the_device_are_of_nan_and_both_infinities() {
    let values = edges();
    let t = Tensor::from_vec(values.clone(), values.len(), &Device::Cpu).unwrap();
    assert_eq!(count_non_finite(&t).unwrap(), count_of(&values));
    // In the source's own dtype: f32 → f16 overflow makes Infs that the f16 tensor counts.
    let h = t.to_dtype(DType::F16).unwrap();
    let in_f16: Vec<f32> = h.to_dtype(DType::F32).unwrap().to_vec1().unwrap();
    assert!(count_of(&in_f16) > count_of(&values));
    assert_eq!(count_non_finite(&h).unwrap(), count_of(&in_f16));
    let f64s = t.to_dtype(DType::F64).unwrap();
    assert_eq!(count_non_finite(&f64s).unwrap(), count_of(&values));
    // A view: only its own elements.
    assert_eq!(count_non_finite(&t.narrow(0, 3, 3).unwrap()).unwrap(), 2);
}
