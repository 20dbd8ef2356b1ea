//! The per-tensor choices against expectations written by hand from convert.py, llama.cpp
//! b3962's `llama_model_quantize_internal` and lcpp.patch (not from this module's tables).

use super::*;
use crate::model::dtype::Dtype;
use crate::plan::gguf_target::{decide, Placed};
use GgmlType::*;

/// `(key, source dtype, source shape, expected type, expected written shape)`.
type Case = (
    &'static str,
    Dtype,
    &'static [usize],
    GgmlType,
    &'static [usize],
);

/// Places `cases` (given in sorted key order, as both tools process them) and compares.
fn check(arch: Arch, target: &GgufTarget, cases: &[Case]) {
    let mut keys: Vec<&str> = cases.iter().map(|c| c.0).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        cases.iter().map(|c| c.0).collect::<Vec<_>>(),
        "cases in file order"
    );
    let mut q = Quantizer::new(target, arch);
    for (key, dtype, shape, ty, written) in cases {
        let Placed { ggml, shape, .. } = decide(arch, target.ty, &mut q, key, *dtype, shape);
        assert_eq!(
            (ggml, shape.as_slice()),
            (*ty, *written),
            "{arch:?} {} `{key}`",
            target.ty
        );
    }
}

const B: Dtype = Dtype::BF16;
const H: Dtype = Dtype::F16;

#[test]
fn flux_q4_k_m_bumps_fused_qkv_and_keeps_embeddings() {
    check(
        Arch::Flux,
        &GgufType::Q4_K_M.into(),
        &[
            (
                "double_blocks.0.img_attn.norm.key_norm.scale",
                B,
                &[128],
                F32,
                &[128],
            ),
            (
                "double_blocks.0.img_attn.proj.weight",
                B,
                &[3072, 3072],
                Q4_K,
                &[3072, 3072],
            ),
            (
                "double_blocks.0.img_attn.qkv.bias",
                B,
                &[9216],
                F32,
                &[9216],
            ),
            (
                "double_blocks.0.img_attn.qkv.weight",
                B,
                &[9216, 3072],
                Q5_K,
                &[9216, 3072],
            ),
            // Flux's MLP output is not on the patch's feed-forward list.
            (
                "double_blocks.0.img_mlp.2.weight",
                B,
                &[3072, 12288],
                Q4_K,
                &[3072, 12288],
            ),
            // Rows of 96: no whole super-block, F16 even from a BF16 file.
            ("double_blocks.0.x.weight", B, &[3072, 96], F16, &[3072, 96]),
            (
                "final_layer.linear.weight",
                B,
                &[64, 3072],
                BF16,
                &[64, 3072],
            ),
            ("img_in.weight", B, &[3072, 64], BF16, &[3072, 64]),
            // ggml drops the leading 1: two dimensions, quantized, written 2-D.
            (
                "single_blocks.0.extra.weight",
                H,
                &[1, 512, 512],
                Q4_K,
                &[512, 512],
            ),
            (
                "single_blocks.0.linear2.weight",
                B,
                &[3072, 15360],
                Q4_K,
                &[3072, 15360],
            ),
            // Small f32/bf16 tensors are F32 in convert.py's file, then quantized.
            (
                "single_blocks.0.small.weight",
                B,
                &[4, 256],
                Q4_K,
                &[4, 256],
            ),
            (
                "time_in.in_layer.weight",
                B,
                &[3072, 256],
                BF16,
                &[3072, 256],
            ),
        ],
    );
}

#[test]
fn flux_q8_0_is_one_type_and_falls_back_on_partial_blocks() {
    check(
        Arch::Flux,
        &GgufType::Q8_0.into(),
        &[
            ("a.qkv.weight", H, &[96, 64], Q8_0, &[96, 64]),
            ("b.weight", H, &[96, 40], F16, &[96, 40]),
            ("c.weight", Dtype::F32, &[96, 64], Q8_0, &[96, 64]),
            ("d.bias", Dtype::F32, &[96, 64], F16, &[96, 64]),
            ("guidance_in.out_layer.weight", H, &[64, 64], F16, &[64, 64]),
        ],
    );
}

#[test]
fn sdxl_q3_k_m_counts_attention_values_in_file_order() {
    check(
        Arch::Sdxl,
        &GgufType::Q3_K_M.into(),
        &[
            // 320·4·3·3 = 45·256: reshaped by convert.py, then on the never-quantize list.
            (
                "input_blocks.0.0.weight",
                H,
                &[320, 4, 3, 3],
                F16,
                &[45, 256],
            ),
            (
                "input_blocks.1.0.in_layers.0.weight",
                H,
                &[320],
                F16,
                &[320],
            ),
            // A 3×3 convolution reshaped to rows of 256: two dimensions, quantized.
            (
                "input_blocks.1.0.in_layers.2.weight",
                H,
                &[320, 320, 3, 3],
                Q3_K,
                &[3600, 256],
            ),
            (
                "input_blocks.1.1.proj_in.weight",
                H,
                &[320, 320],
                Q3_K,
                &[400, 256],
            ),
            (
                "input_blocks.1.1.transformer_blocks.0.attn1.to_v.weight",
                H,
                &[320, 320],
                Q5_K,
                &[400, 256],
            ),
            (
                "input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight",
                H,
                &[320, 2048],
                Q5_K,
                &[320, 2048],
            ),
            (
                "input_blocks.1.1.transformer_blocks.0.ff.net.2.weight",
                H,
                &[320, 1280],
                Q4_K,
                &[320, 1280],
            ),
            (
                "input_blocks.2.1.transformer_blocks.0.attn1.to_v.weight",
                H,
                &[320, 320],
                Q4_K,
                &[400, 256],
            ),
            ("label_emb.0.0.weight", H, &[1280, 2816], F16, &[1280, 2816]),
            ("out.2.weight", H, &[4, 320, 3, 3], F16, &[45, 256]),
            ("time_embed.0.weight", H, &[1280, 320], F16, &[1600, 256]),
        ],
    );
}

#[test]
fn sd1_q4_k_s_bumps_the_first_four_attention_values_and_feed_forward_outputs() {
    check(
        Arch::Sd15,
        &GgufType::Q4_K_S.into(),
        &[
            (
                "input_blocks.1.1.transformer_blocks.0.attn1.to_v.weight",
                H,
                &[320, 320],
                Q5_K,
                &[400, 256],
            ),
            (
                "input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight",
                H,
                &[320, 768],
                Q5_K,
                &[320, 768],
            ),
            (
                "input_blocks.1.1.transformer_blocks.0.ff.net.2.weight",
                H,
                &[320, 1280],
                Q5_K,
                &[320, 1280],
            ),
            (
                "input_blocks.2.1.transformer_blocks.0.attn1.to_v.weight",
                H,
                &[320, 320],
                Q5_K,
                &[400, 256],
            ),
            (
                "input_blocks.2.1.transformer_blocks.0.attn2.to_v.weight",
                H,
                &[320, 768],
                Q5_K,
                &[320, 768],
            ),
            (
                "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight",
                H,
                &[640, 640],
                Q4_K,
                &[1600, 256],
            ),
            (
                "input_blocks.4.1.transformer_blocks.0.attn1.to_v.weight",
                H,
                &[640, 640],
                Q4_K,
                &[1600, 256],
            ),
        ],
    );
}

#[test]
fn wan_keeps_modulation_and_patch_embedding_and_bumps_values_and_ffn() {
    let cases: [Case; 8] = [
        (
            "blocks.0.cross_attn.k.weight",
            B,
            &[1536, 1536],
            Q5_K,
            &[1536, 1536],
        ),
        (
            "blocks.0.ffn.2.weight",
            B,
            &[1536, 8960],
            Q6_K,
            &[1536, 8960],
        ),
        // Kept in F32 by convert.py (`keys_hiprec`), not a `weight`; its 3-D shape restored.
        ("blocks.0.modulation", B, &[1, 6, 1536], F32, &[1, 6, 1536]),
        ("blocks.0.self_attn.norm_q.weight", B, &[1536], F32, &[1536]),
        (
            "blocks.0.self_attn.v.weight",
            B,
            &[1536, 1536],
            Q6_K,
            &[1536, 1536],
        ),
        ("head.head.weight", B, &[64, 1536], BF16, &[64, 1536]),
        // 5-D: set aside by convert.py, added back in F32 by fix_5d_tensors.py.
        (
            "patch_embedding.weight",
            B,
            &[1536, 16, 1, 2, 2],
            F32,
            &[1536, 16, 1, 2, 2],
        ),
        (
            "text_embedding.0.weight",
            B,
            &[1536, 4096],
            BF16,
            &[1536, 4096],
        ),
    ];
    check(Arch::Wan21, &GgufType::Q5_K_M.into(), &cases);
    let legacy: Vec<Case> = cases
        .iter()
        .map(|c| match c.0 {
            "blocks.0.cross_attn.k.weight" | "blocks.0.self_attn.v.weight" => {
                (c.0, c.1, c.2, Q4_0, c.4)
            }
            "blocks.0.ffn.2.weight" => (c.0, c.1, c.2, Q4_1, c.4),
            _ => *c,
        })
        .collect();
    check(Arch::Wan21, &GgufType::Q4_0.into(), &legacy);
}

#[test]
fn include_and_exclude_move_tensors_between_the_type_and_high_precision() {
    let target = GgufTarget::new(
        GgufType::Q8_0,
        &["^img_in\\.".into(), "bias$".into()],
        &["qkv".into(), "img_in\\.weight".into()],
    )
    .unwrap();
    check(
        Arch::Flux,
        &target,
        &[
            ("a.bias", B, &[3072], Q8_0, &[3072]),
            ("a.odd.bias", B, &[3070], F32, &[3070]),
            ("a.qkv.weight", B, &[96, 64], BF16, &[96, 64]),
            ("img_in.bias", B, &[3072], Q8_0, &[3072]),
            ("img_in.weight", B, &[3072, 64], BF16, &[3072, 64]),
            ("txt_in.weight", B, &[3072, 64], BF16, &[3072, 64]),
        ],
    );
    let e = GgufTarget::new(GgufType::Q4_0, &["(".into()], &[]).unwrap_err();
    assert!(e.to_string().contains("--gguf-include `(`"), "{e}");
    let e = GgufTarget::new(GgufType::BF16, &[], &["x".into()]).unwrap_err();
    assert!(e.to_string().contains("quantizes nothing"), "{e}");
}

#[test]
fn ggml_dims_drop_leading_ones_only() {
    assert_eq!(ggml_dims(&[1, 1, 768]), &[768]);
    assert_eq!(ggml_dims(&[3, 1, 5]), &[3, 1, 5]);
    assert_eq!(ggml_dims(&[1]), &[1]);
    assert_eq!(
        written_shape(Arch::Sd3, "pos_embed", &[1, 9216, 1536]),
        vec![1, 9216, 1536]
    );
    assert_eq!(
        written_shape(Arch::Flux, "pos_embed", &[1, 9216, 1536]),
        vec![9216, 1536]
    );
}
