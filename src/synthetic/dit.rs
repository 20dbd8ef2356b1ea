//! The diffusion transformers of the video and image families that came after Flux, as ComfyUI
//! builds them (`comfy/ldm/wan`, `qwen_image`, `hidream`, `lumina`): every parameter's key and
//! shape from a handful of hyper-parameters.

use super::expand::Dict;
use super::spec::{
    HiDreamConfig, HunyuanVideoConfig, LtxvConfig, LuminaConfig, QwenImage21Config,
    QwenImageConfig, WanConfig,
};

/// ComfyUI `wan.model.WanModel` (Wan 2.1 and 2.2): patch embedding (1×2×2), text and time
/// embedders, `num_layers` blocks of self-attention, cross-attention and feed-forward with a
/// learned modulation, and the head. Image-to-video models add the CLIP-vision projection
/// (`img_emb`) and image keys in every cross-attention.
pub(super) fn wan(cfg: &WanConfig, d: &mut Dict) {
    let dim = cfg.dim;
    d.add("patch_embedding.weight", &[dim, cfg.in_dim, 1, 2, 2]);
    d.add("patch_embedding.bias", &[dim]);
    d.linear("text_embedding.0", cfg.text_dim, dim, true);
    d.linear("text_embedding.2", dim, dim, true);
    d.linear("time_embedding.0", cfg.freq_dim, dim, true);
    d.linear("time_embedding.2", dim, dim, true);
    d.linear("time_projection.1", dim, 6 * dim, true);
    for i in 0..cfg.num_layers {
        let b = format!("blocks.{i}");
        d.add(format!("{b}.modulation"), &[1, 6, dim]);
        for attn in ["self_attn", "cross_attn"] {
            for p in ["q", "k", "v", "o"] {
                d.linear(&format!("{b}.{attn}.{p}"), dim, dim, true);
            }
            d.add(format!("{b}.{attn}.norm_q.weight"), &[dim]);
            d.add(format!("{b}.{attn}.norm_k.weight"), &[dim]);
        }
        if cfg.img_dim.is_some() {
            d.linear(&format!("{b}.cross_attn.k_img"), dim, dim, true);
            d.linear(&format!("{b}.cross_attn.v_img"), dim, dim, true);
            d.add(format!("{b}.cross_attn.norm_k_img.weight"), &[dim]);
        }
        d.norm(&format!("{b}.norm3"), dim);
        d.linear(&format!("{b}.ffn.0"), dim, cfg.ffn_dim, true);
        d.linear(&format!("{b}.ffn.2"), cfg.ffn_dim, dim, true);
    }
    d.add("head.modulation", &[1, 2, dim]);
    d.linear("head.head", dim, cfg.out_dim * 4, true);
    if let Some(img) = cfg.img_dim {
        // MLPProj: LayerNorm, Linear, GELU, Linear, LayerNorm.
        d.norm("img_emb.proj.0", img);
        d.linear("img_emb.proj.1", img, img, true);
        d.linear("img_emb.proj.3", img, dim, true);
        d.norm("img_emb.proj.4", dim);
    }
}

/// ComfyUI `qwen_image.model.QwenImageTransformer2DModel`: a dual-stream MMDiT with per-stream
/// modulation and GELU feed-forwards, q/k RMS norms per head.
pub(super) fn qwen_image(cfg: &QwenImageConfig, d: &mut Dict) {
    let inner = cfg.num_heads * cfg.head_dim;
    let ff = 4 * inner;
    d.linear(
        "time_text_embed.timestep_embedder.linear_1",
        256,
        inner,
        true,
    );
    d.linear(
        "time_text_embed.timestep_embedder.linear_2",
        inner,
        inner,
        true,
    );
    d.add("txt_norm.weight", &[cfg.joint_attention_dim]);
    d.linear("img_in", cfg.in_channels, inner, true);
    d.linear("txt_in", cfg.joint_attention_dim, inner, true);
    for i in 0..cfg.num_layers {
        let b = format!("transformer_blocks.{i}");
        for s in ["img", "txt"] {
            d.linear(&format!("{b}.{s}_mod.1"), inner, 6 * inner, true);
            d.linear(&format!("{b}.{s}_mlp.net.0.proj"), inner, ff, true);
            d.linear(&format!("{b}.{s}_mlp.net.2"), ff, inner, true);
        }
        for n in ["norm_q", "norm_k", "norm_added_q", "norm_added_k"] {
            d.add(format!("{b}.attn.{n}.weight"), &[cfg.head_dim]);
        }
        for p in [
            "to_q",
            "to_k",
            "to_v",
            "add_q_proj",
            "add_k_proj",
            "add_v_proj",
            "to_out.0",
            "to_add_out",
        ] {
            d.linear(&format!("{b}.attn.{p}"), inner, inner, true);
        }
    }
    d.linear("norm_out.linear", inner, 2 * inner, true);
    let pp = cfg.patch_size * cfg.patch_size;
    d.linear("proj_out", inner, pp * cfg.out_channels, true);
}

/// ComfyUI `qwen_image21.model.QwenImage21Transformer2DModel`: one stream of blocks over the
/// joint text and image sequence, bias-free linears, one modulation shared by every block
/// (`modulation.1`: scale and gate of each half), a zero-centred RMS norm before the two-layer
/// text projection, and the fused SwiGLU (`img_mlp.gate_up`: gate rows, then up rows).
pub(super) fn qwen_image21(cfg: &QwenImage21Config, d: &mut Dict) {
    let inner = cfg.num_heads * cfg.head_dim;
    let ff = cfg.mlp_ratio * inner;
    d.linear(
        "time_text_embed.timestep_embedder.linear_1",
        256,
        inner,
        false,
    );
    d.linear(
        "time_text_embed.timestep_embedder.linear_2",
        inner,
        inner,
        false,
    );
    d.add("txt_in.text_norm.weight", &[cfg.context_in_dim]);
    d.linear("txt_in.in_layer", cfg.context_in_dim, inner, false);
    d.linear("txt_in.out_layer", inner, inner, false);
    d.linear("img_in", cfg.in_channels, inner, false);
    d.linear("modulation.1", inner, 4 * inner, false);
    for i in 0..cfg.num_layers {
        let b = format!("transformer_blocks.{i}");
        for p in ["to_q", "to_k", "to_v", "to_out.0"] {
            d.linear(&format!("{b}.attn.{p}"), inner, inner, false);
        }
        d.add(format!("{b}.attn.norm_q.weight"), &[cfg.head_dim]);
        d.add(format!("{b}.attn.norm_k.weight"), &[cfg.head_dim]);
        d.linear(&format!("{b}.img_mlp.gate_up"), inner, 2 * ff, false);
        d.linear(&format!("{b}.img_mlp.out"), ff, inner, false);
    }
    d.linear("norm_out.linear", inner, inner, false);
    d.linear("proj_out", inner, cfg.out_channels, false);
}

/// ComfyUI `hidream.model.HiDreamImageTransformer2DModel`: double-stream then single-stream
/// blocks whose image feed-forward is a mixture of experts (a shared expert, routed experts and
/// their gate), and one caption projection per text-encoder layer the blocks read.
pub(super) fn hidream(cfg: &HiDreamConfig, d: &mut Dict) {
    let inner = cfg.num_heads * cfg.head_dim;
    let pp = cfg.patch_size * cfg.patch_size;
    d.linear("t_embedder.timestep_embedder.linear_1", 256, inner, true);
    d.linear("t_embedder.timestep_embedder.linear_2", inner, inner, true);
    d.linear(
        "p_embedder.pooled_embedder.linear_1",
        cfg.text_emb_dim,
        inner,
        true,
    );
    d.linear("p_embedder.pooled_embedder.linear_2", inner, inner, true);
    d.linear("x_embedder.proj", cfg.in_channels * pp, inner, true);
    let moe = |d: &mut Dict, p: &str| {
        swiglu(d, &format!("{p}.shared_experts"), inner, cfg.shared_dim);
        for e in 0..cfg.num_routed_experts {
            swiglu(d, &format!("{p}.experts.{e}"), inner, cfg.expert_dim);
        }
        d.linear(&format!("{p}.gate"), inner, cfg.num_routed_experts, false);
    };
    let attention = |d: &mut Dict, p: &str, suffix: &str| {
        for x in ["q", "k", "v"] {
            d.linear(&format!("{p}.to_{x}{suffix}"), inner, inner, true);
        }
        d.linear(&format!("{p}.to_out{suffix}"), inner, inner, true);
        d.add(format!("{p}.q_rms_norm{suffix}.weight"), &[inner]);
        d.add(format!("{p}.k_rms_norm{suffix}.weight"), &[inner]);
    };
    for i in 0..cfg.num_layers {
        let b = format!("double_stream_blocks.{i}.block");
        d.linear(&format!("{b}.adaLN_modulation.1"), inner, 12 * inner, true);
        attention(d, &format!("{b}.attn1"), "");
        attention(d, &format!("{b}.attn1"), "_t");
        moe(d, &format!("{b}.ff_i"));
        swiglu(d, &format!("{b}.ff_t"), inner, cfg.expert_dim);
    }
    for i in 0..cfg.num_single_layers {
        let b = format!("single_stream_blocks.{i}.block");
        d.linear(&format!("{b}.adaLN_modulation.1"), inner, 6 * inner, true);
        attention(d, &format!("{b}.attn1"), "");
        moe(d, &format!("{b}.ff_i"));
    }
    d.linear("final_layer.linear", inner, pp * cfg.out_channels, true);
    d.linear("final_layer.adaLN_modulation.1", inner, 2 * inner, true);
    // One projection per block that reads an LLM layer, plus the T5 one.
    for i in 0..=cfg.num_layers + cfg.num_single_layers {
        d.linear(
            &format!("caption_projection.{i}.linear"),
            cfg.caption_channels,
            inner,
            false,
        );
    }
}

/// A SwiGLU feed-forward without biases: `w1`, `w3` up to `hidden`, `w2` back.
fn swiglu(d: &mut Dict, p: &str, dim: usize, hidden: usize) {
    d.linear(&format!("{p}.w1"), dim, hidden, false);
    d.linear(&format!("{p}.w2"), hidden, dim, false);
    d.linear(&format!("{p}.w3"), dim, hidden, false);
}

/// ComfyUI `lumina.model.NextDiT` (Lumina Image 2.0, Z-Image): refiner blocks for the noise
/// (modulated) and the caption (not), then the main blocks; fused qkv with grouped keys/values,
/// sandwich RMS norms, SwiGLU feed-forwards. Z-Image's adaLN has no SiLU before its linear
/// (`adaLN_modulation.0`) and it learns pad tokens.
pub(super) fn lumina(cfg: &LuminaConfig, d: &mut Dict) {
    let dim = cfg.dim;
    let head_dim = dim / cfg.n_heads;
    let pp = cfg.patch_size * cfg.patch_size;
    d.linear("x_embedder", pp * cfg.in_channels, dim, true);
    let block = |d: &mut Dict, p: &str, modulated: bool| {
        let qkv = (cfg.n_heads + 2 * cfg.n_kv_heads) * head_dim;
        d.linear(&format!("{p}.attention.qkv"), dim, qkv, false);
        d.linear(
            &format!("{p}.attention.out"),
            cfg.n_heads * head_dim,
            dim,
            false,
        );
        d.add(format!("{p}.attention.q_norm.weight"), &[head_dim]);
        d.add(format!("{p}.attention.k_norm.weight"), &[head_dim]);
        swiglu(d, &format!("{p}.feed_forward"), dim, cfg.ffn_dim);
        for n in [
            "attention_norm1",
            "ffn_norm1",
            "attention_norm2",
            "ffn_norm2",
        ] {
            d.add(format!("{p}.{n}.weight"), &[dim]);
        }
        if modulated {
            // Lumina 2's modulation is SiLU then Linear (`.1`); Z-Image's the Linear alone
            // (`.0`, as ComfyUI's `z_image_to_diffusers` names it).
            let index = if cfg.z_image { 0 } else { 1 };
            d.linear(
                &format!("{p}.adaLN_modulation.{index}"),
                cfg.adaln_dim,
                4 * dim,
                true,
            );
        }
    };
    for i in 0..cfg.n_refiner_layers {
        block(d, &format!("noise_refiner.{i}"), true);
        block(d, &format!("context_refiner.{i}"), false);
    }
    // The timestep MLP is at most 1024 wide and ends at the adaLN width.
    let t_mid = dim.min(1024);
    d.linear("t_embedder.mlp.0", 256, t_mid, true);
    d.linear("t_embedder.mlp.2", t_mid, cfg.adaln_dim, true);
    if cfg.z_image {
        d.add("x_pad_token", &[1, dim]);
        d.add("cap_pad_token", &[1, dim]);
    }
    d.add("cap_embedder.0.weight", &[cfg.cap_feat_dim]);
    d.linear("cap_embedder.1", cfg.cap_feat_dim, dim, true);
    for i in 0..cfg.n_layers {
        block(d, &format!("layers.{i}"), true);
    }
    d.add("norm_final.weight", &[dim]);
    d.linear("final_layer.linear", dim, pp * cfg.in_channels, true);
    d.linear("final_layer.adaLN_modulation.1", cfg.adaln_dim, dim, true);
}

/// ComfyUI `hunyuan_video.model.HunyuanVideo`: a 3-D patch embedding, the text token refiner
/// (two blocks), Flux-style double and single blocks with biased qkv, and for 1.5 the SigLIP
/// image projection, the condition-type embedding and the ByT5 glyph mapper.
pub(super) fn hunyuan_video(cfg: &HunyuanVideoConfig, d: &mut Dict) {
    let h = cfg.hidden_size;
    let head_dim = h / cfg.num_heads;
    let mlp = 4 * h;
    let [pt, ph, pw] = cfg.patch_size;
    d.add("img_in.proj.weight", &[h, cfg.in_channels, pt, ph, pw]);
    d.add("img_in.proj.bias", &[h]);
    let embedder = |d: &mut Dict, p: &str, inp: usize| {
        d.linear(&format!("{p}.in_layer"), inp, h, true);
        d.linear(&format!("{p}.out_layer"), h, h, true);
    };
    embedder(d, "time_in", 256);
    if let Some(v) = cfg.vec_in_dim {
        embedder(d, "vector_in", v);
    }
    if cfg.guidance_embed {
        embedder(d, "guidance_in", 256);
    }
    d.linear("txt_in.input_embedder", cfg.context_in_dim, h, true);
    embedder(d, "txt_in.t_embedder", 256);
    embedder(d, "txt_in.c_embedder", cfg.context_in_dim);
    for i in 0..2 {
        let b = format!("txt_in.individual_token_refiner.blocks.{i}");
        d.norm(&format!("{b}.norm1"), h);
        d.linear(&format!("{b}.self_attn.qkv"), h, 3 * h, true);
        d.linear(&format!("{b}.self_attn.proj"), h, h, true);
        d.norm(&format!("{b}.norm2"), h);
        d.linear(&format!("{b}.mlp.0"), h, mlp, true);
        d.linear(&format!("{b}.mlp.2"), mlp, h, true);
        d.linear(&format!("{b}.adaLN_modulation.1"), h, 2 * h, true);
    }
    for i in 0..cfg.depth {
        for s in ["img", "txt"] {
            let b = format!("double_blocks.{i}.{s}");
            d.linear(&format!("{b}_mod.lin"), h, 6 * h, true);
            d.linear(&format!("{b}_attn.qkv"), h, 3 * h, true);
            d.add(format!("{b}_attn.norm.query_norm.scale"), &[head_dim]);
            d.add(format!("{b}_attn.norm.key_norm.scale"), &[head_dim]);
            d.linear(&format!("{b}_attn.proj"), h, h, true);
            d.linear(&format!("{b}_mlp.0"), h, mlp, true);
            d.linear(&format!("{b}_mlp.2"), mlp, h, true);
        }
    }
    for i in 0..cfg.depth_single_blocks {
        let b = format!("single_blocks.{i}");
        d.linear(&format!("{b}.linear1"), h, 3 * h + mlp, true);
        d.linear(&format!("{b}.linear2"), h + mlp, h, true);
        d.add(format!("{b}.norm.query_norm.scale"), &[head_dim]);
        d.add(format!("{b}.norm.key_norm.scale"), &[head_dim]);
        d.linear(&format!("{b}.modulation.lin"), h, 3 * h, true);
    }
    d.linear("final_layer.linear", h, ph * pw * cfg.out_channels, true);
    d.linear("final_layer.adaLN_modulation.1", h, 2 * h, true);
    if let Some((vision, byt5, mapper)) = cfg.v15 {
        d.norm("vision_in.proj.0", vision);
        d.linear("vision_in.proj.1", vision, vision, true);
        d.linear("vision_in.proj.3", vision, h, true);
        d.norm("vision_in.proj.4", h);
        d.add("cond_type_embedding.weight", &[3, h]);
        d.norm("byt5_in.layernorm", byt5);
        d.linear("byt5_in.fc1", byt5, mapper, true);
        d.linear("byt5_in.fc2", mapper, mapper, true);
        d.linear("byt5_in.fc3", mapper, h, true);
    }
}

/// ComfyUI `lightricks.model.LTXVModel`: patch projection, the single adaLN of the timestep, the
/// caption projection, blocks of self-attention, cross-attention and a GELU feed-forward with a
/// per-block scale/shift table, and the output.
pub(super) fn ltxv(cfg: &LtxvConfig, d: &mut Dict) {
    let inner = cfg.num_heads * cfg.head_dim;
    d.linear("patchify_proj", cfg.in_channels, inner, true);
    d.linear(
        "adaln_single.emb.timestep_embedder.linear_1",
        256,
        inner,
        true,
    );
    d.linear(
        "adaln_single.emb.timestep_embedder.linear_2",
        inner,
        inner,
        true,
    );
    d.linear("adaln_single.linear", inner, 6 * inner, true);
    d.linear(
        "caption_projection.linear_1",
        cfg.caption_channels,
        inner,
        true,
    );
    d.linear("caption_projection.linear_2", inner, inner, true);
    for i in 0..cfg.num_layers {
        let b = format!("transformer_blocks.{i}");
        for (attn, ctx) in [("attn1", inner), ("attn2", cfg.cross_attention_dim)] {
            d.add(format!("{b}.{attn}.q_norm.weight"), &[inner]);
            d.add(format!("{b}.{attn}.k_norm.weight"), &[inner]);
            d.linear(&format!("{b}.{attn}.to_q"), inner, inner, true);
            d.linear(&format!("{b}.{attn}.to_k"), ctx, inner, true);
            d.linear(&format!("{b}.{attn}.to_v"), ctx, inner, true);
            d.linear(&format!("{b}.{attn}.to_out.0"), inner, inner, true);
        }
        d.linear(&format!("{b}.ff.net.0.proj"), inner, 4 * inner, true);
        d.linear(&format!("{b}.ff.net.2"), 4 * inner, inner, true);
        d.add(format!("{b}.scale_shift_table"), &[6, inner]);
    }
    d.add("scale_shift_table", &[2, inner]);
    d.linear("proj_out", inner, cfg.in_channels, true);
}
