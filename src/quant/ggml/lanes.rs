//! The K-quant scale searches of [`super::search`] run on the sub-blocks of a super-block at
//! once: lane `j` is sub-block `j` (`x[i][j]` is its value `i`), and every lane performs exactly
//! the scalar search's operations in the scalar search's order, so each lane's result is the
//! scalar result bit for bit. Branches on data become per-lane selects; a lane the scalar search
//! would have left early (a group of zeros, a constant group) computes on and is overwritten with
//! the early result at the end. The loops over lanes are what the compiler vectorises (8 or 16
//! f32 lanes: one or two AVX2 registers), which makes the searches several times faster than one
//! sub-block at a time, whose sums are chains of dependent additions.

use super::search::{nearest_int, Fit, Qkx2, GROUP_MAX_EPS};

/// Where the searches of eight sub-blocks at once run: [`Portable`] everywhere, or the AVX2
/// intrinsics of [`super::avx2`]; both give the scalar searches' bits.
pub(super) trait Searches {
    /// [`qkx2`] of eight groups.
    ///
    /// # Safety
    /// The CPU has the implementation's features.
    unsafe fn qkx2<const N: usize, const MAD: bool>(
        p: Qkx2,
        x: &[[f32; 8]; N],
        w: &[[f32; 8]; N],
    ) -> [Fit; 8];

    /// Whether [`Searches::qkx2_16`], [`Searches::qkx2_32`] and [`Searches::qkx2_64`] run in
    /// wide registers (the K-quant encoders then search eight super-blocks of Q4_K/Q5_K, or two
    /// super-blocks' worth of Q2_K sub-blocks, at once).
    const WIDE: bool = false;

    /// [`qkx2`] of sixteen groups: eight-group searches, unless the implementation has wider
    /// registers.
    ///
    /// # Safety
    /// The CPU has the implementation's features.
    #[inline(always)]
    unsafe fn qkx2_16<const N: usize, const MAD: bool>(
        p: Qkx2,
        x: &[[f32; 16]; N],
        w: &[[f32; 16]; N],
    ) -> [Fit; 16] {
        // SAFETY: the caller guarantees the implementation's features.
        unsafe { by_eight_lanes::<Self, N, 16, MAD>(p, x, w) }
    }

    /// [`qkx2`] of thirty-two groups: eight-group searches, unless the implementation has wider
    /// registers (two AVX-512 registers side by side, whose additions interleave).
    ///
    /// # Safety
    /// The CPU has the implementation's features.
    #[inline(always)]
    unsafe fn qkx2_32<const N: usize, const MAD: bool>(
        p: Qkx2,
        x: &[[f32; 32]; N],
        w: &[[f32; 32]; N],
    ) -> [Fit; 32] {
        // SAFETY: the caller guarantees the implementation's features.
        unsafe { by_eight_lanes::<Self, N, 32, MAD>(p, x, w) }
    }

    /// [`qkx2`] of sixty-four groups: eight-group searches, unless the implementation has wider
    /// registers (four AVX-512 registers side by side).
    ///
    /// # Safety
    /// The CPU has the implementation's features.
    #[inline(always)]
    unsafe fn qkx2_64<const N: usize, const MAD: bool>(
        p: Qkx2,
        x: &[[f32; 64]; N],
        w: &[[f32; 64]; N],
    ) -> [Fit; 64] {
        // SAFETY: the caller guarantees the implementation's features.
        unsafe { by_eight_lanes::<Self, N, 64, MAD>(p, x, w) }
    }

    /// Whole Q8_0 blocks of `values` into `codes` (the caller checks the lengths): one block at a
    /// time, unless the implementation has a vector form (the same bytes).
    ///
    /// # Safety
    /// The CPU has the implementation's features.
    #[inline(always)]
    unsafe fn encode_q8_0_all(values: &[f32], codes: &mut [u8]) {
        let blocks = codes.as_chunks_mut::<34>().0;
        for (x, b) in values.as_chunks::<32>().0.iter().zip(blocks) {
            super::legacy::encode_q8_0(x, b);
        }
    }

    /// [`transpose`]: in vector shuffles where the implementation has them (the same values).
    ///
    /// # Safety
    /// The CPU has the implementation's features.
    #[inline(always)]
    unsafe fn transpose_lanes<const N: usize, const L: usize>(x: &[f32]) -> [[f32; L]; N] {
        transpose(x)
    }

    /// [`qx`] of eight groups.
    ///
    /// # Safety
    /// The CPU has the implementation's features.
    unsafe fn qx(nmax: i32, x: &[[f32; 8]; 16], out: &mut [[i8; 8]; 16]) -> [f32; 8];

    /// [`qx`] of sixteen groups (a super-block of Q6_K): two eight-group searches, unless the
    /// implementation has wider registers.
    ///
    /// # Safety
    /// The CPU has the implementation's features.
    #[inline(always)]
    unsafe fn qx_16(nmax: i32, x: &[[f32; 16]; 16], out: &mut [[i8; 16]; 16]) -> [f32; 16] {
        let part = |h: usize| x.map(|r| std::array::from_fn(|j| r[8 * h + j]));
        let mut scale = [0f32; 16];
        for h in 0..2 {
            let mut o = [[0i8; 8]; 16];
            // SAFETY: the caller guarantees the implementation's features.
            let s = unsafe { Self::qx(nmax, &part(h), &mut o) };
            scale[8 * h..8 * h + 8].copy_from_slice(&s);
            for (row, o) in out.iter_mut().zip(&o) {
                row[8 * h..8 * h + 8].copy_from_slice(o);
            }
        }
        scale
    }

    /// [`q3`] of eight groups.
    ///
    /// # Safety
    /// The CPU has the implementation's features.
    unsafe fn q3(nmax: i32, x: &[[f32; 8]; 16], out: &mut [[i8; 8]; 16]) -> [f32; 8];
}

/// The searches in plain Rust (no CPU feature needed).
pub(super) struct Portable;

impl Searches for Portable {
    #[inline(always)]
    unsafe fn qkx2<const N: usize, const MAD: bool>(
        p: Qkx2,
        x: &[[f32; 8]; N],
        w: &[[f32; 8]; N],
    ) -> [Fit; 8] {
        qkx2::<N, 8, MAD>(p, x, w)
    }

    #[inline(always)]
    unsafe fn qx(nmax: i32, x: &[[f32; 8]; 16], out: &mut [[i8; 8]; 16]) -> [f32; 8] {
        qx(nmax, x, out)
    }

    #[inline(always)]
    unsafe fn q3(nmax: i32, x: &[[f32; 8]; 16], out: &mut [[i8; 8]; 16]) -> [f32; 8] {
        q3(nmax, x, out)
    }
}

/// `S`'s eight-lane [`Searches::qkx2`] on `L` groups (a multiple of 8), eight at a time.
///
/// # Safety
/// The CPU has `S`'s features.
#[inline(always)]
unsafe fn by_eight_lanes<S: Searches + ?Sized, const N: usize, const L: usize, const MAD: bool>(
    p: Qkx2,
    x: &[[f32; L]; N],
    w: &[[f32; L]; N],
) -> [Fit; L] {
    let part = |a: &[[f32; L]; N], h: usize| a.map(|r| std::array::from_fn(|j| r[8 * h + j]));
    let mut fits = [Fit::default(); L];
    for h in 0..L / 8 {
        // SAFETY: the caller guarantees `S`'s features.
        let f = unsafe { S::qkx2::<N, MAD>(p, &part(x, h), &part(w, h)) };
        fits[8 * h..8 * h + 8].copy_from_slice(&f);
    }
    fits
}

/// `make_qkx2_quants` on `L` groups of `N` values: each group's `(scale, min)` as
/// [`super::search::make_qkx2_quants`] returns them, and how its codes are made. `MAD`: absolute
/// instead of squared error.
#[inline(always)]
pub(super) fn qkx2<const N: usize, const L: usize, const MAD: bool>(
    p: Qkx2,
    x: &[[f32; L]; N],
    w: &[[f32; L]; N],
) -> [Fit; L] {
    let error = |d: f32| if MAD { d.abs() } else { d * d };
    let (mut min, mut max, mut sum_w) = (x[0], x[0], w[0]);
    let mut sum_x = [0f32; L];
    for j in 0..L {
        sum_x[j] = sum_w[j] * x[0][j];
    }
    for i in 1..N {
        for j in 0..L {
            let v = x[i][j];
            min[j] = if v < min[j] { v } else { min[j] };
            max[j] = if v > max[j] { v } else { max[j] };
            sum_w[j] += w[i][j];
            sum_x[j] += w[i][j] * v;
        }
    }
    let mut flat = [false; L];
    for j in 0..L {
        min[j] = if min[j] > 0.0 { 0.0 } else { min[j] };
        flat[j] = max[j] == min[j];
    }
    let flat_min = min;
    let nmax = p.nmax as f32;
    let (mut iscale, mut scale, mut best) = ([0f32; L], [0f32; L], [0f32; L]);
    for j in 0..L {
        iscale[j] = nmax / (max[j] - min[j]);
        scale[j] = 1.0 / iscale[j];
    }
    for i in 0..N {
        for j in 0..L {
            let l = nearest_int(iscale[j] * (x[i][j] - min[j]))
                .max(0)
                .min(p.nmax);
            best[j] += w[i][j] * error(scale[j] * l as f32 + min[j] - x[i][j]);
        }
    }
    // The pass whose codes win, per group: its `iscale` and the `min` it subtracted.
    let (mut best_iscale, mut best_from) = (iscale, min);
    let mut aux = [[0u8; L]; N];
    for is in 0..=p.nstep {
        let top = p.rmin + p.rdelta * is as f32 + nmax;
        let (mut sum_l, mut sum_l2, mut sum_xl) = ([0f32; L], [0f32; L], [0f32; L]);
        for j in 0..L {
            iscale[j] = top / (max[j] - min[j]);
        }
        for i in 0..N {
            let mut l = [0f32; L];
            for j in 0..L {
                let q = nearest_int(iscale[j] * (x[i][j] - min[j]))
                    .max(0)
                    .min(p.nmax);
                aux[i][j] = q as u8;
                l[j] = q as f32;
            }
            for j in 0..L {
                let wl = w[i][j] * l[j];
                sum_l[j] += wl;
                sum_l2[j] += wl * l[j];
                sum_xl[j] += wl * x[i][j];
            }
        }
        let (mut this_scale, mut this_min, mut fit) = ([0f32; L], [0f32; L], [false; L]);
        for j in 0..L {
            let d = sum_w[j] * sum_l2[j] - sum_l[j] * sum_l[j];
            let s = (sum_w[j] * sum_xl[j] - sum_x[j] * sum_l[j]) / d;
            let m = (sum_l2[j] * sum_x[j] - sum_l[j] * sum_xl[j]) / d;
            let clip = m > 0.0;
            this_min[j] = if clip { 0.0 } else { m };
            this_scale[j] = if clip { sum_xl[j] / sum_l2[j] } else { s };
            fit[j] = d > 0.0;
        }
        let mut cur = [0f32; L];
        for i in 0..N {
            for j in 0..L {
                let diff = this_scale[j] * aux[i][j] as f32 + this_min[j] - x[i][j];
                cur[j] += w[i][j] * error(diff);
            }
        }
        for j in 0..L {
            let take = fit[j] && cur[j] < best[j];
            best[j] = if take { cur[j] } else { best[j] };
            scale[j] = if take { this_scale[j] } else { scale[j] };
            best_iscale[j] = if take { iscale[j] } else { best_iscale[j] };
            best_from[j] = if take { min[j] } else { best_from[j] };
            min[j] = if take { this_min[j] } else { min[j] };
        }
    }
    std::array::from_fn(|j| Fit {
        scale: if flat[j] { 0.0 } else { scale[j] },
        min: if flat[j] { -flat_min[j] } else { -min[j] },
        iscale: best_iscale[j],
        from: best_from[j],
        flat: flat[j],
    })
}

/// The value of largest magnitude per lane (the first on ties) and that magnitude.
#[inline(always)]
fn signed_max<const L: usize>(x: &[[f32; L]; 16]) -> ([f32; L], [f32; L]) {
    let (mut max, mut amax) = ([0f32; L], [0f32; L]);
    for row in x {
        for j in 0..L {
            let ax = row[j].abs();
            let take = ax > amax[j];
            amax[j] = if take { ax } else { amax[j] };
            max[j] = if take { row[j] } else { max[j] };
        }
    }
    (max, amax)
}

/// `make_qx_quants(16, nmax, x, L, 1, NULL)` on `L` groups (see
/// [`super::search::make_qx_quants`]).
#[inline(always)]
pub(super) fn qx<const L: usize>(
    nmax: i32,
    x: &[[f32; L]; 16],
    out: &mut [[i8; L]; 16],
) -> [f32; L] {
    let (max, amax) = signed_max(x);
    let mut aux = [[0i8; L]; 16];
    let pass = |iscale: &[f32; L], aux: &mut [[i8; L]; 16]| {
        let (mut sumlx, mut suml2) = ([0f32; L], [0f32; L]);
        for i in 0..16 {
            for j in 0..L {
                let v = x[i][j];
                let l = nearest_int(iscale[j] * v).max(-nmax).min(nmax - 1);
                aux[i][j] = (l + nmax) as i8;
                let (w, l) = (v * v, l as f32);
                sumlx[j] += w * v * l;
                suml2[j] += w * l * l;
            }
        }
        (sumlx, suml2)
    };
    let mut iscale = [0f32; L];
    for j in 0..L {
        iscale[j] = -(nmax as f32) / max[j];
    }
    let (sumlx, suml2) = pass(&iscale, out);
    let (mut scale, mut best) = ([0f32; L], [0f32; L]);
    for j in 0..L {
        scale[j] = if suml2[j] != 0.0 {
            sumlx[j] / suml2[j]
        } else {
            0.0
        };
        best[j] = scale[j] * sumlx[j];
    }
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        for j in 0..L {
            iscale[j] = -(nmax as f32 + 0.1 * is as f32) / max[j];
        }
        let (sumlx, suml2) = pass(&iscale, &mut aux);
        let mut take = [false; L];
        for j in 0..L {
            take[j] = suml2[j] > 0.0 && sumlx[j] * sumlx[j] > best[j] * suml2[j];
            scale[j] = if take[j] {
                sumlx[j] / suml2[j]
            } else {
                scale[j]
            };
            best[j] = if take[j] {
                scale[j] * sumlx[j]
            } else {
                best[j]
            };
        }
        if take.iter().any(|&t| t) {
            for i in 0..16 {
                for j in 0..L {
                    out[i][j] = if take[j] { aux[i][j] } else { out[i][j] };
                }
            }
        }
    }
    finish_zero_groups(&amax, &mut scale, out);
    scale
}

/// Groups below ggml's all-zero threshold: scale 0 and codes 0, as the scalar searches return
/// them before searching.
#[inline(always)]
fn finish_zero_groups<const L: usize>(
    amax: &[f32; L],
    scale: &mut [f32; L],
    out: &mut [[i8; L]; 16],
) {
    let mut zero = [false; L];
    for j in 0..L {
        zero[j] = amax[j] < GROUP_MAX_EPS;
        scale[j] = if zero[j] { 0.0 } else { scale[j] };
    }
    for row in out.iter_mut() {
        for j in 0..L {
            row[j] = if zero[j] { 0 } else { row[j] };
        }
    }
}

/// `make_q3_quants(16, nmax, x, L, true)` on `L` groups (see
/// [`super::search::make_q3_quants`]). A lane whose pass changed nothing would change nothing in
/// another pass either (its state is the same), so lanes run passes until none changes (at most
/// five), as the scalar search stops on its own.
#[inline(always)]
pub(super) fn q3<const L: usize>(
    nmax: i32,
    x: &[[f32; L]; 16],
    out: &mut [[i8; L]; 16],
) -> [f32; L] {
    let (max, amax) = signed_max(x);
    let (mut sumlx, mut suml2) = ([0f32; L], [0f32; L]);
    for i in 0..16 {
        for j in 0..L {
            let v = x[i][j];
            let iscale = -(nmax as f32) / max[j];
            let l = nearest_int(iscale * v).max(-nmax).min(nmax - 1);
            out[i][j] = l as i8;
            let (w, l) = (v * v, l as f32);
            sumlx[j] += w * v * l;
            suml2[j] += w * l * l;
        }
    }
    for _ in 0..5 {
        let mut changed = false;
        for i in 0..16 {
            for j in 0..L {
                let v = x[i][j];
                let w = v * v;
                let l = out[i][j] as f32;
                let slx = sumlx[j] - w * v * l;
                let sl2 = suml2[j] - w * l * l;
                let new_l = nearest_int(v * sl2 / slx).max(-nmax).min(nmax - 1);
                let nl = new_l as f32;
                let slx2 = slx + w * v * nl;
                let sl22 = sl2 + w * nl * nl;
                let take = slx > 0.0
                    && new_l != out[i][j] as i32
                    && sl22 > 0.0
                    && slx2 * slx2 * suml2[j] > sumlx[j] * sumlx[j] * sl22;
                out[i][j] = if take { new_l as i8 } else { out[i][j] };
                sumlx[j] = if take { slx2 } else { sumlx[j] };
                suml2[j] = if take { sl22 } else { suml2[j] };
                changed |= take;
            }
        }
        if !changed {
            break;
        }
    }
    let mut scale = [0f32; L];
    for j in 0..L {
        scale[j] = if suml2[j] > 0.0 {
            sumlx[j] / suml2[j]
        } else {
            0.0
        };
    }
    for row in out.iter_mut() {
        for o in row.iter_mut() {
            *o += nmax as i8;
        }
    }
    finish_zero_groups(&amax, &mut scale, out);
    scale
}

/// `N` values of each of `L` consecutive sub-blocks of `x`, transposed: `[i][j]` is value `i` of
/// sub-block `j`.
#[inline(always)]
pub(super) fn transpose<const N: usize, const L: usize>(x: &[f32]) -> [[f32; L]; N] {
    let mut t = [[0f32; L]; N];
    for j in 0..L {
        for i in 0..N {
            t[i][j] = x[N * j + i];
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

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

    #[test]
    fn qkx2_lanes_equal_the_scalar_search() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let p = |nmax, rmin, nstep, use_mad| Qkx2 {
            nmax,
            rmin,
            rdelta: 0.1,
            nstep,
            use_mad,
        };
        for chunk in groups::<32>(&mut rng, 8 * 40).chunks_exact(8) {
            let mut x = [[0f32; 8]; 32];
            let mut w = [[0f32; 8]; 32];
            for (j, g) in chunk.iter().enumerate() {
                for i in 0..32 {
                    x[i][j] = g[i];
                    w[i][j] = g[i].abs() + 0.5;
                }
            }
            for (params, mad) in [
                (p(15, -1.0, 20, false), false),
                (p(31, -0.5, 15, false), false),
                (p(3, -0.5, 15, true), true),
            ] {
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
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sixteen_lane_searches_equal_the_scalar_search() {
        /// Every lane of `S::qx_16` (Q6_K's search) against the scalar one.
        fn check_qx<S: Searches>(rng: &mut rand::rngs::StdRng) {
            for chunk in groups::<16>(rng, 16 * 30).chunks_exact(16) {
                let x: [[f32; 16]; 16] =
                    std::array::from_fn(|i| std::array::from_fn(|j| chunk[j][i]));
                let mut out = [[0i8; 16]; 16];
                // SAFETY: the caller checked `S`'s features.
                let scale = unsafe { S::qx_16(32, &x, &mut out) };
                for (j, g) in chunk.iter().enumerate() {
                    let mut l = [0i8; 16];
                    let want = search::make_qx_quants(32, g, &mut l);
                    assert_eq!(scale[j].to_bits(), want.to_bits(), "lane {j}: {g:?}");
                    assert!((0..16).all(|i| out[i][j] == l[i]), "lane {j}: {g:?}");
                }
            }
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
            let p = |nmax, rmin, nstep, use_mad| Qkx2 {
                nmax,
                rmin,
                rdelta: 0.1,
                nstep,
                use_mad,
            };
            for chunk in groups::<N>(rng, L * 12).chunks_exact(L) {
                let x: [[f32; L]; N] =
                    std::array::from_fn(|i| std::array::from_fn(|j| chunk[j][i]));
                let w = x.map(|row| row.map(|v| v.abs() + 0.5));
                for params in [
                    p(15, -1.0, 20, false),
                    p(31, -0.5, 15, false),
                    p(3, -0.5, 15, true),
                ] {
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
        check_qx::<Portable>(&mut rng);
        if !(std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx2"))
        {
            eprintln!("skipped the AVX-512 half: this CPU has no AVX-512F");
            return;
        }
        check::<super::super::avx512::Avx512, 32>(&mut rng);
        check::<super::super::avx512::Avx512, 16>(&mut rng);
        check_qx::<super::super::avx512::Avx512>(&mut rng);
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
        let p = |nmax, rmin, nstep, use_mad| Qkx2 {
            nmax,
            rmin,
            rdelta: 0.1,
            nstep,
            use_mad,
        };
        for chunk in groups::<32>(&mut rng, 8 * 40).chunks_exact(8) {
            let x: [[f32; 8]; 32] = std::array::from_fn(|i| std::array::from_fn(|j| chunk[j][i]));
            let w = x.map(|row| row.map(|v| v.abs() + 0.5));
            for params in [
                p(15, -1.0, 20, false),
                p(31, -0.5, 15, false),
                p(3, -0.5, 15, true),
            ] {
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
        }
    }
}
