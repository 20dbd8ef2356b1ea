//! Decoder-only language models used as text encoders (Llama, Qwen2.5/3, Gemma 2/3, Mistral),
//! as ComfyUI holds them: `<name>.transformer.model.…` (and Qwen2.5-VL's vision tower under
//! `<name>.transformer.visual.…`, Gemma 3's under `<name>.transformer.vision_model.…` with its
//! `multi_modal_projector`), with the `<name>.logit_scale` every ComfyUI encoder carries.

use super::expand::Dict;
use super::spec::{LlmConfig, Qwen3VisionConfig, QwenVisionConfig, SiglipConfig, Vision};
use crate::model::Dtype;

/// Every parameter of the language model (no `lm_head`: ComfyUI drops it).
pub(super) fn llm(cfg: &LlmConfig, d: &mut Dict) {
    let n = cfg.name;
    let h = cfg.hidden_size;
    d.add_typed(format!("{n}.logit_scale"), &[], Dtype::F32);
    let m = format!("{n}.transformer.model");
    d.add(format!("{m}.embed_tokens.weight"), &[cfg.vocab_size, h]);
    let q = cfg.num_heads * cfg.head_dim;
    let kv = cfg.num_kv_heads * cfg.head_dim;
    for i in 0..cfg.num_layers {
        let l = format!("{m}.layers.{i}");
        d.linear(&format!("{l}.self_attn.q_proj"), h, q, cfg.qkv_bias);
        d.linear(&format!("{l}.self_attn.k_proj"), h, kv, cfg.qkv_bias);
        d.linear(&format!("{l}.self_attn.v_proj"), h, kv, cfg.qkv_bias);
        d.linear(&format!("{l}.self_attn.o_proj"), q, h, false);
        if cfg.qk_norm {
            d.add(format!("{l}.self_attn.q_norm.weight"), &[cfg.head_dim]);
            d.add(format!("{l}.self_attn.k_norm.weight"), &[cfg.head_dim]);
        }
        d.linear(
            &format!("{l}.mlp.gate_proj"),
            h,
            cfg.intermediate_size,
            false,
        );
        d.linear(&format!("{l}.mlp.up_proj"), h, cfg.intermediate_size, false);
        d.linear(
            &format!("{l}.mlp.down_proj"),
            cfg.intermediate_size,
            h,
            false,
        );
        d.add(format!("{l}.input_layernorm.weight"), &[h]);
        d.add(format!("{l}.post_attention_layernorm.weight"), &[h]);
        if cfg.sandwich_norms {
            d.add(format!("{l}.pre_feedforward_layernorm.weight"), &[h]);
            d.add(format!("{l}.post_feedforward_layernorm.weight"), &[h]);
        }
    }
    d.add(format!("{m}.norm.weight"), &[h]);
    if cfg.lm_head {
        d.linear(&format!("{m}.lm_head"), h, cfg.vocab_size, false);
    }
    match &cfg.vision {
        Some(Vision::Qwen(v)) => qwen_vision(v, &format!("{n}.transformer.visual"), d),
        Some(Vision::Qwen3(v)) => qwen3_vision(v, &format!("{n}.transformer.visual"), d),
        Some(Vision::Siglip(v)) => {
            siglip(v, &format!("{n}.transformer.vision_model"), d);
            // `Gemma3MultiModalProjector`: an RMS norm and a bare projection matrix stored
            // (vision width, LM width).
            let p = format!("{n}.transformer.multi_modal_projector");
            d.add(
                format!("{p}.mm_input_projection_weight"),
                &[v.hidden_size, h],
            );
            d.add(format!("{p}.mm_soft_emb_norm.weight"), &[v.hidden_size]);
        }
        None => {}
    }
}

/// ComfyUI's `CLIPVision` as a SigLIP tower: a biased patch convolution, one position per
/// patch (no class token), pre-norm blocks with biased projections, a final layer norm.
fn siglip(cfg: &SiglipConfig, p: &str, d: &mut Dict) {
    let h = cfg.hidden_size;
    let patches = (cfg.image_size / cfg.patch_size).pow(2);
    d.add(
        format!("{p}.embeddings.patch_embedding.weight"),
        &[h, 3, cfg.patch_size, cfg.patch_size],
    );
    d.add(format!("{p}.embeddings.patch_embedding.bias"), &[h]);
    d.add(
        format!("{p}.embeddings.position_embedding.weight"),
        &[patches, h],
    );
    d.clip_layers(p, cfg.num_layers, h, cfg.intermediate_size);
    d.norm(&format!("{p}.post_layernorm"), h);
}

/// Qwen2.5-VL's vision tower: a 3-D patch embedding, RMS-normed blocks with fused qkv and a
/// gated MLP (with biases), and the merger that packs 2×2 patches into the LM's width.
fn qwen_vision(cfg: &QwenVisionConfig, p: &str, d: &mut Dict) {
    let h = cfg.hidden_size;
    d.add(
        format!("{p}.patch_embed.proj.weight"),
        &[
            h,
            3,
            cfg.temporal_patch_size,
            cfg.patch_size,
            cfg.patch_size,
        ],
    );
    for i in 0..cfg.depth {
        let b = format!("{p}.blocks.{i}");
        d.add(format!("{b}.norm1.weight"), &[h]);
        d.add(format!("{b}.norm2.weight"), &[h]);
        d.linear(&format!("{b}.attn.qkv"), h, 3 * h, true);
        d.linear(&format!("{b}.attn.proj"), h, h, true);
        d.linear(
            &format!("{b}.mlp.gate_proj"),
            h,
            cfg.intermediate_size,
            true,
        );
        d.linear(&format!("{b}.mlp.up_proj"), h, cfg.intermediate_size, true);
        d.linear(
            &format!("{b}.mlp.down_proj"),
            cfg.intermediate_size,
            h,
            true,
        );
    }
    let merged = h * cfg.spatial_merge_size * cfg.spatial_merge_size;
    d.add(format!("{p}.merger.ln_q.weight"), &[h]);
    d.linear(&format!("{p}.merger.mlp.0"), merged, merged, true);
    d.linear(
        &format!("{p}.merger.mlp.2"),
        merged,
        cfg.out_hidden_size,
        true,
    );
}

/// Qwen3-VL's vision tower as ComfyUI builds it (`qwen35.Qwen35VisionModel` and
/// `qwen3vl.Qwen3VLDeepstackMerger`): a biased 3-D patch embedding, a learned position table,
/// LayerNorm blocks with fused qkv and a two-layer MLP (all biased), the merger (a LayerNorm
/// before the 2×2 merge) and the DeepStack mergers (their LayerNorm after it).
fn qwen3_vision(cfg: &Qwen3VisionConfig, p: &str, d: &mut Dict) {
    let h = cfg.hidden_size;
    let pp = [
        h,
        3,
        cfg.temporal_patch_size,
        cfg.patch_size,
        cfg.patch_size,
    ];
    d.add(format!("{p}.patch_embed.proj.weight"), &pp);
    d.add(format!("{p}.patch_embed.proj.bias"), &[h]);
    d.add(
        format!("{p}.pos_embed.weight"),
        &[cfg.num_position_embeddings, h],
    );
    for i in 0..cfg.depth {
        let b = format!("{p}.blocks.{i}");
        d.norm(&format!("{b}.norm1"), h);
        d.norm(&format!("{b}.norm2"), h);
        d.linear(&format!("{b}.attn.qkv"), h, 3 * h, true);
        d.linear(&format!("{b}.attn.proj"), h, h, true);
        d.linear(
            &format!("{b}.mlp.linear_fc1"),
            h,
            cfg.intermediate_size,
            true,
        );
        d.linear(
            &format!("{b}.mlp.linear_fc2"),
            cfg.intermediate_size,
            h,
            true,
        );
    }
    let merged = h * cfg.spatial_merge_size * cfg.spatial_merge_size;
    let merger = |d: &mut Dict, m: &str, norm: usize| {
        d.norm(&format!("{m}.norm"), norm);
        d.linear(&format!("{m}.linear_fc1"), merged, merged, true);
        d.linear(
            &format!("{m}.linear_fc2"),
            merged,
            cfg.out_hidden_size,
            true,
        );
    };
    merger(d, &format!("{p}.merger"), h);
    for i in 0..cfg.deepstack_mergers {
        merger(d, &format!("{p}.deepstack_merger_list.{i}"), merged);
    }
}
