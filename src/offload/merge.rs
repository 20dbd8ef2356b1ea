//! Merged tensors, evaluated one range at a time as the writer asks for it.
//!
//! The arithmetic is [`Merged`]'s (ComfyUI's patch order, one rounding per f32 operation); the
//! result is rounded once into the output dtype. Two evaluators compute it:
//!
//! - on the host, fused into the fill: each operand's range is read as f32 (from its file, a CPU
//!   tensor, or a device tensor's range), combined in place, then cast into the staging buffer;
//! - on a device, with candle's ops: operands already on that device are combined there (no host
//!   round trip), others are uploaded range by range; only the result crosses the bus, cast to
//!   f16/bf16 on the device when that is the output dtype and the device rounds as the host does
//!   ([`super::device::device_cast`]). The CPU device runs this same code, which is how its
//!   arithmetic is tested against the host evaluator, bit for bit.
//!
//! Both count the NaN/±Inf values of the f32 result *before* it is rounded into the output dtype
//! (the device on the device, before its cast), so the count does not depend on the evaluator: a
//! finite result that overflows the output dtype is not counted, an Inf that fp8 saturates is.
//!
//! A LoRA's product is made for the target rows a range touches only, so no full-size difference
//! is ever held (`lowrank` on the host, a matmul of those rows on a device).

use std::ops::Range;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::{host_bytes, lowrank, Scratch};
use crate::cast;
use crate::error::{Error, Result};
use crate::model::dtype::Dtype;
use crate::model::merged::{merged_key, source_key, LoraFactors, Merged, PatchValue, Shared};
use crate::model::InputTensor;
use crate::quant::Precision;

/// A LoRA's factors as f32 matrices on a device: `up [rows, rank]` and `down [rank, columns]`
/// (with `mid` already folded into `down`).
struct LoraMatrices {
    up: Tensor,
    down: Tensor,
}

/// Fills `out` with units `units` of `m` in `dst`, and returns the NaN/Inf count of the result.
pub(super) fn fill_merged(
    m: &Merged,
    name: &str,
    units: Range<usize>,
    out: &mut [u8],
    dst: Dtype,
    scratch: &mut Scratch,
) -> Result<u64> {
    if let Some(device) = m.evaluation_device() {
        scratch.operands.begin(m.shared());
        let r = eval_on(&device, m, units.clone(), scratch)?;
        return super::device::from_device(&r, 0..units.len(), name, out, dst);
    }
    // A cache-sized block at a time: the operands' values are read, combined and cast while
    // they are in cache.
    // A LoRA-patched tensor goes by whole tiles of its product's rows (see `lowrank`).
    let has_lora = m
        .patches()
        .iter()
        .any(|p| matches!(p.value, PatchValue::Lora(_)));
    let block = match has_lora {
        true => (BLOCK / (6 * row_len(m))).max(1) * 6 * row_len(m),
        false => BLOCK,
    };
    let dw = crate::plan::unit_width(dst);
    let mut vals = vec![0f32; units.len().min(block)];
    let mut non_finite = 0;
    let mut at = units.start;
    while at < units.end {
        // Blocks end on multiples of `block` in the tensor, whatever range the writer asks for.
        let n = (units.end - at).min(block - at % block);
        let vals = &mut vals[..n];
        scratch.operands.begin(m.shared());
        eval(m, at..at + n, vals, scratch)?;
        let o = (at - units.start) * dw;
        non_finite += cast::convert(
            name,
            as_bytes(vals),
            Dtype::F32,
            &mut out[o..o + n * dw],
            dst,
        )?;
        at += n;
    }
    Ok(non_finite)
}

/// Elements combined at once: 256 KiB of f32 per operand, well inside a core's L2 cache.
const BLOCK: usize = 64 << 10;

/// Every element of `m` as f32 bytes (for the small tensors a conversion needs whole).
pub(super) fn merged_bytes(m: &Merged, scratch: &mut Scratch) -> Result<Vec<u8>> {
    Ok(as_bytes(&merged_f32(m, scratch)?).to_vec())
}

/// Every element of `m` in f32.
pub(super) fn merged_f32(m: &Merged, scratch: &mut Scratch) -> Result<Vec<f32>> {
    let n = m.info().numel();
    if let Some(device) = m.evaluation_device() {
        scratch.operands.begin(m.shared());
        return Ok(eval_on(&device, m, 0..n, scratch)?.to_vec1()?);
    }
    let mut vals = vec![0f32; n];
    scratch.operands.begin(m.shared());
    eval(m, 0..n, &mut vals, scratch)?;
    Ok(vals)
}

/// Ranges of what an expression reads more than once (the same input, or the same intermediate
/// result, used by several nodes of a graph: [`Shared`]), kept while one block of the result is
/// computed, so each is read or computed once per output range.
#[derive(Default)]
pub(super) struct OperandCache {
    sources: Vec<usize>,
    merged: Vec<usize>,
    /// On the host: `(key, units, values)`, key a [`source_key`] or a [`merged_key`] (distinct
    /// addresses: a file entry and an expression are different objects).
    kept: Vec<(usize, Range<usize>, Vec<f32>)>,
    /// On a device: results of nested expressions, `(merged_key, units, values)`.
    kept_on: Vec<(usize, Range<usize>, Tensor)>,
}

impl OperandCache {
    /// Starts a block of an expression whose repeated operands are `shared`.
    pub(super) fn begin(&mut self, shared: &Shared) {
        self.sources.clone_from(&shared.sources);
        self.merged.clone_from(&shared.merged);
        self.kept.clear();
        self.kept_on.clear();
    }

    /// `t`'s key when it is shared: a file tensor or a nested expression read more than once.
    fn key(&self, t: &InputTensor) -> Option<usize> {
        match t {
            InputTensor::Merged(m) => self.merged_key(m),
            t => source_key(t).filter(|k| self.sources.contains(k)),
        }
    }

    /// `m`'s key when it is a nested expression read more than once.
    fn merged_key(&self, m: &Arc<Merged>) -> Option<usize> {
        Some(merged_key(m)).filter(|k| self.merged.contains(k))
    }

    fn get(&self, key: usize, units: &Range<usize>) -> Option<&[f32]> {
        self.kept
            .iter()
            .find(|(k, r, _)| *k == key && r == units)
            .map(|(_, _, v)| v.as_slice())
    }

    fn get_on(&self, key: usize, units: &Range<usize>) -> Option<Tensor> {
        self.kept_on
            .iter()
            .find(|(k, r, _)| *k == key && r == units)
            .map(|(_, _, v)| v.clone())
    }
}

/// Units `units` of `m`, in f32, on the host.
fn eval(m: &Merged, units: Range<usize>, out: &mut [f32], scratch: &mut Scratch) -> Result<()> {
    if let Some(node) = m.method_node() {
        return super::method::eval(m, node, units, out, scratch);
    }
    read_base(m, units.clone(), out, scratch)?;
    let cols = row_len(m);
    let mut value = Vec::new();
    for (i, p) in m.patches().iter().enumerate() {
        let sm = p.strength_model;
        // A tensor patch that adds scales and adds in one pass; any other scales first.
        let adds_tensor = matches!(p.value, PatchValue::Tensor(_)) && p.strength != 0.0;
        if sm != 1.0 && !adds_tensor {
            out.iter_mut().for_each(|w| *w *= sm);
        }
        match &p.value {
            PatchValue::Tensor(_) if adds_tensor => {
                value.resize(out.len(), 0f32);
                read_f32(m, i + 1, units.clone(), &mut value, scratch)?;
                let s = p.strength;
                // `w · sm` then `+ s · v`, each rounded: the two steps in one pass.
                if sm != 1.0 {
                    out.iter_mut()
                        .zip(&value)
                        .for_each(|(w, v)| *w = *w * sm + s * v);
                } else {
                    out.iter_mut().zip(&value).for_each(|(w, v)| *w += s * v);
                }
            }
            PatchValue::Tensor(_) => {}
            PatchValue::Lora(l) => {
                let h = scratch.lora(l)?;
                for (target, first) in row_runs(&l.rows, &units, cols) {
                    let dst = &mut out[target.start - units.start..target.end - units.start];
                    lowrank::add_product(dst, first, &h.up, &h.down, p.strength);
                }
            }
            PatchValue::Diff(r) if p.strength != 0.0 => {
                let s = p.strength;
                for (target, at) in row_runs(&r.rows, &units, cols) {
                    value.resize(target.len(), 0f32);
                    let v = &mut value[..target.len()];
                    read_f32(m, i + 1, at..at + target.len(), v, scratch)?;
                    let dst = &mut out[target.start - units.start..target.end - units.start];
                    dst.iter_mut().zip(v.iter()).for_each(|(w, v)| *w += s * v);
                }
            }
            PatchValue::Diff(_) => {}
            PatchValue::Set(r) => {
                for (target, at) in row_runs(&r.rows, &units, cols) {
                    let dst = &mut out[target.start - units.start..target.end - units.start];
                    read_f32(m, i + 1, at..at + target.len(), dst, scratch)?;
                }
            }
        }
    }
    round_to(m.rounds_to(), out);
    Ok(())
}

/// Rounds `vals` to `dtype` (to nearest even) and back, for a cast ([`Merged::cast`]): the
/// quantizers' own rounding ([`Precision::round`]).
fn round_to(dtype: Option<Dtype>, vals: &mut [f32]) {
    if let Some(p) = dtype.map(Precision::of_output) {
        vals.iter_mut().for_each(|v| *v = p.round(*v));
    }
}

/// Units `units` of `m`'s base, zero-padded where `m` pads it, into `out`.
fn read_base(
    m: &Merged,
    units: Range<usize>,
    out: &mut [f32],
    scratch: &mut Scratch,
) -> Result<()> {
    if m.padded_from().is_none() {
        return read_f32(m, 0, units, out, scratch);
    }
    out.fill(0.0);
    for (r, at) in m.base_runs(units.clone()) {
        let dst = &mut out[r.start - units.start..r.end - units.start];
        read_f32(m, 0, at..at + r.len(), dst, scratch)?;
    }
    Ok(())
}

/// Operand `i` of `m`: 0 the base, `i` the tensor patch `i - 1` adds.
fn operand(m: &Merged, i: usize) -> Result<&InputTensor> {
    m.tensor_operand(i)
        .ok_or_else(|| Error::InvalidInput(format!("patch {i} adds no tensor to read")))
}

/// Operand `i` of `m` (see [`operand`]), units `units`, as f32.
pub(super) fn read_f32(
    m: &Merged,
    i: usize,
    units: Range<usize>,
    out: &mut [f32],
    scratch: &mut Scratch,
) -> Result<()> {
    let t = operand(m, i)?;
    let shared = scratch.operands.key(t);
    if let Some(key) = shared {
        if let Some(v) = scratch.operands.get(key, &units) {
            out.copy_from_slice(v);
            return Ok(());
        }
    }
    if let InputTensor::Merged(inner) = t {
        eval(inner, units.clone(), out, scratch)?;
    } else {
        let pieces = m.operand_pieces(i)?;
        super::read_f32(pieces, units.clone(), out, scratch)?;
    }
    if let Some(key) = shared {
        scratch.operands.kept.push((key, units, out.to_vec()));
    }
    Ok(())
}

/// Elements per row of `m` (everything after its first dimension).
fn row_len(m: &Merged) -> usize {
    let shape = &m.info().shape;
    shape.iter().skip(1).product::<usize>().max(1)
}

/// A LoRA's factors in host memory, f32: `up [rows, rank]` row-major, `down [rank, cols]` packed.
pub(super) struct HostLora {
    up: Vec<f32>,
    down: lowrank::Packed,
}

impl Scratch {
    /// `l`'s factors in host memory, made once per LoRA module and worker.
    fn lora(&mut self, l: &Arc<LoraFactors>) -> Result<Arc<HostLora>> {
        let id = Arc::as_ptr(l) as usize;
        if let Some((p, m)) = &self.lora {
            if *p == id {
                return Ok(Arc::clone(m));
            }
        }
        let m = lora_matrices(l, &Device::Cpu, self)?;
        let down: Vec<f32> = m.down.flatten_all()?.to_vec1()?;
        let h = Arc::new(HostLora {
            up: m.up.flatten_all()?.to_vec1()?,
            down: lowrank::Packed::new(&down, l.rank()),
        });
        self.lora = Some((id, Arc::clone(&h)));
        Ok(h)
    }
}

/// `l`'s factors on `device`, f32: `up` flattened to `[rows, rank]`, `down` to `[rank, cols]`
/// with `mid` folded in as ComfyUI does (`comfy/weight_adapter/lora.py`).
fn lora_matrices(l: &LoraFactors, device: &Device, scratch: &mut Scratch) -> Result<LoraMatrices> {
    let mut load = |t: &InputTensor| -> Result<Tensor> {
        let info = t.info();
        let t = match t {
            InputTensor::Candle(c) if c.device().same_device(device) => {
                super::order::read(c).to_dtype(DType::F32)?
            }
            InputTensor::Merged(m) => {
                Tensor::from_vec(merged_f32(m, scratch)?, info.shape.clone(), device)?
            }
            other => {
                let bytes = host_bytes(other)?;
                let mut f = vec![0f32; info.numel()];
                cast::convert(
                    "LoRA factor",
                    &bytes,
                    info.dtype,
                    as_bytes_mut(&mut f),
                    Dtype::F32,
                )?;
                Tensor::from_vec(f, info.shape.clone(), device)?
            }
        };
        Ok(t)
    };
    let up = load(&l.up)?;
    let down = load(&l.down)?;
    let rank = l.rank();
    let up = up.reshape((up.dim(0)?, rank))?;
    let down = match &l.mid {
        None => down.reshape((rank, l.columns()))?,
        Some(mid) => {
            let mid = load(mid)?;
            let (r, inner, kh, kw) = mid.dims4()?;
            let down_t = down
                .reshape((rank, down.elem_count() / rank))?
                .t()?
                .contiguous()?;
            let mid_t = mid
                .transpose(0, 1)?
                .contiguous()?
                .reshape((inner, r * kh * kw))?;
            let prod = down_t.matmul(&mid_t)?;
            let d_in = down_t.dim(0)?;
            prod.reshape((d_in, r, kh, kw))?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((r, d_in * kh * kw))?
        }
    };
    Ok(LoraMatrices {
        up: up.contiguous()?,
        down: down.contiguous()?,
    })
}

/// Units `units` of `m`, f32, computed on `device` with candle's ops, as a 1-D tensor there.
fn eval_on(
    device: &Device,
    m: &Merged,
    units: Range<usize>,
    scratch: &mut Scratch,
) -> Result<Tensor> {
    let scalar = |v: f32| Tensor::new(v, device);
    if m.method_node().is_some() {
        // A method's facts and values are computed by the host; the result is uploaded.
        let mut vals = vec![0f32; units.len()];
        eval(m, units.clone(), &mut vals, scratch)?;
        return Ok(Tensor::from_vec(vals, units.len(), device)?);
    }
    let mut w = match m.padded_from() {
        None => operand_on(device, m, 0, units.clone(), scratch)?,
        // The padding is laid out on the host (a LoRA's reshape: one small tensor).
        Some(_) => {
            let mut vals = vec![0f32; units.len()];
            read_base(m, units.clone(), &mut vals, scratch)?;
            Tensor::from_vec(vals, units.len(), device)?
        }
    };
    let cols = row_len(m);
    for (i, p) in m.patches().iter().enumerate() {
        if p.strength_model != 1.0 {
            w = w.broadcast_mul(&scalar(p.strength_model)?)?;
        }
        match &p.value {
            PatchValue::Tensor(_) | PatchValue::Diff(_) if p.strength == 0.0 => {}
            PatchValue::Tensor(_) => {
                let v = operand_on(device, m, i + 1, units.clone(), scratch)?;
                w = (w + v.broadcast_mul(&scalar(p.strength)?)?)?;
            }
            PatchValue::Lora(l) => {
                let mats = lora_matrices(l, device, scratch)?;
                let runs = row_runs(&l.rows, &units, cols);
                w = splice(&w, &units, runs, |cur, target, first| {
                    let block = lora_block_on(&mats, first / cols, target, cols)?;
                    Ok((cur + block.broadcast_mul(&scalar(p.strength)?)?)?)
                })?;
            }
            PatchValue::Diff(r) => {
                let runs = row_runs(&r.rows, &units, cols);
                w = splice(&w, &units, runs, |cur, target, at| {
                    let v = operand_on(device, m, i + 1, at..at + target.len(), scratch)?;
                    Ok((cur + v.broadcast_mul(&scalar(p.strength)?)?)?)
                })?;
            }
            PatchValue::Set(r) => {
                let runs = row_runs(&r.rows, &units, cols);
                w = splice(&w, &units, runs, |_, target, at| {
                    operand_on(device, m, i + 1, at..at + target.len(), scratch)
                })?;
            }
        }
    }
    let rounded = match m.rounds_to() {
        Some(Dtype::F16) => Some(DType::F16),
        Some(Dtype::BF16) => Some(DType::BF16),
        _ => None,
    };
    if let Some(d) = rounded {
        w = w.to_dtype(d)?.to_dtype(DType::F32)?;
    }
    Ok(w)
}

/// `w` (units `units`) with each run's elements replaced by what `f` makes of them (given the
/// current values, the run and its value offset); elements outside the runs stay as they are
/// (adding zeros there would turn −0 into +0).
fn splice(
    w: &Tensor,
    units: &Range<usize>,
    runs: Vec<(Range<usize>, usize)>,
    mut f: impl FnMut(Tensor, &Range<usize>, usize) -> Result<Tensor>,
) -> Result<Tensor> {
    if runs.is_empty() {
        return Ok(w.clone());
    }
    let mut parts = Vec::new();
    let mut at = units.start;
    for (target, first) in runs {
        if target.start > at {
            parts.push(w.narrow(0, at - units.start, target.start - at)?);
        }
        let cur = w.narrow(0, target.start - units.start, target.len())?;
        parts.push(f(cur, &target, first)?);
        at = target.end;
    }
    if at < units.end {
        parts.push(w.narrow(0, at - units.start, units.end - at)?);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// The runs of target elements a row-mapped value (`(value rows, first target row)` runs)
/// patches inside `units`, in order, each with the value's element its first one takes.
fn row_runs(
    rows: &[(Range<usize>, usize)],
    units: &Range<usize>,
    cols: usize,
) -> Vec<(Range<usize>, usize)> {
    let mut runs: Vec<(Range<usize>, usize)> = rows
        .iter()
        .filter_map(|(value, at)| {
            let e0 = (at * cols).max(units.start);
            let e1 = ((at + value.len()) * cols).min(units.end);
            (e0 < e1).then(|| (e0..e1, (value.start + e0 / cols - at) * cols + e0 % cols))
        })
        .collect();
    runs.sort_by_key(|(r, _)| r.start);
    runs
}

/// The product's values on target elements `target`, whose first lies in product row `row`, on
/// the device.
fn lora_block_on(
    mats: &LoraMatrices,
    row: usize,
    target: &Range<usize>,
    cols: usize,
) -> Result<Tensor> {
    let (t0, t1) = (target.start / cols, target.end.div_ceil(cols));
    let block = mats
        .up
        .narrow(0, row, t1 - t0)?
        .matmul(&mats.down)?
        .flatten_all()?;
    Ok(block.narrow(0, target.start - t0 * cols, target.len())?)
}

/// Operand `i` of `m` on `device`, units `units`, f32.
fn operand_on(
    device: &Device,
    m: &Merged,
    i: usize,
    units: Range<usize>,
    scratch: &mut Scratch,
) -> Result<Tensor> {
    match operand(m, i)? {
        InputTensor::Candle(c) if c.device().same_device(device) => Ok(super::order::read(c)
            .flatten_all()?
            .narrow(0, units.start, units.len())?
            .to_dtype(DType::F32)?),
        InputTensor::Merged(inner) => {
            let key = scratch.operands.merged_key(inner);
            if let Some(v) = key.and_then(|k| scratch.operands.get_on(k, &units)) {
                return Ok(v);
            }
            let v = eval_on(device, inner, units.clone(), scratch)?;
            if let Some(k) = key {
                scratch.operands.kept_on.push((k, units, v.clone()));
            }
            Ok(v)
        }
        _ => {
            let mut vals = vec![0f32; units.len()];
            read_f32(m, i, units, &mut vals, scratch)?;
            let n = vals.len();
            Ok(Tensor::from_vec(vals, n, device)?)
        }
    }
}

pub(crate) fn as_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any initialised memory may be read as bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

pub(crate) fn as_bytes_mut(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: every bit pattern is a valid f32, so any bytes written through the view are too;
    // the view covers exactly the slice's memory and u8 has alignment 1.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::merged::Patch;

    /// `levels` merges, each of the one before with itself (`x·0.5 + 0.5·x`, which is `x`
    /// exactly): 2^levels paths down to `leaf`.
    fn diamond(leaf: &Tensor, levels: usize, device: Option<Device>) -> Merged {
        let mut t = InputTensor::Candle(leaf.clone());
        for _ in 1..levels {
            t = InputTensor::Merged(Arc::new(level(t)));
        }
        let top = level(t);
        match device {
            Some(d) => top.on(d),
            None => top,
        }
    }

    fn level(t: InputTensor) -> Merged {
        let patch = Patch {
            strength: 0.5,
            strength_model: 0.5,
            value: PatchValue::Tensor(t.clone()),
        };
        Merged::new("w", t, vec![patch]).unwrap()
    }

    #[test]
    fn an_expression_used_twice_at_every_level_is_computed_once() {
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let leaf = Tensor::from_vec(x.clone(), 1000, &Device::Cpu).unwrap();
        // 2^60 evaluations of the leaf without the cache: this test would not end.
        let m = diamond(&leaf, 60, None);
        assert_eq!(m.shared().merged.len(), 59);
        assert_eq!(merged_f32(&m, &mut Scratch::default()).unwrap(), x);
        let mut out = vec![0u8; 1000 * 2];
        let n = fill_merged(
            &m,
            "w",
            0..1000,
            &mut out,
            Dtype::F16,
            &mut Scratch::default(),
        );
        assert_eq!(n.unwrap(), 0);
        // The device evaluator (candle's ops, here on the CPU device) keeps them too.
        let m = diamond(&leaf, 60, Some(Device::Cpu));
        assert_eq!(merged_f32(&m, &mut Scratch::default()).unwrap(), x);
    }
}
