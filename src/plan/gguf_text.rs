//! A text-encoder GGUF target: one encoder (transformers names, as ComfyUI's text-encoder files
//! hold it) planned as the file llama.cpp's `convert_hf_to_gguf.py` writes for it, quantized as
//! llama-quantize would for a quantized type ([`crate::gguf_text::quantize`]), in the layout of
//! every GGUF target ([`super::gguf_target::assemble`]).
//!
//! Tensors are named as llama.cpp names them ([`crate::gguf_text::names`]), in the order of
//! their transformers names; a `llama` file's query and key projections are permuted as
//! llama.cpp's converter permutes them. The metadata: `general.architecture`, the block count,
//! embedding and feed-forward widths under the architecture's name, `general.file_type`,
//! `general.quantization_version`, then the further fields given (a Mistral 3 encoder's
//! hyper-parameters, the tokenizer's).

use crate::error::{Error, Result};
use crate::gguf_text::names::to_gguf;
use crate::gguf_text::quantize::{block_count, converted, Tensor, TextQuantizer};
use crate::gguf_text::{permute, permuted_heads, TextArch};
use crate::model::dtype::Dtype;
use crate::model::{InputMap, InputTensor};
use crate::quant::GgmlType;
use crate::read::gguf::MetaValue;

use super::gguf::GgufTensorInfo;
use super::gguf_target::{assemble, GgufTarget, GgufType};
use super::Plan;

/// GGUF's longest tensor name (ggml's `GGML_MAX_NAME` less its terminator, as patched).
const MAX_NAME: usize = 127;

impl Plan {
    /// Plans `encoder` (one text encoder in transformers names) as a text-encoder GGUF of
    /// `arch` in the target's type, with `tokenizer` metadata (the tokenizer's fields and any
    /// further hyper-parameters; see the [module docs](self)).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty encoder, a name the loader would not give back, a
    /// tensor that is not floating point, a `llama` projection the loader's permutation does
    /// not fit, a type llama-quantize would choose that this tool does not write; planning
    /// errors of the sources and the header.
    pub(crate) fn gguf_text(
        encoder: &InputMap,
        arch: TextArch,
        tokenizer: Vec<(String, MetaValue)>,
        target: &GgufTarget,
    ) -> Result<Plan> {
        if encoder.is_empty() {
            return Err(Error::InvalidInput(
                "the text encoder has no tensors to write as GGUF".into(),
            ));
        }
        let ty = target.ty;
        let mut named = Vec::with_capacity(encoder.len());
        for (hf, t) in encoder {
            let Some(name) = to_gguf(arch, hf) else {
                return Err(Error::InvalidInput(format!(
                    "`{hf}` has no llama.cpp name that ComfyUI-GGUF's loader maps back to it for \
                     a `{}` file; this encoder cannot be written as GGUF",
                    arch.name()
                )));
            };
            if name.len() > MAX_NAME {
                return Err(Error::InvalidInput(format!(
                    "`{name}` is longer than the {MAX_NAME} bytes a GGUF tensor name holds"
                )));
            }
            let info = t.info();
            if !crate::model::dtype::is_float(info.dtype) {
                return Err(Error::InvalidInput(format!(
                    "`{hf}` is {}, not floating point: a GGUF text encoder holds float weights",
                    info.dtype
                )));
            }
            let t = match permuted_heads(arch, hf) {
                Some(heads) => permute(hf, t, heads, true)?,
                None => t.clone(),
            };
            named.push((name, t, info.shape, info.dtype));
        }
        let names: Vec<&str> = named.iter().map(|n| n.0.as_str()).collect();
        let width_of = |name: &str, dim: usize| {
            named
                .iter()
                .find(|n| n.0.ends_with(name))
                .and_then(|n| n.2.get(dim).copied())
        };
        let a = arch.name();
        let mut metadata = vec![(
            "general.architecture".to_string(),
            MetaValue::String(a.to_string()),
        )];
        let n_layer = block_count(&names);
        metadata.push((format!("{a}.block_count"), MetaValue::U32(n_layer as u32)));
        for (key, name, dim) in [
            ("embedding_length", "token_embd.weight", 1),
            ("feed_forward_length", "0.ffn_up.weight", 0),
        ] {
            if let Some(w) = width_of(name, dim) {
                metadata.push((format!("{a}.{key}"), MetaValue::U32(w as u32)));
            }
        }
        metadata.push((
            "general.file_type".to_string(),
            MetaValue::U32(ty.file_type()),
        ));
        metadata.push((
            "general.quantization_version".to_string(),
            MetaValue::U32(2),
        ));
        metadata.extend(tokenizer);
        let tensors: Vec<Tensor> = named
            .iter()
            .map(|n| Tensor {
                name: &n.0,
                shape: &n.2,
            })
            .collect();
        let mut quantizer = TextQuantizer::new(target, &tensors, n_layer);
        let mut items = Vec::with_capacity(named.len());
        for ((name, t, shape, dtype), tensor) in named.iter().zip(&tensors) {
            let file = match ty {
                _ if !ty.is_quantized() => ty.ggml(),
                _ if *dtype == Dtype::BF16 => GgufType::BF16.ggml(),
                _ => GgmlType::F16,
            };
            let base = converted(name, shape, file);
            let ggml = quantizer.decide(tensor, base)?;
            let info = GgufTensorInfo {
                name: name.clone(),
                shape: if shape.is_empty() {
                    vec![1]
                } else {
                    shape.clone()
                },
                ggml_type: ggml,
            };
            let t: InputTensor = t.clone();
            items.push((info, base, t));
        }
        assemble(&metadata, items)
    }
}
