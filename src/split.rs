//! Split: a checkpoint back into its parts, streamed like every job — component files in
//! ComfyUI's in-memory names (what `save --model --clip --vae` reads back), or a diffusers
//! pipeline folder (what diffusers and candle-transformers load).
//!
//! The parts are written into a temporary folder next to a new output folder, which is renamed into
//! place once every file is complete, or inside an existing empty output folder (kept, with its
//! owner, mode and mount), whose parts are then moved up into it: a failed split leaves no partial
//! output behind, and the staging folder a killed one leaves is removed by the next save or split
//! into the folder that holds it (the rule of temporary files, `publish::temp`).

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use crate::component_files::clipsave_files;
use crate::error::{Error, IoContext, Result};
use crate::gguf_text::TextArch;
use crate::input::Input;
use crate::layout::diffusers::{configs, from_comfy, is_mapped};
use crate::layout::{GenericPrefixes, UNET_PREFIX};
use crate::model::{ComponentKind, Components, InputMap, InputTensor, Prediction};
use crate::plan::gguf_target::GgufTarget;
use crate::plan::metadata::{self, MetadataOptions};
use crate::save::{save_to_path, LayoutChoice, SaveOptions};
use crate::{save_gguf_text, save_gguf_to_path};
use staging::staged;

mod staging;

/// What a split writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SplitTarget {
    /// `model.safetensors`, `clip.safetensors`, `vae.safetensors` in ComfyUI's in-memory names.
    #[default]
    Comfyui,
    /// A diffusers pipeline folder: `model_index.json`, the scheduler's config, and one folder per
    /// model with its `config.json` and weights.
    Diffusers,
    /// The files ComfyUI's separate save nodes write and its separate loaders read:
    /// `diffusion_models/ComfyUI_00001_.safetensors` (ModelSave), `clip/ComfyUI_<encoder>_00001_…`
    /// (CLIPSave, one per text encoder) and `vae/ComfyUI_vae_00001_.safetensors` (VAESave);
    /// an audio VAE (LTX-2's) as `vae/ComfyUI_audio_vae_00001_.safetensors` in the names and
    /// with the `config` metadata ComfyUI's audio VAE loaders read.
    Nodes,
}

impl std::str::FromStr for SplitTarget {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "comfyui" | "comfy" => Ok(SplitTarget::Comfyui),
            "diffusers" => Ok(SplitTarget::Diffusers),
            "nodes" | "comfyui-nodes" => Ok(SplitTarget::Nodes),
            _ => Err(Error::InvalidInput(format!(
                "unknown split target `{s}`; choose comfyui, nodes or diffusers"
            ))),
        }
    }
}

/// What a split wrote.
#[derive(Debug, Clone)]
pub struct Split {
    /// Every file written, under the output folder.
    pub files: Vec<PathBuf>,
    /// Component keys the target does not carry (diffusers: CLIP `logit_scale`, SD2's last
    /// text-encoder layer, projections its classes lack).
    pub dropped: Vec<String>,
    /// Bytes of tensor data written.
    pub bytes: u64,
}

/// Writes the parts of `input` into `out_dir`, which must not exist or be empty.
///
/// `opts` gives the writer's settings, dtypes, cancellation and progress; its layout, prefix and
/// output folder are not used.
///
/// # Errors
/// [`Error::InvalidInput`] when `out_dir` holds files, or the architecture (needed for a diffusers
/// folder) is unknown; conversion, read and write errors. On any error the output folder is left
/// as it was.
pub fn split(input: &Input, out_dir: &Path, to: SplitTarget, opts: &SaveOptions) -> Result<Split> {
    staged(out_dir, |dir| match to {
        SplitTarget::Comfyui => comfyui_files(input, dir, opts),
        SplitTarget::Diffusers => diffusers_folder(input, dir, opts),
        SplitTarget::Nodes => node_files(input, dir, opts, None),
    })
}

/// [`split`] into the files of ComfyUI's separate save nodes ([`SplitTarget::Nodes`]), the
/// denoiser and the text encoders ComfyUI-GGUF reads as GGUF files of `target`, where
/// ComfyUI-GGUF's loaders read them: `diffusion_models/ComfyUI_00001_.gguf` (as
/// [`crate::save_gguf`] writes it) and `text_encoders/ComfyUI_<encoder>_00001_.gguf` (as
/// [`crate::save_gguf_text`]); the other text encoders (CLIP, Gemma …) as CLIPSave files in
/// `clip/`, the autoencoder as VAESave's file in `vae/`.
///
/// # Errors
/// As [`split`], and a denoiser of the generic layout (a GGUF file names its architecture).
pub fn split_gguf(
    input: &Input,
    out_dir: &Path,
    target: &GgufTarget,
    opts: &SaveOptions,
) -> Result<Split> {
    staged(out_dir, |dir| node_files(input, dir, opts, Some(target)))
}

/// Save options that write `map` under its own names, with only the writer's settings of `opts`.
fn plain(opts: &SaveOptions, extra: &[(&str, &str)]) -> SaveOptions {
    let mut o = SaveOptions {
        layout: LayoutChoice::plain(),
        prediction: Some(Prediction::Flow),
        ..opts.clone()
    };
    o.metadata.disable = true;
    o.metadata.provenance = false;
    o.metadata.extra = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    o
}

fn as_component(kind: ComponentKind, map: &InputMap) -> Components {
    let mut c = Components::default();
    c.set_inputs(kind, map.clone());
    c
}

/// The text encoders of a clip component that ComfyUI-GGUF reads from GGUF (with the
/// `spiece_model` of a T5 and the `tekken_model` of Mistral 3 among them), and the rest.
fn gguf_text_encoders(clip: InputMap) -> (InputMap, InputMap) {
    let gguf = |enc: &str| TextArch::of_encoder(enc).is_ok();
    let t5 = clip.keys().any(|k| {
        k.split_once('.')
            .is_some_and(|(e, _)| gguf(e) && TextArch::of_encoder(e).is_ok_and(TextArch::is_t5))
    });
    let mistral = clip.keys().any(|k| k.starts_with("mistral3_24b."));
    clip.into_iter()
        .partition(|(k, _)| match k.split_once('.') {
            Some((e, _)) => gguf(e),
            None => (t5 && k == "spiece_model") || (mistral && k == "tekken_model"),
        })
}

fn as_model(map: InputMap) -> Components {
    let mut c = Components::default();
    c.set_inputs(ComponentKind::Model, map);
    c
}

fn comfyui_files(input: &Input, dir: &Path, opts: &SaveOptions) -> Result<Split> {
    let mut split = Split {
        files: Vec::new(),
        dropped: Vec::new(),
        bytes: 0,
    };
    for (kind, map) in input.components.iter() {
        let path = dir.join(format!("{}.safetensors", kind.name()));
        // The audio VAE's file keeps the metadata its loaders read (LTX-2's `config`).
        let carried = match kind {
            ComponentKind::AudioVae => audio_release(input).carried_metadata(&input.metadata),
            _ => BTreeMap::new(),
        };
        let extra: Vec<(&str, &str)> = carried
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let saved = save_to_path(&as_model(map.clone()), &path, &plain(opts, &extra))?;
        split.bytes += saved.bytes;
        split.files.push(saved.path);
    }
    Ok(split)
}

/// What ComfyUI's ModelSave, CLIPSave and VAESave write from the components (see
/// [`crate::component_files`]), each as a first save into an empty output folder; with `gguf`,
/// the denoiser and the text encoders ComfyUI-GGUF reads as GGUF files (see [`split_gguf`]).
fn node_files(
    input: &Input,
    dir: &Path,
    opts: &SaveOptions,
    gguf: Option<&GgufTarget>,
) -> Result<Split> {
    let mut split = Split {
        files: Vec::new(),
        dropped: Vec::new(),
        bytes: 0,
    };
    let arch = input.arch;
    let prediction = input
        .prediction
        .unwrap_or_else(|| arch.map_or(Prediction::Unknown, |a| a.default_prediction()));
    let node = |prefix: &str, prediction: Prediction, extra: BTreeMap<String, String>| {
        let mut o = SaveOptions {
            layout: LayoutChoice::Generic(GenericPrefixes {
                model: prefix.to_string(),
                clip: String::new(),
                vae: String::new(),
                clip_vision: String::new(),
            }),
            prediction: Some(prediction),
            ..opts.clone()
        };
        o.metadata.disable = false;
        o.metadata.extra = extra;
        o
    };
    let mut clip = input.components.get(ComponentKind::Clip).cloned();
    if let Some(target) = gguf {
        if let Some(model) = input.components.get(ComponentKind::Model) {
            let arch = arch.ok_or_else(|| {
                Error::InvalidInput(
                    "a GGUF denoiser names its architecture; this checkpoint has the generic \
                     layout (give --arch)"
                        .into(),
                )
            })?;
            let o = SaveOptions {
                layout: LayoutChoice::Arch(arch),
                ..opts.clone()
            };
            let path = dir.join("diffusion_models/ComfyUI_00001_.gguf");
            let saved = save_gguf_to_path(
                &as_component(ComponentKind::Model, model),
                &path,
                target.clone(),
                &o,
            )?;
            split.bytes += saved.bytes;
            split.files.push(saved.path);
        }
        if let Some(all) = clip.take() {
            let (text, rest) = gguf_text_encoders(all);
            if !text.is_empty() {
                let o = SaveOptions {
                    output_dir: dir.to_path_buf(),
                    prefix: "text_encoders/ComfyUI".into(),
                    ..opts.clone()
                };
                for saved in save_gguf_text(
                    &as_component(ComponentKind::Clip, &text),
                    target.clone(),
                    &o,
                )? {
                    split.bytes += saved.bytes;
                    split.files.push(saved.path);
                    split.dropped.extend(saved.dropped.into_iter().map(|d| d.1));
                }
            }
            clip = (!rest.is_empty()).then_some(rest);
        }
    }
    let mut write = |map: &InputMap, file: &str, o: &SaveOptions| -> Result<()> {
        let saved = save_to_path(&as_model(map.clone()), &dir.join(file), o)?;
        split.bytes += saved.bytes;
        split.files.push(saved.path);
        Ok(())
    };
    if let (Some(model), None) = (input.components.get(ComponentKind::Model), gguf) {
        // ModelSave is Save Checkpoint without text encoders and VAE: same prefix, markers and
        // modelspec (its title is that of the first file, `ComfyUI 1`).
        let prefix = arch.map_or(UNET_PREFIX, |a| a.family().prefixes.model);
        let modelspec = metadata::build(
            arch,
            prediction,
            "ComfyUI 1",
            &MetadataOptions {
                disable: true,
                provenance: false,
                ..MetadataOptions::default()
            },
        );
        let o = node(prefix, prediction, modelspec);
        write(model, "diffusion_models/ComfyUI_00001_.safetensors", &o)?;
    }
    if let Some(clip) = &clip {
        let format = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let o = node("", Prediction::Unknown, format);
        for (enc, file) in clipsave_files(clip) {
            let name = match enc {
                Some(e) => format!("clip/ComfyUI_{e}_00001_.safetensors"),
                None => "clip/ComfyUI_00001_.safetensors".to_string(),
            };
            write(&file, &name, &o)?;
        }
    }
    if let Some(vae) = input.components.get(ComponentKind::Vae) {
        let o = node("", Prediction::Unknown, BTreeMap::new());
        write(vae, "vae/ComfyUI_vae_00001_.safetensors", &o)?;
    }
    if let Some(audio) = input.components.get(ComponentKind::AudioVae) {
        // The file ComfyUI's audio VAE loaders read from `vae/` (`LTXVAudioVAELoader`, and
        // `VAELoader` by its vocoder keys): the release's names and the `config` they build
        // the model from.
        let release = audio_release(input);
        let mut named = InputMap::new();
        for (k, t) in audio {
            let file = release.audio_file_key(k).ok_or_else(|| Error::Conversion {
                key: k.clone(),
                reason: "an audio VAE tensor is named `autoencoder.…` or `vocoder.…`".into(),
            })?;
            named.insert(file, t.clone());
        }
        let o = node(
            "",
            Prediction::Unknown,
            release.carried_metadata(&input.metadata),
        );
        write(
            &named,
            &format!("vae/{AUDIO_VAE_FILE}00001_.safetensors"),
            &o,
        )?;
    }
    Ok(split)
}

/// The release whose audio VAE `input` holds: its family's, else LTX-2's (a generic layout).
fn audio_release(input: &Input) -> &'static crate::family::Release {
    input
        .arch
        .and_then(|a| a.family().release)
        .unwrap_or(&crate::family::release::LTX2)
}

/// A diffusers pipeline folder of the components' diffusers names; what has none here (a
/// family's language-model text encoders, tokenizer blobs, an autoencoder diffusers' converters
/// do not read) is written beside it as ComfyUI's separate save nodes write it, under
/// `comfyui/` (see [`node_files`]), so the folder holds every tensor and `convert` reads it back.
fn diffusers_folder(input: &Input, dir: &Path, opts: &SaveOptions) -> Result<Split> {
    let arch = input.arch.ok_or_else(|| {
        Error::InvalidInput(
            "a diffusers folder needs a known architecture; this checkpoint has the generic \
             layout (give --arch)"
                .into(),
        )
    })?;
    let prediction = input
        .prediction
        .unwrap_or_else(|| arch.default_prediction());
    let (mapped, rest) = partition(input, |kind, key| is_mapped(arch, kind, key));
    let shapes = mapped.components.shapes();
    let mut split = Split {
        files: Vec::new(),
        dropped: Vec::new(),
        bytes: 0,
    };
    if rest.components.iter().next().is_some() {
        let unmapped = node_files(&rest, &dir.join(UNMAPPED), opts, None)?;
        split.bytes += unmapped.bytes;
        split.files.extend(unmapped.files);
    }
    let input = &mapped;
    for plan in from_comfy(arch, &shapes)? {
        let component = input.components.get(plan.class.kind()).ok_or_else(|| {
            Error::InvalidInput(format!(
                "the checkpoint has no {} component",
                plan.class.kind()
            ))
        })?;
        let mut map = InputMap::new();
        for a in &plan.tensors {
            let parts = a
                .parts
                .iter()
                .map(|p| {
                    let t = component.get(&p.key).ok_or_else(|| Error::Conversion {
                        key: a.key.clone(),
                        reason: format!("its source `{}` is missing", p.key),
                    })?;
                    Ok((t.clone(), p.elements.clone()))
                })
                .collect::<Result<Vec<_>>>()?;
            map.insert(
                a.key.clone(),
                InputTensor::joined(&a.key, parts, a.shape.clone())?,
            );
        }
        let path = dir.join(plan.folder.name()).join(plan.class.weights_file());
        let saved = save_to_path(&as_model(map), &path, &plain(opts, &[("format", "pt")]))?;
        split.bytes += saved.bytes;
        split.files.push(saved.path);
        split.dropped.extend(
            plan.dropped
                .iter()
                .map(|k| format!("{}/{k}", plan.folder.name())),
        );
    }
    for (rel, json) in configs(arch, &shapes, prediction)? {
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .ctx(|| format!("cannot create {}", parent.display()))?;
        }
        let text = serde_json::to_string_pretty(&json)
            .map_err(|e| Error::InvalidInput(format!("cannot encode {rel}: {e}")))?;
        std::fs::write(&path, text + "\n").ctx(|| format!("cannot write {}", path.display()))?;
        split.files.push(path);
    }
    Ok(split)
}

/// The start of the name of the audio VAE's file in `vae/` (see [`SplitTarget::Nodes`]).
pub const AUDIO_VAE_FILE: &str = "ComfyUI_audio_vae_";

/// The sub-folder of a diffusers split that holds, as ComfyUI's save nodes write them, the
/// tensors that have no diffusers names here.
pub const UNMAPPED: &str = "comfyui";

/// `input` as two inputs: the tensors `keep` takes, and the others.
fn partition(input: &Input, keep: impl Fn(ComponentKind, &str) -> bool) -> (Input, Input) {
    let (mut yes, mut no) = (Components::default(), Components::default());
    for (kind, map) in input.components.iter() {
        let (a, b): (InputMap, InputMap) = map
            .iter()
            .map(|(k, t)| (k.clone(), t.clone()))
            .partition(|(k, _)| keep(kind, k));
        for (c, m) in [(&mut yes, a), (&mut no, b)] {
            if !m.is_empty() {
                c.set_inputs(kind, m);
            }
        }
    }
    let with = |components| Input {
        components,
        ..input.clone()
    };
    (with(yes), with(no))
}
