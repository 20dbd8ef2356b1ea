//! Which weight a LoRA module's stem names: ComfyUI's key map (`comfy/lora.py`
//! `model_lora_keys_unet`, `model_lora_keys_clip`), built from the family table's LoRA name
//! forms ([`crate::family::LoraNames`]) over the model's own (ComfyUI) names and the
//! diffusers/transformers names of `layout::diffusers`.
//!
//! | part | stems |
//! | --- | --- |
//! | denoiser, every family and `generic` | `lora_unet_<name with _>` and `diffusion_model.<name>` of every weight; `diffusion_model.<key>` of every other tensor (biases, norm scales, modulations) |
//! | denoiser, by family | the own names bare or under `transformer.`, `lycoris_…` (Qwen-Image, HiDream, LTX-Video); the diffusers names under `unet.`/`transformer.`/`base_model.model.`/bare and flattened under `lora_unet_`/`lora_transformer_`/`lycoris_` (see the table); diffusion-pipe's HunyuanVideo renames; Flux's `linear1_qkv` rows; Qwen-Image 2.1's `img_mlp.gate_layer`/`img_mlp.proj` halves of `img_mlp.gate_up` |
//! | CLIP-L, OpenCLIP-H | `lora_te_…`, `lora_te1_…`, `text_encoder.…` |
//! | OpenCLIP-G beside CLIP-L (SDXL, SD3, HiDream) | `lora_te2_…`, `text_encoder_2.…` |
//! | OpenCLIP-G alone (SDXL refiner) | `lora_te_…`, `lora_prior_te_…`, `text_encoder.…` and `text_encoder_2.…` |
//! | T5-XXL | numbered after the CLIPs: `lora_te1_` alone (LTX-Video, Chroma), `lora_te2_` and `lora_te3_` after CLIP-L (Flux), `lora_te3_` after both (SD3, HiDream) |
//! | a single language-model encoder (Qwen2.5-VL, Qwen3, Gemma 2, umT5 …) | `lora_te_<name after <encoder>.transformer.model.>` |
//! | every text encoder | `text_encoders.<name>`, the bare `<name>`, and (except CLIPs) `text_encoders.transformer.<name after <encoder>.transformer.>` |
//!
//! A diffusers name of a tensor ComfyUI fuses (Flux's and SD3's `to_q`/`to_k`/`to_v`, Lumina's
//! and HunyuanVideo's `qkv`) lands on its rows of the fused weight. The kohya text-encoder names
//! cover every weight of an encoder (ComfyUI lists the attention and MLP projections, the only
//! ones kohya trains). Where two forms give one name, ComfyUI's own forms win over the diffusers
//! names.

use std::collections::HashMap;
use std::ops::Range;

use crate::error::Result;
use crate::layout::diffusers::{from_comfy, mapped_shapes, Assembly, Folder};
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

/// The names and row halves of a fused weight `key` (stem `stem`) a family's own forms address
/// apart, as ComfyUI's offset patches `(0, 0, half)` and `(0, half, half)` with half the rows
/// (`sd[k].shape[0] // 2`); empty where no rule of `rules` names it.
fn halves(
    rules: &[(&str, [&str; 2])],
    stem: &str,
    key: &str,
    info: &TensorInfo,
) -> Vec<(String, Target)> {
    let Some((base, names)) = rules
        .iter()
        .find_map(|(fused, names)| Some((stem.strip_suffix(fused)?, names)))
    else {
        return Vec::new();
    };
    let half = rows_of(info) / 2;
    if half == 0 {
        return Vec::new();
    }
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let t = Target {
                kind: ComponentKind::Model,
                key: key.to_string(),
                rows: vec![(0..half, i * half)],
            };
            (format!("{base}{name}"), t)
        })
        .collect()
}

/// Rows of a tensor (1 for a scalar).
fn rows_of(info: &TensorInfo) -> usize {
    info.shape.first().copied().unwrap_or(1)
}

/// Every module name the loaders accept for the tensors in `shapes` (ComfyUI's names), as
/// `arch`'s family names them (`None`: the generic layout, ComfyUI's generic names only).
///
/// # Errors
/// Errors of the diffusers mapping of the model (a model that does not fit `arch`).
pub(crate) fn targets(
    arch: Option<Arch>,
    shapes: &ComponentShapes,
) -> Result<HashMap<String, Target>> {
    let mut map = HashMap::new();
    let names = arch.map(|a| a.family().lora);
    if let Some(model) = shapes.get(ComponentKind::Model) {
        for (k, info) in model {
            let t = Target::whole(ComponentKind::Model, k, info);
            let Some(stem) = k.strip_suffix(".weight") else {
                // ComfyUI's generic form for tensors that are not weights: the whole key.
                map.insert(format!("diffusion_model.{k}"), t);
                continue;
            };
            let flat = stem.replace('.', "_");
            map.insert(format!("lora_unet_{flat}"), t.clone());
            map.insert(format!("diffusion_model.{stem}"), t.clone());
            let Some(n) = names else { continue };
            // A fused weight whose halves the own forms name apart (Qwen-Image 2.1's
            // `img_mlp.gate_up`): ComfyUI maps the halves' names there, not the fused one.
            let split: Vec<(String, Target)> = halves(n.halves, stem, k, info);
            let own: Vec<(String, Target)> = match split.is_empty() {
                true => vec![(stem.to_string(), t.clone())],
                false => split,
            };
            for (name, t) in &own {
                for p in n.own {
                    map.insert(format!("{p}{name}"), t.clone());
                }
                for p in n.own_flat {
                    map.insert(format!("{p}{}", name.replace('.', "_")), t.clone());
                }
            }
            if !n.renamed.is_empty() {
                let mut renamed = k.clone();
                for (from, to) in n.renamed {
                    renamed = renamed.replace(from, to);
                }
                let renamed = renamed.strip_suffix(".weight").unwrap_or(&renamed);
                for p in n.renamed_prefixes {
                    map.insert(format!("{p}{renamed}"), t.clone());
                }
            }
            for (suffix, name, mult) in n.leading_rows {
                let Some(head) = k.strip_suffix(suffix) else {
                    continue;
                };
                let rows = mult * info.shape.get(1).copied().unwrap_or(0);
                if rows > 0 && rows <= rows_of(info) {
                    let t = Target {
                        kind: ComponentKind::Model,
                        key: k.clone(),
                        rows: vec![(0..rows, 0)],
                    };
                    map.insert(format!("diffusion_model.{head}{name}"), t);
                }
            }
        }
    }
    clip_targets(shapes, &mut map);
    if let Some(a) = arch.filter(|a| a.family().diffusers) {
        diffusers_targets(a, shapes, &mut map)?;
    }
    Ok(map)
}

/// The text encoders' names in ComfyUI's forms (`model_lora_keys_clip`), told by the encoders
/// the clip component holds.
fn clip_targets(shapes: &ComponentShapes, map: &mut HashMap<String, Target>) {
    let Some(clip) = shapes.get(ComponentKind::Clip) else {
        return;
    };
    let has = |e: &str| {
        clip.keys()
            .any(|k| k.starts_with(&format!("{e}.transformer.")))
    };
    let (has_l, has_g) = (has("clip_l"), has("clip_g"));
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
    // One encoder (a language model, say): kohya's `lora_te_` over its `transformer.model.`.
    let mut encoders: Vec<&str> = clip
        .keys()
        .filter(|k| k.ends_with(".weight"))
        .filter_map(|k| k.split('.').next())
        .collect();
    encoders.dedup();
    let single = match encoders.as_slice() {
        [one] => Some(format!("{one}.transformer.model.")),
        _ => None,
    };
    for (k, info) in clip {
        let Some(stem) = k.strip_suffix(".weight") else {
            continue;
        };
        let t = Target::whole(ComponentKind::Clip, k, info);
        map.insert(stem.to_string(), t.clone());
        map.insert(format!("text_encoders.{stem}"), t.clone());
        if let Some(inner) = single.as_ref().and_then(|p| stem.strip_prefix(p.as_str())) {
            map.insert(format!("lora_te_{}", inner.replace('.', "_")), t.clone());
        }
        let Some((enc, inner)) = stem.split_once(".transformer.") else {
            continue;
        };
        if !enc.starts_with("clip_") {
            // Without the encoder's name, as ComfyUI maps composite text-encoder models.
            map.insert(format!("text_encoders.transformer.{inner}"), t.clone());
        }
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
    }
}

/// diffusers / transformers names, through the same mapping `split --to diffusers` uses, in
/// the forms of the family table.
fn diffusers_targets(
    arch: Arch,
    shapes: &ComponentShapes,
    map: &mut HashMap<String, Target>,
) -> Result<()> {
    let names = arch.family().lora;
    // Parts without diffusers names here (Wan 2.2's VAE, language-model encoders) have no
    // diffusers LoRA names either.
    for plan in from_comfy(arch, &mapped_shapes(arch, shapes))? {
        let kind = plan.class.kind();
        let (prefixes, flat): (&[&str], &[&str]) = match (plan.folder, arch) {
            (Folder::Unet | Folder::Transformer, _) => (names.diffusers, names.diffusers_flat),
            (Folder::Vae, _) => continue,
            // The refiner's only encoder, OpenCLIP-G, is ComfyUI's `text_encoder.`.
            (Folder::TextEncoder2, Arch::SdxlRefiner) => {
                (&["text_encoder_2.", "text_encoder."], &[])
            }
            (f, _) => (text_prefix(f), &[]),
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
                let dotted = format!("{p}{stem}");
                map.entry(dotted.clone()).or_insert_with(|| t.clone());
                if names.processor {
                    // The attention-processor names of older diffusers LoRAs.
                    let processor = dotted.replace(".to_", ".processor.to_");
                    let processor = processor
                        .strip_suffix(".to_out.0")
                        .map_or(processor.clone(), |p| format!("{p}.to_out"));
                    map.entry(processor).or_insert_with(|| t.clone());
                }
            }
            for p in flat {
                map.entry(format!("{p}{}", stem.replace('.', "_")))
                    .or_insert_with(|| t.clone());
            }
        }
    }
    Ok(())
}

/// `text_encoder.`, `text_encoder_2.`, … for a text-encoder folder.
fn text_prefix(folder: Folder) -> &'static [&'static str] {
    match folder {
        Folder::TextEncoder => &["text_encoder."],
        Folder::TextEncoder2 => &["text_encoder_2."],
        Folder::TextEncoder3 => &["text_encoder_3."],
        _ => &[],
    }
}

/// The families whose names fit the most of `stems` (module names of a LoRA), with how many
/// fit, best first: what a LoRA that fits nothing of the model it is baked into was made for.
/// Each family's default model (full size) is read by its names and shapes only.
pub(crate) fn fitting_families(stems: &[&str]) -> Vec<(Arch, usize)> {
    let mut fits: Vec<(Arch, usize)> = Arch::ALL
        .iter()
        .filter_map(|&arch| {
            let shapes = crate::synthetic::shapes(arch);
            let map = targets(Some(arch), &shapes).ok()?;
            let n = stems.iter().filter(|s| map.contains_key(**s)).count();
            (n > 0).then_some((arch, n))
        })
        .collect();
    let best = fits.iter().map(|(_, n)| *n).max().unwrap_or(0);
    fits.retain(|(_, n)| *n == best);
    fits
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
