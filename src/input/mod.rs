//! Inputs: files and folders as components whose tensors are read where they lie.
//!
//! [`open`] recognises what a path holds — a single-file checkpoint (ComfyUI, A1111/Forge,
//! kohya), a diffusers pipeline folder, or a GGUF denoiser (ComfyUI-GGUF's) — and [`open_component`] what one component file
//! holds, in ComfyUI's in-memory names, diffusers/transformers names, or a single-file prefix.
//! Nothing but headers is read: every tensor is an [`InputTensor::File`] (or a view joining parts
//! of them), read by the writer when the checkpoint is written, cast on the way. No job loads a
//! model into memory.

mod denoiser;
mod diffusers;
mod files;
mod gguf;
mod gguf_text;
mod group;
mod mmproj;
mod single_file;

pub use mmproj::set_quiet;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::component_files::{clipsave_encoder, from_clipsave_name, is_clipsave_file};
use crate::error::{Error, Result};
use crate::layout::diffusers::{encoder_folders, ModelClass};
use crate::model::{Arch, ComponentKind, Components, InputMap, InputTensor, Prediction};
pub use diffusers::from_diffusers;
use files::{open_set, TensorSet};
pub(crate) use group::quantization_evidence;

/// How an input was laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputLayout {
    /// A single-file checkpoint (`model.diffusion_model.…`).
    SingleFile,
    /// A diffusers pipeline folder.
    Diffusers,
    /// Component files (`save --model --clip --vae`).
    Components,
}

/// What a file or folder holds, as components ready to save.
#[derive(Debug, Clone)]
pub struct Input {
    /// The components, in ComfyUI's in-memory names.
    pub components: Components,
    /// The architecture the input's layout says (detected, or as given).
    pub arch: Option<Arch>,
    /// The prediction type the input says (markers, `modelspec.predict_key`, a diffusers
    /// scheduler), when it says one.
    pub prediction: Option<Prediction>,
    /// Whether the input states its prediction (markers, `modelspec.predict_key`, a scheduler
    /// config), rather than `prediction` being its family's default. A generic-layout save uses
    /// only a stated prediction.
    pub prediction_stated: bool,
    /// How the input was laid out.
    pub layout: InputLayout,
    /// A single file's `__metadata__`.
    pub metadata: BTreeMap<String, String>,
    /// Input keys not carried into the components: EMA copies and schedule buffers of A1111-era
    /// files, CLIP position buffers ComfyUI does not hold, tied copies diffusers stores.
    pub left_out: Vec<String>,
    /// Component keys the input does not carry, made with ComfyUI's default values (CLIP
    /// `logit_scale`, the identity projection of a CLIP without one).
    pub created: Vec<String>,
    /// Bytes of tensor data in the input files.
    pub bytes: u64,
}

impl Input {
    /// The files the input's tensors lie in, each once, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for t in self.components.tensors() {
            t.input_files(&mut |f| out.push(f.path().to_path_buf()));
        }
        out.sort();
        out.dedup();
        out
    }
}

/// Prefixes only single-file checkpoints have.
const SINGLE_FILE_PREFIXES: [&str; 6] = [
    "model.diffusion_model.",
    "first_stage_model.",
    "cond_stage_model.",
    "conditioner.embedders.",
    "text_encoders.",
    "vae.",
];

/// Opens a single-file checkpoint, a denoiser alone in one file (ComfyUI's ModelSave output,
/// a `diffusion_models/` file) or a diffusers pipeline folder.
///
/// `arch` overrides detection (the layout must then fit it).
///
/// # Errors
/// - [`Error::Io`] for a missing path or unreadable file;
/// - [`Error::InvalidCheckpoint`], [`Error::HeaderTooLarge`] for a file that is not a valid
///   safetensors file (truncated, corrupt);
/// - [`Error::InvalidInput`] for a folder that is not a pipeline (saying what is missing), a file
///   that holds a text encoder or an autoencoder alone rather than a checkpoint, or names of no known layout;
/// - [`Error::UnknownArchitecture`] when the architecture cannot be told.
pub fn open(path: &Path, arch: Option<Arch>) -> Result<Input> {
    if path.is_dir() {
        // A denoiser's own folder (`unet/`, `transformer/`: config and weights, no pipeline).
        if !path.join("model_index.json").exists() {
            if let Ok(set) = open_set(path) {
                if let Some(model) = denoiser::denoiser_of(&set, &SINGLE_FILE_PREFIXES[1..]) {
                    let a = denoiser::family(&model.0, arch)?;
                    return denoiser::open(set, model, a);
                }
            }
        }
        return diffusers::open_pipeline(path, arch);
    }
    let set = open_set(path)?;
    if set.gguf_architecture.is_some() {
        return open_gguf(set, arch);
    }
    if let Some(model) = denoiser::denoiser_of(&set, &SINGLE_FILE_PREFIXES[1..]) {
        match denoiser::family(&model.0, arch) {
            Ok(a) => return denoiser::open(set, model, a),
            // ModelSave's names of an unknown denoiser: the generic layout may still read it.
            Err(_) if denoiser::is_prefixed(&set) => return single_file::open(set, arch),
            Err(e) => return Err(e),
        }
    }
    if set
        .tensors
        .keys()
        .any(|k| SINGLE_FILE_PREFIXES.iter().any(|p| k.starts_with(p)))
    {
        return single_file::open(set, arch);
    }
    let what = describe(&set);
    Err(Error::InvalidInput(format!(
        "{} is not a single-file checkpoint (no `model.diffusion_model.…` keys): it holds {what}; \
         pass component files to `save --model F --clip F --vae F`",
        path.display()
    )))
}

/// A GGUF denoiser as the input of a job: the denoiser alone ([`gguf`]).
fn open_gguf(set: TensorSet, arch: Option<Arch>) -> Result<Input> {
    let arch = gguf::architecture(&set, arch)?;
    let mut components = Components::default();
    components.set_inputs(ComponentKind::Model, set.tensors);
    let mut left_out = set.left_out;
    left_out.sort();
    Ok(Input {
        components,
        arch,
        prediction: arch.map(Arch::default_prediction),
        prediction_stated: false,
        layout: InputLayout::Components,
        metadata: BTreeMap::new(),
        left_out,
        created: Vec::new(),
        bytes: set.bytes,
    })
}

/// Every tensor of a `.safetensors` file (or shard index), read where it lies: what a LoRA is
/// opened as.
///
/// # Errors
/// Read errors; invalid files.
pub(crate) fn open_tensors(path: &Path) -> Result<InputMap> {
    let set = open_set(path)?;
    Ok(set.tensors)
}

/// The quantized layers of a file (or shard index), counted per format's name, as reading it
/// groups them.
///
/// # Errors
/// As [`open`]'s reading of the file, and the grouping's errors of malformed layers.
pub(crate) fn quantized_layers(path: &Path) -> Result<BTreeMap<String, usize>> {
    let set = open_set(path)?;
    let mut out = BTreeMap::new();
    for t in set.tensors.values() {
        if let InputTensor::Quantized(q) = t {
            *out.entry(q.format().to_string()).or_default() += 1;
        }
    }
    Ok(out)
}

/// One component read from files, with what its conversion made up or left out.
#[derive(Debug, Clone, Default)]
pub struct ComponentInput {
    /// The tensors, in ComfyUI's in-memory names.
    pub tensors: InputMap,
    /// See [`Input::left_out`].
    pub left_out: Vec<String>,
    /// See [`Input::created`].
    pub created: Vec<String>,
    /// Bytes of tensor data in the files.
    pub bytes: u64,
}

/// Opens the file(s) of one component — the denoiser, the text encoders (one file per encoder
/// or one file with all), or the autoencoder — in any naming: ComfyUI's in-memory names (what
/// `split` writes), diffusers/transformers names (a model file or folder, sharded or not), or a
/// single file's prefixed names (only that component's keys are taken). `arch` tells a text
/// encoder whose width is not a released model's which encoder it is, by its place among `paths`.
///
/// # Errors
/// [`Error::InvalidInput`] for a file whose names do not fit the component (saying what it
/// holds), a text encoder that cannot be placed, or two files holding one tensor; read errors.
pub fn open_component(
    kind: ComponentKind,
    paths: &[PathBuf],
    arch: Option<Arch>,
) -> Result<ComponentInput> {
    let mut out = ComponentInput::default();
    for (i, path) in paths.iter().enumerate() {
        let set = open_set(path)?;
        out.bytes += set.bytes;
        let text = gguf_text::text_arch(&set);
        let (tensors, left_out, created) = if let Some(text) = text {
            if kind != ComponentKind::Clip {
                return Err(Error::InvalidInput(format!(
                    "{} is a GGUF text encoder (`{}`), not a {kind} component: give it to \
                     --clip",
                    path.display(),
                    text.name()
                )));
            }
            gguf_text::component(&set, text, arch)?
        } else if set.gguf_architecture.is_some() {
            if kind != ComponentKind::Model {
                return Err(Error::InvalidInput(format!(
                    "{} is a GGUF file: this tool reads GGUF denoisers (--model), not {kind} \
                     components",
                    path.display()
                )));
            }
            gguf::architecture(&set, arch)?;
            (set.tensors, set.left_out, Vec::new())
        } else {
            component_of(kind, &set, arch, i)?
        };
        out.left_out.extend(left_out);
        out.created.extend(created);
        for (k, t) in tensors {
            if out.tensors.insert(k.clone(), t).is_some() {
                return Err(Error::InvalidInput(format!(
                    "{kind} tensor `{k}` is given twice (again in {})",
                    path.display()
                )));
            }
        }
    }
    Ok(out)
}

/// Whether a component file's names are ComfyUI's in-memory names of `kind`: a denoiser a
/// family's first tell recognises (or the classic blocks), text encoders under a known
/// encoder's name or the tokenizer keys saved beside them, an autoencoder's LDM or Wan names.
fn is_comfy_names(kind: ComponentKind, set: &TensorSet) -> bool {
    let has = |p: &str| set.tensors.keys().any(|k| k.starts_with(p));
    match kind {
        // Not `x_embedder.`: diffusers' Flux transformer has one too. Nor a Z-Image transformer
        // in diffusers' names, which keeps `cap_embedder.` (the family's first tell) but names
        // its patch embedder `all_x_embedder.`.
        ComponentKind::Model => {
            let classic = [
                "input_blocks.",
                "joint_blocks.",
                "double_blocks.",
                "img_in.",
            ]
            .iter()
            .any(|p| has(p));
            !has("all_x_embedder.")
                && (classic || crate::family::detect::looks_like_a_family(&set.infos()))
        }
        ComponentKind::Clip => {
            let families = crate::family::Family::all();
            set.tensors.keys().any(|k| {
                let first = k.split_once('.').map_or(k.as_str(), |(f, _)| f);
                families
                    .iter()
                    .any(|f| f.encoders().contains(&first) || f.clip_top_level().contains(&first))
            })
        }
        // The LDM names (diffusers' AutoencoderKL has `encoder.down_blocks.` instead), or a
        // video autoencoder whose names diffusers does not share.
        ComponentKind::Vae => {
            use crate::family::VaeKind;
            let ldm = [
                "encoder.down.",
                "decoder.up.",
                "encoder.mid.",
                "decoder.mid.",
            ]
            .iter()
            .any(|p| has(p))
                && !has("encoder.down_blocks.");
            let video = matches!(
                crate::family::parts::vae_kind(&set.infos()),
                Some(
                    VaeKind::Wan21
                        | VaeKind::Wan22
                        | VaeKind::Ltx
                        | VaeKind::HunyuanVideo
                        | VaeKind::HunyuanVideo15
                        | VaeKind::QwenImage21
                )
            );
            ldm || video
        }
        ComponentKind::ClipVision => false,
        // ComfyUI's AudioVAE names (`autoencoder.…`, `vocoder.…`).
        ComponentKind::AudioVae => {
            let release = &crate::family::release::LTX2;
            has("autoencoder.") && release.audio.iter().all(|(m, _)| has(m))
        }
    }
}

/// Prefixes of `kind`'s keys in single files (and in ModelSave's files).
fn single_file_prefixes(kind: ComponentKind) -> Vec<&'static str> {
    match kind {
        ComponentKind::Model => {
            let mut v: Vec<&'static str> = Vec::new();
            for f in crate::family::Family::all() {
                if !v.contains(&f.prefixes.model) {
                    v.push(f.prefixes.model);
                }
            }
            v
        }
        ComponentKind::Vae => vec!["first_stage_model.", "vae."],
        ComponentKind::Clip | ComponentKind::ClipVision | ComponentKind::AudioVae => Vec::new(),
    }
}

type Component = (InputMap, Vec<String>, Vec<String>);

fn component_of(
    kind: ComponentKind,
    set: &TensorSet,
    arch: Option<Arch>,
    position: usize,
) -> Result<Component> {
    let has = |p: &str| set.tensors.keys().any(|k| k.starts_with(p));
    let all = |prefix: &str| -> Component {
        let mut map = InputMap::new();
        let mut left = Vec::new();
        for (k, t) in &set.tensors {
            match k.strip_prefix(prefix) {
                Some(rest) => {
                    map.insert(rest.to_string(), t.clone());
                }
                None => left.push(k.clone()),
            }
        }
        (map, left, Vec::new())
    };
    if let Some(p) = single_file_prefixes(kind).into_iter().find(|p| has(p)) {
        return Ok(all(p));
    }
    // An audio VAE file as its loaders read it (`audio_vae.…`, `vocoder.…`).
    if kind == ComponentKind::AudioVae && has("audio_vae.") {
        let release = &crate::family::release::LTX2;
        let mut map = InputMap::new();
        let mut left = Vec::new();
        for (k, t) in &set.tensors {
            match release.audio_memory_key(k) {
                Some(m) => {
                    map.insert(m, t.clone());
                }
                None => left.push(k.clone()),
            }
        }
        return Ok((map, left, Vec::new()));
    }
    if kind == ComponentKind::Clip && is_clipsave_file(&set.infos()) {
        let enc = clipsave_encoder(&set.infos(), arch, position)?;
        let map = set
            .tensors
            .iter()
            .map(|(k, t)| (from_clipsave_name(enc, k), t.clone()))
            .collect();
        return Ok((map, Vec::new(), Vec::new()));
    }
    if is_comfy_names(kind, set) {
        return Ok(all(""));
    }
    let wrong = |holds: String| {
        Error::InvalidInput(format!(
            "the {kind} file {} holds {holds}, not {}",
            set.path.display(),
            match kind {
                ComponentKind::Model => "a denoiser (UNet/DiT)",
                ComponentKind::Clip => "text encoders",
                ComponentKind::AudioVae => "an audio VAE and its vocoder",
                _ => "an autoencoder",
            }
        ))
    };
    let class = match diffusers::class_of(set) {
        Ok(c) => c,
        Err(_) => return Err(wrong(describe(set))),
    };
    if class.kind() != kind {
        return Err(wrong(format!(
            "a {} ({} names)",
            class.name(),
            class.library()
        )));
    }
    let encoder = match kind {
        ComponentKind::Clip => Some(encoder_for(set, class, arch, position)?),
        _ => None,
    };
    let c = diffusers::convert_set(set, class, encoder)?;
    Ok((c.tensors, c.dropped, c.created))
}

/// Which encoder (`clip_l` …) a transformers text model is.
fn encoder_for(
    set: &TensorSet,
    class: ModelClass,
    arch: Option<Arch>,
    position: usize,
) -> Result<&'static str> {
    if let Some(e) = diffusers::encoder_name(&set.infos(), class) {
        return Ok(e);
    }
    let Some(arch) = arch else {
        return Err(Error::InvalidInput(format!(
            "cannot tell which text encoder {} is (its width is not a released model's); give \
             --arch, and the --clip files in the order of the pipeline's text_encoder folders",
            set.path.display()
        )));
    };
    let folders = encoder_folders(arch);
    folders.get(position).map(|(_, e)| *e).ok_or_else(|| {
        Error::InvalidInput(format!(
            "{arch} has {} text encoder(s); {} is the text encoder number {}",
            folders.len(),
            set.path.display(),
            position + 1
        ))
    })
}

/// What a set of tensors looks like, for messages.
fn describe(set: &TensorSet) -> String {
    if let Ok(class) = diffusers::class_of(set) {
        return format!("a {} in {} names", class.name(), class.library());
    }
    for kind in [
        ComponentKind::Model,
        ComponentKind::Clip,
        ComponentKind::Vae,
    ] {
        if is_comfy_names(kind, set) {
            return format!("a {kind} component in ComfyUI's names");
        }
    }
    let first: Vec<&str> = set.tensors.keys().take(3).map(String::as_str).collect();
    format!(
        "{} tensor(s) of no known layout (first: {})",
        set.tensors.len(),
        first.join(", ")
    )
}
