//! The model's parts as the caller holds them: named tensors per component.
//!
//! Key names are the ones ComfyUI holds in memory (`time_embed.0.weight` for the denoiser,
//! `clip_l.transformer.text_model...` for text encoders, `encoder.conv_in.weight` for the VAE);
//! the layout turns them into checkpoint keys.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::model::dtype::{file_dtype, Dtype};
use crate::model::merged::Merged;
use crate::read::{SafetensorsFile, TensorEntry};

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
}

impl ComponentKind {
    /// All kinds, in file-section order.
    pub const ALL: [ComponentKind; 4] = [
        ComponentKind::Model,
        ComponentKind::Clip,
        ComponentKind::Vae,
        ComponentKind::ClipVision,
    ];

    /// The name used on the command line and in messages.
    pub fn name(self) -> &'static str {
        match self {
            ComponentKind::Model => "model",
            ComponentKind::Clip => "clip",
            ComponentKind::Vae => "vae",
            ComponentKind::ClipVision => "clip_vision",
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

/// One tensor of a component, read only when the checkpoint is written.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum InputTensor {
    /// A candle tensor on any device (CPU, CUDA, Metal), in any layout.
    Candle(Tensor),
    /// A tensor stored in an input file, read where it lies when the checkpoint is written.
    File(FileTensor),
    /// Element ranges of other tensors, concatenated and read as one shape: q/k/v fused or split,
    /// halves swapped, a reshape. Nothing is copied until the checkpoint is written.
    Joined(Arc<Joined>),
    /// A 2-D tensor, transposed (an OpenCLIP projection read back into HF naming).
    Transposed(Arc<InputTensor>),
    /// A tensor computed from others when written: a merge, a LoRA bake ([`Merged`]).
    Merged(Arc<Merged>),
}

/// Element ranges of other tensors, concatenated along dim 0 (row-major: their bytes, in order),
/// read as `shape`. See [`InputTensor::joined`].
#[derive(Debug, Clone)]
pub struct Joined {
    parts: Vec<(InputTensor, Range<usize>)>,
    info: TensorInfo,
}

impl Joined {
    /// The parts: each a tensor and the element range taken from it, in order.
    pub fn parts(&self) -> &[(InputTensor, Range<usize>)] {
        &self.parts
    }
}

impl InputTensor {
    /// Shape and file dtype.
    pub fn info(&self) -> TensorInfo {
        match self {
            InputTensor::Candle(t) => TensorInfo::new(t.dims().to_vec(), file_dtype(t.dtype())),
            InputTensor::File(f) => TensorInfo::new(f.shape.clone(), f.dtype()),
            InputTensor::Joined(j) => j.info.clone(),
            InputTensor::Transposed(t) => {
                let mut info = t.info();
                info.shape.reverse();
                info
            }
            InputTensor::Merged(m) => m.info().clone(),
        }
    }

    /// The dtype of the tensor's bytes in host memory: a merged tensor's values are computed in
    /// f32; every other tensor's bytes are in its own dtype.
    pub(crate) fn host_dtype(&self) -> Dtype {
        match self {
            InputTensor::Merged(_) => Dtype::F32,
            t => t.info().dtype,
        }
    }

    /// Element ranges of `parts`, concatenated and read as `shape` (same element count).
    ///
    /// # Errors
    /// [`Error::Conversion`] when the parts' dtypes differ, a range lies outside its tensor, a
    /// packed (sub-byte) tensor would be cut, or the element counts do not add up to `shape`.
    pub fn joined(
        key: &str,
        parts: Vec<(InputTensor, Range<usize>)>,
        shape: Vec<usize>,
    ) -> Result<InputTensor> {
        let bad = |reason: String| Error::Conversion {
            key: key.to_string(),
            reason,
        };
        let Some(first) = parts.first() else {
            return Err(bad("no parts to join".into()));
        };
        let dtype = first.0.info().dtype;
        let mut total = 0usize;
        for (t, r) in &parts {
            let info = t.info();
            if info.dtype != dtype {
                return Err(bad(format!(
                    "parts of {} and {} cannot be joined",
                    dtype, info.dtype
                )));
            }
            if r.start > r.end || r.end > info.numel() {
                return Err(bad(format!(
                    "elements {r:?} lie outside a part of shape {:?}",
                    info.shape
                )));
            }
            if crate::model::dtype::is_packed(dtype) && r.len() != info.numel() {
                return Err(bad(format!(
                    "a packed {dtype} tensor can only be taken whole"
                )));
            }
            total += r.len();
        }
        let info = TensorInfo::new(shape, dtype);
        if total != info.numel() {
            return Err(bad(format!(
                "{total} elements cannot be read as shape {:?}",
                info.shape
            )));
        }
        // One whole tensor, as it is or read as another shape: the tensor itself, or a view.
        if let [(t, r)] = parts.as_slice() {
            if r.start == 0 && r.len() == t.info().numel() {
                if t.info().shape == info.shape {
                    return Ok(t.clone());
                }
                if let InputTensor::File(f) = t {
                    return Ok(InputTensor::File(f.reshaped(info.shape)));
                }
            }
        }
        Ok(InputTensor::Joined(Arc::new(Joined { parts, info })))
    }

    /// This 2-D tensor transposed (a transpose of a transpose is the tensor itself).
    pub fn transposed(self) -> InputTensor {
        match self {
            InputTensor::Transposed(t) => (*t).clone(),
            other => InputTensor::Transposed(Arc::new(other)),
        }
    }

    /// The candle tensor, for tensors held as one.
    pub fn as_candle(&self) -> Option<&Tensor> {
        match self {
            InputTensor::Candle(t) => Some(t),
            _ => None,
        }
    }

    /// Whether the bytes live on a device other than the CPU.
    pub fn on_device(&self) -> bool {
        match self {
            InputTensor::Candle(t) => !t.device().is_cpu(),
            InputTensor::File(_) => false,
            InputTensor::Joined(j) => j.parts.iter().any(|(t, _)| t.on_device()),
            InputTensor::Transposed(t) => t.on_device(),
            InputTensor::Merged(m) => m.operands().iter().any(|t| t.on_device()),
        }
    }

    /// Calls `f` with every input file the tensor's bytes lie in.
    pub(crate) fn input_files(&self, f: &mut impl FnMut(&Arc<SafetensorsFile>)) {
        match self {
            InputTensor::Candle(_) => {}
            InputTensor::File(t) => f(t.file()),
            InputTensor::Joined(j) => j.parts.iter().for_each(|(t, _)| t.input_files(f)),
            InputTensor::Transposed(t) => t.input_files(f),
            InputTensor::Merged(m) => m.operands().iter().for_each(|t| t.input_files(f)),
        }
    }

    /// Bytes of the tensor as held.
    pub fn byte_len(&self) -> u64 {
        let info = self.info();
        crate::model::dtype::byte_len(info.dtype, info.numel()).unwrap_or(0) as u64
    }
}

/// A tensor of an input `.safetensors` file: where it lies and how it is read (its own shape, or
/// a reshape of it).
#[derive(Clone)]
pub struct FileTensor {
    file: Arc<SafetensorsFile>,
    index: usize,
    shape: Vec<usize>,
}

impl FileTensor {
    /// Tensor `index` (in data-section order) of an open file.
    pub(crate) fn new(file: Arc<SafetensorsFile>, index: usize) -> Self {
        let shape = file.tensors()[index].shape.clone();
        FileTensor { file, index, shape }
    }

    /// The same bytes read as `shape` (the caller checked the element count).
    fn reshaped(&self, shape: Vec<usize>) -> Self {
        FileTensor {
            shape,
            ..self.clone()
        }
    }

    /// The file it lies in.
    pub(crate) fn file(&self) -> &Arc<SafetensorsFile> {
        &self.file
    }

    /// Its entry in the file's header.
    pub(crate) fn entry(&self) -> &TensorEntry {
        &self.file.tensors()[self.index]
    }

    /// Its dtype in the file.
    pub fn dtype(&self) -> Dtype {
        self.entry().dtype
    }

    /// Its name in the file.
    pub fn name(&self) -> &str {
        &self.entry().name
    }

    /// The path of the file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

impl fmt::Debug for FileTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FileTensor({}: `{}` {:?})",
            self.path().display(),
            self.name(),
            self.shape
        )
    }
}

impl From<Tensor> for InputTensor {
    fn from(t: Tensor) -> Self {
        InputTensor::Candle(t)
    }
}

/// The components of one model, each a map from in-memory key to tensor.
///
/// Tensors of one component may live on different devices (text encoders on a second GPU, say).
#[derive(Debug, Clone, Default)]
pub struct Components {
    parts: [Option<InputMap>; 4],
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

/// Shape and dtype of one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Dimensions, outermost first; empty for a 0-dim scalar.
    pub shape: Vec<usize>,
    /// Dtype as held.
    pub dtype: Dtype,
}

impl TensorInfo {
    /// A new description.
    pub fn new(shape: Vec<usize>, dtype: Dtype) -> Self {
        Self { shape, dtype }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Names, shapes and dtypes of every component: the input of the (pure) layout stage.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ComponentShapes {
    parts: [Option<BTreeMap<String, TensorInfo>>; 4],
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
