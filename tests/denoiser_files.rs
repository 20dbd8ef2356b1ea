//! A denoiser alone in one file as the input of every job: what ComfyUI's ModelSave writes
//! (`model.diffusion_model.` names and its prediction's markers), what its UNETLoader reads from
//! `diffusion_models/` (ComfyUI's in-memory names, as denoisers are shared), and a diffusers
//! UNet file or folder. Each job writes what ModelSave writes: the denoiser under
//! `model.diffusion_model.` in `diffusion_models/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod common;

use common::cli::{assert_refused, ok_path, run};
use common::st::{self, Raw};

/// The model file (ModelSave's form), the bare denoiser file, the diffusers UNet folder and the
/// full checkpoint they were split from, of a test-sized SD2 v-prediction model.
struct Forms {
    checkpoint: PathBuf,
    node: PathBuf,
    bare: PathBuf,
    unet: PathBuf,
}

fn forms(dir: &Path, seed: &str) -> Forms {
    let root = dir.join(format!("m{seed}"));
    let checkpoint = ok_path(
        dir,
        &[
            "save",
            "-q",
            "--synthetic",
            "sd2",
            "--tiny",
            "--seed",
            seed,
            "--prediction",
            "v",
            "--output-dir",
            root.join("full").to_str().unwrap(),
        ],
    );
    let split = |to: &str, name: &str| {
        let out = root.join(name);
        let r = run(
            dir,
            &[
                "split",
                "-q",
                checkpoint.to_str().unwrap(),
                "--to",
                to,
                "--output-dir",
                out.to_str().unwrap(),
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        out
    };
    let nodes = split("nodes", "nodes");
    let node = std::fs::read_dir(nodes.join("diffusion_models"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bare = split("comfyui", "comfy").join("model.safetensors");
    let unet = split("diffusers", "diffusers").join("unet");
    Forms {
        checkpoint,
        node,
        bare,
        unet,
    }
}

const PREFIX: &str = "model.diffusion_model.";

/// The denoiser's tensors of a full checkpoint, under their prefix, as f32 values.
fn denoiser_of(checkpoint: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let (t, _) = st::read(checkpoint);
    t.into_iter()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .map(|(k, (d, s, b))| (k, (s, st::floats(d, &b))))
        .collect()
}

fn values(t: &BTreeMap<String, Raw>) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    t.iter()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .map(|(k, (d, s, b))| (k.clone(), (s.clone(), st::floats(*d, b))))
        .collect()
}

fn convert(dir: &Path, input: &Path, out: &str, extra: &[&str]) -> PathBuf {
    let mut args = vec![
        "convert",
        "-q",
        input.to_str().unwrap(),
        "--output-dir",
        out,
    ];
    args.extend_from_slice(extra);
    let path = ok_path(dir, &args);
    assert!(
        path.starts_with(dir.join(out).join("diffusion_models")),
        "a denoiser goes to diffusion_models/: {}",
        path.display()
    );
    path
}

#[test]
fn every_form_of_a_denoiser_file_converts_to_what_modelsave_writes() {
    let dir = tempfile::tempdir().unwrap();
    let f = forms(dir.path(), "1");
    let want = denoiser_of(&f.checkpoint);
    let unet_file = f.unet.join("diffusion_pytorch_model.safetensors");
    for (i, input) in [&f.node, &f.bare, &f.unet, &unet_file].iter().enumerate() {
        let out = convert(dir.path(), input, &format!("o{i}"), &["--dtype", "f16"]);
        let (t, meta) = st::read(&out);
        let got = values(&t);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{}: the denoiser's keys under its prefix",
            input.display()
        );
        for (k, (shape, v)) in &want {
            assert_eq!(t[k].0, safetensors::Dtype::F16, "{k}");
            assert_eq!(&got[k].0, shape, "{k}");
            for (a, b) in got[k].1.iter().zip(v) {
                assert!(
                    st::same(*a, half::f16::from_f32(*b).to_f32()),
                    "{k}: {a} {b}"
                );
            }
        }
        // No text encoder, no autoencoder.
        assert!(
            t.keys().all(|k| k.starts_with(PREFIX) || k == "v_pred"),
            "{:?}",
            t.keys()
                .filter(|k| !k.starts_with(PREFIX))
                .collect::<Vec<_>>()
        );
        if i == 0 {
            // ModelSave's file states v-prediction with its marker; the conversion keeps it.
            assert!(t.contains_key("v_pred"), "the v_pred marker kept");
            assert_eq!(meta["modelspec.predict_key"], "v");
        }
    }
}

#[test]
fn denoiser_files_merge_and_take_a_lora() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (forms(dir.path(), "1"), forms(dir.path(), "2"));
    let (va, vb) = (denoiser_of(&a.checkpoint), denoiser_of(&b.checkpoint));
    let merged = ok_path(
        dir.path(),
        &[
            "merge",
            "-q",
            a.bare.to_str().unwrap(),
            b.node.to_str().unwrap(),
            "--ratio",
            "0.3",
            "--output-dir",
            "merged",
        ],
    );
    let (t, _) = st::read(&merged);
    let got = values(&t);
    assert_eq!(got.len(), va.len());
    for (k, (_, x)) in &va {
        let y = &vb[k].1;
        for (i, g) in got[k].1.iter().enumerate() {
            // ComfyUI's ModelMergeSimple: A·ratio + B·(1 − ratio).
            let want = x[i] * 0.3 + y[i] * (1.0 - 0.3);
            assert!((g - want).abs() <= 1e-6 * want.abs().max(1.0), "{k}[{i}]");
        }
    }

    // A LoRA in ComfyUI's own names, strength 0.5.
    let key = "input_blocks.1.1.proj_in.weight";
    let (shape, w) = &va[&format!("{PREFIX}{key}")];
    let (rows, cols) = (shape[0], shape[1..].iter().product::<usize>());
    let r = 2;
    let up: Vec<f32> = (0..rows * r)
        .map(|i| (i % 7) as f32 * 0.01 - 0.03)
        .collect();
    let down: Vec<f32> = (0..r * cols)
        .map(|i| (i % 5) as f32 * 0.02 - 0.04)
        .collect();
    let mut lora = BTreeMap::new();
    let layer = "diffusion_model.input_blocks.1.1.proj_in";
    lora.insert(
        format!("{layer}.lora_up.weight"),
        (safetensors::Dtype::F32, vec![rows, r], st::f32_bytes(&up)),
    );
    let mut down_shape = vec![r];
    down_shape.extend_from_slice(&shape[1..]);
    lora.insert(
        format!("{layer}.lora_down.weight"),
        (safetensors::Dtype::F32, down_shape, st::f32_bytes(&down)),
    );
    let lora_path = dir.path().join("l.safetensors");
    st::write(&lora_path, &lora, &BTreeMap::new());
    let baked = ok_path(
        dir.path(),
        &[
            "merge",
            "-q",
            a.node.to_str().unwrap(),
            "--lora",
            &format!("{}:0.5", lora_path.display()),
            "--output-dir",
            "baked",
        ],
    );
    let (t, _) = st::read(&baked);
    let got = values(&t);
    for (i, g) in got[&format!("{PREFIX}{key}")].1.iter().enumerate() {
        let (row, col) = (i / cols, i % cols);
        let d: f32 = (0..r).map(|k| up[row * r + k] * down[k * cols + col]).sum();
        let want = w[i] + 0.5 * d;
        assert!((g - want).abs() < 1e-6, "{key}[{i}]: {g} vs {want}");
    }
}

#[test]
fn inspect_reads_a_denoiser_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = forms(dir.path(), "1");
    let r = run(dir.path(), &["inspect", f.bare.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("architecture: sd2"), "{}", r.stdout);
}

#[test]
fn a_file_of_another_component_or_no_known_denoiser_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = forms(dir.path(), "1");
    let clip = f.bare.with_file_name("clip.safetensors");
    let out = dir.path().join("out");
    let r = run(
        dir.path(),
        &[
            "convert",
            clip.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert_refused(&r, "holds a clip component", &out);

    // A denoiser-looking file of no known family: the blocks of a UNet, but nothing else.
    let (t, _) = st::read(&f.bare);
    let odd: BTreeMap<String, Raw> = t
        .into_iter()
        .filter(|(k, _)| k.starts_with("input_blocks.1."))
        .map(|(k, v)| (format!("{PREFIX}{k}"), v))
        .collect();
    let odd_path = dir.path().join("odd.safetensors");
    st::write(&odd_path, &odd, &BTreeMap::new());
    let r = run(
        dir.path(),
        &[
            "convert",
            odd_path.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert_refused(&r, "--arch generic", &out);
}
