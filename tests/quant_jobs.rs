//! Every job on quantized checkpoints: the three reproductions (a ComfyUI scaled-fp8
//! SD1.5 made here independently of the crate), merges of quantized with plain inputs against an
//! independently computed dequantize → merge → requantize, LoRA bakes into quantized models, and
//! synthetic quantized models through convert, merge, split, inspect and dry runs.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use checkpoint_save::quant::{Format, Precision, QuantLayout, Scales};
use common::cli::{ok_path, run};
use common::st::{self, floats, same, Raw};
use float8::F8E4M3;
use safetensors::Dtype;

const P: &str = "model.diffusion_model.";

/// A tiny SD1.5 in f32, as the tool saves it.
fn plain_sd15(dir: &Path, seed: &str) -> PathBuf {
    ok_path(
        dir,
        &[
            "save",
            "--synthetic",
            "sd15",
            "--tiny",
            "--seed",
            seed,
            "--output-dir",
            "in",
            "--prefix",
            &format!("plain{seed}"),
            "-q",
        ],
    )
}

/// The denoiser's 2-D weights: what a scaled-fp8 release quantizes.
fn scaled_keys(t: &BTreeMap<String, Raw>) -> Vec<String> {
    t.iter()
        .filter(|(k, (d, s, _))| {
            k.starts_with(P) && k.ends_with(".weight") && s.len() == 2 && *d == Dtype::F32
        })
        .map(|(k, _)| k.clone())
        .collect()
}

/// `plain` as ComfyUI's legacy scaled fp8 stores it, made here with the `float8` crate: each
/// 2-D denoiser weight as e4m3 codes of `w / scale` (scale = amax / 448) beside an f32
/// `scale_weight`, and the marker `model.diffusion_model.scaled_fp8`. Returns the file and each
/// layer's scale.
fn scaled_sd15(plain: &Path, out: &Path) -> (PathBuf, BTreeMap<String, f32>) {
    let (mut t, meta) = st::read(plain);
    let mut scales = BTreeMap::new();
    for k in scaled_keys(&t) {
        let (_, shape, bytes) = t.remove(&k).unwrap();
        let w = floats(Dtype::F32, &bytes);
        let scale = w.iter().fold(0f32, |m, x| m.max(x.abs())) / 448.0;
        let codes: Vec<u8> = w
            .iter()
            .map(|x| F8E4M3::from_f32((x / scale).clamp(-448.0, 448.0)).to_bits())
            .collect();
        t.insert(k.clone(), (Dtype::F8_E4M3, shape, codes));
        let layer = k.strip_suffix(".weight").unwrap();
        t.insert(
            format!("{layer}.scale_weight"),
            (Dtype::F32, vec![], scale.to_le_bytes().to_vec()),
        );
        scales.insert(k, scale);
    }
    t.insert(format!("{P}scaled_fp8"), (Dtype::F8_E4M3, vec![0], vec![]));
    let path = out.join("scaled.safetensors");
    st::write(&path, &t, &meta);
    (path, scales)
}

/// A scaled layer's values: `code · scale` in f32.
fn dequant(codes: &[u8], scale: f32) -> Vec<f32> {
    codes
        .iter()
        .map(|&c| F8E4M3::from_bits(c).to_f32() * scale)
        .collect()
}

#[test]
fn merging_a_plain_and_a_scaled_fp8_model_reads_the_scaled_values() {
    // Reproduction 1: B's fp8 codes were taken as values and its scales dropped.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = plain_sd15(d, "1");
    let (b, scales) = scaled_sd15(&plain_sd15(d, "2"), d);
    let out = ok_path(
        d,
        &[
            "merge",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--ratio",
            "0.5",
            "--output-dir",
            "out",
            "-q",
        ],
    );
    let (merged, _) = st::read(&out);
    let (ta, _) = st::read(&a);
    let (tb, _) = st::read(&b);
    assert!(merged
        .keys()
        .all(|k| !k.ends_with("scale_weight") && !k.ends_with("scaled_fp8")));
    for (k, scale) in &scales {
        let x = floats(Dtype::F32, &ta[k].2);
        let y = dequant(&tb[k].2, *scale);
        // ComfyUI's ModelMergeSimple: A·0.5 + 0.5·B, each product rounded in f32.
        let want: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a * 0.5 + 0.5 * b).collect();
        let (dtype, _, bytes) = &merged[k];
        assert_eq!(*dtype, Dtype::F32, "{k}");
        assert_eq!(floats(*dtype, bytes), want, "{k}");
    }
}

#[test]
fn converting_a_scaled_fp8_model_to_f16_writes_its_values_without_scales_or_marker() {
    // Reproduction 2: the codes were written as f16 values beside the untouched scales.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (scaled, scales) = scaled_sd15(&plain_sd15(d, "3"), d);
    let out = ok_path(
        d,
        &[
            "convert",
            scaled.to_str().unwrap(),
            "--dtype",
            "f16",
            "--output-dir",
            "out",
            "-q",
        ],
    );
    let (t, meta) = st::read(&out);
    let (source, _) = st::read(&scaled);
    assert!(t
        .keys()
        .all(|k| !k.ends_with("scale_weight") && !k.ends_with("scaled_fp8")));
    assert!(!meta.contains_key("_quantization_metadata"));
    for (k, scale) in &scales {
        // ComfyUI's dequantize into f16: code and scale in f16, their product rounded to f16.
        let s16 = half::f16::from_f32(*scale).to_f32();
        let want: Vec<f32> = source[k]
            .2
            .iter()
            .map(|&c| half::f16::from_f32(F8E4M3::from_bits(c).to_f32() * s16).to_f32())
            .collect();
        let (dtype, _, bytes) = &t[k];
        assert_eq!(*dtype, Dtype::F16);
        let got = floats(*dtype, bytes);
        assert!(got.iter().zip(&want).all(|(a, b)| same(*a, *b)), "{k}");
        assert!(got.iter().any(|v| v.abs() > 1e-3), "{k}: real values");
    }
    let r = run(d, &["inspect", out.to_str().unwrap()]);
    assert!(!r.stdout.contains("quantized"), "{}", r.stdout);
}

#[test]
fn merging_a_scaled_fp8_model_with_a_plain_one_requantizes_with_its_scales() {
    // Reproduction 3: refused with "key(s) of A are missing from B: …scale_weight".
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, scales) = scaled_sd15(&plain_sd15(d, "4"), d);
    let b = plain_sd15(d, "5");
    let out = ok_path(
        d,
        &[
            "merge",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--ratio",
            "0.7",
            "--output-dir",
            "out",
            "-q",
        ],
    );
    let (merged, _) = st::read(&out);
    let (ta, _) = st::read(&a);
    let (tb, _) = st::read(&b);
    assert_eq!(
        merged[&format!("{P}scaled_fp8")],
        (Dtype::F8_E4M3, vec![0], vec![])
    );
    let (r, m) = (0.7f32, (1.0f64 - 0.7) as f32);
    for (k, scale) in &scales {
        let x = dequant(&ta[k].2, *scale);
        let y = floats(Dtype::F32, &tb[k].2);
        let inv = 1.0 / scale;
        let want: Vec<u8> = x
            .iter()
            .zip(&y)
            .map(|(a, b)| {
                let v = a * r + m * b;
                F8E4M3::from_f32((v * inv).clamp(-448.0, 448.0)).to_bits()
            })
            .collect();
        let layer = k.strip_suffix(".weight").unwrap();
        assert_eq!(merged[k].2, want, "{k}: codes requantized with A's scale");
        assert_eq!(
            merged[&format!("{layer}.scale_weight")],
            ta[&format!("{layer}.scale_weight")],
            "{k}"
        );
    }
}

/// Decodes a comfy_quant layer of a file with the crate's codec (the oracle's dequantize), in
/// the logical shape the file's metadata records for padded layers.
fn decode(
    (t, meta): &(BTreeMap<String, Raw>, BTreeMap<String, String>),
    layer: &str,
    format: Format,
) -> (QuantLayout, Scales, Vec<f32>) {
    use checkpoint_save::quant::{MemberData, StoredMember};
    let names = ["weight", "weight_scale", "weight_scale_2"];
    let found: Vec<(&str, &Raw)> = names
        .iter()
        .filter_map(|n| Some((*n, t.get(&format!("{layer}.{n}"))?)))
        .collect();
    let stored: Vec<StoredMember<'_>> = found
        .iter()
        .map(|(n, r)| StoredMember {
            name: n,
            dtype: r.0,
            shape: &r.1,
        })
        .collect();
    let shapes: BTreeMap<String, Vec<usize>> = meta
        .get("checkpoint_save.quantized_shapes")
        .map_or_else(BTreeMap::new, |s| serde_json::from_str(s).unwrap());
    let logical = shapes.get(layer).map(Vec::as_slice);
    let layout = QuantLayout::from_stored(layer, format, &stored, logical).unwrap();
    let data: Vec<MemberData<'_>> = found
        .iter()
        .map(|(n, r)| MemberData {
            name: n,
            dtype: r.0,
            bytes: &r.2,
        })
        .collect();
    let scales = layout.read_scales(&data).unwrap();
    let span = layout.read_span(0..layout.numel()).unwrap();
    let blocks = t
        .get(&format!("{layer}.weight_scale"))
        .filter(|_| format.has_block_scales())
        .map_or(&[][..], |r| &r.2[..]);
    let mut out = vec![0f32; layout.numel() as usize];
    let codes =
        &t[&format!("{layer}.weight")].2[span.codes.start as usize..span.codes.end as usize];
    let blocks = &blocks[span.block_scales.start as usize..span.block_scales.end as usize];
    layout
        .decode(&scales, Precision::F32, &span, codes, blocks, &mut out)
        .unwrap();
    (layout, scales, out)
}

/// Encodes values with the crate's codec (the oracle's requantize): codes and block scales.
fn encode(layout: &QuantLayout, scales: &Scales, values: &[f32]) -> (Vec<u8>, Vec<u8>) {
    let span = layout.write_span(0..layout.numel()).unwrap();
    let mut codes = vec![0u8; (span.codes.end - span.codes.start) as usize];
    let mut blocks = vec![0u8; (span.block_scales.end - span.block_scales.start) as usize];
    layout
        .encode(
            scales,
            Precision::F32,
            &span,
            values,
            &mut codes,
            &mut blocks,
        )
        .unwrap();
    (codes, blocks)
}

#[test]
fn merges_of_quantized_and_plain_models_equal_dequantize_merge_requantize() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plain_a = plain_sd15(d, "6");
    let b = plain_sd15(d, "7");
    for (arg, format) in [
        ("fp8", Format::Float8(checkpoint_save::quant::Fp8::E4M3)),
        ("int8", Format::Int8Tensorwise),
        ("mxfp8", Format::Mxfp8),
        ("nvfp4", Format::Nvfp4),
    ] {
        let a = ok_path(
            d,
            &[
                "convert",
                plain_a.to_str().unwrap(),
                "--quantize",
                arg,
                "--output-dir",
                "q",
                "--prefix",
                arg,
                "-q",
            ],
        );
        let qa = st::read(&a);
        let ta = &qa.0;
        let (tb, _) = st::read(&b);
        for how in ["existing", "fresh"] {
            let out = ok_path(
                d,
                &[
                    "merge",
                    a.to_str().unwrap(),
                    b.to_str().unwrap(),
                    "--ratio",
                    "0.25",
                    "--requantize",
                    how,
                    "--output-dir",
                    "merged",
                    "--prefix",
                    &format!("{arg}-{how}"),
                    "-q",
                ],
            );
            let (merged, meta) = st::read(&out);
            assert!(meta["_quantization_metadata"].contains(&format!("\"{}\"", format)));
            let layers: Vec<String> = ta
                .keys()
                .filter_map(|k| k.strip_suffix(".comfy_quant").map(str::to_string))
                .collect();
            assert!(layers.len() >= 5, "{arg}: {}", layers.len());
            for layer in &layers {
                let (layout, scales, x) = decode(&qa, layer, format);
                let y = floats(Dtype::F32, &tb[&format!("{layer}.weight")].2);
                let (r, m) = (0.25f32, (1.0f64 - 0.25) as f32);
                let v: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a * r + m * b).collect();
                let scales = match how {
                    "existing" => scales,
                    _ => {
                        let mut red = layout.reducer();
                        red.update(0..v.len() as u64, &v).unwrap();
                        layout.fresh_scales(&red.finish(), Precision::F32).unwrap()
                    }
                };
                let (codes, blocks) = encode(&layout, &scales, &v);
                let what = format!("{arg} {how} {layer}");
                assert_eq!(merged[&format!("{layer}.weight")].2, codes, "{what}");
                if format.has_block_scales() {
                    assert_eq!(merged[&format!("{layer}.weight_scale")].2, blocks, "{what}");
                }
                if let Some(s) = scales.tensor_scale() {
                    let name = if format == Format::Nvfp4 {
                        "weight_scale_2"
                    } else {
                        "weight_scale"
                    };
                    let got = &merged[&format!("{layer}.{name}")].2;
                    assert_eq!(got, &s.to_le_bytes().to_vec(), "{what}");
                }
                assert_eq!(
                    merged[&format!("{layer}.comfy_quant")],
                    ta[&format!("{layer}.comfy_quant")]
                );
            }
        }
    }
}

#[test]
fn a_lora_baked_into_a_quantized_model_is_requantized_into_its_format() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plain = plain_sd15(d, "8");
    let q = ok_path(
        d,
        &[
            "convert",
            plain.to_str().unwrap(),
            "--quantize",
            "fp8",
            "--output-dir",
            "q",
            "-q",
        ],
    );
    // The same model with the quantized layers' values in f32: what the bake adds to.
    let values = ok_path(
        d,
        &[
            "convert",
            q.to_str().unwrap(),
            "--dtype",
            "f32",
            "--output-dir",
            "v",
            "-q",
        ],
    );
    let lora = d.join("lora.safetensors");
    let components = checkpoint_save::open_input(&values, None)
        .unwrap()
        .components;
    let factors =
        checkpoint_save::synthetic::lora::lora(checkpoint_save::Arch::Sd15, &components, 2, 9)
            .unwrap();
    checkpoint_save::save_tensors(&factors, &lora).unwrap();
    let spec = format!("{}:0.8", lora.display());
    let bake = |input: &Path, prefix: &str, dtype: &str| {
        ok_path(
            d,
            &[
                "merge",
                input.to_str().unwrap(),
                "--lora",
                &spec,
                "--dtype",
                dtype,
                "--output-dir",
                "baked",
                "--prefix",
                prefix,
                "-q",
            ],
        )
    };
    let (baked_q, _) = st::read(&bake(&q, "quantized", "keep"));
    let (baked_v, _) = st::read(&bake(&values, "values", "f32"));
    let fq = st::read(&q);
    let tq = &fq.0;
    let mut requantized = 0;
    for (k, raw) in tq {
        let Some(layer) = k.strip_suffix(".comfy_quant") else {
            continue;
        };
        let fmt = Format::Float8(checkpoint_save::quant::Fp8::E4M3);
        let (layout, scales, _) = decode(&fq, layer, fmt);
        let v = floats(Dtype::F32, &baked_v[&format!("{layer}.weight")].2);
        let (codes, _) = encode(&layout, &scales, &v);
        let got = &baked_q[&format!("{layer}.weight")];
        assert_eq!(got.0, Dtype::F8_E4M3, "{layer}");
        assert_eq!(got.2, codes, "{layer}");
        assert_eq!(&baked_q[k], raw, "{layer}: its description");
        if baked_v[&format!("{layer}.weight")] != st::read(&values).0[&format!("{layer}.weight")] {
            requantized += 1;
        }
    }
    assert!(
        requantized >= 3,
        "the LoRA changed {requantized} quantized layers"
    );
}

#[test]
fn synthetic_quantized_models_go_through_every_job() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for format in ["scaled-fp8", "fp8", "fp8-e5m2", "int8", "mxfp8", "nvfp4"] {
        let model = ok_path(
            d,
            &[
                "save",
                "--synthetic",
                "sdxl",
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
        let path = model.to_str().unwrap();
        let r = run(d, &["inspect", path]);
        assert!(r.stdout.contains("quantized:"), "{format}: {}", r.stdout);
        // Kept: the same file (metadata aside).
        let kept = ok_path(
            d,
            &[
                "convert",
                path,
                "--output-dir",
                "kept",
                "--prefix",
                format,
                "-q",
            ],
        );
        assert_eq!(st::read(&kept).0, st::read(&model).0, "{format}");
        // A dry run names every member.
        let r = run(
            d,
            &[
                "convert",
                path,
                "--dry-run",
                "--json",
                "--output-dir",
                "dry",
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let plan: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(
            plan["tensors"].as_array().unwrap().len(),
            st::read(&model).0.len(),
            "{format}"
        );
        // Values, a merge with itself (the same values), a split.
        let back = ok_path(
            d,
            &[
                "convert",
                path,
                "--dtype",
                "bf16",
                "--output-dir",
                "bf16",
                "--prefix",
                format,
                "-q",
            ],
        );
        assert!(st::read(&back)
            .0
            .values()
            .all(|t| t.0 != Dtype::F8_E4M3 && t.0 != Dtype::U8));
        let merged = ok_path(
            d,
            &[
                "merge",
                path,
                back.to_str().unwrap(),
                "--ratio",
                "0.5",
                "--output-dir",
                "m",
                "--prefix",
                format,
                "-q",
            ],
        );
        assert_eq!(
            st::read(&merged).0.len(),
            st::read(&model).0.len(),
            "{format}: the merge keeps A's quantized layers"
        );
        let r = run(
            d,
            &[
                "split",
                path,
                "--output-dir",
                d.join(format!("split-{format}")).to_str().unwrap(),
                "-q",
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
}
