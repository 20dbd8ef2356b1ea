//! A method's kind: its name and parameters checked and resolved ([`kind`]).

use super::ties::Median;
use super::ParamDefault;
use crate::error::{Error, Result};

/// A method with its parameters resolved.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Kind {
    /// `lerp(a, b, alpha)`.
    WeightedSum {
        /// `alpha`: the position between `a` (0) and `b` (1).
        alpha: f64,
    },
    /// The running mean `lerp(mean, xᵢ, 1/i)`.
    NAverage,
    /// `a + alpha·(b − c)` (or `a + alpha·b` with two inputs), clamped between `a` and `b`.
    AddDifference {
        /// `alpha`: how much of the method's result is taken.
        alpha: f64,
        /// `clamp_to_ab`: clamp the result between `a` and `b`.
        clamp_to_ab: bool,
    },
    /// Spherical interpolation of the whole tensors.
    Slerp {
        /// `alpha`: the position between `a` (0) and `b` (1).
        alpha: f64,
    },
    /// `a + alpha·((b − c) − proj_{a − c}(b − c))`.
    AddPerpendicular {
        /// `alpha`: how much of the method's result is taken.
        alpha: f64,
    },
    /// `a + (b − c)·alpha·1.8·|b − a| / (|b − a| + |b − c|)`.
    TrainDifference {
        /// `alpha`: how much of the method's result is taken.
        alpha: f64,
    },
    /// TIES over the inputs taken as deltas; with `base`, over `xᵢ − base`, added to it.
    Ties {
        /// Whether the first input is the base the others are taken as deltas from.
        base: bool,
        /// `alpha`: how much of the method's result is taken.
        alpha: f64,
        /// `k`: the fraction of each delta's largest magnitudes kept.
        k: f64,
        /// `vote_sgn`: elect the sign by the deltas' signs, not by their sum.
        vote_sgn: bool,
    },
    /// sd-mecha's `ties_sum_extended` (with `base`: `add_difference_ties_extended`, over
    /// `xᵢ − base`, added to it): TIES's filtered deltas combined by their mean, that mean times
    /// model stock's `t` (`apply_stock`), or their geometric median (`median`).
    TiesExtended {
        /// Whether the first input is the base the others are taken as deltas from.
        base: bool,
        /// `alpha`: how much of the method's result is taken.
        alpha: f64,
        /// `k`: the fraction of each delta's largest magnitudes kept.
        k: f64,
        /// `vote_sgn`: elect the sign by the deltas' signs, not by their sum.
        vote_sgn: bool,
        /// `apply_stock`: the mean scaled by model stock's `t`.
        apply_stock: bool,
        /// `cos_eps`: the epsilon of the cosine similarities.
        cos_eps: f64,
        /// `apply_median`: the geometric median's settings, when it replaces the mean.
        median: Option<Median>,
    },
    /// DARE: deltas dropped with `probability`, TIES-combined, rescaled, added to the base;
    /// with `della_eps` ≠ 0 sd-mecha's DELLA: each element's keep probability moved by its
    /// magnitude's rank over the whole tensor.
    Dare {
        /// `probability`: the chance that an element is dropped.
        probability: f64,
        /// `della_eps`: how far an element's magnitude rank moves its keep probability.
        della_eps: f64,
        /// `rescale`: the kept values divided by their keep probability.
        rescale: bool,
        /// `alpha`: how much of the method's result is taken.
        alpha: f64,
        /// `seed`: the seed of the random masks (the same seed, the same file).
        seed: i64,
        /// `k`: the fraction of each delta's largest magnitudes kept.
        k: f64,
        /// `vote_sgn`: elect the sign by the deltas' signs, not by their sum.
        vote_sgn: bool,
        /// `apply_stock`: the mean scaled by model stock's `t`.
        apply_stock: bool,
        /// `cos_eps`: the epsilon of the cosine similarities.
        cos_eps: f64,
        /// `apply_median`: the geometric median's settings, when it replaces the mean.
        median: Option<Median>,
    },
    /// sd-mecha's `dropout` (n-supermario): each delta `xᵢ − a` keeps an element with
    /// probability `1 − probability` (independent seeded masks); the mean of the kept values
    /// (0 where none is), divided by `(1 − probability)^rescale`, added to `a` with `alpha`.
    Dropout {
        /// `probability`: the chance that an element is dropped.
        probability: f64,
        /// `rescale`: the exponent of `1 − probability` the mean is divided by.
        rescale: f64,
        /// `alpha`: how much of the method's result is taken.
        alpha: f64,
        /// `seed`: the seed of the random masks (the same seed, the same file).
        seed: i64,
    },
    /// DELLA: deltas dropped by magnitude rank, rescaled, TIES-combined, added to the base.
    Della {
        /// `density`: the mean keep probability.
        density: f64,
        /// `epsilon`: the spread of the keep probabilities over the ranks.
        epsilon: f64,
        /// `lambda`: the factor of the combined deltas.
        lambda: f64,
        /// `seed`: the seed of the random masks (the same seed, the same file).
        seed: i64,
        /// `rescale`: the kept values divided by their keep probability.
        rescale: bool,
    },
    /// Model stock over deltas (with `base`: over `xᵢ − base`, added to it).
    ModelStock {
        /// Whether the first input is the base the others are taken as deltas from.
        base: bool,
        /// `cos_eps`: the epsilon of the cosine similarities.
        cos_eps: f64,
    },
    /// Weiszfeld's geometric median.
    GeometricMedian {
        /// `eps`: the smallest distance a weight divides by.
        eps: f64,
        /// `maxiter`: the most Weiszfeld iterations.
        maxiter: i64,
        /// `ftol`: the relative change of the mean distance that ends the iterations.
        ftol: f64,
    },
    /// `a` clamped between the bounds' minimum and maximum (softened by `stiffness`).
    Clamp {
        /// `stiffness`: how far each limit is pulled toward the bounds' mean.
        stiffness: f64,
    },
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
    // `apply_median`'s Weiszfeld parameters, checked as geometric_median's.
    let median = || -> Result<Option<Median>> {
        if !b("apply_median") {
            return Ok(None);
        }
        let (eps, maxiter, ftol) = (f("eps"), i("maxiter"), f("ftol"));
        if maxiter < 0 || eps < 0.0 || ftol < 0.0 {
            return Err(Error::InvalidInput(format!(
                "{name}: eps, maxiter and ftol are ≥ 0; {eps}, {maxiter} and {ftol} given"
            )));
        }
        Ok(Some(Median { eps, maxiter, ftol }))
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
        "ties_sum_extended" | "add_difference_ties_extended" => Kind::TiesExtended {
            base: name == "add_difference_ties_extended",
            alpha: f("alpha"),
            k: k()?,
            vote_sgn: b("vote_sgn"),
            apply_stock: b("apply_stock"),
            cos_eps: f("cos_eps"),
            median: median()?,
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
                della_eps: f("della_eps"),
                rescale: b("rescale"),
                alpha: f("alpha"),
                seed: i("seed"),
                k: k()?,
                vote_sgn: b("vote_sgn"),
                apply_stock: b("apply_stock"),
                cos_eps: f("cos_eps"),
                median: median()?,
            }
        }
        "dropout" => {
            let probability = f("probability");
            if !(0.0..=1.0).contains(&probability) {
                return Err(Error::InvalidInput(format!(
                    "dropout: probability = {probability} is outside [0, 1]: it is the \
                     fraction of each delta's elements dropped"
                )));
            }
            // Python's `overlap % 2 == 1`: sd-mecha 1.1.8 draws independent masks then; other
            // overlaps go through its `overlapping_sets_pmf`, which fails (it hands numpy
            // arrays to `torch.lerp`).
            let overlap = f("overlap");
            if overlap.rem_euclid(2.0) != 1.0 {
                return Err(Error::InvalidInput(format!(
                    "dropout: overlap = {overlap}: this build runs the independent masks of an \
                     odd whole overlap (1, the default, 3, −1…); sd-mecha 1.1.8 itself fails on \
                     other overlaps (its overlapping_sets_pmf hands numpy arrays to torch.lerp)"
                )));
            }
            Kind::Dropout {
                probability,
                rescale: f("rescale"),
                alpha: f("alpha"),
                seed: i("seed"),
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
