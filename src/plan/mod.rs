//! Plan: the complete file before a byte is written.
//!
//! The header (tensors ordered by dtype descending, then name; JSON padded with spaces to a
//! multiple of 8, or further so the data section starts aligned), every tensor's byte range, its
//! target dtype and the pieces of source data that fill it. Everything that can be checked is
//! checked here — impossible casts, packed sizes, header size, shapes against the held tensors —
//! so bad input never creates a file.

pub(crate) mod gguf;
pub(crate) mod gguf_mmproj;
pub(crate) mod gguf_quantize;
pub(crate) mod gguf_target;
pub(crate) mod gguf_text;
pub(crate) mod gguf_type;
mod header;
pub mod metadata;
pub(crate) mod quant;
mod sources;
pub(crate) mod target;

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::model::dtype::{self, Dtype, TargetDtype};
use crate::model::{Arch, ComponentKind, Components, InputTensor, Merged, QuantTensor};
use crate::quant::{Quantize, Role};
use crate::read::SafetensorsFile;
use sources::resolve_sources;
pub(crate) use sources::{operand_pieces, raw_pieces, runs};
pub(crate) use target::QuantTarget;

/// The dtype each component is saved in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ComponentDtypes {
    /// Denoiser.
    pub model: TargetDtype,
    /// Text encoders.
    pub clip: TargetDtype,
    /// Autoencoder.
    pub vae: TargetDtype,
    /// Image encoder.
    pub clip_vision: TargetDtype,
    /// Audio autoencoder and vocoder.
    pub audio_vae: TargetDtype,
}

impl ComponentDtypes {
    /// The same choice for every component.
    pub fn all(dtype: TargetDtype) -> Self {
        Self {
            model: dtype,
            clip: dtype,
            vae: dtype,
            clip_vision: dtype,
            audio_vae: dtype,
        }
    }

    /// The choice for one component.
    pub fn get(&self, kind: ComponentKind) -> TargetDtype {
        match kind {
            ComponentKind::Model => self.model,
            ComponentKind::Clip => self.clip,
            ComponentKind::Vae => self.vae,
            ComponentKind::ClipVision => self.clip_vision,
            ComponentKind::AudioVae => self.audio_vae,
        }
    }
}

/// Bytes the save holds in host memory for a piece: created tensors, or a staged data section.
pub type HostBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Where one contiguous run of a tensor's bytes comes from.
#[derive(Clone)]
pub enum PieceSource {
    /// Units `offset..` of a candle tensor in row-major order (any device, any layout).
    Candle { tensor: Tensor, offset: usize },
    /// Units `offset..` of a tensor of an input file whose first byte is at `start` in the
    /// file's data section: read where it lies, when filled.
    File {
        file: Arc<SafetensorsFile>,
        start: u64,
        offset: usize,
    },
    /// Units `offset..` of a 2-D tensor written transposed: the transpose is made (one small
    /// tensor, the text projection) when filled.
    Transposed { tensor: InputTensor, offset: usize },
    /// Bytes already in the file dtype, from unit `offset` on.
    Host { bytes: HostBytes, offset: usize },
    /// Units `offset..` of a merged tensor, computed (in f32) when filled.
    Merged { merged: Arc<Merged>, offset: usize },
    /// Elements `offset..` of a quantized tensor's values, decoded (as f32) when filled.
    Dequant {
        tensor: Arc<QuantTensor>,
        offset: usize,
    },
    /// Bytes `offset..` of a quantized tensor's block-scale member, copied as stored and checked
    /// (no NaN, no negative scale) on the way.
    BlockScales {
        tensor: Arc<QuantTensor>,
        offset: usize,
    },
    /// Units `offset..` of one member of a quantized output, encoded when filled.
    Encoded {
        target: Arc<QuantTarget>,
        role: Role,
        offset: usize,
    },
}

impl PieceSource {
    /// The same source starting `by` units later.
    fn advanced(&self, by: usize) -> PieceSource {
        let mut s = self.clone();
        match &mut s {
            PieceSource::Candle { offset, .. }
            | PieceSource::File { offset, .. }
            | PieceSource::Transposed { offset, .. }
            | PieceSource::Host { offset, .. }
            | PieceSource::Merged { offset, .. }
            | PieceSource::Dequant { offset, .. }
            | PieceSource::BlockScales { offset, .. }
            | PieceSource::Encoded { offset, .. } => *offset += by,
        }
        s
    }
}

impl std::fmt::Debug for PieceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PieceSource::Candle { tensor, offset } => {
                write!(f, "Candle({:?} from {offset})", tensor.shape())
            }
            PieceSource::File {
                file,
                start,
                offset,
            } => write!(
                f,
                "File({} at {start} from {offset})",
                file.path().display()
            ),
            PieceSource::Transposed { tensor, offset } => {
                write!(f, "Transposed({:?} from {offset})", tensor.info().shape)
            }
            PieceSource::Host { bytes, offset } => {
                write!(f, "Host({} bytes from {offset})", (**bytes).as_ref().len())
            }
            PieceSource::Merged { merged, offset } => {
                write!(f, "Merged({:?} from {offset})", merged.info().shape)
            }
            PieceSource::Dequant { tensor, offset } => {
                write!(f, "Dequant({} from {offset})", tensor.layout().layer())
            }
            PieceSource::BlockScales { tensor, offset } => {
                write!(f, "BlockScales({} from {offset})", tensor.layout().layer())
            }
            PieceSource::Encoded {
                target,
                role,
                offset,
            } => write!(f, "Encoded({target:?} {role:?} from {offset})"),
        }
    }
}

/// A contiguous byte range of the data section filled from one source.
///
/// A planned tensor is one piece, except a fused q/k/v, which is three consecutive pieces
/// (concatenation along dim 0 of row-major tensors is concatenation of their bytes).
///
/// Lengths count *units*: elements, or bytes for the packed sub-byte dtypes (F4, F6), which are
/// only ever copied as raw bytes (never cast, fused or transposed), so any byte range of them is
/// a valid range to fill.
#[derive(Debug, Clone)]
pub struct Piece {
    /// The source.
    pub source: PieceSource,
    /// Dtype of the source's elements.
    pub src_dtype: Dtype,
    /// Dtype written.
    pub dst_dtype: Dtype,
    /// Offset in the data section.
    pub start: u64,
    /// Number of units (see the type's docs).
    pub units: usize,
    /// Index of the tensor this piece belongs to, in [`Plan::tensors`].
    pub tensor: usize,
}

/// Bytes per unit of a dtype: its element size, or 1 for the packed formats.
pub(crate) fn unit_width(dtype: Dtype) -> usize {
    if dtype::is_packed(dtype) {
        1
    } else {
        dtype.bitsize() / 8
    }
}

impl Piece {
    /// Bytes written for this piece.
    pub fn len(&self) -> u64 {
        (self.units * unit_width(self.dst_dtype)) as u64
    }

    /// Whether the piece writes no bytes.
    pub fn is_empty(&self) -> bool {
        self.units == 0
    }

    /// End offset in the data section.
    pub fn end(&self) -> u64 {
        self.start + self.len()
    }
}

/// One tensor of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTensor {
    /// Checkpoint key.
    pub name: String,
    /// Dtype written.
    pub dtype: Dtype,
    /// Shape written.
    pub shape: Vec<usize>,
    /// Offsets `[begin, end)` in the data section.
    pub offsets: (u64, u64),
}

/// Options of the plan.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Dtype per component.
    pub dtypes: ComponentDtypes,
    /// The data section starts at a multiple of this (8 = the reference layout; 4096 lets the
    /// writer use direct I/O). Must be a multiple of 8.
    pub data_alignment: u64,
    /// Layers written in a quantized format (`None`: quantized inputs are kept or dequantized,
    /// nothing else is quantized).
    pub quantize: Option<Arc<Quantize>>,
    /// The architecture laid out, for the quantization's per-architecture rule.
    pub arch: Option<Arch>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            dtypes: ComponentDtypes::default(),
            data_alignment: 8,
            quantize: None,
            arch: None,
        }
    }
}

/// The whole file: header bytes, tensors in file order, and the pieces that fill the data section.
#[derive(Debug, Clone)]
pub struct Plan {
    header: Vec<u8>,
    tensors: Vec<PlannedTensor>,
    pieces: Vec<Piece>,
    data_len: u64,
    /// The input files the pieces read, each once.
    inputs: Vec<Arc<SafetensorsFile>>,
    /// The header's `__metadata__` (the caller's, with `_quantization_metadata` when the file
    /// has described quantized layers).
    metadata: BTreeMap<String, String>,
    /// The quantized outputs, in the order their layers were planned.
    targets: Vec<Arc<QuantTarget>>,
    /// Per tensor (empty when none is): the ggml type of a tensor written as its input's own
    /// blocks, whose non-finite values are counted from the blocks' scales.
    kept_blocks: Vec<Option<crate::quant::GgmlType>>,
}

/// A piece before its place in the file is known: source, source dtype, units.
pub(crate) type Pending = (PieceSource, Dtype, usize);

impl Plan {
    /// Plans a checkpoint from a layout and the tensors it refers to.
    ///
    /// # Errors
    /// [`Error::ImpossibleCast`] for a cast that cannot be done, [`Error::BadShape`] when a held
    /// tensor does not match the layout or a packed tensor is not a whole number of bytes,
    /// [`Error::Conversion`] for a packed tensor in a conversion, [`Error::HeaderTooLarge`] when
    /// the header would exceed 100,000,000 bytes, [`Error::InvalidInput`] for a bad alignment or
    /// a missing tensor.
    pub fn new(
        layout: &Layout,
        components: &Components,
        metadata: &BTreeMap<String, String>,
        opts: &PlanOptions,
    ) -> Result<Plan> {
        if opts.data_alignment == 0 || !opts.data_alignment.is_multiple_of(8) {
            return Err(Error::InvalidInput(format!(
                "data alignment {} must be a positive multiple of 8",
                opts.data_alignment
            )));
        }
        let mut planned = Vec::with_capacity(layout.entries.len());
        let mut quantized = quant::Collector::new(opts);
        for entry in &layout.entries {
            if let Some(members) = quantized.plan(entry, components)? {
                planned.extend(members);
                continue;
            }
            let dst = match entry.source.component() {
                Some(kind) => opts.dtypes.get(kind).resolve(&entry.key, entry.dtype)?,
                None => entry.dtype,
            };
            planned.push(quant::Planned {
                key: entry.key.clone(),
                dtype: dst,
                shape: entry.shape.clone(),
                sources: resolve_sources(entry, components)?,
            });
        }
        let (legacy, targets, metadata) = quantized.finish(metadata)?;
        planned.extend(legacy);
        for p in &planned {
            let numel: usize = p.shape.iter().product();
            if dtype::byte_len(p.dtype, numel).is_none() {
                return Err(Error::BadShape {
                    key: p.key.clone(),
                    shape: p.shape.clone(),
                    reason: format!(
                        "{numel} elements of {} are not a whole number of bytes, which \
                         safetensors readers refuse; pad the tensor to an even element count",
                        p.dtype
                    ),
                });
            }
        }
        // File order: dtype descending, then name (what safetensors' serialize does).
        planned.sort_by(|a, b| b.dtype.cmp(&a.dtype).then_with(|| a.key.cmp(&b.key)));
        let mut seen = std::collections::HashSet::with_capacity(planned.len());
        if let Some(p) = planned.iter().find(|p| !seen.insert(p.key.as_str())) {
            return Err(Error::DuplicateKey {
                key: p.key.clone(),
                first: "a tensor of the model".into(),
                second: "a member of a quantized layer of the same name".into(),
            });
        }
        // The header's metadata entry: a tensor of that name makes a file no reader opens.
        if planned.iter().any(|p| p.key == "__metadata__") {
            return Err(Error::InvalidInput(
                "a tensor is named `__metadata__`, the name safetensors reserves for the \
                 header's metadata (no reader would open the file); rename the tensor"
                    .into(),
            ));
        }

        let mut tensors = Vec::with_capacity(planned.len());
        let mut pieces = Vec::with_capacity(planned.len());
        let mut offset = 0u64;
        for (i, p) in planned.into_iter().enumerate() {
            let begin = offset;
            for (source, src_dtype, units) in p.sources {
                let piece = Piece {
                    source,
                    src_dtype,
                    dst_dtype: p.dtype,
                    start: offset,
                    units,
                    tensor: i,
                };
                offset = piece.end();
                pieces.push(piece);
            }
            tensors.push(PlannedTensor {
                name: p.key,
                dtype: p.dtype,
                shape: p.shape,
                offsets: (begin, offset),
            });
        }
        let header = header::header_bytes(&metadata, &tensors, opts.data_alignment)?;
        let mut inputs: Vec<Arc<SafetensorsFile>> = Vec::new();
        for t in components.tensors() {
            t.input_files(&mut |f| {
                if !inputs.iter().any(|g| Arc::ptr_eq(g, f)) {
                    inputs.push(Arc::clone(f));
                }
            });
        }
        Ok(Plan {
            header,
            tensors,
            pieces,
            data_len: offset,
            inputs,
            metadata,
            targets,
            kept_blocks: Vec::new(),
        })
    }

    /// The same file with its data section already in host memory (`data`, `data_len()` bytes in
    /// the file dtypes): one piece that the writer copies straight out of `data`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `data` does not hold the data section's length.
    pub fn with_data(&self, data: HostBytes) -> Result<Plan> {
        let len = (*data).as_ref().len() as u64;
        if len < self.data_len {
            return Err(Error::InvalidInput(format!(
                "a staged data section of {len} bytes cannot fill a plan of {} bytes",
                self.data_len
            )));
        }
        let piece = Piece {
            source: PieceSource::Host {
                bytes: data,
                offset: 0,
            },
            src_dtype: Dtype::U8,
            dst_dtype: Dtype::U8,
            start: 0,
            units: self.data_len as usize,
            tensor: 0,
        };
        Ok(Plan {
            header: self.header.clone(),
            tensors: self.tensors.clone(),
            pieces: if self.data_len == 0 {
                Vec::new()
            } else {
                vec![piece]
            },
            data_len: self.data_len,
            inputs: Vec::new(),
            metadata: self.metadata.clone(),
            targets: Vec::new(),
            kept_blocks: Vec::new(),
        })
    }

    /// The first bytes of the file: the 8-byte little-endian length, the JSON and its padding.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// Where the data section starts in the file.
    pub fn data_offset(&self) -> u64 {
        self.header.len() as u64
    }

    /// Length of the data section.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Length of the whole file.
    pub fn file_len(&self) -> u64 {
        self.data_offset() + self.data_len
    }

    /// The header's `__metadata__`, as written.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The quantized outputs the plan encodes when written.
    pub(crate) fn targets(&self) -> &[Arc<QuantTarget>] {
        &self.targets
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[PlannedTensor] {
        &self.tensors
    }

    /// The ggml type of tensor `i` when it is written as its input's own blocks (see
    /// [`crate::quant::ggml::finite`]).
    pub(crate) fn kept_blocks(&self, i: usize) -> Option<crate::quant::GgmlType> {
        self.kept_blocks.get(i).copied().flatten()
    }

    /// Pieces in data-section order; they tile the data section exactly.
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// Checks that no input file changed while the plan's bytes were read from it.
    ///
    /// # Errors
    /// [`Error::InvalidCheckpoint`] naming the file that was modified, truncated or replaced.
    pub fn check_inputs_unchanged(&self) -> Result<()> {
        self.inputs.iter().try_for_each(|f| f.check_unchanged())
    }
}

#[cfg(test)]
mod tests;
