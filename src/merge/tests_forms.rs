//! Every LoRA form ComfyUI loads for these architectures, baked and checked against ComfyUI's
//! arithmetic computed here (f32 operations, one rounding; LoRA products in f64 within 1e-5),
//! and every form it does not apply here refused by name or reported.

use std::ops::Range;

use candle_core::{Device, Tensor};

use super::tests::{bits, close, get, lora, product, seeded, tiny, values};
use super::*;

pub(super) fn bake(l: &Lora, model: f64, clip: f64) -> Recipe {
    Recipe {
        loras: vec![LoraBake {
            lora: l.clone(),
            strength_model: model,
            strength_clip: clip,
        }],
        ..Recipe::default()
    }
}

pub(super) fn scalar(v: f32) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap()
}

/// A rank-2 module `stem` (alpha 1, so a scale of 1/2) on rows `rows` of `key`, baked at 0.75:
/// those rows are `W + f32(0.75 · 0.5) · (up @ down)`, everything else of the model is A's.
pub(super) fn lands_on(
    arch: Arch,
    stem: &str,
    (up_suffix, down_suffix): (&str, &str),
    kind: ComponentKind,
    key: &str,
    rows: Range<usize>,
) {
    let a = tiny(arch, 1);
    let info = get(&a, kind, key).info();
    let cols = info.numel() / info.shape[0];
    let r = 2;
    let (up, down) = (seeded(&[rows.len(), r], 3), seeded(&[r, cols], 4));
    let l = lora(
        "forms.safetensors",
        vec![
            (format!("{stem}{up_suffix}"), up.clone()),
            (format!("{stem}{down_suffix}"), down.clone()),
            (format!("{stem}.alpha"), scalar(1.0)),
        ],
    );
    let (out, report) = merge(&[&a], &[], &bake(&l, 0.75, 0.75)).unwrap();
    let what = format!("{arch} {stem}");
    assert_eq!(report.loras[0].matched, 1, "{what}");
    assert_eq!(report.merged, 1, "{what}: only {key} is computed");
    let (w, got) = (values(get(&a, kind, key)), values(get(&out, kind, key)));
    let d = product(
        &values(&InputTensor::Candle(up)),
        &values(&InputTensor::Candle(down)),
        r,
    );
    let s = (0.75f64 * (1.0 / 2.0)) as f32 as f64;
    let (lo, hi) = (rows.start * cols, rows.end * cols);
    assert_eq!(bits(&got[..lo]), bits(&w[..lo]), "{what}: rows before");
    assert_eq!(bits(&got[hi..]), bits(&w[hi..]), "{what}: rows after");
    let want: Vec<f64> = (lo..hi).map(|i| w[i] as f64 + s * d[i - lo]).collect();
    close(&got[lo..hi], &want, &what);
}

/// An architecture, a stem, its factors' suffixes, and the rows of the tensor it lands on.
type Case<'a> = (
    Arch,
    String,
    (&'a str, &'a str),
    ComponentKind,
    &'a str,
    Range<usize>,
);

pub(super) const KOHYA: (&str, &str) = (".lora_up.weight", ".lora_down.weight");
pub(super) const PEFT: (&str, &str) = (".lora_B.weight", ".lora_A.weight");

#[test]
fn every_name_form_lands_where_comfyui_puts_it() {
    use ComponentKind::{Clip, Model};
    let l_q = "clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight";
    let g_q = "clip_g.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight";
    let g_fc1 = "clip_g.transformer.text_model.encoder.layers.0.mlp.fc1.weight";
    let h_q = "clip_h.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight";
    let t5_q = "t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight";
    let t5 = "encoder_block_0_layer_0_SelfAttention_q";
    let sdxl_q = "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight";
    let sdxl_out = "input_blocks.4.1.transformer_blocks.0.attn1.to_out.0.weight";
    let sd3_qkv = "joint_blocks.0.x_block.attn.qkv.weight";
    let flux_qkv = "double_blocks.0.img_attn.qkv.weight";
    let linear1 = "single_blocks.0.linear1.weight";
    let cases: Vec<Case> = vec![
        // SDXL: `lora_te_` is CLIP-L (ComfyUI maps it there; it matched nothing before).
        (
            Arch::Sdxl,
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj".into(),
            KOHYA,
            Clip,
            l_q,
            0..32,
        ),
        (
            Arch::Sdxl,
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj".into(),
            KOHYA,
            Clip,
            l_q,
            0..32,
        ),
        (
            Arch::Sdxl,
            "lora_te2_text_model_encoder_layers_0_mlp_fc1".into(),
            KOHYA,
            Clip,
            g_fc1,
            0..128,
        ),
        (
            Arch::Sdxl,
            "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj".into(),
            PEFT,
            Clip,
            g_q,
            0..64,
        ),
        // SimpleTuner's LyCORIS prefix over diffusers names.
        (
            Arch::Sdxl,
            "lycoris_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q".into(),
            KOHYA,
            Model,
            sdxl_q,
            0..8,
        ),
        (
            Arch::Sdxl,
            "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q".into(),
            KOHYA,
            Model,
            sdxl_q,
            0..8,
        ),
        // Older diffusers attention-processor names.
        (
            Arch::Sdxl,
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_out".into(),
            (".lora.up.weight", ".lora.down.weight"),
            Model,
            sdxl_out,
            0..8,
        ),
        // The refiner's only encoder, OpenCLIP-G, takes the one-encoder names.
        (
            Arch::SdxlRefiner,
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj".into(),
            KOHYA,
            Clip,
            g_q,
            0..64,
        ),
        (
            Arch::SdxlRefiner,
            "text_encoder.text_model.encoder.layers.0.mlp.fc1".into(),
            PEFT,
            Clip,
            g_fc1,
            0..128,
        ),
        (
            Arch::SdxlRefiner,
            "lora_prior_te_text_projection".into(),
            KOHYA,
            Clip,
            "clip_g.transformer.text_projection.weight",
            0..64,
        ),
        (
            Arch::Sd2,
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj".into(),
            KOHYA,
            Clip,
            h_q,
            0..48,
        ),
        (
            Arch::Sd2,
            "text_encoders.clip_h.transformer.text_model.encoder.layers.0.self_attn.q_proj".into(),
            KOHYA,
            Clip,
            h_q,
            0..48,
        ),
        // SD3: flash-sd3's `base_model.model.` prefix, on k's rows of the fused qkv.
        (
            Arch::Sd3,
            "base_model.model.transformer_blocks.0.attn.to_k".into(),
            PEFT,
            Model,
            sd3_qkv,
            32..64,
        ),
        (
            Arch::Sd3,
            "lycoris_transformer_blocks_0_attn_to_out_0".into(),
            KOHYA,
            Model,
            "joint_blocks.0.x_block.attn.proj.weight",
            0..32,
        ),
        (
            Arch::Sd3,
            format!("lora_te3_{t5}"),
            KOHYA,
            Clip,
            t5_q,
            0..32,
        ),
        (
            Arch::Sd3,
            "lora_te2_text_projection".into(),
            KOHYA,
            Clip,
            "clip_g.transformer.text_projection.weight",
            0..64,
        ),
        (
            Arch::Sd3,
            "lora_te1_text_projection".into(),
            KOHYA,
            Clip,
            "clip_l.transformer.text_projection.weight",
            0..32,
        ),
        // Flux: T5 is `lora_te2_` and `lora_te3_` (OneTrainer).
        (
            Arch::Flux,
            format!("lora_te2_{t5}"),
            KOHYA,
            Clip,
            t5_q,
            0..32,
        ),
        (
            Arch::Flux,
            format!("lora_te3_{t5}"),
            KOHYA,
            Clip,
            t5_q,
            0..32,
        ),
        (
            Arch::Flux,
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj".into(),
            KOHYA,
            Clip,
            l_q,
            0..32,
        ),
        (
            Arch::Flux,
            "diffusion_model.single_blocks.0.linear1_qkv".into(),
            KOHYA,
            Model,
            linear1,
            0..96,
        ),
        (
            Arch::Flux,
            "lycoris_single_transformer_blocks_0_proj_mlp".into(),
            KOHYA,
            Model,
            linear1,
            96..224,
        ),
        (
            Arch::Flux,
            "lora_transformer_transformer_blocks_0_attn_to_q".into(),
            KOHYA,
            Model,
            flux_qkv,
            0..32,
        ),
        // Mochi's PEFT names without `.weight`.
        (
            Arch::Flux,
            "transformer.transformer_blocks.0.attn.to_v".into(),
            (".lora_B", ".lora_A"),
            Model,
            flux_qkv,
            64..96,
        ),
        (
            Arch::FluxSchnell,
            "diffusion_model.double_blocks.0.img_attn.qkv".into(),
            (".lora_B.default.weight", ".lora_A.default.weight"),
            Model,
            flux_qkv,
            0..96,
        ),
        (
            Arch::Sd15,
            "lora_unet_input_blocks_1_1_proj_in".into(),
            ("_lora.up.weight", "_lora.down.weight"),
            Model,
            "input_blocks.1.1.proj_in.weight",
            0..4,
        ),
        (
            Arch::Sd15,
            "lora_te_text_model_encoder_layers_0_mlp_fc1".into(),
            (
                ".lora_linear_layer.up.weight",
                ".lora_linear_layer.down.weight",
            ),
            Clip,
            "clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight",
            0..64,
        ),
    ];
    for (arch, stem, suffixes, kind, key, rows) in cases {
        lands_on(arch, &stem, suffixes, kind, key, rows);
    }
}

const TO_OUT: &str = "input_blocks.1.1.transformer_blocks.0.attn1.to_out.0";
const FC1: &str = "clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight";

/// A LoRA of full differences and set weights on SD1.5's tiny model.
fn differences(a: &Components) -> Lora {
    let shape = |key: &str| get(a, ComponentKind::Model, key).info().shape;
    let fc1 = get(a, ComponentKind::Clip, FC1).info().shape;
    lora(
        "diff.safetensors",
        vec![
            // LyCORIS `full`: the weight's and the bias's differences.
            (
                format!("diffusion_model.{TO_OUT}.diff"),
                seeded(&shape(&format!("{TO_OUT}.weight")), 1),
            ),
            (
                format!("diffusion_model.{TO_OUT}.diff_b"),
                seeded(&shape(&format!("{TO_OUT}.bias")), 2),
            ),
            (format!("diffusion_model.{TO_OUT}.alpha"), scalar(8.0)),
            // LyCORIS norms.
            (
                "lora_unet_input_blocks_1_1_norm.w_norm".into(),
                seeded(&shape("input_blocks.1.1.norm.weight"), 3),
            ),
            (
                "lora_unet_input_blocks_1_1_norm.b_norm".into(),
                seeded(&shape("input_blocks.1.1.norm.bias"), 4),
            ),
            // A `.b_norm` without its `.w_norm`: ComfyUI does not read it.
            (
                "lora_unet_input_blocks_2_1_norm.b_norm".into(),
                seeded(&shape("input_blocks.2.1.norm.bias"), 5),
            ),
            // `.set_weight` on a weight, and on a bias through ComfyUI's generic whole-key form.
            (
                "diffusion_model.out.0.set_weight".into(),
                seeded(&shape("out.0.weight"), 6),
            ),
            (
                "diffusion_model.out.0.bias.set_weight".into(),
                seeded(&shape("out.0.bias"), 7),
            ),
            (
                "lora_te_text_model_encoder_layers_0_mlp_fc1.diff".into(),
                seeded(&fc1, 8),
            ),
            ("lora_unet_unknown.suffix".into(), scalar(1.0)),
        ],
    )
}

#[test]
fn full_differences_and_set_weights_are_comfyuis_patches() {
    let a = tiny(Arch::Sd15, 1);
    let l = differences(&a);
    let (sm, sc) = (0.6f64, 0.25f64);
    for device in [None, Some(Device::Cpu)] {
        let rec = Recipe {
            device: device.clone(),
            ..bake(&l, sm, sc)
        };
        let (out, report) = merge(&[&a], &[], &rec).unwrap();
        let m = |k: &str| values(get(&a, ComponentKind::Model, k));
        let o = |k: &str| values(get(&out, ComponentKind::Model, k));
        let v = |k: &str| values(&l.modules[k.rsplit_once('.').unwrap().0].clone().value(k));
        // diff: `weight += f32(s) · diff`, one f32 multiply and one add.
        let add = |w: Vec<f32>, d: Vec<f32>, s: f64| -> Vec<f32> {
            w.iter().zip(&d).map(|(w, d)| w + (s as f32) * d).collect()
        };
        for (key, lkey) in [
            (
                format!("{TO_OUT}.weight"),
                format!("diffusion_model.{TO_OUT}.diff"),
            ),
            (
                format!("{TO_OUT}.bias"),
                format!("diffusion_model.{TO_OUT}.diff_b"),
            ),
            (
                "input_blocks.1.1.norm.weight".into(),
                "lora_unet_input_blocks_1_1_norm.w_norm".into(),
            ),
            (
                "input_blocks.1.1.norm.bias".into(),
                "lora_unet_input_blocks_1_1_norm.b_norm".into(),
            ),
        ] {
            assert_eq!(
                bits(&o(&key)),
                bits(&add(m(&key), v(&lkey), sm)),
                "{key} {device:?}"
            );
        }
        // set: the value as it is, whatever the strength.
        assert_eq!(
            bits(&o("out.0.weight")),
            bits(&v("diffusion_model.out.0.set_weight"))
        );
        assert_eq!(
            bits(&o("out.0.bias")),
            bits(&v("diffusion_model.out.0.bias.set_weight"))
        );
        // The text encoder at the clip strength.
        let want = add(
            values(get(&a, ComponentKind::Clip, FC1)),
            v("lora_te_text_model_encoder_layers_0_mlp_fc1.diff"),
            sc,
        );
        assert_eq!(
            bits(&values(get(&out, ComponentKind::Clip, FC1))),
            bits(&want)
        );
        // Untouched: the lone `.b_norm`'s bias.
        let lone = "input_blocks.2.1.norm.bias";
        assert!(matches!(
            get(&out, ComponentKind::Model, lone),
            InputTensor::Candle(_)
        ));
        let r = &report.loras[0];
        assert_eq!(r.matched, 5, "{r:?}");
        assert_eq!(r.not_applied.len(), 2, "{r:?}");
        assert!(
            r.not_applied
                .iter()
                .any(|n| n.contains("input_blocks_2_1_norm.b_norm")
                    && n.contains("without its `.w_norm`")),
            "{r:?}"
        );
        assert!(
            r.not_applied
                .iter()
                .any(|n| n.contains("lora_unet_unknown.suffix")),
            "{r:?}"
        );
    }
    // A model strength of 0 skips the differences but not `set` (ComfyUI's copy ignores it).
    let (out, _) = merge(&[&a], &[], &bake(&l, 0.0, 0.5)).unwrap();
    let o = |k: &str| values(get(&out, ComponentKind::Model, k));
    assert_eq!(
        bits(&o("out.0.weight")),
        bits(&values(
            &l.modules["diffusion_model.out.0"]
                .clone()
                .value("diffusion_model.out.0.set_weight")
        ))
    );
    assert!(matches!(
        get(&out, ComponentKind::Model, &format!("{TO_OUT}.weight")),
        InputTensor::Candle(_)
    ));
    // Both 0: LoraLoader returns the model as it is.
    let (_, report) = merge(&[&a], &[], &bake(&l, 0.0, 0.0)).unwrap();
    assert_eq!(report.merged, 0);
    // With --strict the keys not applied refuse the LoRA, naming the first.
    let strict = Recipe {
        strict: true,
        ..bake(&l, sm, sc)
    };
    let e = merge(&[&a], &[], &strict).unwrap_err().to_string();
    assert!(e.contains("2 of its keys are not applied"), "{e}");
}

impl lora::Module {
    /// The tensor of this module under `key` (test helper).
    fn value(&self, key: &str) -> InputTensor {
        [&self.diff, &self.diff_b, &self.set]
            .into_iter()
            .flatten()
            .find(|(k, _)| k == key)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| panic!("{key}"))
    }
}

#[test]
fn a_bfl_control_lora_pads_img_in_adds_its_bias_and_sets_the_norms() {
    let a = tiny(Arch::Flux, 1);
    let w_in = get(&a, ComponentKind::Model, "img_in.weight").info().shape;
    let (hidden, ch) = (w_in[0], w_in[1]);
    let r = 2;
    let t = |s: &[usize], seed| seeded(s, seed);
    // BFL's names, without a prefix; img_in takes twice the channels (the control image's).
    let file = vec![
        ("img_in.lora_A.weight".to_string(), t(&[r, 2 * ch], 1)),
        ("img_in.lora_B.weight".to_string(), t(&[hidden, r], 2)),
        ("img_in.lora_B.bias".to_string(), t(&[hidden], 3)),
        (
            "double_blocks.0.img_attn.qkv.lora_A.weight".to_string(),
            t(&[r, hidden], 4),
        ),
        (
            "double_blocks.0.img_attn.qkv.lora_B.weight".to_string(),
            t(&[3 * hidden, r], 5),
        ),
        (
            "single_blocks.0.norm.key_norm.scale".to_string(),
            t(&[hidden / 2], 6),
        ),
    ];
    let raw: std::collections::BTreeMap<String, Vec<f32>> = file
        .iter()
        .map(|(k, v)| (k.clone(), values(&InputTensor::Candle(v.clone()))))
        .collect();
    let l = lora("control.safetensors", file);
    let s = 0.8f64;
    let mut host: Option<Vec<f32>> = None;
    for device in [None, Some(Device::Cpu)] {
        let rec = Recipe {
            device: device.clone(),
            ..bake(&l, s, 1.0)
        };
        let (out, report) = merge(&[&a], &[], &rec).unwrap();
        assert!(report.loras[0].not_applied.is_empty(), "{:?}", report.loras);
        let img_in = get(&out, ComponentKind::Model, "img_in.weight");
        // ComfyUI's `reshape_weight`: [B's rows, A's columns].
        assert_eq!(img_in.info().shape, vec![hidden, 2 * ch]);
        let (w, got) = (
            values(get(&a, ComponentKind::Model, "img_in.weight")),
            values(img_in),
        );
        let d = product(
            &raw["img_in.lora_B.weight"],
            &raw["img_in.lora_A.weight"],
            r,
        );
        let sf = s as f32 as f64;
        let want: Vec<f64> = (0..hidden * 2 * ch)
            .map(|i| {
                let (row, col) = (i / (2 * ch), i % (2 * ch));
                let base = if col < ch {
                    w[row * ch + col] as f64
                } else {
                    0.0
                };
                base + sf * d[i]
            })
            .collect();
        close(&got, &want, "img_in.weight");
        match &host {
            None => host = Some(got),
            // The device evaluator pads and multiplies alike (the product's order may differ).
            Some(h) => close(
                &got,
                &h.iter().map(|x| *x as f64).collect::<Vec<_>>(),
                "device",
            ),
        }
        let b = values(get(&a, ComponentKind::Model, "img_in.bias"));
        let want: Vec<f32> = b
            .iter()
            .zip(&raw["img_in.lora_B.bias"])
            .map(|(b, d)| b + (s as f32) * d)
            .collect();
        assert_eq!(
            bits(&values(get(&out, ComponentKind::Model, "img_in.bias"))),
            bits(&want)
        );
        let scale = values(get(
            &out,
            ComponentKind::Model,
            "single_blocks.0.norm.key_norm.scale",
        ));
        assert_eq!(
            bits(&scale),
            bits(&raw["single_blocks.0.norm.key_norm.scale"])
        );
        let qkv = "double_blocks.0.img_attn.qkv.weight";
        let (w, got) = (
            values(get(&a, ComponentKind::Model, qkv)),
            values(get(&out, ComponentKind::Model, qkv)),
        );
        let d = product(
            &raw["double_blocks.0.img_attn.qkv.lora_B.weight"],
            &raw["double_blocks.0.img_attn.qkv.lora_A.weight"],
            r,
        );
        let want: Vec<f64> = (0..w.len()).map(|i| w[i] as f64 + sf * d[i]).collect();
        close(&got, &want, qkv);
    }
}

#[test]
fn usos_flux_lora_is_renamed_as_comfyui_does() {
    let a = tiny(Arch::Flux, 1);
    let hidden = get(&a, ComponentKind::Model, "img_in.weight").info().shape[0];
    let r = 2;
    let t = |s: &[usize], seed| seeded(s, seed);
    let mut file = Vec::new();
    let mut module = |name: &str, rows: usize, cols: usize, seed: u64| {
        file.push((format!("{name}.up.weight"), t(&[rows, r], seed)));
        file.push((format!("{name}.down.weight"), t(&[r, cols], seed + 1)));
    };
    // The two keys ComfyUI recognises USO by (blocks the tiny model does not have).
    module("single_blocks.37.processor.qkv_lora", 3 * hidden, hidden, 1);
    module(
        "double_blocks.18.processor.qkv_lora2",
        3 * hidden,
        hidden,
        3,
    );
    module("double_blocks.0.processor.qkv_lora1", 3 * hidden, hidden, 5);
    module("double_blocks.0.processor.proj_lora2", hidden, hidden, 7);
    module("single_blocks.0.processor.qkv_lora", 3 * hidden, hidden, 9);
    let raw: std::collections::BTreeMap<String, Vec<f32>> = file
        .iter()
        .map(|(k, v)| (k.clone(), values(&InputTensor::Candle(v.clone()))))
        .collect();
    let l = lora("uso.safetensors", file);
    let (out, report) = merge(&[&a], &[], &bake(&l, 1.0, 1.0)).unwrap();
    let r0 = &report.loras[0];
    assert_eq!(r0.matched, 3, "{r0:?}");
    assert!(
        r0.not_applied
            .iter()
            .any(|n| n.contains("diffusion_model.single_blocks.37.linear1_qkv")),
        "{r0:?}"
    );
    for (name, key) in [
        (
            "double_blocks.0.processor.qkv_lora1",
            "double_blocks.0.img_attn.qkv.weight",
        ),
        (
            "double_blocks.0.processor.proj_lora2",
            "double_blocks.0.txt_attn.proj.weight",
        ),
        (
            "single_blocks.0.processor.qkv_lora",
            "single_blocks.0.linear1.weight",
        ),
    ] {
        let (w, got) = (
            values(get(&a, ComponentKind::Model, key)),
            values(get(&out, ComponentKind::Model, key)),
        );
        let d = product(
            &raw[&format!("{name}.up.weight")],
            &raw[&format!("{name}.down.weight")],
            r,
        );
        // `linear1_qkv` is linear1's first 3 · hidden rows; the MLP rows after them stay A's.
        let n = d.len();
        let want: Vec<f64> = (0..n).map(|i| w[i] as f64 + d[i]).collect();
        close(&got[..n], &want, key);
        assert_eq!(bits(&got[n..]), bits(&w[n..]), "{key}");
    }
}

#[test]
fn a_half_zero_tensor_keeps_its_sign_where_no_patch_lands() {
    // Rows a fused-part difference does not cover are A's bits, −0.0 included.
    let mut a = tiny(Arch::Flux, 1);
    let key = "double_blocks.0.img_attn.qkv.weight";
    let info = get(&a, ComponentKind::Model, key).info();
    let neg = Tensor::full(-0.0f32, info.shape.clone(), &Device::Cpu).unwrap();
    let mut model = a.take(ComponentKind::Model).unwrap();
    model.insert(key.to_string(), InputTensor::Candle(neg));
    a.set_inputs(ComponentKind::Model, model);
    let h = info.shape[1];
    let l = lora(
        "v.safetensors",
        vec![(
            "transformer.transformer_blocks.0.attn.to_v.diff".into(),
            seeded(&[h, h], 1),
        )],
    );
    for device in [None, Some(Device::Cpu)] {
        let rec = Recipe {
            device,
            ..bake(&l, 1.0, 1.0)
        };
        let (out, _) = merge(&[&a], &[], &rec).unwrap();
        let got = values(get(&out, ComponentKind::Model, key));
        assert!(got[..2 * h * h]
            .iter()
            .all(|x| x.to_bits() == (-0.0f32).to_bits()));
    }
}
