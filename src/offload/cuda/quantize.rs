//! Quantization on a CUDA device: the absolute-maximum reduction and the quantizers of
//! `kernels/quantize.cu`, launched on the source tensor where it lives, so that only the codes
//! and block scales are copied to the host. What is launched, with which sizes, is
//! [`super::super::quant_device`]'s; this file only issues it.
//!
//! The launches run on the calling worker's candle stream (candle's per-thread stream), which is
//! where a contiguous copy of a strided source is made, so they are ordered after it; the save
//! synchronized the whole context before its workers started, so the caller's kernels that
//! produced the tensor are done. Each call waits for its own copies back.

use candle_core::{Device, Tensor};
use cudarc::driver::{CudaFunction, CudaStream, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::super::quant_device::{
    abs_max_from_bits, grid, DeviceBytes, DevicePlan, SrcCode, THREADS,
};
use super::{device_address, driver};
use crate::error::{Error, Result};
use crate::model::dtype::file_dtype;

/// PTX of `kernels/quantize.cu`, compiled by `build.rs`.
const QUANTIZE_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/quantize.ptx"));
const MODULE: &str = "checkpoint_save_quantize";

/// Whether the quantization kernels read `t` on its device: an f32, f16 or bf16 CUDA tensor.
pub(crate) fn quantizes_on_device(t: &Tensor) -> bool {
    t.device().is_cuda() && SrcCode::of(file_dtype(t.dtype())).is_some()
}

/// A contiguous CUDA source, its stream and its kernel function `name`.
struct Launch {
    tensor: Tensor,
    code: SrcCode,
    stream: std::sync::Arc<CudaStream>,
    func: CudaFunction,
}

fn launch(t: &Tensor, name: &str) -> Result<Launch> {
    let Device::Cuda(dev) = t.device() else {
        return Err(Error::InvalidInput(
            "device quantization was given a tensor that is not on a CUDA device".into(),
        ));
    };
    let code = SrcCode::of(file_dtype(t.dtype())).ok_or_else(|| Error::UnsupportedDtype {
        dtype: format!("{:?}", t.dtype()),
        hint: "the device quantizer reads f32, f16 and bf16".into(),
    })?;
    let stream = dev.cuda_stream();
    stream.context().bind_to_thread().map_err(driver)?;
    let func = dev
        .get_or_load_custom_func(name, MODULE, QUANTIZE_PTX)?
        .into_cuda_function();
    Ok(Launch {
        tensor: t.contiguous()?,
        code,
        stream,
        func,
    })
}

fn config(work: u64) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid(work), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The absolute maximum of `t`'s values (NaN if one is NaN), reduced on its device: what
/// [`crate::quant::abs_max`] gives on the host.
///
/// # Errors
/// Device errors; a tensor that is not an f32/f16/bf16 CUDA tensor.
pub(crate) fn device_abs_max(t: &Tensor) -> Result<f32> {
    let l = launch(t, "checkpoint_save_abs_max")?;
    let stream = &l.stream;
    let mut out = stream.alloc_zeros::<u32>(1).map_err(driver)?;
    let n = l.tensor.elem_count() as u64;
    {
        let (storage, layout) = l.tensor.storage_and_layout();
        let (start, _) = layout.contiguous_offsets().ok_or_else(|| {
            Error::InvalidInput("contiguous tensor without contiguous offsets".into())
        })?;
        let (base, read) = device_address(&storage, stream)?;
        let src = base + start as u64 * l.code.width();
        let (out_ptr, write) = out.device_ptr_mut(stream);
        let code = l.code as u32;
        let mut b = stream.launch_builder(&l.func);
        b.arg(&src).arg(&n).arg(&code).arg(&out_ptr);
        // SAFETY: `src` addresses `n` elements of the source, held by `l.tensor` and read-locked
        // until the launch is queued; `out_ptr` one u32 of `out`, alive until the copy below.
        unsafe { b.launch(config(n)) }.map_err(driver)?;
        drop((read, write));
    }
    let bits = stream.clone_dtoh(&out).map_err(driver)?;
    Ok(abs_max_from_bits(bits.first().copied().unwrap_or(0)))
}

/// Quantizes `t` (the whole tensor) as `plan` says, on its device; returns the codes and block
/// scales, byte for byte what the CPU codec writes, and the non-finite count of its values.
///
/// # Errors
/// Device errors; a tensor that is not an f32/f16/bf16 CUDA tensor of `plan`'s size.
pub(crate) fn device_quantize(t: &Tensor, plan: &DevicePlan) -> Result<DeviceBytes> {
    let name = if plan.kernel.is_blocks() {
        "checkpoint_save_quantize_blocks"
    } else {
        "checkpoint_save_quantize_tensorwise"
    };
    let l = launch(t, name)?;
    if l.tensor.elem_count() as u64 != plan.numel || l.code != plan.src {
        return Err(Error::InvalidInput(format!(
            "device quantization of a {:?} tensor of {} values planned for {:?} and {}",
            l.code,
            l.tensor.elem_count(),
            plan.src,
            plan.numel
        )));
    }
    let stream = &l.stream;
    // Zeroed: the padding the kernel does not visit stays 0.
    let mut codes = stream
        .alloc_zeros::<u8>(plan.codes_len.max(1))
        .map_err(driver)?;
    let mut scales = stream
        .alloc_zeros::<u8>(plan.scales_len.max(1))
        .map_err(driver)?;
    let mut count = stream.alloc_zeros::<u64>(1).map_err(driver)?;
    {
        let (storage, layout) = l.tensor.storage_and_layout();
        let (start, _) = layout.contiguous_offsets().ok_or_else(|| {
            Error::InvalidInput("contiguous tensor without contiguous offsets".into())
        })?;
        let (base, read) = device_address(&storage, stream)?;
        let src = base + start as u64 * l.code.width();
        let (codes_ptr, w1) = codes.device_ptr_mut(stream);
        let (scales_ptr, w2) = scales.device_ptr_mut(stream);
        let (count_ptr, w3) = count.device_ptr_mut(stream);
        let (code, kernel) = (l.code as u32, plan.kernel as u32);
        let mut b = stream.launch_builder(&l.func);
        if plan.kernel.is_blocks() {
            b.arg(&src)
                .arg(&code)
                .arg(&kernel)
                .arg(&plan.rows)
                .arg(&plan.cols)
                .arg(&plan.blocks)
                .arg(&plan.row_bytes)
                .arg(&plan.scale_cols)
                .arg(&plan.factor)
                .arg(&codes_ptr)
                .arg(&scales_ptr)
                .arg(&count_ptr);
        } else {
            b.arg(&src)
                .arg(&plan.numel)
                .arg(&code)
                .arg(&kernel)
                .arg(&plan.precision)
                .arg(&plan.factor)
                .arg(&codes_ptr)
                .arg(&count_ptr);
        }
        // SAFETY: `src` addresses the source's `numel` elements, held by `l.tensor` and
        // read-locked until the launch is queued; the outputs are the sizes the plan gives the
        // kernel (`codes_len`, `scales_len`, one u64), alive until the copies below.
        unsafe { b.launch(config(plan.work())) }.map_err(driver)?;
        drop((read, w1, w2, w3));
    }
    let mut codes = stream.clone_dtoh(&codes).map_err(driver)?;
    let mut block_scales = stream.clone_dtoh(&scales).map_err(driver)?;
    codes.truncate(plan.codes_len);
    block_scales.truncate(plan.scales_len);
    let non_finite = stream
        .clone_dtoh(&count)
        .map_err(driver)?
        .first()
        .copied()
        .unwrap_or(0);
    Ok(DeviceBytes {
        codes,
        block_scales,
        non_finite,
    })
}
