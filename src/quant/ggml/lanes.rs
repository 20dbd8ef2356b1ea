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
        // SAFETY: the caller guarantees the implementation's features.
        by_eight(x, out, |x, o| unsafe { Self::qx(nmax, x, o) })
    }

    /// [`q3`] of eight groups.
    ///
    /// # Safety
    /// The CPU has the implementation's features.
    unsafe fn q3(nmax: i32, x: &[[f32; 8]; 16], out: &mut [[i8; 8]; 16]) -> [f32; 8];

    /// [`q3`] of sixteen groups (a super-block of Q3_K): eight-group searches, unless the
    /// implementation has wider registers.
    ///
    /// # Safety
    /// The CPU has the implementation's features.
    #[inline(always)]
    unsafe fn q3_16(nmax: i32, x: &[[f32; 16]; 16], out: &mut [[i8; 16]; 16]) -> [f32; 16] {
        // SAFETY: the caller guarantees the implementation's features.
        by_eight(x, out, |x, o| unsafe { Self::q3(nmax, x, o) })
    }

    /// [`q3`] of sixty-four groups (four super-blocks of Q3_K): eight-group searches, unless the
    /// implementation has wider registers (four AVX-512 registers side by side, whose dependent
    /// refinement steps interleave).
    ///
    /// # Safety
    /// The CPU has the implementation's features.
    #[inline(always)]
    unsafe fn q3_64(nmax: i32, x: &[[f32; 64]; 16], out: &mut [[i8; 64]; 16]) -> [f32; 64] {
        // SAFETY: the caller guarantees the implementation's features.
        by_eight(x, out, |x, o| unsafe { Self::q3(nmax, x, o) })
    }
}

/// An eight-lane search of groups of 16 (`qx`, `q3`) on `L` groups (a multiple of 8), eight at
/// a time: the scales, and the codes into `out`.
#[inline(always)]
fn by_eight<const L: usize>(
    x: &[[f32; L]; 16],
    out: &mut [[i8; L]; 16],
    mut search: impl FnMut(&[[f32; 8]; 16], &mut [[i8; 8]; 16]) -> [f32; 8],
) -> [f32; L] {
    let mut scale = [0f32; L];
    for h in 0..L / 8 {
        let part = x.map(|r| std::array::from_fn(|j| r[8 * h + j]));
        let mut o = [[0i8; 8]; 16];
        scale[8 * h..8 * h + 8].copy_from_slice(&search(&part, &mut o));
        for (row, o) in out.iter_mut().zip(&o) {
            row[8 * h..8 * h + 8].copy_from_slice(o);
        }
    }
    scale
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
mod tests;
