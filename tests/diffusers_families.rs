//! The later families in diffusers names, both directions, against diffusers' own converters:
//! `tests/fixtures/diffusers/<family>/diffusers/` holds what `convert_*_to_diffusers` made of the
//! checkpoint beside it (see `make_family_fixtures.py`). A split writes the same tensors; the
//! diffusers models read back to the checkpoint's; a checkpoint goes to a diffusers folder and
//! back unchanged (what diffusers does not map travels in the folder's `comfyui/`). LTX-2's
//! fixture was made by `make_ltx2_fixture.py` with `convert_ltx2_transformer_to_diffusers`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use checkpoint_save::input::open_component;
use checkpoint_save::model::InputMap;
use checkpoint_save::{
    open_input, save_to_path, split, Arch, ComponentKind, Components, SaveOptions, SplitTarget,
};
use common::cli::{ok_path, run};

/// Fixture folder, family, the diffusers folders diffusers' converters made.
const FAMILIES: [(&str, Arch, &[&str]); 11] = [
    (
        "wan21",
        Arch::Wan21,
        &["transformer", "vae", "text_encoder"],
    ),
    ("wan22", Arch::Wan22, &["transformer", "text_encoder"]),
    ("qwen-image", Arch::QwenImage, &["transformer", "vae"]),
    ("hidream", Arch::HiDream, &["transformer"]),
    ("chroma", Arch::Chroma, &["transformer"]),
    ("lumina2", Arch::Lumina2, &["transformer"]),
    ("flux2", Arch::Flux2, &["transformer"]),
    ("z-image", Arch::ZImage, &["transformer"]),
    ("hunyuan-video", Arch::HunyuanVideo, &["transformer"]),
    ("ltxv", Arch::Ltxv, &["transformer"]),
    ("ltx2", Arch::Ltx2, &["transformer"]),
];

/// Denoiser tensors diffusers holds in another model than the transformer (LTX-2's text
/// connectors, `LTX2TextConnectors`): a split keeps them in `comfyui/diffusion_models/`.
fn outside_the_transformer(arch: Arch, key: &str) -> bool {
    arch == Arch::Ltx2
        && (key.starts_with("video_embeddings_connector.")
            || key.starts_with("audio_embeddings_connector."))
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/diffusers")
        .join(name)
}

/// Every tensor of a file: dtype, shape, bytes.
type Tensors = BTreeMap<String, (String, Vec<usize>, Vec<u8>)>;

fn tensors(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                (v.dtype().to_string(), v.shape().to_vec(), v.data().to_vec()),
            )
        })
        .collect()
}

fn folder(dir: &Path) -> Tensors {
    let mut all = Tensors::new();
    for f in std::fs::read_dir(dir).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|x| x == "safetensors") {
            all.extend(tensors(&f));
        }
    }
    all
}

/// The tensors of `map` as a file holds them (written under their own names).
fn written(map: &InputMap, dir: &Path) -> Tensors {
    let mut c = Components::default();
    c.set_inputs(ComponentKind::Model, map.clone());
    let path = dir.join(format!("{}.safetensors", map.len()));
    let _ = std::fs::remove_file(&path);
    save_to_path(&c, &path, &SaveOptions::plain()).unwrap();
    tensors(&path)
}

/// What diffusers does not carry (README, "Keys diffusers does not carry"): Lumina 2's and
/// Z-Image's unused `norm_final` (ones when read back), every text encoder's `logit_scale`
/// (ComfyUI's default, F32), and the CLIP-L projection HunyuanVideo's `CLIPTextModel` has not
/// (the identity), as for Flux.
fn not_carried(key: &str) -> bool {
    key.ends_with("norm_final.weight")
        || key.ends_with("logit_scale")
        || key.ends_with("clip_l.transformer.text_projection.weight")
}

#[test]
fn split_to_diffusers_writes_what_diffusers_converters_write() {
    let dir = tempfile::tempdir().unwrap();
    for (name, arch, folders) in FAMILIES {
        let input = open_input(&fixture(name).join("checkpoint.safetensors"), None).unwrap();
        assert_eq!(input.arch, Some(arch), "{name}");
        let out = dir.path().join(name);
        split(
            &input,
            &out,
            SplitTarget::Diffusers,
            &SaveOptions::default(),
        )
        .unwrap();
        for f in folders.iter() {
            let (ours, theirs) = (
                folder(&out.join(f)),
                folder(&fixture(name).join("diffusers").join(f)),
            );
            assert_eq!(
                ours.keys().collect::<Vec<_>>(),
                theirs.keys().collect::<Vec<_>>(),
                "{name}/{f}"
            );
            for (k, t) in &theirs {
                assert!(ours[k] == *t, "{name}/{f}: `{k}` differs");
            }
            assert!(out.join(f).join("config.json").is_file(), "{name}/{f}");
        }
        // The pipeline's index names each model folder, and what has no diffusers names here
        // (language-model encoders, tokenizer blobs, autoencoders diffusers cannot read) is in
        // comfyui/, as ComfyUI's save nodes write it.
        let index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("model_index.json")).unwrap())
                .unwrap();
        for f in folders.iter() {
            assert_eq!(
                index[*f][0],
                if f.starts_with("text") {
                    "transformers"
                } else {
                    "diffusers"
                },
                "{name}/{f}"
            );
        }
        // Chroma's T5 and VAE have diffusers names; every other family has a part without.
        assert_eq!(
            out.join("comfyui").is_dir(),
            arch != Arch::Chroma,
            "{name}: comfyui/"
        );
    }
}

#[test]
fn diffusers_models_read_back_to_the_checkpoints_tensors() {
    let dir = tempfile::tempdir().unwrap();
    for (name, arch, folders) in FAMILIES {
        let ckpt = open_input(&fixture(name).join("checkpoint.safetensors"), None).unwrap();
        for f in folders.iter() {
            let kind = match *f {
                "transformer" => ComponentKind::Model,
                "vae" => ComponentKind::Vae,
                _ => ComponentKind::Clip,
            };
            let path = fixture(name).join("diffusers").join(f);
            let read = open_component(kind, &[path], Some(arch)).unwrap();
            let got = written(&read.tensors, dir.path());
            let want = written(ckpt.components.get(kind).unwrap(), dir.path());
            // The text encoder folder is one encoder of the clip component (umT5).
            let of_this = |k: &str| {
                (kind != ComponentKind::Clip || k.starts_with("umt5xxl."))
                    && !(kind == ComponentKind::Model && outside_the_transformer(arch, k))
            };
            for (k, w) in want.iter().filter(|(k, _)| of_this(k)) {
                let g = got
                    .get(k)
                    .unwrap_or_else(|| panic!("{name}/{f}: `{k}` is not read back"));
                assert_eq!(g.1, w.1, "{name}/{f}: `{k}`");
                assert!(
                    (g.0 == w.0 && g.2 == w.2) || not_carried(k),
                    "{name}/{f}: `{k}` differs"
                );
            }
            assert_eq!(
                got.len(),
                want.keys().filter(|k| of_this(k)).count(),
                "{name}/{f}: extra tensors"
            );
        }
    }
}

#[test]
fn a_checkpoint_goes_to_diffusers_and_back_through_the_binary() {
    for (name, _, _) in FAMILIES {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let original = fixture(name).join("checkpoint.safetensors");
        let pipeline = d.join("pipeline");
        let r = run(
            d,
            &[
                "split",
                original.to_str().unwrap(),
                "--to",
                "diffusers",
                "--output-dir",
                pipeline.to_str().unwrap(),
                "-q",
            ],
        );
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        let back = ok_path(
            d,
            &[
                "convert",
                pipeline.to_str().unwrap(),
                "-q",
                "--disable-metadata",
                "--output-dir",
                d.join("back").to_str().unwrap(),
            ],
        );
        let (want, got) = (tensors(&original), tensors(&back));
        for (k, w) in &want {
            let g = got
                .get(k)
                .unwrap_or_else(|| panic!("{name}: `{k}` is missing"));
            assert_eq!(g.1, w.1, "{name}: `{k}`");
            assert!(
                (g.0 == w.0 && g.2 == w.2) || not_carried(k),
                "{name}: `{k}` differs"
            );
        }
        assert_eq!(got.len(), want.len(), "{name}: extra tensors");
    }
}
