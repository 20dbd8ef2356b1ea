//! The library's quantized saves: candle tensors in, `SaveOptions::quantize` set, a quantized
//! ComfyUI checkpoint out whose codes, scales and descriptions are comfy-kitchen's bit for bit
//! (`tests/fixtures/quant/`), with the layers the include and exclude patterns name.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use checkpoint_save::quant::{Format, Fp8, Quantize};
use checkpoint_save::{save_to_path, Components, GenericPrefixes, LayoutChoice, SaveOptions};
use common::st;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/quant");
const P: &str = "model.diffusion_model.";

/// The 2-D inputs a fresh quantization of the fixture covers, as candle tensors keyed
/// `<input>.weight`, and the fixture's case of each.
fn candle_inputs(
    meta: &BTreeMap<String, String>,
) -> (HashMap<String, Tensor>, Vec<(String, String)>) {
    let inputs =
        candle_core::safetensors::load(Path::new(DIR).join("inputs.safetensors"), &Device::Cpu)
            .unwrap();
    let cases: BTreeMap<String, serde_json::Value> = serde_json::from_str(&meta["cases"]).unwrap();
    let mut map = HashMap::new();
    let mut kept = Vec::new();
    for (case, c) in cases {
        if c["scale"] != "fresh" || c["per_row"].as_bool().unwrap_or(false) {
            continue;
        }
        let input = c["input"].as_str().unwrap();
        let t = &inputs[input];
        if t.rank() == 2 && !map.contains_key(&format!("{input}.weight")) {
            map.insert(format!("{input}.weight"), t.clone());
            kept.push((case, input.to_string()));
        }
    }
    (map, kept)
}

fn options(quantize: Quantize) -> SaveOptions {
    let mut opts = SaveOptions {
        layout: LayoutChoice::Generic(GenericPrefixes::default()),
        quantize: Some(quantize),
        ..Default::default()
    };
    opts.metadata.disable = true;
    opts
}

#[test]
fn candle_tensors_saved_with_quantize_are_kitchens_codes_and_scales() {
    let dir = tempfile::tempdir().unwrap();
    for (file, format) in [
        ("float8_e4m3fn", Format::Float8(Fp8::E4M3)),
        ("int8_tensorwise", Format::Int8Tensorwise),
        ("nvfp4", Format::Nvfp4),
    ] {
        let (fixture, meta) = st::read(&Path::new(DIR).join(format!("{file}.safetensors")));
        let (map, cases) = candle_inputs(&meta);
        assert!(cases.len() >= 4, "{file}: {cases:?}");
        let path = dir.path().join(format!("{file}.safetensors"));
        save_to_path(
            &Components::new(map),
            &path,
            &options(Quantize::new(format)),
        )
        .unwrap();
        let (ours, ours_meta) = st::read(&path);
        let described: serde_json::Value =
            serde_json::from_str(&ours_meta["_quantization_metadata"]).unwrap();
        for (case, input) in &cases {
            let members: Vec<&String> = fixture
                .keys()
                .filter(|k| {
                    k.starts_with(&format!("{case}.weight")) || *k == &format!("{case}.comfy_quant")
                })
                .collect();
            assert!(members.len() >= 3, "{file} {case}: {members:?}");
            for m in members {
                let key = format!("{P}{input}{}", &m[case.len()..]);
                assert_eq!(
                    ours.get(&key),
                    Some(&fixture[m]),
                    "{file}: `{key}` vs kitchen's `{m}`"
                );
            }
            assert_eq!(described["layers"][format!("{P}{input}")]["format"], file);
        }
    }
}

#[test]
fn exclude_patterns_keep_layers_in_their_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let (_, meta) = st::read(&Path::new(DIR).join("float8_e4m3fn.safetensors"));
    let (map, cases) = candle_inputs(&meta);
    let (_, excluded) = &cases[0];
    let quantize = Quantize::new(Format::Float8(Fp8::E4M3))
        .excluding(&format!("^{excluded}\\."))
        .unwrap();
    let path = dir.path().join("q.safetensors");
    save_to_path(&Components::new(map.clone()), &path, &options(quantize)).unwrap();
    let (ours, _) = st::read(&path);
    for (_, input) in &cases {
        let key = format!("{P}{input}.weight");
        let quantized = ours.contains_key(&format!("{P}{input}.comfy_quant"));
        assert_eq!(quantized, input != excluded, "{key}");
        if input == excluded {
            // Written as it was given: its own dtype and bytes.
            let t = &map[&format!("{input}.weight")];
            assert_eq!(ours[&key].1, t.dims().to_vec());
            assert!(!ours.contains_key(&format!("{P}{input}.weight_scale")));
        }
    }
}
