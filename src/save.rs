//! The save pipeline: layout → plan → write → publish, with every check before the file exists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::layout::{self, detect, GenericPrefixes, Layout, LayoutKind};
use crate::model::{Arch, ComponentKind, Components, IntoTensorMap, Prediction};
use crate::naming::SaveTarget;
use crate::offload;
use crate::plan::metadata::{self, MetadataOptions};
use crate::plan::{ComponentDtypes, Plan, PlanOptions};
use crate::progress::Progress;
use crate::publish::{reserve_at, Reservation};
use crate::quant::Quantize;
use crate::write::{self, EngineOptions, Method};

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

impl LayoutChoice {
    /// Every tensor under its own name: the generic layout with empty prefixes (what candle's
    /// `safetensors::save` and `VarMap::save` write).
    pub fn plain() -> LayoutChoice {
        LayoutChoice::Generic(GenericPrefixes {
            model: String::new(),
            clip: String::new(),
            vae: String::new(),
            clip_vision: String::new(),
        })
    }
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
    /// Refuse to publish a checkpoint whose values hold NaN/Inf: the source values, counted
    /// before their rounding into the file dtype (a finite value that overflows to Inf in f16
    /// is not counted; an Inf that fp8 saturates is).
    pub check_finite: bool,
    /// Show a progress bar on stderr when it is a terminal.
    pub progress: bool,
    /// Set to true (e.g. from a Ctrl-C handler) to cancel; the temporary file is removed.
    pub cancel: Option<Arc<AtomicBool>>,
    /// How the writer puts the bytes into the file.
    pub writer: EngineOptions,
    /// Layers written in a quantized format (`--quantize`): the denoiser's linear weights by
    /// default; `None` quantizes nothing (quantized inputs are kept with `--dtype keep`, and
    /// dequantized into any other dtype).
    pub quantize: Option<Quantize>,
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
            writer: EngineOptions::default(),
            quantize: None,
        }
    }
}

impl SaveOptions {
    /// Options that write tensors under their own names and nothing else: the [plain
    /// layout](LayoutChoice::plain), no `prompt` or provenance metadata, dtypes as held; the
    /// writer's defaults. What [`save_tensors`] uses; change a field to cast or tune the writer.
    pub fn plain() -> SaveOptions {
        let mut opts = SaveOptions {
            layout: LayoutChoice::plain(),
            ..SaveOptions::default()
        };
        opts.metadata.disable = true;
        opts.metadata.provenance = false;
        opts
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
    /// Tensors whose source values hold NaN/Inf, with their counts (see
    /// [`SaveOptions::check_finite`]).
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
    // A name too long for the file system is refused before any input is read.
    target.check_name_length(1)?;
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
    refuse_input_as_output(components, path)?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let folder = crate::publish::folder_of(path);
    save_with(components, opts, &stem, folder, || reserve_at(path))
}

/// Writes named tensors to exactly `path` under their own names: the counterpart of candle's
/// `safetensors::save(&map, path)` and `VarMap::save(path)`, with this crate's engine (casts
/// fused, parallel writes, bounded staging memory, tensors on any device) and its publish
/// guarantees (a temporary file in the same folder, fsync, then a rename that never replaces
/// an existing file; nothing left behind on error). Takes a `HashMap`/`BTreeMap` of tensors, a
/// `&VarMap`, or pairs. No architecture is detected and no key is renamed; for dtypes or writer
/// settings use [`save_to_path`] with [`SaveOptions::plain`].
///
/// ```
/// use std::collections::HashMap;
/// use candle_core::{DType, Device, Tensor};
///
/// # fn main() -> checkpoint_save::Result<()> {
/// let mut weights = HashMap::new();
/// weights.insert("layer.weight".to_string(), Tensor::ones((4, 8), DType::F32, &Device::Cpu)?);
/// weights.insert("layer.bias".to_string(), Tensor::zeros(4, DType::F32, &Device::Cpu)?);
/// let path = std::env::temp_dir().join(format!("weights-{}.safetensors", std::process::id()));
///
/// let saved = checkpoint_save::save_tensors(&weights, &path)?;
/// assert_eq!(saved.tensors, 2);
/// // candle reads it back as it wrote it.
/// let back = candle_core::safetensors::load(&path, &Device::Cpu)?;
/// assert_eq!(back["layer.weight"].dims(), &[4, 8]);
/// // The file is never replaced: a second save to the same path is refused.
/// assert!(checkpoint_save::save_tensors(&weights, &path).is_err());
/// # std::fs::remove_file(&path).ok();
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// As [`save_to_path`]: an I/O error of kind `AlreadyExists` when `path` exists, planning and
/// write errors; on error no file is left under any name.
pub fn save_tensors(tensors: impl IntoTensorMap, path: impl AsRef<Path>) -> Result<Saved> {
    save_to_path(
        &Components::new(tensors),
        path.as_ref(),
        &SaveOptions::plain(),
    )
}

/// [`Error::InvalidInput`] when `path` is one of the files the components are read from.
pub(crate) fn refuse_input_as_output(components: &Components, path: &Path) -> Result<()> {
    let Ok(out) = std::fs::canonicalize(path) else {
        return Ok(());
    };
    let mut clash = None;
    for t in components.tensors() {
        t.input_files(&mut |f| {
            if std::fs::canonicalize(f.path()).is_ok_and(|p| p == out) {
                clash = Some(out.clone());
            }
        });
        if clash.is_some() {
            break;
        }
    }
    match clash {
        Some(p) => Err(Error::InvalidInput(format!(
            "{} is an input of this job and cannot also be its output; choose another output path",
            p.display()
        ))),
        None => Ok(()),
    }
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
        prediction.unwrap_or_else(|| arch.map_or(Prediction::Unknown, Arch::default_prediction));
    let layout = layout::layout(&kind, &shapes, prediction)?;
    Ok((arch, prediction, layout))
}

/// The write method of a save of `plan` into `folder`. Whether a device pipeline fills some of
/// its pieces is asked of the planned pieces, with the same predicate the writer groups them by
/// ([`offload::device::pipeline_source`]): pipelines write at arbitrary offsets, so such a plan is
/// never written with direct I/O (whose units would cover, and write, those pieces again).
pub(crate) fn write_method(plan: &Plan, opts: &SaveOptions, folder: &Path) -> Method {
    opts.writer
        .backend
        .resolve(folder, offload::device::any_pipeline(plan))
}

/// Plans `components` for a save into `folder` and chooses its write method: a plan with the
/// reference's 8-byte alignment says which pieces a device pipeline fills, and the file is
/// planned again with the method's alignment when that differs.
///
/// # Errors
/// Planning errors.
pub(crate) fn plan_for_write(
    layout: &Layout,
    arch: Option<Arch>,
    components: &Components,
    metadata: &BTreeMap<String, String>,
    opts: &SaveOptions,
    folder: &Path,
) -> Result<(Plan, Method)> {
    let plan = Plan::new(layout, components, metadata, &reference_plan(opts, arch))?;
    let method = write_method(&plan, opts, folder);
    if method.data_alignment() == reference_plan(opts, arch).data_alignment {
        return Ok((plan, method));
    }
    let aligned = PlanOptions {
        data_alignment: method.data_alignment(),
        ..reference_plan(opts, arch)
    };
    Ok((Plan::new(layout, components, metadata, &aligned)?, method))
}

/// The plan options of `opts` (for a layout of `arch`) with the reference layout's data
/// alignment.
fn reference_plan(opts: &SaveOptions, arch: Option<Arch>) -> PlanOptions {
    PlanOptions {
        dtypes: opts.dtypes,
        quantize: opts.quantize.clone().map(Arc::new),
        arch,
        ..PlanOptions::default()
    }
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
    let meta = |title: &str| metadata::build(arch, prediction, title, &opts.metadata);
    // Validate everything before a file exists, and choose the method from the planned pieces;
    // the title only changes the header's length.
    let probe = Plan::new(
        &layout,
        components,
        &meta(provisional_title),
        &reference_plan(opts, arch),
    )?;
    let method = write_method(&probe, opts, folder);
    drop(probe);
    let plan_opts = PlanOptions {
        data_alignment: method.data_alignment(),
        ..reference_plan(opts, arch)
    };
    let reservation = reserve()?;
    let plan = Plan::new(&layout, components, &meta(reservation.title()), &plan_opts)?;
    let (path, non_finite) = write_reserved(&plan, reservation, method, opts)?;
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

/// Writes `plan` into the reserved temporary file and publishes it; returns the published path
/// and the tensors holding NaN/Inf values.
///
/// # Errors
/// Write errors, [`Error::NonFinite`] with `opts.check_finite`, publish errors; the temporary
/// file is removed on every error.
pub(crate) fn write_reserved(
    plan: &Plan,
    reservation: Reservation,
    method: Method,
    opts: &SaveOptions,
) -> Result<(PathBuf, Vec<(String, u64)>)> {
    let non_finite = write_unpublished(plan, &reservation, method, opts)?;
    Ok((reservation.commit()?, non_finite))
}

/// Writes `plan` into the reserved temporary file and runs every check that comes before the
/// publish (NaN/Inf with `opts.check_finite`, cancellation, inputs unchanged), without
/// publishing: what a job writing several files does for each before it commits any.
///
/// # Errors
/// As [`write_reserved`], before its commit; the caller drops the reservation on error, which
/// removes the temporary file.
pub(crate) fn write_unpublished(
    plan: &Plan,
    reservation: &Reservation,
    method: Method,
    opts: &SaveOptions,
) -> Result<Vec<(String, u64)>> {
    let progress = Progress::new(plan.file_len(), opts.progress);
    let never = AtomicBool::new(false);
    let cancel = opts.cancel.as_deref().unwrap_or(&never);
    let report = write::write(
        plan,
        reservation.file(),
        method,
        &opts.writer,
        &progress,
        cancel,
    );
    progress.finish();
    let non_finite = non_finite_list(plan, &report?.non_finite);
    if opts.check_finite {
        refuse_non_finite(&non_finite)?;
    }
    // A cancellation that came during the last unit still wins over publishing.
    if cancel.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(Error::Cancelled);
    }
    // Bytes read from a file that changed meanwhile may be half old, half new: publish nothing.
    plan.check_inputs_unchanged()?;
    Ok(non_finite)
}

/// [`Error::NonFinite`] when any tensor holds NaN/Inf values.
pub(crate) fn refuse_non_finite(non_finite: &[(String, u64)]) -> Result<()> {
    match non_finite.first() {
        Some((first, first_count)) => Err(Error::NonFinite {
            count: non_finite.len(),
            first: first.clone(),
            first_count: *first_count,
        }),
        None => Ok(()),
    }
}

/// The tensors with a non-zero count, by name.
pub(crate) fn non_finite_list(plan: &Plan, counts: &[u64]) -> Vec<(String, u64)> {
    plan.tensors()
        .iter()
        .zip(counts)
        .filter(|(_, &n)| n > 0)
        .map(|(t, &n)| (t.name.clone(), n))
        .collect()
}
