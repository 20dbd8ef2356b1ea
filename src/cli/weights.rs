//! `merge A B C … --weights W,W,…`: a weighted sum of any number of checkpoints, as the merge
//! graph ComfyUI would run for it (a chain of ModelMergeSimple nodes, CLIPMergeSimple for the
//! text encoders, LoraLoader nodes after), written in one pass.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};

use crate::args::{ArchArg, MergeArgs, VaeFrom};
use crate::commands::{parse_device, print_dry_run, save_options, write_job};
use crate::merge::{absent, lora_arg};
use crate::print_stdout;
use checkpoint_save::merge::graph::{
    file_jobs, ClipOut, Graph, LoraSource, ModelOut, RunOptions, Source, Target, VaeOut,
};
use checkpoint_save::quant::Requantize;
use checkpoint_save::{ComponentKind, SaveOptions};

/// The ModelMergeSimple ratios of a chain computing `Σ wᵢ·Mᵢ / Σ wᵢ`: step k merges the sum so
/// far (weight `S_k`) with input k+1 at ratio `S_k / S_{k+1}` (ComfyUI's ratio keeps model1).
///
/// # Errors
/// For a weight that is negative or not finite, a count that is not the inputs', or weights
/// that add up to 0.
pub(crate) fn chain_ratios(weights: &[f64], inputs: usize, flag: &str) -> Result<Vec<f64>> {
    if weights.len() != inputs {
        bail!(
            "{flag} has {} weight(s) for {inputs} inputs; give one weight per input, in order",
            weights.len()
        );
    }
    if let Some(w) = weights.iter().find(|w| !w.is_finite() || **w < 0.0) {
        bail!(
            "{flag}: the weight {w} is not a finite number ≥ 0 (the weights are normalized by \
             their sum; for differences use --add-difference or `run` with ModelMergeSubtract)"
        );
    }
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        bail!("{flag}: the weights add up to 0; give at least one positive weight");
    }
    let mut sum = weights[0];
    let mut ratios = Vec::with_capacity(inputs.saturating_sub(1));
    for w in &weights[1..] {
        let next = sum + w;
        ratios.push(if next > 0.0 { sum / next } else { 1.0 });
        sum = next;
    }
    Ok(ratios)
}

/// `merge … --weights`: the graph built, run, its one checkpoint's path printed.
pub(crate) fn merge_weighted(
    args: &MergeArgs,
    weights: &[f64],
    cancel: &Arc<AtomicBool>,
) -> Result<()> {
    let start = Instant::now();
    let n = args.inputs.len();
    if n < 2 {
        bail!("--weights merges two inputs or more; {n} given");
    }
    if args.out.arch != ArchArg::Auto {
        bail!(
            "--weights detects the inputs' architecture (they must all be one); leave --arch out"
        );
    }
    if args.block_ratios.is_some() || args.clip_ratio.is_some() {
        bail!("--weights sets every ratio of the chain; --block-ratios and --clip-ratio cannot be added to it");
    }
    let ratios = chain_ratios(weights, n, "--weights")?;
    let clip_ratios = args
        .clip_weights
        .as_deref()
        .map(|w| chain_ratios(w, n, "--clip-weights"))
        .transpose()?;
    let opts = save_options(&args.out, cancel)?;
    let (mut g, loaded) = load_inputs(args)?;
    let mut model: ModelOut = loaded[0].model;
    for (l, r) in loaded[1..].iter().zip(&ratios) {
        model = g.model_merge_simple(model, l.model, *r)?;
    }
    let mut clip = loaded[0].clip;
    if let Some(rs) = &clip_ratios {
        let clips = clips(args, &loaded, "--clip-weights")?;
        let mut merged = clips[0];
        for (c, r) in clips[1..].iter().zip(rs) {
            merged = g.clip_merge_simple(merged, *c, *r)?;
        }
        clip = Some(merged);
    }
    let what = {
        let total: f64 = weights.iter().sum();
        let normalized: Vec<String> = weights
            .iter()
            .map(|w| format!("{:.4}", w / total))
            .collect();
        format!("weights (normalized) {}", normalized.join(","))
    };
    save_graph(args, &opts, g, &loaded, model, clip, start, &what)
}

/// One input of a graph-built merge: its denoiser, and its text encoders and autoencoder when it
/// is a checkpoint (a denoiser file alone, a GGUF, has neither).
pub(crate) struct Loaded {
    pub(crate) model: ModelOut,
    pub(crate) clip: Option<ClipOut>,
    pub(crate) vae: Option<VaeOut>,
}

/// A graph holding one loader per input (CheckpointLoaderSimple, or UNETLoader for a denoiser
/// alone), and their outputs.
pub(crate) fn load_inputs(args: &MergeArgs) -> Result<(Graph, Vec<Loaded>)> {
    if args.requantize != Requantize::Existing {
        bail!(
            "--requantize fresh is for --ratio, --add-difference, --subtract, --add and LoRA \
             bakes; a --method or --weights merge writes a quantized A's layers back with A's \
             scales (give --dtype to write them unquantized)"
        );
    }
    let mut g = Graph::new();
    let mut loaded = Vec::with_capacity(args.inputs.len());
    for p in &args.inputs {
        let source = Source::Path(p.clone());
        loaded.push(match denoiser_alone(p) {
            true => Loaded {
                model: g.diffusion_model(source)?,
                clip: None,
                vae: None,
            },
            false => {
                let c = g.checkpoint(source)?;
                Loaded {
                    model: c.model,
                    clip: Some(c.clip),
                    vae: Some(c.vae),
                }
            }
        });
    }
    Ok((g, loaded))
}

/// Whether `path` holds a denoiser and neither text encoders nor an autoencoder. An input that
/// cannot be read is left to the checkpoint loader, whose error names it.
fn denoiser_alone(path: &std::path::Path) -> bool {
    checkpoint_save::open_input(path, None).is_ok_and(|i| {
        i.components.get(ComponentKind::Model).is_some()
            && i.components.get(ComponentKind::Clip).is_none()
            && i.components.get(ComponentKind::Vae).is_none()
    })
}

/// Every input's text encoders, for a flag that merges them (`flag`).
pub(crate) fn clips(args: &MergeArgs, loaded: &[Loaded], flag: &str) -> Result<Vec<ClipOut>> {
    loaded
        .iter()
        .zip(&args.inputs)
        .map(|(l, p)| {
            l.clip
                .ok_or_else(|| absent(flag, "merges the text encoders", p))
        })
        .collect()
}

/// The rest of a graph-built merge: `--lora` bakes after the merge, the VAE `--vae` names, the
/// save (CheckpointSave, or ModelSave for denoisers alone); saves the file as every merge does
/// and prints its path (and a summary naming `what` was merged).
#[allow(clippy::too_many_arguments)]
pub(crate) fn save_graph(
    args: &MergeArgs,
    opts: &checkpoint_save::SaveOptions,
    mut g: Graph,
    loaded: &[Loaded],
    mut model: ModelOut,
    mut clip: Option<ClipOut>,
    start: Instant,
    what: &str,
) -> Result<()> {
    let n = args.inputs.len();
    for spec in &args.lora {
        let bake = lora_arg(spec)?;
        let (m, c) = g.lora(
            model,
            clip,
            LoraSource::Memory(bake.lora),
            bake.strength_model,
            bake.strength_clip,
        )?;
        model = m;
        clip = c.or(clip);
    }
    let (vae, vae_input) = match args.vae {
        VaeFrom::A => (loaded[0].vae, 0),
        VaeFrom::B => (loaded[1].vae, 1),
    };
    if args.vae == VaeFrom::B && vae.is_none() {
        return Err(absent("--vae b", "writes B's autoencoder", &args.inputs[1]));
    }
    // The audio VAE goes with the VAE (the graph's VAE value carries it); so does the metadata
    // its loaders read.
    let mut opts = opts.clone();
    // (A folder input has no header to read: it holds no release's audio VAE.)
    let vae_file = checkpoint_save::inspect(&args.inputs[vae_input]).ok();
    if let Some(vae_file) = vae_file.filter(|f| f.parts.iter().any(|p| p.name == "audio_vae")) {
        let release = &checkpoint_save::family::release::LTX2;
        for (k, v) in release.carried_metadata(&vae_file.metadata) {
            opts.metadata.extra.entry(k).or_insert(v);
        }
    }
    match (clip, vae) {
        (Some(clip), Some(vae)) => {
            g.save_checkpoint(model, clip, vae, Target::Prefix(opts.prefix.clone()))?
        }
        // A denoiser alone is written as ModelSave writes it, into diffusion_models/ unless
        // --prefix says otherwise (as `convert` and `merge --ratio` write one).
        _ => {
            crate::commands::refuse_unused_with_denoiser(&args.out);
            let prefix = match args.out.prefix == SaveOptions::default().prefix {
                true => "diffusion_models/ComfyUI".to_string(),
                false => opts.prefix.clone(),
            };
            g.save_model(model, Target::Prefix(prefix))?
        }
    };
    let mut run_opts = RunOptions::new(&opts.output_dir);
    run_opts.dtypes = opts.dtypes;
    run_opts.metadata = opts.metadata.clone();
    run_opts.check_finite = opts.check_finite;
    run_opts.progress = opts.progress;
    run_opts.cancel = opts.cancel.clone();
    run_opts.writer = opts.writer;
    run_opts.strict = args.strict;
    run_opts.refuse_missing = !args.allow_missing;
    run_opts.device = match parse_device(&args.device)? {
        d if d.is_cpu() => None,
        d => Some(d),
    };
    // The graph gives the one file's tensors and options; it is then saved as every other
    // `merge` is, so the flags a workflow has no place for (--dry-run, --quantize, --gguf,
    // --prediction) apply to it too.
    let (plan, jobs) = file_jobs(&g, &run_opts)?;
    let Ok([job]) = <[_; 1]>::try_from(jobs) else {
        bail!("the merge's graph plans one file");
    };
    let mut save_opts = job.options;
    let arch = job.family;
    save_opts.prediction = opts.prediction.or(save_opts.prediction);
    // A denoiser alone keeps its family's high-precision layers, as in its checkpoint.
    save_opts.quantize = opts.quantize.clone().map(|q| q.for_family(arch));
    if args.out.dry_run {
        return print_dry_run(&job.components, &save_opts, args.out.json);
    }
    let saved = write_job(&job.components, arch, &args.out, &save_opts)?;
    print_stdout(&saved.path.display().to_string())?;
    if !args.out.quiet {
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        eprintln!(
            "saved {} ({}) checkpoint: {} tensors, {} bytes in {secs:.2} s ({:.2} GB/s); read {} \
             bytes of {n} inputs; {what}; {} tensor(s) merged",
            crate::report::arch_label(saved.arch, arch),
            saved.prediction,
            saved.tensors,
            saved.bytes,
            saved.bytes as f64 / secs / 1e9,
            plan.read_bytes(),
            plan.merged
        );
        for note in &plan.notes {
            eprintln!("note: {note}");
        }
        for (name, count) in &saved.non_finite {
            eprintln!("warning: tensor `{name}` holds {count} NaN/Inf value(s)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::chain_ratios;

    #[test]
    fn chain_ratios_give_each_input_its_normalized_weight() {
        let w = [0.4, 0.3, 0.2, 0.1];
        let r = chain_ratios(&w, 4, "--weights").unwrap();
        // The weight of input i in the chain's result: its (1 − ratio) times every later ratio.
        let mut share = vec![1.0f64; 4];
        for (k, ratio) in r.iter().enumerate() {
            for s in share.iter_mut().take(k + 1) {
                *s *= ratio;
            }
            share[k + 1] *= 1.0 - ratio;
        }
        for (s, w) in share.iter().zip(w) {
            assert!((s - w).abs() < 1e-12, "{share:?}");
        }
        // The same ratios as the merge uses them (f32), whatever the weights' scale.
        let as_f32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<_>>();
        assert_eq!(
            as_f32(chain_ratios(&[4.0, 3.0, 2.0, 1.0], 4, "w").unwrap()),
            as_f32(r)
        );
        assert_eq!(chain_ratios(&[0.0, 0.0, 1.0], 3, "w").unwrap(), [1.0, 0.0]);
        for (w, n) in [(vec![1.0, -1.0], 2), (vec![0.0, 0.0], 2), (vec![1.0], 2)] {
            assert!(chain_ratios(&w, n, "w").is_err());
        }
    }
}
