//! Round trips over every fixture and synthetic layout, the real models' key counts, and the
//! errors (spot checks of names are in `tests_names`).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use super::*;
use crate::error::Error;
use crate::model::Dtype;
use crate::model::{Arch, Prediction};
use crate::model::{ComponentKind, ComponentShapes, TensorInfo};
use crate::{synthetic, testutil};

type Keys = BTreeMap<String, TensorInfo>;

/// Every layout the module must handle: the six reference fixtures, and the full-size and
/// test-size synthetic layouts of all seven architectures.
pub(super) fn all_layouts() -> Vec<(String, Arch, ComponentShapes)> {
    let mut v: Vec<(String, Arch, ComponentShapes)> = testutil::FIXTURES
        .iter()
        .map(|(name, arch, _)| {
            (
                format!("fixture {name}"),
                *arch,
                testutil::component_shapes(name),
            )
        })
        .collect();
    // The families whose diffusers names are mapped, with the parts that have diffusers names
    // (a split writes the others as ComfyUI's save nodes do).
    for arch in Arch::ALL.into_iter().filter(|a| a.family().diffusers) {
        v.push((
            format!("tiny {arch}"),
            arch,
            mapped_shapes(arch, &synthetic::tiny_shapes(arch)),
        ));
        v.push((
            format!("full {arch}"),
            arch,
            mapped_shapes(arch, &synthetic::shapes(arch)),
        ));
    }
    v
}

pub(super) fn keys_of(tensors: &[Assembly]) -> Keys {
    tensors.iter().map(|a| (a.key.clone(), a.info())).collect()
}

fn encoder_of(arch: Arch, folder: Folder) -> Option<&'static str> {
    encoder_folders(arch)
        .iter()
        .find(|(f, _)| *f == folder)
        .map(|(_, e)| *e)
}

/// The in-memory keys a plan was made from.
fn plan_source(arch: Arch, shapes: &ComponentShapes, plan: &FolderPlan) -> Keys {
    let all = shapes.get(plan.class.kind()).cloned().unwrap_or_default();
    match encoder_of(arch, plan.folder) {
        Some(enc) => all
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{enc}.")))
            .collect(),
        None => all,
    }
}

/// Every non-dropped source element is used exactly once, every part names a kept source key,
/// and each assembly's parts hold as many elements as its shape.
fn assert_tiles(what: &str, source: &Keys, tensors: &[Assembly], dropped: &[String]) {
    let dropped: BTreeSet<&String> = dropped.iter().collect();
    let mut used: BTreeMap<&str, Vec<Range<usize>>> = BTreeMap::new();
    for a in tensors {
        let total: usize = a.parts.iter().map(|p| p.elements.len()).sum();
        assert_eq!(
            total,
            a.shape.iter().product::<usize>(),
            "{what}: {} parts vs shape {:?}",
            a.key,
            a.shape
        );
        for p in &a.parts {
            let info = source
                .get(&p.key)
                .unwrap_or_else(|| panic!("{what}: {} reads unknown {}", a.key, p.key));
            assert!(
                !dropped.contains(&p.key),
                "{what}: {} reads dropped {}",
                a.key,
                p.key
            );
            assert_eq!(info.dtype, a.dtype, "{what}: {} dtype", a.key);
            used.entry(&p.key).or_default().push(p.elements.clone());
        }
    }
    for (k, info) in source {
        if dropped.contains(k) {
            continue;
        }
        let mut ranges = used.remove(k.as_str()).unwrap_or_default();
        ranges.sort_by_key(|r| r.start);
        let mut at = 0;
        for r in ranges {
            assert_eq!(r.start, at, "{what}: {k}: gap or overlap at element {at}");
            at = r.end;
        }
        assert_eq!(
            at,
            info.numel(),
            "{what}: {k}: {at} of {} elements used",
            info.numel()
        );
    }
}

/// Resolves a to_comfy assembly through the from_comfy plan back to in-memory segments.
fn compose(plan: &BTreeMap<&str, &Assembly>, a: &Assembly) -> Vec<(String, Range<usize>)> {
    let mut out: Vec<(String, Range<usize>)> = Vec::new();
    for p in &a.parts {
        let mid = plan[p.key.as_str()];
        let mut offset = 0;
        for seg in &mid.parts {
            let (lo, hi) = (offset, offset + seg.elements.len());
            let (s, e) = (p.elements.start.max(lo), p.elements.end.min(hi));
            if s < e {
                let r = seg.elements.start + (s - lo)..seg.elements.start + (e - lo);
                match out.last_mut() {
                    Some((k, last)) if *k == seg.key && last.end == r.start => last.end = r.end,
                    _ => out.push((seg.key.clone(), r)),
                }
            }
            offset = hi;
        }
    }
    out
}

#[test]
fn round_trip_reproduces_every_kept_tensor_element_for_element() {
    for (name, arch, shapes) in all_layouts() {
        let plans = from_comfy(arch, &shapes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut back: BTreeMap<ComponentKind, BTreeSet<String>> = BTreeMap::new();
        let mut dropped: BTreeMap<ComponentKind, BTreeSet<String>> = BTreeMap::new();
        let mut created: Vec<(ComponentKind, Created)> = Vec::new();
        for plan in &plans {
            let what = format!("{name}/{}", plan.folder.name());
            let source = plan_source(arch, &shapes, plan);
            assert_tiles(&what, &source, &plan.tensors, &plan.dropped);
            let d = keys_of(&plan.tensors);
            assert_eq!(
                d.len(),
                plan.tensors.len(),
                "{what}: duplicate diffusers keys"
            );
            // AutoencoderKLQwenImage has AutoencoderKLWan's names: the folder's config tells.
            let want = match plan.class {
                ModelClass::QwenImageVae => ModelClass::WanVae,
                c => c,
            };
            assert_eq!(identify(&d).unwrap(), want, "{what}");
            let tc = to_comfy(plan.class, encoder_of(arch, plan.folder), &d)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(tc.kind, plan.class.kind());
            assert!(tc.dropped.is_empty(), "{what}: {:?}", tc.dropped);
            assert_tiles(&what, &d, &tc.tensors, &tc.dropped);
            let by_key: BTreeMap<&str, &Assembly> =
                plan.tensors.iter().map(|a| (a.key.as_str(), a)).collect();
            for a in &tc.tensors {
                let original = &source[&a.key];
                assert_eq!(&a.info(), original, "{what}: {} shape/dtype", a.key);
                assert_eq!(
                    compose(&by_key, a),
                    vec![(a.key.clone(), 0..original.numel())],
                    "{what}: {} elements",
                    a.key
                );
                assert!(
                    back.entry(tc.kind).or_default().insert(a.key.clone()),
                    "{what}: {} twice",
                    a.key
                );
            }
            dropped
                .entry(tc.kind)
                .or_default()
                .extend(plan.dropped.iter().cloned());
            created.extend(tc.created.into_iter().map(|c| (tc.kind, c)));
        }
        for kind in [
            ComponentKind::Model,
            ComponentKind::Clip,
            ComponentKind::Vae,
        ] {
            // A part without diffusers names here (Wan 2.2's VAE) is not planned at all.
            let original: BTreeSet<String> = shapes
                .get(kind)
                .into_iter()
                .flat_map(|m| m.keys().cloned())
                .collect();
            let back = back.remove(&kind).unwrap_or_default();
            let dropped = dropped.remove(&kind).unwrap_or_default();
            assert!(back.is_disjoint(&dropped), "{name}/{kind}");
            let union: BTreeSet<String> = back.union(&dropped).cloned().collect();
            assert_eq!(
                union, original,
                "{name}/{kind}: kept + dropped must be every in-memory key"
            );
        }
        for (kind, c) in created {
            assert_eq!(
                shapes.info(kind, &c.key),
                Some(&c.info),
                "{name}: created {}",
                c.key
            );
            assert_eq!(
                c.bytes.len(),
                c.info.numel() * c.info.dtype.bitsize() / 8,
                "{name}: {}",
                c.key
            );
        }
    }
}

#[test]
fn dropped_keys_are_exactly_what_diffusers_lacks() {
    let dropped = |arch: Arch, folder: Folder| -> Vec<String> {
        let plans = from_comfy(arch, &synthetic::shapes(arch)).unwrap();
        plans
            .into_iter()
            .find(|p| p.folder == folder)
            .unwrap()
            .dropped
    };
    assert_eq!(
        dropped(Arch::Sd15, Folder::TextEncoder),
        [
            "clip_l.logit_scale",
            "clip_l.transformer.text_projection.weight"
        ]
    );
    assert!(dropped(Arch::Sd15, Folder::Unet).is_empty());
    assert!(dropped(Arch::Sd15, Folder::Vae).is_empty());
    let sd2 = dropped(Arch::Sd2, Folder::TextEncoder);
    assert_eq!(sd2.len(), 16 + 2, "{sd2:?}");
    assert!(sd2.contains(
        &"clip_h.transformer.text_model.encoder.layers.23.self_attn.q_proj.weight".to_string()
    ));
    assert!(sd2.contains(&"clip_h.transformer.text_projection.weight".to_string()));
    assert!(!sd2.iter().any(|k| k.contains("layers.22.")));
    // The tiny SD2 encoder has 3 layers: the last one, index 2, goes.
    let tiny = from_comfy(Arch::Sd2, &synthetic::tiny_shapes(Arch::Sd2)).unwrap();
    let te = tiny
        .iter()
        .find(|p| p.folder == Folder::TextEncoder)
        .unwrap();
    assert!(te.dropped.iter().any(|k| k.contains("encoder.layers.2.")));
    assert!(te
        .tensors
        .iter()
        .any(|a| a.key.starts_with("text_model.encoder.layers.1.")));
    // The buffer ComfyUI may hold for SDXL's CLIP-L is not a transformers weight either.
    let mut sdxl = synthetic::tiny_shapes(Arch::Sdxl);
    let mut clip = sdxl.get(ComponentKind::Clip).unwrap().clone();
    let ids = "clip_l.transformer.text_model.embeddings.position_ids";
    clip.insert(ids.into(), TensorInfo::new(vec![1, 77], Dtype::I64));
    sdxl.set(ComponentKind::Clip, clip);
    let plans = from_comfy(Arch::Sdxl, &sdxl).unwrap();
    let te = plans
        .iter()
        .find(|p| p.folder == Folder::TextEncoder)
        .unwrap();
    assert!(te.dropped.contains(&ids.to_string()), "{:?}", te.dropped);
    assert_eq!(
        dropped(Arch::Sdxl, Folder::TextEncoder2),
        ["clip_g.logit_scale"]
    );
    assert_eq!(
        dropped(Arch::Sd3, Folder::TextEncoder),
        ["clip_l.logit_scale"]
    );
    assert_eq!(
        dropped(Arch::Sd3, Folder::TextEncoder3),
        ["t5xxl.logit_scale"]
    );
    assert_eq!(
        dropped(Arch::Flux, Folder::TextEncoder),
        [
            "clip_l.logit_scale",
            "clip_l.transformer.text_projection.weight"
        ]
    );
}

/// Tensor counts of the real diffusers models (unsharded `save_pretrained` output).
#[test]
fn key_counts_match_the_real_diffusers_models() {
    let counts = |arch: Arch| -> BTreeMap<&'static str, usize> {
        from_comfy(arch, &synthetic::shapes(arch))
            .unwrap()
            .iter()
            .map(|p| (p.folder.name(), p.tensors.len()))
            .collect()
    };
    // SD1.5 UNet 686, AutoencoderKL 248 and CLIP-L 196 (without position_ids): the tensor counts
    // of runwayml/stable-diffusion-v1-5's unet/, vae/ and text_encoder/ (the task brief). The
    // UNet renames one to one, so SD2.1's and SDXL's match their LDM counts (fixtures: 686, 1680,
    // 1220); SD2.1's text_encoder is 23 layers × 16 + 4 = 372 (config num_hidden_layers 23).
    let sd15 = counts(Arch::Sd15);
    assert_eq!(
        (sd15["unet"], sd15["vae"], sd15["text_encoder"]),
        (686, 248, 196)
    );
    let sd2 = counts(Arch::Sd2);
    assert_eq!(
        (sd2["unet"], sd2["vae"], sd2["text_encoder"]),
        (686, 248, 372)
    );
    // CLIPTextModelWithProjection bigG: 32 × 16 + 4 + text_projection = 517.
    let sdxl = counts(Arch::Sdxl);
    assert_eq!(
        (sdxl["unet"], sdxl["text_encoder"], sdxl["text_encoder_2"]),
        (1680, 196, 517)
    );
    let refiner = counts(Arch::SdxlRefiner);
    assert_eq!(
        (refiner["unet"], refiner["text_encoder_2"], refiner.len()),
        (1220, 517, 3)
    );
    // SD3 medium: 23 full blocks × 28 + the pre-only last block 22 + 17 outside = 683 (SD3's
    // convert_sd3_transformer_checkpoint_to_diffusers, one q/k/v each for x and context); the
    // 16-channel AutoencoderKL has no quant convs (248 - 4); T5-XXL encoder 24 × 9 + 3 = 219.
    let sd3 = counts(Arch::Sd3);
    assert_eq!(
        (
            sd3["transformer"],
            sd3["vae"],
            sd3["text_encoder"],
            sd3["text_encoder_2"],
            sd3["text_encoder_3"]
        ),
        (683, 244, 197, 517, 219)
    );
    // Flux.1 dev: 19 double blocks × 32 + 38 single × 14 + 20 outside = 1160 (the block
    // structure of convert_flux_transformer_checkpoint_to_diffusers); schnell lacks 4 guidance.
    let flux = counts(Arch::Flux);
    assert_eq!(
        (
            flux["transformer"],
            flux["vae"],
            flux["text_encoder"],
            flux["text_encoder_2"]
        ),
        (1160, 244, 196, 219)
    );
    assert_eq!(counts(Arch::FluxSchnell)["transformer"], 1156);
}

/// The tiny diffusers keys of one folder of `arch`.
fn tiny(arch: Arch, folder: Folder) -> Keys {
    let plans = from_comfy(arch, &synthetic::tiny_shapes(arch)).unwrap();
    keys_of(
        &plans
            .into_iter()
            .find(|p| p.folder == folder)
            .unwrap()
            .tensors,
    )
}

#[test]
fn identify_recognises_each_class_and_explains_failures() {
    use ModelClass::*;
    let cases = [
        (Arch::Sd15, Folder::Unet, Unet),
        (Arch::Sd15, Folder::Vae, Vae),
        (Arch::Sd15, Folder::TextEncoder, ClipText),
        (Arch::Sdxl, Folder::TextEncoder2, ClipTextWithProjection),
        (Arch::Sd3, Folder::TextEncoder3, T5Encoder),
        (Arch::Sd3, Folder::Transformer, Sd3Transformer),
        (Arch::FluxSchnell, Folder::Transformer, FluxTransformer),
    ];
    for (arch, folder, class) in cases {
        assert_eq!(
            identify(&tiny(arch, folder)).unwrap(),
            class,
            "{arch}/{folder:?}"
        );
    }
    let err = |keys: &[&str]| -> String {
        let k: Keys = keys
            .iter()
            .map(|k| (k.to_string(), TensorInfo::new(vec![1], Dtype::F32)))
            .collect();
        let e = identify(&k).unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e}");
        e.to_string()
    };
    let e = err(&[]);
    assert!(
        e.contains("0 tensor(s)") && e.contains("UNet2DConditionModel"),
        "{e}"
    );
    let e = err(&["foo.weight", "bar.bias"]);
    assert!(
        e.contains("`bar.bias`, `foo.weight`")
            && e.contains("Flux (`x_embedder.weight`")
            && e.contains("Z-Image (`all_x_embedder.2-1.weight`)"),
        "{e}"
    );
    assert!(err(&["input_blocks.0.0.weight"]).contains("ComfyUI names"));
    assert!(err(&["model.diffusion_model.input_blocks.0.0.weight"]).contains("single-file"));
}

#[test]
fn to_comfy_rejects_unknown_keys_bad_fusions_and_missing_parts() {
    let f32 = |shape: &[usize]| TensorInfo::new(shape.to_vec(), Dtype::F32);
    let mut unet = tiny(Arch::Sd15, Folder::Unet);
    unet.insert("down_blocks.0.resnets.0.bogus.weight".into(), f32(&[4]));
    let e = to_comfy(ModelClass::Unet, None, &unet).unwrap_err();
    assert!(
        matches!(e, Error::Conversion { ref key, .. } if key == "down_blocks.0.resnets.0.bogus.weight"),
        "{e}"
    );
    assert!(e.to_string().contains("UNet2DConditionModel"), "{e}");

    let sd3 = tiny(Arch::Sd3, Folder::Transformer);
    let mut bad = sd3.clone();
    bad.insert(
        "transformer_blocks.0.attn.to_k.weight".into(),
        f32(&[16, 32]),
    );
    let e = to_comfy(ModelClass::Sd3Transformer, None, &bad).unwrap_err();
    assert!(
        matches!(e, Error::Conversion { ref key, .. } if key == "joint_blocks.0.x_block.attn.qkv.weight"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("transformer_blocks.0.attn.to_k.weight")
            && e.to_string().contains("[16, 32]"),
        "{e}"
    );
    let mut bad = sd3.clone();
    bad.insert(
        "transformer_blocks.1.attn.add_k_proj.bias".into(),
        TensorInfo::new(vec![32], Dtype::F16),
    );
    let e = to_comfy(ModelClass::Sd3Transformer, None, &bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("same dtype"), "{e}");
    let mut bad = sd3.clone();
    bad.remove("transformer_blocks.0.attn.add_v_proj.bias");
    let e = to_comfy(ModelClass::Sd3Transformer, None, &bad).unwrap_err();
    assert!(
        matches!(e, Error::Conversion { ref key, .. } if key == "joint_blocks.0.context_block.attn.qkv.bias"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("`transformer_blocks.0.attn.add_v_proj.bias` is missing"),
        "{e}"
    );
    let mut bad = sd3;
    bad.insert("norm_out.linear.bias".into(), f32(&[63]));
    assert!(matches!(
        to_comfy(ModelClass::Sd3Transformer, None, &bad),
        Err(Error::BadShape { .. })
    ));

    let mut flux = tiny(Arch::Flux, Folder::Transformer);
    flux.remove("single_transformer_blocks.1.proj_mlp.weight");
    let e = to_comfy(ModelClass::FluxTransformer, None, &flux)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("single_blocks.1.linear1.weight") && e.contains("proj_mlp.weight` is missing"),
        "{e}"
    );

    // A class that does not fit the keys: every key is unknown.
    let e = to_comfy(
        ModelClass::Vae,
        None,
        &tiny(Arch::Sd15, Folder::TextEncoder),
    )
    .unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e}");
    let clip = tiny(Arch::Sd15, Folder::TextEncoder);
    for enc in [None, Some("t5xxl"), Some("clip_x")] {
        let e = to_comfy(ModelClass::ClipText, enc, &clip)
            .unwrap_err()
            .to_string();
        assert!(e.contains("clip_l, clip_h, clip_g"), "{e}");
    }
    let mut with_proj = clip.clone();
    with_proj.insert(
        "text_projection.weight".into(),
        TensorInfo::new(vec![32, 32], Dtype::F16),
    );
    let e = to_comfy(ModelClass::ClipText, Some("clip_l"), &with_proj).unwrap_err();
    assert!(
        matches!(e, Error::Conversion { ref key, .. } if key == "text_projection.weight"),
        "{e}"
    );
    assert!(to_comfy(ModelClass::Unet, None, &Keys::new()).is_err());
}

#[test]
fn from_comfy_checks_the_encoders() {
    let mut shapes = synthetic::tiny_shapes(Arch::Sdxl);
    let mut clip = shapes.get(ComponentKind::Clip).unwrap().clone();
    clip.insert(
        "clip_x.transformer.foo.weight".into(),
        TensorInfo::new(vec![1], Dtype::F16),
    );
    shapes.set(ComponentKind::Clip, clip.clone());
    let e = from_comfy(Arch::Sdxl, &shapes).unwrap_err().to_string();
    assert!(
        e.contains("clip_x.transformer.foo.weight") && e.contains("`clip_g.`"),
        "{e}"
    );
    clip.retain(|k, _| k.starts_with("clip_l."));
    shapes.set(ComponentKind::Clip, clip);
    let e = from_comfy(Arch::Sdxl, &shapes).unwrap_err().to_string();
    assert!(e.contains("needs text encoder `clip_g`"), "{e}");
    // SD3 without T5 is a valid pipeline; a component left out gives no folder.
    let mut sd3 = synthetic::tiny_shapes(Arch::Sd3);
    let mut clip = sd3.get(ComponentKind::Clip).unwrap().clone();
    clip.retain(|k, _| !k.starts_with("t5xxl."));
    sd3.set(ComponentKind::Clip, clip);
    let mut only = ComponentShapes::default();
    only.set(
        ComponentKind::Clip,
        sd3.get(ComponentKind::Clip).unwrap().clone(),
    );
    let folders: Vec<Folder> = from_comfy(Arch::Sd3, &only)
        .unwrap()
        .iter()
        .map(|p| p.folder)
        .collect();
    assert_eq!(folders, [Folder::TextEncoder, Folder::TextEncoder2]);
    let index = &configs(Arch::Sd3, &sd3, Prediction::Flow).unwrap()[0].1;
    assert_eq!(index["text_encoder_3"], serde_json::json!([null, null]));
    // A ComfyUI key no rule knows.
    let mut bad = synthetic::tiny_shapes(Arch::Flux);
    let mut model = bad.get(ComponentKind::Model).unwrap().clone();
    model.insert(
        "double_blocks.0.img_attn.extra.weight".into(),
        TensorInfo::new(vec![1], Dtype::F32),
    );
    bad.set(ComponentKind::Model, model);
    let e = from_comfy(Arch::Flux, &bad).unwrap_err();
    assert!(
        matches!(e, Error::Conversion { ref key, .. } if key == "double_blocks.0.img_attn.extra.weight"),
        "{e}"
    );
}

#[test]
fn encoder_folders_and_classes_follow_the_pipelines() {
    use Folder::*;
    assert_eq!(encoder_folders(Arch::Sd2), [(TextEncoder, "clip_h")]);
    assert_eq!(
        encoder_folders(Arch::SdxlRefiner),
        [(TextEncoder2, "clip_g")]
    );
    assert_eq!(
        encoder_folders(Arch::FluxSchnell),
        [(TextEncoder, "clip_l"), (TextEncoder2, "t5xxl")]
    );
    assert_eq!(
        encoder_class(Arch::Sdxl, TextEncoder),
        Some(ModelClass::ClipText)
    );
    assert_eq!(
        encoder_class(Arch::Sdxl, TextEncoder2),
        Some(ModelClass::ClipTextWithProjection)
    );
    assert_eq!(
        encoder_class(Arch::Sd3, TextEncoder),
        Some(ModelClass::ClipTextWithProjection)
    );
    assert_eq!(
        encoder_class(Arch::Flux, TextEncoder2),
        Some(ModelClass::T5Encoder)
    );
    assert_eq!(encoder_class(Arch::SdxlRefiner, TextEncoder), None);
    assert_eq!(Folder::TextEncoder3.name(), "text_encoder_3");
    assert_eq!(ModelClass::T5Encoder.weights_file(), "model.safetensors");
    assert_eq!(
        ModelClass::Unet.weights_file(),
        "diffusion_pytorch_model.safetensors"
    );
}
