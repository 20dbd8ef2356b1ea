//! Saving text encoders as GGUF files ComfyUI-GGUF's CLIP loaders read (`CLIPLoaderGGUF`,
//! `DualCLIPLoaderGGUF` …): one file per encoder of the clip component, planned by
//! [`Plan::gguf_text`] and written like every save.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::gguf_text::spiece;
use crate::gguf_text::tekken::{self, TEKKEN};
use crate::gguf_text::{TextArch, TEKKEN_EMBEDDING, UMT5_EMBEDDING};
use crate::model::{ComponentKind, Components, InputMap};
use crate::naming::SaveTarget;
use crate::plan::gguf_target::GgufTarget;
use crate::plan::Plan;
use crate::save::{write_method, write_reserved};
use crate::{SaveOptions, Saved};

/// The clip component's top-level tokenizer key that a umT5 GGUF carries as metadata.
const SPIECE: &str = "spiece_model";

/// The in-memory name of Mistral 3 (Flux 2 dev's encoder), whose GGUF carries `tekken_model`.
const MISTRAL3: &str = "mistral3_24b";

/// One planned text-encoder file: the encoder, its architecture and plan.
struct Planned {
    encoder: String,
    plan: Plan,
    dropped: Vec<String>,
    /// The vision tower's mmproj file, written beside the text encoder's (`qwen2vl`).
    mmproj: Option<Plan>,
}

/// Saves each text encoder of `components` as one GGUF file of `ty` that ComfyUI-GGUF's CLIP
/// loaders read (its `text_encoders/` or `clip/` folder), named `<opts.prefix>_<encoder>` under
/// `opts.output_dir` with the `.gguf` extension: llama.cpp's names, its permutation of a
/// `llama` file's queries and keys, the types llama.cpp's converter and llama-quantize choose,
/// for umT5 its tokenizer as `tokenizer.ggml.*` metadata (from the component's
/// `spiece_model`), and for Mistral 3 (`mistral3_24b`) llama.cpp's Mistral Small hyper-parameters
/// and its tekken tokenizer as `gpt2` metadata (from `tekken_model`). Every file is planned
/// before the first is written. The `logit_scale` of an encoder is not written (the loader
/// gives none; ComfyUI makes its default), nor a tokenizer that does not parse beside an encoder
/// whose embedding the loader rebuilds none for (listed in [`Saved::dropped`]). A `qwen25_7b`
/// encoder's vision tower (`visual.*`) is written as llama.cpp's mmproj file beside it,
/// `<stem>-mmproj-F16.gguf`, which the loader pairs with it; the two are one job (see
/// the mmproj writer), listed in that order.
///
/// # Errors
/// [`Error::MissingComponent`] without text encoders; [`Error::InvalidInput`] for an encoder
/// ComfyUI-GGUF does not read from GGUF (CLIP, Gemma …, named), other top-level keys, a umT5-XXL
/// or full-size Mistral 3 without a readable `spiece_model` / `tekken_model`; planning, write
/// and publish errors as [`crate::save`].
pub fn save_gguf_text(
    components: &Components,
    ty: impl Into<GgufTarget>,
    opts: &SaveOptions,
) -> Result<Vec<Saved>> {
    let target = ty.into();
    let clip = components
        .get(ComponentKind::Clip)
        .ok_or_else(|| Error::MissingComponent {
            component: "clip",
            hint: "a text-encoder GGUF holds a text encoder".into(),
        })?;
    let planned = plan_all(clip, &target)?;
    let mut out = Vec::with_capacity(planned.len());
    for p in planned {
        let start = Instant::now();
        let prefix = format!("{}_{}", opts.prefix, p.encoder);
        let file = SaveTarget::resolve(&prefix, &opts.output_dir)?.with_extension("gguf");
        let method = write_method(&p.plan, opts, &file.folder);
        let reservation = file.reserve()?;
        let written = match &p.mmproj {
            Some(vision) => {
                crate::save_mmproj::write_pair(&p.plan, reservation, method, vision, opts)?.into()
            }
            None => vec![write_reserved(&p.plan, reservation, method, opts)?],
        };
        let plans = [Some(&p.plan), p.mmproj.as_ref()];
        let mut dropped = Some(p.dropped);
        for ((path, non_finite), plan) in written.into_iter().zip(plans.into_iter().flatten()) {
            out.push(Saved {
                path,
                arch: None,
                prediction: crate::model::Prediction::Unknown,
                tensors: plan.tensors().len(),
                bytes: plan.file_len(),
                non_finite,
                dropped: dropped
                    .take()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|k| (ComponentKind::Clip, k))
                    .collect(),
                elapsed: start.elapsed(),
            });
        }
    }
    Ok(out)
}

/// The plan of each encoder's file, in the order of their names.
fn plan_all(clip: &InputMap, target: &GgufTarget) -> Result<Vec<Planned>> {
    let mut encoders: Vec<(String, InputMap)> = Vec::new();
    let mut spiece_model = None;
    let mut tekken_model = None;
    for (key, t) in clip {
        if key == SPIECE {
            spiece_model = Some(t);
            continue;
        }
        if key == TEKKEN {
            tekken_model = Some(t);
            continue;
        }
        let Some((enc, rest)) = key.split_once('.') else {
            return Err(Error::InvalidInput(format!(
                "the clip component's `{key}` belongs to no text encoder; a text-encoder GGUF \
                 holds one encoder's tensors"
            )));
        };
        if rest == "logit_scale" {
            continue;
        }
        let hf = rest.strip_prefix("transformer.").unwrap_or(rest);
        match encoders.iter_mut().find(|e| e.0 == enc) {
            Some(e) => {
                e.1.insert(hf.to_string(), t.clone());
            }
            None => encoders.push((enc.to_string(), [(hf.to_string(), t.clone())].into())),
        }
    }
    if encoders.is_empty() {
        return Err(Error::InvalidInput(
            "the clip component holds no text encoder to write as GGUF".into(),
        ));
    }
    let mut out = Vec::with_capacity(encoders.len());
    let (mut spiece_used, mut tekken_used) = (false, false);
    for (enc, mut tensors) in encoders {
        let arch = TextArch::of_encoder(&enc)?;
        let mmproj = match arch {
            TextArch::Qwen2Vl => {
                crate::save_mmproj::plan_vision(&mut tensors).map_err(|e| within(&enc, e))?
            }
            _ => None,
        };
        let mut dropped = Vec::new();
        let tokenizer = if arch.is_t5() {
            spiece_used = true;
            tokenizer(&enc, &tensors, spiece_model, &mut dropped)?
        } else if enc == MISTRAL3 {
            tekken_used = true;
            let mut meta = tekken::hyper_parameters(|k| tensors.get(k).map(|t| t.info().shape));
            meta.extend(mistral_tokenizer(&tensors, tekken_model, &mut dropped)?);
            meta
        } else {
            Vec::new()
        };
        let plan =
            Plan::gguf_text(&tensors, arch, tokenizer, target).map_err(|e| within(&enc, e))?;
        out.push(Planned {
            encoder: enc,
            plan,
            dropped,
            mmproj,
        });
    }
    if spiece_model.is_some() && !spiece_used {
        return Err(Error::InvalidInput(format!(
            "the clip component's `{SPIECE}` belongs to a umT5 encoder, and none is written; \
             a Llama or Qwen GGUF has no place for it"
        )));
    }
    if tekken_model.is_some() && !tekken_used {
        return Err(Error::InvalidInput(format!(
            "the clip component's `{TEKKEN}` belongs to a Mistral 3 encoder (`{MISTRAL3}`), and \
             none is written; a Llama or Qwen GGUF has no place for it"
        )));
    }
    Ok(out)
}

fn within(enc: &str, e: Error) -> Error {
    match e {
        Error::InvalidInput(m) => Error::InvalidInput(format!("text encoder `{enc}`: {m}")),
        other => other,
    }
}

/// The tokenizer metadata of a T5 encoder: from `spiece_model` when it is a sentencepiece
/// model; none when there is none, or it does not parse and the loader needs none (then it is
/// `dropped`).
fn tokenizer(
    enc: &str,
    tensors: &InputMap,
    spiece_model: Option<&crate::model::InputTensor>,
    dropped: &mut Vec<String>,
) -> Result<Vec<(String, crate::read::gguf::MetaValue)>> {
    let embedding = tensors.get("shared.weight").map(|t| t.info().shape);
    let rows = embedding
        .as_ref()
        .and_then(|s| s.first().copied())
        .unwrap_or(0);
    let needed = embedding.as_deref() == Some(&UMT5_EMBEDDING[..]);
    let Some(t) = spiece_model else {
        if needed {
            return Err(Error::InvalidInput(format!(
                "`{enc}` is a umT5-XXL encoder, whose GGUF must carry its tokenizer \
                 (ComfyUI-GGUF's loader rebuilds `{SPIECE}` from it), but the clip component \
                 has no `{SPIECE}`: give the text-encoder file that holds it (ComfyUI's \
                 umt5_xxl files do)"
            )));
        }
        return Ok(Vec::new());
    };
    let bytes = crate::gguf_text::u8_bytes(SPIECE, t)?;
    match spiece::parse(&bytes).and_then(|sp| spiece::to_metadata(&sp, rows)) {
        Ok(meta) => Ok(meta),
        Err(e) if needed => Err(e),
        Err(_) => {
            dropped.push(SPIECE.to_string());
            Ok(Vec::new())
        }
    }
}

/// The tokenizer metadata of a Mistral 3 encoder: from `tekken_model` when it is a tekken
/// file; none when there is none or it does not parse and the loader needs none (then it is
/// `dropped`). The loader rebuilds `tekken_model` only for the full-size embedding, and fails
/// on such a file without `gpt2` tokenizer metadata.
fn mistral_tokenizer(
    tensors: &InputMap,
    tekken_model: Option<&crate::model::InputTensor>,
    dropped: &mut Vec<String>,
) -> Result<Vec<(String, crate::read::gguf::MetaValue)>> {
    let embedding = tensors
        .get("model.embed_tokens.weight")
        .map(|t| t.info().shape);
    let rows = embedding
        .as_ref()
        .and_then(|s| s.first().copied())
        .unwrap_or(0);
    let needed = embedding.as_deref() == Some(&TEKKEN_EMBEDDING[..]);
    let Some(t) = tekken_model else {
        if needed {
            return Err(Error::InvalidInput(format!(
                "`{MISTRAL3}` is a full-size Mistral 3 encoder, whose GGUF must carry its \
                 tokenizer (ComfyUI-GGUF's loader rebuilds `{TEKKEN}` from it and fails \
                 without it), but the clip component has no `{TEKKEN}`: give the text-encoder \
                 file that holds it (ComfyUI's mistral_3_small_flux2 files do)"
            )));
        }
        return Ok(Vec::new());
    };
    let bytes = crate::gguf_text::u8_bytes(TEKKEN, t)?;
    match tekken::parse(&bytes).and_then(|tk| tekken::to_metadata(&tk, rows)) {
        Ok(meta) => Ok(meta),
        Err(e) if needed => Err(e),
        Err(_) => {
            dropped.push(TEKKEN.to_string());
            Ok(Vec::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf_text::tekken;
    use crate::model::{Arch, ComponentKind, InputTensor};
    use crate::read::gguf::{GgufFile, MetaArray, MetaValue};
    use crate::GgufType;

    /// Flux 2 dev's full-size Mistral 3 (placeholders: no weights in memory) with its synthetic
    /// tekken file, planned as a Q8_0 GGUF: the header holds llama.cpp's Mistral metadata.
    #[test]
    fn a_full_size_mistral3_plans_with_its_tokenizer_and_hyper_parameters() {
        let shapes = crate::synthetic::shapes(Arch::Flux2);
        let comps = crate::synthetic::placeholders(&shapes, None).unwrap();
        let mut clip = comps.get(ComponentKind::Clip).unwrap().clone();
        let json = crate::synthetic::tekken::json_bytes(crate::synthetic::tekken::BYTES)
            .unwrap()
            .to_vec();
        let n = json.len();
        clip.insert(
            TEKKEN.to_string(),
            InputTensor::Candle(
                candle_core::Tensor::from_vec(json, n, &candle_core::Device::Cpu).unwrap(),
            ),
        );
        let planned = plan_all(&clip, &GgufType::Q8_0.into()).unwrap();
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].encoder, MISTRAL3);
        let plan = &planned[0].plan;
        // The header alone, the data left sparse, read back as a GGUF file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, plan.header()).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(plan.file_len())
            .unwrap();
        let f = GgufFile::open(&path).unwrap();
        let u32_of = |k: &str| match f.get(k) {
            Some(MetaValue::U32(v)) => *v,
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(u32_of("llama.vocab_size"), 131_072);
        assert_eq!(u32_of("llama.block_count"), 40);
        assert_eq!(u32_of("llama.embedding_length"), 5120);
        assert_eq!(u32_of("llama.feed_forward_length"), 32_768);
        assert_eq!(u32_of("llama.attention.key_length"), 128);
        assert_eq!(u32_of("llama.attention.value_length"), 128);
        assert_eq!(u32_of("tokenizer.ggml.bos_token_id"), 1);
        assert_eq!(u32_of("tokenizer.ggml.eos_token_id"), 2);
        let Some(MetaValue::Array(MetaArray::String(tokens))) = f.get("tokenizer.ggml.tokens")
        else {
            panic!("no tokens")
        };
        assert_eq!(tokens.len(), 131_072);
        assert_eq!(
            (&*tokens[3], &*tokens[999], &*tokens[1000]),
            ("[INST]", "<SPECIAL_999>", "Ā")
        );
        let Some(MetaValue::Array(MetaArray::String(merges))) = f.get("tokenizer.ggml.merges")
        else {
            panic!("no merges")
        };
        assert!(merges.len() >= 131_072 - 1000 - 256, "{}", merges.len());
        // What the loader rebuilds from it is that tekken file's vocabulary, cut to the rows.
        let back = tekken::parse(&tekken::from_metadata(|k| f.get(k).cloned()).unwrap()).unwrap();
        assert_eq!(back.specials.len(), 1000);
        assert_eq!(back.vocab.len(), 131_072 - 1000);
        let embd = f.tensor("token_embd.weight").unwrap();
        assert_eq!(embd.type_name(), "Q8_0");
    }
}
