//! LoRA files: the forms ComfyUI's loader reads (`comfy/lora.py` `load_lora`,
//! `comfy/weight_adapter/lora.py`, `comfy/lora_convert.py`), grouped into modules by stem.
//!
//! What a module may hold, by key suffix:
//! - LoRA/LoCon factors: up and down in kohya's (`.lora_up.weight`, `.lora_down.weight`, with
//!   an optional Tucker `.lora_mid.weight`), PEFT's (`.lora_B.weight`/`.lora_A.weight`, also
//!   `.default.weight` and Mochi's bare `.lora_B`/`.lora_A`) or older diffusers' names
//!   (`.lora.up.weight`, `_lora.up.weight`, `.lora_linear_layer.up.weight`); `.alpha`; and
//!   `.reshape_weight`, the shape the weight is zero-padded to first;
//! - full differences, added at the strength (ComfyUI's `diff` patch): `.diff` and `.w_norm` on
//!   the weight, `.diff_b` (and `.b_norm`, only beside a `.w_norm`, as ComfyUI reads it) on the
//!   bias beside it;
//! - `.set_weight`: the weight replaced (ComfyUI's `set` patch).
//!
//! Refused by name, naming the key: LoHa, LoKr, GLoRA, OFT and BOFT (ComfyUI's other weight
//! adapters), and DoRA (`.dora_scale`, which needs each weight's norm: not applied yet). Two
//! forms on one weight (ComfyUI would keep only the last one read) are refused too. Keys no form
//! reads are kept in [`Lora::other_keys`] and reported. BFL's Flux control LoRAs, Wan-Fun's
//! LoRAs and USO's Flux LoRAs are renamed first, as `comfy/lora_convert.py` does. Which weight a stem names is
//! [`super::lora_keys`]'s.

use std::collections::BTreeMap;
use std::path::Path;

use crate::cast;
use crate::error::{Error, Result};
use crate::model::dtype::can_decode;
use crate::model::{Dtype, InputMap, InputTensor};

/// One LoRA file (or map of tensors), its modules read by name, nothing loaded.
#[derive(Debug, Clone)]
pub struct Lora {
    /// The file name (or the name given), for messages and the recipe.
    pub name: String,
    pub(crate) modules: BTreeMap<String, Module>,
    /// Keys no form applies: an unknown suffix, a `.b_norm` without its `.w_norm`, or an
    /// `.alpha` with nothing to scale (ComfyUI leaves them too, with "lora key not loaded").
    pub other_keys: Vec<String>,
}

/// One module's tensors, each with its key where messages need it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Module {
    pub(crate) up: Option<InputTensor>,
    pub(crate) down: Option<InputTensor>,
    pub(crate) mid: Option<InputTensor>,
    pub(crate) alpha: Option<InputTensor>,
    /// `.reshape_weight`: the shape the weight is zero-padded to before the product is added.
    pub(crate) reshape: Option<Vec<usize>>,
    /// A difference of the weight: `.diff` or `.w_norm`.
    pub(crate) diff: Option<(String, InputTensor)>,
    /// A difference of the bias: `.diff_b` or `.b_norm`.
    pub(crate) diff_b: Option<(String, InputTensor)>,
    /// `.set_weight`.
    pub(crate) set: Option<(String, InputTensor)>,
    /// Every key of the module, for messages.
    pub(crate) keys: Vec<String>,
}

impl Module {
    /// Whether it holds LoRA factors (up and down).
    pub(crate) fn is_lora(&self) -> bool {
        self.up.is_some() && self.down.is_some()
    }
}

/// Where a key goes in its module.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Slot {
    Up,
    Down,
    Mid,
    Alpha,
    Reshape,
    Diff,
    DiffB,
    Set,
}

/// Suffixes ComfyUI reads, in the order they are tried (a longer form before its prefix).
const FORMS: [(&str, Slot); 22] = [
    (".lora_up.weight", Slot::Up),
    (".lora_down.weight", Slot::Down),
    (".lora_mid.weight", Slot::Mid),
    (".lora_B.default.weight", Slot::Up),
    (".lora_A.default.weight", Slot::Down),
    (".lora_B.weight", Slot::Up),
    (".lora_A.weight", Slot::Down),
    (".lora_linear_layer.up.weight", Slot::Up),
    (".lora_linear_layer.down.weight", Slot::Down),
    (".lora.up.weight", Slot::Up),
    (".lora.down.weight", Slot::Down),
    ("_lora.up.weight", Slot::Up),
    ("_lora.down.weight", Slot::Down),
    (".lora_B", Slot::Up),
    (".lora_A", Slot::Down),
    (".alpha", Slot::Alpha),
    (".reshape_weight", Slot::Reshape),
    (".diff", Slot::Diff),
    (".w_norm", Slot::Diff),
    (".diff_b", Slot::DiffB),
    (".b_norm", Slot::DiffB),
    (".set_weight", Slot::Set),
];

/// Key suffixes of ComfyUI's other weight adapters, refused by name.
const REFUSED: [(&str, &str); 19] = [
    (".hada_w1_a", "LoHa"),
    (".hada_w1_b", "LoHa"),
    (".hada_w2_a", "LoHa"),
    (".hada_w2_b", "LoHa"),
    (".hada_t1", "LoHa"),
    (".hada_t2", "LoHa"),
    (".lokr_w1", "LoKr"),
    (".lokr_w2", "LoKr"),
    (".lokr_w1_a", "LoKr"),
    (".lokr_w1_b", "LoKr"),
    (".lokr_w2_a", "LoKr"),
    (".lokr_w2_b", "LoKr"),
    (".lokr_t2", "LoKr"),
    (".a1.weight", "GLoRA"),
    (".a2.weight", "GLoRA"),
    (".b1.weight", "GLoRA"),
    (".b2.weight", "GLoRA"),
    (".oft_diag", "OFT"),
    (".rescale", "OFT or BOFT"),
];

impl Lora {
    /// Reads the header of a LoRA `.safetensors` file.
    ///
    /// # Errors
    /// Read errors; [`Error::InvalidInput`] as [`Lora::from_tensors`].
    pub fn open(path: &Path) -> Result<Lora> {
        let tensors = crate::input::open_tensors(path)?;
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        Lora::from_tensors(&name, tensors)
    }

    /// Groups named tensors (a LoRA file's, or candle tensors) into modules. Only a
    /// `.reshape_weight` is read (a few integers); factors stay where they lie.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the key, for an adapter other than LoRA/LoCon and full
    /// differences (LoHa, LoKr, GLoRA, OFT, BOFT, DoRA), a module with half a factor pair (or a
    /// `mid` or `reshape_weight` without them), two forms or two tensors for one weight, or a
    /// `reshape_weight` that is not a list of sizes.
    pub fn from_tensors(name: &str, tensors: InputMap) -> Result<Lora> {
        for (key, t) in &tensors {
            refuse_other_adapters(name, key, t)?;
        }
        let (tensors, reshape) = convert(tensors)?;
        let mut modules: BTreeMap<String, Module> = BTreeMap::new();
        let mut other_keys = Vec::new();
        for (key, t) in tensors {
            let Some((stem, slot)) = FORMS
                .iter()
                .find_map(|(s, slot)| Some((key.strip_suffix(s)?, *slot)))
            else {
                other_keys.push(key);
                continue;
            };
            let m = modules.entry(stem.to_string()).or_default();
            m.keys.push(key.clone());
            let taken = |what: &str| {
                Error::InvalidInput(format!(
                    "{name}: module `{stem}` has two {what} (`{key}` and another); ComfyUI would \
                     apply only one of them"
                ))
            };
            match slot {
                Slot::Up => put(&mut m.up, t).ok_or_else(|| taken("up factors"))?,
                Slot::Down => put(&mut m.down, t).ok_or_else(|| taken("down factors"))?,
                Slot::Mid => put(&mut m.mid, t).ok_or_else(|| taken("mid factors"))?,
                Slot::Alpha => put(&mut m.alpha, t).ok_or_else(|| taken("alphas"))?,
                Slot::Reshape => {
                    m.reshape = Some(sizes(name, &key, &t)?);
                }
                Slot::Diff => put(&mut m.diff, (key.clone(), t))
                    .ok_or_else(|| taken("weight differences (`.diff`, `.w_norm`)"))?,
                Slot::DiffB => put(&mut m.diff_b, (key.clone(), t))
                    .ok_or_else(|| taken("bias differences (`.diff_b`, `.b_norm`)"))?,
                Slot::Set => put(&mut m.set, (key.clone(), t))
                    .ok_or_else(|| taken("`.set_weight` tensors"))?,
            }
        }
        let mut lora = Lora {
            name: name.to_string(),
            modules,
            other_keys,
        };
        if let Some((stem, shape)) = reshape {
            lora.modules.entry(stem).or_default().reshape = Some(shape);
        }
        lora.check()?;
        Ok(lora)
    }

    /// Number of modules.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    /// Whether the file has no module.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// Every module applies one form to its weight, and has what that form needs.
    fn check(&mut self) -> Result<()> {
        let name = &self.name;
        let mut idle = Vec::new();
        for (stem, m) in &mut self.modules {
            match (&m.up, &m.down) {
                (Some(_), None) | (None, Some(_)) => {
                    let has = if m.up.is_some() { "an up" } else { "a down" };
                    return Err(Error::InvalidInput(format!(
                        "{name}: module `{stem}` has {has} factor but not both up and down factors"
                    )));
                }
                _ => {}
            }
            if !m.is_lora() {
                let lone = [
                    m.mid.is_some().then_some(".lora_mid.weight"),
                    m.reshape.is_some().then_some(".reshape_weight"),
                ];
                if let Some(suffix) = lone.into_iter().flatten().next() {
                    return Err(Error::InvalidInput(format!(
                        "{name}: `{stem}{suffix}` has no up and down factors beside it"
                    )));
                }
            }
            // ComfyUI reads `.b_norm` only beside a `.w_norm`.
            let w_norm = m.diff.as_ref().is_some_and(|(k, _)| k.ends_with(".w_norm"));
            if m.diff_b
                .as_ref()
                .is_some_and(|(k, _)| k.ends_with(".b_norm"))
                && !w_norm
            {
                if let Some((k, _)) = m.diff_b.take() {
                    m.keys.retain(|x| *x != k);
                    idle.push(k);
                }
            }
            let forms: Vec<&str> = [
                m.is_lora().then_some("LoRA factors"),
                m.diff.as_ref().map(|(k, _)| k.as_str()),
                m.set.as_ref().map(|(k, _)| k.as_str()),
            ]
            .into_iter()
            .flatten()
            .collect();
            if forms.len() > 1 {
                return Err(Error::InvalidInput(format!(
                    "{name}: module `{stem}` patches its weight twice ({}); ComfyUI would apply \
                     only the last of them, so the file is ambiguous",
                    forms.join(" and ")
                )));
            }
            if forms.is_empty() && m.diff_b.is_none() {
                // An alpha with nothing to scale (or nothing at all left).
                idle.append(&mut m.keys);
            }
        }
        self.modules.retain(|_, m| !m.keys.is_empty());
        self.other_keys.extend(idle);
        self.other_keys.sort();
        Ok(())
    }
}

/// Fills an empty slot; `None` when it was taken.
fn put<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(value);
            Some(())
        }
    }
}

/// Refuses a key of an adapter this tool does not apply, naming it.
fn refuse_other_adapters(name: &str, key: &str, t: &InputTensor) -> Result<()> {
    if key.ends_with(".dora_scale") {
        return Err(Error::InvalidInput(format!(
            "{name} is a DoRA (`{key}`), which is not applied yet: its weight-decomposed scale \
             needs the norm of each patched weight, which this tool does not compute yet; bake it \
             in ComfyUI, or use a LoRA without `dora_scale`"
        )));
    }
    let form = match key {
        k if k.ends_with(".oft_blocks") => Some(match t.info().shape.len() {
            4 => "BOFT",
            _ => "OFT",
        }),
        k => REFUSED
            .iter()
            .find(|(s, _)| k.ends_with(s))
            .map(|(_, f)| *f),
    };
    match form {
        Some(form) => Err(Error::InvalidInput(format!(
            "{name} holds {form} modules (`{key}`), which are not supported: only LoRA/LoCon \
             factors, full differences (`.diff`, `.diff_b`, `.w_norm`, `.b_norm`) and \
             `.set_weight` can be baked"
        ))),
        None => Ok(()),
    }
}

/// A `.reshape_weight`: a list of sizes (integers, or floats that are whole numbers).
fn sizes(name: &str, key: &str, t: &InputTensor) -> Result<Vec<usize>> {
    let info = t.info();
    let bad = || {
        Error::InvalidInput(format!(
            "{name}: `{key}` is {} {:?}, not a list of sizes",
            info.dtype, info.shape
        ))
    };
    if info.shape.len() > 1 || info.numel() > 8 {
        return Err(bad());
    }
    let bytes = crate::offload::host_bytes(t)?;
    let dtype = t.host_dtype();
    let values: Vec<f64> = match dtype {
        Dtype::I64 => le(&bytes, |b| i64::from_le_bytes(b) as f64),
        Dtype::I32 => le(&bytes, |b| i32::from_le_bytes(b) as f64),
        Dtype::I16 => le(&bytes, |b| i16::from_le_bytes(b) as f64),
        Dtype::U8 => bytes.iter().map(|b| f64::from(*b)).collect(),
        d if can_decode(d) => {
            let mut out = vec![0u8; info.numel() * 8];
            cast::convert(key, &bytes, d, &mut out, Dtype::F64)?;
            le(&out, f64::from_le_bytes)
        }
        _ => return Err(bad()),
    };
    values
        .into_iter()
        .map(|v| {
            (v >= 0.0 && v.fract() == 0.0 && v < 1e12)
                .then_some(v as usize)
                .ok_or_else(bad)
        })
        .collect()
}

/// Little-endian values of `N` bytes each.
fn le<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect()
}

/// A converted stem and the shape its weight is padded to.
type Reshape = Option<(String, Vec<usize>)>;

/// The renames of `comfy/lora_convert.py` for this tool's architectures: BFL's Flux control
/// LoRAs (`img_in.lora_A.weight` beside `single_blocks.0.norm.key_norm.scale`), Wan-Fun's
/// LoRAs (`lora_unet__…` for `lora_unet_…`) and USO's Flux LoRAs; other files unchanged.
fn convert(tensors: InputMap) -> Result<(InputMap, Reshape)> {
    let has = |k: &str| tensors.contains_key(k);
    if has("img_in.lora_A.weight") && has("single_blocks.0.norm.key_norm.scale") {
        // `img_in` grows to the LoRA's input width: [B's rows, A's columns].
        let dim = |k: &str, d: usize| {
            tensors
                .get(k)
                .and_then(|t| t.info().shape.get(d).copied())
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "a Flux control LoRA (BFL's form) needs `{k}` with {} dimension(s)",
                        d + 1
                    ))
                })
        };
        let shape = vec![
            dim("img_in.lora_B.weight", 0)?,
            dim("img_in.lora_A.weight", 1)?,
        ];
        let renamed = tensors
            .into_iter()
            .map(|(k, t)| {
                let k = k
                    .replace(".lora_B.bias", ".diff_b")
                    .replace("_norm.scale", "_norm.scale.set_weight");
                (format!("diffusion_model.{k}"), t)
            })
            .collect();
        return Ok((renamed, Some(("diffusion_model.img_in".into(), shape))));
    }
    if has("lora_unet__blocks_0_cross_attn_k.lora_down.weight") {
        let renamed = tensors
            .into_iter()
            .map(|(k, t)| match k.strip_prefix("lora_unet__") {
                Some(rest) => (format!("lora_unet_{rest}"), t),
                None => (k, t),
            })
            .collect();
        return Ok((renamed, None));
    }
    if has("single_blocks.37.processor.qkv_lora.up.weight")
        && has("double_blocks.18.processor.qkv_lora2.up.weight")
    {
        let renamed = tensors
            .into_iter()
            .map(|(k, t)| {
                let k = k
                    .replace(".down.weight", ".lora_down.weight")
                    .replace(".up.weight", ".lora_up.weight")
                    .replace(".qkv_lora2.", ".txt_attn.qkv.")
                    .replace(".qkv_lora1.", ".img_attn.qkv.")
                    .replace(".proj_lora1.", ".img_attn.proj.")
                    .replace(".proj_lora2.", ".txt_attn.proj.")
                    .replace(".qkv_lora.", ".linear1_qkv.")
                    .replace(".proj_lora.", ".linear2.")
                    .replace(".processor.", ".");
                (format!("diffusion_model.{k}"), t)
            })
            .collect();
        return Ok((renamed, None));
    }
    Ok((tensors, None))
}
