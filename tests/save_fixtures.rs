//! Saves of every fixture architecture (shrunk shapes) checked against the reference layouts.

mod common;

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use checkpoint_save::synthetic;
use checkpoint_save::ComponentDtypes;
use checkpoint_save::ComponentKind;
use checkpoint_save::{save, LayoutChoice, SaveOptions};
use checkpoint_save::{Arch, Prediction};
use common::{bytes_of, fixture, FIXTURES};
use safetensors::SafeTensors;

#[test]
fn every_architecture_saves_the_reference_file() {
    for (name, arch, prediction) in FIXTURES {
        let dir = tempfile::tempdir().unwrap();
        let shapes = synthetic::shrink(&common::component_shapes(name), 6);
        let components = synthetic::build_from_shapes(&shapes, 7, None, &Device::Cpu).unwrap();
        let mut opts = SaveOptions {
            output_dir: dir.path().to_path_buf(),
            prediction: Some(prediction),
            ..Default::default()
        };
        opts.metadata.provenance = false;
        let saved = save(&components, &opts).unwrap();
        let want = fixture(name);
        assert_eq!(
            saved.path,
            dir.path().join(want["saved_filename"].as_str().unwrap()),
            "{name}"
        );
        assert_eq!(saved.arch, Some(arch));

        let data = std::fs::read(&saved.path).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&data).unwrap();
        let st = SafeTensors::deserialize(&data).unwrap();
        let order: Vec<String> = serde_json::from_value(want["file_order"].clone()).unwrap();
        let mut by_offset: Vec<_> = st.tensors();
        by_offset.sort_by_key(|(k, _)| meta.info(k).unwrap().data_offsets);
        let got_order: Vec<&str> = by_offset.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(got_order, order, "{name}: file order");
        let want_meta: BTreeMap<String, String> =
            serde_json::from_value(want["metadata"].clone()).unwrap();
        assert_eq!(
            meta.metadata()
                .clone()
                .unwrap()
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
            want_meta,
            "{name}"
        );

        for t in want["tensors"].as_array().unwrap() {
            let key = t["key"].as_str().unwrap();
            let view = st.tensor(key).unwrap();
            assert_eq!(
                view.dtype().to_string(),
                t["dtype"].as_str().unwrap(),
                "{key}"
            );
            let origin = &t["origin"];
            if origin.is_object() {
                let kind = common::component(origin["component"].as_str().unwrap());
                let src = components
                    .candle(kind, origin["key"].as_str().unwrap())
                    .unwrap();
                assert_eq!(view.shape(), src.dims(), "{key}");
                assert_eq!(view.data(), bytes_of(src).as_slice(), "{name}: {key}");
            } else if key.ends_with("position_ids") {
                let want: Vec<u8> = (0..77i64).flat_map(|v| v.to_le_bytes()).collect();
                assert_eq!(
                    (view.shape(), view.data()),
                    (&[1usize, 77][..], want.as_slice())
                );
            } else if key == "v_pred" {
                assert_eq!((view.shape(), view.data().len()), (&[0usize][..], 0));
            } else if key.ends_with(".text_projection") {
                let src_key = match arch {
                    Arch::Sd2 => "clip_h.transformer.text_projection.weight",
                    _ => "clip_g.transformer.text_projection.weight",
                };
                let src = components.candle(ComponentKind::Clip, src_key).unwrap();
                assert_eq!(
                    view.data(),
                    bytes_of(&src.t().unwrap().contiguous().unwrap()).as_slice(),
                    "{key}"
                );
            } else if key.contains(".attn.in_proj_") {
                let stem = key.rsplit_once(".attn.in_proj_").unwrap();
                let (enc, suffix) = (
                    if arch == Arch::Sd2 {
                        "clip_h"
                    } else {
                        "clip_g"
                    },
                    stem.1,
                );
                let layer = stem.0.rsplit('.').next().unwrap();
                let parts: Vec<Tensor> = ["q", "k", "v"]
                    .iter()
                    .map(|p| {
                        let k = format!("{enc}.transformer.text_model.encoder.layers.{layer}.self_attn.{p}_proj.{suffix}");
                        components.candle(ComponentKind::Clip, &k).unwrap().clone()
                    })
                    .collect();
                let fused = Tensor::cat(&parts, 0).unwrap();
                assert_eq!(view.data(), bytes_of(&fused).as_slice(), "{key}");
            } else {
                panic!("{name}: unexpected created tensor {key}");
            }
        }
    }
}

#[test]
fn same_bytes_as_safetensors_serialize() {
    let dir = tempfile::tempdir().unwrap();
    let components = synthetic::build(
        &synthetic::SyntheticOptions::new(Arch::Sdxl).with_max_dim(5),
        &Device::Cpu,
    )
    .unwrap();
    let mut opts = SaveOptions {
        output_dir: dir.path().to_path_buf(),
        layout: LayoutChoice::Generic(Default::default()),
        // pwrite keeps the reference's minimal header padding (direct I/O pads it to 4096).
        writer: checkpoint_save::EngineOptions {
            backend: checkpoint_save::Backend::Pwrite,
            ..Default::default()
        },
        dtypes: ComponentDtypes::all(checkpoint_save::TargetDtype::F16),
        prediction: Some(Prediction::V),
        ..Default::default()
    };
    opts.metadata.provenance = false;
    opts.metadata.disable = true;
    let saved = save(&components, &opts).unwrap();
    let ours = std::fs::read(&saved.path).unwrap();
    // Re-serialise what we wrote with the safetensors crate: identical bytes (the metadata is
    // empty, since safetensors orders metadata keys by hash).
    let st = SafeTensors::deserialize(&ours).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&ours).unwrap();
    let theirs = safetensors::serialize(st.tensors(), meta.metadata().clone()).unwrap();
    assert!(ours == theirs, "bytes differ from safetensors::serialize");
}

#[test]
fn every_backend_writes_the_bytes_safetensors_would() {
    use checkpoint_save::{Backend, EngineOptions, TargetDtype};
    for (name, arch, prediction) in FIXTURES {
        let shapes = synthetic::shrink(&common::component_shapes(name), 96);
        let components = synthetic::build_from_shapes(&shapes, 3, None, &Device::Cpu).unwrap();
        let save_with = |writer: EngineOptions, dtypes: ComponentDtypes| {
            let dir = tempfile::tempdir().unwrap();
            let mut opts = SaveOptions {
                output_dir: dir.path().to_path_buf(),
                layout: LayoutChoice::Arch(arch),
                prediction: Some(prediction),
                dtypes,
                writer,
                ..Default::default()
            };
            opts.metadata.disable = true;
            opts.metadata.provenance = false;
            let saved = save(&components, &opts).unwrap();
            std::fs::read(saved.path).unwrap()
        };
        let dtypes = [
            ComponentDtypes::default(),
            ComponentDtypes {
                model: TargetDtype::F16,
                clip: TargetDtype::BF16,
                vae: TargetDtype::F8E4M3,
                ..Default::default()
            },
        ];
        for d in dtypes {
            let reference = save_with(
                EngineOptions {
                    backend: Backend::Pwrite,
                    threads: 1,
                    ..Default::default()
                },
                d,
            );
            // An independent writer, the safetensors crate, given the tensors we wrote: the
            // same bytes (the metadata differs only in key order, which safetensors hashes).
            let st = SafeTensors::deserialize(&reference).unwrap();
            let (_, meta) = SafeTensors::read_metadata(&reference).unwrap();
            let theirs = safetensors::serialize(st.tensors(), meta.metadata().clone()).unwrap();
            let (ours_header, ours_data) = common::header_and_data(&reference);
            let (their_header, their_data) = common::header_and_data(&theirs);
            assert_eq!(ours_header, their_header, "{name} {d:?}: header");
            assert!(
                ours_data == their_data,
                "{name} {d:?}: data section differs"
            );
            assert_eq!(reference.len(), theirs.len(), "{name} {d:?}: padding");
            for backend in [Backend::Pwrite, Backend::Mmap, Backend::Direct] {
                for chunk_size in [4096, 1 << 16] {
                    let engine = EngineOptions {
                        chunk_size,
                        backend,
                        threads: 3,
                        ..Default::default()
                    };
                    let fast = save_with(engine, d);
                    common::same_tensors(
                        &reference,
                        &fast,
                        &format!("{name} {backend:?} {chunk_size} {d:?}"),
                    );
                }
            }
        }
    }
}
