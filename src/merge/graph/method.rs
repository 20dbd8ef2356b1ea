//! The method nodes of a graph: one of sd-mecha's merge methods over the denoisers, or the text
//! encoders, of any number of models ([`crate::merge::methods`]).

use std::collections::BTreeMap;

use candle_core::Device;

use super::compile::in_node;
use super::mergeable;
use super::values::{Chains, ClipValue, ModelValue, Value};
use crate::error::{Error, Result};
use crate::merge::methods::{method, Method, Param};
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
    let operands: Vec<(&Chains, &str)> = values
        .iter()
        .map(|v| (&v.chains, v.origin.as_str()))
        .collect();
    let (out, merged, missing) = method_tensors(me, &m, &operands, &|_| true, device)?;
    let value = Value::Model(ModelValue {
        chains: Chains::new(out),
        ..first.clone()
    });
    Ok((value, merged, missing))
}

/// The `CLIP` a text-encoder method node outputs, as [`method_value`] on the text encoders:
/// `position_ids` and `logit_scale` stay the first's, as ComfyUI's CLIP merge nodes leave them.
///
/// # Errors
/// As [`method_value`]; text encoders made for different architectures.
pub(super) fn clip_method_value(
    me: &str,
    name: &str,
    values: &[ClipValue],
    params: &BTreeMap<String, Param>,
    device: Option<&Device>,
) -> Result<(Value, usize, Vec<String>)> {
    let m = method(name, values.len(), params).map_err(|e| in_node(me, e))?;
    let first = &values[0];
    for v in &values[1..] {
        if let (Some(x), Some(y)) = (first.arch, v.arch) {
            if !mergeable(x, y) {
                return Err(Error::InvalidInput(format!(
                    "{me}: {} is for {x} and {} for {y}; text encoders of different \
                     architectures cannot be merged",
                    first.origin, v.origin
                )));
            }
        }
    }
    let operands: Vec<(&Chains, &str)> = values
        .iter()
        .map(|v| (&v.chains, v.origin.as_str()))
        .collect();
    let takes = |k: &str| !(k.ends_with(".position_ids") || k.ends_with(".logit_scale"));
    let (out, merged, missing) = method_tensors(me, &m, &operands, &takes, device)?;
    let value = Value::Clip(ClipValue {
        chains: Chains::new(out),
        ..first.clone()
    });
    Ok((value, merged, missing))
}

/// Method `m` over each key of the first operand that `takes` accepts and every operand has
/// (floating point, of one shape); the other keys stay the first's. Returns the tensors, the
/// number merged and the keys another operand lacks.
fn method_tensors(
    me: &str,
    m: &Method,
    operands: &[(&Chains, &str)],
    takes: &dyn Fn(&str) -> bool,
    device: Option<&Device>,
) -> Result<(InputMap, usize, Vec<String>)> {
    let (first, first_origin) = operands[0];
    let mut out = InputMap::new();
    let (mut merged, mut missing) = (0, Vec::new());
    for key in first.base().keys() {
        let Some(t0) = first.expr(key, device)? else {
            continue;
        };
        if !takes(key) {
            out.insert(key.clone(), t0);
            continue;
        }
        let mut inputs = vec![t0.clone()];
        for (c, _) in &operands[1..] {
            match c.expr(key, device)? {
                Some(t) => inputs.push(t),
                None => break,
            }
        }
        if inputs.len() < operands.len() {
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
                    "{me}: it has this shape in {first_origin} and {s:?} in {}; merge models \
                     of one architecture and size",
                    operands[i].1
                ),
            });
        }
        out.insert(key.clone(), m.tensor(key, inputs)?);
        merged += 1;
    }
    Ok((out, merged, missing))
}
