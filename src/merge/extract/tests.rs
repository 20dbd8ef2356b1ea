use super::*;
use crate::merge::{merge, Lora, LoraBake, Recipe};
use crate::model::InputMap;

#[test]
fn factors_are_clamped_at_their_joint_quantile() {
    // 100 entries: the 0.99 quantile of -49..=50 (as the signed values) is 49.01.
    let mut up: Vec<f32> = (-49..=0).map(|v| v as f32).collect();
    let mut down: Vec<f32> = (1..=50).map(|v| v as f32).collect();
    clamp_at_quantile(&mut up, &mut down);
    assert_eq!(up[0], -49.0, "within -h");
    assert!((down[49] - 49.01).abs() < 1e-4 && (down[48] - 49.0).abs() < 1e-6);
    let mut up = vec![-100.0f32, 1.0];
    let mut down = vec![0.5f32; 98];
    clamp_at_quantile(&mut up, &mut down);
    // h = 0.99 quantile = 0.5 + 0.01·(1 − 0.5): the outlier -100 is clamped to -h.
    assert!(
        (up[0] + 0.505).abs() < 1e-6 && (up[1] - 0.505).abs() < 1e-6,
        "{up:?}"
    );
}

#[test]
fn quantile_interpolates_as_torch() {
    // torch.quantile(torch.tensor([3., 1., 4., 1., 5.]), 0.99) = 4.96: position 3.96 between 4 and 5.
    let mut v = vec![3.0f32, 1.0, 4.0, 1.0, 5.0];
    assert!((quantile(&mut v, 0.99) - 4.96).abs() < 1e-6);
    let mut v = vec![-2.0f32, 7.0];
    assert!((quantile(&mut v, 0.5) - 2.5).abs() < 1e-6);
    assert_eq!(quantile(&mut [9.0f32], 0.99), 9.0);
    assert_eq!(quantile(&mut [], 0.99), 0.0);
}

fn t(values: Vec<f32>, shape: &[usize]) -> InputTensor {
    InputTensor::Candle(Tensor::from_vec(values, shape, &Device::Cpu).unwrap())
}

/// A tiny SD1.5 and a tuned copy whose difference is known: rank-2 products on a linear weight
/// and a 3×3 conv, a rank-1 one on a 1×1 conv, a changed norm weight and bias.
fn pair() -> (Components, Components, BTreeMap<String, Vec<f32>>) {
    let base = crate::synthetic::build(
        &crate::synthetic::SyntheticOptions::new(Arch::Sd15).with_max_dim(16),
        &Device::Cpu,
    )
    .unwrap();
    let noise = |n: usize, seed: u32| -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    };
    let low_rank = |rows: usize, cols: usize, rank: usize, seed: u32| -> Vec<f32> {
        let (a, b) = (noise(rows * rank, seed), noise(rank * cols, seed + 7));
        (0..rows * cols)
            .map(|i| {
                let (r, c) = (i / cols, i % cols);
                (0..rank)
                    .map(|k| a[r * rank + k] * b[k * cols + c])
                    .sum::<f32>()
                    * 0.1
            })
            .collect()
    };
    let keys: [(&str, usize); 5] = [
        ("input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", 2),
        ("input_blocks.1.0.in_layers.2.weight", 2),
        ("input_blocks.1.1.proj_in.weight", 1),
        ("input_blocks.1.0.in_layers.0.weight", 0),
        (
            "input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.bias",
            0,
        ),
    ];
    let mut tuned = base.clone();
    let mut model = tuned.take(ComponentKind::Model).unwrap();
    let mut deltas = BTreeMap::new();
    for (i, (key, rank)) in keys.into_iter().enumerate() {
        let b = &model[key];
        let shape = b.info().shape;
        let n: usize = shape.iter().product();
        let bv = f32s(&crate::offload::host_bytes(b).unwrap());
        let d = match rank {
            0 => noise(n, 99).iter().map(|v| v * 0.01).collect(),
            r => low_rank(shape[0], n / shape[0], r, i as u32 * 13),
        };
        let tv: Vec<f32> = bv.iter().zip(&d).map(|(x, y)| x + y).collect();
        model.insert(key.to_string(), t(tv, &shape));
        deltas.insert(key.to_string(), d);
    }
    tuned.set_inputs(ComponentKind::Model, model);
    (tuned, base, deltas)
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

const Q: &str = "input_blocks.1.1.transformer_blocks.0.attn1.to_q";
const CONV: &str = "input_blocks.1.0.in_layers.2";
const PW: &str = "input_blocks.1.1.proj_in";

#[test]
fn factors_have_comfyuis_names_shapes_and_dtype() {
    let (tuned, base, deltas) = pair();
    let opts = ExtractOptions {
        rank: 4,
        ..ExtractOptions::default()
    };
    let (lora, report) = extract_lora(&tuned, &base, &opts).unwrap();
    let dims = |k: &str| {
        base.tensor(ComponentKind::Model, &format!("{k}.weight"))
            .unwrap()
            .info()
            .shape
    };
    let shape = |k: &str| lora[k].dims().to_vec();
    // Rank capped by the matrix; convs as [out, r, 1, 1] and [r, in, kh, kw].
    for (stem, conv) in [(Q, false), (CONV, true), (PW, true)] {
        let d = dims(stem);
        let r = 4.min(d[0]).min(d[1]);
        let mut up = vec![d[0], r];
        let mut down = vec![r];
        down.extend_from_slice(&d[1..]);
        if conv {
            up.extend([1, 1]);
        }
        assert_eq!(
            shape(&format!("diffusion_model.{stem}.lora_up.weight")),
            up,
            "{stem}"
        );
        assert_eq!(
            shape(&format!("diffusion_model.{stem}.lora_down.weight")),
            down,
            "{stem}"
        );
    }
    assert!(lora.values().all(|t| t.dtype() == DType::F16));
    // 1-D weight and bias differences, whole, as f16 of the f32 difference.
    for (key, name) in [
        (
            "input_blocks.1.0.in_layers.0.weight",
            "input_blocks.1.0.in_layers.0.diff",
        ),
        (
            "input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.bias",
            "input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.diff_b",
        ),
    ] {
        let got = values(&lora[&format!("diffusion_model.{name}")]);
        // The difference is tuned − base in f32, so it may differ from the planted one by the
        // rounding of `base + delta`.
        for (g, w) in got.iter().zip(&deltas[key]) {
            assert!(
                (g - w).abs() <= 1e-3 * w.abs().max(1e-2),
                "{key}: {g} vs {w}"
            );
        }
    }
    let model = base.get(ComponentKind::Model).unwrap();
    let matrices = model
        .iter()
        .filter(|(k, t)| k.ends_with(".weight") && t.info().shape.len() >= 2)
        .count();
    let one_d = model
        .iter()
        .filter(|(k, t)| k.ends_with(".weight") && t.info().shape.len() < 2)
        .count();
    let biases = model.keys().filter(|k| k.ends_with(".bias")).count();
    assert_eq!((report.factored, report.whole), (matrices, one_d + biases));
    // Rank 4 holds these rank ≤ 2 differences exactly (before the clamp and f16).
    for (key, e) in &report.errors {
        assert!(*e < 1e-5, "{key}: {e}");
    }
    // Without bias_diff, only the factors.
    let no_bias = ExtractOptions {
        bias_diff: false,
        ..opts.clone()
    };
    let (lora, _) = extract_lora(&tuned, &base, &no_bias).unwrap();
    assert_eq!(lora.len(), 2 * matrices);
    // full_diff: every weight whole.
    let full = ExtractOptions {
        lora_type: LoraType::FullDiff,
        ..opts
    };
    let (lora, _) = extract_lora(&tuned, &base, &full).unwrap();
    assert_eq!(
        shape_of(&lora, &format!("diffusion_model.{CONV}.diff")),
        dims(CONV)
    );
    assert!(lora
        .keys()
        .all(|k| k.ends_with(".diff") || k.ends_with(".diff_b")));
}

fn shape_of(m: &TensorMap, k: &str) -> Vec<usize> {
    m[k].dims().to_vec()
}

/// Bakes `lora` into `base` with `merge`, and checks every tensor of the planted differences:
/// it must be `base + up·down` of the written f16 factors (or `base + diff`), computed here.
fn bakes_back(base: &Components, lora: TensorMap, stems: &[(&str, String)]) {
    let factors = lora.clone();
    let lora: InputMap = lora
        .into_iter()
        .map(|(k, v)| (k, InputTensor::Candle(v)))
        .collect();
    let recipe = Recipe {
        loras: vec![LoraBake {
            lora: Lora::from_tensors("extracted", lora).unwrap(),
            strength_model: 1.0,
            strength_clip: 1.0,
        }],
        strict: true,
        ..Recipe::default()
    };
    let (baked, _) = merge(&[base], &[], &recipe).unwrap();
    for (key, name) in stems {
        let read = |c: &Components| {
            f32s(&crate::offload::host_bytes(c.tensor(ComponentKind::Model, key).unwrap()).unwrap())
        };
        let (got, b) = (read(&baked), read(base));
        let up = values(&factors[&format!("{name}.lora_up.weight")]);
        let down = values(&factors[&format!("{name}.lora_down.weight")]);
        let rows = factors[&format!("{name}.lora_up.weight")].dims()[0];
        let rank = up.len() / rows;
        let cols = down.len() / rank;
        for r in 0..rows {
            for c in 0..cols {
                let p: f32 = (0..rank)
                    .map(|i| up[r * rank + i] * down[i * cols + c])
                    .sum();
                let (g, w) = (got[r * cols + c], b[r * cols + c] + p);
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{key}[{r},{c}]: {g} vs {w}"
                );
            }
        }
    }
}

#[test]
fn the_extracted_lora_bakes_back_into_the_tuned_model() {
    let (tuned, base, deltas) = pair();
    let opts = ExtractOptions {
        rank: 4,
        ..ExtractOptions::default()
    };
    let (lora, report) = extract_lora(&tuned, &base, &opts).unwrap();
    // Before ComfyUI's clamp and f16, rank 4 holds these differences exactly.
    for (key, e) in &report.errors {
        assert!(*e < 1e-5, "{key}: {e}");
    }
    let stems: Vec<(&str, String)> = deltas
        .keys()
        .filter(|k| {
            [Q, CONV, PW]
                .iter()
                .any(|s| k.as_str() == format!("{s}.weight"))
        })
        .map(|k| {
            let stem = k.strip_suffix(".weight").unwrap();
            (k.as_str(), format!("diffusion_model.{stem}"))
        })
        .collect();
    bakes_back(&base, lora, &stems);
}

#[test]
fn kohya_names_bake_back_too() {
    let (tuned, base, _) = pair();
    let opts = ExtractOptions {
        rank: 2,
        format: KeyFormat::Kohya,
        ..ExtractOptions::default()
    };
    let (lora, _) = extract_lora(&tuned, &base, &opts).unwrap();
    let up = lora
        .keys()
        .find(|k| k.starts_with("lora_unet_") && k.ends_with(".lora_up.weight"))
        .unwrap();
    assert!(lora.contains_key(&up.replace(".lora_up.weight", ".alpha")));
    let stems = [(
        "input_blocks.1.1.proj_in.weight",
        "lora_unet_down_blocks_0_attentions_0_proj_in".to_string(),
    )];
    bakes_back(&base, lora, &stems);
}

#[test]
fn kohya_names_follow_diffusers_for_unets() {
    let arch = Arch::Sd15;
    let c = crate::synthetic::build(
        &crate::synthetic::SyntheticOptions::new(arch).tiny(),
        &Device::Cpu,
    )
    .unwrap();
    let names = Names::new(&c, KeyFormat::Kohya).unwrap();
    assert_eq!(
        names.stem(ComponentKind::Model, "input_blocks.1.1.proj_in"),
        "lora_unet_down_blocks_0_attentions_0_proj_in"
    );
    assert_eq!(
        names.stem(
            ComponentKind::Clip,
            "clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj"
        ),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    );
}

#[test]
fn bad_requests_are_refused() {
    let (tuned, base, _) = pair();
    let err = extract_lora(
        &tuned,
        &base,
        &ExtractOptions {
            rank: 0,
            ..ExtractOptions::default()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("rank 0 is outside 1..=4096"),
        "{err}"
    );
    let mut short = base.clone();
    let mut m = short.take(ComponentKind::Model).unwrap();
    m.remove(&format!("{CONV}.weight"));
    short.set_inputs(ComponentKind::Model, m);
    let err = extract_lora(&tuned, &short, &ExtractOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains(&format!("`{CONV}.weight`")),
        "{err}"
    );
}

/// A weight with a zero dimension has nothing to factor: it is left out, the rest extracted.
#[test]
fn an_empty_weight_is_left_out() {
    let (mut tuned, mut base, _) = pair();
    for c in [&mut tuned, &mut base] {
        let mut m = c.take(ComponentKind::Model).unwrap();
        m.insert("empty.weight".into(), t(Vec::new(), &[0, 4]));
        c.set_inputs(ComponentKind::Model, m);
    }
    let (lora, report) = extract_lora(&tuned, &base, &ExtractOptions::default()).unwrap();
    assert!(
        !lora.keys().any(|k| k.contains("empty")),
        "{:?}",
        lora.keys()
    );
    assert!(report.factored > 0);
}
