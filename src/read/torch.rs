//! PyTorch checkpoints (`torch.save` since 1.6: `.ckpt`, `.pt`, `.pth`, `.bin`) read without
//! running them.
//!
//! Such a file is a zip archive: `<name>/data.pkl` (a pickle of the saved object), one entry per
//! storage (`<name>/data/<key>`, stored uncompressed), `<name>/version` and `<name>/byteorder`.
//! The pickle is parsed by [`super::pickle`] with an allowlist of what a state dict needs — the
//! tensor rebuild functions, storage and dtype names, `torch.nn.Parameter`, `torch.Size`,
//! `torch.device` (close to what `torch.load(weights_only=True)` accepts), plus the numpy and
//! Lightning globals of a Lightning checkpoint's metadata (as data, see [`LIGHTNING`]) — so any
//! other global (`os.system`, `builtins.exec`, a class) is refused by name and nothing is
//! executed. Each
//! tensor becomes a byte range of its storage's entry, read where it lies like a safetensors
//! tensor.
//!
//! The state dict is the saved object itself when it holds tensors (diffusers and transformers
//! `.bin` files, plain `.pt`), or its `state_dict` (Lightning and A1111 `.ckpt`), `model` or
//! `module` entry; nested dicts of tensors are flattened with `.`.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;

use super::pickle::{self, clipped, Id, Pickle, Value};
use super::zip::{self, ZipEntry};
use super::TensorEntry;
use crate::model::dtype::{self, Dtype};

/// A pickle larger than this is not a state dict's (SDXL's is about 200 KB).
const MAX_PICKLE: u64 = 256 << 20;
/// Containers nested deeper than this are not a state dict.
const MAX_DEPTH: usize = 32;
/// Entries of the saved object, in the order they are looked for, that hold the state dict.
const NESTED: [&str; 4] = ["state_dict", "model_state_dict", "model", "module"];

/// The tensors of a PyTorch checkpoint.
#[derive(Debug)]
pub(crate) struct TorchFile {
    /// Every tensor, its offsets absolute in the file.
    pub tensors: Vec<TensorEntry>,
    /// Where `data.pkl` lies: what describes the file (hashed for recipes).
    pub pickle: (u64, u64),
    /// Entries of the saved object that are not tensors of the state dict (an epoch counter,
    /// optimizer states...), by name.
    pub left_out: Vec<String>,
}

/// Reads the tensors of the PyTorch zip `file` of `file_len` bytes.
///
/// # Errors
/// A message saying what is wrong: a refused global (named), no `data.pkl`, a compressed or
/// encrypted entry, a storage missing from the archive or smaller than a tensor on it, a tensor
/// that is not contiguous, no state dict found.
pub(crate) fn read(file: &File, file_len: u64) -> Result<TorchFile, String> {
    let entries = zip::entries(file, file_len)?;
    let pickles: Vec<&ZipEntry> = entries
        .iter()
        .filter(|e| e.name == "data.pkl" || e.name.ends_with("/data.pkl"))
        .collect();
    let pkl = match pickles.as_slice() {
        [one] => *one,
        [] => {
            return Err("it is a zip archive without `data.pkl`: not a PyTorch checkpoint".into())
        }
        _ => return Err("it holds several `data.pkl`: not one PyTorch checkpoint".into()),
    };
    let prefix = &pkl.name[..pkl.name.len() - "data.pkl".len()];
    let by_name: HashMap<&str, &ZipEntry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
    if let Some(order) = by_name.get(format!("{prefix}byteorder").as_str()) {
        let bytes = stored(file, order, 16)?;
        if bytes != b"little" {
            return Err(format!(
                "its tensors are stored {}-endian; only little-endian files are read",
                String::from_utf8_lossy(&bytes)
            ));
        }
    }
    let data = stored(file, pkl, MAX_PICKLE)?;
    let (tensors, left_out) = state_dict(&data, prefix, &by_name)?;
    Ok(TorchFile {
        tensors,
        pickle: (pkl.data_start, pkl.data_start + pkl.len),
        left_out,
    })
}

/// The tensors of the state dict a `data.pkl` holds, located in the archive's `entries` (whose
/// storages lie under `prefix`), and the names of what is not a tensor.
///
/// # Errors
/// As [`read`].
pub(crate) fn state_dict(
    data: &[u8],
    prefix: &str,
    entries: &HashMap<&str, &ZipEntry>,
) -> Result<(Vec<TensorEntry>, Vec<String>), String> {
    let p = pickle::parse(data, &allowed).map_err(|e| {
        format!(
            "{e}: the pickle may only rebuild tensors; nothing was run. If you trust the file, \
             re-save its state dict with torch.save in Python"
        )
    })?;
    let root_pairs = dict(&p, p.root).ok_or(
        "the saved object is not a dict of tensors (a whole pickled model?); save its \
         state_dict() instead",
    )?;
    let mut walk = Walk::default();
    let nested = NESTED.iter().find_map(|n| {
        root_pairs
            .iter()
            .find(|(k, v)| p.str(*k) == Some(*n) && dict(&p, *v).is_some())
    });
    let has_tensors = root_pairs
        .iter()
        .any(|(_, v)| tensor_call(&p, *v, 0).is_some());
    match nested {
        Some((k, v)) if !has_tensors => {
            flatten(&p, *v, "", 0, &mut walk)?;
            for (key, _) in root_pairs.iter().filter(|(key, _)| key != k) {
                walk.left_out.push(key_name(&p, *key)?);
            }
        }
        _ => flatten(&p, p.root, "", 0, &mut walk)?,
    }
    let Walk {
        found, left_out, ..
    } = walk;
    if found.is_empty() {
        return Err(
            "it holds no tensors where a state dict would be (the saved object itself, or its \
             `state_dict`, `model` or `module` entry)"
                .into(),
        );
    }
    let mut tensors = Vec::with_capacity(found.len());
    for (name, call) in found {
        tensors.push(locate(&p, &name, call, prefix, entries)?);
    }
    Ok((tensors, left_out))
}

/// Globals Lightning checkpoints hold beside the state dict (a numpy scalar as the
/// `ModelCheckpoint` callback's `best_model_score`, the callback object itself), which ComfyUI's
/// loader admits too. Nothing is ever called, so they stay inert records; no tensor, size or
/// dict is built from them, so entries holding them are only listed as not tensors.
const LIGHTNING: [&str; 5] = [
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
    "numpy.dtypes.Float64DType",
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
];

/// The globals a state dict's pickle may name.
fn allowed(name: &str) -> bool {
    if LIGHTNING.contains(&name) {
        return true;
    }
    let Some(t) = name.strip_prefix("torch.") else {
        return false;
    };
    matches!(
        t,
        "_utils._rebuild_tensor"
            | "_utils._rebuild_tensor_v2"
            | "_utils._rebuild_tensor_v3"
            | "_utils._rebuild_parameter"
            | "_utils._rebuild_parameter_with_state"
            | "_tensor._rebuild_from_type_v2"
            | "nn.parameter.Parameter"
            | "Tensor"
            | "Size"
            | "device"
            | "storage.UntypedStorage"
    ) || storage_dtype(t).is_some()
        || named_dtype(t).is_some()
        || unread_dtype(t).is_some()
}

/// The dtype of a legacy typed storage class (`FloatStorage`...).
fn storage_dtype(name: &str) -> Option<Dtype> {
    Some(match name {
        "FloatStorage" => Dtype::F32,
        "DoubleStorage" => Dtype::F64,
        "HalfStorage" => Dtype::F16,
        "BFloat16Storage" => Dtype::BF16,
        "LongStorage" => Dtype::I64,
        "IntStorage" => Dtype::I32,
        "ShortStorage" => Dtype::I16,
        "CharStorage" => Dtype::I8,
        "ByteStorage" => Dtype::U8,
        "BoolStorage" => Dtype::BOOL,
        "UntypedStorage" | "storage.UntypedStorage" => Dtype::U8,
        _ => return None,
    })
}

/// The dtype torch names by a storage class or dtype object this reader does not read
/// (complex, quantized, sub-byte): admitted as a name, so that a tensor of it is refused for its
/// dtype rather than as a forbidden global.
fn unread_dtype(name: &str) -> Option<&str> {
    Some(match name {
        "ComplexFloatStorage" => "complex64",
        "ComplexDoubleStorage" => "complex128",
        "QUInt8Storage" => "quint8",
        "QInt8Storage" => "qint8",
        "QInt32Storage" => "qint32",
        "QUInt4x2Storage" => "quint4x2",
        "QUInt2x4Storage" => "quint2x4",
        "complex32" | "complex64" | "complex128" | "quint8" | "qint8" | "qint32" | "quint4x2"
        | "quint2x4" | "float8_e4m3fnuz" | "float8_e5m2fnuz" | "float8_e8m0fnu"
        | "float4_e2m1fn_x2" | "bits8" | "bits16" | "bits1x8" | "bits2x4" | "bits4x2" | "uint1"
        | "uint2" | "uint3" | "uint4" | "uint5" | "uint6" | "uint7" | "int1" | "int2" | "int3"
        | "int4" | "int5" | "int6" | "int7" => name,
        _ => return None,
    })
}

/// The dtype of a `torch.<dtype>` object.
fn named_dtype(name: &str) -> Option<Dtype> {
    Some(match name {
        "float32" => Dtype::F32,
        "float64" => Dtype::F64,
        "float16" => Dtype::F16,
        "bfloat16" => Dtype::BF16,
        "float8_e4m3fn" => Dtype::F8_E4M3,
        "float8_e5m2" => Dtype::F8_E5M2,
        "int64" => Dtype::I64,
        "int32" => Dtype::I32,
        "int16" => Dtype::I16,
        "int8" => Dtype::I8,
        "uint8" => Dtype::U8,
        "uint16" => Dtype::U16,
        "uint32" => Dtype::U32,
        "uint64" => Dtype::U64,
        "bool" => Dtype::BOOL,
        _ => return None,
    })
}

/// The bytes of a small stored entry (at most `limit`).
fn stored(file: &File, e: &ZipEntry, limit: u64) -> Result<Vec<u8>, String> {
    usable(e)?;
    if e.len > limit {
        return Err(format!(
            "its `{}` is {} bytes, more than the {limit} this reader takes",
            e.name, e.len
        ));
    }
    let mut buf = vec![0u8; e.len as usize];
    file.read_exact_at(&mut buf, e.data_start)
        .map_err(|err| format!("its `{}` cannot be read ({err})", e.name))?;
    Ok(buf)
}

/// Refuses an entry whose bytes cannot be read where they lie.
fn usable(e: &ZipEntry) -> Result<(), String> {
    if e.encrypted {
        return Err(format!("its `{}` is encrypted", e.name));
    }
    if e.method != 0 || e.stored_len != e.len {
        return Err(format!(
            "its `{}` is compressed (zip method {}); PyTorch stores entries uncompressed: \
             re-save the file with torch.save instead of re-zipping it",
            e.name, e.method
        ));
    }
    Ok(())
}

/// The pairs of the dict at `id`.
fn dict(p: &Pickle, id: Id) -> Option<&[(Id, Id)]> {
    match p.get(id) {
        Value::Dict(pairs) => Some(pairs),
        _ => None,
    }
}

/// The name a state-dict key gives its entry: text, or an integer (a `ModuleList` index).
fn key_name(p: &Pickle, id: Id) -> Result<String, String> {
    match p.get(id) {
        Value::Str(s) => Ok(s.clone()),
        Value::Int(i) => Ok(i.to_string()),
        other => Err(format!(
            "a state dict key is not a name but {}",
            other.describe()
        )),
    }
}

/// A tensor rebuild: the rebuild function's name and its arguments.
type Rebuild<'a> = (&'a str, &'a [Id]);

/// The rebuild call at `id`, seeing through `Parameter` and `_rebuild_from_type_v2`.
fn tensor_call(p: &Pickle, id: Id, depth: usize) -> Option<Rebuild<'_>> {
    if depth > MAX_DEPTH {
        return None;
    }
    let Value::Call { func, args, .. } = p.get(id) else {
        return None;
    };
    let args = p.items(*args)?;
    match func.as_str() {
        "torch._utils._rebuild_tensor"
        | "torch._utils._rebuild_tensor_v2"
        | "torch._utils._rebuild_tensor_v3" => Some((func.as_str(), args)),
        "torch._utils._rebuild_parameter"
        | "torch._utils._rebuild_parameter_with_state"
        | "torch.nn.parameter.Parameter" => tensor_call(p, *args.first()?, depth + 1),
        // `_rebuild_from_type_v2(func, new_type, args, state)`: `func(*args)`.
        "torch._tensor._rebuild_from_type_v2" => {
            let (Value::Global(f), Some(inner)) = (p.get(*args.first()?), p.items(*args.get(2)?))
            else {
                return None;
            };
            matches!(
                f.as_str(),
                "torch._utils._rebuild_tensor" | "torch._utils._rebuild_tensor_v2"
            )
            .then_some((f.as_str(), inner))
        }
        _ => None,
    }
}

/// What a walk of the state dict gathers: its tensors, the names of what is not one, and the
/// dicts it went through.
#[derive(Default)]
struct Walk<'a> {
    found: Vec<(String, Rebuild<'a>)>,
    left_out: Vec<String>,
    seen: HashSet<Id>,
}

/// Collects the tensors of the dict at `id` under `prefix`, and the names of what is not one.
///
/// A state dict is a tree: a dict met again is refused, since the memo lets a 1 KB pickle share
/// one dict at every level of a 30-deep nest, which a walk per path would visit 2^30 times.
fn flatten<'a>(
    p: &'a Pickle,
    id: Id,
    prefix: &str,
    depth: usize,
    walk: &mut Walk<'a>,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("its state dict nests deeper than a state dict does".into());
    }
    if !walk.seen.insert(id) {
        return Err(format!(
            "its state dict reaches one dict from several places (again as `{}`): a graph of \
             shared references, not a state dict's tree; the file is corrupt or hostile",
            clipped(prefix.trim_end_matches('.'))
        ));
    }
    let pairs = dict(p, id).unwrap_or(&[]);
    for (k, v) in pairs {
        let name = format!("{prefix}{}", key_name(p, *k)?);
        if let Some(call) = tensor_call(p, *v, 0) {
            walk.found.push((name, call));
        } else if dict(p, *v).is_some() {
            flatten(p, *v, &format!("{name}."), depth + 1, walk)?;
        } else {
            walk.left_out.push(name);
        }
    }
    Ok(())
}

/// Where a tensor's bytes lie: its storage entry, offset and contiguous length.
fn locate(
    p: &Pickle,
    name: &str,
    (func, args): Rebuild<'_>,
    prefix: &str,
    entries: &HashMap<&str, &ZipEntry>,
) -> Result<TensorEntry, String> {
    let bad = |why: &str| format!("tensor `{}`: {why}", clipped(name));
    let arg = |i: usize| {
        args.get(i)
            .copied()
            .ok_or_else(|| bad("its rebuild lacks arguments"))
    };
    // The persistent id: ('storage', storage_type, key, location, numel).
    let Value::Persistent(pid) = p.get(arg(0)?) else {
        return Err(bad("its storage is not a reference to the archive"));
    };
    let pid = p
        .items(*pid)
        .ok_or_else(|| bad("its storage reference is malformed"))?;
    let [tag, kind, key, _location, numel] = pid else {
        return Err(bad("its storage reference is malformed"));
    };
    if p.str(*tag) != Some("storage") {
        return Err(bad("its storage reference is not a storage"));
    }
    // `_rebuild_tensor_v3` names the dtype itself (new dtypes have no typed storage class).
    let v3 = func == "torch._utils._rebuild_tensor_v3";
    let dtype_name = match p.get(if v3 { arg(6)? } else { *kind }) {
        Value::Global(g) => g.strip_prefix("torch."),
        _ => None,
    };
    let known = |t: &str| {
        if v3 {
            named_dtype(t)
        } else {
            storage_dtype(t).or_else(|| named_dtype(t))
        }
    };
    let dtype = match dtype_name.map(|t| (t, known(t), unread_dtype(t))) {
        Some((_, Some(d), _)) => d,
        Some((t, None, Some(unread))) => {
            return Err(bad(&format!(
                "it has dtype {unread} (`torch.{t}`), which this tool does not read: drop the \
                 tensor or convert it (to float32, say) in Python, then save again"
            )))
        }
        _ => return Err(bad("its storage has a dtype this reader does not know")),
    };
    let key = p
        .str(*key)
        .ok_or_else(|| bad("its storage key is not a name"))?;
    let storage_numel = p.int(*numel).and_then(|n| u64::try_from(n).ok());
    let entry_name = format!("{prefix}data/{key}");
    let entry = entries.get(entry_name.as_str()).ok_or_else(|| {
        bad(&format!(
            "its storage `{entry_name}` is missing from the archive"
        ))
    })?;
    usable(entry).map_err(|e| bad(&e))?;
    let offset = p
        .int(arg(1)?)
        .and_then(|o| u64::try_from(o).ok())
        .ok_or_else(|| bad("its storage offset is not a count"))?;
    let shape = dims(p, arg(2)?).ok_or_else(|| bad("its size is not a list of dimensions"))?;
    let stride = dims(p, arg(3)?).ok_or_else(|| bad("its stride is not a list of steps"))?;
    if !contiguous(&shape, &stride) {
        return Err(bad(&format!(
            "it is a strided view (size {shape:?}, stride {stride:?}); re-save it contiguous \
             (`.contiguous()`) in Python"
        )));
    }
    let numel = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| bad("its element count overflows"))?;
    let width = (dtype.bitsize() / 8) as u64;
    let len = dtype::byte_len(dtype, numel)
        .map(|l| l as u64)
        .ok_or_else(|| bad("its size overflows"))?;
    let begin = offset
        .checked_mul(width)
        .ok_or_else(|| bad("its offset overflows"))?;
    let end = begin
        .checked_add(len)
        .ok_or_else(|| bad("its size overflows"))?;
    let claimed = storage_numel.and_then(|n| n.checked_mul(width));
    if end > entry.len || claimed.is_some_and(|c| end > c) {
        return Err(bad(&format!(
            "it needs bytes {begin}..{end} of its storage `{entry_name}`, which holds {}: the file is \
             corrupt",
            entry.len
        )));
    }
    Ok(TensorEntry {
        name: name.to_string(),
        dtype,
        shape,
        offsets: (entry.data_start + begin, entry.data_start + end),
    })
}

/// A size or stride: a tuple (or `torch.Size`) of non-negative integers.
fn dims(p: &Pickle, id: Id) -> Option<Vec<usize>> {
    let items = match p.get(id) {
        Value::Call { func, args, .. } if func == "torch.Size" => {
            p.items(*p.items(*args)?.first()?)?
        }
        _ => p.items(id)?,
    };
    items
        .iter()
        .map(|&i| p.int(i).and_then(|v| usize::try_from(v).ok()))
        .collect()
}

/// Whether `stride` lays `shape` out row-major without gaps (dimensions of 1 may have any stride).
fn contiguous(shape: &[usize], stride: &[usize]) -> bool {
    if shape.len() != stride.len() {
        return false;
    }
    if shape.contains(&0) {
        return true;
    }
    let mut expected = 1usize;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(d);
    }
    true
}

#[cfg(test)]
mod tests;
