//! The architectures the layout knows, and the prediction types that drive markers and metadata.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::family::Family;

/// A model family with its own checkpoint layout: one entry of the family table
/// ([`crate::family`]), which holds everything else about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    /// Stable Diffusion 1.x (CLIP-L, `cond_stage_model.` in HF layout).
    Sd15,
    /// Stable Diffusion 2.x, 512 (eps) and 768-v (OpenCLIP-H in OpenCLIP layout).
    Sd2,
    /// SDXL base (CLIP-L + OpenCLIP-G under `conditioner.embedders.`).
    Sdxl,
    /// SDXL refiner (OpenCLIP-G only).
    SdxlRefiner,
    /// Stable Diffusion 3 / 3.5 (MMDiT; CLIP-L, CLIP-G, T5-XXL under `text_encoders.`).
    Sd3,
    /// Flux.1 dev (guidance-distilled; also Kontext and Fill).
    Flux,
    /// Flux.1 schnell (no guidance embedder).
    FluxSchnell,
    /// Wan 2.1 (1.3B, 14B, image-to-video 14B) and Wan 2.2 A14B (the same keys); umT5-XXL.
    Wan21,
    /// Wan 2.2 TI2V 5B with its 48-channel VAE.
    Wan22,
    /// Qwen-Image and Qwen-Image-Edit; Qwen2.5-VL 7B, the Wan 2.1 VAE.
    QwenImage,
    /// HiDream-I1; CLIP-L, CLIP-G, T5-XXL and Llama 3.1 8B.
    HiDream,
    /// Chroma (a Flux derivative; T5-XXL under `cond_stage_model.`).
    Chroma,
    /// Lumina Image 2.0; Gemma 2 2B.
    Lumina2,
    /// Flux 2 dev (Mistral Small 3 24B) and Klein 4B/9B (Qwen3); its own 32-channel VAE.
    Flux2,
    /// Z-Image (Lumina 2's architecture at 3840 wide; Qwen3 4B).
    ZImage,
    /// HunyuanVideo (CLIP-L and LLaVA-LLaMA-3; `model.model.` prefix).
    HunyuanVideo,
    /// HunyuanVideo 1.5 (Qwen2.5-VL 7B and ByT5; `model.model.` prefix).
    HunyuanVideo15,
    /// LTX-Video 2B and 13B (T5-XXL; its causal video VAE).
    Ltxv,
    /// LTX-2, Lightricks' audio-video model (ComfyUI `LTXAV`; Gemma 3 12B; LTX-Video's VAE class).
    Ltx2,
    /// Qwen-Image 2.1 (ComfyUI `QwenImage21`: single-stream; Qwen3-VL 8B, its 64-channel RGBA VAE).
    QwenImage21,
}

impl Arch {
    /// Every architecture, in the family table's order.
    pub const ALL: [Arch; 20] = [
        Arch::Sd15,
        Arch::Sd2,
        Arch::Sdxl,
        Arch::SdxlRefiner,
        Arch::Sd3,
        Arch::Flux,
        Arch::FluxSchnell,
        Arch::Wan21,
        Arch::Wan22,
        Arch::QwenImage,
        Arch::HiDream,
        Arch::Chroma,
        Arch::Lumina2,
        Arch::Flux2,
        Arch::ZImage,
        Arch::HunyuanVideo,
        Arch::HunyuanVideo15,
        Arch::Ltxv,
        Arch::Ltx2,
        Arch::QwenImage21,
    ];

    /// Its entry in the family table.
    pub fn family(self) -> &'static Family {
        &Family::all()[self as usize]
    }

    /// The command-line name.
    pub fn name(self) -> &'static str {
        self.family().name
    }

    /// Comma-separated names of all architectures, for messages.
    pub fn known_names() -> String {
        Self::ALL.map(Arch::name).join(", ")
    }

    /// The prediction type a model of this family has unless the user says otherwise.
    pub fn default_prediction(self) -> Prediction {
        self.family().prediction
    }

    /// `modelspec.architecture`, for the families the reference writes it for.
    pub fn modelspec_architecture(self) -> Option<&'static str> {
        self.family().modelspec
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = Error;
    /// A family's name or alias, or a variant's name (its family).
    fn from_str(s: &str) -> Result<Self> {
        crate::family::family_named(s).map(|f| f.arch)
    }
}

/// What the denoiser predicts; decides `modelspec.predict_key` and the marker tensors (§3–§4).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Prediction {
    /// Noise (ε) prediction: `predict_key = epsilon`.
    Eps,
    /// v-prediction: `predict_key = v` and the `v_pred` marker.
    V,
    /// v-prediction with a zero-terminal-SNR schedule: as [`Prediction::V`] plus `ztsnr`.
    VZsnr,
    /// Continuous EDM v-prediction (CosXL, Playground 2.5): `edm_vpred.sigma_max/min`, no predict_key.
    EdmV {
        /// Largest sigma of the schedule.
        sigma_max: f64,
        /// Smallest sigma of the schedule.
        sigma_min: f64,
    },
    /// Rectified flow (SD3, Flux and the families after them): nothing written.
    Flow,
    /// Not known: a generic-layout save of a model whose prediction nothing states. Nothing is
    /// written (no marker, no `modelspec.predict_key`).
    Unknown,
}

impl Prediction {
    /// Default sigmas of ComfyUI's ModelSamplingContinuousEDM node.
    pub const EDM_DEFAULT: Prediction = Prediction::EdmV {
        sigma_max: 120.0,
        sigma_min: 0.002,
    };

    /// Accepted spellings, for help texts.
    pub const NAMES: &'static str = "eps, v, v-zsnr, edm-v, flow, unknown";

    /// The `modelspec.predict_key` value, if the reference writes one.
    pub fn predict_key(self) -> Option<&'static str> {
        match self {
            Prediction::Eps => Some("epsilon"),
            Prediction::V | Prediction::VZsnr => Some("v"),
            Prediction::EdmV { .. } | Prediction::Flow | Prediction::Unknown => None,
        }
    }
}

impl fmt::Display for Prediction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Prediction::Eps => f.write_str("eps"),
            Prediction::V => f.write_str("v"),
            Prediction::VZsnr => f.write_str("v-zsnr"),
            Prediction::EdmV {
                sigma_max,
                sigma_min,
            } => write!(f, "edm-v (sigma_max {sigma_max}, sigma_min {sigma_min})"),
            Prediction::Flow => f.write_str("flow"),
            Prediction::Unknown => f.write_str("unknown"),
        }
    }
}

impl FromStr for Prediction {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "eps" | "epsilon" => Prediction::Eps,
            "v" | "v-prediction" | "vpred" | "v-pred" => Prediction::V,
            "v-zsnr" | "vpred-zsnr" | "v-ztsnr" => Prediction::VZsnr,
            "edm-v" | "edm" | "edm-vpred" => Prediction::EDM_DEFAULT,
            "flow" | "flux" | "rectified-flow" => Prediction::Flow,
            "unknown" => Prediction::Unknown,
            _ => {
                return Err(Error::InvalidInput(format!(
                    "unknown prediction type `{s}`; choose one of {}",
                    Self::NAMES
                )))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Arch::ALL {
            assert_eq!(a.name().parse::<Arch>().unwrap(), a);
        }
        let err = "sd9".parse::<Arch>().unwrap_err().to_string();
        assert!(err.contains("sd15, sd2, sdxl"), "{err}");
    }

    #[test]
    fn predict_keys_follow_reference() {
        assert_eq!(Prediction::Eps.predict_key(), Some("epsilon"));
        assert_eq!(Prediction::VZsnr.predict_key(), Some("v"));
        assert_eq!(Prediction::EDM_DEFAULT.predict_key(), None);
        assert_eq!(Prediction::Flow.predict_key(), None);
    }
}
