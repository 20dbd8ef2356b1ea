//! The shape descriptions of synthetic models: each module kind's hyper-parameters (the ones
//! that decide its keys and shapes, as ComfyUI builds the module), and [`Spec`], one model's
//! denoiser, text encoders and autoencoder. The values for every family live in
//! [`super::models`]; [`super::expand`] turns a spec into state-dict layouts.
//!
//! Everything here is `const`-constructible so the family table can point at a variant's spec.

/// ldm `openaimodel.UNetModel` hyper-parameters (the ones that decide keys and shapes).
#[derive(Debug, Clone, Copy)]
pub(crate) struct UnetConfig {
    pub(crate) in_channels: usize,
    pub(crate) out_channels: usize,
    pub(crate) model_channels: usize,
    pub(crate) channel_mult: &'static [usize],
    pub(crate) num_res_blocks: usize,
    /// Transformer depth after each input ResBlock (`num_res_blocks` per level); 0 = no attention.
    pub(crate) transformer_depth: &'static [usize],
    /// Transformer depth of the middle block.
    pub(crate) transformer_depth_middle: usize,
    /// Transformer depth after each output ResBlock (`num_res_blocks + 1` per level, deepest
    /// level first, as the output blocks are built).
    pub(crate) transformer_depth_output: &'static [usize],
    pub(crate) context_dim: usize,
    /// Linear (2-D) `proj_in`/`proj_out` instead of 1x1 convolutions.
    pub(crate) use_linear_in_transformer: bool,
    /// Size of the pooled/size conditioning vector (`label_emb`), SDXL only.
    pub(crate) adm_in_channels: Option<usize>,
}

/// HF `CLIPTextModel` configuration, as ComfyUI holds it under `<name>.transformer.`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClipTextConfig {
    pub(crate) name: &'static str,
    pub(crate) hidden_size: usize,
    pub(crate) intermediate_size: usize,
    pub(crate) num_hidden_layers: usize,
    pub(crate) vocab_size: usize,
    pub(crate) max_position_embeddings: usize,
    pub(crate) projection_dim: usize,
}

/// HF T5 encoder configuration (gated-GELU feed-forward), as ComfyUI holds it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct T5Config {
    pub(crate) name: &'static str,
    pub(crate) d_model: usize,
    pub(crate) d_ff: usize,
    pub(crate) d_kv: usize,
    pub(crate) num_heads: usize,
    pub(crate) num_layers: usize,
    pub(crate) vocab_size: usize,
    pub(crate) relative_attention_num_buckets: usize,
    /// umT5: every block has its own relative attention bias (T5: only the first).
    pub(crate) bias_every_layer: bool,
}

/// A decoder-only language model used as a text encoder (Llama, Qwen2.5/3, Gemma 2/3,
/// Mistral), as ComfyUI holds it under `<name>.transformer.model.` (no `lm_head`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LlmConfig {
    pub(crate) name: &'static str,
    pub(crate) vocab_size: usize,
    pub(crate) hidden_size: usize,
    pub(crate) intermediate_size: usize,
    pub(crate) num_layers: usize,
    pub(crate) num_heads: usize,
    pub(crate) num_kv_heads: usize,
    pub(crate) head_dim: usize,
    /// Biases on q, k and v (Qwen2.5).
    pub(crate) qkv_bias: bool,
    /// RMS norms on q and k per head (Qwen3, Gemma 3).
    pub(crate) qk_norm: bool,
    /// Gemma's extra norms around the feed-forward (`pre_`/`post_feedforward_layernorm`).
    pub(crate) sandwich_norms: bool,
    /// An output head (`<name>.transformer.model.lm_head`; Qwen3 8B keeps one).
    pub(crate) lm_head: bool,
    /// The vision tower beside the language model (Qwen2.5-VL's, Gemma 3's).
    pub(crate) vision: Option<Vision>,
}

/// The vision tower of a multimodal language-model encoder.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Vision {
    /// Qwen2.5-VL's, under `<name>.transformer.visual.`.
    Qwen(QwenVisionConfig),
    /// Qwen3-VL's (ComfyUI `qwen3vl.Qwen3VLVisionModel`), under `<name>.transformer.visual.`.
    Qwen3(Qwen3VisionConfig),
    /// Gemma 3's SigLIP tower under `<name>.transformer.vision_model.` and its projection into
    /// the language model's width under `<name>.transformer.multi_modal_projector.`.
    Siglip(SiglipConfig),
}

/// SigLIP's vision transformer as ComfyUI's `CLIPVision` builds it (`siglip_vision_model`: no
/// class token, a biased patch embedding, no pre-norm).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SiglipConfig {
    pub(crate) hidden_size: usize,
    pub(crate) intermediate_size: usize,
    pub(crate) num_layers: usize,
    pub(crate) patch_size: usize,
    pub(crate) image_size: usize,
}

/// Qwen2.5-VL's vision transformer (windowed ViT with a patch merger into the LM's width).
#[derive(Debug, Clone, Copy)]
pub(crate) struct QwenVisionConfig {
    pub(crate) hidden_size: usize,
    pub(crate) intermediate_size: usize,
    pub(crate) depth: usize,
    pub(crate) patch_size: usize,
    pub(crate) temporal_patch_size: usize,
    /// Patches merged per output token, per side.
    pub(crate) spatial_merge_size: usize,
    /// The language model's width the merger projects into.
    pub(crate) out_hidden_size: usize,
}

/// Qwen3-VL's vision transformer: Qwen3.5's (LayerNorms, a GELU MLP, learned positions) with
/// the DeepStack mergers that feed chosen layers' features into the language model.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Qwen3VisionConfig {
    pub(crate) hidden_size: usize,
    pub(crate) intermediate_size: usize,
    pub(crate) depth: usize,
    pub(crate) patch_size: usize,
    pub(crate) temporal_patch_size: usize,
    pub(crate) spatial_merge_size: usize,
    /// Rows of the learned position table (`pos_embed`).
    pub(crate) num_position_embeddings: usize,
    /// DeepStack mergers (one per `deepstack_visual_indexes` entry).
    pub(crate) deepstack_mergers: usize,
    /// The language model's width the mergers project into.
    pub(crate) out_hidden_size: usize,
}

/// ldm `AutoencoderKL` configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VaeConfig {
    pub(crate) ch: usize,
    pub(crate) ch_mult: &'static [usize],
    pub(crate) num_res_blocks: usize,
    pub(crate) in_channels: usize,
    pub(crate) out_ch: usize,
    pub(crate) z_channels: usize,
    pub(crate) double_z: bool,
    pub(crate) use_quant_conv: bool,
    /// 3-D causal convolutions (HunyuanVideo): every convolution but the attention's and the
    /// quant convs is wrapped (`….conv.weight`, `[out, in, k, k, k]`).
    pub(crate) conv3d: bool,
    /// Flux 2: a batch norm over the 2×2-packed latent (`bn.*`).
    pub(crate) batch_norm_latent: bool,
}

/// HunyuanVideo 1.5's video VAE (`hunyuan_video.vae_refiner`): causal 3-D convolutions, RMS
/// norms, space-to-depth resampling.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hunyuan15VaeConfig {
    pub(crate) block_out_channels: &'static [usize],
    pub(crate) num_res_blocks: usize,
    pub(crate) z_channels: usize,
    /// Levels that resample (spatially; the first `temporal` of them in time too).
    pub(crate) resample_levels: usize,
    pub(crate) temporal_levels: usize,
}

/// LTX-Video's causal video autoencoder (`lightricks.vae.causal_video_autoencoder`, the 0.9.5+
/// configuration): pixel norms, residual space-to-depth downsampling, a timestep-conditioned
/// decoder and per-channel latent statistics.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LtxVaeConfig {
    pub(crate) base_channels: usize,
    pub(crate) latent_channels: usize,
    pub(crate) patch_size: usize,
    /// Residual layers of each encoder stage; stages are joined by 2× downsamplers.
    pub(crate) encoder_layers: &'static [usize],
    /// Residual layers of each decoder stage, deepest first.
    pub(crate) decoder_layers: &'static [usize],
    /// A timestep-conditioned decoder (LTX-Video 0.9.5+; not LTX-2's): per-stage time
    /// embedders and scale/shift tables, the last ones, the timestep scale.
    pub(crate) timestep_conditioning: bool,
}

/// Wan's causal 3-D autoencoder: the 2.1 layout (flat `downsamples`/`upsamples` lists, used by
/// Wan 2.1 and Qwen-Image) or the 2.2 layout (nested residual groups, patchified 12-channel
/// input, 48 latent channels).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WanVaeConfig {
    pub(crate) dim: usize,
    /// Decoder width (2.2 only; the 2.1 decoder uses `dim`).
    pub(crate) dec_dim: usize,
    pub(crate) z_dim: usize,
    pub(crate) dim_mult: &'static [usize],
    pub(crate) num_res_blocks: usize,
    pub(crate) temporal_downsample: &'static [bool],
    /// Image channels at the encoder input and decoder output (12 = RGB patchified 2×2).
    pub(crate) image_channels: usize,
    pub(crate) wan22: bool,
    /// Temporal extent of the 3×3 convolutions and the time convolutions (3; 1 in Qwen-Image
    /// 2.1's image-only VAE, ComfyUI's `temporal_kernel`).
    pub(crate) temporal_kernel: usize,
}

/// SD3 MMDiT configuration (ComfyUI `mmdit.MMDiT`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MmditConfig {
    pub(crate) depth: usize,
    /// Width of the joint blocks (64 × depth in every released SD3).
    pub(crate) hidden_size: usize,
    pub(crate) patch_size: usize,
    pub(crate) in_channels: usize,
    pub(crate) out_channels: usize,
    pub(crate) adm_in_channels: usize,
    pub(crate) context_dim: usize,
    pub(crate) pos_embed_max_size: usize,
    pub(crate) mlp_ratio: usize,
    /// RMS norms on q and k (`attn.ln_q`, `attn.ln_k`; SD3.5).
    pub(crate) qk_norm: bool,
    /// The first this many x blocks have a second self-attention (`x_block.attn2`; SD3.5 Medium).
    pub(crate) x_self_attn_layers: usize,
}

/// Flux-style double/single-stream DiT (ComfyUI `flux.model.Flux`), with the options Chroma and
/// Flux 2 change.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FluxConfig {
    pub(crate) in_channels: usize,
    pub(crate) out_channels: usize,
    pub(crate) patch_size: usize,
    /// Width of `vector_in` (the pooled CLIP-L); `None` when the model has none.
    pub(crate) vec_in_dim: Option<usize>,
    pub(crate) context_in_dim: usize,
    pub(crate) hidden_size: usize,
    pub(crate) mlp_ratio: usize,
    pub(crate) num_heads: usize,
    pub(crate) depth: usize,
    pub(crate) depth_single_blocks: usize,
    pub(crate) guidance_embed: bool,
    /// Chroma: modulation comes from `distilled_guidance_layer` (this wide, 5 layers) instead of
    /// per-block `*_mod` layers and a time embedder.
    pub(crate) distilled_guidance: Option<usize>,
    /// Flux 2: modulation shared by all blocks (`double_stream_modulation_*`,
    /// `single_stream_modulation`), gated SiLU feed-forwards, no biases.
    pub(crate) flux2: bool,
}

/// HunyuanVideo (and 1.5) DiT (ComfyUI `hunyuan_video.model.HunyuanVideo`): Flux-like blocks, a
/// token refiner on the text, a 3-D patch embedding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HunyuanVideoConfig {
    pub(crate) hidden_size: usize,
    pub(crate) num_heads: usize,
    pub(crate) depth: usize,
    pub(crate) depth_single_blocks: usize,
    pub(crate) in_channels: usize,
    pub(crate) out_channels: usize,
    /// `[t, h, w]`.
    pub(crate) patch_size: [usize; 3],
    pub(crate) vec_in_dim: Option<usize>,
    pub(crate) context_in_dim: usize,
    pub(crate) guidance_embed: bool,
    /// 1.5: the SigLIP image projection (from this width), the condition-type embedding and the
    /// ByT5 glyph mapper (from this width, through this hidden width).
    pub(crate) v15: Option<(usize, usize, usize)>,
}

/// LTX-Video DiT (ComfyUI `lightricks.model.LTXVModel`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LtxvConfig {
    pub(crate) num_layers: usize,
    pub(crate) num_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) in_channels: usize,
    pub(crate) caption_channels: usize,
    pub(crate) cross_attention_dim: usize,
}

/// LTX-2's audio-video DiT (ComfyUI `lightricks.av_model.LTXAVModel`, the LTX-2 configuration:
/// no gated attention, no cross-attention adaLN): a video stream and an audio stream of
/// transformer blocks that attend to each other, and the two text connectors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LtxavConfig {
    /// The video stream (`patchify_proj`, `transformer_blocks.N.attn1`, …).
    pub(crate) video: LtxvConfig,
    pub(crate) audio_num_heads: usize,
    pub(crate) audio_head_dim: usize,
    pub(crate) audio_in_channels: usize,
    /// Width of the audio stream's text context (`audio_attn2.to_k` input).
    pub(crate) audio_cross_attention_dim: usize,
    /// The `Embeddings1DConnector`s' heads, head width, depth and learnable registers.
    pub(crate) connector_heads: usize,
    pub(crate) connector_head_dim: usize,
    pub(crate) connector_layers: usize,
    pub(crate) connector_registers: usize,
}

/// Wan 2.x DiT (ComfyUI `wan.model.WanModel`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WanConfig {
    pub(crate) dim: usize,
    pub(crate) ffn_dim: usize,
    pub(crate) num_layers: usize,
    pub(crate) in_dim: usize,
    pub(crate) out_dim: usize,
    pub(crate) text_dim: usize,
    pub(crate) freq_dim: usize,
    /// Image-to-video with CLIP-vision conditioning: `img_emb.*` and `cross_attn.k_img/v_img`,
    /// from an image embedding this wide.
    pub(crate) img_dim: Option<usize>,
}

/// Qwen-Image MMDiT (ComfyUI `qwen_image.model.QwenImageTransformer2DModel`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct QwenImageConfig {
    pub(crate) num_layers: usize,
    pub(crate) num_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) in_channels: usize,
    pub(crate) out_channels: usize,
    pub(crate) patch_size: usize,
    pub(crate) joint_attention_dim: usize,
}

/// Qwen-Image 2.1's single-stream DiT (ComfyUI `qwen_image21.model.QwenImage21Transformer2DModel`,
/// the fused feed-forward ComfyUI saves).
#[derive(Debug, Clone, Copy)]
pub(crate) struct QwenImage21Config {
    pub(crate) num_layers: usize,
    pub(crate) num_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) in_channels: usize,
    pub(crate) out_channels: usize,
    /// Width of the text features (`txt_in.text_norm`).
    pub(crate) context_in_dim: usize,
    /// Feed-forward width as a multiple of the model width.
    pub(crate) mlp_ratio: usize,
}

/// HiDream-I1 (ComfyUI `hidream.model.HiDreamImageTransformer2DModel`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HiDreamConfig {
    pub(crate) num_layers: usize,
    pub(crate) num_single_layers: usize,
    pub(crate) num_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) in_channels: usize,
    pub(crate) out_channels: usize,
    pub(crate) patch_size: usize,
    pub(crate) text_emb_dim: usize,
    pub(crate) caption_channels: usize,
    pub(crate) num_routed_experts: usize,
    /// Hidden width of each routed expert and of the text stream's feed-forward.
    pub(crate) expert_dim: usize,
    /// Hidden width of the shared expert.
    pub(crate) shared_dim: usize,
}

/// Lumina Image 2.0's NextDiT (ComfyUI `lumina.model.NextDiT`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LuminaConfig {
    pub(crate) dim: usize,
    pub(crate) n_layers: usize,
    pub(crate) n_refiner_layers: usize,
    pub(crate) n_heads: usize,
    pub(crate) n_kv_heads: usize,
    pub(crate) ffn_dim: usize,
    pub(crate) in_channels: usize,
    pub(crate) patch_size: usize,
    pub(crate) cap_feat_dim: usize,
    /// Width of the timestep embedding the adaLN layers read.
    pub(crate) adaln_dim: usize,
    /// Z-Image: adaLN without the SiLU (`adaLN_modulation.0`) and learned pad tokens.
    pub(crate) z_image: bool,
}

/// The denoiser of a model.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Denoiser {
    Unet(UnetConfig),
    Mmdit(MmditConfig),
    Flux(FluxConfig),
    Wan(WanConfig),
    QwenImage(QwenImageConfig),
    QwenImage21(QwenImage21Config),
    HiDream(HiDreamConfig),
    Lumina(LuminaConfig),
    HunyuanVideo(HunyuanVideoConfig),
    Ltxv(LtxvConfig),
    Ltxav(LtxavConfig),
}

/// One text encoder of the clip component, or a tokenizer blob ComfyUI saves beside them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Encoder {
    Clip(ClipTextConfig),
    T5(T5Config),
    Llm(LlmConfig),
    /// A SentencePiece model as U8 bytes under this top-level key (`spiece_model`).
    Tokenizer {
        key: &'static str,
        bytes: usize,
    },
    /// A bias-free linear layer the text-encoder model holds beside its language model, as
    /// `<key>.weight` (LTX-2's `text_embedding_projection`).
    Projection {
        key: &'static str,
        in_features: usize,
        out_features: usize,
    },
}

/// The autoencoder of a model.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Vae {
    Ldm(VaeConfig),
    Wan(WanVaeConfig),
    Hunyuan15(Hunyuan15VaeConfig),
    Ltx(LtxVaeConfig),
    /// LTX-2's video VAE with its audio VAE and vocoder (the audio component), as the
    /// release holds them.
    LtxAv(LtxVaeConfig, AudioVaeConfig, VocoderConfig),
}

/// LTX-2's audio autoencoder as ComfyUI builds it (`lightricks/vae/causal_audio_autoencoder.py`
/// `CausalAudioAutoencoder`: causal 2-D convolutions, pixel norms, no attention).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AudioVaeConfig {
    pub(crate) ch: usize,
    pub(crate) ch_mult: &'static [usize],
    pub(crate) num_res_blocks: usize,
    pub(crate) in_channels: usize,
    pub(crate) out_ch: usize,
    pub(crate) z_channels: usize,
    /// Length of the latent's per-channel statistics (`_Processor`: 128).
    pub(crate) statistics: usize,
}

/// A HiFi-GAN vocoder as ComfyUI builds it (`lightricks/vocoders/vocoder.py` `Vocoder`,
/// residual blocks of type "1").
#[derive(Debug, Clone, Copy)]
pub(crate) struct VocoderConfig {
    pub(crate) upsample_initial_channel: usize,
    pub(crate) upsample_rates: &'static [usize],
    pub(crate) upsample_kernel_sizes: &'static [usize],
    pub(crate) resblock_kernel_sizes: &'static [usize],
    /// Two channels of mel bins in (128) and out.
    pub(crate) stereo: bool,
}

/// Everything needed to lay out one model: denoiser, text encoders, autoencoder.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spec {
    pub(crate) model: Denoiser,
    pub(crate) encoders: &'static [Encoder],
    pub(crate) vae: Vae,
}
