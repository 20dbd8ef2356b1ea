//! The small symmetric eigenproblem at the end of every truncated SVD: a Gram matrix of the
//! Krylov projection (or of a small matrix itself), in f64, by Householder reduction to
//! tridiagonal form and the implicit QL algorithm (the EISPACK `tred2`/`tql2` pair, as JAMA
//! writes them): about 9n³ operations, a few times fewer than cyclic Jacobi's sweeps, which
//! stays as the tests' oracle.

use crate::error::{Error, Result};

/// QL iterations per eigenvalue before giving up on convergence (two or three are usual).
const MAX_ITERATIONS: usize = 60;

/// Eigenvalues and eigenvectors (columns of the returned n × n row-major matrix) of the
/// symmetric n × n row-major matrix `a`.
///
/// # Errors
/// [`Error::Conversion`] naming `key` when the QL iteration does not converge.
pub(super) fn symmetric_eigen(key: &str, a: &[f64], n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    if n == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut v = a.to_vec();
    let mut d = vec![0f64; n];
    let mut e = vec![0f64; n];
    tridiagonalize(&mut v, &mut d, &mut e, n);
    ql(key, &mut v, &mut d, &mut e, n)?;
    Ok((d, v))
}

/// Householder reduction of `v` (n × n, symmetric) to tridiagonal form: diagonal `d`,
/// subdiagonal `e[1..]`; `v` becomes the accumulated orthogonal transformation.
fn tridiagonalize(v: &mut [f64], d: &mut [f64], e: &mut [f64], n: usize) {
    for j in 0..n {
        d[j] = v[(n - 1) * n + j];
    }
    for i in (1..n).rev() {
        let scale: f64 = d[..i].iter().map(|x| x.abs()).sum();
        let mut h = 0.0;
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[(i - 1) * n + j];
                v[i * n + j] = 0.0;
                v[j * n + i] = 0.0;
            }
        } else {
            for x in d[..i].iter_mut() {
                *x /= scale;
                h += *x * *x;
            }
            let mut f = d[i - 1];
            let mut g = if f > 0.0 { -h.sqrt() } else { h.sqrt() };
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            e[..i].iter_mut().for_each(|x| *x = 0.0);
            for j in 0..i {
                f = d[j];
                v[j * n + i] = f;
                g = e[j] + v[j * n + j] * f;
                for k in j + 1..i {
                    g += v[k * n + j] * d[k];
                    e[k] += v[k * n + j] * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                f = d[j];
                g = e[j];
                for k in j..i {
                    v[k * n + j] -= f * e[k] + g * d[k];
                }
                d[j] = v[(i - 1) * n + j];
                v[i * n + j] = 0.0;
            }
        }
        d[i] = h;
    }
    for i in 0..n - 1 {
        v[(n - 1) * n + i] = v[i * n + i];
        v[i * n + i] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[k * n + i + 1] / h;
            }
            for j in 0..=i {
                let g: f64 = (0..=i).map(|k| v[k * n + i + 1] * v[k * n + j]).sum();
                for k in 0..=i {
                    v[k * n + j] -= g * d[k];
                }
            }
        }
        for k in 0..=i {
            v[k * n + i + 1] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[(n - 1) * n + j];
        v[(n - 1) * n + j] = 0.0;
    }
    v[(n - 1) * n + n - 1] = 1.0;
    e[0] = 0.0;
}

/// The implicit QL algorithm on the tridiagonal (`d`, `e`), accumulating into `v`: `d` becomes
/// the eigenvalues and the columns of `v` the eigenvectors.
fn ql(key: &str, v: &mut [f64], d: &mut [f64], e: &mut [f64], n: usize) -> Result<()> {
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1: f64 = 0.0;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n - 1 && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            let mut iterations = 0;
            loop {
                iterations += 1;
                if iterations > MAX_ITERATIONS {
                    return Err(not_converged(key));
                }
                let mut g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for x in d[l + 2..].iter_mut() {
                    *x -= h;
                }
                f += h;
                p = d[m];
                let (mut c, mut c2, mut c3) = (1.0, 1.0, 1.0);
                let el1 = e[l + 1];
                let (mut s, mut s2) = (0.0, 0.0);
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    for k in 0..n {
                        let row = &mut v[k * n..(k + 1) * n];
                        h = row[i + 1];
                        row[i + 1] = s * row[i] + c * h;
                        row[i] = c * row[i] - s * h;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
    Ok(())
}

fn not_converged(key: &str) -> Error {
    Error::Conversion {
        key: key.to_string(),
        reason: format!(
            "its singular value decomposition did not converge in {MAX_ITERATIONS} QL \
             iterations; the tensor may hold extreme values"
        ),
    }
}

/// Jacobi sweeps before giving up on convergence.
#[cfg(test)]
const MAX_SWEEPS: usize = 60;

/// Eigenvalues and eigenvectors (columns of the returned n × n matrix) of the symmetric matrix
/// `a` (row-major, destroyed), by cyclic Jacobi rotations: the oracle of the tests.
#[cfg(test)]
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
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `‖A·v − λ·v‖` for every pair, and `VᵀV = I`.
    fn check(a: &[f64], n: usize, values: &[f64], vectors: &[f64]) {
        let scale = a.iter().map(|x| x.abs()).fold(1e-300, f64::max);
        for e in 0..n {
            for r in 0..n {
                let av: f64 = (0..n).map(|c| a[r * n + c] * vectors[c * n + e]).sum();
                let lv = values[e] * vectors[r * n + e];
                assert!(
                    (av - lv).abs() <= 1e-10 * scale * n as f64,
                    "pair {e}, row {r}"
                );
            }
            for f in 0..n {
                let dot: f64 = (0..n)
                    .map(|r| vectors[r * n + e] * vectors[r * n + f])
                    .sum();
                assert!(
                    (dot - f64::from(e == f)).abs() < 1e-10,
                    "VᵀV[{e},{f}] = {dot}"
                );
            }
        }
    }

    fn sorted(mut v: Vec<f64>) -> Vec<f64> {
        v.sort_by(f64::total_cmp);
        v
    }

    #[test]
    fn eigenpairs_match_jacobi_rotations() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for n in [1usize, 2, 3, 7, 40, 96] {
            // A Gram matrix (positive semi-definite, as the SVD's), rank-deficient for n ≥ 7
            // (rank n/2: repeated zero eigenvalues).
            let rank = if n >= 7 { n / 2 } else { n };
            let b: Vec<f64> = (0..n * rank).map(|_| rng.random::<f64>() - 0.5).collect();
            let mut a = vec![0f64; n * n];
            for i in 0..n {
                for j in 0..n {
                    a[i * n + j] = (0..rank).map(|k| b[i * rank + k] * b[j * rank + k]).sum();
                }
            }
            let (values, vectors) = symmetric_eigen("t", &a, n).unwrap();
            check(&a, n, &values, &vectors);
            let (oracle, _) = jacobi_eigen("t", &mut a.clone(), n).unwrap();
            for (x, y) in sorted(values).iter().zip(sorted(oracle)) {
                assert!((x - y).abs() <= 1e-10 * (1.0 + y.abs()), "{n}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn diagonal_zero_and_repeated_spectra_decompose() {
        let n = 6;
        let zero = vec![0f64; n * n];
        let (values, vectors) = symmetric_eigen("z", &zero, n).unwrap();
        assert!(values.iter().all(|&v| v == 0.0));
        check(&zero, n, &values, &vectors);
        let mut identity = vec![0f64; n * n];
        (0..n).for_each(|i| identity[i * n + i] = 2.0);
        let (values, vectors) = symmetric_eigen("i", &identity, n).unwrap();
        assert!(values.iter().all(|&v| (v - 2.0).abs() < 1e-14));
        check(&identity, n, &values, &vectors);
        let diag: Vec<f64> = (0..n * n)
            .map(|i| {
                if i % (n + 1) == 0 {
                    (i / n) as f64 - 2.5
                } else {
                    0.0
                }
            })
            .collect();
        let (values, vectors) = symmetric_eigen("d", &diag, n).unwrap();
        check(&diag, n, &values, &vectors);
        assert_eq!(sorted(values), vec![-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]);
    }
}
