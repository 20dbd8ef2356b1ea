//! Snapshots: the copy a training loop waits for, so later updates of its live weights cannot
//! reach the file.
//!
//! Host tensors are staged straight into the file's data section (read and cast in one pass, into
//! a buffer reused from the previous save); the background thread then only hands it to the disk.
//! Device tensors are copied on their device when there is room (shortest stall, nothing crosses
//! the bus), else to the host; the background thread saves the copies through the usual pipeline.
//!
//! Copies on a device are only queued when [`take`] returns (on the training thread's stream,
//! after the work that produced the weights): a [`Fence`] recorded right after them is waited for
//! by the background thread before its write reads a byte (see [`crate::offload::order`]).

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::Device;
use rayon::prelude::*;

use super::{lock, Config, SnapshotKind, SnapshotStrategy};
use crate::error::Result;
use crate::model::{Arch, ComponentKind, Components, InputMap, InputTensor, Prediction};
use crate::offload::order::{self, Fence};
use crate::plan::metadata::{self, MetadataOptions};
use crate::plan::Plan;
use crate::publish::reserve_at;
use crate::save::{self, SaveOptions, Saved};
use crate::write::{self, AlignedBuf, Method};

/// What the background thread writes from.
pub(super) enum Snapshot {
    /// The staged data section of host tensors, and the plan that writes it.
    Staged(Staged),
    /// Copies of the tensors (device tensors: copied on the device or to the host), and the
    /// fence after the copies, which the write waits for.
    Tensors(Components, Fence),
}

/// A checkpoint staged in host memory: the plan, whose one piece is `image`.
pub(super) struct Staged {
    plan: Plan,
    image: Arc<AlignedBuf>,
    method: Method,
    arch: Option<Arch>,
    prediction: Prediction,
    non_finite: Vec<(String, u64)>,
    dropped: Vec<(ComponentKind, String)>,
}

/// Takes the snapshot of `components` for the checkpoint file `title` in `dir`; returns it, the
/// strategy used and the bytes copied.
///
/// # Errors
/// Layout, plan, allocation and copy errors; [`crate::Error::NonFinite`] with `check_finite`.
pub(super) fn take(
    components: &Components,
    cfg: &Config,
    title: &str,
    cancel: &Arc<AtomicBool>,
) -> Result<(Snapshot, SnapshotKind, u64)> {
    let b = &cfg.builder;
    if components.tensors().any(InputTensor::on_device) {
        let (copy, kind) = copy_device(components, b.snapshot, b.device_memory_limit)?;
        let fence = fence_after(&copy)?;
        let bytes = copy.byte_len();
        return Ok((Snapshot::Tensors(copy, fence), kind, bytes));
    }
    let opts = save_options(cfg, cancel);
    let (arch, prediction, layout) = save::lay_out(components, &opts.layout, opts.prediction)?;
    let meta = metadata::build(arch, prediction, title, &opts.metadata);
    let (plan, method) = save::plan_for_write(&layout, arch, components, &meta, &opts, &b.dir)?;
    let reuse = lock(&cfg.spare_image).take();
    let (image, counts) = write::stage(&plan, reuse)?;
    let non_finite = save::non_finite_list(&plan, &counts);
    if opts.check_finite {
        save::refuse_non_finite(&non_finite)?;
    }
    let image = Arc::new(image);
    let plan = plan.with_data(image.clone())?;
    let bytes = plan.data_len();
    let staged = Staged {
        plan,
        image,
        method,
        arch,
        prediction,
        non_finite,
        dropped: layout.dropped,
    };
    Ok((Snapshot::Staged(staged), SnapshotKind::HostCopy, bytes))
}

impl Snapshot {
    /// Writes the snapshot to exactly `path`; a staged buffer goes back to `cfg` for the next save.
    ///
    /// # Errors
    /// Write and publish errors; [`crate::Error::Cancelled`] when `cancel` is set.
    pub(super) fn write(
        self,
        cfg: &Config,
        path: &Path,
        cancel: &Arc<AtomicBool>,
    ) -> Result<Saved> {
        let opts = save_options(cfg, cancel);
        let staged = match self {
            Snapshot::Tensors(c, fence) => return save_copies(&c, &fence, path, &opts),
            Snapshot::Staged(staged) => staged,
        };
        let start = std::time::Instant::now();
        let reservation = reserve_at(path)?;
        let (published, _) = save::write_reserved(&staged.plan, reservation, staged.method, &opts)?;
        let saved = Saved {
            path: published,
            arch: staged.arch,
            prediction: staged.prediction,
            tensors: staged.plan.tensors().len(),
            bytes: staged.plan.file_len(),
            non_finite: staged.non_finite,
            dropped: staged.dropped,
            elapsed: start.elapsed(),
        };
        drop(staged.plan);
        // Keep the buffer for the next snapshot: no fresh pages to fault in and zero.
        if let Ok(image) = Arc::try_unwrap(staged.image) {
            *lock(&cfg.spare_image) = Some(image);
        }
        Ok(saved)
    }
}

/// Saves the snapshot's copies to `path` once the copies, queued on the training thread, have
/// finished.
fn save_copies(
    copies: &Components,
    fence: &Fence,
    path: &Path,
    opts: &SaveOptions,
) -> Result<Saved> {
    fence.wait()?;
    save::save_to_path(copies, path, opts)
}

/// The fence after the copies queued for `copy` on the calling thread (its device tensors).
fn fence_after(copy: &Components) -> Result<Fence> {
    let mut held = Vec::new();
    copy.tensors().for_each(|t| order::held(t, &mut held));
    Fence::after(held)
}

/// Copies every device tensor (on its device, or to the host) and every host tensor, so later
/// updates of the live ones cannot reach the file.
fn copy_device(
    components: &Components,
    strategy: SnapshotStrategy,
    device_limit: Option<u64>,
) -> Result<(Components, SnapshotKind)> {
    let device_bytes: u64 = components
        .tensors()
        .filter(|t| t.on_device())
        .map(InputTensor::byte_len)
        .sum();
    let kind = match strategy {
        SnapshotStrategy::DeviceCopy => SnapshotKind::DeviceCopy,
        SnapshotStrategy::DeviceToHost => SnapshotKind::DeviceToHost,
        SnapshotStrategy::Auto => match device_limit {
            Some(limit) if device_bytes > limit => SnapshotKind::DeviceToHost,
            _ => SnapshotKind::DeviceCopy,
        },
    };
    match copy_components(components, kind) {
        // A device copy that does not fit falls back to the host (Auto only).
        Err(_) if kind == SnapshotKind::DeviceCopy && strategy == SnapshotStrategy::Auto => Ok((
            copy_components(components, SnapshotKind::DeviceToHost)?,
            SnapshotKind::DeviceToHost,
        )),
        other => other.map(|c| (c, kind)),
    }
}

fn copy_components(components: &Components, kind: SnapshotKind) -> Result<Components> {
    let mut out = Components::default();
    for (ck, map) in components.iter() {
        // Host copies in parallel: memory bandwidth, not one core, bounds the stall.
        let mut copied = map
            .iter()
            .filter(|(_, t)| !t.on_device())
            .collect::<Vec<_>>()
            .par_iter()
            .map(|(k, t)| Ok(((*k).clone(), copy(t, kind)?)))
            .collect::<Result<InputMap>>()?;
        // Device copies in order on the caller's thread: they are enqueued on the device's
        // stream, ahead of the loop's next update.
        for (k, t) in map.iter().filter(|(_, t)| t.on_device()) {
            copied.insert(k.clone(), copy(t, kind)?);
        }
        out.set_inputs(ck, copied);
    }
    Ok(out)
}

fn copy(t: &InputTensor, kind: SnapshotKind) -> Result<InputTensor> {
    // Tensors in input files are read when written; a training loop cannot change them.
    let InputTensor::Candle(t) = t else {
        return Ok(t.clone());
    };
    let c = match kind {
        SnapshotKind::DeviceToHost if !t.device().is_cpu() => t.to_device(&Device::Cpu)?,
        _ => t.copy()?,
    };
    Ok(InputTensor::Candle(c))
}

/// The save options a checkpointer's saves use.
pub(super) fn save_options(cfg: &Config, cancel: &Arc<AtomicBool>) -> SaveOptions {
    let b = &cfg.builder;
    SaveOptions {
        layout: b.layout.clone(),
        prediction: None,
        dtypes: b.dtypes,
        output_dir: b.dir.clone(),
        prefix: b.stem.clone(),
        metadata: MetadataOptions::default(),
        check_finite: b.check_finite,
        progress: false,
        cancel: Some(Arc::clone(cancel)),
        writer: b.engine,
        quantize: None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use candle_core::Tensor;

    use super::*;
    use crate::offload::order::seam::{self, Event};

    /// Regression (issue 20): the device snapshot queued its copies and returned, and the
    /// background write read them with nothing ordering the read after the copies. The copies
    /// are fenced where they are queued, and the write waits for the fence before its first read.
    #[test]
    fn the_background_write_waits_for_the_snapshot_copies() {
        let mut model = BTreeMap::new();
        for (i, name) in ["a", "b"].into_iter().enumerate() {
            let t = Tensor::arange(0f32, 64., &Device::Cpu).unwrap();
            model.insert(name.to_string(), (t * (i as f64 + 1.)).unwrap());
        }
        let live = Components::new(model);
        let copies = copy_components(&live, SnapshotKind::DeviceCopy).unwrap();
        let ids: Vec<_> = copies
            .tensors()
            .map(|t| t.as_candle().unwrap().id())
            .collect();
        seam::watch(ids.iter().copied());
        let fence = fence_after(&copies).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let opts = SaveOptions {
            layout: crate::save::LayoutChoice::Generic(crate::layout::GenericPrefixes::default()),
            ..SaveOptions::default()
        };
        let path = dir.path().join("s.safetensors");
        save_copies(&copies, &fence, &path, &opts).unwrap();
        let events = seam::events(&ids);
        for id in ids {
            let mine: Vec<Event> = events.iter().copied().filter(|e| e.id() == id).collect();
            let at = |want: fn(Event) -> bool| mine.iter().position(|e| want(*e));
            let fenced = at(|e| matches!(e, Event::Fenced(_))).expect("fenced");
            let waited = at(|e| matches!(e, Event::FenceWaited(_))).expect("fence waited");
            let read = at(|e| matches!(e, Event::Read(_))).expect("read");
            assert!(fenced < waited && waited < read, "{mine:?}");
        }
    }
}
