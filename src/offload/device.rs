//! Device tensors: which pieces a device pipeline owns, which casts a device makes, and how the
//! generic path brings a range of a device tensor to the host.
//!
//! # Who fills a piece
//! [`pipeline_source`] is the one answer to "does a device pipeline fill this piece": the
//! writer groups pieces by it ([`super::cuda::device_groups`]) and leaves those out of its host
//! units, and the save chooses its write method by it (a pipeline writes at arbitrary offsets, so
//! a plan with such pieces is not written with direct I/O). Both ask about the planned pieces, so
//! a tensor nested in a conversion (a q/k/v part of a `Joined`, a `Transposed` projection) gets
//! the same answer from both.
//!
//! # Casts on the device, counts before the rounding
//! The generic path casts on the device only where that shrinks what crosses the bus *and* the
//! device's cast is the same single round-to-nearest-even as [`crate::cast`]
//! ([`device_cast`]): on CUDA, f32 → f16/bf16 and f64 → f32. Everything else is copied in its
//! own dtype and cast on the host: fp8 (candle's fp8 casts differ from this crate's in NaN and
//! saturation details, and Metal has none), f64 (Metal has none), and every cast on Metal (its
//! memory is the host's, so nothing is saved; candle compiles its Metal kernels with fast math,
//! under which a NaN count made there cannot be trusted). The CPU casts in the fill itself.
//!
//! Whatever the path, a tensor's non-finite count is the number of NaN/±Inf among the values
//! *before* the final rounding into the file dtype — the source values, or a merge's f32 result —
//! which is what [`crate::cast::convert`] counts on the host and the CUDA kernel counts on the
//! device. A finite value that overflows to ±Inf in that rounding (65520.0 → f16) is therefore
//! not counted, and an Inf that fp8 saturates to its largest finite value is. So the count, and
//! `--check-finite`, depend on the values saved and the file dtype, never on which evaluator or
//! device computed them. When the device casts, it counts first, on the values it is about to
//! round.

use std::ops::Range;

use candle_core::{DType, Device, DeviceLocation, Tensor};

use super::{cuda, with_cpu_bytes};
use crate::cast;
use crate::error::Result;
use crate::model::dtype::{file_dtype, Dtype};
use crate::model::InputTensor;
use crate::plan::{unit_width, Piece, PieceSource, Plan};

/// Dtype codes of the device pipeline's kernel (`C_*` in `kernels/cast_pack.cu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Code {
    F32 = 0,
    F16 = 1,
    Bf16 = 2,
    F64 = 3,
    F8E4M3 = 4,
    F8E5M2 = 5,
    Raw1 = 6,
    Raw2 = 7,
    Raw4 = 8,
    Raw8 = 9,
}

impl Code {
    /// The kernel code of a source or kept dtype; `None` when the kernel cannot read it.
    pub(crate) fn of(d: Dtype) -> Option<Code> {
        Some(match d {
            Dtype::F32 => Code::F32,
            Dtype::F16 => Code::F16,
            Dtype::BF16 => Code::Bf16,
            Dtype::F64 => Code::F64,
            Dtype::F8_E4M3 => Code::F8E4M3,
            Dtype::F8_E5M2 => Code::F8E5M2,
            Dtype::U8 | Dtype::I8 | Dtype::BOOL => Code::Raw1,
            Dtype::I16 | Dtype::U16 => Code::Raw2,
            Dtype::I32 | Dtype::U32 => Code::Raw4,
            Dtype::I64 | Dtype::U64 => Code::Raw8,
            _ => return None,
        })
    }

    /// Whether the kernel can encode into this code (the cast targets).
    pub(crate) fn is_target(self) -> bool {
        matches!(
            self,
            Code::F32 | Code::F16 | Code::Bf16 | Code::F8E4M3 | Code::F8E5M2
        )
    }

    fn is_float(self) -> bool {
        self.is_target() || self == Code::F64
    }
}

/// The candle tensor a device pipeline reads for `piece`, when a pipeline fills the piece: a
/// candle tensor (as held, or transposed) on a device that has a pipeline, in a dtype pair the
/// kernel handles. `None`: the host's workers fill it.
pub(crate) fn pipeline_source(piece: &Piece) -> Option<&Tensor> {
    source_on(piece, cuda::has_pipeline)
}

/// Whether a device pipeline fills any of the plan's pieces.
pub(crate) fn any_pipeline(plan: &Plan) -> bool {
    plan.pieces().iter().any(|p| pipeline_source(p).is_some())
}

/// [`pipeline_source`] with the devices that have a pipeline given (the tests name the CPU).
fn source_on(piece: &Piece, has_pipeline: impl Fn(&Device) -> bool) -> Option<&Tensor> {
    let t = match &piece.source {
        PieceSource::Candle { tensor, .. }
        | PieceSource::Transposed {
            tensor: InputTensor::Candle(tensor),
            ..
        } => tensor,
        _ => return None,
    };
    if !has_pipeline(t.device()) || file_dtype(t.dtype()) != piece.src_dtype {
        return None;
    }
    let (src, dst) = (Code::of(piece.src_dtype)?, Code::of(piece.dst_dtype)?);
    let ok = if piece.src_dtype == piece.dst_dtype {
        src == dst
    } else {
        src.is_float() && dst.is_target()
    };
    ok.then_some(t)
}

/// The dtype a range of a `from` tensor on the device at `at` is cast to *on that device* before
/// it is copied to the host for a file dtype `to`; `None` when it is copied as it is and cast on
/// the host (see the [module docs](self) for why each device casts what it does).
pub(crate) fn device_cast(at: &DeviceLocation, from: DType, to: Dtype) -> Option<DType> {
    match at {
        DeviceLocation::Cuda { .. } => match (from, to) {
            (DType::F32, Dtype::F16) => Some(DType::F16),
            (DType::F32, Dtype::BF16) => Some(DType::BF16),
            (DType::F64, Dtype::F32) => Some(DType::F32),
            _ => None,
        },
        DeviceLocation::Cpu | DeviceLocation::Metal { .. } => None,
    }
}

/// Fills `out` with elements `range` of tensor `t` (any device) in `dst`, and returns how many
/// of those values are NaN or ±Inf before the rounding into `dst`. `name` names the tensor in
/// errors.
///
/// # Errors
/// Device and copy errors; cast errors (an `out` of the wrong length, an impossible cast).
pub(crate) fn from_device(
    t: &Tensor,
    range: Range<usize>,
    name: &str,
    out: &mut [u8],
    dst: Dtype,
) -> Result<u64> {
    let cast = device_cast(&t.device().location(), t.dtype(), dst);
    read_range(t, range, name, out, dst, cast)
}

/// [`from_device`] with the device's cast decided by the caller (the tests cast on the CPU).
fn read_range(
    t: &Tensor,
    range: Range<usize>,
    name: &str,
    out: &mut [u8],
    dst: Dtype,
    cast_on_device: Option<DType>,
) -> Result<u64> {
    // A cheap view of the flattened tensor, so only the requested elements are copied.
    let part = t.flatten_all()?.narrow(0, range.start, range.len())?;
    let n = range.len();
    match cast_on_device {
        Some(d) => {
            // Counted where the values are, before the device rounds them.
            let non_finite = count_non_finite(&part)?;
            let host = part.to_dtype(d)?.to_device(&Device::Cpu)?;
            let from = file_dtype(d);
            with_cpu_bytes(&host, 0..n, unit_width(from), |src| {
                cast::convert(name, src, from, out, dst)
            })?;
            Ok(non_finite)
        }
        None => {
            let host = part.to_device(&Device::Cpu)?;
            let from = file_dtype(host.dtype());
            with_cpu_bytes(&host, 0..n, unit_width(from), |src| {
                cast::convert(name, src, from, out, dst)
            })
        }
    }
}

/// The NaN and ±Inf values of a float tensor, counted on its device: `x − x` is NaN exactly
/// where `x` is NaN or ±Inf, and NaN is the one value not equal to itself.
fn count_non_finite(t: &Tensor) -> Result<u64> {
    // Not zero for every x: the subtraction is the test.
    #[allow(clippy::eq_op)]
    let d = (t - t)?;
    let finite = d
        .eq(&d)?
        .to_dtype(DType::I64)?
        .sum_all()?
        .to_scalar::<i64>()?;
    Ok((t.elem_count() as u64).saturating_sub(finite.max(0) as u64))
}

#[cfg(test)]
mod tests;
