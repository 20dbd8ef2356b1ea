//! LoRA files: their modules, the names trainers give them, and the weights those names land on.
//!
//! A module is `up` and `down` (and LoCon's optional `mid`), with an optional `alpha`, under one
//! stem. The suffixes read are kohya's (`.lora_up.weight`, `.lora_down.weight`, `.lora_mid.weight`,
//! `.alpha`), PEFT's (`.lora_B.weight`, `.lora_A.weight`, also with `.default`) and the older
//! diffusers ones (`.lora.up.weight`, `_lora.up.weight`, `.lora_linear_layer.up.weight`). The
//! stems are those ComfyUI's loader accepts (`comfy/lora.py`): kohya's `lora_unet_…` in diffusers
//! or ComfyUI names with `_` for `.`, `lora_te_`/`lora_te1_`/`lora_te2_`/`lora_te3_…` for the text
//! encoders, diffusers/PEFT's `unet.…`, `transformer.…`, `text_encoder.…` (and bare diffusers
//! names), and ComfyUI's own `diffusion_model.…`. LoHa, LoKr, OFT, DoRA and full-difference files
//! are refused, naming the form.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;

use crate::error::{Error, Result};
use crate::layout::diffusers::{encoder_folders, from_comfy, Folder};
use crate::model::{Arch, ComponentKind, ComponentShapes, InputMap, InputTensor};

/// One LoRA file (or map of tensors), its modules read by name, nothing loaded.
#[derive(Debug, Clone)]
pub struct Lora {
    /// The file name (or the name given), for messages and the recipe.
    pub name: String,
    pub(crate) modules: BTreeMap<String, Module>,
    /// Keys that belong to no module.
    pub other_keys: Vec<String>,
}

/// One module's factors.
#[derive(Debug, Clone, Default)]
pub(crate) struct Module {
    pub(crate) up: Option<InputTensor>,
    pub(crate) down: Option<InputTensor>,
    pub(crate) mid: Option<InputTensor>,
    pub(crate) alpha: Option<InputTensor>,
}

const UP: [&str; 6] = [
    ".lora_up.weight",
    ".lora_B.weight",
    ".lora_B.default.weight",
    ".lora.up.weight",
    "_lora.up.weight",
    ".lora_linear_layer.up.weight",
];
const DOWN: [&str; 6] = [
    ".lora_down.weight",
    ".lora_A.weight",
    ".lora_A.default.weight",
    ".lora.down.weight",
    "_lora.down.weight",
    ".lora_linear_layer.down.weight",
];

/// Key fragments of the adapter forms that are not a plain low-rank product.
const UNSUPPORTED: [(&str, &str); 8] = [
    (".hada_w1_a", "LoHa"),
    (".hada_w2_a", "LoHa"),
    (".lokr_w1", "LoKr"),
    (".lokr_w2", "LoKr"),
    (".oft_blocks", "OFT"),
    (".oft_diag", "OFT"),
    (".dora_scale", "DoRA"),
    (".diff_b", "full-difference (`diff`)"),
];

impl Lora {
    /// Reads the header of a LoRA `.safetensors` file.
    ///
    /// # Errors
    /// Read errors; [`Error::InvalidInput`] for a form other than LoRA/LoCon (naming it), or a
    /// module that lacks its up or down factor.
    pub fn open(path: &Path) -> Result<Lora> {
        let tensors = crate::input::open_tensors(path)?;
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        Lora::from_tensors(&name, tensors)
    }

    /// Groups named tensors (a LoRA file's, or candle tensors) into modules.
    ///
    /// # Errors
    /// As [`Lora::open`].
    pub fn from_tensors(name: &str, tensors: InputMap) -> Result<Lora> {
        for key in tensors.keys() {
            let form = UNSUPPORTED
                .iter()
                .find(|(frag, _)| key.contains(frag))
                .map(|(_, f)| *f)
                .or_else(|| key.ends_with(".diff").then_some("full-difference (`diff`)"));
            if let Some(form) = form {
                return Err(Error::InvalidInput(format!(
                    "{name} is a {form} file (`{key}`), which is not supported: only LoRA and \
                     LoCon modules (up/down, optional mid and alpha) can be baked"
                )));
            }
        }
        let mut modules: BTreeMap<String, Module> = BTreeMap::new();
        let mut other_keys = Vec::new();
        for (key, t) in tensors {
            let strip = |suffixes: &[&str]| {
                suffixes
                    .iter()
                    .find_map(|s| key.strip_suffix(s))
                    .map(str::to_string)
            };
            if let Some(stem) = strip(&UP) {
                modules.entry(stem).or_default().up = Some(t);
            } else if let Some(stem) = strip(&DOWN) {
                modules.entry(stem).or_default().down = Some(t);
            } else if let Some(stem) = strip(&[".lora_mid.weight"]) {
                modules.entry(stem).or_default().mid = Some(t);
            } else if let Some(stem) = strip(&[".alpha"]) {
                modules.entry(stem).or_default().alpha = Some(t);
            } else {
                other_keys.push(key);
            }
        }
        for (stem, m) in &modules {
            if m.up.is_none() || m.down.is_none() {
                let has = match (&m.up, &m.down) {
                    (Some(_), _) => "an up factor",
                    (_, Some(_)) => "a down factor",
                    _ => "only alpha or mid",
                };
                return Err(Error::InvalidInput(format!(
                    "{name}: module `{stem}` has {has} but not both up and down factors"
                )));
            }
        }
        Ok(Lora {
            name: name.to_string(),
            modules,
            other_keys,
        })
    }

    /// Number of modules.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    /// Whether the file has no module.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }
}

/// Where a module lands: a tensor of a component, and which of its rows (`(product rows, first
/// target row)` runs).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Target {
    pub(crate) kind: ComponentKind,
    pub(crate) key: String,
    pub(crate) rows: Vec<(Range<usize>, usize)>,
}

/// Every module name the loaders accept for `arch`'s tensors in `shapes` (ComfyUI's names).
///
/// # Errors
/// Errors of the diffusers mapping of the model (a model that does not fit `arch`).
pub(crate) fn targets(arch: Arch, shapes: &ComponentShapes) -> Result<HashMap<String, Target>> {
    let mut map = HashMap::new();
    let whole = |kind: ComponentKind, key: &str, rows: usize| Target {
        kind,
        key: key.to_string(),
        rows: vec![(0..rows, 0)],
    };
    let rows_of = |info: &crate::model::TensorInfo| info.shape.first().copied().unwrap_or(1);
    // ComfyUI's own names.
    if let Some(model) = shapes.get(ComponentKind::Model) {
        for (k, info) in model {
            let Some(stem) = k.strip_suffix(".weight") else {
                continue;
            };
            let t = whole(ComponentKind::Model, k, rows_of(info));
            map.insert(format!("lora_unet_{}", stem.replace('.', "_")), t.clone());
            map.insert(format!("diffusion_model.{stem}"), t);
        }
    }
    let encoders: Vec<&str> = encoder_folders(arch).iter().map(|(_, e)| *e).collect();
    if let Some(clip) = shapes.get(ComponentKind::Clip) {
        for (k, info) in clip {
            let Some(stem) = k.strip_suffix(".weight") else {
                continue;
            };
            let Some((enc, inner)) = stem.split_once(".transformer.") else {
                continue;
            };
            let Some(i) = encoders.iter().position(|e| *e == enc) else {
                continue;
            };
            let t = whole(ComponentKind::Clip, k, rows_of(info));
            let flat = inner.replace('.', "_");
            if encoders.len() == 1 {
                map.insert(format!("lora_te_{flat}"), t.clone());
            }
            map.insert(format!("lora_te{}_{flat}", i + 1), t.clone());
            map.insert(stem.to_string(), t.clone());
            map.insert(format!("text_encoders.{stem}"), t);
        }
    }
    // diffusers / transformers names, through the same mapping `split --to diffusers` uses.
    for plan in from_comfy(arch, shapes)? {
        let kind = plan.class.kind();
        let prefixes: &[&str] = match plan.folder {
            Folder::Unet => &["unet.", ""],
            Folder::Transformer => &["transformer.", ""],
            Folder::Vae => continue,
            f => &[f.name()],
        };
        for a in &plan.tensors {
            let Some(stem) = a.key.strip_suffix(".weight") else {
                continue;
            };
            let Some(rows) = row_runs(a, shapes, kind) else {
                continue;
            };
            let t = Target {
                kind,
                key: a.parts[0].key.clone(),
                rows,
            };
            for p in prefixes {
                let dotted = match *p {
                    "" => stem.to_string(),
                    p if p.ends_with('.') => format!("{p}{stem}"),
                    p => format!("{p}.{stem}"),
                };
                map.entry(dotted.clone()).or_insert_with(|| t.clone());
                // The attention-processor names of older diffusers LoRAs.
                let processor = dotted.replace(".to_", ".processor.to_");
                let processor = processor
                    .strip_suffix(".to_out.0")
                    .map_or(processor.clone(), |p| format!("{p}.to_out"));
                map.entry(processor).or_insert_with(|| t.clone());
            }
            let kohya = match plan.folder {
                Folder::Unet => Some("lora_unet"),
                Folder::Transformer => Some("lora_transformer"),
                _ => None,
            };
            if let Some(k) = kohya {
                map.entry(format!("{k}_{}", stem.replace('.', "_")))
                    .or_insert_with(|| t.clone());
            }
        }
    }
    Ok(map)
}

/// The product rows → target rows runs of a diffusers tensor made of row ranges of one
/// ComfyUI tensor; `None` where it is not (several tensors, or a range that is not whole rows).
fn row_runs(
    a: &crate::layout::diffusers::Assembly,
    shapes: &ComponentShapes,
    kind: ComponentKind,
) -> Option<Vec<(Range<usize>, usize)>> {
    let key = &a.parts.first()?.key;
    if a.parts.iter().any(|p| &p.key != key) {
        return None;
    }
    let target = shapes.info(kind, key)?;
    let t_rows = target.shape.first().copied().unwrap_or(1).max(1);
    let width = target.numel() / t_rows;
    let rows = a.shape.first().copied().unwrap_or(1).max(1);
    if width == 0 || a.shape.iter().product::<usize>() / rows != width {
        return None;
    }
    let mut runs = Vec::new();
    let mut at = 0;
    for p in &a.parts {
        if p.elements.start % width != 0 || p.elements.len() % width != 0 {
            return None;
        }
        let n = p.elements.len() / width;
        runs.push((at..at + n, p.elements.start / width));
        at += n;
    }
    Some(runs)
}
