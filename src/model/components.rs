//! The model's parts as the caller holds them: named tensors per component.
//!
//! Key names are the ones ComfyUI holds in memory (`time_embed.0.weight` for the denoiser,
//! `clip_l.transformer.text_model...` for text encoders, `encoder.conv_in.weight` for the VAE);
//! the layout turns them into checkpoint keys.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use candle_core::Tensor;

use crate::model::dtype::TensorInfo;
use crate::model::tensor::InputTensor;

/// Named candle tensors of one component, sorted by name so every walk over them is deterministic.
pub type TensorMap = BTreeMap<String, Tensor>;

/// Named tensors of one component, whatever holds their bytes.
pub type InputMap = BTreeMap<String, InputTensor>;

/// Which part of the model a tensor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ComponentKind {
    /// The denoiser (UNet or DiT), ComfyUI's `MODEL`.
    Model,
    /// The text encoder(s), ComfyUI's `CLIP`.
    Clip,
    /// The autoencoder, ComfyUI's `VAE`.
    Vae,
    /// An image encoder (SVD, unCLIP); only written by the generic layout.
    ClipVision,
    /// An audio autoencoder with its vocoder (LTX-2's, as ComfyUI's `AudioVAE` holds them:
    /// `autoencoder.…` and `vocoder.…`), carried as it is through every job.
    AudioVae,
}

impl ComponentKind {
    /// All kinds, in file-section order.
    pub const ALL: [ComponentKind; 5] = [
        ComponentKind::Model,
        ComponentKind::Clip,
        ComponentKind::Vae,
        ComponentKind::ClipVision,
        ComponentKind::AudioVae,
    ];

    /// The name used on the command line and in messages.
    pub fn name(self) -> &'static str {
        match self {
            ComponentKind::Model => "model",
            ComponentKind::Clip => "clip",
            ComponentKind::Vae => "vae",
            ComponentKind::ClipVision => "clip_vision",
            ComponentKind::AudioVae => "audio_vae",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The components of one model, each a map from in-memory key to tensor.
///
/// Tensors of one component may live on different devices (text encoders on a second GPU, say).
#[derive(Debug, Clone, Default)]
pub struct Components {
    parts: [Option<InputMap>; 5],
}

impl Components {
    /// Components with only a denoiser (what ComfyUI's ModelSave writes).
    pub fn new(model: impl IntoTensorMap) -> Self {
        let mut c = Self::default();
        c.set(ComponentKind::Model, model);
        c
    }

    /// Adds the text encoders.
    pub fn with_clip(mut self, clip: impl IntoTensorMap) -> Self {
        self.set(ComponentKind::Clip, clip);
        self
    }

    /// Adds the autoencoder.
    pub fn with_vae(mut self, vae: impl IntoTensorMap) -> Self {
        self.set(ComponentKind::Vae, vae);
        self
    }

    /// Adds an audio autoencoder and its vocoder (LTX-2's).
    pub fn with_audio_vae(mut self, audio_vae: impl IntoTensorMap) -> Self {
        self.set(ComponentKind::AudioVae, audio_vae);
        self
    }

    /// Adds an image encoder.
    pub fn with_clip_vision(mut self, clip_vision: impl IntoTensorMap) -> Self {
        self.set(ComponentKind::ClipVision, clip_vision);
        self
    }

    /// Sets (or replaces) one component from candle tensors.
    pub fn set(&mut self, kind: ComponentKind, tensors: impl IntoTensorMap) {
        let map = tensors
            .into_tensor_map()
            .into_iter()
            .map(|(k, t)| (k, InputTensor::Candle(t)))
            .collect();
        self.set_inputs(kind, map);
    }

    /// Sets (or replaces) one component from tensors held anywhere.
    pub fn set_inputs(&mut self, kind: ComponentKind, tensors: InputMap) {
        self.parts[kind.index()] = Some(tensors);
    }

    /// Removes one component, returning it.
    pub fn take(&mut self, kind: ComponentKind) -> Option<InputMap> {
        self.parts[kind.index()].take()
    }

    /// One component, if present.
    pub fn get(&self, kind: ComponentKind) -> Option<&InputMap> {
        self.parts[kind.index()].as_ref()
    }

    /// One tensor.
    pub fn tensor(&self, kind: ComponentKind, key: &str) -> Option<&InputTensor> {
        self.get(kind).and_then(|m| m.get(key))
    }

    /// One tensor, when it is held as a candle tensor.
    pub fn candle(&self, kind: ComponentKind, key: &str) -> Option<&Tensor> {
        self.tensor(kind, key).and_then(InputTensor::as_candle)
    }

    /// The components present, in [`ComponentKind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (ComponentKind, &InputMap)> {
        ComponentKind::ALL
            .into_iter()
            .filter_map(|k| self.get(k).map(|m| (k, m)))
    }

    /// Every tensor of every component.
    pub fn tensors(&self) -> impl Iterator<Item = &InputTensor> {
        self.iter().flat_map(|(_, m)| m.values())
    }

    /// Names, shapes and dtypes only: what the layout needs.
    pub fn shapes(&self) -> ComponentShapes {
        let mut s = ComponentShapes::default();
        for (kind, map) in self.iter() {
            s.set(
                kind,
                map.iter().map(|(k, t)| (k.clone(), t.info())).collect(),
            );
        }
        s
    }

    /// Total bytes of all tensors, as held.
    pub fn byte_len(&self) -> u64 {
        self.tensors().map(InputTensor::byte_len).sum()
    }
}

impl<T: IntoTensorMap> From<T> for Components {
    /// A model with only a denoiser (or the one component a training checkpoint holds).
    fn from(model: T) -> Self {
        Components::new(model)
    }
}

impl From<&Components> for Components {
    fn from(c: &Components) -> Self {
        c.clone()
    }
}

/// Names, shapes and dtypes of every component: the input of the (pure) layout stage.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ComponentShapes {
    parts: [Option<BTreeMap<String, TensorInfo>>; 5],
}

impl ComponentShapes {
    /// Sets one component.
    pub fn set(&mut self, kind: ComponentKind, infos: BTreeMap<String, TensorInfo>) {
        self.parts[kind.index()] = Some(infos);
    }

    /// One component, if present.
    pub fn get(&self, kind: ComponentKind) -> Option<&BTreeMap<String, TensorInfo>> {
        self.parts[kind.index()].as_ref()
    }

    /// One tensor's description.
    pub fn info(&self, kind: ComponentKind, key: &str) -> Option<&TensorInfo> {
        self.get(kind).and_then(|m| m.get(key))
    }
}

/// Named candle tensors, however the caller holds them: maps, pairs and candle `VarMap`s, by
/// value or by reference (tensors are handles; nothing is copied).
pub trait IntoTensorMap {
    /// The tensors, sorted by name.
    fn into_tensor_map(self) -> TensorMap;
}

impl IntoTensorMap for TensorMap {
    fn into_tensor_map(self) -> TensorMap {
        self
    }
}

impl IntoTensorMap for &TensorMap {
    fn into_tensor_map(self) -> TensorMap {
        self.clone()
    }
}

impl<S: std::hash::BuildHasher> IntoTensorMap for HashMap<String, Tensor, S> {
    fn into_tensor_map(self) -> TensorMap {
        self.into_iter().collect()
    }
}

impl<S: std::hash::BuildHasher> IntoTensorMap for &HashMap<String, Tensor, S> {
    fn into_tensor_map(self) -> TensorMap {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl IntoTensorMap for Vec<(String, Tensor)> {
    fn into_tensor_map(self) -> TensorMap {
        self.into_iter().collect()
    }
}

impl IntoTensorMap for &[(String, Tensor)] {
    fn into_tensor_map(self) -> TensorMap {
        self.iter().cloned().collect()
    }
}

impl IntoTensorMap for &candle_nn::VarMap {
    fn into_tensor_map(self) -> TensorMap {
        // A poisoned lock only means another thread panicked mid-update; the tensors are still valid.
        let data = self.data().lock().unwrap_or_else(|e| e.into_inner());
        data.iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::dtype::Dtype;
    use candle_core::{DType, Device};

    #[test]
    fn varmap_becomes_component() {
        let vm = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let _ = vb.get((2, 3), "layer.weight").unwrap();
        let c = Components::new(&vm);
        let shapes = c.shapes();
        let info = shapes.info(ComponentKind::Model, "layer.weight").unwrap();
        assert_eq!(info.shape, vec![2, 3]);
        assert_eq!(info.dtype, Dtype::F32);
        assert_eq!(c.byte_len(), 24);
        let same: Components = (&vm).into();
        assert_eq!(same.shapes(), shapes);
    }
}
