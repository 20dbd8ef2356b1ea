//! checkpoint-save: save diffusion-model components into one ComfyUI-compatible checkpoint.
//!
//! The Rust counterpart of ComfyUI's Save Checkpoint node: the denoiser ("model"), text
//! encoder(s) ("clip") and autoencoder ("vae"), held as candle tensors, become one `.safetensors`
//! file with the reference's key layout, markers, metadata and file naming, written atomically
//! (temporary file, then a rename that never replaces anything), with a dtype choice per component.
//!
//! ```
//! use candle_core::Device;
//! use checkpoint_save::arch::Arch;
//! use checkpoint_save::save::{save, SaveOptions};
//! use checkpoint_save::synthetic::{build, SyntheticOptions};
//!
//! # fn main() -> checkpoint_save::error::Result<()> {
//! // A tiny SD1.5 with every real key name (dimensions capped at 4); use your own tensors instead.
//! let components = build(&SyntheticOptions::new(Arch::Sd15).with_max_dim(4), &Device::Cpu)?;
//! let output_dir = std::env::temp_dir().join(format!("checkpoint-save-doc-{}", std::process::id()));
//! let opts = SaveOptions {
//!     output_dir: output_dir.clone(),
//!     ..SaveOptions::default()
//! };
//! let saved = save(&components, &opts)?;
//! println!("{} ({} tensors)", saved.path.display(), saved.tensors);
//! assert!(saved.path.starts_with(&output_dir));
//! # std::fs::remove_dir_all(&output_dir).ok();
//! # Ok(())
//! # }
//! ```

pub mod arch;
pub mod bench;
pub mod cast;
pub mod checkpointer;
pub mod chunks;
pub mod components;
pub mod dtype;
pub mod error;
pub mod layout;
pub mod loader;
pub mod metadata;
pub mod naming;
pub mod offload;
pub mod plan;
pub mod progress;
pub mod save;
pub mod synthetic;
#[cfg(test)]
mod testutil;
pub mod writer;
