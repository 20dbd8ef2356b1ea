//! The library refuses what it cannot do as asked, before anything is written: a tensor named
//! `__metadata__`, non-finite merge numbers, GGUF settings it would ignore, models handed to
//! `from_diffusers` under the wrong folder; and does what the graph API promises for ModelSave
//! into GGUF.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use checkpoint_save::merge::graph::{run, Graph, RunOptions, Source, Target};
use checkpoint_save::merge::{self, Operation, Recipe};
use checkpoint_save::synthetic::{build, SyntheticOptions};
use checkpoint_save::{
    from_diffusers, open_input, save_gguf, save_tensors, save_to_path, Arch, ComponentDtypes,
    Components, Error, Folder, GgufType, SaveOptions, SplitTarget, TargetDtype,
};

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            match p.is_dir() {
                true => out.extend(files(&p)),
                false => out.push(p.display().to_string()),
            }
        }
    }
    out
}

#[test]
fn a_tensor_named_metadata_is_refused_before_a_file_exists() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    let t = Tensor::ones(2, DType::F32, &Device::Cpu).unwrap();
    let e = save_tensors(vec![("__metadata__".to_string(), t)], &p).unwrap_err();
    assert!(e.to_string().contains("`__metadata__`"), "{e}");
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
}

#[test]
fn merges_refuse_numbers_that_are_not_finite() {
    let a = build(
        &SyntheticOptions::new(Arch::Sd15).tiny().with_seed(1),
        &Device::Cpu,
    )
    .unwrap();
    let b = build(
        &SyntheticOptions::new(Arch::Sd15).tiny().with_seed(2),
        &Device::Cpu,
    )
    .unwrap();
    for (operation, clip) in [
        (Operation::WeightedSum { ratio: f64::NAN }, None),
        (
            Operation::Subtract {
                multiplier: f64::INFINITY,
            },
            None,
        ),
        (Operation::WeightedSum { ratio: 0.5 }, Some(f64::NAN)),
    ] {
        let r = Recipe {
            operation,
            clip,
            ..Recipe::default()
        };
        let e = merge::merge(&[&a, &b], &[], &r).unwrap_err();
        assert!(
            matches!(e, Error::InvalidInput(_)) && e.to_string().contains("not a finite number"),
            "{e}"
        );
    }
}

#[test]
fn a_gguf_save_refuses_settings_it_would_ignore() {
    let dir = tempfile::tempdir().unwrap();
    let f = build(&SyntheticOptions::new(Arch::Flux).tiny(), &Device::Cpu).unwrap();
    let base = SaveOptions {
        output_dir: dir.path().to_path_buf(),
        ..SaveOptions::default()
    };
    let f8 = SaveOptions {
        dtypes: ComponentDtypes::all(TargetDtype::F8E4M3),
        ..base.clone()
    };
    let quantized = SaveOptions {
        quantize: Some(checkpoint_save::quant::Quantize::new(
            checkpoint_save::quant::Format::Int8Tensorwise,
        )),
        ..base.clone()
    };
    for opts in [f8, quantized] {
        let e = save_gguf(&f, GgufType::F16, &opts).unwrap_err();
        assert!(e.to_string().contains("GgufType"), "{e}");
    }
    assert!(files(dir.path()).is_empty());
    save_gguf(&f, GgufType::F16, &base).unwrap();
}

/// ModelSave (a denoiser alone, laid out under its family's prefix) into GGUF is a GGUF of that
/// family, as CheckpointSave's is.
#[test]
fn a_model_save_of_a_graph_writes_its_family_as_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let c = build(&SyntheticOptions::new(Arch::Flux).tiny(), &Device::Cpu).unwrap();
    let a = dir.path().join("a.safetensors");
    save_to_path(&c, &a, &SaveOptions::default()).unwrap();
    let out = dir.path().join("out");
    let mut g = Graph::new();
    let ck = g.checkpoint(Source::Path(a)).unwrap();
    g.save_model(ck.model, Target::Prefix("unet/x".into()))
        .unwrap();
    let mut o = RunOptions::new(&out);
    o.gguf = Some(GgufType::Q8_0.into());
    let report = run(&g, &o).unwrap();
    let path = &report.written[0].path;
    assert!(path.ends_with("unet/x_00001_.gguf"), "{}", path.display());
    let file = checkpoint_save::gguf::GgufFile::open(path).unwrap();
    assert_eq!(file.architecture(), Some("flux"));
    // The same file as CheckpointSave's denoiser into GGUF.
    let mut g = Graph::new();
    let ck = g
        .checkpoint(Source::Path(dir.path().join("a.safetensors")))
        .unwrap();
    g.save_checkpoint(ck.model, ck.clip, ck.vae, Target::Prefix("ck/x".into()))
        .unwrap();
    let checkpoint = run(&g, &o).unwrap();
    assert_eq!(
        std::fs::read(path).unwrap(),
        std::fs::read(&checkpoint.written[0].path).unwrap()
    );
}

/// A diffusers pipeline's models in candle (here read back from a pipeline folder), each given
/// with its folder: any map type; a model under the wrong folder, a folder twice or nothing at
/// all is refused.
#[test]
fn from_diffusers_checks_each_models_folder() {
    let dir = tempfile::tempdir().unwrap();
    let c = build(&SyntheticOptions::new(Arch::Sd15).tiny(), &Device::Cpu).unwrap();
    let ck = dir.path().join("ck.safetensors");
    save_to_path(&c, &ck, &SaveOptions::default()).unwrap();
    let input = open_input(&ck, None).unwrap();
    let pipe = dir.path().join("pipe");
    checkpoint_save::split(
        &input,
        &pipe,
        SplitTarget::Diffusers,
        &SaveOptions::default(),
    )
    .unwrap();
    let load = |folder: &str| -> HashMap<String, Tensor> {
        let f = std::fs::read_dir(pipe.join(folder))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .unwrap();
        candle_core::safetensors::load(&f, &Device::Cpu).unwrap()
    };
    let (unet, vae, te) = (load("unet"), load("vae"), load("text_encoder"));
    let ok = from_diffusers(
        Arch::Sd15,
        vec![
            (Folder::Unet, unet.clone()),
            (Folder::Vae, vae.clone()),
            (Folder::TextEncoder, te.clone()),
        ],
    )
    .unwrap();
    assert!(ok.get(checkpoint_save::ComponentKind::Model).is_some());
    let refused = |models: Vec<(Folder, HashMap<String, Tensor>)>, needle: &str| {
        let e = from_diffusers(Arch::Sd15, models).unwrap_err();
        assert!(e.to_string().contains(needle), "`{needle}` in {e}");
    };
    refused(vec![(Folder::Vae, unet.clone())], "give it as unet/");
    refused(
        vec![(Folder::Transformer, unet.clone())],
        "give it as unet/",
    );
    refused(vec![(Folder::Unet, vae.clone())], "give it as vae/");
    refused(
        vec![(Folder::Unet, unet.clone()), (Folder::Unet, unet.clone())],
        "unet/ is given twice",
    );
    refused(Vec::new(), "no models given");
    // A BTreeMap works as well as a HashMap.
    let sorted: BTreeMap<String, Tensor> = unet.into_iter().collect();
    let c: Components = from_diffusers(Arch::Sd15, vec![(Folder::Unet, sorted)]).unwrap();
    assert!(c.get(checkpoint_save::ComponentKind::Model).is_some());
}

/// An include pattern naming a tensor that cannot be quantized (a bias) is an error, not a no-op.
#[test]
fn a_quantize_include_pattern_naming_a_bias_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let w = Tensor::ones((64, 64), DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::ones(64, DType::F32, &Device::Cpu).unwrap();
    let c = Components::new(vec![
        ("layer.weight".to_string(), w),
        ("layer.bias".to_string(), b),
    ]);
    let q = checkpoint_save::quant::Quantize::new(checkpoint_save::quant::Format::Mxfp8)
        .including("bias")
        .unwrap();
    let opts = SaveOptions {
        quantize: Some(q),
        ..SaveOptions::plain()
    };
    let e = save_to_path(&c, &dir.path().join("q.safetensors"), &opts).unwrap_err();
    assert!(e.to_string().contains("narrow the pattern"), "{e}");
    assert!(files(dir.path()).is_empty());
}

#[test]
fn a_file_that_is_not_gguf_is_not_called_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.safetensors");
    let t = Tensor::ones(2, DType::F32, &Device::Cpu).unwrap();
    save_tensors(vec![("t".to_string(), t)], &p).unwrap();
    let e = checkpoint_save::gguf::GgufFile::open(&p).unwrap_err();
    assert!(e.to_string().contains("it is not a GGUF file"), "{e}");
}
