//! Stand-in for the CUDA fast path when the `cuda` feature is off.
//!
//! Same names and signatures as `cuda.rs`, so the writer and the bench need no `#[cfg]`: there
//! are never any device groups (candle has no CUDA devices in such a build), and the functions
//! that only make sense with a GPU return [`Error::FeatureDisabled`].

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
