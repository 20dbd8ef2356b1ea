//! The types of a text-encoder GGUF: what llama.cpp's `convert_hf_to_gguf.py` writes (F32 for
//! 1-D tensors, `_norm.weight`s and every tensor whose name does not end in `.weight`; the
//! file's F16 or BF16 otherwise), and, for a quantized [`GgufType`], what `llama-quantize` of
//! llama.cpp b3962 picks for that file (`llama_model_quantize_internal` and
//! `llama_tensor_get_type`, the stock rules; ComfyUI-GGUF's `lcpp.patch` changes only image
//! architectures):
//!
//! - quantized: names ending in `weight` with two or more dimensions (ggml's count), not a
//!   `_norm.weight`, `ffn_gate_inp` or T5's `attn_rel_b`;
//! - `output.weight`, or `token_embd.weight` when there is no `output.weight` (a T5 encoder):
//!   Q6_K (Q8_0 stays Q8_0; rows not a multiple of 256 give Q8_0);
//! - `attn_v.weight`: Q2_K → Q4_K with grouped-query attention of 4 or more (query heads per
//!   key head, from the projections' rows) else Q3_K; Q3_K_M → Q5_K for the first two, Q4_K
//!   after; Q3_K_L → Q5_K; Q4_K_M and Q5_K_M → Q6_K where `use_more_bits` (the first and last
//!   eighth of the layers and every third between); Q4_K_S → Q5_K for the first four;
//! - `ffn_down`: Q2_K → Q3_K; Q3_K_M → Q5_K in the first sixteenth of the layers, Q4_K after;
//!   Q3_K_L → Q5_K; Q4_K_M and Q5_K_M → Q6_K where `use_more_bits`; Q4_K_S → Q5_K in the first
//!   eighth;
//! - `attn_output.weight`: Q2_K → Q3_K, Q3_K_M → Q4_K, Q3_K_L → Q5_K;
//! - a K-quant on rows that are not a multiple of 256 falls back: Q4_K → Q5_0, Q5_K → Q5_1,
//!   Q6_K → Q8_0, then F16 where rows are not whole blocks of that (llama.cpp's IQ4_NL fallback
//!   of Q2_K and Q3_K is refused: this tool does not write IQ types); the 32-value types on
//!   such rows (where ggml asserts) fall back to F16.
//!
//! The 70B and mixture-of-experts rules do not apply to text encoders; b3962's sanity check
//! that aborts on encoder-only T5 files (it counts three attention blocks per layer) is not
//! reproduced: the rules above are applied to them as to any file.

use crate::error::{Error, Result};
use crate::plan::gguf_target::GgufTarget;
use crate::plan::gguf_type::GgufType;
use crate::quant::GgmlType;

/// A tensor of the file llama-quantize reads: its name and stored shape (row-major).
pub(crate) struct Tensor<'a> {
    /// llama.cpp's name.
    pub name: &'a str,
    /// Its shape (the last dimension is ggml's `ne[0]`).
    pub shape: &'a [usize],
}

/// The type convert_hf_to_gguf.py writes `name` of `shape` in, for a file of `base` (F16 or
/// BF16).
pub(crate) fn converted(name: &str, shape: &[usize], base: GgmlType) -> GgmlType {
    if shape.len() <= 1 || name.ends_with("_norm.weight") || !name.ends_with(".weight") {
        GgmlType::F32
    } else {
        base
    }
}

/// llama-quantize's decisions over one file (see the [module docs](self)).
pub(crate) struct TextQuantizer<'a> {
    target: &'a GgufTarget,
    has_output: bool,
    n_attention_wv: usize,
    n_layer: usize,
    n_gqa: usize,
    i_attention_wv: usize,
    i_ffn_down: usize,
}

impl<'a> TextQuantizer<'a> {
    /// The quantizer of a file holding `tensors` (in file order) with `n_layer` blocks.
    pub(crate) fn new(target: &'a GgufTarget, tensors: &[Tensor<'_>], n_layer: usize) -> Self {
        let rows = |suffix: &str| {
            tensors
                .iter()
                .find(|t| t.name.ends_with(suffix))
                .and_then(|t| t.shape.first().copied())
        };
        let n_gqa = match (rows("attn_q.weight"), rows("attn_k.weight")) {
            (Some(q), Some(k)) if k > 0 && q.is_multiple_of(k) => q / k,
            _ => 1,
        };
        TextQuantizer {
            target,
            has_output: tensors.iter().any(|t| t.name == "output.weight"),
            n_attention_wv: tensors
                .iter()
                .filter(|t| t.name.contains("attn_v.weight") || t.name.contains("attn_qkv.weight"))
                .count(),
            n_layer,
            n_gqa,
            i_attention_wv: 0,
            i_ffn_down: 0,
        }
    }

    /// The type of `t`, which convert wrote in `base`; called in file order.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] where llama-quantize would fall back to IQ4_NL.
    pub(crate) fn decide(&mut self, t: &Tensor<'_>, base: GgmlType) -> Result<GgmlType> {
        let ty = self.target.ty;
        let name = t.name;
        if !ty.is_quantized() || self.target.exclude.iter().any(|r| r.is_match(name)) {
            return Ok(base);
        }
        let row = t.shape.last().copied().unwrap_or(1);
        let forced = self.target.include.iter().any(|r| r.is_match(name));
        if forced && !row.is_multiple_of(ty.ggml().block_len()) {
            return Ok(base);
        }
        if !forced && !quantizable(name, t.shape) {
            return Ok(base);
        }
        let new = self.get_type(name, ty, row)?;
        Ok(if new == base { base } else { new })
    }

    /// `llama_tensor_get_type` for the types of [`GgufType`].
    fn get_type(&mut self, name: &str, ftype: GgufType, row: usize) -> Result<GgmlType> {
        use GgmlType as G;
        use GgufType as T;
        let default = ftype.ggml();
        let more = |i: usize, n: usize| {
            i < n / 8 || i >= 7 * n / 8 || (i as i64 - (n / 8) as i64) % 3 == 2
        };
        let mut new = default;
        if name == "output.weight" || (!self.has_output && name == "token_embd.weight") {
            if !row.is_multiple_of(256) {
                new = G::Q8_0;
            } else if new != G::Q8_0 {
                new = G::Q6_K;
            }
        } else if name == "token_embd.weight" {
        } else if name.contains("attn_v.weight") {
            let i = self.i_attention_wv;
            new = match ftype {
                T::Q2_K if self.n_gqa >= 4 => G::Q4_K,
                T::Q2_K => G::Q3_K,
                T::Q3_K_M if i < 2 => G::Q5_K,
                T::Q3_K_M => G::Q4_K,
                T::Q3_K_L => G::Q5_K,
                T::Q4_K_M | T::Q5_K_M if more(i, self.n_attention_wv) => G::Q6_K,
                T::Q4_K_S if i < 4 => G::Q5_K,
                _ => new,
            };
            self.i_attention_wv += 1;
        } else if name.contains("ffn_down") {
            let (i, n) = (self.i_ffn_down, self.n_layer);
            new = match ftype {
                T::Q2_K => G::Q3_K,
                T::Q3_K_M if i < n / 16 => G::Q5_K,
                T::Q3_K_M => G::Q4_K,
                T::Q3_K_L => G::Q5_K,
                T::Q4_K_M | T::Q5_K_M if more(i, n) => G::Q6_K,
                T::Q4_K_S if i < n / 8 => G::Q5_K,
                _ => new,
            };
            self.i_ffn_down += 1;
        } else if name.contains("attn_output.weight") {
            new = match ftype {
                T::Q2_K => G::Q3_K,
                T::Q3_K_M => G::Q4_K,
                T::Q3_K_L => G::Q5_K,
                _ => new,
            };
        } else if name.contains("attn_qkv.weight") {
            new = match ftype {
                T::Q3_K_M | T::Q3_K_L => G::Q4_K,
                T::Q4_K_M => G::Q5_K,
                T::Q5_K_M => G::Q6_K,
                _ => new,
            };
        }
        let k_quant = matches!(new, G::Q2_K | G::Q3_K | G::Q4_K | G::Q5_K | G::Q6_K);
        if k_quant && !row.is_multiple_of(256) {
            new = match new {
                G::Q4_K => G::Q5_0,
                G::Q5_K => G::Q5_1,
                G::Q6_K => G::Q8_0,
                _ => {
                    return Err(Error::InvalidInput(format!(
                        "`{name}` has rows of {row} values, not a multiple of 256: llama-quantize \
                         stores it as IQ4_NL instead of {new}, a type this tool does not write; \
                         choose Q4_K or wider, or exclude it (--gguf-exclude)"
                    )))
                }
            };
        }
        if !row.is_multiple_of(new.block_len()) {
            new = G::F16;
        }
        Ok(new)
    }
}

/// llama-quantize's `quantize` flag.
fn quantizable(name: &str, shape: &[usize]) -> bool {
    // `name.rfind("weight") == name.size() - 6` (true for a 5-byte name without it: npos).
    let weight = name.ends_with("weight") || (name.len() == 5 && !name.contains("weight"));
    let dims = shape.iter().skip_while(|&&d| d == 1).count().max(1);
    weight
        && dims >= 2
        && !["_norm.weight", "ffn_gate_inp.weight", "attn_rel_b.weight"]
            .iter()
            .any(|s| name.contains(s))
}

/// The number of blocks of a file's tensors (`blk.N.` or `enc.blk.N.`).
pub(crate) fn block_count(names: &[&str]) -> usize {
    names
        .iter()
        .filter_map(|n| {
            let rest = n.strip_prefix("enc.").unwrap_or(n).strip_prefix("blk.")?;
            rest.split('.').next()?.parse::<usize>().ok()
        })
        .max()
        .map_or(0, |m| m + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t5_file(layers: usize, width: usize) -> Vec<(String, Vec<usize>)> {
        let mut v = vec![("token_embd.weight".to_string(), vec![1024, width])];
        for i in 0..layers {
            for (n, s) in [
                ("attn_norm.weight", vec![width]),
                ("attn_q.weight", vec![width, width]),
                ("attn_k.weight", vec![width, width]),
                ("attn_v.weight", vec![width, width]),
                ("attn_o.weight", vec![width, width]),
                ("ffn_gate.weight", vec![2 * width, width]),
                ("ffn_up.weight", vec![2 * width, width]),
                ("ffn_down.weight", vec![width, 2 * width]),
                ("ffn_norm.weight", vec![width]),
            ] {
                v.push((format!("enc.blk.{i}.{n}"), s));
            }
        }
        v.push(("enc.blk.0.attn_rel_b.weight".into(), vec![32, 64]));
        v
    }

    fn types(ty: GgufType, file: &[(String, Vec<usize>)]) -> Vec<(String, GgmlType)> {
        let target = GgufTarget::from(ty);
        let tensors: Vec<Tensor> = file
            .iter()
            .map(|(n, s)| Tensor { name: n, shape: s })
            .collect();
        let names: Vec<&str> = file.iter().map(|(n, _)| n.as_str()).collect();
        let mut q = TextQuantizer::new(&target, &tensors, block_count(&names));
        tensors
            .iter()
            .map(|t| {
                let base = converted(t.name, t.shape, GgmlType::F16);
                (t.name.to_string(), q.decide(t, base).unwrap())
            })
            .collect()
    }

    #[test]
    fn llama_quantize_types_of_a_t5_encoder() {
        let file = t5_file(16, 256);
        let q4 = types(GgufType::Q4_K_M, &file);
        let get = |v: &[(String, GgmlType)], n: &str| v.iter().find(|x| x.0 == n).unwrap().1;
        // No output tensor: the embedding is the output's Q6_K.
        assert_eq!(get(&q4, "token_embd.weight"), GgmlType::Q6_K);
        assert_eq!(get(&q4, "enc.blk.0.attn_norm.weight"), GgmlType::F32);
        assert_eq!(get(&q4, "enc.blk.0.attn_rel_b.weight"), GgmlType::F16);
        assert_eq!(get(&q4, "enc.blk.0.attn_q.weight"), GgmlType::Q4_K);
        // use_more_bits(i, 16): i < 2, i >= 14, (i - 2) % 3 == 2.
        let more: Vec<usize> = (0..16)
            .filter(|i| get(&q4, &format!("enc.blk.{i}.attn_v.weight")) == GgmlType::Q6_K)
            .collect();
        assert_eq!(more, vec![0, 1, 4, 7, 10, 13, 14, 15]);
        let down: Vec<usize> = (0..16)
            .filter(|i| get(&q4, &format!("enc.blk.{i}.ffn_down.weight")) == GgmlType::Q6_K)
            .collect();
        assert_eq!(down, more);
        let q8 = types(GgufType::Q8_0, &file);
        assert_eq!(get(&q8, "token_embd.weight"), GgmlType::Q8_0);
        assert_eq!(get(&q8, "enc.blk.3.attn_v.weight"), GgmlType::Q8_0);
        let q2 = types(GgufType::Q2_K, &file);
        assert_eq!(get(&q2, "enc.blk.3.attn_v.weight"), GgmlType::Q3_K);
        assert_eq!(get(&q2, "enc.blk.3.ffn_down.weight"), GgmlType::Q3_K);
        assert_eq!(get(&q2, "enc.blk.3.attn_o.weight"), GgmlType::Q2_K);
        let q3 = types(GgufType::Q3_K_M, &file);
        assert_eq!(get(&q3, "enc.blk.0.ffn_down.weight"), GgmlType::Q5_K);
        assert_eq!(get(&q3, "enc.blk.1.ffn_down.weight"), GgmlType::Q4_K);
        assert_eq!(get(&q3, "enc.blk.1.attn_v.weight"), GgmlType::Q5_K);
        assert_eq!(get(&q3, "enc.blk.2.attn_v.weight"), GgmlType::Q4_K);
    }

    #[test]
    fn k_quants_fall_back_on_short_rows() {
        let file = t5_file(2, 64);
        let q4 = types(GgufType::Q4_K_M, &file);
        let get = |n: &str| q4.iter().find(|x| x.0 == n).unwrap().1;
        assert_eq!(get("token_embd.weight"), GgmlType::Q8_0);
        assert_eq!(get("enc.blk.0.attn_q.weight"), GgmlType::Q5_0);
        // use_more_bits(i, 2): the last layer only; its Q6_K falls back to Q8_0.
        assert_eq!(get("enc.blk.0.attn_v.weight"), GgmlType::Q5_0);
        assert_eq!(get("enc.blk.1.attn_v.weight"), GgmlType::Q8_0);
        let target = GgufTarget::from(GgufType::Q3_K_M);
        let shape = [64, 64];
        let t = Tensor {
            name: "enc.blk.0.attn_q.weight",
            shape: &shape,
        };
        let mut q = TextQuantizer::new(&target, std::slice::from_ref(&t), 1);
        let e = q.decide(&t, GgmlType::F16).unwrap_err().to_string();
        assert!(e.contains("IQ4_NL"), "{e}");
    }

    #[test]
    fn grouped_query_attention_and_output() {
        let file = vec![
            ("token_embd.weight".to_string(), vec![1024, 256]),
            ("blk.0.attn_q.weight".into(), vec![256, 256]),
            ("blk.0.attn_k.weight".into(), vec![64, 256]),
            ("blk.0.attn_v.weight".into(), vec![64, 256]),
            ("blk.0.attn_q.bias".into(), vec![256]),
            ("output.weight".into(), vec![1024, 256]),
        ];
        let q2 = types(GgufType::Q2_K, &file);
        let get = |n: &str| q2.iter().find(|x| x.0 == n).unwrap().1;
        assert_eq!(get("blk.0.attn_v.weight"), GgmlType::Q4_K);
        assert_eq!(get("token_embd.weight"), GgmlType::Q2_K);
        assert_eq!(get("output.weight"), GgmlType::Q6_K);
        assert_eq!(get("blk.0.attn_q.bias"), GgmlType::F32);
    }
}
