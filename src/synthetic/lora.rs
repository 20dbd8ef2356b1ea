//! Synthetic LoRAs: a rank-`r` module for every attention and convolution weight of a model (and
//! the attention and MLP weights of its text encoders), in kohya's names, as a trainer writes
//! them (f16 factors, f32 `alpha` = rank / 2).

use candle_core::{DType, Device, Tensor};

use super::build_from_shapes;
use crate::error::Result;
use crate::layout::diffusers::encoder_folders;
use crate::model::{Arch, ComponentKind, ComponentShapes, Components, TensorInfo, TensorMap};

/// Whether a LoRA trainer targets this weight: attention and feed-forward projections, and
/// every convolution.
fn targeted(kind: ComponentKind, key: &str, info: &TensorInfo) -> bool {
    if !key.ends_with(".weight") || info.shape.len() < 2 {
        return false;
    }
    match kind {
        ComponentKind::Model => {
            info.shape.len() == 4
                || [
                    "attn",
                    "attention",
                    "proj_in",
                    "proj_out",
                    ".ff.",
                    ".ff_",
                    "ffn",
                    "feed_forward",
                    "mlp",
                    "linear",
                ]
                .iter()
                .any(|p| key.contains(p))
        }
        ComponentKind::Clip => key.contains("self_attn") || key.contains(".mlp."),
        _ => false,
    }
}

/// The kohya module name of a weight of `arch` in ComfyUI's names.
fn module_name(arch: Arch, kind: ComponentKind, key: &str) -> Option<String> {
    let stem = key.strip_suffix(".weight")?;
    match kind {
        ComponentKind::Model => Some(format!("lora_unet_{}", stem.replace('.', "_"))),
        ComponentKind::Clip => {
            let (enc, inner) = stem.split_once(".transformer.")?;
            let encoders = encoder_folders(arch);
            let i = encoders.iter().position(|(_, e)| *e == enc)?;
            let te = if encoders.len() == 1 {
                "te".to_string()
            } else {
                format!("te{}", i + 1)
            };
            Some(format!("lora_{te}_{}", inner.replace('.', "_")))
        }
        _ => None,
    }
}

/// A rank-`rank` LoRA for `model` (ComfyUI's names, architecture `arch`): the tensors of the
/// file, as the `model` component of a generic-layout save with an empty prefix writes them.
///
/// # Errors
/// Errors of building the tensors.
pub fn lora(arch: Arch, model: &Components, rank: usize, seed: u64) -> Result<TensorMap> {
    let shapes = model.shapes();
    let mut infos = std::collections::BTreeMap::new();
    let mut alphas = Vec::new();
    for kind in [ComponentKind::Model, ComponentKind::Clip] {
        for (key, info) in shapes.get(kind).into_iter().flatten() {
            if !targeted(kind, key, info) {
                continue;
            }
            let Some(name) = module_name(arch, kind, key) else {
                continue;
            };
            let (out, inp) = (info.shape[0], info.shape[1]);
            let (up, down) = if info.shape.len() == 4 {
                let k = info.shape[2..].to_vec();
                (vec![out, rank, 1, 1], [vec![rank, inp], k].concat())
            } else {
                (vec![out, rank], vec![rank, inp])
            };
            let d = crate::model::Dtype::F16;
            infos.insert(format!("{name}.lora_up.weight"), TensorInfo::new(up, d));
            infos.insert(format!("{name}.lora_down.weight"), TensorInfo::new(down, d));
            alphas.push(format!("{name}.alpha"));
        }
    }
    let mut s = ComponentShapes::default();
    s.set(ComponentKind::Model, infos);
    let built = build_from_shapes(&s, seed, Some(DType::F16), &Device::Cpu)?;
    let mut out: TensorMap = built
        .get(ComponentKind::Model)
        .into_iter()
        .flatten()
        .filter_map(|(k, t)| Some((k.clone(), t.as_candle()?.clone())))
        .collect();
    let alpha = Tensor::new(rank as f32 / 2.0, &Device::Cpu)?;
    for a in alphas {
        out.insert(a, alpha.clone());
    }
    Ok(out)
}
