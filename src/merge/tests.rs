//! Merges and bakes against their formulas, computed here over the tensors' values.

use candle_core::{DType, Device, Tensor};

use super::*;
use crate::synthetic::{self, SyntheticOptions};

pub(super) fn tiny(arch: Arch, seed: u64) -> Components {
    let o = SyntheticOptions::new(arch)
        .tiny()
        .with_seed(seed)
        .with_dtype(DType::F32);
    synthetic::build(&o, &Device::Cpu).unwrap()
}

/// A tensor's values in f32 (a merged one evaluated by the host evaluator, or its device's).
pub(super) fn values(t: &InputTensor) -> Vec<f32> {
    match t {
        InputTensor::Candle(c) => c
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap(),
        other => crate::offload::host_bytes(other)
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    }
}

pub(super) fn get<'a>(c: &'a Components, kind: ComponentKind, key: &str) -> &'a InputTensor {
    c.tensor(kind, key)
        .unwrap_or_else(|| panic!("{kind}:{key}"))
}

pub(super) fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn recipe(op: Operation) -> Recipe {
    Recipe {
        operation: op,
        ..Recipe::default()
    }
}

const Q: &str = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight";
const CONV: &str = "input_blocks.1.0.in_layers.2.weight";
const TE_Q: &str = "clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight";

#[test]
fn a_weighted_sum_is_comfyuis_bit_for_bit_and_leaves_clip_and_vae_to_a() {
    let (a, b) = (tiny(Arch::Sd15, 1), tiny(Arch::Sd15, 2));
    let r = 0.3f64;
    let (out, report) =
        merge(&[&a, &b], &[], &recipe(Operation::WeightedSum { ratio: r })).unwrap();
    // ComfyUI: w = A (f32); w *= f32(r); w += f32(1 - r) * B, each operation rounded.
    let (rf, sf) = (r as f32, (1.0 - r) as f32);
    let mut checked = 0;
    for (key, t) in out.get(ComponentKind::Model).unwrap() {
        let (va, vb) = (
            values(get(&a, ComponentKind::Model, key)),
            values(get(&b, ComponentKind::Model, key)),
        );
        let expected: Vec<f32> = va.iter().zip(&vb).map(|(x, y)| x * rf + sf * y).collect();
        assert_eq!(bits(&values(t)), bits(&expected), "{key}");
        checked += 1;
    }
    assert!(checked > 50);
    for kind in [ComponentKind::Clip, ComponentKind::Vae] {
        for (key, t) in out.get(kind).unwrap() {
            assert!(
                matches!(t, InputTensor::Candle(_)),
                "{key} is A's tensor as it is"
            );
            assert_eq!(bits(&values(t)), bits(&values(get(&a, kind, key))));
        }
    }
    assert_eq!(report.merged, checked);
    assert!(report.recipe.contains("\"ratio\":0.3"));
}

#[test]
fn ratio_one_is_a_and_the_clip_merges_except_its_buffers() {
    let (a, b) = (tiny(Arch::Sd15, 1), tiny(Arch::Sd15, 2));
    let rec = Recipe {
        clip: Some(0.25),
        vae_from: 1,
        ..recipe(Operation::WeightedSum { ratio: 1.0 })
    };
    let (out, report) = merge(&[&a, &b], &[], &rec).unwrap();
    for (key, t) in out.get(ComponentKind::Model).unwrap() {
        assert!(
            matches!(t, InputTensor::Candle(_)),
            "ratio 1 copies A: {key}"
        );
    }
    let clip = out.get(ComponentKind::Clip).unwrap();
    let (va, vb) = (
        values(get(&a, ComponentKind::Clip, TE_Q)),
        values(get(&b, ComponentKind::Clip, TE_Q)),
    );
    let expected: Vec<f32> = va
        .iter()
        .zip(&vb)
        .map(|(x, y)| x * 0.25 + 0.75 * y)
        .collect();
    assert_eq!(bits(&values(&clip[TE_Q])), bits(&expected));
    for (key, t) in clip {
        if key.ends_with("logit_scale") || key.ends_with("position_ids") {
            assert!(matches!(t, InputTensor::Candle(_)), "{key} stays A's");
        }
    }
    // The VAE is B's, unmerged.
    for (key, t) in out.get(ComponentKind::Vae).unwrap() {
        assert_eq!(
            bits(&values(t)),
            bits(&values(get(&b, ComponentKind::Vae, key))),
            "{key}"
        );
    }
    assert!(report.copied > 0 && report.recipe.contains("\"vae\":\"B\""));
}

#[test]
fn add_difference_subtract_and_add_follow_the_nodes() {
    let (a, b, c) = (
        tiny(Arch::Sd15, 1),
        tiny(Arch::Sd15, 2),
        tiny(Arch::Sd15, 3),
    );
    let m = 0.7f64;
    let (mf, nf) = (m as f32, (-m) as f32);
    let (va, vb, vc) = (
        values(get(&a, ComponentKind::Model, Q)),
        values(get(&b, ComponentKind::Model, Q)),
        values(get(&c, ComponentKind::Model, Q)),
    );
    let (out, _) = merge(
        &[&a, &b, &c],
        &[],
        &recipe(Operation::AddDifference { multiplier: m }),
    )
    .unwrap();
    // ModelSubtract(B, C, m) = B·m + (−m)·C; ModelAdd(A, that) = A + that.
    let expected: Vec<f32> = (0..va.len())
        .map(|i| va[i] + (vb[i] * mf + nf * vc[i]))
        .collect();
    assert_eq!(
        bits(&values(get(&out, ComponentKind::Model, Q))),
        bits(&expected)
    );

    let (out, _) = merge(
        &[&a, &b],
        &[],
        &recipe(Operation::Subtract { multiplier: m }),
    )
    .unwrap();
    let expected: Vec<f32> = (0..va.len()).map(|i| va[i] * mf + nf * vb[i]).collect();
    assert_eq!(
        bits(&values(get(&out, ComponentKind::Model, Q))),
        bits(&expected)
    );

    let (out, _) = merge(&[&a, &b], &[], &recipe(Operation::Add)).unwrap();
    let expected: Vec<f32> = (0..va.len()).map(|i| va[i] + vb[i]).collect();
    assert_eq!(
        bits(&values(get(&out, ComponentKind::Model, Q))),
        bits(&expected)
    );
}

#[test]
fn block_ratios_pick_the_longest_prefix() {
    let (a, b) = (tiny(Arch::Sd15, 1), tiny(Arch::Sd15, 2));
    let rec = Recipe {
        blocks: BlockRatios::parse("input=0.2,IN01=0.9").unwrap(),
        ..recipe(Operation::WeightedSum { ratio: 0.5 })
    };
    let (out, _) = merge(&[&a, &b], &[], &rec).unwrap();
    let check = |key: &str, r: f64| {
        let (va, vb) = (
            values(get(&a, ComponentKind::Model, key)),
            values(get(&b, ComponentKind::Model, key)),
        );
        let (rf, sf) = (r as f32, (1.0 - r) as f32);
        let expected: Vec<f32> = va.iter().zip(&vb).map(|(x, y)| x * rf + sf * y).collect();
        assert_eq!(
            bits(&values(get(&out, ComponentKind::Model, key))),
            bits(&expected),
            "{key} at {r}"
        );
    };
    check(Q, 0.9);
    check("input_blocks.0.0.weight", 0.2);
    // ModelMergeBlocks gives keys no block names its first argument's ratio, not --ratio's.
    check("time_embed.0.weight", 0.2);
    check("out.2.weight", 0.2);
    check("middle_block.1.proj_in.weight", 0.2);
    let report = merge(&[&a, &b], &[], &rec).unwrap().1;
    assert!(
        report.recipe.contains("\"block_default\":0.2") && !report.recipe.contains("\"ratio\""),
        "{}",
        report.recipe
    );
    // Block ratios replace a ratio or multiplier; ModelAdd has none to replace.
    let add = Recipe {
        blocks: BlockRatios::parse("input=0.2").unwrap(),
        ..recipe(Operation::Add)
    };
    let e = merge(&[&a, &b], &[], &add).unwrap_err().to_string();
    assert!(e.contains("block ratios need an operation"), "{e}");
}

#[test]
fn bad_merges_say_what_is_wrong() {
    let (a, b) = (tiny(Arch::Sd15, 1), tiny(Arch::Sd15, 2));
    let x = tiny(Arch::Sdxl, 1);
    let ws = recipe(Operation::WeightedSum { ratio: 0.5 });
    let e = merge(&[&a, &x], &[], &ws).unwrap_err().to_string();
    assert!(e.contains("A is sd15 and B is sdxl"), "{e}");
    // A key B lacks.
    let mut short = b.clone();
    let mut model = short.take(ComponentKind::Model).unwrap();
    model.remove(Q);
    short.set_inputs(ComponentKind::Model, model);
    let e = merge(&[&a, &short], &[], &ws).unwrap_err().to_string();
    assert!(e.contains(Q) && e.contains("--allow-missing"), "{e}");
    let allow = Recipe {
        allow_missing: true,
        ..ws.clone()
    };
    let (out, report) = merge(&[&a, &short], &[], &allow).unwrap();
    assert_eq!(report.missing, vec![format!("model:{Q}")]);
    assert!(matches!(
        get(&out, ComponentKind::Model, Q),
        InputTensor::Candle(_)
    ));
    // A key whose shapes differ.
    let mut wide = b.clone();
    let mut model = wide.take(ComponentKind::Model).unwrap();
    let t = Tensor::zeros((3, 5), DType::F32, &Device::Cpu).unwrap();
    model.insert(Q.to_string(), InputTensor::Candle(t));
    wide.set_inputs(ComponentKind::Model, model);
    let e = merge(&[&a, &wide], &[], &ws).unwrap_err().to_string();
    assert!(e.contains(Q) && e.contains("[3, 5]"), "{e}");
    assert!(merge(&[&a], &[], &ws).is_err());
    assert!(merge(&[&a], &[], &Recipe::default()).is_err());
}

/// `(up @ down)` in f64 over flattened factors: `up [rows, r]`, `down [r, cols]`.
pub(super) fn product(up: &[f32], down: &[f32], r: usize) -> Vec<f64> {
    let rows = up.len() / r;
    let cols = down.len() / r;
    let mut out = vec![0f64; rows * cols];
    for i in 0..rows {
        for k in 0..r {
            for j in 0..cols {
                out[i * cols + j] += up[i * r + k] as f64 * down[k * cols + j] as f64;
            }
        }
    }
    out
}

pub(super) fn seeded(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

pub(super) fn lora(name: &str, tensors: Vec<(String, Tensor)>) -> Lora {
    let map = tensors
        .into_iter()
        .map(|(k, t)| (k, InputTensor::Candle(t)))
        .collect();
    Lora::from_tensors(name, map).unwrap()
}

pub(super) fn close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

#[test]
fn loras_in_kohya_peft_and_comfyui_names_bake_with_their_strengths() {
    let a = tiny(Arch::Sd15, 1);
    let info = |key: &str| get(&a, ComponentKind::Model, key).info();
    let (q, conv) = (info(Q), info(CONV));
    let te = get(&a, ComponentKind::Clip, TE_Q).info();
    let r = 4;
    let t = |s: &[usize], seed| seeded(s, seed);
    let conv_in = conv.shape[1];
    let one = lora(
        "one.safetensors",
        vec![
            // kohya, diffusers-style name, linear, alpha 2 (scale 2/4).
            ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight".into(), t(&[q.shape[0], r], 1)),
            ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight".into(), t(&[r, q.shape[1]], 2)),
            ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha".into(), Tensor::new(2f32, &Device::Cpu).unwrap()),
            // kohya text encoder, no alpha (scale 1).
            ("lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight".into(), t(&[te.shape[0], r], 3)),
            ("lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight".into(), t(&[r, te.shape[1]], 4)),
            // LoCon with a Tucker mid on a 3x3 conv, in ComfyUI's names.
            ("diffusion_model.input_blocks.1.0.in_layers.2.lora_up.weight".into(), t(&[conv.shape[0], r, 1, 1], 5)),
            ("diffusion_model.input_blocks.1.0.in_layers.2.lora_down.weight".into(), t(&[r, conv_in, 1, 1], 6)),
            ("diffusion_model.input_blocks.1.0.in_layers.2.lora_mid.weight".into(), t(&[r, r, 3, 3], 7)),
        ],
    );
    // PEFT, on the same q as `one`: two LoRAs on one weight add up in order.
    let two = lora(
        "two.safetensors",
        vec![
            (
                "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight"
                    .into(),
                t(&[q.shape[0], r], 8),
            ),
            (
                "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"
                    .into(),
                t(&[r, q.shape[1]], 9),
            ),
            ("unet.no_such.layer.lora_A.weight".into(), t(&[r, 4], 10)),
            ("unet.no_such.layer.lora_B.weight".into(), t(&[4, r], 11)),
        ],
    );
    let bake = |l: &Lora, sm: f64, sc: f64| LoraBake {
        lora: l.clone(),
        strength_model: sm,
        strength_clip: sc,
    };
    let rec = Recipe {
        loras: vec![bake(&one, 0.8, 0.5), bake(&two, 1.2, 1.0)],
        ..Recipe::default()
    };
    let (out, report) = merge(&[&a], &[], &rec).unwrap();
    assert_eq!(report.loras[0].matched, 3);
    assert_eq!(
        (report.loras[1].matched, report.loras[1].not_applied.len()),
        (1, 1)
    );
    let m = |l: &Lora, stem: &str| l.modules[stem].clone();
    let cv = |t: &Option<InputTensor>| values(t.as_ref().unwrap());

    // q: W + f32(0.8·2/4)·(up1 @ down1) + f32(1.2)·(up2 @ down2).
    let m1 = m(
        &one,
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
    );
    let m2 = m(
        &two,
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    );
    let d1 = product(&cv(&m1.up), &cv(&m1.down), r);
    let d2 = product(&cv(&m2.up), &cv(&m2.down), r);
    let w = values(get(&a, ComponentKind::Model, Q));
    let (s1, s2) = ((0.8f64 * (2.0 / 4.0)) as f32 as f64, 1.2f32 as f64);
    let want: Vec<f64> = (0..w.len())
        .map(|i| w[i] as f64 + s1 * d1[i] + s2 * d2[i])
        .collect();
    close(&values(get(&out, ComponentKind::Model, Q)), &want, Q);

    // Text encoder at the clip strength, scale 1 without alpha.
    let mt = m(&one, "lora_te_text_model_encoder_layers_0_self_attn_q_proj");
    let dt = product(&cv(&mt.up), &cv(&mt.down), r);
    let w = values(get(&a, ComponentKind::Clip, TE_Q));
    let want: Vec<f64> = (0..w.len()).map(|i| w[i] as f64 + 0.5 * dt[i]).collect();
    close(&values(get(&out, ComponentKind::Clip, TE_Q)), &want, TE_Q);

    // LoCon mid: down'[b, i, y, x] = Σ_a down[a, i] · mid[b, a, y, x].
    let mc = m(&one, "diffusion_model.input_blocks.1.0.in_layers.2");
    let (down, mid) = (cv(&mc.down), cv(&mc.mid));
    let mut folded = vec![0f32; r * conv_in * 9];
    for bq in 0..r {
        for i in 0..conv_in {
            for yx in 0..9 {
                let s: f64 = (0..r)
                    .map(|aq| down[aq * conv_in + i] as f64 * mid[(bq * r + aq) * 9 + yx] as f64)
                    .sum();
                folded[(bq * conv_in + i) * 9 + yx] = s as f32;
            }
        }
    }
    let dc = product(&cv(&mc.up), &folded, r);
    let w = values(get(&a, ComponentKind::Model, CONV));
    let want: Vec<f64> = (0..w.len()).map(|i| w[i] as f64 + 0.8 * dc[i]).collect();
    close(&values(get(&out, ComponentKind::Model, CONV)), &want, CONV);

    // Strict refuses `two`'s unmatched module; a LoRA that matches nothing is refused outright.
    let strict = Recipe {
        strict: true,
        ..rec.clone()
    };
    let e = merge(&[&a], &[], &strict).unwrap_err().to_string();
    assert!(
        e.contains("two.safetensors") && e.contains("unet.no_such.layer"),
        "{e}"
    );
    let none = lora(
        "none.safetensors",
        vec![
            ("lora_unet_x.lora_up.weight".into(), t(&[4, r], 1)),
            ("lora_unet_x.lora_down.weight".into(), t(&[r, 4], 2)),
        ],
    );
    let e = merge(
        &[&a],
        &[],
        &Recipe {
            loras: vec![bake(&none, 1.0, 1.0)],
            ..Recipe::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("matches no tensor"), "{e}");

    // A checkpoint given as a LoRA: no LoRA key at all, named as such with the merge to use.
    let ckpt = lora(
        "b.safetensors",
        vec![(
            "model.diffusion_model.input_blocks.0.0.weight".into(),
            t(&[4, 4], 1),
        )],
    );
    let e = merge(
        &[&a],
        &[],
        &Recipe {
            loras: vec![bake(&ckpt, 1.0, 1.0)],
            ..Recipe::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("LoRA b.safetensors: the file holds no LoRA keys")
            && e.contains("`model.diffusion_model.input_blocks.0.0.weight`")
            && e.contains("looks like a checkpoint")
            && e.contains("merge A b.safetensors --ratio R")
            && !e.contains("another architecture"),
        "{e}"
    );
}

#[test]
fn loras_that_do_not_fit_or_are_another_form_are_refused() {
    let a = tiny(Arch::Sd15, 1);
    let q = get(&a, ComponentKind::Model, Q).info();
    let stem = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    let wrong = lora(
        "wrong.safetensors",
        vec![
            (
                format!("{stem}.lora_up.weight"),
                seeded(&[q.shape[0], 4], 1),
            ),
            (
                format!("{stem}.lora_down.weight"),
                seeded(&[4, q.shape[1] + 1], 2),
            ),
        ],
    );
    let rec = Recipe {
        loras: vec![LoraBake {
            lora: wrong,
            strength_model: 1.0,
            strength_clip: 1.0,
        }],
        ..Recipe::default()
    };
    let e = merge(&[&a], &[], &rec).unwrap_err().to_string();
    assert!(e.contains(Q) && e.contains("rows"), "{e}");
    let map = [(
        format!("{stem}.hada_w1_a"),
        InputTensor::Candle(seeded(&[4, 4], 1)),
    )]
    .into_iter()
    .collect();
    let e = Lora::from_tensors("loha.safetensors", map)
        .unwrap_err()
        .to_string();
    assert!(e.contains("LoHa") && e.contains("not supported"), "{e}");
    let map = [(
        format!("{stem}.lora_up.weight"),
        InputTensor::Candle(seeded(&[4, 4], 1)),
    )]
    .into_iter()
    .collect();
    let e = Lora::from_tensors("half.safetensors", map)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not both up and down"), "{e}");
}

#[test]
fn a_lora_on_diffusers_q_lands_on_the_rows_of_fluxs_fused_qkv() {
    let a = tiny(Arch::Flux, 1);
    let key = "double_blocks.0.img_attn.qkv.weight";
    let qkv = get(&a, ComponentKind::Model, key).info();
    let (h, cols) = (qkv.shape[0] / 3, qkv.shape[1]);
    let r = 2;
    let l = lora(
        "flux.safetensors",
        vec![
            (
                "transformer.transformer_blocks.0.attn.to_k.lora_A.weight".into(),
                seeded(&[r, cols], 1),
            ),
            (
                "transformer.transformer_blocks.0.attn.to_k.lora_B.weight".into(),
                seeded(&[h, r], 2),
            ),
        ],
    );
    let m = l.modules["transformer.transformer_blocks.0.attn.to_k"].clone();
    let rec = Recipe {
        loras: vec![LoraBake {
            lora: l,
            strength_model: 1.0,
            strength_clip: 1.0,
        }],
        ..Recipe::default()
    };
    let (out, _) = merge(&[&a], &[], &rec).unwrap();
    let w = values(get(&a, ComponentKind::Model, key));
    let got = values(get(&out, ComponentKind::Model, key));
    let d = product(
        &values(m.up.as_ref().unwrap()),
        &values(m.down.as_ref().unwrap()),
        r,
    );
    // k is the second third: rows h..2h change, the others are A's bit for bit.
    assert_eq!(bits(&got[..h * cols]), bits(&w[..h * cols]));
    assert_eq!(bits(&got[2 * h * cols..]), bits(&w[2 * h * cols..]));
    let want: Vec<f64> = (0..h * cols)
        .map(|i| w[h * cols + i] as f64 + d[i])
        .collect();
    close(&got[h * cols..2 * h * cols], &want, key);
}

#[test]
fn candles_ops_on_a_device_give_the_host_evaluators_bits() {
    let (a, b, c) = (
        tiny(Arch::Sd15, 1),
        tiny(Arch::Sd15, 2),
        tiny(Arch::Sd15, 3),
    );
    let q = get(&a, ComponentKind::Model, Q).info();
    let stem = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q";
    let l = lora(
        "l.safetensors",
        vec![
            (
                format!("{stem}.lora_up.weight"),
                seeded(&[q.shape[0], 3], 1),
            ),
            (
                format!("{stem}.lora_down.weight"),
                seeded(&[3, q.shape[1]], 2),
            ),
        ],
    );
    for op in [Operation::AddDifference { multiplier: 0.35 }] {
        let host = Recipe {
            loras: vec![LoraBake {
                lora: l.clone(),
                strength_model: 0.7,
                strength_clip: 1.0,
            }],
            ..recipe(op)
        };
        let device = Recipe {
            device: Some(Device::Cpu),
            ..host.clone()
        };
        let (h, _) = merge(&[&a, &b, &c], &[], &host).unwrap();
        let (d, _) = merge(&[&a, &b, &c], &[], &device).unwrap();
        for (key, t) in h.get(ComponentKind::Model).unwrap() {
            if key == Q {
                // The LoRA product's summation order is the matmul's on both; the merge is exact.
                close(
                    &values(t),
                    &values(get(&d, ComponentKind::Model, key))
                        .iter()
                        .map(|x| *x as f64)
                        .collect::<Vec<_>>(),
                    key,
                );
            } else {
                assert_eq!(
                    bits(&values(t)),
                    bits(&values(get(&d, ComponentKind::Model, key))),
                    "{key}"
                );
            }
        }
    }
}

#[test]
fn a_rank_zero_module_is_refused_not_a_panic() {
    let a = tiny(Arch::Sd15, 1);
    let conv = get(&a, ComponentKind::Model, CONV).info();
    let stem = "diffusion_model.input_blocks.1.0.in_layers.2";
    let zeros = |s: &[usize]| Tensor::zeros(s, DType::F32, &Device::Cpu).unwrap();
    // A LoCon whose rank is 0, with its Tucker `mid`: the old evaluator divided by the rank.
    let l = lora(
        "rank0.safetensors",
        vec![
            (
                format!("{stem}.lora_up.weight"),
                zeros(&[conv.shape[0], 0, 1, 1]),
            ),
            (
                format!("{stem}.lora_down.weight"),
                zeros(&[0, conv.shape[1], 1, 1]),
            ),
            (format!("{stem}.lora_mid.weight"), zeros(&[0, 0, 3, 3])),
        ],
    );
    let rec = Recipe {
        loras: vec![LoraBake {
            lora: l,
            strength_model: 1.0,
            strength_clip: 1.0,
        }],
        ..Recipe::default()
    };
    let e = merge(&[&a], &[], &rec).unwrap_err().to_string();
    assert!(e.contains("rank 0") && e.contains(stem), "{e}");
}
