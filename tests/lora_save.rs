//! ComfyUI's LoraSave ("Extract and Save Lora") in a workflow run by the real binary, fed by
//! ModelMergeSubtract and CLIPMergeSubtract: named as ComfyUI names it
//! (`loras/<prefix>_<counter>_.safetensors`), with the tensors `extract-lora` computes from the
//! same two models, from the API and the UI form alike; bad inputs refused.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use checkpoint_save::merge::{extract_lora, ExtractOptions};
use checkpoint_save::synthetic::{self, SyntheticOptions};
use checkpoint_save::{open_input, save_to_path, Arch, LayoutChoice, SaveOptions};
use common::cli::{assert_refused, run};
use common::st::read;
use serde_json::json;

/// A models folder with two tiny SD1.5 checkpoints (f32): `tuned.safetensors`, `base.safetensors`.
fn models(dir: &Path) -> PathBuf {
    let m = dir.join("models/checkpoints");
    std::fs::create_dir_all(&m).unwrap();
    for (seed, name) in [(1, "tuned"), (2, "base")] {
        let o = SyntheticOptions::new(Arch::Sd15)
            .tiny()
            .with_seed(seed)
            .with_dtype(DType::F32);
        let c = synthetic::build(&o, &Device::Cpu).unwrap();
        let opts = SaveOptions {
            layout: LayoutChoice::Arch(Arch::Sd15),
            ..SaveOptions::default()
        };
        save_to_path(&c, &m.join(format!("{name}.safetensors")), &opts).unwrap();
    }
    dir.join("models")
}

fn api(rank: i64, lora_type: &str, bias_diff: bool) -> serde_json::Value {
    json!({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tuned.safetensors"}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "base.safetensors"}},
        "3": {"class_type": "ModelMergeSubtract",
              "inputs": {"model1": ["1", 0], "model2": ["2", 0], "multiplier": 1.0}},
        "4": {"class_type": "CLIPMergeSubtract",
              "inputs": {"clip1": ["1", 1], "clip2": ["2", 1], "multiplier": 1.0}},
        "5": {"class_type": "LoraSave",
              "inputs": {"filename_prefix": "loras/ComfyUI_extracted_lora", "rank": rank,
                         "lora_type": lora_type, "bias_diff": bias_diff,
                         "model_diff": ["3", 0], "text_encoder_diff": ["4", 0]}}
    })
}

/// The same graph as the frontend saves it.
fn ui() -> serde_json::Value {
    let link = |id: i64, name: &str, t: &str| json!({"name": name, "type": t, "link": id});
    let out = |name: &str, t: &str, links: &[i64]| json!({"name": name, "type": t, "links": links});
    json!({
        "last_node_id": 5, "last_link_id": 6,
        "nodes": [
            {"id": 1, "type": "CheckpointLoaderSimple", "mode": 0, "inputs": [],
             "outputs": [out("MODEL", "MODEL", &[1]), out("CLIP", "CLIP", &[3]), out("VAE", "VAE", &[])],
             "widgets_values": ["tuned.safetensors"]},
            {"id": 2, "type": "CheckpointLoaderSimple", "mode": 0, "inputs": [],
             "outputs": [out("MODEL", "MODEL", &[2]), out("CLIP", "CLIP", &[4]), out("VAE", "VAE", &[])],
             "widgets_values": ["base.safetensors"]},
            {"id": 3, "type": "ModelMergeSubtract", "mode": 0,
             "inputs": [link(1, "model1", "MODEL"), link(2, "model2", "MODEL")],
             "outputs": [out("MODEL", "MODEL", &[5])], "widgets_values": [1.0]},
            {"id": 4, "type": "CLIPMergeSubtract", "mode": 0,
             "inputs": [link(3, "clip1", "CLIP"), link(4, "clip2", "CLIP")],
             "outputs": [out("CLIP", "CLIP", &[6])], "widgets_values": [1.0]},
            {"id": 5, "type": "LoraSave", "mode": 0,
             "inputs": [link(5, "model_diff", "MODEL"), link(6, "text_encoder_diff", "CLIP")],
             "outputs": [],
             "widgets_values": ["loras/ComfyUI_extracted_lora", 4, "standard", true]}
        ],
        "links": [
            [1, 1, 0, 3, 0, "MODEL"], [2, 2, 0, 3, 1, "MODEL"],
            [3, 1, 1, 4, 0, "CLIP"], [4, 2, 1, 4, 1, "CLIP"],
            [5, 3, 0, 5, 0, "MODEL"], [6, 4, 0, 5, 1, "CLIP"]
        ],
        "version": 0.4
    })
}

fn run_json(
    dir: &Path,
    models: &Path,
    name: &str,
    w: &serde_json::Value,
    out: &str,
) -> Vec<PathBuf> {
    let f = dir.join(name);
    std::fs::write(&f, w.to_string()).unwrap();
    let r = run(
        dir,
        &[
            "run",
            f.to_str().unwrap(),
            "--models-dir",
            models.to_str().unwrap(),
            "--output-dir",
            out,
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.stdout.lines().map(|l| dir.join(l)).collect()
}

#[test]
fn lora_save_writes_what_extract_lora_computes_under_comfyuis_name() {
    let dir = tempfile::tempdir().unwrap();
    let m = models(dir.path());
    let from_api = run_json(dir.path(), &m, "api.json", &api(4, "standard", true), "api");
    assert_eq!(
        from_api,
        vec![dir
            .path()
            .join("api/loras/ComfyUI_extracted_lora_00001_.safetensors")]
    );
    let from_ui = run_json(dir.path(), &m, "ui.json", &ui(), "ui");
    assert_eq!(
        from_ui,
        vec![dir
            .path()
            .join("ui/loras/ComfyUI_extracted_lora_00001_.safetensors")]
    );
    // A second run counts on, as ComfyUI's get_save_image_path does.
    let again = run_json(dir.path(), &m, "api.json", &api(4, "standard", true), "api");
    assert_eq!(
        again,
        vec![dir
            .path()
            .join("api/loras/ComfyUI_extracted_lora_00002_.safetensors")]
    );

    let (ours, _) = read(&from_api[0]);
    let (ui_tensors, _) = read(&from_ui[0]);
    assert_eq!(ours, ui_tensors, "the UI form writes the same tensors");

    let open = |n: &str| open_input(&m.join(format!("checkpoints/{n}.safetensors")), None).unwrap();
    let opts = ExtractOptions {
        rank: 4,
        clip: true,
        bias_diff: true,
        ..ExtractOptions::default()
    };
    let (expected, _) =
        extract_lora(&open("tuned").components, &open("base").components, &opts).unwrap();
    assert_eq!(
        ours.keys().cloned().collect::<Vec<_>>(),
        expected.keys().cloned().collect::<Vec<_>>()
    );
    for (k, t) in &expected {
        let (dtype, shape, bytes) = &ours[k];
        assert_eq!(*dtype, safetensors::Dtype::F16, "{k}");
        assert_eq!(shape, &t.dims().to_vec(), "{k}");
        let want: Vec<u8> = t
            .flatten_all()
            .unwrap()
            .to_vec1::<half::f16>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(bytes, &want, "{k}");
    }
    let has = |p: &str| ours.keys().any(|k| k.starts_with(p));
    assert!(has("diffusion_model.input_blocks.") && has("text_encoders.clip_l."));
    assert!(ours.keys().any(|k| k.ends_with(".lora_up.weight")));
    assert!(ours.keys().any(|k| k.ends_with(".diff_b")));
}

#[test]
fn full_diff_without_bias_writes_whole_weight_differences() {
    let dir = tempfile::tempdir().unwrap();
    let m = models(dir.path());
    let files = run_json(
        dir.path(),
        &m,
        "api.json",
        &api(8, "full_diff", false),
        "out",
    );
    let (ours, _) = read(&files[0]);
    assert!(!ours.is_empty());
    assert!(
        ours.keys().all(|k| k.ends_with(".diff")),
        "{:?}",
        ours.keys().next()
    );
}

#[test]
fn bad_lora_save_inputs_are_refused_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let m = models(dir.path());
    let out = dir.path().join("out");
    for (w, needle) in [
        (api(0, "standard", true), "rank 0 is outside 1..=4096"),
        (api(5000, "standard", true), "rank 5000 is outside 1..=4096"),
        (
            api(4, "lowrank", true),
            "`\"lowrank\"` is not one of standard, full_diff",
        ),
        (
            {
                let mut w = api(4, "standard", true);
                w["5"]["inputs"]["bias_diff"] = json!("yes");
                w
            },
            "is not true or false",
        ),
        (
            {
                let mut w = api(4, "standard", true);
                let inputs = w["5"]["inputs"].as_object_mut().unwrap();
                inputs.remove("model_diff");
                inputs.remove("text_encoder_diff");
                w
            },
            "nothing to extract a LoRA from",
        ),
    ] {
        let f = dir.path().join("w.json");
        std::fs::write(&f, w.to_string()).unwrap();
        let r = run(
            dir.path(),
            &[
                "run",
                f.to_str().unwrap(),
                "--models-dir",
                m.to_str().unwrap(),
                "--output-dir",
                out.to_str().unwrap(),
            ],
        );
        assert_refused(&r, needle, &out);
        assert!(r.stderr.contains("LoraSave"), "{}", r.stderr);
    }
}
