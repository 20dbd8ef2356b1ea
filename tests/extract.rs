//! `extract-lora` with the real binary: ComfyUI's LoraSave naming and file, a LoRA that bakes
//! back into the tuned model with `merge --lora --strict`, and bad requests refused.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use checkpoint_save::synthetic::{build, SyntheticOptions};
use checkpoint_save::{save_to_path, Arch, ComponentKind, Components, SaveOptions};
use common::cli::{assert_refused, ok_path, run};

const CHANGED: [&str; 3] = [
    "input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight",
    "input_blocks.4.0.in_layers.2.weight",
    "out.2.weight",
];

/// A tiny SD1.5 base, and a tuned copy whose `CHANGED` weights moved by a rank-3 difference.
fn models(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let base = build(
        &SyntheticOptions::new(Arch::Sd15).with_max_dim(16),
        &Device::Cpu,
    )
    .unwrap();
    let mut tuned = base.clone();
    let mut model = tuned.take(ComponentKind::Model).unwrap();
    for key in CHANGED {
        let t = model[key].as_candle().unwrap().clone();
        let rows = t.dims()[0];
        let cols = t.elem_count() / rows;
        // A rank-3 difference with symmetric, fine-tune-like factors.
        let wave = |n: usize, k: usize, f: f32| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * 7 + k * 13) as f32 * f).sin() * 0.05)
                .collect()
        };
        let mut delta = Tensor::zeros(t.dims(), DType::F32, &Device::Cpu).unwrap();
        for k in 0..3 {
            let u = Tensor::from_vec(wave(rows, k, 0.37), (rows, 1), &Device::Cpu).unwrap();
            let v = Tensor::from_vec(wave(cols, k, 0.23), (1, cols), &Device::Cpu).unwrap();
            let term = u.matmul(&v).unwrap().reshape(t.dims()).unwrap();
            delta = (delta + term).unwrap();
        }
        let delta = delta.to_dtype(t.dtype()).unwrap();
        model.insert(key.to_string(), (t + delta).unwrap().into());
    }
    tuned.set_inputs(ComponentKind::Model, model);
    let save = |c: &Components, name: &str| {
        let p = dir.join(name);
        save_to_path(c, &p, &SaveOptions::default()).unwrap();
        p
    };
    (
        save(&tuned, "tuned.safetensors"),
        save(&base, "base.safetensors"),
    )
}

fn tensors(path: &Path) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// `‖a − b‖` (Frobenius).
fn distance(a: &Tensor, b: &Tensor) -> f32 {
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .sqrt()
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn an_extracted_lora_is_lorasaves_file_and_bakes_back() {
    let dir = tempfile::tempdir().unwrap();
    let (tuned, base) = models(dir.path());
    for format in ["comfy", "kohya"] {
        let out = dir.path().join(format!("out-{format}"));
        let lora = ok_path(
            dir.path(),
            &[
                "extract-lora",
                tuned.to_str().unwrap(),
                base.to_str().unwrap(),
                "--rank",
                "3",
                "--bias-diff",
                "--clip",
                "--format",
                format,
                "--output-dir",
                out.to_str().unwrap(),
            ],
        );
        assert!(lora.ends_with("loras/ComfyUI_extracted_lora_00001_.safetensors"));
        let factors = tensors(&lora);
        assert!(factors.values().all(|t| t.dtype() == DType::F16));
        if format == "comfy" {
            let up = &factors["diffusion_model.out.2.lora_up.weight"];
            assert_eq!(up.dims()[1..], [3, 1, 1]);
            assert!(factors.keys().all(
                |k| k.starts_with("diffusion_model.") || k.starts_with("text_encoders.clip_l.")
            ));
        } else {
            assert!(factors
                .keys()
                .any(|k| k.starts_with("lora_unet_down_blocks_")));
            assert!(factors.keys().any(|k| k.ends_with(".alpha")));
            assert!(factors.keys().any(|k| k.starts_with("lora_te_text_model_")));
        }
        // Baked back with every key applied, the changed weights return to the tuned values
        // (within the f16 factors and ComfyUI's clamp at the 0.99 quantile of the factors'
        // entries, which trims their largest 1 %), the others stay the base's.
        let baked = ok_path(
            dir.path(),
            &[
                "merge",
                base.to_str().unwrap(),
                "--lora",
                lora.to_str().unwrap(),
                "--strict",
                "--output-dir",
                out.to_str().unwrap(),
            ],
        );
        let (baked, tuned, base) = (tensors(&baked), tensors(&tuned), tensors(&base));
        for (key, t) in &tuned {
            let b = &baked[key];
            let short = key.trim_start_matches("model.diffusion_model.");
            if CHANGED.contains(&short) {
                let moved = distance(t, &base[key]);
                let off = distance(b, t);
                assert!(off <= 0.1 * moved, "{key}: {off} of {moved}");
            } else if key.starts_with("model.diffusion_model.") && key.ends_with(".weight") {
                assert!(distance(b, t) <= 1e-3, "{key}");
            }
        }
    }
}

#[test]
fn bad_requests_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (tuned, base) = models(dir.path());
    let out = dir.path().join("out");
    let r = run(
        dir.path(),
        &[
            "extract-lora",
            tuned.to_str().unwrap(),
            base.to_str().unwrap(),
            "--rank",
            "0",
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert_refused(&r, "rank 0 is outside 1..=4096", &out);
    let sdxl = dir.path().join("sdxl.safetensors");
    let c = build(&SyntheticOptions::new(Arch::Sdxl).tiny(), &Device::Cpu).unwrap();
    save_to_path(&c, &sdxl, &SaveOptions::default()).unwrap();
    let r = run(
        dir.path(),
        &[
            "extract-lora",
            sdxl.to_str().unwrap(),
            base.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert_refused(&r, "TUNED is sdxl and BASE is sd15", &out);
}
