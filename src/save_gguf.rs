//! Saving a denoiser as a GGUF file (ComfyUI-GGUF's format): the same plan → write → publish as
//! every save, with the plan of [`crate::plan::gguf_target`] and the `.gguf` extension.

use std::path::Path;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::layout::detect::detect_model;
use crate::model::{Arch, ComponentKind, Components};
use crate::naming::SaveTarget;
use crate::plan::gguf_target::GgufTarget;
use crate::plan::Plan;
use crate::publish::{reserve_at, Reservation};
use crate::save::{refuse_input_as_output, write_method, write_reserved, LayoutChoice};
use crate::write::Method;
use crate::{SaveOptions, Saved};

/// Saves the denoiser of `components` as one GGUF file of `ty` (a [`crate::GgufType`], or a
/// [`GgufTarget`] with include/exclude patterns), named as ComfyUI names saves
/// (`opts.prefix` under `opts.output_dir`, with the `.gguf` extension; ComfyUI-GGUF reads it
/// from `diffusion_models/` or `unet/`), exactly as ComfyUI-GGUF's `tools/convert.py` (and
/// `fix_5d_tensors.py`) would write it from the same tensors, quantized for a quantized type as
/// llama-quantize patched by ComfyUI-GGUF's `lcpp.patch` would quantize that file: the
/// architecture string, the key set, each tensor's type and shape, the metadata, the blocks
/// (bit for bit ggml's reference quantizers'), encoded range by range as the file is written. Text encoders and the autoencoder are not
/// written. The architecture is `opts.layout`'s, or detected from the denoiser.
///
/// Of `opts`, the file reads the layout (the architecture), the prefix and output folder, the
/// writer, `check_finite`, `progress` and `cancel`. A GGUF holds no prediction, prompt or
/// workflow: `prediction` and `metadata` are not written (ComfyUI-GGUF's metadata is); a
/// `quantize` or a denoiser dtype other than `keep` is refused (the [`crate::GgufType`] sets
/// the types).
///
/// ```
/// use candle_core::Device;
/// use checkpoint_save::synthetic::{build, SyntheticOptions};
/// use checkpoint_save::{save_gguf, Arch, GgufType, SaveOptions};
///
/// # fn main() -> checkpoint_save::Result<()> {
/// let components = build(&SyntheticOptions::new(Arch::Flux).tiny(), &Device::Cpu)?;
/// let dir = std::env::temp_dir().join(format!("checkpoint-save-gguf-{}", std::process::id()));
/// let opts = SaveOptions {
///     output_dir: dir.clone(),
///     prefix: "diffusion_models/ComfyUI".into(),
///     ..SaveOptions::default()
/// };
/// let saved = save_gguf(&components, GgufType::BF16, &opts)?;
/// assert!(saved.path.ends_with("diffusion_models/ComfyUI_00001_.gguf"));
/// let file = checkpoint_save::gguf::GgufFile::open(&saved.path)?;
/// assert_eq!(file.architecture(), Some("flux"));
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// [`Error::MissingComponent`] without a denoiser; [`Error::InvalidInput`] for the generic
/// layout (a GGUF file names its architecture), `opts.quantize` or a denoiser dtype, a name longer than GGUF allows, a tensor that
/// is not floating point; detection, planning, write and publish errors as [`crate::save`]
/// (nothing is left under a final name).
pub fn save_gguf(
    components: &Components,
    ty: impl Into<GgufTarget>,
    opts: &SaveOptions,
) -> Result<Saved> {
    let target = SaveTarget::resolve(&opts.prefix, &opts.output_dir)?.with_extension("gguf");
    let folder = target.folder.clone();
    save_with(components, &ty.into(), opts, &folder, || target.reserve())
}

/// [`save_gguf`] to exactly `path`, refusing to replace an existing file.
///
/// # Errors
/// As [`save_gguf`], plus an I/O error of kind `AlreadyExists` when `path` exists.
pub fn save_gguf_to_path(
    components: &Components,
    path: &Path,
    ty: impl Into<GgufTarget>,
    opts: &SaveOptions,
) -> Result<Saved> {
    refuse_input_as_output(components, path)?;
    let folder = crate::publish::folder_of(path);
    save_with(components, &ty.into(), opts, folder, || reserve_at(path))
}

fn save_with(
    components: &Components,
    ty: &GgufTarget,
    opts: &SaveOptions,
    folder: &Path,
    reserve: impl FnOnce() -> Result<Reservation>,
) -> Result<Saved> {
    let start = Instant::now();
    let (plan, method, arch) = plan_gguf(components, ty, opts, folder)?;
    let reservation = reserve()?;
    let (path, non_finite) = write_reserved(&plan, reservation, method, opts)?;
    Ok(Saved {
        path,
        arch: Some(arch),
        prediction: arch.default_prediction(),
        tensors: plan.tensors().len(),
        bytes: plan.file_len(),
        non_finite,
        dropped: Vec::new(),
        elapsed: start.elapsed(),
    })
}

/// The plan of [`save_gguf`] for a file in `folder`, its write method and the architecture;
/// nothing is created.
///
/// # Errors
/// As [`save_gguf`], up to the first byte written.
pub(crate) fn plan_gguf(
    components: &Components,
    ty: &GgufTarget,
    opts: &SaveOptions,
    folder: &Path,
) -> Result<(Plan, Method, Arch)> {
    let model = components
        .get(ComponentKind::Model)
        .ok_or_else(|| Error::MissingComponent {
            component: "model",
            hint: "a GGUF file holds the denoiser (UNet/DiT)".into(),
        })?;
    let arch: Arch =
        match &opts.layout {
            LayoutChoice::Arch(a) => *a,
            LayoutChoice::Auto => {
                let shapes = model.iter().map(|(k, t)| (k.clone(), t.info())).collect();
                detect_model(&shapes)?
            }
            LayoutChoice::Generic(_) => return Err(Error::InvalidInput(
                "a GGUF file names its architecture (`general.architecture`), which the generic \
                 layout does not know; give the architecture (--arch NAME; LayoutChoice::Arch) or let it be detected"
                    .into(),
            )),
        };
    if opts.quantize.is_some() || opts.dtypes.model != crate::TargetDtype::Keep {
        return Err(Error::InvalidInput(
            "a GGUF file's types are its GgufType's (and F32 where ComfyUI-GGUF's convert.py \
             keeps it): leave SaveOptions' quantize unset and the denoiser's dtype `keep`"
                .into(),
        ));
    }
    let plan = Plan::gguf(model, arch, ty)?;
    // A GGUF's data section starts at its 32-byte padding: direct I/O's units start at the
    // first page boundary inside it (`write::units::aligned`).
    let method = write_method(&plan, opts, folder);
    Ok((plan, method, arch))
}
