//! Text-encoder GGUF files as ComfyUI-GGUF's CLIP loader reads them (`gguf_clip_loader`): the
//! tensors of a `t5`/`t5encoder`, `llama`, `qwen2vl`, `qwen3` or `qwen3vl` file renamed by the
//! loader's maps (transformers names), a `llama` file's query and key rows put back in their
//! order (the loader's `llama_permute`, 32 and 8 heads), values decoded as for a GGUF denoiser,
//! for umT5-XXL (an embedding of 256384 × 4096) the `spiece_model` the loader rebuilds from
//! the file's tokenizer metadata, and for a `llama` file with Mistral 3's embedding (131072 ×
//! 5120) the `tekken_model` it rebuilds. As a clip component the encoder is placed under its
//! in-memory name ([`TextArch::encoders`]: the one the architecture uses, else told by its
//! shapes), with ComfyUI's default `logit_scale`.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::files::TensorSet;
use crate::error::{Error, Result};
use crate::gguf_text::names::to_hf;
use crate::gguf_text::tekken::{self, TEKKEN};
use crate::gguf_text::{
    permute, permuted_heads, spiece, TextArch, TEKKEN_EMBEDDING, UMT5_EMBEDDING,
};
use crate::model::{Arch, InputMap, InputTensor};
use crate::read::SafetensorsFile;

/// A tensor umT5 has and T5 has not.
const UMT5_SECOND_BIAS: &str =
    "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight";

/// The tokenizer key the loader adds beside a umT5 encoder.
const SPIECE: &str = "spiece_model";

/// Renames the tensors of `set` (a GGUF text encoder of `arch`, opened from `file`, in
/// llama.cpp's names) as the loader does (see the [module docs](self)).
///
/// # Errors
/// [`Error::InvalidInput`] for two names that map to one, a `llama` projection the loader's
/// permutation does not fit, a umT5 or Mistral 3 file whose tokenizer metadata the loader
/// cannot use.
pub(super) fn to_loader_names(
    set: &mut TensorSet,
    file: &Arc<SafetensorsFile>,
    arch: TextArch,
) -> Result<()> {
    let path = set.path.display().to_string();
    let at = |e: Error| match e {
        Error::InvalidInput(m) => Error::InvalidInput(format!("{path}: {m}")),
        other => other,
    };
    let embedding = set.tensors.get("token_embd.weight").map(|t| t.info().shape);
    let mut out = InputMap::new();
    for (name, t) in std::mem::take(&mut set.tensors) {
        let hf = to_hf(arch, &name);
        let t = match permuted_heads(arch, &hf) {
            Some(heads) => permute(&hf, &t, heads, false).map_err(at)?,
            None => t,
        };
        if out.insert(hf.clone(), t).is_some() {
            return Err(Error::InvalidInput(format!(
                "{path}: two tensors become `{hf}` under ComfyUI-GGUF's name map"
            )));
        }
    }
    let meta = file.gguf().map(|g| g.tokenizer.as_slice()).unwrap_or(&[]);
    let get = |k: &str| meta.iter().find(|(m, _)| m == k).map(|(_, v)| v.clone());
    let tokenizer = match embedding.as_deref() {
        Some(e) if arch.is_t5() && e == UMT5_EMBEDDING => {
            Some((SPIECE, spiece::from_metadata(get)))
        }
        Some(e) if arch == TextArch::Llama && e == TEKKEN_EMBEDDING => {
            Some((TEKKEN, tekken::from_metadata(get)))
        }
        _ => None,
    };
    if let Some((key, bytes)) = tokenizer {
        let bytes = bytes.map_err(at)?;
        let n = bytes.len();
        out.insert(
            key.to_string(),
            InputTensor::Candle(Tensor::from_vec(bytes, n, &Device::Cpu)?),
        );
    }
    if arch == TextArch::Qwen2Vl {
        super::mmproj::add_vision_tower(&mut out, &set.path)?;
    }
    set.tensors = out;
    Ok(())
}

/// The text-encoder architecture of a GGUF set, if it is one.
pub(super) fn text_arch(set: &TensorSet) -> Option<TextArch> {
    set.gguf_architecture
        .as_ref()?
        .as_deref()
        .and_then(TextArch::parse)
}

/// The clip component of a GGUF text encoder read by [`to_loader_names`]: its tensors under
/// `<encoder>.transformer.`, `spiece_model` or `tekken_model` at the top, and the
/// `logit_scale` ComfyUI makes (listed as created). `arch` (the job's) narrows the encoder to
/// its family's.
///
/// # Errors
/// [`Error::InvalidInput`] when the encoder cannot be told (give --arch) or `arch` uses no
/// encoder of that kind ([`Error::FamilyMismatch`]).
pub(super) fn component(
    set: &TensorSet,
    text: TextArch,
    arch: Option<Arch>,
) -> Result<(InputMap, Vec<String>, Vec<String>)> {
    let enc = encoder(set, text, arch)?;
    let mut map = InputMap::new();
    for (k, t) in &set.tensors {
        let key = if k == SPIECE || k == TEKKEN {
            k.clone()
        } else {
            format!("{enc}.transformer.{k}")
        };
        map.insert(key, t.clone());
    }
    let logit = format!("{enc}.logit_scale");
    let scale = Tensor::new(crate::synthetic::LOGIT_SCALE, &Device::Cpu)?;
    map.insert(logit.clone(), InputTensor::Candle(scale));
    Ok((map, set.left_out.clone(), vec![logit]))
}

/// Which in-memory encoder a GGUF text encoder is (see [`component`]).
fn encoder(set: &TensorSet, text: TextArch, arch: Option<Arch>) -> Result<&'static str> {
    let path = set.path.display();
    let kinds = text.encoders();
    if let Some(a) = arch {
        let own = a.family().encoders();
        let fits: Vec<&'static str> = kinds.iter().copied().filter(|e| own.contains(e)).collect();
        if fits.is_empty() {
            return Err(Error::FamilyMismatch {
                reason: format!(
                    "{path} is a `{}` text encoder ({}), which {a} does not use (its text \
                     encoders: {})",
                    text.name(),
                    kinds.join("/"),
                    own.join(", ")
                ),
            });
        }
        if let [one] = fits.as_slice() {
            return Ok(one);
        }
    }
    let width = |key: &str, dim: usize| {
        set.tensors
            .get(key)
            .and_then(|t| t.info().shape.get(dim).copied())
    };
    let by_shape = match text {
        // umT5 has a relative attention bias in every block, T5 in the first only.
        TextArch::T5 | TextArch::T5Encoder => Some(match width("shared.weight", 0) {
            Some(256_384) => "umt5xxl",
            _ if set.tensors.contains_key(UMT5_SECOND_BIAS) => "umt5xxl",
            _ => "t5xxl",
        }),
        TextArch::Qwen3 => match width("model.embed_tokens.weight", 1) {
            Some(2560) => Some("qwen3_4b"),
            Some(4096) => Some("qwen3_8b"),
            _ => None,
        },
        // Mistral 3 (Flux 2 dev) by its tekken-sized embedding, as the loader tells it.
        TextArch::Llama => match set.tensors.get("model.embed_tokens.weight") {
            Some(t) if t.info().shape == TEKKEN_EMBEDDING => Some("mistral3_24b"),
            _ => Some("llama"),
        },
        TextArch::Qwen2Vl | TextArch::Qwen3Vl => kinds.first().copied(),
    };
    by_shape.ok_or_else(|| {
        Error::InvalidInput(format!(
            "cannot tell which `{}` text encoder {path} is ({}) from its width; give --arch",
            text.name(),
            kinds.join(" or ")
        ))
    })
}
