//! Text encoders as GGUF, both ways, as ComfyUI-GGUF's CLIP loader reads them: `convert
//! TE.safetensors --gguf TYPE` writes llama.cpp's names (checked against the loader's maps,
//! copied below from its `loader.py`), its types and, for `llama`, its permutation of queries
//! and keys; `--clip TE.gguf` reads the values back (F16 exactly; Q8_0 as computed here from
//! ggml's reference, independently of the crate). ComfyUI-GGUF's own loader is an optional
//! oracle (`CHECKPOINT_SAVE_COMFYUI_GGUF`: a checkout; `tests/python/comfyui_gguf_loader.py`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use checkpoint_save::gguf::{sentencepiece_model, GgufFile, MetaArray, MetaValue};
use checkpoint_save::{
    open_component, save_to_path, Arch, ComponentDtypes, ComponentKind, Components, SaveOptions,
    TargetDtype,
};
use common::cli::{assert_refused, ok_path, run};
use common::st;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// ComfyUI-GGUF's `T5_SD_MAP` and `LLAMA_SD_MAP` (loader.py, Dec 2025), in order.
const T5_SD_MAP: [(&str, &str); 14] = [
    ("enc.", "encoder."),
    (".blk.", ".block."),
    ("token_embd", "shared"),
    ("output_norm", "final_layer_norm"),
    ("attn_q", "layer.0.SelfAttention.q"),
    ("attn_k", "layer.0.SelfAttention.k"),
    ("attn_v", "layer.0.SelfAttention.v"),
    ("attn_o", "layer.0.SelfAttention.o"),
    ("attn_norm", "layer.0.layer_norm"),
    (
        "attn_rel_b",
        "layer.0.SelfAttention.relative_attention_bias",
    ),
    ("ffn_up", "layer.1.DenseReluDense.wi_1"),
    ("ffn_down", "layer.1.DenseReluDense.wo"),
    ("ffn_gate", "layer.1.DenseReluDense.wi_0"),
    ("ffn_norm", "layer.1.layer_norm"),
];
const LLAMA_SD_MAP: [(&str, &str); 16] = [
    ("blk.", "model.layers."),
    ("attn_norm", "input_layernorm"),
    ("attn_q_norm.", "self_attn.q_norm."),
    ("attn_k_norm.", "self_attn.k_norm."),
    ("attn_v_norm.", "self_attn.v_norm."),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("token_embd", "model.embed_tokens"),
    ("output_norm", "model.norm"),
    ("output.weight", "lm_head.weight"),
];

/// `sd_map_replace` of one key.
fn loader_name(map: &[(&str, &str)], name: &str) -> String {
    map.iter()
        .fold(name.to_string(), |k, (s, d)| k.replace(s, d))
}

/// A tiny synthetic model's clip component file (`split`), in ComfyUI's in-memory names.
fn clip_file(dir: &Path, arch: &str) -> PathBuf {
    let ck = ok_path(
        dir,
        &[
            "save",
            "--synthetic",
            arch,
            "--tiny",
            "--output-dir",
            "ck",
            "-q",
        ],
    );
    let parts = dir.join(format!("parts_{arch}"));
    let r = run(
        dir,
        &[
            "split",
            ck.to_str().unwrap(),
            "--output-dir",
            parts.to_str().unwrap(),
            "-q",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    parts.join("clip.safetensors")
}

/// Tensors by name: shape and f32 values.
type Values = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Every tensor of a file as (shape, f32 values).
fn values_of(path: &Path) -> Values {
    st::read(path)
        .0
        .into_iter()
        .filter(|(_, (d, _, _))| *d != safetensors::Dtype::U8)
        .map(|(k, (d, s, b))| (k, (s, st::floats(d, &b))))
        .collect()
}

/// The clip component the tool reads from `gguf` (as `save --clip` reads it), in f32.
fn read_back(
    dir: &Path,
    gguf: &Path,
    arch: Option<Arch>,
) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let c = open_component(ComponentKind::Clip, &[gguf.to_path_buf()], arch).unwrap();
    // Every tensor under its own name (the plain layout writes the model component as it is).
    let mut comps = Components::default();
    comps.set_inputs(ComponentKind::Model, c.tensors);
    let mut o = SaveOptions::plain();
    o.dtypes = ComponentDtypes::all(TargetDtype::F32);
    let out = dir.join(format!(
        "back_{}.safetensors",
        gguf.file_stem().unwrap().to_string_lossy()
    ));
    save_to_path(&comps, &out, &o).unwrap();
    values_of(&out)
}

fn convert(dir: &Path, input: &Path, ty: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(format!(
        "out_{ty}_{}",
        input.file_stem().unwrap().to_string_lossy()
    ));
    let mut args = vec![
        "convert",
        input.to_str().unwrap(),
        "--gguf",
        ty,
        "--output-dir",
        out.to_str().unwrap(),
        "-q",
    ];
    args.extend_from_slice(extra);
    // A `qwen25_7b` encoder prints its text encoder's file, then its mmproj's.
    let r = run(dir, &args);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let path = dir.join(r.stdout.lines().next().expect("a path"));
    assert!(path.is_file(), "{} exists", path.display());
    path
}

fn types_of(file: &GgufFile) -> BTreeMap<String, &'static str> {
    file.tensors()
        .iter()
        .map(|t| (t.name.clone(), t.type_name()))
        .collect()
}

#[test]
fn umt5_qwen3_and_qwen25_encoders_round_trip_through_f16_gguf_under_the_loaders_names() {
    let dir = tempfile::tempdir().unwrap();
    for (synthetic, arch, enc, gguf_arch) in [
        ("wan21", None, "umt5xxl", "t5encoder"),
        ("zimage", Some(Arch::ZImage), "qwen3_4b", "qwen3"),
        ("qwenimage", None, "qwen25_7b", "qwen2vl"),
    ] {
        let clip = clip_file(dir.path(), synthetic);
        let extra: Vec<&str> = match arch {
            Some(_) => vec!["--arch", synthetic],
            None => vec![],
        };
        let path = convert(dir.path(), &clip, "F16", &extra);
        assert!(
            path.ends_with(format!("text_encoders/ComfyUI_{enc}_00001_.gguf")),
            "{}",
            path.display()
        );
        let file = GgufFile::open(&path).unwrap();
        assert_eq!(file.architecture(), Some(gguf_arch));
        let source = values_of(&clip);
        // Every GGUF name is llama.cpp's: the loader's map gives back the source's name.
        let map: &[(&str, &str)] = if gguf_arch == "t5encoder" {
            &T5_SD_MAP
        } else {
            &LLAMA_SD_MAP
        };
        let prefix = format!("{enc}.transformer.");
        let mut from_loader: Vec<String> = file
            .tensors()
            .iter()
            .map(|t| format!("{prefix}{}", loader_name(map, &t.name)))
            .collect();
        from_loader.sort();
        // Qwen2.5-VL's vision tower goes into the mmproj file beside it (tests/gguf_mmproj.rs).
        let visual = format!("{prefix}visual.");
        let mut want: Vec<String> = source
            .keys()
            .filter(|k| k.starts_with(&prefix) && !k.starts_with(&visual))
            .cloned()
            .collect();
        want.sort();
        assert_eq!(from_loader, want, "{synthetic}");
        let types = types_of(&file);
        let norm = if gguf_arch == "t5encoder" {
            "enc.blk.0.attn_norm.weight"
        } else {
            "blk.0.attn_norm.weight"
        };
        assert_eq!(types[norm], "F32");
        assert_eq!(types["token_embd.weight"], "F16");
        // Values come back exactly (F16 sources in F16 or F32), with ComfyUI's logit_scale.
        let back = read_back(dir.path(), &path, arch);
        assert_eq!(
            back.keys().collect::<Vec<_>>(),
            source.keys().collect::<Vec<_>>(),
            "{synthetic}"
        );
        for (k, v) in &source {
            assert_eq!(&back[k], v, "{k}");
        }
    }
}

/// ggml's `quantize_row_q8_0_ref` then `dequantize_row_q8_0`, as gguf-py computes them.
fn q8_0(values: &[f32]) -> Vec<f32> {
    values
        .chunks(32)
        .flat_map(|b| {
            let amax = b.iter().fold(0f32, |m, x| m.max(x.abs()));
            let d = amax / 127.0;
            let id = if d == 0.0 { 0.0 } else { 1.0 / d };
            let dh = half::f16::from_f32(d).to_f32();
            b.iter()
                .map(move |x| (x * id).round() * dh)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn q8_0_values_are_ggmls_and_the_mixes_follow_llama_quantize() {
    let dir = tempfile::tempdir().unwrap();
    let clip = clip_file(dir.path(), "zimage");
    let path = convert(dir.path(), &clip, "Q8_0", &["--arch", "zimage"]);
    let file = GgufFile::open(&path).unwrap();
    let types = types_of(&file);
    assert_eq!(types["blk.0.attn_q.weight"], "Q8_0");
    assert_eq!(types["token_embd.weight"], "Q8_0");
    assert_eq!(types["blk.1.attn_k_norm.weight"], "F32");
    let source = values_of(&clip);
    let back = read_back(dir.path(), &path, Some(Arch::ZImage));
    for (k, (shape, v)) in &source {
        let want = if shape.len() == 2 { q8_0(v) } else { v.clone() };
        assert_eq!(back[k].1, want, "{k}");
    }
    // Q4_K_M on rows of 32: llama.cpp's K-quant fallbacks (Q4_K → Q5_0, Q6_K → Q8_0), the
    // embedding as the output (no output.weight) in Q6_K → Q8_0, the last layer's values and
    // feed-forward outputs bumped (use_more_bits of 2 layers).
    let path = convert(dir.path(), &clip, "Q4_K", &["--arch", "zimage"]);
    let types = types_of(&GgufFile::open(&path).unwrap());
    for (name, want) in [
        ("token_embd.weight", "Q8_0"),
        ("blk.0.attn_q.weight", "Q5_0"),
        ("blk.0.attn_v.weight", "Q5_0"),
        ("blk.1.attn_v.weight", "Q8_0"),
        ("blk.0.ffn_down.weight", "Q5_0"),
        ("blk.1.ffn_down.weight", "Q8_0"),
        ("blk.0.ffn_gate.weight", "Q5_0"),
        ("output_norm.weight", "F32"),
    ] {
        assert_eq!(types[name], want, "{name}");
    }
}

/// A Llama text encoder in ComfyUI's names: 32 query heads and 8 key heads of 8 rows (with 2
/// rows a head, or 4, the permutation is its own inverse or the identity), every value a small
/// integer (exact in F16), different per row.
fn llama_file(dir: &Path) -> (PathBuf, Values) {
    let mut tensors = BTreeMap::new();
    let mut values = BTreeMap::new();
    let mut add = |name: &str, shape: Vec<usize>, seed: usize| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7 + seed) % 2001) as f32 - 1000.0)
            .collect();
        let key = format!("llama.transformer.{name}");
        tensors.insert(
            key.clone(),
            (safetensors::Dtype::F32, shape.clone(), st::f32_bytes(&v)),
        );
        values.insert(key, (shape, v));
    };
    add("model.embed_tokens.weight", vec![100, 32], 1);
    add("model.norm.weight", vec![32], 2);
    add("model.layers.0.input_layernorm.weight", vec![32], 3);
    add(
        "model.layers.0.post_attention_layernorm.weight",
        vec![32],
        4,
    );
    add("model.layers.0.self_attn.q_proj.weight", vec![256, 32], 5);
    add("model.layers.0.self_attn.k_proj.weight", vec![64, 32], 6);
    add("model.layers.0.self_attn.v_proj.weight", vec![64, 32], 7);
    add("model.layers.0.self_attn.o_proj.weight", vec![32, 256], 8);
    add("model.layers.0.mlp.gate_proj.weight", vec![64, 32], 9);
    add("model.layers.0.mlp.up_proj.weight", vec![64, 32], 10);
    add("model.layers.0.mlp.down_proj.weight", vec![32, 64], 11);
    let path = dir.join("llama.safetensors");
    st::write(&path, &tensors, &BTreeMap::new());
    (path, values)
}

/// llama.cpp's `permute` (convert_hf_to_gguf.py): rows `reshape(h, 2, R/h/2).swapaxes(1, 2)`.
fn llama_cpp_row(r: usize, rows: usize, heads: usize) -> usize {
    let d = rows / heads;
    let (h, within) = (r / d, r % d);
    // Result index (h, j, i) of the swapped (h, j, i) ← source (h, i, j): within = j·2 + i.
    let (j, i) = (within / 2, within % 2);
    h * d + i * (d / 2) + j
}

#[test]
fn a_llama_files_queries_and_keys_are_permuted_as_llama_cpp_does_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let (src, values) = llama_file(dir.path());
    let path = convert(dir.path(), &src, "F16", &["--arch", "hunyuanvideo"]);
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.architecture(), Some("llama"));
    for (name, key, heads) in [
        (
            "blk.0.attn_q.weight",
            "model.layers.0.self_attn.q_proj.weight",
            32,
        ),
        (
            "blk.0.attn_k.weight",
            "model.layers.0.self_attn.k_proj.weight",
            8,
        ),
        (
            "blk.0.attn_v.weight",
            "model.layers.0.self_attn.v_proj.weight",
            0,
        ),
    ] {
        let t = file.tensor(name).unwrap();
        let stored = st::floats(safetensors::Dtype::F16, &file.read_tensor(t).unwrap());
        let (shape, v) = &values[&format!("llama.transformer.{key}")];
        let (rows, cols) = (shape[0], shape[1]);
        for r in 0..rows {
            let src_row = if heads == 0 {
                r
            } else {
                llama_cpp_row(r, rows, heads)
            };
            assert_eq!(
                &stored[r * cols..(r + 1) * cols],
                &v[src_row * cols..(src_row + 1) * cols],
                "{name} row {r}"
            );
        }
    }
    let back = read_back(dir.path(), &path, Some(Arch::HunyuanVideo));
    for (k, v) in &values {
        assert_eq!(&back[k], v, "{k}");
    }
    // A projection the loader's 32-head reshape does not fit is refused, nothing written.
    let mut tensors = st::read(&src).0;
    let q = "llama.transformer.model.layers.0.self_attn.q_proj.weight";
    tensors.insert(
        q.into(),
        (
            safetensors::Dtype::F32,
            vec![32, 16],
            st::f32_bytes(&[0.5; 512]),
        ),
    );
    let bad = dir.path().join("bad.safetensors");
    st::write(&bad, &tensors, &BTreeMap::new());
    let out = dir.path().join("refused");
    let r = run(
        dir.path(),
        &[
            "convert",
            bad.to_str().unwrap(),
            "--gguf",
            "F16",
            "--arch",
            "hunyuanvideo",
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert_refused(&r, "not a multiple of 64", &out);
}

#[test]
fn encoders_the_loader_does_not_read_from_gguf_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let clip = clip_file(dir.path(), "flux");
    let out = dir.path().join("refused");
    let r = run(
        dir.path(),
        &[
            "convert",
            clip.to_str().unwrap(),
            "--gguf",
            "Q8_0",
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert_refused(&r, "`clip_l` text encoder has no GGUF form", &out);
    // A text-encoder GGUF is no checkpoint: `convert` without --gguf says where it goes.
    let t5 = clip_file(dir.path(), "wan21");
    let gguf = convert(dir.path(), &t5, "Q8_0", &[]);
    let r = run(
        dir.path(),
        &[
            "convert",
            gguf.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert_refused(&r, "save --clip", &out);
    // Nor a denoiser or an autoencoder; `inspect` names it a text encoder.
    let r = run(
        dir.path(),
        &[
            "save",
            "--model",
            gguf.to_str().unwrap(),
            "--clip",
            t5.to_str().unwrap(),
            "--vae",
            t5.with_file_name("vae.safetensors").to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert_refused(&r, "GGUF text encoder", &out);
    let r = run(dir.path(), &["inspect", gguf.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("clip ") && r.stdout.contains("general.architecture: t5encoder"),
        "{}",
        r.stdout
    );
}

/// A sentencepiece `ModelProto`: pieces (text, score, type), trainer ids, normalizer flags.
fn spiece_model() -> Vec<u8> {
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn field(n: u64, body: &[u8], out: &mut Vec<u8>) {
        varint(n << 3 | 2, out);
        varint(body.len() as u64, out);
        out.extend_from_slice(body);
    }
    fn int(n: u64, v: i64, out: &mut Vec<u8>) {
        varint(n << 3, out);
        varint(v as u64, out);
    }
    let mut m = Vec::new();
    for (i, text) in ["<pad>", "</s>", "<unk>", "▁the", "s", "▁a"]
        .iter()
        .enumerate()
    {
        let mut p = Vec::new();
        field(1, text.as_bytes(), &mut p);
        varint(2 << 3 | 5, &mut p);
        p.extend_from_slice(&(-(i as f32) * 0.5).to_le_bytes());
        int(3, [3, 3, 2, 1, 1, 4][i], &mut p);
        field(1, &p, &mut m);
    }
    let mut t = Vec::new();
    int(40, 2, &mut t);
    int(42, 1, &mut t);
    int(43, 0, &mut t);
    field(2, &t, &mut m);
    let mut n = Vec::new();
    int(3, 1, &mut n);
    int(4, 1, &mut n);
    field(3, &n, &mut m);
    m
}

/// The umT5 file of a tiny Wan model with a real sentencepiece model beside it.
fn umt5_with_tokenizer(dir: &Path) -> PathBuf {
    let clip = clip_file(dir, "wan21");
    let mut tensors = st::read(&clip).0;
    let sp = spiece_model();
    tensors.insert(
        "spiece_model".into(),
        (safetensors::Dtype::U8, vec![sp.len()], sp),
    );
    let path = dir.join("umt5.safetensors");
    st::write(&path, &tensors, &BTreeMap::new());
    path
}

#[test]
fn the_umt5_tokenizer_is_written_as_llama_cpp_metadata_the_loader_rebuilds() {
    let dir = tempfile::tempdir().unwrap();
    let path = convert(dir.path(), &umt5_with_tokenizer(dir.path()), "Q8_0", &[]);
    let file = GgufFile::open(&path).unwrap();
    let Some(MetaValue::Array(MetaArray::String(tokens))) = file.get("tokenizer.ggml.tokens")
    else {
        panic!("no token list")
    };
    assert_eq!(
        (tokens.len(), &*tokens[3], &*tokens[999]),
        (1000, "▁the", "[PAD999]")
    );
    assert_eq!(
        file.get("tokenizer.ggml.model").and_then(|v| v.as_str()),
        Some("t5")
    );
    // What the loader builds: the pieces padded to the 1000 rows of the embedding, types as
    // llama.cpp writes them (user-defined → normal), trainer and normalizer fields.
    let rebuilt = sentencepiece_model(&file).unwrap();
    let mut want = Vec::new();
    let mut expected_pieces: Vec<(String, f32, u8)> = ["<pad>", "</s>", "<unk>", "▁the", "s", "▁a"]
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), -(i as f32) * 0.5, [3u8, 3, 2, 1, 1, 1][i]))
        .collect();
    expected_pieces.extend((6..1000).map(|i| (format!("[PAD{i}]"), -10000.0, 5)));
    for (text, score, ty) in &expected_pieces {
        let mut p = vec![0x0a, text.len() as u8];
        p.extend_from_slice(text.as_bytes());
        p.push(0x15);
        p.extend_from_slice(&score.to_le_bytes());
        p.extend_from_slice(&[0x18, *ty]);
        want.push(0x0a);
        want.push(p.len() as u8);
        want.extend_from_slice(&p);
    }
    // trainer_spec: vocab_size 1000, max_sentence_length 4096, byte_fallback, eos 1, pad 0.
    want.extend_from_slice(&[
        0x12, 0x10, 0x20, 0xe8, 0x07, 0x90, 0x01, 0x80, 0x20, 0x98, 0x02, 0x01, 0xd0, 0x02, 0x01,
        0xd8, 0x02, 0x00,
    ]);
    want.extend_from_slice(&[0x1a, 0x04, 0x18, 0x01, 0x20, 0x01]);
    assert_eq!(rebuilt, want);
}

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn f32_sha(v: &[f32]) -> String {
    sha(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
}

/// ComfyUI-GGUF's checkout and a Python that runs its loader, or why the oracle is skipped.
fn loader_oracle() -> Option<(PathBuf, PathBuf)> {
    let Some(repo) = std::env::var_os("CHECKPOINT_SAVE_COMFYUI_GGUF").map(PathBuf::from) else {
        eprintln!(
            "skipped: CHECKPOINT_SAVE_COMFYUI_GGUF (a ComfyUI-GGUF checkout) is not set; see \
             tests/python/comfyui_gguf_loader.py"
        );
        return None;
    };
    assert!(
        repo.join("loader.py").is_file(),
        "{} has no loader.py",
        repo.display()
    );
    let python = std::env::var_os("CHECKPOINT_SAVE_PYTHON")
        .map_or_else(|| PathBuf::from("python3"), PathBuf::from);
    let ok = Command::new(&python)
        .args([
            "-c",
            "import torch, gguf, numpy, sentencepiece, google.protobuf\n\
             assert tuple(map(int, numpy.__version__.split('.')[:2])) < (2, 4)",
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!(
            "skipped: {} lacks torch, gguf, sentencepiece, protobuf or numpy < 2.4 (the loader's \
             `int()` of one-element arrays); set CHECKPOINT_SAVE_PYTHON",
            python.display()
        );
        return None;
    }
    Some((repo, python))
}

fn run_loader(python: &Path, repo: &Path, mode: &str, files: &[&Path]) -> Value {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/comfyui_gguf_loader.py"
    );
    let out = Command::new(python)
        .arg(script)
        .arg(repo)
        .arg(mode)
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The loader's view of a file against the tool's: the same keys (under `prefix`), shapes and
/// values.
fn same_as_loader(loader: &Value, tool: &Values, prefix: &str) {
    let tensors = loader["tensors"].as_object().unwrap();
    let mut keys: Vec<String> = tensors
        .keys()
        .filter(|k| *k != "spiece_model")
        .map(|k| format!("{prefix}{k}"))
        .collect();
    keys.sort();
    let mut want: Vec<String> = tool
        .keys()
        .filter(|k| !k.ends_with("logit_scale"))
        .cloned()
        .collect();
    want.sort();
    assert_eq!(keys, want);
    for (k, t) in tensors {
        if k == "spiece_model" {
            continue;
        }
        let (shape, v) = &tool[&format!("{prefix}{k}")];
        let got: Vec<usize> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(&got, shape, "{k}");
        assert_eq!(t["sha256"].as_str().unwrap(), f32_sha(v), "{k}");
    }
}

#[test]
fn comfyui_gguf_loader_reads_what_the_tool_writes() {
    let Some((repo, python)) = loader_oracle() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Text encoders: umT5 (Q4_K_M), Qwen3 (Q8_0), Llama (Q8_0: permuted rows of blocks).
    let umt5 = umt5_with_tokenizer(d);
    let qwen = clip_file(d, "zimage");
    let (llama, llama_values) = llama_file(d);
    let cases = [
        (convert(d, &umt5, "Q4_K", &[]), None, "umt5xxl"),
        (
            convert(d, &qwen, "Q8_0", &["--arch", "zimage"]),
            Some(Arch::ZImage),
            "qwen3_4b",
        ),
        (
            convert(d, &llama, "Q8_0", &["--arch", "hunyuanvideo"]),
            Some(Arch::HunyuanVideo),
            "llama",
        ),
    ];
    let files: Vec<&Path> = cases.iter().map(|c| c.0.as_path()).collect();
    let loaded = run_loader(&python, &repo, "clip", &files);
    for (path, arch, enc) in &cases {
        let tool = read_back(d, path, *arch);
        same_as_loader(
            &loaded[path.to_str().unwrap()],
            &tool,
            &format!("{enc}.transformer."),
        );
    }
    // In F16 the loader gives back the source itself: llama.cpp's permutation, undone.
    let f16 = convert(d, &llama, "F16", &["--arch", "hunyuanvideo"]);
    let loaded = run_loader(&python, &repo, "clip", &[f16.as_path()]);
    same_as_loader(
        &loaded[f16.to_str().unwrap()],
        &llama_values,
        "llama.transformer.",
    );
    // The tokenizer the loader rebuilds is the one the tool reads back.
    let tok = run_loader(&python, &repo, "tokenizer", &[cases[0].0.as_path()]);
    let hex = tok[cases[0].0.to_str().unwrap()]["spiece_model"]
        .as_str()
        .unwrap();
    let rebuilt = sentencepiece_model(&GgufFile::open(&cases[0].0).unwrap()).unwrap();
    let ours: String = rebuilt.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, ours);
    // A denoiser: the loader's keys are convert.py's (the source's), its values the tool's.
    let ck = ok_path(
        d,
        &[
            "save",
            "--synthetic",
            "flux",
            "--tiny",
            "--output-dir",
            "fck",
            "-q",
        ],
    );
    let flux = ok_path(
        d,
        &[
            "convert",
            ck.to_str().unwrap(),
            "--gguf",
            "Q4_K",
            "--output-dir",
            "fgg",
            "-q",
        ],
    );
    let loaded = run_loader(&python, &repo, "sd", &[flux.as_path()]);
    let entry = &loaded[flux.to_str().unwrap()];
    assert_eq!(entry["arch"], "flux");
    let model = open_component(
        ComponentKind::Model,
        std::slice::from_ref(&flux),
        Some(Arch::Flux),
    )
    .unwrap();
    let mut comps = Components::default();
    comps.set_inputs(ComponentKind::Model, model.tensors);
    let mut o = SaveOptions::plain();
    o.dtypes = ComponentDtypes::all(TargetDtype::F32);
    let out = d.join("flux_back.safetensors");
    save_to_path(&comps, &out, &o).unwrap();
    let tool = values_of(&out);
    let parts = d.join("fparts");
    let r = run(
        d,
        &[
            "split",
            ck.to_str().unwrap(),
            "--output-dir",
            parts.to_str().unwrap(),
            "-q",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let source_keys: Vec<String> = values_of(&parts.join("model.safetensors"))
        .into_keys()
        .collect();
    assert_eq!(tool.keys().cloned().collect::<Vec<_>>(), source_keys);
    same_as_loader(entry, &tool, "");
}

/// `split --gguf F16` of a tiny synthetic `family` (f16) writes `want` (under `parts/`), and
/// `save` of those node files (the `.gguf`s among them), given in `want`'s order (test-sized
/// CLIPs are told apart by their place), gives back every tensor's values; a GGUF carries no
/// `logit_scale`, so the loader's default is made for each key in `defaults`.
fn split_gguf_and_back(family: &str, want: &[&str], back_args: &[&str], defaults: &[(&str, f32)]) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ck = ok_path(
        d,
        &[
            "save",
            "--synthetic",
            family,
            "--tiny",
            "--dtype",
            "f16",
            "--output-dir",
            "ck",
            "-q",
        ],
    );
    let r = run(
        d,
        &[
            "split",
            ck.to_str().unwrap(),
            "--gguf",
            "F16",
            "--output-dir",
            "parts",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let files: Vec<&str> = r.stdout.lines().collect();
    let rel = |f: &str| {
        f.strip_prefix(&format!("{}/", d.join("parts").display()))
            .map(str::to_string)
    };
    let mut names: Vec<String> = files
        .iter()
        .map(|f| rel(f).unwrap_or_else(|| f.strip_prefix("parts/").unwrap().to_string()))
        .collect();
    names.sort();
    let mut sorted = want.to_vec();
    sorted.sort();
    assert_eq!(names, sorted);
    let p = |f: &str| d.join("parts").join(f).to_str().unwrap().to_string();
    let mut args: Vec<String> = vec!["save".into()];
    for f in want {
        let flag = match f.split('/').next().unwrap() {
            "diffusion_models" => "--model",
            "vae" => "--vae",
            _ => "--clip",
        };
        args.extend([flag.to_string(), p(f)]);
    }
    args.extend(back_args.iter().map(|a| a.to_string()));
    args.extend(["--output-dir", "back", "-q"].map(String::from));
    let back = ok_path(d, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let (want, got) = (values_of(&ck), values_of(&back));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, v) in &want {
        if let Some((_, default)) = defaults.iter().find(|(name, _)| name == k) {
            // A GGUF carries none: ComfyUI's default is made, as when the loader reads it.
            assert_eq!(got[k].1, [*default], "{k}");
            continue;
        }
        assert_eq!(&got[k], v, "{k}");
    }
}

#[test]
fn split_gguf_writes_the_node_files_with_gguf_and_save_reads_them_back_exactly() {
    split_gguf_and_back(
        "flux",
        &[
            "clip/ComfyUI_clip_l_00001_.safetensors",
            "diffusion_models/ComfyUI_00001_.gguf",
            "text_encoders/ComfyUI_t5xxl_00001_.gguf",
            "vae/ComfyUI_vae_00001_.safetensors",
        ],
        &[],
        &[("text_encoders.t5xxl.logit_scale", 4.6055)],
    );
}

/// The tiny HunyuanVideo and HiDream carry a `llama` encoder with the head counts the loader
/// un-permutes (32 query, 8 key/value heads), so their test-size models split to GGUF too, and
/// the permutation's round trip is exact.
#[test]
fn split_gguf_of_models_with_a_llama_encoder_round_trips_its_permuted_projections() {
    let llama = ("text_encoders.llama.logit_scale", 4.6055);
    split_gguf_and_back(
        "hunyuan_video",
        &[
            "clip/ComfyUI_clip_l_00001_.safetensors",
            "diffusion_models/ComfyUI_00001_.gguf",
            "text_encoders/ComfyUI_llama_00001_.gguf",
            "vae/ComfyUI_vae_00001_.safetensors",
        ],
        &["--arch", "hunyuan-video", "--prediction", "flow"],
        &[llama],
    );
    split_gguf_and_back(
        "hidream",
        &[
            "clip/ComfyUI_clip_l_00001_.safetensors",
            "clip/ComfyUI_clip_g_00001_.safetensors",
            "diffusion_models/ComfyUI_00001_.gguf",
            "text_encoders/ComfyUI_llama_00001_.gguf",
            "text_encoders/ComfyUI_t5xxl_00001_.gguf",
            "vae/ComfyUI_vae_00001_.safetensors",
        ],
        &["--arch", "hidream", "--prediction", "flow"],
        &[llama, ("text_encoders.t5xxl.logit_scale", 4.6055)],
    );
}
