//! Qwen-Image 2.1 (ComfyUI `QwenImage21`) through the real binary: the checkpoint ComfyUI's
//! save writes for it, planned from the full-size model's header; its parts as ComfyUI's
//! separate save nodes write them and read back; and Qwen-Image told apart from it.
//!
//! The expected keys and counts are read off ComfyUI's modules (`ldm/qwen_image21/model.py`,
//! `text_encoders/qwen_image21.py` over `qwen3vl`, `ldm/wan/vae2_2.py` as `sd.py` builds it for
//! this VAE) and counted by hand here, not by the crate.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::cli::{files_under, ok_path, run};
use common::st;
use serde_json::Value;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `QwenImage21Transformer2DModel`'s keys at 32 blocks, all linears bias-free: per block q, k,
/// v, out, the two q/k norms, `img_mlp.gate_up` and `img_mlp.out` (8); the two timestep
/// linears, the text norm and the text projection's two layers, `img_in`, the shared
/// `modulation.1`, `norm_out.linear` and `proj_out` (9).
const DIT_KEYS: usize = 32 * 8 + 9;

/// Qwen3-VL 8B as the clip component holds it: the language model's embedding, 36 layers of 11
/// (four projections, q/k norms, three MLP projections, two norms), the final norm, and
/// `logit_scale`; the vision tower's patch embedding (2), position table, 27 blocks of 12 (two
/// LayerNorms, qkv, proj, two MLP layers, all with biases), the merger and three DeepStack
/// mergers (6 each).
const CLIP_KEYS: usize = (1 + 36 * 11 + 1 + 1) + (2 + 1 + 27 * 12 + 6 + 3 * 6);

/// `WanVAE(dim 96, dec_dim 144, z_dim 64, dim_mult [1, 2, 4, 8, 8], temperal_downsample [F, T, T,
/// T])` in Wan 2.2's layout: a residual block is 6 keys (8 with its shortcut), a resample 2 (4
/// with its time convolution), the middle 17, a head 3. Encoder: conv1 2, levels 14 + 18 + 18 +
/// 18 + 12, middle, head = 102; `conv1`, `conv2` 4; decoder: conv1 2, middle, levels of three
/// residual blocks 22 + 22 + 24 + 22 + 20, head = 132.
const VAE_KEYS: usize = 102 + 4 + 132;

/// `save --synthetic qwen-image-21 --max-dim 2 --dry-run --json`: ComfyUI's save of a
/// `QwenImage21` model — the denoiser under `model.diffusion_model.`, `qwen3vl_8b` under
/// `text_encoders.`, the RGBA VAE under `vae.` with its one-frame-deep convolutions, metadata
/// only the prompt — and the family told by its keys.
#[test]
fn the_checkpoint_is_laid_out_as_comfyui_saves_qwen_image21() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let r = run(
        dir.path(),
        &[
            "save",
            "--synthetic",
            "qwen-image-21",
            "--max-dim",
            "2",
            "--dry-run",
            "--json",
            "--output-dir",
            s(&out),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!out.exists(), "a dry run creates nothing");
    let plan: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(plan["layout"], "qwen-image-21");
    assert_eq!(plan["family"]["variant"], "qwen-image-21");
    assert_eq!(plan["family"]["test_size"], false);
    assert_eq!(plan["prediction"], "flow");
    let evidence = plan["family"]["evidence"].to_string();
    for k in [
        "txt_in.text_norm.weight",
        "modulation.1.weight",
        "img_mlp.gate_up.weight",
    ] {
        assert!(evidence.contains(k), "{evidence}");
    }
    assert_eq!(plan["family"]["config"]["context_in_dim"], 4096);
    let tensors = plan["tensors"].as_array().unwrap();
    let keys: Vec<&str> = tensors.iter().map(|t| t["key"].as_str().unwrap()).collect();
    let under = |p: &str| keys.iter().filter(|k| k.starts_with(p)).count();
    assert_eq!(under("model.diffusion_model."), DIT_KEYS);
    assert_eq!(under("text_encoders.qwen3vl_8b."), CLIP_KEYS);
    assert_eq!(under("vae."), VAE_KEYS);
    assert_eq!(keys.len(), DIT_KEYS + CLIP_KEYS + VAE_KEYS);
    let set: BTreeSet<&str> = keys.iter().copied().collect();
    for k in [
        "model.diffusion_model.txt_in.in_layer.weight",
        "model.diffusion_model.time_text_embed.timestep_embedder.linear_2.weight",
        "model.diffusion_model.transformer_blocks.31.img_mlp.gate_up.weight",
        "model.diffusion_model.transformer_blocks.31.attn.to_out.0.weight",
        "text_encoders.qwen3vl_8b.transformer.model.layers.35.self_attn.q_norm.weight",
        "text_encoders.qwen3vl_8b.transformer.visual.blocks.26.mlp.linear_fc2.bias",
        "text_encoders.qwen3vl_8b.transformer.visual.deepstack_merger_list.2.norm.weight",
        "text_encoders.qwen3vl_8b.transformer.visual.pos_embed.weight",
        "vae.decoder.upsamples.4.upsamples.2.residual.6.weight",
        "vae.encoder.downsamples.3.downsamples.2.time_conv.weight",
    ] {
        assert!(set.contains(k), "the plan lacks {k}");
    }
    assert!(
        !keys
            .iter()
            .any(|k| k.ends_with(".bias") && k.starts_with("model.")),
        "the DiT's linears have no biases"
    );
    let shape = |key: &str| -> Vec<u64> {
        let t = tensors.iter().find(|t| t["key"] == key).unwrap();
        serde_json::from_value(t["shape"].clone()).unwrap()
    };
    // `sd.py`'s tell survives `--max-dim`: a 5-D head one frame deep (full shapes: the
    // family's unit tests).
    assert_eq!(shape("vae.decoder.head.2.weight"), [2, 2, 1, 2, 2]);
    let meta: BTreeMap<String, String> = serde_json::from_value(plan["metadata"].clone()).unwrap();
    let reference: BTreeMap<&str, &str> = meta
        .iter()
        .filter(|(k, _)| !k.starts_with("checkpoint_save."))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(reference, BTreeMap::from([("prompt", "")]));
}

/// `split --to nodes` of a Qwen-Image 2.1 checkpoint writes ComfyUI's ModelSave, CLIPSave and
/// VAESave files, and `save` of those files gives the checkpoint back; each part alone is
/// detected as Qwen-Image 2.1's.
#[test]
fn its_parts_go_through_comfyuis_node_files_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ckpt = ok_path(
        d,
        &[
            "save",
            "--synthetic",
            "qwen-image-21",
            "--tiny",
            "-q",
            "--output-dir",
            s(&d.join("a")),
        ],
    );
    let parts = d.join("parts");
    let r = run(
        d,
        &[
            "split",
            s(&ckpt),
            "--output-dir",
            s(&parts),
            "--to",
            "nodes",
            "-q",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let got: BTreeSet<String> = files_under(&parts)
        .iter()
        .map(|p| s(p.strip_prefix(&parts).unwrap()).to_string())
        .collect();
    let want: BTreeSet<String> = [
        "diffusion_models/ComfyUI_00001_.safetensors",
        "clip/ComfyUI_00001_.safetensors",
        "vae/ComfyUI_vae_00001_.safetensors",
    ]
    .map(String::from)
    .into();
    assert_eq!(got, want);
    let (clip, _) = st::read(&parts.join("clip/ComfyUI_00001_.safetensors"));
    assert!(clip.contains_key("qwen3vl_8b.transformer.model.embed_tokens.weight"));
    assert!(clip.contains_key("qwen3vl_8b.transformer.visual.merger.linear_fc2.weight"));
    let (vae, _) = st::read(&parts.join("vae/ComfyUI_vae_00001_.safetensors"));
    assert!(vae.contains_key("decoder.head.2.weight"));
    let (model, _) = st::read(&parts.join("diffusion_models/ComfyUI_00001_.safetensors"));
    assert!(model.contains_key("model.diffusion_model.modulation.1.weight"));
    let r = run(
        d,
        &[
            "inspect",
            s(&parts.join("diffusion_models/ComfyUI_00001_.safetensors")),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("architecture: qwen-image-21"),
        "{}",
        r.stdout
    );
    let back = ok_path(
        d,
        &[
            "save",
            "-q",
            "--model",
            s(&parts.join("diffusion_models/ComfyUI_00001_.safetensors")),
            "--clip",
            s(&parts.join("clip/ComfyUI_00001_.safetensors")),
            "--vae",
            s(&parts.join("vae/ComfyUI_vae_00001_.safetensors")),
            "--output-dir",
            s(&d.join("back")),
        ],
    );
    common::same_tensors(
        &std::fs::read(&ckpt).unwrap(),
        &std::fs::read(&back).unwrap(),
        "qwen-image-21 through the node files",
    );
}

/// Qwen-Image and Qwen-Image 2.1 through `inspect` both ways, and a 2.1 denoiser saved with
/// Qwen-Image's VAE (the Wan 2.1 VAE) refused, naming the VAE it expects; nothing written.
#[test]
fn qwen_image_and_2_1_are_told_apart_and_not_mixed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let new = ok_path(
        d,
        &[
            "save",
            "--synthetic",
            "qwen-image-21",
            "--tiny",
            "-q",
            "--output-dir",
            s(&d.join("new")),
        ],
    );
    let old = ok_path(
        d,
        &[
            "save",
            "--synthetic",
            "qwen-image",
            "--tiny",
            "-q",
            "--output-dir",
            s(&d.join("old")),
        ],
    );
    let r = run(d, &["inspect", s(&new)]);
    assert!(
        r.stdout.contains("architecture: qwen-image-21"),
        "{}",
        r.stdout
    );
    let r = run(d, &["inspect", s(&old)]);
    assert!(
        r.stdout.contains("architecture: qwen-image\n"),
        "{}",
        r.stdout
    );
    let parts = d.join("parts");
    for (ckpt, sub) in [(&new, "n"), (&old, "o")] {
        let r = run(
            d,
            &[
                "split",
                s(ckpt),
                "--output-dir",
                s(&parts.join(sub)),
                "--to",
                "nodes",
                "-q",
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let out = d.join("mixed");
    let r = run(
        d,
        &[
            "save",
            "-q",
            "--model",
            s(&parts.join("n/diffusion_models/ComfyUI_00001_.safetensors")),
            "--clip",
            s(&parts.join("n/clip/ComfyUI_00001_.safetensors")),
            "--vae",
            s(&parts.join("o/vae/ComfyUI_vae_00001_.safetensors")),
            "--output-dir",
            s(&out),
        ],
    );
    common::cli::assert_refused(&r, "Qwen-Image 2.1 VAE", &out);
}

/// `convert --gguf F16` writes the architecture string the released Qwen-Image 2.1 GGUF files
/// carry (`qwen_image21`), and the file reads back as Qwen-Image 2.1's denoiser with the
/// checkpoint's keys and shapes.
#[test]
fn its_gguf_carries_qwen_image21_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ckpt = ok_path(
        d,
        &[
            "save",
            "--synthetic",
            "qwen-image-21",
            "--tiny",
            "-q",
            "--output-dir",
            s(&d.join("a")),
        ],
    );
    let gguf = ok_path(
        d,
        &[
            "convert",
            s(&ckpt),
            "--gguf",
            "F16",
            "--output-dir",
            s(&d.join("g")),
            "-q",
        ],
    );
    let file = checkpoint_save::gguf::GgufFile::open(&gguf).unwrap();
    assert_eq!(file.architecture(), Some("qwen_image21"));
    let r = run(d, &["inspect", s(&gguf)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("architecture: qwen-image-21"),
        "{}",
        r.stdout
    );
    let back = ok_path(
        d,
        &["convert", s(&gguf), "--output-dir", s(&d.join("b")), "-q"],
    );
    let (orig, _) = st::read(&ckpt);
    let (round, _) = st::read(&back);
    let shapes = |t: &BTreeMap<String, st::Raw>| {
        t.iter()
            .filter(|(k, _)| k.starts_with("model.diffusion_model."))
            .map(|(k, (_, shape, _))| (k.clone(), shape.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(shapes(&round), shapes(&orig));
}

/// Deterministic values in [-0.5, 0.5).
fn noise(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

/// A LoRA trained on diffusers' split feed-forward names bakes into the row halves of the fused
/// `img_mlp.gate_up` as ComfyUI's offset patches put it (`comfy/lora.py`: `gate_layer` →
/// `(0, 0, half)`, `proj` → `(0, half, half)`), under the forms ComfyUI maps for them
/// (`transformer.` with PEFT's `lora_A`/`lora_B` and an alpha, bare with kohya's
/// `lora_down`/`lora_up`, `lycoris_`); the values are computed here, in f64, from the factors.
#[test]
fn a_lora_on_the_split_feed_forward_bakes_into_the_halves_of_gate_up() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ckpt = ok_path(
        d,
        &[
            "save",
            "--synthetic",
            "qwen-image-21",
            "--tiny",
            "-q",
            "--output-dir",
            s(&d.join("a")),
        ],
    );
    let (input, _) = st::read(&ckpt);
    let key =
        |b: usize| format!("model.diffusion_model.transformer_blocks.{b}.img_mlp.gate_up.weight");
    let (dtype, shape, _) = &input[&key(0)];
    assert_eq!(*dtype, safetensors::Dtype::F32);
    let (rows, cols) = (shape[0], shape[1]);
    let half = rows / 2;
    let r = 2;
    // (stem, which half, up/B tensor name, down/A tensor name, alpha, seed)
    type Module<'a> = (&'a str, usize, &'a str, &'a str, Option<f32>, u32);
    let modules: [Module; 3] = [
        (
            "transformer.transformer_blocks.0.img_mlp.gate_layer",
            0,
            "lora_B",
            "lora_A",
            Some(1.0),
            1,
        ),
        (
            "transformer_blocks.1.img_mlp.proj",
            1,
            "lora_up",
            "lora_down",
            None,
            3,
        ),
        (
            "lycoris_transformer_blocks_1_img_mlp_gate_layer",
            0,
            "lora_up",
            "lora_down",
            None,
            5,
        ),
    ];
    let mut tensors = BTreeMap::new();
    let mut factors = Vec::new();
    for (stem, which, up_name, down_name, alpha, seed) in modules {
        let (up, down) = (noise(half * r, seed), noise(r * cols, seed + 1));
        tensors.insert(
            format!("{stem}.{up_name}.weight"),
            (safetensors::Dtype::F32, vec![half, r], st::f32_bytes(&up)),
        );
        tensors.insert(
            format!("{stem}.{down_name}.weight"),
            (safetensors::Dtype::F32, vec![r, cols], st::f32_bytes(&down)),
        );
        if let Some(a) = alpha {
            tensors.insert(
                format!("{stem}.alpha"),
                (safetensors::Dtype::F32, vec![], st::f32_bytes(&[a])),
            );
        }
        factors.push((stem, which, up, down, alpha));
    }
    let lora = d.join("ffn.safetensors");
    st::write(&lora, &tensors, &BTreeMap::new());
    let r2 = run(
        d,
        &[
            "merge",
            s(&ckpt),
            "--lora",
            &format!("{}:0.5", s(&lora)),
            "--strict",
            "--output-dir",
            s(&d.join("out")),
        ],
    );
    assert_eq!(r2.code, 0, "{}", r2.stderr);
    assert!(r2.stderr.contains("3 module(s) baked"), "{}", r2.stderr);
    let (out, _) = st::read(Path::new(r2.stdout.trim()));
    let values = |t: &BTreeMap<String, st::Raw>, k: &str| st::floats(t[k].0, &t[k].2);
    for block in 0..2 {
        let k = key(block);
        let (w, got) = (values(&input, &k), values(&out, &k));
        let mut want: Vec<f64> = w.iter().map(|x| *x as f64).collect();
        let stem_of = |s: &str| {
            s.contains(&format!("blocks.{block}.")) || s.contains(&format!("blocks_{block}_"))
        };
        for (_, which, up, down, alpha) in factors.iter().filter(|f| stem_of(f.0)) {
            // strength · alpha / rank (no alpha: 1), as f32 as ComfyUI passes it.
            let scale = (0.5f64 * alpha.map_or(1.0, |a| a as f64 / r as f64)) as f32 as f64;
            for row in 0..half {
                for col in 0..cols {
                    let dot: f64 = (0..r)
                        .map(|j| up[row * r + j] as f64 * down[j * cols + col] as f64)
                        .sum();
                    want[(which * half + row) * cols + col] += scale * dot;
                }
            }
        }
        for (i, g) in got.iter().enumerate() {
            assert!(
                (*g as f64 - want[i]).abs() < 1e-5,
                "{k}[{i}] (row {}): {g} vs {}",
                i / cols,
                want[i]
            );
        }
        assert_ne!(got, w, "{k} is patched");
    }
    // Block 0's up half is untouched: only its gate half was named.
    let (w0, g0) = (values(&input, &key(0)), values(&out, &key(0)));
    assert_eq!(g0[half * cols..], w0[half * cols..]);
}
