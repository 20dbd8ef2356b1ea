//! The lane searches against the one-group searches of `search.rs`, on groups of every kind.

use rand::{Rng, SeedableRng};

use super::super::kquants::{Q2_K, Q4_K, Q5_K};
use super::super::search;
use super::*;

/// Groups of every kind the searches meet: normal, one-signed, constant, zero, tiny, huge,
/// ties, sparse, NaN, a NaN with a payload (whose bits ggml's rounding trick reads), and
/// values straddling 2^22 times the scale, where that trick stops rounding.
fn groups<const N: usize>(rng: &mut rand::rngs::StdRng, count: usize) -> Vec<[f32; N]> {
    (0..count)
        .map(|g| {
            let scale = 10f32.powi(rng.random_range(-12..8));
            std::array::from_fn(|i| match g % 11 {
                0 => rng.random_range(-1.0f32..1.0) * scale,
                1 => rng.random_range(0.1f32..1.0) * scale,
                2 => -0.75,
                3 => 0.0,
                4 => rng.random_range(-1.0f32..1.0) * 1e-30,
                5 => (i as f32 - 8.0) * 0.125,
                6 if rng.random_bool(0.1) => rng.random_range(-4.0f32..4.0),
                6 => 0.0,
                7 if i == 3 => f32::NAN,
                9 if i == 5 => f32::from_bits(0x7fc0_0003 | (rng.random_range(0..2) << 31)),
                10 if i == 0 => 1e-3,
                10 if i == 1 => -1e-3,
                10 => rng.random_range(-1.0f32..1.0) * 1e-10,
                _ => rng.random_range(-1.0f32..1.0) * scale * (i as f32),
            })
        })
        .collect()
}

/// Lane `j` of `fits` is the scalar search of group `g` (weights `wj`): the same scale and
/// min, and the codes its [`Fit::code`] makes are the scalar search's.
fn assert_fit<const N: usize>(fit: &Fit, p: Qkx2, g: &[f32; N], wj: &[f32; N], at: &str) {
    let mut l = [0u8; N];
    let (s, m) = search::make_qkx2_quants(p, g, wj, &mut l);
    assert_eq!(
        (fit.scale.to_bits(), fit.min.to_bits()),
        (s.to_bits(), m.to_bits()),
        "{at}: {g:?}"
    );
    let codes = g.map(|v| fit.code(v, p.nmax));
    assert_eq!(codes, l, "{at}: {g:?}");
}

/// Lane `j` of Q6_K's (`qx`) and Q3_K's (`q3`) searches, scales `sa`/`sb` and codes `a`/`b`,
/// is the one-group search of group `g`.
fn assert_qx_q3<const L: usize>(
    j: usize,
    g: &[f32; 16],
    (sa, a): (&[f32; L], &[[i8; L]; 16]),
    (sb, b): (&[f32; L], &[[i8; L]; 16]),
) {
    let (mut la, mut lb) = ([0i8; 16], [0i8; 16]);
    assert_eq!(
        sa[j].to_bits(),
        search::make_qx_quants(32, g, &mut la).to_bits(),
        "{g:?}"
    );
    assert_eq!(
        sb[j].to_bits(),
        search::make_q3_quants(4, g, &mut lb).to_bits(),
        "{g:?}"
    );
    assert!(
        (0..16).all(|i| a[i][j] == la[i] && b[i][j] == lb[i]),
        "{g:?}"
    );
}

#[test]
fn qkx2_lanes_equal_the_scalar_search() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for chunk in groups::<32>(&mut rng, 8 * 40).chunks_exact(8) {
        let mut x = [[0f32; 8]; 32];
        let mut w = [[0f32; 8]; 32];
        for (j, g) in chunk.iter().enumerate() {
            for i in 0..32 {
                x[i][j] = g[i];
                w[i][j] = g[i].abs() + 0.5;
            }
        }
        for (params, mad) in [(Q4_K, false), (Q5_K, false), (Q2_K, true)] {
            let fits = if mad {
                qkx2::<32, 8, true>(params, &x, &w)
            } else {
                qkx2::<32, 8, false>(params, &x, &w)
            };
            for (j, g) in chunk.iter().enumerate() {
                let wj: [f32; 32] = std::array::from_fn(|i| w[i][j]);
                assert_fit(&fits[j], params, g, &wj, "portable");
            }
        }
    }
}

#[test]
fn qx_and_q3_lanes_equal_the_scalar_searches() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    for chunk in groups::<16>(&mut rng, 16 * 30).chunks_exact(16) {
        let mut x = [[0f32; 16]; 16];
        for (j, g) in chunk.iter().enumerate() {
            for i in 0..16 {
                x[i][j] = g[i];
            }
        }
        let (mut a, mut b) = ([[0i8; 16]; 16], [[0i8; 16]; 16]);
        let sa = qx(32, &x, &mut a);
        let sb = q3(4, &x, &mut b);
        for (j, g) in chunk.iter().enumerate() {
            assert_qx_q3(j, g, (&sa, &a), (&sb, &b));
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn sixteen_lane_searches_equal_the_scalar_search() {
    /// Every lane of `S::qx_16` (Q6_K's search), `S::q3_16` and `S::q3_64` (Q3_K's, one and
    /// four super-blocks) against the scalar ones.
    fn check_qx_q3<S: Searches>(rng: &mut rand::rngs::StdRng) {
        fn lanes<const L: usize>(
            rng: &mut rand::rngs::StdRng,
            scalar: fn(&[f32; 16], &mut [i8; 16]) -> f32,
            search: impl Fn(&[[f32; L]; 16], &mut [[i8; L]; 16]) -> [f32; L],
        ) {
            for chunk in groups::<16>(rng, L * 8).chunks_exact(L) {
                let x: [[f32; L]; 16] =
                    std::array::from_fn(|i| std::array::from_fn(|j| chunk[j][i]));
                let mut out = [[0i8; L]; 16];
                let scale = search(&x, &mut out);
                for (j, g) in chunk.iter().enumerate() {
                    let mut l = [0i8; 16];
                    let want = scalar(g, &mut l);
                    assert_eq!(
                        scale[j].to_bits(),
                        want.to_bits(),
                        "{L} lanes, lane {j}: {g:?}"
                    );
                    assert!(
                        (0..16).all(|i| out[i][j] == l[i]),
                        "{L} lanes, lane {j}: {g:?}"
                    );
                }
            }
        }
        fn qx(g: &[f32; 16], l: &mut [i8; 16]) -> f32 {
            search::make_qx_quants(32, g, l)
        }
        fn q3(g: &[f32; 16], l: &mut [i8; 16]) -> f32 {
            search::make_q3_quants(4, g, l)
        }
        // SAFETY (all three): the caller checked `S`'s features.
        lanes::<16>(rng, qx, |x, out| unsafe { S::qx_16(32, x, out) });
        lanes::<16>(rng, q3, |x, out| unsafe { S::q3_16(4, x, out) });
        lanes::<64>(rng, q3, |x, out| unsafe { S::q3_64(4, x, out) });
    }
    /// Every lane of `S::qkx2_16`, `S::qkx2_32` and `S::qkx2_64` against the scalar search, on groups
    /// of `N`.
    fn check<S: Searches, const N: usize>(rng: &mut rand::rngs::StdRng) {
        check_lanes::<S, N, 16>(rng, |p, x, w, mad| unsafe {
            // SAFETY: the caller checked `S`'s features.
            if mad {
                S::qkx2_16::<N, true>(p, x, w)
            } else {
                S::qkx2_16::<N, false>(p, x, w)
            }
        });
        check_lanes::<S, N, 32>(rng, |p, x, w, mad| unsafe {
            // SAFETY: as above.
            if mad {
                S::qkx2_32::<N, true>(p, x, w)
            } else {
                S::qkx2_32::<N, false>(p, x, w)
            }
        });
        check_lanes::<S, N, 64>(rng, |p, x, w, mad| unsafe {
            // SAFETY: as above.
            if mad {
                S::qkx2_64::<N, true>(p, x, w)
            } else {
                S::qkx2_64::<N, false>(p, x, w)
            }
        });
    }
    /// Every lane of `search` (`L` lanes) against the scalar search, on groups of `N`.
    fn check_lanes<S: Searches, const N: usize, const L: usize>(
        rng: &mut rand::rngs::StdRng,
        search: impl Fn(Qkx2, &[[f32; L]; N], &[[f32; L]; N], bool) -> [Fit; L],
    ) {
        for chunk in groups::<N>(rng, L * 12).chunks_exact(L) {
            let x: [[f32; L]; N] = std::array::from_fn(|i| std::array::from_fn(|j| chunk[j][i]));
            let w = x.map(|row| row.map(|v| v.abs() + 0.5));
            for params in [Q4_K, Q5_K, Q2_K] {
                let fits = search(params, &x, &w, params.use_mad);
                for (j, g) in chunk.iter().enumerate() {
                    let wj: [f32; N] = std::array::from_fn(|i| w[i][j]);
                    assert_fit(&fits[j], params, g, &wj, &format!("{L} lanes, lane {j}"));
                }
            }
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    // The default: eight-lane searches.
    check::<Portable, 32>(&mut rng);
    check::<Portable, 16>(&mut rng);
    check_qx_q3::<Portable>(&mut rng);
    if !(std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx2"))
    {
        eprintln!("skipped the AVX-512 half: this CPU has no AVX-512F");
        return;
    }
    check::<super::super::avx512::Avx512, 32>(&mut rng);
    check::<super::super::avx512::Avx512, 16>(&mut rng);
    check_qx_q3::<super::super::avx512::Avx512>(&mut rng);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn shuffled_transposes_equal_the_portable_one() {
    fn check<S: Searches, const N: usize, const L: usize>(x: &[f32]) {
        // SAFETY: the caller checked `S`'s features.
        let got = unsafe { S::transpose_lanes::<N, L>(x) };
        assert_eq!(got, transpose::<N, L>(x), "{N} × {L}");
    }
    if !std::arch::is_x86_feature_detected!("avx512f") {
        eprintln!("skipped: this CPU has no AVX-512F");
        return;
    }
    use super::super::avx512::Avx512;
    // Distinct values (and a longer slice than needed, as the encoders pass).
    let x: Vec<f32> = (0..64 * 32 + 7).map(|i| i as f32 * 0.5 - 3.0).collect();
    check::<Avx512, 32, 64>(&x);
    check::<Avx512, 32, 32>(&x);
    check::<Avx512, 16, 16>(&x[5..]);
    check::<Avx512, 32, 8>(&x);
    check::<Avx512, 16, 8>(&x);
}

#[test]
fn avx2_searches_equal_the_scalar_searches() {
    use super::super::avx2::Avx2;
    if !std::arch::is_x86_feature_detected!("avx2") {
        eprintln!("skipped: this CPU has no AVX2");
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for chunk in groups::<32>(&mut rng, 8 * 40).chunks_exact(8) {
        let x: [[f32; 8]; 32] = std::array::from_fn(|i| std::array::from_fn(|j| chunk[j][i]));
        let w = x.map(|row| row.map(|v| v.abs() + 0.5));
        for params in [Q4_K, Q5_K, Q2_K] {
            // SAFETY: the CPU has AVX2 (checked above).
            let fits = unsafe {
                if params.use_mad {
                    Avx2::qkx2::<32, true>(params, &x, &w)
                } else {
                    Avx2::qkx2::<32, false>(params, &x, &w)
                }
            };
            for (j, g) in chunk.iter().enumerate() {
                let wj: [f32; 32] = std::array::from_fn(|i| w[i][j]);
                assert_fit(&fits[j], params, g, &wj, "AVX2");
            }
        }
    }
    for chunk in groups::<16>(&mut rng, 8 * 60).chunks_exact(8) {
        let x: [[f32; 8]; 16] = std::array::from_fn(|i| std::array::from_fn(|j| chunk[j][i]));
        let (mut a, mut b) = ([[0i8; 8]; 16], [[0i8; 8]; 16]);
        // SAFETY: the CPU has AVX2 (checked above).
        let (sa, sb) = unsafe { (Avx2::qx(32, &x, &mut a), Avx2::q3(4, &x, &mut b)) };
        for (j, g) in chunk.iter().enumerate() {
            assert_qx_q3(j, g, (&sa, &a), (&sb, &b));
        }
    }
}
