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

/// Elements [`ties_block`] takes a step at a time: its deltas, votes and counts (16 KiB for two
/// deltas) stay in a core's L1 cache between the steps, and its buffers are allocated once per
/// block instead of once per step's worth of memory.
const TIES_RUN: usize = 1024;

/// TIES over a block of elements (`ties_sum`): each delta's top-k filter (its threshold, none
/// when all are kept), sign election, disjoint mean, into `out`. Computed a step at a time over
/// runs of [`TIES_RUN`] elements, each step a loop the compiler vectorizes, with the same f32
/// operations in the same order as [`elect`] per element.
pub(super) fn ties_block(
    vectors: &[Vector],
    thresholds: &[Option<f32>],
    vote_sgn: bool,
    first: usize,
    x: &[&[f32]],
    out: &mut [f32],
) {
    let run = TIES_RUN.min(out.len());
    let mut d: Vec<Vec<f32>> = vec![vec![0f32; run]; vectors.len()];
    let mut vote = vec![0f32; run];
    let mut count = vec![0f32; run];
    let mut views: Vec<&[f32]> = Vec::with_capacity(x.len());
    for (r, out) in out.chunks_mut(run.max(1)).enumerate() {
        let (at, len) = (r * run, out.len());
        views.clear();
        views.extend(x.iter().map(|o| o.get(at..).unwrap_or_default()));
        for (v, dv) in vectors.iter().zip(d.iter_mut()) {
            v.fill(&views, first + at, &mut dv[..len]);
        }
        // The common counts of deltas in one loop over the elements, each element's deltas in
        // registers; any other count a step at a time.
        let done = match (d.len(), vote_sgn) {
            (1, false) => fused::<1, false>(&d, thresholds, out),
            (1, true) => fused::<1, true>(&d, thresholds, out),
            (2, false) => fused::<2, false>(&d, thresholds, out),
            (2, true) => fused::<2, true>(&d, thresholds, out),
            (3, false) => fused::<3, false>(&d, thresholds, out),
            (3, true) => fused::<3, true>(&d, thresholds, out),
            (4, false) => fused::<4, false>(&d, thresholds, out),
            (4, true) => fused::<4, true>(&d, thresholds, out),
            _ => false,
        };
        if !done {
            stepwise(&mut d, thresholds, vote_sgn, &mut vote, &mut count, out);
        }
    }
}

/// [`fused_lanes`] in the widest vectors the CPU has (its loop is compiled twice: for AVX2,
/// taken where the CPU has it, and for the baseline).
fn fused<const M: usize, const VOTE_SGN: bool>(
    d: &[Vec<f32>],
    thresholds: &[Option<f32>],
    out: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, the only feature the function is compiled for.
        return unsafe { fused_avx2::<M, VOTE_SGN>(d, thresholds, out) };
    }
    fused_lanes::<M, VOTE_SGN>(d, thresholds, out)
}

/// [`fused_lanes`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fused_avx2<const M: usize, const VOTE_SGN: bool>(
    d: &[Vec<f32>],
    thresholds: &[Option<f32>],
    out: &mut [f32],
) -> bool {
    fused_lanes::<M, VOTE_SGN>(d, thresholds, out)
}

/// [`ties_block`] over one run for `M` deltas `d` (made, not yet filtered): every step for one
/// element at a time, in the order [`stepwise`] takes them. False (nothing done) when `d` or
/// `thresholds` do not hold `M` deltas.
#[inline(always)]
fn fused_lanes<const M: usize, const VOTE_SGN: bool>(
    d: &[Vec<f32>],
    thresholds: &[Option<f32>],
    out: &mut [f32],
) -> bool {
    let len = out.len();
    if d.len() != M || thresholds.len() < M || d.iter().any(|v| v.len() < len) {
        return false;
    }
    let rows: [&[f32]; M] = std::array::from_fn(|m| &d[m][..len]);
    // No threshold: every value kept.
    let all: [bool; M] = std::array::from_fn(|m| thresholds[m].is_none());
    let t: [f32; M] = std::array::from_fn(|m| thresholds[m].unwrap_or(0.0));
    // `sign` as selects (the same values: 0 for ±0 and NaN), which stay in float lanes.
    let sgn = |x: f32| {
        if x > 0.0 {
            1.0
        } else if x < 0.0 {
            -1.0
        } else {
            0.0
        }
    };
    for (j, o) in out.iter_mut().enumerate() {
        let mut e = [0f32; M];
        let mut vote = 0f32;
        for m in 0..M {
            let v = rows[m][j];
            // `a * (|a| >= kth)`: a dropped value becomes 0·a (−0 for a negative one).
            let keep = all[m] | (v.abs() >= t[m]);
            e[m] = if keep { v } else { v * 0.0 };
            vote += if VOTE_SGN { e[m] } else { sgn(e[m]) };
        }
        let s = sgn(vote);
        let (mut c, mut sum) = (0f32, -0.0f32);
        for v in e {
            let agree = sgn(v) == s;
            c += if agree { 1.0 } else { 0.0 };
            sum += if agree { v } else { v * 0.0 };
        }
        // `sum / c` for at most two deltas as a product (a division takes the core several
        // times as long): exact, as c is 0, 1 or 2 (NaN for 0, whose quotient is not finite).
        let q = match M <= 2 {
            true => {
                sum * if c == 2.0 {
                    0.5
                } else if c == 1.0 {
                    1.0
                } else {
                    f32::NAN
                }
            }
            false => sum / c,
        };
        *o = zero_non_finite(q);
    }
    true
}

/// [`ties_block`] over one run for any number of deltas `d` (made, not yet filtered), a step
/// at a time over the run; `vote` and `count` are scratch of at least the run's length.
fn stepwise(
    d: &mut [Vec<f32>],
    thresholds: &[Option<f32>],
    vote_sgn: bool,
    vote: &mut [f32],
    count: &mut [f32],
    out: &mut [f32],
) {
    let len = out.len();
    let vote = &mut vote[..len];
    vote.fill(0.0);
    for (dv, t) in d.iter_mut().zip(thresholds) {
        let dv = &mut dv[..len];
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
    for v in vote.iter_mut() {
        *v = sign(*v);
    }
    let count = &mut count[..len];
    count.fill(0.0);
    // The agreeing deltas' sum, as `d.iter().sum()` per element (from −0, in order).
    out.fill(-0.0);
    for dv in d.iter() {
        let parts = dv.iter().zip(vote.iter()).zip(count.iter_mut());
        for (((&e, &s), c), o) in parts.zip(out.iter_mut()) {
            let agree = sign(e) == s;
            *c += f32::from(u8::from(agree));
            *o += if agree { e } else { e * 0.0 };
        }
    }
    for (o, &c) in out.iter_mut().zip(count.iter()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Deltas with every case of the filter and the vote: zeros of both signs, NaN, ±Inf,
    /// values tied at the threshold, signs that cancel.
    fn deltas(m: usize, len: usize) -> Vec<Vec<f32>> {
        let special = [
            0.0,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            -f32::INFINITY,
            0.5,
            -0.5,
        ];
        (0..m)
            .map(|i| {
                (0..len)
                    .map(|j| {
                        let h = (j as u32 ^ (i as u32).wrapping_mul(0x9E37_79B9))
                            .wrapping_mul(2_654_435_761);
                        match h % 11 {
                            0 => special[(h / 11) as usize % special.len()],
                            _ => (h >> 8) as f32 / (1 << 23) as f32 - 1.0,
                        }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn fused_ties_gives_the_stepwise_bits() {
        let len = 2 * TIES_RUN + 37;
        for m in 1..=5 {
            for vote_sgn in [false, true] {
                for cut in [None, Some(0.5f32)] {
                    // Every other delta without a threshold when cut.
                    let thresholds: Vec<Option<f32>> =
                        (0..m).map(|i| cut.filter(|_| i % 2 == 0)).collect();
                    let d = deltas(m, len);
                    let vectors: Vec<Vector> = (0..m).map(Vector::operand).collect();
                    let views: Vec<&[f32]> = d.iter().map(Vec::as_slice).collect();
                    let mut got = vec![0f32; len];
                    ties_block(&vectors, &thresholds, vote_sgn, 0, &views, &mut got);
                    let mut want = vec![0f32; len];
                    let (mut dd, mut vote, mut count) = (d.clone(), vec![0.0; len], vec![0.0; len]);
                    stepwise(
                        &mut dd,
                        &thresholds,
                        vote_sgn,
                        &mut vote,
                        &mut count,
                        &mut want,
                    );
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "m {m} vote_sgn {vote_sgn} {cut:?}");
                    // And per element, as `elect` computes one.
                    let t: Vec<f64> = thresholds
                        .iter()
                        .map(|t| t.map_or(f64::NEG_INFINITY, f64::from))
                        .collect();
                    for j in [0, 1, 5, TIES_RUN, len - 1] {
                        let mut e: Vec<f32> = d.iter().map(|v| v[j]).collect();
                        let (c, _) = elect(&mut e, &t, vote_sgn);
                        let sum = e.iter().fold(-0.0f32, |s, &v| s + v);
                        let r = zero_non_finite(sum / c);
                        assert_eq!(r.to_bits(), got[j].to_bits(), "m {m} element {j}");
                    }
                }
            }
        }
    }
}
