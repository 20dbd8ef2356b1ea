//! GGUF denoisers as ComfyUI-GGUF's loader (`loader.py`, `gguf_sd_loader`) reads them: one
//! component, the denoiser, in ComfyUI's in-memory names.
//!
//! - **Keys**: the tensors' names; when any starts with `model.diffusion_model.` (files written
//!   by stable-diffusion.cpp), only those, without it (the others are left out).
//! - **Shapes**: ggml's dimensions reversed, or `comfy.gguf.orig_shape.<name>` when the file
//!   has it (a tensor convert.py reshaped to rows of 256): the values are the same, in the same
//!   order, read as that shape.
//! - **Values**: F32, F16 and BF16 tensors are plain tensors of the file; the block types
//!   (Q4_0 … Q8_0, Q2_K … Q6_K) are quantized tensors of [`Format::Ggml`], decoded range by
//!   range as gguf-py dequantizes them (exactly; ComfyUI-GGUF's own dequantizer agrees with
//!   `dequant_dtype=float32`). Other types (the IQ formats, …) are refused when the file is
//!   opened, naming type and tensor.
//! - **Architecture**: `general.architecture` names the family (`flux`, `sdxl`, `wan`, …); the
//!   variant (Flux dev or schnell, Wan 2.1 or 2.2, …) is detected from the tensors, and must be
//!   of that family. A file without it (stable-diffusion.cpp) or with llama.cpp's placeholders
//!   (`pig`, `cow`) is detected from its tensors alone, as the loader's compatibility mode does.
//!   Another string is named and refused (`--arch` reads the file as that architecture).

use std::sync::Arc;

use super::files::TensorSet;
use crate::error::{Error, Result};
use crate::gguf_text::TextArch;
use crate::model::{Arch, FileTensor, InputTensor, QuantTensor};
use crate::plan::gguf_target::gguf_arch;
use crate::printable::clipped;
use crate::quant::{Format, QuantDescription};
use crate::read::SafetensorsFile;

/// The prefix stable-diffusion.cpp writes before the denoiser's names.
const SD_CPP_PREFIX: &str = "model.diffusion_model.";

/// Every architecture string this tool reads, for messages.
fn known_strings() -> String {
    // Several families share a string (flux, lumina2…) and not next to each other: keep the
    // first of each, in the families' order.
    let mut v: Vec<&str> = Vec::new();
    for s in Arch::ALL.iter().map(|a| gguf_arch(*a)) {
        if !v.contains(&s) {
            v.push(s);
        }
    }
    v.join(", ")
}

/// Replaces the tensors of `set`, opened from the GGUF `file`, with the denoiser the loader
/// reads (see the [module docs](self)).
///
/// # Errors
/// [`Error::InvalidCheckpoint`] for a `general.architecture` that is not a string;
/// [`Error::Quantized`] for a tensor whose blocks do not form its type; conversion errors of a
/// reshape.
pub(super) fn group(set: &mut TensorSet, file: &Arc<SafetensorsFile>) -> Result<()> {
    let Some(side) = file.gguf() else {
        return Ok(());
    };
    let architecture = side
        .architecture
        .clone()
        .map_err(|kind| Error::InvalidCheckpoint {
            path: set.path.clone(),
            reason: format!(
                "its `general.architecture` is a {kind}, not a string (ComfyUI-GGUF refuses it \
                 too); the file is damaged"
            ),
        })?;
    let prefixed = file
        .tensors()
        .iter()
        .any(|t| t.name.starts_with(SD_CPP_PREFIX));
    set.tensors.clear();
    for (i, (entry, (ty, logical))) in file.tensors().iter().zip(&side.tensors).enumerate() {
        let key = match entry.name.strip_prefix(SD_CPP_PREFIX) {
            Some(rest) if prefixed => rest.to_string(),
            None if prefixed => {
                set.left_out.push(entry.name.clone());
                continue;
            }
            _ => entry.name.clone(),
        };
        let stored = InputTensor::File(FileTensor::new(Arc::clone(file), i));
        let mut tensor = if ty.is_quantized() && logical.iter().product::<usize>() == 0 {
            // No blocks to decode (a quantized layout needs elements): an empty tensor, as
            // ComfyUI-GGUF's loader gives it, in the dtype quantized tensors read as.
            let empty = candle_core::Tensor::zeros(
                logical.as_slice(),
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )?;
            InputTensor::Candle(empty)
        } else if ty.is_quantized() {
            let layer = key.strip_suffix(".weight").unwrap_or(&key);
            let description = QuantDescription {
                format: Format::Ggml(*ty),
                full_precision_matrix_mult: false,
            };
            QuantTensor::new(layer, description, vec![("weight".into(), stored)], None)?.into()
        } else {
            stored
        };
        let info = tensor.info();
        if &info.shape != logical {
            tensor = InputTensor::joined(&key, vec![(tensor, 0..info.numel())], logical.clone())?;
        }
        if set.tensors.insert(key.clone(), tensor).is_some() {
            return Err(Error::InvalidCheckpoint {
                path: set.path.clone(),
                reason: format!(
                    "`{}` appears twice once the `{SD_CPP_PREFIX}` prefix is removed",
                    clipped(&key)
                ),
            });
        }
    }
    if let Some(text) = architecture.as_deref().and_then(TextArch::parse) {
        super::gguf_text::to_loader_names(set, file, text)?;
    }
    set.gguf_architecture = Some(architecture);
    Ok(())
}

/// The architecture of a GGUF denoiser (see the [module docs](self)): `given` when the caller
/// names one, else its family from `general.architecture` and its variant from its tensors.
///
/// # Errors
/// [`Error::InvalidInput`] for a text encoder's file, or an architecture string this tool does
/// not read (named, with `--arch` suggested); [`Error::UnknownArchitecture`] when the tensors
/// form no known denoiser; [`Error::FamilyMismatch`] when they form another family's than the
/// string says.
pub(super) fn architecture(set: &TensorSet, given: Option<Arch>) -> Result<Option<Arch>> {
    let Some(stated) = &set.gguf_architecture else {
        return Ok(given);
    };
    let path = set.path.display();
    if let Some(s) = stated.as_deref().filter(|s| TextArch::parse(s).is_some()) {
        return Err(Error::InvalidInput(format!(
            "{path} is a GGUF text encoder (`general.architecture` is `{s}`), not a checkpoint \
             or denoiser: give it to `save --clip`, or `convert` it with `--gguf TYPE`"
        )));
    }
    if stated.as_deref() == Some("clip") {
        return Err(Error::InvalidInput(format!(
            "{path} is llama.cpp's vision projector (`general.architecture` is `clip`, an \
             mmproj file), not a checkpoint or denoiser: it is read with the `qwen2vl` text \
             encoder it sits beside; give that file to `save --clip` or `convert`"
        )));
    }
    if given.is_some() {
        return Ok(given);
    }
    let detected = crate::layout::detect::detect_model(&set.infos());
    let Some(s) = stated.as_deref().filter(|s| !matches!(*s, "pig" | "cow")) else {
        // No architecture string (or a placeholder): the loader's compatibility mode.
        return detected.map(Some);
    };
    if !Arch::ALL.iter().any(|a| gguf_arch(*a) == s) {
        let s = clipped(s);
        return Err(Error::InvalidInput(format!(
            "{path}: its `general.architecture` is `{s}`, which this tool does not read (it \
             reads {}); if the denoiser is one of this tool's families, give --arch NAME (one \
             of {})",
            known_strings(),
            Arch::known_names()
        )));
    }
    match detected {
        Ok(a) if gguf_arch(a) == s => Ok(Some(a)),
        Ok(a) => Err(Error::FamilyMismatch {
            reason: format!(
                "{path} says it holds a `{s}` denoiser (`general.architecture`), but its tensors \
                 form a {a} denoiser; give --arch {a} to read it as that, or --arch with the \
                 right architecture"
            ),
        }),
        Err(e) => Err(Error::InvalidInput(format!(
            "{path} says it holds a `{s}` denoiser (`general.architecture`), but its tensors \
             form no known variant of it ({e}); give --arch NAME to read it as one"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use crate::gguf::{gguf_header, GgufTensorInfo, MetaValue};
    use crate::model::{Arch, ComponentKind, Dtype};
    use crate::quant::GgmlType;
    use crate::synthetic::{build, SyntheticOptions};

    /// A zero-element quantized tensor has no blocks: it reads as an empty tensor (as
    /// ComfyUI-GGUF's loader gives it), not as a refusal of the whole file.
    #[test]
    fn an_empty_quantized_tensor_reads_as_an_empty_tensor() {
        let components = build(
            &SyntheticOptions::new(Arch::Flux).tiny(),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let shapes = components.shapes();
        let mut tensors: Vec<GgufTensorInfo> = shapes
            .get(ComponentKind::Model)
            .unwrap()
            .iter()
            .map(|(name, info)| GgufTensorInfo {
                name: name.clone(),
                shape: info.shape.clone(),
                ggml_type: GgmlType::F32,
            })
            .collect();
        tensors.push(GgufTensorInfo {
            name: "empty_q4k".into(),
            shape: vec![0, 256],
            ggml_type: GgmlType::Q4_K,
        });
        let meta = vec![(
            "general.architecture".to_string(),
            MetaValue::String("flux".into()),
        )];
        let header = gguf_header(&meta, &tensors).unwrap();
        let mut bytes = header.bytes;
        bytes.resize(bytes.len() + header.data_len as usize, 0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, bytes).unwrap();
        let input = crate::input::open(&path, None).unwrap();
        let empty = input
            .components
            .iter()
            .find_map(|(_, map)| map.iter().find(|(k, _)| k.ends_with("empty_q4k")))
            .map(|(_, t)| t.info());
        let info = empty.expect("the empty tensor is read");
        assert_eq!(
            (info.shape, info.dtype, info.quant),
            (vec![0, 256], Dtype::F32, None)
        );
    }

    #[test]
    fn each_architecture_string_is_listed_once() {
        let list = super::known_strings();
        let v: Vec<&str> = list.split(", ").collect();
        let mut unique = v.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), v.len(), "{list}");
        assert!(v.contains(&"flux") && v.contains(&"sdxl"), "{list}");
    }
}
