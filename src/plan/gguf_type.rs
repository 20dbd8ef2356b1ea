//! The types a GGUF target is written in, named as ComfyUI-GGUF's tools name them: F16 and BF16
//! (what `tools/convert.py` writes), and the file types of `llama-quantize` (llama.cpp with
//! ComfyUI-GGUF's `tools/lcpp.patch`), which quantizes that file.
//!
//! A quantized file type is a mix: a default block type, with some tensor classes bumped to a
//! wider type (see [`super::gguf_quantize`]). As in llama-quantize, `Q5_K`, `Q4_K` and `Q3_K`
//! name the `_M` mixes; `Q8_0`, `Q6_K`, `Q5_1`, `Q4_1` and `Q3_K_S`, `Q5_K_S` use one type.

use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// The type of a GGUF target (see the README's table of types, under Input layouts).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GgufType {
    /// IEEE half (convert.py's output for f16 and f32 models; `general.file_type` 1).
    F16,
    /// bfloat16 (convert.py's output for bf16 models; `general.file_type` 32).
    BF16,
    /// Q8_0 throughout (`general.file_type` 7).
    Q8_0,
    /// Q6_K throughout (18).
    Q6_K,
    /// Q5_K, attention values, fused qkv and feed-forward outputs in Q6_K (17).
    Q5_K_M,
    /// Q5_K throughout (16).
    Q5_K_S,
    /// Q5_1 throughout (9).
    Q5_1,
    /// Q5_0, feed-forward outputs in Q5_1 (8).
    Q5_0,
    /// Q4_K, attention values and feed-forward outputs in Q6_K, fused qkv in Q5_K (15).
    Q4_K_M,
    /// Q4_K, the first four attention values and feed-forward outputs in Q5_K (14).
    Q4_K_S,
    /// Q4_1 throughout (3).
    Q4_1,
    /// Q4_0, feed-forward outputs in Q4_1 (2).
    Q4_0,
    /// Q3_K, attention values in Q5_K, fused qkv in Q4_K, feed-forward outputs in Q5_K (13).
    Q3_K_L,
    /// Q3_K, the first two attention values in Q5_K and the rest in Q4_K, fused qkv and
    /// feed-forward outputs in Q4_K (12).
    Q3_K_M,
    /// Q3_K throughout (11).
    Q3_K_S,
    /// Q2_K, attention values in Q3_K (10).
    Q2_K,
}

/// Every type with its name and llama.cpp's `LlamaFileType` number.
const TYPES: [(GgufType, &str, u32); 16] = [
    (GgufType::F16, "F16", 1),
    (GgufType::BF16, "BF16", 32),
    (GgufType::Q8_0, "Q8_0", 7),
    (GgufType::Q6_K, "Q6_K", 18),
    (GgufType::Q5_K_M, "Q5_K_M", 17),
    (GgufType::Q5_K_S, "Q5_K_S", 16),
    (GgufType::Q5_1, "Q5_1", 9),
    (GgufType::Q5_0, "Q5_0", 8),
    (GgufType::Q4_K_M, "Q4_K_M", 15),
    (GgufType::Q4_K_S, "Q4_K_S", 14),
    (GgufType::Q4_1, "Q4_1", 3),
    (GgufType::Q4_0, "Q4_0", 2),
    (GgufType::Q3_K_L, "Q3_K_L", 13),
    (GgufType::Q3_K_M, "Q3_K_M", 12),
    (GgufType::Q3_K_S, "Q3_K_S", 11),
    (GgufType::Q2_K, "Q2_K", 10),
];

impl GgufType {
    /// The names `FromStr` accepts, for help texts.
    pub const NAMES: &'static str = "F16, BF16, Q8_0, Q6_K, Q5_K_M (Q5_K), Q5_K_S, Q5_1, Q5_0, \
         Q4_K_M (Q4_K), Q4_K_S, Q4_1, Q4_0, Q3_K_L, Q3_K_M (Q3_K), Q3_K_S, Q2_K";

    /// Its name (`Q4_K_M`).
    pub fn name(self) -> &'static str {
        TYPES.iter().find(|t| t.0 == self).map_or("?", |t| t.1)
    }

    /// The default type of its tensors: the file's type for F16 and BF16, the block type the
    /// mix starts from for the others (llama-quantize's `default_type`).
    pub fn ggml(self) -> GgmlType {
        match self {
            GgufType::F16 => GgmlType::F16,
            GgufType::BF16 => GgmlType::BF16,
            GgufType::Q8_0 => GgmlType::Q8_0,
            GgufType::Q6_K => GgmlType::Q6_K,
            GgufType::Q5_K_M | GgufType::Q5_K_S => GgmlType::Q5_K,
            GgufType::Q5_1 => GgmlType::Q5_1,
            GgufType::Q5_0 => GgmlType::Q5_0,
            GgufType::Q4_K_M | GgufType::Q4_K_S => GgmlType::Q4_K,
            GgufType::Q4_1 => GgmlType::Q4_1,
            GgufType::Q4_0 => GgmlType::Q4_0,
            GgufType::Q3_K_L | GgufType::Q3_K_M | GgufType::Q3_K_S => GgmlType::Q3_K,
            GgufType::Q2_K => GgmlType::Q2_K,
        }
    }

    /// Whether llama-quantize makes it (F16 and BF16 are convert.py's alone).
    pub fn is_quantized(self) -> bool {
        self.ggml().is_quantized()
    }

    /// llama.cpp's `LlamaFileType` number (`general.file_type`).
    pub(crate) fn file_type(self) -> u32 {
        TYPES.iter().find(|t| t.0 == self).map_or(0, |t| t.2)
    }
}

impl std::fmt::Display for GgufType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for GgufType {
    type Err = Error;

    /// The names of [`GgufType::NAMES`] in any case; `Q5_K`, `Q4_K` and `Q3_K` are the `_M`
    /// mixes, as in llama-quantize.
    fn from_str(s: &str) -> Result<Self> {
        let upper = s.to_ascii_uppercase();
        let name = match upper.as_str() {
            "Q5_K" => "Q5_K_M",
            "Q4_K" => "Q4_K_M",
            "Q3_K" => "Q3_K_M",
            other => other,
        };
        if let Some(t) = TYPES.iter().find(|t| t.1 == name) {
            return Ok(t.0);
        }
        let why = if upper.starts_with("IQ") || upper.starts_with("TQ") {
            " (ComfyUI-GGUF's lcpp.patch refuses the IQ and ternary types for image models)"
        } else {
            ""
        };
        Err(Error::InvalidInput(format!(
            "GGUF type `{s}` is not one this tool writes{why}: choose one of {}",
            GgufType::NAMES
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_with_llama_quantize_aliases_and_file_types() {
        for (t, name, _) in TYPES {
            assert_eq!(name.parse::<GgufType>().unwrap(), t);
            assert_eq!(name.to_lowercase().parse::<GgufType>().unwrap(), t);
            assert_eq!(t.to_string(), name);
        }
        assert_eq!("q4_k".parse::<GgufType>().unwrap(), GgufType::Q4_K_M);
        assert_eq!("Q5_K".parse::<GgufType>().unwrap(), GgufType::Q5_K_M);
        assert_eq!("Q3_K".parse::<GgufType>().unwrap(), GgufType::Q3_K_M);
        // llama.cpp's `enum llama_ftype`.
        assert_eq!(GgufType::Q4_K_M.file_type(), 15);
        assert_eq!(GgufType::Q8_0.file_type(), 7);
        assert_eq!(GgufType::Q2_K.file_type(), 10);
        assert_eq!(GgufType::BF16.file_type(), 32);
        let e = "IQ4_XS".parse::<GgufType>().unwrap_err().to_string();
        assert!(e.contains("IQ4_XS") && e.contains("Q4_K_M"), "{e}");
        assert!("Q7".parse::<GgufType>().is_err());
        assert!(!GgufType::F16.is_quantized() && GgufType::Q4_0.is_quantized());
    }
}
