//! Quantized formats through the whole tool, against comfy-kitchen: bf16 (and f32, f16) weights
//! quantized by `convert --quantize` give kitchen's codes, scales and descriptions bit for bit
//! (`tests/fixtures/quant/`, made by `make_fixtures.py` there), and reading them back gives
//! kitchen's dequantized values; kept layers are copied byte for byte under the output's names.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::cli::{ok_path, run};
use common::st::{self, floats, same, Raw};
use safetensors::Dtype;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/quant");
const P: &str = "model.diffusion_model.";

/// Fixture file, `--quantize` spelling, the members the format stores besides the codes.
const FORMATS: [(&str, &str); 5] = [
    ("float8_e4m3fn", "fp8"),
    ("float8_e5m2", "fp8-e5m2"),
    ("int8_tensorwise", "int8"),
    ("mxfp8", "mxfp8"),
    ("nvfp4", "nvfp4"),
];

/// A fixture's cases that a fresh quantization of a 2-D weight reproduces: `(case, input,
/// precision)`.
fn fresh_cases(meta: &BTreeMap<String, String>) -> Vec<(String, String, String)> {
    let cases: BTreeMap<String, serde_json::Value> = serde_json::from_str(&meta["cases"]).unwrap();
    cases
        .into_iter()
        .filter(|(_, c)| c["scale"] == "fresh" && !c["per_row"].as_bool().unwrap_or(false))
        .map(|(name, c)| {
            let input = c["input"].as_str().unwrap().to_string();
            (name, input, c["precision"].as_str().unwrap().to_string())
        })
        .collect()
}

/// Writes the inputs of `cases` that are 2-D as `model.diffusion_model.<input>.weight`.
fn write_inputs(
    path: &Path,
    inputs: &BTreeMap<String, Raw>,
    cases: &[(String, String, String)],
) -> Vec<(String, String, String)> {
    let mut tensors = BTreeMap::new();
    let mut kept = Vec::new();
    for c in cases {
        let t = inputs[&c.1].clone();
        if t.1.len() == 2 {
            tensors.insert(format!("{P}{}.weight", c.1), t);
            kept.push(c.clone());
        }
    }
    st::write(path, &tensors, &BTreeMap::new());
    kept
}

#[test]
fn each_format_through_the_tool_equals_kitchens_quantize_and_dequantize() {
    let dir = tempfile::tempdir().unwrap();
    let (inputs, _) = st::read(&Path::new(DIR).join("inputs.safetensors"));
    let mut checked = 0;
    for (file, arg) in FORMATS {
        let (fixture, meta) = st::read(&Path::new(DIR).join(format!("{file}.safetensors")));
        let input = dir.path().join(format!("{file}-in.safetensors"));
        let cases = write_inputs(&input, &inputs, &fresh_cases(&meta));
        assert!(cases.len() >= 5, "{file}: {} cases", cases.len());
        let out = dir.path().join(file);
        let q = ok_path(
            dir.path(),
            &[
                "convert",
                input.to_str().unwrap(),
                "--arch",
                "generic",
                "--quantize",
                arg,
                "--output-dir",
                out.to_str().unwrap(),
                "--prefix",
                "q",
                "-q",
            ],
        );
        let (ours, ours_meta) = st::read(&q);
        let described: serde_json::Value =
            serde_json::from_str(&ours_meta["_quantization_metadata"]).unwrap();
        for (case, name, _) in &cases {
            let prefix = format!("{case}.weight");
            let members: Vec<&String> = fixture
                .keys()
                .filter(|k| k.starts_with(&prefix) || *k == &format!("{case}.comfy_quant"))
                .collect();
            assert!(members.len() >= 3, "{file} {case}: {members:?}");
            for m in members {
                let key = format!("{P}{name}{}", &m[case.len()..]);
                let (theirs, got) = (&fixture[m], ours.get(&key));
                assert_eq!(
                    got,
                    Some(theirs),
                    "{file}: `{key}` differs from kitchen's `{m}`"
                );
            }
            assert_eq!(
                described["layers"][format!("{P}{name}")]["format"],
                file,
                "{file} {case}"
            );
            checked += 1;
        }
        // Back through the tool into each dtype: kitchen's dequantize into that dtype.
        for (dtype, suffix) in [("bf16", "bf16"), ("f32", "f32"), ("f16", "f16")] {
            let back = ok_path(
                dir.path(),
                &[
                    "convert",
                    q.to_str().unwrap(),
                    "--arch",
                    "generic",
                    "--dtype",
                    dtype,
                    "--output-dir",
                    out.to_str().unwrap(),
                    "--prefix",
                    &format!("back-{dtype}"),
                    "-q",
                ],
            );
            let (values, back_meta) = st::read(&back);
            assert!(!back_meta.contains_key("_quantization_metadata"));
            assert!(values
                .keys()
                .all(|k| !k.ends_with("_scale") && !k.ends_with("comfy_quant")));
            for (case, name, _) in &cases {
                let (d, shape, bytes) = &values[&format!("{P}{name}.weight")];
                let theirs = &fixture[&format!("{case}.dequant_{suffix}")];
                assert_eq!((d, shape), (&theirs.0, &theirs.1), "{file} {case} {dtype}");
                let (a, b) = (floats(*d, bytes), floats(theirs.0, &theirs.2));
                let diff = a.iter().zip(&b).position(|(x, y)| !same(*x, *y));
                assert_eq!(diff, None, "{file} {case} into {dtype}");
            }
        }
    }
    assert!(checked >= 30, "{checked}");
}

#[test]
fn legacy_scaled_fp8_through_the_tool_has_kitchens_codes_and_the_models_marker() {
    let dir = tempfile::tempdir().unwrap();
    let (inputs, _) = st::read(&Path::new(DIR).join("inputs.safetensors"));
    let (fixture, meta) = st::read(&Path::new(DIR).join("float8_e4m3fn.safetensors"));
    let input = dir.path().join("in.safetensors");
    let cases = write_inputs(&input, &inputs, &fresh_cases(&meta));
    let q = ok_path(
        dir.path(),
        &[
            "convert",
            input.to_str().unwrap(),
            "--arch",
            "generic",
            "--quantize",
            "scaled-fp8",
            "--output-dir",
            "out",
            "-q",
        ],
    );
    let (ours, ours_meta) = st::read(&q);
    assert!(!ours_meta.contains_key("_quantization_metadata"));
    // ComfyUI's marker: an empty float8_e4m3fn tensor at the denoiser's prefix.
    assert_eq!(
        ours[&format!("{P}scaled_fp8")],
        (Dtype::F8_E4M3, vec![0], vec![])
    );
    for (case, name, _) in &cases {
        assert_eq!(
            ours[&format!("{P}{name}.weight")],
            fixture[&format!("{case}.weight")]
        );
        assert_eq!(
            ours[&format!("{P}{name}.scale_weight")],
            fixture[&format!("{case}.weight_scale")]
        );
        assert!(!ours.contains_key(&format!("{P}{name}.comfy_quant")));
    }
    // Read back: the legacy layers' values, the marker gone.
    let back = ok_path(
        dir.path(),
        &[
            "convert",
            q.to_str().unwrap(),
            "--arch",
            "generic",
            "--dtype",
            "bf16",
            "--output-dir",
            "back",
            "-q",
        ],
    );
    let (values, _) = st::read(&back);
    assert!(!values.contains_key(&format!("{P}scaled_fp8")));
    for (case, name, _) in &cases {
        let theirs = &fixture[&format!("{case}.dequant_bf16")];
        assert_eq!(values[&format!("{P}{name}.weight")], *theirs, "{case}");
    }
}

#[test]
fn kept_layers_are_copied_byte_for_byte_under_the_outputs_names() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for format in ["nvfp4", "scaled-fp8", "int8", "mxfp8"] {
        let model = ok_path(
            d,
            &[
                "save",
                "--synthetic",
                "flux",
                "--tiny",
                "--dtype",
                "bf16",
                "--quantize",
                format,
                "--output-dir",
                "q",
                "--prefix",
                format,
                "-q",
            ],
        );
        // Split into component files (in-memory names) and save them back: every member and
        // the marker follow the key's prefix, and the file is the same.
        let parts = d.join(format!("parts-{format}"));
        let r = run(
            d,
            &[
                "split",
                model.to_str().unwrap(),
                "--output-dir",
                parts.to_str().unwrap(),
                "-q",
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let (part, part_meta) = st::read(&parts.join("model.safetensors"));
        let (whole, whole_meta) = st::read(&model);
        for (k, t) in &whole {
            if let Some(inner) = k.strip_prefix(P) {
                assert_eq!(part.get(inner), Some(t), "{format}: {inner}");
            }
        }
        if format == "scaled-fp8" {
            assert!(part.contains_key("scaled_fp8"));
            assert!(!part_meta.contains_key("_quantization_metadata"));
        } else {
            let layers: serde_json::Value =
                serde_json::from_str(&part_meta["_quantization_metadata"]).unwrap();
            let all: serde_json::Value =
                serde_json::from_str(&whole_meta["_quantization_metadata"]).unwrap();
            let names: Vec<&String> = layers["layers"].as_object().unwrap().keys().collect();
            let whole_names: Vec<String> = all["layers"]
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.strip_prefix(P).unwrap().to_string())
                .collect();
            assert_eq!(names, whole_names.iter().collect::<Vec<_>>(), "{format}");
        }
        let again = ok_path(
            d,
            &[
                "save",
                "--model",
                parts.join("model.safetensors").to_str().unwrap(),
                "--clip",
                parts.join("clip.safetensors").to_str().unwrap(),
                "--vae",
                parts.join("vae.safetensors").to_str().unwrap(),
                "--output-dir",
                "again",
                "--prefix",
                format,
                "-q",
            ],
        );
        let (back, back_meta) = st::read(&again);
        assert_eq!(
            back, whole,
            "{format}: the same tensors after split and save"
        );
        assert_eq!(
            back_meta.get("_quantization_metadata"),
            whole_meta.get("_quantization_metadata")
        );
    }
}
