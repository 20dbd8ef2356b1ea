//! The whole save: layout → plan → write → publish, with every check before the file exists.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::arch::{Arch, Prediction};
use crate::components::{ComponentKind, Components};
use crate::error::{Error, Result};
use crate::layout::{self, detect, GenericPrefixes, Layout, LayoutKind};
use crate::metadata::{self, MetadataOptions};
use crate::naming::{self, Reservation, SaveTarget};
use crate::plan::{ComponentDtypes, Plan, PlanOptions};
use crate::progress::Progress;
use crate::writer::{self, EngineOptions, HostImage};

/// How the checkpoint's keys are laid out.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum LayoutChoice {
    /// Detect the architecture from the denoiser's keys and shapes.
    #[default]
    Auto,
    /// The reference layout of this architecture.
    Arch(Arch),
    /// Prefix each component's keys; no conversion.
    Generic(GenericPrefixes),
}

/// Everything a save can be told.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// Key layout.
    pub layout: LayoutChoice,
    /// Prediction type; `None` takes the architecture's default (no markers for the generic layout).
    pub prediction: Option<Prediction>,
    /// Dtype per component.
    pub dtypes: ComponentDtypes,
    /// The output root (ComfyUI's `output` folder); names never leave it.
    pub output_dir: PathBuf,
    /// File-name prefix, e.g. `checkpoints/ComfyUI` (see [`crate::naming`]).
    pub prefix: String,
    /// Prompt, workflow and other header metadata.
    pub metadata: MetadataOptions,
    /// Refuse to publish a checkpoint that holds NaN/Inf values.
    pub check_finite: bool,
    /// Show a progress bar on stderr when it is a terminal.
    pub progress: bool,
    /// Set to true (e.g. from a Ctrl-C handler) to cancel; the temporary file is removed.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Which writer puts the bytes into the file.
    pub writer: WriterChoice,
}

/// The writer a save uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterChoice {
    /// One piece after another on the calling thread (simple; the reference for tests).
    Sequential,
    /// Parallel workers with a bounded staging budget (the default).
    Parallel(EngineOptions),
}

impl Default for WriterChoice {
    fn default() -> Self {
        WriterChoice::Parallel(EngineOptions::default())
    }
}

impl Default for SaveOptions {
    fn default() -> Self {
        Self {
            layout: LayoutChoice::Auto,
            prediction: None,
            dtypes: ComponentDtypes::default(),
            output_dir: PathBuf::from("output"),
            prefix: "checkpoints/ComfyUI".into(),
            metadata: MetadataOptions::default(),
            check_finite: false,
            progress: false,
            cancel: None,
            writer: WriterChoice::default(),
        }
    }
}

/// What a finished save reports.
#[derive(Debug, Clone)]
pub struct Saved {
    /// The published file.
    pub path: PathBuf,
    /// The architecture laid out (`None` for the generic layout).
    pub arch: Option<Arch>,
    /// The prediction type written.
    pub prediction: Prediction,
    /// Number of tensors in the file.
    pub tensors: usize,
    /// File size.
    pub bytes: u64,
    /// Tensors holding NaN/Inf values, with their counts.
    pub non_finite: Vec<(String, u64)>,
    /// Component keys the reference layout drops.
    pub dropped: Vec<(ComponentKind, String)>,
    /// Wall time of the write (plan to publish).
    pub elapsed: Duration,
}

impl Saved {
    /// Throughput of the write in bytes per second.
    pub fn bytes_per_sec(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Saves under `opts.output_dir` with ComfyUI's naming (`<prefix>_<counter:05>_.safetensors`).
///
/// # Errors
/// Any error of layout, planning, naming or writing; on error no file is left under any name.
pub fn save(components: &Components, opts: &SaveOptions) -> Result<Saved> {
    let target = SaveTarget::resolve(&opts.prefix, &opts.output_dir)?;
    let provisional = format!("{} {}", target.filename, u64::MAX);
    save_with(components, opts, &provisional, &target.folder, || {
        target.reserve()
    })
}

/// Saves to exactly `path`, refusing to replace an existing file.
///
/// # Errors
/// As [`save`], plus an I/O error of kind `AlreadyExists` when `path` exists.
pub fn save_to_path(components: &Components, path: &Path, opts: &SaveOptions) -> Result<Saved> {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    save_with(components, opts, &stem, folder, || naming::reserve_at(path))
}

/// Resolves the layout kind and prediction, and lays the components out.
///
/// # Errors
/// Detection and layout errors.
pub fn lay_out(
    components: &Components,
    choice: &LayoutChoice,
    prediction: Option<Prediction>,
) -> Result<(Option<Arch>, Prediction, Layout)> {
    let shapes = components.shapes();
    let (kind, arch) = match choice {
        LayoutChoice::Auto => {
            let model =
                shapes
                    .get(ComponentKind::Model)
                    .ok_or_else(|| Error::MissingComponent {
                        component: "model",
                        hint: "the denoiser (UNet/DiT) is required in every checkpoint".into(),
                    })?;
            let arch = detect::detect_model(model)?;
            (LayoutKind::Arch(arch), Some(arch))
        }
        LayoutChoice::Arch(a) => (LayoutKind::Arch(*a), Some(*a)),
        LayoutChoice::Generic(p) => (LayoutKind::Generic(p.clone()), None),
    };
    let prediction =
        prediction.unwrap_or_else(|| arch.map_or(Prediction::Flow, Arch::default_prediction));
    let layout = layout::layout(&kind, &shapes, prediction)?;
    Ok((arch, prediction, layout))
}

fn save_with(
    components: &Components,
    opts: &SaveOptions,
    provisional_title: &str,
    folder: &Path,
    reserve: impl FnOnce() -> Result<Reservation>,
) -> Result<Saved> {
    let start = Instant::now();
    let (arch, prediction, layout) = lay_out(components, &opts.layout, opts.prediction)?;
    let direct = match &opts.writer {
        WriterChoice::Parallel(e) => match e.backend {
            writer::Backend::Direct => true,
            writer::Backend::Auto => !folder_is_tmpfs(folder),
            writer::Backend::Pwrite | writer::Backend::Mmap => false,
        },
        WriterChoice::Sequential => false,
    };
    let plan_opts = PlanOptions {
        dtypes: opts.dtypes,
        // Direct I/O needs the data section on a 4096-byte boundary: the header is padded.
        data_alignment: if direct {
            writer::DIRECT_ALIGN as u64
        } else {
            8
        },
    };
    let meta = |title: &str| metadata::build(arch, prediction, title, &opts.metadata);
    // Validate everything before a file exists; the title only changes the header's length.
    Plan::new(&layout, components, &meta(provisional_title), &plan_opts)?;
    let reservation = reserve()?;
    let plan = Plan::new(&layout, components, &meta(&reservation.title()), &plan_opts)?;
    let progress = Progress::new(plan.file_len(), opts.progress);
    let never = AtomicBool::new(false);
    let cancel = opts.cancel.as_deref().unwrap_or(&never);
    let report = match &opts.writer {
        WriterChoice::Sequential => {
            writer::write_sequential(&plan, reservation.file(), &progress, cancel)
        }
        WriterChoice::Parallel(engine) => {
            writer::write_parallel(&plan, reservation.file(), engine, &progress, cancel)
        }
    };
    progress.finish();
    let report = report?;
    let non_finite = non_finite_list(&plan, &report.non_finite);
    if opts.check_finite {
        refuse_non_finite(&non_finite)?;
    }
    let path = reservation.commit()?;
    Ok(Saved {
        path,
        arch,
        prediction,
        tensors: plan.tensors().len(),
        bytes: plan.file_len(),
        non_finite,
        dropped: layout.dropped,
        elapsed: start.elapsed(),
    })
}

/// Whether `folder` (or, if it does not exist yet, its nearest existing parent) is on tmpfs.
fn folder_is_tmpfs(folder: &Path) -> bool {
    folder
        .ancestors()
        .find_map(|p| std::fs::File::open(p).ok())
        .is_some_and(|f| writer::is_tmpfs(&f))
}

/// [`Error::NonFinite`] when any tensor holds NaN/Inf values.
fn refuse_non_finite(non_finite: &[(String, u64)]) -> Result<()> {
    match non_finite.first() {
        Some((first, first_count)) => Err(Error::NonFinite {
            count: non_finite.len(),
            first: first.clone(),
            first_count: *first_count,
        }),
        None => Ok(()),
    }
}

fn non_finite_list(plan: &Plan, counts: &[u64]) -> Vec<(String, u64)> {
    plan.tensors()
        .iter()
        .zip(counts)
        .filter(|(_, &n)| n > 0)
        .map(|(t, &n)| (t.name.clone(), n))
        .collect()
}

/// A checkpoint staged in host memory: its plan and its whole data section, read from the
/// source tensors (and cast) in one pass. Staging is the only moment the source tensors are
/// read, so once [`stage`] returns the caller may change them; the file is written later by
/// [`write_staged_to_path`], from the image, with direct I/O where the file system allows.
#[derive(Debug)]
pub struct Staged {
    plan: Plan,
    image: HostImage,
    arch: Option<Arch>,
    prediction: Prediction,
    non_finite: Vec<(String, u64)>,
    dropped: Vec<(ComponentKind, String)>,
}

impl Staged {
    /// Size of the file this will write.
    pub fn bytes(&self) -> u64 {
        self.plan.file_len()
    }

    /// Tensors holding NaN/Inf values, with their counts.
    pub fn non_finite(&self) -> &[(String, u64)] {
        &self.non_finite
    }

    /// The host buffer, to pass to the next [`stage`] (reused when large enough).
    pub fn into_image(self) -> HostImage {
        self.image
    }
}

/// Lays out, plans and stages a checkpoint in host memory; `title` is the `modelspec.title`
/// (written only by architectures that have one). Host memory needed: the checkpoint's size;
/// `reuse` is the image of an earlier save ([`Staged::into_image`]), used when large enough.
///
/// # Errors
/// Layout, plan, allocation and copy errors; [`Error::NonFinite`] with `opts.check_finite`.
pub fn stage(
    components: &Components,
    opts: &SaveOptions,
    title: &str,
    reuse: Option<HostImage>,
) -> Result<Staged> {
    let (arch, prediction, layout) = lay_out(components, &opts.layout, opts.prediction)?;
    let plan_opts = PlanOptions {
        dtypes: opts.dtypes,
        data_alignment: writer::DIRECT_ALIGN as u64,
    };
    let meta = metadata::build(arch, prediction, title, &opts.metadata);
    let plan = Plan::new(&layout, components, &meta, &plan_opts)?;
    let (image, counts) = writer::stage_image(&plan, reuse)?;
    let non_finite = non_finite_list(&plan, &counts);
    if opts.check_finite {
        refuse_non_finite(&non_finite)?;
    }
    Ok(Staged {
        plan,
        image,
        arch,
        prediction,
        non_finite,
        dropped: layout.dropped,
    })
}

/// Writes a staged checkpoint to exactly `path`, refusing to replace an existing file.
///
/// # Errors
/// I/O errors (an existing `path` is an error of kind `AlreadyExists`), [`Error::Cancelled`].
pub fn write_staged_to_path(
    staged: &Staged,
    path: &Path,
    cancel: Option<&AtomicBool>,
) -> Result<Saved> {
    let start = Instant::now();
    let reservation = naming::reserve_at(path)?;
    let never = AtomicBool::new(false);
    writer::write_image(
        &staged.plan,
        &staged.image,
        reservation.file(),
        reservation.temp_path(),
        cancel.unwrap_or(&never),
    )?;
    let path = reservation.commit()?;
    Ok(Saved {
        path,
        arch: staged.arch,
        prediction: staged.prediction,
        tensors: staged.plan.tensors().len(),
        bytes: staged.plan.file_len(),
        non_finite: staged.non_finite.clone(),
        dropped: staged.dropped.clone(),
        elapsed: start.elapsed(),
    })
}
