//! Quantizing a CUDA tensor on its device: what the kernels of `kernels/quantize.cu` are given
//! (formats, codes, factors, launch geometry, buffer sizes) and how the quantized bytes they
//! return are handed to the writer's ranges. This part needs no GPU and is tested here; the
//! launches themselves are in `cuda/quantize.rs` (with the `cuda` feature).
//!
//! A quantized output whose source is a contiguous-able f32/f16/bf16 candle tensor on a CUDA
//! device is reduced (absolute maximum) and encoded there, whole, by the first worker that needs
//! its bytes; only the codes and block scales (a quarter to a half of a bf16 tensor's bytes) cross
//! to the host, where they are held until every byte has been written, then dropped: the host
//! holds at most the quantized bytes of the tensors being written, never their values.

// The launch helpers are used by `cuda/quantize.rs`, which only the `cuda` feature builds; the
// tests below use them in every build.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use std::ops::Range;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::model::dtype::Dtype;
use crate::quant::{Format, Fp8, Precision, QuantLayout, Role, Scales};

/// Threads per block of every quantization kernel.
pub(crate) const THREADS: u32 = 256;
/// Most thread blocks per launch; the kernels loop over the rest (grid-stride).
pub(crate) const MAX_GRID: u64 = 8192;

/// Source dtype codes (`S_*` in `kernels/quantize.cu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum SrcCode {
    F32 = 0,
    F16 = 1,
    Bf16 = 2,
}

impl SrcCode {
    /// The code of a source dtype the kernels read; `None` for the others (the CPU encodes them).
    pub(crate) fn of(dtype: Dtype) -> Option<SrcCode> {
        match dtype {
            Dtype::F32 => Some(SrcCode::F32),
            Dtype::F16 => Some(SrcCode::F16),
            Dtype::BF16 => Some(SrcCode::Bf16),
            _ => None,
        }
    }

    /// Bytes per source element.
    pub(crate) fn width(self) -> u64 {
        match self {
            SrcCode::F32 => 4,
            _ => 2,
        }
    }
}

/// The quantizer a layout needs (`Q_*` in `kernels/quantize.cu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Kernel {
    E4m3 = 0,
    E5m2 = 1,
    Int8 = 2,
    Mxfp8 = 3,
    Nvfp4 = 4,
}

impl Kernel {
    /// Whether this is the block kernel (`checkpoint_save_quantize_blocks`).
    pub(crate) fn is_blocks(self) -> bool {
        matches!(self, Kernel::Mxfp8 | Kernel::Nvfp4)
    }
}

/// Precision codes (`P_*` in `kernels/quantize.cu`).
pub(crate) fn precision_code(p: Precision) -> u32 {
    match p {
        Precision::F32 => 0,
        Precision::Bf16 => 1,
        Precision::F16 => 2,
    }
}

/// Everything one device quantization launches, computed from the layout and the scales.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DevicePlan {
    pub kernel: Kernel,
    pub src: SrcCode,
    pub precision: u32,
    /// Logical elements.
    pub numel: u64,
    /// Logical rows and columns (block kernel).
    pub rows: u64,
    pub cols: u64,
    /// Blocks per stored row, scale columns of the swizzled layout, code bytes per stored row.
    pub blocks: u64,
    pub scale_cols: u64,
    pub row_bytes: u64,
    /// fp8: the reciprocal of the scale in the source precision; int8: the divisor; nvfp4: the
    /// tensor scale; mxfp8: unused (1).
    pub factor: f32,
    /// Bytes of the codes member and of the block-scale member (0 for per-tensor formats).
    pub codes_len: usize,
    pub scales_len: usize,
}

/// Bytes of the member of `layout` with `role` (0 when it has none).
fn member_len(layout: &QuantLayout, role: Role) -> usize {
    layout
        .members()
        .iter()
        .find(|m| m.role == role)
        .map_or(0, |m| {
            m.shape.iter().product::<usize>() * m.dtype.bitsize() / 8
        })
}

impl DevicePlan {
    /// The launch for `layout` from a source of `dtype`, quantized in `precision` with `scales`;
    /// `None` when the kernels do not handle it (other source dtypes, int8 row scales, smoothed
    /// nvfp4 weights), which the CPU then encodes, and for ggml formats (whose blocks
    /// [`super::ggml_device`] launches range by range).
    pub(crate) fn new(
        layout: &QuantLayout,
        dtype: Dtype,
        precision: Precision,
        scales: &Scales,
    ) -> Option<DevicePlan> {
        let src = SrcCode::of(dtype)?;
        if layout.row_scales || layout.pre_quant_scale {
            return None;
        }
        let tensor = scales.tensor_scale();
        let (kernel, factor) = match layout.format {
            Format::ScaledFp8(fp8) | Format::Float8(fp8) => (
                if fp8 == Fp8::E4M3 {
                    Kernel::E4m3
                } else {
                    Kernel::E5m2
                },
                crate::quant::fp8_factor(tensor?, precision),
            ),
            Format::Int8Tensorwise => {
                (Kernel::Int8, crate::quant::int8_divisor(tensor?, precision))
            }
            Format::Mxfp8 => (Kernel::Mxfp8, 1.0),
            Format::Nvfp4 => (Kernel::Nvfp4, tensor?),
            _ => return None,
        };
        let block = layout.format.block_len().max(1);
        Some(DevicePlan {
            kernel,
            src,
            precision: precision_code(precision),
            numel: layout.numel(),
            rows: layout.rows as u64,
            cols: layout.cols as u64,
            blocks: (layout.stored_cols / block) as u64,
            scale_cols: if kernel.is_blocks() {
                layout.scale_cols() as u64
            } else {
                0
            },
            row_bytes: layout.row_bytes(),
            factor,
            codes_len: member_len(layout, Role::Codes),
            scales_len: member_len(layout, Role::BlockScales),
        })
    }

    /// Threads the quantization kernel needs: one per value, or one per block of a logical row.
    pub(crate) fn work(&self) -> u64 {
        if self.kernel.is_blocks() {
            self.rows * self.blocks
        } else {
            self.numel
        }
    }
}

/// Thread blocks for `work` threads (at least one; the kernels loop past [`MAX_GRID`]).
pub(crate) fn grid(work: u64) -> u32 {
    work.div_ceil(u64::from(THREADS)).clamp(1, MAX_GRID) as u32
}

/// The absolute maximum from the kernel's result: the largest magnitude's bits, NaN above +Inf
/// (as [`crate::quant::abs_max`] computes it on the host).
pub(crate) fn abs_max_from_bits(bits: u32) -> f32 {
    if bits > 0x7F80_0000 {
        f32::NAN
    } else {
        f32::from_bits(bits)
    }
}

/// A tensor's quantized bytes as the device made them.
#[derive(Debug, Default)]
pub(crate) struct DeviceBytes {
    pub codes: Vec<u8>,
    pub block_scales: Vec<u8>,
    /// Non-finite source values the kernel counted.
    pub non_finite: u64,
}

/// The quantized bytes of one output, made once by the first worker that asks and dropped when
/// every byte has been handed out (see the [module docs](self)).
#[derive(Debug, Default)]
pub(crate) struct DeviceOutput {
    /// The bytes and how many of them are still to be handed out.
    state: Mutex<Option<(Arc<DeviceBytes>, usize)>>,
}

impl DeviceOutput {
    /// Copies units `units` of member `role` (codes or block scales) into `out`, making the bytes
    /// with `make` first if no worker has (the others wait). Returns the non-finite count to add
    /// for these bytes: the whole tensor's with the first code byte, 0 otherwise.
    ///
    /// # Errors
    /// `make`'s errors; [`Error::InvalidInput`] for another member or a range outside it.
    pub(crate) fn serve(
        &self,
        role: Role,
        units: Range<usize>,
        out: &mut [u8],
        make: impl FnOnce() -> Result<DeviceBytes>,
    ) -> Result<u64> {
        let bytes = {
            let mut state = self
                .state
                .lock()
                .map_err(|_| Error::InvalidInput("a device quantization panicked".into()))?;
            match state.as_ref() {
                Some((b, _)) => b.clone(),
                None => {
                    let b = Arc::new(make()?);
                    let total = b.codes.len() + b.block_scales.len();
                    *state = Some((b.clone(), total));
                    b
                }
            }
        };
        let member = match role {
            Role::Codes => &bytes.codes,
            Role::BlockScales => &bytes.block_scales,
            other => {
                return Err(Error::InvalidInput(format!(
                    "the device quantization has no {other:?} bytes"
                )))
            }
        };
        let src = member.get(units.clone()).ok_or_else(|| {
            Error::InvalidInput(format!(
                "bytes {units:?} asked of a device-quantized member of {} bytes",
                member.len()
            ))
        })?;
        out.copy_from_slice(src);
        let count = if role == Role::Codes && units.start == 0 {
            bytes.non_finite
        } else {
            0
        };
        let mut state = self
            .state
            .lock()
            .map_err(|_| Error::InvalidInput("a device quantization panicked".into()))?;
        if let Some((_, left)) = state.as_mut() {
            *left = left.saturating_sub(units.len());
            if *left == 0 {
                *state = None;
            }
        }
        Ok(count)
    }

    /// Whether bytes are held now.
    #[cfg(test)]
    fn holds(&self) -> bool {
        self.state.lock().unwrap().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::numeric_swizzled as swizzled;

    fn layout(format: Format, shape: &[usize]) -> QuantLayout {
        QuantLayout::new("blocks.0.lin", format, shape).unwrap()
    }

    #[test]
    fn buffers_are_the_layouts_members_and_the_grid_covers_every_block() {
        let scale = Scales::tensor("l", 0.01).unwrap();
        for (format, shape, kernel, blocks, scale_cols) in [
            (Format::Nvfp4, [200usize, 48], Kernel::Nvfp4, 3u64, 4u64),
            (Format::Nvfp4, [37, 16 * 9], Kernel::Nvfp4, 9, 12),
            (Format::Mxfp8, [70, 100], Kernel::Mxfp8, 4, 4),
            (Format::Float8(Fp8::E5M2), [3, 5], Kernel::E5m2, 0, 0),
            (Format::Int8Tensorwise, [64, 64], Kernel::Int8, 0, 0),
        ] {
            let l = layout(format, &shape);
            let scales = if format == Format::Mxfp8 {
                Scales::none()
            } else {
                scale.clone()
            };
            let p = DevicePlan::new(&l, Dtype::BF16, Precision::Bf16, &scales).unwrap();
            assert_eq!(p.kernel, kernel, "{format:?}");
            if kernel.is_blocks() {
                assert_eq!((p.blocks, p.scale_cols), (blocks, scale_cols), "{format:?}");
                let stored_rows = l.stored_rows as u64;
                assert_eq!(p.codes_len as u64, stored_rows * p.row_bytes);
                // Every (row, block) the kernel writes lands inside the block-scale member,
                // each at its own byte.
                let mut seen = vec![false; p.scales_len];
                for r in 0..p.rows as usize {
                    for b in 0..p.blocks as usize {
                        let at = swizzled(r, b, p.scale_cols as usize);
                        assert!(!seen[at], "{format:?} ({r}, {b}) twice");
                        seen[at] = true;
                    }
                }
                assert_eq!(
                    p.scales_len,
                    (stored_rows.div_ceil(128) * 128 * p.scale_cols) as usize
                );
                assert_eq!(p.work(), p.rows * p.blocks);
            } else {
                assert_eq!(p.scales_len, 0);
                assert_eq!(p.codes_len as u64, p.numel);
                assert_eq!(p.work(), p.numel);
            }
            let threads = u64::from(grid(p.work())) * u64::from(THREADS);
            assert!(threads >= p.work().min(MAX_GRID * u64::from(THREADS)));
        }
        assert_eq!(grid(0), 1);
        assert_eq!(grid(257), 2);
        assert_eq!(grid(u64::MAX / 2), MAX_GRID as u32);
    }

    #[test]
    fn factors_are_the_cpu_encoders() {
        let l = layout(Format::Float8(Fp8::E4M3), &[4, 4]);
        let s = Scales::tensor("l", 3.0).unwrap();
        let bf = DevicePlan::new(&l, Dtype::BF16, Precision::Bf16, &s).unwrap();
        // 1/3 rounded to bf16: 0x3EAB.
        assert_eq!(bf.factor.to_bits(), 0x3EAB_0000);
        assert_eq!(bf.precision, 1);
        let f = DevicePlan::new(&l, Dtype::F32, Precision::F32, &s).unwrap();
        assert_eq!(f.factor, 1.0 / 3.0);
        let i = layout(Format::Int8Tensorwise, &[4, 4]);
        let tiny = Scales::tensor("l", 1e-30).unwrap();
        let p = DevicePlan::new(&i, Dtype::F16, Precision::F16, &tiny).unwrap();
        assert_eq!(
            p.factor,
            2f32.powi(-14),
            "f16's tiny where the scale rounds to 0"
        );
        let n = layout(Format::Nvfp4, &[16, 16]);
        assert_eq!(
            DevicePlan::new(&n, Dtype::F32, Precision::F32, &s)
                .unwrap()
                .factor,
            3.0
        );
    }

    #[test]
    fn what_the_kernels_do_not_handle_stays_on_the_cpu() {
        let s = Scales::tensor("l", 1.0).unwrap();
        let l = layout(Format::Nvfp4, &[16, 16]);
        assert!(DevicePlan::new(&l, Dtype::F64, Precision::F32, &s).is_none());
        assert!(DevicePlan::new(&l, Dtype::BF16, Precision::Bf16, &Scales::none()).is_none());
        let g = layout(Format::Ggml(crate::quant::GgmlType::Q8_0), &[4, 32]);
        assert!(DevicePlan::new(&g, Dtype::F32, Precision::F32, &Scales::none()).is_none());
    }

    #[test]
    fn abs_max_bits_decode_as_the_host_reduction() {
        assert_eq!(abs_max_from_bits(0), 0.0);
        assert_eq!(abs_max_from_bits(0x7F80_0000), f32::INFINITY);
        assert!(abs_max_from_bits(0x7F80_0001).is_nan());
        assert_eq!(abs_max_from_bits(3.5f32.to_bits()), 3.5);
    }

    #[test]
    fn bytes_are_made_once_handed_out_by_range_and_dropped_when_written() {
        let out = DeviceOutput::default();
        let made = std::sync::atomic::AtomicUsize::new(0);
        let make = || {
            made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(DeviceBytes {
                codes: (0..10).collect(),
                block_scales: vec![7, 8],
                non_finite: 3,
            })
        };
        let mut buf = [0u8; 4];
        assert_eq!(out.serve(Role::Codes, 4..8, &mut buf, make).unwrap(), 0);
        assert_eq!(buf, [4, 5, 6, 7]);
        let mut two = [0u8; 2];
        assert_eq!(
            out.serve(Role::BlockScales, 0..2, &mut two, make).unwrap(),
            0
        );
        assert_eq!(two, [7, 8]);
        let mut first = [0u8; 4];
        assert_eq!(out.serve(Role::Codes, 0..4, &mut first, make).unwrap(), 3);
        assert!(out.holds());
        assert_eq!(out.serve(Role::Codes, 8..10, &mut two, make).unwrap(), 0);
        assert_eq!(two, [8, 9]);
        assert!(!out.holds(), "every byte written: released");
        assert_eq!(made.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(out.serve(Role::Codes, 8..12, &mut buf, make).is_err());
        assert!(out.serve(Role::TensorScale, 0..1, &mut [0], make).is_err());
    }
}
