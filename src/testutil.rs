//! Test support: the reference fixtures in `tests/fixtures/layouts` (see its README).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::model::dtype::Dtype;
use crate::model::{Arch, Prediction};
use crate::model::{ComponentKind, ComponentShapes, TensorInfo};

/// Fixture name, architecture and the prediction type the reference model had.
pub const FIXTURES: [(&str, Arch, Prediction); 6] = [
    ("sd15", Arch::Sd15, Prediction::Eps),
    ("sd21_768v", Arch::Sd2, Prediction::V),
    ("sdxl_base", Arch::Sdxl, Prediction::Eps),
    ("sdxl_refiner", Arch::SdxlRefiner, Prediction::Eps),
    ("sd3_medium", Arch::Sd3, Prediction::Flow),
    ("flux_dev", Arch::Flux, Prediction::Flow),
];

/// The later families' fixtures: name, architecture, the variant the reference model is.
pub const FAMILY_FIXTURES: [(&str, Arch, &str); 6] = [
    ("wan21_t2v_1_3b", Arch::Wan21, "wan21-1.3b"),
    ("wan22_ti2v_5b", Arch::Wan22, "wan22-5b"),
    ("qwen_image", Arch::QwenImage, "qwen-image"),
    ("hidream_i1_full", Arch::HiDream, "hidream-i1"),
    ("chroma", Arch::Chroma, "chroma"),
    ("lumina2", Arch::Lumina2, "lumina2"),
];

fn read(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/layouts/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `<name>.json`: what the reference writes.
pub fn expected(name: &str) -> Value {
    read(name)
}

/// Parses a fixture dtype string.
pub fn dtype(s: &str) -> Dtype {
    serde_json::from_value(Value::String(s.into())).unwrap_or_else(|e| panic!("dtype {s}: {e}"))
}

/// Parses `{key, shape, dtype}`.
pub fn info(t: &Value) -> (String, TensorInfo) {
    let shape = t["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect();
    (
        t["key"].as_str().expect("key").to_string(),
        TensorInfo::new(shape, dtype(t["dtype"].as_str().expect("dtype"))),
    )
}

/// Maps the fixtures' component names to ours.
pub fn component(name: &str) -> ComponentKind {
    match name {
        "unet" => ComponentKind::Model,
        "clip" => ComponentKind::Clip,
        "vae" => ComponentKind::Vae,
        other => panic!("unknown fixture component {other}"),
    }
}

/// `<name>.components.json` as shapes.
pub fn component_shapes(name: &str) -> ComponentShapes {
    let v = read(&format!("{name}.components"));
    let mut shapes = ComponentShapes::default();
    for part in ["unet", "clip", "vae"] {
        let map: BTreeMap<String, TensorInfo> = v[part]
            .as_array()
            .expect("component list")
            .iter()
            .map(info)
            .collect();
        shapes.set(component(part), map);
    }
    shapes
}
