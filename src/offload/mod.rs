//! Offload: turns planned pieces into host bytes in their file dtype.
//!
//! CPU tensors are read straight from their storage: no copy when the tensor is contiguous, and
//! the cast (if any) is fused with the copy into the writer's staging buffer. Tensors on another
//! device (CUDA, Metal) take the generic device path ([`device`]): copied to host memory range by
//! range, cast on the device first where that shrinks what crosses the bus and the device rounds
//! as the host does, their NaN/Inf counted before that rounding. No device tensor is read before
//! the work that produced it has finished ([`order`]).
//!
//! With the `cuda` feature, pieces on CUDA devices take the fast path in [`cuda`] instead: a fused
//! cast-and-pack kernel, pinned reused host buffers and copies overlapped with writes; it hands
//! its filled buffers to the writer. Without the feature, [`cuda`] is a stand-in with the same
//! names that has no device groups, so callers need no `#[cfg]`.
//!
//! Offload writes no file: input files' ranges are read through the one reader. Merged
//! tensors are computed here, range by range ([`merge`]).

#[cfg(feature = "cuda")]
pub(crate) mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda_disabled.rs"]
pub(crate) mod cuda;
pub(crate) mod device;
pub(crate) mod ggml_device;
mod lowrank;
mod merge;
pub(crate) use merge::as_bytes;
pub(crate) mod method;
pub(crate) mod order;
mod quant;
pub(crate) mod quant_device;
pub(crate) mod scale_cache;

use std::ops::Range;

use candle_core::{CpuStorage, Storage, Tensor};

use crate::cast;
use crate::error::{Error, Result};
use crate::model::dtype::file_dtype;
use crate::model::InputTensor;
use crate::plan::{unit_width, Piece, PieceSource};

pub use cuda::pinned_copy_ceiling;

/// Stack of the threads that evaluate merged expressions: evaluation recurses once per level
/// of nesting (a graph up to [`crate::merge::graph::MAX_DEPTH`] nodes deep), a few KiB a level
/// in a debug build; only the pages a deep graph touches are ever used.
pub(crate) const EVAL_STACK: usize = 64 << 20;

/// Per-worker memory of the fills: the last tensor made contiguous (a transposed projection, a
/// strided view), so the many steps that read one such tensor make it once, and the buffer input
/// file ranges are read into before they are cast.
#[derive(Default)]
pub struct Scratch {
    contiguous: Option<(usize, Tensor)>,
    transposed: Option<(usize, Vec<u8>)>,
    read: Vec<u8>,
    lora: Option<(usize, std::sync::Arc<merge::HostLora>)>,
    quant: quant::QuantScratch,
    /// Ranges of file tensors a merged expression reads more than once, kept for the block
    /// being computed (see `merge`).
    operands: merge::OperandCache,
    /// The method facts passes' buffers, kept between tensors (see `method`).
    method: method::Buffers,
}

impl Scratch {
    /// `t` made contiguous, reusing the copy made for the same piece last time.
    fn contiguous(&mut self, piece: &Piece, t: &Tensor, transpose: bool) -> Result<Tensor> {
        let id = piece as *const Piece as usize;
        if let Some((p, c)) = &self.contiguous {
            if *p == id {
                return Ok(c.clone());
            }
        }
        let c = if transpose {
            t.t()?.contiguous()?
        } else {
            t.contiguous()?
        };
        self.contiguous = Some((id, c.clone()));
        Ok(c)
    }

    /// The bytes of a host-made transpose of `t`, made once per piece.
    fn transposed(&mut self, piece: &Piece, t: &InputTensor) -> Result<&[u8]> {
        let id = piece as *const Piece as usize;
        if self.transposed.as_ref().is_none_or(|(p, _)| *p != id) {
            let info = t.info();
            let [rows, cols] = info.shape[..] else {
                return Err(Error::InvalidInput(format!(
                    "only 2-D tensors are transposed, not shape {:?}",
                    info.shape
                )));
            };
            let bytes = host_bytes(t)?;
            let w = unit_width(t.host_dtype());
            let mut out = vec![0u8; bytes.len()];
            for r in 0..rows {
                for c in 0..cols {
                    let (from, to) = ((r * cols + c) * w, (c * rows + r) * w);
                    out[to..to + w].copy_from_slice(&bytes[from..from + w]);
                }
            }
            self.transposed = Some((id, out));
        }
        Ok(self
            .transposed
            .as_ref()
            .map_or(&[][..], |(_, b)| b.as_slice()))
    }
}

/// Every byte of a tensor (row-major, in [`InputTensor::host_dtype`]) in host memory: for the
/// small tensors a conversion needs whole (a transposed projection, a LoRA's alpha). Waits first
/// for the work that produced the device tensors it is made of ([`order`]).
///
/// # Errors
/// Device, read and cast errors; [`Error::InvalidInput`] for a transpose nested in a conversion.
pub(crate) fn host_bytes(t: &InputTensor) -> Result<Vec<u8>> {
    let mut held = Vec::new();
    order::held(t, &mut held);
    order::wait_for_producers(held)?;
    ordered_host_bytes(t)
}

/// Every value of a tensor in host memory as f32 when it is evaluated in f32 (a merge: its
/// values as [`host_bytes`] gives their bytes, without that copy); `None` for other tensors.
///
/// # Errors
/// As [`host_bytes`].
pub(crate) fn host_f32(t: &InputTensor) -> Result<Option<Vec<f32>>> {
    let InputTensor::Merged(m) = t else {
        return Ok(None);
    };
    let mut held = Vec::new();
    order::held(t, &mut held);
    order::wait_for_producers(held)?;
    Ok(Some(merge::merged_f32(m, &mut Scratch::default())?))
}

/// [`host_bytes`], once the producers of its device tensors have finished.
fn ordered_host_bytes(t: &InputTensor) -> Result<Vec<u8>> {
    match t {
        InputTensor::Candle(c) => {
            let c = order::read(c)
                .contiguous()?
                .to_device(&candle_core::Device::Cpu)?;
            let w = unit_width(file_dtype(c.dtype()));
            with_cpu_bytes(&c, 0..c.elem_count(), w, |b| Ok(b.to_vec()))
        }
        InputTensor::File(f) => f.file().read_tensor(f.entry()),
        InputTensor::Joined(j) => {
            let w = unit_width(t.info().dtype);
            let mut out = Vec::with_capacity(t.byte_len() as usize);
            for (part, range) in j.parts() {
                let b = ordered_host_bytes(part)?;
                out.extend_from_slice(&b[range.start * w..range.end * w]);
            }
            Ok(out)
        }
        InputTensor::Transposed(_) => Err(Error::InvalidInput(
            "a transposed tensor inside a conversion is not supported".into(),
        )),
        InputTensor::Merged(m) => merge::merged_bytes(m, &mut Scratch::default()),
        InputTensor::Quantized(q) => {
            let n = q.layout().numel() as usize;
            let mut out = vec![0u8; n * 4];
            let all = 0..n;
            let dst = crate::model::dtype::Dtype::F32;
            quant::fill_dequant(
                q,
                "quantized tensor",
                all,
                &mut out,
                dst,
                &mut Scratch::default(),
            )?;
            Ok(out)
        }
    }
}

/// Units `units` of a tensor planned as `pieces` (f32 destination, consecutive from unit 0, as
/// [`crate::plan::operand_pieces`] makes them), into `out`: how merges, reductions and
/// quantizers read a tensor's values.
///
/// # Errors
/// Read, decode and cast errors of the pieces.
pub(crate) fn read_f32(
    pieces: &[Piece],
    units: Range<usize>,
    out: &mut [f32],
    scratch: &mut Scratch,
) -> Result<()> {
    let mut at = 0usize;
    for p in pieces {
        let (s, e) = (units.start.max(at), units.end.min(at + p.units));
        if s < e {
            let dst = merge::as_bytes_mut(&mut out[s - units.start..e - units.start]);
            match &p.source {
                // f32 in the file: read straight into place (the result is counted, not this).
                PieceSource::File {
                    file,
                    start,
                    offset,
                } if p.src_dtype == crate::model::dtype::Dtype::F32 => {
                    file.read_at(dst, start + ((offset + s - at) * 4) as u64)?;
                }
                _ => {
                    fill(p, "operand", s - at..e - at, dst, scratch)?;
                }
            }
        }
        at += p.units;
    }
    Ok(())
}

/// Bytes of a file read at once before they are cast: well inside a core's L2 cache.
const READ_BLOCK: usize = 256 << 10;

/// Whether the piece can be written straight from memory it already occupies (a contiguous CPU
/// tensor kept in its dtype, or host bytes): no staging copy is needed.
pub(crate) fn is_in_place(piece: &Piece) -> bool {
    match &piece.source {
        PieceSource::Candle { tensor, .. } => {
            tensor.device().is_cpu() && tensor.is_contiguous() && piece.src_dtype == piece.dst_dtype
        }
        PieceSource::Host { .. } => piece.src_dtype == piece.dst_dtype,
        PieceSource::File { .. }
        | PieceSource::Transposed { .. }
        | PieceSource::Merged { .. }
        | PieceSource::Dequant { .. }
        | PieceSource::BlockScales { .. }
        | PieceSource::Encoded { .. } => false,
    }
}

/// Calls `f` with the bytes of units `units` of an [in-place](is_in_place) piece, where they lie.
///
/// # Errors
/// [`Error::InvalidInput`] for a piece that is not in place or a range outside it.
pub(crate) fn with_bytes_in_place<R>(
    piece: &Piece,
    units: Range<usize>,
    f: impl FnOnce(&[u8]) -> Result<R>,
) -> Result<R> {
    check_range(piece, &units)?;
    if !is_in_place(piece) {
        return Err(Error::InvalidInput(
            "a piece that needs staging was asked for in place".into(),
        ));
    }
    let w = unit_width(piece.src_dtype);
    match &piece.source {
        PieceSource::Host { bytes, offset } => {
            let all = (**bytes).as_ref();
            let at = (offset + units.start) * w..(offset + units.end) * w;
            f(all.get(at).ok_or_else(|| outside("host bytes"))?)
        }
        PieceSource::Candle { tensor, offset } => {
            let shifted = offset + units.start..offset + units.end;
            with_cpu_bytes(order::read(tensor), shifted, w, f)
        }
        PieceSource::File { .. }
        | PieceSource::Transposed { .. }
        | PieceSource::Merged { .. }
        | PieceSource::Dequant { .. }
        | PieceSource::BlockScales { .. }
        | PieceSource::Encoded { .. } => Err(Error::InvalidInput(
            "a file, transposed, merged or quantized piece is never in place".into(),
        )),
    }
}

/// Fills `out` with units `units` of the piece in its file dtype, casting on the way, and returns
/// how many source values are NaN or ±Inf. `name` names the tensor in errors.
///
/// # Errors
/// [`Error::InvalidInput`] for a range outside the piece or an `out` of the wrong length;
/// device-copy and cast errors.
pub(crate) fn fill(
    piece: &Piece,
    name: &str,
    units: Range<usize>,
    out: &mut [u8],
    scratch: &mut Scratch,
) -> Result<u64> {
    check_range(piece, &units)?;
    if out.len() != units.len() * unit_width(piece.dst_dtype) {
        return Err(Error::InvalidInput(format!(
            "cannot fill {} units of `{name}` into {} bytes",
            units.len(),
            out.len()
        )));
    }
    let dst = piece.dst_dtype;
    let from = piece.src_dtype;
    match &piece.source {
        PieceSource::Host { .. } => {
            with_bytes_in_place(piece, units, |src| cast::convert(name, src, from, out, dst))
        }
        PieceSource::Candle { tensor, offset } => {
            let shifted = offset + units.start..offset + units.end;
            let tensor = order::read(tensor);
            if !tensor.device().is_cpu() {
                return device::from_device(tensor, shifted, name, out, dst);
            }
            let w = unit_width(piece.src_dtype);
            if tensor.is_contiguous() {
                return with_cpu_bytes(tensor, shifted, w, |src| {
                    cast::convert(name, src, from, out, dst)
                });
            }
            let c = scratch.contiguous(piece, tensor, false)?;
            with_cpu_bytes(&c, shifted, w, |src| {
                cast::convert(name, src, from, out, dst)
            })
        }
        PieceSource::File {
            file,
            start,
            offset,
        } => {
            let w = unit_width(piece.src_dtype);
            let at = start + ((offset + units.start) * w) as u64;
            if piece.src_dtype == dst {
                // Read straight into the staging buffer, then count what was read.
                file.read_at(out, at)?;
                return Ok(cast::count_non_finite(out, dst));
            }
            // Read and cast a cache-sized block at a time: the bytes read are cast while still
            // in cache instead of making a round trip through memory.
            let per_block = (READ_BLOCK / w).max(1);
            let dw = unit_width(dst);
            let buf = &mut scratch.read;
            buf.resize(units.len().min(per_block) * w, 0);
            let mut non_finite = 0;
            let mut done = 0;
            while done < units.len() {
                let n = (units.len() - done).min(per_block);
                let src = &mut buf[..n * w];
                file.read_at(src, at + (done * w) as u64)?;
                let dst_bytes = &mut out[done * dw..(done + n) * dw];
                non_finite += cast::convert(name, src, piece.src_dtype, dst_bytes, dst)?;
                done += n;
            }
            Ok(non_finite)
        }
        PieceSource::Transposed {
            tensor: InputTensor::Candle(tensor),
            offset,
        } => {
            let shifted = offset + units.start..offset + units.end;
            let c = scratch.contiguous(piece, order::read(tensor), true)?;
            if !c.device().is_cpu() {
                return device::from_device(&c, shifted, name, out, dst);
            }
            with_cpu_bytes(&c, shifted, unit_width(piece.src_dtype), |src| {
                cast::convert(name, src, from, out, dst)
            })
        }
        PieceSource::Merged { merged, offset } => {
            let shifted = offset + units.start..offset + units.end;
            merge::fill_merged(merged, name, shifted, out, dst, scratch)
        }
        PieceSource::Dequant { tensor, offset } => {
            let shifted = offset + units.start..offset + units.end;
            quant::fill_dequant(tensor, name, shifted, out, dst, scratch)
        }
        PieceSource::BlockScales { tensor, offset } => {
            let bytes = (offset + units.start) as u64..(offset + units.end) as u64;
            quant::copy_block_scales(tensor, bytes, out)?;
            Ok(0)
        }
        PieceSource::Encoded {
            target,
            role,
            offset,
        } => {
            let shifted = offset + units.start..offset + units.end;
            quant::fill_encoded(target, *role, shifted, out, scratch)
        }
        PieceSource::Transposed { tensor, offset } => {
            let w = unit_width(piece.src_dtype);
            let bytes = scratch.transposed(piece, tensor)?;
            let src = bytes
                .get((offset + units.start) * w..(offset + units.end) * w)
                .ok_or_else(|| outside("transposed tensor"))?;
            cast::convert(name, src, piece.src_dtype, out, dst)
        }
    }
}

fn check_range(piece: &Piece, units: &Range<usize>) -> Result<()> {
    if units.start > units.end || units.end > piece.units {
        return Err(Error::InvalidInput(format!(
            "unit range {units:?} outside a piece of {} units",
            piece.units
        )));
    }
    Ok(())
}

fn outside(what: &str) -> Error {
    Error::InvalidInput(format!("a planned range lies outside its {what}"))
}

/// Calls `f` with the bytes of units `units` (of `width` bytes) of a contiguous CPU tensor.
fn with_cpu_bytes<R>(
    t: &Tensor,
    units: Range<usize>,
    width: usize,
    f: impl FnOnce(&[u8]) -> Result<R>,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(Error::InvalidInput(
            "a CPU tensor without CPU storage".into(),
        ));
    };
    let (start, _) = layout.contiguous_offsets().ok_or_else(|| {
        Error::InvalidInput("contiguous tensor without contiguous offsets".into())
    })?;
    // Packed tensors are planned whole from offset 0 (units are bytes); others count elements.
    let start = start * width;
    let bytes = cpu_bytes(cpu)
        .get(start + units.start * width..start + units.end * width)
        .ok_or_else(|| outside("tensor storage"))?;
    f(bytes)
}

/// The bytes of a CPU storage (little-endian host assumed; see `cast`).
fn cpu_bytes(s: &CpuStorage) -> &[u8] {
    fn bytes<T: Copy>(v: &[T]) -> &[u8] {
        // SAFETY: any initialised memory may be read as bytes; u8 has alignment 1 and the length
        // covers exactly the slice's memory.
        unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
    }
    match s {
        CpuStorage::U8(v) => v,
        CpuStorage::U32(v) => bytes(v),
        CpuStorage::I16(v) => bytes(v),
        CpuStorage::I32(v) => bytes(v),
        CpuStorage::I64(v) => bytes(v),
        CpuStorage::BF16(v) => bytes(v),
        CpuStorage::F16(v) => bytes(v),
        CpuStorage::F32(v) => bytes(v),
        CpuStorage::F64(v) => bytes(v),
        CpuStorage::F8E4M3(v) => bytes(v),
        CpuStorage::F6E2M3(v)
        | CpuStorage::F6E3M2(v)
        | CpuStorage::F4(v)
        | CpuStorage::F8E8M0(v) => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::dtype::Dtype;
    use candle_core::{DType, Device};
    use std::sync::Arc;

    fn piece(source: PieceSource, src: Dtype, dst: Dtype, units: usize) -> Piece {
        Piece {
            source,
            src_dtype: src,
            dst_dtype: dst,
            start: 0,
            units,
            tensor: 0,
        }
    }

    fn candle(t: Tensor) -> PieceSource {
        PieceSource::Candle {
            tensor: t,
            offset: 0,
        }
    }

    fn f32s(b: &[u8]) -> Vec<f32> {
        b.chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn views_read_the_viewed_elements() {
        let t = Tensor::arange(0f32, 12., &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let row = t.narrow(0, 1, 1).unwrap();
        let p = piece(candle(row), Dtype::F32, Dtype::F32, 4);
        assert!(is_in_place(&p));
        let got = with_bytes_in_place(&p, 0..4, |b| Ok(f32s(b))).unwrap();
        assert_eq!(got, vec![4., 5., 6., 7.]);
        // Non-contiguous: a column, staged through one contiguous copy.
        let col = t.narrow(1, 2, 1).unwrap();
        let p = piece(candle(col), Dtype::F32, Dtype::F32, 3);
        assert!(!is_in_place(&p));
        let mut scratch = Scratch::default();
        let mut out = vec![0u8; 8];
        fill(&p, "col", 1..3, &mut out, &mut scratch).unwrap();
        assert_eq!(f32s(&out), vec![6., 10.]);
        assert!(fill(&p, "col", 1..4, &mut [0u8; 12], &mut scratch).is_err());
        assert!(fill(&p, "col", 0..2, &mut [0u8; 4], &mut scratch).is_err());
    }

    #[test]
    fn transposed_pieces_are_transposed() {
        let t = Tensor::new(&[[1u8, 2, 3], [4, 5, 6]], &Device::Cpu).unwrap();
        let source = PieceSource::Transposed {
            tensor: InputTensor::Candle(t),
            offset: 0,
        };
        let p = piece(source, Dtype::U8, Dtype::U8, 6);
        let mut scratch = Scratch::default();
        let mut out = vec![0u8; 6];
        fill(&p, "t", 0..6, &mut out, &mut scratch).unwrap();
        assert_eq!(out, vec![1, 4, 2, 5, 3, 6]);
        let mut two = vec![0u8; 2];
        fill(&p, "t", 2..4, &mut two, &mut scratch).unwrap();
        assert_eq!(two, vec![2, 5]);
        let h = piece(
            PieceSource::Host {
                bytes: Arc::new(vec![9u8, 8, 7]),
                offset: 1,
            },
            Dtype::U8,
            Dtype::U8,
            2,
        );
        assert_eq!(
            with_bytes_in_place(&h, 0..2, |b| Ok(b.to_vec())).unwrap(),
            vec![8, 7]
        );
    }

    #[test]
    fn packed_ranges_are_byte_ranges_of_the_storage() {
        // Regression: a packed tensor's every range used to return its whole storage.
        let bytes: Vec<u8> = (0u8..64).collect();
        let t = Tensor::from_raw_buffer(&bytes, DType::F4, &[128], &Device::Cpu).unwrap();
        let p = piece(candle(t), Dtype::F4, Dtype::F4, 64);
        let got = with_bytes_in_place(&p, 10..20, |b| Ok(b.to_vec())).unwrap();
        assert_eq!(got, (10u8..20).collect::<Vec<_>>());
        let mut out = vec![0u8; 5];
        fill(&p, "f4", 59..64, &mut out, &mut Scratch::default()).unwrap();
        assert_eq!(out, vec![59, 60, 61, 62, 63]);
    }
}
