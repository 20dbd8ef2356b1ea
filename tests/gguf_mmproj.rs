//! Qwen2.5-VL's vision tower as llama.cpp's mmproj GGUF beside a `qwen2vl` text encoder, both
//! ways: `convert TE --gguf TYPE` of Qwen-Image's encoder writes the text encoder and
//! `<stem>-mmproj-F16.gguf`, whose names (through ComfyUI-GGUF's `CLIP_VISION_SD_MAP` and its
//! q/k/v grouping, copied below from its `loader.py`), types and split values are checked here
//! independently of the crate; reading the text encoder pairs the mmproj as the loader does
//! (its `strip_quant_suffix` regex ported below) and gives the tower back under ComfyUI's
//! names with the loader's dtypes. ComfyUI-GGUF's own loader is an optional oracle
//! (`CHECKPOINT_SAVE_COMFYUI_GGUF`, as in `tests/gguf_text.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use checkpoint_save::gguf::{gguf_header, GgufFile, GgufTensorInfo, MetaValue};
use checkpoint_save::quant::GgmlType;
use checkpoint_save::{
    open_component, save_to_path, ComponentDtypes, ComponentKind, Components, Dtype, SaveOptions,
    TargetDtype,
};
use common::cli::{assert_refused, files_under, ok_path, run};
use common::ggml::{decode, encode};
use common::st;
use serde_json::Value;

/// ComfyUI-GGUF's `CLIP_VISION_SD_MAP` (loader.py, Dec 2025), in order.
const CLIP_VISION_SD_MAP: [(&str, &str); 10] = [
    ("mm.", "visual.merger.mlp."),
    ("v.post_ln.", "visual.merger.ln_q."),
    ("v.patch_embd", "visual.patch_embed.proj"),
    ("v.blk.", "visual.blocks."),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("attn_out.", "attn.proj."),
    ("ln1.", "norm1."),
    ("ln2.", "norm2."),
];

const PREFIX: &str = "qwen25_7b.transformer.";

/// The loader's key for one mmproj tensor: `.weight.1` folded into the stacked patch
/// embedding, `sd_map_replace`, then `attn_{q,k,v}` grouped into `attn.qkv`.
fn loader_key(name: &str) -> String {
    let name = name
        .strip_suffix(".weight.1")
        .map_or(name.to_string(), |n| format!("{n}.weight"));
    let k = CLIP_VISION_SD_MAP
        .iter()
        .fold(name, |k, (s, d)| k.replace(s, d));
    if ["attn_q", "attn_k", "attn_v"].iter().any(|x| k.contains(x)) {
        let (block, part) = k.rsplit_once(".attn_").unwrap();
        return format!("{block}.attn.qkv.{}", part.rsplit('.').next().unwrap());
    }
    k
}

/// `loader.py`'s `strip_quant_suffix` (`[-_]?(?:ud-)?i?q[0-9]_[a-z0-9_\-]{1,8}$`, ignoring
/// case) on a lower-cased name, without a regex engine.
fn strip_quant_suffix(name: &str) -> String {
    let b = name.as_bytes();
    let tail_ok = |t: &[u8]| {
        (1..=8).contains(&t.len())
            && t.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
    };
    for start in 0..b.len() {
        let mut i = start;
        if matches!(b[i], b'-' | b'_') {
            i += 1;
        }
        for skip_ud in [true, false] {
            let mut j = i;
            if skip_ud {
                if !b[j..].starts_with(b"ud-") {
                    continue;
                }
                j += 3;
            }
            for skip_i in [true, false] {
                let mut k = j;
                if skip_i {
                    if b.get(k) != Some(&b'i') {
                        continue;
                    }
                    k += 1;
                }
                let qd = b.get(k) == Some(&b'q')
                    && b.get(k + 1).is_some_and(u8::is_ascii_digit)
                    && b.get(k + 2) == Some(&b'_');
                if qd && tail_ok(&b[k + 3..]) {
                    return name[..start].to_string();
                }
            }
        }
    }
    name.to_string()
}

/// The mmproj files of `dir` the loader pairs with the text encoder `text`, sorted.
fn loader_matches(dir: &Path, text: &Path) -> Vec<String> {
    let stem = text.file_stem().unwrap().to_string_lossy().to_lowercase();
    let tenc = strip_quant_suffix(&stem);
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| {
            let p = Path::new(f);
            let name = p.file_stem().unwrap().to_string_lossy().to_lowercase();
            p.extension()
                .is_some_and(|e| e.to_string_lossy().to_lowercase() == "gguf")
                && name.contains("mmproj")
                && name.contains(&tenc)
        })
        .collect();
    out.sort();
    out
}

/// Qwen-Image's tiny synthetic text-encoder file, in ComfyUI's in-memory names.
fn qwen_clip(dir: &Path) -> PathBuf {
    let ck = ok_path(
        dir,
        &[
            "save",
            "--synthetic",
            "qwen_image",
            "--tiny",
            "--output-dir",
            "ck",
            "-q",
        ],
    );
    let parts = dir.join("parts");
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

/// `convert INPUT --gguf TYPE`: the paths printed (text encoder, then mmproj).
fn convert(dir: &Path, input: &Path, ty: &str, out: &str, extra: &[&str]) -> Vec<PathBuf> {
    let mut args = vec![
        "convert",
        input.to_str().unwrap(),
        "--gguf",
        ty,
        "--output-dir",
        out,
        "-q",
    ];
    args.extend_from_slice(extra);
    let r = run(dir, &args);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    r.stdout.lines().map(|l| dir.join(l)).collect()
}

/// Every tensor of a safetensors file: dtype, shape, f32 values.
fn values_of(path: &Path) -> BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<f32>)> {
    st::read(path)
        .0
        .into_iter()
        .filter(|(_, (d, _, _))| *d != safetensors::Dtype::U8)
        .map(|(k, (d, s, b))| (k, (d, s.clone(), st::floats(d, &b))))
        .collect()
}

/// Tensors by name: shape and f32 values.
type Values = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// The clip component read from `gguf` as `--clip` reads it: each key's dtype, and its values
/// written in f32.
fn read_back(dir: &Path, gguf: &Path) -> (BTreeMap<String, Dtype>, Values) {
    let c = open_component(ComponentKind::Clip, &[gguf.to_path_buf()], None).unwrap();
    let dtypes = c
        .tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.info().dtype))
        .collect();
    let mut comps = Components::default();
    comps.set_inputs(ComponentKind::Model, c.tensors);
    let mut o = SaveOptions::plain();
    o.dtypes = ComponentDtypes::all(TargetDtype::F32);
    let out = dir.join(format!(
        "back_{}.safetensors",
        gguf.file_stem().unwrap().to_string_lossy()
    ));
    save_to_path(&comps, &out, &o).unwrap();
    let values = values_of(&out)
        .into_iter()
        .map(|(k, (_, s, v))| (k, (s, v)))
        .collect();
    (dtypes, values)
}

fn f16_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect()
}

fn meta_u32(g: &GgufFile, key: &str) -> u32 {
    match g.get(key) {
        Some(MetaValue::U32(v)) => *v,
        other => panic!("{key}: {other:?}"),
    }
}

fn meta_str<'a>(g: &'a GgufFile, key: &str) -> &'a str {
    match g.get(key) {
        Some(MetaValue::String(v)) => v,
        other => panic!("{key}: {other:?}"),
    }
}

#[test]
fn qwen_image_encoder_writes_its_vision_tower_as_an_mmproj_and_reads_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let clip = qwen_clip(d);
    let source = values_of(&clip);
    let paths = convert(d, &clip, "Q8_0", "out", &[]);
    assert_eq!(paths.len(), 2, "{paths:?}");
    let (text, mm) = (&paths[0], &paths[1]);
    assert!(
        text.ends_with("text_encoders/ComfyUI_qwen25_7b_00001_.gguf"),
        "{}",
        text.display()
    );
    assert!(
        mm.ends_with("text_encoders/ComfyUI_qwen25_7b_00001_-mmproj-F16.gguf"),
        "{}",
        mm.display()
    );
    // The loader finds exactly this mmproj for this text encoder.
    assert_eq!(
        loader_matches(text.parent().unwrap(), text),
        vec!["ComfyUI_qwen25_7b_00001_-mmproj-F16.gguf".to_string()]
    );

    // The text encoder holds the language model only.
    let tg = GgufFile::open(text).unwrap();
    assert_eq!(tg.architecture(), Some("qwen2vl"));
    assert!(tg
        .tensors()
        .iter()
        .all(|t| !t.name.contains("visual") && !t.name.starts_with("v.")));

    // The mmproj: llama.cpp's names, which the loader maps onto the source's vision keys.
    let g = GgufFile::open(mm).unwrap();
    assert_eq!(g.architecture(), Some("clip"));
    assert_eq!(meta_str(&g, "general.type"), "mmproj");
    assert_eq!(meta_str(&g, "clip.projector_type"), "qwen2.5vl_merger");
    assert_eq!(meta_u32(&g, "general.file_type"), 1);
    // The tiny tower: width 16, MLP 24, 2 blocks, patches of 2, into the LM's 32.
    assert_eq!(meta_u32(&g, "clip.vision.embedding_length"), 16);
    assert_eq!(meta_u32(&g, "clip.vision.feed_forward_length"), 24);
    assert_eq!(meta_u32(&g, "clip.vision.block_count"), 2);
    assert_eq!(meta_u32(&g, "clip.vision.patch_size"), 2);
    assert_eq!(meta_u32(&g, "clip.vision.projection_dim"), 32);
    assert_eq!(g.get("clip.use_silu"), Some(&MetaValue::Bool(true)));
    let mut from_loader: Vec<String> = g
        .tensors()
        .iter()
        .map(|t| format!("{PREFIX}{}", loader_key(&t.name)))
        .collect();
    from_loader.sort();
    from_loader.dedup();
    let want: Vec<String> = source
        .keys()
        .filter(|k| k.starts_with(&format!("{PREFIX}visual.")))
        .cloned()
        .collect();
    assert_eq!(from_loader, want);
    for name in [
        "v.patch_embd.weight",
        "v.patch_embd.weight.1",
        "v.blk.1.attn_q.weight",
        "v.blk.1.attn_v.bias",
        "v.blk.0.attn_out.weight",
        "v.blk.0.ln1.weight",
        "v.post_ln.weight",
        "mm.0.weight",
        "mm.2.bias",
    ] {
        assert!(g.tensor(name).is_some(), "{name}");
    }
    // F16 for two or more dimensions, F32 for the rest (whatever TYPE the text encoder has).
    for t in g.tensors() {
        let want = if t.shape.len() >= 2 { "F16" } else { "F32" };
        assert_eq!(t.type_name(), want, "{}", t.name);
    }

    // The splits' values, read from the file, are the source's slices.
    let (_, qkv_shape, qkv) = &source[&format!("{PREFIX}visual.blocks.1.attn.qkv.weight")];
    let third = qkv.len() / 3;
    for (i, p) in ["q", "k", "v"].iter().enumerate() {
        let t = g.tensor(&format!("v.blk.1.attn_{p}.weight")).unwrap();
        assert_eq!(t.shape, vec![qkv_shape[0] / 3, qkv_shape[1]]);
        assert_eq!(
            f16_values(&g.read_tensor(t).unwrap()),
            qkv[i * third..(i + 1) * third],
            "{p}"
        );
    }
    let (_, pshape, patch) = &source[&format!("{PREFIX}visual.patch_embed.proj.weight")];
    let [c1, c2, kt, kh, kw] = pshape[..] else {
        panic!("{pshape:?}")
    };
    assert_eq!(kt, 2);
    for (slice, name) in ["v.patch_embd.weight", "v.patch_embd.weight.1"]
        .iter()
        .enumerate()
    {
        let t = g.tensor(name).unwrap();
        assert_eq!(t.shape, vec![c1, c2, kh, kw]);
        let want: Vec<f32> = (0..c1 * c2)
            .flat_map(|ij| {
                let at = (ij * kt + slice) * kh * kw;
                patch[at..at + kh * kw].to_vec()
            })
            .collect();
        assert_eq!(f16_values(&g.read_tensor(t).unwrap()), want, "{name}");
    }

    // Read back through the text encoder: the tower under ComfyUI's names, the loader's dtypes,
    // the source's values (an F16 source survives F16 and F32 exactly).
    let (dtypes, back) = read_back(d, text);
    // An F32 bias comes back f16, as the loader's `dequantize_tensor(…, float16)` gives it.
    for (key, dtype) in [
        ("visual.patch_embed.proj.weight", Dtype::F32),
        ("visual.blocks.0.attn.qkv.weight", Dtype::F16),
        ("visual.blocks.0.attn.qkv.bias", Dtype::F16),
        ("visual.blocks.0.attn.proj.weight", Dtype::F16),
        ("visual.blocks.0.norm1.weight", Dtype::F32),
    ] {
        assert_eq!(dtypes[&format!("{PREFIX}{key}")], dtype, "{key}");
    }
    for (k, (_, shape, v)) in source.iter().filter(|(k, _)| k.contains(".visual.")) {
        let (bs, bv) = &back[k];
        assert_eq!(bs, shape, "{k}");
        assert_eq!(bv, v, "{k}");
    }
    assert!(back.keys().any(|k| k.contains("model.layers.0")));

    // The pair written back as GGUF again is the same mmproj, byte for byte.
    let again = convert(d, text, "Q8_0", "again", &[]);
    assert_eq!(again.len(), 2);
    let (a, b) = (
        std::fs::read(mm).unwrap(),
        std::fs::read(&again[1]).unwrap(),
    );
    assert!(
        a == b,
        "the mmproj written from the read-back tower differs"
    );

    // `inspect` says what the mmproj is.
    let r = run(d, &["inspect", mm.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("mmproj "), "{}", r.stdout);
    // … and of the text encoder, which mmproj goes with it.
    let r = run(d, &["inspect", text.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("mmproj        39 tensors"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("ComfyUI_qwen25_7b_00001_-mmproj-F16.gguf (its vision tower)"),
        "{}",
        r.stdout
    );
}

#[test]
fn pairing_follows_the_loader_missing_several_and_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let clip = qwen_clip(d);
    // Two encoders' files share the folder: each loader match is its own mmproj.
    let first = convert(d, &clip, "Q8_0", "shared", &[]);
    let second = convert(d, &clip, "F16", "shared", &[]);
    let folder = first[0].parent().unwrap().to_path_buf();
    for p in [&first, &second] {
        let name = p[1].file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(loader_matches(&folder, &p[0]), vec![name]);
    }

    // An mmproj already in the folder that the loader would take for the new text encoder:
    // refused, nothing written.
    let stray = d.join("stray/text_encoders");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::copy(
        &first[1],
        stray.join("old-mmproj-ComfyUI_qwen25_7b_00001_.gguf"),
    )
    .unwrap();
    let before = files_under(&stray);
    let r = run(
        d,
        &[
            "convert",
            clip.to_str().unwrap(),
            "--gguf",
            "Q8_0",
            "--output-dir",
            "stray",
            "-q",
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("already holds old-mmproj"),
        "{}",
        r.stderr
    );
    assert_eq!(files_under(&stray), before);
    // A `qwen2vl` file the new mmproj's name would pair with too (`qwen-Q4_K_M` matches any
    // mmproj holding `qwen`): refused, nothing written.
    let tagged = d.join("tagged");
    std::fs::create_dir_all(&tagged).unwrap();
    std::fs::copy(&first[0], tagged.join("qwen-Q4_K_M.gguf")).unwrap();
    let before = files_under(&tagged);
    let r = run(
        d,
        &[
            "convert",
            clip.to_str().unwrap(),
            "--gguf",
            "Q8_0",
            "--output-dir",
            tagged.to_str().unwrap(),
            "--prefix",
            "qwen",
            "-q",
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("would pair the new qwen_qwen25_7b_00001_-mmproj-F16.gguf"),
        "{}",
        r.stderr
    );
    assert_eq!(files_under(&tagged), before);
    // No mmproj: the language model alone, with a warning.
    let alone = d.join("alone");
    std::fs::create_dir_all(&alone).unwrap();
    let lone = alone.join("qwen.gguf");
    std::fs::copy(&first[0], &lone).unwrap();
    // `convert` of the lone text encoder to F16 into `out`, with `extra` flags.
    let convert = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "convert",
            lone.to_str().unwrap(),
            "--gguf",
            "F16",
            "--output-dir",
            out,
        ];
        args.extend_from_slice(extra);
        run(d, &args)
    };
    let c = open_component(ComponentKind::Clip, std::slice::from_ref(&lone), None).unwrap();
    assert!(c.tensors.keys().all(|k| !k.contains(".visual.")));
    assert!(c.tensors.keys().any(|k| k.contains("model.layers.0")));
    let r = convert("alone_out", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("no mmproj file for qwen.gguf"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout.lines().count(), 1);
    // `--quiet`: no warning.
    let r = convert("alone_q", &["-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stderr, "");

    // Several: the first in sorted order, with a warning.
    std::fs::copy(&first[1], alone.join("qwen-mmproj-b.gguf")).unwrap();
    std::fs::copy(&first[0], alone.join("qwen-mmproj-a.gguf")).unwrap();
    let r = convert("several", &[]);
    // `-a` is first: a text encoder, not an mmproj — a clear error naming it.
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("several mmproj files"), "{}", r.stderr);
    assert!(r.stderr.contains("qwen-mmproj-a.gguf"), "{}", r.stderr);
    assert!(r.stderr.contains("general.type"), "{}", r.stderr);
    assert!(files_under(&d.join("several")).is_empty());
    std::fs::remove_file(alone.join("qwen-mmproj-a.gguf")).unwrap();
    let c = open_component(ComponentKind::Clip, std::slice::from_ref(&lone), None).unwrap();
    assert!(c
        .tensors
        .contains_key(&format!("{PREFIX}visual.blocks.1.attn.qkv.weight")));

    // A truncated mmproj: an error naming it, nothing written.
    let bytes = std::fs::read(alone.join("qwen-mmproj-b.gguf")).unwrap();
    std::fs::write(alone.join("qwen-mmproj-b.gguf"), &bytes[..bytes.len() / 2]).unwrap();
    let r = convert("broken", &["-q"]);
    assert_refused(&r, "qwen-mmproj-b.gguf", &d.join("broken"));

    // An mmproj given as a checkpoint says what it is.
    let r = run(
        d,
        &[
            "convert",
            first[1].to_str().unwrap(),
            "--output-dir",
            "mm_out",
            "-q",
        ],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("mmproj"), "{}", r.stderr);
}

#[test]
fn the_ported_quant_suffix_regex_agrees_with_the_loaders_cases() {
    for (name, want) in [
        ("qwen2.5-vl-7b-instruct-q4_k_m", "qwen2.5-vl-7b-instruct"),
        ("qwen-ud-iq2_xxs", "qwen"),
        ("qwen_q8_0", "qwen"),
        ("qwen-q8_0_00001_", "qwen"),
        ("model-q4_k_m_long_tail", "model-q4_k_m_long_tail"),
        ("comfyui_qwen25_7b_00001_", "comfyui_qwen25_7b_00001_"),
    ] {
        assert_eq!(strip_quant_suffix(name), want, "{name}");
    }
}

/// ComfyUI-GGUF's loader on the pair, when a checkout and a Python that runs it are given.
#[test]
fn comfyui_gguf_loader_reads_the_pair_as_the_tool_does() {
    let Some(repo) = std::env::var_os("CHECKPOINT_SAVE_COMFYUI_GGUF").map(PathBuf::from) else {
        eprintln!("skipped: CHECKPOINT_SAVE_COMFYUI_GGUF (a ComfyUI-GGUF checkout) is not set");
        return;
    };
    let python = std::env::var_os("CHECKPOINT_SAVE_PYTHON")
        .map_or_else(|| PathBuf::from("python3"), PathBuf::from);
    let ready = Command::new(&python)
        .args(["-c", "import torch, gguf, numpy\nassert tuple(map(int, numpy.__version__.split('.')[:2])) < (2, 4)"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        eprintln!(
            "skipped: {} lacks torch, gguf or numpy < 2.4",
            python.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let clip = qwen_clip(d);
    let paths = convert(d, &clip, "Q8_0", "out", &[]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/comfyui_gguf_loader.py"
    );
    let out = Command::new(&python)
        .arg(script)
        .arg(&repo)
        .arg("clip")
        .arg(&paths[0])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let loaded: Value = serde_json::from_slice(&out.stdout).unwrap();
    let tensors = loaded[paths[0].to_str().unwrap()]["tensors"]
        .as_object()
        .unwrap()
        .clone();
    let (dtypes, back) = read_back(d, &paths[0]);
    // The loader joins the split q/k/v into `attn.qkv` but leaves the split tensors in its state
    // dict too (ComfyUI's model ignores them as unexpected keys): those are not the tower's.
    let leftover = |k: &str| {
        [".attn_q.", ".attn_k.", ".attn_v."]
            .iter()
            .any(|s| k.contains(s))
    };
    let visual: Vec<&String> = tensors
        .keys()
        .filter(|k| k.starts_with("visual.") && !leftover(k))
        .collect();
    assert!(!visual.is_empty());
    assert!(tensors
        .keys()
        .filter(|k| leftover(k))
        .all(|k| k.starts_with("visual.blocks.")));
    let tower = back.keys().filter(|b| b.contains(".visual.")).count();
    assert_eq!(visual.len(), tower, "the loader's tower and the tool's");
    for k in visual {
        let t = &tensors[k];
        let key = format!("{PREFIX}{k}");
        let Some((shape, v)) = back.get(&key) else {
            let tool: Vec<&String> = back.keys().filter(|b| b.contains(".visual.")).collect();
            panic!("the loader gives `{k}`, the tool does not (its tower: {tool:?})");
        };
        let got: Vec<usize> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(&got, shape, "{k}");
        let want_dtype = match t["dtype"].as_str().unwrap() {
            "torch.float32" => Dtype::F32,
            "torch.float16" => Dtype::F16,
            "torch.bfloat16" => Dtype::BF16,
            other => panic!("{k}: {other}"),
        };
        assert_eq!(dtypes[&key], want_dtype, "{k}");
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let sha: String = <sha2::Sha256 as sha2::Digest>::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(t["sha256"].as_str().unwrap(), sha, "{k}");
    }
}

#[test]
fn a_quantized_mmproj_reads_back_with_the_loaders_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let clip = qwen_clip(d);
    let text = convert(d, &clip, "Q8_0", "out", &[]).remove(0);
    // A Q8_0 mmproj made here (rows of 32): a text encoder `qwen-Q8_0.gguf` and
    // `qwen-mmproj-Q8_0.gguf` beside it, as llama.cpp users name them.
    let folder = d.join("q");
    std::fs::create_dir_all(&folder).unwrap();
    let lone = folder.join("qwen-Q8_0.gguf");
    std::fs::copy(&text, &lone).unwrap();
    let value = |i: usize, salt: usize| ((i * 7 + salt * 13) % 29) as f32 / 7.0 - 2.0;
    let tensors: Vec<(&str, Vec<usize>, GgmlType)> = vec![
        ("v.patch_embd.weight", vec![32, 3, 2, 32], GgmlType::Q8_0),
        ("v.patch_embd.weight.1", vec![32, 3, 2, 32], GgmlType::Q8_0),
        ("v.blk.0.attn_q.weight", vec![32, 32], GgmlType::Q8_0),
        ("v.blk.0.attn_k.weight", vec![32, 32], GgmlType::Q8_0),
        ("v.blk.0.attn_v.weight", vec![32, 32], GgmlType::Q8_0),
        ("v.blk.0.attn_q.bias", vec![32], GgmlType::F32),
        ("v.blk.0.attn_k.bias", vec![32], GgmlType::F32),
        ("v.blk.0.attn_v.bias", vec![32], GgmlType::F32),
        ("mm.2.weight", vec![32, 128], GgmlType::Q8_0),
    ];
    let mut infos = Vec::new();
    let mut blobs = Vec::new();
    let mut values: BTreeMap<&str, Vec<f32>> = BTreeMap::new();
    for (salt, (name, shape, ty)) in tensors.iter().enumerate() {
        let n: usize = shape.iter().product();
        // A bias of values f16 cannot hold exactly: the loader's f16 rounds them.
        let v: Vec<f32> = (0..n).map(|i| value(i, salt) + 1e-4).collect();
        let (blob, got) = match ty {
            GgmlType::F32 => (v.iter().flat_map(|x| x.to_le_bytes()).collect(), v.clone()),
            _ => {
                let codes = encode(*ty, shape, &v);
                let got = decode(*ty, shape, &codes);
                (codes, got)
            }
        };
        infos.push(GgufTensorInfo {
            name: name.to_string(),
            shape: shape.clone(),
            ggml_type: *ty,
        });
        blobs.push(blob);
        values.insert(name, got);
    }
    let meta = vec![
        (
            "general.architecture".to_string(),
            MetaValue::String("clip".into()),
        ),
        (
            "general.type".to_string(),
            MetaValue::String("mmproj".into()),
        ),
    ];
    let header = gguf_header(&meta, &infos).unwrap();
    let mut bytes = header.bytes.clone();
    let start = bytes.len();
    bytes.resize(start + header.data_len as usize, 0);
    for (blob, (b, _)) in blobs.iter().zip(&header.offsets) {
        let at = start + *b as usize;
        bytes[at..at + blob.len()].copy_from_slice(blob);
    }
    std::fs::write(folder.join("qwen-mmproj-Q8_0.gguf"), bytes).unwrap();

    let (dtypes, back) = read_back(d, &lone);
    let key = |k: &str| format!("{PREFIX}visual.{k}");
    // The patch slices, dequantized to f32 and stacked on the third dimension.
    assert_eq!(dtypes[&key("patch_embed.proj.weight")], Dtype::F32);
    let (shape, patch) = &back[&key("patch_embed.proj.weight")];
    assert_eq!(shape, &vec![32, 3, 2, 2, 32]);
    let (w1, w2) = (
        &values["v.patch_embd.weight"],
        &values["v.patch_embd.weight.1"],
    );
    let plane = 2 * 32;
    let want: Vec<f32> = (0..32 * 3)
        .flat_map(|ij| {
            [
                &w1[ij * plane..(ij + 1) * plane],
                &w2[ij * plane..(ij + 1) * plane],
            ]
            .concat()
        })
        .collect();
    assert_eq!(patch, &want);
    // Quantized q, k, v: dequantized to bf16, then joined; F32 biases: f16, joined.
    assert_eq!(dtypes[&key("blocks.0.attn.qkv.weight")], Dtype::BF16);
    assert_eq!(dtypes[&key("blocks.0.attn.qkv.bias")], Dtype::F16);
    let join = |part: &str, round: fn(f32) -> f32| -> Vec<f32> {
        ["q", "k", "v"]
            .iter()
            .flat_map(|p| values[format!("v.blk.0.attn_{p}.{part}").as_str()].clone())
            .map(round)
            .collect()
    };
    let bf16 = |x: f32| half::bf16::from_f32(x).to_f32();
    let f16 = |x: f32| half::f16::from_f32(x).to_f32();
    let (s, w) = &back[&key("blocks.0.attn.qkv.weight")];
    assert_eq!(s, &vec![96, 32]);
    assert_eq!(w, &join("weight", bf16));
    let (s, b) = &back[&key("blocks.0.attn.qkv.bias")];
    assert_eq!(s, &vec![96]);
    assert_eq!(b, &join("bias", f16));
    assert_ne!(b, &join("bias", |x| x), "the bias is rounded");
    // The rest as stored: a quantized tensor's values, decoded.
    assert_eq!(back[&key("merger.mlp.2.weight")].1, values["mm.2.weight"]);
}

#[test]
fn split_gguf_writes_the_pair_and_save_reads_the_tower_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let clip = qwen_clip(d);
    let source = values_of(&clip);
    let ck = d.join("ck/checkpoints/ComfyUI_00001_.safetensors");
    let nodes = d.join("nodes");
    let r = run(
        d,
        &[
            "split",
            ck.to_str().unwrap(),
            "--gguf",
            "Q8_0",
            "--output-dir",
            nodes.to_str().unwrap(),
            "-q",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let te = nodes.join("text_encoders");
    let text = te.join("ComfyUI_qwen25_7b_00001_.gguf");
    assert!(
        text.is_file()
            && te
                .join("ComfyUI_qwen25_7b_00001_-mmproj-F16.gguf")
                .is_file()
    );
    assert_eq!(
        loader_matches(&te, &text),
        vec!["ComfyUI_qwen25_7b_00001_-mmproj-F16.gguf".to_string()]
    );
    let (_, back) = read_back(d, &text);
    let visual: Vec<&String> = source.keys().filter(|k| k.contains(".visual.")).collect();
    assert!(!visual.is_empty());
    for k in visual {
        assert_eq!(back[k].1, source[k].2, "{k}");
    }
}

#[test]
fn a_failure_in_the_mmproj_leaves_neither_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let clip = qwen_clip(d);
    // A NaN in the vision tower: with --check-finite, the mmproj (written after the text
    // encoder, before either is published) is refused, and the text encoder with it.
    let (mut tensors, meta) = st::read(&clip);
    let key = format!("{PREFIX}visual.merger.mlp.2.weight");
    let (dtype, _, bytes) = tensors.get_mut(&key).unwrap();
    assert_eq!(*dtype, safetensors::Dtype::F16);
    bytes[..2].copy_from_slice(&half::f16::NAN.to_le_bytes());
    let poisoned = d.join("poisoned.safetensors");
    st::write(&poisoned, &tensors, &meta);
    let out = d.join("nan");
    let r = run(
        d,
        &[
            "convert",
            poisoned.to_str().unwrap(),
            "--gguf",
            "Q8_0",
            "--check-finite",
            "--output-dir",
            out.to_str().unwrap(),
            "-q",
        ],
    );
    assert_refused(&r, "NaN", &out);
    // Without the NaN check, both are written.
    let r = run(
        d,
        &[
            "convert",
            poisoned.to_str().unwrap(),
            "--gguf",
            "Q8_0",
            "--output-dir",
            out.to_str().unwrap(),
            "-q",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.lines().count(), 2);
}
