//! Mistral 3 text encoders (ComfyUI's `mistral3_24b`, Flux 2 dev's) as GGUF, both ways, with
//! the tekken tokenizer: `convert TE.safetensors --gguf TYPE` writes the `llama` file llama.cpp's
//! converter writes for Mistral Small 3.x (tokenizer metadata compared with
//! `tests/fixtures/gguf/tekken.gguf`, made by `make_tekken_fixtures.py` with gguf-py from the
//! converter's algorithms), and a `llama` file with Mistral 3's 131072 × 5120 embedding reads
//! back as `mistral3_24b` with the `tekken_model` ComfyUI-GGUF's loader builds
//! (`tekken_loader.json`, the loader's logic run by the same script).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

mod common;

use checkpoint_save::gguf::{tekken_model, GgufFile, MetaArray, MetaValue};
use checkpoint_save::{
    open_component, save_to_path, Arch, ComponentDtypes, ComponentKind, Components, SaveOptions,
    TargetDtype,
};
use common::cli::{assert_refused, ok_path, run};
use common::st;
use safetensors::Dtype;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf")
        .join(name)
}

/// The llama.cpp tokenizer fields compared between files.
const TOKENIZER_KEYS: [&str; 10] = [
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
];

fn tokenizer_of(file: &GgufFile) -> Vec<(&'static str, Option<MetaValue>)> {
    TOKENIZER_KEYS
        .iter()
        .map(|k| (*k, file.get(k).cloned()))
        .collect()
}

/// A tiny Mistral 3 encoder in ComfyUI's names (32 query and 8 key/value heads of 8 rows, an
/// embedding of `rows`), every value a small integer (exact in F16), with `tekken_model`.
fn mistral_file(dir: &Path, name: &str, rows: usize, tekken: Option<&[u8]>) -> PathBuf {
    let mut tensors = BTreeMap::new();
    let mut add = |name: &str, shape: Vec<usize>, seed: usize| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7 + seed) % 2001) as f32 - 1000.0)
            .collect();
        tensors.insert(
            format!("mistral3_24b.transformer.{name}"),
            (Dtype::F32, shape, st::f32_bytes(&v)),
        );
    };
    add("model.embed_tokens.weight", vec![rows, 32], 1);
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
    add("model.layers.0.mlp.gate_proj.weight", vec![96, 32], 9);
    add("model.layers.0.mlp.up_proj.weight", vec![96, 32], 10);
    add("model.layers.0.mlp.down_proj.weight", vec![32, 96], 11);
    if let Some(t) = tekken {
        tensors.insert(
            "tekken_model".into(),
            (Dtype::U8, vec![t.len()], t.to_vec()),
        );
    }
    let path = dir.join(format!("{name}.safetensors"));
    st::write(&path, &tensors, &BTreeMap::new());
    path
}

fn convert(dir: &Path, input: &Path, ty: &str, out: &str) -> PathBuf {
    ok_path(
        dir,
        &[
            "convert",
            input.to_str().unwrap(),
            "--gguf",
            ty,
            "--output-dir",
            dir.join(out).to_str().unwrap(),
            "-q",
        ],
    )
}

fn tokens_of(file: &GgufFile) -> Vec<String> {
    match file.get("tokenizer.ggml.tokens") {
        Some(MetaValue::Array(MetaArray::String(t))) => t.clone(),
        other => panic!("no tokens: {other:?}"),
    }
}

#[test]
fn a_tekken_file_is_written_as_llama_cpps_mistral_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let want = GgufFile::open(&fixture("tekken.gguf")).unwrap();
    let rows = tokens_of(&want).len();
    let json = std::fs::read(fixture("tekken.json")).unwrap();
    let src = mistral_file(d, "te", rows, Some(&json));
    let path = convert(d, &src, "Q8_0", "q8");
    assert!(
        path.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .contains("mistral3_24b"),
        "{}",
        path.display()
    );
    let got = GgufFile::open(&path).unwrap();
    assert_eq!(got.architecture(), Some("llama"));
    assert_eq!(tokenizer_of(&got), tokenizer_of(&want));
    // Mistral Small 3.x's hyper-parameters: from the shapes, else its config.
    for (k, v) in [
        ("llama.block_count", MetaValue::U32(1)),
        ("llama.embedding_length", MetaValue::U32(32)),
        ("llama.feed_forward_length", MetaValue::U32(96)),
        ("llama.attention.head_count", MetaValue::U32(32)),
        ("llama.attention.head_count_kv", MetaValue::U32(8)),
        ("llama.attention.key_length", MetaValue::U32(8)),
        ("llama.attention.value_length", MetaValue::U32(8)),
        ("llama.rope.dimension_count", MetaValue::U32(8)),
        ("llama.vocab_size", MetaValue::U32(rows as u32)),
        ("llama.context_length", MetaValue::U32(131_072)),
        ("llama.rope.freq_base", MetaValue::F32(1.0e9)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(1.0e-5),
        ),
    ] {
        assert_eq!(got.get(k), Some(&v), "{k}");
    }
    // GGUF → the loader's tekken JSON → GGUF gives the same tokenizer.
    let loader = std::fs::read(fixture("tekken_loader.json")).unwrap();
    assert_eq!(tekken_model(&got).unwrap(), loader);
    let again = mistral_file(d, "again", rows, Some(&loader));
    let again = GgufFile::open(&convert(d, &again, "F16", "f16")).unwrap();
    assert_eq!(tokenizer_of(&again), tokenizer_of(&want));
}

#[test]
fn the_loaders_tekken_json_from_gguf_metadata_is_pythons_byte_for_byte() {
    let file = GgufFile::open(&fixture("tekken.gguf")).unwrap();
    let want = std::fs::read(fixture("tekken_loader.json")).unwrap();
    assert_eq!(tekken_model(&file).unwrap(), want);
}

/// llama.cpp's `permute` (convert_hf_to_gguf.py): rows `reshape(h, 2, R/h/2).swapaxes(1, 2)`.
fn llama_cpp_row(r: usize, rows: usize, heads: usize) -> usize {
    let d = rows / heads;
    let (h, within) = (r / d, r % d);
    let (j, i) = (within / 2, within % 2);
    h * d + i * (d / 2) + j
}

#[test]
fn queries_and_keys_are_permuted_as_for_llama_and_read_back_as_mistral3() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = mistral_file(d, "te", 300, None);
    let path = convert(d, &src, "F16", "f16");
    let file = GgufFile::open(&path).unwrap();
    // A small embedding: the loader rebuilds no tokenizer, so none is needed or written.
    assert!(file.get("tokenizer.ggml.model").is_none());
    let source = st::read(&src).0;
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
    ] {
        let stored = st::floats(
            Dtype::F16,
            &file.read_tensor(file.tensor(name).unwrap()).unwrap(),
        );
        let (dt, shape, bytes) = &source[&format!("mistral3_24b.transformer.{key}")];
        let v = st::floats(*dt, bytes);
        let (rows, cols) = (shape[0], shape[1]);
        for r in 0..rows {
            let s = llama_cpp_row(r, rows, heads);
            assert_eq!(
                &stored[r * cols..(r + 1) * cols],
                &v[s * cols..(s + 1) * cols],
                "{name} {r}"
            );
        }
    }
    // Read back for Flux 2 it is Mistral 3 again, in its source's values.
    let c = open_component(
        ComponentKind::Clip,
        std::slice::from_ref(&path),
        Some(Arch::Flux2),
    )
    .unwrap();
    let q = "mistral3_24b.transformer.model.layers.0.self_attn.q_proj.weight";
    assert!(
        c.tensors.contains_key(q),
        "{:?}",
        c.tensors.keys().collect::<Vec<_>>()
    );
    assert!(!c.tensors.contains_key("tekken_model"));
    // In F16 the values read back are the source's (small integers), the rows in their order.
    let mut comps = Components::default();
    comps.set_inputs(ComponentKind::Model, c.tensors);
    let mut o = SaveOptions::plain();
    o.dtypes = ComponentDtypes::all(TargetDtype::F32);
    let back = d.join("back.safetensors");
    save_to_path(&comps, &back, &o).unwrap();
    let back = st::read(&back).0;
    for (k, (dt, shape, bytes)) in &source {
        let (bdt, bshape, bbytes) = &back[k];
        assert_eq!(bshape, shape, "{k}");
        assert_eq!(st::floats(*bdt, bbytes), st::floats(*dt, bytes), "{k}");
    }
    let parts = d.join("parts");
    let ck = ok_path(
        d,
        &[
            "save",
            "--synthetic",
            "flux2",
            "--tiny",
            "--output-dir",
            "ck",
            "-q",
        ],
    );
    // `split --gguf` of Flux 2 dev writes its Mistral 3 as a text-encoder GGUF.
    let r = run(
        d,
        &[
            "split",
            ck.to_str().unwrap(),
            "--gguf",
            "Q8_0",
            "--output-dir",
            parts.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let te = r
        .stdout
        .lines()
        .find(|l| l.contains("text_encoders/") && l.contains("mistral3_24b"))
        .unwrap_or_else(|| panic!("{}", r.stdout));
    let te = if Path::new(te).is_absolute() {
        PathBuf::from(te)
    } else {
        d.join(te)
    };
    // Its synthetic tekken_model (1000 rows at test size) as llama.cpp's tokenizer metadata.
    let file = GgufFile::open(&te).unwrap();
    assert_eq!(
        file.get("tokenizer.ggml.pre").and_then(|v| v.as_str()),
        Some("tekken")
    );
    assert_eq!(tokens_of(&file).len(), 1000);
    assert_eq!(&tokens_of(&file)[..3], ["<unk>", "<s>", "</s>"]);
}

/// A GGUF v3 file written here (independently of the crate): `llama`, the tokenizer metadata
/// of `tokens`/`types` (none without them), an F16 `token_embd.weight` of `rows` × 5120 and an F32
/// `output_norm.weight`, its data left sparse (`set_len`).
fn sparse_mistral_gguf(path: &Path, tokenizer: Option<(&[String], &[i32])>, rows: u64) {
    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend_from_slice(&(v.len() as u64).to_le_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    let mut h = b"GGUF".to_vec();
    h.extend_from_slice(&3u32.to_le_bytes());
    h.extend_from_slice(&2u64.to_le_bytes());
    h.extend_from_slice(&(if tokenizer.is_some() { 4u64 } else { 1 }).to_le_bytes());
    s(&mut h, "general.architecture");
    h.extend_from_slice(&8u32.to_le_bytes());
    s(&mut h, "llama");
    if let Some((tokens, types)) = tokenizer {
        s(&mut h, "tokenizer.ggml.model");
        h.extend_from_slice(&8u32.to_le_bytes());
        s(&mut h, "gpt2");
        s(&mut h, "tokenizer.ggml.tokens");
        h.extend_from_slice(&9u32.to_le_bytes());
        h.extend_from_slice(&8u32.to_le_bytes());
        h.extend_from_slice(&(tokens.len() as u64).to_le_bytes());
        for t in tokens {
            s(&mut h, t);
        }
        s(&mut h, "tokenizer.ggml.token_type");
        h.extend_from_slice(&9u32.to_le_bytes());
        h.extend_from_slice(&5u32.to_le_bytes());
        h.extend_from_slice(&(types.len() as u64).to_le_bytes());
        for t in types {
            h.extend_from_slice(&t.to_le_bytes());
        }
    }
    let embd = rows * 5120 * 2;
    for (name, dims, ty, offset) in [
        ("token_embd.weight", vec![5120u64, rows], 1u32, 0u64),
        ("output_norm.weight", vec![5120], 0, embd),
    ] {
        s(&mut h, name);
        h.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            h.extend_from_slice(&d.to_le_bytes());
        }
        h.extend_from_slice(&ty.to_le_bytes());
        h.extend_from_slice(&offset.to_le_bytes());
    }
    h.resize(h.len().div_ceil(32) * 32, 0);
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&h).unwrap();
    f.set_len(h.len() as u64 + embd + 5120 * 4).unwrap();
}

#[test]
fn the_full_size_embedding_reads_as_mistral3_with_its_tekken_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fx = GgufFile::open(&fixture("tekken.gguf")).unwrap();
    let tokens = tokens_of(&fx);
    let Some(MetaValue::Array(MetaArray::I32(types))) = fx.get("tokenizer.ggml.token_type") else {
        panic!("no types")
    };
    let path = d.join("mistral.gguf");
    sparse_mistral_gguf(&path, Some((&tokens, types)), 131_072);
    let c = open_component(ComponentKind::Clip, std::slice::from_ref(&path), None).unwrap();
    let embd = &c.tensors["mistral3_24b.transformer.model.embed_tokens.weight"];
    assert_eq!(embd.info().shape, [131_072, 5120]);
    // The tokenizer as the loader rebuilds it, written out as a plain file: the same bytes.
    let mut comps = Components::default();
    comps.set_inputs(
        ComponentKind::Model,
        c.tensors
            .into_iter()
            .filter(|(k, _)| k == "tekken_model")
            .collect(),
    );
    let out = d.join("tekken.safetensors");
    save_to_path(&comps, &out, &SaveOptions::plain()).unwrap();
    let (tensors, _) = st::read(&out);
    let want = std::fs::read(fixture("tekken_loader.json")).unwrap();
    assert_eq!(tensors["tekken_model"], (Dtype::U8, vec![want.len()], want));
    // Without its tokenizer metadata the loader cannot rebuild it: a clear error.
    let bare = d.join("bare.gguf");
    sparse_mistral_gguf(&bare, None, 131_072);
    let e = open_component(ComponentKind::Clip, std::slice::from_ref(&bare), None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("tokenizer.ggml.model") && e.contains("tekken_model"),
        "{e}"
    );
}

#[test]
fn a_full_size_mistral3_without_tekken_model_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The 131072 × 5120 BF16 embedding of a safetensors file, its data sparse.
    let header = serde_json::json!({
        "mistral3_24b.transformer.model.embed_tokens.weight":
            {"dtype": "BF16", "shape": [131072, 5120], "data_offsets": [0, 1_342_177_280u64]},
        "mistral3_24b.transformer.model.norm.weight":
            {"dtype": "BF16", "shape": [5120], "data_offsets": [1_342_177_280u64, 1_342_187_520u64]},
    })
    .to_string();
    let mut h = header.into_bytes();
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let path = d.join("big.safetensors");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&h).unwrap();
    f.set_len(8 + h.len() as u64 + 1_342_187_520).unwrap();
    let out = d.join("refused");
    let r = run(
        d,
        &[
            "convert",
            path.to_str().unwrap(),
            "--gguf",
            "Q8_0",
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert_refused(&r, "no `tekken_model`", &out);
}

/// ComfyUI-GGUF's checkout and a Python that imports its loader (torch and gguf), or why the
/// oracle is skipped (`tests/python/comfyui_gguf_loader.py`; its `tekken` mode stands in
/// GPT-2's `bytes_to_unicode` where transformers is absent).
fn loader_oracle() -> Option<(PathBuf, PathBuf)> {
    let Some(repo) = std::env::var_os("CHECKPOINT_SAVE_COMFYUI_GGUF").map(PathBuf::from) else {
        eprintln!("skipped: CHECKPOINT_SAVE_COMFYUI_GGUF (a ComfyUI-GGUF checkout) is not set");
        return None;
    };
    let python = std::env::var_os("CHECKPOINT_SAVE_PYTHON")
        .map_or_else(|| PathBuf::from("python3"), PathBuf::from);
    let ok = std::process::Command::new(&python)
        .args(["-c", "import torch, gguf"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipped: {} lacks torch or gguf", python.display());
        return None;
    }
    Some((repo, python))
}

#[test]
fn comfyui_gguf_loader_rebuilds_the_tekken_model_the_tool_reads() {
    let Some((repo, python)) = loader_oracle() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rows = tokens_of(&GgufFile::open(&fixture("tekken.gguf")).unwrap()).len();
    let json = std::fs::read(fixture("tekken.json")).unwrap();
    let written = convert(d, &mistral_file(d, "te", rows, Some(&json)), "Q8_0", "q8");
    for path in [fixture("tekken.gguf"), written] {
        let out = std::process::Command::new(&python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/python/comfyui_gguf_loader.py"
            ))
            .arg(&repo)
            .arg("tekken")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let hex = v[path.to_str().unwrap()]["tekken_model"].as_str().unwrap();
        let ours: String = tekken_model(&GgufFile::open(&path).unwrap())
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, ours, "{}", path.display());
    }
}
