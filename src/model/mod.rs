//! The model a save starts from: its components, their tensors, architectures and dtypes.
//!
//! A model is three components (the denoiser "model", the text encoders "clip", the autoencoder
//! "vae"), each a map from ComfyUI's in-memory key names to tensors. A tensor is wherever its
//! bytes already are — a candle tensor on any device, a range of an input file, a view joining
//! parts of those, or a merge computed from them ([`InputTensor`]); later stages read it only when the file is written.

pub mod arch;
pub mod components;
pub mod dtype;
pub mod tensor;

pub use arch::{Arch, Prediction};
pub use components::{
    ComponentKind, ComponentShapes, Components, InputMap, IntoTensorMap, TensorMap,
};
pub use dtype::{Dtype, TargetDtype, TensorInfo};
pub use merged::{LoraFactors, Merged, Patch, PatchValue};
pub use tensor::merged;
pub use tensor::quantized::{Legacy, QuantTensor};
pub use tensor::{FileTensor, InputTensor, Joined};
