//! The small symmetric eigenproblem at the end of every truncated SVD: a Gram matrix of the
//! Krylov projection (or of a small matrix itself), in f64.

use crate::error::{Error, Result};

/// Jacobi sweeps before giving up on convergence.
const MAX_SWEEPS: usize = 60;

/// Eigenvalues and eigenvectors (columns of the returned n × n matrix) of the symmetric matrix
/// `a` (row-major, destroyed), by cyclic Jacobi rotations.
pub(super) fn jacobi_eigen(key: &str, a: &mut [f64], n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
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

