//! diffusers/transformers tensor names ⇄ ComfyUI's in-memory component names, both directions.
//!
//! A diffusers pipeline folder holds one model per sub-folder (`unet/`, `vae/`, `text_encoder/`…)
//! in diffusers or transformers naming; ComfyUI holds the same weights as three components (model,
//! clip, vae) in LDM/SGM naming. This module maps names and shapes only, for SD1.5, SD2, SDXL,
//! the SDXL refiner, SD3 and Flux, and for the transformers of the later families diffusers has
//! (Wan, Qwen-Image, HiDream, LTX-Video, HunyuanVideo, Lumina 2, Chroma, Flux 2, Z-Image) with
//! Wan's and Qwen-Image's VAE and umT5: which elements of which source tensors make each target tensor
//! ([`Assembly`]), which tensors one side needs and the other lacks ([`Created`], `dropped`), and
//! the JSON configs a folder needs ([`configs`]). Reading and writing bytes is the caller's job.
//!
//! Every conversion is a concatenation of row-major element ranges along dim 0 (q/k/v fusion,
//! half swaps), or a reshape (the autoencoder's 1×1 convolutions), so no transpose is needed.

mod class;
mod config;
mod flux;
mod later;
mod later_config;
mod links;
mod ltx2;
mod mmdit;
mod model_config;
mod text;
mod unet;
mod vae;
mod wan_vae;

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

pub use class::{identify, ModelClass};
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

/// Which in-memory encoder name (`clip_l`, `clip_h`, `clip_g`, `t5xxl`, `umt5xxl`) each
/// text-encoder folder of `arch` holds, for the encoders whose transformers names are mapped
/// (a family's language-model encoders are not: see [`unmapped_encoders`]).
pub fn encoder_folders(arch: Arch) -> &'static [(Folder, &'static str)] {
    use Folder::*;
    match arch {
        Arch::Sd15 => &[(TextEncoder, "clip_l")],
        Arch::Sd2 => &[(TextEncoder, "clip_h")],
        Arch::Sdxl => &[(TextEncoder, "clip_l"), (TextEncoder2, "clip_g")],
        Arch::SdxlRefiner => &[(TextEncoder2, "clip_g")],
        Arch::Sd3 | Arch::HiDream => &[
            (TextEncoder, "clip_l"),
            (TextEncoder2, "clip_g"),
            (TextEncoder3, "t5xxl"),
        ],
        Arch::Flux | Arch::FluxSchnell => &[(TextEncoder, "clip_l"), (TextEncoder2, "t5xxl")],
        Arch::Wan21 | Arch::Wan22 => &[(TextEncoder, "umt5xxl")],
        Arch::Chroma | Arch::Ltxv => &[(TextEncoder, "t5xxl")],
        // HunyuanVideo's `text_encoder` is LLaVA-LLaMA-3 (not mapped), CLIP-L the second.
        Arch::HunyuanVideo => &[(TextEncoder2, "clip_l")],
        _ => &[],
    }
}

/// The text encoders of `arch` a checkpoint may hold whose transformers names this crate does
/// not map (the language models: Qwen2.5-VL, Qwen3, Gemma 2, Llama, Mistral, LLaVA, ByT5).
pub fn unmapped_encoders(arch: Arch) -> Vec<&'static str> {
    let mapped: Vec<&str> = encoder_folders(arch).iter().map(|(_, e)| *e).collect();
    arch.family()
        .encoders()
        .into_iter()
        .filter(|e| !mapped.contains(e))
        .collect()
}

/// Whether component tensor `key` of `arch` has a diffusers/transformers name here: every
/// denoiser tensor, the autoencoder's where [`vae_class`] has one, the text encoders'
/// of [`encoder_folders`] (not the language models, nor tokenizer blobs such as umT5's
/// `spiece_model`, which pipelines keep as tokenizer files).
pub fn is_mapped(arch: Arch, kind: ComponentKind, key: &str) -> bool {
    match kind {
        // LTX-2's text connectors are a diffusers model of their own, not mapped here.
        ComponentKind::Model if arch == Arch::Ltx2 => {
            !ltx2::CONNECTORS.iter().any(|p| key.starts_with(p))
        }
        ComponentKind::Model => true,
        ComponentKind::Vae => vae_class(arch).is_some(),
        ComponentKind::Clip => encoder_folders(arch)
            .iter()
            .any(|(_, e)| key.starts_with(&format!("{e}."))),
        ComponentKind::ClipVision | ComponentKind::AudioVae => false,
    }
}

/// The tensors of `shapes` that have diffusers names here ([`is_mapped`]): what
/// [`from_comfy`] can plan.
pub fn mapped_shapes(arch: Arch, shapes: &ComponentShapes) -> ComponentShapes {
    let mut out = ComponentShapes::default();
    for kind in ComponentKind::ALL {
        let Some(map) = shapes.get(kind) else {
            continue;
        };
        let kept: BTreeMap<String, TensorInfo> = map
            .iter()
            .filter(|(k, _)| is_mapped(arch, kind, k))
            .map(|(k, i)| (k.clone(), i.clone()))
            .collect();
        if !kept.is_empty() {
            out.set(kind, kept);
        }
    }
    out
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
        ("umt5xxl", _, _) => ModelClass::Umt5Encoder,
        // SDXL's OpenCLIP-G and the CLIPs of SD3 and HiDream feed their pooled projection to
        // the denoiser.
        (_, Arch::Sdxl | Arch::SdxlRefiner, Folder::TextEncoder2)
        | (_, Arch::Sd3 | Arch::HiDream, _) => ModelClass::ClipTextWithProjection,
        _ => ModelClass::ClipText,
    })
}

/// The denoiser's folder and class in a pipeline of `arch`.
pub fn denoiser(arch: Arch) -> (Folder, ModelClass) {
    use ModelClass::*;
    let class = match arch {
        Arch::Sd15 | Arch::Sd2 | Arch::Sdxl | Arch::SdxlRefiner => return (Folder::Unet, Unet),
        Arch::Sd3 => Sd3Transformer,
        Arch::Flux | Arch::FluxSchnell => FluxTransformer,
        Arch::Wan21 | Arch::Wan22 => WanTransformer,
        // Qwen-Image 2.1 has no diffusers names here (the mirrored diffusers has no
        // `QwenImage21Transformer2DModel`; `require_diffusers` refuses it).
        Arch::QwenImage | Arch::QwenImage21 => QwenImageTransformer,
        Arch::HiDream => HiDreamTransformer,
        Arch::Chroma => ChromaTransformer,
        Arch::Lumina2 => Lumina2Transformer,
        Arch::Flux2 => Flux2Transformer,
        Arch::ZImage => ZImageTransformer,
        Arch::HunyuanVideo | Arch::HunyuanVideo15 => HunyuanVideoTransformer,
        Arch::Ltxv => LtxTransformer,
        Arch::Ltx2 => Ltx2Transformer,
    };
    (Folder::Transformer, class)
}

/// The autoencoder's class in a pipeline of `arch`, `None` where its diffusers names are not
/// mapped (Wan 2.2's 48-channel VAE, which diffusers' converter does not read; LTX-Video's and
/// LTX-2's, whose converters drop ComfyUI's other per-channel statistics; Flux 2's and
/// HunyuanVideo's, which diffusers has no converter for).
pub fn vae_class(arch: Arch) -> Option<ModelClass> {
    match arch {
        Arch::Wan21 => Some(ModelClass::WanVae),
        Arch::QwenImage => Some(ModelClass::QwenImageVae),
        Arch::Wan22
        | Arch::Ltxv
        | Arch::Ltx2
        | Arch::Flux2
        | Arch::HunyuanVideo
        | Arch::HunyuanVideo15 => None,
        _ => Some(ModelClass::Vae),
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
        ModelClass::T5Encoder | ModelClass::Umt5Encoder => {
            let enc = encoder_name(class, encoder, &text::T5_NAMES)?;
            created.push(text::logit_scale(enc));
            (
                text::t5_links(enc, text::t5_blocks(keys, None)),
                Some(text::T5_TIED),
            )
        }
        c => {
            created.extend(later::created(c, keys));
            let width = later::width(c, keys, false)?;
            (later::links(c, std::iter::empty(), width), None)
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
            ModelClass::Unet => unet::Structure::from_comfy(model)?.links(),
            c => later::links(c, model.keys(), later::width(c, model, true)?),
        };
        plans.push(plan(folder, class, links, model, &|k| {
            later::dropped(class, k)
        })?);
    }
    if let Some(vae) = shapes.get(ComponentKind::Vae) {
        let (class, links) = match vae_class(arch) {
            Some(ModelClass::Vae) => (ModelClass::Vae, vae::Structure::from_comfy(vae)?.links()),
            Some(c) => (c, later::links(c, vae.keys(), 0)),
            None => {
                return Err(Error::InvalidInput(format!(
                    "the diffusers names of {arch}'s autoencoder ({}) are not mapped; split \
                     a checkpoint without it (the denoiser alone: `split --to nodes` writes \
                     it), or keep ComfyUI's names",
                    arch.family().vae.title()
                )))
            }
        };
        plans.push(plan(Folder::Vae, class, links, vae, &|_| false)?);
    }
    let Some(clip) = shapes.get(ComponentKind::Clip) else {
        return Ok(plans);
    };
    let encoders = encoder_folders(arch);
    let tokenizers = arch.family().tokenizer_keys();
    let unmapped = unmapped_encoders(arch);
    if let Some(k) = clip.keys().find(|k| {
        !tokenizers.contains(&k.as_str())
            && !encoders
                .iter()
                .any(|(_, e)| k.starts_with(&format!("{e}.")))
    }) {
        if let Some(e) = unmapped.iter().find(|e| k.starts_with(&format!("{e}."))) {
            return Err(Error::InvalidInput(format!(
                "{arch}'s text encoder `{e}` (`{k}`…) has no transformers names in this tool; \
                 split a checkpoint without it (`split --to nodes` writes the denoiser, the \
                 VAE and each text encoder as files of their own), or keep ComfyUI's names"
            )));
        }
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
        if matches!(class, ModelClass::T5Encoder | ModelClass::Umt5Encoder) {
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
