//! Save → load round trips for every architecture, and the loader's errors on bad files.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use checkpoint_save::synthetic::{self, SyntheticOptions};
use checkpoint_save::Error;
use checkpoint_save::{inspect, load_checkpoint, load_tensors};
use checkpoint_save::{save, LayoutChoice, SaveOptions, Saved};
use checkpoint_save::{Arch, Prediction};
use checkpoint_save::{ComponentKind, Components};
use common::{bytes_of, FIXTURES};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

fn tiny(arch: Arch) -> Components {
    synthetic::build(&SyntheticOptions::new(arch).with_max_dim(4), &Device::Cpu).unwrap()
}

fn save_in(dir: &Path, c: &Components, layout: LayoutChoice, p: Option<Prediction>) -> Saved {
    let opts = SaveOptions {
        output_dir: dir.to_path_buf(),
        layout,
        prediction: p,
        ..Default::default()
    };
    save(c, &opts).unwrap()
}

fn keys(c: &Components, kind: ComponentKind) -> BTreeSet<String> {
    c.get(kind)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn every_arch_loads_back_its_components() {
    for arch in Arch::ALL {
        let dir = tempfile::tempdir().unwrap();
        let original = tiny(arch);
        let saved = save_in(dir.path(), &original, LayoutChoice::Auto, None);
        let loaded = load_checkpoint(&saved.path, &Device::Cpu, None).unwrap();
        assert_eq!(loaded.arch, Some(arch));
        assert!(loaded.leftover.is_empty(), "{arch}: {:?}", loaded.leftover);
        let mut missing = Vec::new();
        for kind in ComponentKind::ALL {
            let got = keys(&loaded.components, kind);
            let want = keys(&original, kind);
            assert!(
                got.is_subset(&want),
                "{arch} {kind}: {:?}",
                got.difference(&want)
            );
            missing.extend(want.difference(&got).map(|k| (kind, k.clone())));
            for k in &got {
                let (a, b) = (
                    loaded.components.candle(kind, k).unwrap(),
                    original.candle(kind, k).unwrap(),
                );
                assert_eq!((a.dims(), a.dtype()), (b.dims(), b.dtype()), "{arch} {k}");
                assert_eq!(bytes_of(a), bytes_of(b), "{arch} {k}");
            }
        }
        let mut dropped = saved.dropped.clone();
        dropped.sort();
        assert_eq!(
            missing, dropped,
            "{arch}: missing keys are the dropped ones"
        );
        if matches!(arch, Arch::Sd15 | Arch::Sdxl) {
            let clip = ComponentKind::Clip;
            assert_eq!(
                dropped,
                vec![
                    (clip, "clip_l.logit_scale".to_string()),
                    (
                        clip,
                        "clip_l.transformer.text_projection.weight".to_string()
                    ),
                ],
                "{arch}"
            );
        }
    }
}

#[test]
fn predictions_round_trip() {
    let cases = [
        (Arch::Sd15, Prediction::Eps),
        (Arch::Sd2, Prediction::V),
        (Arch::Sdxl, Prediction::VZsnr),
        (Arch::Sdxl, Prediction::EDM_DEFAULT),
        (Arch::Flux, Prediction::Flow),
        (Arch::Sd3, Prediction::Eps),
    ];
    for (arch, prediction) in cases {
        let dir = tempfile::tempdir().unwrap();
        let saved = save_in(
            dir.path(),
            &tiny(arch),
            LayoutChoice::Auto,
            Some(prediction),
        );
        let loaded = load_checkpoint(&saved.path, &Device::Cpu, None).unwrap();
        let header = inspect(&saved.path).unwrap();
        for got in [loaded.prediction, header.prediction] {
            match (got, prediction) {
                (
                    Prediction::EdmV {
                        sigma_max: a,
                        sigma_min: b,
                    },
                    Prediction::EdmV {
                        sigma_max: x,
                        sigma_min: y,
                    },
                ) => {
                    // The file stores float32 end-points of the sigma table.
                    assert!(
                        (a - x).abs() <= x * 1e-6 && (b - y).abs() <= y * 1e-6,
                        "{got}"
                    );
                }
                _ => assert_eq!(got, prediction, "{arch}"),
            }
        }
    }
}

#[test]
fn save_load_save_is_byte_identical() {
    let mut cases: Vec<(Arch, Option<Prediction>)> = Arch::ALL.iter().map(|a| (*a, None)).collect();
    cases.push((Arch::Sdxl, Some(Prediction::EDM_DEFAULT)));
    cases.push((Arch::Sd2, Some(Prediction::VZsnr)));
    for (arch, prediction) in cases {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = save_in(d1.path(), &tiny(arch), LayoutChoice::Auto, prediction);
        let loaded = load_checkpoint(&first.path, &Device::Cpu, None).unwrap();
        let layout = LayoutChoice::Arch(loaded.arch.unwrap());
        let second = save_in(
            d2.path(),
            &loaded.components,
            layout,
            Some(loaded.prediction),
        );
        assert_eq!(
            first.path.file_name(),
            second.path.file_name(),
            "{arch}: same counter"
        );
        let (a, b) = (
            std::fs::read(&first.path).unwrap(),
            std::fs::read(&second.path).unwrap(),
        );
        assert!(a == b, "{arch} {prediction:?}: files differ");
    }
}

#[test]
fn generic_layout_loads_with_no_arch() {
    let dir = tempfile::tempdir().unwrap();
    let original = tiny(Arch::Sd3);
    let saved = save_in(
        dir.path(),
        &original,
        LayoutChoice::Generic(Default::default()),
        Some(Prediction::V),
    );
    let loaded = load_checkpoint(&saved.path, &Device::Cpu, None).unwrap();
    assert_eq!((loaded.arch, loaded.prediction), (None, Prediction::V));
    for kind in ComponentKind::ALL {
        assert_eq!(keys(&loaded.components, kind), keys(&original, kind));
    }
}

#[test]
fn detection_from_the_file_for_every_fixture() {
    for (name, arch, prediction) in FIXTURES {
        let dir = tempfile::tempdir().unwrap();
        let shapes = synthetic::shrink(&common::component_shapes(name), 6);
        let components = synthetic::build_from_shapes(&shapes, 3, None, &Device::Cpu).unwrap();
        let saved = save_in(
            dir.path(),
            &components,
            LayoutChoice::Auto,
            Some(prediction),
        );
        let header = inspect(&saved.path).unwrap();
        assert_eq!(header.arch, Some(arch), "{name}");
        assert_eq!(header.prediction, prediction, "{name}");
        assert_eq!(header.file_bytes, saved.bytes, "{name}");
        assert_eq!(
            header.parts.iter().map(|p| p.tensors).sum::<usize>(),
            header.tensors
        );
        let json = serde_json::to_value(&header).unwrap();
        assert_eq!(json["arch"], arch.name(), "{name}");
        assert!(header.to_string().contains(arch.name()), "{header}");
        let loaded = load_checkpoint(&saved.path, &Device::Cpu, None).unwrap();
        assert_eq!(loaded.arch, Some(arch), "{name}");
    }
}

#[test]
fn explicit_arch_that_does_not_match_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let saved = save_in(dir.path(), &tiny(Arch::Flux), LayoutChoice::Auto, None);
    let err = load_checkpoint(&saved.path, &Device::Cpu, Some(Arch::Sdxl)).unwrap_err();
    assert!(matches!(err, Error::InvalidCheckpoint { .. }), "{err}");
    assert!(err.to_string().contains("sdxl layout"), "{err}");
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Every reader of a path: they must all fail the same way.
fn all_errors(path: &Path) -> Vec<Error> {
    vec![
        load_tensors(path, &Device::Cpu).unwrap_err(),
        load_checkpoint(path, &Device::Cpu, None).unwrap_err(),
        inspect(path).unwrap_err(),
    ]
}

#[test]
fn not_a_safetensors_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = 12u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"hello world!");
    let path = write(dir.path(), "text.safetensors", &bytes);
    for err in all_errors(&path) {
        assert!(matches!(err, Error::InvalidCheckpoint { .. }), "{err}");
        assert!(err.to_string().contains("not a safetensors file"), "{err}");
    }
    let short = write(dir.path(), "short.safetensors", b"abc");
    for err in all_errors(&short) {
        assert!(err.to_string().contains("shorter than the 8-byte"), "{err}");
    }
}

#[test]
fn truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let saved = save_in(dir.path(), &tiny(Arch::Sd15), LayoutChoice::Auto, None);
    let bytes = std::fs::read(&saved.path).unwrap();
    let cut = write(dir.path(), "cut.safetensors", &bytes[..bytes.len() - 10]);
    let header_only = write(dir.path(), "head.safetensors", &bytes[..20]);
    for path in [cut, header_only] {
        for err in all_errors(&path) {
            assert!(matches!(err, Error::InvalidCheckpoint { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains("truncated or incomplete"), "{msg}");
            assert!(msg.contains("again"), "a hint: {msg}");
        }
    }
}

#[test]
fn header_over_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = 100_000_001u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}      ");
    let path = write(dir.path(), "huge.safetensors", &bytes);
    for err in all_errors(&path) {
        assert!(
            matches!(
                err,
                Error::HeaderTooLarge {
                    size: 100_000_001,
                    ..
                }
            ),
            "{err}"
        );
    }
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.safetensors");
    for err in all_errors(&path) {
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("nope.safetensors"), "{err}");
    }
}

#[test]
fn unsupported_dtype_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = [1u8, 2, 3, 4];
    let views = [(
        "model.diffusion_model.weird",
        TensorView::new(Dtype::I8, vec![4], &data).unwrap(),
    )];
    let bytes = safetensors::serialize(views, None).unwrap();
    let path = write(dir.path(), "i8.safetensors", &bytes);
    let err = load_tensors(&path, &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::UnsupportedDtype { .. }), "{err}");
    assert!(
        err.to_string().contains("model.diffusion_model.weird"),
        "{err}"
    );
    // The header alone is fine to inspect.
    assert_eq!(inspect(&path).unwrap().parts[0].dtypes["I8"], 1);
}

#[test]
fn e5m2_is_read_as_f16() {
    let dir = tempfile::tempdir().unwrap();
    // 1.0, -2.0, 0.5 in float8_e5m2.
    let data = [0x3cu8, 0xc0, 0x38];
    let views = [(
        "x",
        TensorView::new(Dtype::F8_E5M2, vec![3], &data).unwrap(),
    )];
    let path = write(
        dir.path(),
        "e5m2.safetensors",
        &safetensors::serialize(views, None).unwrap(),
    );
    let tensors = load_tensors(&path, &Device::Cpu).unwrap();
    let t = &tensors["x"];
    assert_eq!(t.dtype(), DType::F16);
    let v: Vec<f32> = t.to_dtype(DType::F32).unwrap().to_vec1().unwrap();
    assert_eq!(v, [1.0, -2.0, 0.5]);
}
