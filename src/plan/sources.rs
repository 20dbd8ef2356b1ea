//! Where a planned tensor's bytes come from: the runs of bytes of each source tensor (a held
//! candle tensor, a file's range, a quantized tensor's parts, a merged expression's operands),
//! checked against the layout's shapes, as the pieces the writer fills from.

use std::sync::Arc;

use super::{HostBytes, Pending, Piece, PieceSource};
use crate::error::{Error, Result};
use crate::layout::{Entry, Source};
use crate::model::dtype::{self, Dtype};
use crate::model::{ComponentKind, Components, InputTensor};

fn held<'a>(components: &'a Components, kind: ComponentKind, key: &str) -> Result<&'a InputTensor> {
    components.tensor(kind, key).ok_or_else(|| {
        Error::InvalidInput(format!(
            "the layout refers to {kind} tensor `{key}`, which is not in the components; plan with the layout of these components"
        ))
    })
}

fn check_shape(key: &str, t: &InputTensor, want: &[usize]) -> Result<()> {
    let info = t.info();
    if info.shape != want {
        return Err(Error::BadShape {
            key: key.to_string(),
            shape: info.shape,
            reason: format!(
                "the layout expects {want:?}; plan with the layout of these components"
            ),
        });
    }
    Ok(())
}

/// The pieces of one source tensor, in units (see [`Piece`]): one per contiguous run of bytes
/// it is made of.
pub(crate) fn runs(key: &str, t: &InputTensor) -> Result<Vec<Pending>> {
    let info = t.info();
    let packed = dtype::is_packed(info.dtype);
    let units = if packed {
        dtype::byte_len(info.dtype, info.numel()).ok_or_else(|| Error::BadShape {
            key: key.to_string(),
            shape: info.shape.clone(),
            reason: format!("not a whole number of bytes of {}", info.dtype),
        })?
    } else {
        info.numel()
    };
    Ok(match t {
        InputTensor::Candle(tensor) => {
            let contiguous_from_start = tensor
                .layout()
                .contiguous_offsets()
                .is_some_and(|(start, _)| start == 0);
            if packed && !contiguous_from_start {
                return Err(Error::Conversion {
                    key: key.to_string(),
                    reason: format!(
                        "a {} tensor can only be saved whole and contiguous, not as a view; \
                         save the tensor it is a view of",
                        info.dtype
                    ),
                });
            }
            let source = PieceSource::Candle {
                tensor: tensor.clone(),
                offset: 0,
            };
            vec![(source, info.dtype, units)]
        }
        InputTensor::File(f) => {
            let source = PieceSource::File {
                file: Arc::clone(f.file()),
                start: f.entry().offsets.0,
                offset: 0,
            };
            vec![(source, info.dtype, units)]
        }
        InputTensor::Transposed(inner) => {
            refuse_packed(key, inner, "transposed")?;
            // Transposed from its host bytes (a merged tensor's are f32).
            let dtype = inner.host_dtype();
            let source = PieceSource::Transposed {
                tensor: (**inner).clone(),
                offset: 0,
            };
            vec![(source, dtype, units)]
        }
        InputTensor::Merged(m) => {
            let source = PieceSource::Merged {
                merged: Arc::clone(m),
                offset: 0,
            };
            vec![(source, t.host_dtype(), units)]
        }
        InputTensor::Joined(j) => {
            let mut out = Vec::new();
            for (part, range) in j.parts() {
                out.extend(slice(runs(key, part)?, range.clone()));
            }
            out
        }
        InputTensor::Quantized(q) => {
            let source = PieceSource::Dequant {
                tensor: Arc::clone(q),
                offset: 0,
            };
            vec![(source, Dtype::F32, units)]
        }
    })
}

/// How an operand of a merge is read: its pieces, consecutive from unit 0, filled as f32.
///
/// # Errors
/// Packed or otherwise unplannable tensors (see [`Plan::new`]).
pub(crate) fn operand_pieces(key: &str, t: &InputTensor) -> Result<Vec<Piece>> {
    let mut start = 0u64;
    Ok(runs(key, t)?
        .into_iter()
        .map(|(source, src_dtype, units)| {
            let p = Piece {
                source,
                src_dtype,
                dst_dtype: Dtype::F32,
                start,
                units,
                tensor: 0,
            };
            start = p.end();
            p
        })
        .collect())
}

/// How a tensor's bytes are read as they are stored (its own dtype, no cast): the members of a
/// quantized tensor.
///
/// # Errors
/// Unplannable tensors (see [`Plan::new`]).
pub(crate) fn raw_pieces(key: &str, t: &InputTensor) -> Result<Vec<Piece>> {
    let mut start = 0u64;
    Ok(runs(key, t)?
        .into_iter()
        .map(|(source, src_dtype, units)| {
            let p = Piece {
                source,
                src_dtype,
                dst_dtype: src_dtype,
                start,
                units,
                tensor: 0,
            };
            start = p.end();
            p
        })
        .collect())
}

/// The units `range` of a tensor made of `runs`.
fn slice(runs: Vec<Pending>, range: std::ops::Range<usize>) -> Vec<Pending> {
    let mut out = Vec::new();
    let mut at = 0;
    for (source, dtype, units) in runs {
        let (start, end) = (range.start.max(at), range.end.min(at + units));
        if start < end {
            out.push((source.advanced(start - at), dtype, end - start));
        }
        at += units;
    }
    out
}

/// Refuses packed dtypes where the bytes would have to be moved by element.
fn refuse_packed(key: &str, t: &InputTensor, what: &str) -> Result<()> {
    let dtype = t.info().dtype;
    if dtype::is_packed(dtype) {
        return Err(Error::Conversion {
            key: key.to_string(),
            reason: format!("a packed {dtype} tensor cannot be {what}; keep it out of this layout"),
        });
    }
    Ok(())
}

pub(super) fn resolve_sources(entry: &Entry, components: &Components) -> Result<Vec<Pending>> {
    let host = |bytes: Vec<u8>, dtype: Dtype, units: usize| -> Vec<Pending> {
        let bytes: HostBytes = Arc::new(bytes);
        vec![(PieceSource::Host { bytes, offset: 0 }, dtype, units)]
    };
    Ok(match &entry.source {
        Source::Copy { component, key } => {
            let t = held(components, *component, key)?;
            check_shape(key, t, &entry.shape)?;
            runs(key, t)?
        }
        Source::Transpose { component, key } => {
            let t = held(components, *component, key)?;
            let want: Vec<usize> = entry.shape.iter().rev().copied().collect();
            check_shape(key, t, &want)?;
            // A tensor read back transposed is written as it lies.
            runs(key, &t.clone().transposed())?
        }
        Source::FuseQkv { component, keys } => {
            let mut part_shape = entry.shape.clone();
            part_shape[0] /= 3;
            let mut out = Vec::with_capacity(3);
            for k in keys {
                let t = held(components, *component, k)?;
                check_shape(k, t, &part_shape)?;
                refuse_packed(k, t, "fused into q/k/v")?;
                out.extend(runs(k, t)?);
            }
            out
        }
        Source::PositionIds { len } => {
            let bytes: Vec<u8> = (0..*len as i64).flat_map(i64::to_le_bytes).collect();
            host(bytes, Dtype::I64, *len)
        }
        Source::EmptyMarker => host(Vec::new(), Dtype::F32, 0),
        Source::ScalarF32(v) => host(v.to_le_bytes().to_vec(), Dtype::F32, 1),
    })
}
