//! Round trips over every fixture and synthetic layout, literal spot checks against known
//! diffusers names, the real models' key counts, and the errors.

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
    for arch in Arch::ALL {
        v.push((format!("tiny {arch}"), arch, synthetic::tiny_shapes(arch)));
        v.push((format!("full {arch}"), arch, synthetic::shapes(arch)));
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
            assert_eq!(identify(&d).unwrap(), plan.class, "{what}");
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
            let original: BTreeSet<String> = shapes.get(kind).unwrap().keys().cloned().collect();
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

/// The assembly of diffusers key `d` in the plans of `arch` (full size).
fn diffusers(arch: Arch, folder: Folder, d: &str) -> Assembly {
    let plans = from_comfy(arch, &synthetic::shapes(arch)).unwrap();
    let plan = plans.into_iter().find(|p| p.folder == folder).unwrap();
    plan.tensors
        .into_iter()
        .find(|a| a.key == d)
        .unwrap_or_else(|| panic!("no {d}"))
}

fn whole(key: &str, n: usize) -> Vec<Part> {
    vec![Part {
        key: key.into(),
        elements: 0..n,
    }]
}

/// `d` is a copy of in-memory `c`, whole, with shape `shape`.
fn assert_copy(arch: Arch, folder: Folder, d: &str, c: &str, shape: &[usize]) {
    let a = diffusers(arch, folder, d);
    assert_eq!(a.shape, shape, "{d}");
    assert_eq!(a.parts, whole(c, shape.iter().product()), "{d}");
}

#[test]
fn unet_names_match_known_diffusers_names() {
    use Arch::*;
    let u = Folder::Unet;
    assert_copy(
        Sd15,
        u,
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        &[320, 320],
    );
    assert_copy(
        Sd15,
        u,
        "up_blocks.1.upsamplers.0.conv.weight",
        "output_blocks.5.2.conv.weight",
        &[1280, 1280, 3, 3],
    );
    assert_copy(
        Sd15,
        u,
        "up_blocks.0.upsamplers.0.conv.bias",
        "output_blocks.2.1.conv.bias",
        &[1280],
    );
    assert_copy(
        Sd15,
        u,
        "mid_block.resnets.1.conv2.weight",
        "middle_block.2.out_layers.3.weight",
        &[1280, 1280, 3, 3],
    );
    assert_copy(
        Sd15,
        u,
        "down_blocks.1.downsamplers.0.conv.weight",
        "input_blocks.6.0.op.weight",
        &[640, 640, 3, 3],
    );
    assert_copy(
        Sd15,
        u,
        "down_blocks.1.resnets.0.conv_shortcut.weight",
        "input_blocks.4.0.skip_connection.weight",
        &[640, 320, 1, 1],
    );
    assert_copy(
        Sd15,
        u,
        "down_blocks.3.resnets.1.time_emb_proj.weight",
        "input_blocks.11.0.emb_layers.1.weight",
        &[1280, 1280],
    );
    assert_copy(
        Sd15,
        u,
        "up_blocks.3.attentions.2.proj_out.weight",
        "output_blocks.11.1.proj_out.weight",
        &[320, 320, 1, 1],
    );
    assert_copy(
        Sd15,
        u,
        "time_embedding.linear_1.weight",
        "time_embed.0.weight",
        &[1280, 320],
    );
    assert_copy(Sd15, u, "conv_norm_out.bias", "out.0.bias", &[320]);
    assert_copy(
        Sd2,
        u,
        "down_blocks.2.attentions.1.proj_in.weight",
        "input_blocks.8.1.proj_in.weight",
        &[1280, 1280],
    );
    assert_copy(
        Sdxl,
        u,
        "add_embedding.linear_1.weight",
        "label_emb.0.0.weight",
        &[1280, 2816],
    );
    assert_copy(
        Sdxl,
        u,
        "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2.weight",
        "input_blocks.8.1.transformer_blocks.9.ff.net.2.weight",
        &[1280, 5120],
    );
    assert_copy(
        Sdxl,
        u,
        "up_blocks.0.attentions.2.transformer_blocks.0.attn2.to_k.weight",
        "output_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
        &[1280, 2048],
    );
    assert_copy(
        Sdxl,
        u,
        "up_blocks.0.upsamplers.0.conv.weight",
        "output_blocks.2.2.conv.weight",
        &[1280, 1280, 3, 3],
    );
    assert_copy(
        Sdxl,
        u,
        "up_blocks.1.upsamplers.0.conv.weight",
        "output_blocks.5.2.conv.weight",
        &[640, 640, 3, 3],
    );
    assert_copy(
        Sdxl,
        u,
        "mid_block.attentions.0.transformer_blocks.9.norm3.bias",
        "middle_block.1.transformer_blocks.9.norm3.bias",
        &[1280],
    );
    assert_copy(
        Sdxl,
        u,
        "up_blocks.2.resnets.2.conv_shortcut.weight",
        "output_blocks.8.0.skip_connection.weight",
        &[320, 640, 1, 1],
    );
    assert_copy(
        SdxlRefiner,
        u,
        "down_blocks.3.resnets.1.conv1.weight",
        "input_blocks.11.0.in_layers.2.weight",
        &[1536, 1536, 3, 3],
    );
    assert_copy(
        SdxlRefiner,
        u,
        "up_blocks.0.upsamplers.0.conv.weight",
        "output_blocks.2.1.conv.weight",
        &[1536, 1536, 3, 3],
    );
    assert_copy(
        SdxlRefiner,
        u,
        "up_blocks.1.attentions.0.proj_in.weight",
        "output_blocks.3.1.proj_in.weight",
        &[1536, 1536],
    );
}

#[test]
fn vae_names_match_known_diffusers_names() {
    use Arch::*;
    let v = Folder::Vae;
    // Linear in diffusers, 1×1 convolution in LDM: the same elements.
    assert_copy(
        Sd15,
        v,
        "encoder.mid_block.attentions.0.to_q.weight",
        "encoder.mid.attn_1.q.weight",
        &[512, 512],
    );
    assert_copy(
        Sd15,
        v,
        "decoder.mid_block.attentions.0.to_out.0.weight",
        "decoder.mid.attn_1.proj_out.weight",
        &[512, 512],
    );
    assert_copy(
        Sd15,
        v,
        "encoder.mid_block.attentions.0.group_norm.weight",
        "encoder.mid.attn_1.norm.weight",
        &[512],
    );
    assert_copy(
        Sd15,
        v,
        "decoder.up_blocks.0.resnets.2.conv2.weight",
        "decoder.up.3.block.2.conv2.weight",
        &[512, 512, 3, 3],
    );
    assert_copy(
        Sd15,
        v,
        "decoder.up_blocks.3.resnets.0.conv_shortcut.weight",
        "decoder.up.0.block.0.nin_shortcut.weight",
        &[128, 256, 1, 1],
    );
    assert_copy(
        Sd15,
        v,
        "decoder.up_blocks.1.upsamplers.0.conv.weight",
        "decoder.up.2.upsample.conv.weight",
        &[512, 512, 3, 3],
    );
    assert_copy(
        Sd15,
        v,
        "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
        "encoder.down.1.block.0.nin_shortcut.weight",
        &[256, 128, 1, 1],
    );
    assert_copy(
        Sd15,
        v,
        "encoder.conv_norm_out.weight",
        "encoder.norm_out.weight",
        &[512],
    );
    assert_copy(
        Sd15,
        v,
        "encoder.mid_block.resnets.1.norm1.bias",
        "encoder.mid.block_2.norm1.bias",
        &[512],
    );
    assert_copy(
        Sd15,
        v,
        "quant_conv.weight",
        "quant_conv.weight",
        &[8, 8, 1, 1],
    );
    assert_copy(
        Flux,
        v,
        "decoder.conv_in.weight",
        "decoder.conv_in.weight",
        &[512, 16, 3, 3],
    );

    // The other way, and diffusers' pre-0.14 attention names on input.
    let mut keys = Keys::new();
    keys.insert(
        "decoder.up_blocks.0.resnets.0.conv1.bias".into(),
        TensorInfo::new(vec![8], Dtype::F32),
    );
    for k in [
        "encoder.conv_in.weight",
        "encoder.mid_block.attentions.0.query.weight",
        "encoder.mid_block.attentions.0.proj_attn.weight",
    ] {
        keys.insert(k.into(), TensorInfo::new(vec![8, 8], Dtype::F32));
    }
    keys.insert(
        "encoder.mid_block.attentions.0.query.bias".into(),
        TensorInfo::new(vec![8], Dtype::F32),
    );
    let tc = to_comfy(ModelClass::Vae, None, &keys).unwrap();
    let got: BTreeMap<&str, &[usize]> = tc
        .tensors
        .iter()
        .map(|a| (a.key.as_str(), &a.shape[..]))
        .collect();
    assert_eq!(got["encoder.mid.attn_1.q.weight"], [8, 8, 1, 1]);
    assert_eq!(got["encoder.mid.attn_1.q.bias"], [8]);
    assert_eq!(got["encoder.mid.attn_1.proj_out.weight"], [8, 8, 1, 1]);
    assert_eq!(got["encoder.conv_in.weight"], [8, 8]);
    assert_eq!(got["decoder.up.0.block.0.conv1.bias"], [8]);
    // Old and new name of one tensor together are an error, not a silent pick.
    keys.insert(
        "encoder.mid_block.attentions.0.to_q.weight".into(),
        TensorInfo::new(vec![8, 8], Dtype::F32),
    );
    let err = to_comfy(ModelClass::Vae, None, &keys)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("encoder.mid.attn_1.q.weight") && err.contains("both"),
        "{err}"
    );
}

#[test]
fn text_encoder_names_match_known_transformers_names() {
    use Arch::*;
    assert_copy(
        Sd15,
        Folder::TextEncoder,
        "text_model.encoder.layers.11.mlp.fc2.weight",
        "clip_l.transformer.text_model.encoder.layers.11.mlp.fc2.weight",
        &[768, 3072],
    );
    assert_copy(
        Sd15,
        Folder::TextEncoder,
        "text_model.embeddings.position_embedding.weight",
        "clip_l.transformer.text_model.embeddings.position_embedding.weight",
        &[77, 768],
    );
    assert_copy(
        Sd2,
        Folder::TextEncoder,
        "text_model.encoder.layers.22.self_attn.out_proj.bias",
        "clip_h.transformer.text_model.encoder.layers.22.self_attn.out_proj.bias",
        &[1024],
    );
    assert_copy(
        Sdxl,
        Folder::TextEncoder2,
        "text_projection.weight",
        "clip_g.transformer.text_projection.weight",
        &[1280, 1280],
    );
    assert_copy(
        Sd3,
        Folder::TextEncoder,
        "text_projection.weight",
        "clip_l.transformer.text_projection.weight",
        &[768, 768],
    );
    assert_copy(
        Sd3,
        Folder::TextEncoder3,
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        &[32, 64],
    );
    assert_copy(
        Flux,
        Folder::TextEncoder2,
        "encoder.block.23.layer.1.DenseReluDense.wi_1.weight",
        "t5xxl.transformer.encoder.block.23.layer.1.DenseReluDense.wi_1.weight",
        &[10240, 4096],
    );
    assert_copy(
        Flux,
        Folder::TextEncoder2,
        "shared.weight",
        "t5xxl.transformer.shared.weight",
        &[32128, 4096],
    );

    // The buffers and tied copies some files carry are dropped and reported; ComfyUI's extras created.
    let clip = |proj: bool| {
        let mut k = Keys::new();
        k.insert(
            "text_model.embeddings.token_embedding.weight".into(),
            TensorInfo::new(vec![10, 4], Dtype::BF16),
        );
        k.insert(
            "text_model.final_layer_norm.weight".into(),
            TensorInfo::new(vec![4], Dtype::BF16),
        );
        k.insert(
            "text_model.embeddings.position_ids".into(),
            TensorInfo::new(vec![1, 77], Dtype::I64),
        );
        if proj {
            k.insert(
                "text_projection.weight".into(),
                TensorInfo::new(vec![4, 4], Dtype::BF16),
            );
        }
        k
    };
    let tc = to_comfy(
        identify(&clip(false)).unwrap(),
        Some("clip_l"),
        &clip(false),
    )
    .unwrap();
    assert_eq!(tc.dropped, ["text_model.embeddings.position_ids"]);
    assert_eq!(tc.created.len(), 2);
    assert_eq!(tc.created[0].key, "clip_l.logit_scale");
    assert_eq!(tc.created[0].info, TensorInfo::new(vec![], Dtype::F32));
    assert_eq!(tc.created[0].bytes, 4.6055f32.to_le_bytes());
    let eye = &tc.created[1];
    assert_eq!(eye.key, "clip_l.transformer.text_projection.weight");
    assert_eq!(eye.info, TensorInfo::new(vec![4, 4], Dtype::BF16));
    let values: Vec<u16> = eye
        .bytes
        .chunks(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    let one = 0x3f80; // bfloat16 1.0
    assert_eq!(
        values,
        [one, 0, 0, 0, 0, one, 0, 0, 0, 0, one, 0, 0, 0, 0, one]
    );
    let tc = to_comfy(identify(&clip(true)).unwrap(), Some("clip_g"), &clip(true)).unwrap();
    assert_eq!(
        tc.created.len(),
        1,
        "a projection of its own needs no identity"
    );
    assert!(tc
        .tensors
        .iter()
        .any(|a| a.key == "clip_g.transformer.text_projection.weight"));

    let mut t5 = Keys::new();
    t5.insert(
        "shared.weight".into(),
        TensorInfo::new(vec![10, 4], Dtype::F16),
    );
    t5.insert(
        "encoder.embed_tokens.weight".into(),
        TensorInfo::new(vec![10, 4], Dtype::F16),
    );
    t5.insert(
        "encoder.block.0.layer.1.DenseReluDense.wo.weight".into(),
        TensorInfo::new(vec![4, 8], Dtype::F16),
    );
    let tc = to_comfy(identify(&t5).unwrap(), Some("t5xxl"), &t5).unwrap();
    assert_eq!(tc.dropped, ["encoder.embed_tokens.weight"]);
    assert_eq!(tc.created[0].key, "t5xxl.logit_scale");
    let got: Vec<&str> = tc.tensors.iter().map(|a| a.key.as_str()).collect();
    assert_eq!(
        got,
        [
            "t5xxl.transformer.encoder.block.0.layer.1.DenseReluDense.wo.weight",
            "t5xxl.transformer.shared.weight"
        ]
    );
}

fn range(key: &str, r: Range<usize>) -> Part {
    Part {
        key: key.into(),
        elements: r,
    }
}

#[test]
fn mmdit_names_fusions_and_swaps_match_diffusers() {
    let t = Folder::Transformer;
    let h = 1536 * 1536;
    let qkv = "joint_blocks.0.context_block.attn.qkv.weight";
    let q = diffusers(Arch::Sd3, t, "transformer_blocks.0.attn.add_q_proj.weight");
    assert_eq!(
        (q.shape.clone(), q.parts),
        (vec![1536, 1536], vec![range(qkv, 0..h)])
    );
    let v = diffusers(Arch::Sd3, t, "transformer_blocks.0.attn.add_v_proj.weight");
    assert_eq!(v.parts, vec![range(qkv, 2 * h..3 * h)]);
    let k = diffusers(Arch::Sd3, t, "transformer_blocks.5.attn.to_k.bias");
    assert_eq!(
        k.parts,
        vec![range("joint_blocks.5.x_block.attn.qkv.bias", 1536..3072)]
    );
    // The final norm, and the pre-only last context block's, swap shift and scale; others do not.
    let last = "joint_blocks.23.context_block.adaLN_modulation.1.weight";
    let n = 3072 * 1536;
    assert_eq!(
        diffusers(
            Arch::Sd3,
            t,
            "transformer_blocks.23.norm1_context.linear.weight"
        )
        .parts,
        vec![range(last, n / 2..n), range(last, 0..n / 2)]
    );
    let b = "final_layer.adaLN_modulation.1.bias";
    assert_eq!(
        diffusers(Arch::Sd3, t, "norm_out.linear.bias").parts,
        vec![range(b, 1536..3072), range(b, 0..1536)]
    );
    assert_copy(
        Arch::Sd3,
        t,
        "transformer_blocks.22.norm1_context.linear.weight",
        "joint_blocks.22.context_block.adaLN_modulation.1.weight",
        &[9216, 1536],
    );
    assert_copy(
        Arch::Sd3,
        t,
        "pos_embed.pos_embed",
        "pos_embed",
        &[1, 192 * 192, 1536],
    );
    assert_copy(
        Arch::Sd3,
        t,
        "pos_embed.proj.weight",
        "x_embedder.proj.weight",
        &[1536, 16, 2, 2],
    );
    assert_copy(
        Arch::Sd3,
        t,
        "time_text_embed.text_embedder.linear_1.weight",
        "y_embedder.mlp.0.weight",
        &[1536, 2048],
    );
    assert_copy(
        Arch::Sd3,
        t,
        "transformer_blocks.23.attn.to_out.0.weight",
        "joint_blocks.23.x_block.attn.proj.weight",
        &[1536, 1536],
    );
    let plans = from_comfy(Arch::Sd3, &synthetic::shapes(Arch::Sd3)).unwrap();
    let keys = keys_of(&plans[0].tensors);
    assert!(!keys.contains_key("transformer_blocks.23.attn.to_add_out.weight"));
    assert!(!keys.contains_key("transformer_blocks.23.ff_context.net.0.proj.weight"));
    assert!(keys.contains_key("transformer_blocks.22.attn.to_add_out.weight"));
}

#[test]
fn flux_names_fusions_and_swaps_match_diffusers() {
    let t = Folder::Transformer;
    assert_copy(
        Arch::Flux,
        t,
        "single_transformer_blocks.0.attn.norm_q.weight",
        "single_blocks.0.norm.query_norm.scale",
        &[128],
    );
    assert_copy(
        Arch::Flux,
        t,
        "transformer_blocks.18.attn.norm_added_k.weight",
        "double_blocks.18.txt_attn.norm.key_norm.scale",
        &[128],
    );
    assert_copy(
        Arch::Flux,
        t,
        "single_transformer_blocks.5.proj_out.weight",
        "single_blocks.5.linear2.weight",
        &[3072, 15360],
    );
    assert_copy(
        Arch::Flux,
        t,
        "time_text_embed.guidance_embedder.linear_2.weight",
        "guidance_in.out_layer.weight",
        &[3072, 3072],
    );
    assert_copy(
        Arch::Flux,
        t,
        "transformer_blocks.0.norm1_context.linear.weight",
        "double_blocks.0.txt_mod.lin.weight",
        &[18432, 3072],
    );
    assert_copy(
        Arch::Flux,
        t,
        "x_embedder.weight",
        "img_in.weight",
        &[3072, 64],
    );
    // linear1 = q, k, v (3072 rows each), then the MLP's 12288 rows.
    let mlp = diffusers(
        Arch::Flux,
        t,
        "single_transformer_blocks.37.proj_mlp.weight",
    );
    assert_eq!(mlp.shape, [12288, 3072]);
    assert_eq!(
        mlp.parts,
        vec![range(
            "single_blocks.37.linear1.weight",
            9216 * 3072..21504 * 3072
        )]
    );
    let kb = diffusers(Arch::Flux, t, "single_transformer_blocks.0.attn.to_k.bias");
    assert_eq!(
        kb.parts,
        vec![range("single_blocks.0.linear1.bias", 3072..6144)]
    );
    let txt_v = diffusers(Arch::Flux, t, "transformer_blocks.3.attn.add_v_proj.weight");
    let n = 3072 * 3072;
    assert_eq!(
        txt_v.parts,
        vec![range("double_blocks.3.txt_attn.qkv.weight", 2 * n..3 * n)]
    );
    let w = "final_layer.adaLN_modulation.1.weight";
    assert_eq!(
        diffusers(Arch::Flux, t, "norm_out.linear.weight").parts,
        vec![range(w, n..2 * n), range(w, 0..n)]
    );
    let schnell = from_comfy(Arch::FluxSchnell, &synthetic::shapes(Arch::FluxSchnell)).unwrap();
    assert!(!schnell[0]
        .tensors
        .iter()
        .any(|a| a.key.contains("guidance")));
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
            && e.contains("FluxTransformer2DModel (`x_embedder.weight`"),
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
