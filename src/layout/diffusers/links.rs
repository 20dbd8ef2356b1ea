//! The one engine both directions run on: a table of [`Link`]s between diffusers and ComfyUI
//! names, resolved against the keys and shapes of one side into [`Assembly`]s of the other.
//!
//! Each model module only describes which names correspond (from the structure it reads off the
//! keys); this module checks that every source tensor is used exactly once, that fused parts exist
//! and agree, and computes the element ranges. Using one table for both directions is what keeps
//! `to_comfy ∘ from_comfy` the identity.

use std::collections::{BTreeMap, HashMap};

use super::{Assembly, Part};
use crate::error::{Error, Result};
use crate::model::TensorInfo;

/// How the elements of the two sides correspond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    /// Same elements, same shape.
    Same,
    /// Same elements; a linear `[o, i]` in diffusers, a 1×1 convolution `[o, i, 1, 1]` in ComfyUI.
    Conv1x1,
    /// The ComfyUI tensor is the diffusers tensors concatenated along dim 0, in order. Split back
    /// into equal parts (`head_rows: None`) or, for Flux's `linear1`, `head_rows` rows for every
    /// part but the last, which takes the rest.
    Fused {
        /// Rows of each part but the last when the parts differ (Flux's `linear1`).
        head_rows: Option<usize>,
    },
    /// As [`Op::Fused`] with a first part of its own size and the others equal: grouped-query
    /// attention's `qkv` (Lumina 2: q has the width's rows, k and v fewer).
    FusedFirst {
        /// Rows of the first part.
        first_rows: usize,
    },
    /// The two halves along dim 0 swap places (AdaLayerNormContinuous stores `[scale; shift]`
    /// where the original stores `[shift; scale]`); its own inverse.
    Swapped,
}

/// One ComfyUI tensor and the diffusers tensor(s) it corresponds to.
#[derive(Debug, Clone)]
pub(super) struct Link {
    /// diffusers key(s); several only for [`Op::Fused`].
    pub d: Vec<String>,
    /// ComfyUI in-memory key.
    pub c: String,
    /// How the elements correspond.
    pub op: Op,
    /// An old diffusers name, accepted when reading diffusers keys but never written.
    pub legacy: bool,
}

impl Link {
    fn new(d: Vec<String>, c: String, op: Op) -> Self {
        Self {
            d,
            c,
            op,
            legacy: false,
        }
    }
}

/// Which naming the source keys are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dir {
    /// diffusers keys in, ComfyUI assemblies out.
    ToComfy,
    /// ComfyUI keys in, diffusers assemblies out.
    FromComfy,
}

/// Collects links; the helpers add `.weight` and `.bias` where a module has both.
#[derive(Debug, Default)]
pub(super) struct Links(pub Vec<Link>);

impl Links {
    /// One tensor, same on both sides.
    pub fn same(&mut self, d: impl Into<String>, c: impl Into<String>) {
        self.0.push(Link::new(vec![d.into()], c.into(), Op::Same));
    }

    /// `.weight` and `.bias` of a module renamed `d` → `c`.
    pub fn module(&mut self, d: &str, c: &str) {
        for leaf in ["weight", "bias"] {
            self.same(format!("{d}.{leaf}"), format!("{c}.{leaf}"));
        }
    }

    /// A tensor whose element order or shape differs by `op`.
    pub fn op(&mut self, d: impl Into<String>, c: impl Into<String>, op: Op) {
        self.0.push(Link::new(vec![d.into()], c.into(), op));
    }

    /// `.weight` and `.bias` of a fused projection: `parts` (diffusers module prefixes, in
    /// concatenation order) ↔ ComfyUI module `c`.
    pub fn fused(&mut self, parts: &[String], c: &str, head_rows: Option<usize>) {
        for leaf in ["weight", "bias"] {
            let d = parts.iter().map(|p| format!("{p}.{leaf}")).collect();
            self.0
                .push(Link::new(d, format!("{c}.{leaf}"), Op::Fused { head_rows }));
        }
    }

    /// One fused tensor (`parts` and `c` are whole keys) split as `op` says.
    pub fn split(&mut self, parts: Vec<String>, c: impl Into<String>, op: Op) {
        self.0.push(Link::new(parts, c.into(), op));
    }

    /// An old diffusers name for `c`, read but never written.
    pub fn legacy(&mut self, d: impl Into<String>, c: impl Into<String>, op: Op) {
        let mut l = Link::new(vec![d.into()], c.into(), op);
        l.legacy = true;
        self.0.push(l);
    }
}

/// Number of numbered children `prefix.N.` among `keys`: the largest `N` plus one, 0 if none.
pub(super) fn count<'a>(keys: impl IntoIterator<Item = &'a String>, prefix: &str) -> usize {
    let head = format!("{prefix}.");
    keys.into_iter()
        .filter_map(|k| k.strip_prefix(&head))
        .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
        .map(|n| n + 1)
        .max()
        .unwrap_or(0)
}

/// Resolves `links` against the `source` keys of one model.
///
/// Keys for which `drop` is true are returned as dropped; every other key must be named by a link
/// (else an error naming it), and every link touched by a key becomes one assembly (or, splitting a
/// fused tensor, several). `what` names the model class in messages.
pub(super) fn apply(
    links: &[Link],
    dir: Dir,
    source: &BTreeMap<String, TensorInfo>,
    drop: impl Fn(&str) -> bool,
    what: &str,
) -> Result<(Vec<Assembly>, Vec<String>)> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, l) in links.iter().enumerate() {
        match dir {
            Dir::ToComfy => l.d.iter().for_each(|d| {
                index.entry(d.as_str()).or_insert(i);
            }),
            Dir::FromComfy if !l.legacy => {
                index.entry(l.c.as_str()).or_insert(i);
            }
            Dir::FromComfy => {}
        }
    }
    let mut touched = vec![false; links.len()];
    let mut dropped = Vec::new();
    for key in source.keys() {
        if drop(key) {
            dropped.push(key.clone());
            continue;
        }
        match index.get(key.as_str()) {
            Some(&i) => touched[i] = true,
            None => {
                return Err(Error::Conversion {
                    key: key.clone(),
                    reason: format!(
                        "not a tensor name of a {what} {} (no rule maps it); check that the keys are of that model and naming, unprefixed",
                        match dir {
                            Dir::ToComfy => "in diffusers naming",
                            Dir::FromComfy => "in ComfyUI naming",
                        }
                    ),
                })
            }
        }
    }
    let mut out: BTreeMap<String, (Assembly, String)> = BTreeMap::new();
    for (l, _) in links.iter().zip(&touched).filter(|(_, t)| **t) {
        let made = match dir {
            Dir::ToComfy => vec![to_comfy(l, source)?],
            Dir::FromComfy => from_comfy(l, source)?,
        };
        for a in made {
            let from = a.parts.first().map(|p| p.key.clone()).unwrap_or_default();
            if let Some((_, first)) = out.get(&a.key) {
                return Err(Error::Conversion {
                    key: a.key.clone(),
                    reason: format!(
                        "both `{first}` and `{from}` map to it; a file may hold the old or the new name, not both"
                    ),
                });
            }
            out.insert(a.key.clone(), (a, from));
        }
    }
    Ok((out.into_values().map(|(a, _)| a).collect(), dropped))
}

fn whole(key: &str, info: &TensorInfo) -> Part {
    Part {
        key: key.to_string(),
        elements: 0..info.numel(),
    }
}

/// The two halves of a tensor, second first.
fn swapped(key: &str, info: &TensorInfo, target: &str) -> Result<Vec<Part>> {
    match info.shape.first() {
        Some(rows) if rows % 2 == 0 => {
            let half = info.numel() / 2;
            Ok(vec![
                Part {
                    key: key.to_string(),
                    elements: half..info.numel(),
                },
                Part {
                    key: key.to_string(),
                    elements: 0..half,
                },
            ])
        }
        _ => Err(Error::BadShape {
            key: key.to_string(),
            shape: info.shape.clone(),
            reason: format!(
                "becomes `{target}` by swapping its two halves (shift/scale), so dim 0 must be even"
            ),
        }),
    }
}

fn to_comfy<'a>(l: &'a Link, source: &'a BTreeMap<String, TensorInfo>) -> Result<Assembly> {
    let get = |k: &'a String| source.get(k).map(|i| (k, i));
    let assembly = |info: &TensorInfo, shape, parts| Assembly {
        key: l.c.clone(),
        shape,
        dtype: info.dtype,
        parts,
    };
    match l.op {
        Op::Same | Op::Conv1x1 | Op::Swapped => {
            let Some((k, info)) = l.d.first().and_then(get) else {
                return Err(missing(l, source));
            };
            Ok(match l.op {
                Op::Swapped => assembly(info, info.shape.clone(), swapped(k, info, &l.c)?),
                Op::Conv1x1 => assembly(info, conv_shape(k, info)?, vec![whole(k, info)]),
                _ => assembly(info, info.shape.clone(), vec![whole(k, info)]),
            })
        }
        Op::Fused { .. } | Op::FusedFirst { .. } => {
            let mut got = Vec::with_capacity(l.d.len());
            for k in &l.d {
                got.push(get(k).ok_or_else(|| missing(l, source))?);
            }
            let (k0, first) = got[0];
            // The parts that must be interchangeable: q, k and v (all parts; all but Flux's
            // MLP part; all but grouped-query attention's q).
            let equal = |i: usize| match l.op {
                Op::Fused { head_rows: None } => true,
                Op::Fused { .. } => i + 1 < got.len(),
                _ => i > 0,
            };
            let reference = if matches!(l.op, Op::FusedFirst { .. }) && got.len() > 1 {
                got[1].1
            } else {
                first
            };
            let mut rows = 0;
            for (i, (k, info)) in got.iter().enumerate() {
                let same_tail = info.shape.len() == first.shape.len()
                    && info.shape.get(1..) == first.shape.get(1..);
                let ok = !info.shape.is_empty()
                    && info.dtype == first.dtype
                    && same_tail
                    && (!equal(i) || info.shape == reference.shape);
                if !ok {
                    return Err(Error::Conversion {
                        key: l.c.clone(),
                        reason: format!(
                            "`{k0}` is {:?} {} but `{k}` is {:?} {}; the fused parts need the same dtype and trailing dims, and q, k, v the same shape",
                            first.shape, first.dtype, info.shape, info.dtype
                        ),
                    });
                }
                rows += info.shape[0];
            }
            let mut shape = first.shape.clone();
            shape[0] = rows;
            let parts = got.iter().map(|(k, i)| whole(k, i)).collect();
            Ok(assembly(first, shape, parts))
        }
    }
}

fn from_comfy(l: &Link, source: &BTreeMap<String, TensorInfo>) -> Result<Vec<Assembly>> {
    // Only links whose ComfyUI key is present are resolved in this direction.
    let Some(info) = source.get(&l.c) else {
        return Ok(Vec::new());
    };
    let one = |shape, parts| {
        vec![Assembly {
            key: l.d[0].clone(),
            shape,
            dtype: info.dtype,
            parts,
        }]
    };
    match l.op {
        Op::Same => Ok(one(info.shape.clone(), vec![whole(&l.c, info)])),
        Op::Swapped => Ok(one(info.shape.clone(), swapped(&l.c, info, &l.d[0])?)),
        Op::Conv1x1 => {
            let shape = match info.shape[..] {
                [o, i, 1, 1] | [o, i] => vec![o, i],
                _ => return Err(bad_conv(&l.c, info)),
            };
            Ok(one(shape, vec![whole(&l.c, info)]))
        }
        Op::Fused { .. } | Op::FusedFirst { .. } => {
            let n = l.d.len();
            let total = info.shape.first().copied().unwrap_or(0);
            let rows: Vec<usize> = match l.op {
                Op::Fused { head_rows: None } if total % n == 0 && total > 0 => vec![total / n; n],
                Op::Fused { head_rows: Some(h) } if h > 0 && total > h * (n - 1) => {
                    let mut r = vec![h; n - 1];
                    r.push(total - h * (n - 1));
                    r
                }
                Op::FusedFirst { first_rows: f }
                    if n > 1 && f > 0 && total > f && (total - f) % (n - 1) == 0 =>
                {
                    let mut r = vec![(total - f) / (n - 1); n - 1];
                    r.insert(0, f);
                    r
                }
                _ => {
                    return Err(Error::BadShape {
                        key: l.c.clone(),
                        shape: info.shape.clone(),
                        reason: format!(
                        "splits along dim 0 into {n} parts ({}), which that size does not allow",
                        match l.op {
                            Op::Fused { head_rows: Some(h) } =>
                                format!("{h} rows each, the last the rest"),
                            Op::FusedFirst { first_rows } =>
                                format!("{first_rows} rows, the others equal"),
                            _ => "equal".to_string(),
                        }
                    ),
                    })
                }
            };
            let row_len = info.numel() / total;
            let mut start = 0;
            let mut out = Vec::with_capacity(n);
            for (d, r) in l.d.iter().zip(rows) {
                let mut shape = info.shape.clone();
                shape[0] = r;
                out.push(Assembly {
                    key: d.clone(),
                    shape,
                    dtype: info.dtype,
                    parts: vec![Part {
                        key: l.c.clone(),
                        elements: start..start + r * row_len,
                    }],
                });
                start += r * row_len;
            }
            Ok(out)
        }
    }
}

/// ComfyUI's 1×1 convolution shape of a diffusers linear weight.
fn conv_shape(key: &str, info: &TensorInfo) -> Result<Vec<usize>> {
    match info.shape[..] {
        [o, i] | [o, i, 1, 1] => Ok(vec![o, i, 1, 1]),
        _ => Err(bad_conv(key, info)),
    }
}

fn bad_conv(key: &str, info: &TensorInfo) -> Error {
    Error::BadShape {
        key: key.to_string(),
        shape: info.shape.clone(),
        reason: "an autoencoder attention projection must be [out, in] (linear) or [out, in, 1, 1] (1×1 convolution)".into(),
    }
}

/// The error for a link one of whose diffusers tensors is absent.
fn missing(l: &Link, source: &BTreeMap<String, TensorInfo>) -> Error {
    let list = |present: bool| -> Vec<&str> {
        l.d.iter()
            .filter(|d| source.contains_key(*d) == present)
            .map(String::as_str)
            .collect()
    };
    let (absent, present) = (list(false), list(true));
    Error::Conversion {
        key: l.c.clone(),
        reason: format!(
            "is made of `{}` but `{}` is missing (found {}); the model is incomplete",
            l.d.join("` + `"),
            absent.join("`, `"),
            if present.is_empty() {
                "none of them".to_string()
            } else {
                format!("`{}`", present.join("`, `"))
            }
        ),
    }
}
