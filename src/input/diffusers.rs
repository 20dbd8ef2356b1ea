//! Inputs in diffusers/transformers names: a pipeline folder (`model_index.json`, one sub-folder
//! per model), single model files or folders, and maps of candle tensors a candle-transformers
//! program holds. The names are converted by [`crate::layout::diffusers`]; the bytes stay where
//! they are (files, device memory) until the checkpoint is written.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::Value;

use super::files::{open_set, TensorSet};
use super::{Input, InputLayout};
use crate::error::{Error, IoContext, Result};
use crate::layout::detect;
use crate::layout::diffusers::{
    denoiser, encoder_folders, identify, prediction_from_scheduler, require_diffusers, to_comfy,
    vae_class, Assembly, Created, Folder, ModelClass,
};
use crate::model::dtype::candle_dtype;
use crate::model::{
    Arch, ComponentKind, Components, InputMap, InputTensor, IntoTensorMap, TensorInfo,
};
use crate::split::AUDIO_VAE_FILE;

/// One model converted to ComfyUI names: its component's tensors, and what the conversion made
/// up or left out.
pub(super) struct Converted {
    pub tensors: InputMap,
    pub created: Vec<String>,
    pub dropped: Vec<String>,
}

/// transformers 5 saves `CLIPTextModel` without the `text_model.` prefix that
/// `CLIPTextModelWithProjection` (and every earlier version) keeps: the names with it.
pub(super) fn with_text_model_prefix<T: Clone>(keys: &BTreeMap<String, T>) -> BTreeMap<String, T> {
    let bare = keys.contains_key("embeddings.token_embedding.weight")
        && !keys.contains_key("text_model.embeddings.token_embedding.weight");
    if !bare {
        return keys.clone();
    }
    keys.iter()
        .map(|(k, v)| {
            let k = if k == "text_projection.weight" {
                k.clone()
            } else {
                format!("text_model.{k}")
            };
            (k, v.clone())
        })
        .collect()
}

/// Builds the in-memory tensors of `assemblies` from the source tensors `get` names.
fn assemble(
    assemblies: &[Assembly],
    created: &[Created],
    get: impl Fn(&str) -> Option<InputTensor>,
) -> Result<InputMap> {
    let mut out = InputMap::new();
    for a in assemblies {
        let parts = a
            .parts
            .iter()
            .map(|p| {
                let t = get(&p.key).ok_or_else(|| Error::Conversion {
                    key: a.key.clone(),
                    reason: format!("its source `{}` is missing", p.key),
                })?;
                Ok((t, p.elements.clone()))
            })
            .collect::<Result<Vec<_>>>()?;
        out.insert(
            a.key.clone(),
            InputTensor::joined(&a.key, parts, a.shape.clone())?,
        );
    }
    for c in created {
        out.insert(c.key.clone(), InputTensor::Candle(created_tensor(c)?));
    }
    Ok(out)
}

/// A created tensor (the value ComfyUI would hold) as a small CPU tensor.
fn created_tensor(c: &Created) -> Result<Tensor> {
    let d = candle_dtype(c.info.dtype).ok_or_else(|| Error::UnsupportedDtype {
        dtype: c.info.dtype.to_string(),
        hint: format!("cannot make `{}`", c.key),
    })?;
    Ok(Tensor::from_raw_buffer(
        &c.bytes,
        d,
        &c.info.shape,
        &Device::Cpu,
    )?)
}

/// One model's tensors (from files) in ComfyUI names; `encoder` names a text encoder.
pub(super) fn convert_set(
    set: &TensorSet,
    class: ModelClass,
    encoder: Option<&str>,
) -> Result<Converted> {
    let sources: BTreeMap<String, InputTensor> = with_text_model_prefix(&set.tensors);
    let infos: BTreeMap<String, TensorInfo> =
        sources.iter().map(|(k, t)| (k.clone(), t.info())).collect();
    let tc = to_comfy(class, encoder, &infos).map_err(|e| within(&set.path, e))?;
    let tensors = assemble(&tc.tensors, &tc.created, |k| sources.get(k).cloned())?;
    Ok(Converted {
        tensors,
        created: tc.created.iter().map(|c| c.key.clone()).collect(),
        dropped: tc.dropped,
    })
}

/// The model class of a set in diffusers/transformers names.
pub(super) fn class_of(set: &TensorSet) -> Result<ModelClass> {
    identify(&with_text_model_prefix(&set.infos())).map_err(|e| within(&set.path, e))
}

fn within(path: &Path, e: Error) -> Error {
    match e {
        Error::InvalidInput(m) => Error::InvalidInput(format!("{}: {m}", path.display())),
        other => other,
    }
}

/// The in-memory text encoder a diffusers text model is, from its width where that is a
/// released model's, else from its place among the architecture's encoders.
pub(super) fn encoder_name(
    infos: &BTreeMap<String, TensorInfo>,
    class: ModelClass,
) -> Option<&'static str> {
    if class == ModelClass::T5Encoder {
        return Some("t5xxl");
    }
    let width = with_text_model_prefix(infos)
        .get("text_model.embeddings.token_embedding.weight")
        .and_then(|i| i.shape.get(1).copied())?;
    match width {
        768 => Some("clip_l"),
        1024 => Some("clip_h"),
        1280 => Some("clip_g"),
        _ => None,
    }
}

/// The sub-folders `model_index.json` names, with their library and class (`null` entries,
/// such as a missing tokenizer or safety checker, are left out).
fn listed(index: &Value) -> BTreeMap<String, String> {
    index
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !k.starts_with('_'))
        .filter_map(|(k, v)| {
            let class = v.as_array()?.get(1)?.as_str()?;
            Some((k.clone(), class.to_string()))
        })
        .collect()
}

/// A diffusers pipeline folder: the denoiser, VAE and text encoders the architecture needs.
///
/// # Errors
/// [`Error::InvalidInput`] for a folder that is not a pipeline (no `model_index.json`) or lacks
/// a sub-folder the architecture needs (named); every error of reading and converting the
/// sub-folders.
pub(super) fn open_pipeline(dir: &Path, arch: Option<Arch>) -> Result<Input> {
    let index_path = dir.join("model_index.json");
    let index: Value =
        match std::fs::read_to_string(&index_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                Error::InvalidInput(format!("{} is not valid JSON: {e}", index_path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let found: Vec<String> = std::fs::read_dir(dir)
                    .ctx(|| format!("cannot list {}", dir.display()))?
                    .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect();
                return Err(Error::InvalidInput(format!(
                "{} is not a diffusers pipeline folder: model_index.json is missing (found: {}); \
                 give a pipeline folder, a single-file checkpoint, or the component files with \
                 --model/--clip/--vae",
                dir.display(),
                if found.is_empty() { "nothing".into() } else { found.join(", ") }
            )));
            }
            Err(e) => {
                return Err(Error::io(
                    format!("cannot read {}", index_path.display()),
                    e,
                ))
            }
        };
    let listed = listed(&index);
    let open = |folder: Folder| -> Result<TensorSet> {
        let sub = dir.join(folder.name());
        if !sub.is_dir() {
            return Err(Error::InvalidInput(format!(
                "{} is not a complete pipeline: {}/ is missing (model_index.json lists {})",
                dir.display(),
                folder.name(),
                listed.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        open_set(&sub)
    };
    // The denoiser decides the architecture (unless given).
    let denoiser_folder = if dir.join("transformer").is_dir() {
        Folder::Transformer
    } else {
        Folder::Unet
    };
    let model_set = open(denoiser_folder)?;
    let model_class = class_of(&model_set)?;
    let model = convert_set(&model_set, model_class, None)?;
    let arch = match arch {
        Some(a) => a,
        None => detect::detect_model(
            &model
                .tensors
                .iter()
                .map(|(k, t)| (k.clone(), t.info()))
                .collect(),
        )?,
    };
    require_diffusers(arch)?;
    if denoiser(arch).1 != model_class {
        return Err(Error::InvalidInput(format!(
            "{}/{} holds a {}, which {arch} does not use",
            dir.display(),
            denoiser_folder.name(),
            model_class.name()
        )));
    }
    let mut bytes = model_set.bytes;
    let mut created = model.created;
    let mut left_out: Vec<String> = model
        .dropped
        .iter()
        .map(|k| format!("{}/{k}", denoiser_folder.name()))
        .collect();
    let mut components = Components::default();
    components.set_inputs(ComponentKind::Model, model.tensors);
    refuse_unmapped(dir, arch, &listed)?;
    // What a split wrote in ComfyUI's names beside the diffusers models (`split::UNMAPPED`).
    let unmapped = |what: &str| -> Result<Vec<std::path::PathBuf>> {
        let sub = dir.join(crate::split::UNMAPPED).join(what);
        if !sub.is_dir() {
            return Ok(Vec::new());
        }
        let mut files: Vec<_> = std::fs::read_dir(&sub)
            .ctx(|| format!("cannot list {}", sub.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        Ok(files)
    };
    // Denoiser tensors diffusers keeps in a model of their own (LTX-2's text connectors).
    let comfy_model = unmapped("diffusion_models")?;
    if !comfy_model.is_empty() {
        let c = super::open_component(ComponentKind::Model, &comfy_model, Some(arch))?;
        bytes += c.bytes;
        let mut model = components.take(ComponentKind::Model).unwrap_or_default();
        for (k, t) in c.tensors {
            if model.insert(k.clone(), t).is_some() {
                return Err(Error::InvalidInput(format!(
                    "{}: the denoiser tensor `{k}` is both in the diffusers model and under `{}/`",
                    dir.display(),
                    crate::split::UNMAPPED
                )));
            }
        }
        components.set_inputs(ComponentKind::Model, model);
    }
    // An audio VAE (LTX-2's) beside the VAE, in the file ComfyUI's audio VAE loaders read.
    let (comfy_audio, comfy_vae): (Vec<_>, Vec<_>) = unmapped("vae")?.into_iter().partition(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(AUDIO_VAE_FILE))
    });
    if !comfy_audio.is_empty() {
        let c = super::open_component(ComponentKind::AudioVae, &comfy_audio, Some(arch))?;
        bytes += c.bytes;
        components.set_inputs(ComponentKind::AudioVae, c.tensors);
    }
    if !dir.join("vae").is_dir() && !comfy_vae.is_empty() {
        let c = super::open_component(ComponentKind::Vae, &comfy_vae, Some(arch))?;
        bytes += c.bytes;
        components.set_inputs(ComponentKind::Vae, c.tensors);
    } else {
        let vae_set = open(Folder::Vae)?;
        let vae_class = class_of(&vae_set)?;
        if vae_class.kind() != ComponentKind::Vae {
            return Err(Error::InvalidInput(format!(
                "{}/vae holds a {}, not an autoencoder",
                dir.display(),
                vae_class.name()
            )));
        }
        let vae = convert_set(&vae_set, vae_class, None)?;
        bytes += vae_set.bytes;
        components.set_inputs(ComponentKind::Vae, vae.tensors);
    }
    let mut clip = InputMap::new();
    let comfy_clip = unmapped("clip")?;
    if !comfy_clip.is_empty() {
        let c = super::open_component(ComponentKind::Clip, &comfy_clip, Some(arch))?;
        bytes += c.bytes;
        clip.extend(c.tensors);
    }
    for &(folder, enc) in encoder_folders(arch) {
        // SD3 runs without its T5; so may a pipeline saved without it.
        if arch == Arch::Sd3 && enc == "t5xxl" && !dir.join(folder.name()).is_dir() {
            continue;
        }
        let set = open(folder)?;
        let class = class_of(&set)?;
        let c = convert_set(&set, class, Some(enc))?;
        bytes += set.bytes;
        created.extend(c.created);
        left_out.extend(c.dropped.iter().map(|k| format!("{}/{k}", folder.name())));
        clip.extend(c.tensors);
    }
    components.set_inputs(ComponentKind::Clip, clip);
    let scheduler = dir.join("scheduler/scheduler_config.json");
    let prediction = match std::fs::read_to_string(&scheduler) {
        Ok(text) => {
            let json: Value = serde_json::from_str(&text).map_err(|e| {
                Error::InvalidInput(format!("{} is not valid JSON: {e}", scheduler.display()))
            })?;
            prediction_from_scheduler(&json)
        }
        Err(_) => None,
    };
    Ok(Input {
        components,
        arch: Some(arch),
        prediction,
        prediction_stated: prediction.is_some(),
        layout: InputLayout::Diffusers,
        metadata: BTreeMap::new(),
        left_out,
        created,
        bytes,
    })
}

/// Refuses a pipeline folder holding a model whose names are not mapped for `arch` (a language
/// model text encoder, an autoencoder diffusers' converters do not read): converting without
/// it would drop it unsaid.
fn refuse_unmapped(dir: &Path, arch: Arch, listed: &BTreeMap<String, String>) -> Result<()> {
    let mapped = encoder_folders(arch);
    let mut folders: Vec<String> = [
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
        "text_encoder_4",
    ]
    .into_iter()
    .filter(|f| dir.join(f).is_dir() && !mapped.iter().any(|(m, _)| m.name() == *f))
    .map(str::to_string)
    .collect();
    if vae_class(arch).is_none() && dir.join("vae").is_dir() {
        folders.push("vae".into());
    }
    let Some(first) = folders.first() else {
        return Ok(());
    };
    let class = listed.get(first).map_or("its model", String::as_str);
    Err(Error::InvalidInput(format!(
        "{}/{first} holds {class}, whose names this tool does not map for {arch}; convert the \
         parts it maps with `save --model {0}/transformer --vae FILE --clip FILE …`, giving the \
         other components as ComfyUI files (`split --to nodes` writes them)",
        dir.display()
    )))
}

/// The models a candle-transformers program holds in diffusers names (the `unet`, `vae` and
/// text encoders its `stable_diffusion` module loads), renamed into the components
/// [`crate::save`] takes. The tensors stay where they are (any device): only names change, and
/// fused or reshaped tensors are views of them. Text encoders are named by their folder
/// ([`Folder::TextEncoder`] …) as in a pipeline of `arch`; `logit_scale` (which diffusers does not
/// carry) gets ComfyUI's default value.
///
/// # Errors
/// [`Error::InvalidInput`] for no models, a folder given twice, a model's names that fit no
/// diffusers class, or a model in a folder that does not hold its kind in a pipeline of `arch`
/// (a denoiser outside `arch`'s `unet/` or `transformer/`, an autoencoder outside `vae/`, a text
/// encoder in a folder `arch` has none in); conversion errors naming the tensor.
pub fn from_diffusers<M: IntoTensorMap>(
    arch: Arch,
    models: Vec<(Folder, M)>,
) -> Result<Components> {
    if models.is_empty() {
        return Err(Error::InvalidInput(
            "no models given: a pipeline's components are at least its denoiser".into(),
        ));
    }
    let mut components = Components::default();
    let mut clip = InputMap::new();
    let mut seen = Vec::with_capacity(models.len());
    for (folder, tensors) in models {
        if seen.contains(&folder) {
            return Err(Error::InvalidInput(format!(
                "{}/ is given twice; give each folder's model once",
                folder.name()
            )));
        }
        seen.push(folder);
        let tensors = with_text_model_prefix(&tensors.into_tensor_map());
        let infos: BTreeMap<String, TensorInfo> = tensors
            .iter()
            .map(|(k, t)| (k.clone(), InputTensor::Candle(t.clone()).info()))
            .collect();
        let class = identify(&infos)?;
        let encoder = encoder_folders(arch)
            .iter()
            .find(|(f, _)| *f == folder)
            .map(|(_, e)| *e);
        let (denoiser_folder, _) = crate::layout::diffusers::denoiser(arch);
        let misplaced = match class.kind() {
            ComponentKind::Clip => encoder.is_none(),
            ComponentKind::Vae => folder != Folder::Vae,
            _ => folder != denoiser_folder,
        };
        if misplaced {
            return Err(Error::InvalidInput(format!(
                "the model given as {}/ is a {class:?} ({}), which a pipeline of {arch} does not \
                 hold there; give it as {}/",
                folder.name(),
                class.kind().name(),
                match class.kind() {
                    ComponentKind::Clip => "one of its text_encoder folders".to_string(),
                    ComponentKind::Vae => "vae".to_string(),
                    _ => denoiser_folder.name().to_string(),
                }
            )));
        }
        let tc = to_comfy(class, encoder, &infos)?;
        let map = assemble(&tc.tensors, &tc.created, |k| {
            tensors.get(k).cloned().map(InputTensor::Candle)
        })?;
        match tc.kind {
            ComponentKind::Clip => clip.extend(map),
            kind => components.set_inputs(kind, map),
        }
    }
    if !clip.is_empty() {
        components.set_inputs(ComponentKind::Clip, clip);
    }
    Ok(components)
}
