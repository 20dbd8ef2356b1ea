//! Graphs run into files: ComfyUI's single rounding, several saves in one run published all or
//! none, their names and metadata, and the dry run.

use std::path::Path;

use half::f16;
use serde_json::Value;

use super::tests::{tiny, tiny_f16};
use super::*;
use crate::merge::tests::{bits, get, values};
use crate::model::{ComponentKind, Components, Dtype, InputTensor};

const Q: &str = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight";

fn mem(name: &str, c: &Components) -> Source {
    Source::Memory {
        name: name.into(),
        components: c.clone(),
    }
}

/// A file's tensors: name, values as f32, dtype.
type FileTensors = Vec<(String, Vec<f32>, String)>;

/// A file's tensors (as f32) and metadata, read with the safetensors crate.
fn read(path: &Path) -> (FileTensors, std::collections::HashMap<String, String>) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let v: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            safetensors::Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            _ => Vec::new(),
        };
        out.push((name, v, format!("{:?}", view.dtype())));
    }
    (out, meta.metadata().clone().unwrap_or_default())
}

fn tensor(file: &[(String, Vec<f32>, String)], name: &str) -> Vec<f32> {
    file.iter()
        .find(|(n, _, _)| n == name)
        .unwrap_or_else(|| panic!("{name}"))
        .1
        .clone()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walk(dir) {
        out.push(e.strip_prefix(dir).unwrap().display().to_string());
    }
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_four_model_chain_in_f16_is_the_f32_expression_rounded_once() {
    let models: Vec<Components> = (1..=4).map(tiny_f16).collect();
    let mut g = Graph::new();
    let loaded: Vec<Checkpoint> = models
        .iter()
        .enumerate()
        .map(|(i, m)| g.checkpoint(mem(&format!("m{i}"), m)).unwrap())
        .collect();
    let ratios = [0.55, 0.7, 0.8];
    let mut chain = loaded[0].model;
    for (l, r) in loaded[1..].iter().zip(ratios) {
        chain = g.model_merge_simple(chain, l.model, r).unwrap();
    }
    g.save_model(chain, Target::Prefix("diffusion_models/ComfyUI".into()))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let report = run(&g, &RunOptions::new(dir.path())).unwrap();
    assert_eq!(report.written.len(), 1);
    let w = &report.written[0];
    assert!(w
        .path
        .ends_with("diffusion_models/ComfyUI_00001_.safetensors"));
    let (file, _) = read(&w.path);
    let key = format!("model.diffusion_model.{Q}");
    let got = tensor(&file, &key);
    let inputs: Vec<Vec<f32>> = models
        .iter()
        .map(|m| values(get(m, ComponentKind::Model, Q)))
        .collect();
    // f32 throughout, each operation rounded to f32, then one rounding to f16.
    let mut once = inputs[0].clone();
    // The same chain with every intermediate rounded to f16 (what several passes through f16
    // files would give).
    let mut each = inputs[0].clone();
    for (v, r) in inputs[1..].iter().zip(ratios) {
        let (s, sm) = ((1.0 - r) as f32, r as f32);
        for i in 0..once.len() {
            once[i] = once[i] * sm + s * v[i];
            each[i] = f16::from_f32(each[i] * sm + s * v[i]).to_f32();
        }
    }
    let once: Vec<f32> = once.iter().map(|x| f16::from_f32(*x).to_f32()).collect();
    assert_eq!(bits(&got), bits(&once));
    assert_ne!(
        bits(&once),
        bits(&each),
        "the test must tell a single rounding from rounded intermediates"
    );
    assert_eq!(file.iter().find(|f| f.0 == key).unwrap().2, "F16");
}

#[test]
fn several_saves_are_written_in_one_run_with_comfyuis_names_and_metadata() {
    let (a, b) = (tiny(Arch::Sdxl, 1), tiny(Arch::Sdxl, 2));
    let mut g = Graph::new();
    let (la, lb) = (
        g.checkpoint(mem("a.safetensors", &a)).unwrap(),
        g.checkpoint(mem("b.safetensors", &b)).unwrap(),
    );
    let m = g.model_merge_simple(la.model, lb.model, 0.5).unwrap();
    let c = g.clip_merge_simple(la.clip, lb.clip, 0.5).unwrap();
    let p = |s: &str| Target::Prefix(s.into());
    g.save_checkpoint(m, c, la.vae, p("checkpoints/ComfyUI"))
        .unwrap();
    g.save_checkpoint(m, c, lb.vae, p("checkpoints/ComfyUI"))
        .unwrap();
    g.save_model(m, p("diffusion_models/ComfyUI")).unwrap();
    g.save_clip(c, p("clip/ComfyUI")).unwrap();
    g.save_vae(lb.vae, p("vae/ComfyUI_vae")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = RunOptions::new(dir.path());
    opts.metadata.prompt = Some(serde_json::json!({"1": {"class_type": "X", "inputs": {}}}));
    let planned = plan(&g, &opts).unwrap();
    assert!(files_in(dir.path()).is_empty(), "a dry run creates nothing");
    let report = run(&g, &opts).unwrap();
    let names = files_in(dir.path());
    assert_eq!(
        names,
        vec![
            "checkpoints/ComfyUI_00001_.safetensors",
            "checkpoints/ComfyUI_00002_.safetensors",
            "clip/ComfyUI_clip_g_00001_.safetensors",
            "clip/ComfyUI_clip_l_00001_.safetensors",
            "diffusion_models/ComfyUI_00001_.safetensors",
            "vae/ComfyUI_vae_00001_.safetensors",
        ]
    );
    // The dry run named the same files, with the same sizes.
    let p: Vec<_> = planned.files.iter().map(|f| (&f.path, f.bytes)).collect();
    let w: Vec<_> = report.written.iter().map(|f| (&f.path, f.bytes)).collect();
    assert_eq!(p, w);
    let (ckpt, meta) = read(&report.written[0].path);
    assert_eq!(
        meta["modelspec.architecture"],
        "stable-diffusion-xl-v1-base"
    );
    assert_eq!(meta["modelspec.title"], "ComfyUI 1");
    assert_eq!(
        meta["prompt"],
        r#"{"1": {"class_type": "X", "inputs": {}}}"#
    );
    let recipe: Value = serde_json::from_str(&meta["checkpoint_save.recipe"]).unwrap();
    assert_eq!(recipe["nodes"]["3"]["class_type"], "ModelMergeSimple");
    assert_eq!(
        recipe["nodes"]["3"]["inputs"]["model2"],
        serde_json::json!(["2", 0])
    );
    assert_eq!(recipe["nodes"]["1"]["inputs"]["ckpt_name"], "a.safetensors");
    assert_eq!(recipe["output"], "5");
    // The second checkpoint has B's VAE, the first A's.
    let vae_key = "first_stage_model.encoder.conv_in.weight";
    let vae = |c: &Components| values(get(c, ComponentKind::Vae, "encoder.conv_in.weight"));
    assert_eq!(bits(&tensor(&ckpt, vae_key)), bits(&vae(&a)));
    let (ckpt2, meta2) = read(&report.written[1].path);
    assert_eq!(bits(&tensor(&ckpt2, vae_key)), bits(&vae(&b)));
    assert_eq!(meta2["modelspec.title"], "ComfyUI 2");
    // ModelSave: the denoiser alone under the checkpoint's keys, with modelspec.
    let (model, meta) = read(&report.written[2].path);
    assert!(model
        .iter()
        .all(|(n, ..)| n.starts_with("model.diffusion_model.")));
    assert_eq!(
        bits(&tensor(&model, "model.diffusion_model.out.2.weight")),
        bits(&tensor(&ckpt, "model.diffusion_model.out.2.weight"))
    );
    assert!(meta.contains_key("modelspec.architecture"));
    // CLIPSave: transformers names, `format: pt`, no modelspec.
    let (clip_l, meta) = read(&report.written[3].path);
    assert!(report.written[3]
        .path
        .ends_with("ComfyUI_clip_l_00001_.safetensors"));
    assert!(clip_l
        .iter()
        .any(|(n, ..)| n == "text_model.encoder.layers.0.self_attn.q_proj.weight"));
    assert_eq!(meta["format"], "pt");
    assert!(!meta.contains_key("modelspec.architecture"));
    let (vae_file, meta) = read(&report.written[5].path);
    assert_eq!(
        bits(&tensor(&vae_file, "encoder.conv_in.weight")),
        bits(&vae(&b))
    );
    assert!(meta.contains_key("prompt") && !meta.contains_key("format"));
}

#[test]
fn a_failing_save_leaves_no_file_of_any_save() {
    let a = tiny(Arch::Sd15, 1);
    // A NaN in the VAE only: the model saves fine, the VAE save is refused with check_finite.
    let mut bad = a.clone();
    let mut vae = bad.get(ComponentKind::Vae).unwrap().clone();
    let t = vae.get_mut("encoder.conv_in.weight").unwrap();
    let c = t.as_candle().unwrap();
    let nan = (c.ones_like().unwrap() * f64::NAN).unwrap();
    *t = InputTensor::Candle(nan);
    bad.set_inputs(ComponentKind::Vae, vae);
    let mut g = Graph::new();
    let l = g.checkpoint(mem("a", &bad)).unwrap();
    g.save_model(l.model, Target::Prefix("diffusion_models/ComfyUI".into()))
        .unwrap();
    g.save_vae(l.vae, Target::Prefix("vae/ComfyUI_vae".into()))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = RunOptions::new(dir.path());
    opts.check_finite = true;
    let e = run(&g, &opts).unwrap_err();
    assert!(matches!(e, crate::Error::NonFinite { .. }), "{e}");
    assert_eq!(files_in(dir.path()), Vec::<String>::new());
    // Without the check both are written.
    opts.check_finite = false;
    let r = run(&g, &opts).unwrap();
    assert_eq!(r.written.len(), 2);
    assert_eq!(r.written[1].non_finite[0].0, "encoder.conv_in.weight");
}

#[test]
fn two_saves_of_one_exact_path_are_refused_before_anything_is_written() {
    let a = tiny(Arch::Sd15, 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.safetensors");
    let mut g = Graph::new();
    let l = g.checkpoint(mem("a", &a)).unwrap();
    g.save_model(l.model, Target::File(path.clone())).unwrap();
    g.save_vae(l.vae, Target::File(dir.path().join("x/../out.safetensors")))
        .unwrap();
    let e = run(&g, &RunOptions::new(dir.path()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("node 2 (ModelSave) and node 3 (VAESave) both write"),
        "{e}"
    );
    assert!(files_in(dir.path()).is_empty());
}

#[test]
fn keep_writes_a_merged_tensor_in_model1s_dtype() {
    let (a, b) = (tiny_f16(1), tiny(Arch::Sd15, 2));
    let mut g = Graph::new();
    let (la, lb) = (
        g.checkpoint(mem("a", &a)).unwrap(),
        g.checkpoint(mem("b", &b)).unwrap(),
    );
    let m = g.model_merge_simple(la.model, lb.model, 0.5).unwrap();
    g.save_model(m, Target::Prefix("m".into())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let r = run(&g, &RunOptions::new(dir.path())).unwrap();
    let (file, _) = read(&r.written[0].path);
    let q = file
        .iter()
        .find(|f| f.0 == format!("model.diffusion_model.{Q}"))
        .unwrap();
    assert_eq!(q.2, "F16");
    assert_eq!(
        get(&a, ComponentKind::Model, Q).info().dtype,
        Dtype::F16,
        "A is f16, B f32"
    );
}

#[test]
fn an_input_used_twice_is_one_source_read_once_per_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    let mut models = Vec::new();
    for seed in [1, 2] {
        let c = tiny(Arch::Sd15, seed);
        let p = dir.path().join(format!("m{seed}.safetensors"));
        let opts = crate::SaveOptions {
            layout: crate::LayoutChoice::Arch(Arch::Sd15),
            ..crate::SaveOptions::default()
        };
        crate::save_to_path(&c, &p, &opts).unwrap();
        paths.push(p);
        models.push(c);
    }
    let mut g = Graph::new();
    // Two loaders of one file, as a workflow may have them.
    let a1 = g.checkpoint(Source::Path(paths[0].clone())).unwrap();
    let a2 = g.checkpoint(Source::Path(paths[0].clone())).unwrap();
    let b = g.checkpoint(Source::Path(paths[1].clone())).unwrap();
    let ab = g.model_merge_simple(a2.model, b.model, 0.3).unwrap();
    let m = g.model_merge_simple(a1.model, ab, 0.6).unwrap();
    g.save_model(m, Target::Prefix("m".into())).unwrap();
    let c = compile(&g).unwrap();
    let out = &c.saves[0].files[0].components;
    let InputTensor::Merged(merged) = get(out, ComponentKind::Model, Q) else {
        panic!("merged")
    };
    // A is the base and the nested list's base: one source, kept while a block is computed.
    assert_eq!(merged.shared().sources.len(), 1);
    let (va, vb) = (
        values(get(&models[0], ComponentKind::Model, Q)),
        values(get(&models[1], ComponentKind::Model, Q)),
    );
    let want: Vec<f32> = va
        .iter()
        .zip(&vb)
        .map(|(a, b)| {
            let inner = a * 0.3f32 + (1.0f64 - 0.3) as f32 * b;
            a * 0.6f32 + (1.0f64 - 0.6) as f32 * inner
        })
        .collect();
    assert_eq!(
        bits(&values(get(out, ComponentKind::Model, Q))),
        bits(&want)
    );
    let r = run(&g, &RunOptions::new(dir.path().join("out"))).unwrap();
    let (file, _) = read(&r.written[0].path);
    assert_eq!(
        bits(&tensor(&file, &format!("model.diffusion_model.{Q}"))),
        bits(&want)
    );
}
