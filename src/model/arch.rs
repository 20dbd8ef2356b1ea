//! The architectures the layout knows, and the prediction types that drive markers and metadata.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A model family with its own checkpoint layout (checkpoint-format.md §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// Flux.1 dev (guidance-distilled).
    Flux,
    /// Flux.1 schnell (no guidance embedder).
    FluxSchnell,
}

impl Arch {
    /// Every architecture, in detection order.
    pub const ALL: [Arch; 7] = [
        Arch::Sd15,
        Arch::Sd2,
        Arch::Sdxl,
        Arch::SdxlRefiner,
        Arch::Sd3,
        Arch::Flux,
        Arch::FluxSchnell,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Sd15 => "sd15",
            Arch::Sd2 => "sd2",
            Arch::Sdxl => "sdxl",
            Arch::SdxlRefiner => "sdxl-refiner",
            Arch::Sd3 => "sd3",
            Arch::Flux => "flux",
            Arch::FluxSchnell => "flux-schnell",
        }
    }

    /// Comma-separated names of all architectures, for messages.
    pub fn known_names() -> String {
        Self::ALL.map(Arch::name).join(", ")
    }

    /// The prediction type a model of this family has unless the user says otherwise.
    pub fn default_prediction(self) -> Prediction {
        match self {
            Arch::Sd15 | Arch::Sd2 | Arch::Sdxl | Arch::SdxlRefiner => Prediction::Eps,
            Arch::Sd3 | Arch::Flux | Arch::FluxSchnell => Prediction::Flow,
        }
    }

    /// `modelspec.architecture`, for the families the reference writes it for.
    pub fn modelspec_architecture(self) -> Option<&'static str> {
        match self {
            Arch::Sdxl => Some("stable-diffusion-xl-v1-base"),
            Arch::SdxlRefiner => Some("stable-diffusion-xl-v1-refiner"),
            Arch::Sd3 => Some("stable-diffusion-v3-medium"),
            Arch::Sd15 | Arch::Sd2 | Arch::Flux | Arch::FluxSchnell => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let norm = s.to_ascii_lowercase().replace('_', "-");
        Ok(match norm.as_str() {
            "sd15" | "sd1" | "sd1.5" | "sd1x" => Arch::Sd15,
            "sd2" | "sd20" | "sd21" | "sd2.1" | "sd21-768v" => Arch::Sd2,
            "sdxl" | "sdxl-base" => Arch::Sdxl,
            "sdxl-refiner" | "refiner" => Arch::SdxlRefiner,
            "sd3" | "sd3-medium" | "sd35" | "sd3.5" => Arch::Sd3,
            "flux" | "flux-dev" => Arch::Flux,
            "flux-schnell" | "schnell" => Arch::FluxSchnell,
            _ => {
                return Err(Error::UnknownArchitecture {
                    reason: format!("`{s}` is not an architecture name"),
                    known: Self::known_names(),
                })
            }
        })
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
    /// Rectified flow (SD3, Flux): nothing written.
    Flow,
}

impl Prediction {
    /// Default sigmas of ComfyUI's ModelSamplingContinuousEDM node.
    pub const EDM_DEFAULT: Prediction = Prediction::EdmV {
        sigma_max: 120.0,
        sigma_min: 0.002,
    };

    /// Accepted spellings, for help texts.
    pub const NAMES: &'static str = "eps, v, v-zsnr, edm-v, flow";

    /// The `modelspec.predict_key` value, if the reference writes one.
    pub fn predict_key(self) -> Option<&'static str> {
        match self {
            Prediction::Eps => Some("epsilon"),
            Prediction::V | Prediction::VZsnr => Some("v"),
            Prediction::EdmV { .. } | Prediction::Flow => None,
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
