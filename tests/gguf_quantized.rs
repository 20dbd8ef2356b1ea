//! Quantized GGUF targets (`--gguf Q8_0…Q2_K` and the K mixes): for each type, a small
//! Flux-named denoiser written through the library and the binary; each tensor's type and shape
//! against an expectation written from lcpp.patch, its blocks against the codec's reference
//! encoding of the same values (`tests/ggml.rs` holds the codec to ggml's reference quantizers);
//! the input's blocks copied as they are when the input holds the type already; bad types and
//! patterns refused with nothing written.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use checkpoint_save::gguf::GgufFile;
use checkpoint_save::quant::GgmlType;
use checkpoint_save::{
    save_gguf_to_path, Arch, Components, GgufTarget, GgufType, LayoutChoice, SaveOptions,
};

mod common;

use common::cli::{ok_path, run};
use common::ggml::encode;
use GgmlType::*;

const QUANTIZED: [GgufType; 14] = [
    GgufType::Q8_0,
    GgufType::Q6_K,
    GgufType::Q5_K_M,
    GgufType::Q5_K_S,
    GgufType::Q5_1,
    GgufType::Q5_0,
    GgufType::Q4_K_M,
    GgufType::Q4_K_S,
    GgufType::Q4_1,
    GgufType::Q4_0,
    GgufType::Q3_K_L,
    GgufType::Q3_K_M,
    GgufType::Q3_K_S,
    GgufType::Q2_K,
];

/// `(key, shape)` of the test denoiser (bf16 values).
const TENSORS: [(&str, &[usize]); 7] = [
    ("double_blocks.0.img_attn.norm.key_norm.scale", &[128]),
    ("double_blocks.0.img_attn.proj.weight", &[256, 256]),
    ("double_blocks.0.img_attn.qkv.weight", &[512, 256]),
    ("double_blocks.0.x.ff.net.2.weight", &[256, 256]),
    ("double_blocks.0.x.to_v.weight", &[256, 256]),
    ("img_in.weight", &[256, 64]),
    ("single_blocks.0.linear2.weight", &[64, 96]),
];

/// What convert.py + llama-quantize (lcpp.patch) give each tensor, written from the patch.
fn expected(ty: GgufType, key: &str) -> GgmlType {
    use GgufType as T;
    let default = match ty {
        T::Q8_0 => Q8_0,
        T::Q6_K => Q6_K,
        T::Q5_K_M | T::Q5_K_S => Q5_K,
        T::Q5_1 => Q5_1,
        T::Q5_0 => Q5_0,
        T::Q4_K_M | T::Q4_K_S => Q4_K,
        T::Q4_1 => Q4_1,
        T::Q4_0 => Q4_0,
        T::Q3_K_L | T::Q3_K_M | T::Q3_K_S => Q3_K,
        _ => Q2_K,
    };
    let k_quant = default.block_len() == 256;
    match key {
        "double_blocks.0.img_attn.norm.key_norm.scale" => F32,
        "img_in.weight" => BF16,
        "single_blocks.0.linear2.weight" if k_quant => F16,
        "double_blocks.0.img_attn.qkv.weight" => match ty {
            T::Q3_K_M | T::Q3_K_L => Q4_K,
            T::Q4_K_M => Q5_K,
            T::Q5_K_M => Q6_K,
            _ => default,
        },
        "double_blocks.0.x.ff.net.2.weight" => match ty {
            T::Q3_K_M => Q4_K,
            T::Q3_K_L | T::Q4_K_S => Q5_K,
            T::Q4_K_M | T::Q5_K_M => Q6_K,
            T::Q4_0 => Q4_1,
            T::Q5_0 => Q5_1,
            _ => default,
        },
        "double_blocks.0.x.to_v.weight" => match ty {
            T::Q2_K => Q3_K,
            T::Q3_K_M | T::Q3_K_L | T::Q4_K_S => Q5_K,
            T::Q4_K_M | T::Q5_K_M => Q6_K,
            _ => default,
        },
        _ => default,
    }
}

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = ((i * 7919 + seed * 104729) % 10007) as f32 / 10007.0 - 0.5;
            x * x * x * 3.0 + x * 0.05
        })
        .collect()
}

fn model() -> Components {
    let mut map = std::collections::BTreeMap::new();
    for (i, (key, shape)) in TENSORS.iter().enumerate() {
        let n = shape.iter().product();
        let t = Tensor::from_vec(values(n, i), *shape, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        map.insert(key.to_string(), t);
    }
    Components::new(map)
}

fn opts() -> SaveOptions {
    SaveOptions {
        layout: LayoutChoice::Arch(Arch::Flux),
        ..SaveOptions::default()
    }
}

#[test]
fn every_type_gives_lcpp_patch_types_and_the_codecs_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let c = model();
    for ty in QUANTIZED {
        let path = dir.path().join(format!("{ty}.gguf"));
        save_gguf_to_path(&c, &path, ty, &opts()).unwrap();
        let file = GgufFile::open(&path).unwrap();
        assert_eq!(file.architecture(), Some("flux"));
        assert_eq!(
            file.get("general.file_type").map(|v| v.to_string()),
            Some(
                match ty {
                    GgufType::Q8_0 => "7",
                    GgufType::Q6_K => "18",
                    GgufType::Q5_K_M => "17",
                    GgufType::Q5_K_S => "16",
                    GgufType::Q5_1 => "9",
                    GgufType::Q5_0 => "8",
                    GgufType::Q4_K_M => "15",
                    GgufType::Q4_K_S => "14",
                    GgufType::Q4_1 => "3",
                    GgufType::Q4_0 => "2",
                    GgufType::Q3_K_L => "13",
                    GgufType::Q3_K_M => "12",
                    GgufType::Q3_K_S => "11",
                    _ => "10",
                }
                .to_string()
            ),
            "{ty}"
        );
        let names: Vec<&str> = file.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, TENSORS.map(|t| t.0), "{ty}");
        for (i, (key, shape)) in TENSORS.iter().enumerate() {
            let t = file.tensor(key).unwrap();
            let want = expected(ty, key);
            assert_eq!(t.ggml_type(), Some(want), "{ty} `{key}`");
            assert_eq!(t.shape, *shape, "{ty} `{key}`");
            let bytes = file.read_tensor(t).unwrap();
            let x = values(shape.iter().product(), i);
            // bf16 values, exact in f32: what llama-quantize reads from convert.py's BF16 file.
            let x: Vec<f32> = x
                .iter()
                .map(|v| half::bf16::from_f32(*v).to_f32())
                .collect();
            let want_bytes = match want {
                F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
                BF16 => x
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
                F16 => x
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
                q => encode(q, &[1, x.len()], &x),
            };
            assert!(bytes == want_bytes, "{ty} `{key}`: blocks differ");
        }
    }
}

#[test]
fn blocks_already_in_the_type_are_copied_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let first = d.join("first.gguf");
    save_gguf_to_path(&model(), &first, GgufType::Q4_K_M, &opts()).unwrap();
    // The Q4_K_M file as the input of a Q4_K_M target: every tensor is already in its type.
    let again = ok_path(
        d,
        &[
            "convert",
            first.to_str().unwrap(),
            "--arch",
            "flux",
            "--gguf",
            "Q4_K",
            "--prefix",
            "again",
            "--output-dir",
            "out",
        ],
    );
    let (a, b) = (
        GgufFile::open(&first).unwrap(),
        GgufFile::open(&again).unwrap(),
    );
    for t in a.tensors() {
        let u = b.tensor(&t.name).unwrap();
        assert_eq!(u.ggml_type(), t.ggml_type(), "{}", t.name);
        assert_eq!(
            b.read_tensor(u).unwrap(),
            a.read_tensor(t).unwrap(),
            "{}",
            t.name
        );
    }
}

#[test]
fn flux_synthetic_saves_as_q4_k_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = ok_path(
        d,
        &[
            "save",
            "--synthetic",
            "flux",
            "--tiny",
            "--gguf",
            "Q4_K",
            "--output-dir",
            "out",
        ],
    );
    assert!(out.ends_with("out/diffusion_models/ComfyUI_00001_.gguf"));
    let file = GgufFile::open(&out).unwrap();
    assert_eq!(file.get("general.file_type").unwrap().to_string(), "15");
    // Back through a job: the values as f16.
    let back = ok_path(
        d,
        &[
            "convert",
            out.to_str().unwrap(),
            "--output-dir",
            "back",
            "--dtype",
            "f16",
        ],
    );
    assert!(back.exists());
}

#[test]
fn include_and_exclude_patterns_reach_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.gguf");
    let target = GgufTarget::new(GgufType::Q8_0, &["^img_in\\.".into()], &["proj".into()]).unwrap();
    save_gguf_to_path(&model(), &path, target, &opts()).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let ty = |k: &str| file.tensor(k).unwrap().ggml_type().unwrap();
    assert_eq!(ty("img_in.weight"), Q8_0);
    assert_eq!(ty("double_blocks.0.img_attn.proj.weight"), BF16);
    assert_eq!(ty("double_blocks.0.img_attn.qkv.weight"), Q8_0);
}

fn refused(d: &Path, args: &[&str], needle: &str) {
    let r = run(d, args);
    assert_ne!(r.code, 0, "{args:?}");
    assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
    assert!(!d.join("out").exists(), "{args:?} wrote something");
}

#[test]
fn bad_types_and_patterns_are_refused_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ck = d.join("m.gguf");
    save_gguf_to_path(&model(), &ck, GgufType::BF16, &opts()).unwrap();
    let c = ck.to_str().unwrap();
    let base = ["convert", c, "--arch", "flux", "--output-dir", "out"];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };
    refused(d, &with(&["--gguf", "Q7_K"]), "Q4_K_M");
    refused(d, &with(&["--gguf", "IQ4_XS"]), "IQ");
    refused(
        d,
        &with(&["--gguf", "Q8_0", "--gguf-include", "(unclosed"]),
        "--gguf-include `(unclosed`",
    );
    refused(
        d,
        &with(&["--gguf", "F16", "--gguf-exclude", "x"]),
        "quantizes nothing",
    );
    refused(d, &with(&["--gguf-exclude", "x"]), "--gguf");
}

/// gguf-py's view of a quantized file: it reads every tensor and dequantizes it, and for the
/// types it quantizes itself its blocks from convert.py's file's values are the file's.
const GGUF_PY_CHECK: &str = r#"
import sys
import numpy as np
import gguf

base = {t.name: t for t in gguf.GGUFReader(sys.argv[1]).tensors}
q = gguf.GGUFReader(sys.argv[2])
own = {gguf.GGMLQuantizationType[n] for n in ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")}
checked = 0
for t in q.tensors:
    b = base[t.name]
    gguf.quants.dequantize(t.data, t.tensor_type)
    if t.tensor_type in own:
        x = gguf.quants.dequantize(b.data, b.tensor_type).astype(np.float32)
        want = gguf.quants.quantize(x.reshape(-1, x.shape[-1]), t.tensor_type)
        assert want.tobytes() == np.asarray(t.data).tobytes(), t.name
        checked += 1
print("OK", checked)
"#;

#[test]
fn gguf_py_reads_every_type_and_quantizes_its_own_types_the_same() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import gguf, numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but `python3 -c \"import gguf, numpy\"` fails; .ci/run installs them"
        );
        eprintln!("skipped: python3 with the gguf package (gguf-py) and numpy is not available");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = model();
    let base = dir.path().join("base.gguf");
    save_gguf_to_path(&c, &base, GgufType::BF16, &opts()).unwrap();
    for ty in QUANTIZED {
        let path = dir.path().join(format!("{ty}.gguf"));
        save_gguf_to_path(&c, &path, ty, &opts()).unwrap();
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(GGUF_PY_CHECK)
            .arg(&base)
            .arg(&path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{ty}: gguf-py disagrees:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let legacy = matches!(
            ty,
            GgufType::Q8_0 | GgufType::Q5_1 | GgufType::Q5_0 | GgufType::Q4_1 | GgufType::Q4_0
        );
        // Four of the tensors are quantized in every type (the fifth, rows of 96, too for these).
        let want = if legacy { "OK 5" } else { "OK 0" };
        assert_eq!(stdout.trim(), want, "{ty}");
    }
}
