//! The JSON a pipeline folder needs besides weights: each sub-folder's `config.json`,
//! `model_index.json` and `scheduler/scheduler_config.json`, and the prediction type read back.
//!
//! The per-model `config.json` values are read off the plans' shapes (see `model_config`); this
//! module adds what belongs to the pipeline: its class and components, and the scheduler.

use serde_json::{json, Map, Value};

use super::later_config;
use super::model_config::{self, Keys, DIFFUSERS_VERSION};
use super::{from_comfy, ModelClass};
use crate::error::{Error, Result};
use crate::model::ComponentShapes;
use crate::model::{Arch, Prediction};

/// `config.json` of each sub-folder and `model_index.json`, derived from the shapes, plus
/// `scheduler/scheduler_config.json` with the prediction type; paths relative to the pipeline
/// folder, `model_index.json` first.
///
/// Tokenizers hold no weights and are not written: `model_index.json` lists them as `[null, null]`,
/// so `from_pretrained` loads the folder and a tokenizer can be passed to it or copied in.
///
/// # Errors
/// Those of [`from_comfy`]; [`Error::InvalidInput`] for a prediction the architecture's scheduler
/// cannot express (flow for a UNet, ε or v for SD3/Flux) or a tensor a config value is read from
/// that is missing.
pub fn configs(
    arch: Arch,
    shapes: &ComponentShapes,
    prediction: Prediction,
) -> Result<Vec<(String, Value)>> {
    let plans = from_comfy(arch, shapes)?;
    let scheduler = scheduler(arch, prediction)?;
    let mut index = Map::new();
    index.insert("_class_name".into(), json!(pipeline(arch)));
    index.insert("_diffusers_version".into(), json!(DIFFUSERS_VERSION));
    let mut out = Vec::new();
    for plan in &plans {
        let keys: Keys = plan
            .tensors
            .iter()
            .map(|a| (a.key.clone(), a.info()))
            .collect();
        let cfg = match plan.class {
            ModelClass::Unet => model_config::unet(arch, &keys, prediction)?,
            ModelClass::Vae => model_config::vae(arch, &keys)?,
            ModelClass::ClipText | ModelClass::ClipTextWithProjection => {
                model_config::clip(arch, plan, &keys)?
            }
            ModelClass::T5Encoder => model_config::t5(&keys)?,
            ModelClass::Umt5Encoder => umt5(model_config::t5(&keys)?),
            ModelClass::Sd3Transformer => model_config::sd3(&keys)?,
            ModelClass::FluxTransformer => model_config::flux(&keys)?,
            c => later_config::config(c, &keys)?,
        };
        index.insert(
            plan.folder.name().into(),
            json!([plan.class.library(), plan.class.name()]),
        );
        out.push((format!("{}/config.json", plan.folder.name()), cfg));
    }
    index.insert(
        "scheduler".into(),
        json!(["diffusers", scheduler["_class_name"]]),
    );
    // Every other component the pipeline class takes is absent: folders the components did not
    // fill, tokenizers (no weights) and the optional image encoders.
    for name in pipeline_components(arch) {
        index.entry(*name).or_insert(json!([null, null]));
    }
    let extras: Value = match arch {
        Arch::Sd15 | Arch::Sd2 => json!({"requires_safety_checker": false}),
        Arch::Sdxl => json!({"force_zeros_for_empty_prompt": true}),
        Arch::SdxlRefiner => {
            json!({"force_zeros_for_empty_prompt": false, "requires_aesthetics_score": true})
        }
        _ => json!({}),
    };
    if let Value::Object(m) = extras {
        index.extend(m);
    }
    out.insert(0, ("model_index.json".into(), Value::Object(index)));
    out.push(("scheduler/scheduler_config.json".into(), scheduler));
    Ok(out)
}

/// The components (`__init__` arguments) of each pipeline class besides the scheduler.
fn pipeline_components(arch: Arch) -> &'static [&'static str] {
    match arch {
        Arch::Sd15 | Arch::Sd2 => &[
            "vae",
            "text_encoder",
            "tokenizer",
            "unet",
            "safety_checker",
            "feature_extractor",
            "image_encoder",
        ],
        Arch::Sdxl | Arch::SdxlRefiner => &[
            "vae",
            "text_encoder",
            "text_encoder_2",
            "tokenizer",
            "tokenizer_2",
            "unet",
            "image_encoder",
            "feature_extractor",
        ],
        Arch::Sd3 => &[
            "transformer",
            "vae",
            "text_encoder",
            "tokenizer",
            "text_encoder_2",
            "tokenizer_2",
            "text_encoder_3",
            "tokenizer_3",
            "image_encoder",
            "feature_extractor",
        ],
        Arch::Flux | Arch::FluxSchnell => &[
            "vae",
            "text_encoder",
            "tokenizer",
            "text_encoder_2",
            "tokenizer_2",
            "transformer",
            "image_encoder",
            "feature_extractor",
        ],
        Arch::Wan21 | Arch::Wan22 => &[
            "tokenizer",
            "text_encoder",
            "vae",
            "transformer",
            "transformer_2",
        ],
        Arch::HiDream => &[
            "vae",
            "text_encoder",
            "tokenizer",
            "text_encoder_2",
            "tokenizer_2",
            "text_encoder_3",
            "tokenizer_3",
            "text_encoder_4",
            "tokenizer_4",
            "transformer",
        ],
        Arch::HunyuanVideo => &[
            "text_encoder",
            "tokenizer",
            "transformer",
            "vae",
            "text_encoder_2",
            "tokenizer_2",
        ],
        Arch::Chroma => &[
            "vae",
            "text_encoder",
            "tokenizer",
            "transformer",
            "image_encoder",
            "feature_extractor",
        ],
        Arch::QwenImage | Arch::Lumina2 | Arch::Flux2 | Arch::ZImage | Arch::Ltxv => {
            &["vae", "text_encoder", "tokenizer", "transformer"]
        }
        Arch::Ltx2 => &[
            "vae",
            "audio_vae",
            "text_encoder",
            "tokenizer",
            "connectors",
            "transformer",
            "vocoder",
        ],
        // `configs` refuses the families without diffusers names before this is asked.
        _ => &[],
    }
}

/// transformers' `UMT5EncoderModel` config: T5's, with umT5's class and type.
fn umt5(mut t5: Value) -> Value {
    t5["architectures"] = json!(["UMT5EncoderModel"]);
    t5["model_type"] = json!("umt5");
    t5["scalable_attention"] = json!(true);
    t5
}

fn pipeline(arch: Arch) -> &'static str {
    match arch {
        Arch::Sd15 | Arch::Sd2 => "StableDiffusionPipeline",
        Arch::Sdxl => "StableDiffusionXLPipeline",
        Arch::SdxlRefiner => "StableDiffusionXLImg2ImgPipeline",
        Arch::Sd3 => "StableDiffusion3Pipeline",
        Arch::Flux | Arch::FluxSchnell => "FluxPipeline",
        Arch::Wan21 | Arch::Wan22 => "WanPipeline",
        Arch::QwenImage => "QwenImagePipeline",
        Arch::HiDream => "HiDreamImagePipeline",
        Arch::Chroma => "ChromaPipeline",
        Arch::Lumina2 => "Lumina2Pipeline",
        Arch::Flux2 => "Flux2Pipeline",
        Arch::ZImage => "ZImagePipeline",
        Arch::HunyuanVideo => "HunyuanVideoPipeline",
        Arch::Ltxv => "LTXPipeline",
        Arch::Ltx2 => "LTX2Pipeline",
        // `configs` refuses the families without diffusers names before this is asked.
        _ => "DiffusionPipeline",
    }
}

/// Reads the prediction type back from a `scheduler_config.json`: `epsilon` → ε, `v_prediction`
/// → v (v-zsnr with `rescale_betas_zero_snr`; EDM v with an `EDM…` scheduler), flow-matching
/// schedulers or `flow…` → flow. `None` when it says none of these.
pub fn prediction_from_scheduler(json: &Value) -> Option<Prediction> {
    let class = json["_class_name"].as_str().unwrap_or("");
    let pred = json["prediction_type"].as_str();
    if class.starts_with("FlowMatch") || pred.is_some_and(|p| p.starts_with("flow")) {
        return Some(Prediction::Flow);
    }
    // diffusers' schedulers default to epsilon when the field is absent.
    let pred = pred.or((!class.is_empty()).then_some("epsilon"))?;
    match (pred, class.starts_with("EDM")) {
        ("v_prediction", true) => Some(Prediction::EdmV {
            sigma_max: json["sigma_max"].as_f64().unwrap_or(80.0),
            sigma_min: json["sigma_min"].as_f64().unwrap_or(0.002),
        }),
        ("v_prediction", false) if json["rescale_betas_zero_snr"] == json!(true) => {
            Some(Prediction::VZsnr)
        }
        ("v_prediction", false) => Some(Prediction::V),
        ("epsilon", false) => Some(Prediction::Eps),
        _ => None,
    }
}

/// The flow-matching shift of the later families' released schedulers (ComfyUI's
/// `sampling_settings` where diffusers' configs use dynamic shifting).
fn shift(arch: Arch) -> f64 {
    match arch {
        Arch::HiDream | Arch::ZImage => 3.0,
        Arch::Lumina2 => 6.0,
        Arch::HunyuanVideo => 7.0,
        Arch::Wan21 | Arch::Wan22 => 3.0,
        _ => 1.0,
    }
}

fn scheduler(arch: Arch, prediction: Prediction) -> Result<Value> {
    let flow_arch = !matches!(
        arch,
        Arch::Sd15 | Arch::Sd2 | Arch::Sdxl | Arch::SdxlRefiner
    );
    let mismatch = || {
        Error::InvalidInput(format!(
            "{arch} is sampled with {}; a diffusers scheduler for it cannot express {prediction} prediction",
            if flow_arch { "flow matching" } else { "a noise schedule" }
        ))
    };
    let beta = json!({
        "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "trained_betas": null,
    });
    let mut v = match (prediction, arch) {
        (Prediction::Flow, Arch::Sd3) => {
            json!({"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0})
        }
        (Prediction::Flow, Arch::Flux) => json!({
            "_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
            "use_dynamic_shifting": true, "base_shift": 0.5, "max_shift": 1.15,
            "base_image_seq_len": 256, "max_image_seq_len": 4096,
        }),
        (Prediction::Flow, Arch::FluxSchnell) => json!({
            "_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0,
            "use_dynamic_shifting": false,
        }),
        // Wan's pipelines sample with UniPC over flow sigmas.
        (Prediction::Flow, Arch::Wan21 | Arch::Wan22) => json!({
            "_class_name": "UniPCMultistepScheduler", "num_train_timesteps": 1000,
            "prediction_type": "flow_prediction", "use_flow_sigmas": true, "flow_shift": shift(arch),
            "solver_order": 2, "predict_x0": true, "solver_type": "bh2", "lower_order_final": true,
        }),
        (Prediction::Flow, _) if flow_arch => json!({
            "_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
            "shift": shift(arch),
        }),
        (_, _) if flow_arch => return Err(mismatch()),
        (Prediction::Flow, _) => return Err(mismatch()),
        (
            Prediction::EdmV {
                sigma_max,
                sigma_min,
            },
            _,
        ) => json!({
            "_class_name": "EDMEulerScheduler", "num_train_timesteps": 1000,
            "sigma_max": sigma_max, "sigma_min": sigma_min, "sigma_data": 0.5,
            "sigma_schedule": "karras", "rho": 7.0, "prediction_type": "v_prediction",
        }),
        (p, _) => {
            let mut v = beta;
            let zsnr = p == Prediction::VZsnr;
            v["_class_name"] = json!("EulerDiscreteScheduler");
            v["prediction_type"] = json!(if p == Prediction::Eps {
                "epsilon"
            } else {
                "v_prediction"
            });
            v["steps_offset"] = json!(1);
            v["interpolation_type"] = json!("linear");
            v["timestep_spacing"] = json!(if zsnr { "trailing" } else { "leading" });
            v["rescale_betas_zero_snr"] = json!(zsnr);
            v
        }
    };
    v["_diffusers_version"] = json!(DIFFUSERS_VERSION);
    Ok(v)
}
