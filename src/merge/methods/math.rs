//! The arithmetic the methods share (sd-mecha's torch operations in f32): adding a delta,
//! NaN handling, TIES's filter and election, model stock's t, clamp, SLERP's scalars and
//! Weiszfeld's iterations on a Gram matrix.

use super::ops::{max_nan, min_nan, sign};
use crate::model::tensor::method::{Facts, Vector};

/// `a + r·alpha` as sd-mecha's `add_difference` (`a.addcmul(r, alpha)`); `a` when alpha is 0.
pub(super) fn add(a: f32, r: f32, alpha: f64) -> f32 {
    if alpha == 0.0 {
        a
    } else {
        a + r * alpha as f32
    }
}

/// `torch.nan_to_num` with its defaults: NaN to 0, ±Inf to the largest finite values.
pub(super) fn nan_to_num(v: f32) -> f32 {
    if v.is_nan() {
        0.0
    } else {
        v.clamp(f32::MIN, f32::MAX)
    }
}

/// `torch.nan_to_num(nan=0, posinf=0, neginf=0)`.
pub(super) fn zero_non_finite(v: f32) -> f32 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

/// TIES over a block of elements (`ties_sum`): each delta's top-k filter (its threshold, none
/// when all are kept), sign election, disjoint mean, into `out`. Computed a step at a time over
/// the whole block, each a loop the compiler vectorizes, with the same f32 operations in the
/// same order as [`elect`] per element.
pub(super) fn ties_block(
    vectors: &[Vector],
    thresholds: &[Option<f32>],
    vote_sgn: bool,
    first: usize,
    x: &[&[f32]],
    out: &mut [f32],
) {
    let len = out.len();
    let mut d: Vec<Vec<f32>> = vec![vec![0f32; len]; vectors.len()];
    let mut vote = vec![0f32; len];
    for ((v, dv), t) in vectors.iter().zip(d.iter_mut()).zip(thresholds) {
        v.fill(x, first, dv);
        if let Some(t) = *t {
            // `a * (|a| >= kth)`: a dropped value becomes 0·a (−0 for a negative one).
            for e in dv.iter_mut() {
                let keep = e.abs() >= t;
                *e = if keep { *e } else { *e * 0.0 };
            }
        }
        if vote_sgn {
            vote.iter_mut().zip(dv.iter()).for_each(|(s, &e)| *s += e);
        } else {
            vote.iter_mut()
                .zip(dv.iter())
                .for_each(|(s, &e)| *s += sign(e));
        }
    }
    let mut count = vec![0f32; len];
    for v in vote.iter_mut() {
        *v = sign(*v);
    }
    for dv in d.iter_mut() {
        for ((e, &s), c) in dv.iter_mut().zip(&vote).zip(count.iter_mut()) {
            let agree = sign(*e) == s;
            *c += f32::from(u8::from(agree));
            *e = if agree { *e } else { *e * 0.0 };
        }
    }
    // The sum of the filtered deltas, as `d.iter().sum()` per element.
    out.fill(-0.0);
    for dv in &d {
        out.iter_mut().zip(dv).for_each(|(o, &e)| *o += e);
    }
    for (o, &c) in out.iter_mut().zip(&count) {
        *o = zero_non_finite(*o / c);
    }
}

/// `filter_top_k` and `ties_sum_deltas` for one element: `d` becomes the filtered deltas;
/// returns the number that agree with the elected sign, and that sign.
pub(super) fn elect(d: &mut [f32], thresholds: &[f64], vote_sgn: bool) -> (f32, f32) {
    for (i, v) in d.iter_mut().enumerate() {
        if let Some(&t) = thresholds.get(i) {
            // `a * (|a| >= kth)`: a dropped value becomes 0·a (−0 for a negative one).
            let kept = matches!(
                v.abs().partial_cmp(&(t as f32)),
                Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
            );
            if !kept {
                *v *= 0.0;
            }
        }
    }
    let mut vote = 0f32;
    for &v in d.iter() {
        vote += if vote_sgn { v } else { sign(v) };
    }
    let elected = sign(vote);
    let mut count = 0f32;
    for v in d.iter_mut() {
        if sign(*v) == elected {
            count += 1.0;
        } else {
            *v *= 0.0;
        }
    }
    (count, elected)
}

/// sd-mecha's `get_model_stock_t` on one run of the last dimension: the mean cosine of
/// consecutive deltas (`CosineSimilarity(dim=-1, eps)`), then `n·cos / (1 + (n − 1)·cos)`.
pub(super) fn stock_t(rows: &[&[f32]], eps: f64) -> f64 {
    let n = rows.len();
    let norm = |r: &[f32]| {
        r.iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt()
    };
    let mut cos = 0f64;
    for w in rows.windows(2) {
        let dot: f64 = w[0]
            .iter()
            .zip(w[1])
            .map(|(&a, &b)| f64::from(a) * f64::from(b))
            .sum();
        cos += dot / (norm(w[0]).max(eps) * norm(w[1]).max(eps));
    }
    let cos = cos / (n - 1).max(1) as f64;
    n as f64 * cos / (1.0 + (n as f64 - 1.0) * cos)
}

/// `clamp(a, *bounds, stiffness)`.
pub(super) fn clamp(stiffness: f64, x: &[&[f32]], out: &mut [f32]) {
    let bounds = &x[1..];
    let s = stiffness as f32;
    let rest = (1.0 - stiffness) as f32;
    let nb = bounds.len() as f32;
    for (j, o) in out.iter_mut().enumerate() {
        let mut hi = bounds[0][j];
        let mut lo = bounds[0][j];
        for b in &bounds[1..] {
            hi = max_nan(hi, b[j]);
            lo = min_nan(lo, b[j]);
        }
        if stiffness != 0.0 {
            let mut sum = 0f32;
            for b in bounds {
                sum += b[j];
            }
            let avg = sum / nb;
            let (mut sp, mut ln) = (hi, lo);
            for b in bounds {
                let v = b[j];
                if sp >= v && v >= avg {
                    sp = v;
                }
                if ln <= v && v <= avg {
                    ln = v;
                }
            }
            hi = rest * hi + s * sp;
            lo = rest * lo + s * ln;
        }
        *o = min_nan(max_nan(x[0][j], lo), hi);
    }
}

/// SLERP's scalars from `|a|², |b|², a·b`: `[1, ca, cb]` with the result `a·ca + b·cb`, or
/// `[0, 0, 0]` where sd-mecha falls back to `lerp(a, b, alpha)` (a zero or non-finite norm,
/// parallel tensors: the result would be NaN).
pub(super) fn slerp_scalars(facts: &Facts, alpha: f64) -> Vec<f64> {
    let (na, nb, dot) = (
        facts.dot(0, 0).sqrt(),
        facts.dot(1, 1).sqrt(),
        facts.dot(0, 1),
    );
    // The cosine as torch has it: an f32, clamped to [−1, 1].
    let d = f64::from(((dot / (na * nb)) as f32).clamp(-1.0, 1.0));
    let omega = d.acos();
    let s = omega.sin();
    let scale = na + alpha * (nb - na);
    let ca = ((1.0 - alpha) * omega).sin() / s / na * scale;
    let cb = (alpha * omega).sin() / s / nb * scale;
    if ca.is_finite() && cb.is_finite() && na > 0.0 && nb > 0.0 && s != 0.0 {
        vec![1.0, ca, cb]
    } else {
        vec![0.0, 0.0, 0.0]
    }
}

/// Weiszfeld's iterations as sd-mecha runs them (`geometric_median`), on the Gram matrix of the
/// models' offsets from the first: returns each model's weight (they need not add up to 1).
pub(super) fn weiszfeld(facts: &Facts, eps: f64, maxiter: i64, ftol: f64) -> Vec<f64> {
    // Gram of the offsets y₀ = 0, yᵢ = xᵢ − x₀.
    let g = |i: usize, j: usize| {
        if i == 0 || j == 0 {
            0.0
        } else {
            facts.dot(i - 1, j - 1)
        }
    };
    weiszfeld_gram(facts.vectors + 1, &g, eps, maxiter, ftol)
}

/// Weiszfeld's iterations over `n` points given by their Gram matrix `g`: each point's weight
/// in the median `Σ wᵢxᵢ / Σ wᵢ`.
pub(super) fn weiszfeld_gram(
    n: usize,
    g: &dyn Fn(usize, usize) -> f64,
    eps: f64,
    maxiter: i64,
    ftol: f64,
) -> Vec<f64> {
    if n <= 1 {
        return vec![1.0; n];
    }
    let dist = |c: &[f64], i: usize| -> f64 {
        let total: f64 = c.iter().sum();
        let mut d2 = g(i, i);
        for j in 0..n {
            d2 -= 2.0 * c[j] / total * g(i, j);
            for l in 0..n {
                d2 += c[j] * c[l] / (total * total) * g(j, l);
            }
        }
        d2.max(0.0).sqrt()
    };
    // In f64: sd-mecha's f32 objective stops the iterations when two in a row round to the
    // same f32, at an iteration that depends on its rounding; these go on to a median at least
    // as close (tests/mecha.rs measures both against sd-mecha's objective).
    let objective = |c: &[f64]| (0..n).map(|i| dist(c, i)).sum::<f64>() / n as f64;
    let mut weights = vec![1.0; n];
    let mut median = weights.clone();
    let mut obj = objective(&median);
    for _ in 0..maxiter {
        let prev = obj;
        weights = (0..n).map(|i| 1.0 / dist(&median, i).max(eps)).collect();
        median.clone_from(&weights);
        obj = objective(&median);
        if (prev - obj).abs() <= ftol * obj {
            break;
        }
    }
    if weights.iter().all(|w| w.is_finite()) {
        weights
    } else {
        vec![1.0; n]
    }
}
