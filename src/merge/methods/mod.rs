//! Merge methods beyond ComfyUI's nodes, with sd-mecha's names, parameters and conventions
//! (`sd_mecha/extensions/builtin/merge_methods`): the elementwise ones (weighted sum, add
//! difference, train difference, clamp…) and those that need whole tensors (SLERP's norms and
//! dot product, TIES's k-th magnitudes, model stock's cosines, the geometric median's distances),
//! evaluated by the engine's method nodes ([`crate::model::tensor::method`]).
//!
//! [`KNOWN`] lists every method with its inputs and parameters; [`method`] checks a method's
//! name, inputs and parameters and returns what builds its expression for each tensor.

mod della;
mod kind;
mod math;
mod ops;
mod ties;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::tensor::method::TensorMethod;
use crate::model::{InputTensor, Merged};
pub use ops::Kind;
pub use ties::Median;

/// A parameter's value as a recipe or the command line gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    /// A number.
    Float(f64),
    /// A whole number.
    Int(i64),
    /// A flag.
    Bool(bool),
    /// Text, parsed as the parameter's type (`0.3`, `true`, `42`).
    Str(String),
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Param::Float(v) => write!(f, "{v}"),
            Param::Int(v) => write!(f, "{v}"),
            Param::Bool(v) => write!(f, "{v}"),
            Param::Str(v) => write!(f, "{v}"),
        }
    }
}

/// A parameter's type and default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamDefault {
    /// A number.
    Float(f64),
    /// A whole number.
    Int(i64),
    /// A flag.
    Bool(bool),
}

/// A method: its name, how many models it takes, its parameters.
#[derive(Debug, Clone, Copy)]
pub struct MethodInfo {
    /// sd-mecha's name.
    pub name: &'static str,
    /// Fewest models.
    pub min_inputs: usize,
    /// Most models (`None`: any number).
    pub max_inputs: Option<usize>,
    /// The inputs, as sd-mecha names them (`a, b`, `base, *models`).
    pub signature: &'static str,
    /// Parameters and defaults.
    pub params: &'static [(&'static str, ParamDefault)],
}

use ParamDefault::{Bool, Float, Int};

/// Every method, with its parameters and defaults (sd-mecha's).
pub const KNOWN: &[MethodInfo] = &[
    info("weighted_sum", 2, Some(2), "a, b", &[("alpha", Float(0.5))]),
    info("n_average", 1, None, "*models", &[]),
    info(
        "add_difference",
        2,
        Some(3),
        "a, b, [c]",
        &[("alpha", Float(1.0)), ("clamp_to_ab", Bool(false))],
    ),
    info("slerp", 2, Some(2), "a, b", &[("alpha", Float(0.5))]),
    info(
        "add_perpendicular",
        3,
        Some(3),
        "a, b, c",
        &[("alpha", Float(1.0))],
    ),
    info(
        "train_difference",
        3,
        Some(3),
        "a, b, c",
        &[("alpha", Float(1.0))],
    ),
    info(
        "ties_sum",
        1,
        None,
        "*deltas",
        &[("k", Float(1.0)), ("vote_sgn", Bool(false))],
    ),
    info(
        "add_difference_ties",
        2,
        None,
        "base, *models",
        &[
            ("alpha", Float(1.0)),
            ("k", Float(1.0)),
            ("vote_sgn", Bool(false)),
        ],
    ),
    info(
        "ties_sum_extended",
        1,
        None,
        "*deltas",
        &[
            ("k", Float(0.2)),
            ("vote_sgn", Bool(false)),
            ("apply_stock", Bool(false)),
            ("apply_median", Bool(false)),
            ("cos_eps", Float(1e-6)),
            ("eps", Float(1e-6)),
            ("maxiter", Int(100)),
            ("ftol", Float(1e-20)),
        ],
    ),
    info(
        "add_difference_ties_extended",
        2,
        None,
        "base, *models",
        &[
            ("alpha", Float(1.0)),
            ("k", Float(0.2)),
            ("vote_sgn", Bool(false)),
            ("apply_stock", Bool(false)),
            ("apply_median", Bool(false)),
            ("cos_eps", Float(1e-6)),
            ("eps", Float(1e-6)),
            ("maxiter", Int(100)),
            ("ftol", Float(1e-20)),
        ],
    ),
    info("add_ties_with_dare", 2, None, "base, *models", DARE),
    info("dare", 2, None, "base, *models", DARE),
    info(
        "dropout",
        2,
        None,
        "a, *models",
        &[
            ("probability", Float(0.9)),
            ("alpha", Float(0.5)),
            ("rescale", Float(1.0)),
            ("overlap", Float(1.0)),
            ("overlap_emphasis", Float(0.0)),
            ("seed", Int(0)),
        ],
    ),
    info(
        "della",
        2,
        None,
        "base, *models",
        &[
            ("density", Float(0.5)),
            ("epsilon", Float(0.1)),
            ("lambda", Float(1.0)),
            ("seed", Int(0)),
            ("rescale", Bool(true)),
        ],
    ),
    info(
        "model_stock",
        2,
        None,
        "*deltas",
        &[("cos_eps", Float(1e-6))],
    ),
    info(
        "n_model_stock",
        3,
        None,
        "base, *models",
        &[("cos_eps", Float(1e-6))],
    ),
    info(
        "geometric_median",
        1,
        None,
        "*models",
        &[
            ("eps", Float(1e-6)),
            ("maxiter", Int(100)),
            ("ftol", Float(1e-20)),
        ],
    ),
    info("clamp", 2, None, "a, *bounds", &[("stiffness", Float(0.0))]),
];

const DARE: &[(&str, ParamDefault)] = &[
    ("probability", Float(0.9)),
    ("della_eps", Float(0.0)),
    ("rescale", Bool(true)),
    ("alpha", Float(1.0)),
    ("seed", Int(0)),
    ("k", Float(1.0)),
    ("vote_sgn", Bool(false)),
    ("apply_stock", Bool(false)),
    ("cos_eps", Float(1e-6)),
    ("apply_median", Bool(false)),
    ("eps", Float(1e-6)),
    ("maxiter", Int(100)),
    ("ftol", Float(1e-20)),
];

const fn info(
    name: &'static str,
    min_inputs: usize,
    max_inputs: Option<usize>,
    signature: &'static str,
    params: &'static [(&'static str, ParamDefault)],
) -> MethodInfo {
    MethodInfo {
        name,
        min_inputs,
        max_inputs,
        signature,
        params,
    }
}

/// The known methods' names, for messages.
pub fn known_names() -> String {
    KNOWN.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

/// A method with its parameters checked, for a given number of inputs: builds each tensor's
/// expression ([`Method::tensor`]).
#[derive(Debug, Clone)]
pub struct Method {
    kind: Kind,
    inputs: usize,
}

/// Checks `name`, the number of `inputs` and `params` (unknown names, wrong types, values out of
/// range), and fills in the defaults.
///
/// # Errors
/// [`Error::InvalidInput`] naming the problem and what is accepted: an unknown method (listing
/// the known ones), a count of inputs the method does not take, an unknown parameter (listing the
/// method's), a value of the wrong type or out of range (`k` outside (0, 1], `probability`
/// outside [0, 1], a number that is not finite).
pub fn method(name: &str, inputs: usize, params: &BTreeMap<String, Param>) -> Result<Method> {
    let Some(info) = KNOWN.iter().find(|m| m.name == name) else {
        return Err(Error::InvalidInput(format!(
            "unknown merge method `{name}`; the known methods are {}",
            known_names()
        )));
    };
    let fewer = inputs < info.min_inputs;
    let more = info.max_inputs.is_some_and(|m| inputs > m);
    if fewer || more {
        let takes = match info.max_inputs {
            Some(m) if m == info.min_inputs => format!("{m}"),
            Some(m) => format!("{} to {m}", info.min_inputs),
            None => format!("{} or more", info.min_inputs),
        };
        return Err(Error::InvalidInput(format!(
            "{name}({}) takes {takes} models; {inputs} given",
            info.signature
        )));
    }
    let mut values = BTreeMap::new();
    for (p, v) in params {
        let Some((_, default)) = info.params.iter().find(|(n, _)| n == p) else {
            let names: Vec<String> = info
                .params
                .iter()
                .map(|(n, d)| format!("{n} (default {})", show(*d)))
                .collect();
            return Err(Error::InvalidInput(format!(
                "{name} has no parameter `{p}`; its parameters are {}",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )));
        };
        values.insert(p.as_str(), typed(name, p, v, *default)?);
    }
    let get = |p: &str| -> ParamDefault {
        values.get(p).copied().unwrap_or_else(|| {
            info.params
                .iter()
                .find(|(n, _)| *n == p)
                .map_or(Float(0.0), |(_, d)| *d)
        })
    };
    let kind = kind::kind(name, inputs, &get)?;
    Ok(Method { kind, inputs })
}

fn show(d: ParamDefault) -> String {
    match d {
        Float(v) => format!("{v}"),
        Int(v) => format!("{v}"),
        Bool(v) => format!("{v}"),
    }
}

/// `v` as the type of `default`.
fn typed(method: &str, name: &str, v: &Param, default: ParamDefault) -> Result<ParamDefault> {
    let bad = |what: &str| {
        Error::InvalidInput(format!(
            "{method}: parameter `{name}` takes {what}; `{v}` given"
        ))
    };
    let out = match (default, v) {
        (Float(_), Param::Float(x)) => Float(*x),
        (Float(_), Param::Int(x)) => Float(*x as f64),
        (Float(_), Param::Str(s)) => Float(s.trim().parse().map_err(|_| bad("a number"))?),
        (Int(_), Param::Int(x)) => Int(*x),
        (Int(_), Param::Float(x)) if x.fract() == 0.0 && x.abs() < 9.0e15 => Int(*x as i64),
        (Int(_), Param::Str(s)) => Int(s.trim().parse().map_err(|_| bad("a whole number"))?),
        (Bool(_), Param::Bool(b)) => Bool(*b),
        (Bool(_), Param::Str(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Bool(true),
            "false" | "0" | "no" => Bool(false),
            _ => return Err(bad("true or false")),
        },
        (Float(_), _) => return Err(bad("a number")),
        (Int(_), _) => return Err(bad("a whole number")),
        (Bool(_), _) => return Err(bad("true or false")),
    };
    if let Float(x) = out {
        if !x.is_finite() {
            return Err(bad("a finite number"));
        }
    }
    Ok(out)
}

impl Method {
    /// The method's kind and resolved parameters.
    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    /// How many inputs it was checked for.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// The expression of tensor `key` over `inputs` (one per model, in order).
    ///
    /// # Errors
    /// As [`Merged::method`]: a count of inputs other than the method was checked for, shapes
    /// that differ, tensors that are not floating point.
    pub fn tensor(&self, key: &str, inputs: Vec<InputTensor>) -> Result<InputTensor> {
        if inputs.len() != self.inputs {
            return Err(Error::InvalidInput(format!(
                "`{key}`: {} tensors for a method of {} inputs",
                inputs.len(),
                self.inputs
            )));
        }
        let shape = inputs.first().map(|t| t.info().shape).unwrap_or_default();
        let op: Arc<dyn TensorMethod> =
            Arc::new(ops::Op::new(self.kind.clone(), key, self.inputs, &shape));
        Ok(InputTensor::Merged(Arc::new(Merged::method(
            key, inputs, op,
        )?)))
    }
}

#[cfg(test)]
mod tests;
