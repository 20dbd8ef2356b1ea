//! Running a compiled graph: every file of every save planned and validated first, then written
//! into temporary files, then published together — so no output of a graph survives the failure
//! of another.
//!
//! Files are written one after another, each by the whole engine (every writer thread and the
//! whole staging budget): inside one file the engine already keeps the cores and the storage
//! busy, so writing files side by side would split both without adding throughput.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;

use super::compile::{compile_with, record, CompileOptions, Compiled, InputSummary, SaveFile};
use super::{recipe, Graph, Target};
use crate::error::{Error, Result};
use crate::merge::{LoraReport, RECIPE_KEY};
use crate::model::{Arch, ComponentKind, Components, InputMap, Prediction};
use crate::naming::SaveTarget;
use crate::plan::gguf_target::GgufTarget;
use crate::plan::metadata::{self, MetadataOptions};
use crate::plan::{ComponentDtypes, Plan};
use crate::publish::{reserve_at, Reservation};
use crate::save::{
    lay_out, plan_for_write, refuse_input_as_output, write_unpublished, SaveOptions,
};
use crate::write::{EngineOptions, Method};

/// How a graph is run: what every save of it shares.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The output root (ComfyUI's `output` folder); prefixes never leave it.
    pub output_dir: PathBuf,
    /// Dtype per component (`keep`: each tensor's own, a merged one its first input's, as
    /// ComfyUI rounds a patched weight to its stored dtype).
    pub dtypes: ComponentDtypes,
    /// `prompt` / `workflow` metadata, written into every file (as ComfyUI's save nodes do).
    pub metadata: MetadataOptions,
    /// Record the graph in each file's metadata (`checkpoint_save.recipe`).
    pub recipe: bool,
    /// Refuse to publish anything when a file holds NaN/Inf values.
    pub check_finite: bool,
    /// Show a progress bar per file on stderr when it is a terminal.
    pub progress: bool,
    /// Set to true to cancel; every temporary file is removed and nothing is published.
    pub cancel: Option<Arc<AtomicBool>>,
    /// The writer's settings.
    pub writer: EngineOptions,
    /// Refuse a LoRA any of whose keys is not applied.
    pub strict: bool,
    /// Refuse a merge whose other models lack keys of its first (ComfyUI keeps the first's
    /// tensors there, which the plan's notes list); `merge` without `--allow-missing`.
    pub refuse_missing: bool,
    /// Where merged tensors are computed (`None`: the host, or the GPU every operand is on).
    pub device: Option<Device>,
    /// Write every save's denoiser alone as a GGUF file of this target (`.gguf`, as
    /// [`crate::save_gguf`]; the target's types replace `dtypes.model` there); text-encoder and
    /// VAE saves stay safetensors.
    pub gguf: Option<GgufTarget>,
}

impl RunOptions {
    /// ComfyUI's defaults, writing under `output_dir`.
    pub fn new(output_dir: impl Into<PathBuf>) -> RunOptions {
        RunOptions {
            output_dir: output_dir.into(),
            dtypes: ComponentDtypes::default(),
            metadata: MetadataOptions::default(),
            recipe: true,
            check_finite: false,
            progress: false,
            cancel: None,
            writer: EngineOptions::default(),
            strict: false,
            refuse_missing: false,
            device: None,
            gguf: None,
        }
    }
}

/// One file a graph will write (a dry run) or wrote.
#[derive(Debug, Clone)]
pub struct PlannedFile {
    /// The save node's id.
    pub node: String,
    /// Its class.
    pub class: String,
    /// Where the file goes (for a prefix: the name the counter gives now).
    pub path: PathBuf,
    /// The file's size.
    pub bytes: u64,
    /// Its tensors.
    pub tensors: usize,
    /// The architecture laid out (`None` for text-encoder and VAE files).
    pub arch: Option<Arch>,
}

/// What a graph would do: its inputs, the files and what is not run.
#[derive(Debug, Clone)]
pub struct GraphPlan {
    /// Every loader a save reads.
    pub inputs: Vec<InputSummary>,
    /// Every file, in the order they are written.
    pub files: Vec<PlannedFile>,
    /// Nodes no save reads: `node id (class)`.
    pub unused: Vec<String>,
    /// Notes about merges.
    pub notes: Vec<String>,
    /// What each LoRA node applies: node id and report.
    pub loras: Vec<(String, LoraReport)>,
    /// Tensors computed from more than one source.
    pub merged: usize,
}

impl GraphPlan {
    /// Bytes of tensor data the run reads (each input file once).
    pub fn read_bytes(&self) -> u64 {
        self.inputs.iter().map(|i| i.bytes).sum()
    }
}

/// One file written.
#[derive(Debug, Clone)]
pub struct Written {
    /// The save node's id.
    pub node: String,
    /// Its class.
    pub class: String,
    /// The published file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Its tensors.
    pub tensors: usize,
    /// The architecture laid out.
    pub arch: Option<Arch>,
    /// The prediction written.
    pub prediction: Prediction,
    /// Tensors holding NaN/Inf values, with their counts.
    pub non_finite: Vec<(String, u64)>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The plan it ran (inputs, notes, LoRAs, what was not run).
    pub plan: GraphPlan,
    /// The files, in the order they were written.
    pub written: Vec<Written>,
    /// Wall time from compiling to the last publish.
    pub elapsed: Duration,
}

/// A file ready to plan: its components and options.
struct Job {
    node: usize,
    file: SaveFile,
    opts: SaveOptions,
    /// The GGUF target of a file holding a denoiser, under `--gguf`.
    gguf: Option<GgufTarget>,
}

/// What [`run`] and [`plan`] share: the compiled graph and one job per file.
fn prepare(graph: &Graph, opts: &RunOptions) -> Result<(Compiled, Vec<Job>)> {
    let compiled = compile_with(
        graph,
        &CompileOptions {
            strict: opts.strict,
            refuse_missing: opts.refuse_missing,
            device: opts.device.clone(),
        },
    )?;
    let records = compiled
        .inputs
        .iter()
        .map(|s| Ok((s.node.clone(), record(s)?)))
        .collect::<Result<BTreeMap<_, _>>>()?;
    let mut jobs = Vec::new();
    for save in &compiled.saves {
        let text = opts
            .recipe
            .then(|| recipe::describe(graph, save.node, &records));
        for file in &save.files {
            let mut metadata = opts.metadata.clone();
            if !metadata.disable {
                for (k, v) in &file.extra_metadata {
                    metadata.extra.insert(k.clone(), v.clone());
                }
            }
            if let Some(t) = &text {
                metadata.extra.insert(RECIPE_KEY.to_string(), t.clone());
            }
            let save_opts = SaveOptions {
                layout: file.layout.clone(),
                prediction: file.prediction,
                dtypes: match file.dtype_of {
                    ComponentKind::Model => opts.dtypes,
                    kind => ComponentDtypes::all(opts.dtypes.get(kind)),
                },
                output_dir: opts.output_dir.clone(),
                prefix: match &file.target {
                    Target::Prefix(p) => p.clone(),
                    Target::File(_) => String::new(),
                },
                metadata,
                check_finite: opts.check_finite,
                progress: opts.progress,
                cancel: opts.cancel.clone(),
                writer: opts.writer,
                // ComfyUI's save nodes write what the graph computed; nothing is quantized anew.
                quantize: None,
            };
            let denoiser = file.dtype_of == ComponentKind::Model
                && file.components.get(ComponentKind::Model).is_some();
            jobs.push(Job {
                node: save.node,
                file: file.clone(),
                opts: save_opts,
                gguf: opts.gguf.clone().filter(|_| denoiser),
            });
        }
    }
    refuse_same_file(graph, &jobs)?;
    Ok((compiled, jobs))
}

/// [`Error::InvalidInput`] when two files are given the same exact path (prefixes get
/// successive counters, as ComfyUI running the saves one after another gives them).
fn refuse_same_file(graph: &Graph, jobs: &[Job]) -> Result<()> {
    let mut seen: BTreeMap<PathBuf, usize> = BTreeMap::new();
    for job in jobs {
        let Target::File(p) = &job.file.target else {
            continue;
        };
        let key = lexical(p);
        if let Some(&other) = seen.get(&key) {
            let describe = |i: usize| graph.nodes()[i].describe();
            return Err(Error::InvalidInput(format!(
                "{} and {} both write {}; give each save its own file",
                describe(other),
                describe(job.node),
                p.display()
            )));
        }
        seen.insert(key, job.node);
    }
    Ok(())
}

/// `p` made absolute and normalised without touching the file system.
fn lexical(p: &Path) -> PathBuf {
    let abs = match p.is_absolute() {
        true => p.to_path_buf(),
        false => std::env::current_dir().unwrap_or_default().join(p),
    };
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// A file's layout, plan and write method for `title`: everything validated, nothing created.
fn plan_file(
    job: &Job,
    title: &str,
    folder: &Path,
) -> Result<(Plan, Method, Option<Arch>, Prediction)> {
    let c = &job.file.components;
    if let Some(target) = &job.gguf {
        // ModelSave's file is laid out generically under its family's prefix: the GGUF is of
        // that family.
        let mut opts = job.opts.clone();
        // The GGUF type sets the denoiser's types (`RunOptions::gguf`), not the dtypes.
        opts.dtypes.model = crate::TargetDtype::Keep;
        if let (crate::save::LayoutChoice::Generic(_), Some(a)) = (&opts.layout, job.file.modelspec)
        {
            opts.layout = crate::save::LayoutChoice::Arch(a);
        }
        let (plan, method, arch) = crate::save_gguf::plan_gguf(c, target, &opts, folder)?;
        let prediction = job.opts.prediction.unwrap_or(arch.default_prediction());
        return Ok((plan, method, Some(arch), prediction));
    }
    let (arch, prediction, layout) = lay_out(c, &job.opts.layout, job.opts.prediction)?;
    let arch = arch.or(job.file.modelspec);
    let meta = metadata::build(arch, prediction, title, &job.opts.metadata);
    let (plan, method) = plan_for_write(&layout, arch, c, &meta, &job.opts, folder)?;
    Ok((plan, method, arch, prediction))
}

/// Where a job's prefix names its file (`.gguf` for a GGUF target).
fn resolve(job: &Job, prefix: &str) -> Result<SaveTarget> {
    let t = SaveTarget::resolve(prefix, &job.opts.output_dir)?;
    Ok(match job.gguf {
        Some(_) => t.with_extension("gguf"),
        None => t,
    })
}

/// The folder a job writes into and the title its counter-less plan uses.
fn provisional(job: &Job) -> Result<(PathBuf, String)> {
    match &job.file.target {
        Target::Prefix(p) => {
            let t = resolve(job, p)?;
            Ok((t.folder, format!("{} {}", t.filename, u64::MAX)))
        }
        Target::File(p) => {
            refuse_input_as_output(&job.file.components, p)?;
            let folder = crate::publish::folder_of(p).to_path_buf();
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok((folder, stem))
        }
    }
}

/// One file of a graph, as a single save takes it.
#[derive(Debug, Clone)]
pub struct FileJob {
    /// The save node's id.
    pub node: String,
    /// The file's tensors (merged tensors are expressions, computed when written).
    pub components: Components,
    /// The options the graph gives the file: layout, prediction, dtypes, metadata with the
    /// recipe, the run's checks, progress, cancel flag and writer. The prefix is the save's
    /// (empty for a save to an exact file); nothing is quantized.
    pub options: SaveOptions,
    /// The family of the file's denoiser: its layout's, or for a denoiser alone (ModelSave's
    /// generic layout), the family its `modelspec.*` keys name.
    pub family: Option<Arch>,
}

/// Compiles `graph` and returns each of its files as the components and options of a single
/// save, for a caller that saves them itself ([`crate::save`], [`crate::save_gguf`],
/// [`crate::dry_run`]) with settings a workflow has no place for (quantization, a prediction
/// of its own); the plan's `files` is empty, since the caller plans them.
///
/// # Errors
/// As [`plan`], up to compiling the graph; [`RunOptions::gguf`] is not read.
pub fn file_jobs(graph: &Graph, opts: &RunOptions) -> Result<(GraphPlan, Vec<FileJob>)> {
    let (compiled, jobs) = prepare(graph, opts)?;
    let files = jobs
        .into_iter()
        .map(|job| FileJob {
            node: graph.nodes()[job.node].id.clone(),
            family: match job.file.layout {
                crate::save::LayoutChoice::Arch(a) => Some(a),
                _ => job.file.modelspec,
            },
            components: job.file.components,
            options: job.opts,
        })
        .collect();
    Ok((summary(graph, compiled, Vec::new()), files))
}

/// Compiles `graph` and plans every file it would write, creating nothing: the inputs and their
/// bytes, each file's path (for a prefix, the counter it would get now), size and tensors.
///
/// # Errors
/// As [`run`], up to the first byte written.
pub fn plan(graph: &Graph, opts: &RunOptions) -> Result<GraphPlan> {
    let (compiled, jobs) = prepare(graph, opts)?;
    let mut files = Vec::new();
    // Counters given so far per folder and name: saves sharing a prefix count on.
    let mut given: BTreeMap<(PathBuf, String), u64> = BTreeMap::new();
    for job in &jobs {
        let (folder, mut title) = provisional(job)?;
        let path = match &job.file.target {
            Target::File(p) => p.clone(),
            Target::Prefix(p) => {
                let t = resolve(job, p)?;
                // Without creating the folder: a missing one starts at 1.
                let scanned = match t.folder.is_dir() {
                    true => t.next_counter()?,
                    false => 1,
                };
                let slot = given
                    .entry((t.folder.clone(), t.filename.clone()))
                    .or_insert(0);
                *slot = scanned.max(*slot + 1);
                // The title the save will write (the header's length depends on it).
                title = format!("{} {}", t.filename, *slot);
                t.folder.join(t.file_name(*slot))
            }
        };
        let (plan, _, arch, _) = plan_file(job, &title, &folder).map_err(|e| at(graph, job, e))?;
        files.push(PlannedFile {
            node: graph.nodes()[job.node].id.clone(),
            class: graph.nodes()[job.node].class().to_string(),
            path,
            bytes: plan.file_len(),
            tensors: plan.tensors().len(),
            arch,
        });
    }
    Ok(summary(graph, compiled, files))
}

fn summary(graph: &Graph, compiled: Compiled, files: Vec<PlannedFile>) -> GraphPlan {
    GraphPlan {
        unused: compiled
            .unused
            .iter()
            .map(|&i| graph.nodes()[i].describe())
            .collect(),
        inputs: compiled.inputs,
        files,
        notes: compiled.notes,
        loras: compiled.loras,
        merged: compiled.merged,
    }
}

/// `e`, said to be about the job's save node.
fn at(graph: &Graph, job: &Job, e: Error) -> Error {
    let me = graph.nodes()[job.node].describe();
    match e {
        Error::InvalidInput(m) => Error::InvalidInput(format!("{me}: {m}")),
        Error::MissingComponent { component, hint } => Error::MissingComponent {
            component,
            hint: format!("{hint} ({me})"),
        },
        other => other,
    }
}

/// Runs `graph`: compiles it, plans and validates every file, writes each into a temporary file,
/// and publishes them all once every one is complete. An error anywhere (a bad input, a failed
/// write, NaN/Inf with `check_finite`, a cancellation) leaves no file of the graph behind; a
/// publish that fails after others succeeded removes the ones this run published.
///
/// # Errors
/// As [`super::compile`]; layout and planning errors of each file (naming its save node); naming
/// errors; two saves given the same exact path; write errors; [`Error::NonFinite`] with
/// `check_finite`; [`Error::Cancelled`].
pub fn run(graph: &Graph, opts: &RunOptions) -> Result<RunReport> {
    let start = Instant::now();
    let (compiled, jobs) = prepare(graph, opts)?;
    // Validate every file before any exists.
    let mut folders = Vec::with_capacity(jobs.len());
    for job in &jobs {
        let (folder, title) = provisional(job)?;
        plan_file(job, &title, &folder).map_err(|e| at(graph, job, e))?;
        folders.push(folder);
    }
    // Reserve every name in graph order (successive counters for a shared prefix), then write.
    let mut reserved: Vec<Reservation> = Vec::with_capacity(jobs.len());
    for job in &jobs {
        reserved.push(match &job.file.target {
            Target::Prefix(p) => resolve(job, p)?.reserve()?,
            Target::File(p) => reserve_at(p)?,
        });
    }
    let mut done = Vec::with_capacity(jobs.len());
    for ((job, reservation), folder) in jobs.iter().zip(&reserved).zip(&folders) {
        let (plan, method, arch, prediction) =
            plan_file(job, reservation.title(), folder).map_err(|e| at(graph, job, e))?;
        let non_finite = write_unpublished(&plan, reservation, method, &job.opts)?;
        done.push((plan, arch, prediction, non_finite));
    }
    // Every file is complete: publish them all, or none.
    let mut written: Vec<Written> = Vec::with_capacity(jobs.len());
    for ((job, reservation), (plan, arch, prediction, non_finite)) in
        jobs.iter().zip(reserved).zip(done)
    {
        match reservation.commit() {
            Ok(path) => written.push(Written {
                node: graph.nodes()[job.node].id.clone(),
                class: graph.nodes()[job.node].class().to_string(),
                path,
                bytes: plan.file_len(),
                tensors: plan.tensors().len(),
                arch,
                prediction,
                non_finite,
            }),
            Err(e) => {
                for w in &written {
                    // Published by this run a moment ago; nothing else can have it yet.
                    let _ = std::fs::remove_file(&w.path);
                }
                return Err(e);
            }
        }
    }
    let files = written
        .iter()
        .map(|w| PlannedFile {
            node: w.node.clone(),
            class: w.class.clone(),
            path: w.path.clone(),
            bytes: w.bytes,
            tensors: w.tensors,
            arch: w.arch,
        })
        .collect();
    Ok(RunReport {
        plan: summary(graph, compiled, files),
        written,
        elapsed: start.elapsed(),
    })
}

/// ComfyUI's CLIPSave: one file per text encoder, in the order of its prefix list, the encoder's
/// prefix and then `transformer.` stripped from each key, and `_<encoder>` added to the prefix.
pub(super) fn clip_files(
    me: &str,
    mut tensors: InputMap,
    target: &Target,
) -> Result<Vec<SaveFile>> {
    const PREFIXES: [&str; 12] = [
        "clip_l.",
        "clip_g.",
        "clip_h.",
        "t5xxl.",
        "pile_t5xl.",
        "mt5xl.",
        "umt5xxl.",
        "t5base.",
        "gemma2_2b.",
        "llama.",
        "hydit_clip.",
        "",
    ];
    let mut files = Vec::new();
    for prefix in PREFIXES {
        let keys: Vec<String> = tensors
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        if keys.is_empty() {
            continue;
        }
        let mut part = InputMap::new();
        for k in keys {
            let Some(t) = tensors.remove(&k) else {
                continue;
            };
            let rest = &k[prefix.len()..];
            let name = rest.strip_prefix("transformer.").unwrap_or(rest);
            if part.insert(name.to_string(), t).is_some() {
                return Err(Error::InvalidInput(format!(
                    "{me}: two text-encoder tensors are both `{name}` once `{prefix}` and \
                     `transformer.` are taken off"
                )));
            }
        }
        let suffix = prefix.trim_end_matches('.');
        let target = match (target, suffix.is_empty()) {
            (t, true) => t.clone(),
            (Target::Prefix(p), false) => Target::Prefix(format!("{p}_{suffix}")),
            (Target::File(p), false) => {
                let stem = p
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let ext = p
                    .extension()
                    .map(|e| format!(".{}", e.to_string_lossy()))
                    .unwrap_or_default();
                Target::File(p.with_file_name(format!("{stem}_{suffix}{ext}")))
            }
        };
        let mut components = Components::default();
        components.set_inputs(ComponentKind::Model, part);
        files.push(SaveFile {
            components,
            layout: crate::save::LayoutChoice::plain(),
            prediction: None,
            target,
            extra_metadata: vec![("format".into(), "pt".into())],
            modelspec: None,
            dtype_of: ComponentKind::Clip,
        });
    }
    if files.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{me}: the text encoders have no tensors to save"
        )));
    }
    Ok(files)
}
