//! Stand-in for the CUDA fast path when the `cuda` feature is off.
//!
//! Same names and signatures as `cuda/mod.rs`, so the writer and the bench need no `#[cfg]`:
//! there are never any device groups, and the functions that only make sense with the fast path
//! return [`Error::FeatureDisabled`].
//!
//! candle may still hold CUDA tensors in such a build: its own `cuda` feature can be on through
//! another crate of the program (Cargo unifies features). Those take the generic device path,
//! ordered with candle's `Device::synchronize` (see [`super::order`]), which needs nothing of
//! this crate's feature.

use std::sync::atomic::{AtomicBool, AtomicU64};

use candle_core::Device;

use crate::error::{Error, Result};
use crate::plan::Plan;

/// Slots in flight per device pipeline (as in the CUDA build).
pub(crate) const PIPELINE_DEPTH: usize = 2;

/// The pieces of one device that the fast path fills, in file order.
#[derive(Debug, Clone)]
pub(crate) struct DeviceGroup {
    /// Indices into [`Plan::pieces`].
    pub pieces: Vec<usize>,
}

/// Sizes of a device pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PipelineOptions {
    /// Bytes per batch, i.e. per pinned buffer (rounded up to a multiple of 4096).
    pub buffer_size: usize,
}

/// Where a pipeline hands each filled buffer: the writer's `write(bytes, data-section offset)`.
pub(crate) type Sink<'a> = &'a (dyn Fn(&[u8], u64) -> Result<()> + Sync);

fn disabled(what: &str) -> Error {
    Error::FeatureDisabled {
        what: what.into(),
        feature: "cuda",
    }
}

/// Whether the quantization kernels read `t` on its device: never without the `cuda` feature
/// (the CPU quantizes values read from the device).
pub(crate) fn quantizes_on_device(_t: &candle_core::Tensor) -> bool {
    false
}

/// The device reduction of the CUDA build.
///
/// # Errors
/// Always [`Error::FeatureDisabled`].
pub(crate) fn device_abs_max(_t: &candle_core::Tensor) -> Result<f32> {
    Err(disabled("quantizing on a CUDA device"))
}

/// The device quantizer of the CUDA build.
///
/// # Errors
/// Always [`Error::FeatureDisabled`].
pub(crate) fn device_quantize(
    _t: &candle_core::Tensor,
    _plan: &super::quant_device::DevicePlan,
) -> Result<super::quant_device::DeviceBytes> {
    Err(disabled("quantizing on a CUDA device"))
}

/// The device ggml block quantizer of the CUDA build.
///
/// # Errors
/// Always [`Error::FeatureDisabled`].
pub(crate) fn device_quantize_ggml(
    _t: &candle_core::Tensor,
    _launch: &super::ggml_device::GgmlLaunch,
    _out: &mut [u8],
) -> Result<u64> {
    Err(disabled("quantizing on a CUDA device"))
}

/// Whether pieces on `device` can go through a device pipeline: never without the `cuda`
/// feature (CUDA tensors take the generic device path).
pub(crate) fn has_pipeline(_device: &Device) -> bool {
    false
}

/// Waits for `device`'s work as candle can without this crate's `cuda` feature: the calling
/// thread's stream on CUDA (candle's `Device::synchronize`), the command queue on Metal.
///
/// # Errors
/// Device errors.
pub(crate) fn synchronize_context(device: &Device) -> Result<()> {
    Ok(device.synchronize()?)
}

/// Work queued so far on the calling thread's candle stream of a CUDA device: without the
/// `cuda` feature there are no events to record, so recording it waits for it.
pub(crate) struct Produced;

impl Produced {
    /// Synchronizes `device` on the calling thread (candle's `Device::synchronize`).
    ///
    /// # Errors
    /// Device errors.
    pub(crate) fn record(device: &Device) -> Result<Produced> {
        device.synchronize()?;
        Ok(Produced)
    }

    /// Nothing left to wait for: [`Produced::record`] already waited.
    ///
    /// # Errors
    /// Never.
    pub(crate) fn wait(&self) -> Result<()> {
        Ok(())
    }
}

/// Groups the pieces the fast path handles by device: none without the `cuda` feature.
pub(crate) fn device_groups(_plan: &Plan) -> Vec<DeviceGroup> {
    Vec::new()
}

/// The CUDA fast path; without the `cuda` feature it only reports that.
///
/// # Errors
/// Always [`Error::FeatureDisabled`].
pub(crate) fn run_group(
    _plan: &Plan,
    _group: &DeviceGroup,
    _opts: &PipelineOptions,
    _sink: Sink<'_>,
    _counts: &[AtomicU64],
    _cancel: &AtomicBool,
    _failed: &AtomicBool,
) -> Result<()> {
    Err(disabled("the CUDA offload path"))
}

/// Frees the pinned host buffers kept for later saves: there are none without the `cuda` feature.
pub fn release_pinned_buffers() {}

/// Measures the pinned device→host copy ceiling in GB/s.
///
/// # Errors
/// Always [`Error::FeatureDisabled`].
pub fn pinned_copy_ceiling(_device: &Device, _bytes: usize) -> Result<f64> {
    Err(disabled("measuring the pinned device-to-host copy ceiling"))
}
