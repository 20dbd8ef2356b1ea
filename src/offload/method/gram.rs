//! The dot products of a Gram matrix over one chunk of each vector, in f64.
//!
//! Every entry is `Σ xᵢ·yᵢ` in eight running sums (element `8j + l` into sum `l`, in order),
//! added in order at the end, then the tail's products summed in order (see [`dot`]). The x86
//! kernels keep exactly that order, with the eight sums in one AVX-512 register (two AVX2 ones),
//! and convert each vector's values to f64 once for all the pairs it is in, instead of once per
//! pair: the same bits, a third of the work for two vectors (SLERP's norms and dot product).

/// Adds the dot products of `vals` (one chunk of each vector, all of one length) to the upper
/// triangle of `g` (`k × k`, row-major).
pub(super) fn add_gram(g: &mut [f64], vals: &[&[f32]]) {
    #[cfg(target_arch = "x86_64")]
    if x86::add_gram(g, vals) {
        return;
    }
    let k = vals.len();
    for a in 0..k {
        for b in a..k {
            g[a * k + b] += dot(vals[a], vals[b]);
        }
    }
}

/// `Σ xᵢ·yᵢ` in f64, in eight running sums (one running sum is a chain of dependent
/// additions) added at the end.
pub(super) fn dot(x: &[f32], y: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for l in 0..8 {
            acc[l] += f64::from(a[l]) * f64::from(b[l]);
        }
    }
    finish(&acc, xr, yr)
}

/// The eight running sums added in order, plus the tail's products.
fn finish(acc: &[f64; 8], xr: &[f32], yr: &[f32]) -> f64 {
    let tail: f64 = xr
        .iter()
        .zip(yr)
        .map(|(&a, &b)| f64::from(a) * f64::from(b))
        .sum();
    acc.iter().sum::<f64>() + tail
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::finish;

    /// The most vectors a kernel takes (ten pairs: ten accumulators).
    const MAX: usize = 4;

    /// Runs a kernel when the CPU has one and `vals` is 1 to [`MAX`] vectors; false otherwise.
    pub(super) fn add_gram(g: &mut [f64], vals: &[&[f32]]) -> bool {
        let k = vals.len();
        let n = vals.first().map_or(0, |v| v.len());
        if k == 0 || k > MAX || vals.iter().any(|v| v.len() != n) || g.len() < k * k {
            return false;
        }
        let mut acc = [[0f64; 8]; MAX * (MAX + 1) / 2];
        let body = n / 8 * 8;
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512 F is present; every vector holds `n ≥ body` values.
            unsafe {
                match k {
                    1 => sums512::<1>(vals, body, &mut acc),
                    2 => sums512::<2>(vals, body, &mut acc),
                    3 => sums512::<3>(vals, body, &mut acc),
                    _ => sums512::<4>(vals, body, &mut acc),
                }
            }
        } else if is_x86_feature_detected!("avx") {
            // SAFETY: AVX is present; every vector holds `n ≥ body` values.
            unsafe {
                match k {
                    1 => sums256::<1>(vals, body, &mut acc),
                    2 => sums256::<2>(vals, body, &mut acc),
                    3 => sums256::<3>(vals, body, &mut acc),
                    _ => sums256::<4>(vals, body, &mut acc),
                }
            }
        } else {
            return false;
        }
        let mut p = 0;
        for a in 0..k {
            for b in a..k {
                g[a * k + b] += finish(&acc[p], &vals[a][body..], &vals[b][body..]);
                p += 1;
            }
        }
        true
    }

    /// The running sums of every pair `a ≤ b` of `K` vectors over their first `body` values (a
    /// multiple of 8), pair by pair in `acc`, eight lanes in one register.
    #[target_feature(enable = "avx512f")]
    unsafe fn sums512<const K: usize>(
        vals: &[&[f32]],
        body: usize,
        acc: &mut [[f64; 8]; MAX * (MAX + 1) / 2],
    ) {
        let mut sums = [_mm512_setzero_pd(); MAX * (MAX + 1) / 2];
        let ptrs: [*const f32; K] = std::array::from_fn(|a| vals[a].as_ptr());
        let mut i = 0;
        while i < body {
            // SAFETY: `i + 8 ≤ body ≤` each vector's length.
            let v: [__m512d; K] = std::array::from_fn(|a| unsafe {
                _mm512_cvtps_pd(_mm256_loadu_ps(ptrs[a].add(i)))
            });
            let mut p = 0;
            for a in 0..K {
                for b in a..K {
                    // A product then a sum, as the portable loop (no fused multiply-add).
                    sums[p] = _mm512_add_pd(sums[p], _mm512_mul_pd(v[a], v[b]));
                    p += 1;
                }
            }
            i += 8;
        }
        for (s, out) in sums.iter().zip(acc.iter_mut()) {
            // SAFETY: `out` holds eight f64.
            unsafe { _mm512_storeu_pd(out.as_mut_ptr(), *s) };
        }
    }

    /// [`sums512`] with each pair's eight lanes in two AVX registers.
    #[target_feature(enable = "avx")]
    unsafe fn sums256<const K: usize>(
        vals: &[&[f32]],
        body: usize,
        acc: &mut [[f64; 8]; MAX * (MAX + 1) / 2],
    ) {
        let mut lo = [_mm256_setzero_pd(); MAX * (MAX + 1) / 2];
        let mut hi = [_mm256_setzero_pd(); MAX * (MAX + 1) / 2];
        let ptrs: [*const f32; K] = std::array::from_fn(|a| vals[a].as_ptr());
        let mut i = 0;
        while i < body {
            // SAFETY: `i + 8 ≤ body ≤` each vector's length.
            let v: [(__m256d, __m256d); K] = std::array::from_fn(|a| unsafe {
                (
                    _mm256_cvtps_pd(_mm_loadu_ps(ptrs[a].add(i))),
                    _mm256_cvtps_pd(_mm_loadu_ps(ptrs[a].add(i + 4))),
                )
            });
            let mut p = 0;
            for a in 0..K {
                for b in a..K {
                    lo[p] = _mm256_add_pd(lo[p], _mm256_mul_pd(v[a].0, v[b].0));
                    hi[p] = _mm256_add_pd(hi[p], _mm256_mul_pd(v[a].1, v[b].1));
                    p += 1;
                }
            }
            i += 8;
        }
        for ((l, h), out) in lo.iter().zip(&hi).zip(acc.iter_mut()) {
            // SAFETY: `out` holds eight f64.
            unsafe {
                _mm256_storeu_pd(out.as_mut_ptr(), *l);
                _mm256_storeu_pd(out.as_mut_ptr().add(4), *h);
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::super::dot;
        use super::*;

        fn values(n: usize, seed: u32) -> Vec<f32> {
            let mut s = seed.wrapping_mul(2_654_435_761) | 1;
            (0..n)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 17;
                    s ^= s << 5;
                    // Wide exponents, both signs: sums whose order shows in the last bits.
                    let m = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                    m * 2f32.powi((s % 40) as i32 - 20)
                })
                .collect()
        }

        /// Each kernel gives the portable dot products bit for bit, for every vector count
        /// it takes and lengths with and without a tail.
        #[test]
        fn kernels_equal_the_portable_dot_products() {
            for n in [0, 1, 7, 8, 9, 64, 1000, 4099] {
                for k in 1..=MAX {
                    let vecs: Vec<Vec<f32>> = (0..k).map(|a| values(n, 7 + a as u32)).collect();
                    let vals: Vec<&[f32]> = vecs.iter().map(Vec::as_slice).collect();
                    let mut want = vec![0.25f64; k * k];
                    for a in 0..k {
                        for b in a..k {
                            want[a * k + b] += dot(vals[a], vals[b]);
                        }
                    }
                    let body = n / 8 * 8;
                    let mut runs: Vec<(&str, bool)> =
                        vec![("avx", is_x86_feature_detected!("avx"))];
                    runs.push(("avx512f", is_x86_feature_detected!("avx512f")));
                    for (name, present) in runs {
                        if !present {
                            continue;
                        }
                        let mut acc = [[0f64; 8]; MAX * (MAX + 1) / 2];
                        // SAFETY: the feature is present; each vector holds n ≥ body values.
                        unsafe {
                            match (name, k) {
                                ("avx", 1) => sums256::<1>(&vals, body, &mut acc),
                                ("avx", 2) => sums256::<2>(&vals, body, &mut acc),
                                ("avx", 3) => sums256::<3>(&vals, body, &mut acc),
                                ("avx", _) => sums256::<4>(&vals, body, &mut acc),
                                (_, 1) => sums512::<1>(&vals, body, &mut acc),
                                (_, 2) => sums512::<2>(&vals, body, &mut acc),
                                (_, 3) => sums512::<3>(&vals, body, &mut acc),
                                _ => sums512::<4>(&vals, body, &mut acc),
                            }
                        }
                        let mut got = vec![0.25f64; k * k];
                        let mut p = 0;
                        for a in 0..k {
                            for b in a..k {
                                got[a * k + b] +=
                                    finish(&acc[p], &vals[a][body..], &vals[b][body..]);
                                p += 1;
                            }
                        }
                        let bits = |g: &[f64]| g.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&got), bits(&want), "{name}, {k} vectors of {n}");
                    }
                    let mut dispatched = vec![0.25f64; k * k];
                    assert!(add_gram(&mut dispatched, &vals) || !is_x86_feature_detected!("avx"));
                    if is_x86_feature_detected!("avx") {
                        assert_eq!(dispatched, want, "dispatched, {k} vectors of {n}");
                    }
                }
            }
            // Five vectors, or vectors of different lengths, take the portable path.
            let v = values(16, 1);
            assert!(!add_gram(&mut [0.0; 25], &[&v, &v, &v, &v, &v]));
            assert!(!add_gram(&mut [0.0; 4], &[&v, &v[..8]]));
        }
    }
}
