//! The configs: the released models' values for full-size shapes, self-consistency for every
//! layout, and the scheduler's prediction type both ways.

use super::tests::{all_layouts, keys_of};
use super::*;
use crate::error::Error;
use crate::model::ComponentShapes;
use crate::model::{Arch, Prediction};
use crate::{synthetic, testutil};

fn config(
    arch: Arch,
    shapes: &ComponentShapes,
    prediction: Prediction,
    path: &str,
) -> serde_json::Value {
    let all = configs(arch, shapes, prediction).unwrap_or_else(|e| panic!("{arch}: {e}"));
    all.into_iter()
        .find(|(p, _)| p == path)
        .unwrap_or_else(|| panic!("{arch}: no {path}"))
        .1
}

#[test]
fn configs_of_full_size_models_have_the_released_values() {
    use serde_json::json;
    let full = synthetic::shapes;
    let u = config(
        Arch::Sd15,
        &full(Arch::Sd15),
        Prediction::Eps,
        "unet/config.json",
    );
    assert_eq!(u["attention_head_dim"], 8);
    assert_eq!(u["block_out_channels"], json!([320, 640, 1280, 1280]));
    assert_eq!(u["cross_attention_dim"], 768);
    assert_eq!(
        u["down_block_types"],
        json!([
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D"
        ])
    );
    assert_eq!(
        u["up_block_types"],
        json!([
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D"
        ])
    );
    assert_eq!(
        (
            u["layers_per_block"].clone(),
            u["use_linear_projection"].clone(),
            u["sample_size"].clone()
        ),
        (json!(2), json!(false), json!(64))
    );
    assert_eq!(
        (
            u["in_channels"].clone(),
            u["norm_num_groups"].clone(),
            u["transformer_layers_per_block"].clone()
        ),
        (json!(4), json!(32), json!(1))
    );
    let u = config(
        Arch::Sd2,
        &testutil::component_shapes("sd21_768v"),
        Prediction::V,
        "unet/config.json",
    );
    assert_eq!(u["attention_head_dim"], json!([5, 10, 20, 20]));
    assert_eq!(
        (
            u["sample_size"].clone(),
            u["upcast_attention"].clone(),
            u["use_linear_projection"].clone()
        ),
        (json!(96), json!(true), json!(true))
    );
    let u = config(
        Arch::Sdxl,
        &full(Arch::Sdxl),
        Prediction::Eps,
        "unet/config.json",
    );
    assert_eq!(u["attention_head_dim"], json!([5, 10, 20]));
    assert_eq!(u["transformer_layers_per_block"], json!([1, 2, 10]));
    assert_eq!(
        (
            u["addition_embed_type"].clone(),
            u["projection_class_embeddings_input_dim"].clone()
        ),
        (json!("text_time"), json!(2816))
    );
    assert_eq!(
        (u["cross_attention_dim"].clone(), u["sample_size"].clone()),
        (json!(2048), json!(128))
    );
    assert!(u.get("reverse_transformer_layers_per_block").is_none());
    let u = config(
        Arch::SdxlRefiner,
        &full(Arch::SdxlRefiner),
        Prediction::Eps,
        "unet/config.json",
    );
    assert_eq!(
        (
            u["attention_head_dim"].clone(),
            u["transformer_layers_per_block"].clone()
        ),
        (json!([6, 12, 24, 24]), json!(4))
    );
    assert_eq!(u["projection_class_embeddings_input_dim"], 2560);

    let v = config(
        Arch::Sd15,
        &full(Arch::Sd15),
        Prediction::Eps,
        "vae/config.json",
    );
    assert_eq!(v["block_out_channels"], json!([128, 256, 512, 512]));
    assert_eq!(
        (
            v["latent_channels"].clone(),
            v["layers_per_block"].clone(),
            v["scaling_factor"].clone()
        ),
        (json!(4), json!(2), json!(0.18215))
    );
    assert_eq!(v["use_quant_conv"], true);
    let v = config(
        Arch::Sd3,
        &full(Arch::Sd3),
        Prediction::Flow,
        "vae/config.json",
    );
    assert_eq!(
        (
            v["latent_channels"].clone(),
            v["use_quant_conv"].clone(),
            v["shift_factor"].clone()
        ),
        (json!(16), json!(false), json!(0.0609))
    );

    let c = config(
        Arch::Sd15,
        &full(Arch::Sd15),
        Prediction::Eps,
        "text_encoder/config.json",
    );
    assert_eq!(
        (
            c["hidden_size"].clone(),
            c["num_attention_heads"].clone(),
            c["num_hidden_layers"].clone()
        ),
        (json!(768), json!(12), json!(12))
    );
    assert_eq!(
        (
            c["hidden_act"].clone(),
            c["vocab_size"].clone(),
            c["architectures"].clone()
        ),
        (json!("quick_gelu"), json!(49408), json!(["CLIPTextModel"]))
    );
    let c = config(
        Arch::Sd2,
        &full(Arch::Sd2),
        Prediction::V,
        "text_encoder/config.json",
    );
    assert_eq!(
        (
            c["num_hidden_layers"].clone(),
            c["num_attention_heads"].clone(),
            c["hidden_act"].clone()
        ),
        (json!(23), json!(16), json!("gelu"))
    );
    let c = config(
        Arch::Sdxl,
        &full(Arch::Sdxl),
        Prediction::Eps,
        "text_encoder_2/config.json",
    );
    assert_eq!(
        (
            c["num_hidden_layers"].clone(),
            c["num_attention_heads"].clone(),
            c["projection_dim"].clone()
        ),
        (json!(32), json!(20), json!(1280))
    );
    assert_eq!(
        (c["architectures"].clone(), c["torch_dtype"].clone()),
        (json!(["CLIPTextModelWithProjection"]), json!("float16"))
    );
    let t = config(
        Arch::Flux,
        &full(Arch::Flux),
        Prediction::Flow,
        "text_encoder_2/config.json",
    );
    assert_eq!(
        (
            t["d_model"].clone(),
            t["d_ff"].clone(),
            t["d_kv"].clone(),
            t["num_heads"].clone()
        ),
        (json!(4096), json!(10240), json!(64), json!(64))
    );
    assert_eq!(
        (
            t["num_layers"].clone(),
            t["vocab_size"].clone(),
            t["feed_forward_proj"].clone()
        ),
        (json!(24), json!(32128), json!("gated-gelu"))
    );

    let s = config(
        Arch::Sd3,
        &full(Arch::Sd3),
        Prediction::Flow,
        "transformer/config.json",
    );
    assert_eq!(
        (
            s["num_layers"].clone(),
            s["attention_head_dim"].clone(),
            s["num_attention_heads"].clone()
        ),
        (json!(24), json!(64), json!(24))
    );
    assert_eq!(
        (
            s["caption_projection_dim"].clone(),
            s["joint_attention_dim"].clone(),
            s["pooled_projection_dim"].clone()
        ),
        (json!(1536), json!(4096), json!(2048))
    );
    assert_eq!(
        (
            s["pos_embed_max_size"].clone(),
            s["patch_size"].clone(),
            s["out_channels"].clone(),
            s["sample_size"].clone()
        ),
        (json!(192), json!(2), json!(16), json!(128))
    );
    assert_eq!(
        (s["qk_norm"].clone(), s["dual_attention_layers"].clone()),
        (json!(null), json!([]))
    );
    let f = config(
        Arch::Flux,
        &full(Arch::Flux),
        Prediction::Flow,
        "transformer/config.json",
    );
    assert_eq!(
        (
            f["num_layers"].clone(),
            f["num_single_layers"].clone(),
            f["num_attention_heads"].clone(),
            f["attention_head_dim"].clone()
        ),
        (json!(19), json!(38), json!(24), json!(128))
    );
    assert_eq!(
        (
            f["axes_dims_rope"].clone(),
            f["in_channels"].clone(),
            f["pooled_projection_dim"].clone()
        ),
        (json!([16, 56, 56]), json!(64), json!(768))
    );
    assert_eq!(f["guidance_embeds"], true);
    let f = config(
        Arch::FluxSchnell,
        &full(Arch::FluxSchnell),
        Prediction::Flow,
        "transformer/config.json",
    );
    assert_eq!(f["guidance_embeds"], false);

    let index = config(
        Arch::Sdxl,
        &full(Arch::Sdxl),
        Prediction::Eps,
        "model_index.json",
    );
    assert_eq!(index["_class_name"], "StableDiffusionXLPipeline");
    assert_eq!(index["unet"], json!(["diffusers", "UNet2DConditionModel"]));
    assert_eq!(
        index["text_encoder_2"],
        json!(["transformers", "CLIPTextModelWithProjection"])
    );
    assert_eq!(
        (index["tokenizer_2"].clone(), index["scheduler"].clone()),
        (
            json!([null, null]),
            json!(["diffusers", "EulerDiscreteScheduler"])
        )
    );
    let index = config(
        Arch::SdxlRefiner,
        &full(Arch::SdxlRefiner),
        Prediction::Eps,
        "model_index.json",
    );
    assert_eq!(
        (
            index["text_encoder"].clone(),
            index["requires_aesthetics_score"].clone()
        ),
        (json!([null, null]), json!(true))
    );
    let index = config(
        Arch::Flux,
        &full(Arch::Flux),
        Prediction::Flow,
        "model_index.json",
    );
    assert_eq!(
        (index["_class_name"].clone(), index["transformer"].clone()),
        (
            json!("FluxPipeline"),
            json!(["diffusers", "FluxTransformer2DModel"])
        )
    );
}

#[test]
fn configs_of_every_layout_are_complete_and_self_consistent() {
    for (name, arch, shapes) in all_layouts() {
        let all = configs(arch, &shapes, arch.default_prediction())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let paths: Vec<&str> = all.iter().map(|(p, _)| p.as_str()).collect();
        let plans = from_comfy(arch, &shapes).unwrap();
        assert_eq!(paths.len(), plans.len() + 2, "{name}: {paths:?}");
        assert_eq!(
            (paths[0], paths[paths.len() - 1]),
            ("model_index.json", "scheduler/scheduler_config.json")
        );
        let get = |p: &str| &all.iter().find(|(q, _)| q == p).unwrap().1;
        for plan in &plans {
            assert!(
                paths.contains(&format!("{}/config.json", plan.folder.name()).as_str()),
                "{name}"
            );
        }
        let n = |v: &serde_json::Value| v.as_u64().unwrap() as usize;
        if let Some((_, u)) = all.iter().find(|(p, _)| p == "unet/config.json") {
            let channels: Vec<usize> = u["block_out_channels"]
                .as_array()
                .unwrap()
                .iter()
                .map(n)
                .collect();
            for (i, c) in channels.iter().enumerate() {
                assert_eq!(c % n(&u["norm_num_groups"]), 0, "{name}");
                let heads = u["attention_head_dim"]
                    .as_array()
                    .map_or_else(|| n(&u["attention_head_dim"]), |a| n(&a[i]));
                assert!(
                    heads > 0 && c % heads == 0,
                    "{name}: {c} channels, {heads} heads"
                );
            }
        }
        for p in ["text_encoder/config.json", "text_encoder_2/config.json"] {
            if let Some((_, c)) = all.iter().find(|(q, _)| q == p) {
                if c["model_type"] == "clip_text_model" {
                    assert_eq!(
                        n(&c["hidden_size"]) % n(&c["num_attention_heads"]),
                        0,
                        "{name}"
                    );
                }
            }
        }
        let model = &plans[0];
        if model.class == ModelClass::FluxTransformer {
            let f = get("transformer/config.json");
            let axes: usize = f["axes_dims_rope"].as_array().unwrap().iter().map(n).sum();
            assert_eq!(axes, n(&f["attention_head_dim"]), "{name}");
            let hidden = n(&f["num_attention_heads"]) * n(&f["attention_head_dim"]);
            assert_eq!(
                hidden,
                keys_of(&model.tensors)["x_embedder.weight"].shape[0],
                "{name}"
            );
        }
        if model.class == ModelClass::Sd3Transformer {
            let s = get("transformer/config.json");
            let hidden = n(&s["num_attention_heads"]) * n(&s["attention_head_dim"]);
            assert_eq!(hidden, n(&s["caption_projection_dim"]), "{name}");
        }
        assert_eq!(
            prediction_from_scheduler(get("scheduler/scheduler_config.json")),
            Some(arch.default_prediction()),
            "{name}"
        );
    }
}

#[test]
fn scheduler_prediction_round_trips_and_mismatches_are_errors() {
    use serde_json::json;
    let s = synthetic::tiny_shapes(Arch::Sdxl);
    for p in [
        Prediction::Eps,
        Prediction::V,
        Prediction::VZsnr,
        Prediction::EDM_DEFAULT,
    ] {
        let sched = config(Arch::Sdxl, &s, p, "scheduler/scheduler_config.json");
        assert_eq!(prediction_from_scheduler(&sched), Some(p), "{sched}");
    }
    let sched = config(
        Arch::Sd15,
        &synthetic::tiny_shapes(Arch::Sd15),
        Prediction::V,
        "scheduler/scheduler_config.json",
    );
    assert_eq!(sched["prediction_type"], "v_prediction");
    let flux = config(
        Arch::Flux,
        &synthetic::tiny_shapes(Arch::Flux),
        Prediction::Flow,
        "scheduler/scheduler_config.json",
    );
    assert_eq!(
        (
            flux["_class_name"].clone(),
            flux["use_dynamic_shifting"].clone()
        ),
        (json!("FlowMatchEulerDiscreteScheduler"), json!(true))
    );
    for (arch, p) in [
        (Arch::Sd15, Prediction::Flow),
        (Arch::Flux, Prediction::Eps),
        (Arch::Sd3, Prediction::V),
    ] {
        let e = configs(arch, &synthetic::tiny_shapes(arch), p).unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e}");
    }
    assert_eq!(
        prediction_from_scheduler(
            &json!({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0})
        ),
        Some(Prediction::Flow)
    );
    assert_eq!(
        prediction_from_scheduler(&json!({"_class_name": "PNDMScheduler"})),
        Some(Prediction::Eps)
    );
    assert_eq!(
        prediction_from_scheduler(&json!({"prediction_type": "v_prediction"})),
        Some(Prediction::V)
    );
    assert_eq!(
        prediction_from_scheduler(&json!({"prediction_type": "flow_prediction"})),
        Some(Prediction::Flow)
    );
    assert_eq!(
        prediction_from_scheduler(
            &json!({"_class_name": "EDMEulerScheduler", "prediction_type": "v_prediction", "sigma_max": 120.0, "sigma_min": 0.002})
        ),
        Some(Prediction::EdmV {
            sigma_max: 120.0,
            sigma_min: 0.002
        })
    );
    assert_eq!(
        prediction_from_scheduler(&json!({"prediction_type": "sample"})),
        None
    );
    assert_eq!(prediction_from_scheduler(&json!({})), None);
}
