//! Stand-in for the CUDA fast path when the `cuda` feature is off.
//!
//! Same public names and signatures as `cuda.rs`, so the writer and the bench need no `#[cfg]`:
//! there are never any device groups (candle has no CUDA devices in such a build), and the
//! functions that only make sense with a GPU return [`Error::FeatureDisabled`].

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64};

use candle_core::Device;

use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::progress::Progress;

/// Slots in flight per device pipeline (as in the CUDA build).
pub const PIPELINE_DEPTH: usize = 2;

/// Whether this build has the CUDA fast path.
pub const ENABLED: bool = false;

/// The pieces of one device that the fast path writes, in file order.
#[derive(Debug, Clone)]
pub struct DeviceGroup {
    /// The device holding the pieces' tensors.
    pub device: Device,
    /// Indices into [`Plan::pieces`].
    pub pieces: Vec<usize>,
}

/// Sizes of a device pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineOptions {
    /// Bytes per batch, i.e. per pinned buffer (rounded up to a multiple of 4096).
    pub buffer_size: usize,
    /// Threads that write one finished buffer to the file (each takes a part).
    pub write_threads: usize,
}

fn disabled(what: &str) -> Error {
    Error::FeatureDisabled {
        what: what.into(),
        feature: "cuda",
    }
}

/// Groups the pieces the fast path handles by device: none without the `cuda` feature.
pub fn device_groups(_plan: &Plan) -> Vec<DeviceGroup> {
    Vec::new()
}

/// The CUDA fast path's writer; without the `cuda` feature it only reports that.
///
/// # Errors
/// Always [`Error::FeatureDisabled`].
#[allow(clippy::too_many_arguments)]
pub fn write_group(
    _plan: &Plan,
    _file: &File,
    _group: &DeviceGroup,
    _opts: &PipelineOptions,
    _counts: &[AtomicU64],
    _progress: &Progress,
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
