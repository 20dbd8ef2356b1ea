//! checkpoint-save: save diffusion-model components into one ComfyUI-compatible checkpoint.

pub mod arch;
pub mod cast;
pub mod checkpointer;
pub mod chunks;
pub mod components;
pub mod dtype;
pub mod error;
pub mod layout;
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
