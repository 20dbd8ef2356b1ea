//! One tensor of the model, wherever its bytes are: a candle tensor on any device, a range of an
//! input file, a view joining parts of those, or an expression computed from them when written.
//!
//! These are one recursive type: [`InputTensor`] holds [`merged::Merged`] expressions whose
//! operands are again input tensors. The expression and its arithmetic live in the child module
//! [`merged`]; what a tensor is (shape and dtype, [`TensorInfo`]) lies below both, in
//! [`crate::model::dtype`], so the reader and the layout need neither.

pub mod merged;
pub mod method;
mod patch;
pub mod quantized;
mod shared;

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::model::dtype::{file_dtype, Dtype, TensorInfo};
use crate::read::{SafetensorsFile, TensorEntry};
use merged::Merged;
use quantized::QuantTensor;

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
    /// A quantized tensor: codes with their scales, one logical tensor ([`QuantTensor`]).
    Quantized(Arc<QuantTensor>),
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
            InputTensor::Quantized(q) => q.info(),
        }
    }

    /// The dtype of the tensor's bytes in host memory: a merged tensor's values are computed in
    /// f32 and a quantized tensor's are decoded into f32; every other tensor's bytes are in its
    /// own dtype.
    pub(crate) fn host_dtype(&self) -> Dtype {
        match self {
            InputTensor::Merged(_) | InputTensor::Quantized(_) => Dtype::F32,
            t => t.info().dtype,
        }
    }

    /// The quantized tensor, for tensors stored as one.
    pub fn as_quantized(&self) -> Option<&Arc<QuantTensor>> {
        match self {
            InputTensor::Quantized(q) => Some(q),
            _ => None,
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
        let mut any = false;
        self.visit(&mut |t| {
            any |= matches!(t, InputTensor::Candle(c) if !c.device().is_cpu());
        });
        any
    }

    /// Calls `f` with every input file the tensor's bytes lie in.
    pub(crate) fn input_files(&self, f: &mut impl FnMut(&Arc<SafetensorsFile>)) {
        self.visit(&mut |t| {
            if let InputTensor::File(t) = t {
                f(t.file());
            }
        });
    }

    /// Calls `f` with this tensor and every tensor its values are made of (the parts of a join,
    /// what is transposed, a merge's operands and LoRA factors, a quantized tensor's members),
    /// each merged expression once however often a graph uses it: a graph whose nodes each
    /// take the one before twice has 2^n paths through n nodes.
    pub(crate) fn visit<'a>(&'a self, f: &mut impl FnMut(&'a InputTensor)) {
        self.visit_from(&mut std::collections::HashSet::new(), f);
    }

    fn visit_from<'a>(
        &'a self,
        seen: &mut std::collections::HashSet<usize>,
        f: &mut impl FnMut(&'a InputTensor),
    ) {
        f(self);
        match self {
            InputTensor::Candle(_) | InputTensor::File(_) => {}
            InputTensor::Joined(j) => j.parts.iter().for_each(|(t, _)| t.visit_from(seen, f)),
            InputTensor::Transposed(t) => t.visit_from(seen, f),
            InputTensor::Merged(m) => {
                if seen.insert(Arc::as_ptr(m) as usize) {
                    m.operands().into_iter().for_each(|t| t.visit_from(seen, f));
                }
            }
            InputTensor::Quantized(q) => {
                q.members().iter().for_each(|(_, t)| t.visit_from(seen, f))
            }
        }
    }

    /// Bytes of the tensor as held (a quantized tensor's: every member's).
    pub fn byte_len(&self) -> u64 {
        if let InputTensor::Quantized(q) = self {
            return q.members().iter().map(|(_, t)| t.byte_len()).sum();
        }
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
