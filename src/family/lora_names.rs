//! The LoRA module names ComfyUI maps onto a family's denoiser (`comfy/lora.py`
//! `model_lora_keys_unet`), as data. Every family takes ComfyUI's generic forms —
//! `diffusion_model.<name>` and `lora_unet_<name with _>` of each weight (its ComfyUI name
//! without `.weight`) and `diffusion_model.<key>` of every other tensor — and the forms below,
//! which `merge::lora_keys` expands over the model's names and over its diffusers names
//! (`layout::diffusers`, where the family has them).

/// One family's LoRA name forms beyond the generic ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoraNames {
    /// Prefixes put before the model's own names (`""`: the bare name, `transformer.`).
    pub own: &'static [&'static str],
    /// Prefixes put before the own names with `.` replaced by `_` (`lycoris_`).
    pub own_flat: &'static [&'static str],
    /// Prefixes put before the diffusers names (`transformer.`, `unet.`, `""`).
    pub diffusers: &'static [&'static str],
    /// Prefixes put before the diffusers names with `.` replaced by `_` (`lycoris_`,
    /// `lora_transformer_`, `lora_unet_`).
    pub diffusers_flat: &'static [&'static str],
    /// Whether older diffusers attention-processor names are accepted too
    /// (`….processor.to_q`, `….to_out` for `….to_out.0`).
    pub processor: bool,
    /// Renames of the own names, applied in order, that ComfyUI also accepts under the
    /// prefixes of [`LoraNames::renamed_prefixes`] (diffusion-pipe's HunyuanVideo LoRAs:
    /// `img_attn.qkv` → `img_attn_qkv`).
    pub renamed: &'static [(&'static str, &'static str)],
    /// Prefixes of the renamed names.
    pub renamed_prefixes: &'static [&'static str],
    /// Names of the leading rows of fused weights: `(weight suffix, name suffix, rows as a
    /// multiple of the weight's input width)` — Flux's `linear1` holds q, k, v (3 × hidden
    /// rows) then the MLP's input, and ComfyUI names the first three `linear1_qkv`.
    pub leading_rows: &'static [(&'static str, &'static str, usize)],
    /// Fused weights whose two row halves the own-name forms address apart: `(fused name,
    /// [first half's name, second half's name])` — Qwen-Image 2.1's SwiGLU `img_mlp.gate_up`
    /// (gate rows, then up rows) as diffusers names it, `img_mlp.gate_layer` and `img_mlp.proj`.
    /// ComfyUI maps these names to offset patches `(0, 0, half)`, `(0, half, half)` in place of
    /// the fused name.
    pub halves: &'static [(&'static str, [&'static str; 2])],
}

/// No forms beyond the generic ones.
pub const GENERIC: LoraNames = LoraNames {
    own: &[],
    own_flat: &[],
    diffusers: &[],
    diffusers_flat: &[],
    processor: false,
    renamed: &[],
    renamed_prefixes: &[],
    leading_rows: &[],
    halves: &[],
};

/// SD1/SD2/SDXL UNets: `unet_to_diffusers`' names, bare and under `unet.`, flattened under
/// `lora_unet_` and `lycoris_`, with the processor forms.
pub const UNET: LoraNames = LoraNames {
    diffusers: &["unet.", ""],
    diffusers_flat: &["lora_unet_", "lycoris_"],
    processor: true,
    ..GENERIC
};

/// SD3's `mmdit_to_diffusers` names: `transformer.`, `base_model.model.`, OneTrainer's
/// `lora_transformer_`, SimpleTuner's `lycoris_` (and the bare names).
pub const SD3: LoraNames = LoraNames {
    diffusers: &["transformer.", "", "base_model.model."],
    diffusers_flat: &["lora_transformer_", "lycoris_"],
    processor: true,
    ..GENERIC
};

const LINEAR1_QKV: [(&str, &str, usize); 1] = [(".linear1.weight", ".linear1_qkv", 3)];

/// The Flux model class (Flux.1; ComfyUI's Chroma and Flux 2 are subclasses of it):
/// `flux_to_diffusers`' names under `transformer.`, bare (DiffSynth), `lycoris_` and
/// `lora_transformer_`, and `linear1_qkv`.
pub const FLUX: LoraNames = LoraNames {
    diffusers: &["transformer.", ""],
    diffusers_flat: &["lora_transformer_", "lycoris_"],
    leading_rows: &LINEAR1_QKV,
    ..GENERIC
};

/// Flux.1 as this tool has always read it (also the attention-processor names).
pub const FLUX1: LoraNames = LoraNames {
    processor: true,
    ..FLUX
};

/// Qwen-Image: the model's names bare, under `transformer.` and flattened under `lycoris_`
/// (they are also its diffusers names).
pub const QWEN_IMAGE: LoraNames = LoraNames {
    own: &["", "transformer."],
    own_flat: &["lycoris_"],
    diffusers: &["transformer."],
    // `comfy/lora.py`: Qwen-Image 2.1 fuses the SwiGLU at load; LoRAs address the halves.
    halves: &[(".img_mlp.gate_up", [".img_mlp.gate_layer", ".img_mlp.proj"])],
    ..GENERIC
};

/// HiDream: SimpleTuner's `transformer.<name>` and `lycoris_<name>`.
pub const HIDREAM: LoraNames = LoraNames {
    own: &["transformer."],
    own_flat: &["lycoris_"],
    diffusers: &["transformer."],
    ..GENERIC
};

/// The Lumina 2 model class (Lumina 2, Z-Image): the diffusers names under
/// `diffusion_model.`, `transformer.`, bare and `lycoris_`.
pub const LUMINA: LoraNames = LoraNames {
    diffusers: &["diffusion_model.", "transformer.", ""],
    diffusers_flat: &["lycoris_"],
    ..GENERIC
};

/// HunyuanVideo (and 1.5): diffusion-pipe's names under `transformer.` and
/// `diffusion_model.`, and the diffusers names under `transformer.`.
pub const HUNYUAN_VIDEO: LoraNames = LoraNames {
    diffusers: &["transformer."],
    renamed: &[
        ("_mod.lin.", "_mod.linear."),
        ("_attn.qkv.", "_attn_qkv."),
        ("_attn.proj.", "_attn_proj."),
        ("mlp.0.", "mlp.fc1."),
        ("mlp.2.", "mlp.fc2."),
        (".modulation.lin.", ".modulation.linear."),
    ],
    renamed_prefixes: &["transformer.", "diffusion_model."],
    ..GENERIC
};

/// LTX-Video: the model's names bare, and the diffusers names under `transformer.`.
pub const LTXV: LoraNames = LoraNames {
    own: &[""],
    diffusers: &["transformer."],
    ..GENERIC
};

/// LTX-2: ComfyUI maps its own names bare (`comfy/lora.py`, `LTXV`/`LTXAV`); diffusers' LTX-2
/// LoRAs (`transformer.<LTX2VideoTransformer3DModel name>`) are read too.
pub const LTX2: LoraNames = LoraNames {
    own: &[""],
    diffusers: &["transformer."],
    ..GENERIC
};

/// Wan: ComfyUI has only the generic forms (and reads Wan-Fun's `lora_unet__` as
/// `lora_unet_`); diffusers' own Wan LoRAs (`transformer.<diffusers name>`) are read too.
pub const WAN: LoraNames = LoraNames {
    diffusers: &["transformer."],
    ..GENERIC
};
