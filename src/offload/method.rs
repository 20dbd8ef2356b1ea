//! Whole-tensor merge methods, evaluated: their facts computed once per tensor, then output
//! ranges produced elementwise from the operands' ranges (see
//! [`crate::model::tensor::method`]).
//!
//! Memory: the facts take one read of the operands for the Gram matrix and two more for all the
//! k-th magnitudes together, [`CHUNK`] values per operand and vector at a time, plus two
//! 65,536-entry histograms per vector; the values take one block of each operand. Nothing holds
//! a whole tensor but the ranks sd-mecha's DELLA asks for ([`Needs::ranks`]): one read and one
//! sort per vector, then 4 bytes per element and vector held by the method node while the
//! tensor's values are produced, dropped after its last element ([`crate::reduce::Held`]). The
//! facts' chunk buffers stay with the worker between tensors ([`Buffers`]), and a large
//! tensor's bracket pass runs on two threads, each with its own.

mod derived;
mod gram;
mod kth;
mod ranks;

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use self::gram::add_gram;
use super::merge::read_f32;
use super::Scratch;
use crate::error::{Error, Result};
use crate::model::dtype::Dtype;
use crate::model::merged::{merged_key, MethodNode};
use crate::model::tensor::method::{Facts, Needs, Ranks, Vector};
use crate::model::{InputTensor, Merged};
use crate::plan::PieceSource;
use crate::reduce::CHUNK;

/// Buffers of the facts passes, kept by a worker from one tensor to the next: fresh ones cost a
/// page fault and a cleared page per 4 KiB on first touch, as much again as the counting.
#[derive(Default)]
pub(crate) struct Buffers {
    /// The operands' values over a chunk ([`each_range`]).
    ops: Vec<Vec<f32>>,
    /// Each vector's sampled magnitudes, then those in its bracket ([`kth`]).
    kept: Vec<Vec<u32>>,
    /// The operands' bytes over a chunk ([`raw_gram`]).
    raw: Vec<Vec<u8>>,
}

/// Values of each operand a method's output is computed from at a time (16,384: the operands,
/// the method's temporaries and the output of a block fit a core's L2 cache).
const BLOCK: usize = 16 << 10;

/// Units `units` of the method node `node` of `m`, in f32, into `out`.
pub(super) fn eval(
    m: &Merged,
    node: &MethodNode,
    units: Range<usize>,
    out: &mut [f32],
    scratch: &mut Scratch,
) -> Result<()> {
    let shape = &m.info().shape;
    let needs = node.op.needs(shape);
    let ranks = held_ranks(m, node, &needs, scratch)?;
    let scalars = scalars(m, node, &needs, ranks.as_deref(), scratch)?;
    let ranks_now: &[Arc<Ranks>] = ranks.as_deref().map_or(&[], Vec::as_slice);
    let n = m.info().numel();
    let align = needs.align.max(1);
    // Whole runs of `align` elements around the range asked for.
    let start = units.start / align * align;
    let end = units.end.div_ceil(align).saturating_mul(align).min(n);
    // Block by block, so that the operands, the method's temporaries and the output stay in
    // a core's cache (a unit can be a whole tensor of millions of values).
    let block = (BLOCK / align).max(1) * align;
    let operands = 1 + node.inputs.len();
    let mut bufs = vec![vec![0f32; block.min(end - start)]; operands];
    let mut edge = Vec::new();
    let mut at = start;
    while at < end {
        let stop = (at + block).min(end);
        scratch.operands.begin(m.shared());
        for (i, b) in bufs.iter_mut().enumerate() {
            b.resize(stop - at, 0.0);
            read_f32(m, i, at..stop, b, scratch)?;
        }
        let views: Vec<&[f32]> = bufs.iter().map(Vec::as_slice).collect();
        // The part of this block inside the range asked for.
        let (from, to) = (at.max(units.start), stop.min(units.end));
        let dst = &mut out[from - units.start..to - units.start];
        if from == at && to == stop {
            node.op.apply(&scalars, ranks_now, at, &views, dst);
        } else {
            edge.resize(stop - at, 0f32);
            node.op.apply(&scalars, ranks_now, at, &views, &mut edge);
            dst.copy_from_slice(&edge[from - at..to - at]);
        }
        at = stop;
    }
    if ranks.is_some() {
        // The ranks are dropped once every element of the tensor is produced.
        node.ranks.produced(units.len(), n);
    }
    Ok(())
}

/// The ranks the method asks for, held by the node while the tensor is produced (`None` when
/// it asks for none).
fn held_ranks(
    m: &Merged,
    node: &MethodNode,
    needs: &Needs,
    scratch: &mut Scratch,
) -> Result<Option<Arc<Vec<Arc<Ranks>>>>> {
    if needs.ranks.is_empty() {
        return Ok(None);
    }
    let n = m.info().numel();
    node.ranks
        .get_or_compute(|| ranks::ranks(m, &needs.vectors, &needs.ranks, n, scratch))
        .map(Some)
}

/// The method's scalars for this tensor, computed once (the first asker computes, the others
/// wait).
fn scalars(
    m: &Merged,
    node: &MethodNode,
    needs: &Needs,
    ranks: Option<&Vec<Arc<Ranks>>>,
    scratch: &mut Scratch,
) -> Result<Arc<Vec<f64>>> {
    node.scalars.get_or_compute(|| {
        let facts = facts(m, needs, ranks.map_or(&[], Vec::as_slice), scratch)?;
        node.op.prepare(&facts).map_err(|e| match e {
            Error::InvalidInput(r) => Error::InvalidInput(format!("`{}`: {r}", m.key())),
            e => e,
        })
    })
}

/// Computes the facts of every method node in `m` (nested ones included) that reads ahead: what
/// the prefetcher runs for the tensors ahead of the writer.
///
/// # Errors
/// Read errors of the operands; a method's refusal of a tensor.
pub(crate) fn prepare_ahead(m: &Merged, scratch: &mut Scratch) -> Result<()> {
    prepare_ahead_from(m, &mut HashSet::new(), scratch)
}

/// [`prepare_ahead`] of the expressions not in `seen` (a graph may use one several times).
fn prepare_ahead_from(m: &Merged, seen: &mut HashSet<usize>, scratch: &mut Scratch) -> Result<()> {
    for t in m.operands() {
        if let InputTensor::Merged(inner) = t {
            if seen.insert(merged_key(inner)) {
                prepare_ahead_from(inner, seen, scratch)?;
            }
        }
    }
    if let Some(node) = m.method_node() {
        let needs = node.op.needs(&m.info().shape);
        if needs.reads_ahead() && needs.ranks.is_empty() {
            scalars(m, node, &needs, None, scratch)?;
        } else if needs.reads_ahead() {
            // Ranks computed for a tensor already written would be held to the end.
            let n = m.info().numel();
            let ranks = node
                .ranks
                .ahead(|| ranks::ranks(m, &needs.vectors, &needs.ranks, n, scratch))?;
            if let Some(ranks) = ranks {
                scalars(m, node, &needs, Some(&ranks), scratch)?;
            }
        }
    }
    Ok(())
}

/// Whether `m` (or an expression inside it) has a method that reads its operands ahead.
pub(crate) fn reads_ahead(m: &Merged) -> bool {
    let own = |m: &Merged| {
        m.method_node()
            .is_some_and(|n| n.op.needs(&m.info().shape).reads_ahead())
    };
    let mut any = own(m);
    for t in m.operands() {
        t.visit(&mut |t| any |= matches!(t, InputTensor::Merged(inner) if own(inner)));
    }
    any
}

/// The facts `needs` asks for, over the operands of `m`, with the `ranks` it asks for (computed
/// first: [`held_ranks`]) set on their vectors.
fn facts(m: &Merged, needs: &Needs, ranks: &[Arc<Ranks>], scratch: &mut Scratch) -> Result<Facts> {
    let n = m.info().numel();
    let k = needs.vectors.len();
    let mut vectors = needs.vectors.clone();
    for (&v, r) in needs.ranks.iter().zip(ranks) {
        if let Some(v) = vectors.get_mut(v) {
            v.ranks = Some(Arc::clone(r));
        }
    }
    let mut out = Facts {
        vectors: k,
        ranks: ranks.to_vec(),
        ..Facts::default()
    };
    if needs.gram && n > 0 {
        out.gram = gram(m, &vectors, n, scratch)?;
    } else if needs.gram {
        out.gram = vec![0.0; k * k];
    }
    if !needs.kth.is_empty() {
        out.kth = kth::magnitudes(m, &vectors, &needs.kth, n, scratch)?;
    }
    if needs.derived > 0 {
        out.derived_gram = derived::gram(m, needs, &out, n, scratch)?;
        out.derived = needs.derived;
    }
    Ok(out)
}

/// The Gram matrix of `vectors` in one read of the operands they use.
fn gram(m: &Merged, vectors: &[Vector], n: usize, scratch: &mut Scratch) -> Result<Vec<f64>> {
    let k = vectors.len();
    if let Some(g) = raw_gram(m, vectors, n, scratch)? {
        return Ok(mirror(g, k));
    }
    let used = used_operands(vectors);
    let chunk = CHUNK.min(n);
    let mut vals = vec![vec![0f32; chunk]; k];
    let mut g = vec![0f64; k * k];
    each_range(m, &used, chunks(n, chunk), scratch, |range, views| {
        let len = range.len();
        for (v, buf) in vectors.iter().zip(vals.iter_mut()) {
            if plain(v).is_none() {
                v.fill(views, range.start, &mut buf[..len]);
            }
        }
        // An operand itself is read where it lies instead of copied (SLERP's two vectors).
        let rows: Vec<&[f32]> = vectors
            .iter()
            .zip(&vals)
            .map(|(v, buf)| match plain(v) {
                Some(i) => &views[i][..len],
                None => &buf[..len],
            })
            .collect();
        add_gram(&mut g, &rows);
        true
    })?;
    Ok(mirror(g, k))
}

/// [`gram`] of vectors that are each one f16 or bf16 operand lying whole in a file (SLERP's,
/// model stock's): summed from the bytes read, decoded in registers ([`gram::add_gram_raw`]);
/// `None` for other vectors or where no kernel takes them (then [`gram`] reads them as f32:
/// the same sums).
fn raw_gram(
    m: &Merged,
    vectors: &[Vector],
    n: usize,
    scratch: &mut Scratch,
) -> Result<Option<Vec<f64>>> {
    let mut files = Vec::with_capacity(vectors.len());
    let mut dtype = None;
    for v in vectors {
        let Some(i) = plain(v) else {
            return Ok(None);
        };
        let Ok([piece]) = m.operand_pieces(i) else {
            return Ok(None);
        };
        let PieceSource::File {
            file,
            start,
            offset,
        } = &piece.source
        else {
            return Ok(None);
        };
        let d = piece.src_dtype;
        if !matches!(d, Dtype::F16 | Dtype::BF16)
            || dtype.is_some_and(|t| t != d)
            || piece.units != n
        {
            return Ok(None);
        }
        dtype = Some(d);
        files.push((file, start + (offset * 2) as u64));
    }
    let Some(dtype) = dtype else {
        return Ok(None);
    };
    let k = vectors.len();
    let mut g = vec![0f64; k * k];
    let mut bufs = std::mem::take(&mut scratch.method.raw);
    bufs.resize_with(k, Vec::new);
    let mut summed = true;
    for range in chunks(n, CHUNK.min(n)) {
        for ((file, at), buf) in files.iter().zip(bufs.iter_mut()) {
            buf.resize(range.len() * 2, 0);
            file.read_at(buf, at + (range.start * 2) as u64)?;
        }
        let raws: Vec<&[u8]> = bufs.iter().map(Vec::as_slice).collect();
        if !gram::add_gram_raw(&mut g, &raws, dtype) {
            summed = false;
            break;
        }
    }
    scratch.method.raw = bufs;
    Ok(summed.then_some(g))
}

/// `g` with its lower triangle copied from its upper one.
fn mirror(mut g: Vec<f64>, k: usize) -> Vec<f64> {
    for a in 0..k {
        for b in 0..a {
            g[a * k + b] = g[b * k + a];
        }
    }
    g
}

/// The operand a vector is, unscaled and whole (no dropout), if it is one.
fn plain(v: &Vector) -> Option<usize> {
    match v.terms[..] {
        [(i, 1.0)] if v.dropout.is_none() => Some(i),
        _ => None,
    }
}

/// The operand indices `vectors` read, ascending.
fn used_operands(vectors: &[Vector]) -> Vec<usize> {
    let mut used: Vec<usize> = vectors
        .iter()
        .flat_map(|v| v.terms.iter().map(|(i, _)| *i))
        .collect();
    used.sort_unstable();
    used.dedup();
    used
}

/// Reads the operands `used` of `m` over each of `ranges` in turn (the chunk's shared sources
/// read once) and hands `f` the range and the operands' values by operand index (an operand
/// not used is empty), until `f` returns false: the loop of every facts pass.
fn each_range(
    m: &Merged,
    used: &[usize],
    ranges: impl IntoIterator<Item = Range<usize>>,
    scratch: &mut Scratch,
    mut f: impl FnMut(Range<usize>, &[&[f32]]) -> bool,
) -> Result<()> {
    let mut ops = std::mem::take(&mut scratch.method.ops);
    ops.resize_with(used.iter().max().map_or(0, |x| x + 1), Vec::new);
    for o in &mut ops {
        o.clear();
    }
    for range in ranges {
        scratch.operands.begin(m.shared());
        for &i in used {
            ops[i].resize(range.len(), 0f32);
            read_f32(m, i, range.clone(), &mut ops[i], scratch)?;
        }
        let views: Vec<&[f32]> = ops.iter().map(Vec::as_slice).collect();
        if !f(range, &views) {
            break;
        }
    }
    scratch.method.ops = ops;
    Ok(())
}

/// `0..n` in ranges of `chunk` values.
fn chunks(n: usize, chunk: usize) -> impl Iterator<Item = Range<usize>> {
    let chunk = chunk.max(1);
    (0..n.div_ceil(chunk)).map(move |c| c * chunk..((c + 1) * chunk).min(n))
}
