use serde_json::Value;
use std::collections::BTreeSet;

use super::*;
use crate::testutil::{self, FIXTURES};

#[test]
fn every_fixture_layout_matches_the_reference() {
    for (name, arch, prediction) in FIXTURES {
        let shapes = testutil::component_shapes(name);
        let got = layout(&LayoutKind::Arch(arch), &shapes, prediction).unwrap();
        let want = testutil::expected(name);
        let want_tensors = want["tensors"].as_array().unwrap();
        let want_keys: BTreeSet<&str> = want_tensors
            .iter()
            .map(|t| t["key"].as_str().unwrap())
            .collect();
        let got_keys: BTreeSet<&str> = got.entries.iter().map(|e| e.key.as_str()).collect();
        let missing: Vec<_> = want_keys.difference(&got_keys).take(5).collect();
        let extra: Vec<_> = got_keys.difference(&want_keys).take(5).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{name}: missing {missing:?}, extra {extra:?}"
        );
        assert_eq!(got.entries.len(), want_tensors.len(), "{name}");
        for t in want_tensors {
            let (key, info) = testutil::info(t);
            let e = got.get(&key).unwrap();
            assert_eq!(
                (&e.shape, e.dtype),
                (&info.shape, info.dtype),
                "{name}: {key}"
            );
            match (&t["origin"], &e.source) {
                (
                    Value::Object(o),
                    Source::Copy {
                        component,
                        key: src,
                    },
                ) => {
                    assert_eq!(
                        *component,
                        testutil::component(o["component"].as_str().unwrap()),
                        "{key}"
                    );
                    assert_eq!(src, o["key"].as_str().unwrap(), "{key}");
                }
                (Value::Null, Source::FuseQkv { keys, .. }) => {
                    let w = if key.ends_with("in_proj_weight") {
                        "weight"
                    } else {
                        "bias"
                    };
                    for (k, p) in keys.iter().zip(["q_proj", "k_proj", "v_proj"]) {
                        assert!(k.ends_with(&format!("self_attn.{p}.{w}")), "{key} from {k}");
                    }
                }
                (Value::Null, Source::Transpose { key: src, .. }) => {
                    assert!(key.ends_with(".text_projection"), "{key}");
                    assert!(src.ends_with("transformer.text_projection.weight"), "{src}");
                }
                (Value::Null, Source::PositionIds { len: 77 }) => {
                    assert!(key.ends_with("position_ids"))
                }
                (Value::Null, Source::EmptyMarker) => assert!(key == "v_pred" || key == "ztsnr"),
                (o, s) => panic!("{name}: {key}: origin {o} but source {s:?}"),
            }
        }
    }
}

#[test]
fn detection_picks_every_fixture_architecture() {
    for (name, arch, _) in FIXTURES {
        let shapes = testutil::component_shapes(name);
        let model = shapes.get(ComponentKind::Model).unwrap();
        assert_eq!(detect::detect_model(model).unwrap(), arch, "{name}");
        let tiny = crate::synthetic::shrink(&shapes, 4);
        assert_eq!(
            detect::detect_model(tiny.get(ComponentKind::Model).unwrap()).unwrap(),
            arch,
            "{name} shrunk"
        );
    }
    let mut schnell = crate::synthetic::shapes(Arch::FluxSchnell);
    assert_eq!(
        detect::detect_model(schnell.get(ComponentKind::Model).unwrap()).unwrap(),
        Arch::FluxSchnell
    );
    schnell.set(ComponentKind::Model, BTreeMap::new());
    let err = detect::detect_model(schnell.get(ComponentKind::Model).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sd15, sd2, sdxl") && err.contains("input_blocks.0.0.weight"),
        "{err}"
    );
}

#[test]
fn markers_follow_prediction() {
    let shapes = crate::synthetic::shrink(&crate::synthetic::shapes(Arch::Sdxl), 2);
    let keys = |p| {
        layout(&LayoutKind::Arch(Arch::Sdxl), &shapes, p)
            .unwrap()
            .entries
            .into_iter()
            .filter(|e| e.source.component().is_none() && !e.key.ends_with("position_ids"))
            .map(|e| (e.key, e.source, e.shape))
            .collect::<Vec<_>>()
    };
    assert!(keys(Prediction::Eps).is_empty());
    assert_eq!(
        keys(Prediction::V),
        vec![("v_pred".into(), Source::EmptyMarker, vec![0])]
    );
    assert_eq!(keys(Prediction::VZsnr).len(), 2);
    let edm = keys(Prediction::EdmV {
        sigma_max: 80.0,
        sigma_min: 0.002,
    });
    assert_eq!(
        edm[0],
        (
            "edm_vpred.sigma_max".into(),
            Source::ScalarF32(80.0),
            vec![]
        )
    );
    assert_eq!(edm[1].0, "edm_vpred.sigma_min");
    assert!(matches!(edm[1].1, Source::ScalarF32(v) if (v - 0.002).abs() < 1e-9));
}

#[test]
fn missing_parts_are_named() {
    let mut shapes = crate::synthetic::shrink(&crate::synthetic::shapes(Arch::Sdxl), 2);
    let clip = shapes.get(ComponentKind::Clip).unwrap().clone();
    let only_l = clip
        .clone()
        .into_iter()
        .filter(|(k, _)| k.starts_with("clip_l"))
        .collect();
    shapes.set(ComponentKind::Clip, only_l);
    let err = layout(&LayoutKind::Arch(Arch::Sdxl), &shapes, Prediction::Eps).unwrap_err();
    assert!(err.to_string().contains("`clip_g`"), "{err}");

    let mut no_vae = ComponentShapes::default();
    no_vae.set(
        ComponentKind::Model,
        shapes.get(ComponentKind::Model).unwrap().clone(),
    );
    no_vae.set(ComponentKind::Clip, clip);
    let err = layout(&LayoutKind::Arch(Arch::Sdxl), &no_vae, Prediction::Eps).unwrap_err();
    assert!(
        matches!(
            err,
            Error::MissingComponent {
                component: "vae",
                ..
            }
        ),
        "{err}"
    );
    // The generic layout saves whatever is there.
    assert!(layout(
        &LayoutKind::Generic(GenericPrefixes::default()),
        &no_vae,
        Prediction::Eps
    )
    .is_ok());
}

#[test]
fn broken_qkv_is_refused() {
    let base = crate::synthetic::shrink(&crate::synthetic::shapes(Arch::Sd2), 4);
    let k = "clip_h.transformer.text_model.encoder.layers.3.self_attn.k_proj.weight";
    let mut clip = base.get(ComponentKind::Clip).unwrap().clone();
    clip.remove(k);
    let mut shapes = base.clone();
    shapes.set(ComponentKind::Clip, clip.clone());
    let err = layout(&LayoutKind::Arch(Arch::Sd2), &shapes, Prediction::V)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("resblocks.3.attn.in_proj_weight") && err.contains("k projection is missing"),
        "{err}"
    );

    clip.insert(k.into(), TensorInfo::new(vec![4, 3], Dtype::F16));
    shapes.set(ComponentKind::Clip, clip);
    let err = layout(&LayoutKind::Arch(Arch::Sd2), &shapes, Prediction::V)
        .unwrap_err()
        .to_string();
    assert!(err.contains("same shape"), "{err}");
}

#[test]
fn duplicate_keys_after_prefixing_are_refused() {
    let mut shapes = ComponentShapes::default();
    let one = |k: &str| BTreeMap::from([(k.to_string(), TensorInfo::new(vec![2], Dtype::F32))]);
    shapes.set(ComponentKind::Model, one("x.w"));
    shapes.set(ComponentKind::Vae, one("w"));
    let prefixes = GenericPrefixes {
        model: "a.".into(),
        vae: "a.x.".into(),
        ..Default::default()
    };
    let err = layout(&LayoutKind::Generic(prefixes), &shapes, Prediction::Flow).unwrap_err();
    assert!(
        matches!(&err, Error::DuplicateKey { key, .. } if key == "a.x.w"),
        "{err}"
    );
    assert!(err.to_string().contains("model tensor `x.w`"), "{err}");
}
