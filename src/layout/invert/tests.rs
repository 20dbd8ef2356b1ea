//! The inverse against every layout the save writes.

use super::*;
use crate::layout;
use crate::synthetic;

fn p() -> &'static Path {
    Path::new("x.safetensors")
}

fn info(shape: &[usize], dtype: Dtype) -> TensorInfo {
    TensorInfo::new(shape.to_vec(), dtype)
}

/// The file's key → info map a save of `shapes` would write (no tensor is built).
fn file_infos(
    kind: &LayoutKind,
    shapes: &ComponentShapes,
    prediction: Prediction,
) -> (BTreeMap<String, TensorInfo>, Vec<(ComponentKind, String)>) {
    let l = layout::layout(kind, shapes, prediction).unwrap();
    let infos = l
        .entries
        .iter()
        .map(|e| (e.key.clone(), info(&e.shape, e.dtype)))
        .collect();
    (infos, l.dropped)
}

/// What the moves of an inversion give back, as shapes.
fn recovered(inv: &Inversion, infos: &BTreeMap<String, TensorInfo>) -> ComponentShapes {
    let mut maps: BTreeMap<ComponentKind, BTreeMap<String, TensorInfo>> = BTreeMap::new();
    for (key, kind, mv) in &inv.moves {
        for (k, i) in recovered_infos(key, &infos[key], mv).unwrap() {
            maps.entry(*kind).or_default().insert(k, i);
        }
    }
    let mut s = ComponentShapes::default();
    for (k, m) in maps {
        s.set(k, m);
    }
    s
}

#[test]
fn prediction_from_markers_metadata_and_default() {
    let empty = info(&[0], Dtype::F32);
    let scalar = info(&[], Dtype::F32);
    let none = BTreeMap::new();
    let read = |keys: &[(&str, &TensorInfo)], meta: &BTreeMap<String, String>| {
        let infos: BTreeMap<String, TensorInfo> = keys
            .iter()
            .map(|(k, i)| (k.to_string(), (*i).clone()))
            .collect();
        read_prediction(p(), &infos, meta, Prediction::Flow, |k| {
            Ok(if k == SIGMA_MAX { 80.0 } else { 0.03 })
        })
    };
    assert_eq!(
        read(&[(V_PRED, &empty)], &none).unwrap(),
        (Prediction::V, vec![V_PRED])
    );
    assert_eq!(
        read(&[(V_PRED, &empty), (ZTSNR, &empty)], &none).unwrap(),
        (Prediction::VZsnr, vec![V_PRED, ZTSNR])
    );
    // ztsnr alone is not a marker ComfyUI reads: it is left over.
    assert_eq!(
        read(&[(ZTSNR, &empty)], &none).unwrap().1,
        Vec::<&str>::new()
    );
    let (edm, used) = read(&[(SIGMA_MAX, &scalar), (SIGMA_MIN, &scalar)], &none).unwrap();
    assert_eq!(used, vec![SIGMA_MAX, SIGMA_MIN]);
    assert_eq!(
        edm,
        Prediction::EdmV {
            sigma_max: 80.0,
            sigma_min: f64::from(0.03f32)
        }
    );
    let (only_max, _) = read(&[(SIGMA_MAX, &scalar)], &none).unwrap();
    assert_eq!(
        only_max,
        Prediction::EdmV {
            sigma_max: 80.0,
            sigma_min: DEFAULT_SIGMA_MIN
        }
    );
    let err = read(&[(SIGMA_MAX, &info(&[2], Dtype::F32))], &none)
        .unwrap_err()
        .to_string();
    assert!(err.contains("one F32 value"), "{err}");
    let meta = |v: &str| BTreeMap::from([(PREDICT_KEY.to_string(), v.to_string())]);
    assert_eq!(read(&[], &meta("epsilon")).unwrap().0, Prediction::Eps);
    assert_eq!(read(&[], &meta("v")).unwrap().0, Prediction::V);
    assert_eq!(read(&[], &meta("other")).unwrap().0, Prediction::Flow);
    assert_eq!(read(&[], &none).unwrap().0, Prediction::Flow);
}

#[test]
fn inverse_undoes_every_arch_layout() {
    let predictions = [
        Prediction::Eps,
        Prediction::V,
        Prediction::VZsnr,
        Prediction::EDM_DEFAULT,
        Prediction::Flow,
    ];
    for arch in Arch::ALL {
        let shapes = synthetic::shrink(&synthetic::shapes(arch), 6);
        let kind = LayoutKind::Arch(arch);
        for prediction in predictions {
            let (infos, dropped) = file_infos(&kind, &shapes, prediction);
            let markers: Vec<&str> = [V_PRED, ZTSNR, SIGMA_MAX, SIGMA_MIN]
                .into_iter()
                .filter(|k| infos.contains_key(*k))
                .collect();
            let inv = invert(p(), &kind, &infos, prediction, &markers).unwrap();
            assert!(inv.leftover.is_empty(), "{arch}: {:?}", inv.leftover);
            let got = recovered(&inv, &infos);
            for c in ComponentKind::ALL {
                let mut want = shapes.get(c).cloned();
                if let Some(w) = want.as_mut() {
                    for (dc, k) in &dropped {
                        if *dc == c {
                            w.remove(k);
                        }
                    }
                }
                assert_eq!(got.get(c), want.as_ref(), "{arch} {prediction} {c}");
            }
        }
    }
}

#[test]
fn generic_layout_inverts_too() {
    let shapes = synthetic::shrink(&synthetic::shapes(Arch::Sd3), 4);
    let kind = LayoutKind::Generic(GenericPrefixes::default());
    let (infos, _) = file_infos(&kind, &shapes, Prediction::Flow);
    let inv = invert(p(), &kind, &infos, Prediction::Flow, &[]).unwrap();
    assert_eq!(recovered(&inv, &infos), shapes);
}

#[test]
fn self_check_rejects_what_the_layout_would_not_write() {
    let shapes = synthetic::shrink(&synthetic::shapes(Arch::Sdxl), 4);
    let kind = LayoutKind::Arch(Arch::Sdxl);
    let (mut infos, _) = file_infos(&kind, &shapes, Prediction::Eps);
    let pos = "conditioner.embedders.0.transformer.text_model.embeddings.position_ids";
    assert!(infos.remove(pos).is_some());
    let err = invert(p(), &kind, &infos, Prediction::Eps, &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("do not form the sdxl layout") && err.contains(pos),
        "{err}"
    );

    let (mut infos, _) = file_infos(&kind, &shapes, Prediction::Eps);
    let fused = "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight";
    infos.get_mut(fused).unwrap().shape[0] = 4;
    let err = invert(p(), &kind, &infos, Prediction::Eps, &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("multiple of 3 rows"), "{err}");

    // A Flux file read as SD1.5: the Flux clip/vae keys are unclaimed and the clip is missing.
    let flux = synthetic::shrink(&synthetic::shapes(Arch::Flux), 4);
    let (infos, _) = file_infos(&LayoutKind::Arch(Arch::Flux), &flux, Prediction::Flow);
    let err = invert(
        p(),
        &LayoutKind::Arch(Arch::Sd15),
        &infos,
        Prediction::Eps,
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("sd15 layout"), "{err}");
}

#[test]
fn claims_follow_the_layout_prefixes() {
    let sd2 = LayoutKind::Arch(Arch::Sd2);
    assert_eq!(
        claim(&sd2, "cond_stage_model.model.text_projection"),
        Some((
            ComponentKind::Clip,
            Move::Transpose("clip_h.transformer.text_projection.weight".into())
        ))
    );
    assert_eq!(
        claim(&LayoutKind::Arch(Arch::Flux), "vae.decoder.conv_in.weight"),
        Some((
            ComponentKind::Vae,
            Move::Copy("decoder.conv_in.weight".into())
        ))
    );
    assert_eq!(claim(&sd2, "v_pred"), None);
    assert_eq!(claim(&sd2, "vae.decoder.conv_in.weight"), None);
}
