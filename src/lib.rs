//! checkpoint-save: save diffusion-model components into one ComfyUI-compatible checkpoint.

pub mod arch;
pub mod components;
pub mod dtype;
pub mod error;
pub mod naming;
