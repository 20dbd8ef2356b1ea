//! LTX-2 (ComfyUI `LTXAV`) through the real binary: the checkpoint ComfyUI's save writes for
//! it, planned from the full-size model's header; its parts as ComfyUI's separate save nodes
//! write them and read back; and a file laid out as Lightricks releases it.
//!
//! The expected keys and counts are read off ComfyUI's modules (`lightricks/av_model.py`,
//! `lightricks/embeddings_connector.py`, `text_encoders/lt.py`, `text_encoders/llama.py`
//! `Gemma3_12B`, `clip_model.py` `CLIPVision`) and counted by hand here, not by the crate.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::cli::{files_under, ok_path, run};
use common::st;
use serde_json::Value;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `LTXAVModel`'s keys at 48 blocks: 72 per block (six attentions of 10, two feed-forwards of
/// 4, four scale/shift tables), two 2-layer connectors of 29 (per layer an attention of 10 and a
/// feed-forward of 4; the registers), the two patch projections (2 each), six adaLNs of 6, the
/// two caption projections (4 each), and the outputs (a table and a biased projection each).
const DIT_KEYS: usize = 48 * 72 + 2 * 29 + 2 * 2 + 6 * 6 + 2 * 4 + 2 * 3;

/// `LTXAVTEModel`'s keys and the tokenizer's: Gemma 3's embedding, 48 layers of 13 (four
/// projections, q/k norms, three MLP projections, four norms) and final norm; SigLIP's patch
/// embedding (weight, bias), positions, 27 layers of 16 and post-norm (2); the projector (2);
/// the logit scale; `text_embedding_projection.weight`; `spiece_model`.
const CLIP_KEYS: usize = (1 + 48 * 13 + 1) + (3 + 27 * 16 + 2) + 2 + 1 + 1 + 1;

/// `save --synthetic ltx2 --max-dim 2 --dry-run --json`: ComfyUI's save of an `LTXAV` model —
/// the denoiser with its connectors under `model.diffusion_model.`, Gemma 3 with its vision
/// tower, the text projection and the tokenizer under `text_encoders.`, the video VAE under
/// `vae.`, no audio VAE or vocoder, metadata only the prompt — and the family told by the
/// audio stream's adaLN.
#[test]
fn the_checkpoint_is_laid_out_as_comfyui_saves_ltxav() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let r = run(
        dir.path(),
        &[
            "save",
            "--synthetic",
            "ltx2",
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
    assert_eq!(plan["layout"], "ltx2");
    assert_eq!(plan["family"]["variant"], "ltx2-19b");
    assert_eq!(plan["family"]["test_size"], false);
    assert_eq!(plan["prediction"], "flow");
    let evidence = plan["family"]["evidence"].to_string();
    assert!(
        evidence.contains("audio_adaln_single.linear.weight"),
        "{evidence}"
    );
    let keys: Vec<&str> = plan["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["key"].as_str().unwrap())
        .collect();
    let under = |p: &str| keys.iter().filter(|k| k.starts_with(p)).count();
    assert_eq!(under("model.diffusion_model."), DIT_KEYS);
    assert_eq!(under("text_encoders."), CLIP_KEYS);
    assert_eq!(
        under("model.diffusion_model.") + under("text_encoders.") + under("vae."),
        keys.len(),
        "every key under one of the three prefixes"
    );
    let set: BTreeSet<&str> = keys.iter().copied().collect();
    for k in [
        "model.diffusion_model.audio_adaln_single.linear.weight",
        "model.diffusion_model.av_ca_a2v_gate_adaln_single.linear.weight",
        "model.diffusion_model.transformer_blocks.47.video_to_audio_attn.to_k.weight",
        "model.diffusion_model.transformer_blocks.47.scale_shift_table_a2v_ca_video",
        "model.diffusion_model.video_embeddings_connector.transformer_1d_blocks.1.attn1.k_norm.weight",
        "model.diffusion_model.audio_embeddings_connector.learnable_registers",
        "model.diffusion_model.audio_proj_out.bias",
        "text_encoders.gemma3_12b.logit_scale",
        "text_encoders.gemma3_12b.transformer.model.layers.47.self_attn.k_norm.weight",
        "text_encoders.gemma3_12b.transformer.model.layers.0.post_feedforward_layernorm.weight",
        "text_encoders.gemma3_12b.transformer.vision_model.encoder.layers.26.mlp.fc2.bias",
        "text_encoders.gemma3_12b.transformer.multi_modal_projector.mm_input_projection_weight",
        "text_encoders.text_embedding_projection.weight",
        "text_encoders.spiece_model",
        "vae.decoder.up_blocks.0.res_blocks.0.conv1.conv.weight",
        "vae.per_channel_statistics.mean-of-means",
    ] {
        assert!(set.contains(k), "the plan lacks {k}");
    }
    assert!(
        !keys.iter().any(|k| k.starts_with("audio_vae.")
            || k.starts_with("vocoder.")
            || k.starts_with("text_embedding_projection.")),
        "ComfyUI's save writes no audio VAE, vocoder or top-level projection"
    );
    let meta: BTreeMap<String, String> = serde_json::from_value(plan["metadata"].clone()).unwrap();
    let reference: BTreeMap<&str, &str> = meta
        .iter()
        .filter(|(k, _)| !k.starts_with("checkpoint_save."))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(reference, BTreeMap::from([("prompt", "")]));
}

/// `split --to nodes` of an LTX-2 checkpoint writes ComfyUI's ModelSave, CLIPSave and VAESave
/// files — CLIPSave knows no `gemma3_12b.` prefix, so the text-encoder model lies in the file of
/// the rest with its names unchanged — and `save` of those files gives the checkpoint back.
#[test]
fn its_parts_go_through_comfyuis_node_files_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ckpt = ok_path(
        d,
        &[
            "save",
            "--synthetic",
            "ltx2",
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
    let (clip, meta) = st::read(&parts.join("clip/ComfyUI_00001_.safetensors"));
    assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
    for k in [
        "gemma3_12b.logit_scale",
        "gemma3_12b.transformer.model.embed_tokens.weight",
        "gemma3_12b.transformer.vision_model.post_layernorm.weight",
        "text_embedding_projection.weight",
        "spiece_model",
    ] {
        assert!(clip.contains_key(k), "CLIPSave's file lacks {k}");
    }
    let (model, _) = st::read(&parts.join("diffusion_models/ComfyUI_00001_.safetensors"));
    assert!(model.contains_key("model.diffusion_model.audio_patchify_proj.weight"));
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
        "ltx2 through the node files",
    );
}

/// A file as Lightricks releases LTX-2: the denoiser and the video VAE under ComfyUI's
/// prefixes, and at the top level the audio VAE, the vocoder and the text projection (no
/// Gemma). It is detected as LTX-2 from its header; ComfyUI's checkpoint save has no place for
/// the audio parts and the file lacks the text encoder, so a conversion is refused, naming the
/// missing component and the keys it has no place for, and nothing is written.
#[test]
fn a_released_file_is_detected_and_its_conversion_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ckpt = ok_path(
        d,
        &[
            "save",
            "--synthetic",
            "ltx2",
            "--tiny",
            "-q",
            "--output-dir",
            s(&d.join("a")),
        ],
    );
    let (mut tensors, _) = st::read(&ckpt);
    tensors.retain(|k, _| !k.starts_with("text_encoders."));
    for (i, k) in [
        "audio_vae.decoder.conv_in.conv.weight",
        "vocoder.conv_pre.weight",
        "text_embedding_projection.aggregate_embed.weight",
    ]
    .iter()
    .enumerate()
    {
        let v: Vec<f32> = (0..6).map(|j| (i * 6 + j) as f32 * 0.5).collect();
        tensors.insert(
            k.to_string(),
            (safetensors::Dtype::F32, vec![2, 3], st::f32_bytes(&v)),
        );
    }
    let released = d.join("ltx-2-19b-dev.safetensors");
    st::write(&released, &tensors, &BTreeMap::new());
    let r = run(d, &["inspect", s(&released)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("architecture: ltx2"), "{}", r.stdout);
    let out = d.join("c");
    let r = run(d, &["convert", s(&released), "--output-dir", s(&out)]);
    common::cli::assert_refused(&r, "missing component `clip`", &out);
    assert!(
        r.stderr
            .contains("3 key(s) no component of this layout takes (first: `audio_vae."),
        "the parts it has no place for are named: {}",
        r.stderr
    );
}
