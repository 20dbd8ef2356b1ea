//! Looking inside a checkpoint without loading it: architecture, prediction, tensors and bytes
//! per part, dtypes and metadata, from the header (and at most two 4-byte sigma scalars). A GGUF
//! file shows its tensors per ggml type and its metadata.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

use crate::error::Result;
use crate::layout::detect::detect_model;
use crate::layout::invert::{detect_arch, read_prediction};
use crate::load::read_f32_scalar;
use crate::model::{Arch, Prediction};
use crate::model::{Dtype, TensorInfo};
use crate::printable::escape_controls;
use crate::read::gguf::GgufFile;
use crate::read::{is_gguf, FileFormat, SafetensorsFile};

/// One part of a checkpoint (a component, or keys of none), as [`inspect`] counts it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PartSummary {
    /// `model`, `clip`, `vae`, `audio_vae` (an audio VAE and its vocoder, LTX-2's) or `other`.
    pub name: &'static str,
    /// Number of tensors.
    pub tensors: usize,
    /// Bytes of tensor data.
    pub bytes: u64,
    /// Number of tensors per dtype (`F16`, `F32`, …; a GGUF file's ggml types: `Q4_K`, …).
    pub dtypes: BTreeMap<String, usize>,
}

/// What the header of a checkpoint says, read without loading tensor data.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inspection {
    /// The file.
    pub path: PathBuf,
    /// What kind of file it is (`safetensors`, `pytorch` or `gguf`).
    pub format: FileFormat,
    /// The architecture the denoiser's keys detect as; `None` when unknown.
    #[serde(serialize_with = "serialize_arch")]
    pub arch: Option<Arch>,
    /// The prediction type (markers, then `modelspec.predict_key`, then the architecture default).
    #[serde(serialize_with = "serialize_prediction")]
    pub prediction: Prediction,
    /// Per part (model, clip, vae, other by key prefix), only parts with tensors.
    pub parts: Vec<PartSummary>,
    /// Number of tensors.
    pub tensors: usize,
    /// The header's `__metadata__` (a GGUF file's metadata, each value as text).
    pub metadata: BTreeMap<String, String>,
    /// Bytes of tensor data.
    pub data_bytes: u64,
    /// Length of what describes the tensors: a safetensors file's JSON header (without the 8-byte
    /// length prefix), a PyTorch file's pickle, a GGUF file's header with its padding.
    pub header_bytes: u64,
    /// Entries of a PyTorch checkpoint that are not tensors of its state dict (read past).
    pub left_out: Vec<String>,
    /// Quantized layers (codes with their scales, counted once each) per format: `nvfp4`,
    /// `float8_e4m3fn`, `scaled fp8 (float8_e4m3fn)`, …
    pub quantized: BTreeMap<String, usize>,
    /// File size.
    pub file_bytes: u64,
    /// For a `qwen2vl` text-encoder GGUF, the mmproj file ComfyUI-GGUF's loader pairs with it
    /// (its vision tower, listed as the `mmproj` part).
    pub mmproj: Option<PathBuf>,
}

fn serialize_arch<S: Serializer>(
    arch: &Option<Arch>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match arch {
        Some(a) => s.serialize_str(a.name()),
        None => s.serialize_none(),
    }
}

fn serialize_prediction<S: Serializer>(
    p: &Prediction,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(None)?;
    match p {
        Prediction::EdmV {
            sigma_max,
            sigma_min,
        } => {
            m.serialize_entry("type", "edm-v")?;
            m.serialize_entry("sigma_max", sigma_max)?;
            m.serialize_entry("sigma_min", sigma_min)?;
        }
        other => m.serialize_entry("type", &other.to_string())?,
    }
    m.end()
}

/// The part of a checkpoint a key belongs to, by prefix.
fn part_of(key: &str) -> &'static str {
    const CLIP: [&str; 4] = [
        "cond_stage_model.",
        "conditioner.",
        "text_encoders.",
        "text_encoder.",
    ];
    if key.starts_with("model.") {
        "model"
    } else if CLIP.iter().any(|p| key.starts_with(p)) {
        "clip"
    } else if key.starts_with("first_stage_model.") || key.starts_with("vae.") {
        "vae"
    } else if key.starts_with("audio_vae.") || key.starts_with("vocoder.") {
        "audio_vae"
    } else if key.starts_with("text_embedding_projection.") {
        // LTX-2's release holds its text-encoder model's projection at the top level.
        "clip"
    } else {
        "other"
    }
}

/// Reads a checkpoint's header (and at most the two 4-byte EDM sigma scalars, and the small
/// scales and descriptions of quantized layers), not its tensor data.
///
/// # Errors
/// Every error of opening and validating the file ([`crate::Error::Io`],
/// [`crate::Error::HeaderTooLarge`], [`crate::Error::InvalidCheckpoint`], truncation included);
/// [`crate::Error::Quantized`] for a malformed quantized layer.
pub fn inspect(path: &Path) -> Result<Inspection> {
    if is_gguf(path)? {
        return inspect_gguf(path);
    }
    let st = SafetensorsFile::open(path)?;
    let infos = st.infos();
    // A denoiser alone in ComfyUI's own names (a `diffusion_models/` file) has no prefixes.
    let bare = !infos.keys().any(|k| part_of(k) != "other");
    let arch = match detect_arch(&infos) {
        Ok(a) => Some(a),
        Err(_) if bare => detect_model(&infos).ok(),
        Err(_) => None,
    };
    let bare = bare && arch.is_some();
    let default = arch.map_or(Prediction::Unknown, Arch::default_prediction);
    let (prediction, _) = read_prediction(path, &infos, st.metadata(), default, |key| {
        read_f32_scalar(&st, key)
    })?;
    let mut parts: Vec<PartSummary> = ["model", "clip", "vae", "audio_vae", "other"]
        .into_iter()
        .map(|name| PartSummary {
            name,
            ..Default::default()
        })
        .collect();
    for t in st.tensors() {
        let name = if bare { "model" } else { part_of(&t.name) };
        if let Some(p) = parts.iter_mut().find(|p| p.name == name) {
            p.tensors += 1;
            p.bytes += t.byte_len();
            *p.dtypes.entry(t.dtype.to_string()).or_default() += 1;
        }
    }
    parts.retain(|p| p.tensors > 0);
    Ok(Inspection {
        path: path.to_path_buf(),
        format: st.format(),
        arch,
        prediction,
        parts,
        tensors: infos.len(),
        metadata: st.metadata().clone(),
        data_bytes: st.data_len(),
        header_bytes: st.header_len(),
        left_out: st.left_out().to_vec(),
        quantized: crate::input::quantized_layers(path)?,
        file_bytes: st.file_len(),
        mmproj: None,
    })
}

/// A GGUF file's header: its tensors are one component (a denoiser, a text encoder by its
/// `general.architecture`, or llama.cpp's vision projector by its `general.type` `mmproj`,
/// listed as `mmproj`), counted per ggml type; the architecture is detected from its tensors
/// as ComfyUI-GGUF's loader names them (without a `model.diffusion_model.` prefix).
fn inspect_gguf(path: &Path) -> Result<Inspection> {
    let g = GgufFile::open(path)?;
    let text = g
        .architecture()
        .is_some_and(|a| crate::gguf_text::TextArch::parse(a).is_some());
    // llama.cpp's vision projector file (a `qwen2vl` encoder's vision tower).
    let mmproj = matches!(
        g.get("general.type"),
        Some(crate::read::gguf::MetaValue::String(t)) if t == "mmproj" || t == "clip-vision"
    );
    let prefix = "model.diffusion_model.";
    let prefixed = g.tensors().iter().any(|t| t.name.starts_with(prefix));
    let model: BTreeMap<String, TensorInfo> = g
        .tensors()
        .iter()
        .filter_map(|t| {
            let key = if prefixed {
                t.name.strip_prefix(prefix)?
            } else {
                &t.name
            };
            Some((
                key.to_string(),
                TensorInfo::new(t.shape.clone(), Dtype::F32),
            ))
        })
        .collect();
    let arch = if text || mmproj {
        None
    } else {
        detect_model(&model).ok()
    };
    let mut part = PartSummary {
        name: match (text, mmproj) {
            (_, true) => "mmproj",
            (true, _) => "clip",
            _ => "model",
        },
        ..Default::default()
    };
    for t in g.tensors() {
        part.tensors += 1;
        part.bytes += t.byte_len();
        *part.dtypes.entry(t.type_name().to_string()).or_default() += 1;
    }
    let (mmproj, vision) = paired_mmproj(path, g.architecture())?;
    Ok(Inspection {
        path: path.to_path_buf(),
        format: FileFormat::Gguf,
        arch,
        prediction: arch.map_or(Prediction::Flow, Arch::default_prediction),
        parts: [part]
            .into_iter()
            .chain(vision)
            .filter(|p| p.tensors > 0)
            .collect(),
        tensors: g.tensors().len(),
        metadata: g
            .metadata()
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
        data_bytes: g.data_len(),
        header_bytes: g.data_start(),
        left_out: Vec::new(),
        // GGUF's block types are listed per dtype; `quantized` counts ComfyUI's layouts.
        quantized: BTreeMap::new(),
        file_bytes: g.file_len(),
        mmproj,
    })
}

/// Bytes in a human unit (binary prefixes).
fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// The mmproj ComfyUI-GGUF's loader pairs with a `qwen2vl` file at `path`, with its tensors
/// as a part (the first in sorted order, as the tool reads it).
///
/// # Errors
/// The paired file's header errors.
fn paired_mmproj(
    path: &Path,
    architecture: Option<&str>,
) -> Result<(Option<PathBuf>, Option<PartSummary>)> {
    if architecture != Some("qwen2vl") {
        return Ok((None, None));
    }
    let Some(first) = crate::gguf_text::mmproj::candidates(path)?
        .into_iter()
        .next()
    else {
        return Ok((None, None));
    };
    let g = GgufFile::open(&first)?;
    let mut part = PartSummary {
        name: "mmproj",
        ..Default::default()
    };
    for t in g.tensors() {
        part.tensors += 1;
        part.bytes += t.byte_len();
        *part.dtypes.entry(t.type_name().to_string()).or_default() += 1;
    }
    Ok((Some(first), Some(part)))
}

/// What a file controls (names, metadata) is printed with its control characters escaped
/// ([`escape_controls`]): a value cannot move the cursor, recolour or forge a line.
impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display().to_string();
        writeln!(f, "{}", escape_controls(&path))?;
        writeln!(f, "  format:       {}", self.format)?;
        let arch = self.arch.map_or("unknown", Arch::name);
        writeln!(f, "  architecture: {arch}")?;
        writeln!(f, "  prediction:   {}", self.prediction)?;
        writeln!(
            f,
            "  tensors:      {} ({} of data, header {}, file {})",
            self.tensors,
            human_bytes(self.data_bytes),
            human_bytes(self.header_bytes),
            human_bytes(self.file_bytes)
        )?;
        for p in &self.parts {
            let dtypes: Vec<String> = p.dtypes.iter().map(|(d, n)| format!("{d}×{n}")).collect();
            writeln!(
                f,
                "  {:<9} {:>6} tensors {:>12}  {}",
                p.name,
                p.tensors,
                human_bytes(p.bytes),
                dtypes.join(", ")
            )?;
        }
        if !self.quantized.is_empty() {
            let formats: Vec<String> = self
                .quantized
                .iter()
                .map(|(f, n)| format!("{f}×{n}"))
                .collect();
            writeln!(
                f,
                "  quantized:    {} layer(s): {}",
                self.quantized.values().sum::<usize>(),
                formats.join(", ")
            )?;
        }
        if let Some(m) = &self.mmproj {
            let m = m.display().to_string();
            writeln!(
                f,
                "  mmproj:       {} (its vision tower)",
                escape_controls(&m)
            )?;
        }
        if !self.left_out.is_empty() {
            writeln!(
                f,
                "  not tensors:  {} (read past)",
                escape_controls(&self.left_out.join(", "))
            )?;
        }
        if !self.metadata.is_empty() {
            writeln!(f, "  metadata:")?;
            for (k, v) in &self.metadata {
                let shown: String = v.chars().take(72).collect();
                let more = if shown.len() < v.len() { "…" } else { "" };
                let (k, shown) = (escape_controls(k), escape_controls(&shown));
                writeln!(f, "    {k}: {shown}{more}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_and_units() {
        assert_eq!(part_of("model.diffusion_model.x"), "model");
        assert_eq!(part_of("conditioner.embedders.0.x"), "clip");
        assert_eq!(part_of("text_encoders.t5xxl.x"), "clip");
        assert_eq!(part_of("first_stage_model.x"), "vae");
        assert_eq!(part_of("v_pred"), "other");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.00 MiB");
    }

    #[test]
    fn file_controlled_text_is_printed_with_its_controls_escaped() {
        let i = Inspection {
            path: "a.safetensors".into(),
            format: FileFormat::Safetensors,
            arch: None,
            prediction: Prediction::Eps,
            parts: Vec::new(),
            tensors: 0,
            metadata: BTreeMap::from([(
                "k\x1b[2J".to_string(),
                "\x1b]0;x\x07\nSECOND".to_string(),
            )]),
            data_bytes: 0,
            header_bytes: 0,
            left_out: vec!["x\ny".into()],
            quantized: BTreeMap::new(),
            file_bytes: 0,
            mmproj: None,
        };
        let shown = i.to_string();
        assert!(
            !shown.contains('\x1b') && !shown.contains('\x07'),
            "{shown}"
        );
        assert!(
            shown.contains("    k\\u{1b}[2J: \\u{1b}]0;x\\u{7}\\nSECOND\n"),
            "{shown}"
        );
        assert!(shown.contains("x\\ny (read past)"), "{shown}");
        assert!(!shown.lines().any(|l| l.starts_with("SECOND")), "{shown}");
    }
}
