//! checkpoint-save: save diffusion-model components into one ComfyUI-compatible checkpoint.
//!
//! The Rust counterpart of ComfyUI's Save Checkpoint node: the denoiser ("model"), text
//! encoder(s) ("clip") and autoencoder ("vae"), held as candle tensors, become one `.safetensors`
//! file with the reference's key layout, markers, metadata and file naming, written atomically
//! (temporary file, then a publish that never replaces anything), with a dtype choice per component.
//!
//! ```
//! use candle_core::Device;
//! use checkpoint_save::synthetic::{build, SyntheticOptions};
//! use checkpoint_save::{save, Arch, SaveOptions};
//!
//! # fn main() -> checkpoint_save::Result<()> {
//! // A tiny SD1.5 with every real key name; use your own tensors instead:
//! // Components::new(unet).with_clip(clip).with_vae(vae), maps of name -> candle Tensor.
//! let components = build(&SyntheticOptions::new(Arch::Sd15).tiny(), &Device::Cpu)?;
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
//!
//! # The pipeline
//! Data flows one way, one module per stage: [`model`] (what the caller holds) → `layout` (which
//! checkpoint key each tensor gets; pure) → `plan` (the whole file before a byte is written) →
//! `offload` (bytes to the host, cast fused) → `write` (the one byte writer) → `publish` (temp
//! file, no-replace publish) with `naming` (ComfyUI's prefix and counter). `read` is the one
//! reader, used by [`load_checkpoint`], [`inspect`] and [`checkpointer`] resume.
//!
//! # Sources
//! A tensor is wherever its bytes are ([`InputTensor`]): a candle tensor on any device, a range
//! of an input file ([`open_input`] for checkpoints and diffusers folders, [`open_component`]
//! for component files, [`from_diffusers`] for candle tensors in diffusers names), or an
//! expression over those ([`merge`]: merges and LoRA bakes). Every one is read or computed only
//! when the writer reaches its bytes, so no job holds a model in memory.

pub mod bench;
pub mod cast;
pub mod checkpointer;
pub mod component_files;
mod dry_run;
mod error;
pub mod family;
mod gguf_text;
pub mod input;
mod inspect;
pub mod layout;
pub mod linalg;
mod load;
pub mod mecha;
pub mod merge;
pub mod model;
pub mod naming;
mod offload;
mod plan;
mod printable;
mod progress;
mod publish;
pub mod quant;
mod read;
pub mod reduce;
mod save;
mod save_gguf;
mod save_gguf_text;
mod save_mmproj;
mod split;
pub mod synthetic;
mod sys;
#[cfg(test)]
mod testutil;
pub mod workflow;
mod write;

pub use dry_run::{dry_run, DryRun, FamilyReport, PlannedTensor};
pub use error::{Error, Result};

/// GGUF files (llama.cpp's container, in which ComfyUI-GGUF shares models): the reader, with its
/// metadata values, and the header a GGUF target is planned with. Their tensors' ggml types are
/// [`quant::GgmlType`] formats of the quantized-tensor interface.
pub mod gguf {
    pub use crate::gguf_text::{sentencepiece_model, tekken_model};
    pub use crate::plan::gguf::{gguf_header, GgufHeader, GgufTensorInfo};
    pub use crate::read::gguf::{
        GgufFile, GgufTensor, MetaArray, MetaValue, ValueKind, DEFAULT_ALIGNMENT, MAX_DIMS,
        MAX_GGUF_HEADER, ORIG_SHAPE_PREFIX,
    };
}
pub use input::{
    from_diffusers, open as open_input, open_component, ComponentInput, Input, InputLayout,
};
pub use inspect::{inspect, Inspection, PartSummary};
pub use layout::diffusers::Folder;
pub use layout::GenericPrefixes;
pub use load::{load_checkpoint, load_tensors, Loaded};
pub use model::{
    Arch, ComponentKind, ComponentShapes, Components, Dtype, FileTensor, InputMap, InputTensor,
    IntoTensorMap, Joined, Prediction, QuantTensor, TargetDtype, TensorInfo, TensorMap,
};
pub use offload::cuda::release_pinned_buffers;
pub use offload::pinned_copy_ceiling;
pub use plan::gguf_target::{GgufTarget, GgufType};
pub use plan::metadata::MetadataOptions;
pub use plan::ComponentDtypes;
pub use printable::escape_controls;
pub use publish::{clean_stale_temps, reserve_at, Reservation};
pub use read::FileFormat;
pub use save::{lay_out, save, save_tensors, save_to_path, LayoutChoice, SaveOptions, Saved};
pub use save_gguf::{save_gguf, save_gguf_to_path};
pub use save_gguf_text::save_gguf_text;
pub use split::{split, split_gguf, Split, SplitTarget};
pub use sys::{hangup_ignored, ignore_file_size_signal, ignore_hangup};
pub use write::{Backend, EngineOptions, MAX_WORKERS_PER_CORE, MAX_WRITER_THREADS};

/// Internals exposed for the crate's benchmarks; not a supported API.
#[doc(hidden)]
pub mod internal {
    pub use crate::offload::Scratch;
    pub use crate::plan::{Plan, PlanOptions};
    pub use crate::write::fill_range;

    /// Reads `data` as the `data.pkl` of a PyTorch checkpoint whose archive holds no storage
    /// (what the pickle fuzz target drives): `Ok` with the tensor count, or the reader's error.
    ///
    /// # Errors
    /// The reader's message.
    pub fn read_torch_pickle(data: &[u8]) -> std::result::Result<usize, String> {
        crate::read::torch_state_dict(data).map(|(t, _)| t.len())
    }

    /// Reads `data` as a whole GGUF file (what the GGUF fuzz target drives): `Ok` with the
    /// tensor count, or the reader's error.
    ///
    /// # Errors
    /// The reader's message.
    pub fn read_gguf(data: &[u8]) -> std::result::Result<usize, String> {
        crate::read::gguf_header(data)
    }
}
