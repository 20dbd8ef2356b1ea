//! The method node of a graph: one of sd-mecha's merge methods over the denoisers of any
//! number of models ([`crate::merge::methods`]).

use std::collections::BTreeMap;

use candle_core::Device;

use super::compile::in_node;
use super::mergeable;
use super::values::{Chains, ModelValue, Value};
use crate::error::{Error, Result};
use crate::merge::methods::{method, Param};
use crate::model::dtype::is_float;
use crate::model::InputMap;

/// The `MODEL` a method node outputs: every denoiser tensor of the first model that all the
/// others have (floating point, of one shape) becomes the method's expression over them; the
/// others stay the first model's. Returns it with the number of tensors merged and the keys
/// another model lacks.
///
/// # Errors
/// The method's refusals (name, count, parameters); models of different architectures; a key
/// whose shapes differ, naming both models.
pub(super) fn method_value(
    me: &str,
    name: &str,
    values: &[ModelValue],
    params: &BTreeMap<String, Param>,
    device: Option<&Device>,
) -> Result<(Value, usize, Vec<String>)> {
    let m = method(name, values.len(), params).map_err(|e| in_node(me, e))?;
    let first = &values[0];
    for v in &values[1..] {
        if !mergeable(first.arch, v.arch) {
            return Err(Error::InvalidInput(format!(
                "{me}: {} is {} and {} is {}; models of different architectures cannot be \
                 merged",
                first.origin, first.arch, v.origin, v.arch
            )));
        }
    }
    let mut out = InputMap::new();
    let (mut merged, mut missing) = (0, Vec::new());
    for key in first.chains.base().keys() {
        let Some(t0) = first.chains.expr(key, device)? else {
            continue;
        };
        let mut inputs = vec![t0.clone()];
        for v in &values[1..] {
            match v.chains.expr(key, device)? {
                Some(t) => inputs.push(t),
                None => break,
            }
        }
        if inputs.len() < values.len() {
            missing.push(key.clone());
            out.insert(key.clone(), t0);
            continue;
        }
        if !inputs.iter().all(|t| is_float(t.info().dtype)) {
            out.insert(key.clone(), t0);
            continue;
        }
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.info().shape).collect();
        if let Some((i, s)) = shapes.iter().enumerate().find(|(_, s)| **s != shapes[0]) {
            return Err(Error::BadShape {
                key: key.clone(),
                shape: shapes[0].clone(),
                reason: format!(
                    "{me}: it has this shape in {} and {s:?} in {}; merge models of one \
                     architecture and size",
                    first.origin, values[i].origin
                ),
            });
        }
        out.insert(key.clone(), m.tensor(key, inputs)?);
        merged += 1;
    }
    let value = Value::Model(ModelValue {
        chains: Chains::new(out),
        ..first.clone()
    });
    Ok((value, merged, missing))
}
