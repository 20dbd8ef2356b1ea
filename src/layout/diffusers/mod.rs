//! diffusers/transformers tensor names ⇄ ComfyUI's in-memory component names, both directions.
//!
//! A diffusers pipeline folder holds one model per sub-folder (`unet/`, `vae/`, `text_encoder/`…)
//! in diffusers or transformers naming; ComfyUI holds the same weights as three components (model,
//! clip, vae) in LDM/SGM naming. This module maps names and shapes only, for SD1.5, SD2, SDXL,
//! the SDXL refiner, SD3 and Flux: which elements of which source tensors make each target tensor
//! ([`Assembly`]), which tensors one side needs and the other lacks ([`Created`], `dropped`), and
//! the JSON configs a folder needs ([`configs`]). Reading and writing bytes is the caller's job.
//!
//! Every conversion is a concatenation of row-major element ranges along dim 0 (q/k/v fusion,
//! half swaps), or a reshape (the autoencoder's 1×1 convolutions), so no transpose is needed.

mod config;
mod flux;
mod links;
mod mmdit;
mod model_config;
mod text;
mod unet;
mod vae;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_config;
#[cfg(test)]
mod tests_names;

use std::collections::BTreeMap;
use std::ops::Range;

use crate::error::{Error, Result};
use crate::model::Arch;
use crate::model::Dtype;
use crate::model::{ComponentKind, ComponentShapes, TensorInfo};
use links::{Dir, Links};

pub use config::{configs, prediction_from_scheduler};

/// Elements `elements` (row-major order) of source tensor `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Source key.
    pub key: String,
    /// Element range within the source tensor.
    pub elements: Range<usize>,
}

/// One target tensor: the parts' elements concatenated in order, read as `shape`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembly {
    /// Target key.
    pub key: String,
    /// Target shape.
    pub shape: Vec<usize>,
    /// Dtype of every part, kept.
    pub dtype: Dtype,
    /// Source ranges, in order.
    pub parts: Vec<Part>,
}

impl Assembly {
    /// Shape and dtype of the target tensor.
    pub fn info(&self) -> TensorInfo {
        TensorInfo::new(self.shape.clone(), self.dtype)
    }
}

/// A tensor the target naming needs that the source does not carry, with the value written instead
/// (bytes little-endian, row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    /// Target key.
    pub key: String,
    /// Shape and dtype.
    pub info: TensorInfo,
    /// The tensor's bytes.
    pub bytes: Vec<u8>,
}

/// The diffusers/transformers model classes, recognised from keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelClass {
    /// diffusers `UNet2DConditionModel` (SD1, SD2, SDXL).
    Unet,
    /// diffusers `AutoencoderKL`.
    Vae,
    /// transformers `CLIPTextModel`.
    ClipText,
    /// transformers `CLIPTextModelWithProjection`.
    ClipTextWithProjection,
    /// transformers `T5EncoderModel`.
    T5Encoder,
    /// diffusers `SD3Transformer2DModel`.
    Sd3Transformer,
    /// diffusers `FluxTransformer2DModel`.
    FluxTransformer,
}

impl ModelClass {
    /// The Python class name (`_class_name` / `architectures` in its config).
    pub fn name(self) -> &'static str {
        match self {
            ModelClass::Unet => "UNet2DConditionModel",
            ModelClass::Vae => "AutoencoderKL",
            ModelClass::ClipText => "CLIPTextModel",
            ModelClass::ClipTextWithProjection => "CLIPTextModelWithProjection",
            ModelClass::T5Encoder => "T5EncoderModel",
            ModelClass::Sd3Transformer => "SD3Transformer2DModel",
            ModelClass::FluxTransformer => "FluxTransformer2DModel",
        }
    }

    /// The Python library that defines it, as `model_index.json` names it.
    pub fn library(self) -> &'static str {
        match self {
            ModelClass::ClipText | ModelClass::ClipTextWithProjection | ModelClass::T5Encoder => {
                "transformers"
            }
            _ => "diffusers",
        }
    }

    /// The ComfyUI component its tensors belong to.
    pub fn kind(self) -> ComponentKind {
        match self {
            ModelClass::Unet | ModelClass::Sd3Transformer | ModelClass::FluxTransformer => {
                ComponentKind::Model
            }
            ModelClass::Vae => ComponentKind::Vae,
            _ => ComponentKind::Clip,
        }
    }

    /// The weights file `save_pretrained` writes in its folder (unsharded).
    pub fn weights_file(self) -> &'static str {
        match self.library() {
            "transformers" => "model.safetensors",
            _ => "diffusion_pytorch_model.safetensors",
        }
    }
}

/// Sub-folders of a pipeline folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Folder {
    /// `unet/`.
    Unet,
    /// `vae/`.
    Vae,
    /// `text_encoder/`.
    TextEncoder,
    /// `text_encoder_2/`.
    TextEncoder2,
    /// `text_encoder_3/`.
    TextEncoder3,
    /// `transformer/`.
    Transformer,
}

impl Folder {
    /// The folder name, as in `model_index.json`.
    pub fn name(self) -> &'static str {
        match self {
            Folder::Unet => "unet",
            Folder::Vae => "vae",
            Folder::TextEncoder => "text_encoder",
            Folder::TextEncoder2 => "text_encoder_2",
            Folder::TextEncoder3 => "text_encoder_3",
            Folder::Transformer => "transformer",
        }
    }
}

/// Recognises the model class of one model's diffusers keys.
///
/// # Errors
/// [`Error::InvalidInput`] when the keys fit no class, saying what was found and what each class
/// is recognised by (with a hint when they are single-file or ComfyUI names instead).
pub fn identify(keys: &BTreeMap<String, TensorInfo>) -> Result<ModelClass> {
    let has = |k: &str| keys.contains_key(k);
    let any = |p: &str| keys.keys().any(|k| k.starts_with(p));
    let class = if has("x_embedder.weight") && any("transformer_blocks.") {
        Some(ModelClass::FluxTransformer)
    } else if has("pos_embed.proj.weight") && any("transformer_blocks.") {
        Some(ModelClass::Sd3Transformer)
    } else if has("conv_in.weight") && any("down_blocks.") {
        Some(ModelClass::Unet)
    } else if has("encoder.conv_in.weight") || has("decoder.conv_in.weight") {
        Some(ModelClass::Vae)
    } else if has("text_model.embeddings.token_embedding.weight") {
        Some(match has(text::PROJECTION) {
            true => ModelClass::ClipTextWithProjection,
            false => ModelClass::ClipText,
        })
    } else if has("shared.weight") || any("encoder.block.") {
        Some(ModelClass::T5Encoder)
    } else {
        None
    };
    if let Some(c) = class {
        return Ok(c);
    }
    let first: Vec<&str> = keys.keys().take(3).map(String::as_str).collect();
    let hint = if [
        "model.diffusion_model.",
        "first_stage_model.",
        "cond_stage_model.",
        "conditioner.",
        "text_encoders.",
    ]
    .iter()
    .any(|p| any(p))
    {
        " These are single-file checkpoint names; split the file into components first."
    } else if [
        "input_blocks.",
        "joint_blocks.",
        "double_blocks.",
        "encoder.down.",
        "clip_l.",
        "clip_g.",
        "clip_h.",
        "t5xxl.",
    ]
    .iter()
    .any(|p| any(p))
    {
        " These are ComfyUI names; use from_comfy for them."
    } else {
        ""
    };
    Err(Error::InvalidInput(format!(
        "cannot tell which diffusers/transformers model {} tensor(s) belong to (first: {}); expected UNet2DConditionModel (`conv_in.weight`, `down_blocks.…`), AutoencoderKL (`encoder.conv_in.weight`), CLIPTextModel[WithProjection] (`text_model.embeddings.token_embedding.weight`), T5EncoderModel (`shared.weight`, `encoder.block.…`), SD3Transformer2DModel (`pos_embed.proj.weight`, `transformer_blocks.…`) or FluxTransformer2DModel (`x_embedder.weight`, `transformer_blocks.…`).{hint}",
        keys.len(),
        if first.is_empty() { "none".to_string() } else { format!("`{}`", first.join("`, `")) },
    )))
}

/// Which in-memory encoder name (`clip_l`, `clip_h`, `clip_g`, `t5xxl`) each text-encoder folder
/// of `arch` holds.
pub fn encoder_folders(arch: Arch) -> &'static [(Folder, &'static str)] {
    use Folder::*;
    match arch {
        Arch::Sd15 => &[(TextEncoder, "clip_l")],
        Arch::Sd2 => &[(TextEncoder, "clip_h")],
        Arch::Sdxl => &[(TextEncoder, "clip_l"), (TextEncoder2, "clip_g")],
        Arch::SdxlRefiner => &[(TextEncoder2, "clip_g")],
        Arch::Sd3 => &[
            (TextEncoder, "clip_l"),
            (TextEncoder2, "clip_g"),
            (TextEncoder3, "t5xxl"),
        ],
        Arch::Flux | Arch::FluxSchnell => &[(TextEncoder, "clip_l"), (TextEncoder2, "t5xxl")],
        // No diffusers names are mapped for the later families (see `require_diffusers`).
        _ => &[],
    }
}

/// [`Error::InvalidInput`] for a family whose diffusers names this crate does not map yet.
///
/// # Errors
/// As said.
pub fn require_diffusers(arch: Arch) -> Result<()> {
    if arch.family().diffusers {
        return Ok(());
    }
    Err(Error::InvalidInput(format!(
        "diffusers names are not mapped for {} ({}) yet; use ComfyUI's names (component files \
         from `split --to comfyui` or `--to nodes`, or a single-file checkpoint)",
        arch,
        arch.family().title
    )))
}

/// The model class of a text-encoder folder of `arch`, `None` for a folder the pipeline lacks.
pub fn encoder_class(arch: Arch, folder: Folder) -> Option<ModelClass> {
    let (_, enc) = encoder_folders(arch).iter().find(|(f, _)| *f == folder)?;
    Some(match (*enc, arch, folder) {
        ("t5xxl", _, _) => ModelClass::T5Encoder,
        // SDXL's OpenCLIP-G and both of SD3's CLIPs feed their pooled projection to the denoiser.
        (_, Arch::Sdxl | Arch::SdxlRefiner, Folder::TextEncoder2) | (_, Arch::Sd3, _) => {
            ModelClass::ClipTextWithProjection
        }
        _ => ModelClass::ClipText,
    })
}

/// The denoiser's folder and class in a pipeline of `arch`.
pub fn denoiser(arch: Arch) -> (Folder, ModelClass) {
    match arch {
        Arch::Sd3 => (Folder::Transformer, ModelClass::Sd3Transformer),
        Arch::Flux | Arch::FluxSchnell => (Folder::Transformer, ModelClass::FluxTransformer),
        _ => (Folder::Unet, ModelClass::Unet),
    }
}

/// One model in ComfyUI naming, made from diffusers tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct ToComfy {
    /// The component its tensors belong to.
    pub kind: ComponentKind,
    /// In-memory tensors, sorted by key; parts name diffusers keys.
    pub tensors: Vec<Assembly>,
    /// In-memory tensors the diffusers model does not carry, with ComfyUI's values.
    pub created: Vec<Created>,
    /// diffusers keys not carried over (buffers and tied copies ComfyUI does not hold).
    pub dropped: Vec<String>,
}

/// diffusers keys of ONE model (one folder or one file) → ComfyUI in-memory keys of its component.
///
/// `encoder` names the text encoder (`clip_l`, `clip_h`, `clip_g`, `t5xxl`) for text-encoder
/// classes and is ignored otherwise. Every source key is used or listed in `dropped`.
///
/// # Errors
/// - [`Error::Conversion`] naming a key no rule maps, a fused tensor whose q/k/v parts are missing
///   or disagree in shape or dtype, or two keys (old and new name) mapping to one tensor;
/// - [`Error::BadShape`] for a tensor whose shape the conversion cannot apply to;
/// - [`Error::InvalidInput`] for an empty model, keys without the blocks the class is built of,
///   or a missing or unfit `encoder` name.
pub fn to_comfy(
    class: ModelClass,
    encoder: Option<&str>,
    keys: &BTreeMap<String, TensorInfo>,
) -> Result<ToComfy> {
    if keys.is_empty() {
        return Err(Error::InvalidInput(format!(
            "no tensors given for the {}",
            class.name()
        )));
    }
    let mut created = Vec::new();
    let (links, drop): (Links, Option<&str>) = match class {
        ModelClass::Unet => (unet::Structure::from_diffusers(keys)?.links(), None),
        ModelClass::Vae => (vae::Structure::from_diffusers(keys)?.links(), None),
        ModelClass::Sd3Transformer => (mmdit::links(mmdit::depth_diffusers(keys)?), None),
        ModelClass::FluxTransformer => (flux::Structure::from_diffusers(keys)?.links(), None),
        ModelClass::ClipText | ModelClass::ClipTextWithProjection => {
            let enc = encoder_name(class, encoder, &text::CLIP_NAMES)?;
            let projection = class == ModelClass::ClipTextWithProjection;
            created.push(text::logit_scale(enc));
            if !projection {
                created.push(text::identity_projection(enc, keys)?);
            }
            let layers = text::clip_layers(keys, None);
            (
                text::clip_links(enc, layers, projection),
                Some(text::POSITION_IDS),
            )
        }
        ModelClass::T5Encoder => {
            let enc = encoder_name(class, encoder, &text::T5_NAMES)?;
            created.push(text::logit_scale(enc));
            (
                text::t5_links(enc, text::t5_blocks(keys, None)),
                Some(text::T5_TIED),
            )
        }
    };
    let (tensors, dropped) = links::apply(
        &links.0,
        Dir::ToComfy,
        keys,
        |k| Some(k) == drop,
        class.name(),
    )?;
    Ok(ToComfy {
        kind: class.kind(),
        tensors,
        created,
        dropped,
    })
}

fn encoder_name<'a>(
    class: ModelClass,
    encoder: Option<&'a str>,
    known: &[&str],
) -> Result<&'a str> {
    match encoder {
        Some(e) if known.contains(&e) => Ok(e),
        _ => Err(Error::InvalidInput(format!(
            "a {} needs the name ComfyUI gives the encoder: one of {}; got {}",
            class.name(),
            known.join(", "),
            encoder.map_or("none".to_string(), |e| format!("`{e}`"))
        ))),
    }
}

/// One diffusers sub-folder made from ComfyUI components.
#[derive(Debug, Clone, PartialEq)]
pub struct FolderPlan {
    /// The sub-folder.
    pub folder: Folder,
    /// The class its weights load into.
    pub class: ModelClass,
    /// Tensors in diffusers names, sorted by key; parts name in-memory keys of the folder's component.
    pub tensors: Vec<Assembly>,
    /// In-memory keys diffusers does not carry.
    pub dropped: Vec<String>,
}

/// ComfyUI in-memory components of `arch` → one plan per diffusers sub-folder: the denoiser's,
/// `vae`, then the text encoders in folder order. A component absent from `shapes` gives no plan;
/// SD3 without `t5xxl` keys gives no `text_encoder_3`.
///
/// `dropped` lists what diffusers does not carry: every `logit_scale` and `position_ids`, the
/// `text_projection` of a CLIP whose diffusers class has none, and SD2's last text-encoder layer
/// (diffusers keeps 23 of OpenCLIP-H's 24 layers: it drops the last whatever the count).
///
/// # Errors
/// [`Error::InvalidInput`] for a family without diffusers names ([`require_diffusers`]), a clip
/// key of no encoder of `arch` or a missing encoder;
/// [`Error::Conversion`] for a key no rule maps; [`Error::BadShape`] for a fused tensor that does
/// not split.
pub fn from_comfy(arch: Arch, shapes: &ComponentShapes) -> Result<Vec<FolderPlan>> {
    require_diffusers(arch)?;
    let mut plans = Vec::new();
    if let Some(model) = shapes.get(ComponentKind::Model) {
        let (folder, class) = denoiser(arch);
        let links = match class {
            ModelClass::Sd3Transformer => mmdit::links(mmdit::depth_comfy(model)?),
            ModelClass::FluxTransformer => flux::Structure::from_comfy(model)?.links(),
            _ => unet::Structure::from_comfy(model)?.links(),
        };
        plans.push(plan(folder, class, links, model, &|_| false)?);
    }
    if let Some(vae) = shapes.get(ComponentKind::Vae) {
        let links = vae::Structure::from_comfy(vae)?.links();
        plans.push(plan(Folder::Vae, ModelClass::Vae, links, vae, &|_| false)?);
    }
    let Some(clip) = shapes.get(ComponentKind::Clip) else {
        return Ok(plans);
    };
    let encoders = encoder_folders(arch);
    if let Some(k) = clip.keys().find(|k| {
        !encoders
            .iter()
            .any(|(_, e)| k.starts_with(&format!("{e}.")))
    }) {
        return Err(Error::InvalidInput(format!(
            "clip tensor `{k}` belongs to no text encoder of {arch} (expected keys starting with {})",
            encoders.iter().map(|(_, e)| format!("`{e}.`")).collect::<Vec<_>>().join(", ")
        )));
    }
    for &(folder, enc) in encoders {
        let keys: BTreeMap<String, TensorInfo> = clip
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{enc}.")))
            .map(|(k, i)| (k.clone(), i.clone()))
            .collect();
        if keys.is_empty() {
            if arch == Arch::Sd3 && enc == "t5xxl" {
                continue;
            }
            return Err(Error::InvalidInput(format!(
                "{arch} needs text encoder `{enc}` (keys `{enc}.…`) in the clip component for {}/",
                folder.name()
            )));
        }
        let Some(class) = encoder_class(arch, folder) else {
            continue;
        };
        let logit = format!("{enc}.logit_scale");
        if class == ModelClass::T5Encoder {
            let links = text::t5_links(enc, text::t5_blocks(&keys, Some(enc)));
            plans.push(plan(folder, class, links, &keys, &|k| k == logit)?);
            continue;
        }
        let p = text::prefix(enc);
        let projection = class == ModelClass::ClipTextWithProjection;
        let layers = text::clip_layers(&keys, Some(enc));
        let last = match (arch, layers) {
            (Arch::Sd2, 1..) => Some(format!("{p}text_model.encoder.layers.{}.", layers - 1)),
            _ => None,
        };
        let (ids, proj) = (
            format!("{p}{}", text::POSITION_IDS),
            format!("{p}{}", text::PROJECTION),
        );
        let drop = |k: &str| {
            k == logit
                || k == ids
                || (!projection && k == proj)
                || last.as_ref().is_some_and(|l| k.starts_with(l.as_str()))
        };
        let links = text::clip_links(enc, layers, projection);
        plans.push(plan(folder, class, links, &keys, &drop)?);
    }
    Ok(plans)
}

fn plan(
    folder: Folder,
    class: ModelClass,
    links: Links,
    keys: &BTreeMap<String, TensorInfo>,
    drop: &dyn Fn(&str) -> bool,
) -> Result<FolderPlan> {
    let (tensors, dropped) = links::apply(&links.0, Dir::FromComfy, keys, drop, class.name())?;
    Ok(FolderPlan {
        folder,
        class,
        tensors,
        dropped,
    })
}
