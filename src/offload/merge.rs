//! Merged tensors, evaluated one range at a time as the writer asks for it.
//!
//! The arithmetic is [`Merged`]'s (ComfyUI's patch order, one rounding per f32 operation); the
//! result is rounded once into the output dtype. Two evaluators compute it:
//!
//! - on the host, fused into the fill: each operand's range is read as f32 (from its file, a CPU
//!   tensor, or a device tensor's range), combined in place, then cast into the staging buffer;
//! - on a device, with candle's ops: operands already on that device are combined there (no host
//!   round trip), others are uploaded range by range; only the result crosses the bus, cast to
//!   f16/bf16 on the device when that is the output dtype. The CPU device runs this same code,
//!   which is how its arithmetic is tested against the host evaluator, bit for bit.
//!
//! A LoRA's product is made for the target rows a range touches only (`up[rows] @ down`), so no
//! full-size difference is ever held.

use std::ops::Range;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::{fill, host_bytes, Scratch};
use crate::cast;
use crate::error::{Error, Result};
use crate::model::dtype::Dtype;
use crate::model::merged::{LoraFactors, Merged, PatchValue};
use crate::model::InputTensor;
use crate::plan::Piece;

/// A LoRA's factors as f32 matrices: `up [rows, rank]` and `down [rank, columns]` (with `mid`
/// already folded into `down`), kept for the tensor a worker is on.
pub(super) struct LoraMatrices {
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
        let r = eval_on(&device, m, units.clone(), scratch)?;
        return super::from_device(&r, 0..units.len(), dst, |src, from| {
            cast::convert(name, src, from, out, dst)
        });
    }
    let mut vals = vec![0f32; units.len()];
    eval(m, units, &mut vals, scratch)?;
    cast::convert(name, as_bytes(&vals), Dtype::F32, out, dst)
}

/// Every element of `m` as f32 bytes (for the small tensors a conversion needs whole).
pub(super) fn merged_bytes(m: &Merged, scratch: &mut Scratch) -> Result<Vec<u8>> {
    let n = m.info().numel();
    if let Some(device) = m.evaluation_device() {
        let r = eval_on(&device, m, 0..n, scratch)?;
        return super::from_device(&r, 0..n, Dtype::F32, |src, _| Ok(src.to_vec()));
    }
    let mut vals = vec![0f32; n];
    eval(m, 0..vals.len(), &mut vals, scratch)?;
    Ok(as_bytes(&vals).to_vec())
}

/// Units `units` of `m`, in f32, on the host.
fn eval(m: &Merged, units: Range<usize>, out: &mut [f32], scratch: &mut Scratch) -> Result<()> {
    read_f32(m, 0, units.clone(), out, scratch)?;
    let mut value = Vec::new();
    for (i, p) in m.patches().iter().enumerate() {
        if p.strength_model != 1.0 {
            out.iter_mut().for_each(|w| *w *= p.strength_model);
        }
        match &p.value {
            PatchValue::Tensor(_) if p.strength == 0.0 => {}
            PatchValue::Tensor(_) => {
                value.resize(out.len(), 0f32);
                read_f32(m, i + 1, units.clone(), &mut value, scratch)?;
                let s = p.strength;
                out.iter_mut().zip(&value).for_each(|(w, v)| *w += s * v);
            }
            PatchValue::Lora(l) => {
                let cols = row_len(m);
                let mats = scratch.lora(l)?;
                for (target, block) in lora_blocks(l, &mats, &units, cols)? {
                    let dst = &mut out[target.start - units.start..target.end - units.start];
                    let s = p.strength;
                    dst.iter_mut().zip(&block).for_each(|(w, d)| *w += s * d);
                }
            }
        }
    }
    Ok(())
}

/// Operand `i` of `m` (0: the base, `i`: the value of patch `i - 1`), units `units`, as f32.
fn read_f32(
    m: &Merged,
    i: usize,
    units: Range<usize>,
    out: &mut [f32],
    scratch: &mut Scratch,
) -> Result<()> {
    let t = match i {
        0 => m.base(),
        _ => match &m.patches()[i - 1].value {
            PatchValue::Tensor(t) => t,
            PatchValue::Lora(_) => {
                return Err(Error::InvalidInput("a LoRA is not read as a tensor".into()))
            }
        },
    };
    if let InputTensor::Merged(inner) = t {
        return eval(inner, units, out, scratch);
    }
    let pieces = m.operand_pieces(i)?;
    read_pieces(pieces, units, out, scratch)
}

/// Units `units` of a tensor planned as `pieces` (f32 destination, consecutive), into `out`.
fn read_pieces(
    pieces: &[Piece],
    units: Range<usize>,
    out: &mut [f32],
    scratch: &mut Scratch,
) -> Result<()> {
    let mut at = 0usize;
    for p in pieces {
        let (s, e) = (units.start.max(at), units.end.min(at + p.units));
        if s < e {
            let dst = as_bytes_mut(&mut out[s - units.start..e - units.start]);
            fill(p, "merge operand", s - at..e - at, dst, scratch)?;
        }
        at += p.units;
    }
    Ok(())
}

/// Elements per row of `m` (everything after its first dimension).
fn row_len(m: &Merged) -> usize {
    let shape = &m.info().shape;
    shape.iter().skip(1).product::<usize>().max(1)
}

/// The LoRA product's values on the target elements `units` touches: `(target elements,
/// values)` runs, computed for the touched rows only.
fn lora_blocks(
    l: &LoraFactors,
    mats: &LoraMatrices,
    units: &Range<usize>,
    cols: usize,
) -> Result<Vec<(Range<usize>, Vec<f32>)>> {
    let (first_row, end_row) = (units.start / cols, units.end.div_ceil(cols));
    let mut out = Vec::new();
    for (prod, at) in &l.rows {
        let (t0, t1) = (first_row.max(*at), end_row.min(at + prod.len()));
        if t0 >= t1 {
            continue;
        }
        let p0 = prod.start + (t0 - at);
        let up = mats.up.narrow(0, p0, t1 - t0)?;
        let block = up.matmul(&mats.down)?.flatten_all()?.to_vec1::<f32>()?;
        // Trim to the elements of `units` (a range may start or end inside a row).
        let (e0, e1) = ((t0 * cols).max(units.start), (t1 * cols).min(units.end));
        let skip = e0 - t0 * cols;
        out.push((e0..e1, block[skip..skip + (e1 - e0)].to_vec()));
    }
    Ok(out)
}

impl Scratch {
    /// `l`'s factors as f32 matrices, made once per LoRA module and worker.
    fn lora(&mut self, l: &Arc<LoraFactors>) -> Result<Arc<LoraMatrices>> {
        let id = Arc::as_ptr(l) as usize;
        if let Some((p, m)) = &self.lora {
            if *p == id {
                return Ok(Arc::clone(m));
            }
        }
        let m = Arc::new(lora_matrices(l, &Device::Cpu, self)?);
        self.lora = Some((id, Arc::clone(&m)));
        Ok(m)
    }
}

/// `l`'s factors on `device`, f32: `up` flattened to `[rows, rank]`, `down` to `[rank, cols]`
/// with `mid` folded in as ComfyUI does (`comfy/weight_adapter/lora.py`).
fn lora_matrices(l: &LoraFactors, device: &Device, scratch: &mut Scratch) -> Result<LoraMatrices> {
    let mut load = |t: &InputTensor| -> Result<Tensor> {
        let info = t.info();
        let t = match t {
            InputTensor::Candle(c) if c.device().same_device(device) => c.to_dtype(DType::F32)?,
            InputTensor::Merged(m) => {
                Tensor::from_vec(f32s(&merged_bytes(m, scratch)?), info.shape.clone(), device)?
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
    let mut w = operand_on(device, m, 0, units.clone(), scratch)?;
    for (i, p) in m.patches().iter().enumerate() {
        if p.strength_model != 1.0 {
            w = w.broadcast_mul(&scalar(p.strength_model)?)?;
        }
        match &p.value {
            PatchValue::Tensor(_) if p.strength == 0.0 => {}
            PatchValue::Tensor(_) => {
                let v = operand_on(device, m, i + 1, units.clone(), scratch)?;
                w = (w + v.broadcast_mul(&scalar(p.strength)?)?)?;
            }
            PatchValue::Lora(l) => {
                let mats = lora_matrices(l, device, scratch)?;
                let cols = row_len(m);
                // Untouched elements stay as they are (adding zeros would turn −0 into +0).
                let mut parts = Vec::new();
                let mut at = units.start;
                for (target, _) in lora_blocks_on(l, &units, cols) {
                    if target.start > at {
                        parts.push(w.narrow(0, at - units.start, target.start - at)?);
                    }
                    let block = lora_block_on(&mats, l, &target, cols)?;
                    let cur = w.narrow(0, target.start - units.start, target.len())?;
                    parts.push((cur + block.broadcast_mul(&scalar(p.strength)?)?)?);
                    at = target.end;
                }
                if at < units.end {
                    parts.push(w.narrow(0, at - units.start, units.end - at)?);
                }
                w = Tensor::cat(&parts, 0)?;
            }
        }
    }
    Ok(w)
}

/// The target element runs of `l` inside `units` (in order), without their values.
fn lora_blocks_on(
    l: &LoraFactors,
    units: &Range<usize>,
    cols: usize,
) -> Vec<(Range<usize>, usize)> {
    let mut runs: Vec<(Range<usize>, usize)> = l
        .rows
        .iter()
        .filter_map(|(prod, at)| {
            let e0 = (at * cols).max(units.start);
            let e1 = ((at + prod.len()) * cols).min(units.end);
            (e0 < e1).then(|| (e0..e1, prod.start + (e0 / cols - at)))
        })
        .collect();
    runs.sort_by_key(|(r, _)| r.start);
    runs
}

/// The product's values on target elements `target`, on the device.
fn lora_block_on(
    mats: &LoraMatrices,
    l: &LoraFactors,
    target: &Range<usize>,
    cols: usize,
) -> Result<Tensor> {
    let (t0, t1) = (target.start / cols, target.end.div_ceil(cols));
    let (prod, at) = l
        .rows
        .iter()
        .find(|(p, at)| t0 >= *at && t0 < at + p.len())
        .ok_or_else(|| Error::InvalidInput("a LoRA range outside its rows".into()))?;
    let p0 = prod.start + (t0 - at);
    let block = mats
        .up
        .narrow(0, p0, t1 - t0)?
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
    let t = match i {
        0 => m.base(),
        _ => match &m.patches()[i - 1].value {
            PatchValue::Tensor(t) => t,
            PatchValue::Lora(_) => {
                return Err(Error::InvalidInput("a LoRA is not read as a tensor".into()))
            }
        },
    };
    match t {
        InputTensor::Candle(c) if c.device().same_device(device) => Ok(c
            .flatten_all()?
            .narrow(0, units.start, units.len())?
            .to_dtype(DType::F32)?),
        InputTensor::Merged(inner) => eval_on(device, inner, units, scratch),
        _ => {
            let mut vals = vec![0f32; units.len()];
            read_f32(m, i, units, &mut vals, scratch)?;
            let n = vals.len();
            Ok(Tensor::from_vec(vals, n, device)?)
        }
    }
}

fn as_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any initialised memory may be read as bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

fn as_bytes_mut(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: every bit pattern is a valid f32, so any bytes written through the view are too;
    // the view covers exactly the slice's memory and u8 has alignment 1.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
