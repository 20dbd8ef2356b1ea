//! The methods' arithmetic: what each needs of a tensor, the scalars it makes of that, and its
//! values element by element, in f32 as sd-mecha's torch code computes them.

use std::sync::Arc;

use super::della::Della;
pub use super::kind::Kind;
use super::math::{add, clamp, nan_to_num, slerp_scalars, stock_t, ties_block, weiszfeld};
use super::ties::{scalars, Combine, Extended, Median};
use crate::error::Result;
use crate::model::tensor::method::{mix, Dropout, Facts, Needs, Ranks, TensorMethod, Vector};

/// A method applied to one tensor (the key seeds DARE's masks).
#[derive(Debug)]
pub(super) struct Op {
    kind: Kind,
    stream: u64,
    /// Operands (models) it reads.
    inputs: usize,
    /// Elements per run along the last dimension (model stock's cosines).
    last: usize,
    /// Elements per row: the product of the dimensions after the first (DELLA's ranks).
    row: usize,
}

impl Op {
    pub(super) fn new(kind: Kind, key: &str, inputs: usize, shape: &[usize]) -> Op {
        // FNV-1a of the key: a stable stream id per tensor.
        let stream = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let last = shape.last().copied().unwrap_or(1).max(1);
        let row = match shape {
            [] => 1,
            [n] => *n,
            [_, rest @ ..] => rest.iter().product(),
        }
        .max(1);
        Op {
            kind,
            stream,
            inputs,
            last,
            row,
        }
    }
}

/// `torch.lerp` in f32.
pub(crate) fn lerp(a: f32, b: f32, w: f32) -> f32 {
    let d = b - a;
    if w.abs() < 0.5 {
        a + w * d
    } else {
        b - d * (1.0 - w)
    }
}

/// `torch.maximum` / `torch.minimum`: NaN wins.
pub(super) fn max_nan(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

pub(super) fn min_nan(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.min(b)
    }
}

/// `torch.sign`.
pub(super) fn sign(x: f32) -> f32 {
    f32::from(u8::from(x > 0.0)) - f32::from(u8::from(x < 0.0))
}

/// `math.isclose(x, y)` with its default tolerance.
fn isclose(x: f64, y: f64) -> bool {
    x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs())
}

/// The rank (1 = largest) of the magnitude `filter_top_k` keeps from: sd-mecha takes the
/// `max(int((1 − k)·n), 1)`-th smallest; `None` when that is the smallest (everything is kept).
fn kth_largest(k: f64, n: usize) -> Option<u64> {
    let smallest = (((1.0 - k) * n as f64) as u64).max(1);
    (smallest > 1 && n > 0).then(|| n as u64 - smallest + 1)
}

impl TensorMethod for Op {
    fn name(&self) -> &str {
        match &self.kind {
            Kind::WeightedSum { .. } => "weighted_sum",
            Kind::NAverage => "n_average",
            Kind::AddDifference { .. } => "add_difference",
            Kind::Slerp { .. } => "slerp",
            Kind::AddPerpendicular { .. } => "add_perpendicular",
            Kind::TrainDifference { .. } => "train_difference",
            Kind::Ties { base: false, .. } => "ties_sum",
            Kind::Ties { base: true, .. } => "add_difference_ties",
            Kind::TiesExtended { base: false, .. } => "ties_sum_extended",
            Kind::TiesExtended { base: true, .. } => "add_difference_ties_extended",
            Kind::Dare { .. } => "add_ties_with_dare",
            Kind::Della { .. } => "della",
            Kind::Dropout { .. } => "dropout",
            Kind::ModelStock { base: false, .. } => "model_stock",
            Kind::ModelStock { base: true, .. } => "n_model_stock",
            Kind::GeometricMedian { .. } => "geometric_median",
            Kind::Clamp { .. } => "clamp",
        }
    }

    fn needs(&self, shape: &[usize]) -> Needs {
        let n: usize = shape.iter().product();
        let last = shape.last().copied().unwrap_or(1).max(1);
        let mut needs = Needs::elementwise();
        match &self.kind {
            Kind::Slerp { .. } => {
                needs.vectors = vec![Vector::operand(0), Vector::operand(1)];
                needs.gram = true;
            }
            Kind::AddPerpendicular { .. } => {
                needs.vectors = vec![Vector::difference(0, 2), Vector::difference(1, 2)];
                needs.gram = true;
            }
            Kind::GeometricMedian { .. } => {
                // Offsets from the first model: the median is invariant to the shift, and the
                // distances computed from their Gram matrix lose far less to cancellation.
                needs.vectors = (1..self.inputs).map(|i| Vector::difference(i, 0)).collect();
                needs.gram = !needs.vectors.is_empty();
            }
            Kind::Ties { base, k, .. } => {
                if let Some(kth) = kth_largest(*k, n) {
                    needs.vectors = self.deltas(*base, None);
                    needs.kth = (0..needs.vectors.len()).map(|v| (v, kth)).collect();
                }
            }
            Kind::TiesExtended { k, .. } | Kind::Dare { k, .. } => {
                if let Some(ext) = self.extended(&[]) {
                    if let Some(kth) = kth_largest(*k, n) {
                        needs.kth = (0..ext.vectors.len()).map(|v| (v, kth)).collect();
                        needs.vectors = ext.vectors.clone();
                    }
                    if matches!(self.kind, Kind::Dare { della_eps, .. } if della_eps != 0.0) {
                        // sd-mecha's DELLA: each delta's ranks over the whole tensor.
                        needs.ranks = (0..ext.vectors.len()).collect();
                        needs.vectors = ext.vectors.clone();
                    }
                    match ext.combine {
                        Combine::Stock { .. } => needs.align = last,
                        Combine::Median(_) => needs.derived = ext.vectors.len(),
                        Combine::Mean => {}
                    }
                }
            }
            Kind::ModelStock { .. } => needs.align = last,
            Kind::Della { .. } => needs.align = self.row,
            _ => {}
        }
        needs
    }

    fn prepare(&self, facts: &Facts) -> Result<Vec<f64>> {
        Ok(match &self.kind {
            Kind::Slerp { alpha } => slerp_scalars(facts, *alpha),
            Kind::AddPerpendicular { .. } => {
                let (n2, g) = (facts.dot(0, 0), facts.dot(0, 1));
                let r = g / n2;
                if r.is_finite() {
                    vec![1.0, r]
                } else {
                    // sd-mecha returns zeros when the projection is NaN (a zero difference).
                    vec![0.0, 0.0]
                }
            }
            Kind::GeometricMedian { eps, maxiter, ftol } => weiszfeld(facts, *eps, *maxiter, *ftol),
            Kind::Ties { .. } => facts.kth.iter().map(|&t| f64::from(t)).collect(),
            Kind::TiesExtended { .. } | Kind::Dare { .. } => match self.extended(&facts.ranks) {
                Some(ext) => scalars(&facts.kth, &ext.weights(facts)),
                None => Vec::new(),
            },
            _ => Vec::new(),
        })
    }

    fn derive(&self, facts: &Facts, first: usize, x: &[&[f32]], out: &mut [Vec<f32>]) {
        if let Some(ext) = self.extended(&facts.ranks) {
            ext.derive(facts, first, x, out);
        }
    }

    fn apply(
        &self,
        scalars: &[f64],
        ranks: &[Arc<Ranks>],
        first: usize,
        x: &[&[f32]],
        out: &mut [f32],
    ) {
        let len = out.len();
        match &self.kind {
            Kind::WeightedSum { alpha } => {
                let w = *alpha as f32;
                for (j, o) in out.iter_mut().enumerate() {
                    *o = if *alpha == 0.0 {
                        x[0][j]
                    } else if isclose(*alpha, 1.0) {
                        x[1][j]
                    } else {
                        lerp(x[0][j], x[1][j], w)
                    };
                }
            }
            Kind::NAverage => {
                out.copy_from_slice(&x[0][..len]);
                for (i, xi) in x.iter().enumerate().skip(1) {
                    let w = (1.0 / (i + 1) as f64) as f32;
                    out.iter_mut()
                        .zip(*xi)
                        .for_each(|(o, &v)| *o = lerp(*o, v, w));
                }
            }
            Kind::AddDifference { alpha, clamp_to_ab } => {
                let w = *alpha as f32;
                for (j, o) in out.iter_mut().enumerate() {
                    let a = x[0][j];
                    if *alpha == 0.0 {
                        *o = a;
                        continue;
                    }
                    let d = if x.len() == 3 {
                        x[1][j] - x[2][j]
                    } else {
                        x[1][j]
                    };
                    let mut r = a + d * w;
                    if *clamp_to_ab {
                        let b = x[1][j];
                        r = min_nan(max_nan(r, min_nan(a, b)), max_nan(a, b));
                    }
                    *o = r;
                }
            }
            Kind::Slerp { alpha } => {
                let (fallback, ca, cb) = (scalars[0] == 0.0, scalars[1] as f32, scalars[2] as f32);
                let w = *alpha as f32;
                let pairs = out.iter_mut().zip(x[0].iter().zip(x[1]));
                if fallback {
                    pairs.for_each(|(o, (&a, &b))| *o = lerp(a, b, w));
                } else {
                    pairs.for_each(|(o, (&a, &b))| *o = a * ca + b * cb);
                }
            }
            Kind::AddPerpendicular { alpha } => {
                let (keep, r) = (scalars[0] != 0.0, scalars[1] as f32);
                let w = *alpha as f32;
                for (j, o) in out.iter_mut().enumerate() {
                    let a = x[0][j];
                    let perp = if keep {
                        let (ad, bd) = (a - x[2][j], x[1][j] - x[2][j]);
                        bd - ad * r
                    } else {
                        0.0
                    };
                    *o = if *alpha == 0.0 { a } else { a + perp * w };
                }
            }
            Kind::TrainDifference { alpha } => {
                let coef = (*alpha as f32) * 1.8f32;
                for (j, o) in out.iter_mut().enumerate() {
                    let (a, b, c) = (x[0][j], x[1][j], x[2][j]);
                    let (ba, bc) = ((b - a).abs(), (b - c).abs());
                    let m = ba / (ba + bc);
                    let m = if m.is_nan() { 0.0 } else { m };
                    *o = a + (b - c) * (coef * m);
                }
            }
            Kind::Clamp { stiffness } => clamp(*stiffness, x, out),
            Kind::Dropout { .. } => self.dropout(first, x, out),
            Kind::Ties {
                base,
                alpha,
                vote_sgn,
                ..
            } => {
                let vectors = self.deltas(*base, None);
                let thresholds: Vec<Option<f32>> = (0..vectors.len())
                    .map(|i| scalars.get(i).map(|&t| t as f32))
                    .collect();
                ties_block(&vectors, &thresholds, *vote_sgn, first, x, out);
                if *base {
                    for (o, &a) in out.iter_mut().zip(x[0]) {
                        *o = add(a, *o, *alpha);
                    }
                }
            }
            Kind::TiesExtended { .. } | Kind::Dare { .. } => match self.extended(ranks) {
                Some(ext) => ext.apply(scalars, first, x, out),
                None => {
                    // Everything dropped: sd-mecha's `ties_sum_with_dropout` returns a delta of 0.
                    let alpha = match &self.kind {
                        Kind::Dare { alpha, .. } => *alpha,
                        _ => 1.0,
                    };
                    for (o, &a) in out.iter_mut().zip(x[0]) {
                        *o = add(a, 0.0, alpha);
                    }
                }
            },
            Kind::Della {
                density,
                epsilon,
                lambda,
                seed,
                rescale,
            } => {
                let d = Della {
                    density: *density,
                    epsilon: *epsilon,
                    lambda: *lambda,
                    seed: *seed,
                    rescale: *rescale,
                };
                let masks = self.deltas(true, Some((d.seed, d.density)));
                let deltas: Vec<_> = masks
                    .into_iter()
                    .filter_map(|mut v| v.dropout.take().map(|m| (v, m)))
                    .collect();
                d.apply(&deltas, self.row, first, x, out);
            }
            Kind::ModelStock { base, cos_eps } => {
                let vectors = self.deltas(*base, None);
                let row = self.last;
                let mut d: Vec<Vec<f32>> = vec![vec![0f32; row]; vectors.len()];
                for start in (0..len).step_by(row) {
                    let end = (start + row).min(len);
                    for (v, dv) in vectors.iter().zip(d.iter_mut()) {
                        for j in start..end {
                            dv[j - start] = v.at(x, j, first + j);
                        }
                    }
                    let rows: Vec<&[f32]> = d.iter().map(|r| &r[..end - start]).collect();
                    let t = stock_t(&rows, *cos_eps) as f32;
                    let nf = vectors.len() as f32;
                    for j in start..end {
                        let mut s = 0f32;
                        for r in &rows {
                            s += r[j - start];
                        }
                        let v = nan_to_num(t * (s / nf));
                        out[j] = if *base { add(x[0][j], v, 1.0) } else { v };
                    }
                }
            }
            Kind::GeometricMedian { .. } => {
                let n = x.len();
                let sum: f32 = scalars.iter().map(|&w| w as f32).sum();
                for (j, o) in out.iter_mut().enumerate() {
                    let mut s = 0f32;
                    for i in 0..n {
                        s += x[i][j] * scalars[i] as f32;
                    }
                    *o = s / sum;
                }
            }
        }
    }
}

impl Op {
    /// The TIES evaluation of `ties_sum_extended` and DARE (`None` for other methods, and for
    /// DARE when everything is dropped); DELLA's deltas (`della_eps` ≠ 0) draw by `ranks` (the
    /// engine's, one per delta; empty while the needs are declared).
    fn extended(&self, ranks: &[Arc<Ranks>]) -> Option<Extended> {
        let combine = |stock: bool, cos_eps: f64, median: Option<Median>| match median {
            Some(m) => Combine::Median(m),
            None if stock => Combine::Stock { cos_eps },
            None => Combine::Mean,
        };
        match &self.kind {
            Kind::TiesExtended {
                base,
                alpha,
                vote_sgn,
                apply_stock,
                cos_eps,
                median,
                ..
            } => Some(Extended {
                vectors: self.deltas(*base, None),
                vote_sgn: *vote_sgn,
                combine: combine(*apply_stock, *cos_eps, *median),
                rescalar: 1.0,
                alpha: base.then_some(*alpha),
                last: self.last,
            }),
            Kind::Dare {
                probability,
                della_eps,
                rescale,
                alpha,
                seed,
                vote_sgn,
                apply_stock,
                cos_eps,
                median,
                ..
            } if !isclose(*probability, 1.0) => Some(Extended {
                vectors: self
                    .deltas(true, Some((*seed, 1.0 - probability)))
                    .into_iter()
                    .enumerate()
                    .map(|(i, mut v)| {
                        if let Some(d) = &mut v.dropout {
                            d.eps = *della_eps;
                        }
                        v.ranks = ranks.get(i).cloned();
                        v
                    })
                    .collect(),
                vote_sgn: *vote_sgn,
                combine: combine(*apply_stock, *cos_eps, *median),
                rescalar: if *rescale {
                    (1.0 - probability) as f32
                } else {
                    1.0
                },
                alpha: Some(*alpha),
                last: self.last,
            }),
            _ => None,
        }
    }

    /// The deltas a method combines: its inputs, or with `base` each later input minus the
    /// first; thinned by DARE's mask when `drop` is `(seed, keep probability)`.
    fn deltas(&self, base: bool, drop: Option<(i64, f64)>) -> Vec<Vector> {
        let from = usize::from(base);
        (from..self.inputs)
            .map(|i| {
                let mut v = match base {
                    true => Vector::difference(i, 0),
                    false => Vector::operand(i),
                };
                v.dropout = drop.map(|(seed, keep)| Dropout {
                    seed: seed as u64,
                    stream: mix(self.stream ^ i as u64),
                    keep: keep.clamp(0.0, 1.0),
                    eps: 0.0,
                });
                v
            })
            .collect()
    }

    /// sd-mecha's `dropout` (its `ties.dropout` added to `a` by its wrapper).
    fn dropout(&self, first: usize, x: &[&[f32]], out: &mut [f32]) {
        let Kind::Dropout {
            probability,
            rescale,
            alpha,
            seed,
        } = &self.kind
        else {
            return;
        };
        let rescalar = if *probability == 1.0 {
            1.0
        } else {
            let r = (1.0 - probability).powf(*rescale);
            if r.is_finite() {
                r as f32
            } else {
                1.0
            }
        };
        // The deltas without their masks, and the masks.
        let deltas: Vec<_> = self
            .deltas(true, Some((*seed, 1.0 - probability)))
            .into_iter()
            .filter_map(|mut v| v.dropout.take().map(|m| (v, m)))
            .collect();
        for (j, o) in out.iter_mut().enumerate() {
            // `final_delta[mask] += delta[mask]` per delta, over `sum(masks).clamp(1)`.
            let (mut sum, mut count) = (0f32, 0f32);
            for (v, mask) in &deltas {
                if mask.keeps(first + j) {
                    sum += v.at(x, j, first + j);
                    count += 1.0;
                }
            }
            let r = sum / count.max(1.0) / rescalar;
            *o = add(x[0][j], r, *alpha);
        }
    }
}
