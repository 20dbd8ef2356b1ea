//! Checkpoints from a training loop: background saves with a bounded stall, retention and resume.
//!
//! # Why
//!
//! A training loop should pause for a checkpoint only as long as it takes to take a consistent
//! copy of its weights, not for the whole write (the model of PyTorch's asynchronous distributed
//! checkpoint). [`Checkpointer::save`] therefore takes a *snapshot* and returns; a background
//! thread writes it with the ordinary save path ([`crate::save::save_to_path`]: plan, parallel
//! engine with its bounded staging budget, publish through [`crate::reserve_at`], never
//! replacing a file).
//!
//! # Snapshots
//!
//! The snapshot must be a copy even for CPU tensors. candle tensors look like immutable values,
//! but a [`candle_core::Var`] shares its storage with every clone of its tensor, and
//! [`candle_core::Var::set`] (which optimizers such as `AdamW` and `SGD` use for every step)
//! overwrites that storage in place. Writing from the live tensors would put a mixture of steps
//! into the file. The strategy is chosen per device ([`SnapshotStrategy`]):
//!
//! * CPU tensors: a host copy ([`candle_core::Tensor::copy`], the tensors copied in parallel).
//! * CUDA / Metal tensors: a device-side copy (shortest stall, no bus transfer) when the device
//!   has room for it — a caller-given free-memory figure ([`CheckpointerBuilder::device_memory_limit`])
//!   is respected, and an allocation failure falls back — otherwise a device→host copy. A
//!   device-side copy is enqueued on the tensor's stream/command queue before the loop's next
//!   update, so the update cannot overtake it; the background thread later brings the copy to the
//!   host through the generic device path of the offload stage.
//!
//! # One save in flight
//!
//! At most one background save runs at a time, so at most one snapshot is held besides the live
//! weights. What happens when the next save is asked for early is explicit ([`InFlight`]). An error
//! of a background save is returned by the next call ([`Checkpointer::save`],
//! [`Checkpointer::wait`], [`Checkpointer::finish`]); dropping the checkpointer blocks until the
//! save in flight is finished (its error, if any, is printed to stderr, as `Drop` cannot return
//! it — call [`Checkpointer::finish`] to receive it). [`Checkpointer::abandon`] cancels instead.
//!
//! # Files, manifest and retention
//!
//! Each checkpoint is `<stem>-step<step:08>.safetensors` in the output folder; when that name is
//! taken (the step is saved again after a rollback, or a file the checkpointer did not write has
//! the name) the save takes the next free one of `-v1`, `-v2`… before the extension, as
//! PyTorch Lightning's `ModelCheckpoint` versions a taken name. [`SaveOutcome::Started`] and
//! [`Completed`] give the name used. After each completed save, `manifest.json` in that folder
//! is rewritten atomically (temporary file, fsync, rename, fsync of the folder) with one entry per
//! checkpoint, in save order (step, metric, unix time, file name, size, FNV-1a 64 checksum of the
//! 8-byte length and JSON header). Files that fall out of [`Retention`] are removed only after
//! the new manifest is durable, so a crash at any moment leaves a manifest that points only at
//! complete files. [`load_latest`] reads it back, verifies the most recently saved entry and
//! falls back to earlier ones.
//!
//! # The contract: what it deletes, replaces and shares
//!
//! * **It deletes only files it wrote.** Retention deletes a file only when its manifest entry
//!   names it by this checkpointer's own pattern (`<stem>-step<step:08>[-v<n>].safetensors`, its
//!   own stem and the entry's step) directly inside its folder, and the file is a regular file
//!   (not a symlink) of the size and header checksum recorded when it was written. Anything else
//!   a manifest lists — `../x`, an absolute path, a subfolder, a symlink, another name, a file
//!   changed since — is dropped from the manifest but never deleted: it is reported in
//!   [`Completed::refused`] and in one line on stderr. A run folder downloaded from anywhere is
//!   input like any other. Resume applies the same checks and never follows such an entry
//!   ([`Resumed::rejected`] says why). Besides checkpoints it creates `manifest.json` and
//!   `.<stem>.lock`, and removes only temporary files (`*.partial`) of writers that provably no
//!   longer run (the rule of [`crate::clean_stale_temps`]). A file the manifest does not list is
//!   never touched — including a complete checkpoint a crash published before its manifest entry
//!   was written (remove it by hand).
//! * **Retention is by save order.** `keep_last(n)` keeps the `n` most recent saves, whatever
//!   their steps, plus the best `k` by metric. Step numbers repeat or go back after a rollback
//!   (training resumed from an earlier checkpoint); the order of saves does not, and the newest
//!   save is the current state of training. So after steps 10, 20, 30 and a rollback to 10, a
//!   save of step 15 is the newest and kept, and the abandoned branch's files age out like any
//!   older save (unless among the best). [`load_latest`] likewise returns the last save.
//! * **Nothing under a final name is ever replaced.** A save never overwrites a file or takes
//!   over its name: a taken name gets the next `-v<n>`, and the publish fails rather than replace
//!   a file that appears meanwhile. Files go only through retention, under the first rule.
//! * **One run per stem and folder.** [`CheckpointerBuilder::build`] takes an exclusive OS lock
//!   on `.<stem>.lock`, held until the checkpointer is dropped; a second run of that stem in the
//!   folder — in this process or another — gets [`crate::Error::FolderInUse`] naming the holder.
//!   A crashed run's lock is released by the operating system. Runs of different stems share a
//!   folder safely: each owns only its stem's names and manifest entries.

mod builder;
mod files;
mod job;
mod manifest;
mod resume;
mod run_lock;
mod snapshot;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::model::{ComponentKind, Components, InputTensor, IntoTensorMap, TensorMap};
use crate::save;
use crate::write::AlignedBuf;
pub use builder::CheckpointerBuilder;
use job::Job;
pub use manifest::{
    read_manifest, Manifest, ManifestEntry, MetricOrder, Retention, MANIFEST_FILE_NAME,
};
pub use resume::{load_into, load_latest, Resumed};
use run_lock::RunLock;

/// What [`Checkpointer::save`] does when the previous save is still being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InFlight {
    /// Block until the previous save is finished, then take the new snapshot (the default:
    /// every requested checkpoint is written).
    #[default]
    Wait,
    /// Take no snapshot and return [`SaveOutcome::Skipped`] (the loop never waits for storage).
    Skip,
}

/// How the snapshot is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotStrategy {
    /// CPU tensors: host copy. Device tensors: device-side copy when it fits
    /// ([`CheckpointerBuilder::device_memory_limit`]) and the allocation succeeds, else a
    /// device→host copy.
    #[default]
    Auto,
    /// Device tensors copied on their device (CPU tensors: host copy).
    DeviceCopy,
    /// Device tensors copied to host memory (CPU tensors: host copy).
    DeviceToHost,
}

/// The snapshot strategy actually used for one save.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    /// All tensors were CPU tensors, copied in host memory.
    HostCopy,
    /// Device tensors were copied on their device.
    DeviceCopy,
    /// Device tensors were copied to host memory.
    DeviceToHost,
}

/// A checkpointer's settings, shared with its background saves.
#[derive(Debug)]
struct Config {
    builder: CheckpointerBuilder,
    model_prefix: Option<String>,
    /// The staging buffer of the last finished save, for the next snapshot to reuse.
    spare_image: std::sync::Mutex<Option<AlignedBuf>>,
}

/// What [`Checkpointer::save`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum SaveOutcome {
    /// The snapshot was taken and is being written in the background.
    Started {
        /// The step saved.
        step: u64,
        /// Where the file will be published (`-v<n>` before the extension when the plain name
        /// of the step was taken).
        path: PathBuf,
        /// How long the caller was held for the snapshot (the stall), waiting excluded.
        snapshot: Duration,
        /// Time spent waiting for the previous save ([`InFlight::Wait`]).
        waited: Duration,
        /// The strategy used.
        strategy: SnapshotKind,
        /// Bytes copied into the snapshot.
        bytes: u64,
    },
    /// A save was still in flight and the policy is [`InFlight::Skip`]; nothing was copied.
    Skipped {
        /// The step that was not saved.
        step: u64,
        /// The step still being written.
        in_flight_step: u64,
    },
}

/// A background save that completed.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    /// Its manifest entry.
    pub entry: ManifestEntry,
    /// The published file.
    pub path: PathBuf,
    /// Time from snapshot to durable manifest.
    pub elapsed: Duration,
    /// Checkpoint files removed by retention.
    pub removed: Vec<PathBuf>,
    /// Manifest entries of this stem that retention dropped (or that name no file of this
    /// checkpointer) whose file it refused to delete: (the file as listed, why). See the
    /// [module docs](self).
    pub refused: Vec<(String, String)>,
}

struct Running {
    step: u64,
    cancel: Arc<AtomicBool>,
    handle: JoinHandle<Result<Completed>>,
}

/// Saves checkpoints from a training loop in the background; see the [module docs](self).
pub struct Checkpointer {
    cfg: Arc<Config>,
    in_flight: Option<Running>,
    last: Option<Completed>,
    /// Held until the checkpointer is dropped, after the save in flight.
    _run: RunLock,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("dir", &self.cfg.builder.dir)
            .field("stem", &self.cfg.builder.stem)
            .field("in_flight_step", &self.in_flight.as_ref().map(|r| r.step))
            .finish_non_exhaustive()
    }
}

impl Checkpointer {
    /// Settings for checkpoints in `dir`, with the defaults: stem `checkpoint`, plain layout,
    /// dtypes as held, keep the last 3, [`InFlight::Wait`], [`SnapshotStrategy::Auto`].
    pub fn builder(dir: impl Into<PathBuf>) -> CheckpointerBuilder {
        CheckpointerBuilder::new(dir.into())
    }

    /// The output folder.
    pub fn dir(&self) -> &Path {
        &self.cfg.builder.dir
    }

    /// The file-name stem.
    pub fn stem(&self) -> &str {
        &self.cfg.builder.stem
    }

    /// The plain name of `step`'s checkpoint, `<dir>/<stem>-step<step:08>.safetensors`. A save
    /// whose plain name is taken publishes under the next free `-v<n>` instead;
    /// [`SaveOutcome::Started`] gives the path used.
    pub fn path_for(&self, step: u64) -> PathBuf {
        self.cfg
            .builder
            .dir
            .join(files::file_name(&self.cfg.builder.stem, step, 0))
    }

    /// The step being written in the background, if any.
    pub fn in_flight_step(&self) -> Option<u64> {
        self.in_flight.as_ref().map(|r| r.step)
    }

    /// Whether a background write is running now (a finished one not yet collected by
    /// [`Checkpointer::wait`] or the next save does not count).
    pub fn is_saving(&self) -> bool {
        self.in_flight
            .as_ref()
            .is_some_and(|r| !r.handle.is_finished())
    }

    /// The last background save seen to complete.
    pub fn last_completed(&self) -> Option<&Completed> {
        self.last.as_ref()
    }

    /// Takes a snapshot of `tensors` for `step` and returns; the write runs in the background.
    /// `metric` ranks the save for `keep_best`; a NaN or infinite metric (a diverged loss) is
    /// recorded as none, so that save is kept by `keep_last` only, never as a best one.
    ///
    /// # Errors
    /// The error of the previous background save (then no snapshot is taken; call again to save),
    /// layout/plan errors found before the snapshot (bad names, impossible casts), [`Error::Io`]
    /// when the folder cannot be inspected for a free name, and snapshot copy errors.
    pub fn save(
        &mut self,
        tensors: impl Into<Components>,
        step: u64,
        metric: Option<f64>,
    ) -> Result<SaveOutcome> {
        self.save_with_extra(tensors, Vec::<(String, TensorMap)>::new(), step, metric)
    }

    /// As [`Checkpointer::save`], with extra named tensors (optimizer moments, counters) in the
    /// same file, each set under its own prefix (`"optim."`); read them back with
    /// [`Resumed::extra`]. The extra tensors join the first component present and need a layout
    /// that keeps names (plain or generic).
    ///
    /// # Errors
    /// As [`Checkpointer::save`], plus [`Error::InvalidInput`] for an empty prefix, a main tensor
    /// whose name starts with an extra prefix, or extras with a ComfyUI layout.
    pub fn save_with_extra<P: Into<String>, M: IntoTensorMap>(
        &mut self,
        tensors: impl Into<Components>,
        extra: impl IntoIterator<Item = (P, M)>,
        step: u64,
        metric: Option<f64>,
    ) -> Result<SaveOutcome> {
        let mut waited = Duration::ZERO;
        if let Some(running) = &self.in_flight {
            if !running.handle.is_finished() && self.cfg.builder.in_flight == InFlight::Skip {
                return Ok(SaveOutcome::Skipped {
                    step,
                    in_flight_step: running.step,
                });
            }
            let start = Instant::now();
            self.wait()?;
            waited = start.elapsed();
        }
        let extra: Vec<(String, TensorMap)> = extra
            .into_iter()
            .map(|(p, m)| (p.into(), m.into_tensor_map()))
            .collect();
        let components = self.merge_extra(tensors.into(), &extra)?;
        // Check names, layout and casts now, so a bad request fails here rather than later.
        save::lay_out(&components, &self.cfg.builder.layout, None)?;
        // No save is in flight now, so the names on disk are final: the first free one is ours
        // (this run holds the stem's lock; the publish still refuses a file that appears).
        let file = files::free_name(&self.cfg.builder.dir, &self.cfg.builder.stem, step)?;
        let start = Instant::now();
        let cancel = Arc::new(AtomicBool::new(false));
        let title = file.strip_suffix(".safetensors").unwrap_or(&file);
        let (snapshot, strategy, bytes) = snapshot::take(&components, &self.cfg, title, &cancel)?;
        let snapshot_time = start.elapsed();
        drop(components);
        let path = self.cfg.builder.dir.join(&file);
        let job = Job {
            cfg: Arc::clone(&self.cfg),
            snapshot,
            file,
            step,
            metric: metric.filter(|m| m.is_finite()),
            extra_prefixes: extra.into_iter().map(|(p, _)| p).collect(),
            cancel: Arc::clone(&cancel),
            started: start,
        };
        let handle = std::thread::Builder::new()
            .name(format!("checkpoint-step{step}"))
            .spawn(move || job.run())
            .ctx(|| "cannot start the background checkpoint thread".into())?;
        self.in_flight = Some(Running {
            step,
            cancel,
            handle,
        });
        Ok(SaveOutcome::Started {
            step,
            path,
            snapshot: snapshot_time,
            waited,
            strategy,
            bytes,
        })
    }

    fn merge_extra(
        &self,
        mut components: Components,
        extra: &[(String, TensorMap)],
    ) -> Result<Components> {
        if extra.is_empty() {
            return Ok(components);
        }
        if self.cfg.model_prefix.is_none() {
            return Err(Error::InvalidInput(
                "extra tensors need a layout that keeps names (plain or generic); a ComfyUI \
                 layout renames and drops keys it does not know"
                    .into(),
            ));
        }
        let kind = components
            .iter()
            .map(|(k, _)| k)
            .next()
            .unwrap_or(ComponentKind::Model);
        let mut map = components.take(kind).unwrap_or_default();
        for (prefix, _) in extra {
            if prefix.is_empty() {
                return Err(Error::InvalidInput(
                    "an extra tensor set needs a non-empty prefix such as `optim.`".into(),
                ));
            }
            if let Some(name) = map.keys().find(|k| k.starts_with(prefix)) {
                return Err(Error::InvalidInput(format!(
                    "model tensor `{name}` starts with the extra prefix `{prefix}`; choose \
                     another prefix"
                )));
            }
        }
        for (prefix, source) in extra {
            for (name, t) in source {
                let key = format!("{prefix}{name}");
                if map
                    .insert(key.clone(), InputTensor::Candle(t.clone()))
                    .is_some()
                {
                    return Err(Error::InvalidInput(format!(
                        "extra tensor `{key}` is given twice; give each extra set its own prefix"
                    )));
                }
            }
        }
        components.set_inputs(kind, map);
        Ok(components)
    }

    /// Blocks until the save in flight (if any) is finished and returns its report.
    ///
    /// # Errors
    /// The error of that save (I/O, cancelled, a panic of the background thread).
    pub fn wait(&mut self) -> Result<Option<Completed>> {
        let Some(running) = self.in_flight.take() else {
            return Ok(None);
        };
        let completed = join(running)?;
        self.last = Some(completed.clone());
        Ok(Some(completed))
    }

    /// Finishes the save in flight and ends the checkpointer.
    ///
    /// # Errors
    /// As [`Checkpointer::wait`].
    pub fn finish(mut self) -> Result<Option<Completed>> {
        self.wait()
    }

    /// Asks the save in flight (if any) to stop, without waiting: its temporary file is removed
    /// and the manifest is untouched, unless it was already published (then it stays, listed).
    /// The next [`Checkpointer::wait`] (or save) returns [`Error::Cancelled`] for it.
    pub fn cancel(&self) {
        if let Some(running) = &self.in_flight {
            running.cancel.store(true, Ordering::SeqCst);
        }
    }

    /// Cancels the save in flight and ends the checkpointer (see [`Checkpointer::cancel`]).
    ///
    /// # Errors
    /// An error of the save other than the cancellation itself.
    pub fn abandon(mut self) -> Result<()> {
        let Some(running) = self.in_flight.take() else {
            return Ok(());
        };
        running.cancel.store(true, Ordering::SeqCst);
        match join(running) {
            Ok(_) | Err(Error::Cancelled) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Checkpointer {
    /// Finishes the save in flight (blocks); prints its error to stderr, since `Drop` cannot
    /// return it. Use [`Checkpointer::finish`] to receive it instead.
    fn drop(&mut self) {
        if let Some(running) = self.in_flight.take() {
            let step = running.step;
            if let Err(e) = join(running) {
                eprintln!(
                    "checkpoint of step {step} failed while the checkpointer was dropped: {e}"
                );
            }
        }
    }
}

fn join(running: Running) -> Result<Completed> {
    let step = running.step;
    running.handle.join().unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(Error::InvalidInput(format!(
            "the background save of step {step} panicked: {what}"
        )))
    })
}

/// Locks a mutex, recovering the data of a poisoned one (a panicked save only loses its buffer).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
