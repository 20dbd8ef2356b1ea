//! The training loop shared by `examples/train_loop.rs` and `benches/stall.rs`: an MLP trained
//! with momentum SGD on a fixed synthetic regression batch.
//!
//! The optimizer is written out (rather than `candle_nn::AdamW`, whose state is private) so its
//! momentum buffers can be checkpointed next to the weights and restored on resume. Every update
//! goes through `Var::set`, which overwrites the weights' storage in place: the reason the
//! checkpointer snapshots before writing.
#![allow(dead_code)]

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder, VarMap};

/// Input features of the synthetic data.
pub const INPUT: usize = 64;
/// Rows per batch.
pub const BATCH: usize = 64;

/// Model, optimizer state and data.
pub struct Trainer {
    /// The weights (`l{i}.weight`, `l{i}.bias`).
    pub varmap: VarMap,
    /// Momentum buffers, one per weight, under the weight's name.
    pub optim: VarMap,
    layers: Vec<Linear>,
    x: Tensor,
    y: Tensor,
    lr: f64,
    beta: f64,
}

impl Trainer {
    /// `depth` hidden layers of `width` units.
    pub fn new(width: usize, depth: usize, device: &Device) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let mut layers = Vec::new();
        let mut fan_in = INPUT;
        for i in 0..depth {
            layers.push(candle_nn::linear(fan_in, width, vb.pp(format!("l{i}")))?);
            fan_in = width;
        }
        layers.push(candle_nn::linear(fan_in, 1, vb.pp(format!("l{depth}")))?);
        // Seeded initialisation, so runs are reproducible and a resumed run can be compared
        // with an uninterrupted one.
        {
            let data = varmap.data().lock().map_err(|_| poisoned())?;
            let mut names: Vec<&String> = data.keys().collect();
            names.sort();
            for (seed, name) in names.into_iter().enumerate() {
                let var = &data[name];
                let fan_in = var.dims().last().copied().unwrap_or(1).max(1);
                let scale = 1.0 / (fan_in as f32).sqrt();
                let init = seeded(100 + seed as u64, var.elem_count(), scale, device)?;
                var.set(&init.reshape(var.shape())?)?;
            }
        }
        let optim = VarMap::new();
        let ob = VarBuilder::from_varmap(&optim, DType::F32, device);
        for var in varmap.data().lock().map_err(|_| poisoned())?.iter() {
            ob.get_with_hints(var.1.shape(), var.0, candle_nn::Init::Const(0.0))?;
        }
        // A fixed target function of the inputs, so the loss goes down.
        // Seeded, so a resumed run trains on the same data.
        let x = seeded(7, BATCH * INPUT, 1.0, device)?.reshape((BATCH, INPUT))?;
        let w = seeded(11, INPUT, 0.3, device)?.reshape((INPUT, 1))?;
        let y = x.matmul(&w)?.tanh()?;
        Ok(Self {
            varmap,
            optim,
            layers,
            x,
            y,
            lr: 0.01,
            beta: 0.9,
        })
    }

    /// One forward/backward/update; returns the loss before the update.
    pub fn step(&mut self) -> Result<f32> {
        let mut h = self.x.clone();
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if i < last {
                h = h.relu()?;
            }
        }
        let loss = candle_nn::loss::mse(&h, &self.y)?;
        let grads = loss.backward()?;
        let weights = self.varmap.data().lock().map_err(|_| poisoned())?;
        let moments = self.optim.data().lock().map_err(|_| poisoned())?;
        for (name, var) in weights.iter() {
            let (Some(g), Some(m)) = (grads.get(var.as_tensor()), moments.get(name)) else {
                continue;
            };
            let new_m = ((m.as_tensor() * self.beta)? + g)?;
            m.set(&new_m)?;
            var.set(&(var.as_tensor() - (new_m * self.lr)?)?)?;
        }
        loss.to_scalar::<f32>()
    }

    /// Bytes of the weights and momentum buffers.
    pub fn bytes(&self) -> u64 {
        [&self.varmap, &self.optim]
            .iter()
            .flat_map(|vm| vm.all_vars())
            .map(|v| (v.elem_count() * v.dtype().size_in_bytes()) as u64)
            .sum()
    }
}

/// `n` values uniform in ±`scale`, from a fixed seed.
fn seeded(seed: u64, n: usize, scale: f32, device: &Device) -> Result<Tensor> {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(seed);
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
    Tensor::from_vec(v, n, device)
}

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("a variable map's lock is poisoned".into())
}

/// Mean, median and 99th percentile of `v` (sorted in place); zeros when empty.
pub fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (v.iter().sum::<f64>() / v.len() as f64, at(0.5), at(0.99))
}
