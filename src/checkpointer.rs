//! Checkpoints from a training loop: background saves with a bounded stall, retention and resume.
//!
//! # Why
//!
//! A training loop should pause for a checkpoint only as long as it takes to take a consistent
//! copy of its weights, not for the whole write (the model of PyTorch's asynchronous distributed
//! checkpoint). [`Checkpointer::save`] therefore takes a *snapshot* and returns; a background
//! thread writes it with the ordinary save path ([`crate::save::save_to_path`]: plan, parallel
//! engine with its bounded staging budget, publish through [`crate::naming::reserve_at`], never
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
//!   host through the generic device path of [`crate::offload`].
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
//! Each checkpoint is `<stem>-step<step:08>.safetensors` in the output folder. After each
//! completed save, `manifest.json` in that folder is rewritten atomically (temporary file, fsync,
//! rename, fsync of the folder) with one entry per checkpoint (step, metric, unix time, file name,
//! size, FNV-1a 64 checksum of the 8-byte length and JSON header). Files that fall out of
//! [`Retention`] are removed only after the new manifest is durable, so a crash at any moment
//! leaves a manifest that points only at complete files. [`load_latest`] reads it back, verifies
//! the newest entry and falls back to older ones.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::components::{ComponentKind, Components, IntoTensorMap, TensorMap};
use crate::dtype::TargetDtype;
use crate::error::{Error, IoContext, Result};
use crate::layout::GenericPrefixes;
use crate::metadata::MetadataOptions;
use crate::naming;
use crate::plan::ComponentDtypes;
use crate::save::{self, LayoutChoice, SaveOptions, WriterChoice};
use crate::writer::EngineOptions;

/// File name of the manifest in the output folder.
pub const MANIFEST_FILE_NAME: &str = "manifest.json";

/// Lock file serialising manifest updates (between threads and processes).
const MANIFEST_LOCK_NAME: &str = ".checkpoint-manifest.lock";

/// Version written into the manifest.
const MANIFEST_VERSION: u32 = 1;

/// What a checkpoint holds: one component's named tensors ([`IntoTensorMap`]: a `&VarMap`, a
/// `HashMap`, a `BTreeMap`, a `Vec` of pairs) or whole [`Components`].
pub trait CheckpointTensors {
    /// The tensors as components (live tensors, not yet copied).
    fn into_components(self) -> Components;
}

impl<T: IntoTensorMap> CheckpointTensors for T {
    fn into_components(self) -> Components {
        Components::new(self)
    }
}

impl CheckpointTensors for Components {
    fn into_components(self) -> Components {
        self
    }
}

impl CheckpointTensors for &Components {
    fn into_components(self) -> Components {
        self.clone()
    }
}

/// Named tensors read by reference, for the extra tensors of
/// [`Checkpointer::save_with_extra`] (optimizer state and the like).
pub trait TensorSource {
    /// The tensors (live, not yet copied), sorted by name.
    fn tensor_map(&self) -> TensorMap;
}

impl TensorSource for candle_nn::VarMap {
    fn tensor_map(&self) -> TensorMap {
        self.into_tensor_map()
    }
}

impl TensorSource for TensorMap {
    fn tensor_map(&self) -> TensorMap {
        self.clone()
    }
}

impl<S: std::hash::BuildHasher> TensorSource for HashMap<String, Tensor, S> {
    fn tensor_map(&self) -> TensorMap {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl TensorSource for [(String, Tensor)] {
    fn tensor_map(&self) -> TensorMap {
        self.iter().cloned().collect()
    }
}

impl TensorSource for Vec<(String, Tensor)> {
    fn tensor_map(&self) -> TensorMap {
        self.iter().cloned().collect()
    }
}

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

/// Which metric values are better, for [`Retention::keep_best`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetricOrder {
    /// Lower is better (a loss; the default).
    #[default]
    LowerIsBetter,
    /// Higher is better (an accuracy).
    HigherIsBetter,
}

/// Which checkpoints of this stem are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The newest `keep_last` checkpoints (by step) are kept; at least 1.
    pub keep_last: usize,
    /// The `keep_best` checkpoints with the best finite metric are kept too.
    pub keep_best: usize,
    /// What "best" means.
    pub order: MetricOrder,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            keep_last: 3,
            keep_best: 0,
            order: MetricOrder::LowerIsBetter,
        }
    }
}

/// One checkpoint as listed in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// The checkpointer's file-name stem.
    pub stem: String,
    /// Training step.
    pub step: u64,
    /// The metric given with the save (`None` when not given or not finite).
    pub metric: Option<f64>,
    /// Seconds since the Unix epoch when the save completed.
    pub unix_time: u64,
    /// File name inside the folder.
    pub file: String,
    /// File size in bytes.
    pub bytes: u64,
    /// `fnv1a64:<16 hex digits>` of the file's first `8 + header length` bytes.
    pub header_checksum: String,
    /// Prefix of the main tensors' keys in the file (`""` for the plain layout); `None` when a
    /// ComfyUI layout renamed them.
    pub model_prefix: Option<String>,
    /// Prefixes under which extra tensors were saved (after `model_prefix`).
    pub extra_prefixes: Vec<String>,
}

/// The manifest: every completed, retained checkpoint in the folder, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version (1).
    pub version: u32,
    /// The entries, sorted by stem then step.
    pub entries: Vec<ManifestEntry>,
}

impl Default for Manifest {
    fn default() -> Self {
        Self {
            version: MANIFEST_VERSION,
            entries: Vec::new(),
        }
    }
}

/// Reads `dir/manifest.json`; `Ok(None)` when there is none.
///
/// # Errors
/// [`Error::Io`] when it cannot be read, [`Error::InvalidInput`] when it is not a manifest.
pub fn read_manifest(dir: &Path) -> Result<Option<Manifest>> {
    let path = dir.join(MANIFEST_FILE_NAME);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        Error::InvalidInput(format!(
            "{} is not a checkpoint manifest: {e}",
            path.display()
        ))
    })
}

/// Settings of a [`Checkpointer`]; made by [`Checkpointer::builder`].
#[derive(Debug, Clone)]
pub struct CheckpointerBuilder {
    dir: PathBuf,
    stem: String,
    layout: LayoutChoice,
    dtypes: ComponentDtypes,
    engine: EngineOptions,
    retention: Retention,
    in_flight: InFlight,
    snapshot: SnapshotStrategy,
    device_memory_limit: Option<u64>,
    low_priority: bool,
    check_finite: bool,
}

impl CheckpointerBuilder {
    /// The file-name stem (default `checkpoint`): files are `<stem>-step<step:08>.safetensors`.
    pub fn stem(mut self, stem: impl Into<String>) -> Self {
        self.stem = stem.into();
        self
    }

    /// A ComfyUI layout (or any [`LayoutChoice`]) instead of the plain names.
    pub fn layout(mut self, layout: LayoutChoice) -> Self {
        self.layout = layout;
        self
    }

    /// The plain layout (the default): every tensor under its own name, e.g. the `VarMap` names
    /// (the generic layout with empty prefixes). Resume needs a layout that does not rename keys.
    pub fn plain(mut self) -> Self {
        self.layout = plain_layout();
        self
    }

    /// The dtype of every component (default: as held).
    pub fn dtype(mut self, dtype: TargetDtype) -> Self {
        self.dtypes = ComponentDtypes::all(dtype);
        self
    }

    /// The dtype per component.
    pub fn dtypes(mut self, dtypes: ComponentDtypes) -> Self {
        self.dtypes = dtypes;
        self
    }

    /// The write engine's settings (default: two workers, 64 MiB staging budget).
    pub fn engine(mut self, engine: EngineOptions) -> Self {
        self.engine = engine;
        self
    }

    /// The host memory the background write may hold for staging.
    pub fn staging_budget(mut self, bytes: u64) -> Self {
        self.engine.staging_budget = bytes;
        self
    }

    /// Keep the newest `n` checkpoints (at least 1; default 3).
    pub fn keep_last(mut self, n: usize) -> Self {
        self.retention.keep_last = n;
        self
    }

    /// Also keep the `k` checkpoints with the best metric.
    pub fn keep_best(mut self, k: usize, order: MetricOrder) -> Self {
        self.retention.keep_best = k;
        self.retention.order = order;
        self
    }

    /// The whole retention policy.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// What a save asked for while one is in flight does (default [`InFlight::Wait`]).
    pub fn in_flight(mut self, policy: InFlight) -> Self {
        self.in_flight = policy;
        self
    }

    /// How snapshots are taken (default [`SnapshotStrategy::Auto`]).
    pub fn snapshot(mut self, strategy: SnapshotStrategy) -> Self {
        self.snapshot = strategy;
        self
    }

    /// Device memory (bytes) a device-side snapshot may take under [`SnapshotStrategy::Auto`];
    /// larger snapshots go to the host. Unset: try the device copy, fall back on failure.
    pub fn device_memory_limit(mut self, bytes: u64) -> Self {
        self.device_memory_limit = Some(bytes);
        self
    }

    /// Run the background write at a lower CPU priority (Linux `nice` +10; default on), so it
    /// takes CPU time the training loop leaves idle.
    pub fn low_priority(mut self, on: bool) -> Self {
        self.low_priority = on;
        self
    }

    /// Refuse to publish checkpoints holding NaN/Inf (the save fails; default off).
    pub fn check_finite(mut self, on: bool) -> Self {
        self.check_finite = on;
        self
    }

    /// Creates the folder, removes temporary files of dead processes and checks the manifest.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty stem or one holding `/` or NUL, `keep_last` of 0, or
    /// an unreadable manifest; [`Error::Io`] when the folder cannot be created or cleaned.
    pub fn build(self) -> Result<Checkpointer> {
        if self.stem.is_empty() || self.stem.contains(['/', '\0']) || self.stem.starts_with('.') {
            return Err(Error::InvalidInput(format!(
                "invalid checkpoint stem `{}`: give a plain file-name part such as `model`",
                self.stem
            )));
        }
        if self.retention.keep_last == 0 {
            return Err(Error::InvalidInput(
                "keep_last must be at least 1: the newest checkpoint is what a resume reads".into(),
            ));
        }
        fs::create_dir_all(&self.dir)
            .ctx(|| format!("cannot create the checkpoint folder {}", self.dir.display()))?;
        naming::clean_stale_temps(&self.dir)?;
        read_manifest(&self.dir)?;
        let model_prefix = match &self.layout {
            LayoutChoice::Generic(p) => Some(p.model.clone()),
            LayoutChoice::Auto | LayoutChoice::Arch(_) => None,
        };
        Ok(Checkpointer {
            cfg: Arc::new(Config {
                builder: self,
                model_prefix,
                spare_image: std::sync::Mutex::new(None),
            }),
            in_flight: None,
            last: None,
        })
    }
}

fn plain_layout() -> LayoutChoice {
    LayoutChoice::Generic(GenericPrefixes {
        model: String::new(),
        clip: String::new(),
        vae: String::new(),
        clip_vision: String::new(),
    })
}

#[derive(Debug)]
struct Config {
    builder: CheckpointerBuilder,
    model_prefix: Option<String>,
    /// The staging buffer of the last finished save, for the next snapshot to reuse.
    spare_image: std::sync::Mutex<Option<crate::writer::HostImage>>,
}

impl Config {
    fn file_name(&self, step: u64) -> String {
        format!("{}-step{step:08}.safetensors", self.builder.stem)
    }
}

/// What [`Checkpointer::save`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum SaveOutcome {
    /// The snapshot was taken and is being written in the background.
    Started {
        /// The step saved.
        step: u64,
        /// Where the file will be published.
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
        CheckpointerBuilder {
            dir: dir.into(),
            stem: "checkpoint".into(),
            layout: plain_layout(),
            dtypes: ComponentDtypes::default(),
            engine: EngineOptions {
                threads: 2,
                staging_budget: 64 << 20,
                chunk_size: 16 << 20,
                ..EngineOptions::default()
            },
            retention: Retention::default(),
            in_flight: InFlight::Wait,
            snapshot: SnapshotStrategy::Auto,
            device_memory_limit: None,
            low_priority: true,
            check_finite: false,
        }
    }

    /// The output folder.
    pub fn dir(&self) -> &Path {
        &self.cfg.builder.dir
    }

    /// The file-name stem.
    pub fn stem(&self) -> &str {
        &self.cfg.builder.stem
    }

    /// Where the checkpoint of `step` is published.
    pub fn path_for(&self, step: u64) -> PathBuf {
        self.cfg.builder.dir.join(self.cfg.file_name(step))
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
    ///
    /// # Errors
    /// The error of the previous background save (then no snapshot is taken; call again to save),
    /// layout/plan errors found before the snapshot (bad names, impossible casts) and snapshot
    /// copy errors.
    pub fn save(
        &mut self,
        tensors: impl CheckpointTensors,
        step: u64,
        metric: Option<f64>,
    ) -> Result<SaveOutcome> {
        self.save_with_extra::<TensorMap>(tensors, &[], step, metric)
    }

    /// As [`Checkpointer::save`], with extra named tensors (optimizer moments, counters) in the
    /// same file, each set under its own prefix (`"optim."`); read them back with
    /// [`Resumed::extra`]. The extra tensors join the first component present and need a layout
    /// that keeps names (plain or generic).
    ///
    /// # Errors
    /// As [`Checkpointer::save`], plus [`Error::InvalidInput`] for an empty prefix, a main tensor
    /// whose name starts with an extra prefix, or extras with a ComfyUI layout.
    pub fn save_with_extra<E: TensorSource + ?Sized>(
        &mut self,
        tensors: impl CheckpointTensors,
        extra: &[(&str, &E)],
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
        let components = self.merge_extra(tensors.into_components(), extra)?;
        // Check names, layout and casts now, so a bad request fails here rather than later.
        save::lay_out(&components, &self.cfg.builder.layout, None)?;
        let start = Instant::now();
        let cancel = Arc::new(AtomicBool::new(false));
        let on_device = components
            .iter()
            .flat_map(|(_, m)| m.values())
            .any(|t| !t.device().is_cpu());
        let (snapshot, strategy, bytes) = if on_device {
            let (snapshot, strategy) = take_snapshot(
                &components,
                self.cfg.builder.snapshot,
                self.cfg.builder.device_memory_limit,
            )?;
            let bytes = snapshot.byte_len();
            (Snapshot::Tensors(snapshot), strategy, bytes)
        } else {
            // Host tensors: the snapshot is the file's data section itself, read and cast in one
            // pass; the background thread then only has to hand it to the disk.
            let file = self.cfg.file_name(step);
            let title = file
                .strip_suffix(".safetensors")
                .unwrap_or(&file)
                .to_string();
            let reuse = lock(&self.cfg.spare_image).take();
            let staged = save::stage(
                &components,
                &save_options(&self.cfg, &cancel),
                &title,
                reuse,
            )?;
            let bytes = staged.bytes();
            (Snapshot::Staged(staged), SnapshotKind::HostCopy, bytes)
        };
        let snapshot_time = start.elapsed();
        drop(components);
        let job = Job {
            cfg: Arc::clone(&self.cfg),
            snapshot,
            step,
            metric: metric.filter(|m| m.is_finite()),
            extra_prefixes: extra.iter().map(|(p, _)| (*p).to_string()).collect(),
            cancel: Arc::clone(&cancel),
            started: start,
        };
        let path = self.path_for(step);
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

    fn merge_extra<E: TensorSource + ?Sized>(
        &self,
        mut components: Components,
        extra: &[(&str, &E)],
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
            for (name, t) in source.tensor_map() {
                let key = format!("{prefix}{name}");
                if map.insert(key.clone(), t).is_some() {
                    return Err(Error::InvalidInput(format!(
                        "extra tensor `{key}` is given twice; give each extra set its own prefix"
                    )));
                }
            }
        }
        components.set(kind, map);
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

    /// Cancels the save in flight: its temporary file is removed and the manifest is untouched
    /// (if it had already been published, it stays, listed in the manifest).
    ///
    /// # Errors
    /// An error of the save other than the cancellation itself.
    pub fn abandon(mut self) -> Result<()> {
        let Some(running) = self.in_flight.take() else {
            return Ok(());
        };
        running.cancel.store(true, Ordering::Relaxed);
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

/// Copies every tensor so later updates of the live ones cannot reach the file.
fn take_snapshot(
    components: &Components,
    strategy: SnapshotStrategy,
    device_limit: Option<u64>,
) -> Result<(Components, SnapshotKind)> {
    let device_bytes: u64 = components
        .iter()
        .flat_map(|(_, m)| m.values())
        .filter(|t| !t.device().is_cpu())
        .map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
        .sum();
    let has_device = components
        .iter()
        .flat_map(|(_, m)| m.values())
        .any(|t| !t.device().is_cpu());
    let kind = match strategy {
        _ if !has_device => SnapshotKind::HostCopy,
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
        let cpu: Vec<(&String, &Tensor)> =
            map.iter().filter(|(_, t)| t.device().is_cpu()).collect();
        // Host copies in parallel: memory bandwidth, not one core, bounds the stall.
        let mut copied = cpu
            .par_iter()
            .map(|(k, t)| Ok(((*k).clone(), t.copy()?)))
            .collect::<Result<TensorMap>>()?;
        // Device copies in order on the caller's thread: they are enqueued on the device's
        // stream, ahead of the loop's next update.
        for (k, t) in map.iter().filter(|(_, t)| !t.device().is_cpu()) {
            let c = match kind {
                SnapshotKind::DeviceToHost => t.to_device(&Device::Cpu)?,
                SnapshotKind::DeviceCopy | SnapshotKind::HostCopy => t.copy()?,
            };
            copied.insert(k.clone(), c);
        }
        out.set(ck, copied);
    }
    Ok(out)
}

/// Locks a mutex, recovering the data of a poisoned one (a panicked save only loses its buffer).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the background thread writes from.
enum Snapshot {
    /// The staged data section (host tensors).
    Staged(save::Staged),
    /// Copies of the tensors (device tensors: copied on the device or to the host).
    Tensors(Components),
}

/// The save options a checkpointer's saves use.
fn save_options(cfg: &Config, cancel: &Arc<AtomicBool>) -> SaveOptions {
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
        writer: WriterChoice::Parallel(b.engine),
    }
}

struct Job {
    cfg: Arc<Config>,
    snapshot: Snapshot,
    step: u64,
    metric: Option<f64>,
    extra_prefixes: Vec<String>,
    cancel: Arc<AtomicBool>,
    started: Instant,
}

impl Job {
    fn run(self) -> Result<Completed> {
        let b = &self.cfg.builder;
        if b.low_priority {
            lower_thread_priority();
        }
        let dir = &b.dir;
        let file = self.cfg.file_name(self.step);
        let path = dir.join(&file);
        self.clear_orphan(&path)?;
        let saved = match &self.snapshot {
            Snapshot::Staged(staged) => {
                save::write_staged_to_path(staged, &path, Some(&self.cancel))?
            }
            Snapshot::Tensors(c) => {
                save::save_to_path(c, &path, &save_options(&self.cfg, &self.cancel))?
            }
        };
        if let Snapshot::Staged(staged) = self.snapshot {
            // Keep the buffer for the next snapshot: no fresh pages to fault in and zero.
            *lock(&self.cfg.spare_image) = Some(staged.into_image());
        }
        let header_checksum = header_checksum(&saved.path)?;
        let entry = ManifestEntry {
            stem: b.stem.clone(),
            step: self.step,
            metric: self.metric,
            unix_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            file,
            bytes: saved.bytes,
            header_checksum,
            model_prefix: self.cfg.model_prefix.clone(),
            extra_prefixes: self.extra_prefixes,
        };
        let removed = {
            let _lock = naming::FolderLock::acquire_named(dir, MANIFEST_LOCK_NAME)?;
            let mut manifest = read_manifest(dir)?.unwrap_or_default();
            manifest
                .entries
                .retain(|e| !(e.stem == entry.stem && e.step == entry.step));
            manifest.entries.push(entry.clone());
            let dropped = apply_retention(&mut manifest, &b.stem, &b.retention);
            write_manifest(dir, &manifest)?;
            // Only now, with the new manifest durable, may the old files go.
            let mut removed = Vec::new();
            for e in dropped {
                let p = dir.join(&e.file);
                match fs::remove_file(&p) {
                    Ok(()) => removed.push(p),
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => {
                        return Err(Error::io(
                            format!("cannot remove the old checkpoint {}", p.display()),
                            err,
                        ))
                    }
                }
            }
            if !removed.is_empty() {
                naming::sync_folder(dir)?;
            }
            removed
        };
        Ok(Completed {
            entry,
            path: saved.path,
            elapsed: self.started.elapsed(),
            removed,
        })
    }

    /// A file of this name the manifest does not list was left by an interrupted run (or by a
    /// run resumed from an earlier step): it is superseded. One the manifest lists is refused.
    fn clear_orphan(&self, path: &Path) -> Result<()> {
        if fs::symlink_metadata(path).is_err() {
            return Ok(());
        }
        let dir = &self.cfg.builder.dir;
        let _lock = naming::FolderLock::acquire_named(dir, MANIFEST_LOCK_NAME)?;
        let listed = read_manifest(dir)?.is_some_and(|m| {
            m.entries
                .iter()
                .any(|e| e.stem == self.cfg.builder.stem && e.step == self.step)
        });
        if listed {
            return Err(Error::io(
                format!(
                    "step {} is already checkpointed as {}; use another stem or folder",
                    self.step,
                    path.display()
                ),
                io::Error::from(io::ErrorKind::AlreadyExists),
            ));
        }
        fs::remove_file(path).ctx(|| {
            format!(
                "cannot remove {}, a checkpoint the manifest does not list (left by an \
                 interrupted run)",
                path.display()
            )
        })
    }
}

/// Lowers the calling thread's CPU priority; threads it starts (the writer's workers) inherit it.
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the calling thread; failure only leaves the priority as is.
        unsafe {
            let tid = libc::gettid();
            let _ = libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
        }
    }
}

/// Keeps the last N and best K entries of `stem`; returns the entries dropped.
fn apply_retention(
    manifest: &mut Manifest,
    stem: &str,
    retention: &Retention,
) -> Vec<ManifestEntry> {
    let mut own: Vec<&ManifestEntry> = manifest.entries.iter().filter(|e| e.stem == stem).collect();
    own.sort_by_key(|e| std::cmp::Reverse(e.step));
    let mut keep: BTreeSet<u64> = own
        .iter()
        .take(retention.keep_last.max(1))
        .map(|e| e.step)
        .collect();
    let mut scored: Vec<(f64, u64)> = own
        .iter()
        .filter_map(|e| e.metric.filter(|m| m.is_finite()).map(|m| (m, e.step)))
        .collect();
    scored.sort_by(|a, b| {
        let by_metric = match retention.order {
            MetricOrder::LowerIsBetter => a.0.total_cmp(&b.0),
            MetricOrder::HigherIsBetter => b.0.total_cmp(&a.0),
        };
        by_metric.then(b.1.cmp(&a.1))
    });
    keep.extend(scored.iter().take(retention.keep_best).map(|s| s.1));
    let (kept, dropped): (Vec<_>, Vec<_>) = manifest
        .entries
        .drain(..)
        .partition(|e| e.stem != stem || keep.contains(&e.step));
    manifest.entries = kept;
    manifest
        .entries
        .sort_by(|a, b| a.stem.cmp(&b.stem).then(a.step.cmp(&b.step)));
    dropped
}

/// Writes the manifest atomically: temporary file, fsync, rename, fsync of the folder.
fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let json = serde_json::to_vec_pretty(manifest)
        .map_err(|e| Error::InvalidInput(format!("cannot encode the manifest: {e}")))?;
    let temp = dir.join(format!(
        "{MANIFEST_FILE_NAME}.{}.partial",
        std::process::id()
    ));
    let final_path = dir.join(MANIFEST_FILE_NAME);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .ctx(|| format!("cannot create {}", temp.display()))?;
        f.write_all(&json)
            .and_then(|()| f.sync_all())
            .ctx(|| format!("cannot write {}", temp.display()))?;
        drop(f);
        fs::rename(&temp, &final_path).ctx(|| {
            format!(
                "cannot rename {} to {}",
                temp.display(),
                final_path.display()
            )
        })
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result?;
    naming::sync_folder(dir)
}

/// FNV-1a, 64-bit.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `fnv1a64:<hex>` of the file's length prefix and JSON header.
fn header_checksum(path: &Path) -> Result<String> {
    let invalid = |reason: String| Error::InvalidCheckpoint {
        path: path.to_path_buf(),
        reason,
    };
    let mut f = File::open(path).ctx(|| format!("cannot open {}", path.display()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| invalid(format!("cannot read the header length: {e}")))?;
    let n = u64::from_le_bytes(len);
    if n > crate::plan::MAX_HEADER_LEN {
        return Err(invalid(format!("header length {n} exceeds the limit")));
    }
    let mut buf = len.to_vec();
    buf.resize(8 + n as usize, 0);
    f.read_exact(&mut buf[8..])
        .map_err(|e| invalid(format!("cannot read the {n}-byte header: {e}")))?;
    Ok(format!("fnv1a64:{:016x}", fnv1a64(&buf)))
}

/// The checkpoint [`load_latest`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Resumed {
    /// The step it holds.
    pub step: u64,
    /// Its metric.
    pub metric: Option<f64>,
    /// The file.
    pub path: PathBuf,
    /// Its manifest entry.
    pub entry: ManifestEntry,
    /// Newer entries passed over, with the reason (missing file, wrong size or checksum).
    pub rejected: Vec<(String, String)>,
}

/// Finds the newest complete checkpoint in `dir` (of `stem`, or of any stem), verifying that its
/// file exists, has the listed size and header checksum; falls back to older entries.
/// `Ok(None)` when there is no manifest or it lists no checkpoint (of that stem).
///
/// # Errors
/// [`Error::Io`] / [`Error::InvalidInput`] when the manifest cannot be read;
/// [`Error::InvalidCheckpoint`] when entries exist but none verifies (listing why), so a broken
/// folder is never mistaken for a fresh start.
pub fn load_latest(dir: &Path, stem: Option<&str>) -> Result<Option<Resumed>> {
    let Some(manifest) = read_manifest(dir)? else {
        return Ok(None);
    };
    let mut entries: Vec<&ManifestEntry> = manifest
        .entries
        .iter()
        .filter(|e| stem.is_none_or(|s| e.stem == s))
        .collect();
    if entries.is_empty() {
        return Ok(None);
    }
    entries.sort_by(|a, b| b.step.cmp(&a.step).then(b.unix_time.cmp(&a.unix_time)));
    let mut rejected = Vec::new();
    for e in entries {
        let path = dir.join(&e.file);
        match verify(&path, e) {
            Ok(()) => {
                return Ok(Some(Resumed {
                    step: e.step,
                    metric: e.metric,
                    path,
                    entry: e.clone(),
                    rejected,
                }))
            }
            Err(reason) => rejected.push((e.file.clone(), reason)),
        }
    }
    Err(Error::InvalidCheckpoint {
        path: dir.join(MANIFEST_FILE_NAME),
        reason: format!(
            "no listed checkpoint is complete: {}",
            rejected
                .iter()
                .map(|(f, r)| format!("{f}: {r}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    })
}

fn verify(path: &Path, e: &ManifestEntry) -> std::result::Result<(), String> {
    let len = fs::metadata(path)
        .map_err(|err| format!("cannot inspect: {err}"))?
        .len();
    if len != e.bytes {
        return Err(format!("{len} bytes, the manifest says {}", e.bytes));
    }
    let sum = header_checksum(path).map_err(|err| err.to_string())?;
    if sum != e.header_checksum {
        return Err(format!(
            "header checksum {sum}, the manifest says {}",
            e.header_checksum
        ));
    }
    Ok(())
}

impl Resumed {
    /// Every tensor of the file under its key in the file, on `device`.
    ///
    /// # Errors
    /// [`Error::InvalidCheckpoint`] when the file cannot be parsed; I/O and candle errors.
    pub fn all_tensors(&self, device: &Device) -> Result<TensorMap> {
        read_tensors(&self.path, device, |k| Some(k.to_string()))
    }

    /// The main tensors (extras excluded), under the names they were saved with.
    ///
    /// # Errors
    /// As [`Resumed::all_tensors`], plus [`Error::InvalidInput`] for a checkpoint written with a
    /// ComfyUI layout (its names were converted).
    pub fn tensors(&self, device: &Device) -> Result<TensorMap> {
        let prefix = self.model_prefix()?;
        let extras: Vec<String> = self
            .entry
            .extra_prefixes
            .iter()
            .map(|p| format!("{prefix}{p}"))
            .collect();
        read_tensors(&self.path, device, |k| {
            if extras.iter().any(|p| k.starts_with(p.as_str())) {
                return None;
            }
            k.strip_prefix(prefix).map(str::to_string)
        })
    }

    /// The extra tensors saved under `prefix`, with the prefix removed.
    ///
    /// # Errors
    /// As [`Resumed::tensors`], plus [`Error::InvalidInput`] when no extra set was saved under
    /// `prefix`.
    pub fn extra(&self, prefix: &str, device: &Device) -> Result<TensorMap> {
        let model = self.model_prefix()?;
        if !self.entry.extra_prefixes.iter().any(|p| p == prefix) {
            return Err(Error::InvalidInput(format!(
                "{} holds no extra tensors under `{prefix}` (it has: {:?})",
                self.path.display(),
                self.entry.extra_prefixes
            )));
        }
        let full = format!("{model}{prefix}");
        read_tensors(&self.path, device, |k| {
            k.strip_prefix(full.as_str()).map(str::to_string)
        })
    }

    /// Loads the main tensors into `varmap`'s variables (read on `device`, then converted to each
    /// variable's dtype and device). Everything is checked first: on any mismatch nothing is set.
    ///
    /// # Errors
    /// [`Error::StateMismatch`] listing missing, unexpected and mis-shaped names; errors of
    /// [`Resumed::tensors`]; candle errors of the conversion.
    pub fn load_into(&self, varmap: &candle_nn::VarMap, device: &Device) -> Result<()> {
        let tensors = self.tensors(device)?;
        load_into(varmap, &tensors)
    }

    fn model_prefix(&self) -> Result<&str> {
        self.entry.model_prefix.as_deref().ok_or_else(|| {
            Error::InvalidInput(format!(
                "{} was written with a ComfyUI layout, which renames keys; resume needs a \
                 checkpoint saved with the plain (or generic) layout",
                self.path.display()
            ))
        })
    }
}

/// Sets every variable of `varmap` from the tensor of the same name, after checking that the
/// names match exactly and every shape fits; on any mismatch nothing is set.
///
/// # Errors
/// [`Error::StateMismatch`] listing missing, unexpected and mis-shaped names; candle errors of
/// the dtype/device conversion (also before anything is set).
pub fn load_into(varmap: &candle_nn::VarMap, tensors: &TensorMap) -> Result<()> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let missing: Vec<String> = data
        .keys()
        .filter(|k| !tensors.contains_key(*k))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let unexpected: Vec<String> = tensors
        .keys()
        .filter(|k| !data.contains_key(*k))
        .cloned()
        .collect();
    let mut mismatched = Vec::new();
    let mut ready = Vec::with_capacity(data.len());
    for (name, var) in data.iter() {
        let Some(t) = tensors.get(name) else { continue };
        if t.dims() != var.dims() {
            mismatched.push((name.clone(), t.dims().to_vec(), var.dims().to_vec()));
        } else {
            ready.push((var, t));
        }
    }
    mismatched.sort();
    if !(missing.is_empty() && unexpected.is_empty() && mismatched.is_empty()) {
        return Err(mismatch_error(missing, unexpected, mismatched));
    }
    let converted = ready
        .into_iter()
        .map(|(var, t)| Ok((var, t.to_dtype(var.dtype())?.to_device(var.device())?)))
        .collect::<Result<Vec<_>>>()?;
    for (var, t) in converted {
        var.set(&t)?;
    }
    Ok(())
}

fn mismatch_error(
    missing: Vec<String>,
    unexpected: Vec<String>,
    mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
) -> Error {
    const SHOWN: usize = 20;
    fn list(names: impl Iterator<Item = String>, total: usize) -> String {
        let mut s: Vec<String> = names.take(SHOWN).collect();
        if total > SHOWN {
            s.push(format!("… and {} more", total - SHOWN));
        }
        s.join(", ")
    }
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!(
            "{} missing from the checkpoint: {}",
            missing.len(),
            list(missing.iter().cloned(), missing.len())
        ));
    }
    if !unexpected.is_empty() {
        parts.push(format!(
            "{} unexpected in the checkpoint: {}",
            unexpected.len(),
            list(unexpected.iter().cloned(), unexpected.len())
        ));
    }
    if !mismatched.is_empty() {
        parts.push(format!(
            "{} with another shape: {}",
            mismatched.len(),
            list(
                mismatched
                    .iter()
                    .map(|(n, file, var)| format!("{n} (checkpoint {file:?}, variable {var:?})")),
                mismatched.len()
            )
        ));
    }
    Error::StateMismatch {
        summary: format!(
            "the checkpoint does not fit the variables; nothing was loaded: {}",
            parts.join("; ")
        ),
        missing,
        unexpected,
        mismatched,
    }
}

/// Reads the tensors whose key `rename` maps to a name.
fn read_tensors(
    path: &Path,
    device: &Device,
    rename: impl Fn(&str) -> Option<String>,
) -> Result<TensorMap> {
    use candle_core::safetensors::Load;
    let file = File::open(path).ctx(|| format!("cannot open {}", path.display()))?;
    // SAFETY: checkpoints are published once and never modified in place (names are never
    // reused while listed), so the mapping is not changed under us.
    let map =
        unsafe { memmap2::Mmap::map(&file) }.ctx(|| format!("cannot map {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| Error::InvalidCheckpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut out = BTreeMap::new();
    for (key, view) in st.tensors() {
        if let Some(name) = rename(&key) {
            out.insert(name, view.load(device)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(step: u64, metric: Option<f64>) -> ManifestEntry {
        ManifestEntry {
            stem: "m".into(),
            step,
            metric,
            unix_time: 0,
            file: format!("m-step{step:08}.safetensors"),
            bytes: 0,
            header_checksum: String::new(),
            model_prefix: Some(String::new()),
            extra_prefixes: vec![],
        }
    }

    #[test]
    fn fnv1a_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn retention_keeps_last_and_best() {
        let mut m = Manifest::default();
        let metrics = [5.0, 1.0, 4.0, 2.0, 3.0, 6.0];
        for (i, v) in metrics.iter().enumerate() {
            m.entries.push(entry(i as u64 * 10, Some(*v)));
        }
        let mut other = entry(5, None);
        other.stem = "x".into();
        m.entries.push(other);
        let r = Retention {
            keep_last: 2,
            keep_best: 2,
            order: MetricOrder::LowerIsBetter,
        };
        let dropped = apply_retention(&mut m, "m", &r);
        let kept: Vec<_> = m
            .entries
            .iter()
            .map(|e| (e.stem.as_str(), e.step))
            .collect();
        assert_eq!(
            kept,
            vec![("m", 10), ("m", 30), ("m", 40), ("m", 50), ("x", 5)]
        );
        let mut d: Vec<u64> = dropped.iter().map(|e| e.step).collect();
        d.sort();
        assert_eq!(d, vec![0, 20]);
        let r = Retention {
            keep_last: 1,
            keep_best: 1,
            order: MetricOrder::HigherIsBetter,
        };
        apply_retention(&mut m, "m", &r);
        let kept: Vec<_> = m.entries.iter().map(|e| e.step).collect();
        assert_eq!(kept, vec![50, 5]);
    }
}
