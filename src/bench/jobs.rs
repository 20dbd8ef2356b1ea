//! What the benchmark times: a save from memory, a file-to-file convert, or a merge of two files
//! (with a LoRA bake beside it) — each as our job and as the candle program a user would write.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::raw::{candle_file_to_file, candle_save, remove, save_synced};
use super::BenchOptions;
use crate::error::{IoContext, Result};
use crate::layout::GenericPrefixes;
use crate::merge::{merge, Lora, LoraBake, Operation, Recipe};
use crate::model::{Components, TargetDtype};
use crate::plan::ComponentDtypes;
use crate::save::{save_to_path, LayoutChoice, SaveOptions, Saved};
use crate::synthetic::{self, SyntheticOptions};

/// The ratio of the benchmark's weighted sums (as the sd-mecha comparison).
pub(super) const RATIO: f64 = 0.3;

/// What (a) and (b) start from.
pub(super) enum Subject {
    /// A synthetic model held by candle.
    Memory(Components),
    /// A single-file checkpoint.
    File(PathBuf),
    /// Two single-file checkpoints, and a LoRA for A when a rank was asked for.
    Merge {
        a: PathBuf,
        b: PathBuf,
        lora: Option<PathBuf>,
        /// Floating-point operations of the LoRA's products (`2 · rows · cols · rank` each).
        lora_flop: f64,
    },
    /// Checkpoints merged by a chain of ModelMergeSimple nodes (a merge graph), into one.
    Chain(Vec<PathBuf>),
}

/// The benchmark's input files, removed however the run ends.
pub(super) struct Inputs(pub(super) Vec<PathBuf>);

impl Drop for Inputs {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = remove(p);
        }
    }
}

impl Subject {
    /// Builds the model(s) and writes the input files (untimed); `input(name)` names them.
    pub(super) fn prepare(
        opts: &BenchOptions,
        save_opts: &SaveOptions,
        input: impl Fn(&str) -> PathBuf,
        inputs: &mut Inputs,
    ) -> Result<(Subject, u64)> {
        let build = |seed: u64, from_file: bool| {
            let mut syn = SyntheticOptions::new(opts.arch).with_seed(seed);
            syn.variant = opts.variant;
            syn.max_dim = opts.max_dim;
            syn.dtype = opts.model_dtype.or(from_file.then_some(DType::F32));
            synthetic::build(&syn, &opts.device)
        };
        // The inputs are written as they are built: the job quantizes, not its input.
        let keep = SaveOptions {
            dtypes: ComponentDtypes::all(TargetDtype::Keep),
            quantize: None,
            ..save_opts.clone()
        };
        let write = |name: &str, c: &Components, inputs: &mut Inputs| -> Result<(PathBuf, u64)> {
            let p = input(name);
            inputs.0.push(p.clone());
            Ok((p.clone(), save_to_path(c, &p, &keep)?.bytes))
        };
        if let Some(p) = &opts.input {
            // The user's file: read as it is, and never put in `inputs` (which are removed).
            let bytes = std::fs::metadata(p)
                .ctx(|| format!("reading the benchmark input {}", p.display()))?
                .len();
            return Ok((Subject::File(p.clone()), bytes));
        }
        if let Some(n) = opts.chain {
            let mut paths = Vec::with_capacity(n);
            let mut bytes = 0;
            for i in 0..n {
                let mut syn = SyntheticOptions::new(opts.arch).with_seed(i as u64 + 1);
                syn.variant = opts.variant;
                syn.max_dim = opts.max_dim;
                syn.dtype = Some(opts.model_dtype.unwrap_or(DType::F16));
                let c = synthetic::build(&syn, &Device::Cpu)?;
                let (p, b) = write(&format!("chain{i}"), &c, inputs)?;
                paths.push(p);
                bytes += b;
            }
            return Ok((Subject::Chain(paths), bytes));
        }
        match (opts.merge, opts.from_file) {
            (false, false) => Ok((Subject::Memory(build(1, false)?), 0)),
            (false, true) => {
                let (p, bytes) = write("input", &build(1, true)?, inputs)?;
                Ok((Subject::File(p), bytes))
            }
            (true, _) => {
                let a_model = build(1, true)?;
                let (a, ab) = write("a", &a_model, inputs)?;
                let mut lora_flop = 0.0;
                let lora = match opts.lora_rank {
                    Some(r) => {
                        let l = synthetic::lora::lora(opts.arch, &a_model, r, 7)?;
                        for (k, up) in &l {
                            let Some(stem) = k.strip_suffix(".lora_up.weight") else {
                                continue;
                            };
                            if let Some(down) = l.get(&format!("{stem}.lora_down.weight")) {
                                let cols: usize = down.dims()[1..].iter().product();
                                lora_flop += 2.0 * (up.dims()[0] * cols * r) as f64;
                            }
                        }
                        let p = input("lora");
                        inputs.0.push(p.clone());
                        let generic = SaveOptions {
                            layout: LayoutChoice::Generic(GenericPrefixes {
                                model: String::new(),
                                ..GenericPrefixes::default()
                            }),
                            ..keep.clone()
                        };
                        save_to_path(&Components::new(l), &p, &generic)?;
                        Some(p)
                    }
                    None => None,
                };
                drop(a_model);
                let (b, bb) = write("b", &build(2, true)?, inputs)?;
                Ok((
                    Subject::Merge {
                        a,
                        b,
                        lora,
                        lora_flop,
                    },
                    ab + bb,
                ))
            }
        }
    }

    /// Our job, into `out`.
    pub(super) fn ours(
        &self,
        opts: &BenchOptions,
        save_opts: &SaveOptions,
        out: &Path,
    ) -> Result<Saved> {
        match (self, opts.gguf) {
            (Subject::Memory(c), Some(ty)) => crate::save_gguf_to_path(c, out, ty, save_opts),
            (Subject::File(p), Some(ty)) => {
                crate::save_gguf_to_path(&open(opts, p)?, out, ty, save_opts)
            }
            _ => self.ours_checkpoint(opts, save_opts, out),
        }
    }

    fn ours_checkpoint(
        &self,
        opts: &BenchOptions,
        save_opts: &SaveOptions,
        out: &Path,
    ) -> Result<Saved> {
        match self {
            Subject::Memory(c) => save_to_path(c, out, save_opts),
            Subject::File(p) => convert(opts, save_opts, p, out),
            Subject::Merge { a, b, .. } => {
                let (a, b) = (open(opts, a)?, open(opts, b)?);
                let recipe = Recipe {
                    operation: Operation::WeightedSum { ratio: RATIO },
                    clip: Some(RATIO),
                    device: merge_device(opts),
                    ..Recipe::default()
                };
                let (c, _) = merge(&[&a, &b], &[], &recipe)?;
                save_to_path(&c, out, save_opts)
            }
            Subject::Chain(paths) => chain(opts, save_opts, paths, out),
        }
    }

    /// The candle program for the same job, into `out`.
    pub(super) fn candle(&self, opts: &BenchOptions, out: &Path) -> Result<()> {
        match self {
            Subject::Memory(c) => candle_save(c, opts.dtype, out),
            Subject::File(p) => candle_file_to_file(p, opts.dtype, out),
            Subject::Merge { a, b, .. } => candle_merge(a, b, opts.dtype, &opts.device, out),
            Subject::Chain(_) => Err(crate::error::Error::InvalidInput(
                "no candle program is timed for a chain".into(),
            )),
        }
    }

    /// Bytes candle's program holds at once, beside its output.
    pub(super) fn candle_holds(&self, input_bytes: u64) -> u64 {
        match self {
            Subject::Memory(_) => 0,
            // Its load holds the input twice at its peak (measured: 8.1 GB for a 4.3 GB SD1.5
            // f32 file cast to 2.1 GB).
            Subject::File(_) => 2 * input_bytes,
            // Both inputs loaded, and each merged tensor in f32 before its cast.
            Subject::Merge { .. } => input_bytes + input_bytes / 2,
            Subject::Chain(_) => input_bytes,
        }
    }

    /// Why candle's program is not timed for this job, if it is not.
    pub(super) fn no_candle(&self) -> Option<String> {
        matches!(self, Subject::Chain(_)).then(|| {
            "a chain is timed against the storage ceiling only (candle's program would load \
             every input at once)"
                .to_string()
        })
    }

    /// The LoRA bake of A and the plain convert of A, timed beside the merge.
    pub(super) fn bake(
        &self,
        opts: &BenchOptions,
        save_opts: &SaveOptions,
        out: &Path,
    ) -> Result<Option<Saved>> {
        let Subject::Merge {
            a, lora: Some(l), ..
        } = self
        else {
            return Ok(None);
        };
        let input = open(opts, a)?;
        let recipe = Recipe {
            loras: vec![LoraBake {
                lora: Lora::open(l)?,
                strength_model: 1.0,
                strength_clip: 1.0,
            }],
            device: merge_device(opts),
            ..Recipe::default()
        };
        let (c, _) = merge(&[&input], &[], &recipe)?;
        save_to_path(&c, out, save_opts).map(Some)
    }

    /// A plain convert of A (the bake's reference).
    pub(super) fn plain(
        &self,
        opts: &BenchOptions,
        save_opts: &SaveOptions,
        out: &Path,
    ) -> Result<Option<Saved>> {
        match self {
            Subject::Merge {
                a, lora: Some(_), ..
            } => convert(opts, save_opts, a, out).map(Some),
            _ => Ok(None),
        }
    }

    /// Floating-point operations of the LoRA bake's products, if one is timed.
    pub(super) fn lora_flop(&self) -> Option<f64> {
        match self {
            Subject::Merge {
                lora: Some(_),
                lora_flop,
                ..
            } => Some(*lora_flop),
            _ => None,
        }
    }

    /// The files the timed job reads (the merge's A and B; the convert's input).
    pub(super) fn input_files(&self) -> Vec<&Path> {
        match self {
            Subject::Memory(_) => Vec::new(),
            Subject::File(p) => vec![p],
            Subject::Merge { a, b, .. } => vec![a, b],
            Subject::Chain(paths) => paths.iter().map(PathBuf::as_path).collect(),
        }
    }

    /// The job's name in the report.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Subject::Memory(_) => "save",
            Subject::File(_) => "file-to-file",
            Subject::Merge { .. } => "merge",
            Subject::Chain(_) => "run",
        }
    }
}

/// The ratio of each ModelMergeSimple of the benchmark's chain.
pub(super) const CHAIN_RATIO: f64 = 0.5;

/// Our chain: a merge graph of ModelMergeSimple nodes (model1 the chain so far), saved with the
/// first input's text encoders and VAE to `out`.
fn chain(
    opts: &BenchOptions,
    save_opts: &SaveOptions,
    paths: &[PathBuf],
    out: &Path,
) -> Result<Saved> {
    use crate::merge::graph::{run, Graph, RunOptions, Source, Target};
    let mut g = Graph::new();
    let loaded = paths
        .iter()
        .map(|p| g.checkpoint(Source::Path(p.clone())))
        .collect::<Result<Vec<_>>>()?;
    let mut model = loaded[0].model;
    match &opts.method {
        Some(m) => {
            let models: Vec<_> = loaded.iter().map(|l| l.model).collect();
            model = g.method(&m.name, &models, &m.params)?;
        }
        None => {
            for l in &loaded[1..] {
                model = g.model_merge_simple(model, l.model, CHAIN_RATIO)?;
            }
        }
    }
    g.save_checkpoint(
        model,
        loaded[0].clip,
        loaded[0].vae,
        Target::File(out.to_path_buf()),
    )?;
    let mut o = RunOptions::new(out.parent().unwrap_or(Path::new(".")));
    o.dtypes = save_opts.dtypes;
    o.metadata = save_opts.metadata.clone();
    o.recipe = false;
    o.writer = save_opts.writer;
    o.device = merge_device(opts);
    let r = run(&g, &o)?;
    let w = r
        .written
        .first()
        .ok_or_else(|| crate::error::Error::InvalidInput("the chain wrote no file".into()))?;
    Ok(Saved {
        path: w.path.clone(),
        arch: w.arch,
        prediction: w.prediction,
        tensors: w.tensors,
        bytes: w.bytes,
        non_finite: w.non_finite.clone(),
        dropped: Vec::new(),
        elapsed: r.elapsed,
    })
}

/// Where the merge's arithmetic runs: the benchmark's device, or the host's fused fill on CPU.
fn merge_device(opts: &BenchOptions) -> Option<Device> {
    (!opts.device.is_cpu()).then(|| opts.device.clone())
}

fn open(opts: &BenchOptions, p: &Path) -> Result<Components> {
    Ok(crate::input::open(p, Some(opts.arch))?.components)
}

fn convert(
    opts: &BenchOptions,
    save_opts: &SaveOptions,
    input: &Path,
    out: &Path,
) -> Result<Saved> {
    save_to_path(&open(opts, input)?, out, save_opts)
}

/// candle's merge program: load both files, `a * r + b * (1 - r)` for every floating-point
/// tensor of the denoiser and text encoders (the VAE and CLIP's buffers stay A's, as in ours),
/// cast, `safetensors::save`, fsync.
fn candle_merge(a: &Path, b: &Path, dtype: TargetDtype, device: &Device, out: &Path) -> Result<()> {
    let target = dtype
        .file_dtype()
        .and_then(crate::model::dtype::candle_dtype);
    let ta = candle_core::safetensors::load(a, device)?;
    let tb = candle_core::safetensors::load(b, device)?;
    let mut merged: HashMap<String, Tensor> = HashMap::new();
    for (k, x) in ta {
        let t = match tb.get(&k) {
            Some(y) if x.dtype().is_float() && y.dims() == x.dims() && merged_key(&k) => {
                let m = ((x.to_dtype(DType::F32)? * RATIO)?
                    + (y.to_dtype(DType::F32)? * (1.0 - RATIO))?)?;
                match target {
                    Some(d) => m.to_dtype(d)?,
                    None => m.to_dtype(x.dtype())?,
                }
            }
            _ => x,
        };
        merged.insert(k, t);
    }
    save_synced(&merged, out)
}

/// Whether ours merges this checkpoint key (`--clip-ratio` given, VAE from A).
fn merged_key(k: &str) -> bool {
    let vae = ["first_stage_model.", "vae."]
        .iter()
        .any(|p| k.starts_with(p));
    !vae && !k.ends_with("position_ids") && !k.ends_with("logit_scale")
}
