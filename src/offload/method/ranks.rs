//! The ordinal ranks of a vector's magnitudes over a whole tensor (sd-mecha's DELLA:
//! `rankdata(|delta|, method="ordinal")`), exact.
//!
//! Each element becomes one 64-bit key, its magnitude's bit pattern (the sign cleared: non-NaN
//! magnitudes order as their patterns do, `-0.0` with `0.0`) above its position, so that one
//! unstable sort of the keys orders by magnitude and then by position, as the ordinal method
//! breaks ties; the sorted keys then give each position its rank. One read of the vector's
//! operands, a `CHUNK` at a time; memory: the keys (8 bytes per element) while sorting, then
//! the ranks (4 bytes per element), which the method node holds while the tensor's values are
//! produced.

use std::sync::Arc;

use rayon::slice::ParallelSliceMut;

use super::{chunks, each_range, used_operands, Scratch};
use crate::error::{Error, Result};
use crate::model::tensor::method::{Ranks, Vector};
use crate::model::Merged;
use crate::reduce::CHUNK;

/// The ranks of each of `which` (indices into `vectors`), over `m`'s `n` elements: of the
/// vectors' values before their dropout.
///
/// # Errors
/// A vector that does not exist; a tensor of more than `u32::MAX` elements (positions and ranks
/// are 32-bit); memory for the keys that cannot be had; read errors of the operands.
pub(super) fn ranks(
    m: &Merged,
    vectors: &[Vector],
    which: &[usize],
    n: usize,
    scratch: &mut Scratch,
) -> Result<Vec<Arc<Ranks>>> {
    if u32::try_from(n).is_err() {
        return Err(Error::InvalidInput(format!(
            "`{}`: ranking every magnitude of a tensor of {n} elements (della_eps ≠ 0) takes at \
             most {} elements; use della_eps = 0 (DARE) for it",
            m.key(),
            u32::MAX
        )));
    }
    let mut out = Vec::with_capacity(which.len());
    for &w in which {
        let mut v = vectors
            .get(w)
            .ok_or_else(|| {
                Error::InvalidInput(format!("the ranks of vector {w} of {}", vectors.len()))
            })?
            .clone();
        v.dropout = None;
        v.ranks = None;
        out.push(Arc::new(rank_vector(m, &v, n, scratch)?));
    }
    Ok(out)
}

/// The ranks of one vector's values.
fn rank_vector(m: &Merged, v: &Vector, n: usize, scratch: &mut Scratch) -> Result<Ranks> {
    let mut keys: Vec<u64> = Vec::new();
    keys.try_reserve_exact(n).map_err(|_| {
        Error::InvalidInput(format!(
            "`{}`: no memory for the {n} sort keys (8 bytes each) of its magnitude ranks \
             (della_eps ≠ 0)",
            m.key()
        ))
    })?;
    let used = used_operands(std::slice::from_ref(v));
    let mut buf = vec![0f32; CHUNK.min(n).max(1)];
    let mut nan = false;
    each_range(m, &used, chunks(n, CHUNK), scratch, |range, views| {
        let len = range.len();
        v.fill(views, range.start, &mut buf[..len]);
        nan = push_keys(&buf[..len], range.start, &mut keys);
        !nan
    })?;
    if nan {
        return Ok(Ranks {
            n,
            rank: Vec::new(),
        });
    }
    Ok(Ranks {
        n,
        rank: from_keys(keys),
    })
}

/// Appends the keys of `values` (elements `first…`); `true` when one is NaN.
fn push_keys(values: &[f32], first: usize, keys: &mut Vec<u64>) -> bool {
    let mut nan = false;
    for (j, &x) in values.iter().enumerate() {
        nan |= x.is_nan();
        let bits = x.to_bits() & 0x7FFF_FFFF;
        keys.push(u64::from(bits) << 32 | (first + j) as u64);
    }
    nan
}

/// The ranks from the keys of every element (sorted here).
fn from_keys(mut keys: Vec<u64>) -> Vec<u32> {
    keys.par_sort_unstable();
    let mut rank = vec![0u32; keys.len()];
    for (r, &k) in keys.iter().enumerate() {
        // Positions and ranks fit 32 bits: `ranks` refuses larger tensors.
        rank[(k & 0xFFFF_FFFF) as usize] = r as u32 + 1;
    }
    rank
}

/// The ranks of `values` (a whole tensor's), as the engine computes them.
#[cfg(test)]
fn of(values: &[f32]) -> Ranks {
    let mut keys = Vec::with_capacity(values.len());
    if push_keys(values, 0, &mut keys) {
        return Ranks {
            n: values.len(),
            rank: Vec::new(),
        };
    }
    Ranks {
        n: values.len(),
        rank: from_keys(keys),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// scipy's `rankdata(|v|, method="ordinal")`, written out: a stable sort of the positions
    /// by magnitude, compared as numbers.
    fn ordinal(values: &[f32]) -> Vec<u32> {
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.sort_by(|&a, &b| {
            values[a]
                .abs()
                .partial_cmp(&values[b].abs())
                .unwrap()
                .then(a.cmp(&b))
        });
        let mut rank = vec![0u32; values.len()];
        for (r, &i) in order.iter().enumerate() {
            rank[i] = r as u32 + 1;
        }
        rank
    }

    #[test]
    fn ranks_are_the_ordinal_ranks_of_the_magnitudes() {
        // Values with many ties (a few magnitudes, both signs, both zeros, infinities).
        let mut x = 0x1234_5678u64;
        let values: Vec<f32> = (0..20_000)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match i % 97 {
                    0 => f32::INFINITY,
                    1 => f32::NEG_INFINITY,
                    2 => -0.0,
                    3 => 0.0,
                    _ => ((x >> 40) % 300) as f32 / 64.0 - 2.3,
                }
            })
            .collect();
        let got = of(&values);
        assert_eq!(got.n, values.len());
        assert_eq!(got.rank, ordinal(&values));
        // By hand: |[-0, 0, 1, -1, 0.5]| → 1, 2, 4, 5, 3 (scipy's output).
        assert_eq!(of(&[-0.0, 0.0, 1.0, -1.0, 0.5]).rank, [1, 2, 4, 5, 3]);
    }

    #[test]
    fn a_nan_anywhere_leaves_the_tensor_unranked() {
        // scipy 1.17: rankdata([0.5, nan, 0.1], method="ordinal") is [nan, nan, nan].
        let r = of(&[0.5, f32::NAN, 0.1]);
        assert_eq!((r.n, r.get(0), r.get(2)), (3, None, None));
    }
}
