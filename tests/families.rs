//! The model families through the public API and the real binary: the planned layout
//! (`--dry-run --json`) against the reference fixtures, ComfyUI's component files, every job on
//! every family at test size, `--arch generic`, and the refusals of the bad inputs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::Device;
use checkpoint_save::synthetic::{self, SyntheticOptions};
use checkpoint_save::{
    dry_run, save_to_path, Arch, ComponentKind, Components, LayoutChoice, SaveOptions,
};
use common::cli::{assert_refused, files_under, ok_path, run};
use common::fixture;
use serde_json::Value;

/// The reference fixtures of the later families: name, architecture, the variant it is.
const LATER: [(&str, Arch, &str); 6] = [
    ("wan21_t2v_1_3b", Arch::Wan21, "wan21-1.3b"),
    ("wan22_ti2v_5b", Arch::Wan22, "wan22-5b"),
    ("qwen_image", Arch::QwenImage, "qwen-image"),
    ("hidream_i1_full", Arch::HiDream, "hidream-i1"),
    ("chroma", Arch::Chroma, "chroma"),
    ("lumina2", Arch::Lumina2, "lumina2"),
];

fn s(dir: &Path) -> &str {
    dir.to_str().unwrap()
}

/// Metadata without this tool's provenance keys.
fn reference_part(meta: &Value) -> BTreeMap<String, String> {
    let m: BTreeMap<String, String> = serde_json::from_value(meta.clone()).unwrap();
    m.into_iter()
        .filter(|(k, _)| !k.starts_with("checkpoint_save."))
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    serde_json::from_value(v.clone()).unwrap()
}

/// `save --synthetic V --max-dim 2 --dry-run --json`: the planned file is the reference's —
/// every key in the reference's file order with its dtype, the same metadata and file name —
/// the family and variant are told with their evidence, and nothing is written.
#[test]
fn dry_run_json_plans_the_reference_file() {
    for (name, arch, variant) in LATER {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let args = [
            "save",
            "--synthetic",
            variant,
            "--max-dim",
            "2",
            "--dry-run",
            "--json",
            "--output-dir",
            s(&out),
        ];
        let r = run(dir.path(), &args);
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        assert!(!out.exists(), "{name}: a dry run creates nothing");
        let plan: Value = serde_json::from_str(&r.stdout).unwrap();
        let want = fixture(name);
        let keys: Vec<String> = plan["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["key"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(keys, strings(&want["file_order"]), "{name}: file order");
        let dtypes: BTreeMap<&str, &str> = want["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["key"].as_str().unwrap(), t["dtype"].as_str().unwrap()))
            .collect();
        for t in plan["tensors"].as_array().unwrap() {
            assert_eq!(
                t["dtype"].as_str().unwrap(),
                dtypes[t["key"].as_str().unwrap()],
                "{name}"
            );
        }
        assert_eq!(
            reference_part(&plan["metadata"]),
            serde_json::from_value::<BTreeMap<String, String>>(want["metadata"].clone()).unwrap(),
            "{name}"
        );
        assert_eq!(
            PathBuf::from(plan["path"].as_str().unwrap()),
            out.join(want["saved_filename"].as_str().unwrap()),
            "{name}"
        );
        assert_eq!(plan["layout"], arch.name(), "{name}");
        assert_eq!(plan["family"]["variant"], variant, "{name}");
        assert_eq!(plan["family"]["test_size"], false, "{name}");
        assert_eq!(plan["prediction"], "flow", "{name}");
        assert_eq!(
            plan["bytes_to_read"], 0,
            "{name}: a synthetic model reads nothing"
        );
        assert!(!plan["family"]["evidence"].as_array().unwrap().is_empty());
    }
}

/// The library's `dry_run` of the full-size variant's header matches the saved bytes of the
/// capped model's real save: the plan and the write agree.
#[test]
fn dry_run_agrees_with_the_save() {
    let dir = tempfile::tempdir().unwrap();
    for arch in Arch::ALL {
        let opts = SyntheticOptions::new(arch).tiny();
        let c = synthetic::build(&opts, &Device::Cpu).unwrap();
        let mut so = SaveOptions {
            output_dir: dir.path().join(arch.name()),
            ..SaveOptions::default()
        };
        so.metadata.provenance = false;
        let plan = dry_run(&c, &so).unwrap();
        let saved = checkpoint_save::save(&c, &so).unwrap();
        assert_eq!(plan.path, saved.path, "{arch}");
        assert_eq!(plan.bytes_to_write, saved.bytes, "{arch}");
        assert_eq!(plan.tensors.len(), saved.tensors, "{arch}");
        assert_eq!(plan.layout, arch.name());
        let f = plan.family.unwrap();
        assert!(f.test_size, "{arch}: {:?}", f.variant);
    }
}

/// `split --to nodes` writes what ComfyUI's ModelSave, CLIPSave and VAESave write for the
/// reference components (paths, tensor counts, metadata, names), and `save` of those files
/// gives the checkpoint back byte for byte.
#[test]
fn node_files_are_comfyuis_and_read_back() {
    for (name, _, variant) in LATER {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let ckpt = ok_path(
            dir.path(),
            &[
                "save",
                "--synthetic",
                variant,
                "--max-dim",
                "2",
                "-q",
                "--output-dir",
                s(&out),
            ],
        );
        let parts = dir.path().join("parts");
        let r = run(
            dir.path(),
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
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        let want = &fixture(&format!("{name}.components"))["save_nodes"];
        let mut expected = BTreeSet::new();
        for node in ["ModelSave", "CLIPSave", "VAESave"] {
            for f in want[node].as_array().unwrap() {
                let rel = f["path"].as_str().unwrap();
                expected.insert(rel.to_string());
                let bytes = std::fs::read(parts.join(rel)).unwrap();
                let (header, _) = common::header_and_data(&bytes);
                let keys: BTreeSet<&str> = header
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(String::as_str)
                    .filter(|k| *k != "__metadata__")
                    .collect();
                assert_eq!(
                    keys.len() as u64,
                    f["tensors"].as_u64().unwrap(),
                    "{name}: {rel}"
                );
                for k in f["keys_sample"].as_array().unwrap() {
                    assert!(
                        keys.contains(k.as_str().unwrap()),
                        "{name}: {rel} lacks {k}"
                    );
                }
                assert_eq!(
                    reference_part(&header["__metadata__"]),
                    serde_json::from_value::<BTreeMap<String, String>>(f["metadata"].clone())
                        .unwrap(),
                    "{name}: {rel}"
                );
            }
        }
        let got: BTreeSet<String> = files_under(&parts)
            .iter()
            .map(|p| {
                p.strip_prefix(&parts)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(got, expected, "{name}");
        // ComfyUI's loaders take these files; so does `save`, in the loader's order.
        let mut args = vec!["save".to_string(), "-q".into()];
        for (flag, node) in [
            ("--model", "ModelSave"),
            ("--clip", "CLIPSave"),
            ("--vae", "VAESave"),
        ] {
            for f in want[node].as_array().unwrap() {
                args.push(flag.into());
                args.push(s(&parts.join(f["path"].as_str().unwrap())).to_string());
            }
        }
        args.extend([
            "--output-dir".into(),
            s(&dir.path().join("back")).to_string(),
        ]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let back = ok_path(dir.path(), &refs);
        common::same_tensors(
            &std::fs::read(&ckpt).unwrap(),
            &std::fs::read(&back).unwrap(),
            name,
        );
    }
}

/// Reads a float tensor of a file as f32 values.
fn floats(path: &Path, key: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(key).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{key}");
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn inspect_json(dir: &Path, path: &Path) -> Value {
    let r = run(dir, &["inspect", s(path), "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap()
}

/// Every family's test-sized model goes through every job: save, inspect, convert to bf16 with
/// `--check-finite`, a weighted-sum merge (values checked), both splits and back.
#[test]
fn every_family_goes_through_every_job() {
    for arch in Arch::ALL {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let out = |n: &str| d.join(n);
        let a = ok_path(
            d,
            &[
                "save",
                "--synthetic",
                arch.name(),
                "--tiny",
                "-q",
                "--output-dir",
                s(&out("a")),
            ],
        );
        let b = ok_path(
            d,
            &[
                "save",
                "--synthetic",
                arch.name(),
                "--tiny",
                "--seed",
                "1",
                "-q",
                "--output-dir",
                s(&out("b")),
            ],
        );
        let info = inspect_json(d, &a);
        assert_eq!(info["arch"], arch.name(), "{arch}");
        assert_eq!(
            info["prediction"]["type"],
            arch.default_prediction().to_string()
        );

        let c = ok_path(
            d,
            &[
                "convert",
                s(&a),
                "--dtype",
                "bf16",
                "--check-finite",
                "-q",
                "--output-dir",
                s(&out("c")),
            ],
        );
        let info = inspect_json(d, &c);
        assert_eq!(info["arch"], arch.name(), "{arch}");
        for part in info["parts"].as_array().unwrap() {
            let dtypes: BTreeSet<&String> = part["dtypes"].as_object().unwrap().keys().collect();
            assert!(
                dtypes
                    .iter()
                    .all(|d| ["BF16", "I64", "U8"].contains(&d.as_str())),
                "{arch}: {dtypes:?}"
            );
        }

        let m = ok_path(
            d,
            &[
                "merge",
                s(&a),
                s(&b),
                "--ratio",
                "0.25",
                "-q",
                "--output-dir",
                s(&out("m")),
            ],
        );
        // ModelMergeSimple: A·r + B·(1 − r), in f32, rounded once (F32 stays exact).
        let prefix = arch.family().prefixes.model;
        let bytes = std::fs::read(&a).unwrap();
        let (header, _) = common::header_and_data(&bytes);
        let key = header
            .as_object()
            .unwrap()
            .iter()
            .find(|(k, v)| {
                k.starts_with(prefix)
                    && v["dtype"] == "F32"
                    && v["shape"].as_array().unwrap().len() == 2
            })
            .map(|(k, _)| k.clone())
            .unwrap();
        let (va, vb, vm) = (floats(&a, &key), floats(&b, &key), floats(&m, &key));
        for i in 0..va.len() {
            assert_eq!(vm[i], va[i] * 0.25 + vb[i] * 0.75, "{arch}: {key}[{i}]");
        }

        // A rank-4 LoRA on every attention and MLP weight, in kohya's `lora_unet_` names.
        let lora = out("lora.safetensors");
        let tensors = synthetic::lora::lora(arch, &tiny(arch.name()), 4, 7).unwrap();
        checkpoint_save::save_tensors(&tensors, &lora).unwrap();
        let r = run(
            d,
            &[
                "merge",
                s(&a),
                "--lora",
                &format!("{}:0.5", s(&lora)),
                "--output-dir",
                s(&out("l")),
            ],
        );
        assert_eq!(r.code, 0, "{arch}: {}", r.stderr);
        let modules = tensors.keys().filter(|k| k.ends_with(".alpha")).count();
        assert!(
            r.stderr.contains(&format!("{modules} module(s) baked")) && modules > 4,
            "{arch}: {}",
            r.stderr
        );
        // A block merge over ComfyUI's node for the family (a bare list, one ratio per
        // input), or over two prefixes where ComfyUI has no node.
        let spec = match arch.family().block_prefixes.first() {
            Some(node) => vec!["0.5"; node.len()].join(","),
            None => "none.=0.5".to_string(),
        };
        let r = run(
            d,
            &[
                "merge",
                s(&a),
                s(&b),
                "--block-ratios",
                &spec,
                "--output-dir",
                s(&out("bm")),
            ],
        );
        assert_eq!(r.code, 0, "{arch}: {}", r.stderr);
        let bm = d.join(r.stdout.trim());
        let vm = floats(&bm, &key);
        for i in 0..va.len() {
            assert_eq!(
                vm[i],
                va[i] * 0.5 + vb[i] * 0.5,
                "{arch}: {key}[{i}] by blocks"
            );
        }

        for to in ["comfyui", "nodes"] {
            let parts = out(&format!("parts-{to}"));
            let r = run(
                d,
                &["split", s(&a), "--output-dir", s(&parts), "--to", to, "-q"],
            );
            assert_eq!(r.code, 0, "{arch} {to}: {}", r.stderr);
            let files = files_under(&parts);
            let pick = |dir: &str, start: &str| -> Vec<String> {
                files
                    .iter()
                    .filter(|f| f.parent().unwrap().ends_with(dir) || dir.is_empty())
                    .filter(|f| f.file_name().unwrap().to_str().unwrap().starts_with(start))
                    .map(|f| s(f).to_string())
                    .collect()
            };
            let (model, clip, vae) = match to {
                "comfyui" => (pick("", "model"), pick("", "clip"), pick("", "vae")),
                _ => (
                    pick("diffusion_models", ""),
                    pick("clip", ""),
                    pick("vae", ""),
                ),
            };
            let mut args = vec![
                "save".to_string(),
                "-q".into(),
                "--model".into(),
                model[0].clone(),
            ];
            // The family's encoder order (test-sized CLIPs of one kind are told by their
            // place), the file of the rest last.
            let encoders = arch.family().encoders();
            let mut clip = clip.clone();
            clip.sort_by_key(|c| {
                encoders
                    .iter()
                    .position(|e| {
                        c.contains(&format!("_{e}_")) || c.ends_with(&format!("{e}.safetensors"))
                    })
                    .unwrap_or(encoders.len())
            });
            for c in clip {
                args.extend(["--clip".to_string(), c]);
            }
            args.extend(["--vae".to_string(), vae[0].clone()]);
            args.extend([
                "--output-dir".into(),
                s(&out(&format!("back-{to}"))).to_string(),
            ]);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let back = ok_path(d, &refs);
            common::same_tensors(
                &std::fs::read(&a).unwrap(),
                &std::fs::read(&back).unwrap(),
                &format!("{arch} {to}"),
            );
        }
    }
}

/// Every known configuration of every family has a test-sized synthetic model that saves,
/// detects as its family and is placed as its variant.
#[test]
fn every_variant_saves_and_detects() {
    for f in checkpoint_save::family::Family::all() {
        for v in f.variants {
            let dir = tempfile::tempdir().unwrap();
            let p = ok_path(
                dir.path(),
                &[
                    "save",
                    "--synthetic",
                    v.name,
                    "--tiny",
                    "-q",
                    "--output-dir",
                    s(&dir.path().join("o")),
                ],
            );
            assert_eq!(inspect_json(dir.path(), &p)["arch"], f.name, "{}", v.name);
            let r = run(
                dir.path(),
                &[
                    "convert",
                    s(&p),
                    "--dry-run",
                    "--json",
                    "--output-dir",
                    s(&dir.path().join("c")),
                ],
            );
            assert_eq!(r.code, 0, "{}: {}", v.name, r.stderr);
            let plan: Value = serde_json::from_str(&r.stdout).unwrap();
            // Variants with another's keys and shapes (Kontext) are placed as that one.
            let placed = plan["family"]["variant"].as_str().unwrap();
            let placed = f.variants.iter().find(|p| p.name == placed).unwrap();
            assert!(
                placed.same_model_as(v),
                "{} placed as {}",
                v.name,
                placed.name
            );
            assert!(plan["bytes_to_read"].as_u64().unwrap() > 0);
        }
    }
}

/// Writes `components` as a generic-layout file (the prefixes of the later families).
fn write_generic(components: &Components, path: &Path) {
    let opts = SaveOptions {
        layout: LayoutChoice::Generic(Default::default()),
        ..SaveOptions::default()
    };
    save_to_path(components, path, &opts).unwrap();
}

fn tiny(name: &str) -> Components {
    let opts = SyntheticOptions::named(name).unwrap().tiny();
    synthetic::build(&opts, &Device::Cpu).unwrap()
}

#[test]
fn a_family_this_tool_does_not_know_is_refused_with_the_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny("wan21");
    let model = c.take(ComponentKind::Model).unwrap();
    let renamed = model
        .into_iter()
        .map(|(k, t)| (format!("foo.{k}"), t))
        .collect();
    c.set_inputs(ComponentKind::Model, renamed);
    let f = dir.path().join("unknown.safetensors");
    write_generic(&c, &f);
    let out = dir.path().join("out");
    for job in [
        vec!["convert", s(&f)],
        vec!["merge", s(&f), s(&f), "--ratio", "0.5"],
    ] {
        let mut args = job.clone();
        args.extend(["--output-dir", s(&out)]);
        let r = run(dir.path(), &args);
        assert_refused(&r, "`foo.blocks.0.cross_attn.k.bias`", &out);
        assert!(r.stderr.contains("--arch generic"), "{}", r.stderr);
        assert!(
            r.stderr.contains("`head.modulation` (wan21, wan22)"),
            "{}",
            r.stderr
        );
    }
    // With --arch generic it is saved under its prefixes, and no prediction is invented.
    let r = run(
        dir.path(),
        &[
            "convert",
            s(&f),
            "--arch",
            "generic",
            "--output-dir",
            s(&out),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("saved generic (unknown)"), "{}", r.stderr);
    // So is a merge: keys and shapes matched, no detection, and a LoRA in ComfyUI's generic
    // names bakes into it.
    let lora = dir.path().join("generic_lora.safetensors");
    let t = |shape: &[usize]| {
        candle_core::Tensor::ones(shape, candle_core::DType::F32, &Device::Cpu).unwrap()
    };
    let tensors: std::collections::HashMap<String, candle_core::Tensor> = [
        (
            "diffusion_model.foo.blocks.0.self_attn.q.lora_down.weight",
            t(&[2, 32]),
        ),
        (
            "diffusion_model.foo.blocks.0.self_attn.q.lora_up.weight",
            t(&[32, 2]),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    candle_core::safetensors::save(&tensors, &lora).unwrap();
    let r = run(
        dir.path(),
        &[
            "merge",
            s(&f),
            s(&f),
            "--ratio",
            "0.5",
            "--lora",
            s(&lora),
            "--arch",
            "generic",
            "--output-dir",
            s(&out),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("saved generic (unknown)"), "{}", r.stderr);
    assert!(r.stderr.contains("1 module(s) baked"), "{}", r.stderr);
    let merged = d_path(dir.path(), &r.stdout);
    let recipe = inspect_json(dir.path(), &merged)["metadata"]["checkpoint_save.recipe"].clone();
    assert!(
        recipe
            .as_str()
            .unwrap()
            .contains("\"architecture\":\"generic\""),
        "{recipe}"
    );
}

fn d_path(dir: &Path, stdout: &str) -> PathBuf {
    dir.join(stdout.trim())
}

#[test]
fn keys_of_two_families_in_one_file_name_both() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny("wan21");
    let mut model = c.take(ComponentKind::Model).unwrap();
    model.extend(tiny("qwen-image").take(ComponentKind::Model).unwrap());
    c.set_inputs(ComponentKind::Model, model);
    let f = dir.path().join("two.safetensors");
    write_generic(&c, &f);
    let out = dir.path().join("out");
    let r = run(dir.path(), &["convert", s(&f), "--output-dir", s(&out)]);
    assert_refused(
        &r,
        "the keys of two families: wan21 (`head.modulation`) and qwen-image (`txt_norm.weight`)",
        &out,
    );
}

#[test]
fn a_component_of_another_family_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let wan = ok_path(
        d,
        &[
            "save",
            "--synthetic",
            "wan21",
            "--tiny",
            "-q",
            "--output-dir",
            s(&d.join("w")),
        ],
    );
    let flux = ok_path(
        d,
        &[
            "save",
            "--synthetic",
            "flux",
            "--tiny",
            "-q",
            "--output-dir",
            s(&d.join("f")),
        ],
    );
    for (ckpt, to) in [(&wan, "wan"), (&flux, "flux")] {
        let r = run(d, &["split", s(ckpt), "--output-dir", s(&d.join(to)), "-q"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let out = d.join("out");
    let part = |m: &str, f: &str| s(&d.join(m).join(f)).to_string();
    let r = run(
        d,
        &[
            "save",
            "--model",
            &part("wan", "model.safetensors"),
            "--clip",
            &part("wan", "clip.safetensors"),
            "--vae",
            &part("flux", "vae.safetensors"),
            "--output-dir",
            s(&out),
        ],
    );
    assert_refused(&r, "the vae component is the SD3/Flux autoencoder", &out);
    assert!(
        r.stderr.contains("wan21 uses the Wan 2.1 video VAE"),
        "{}",
        r.stderr
    );
    let r = run(
        d,
        &[
            "save",
            "--model",
            &part("wan", "model.safetensors"),
            "--clip",
            &part("flux", "clip.safetensors"),
            "--vae",
            &part("wan", "vae.safetensors"),
            "--output-dir",
            s(&out),
        ],
    );
    assert_refused(&r, "needs text encoder `umt5xxl`", &out);
}

#[test]
fn a_merge_of_two_families_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let wan = ok_path(
        d,
        &[
            "save",
            "--synthetic",
            "wan21",
            "--tiny",
            "-q",
            "--output-dir",
            s(&d.join("w")),
        ],
    );
    let qwen = ok_path(
        d,
        &[
            "save",
            "--synthetic",
            "qwen-image",
            "--tiny",
            "-q",
            "--output-dir",
            s(&d.join("q")),
        ],
    );
    let out = d.join("out");
    let r = run(
        d,
        &[
            "merge",
            s(&wan),
            s(&qwen),
            "--ratio",
            "0.5",
            "--output-dir",
            s(&out),
        ],
    );
    assert_refused(&r, "A is wan21 and B is qwen-image", &out);
}

#[test]
fn an_unknown_wan_layer_count_is_refused_naming_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = SyntheticOptions::named("wan21-1.3b").unwrap();
    opts.max_dim = Some(2);
    let mut shapes = synthetic::synthetic_shapes(&opts).unwrap();
    let mut model = shapes.get(ComponentKind::Model).unwrap().clone();
    let block: Vec<(String, checkpoint_save::TensorInfo)> = model
        .iter()
        .filter_map(|(k, i)| Some((k.strip_prefix("blocks.0.")?.to_string(), i.clone())))
        .collect();
    for n in 30..35 {
        for (k, i) in &block {
            model.insert(format!("blocks.{n}.{k}"), i.clone());
        }
    }
    shapes.set(ComponentKind::Model, model);
    let c = synthetic::build_from_shapes(&shapes, 0, None, &Device::Cpu).unwrap();
    let f = dir.path().join("wan35.safetensors");
    write_generic(&c, &f);
    let out = dir.path().join("out");
    let r = run(dir.path(), &["convert", s(&f), "--output-dir", s(&out)]);
    assert_refused(&r, "num_layers 35", &out);
    assert!(r.stderr.contains("--arch wan21"), "{}", r.stderr);
    // The user's word places it.
    let r = run(
        dir.path(),
        &[
            "convert",
            s(&f),
            "--arch",
            "wan21",
            "-q",
            "--output-dir",
            s(&out),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn generic_merges_and_converts_write_no_invented_prediction() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = ok_path(
        d,
        &[
            "save",
            "--synthetic",
            "wan22",
            "--tiny",
            "-q",
            "--output-dir",
            s(&d.join("a")),
        ],
    );
    let b = ok_path(
        d,
        &[
            "save",
            "--synthetic",
            "wan22",
            "--tiny",
            "--seed",
            "3",
            "-q",
            "--output-dir",
            s(&d.join("b")),
        ],
    );
    let r = run(
        d,
        &[
            "merge",
            s(&a),
            s(&b),
            "--ratio",
            "0.5",
            "--arch",
            "generic",
            "--model-prefix",
            "net.",
            "--output-dir",
            s(&d.join("m")),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("saved generic (unknown)"), "{}", r.stderr);
    let m = d.join(r.stdout.trim());
    let info = inspect_json(d, &m);
    assert_eq!(info["prediction"]["type"], "unknown");
    let bytes = std::fs::read(&m).unwrap();
    let (header, _) = common::header_and_data(&bytes);
    assert!(header
        .as_object()
        .unwrap()
        .keys()
        .any(|k| k.starts_with("net.blocks.0.")));
    assert!(header["__metadata__"]
        .get("modelspec.predict_key")
        .is_none());
    // The plan says the same, before anything is written.
    let r = run(
        d,
        &[
            "convert",
            s(&a),
            "--arch",
            "generic",
            "--dry-run",
            "--json",
            "--output-dir",
            s(&d.join("c")),
        ],
    );
    let plan: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (plan["layout"].as_str(), plan["prediction"].as_str()),
        (Some("generic"), Some("unknown"))
    );
    assert_eq!(plan["family"]["name"], "wan22");
}

#[test]
fn check_finite_refuses_a_family_model_with_nan() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny("hunyuan-video-1.5");
    let mut model = c.take(ComponentKind::Model).unwrap();
    let (key, t) = model
        .iter()
        .find(|(k, _)| k.starts_with("double_blocks.0.img_attn.qkv.weight"))
        .map(|(k, t)| (k.clone(), t.clone()))
        .unwrap();
    let t = t.as_candle().unwrap();
    let nan = (t.ones_like().unwrap() * f64::NAN).unwrap();
    model.insert(key.clone(), nan.into());
    c.set_inputs(ComponentKind::Model, model);
    let f = dir.path().join("nan.safetensors");
    let opts = SaveOptions {
        layout: LayoutChoice::Arch(Arch::HunyuanVideo15),
        ..SaveOptions::default()
    };
    save_to_path(&c, &f, &opts).unwrap();
    let out = dir.path().join("out");
    let r = run(
        dir.path(),
        &["convert", s(&f), "--check-finite", "--output-dir", s(&out)],
    );
    assert_refused(&r, &format!("model.model.{key}"), &out);
}

/// `save --synthetic … --dry-run` plans from placeholders (no model in memory): its plan is the
/// file the real save writes — keys, shapes, dtypes, header and file size — quantized or not.
#[test]
fn a_synthetic_dry_run_plans_what_the_save_writes() {
    for extra in [
        &["sd15"][..],
        &["sdxl", "--quantize", "fp8"],
        &["ltx2", "--dtype", "bf16"],
        &["qwen-image-21"],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mut args = vec![
            "save",
            "-q",
            "--tiny",
            "--output-dir",
            s(&out),
            "--synthetic",
        ];
        args.extend_from_slice(extra);
        let saved = ok_path(dir.path(), &args);
        std::fs::remove_file(&saved).unwrap();
        args.extend_from_slice(&["--dry-run", "--json"]);
        let r = run(dir.path(), &args);
        assert_eq!(r.code, 0, "{extra:?}: {}", r.stderr);
        let plan: Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(PathBuf::from(plan["path"].as_str().unwrap()), saved);
        // The real save again, to compare its header with the plan.
        args.truncate(args.len() - 2);
        let saved = ok_path(dir.path(), &args);
        let bytes = std::fs::read(&saved).unwrap();
        assert_eq!(plan["bytes_to_write"], bytes.len() as u64, "{extra:?}");
        let (header, _) = common::header_and_data(&bytes);
        let planned: BTreeMap<String, (Value, Value)> = plan["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let key = t["key"].as_str().unwrap().to_string();
                (key, (t["shape"].clone(), t["dtype"].clone()))
            })
            .collect();
        let written: BTreeMap<String, (Value, Value)> = header
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .map(|(k, v)| (k.clone(), (v["shape"].clone(), v["dtype"].clone())))
            .collect();
        assert_eq!(planned, written, "{extra:?}");
    }
}
