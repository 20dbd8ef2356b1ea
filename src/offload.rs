//! Offload: turns planned pieces into host bytes.
//!
//! CPU tensors are read straight from their storage: no copy when the tensor is contiguous, and
//! the cast (if any) is fused with the copy into the writer's staging buffer. Tensors on another
//! device (CUDA, Metal) take the generic device path: they are cast on the device first, so only
//! the target dtype's bytes cross the bus, then copied to host memory.
//!
//! With the `cuda` feature, pieces on CUDA devices take the fast path in [`cuda`] instead: a fused
//! cast-and-pack kernel, pinned reused host buffers and copies overlapped with writes. Without the
//! feature, [`cuda`] is a stand-in with the same names that has no device groups and reports
//! [`Error::FeatureDisabled`], so callers need no `#[cfg]`.

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "offload/cuda_disabled.rs"]
pub mod cuda;

pub use cuda::pinned_copy_ceiling;

use std::ops::Range;

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};

use crate::dtype::{candle_dtype, file_dtype, Dtype};
use crate::error::{Error, Result};
use crate::plan::{Piece, PieceSource};

/// Calls `f` with the bytes of elements `range` of the piece's source on the host (row-major,
/// little-endian) and their dtype.
///
/// The dtype handed to `f` is the piece's source dtype, or its target dtype when the cast already
/// happened on the device. Contiguous CPU tensors are read in place; a device tensor copies only
/// the requested range, so a large tensor can be staged chunk by chunk.
///
/// # Errors
/// Errors of the device copy or of `f`, and [`Error::InvalidInput`] for a range outside the piece.
pub fn with_host_range<R>(
    piece: &Piece,
    range: Range<usize>,
    f: impl FnOnce(&[u8], Dtype) -> Result<R>,
) -> Result<R> {
    if range.start > range.end || range.end > piece.numel {
        return Err(Error::InvalidInput(format!(
            "element range {range:?} outside a piece of {} elements",
            piece.numel
        )));
    }
    match &piece.source {
        PieceSource::Host(bytes) => {
            let size = piece.src_dtype.bitsize() / 8;
            f(
                &bytes[range.start * size..range.end * size],
                piece.src_dtype,
            )
        }
        PieceSource::Tensor(t) => with_tensor_range(t, range, piece.dst_dtype, f),
        PieceSource::Transposed(t) => {
            let t = t.t()?.contiguous()?;
            with_tensor_range(&t, range, piece.dst_dtype, f)
        }
    }
}

/// Whether the piece can be written straight from memory it already occupies (a contiguous CPU
/// tensor kept in its dtype): no staging copy is needed.
pub fn is_in_place(piece: &Piece) -> bool {
    match &piece.source {
        PieceSource::Tensor(t) => {
            t.device().is_cpu() && t.is_contiguous() && piece.src_dtype == piece.dst_dtype
        }
        PieceSource::Host(_) | PieceSource::Transposed(_) => false,
    }
}

fn with_tensor_range<R>(
    t: &Tensor,
    range: Range<usize>,
    dst: Dtype,
    f: impl FnOnce(&[u8], Dtype) -> Result<R>,
) -> Result<R> {
    if !t.device().is_cpu() {
        // Copy only the requested elements: a cheap view of the flattened tensor, then the copy.
        let part = t.flatten_all()?.narrow(0, range.start, range.len())?;
        let host = to_host(&part, dst)?;
        return with_tensor_range(&host, 0..range.len(), dst, f);
    }
    if !t.is_contiguous() {
        return with_tensor_range(&t.contiguous()?, range, dst, f);
    }
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(Error::InvalidInput(
            "a CPU tensor without CPU storage".into(),
        ));
    };
    let all = cpu_bytes(cpu);
    let dtype = file_dtype(t.dtype());
    if is_packed(t.dtype()) {
        // Sub-byte formats are only ever copied whole (they cannot be cast).
        return f(all, dtype);
    }
    let size = t.dtype().size_in_bytes();
    let (start, _) = layout.contiguous_offsets().ok_or_else(|| {
        Error::InvalidInput("contiguous tensor without contiguous offsets".into())
    })?;
    let bytes = all
        .get((start + range.start) * size..(start + range.end) * size)
        .ok_or_else(|| Error::InvalidInput("tensor view lies outside its storage".into()))?;
    f(bytes, dtype)
}

/// Copies a device tensor to host memory, casting on the device first when the target dtype is
/// one candle has and the cast shrinks the bytes that cross the bus.
pub fn to_host(t: &Tensor, dst: Dtype) -> Result<Tensor> {
    let t = match candle_dtype(dst) {
        Some(d) if d != t.dtype() && is_float(t.dtype()) && is_float(d) => t.to_dtype(d)?,
        _ => t.clone(),
    };
    Ok(t.to_device(&Device::Cpu)?)
}

fn is_float(d: DType) -> bool {
    matches!(
        d,
        DType::F16 | DType::BF16 | DType::F32 | DType::F64 | DType::F8E4M3
    )
}

fn is_packed(d: DType) -> bool {
    matches!(d, DType::F4 | DType::F6E2M3 | DType::F6E3M2)
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
    use std::sync::Arc;

    fn piece(source: PieceSource, src: Dtype, dst: Dtype, numel: usize) -> Piece {
        Piece {
            source,
            src_dtype: src,
            dst_dtype: dst,
            start: 0,
            numel,
            tensor: 0,
        }
    }

    #[test]
    fn views_read_the_viewed_elements() {
        let t = Tensor::arange(0f32, 12., &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let row = t.narrow(0, 1, 1).unwrap();
        let p = piece(PieceSource::Tensor(row), Dtype::F32, Dtype::F32, 4);
        let got = with_host_range(&p, 0..4, |b, d| {
            assert_eq!(d, Dtype::F32);
            Ok(b.chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect::<Vec<_>>())
        })
        .unwrap();
        assert_eq!(got, vec![4., 5., 6., 7.]);
        // Non-contiguous: a column.
        let col = t.narrow(1, 2, 1).unwrap();
        let p = piece(PieceSource::Tensor(col), Dtype::F32, Dtype::F32, 3);
        let n = with_host_range(&p, 0..3, |b, _| Ok(b.len())).unwrap();
        assert!(!is_in_place(&p));
        let part = with_host_range(&p, 1..3, |b, _| Ok(b.len())).unwrap();
        assert_eq!(part, 8);
        assert_eq!(n, 12);
    }

    #[test]
    fn transposed_pieces_are_transposed() {
        let t = Tensor::new(&[[1u8, 2, 3], [4, 5, 6]], &Device::Cpu).unwrap();
        let p = piece(PieceSource::Transposed(t), Dtype::U8, Dtype::U8, 6);
        let got = with_host_range(&p, 0..6, |b, _| Ok(b.to_vec())).unwrap();
        assert_eq!(got, vec![1, 4, 2, 5, 3, 6]);
        assert_eq!(
            with_host_range(&p, 2..4, |b, _| Ok(b.to_vec())).unwrap(),
            vec![2, 5]
        );
        assert!(with_host_range(&p, 2..7, |_, _| Ok(())).is_err());
        let h = piece(
            PieceSource::Host(Arc::from(vec![9u8, 9])),
            Dtype::U8,
            Dtype::U8,
            2,
        );
        assert_eq!(
            with_host_range(&h, 0..2, |b, _| Ok(b.to_vec())).unwrap(),
            vec![9, 9]
        );
    }
}
