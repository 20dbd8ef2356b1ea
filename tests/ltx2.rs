//! LTX-2 (ComfyUI `LTXAV`) through the real binary: the checkpoint ComfyUI's save writes for
//! it, planned from the full-size model's header; its parts as ComfyUI's separate save nodes
//! write them and read back; and a file laid out as Lightricks releases it.
//!
//! The expected keys and counts are read off ComfyUI's modules (`lightricks/av_model.py`,
//! `lightricks/embeddings_connector.py`, `text_encoders/lt.py`, `text_encoders/llama.py`
//! `Gemma3_12B`, `clip_model.py` `CLIPVision`, `lightricks/vae/causal_audio_autoencoder.py`,
//! `lightricks/vocoders/vocoder.py`) and counted by hand here, not by the crate.

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

/// `CausalAudioAutoencoder`'s keys at ComfyUI's defaults (ch 128 × 1-2-4, two blocks per
/// level, causal convolutions, pixel norms): the encoder's 44 (conv_in 2; level 0: two blocks
/// of 4 and a downsampler of 2; level 1: a widening block of 6 (its 1x1 shortcut), a block of
/// 4, a downsampler; level 2: 6 + 4; two middle blocks of 4; conv_out 2), the decoder's 56
/// (conv_in 2, the middle 8; level 2: three blocks of 4 and an upsampler; level 1: 6 + 4 + 4 and
/// an upsampler; level 0: 6 + 4 + 4; conv_out 2) and the two latent statistics.
const AUDIO_VAE_KEYS: usize = 44 + 56 + 2;

/// The HiFi-GAN vocoder's keys: conv_pre (2), five upsamplers (2 each), three residual blocks
/// per upsampler of six convolutions (2 each), conv_post (2).
const VOCODER_KEYS: usize = 2 + 5 * 2 + 5 * 3 * 6 * 2 + 2;

/// The header `config` a release carries, with the sections ComfyUI's `AudioVAE` reads.
const CONFIG: &str = r#"{"audio_vae": {"model": {"params": {"sampling_rate": 16000}}}, "vocoder": {"stereo": true}}"#;

/// `save --synthetic ltx2-19b-release --dry-run --json`: the file as Lightricks ships it — the
/// denoiser and the video VAE under ComfyUI's prefixes, the audio VAE (`audio_vae.`), the
/// vocoder (`vocoder.`) and the text projection at the top level under the names ComfyUI's
/// loaders read (`LTXVAudioVAELoader`, `LTXAVTEModel.load_sd`), and no Gemma.
#[test]
fn the_release_is_laid_out_as_lightricks_ships_it() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        dir.path(),
        &[
            "save",
            "--synthetic",
            "ltx2-19b-release",
            "--max-dim",
            "2",
            "--dry-run",
            "--json",
            "--output-dir",
            s(&dir.path().join("out")),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let plan: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(plan["layout"], "ltx2");
    let keys: Vec<&str> = plan["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["key"].as_str().unwrap())
        .collect();
    let under = |p: &str| keys.iter().filter(|k| k.starts_with(p)).count();
    assert_eq!(under("model.diffusion_model."), DIT_KEYS);
    assert_eq!(under("audio_vae."), AUDIO_VAE_KEYS);
    assert_eq!(under("vocoder."), VOCODER_KEYS);
    assert_eq!(under("text_encoders."), 0, "the release ships no Gemma");
    let projection = "text_embedding_projection.aggregate_embed.weight";
    assert_eq!(
        under("model.diffusion_model.") + under("vae.") + AUDIO_VAE_KEYS + VOCODER_KEYS + 1,
        keys.len()
    );
    let set: BTreeSet<&str> = keys.iter().copied().collect();
    for k in [
        projection,
        "vae.per_channel_statistics.mean-of-means",
        "audio_vae.encoder.conv_in.conv.weight",
        "audio_vae.encoder.down.1.block.0.nin_shortcut.conv.weight",
        "audio_vae.decoder.up.2.upsample.conv.conv.weight",
        "audio_vae.per_channel_statistics.std-of-means",
        // The key ComfyUI's VAE class tells an LTX audio VAE by.
        "vocoder.resblocks.0.convs1.0.weight",
        "vocoder.resblocks.14.convs2.2.bias",
        "vocoder.ups.4.weight",
        "vocoder.conv_post.weight",
    ] {
        assert!(set.contains(k), "the plan lacks {k}");
    }
}

/// A release file (with its `config` metadata) for the tests: the synthetic release at a test
/// size, its header's metadata extended as Lightricks' files carry it.
fn release(d: &Path, seed: &str, config: &str) -> std::path::PathBuf {
    let made = ok_path(
        d,
        &[
            "save",
            "--synthetic",
            "ltx2-19b-release",
            "--tiny",
            "--seed",
            seed,
            "-q",
            "--output-dir",
            s(&d.join(format!("made{seed}"))),
        ],
    );
    let (tensors, mut meta) = st::read(&made);
    meta.insert("config".into(), config.into());
    let path = d.join(format!("ltx-2-19b-dev-{seed}.safetensors"));
    st::write(&path, &tensors, &meta);
    path
}

fn is_audio(k: &str) -> bool {
    k.starts_with("audio_vae.") || k.starts_with("vocoder.")
}

/// A release converts with every tensor under the same name — byte for byte with
/// `--dtype keep`, its `config` kept — casts its audio parts with `--dtype`, and keeps them out
/// of `--quantize`; `inspect` names the audio VAE.
#[test]
fn a_release_converts_whole_and_its_audio_parts_are_cast_not_quantized() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let released = release(d, "3", CONFIG);
    let r = run(d, &["inspect", s(&released)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("architecture: ltx2"), "{}", r.stdout);
    assert!(r.stdout.contains("audio_vae"), "{}", r.stdout);
    let (input, _) = st::read(&released);
    assert!(input.keys().filter(|k| is_audio(k)).count() > 50);

    let kept = ok_path(
        d,
        &[
            "convert",
            s(&released),
            "--dtype",
            "keep",
            "-q",
            "--output-dir",
            s(&d.join("keep")),
        ],
    );
    let (out, meta) = st::read(&kept);
    assert_eq!(out, input, "every tensor, its name, dtype, shape and bytes");
    assert_eq!(meta.get("config").map(String::as_str), Some(CONFIG));

    let half = ok_path(
        d,
        &[
            "convert",
            s(&released),
            "--dtype",
            "f16",
            "-q",
            "--output-dir",
            s(&d.join("f16")),
        ],
    );
    let (out, _) = st::read(&half);
    assert_eq!(
        out.keys().collect::<Vec<_>>(),
        input.keys().collect::<Vec<_>>()
    );
    for (k, (dtype, shape, bytes)) in input.iter().filter(|(k, _)| is_audio(k)) {
        assert_eq!(*dtype, safetensors::Dtype::F32, "{k}");
        let want: Vec<u8> = st::floats(*dtype, bytes)
            .iter()
            .flat_map(|v| ::half::f16::from_f32(*v).to_le_bytes())
            .collect();
        assert_eq!(
            out[k],
            (safetensors::Dtype::F16, shape.clone(), want),
            "{k}"
        );
    }

    let quantized = ok_path(
        d,
        &[
            "convert",
            s(&released),
            "--quantize",
            "fp8",
            "-q",
            "--output-dir",
            s(&d.join("q")),
        ],
    );
    let (out, _) = st::read(&quantized);
    assert!(
        out.iter()
            .any(|(k, t)| k.starts_with("model.") && t.0 == safetensors::Dtype::F8_E4M3),
        "the denoiser is quantized"
    );
    for (k, t) in input.iter().filter(|(k, _)| is_audio(k)) {
        assert_eq!(&out[k], t, "{k} is not quantized");
    }
    assert!(!out.keys().any(|k| is_audio(k) && !input.contains_key(k)));
}

/// A merge of two releases merges the denoisers (ModelMergeSimple: A·r + B·(1 − r)) and takes
/// the audio VAE with the VAE — A's, or B's with `--vae b` — with its `config`; `--weights`
/// (a graph of ComfyUI's merge nodes) carries it the same way.
#[test]
fn two_releases_merge_with_the_audio_vae_going_with_the_vae() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config_b = CONFIG.replace("16000", "24000");
    let (a, b) = (release(d, "1", CONFIG), release(d, "2", &config_b));
    let ((ta, _), (tb, _)) = (st::read(&a), st::read(&b));
    let key = "model.diffusion_model.transformer_blocks.0.attn1.to_q.weight";
    for (args, audio_of, config) in [
        (vec!["--ratio", "0.25"], &ta, CONFIG),
        (
            vec!["--ratio", "0.25", "--vae", "b"],
            &tb,
            config_b.as_str(),
        ),
        (vec!["--weights", "1,3"], &ta, CONFIG),
    ] {
        let out = d.join(format!("m{}", args.len()));
        let mut cmd = vec!["merge", s(&a), s(&b), "-q", "--output-dir", s(&out)];
        cmd.extend(args.iter().copied());
        let m = ok_path(d, &cmd);
        let (tm, meta) = st::read(&m);
        assert_eq!(
            tm.keys().collect::<Vec<_>>(),
            ta.keys().collect::<Vec<_>>(),
            "{args:?}"
        );
        for (k, t) in audio_of.iter().filter(|(k, _)| is_audio(k)) {
            assert_eq!(&tm[k], t, "{args:?}: {k}");
        }
        assert_eq!(
            meta.get("config").map(String::as_str),
            Some(config),
            "{args:?}"
        );
        let f = |t: &BTreeMap<String, st::Raw>| st::floats(t[key].0, &t[key].2);
        let (va, vb, vm) = (f(&ta), f(&tb), f(&tm));
        for i in 0..va.len() {
            assert_eq!(vm[i], va[i] * 0.25 + vb[i] * 0.75, "{args:?}: {key}[{i}]");
        }
    }
}

/// A LoRA baked into a release patches the denoiser and leaves the audio VAE, the vocoder and
/// the video VAE as they are.
#[test]
fn a_lora_bake_into_a_release_leaves_its_audio_parts_alone() {
    use candle_core::Device;
    use checkpoint_save::synthetic::{self, SyntheticOptions};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let released = release(d, "7", CONFIG);
    let opts = SyntheticOptions::named("ltx2-19b-release").unwrap().tiny();
    let model = synthetic::build(&opts, &Device::Cpu).unwrap();
    let lora = d.join("lora.safetensors");
    let tensors = synthetic::lora::lora(checkpoint_save::Arch::Ltx2, &model, 2, 9).unwrap();
    checkpoint_save::save_tensors(&tensors, &lora).unwrap();
    let baked = ok_path(
        d,
        &[
            "merge",
            s(&released),
            "--lora",
            s(&lora),
            "-q",
            "--output-dir",
            s(&d.join("l")),
        ],
    );
    let ((input, _), (out, meta)) = (st::read(&released), st::read(&baked));
    assert_eq!(
        out.keys().collect::<Vec<_>>(),
        input.keys().collect::<Vec<_>>()
    );
    let changed = |p: &str| {
        input
            .iter()
            .filter(|(k, t)| k.starts_with(p) && out[*k] != **t)
            .count()
    };
    assert!(changed("model.diffusion_model.") > 0, "the LoRA is baked");
    for p in [
        "audio_vae.",
        "vocoder.",
        "vae.",
        "text_embedding_projection.",
    ] {
        assert_eq!(changed(p), 0, "{p}");
    }
    assert_eq!(meta.get("config").map(String::as_str), Some(CONFIG));
}

/// `split --to nodes` of a release writes the audio VAE where ComfyUI's audio VAE loaders read
/// it — `vae/`, the release's `audio_vae.`/`vocoder.` names, its `config` — and the projection
/// as CLIPSave would; `save` of the parts (`--audio-vae`) gives the file back.
#[test]
fn a_release_splits_into_comfyuis_loader_files_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let released = release(d, "5", CONFIG);
    let ckpt = ok_path(
        d,
        &[
            "convert",
            s(&released),
            "-q",
            "--output-dir",
            s(&d.join("c")),
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
        "vae/ComfyUI_audio_vae_00001_.safetensors",
    ]
    .map(String::from)
    .into();
    assert_eq!(got, want);
    let (audio, meta) = st::read(&parts.join("vae/ComfyUI_audio_vae_00001_.safetensors"));
    let (input, _) = st::read(&released);
    let want: BTreeMap<String, st::Raw> = input
        .iter()
        .filter(|(k, _)| is_audio(k))
        .map(|(k, t)| (k.clone(), t.clone()))
        .collect();
    assert_eq!(
        audio, want,
        "the audio VAE file holds the release's audio keys unchanged"
    );
    assert_eq!(meta.get("config").map(String::as_str), Some(CONFIG));
    let (clip, _) = st::read(&parts.join("clip/ComfyUI_00001_.safetensors"));
    assert_eq!(
        clip.keys().collect::<Vec<_>>(),
        ["text_embedding_projection.weight"],
        "LTXAVTEModel's name of the projection"
    );
    let p = |rel: &str| parts.join(rel);
    let back = ok_path(
        d,
        &[
            "save",
            "-q",
            "--model",
            s(&p("diffusion_models/ComfyUI_00001_.safetensors")),
            "--clip",
            s(&p("clip/ComfyUI_00001_.safetensors")),
            "--vae",
            s(&p("vae/ComfyUI_vae_00001_.safetensors")),
            "--audio-vae",
            s(&p("vae/ComfyUI_audio_vae_00001_.safetensors")),
            "--output-dir",
            s(&d.join("back")),
        ],
    );
    common::same_tensors(
        &std::fs::read(&ckpt).unwrap(),
        &std::fs::read(&back).unwrap(),
        "the release through ComfyUI's loader files",
    );
}

/// A release through a diffusers folder and back: the transformer in diffusers' names, what
/// diffusers has no names for here (the text connectors, the projection, the video VAE, the
/// audio VAE with its vocoder) in `comfyui/`, and `convert` of the folder gives every tensor
/// back under its name, byte for byte.
#[test]
fn a_release_goes_through_a_diffusers_folder_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let released = release(d, "11", CONFIG);
    let folder = d.join("pipeline");
    let r = run(
        d,
        &[
            "split",
            s(&released),
            "--to",
            "diffusers",
            "--output-dir",
            s(&folder),
            "-q",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("model_index.json")).unwrap())
            .unwrap();
    assert_eq!(index["_class_name"], "LTX2Pipeline");
    assert_eq!(
        index["transformer"],
        serde_json::json!(["diffusers", "LTX2VideoTransformer3DModel"])
    );
    let (transformer, _) =
        st::read(&folder.join("transformer/diffusion_pytorch_model.safetensors"));
    assert!(transformer.contains_key("audio_time_embed.linear.weight"));
    assert!(transformer.contains_key("av_cross_attn_video_a2v_gate.linear.weight"));
    assert!(!transformer
        .keys()
        .any(|k| k.contains("embeddings_connector")));
    assert!(folder
        .join("comfyui/vae/ComfyUI_audio_vae_00001_.safetensors")
        .is_file());
    let back = ok_path(
        d,
        &[
            "convert",
            s(&folder),
            "--dtype",
            "keep",
            "-q",
            "--output-dir",
            s(&d.join("back")),
        ],
    );
    let ((want, _), (got, _)) = (st::read(&released), st::read(&back));
    assert_eq!(got, want);
}
