//! `run` with the real binary: a ComfyUI workflow in the UI format and its API export give the
//! same files, computed as the formulas say; a workflow embedded in an output runs again; the
//! dry run writes nothing; bad workflows are refused with nothing written.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use checkpoint_save::synthetic::{self, SyntheticOptions};
use checkpoint_save::{save_to_path, Arch, Components, LayoutChoice, SaveOptions};
use common::cli::{assert_refused, files_under, run};
use safetensors::tensor::TensorView;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/workflows")
        .join(name)
}

/// A models folder with three tiny SD1.5 checkpoints (f32) and a LoRA for them.
fn models(dir: &Path) -> (PathBuf, Vec<Components>) {
    let m = dir.join("models");
    let mut built = Vec::new();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let o = SyntheticOptions::new(Arch::Sd15)
            .tiny()
            .with_seed(i as u64 + 1)
            .with_dtype(DType::F32);
        let c = synthetic::build(&o, &Device::Cpu).unwrap();
        let opts = SaveOptions {
            layout: LayoutChoice::Arch(Arch::Sd15),
            ..SaveOptions::default()
        };
        let p = m.join(format!("checkpoints/{name}.safetensors"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        save_to_path(&c, &p, &opts).unwrap();
        built.push(c);
    }
    let lora = synthetic::lora::lora(Arch::Sd15, &built[0], 2, 9).unwrap();
    let p = m.join("loras/detail.safetensors");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    save_to_path(&Components::new(lora), &p, &SaveOptions::plain()).unwrap();
    (m, built)
}

/// Every tensor of a file as f32 values, and its metadata.
fn read(path: &Path) -> (BTreeMap<String, Vec<f32>>, BTreeMap<String, String>) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, values(&v)))
        .collect();
    let meta = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    (tensors, meta)
}

fn values(v: &TensorView) -> Vec<f32> {
    let dtype = match v.dtype() {
        safetensors::Dtype::F32 => DType::F32,
        safetensors::Dtype::F16 => DType::F16,
        safetensors::Dtype::I64 => DType::I64,
        d => panic!("{d:?}"),
    };
    Tensor::from_raw_buffer(v.data(), dtype, v.shape(), &Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn run_workflow(
    dir: &Path,
    models: &Path,
    workflow: &Path,
    out: &str,
    extra: &[&str],
) -> Vec<PathBuf> {
    let mut args = vec![
        "run",
        workflow.to_str().unwrap(),
        "--models-dir",
        models.to_str().unwrap(),
        "--output-dir",
        out,
    ];
    args.extend_from_slice(extra);
    let r = run(dir, &args);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    r.stdout.lines().map(|l| dir.join(l)).collect()
}

fn vals(c: &Components, kind: checkpoint_save::ComponentKind, key: &str) -> Vec<f32> {
    c.candle(kind, key)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn a_ui_workflow_and_its_api_export_write_identical_files() {
    let dir = tempfile::tempdir().unwrap();
    let (m, inputs) = models(dir.path());
    let ui = run_workflow(dir.path(), &m, &fixture("merge_ui.json"), "ui", &[]);
    let api = run_workflow(dir.path(), &m, &fixture("merge_api.json"), "api", &[]);
    let rel = |v: &[PathBuf], root: &str| -> Vec<String> {
        v.iter()
            .map(|p| {
                p.strip_prefix(dir.path().join(root))
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect()
    };
    // ComfyUI's names, in the prompt's order (the VAE save comes first in it).
    assert_eq!(
        rel(&ui, "ui"),
        [
            "vae/ComfyUI_vae_00001_.safetensors",
            "checkpoints/merged_00001_.safetensors"
        ]
    );
    assert_eq!(rel(&api, "api"), rel(&ui, "ui"));
    for (u, a) in ui.iter().zip(&api) {
        let (tu, mu) = read(u);
        let (ta, ma) = read(a);
        assert_eq!(tu, ta, "{}", u.display());
        // The same prompt, and the workflow only where it was given.
        assert_eq!(mu["prompt"], ma["prompt"]);
        assert!(mu.contains_key("workflow") && !ma.contains_key("workflow"));
        let strip = |m: &BTreeMap<String, String>| {
            let mut m = m.clone();
            m.remove("workflow");
            m
        };
        assert_eq!(strip(&mu), ma);
        // Tensor bytes identical, not only values.
        let (bu, ba) = (std::fs::read(u).unwrap(), std::fs::read(a).unwrap());
        let data = |b: &[u8]| {
            let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
            b[8 + n..].to_vec()
        };
        assert_eq!(data(&bu), data(&ba));
    }
    // The model: A·0.6 + 0.4·B, then the LoRA, then the block merge with C.
    let (ckpt, meta) = read(&ui[1]);
    let kind = checkpoint_save::ComponentKind::Model;
    // A norm of the output block: not a LoRA target, and `out` (0.7) is its block ratio.
    let key_n = "out.0.weight";
    let (an, bn, cn) = (
        vals(&inputs[0], kind, key_n),
        vals(&inputs[1], kind, key_n),
        vals(&inputs[2], kind, key_n),
    );
    let want: Vec<f32> = an
        .iter()
        .zip(&bn)
        .zip(&cn)
        .map(|((a, b), c)| {
            let w = a * 0.6f32 + (1.0f64 - 0.6) as f32 * b;
            w * 0.7f32 + (1.0f64 - 0.7) as f32 * c
        })
        .collect();
    assert_eq!(ckpt[&format!("model.diffusion_model.{key_n}")], want);
    // The VAE is A's, the VAE save's B's.
    let (vae, vmeta) = read(&ui[0]);
    let v = "encoder.conv_in.weight";
    assert_eq!(
        vae[v],
        vals(&inputs[1], checkpoint_save::ComponentKind::Vae, v)
    );
    assert_eq!(
        ckpt[&format!("first_stage_model.{v}")],
        vals(&inputs[0], checkpoint_save::ComponentKind::Vae, v)
    );
    assert!(vmeta.contains_key("prompt"));
    let recipe: serde_json::Value = serde_json::from_str(&meta["checkpoint_save.recipe"]).unwrap();
    assert_eq!(recipe["nodes"]["5"]["class_type"], "LoraLoader");
    assert_eq!(recipe["inputs"]["3"]["name"], "c.safetensors");
}

#[test]
fn a_workflow_embedded_in_an_output_runs_again_and_the_dry_run_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _) = models(dir.path());
    let first = run_workflow(dir.path(), &m, &fixture("merge_ui.json"), "out", &["-q"]);
    // The checkpoint holds `prompt` and `workflow`: run it as the workflow.
    let dry = run(
        dir.path(),
        &[
            "run",
            first[1].to_str().unwrap(),
            "--models-dir",
            m.to_str().unwrap(),
            "--output-dir",
            "out",
            "--dry-run",
        ],
    );
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    for needle in [
        "workflow: API format",
        "inputs: 4",
        "node 8 (CheckpointSave)",
        "checkpoints/merged_00002_.safetensors",
        "vae/ComfyUI_vae_00002_.safetensors",
    ] {
        assert!(dry.stdout.contains(needle), "`{needle}` in {}", dry.stdout);
    }
    assert_eq!(files_under(&dir.path().join("out")).len(), 2);
    let again = run_workflow(dir.path(), &m, &first[1], "out", &["-q"]);
    assert!(again[1].ends_with("checkpoints/merged_00002_.safetensors"));
    assert_eq!(read(&again[1]).0, read(&first[1]).0);
}

#[test]
fn bad_workflows_are_refused_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _) = models(dir.path());
    let out = dir.path().join("out");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let api: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("merge_api.json")).unwrap()).unwrap();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = api.clone();
        f(&mut v);
        v.to_string()
    };
    let cases = [
        (write("a.json", "not json"), "not JSON".to_string()),
        (
            write(
                "b.json",
                &with(&|v| v["1"]["inputs"]["ckpt_name"] = "gone.safetensors".into()),
            ),
            format!(
                "checkpoints `gone.safetensors` not found; searched {}",
                m.join("checkpoints").display()
            ),
        ),
        (
            write("c.json", &with(&|v| v["4"]["inputs"]["ratio"] = 2.into())),
            "ratio 2 is bigger than ComfyUI's maximum of 1".to_string(),
        ),
        (
            write(
                "d.json",
                &with(&|v| v["8"]["inputs"]["clip"] = serde_json::json!(["7", 3])),
            ),
            "which has 1 output(s)".to_string(),
        ),
    ];
    for (p, needle) in &cases {
        let r = run(
            dir.path(),
            &[
                "run",
                p.to_str().unwrap(),
                "--models-dir",
                m.to_str().unwrap(),
                "--output-dir",
                out.to_str().unwrap(),
            ],
        );
        assert_refused(&r, needle, &out);
    }
    // Models of different architectures: an SDXL checkpoint as `b`.
    let x = synthetic::build(
        &SyntheticOptions::new(Arch::Sdxl).tiny().with_seed(3),
        &Device::Cpu,
    )
    .unwrap();
    let xp = m.join("checkpoints/x.safetensors");
    save_to_path(
        &x,
        &xp,
        &SaveOptions {
            layout: LayoutChoice::Arch(Arch::Sdxl),
            ..SaveOptions::default()
        },
    )
    .unwrap();
    let p = write(
        "e.json",
        &with(&|v| v["2"]["inputs"]["ckpt_name"] = "x.safetensors".into()),
    );
    let r = run(
        dir.path(),
        &[
            "run",
            p.to_str().unwrap(),
            "--models-dir",
            m.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert_refused(&r, "model1 is sd15", &out);
    assert!(r.stderr.contains("model2 is sdxl") && r.stderr.contains("x.safetensors"));
}

#[test]
fn merge_with_weights_is_the_normalized_comfyui_chain_over_any_number_of_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let (m, inputs) = models(dir.path());
    let ck = |n: &str| m.join(format!("checkpoints/{n}.safetensors"));
    let (a, b, c) = (ck("a"), ck("b"), ck("c"));
    let r = run(
        dir.path(),
        &[
            "merge",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            c.to_str().unwrap(),
            a.to_str().unwrap(),
            "--weights",
            "4,3,2,1",
            "--clip-weights",
            "1,1,0,0",
            "--output-dir",
            "out",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("weights (normalized) 0.4000,0.3000,0.2000,0.1000"),
        "{}",
        r.stderr
    );
    let (file, meta) = read(&dir.path().join(r.stdout.trim()));
    let kind = checkpoint_save::ComponentKind::Model;
    let key = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight";
    let v: Vec<Vec<f32>> = [0, 1, 2, 0]
        .iter()
        .map(|&i| vals(&inputs[i], kind, key))
        .collect();
    // ModelMergeSimple chain: ratios 4/7, 7/9, 9/10 (each keeps the sum so far).
    let ratios = [4.0 / 7.0, 7.0 / 9.0, 9.0 / 10.0f64];
    let mut want = v[0].clone();
    for (x, r) in v[1..].iter().zip(ratios) {
        for (w, y) in want.iter_mut().zip(x) {
            *w = *w * r as f32 + (1.0 - r) as f32 * y;
        }
    }
    assert_eq!(file[&format!("model.diffusion_model.{key}")], want);
    let clip = checkpoint_save::ComponentKind::Clip;
    let tk = "clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight";
    let (ca, cb) = (vals(&inputs[0], clip, tk), vals(&inputs[1], clip, tk));
    let want: Vec<f32> = ca
        .iter()
        .zip(&cb)
        .map(|(x, y)| x * 0.5f32 + 0.5f32 * y)
        .collect();
    // Weight 0 for C and A again: ratio 1, a patch that changes nothing.
    let te = "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight";
    assert_eq!(file[te], want);
    let recipe: serde_json::Value = serde_json::from_str(&meta["checkpoint_save.recipe"]).unwrap();
    assert_eq!(recipe["nodes"]["7"]["class_type"], "ModelMergeSimple");
    let bad = run(
        dir.path(),
        &[
            "merge",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--weights",
            "1,-1",
            "--output-dir",
            "out2",
        ],
    );
    assert_refused(&bad, "not a finite number ≥ 0", &dir.path().join("out2"));
    let four = run(
        dir.path(),
        &[
            "merge",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            c.to_str().unwrap(),
            a.to_str().unwrap(),
            "--ratio",
            "0.5",
            "--output-dir",
            "out2",
        ],
    );
    assert_refused(
        &four,
        "this operation takes 2 input(s)",
        &dir.path().join("out2"),
    );
}

#[test]
fn gguf_runs_write_each_denoiser_as_a_convert_of_the_plain_run_would() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (m, _) = models(d);
    let wf = fixture("merge_api.json");
    let plain = run_workflow(d, &m, &wf, "plain", &[]);
    let gguf = run_workflow(d, &m, &wf, "gguf", &["--gguf", "Q8_0"]);
    let rel: Vec<String> = gguf
        .iter()
        .map(|p| {
            p.strip_prefix(d.join("gguf"))
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(
        rel,
        [
            "vae/ComfyUI_vae_00001_.safetensors",
            "checkpoints/merged_00001_.gguf"
        ]
    );
    // The VAE save is untouched; the checkpoint's denoiser is what convert --gguf makes of the
    // plain run's checkpoint.
    assert_eq!(
        std::fs::read(&plain[0]).unwrap(),
        std::fs::read(&gguf[0]).unwrap()
    );
    let r = run(
        d,
        &[
            "convert",
            plain[1].to_str().unwrap(),
            "--gguf",
            "Q8_0",
            "--output-dir",
            "conv",
            "-q",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let converted = d.join(r.stdout.trim());
    assert_eq!(
        std::fs::read(&converted).unwrap(),
        std::fs::read(&gguf[1]).unwrap()
    );
}

/// A graph whose merge nodes each take the node before as both inputs has 2^n paths through n
/// nodes: each node's result is computed once per range, not once per path (24 levels would
/// be 16 M evaluations per value otherwise), and the values are ComfyUI's.
#[test]
fn a_node_used_twice_at_every_level_is_computed_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (models, built) = models(d);
    let mut nodes = serde_json::Map::new();
    let loader = |name: &str| serde_json::json!({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}});
    nodes.insert("1".into(), loader("a.safetensors"));
    nodes.insert("2".into(), loader("b.safetensors"));
    let merge = |a: &str, b: &str, ratio: f64| {
        serde_json::json!({"class_type": "ModelMergeSimple",
            "inputs": {"model1": [a, 0], "model2": [b, 0], "ratio": ratio}})
    };
    nodes.insert("10".into(), merge("1", "2", 0.25));
    let mut prev = "10".to_string();
    for i in 11..35 {
        nodes.insert(i.to_string(), merge(&prev, &prev, 0.5));
        prev = i.to_string();
    }
    nodes.insert(
        "9".into(),
        serde_json::json!({"class_type": "CheckpointSave", "inputs": {
            "model": [prev, 0], "clip": ["1", 1], "vae": ["1", 2], "filename_prefix": "deep"}}),
    );
    let wf = d.join("diamond.json");
    std::fs::write(&wf, serde_json::Value::Object(nodes).to_string()).unwrap();
    let out = run_workflow(d, &models, &wf, "out", &["-q"]);
    let (written, _) = read(&out[0]);
    let kind = checkpoint_save::ComponentKind::Model;
    let key = "input_blocks.0.0.weight";
    // `x·0.5 + 0.5·x` is `x` exactly, so every level keeps node 10's `a·0.25 + 0.75·b`.
    let expected: Vec<f32> = vals(&built[0], kind, key)
        .iter()
        .zip(vals(&built[1], kind, key))
        .map(|(a, b)| a * 0.25 + 0.75 * b)
        .collect();
    assert_eq!(written[&format!("model.diffusion_model.{key}")], expected);
}
