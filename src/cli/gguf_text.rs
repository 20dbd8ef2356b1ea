//! `convert TEXT_ENCODER --gguf TYPE`: a text-encoder file (safetensors in ComfyUI's or
//! transformers names, or a text-encoder GGUF) written as the GGUF file(s) ComfyUI-GGUF's CLIP
//! loaders read, one per encoder, under `text_encoders/` unless `--prefix` says otherwise.

use std::time::Instant;

use anyhow::{Context, Result};

use crate::args::{ArchArg, ConvertArgs};
use crate::print_stdout;
use checkpoint_save::{
    open_component, ComponentKind, Components, GgufTarget, GgufType, SaveOptions, TargetDtype,
};

/// Writes the text encoders of `args.input` as GGUF of `ty`, if it holds text encoders alone;
/// `Ok(false)` when it does not (the caller reports its own error).
pub(crate) fn convert_text(
    args: &ConvertArgs,
    ty: GgufType,
    opts: &SaveOptions,
    start: Instant,
) -> Result<bool> {
    if args.out.dtype != TargetDtype::Keep || args.out.model_dtype.is_some() {
        crate::commands::usage_error(
            "--gguf sets the types of the GGUF file (TYPE, and F32 where llama.cpp's converter \
             keeps it); leave out --dtype and --model-dtype",
        );
    }
    crate::commands::refuse_unused_with_gguf(&args.out);
    if args.out.arch == ArchArg::Generic {
        crate::commands::usage_error(
            "--arch generic lays out checkpoints; a text-encoder GGUF is named as \
             ComfyUI-GGUF's CLIP loaders read it; leave --arch generic out",
        );
    }
    let arch = match args.out.arch {
        ArchArg::Arch(a) => Some(a),
        ArchArg::Auto | ArchArg::Generic => None,
    };
    let clip = match open_component(ComponentKind::Clip, std::slice::from_ref(&args.input), arch) {
        Ok(clip) => clip,
        // A GGUF that is no denoiser is a text encoder or nothing: its own error says why.
        Err(e) if is_gguf_name(&args.input) => {
            return Err(e).with_context(|| format!("cannot read {}", args.input.display()))
        }
        Err(_) => return Ok(false),
    };
    let mut components = Components::default();
    components.set_inputs(ComponentKind::Clip, clip.tensors);
    let mut o = opts.clone();
    if args.out.prefix == SaveOptions::default().prefix {
        o.prefix = "text_encoders/ComfyUI".into();
    }
    let target = GgufTarget::new(ty, &args.out.gguf_include, &args.out.gguf_exclude)?;
    let saved = checkpoint_save::save_gguf_text(&components, target, &o)
        .with_context(|| format!("cannot convert {}", args.input.display()))?;
    for s in &saved {
        print_stdout(&s.path.display().to_string())?;
        if !args.out.quiet {
            let dropped: Vec<&str> = s.dropped.iter().map(|d| d.1.as_str()).collect();
            let note = if dropped.is_empty() {
                String::new()
            } else {
                format!("; not written: {}", dropped.join(", "))
            };
            // A `qwen2vl` encoder's vision tower goes beside it as llama.cpp's F16 mmproj.
            let what = if s.path.to_string_lossy().ends_with("-mmproj-F16.gguf") {
                "F16 mmproj GGUF (vision tower)".to_string()
            } else {
                format!("{ty} text-encoder GGUF")
            };
            eprintln!(
                "saved {what}: {} tensors, {} bytes in {:.2} s{note}",
                s.tensors,
                s.bytes,
                start.elapsed().as_secs_f64()
            );
            for (name, count) in &s.non_finite {
                eprintln!("warning: tensor `{name}` holds {count} NaN/Inf value(s)");
            }
        }
    }
    Ok(true)
}

fn is_gguf_name(path: &std::path::Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}
