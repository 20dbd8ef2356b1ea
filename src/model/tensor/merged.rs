//! A tensor computed from others when the checkpoint is written: a merge, a LoRA bake.
//!
//! The expression mirrors how ComfyUI applies patches to a weight (`comfy/lora.py`,
//! `calculate_weight`), so that the arithmetic, and with it every rounding, is the same: the
//! base tensor is taken in f32, then for each patch in order, the weight is multiplied by the
//! patch's `strength_model` when that is not 1, and `strength · value` is added when `strength`
//! is not 0, where the value is another tensor (itself possibly patched: ComfyUI's
//! ModelSubtract inside ModelAdd) or a LoRA's `up @ down`. Every operation is one f32 operation,
//! rounded, never fused (Rust does not contract `a * b + c`); the result is rounded once to the
//! output dtype.
//!
//! | node | expression |
//! | --- | --- |
//! | ModelMergeSimple(r) | `A` patched by `(strength 1 − r, strength_model r, B)`: `A·r + (1 − r)·B` |
//! | ModelSubtract(m) | `A` patched by `(−m, m, B)`: `A·m + (−m)·B` |
//! | ModelAdd | `A` patched by `(1, 1, B)`: `A + B` |
//! | add difference (m) | `A` patched by `(1, 1, B patched by (−m, m, C))`: `A + (B·m + (−m)·C)` |
//! | LoraLoader(s) | `W` patched by `(s·α/rank, 1, up @ down)` |
//! | LoraLoader(s), `.diff`/`.diff_b`/`.w_norm`/`.b_norm` | `W` patched by `(s, 1, diff)` on the rows it names |
//! | LoraLoader, `.set_weight` | the rows it names replaced by the value (the strength is not used) |
//! | LoraLoader, `.reshape_weight` | `W` zero-padded to the shape first ([`Merged::padded`]) |
//!
//! Coefficients are computed in f64 as Python computes them (`1.0 - ratio`, `strength * alpha /
//! rank`) and used as f32, as PyTorch does when it multiplies an f32 tensor by a Python float.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use candle_core::Device;

use super::method::{Ranks, TensorMethod};
use super::InputTensor;
use crate::error::{Error, Result};
use crate::model::dtype::{can_decode, TensorInfo};
use crate::plan::Piece;
use crate::reduce::{Computed, Held};

use super::patch::{check_lora, check_rows};
pub use super::patch::{LoraFactors, Patch, PatchValue, RowValue};
use super::shared::SharedWalk;
pub(crate) use super::shared::{merged_key, source_key, Shared};

/// A tensor made by patching a base tensor (see the [module docs](self)).
pub struct Merged {
    key: String,
    base: InputTensor,
    patches: Vec<Patch>,
    info: TensorInfo,
    device: Option<Device>,
    /// How the result is written back when its base is quantized and kept in its format.
    requantize: crate::quant::Requantize,
    /// The base's shape when it is zero-padded to `info`'s (ComfyUI's `reshape_weight`).
    padded_from: Option<Vec<usize>>,
    /// How each operand (0: the base, `i`: patch `i − 1`'s tensor) is read, planned once.
    pieces: OnceLock<Vec<Option<Vec<Piece>>>>,
    /// What the expression reads more than once (nested merges included): their ranges are
    /// kept while a range of the result is computed.
    shared: OnceLock<Shared>,
    /// [`Merged::evaluation_device`], found once: a graph may hold an expression many times.
    evaluated_on: OnceLock<Option<Device>>,
    /// A whole-tensor method computing this tensor from its base and more operands.
    method: Option<MethodNode>,
    /// Whether the values are rounded to `info`'s dtype when computed, whatever dtype they are
    /// written in ([`Merged::cast`]).
    rounded: bool,
}

/// A whole-tensor method node: the method, its operands after the base, and its scalars,
/// computed once per tensor by whichever worker (or the prefetcher) first needs them.
pub(crate) struct MethodNode {
    pub(crate) op: Arc<dyn TensorMethod>,
    pub(crate) inputs: Vec<InputTensor>,
    pub(crate) scalars: Computed<Vec<f64>>,
    /// The ranks the method asks for ([`crate::model::tensor::method::Needs::ranks`]), held
    /// while the tensor's values are produced.
    pub(crate) ranks: Held<Vec<Arc<Ranks>>>,
}

impl fmt::Debug for Merged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Merged")
            .field("key", &self.key)
            .field("info", &self.info)
            .field("base", &self.base)
            .field("patches", &self.patches)
            .finish()
    }
}

impl Merged {
    /// `base` patched by `patches`, in order. The result has `base`'s shape and dtype (the
    /// dtype `keep` writes, as ComfyUI rounds a patched weight to its stored dtype).
    ///
    /// # Errors
    /// [`Error::BadShape`] for a tensor value whose shape is not the base's, or LoRA factors
    /// that do not fit it (their rank, or their product's shape); [`Error::Conversion`] for a
    /// base or value that is not floating point.
    pub fn new(key: &str, base: InputTensor, patches: Vec<Patch>) -> Result<Merged> {
        let info = base.info();
        Merged::build(key, base, info, patches)
    }

    /// `base`'s values as `dtype` (F32, F16 or BF16): each rounded to it (to nearest even) when
    /// computed, then written in the output's dtype (ComfyUI-GGUF's `dequantize_tensor(t,
    /// dtype)` of a GGUF tensor, upcast exactly by an f32 target), nothing patched.
    ///
    /// # Errors
    /// [`Error::Conversion`] for a base that is not floating point or another `dtype`.
    pub fn cast(key: &str, base: InputTensor, dtype: crate::model::dtype::Dtype) -> Result<Merged> {
        use crate::model::dtype::Dtype;
        if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(Error::Conversion {
                key: key.to_string(),
                reason: format!("a cast to {dtype}: only F32, F16 and BF16 are made"),
            });
        }
        let info = TensorInfo::new(base.info().shape, dtype);
        let mut m = Merged::build(key, base, info, Vec::new())?;
        m.rounded = true;
        Ok(m)
    }

    /// The dtype the values are rounded to when computed ([`Merged::cast`]), if any.
    pub(crate) fn rounds_to(&self) -> Option<crate::model::dtype::Dtype> {
        self.rounded.then_some(self.info.dtype)
    }

    /// `base` zero-padded to `shape`, then patched by `patches`: ComfyUI's `reshape_weight`
    /// (`pad_tensor_to_shape`: each base element keeps its index, new ones are 0), which grows
    /// Flux's `img_in` for BFL's control LoRAs.
    ///
    /// # Errors
    /// As [`Merged::new`]; [`Error::BadShape`] for a shape of another rank than the base's, or
    /// smaller in a dimension.
    pub fn padded(
        key: &str,
        base: InputTensor,
        shape: Vec<usize>,
        patches: Vec<Patch>,
    ) -> Result<Merged> {
        let from = base.info();
        if from.shape.len() != shape.len() || from.shape.iter().zip(&shape).any(|(a, b)| a > b) {
            return Err(Error::BadShape {
                key: key.to_string(),
                shape: from.shape,
                reason: format!(
                    "cannot be zero-padded to {shape:?} (`reshape_weight`): the new shape needs \
                     the same number of dimensions, none smaller"
                ),
            });
        }
        let padded = (from.shape != shape).then(|| from.shape.clone());
        let mut m = Merged::build(key, base, TensorInfo::new(shape, from.dtype), patches)?;
        m.padded_from = padded;
        Ok(m)
    }

    fn build(
        key: &str,
        base: InputTensor,
        info: TensorInfo,
        patches: Vec<Patch>,
    ) -> Result<Merged> {
        let not_float = |what: &str, t: &InputTensor| {
            let d = t.info().dtype;
            (!can_decode(d)).then(|| Error::Conversion {
                key: key.to_string(),
                reason: format!(
                    "{what} is {d}: only F64, F32, F16, BF16 and F8 tensors are merged"
                ),
            })
        };
        if let Some(e) = not_float("the tensor", &base) {
            return Err(e);
        }
        let bad = |reason: String| Error::BadShape {
            key: key.to_string(),
            shape: info.shape.clone(),
            reason,
        };
        for p in &patches {
            match &p.value {
                PatchValue::Tensor(t) => {
                    if let Some(e) = not_float("a merged tensor", t) {
                        return Err(e);
                    }
                    if t.info().shape != info.shape {
                        return Err(bad(format!(
                            "the tensor merged into it has shape {:?}",
                            t.info().shape
                        )));
                    }
                }
                PatchValue::Lora(l) => check_lora(l, &info).map_err(bad)?,
                PatchValue::Diff(r) | PatchValue::Set(r) => {
                    if let Some(e) = not_float(&format!("`{}`", r.name), &r.value) {
                        return Err(e);
                    }
                    check_rows(r, &info).map_err(bad)?;
                }
            }
        }
        Ok(Merged {
            key: key.to_string(),
            base,
            patches,
            info,
            device: None,
            requantize: crate::quant::Requantize::default(),
            padded_from: None,
            pieces: OnceLock::new(),
            shared: OnceLock::new(),
            evaluated_on: OnceLock::new(),
            method: None,
            rounded: false,
        })
    }

    /// `op` over `inputs` (at least one, all of one shape, floating point): a whole-tensor
    /// merge method ([`super::method`]). The result has the first input's shape and dtype.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] without inputs; [`Error::BadShape`] for an input whose shape is
    /// not the first's; [`Error::Conversion`] for one that is not floating point.
    pub fn method(
        key: &str,
        inputs: Vec<InputTensor>,
        op: Arc<dyn TensorMethod>,
    ) -> Result<Merged> {
        let mut inputs = inputs.into_iter();
        let Some(base) = inputs.next() else {
            return Err(Error::InvalidInput(format!(
                "`{key}`: the method {} was given no tensor to merge",
                op.name()
            )));
        };
        let rest: Vec<InputTensor> = inputs.collect();
        let info = base.info();
        let mut m = Merged::build(key, base, info, Vec::new())?;
        for (i, t) in rest.iter().enumerate() {
            let info = t.info();
            if !can_decode(info.dtype) {
                return Err(Error::Conversion {
                    key: key.to_string(),
                    reason: format!(
                        "input {} of {} is {}: only F64, F32, F16, BF16 and F8 tensors are merged",
                        i + 2,
                        op.name(),
                        info.dtype
                    ),
                });
            }
            if info.shape != m.info.shape {
                return Err(Error::BadShape {
                    key: key.to_string(),
                    shape: m.info.shape.clone(),
                    reason: format!(
                        "it has this shape in the first input of {} and {:?} in input {}; merge \
                         models of one architecture and size",
                        op.name(),
                        info.shape,
                        i + 2
                    ),
                });
            }
        }
        m.method = Some(MethodNode {
            op,
            inputs: rest,
            scalars: Computed::default(),
            ranks: Held::default(),
        });
        Ok(m)
    }

    /// The tensor's key, for messages.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// The whole-tensor method computing this tensor, when it is one ([`Merged::method`]).
    pub(crate) fn method_node(&self) -> Option<&MethodNode> {
        self.method.as_ref()
    }

    /// The base's shape when it is zero-padded to this tensor's ([`Merged::padded`]).
    pub fn padded_from(&self) -> Option<&[usize]> {
        self.padded_from.as_deref()
    }

    /// Where elements `units` of the (padded) base come from: runs of `(result elements, first
    /// base element)`, in order; elements no run covers are the padding's zeros. Without
    /// padding, one run: `units` itself.
    pub(crate) fn base_runs(&self, units: Range<usize>) -> Vec<(Range<usize>, usize)> {
        let Some(from) = &self.padded_from else {
            return vec![(units.clone(), units.start)];
        };
        let to = &self.info.shape;
        let (Some(&last), Some(&from_last)) = (to.last(), from.last()) else {
            return vec![(units.clone(), units.start)];
        };
        let mut runs = Vec::new();
        if last == 0 || from_last == 0 || units.is_empty() {
            return runs;
        }
        let lead = to.len() - 1;
        for row in units.start / last..units.end.div_ceil(last) {
            // The row's index in the leading dimensions, and the base row it is, if inside.
            let (mut rest, mut base_row, mut inside) = (row, 0usize, true);
            let mut stride = 1usize;
            for d in (0..lead).rev() {
                let i = rest % to[d];
                rest /= to[d];
                inside &= i < from[d];
                base_row += i * stride;
                stride *= from[d];
            }
            let (s, e) = (
                units.start.max(row * last),
                units.end.min(row * last + from_last),
            );
            if inside && s < e {
                runs.push((s..e, base_row * from_last + (s - row * last)));
            }
        }
        runs
    }

    /// The same tensor computed on `device` with candle's ops (operands are uploaded range by
    /// range, or used where they lie when they are already there). Without one, a merge of
    /// tensors that all live on one GPU is computed there, and anything else by the host's fused
    /// evaluator (faster on the CPU than candle's ops on [`Device::Cpu`], with the same result).
    pub fn on(mut self, device: Device) -> Merged {
        self.device = Some(device);
        self.evaluated_on = OnceLock::new();
        self
    }

    /// The same tensor, written back into its base's quantized format (when its base is
    /// quantized and the save keeps it so) with `requantize`'s scales.
    pub fn with_requantize(mut self, requantize: crate::quant::Requantize) -> Merged {
        self.requantize = requantize;
        self
    }

    /// How the result is requantized when its base is quantized (see [`Merged::with_requantize`]).
    pub fn requantize(&self) -> crate::quant::Requantize {
        self.requantize
    }

    /// The quantized tensor at the bottom of the base chain (a merge of a padded merge of …),
    /// when there is one.
    pub fn quantized_base(&self) -> Option<&Arc<super::quantized::QuantTensor>> {
        match &self.base {
            InputTensor::Quantized(q) => Some(q),
            InputTensor::Merged(m) => m.quantized_base(),
            _ => None,
        }
    }

    /// The device this tensor is computed on, `None` for the host's fused evaluator.
    pub(crate) fn evaluation_device(&self) -> Option<Device> {
        self.evaluated_on
            .get_or_init(|| self.find_evaluation_device())
            .clone()
    }

    fn find_evaluation_device(&self) -> Option<Device> {
        if let Some(d) = &self.device {
            return Some(d.clone());
        }
        // A method's whole-tensor facts and values are computed by the host.
        if self.method.is_some() {
            return None;
        }
        // LoRA factors are small: they follow the weights wherever those are.
        let mut device: Option<Device> = None;
        for t in self.tensor_operands().flatten() {
            let d = match t {
                InputTensor::Candle(c) if !c.device().is_cpu() => c.device().clone(),
                InputTensor::Merged(m) => m.evaluation_device()?,
                _ => return None,
            };
            match &device {
                Some(e) if !e.same_device(&d) => return None,
                _ => device = Some(d),
            }
        }
        device
    }

    /// The planned pieces operand `i` is read through (0: the base, `i`: patch `i − 1`'s
    /// tensor), made on first use and kept, so per-piece caches of the fill stay valid.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an operand that is a LoRA or itself merged (those are
    /// evaluated, not read); planning errors.
    pub(crate) fn operand_pieces(&self, i: usize) -> Result<&[Piece]> {
        if self.pieces.get().is_none() {
            let mut all = Vec::with_capacity(self.patches.len() + 1);
            for t in self.tensor_operands() {
                all.push(match t {
                    Some(InputTensor::Merged(_)) | None => None,
                    Some(t) => Some(crate::plan::operand_pieces(&self.key, t)?),
                });
            }
            // Another worker may have planned them meanwhile: the same pieces either way.
            let _ = self.pieces.set(all);
        }
        self.pieces
            .get()
            .and_then(|p| p.get(i))
            .and_then(|p| p.as_deref())
            .ok_or_else(|| {
                Error::InvalidInput(format!("`{}` has no operand {i} to read", self.key))
            })
    }

    /// Tensor operand `i` (0: the base, `i`: patch `i − 1`'s tensor or row value); `None` for a
    /// LoRA patch or past the end.
    pub(crate) fn tensor_operand(&self, i: usize) -> Option<&InputTensor> {
        self.tensor_operands().nth(i).flatten()
    }

    /// The tensor operands by index: 0 the base, `i` patch `i − 1`'s tensor or row value (`None`
    /// for a LoRA).
    pub(super) fn tensor_operands(&self) -> impl Iterator<Item = Option<&InputTensor>> {
        let method = self.method.iter().flat_map(|m| m.inputs.iter().map(Some));
        std::iter::once(Some(&self.base))
            .chain(self.patches.iter().map(|p| match &p.value {
                PatchValue::Tensor(t) => Some(t),
                PatchValue::Diff(r) | PatchValue::Set(r) => Some(&r.value),
                PatchValue::Lora(_) => None,
            }))
            .chain(method)
    }

    /// What this expression reads more than once, counting nested expressions (a graph that
    /// uses one input, or one intermediate result, twice): found once.
    pub(crate) fn shared(&self) -> &Shared {
        self.shared.get_or_init(|| {
            let mut walk = SharedWalk::default();
            walk.operands_of(self);
            let twice = |counts: BTreeMap<usize, usize>| {
                counts
                    .into_iter()
                    .filter(|(_, n)| *n > 1)
                    .map(|(k, _)| k)
                    .collect()
            };
            Shared {
                sources: twice(walk.sources),
                merged: twice(walk.merged),
            }
        })
    }

    /// Shape and dtype.
    pub fn info(&self) -> &TensorInfo {
        &self.info
    }

    /// The base tensor.
    pub fn base(&self) -> &InputTensor {
        &self.base
    }

    /// The patches, in order.
    pub fn patches(&self) -> &[Patch] {
        &self.patches
    }

    /// Every tensor the result is computed from (LoRA factors included).
    pub(crate) fn operands(&self) -> Vec<&InputTensor> {
        let mut out = vec![&self.base];
        for p in &self.patches {
            match &p.value {
                PatchValue::Tensor(t) => out.push(t),
                PatchValue::Diff(r) | PatchValue::Set(r) => out.push(&r.value),
                PatchValue::Lora(l) => {
                    out.extend([&l.up, &l.down]);
                    out.extend(l.mid.as_ref());
                }
            }
        }
        if let Some(m) = &self.method {
            out.extend(m.inputs.iter());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Dtype;

    fn padded(from: &[usize], to: &[usize]) -> Merged {
        let base = candle_core::Tensor::zeros(from, candle_core::DType::F32, &Device::Cpu).unwrap();
        Merged::padded("w", InputTensor::Candle(base), to.to_vec(), Vec::new()).unwrap()
    }

    /// Every element of the padded tensor, by its index, against the base's.
    fn expected(from: &[usize], to: &[usize]) -> Vec<Option<usize>> {
        let n: usize = to.iter().product();
        (0..n)
            .map(|mut e| {
                let mut idx = vec![0; to.len()];
                for d in (0..to.len()).rev() {
                    idx[d] = e % to[d];
                    e /= to[d];
                }
                if idx.iter().zip(from).any(|(i, f)| i >= f) {
                    return None;
                }
                Some(idx.iter().zip(from).fold(0, |acc, (i, f)| acc * f + i))
            })
            .collect()
    }

    #[test]
    fn a_padded_base_keeps_each_element_at_its_index() {
        for (from, to) in [
            (vec![3, 2], vec![3, 5]),
            (vec![2, 3, 2], vec![4, 3, 3]),
            (vec![4], vec![7]),
            (vec![2, 2], vec![2, 2]),
        ] {
            let m = padded(&from, &to);
            let n: usize = to.iter().product();
            let want = expected(&from, &to);
            for units in [0..n, 1..n - 1, 3..4, n / 2..n] {
                let mut got = vec![None; n];
                let mut last = units.start;
                for (r, at) in m.base_runs(units.clone()) {
                    assert!(
                        r.start >= last && r.end <= units.end,
                        "{from:?}->{to:?} {r:?}"
                    );
                    last = r.end;
                    for (k, e) in r.enumerate() {
                        got[e] = Some(at + k);
                    }
                }
                for e in units.clone() {
                    assert_eq!(got[e], want[e], "{from:?}->{to:?} element {e}");
                }
            }
        }
    }

    #[test]
    fn padding_to_fewer_dimensions_or_a_smaller_size_is_refused() {
        let base =
            candle_core::Tensor::zeros((3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        for to in [vec![3, 3], vec![3, 4, 1], vec![12]] {
            let e = Merged::padded(
                "w",
                InputTensor::Candle(base.clone()),
                to.clone(),
                Vec::new(),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("reshape_weight"), "{to:?}: {e}");
        }
        let m = padded(&[3, 4], &[5, 4]);
        assert_eq!(m.info(), &TensorInfo::new(vec![5, 4], Dtype::F32));
        assert_eq!(m.padded_from(), Some(&[3, 4][..]));
    }
}
