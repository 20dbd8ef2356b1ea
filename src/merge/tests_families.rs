//! LoRA bakes and block merges on every family after Flux.1, against values computed here:
//! each family's LoRA names (the forms `comfy/lora.py` maps for its model class), lightx2v's Wan
//! step-distillation LoRA (factors, `diff` on norms and modulations, `diff_b` on biases), a
//! LoRA of another family refused naming it, and ModelMergeBlocks over each family's blocks.

use std::ops::Range;

use candle_core::Tensor;

use super::tests::{bits, get, lora, seeded, tiny, values};
use super::tests_forms::{bake, lands_on, scalar, KOHYA, PEFT};
use super::*;

/// A family, a LoRA module stem, its factor suffixes, the tensor and rows it lands on.
type Case<'a> = (
    Arch,
    &'a str,
    (&'a str, &'a str),
    ComponentKind,
    &'a str,
    Range<usize>,
);

#[test]
fn every_family_takes_the_lora_names_comfyui_maps_for_it() {
    use ComponentKind::{Clip, Model};
    let cases: Vec<Case> = vec![
        // Wan: ComfyUI's generic names, and Wan-Fun's `lora_unet__` (renamed as ComfyUI does).
        (
            Arch::Wan21,
            "diffusion_model.blocks.0.self_attn.q",
            KOHYA,
            Model,
            "blocks.0.self_attn.q.weight",
            0..32,
        ),
        (
            Arch::Wan21,
            "lora_unet_blocks_0_ffn_0",
            KOHYA,
            Model,
            "blocks.0.ffn.0.weight",
            0..64,
        ),
        (
            Arch::Wan21,
            "lora_unet__blocks_0_cross_attn_k",
            KOHYA,
            Model,
            "blocks.0.cross_attn.k.weight",
            0..32,
        ),
        (
            Arch::Wan22,
            "diffusion_model.blocks.1.cross_attn.o",
            PEFT,
            Model,
            "blocks.1.cross_attn.o.weight",
            0..32,
        ),
        // umT5 under `text_encoders.`, with and without the encoder's name.
        (
            Arch::Wan21,
            "text_encoders.umt5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q",
            PEFT,
            Clip,
            "umt5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight",
            0..32,
        ),
        (
            Arch::Wan21,
            "text_encoders.transformer.encoder.block.0.layer.0.SelfAttention.k",
            PEFT,
            Clip,
            "umt5xxl.transformer.encoder.block.0.layer.0.SelfAttention.k.weight",
            0..32,
        ),
        // Qwen-Image: its names bare, under `transformer.`, and SimpleTuner's `lycoris_`.
        (
            Arch::QwenImage,
            "transformer_blocks.0.attn.to_q",
            PEFT,
            Model,
            "transformer_blocks.0.attn.to_q.weight",
            0..32,
        ),
        (
            Arch::QwenImage,
            "transformer.transformer_blocks.0.img_mlp.net.0.proj",
            PEFT,
            Model,
            "transformer_blocks.0.img_mlp.net.0.proj.weight",
            0..128,
        ),
        (
            Arch::QwenImage,
            "lycoris_transformer_blocks_0_attn_add_k_proj",
            KOHYA,
            Model,
            "transformer_blocks.0.attn.add_k_proj.weight",
            0..32,
        ),
        // The single language-model encoder: kohya's `lora_te_` over `transformer.model.`.
        (
            Arch::QwenImage,
            "lora_te_layers_0_self_attn_q_proj",
            KOHYA,
            Clip,
            "qwen25_7b.transformer.model.layers.0.self_attn.q_proj.weight",
            0..32,
        ),
        // Qwen-Image 2.1: `model_base.QwenImage21` is a `QwenImage`, so `comfy/lora.py` gives it
        // Qwen-Image's forms (bare, `transformer.`, `lycoris_`) over its own names, the shared
        // modulation included, besides the generic ones; under those forms the fused
        // feed-forward is named by its halves (`gate_layer` rows 0..96, `proj` rows 96..192),
        // under the generic ones whole.
        (
            Arch::QwenImage21,
            "transformer_blocks.0.attn.to_q",
            PEFT,
            Model,
            "transformer_blocks.0.attn.to_q.weight",
            0..32,
        ),
        (
            Arch::QwenImage21,
            "transformer.transformer_blocks.1.img_mlp.proj",
            PEFT,
            Model,
            "transformer_blocks.1.img_mlp.gate_up.weight",
            96..192,
        ),
        (
            Arch::QwenImage21,
            "lycoris_transformer_blocks_0_img_mlp_gate_layer",
            KOHYA,
            Model,
            "transformer_blocks.0.img_mlp.gate_up.weight",
            0..96,
        ),
        (
            Arch::QwenImage21,
            "diffusion_model.transformer_blocks.1.img_mlp.gate_up",
            PEFT,
            Model,
            "transformer_blocks.1.img_mlp.gate_up.weight",
            0..192,
        ),
        (
            Arch::QwenImage21,
            "lycoris_transformer_blocks_0_img_mlp_out",
            KOHYA,
            Model,
            "transformer_blocks.0.img_mlp.out.weight",
            0..32,
        ),
        (
            Arch::QwenImage21,
            "diffusion_model.modulation.1",
            KOHYA,
            Model,
            "modulation.1.weight",
            0..128,
        ),
        (
            Arch::QwenImage21,
            "lora_unet_txt_in_in_layer",
            KOHYA,
            Model,
            "txt_in.in_layer.weight",
            0..32,
        ),
        (
            Arch::QwenImage21,
            "lora_te_layers_0_self_attn_q_proj",
            KOHYA,
            Clip,
            "qwen3vl_8b.transformer.model.layers.0.self_attn.q_proj.weight",
            0..32,
        ),
        // HiDream: SimpleTuner's `transformer.` and `lycoris_` over its own names; T5 after
        // both CLIPs is `lora_te3_`.
        (
            Arch::HiDream,
            "transformer.double_stream_blocks.0.block.attn1.to_q_t",
            PEFT,
            Model,
            "double_stream_blocks.0.block.attn1.to_q_t.weight",
            0..32,
        ),
        (
            Arch::HiDream,
            "lycoris_single_stream_blocks_0_block_ff_i_experts_0_w1",
            KOHYA,
            Model,
            "single_stream_blocks.0.block.ff_i.experts.0.w1.weight",
            0..48,
        ),
        (
            Arch::HiDream,
            "lora_te3_encoder_block_0_layer_0_SelfAttention_q",
            KOHYA,
            Clip,
            "t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight",
            0..32,
        ),
        (
            Arch::HiDream,
            "lora_te2_text_model_encoder_layers_0_self_attn_q_proj",
            KOHYA,
            Clip,
            "clip_g.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
            0..64,
        ),
        // Chroma and Flux 2 are ComfyUI's Flux class: `linear1_qkv` is linear1's first 3·h rows.
        (
            Arch::Chroma,
            "diffusion_model.single_blocks.0.linear1_qkv",
            KOHYA,
            Model,
            "single_blocks.0.linear1.weight",
            0..96,
        ),
        (
            Arch::Chroma,
            "lora_te1_encoder_block_0_layer_0_SelfAttention_v",
            KOHYA,
            Clip,
            "t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.v.weight",
            0..32,
        ),
        (
            Arch::Flux2,
            "diffusion_model.single_blocks.1.linear1_qkv",
            PEFT,
            Model,
            "single_blocks.1.linear1.weight",
            0..96,
        ),
        (
            Arch::Flux2,
            "diffusion_model.double_stream_modulation_img.lin",
            PEFT,
            Model,
            "double_stream_modulation_img.lin.weight",
            0..192,
        ),
        // HunyuanVideo: diffusion-pipe's names under `transformer.` and `diffusion_model.`.
        (
            Arch::HunyuanVideo,
            "transformer.double_blocks.0.img_attn_qkv",
            PEFT,
            Model,
            "double_blocks.0.img_attn.qkv.weight",
            0..96,
        ),
        (
            Arch::HunyuanVideo,
            "transformer.double_blocks.0.txt_mod.linear",
            PEFT,
            Model,
            "double_blocks.0.txt_mod.lin.weight",
            0..192,
        ),
        (
            Arch::HunyuanVideo,
            "diffusion_model.single_blocks.0.modulation.linear",
            KOHYA,
            Model,
            "single_blocks.0.modulation.lin.weight",
            0..96,
        ),
        (
            Arch::HunyuanVideo,
            "transformer.double_blocks.0.img_mlp.fc1",
            PEFT,
            Model,
            "double_blocks.0.img_mlp.0.weight",
            0..128,
        ),
        (
            Arch::HunyuanVideo15,
            "transformer.double_blocks.0.txt_attn_proj",
            PEFT,
            Model,
            "double_blocks.0.txt_attn.proj.weight",
            0..32,
        ),
        // LTX-Video: its names bare.
        (
            Arch::Ltxv,
            "transformer_blocks.0.attn2.to_k",
            PEFT,
            Model,
            "transformer_blocks.0.attn2.to_k.weight",
            0..32,
        ),
        (
            Arch::Ltxv,
            "lora_te1_encoder_block_0_layer_0_SelfAttention_o",
            KOHYA,
            Clip,
            "t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.o.weight",
            0..32,
        ),
        // LTX-2: ComfyUI's generic names on the audio stream, the audio-video attention and
        // the text connectors (LTX-2 trainers' `diffusion_model.` LoRAs).
        (
            Arch::Ltx2,
            "diffusion_model.transformer_blocks.1.audio_to_video_attn.to_q",
            PEFT,
            Model,
            "transformer_blocks.1.audio_to_video_attn.to_q.weight",
            0..8,
        ),
        (
            Arch::Ltx2,
            "diffusion_model.transformer_blocks.0.attn2.to_k",
            KOHYA,
            Model,
            "transformer_blocks.0.attn2.to_k.weight",
            0..32,
        ),
        (
            Arch::Ltx2,
            "lora_unet_video_embeddings_connector_transformer_1d_blocks_0_ff_net_0_proj",
            KOHYA,
            Model,
            "video_embeddings_connector.transformer_1d_blocks.0.ff.net.0.proj.weight",
            0..128,
        ),
        // Its own names bare (ComfyUI's `LTXAV` form), and diffusers' `transformer.` names of
        // `LTX2VideoTransformer3DModel` (`convert_ltx2_transformer_to_diffusers`' renames).
        (
            Arch::Ltx2,
            "transformer_blocks.0.audio_attn1.to_v",
            PEFT,
            Model,
            "transformer_blocks.0.audio_attn1.to_v.weight",
            0..8,
        ),
        (
            Arch::Ltx2,
            "transformer.audio_time_embed.linear",
            PEFT,
            Model,
            "audio_adaln_single.linear.weight",
            0..48,
        ),
        (
            Arch::Ltx2,
            "transformer.transformer_blocks.1.attn2.norm_k",
            PEFT,
            Model,
            "transformer_blocks.1.attn2.k_norm.weight",
            0..32,
        ),
        // Gemma 3 under `text_encoders.`, with and without the encoder's name.
        (
            Arch::Ltx2,
            "text_encoders.gemma3_12b.transformer.model.layers.0.self_attn.q_proj",
            PEFT,
            Clip,
            "gemma3_12b.transformer.model.layers.0.self_attn.q_proj.weight",
            0..32,
        ),
        (
            Arch::Ltx2,
            "text_encoders.transformer.model.layers.1.mlp.down_proj",
            PEFT,
            Clip,
            "gemma3_12b.transformer.model.layers.1.mlp.down_proj.weight",
            0..32,
        ),
        // Lumina 2 and Z-Image: ComfyUI's generic names (the diffusers ones are tested with
        // their mapping).
        (
            Arch::Lumina2,
            "diffusion_model.layers.0.attention.qkv",
            KOHYA,
            Model,
            "layers.0.attention.qkv.weight",
            // Grouped-query attention: q 32 rows, k and v 16 each.
            0..64,
        ),
        (
            Arch::ZImage,
            "lora_unet_noise_refiner_0_feed_forward_w2",
            KOHYA,
            Model,
            "noise_refiner.0.feed_forward.w2.weight",
            0..32,
        ),
        (
            Arch::ZImage,
            "lora_te_layers_0_self_attn_k_proj",
            KOHYA,
            Clip,
            "qwen3_4b.transformer.model.layers.0.self_attn.k_proj.weight",
            0..16,
        ),
    ];
    for (arch, stem, forms, kind, key, rows) in cases {
        lands_on(arch, stem, forms, kind, key, rows);
    }
}

/// lightx2v's Wan step-distillation LoRA: kohya factors with alpha on the projections, `diff`
/// on norms and modulations, `diff_b` on biases, all under `diffusion_model.`.
#[test]
fn a_lightx2v_wan_lora_bakes_factors_diffs_and_bias_diffs() {
    let a = tiny(Arch::Wan21, 1);
    let m = |k: &str| values(get(&a, ComponentKind::Model, k));
    let shape = |k: &str| get(&a, ComponentKind::Model, k).info().shape;
    let r = 4;
    let q = "blocks.0.self_attn.q";
    let (up, down) = (seeded(&[32, r], 11), seeded(&[r, 32], 12));
    let diffs: Vec<(&str, String, Tensor)> = [
        (
            "blocks.0.norm3.weight",
            "diffusion_model.blocks.0.norm3.diff",
            13,
        ),
        (
            "blocks.0.norm3.bias",
            "diffusion_model.blocks.0.norm3.diff_b",
            14,
        ),
        (
            "blocks.0.self_attn.q.bias",
            "diffusion_model.blocks.0.self_attn.q.diff_b",
            15,
        ),
        (
            "blocks.1.modulation",
            "diffusion_model.blocks.1.modulation.diff",
            16,
        ),
        ("head.head.bias", "diffusion_model.head.head.diff_b", 17),
        (
            "blocks.1.ffn.2.weight",
            "diffusion_model.blocks.1.ffn.2.diff",
            18,
        ),
    ]
    .into_iter()
    .map(|(k, l, seed)| (k, l.to_string(), seeded(&shape(k), seed)))
    .collect();
    let mut tensors = vec![
        (format!("diffusion_model.{q}.lora_up.weight"), up.clone()),
        (
            format!("diffusion_model.{q}.lora_down.weight"),
            down.clone(),
        ),
        (format!("diffusion_model.{q}.alpha"), scalar(r as f32)),
    ];
    tensors.extend(diffs.iter().map(|(_, l, t)| (l.clone(), t.clone())));
    let l = lora("wan2.1_t2v_lightx2v_4steps_lora.safetensors", tensors);
    let s = 0.6f64;
    let (out, report) = merge(&[&a], &[], &bake(&l, s, 1.0)).unwrap();
    // Five modules: q (factors and its bias), norm3 (weight and bias), a modulation, the
    // head's bias, an MLP weight.
    assert_eq!(report.loras[0].matched, 5, "{:?}", report.loras[0]);
    assert!(report.loras[0].not_applied.is_empty(), "{:?}", report.loras);
    let o = |k: &str| values(get(&out, ComponentKind::Model, k));
    // diff: `w + f32(s)·d`, one f32 multiply and one add, as ComfyUI's `diff` patch.
    for (key, _, d) in &diffs {
        let d = values(&InputTensor::Candle(d.clone()));
        let want: Vec<f32> = m(key)
            .iter()
            .zip(&d)
            .map(|(w, d)| w + (s as f32) * d)
            .collect();
        assert_eq!(bits(&o(key)), bits(&want), "{key}");
    }
    // Factors at alpha = rank: `w + f32(s·r/r)·(up @ down)`.
    let (u, dn) = (
        values(&InputTensor::Candle(up)),
        values(&InputTensor::Candle(down)),
    );
    let w = m(&format!("{q}.weight"));
    let want: Vec<f64> = (0..w.len())
        .map(|i| {
            let (row, col) = (i / 32, i % 32);
            let d: f64 = (0..r)
                .map(|k| u[row * r + k] as f64 * dn[k * 32 + col] as f64)
                .sum();
            w[i] as f64 + s * d
        })
        .collect();
    super::tests::close(&o(&format!("{q}.weight")), &want, q);
    // Nothing else changed.
    let touched: Vec<String> = diffs
        .iter()
        .map(|(k, _, _)| k.to_string())
        .chain([format!("{q}.weight")])
        .collect();
    for (key, t) in out.get(ComponentKind::Model).unwrap() {
        if !touched.contains(key) {
            assert_eq!(bits(&values(t)), bits(&m(key)), "{key}");
        }
    }
}

#[test]
fn a_lora_of_another_family_is_refused_naming_the_family_it_fits() {
    let wan = tiny(Arch::Wan21, 1);
    // A Qwen-Image LoRA in its own names: nothing of a Wan model.
    let l = lora(
        "qwen_style.safetensors",
        vec![
            (
                "transformer.transformer_blocks.0.attn.to_q.lora_A.weight".into(),
                seeded(&[4, 32], 1),
            ),
            (
                "transformer.transformer_blocks.0.attn.to_q.lora_B.weight".into(),
                seeded(&[32, 4], 2),
            ),
            (
                "transformer.transformer_blocks.0.img_mlp.net.2.lora_A.weight".into(),
                seeded(&[4, 128], 3),
            ),
            (
                "transformer.transformer_blocks.0.img_mlp.net.2.lora_B.weight".into(),
                seeded(&[32, 4], 4),
            ),
        ],
    );
    let e = merge(&[&wan], &[], &bake(&l, 1.0, 1.0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("matches no tensor of this wan21 model"), "{e}");
    assert!(e.contains("its names fit qwen-image"), "{e}");
    assert!(e.contains("2 of 2 module(s)"), "{e}");
    // And a Wan LoRA into Qwen-Image names Wan's two families (the same names).
    let qwen = tiny(Arch::QwenImage, 1);
    let l = lora(
        "wan_style.safetensors",
        vec![
            (
                "diffusion_model.blocks.0.self_attn.q.lora_down.weight".into(),
                seeded(&[4, 32], 1),
            ),
            (
                "diffusion_model.blocks.0.self_attn.q.lora_up.weight".into(),
                seeded(&[32, 4], 2),
            ),
        ],
    );
    let e = merge(&[&qwen], &[], &bake(&l, 1.0, 1.0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("its names fit wan21 (") && e.contains(" or wan22 ("),
        "{e}"
    );
}

/// ModelMergeBlocks' ratio of `key` for `blocks` (prefix, ratio) written out here: the longest
/// prefix the key starts with, else the first entry's.
fn expected_ratio(blocks: &[(String, f64)], key: &str) -> f64 {
    let mut best: Option<&(String, f64)> = None;
    for b in blocks {
        if key.starts_with(&b.0) && best.is_none_or(|x| x.0.len() < b.0.len()) {
            best = Some(b);
        }
    }
    best.unwrap_or(&blocks[0]).1
}

/// Every family's block merge: the node's bare list where ComfyUI has a node for it (each
/// input its own ratio), named prefixes elsewhere; each key is `A·r + B·(1 − r)` at its block's
/// `r`, f32 as ComfyUI computes it.
#[test]
fn every_family_merges_by_blocks() {
    let later = &Arch::ALL[7..];
    for &arch in later {
        let (a, b) = (tiny(arch, 1), tiny(arch, 2));
        let family = arch.family();
        let (spec, blocks): (String, Vec<(String, f64)>) = match family.block_prefixes.first() {
            Some(node) => {
                let prefixes = node.prefixes();
                let ratios: Vec<f64> = (0..prefixes.len())
                    .map(|i| (i % 17) as f64 / 16.0)
                    .collect();
                let spec = ratios
                    .iter()
                    .map(f64::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                (spec, prefixes.into_iter().zip(ratios).collect())
            }
            None => {
                // The first numbered group of blocks at 0.25 and 0.75, the rest at 0.5.
                let model = a.get(ComponentKind::Model).unwrap();
                let group = model
                    .keys()
                    .find_map(|k| {
                        let (head, _) = k.split_once(".0.")?;
                        (!head.contains('.')).then(|| format!("{head}."))
                    })
                    .unwrap();
                let blocks = vec![
                    ("none.".to_string(), 0.5),
                    (format!("{group}0."), 0.25),
                    (format!("{group}1."), 0.75),
                ];
                let spec = blocks
                    .iter()
                    .map(|(p, r)| format!("{p}={r}"))
                    .collect::<Vec<_>>()
                    .join(",");
                (spec, blocks)
            }
        };
        let rec = Recipe {
            operation: Operation::WeightedSum { ratio: 0.5 },
            blocks: BlockRatios::parse(&spec).unwrap(),
            ..Recipe::default()
        };
        let (out, report) = merge(&[&a, &b], &[], &rec).unwrap();
        assert_eq!(report.arch, Some(arch));
        let mut ratios = std::collections::BTreeSet::new();
        for (key, t) in out.get(ComponentKind::Model).unwrap() {
            let r = expected_ratio(&blocks, key);
            let (va, vb) = (
                values(get(&a, ComponentKind::Model, key)),
                values(get(&b, ComponentKind::Model, key)),
            );
            let (rf, sf) = (r as f32, (1.0 - r) as f32);
            let want: Vec<f32> = va.iter().zip(&vb).map(|(x, y)| x * rf + sf * y).collect();
            assert_eq!(bits(&values(t)), bits(&want), "{arch} {key} at {r}");
            ratios.insert(r.to_bits());
        }
        assert!(ratios.len() >= 3, "{arch}: blocks at several ratios");
    }
}

/// `MergeArch::Generic`: a model of no known family merges by keys and shapes, and a LoRA in
/// ComfyUI's generic names bakes into it.
#[test]
fn generic_merges_match_keys_and_shapes_only() {
    let shape = |seed| {
        let mut model = crate::model::InputMap::new();
        for (k, s) in [
            ("blocks.0.attn.qkv_x.weight", vec![24, 8]),
            ("t5_yproj.weight", vec![8, 8]),
        ] {
            model.insert(k.to_string(), InputTensor::Candle(seeded(&s, seed)));
        }
        let mut c = Components::default();
        c.set_inputs(ComponentKind::Model, model);
        c
    };
    let (a, b) = (shape(1), shape(2));
    let weighted = Recipe {
        operation: Operation::WeightedSum { ratio: 0.25 },
        ..Recipe::default()
    };
    assert!(
        merge(&[&a, &b], &[], &weighted).is_err(),
        "detection cannot place it"
    );
    let generic = Recipe {
        arch: MergeArch::Generic,
        ..weighted.clone()
    };
    let (out, report) = merge(&[&a, &b], &[], &generic).unwrap();
    assert_eq!(report.arch, None);
    assert!(report.recipe.contains("\"architecture\":\"generic\""));
    let key = "blocks.0.attn.qkv_x.weight";
    let want: Vec<f32> = values(get(&a, ComponentKind::Model, key))
        .iter()
        .zip(&values(get(&b, ComponentKind::Model, key)))
        .map(|(x, y)| x * 0.25 + 0.75 * y)
        .collect();
    assert_eq!(
        bits(&values(get(&out, ComponentKind::Model, key))),
        bits(&want)
    );
    // A list of block ratios has no family to be placed on.
    let listed = Recipe {
        blocks: BlockRatios::parse("0.1,0.2").unwrap(),
        ..generic.clone()
    };
    let e = merge(&[&a, &b], &[], &listed).unwrap_err().to_string();
    assert!(e.contains("PREFIX=RATIO"), "{e}");
    // A LoRA in ComfyUI's generic names.
    let l = lora(
        "mochi_style.safetensors",
        vec![
            (
                "diffusion_model.t5_yproj.lora_A.weight".into(),
                seeded(&[2, 8], 3),
            ),
            (
                "diffusion_model.t5_yproj.lora_B.weight".into(),
                seeded(&[8, 2], 4),
            ),
        ],
    );
    let rec = Recipe {
        arch: MergeArch::Generic,
        ..bake(&l, 1.0, 1.0)
    };
    let (_, report) = merge(&[&a], &[], &rec).unwrap();
    assert_eq!(report.loras[0].matched, 1);
    // The caller's family is checked against what detection finds.
    let wan = tiny(Arch::Wan21, 1);
    let rec = Recipe {
        arch: MergeArch::Family(Arch::QwenImage),
        ..weighted
    };
    let e = merge(&[&wan, &wan], &[], &rec).unwrap_err().to_string();
    assert!(
        e.contains("A is wan21, not qwen-image as --arch says"),
        "{e}"
    );
}
