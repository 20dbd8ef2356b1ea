//! `save_tensors`: candle's `safetensors::save` / `VarMap::save` in one call, with the engine and
//! the publish guarantees.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use checkpoint_save::{save_tensors, save_to_path, Components, SaveOptions, TargetDtype};

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn a_varmap_is_written_under_its_own_names_and_candle_reads_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let init = candle_nn::init::Init::Randn {
        mean: 0.,
        stdev: 1.,
    };
    // Names an architecture detector would recognise must still be kept as they are.
    vb.get_with_hints((8, 4), "input_blocks.0.0.weight", init)
        .unwrap();
    vb.get_with_hints(8, "out.bias", init).unwrap();
    let path = dir.path().join("state.safetensors");

    let saved = save_tensors(&vm, &path).unwrap();
    assert_eq!(saved.path, path);
    assert_eq!(saved.tensors, 2);

    let back = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let data = vm.data().lock().unwrap();
    assert_eq!(back.len(), 2);
    for (name, var) in data.iter() {
        assert_eq!(values(&back[name]), values(var.as_tensor()), "{name}");
        assert_eq!(back[name].dtype(), DType::F32);
    }
    // Only the tensors: no prompt, no provenance, nothing else in the folder.
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&std::fs::read(&path).unwrap()).unwrap();
    assert!(
        meta.metadata().as_ref().is_none_or(|m| m.is_empty()),
        "{:?}",
        meta.metadata()
    );
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("state.safetensors")]);
}

#[test]
fn an_existing_file_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("taken.safetensors");
    std::fs::write(&path, b"someone else's file").unwrap();
    let mut map = HashMap::new();
    map.insert(
        "w".to_string(),
        Tensor::ones((2, 2), DType::F16, &Device::Cpu).unwrap(),
    );
    let err = save_tensors(&map, &path).unwrap_err();
    assert!(err.to_string().contains("taken.safetensors"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"someone else's file");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn plain_options_cast_without_renaming() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("half.safetensors");
    let t = Tensor::new(&[1.5f32, -2.25, 65504.0, 1e-3], &Device::Cpu).unwrap();
    let map = vec![("model.diffusion_model.x".to_string(), t.clone())];
    let mut opts = SaveOptions::plain();
    opts.dtypes = checkpoint_save::ComponentDtypes::all(TargetDtype::F16);
    save_to_path(&Components::new(map), &path, &opts).unwrap();
    let back = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let x = &back["model.diffusion_model.x"];
    assert_eq!(x.dtype(), DType::F16);
    assert_eq!(values(x), values(&t.to_dtype(DType::F16).unwrap()));
}
