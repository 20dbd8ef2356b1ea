//! Loading a checkpoint back: ComfyUI's CheckpointLoaderSimple in reverse of [`crate::save`].
//!
//! Why it exists: a save is only trustworthy if the file reads back into the components it was made
//! from, and users want to look inside checkpoints (`inspect`) without loading gigabytes.
//!
//! The inverse is not a second hand-written table of every key. Each checkpoint key is mapped back
//! by the layout's prefixes (plus [`openclip::openclip_to_hf`] for the OpenCLIP encoders), and then
//! [`layout::layout`] is run again on the recovered shapes: it must reproduce exactly the keys and
//! shapes found in the file. A file in a layout we do not know therefore fails with a clear error
//! instead of loading into silently wrong names, and the loader cannot drift from the save rules.
//! Tensors the save creates (SDXL's `position_ids`, the prediction markers) are recognised the same
//! way, from the layout's own [`Source`]s, and are not handed back as component tensors.
//!
//! Dtypes: candle has no `F8_E5M2`, so such tensors are loaded as F16, which is exact (an e5m2 value
//! is the top byte of the f16 with the same value); saving them again writes F16. Dtypes candle cannot
//! hold at all (I8, U16, BOOL, U64, …) are refused with [`Error::UnsupportedDtype`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Metadata, SafeTensorError, TensorView};
use safetensors::SafeTensors;
use serde::{Serialize, Serializer};

use crate::arch::{Arch, Prediction};
use crate::components::{ComponentKind, ComponentShapes, Components, TensorInfo, TensorMap};
use crate::dtype::{byte_len, candle_dtype, file_dtype, Dtype};
use crate::error::{Error, IoContext, Result};
use crate::layout::openclip::{self, Unconverted};
use crate::layout::{self, detect, vae_prefix, GenericPrefixes, LayoutKind, Source, UNET_PREFIX};
use crate::plan::MAX_HEADER_LEN;

/// The `v_pred` marker (§4).
const V_PRED: &str = "v_pred";
/// The `ztsnr` marker, only meaningful together with `v_pred`.
const ZTSNR: &str = "ztsnr";
/// The EDM v-prediction sigma markers.
const SIGMA_MAX: &str = "edm_vpred.sigma_max";
const SIGMA_MIN: &str = "edm_vpred.sigma_min";
/// ComfyUI's sigma_min when a file has only `edm_vpred.sigma_max`.
const DEFAULT_SIGMA_MIN: f64 = 0.002;
/// Header metadata key holding the prediction type.
const PREDICT_KEY: &str = "modelspec.predict_key";

/// Reads every tensor of a plain `.safetensors` file onto `device`, with its `__metadata__`.
///
/// The file is memory-mapped; each tensor is copied out of the map once. `F8_E5M2` tensors are
/// returned as F16 (exact; see the module docs).
///
/// # Errors
/// - [`Error::Io`] naming the path when the file is missing or cannot be read or mapped;
/// - [`Error::HeaderTooLarge`] when the header length exceeds 100,000,000 bytes;
/// - [`Error::InvalidCheckpoint`] when the file is shorter than 8 bytes, is not a safetensors file
///   (header not UTF-8 JSON, bad offsets) or is truncated or incomplete;
/// - [`Error::UnsupportedDtype`] naming the key for a dtype candle cannot hold;
/// - [`Error::Candle`] when a tensor cannot be created on `device`.
pub fn read_tensors(path: &Path, device: &Device) -> Result<(TensorMap, BTreeMap<String, String>)> {
    let file = File::open(path).ctx(|| format!("cannot open {}", path.display()))?;
    // SAFETY: the map is only read while `mmap` lives, and every tensor is copied out of it before
    // this function returns. A file truncated by another process during the read would fault; the
    // same is true of every memory-mapped safetensors reader, and checkpoints are not modified in place.
    let mmap = unsafe { memmap2::Mmap::map(&file) }
        .ctx(|| format!("cannot memory-map {}", path.display()))?;
    let header_len = check_prefix(path, &mmap, mmap.len() as u64)?;
    let st = SafeTensors::deserialize(&mmap).map_err(|e| match e {
        SafeTensorError::MetadataIncompleteBuffer => {
            let header = mmap.get(8..8 + header_len).unwrap_or_default();
            match parse_header(path, header) {
                Ok(meta) => incomplete(path, data_end(&meta), (mmap.len() - 8 - header_len) as u64),
                Err(e) => e,
            }
        }
        other => safetensors_error(path, other),
    })?;
    let (_, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| safetensors_error(path, e))?;
    let metadata = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let mut tensors = TensorMap::new();
    for (key, view) in st.tensors() {
        let t = to_tensor(path, &key, &view, device)?;
        tensors.insert(key, t);
    }
    Ok((tensors, metadata))
}

/// Validates the 8-byte length prefix; returns the header length.
fn check_prefix(path: &Path, bytes: &[u8], file_len: u64) -> Result<usize> {
    let Some(prefix) = bytes.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
        return Err(Error::InvalidCheckpoint {
            path: path.to_path_buf(),
            reason: format!(
                "the file is {file_len} bytes long, shorter than the 8-byte header length of every safetensors file; it is empty or truncated"
            ),
        });
    };
    let n = u64::from_le_bytes(prefix);
    if n > MAX_HEADER_LEN {
        return Err(Error::HeaderTooLarge {
            size: n,
            limit: MAX_HEADER_LEN,
        });
    }
    if 8 + n > file_len {
        return Err(Error::InvalidCheckpoint {
            path: path.to_path_buf(),
            reason: format!(
                "the header claims {n} bytes but only {} follow the length prefix: the file is truncated or incomplete (an interrupted download or copy?); fetch or save it again",
                file_len - 8
            ),
        });
    }
    // n <= MAX_HEADER_LEN, which fits every usize this crate builds for.
    usize::try_from(n).map_err(|_| Error::HeaderTooLarge {
        size: n,
        limit: MAX_HEADER_LEN,
    })
}

/// Parses and validates the JSON header (offsets in order, sizes matching dtype and shape).
fn parse_header(path: &Path, header: &[u8]) -> Result<Metadata> {
    let text = std::str::from_utf8(header).map_err(|e| Error::InvalidCheckpoint {
        path: path.to_path_buf(),
        reason: format!("not a safetensors file: the header is not UTF-8 text ({e})"),
    })?;
    serde_json::from_str::<Metadata>(text).map_err(|e| Error::InvalidCheckpoint {
        path: path.to_path_buf(),
        reason: match e.classify() {
            serde_json::error::Category::Data => {
                format!("the header describes invalid tensors ({e}); the file is corrupt")
            }
            _ => format!("not a safetensors file: the header is not valid JSON ({e})"),
        },
    })
}

/// End of the data section the header describes.
fn data_end(meta: &Metadata) -> u64 {
    meta.tensors()
        .values()
        .map(|i| i.data_offsets.1 as u64)
        .max()
        .unwrap_or(0)
}

fn incomplete(path: &Path, expected: u64, found: u64) -> Error {
    Error::InvalidCheckpoint {
        path: path.to_path_buf(),
        reason: format!(
            "the header describes {expected} bytes of tensor data but the file holds {found}: the file is truncated or incomplete (an interrupted download or copy?); fetch or save it again"
        ),
    }
}

fn safetensors_error(path: &Path, e: SafeTensorError) -> Error {
    let reason = match &e {
        SafeTensorError::InvalidHeader(_)
        | SafeTensorError::InvalidHeaderDeserialization(_)
        | SafeTensorError::JsonError(_)
        | SafeTensorError::HeaderTooSmall => format!("not a safetensors file: {e}"),
        SafeTensorError::InvalidHeaderLength | SafeTensorError::MetadataIncompleteBuffer => {
            format!("{e}: the file is truncated or incomplete; fetch or save it again")
        }
        _ => format!("the header describes invalid tensors ({e}); the file is corrupt"),
    };
    Error::InvalidCheckpoint {
        path: path.to_path_buf(),
        reason,
    }
}

/// One tensor of the map as a candle tensor on `device`.
fn to_tensor(path: &Path, key: &str, view: &TensorView<'_>, device: &Device) -> Result<Tensor> {
    let dtype = view.dtype();
    if dtype == Dtype::F8_E5M2 {
        return Ok(Tensor::from_vec(
            e5m2_to_f16(view.data()),
            view.shape(),
            device,
        )?);
    }
    let Some(d) = candle_dtype(dtype) else {
        return Err(Error::UnsupportedDtype {
            dtype: dtype.to_string(),
            hint: format!(
                "tensor `{key}` of {} cannot be loaded: candle has no {dtype} tensors (it holds F64, F32, F16, BF16, F8_E4M3, I64, I32, I16, U32, U8; F8_E5M2 is read as F16)",
                path.display()
            ),
        });
    };
    Ok(Tensor::from_raw_buffer(
        view.data(),
        d,
        view.shape(),
        device,
    )?)
}

/// Widens `float8_e5m2` bytes to f16: an e5m2 value is exactly the top byte of its f16.
fn e5m2_to_f16(bytes: &[u8]) -> Vec<half::f16> {
    bytes
        .iter()
        .map(|&b| half::f16::from_bits(u16::from(b) << 8))
        .collect()
}

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

/// Loads a checkpoint and undoes the save layout (checkpoint-format.md §8, §10).
///
/// The architecture is detected from the denoiser's keys unless `arch` is given. With detection, a
/// file whose keys form the generic layout (all prefixes of [`GenericPrefixes::default`], nothing
/// left over) loads with `arch == None`, like a generic save reports. The result is self-checked: the
/// save layout of the recovered components must reproduce every claimed key and shape of the file.
///
/// # Errors
/// - every error of [`read_tensors`];
/// - [`Error::UnknownArchitecture`] when no architecture is given, none is detected and the file is
///   not in the generic layout;
/// - [`Error::InvalidCheckpoint`] when the keys do not form the layout of the (given or detected)
///   architecture, or a marker is malformed.
pub fn load_checkpoint(path: &Path, device: &Device, arch: Option<Arch>) -> Result<Loaded> {
    let (mut tensors, metadata) = read_tensors(path, device)?;
    let infos: BTreeMap<String, TensorInfo> = tensors
        .iter()
        .map(|(k, t)| {
            let info = TensorInfo::new(t.dims().to_vec(), file_dtype(t.dtype()));
            (k.clone(), info)
        })
        .collect();
    let sigma = |key: &str| -> Result<f32> {
        match tensors.get(key) {
            Some(t) => {
                let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                Ok(values.into_iter().next().unwrap_or(0.0))
            }
            None => Ok(0.0),
        }
    };
    let attempt = |kind: &LayoutKind| -> Result<Inversion> {
        let default = match kind {
            LayoutKind::Arch(a) => a.default_prediction(),
            LayoutKind::Generic(_) => Prediction::Flow,
        };
        let (prediction, markers) = read_prediction(path, &infos, &metadata, default, &sigma)?;
        invert(path, kind, &infos, prediction, &markers)
    };
    let (arch, inv) = match arch {
        Some(a) => (Some(a), attempt(&LayoutKind::Arch(a))?),
        None => {
            let generic = || attempt(&LayoutKind::Generic(GenericPrefixes::default()));
            match detect_arch(&infos) {
                Ok(a) => match attempt(&LayoutKind::Arch(a)) {
                    Ok(inv) => (Some(a), inv),
                    Err(arch_err) => match generic() {
                        Ok(inv) if inv.leftover.is_empty() => (None, inv),
                        _ => return Err(arch_err),
                    },
                },
                Err(detect_err) => match generic() {
                    Ok(inv) if inv.leftover.is_empty() => (None, inv),
                    _ => return Err(detect_err),
                },
            }
        }
    };
    let mut maps: BTreeMap<ComponentKind, TensorMap> = BTreeMap::new();
    for (file_key, kind, mv) in inv.moves {
        let Some(t) = tensors.remove(&file_key) else {
            continue;
        };
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
    let mut components = Components::default();
    for (kind, map) in maps {
        components.set(kind, map);
    }
    Ok(Loaded {
        arch,
        prediction: inv.prediction,
        components,
        metadata,
        leftover: inv.leftover,
    })
}

/// The denoiser's keys (prefix stripped) and the architecture they detect as.
fn detect_arch(infos: &BTreeMap<String, TensorInfo>) -> Result<Arch> {
    let model: BTreeMap<String, TensorInfo> = infos
        .iter()
        .filter_map(|(k, i)| Some((k.strip_prefix(UNET_PREFIX)?.to_string(), i.clone())))
        .collect();
    detect::detect_model(&model)
}

/// The prediction type from the markers (§4, §10.2), then `modelspec.predict_key`, then `default`.
///
/// Returns the marker keys it consumed. `sigma` reads the F32 value of an `edm_vpred.*` scalar.
fn read_prediction(
    path: &Path,
    infos: &BTreeMap<String, TensorInfo>,
    metadata: &BTreeMap<String, String>,
    default: Prediction,
    mut sigma: impl FnMut(&str) -> Result<f32>,
) -> Result<(Prediction, Vec<&'static str>)> {
    let mut scalar = |key: &'static str| -> Result<Option<f64>> {
        let Some(info) = infos.get(key) else {
            return Ok(None);
        };
        if info.dtype != Dtype::F32 || info.numel() != 1 {
            return Err(Error::InvalidCheckpoint {
                path: path.to_path_buf(),
                reason: format!(
                    "marker `{key}` must hold one F32 value, found {} of shape {:?}",
                    info.dtype, info.shape
                ),
            });
        }
        Ok(Some(f64::from(sigma(key)?)))
    };
    if let Some(sigma_max) = scalar(SIGMA_MAX)? {
        let min = scalar(SIGMA_MIN)?;
        let mut used = vec![SIGMA_MAX];
        if min.is_some() {
            used.push(SIGMA_MIN);
        }
        let prediction = Prediction::EdmV {
            sigma_max,
            sigma_min: min.unwrap_or(DEFAULT_SIGMA_MIN),
        };
        return Ok((prediction, used));
    }
    if infos.contains_key(V_PRED) {
        return Ok(if infos.contains_key(ZTSNR) {
            (Prediction::VZsnr, vec![V_PRED, ZTSNR])
        } else {
            (Prediction::V, vec![V_PRED])
        });
    }
    let prediction = match metadata.get(PREDICT_KEY).map(String::as_str) {
        Some("epsilon") => Prediction::Eps,
        Some("v") => Prediction::V,
        _ => default,
    };
    Ok((prediction, Vec::new()))
}

/// What happens to one checkpoint tensor on load.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Move {
    /// Becomes this in-memory key unchanged.
    Copy(String),
    /// Transposed back into this key (OpenCLIP `text_projection`).
    Transpose(String),
    /// Split into three equal row blocks: q, k, v (OpenCLIP `in_proj_*`).
    Split([String; 3]),
}

/// The inverse of one layout over a file's keys.
#[derive(Debug, Clone, PartialEq)]
struct Inversion {
    prediction: Prediction,
    /// (checkpoint key, component, what it becomes).
    moves: Vec<(String, ComponentKind, Move)>,
    /// Keys no rule claims.
    leftover: Vec<String>,
}

/// One text-encoder rule of an architecture's layout, read backwards: (prefix in the checkpoint,
/// in-memory prefix it came from, whether the save converted the keys to OpenCLIP naming).
type ClipRule = (&'static str, &'static str, bool);

/// The text-encoder prefixes of §8.2–§8.6 (the layout's `clip_layout`, backwards).
fn clip_rules(arch: Arch) -> &'static [ClipRule] {
    match arch {
        Arch::Sd15 => &[("cond_stage_model.", "clip_l.", false)],
        Arch::Sd2 => &[("cond_stage_model.model.", "clip_h.", true)],
        Arch::Sdxl => &[
            ("conditioner.embedders.1.model.", "clip_g.", true),
            ("conditioner.embedders.0.", "clip_l.", false),
        ],
        Arch::SdxlRefiner => &[("conditioner.embedders.0.model.", "clip_g.", true)],
        Arch::Sd3 | Arch::Flux | Arch::FluxSchnell => &[("text_encoders.", "", false)],
    }
}

/// Which component a checkpoint key belongs to under `kind`, and what it becomes.
fn claim(kind: &LayoutKind, key: &str) -> Option<(ComponentKind, Move)> {
    match kind {
        LayoutKind::Generic(p) => ComponentKind::ALL.into_iter().find_map(|c| {
            let rest = key.strip_prefix(p.get(c))?;
            Some((c, Move::Copy(rest.to_string())))
        }),
        LayoutKind::Arch(arch) => {
            if let Some(rest) = key.strip_prefix(UNET_PREFIX) {
                return Some((ComponentKind::Model, Move::Copy(rest.to_string())));
            }
            if let Some(rest) = key.strip_prefix(vae_prefix(*arch)) {
                return Some((ComponentKind::Vae, Move::Copy(rest.to_string())));
            }
            clip_rules(*arch).iter().find_map(|&(file, m, openclip)| {
                let rest = key.strip_prefix(file)?;
                let mv = if !openclip {
                    Move::Copy(format!("{m}{rest}"))
                } else {
                    match openclip::openclip_to_hf(rest) {
                        Unconverted::Renamed(k) => Move::Copy(format!("{m}{k}")),
                        Unconverted::Transposed(k) => Move::Transpose(format!("{m}{k}")),
                        Unconverted::Split(ks) => Move::Split(ks.map(|k| format!("{m}{k}"))),
                    }
                };
                Some((ComponentKind::Clip, mv))
            })
        }
    }
}

/// Inverts `kind` over the file's keys and self-checks the result against [`layout::layout`].
fn invert(
    path: &Path,
    kind: &LayoutKind,
    infos: &BTreeMap<String, TensorInfo>,
    prediction: Prediction,
    markers: &[&str],
) -> Result<Inversion> {
    let name = match kind {
        LayoutKind::Arch(a) => format!("the {a} layout"),
        LayoutKind::Generic(_) => "the generic layout".to_string(),
    };
    let bad = |reason: String| Error::InvalidCheckpoint {
        path: path.to_path_buf(),
        reason: format!("its keys do not form {name}: {reason}"),
    };
    let mut moves = Vec::new();
    let mut leftover = Vec::new();
    let mut recovered: BTreeMap<ComponentKind, BTreeMap<String, TensorInfo>> = BTreeMap::new();
    for (key, info) in infos {
        if markers.contains(&key.as_str()) {
            continue;
        }
        let Some((component, mv)) = claim(kind, key) else {
            leftover.push(key.clone());
            continue;
        };
        let parts = recovered_infos(key, info, &mv).map_err(&bad)?;
        let map = recovered.entry(component).or_default();
        for (k, i) in parts {
            if map.insert(k.clone(), i).is_some() {
                return Err(bad(format!(
                    "two checkpoint keys map to the {component} tensor `{k}` (the second is `{key}`)"
                )));
            }
        }
        moves.push((key.clone(), component, mv));
    }
    let shapes = |recovered: &BTreeMap<ComponentKind, BTreeMap<String, TensorInfo>>| {
        let mut s = ComponentShapes::default();
        for (k, m) in recovered {
            s.set(*k, m.clone());
        }
        s
    };
    // Tensors the save creates (SDXL's position_ids) are in the file but not in memory.
    let first =
        layout::layout(kind, &shapes(&recovered), prediction).map_err(|e| bad(e.to_string()))?;
    for e in &first.entries {
        if matches!(e.source, Source::PositionIds { .. }) {
            if let Some(i) = moves.iter().position(|(k, _, _)| *k == e.key) {
                let (_, component, mv) = moves.remove(i);
                if let (Some(map), Move::Copy(k)) = (recovered.get_mut(&component), &mv) {
                    map.remove(k);
                }
            }
        }
    }
    let again =
        layout::layout(kind, &shapes(&recovered), prediction).map_err(|e| bad(e.to_string()))?;
    let want: BTreeMap<&str, &[usize]> = again
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.shape.as_slice()))
        .collect();
    let claimed: BTreeSet<&str> = infos
        .keys()
        .map(String::as_str)
        .filter(|k| !leftover.iter().any(|l| l == k))
        .collect();
    for k in &claimed {
        match (want.get(k), infos.get(*k)) {
            (None, _) => {
                return Err(bad(format!(
                    "`{k}` would not be written by a save of the recovered components"
                )))
            }
            (Some(shape), Some(info)) if *shape != info.shape.as_slice() => {
                return Err(bad(format!(
                    "`{k}` has shape {:?} but a save of the recovered components writes {shape:?}",
                    info.shape
                )))
            }
            _ => {}
        }
    }
    if let Some(missing) = want.keys().find(|k| !claimed.contains(*k)) {
        return Err(bad(format!(
            "a save of the recovered components would also write `{missing}`, which the file lacks"
        )));
    }
    Ok(Inversion {
        prediction,
        moves,
        leftover,
    })
}

/// The in-memory keys and infos one checkpoint tensor becomes.
fn recovered_infos(
    key: &str,
    info: &TensorInfo,
    mv: &Move,
) -> std::result::Result<Vec<(String, TensorInfo)>, String> {
    Ok(match mv {
        Move::Copy(k) => vec![(k.clone(), info.clone())],
        Move::Transpose(k) => {
            let [rows, cols] = info.shape[..] else {
                return Err(format!(
                    "the text projection `{key}` must be 2-D, found shape {:?}",
                    info.shape
                ));
            };
            vec![(k.clone(), TensorInfo::new(vec![cols, rows], info.dtype))]
        }
        Move::Split(keys) => {
            let rank_ok = matches!(info.shape.len(), 1 | 2);
            if !rank_ok || !info.shape[0].is_multiple_of(3) {
                return Err(format!(
                    "the fused q/k/v `{key}` must be 1-D or 2-D with a multiple of 3 rows, found shape {:?}",
                    info.shape
                ));
            }
            let mut shape = info.shape.clone();
            shape[0] /= 3;
            keys.iter()
                .map(|k| (k.clone(), TensorInfo::new(shape.clone(), info.dtype)))
                .collect()
        }
    })
}

/// Tensor count, bytes and dtypes of one part of a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PartSummary {
    /// `model`, `clip`, `vae` or `other`.
    pub name: &'static str,
    /// Number of tensors.
    pub tensors: usize,
    /// Bytes of tensor data.
    pub bytes: u64,
    /// Number of tensors per dtype (`F16`, `F32`, …).
    pub dtypes: BTreeMap<String, usize>,
}

/// What the header of a checkpoint says, read without loading tensor data.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inspection {
    /// The file.
    pub path: PathBuf,
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
    /// The header's `__metadata__`.
    pub metadata: BTreeMap<String, String>,
    /// Bytes of tensor data.
    pub data_bytes: u64,
    /// Length of the JSON header (without the 8-byte length prefix).
    pub header_bytes: u64,
    /// File size.
    pub file_bytes: u64,
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
    } else {
        "other"
    }
}

/// Reads a checkpoint's header (and at most the two 4-byte EDM sigma scalars), not its tensor data.
///
/// # Errors
/// - [`Error::Io`] naming the path when the file is missing or unreadable;
/// - [`Error::HeaderTooLarge`] and [`Error::InvalidCheckpoint`] as for [`read_tensors`]
///   (truncation is found from the file size).
pub fn inspect(path: &Path) -> Result<Inspection> {
    let mut file = File::open(path).ctx(|| format!("cannot open {}", path.display()))?;
    let file_bytes = file
        .metadata()
        .ctx(|| format!("cannot read the size of {}", path.display()))?
        .len();
    let mut prefix = Vec::with_capacity(8);
    (&mut file)
        .take(8)
        .read_to_end(&mut prefix)
        .ctx(|| format!("cannot read {}", path.display()))?;
    let n = check_prefix(path, &prefix, file_bytes)?;
    let mut header = vec![0u8; n];
    file.read_exact(&mut header)
        .ctx(|| format!("cannot read the header of {}", path.display()))?;
    let meta = parse_header(path, &header)?;
    let data_bytes = data_end(&meta);
    let found = file_bytes - 8 - n as u64;
    if data_bytes != found {
        return Err(incomplete(path, data_bytes, found));
    }
    let metadata: BTreeMap<String, String> = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let tensors = meta.tensors();
    let infos: BTreeMap<String, TensorInfo> = tensors
        .iter()
        .map(|(k, i)| (k.clone(), TensorInfo::new(i.shape.clone(), i.dtype)))
        .collect();
    let arch = detect_arch(&infos).ok();
    let default = arch.map_or(Prediction::Flow, Arch::default_prediction);
    let data_start = 8 + n as u64;
    let sigma = |key: &str| -> Result<f32> {
        let Some(info) = tensors.get(key) else {
            return Ok(0.0);
        };
        let mut buf = [0u8; 4];
        file.seek(SeekFrom::Start(data_start + info.data_offsets.0 as u64))
            .and_then(|_| file.read_exact(&mut buf))
            .ctx(|| format!("cannot read `{key}` from {}", path.display()))?;
        Ok(f32::from_le_bytes(buf))
    };
    let (prediction, _) = read_prediction(path, &infos, &metadata, default, sigma)?;
    let mut parts: Vec<PartSummary> = ["model", "clip", "vae", "other"]
        .into_iter()
        .map(|name| PartSummary {
            name,
            ..Default::default()
        })
        .collect();
    for (key, info) in &infos {
        let name = part_of(key);
        if let Some(p) = parts.iter_mut().find(|p| p.name == name) {
            p.tensors += 1;
            p.bytes += byte_len(info.dtype, info.numel()) as u64;
            *p.dtypes.entry(info.dtype.to_string()).or_default() += 1;
        }
    }
    parts.retain(|p| p.tensors > 0);
    Ok(Inspection {
        path: path.to_path_buf(),
        arch,
        prediction,
        parts,
        tensors: infos.len(),
        metadata,
        data_bytes,
        header_bytes: n as u64,
        file_bytes,
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

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.path.display())?;
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
                "  {:<6} {:>6} tensors {:>12}  {}",
                p.name,
                p.tensors,
                human_bytes(p.bytes),
                dtypes.join(", ")
            )?;
        }
        if !self.metadata.is_empty() {
            writeln!(f, "  metadata:")?;
            for (k, v) in &self.metadata {
                let shown: String = v.chars().take(72).collect();
                let more = if shown.len() < v.len() { "…" } else { "" };
                writeln!(f, "    {k}: {shown}{more}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
