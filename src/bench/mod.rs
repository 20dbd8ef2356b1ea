//! The `bench` measurement: our job against candle's program and the storage ceiling, side by
//! side.
//!
//! Every figure comes from one run on one machine, so the ratios are meaningful even where the
//! absolute numbers are noisy: after a warm-up, each of (a) our job, (b) the candle program a
//! user would write for it, and (c) raw writes of the same byte count into the same folder is
//! timed `runs` times, interleaved, and the median is reported. All three end with the same
//! `fsync`, so none is credited for leaving data in the page cache. (d), the same parallel raw
//! writes through `O_DIRECT`, is reported beside them but is not part of the ceiling: it bounds
//! what any writer, ours included, could reach in that folder.
//!
//! The job is a save of a synthetic model held by candle, or with `from_file` a file-to-file
//! convert: the model is first written as a single-file checkpoint into the folder (untimed),
//! then (a) opens and converts it and (b) `safetensors::load`s, casts and saves it. Peak resident
//! and peak anonymous memory are reported for each (see the `memory` module).

mod jobs;
mod mecha;
mod memory;
mod python;
mod raw;
mod report;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::error::{Error, IoContext, Result};
use crate::model::{Arch, TargetDtype};
use crate::plan::ComponentDtypes;
use crate::save::{LayoutChoice, SaveOptions};
use crate::write::EngineOptions;
use jobs::{Inputs, Subject};
use raw::{
    accepts_direct_io, random_block, raw_parallel, raw_read, raw_sequential, remove, timed, Sample,
};
pub use report::{BenchReport, Measure};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Synthetic architecture to build.
    pub arch: Arch,
    /// Which of the family's configurations (a variant name such as `wan21-14b`); `None`: the
    /// family's default.
    pub variant: Option<&'static str>,
    /// Dtype the checkpoint is saved in.
    pub dtype: TargetDtype,
    /// Dtype the synthetic model is built in (`None`: the reference's defaults, F32 denoiser;
    /// with `from_file`, F32 throughout, as fine-tuned checkpoints are published).
    pub model_dtype: Option<DType>,
    /// Folder written into (a tmpfs or a disk folder).
    pub output_dir: PathBuf,
    /// Timed repetitions of each measurement (after one warm-up).
    pub runs: usize,
    /// Engine settings of our save.
    pub engine: EngineOptions,
    /// Cap on every dimension (for quick runs); `None` is full size.
    pub max_dim: Option<usize>,
    /// Device the model lives on.
    pub device: Device,
    /// Time a file-to-file convert of the model written as a checkpoint instead of a save of
    /// the model in memory.
    pub from_file: bool,
    /// Where the input checkpoint(s) of `from_file` and `merge` are written (default:
    /// `output_dir`): a disk folder when the output is a tmpfs too small for both.
    pub input_dir: Option<PathBuf>,
    /// Time a file-to-file convert of this checkpoint (the user's own, never removed) instead
    /// of one written from a synthetic model: a model larger than memory, say. `arch` is its
    /// architecture; `variant`, `model_dtype` and `max_dim` do not apply.
    pub input: Option<PathBuf>,
    /// Time a weighted sum of two f32 checkpoints (ratio 0.3, text encoders too, A's VAE)
    /// instead: ours streamed, against candle's load-both-and-combine program.
    pub merge: bool,
    /// With `merge`, also time a bake of a rank-`r` LoRA (every attention and convolution) into
    /// A, beside a plain convert of A.
    pub lora_rank: Option<usize>,
    /// Time a merge graph instead: a chain of ModelMergeSimple nodes over this many
    /// checkpoints (built in `model_dtype`, f16 by default), into one checkpoint.
    pub chain: Option<usize>,
    /// Quantize the denoiser's linear weights into this format (the save's default rule), and
    /// time the Python program a user writes for it (comfy-kitchen) instead of candle's.
    pub quantize: Option<crate::quant::Format>,
    /// Write the denoiser alone as a GGUF file of this type ([`crate::save_gguf`]) instead, and
    /// time the Python program a user writes for it (convert.py's rules with gguf-py's
    /// quantizer, for the types gguf-py quantizes).
    pub gguf: Option<crate::GgufType>,
    /// With `chain`: a merge method node over the chain's checkpoints instead of
    /// ModelMergeSimple nodes (sd-mecha's name and parameters, [`crate::merge::methods`]).
    pub method: Option<BenchMethod>,
}

/// A merge method the benchmark times over its inputs.
#[derive(Debug, Clone)]
pub struct BenchMethod {
    /// sd-mecha's name.
    pub name: String,
    /// Its parameters (the others take their defaults).
    pub params: std::collections::BTreeMap<String, crate::merge::methods::Param>,
}

/// Memory left free beside candle's program, so a benchmark never pushes the machine into the
/// OOM killer.
const CANDLE_MARGIN: u64 = 2 << 30;

/// Runs the benchmark.
///
/// # Errors
/// Errors of building the model, saving, or writing into the output folder;
/// [`Error::InvalidInput`] for `from_file` on a GPU (a convert reads and casts on the host; a
/// merge on a GPU combines its input ranges there).
pub fn run(opts: &BenchOptions) -> Result<BenchReport> {
    if opts.gguf.is_some() && (opts.merge || opts.chain.is_some() || opts.quantize.is_some()) {
        return Err(Error::InvalidInput(
            "--gguf times a save or a file-to-file convert into GGUF; drop merge/run and \
             --quantize"
                .into(),
        ));
    }
    if opts.quantize.is_some() && opts.chain.is_some() {
        return Err(Error::InvalidInput(
            "--quantize times a quantized save, convert or weighted-sum merge; a chain or a \
             merge method is timed unquantized: drop run/--method or --quantize"
                .into(),
        ));
    }
    if opts.input.is_some() && (opts.merge || opts.chain.is_some() || !opts.from_file) {
        return Err(Error::InvalidInput(
            "an input file is timed as a file-to-file convert (with from_file); merges and \
             chains write their own inputs"
                .into(),
        ));
    }
    if opts.from_file && !opts.merge && !opts.device.is_cpu() {
        return Err(Error::InvalidInput(
            "a file-to-file convert reads and casts on the host; drop --device (bench merge \
             takes one)"
                .into(),
        ));
    }
    for dir in std::iter::once(&opts.output_dir).chain(&opts.input_dir) {
        std::fs::create_dir_all(dir)
            .ctx(|| format!("creating the benchmark folder {}", dir.display()))?;
    }
    let name = |dir: &Path, n: &str| {
        dir.join(format!(
            "checkpoint-save-bench-{}-{n}.safetensors",
            std::process::id()
        ))
    };
    let save_opts = {
        let mut s = SaveOptions {
            layout: LayoutChoice::Arch(opts.arch),
            dtypes: ComponentDtypes::all(opts.dtype),
            writer: opts.engine,
            quantize: opts.quantize.map(crate::quant::Quantize::new),
            ..Default::default()
        };
        s.metadata.disable = true;
        s
    };
    let input_dir = opts.input_dir.as_ref().unwrap_or(&opts.output_dir);
    let mut inputs = Inputs(Vec::new());
    let (subject, input_bytes) =
        Subject::prepare(opts, &save_opts, |n| name(input_dir, n), &mut inputs)?;
    let report = measure(opts, &subject, input_bytes, &save_opts, |n| {
        name(&opts.output_dir, n)
    });
    drop(inputs);
    report
}

fn measure(
    opts: &BenchOptions,
    subject: &Subject,
    input_bytes: u64,
    save_opts: &SaveOptions,
    path: impl Fn(&str) -> PathBuf,
) -> Result<BenchReport> {
    let direct_ok = accepts_direct_io(&opts.output_dir, &path("probe"))?;
    // The raw writes and reads run as many workers as our writer does there.
    let writes_direct = opts
        .engine
        .backend
        .resolve(&opts.output_dir, !opts.device.is_cpu())
        == crate::write::Method::Direct;
    let (workers, chunk) = if direct_ok && writes_direct {
        opts.engine.effective_direct()
    } else {
        opts.engine.effective()
    };
    let ours_path = path("ours");
    let candle_path = path("candle");
    let raw_path = path("raw");

    // Warm-up: page in the model, size the checkpoint, start thread pools.
    let (saved, quantized) = {
        let s = subject.ours(opts, save_opts, &ours_path);
        let keys = match &s {
            Ok(_) if opts.gguf.is_some() => python::gguf_types(&ours_path),
            Ok(_) if opts.quantize.is_some() => quantized_keys(&ours_path),
            _ => Ok(Vec::new()),
        };
        remove(&ours_path)?;
        (s?, keys?)
    };
    let bytes = saved.bytes;
    // Quantizing, the program a user writes is Python's (candle has no ComfyUI quantizers); a
    // merge method's is sd-mecha's recipe.
    let python = match (
        opts.quantize.is_some() || opts.gguf.is_some(),
        subject.input_files().first(),
    ) {
        (true, Some(_)) if opts.gguf.is_some_and(|t| !python::gguf_py_quantizes(t)) => {
            Some(Err(format!(
                "gguf-py has no quantizer for {} (llama-quantize, C++, is the tool users run \
                 for the K-quants)",
                opts.gguf.map_or(String::new(), |t| t.to_string())
            )))
        }
        (true, Some(input)) => {
            let found = match opts.gguf {
                Some(_) => python::find_gguf(),
                None => python::find(),
            };
            Some(
                found.and_then(|p| match candle_fits(2 * input_bytes + bytes) {
                    Some(why) => Err(format!("it loads the whole model: {why}")),
                    None => Ok(PyJob::Quant(p, input.to_path_buf())),
                }),
            )
        }
        (true, None) => Some(Err(
            "the Python program starts from a file: give --from-file".to_string(),
        )),
        (false, _) => opts
            .method
            .as_ref()
            .map(|m| mecha::MechaJob::find(m, opts.arch, opts.dtype).map(PyJob::Mecha)),
    };
    let candle_skipped = match opts.quantize {
        _ if opts.gguf.is_some() => Some(
            "candle's GGUF writer holds every tensor whole and its Q2_K/Q4_K/Q5_K codes are not \
             ggml's: the Python program (convert.py's rules, gguf-py) is timed instead"
                .to_string(),
        ),
        Some(_) => Some(
            "candle has no ComfyUI quantizers: the Python program (comfy-kitchen) is timed \
             instead"
                .to_string(),
        ),
        None => subject
            .no_candle()
            .or_else(|| candle_fits(subject.candle_holds(input_bytes) + bytes)),
    };
    let block = random_block(8 << 20)?;
    let block = block.as_slice();
    if candle_skipped.is_none() {
        timed(|| subject.candle(opts, &candle_path), &candle_path)?;
    }
    // Warm-up of the bake too, which also says whether one is timed.
    let baking = subject.bake(opts, save_opts, &ours_path)?.is_some();
    remove(&ours_path)?;

    let python_path = path("python");
    let files = subject.input_files();
    // The warm-up says whether the Python program runs here at all; one that fails is
    // reported as skipped, with its message, rather than failing our measurement.
    let python = match python {
        Some(Ok(job)) => {
            let warm = || python_job(opts, &job, &files, &python_path, &quantized);
            Some(match timed(warm, &python_path) {
                Ok(_) => Ok(job),
                Err(e) => Err(format!("its warm-up failed: {e}")),
            })
        }
        other => other,
    };
    let mut py_runs = Vec::new();
    let (mut ours, mut candle, mut seq, mut par) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut direct, mut bake, mut plain, mut read) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let parallel = |d| raw_parallel(&raw_path, bytes, workers, chunk, block, d);
    for _ in 0..opts.runs.max(1) {
        let job = || subject.ours(opts, save_opts, &ours_path).map(drop);
        ours.push(timed(job, &ours_path)?);
        if candle_skipped.is_none() {
            let job = || subject.candle(opts, &candle_path);
            candle.push(timed(job, &candle_path)?);
        }
        if let Some(Ok(py)) = &python {
            let job = || python_job(opts, py, &files, &python_path, &quantized);
            py_runs.push(timed(job, &python_path)?);
        }
        if baking {
            let job = || subject.bake(opts, save_opts, &ours_path).map(drop);
            bake.push(timed(job, &ours_path)?);
            let job = || subject.plain(opts, save_opts, &ours_path).map(drop);
            plain.push(timed(job, &ours_path)?);
        }
        seq.push(timed(
            || raw_sequential(&raw_path, bytes, block),
            &raw_path,
        )?);
        par.push(timed(|| parallel(false), &raw_path)?);
        if direct_ok {
            direct.push(timed(|| parallel(true), &raw_path)?);
        }
        if !files.is_empty() {
            let job = || raw_read(&files, workers, chunk, 8 << 20);
            read.push(timed(job, &raw_path)?);
        }
    }
    let of = |runs: &Vec<Sample>| (!runs.is_empty()).then(|| Measure::of(runs, bytes));
    let (ours, candle) = (Measure::of(&ours, bytes), of(&candle));
    let python_measure = of(&py_runs);
    let python_peak_rss_bytes = python_measure.as_ref().map(|_| python::children_peak_rss());
    let (seq, par) = (Measure::of(&seq, bytes), Measure::of(&par, bytes));
    let (lora_bake, plain_convert) = (of(&bake), of(&plain));
    let raw_direct = of(&direct);
    let raw_read = (!read.is_empty()).then(|| Measure::of(&read, input_bytes));
    let raw_best_gbps = raw_direct
        .as_ref()
        .map_or(0.0, |m| m.gbps)
        .max(seq.gbps)
        .max(par.gbps);
    let device_copy_gbps = if opts.device.is_cpu() {
        None
    } else {
        let size = usize::try_from(bytes.min(1 << 30)).unwrap_or(1 << 30);
        Some(crate::offload::pinned_copy_ceiling(&opts.device, size)?)
    };
    let storage = seq.gbps.max(par.gbps);
    let ceiling_gbps = device_copy_gbps.map_or(storage, |d| d.min(storage));
    let candle_gbps = candle.as_ref().map(|c| c.gbps);
    // Reads and writes overlap in a job, so the storage needs the longer of the two.
    let ratio_job_ceiling = raw_read
        .as_ref()
        .map(|r| (bytes as f64 / ceiling_gbps / 1e9).max(r.median_s) / ours.median_s);
    let ratio_bake_to_convert = match (&lora_bake, &plain_convert) {
        (Some(b), Some(p)) => Some(b.median_s / p.median_s),
        _ => None,
    };
    let input_gbps = (input_bytes > 0).then(|| input_bytes as f64 / ours.median_s / 1e9);
    let ratio_python = python_measure.as_ref().map(|p| p.median_s / ours.median_s);
    Ok(BenchReport {
        quantize: opts
            .quantize
            .map(|f| f.to_string())
            .or(opts.gguf.map(|t| format!("GGUF {t}"))),
        input_gbps,
        python_skipped: match &python {
            Some(Err(why)) => Some(why.clone()),
            _ => None,
        },
        python: python_measure,
        ratio_python,
        python_peak_rss_bytes,
        job: match &opts.method {
            Some(m) => format!("merge --method {}", m.name),
            None => subject.name().into(),
        },
        arch: opts
            .variant
            .map_or_else(|| opts.arch.to_string(), str::to_string),
        dtype: opts.dtype.to_string(),
        device: format!("{:?}", opts.device.location()),
        output_dir: opts.output_dir.display().to_string(),
        bytes,
        input_bytes: (input_bytes > 0).then_some(input_bytes),
        input_dir: (input_bytes > 0).then(|| match &opts.input {
            Some(p) => p.display().to_string(),
            None => opts
                .input_dir
                .as_ref()
                .unwrap_or(&opts.output_dir)
                .display()
                .to_string(),
        }),
        tensors: saved.tensors,
        threads: workers,
        chunk_size: chunk,
        staging_budget: opts.engine.staging_budget,
        ours_gbps: ours.gbps,
        candle_gbps,
        device_copy_gbps,
        ceiling_gbps,
        ratio_ceiling: ours.gbps / ceiling_gbps,
        ratio_candle: candle_gbps.map(|c| ours.gbps / c),
        raw_best_gbps,
        ratio_candle_bound: candle_gbps.map(|c| raw_best_gbps / c),
        peak_rss_bytes: ours.peak_rss_extra_bytes,
        peak_anon_extra_bytes: ours.peak_anon_extra_bytes,
        peak_anon_bytes: ours.peak_anon_bytes,
        candle_skipped,
        ours,
        candle,
        ceiling_sequential: seq,
        ceiling_parallel: par,
        raw_direct,
        raw_read,
        ratio_job_ceiling,
        lora_bake,
        plain_convert,
        ratio_bake_to_convert,
        lora_gflop: subject.lora_flop().map(|f| f / 1e9),
    })
}

/// The Python program a user runs for the job.
enum PyJob {
    /// Kitchen's quantizer, or convert.py's rules with gguf-py's, over one input file.
    Quant(PathBuf, PathBuf),
    /// sd-mecha's recipe of the merge method over the inputs.
    Mecha(mecha::MechaJob),
}

/// Runs the Python program of the job into `out`.
fn python_job(
    opts: &BenchOptions,
    job: &PyJob,
    files: &[&Path],
    out: &Path,
    keys: &[String],
) -> Result<()> {
    match (job, opts.gguf) {
        (PyJob::Mecha(m), _) => m.run(files, out),
        (PyJob::Quant(py, input), Some(_)) => python::run_gguf(py, input, out, keys),
        (PyJob::Quant(py, input), None) => {
            let format = opts.quantize.unwrap_or(crate::quant::Format::Nvfp4);
            python::run(py, input, out, format, keys)
        }
    }
}

/// The codes' keys of the layers a checkpoint holds quantized (those the Python program
/// quantizes too).
fn quantized_keys(path: &Path) -> Result<Vec<String>> {
    let st = crate::read::SafetensorsFile::open(path)?;
    let mut keys: Vec<String> = st
        .tensors()
        .iter()
        .filter_map(|t| {
            let layer = t
                .name
                .strip_suffix(".comfy_quant")
                .or_else(|| t.name.strip_suffix(".scale_weight"))?;
            Some(format!("{layer}.weight"))
        })
        .collect();
    keys.sort();
    Ok(keys)
}

/// Why candle's program, which holds `bytes` in memory at once, cannot run here (`None`: it
/// fits, or the available memory is unknown).
fn candle_fits(bytes: u64) -> Option<String> {
    let available = memory::available()?;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    (bytes + CANDLE_MARGIN > available).then(|| {
        format!(
            "it holds {:.1} GiB at once and {:.1} GiB are available (keeping {:.0} GiB free)",
            gib(bytes),
            gib(available),
            gib(CANDLE_MARGIN)
        )
    })
}

#[cfg(test)]
mod tests;
