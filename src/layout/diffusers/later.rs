//! The diffusers transformers of the families after Flux.1, ⇄ ComfyUI's names, as diffusers'
//! single-file converters (`loaders/single_file_utils.py`, `convert_*_to_diffusers`) rename
//! them: each ComfyUI name's diffusers counterpart — the same name (Qwen-Image, HiDream),
//! ordered substring replacements (Wan, LTX-Video, LTX-2, Lumina 2, Z-Image), module tables (Chroma,
//! Flux 2, HunyuanVideo), fused q/k/v split along dim 0, swapped shift/scale halves, and the
//! unused `norm_final` Lumina-style models carry and diffusers drops.
//!
//! Links are built over every ComfyUI name the family's models have (each variant's keys, full
//! size and test size, from the family table) plus the names being converted, so both
//! directions run on one table: detection only places models of those configurations.

use std::collections::{BTreeMap, BTreeSet};

use super::links::{Links, Op};
use super::{Created, ModelClass};
use crate::error::{Error, Result};
use crate::model::{Arch, Dtype, TensorInfo};

/// How one ComfyUI tensor becomes diffusers tensor(s).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Mapped {
    /// One tensor, renamed.
    Same(String),
    /// Split along dim 0 into these tensors.
    Split(Vec<String>, Op),
    /// Renamed, its two halves swapped (shift/scale ⇄ scale/shift).
    Swapped(String),
    /// Not carried by diffusers.
    Dropped,
}

/// Python's `str.replace`, pair after pair, as the converters apply their rename dicts.
pub(super) fn replace_all(key: &str, pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .fold(key.to_string(), |k, (from, to)| k.replace(from, to))
}

/// `convert_wan_transformer_to_diffusers`' rename dict, in its order.
const WAN: [(&str, &str); 28] = [
    (
        "time_embedding.0",
        "condition_embedder.time_embedder.linear_1",
    ),
    (
        "time_embedding.2",
        "condition_embedder.time_embedder.linear_2",
    ),
    (
        "text_embedding.0",
        "condition_embedder.text_embedder.linear_1",
    ),
    (
        "text_embedding.2",
        "condition_embedder.text_embedder.linear_2",
    ),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("cross_attn", "attn2"),
    ("self_attn", "attn1"),
    (".o.", ".to_out.0."),
    (".q.", ".to_q."),
    (".k.", ".to_k."),
    (".v.", ".to_v."),
    (".k_img.", ".add_k_proj."),
    (".v_img.", ".add_v_proj."),
    (".norm_k_img.", ".norm_added_k."),
    ("head.modulation", "scale_shift_table"),
    ("head.head", "proj_out"),
    ("modulation", "scale_shift_table"),
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
    ("norm2", "norm__placeholder"),
    ("norm3", "norm2"),
    ("norm__placeholder", "norm3"),
    ("img_emb.proj.0", "condition_embedder.image_embedder.norm1"),
    (
        "img_emb.proj.1",
        "condition_embedder.image_embedder.ff.net.0.proj",
    ),
    (
        "img_emb.proj.3",
        "condition_embedder.image_embedder.ff.net.2",
    ),
    ("img_emb.proj.4", "condition_embedder.image_embedder.norm2"),
    ("before_proj", "proj_in"),
    ("after_proj", "proj_out"),
];

/// `convert_ltx_transformer_checkpoint_to_diffusers`' rename dict.
const LTX: [(&str, &str); 4] = [
    ("patchify_proj", "proj_in"),
    ("adaln_single", "time_embed"),
    ("q_norm", "norm_q"),
    ("k_norm", "norm_k"),
];

/// `convert_lumina2_to_diffusers`' maps after the refiner's and the final layer's, in order.
const LUMINA: [(&str, &str); 15] = [
    ("final_layer.adaLN_modulation.1", "norm_out.linear_1"),
    ("final_layer.linear", "norm_out.linear_2"),
    ("attention_norm1", "norm1.norm"),
    ("attention_norm2", "norm2"),
    ("cap_embedder", "time_caption_embed.caption_embedder"),
    (
        "t_embedder.mlp.0",
        "time_caption_embed.timestep_embedder.linear_1",
    ),
    (
        "t_embedder.mlp.2",
        "time_caption_embed.timestep_embedder.linear_2",
    ),
    ("attention", "attn"),
    (".out.", ".to_out.0."),
    ("k_norm", "norm_k"),
    ("q_norm", "norm_q"),
    ("w1", "linear_1"),
    ("w2", "linear_2"),
    ("w3", "linear_3"),
    ("adaLN_modulation.1", "norm1.linear"),
];

/// `convert_z_image_transformer_checkpoint_to_diffusers`' rename dict.
const Z_IMAGE: [(&str, &str); 6] = [
    ("final_layer.", "all_final_layer.2-1."),
    ("x_embedder.", "all_x_embedder.2-1."),
    (".attention.out.bias", ".attention.to_out.0.bias"),
    (".attention.k_norm.weight", ".attention.norm_k.weight"),
    (".attention.q_norm.weight", ".attention.norm_q.weight"),
    (".attention.out.weight", ".attention.to_out.0.weight"),
];

/// Modules of a Flux-style double block: ComfyUI name, diffusers name.
const DOUBLE: [(&str, &str); 8] = [
    ("img_attn.proj", "attn.to_out.0"),
    ("txt_attn.proj", "attn.to_add_out"),
    ("img_mod.lin", "norm1.linear"),
    ("txt_mod.lin", "norm1_context.linear"),
    ("img_mlp.0", "ff.net.0.proj"),
    ("img_mlp.2", "ff.net.2"),
    ("txt_mlp.0", "ff_context.net.0.proj"),
    ("txt_mlp.2", "ff_context.net.2"),
];

/// Flux 2's double-block modules (its MLPs are `linear_in`/`linear_out`).
const FLUX2_DOUBLE: [(&str, &str); 6] = [
    ("img_attn.proj", "attn.to_out.0"),
    ("txt_attn.proj", "attn.to_add_out"),
    ("img_mlp.0", "ff.linear_in"),
    ("img_mlp.2", "ff.linear_out"),
    ("txt_mlp.0", "ff_context.linear_in"),
    ("txt_mlp.2", "ff_context.linear_out"),
];

/// RMS q/k norms of a double block.
const DOUBLE_NORMS: [(&str, &str); 4] = [
    ("img_attn.norm.query_norm", "attn.norm_q"),
    ("img_attn.norm.key_norm", "attn.norm_k"),
    ("txt_attn.norm.query_norm", "attn.norm_added_q"),
    ("txt_attn.norm.key_norm", "attn.norm_added_k"),
];

/// RMS q/k norms of a single block.
const SINGLE_NORMS: [(&str, &str); 2] = [
    ("norm.query_norm", "attn.norm_q"),
    ("norm.key_norm", "attn.norm_k"),
];

/// Chroma's modules outside the blocks.
const CHROMA_BASIC: [(&str, &str); 5] = [
    ("img_in", "x_embedder"),
    ("txt_in", "context_embedder"),
    ("final_layer.linear", "proj_out"),
    (
        "distilled_guidance_layer.in_proj",
        "distilled_guidance_layer.in_proj",
    ),
    (
        "distilled_guidance_layer.out_proj",
        "distilled_guidance_layer.out_proj",
    ),
];

/// Flux 2's modules outside the blocks.
const FLUX2_BASIC: [(&str, &str); 10] = [
    ("img_in", "x_embedder"),
    ("txt_in", "context_embedder"),
    (
        "time_in.in_layer",
        "time_guidance_embed.timestep_embedder.linear_1",
    ),
    (
        "time_in.out_layer",
        "time_guidance_embed.timestep_embedder.linear_2",
    ),
    (
        "guidance_in.in_layer",
        "time_guidance_embed.guidance_embedder.linear_1",
    ),
    (
        "guidance_in.out_layer",
        "time_guidance_embed.guidance_embedder.linear_2",
    ),
    (
        "double_stream_modulation_img.lin",
        "double_stream_modulation_img.linear",
    ),
    (
        "double_stream_modulation_txt.lin",
        "double_stream_modulation_txt.linear",
    ),
    (
        "single_stream_modulation.lin",
        "single_stream_modulation.linear",
    ),
    ("final_layer.linear", "proj_out"),
];

/// HunyuanVideo's modules outside the blocks (ComfyUI's names are the original checkpoint's
/// as `supported_models.HunyuanVideo.process_unet_state_dict` renames them).
const HUNYUAN_BASIC: [(&str, &str); 14] = [
    ("img_in.proj", "x_embedder.proj"),
    (
        "time_in.in_layer",
        "time_text_embed.timestep_embedder.linear_1",
    ),
    (
        "time_in.out_layer",
        "time_text_embed.timestep_embedder.linear_2",
    ),
    (
        "guidance_in.in_layer",
        "time_text_embed.guidance_embedder.linear_1",
    ),
    (
        "guidance_in.out_layer",
        "time_text_embed.guidance_embedder.linear_2",
    ),
    (
        "vector_in.in_layer",
        "time_text_embed.text_embedder.linear_1",
    ),
    (
        "vector_in.out_layer",
        "time_text_embed.text_embedder.linear_2",
    ),
    ("final_layer.linear", "proj_out"),
    ("txt_in.input_embedder", "context_embedder.proj_in"),
    (
        "txt_in.t_embedder.in_layer",
        "context_embedder.time_text_embed.timestep_embedder.linear_1",
    ),
    (
        "txt_in.t_embedder.out_layer",
        "context_embedder.time_text_embed.timestep_embedder.linear_2",
    ),
    (
        "txt_in.c_embedder.in_layer",
        "context_embedder.time_text_embed.text_embedder.linear_1",
    ),
    (
        "txt_in.c_embedder.out_layer",
        "context_embedder.time_text_embed.text_embedder.linear_2",
    ),
    ("final_layer.adaLN_modulation.1", "norm_out.linear"),
];

/// Modules of HunyuanVideo's token-refiner blocks.
const REFINER: [(&str, &str); 6] = [
    ("norm1", "norm1"),
    ("norm2", "norm2"),
    ("self_attn.proj", "attn.to_out.0"),
    ("mlp.0", "ff.net.0.proj"),
    ("mlp.2", "ff.net.2"),
    ("adaLN_modulation.1", "norm_out.linear"),
];

/// `rest` (a name inside a module scope) renamed by a module table: `<module>.weight`/`.bias`,
/// and a norm's `.scale` (ComfyUI's Flux-style norms) as diffusers' `.weight`.
fn module(rest: &str, table: &[(&str, &str)]) -> Option<String> {
    let (m, leaf) = rest.rsplit_once('.')?;
    let (_, d) = table.iter().find(|(c, _)| *c == m)?;
    let leaf = if leaf == "scale" { "weight" } else { leaf };
    matches!(leaf, "weight" | "bias").then(|| format!("{d}.{leaf}"))
}

/// `prefix{n}.{rest}` → `(n, rest)`.
fn numbered<'a>(key: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let rest = key.strip_prefix(prefix)?;
    let (n, rest) = rest.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

/// q, k, v (or more) parts of a fused `qkv` module, with the leaf.
fn parts(scope: &str, names: &[&str], leaf: &str) -> Vec<String> {
    names.iter().map(|n| format!("{scope}{n}.{leaf}")).collect()
}

const EQUAL: Op = Op::Fused { head_rows: None };

/// A Flux-style double block's tensor (`rest` inside `double_blocks.N.`), with `mlp` the MLP
/// table (Flux's `ff.net`, Flux 2's `ff.linear_in`).
fn double(d: &str, rest: &str, mlp: &[(&str, &str)]) -> Option<Mapped> {
    let (m, leaf) = rest.rsplit_once('.')?;
    match m {
        "img_attn.qkv" => Some(Mapped::Split(
            parts(d, &["attn.to_q", "attn.to_k", "attn.to_v"], leaf),
            EQUAL,
        )),
        "txt_attn.qkv" => Some(Mapped::Split(
            parts(
                d,
                &["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
                leaf,
            ),
            EQUAL,
        )),
        _ => module(rest, mlp)
            .or_else(|| module(rest, &DOUBLE_NORMS))
            .map(|n| Mapped::Same(format!("{d}{n}"))),
    }
}

/// A Flux-style single block's tensor with `linear1` split into q, k, v (`hidden` rows each)
/// and the MLP input.
fn single(d: &str, rest: &str, hidden: usize) -> Option<Mapped> {
    match rest.rsplit_once('.')? {
        ("linear1", leaf) => Some(Mapped::Split(
            parts(
                d,
                &["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"],
                leaf,
            ),
            Op::Fused {
                head_rows: Some(hidden),
            },
        )),
        _ => module(
            rest,
            &[("linear2", "proj_out"), ("modulation.lin", "norm.linear")],
        )
        .or_else(|| module(rest, &SINGLE_NORMS))
        .map(|n| Mapped::Same(format!("{d}{n}"))),
    }
}

/// Blocks of the Flux-style models: `double_blocks.N.` and `single_blocks.N.`.
fn flux_blocks(c: &str, hidden: usize, mlp: &[(&str, &str)]) -> Option<Mapped> {
    if let Some((n, rest)) = numbered(c, "double_blocks.") {
        return double(&format!("transformer_blocks.{n}."), rest, mlp);
    }
    let (n, rest) = numbered(c, "single_blocks.")?;
    single(&format!("single_transformer_blocks.{n}."), rest, hidden)
}

fn chroma(c: &str, hidden: usize) -> Option<Mapped> {
    if let Some((n, rest)) = numbered(c, "distilled_guidance_layer.layers.") {
        let m = module(rest, &[("in_layer", "linear_1"), ("out_layer", "linear_2")])?;
        return Some(Mapped::Same(format!(
            "distilled_guidance_layer.layers.{n}.{m}"
        )));
    }
    if let Some((n, "scale" | "weight")) = numbered(c, "distilled_guidance_layer.norms.") {
        return Some(Mapped::Same(format!(
            "distilled_guidance_layer.norms.{n}.weight"
        )));
    }
    module(c, &CHROMA_BASIC)
        .map(Mapped::Same)
        .or_else(|| flux_blocks(c, hidden, &DOUBLE))
}

fn flux2(c: &str) -> Option<Mapped> {
    if let Some(rest) = c.strip_prefix("final_layer.adaLN_modulation.1.") {
        return Some(Mapped::Swapped(format!("norm_out.linear.{rest}")));
    }
    if let Some((n, rest)) = numbered(c, "double_blocks.") {
        return double(&format!("transformer_blocks.{n}."), rest, &FLUX2_DOUBLE);
    }
    if let Some((n, rest)) = numbered(c, "single_blocks.") {
        let d = format!("single_transformer_blocks.{n}.");
        return module(
            rest,
            &[
                ("linear1", "attn.to_qkv_mlp_proj"),
                ("linear2", "attn.to_out"),
            ],
        )
        .or_else(|| module(rest, &SINGLE_NORMS))
        .map(|m| Mapped::Same(format!("{d}{m}")));
    }
    module(c, &FLUX2_BASIC).map(Mapped::Same)
}

fn hunyuan(c: &str, hidden: usize) -> Option<Mapped> {
    if let Some((n, rest)) = numbered(c, "txt_in.individual_token_refiner.blocks.") {
        let d = format!("context_embedder.token_refiner.refiner_blocks.{n}.");
        return match rest.rsplit_once('.')? {
            ("self_attn.qkv", leaf) => Some(Mapped::Split(
                parts(&d, &["attn.to_q", "attn.to_k", "attn.to_v"], leaf),
                EQUAL,
            )),
            _ => module(rest, &REFINER).map(|m| Mapped::Same(format!("{d}{m}"))),
        };
    }
    if let Some(rest) = c.strip_prefix("final_layer.adaLN_modulation.1.") {
        return Some(Mapped::Swapped(format!("norm_out.linear.{rest}")));
    }
    module(c, &HUNYUAN_BASIC)
        .map(Mapped::Same)
        .or_else(|| flux_blocks(c, hidden, &DOUBLE))
}

fn lumina2(c: &str, q_rows: usize) -> Mapped {
    if c == "norm_final.weight" {
        return Mapped::Dropped;
    }
    // The refiner's norms first (`context_refiner.N.norm1`), as the converter's own map does.
    let c = match numbered(c, "context_refiner.") {
        Some((n, rest)) => match rest.split_once('.') {
            Some(("attention_norm1", leaf)) => format!("context_refiner.{n}.norm1.{leaf}"),
            Some(("attention_norm2", leaf)) => format!("context_refiner.{n}.norm2.{leaf}"),
            _ => c.to_string(),
        },
        None => c.to_string(),
    };
    let d = replace_all(&c, &LUMINA);
    match d.split_once(".qkv.") {
        Some((scope, leaf)) => Mapped::Split(
            parts(&format!("{scope}."), &["to_q", "to_k", "to_v"], leaf),
            Op::FusedFirst { first_rows: q_rows },
        ),
        None => Mapped::Same(d),
    }
}

fn z_image(c: &str) -> Mapped {
    if c == "norm_final.weight" {
        return Mapped::Dropped;
    }
    let d = replace_all(c, &Z_IMAGE);
    match d.strip_suffix(".attention.qkv.weight") {
        Some(scope) => Mapped::Split(
            parts(
                &format!("{scope}.attention."),
                &["to_q", "to_k", "to_v"],
                "weight",
            ),
            EQUAL,
        ),
        None => Mapped::Same(d),
    }
}

/// The diffusers counterpart of ComfyUI name `c` in `class`; `None` for a name the class does
/// not have. `width` is what the class's splits need (the stream width; Lumina 2's q rows).
pub(super) fn mapped(class: ModelClass, c: &str, width: usize) -> Option<Mapped> {
    use ModelClass::*;
    match class {
        QwenImageTransformer | HiDreamTransformer => Some(Mapped::Same(c.to_string())),
        WanTransformer => Some(Mapped::Same(replace_all(c, &WAN))),
        LtxTransformer => Some(Mapped::Same(replace_all(c, &LTX))),
        Ltx2Transformer => super::ltx2::mapped(c).map(Mapped::Same),
        Lumina2Transformer => Some(lumina2(c, width)),
        ZImageTransformer => Some(z_image(c)),
        ChromaTransformer => chroma(c, width),
        Flux2Transformer => flux2(c),
        HunyuanVideoTransformer => hunyuan(c, width),
        WanVae | QwenImageVae => super::wan_vae::mapped(c).map(Mapped::Same),
        _ => None,
    }
}

/// The families whose models a class holds (its names are enumerated from their variants).
fn families(class: ModelClass) -> &'static [Arch] {
    use ModelClass::*;
    match class {
        WanTransformer => &[Arch::Wan21, Arch::Wan22],
        WanVae => &[Arch::Wan21],
        QwenImageVae => &[Arch::QwenImage],
        QwenImageTransformer => &[Arch::QwenImage],
        HiDreamTransformer => &[Arch::HiDream],
        LtxTransformer => &[Arch::Ltxv],
        Ltx2Transformer => &[Arch::Ltx2],
        HunyuanVideoTransformer => &[Arch::HunyuanVideo],
        Lumina2Transformer => &[Arch::Lumina2],
        ChromaTransformer => &[Arch::Chroma],
        Flux2Transformer => &[Arch::Flux2],
        ZImageTransformer => &[Arch::ZImage],
        _ => &[],
    }
}

/// Every ComfyUI name `class`'s models have: each variant's keys of the class's component, at
/// full size and test size.
fn comfy_names(class: ModelClass) -> BTreeSet<String> {
    let kind = class.kind();
    let mut out = BTreeSet::new();
    for arch in families(class) {
        for v in arch.family().variants {
            for spec in [v.full, v.tiny] {
                let shapes = crate::synthetic::expand::expand(spec);
                out.extend(
                    shapes
                        .get(kind)
                        .into_iter()
                        .flatten()
                        .map(|(k, _)| k.clone()),
                );
            }
        }
    }
    out
}

/// The width `class`'s splits need, read off keys in ComfyUI's (`comfy`) or diffusers' names.
pub(super) fn width(
    class: ModelClass,
    keys: &BTreeMap<String, TensorInfo>,
    comfy: bool,
) -> Result<usize> {
    use ModelClass::*;
    let key = match (class, comfy) {
        (Lumina2Transformer, _) => "x_embedder.weight",
        (ChromaTransformer, true) => "img_in.weight",
        (ChromaTransformer, false) => "x_embedder.weight",
        (HunyuanVideoTransformer, true) => "img_in.proj.weight",
        (HunyuanVideoTransformer, false) => "x_embedder.proj.weight",
        _ => return Ok(0),
    };
    match keys.get(key).and_then(|i| i.shape.first()) {
        Some(&w) if w > 0 => Ok(w),
        _ => Err(Error::InvalidInput(format!(
            "a {} needs `{key}` (its rows are the width that splits the fused q/k/v); it is \
             missing",
            class.name()
        ))),
    }
}

/// Links of `class` over its models' ComfyUI names and `extra` ones.
pub(super) fn links<'a>(
    class: ModelClass,
    extra: impl IntoIterator<Item = &'a String>,
    width: usize,
) -> Links {
    let mut names = comfy_names(class);
    names.extend(extra.into_iter().cloned());
    let mut l = Links::default();
    for c in names {
        match mapped(class, &c, width) {
            Some(Mapped::Same(d)) => l.same(d, c),
            Some(Mapped::Split(parts, op)) => l.split(parts, c, op),
            Some(Mapped::Swapped(d)) => l.op(d, c, Op::Swapped),
            Some(Mapped::Dropped) | None => {}
        }
    }
    l
}

/// Whether ComfyUI name `c` of `class` is one diffusers does not carry.
pub(super) fn dropped(class: ModelClass, c: &str) -> bool {
    mapped(class, c, 1) == Some(Mapped::Dropped)
}

/// Tensors ComfyUI holds that `class` does not carry, with the value written instead: Lumina
/// 2's and Z-Image's unused `norm_final.weight`, ones of the width (an RMS norm's identity).
pub(super) fn created(class: ModelClass, keys: &BTreeMap<String, TensorInfo>) -> Vec<Created> {
    if !matches!(
        class,
        ModelClass::Lumina2Transformer | ModelClass::ZImageTransformer
    ) {
        return Vec::new();
    }
    let Some(info) = keys
        .get("x_embedder.weight")
        .or_else(|| keys.get("all_x_embedder.2-1.weight"))
    else {
        return Vec::new();
    };
    let n = info.shape.first().copied().unwrap_or(0);
    let one: &[u8] = match info.dtype {
        Dtype::F64 => &[0, 0, 0, 0, 0, 0, 0xf0, 0x3f],
        Dtype::F32 => &[0, 0, 0x80, 0x3f],
        Dtype::F16 => &[0, 0x3c],
        Dtype::BF16 => &[0x80, 0x3f],
        _ => return Vec::new(),
    };
    vec![Created {
        key: "norm_final.weight".into(),
        info: TensorInfo::new(vec![n], info.dtype),
        bytes: one.repeat(n),
    }]
}
