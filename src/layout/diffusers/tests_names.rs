//! Literal spot checks of the mapping against known diffusers and transformers names: UNet,
//! VAE, text encoders, and the fused and swapped tensors of MMDiT and Flux.

use std::collections::BTreeMap;
use std::ops::Range;

use super::tests::keys_of;
use super::*;
use crate::model::{Arch, TensorInfo};
use crate::synthetic;

type Keys = BTreeMap<String, TensorInfo>;

/// The assembly of diffusers key `d` in the plans of `arch` (full size).
fn diffusers(arch: Arch, folder: Folder, d: &str) -> Assembly {
    let plans = from_comfy(arch, &synthetic::shapes(arch)).unwrap();
    let plan = plans.into_iter().find(|p| p.folder == folder).unwrap();
    plan.tensors
        .into_iter()
        .find(|a| a.key == d)
        .unwrap_or_else(|| panic!("no {d}"))
}

fn whole(key: &str, n: usize) -> Vec<Part> {
    vec![Part {
        key: key.into(),
        elements: 0..n,
    }]
}

/// `d` is a copy of in-memory `c`, whole, with shape `shape`.
fn assert_copy(arch: Arch, folder: Folder, d: &str, c: &str, shape: &[usize]) {
    let a = diffusers(arch, folder, d);
    assert_eq!(a.shape, shape, "{d}");
    assert_eq!(a.parts, whole(c, shape.iter().product()), "{d}");
}

#[test]
fn unet_names_match_known_diffusers_names() {
    use Arch::*;
    let u = Folder::Unet;
    assert_copy(
        Sd15,
        u,
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        &[320, 320],
    );
    assert_copy(
        Sd15,
        u,
        "up_blocks.1.upsamplers.0.conv.weight",
        "output_blocks.5.2.conv.weight",
        &[1280, 1280, 3, 3],
    );
    assert_copy(
        Sd15,
        u,
        "up_blocks.0.upsamplers.0.conv.bias",
        "output_blocks.2.1.conv.bias",
        &[1280],
    );
    assert_copy(
        Sd15,
        u,
        "mid_block.resnets.1.conv2.weight",
        "middle_block.2.out_layers.3.weight",
        &[1280, 1280, 3, 3],
    );
    assert_copy(
        Sd15,
        u,
        "down_blocks.1.downsamplers.0.conv.weight",
        "input_blocks.6.0.op.weight",
        &[640, 640, 3, 3],
    );
    assert_copy(
        Sd15,
        u,
        "down_blocks.1.resnets.0.conv_shortcut.weight",
        "input_blocks.4.0.skip_connection.weight",
        &[640, 320, 1, 1],
    );
    assert_copy(
        Sd15,
        u,
        "down_blocks.3.resnets.1.time_emb_proj.weight",
        "input_blocks.11.0.emb_layers.1.weight",
        &[1280, 1280],
    );
    assert_copy(
        Sd15,
        u,
        "up_blocks.3.attentions.2.proj_out.weight",
        "output_blocks.11.1.proj_out.weight",
        &[320, 320, 1, 1],
    );
    assert_copy(
        Sd15,
        u,
        "time_embedding.linear_1.weight",
        "time_embed.0.weight",
        &[1280, 320],
    );
    assert_copy(Sd15, u, "conv_norm_out.bias", "out.0.bias", &[320]);
    assert_copy(
        Sd2,
        u,
        "down_blocks.2.attentions.1.proj_in.weight",
        "input_blocks.8.1.proj_in.weight",
        &[1280, 1280],
    );
    assert_copy(
        Sdxl,
        u,
        "add_embedding.linear_1.weight",
        "label_emb.0.0.weight",
        &[1280, 2816],
    );
    assert_copy(
        Sdxl,
        u,
        "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2.weight",
        "input_blocks.8.1.transformer_blocks.9.ff.net.2.weight",
        &[1280, 5120],
    );
    assert_copy(
        Sdxl,
        u,
        "up_blocks.0.attentions.2.transformer_blocks.0.attn2.to_k.weight",
        "output_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
        &[1280, 2048],
    );
    assert_copy(
        Sdxl,
        u,
        "up_blocks.0.upsamplers.0.conv.weight",
        "output_blocks.2.2.conv.weight",
        &[1280, 1280, 3, 3],
    );
    assert_copy(
        Sdxl,
        u,
        "up_blocks.1.upsamplers.0.conv.weight",
        "output_blocks.5.2.conv.weight",
        &[640, 640, 3, 3],
    );
    assert_copy(
        Sdxl,
        u,
        "mid_block.attentions.0.transformer_blocks.9.norm3.bias",
        "middle_block.1.transformer_blocks.9.norm3.bias",
        &[1280],
    );
    assert_copy(
        Sdxl,
        u,
        "up_blocks.2.resnets.2.conv_shortcut.weight",
        "output_blocks.8.0.skip_connection.weight",
        &[320, 640, 1, 1],
    );
    assert_copy(
        SdxlRefiner,
        u,
        "down_blocks.3.resnets.1.conv1.weight",
        "input_blocks.11.0.in_layers.2.weight",
        &[1536, 1536, 3, 3],
    );
    assert_copy(
        SdxlRefiner,
        u,
        "up_blocks.0.upsamplers.0.conv.weight",
        "output_blocks.2.1.conv.weight",
        &[1536, 1536, 3, 3],
    );
    assert_copy(
        SdxlRefiner,
        u,
        "up_blocks.1.attentions.0.proj_in.weight",
        "output_blocks.3.1.proj_in.weight",
        &[1536, 1536],
    );
}

#[test]
fn vae_names_match_known_diffusers_names() {
    use Arch::*;
    let v = Folder::Vae;
    // Linear in diffusers, 1×1 convolution in LDM: the same elements.
    assert_copy(
        Sd15,
        v,
        "encoder.mid_block.attentions.0.to_q.weight",
        "encoder.mid.attn_1.q.weight",
        &[512, 512],
    );
    assert_copy(
        Sd15,
        v,
        "decoder.mid_block.attentions.0.to_out.0.weight",
        "decoder.mid.attn_1.proj_out.weight",
        &[512, 512],
    );
    assert_copy(
        Sd15,
        v,
        "encoder.mid_block.attentions.0.group_norm.weight",
        "encoder.mid.attn_1.norm.weight",
        &[512],
    );
    assert_copy(
        Sd15,
        v,
        "decoder.up_blocks.0.resnets.2.conv2.weight",
        "decoder.up.3.block.2.conv2.weight",
        &[512, 512, 3, 3],
    );
    assert_copy(
        Sd15,
        v,
        "decoder.up_blocks.3.resnets.0.conv_shortcut.weight",
        "decoder.up.0.block.0.nin_shortcut.weight",
        &[128, 256, 1, 1],
    );
    assert_copy(
        Sd15,
        v,
        "decoder.up_blocks.1.upsamplers.0.conv.weight",
        "decoder.up.2.upsample.conv.weight",
        &[512, 512, 3, 3],
    );
    assert_copy(
        Sd15,
        v,
        "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
        "encoder.down.1.block.0.nin_shortcut.weight",
        &[256, 128, 1, 1],
    );
    assert_copy(
        Sd15,
        v,
        "encoder.conv_norm_out.weight",
        "encoder.norm_out.weight",
        &[512],
    );
    assert_copy(
        Sd15,
        v,
        "encoder.mid_block.resnets.1.norm1.bias",
        "encoder.mid.block_2.norm1.bias",
        &[512],
    );
    assert_copy(
        Sd15,
        v,
        "quant_conv.weight",
        "quant_conv.weight",
        &[8, 8, 1, 1],
    );
    assert_copy(
        Flux,
        v,
        "decoder.conv_in.weight",
        "decoder.conv_in.weight",
        &[512, 16, 3, 3],
    );

    // The other way, and diffusers' pre-0.14 attention names on input.
    let mut keys = Keys::new();
    keys.insert(
        "decoder.up_blocks.0.resnets.0.conv1.bias".into(),
        TensorInfo::new(vec![8], Dtype::F32),
    );
    for k in [
        "encoder.conv_in.weight",
        "encoder.mid_block.attentions.0.query.weight",
        "encoder.mid_block.attentions.0.proj_attn.weight",
    ] {
        keys.insert(k.into(), TensorInfo::new(vec![8, 8], Dtype::F32));
    }
    keys.insert(
        "encoder.mid_block.attentions.0.query.bias".into(),
        TensorInfo::new(vec![8], Dtype::F32),
    );
    let tc = to_comfy(ModelClass::Vae, None, &keys).unwrap();
    let got: BTreeMap<&str, &[usize]> = tc
        .tensors
        .iter()
        .map(|a| (a.key.as_str(), &a.shape[..]))
        .collect();
    assert_eq!(got["encoder.mid.attn_1.q.weight"], [8, 8, 1, 1]);
    assert_eq!(got["encoder.mid.attn_1.q.bias"], [8]);
    assert_eq!(got["encoder.mid.attn_1.proj_out.weight"], [8, 8, 1, 1]);
    assert_eq!(got["encoder.conv_in.weight"], [8, 8]);
    assert_eq!(got["decoder.up.0.block.0.conv1.bias"], [8]);
    // Old and new name of one tensor together are an error, not a silent pick.
    keys.insert(
        "encoder.mid_block.attentions.0.to_q.weight".into(),
        TensorInfo::new(vec![8, 8], Dtype::F32),
    );
    let err = to_comfy(ModelClass::Vae, None, &keys)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("encoder.mid.attn_1.q.weight") && err.contains("both"),
        "{err}"
    );
}

#[test]
fn text_encoder_names_match_known_transformers_names() {
    use Arch::*;
    assert_copy(
        Sd15,
        Folder::TextEncoder,
        "text_model.encoder.layers.11.mlp.fc2.weight",
        "clip_l.transformer.text_model.encoder.layers.11.mlp.fc2.weight",
        &[768, 3072],
    );
    assert_copy(
        Sd15,
        Folder::TextEncoder,
        "text_model.embeddings.position_embedding.weight",
        "clip_l.transformer.text_model.embeddings.position_embedding.weight",
        &[77, 768],
    );
    assert_copy(
        Sd2,
        Folder::TextEncoder,
        "text_model.encoder.layers.22.self_attn.out_proj.bias",
        "clip_h.transformer.text_model.encoder.layers.22.self_attn.out_proj.bias",
        &[1024],
    );
    assert_copy(
        Sdxl,
        Folder::TextEncoder2,
        "text_projection.weight",
        "clip_g.transformer.text_projection.weight",
        &[1280, 1280],
    );
    assert_copy(
        Sd3,
        Folder::TextEncoder,
        "text_projection.weight",
        "clip_l.transformer.text_projection.weight",
        &[768, 768],
    );
    assert_copy(
        Sd3,
        Folder::TextEncoder3,
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        &[32, 64],
    );
    assert_copy(
        Flux,
        Folder::TextEncoder2,
        "encoder.block.23.layer.1.DenseReluDense.wi_1.weight",
        "t5xxl.transformer.encoder.block.23.layer.1.DenseReluDense.wi_1.weight",
        &[10240, 4096],
    );
    assert_copy(
        Flux,
        Folder::TextEncoder2,
        "shared.weight",
        "t5xxl.transformer.shared.weight",
        &[32128, 4096],
    );

    // The buffers and tied copies some files carry are dropped and reported; ComfyUI's extras created.
    let clip = |proj: bool| {
        let mut k = Keys::new();
        k.insert(
            "text_model.embeddings.token_embedding.weight".into(),
            TensorInfo::new(vec![10, 4], Dtype::BF16),
        );
        k.insert(
            "text_model.final_layer_norm.weight".into(),
            TensorInfo::new(vec![4], Dtype::BF16),
        );
        k.insert(
            "text_model.embeddings.position_ids".into(),
            TensorInfo::new(vec![1, 77], Dtype::I64),
        );
        if proj {
            k.insert(
                "text_projection.weight".into(),
                TensorInfo::new(vec![4, 4], Dtype::BF16),
            );
        }
        k
    };
    let tc = to_comfy(
        identify(&clip(false)).unwrap(),
        Some("clip_l"),
        &clip(false),
    )
    .unwrap();
    assert_eq!(tc.dropped, ["text_model.embeddings.position_ids"]);
    assert_eq!(tc.created.len(), 2);
    assert_eq!(tc.created[0].key, "clip_l.logit_scale");
    assert_eq!(tc.created[0].info, TensorInfo::new(vec![], Dtype::F32));
    assert_eq!(tc.created[0].bytes, 4.6055f32.to_le_bytes());
    let eye = &tc.created[1];
    assert_eq!(eye.key, "clip_l.transformer.text_projection.weight");
    assert_eq!(eye.info, TensorInfo::new(vec![4, 4], Dtype::BF16));
    let values: Vec<u16> = eye
        .bytes
        .chunks(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    let one = 0x3f80; // bfloat16 1.0
    assert_eq!(
        values,
        [one, 0, 0, 0, 0, one, 0, 0, 0, 0, one, 0, 0, 0, 0, one]
    );
    let tc = to_comfy(identify(&clip(true)).unwrap(), Some("clip_g"), &clip(true)).unwrap();
    assert_eq!(
        tc.created.len(),
        1,
        "a projection of its own needs no identity"
    );
    assert!(tc
        .tensors
        .iter()
        .any(|a| a.key == "clip_g.transformer.text_projection.weight"));

    let mut t5 = Keys::new();
    t5.insert(
        "shared.weight".into(),
        TensorInfo::new(vec![10, 4], Dtype::F16),
    );
    t5.insert(
        "encoder.embed_tokens.weight".into(),
        TensorInfo::new(vec![10, 4], Dtype::F16),
    );
    t5.insert(
        "encoder.block.0.layer.1.DenseReluDense.wo.weight".into(),
        TensorInfo::new(vec![4, 8], Dtype::F16),
    );
    let tc = to_comfy(identify(&t5).unwrap(), Some("t5xxl"), &t5).unwrap();
    assert_eq!(tc.dropped, ["encoder.embed_tokens.weight"]);
    assert_eq!(tc.created[0].key, "t5xxl.logit_scale");
    let got: Vec<&str> = tc.tensors.iter().map(|a| a.key.as_str()).collect();
    assert_eq!(
        got,
        [
            "t5xxl.transformer.encoder.block.0.layer.1.DenseReluDense.wo.weight",
            "t5xxl.transformer.shared.weight"
        ]
    );
}

fn range(key: &str, r: Range<usize>) -> Part {
    Part {
        key: key.into(),
        elements: r,
    }
}

#[test]
fn mmdit_names_fusions_and_swaps_match_diffusers() {
    let t = Folder::Transformer;
    let h = 1536 * 1536;
    let qkv = "joint_blocks.0.context_block.attn.qkv.weight";
    let q = diffusers(Arch::Sd3, t, "transformer_blocks.0.attn.add_q_proj.weight");
    assert_eq!(
        (q.shape.clone(), q.parts),
        (vec![1536, 1536], vec![range(qkv, 0..h)])
    );
    let v = diffusers(Arch::Sd3, t, "transformer_blocks.0.attn.add_v_proj.weight");
    assert_eq!(v.parts, vec![range(qkv, 2 * h..3 * h)]);
    let k = diffusers(Arch::Sd3, t, "transformer_blocks.5.attn.to_k.bias");
    assert_eq!(
        k.parts,
        vec![range("joint_blocks.5.x_block.attn.qkv.bias", 1536..3072)]
    );
    // The final norm, and the pre-only last context block's, swap shift and scale; others do not.
    let last = "joint_blocks.23.context_block.adaLN_modulation.1.weight";
    let n = 3072 * 1536;
    assert_eq!(
        diffusers(
            Arch::Sd3,
            t,
            "transformer_blocks.23.norm1_context.linear.weight"
        )
        .parts,
        vec![range(last, n / 2..n), range(last, 0..n / 2)]
    );
    let b = "final_layer.adaLN_modulation.1.bias";
    assert_eq!(
        diffusers(Arch::Sd3, t, "norm_out.linear.bias").parts,
        vec![range(b, 1536..3072), range(b, 0..1536)]
    );
    assert_copy(
        Arch::Sd3,
        t,
        "transformer_blocks.22.norm1_context.linear.weight",
        "joint_blocks.22.context_block.adaLN_modulation.1.weight",
        &[9216, 1536],
    );
    assert_copy(
        Arch::Sd3,
        t,
        "pos_embed.pos_embed",
        "pos_embed",
        &[1, 192 * 192, 1536],
    );
    assert_copy(
        Arch::Sd3,
        t,
        "pos_embed.proj.weight",
        "x_embedder.proj.weight",
        &[1536, 16, 2, 2],
    );
    assert_copy(
        Arch::Sd3,
        t,
        "time_text_embed.text_embedder.linear_1.weight",
        "y_embedder.mlp.0.weight",
        &[1536, 2048],
    );
    assert_copy(
        Arch::Sd3,
        t,
        "transformer_blocks.23.attn.to_out.0.weight",
        "joint_blocks.23.x_block.attn.proj.weight",
        &[1536, 1536],
    );
    let plans = from_comfy(Arch::Sd3, &synthetic::shapes(Arch::Sd3)).unwrap();
    let keys = keys_of(&plans[0].tensors);
    assert!(!keys.contains_key("transformer_blocks.23.attn.to_add_out.weight"));
    assert!(!keys.contains_key("transformer_blocks.23.ff_context.net.0.proj.weight"));
    assert!(keys.contains_key("transformer_blocks.22.attn.to_add_out.weight"));
}

#[test]
fn flux_names_fusions_and_swaps_match_diffusers() {
    let t = Folder::Transformer;
    assert_copy(
        Arch::Flux,
        t,
        "single_transformer_blocks.0.attn.norm_q.weight",
        "single_blocks.0.norm.query_norm.scale",
        &[128],
    );
    assert_copy(
        Arch::Flux,
        t,
        "transformer_blocks.18.attn.norm_added_k.weight",
        "double_blocks.18.txt_attn.norm.key_norm.scale",
        &[128],
    );
    assert_copy(
        Arch::Flux,
        t,
        "single_transformer_blocks.5.proj_out.weight",
        "single_blocks.5.linear2.weight",
        &[3072, 15360],
    );
    assert_copy(
        Arch::Flux,
        t,
        "time_text_embed.guidance_embedder.linear_2.weight",
        "guidance_in.out_layer.weight",
        &[3072, 3072],
    );
    assert_copy(
        Arch::Flux,
        t,
        "transformer_blocks.0.norm1_context.linear.weight",
        "double_blocks.0.txt_mod.lin.weight",
        &[18432, 3072],
    );
    assert_copy(
        Arch::Flux,
        t,
        "x_embedder.weight",
        "img_in.weight",
        &[3072, 64],
    );
    // linear1 = q, k, v (3072 rows each), then the MLP's 12288 rows.
    let mlp = diffusers(
        Arch::Flux,
        t,
        "single_transformer_blocks.37.proj_mlp.weight",
    );
    assert_eq!(mlp.shape, [12288, 3072]);
    assert_eq!(
        mlp.parts,
        vec![range(
            "single_blocks.37.linear1.weight",
            9216 * 3072..21504 * 3072
        )]
    );
    let kb = diffusers(Arch::Flux, t, "single_transformer_blocks.0.attn.to_k.bias");
    assert_eq!(
        kb.parts,
        vec![range("single_blocks.0.linear1.bias", 3072..6144)]
    );
    let txt_v = diffusers(Arch::Flux, t, "transformer_blocks.3.attn.add_v_proj.weight");
    let n = 3072 * 3072;
    assert_eq!(
        txt_v.parts,
        vec![range("double_blocks.3.txt_attn.qkv.weight", 2 * n..3 * n)]
    );
    let w = "final_layer.adaLN_modulation.1.weight";
    assert_eq!(
        diffusers(Arch::Flux, t, "norm_out.linear.weight").parts,
        vec![range(w, n..2 * n), range(w, 0..n)]
    );
    let schnell = from_comfy(Arch::FluxSchnell, &synthetic::shapes(Arch::FluxSchnell)).unwrap();
    assert!(!schnell[0]
        .tensors
        .iter()
        .any(|a| a.key.contains("guidance")));
}
