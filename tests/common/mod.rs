//! Shared helpers of the integration tests: the reference fixtures, and the real binary.
#![allow(dead_code)]

pub mod cli;
pub mod ggml;
pub mod st;

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use checkpoint_save::{Arch, Prediction};
use checkpoint_save::{ComponentKind, ComponentShapes, TensorInfo};
use serde_json::Value;

/// Fixture name, architecture and the reference model's prediction type.
pub const FIXTURES: [(&str, Arch, Prediction); 6] = [
    ("sd15", Arch::Sd15, Prediction::Eps),
    ("sd21_768v", Arch::Sd2, Prediction::V),
    ("sdxl_base", Arch::Sdxl, Prediction::Eps),
    ("sdxl_refiner", Arch::SdxlRefiner, Prediction::Eps),
    ("sd3_medium", Arch::Sd3, Prediction::Flow),
    ("flux_dev", Arch::Flux, Prediction::Flow),
];

/// `<name>.json` of the fixtures.
pub fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/layouts/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
        .unwrap()
}

/// Maps the fixtures' component names to ours.
pub fn component(name: &str) -> ComponentKind {
    match name {
        "unet" => ComponentKind::Model,
        "clip" => ComponentKind::Clip,
        "vae" => ComponentKind::Vae,
        other => panic!("unknown component {other}"),
    }
}

/// `<name>.components.json` as shapes.
pub fn component_shapes(name: &str) -> ComponentShapes {
    let v = fixture(&format!("{name}.components"));
    let mut shapes = ComponentShapes::default();
    for part in ["unet", "clip", "vae"] {
        let map: BTreeMap<String, TensorInfo> = v[part]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let shape = t["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                let dtype = serde_json::from_value(t["dtype"].clone()).unwrap();
                (
                    t["key"].as_str().unwrap().to_string(),
                    TensorInfo::new(shape, dtype),
                )
            })
            .collect();
        shapes.set(component(part), map);
    }
    shapes
}

/// A tensor's bytes as the file stores them (little-endian, C order).
pub fn bytes_of(t: &Tensor) -> Vec<u8> {
    let t = t.flatten_all().unwrap();
    match t.dtype() {
        DType::F32 => t
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F64 => t
            .to_vec1::<f64>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F16 => t
            .to_vec1::<half::f16>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::BF16 => t
            .to_vec1::<half::bf16>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::I64 => t
            .to_vec1::<i64>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::U8 => t.to_vec1::<u8>().unwrap(),
        d => panic!("unexpected {d:?}"),
    }
}

/// Asserts that two safetensors files hold the same metadata and tensors (names, dtypes, shapes,
/// bytes), whatever their header padding.
pub fn same_tensors(a: &[u8], b: &[u8], what: &str) {
    use safetensors::SafeTensors;
    let (sa, sb) = (
        SafeTensors::deserialize(a).unwrap(),
        SafeTensors::deserialize(b).unwrap(),
    );
    let (ma, mb) = (
        SafeTensors::read_metadata(a).unwrap().1,
        SafeTensors::read_metadata(b).unwrap().1,
    );
    assert_eq!(ma.metadata(), mb.metadata(), "{what}: metadata");
    let mut names = sa.names();
    names.sort();
    let mut other = sb.names();
    other.sort();
    assert_eq!(names, other, "{what}: names");
    for n in names {
        let (x, y) = (sa.tensor(n).unwrap(), sb.tensor(n).unwrap());
        assert_eq!(
            (x.dtype(), x.shape()),
            (y.dtype(), y.shape()),
            "{what}: {n}"
        );
        assert!(x.data() == y.data(), "{what}: {n}: bytes differ");
    }
}

/// A safetensors file's header as JSON (object key order ignored when compared) and its data
/// section.
pub fn header_and_data(bytes: &[u8]) -> (Value, &[u8]) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, &bytes[8 + n..])
}
