//! The methods' arithmetic: what each needs of a tensor, the scalars it makes of that, and its
//! values element by element, in f32 as sd-mecha's torch code computes them.

use super::della::Della;
use super::math::{
    add, clamp, elect, nan_to_num, slerp_scalars, stock_t, ties_block, weiszfeld, zero_non_finite,
};
use super::ParamDefault;
use crate::error::{Error, Result};
use crate::model::tensor::method::{mix, Dropout, Facts, Needs, TensorMethod, Vector};

/// A method with its parameters resolved.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Kind {
    /// `lerp(a, b, alpha)`.
    WeightedSum { alpha: f64 },
    /// The running mean `lerp(mean, xᵢ, 1/i)`.
    NAverage,
    /// `a + alpha·(b − c)` (or `a + alpha·b` with two inputs), clamped between `a` and `b`.
    AddDifference { alpha: f64, clamp_to_ab: bool },
    /// Spherical interpolation of the whole tensors.
    Slerp { alpha: f64 },
    /// `a + alpha·((b − c) − proj_{a − c}(b − c))`.
    AddPerpendicular { alpha: f64 },
    /// `a + (b − c)·alpha·1.8·|b − a| / (|b − a| + |b − c|)`.
    TrainDifference { alpha: f64 },
    /// TIES over the inputs taken as deltas; with `base`, over `xᵢ − base`, added to it.
    Ties {
        base: bool,
        alpha: f64,
        k: f64,
        vote_sgn: bool,
    },
    /// DARE: deltas dropped with `probability`, TIES-combined, rescaled, added to the base.
    Dare {
        probability: f64,
        rescale: bool,
        alpha: f64,
        seed: i64,
        k: f64,
        vote_sgn: bool,
        apply_stock: bool,
        cos_eps: f64,
    },
    /// DELLA: deltas dropped by magnitude rank, rescaled, TIES-combined, added to the base.
    Della {
        density: f64,
        epsilon: f64,
        lambda: f64,
        seed: i64,
        rescale: bool,
    },
    /// Model stock over deltas (with `base`: over `xᵢ − base`, added to it).
    ModelStock { base: bool, cos_eps: f64 },
    /// Weiszfeld's geometric median.
    GeometricMedian { eps: f64, maxiter: i64, ftol: f64 },
    /// `a` clamped between the bounds' minimum and maximum (softened by `stiffness`).
    Clamp { stiffness: f64 },
}

/// The kind of method `name` over `inputs` models, with parameters from `get`.
pub(super) fn kind(name: &str, inputs: usize, get: &dyn Fn(&str) -> ParamDefault) -> Result<Kind> {
    let f = |p: &str| match get(p) {
        ParamDefault::Float(v) => v,
        ParamDefault::Int(v) => v as f64,
        ParamDefault::Bool(v) => f64::from(u8::from(v)),
    };
    let b = |p: &str| matches!(get(p), ParamDefault::Bool(true));
    let i = |p: &str| match get(p) {
        ParamDefault::Int(v) => v,
        _ => 0,
    };
    let k = || -> Result<f64> {
        let k = f("k");
        if !(k > 0.0 && k <= 1.0) {
            return Err(Error::InvalidInput(format!(
                "{name}: k = {k} is outside (0, 1]: k is the fraction of each delta's largest \
                 magnitudes kept (1 keeps all)"
            )));
        }
        Ok(k)
    };
    Ok(match name {
        "weighted_sum" => Kind::WeightedSum { alpha: f("alpha") },
        "n_average" => Kind::NAverage,
        "add_difference" => {
            let clamp_to_ab = b("clamp_to_ab");
            if clamp_to_ab && inputs == 2 {
                return Err(Error::InvalidInput(
                    "add_difference: clamp_to_ab clamps between a and b, which needs b to be a \
                     model (give a, b and c); with two inputs b is a difference"
                        .into(),
                ));
            }
            Kind::AddDifference {
                alpha: f("alpha"),
                clamp_to_ab,
            }
        }
        "slerp" => Kind::Slerp { alpha: f("alpha") },
        "add_perpendicular" => Kind::AddPerpendicular { alpha: f("alpha") },
        "train_difference" => Kind::TrainDifference { alpha: f("alpha") },
        "ties_sum" => Kind::Ties {
            base: false,
            alpha: 1.0,
            k: k()?,
            vote_sgn: b("vote_sgn"),
        },
        "add_difference_ties" => Kind::Ties {
            base: true,
            alpha: f("alpha"),
            k: k()?,
            vote_sgn: b("vote_sgn"),
        },
        "add_ties_with_dare" | "dare" => {
            let probability = f("probability");
            if !(0.0..=1.0).contains(&probability) {
                return Err(Error::InvalidInput(format!(
                    "{name}: probability = {probability} is outside [0, 1]: it is the fraction \
                     of each delta's elements dropped"
                )));
            }
            Kind::Dare {
                probability,
                rescale: b("rescale"),
                alpha: f("alpha"),
                seed: i("seed"),
                k: k()?,
                vote_sgn: b("vote_sgn"),
                apply_stock: b("apply_stock"),
                cos_eps: f("cos_eps"),
            }
        }
        "della" => {
            let (density, epsilon) = (f("density"), f("epsilon"));
            if !(density > 0.0 && density <= 1.0) {
                return Err(Error::InvalidInput(format!(
                    "della: density = {density} is outside (0, 1]: it is the mean fraction of \
                     each delta's elements kept"
                )));
            }
            if density < 1.0
                && !(epsilon >= 0.0 && density - epsilon > 0.0 && density + epsilon <= 1.0)
            {
                return Err(Error::InvalidInput(format!(
                    "della: epsilon = {epsilon} with density {density}: the keep probabilities \
                     density ± epsilon must lie in (0, 1] (epsilon ≥ 0, below density and at \
                     most 1 − density)"
                )));
            }
            Kind::Della {
                density,
                epsilon,
                lambda: f("lambda"),
                seed: i("seed"),
                rescale: b("rescale"),
            }
        }
        "model_stock" | "n_model_stock" => Kind::ModelStock {
            base: name == "n_model_stock",
            cos_eps: f("cos_eps"),
        },
        "geometric_median" => {
            let (eps, maxiter, ftol) = (f("eps"), i("maxiter"), f("ftol"));
            if maxiter < 0 || eps < 0.0 || ftol < 0.0 {
                return Err(Error::InvalidInput(format!(
                    "geometric_median: eps, maxiter and ftol are ≥ 0; {eps}, {maxiter} and \
                     {ftol} given"
                )));
            }
            Kind::GeometricMedian { eps, maxiter, ftol }
        }
        "clamp" => Kind::Clamp {
            stiffness: f("stiffness"),
        },
        other => {
            return Err(Error::InvalidInput(format!(
                "unknown merge method `{other}`; the known methods are {}",
                super::known_names()
            )))
        }
    })
}

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
            Kind::Dare { .. } => "add_ties_with_dare",
            Kind::Della { .. } => "della",
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
            Kind::Dare {
                k,
                probability,
                seed,
                apply_stock,
                ..
            } => {
                if let Some(kth) = kth_largest(*k, n) {
                    let drop = Some((*seed, 1.0 - probability));
                    needs.vectors = self.deltas(true, drop);
                    needs.kth = (0..needs.vectors.len()).map(|v| (v, kth)).collect();
                }
                if *apply_stock {
                    needs.align = last;
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
            Kind::Ties { .. } | Kind::Dare { .. } => {
                facts.kth.iter().map(|&t| f64::from(t)).collect()
            }
            _ => Vec::new(),
        })
    }

    fn apply(&self, scalars: &[f64], first: usize, x: &[&[f32]], out: &mut [f32]) {
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
            Kind::Dare { .. } => self.dare(scalars, first, x, out),
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
                });
                v
            })
            .collect()
    }

    /// sd-mecha's `ties_sum_with_dropout` added to the base (`add_ties_with_dare`).
    fn dare(&self, thresholds: &[f64], first: usize, x: &[&[f32]], out: &mut [f32]) {
        let Kind::Dare {
            probability,
            rescale,
            alpha,
            seed,
            vote_sgn,
            apply_stock,
            cos_eps,
            ..
        } = &self.kind
        else {
            return;
        };
        if isclose(*probability, 1.0) {
            // Everything dropped: sd-mecha returns a delta of 0.
            for (o, &a) in out.iter_mut().zip(x[0]) {
                *o = add(a, 0.0, *alpha);
            }
            return;
        }
        let rescalar = if *rescale {
            (1.0 - probability) as f32
        } else {
            1.0
        };
        let vectors = self.deltas(true, Some((*seed, 1.0 - probability)));
        let m = vectors.len();
        let row = if *apply_stock {
            self.last
        } else {
            out.len().max(1)
        };
        let mut filtered: Vec<Vec<f32>> = vec![vec![0f32; row]; m];
        let mut counts = vec![0f32; row];
        let mut d = vec![0f32; m];
        for start in (0..out.len()).step_by(row) {
            let end = (start + row).min(out.len());
            for j in start..end {
                for (v, dv) in vectors.iter().zip(d.iter_mut()) {
                    *dv = v.at(x, j, first + j);
                }
                let (count, _) = elect(&mut d, thresholds, *vote_sgn);
                counts[j - start] = count;
                for (f, dv) in filtered.iter_mut().zip(&d) {
                    f[j - start] = *dv;
                }
            }
            let t = if *apply_stock {
                let rows: Vec<&[f32]> = filtered.iter().map(|r| &r[..end - start]).collect();
                stock_t(&rows, *cos_eps) as f32
            } else {
                1.0
            };
            for j in start..end {
                let mut s = 0f32;
                for f in &filtered {
                    s += f[j - start];
                }
                let r = zero_non_finite(s * t / counts[j - start]);
                out[j] = add(x[0][j], r / rescalar, *alpha);
            }
        }
    }
}
