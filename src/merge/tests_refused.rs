//! LoRA forms this tool does not apply: each refused by name (naming the key), or left out and
//! reported as ComfyUI leaves it out.

use candle_core::{Device, Tensor};

use super::tests::{bits, get, lora, seeded, tiny, values};
use super::tests_forms::{bake, scalar};
use super::*;

#[test]
fn forms_not_applied_here_are_refused_by_name() {
    let a = tiny(Arch::Sd15, 1);
    let stem = "lora_unet_input_blocks_1_1_proj_in";
    let one = |suffix: &str, shape: &[usize]| {
        let map = [(
            format!("{stem}{suffix}"),
            InputTensor::Candle(seeded(shape, 1)),
        )]
        .into_iter()
        .collect();
        Lora::from_tensors("x.safetensors", map)
            .unwrap_err()
            .to_string()
    };
    for (suffix, shape, needle) in [
        (".dora_scale", vec![4, 1], "DoRA"),
        (".hada_t1", vec![2, 2, 3, 3], "LoHa"),
        (".lokr_w1", vec![2, 2], "LoKr"),
        (".lokr_w2_a", vec![2, 2], "LoKr"),
        (".a1.weight", vec![2, 2], "GLoRA"),
        (".oft_blocks", vec![2, 2, 2], "OFT"),
        (".oft_blocks", vec![2, 2, 2, 2], "BOFT"),
        (".rescale", vec![4, 1], "OFT or BOFT"),
    ] {
        let e = one(suffix, &shape);
        assert!(
            e.contains(needle) && e.contains(&format!("{stem}{suffix}")),
            "{suffix}: {e}"
        );
    }
    assert!(one(".dora_scale", &[4, 1]).contains("not applied yet"));

    let q = get(&a, ComponentKind::Model, "input_blocks.1.1.proj_in.weight")
        .info()
        .shape;
    let file = |entries: Vec<(&str, Tensor)>| {
        let map = entries
            .into_iter()
            .map(|(k, t)| (k.to_string(), InputTensor::Candle(t)))
            .collect();
        Lora::from_tensors("y.safetensors", map)
    };
    let up = format!("{stem}.lora_up.weight");
    let down = format!("{stem}.lora_down.weight");
    // Two forms on one weight: ComfyUI keeps the last one read; refused as ambiguous.
    let e = file(vec![
        (&up, seeded(&[q[0], 2], 1)),
        (&down, seeded(&[2, q[1]], 2)),
        (&format!("{stem}.diff"), seeded(&q, 3)),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("patches its weight twice") && e.contains(".diff"),
        "{e}"
    );
    // A mid without its factors.
    let e = file(vec![(
        &format!("{stem}.lora_mid.weight"),
        seeded(&[2, 2, 3, 3], 1),
    )])
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("lora_mid.weight") && e.contains("no up and down"),
        "{e}"
    );
    // A reshape that is not a list of sizes.
    let e = file(vec![
        (&up, seeded(&[q[0], 2], 1)),
        (&down, seeded(&[2, q[1]], 2)),
        (&format!("{stem}.reshape_weight"), scalar(1.5)),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("reshape_weight") && e.contains("not a list of sizes"),
        "{e}"
    );

    let refused = |entries: Vec<(String, Tensor)>| {
        let l = lora("z.safetensors", entries);
        merge(&[&a], &[], &bake(&l, 1.0, 1.0))
            .unwrap_err()
            .to_string()
    };
    // Two modules on one weight (kohya's and ComfyUI's name of the same tensor).
    let e = refused(vec![
        (up.clone(), seeded(&[q[0], 2], 1)),
        (down.clone(), seeded(&[2, q[1]], 2)),
        (
            "diffusion_model.input_blocks.1.1.proj_in.diff".into(),
            seeded(&q, 3),
        ),
    ]);
    assert!(
        e.contains("both patch `input_blocks.1.1.proj_in.weight`"),
        "{e}"
    );
    // A difference of another shape: ComfyUI skips it ("WEIGHT NOT MERGED"), this tool refuses.
    let e = refused(vec![(format!("{stem}.diff"), seeded(&[q[0] + 1, q[1]], 3))]);
    assert!(
        e.contains("WEIGHT NOT MERGED") && e.contains(".diff"),
        "{e}"
    );
    let e = refused(vec![(format!("{stem}.set_weight"), seeded(&[q[1]], 3))]);
    assert!(e.contains("set_weight") && e.contains("refuses"), "{e}");
    // A reshape to a smaller weight.
    let e = refused(vec![
        (up.clone(), seeded(&[q[0], 2], 1)),
        (down.clone(), seeded(&[2, q[1]], 2)),
        (
            format!("{stem}.reshape_weight"),
            Tensor::new(&[q[0] as i64, 1], &Device::Cpu).unwrap(),
        ),
    ]);
    assert!(
        e.contains("reshape_weight") && e.contains("zero-padded"),
        "{e}"
    );

    // A bias difference of part of a fused weight: ComfyUI does not patch it; reported.
    let flux = tiny(Arch::Flux, 1);
    let h = get(&flux, ComponentKind::Model, "img_in.weight")
        .info()
        .shape[0];
    let l = lora(
        "fused.safetensors",
        vec![
            (
                "transformer.transformer_blocks.0.attn.to_k.diff".into(),
                seeded(&[h, h], 1),
            ),
            (
                "transformer.transformer_blocks.0.attn.to_k.diff_b".into(),
                seeded(&[h], 2),
            ),
        ],
    );
    let (out, report) = merge(&[&flux], &[], &bake(&l, 1.0, 1.0)).unwrap();
    let n = &report.loras[0].not_applied;
    assert!(
        n.len() == 1 && n[0].contains("to_k.diff_b") && n[0].contains("fused"),
        "{n:?}"
    );
    let key = "double_blocks.0.img_attn.qkv.weight";
    let (w, got) = (
        values(get(&flux, ComponentKind::Model, key)),
        values(get(&out, ComponentKind::Model, key)),
    );
    let d = values(&InputTensor::Candle(seeded(&[h, h], 1)));
    let want: Vec<f32> = (0..h * h).map(|i| w[h * h + i] + d[i]).collect();
    assert_eq!(bits(&got[h * h..2 * h * h]), bits(&want), "k's rows");
    assert_eq!(bits(&got[..h * h]), bits(&w[..h * h]), "q's rows");
    assert!(matches!(
        get(
            &out,
            ComponentKind::Model,
            "double_blocks.0.img_attn.qkv.bias"
        ),
        InputTensor::Candle(_)
    ));
}
