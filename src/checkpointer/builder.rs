//! The settings of a [`Checkpointer`] and the checks made before its first save.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use super::files::check_stem;
use super::manifest::{read_manifest, MetricOrder, Retention};
use super::run_lock::RunLock;
use super::{Checkpointer, Config, InFlight, SnapshotStrategy};
use crate::error::{Error, IoContext, Result};
use crate::model::TargetDtype;
use crate::plan::ComponentDtypes;
use crate::publish::clean_stale_temps;
use crate::save::LayoutChoice;
use crate::write::EngineOptions;

/// Settings of a [`Checkpointer`]; made by [`Checkpointer::builder`].
#[derive(Debug, Clone)]
pub struct CheckpointerBuilder {
    pub(super) dir: PathBuf,
    pub(super) stem: String,
    pub(super) layout: LayoutChoice,
    pub(super) dtypes: ComponentDtypes,
    pub(super) engine: EngineOptions,
    pub(super) retention: Retention,
    pub(super) in_flight: InFlight,
    pub(super) snapshot: SnapshotStrategy,
    pub(super) device_memory_limit: Option<u64>,
    pub(super) low_priority: bool,
    pub(super) check_finite: bool,
}

impl CheckpointerBuilder {
    /// The defaults: stem `checkpoint`, plain layout, dtypes as held, two writer threads with a
    /// 64 MiB staging budget, keep the last 3, [`InFlight::Wait`], [`SnapshotStrategy::Auto`].
    pub(super) fn new(dir: PathBuf) -> Self {
        CheckpointerBuilder {
            dir,
            stem: "checkpoint".into(),
            layout: LayoutChoice::plain(),
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

    /// The file-name stem (default `checkpoint`): files are `<stem>-step<step:08>.safetensors`
    /// (`-v<n>` before the extension when that name is taken). One run per stem and folder.
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
        self.layout = LayoutChoice::plain();
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

    /// Keep the `n` most recently saved checkpoints (at least 1; default 3). Retention is by save
    /// order, so after a rollback the new saves are kept whatever their steps.
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

    /// Creates the folder, takes the run lock of the stem (held until the checkpointer is
    /// dropped), removes temporary files of finished writers and checks the manifest.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty stem or one holding `/` or NUL or starting with `.`,
    /// `keep_last` of 0, or an unreadable manifest; [`Error::FolderInUse`] when another run of
    /// this stem (in this process or another) uses the folder; [`Error::Io`] when the folder
    /// cannot be created, locked or cleaned.
    pub fn build(self) -> Result<Checkpointer> {
        check_stem(&self.stem)?;
        if self.retention.keep_last == 0 {
            return Err(Error::InvalidInput(
                "keep_last must be at least 1: the newest checkpoint is what a resume reads".into(),
            ));
        }
        fs::create_dir_all(&self.dir)
            .ctx(|| format!("cannot create the checkpoint folder {}", self.dir.display()))?;
        let run = RunLock::acquire(&self.dir, &self.stem)?;
        clean_stale_temps(&self.dir)?;
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
            _run: run,
        })
    }
}
