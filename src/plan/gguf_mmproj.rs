//! An mmproj GGUF target: Qwen2.5-VL's vision tower (ComfyUI's `visual.*` tensors of a
//! `qwen25_7b` encoder) planned as the file llama.cpp's `convert_hf_to_gguf.py --mmproj` writes
//! for it in its default F16 ([`crate::gguf_text::mmproj`]): llama.cpp's names, each fused
//! `attn.qkv` split into `attn_q`/`attn_k`/`attn_v` (rows in thirds), the 5-D patch
//! convolution split into its two temporal slices `v.patch_embd.weight` and `.weight.1`
//! (4-D), tensors of two or more dimensions in F16 and the rest in F32, in the order of their
//! ComfyUI names; the metadata from the tensors' shapes. Nothing is copied: the splits are
//! element ranges of the sources, read when written.

use crate::error::{Error, Result};
use crate::gguf_text::mmproj::{
    metadata, qkv_parts, split_names, to_gguf, VisionShape, PATCH, PATCH_GGUF,
};
use crate::model::{InputMap, InputTensor};
use crate::quant::GgmlType;

use super::gguf::GgufTensorInfo;
use super::gguf_target::assemble;
use super::Plan;

/// GGUF's longest tensor name (ggml's `GGML_MAX_NAME` less its terminator).
const MAX_NAME: usize = 63;

impl Plan {
    /// Plans `visual` (a Qwen2.5-VL vision tower under ComfyUI's names, `visual.…`) as an
    /// mmproj GGUF (see the [module docs](self)).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the tensor for a name llama.cpp's converter has no
    /// mmproj name for, a fused qkv whose rows are not a multiple of 3, a patch embedding that
    /// is not 5-D with 2 temporal slices (the converter's only case), a tensor that is not
    /// floating point, or a tower without its patch embedding or merger; planning errors.
    pub(crate) fn gguf_mmproj(visual: &InputMap) -> Result<Plan> {
        let bad = |hf: &str, why: String| {
            Error::InvalidInput(format!(
                "vision tensor `{hf}` {why}; llama.cpp's mmproj file cannot hold it"
            ))
        };
        let mut named: Vec<(String, InputTensor, Vec<usize>)> = Vec::new();
        for (hf, t) in visual {
            let info = t.info();
            if !crate::model::dtype::is_float(info.dtype) {
                return Err(bad(hf, format!("is {}, not floating point", info.dtype)));
            }
            let shape = info.shape.clone();
            if hf == PATCH {
                let [c1, c2, kt, kh, kw] = shape[..] else {
                    return Err(bad(hf, format!("has shape {shape:?}, not 5-D")));
                };
                if kt != 2 {
                    return Err(bad(
                        hf,
                        format!("has {kt} temporal slices; the converter splits exactly 2"),
                    ));
                }
                let plane = kh * kw;
                for (slice, name) in PATCH_GGUF.iter().enumerate() {
                    // Element (i, j, slice, ·, ·) of the 5-D tensor, per (i, j).
                    let parts = (0..c1 * c2)
                        .map(|ij| {
                            let at = (ij * kt + slice) * plane;
                            (t.clone(), at..at + plane)
                        })
                        .collect();
                    let part = InputTensor::joined(name, parts, vec![c1, c2, kh, kw])?;
                    named.push((name.to_string(), part, vec![c1, c2, kh, kw]));
                }
            } else if let Some((block, suffix)) = qkv_parts(hf) {
                let rows = shape.first().copied().unwrap_or(0);
                if rows == 0 || !rows.is_multiple_of(3) {
                    return Err(bad(
                        hf,
                        format!("has {rows} rows, not 3 equal parts (q, k, v)"),
                    ));
                }
                let per = info.numel() / 3;
                let mut part_shape = shape.clone();
                part_shape[0] = rows / 3;
                for (i, name) in split_names(block, suffix).into_iter().enumerate() {
                    let range = i * per..(i + 1) * per;
                    let part =
                        InputTensor::joined(&name, vec![(t.clone(), range)], part_shape.clone())?;
                    named.push((name, part, part_shape.clone()));
                }
            } else {
                let Some(name) = to_gguf(hf) else {
                    return Err(bad(
                        hf,
                        "has no llama.cpp mmproj name that ComfyUI-GGUF's loader maps back to it"
                            .into(),
                    ));
                };
                named.push((name, t.clone(), shape));
            }
        }
        if let Some(long) = named.iter().find(|n| n.0.len() > MAX_NAME) {
            return Err(Error::InvalidInput(format!(
                "`{}` is longer than the {MAX_NAME} bytes a GGUF tensor name holds",
                long.0
            )));
        }
        let shape = vision_shape(&named)?;
        let items = named
            .into_iter()
            .map(|(name, t, shape)| {
                let ty = if shape.len() >= 2 {
                    GgmlType::F16
                } else {
                    GgmlType::F32
                };
                let info = GgufTensorInfo {
                    name,
                    shape: if shape.is_empty() { vec![1] } else { shape },
                    ggml_type: ty,
                };
                (info, ty, t)
            })
            .collect();
        assemble(&metadata(&shape), items)
    }
}

/// The widths the metadata states, from the planned tensors.
fn vision_shape(named: &[(String, InputTensor, Vec<usize>)]) -> Result<VisionShape> {
    let dim = |name: &str, d: usize| {
        named
            .iter()
            .find(|n| n.0 == name)
            .and_then(|n| n.2.get(d).copied())
    };
    let need = |name: &str, d: usize| {
        dim(name, d).ok_or_else(|| {
            Error::InvalidInput(format!(
                "the vision tower has no `{}` (llama.cpp's `{name}`): a Qwen2.5-VL mmproj needs \
                 its patch embedding and merger",
                crate::gguf_text::mmproj::to_hf(name)
            ))
        })
    };
    let blocks = named
        .iter()
        .filter_map(|n| n.0.strip_prefix("v.blk.")?.split('.').next()?.parse().ok())
        .max()
        .map_or(0, |m: usize| m + 1);
    Ok(VisionShape {
        width: need(PATCH_GGUF[0], 0)?,
        ffn: dim("v.blk.0.ffn_up.weight", 0).unwrap_or(0),
        blocks,
        patch: need(PATCH_GGUF[0], 3)?,
        projection: need("mm.2.weight", 0)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    fn t(shape: &[usize]) -> InputTensor {
        InputTensor::Candle(Tensor::zeros(shape, DType::F16, &Device::Cpu).unwrap())
    }

    fn tower() -> InputMap {
        [
            ("visual.patch_embed.proj.weight", t(&[8, 3, 2, 2, 2])),
            ("visual.blocks.0.attn.qkv.weight", t(&[24, 8])),
            ("visual.blocks.0.attn.qkv.bias", t(&[24])),
            ("visual.blocks.0.mlp.up_proj.weight", t(&[12, 8])),
            ("visual.merger.ln_q.weight", t(&[8])),
            ("visual.merger.mlp.2.weight", t(&[16, 32])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    #[test]
    fn a_tower_is_planned_with_llama_cpps_names_and_types() {
        let plan = Plan::gguf_mmproj(&tower()).unwrap();
        let names: Vec<&str> = plan.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "v.blk.0.attn_q.bias",
                "v.blk.0.attn_k.bias",
                "v.blk.0.attn_v.bias",
                "v.blk.0.attn_q.weight",
                "v.blk.0.attn_k.weight",
                "v.blk.0.attn_v.weight",
                "v.blk.0.ffn_up.weight",
                "v.post_ln.weight",
                "mm.2.weight",
                "v.patch_embd.weight",
                "v.patch_embd.weight.1",
            ]
        );
    }

    #[test]
    fn what_the_converter_cannot_write_is_refused_by_name() {
        for (key, shape, needle) in [
            (
                "visual.blocks.0.attn.qkv.weight",
                vec![25, 8],
                "not 3 equal parts",
            ),
            (
                "visual.patch_embed.proj.weight",
                vec![8, 3, 2, 2],
                "not 5-D",
            ),
            (
                "visual.patch_embed.proj.weight",
                vec![8, 3, 3, 2, 2],
                "3 temporal slices",
            ),
            (
                "visual.pos_embed.weight",
                vec![4, 8],
                "no llama.cpp mmproj name",
            ),
        ] {
            let mut m = tower();
            m.insert(key.to_string(), t(&shape));
            let e = Plan::gguf_mmproj(&m).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(needle), "{e}");
        }
        let mut m = tower();
        m.remove("visual.merger.mlp.2.weight");
        let e = Plan::gguf_mmproj(&m).unwrap_err().to_string();
        assert!(e.contains("visual.merger.mlp.2.weight"), "{e}");
    }
}
