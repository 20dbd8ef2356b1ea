//! Loading a checkpoint back: ComfyUI's CheckpointLoaderSimple, in reverse of [`crate::save`].
//!
//! Why it exists: a save is only trustworthy if the file reads back into the components it was made
//! from. Keys go back to components by the layout's own rules ([`crate::layout::invert`]); bytes
//! come through the crate's one reader ([`crate::read`]).
//!
//! Dtypes: candle has no `F8_E5M2`, so such tensors are loaded as F16, which is exact (an e5m2 value
//! is the top byte of the f16 with the same value); saving them again writes F16. Dtypes candle cannot
//! hold at all (I8, U16, BOOL, U64, …) are refused with [`Error::UnsupportedDtype`].

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::layout::invert::{invert_file, Move};
use crate::model::dtype::candle_dtype;
use crate::model::{Arch, ComponentKind, Components, Dtype, Prediction, TensorMap};
use crate::read::{SafetensorsFile, TensorEntry};

/// A checkpoint read back into components.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The architecture whose layout the file has; `None` for the generic layout.
    pub arch: Option<Arch>,
    /// The prediction type, from the markers, the header's `modelspec.predict_key` or the default.
    pub prediction: Prediction,
    /// The components under their in-memory (ComfyUI) names.
    pub components: Components,
    /// The header's `__metadata__`.
    pub metadata: BTreeMap<String, String>,
    /// Checkpoint keys no layout rule claims (not loaded into any component).
    pub leftover: Vec<String>,
}

/// Loads a checkpoint onto `device` and undoes the save layout (checkpoint-format.md §8, §10).
///
/// The architecture is detected from the denoiser's keys unless `arch` is given. With detection, a
/// file whose keys form the generic layout (all prefixes of the default generic prefixes, nothing
/// left over) loads with `arch == None`, like a generic save reports. The result is self-checked:
/// the save layout of the recovered components must reproduce every claimed key and shape.
///
/// # Errors
/// - every error of opening the file (missing, unreadable, not a valid safetensors file,
///   truncated: [`Error::Io`], [`Error::HeaderTooLarge`], [`Error::InvalidCheckpoint`]);
/// - [`Error::UnknownArchitecture`] when no architecture is given, none is detected and the file is
///   not in the generic layout;
/// - [`Error::InvalidCheckpoint`] when the keys do not form the layout of the (given or detected)
///   architecture, or a marker is malformed;
/// - [`Error::UnsupportedDtype`] naming the key for a dtype candle cannot hold;
/// - [`Error::Candle`] when a tensor cannot be created on `device`;
/// - [`Error::InvalidInput`] for a file with quantized layers (codes are not weights), and for a
///   GGUF file.
pub fn load_checkpoint(path: &Path, device: &Device, arch: Option<Arch>) -> Result<Loaded> {
    let st = SafetensorsFile::open(path)?;
    refuse_gguf(&st)?;
    let names = st.tensors().iter().map(|t| t.name.as_str());
    if let Some(evidence) = crate::input::quantization_evidence(names, st.metadata()) {
        return Err(Error::InvalidInput(format!(
            "{} holds quantized layers ({evidence}): their stored codes are not the weights, so \
             they are not loaded as tensors. Convert it to a float dtype first (`checkpoint-save \
             convert FILE --dtype bf16`), or open it with `open_input`, which reads their values",
            path.display()
        )));
    }
    let infos = st.infos();
    let sigma = |key: &str| read_f32_scalar(&st, key);
    let (arch, inv) = invert_file(path, &infos, st.metadata(), arch, sigma)?;
    let mut maps: BTreeMap<ComponentKind, TensorMap> = BTreeMap::new();
    for (file_key, kind, mv) in inv.moves {
        let Some(entry) = st.tensor(&file_key) else {
            continue;
        };
        let t = candle_tensor(&st, entry, device)?;
        let map = maps.entry(kind).or_default();
        match mv {
            Move::Copy(k) => {
                map.insert(k, t);
            }
            Move::Transpose(k) => {
                map.insert(k, t.t()?.contiguous()?);
            }
            Move::Split(keys) => {
                let n = t.dim(0)? / 3;
                for (i, k) in keys.into_iter().enumerate() {
                    map.insert(k, t.narrow(0, i * n, n)?.contiguous()?);
                }
            }
        }
    }
    st.check_unchanged()?;
    let mut components = Components::default();
    for (kind, map) in maps {
        components.set(kind, map);
    }
    Ok(Loaded {
        arch,
        prediction: inv.prediction,
        components,
        metadata: st.metadata().clone(),
        leftover: inv.leftover,
    })
}

/// Every tensor of a `.safetensors` file onto `device`, under its name in the file.
///
/// # Errors
/// As [`load_checkpoint`] for reading the file, [`Error::UnsupportedDtype`] and [`Error::Candle`].
pub fn load_tensors(path: &Path, device: &Device) -> Result<TensorMap> {
    let st = SafetensorsFile::open(path)?;
    let tensors = st
        .tensors()
        .iter()
        .map(|t| Ok((t.name.clone(), candle_tensor(&st, t, device)?)))
        .collect::<Result<TensorMap>>()?;
    st.check_unchanged()?;
    Ok(tensors)
}

/// The first value of an F32 tensor of the file (0 when it is absent or empty).
pub(crate) fn read_f32_scalar(st: &SafetensorsFile, key: &str) -> Result<f32> {
    let Some(t) = st.tensor(key) else {
        return Ok(0.0);
    };
    if t.dtype != Dtype::F32 || t.byte_len() < 4 {
        return Ok(0.0);
    }
    let mut b = [0u8; 4];
    st.read_at(&mut b, t.offsets.0)?;
    Ok(f32::from_le_bytes(b))
}

/// One tensor of the file as a candle tensor on `device` (F8_E5M2 widened to F16, exactly).
///
/// # Errors
/// [`Error::UnsupportedDtype`] for a dtype candle cannot hold; read and candle errors.
/// Refuses a GGUF file: its tensors' bytes are ggml blocks, not values of their dtype.
fn refuse_gguf(st: &SafetensorsFile) -> Result<()> {
    if st.gguf().is_none() {
        return Ok(());
    }
    Err(Error::InvalidInput(format!(
        "{} is a GGUF file, whose tensors are ggml blocks, not loaded as candle tensors; open \
         it with `open_input` (or `checkpoint-save convert FILE --dtype bf16`), which reads \
         their values",
        st.path().display()
    )))
}

pub(crate) fn candle_tensor(
    st: &SafetensorsFile,
    t: &TensorEntry,
    device: &Device,
) -> Result<Tensor> {
    refuse_gguf(st)?;
    let bytes = st.read_tensor(t)?;
    if t.dtype == Dtype::F8_E5M2 {
        return Ok(Tensor::from_vec(
            e5m2_to_f16(&bytes),
            t.shape.as_slice(),
            device,
        )?);
    }
    let Some(d) = candle_dtype(t.dtype) else {
        return Err(Error::UnsupportedDtype {
            dtype: t.dtype.to_string(),
            hint: format!(
                "tensor `{}` of {} cannot be loaded: candle has no {} tensors (it holds F64, F32, F16, BF16, F8_E4M3, I64, I32, I16, U32, U8; F8_E5M2 is read as F16)",
                t.name,
                st.path().display(),
                t.dtype
            ),
        });
    };
    Ok(Tensor::from_raw_buffer(&bytes, d, &t.shape, device)?)
}

/// Widens `float8_e5m2` bytes to f16: an e5m2 value is exactly the top byte of its f16.
fn e5m2_to_f16(bytes: &[u8]) -> Vec<half::f16> {
    bytes
        .iter()
        .map(|&b| half::f16::from_bits(u16::from(b) << 8))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e5m2_widens_exactly() {
        let bytes: Vec<u8> = (0..=255).collect();
        for (b, h) in bytes.iter().zip(e5m2_to_f16(&bytes)) {
            let want = float8::F8E5M2::from_bits(*b).to_f32();
            let got = h.to_f32();
            assert!(
                got == want || (got.is_nan() && want.is_nan()),
                "{b:#04x}: {got} vs {want}"
            );
        }
    }
}
