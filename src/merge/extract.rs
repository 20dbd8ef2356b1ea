//! LoRA extraction: ComfyUI's LoraSave node ("Extract and Save Lora",
//! `comfy_extras/nodes_lora_extract.py`) fed by ModelMergeSubtract / CLIPMergeSubtract, with a
//! truncated SVD ([`crate::linalg`]) instead of a full one.
//!
//! For each `.weight` of the tuned model, the difference `tuned − base` is computed as ComfyUI
//! computes it (ModelMergeSubtract with multiplier 1: `tuned·1 + base·(−1)` in f32, rounded once to
//! the weight's dtype, then taken in f32 again). Then, as ComfyUI does:
//! - a matrix (conv weights flattened after their first dimension, 1×1 convs squeezed) gets its
//!   rank-`r` SVD, `r = min(rank, out, in)`; `up = U_r·diag(S_r)`, `down = Vᵀ_r`; both are clamped
//!   to `[−h, h]` where `h` is the 0.99 quantile (linear interpolation, `torch.quantile`) of their
//!   entries together; conv factors are reshaped to `[out, r, 1, 1]` and `[r, in, kh, kw]`;
//! - a weight of fewer than two dimensions becomes `.diff` (with `bias_diff`), a bias `.diff_b`
//!   (with `bias_diff`); with `lora_type full_diff` every weight is a `.diff`;
//! - everything is written in f16, under `diffusion_model.<key>` (`text_encoders.<key>` for the
//!   text encoders), or kohya's names (`lora_unet_…`, `lora_te…`, with `.alpha` = rank).
//!
//! Factors differ from ComfyUI's only by the SVD itself: the truncated one reconstructs each
//! weight within 1 % of the exact truncated SVD's error (see `linalg`'s tests), and singular
//! vectors are defined up to sign — which the clamp sees: it trims the 0.99 quantile of the
//! signed entries symmetrically, so it is sign-dependent in ComfyUI too, and it can cost a
//! difference whose factors are lopsided (one sign dominating) far more than 1 %.
//!
//! Differences are evaluated whole, one tensor per worker at a time (an SVD needs the whole
//! matrix), on the device given; the factors (the LoRA itself) are kept until the file is written.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::layout::detect::detect_model;
use crate::layout::diffusers::{encoder_folders, from_comfy, Folder};
use crate::linalg::truncated_svd;
use crate::model::merged::{Merged, Patch, PatchValue};
use crate::model::{Arch, ComponentKind, Components, Dtype, InputTensor, TensorMap};

/// ComfyUI's `CLAMP_QUANTILE`.
pub const CLAMP_QUANTILE: f64 = 0.99;

/// What a weight difference becomes (ComfyUI's `lora_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoraType {
    /// Low-rank factors for matrices and convs; `.diff` for 1-D weights (with `bias_diff`).
    #[default]
    Standard,
    /// Every weight as its whole difference (`.diff`).
    FullDiff,
}

/// The key names written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyFormat {
    /// ComfyUI's: `diffusion_model.<key>.lora_up.weight`, `text_encoders.<key>…`.
    #[default]
    Comfy,
    /// kohya's: `lora_unet_<name>` (diffusers names for UNet models, the model's own for DiTs),
    /// `lora_te_…`/`lora_te1_…`, with `.alpha` equal to the rank.
    Kohya,
}

/// How to extract.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// The rank (ComfyUI: 1 to 4096).
    pub rank: usize,
    /// Also the text encoders (CLIPMergeSubtract → LoraSave's `text_encoder_diff`).
    pub clip: bool,
    /// Write 1-D weight differences (`.diff`) and bias differences (`.diff_b`).
    pub bias_diff: bool,
    /// Factors or whole differences.
    pub lora_type: LoraType,
    /// Key names.
    pub format: KeyFormat,
    /// Where the SVD's products run (`None`: the CPU).
    pub device: Option<Device>,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            rank: 8,
            clip: false,
            bias_diff: true,
            lora_type: LoraType::Standard,
            format: KeyFormat::Comfy,
            device: None,
        }
    }
}

/// What an extraction did.
#[derive(Debug, Clone, Default)]
pub struct ExtractReport {
    /// Weights turned into factors.
    pub factored: usize,
    /// Tensors written whole (`.diff`, `.diff_b`).
    pub whole: usize,
    /// Per factored weight: the relative reconstruction error `‖D − up·down‖ / ‖D‖` before the
    /// f16 rounding and the clamp (0 for a zero difference).
    pub errors: Vec<(String, f64)>,
}

/// The LoRA that turns `base` into `tuned` (their denoisers, and with `opts.clip` their text
/// encoders), as named tensors ready to save (f16, on the CPU).
///
/// # Errors
/// [`Error::InvalidInput`] for a rank outside 1..=4096, a key of `tuned` that `base` lacks, a
/// missing denoiser, or (kohya names) an architecture that cannot be told; [`Error::BadShape`]
/// when the two differ in shape; SVD errors (NaN/Inf differences, no convergence) naming the key.
pub fn extract_lora(
    tuned: &Components,
    base: &Components,
    opts: &ExtractOptions,
) -> Result<(TensorMap, ExtractReport)> {
    extract(tuned, Some(base), opts)
}

/// The LoRA of a model difference already formed — ComfyUI's LoraSave fed by a
/// ModelMergeSubtract / CLIPMergeSubtract output: each tensor of `diff` (its denoiser, and its
/// text encoders when it has them and `opts.clip` is set) is evaluated in f32 and rounded to its
/// dtype, as ComfyUI's patched weight is, and factored as [`extract_lora`] factors `tuned − base`.
///
/// # Errors
/// As [`extract_lora`]; [`Error::InvalidInput`] when `diff` has neither a denoiser nor (with
/// `opts.clip`) text encoders.
pub fn extract_lora_from_difference(
    diff: &Components,
    opts: &ExtractOptions,
) -> Result<(TensorMap, ExtractReport)> {
    let has = |k| diff.get(k).is_some_and(|m| !m.is_empty());
    if !(has(ComponentKind::Model) || (opts.clip && has(ComponentKind::Clip))) {
        return Err(Error::InvalidInput(
            "nothing to extract a LoRA from: the difference has no denoiser and no text \
             encoders"
                .into(),
        ));
    }
    extract(diff, None, opts)
}

/// `tuned − base` (or `tuned` itself, a difference, without `base`) as a LoRA.
fn extract(
    tuned: &Components,
    base: Option<&Components>,
    opts: &ExtractOptions,
) -> Result<(TensorMap, ExtractReport)> {
    if !(1..=4096).contains(&opts.rank) {
        return Err(Error::InvalidInput(format!(
            "rank {} is outside 1..=4096 (LoraSave's range)",
            opts.rank
        )));
    }
    let names = Names::new(tuned, opts.format)?;
    let mut jobs = Vec::new();
    let kinds: &[ComponentKind] = match opts.clip {
        true => &[ComponentKind::Model, ComponentKind::Clip],
        false => &[ComponentKind::Model],
    };
    for &kind in kinds {
        let b = base.map(|b| b.get(kind));
        let t = match (tuned.get(kind), b) {
            (Some(t), None | Some(Some(_))) => t,
            (None, None) => continue,
            _ if kind == ComponentKind::Model => {
                return Err(Error::InvalidInput(
                    "both models need a denoiser to extract a LoRA from".into(),
                ))
            }
            _ => continue,
        };
        let b = b.flatten();
        for (key, tt) in t {
            let (stem, whole) = if let Some(stem) = key.strip_suffix(".weight") {
                let whole = match (opts.lora_type, tt.info().shape.len()) {
                    (LoraType::FullDiff, _) => Some(".diff"),
                    (LoraType::Standard, n) if n < 2 && opts.bias_diff => Some(".diff"),
                    (LoraType::Standard, n) if n < 2 => continue,
                    (LoraType::Standard, _) => None,
                };
                (stem, whole)
            } else if let (Some(stem), true) = (key.strip_suffix(".bias"), opts.bias_diff) {
                (stem, Some(".diff_b"))
            } else {
                continue;
            };
            let job = Job {
                kind,
                key: key.clone(),
                stem: stem.to_string(),
                whole,
            };
            if !crate::model::dtype::can_decode(tt.info().dtype) {
                continue;
            }
            let Some(b) = b else {
                jobs.push((job, tt.clone(), None));
                continue;
            };
            let bt = b.get(key).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "the base model has no {kind} tensor `{key}`; extract from two models of one \
                     architecture"
                ))
            })?;
            if bt.info().shape != tt.info().shape {
                return Err(Error::BadShape {
                    key: key.clone(),
                    shape: tt.info().shape,
                    reason: format!(
                        "the base model's is {:?}; a LoRA cannot turn one into the other",
                        bt.info().shape
                    ),
                });
            }
            jobs.push((job, tt.clone(), Some(bt.clone())));
        }
    }
    let results: Vec<Result<Extracted>> = jobs
        .into_par_iter()
        .map(|(job, t, b)| job.run(&t, b.as_ref(), opts, &names))
        .collect();
    let mut out = TensorMap::new();
    let mut report = ExtractReport::default();
    for r in results {
        let r = r?;
        if r.tensors.is_empty() {
            continue;
        }
        match r.error {
            Some(e) => {
                report.factored += 1;
                report.errors.push((r.key, e));
            }
            None => report.whole += 1,
        }
        out.extend(r.tensors);
    }
    Ok((out, report))
}

/// One tensor's extraction.
struct Job {
    kind: ComponentKind,
    key: String,
    stem: String,
    /// `None`: factors; else the suffix of the whole difference.
    whole: Option<&'static str>,
}

/// One job's tensors.
struct Extracted {
    key: String,
    tensors: Vec<(String, Tensor)>,
    error: Option<f64>,
}

impl Job {
    fn run(
        &self,
        tuned: &InputTensor,
        base: Option<&InputTensor>,
        opts: &ExtractOptions,
        names: &Names,
    ) -> Result<Extracted> {
        let info = tuned.info();
        let diff = difference(&self.key, tuned, base)?;
        let name = names.stem(self.kind, &self.stem);
        let f16 = |values: &[f32], shape: &[usize]| -> Result<Tensor> {
            Ok(Tensor::from_slice(values, shape, &Device::Cpu)?.to_dtype(DType::F16)?)
        };
        if let Some(suffix) = self.whole {
            return Ok(Extracted {
                key: self.key.clone(),
                tensors: vec![(format!("{name}{suffix}"), f16(&diff, &info.shape)?)],
                error: None,
            });
        }
        let out = info.shape[0];
        let inner: usize = info.shape[1..].iter().product();
        let rank = opts.rank.min(out).min(info.shape[1]);
        if rank == 0 {
            // An empty weight (a zero dimension) has no difference to factor.
            return Ok(Extracted {
                key: self.key.clone(),
                tensors: Vec::new(),
                error: None,
            });
        }
        let device = opts.device.clone().unwrap_or(Device::Cpu);
        let seed = seed_of(&self.key);
        let svd = truncated_svd(&self.key, &diff, out, inner, rank, seed, &device)?;
        // up = U·diag(S), down = Vᵀ; both clamped at the 0.99 quantile of their entries.
        let mut up: Vec<f32> = svd
            .u
            .iter()
            .enumerate()
            .map(|(i, &u)| u * svd.s[i % rank])
            .collect();
        let mut down = svd.vt;
        let error = relative_error(&diff, &up, &down, out, inner, rank)?;
        clamp_at_quantile(&mut up, &mut down);
        let (up_shape, down_shape) = match info.shape.len() {
            2 => (vec![out, rank], vec![rank, inner]),
            n => {
                let mut u = vec![out, rank];
                u.extend(std::iter::repeat_n(1, n - 2));
                let mut d = vec![rank];
                d.extend_from_slice(&info.shape[1..]);
                (u, d)
            }
        };
        let mut tensors = vec![
            (format!("{name}.lora_up.weight"), f16(&up, &up_shape)?),
            (format!("{name}.lora_down.weight"), f16(&down, &down_shape)?),
        ];
        if names.format == KeyFormat::Kohya {
            let alpha = Tensor::new(rank as f32, &Device::Cpu)?.to_dtype(DType::F16)?;
            tensors.push((format!("{name}.alpha"), alpha));
        }
        Ok(Extracted {
            key: self.key.clone(),
            tensors,
            error: Some(error),
        })
    }
}

/// `tuned − base` as ModelMergeSubtract computes it (or `tuned`, already a difference),
/// rounded to the weight's dtype, in f32.
fn difference(key: &str, tuned: &InputTensor, base: Option<&InputTensor>) -> Result<Vec<f32>> {
    let m = match base {
        Some(base) => {
            let patch = Patch {
                strength: -1.0,
                strength_model: 1.0,
                value: PatchValue::Tensor(base.clone()),
            };
            InputTensor::Merged(Arc::new(Merged::new(key, tuned.clone(), vec![patch])?))
        }
        None => tuned.clone(),
    };
    let info = tuned.info();
    let round: fn(f32) -> f32 = match info.dtype {
        Dtype::F16 => |v| half::f16::from_f32(v).to_f32(),
        Dtype::BF16 => |v| half::bf16::from_f32(v).to_f32(),
        _ => |v| v,
    };
    // A merged tensor is evaluated in f32 (its values taken as they are, not copied from
    // bytes: a weight's worth of memory per copy); a tensor read as it lies (a difference
    // given whole) comes in its own dtype.
    if let Some(mut values) = crate::offload::host_f32(&m)? {
        round_in_place(&mut values, info.dtype);
        return Ok(values);
    }
    let bytes = crate::offload::host_bytes(&m)?;
    let n = info.numel();
    match (bytes.len() == n * 4, info.dtype) {
        (true, _) => Ok(bytes
            .chunks_exact(4)
            .map(|b| round(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect()),
        (false, Dtype::F16) => Ok(bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()),
        (false, Dtype::BF16) => Ok(bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()),
        (false, d) => Err(Error::InvalidInput(format!(
            "`{key}`: a {d:?} difference cannot be factored; give it in f32, f16 or bf16"
        ))),
    }
}

/// Rounds f32 values to `dtype` (f16, bf16; others are left as they are) and back, in place,
/// a block at a time through half's slice conversions (F16C where the CPU has it).
fn round_in_place(values: &mut [f32], dtype: Dtype) {
    use half::slice::HalfFloatSliceExt;
    const BLOCK: usize = 16 << 10;
    match dtype {
        Dtype::F16 => {
            let mut scratch = vec![half::f16::ZERO; BLOCK.min(values.len())];
            for chunk in values.chunks_mut(BLOCK) {
                let s = &mut scratch[..chunk.len()];
                s.convert_from_f32_slice(chunk);
                s.convert_to_f32_slice(chunk);
            }
        }
        Dtype::BF16 => {
            let mut scratch = vec![half::bf16::ZERO; BLOCK.min(values.len())];
            for chunk in values.chunks_mut(BLOCK) {
                let s = &mut scratch[..chunk.len()];
                s.convert_from_f32_slice(chunk);
                s.convert_to_f32_slice(chunk);
            }
        }
        _ => {}
    }
}

/// Clamps both factors to `[−h, h]`, `h` the [`CLAMP_QUANTILE`] quantile of their entries
/// together (LoraSave's outlier clamp).
fn clamp_at_quantile(up: &mut [f32], down: &mut [f32]) {
    let mut all: Vec<f32> = up.iter().chain(down.iter()).copied().collect();
    let hi = quantile(&mut all, CLAMP_QUANTILE);
    for v in up.iter_mut().chain(down.iter_mut()) {
        *v = v.clamp(-hi, hi);
    }
}

/// The linearly interpolated `q` quantile of `values` (reordered in place), as `torch.quantile`:
/// the two neighbouring order statistics found by selection, O(n), not by a sort.
fn quantile(values: &mut [f32], q: f64) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    let pos = q * (values.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let (_, &mut a, above) = values.select_nth_unstable_by(lo, f32::total_cmp);
    // The next order statistic is the least of those above the lo-th.
    let b = match above.iter().copied().min_by(f32::total_cmp) {
        Some(b) if pos > lo as f64 => b,
        _ => a,
    };
    let (a, b) = (a as f64, b as f64);
    (a + (b - a) * (pos - lo as f64)) as f32
}

/// `‖D − up·down‖ / ‖D‖` (0 for a zero `D`), the product by candle's matmul on the host, a
/// block of rows at a time (never a second weight-sized buffer).
fn relative_error(
    d: &[f32],
    up: &[f32],
    down: &[f32],
    rows: usize,
    cols: usize,
    k: usize,
) -> Result<f64> {
    let cpu = Device::Cpu;
    let down = Tensor::from_slice(down, (k, cols), &cpu)?;
    let block = (ERROR_BLOCK / cols.max(1)).max(1);
    let (mut err, mut norm) = (0f64, 0f64);
    for r0 in (0..rows).step_by(block) {
        let h = block.min(rows - r0);
        let approx = Tensor::from_slice(&up[r0 * k..(r0 + h) * k], (h, k), &cpu)?
            .matmul(&down)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for (&v, &p) in d[r0 * cols..(r0 + h) * cols].iter().zip(&approx) {
            let v = f64::from(v);
            err += (v - f64::from(p)).powi(2);
            norm += v * v;
        }
    }
    Ok(if norm == 0.0 {
        0.0
    } else {
        (err / norm).sqrt()
    })
}

/// Values of `up·down` computed at once by [`relative_error`] (4 MiB of f32).
const ERROR_BLOCK: usize = 1 << 20;

/// A stable seed per key (the same key gives the same factors on every run).
fn seed_of(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// The names of the written keys.
struct Names {
    format: KeyFormat,
    /// kohya: ComfyUI key stem → kohya stem, for the denoiser's diffusers names.
    unet: BTreeMap<String, String>,
    /// kohya: text encoder prefix (`clip_l`) → `lora_te_` / `lora_te1_` …
    encoders: BTreeMap<String, String>,
}

impl Names {
    fn new(tuned: &Components, format: KeyFormat) -> Result<Names> {
        let mut names = Names {
            format,
            unet: BTreeMap::new(),
            encoders: BTreeMap::new(),
        };
        if format == KeyFormat::Comfy {
            return Ok(names);
        }
        let shapes = tuned.shapes();
        let model = shapes
            .get(ComponentKind::Model)
            .ok_or_else(|| Error::InvalidInput("the tuned model has no denoiser".into()))?;
        let arch = detect_model(model)?;
        // kohya names UNets by their diffusers names; DiTs by the model's own.
        if matches!(
            arch,
            Arch::Sd15 | Arch::Sd2 | Arch::Sdxl | Arch::SdxlRefiner
        ) {
            for plan in from_comfy(arch, &shapes)? {
                if plan.folder != Folder::Unet {
                    continue;
                }
                for a in &plan.tensors {
                    let [part] = a.parts.as_slice() else { continue };
                    let (Some(stem), Some(comfy)) = (
                        a.key.strip_suffix(".weight"),
                        part.key.strip_suffix(".weight"),
                    ) else {
                        continue;
                    };
                    names.unet.insert(
                        comfy.to_string(),
                        format!("lora_unet_{}", stem.replace('.', "_")),
                    );
                }
            }
        }
        let encoders = encoder_folders(arch);
        for (i, (_, enc)) in encoders.iter().enumerate() {
            let prefix = match encoders.len() {
                1 => "lora_te_".to_string(),
                _ => format!("lora_te{}_", i + 1),
            };
            names.encoders.insert(enc.to_string(), prefix);
        }
        Ok(names)
    }

    /// The stem a tensor's keys are written under.
    fn stem(&self, kind: ComponentKind, stem: &str) -> String {
        match (self.format, kind) {
            (KeyFormat::Comfy, ComponentKind::Model) => format!("diffusion_model.{stem}"),
            (KeyFormat::Comfy, _) => format!("text_encoders.{stem}"),
            (KeyFormat::Kohya, ComponentKind::Model) => self
                .unet
                .get(stem)
                .cloned()
                .unwrap_or_else(|| format!("lora_unet_{}", stem.replace('.', "_"))),
            (KeyFormat::Kohya, _) => match stem.split_once(".transformer.") {
                Some((enc, inner)) => format!(
                    "{}{}",
                    self.encoders.get(enc).map_or("lora_te_", String::as_str),
                    inner.replace('.', "_")
                ),
                None => format!("lora_te_{}", stem.replace('.', "_")),
            },
        }
    }
}

#[cfg(test)]
mod tests;
