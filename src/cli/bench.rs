//! `bench`: our job against candle's program, the Python programs users run, and the storage
//! ceiling, side by side.

use anyhow::{Context, Result};

use crate::args::{BenchArgs, BenchJob};
use crate::commands::{parse_device, usage_error};
use crate::print_stdout;
use checkpoint_save::bench::{self, BenchOptions};
use checkpoint_save::TargetDtype;

/// `bench`: our save against candle's and the storage ceiling, in one run.
pub(crate) fn bench(args: &BenchArgs) -> Result<()> {
    let device = parse_device(&args.device)?;
    let model_dtype = match args.model_dtype {
        None | Some(TargetDtype::Keep) => None,
        Some(d) => Some(
            d.file_dtype()
                .and_then(checkpoint_save::model::dtype::candle_dtype)
                .with_context(|| format!("a synthetic model cannot be built in {d}"))?,
        ),
    };
    let (arch, variant) = match (&args.synthetic, &args.input) {
        (Some(name), _) => {
            let (arch, variant) = checkpoint_save::family::variant_named(name)?;
            (arch, Some(variant.name))
        }
        (None, Some(path)) => {
            let input = checkpoint_save::input::open(path, None)
                .with_context(|| format!("cannot read the benchmark input {}", path.display()))?;
            let arch = input.arch.with_context(|| {
                format!(
                    "cannot tell the architecture of {}; name it with --synthetic",
                    path.display()
                )
            })?;
            (arch, None)
        }
        (None, None) => usage_error("give --synthetic MODEL or --input FILE"),
    };
    if args.chain.is_some() && args.job != BenchJob::Run {
        usage_error(
            "--chain sets how many checkpoints `bench run` merges; give `bench run --chain N`",
        );
    }
    if args.input_dir.is_some() && args.job == BenchJob::Save && !args.from_file {
        usage_error(
            "--input-dir is where the inputs of --from-file, `merge` and `run` are written; a \
             save from memory has none",
        );
    }
    if args.input.is_some() && (args.job != BenchJob::Save || !args.from_file) {
        usage_error("--input times a file-to-file convert: give `bench --from-file --input FILE`");
    }
    let opts = BenchOptions {
        arch,
        variant,
        dtype: args.dtype,
        model_dtype,
        output_dir: args
            .output_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("checkpoint-save-bench")),
        runs: args.runs,
        engine: args.engine.options(),
        max_dim: args.max_dim,
        device,
        from_file: args.from_file,
        input_dir: args.input_dir.clone(),
        input: args.input.clone(),
        merge: args.job == BenchJob::Merge,
        lora_rank: args.lora_rank,
        chain: (args.job == BenchJob::Run).then_some(args.chain.unwrap_or(4).max(2)),
        quantize: args.quantize,
        gguf: args.gguf,
        method: None,
    };
    let opts = match &args.method {
        None => opts,
        Some(name) => {
            if args.job != BenchJob::Merge {
                usage_error("--method times a merge method: give `bench merge --method NAME`");
            }
            if args.lora_rank.is_some() {
                usage_error(
                    "--lora-rank times a LoRA bake beside a weighted sum; drop it with --method",
                );
            }
            let params = crate::method::parse_params(&args.params)?;
            let info = checkpoint_save::merge::methods::KNOWN
                .iter()
                .find(|m| m.name == name.as_str());
            // Two inputs where the method takes two, else three (a base and two models).
            let inputs = info.map_or(2, |m| {
                if m.max_inputs == Some(2) {
                    2
                } else {
                    m.min_inputs.max(3)
                }
            });
            checkpoint_save::merge::methods::method(name, inputs, &params)?;
            BenchOptions {
                merge: false,
                from_file: true,
                chain: Some(inputs),
                method: Some(checkpoint_save::bench::BenchMethod {
                    name: name.clone(),
                    params,
                }),
                ..opts
            }
        }
    };
    if args.lora_rank.is_some() && !opts.merge {
        usage_error("--lora-rank times a LoRA bake beside a merge: give `bench merge`");
    }
    if args.from_file && opts.merge && opts.method.is_none() {
        usage_error("`bench merge` always starts from files; drop --from-file");
    }
    let report = bench::run(&opts)?;
    if args.json {
        print_stdout(&serde_json::to_string(&report).context("cannot encode the report")?)
    } else {
        print_stdout(&report.to_string())
    }
}
