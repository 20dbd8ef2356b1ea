//! Detection from a header alone: which family a denoiser's keys and shapes (no prefix) belong
//! to, the configuration values ComfyUI would derive from them, and which known variant that
//! configuration is — with the evidence, so a refusal can say what was found.
//!
//! Every family's tells are checked, so the rules must exclude each other: a denoiser that
//! satisfies two families' tells holds keys of two models and is refused, naming both.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{Derive, Family, Tell, Variant};
use crate::error::{Error, Result};
use crate::model::{Arch, TensorInfo};
use crate::synthetic::expand::expand;

/// What detection found.
#[derive(Debug, Clone)]
pub struct Detection {
    /// The family.
    pub arch: Arch,
    /// The known configuration the derived values place it in, when one fits.
    pub variant: Option<&'static Variant>,
    /// Whether it is placed as the variant's test-sized synthetic model.
    pub test_size: bool,
    /// The tells that held, for people.
    pub evidence: Vec<String>,
    /// The configuration values derived from the keys and shapes, in the family's order.
    pub params: Vec<(&'static str, usize)>,
}

impl Detection {
    /// One line: family, variant and values (`wan21: Wan 2.1 text-to-video 1.3B (dim 1536, …)`).
    pub fn summary(&self) -> String {
        let mut s = self.arch.name().to_string();
        if let Some(v) = self.variant {
            let _ = write!(s, ": {}", v.title);
            if self.test_size {
                s.push_str(", test-sized synthetic model");
            }
        }
        if !self.params.is_empty() {
            let values: Vec<String> = self
                .params
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = write!(s, " ({})", values.join(", "));
        }
        s
    }
}

/// Families ComfyUI knows that this tool recognises but does not lay out, by a telling key.
const OTHERS: &[(&str, &str)] = &[
    ("Stable Cascade", "clf.1.weight"),
    ("Stable Audio", "transformer.rotary_pos_emb.inv_freq"),
    ("AuraFlow", "double_layers.0.attn.w1q.weight"),
    ("HunyuanDiT", "mlp_t5.0.weight"),
    ("Mochi", "t5_yproj.weight"),
    ("PixArt", "t_block.1.weight"),
    ("Cosmos", "blocks.block0.blocks.0.block.attn.to_q.0.weight"),
    ("Cosmos Predict2 / Anima", "blocks.0.mlp.layer1.weight"),
    ("ACE-Step", "genre_embedder.weight"),
    (
        "OmniGen2",
        "time_caption_embed.timestep_embedder.linear_1.bias",
    ),
    ("Hunyuan3D", "latent_in.weight"),
    (
        "Kandinsky 5",
        "visual_transformer_blocks.0.cross_attention.key_norm.weight",
    ),
    ("Chroma Radiance", "nerf_blocks.0.norm.scale"),
    (
        "an SVD-style video UNet",
        "input_blocks.1.1.time_stack.0.attn1.to_q.weight",
    ),
];

/// Detects the family of a denoiser from its keys (no prefix) and shapes.
///
/// # Errors
/// - [`Error::UnknownArchitecture`] when no family's tells all hold (naming what was found:
///   near misses, a family ComfyUI knows but this tool does not lay out, the first keys), or
///   when the derived configuration fits none of the family's known variants (naming the
///   values);
/// - [`Error::FamilyMismatch`] when the tells of two families hold (naming both).
pub fn detect(model: &BTreeMap<String, TensorInfo>) -> Result<Detection> {
    let matching: Vec<&Family> = Family::all()
        .iter()
        .filter(|f| f.tells.iter().all(|t| holds(t, model)))
        .collect();
    let family = match matching.as_slice() {
        [one] => *one,
        [] => {
            return Err(Error::UnknownArchitecture {
                reason: no_family(model),
                known: Arch::known_names(),
            })
        }
        [a, b, ..] => {
            return Err(Error::FamilyMismatch {
                reason: format!(
                    "the denoiser holds the keys of two families: {} ({}) and {} ({}); a \
                     checkpoint holds one model, so check how the file was made, or save it \
                     with --arch generic to keep every key under the generic prefixes",
                    a.name,
                    describe(&a.tells[0], model),
                    b.name,
                    describe(&b.tells[0], model),
                ),
            })
        }
    };
    let params = derive(family, model);
    let evidence = family.tells.iter().map(|t| describe(t, model)).collect();
    let (variant, test_size) = place(family, &params)?;
    Ok(Detection {
        arch: family.arch,
        variant,
        test_size,
        evidence,
        params,
    })
}

/// Whether some family's first tell holds: the keys are a denoiser in ComfyUI's names, whether
/// or not every tell holds.
pub fn looks_like_a_family(model: &BTreeMap<String, TensorInfo>) -> bool {
    Family::all()
        .iter()
        .any(|f| f.tells.first().is_some_and(|t| holds(t, model)))
}

/// The values of `family`'s params in `model` (params whose key is missing are left out).
pub(crate) fn derive(
    family: &Family,
    model: &BTreeMap<String, TensorInfo>,
) -> Vec<(&'static str, usize)> {
    family
        .params
        .iter()
        .filter_map(|p| {
            let v = match p.from {
                Derive::Dim { key, axis, div } => *model.get(key)?.shape.get(axis)? / div.max(1),
                Derive::Blocks(prefix) => count_blocks(model, prefix),
                Derive::Present(key) => usize::from(model.contains_key(key)),
            };
            Some((p.name, v))
        })
        .collect()
}

/// The variant `params` place the denoiser in, and whether as its test-sized model.
fn place(
    family: &'static Family,
    params: &[(&'static str, usize)],
) -> Result<(Option<&'static Variant>, bool)> {
    let value = |ps: &[(&str, usize)], name: &str| ps.iter().find(|(k, _)| *k == name).map(|p| p.1);
    // Among the variants the placed values fit, the one most values match (all, for a real
    // file of a known variant; fewer for a capped model of a family not placed by values).
    let mut best: Option<(&'static Variant, bool, usize)> = None;
    for v in family.variants {
        for (spec, tiny) in [(v.full, false), (v.tiny, true)] {
            let shapes = expand(spec);
            let model = shapes
                .get(crate::model::ComponentKind::Model)
                .cloned()
                .unwrap_or_default();
            let known = derive(family, &model);
            let placed = family
                .placed
                .iter()
                .all(|name| value(params, name) == value(&known, name));
            if !placed {
                continue;
            }
            let score = params.iter().filter(|p| known.contains(p)).count();
            if best.is_none_or(|(_, _, s)| score > s) {
                best = Some((v, tiny, score));
            }
        }
    }
    if let Some((v, tiny, _)) = best {
        return Ok((Some(v), tiny));
    }
    if family.placed.is_empty() {
        return Ok((None, false));
    }
    let got: Vec<String> = family
        .placed
        .iter()
        .map(|n| match value(params, n) {
            Some(v) => format!("{n} {v}"),
            None => format!("no {n}"),
        })
        .collect();
    let known: Vec<String> = family
        .variants
        .iter()
        .map(|v| {
            let shapes = expand(v.full);
            let model = shapes
                .get(crate::model::ComponentKind::Model)
                .cloned()
                .unwrap_or_default();
            let ps = derive(family, &model);
            let vals: Vec<String> = family
                .placed
                .iter()
                .filter_map(|n| value(&ps, n).map(|x| format!("{n} {x}")))
                .collect();
            format!("{} ({})", v.name, vals.join(", "))
        })
        .collect();
    Err(Error::UnknownArchitecture {
        reason: format!(
            "a {} denoiser with {} fits no known {} configuration ({}); a file missing blocks \
             looks like this too. If the file is complete, give --arch {} to save it in the \
             family's layout anyway",
            family.title,
            got.join(", "),
            family.name,
            known.join("; "),
            family.name
        ),
        known: Arch::known_names(),
    })
}

/// ComfyUI's `count_blocks`: how many `prefix{n}.` exist for n = 0, 1, … without a gap.
pub(crate) fn count_blocks(model: &BTreeMap<String, TensorInfo>, prefix: &str) -> usize {
    let mut n = 0;
    loop {
        let start = format!("{prefix}{n}.");
        match model.range(start.clone()..).next() {
            Some((k, _)) if k.starts_with(&start) => n += 1,
            _ => return n,
        }
    }
}

fn holds(t: &Tell, model: &BTreeMap<String, TensorInfo>) -> bool {
    let shape = |k: &str| model.get(k).map(|i| i.shape.as_slice());
    match *t {
        Tell::Key(k) => model.contains_key(k),
        Tell::Either(ks) => ks.iter().any(|k| model.contains_key(*k)),
        Tell::NoKey(k) => !model.contains_key(k),
        Tell::NoPrefix(p) => !model.keys().any(|k| k.starts_with(p)),
        Tell::NoContains(s) => !model.keys().any(|k| k.contains(s)),
        Tell::Blocks(p, n) => count_blocks(model, p) == n,
        Tell::Rank(k, r) => shape(k).is_some_and(|s| s.len() == r),
        Tell::Dim(k, axis, v) => shape(k).and_then(|s| s.get(axis)) == Some(&v),
        Tell::NotDim(k, axis, v) => shape(k).and_then(|s| s.get(axis)) != Some(&v),
    }
}

/// What `t` says about `model`: the fact when it holds, what was found instead when not.
fn describe(t: &Tell, model: &BTreeMap<String, TensorInfo>) -> String {
    let ok = holds(t, model);
    let shape = |k: &str| model.get(k).map(|i| i.shape.clone());
    match *t {
        Tell::Key(k) if ok => format!("`{k}`"),
        Tell::Key(k) => format!("`{k}` is missing"),
        Tell::Either(ks) => match ks.iter().find(|k| model.contains_key(**k)) {
            Some(k) => format!("`{k}`"),
            None => format!("none of `{}`", ks.join("`, `")),
        },
        Tell::NoKey(k) if ok => format!("no `{k}`"),
        Tell::NoKey(k) => format!("`{k}` is present"),
        Tell::NoPrefix(p) if ok => format!("no `{p}…`"),
        Tell::NoPrefix(p) => format!("keys start with `{p}`"),
        Tell::NoContains(s) if ok => format!("no key with `{s}`"),
        Tell::NoContains(s) => format!("keys contain `{s}`"),
        Tell::Blocks(p, n) if ok => format!("{n} `{p}N.` blocks"),
        Tell::Blocks(p, n) => format!("{} `{p}N.` blocks, not {n}", count_blocks(model, p)),
        Tell::Rank(k, r) if ok => format!("`{k}` is {r}-D"),
        Tell::Rank(k, r) => match shape(k) {
            Some(s) => format!("`{k}` is {}-D, not {r}-D", s.len()),
            None => format!("`{k}` is missing"),
        },
        Tell::Dim(k, axis, v) if ok => format!("`{k}` has {v} at dimension {axis}"),
        Tell::Dim(k, axis, v) | Tell::NotDim(k, axis, v) => match shape(k) {
            Some(s) if ok => format!("`{k}` is {s:?} (not {v} at dimension {axis})"),
            Some(s) => format!("`{k}` is {s:?} ({v} at dimension {axis})"),
            None if ok => format!("no `{k}`"),
            None => format!("`{k}` is missing"),
        },
    }
}

/// The evidence for "no family": near misses, a family this tool does not lay out, or the first
/// keys.
fn no_family(model: &BTreeMap<String, TensorInfo>) -> String {
    if model.is_empty() {
        return format!("the model component is empty; {}", telling_keys());
    }
    // Families whose first tell holds but not every tell: group them by the first failure.
    let mut misses: Vec<(String, Vec<&str>)> = Vec::new();
    for f in Family::all() {
        let Some(first) = f.tells.first() else {
            continue;
        };
        if !holds(first, model) {
            continue;
        }
        if let Some(t) = f.tells.iter().find(|t| !holds(t, model)) {
            let why = describe(t, model);
            match misses.iter_mut().find(|(w, _)| *w == why) {
                Some((_, names)) => names.push(f.name),
                None => misses.push((why, vec![f.name])),
            }
        }
    }
    if !misses.is_empty() {
        let parts: Vec<String> = misses
            .iter()
            .map(|(why, names)| format!("{}: {why}", names.join(", ")))
            .collect();
        return format!(
            "the denoiser looks like a known family but fails its tells ({})",
            parts.join("; ")
        );
    }
    if let Some((name, key)) = OTHERS.iter().find(|(_, k)| model.contains_key(*k)) {
        return format!(
            "`{key}` says this is {name}, a model ComfyUI knows that this tool does not lay out"
        );
    }
    let first: Vec<&str> = model.keys().take(4).map(String::as_str).collect();
    format!(
        "the denoiser's first keys are `{}`; {}",
        first.join("`, `"),
        telling_keys()
    )
}

/// Each family's first tell, families sharing one grouped: what detection looks for.
fn telling_keys() -> String {
    let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
    for f in Family::all() {
        let key = match f.tells.first() {
            Some(Tell::Key(k)) => format!("`{k}`"),
            Some(Tell::Either(ks)) => format!("`{}`", ks.first().copied().unwrap_or_default()),
            _ => continue,
        };
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, names)) => names.push(f.name),
            None => groups.push((key, vec![f.name])),
        }
    }
    let parts: Vec<String> = groups
        .iter()
        .map(|(k, names)| format!("{k} ({})", names.join(", ")))
        .collect();
    format!("no family's telling key is present: {}", parts.join(", "))
}

#[cfg(test)]
mod tests;
