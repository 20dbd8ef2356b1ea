//! The scale searches of ggml's K-quant reference quantizers (`ggml-quants.c`), operation for
//! operation: every sum accumulates in the same order, every product associates as C's left to
//! right evaluation does (`w*x[i]*l` is `(w·x)·l`), and integers convert to f32 where C converts
//! them, so each search picks the codes and scale ggml picks.
//!
//! The encoders run these searches on all sub-blocks of a super-block at once
//! ([`super::lanes`]); the one-group transcriptions here are what those are tested against.

/// ggml's threshold below which a group counts as all zeros.
pub(super) const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: rounds to nearest, ties to even, by adding 1.5·2^23 and reading the
/// mantissa. Meant for |x| < 2^22; beyond it (and for NaN or infinities) it returns what ggml's
/// release builds return, which the callers then clamp.
#[inline(always)]
pub(super) fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    let i = val.to_bits() as i32;
    (i & 0x007f_ffff) - 0x0040_0000
}

/// The value of largest magnitude (the first on ties) and that magnitude: ggml's
/// `if (ax > amax) { amax = ax; max = x[i]; }`.
#[inline(always)]
#[cfg(test)]
fn signed_max(x: &[f32]) -> (f32, f32) {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (max, amax)
}

/// `make_qx_quants(16, nmax, x, L, 1, NULL)` (rmse type 1: weights `x²`, no importance
/// weights), what Q6_K's reference calls: codes `L` in `0..2·nmax` and the scale.
#[cfg(test)]
pub(super) fn make_qx_quants(nmax: i32, x: &[f32; 16], out: &mut [i8; 16]) -> f32 {
    let (max, amax) = signed_max(x);
    if amax < GROUP_MAX_EPS {
        out.fill(0);
        return 0.0;
    }
    let code = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let l = code(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let mut iscale = -(nmax as f32) / max;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (code(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = (code(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `make_q3_quants(16, nmax, x, L, true)`, what Q3_K's reference calls: an x²-weighted rounding
/// refined by up to five passes that move one code at a time while the weighted fit improves.
/// Codes `L` in `0..2·nmax`; returns the scale.
#[cfg(test)]
pub(super) fn make_q3_quants(nmax: i32, x: &[f32; 16], out: &mut [i8; 16]) -> f32 {
    let (max, amax) = signed_max(x);
    if amax < GROUP_MAX_EPS {
        out.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (o, &v) in out.iter_mut().zip(x) {
        let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *o = l as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (o, &v) in out.iter_mut().zip(x) {
            let w = v * v;
            let l = *o as f32;
            let mut slx = sumlx - w * v * l;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * l * l;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != *o as i32 {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *o = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for o in out.iter_mut() {
        *o += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// The parameters of one `make_qkx2_quants` call.
#[derive(Clone, Copy)]
pub(super) struct Qkx2 {
    /// Largest code.
    pub nmax: i32,
    /// First candidate's offset from `nmax` (`rmin`).
    pub rmin: f32,
    /// Step between candidates (`rdelta`).
    pub rdelta: f32,
    /// Candidates after the first (`nstep`; all callers pass at least 1).
    pub nstep: i32,
    /// Absolute instead of squared error (`use_mad`).
    pub use_mad: bool,
}

/// What `make_qkx2_quants` finds for one group, as the lane searches return it: `scale` and
/// `min` as ggml returns `scale` and stores `*the_min`, and how its codes are made again
/// ([`Fit::code`]). The encoders re-code every value against the quantized scales and keep a
/// search's own codes only where a scale quantizes to zero, so the searches do not write
/// codes that would nearly always be overwritten.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Fit {
    /// The group's scale.
    pub scale: f32,
    /// The group's `the_min` (the negated offset).
    pub min: f32,
    /// The winning pass's `iscale`.
    pub iscale: f32,
    /// The `min` the winning pass subtracted.
    pub from: f32,
    /// A constant group: every code is 0.
    pub flat: bool,
}

impl Fit {
    /// The search's code of value `x` of the group: `nearest_int(iscale·(x − from))` clamped to
    /// `[0, nmax]`, the operations of the winning pass, so the code that pass wrote.
    #[inline(always)]
    pub(super) fn code(&self, x: f32, nmax: i32) -> u8 {
        if self.flat {
            return 0;
        }
        nearest_int(self.iscale * (x - self.from)).max(0).min(nmax) as u8
    }
}

/// `make_qkx2_quants`: the codes `L` in `0..=nmax` and `(scale, min)` with value ≈
/// `scale·L − min` minimising the weighted error over `nstep + 1` candidate scales, each refined
/// by a weighted least-squares fit of scale and (non-positive) offset. Returns `(scale, min)`
/// as ggml returns `scale` and stores `*the_min`.
#[cfg(test)]
pub(super) fn make_qkx2_quants<const N: usize>(
    p: Qkx2,
    x: &[f32; N],
    weights: &[f32; N],
    out: &mut [u8; N],
) -> (f32, f32) {
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..N {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        out.fill(0);
        return (0.0, -min);
    }
    let nmax = p.nmax as f32;
    let error = |diff: f32| if p.use_mad { diff.abs() } else { diff * diff };
    let mut iscale = nmax / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..N {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, p.nmax);
        out[i] = l as u8;
        best_error += weights[i] * error(scale * l as f32 + min - x[i]);
    }
    let mut aux = [0u8; N];
    for is in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * is as f32 + nmax) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..N {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, p.nmax);
            aux[i] = l as u8;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..N {
                cur_error += weights[i] * error(this_scale * aux[i] as f32 + this_min - x[i]);
            }
            if cur_error < best_error {
                *out = aux;
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_ties_to_even_like_ggml() {
        let cases = [
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (-2.4, -2),
            (3.49, 3),
            (4_194_303.0, 4_194_303),
            (-4_194_303.0, -4_194_303),
        ];
        for (x, want) in cases {
            assert_eq!(nearest_int(x), want, "{x}");
        }
        // Outside ggml's range the magic-number trick wraps as it does in ggml.
        assert_eq!(nearest_int(f32::NAN), 0);
        assert_eq!(nearest_int(f32::INFINITY), -0x40_0000);
    }

    #[test]
    fn qkx2_of_a_constant_group_is_all_zero_codes_with_its_offset() {
        let x = [-0.25f32; 32];
        let w = [1f32; 32];
        let mut l = [9u8; 32];
        let p = Qkx2 {
            nmax: 15,
            rmin: -1.0,
            rdelta: 0.1,
            nstep: 20,
            use_mad: false,
        };
        let (scale, min) = make_qkx2_quants(p, &x, &w, &mut l);
        // max == min == -0.25 is not 0, so min stays -0.25 and max too: the group is constant.
        assert_eq!((scale, min), (0.0, 0.25));
        assert!(l.iter().all(|&c| c == 0));
    }

    #[test]
    fn q3_and_qx_searches_of_zeros_are_zero() {
        let mut l = [5i8; 16];
        assert_eq!(make_q3_quants(4, &[0.0; 16], &mut l), 0.0);
        assert!(l.iter().all(|&c| c == 0));
        let mut l = [5i8; 16];
        assert_eq!(make_qx_quants(32, &[1e-16; 16], &mut l), 0.0);
        assert!(l.iter().all(|&c| c == 0));
    }
}
