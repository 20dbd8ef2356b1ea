//! Block Golub–Kahan–Lanczos bidiagonalization with full reorthogonalization: orthonormal
//! bases `U` (m × s·b) of the Krylov space `A·V₀, A·Aᵀ·A·V₀, …` and `V` (n × (s + 1)·b) of
//! `V₀, Aᵀ·A·V₀, …`, from s products with `A` and s with `Aᵀ`, each b columns wide.
//!
//! Every product is kept: `Aᵀ·Uᵢ` lies in the span of `V₀…Vᵢ₊₁` by construction (`Vᵢ₊₁` is its
//! part orthogonal to the earlier blocks), so `Uᵀ·A = M·Vᵀ` with `M = Uᵀ·A·V = (Aᵀ·U)ᵀ·V`, and
//! the projection `U·Uᵀ·A` is known without another pass over `A`. Against the randomized range
//! finder with power iterations, which keeps only its last sketch, this reaches the same
//! accuracy on a flat (noise) spectrum with less than half the products (Musco and Musco 2015;
//! measured before choosing the block and the steps).
//!
//! The products with `A` and with the bases run as candle matmuls on `A`'s device (f32); the
//! rest — two passes of classical Gram–Schmidt against the bases, then modified Gram–Schmidt
//! within the new block — on the host in f64, where it is O((m + n)·k) per column and needs no
//! elementwise candle op (on the CPU those wait on a shared spinning pool). A column that loses almost all of its norm to the projection (the space is exhausted:
//! `A` has low rank, or is zero) is replaced by a random one, so the bases always have their
//! full width.

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;

use super::gaussian;
use crate::error::{Error, Result};

/// A column keeping at least this share of its norm after the projection is accepted as it is.
const KEEP: f64 = 1e-2;
/// A column keeping less is numerically in the span already: replaced by a random one.
/// (Between the two: normalised and projected once more; its remaining error in the basis
/// directions was relative to its original norm.)
const DEPENDENT: f64 = 1e-5;
/// Rounds of [`extend`] before giving up (random columns pass the first almost surely).
const MAX_ROUNDS: usize = 16;

/// `A` restricted to the two Krylov spaces.
pub(super) struct Projection {
    /// m × p, orthonormal columns (f32, on `A`'s device).
    pub u: Tensor,
    /// n × q, orthonormal columns.
    pub v: Tensor,
    /// `Uᵀ·A·V`, p × q, row-major, f64.
    pub m: Vec<f64>,
    /// Columns of `u`.
    pub p: usize,
    /// Columns of `v`.
    pub q: usize,
}

/// The bidiagonalization of `a` (m × n, f32) from a Gaussian start block of `block` columns,
/// over `steps` steps. Needs `(steps + 1)·block ≤ min(m, n)`.
///
/// # Errors
/// Device errors; [`Error::Conversion`] naming `key` if no orthonormal basis can be extended
/// (only when the bases would exceed the dimensions).
pub(super) fn bidiagonalize(
    key: &str,
    a: &Tensor,
    block: usize,
    steps: usize,
    rng: &mut StdRng,
) -> Result<Projection> {
    let (_, n) = a.dims2()?;
    let start = random_columns(n, block, rng, a.device())?;
    let mut vi = extend(key, start, None, rng)?;
    let mut v = vi.clone();
    let mut u: Option<Tensor> = None;
    let mut products = Vec::with_capacity(steps);
    for _ in 0..steps {
        let ui = extend(key, a.matmul(&vi)?, u.as_ref(), rng)?;
        u = Some(match u {
            Some(u) => Tensor::cat(&[&u, &ui], 1)?,
            None => ui.clone(),
        });
        let z = a.t()?.matmul(&ui)?;
        vi = extend(key, z.clone(), Some(&v), rng)?;
        v = Tensor::cat(&[&v, &vi], 1)?;
        products.push(z);
    }
    let u = u.ok_or_else(|| Error::InvalidInput(format!("`{key}`: no Krylov steps")))?;
    let z = Tensor::cat(&products, 1)?;
    let m = z.t()?.matmul(&v)?;
    let (p, q) = m.dims2()?;
    let m = m
        .to_dtype(DType::F64)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    Ok(Projection { u, v, m, p, q })
}

/// The columns of `y` (rows × c) made orthonormal and orthogonal to the orthonormal columns of
/// `basis`; columns in their span are replaced by random ones.
fn extend(key: &str, y: Tensor, basis: Option<&Tensor>, rng: &mut StdRng) -> Result<Tensor> {
    let (rows, width) = y.dims2()?;
    let device = y.device().clone();
    let mut accepted: Vec<Vec<f64>> = Vec::with_capacity(width);
    let mut pending = y;
    for _ in 0..MAX_ROUNDS {
        let mut cols = host_columns(&pending)?;
        let before: Vec<f64> = cols.iter().map(|c| dot(c, c).sqrt()).collect();
        if let Some(b) = basis {
            project_out(&mut cols, &pending, b)?;
        }
        let mut retry = Vec::new();
        for (mut c, scale) in cols.into_iter().zip(before) {
            // Twice: one pass loses orthogonality when `c` is nearly in the span.
            for _ in 0..2 {
                for q in &accepted {
                    let d = dot(q, &c);
                    c.iter_mut().zip(q).for_each(|(x, q)| *x -= d * q);
                }
            }
            let norm = dot(&c, &c).sqrt();
            let kept = if scale > 0.0 { norm / scale } else { 0.0 };
            if kept >= DEPENDENT {
                c.iter_mut().for_each(|x| *x /= norm);
            }
            match kept {
                k if k >= KEEP => accepted.push(c),
                k if k >= DEPENDENT => retry.push(c),
                _ => retry.push((0..rows).map(|_| f64::from(gaussian(rng))).collect()),
            }
        }
        if retry.is_empty() {
            return from_columns(&accepted, rows, &device);
        }
        pending = from_columns(&retry, rows, &device)?;
    }
    Err(Error::Conversion {
        key: key.to_string(),
        reason: format!(
            "no orthonormal basis of {width} more columns of length {rows} could be found; the \
             rank asked for is too large for this matrix"
        ),
    })
}

/// `cols −= B·(Bᵀ·cols)`, twice (classical Gram–Schmidt loses orthogonality in one pass):
/// the products on `B`'s device, the subtraction on the host in f64. `y` holds `cols` as
/// they are on entry, on the device.
fn project_out(cols: &mut [Vec<f64>], y: &Tensor, b: &Tensor) -> Result<()> {
    let rows = b.dims2()?.0;
    for pass in 0..2 {
        let t = match pass {
            0 => y.clone(),
            _ => from_columns(cols, rows, b.device())?,
        };
        let bc = b.matmul(&b.t()?.matmul(&t)?)?;
        let bc = bc
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let w = cols.len();
        for (j, c) in cols.iter_mut().enumerate() {
            c.iter_mut()
                .enumerate()
                .for_each(|(r, x)| *x -= f64::from(bc[r * w + j]));
        }
    }
    Ok(())
}

/// A rows × c Gaussian matrix on `device`.
fn random_columns(rows: usize, c: usize, rng: &mut StdRng, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..rows * c).map(|_| gaussian(rng)).collect();
    Ok(Tensor::from_vec(values, (rows, c), device)?)
}

/// The columns of `y` (rows × c, f32) on the host, in f64.
fn host_columns(y: &Tensor) -> Result<Vec<Vec<f64>>> {
    let (rows, w) = y.dims2()?;
    let v = y.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
    Ok((0..w)
        .map(|j| (0..rows).map(|r| f64::from(v[r * w + j])).collect())
        .collect())
}

/// The rows × c f32 matrix whose columns are `cols`, on `device`.
fn from_columns(cols: &[Vec<f64>], rows: usize, device: &Device) -> Result<Tensor> {
    let w = cols.len();
    let mut flat = vec![0f32; rows * w];
    for (j, c) in cols.iter().enumerate() {
        for (r, &x) in c.iter().enumerate() {
            flat[r * w + j] = x as f32;
        }
    }
    Ok(Tensor::from_vec(flat, (rows, w), device)?)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
