//! `merge`: inputs opened where they lie, the recipe built, the result streamed into one save.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::args::{ArchArg, MergeArgs, VaeFrom};
use crate::commands::{
    input_prediction, parse_device, print_dry_run, require_family, save_options,
};
use crate::print_stdout;
use crate::report::{report, Job};
use checkpoint_save::merge::{
    merge as merge_inputs, BlockRatios, InputRecord, Lora, LoraBake, MergeArch, MergeReport,
    Operation, Recipe, RECIPE_KEY,
};
use checkpoint_save::{open_input, ComponentKind, Input, LayoutChoice};

/// `merge`: a merge or LoRA bake of files into one checkpoint.
pub(crate) fn merge(args: &MergeArgs, cancel: &Arc<AtomicBool>) -> Result<()> {
    // Flags of one operation given with another would be silently unused.
    if args.method.is_none() {
        if args.clip_method {
            bail!("--clip-method merges the text encoders with --method NAME; give a method");
        }
        if !args.params.is_empty() {
            bail!("--param sets a parameter of --method NAME; give a method, or leave --param out");
        }
    }
    if args.clip_weights.is_some() && args.weights.is_none() {
        bail!("--clip-weights goes with --weights W,W,… (one weight per input); give --weights, or leave --clip-weights out");
    }
    if let Some(weights) = &args.weights {
        return crate::weights::merge_weighted(args, weights, cancel);
    }
    if let Some(name) = &args.method {
        return crate::method::merge_method(args, name, cancel);
    }
    let start = Instant::now();
    let mut opts = save_options(&args.out, cancel)?;
    let blocks = match &args.block_ratios {
        Some(spec) => BlockRatios::parse(spec)?,
        None => BlockRatios::default(),
    };
    let operation = operation(args, &blocks)?;
    let recipe_base = Recipe {
        operation,
        blocks,
        clip: args
            .clip_ratio
            .map(|r| finite(r, "--clip-ratio"))
            .transpose()?,
        vae_from: match args.vae {
            VaeFrom::A => 0,
            VaeFrom::B => 1,
        },
        allow_missing: args.allow_missing,
        strict: args.strict,
        device: match parse_device(&args.device)? {
            d if d.is_cpu() => None,
            d => Some(d),
        },
        loras: Vec::new(),
        arch: match args.out.arch {
            ArchArg::Auto => MergeArch::Detect,
            ArchArg::Arch(a) => MergeArch::Family(a),
            ArchArg::Generic => MergeArch::Generic,
        },
        requantize: args.requantize,
    };
    let loras = args
        .lora
        .iter()
        .map(|s| lora_arg(s))
        .collect::<Result<Vec<_>>>()?;
    let recipe = Recipe {
        loras,
        ..recipe_base
    };
    let arch = match args.out.arch {
        ArchArg::Arch(a) => Some(a),
        ArchArg::Auto | ArchArg::Generic => None,
    };
    let inputs: Vec<Input> = args
        .inputs
        .iter()
        .map(|p| {
            let input =
                open_input(p, arch).with_context(|| format!("cannot read {}", p.display()))?;
            require_family(&input, args.out.arch)
                .with_context(|| format!("cannot merge {}", p.display()))?;
            Ok(input)
        })
        .collect::<Result<_>>()?;
    refuse_absent_parts(args, &inputs)?;
    let records = args
        .inputs
        .iter()
        .zip(&inputs)
        .map(|(p, i)| record(p, i))
        .collect::<Result<Vec<_>>>()?;
    let components: Vec<_> = inputs.iter().map(|i| &i.components).collect();
    let (merged, summary) = merge_inputs(&components, &records, &recipe)?;
    if let (LayoutChoice::Auto, Some(a)) = (&opts.layout, summary.arch) {
        opts.layout = LayoutChoice::Arch(a);
    }
    opts.prediction = opts
        .prediction
        .or(input_prediction(&inputs[0], args.out.arch));
    crate::commands::denoiser_only(&merged, summary.arch, &args.out, &mut opts);
    let audio_from = inputs
        .get(recipe.vae_from)
        .filter(|i| i.components.get(ComponentKind::AudioVae).is_some())
        .unwrap_or(&inputs[0]);
    crate::commands::carry_audio_metadata(&merged, summary.arch, &audio_from.metadata, &mut opts);
    opts.metadata
        .extra
        .insert(RECIPE_KEY.to_string(), summary.recipe.clone());
    if args.out.dry_run {
        return print_dry_run(&merged, &opts, args.out.json);
    }
    let saved = crate::commands::write_job(&merged, summary.arch, &args.out, &opts)?;
    print_stdout(&saved.path.display().to_string())?;
    if !args.out.quiet {
        let job = Job {
            arch: summary.arch,
            read_bytes: inputs.iter().map(|i| i.bytes).sum(),
            left_out: inputs.iter().flat_map(|i| i.left_out.clone()).collect(),
            created: inputs[0].created.clone(),
        };
        report(&saved, &job, start.elapsed());
        eprintln!("{}", merge_line(&summary));
    }
    Ok(())
}

/// `--clip-ratio` needs two inputs holding text encoders, `--vae b` a B holding an autoencoder:
/// otherwise nothing would be merged or taken, while the recipe recorded says it was.
fn refuse_absent_parts(args: &MergeArgs, inputs: &[Input]) -> Result<()> {
    let lacks = |i: &Input, kind| i.components.get(kind).is_none();
    if args.clip_ratio.is_some() {
        if inputs.len() < 2 {
            bail!("--clip-ratio merges A's text encoders with B's; one input given, leave it out");
        }
        if let Some((p, _)) = args
            .inputs
            .iter()
            .zip(inputs)
            .find(|(_, i)| lacks(i, ComponentKind::Clip))
        {
            return Err(absent("--clip-ratio", "merges the text encoders", p));
        }
    }
    if args.vae == VaeFrom::B && inputs.get(1).is_some_and(|b| lacks(b, ComponentKind::Vae)) {
        return Err(absent("--vae b", "writes B's autoencoder", &args.inputs[1]));
    }
    Ok(())
}

/// `flag` (which `does` something with a part) given for `input`, a denoiser alone.
pub(crate) fn absent(flag: &str, does: &str, input: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{flag} {does}, and {} holds none (a denoiser alone); leave {flag} out",
        input.display()
    )
}

/// The operation the flags and the number of inputs ask for; with `--block-ratios` and no
/// operation flag, ModelMergeBlocks' weighted sum (two inputs) or an add difference (three),
/// each key at its block's value.
fn operation(args: &MergeArgs, blocks: &BlockRatios) -> Result<Operation> {
    let n = args.inputs.len();
    let flag = [
        args.ratio.map(|_| "--ratio"),
        args.add_difference.map(|_| "--add-difference"),
        args.subtract.map(|_| "--subtract"),
        args.add.then_some("--add"),
    ]
    .into_iter()
    .flatten()
    .next();
    if let (Some(default), Some(flag)) = (blocks.default_ratio(), flag) {
        bail!(
            "{flag} and --block-ratios: with block ratios every denoiser key takes a block's \
             value (keys no block names take the first block's, {default}, as ModelMergeBlocks \
             does), so {flag}'s would not be used; leave {flag} out (two inputs make the \
             weighted sum, three the add difference) or give the keys it was meant for a block"
        );
    }
    let op = match (args.ratio, args.add_difference, args.subtract, args.add) {
        (Some(r), ..) => Operation::WeightedSum {
            ratio: finite(r, "--ratio")?,
        },
        (_, Some(m), ..) => Operation::AddDifference {
            multiplier: finite(m, "--add-difference")?,
        },
        (_, _, Some(m), _) => Operation::Subtract {
            multiplier: finite(m, "--subtract")?,
        },
        (.., true) => Operation::Add,
        _ => match (n, blocks.default_ratio()) {
            (1, Some(_)) => bail!("--block-ratios needs a second input to merge with"),
            (1, None) => Operation::None,
            (2, Some(r)) => Operation::WeightedSum { ratio: r },
            (3, Some(m)) => Operation::AddDifference { multiplier: m },
            _ => bail!(
                "{n} inputs need an operation: --weights W,W,… (any number of inputs), --ratio R \
                 (A·R + B·(1−R)), --subtract M, --add, --block-ratios SPEC, or with three inputs \
                 --add-difference M"
            ),
        },
    };
    if op.inputs() != n {
        bail!(
            "this operation takes {} input(s) (A{}), {n} given",
            op.inputs(),
            [" only", " B", " B C"][op.inputs() - 1]
        );
    }
    if n == 1 && args.lora.is_empty() {
        bail!("one input and no --lora: nothing to merge or bake (use `convert` to re-save a checkpoint)");
    }
    Ok(op)
}

fn finite(v: f64, flag: &str) -> Result<f64> {
    if !v.is_finite() {
        bail!("{flag} {v} is not a finite number");
    }
    Ok(v)
}

/// `FILE[:MODEL[:CLIP]]`; strengths are split off the end, so a path may hold `:` itself.
pub(crate) fn lora_arg(s: &str) -> Result<LoraBake> {
    let mut path = s;
    let mut strengths = Vec::new();
    while strengths.len() < 2 {
        let Some((head, tail)) = path.rsplit_once(':') else {
            break;
        };
        match tail.parse::<f64>() {
            Ok(v) => {
                strengths.insert(0, finite(v, &format!("the strength in --lora {s}"))?);
                path = head;
            }
            Err(_) => break,
        }
    }
    let model = strengths.first().copied().unwrap_or(1.0);
    let clip = strengths.get(1).copied().unwrap_or(model);
    let lora =
        Lora::open(Path::new(path)).with_context(|| format!("cannot read the LoRA {path}"))?;
    Ok(LoraBake {
        lora,
        strength_model: model,
        strength_clip: clip,
    })
}

/// An input as the recipe names it: its file or folder name, size and header hash.
fn record(path: &Path, input: &Input) -> Result<InputRecord> {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let files: Vec<PathBuf> = input.files();
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let mut r = InputRecord::of_files(&name, &refs)?;
    r.defaults = input.created.clone();
    Ok(r)
}

/// The merge's summary line.
fn merge_line(r: &MergeReport) -> String {
    let mut line = format!(
        "merged {} tensor(s), {} copied as they are",
        r.merged, r.copied
    );
    if !r.missing.is_empty() {
        line.push_str(&format!(
            "; {} missing from B/C kept from A",
            r.missing.len()
        ));
    }
    for l in &r.loras {
        line.push_str(&format!("; LoRA {}: {} module(s) baked", l.name, l.matched));
        if let Some(first) = l.not_applied.first() {
            line.push_str(&format!(
                ", {} key(s) not applied (first: {first}; --strict refuses them)",
                l.not_applied.len()
            ));
        }
    }
    line
}
