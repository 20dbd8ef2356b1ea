//! A GGUF file opened as an input of a job: the same [`SafetensorsFile`] every job reads, its
//! tensors byte ranges of the file, with what ComfyUI-GGUF's loader takes from the header
//! besides ([`GgufSide`]): each tensor's ggml type and logical shape, and
//! `general.architecture`. Grouping the quantized types into logical tensors is the input
//! stage's (`crate::input`), as for every quantized file. Also here: telling a GGUF file by its
//! magic ([`is_gguf`]) and parsing one held in memory ([`gguf_header`], the fuzz target's).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{parse, MetaValue};
use crate::error::{Error, Result};
use crate::model::dtype::Dtype;
use crate::quant::{Format, GgmlType};
use crate::read::{FileFormat, SafetensorsFile, Stamp, TensorEntry};

/// What a GGUF input carries beyond its tensors' bytes (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GgufSide {
    /// `general.architecture`, when the file has it as a string; `Err` with its kind when it is
    /// another kind of value (ComfyUI-GGUF refuses such a file).
    pub architecture: std::result::Result<Option<String>, String>,
    /// Per tensor, in the order of [`SafetensorsFile::tensors`]: its ggml type and its shape
    /// as the loader gives it (`comfy.gguf.orig_shape` when the file has one).
    pub tensors: Vec<(GgmlType, Vec<usize>)>,
    /// The `tokenizer.ggml.*` metadata (a text encoder's tokenizer), in file order.
    pub tokenizer: Vec<(String, MetaValue)>,
}

impl SafetensorsFile {
    /// Opens a GGUF file as an input: every tensor an entry whose bytes are its blocks (`U8`, in
    /// gguf-py's byte shape, for the quantized types; the float dtype and stored shape for F32,
    /// F16 and BF16), at its offset from the start of the file.
    ///
    /// # Errors
    /// [`Error::InvalidCheckpoint`] saying what is wrong with the header (see
    /// [`super::GgufFile::open`]); [`Error::Quantized`] naming the tensor and its type when a
    /// tensor is of a type this tool does not decode (the IQ formats, …).
    pub(in crate::read) fn open_gguf(
        path: &Path,
        file: File,
        meta: &std::fs::Metadata,
    ) -> Result<Self> {
        let parsed = parse(&file, meta.len()).map_err(|reason| Error::InvalidCheckpoint {
            path: path.to_path_buf(),
            reason: format!("it is a GGUF file, but {reason}"),
        })?;
        let mut tensors = Vec::with_capacity(parsed.tensors.len());
        let mut side = Vec::with_capacity(parsed.tensors.len());
        let mut index = HashMap::with_capacity(parsed.tensors.len());
        for t in &parsed.tensors {
            let ty = match t.format()? {
                Format::Ggml(ty) => ty,
                other => {
                    return Err(Error::InvalidInput(format!(
                        "`{}` was read as {other}, which GGUF does not have; please report \
                         this file",
                        crate::printable::clipped(&t.name)
                    )))
                }
            };
            let (dtype, shape) = match ty.plain_dtype() {
                Some(d) => (d, t.stored_shape.clone()),
                None => (
                    Dtype::U8,
                    crate::quant::ggml::shapes::codes_shape(ty, &t.stored_shape),
                ),
            };
            index.insert(t.name.clone(), tensors.len());
            tensors.push(TensorEntry {
                name: t.name.clone(),
                dtype,
                shape,
                offsets: t.offsets,
            });
            side.push((ty, t.shape.clone()));
        }
        let architecture = match parsed
            .metadata
            .iter()
            .find(|(k, _)| k == "general.architecture")
        {
            None => Ok(None),
            Some((_, MetaValue::String(s))) => Ok(Some(s.clone())),
            Some((_, v)) => Err(v.kind().name().to_string()),
        };
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            file,
            stamp: Stamp::of(meta),
            format: FileFormat::Gguf,
            description: (0, parsed.data_start),
            data_start: 0,
            metadata: BTreeMap::new(),
            tensors,
            index,
            left_out: Vec::new(),
            gguf: Some(Box::new(GgufSide {
                architecture,
                tensors: side,
                tokenizer: parsed
                    .metadata
                    .iter()
                    .filter(|(k, _)| k.starts_with("tokenizer.ggml."))
                    .cloned()
                    .collect(),
            })),
        })
    }
}

/// Whether `path` starts with GGUF's magic (what `inspect` reads through [`gguf::GgufFile`]).
///
/// # Errors
/// [`Error::Io`] when the file cannot be opened or read.
pub(crate) fn is_gguf(path: &Path) -> Result<bool> {
    let file = crate::read::open_input(path)?;
    let mut magic = [0u8; 4];
    match file.read_exact_at(&mut magic, 0) {
        Ok(()) => Ok(&magic == b"GGUF"),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(Error::io(format!("cannot read {}", path.display()), e)),
    }
}

/// Parses `data` as a whole GGUF file (what the GGUF fuzz target drives): the tensor count, or
/// the reader's error.
pub(crate) fn gguf_header(data: &[u8]) -> std::result::Result<usize, String> {
    let parsed = super::parse_bytes(data)?;
    for t in &parsed.tensors {
        // What a job would ask next: the format and layout of each tensor.
        let _ = t.layout();
    }
    Ok(parsed.tensors.len())
}
