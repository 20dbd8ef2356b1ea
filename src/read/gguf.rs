//! GGUF files — llama.cpp's container, in which ComfyUI-GGUF shares diffusion models and text
//! encoders — read without trusting them.
//!
//! # The format (versions 1 to 3, little-endian)
//! `GGUF`, the version (u32), the tensor count and the metadata count (u64; u32 in version 1),
//! the metadata (each a key string, a value kind and a value: [`MetaValue`]), one info per
//! tensor (its name, its dimension count (u32), its dimensions in ggml's order — the row, whose
//! values are contiguous, first — as u64 (u32 in version 1), its ggml type (u32) and its offset
//! (u64) from the start of the data section), zero padding to the alignment, then the data
//! section. The alignment is the metadata `general.alignment` (a UINT32 power of two), 32 when
//! absent; every tensor's offset is a multiple of it.
//!
//! # Shapes, as ComfyUI-GGUF's loader gives them
//! A tensor's shape is its dimensions reversed (numpy's and torch's order). A tensor that
//! ComfyUI-GGUF's `convert.py` stored reshaped (rows of 256 so that it can be quantized) carries
//! its real shape in the metadata `comfy.gguf.orig_shape.<tensor name>`, an ARRAY of INT32: the
//! loader takes that shape instead; the values are the same in the same order. A key naming a
//! tensor the file does not hold is ignored, as the loader ignores it. ([`GgufTensor`] keeps both
//! shapes: the stored one is what its blocks run along.)
//!
//! # What is checked before anything is used
//! Every claim is checked against the file's real size before it is read or allocated: counts,
//! string lengths and array lengths against the bytes left (and the header against
//! [`MAX_GGUF_HEADER`]); the version (big-endian files are named and refused); every metadata
//! value kind, bools, UTF-8, duplicate keys, arrays nested deeper than 8; per tensor: a
//! duplicate name, more than [`MAX_DIMS`] dimensions, an element count or byte size that
//! overflows, a type ggml does not define (named by number) or no longer sizes (named), rows that
//! are not whole blocks, an offset that is not a multiple of the alignment, data that runs past
//! the end of the file, data that overlaps another tensor's; `general.alignment` of the wrong
//! kind or not a power of two; an `orig_shape` that is not a non-empty array of non-negative
//! INT32 with the tensor's element count. Tensors of a type this crate does not decode (the IQ
//! formats, …) are listed with their type; decoding one is refused, naming it
//! ([`GgufTensor::format`]).

mod cursor;
mod entries;
mod value;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use cursor::Cursor;
pub(crate) use cursor::Source;
pub(crate) use entries::{gguf_header, is_gguf, GgufSide};
pub(crate) use value::encode_str;
pub use value::{MetaArray, MetaValue, ValueKind};

use super::Stamp;
use crate::error::{Error, IoContext, Result};
use crate::printable::clipped;
use crate::quant::{Format, GgmlType, QuantLayout};

/// Longest header (metadata and tensor infos) read: the largest real ones, tokenizers of
/// language models, are tens of MB.
pub const MAX_GGUF_HEADER: u64 = 64 << 20;

/// Most dimensions a tensor may have (ggml has 4; ComfyUI-GGUF's `fix_5d_tensors.py` writes 5).
pub const MAX_DIMS: usize = 8;

/// The alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// The metadata key prefix of ComfyUI-GGUF's original shapes.
pub const ORIG_SHAPE_PREFIX: &str = "comfy.gguf.orig_shape.";

/// One tensor of a GGUF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensor {
    /// The tensor's name.
    pub name: String,
    /// Its shape as ComfyUI-GGUF's loader gives it: the `orig_shape` metadata if the file has
    /// it for this tensor, else the stored shape.
    pub shape: Vec<usize>,
    /// Its shape as stored: ggml's dimensions reversed; the last dimension is the row its blocks
    /// run along.
    pub stored_shape: Vec<usize>,
    /// Its ggml type number.
    pub type_id: u32,
    /// `[begin, end)` of its bytes in the file.
    pub offsets: (u64, u64),
}

impl GgufTensor {
    /// Its type, if this crate decodes it.
    pub fn ggml_type(&self) -> Option<GgmlType> {
        GgmlType::from_id(self.type_id)
    }

    /// ggml's name of its type (also for types this crate does not decode).
    pub fn type_name(&self) -> &'static str {
        GgmlType::name_of_id(self.type_id).unwrap_or("?")
    }

    /// Elements.
    pub fn numel(&self) -> u64 {
        self.stored_shape.iter().map(|&d| d as u64).product()
    }

    /// Bytes.
    pub fn byte_len(&self) -> u64 {
        self.offsets.1 - self.offsets.0
    }

    /// Whether the file stores it reshaped (its `orig_shape` differs from the stored shape).
    pub fn is_reshaped(&self) -> bool {
        self.shape != self.stored_shape
    }

    /// Its quantized format.
    ///
    /// # Errors
    /// [`Error::Quantized`] naming the tensor and its type when this crate does not decode it.
    pub fn format(&self) -> Result<Format> {
        match self.ggml_type() {
            Some(t) => Ok(Format::Ggml(t)),
            None => Err(Error::Quantized {
                layer: clipped(&self.name).into_owned(),
                reason: format!(
                    "it is stored as ggml {} (type {}), which this tool does not decode; it \
                     reads {}: requantize the file to one of those with llama.cpp's \
                     llama-quantize, or convert the original model instead",
                    self.type_name(),
                    self.type_id,
                    GgmlType::NAMES
                ),
            }),
        }
    }

    /// The layout of its blocks (along the stored shape; the values are the same in the same
    /// order under its logical shape).
    ///
    /// # Errors
    /// As [`GgufTensor::format`], and [`Error::Quantized`] for a tensor without elements.
    pub fn layout(&self) -> Result<QuantLayout> {
        QuantLayout::new(&self.name, self.format()?, &self.stored_shape)
    }
}

/// A parsed GGUF header, checked against the length of its file.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub version: u32,
    pub alignment: u64,
    pub data_start: u64,
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<GgufTensor>,
}

/// [`parse`] of a whole file held in memory.
pub(crate) fn parse_bytes(data: &[u8]) -> std::result::Result<Parsed, String> {
    parse(&data, data.len() as u64)
}

/// Parses and checks the header of the GGUF file `src` of `len` bytes (see the module docs).
///
/// # Errors
/// What is wrong, as a clause that follows "it is a GGUF file, but".
pub(crate) fn parse(src: &dyn Source, len: u64) -> std::result::Result<Parsed, String> {
    let mut c = Cursor::new(src, len, MAX_GGUF_HEADER);
    if &c.array::<4>()? != b"GGUF" {
        return Err("its first bytes are not `GGUF`".into());
    }
    let version = c.u32()?;
    match version {
        1 => c.set_short_lengths(),
        2 | 3 => {}
        v if v & 0xFFFF == 0 && (1..=3).contains(&v.swap_bytes()) => {
            return Err(format!(
                "it is big-endian (version {}), which this tool does not read: convert it on a \
                 big-endian machine or re-make it little-endian",
                v.swap_bytes()
            ))
        }
        v => {
            return Err(format!(
                "it has version {v}, which this tool does not read (it reads versions 1 to 3)"
            ))
        }
    }
    let n_tensors = c.length()?;
    let n_kv = c.length()?;
    let ls = c.length_size();
    let need = n_kv
        .checked_mul(ls + 4 + 1)
        .zip(n_tensors.checked_mul(ls + 4 + 4 + 8))
        .and_then(|(a, b)| a.checked_add(b));
    if need.is_none_or(|need| need > c.remaining()) {
        return Err(format!(
            "it claims {n_tensors} tensors and {n_kv} metadata entries, more than its remaining \
             {} bytes can describe: the file is truncated or corrupt",
            c.remaining()
        ));
    }
    let metadata = read_metadata(&mut c, n_kv)?;
    let infos = read_infos(&mut c, n_tensors)?;
    let alignment = alignment(&metadata)?;
    let data_start = c.pos().next_multiple_of(alignment);
    let tensors = place(infos, &metadata, alignment, data_start, len)?;
    Ok(Parsed {
        version,
        alignment,
        data_start,
        metadata,
        tensors,
    })
}

fn read_metadata(
    c: &mut Cursor<'_>,
    n: u64,
) -> std::result::Result<Vec<(String, MetaValue)>, String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for i in 0..n {
        let key = c.string(&format!("metadata entry {i}"))?;
        let kind = c.u32()?;
        let shown = clipped(&key);
        let value = value::read_value(c, kind, &format!("metadata key `{shown}`"))?;
        if !seen.insert(key.clone()) {
            return Err(format!("the metadata key `{shown}` appears twice"));
        }
        out.push((key, value));
    }
    Ok(out)
}

/// A tensor info as written: name, ggml dimensions, type, offset.
struct Info {
    name: String,
    dims: Vec<u64>,
    type_id: u32,
    offset: u64,
}

fn read_infos(c: &mut Cursor<'_>, n: u64) -> std::result::Result<Vec<Info>, String> {
    let mut out = Vec::new();
    for i in 0..n {
        let name = c.string(&format!("the name of tensor {i}"))?;
        let n_dims = c.u32()?;
        if n_dims as usize > MAX_DIMS {
            return Err(format!(
                "tensor `{}` claims {n_dims} dimensions; tensors have at most {MAX_DIMS}",
                clipped(&name)
            ));
        }
        let dims = (0..n_dims)
            .map(|_| c.length())
            .collect::<std::result::Result<Vec<u64>, String>>()?;
        let type_id = c.u32()?;
        let offset = c.u64()?;
        out.push(Info {
            name,
            dims,
            type_id,
            offset,
        });
    }
    Ok(out)
}

fn alignment(metadata: &[(String, MetaValue)]) -> std::result::Result<u64, String> {
    match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some((_, MetaValue::U32(a))) if a.is_power_of_two() => Ok(u64::from(*a)),
        Some((_, MetaValue::U32(a))) => Err(format!(
            "its `general.alignment` is {a}, which is not a power of two"
        )),
        Some((_, other)) => Err(format!(
            "its `general.alignment` is a {}, not a UINT32",
            other.kind()
        )),
    }
}

/// Sizes and places every tensor and checks what its info claims (see the module docs).
fn place(
    infos: Vec<Info>,
    metadata: &[(String, MetaValue)],
    alignment: u64,
    data_start: u64,
    len: u64,
) -> std::result::Result<Vec<GgufTensor>, String> {
    let mut names = HashSet::with_capacity(infos.len());
    let mut tensors = Vec::with_capacity(infos.len());
    // Looked up once per tensor: an index, so that a header of many keys and tensors stays linear.
    let orig_shapes: HashMap<&str, &MetaValue> = metadata
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(ORIG_SHAPE_PREFIX)?, v)))
        .collect();
    for info in infos {
        let name = info.name;
        // Messages quote `shown`: a name may be as long as the header.
        let shown = clipped(&name);
        if !names.insert(name.clone()) {
            return Err(format!("tensor `{shown}` appears twice"));
        }
        let type_name = GgmlType::name_of_id(info.type_id);
        let (block, block_bytes) =
            GgmlType::block_of_id(info.type_id).ok_or_else(|| match type_name {
                Some(n) => format!(
                    "tensor `{shown}` is of ggml type {n} (type {}), which GGUF readers can no \
                     longer size or decode",
                    info.type_id
                ),
                None => format!(
                    "tensor `{shown}` has the ggml type number {}, which ggml does not define \
                     (a newer file, or a corrupt one)",
                    info.type_id
                ),
            })?;
        let type_name = type_name.unwrap_or("?");
        let dims = &info.dims;
        let numel = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        let stored_shape = numel.and_then(|_| {
            dims.iter()
                .rev()
                .map(|&d| usize::try_from(d).ok())
                .collect::<Option<Vec<usize>>>()
        });
        let (Some(numel), Some(stored_shape)) = (numel, stored_shape) else {
            return Err(format!(
                "tensor `{shown}` claims the dimensions {dims:?}, whose element count overflows"
            ));
        };
        let row = dims.first().copied().unwrap_or(1);
        if !row.is_multiple_of(block as u64) {
            return Err(format!(
                "tensor `{shown}` is {type_name} with rows of {row} values, which is not a whole \
                 number of its {block}-value blocks"
            ));
        }
        let bytes = (numel / block as u64)
            .checked_mul(block_bytes as u64)
            .ok_or_else(|| format!("tensor `{shown}` claims a byte size that overflows"))?;
        if !info.offset.is_multiple_of(alignment) {
            return Err(format!(
                "tensor `{shown}` starts at offset {} of the data section, which is not a \
                 multiple of the alignment {alignment}: the file is corrupt",
                info.offset
            ));
        }
        let begin = data_start.checked_add(info.offset);
        let end = begin.and_then(|b| b.checked_add(bytes));
        let (Some(begin), Some(end)) = (begin, end) else {
            return Err(past_end(&shown, bytes, info.offset, len));
        };
        if end > len {
            return Err(past_end(&shown, bytes, info.offset, len));
        }
        let shape = match orig_shapes.get(name.as_str()) {
            Some(value) => orig_shape(value, &shown, numel)?,
            None => stored_shape.clone(),
        };
        tensors.push(GgufTensor {
            name,
            shape,
            stored_shape,
            type_id: info.type_id,
            offsets: (begin, end),
        });
    }
    let mut order: Vec<&GgufTensor> = tensors.iter().filter(|t| t.byte_len() > 0).collect();
    order.sort_by_key(|t| t.offsets);
    for pair in order.windows(2) {
        if pair[1].offsets.0 < pair[0].offsets.1 {
            return Err(format!(
                "the data of tensors `{}` and `{}` overlap (bytes {}..{} and {}..{}): the file \
                 is corrupt",
                clipped(&pair[0].name),
                clipped(&pair[1].name),
                pair[0].offsets.0,
                pair[0].offsets.1,
                pair[1].offsets.0,
                pair[1].offsets.1
            ));
        }
    }
    Ok(tensors)
}

fn past_end(name: &str, bytes: u64, offset: u64, len: u64) -> String {
    format!(
        "tensor `{name}` ({bytes} bytes at offset {offset} of the data section) runs past the \
         end of the file ({len} bytes): the file is truncated (an interrupted download or \
         copy?) or corrupt"
    )
}

/// The shape ComfyUI-GGUF's loader gives `name` from its `comfy.gguf.orig_shape.<name>` value,
/// checked to hold the tensor's `numel` elements.
fn orig_shape(
    value: &MetaValue,
    name: &str,
    numel: u64,
) -> std::result::Result<Vec<usize>, String> {
    let key = format!("{ORIG_SHAPE_PREFIX}{name}");
    let bad = |why: String| format!("its metadata `{key}` {why}");
    let dims = match value {
        MetaValue::Array(MetaArray::I32(dims)) if !dims.is_empty() => dims,
        MetaValue::Array(a) if a.is_empty() => {
            return Err(bad(
                "is an empty array; ComfyUI-GGUF expects a non-empty ARRAY of INT32".into(),
            ))
        }
        MetaValue::Array(a) => {
            return Err(bad(format!(
                "is an ARRAY of {}; ComfyUI-GGUF expects an ARRAY of INT32",
                a.kind()
            )))
        }
        other => {
            return Err(bad(format!(
                "is a {}; ComfyUI-GGUF expects an ARRAY of INT32",
                other.kind()
            )))
        }
    };
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| bad(format!("is {dims:?}, a shape with a negative dimension")))?;
    let count = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
    if count != Some(numel) {
        return Err(bad(format!(
            "is {dims:?}, which does not hold the tensor's {numel} elements"
        )));
    }
    Ok(shape)
}

/// An open, validated GGUF file (see the module docs): its metadata and tensors, whose bytes are
/// read where they lie.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    file: File,
    stamp: Stamp,
    parsed: Parsed,
    index: HashMap<String, usize>,
}

impl GgufFile {
    /// Opens `path` and validates its header (see the module docs).
    ///
    /// # Errors
    /// [`Error::Io`] naming the path when it is missing, a folder or unreadable;
    /// [`Error::InvalidInput`] for a FIFO, socket or device (refused before opening it);
    /// [`Error::InvalidCheckpoint`] saying what is wrong with the file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = super::open_input(path)?;
        let meta = file
            .metadata()
            .ctx(|| format!("cannot read the size of {}", path.display()))?;
        if meta.is_dir() {
            return Err(Error::io(
                format!("{} is a folder, not a GGUF file", path.display()),
                std::io::Error::from(std::io::ErrorKind::IsADirectory),
            ));
        }
        let parsed = parse(&file, meta.len()).map_err(|reason| {
            // Only a failed parse looks at the magic again, to say which it is.
            let mut magic = [0u8; 4];
            let is_gguf = std::os::unix::fs::FileExt::read_exact_at(&file, &mut magic, 0).is_ok()
                && &magic == b"GGUF";
            Error::InvalidCheckpoint {
                path: path.to_path_buf(),
                reason: match is_gguf {
                    true => format!("it is a GGUF file, but {reason}"),
                    false => "it is not a GGUF file (its first bytes are not `GGUF`)".into(),
                },
            }
        })?;
        let index = parsed
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            path: path.to_path_buf(),
            file,
            stamp: Stamp::of(&meta),
            parsed,
            index,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (1, 2 or 3).
    pub fn version(&self) -> u32 {
        self.parsed.version
    }

    /// The data section's alignment.
    pub fn alignment(&self) -> u64 {
        self.parsed.alignment
    }

    /// Where the data section starts: the header's length with its padding.
    pub fn data_start(&self) -> u64 {
        self.parsed.data_start
    }

    /// Length of the file when it was opened.
    pub fn file_len(&self) -> u64 {
        self.stamp.len
    }

    /// Bytes of tensor data (without padding).
    pub fn data_len(&self) -> u64 {
        self.parsed.tensors.iter().map(GgufTensor::byte_len).sum()
    }

    /// Every metadata entry, in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.parsed.metadata
    }

    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.parsed
            .metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// `general.architecture`, when it is a string (`flux`, `sdxl`, `t5`, …).
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(MetaValue::as_str)
    }

    /// Tensors in the order of their infos.
    pub fn tensors(&self) -> &[GgufTensor] {
        &self.parsed.tensors
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.index.get(name).map(|&i| &self.parsed.tensors[i])
    }

    /// Fills `buf` with the bytes at file offset `at`.
    ///
    /// # Errors
    /// [`Error::InvalidCheckpoint`] when the file ends early (truncated while being read);
    /// [`Error::Io`] for other read errors.
    pub fn read_at(&self, buf: &mut [u8], at: u64) -> Result<()> {
        super::read_exact_at(&self.file, &self.path, buf, at)
    }

    /// The bytes of one tensor, in a new buffer of exactly its (validated) size.
    ///
    /// # Errors
    /// As [`GgufFile::read_at`], plus an allocation failure as [`Error::InvalidInput`].
    pub fn read_tensor(&self, t: &GgufTensor) -> Result<Vec<u8>> {
        let mut buf = super::tensor_buffer(&t.name, t.byte_len())?;
        self.read_at(&mut buf, t.offsets.0)?;
        Ok(buf)
    }

    /// Whether the file is still the one that was opened, unmodified.
    ///
    /// # Errors
    /// [`Error::InvalidCheckpoint`] when it was modified, truncated, extended or replaced since
    /// it was opened; [`Error::Io`] when it is gone.
    pub fn check_unchanged(&self) -> Result<()> {
        self.stamp.check(&self.file, &self.path)
    }
}
