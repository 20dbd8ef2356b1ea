//! Which weight a LoRA module's stem names: ComfyUI's key map (`comfy/lora.py`
//! `model_lora_keys_unet`, `model_lora_keys_clip`) for this tool's architectures, over the
//! model's own (ComfyUI) names and the diffusers/transformers names of `layout::diffusers`.
//!
//! | part | stems |
//! | --- | --- |
//! | denoiser | `lora_unet_<name with _>` and `diffusion_model.<name>` of every weight; `diffusion_model.<key>` of every other tensor (biases, norm scales) |
//! | UNet (SD1/SD2/SDXL/refiner), diffusers names | `lora_unet_<_>`, `lycoris_<_>`, `unet.<name>` and `<name>`, also with `.processor.to_…` |
//! | SD3 / Flux transformer, diffusers names | `transformer.<name>`, `<name>`, `lora_transformer_<_>`, `lycoris_<_>`; SD3 also `base_model.model.<name>` |
//! | Flux | `diffusion_model.single_blocks.N.linear1_qkv`: the q/k/v rows of `linear1` |
//! | CLIP-L, OpenCLIP-H | `lora_te_…`, `lora_te1_…`, `text_encoder.…` |
//! | OpenCLIP-G beside CLIP-L (SDXL, SD3) | `lora_te2_…`, `text_encoder_2.…` |
//! | OpenCLIP-G alone (SDXL refiner) | `lora_te_…`, `lora_prior_te_…`, `text_encoder.…` and `text_encoder_2.…` |
//! | T5-XXL | SD3 `lora_te3_…`; Flux `lora_te2_…` and `lora_te3_…` |
//! | every text encoder | `text_encoders.<name>` and the bare `<name>` (ComfyUI's names) |
//!
//! A diffusers name of a tensor ComfyUI fuses (Flux's and SD3's `to_q`/`to_k`/`to_v`) lands on
//! its rows of the fused weight. The kohya text-encoder names cover every weight of an encoder
//! (ComfyUI lists the attention and MLP projections, the only ones kohya trains).

use std::collections::HashMap;
use std::ops::Range;

use crate::error::Result;
use crate::layout::diffusers::{encoder_folders, from_comfy, Assembly, Folder};
use crate::model::{Arch, ComponentKind, ComponentShapes, TensorInfo};

/// Where a module lands: a tensor of a component, and which of its rows (`(value rows, first
/// target row)` runs).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Target {
    pub(crate) kind: ComponentKind,
    pub(crate) key: String,
    pub(crate) rows: Vec<(Range<usize>, usize)>,
}

impl Target {
    fn whole(kind: ComponentKind, key: &str, info: &TensorInfo) -> Target {
        Target {
            kind,
            key: key.to_string(),
            rows: vec![(0..rows_of(info), 0)],
        }
    }

    /// Whether it covers every row of its tensor in order.
    pub(crate) fn is_whole(&self, shapes: &ComponentShapes) -> bool {
        let rows = shapes.info(self.kind, &self.key).map_or(0, rows_of);
        self.rows == [(0..rows, 0)]
    }

    /// The bias beside the weight, where ComfyUI puts a module's `.diff_b`/`.b_norm`
    /// (`<weight key without .weight>.bias`), or why there is none.
    pub(crate) fn bias(&self, shapes: &ComponentShapes) -> std::result::Result<Target, String> {
        let Some(stem) = self.key.strip_suffix(".weight") else {
            return Err(format!(
                "`{}` is not a `.weight`, and ComfyUI patches only the bias beside a weight",
                self.key
            ));
        };
        if !self.is_whole(shapes) {
            return Err(format!(
                "it names part of the fused `{}`, whose bias ComfyUI does not patch",
                self.key
            ));
        }
        let key = format!("{stem}.bias");
        match shapes.info(self.kind, &key) {
            Some(info) => Ok(Target::whole(self.kind, &key, info)),
            None => Err(format!("the model has no `{key}`")),
        }
    }
}

/// Rows of a tensor (1 for a scalar).
fn rows_of(info: &TensorInfo) -> usize {
    info.shape.first().copied().unwrap_or(1)
}

/// Every module name the loaders accept for `arch`'s tensors in `shapes` (ComfyUI's names).
///
/// # Errors
/// Errors of the diffusers mapping of the model (a model that does not fit `arch`).
pub(crate) fn targets(arch: Arch, shapes: &ComponentShapes) -> Result<HashMap<String, Target>> {
    let mut map = HashMap::new();
    if let Some(model) = shapes.get(ComponentKind::Model) {
        for (k, info) in model {
            let t = Target::whole(ComponentKind::Model, k, info);
            match k.strip_suffix(".weight") {
                Some(stem) => {
                    map.insert(format!("lora_unet_{}", stem.replace('.', "_")), t.clone());
                    map.insert(format!("diffusion_model.{stem}"), t);
                }
                // ComfyUI's generic form for tensors that are not weights: the whole key.
                None => {
                    map.insert(format!("diffusion_model.{k}"), t);
                }
            }
            // Flux's single blocks fuse q, k, v and the MLP's input in `linear1`; ComfyUI
            // names the first 3 · hidden rows `linear1_qkv`.
            if let (Some(block), true) = (
                k.strip_suffix(".linear1.weight"),
                matches!(arch, Arch::Flux | Arch::FluxSchnell),
            ) {
                let qkv = 3 * info.shape.get(1).copied().unwrap_or(0);
                if qkv > 0 && qkv <= rows_of(info) {
                    let t = Target {
                        kind: ComponentKind::Model,
                        key: k.clone(),
                        rows: vec![(0..qkv, 0)],
                    };
                    map.insert(format!("diffusion_model.{block}.linear1_qkv"), t);
                }
            }
        }
    }
    clip_targets(arch, shapes, &mut map);
    diffusers_targets(arch, shapes, &mut map)?;
    Ok(map)
}

/// The text encoders' names in ComfyUI's forms (`model_lora_keys_clip`).
fn clip_targets(arch: Arch, shapes: &ComponentShapes, map: &mut HashMap<String, Target>) {
    let Some(clip) = shapes.get(ComponentKind::Clip) else {
        return;
    };
    let encoders: Vec<&str> = encoder_folders(arch).iter().map(|(_, e)| *e).collect();
    let (has_l, has_g) = (encoders.contains(&"clip_l"), encoders.contains(&"clip_g"));
    // ComfyUI's numbering of T5 after the CLIPs (OneTrainer): SD3 3, Flux 2 and 3.
    let t5 = 1 + usize::from(has_g) + usize::from(has_l);
    let kohya = |enc: &str| -> Vec<String> {
        match enc {
            "clip_l" | "clip_h" => vec!["lora_te".into(), "lora_te1".into()],
            "clip_g" if has_l => vec!["lora_te2".into()],
            "clip_g" => vec!["lora_te".into(), "lora_prior_te".into()],
            "t5xxl" if has_l && t5 == 2 => vec!["lora_te2".into(), "lora_te3".into()],
            "t5xxl" => vec![format!("lora_te{t5}")],
            _ => Vec::new(),
        }
    };
    for (k, info) in clip {
        let Some(stem) = k.strip_suffix(".weight") else {
            continue;
        };
        let Some((enc, inner)) = stem.split_once(".transformer.") else {
            continue;
        };
        if !encoders.contains(&enc) {
            continue;
        }
        let t = Target::whole(ComponentKind::Clip, k, info);
        let flat = inner.replace('.', "_");
        for p in kohya(enc) {
            map.insert(format!("{p}_{flat}"), t.clone());
        }
        if inner == "text_projection" {
            // OneTrainer's SD3 names, and Stable Cascade's (ComfyUI accepts it for any G).
            let extra: &[&str] = match enc {
                "clip_g" => &["lora_te2_text_projection", "lora_prior_te_text_projection"],
                "clip_l" => &["lora_te1_text_projection"],
                _ => &[],
            };
            for e in extra {
                map.insert((*e).to_string(), t.clone());
            }
        }
        map.insert(stem.to_string(), t.clone());
        map.insert(format!("text_encoders.{stem}"), t);
    }
}

/// diffusers / transformers names, through the same mapping `split --to diffusers` uses.
fn diffusers_targets(
    arch: Arch,
    shapes: &ComponentShapes,
    map: &mut HashMap<String, Target>,
) -> Result<()> {
    for plan in from_comfy(arch, shapes)? {
        let kind = plan.class.kind();
        let prefixes: &[&str] = match (plan.folder, arch) {
            (Folder::Unet, _) => &["unet.", ""],
            (Folder::Transformer, Arch::Sd3) => &["transformer.", "", "base_model.model."],
            (Folder::Transformer, _) => &["transformer.", ""],
            (Folder::Vae, _) => continue,
            // The refiner's only encoder, OpenCLIP-G, is ComfyUI's `text_encoder.`.
            (Folder::TextEncoder2, Arch::SdxlRefiner) => &["text_encoder_2", "text_encoder"],
            (f, _) => &[f.name()],
        };
        let kohya: &[&str] = match plan.folder {
            Folder::Unet => &["lora_unet", "lycoris"],
            Folder::Transformer => &["lora_transformer", "lycoris"],
            _ => &[],
        };
        for a in &plan.tensors {
            let Some(stem) = a.key.strip_suffix(".weight") else {
                continue;
            };
            let Some(rows) = row_runs(a, shapes, kind) else {
                continue;
            };
            let t = Target {
                kind,
                key: a.parts[0].key.clone(),
                rows,
            };
            for p in prefixes {
                let dotted = match *p {
                    "" => stem.to_string(),
                    p if p.ends_with('.') => format!("{p}{stem}"),
                    p => format!("{p}.{stem}"),
                };
                map.entry(dotted.clone()).or_insert_with(|| t.clone());
                // The attention-processor names of older diffusers LoRAs.
                let processor = dotted.replace(".to_", ".processor.to_");
                let processor = processor
                    .strip_suffix(".to_out.0")
                    .map_or(processor.clone(), |p| format!("{p}.to_out"));
                map.entry(processor).or_insert_with(|| t.clone());
            }
            for k in kohya {
                map.entry(format!("{k}_{}", stem.replace('.', "_")))
                    .or_insert_with(|| t.clone());
            }
        }
    }
    Ok(())
}

/// The value rows → target rows runs of a diffusers tensor made of row ranges of one
/// ComfyUI tensor; `None` where it is not (several tensors, or a range that is not whole rows).
fn row_runs(
    a: &Assembly,
    shapes: &ComponentShapes,
    kind: ComponentKind,
) -> Option<Vec<(Range<usize>, usize)>> {
    let key = &a.parts.first()?.key;
    if a.parts.iter().any(|p| &p.key != key) {
        return None;
    }
    let target = shapes.info(kind, key)?;
    let t_rows = rows_of(target).max(1);
    let width = target.numel() / t_rows;
    let rows = a.shape.first().copied().unwrap_or(1).max(1);
    if width == 0 || a.shape.iter().product::<usize>() / rows != width {
        return None;
    }
    let mut runs = Vec::new();
    let mut at = 0;
    for p in &a.parts {
        if p.elements.start % width != 0 || p.elements.len() % width != 0 {
            return None;
        }
        let n = p.elements.len() / width;
        runs.push((at..at + n, p.elements.start / width));
        at += n;
    }
    Some(runs)
}
