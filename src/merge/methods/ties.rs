//! sd-mecha's `ties_sum_extended` and `ties_sum_with_dropout`: TIES's filtered deltas (each
//! delta's top-k, optionally thinned by DARE's mask first, then those that agree with the
//! elected sign), combined by their disjoint mean, by that mean times model stock's `t`, or by
//! their geometric median; divided by DARE's rescale; added to the base.
//!
//! The geometric median needs the filtered deltas' distances, which depend on the k-th
//! magnitudes and on a sign elected across the deltas: the method derives the filtered deltas
//! ([`TensorMethod::derive`](crate::model::tensor::method::TensorMethod::derive)), the engine
//! computes their Gram matrix in one more read, and Weiszfeld's iterations run on it
//! ([`weiszfeld_gram`]), as for `geometric_median`.

use super::math::{add, elect, stock_t, weiszfeld_gram, zero_non_finite};
use crate::model::tensor::method::{Facts, Vector};

/// Weiszfeld's parameters (sd-mecha's `eps`, `maxiter`, `ftol`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Median {
    /// The smallest distance a weight divides by.
    pub eps: f64,
    /// Most iterations.
    pub maxiter: i64,
    /// Stop when the mean distance changes by at most this fraction of itself.
    pub ftol: f64,
}

/// How the filtered deltas are combined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Combine {
    /// Their sum over the number that agree with the elected sign.
    Mean,
    /// That mean times model stock's `t` of the filtered deltas, per run of the last dimension.
    Stock { cos_eps: f64 },
    /// Their geometric median.
    Median(Median),
}

/// One tensor's TIES evaluation.
#[derive(Debug)]
pub(super) struct Extended {
    /// The deltas (DARE's carry their masks).
    pub(super) vectors: Vec<Vector>,
    pub(super) vote_sgn: bool,
    pub(super) combine: Combine,
    /// The result is divided by this (DARE's `1 − p` with rescale, else 1).
    pub(super) rescalar: f32,
    /// `Some(alpha)`: the result is added to operand 0 (the base) with this weight.
    pub(super) alpha: Option<f64>,
    /// Elements per run of the last dimension (model stock's cosines).
    pub(super) last: usize,
}

/// The scalars' layout: `[number of thresholds, thresholds…, median weights…]`.
pub(super) fn scalars(thresholds: &[f32], weights: &[f64]) -> Vec<f64> {
    let mut s = vec![thresholds.len() as f64];
    s.extend(thresholds.iter().map(|&t| f64::from(t)));
    s.extend_from_slice(weights);
    s
}

/// `(thresholds, weights)` of [`scalars`].
fn split(scalars: &[f64]) -> (&[f64], &[f64]) {
    let nk = scalars.first().map_or(0, |&n| n as usize);
    let rest = scalars.get(1..).unwrap_or_default();
    rest.split_at(nk.min(rest.len()))
}

impl Extended {
    /// The median's weights from the Gram matrix of the filtered deltas (none for the other
    /// combinations).
    pub(super) fn weights(&self, facts: &Facts) -> Vec<f64> {
        match self.combine {
            Combine::Median(m) => {
                let g = |i: usize, j: usize| facts.derived_dot(i, j);
                weiszfeld_gram(self.vectors.len(), &g, m.eps, m.maxiter, m.ftol)
            }
            _ => Vec::new(),
        }
    }

    /// The filtered deltas over elements `first..first + out[i].len()` (the median's points).
    pub(super) fn derive(&self, facts: &Facts, first: usize, x: &[&[f32]], out: &mut [Vec<f32>]) {
        let thresholds: Vec<f64> = facts.kth.iter().map(|&t| f64::from(t)).collect();
        let len = out.first().map_or(0, Vec::len);
        let mut d = vec![0f32; self.vectors.len()];
        for j in 0..len {
            self.filter(&thresholds, first, x, j, &mut d);
            for (o, &v) in out.iter_mut().zip(&d) {
                o[j] = v;
            }
        }
    }

    /// Element `j`'s filtered deltas into `d`; returns how many agree with the elected sign.
    fn filter(
        &self,
        thresholds: &[f64],
        first: usize,
        x: &[&[f32]],
        j: usize,
        d: &mut [f32],
    ) -> f32 {
        for (v, dv) in self.vectors.iter().zip(d.iter_mut()) {
            *dv = v.at(x, j, first + j);
        }
        elect(d, thresholds, self.vote_sgn).0
    }

    /// Output elements `first..first + out.len()`: whole runs of [`Extended::last`] elements
    /// when the combination is model stock's.
    pub(super) fn apply(&self, scalars: &[f64], first: usize, x: &[&[f32]], out: &mut [f32]) {
        let (thresholds, weights) = split(scalars);
        let m = self.vectors.len();
        let row = match self.combine {
            Combine::Stock { .. } => self.last.max(1),
            _ => out.len().max(1),
        };
        let wsum: f32 = weights.iter().map(|&w| w as f32).sum();
        let mut filtered: Vec<Vec<f32>> = vec![vec![0f32; row]; m];
        let mut counts = vec![0f32; row];
        let mut d = vec![0f32; m];
        for start in (0..out.len()).step_by(row) {
            let end = (start + row).min(out.len());
            for j in start..end {
                counts[j - start] = self.filter(thresholds, first, x, j, &mut d);
                for (f, dv) in filtered.iter_mut().zip(&d) {
                    f[j - start] = *dv;
                }
            }
            let t = match self.combine {
                Combine::Stock { cos_eps } => {
                    let rows: Vec<&[f32]> = filtered.iter().map(|r| &r[..end - start]).collect();
                    stock_t(&rows, cos_eps) as f32
                }
                _ => 1.0,
            };
            for j in start..end {
                let r = if let Combine::Median(_) = self.combine {
                    // sd-mecha's `weighted_average`: `Σ pᵢ·wᵢ / Σ wᵢ` in f32.
                    let mut s = 0f32;
                    for (f, &w) in filtered.iter().zip(weights) {
                        s += f[j - start] * w as f32;
                    }
                    zero_non_finite(s / wsum)
                } else {
                    let mut s = 0f32;
                    for f in &filtered {
                        s += f[j - start];
                    }
                    zero_non_finite(s * t / counts[j - start])
                };
                let r = r / self.rescalar;
                out[j] = match self.alpha {
                    Some(alpha) => add(x[0][j], r, alpha),
                    None => r,
                };
            }
        }
    }
}
