//! A truncated SVD that never computes the full decomposition: the randomized range finder with
//! power iterations (Halko, Martinsson and Tropp 2011, algorithms 4.4 and 5.1).
//!
//! For `A` (m × n) and a rank k: `Y = A·Ω` with Ω an n × (k + p) Gaussian matrix (p = 10 extra
//! columns), orthonormalised to `Q`; `q` power iterations `Q ← orth(A·orth(Aᵀ·Q))` sharpen it
//! where the spectrum decays slowly (a fine-tuning difference often does); then the small
//! `B = Qᵀ·A` ((k + p) × n) is decomposed exactly through the eigenvectors of `B·Bᵀ` (cyclic
//! Jacobi, in f64), and `A ≈ U_k·Σ_k·V_kᵀ` with `U = Q·U_B`, `V_kᵀ = Σ_k⁻¹·U_Bᵀ·B`. The products
//! with `A` — all the work, O(m·n·(k + p)) each — run with candle's matmul on the device `A` is
//! on (all CPU cores, or a GPU); the rest is O((m + n)·(k + p)²) on the host.
//!
//! When k + p reaches half of min(m, n) the randomized sketch saves nothing, so the whole
//! matrix is decomposed through its Gram matrix the same way (exact up to rounding).

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// Extra sketch columns beyond the rank.
const OVERSAMPLE: usize = 10;
/// Power iterations: each makes the sketch follow the top singular vectors more closely.
pub const POWER_ITERATIONS: usize = 4;
/// Jacobi sweeps before giving up on convergence.
const MAX_SWEEPS: usize = 60;

/// The top-k factors of a matrix: `A ≈ u·diag(s)·vt`.
#[derive(Debug, Clone)]
pub struct Truncated {
    /// Left singular vectors, m × k, row-major.
    pub u: Vec<f32>,
    /// Singular values, descending.
    pub s: Vec<f32>,
    /// Right singular vectors (transposed), k × n, row-major.
    pub vt: Vec<f32>,
    /// Rows m.
    pub rows: usize,
    /// Columns n.
    pub cols: usize,
}

/// The rank-`rank` truncated SVD of the m × n matrix `a` (row-major f32, on `device`), with the
/// random sketch seeded by `seed` (the same seed gives the same factors).
///
/// # Errors
/// [`Error::InvalidInput`] for a rank of 0 or more than min(m, n), or a matrix holding NaN or
/// Inf; [`Error::Conversion`] naming `key` when the eigen-decomposition does not converge;
/// device errors.
pub fn truncated_svd(
    key: &str,
    a: &[f32],
    rows: usize,
    cols: usize,
    rank: usize,
    seed: u64,
    device: &Device,
) -> Result<Truncated> {
    let small = rows.min(cols);
    if rank == 0 || rank > small {
        return Err(Error::InvalidInput(format!(
            "`{key}`: rank {rank} is outside 1..={small} for a {rows} × {cols} matrix"
        )));
    }
    if a.len() != rows * cols {
        return Err(Error::InvalidInput(format!(
            "`{key}`: {} values are not a {rows} × {cols} matrix",
            a.len()
        )));
    }
    if a.iter().any(|v| !v.is_finite()) {
        return Err(Error::InvalidInput(format!(
            "`{key}` holds NaN or Inf values; it has no singular value decomposition"
        )));
    }
    // Work on the wide side: the Gram matrix below is then the smaller one.
    if rows > cols {
        let at: Vec<f32> = (0..cols * rows)
            .map(|i| a[(i % rows) * cols + i / rows])
            .collect();
        let t = truncated_svd(key, &at, cols, rows, rank, seed, device)?;
        return Ok(Truncated {
            u: transpose(&t.vt, rank, rows),
            s: t.s,
            vt: transpose(&t.u, cols, rank),
            rows,
            cols,
        });
    }
    let m = Tensor::from_slice(a, (rows, cols), &Device::Cpu)?.to_device(device)?;
    let sketch = (rank + OVERSAMPLE).min(small);
    // The range of A: exactly, through A's own rows when the sketch would be as large.
    let q = if 2 * sketch >= small {
        None
    } else {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let omega: Vec<f32> = (0..cols * sketch).map(|_| gaussian(&mut rng)).collect();
        let omega = Tensor::from_slice(&omega, (cols, sketch), device)?;
        let mut q = orthonormal(&host(&m.matmul(&omega)?)?, rows, sketch);
        for _ in 0..POWER_ITERATIONS {
            let qt = Tensor::from_slice(&to_f32(&q), (rows, sketch), device)?;
            let z = orthonormal(&host(&m.t()?.matmul(&qt)?)?, cols, sketch);
            let zt = Tensor::from_slice(&to_f32(&z), (cols, sketch), device)?;
            q = orthonormal(&host(&m.matmul(&zt)?)?, rows, sketch);
        }
        Some(q)
    };
    // B = Qᵀ·A (l × n), or A itself; its Gram matrix B·Bᵀ (l × l) in f64.
    let (b, l) = match &q {
        Some(q) => {
            let qt = Tensor::from_slice(&to_f32(q), (rows, sketch), device)?;
            (host(&qt.t()?.matmul(&m)?)?, sketch)
        }
        None => (a.iter().map(|&v| v as f64).collect(), rows),
    };
    let mut gram = vec![0f64; l * l];
    for i in 0..l {
        for j in i..l {
            let dot: f64 = (0..cols).map(|c| b[i * cols + c] * b[j * cols + c]).sum();
            gram[i * l + j] = dot;
            gram[j * l + i] = dot;
        }
    }
    let (values, vectors) = jacobi_eigen(key, &mut gram, l)?;
    // Eigenpairs in descending order of eigenvalue (σ²).
    let mut order: Vec<usize> = (0..l).collect();
    order.sort_by(|&x, &y| values[y].total_cmp(&values[x]));
    let mut u = vec![0f32; rows * rank];
    let mut s = vec![0f32; rank];
    let mut vt = vec![0f32; rank * cols];
    for (k, &e) in order.iter().take(rank).enumerate() {
        let sigma = values[e].max(0.0).sqrt();
        s[k] = sigma as f32;
        // u_k = Q·w_k (w_k the eigenvector), or w_k itself without a sketch.
        for r in 0..rows {
            let v = match &q {
                Some(q) => (0..l).map(|j| q[r * l + j] * vectors[j * l + e]).sum(),
                None => vectors[r * l + e],
            };
            u[r * rank + k] = v as f32;
        }
        // v_kᵀ = w_kᵀ·B / σ_k (zero for a zero singular value: nothing to reconstruct).
        if sigma > 0.0 {
            for c in 0..cols {
                let v: f64 = (0..l).map(|j| vectors[j * l + e] * b[j * cols + c]).sum();
                vt[k * cols + c] = (v / sigma) as f32;
            }
        }
    }
    Ok(Truncated {
        u,
        s,
        vt,
        rows,
        cols,
    })
}

/// The transpose of the r × c row-major matrix `x`.
fn transpose(x: &[f32], r: usize, c: usize) -> Vec<f32> {
    (0..r * c).map(|i| x[(i % r) * c + i / r]).collect()
}

/// A standard normal sample (Box–Muller).
fn gaussian(rng: &mut impl Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

fn host(t: &Tensor) -> Result<Vec<f64>> {
    let t = t.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    Ok(t.flatten_all()?.to_vec1::<f64>()?)
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// An orthonormal basis of the columns of the m × l matrix `y` (row-major): modified
/// Gram–Schmidt, twice, in f64 (one pass loses orthogonality when the columns are nearly
/// dependent, which power iterations make them). A column that vanishes is replaced by a unit
/// vector orthogonal to the others, so the basis always has l columns.
fn orthonormal(y: &[f64], m: usize, l: usize) -> Vec<f64> {
    let mut q = y.to_vec();
    for j in 0..l {
        for _pass in 0..2 {
            for i in 0..j {
                let dot: f64 = (0..m).map(|r| q[r * l + i] * q[r * l + j]).sum();
                for r in 0..m {
                    q[r * l + j] -= dot * q[r * l + i];
                }
            }
        }
        let norm = (0..m).map(|r| q[r * l + j].powi(2)).sum::<f64>().sqrt();
        if norm > 1e-300 {
            for r in 0..m {
                q[r * l + j] /= norm;
            }
            continue;
        }
        // A dependent column: the first coordinate vector not in the span of the others.
        for e in 0..m {
            let mut c: Vec<f64> = (0..m).map(|r| f64::from(r == e)).collect();
            for i in 0..j {
                let dot: f64 = (0..m).map(|r| q[r * l + i] * c[r]).sum();
                c.iter_mut()
                    .enumerate()
                    .for_each(|(r, v)| *v -= dot * q[r * l + i]);
            }
            let n = c.iter().map(|v| v * v).sum::<f64>().sqrt();
            if n > 1e-6 {
                for r in 0..m {
                    q[r * l + j] = c[r] / n;
                }
                break;
            }
        }
    }
    q
}

/// Eigenvalues and eigenvectors (columns of the returned n × n matrix) of the symmetric matrix
/// `a` (row-major, destroyed), by cyclic Jacobi rotations.
fn jacobi_eigen(key: &str, a: &mut [f64], n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    for _ in 0..MAX_SWEEPS {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum::<f64>()
            .sqrt();
        if off <= 1e-15 * scale || scale == 0.0 {
            let values = (0..n).map(|i| a[i * n + i]).collect();
            return Ok((values, v));
        }
        for p in 0..n {
            for r in p + 1..n {
                let apr = a[p * n + r];
                if apr.abs() <= 1e-300 {
                    continue;
                }
                let theta = (a[r * n + r] - a[p * n + p]) / (2.0 * apr);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akr) = (a[k * n + p], a[k * n + r]);
                    a[k * n + p] = c * akp - s * akr;
                    a[k * n + r] = s * akp + c * akr;
                }
                for k in 0..n {
                    let (apk, ark) = (a[p * n + k], a[r * n + k]);
                    a[p * n + k] = c * apk - s * ark;
                    a[r * n + k] = s * apk + c * ark;
                }
                for k in 0..n {
                    let (vkp, vkr) = (v[k * n + p], v[k * n + r]);
                    v[k * n + p] = c * vkp - s * vkr;
                    v[k * n + r] = s * vkp + c * vkr;
                }
            }
        }
    }
    Err(Error::Conversion {
        key: key.to_string(),
        reason: format!(
            "its singular value decomposition did not converge in {MAX_SWEEPS} Jacobi sweeps; \
             the tensor may hold extreme values"
        ),
    })
}

#[cfg(test)]
mod tests;
