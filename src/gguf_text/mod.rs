//! Text encoders as GGUF files, as ComfyUI-GGUF's CLIP loaders read them (`loader.py`,
//! `gguf_clip_loader`): the architectures it reads (`t5`/`t5encoder` for T5-XXL and umT5-XXL;
//! `llama`, `qwen2vl`, `qwen3`, `qwen3vl` for the LLM encoders), llama.cpp's tensor names
//! ([`names`]), the row permutation llama.cpp's converter applies to a `llama` file's query and
//! key projections (which the loader undoes with 32 query and 8 key/value heads), the umT5 and
//! Mistral 3 tokenizers carried as metadata ([`spiece`], [`tekken`]), and the types
//! llama-quantize picks ([`quantize`]).
//!
//! Which of this tool's encoders (ComfyUI's in-memory prefixes) each architecture holds:
//! `t5xxl`/`umt5xxl` ↔ `t5encoder` (read from `t5` too), `llama`/`mistral3_24b` ↔ `llama`,
//! `qwen25_7b` ↔ `qwen2vl`, `qwen3_4b`/`qwen3_8b` ↔ `qwen3`, `qwen3vl_8b` ↔ `qwen3vl`.

pub(crate) mod mmproj;
pub(crate) mod names;
pub(crate) mod quantize;
pub(crate) mod spiece;
pub(crate) mod tekken;

use std::ops::Range;

use crate::error::{Error, Result};
use crate::model::InputTensor;

/// A text-encoder architecture ComfyUI-GGUF's CLIP loader reads (`TXT_ARCH_LIST`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextArch {
    /// `t5`: llama.cpp's encoder-decoder T5 (the loader reads its encoder names).
    T5,
    /// `t5encoder`: an encoder-only T5 (what llama.cpp's converter writes for
    /// `T5EncoderModel`).
    T5Encoder,
    /// `llama`.
    Llama,
    /// `qwen2vl` (Qwen2.5-VL's language model).
    Qwen2Vl,
    /// `qwen3`.
    Qwen3,
    /// `qwen3vl`.
    Qwen3Vl,
}

/// Every architecture with its `general.architecture` string.
const ARCHS: [(TextArch, &str); 6] = [
    (TextArch::T5, "t5"),
    (TextArch::T5Encoder, "t5encoder"),
    (TextArch::Llama, "llama"),
    (TextArch::Qwen2Vl, "qwen2vl"),
    (TextArch::Qwen3, "qwen3"),
    (TextArch::Qwen3Vl, "qwen3vl"),
];

/// The loader's head counts for `llama_permute` ("L3 / Mistral").
const LLAMA_HEADS: usize = 32;
const LLAMA_KV_HEADS: usize = 8;

/// The vocabulary and width of umT5-XXL's embedding, for which the loader rebuilds the
/// tokenizer from the file's metadata.
pub(crate) const UMT5_EMBEDDING: [usize; 2] = [256_384, 4096];
/// The LLM embedding the loader pairs with a tekken tokenizer (Mistral 3).
pub(crate) const TEKKEN_EMBEDDING: [usize; 2] = [131_072, 5120];

impl TextArch {
    /// From `general.architecture`.
    pub(crate) fn parse(s: &str) -> Option<TextArch> {
        ARCHS.iter().find(|a| a.1 == s).map(|a| a.0)
    }

    /// Its `general.architecture`.
    pub(crate) fn name(self) -> &'static str {
        ARCHS.iter().find(|a| a.0 == self).map_or("?", |a| a.1)
    }

    /// Whether it is a T5 (T5's names and metadata).
    pub(crate) fn is_t5(self) -> bool {
        matches!(self, TextArch::T5 | TextArch::T5Encoder)
    }

    /// The in-memory encoders a file of it may hold.
    pub(crate) fn encoders(self) -> &'static [&'static str] {
        match self {
            TextArch::T5 | TextArch::T5Encoder => &["t5xxl", "umt5xxl"],
            TextArch::Llama => &["llama", "mistral3_24b"],
            TextArch::Qwen2Vl => &["qwen25_7b"],
            TextArch::Qwen3 => &["qwen3_4b", "qwen3_8b"],
            TextArch::Qwen3Vl => &["qwen3vl_8b"],
        }
    }

    /// The architecture a GGUF file of the in-memory encoder `enc` is written as.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an encoder ComfyUI-GGUF's loader does not read from GGUF
    /// (CLIP, Gemma, ByT5 …).
    pub(crate) fn of_encoder(enc: &str) -> Result<TextArch> {
        ARCHS
            .iter()
            .map(|a| a.0)
            .filter(|a| *a != TextArch::T5)
            .find(|a| a.encoders().contains(&enc))
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "the `{enc}` text encoder has no GGUF form ComfyUI-GGUF's loader reads (it \
                     reads T5/umT5, Llama and Qwen encoders: {}); keep it as safetensors",
                    ARCHS.map(|a| a.1).join(", ")
                ))
            })
    }
}

/// Whether a `llama` file's tensor of transformers name `hf` is permuted, and with how many
/// heads (the loader's `llama_permute`).
pub(crate) fn permuted_heads(arch: TextArch, hf: &str) -> Option<usize> {
    if arch != TextArch::Llama {
        return None;
    }
    if hf.ends_with("q_proj.weight") || hf.ends_with("q_proj.bias") {
        Some(LLAMA_HEADS)
    } else if hf.ends_with("k_proj.weight") || hf.ends_with("k_proj.bias") {
        Some(LLAMA_KV_HEADS)
    } else {
        None
    }
}

/// For each row of the result, the row of the source: llama.cpp's converter (`permute`:
/// `reshape(h, 2, R/h/2, …).swapaxes(1, 2)`) when `forward`, the loader's reverse
/// (`reshape(h, R/h/2, 2, …).swapaxes(1, 2)`) otherwise.
pub(crate) fn permutation(rows: usize, heads: usize, forward: bool) -> Option<Vec<usize>> {
    if heads == 0 || rows == 0 || !rows.is_multiple_of(2 * heads) {
        return None;
    }
    let d = rows / heads;
    let half = d / 2;
    let mut out = Vec::with_capacity(rows);
    for h in 0..heads {
        for r in 0..d {
            let src = if forward {
                // result (h, j, i) from source (h, i, j): r = 2j + i.
                let (j, i) = (r / 2, r % 2);
                i * half + j
            } else {
                // result (h, i, j) from source (h, j, i): r = i·half + j.
                let (i, j) = (r / half, r % half);
                2 * j + i
            };
            out.push(h * d + src);
        }
    }
    Some(out)
}

/// `t` with its rows (first dimension) permuted for `heads` heads (see [`permutation`]).
///
/// # Errors
/// [`Error::InvalidInput`] when the rows are not a multiple of twice the heads (the loader's
/// reshape fails on such a tensor too).
pub(crate) fn permute(
    key: &str,
    t: &InputTensor,
    heads: usize,
    forward: bool,
) -> Result<InputTensor> {
    let info = t.info();
    let rows = info.shape.first().copied().unwrap_or(0);
    let Some(order) = permutation(rows, heads, forward) else {
        return Err(Error::InvalidInput(format!(
            "`{key}` has {rows} rows, not a multiple of {}: ComfyUI-GGUF's loader undoes \
             llama.cpp's permutation of a `llama` file's queries and keys with {LLAMA_HEADS} \
             query and {LLAMA_KV_HEADS} key heads, which this tensor does not fit",
            2 * heads
        )));
    };
    let cols = info.numel() / rows;
    let mut parts: Vec<(InputTensor, Range<usize>)> = Vec::with_capacity(rows);
    for src in order {
        let range = src * cols..(src + 1) * cols;
        // Adjacent source rows join into one part.
        if let Some(last) = parts.last_mut().filter(|p| p.1.end == range.start) {
            last.1.end = range.end;
        } else {
            parts.push((t.clone(), range));
        }
    }
    InputTensor::joined(key, parts, info.shape)
}

/// The bytes of a `U8` tensor held whole in memory or in a file (a tokenizer's `spiece_model`
/// or `tekken_model`).
///
/// # Errors
/// [`Error::InvalidInput`] for a tensor of another dtype or kind; read errors.
pub(crate) fn u8_bytes(key: &str, t: &InputTensor) -> Result<Vec<u8>> {
    let not = || {
        Error::InvalidInput(format!(
            "`{key}` is not a U8 tensor of bytes (it is {} {:?})",
            t.info().dtype,
            t.info().shape
        ))
    };
    if t.info().dtype != crate::model::dtype::Dtype::U8 {
        return Err(not());
    }
    match t {
        InputTensor::File(f) => f.file().read_tensor(f.entry()),
        InputTensor::Candle(c) => Ok(c.flatten_all()?.to_vec1::<u8>()?),
        _ => Err(not()),
    }
}

/// The sentencepiece model (`spiece_model`) ComfyUI-GGUF's loader builds from the tokenizer
/// metadata of a text-encoder GGUF (`gguf_tokenizer_loader`, what it does for umT5-XXL), byte
/// for byte.
///
/// # Errors
/// [`Error::InvalidInput`] naming the field when one the loader reads is missing or of another
/// kind, or the tokenizer is not `t5`.
pub fn sentencepiece_model(file: &crate::read::gguf::GgufFile) -> Result<Vec<u8>> {
    spiece::from_metadata(|k| file.get(k).cloned())
}

/// The tekken tokenizer JSON (`tekken_model`) ComfyUI-GGUF's loader builds from the tokenizer
/// metadata of a text-encoder GGUF (`gguf_tekken_tokenizer_loader`, what it does for a Mistral 3
/// encoder), byte for byte.
///
/// # Errors
/// [`Error::InvalidInput`] naming the field when one the loader reads is missing or of another
/// kind, the tokenizer is not `gpt2`, or a token is not in GPT-2's byte characters.
pub fn tekken_model(file: &crate::read::gguf::GgufFile) -> Result<Vec<u8>> {
    tekken::from_metadata(|k| file.get(k).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_permutation_is_llama_cpps_and_the_loader_undoes_it() {
        // numpy: np.arange(8).reshape(2, 2, 2, 1).swapaxes(1, 2).reshape(8) for two heads.
        assert_eq!(
            permutation(8, 2, true).unwrap(),
            vec![0, 2, 1, 3, 4, 6, 5, 7]
        );
        // Four rows per half: rows (0..4) and (4..8) of a head interleave.
        assert_eq!(
            permutation(8, 1, true).unwrap(),
            vec![0, 4, 1, 5, 2, 6, 3, 7]
        );
        for (rows, heads) in [(8, 1), (64, 32), (48, 8), (4096, 32)] {
            let f = permutation(rows, heads, true).unwrap();
            let r = permutation(rows, heads, false).unwrap();
            let back: Vec<usize> = (0..rows).map(|i| f[r[i]]).collect();
            assert_eq!(back, (0..rows).collect::<Vec<_>>(), "{rows} {heads}");
        }
        assert!(permutation(12, 8, true).is_none());
    }

    #[test]
    fn encoders_and_architectures() {
        assert_eq!(
            TextArch::of_encoder("umt5xxl").unwrap(),
            TextArch::T5Encoder
        );
        assert_eq!(
            TextArch::of_encoder("qwen25_7b").unwrap(),
            TextArch::Qwen2Vl
        );
        assert_eq!(TextArch::of_encoder("qwen3_8b").unwrap(), TextArch::Qwen3);
        assert_eq!(TextArch::of_encoder("llama").unwrap(), TextArch::Llama);
        let e = TextArch::of_encoder("clip_l").unwrap_err().to_string();
        assert!(e.contains("clip_l") && e.contains("t5encoder"), "{e}");
        assert_eq!(
            TextArch::of_encoder("mistral3_24b").unwrap(),
            TextArch::Llama
        );
        assert_eq!(TextArch::parse("t5"), Some(TextArch::T5));
        assert_eq!(TextArch::parse("gemma2"), None);
        assert_eq!(TextArch::Qwen3Vl.name(), "qwen3vl");
    }
}
