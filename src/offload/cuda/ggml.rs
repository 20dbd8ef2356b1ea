//! ggml block quantization on a CUDA device: `kernels/ggml_quantize.cu` launched on a GGUF
//! target's source tensor where it lives, for the blocks of the range the writer asks for, so
//! that only those blocks are copied to the host. What is launched is
//! [`super::super::ggml_device`]'s; this file only issues it.
//!
//! The launch runs on the calling worker's candle stream; the save synchronized the whole
//! context before its workers started, so the kernels that produced the tensor are done. The
//! call waits for its own copy back.

use candle_core::{Device, Tensor};
use cudarc::driver::{DevicePtrMut, LaunchConfig, PushKernelArg};

use super::super::ggml_device::GgmlLaunch;
use super::super::quant_device::{grid, SrcCode, THREADS};
use super::{device_address, driver};
use crate::error::{Error, Result};
use crate::model::dtype::file_dtype;

/// PTX of `kernels/ggml_quantize.cu`, compiled by `build.rs`.
const GGML_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/ggml_quantize.ptx"));
const MODULE: &str = "checkpoint_save_ggml_quantize";
const KERNEL: &str = "checkpoint_save_ggml_quantize";

/// Encodes the blocks of `launch` from the contiguous CUDA tensor `t` on its device and copies
/// the asked bytes into `out`; returns the non-finite count of the values those blocks hold
/// (as the host encoder counts them).
///
/// # Errors
/// Device errors; a tensor that is not a contiguous f32/f16/bf16 CUDA tensor of the launch's
/// dtype holding its values; an `out` of another length than the asked range.
pub(crate) fn device_quantize_ggml(t: &Tensor, launch: &GgmlLaunch, out: &mut [u8]) -> Result<u64> {
    let Device::Cuda(dev) = t.device() else {
        return Err(Error::InvalidInput(
            "device ggml quantization was given a tensor that is not on a CUDA device".into(),
        ));
    };
    let code = SrcCode::of(file_dtype(t.dtype()));
    if code != Some(launch.src)
        || (t.elem_count() as u64) < launch.values().end
        || out.len() != launch.len
    {
        return Err(Error::InvalidInput(format!(
            "device ggml quantization of a {:?} tensor of {} values into {} bytes, planned for \
             {:?}, values {:?} and {} bytes",
            t.dtype(),
            t.elem_count(),
            out.len(),
            launch.src,
            launch.values(),
            launch.len
        )));
    }
    let stream = dev.cuda_stream();
    stream.context().bind_to_thread().map_err(driver)?;
    let func = dev
        .get_or_load_custom_func(KERNEL, MODULE, GGML_PTX)?
        .into_cuda_function();
    let mut blocks = stream
        .alloc_zeros::<u8>(launch.out_len().max(1))
        .map_err(driver)?;
    let mut count = stream.alloc_zeros::<u64>(1).map_err(driver)?;
    {
        let (storage, layout) = t.storage_and_layout();
        let (start, _) = layout.contiguous_offsets().ok_or_else(|| {
            Error::InvalidInput(
                "device ggml quantization reads contiguous tensors; a strided one is encoded \
                 on the host"
                    .into(),
            )
        })?;
        let (base, read) = device_address(&storage, &stream)?;
        let src = base + start as u64 * launch.src.width();
        let (out_ptr, w1) = blocks.device_ptr_mut(&stream);
        let (count_ptr, w2) = count.device_ptr_mut(&stream);
        let (code, base_code, ty) = (launch.src as u32, launch.base, launch.ty);
        let mut b = stream.launch_builder(&func);
        b.arg(&src)
            .arg(&code)
            .arg(&base_code)
            .arg(&ty)
            .arg(&launch.first)
            .arg(&launch.blocks)
            .arg(&out_ptr)
            .arg(&count_ptr);
        let config = LaunchConfig {
            grid_dim: (grid(launch.blocks), 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: `src` addresses the tensor's elements, which hold the launch's values (checked
        // above), read-locked until the launch is queued; `out_ptr` holds `out_len` bytes, one
        // per byte of the launch's blocks, and `count_ptr` one u64, alive until the copies below.
        unsafe { b.launch(config) }.map_err(driver)?;
        drop((read, w1, w2));
    }
    let bytes = stream.clone_dtoh(&blocks).map_err(driver)?;
    let asked = bytes.get(launch.asked()).ok_or_else(|| {
        Error::InvalidInput(format!(
            "bytes {:?} asked of {} device-encoded bytes",
            launch.asked(),
            bytes.len()
        ))
    })?;
    out.copy_from_slice(asked);
    Ok(stream
        .clone_dtoh(&count)
        .map_err(driver)?
        .first()
        .copied()
        .unwrap_or(0))
}
