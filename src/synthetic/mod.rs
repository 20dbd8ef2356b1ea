//! Realistic synthetic models, built from a description of each architecture, with no downloads.
//!
//! Tests, benchmarks and demos of the save path need full-size model components with the exact key
//! names, shapes and dtypes ComfyUI holds in memory, but real weights are gigabytes behind licences
//! and network access. This module describes every supported architecture the way ComfyUI/ldm
//! builds its modules (model channels, channel multipliers, transformer depths, hidden sizes, layer
//! counts, VAE channels...) and expands that description into state-dict layouts
//! ([`shapes`]). [`build`] then fills them with seeded pseudo-random values, fast enough to make a
//! full SD1.5 in seconds, and [`shrink`] caps every dimension so "tiny" models keep every key name
//! of the real architecture while costing almost nothing.
//!
//! Values are cheap uniform noise (weights in ±[0.001, 0.05), norm weights near 1.0, CLIP
//! `logit_scale` = ln 100), never zero, and reproducible: each tensor (and each chunk of a large
//! tensor) has its own generator seeded from the model seed, the component and the key, so results
//! do not depend on thread scheduling.

mod audio_vae;
mod dit;
pub(crate) mod expand;
pub mod lora;
mod ltx_vae;
mod ltxav;
pub(crate) mod models;
pub(crate) mod spec;
pub(crate) mod tekken;
#[cfg(test)]
mod tests;
mod text;
mod video_vae;

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::family::{Derive, Tell, Variant};
use crate::model::dtype::{candle_dtype, file_dtype};
use crate::model::{Arch, ComponentKind, ComponentShapes, Components, TensorInfo, TensorMap};
pub use expand::{shapes, shrink, tiny_shapes};

/// The value every CLIP `logit_scale` gets: ln(100), what trained CLIP models converge to.
pub const LOGIT_SCALE: f32 = 4.6055;

/// Elements generated from one RNG stream; large tensors are split so they fill in parallel.
const CHUNK: usize = 1 << 16;

/// How to build a synthetic model.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticOptions {
    /// The architecture whose key names and shapes are generated.
    pub arch: Arch,
    /// Which of the family's known configurations (a [`Variant`] name such as `wan21-14b`);
    /// `None` takes the family's default.
    pub variant: Option<&'static str>,
    /// Seed of all values; the same seed gives bit-identical tensors.
    pub seed: u64,
    /// Cap every dimension at this size (see [`shrink`]); `None` builds the full-size model.
    pub max_dim: Option<usize>,
    /// Build the test-sized model ([`tiny_shapes`]) instead of the full-size one.
    pub tiny: bool,
    /// Dtype for every floating-point tensor instead of the reference defaults; integer tensors
    /// keep theirs.
    pub dtype: Option<DType>,
}

impl SyntheticOptions {
    /// Full-size model of `arch`, seed 0, reference dtypes.
    pub fn new(arch: Arch) -> Self {
        Self {
            arch,
            variant: None,
            seed: 0,
            max_dim: None,
            tiny: false,
            dtype: None,
        }
    }

    /// Full-size model of the variant (or family) `name` names (`wan21-14b`, `qwen-image`).
    ///
    /// # Errors
    /// [`Error::UnknownArchitecture`] listing the known names.
    pub fn named(name: &str) -> Result<Self> {
        let (arch, v) = crate::family::variant_named(name)?;
        Ok(Self {
            variant: Some(v.name),
            ..Self::new(arch)
        })
    }

    /// The variant these options build.
    ///
    /// # Errors
    /// [`Error::UnknownArchitecture`] when `variant` names none of the family's.
    pub fn variant(&self) -> Result<&'static Variant> {
        let family = self.arch.family();
        match self.variant {
            None => Ok(family.default_variant()),
            Some(name) => family
                .variants
                .iter()
                .find(|v| v.name == name)
                .ok_or_else(|| Error::UnknownArchitecture {
                    reason: format!("{} has no variant `{name}`", self.arch),
                    known: crate::family::variant_names(),
                }),
        }
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The test-sized model: every kind of key of the architecture, consistent shapes, a few
    /// hundred kilobytes ([`tiny_shapes`]).
    pub fn tiny(mut self) -> Self {
        self.tiny = true;
        self
    }

    /// Caps every dimension at `max_dim` (a tiny model with all key names).
    pub fn with_max_dim(mut self, max_dim: usize) -> Self {
        self.max_dim = Some(max_dim);
        self
    }

    /// Overrides the dtype of every floating-point tensor.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = Some(dtype);
        self
    }
}

/// Builds every tensor of the synthetic model described by `opts` on `device`.
///
/// # Errors
/// [`Error::InvalidInput`] for `max_dim == Some(0)` or a non-float `dtype` override;
/// [`Error::UnknownArchitecture`] for a variant the family does not have;
/// [`Error::UnsupportedDtype`] for a dtype candle cannot hold; [`Error::Candle`] when a tensor
/// cannot be created on the device (out of memory, say).
pub fn build(opts: &SyntheticOptions, device: &Device) -> Result<Components> {
    build_from_shapes(&synthetic_shapes(opts)?, opts.seed, opts.dtype, device)
}

/// The keys, shapes and dtypes [`build`] fills. With `max_dim`, every dimension is capped except
/// the ones the family's detection reads (a Wan 2.2's 48 output channels, say), so a capped model
/// is detected and placed like the full-size one.
///
/// # Errors
/// As [`build`], before any tensor is made.
pub fn synthetic_shapes(opts: &SyntheticOptions) -> Result<ComponentShapes> {
    let variant = opts.variant()?;
    let full = expand::expand(if opts.tiny {
        variant.tiny
    } else {
        variant.full
    });
    match opts.max_dim {
        Some(0) => Err(Error::InvalidInput(
            "synthetic max_dim must be at least 1".into(),
        )),
        Some(m) => Ok(shrink_keeping(&full, m, &detection_dims(opts.arch))),
        None => Ok(full),
    }
}

/// The (denoiser key, axis) pairs `arch`'s detection reads: its tells', and its params' where
/// detection places the model in a variant by them.
fn detection_dims(arch: Arch) -> Vec<(&'static str, usize)> {
    let family = arch.family();
    let tells = family.tells.iter().filter_map(|t| match *t {
        Tell::Dim(k, axis, _) | Tell::NotDim(k, axis, _) => Some((k, axis)),
        _ => None,
    });
    let placed = !family.placed.is_empty();
    let params = family.params.iter().filter_map(|p| match p.from {
        Derive::Dim { key, axis, .. } if placed => Some((key, axis)),
        _ => None,
    });
    tells.chain(params).collect()
}

/// [`shrink`], keeping the denoiser dimensions listed in `keep` at their size.
fn shrink_keeping(
    shapes: &ComponentShapes,
    max_dim: usize,
    keep: &[(&str, usize)],
) -> ComponentShapes {
    let mut out = shrink(shapes, max_dim);
    let (Some(full), Some(mut model)) = (
        shapes.get(ComponentKind::Model),
        out.get(ComponentKind::Model).cloned(),
    ) else {
        return out;
    };
    for &(key, axis) in keep {
        if let (Some(f), Some(t)) = (full.get(key), model.get_mut(key)) {
            if let (Some(&d), Some(slot)) = (f.shape.get(axis), t.shape.get_mut(axis)) {
                *slot = d;
            }
        }
    }
    out.set(ComponentKind::Model, model);
    out
}

/// Builds tensors for any given layout (see [`build`] for the values and errors).
///
/// `dtype`, when given, replaces the dtype of every floating-point tensor; integer tensors get small
/// positive integers in their own dtype.
pub fn build_from_shapes(
    shapes: &ComponentShapes,
    seed: u64,
    dtype: Option<DType>,
    device: &Device,
) -> Result<Components> {
    check_override(dtype)?;
    let jobs: Vec<(ComponentKind, &String, &TensorInfo)> = ComponentKind::ALL
        .into_iter()
        .filter_map(|kind| shapes.get(kind).map(|m| (kind, m)))
        .flat_map(|(kind, m)| m.iter().map(move |(k, info)| (kind, k, info)))
        .collect();
    let tensors: Vec<(ComponentKind, String, Tensor)> = jobs
        .into_par_iter()
        .map(|(kind, key, info)| {
            let t = make_tensor(seed, kind, key, info, dtype, device)?;
            Ok((kind, key.clone(), t))
        })
        .collect::<Result<_>>()?;

    let mut maps: BTreeMap<ComponentKind, TensorMap> = BTreeMap::new();
    for (kind, key, t) in tensors {
        maps.entry(kind).or_default().insert(key, t);
    }
    let mut c = Components::default();
    for kind in ComponentKind::ALL {
        if shapes.get(kind).is_some() {
            c.set(kind, maps.remove(&kind).unwrap_or_default());
        }
    }
    Ok(c)
}

/// Tensors of `shapes` holding one zero each, broadcast to their shapes (stride 0): what a dry
/// run of a synthetic model plans from — names, shapes, dtypes — without the model's memory (a
/// full-size LTX-2 is tens of gigabytes). Their values are not the model's: never save them.
///
/// # Errors
/// As [`build_from_shapes`]'s dtype checks.
pub fn placeholders(shapes: &ComponentShapes, dtype: Option<DType>) -> Result<Components> {
    check_override(dtype)?;
    let mut c = Components::default();
    for kind in ComponentKind::ALL {
        let Some(m) = shapes.get(kind) else { continue };
        let mut map = TensorMap::new();
        for (key, info) in m {
            let dt = tensor_dtype(key, info, dtype)?;
            let one = Tensor::zeros(vec![1; info.shape.len()], dt, &Device::Cpu)?;
            map.insert(key.clone(), one.broadcast_as(info.shape.clone())?);
        }
        c.set(kind, map);
    }
    Ok(c)
}

/// Refuses a dtype override that is not floating point.
fn check_override(dtype: Option<DType>) -> Result<()> {
    match dtype {
        Some(d) if !d.is_float() => Err(Error::InvalidInput(format!(
            "synthetic dtype override must be a floating-point dtype, got {d:?}"
        ))),
        _ => Ok(()),
    }
}

/// The dtype a synthetic tensor is made in: the override for floating-point tensors, else its own.
fn tensor_dtype(key: &str, info: &TensorInfo, dtype_override: Option<DType>) -> Result<DType> {
    let held = candle_dtype(info.dtype).ok_or_else(|| Error::UnsupportedDtype {
        dtype: info.dtype.to_string(),
        hint: format!(
            "candle cannot hold `{key}` in that dtype; synthetic tensors need one it can"
        ),
    })?;
    Ok(match dtype_override {
        Some(d) if held.is_float() => d,
        _ => held,
    })
}

/// What a tensor's values should look like.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Init {
    /// Small noise around 0.
    Weight,
    /// Small noise around 1 (norm gains).
    NormWeight,
    /// The constant [`LOGIT_SCALE`].
    LogitScale,
}

fn init_for(key: &str) -> Init {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    if leaf == "logit_scale" {
        Init::LogitScale
    } else if (key.contains("norm") || key.contains("ln_"))
        && (key.ends_with(".weight") || key.ends_with(".scale"))
    {
        Init::NormWeight
    } else {
        Init::Weight
    }
}

/// FNV-1a over the parts, finished with splitmix64: a stable, well-mixed per-tensor seed.
fn tensor_seed(seed: u64, kind: ComponentKind, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    eat(&seed.to_le_bytes());
    eat(kind.name().as_bytes());
    eat(key.as_bytes());
    splitmix64(h)
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn chunk_rng(tseed: u64, chunk: usize) -> SmallRng {
    SmallRng::seed_from_u64(splitmix64(
        tseed ^ (chunk as u64).wrapping_mul(0xa076_1d64_78bd_642f),
    ))
}

/// A value with magnitude in [0.001, 0.05) and random sign: never zero, even in f16.
#[inline(always)]
fn noise(bits: u32) -> f32 {
    const MIN: f32 = 0.001;
    const SPAN: f32 = 0.049 / (1u32 << 24) as f32;
    let mag = MIN + (bits >> 8) as f32 * SPAN;
    if bits & 1 == 0 {
        mag
    } else {
        -mag
    }
}

/// Fills `out` with values of kind `init` from `rng`.
fn fill_f32(out: &mut [f32], rng: &mut SmallRng, init: Init) {
    let base = match init {
        Init::LogitScale => {
            out.fill(LOGIT_SCALE);
            return;
        }
        Init::NormWeight => 1.0,
        Init::Weight => 0.0,
    };
    let mut pairs = out.chunks_exact_mut(2);
    for pair in &mut pairs {
        let r = rng.next_u64();
        pair[0] = base + noise(r as u32);
        pair[1] = base + noise((r >> 32) as u32);
    }
    for v in pairs.into_remainder() {
        *v = base + noise(rng.next_u32());
    }
}

/// Fills a float buffer chunk by chunk in parallel, converting from f32 with `convert`.
fn gen_float<T, F>(numel: usize, tseed: u64, init: Init, convert: F) -> Vec<T>
where
    T: Copy + Default + Send,
    F: Fn(&mut [T], &[f32]) + Sync,
{
    let mut v = vec![T::default(); numel];
    // One f32 scratch buffer per rayon job, not per chunk (a fresh 256 KiB is an mmap each time).
    v.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each_init(Vec::new, |buf: &mut Vec<f32>, (i, out)| {
            buf.resize(out.len(), 0.0);
            fill_f32(buf, &mut chunk_rng(tseed, i), init);
            convert(out, buf);
        });
    v
}

fn gen_f32(numel: usize, tseed: u64, init: Init) -> Vec<f32> {
    let mut v = vec![0f32; numel];
    v.par_chunks_mut(CHUNK).enumerate().for_each(|(i, out)| {
        fill_f32(out, &mut chunk_rng(tseed, i), init);
    });
    v
}

/// Small positive integers (1..=16) for integer tensors.
fn gen_int<T, F>(numel: usize, tseed: u64, from: F) -> Vec<T>
where
    T: Copy + Default + Send,
    F: Fn(u32) -> T + Sync,
{
    let mut v = vec![T::default(); numel];
    v.par_chunks_mut(CHUNK).enumerate().for_each(|(i, out)| {
        let mut rng = chunk_rng(tseed, i);
        for x in out.iter_mut() {
            *x = from(1 + (rng.next_u32() >> 28));
        }
    });
    v
}

fn make_tensor(
    seed: u64,
    kind: ComponentKind,
    key: &str,
    info: &TensorInfo,
    dtype_override: Option<DType>,
    device: &Device,
) -> Result<Tensor> {
    let dtype = tensor_dtype(key, info, dtype_override)?;
    let tseed = tensor_seed(seed, kind, key);
    let init = init_for(key);
    let n = info.numel();
    let shape = info.shape.clone();
    let t = match dtype {
        // Mistral 3's tokenizer is a real (synthetic) tekken file.
        DType::U8 if key == "tekken_model" && tekken::json_bytes(n).is_some() => {
            Tensor::from_slice(tekken::json_bytes(n).unwrap_or_default(), shape, device)?
        }
        DType::F32 => Tensor::from_vec(gen_f32(n, tseed, init), shape, device)?,
        DType::F16 => Tensor::from_vec(
            gen_float(n, tseed, init, |o: &mut [f16], s| o.convert_from_f32_slice(s)),
            shape,
            device,
        )?,
        DType::BF16 => Tensor::from_vec(
            gen_float(n, tseed, init, |o: &mut [bf16], s| {
                o.convert_from_f32_slice(s)
            }),
            shape,
            device,
        )?,
        DType::F64 => Tensor::from_vec(
            gen_float(n, tseed, init, |o: &mut [f64], s| {
                o.iter_mut().zip(s).for_each(|(o, &s)| *o = f64::from(s))
            }),
            shape,
            device,
        )?,
        DType::F8E4M3 => Tensor::from_vec(gen_f32(n, tseed, init), shape, &Device::Cpu)?
            .to_dtype(DType::F8E4M3)?
            .to_device(device)?,
        DType::U8 => Tensor::from_vec(gen_int(n, tseed, |x| x as u8), shape, device)?,
        DType::U32 => Tensor::from_vec(gen_int(n, tseed, |x| x), shape, device)?,
        DType::I16 => Tensor::from_vec(gen_int(n, tseed, |x| x as i16), shape, device)?,
        DType::I32 => Tensor::from_vec(gen_int(n, tseed, |x| x as i32), shape, device)?,
        DType::I64 => Tensor::from_vec(gen_int(n, tseed, i64::from), shape, device)?,
        other => {
            return Err(Error::UnsupportedDtype {
                dtype: file_dtype(other).to_string(),
                hint: format!(
                    "synthetic values for `{key}` can be f32, f16, bf16, f64, f8_e4m3 or an integer type"
                ),
            })
        }
    };
    Ok(t)
}
