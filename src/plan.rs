//! Plan: the complete file before a byte is written.
//!
//! The header (tensors ordered by dtype descending, then name; JSON padded with spaces to a
//! multiple of 8, or further so the data section starts aligned), every tensor's byte range, its
//! target dtype and the source tensors that fill it. Everything that can be checked is checked
//! here — impossible casts, header size, shapes against the held tensors — so bad input never
//! creates a file.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::Tensor;
use serde::Serialize;

use crate::components::{ComponentKind, Components};
use crate::dtype::{self, Dtype, TargetDtype};
use crate::error::{Error, Result};
use crate::layout::{Layout, Source};

/// Largest header readers accept (safetensors' `MAX_HEADER_SIZE`).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

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
}

impl ComponentDtypes {
    /// The same choice for every component.
    pub fn all(dtype: TargetDtype) -> Self {
        Self {
            model: dtype,
            clip: dtype,
            vae: dtype,
            clip_vision: dtype,
        }
    }

    /// The choice for one component.
    pub fn get(&self, kind: ComponentKind) -> TargetDtype {
        match kind {
            ComponentKind::Model => self.model,
            ComponentKind::Clip => self.clip,
            ComponentKind::Vae => self.vae,
            ComponentKind::ClipVision => self.clip_vision,
        }
    }
}

/// Where one contiguous run of a tensor's bytes comes from.
#[derive(Debug, Clone)]
pub enum PieceSource {
    /// A held tensor, read in row-major order.
    Tensor(Tensor),
    /// A held 2-D tensor, written transposed.
    Transposed(Tensor),
    /// Bytes the save creates (markers, `position_ids`), already in the file dtype.
    Host(Arc<[u8]>),
}

/// A contiguous byte range of the data section filled from one source.
///
/// A planned tensor is one piece, except a fused q/k/v, which is three consecutive pieces
/// (concatenation along dim 0 of row-major tensors is concatenation of their bytes).
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
    /// Number of elements.
    pub numel: usize,
    /// Index of the tensor this piece belongs to, in [`Plan::tensors`].
    pub tensor: usize,
}

impl Piece {
    /// Bytes written for this piece.
    pub fn len(&self) -> u64 {
        dtype::byte_len(self.dst_dtype, self.numel) as u64
    }

    /// Whether the piece writes no bytes.
    pub fn is_empty(&self) -> bool {
        self.numel == 0
    }

    /// End offset in the data section.
    pub fn end(&self) -> u64 {
        self.start + self.len()
    }
}

/// One tensor of the file.
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOptions {
    /// Dtype per component.
    pub dtypes: ComponentDtypes,
    /// The data section starts at a multiple of this (8 = the reference layout; 4096 lets the
    /// writer use direct I/O). Must be a multiple of 8.
    pub data_alignment: u64,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            dtypes: ComponentDtypes::default(),
            data_alignment: 8,
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
}

#[derive(Serialize)]
struct HeaderEntry<'a> {
    dtype: Dtype,
    shape: &'a [usize],
    data_offsets: (u64, u64),
}

impl Plan {
    /// Plans a checkpoint from a layout and the tensors it refers to.
    ///
    /// # Errors
    /// [`Error::ImpossibleCast`] for a cast that cannot be done, [`Error::BadShape`] when a held
    /// tensor does not match the layout, [`Error::HeaderTooLarge`] when the header would exceed
    /// 100,000,000 bytes, [`Error::InvalidInput`] for a bad alignment or a missing tensor.
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
        struct Pending<'a> {
            entry: &'a crate::layout::Entry,
            dst: Dtype,
            sources: Vec<(PieceSource, usize)>,
        }
        let mut pending = Vec::with_capacity(layout.entries.len());
        for entry in &layout.entries {
            let dst = match entry.source.component() {
                Some(kind) => opts.dtypes.get(kind).resolve(&entry.key, entry.dtype)?,
                None => entry.dtype,
            };
            let sources = resolve_sources(entry, components)?;
            pending.push(Pending {
                entry,
                dst,
                sources,
            });
        }
        // File order: dtype descending, then name (what safetensors' serialize does).
        pending.sort_by(|a, b| {
            b.dst
                .cmp(&a.dst)
                .then_with(|| a.entry.key.cmp(&b.entry.key))
        });

        let mut tensors = Vec::with_capacity(pending.len());
        let mut pieces = Vec::with_capacity(pending.len());
        let mut offset = 0u64;
        for (i, p) in pending.into_iter().enumerate() {
            let begin = offset;
            for (source, numel) in p.sources {
                let src_dtype = match &source {
                    PieceSource::Host(_) => p.dst,
                    _ => p.entry.dtype,
                };
                let piece = Piece {
                    source,
                    src_dtype,
                    dst_dtype: p.dst,
                    start: offset,
                    numel,
                    tensor: i,
                };
                offset = piece.end();
                pieces.push(piece);
            }
            tensors.push(PlannedTensor {
                name: p.entry.key.clone(),
                dtype: p.dst,
                shape: p.entry.shape.clone(),
                offsets: (begin, offset),
            });
        }
        let header = header_bytes(metadata, &tensors, opts.data_alignment)?;
        Ok(Plan {
            header,
            tensors,
            pieces,
            data_len: offset,
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

    /// Tensors in file order.
    pub fn tensors(&self) -> &[PlannedTensor] {
        &self.tensors
    }

    /// Pieces in data-section order; they tile the data section exactly.
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }
}

fn held<'a>(components: &'a Components, kind: ComponentKind, key: &str) -> Result<&'a Tensor> {
    components.tensor(kind, key).ok_or_else(|| {
        Error::InvalidInput(format!(
            "the layout refers to {kind} tensor `{key}`, which is not in the components; plan with the layout of these components"
        ))
    })
}

fn check_shape(key: &str, t: &Tensor, want: &[usize]) -> Result<()> {
    if t.dims() != want {
        return Err(Error::BadShape {
            key: key.to_string(),
            shape: t.dims().to_vec(),
            reason: format!(
                "the layout expects {want:?}; plan with the layout of these components"
            ),
        });
    }
    Ok(())
}

fn resolve_sources(
    entry: &crate::layout::Entry,
    components: &Components,
) -> Result<Vec<(PieceSource, usize)>> {
    let numel: usize = entry.shape.iter().product();
    Ok(match &entry.source {
        Source::Copy { component, key } => {
            let t = held(components, *component, key)?;
            check_shape(key, t, &entry.shape)?;
            vec![(PieceSource::Tensor(t.clone()), numel)]
        }
        Source::Transpose { component, key } => {
            let t = held(components, *component, key)?;
            let want: Vec<usize> = entry.shape.iter().rev().copied().collect();
            check_shape(key, t, &want)?;
            vec![(PieceSource::Transposed(t.clone()), numel)]
        }
        Source::FuseQkv { component, keys } => {
            let mut part_shape = entry.shape.clone();
            part_shape[0] /= 3;
            keys.iter()
                .map(|k| {
                    let t = held(components, *component, k)?;
                    check_shape(k, t, &part_shape)?;
                    Ok((PieceSource::Tensor(t.clone()), numel / 3))
                })
                .collect::<Result<_>>()?
        }
        Source::PositionIds { len } => {
            let bytes: Vec<u8> = (0..*len as i64).flat_map(i64::to_le_bytes).collect();
            vec![(PieceSource::Host(bytes.into()), *len)]
        }
        Source::EmptyMarker => vec![(PieceSource::Host(Arc::from(Vec::new())), 0)],
        Source::ScalarF32(v) => vec![(PieceSource::Host(v.to_le_bytes().to_vec().into()), 1)],
    })
}

/// Serialises the header exactly as safetensors does (compact JSON, `__metadata__` first),
/// padded with spaces so the data section starts at a multiple of `align`.
fn header_bytes(
    metadata: &BTreeMap<String, String>,
    tensors: &[PlannedTensor],
    align: u64,
) -> Result<Vec<u8>> {
    let mut json = Vec::with_capacity(64 + tensors.len() * 160);
    json.push(b'{');
    json.extend_from_slice(b"\"__metadata__\":");
    serde_json::to_writer(&mut json, metadata)
        .map_err(|e| Error::InvalidInput(format!("metadata: {e}")))?;
    for t in tensors {
        json.push(b',');
        serde_json::to_writer(&mut json, &t.name)
            .map_err(|e| Error::InvalidInput(format!("key: {e}")))?;
        json.push(b':');
        let entry = HeaderEntry {
            dtype: t.dtype,
            shape: &t.shape,
            data_offsets: t.offsets,
        };
        serde_json::to_writer(&mut json, &entry)
            .map_err(|e| Error::InvalidInput(format!("header: {e}")))?;
    }
    json.push(b'}');
    let padded = (8 + json.len() as u64).next_multiple_of(align) - 8;
    if padded > MAX_HEADER_LEN {
        return Err(Error::HeaderTooLarge {
            size: padded,
            limit: MAX_HEADER_LEN,
        });
    }
    let mut header = Vec::with_capacity(8 + padded as usize);
    header.extend_from_slice(&padded.to_le_bytes());
    header.extend_from_slice(&json);
    header.resize(8 + padded as usize, b' ');
    Ok(header)
}

#[cfg(test)]
mod tests;
