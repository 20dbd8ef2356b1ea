use super::*;

/// Orthonormal columns of the m × l matrix `y` (row-major, independent columns): modified
/// Gram–Schmidt, twice, in f64 (for the test matrices' random bases).
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
        for r in 0..m {
            q[r * l + j] /= norm;
        }
    }
    q
}

/// An independent exact SVD for the oracle: one-sided Jacobi (Hestenes) on the columns of `a`
/// (m × n, m ≥ n), in f64. Returns the singular values, descending.
fn exact_singular_values(a: &[f32], m: usize, n: usize) -> Vec<f64> {
    let mut w: Vec<f64> = a.iter().map(|&v| v as f64).collect();
    for _ in 0..100 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (mut alpha, mut beta, mut gamma) = (0.0, 0.0, 0.0);
                for r in 0..m {
                    let (x, y) = (w[r * n + p], w[r * n + q]);
                    alpha += x * x;
                    beta += y * y;
                    gamma += x * y;
                }
                if gamma.abs() <= 1e-15 * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for r in 0..m {
                    let (x, y) = (w[r * n + p], w[r * n + q]);
                    w[r * n + p] = c * x - s * y;
                    w[r * n + q] = s * x + c * y;
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let mut s: Vec<f64> = (0..n)
        .map(|c| (0..m).map(|r| w[r * n + c].powi(2)).sum::<f64>().sqrt())
        .collect();
    s.sort_by(|a, b| b.total_cmp(a));
    s
}

/// A random m × n matrix whose singular values decay as `decay^i` (plus noise), made as
/// U·diag(σ)·Vᵀ from random orthonormal bases.
fn matrix(m: usize, n: usize, decay: f64, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let k = m.min(n);
    let raw = |rows: usize, rng: &mut rand::rngs::StdRng| -> Vec<f64> {
        (0..rows * k).map(|_| gaussian(rng) as f64).collect()
    };
    let u = orthonormal(&raw(m, &mut rng), m, k);
    let v = orthonormal(&raw(n, &mut rng), n, k);
    let mut a = vec![0f32; m * n];
    for r in 0..m {
        for c in 0..n {
            let x: f64 = (0..k)
                .map(|i| u[r * k + i] * decay.powi(i as i32) * v[c * k + i])
                .sum();
            a[r * n + c] = x as f32;
        }
    }
    a
}

fn residual(a: &[f32], t: &Truncated) -> f64 {
    let k = t.s.len();
    let mut sum = 0f64;
    for r in 0..t.rows {
        for c in 0..t.cols {
            let approx: f64 = (0..k)
                .map(|i| t.u[r * k + i] as f64 * t.s[i] as f64 * t.vt[i * t.cols + c] as f64)
                .sum();
            sum += (a[r * t.cols + c] as f64 - approx).powi(2);
        }
    }
    sum.sqrt()
}

#[test]
fn reconstruction_is_within_one_percent_of_the_exact_truncated_svd() {
    // Slow and fast decay, flat spectra (noise), wide, tall and square; randomized and exact
    // paths (rank 60 of 100 takes the exact one).
    for (m, n, decay, rank, seed) in [
        (120, 300, 0.9, 8, 1),
        (300, 120, 0.97, 16, 2),
        (200, 200, 1.0, 32, 3),
        (64, 500, 0.7, 4, 4),
        (100, 150, 0.99, 60, 5),
        (1, 40, 0.5, 1, 6),
    ] {
        let a = matrix(m, n, decay, seed);
        let t = truncated_svd("w", &a, m, n, rank, 7, &Device::Cpu).unwrap();
        let exact = if m >= n {
            exact_singular_values(&a, m, n)
        } else {
            let at: Vec<f32> = (0..n * m).map(|i| a[(i % m) * n + i / m]).collect();
            exact_singular_values(&at, n, m)
        };
        let optimal = exact[rank..].iter().map(|s| s * s).sum::<f64>().sqrt();
        let got = residual(&a, &t);
        let scale = exact[0].max(1e-12);
        assert!(
            got <= optimal * 1.01 + 1e-5 * scale,
            "{m}×{n} decay {decay} rank {rank}: residual {got} vs optimal {optimal}"
        );
        for (i, s) in t.s.iter().enumerate() {
            let want = exact[i];
            assert!(
                (*s as f64 - want).abs() <= 0.01 * want + 1e-5 * scale,
                "σ{i} {s} vs {want}"
            );
        }
    }
}

/// An m × n matrix of independent standard normal entries: a flat (Marchenko–Pastur) spectrum
/// without gaps, the hardest case for a Krylov or randomized method (what a difference of two
/// unrelated models looks like).
fn noise(m: usize, n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..m * n).map(|_| gaussian(&mut rng)).collect()
}

#[test]
fn noise_is_reconstructed_within_one_percent_of_the_exact_truncated_svd() {
    // Wide, tall, square; ranks whose Krylov bases stay well below min(m, n).
    for (m, n, rank, seed) in [
        (160, 320, 16usize, 21),
        (320, 150, 8, 22),
        (200, 200, 4, 23),
        (240, 260, 1, 24),
    ] {
        let a = noise(m, n, seed);
        assert!(
            2 * (STEPS + 1) * rank.div_ceil(2) < m.min(n),
            "takes the Krylov path"
        );
        let t = truncated_svd("w", &a, m, n, rank, 9, &Device::Cpu).unwrap();
        let exact = if m >= n {
            exact_singular_values(&a, m, n)
        } else {
            let at: Vec<f32> = (0..n * m).map(|i| a[(i % m) * n + i / m]).collect();
            exact_singular_values(&at, n, m)
        };
        let optimal = exact[rank..].iter().map(|s| s * s).sum::<f64>().sqrt();
        let got = residual(&a, &t);
        assert!(
            got <= optimal * 1.01,
            "{m}×{n} rank {rank}: residual {got} vs optimal {optimal} (ratio {})",
            got / optimal
        );
    }
}

#[test]
fn factors_are_orthonormal_and_seeded() {
    let (m, n, k) = (80, 90, 10);
    let a = matrix(m, n, 0.8, 11);
    let t = truncated_svd("w", &a, m, n, k, 3, &Device::Cpu).unwrap();
    for i in 0..k {
        for j in 0..k {
            let uu: f64 = (0..m)
                .map(|r| t.u[r * k + i] as f64 * t.u[r * k + j] as f64)
                .sum();
            let vv: f64 = (0..n)
                .map(|c| t.vt[i * n + c] as f64 * t.vt[j * n + c] as f64)
                .sum();
            let want = f64::from(i == j);
            assert!(
                (uu - want).abs() < 1e-4 && (vv - want).abs() < 1e-4,
                "{i},{j}"
            );
        }
    }
    let again = truncated_svd("w", &a, m, n, k, 3, &Device::Cpu).unwrap();
    assert_eq!((t.u, t.s, t.vt), (again.u, again.s, again.vt));
}

#[test]
fn zero_and_rank_deficient_matrices_decompose() {
    // Through the Gram matrix (30 × 40, rank 5) and through the Krylov bases (100 × 120).
    for (m, n) in [(30, 40), (100, 120)] {
        let zero = vec![0f32; m * n];
        let t = truncated_svd("z", &zero, m, n, 5, 0, &Device::Cpu).unwrap();
        assert!(t.s.iter().all(|&s| s == 0.0));
        assert!(t.vt.iter().all(|&v| v == 0.0));
    }
    // Rank 2 asked for rank 6: the extra singular values are (numerically) zero.
    let rank2: Vec<f32> = (0..50 * 60)
        .map(|i| ((i / 60) as f32 * 0.1).sin() * ((i % 60) as f32).cos() + (i / 60) as f32 * 0.01)
        .collect();
    let t = truncated_svd("r", &rank2, 50, 60, 6, 0, &Device::Cpu).unwrap();
    assert!(t.s[2] < 1e-3 * t.s[0], "{:?}", t.s);
    assert!(residual(&rank2, &t) < 1e-3 * t.s[0] as f64);
}

#[test]
fn bad_requests_are_errors() {
    let a = vec![1f32; 12];
    let err = truncated_svd("k", &a, 3, 4, 4, 0, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("rank 4 is outside 1..=3"), "{err}");
    assert!(truncated_svd("k", &a, 3, 4, 0, 0, &Device::Cpu).is_err());
    let mut nan = a.clone();
    nan[5] = f32::NAN;
    let err = truncated_svd("k", &nan, 3, 4, 2, 0, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("NaN or Inf"), "{err}");
}
