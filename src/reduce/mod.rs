//! Per-tensor reductions: whole-tensor facts a planned tensor needs before its first byte.
//!
//! A quantized output needs its tensor's absolute maximum (or each row's) before a scale can be
//! written; the merge methods that come next need norms and dot products (SLERP), a k-th
//! magnitude (TIES, DARE), cosines (model stock). A planned tensor declares the [`Reduction`]s it
//! needs; `reduce` computes them range by range from the same sources the fill reads
//! (`Values`), in bounded memory: [`CHUNK`] values per source at a time, plus what the results
//! themselves hold (one f32 per row or per block, a 256 KiB histogram). The cost is a second read
//! of the tensor's sources, which the page cache usually serves (a file) or the device holds (a
//! candle tensor); the k-th magnitude takes two.
//!
//! `Computed` runs a tensor's reductions once, by whichever worker first needs them, while the
//! others wait; `Frontier` lets the writer compute the reductions of the next tensors while
//! the current ones are written, without running ahead of the workers.

mod once;

use std::ops::Range;

use crate::error::{Error, Result};
use crate::model::InputTensor;
use crate::offload::Scratch;
use crate::quant::abs_max;

pub(crate) use once::{Computed, Frontier, Held};

/// Values read per source at a time: 256 KiB of f32, inside a core's L2 cache.
pub const CHUNK: usize = 64 << 10;

/// A whole-tensor fact. Rows are the first dimension, columns everything after it (a 1-D tensor
/// is one column of rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// `max(|x|)` over the tensor, NaN if it holds a NaN (torch's `amax(abs(x))`).
    AbsMax,
    /// `max(|x|)` of each row.
    RowAbsMax,
    /// `max(|x|)` of each block of `block` values along a row (a row's last block may be
    /// shorter), row by row.
    BlockAbsMax {
        /// Values per block.
        block: usize,
    },
    /// `Σ x²`, accumulated in f64 (a norm is its square root).
    SumSquares,
    /// `Σ x·y` with the other tensor `i` of the call, accumulated in f64.
    Dot(usize),
    /// The `k`-th largest `|x|` (1 is the largest), exact; NaN counts as larger than any number.
    KthMagnitude(u64),
}

/// The results of a reduction pass: `Some` for each reduction asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reduced {
    /// [`Reduction::AbsMax`].
    pub abs_max: Option<f32>,
    /// [`Reduction::RowAbsMax`], one per row.
    pub row_abs_max: Option<Vec<f32>>,
    /// [`Reduction::BlockAbsMax`], rows × blocks per row, row-major.
    pub block_abs_max: Option<Vec<f32>>,
    /// [`Reduction::SumSquares`].
    pub sum_squares: Option<f64>,
    /// [`Reduction::Dot`], by the other tensor's index.
    pub dots: Vec<Option<f64>>,
    /// [`Reduction::KthMagnitude`].
    pub kth_magnitude: Option<f32>,
}

/// Computes `wants` over the values of `tensor` — a file's tensor, a candle tensor on any
/// device, a merge, a quantized tensor — and of the `others` that [`Reduction::Dot`] names, range
/// by range, in bounded memory (see the [module docs](self)).
///
/// # Errors
/// What reading the tensor's sources can fail with; [`Error::Conversion`] for a tensor that is
/// not floating point.
pub fn reduce_tensor(
    tensor: &InputTensor,
    others: &[&InputTensor],
    wants: &[Reduction],
) -> Result<Reduced> {
    let values = TensorValues::new("reduced tensor", tensor)?;
    let others = others
        .iter()
        .map(|t| TensorValues::new("reduced tensor", t))
        .collect::<Result<Vec<_>>>()?;
    let others: Vec<&dyn Values> = others.iter().map(|v| v as &dyn Values).collect();
    let mut held = Vec::new();
    crate::offload::order::held(tensor, &mut held);
    crate::offload::order::wait_for_producers(held)?;
    reduce(&values, &others, wants, &mut Scratch::default())
}

/// A tensor's values read through its planned pieces (f32).
struct TensorValues {
    pieces: Vec<crate::plan::Piece>,
    len: usize,
    cols: usize,
}

impl TensorValues {
    fn new(key: &str, t: &InputTensor) -> Result<Self> {
        let info = t.info();
        if info.quant.is_none() && !crate::model::dtype::can_decode(info.dtype) {
            return Err(Error::Conversion {
                key: key.to_string(),
                reason: format!("a {} tensor has no values to reduce", info.dtype),
            });
        }
        let len = info.numel();
        let rows = info.shape.first().copied().unwrap_or(1).max(1);
        Ok(TensorValues {
            pieces: crate::plan::operand_pieces(key, t)?,
            len,
            cols: len / rows,
        })
    }
}

impl Values for TensorValues {
    fn len(&self) -> usize {
        self.len
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn read(&self, range: Range<usize>, out: &mut [f32], scratch: &mut Scratch) -> Result<()> {
        crate::offload::read_f32(&self.pieces, range, out, scratch)
    }
}

/// A tensor's values as f32, read range by range (row-major element indices).
pub(crate) trait Values: Sync {
    /// Elements.
    fn len(&self) -> usize;
    /// Elements per row.
    fn cols(&self) -> usize;
    /// Writes elements `range` into `out` (`range.len()` values).
    ///
    /// # Errors
    /// Read, decode and device errors.
    fn read(&self, range: Range<usize>, out: &mut [f32], scratch: &mut Scratch) -> Result<()>;
}

/// Computes `wants` over `values` (and the `others` [`Reduction::Dot`] names, each of the same
/// length) in one pass of [`CHUNK`]-sized ranges; [`Reduction::KthMagnitude`] takes two passes
/// of its own.
///
/// # Errors
/// [`Error::InvalidInput`] for a dot with a tensor not given or of another length, a block of
/// 0 values or a k outside `1..=len`; read errors of the sources.
pub(crate) fn reduce(
    values: &dyn Values,
    others: &[&dyn Values],
    wants: &[Reduction],
    scratch: &mut Scratch,
) -> Result<Reduced> {
    let (n, cols) = (values.len(), values.cols().max(1));
    let rows = n / cols;
    let mut acc = Accumulators::new(wants, others.len(), rows, cols)?;
    for (i, other) in others.iter().enumerate() {
        if acc.dots[i].is_some() && other.len() != n {
            return Err(Error::InvalidInput(format!(
                "a dot product of {n} values with {} values",
                other.len()
            )));
        }
    }
    let kth = wants.iter().find_map(|w| match w {
        Reduction::KthMagnitude(k) => Some(*k),
        _ => None,
    });
    if let Some(k) = kth {
        if k == 0 || k > n as u64 {
            return Err(Error::InvalidInput(format!(
                "the {k}-th largest magnitude of {n} values does not exist"
            )));
        }
    }
    let mut buf = vec![0f32; CHUNK.min(n)];
    let mut other = vec![0f32; if others.is_empty() { 0 } else { CHUNK.min(n) }];
    // The k-th magnitude makes passes of its own; the other reductions share one.
    let one_pass = wants
        .iter()
        .any(|w| !matches!(w, Reduction::KthMagnitude(_)));
    for range in chunks(n, cols, acc.block).filter(|_| one_pass) {
        let x = &mut buf[..range.len()];
        values.read(range.clone(), x, scratch)?;
        acc.fold(range.clone(), x);
        for (i, o) in others.iter().enumerate() {
            if acc.dots[i].is_some() {
                let y = &mut other[..range.len()];
                o.read(range.clone(), y, scratch)?;
                acc.dot(i, x, y);
            }
        }
    }
    let mut out = acc.finish();
    if let Some(k) = kth {
        out.kth_magnitude = Some(kth_magnitude(values, k, &mut buf, scratch)?);
    }
    Ok(out)
}

/// Ranges of at most [`CHUNK`] values covering `0..n`: whole rows when a row fits, else pieces
/// of one row that start on multiples of `block` (so no block is cut).
fn chunks(n: usize, cols: usize, block: usize) -> impl Iterator<Item = Range<usize>> {
    let block = block.max(1);
    let step = if cols <= CHUNK {
        (CHUNK / cols) * cols
    } else {
        (CHUNK / block).max(1) * block
    };
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= n {
            return None;
        }
        let end = if cols <= CHUNK {
            (at + step).min(n)
        } else {
            // Inside one row: never past its end.
            let row_end = (at / cols + 1) * cols;
            (at + step).min(row_end).min(n)
        };
        let r = at..end;
        at = end;
        Some(r)
    })
}

/// Running state of the one-pass reductions.
struct Accumulators {
    cols: usize,
    block: usize,
    abs_max: Option<f32>,
    rows: Option<Vec<f32>>,
    blocks: Option<Vec<f32>>,
    sum_squares: Option<f64>,
    dots: Vec<Option<f64>>,
}

impl Accumulators {
    fn new(wants: &[Reduction], others: usize, rows: usize, cols: usize) -> Result<Self> {
        let mut a = Accumulators {
            cols,
            block: 1,
            abs_max: None,
            rows: None,
            blocks: None,
            sum_squares: None,
            dots: vec![None; others],
        };
        for w in wants {
            match *w {
                Reduction::AbsMax => a.abs_max = Some(0.0),
                Reduction::RowAbsMax => a.rows = Some(vec![0.0; rows]),
                Reduction::BlockAbsMax { block } => {
                    if block == 0 {
                        return Err(Error::InvalidInput("blocks of 0 values".into()));
                    }
                    a.block = block;
                    a.blocks = Some(vec![0.0; rows * cols.div_ceil(block)]);
                }
                Reduction::SumSquares => a.sum_squares = Some(0.0),
                Reduction::Dot(i) => {
                    let slot = a.dots.get_mut(i).ok_or_else(|| {
                        Error::InvalidInput(format!("a dot product with tensor {i} of {others}"))
                    })?;
                    *slot = Some(0.0);
                }
                Reduction::KthMagnitude(_) => {}
            }
        }
        Ok(a)
    }

    /// Folds in the values of elements `range` (whole rows, or a block-aligned part of one row).
    fn fold(&mut self, range: Range<usize>, x: &[f32]) {
        if let Some(m) = &mut self.abs_max {
            *m = nan_max(*m, abs_max(x));
        }
        if let Some(s) = &mut self.sum_squares {
            *s += x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>();
        }
        let cols = self.cols;
        if self.rows.is_none() && self.blocks.is_none() {
            return;
        }
        let per_row = cols.div_ceil(self.block);
        let mut e = range.start;
        let mut rest = x;
        while !rest.is_empty() {
            let (row, col) = (e / cols, e % cols);
            let n = (cols - col).min(rest.len());
            let part = &rest[..n];
            if let Some(rows) = &mut self.rows {
                rows[row] = nan_max(rows[row], abs_max(part));
            }
            if let Some(blocks) = &mut self.blocks {
                for (i, b) in part.chunks(self.block).enumerate() {
                    let at = row * per_row + col / self.block + i;
                    blocks[at] = nan_max(blocks[at], abs_max(b));
                }
            }
            rest = &rest[n..];
            e += n;
        }
    }

    fn dot(&mut self, i: usize, x: &[f32], y: &[f32]) {
        if let Some(d) = &mut self.dots[i] {
            *d += x
                .iter()
                .zip(y)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum::<f64>();
        }
    }

    fn finish(self) -> Reduced {
        Reduced {
            abs_max: self.abs_max,
            row_abs_max: self.rows,
            block_abs_max: self.blocks,
            sum_squares: self.sum_squares,
            dots: self.dots,
            kth_magnitude: None,
        }
    }
}

fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

/// The `k`-th largest magnitude, exact, in two passes of radix counting over the magnitudes' bit
/// patterns (which order as the magnitudes do; NaN patterns above Inf): first the top 16 bits,
/// then the low 16 bits of the values in the bucket that holds it. Holds two 65,536-entry
/// histograms, whatever the tensor's size.
fn kth_magnitude(
    values: &dyn Values,
    k: u64,
    buf: &mut [f32],
    scratch: &mut Scratch,
) -> Result<f32> {
    let n = values.len();
    let cols = values.cols().max(1);
    let magnitude = |v: f32| v.to_bits() & 0x7FFF_FFFF;
    let mut high = vec![0u64; 1 << 16];
    for range in chunks(n, cols, 1) {
        let x = &mut buf[..range.len()];
        values.read(range, x, scratch)?;
        for &v in x.iter() {
            high[(magnitude(v) >> 16) as usize] += 1;
        }
    }
    let (bucket, rank) = select(&high, k);
    let mut low = vec![0u64; 1 << 16];
    for range in chunks(n, cols, 1) {
        let x = &mut buf[..range.len()];
        values.read(range, x, scratch)?;
        for &v in x.iter() {
            let m = magnitude(v);
            if (m >> 16) as usize == bucket {
                low[(m & 0xFFFF) as usize] += 1;
            }
        }
    }
    let (bits, _) = select(&low, rank);
    Ok(f32::from_bits(((bucket as u32) << 16) | bits as u32))
}

/// The bucket that holds the `k`-th largest of the counted values, and its rank inside it.
pub(crate) fn select(counts: &[u64], k: u64) -> (usize, u64) {
    let mut above = 0u64;
    for (i, &c) in counts.iter().enumerate().rev() {
        if above + c >= k {
            return (i, k - above);
        }
        above += c;
    }
    (0, k)
}

#[cfg(test)]
mod tests;
