//! Bad quantized input: a clear error that names the layer and what is wrong, and nothing
//! written — for every case the issue lists.

mod common;

use std::collections::BTreeMap;

use common::cli::{assert_refused, ok_path, run};
use common::st::{self, Raw};
use safetensors::Dtype;

const L: &str = "model.diffusion_model.blocks.0.lin";

/// An fp8 comfy_quant layer (16 × 32 codes, scale 0.01) and a plain bias, as members to break.
fn fp8_layer() -> BTreeMap<String, Raw> {
    let mut t = BTreeMap::new();
    let codes: Vec<u8> = (0..512u32).map(|i| (i % 120) as u8).collect();
    t.insert(format!("{L}.weight"), (Dtype::F8_E4M3, vec![16, 32], codes));
    t.insert(
        format!("{L}.weight_scale"),
        (Dtype::F32, vec![], 0.01f32.to_le_bytes().to_vec()),
    );
    let desc = br#"{"format": "float8_e4m3fn"}"#.to_vec();
    t.insert(
        format!("{L}.comfy_quant"),
        (Dtype::U8, vec![desc.len()], desc),
    );
    t.insert(format!("{L}.bias"), (Dtype::BF16, vec![16], vec![0u8; 32]));
    t
}

/// An nvfp4 layer of 16 × 32 values: codes, swizzled block scales, tensor scale.
fn nvfp4_layer() -> BTreeMap<String, Raw> {
    let mut t = BTreeMap::new();
    t.insert(
        format!("{L}.weight"),
        (Dtype::U8, vec![16, 16], vec![0x21; 256]),
    );
    t.insert(
        format!("{L}.weight_scale"),
        (Dtype::F8_E4M3, vec![128, 4], vec![0x38; 512]),
    );
    t.insert(
        format!("{L}.weight_scale_2"),
        (Dtype::F32, vec![], 0.5f32.to_le_bytes().to_vec()),
    );
    let desc = br#"{"format": "nvfp4"}"#.to_vec();
    t.insert(
        format!("{L}.comfy_quant"),
        (Dtype::U8, vec![desc.len()], desc),
    );
    t
}

/// Converts a file made of `tensors` and asserts the refusal.
fn refused(tensors: &BTreeMap<String, Raw>, meta: &[(&str, &str)], args: &[&str], needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    let meta: BTreeMap<String, String> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    st::write(&input, tensors, &meta);
    let out = dir.path().join("out");
    let mut all = vec![
        "convert",
        input.to_str().unwrap(),
        "--arch",
        "generic",
        "--output-dir",
        out.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let r = run(dir.path(), &all);
    assert_refused(&r, needle, &out);
}

fn with(mut t: BTreeMap<String, Raw>, key: &str, raw: Option<Raw>) -> BTreeMap<String, Raw> {
    let key = format!("{L}.{key}");
    match raw {
        Some(r) => t.insert(key, r),
        None => t.remove(&key),
    };
    t
}

fn f32_scalar(v: f32) -> Option<Raw> {
    Some((Dtype::F32, vec![], v.to_le_bytes().to_vec()))
}

#[test]
fn a_good_layer_converts() {
    // The baseline the refusals break: both layers read and write.
    let dir = tempfile::tempdir().unwrap();
    for (name, t) in [("fp8", fp8_layer()), ("nvfp4", nvfp4_layer())] {
        let input = dir.path().join(format!("{name}.safetensors"));
        st::write(&input, &t, &BTreeMap::new());
        ok_path(
            dir.path(),
            &[
                "convert",
                input.to_str().unwrap(),
                "--arch",
                "generic",
                "--dtype",
                "bf16",
                "--output-dir",
                "out",
                "--prefix",
                name,
                "-q",
            ],
        );
    }
}

#[test]
fn a_missing_extra_misshapen_or_mistyped_scale_is_refused() {
    refused(
        &with(fp8_layer(), "weight_scale", None),
        &[],
        &[],
        "quantized layer `model.diffusion_model.blocks.0.lin`: float8_e4m3fn needs",
    );
    refused(
        &with(fp8_layer(), "scale_weight", f32_scalar(1.0)),
        &[],
        &[],
        "does not belong to a float8_e4m3fn layer",
    );
    refused(
        &with(
            fp8_layer(),
            "weight_scale",
            Some((Dtype::F32, vec![2], vec![0; 8])),
        ),
        &[],
        &[],
        "must be a scalar",
    );
    refused(
        &with(
            fp8_layer(),
            "weight_scale",
            Some((Dtype::I32, vec![], vec![1, 0, 0, 0])),
        ),
        &[],
        &[],
        "must be a float scale",
    );
    // Scales beside 8-bit codes that nothing describes.
    refused(
        &with(fp8_layer(), "comfy_quant", None),
        &[],
        &[],
        "nothing says how they are quantized",
    );
}

#[test]
fn a_zero_negative_or_non_finite_scale_is_refused() {
    for v in [0.0, -0.5, f32::NAN, f32::INFINITY] {
        refused(
            &with(fp8_layer(), "weight_scale", f32_scalar(v)),
            &[],
            &["--dtype", "bf16"],
            "finite and positive",
        );
    }
    // A negative nvfp4 block scale is found when the values are read.
    let mut t = nvfp4_layer();
    t.get_mut(&format!("{L}.weight_scale")).unwrap().2[1] = 0xB8;
    refused(&t, &[], &["--dtype", "bf16"], "block scale");
    // Kept as it is stored, it is still checked.
    refused(&t, &[], &[], "negative");
}

#[test]
fn a_description_that_is_not_json_or_names_an_unknown_format_is_refused() {
    let desc = |b: &[u8]| Some((Dtype::U8, vec![b.len()], b.to_vec()));
    refused(
        &with(fp8_layer(), "comfy_quant", desc(b"{\"format\": ")),
        &[],
        &[],
        "not valid JSON",
    );
    refused(
        &with(fp8_layer(), "comfy_quant", desc(br#"{"format": "q4_k"}"#)),
        &[],
        &[],
        "unknown quantization format `q4_k`",
    );
    refused(
        &with(fp8_layer(), "comfy_quant", None),
        &[(
            "_quantization_metadata",
            r#"{"layers": {"model.diffusion_model.blocks.0.lin": {"format": "fp5"}}}"#,
        )],
        &[],
        "unknown quantization format `fp5`",
    );
    refused(
        &fp8_layer(),
        &[("_quantization_metadata", "{not json")],
        &[],
        "not valid JSON",
    );
}

#[test]
fn codes_that_do_not_fit_their_scales_or_their_format_are_refused() {
    // nvfp4 block scales for another row count.
    refused(
        &with(
            nvfp4_layer(),
            "weight_scale",
            Some((Dtype::F8_E4M3, vec![256, 4], vec![0x38; 1024])),
        ),
        &[],
        &[],
        "do not fit codes",
    );
    // nvfp4 rows of 6 values: not a whole number of 16-value blocks.
    refused(
        &with(
            nvfp4_layer(),
            "weight",
            Some((Dtype::U8, vec![16, 3], vec![0; 48])),
        ),
        &[],
        &[],
        "cannot hold that column count",
    );
    // fp8 codes that are not fp8.
    refused(
        &with(
            fp8_layer(),
            "weight",
            Some((Dtype::BF16, vec![16, 32], vec![0; 1024])),
        ),
        &[],
        &[],
        "must be F8_E4M3",
    );
}

#[test]
fn quantizing_a_tensor_that_is_not_floating_point_is_refused() {
    let mut t = BTreeMap::new();
    t.insert(
        "model.diffusion_model.blocks.0.lin.weight".to_string(),
        (Dtype::I64, vec![4, 4], vec![0; 128]),
    );
    refused(
        &t,
        &[],
        &["--quantize", "fp8", "--quantize-include", "lin"],
        "only 2-D floating-point",
    );
}

#[test]
fn merging_a_quantized_and_a_plain_key_of_different_shapes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plain = ok_path(
        d,
        &[
            "save",
            "--synthetic",
            "sd15",
            "--tiny",
            "--output-dir",
            "in",
            "--prefix",
            "a",
            "-q",
        ],
    );
    let q = ok_path(
        d,
        &[
            "convert",
            plain.to_str().unwrap(),
            "--quantize",
            "fp8",
            "--output-dir",
            "in",
            "--prefix",
            "q",
            "-q",
        ],
    );
    // B: the same model with one quantized layer's rows cut in half.
    let (mut t, meta) = st::read(&plain);
    let key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight";
    let (d0, shape, bytes) = t.remove(key).unwrap();
    let half = bytes.len() / 2;
    t.insert(
        key.to_string(),
        (d0, vec![shape[0] / 2, shape[1]], bytes[..half].to_vec()),
    );
    let b = d.join("b.safetensors");
    st::write(&b, &t, &meta);
    let out = d.join("out");
    let r = run(
        d,
        &[
            "merge",
            q.to_str().unwrap(),
            b.to_str().unwrap(),
            "--ratio",
            "0.5",
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert_refused(&r, "cannot be merged", &out);
    assert!(r.stderr.contains("attn1.to_q"), "{}", r.stderr);
}

#[test]
fn load_checkpoint_refuses_codes_as_weights() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("q.safetensors");
    st::write(&input, &fp8_layer(), &BTreeMap::new());
    let e = checkpoint_save::load_checkpoint(&input, &candle_core::Device::Cpu, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("quantized layers") && e.contains("--dtype bf16"),
        "{e}"
    );
}
