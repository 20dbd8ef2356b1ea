//! The vision tower of a `qwen2vl` text encoder, read from the mmproj file ComfyUI-GGUF's
//! loader pairs with it (`gguf_mmproj_loader`; pairing in [`crate::gguf_text::mmproj`]):
//!
//! - `v.patch_embd.weight` and `.weight.1` stacked on a new third dimension into the 5-D
//!   `visual.patch_embed.proj.weight`, in f32 (the loader dequantizes both to float32);
//! - every name renamed by `CLIP_VISION_SD_MAP`;
//! - each block's `attn_q`/`attn_k`/`attn_v` joined (rows: q, k, v) into `attn.qkv`, in f16
//!   when stored F16 or F32 (a bias), bf16 otherwise (BF16 and the block types: the loader's
//!   `is_quantized`), each value rounded to it as the loader's `dequantize_tensor` rounds it;
//! - the rest as stored.
//!
//! Nothing is read but headers: the stack and the joins are element ranges of the file's
//! tensors, the casts made when written. Values are the loader's exactly for F32/F16/BF16
//! files; for a quantized file, they are its values with `dequant_dtype=float32`.
//!
//! No mmproj in the folder: the language model alone, with a warning (the loader logs an error
//! and goes on). Several: the first in sorted order, with a warning. Each warning once per file
//! and process, none after [`set_quiet`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::files::open_set;
use crate::error::{Error, Result};
use crate::gguf_text::mmproj::{candidates, match_stem, to_hf, PATCH, PATCH_GGUF};
use crate::model::dtype::Dtype;
use crate::model::{InputMap, InputTensor, Merged};
use crate::read::gguf::{GgufFile, MetaValue};

/// The `general.type`s the loader reads beside a text encoder (`VIS_TYPE_LIST`).
const VIS_TYPES: [&str; 2] = ["clip-vision", "mmproj"];

/// Adds to `out` (a `qwen2vl` encoder read from `text`, in the loader's names) the vision tower
/// of the mmproj file the loader pairs with it (see the [module docs](self)).
///
/// # Errors
/// [`Error::Io`] when the folder cannot be listed; [`Error::InvalidInput`] naming the mmproj
/// file when it is not an mmproj or its tensors do not form the loader's tower; its read
/// errors.
pub(super) fn add_vision_tower(out: &mut InputMap, text: &Path) -> Result<()> {
    let found = candidates(text)?;
    let name = text.file_name().unwrap_or_default().to_string_lossy();
    let dir = text.parent().unwrap_or(Path::new(".")).display();
    let warn = first_time(text);
    let Some(first) = found.first() else {
        if !warn {
            return Ok(());
        }
        eprintln!(
            "checkpoint-save: no mmproj file for {name} in {dir} (a .gguf whose name holds \
             `mmproj` and `{}`): the language model is read without its vision tower, as \
             ComfyUI-GGUF's loader reads it (Qwen-Image-Edit needs the tower)",
            match_stem(text)
        );
        return Ok(());
    };
    if found.len() > 1 && warn {
        let all: Vec<String> = found
            .iter()
            .map(|p| p.file_name().unwrap_or_default().to_string_lossy().into())
            .collect();
        eprintln!(
            "checkpoint-save: several mmproj files in {dir} match {name} ({}); using {}, the \
             first in sorted order (ComfyUI-GGUF's loader takes the first `os.listdir` gives, \
             an order no file system promises)",
            all.join(", "),
            all[0]
        );
    }
    // The loader's `sd.update(vsd)`: the mmproj's tensors win.
    out.extend(read(first)?);
    Ok(())
}

/// Whether the warnings are not printed (the CLI's `--quiet`).
static QUIET: AtomicBool = AtomicBool::new(false);

/// Stops (or resumes) the warnings reading a text encoder prints on stderr (no mmproj beside a
/// `qwen2vl` file, several): what a program promising no warnings (`--quiet`) calls first.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether this process has not yet warned about the text encoder at `path` (a job may open
/// an input more than once: a warning per file is enough).
fn first_time(path: &Path) -> bool {
    if QUIET.load(Ordering::Relaxed) {
        return false;
    }
    static WARNED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    WARNED.lock().map_or(true, |mut w| w.insert(key))
}

/// The vision tower of the mmproj file at `path`, in the loader's names and dtypes.
///
/// # Errors
/// See [`add_vision_tower`].
pub(crate) fn read(path: &Path) -> Result<InputMap> {
    let bad = |why: String| {
        Error::InvalidInput(format!(
            "{}: {why}; ComfyUI-GGUF's loader cannot read it as a vision tower either: \
             replace or rename the file",
            path.display()
        ))
    };
    let header = GgufFile::open(path)?;
    let kind = match header.get("general.type") {
        Some(MetaValue::String(s)) => s.clone(),
        Some(v) => format!("a {:?} value", v.kind()),
        None => "missing".into(),
    };
    if header.architecture().is_none() || !VIS_TYPES.contains(&kind.as_str()) {
        return Err(bad(format!(
            "it is paired as an mmproj by its name, but its `general.type` is {kind} (an mmproj \
             file says `mmproj` and has a `general.architecture`)"
        )));
    }
    let mut raw = open_set(path)?.tensors;
    if raw.contains_key(PATCH_GGUF[1]) {
        let stacked = stack_patch(&mut raw).map_err(&bad)?;
        raw.insert(PATCH_GGUF[0].to_string(), stacked);
    }
    let mut vsd: InputMap = raw.into_iter().map(|(k, t)| (to_hf(&k), t)).collect();
    if vsd.contains_key("visual.blocks.0.attn_q.weight") {
        join_qkv(&mut vsd).map_err(bad)?;
    }
    Ok(vsd)
}

/// `torch.stack([w1, w2], dim=2)` of the two 4-D slices, in f32.
fn stack_patch(raw: &mut InputMap) -> std::result::Result<InputTensor, String> {
    let (Some(w1), Some(w2)) = (raw.remove(PATCH_GGUF[0]), raw.remove(PATCH_GGUF[1])) else {
        return Err(format!(
            "it has `{}` without `{}`",
            PATCH_GGUF[1], PATCH_GGUF[0]
        ));
    };
    let (a, b) = (w1.info(), w2.info());
    let [c1, c2, kh, kw] = a.shape[..] else {
        return Err(format!("`{}` is {:?}, not 4-D", PATCH_GGUF[0], a.shape));
    };
    if a.shape != b.shape || a.dtype != b.dtype {
        return Err(format!(
            "its two patch-embedding slices differ ({} {:?} and {} {:?})",
            a.dtype, a.shape, b.dtype, b.shape
        ));
    }
    let plane = kh * kw;
    let mut parts = Vec::with_capacity(2 * c1 * c2);
    for ij in 0..c1 * c2 {
        parts.push((w1.clone(), ij * plane..(ij + 1) * plane));
        parts.push((w2.clone(), ij * plane..(ij + 1) * plane));
    }
    let joined =
        InputTensor::joined(PATCH, parts, vec![c1, c2, 2, kh, kw]).map_err(|e| e.to_string())?;
    to_dtype(joined, Dtype::F32)
}

/// The loader's grouping of `….attn_{q,k,v}.*` into `….attn.qkv.*`.
fn join_qkv(vsd: &mut InputMap) -> std::result::Result<(), String> {
    let mut groups: BTreeMap<String, BTreeMap<String, InputTensor>> = BTreeMap::new();
    let keys: Vec<String> = vsd
        .keys()
        .filter(|k| ["attn_q", "attn_k", "attn_v"].iter().any(|x| k.contains(x)))
        .cloned()
        .collect();
    for k in keys {
        let Some((block, part)) = k.rsplit_once(".attn_") else {
            continue;
        };
        let suffix = part.rsplit('.').next().unwrap_or(part);
        let t = vsd.remove(&k).ok_or("a tensor vanished")?;
        groups
            .entry(format!("{block}.attn.qkv.{suffix}"))
            .or_default()
            .insert(part.to_string(), t);
    }
    for (key, parts) in groups {
        let suffix = key.rsplit('.').next().unwrap_or_default();
        let mut three = Vec::with_capacity(3);
        for p in ["q", "k", "v"] {
            let name = format!("{p}.{suffix}");
            let t = parts
                .get(&name)
                .ok_or_else(|| format!("`{key}` has no `attn_{name}` to join"))?;
            three.push(t.clone());
        }
        let infos: Vec<_> = three.iter().map(InputTensor::info).collect();
        let first = &infos[0];
        if infos
            .iter()
            .any(|i| i.dtype != first.dtype || i.quant != first.quant)
        {
            return Err(format!("the q, k and v of `{key}` are of different types"));
        }
        let rest = first.shape.get(1..).unwrap_or_default();
        if infos
            .iter()
            .any(|i| i.shape.get(1..).unwrap_or_default() != rest)
        {
            return Err(format!("the q, k and v of `{key}` differ in width"));
        }
        let mut shape = first.shape.clone();
        if let Some(rows) = shape.first_mut() {
            *rows = infos
                .iter()
                .map(|i| i.shape.first().copied().unwrap_or(1))
                .sum();
        }
        let parts = three
            .into_iter()
            .map(|t| {
                let n = t.info().numel();
                (t, 0..n)
            })
            .collect();
        let joined = InputTensor::joined(&key, parts, shape).map_err(|e| e.to_string())?;
        // The loader's `is_quantized`: every type but F32 and F16 (BF16 included).
        let plain = first.quant.is_none() && matches!(first.dtype, Dtype::F32 | Dtype::F16);
        let dtype = if plain { Dtype::F16 } else { Dtype::BF16 };
        vsd.insert(key, to_dtype(joined, dtype)?);
    }
    Ok(())
}

/// `t` as `dtype` (itself when it already is one).
fn to_dtype(t: InputTensor, dtype: Dtype) -> std::result::Result<InputTensor, String> {
    let info = t.info();
    if info.dtype == dtype && info.quant.is_none() {
        return Ok(t);
    }
    let key = format!("{dtype} cast");
    Merged::cast(&key, t, dtype)
        .map(|m| InputTensor::Merged(std::sync::Arc::new(m)))
        .map_err(|e| e.to_string())
}
