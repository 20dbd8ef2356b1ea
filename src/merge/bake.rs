//! LoRA bakes: each module of each LoRA matched to A's tensors and turned into the steps of
//! that weight's chain, as ComfyUI's LoraLoader patches it (`comfy/lora.py` `load_lora`,
//! `comfy/weight_adapter/lora.py`): the low-rank product at `strength · alpha / rank`, full
//! differences at `strength`, `set` whatever the strength, and `reshape_weight`'s zero-padding
//! first. What is not applied is reported with why.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use candle_core::Device;

use super::{lora, lora_keys, recipe, Lora, MergeReport, Recipe};
use crate::error::{Error, Result};
use crate::model::merged::{LoraFactors, Merged, Patch, PatchValue, RowValue};
use crate::model::{Arch, ComponentKind, ComponentShapes, Components, InputTensor};

/// What a LoRA bake applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoraReport {
    /// The LoRA's name.
    pub name: String,
    /// Modules applied to a tensor of the model.
    pub matched: usize,
    /// Keys (or module stems) not applied, each with why: `` `key`: reason ``. ComfyUI leaves
    /// the same ones out with a warning; [`Recipe::strict`] refuses the LoRA instead.
    pub not_applied: Vec<String>,
}

/// One step of a weight's chain: a patch, or ComfyUI's `reshape_weight` zero-padding.
#[derive(Debug, Clone)]
pub(super) enum Step {
    /// A patch.
    Patch(Patch),
    /// The weight zero-padded to this shape.
    Pad(Vec<usize>),
}

/// `base` through `steps`, in order: one [`Merged`] per padding, each over the last.
pub(super) fn build(
    key: &str,
    base: InputTensor,
    steps: Vec<Step>,
    device: Option<&Device>,
    requantize: crate::quant::Requantize,
) -> Result<InputTensor> {
    let on = |m: Merged| {
        let m = match device {
            Some(d) => m.on(d.clone()),
            None => m,
        }
        .with_requantize(requantize);
        InputTensor::Merged(Arc::new(m))
    };
    let (mut current, mut patches, mut pad) = (base, Vec::new(), None::<Vec<usize>>);
    for step in steps {
        match step {
            Step::Patch(p) => patches.push(p),
            Step::Pad(shape) => {
                current = match pad.take() {
                    Some(s) => on(Merged::padded(
                        key,
                        current,
                        s,
                        std::mem::take(&mut patches),
                    )?),
                    None if patches.is_empty() => current,
                    None => on(Merged::new(key, current, std::mem::take(&mut patches))?),
                };
                pad = Some(shape);
            }
        }
    }
    Ok(match pad {
        Some(s) => on(Merged::padded(key, current, s, patches)?),
        None => on(Merged::new(key, current, patches)?),
    })
}

/// Rows of each tensor patched so far, by the module that patches them.
type Claims = BTreeMap<(ComponentKind, String), Vec<(String, Range<usize>)>>;

pub(super) type LoraSteps = BTreeMap<(ComponentKind, String), Vec<Step>>;

/// Every LoRA module matched to A's tensors, as steps by target, in LoRA order.
pub(super) fn lora_patches(
    arch: Option<Arch>,
    a: &Components,
    recipe: &Recipe,
    report: &mut MergeReport,
) -> Result<LoraSteps> {
    let mut out = LoraSteps::new();
    if recipe.loras.is_empty() {
        return Ok(out);
    }
    let shapes = a.shapes();
    let targets = lora_keys::targets(arch, &shapes)?;
    let this = arch.map_or("generic".to_string(), |a| a.to_string());
    for bake in &recipe.loras {
        let l = &bake.lora;
        let mut matched = 0;
        let mut not_applied: Vec<String> = l
            .other_keys
            .iter()
            .map(|k| format!("`{k}`: {}", why_not_read(k)))
            .collect();
        let mut steps = LoraSteps::new();
        // Rows of each tensor patched so far, by stem: ComfyUI keeps one patch per weight.
        let mut taken = Claims::new();
        for (stem, m) in &l.modules {
            let Some(t) = targets.get(stem) else {
                not_applied.push(format!("`{stem}`: matches no tensor of this {this} model"));
                continue;
            };
            matched += 1;
            let strength = match t.kind {
                ComponentKind::Model => bake.strength_model,
                _ => bake.strength_clip,
            };
            let mut claim = |t: &lora_keys::Target| -> Result<()> {
                let rows = t.rows.iter().map(|(r, at)| *at..at + r.len());
                let mine = taken.entry((t.kind, t.key.clone())).or_default();
                for r in rows {
                    if let Some((other, _)) = mine
                        .iter()
                        .find(|(_, o)| o.start < r.end && r.start < o.end)
                    {
                        return Err(Error::InvalidInput(format!(
                            "LoRA {}: modules `{other}` and `{stem}` both patch `{}`; ComfyUI \
                             would apply only one of them, so the file is ambiguous",
                            l.name, t.key
                        )));
                    }
                    mine.push((stem.clone(), r));
                }
                Ok(())
            };
            if m.is_lora() || m.diff.is_some() || m.set.is_some() {
                claim(t)?;
            }
            let bias = match &m.diff_b {
                Some((key, _)) => match t.bias(&shapes) {
                    Ok(b) => {
                        claim(&b)?;
                        Some(b)
                    }
                    Err(why) => {
                        not_applied.push(format!("`{key}`: {why}"));
                        None
                    }
                },
                None => None,
            };
            // LoraLoader with both strengths 0 leaves the model as it is.
            if bake.strength_model == 0.0 && bake.strength_clip == 0.0 {
                continue;
            }
            let weight = steps.entry((t.kind, t.key.clone())).or_default();
            module_steps(l, stem, m, t, strength, &shapes, weight)?;
            if let (Some(b), Some((key, value))) = (bias, &m.diff_b) {
                if strength != 0.0 {
                    let rows = b.rows.clone();
                    steps
                        .entry((b.kind, b.key))
                        .or_default()
                        .push(diff(key, value, rows, strength));
                }
            }
        }
        if matched == 0 {
            return Err(no_match(l, &this));
        }
        if recipe.strict && !not_applied.is_empty() {
            return Err(Error::InvalidInput(format!(
                "LoRA {}: {} of its keys are not applied (first: {}); without --strict they are \
                 listed in the summary and left out, as ComfyUI leaves them",
                l.name,
                not_applied.len(),
                not_applied[0]
            )));
        }
        for (k, v) in steps {
            out.entry(k).or_default().extend(v);
        }
        report.loras.push(LoraReport {
            name: l.name.clone(),
            matched,
            not_applied,
        });
    }
    Ok(out)
}

/// The error for a LoRA none of whose modules names a tensor of the model: the families its
/// names fit, where some do.
fn no_match(l: &Lora, this: &str) -> Error {
    if l.modules.is_empty() {
        return not_a_lora(l);
    }
    let stems: Vec<&str> = l.modules.keys().map(String::as_str).collect();
    let first = stems.first().copied().unwrap_or("");
    let fits = lora_keys::fitting_families(&stems);
    let hint = match fits.as_slice() {
        [] => "is it for another architecture?".to_string(),
        [(_, n), ..] => format!(
            "its names fit {} ({n} of {} module(s)): bake it into a model of that family",
            fits.iter()
                .map(|(a, _)| format!("{a} ({})", a.family().title))
                .collect::<Vec<_>>()
                .join(" or "),
            stems.len()
        ),
    };
    Error::InvalidInput(format!(
        "LoRA {} matches no tensor of this {this} model ({} module(s), first: `{first}`); {hint}",
        l.name,
        stems.len()
    ))
}

/// The error for a file with no key of any LoRA form: usually a checkpoint given as `--lora`,
/// which the "matches no tensor … another architecture?" message would misdescribe.
fn not_a_lora(l: &Lora) -> Error {
    let weight = l
        .other_keys
        .iter()
        .find(|k| k.starts_with("model.diffusion_model."))
        .or_else(|| l.other_keys.first());
    let what = match weight {
        Some(k) => format!(
            "its {} tensor(s) are plain weights (such as `{k}`), so it looks like a checkpoint",
            l.other_keys.len()
        ),
        None => "it holds no tensors".to_string(),
    };
    Error::InvalidInput(format!(
        "LoRA {}: the file holds no LoRA keys (no `lora_up`/`lora_down`, `lora_A`/`lora_B`, \
         `.diff` or `.set_weight` tensors); {what}. To merge two checkpoints, give both as models: \
         `merge A {} --ratio R`",
        l.name, l.name
    ))
}

/// Why a LoRA key was read by no form.
fn why_not_read(key: &str) -> &'static str {
    if key.ends_with(".b_norm") {
        "a `.b_norm` without its `.w_norm`, which ComfyUI does not read"
    } else if key.ends_with(".alpha") {
        "an alpha with no factors to scale"
    } else if key.ends_with(".bias") {
        "a LoRA bias, which ComfyUI reads only in BFL's Flux control LoRAs (as `.diff_b`)"
    } else {
        "no LoRA form has this name"
    }
}

/// A `diff` patch of `value` on `rows` at `strength`.
fn diff(key: &str, value: &InputTensor, rows: Vec<(Range<usize>, usize)>, strength: f64) -> Step {
    Step::Patch(Patch {
        strength: strength as f32,
        strength_model: 1.0,
        value: PatchValue::Diff(RowValue {
            name: key.to_string(),
            value: value.clone(),
            rows,
        }),
    })
}

/// The steps module `m` of `l` puts on its weight `t`, as ComfyUI's LoRA adapter and `diff`
/// and `set` patches compute them.
fn module_steps(
    l: &Lora,
    stem: &str,
    m: &lora::Module,
    t: &lora_keys::Target,
    strength: f64,
    shapes: &ComponentShapes,
    out: &mut Vec<Step>,
) -> Result<()> {
    if let (Some(up), Some(down)) = (&m.up, &m.down) {
        // ComfyUI pads whatever the strength (the product it then adds may be 0).
        if let Some(shape) = &m.reshape {
            if !t.is_whole(shapes) {
                return Err(Error::InvalidInput(format!(
                    "LoRA {}: `{stem}.reshape_weight` pads part of the fused `{}`, which ComfyUI \
                     cannot apply either",
                    l.name, t.key
                )));
            }
            out.push(Step::Pad(shape.clone()));
        }
        if strength != 0.0 {
            let factors = LoraFactors {
                name: format!("{}: {stem}", l.name),
                up: up.clone(),
                down: down.clone(),
                mid: m.mid.clone(),
                rows: t.rows.clone(),
            };
            // `alpha / rank`, then `strength * alpha`, in f64 as Python computes them.
            let alpha = match &m.alpha {
                Some(a) => recipe::scalar(a, &factors.name)? / factors.rank().max(1) as f64,
                None => 1.0,
            };
            out.push(Step::Patch(Patch {
                strength: (strength * alpha) as f32,
                strength_model: 1.0,
                value: PatchValue::Lora(Arc::new(factors)),
            }));
        }
    }
    if let Some((key, value)) = &m.diff {
        if strength != 0.0 {
            out.push(diff(key, value, t.rows.clone(), strength));
        }
    }
    if let Some((key, value)) = &m.set {
        // ComfyUI's `set` copies the value whatever the strength.
        out.push(Step::Patch(Patch {
            strength: 1.0,
            strength_model: 1.0,
            value: PatchValue::Set(RowValue {
                name: key.clone(),
                value: value.clone(),
                rows: t.rows.clone(),
            }),
        }));
    }
    Ok(())
}
