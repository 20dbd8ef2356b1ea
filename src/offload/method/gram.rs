//! The dot products of a Gram matrix over one chunk of each vector, in f64.
//!
//! Every entry is `Σ xᵢ·yᵢ` in eight running sums (element `8j + l` into sum `l`, in order),
//! added in order at the end, then the tail's products summed in order (see [`dot`]). The x86
//! kernels keep exactly that order, with the eight sums in one AVX-512 register (two AVX2 ones),
//! and convert each vector's values to f64 once for all the pairs it is in, instead of once per
//! pair: the same bits, a third of the work for two vectors (SLERP's norms and dot product).
//! Vectors that are f16 or bf16 operands in a file are summed from their bytes
//! ([`add_gram_raw`]), decoded in registers: no f32 copy of them goes through memory.

use crate::model::dtype::Dtype;

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

/// [`add_gram`] of vectors given as the bytes of `dtype` values (f16 or bf16, all of one
/// length), decoded exactly; false, with `g` unchanged, where no kernel takes them (then the
/// caller decodes them and calls [`add_gram`]: the same sums).
pub(super) fn add_gram_raw(g: &mut [f64], raws: &[&[u8]], dtype: Dtype) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        x86::add_gram_raw(g, raws, dtype)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (g, raws, dtype);
        false
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
    use crate::model::dtype::Dtype;

    /// The most vectors a kernel takes (ten pairs: ten accumulators).
    const MAX: usize = 4;
    /// Accumulators for [`MAX`] vectors' pairs.
    const PAIRS: usize = MAX * (MAX + 1) / 2;
    type Acc = [[f64; 8]; PAIRS];

    /// Eight values of one element type as f32, from element `i` on.
    trait Load8 {
        /// # Safety
        /// Elements `i..i + 8` lie at `p`; the caller has the loader's CPU features.
        unsafe fn load8(p: *const u8, i: usize) -> __m256;
    }

    struct F32s;
    struct F16s;
    struct Bf16s;

    impl Load8 for F32s {
        #[inline(always)]
        unsafe fn load8(p: *const u8, i: usize) -> __m256 {
            // SAFETY: as the trait says.
            unsafe { _mm256_loadu_ps(p.add(4 * i).cast()) }
        }
    }

    impl Load8 for F16s {
        #[inline(always)]
        unsafe fn load8(p: *const u8, i: usize) -> __m256 {
            // SAFETY: as the trait says (F16C).
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * i).cast())) }
        }
    }

    impl Load8 for Bf16s {
        #[inline(always)]
        unsafe fn load8(p: *const u8, i: usize) -> __m256 {
            // SAFETY: as the trait says (AVX2). A bf16 is the high half of its f32.
            unsafe {
                let h = _mm_loadu_si128(p.add(2 * i).cast());
                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
            }
        }
    }

    /// Runs a kernel when the CPU has one and `vals` is 1 to [`MAX`] vectors; false otherwise.
    pub(super) fn add_gram(g: &mut [f64], vals: &[&[f32]]) -> bool {
        let Some(n) = fits(g, vals.iter().map(|v| v.len())) else {
            return false;
        };
        let ptrs: Vec<*const u8> = vals.iter().map(|v| v.as_ptr().cast()).collect();
        let body = n / 8 * 8;
        let mut acc = [[0f64; 8]; PAIRS];
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512 F is present; every vector holds `n ≥ body` f32.
            unsafe {
                by_count(
                    &ptrs,
                    body,
                    &mut acc,
                    sums512::<1, F32s>,
                    sums512::<2, F32s>,
                    sums512::<3, F32s>,
                    sums512::<4, F32s>,
                )
            }
        } else if is_x86_feature_detected!("avx") {
            // SAFETY: AVX is present; every vector holds `n ≥ body` f32.
            unsafe {
                by_count(
                    &ptrs,
                    body,
                    &mut acc,
                    sums256::<1>,
                    sums256::<2>,
                    sums256::<3>,
                    sums256::<4>,
                )
            }
        } else {
            return false;
        }
        add_sums(g, &acc, vals, body);
        true
    }

    /// [`add_gram`] of f16 or bf16 bytes: AVX-512 with F16C (f16) or AVX2 (bf16).
    pub(super) fn add_gram_raw(g: &mut [f64], raws: &[&[u8]], dtype: Dtype) -> bool {
        let Some(bytes) = fits(g, raws.iter().map(|v| v.len())) else {
            return false;
        };
        if bytes % 2 != 0 || !is_x86_feature_detected!("avx512f") {
            return false;
        }
        let ptrs: Vec<*const u8> = raws.iter().map(|v| v.as_ptr()).collect();
        let n = bytes / 2;
        let body = n / 8 * 8;
        let mut acc = [[0f64; 8]; PAIRS];
        match dtype {
            Dtype::F16 if is_x86_feature_detected!("f16c") => {
                // SAFETY: AVX-512 F and F16C are present; every vector holds `n ≥ body` f16.
                unsafe {
                    by_count(
                        &ptrs,
                        body,
                        &mut acc,
                        sums512_f16::<1>,
                        sums512_f16::<2>,
                        sums512_f16::<3>,
                        sums512_f16::<4>,
                    )
                }
            }
            Dtype::BF16 if is_x86_feature_detected!("avx2") => {
                // SAFETY: AVX-512 F and AVX2 are present; every vector holds `n ≥ body` bf16.
                unsafe {
                    by_count(
                        &ptrs,
                        body,
                        &mut acc,
                        sums512_bf16::<1>,
                        sums512_bf16::<2>,
                        sums512_bf16::<3>,
                        sums512_bf16::<4>,
                    )
                }
            }
            _ => return false,
        }
        // The tails (fewer than eight values each), decoded exactly.
        let tails: Vec<Vec<f32>> = raws
            .iter()
            .map(|r| {
                r[2 * body..]
                    .chunks_exact(2)
                    .map(|b| {
                        let bits = u16::from_le_bytes([b[0], b[1]]);
                        match dtype {
                            Dtype::F16 => half::f16::from_bits(bits).to_f32(),
                            _ => half::bf16::from_bits(bits).to_f32(),
                        }
                    })
                    .collect()
            })
            .collect();
        let tails: Vec<&[f32]> = tails.iter().map(Vec::as_slice).collect();
        add_sums(g, &acc, &tails, 0);
        true
    }

    /// The common length of 1 to [`MAX`] vectors that `g` has room for.
    fn fits(g: &[f64], mut lens: impl ExactSizeIterator<Item = usize>) -> Option<usize> {
        let k = lens.len();
        let n = lens.next()?;
        (k <= MAX && g.len() >= k * k && lens.all(|l| l == n)).then_some(n)
    }

    /// A kernel over `K` vectors' `body` values (a multiple of 8) into `acc`.
    type Kernel<const K: usize> = unsafe fn([*const u8; K], usize, &mut Acc);

    /// Runs the kernel for `ptrs.len()` (1 to [`MAX`]) vectors.
    ///
    /// # Safety
    /// As the kernels'.
    #[allow(clippy::too_many_arguments)]
    unsafe fn by_count(
        ptrs: &[*const u8],
        body: usize,
        acc: &mut Acc,
        k1: Kernel<1>,
        k2: Kernel<2>,
        k3: Kernel<3>,
        k4: Kernel<4>,
    ) {
        let at = |a: usize| ptrs[a];
        // SAFETY: the caller's.
        unsafe {
            match ptrs.len() {
                1 => k1([at(0)], body, acc),
                2 => k2([at(0), at(1)], body, acc),
                3 => k3([at(0), at(1), at(2)], body, acc),
                _ => k4([at(0), at(1), at(2), at(3)], body, acc),
            }
        }
    }

    /// Each pair's eight running sums finished with its tail (values `from..` of `tails`) and
    /// added to `g`.
    fn add_sums(g: &mut [f64], acc: &Acc, tails: &[&[f32]], from: usize) {
        let k = tails.len();
        let mut p = 0;
        for a in 0..k {
            for b in a..k {
                g[a * k + b] += finish(&acc[p], &tails[a][from..], &tails[b][from..]);
                p += 1;
            }
        }
    }

    /// The running sums of every pair `a ≤ b` of `K` vectors over their first `body` values (a
    /// multiple of 8), pair by pair in `acc`, eight lanes in one register.
    ///
    /// # Safety
    /// The caller has AVX-512 F and `T`'s features; each vector holds `body` values.
    #[inline(always)]
    unsafe fn sums512_of<const K: usize, T: Load8>(
        ptrs: [*const u8; K],
        body: usize,
        acc: &mut Acc,
    ) {
        let mut sums = [_mm512_setzero_pd(); PAIRS];
        let mut i = 0;
        while i < body {
            // SAFETY: `i + 8 ≤ body`.
            let v: [__m512d; K] =
                std::array::from_fn(|a| unsafe { _mm512_cvtps_pd(T::load8(ptrs[a], i)) });
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

    #[target_feature(enable = "avx512f")]
    unsafe fn sums512<const K: usize, T: Load8>(ptrs: [*const u8; K], body: usize, acc: &mut Acc) {
        // SAFETY: the caller's; F32s needs nothing more.
        unsafe { sums512_of::<K, T>(ptrs, body, acc) }
    }

    #[target_feature(enable = "avx512f,f16c")]
    unsafe fn sums512_f16<const K: usize>(ptrs: [*const u8; K], body: usize, acc: &mut Acc) {
        // SAFETY: the caller's.
        unsafe { sums512_of::<K, F16s>(ptrs, body, acc) }
    }

    #[target_feature(enable = "avx512f,avx2")]
    unsafe fn sums512_bf16<const K: usize>(ptrs: [*const u8; K], body: usize, acc: &mut Acc) {
        // SAFETY: the caller's.
        unsafe { sums512_of::<K, Bf16s>(ptrs, body, acc) }
    }

    /// [`sums512_of`] for f32 with each pair's eight lanes in two AVX registers.
    #[target_feature(enable = "avx")]
    unsafe fn sums256<const K: usize>(ptrs: [*const u8; K], body: usize, acc: &mut Acc) {
        let mut lo = [_mm256_setzero_pd(); PAIRS];
        let mut hi = [_mm256_setzero_pd(); PAIRS];
        let mut i = 0;
        while i < body {
            // SAFETY: `i + 8 ≤ body ≤` each vector's length.
            let v: [(__m256d, __m256d); K] = std::array::from_fn(|a| unsafe {
                let p: *const f32 = ptrs[a].cast();
                (
                    _mm256_cvtps_pd(_mm_loadu_ps(p.add(i))),
                    _mm256_cvtps_pd(_mm_loadu_ps(p.add(i + 4))),
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

        /// `base` plus the portable dot products of the upper triangle.
        fn portable(vals: &[&[f32]]) -> Vec<u64> {
            let k = vals.len();
            let mut g = vec![0.25f64; k * k];
            for a in 0..k {
                for b in a..k {
                    g[a * k + b] += dot(vals[a], vals[b]);
                }
            }
            g.iter().map(|x| x.to_bits()).collect()
        }

        fn bits(g: &[f64]) -> Vec<u64> {
            g.iter().map(|x| x.to_bits()).collect()
        }

        /// Each kernel gives the portable dot products bit for bit, for every vector count
        /// it takes and lengths with and without a tail, from f32 and from f16/bf16 bytes.
        #[test]
        fn kernels_equal_the_portable_dot_products() {
            for n in [0, 1, 7, 8, 9, 64, 1000, 4099] {
                for k in 1..=MAX {
                    let vecs: Vec<Vec<f32>> = (0..k).map(|a| values(n, 7 + a as u32)).collect();
                    let vals: Vec<&[f32]> = vecs.iter().map(Vec::as_slice).collect();
                    let want = portable(&vals);
                    let ptrs: Vec<*const u8> = vals.iter().map(|v| v.as_ptr().cast()).collect();
                    let body = n / 8 * 8;
                    let mut runs: Vec<Kernels> = Vec::new();
                    if is_x86_feature_detected!("avx") {
                        runs.push((
                            "avx",
                            sums256::<1>,
                            sums256::<2>,
                            sums256::<3>,
                            sums256::<4>,
                        ));
                    }
                    if is_x86_feature_detected!("avx512f") {
                        runs.push((
                            "avx512f",
                            sums512::<1, F32s>,
                            sums512::<2, F32s>,
                            sums512::<3, F32s>,
                            sums512::<4, F32s>,
                        ));
                    }
                    for (name, k1, k2, k3, k4) in runs {
                        let mut acc = [[0f64; 8]; PAIRS];
                        // SAFETY: the feature is present; each vector holds n ≥ body values.
                        unsafe { by_count(&ptrs, body, &mut acc, k1, k2, k3, k4) };
                        let mut got = vec![0.25f64; k * k];
                        add_sums(&mut got, &acc, &vals, body);
                        assert_eq!(bits(&got), want, "{name}, {k} vectors of {n}");
                    }
                    let mut dispatched = vec![0.25f64; k * k];
                    if add_gram(&mut dispatched, &vals) {
                        assert_eq!(bits(&dispatched), want, "dispatched, {k} vectors of {n}");
                    } else {
                        assert!(!is_x86_feature_detected!("avx"));
                    }
                    // The same values as f16 and bf16 bytes, against their exact decodes.
                    for dtype in [Dtype::F16, Dtype::BF16] {
                        let raws: Vec<Vec<u8>> = vecs
                            .iter()
                            .map(|v| {
                                v.iter()
                                    .flat_map(|&x| match dtype {
                                        Dtype::F16 => half::f16::from_f32(x).to_le_bytes(),
                                        _ => half::bf16::from_f32(x).to_le_bytes(),
                                    })
                                    .collect()
                            })
                            .collect();
                        let decoded: Vec<Vec<f32>> = raws
                            .iter()
                            .map(|r| {
                                r.chunks_exact(2)
                                    .map(|b| {
                                        let h = u16::from_le_bytes([b[0], b[1]]);
                                        match dtype {
                                            Dtype::F16 => half::f16::from_bits(h).to_f32(),
                                            _ => half::bf16::from_bits(h).to_f32(),
                                        }
                                    })
                                    .collect()
                            })
                            .collect();
                        let dv: Vec<&[f32]> = decoded.iter().map(Vec::as_slice).collect();
                        let rv: Vec<&[u8]> = raws.iter().map(Vec::as_slice).collect();
                        let mut got = vec![0.25f64; k * k];
                        if add_gram_raw(&mut got, &rv, dtype) {
                            assert_eq!(bits(&got), portable(&dv), "{dtype:?}, {k} vectors of {n}");
                        } else {
                            assert!(!is_x86_feature_detected!("avx512f"));
                        }
                    }
                }
            }
            // Five vectors, vectors of different lengths, or f32 bytes take the other path.
            let v = values(16, 1);
            assert!(!add_gram(&mut [0.0; 25], &[&v, &v, &v, &v, &v]));
            assert!(!add_gram(&mut [0.0; 4], &[&v, &v[..8]]));
            assert!(!add_gram_raw(&mut [0.0; 1], &[&[0u8; 32]], Dtype::F32));
        }

        type Kernels = (&'static str, Kernel<1>, Kernel<2>, Kernel<3>, Kernel<4>);
    }
}
