//! Tensor names of text-encoder GGUF files: llama.cpp's (`enc.blk.0.attn_q.weight`,
//! `token_embd.weight`, …) and the transformers names ComfyUI-GGUF's loader turns them into
//! (`loader.py`: `T5_SD_MAP`, `LLAMA_SD_MAP`, applied by `sd_map_replace` as plain substring
//! replacements in the map's order). The loader's maps are the ground truth: [`to_hf`] is its
//! replacement exactly; [`to_gguf`] runs the replacements backwards, and a name it gives is
//! used only when [`to_hf`] gives the original back.

use super::TextArch;

/// `loader.py`'s `T5_SD_MAP`, in its order.
const T5_SD_MAP: [(&str, &str); 14] = [
    ("enc.", "encoder."),
    (".blk.", ".block."),
    ("token_embd", "shared"),
    ("output_norm", "final_layer_norm"),
    ("attn_q", "layer.0.SelfAttention.q"),
    ("attn_k", "layer.0.SelfAttention.k"),
    ("attn_v", "layer.0.SelfAttention.v"),
    ("attn_o", "layer.0.SelfAttention.o"),
    ("attn_norm", "layer.0.layer_norm"),
    (
        "attn_rel_b",
        "layer.0.SelfAttention.relative_attention_bias",
    ),
    ("ffn_up", "layer.1.DenseReluDense.wi_1"),
    ("ffn_down", "layer.1.DenseReluDense.wo"),
    ("ffn_gate", "layer.1.DenseReluDense.wi_0"),
    ("ffn_norm", "layer.1.layer_norm"),
];

/// `loader.py`'s `LLAMA_SD_MAP`, in its order.
const LLAMA_SD_MAP: [(&str, &str); 16] = [
    ("blk.", "model.layers."),
    ("attn_norm", "input_layernorm"),
    ("attn_q_norm.", "self_attn.q_norm."),
    ("attn_k_norm.", "self_attn.k_norm."),
    ("attn_v_norm.", "self_attn.v_norm."),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("token_embd", "model.embed_tokens"),
    ("output_norm", "model.norm"),
    ("output.weight", "lm_head.weight"),
];

fn map(arch: TextArch) -> &'static [(&'static str, &'static str)] {
    if arch.is_t5() {
        &T5_SD_MAP
    } else {
        &LLAMA_SD_MAP
    }
}

/// The name ComfyUI-GGUF's loader gives the tensor `name` of a GGUF file of `arch`.
pub(crate) fn to_hf(arch: TextArch, name: &str) -> String {
    map(arch)
        .iter()
        .fold(name.to_string(), |k, (s, d)| k.replace(s, d))
}

/// The llama.cpp name of the transformers tensor `hf` in a GGUF file of `arch`, or `None` when
/// the loader would not give `hf` back from any name this makes.
pub(crate) fn to_gguf(arch: TextArch, hf: &str) -> Option<String> {
    let name = map(arch)
        .iter()
        .rev()
        .fold(hf.to_string(), |k, (s, d)| k.replace(d, s));
    (to_hf(arch, &name) == hf).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t5_names_are_llama_cpps_and_come_back() {
        let a = TextArch::T5Encoder;
        for (hf, gguf) in [
            ("shared.weight", "token_embd.weight"),
            ("encoder.final_layer_norm.weight", "enc.output_norm.weight"),
            (
                "encoder.block.0.layer.0.SelfAttention.q.weight",
                "enc.blk.0.attn_q.weight",
            ),
            (
                "encoder.block.11.layer.0.SelfAttention.o.weight",
                "enc.blk.11.attn_o.weight",
            ),
            (
                "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                "enc.blk.0.attn_rel_b.weight",
            ),
            (
                "encoder.block.3.layer.0.layer_norm.weight",
                "enc.blk.3.attn_norm.weight",
            ),
            (
                "encoder.block.3.layer.1.DenseReluDense.wi_0.weight",
                "enc.blk.3.ffn_gate.weight",
            ),
            (
                "encoder.block.3.layer.1.DenseReluDense.wi_1.weight",
                "enc.blk.3.ffn_up.weight",
            ),
            (
                "encoder.block.3.layer.1.DenseReluDense.wo.weight",
                "enc.blk.3.ffn_down.weight",
            ),
            (
                "encoder.block.3.layer.1.layer_norm.weight",
                "enc.blk.3.ffn_norm.weight",
            ),
        ] {
            assert_eq!(to_gguf(a, hf).as_deref(), Some(gguf), "{hf}");
            assert_eq!(to_hf(a, gguf), hf);
        }
        // T5 v1.0's ungated `wi`: llama.cpp's `ffn_up` would come back as `wi_1`; the part the
        // maps do not know is kept, which the loader gives back as it was.
        assert_eq!(
            to_gguf(a, "encoder.block.0.layer.1.DenseReluDense.wi.weight").as_deref(),
            Some("enc.blk.0.layer.1.DenseReluDense.wi.weight")
        );
        // A name that one of the map's targets would swallow has none.
        assert_eq!(to_gguf(a, "encoder.shared_attn_q.weight"), None);
    }

    #[test]
    fn llama_names_are_llama_cpps_and_come_back() {
        let a = TextArch::Qwen3;
        for (hf, gguf) in [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
            (
                "model.layers.0.input_layernorm.weight",
                "blk.0.attn_norm.weight",
            ),
            (
                "model.layers.0.post_attention_layernorm.weight",
                "blk.0.ffn_norm.weight",
            ),
            (
                "model.layers.7.self_attn.q_proj.weight",
                "blk.7.attn_q.weight",
            ),
            ("model.layers.7.self_attn.k_proj.bias", "blk.7.attn_k.bias"),
            (
                "model.layers.7.self_attn.o_proj.weight",
                "blk.7.attn_output.weight",
            ),
            (
                "model.layers.7.self_attn.q_norm.weight",
                "blk.7.attn_q_norm.weight",
            ),
            (
                "model.layers.7.self_attn.k_norm.weight",
                "blk.7.attn_k_norm.weight",
            ),
            (
                "model.layers.7.mlp.gate_proj.weight",
                "blk.7.ffn_gate.weight",
            ),
            ("model.layers.7.mlp.up_proj.weight", "blk.7.ffn_up.weight"),
            (
                "model.layers.7.mlp.down_proj.weight",
                "blk.7.ffn_down.weight",
            ),
        ] {
            assert_eq!(to_gguf(a, hf).as_deref(), Some(gguf), "{hf}");
            assert_eq!(to_hf(a, gguf), hf);
        }
    }
}
