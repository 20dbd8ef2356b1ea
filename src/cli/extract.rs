//! `extract-lora`: a LoRA from the difference of two models, written as ComfyUI's LoraSave does.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::args::{ArchArg, ExtractArgs};
use crate::commands::parse_device;
use crate::print_stdout;
use checkpoint_save::merge::{extract_lora, ExtractOptions, KeyFormat, LoraType};
use checkpoint_save::{open_input, Components, SaveOptions};

/// `extract-lora TUNED BASE`: the factors of every weight's difference, saved under ComfyUI's
/// naming (`loras/ComfyUI_extracted_lora_00001_.safetensors`).
pub(crate) fn extract(args: &ExtractArgs, cancel: &Arc<AtomicBool>) -> Result<()> {
    let start = Instant::now();
    let arch = match args.arch {
        ArchArg::Arch(a) => Some(a),
        ArchArg::Auto | ArchArg::Generic => None,
    };
    let open = |p: &std::path::Path| {
        open_input(p, arch).with_context(|| format!("cannot read {}", p.display()))
    };
    let (tuned, base) = (open(&args.tuned)?, open(&args.base)?);
    if let (Some(a), Some(b)) = (tuned.arch, base.arch) {
        anyhow::ensure!(
            a == b,
            "TUNED is {a} and BASE is {b}: a LoRA is extracted from two models of one architecture"
        );
    }
    let device = match parse_device(&args.device)? {
        d if d.is_cpu() => None,
        d => Some(d),
    };
    let full_diff = args.lora_type == "full_diff";
    if full_diff && args.rank.is_some() {
        crate::commands::usage_error(
            "--lora-type full_diff writes every weight's whole difference: there is no rank; \
             leave --rank out",
        );
    }
    let rank = args.rank.unwrap_or(8);
    let opts = ExtractOptions {
        rank,
        clip: args.clip,
        bias_diff: args.bias_diff,
        lora_type: match args.lora_type.as_str() {
            "full_diff" => LoraType::FullDiff,
            _ => LoraType::Standard,
        },
        format: match args.format.as_str() {
            "kohya" => KeyFormat::Kohya,
            _ => KeyFormat::Comfy,
        },
        device,
    };
    let (lora, report) = extract_lora(&tuned.components, &base.components, &opts)
        .context("cannot extract a LoRA")?;
    let save = SaveOptions {
        output_dir: args.output_dir.clone(),
        prefix: args.prefix.clone(),
        cancel: Some(Arc::clone(cancel)),
        ..SaveOptions::plain()
    };
    let saved = checkpoint_save::save(&Components::new(lora), &save)?;
    print_stdout(&saved.path.display().to_string())?;
    if !args.quiet {
        let worst = report
            .errors
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(String::new(), |(k, e)| {
                format!("; largest relative reconstruction error {e:.4} (`{k}`)")
            });
        let what = match full_diff {
            true => "full_diff".to_string(),
            false => format!("rank {rank}"),
        };
        eprintln!(
            "extracted LoRA {what}: {} weights factored, {} written whole, {} tensors, {:.1} MB in {:.1} s{worst}",
            report.factored,
            report.whole,
            saved.tensors,
            saved.bytes as f64 / 1e6,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
