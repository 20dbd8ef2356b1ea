//! What each subcommand does, on top of the library.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::CommandFactory;
use serde_json::Value;

use crate::args::{ArchArg, Cli, ConvertArgs, InspectArgs, SaveArgs, SaveFlags, SplitArgs};
use crate::print_stdout;
use crate::report::{report, Job};
use checkpoint_save::quant::Quantize;
use checkpoint_save::synthetic::{self, SyntheticOptions};
use checkpoint_save::{
    open_component, open_input, Arch, ComponentDtypes, ComponentKind, Components, GenericPrefixes,
    Input, LayoutChoice, MetadataOptions, Prediction, SaveOptions, TargetDtype,
};

/// `save`: components from files or a synthetic model, saved under ComfyUI's naming.
pub(crate) fn save(args: &SaveArgs, cancel: &Arc<AtomicBool>) -> Result<()> {
    let start = Instant::now();
    let mut opts = save_options(&args.out, cancel)?;
    let (components, job) = components(args, &opts)?;
    if let (LayoutChoice::Auto, Some(arch)) = (&opts.layout, job.arch) {
        opts.layout = LayoutChoice::Arch(arch);
    }
    if let Some(path) = &args.audio_vae {
        // The metadata the audio VAE's loaders read comes with it (its header only is read).
        let header = checkpoint_save::inspect(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        carry_audio_metadata(&components, job.arch, &header.metadata, &mut opts);
    }
    if args.out.dry_run {
        return print_dry_run(&components, &opts, args.out.json);
    }
    let saved = write_job(&components, job.arch, &args.out, &opts)?;
    print_stdout(&saved.path.display().to_string())?;
    if !args.out.quiet {
        report(&saved, &job, start.elapsed());
    }
    Ok(())
}

/// `convert`: a single-file checkpoint or a diffusers pipeline folder, streamed into a ComfyUI
/// checkpoint.
pub(crate) fn convert(args: &ConvertArgs, cancel: &Arc<AtomicBool>) -> Result<()> {
    let start = Instant::now();
    let mut opts = save_options(&args.out, cancel)?;
    let arch = match args.out.arch {
        ArchArg::Arch(a) => Some(a),
        ArchArg::Auto | ArchArg::Generic => None,
    };
    let input = match (open_input(&args.input, arch), args.out.gguf) {
        (Ok(input), _) => input,
        // A text encoder alone becomes the GGUF ComfyUI-GGUF's CLIP loaders read.
        (Err(e), Some(ty)) if crate::gguf_text::convert_text(args, ty, &opts, start)? => {
            drop(e);
            return Ok(());
        }
        (Err(e), _) => {
            return Err(e).with_context(|| format!("cannot read {}", args.input.display()))
        }
    };
    require_family(&input, args.out.arch)
        .with_context(|| format!("cannot convert {}", args.input.display()))?;
    if let (LayoutChoice::Auto, Some(a)) = (&opts.layout, input.arch) {
        opts.layout = LayoutChoice::Arch(a);
    }
    opts.prediction = opts.prediction.or(input_prediction(&input, args.out.arch));
    denoiser_only(&input.components, input.arch, &args.out, &mut opts);
    carry_audio_metadata(&input.components, input.arch, &input.metadata, &mut opts);
    if args.out.dry_run {
        return print_dry_run(&input.components, &opts, args.out.json);
    }
    let saved = write_job(&input.components, input.arch, &args.out, &opts)?;
    print_stdout(&saved.path.display().to_string())?;
    if !args.out.quiet {
        let job = Job {
            arch: input.arch,
            read_bytes: input.bytes,
            left_out: input.left_out,
            created: input.created,
        };
        report(&saved, &job, start.elapsed());
    }
    Ok(())
}

/// Writes a job's components: the checkpoint, or with `--gguf` the denoiser as a GGUF file of
/// `arch` (the architecture the job found, unless `--arch` names one), into
/// `diffusion_models/` unless `--prefix` says otherwise.
pub(crate) fn write_job(
    components: &Components,
    arch: Option<Arch>,
    flags: &SaveFlags,
    opts: &SaveOptions,
) -> Result<checkpoint_save::Saved> {
    let Some(ty) = flags.gguf else {
        return Ok(checkpoint_save::save(components, opts)?);
    };
    if flags.dtype != TargetDtype::Keep || flags.model_dtype.is_some() {
        usage_error(
            "--gguf sets the types of the GGUF file (TYPE, and F32 where convert.py keeps it); \
             leave out --dtype and --model-dtype",
        );
    }
    refuse_unused_with_gguf(flags);
    let mut o = opts.clone();
    o.layout = match (flags.arch, arch) {
        (ArchArg::Generic, _) => LayoutChoice::Generic(GenericPrefixes::default()),
        (ArchArg::Arch(a), _) | (ArchArg::Auto, Some(a)) => LayoutChoice::Arch(a),
        (ArchArg::Auto, None) => LayoutChoice::Auto,
    };
    if flags.prefix == SaveOptions::default().prefix {
        o.prefix = "diffusion_models/ComfyUI".into();
    }
    let target = checkpoint_save::GgufTarget::new(ty, &flags.gguf_include, &flags.gguf_exclude)?;
    Ok(checkpoint_save::save_gguf(components, target, &o)?)
}

/// Refuses the dtype flags of components an output holding a denoiser alone does not have.
pub(crate) fn refuse_unused_with_denoiser(flags: &SaveFlags) {
    let given = [
        (flags.clip_dtype.is_some(), "--clip-dtype"),
        (flags.vae_dtype.is_some(), "--vae-dtype"),
    ];
    if let Some((_, flag)) = given.iter().find(|(g, _)| *g) {
        usage_error(&format!(
            "{flag} sets the dtype of a component this output does not hold: the input is a \
             denoiser alone, written alone; leave {flag} out"
        ));
    }
}

/// Refuses the flags a GGUF file has no place for (one model's tensors in the GGUF's own types,
/// with ComfyUI-GGUF's metadata and none of a checkpoint's), rather than leaving them unused.
pub(crate) fn refuse_unused_with_gguf(flags: &SaveFlags) {
    let given = [
        (flags.clip_dtype.is_some(), "--clip-dtype"),
        (flags.vae_dtype.is_some(), "--vae-dtype"),
        (flags.prediction.is_some(), "--prediction"),
        (flags.prompt.is_some(), "--prompt"),
        (flags.workflow.is_some(), "--workflow"),
        (flags.disable_metadata, "--disable-metadata"),
    ];
    if let Some((_, flag)) = given.iter().find(|(g, _)| *g) {
        usage_error(&format!(
            "{flag} has no effect on a GGUF file (it holds the model alone, in the types --gguf \
             sets, with ComfyUI-GGUF's metadata and no prediction, prompt or workflow); leave \
             {flag} out, or write safetensors"
        ));
    }
}

/// Carries the header metadata the loaders of an audio VAE read (LTX-2's `config`: ComfyUI's
/// `AudioVAE` is built from its `audio_vae` and `vocoder` sections) from `from`, the metadata
/// of the input that supplies the audio VAE, when the output holds one.
pub(crate) fn carry_audio_metadata(
    components: &Components,
    arch: Option<Arch>,
    from: &std::collections::BTreeMap<String, String>,
    opts: &mut SaveOptions,
) {
    if components.get(ComponentKind::AudioVae).is_none() {
        return;
    }
    let release = arch
        .and_then(|a| a.family().release)
        .unwrap_or(&checkpoint_save::family::release::LTX2);
    for (k, v) in release.carried_metadata(from) {
        opts.metadata.extra.entry(k).or_insert(v);
    }
}

/// A job whose input is a denoiser alone (a GGUF file) writes what ComfyUI's ModelSave writes
/// for it: the denoiser under its checkpoint prefix with the markers of its prediction, into
/// `diffusion_models/` unless `--prefix` says otherwise (a checkpoint layout would need text
/// encoders and an autoencoder). `--arch generic` keeps its own prefixes.
pub(crate) fn denoiser_only(
    components: &Components,
    arch: Option<Arch>,
    flags: &SaveFlags,
    opts: &mut SaveOptions,
) {
    if matches!(opts.layout, LayoutChoice::Generic(_))
        || components.get(ComponentKind::Model).is_none()
        || components.get(ComponentKind::Clip).is_some()
        || components.get(ComponentKind::Vae).is_some()
    {
        return;
    }
    refuse_unused_with_denoiser(flags);
    let model = arch.map_or(GenericPrefixes::default().model, |a| {
        a.family().prefixes.model.to_string()
    });
    opts.layout = LayoutChoice::Generic(GenericPrefixes {
        model,
        ..GenericPrefixes::default()
    });
    if flags.prefix == SaveOptions::default().prefix {
        opts.prefix = "diffusion_models/ComfyUI".into();
    }
    opts.prediction = opts.prediction.or(arch.map(Arch::default_prediction));
    // The family's layers stay in high precision, as in its checkpoint.
    opts.quantize = opts.quantize.take().map(|q| q.for_family(arch));
}

/// With `--arch auto`, an input whose keys only fit the generic prefixes is refused with what
/// detection found: converting it silently as prefixes would hide that its family is unknown.
pub(crate) fn require_family(input: &Input, arch: ArchArg) -> Result<()> {
    if arch != ArchArg::Auto || input.arch.is_some() {
        return Ok(());
    }
    let shapes = input.components.shapes();
    let model = shapes
        .get(ComponentKind::Model)
        .cloned()
        .unwrap_or_default();
    match checkpoint_save::family::detect(&model) {
        Err(e) => Err(e.into()),
        Ok(d) => anyhow::bail!(
            "its denoiser detects as {} but its keys do not form that family's layout; give \
             --arch generic to keep them under their prefixes",
            d.arch
        ),
    }
}

/// The prediction an input gives a save: what it states or its family's default, but for the
/// generic layout only what it states (no prediction is invented for prefixes alone).
pub(crate) fn input_prediction(input: &Input, arch: ArchArg) -> Option<Prediction> {
    match arch {
        ArchArg::Generic => input.prediction.filter(|_| input.prediction_stated),
        ArchArg::Auto | ArchArg::Arch(_) => input.prediction,
    }
}

/// `--dry-run`: the plan on stdout, as text or JSON; nothing is written.
pub(crate) fn print_dry_run(components: &Components, opts: &SaveOptions, json: bool) -> Result<()> {
    let plan = checkpoint_save::dry_run(components, opts)?;
    if json {
        let text = serde_json::to_string_pretty(&plan).context("cannot encode the plan as JSON")?;
        return print_stdout(&text);
    }
    let mut out = format!(
        "would write {} ({} bytes, header {} bytes; {} bytes read from inputs)\nlayout: {}, prediction: {}\n",
        plan.path.display(),
        plan.bytes_to_write,
        plan.header_bytes,
        plan.bytes_to_read,
        plan.layout,
        plan.prediction
    );
    match &plan.family {
        Some(f) => {
            let variant = match (&f.variant_title, f.test_size) {
                (Some(t), true) => format!(": {t} (test-sized synthetic model)"),
                (Some(t), false) => format!(": {t}"),
                (None, _) => String::new(),
            };
            let config: Vec<String> = f.config.iter().map(|(k, v)| format!("{k} {v}")).collect();
            out.push_str(&format!(
                "family: {}{variant}\n  evidence: {}\n  config: {}\n",
                f.name,
                f.evidence.join(", "),
                config.join(", ")
            ));
        }
        None => out.push_str("family: not detected\n"),
    }
    if !plan.dropped.is_empty() {
        out.push_str(&format!(
            "dropped as the reference does: {}\n",
            plan.dropped.join(", ")
        ));
    }
    out.push_str("metadata:\n");
    for (k, v) in &plan.metadata {
        let shown: String = v.chars().take(72).collect();
        out.push_str(&format!("  {k}: {shown}\n"));
    }
    out.push_str(&format!("tensors ({}):\n", plan.tensors.len()));
    for t in &plan.tensors {
        out.push_str(&format!(
            "  {:<8} {:<22} {}  <- {}\n",
            t.dtype,
            format!("{:?}", t.shape),
            t.key,
            t.source
        ));
    }
    print_stdout(out.trim_end())
}

/// Everything but the components, validated before any input is read.
pub(crate) fn save_options(args: &SaveFlags, cancel: &Arc<AtomicBool>) -> Result<SaveOptions> {
    let layout = match args.arch {
        ArchArg::Auto => LayoutChoice::Auto,
        ArchArg::Arch(a) => LayoutChoice::Arch(a),
        ArchArg::Generic => {
            let d = GenericPrefixes::default();
            LayoutChoice::Generic(GenericPrefixes {
                model: args.model_prefix.clone().unwrap_or(d.model),
                clip: args.clip_prefix.clone().unwrap_or(d.clip),
                vae: args.vae_prefix.clone().unwrap_or(d.vae),
                clip_vision: d.clip_vision,
            })
        }
    };
    let prefixes_given =
        args.model_prefix.is_some() || args.clip_prefix.is_some() || args.vae_prefix.is_some();
    if prefixes_given && args.arch != ArchArg::Generic {
        usage_error("--model-prefix, --clip-prefix and --vae-prefix need --arch generic");
    }
    let prediction = match (args.prediction, args.sigma_max, args.sigma_min) {
        (
            Some(Prediction::EdmV {
                sigma_max,
                sigma_min,
            }),
            max,
            min,
        ) => Some(Prediction::EdmV {
            sigma_max: max.unwrap_or(sigma_max),
            sigma_min: min.unwrap_or(sigma_min),
        }),
        (p, None, None) => p,
        _ => usage_error("--sigma-max and --sigma-min need --prediction edm-v"),
    };
    let dtypes = ComponentDtypes {
        model: args.model_dtype.unwrap_or(args.dtype),
        clip: args.clip_dtype.unwrap_or(args.dtype),
        vae: args.vae_dtype.unwrap_or(args.dtype),
        clip_vision: args.dtype,
        // The audio autoencoder follows the (video) autoencoder's choice.
        audio_vae: args.vae_dtype.unwrap_or(args.dtype),
    };
    let extra_pnginfo = args
        .workflow
        .as_deref()
        .map(|p| read_json(p, "workflow"))
        .transpose()?
        .map(|w| serde_json::Map::from_iter([("workflow".to_string(), w)]));
    let metadata = MetadataOptions {
        prompt: args
            .prompt
            .as_deref()
            .map(|p| read_json(p, "prompt"))
            .transpose()?,
        extra_pnginfo,
        disable: args.disable_metadata,
        ..MetadataOptions::default()
    };
    let quantize = match args.quantize {
        None => None,
        Some(format) => {
            let mut q = Quantize::new(format);
            for p in &args.quantize_include {
                q = q.including(p)?;
            }
            for p in &args.quantize_exclude {
                q = q.excluding(p)?;
            }
            Some(q)
        }
    };
    Ok(SaveOptions {
        layout,
        prediction,
        dtypes,
        output_dir: args.output_dir.clone(),
        prefix: args.prefix.clone(),
        metadata,
        check_finite: args.check_finite,
        progress: !args.quiet,
        cancel: Some(Arc::clone(cancel)),
        writer: args.engine.options(),
        quantize,
    })
}

/// Reports a usage error the way clap does (message, usage line, exit code 2).
pub(crate) fn usage_error(msg: &str) -> ! {
    Cli::command()
        .error(clap::error::ErrorKind::ArgumentConflict, msg)
        .exit()
}

fn read_json(path: &Path, what: &str) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} file {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("the {what} file {} is not valid JSON", path.display()))
}

/// The components of `save`: a synthetic model, or the component files in whatever naming.
fn components(args: &SaveArgs, opts: &SaveOptions) -> Result<(Components, Job)> {
    if let Some(name) = &args.synthetic {
        let mut syn = SyntheticOptions::named(name)?.with_seed(args.seed);
        if let Some(m) = args.max_dim {
            syn = syn.with_max_dim(m);
        }
        if args.tiny {
            syn = syn.tiny();
        }
        // A dry run plans from names and shapes: no need for the model's memory.
        let c = if args.out.dry_run {
            synthetic::synthetic_shapes(&syn)
                .and_then(|shapes| synthetic::placeholders(&shapes, syn.dtype))
        } else {
            synthetic::build(&syn, &Device::Cpu)
        }
        .with_context(|| format!("cannot build the synthetic {name} model"))?;
        return Ok((c, Job::default()));
    }
    let given = match opts.layout {
        LayoutChoice::Arch(a) => Some(a),
        _ => None,
    };
    let mut job = Job::default();
    let mut components = Components::default();
    let paths = |p: &Option<PathBuf>| p.iter().cloned().collect::<Vec<_>>();
    // The denoiser first: it tells the architecture, which places text encoders.
    for (kind, files) in [
        (ComponentKind::Model, paths(&args.model)),
        (ComponentKind::Clip, args.clip.clone()),
        (ComponentKind::Vae, paths(&args.vae)),
        (ComponentKind::AudioVae, paths(&args.audio_vae)),
    ] {
        // clap guarantees all three without --synthetic; a missing one is reported by the layout.
        if files.is_empty() {
            continue;
        }
        let arch = given.or(job.arch);
        let part = open_component(kind, &files, arch).with_context(|| {
            format!(
                "cannot read the {kind} component (--{})",
                kind.name().replace('_', "-")
            )
        })?;
        if kind == ComponentKind::Model && !matches!(opts.layout, LayoutChoice::Generic(_)) {
            job.arch = given.or_else(|| detect(&part.tensors));
        }
        job.read_bytes += part.bytes;
        job.left_out.extend(part.left_out);
        job.created.extend(part.created);
        components.set_inputs(kind, part.tensors);
    }
    Ok((components, job))
}

/// The architecture a denoiser in ComfyUI names detects as, if any (the layout reports why not).
fn detect(model: &checkpoint_save::InputMap) -> Option<Arch> {
    let shapes = model.iter().map(|(k, t)| (k.clone(), t.info())).collect();
    checkpoint_save::layout::detect::detect_model(&shapes).ok()
}

/// `split`: a checkpoint into component files or a diffusers folder.
pub(crate) fn split(args: &SplitArgs, cancel: &Arc<AtomicBool>) -> Result<()> {
    let start = Instant::now();
    let input = open_input(&args.checkpoint, args.arch)
        .with_context(|| format!("cannot split {}", args.checkpoint.display()))?;
    let opts = SaveOptions {
        cancel: Some(Arc::clone(cancel)),
        progress: !args.quiet,
        writer: args.engine.options(),
        ..SaveOptions::default()
    };
    let split = match (args.gguf, args.to) {
        (Some(_), Some(to)) if to != checkpoint_save::SplitTarget::Nodes => usage_error(&format!(
            "--gguf writes ComfyUI's node files (--to nodes); it cannot be given with --to {}",
            match to {
                checkpoint_save::SplitTarget::Diffusers => "diffusers",
                _ => "comfyui",
            }
        )),
        (Some(ty), _) => checkpoint_save::split_gguf(&input, &args.output_dir, &ty.into(), &opts),
        (None, to) => checkpoint_save::split(
            &input,
            &args.output_dir,
            to.unwrap_or(checkpoint_save::SplitTarget::Comfyui),
            &opts,
        ),
    }
    .with_context(|| format!("cannot split {}", args.checkpoint.display()))?;
    for f in &split.files {
        print_stdout(&f.display().to_string())?;
    }
    if !args.quiet {
        let arch = input.arch.map_or("generic".to_string(), |a| a.to_string());
        let prediction = input.prediction.unwrap_or(Prediction::Unknown);
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "split {arch} ({prediction}) into {} file(s), {} bytes in {secs:.2} s ({:.2} GB/s); \
             save it back with --arch {arch} --prediction {}",
            split.files.len(),
            split.bytes,
            split.bytes as f64 / secs.max(1e-9) / 1e9,
            prediction_arg(prediction)
        );
        if !input.left_out.is_empty() {
            eprintln!(
                "note: {} key(s) belong to no component and were not written (first: `{}`)",
                input.left_out.len(),
                input.left_out[0]
            );
        }
        if !split.dropped.is_empty() {
            eprintln!(
                "note: {} key(s) have no place in the target and were not written (first: `{}`)",
                split.dropped.len(),
                split.dropped[0]
            );
        }
    }
    Ok(())
}

/// The `--prediction` (and sigma) arguments that reproduce `p`.
fn prediction_arg(p: Prediction) -> String {
    match p {
        Prediction::EdmV {
            sigma_max,
            sigma_min,
        } => format!("edm-v --sigma-max {sigma_max} --sigma-min {sigma_min}"),
        other => other.to_string(),
    }
}

/// `inspect`: what a checkpoint's header says.
pub(crate) fn inspect(args: &InspectArgs) -> Result<()> {
    let inspection = checkpoint_save::inspect(&args.checkpoint)
        .with_context(|| format!("cannot inspect {}", args.checkpoint.display()))?;
    if args.json {
        let json = serde_json::to_string_pretty(&inspection)
            .context("cannot serialise the inspection as JSON")?;
        print_stdout(&json)
    } else {
        print_stdout(inspection.to_string().trim_end())
    }
}

pub(crate) fn parse_device(s: &str) -> Result<Device> {
    let ordinal = |rest: &str| -> Result<usize> {
        rest.parse()
            .with_context(|| format!("`{s}`: the device number after `:` must be a whole number"))
    };
    match s.split_once(':') {
        None if s == "cpu" => Ok(Device::Cpu),
        None if s == "cuda" => Ok(Device::new_cuda(0)?),
        Some(("cuda", n)) => Ok(Device::new_cuda(ordinal(n)?)?),
        None if s == "metal" => Ok(Device::new_metal(0)?),
        Some(("metal", n)) => Ok(Device::new_metal(ordinal(n)?)?),
        _ => anyhow::bail!("unknown device `{s}`; use cpu, cuda:N or metal:N"),
    }
}
