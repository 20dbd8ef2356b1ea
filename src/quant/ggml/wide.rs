//! ggml's `make_qkx2_quants` (the Q2_K, Q4_K and Q5_K scale search) on `L` sub-blocks at once,
//! one per lane of a vector register: the 8 lanes of AVX2 ([`super::avx2`]) or the 16 of
//! AVX-512 ([`super::avx512`]), written once over the [`Wide`] operations both provide.
//!
//! Every operation is the lane-wise IEEE operation of the portable search
//! ([`super::lanes::qkx2`]), in the same order: adds, multiplies and divisions are never fused
//! or reassociated, comparisons are ordered (false on NaN) where Rust's `<`, `>`, `==` are, and
//! `nearest_int` is the same add-and-mask on the bits. So every lane's result is the scalar
//! search's bits (and ggml's); the tests compare them on every kind of group.

use super::search::{Fit, Qkx2, GROUP_MAX_EPS};

/// Below this magnitude `nearest_int` is round-half-even ([`Wide::round_fast`] computes it);
/// from `2^22 − 0.5` up (the sum reaches 2^24), and for NaN (whose payload it reads), ggml's
/// bit trick wraps.
pub(super) const FAST_LIMIT: f32 = 4_194_303.0;

/// `1.5·2^23`, ggml's rounding constant.
pub(super) const MAGIC: f32 = 12_582_912.0;

/// The lane-wise operations of a register of `L` f32 lanes.
///
/// # Safety
/// Every method needs the CPU features of its implementation; callers run them only from
/// functions compiled with those features, into which they inline.
pub(super) trait Wide<const L: usize>: Copy {
    /// A per-lane condition (a vector of all-ones lanes, or a bit mask).
    type Mask: Copy;

    /// All lanes `v`.
    unsafe fn splat(v: f32) -> Self;
    /// `a`, unaligned.
    unsafe fn load(a: &[f32; L]) -> Self;
    /// The lanes.
    unsafe fn store(self) -> [f32; L];
    /// `self + b`.
    unsafe fn add(self, b: Self) -> Self;
    /// `self − b`.
    unsafe fn sub(self, b: Self) -> Self;
    /// `self · b`.
    unsafe fn mul(self, b: Self) -> Self;
    /// `self / b`.
    unsafe fn div(self, b: Self) -> Self;
    /// `|self|`: the sign bit cleared, as `f32::abs`.
    unsafe fn abs(self) -> Self;
    /// `−self`: the sign bit flipped, as Rust's `-`.
    unsafe fn neg(self) -> Self;
    /// `self < b`, false on NaN.
    unsafe fn lt(self, b: Self) -> Self::Mask;
    /// `self > b`, false on NaN.
    unsafe fn gt(self, b: Self) -> Self::Mask;
    /// `self == b`, false on NaN.
    unsafe fn eq(self, b: Self) -> Self::Mask;
    /// `self != b` as Rust computes it: true when either is NaN.
    unsafe fn ne(self, b: Self) -> Self::Mask;
    /// Lanes that are not NaN.
    unsafe fn ordered(self) -> Self::Mask;
    /// Both conditions.
    unsafe fn and(a: Self::Mask, b: Self::Mask) -> Self::Mask;
    /// Either condition.
    unsafe fn or(a: Self::Mask, b: Self::Mask) -> Self::Mask;
    /// `if m { a } else { b }` per lane.
    unsafe fn sel(m: Self::Mask, a: Self, b: Self) -> Self;
    /// Whether any lane holds.
    unsafe fn any(m: Self::Mask) -> bool;
    /// Whether every lane holds.
    unsafe fn all(m: Self::Mask) -> bool;
    /// `nearest_int(self)` (ggml's bit trick) clamped to `[lo, hi]`, as an f32 (exact).
    unsafe fn round_clamp(self, lo: i32, hi: i32) -> Self;
    /// `self` rounded half to even in one instruction: for lanes with `|self| <`
    /// [`FAST_LIMIT`] the integer ggml's bit trick reads, except that `(−0.5, −0]` rounds to
    /// −0 where the trick's `(self + 1.5·2^23) − 1.5·2^23` gives +0. No caller can tell the
    /// two zeros apart: a zero code adds a zero to each of a pass's sums (which start at +0
    /// and never become −0), and its error term is the same.
    unsafe fn round_near(self) -> Self;
    /// The larger of the two, `b` where either is NaN (`maxps`).
    unsafe fn max(self, b: Self) -> Self;
    /// The smaller of the two, `b` where either is NaN (`minps`).
    unsafe fn min(self, b: Self) -> Self;
    /// The lanes' small non-negative integer values as bytes (exact).
    unsafe fn bytes(self) -> [u8; L];
}

/// `nearest_int(v)` clamped to `[0, hi]` for lanes with `|v| <` [`FAST_LIMIT`] (see
/// [`Wide::round_near`]); `LO`/`HI`: whether the lower/upper clamp can change a value (the
/// callers prove where it cannot, and skip it).
#[inline(always)]
pub(super) unsafe fn round_fast<V: Wide<L>, const L: usize, const LO: bool, const HI: bool>(
    v: V,
    hi: V,
) -> V {
    // SAFETY: the caller runs with `V`'s features.
    unsafe {
        let r = v.round_near();
        let r = if LO { r.max(V::splat(0.0)) } else { r };
        if HI {
            r.min(hi)
        } else {
            r
        }
    }
}

/// One candidate scale's pass of [`qkx2`]: each value's code (`round(iscale·(x − min))`, `round`
/// being `nearest_int` clamped to the codes) into `aux`, and the weighted sums of the codes, their
/// squares and their products with the values.
#[inline(always)]
unsafe fn candidate<V: Wide<L>, const L: usize, const N: usize>(
    round: impl Fn(V) -> V,
    iscale: V,
    min: V,
    x: &[[f32; L]; N],
    w: &[[f32; L]; N],
    aux: &mut [V; N],
) -> (V, V, V) {
    // SAFETY: the caller runs with `V`'s features.
    unsafe {
        let zero = V::splat(0.0);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (zero, zero, zero);
        for i in 0..N {
            // `x − min` is recomputed rather than kept: with many lanes some lane's `min`
            // changes at nearly every candidate, and the subtraction costs less than the
            // stores of a kept copy.
            let v = V::load(&x[i]);
            let l = round(iscale.mul(v.sub(min)));
            aux[i] = l;
            let wl = V::load(&w[i]).mul(l);
            sum_l = sum_l.add(wl);
            sum_l2 = sum_l2.add(wl.mul(l));
            sum_xl = sum_xl.add(wl.mul(v));
        }
        (sum_l, sum_l2, sum_xl)
    }
}

/// Whether every lane not in `skip` has `|lo|` and `|hi|` below [`FAST_LIMIT`] (false for NaN).
/// A pass whose products `iscale·t` are monotone in `t` between two ends that pass this check
/// stays below the limit for every value in between (IEEE rounding is monotone).
#[inline(always)]
pub(super) unsafe fn within<V: Wide<L>, const L: usize>(lo: V, hi: V, skip: V::Mask) -> bool {
    // SAFETY: the caller runs with `V`'s features.
    unsafe {
        let limit = V::splat(FAST_LIMIT);
        V::all(V::or(skip, V::and(lo.abs().lt(limit), hi.abs().lt(limit))))
    }
}

/// [`super::lanes::qkx2`] for `L` groups: what it finds for each.
///
/// # Safety
/// The CPU has `V`'s features; the caller is compiled with them.
#[inline(always)]
pub(super) unsafe fn qkx2<V: Wide<L>, const L: usize, const N: usize, const MAD: bool>(
    p: Qkx2,
    x: &[[f32; L]; N],
    w: &[[f32; L]; N],
) -> [Fit; L] {
    // SAFETY: the caller runs with `V`'s features.
    unsafe {
        let error = |d: V| if MAD { d.abs() } else { d.mul(d) };
        let zero = V::splat(0.0);
        let x0 = V::load(&x[0]);
        let (mut min, mut max, mut sum_w) = (x0, x0, V::load(&w[0]));
        let mut sum_x = sum_w.mul(x0);
        for i in 1..N {
            let (v, wi) = (V::load(&x[i]), V::load(&w[i]));
            min = V::sel(v.lt(min), v, min);
            max = V::sel(v.gt(max), v, max);
            sum_w = sum_w.add(wi);
            sum_x = sum_x.add(wi.mul(v));
        }
        // Every value but NaN lies in `[data_min, max]`. A lane with a NaN may round it
        // differently on the fast path, but its candidates never win (their error is NaN), so
        // its codes are the first pass's, which always takes the exact rounding.
        let data_min = min;
        min = V::sel(min.gt(zero), zero, min);
        let (flat, flat_min) = (max.eq(min), min);
        let nmax = V::splat(p.nmax as f32);
        let iscale = nmax.div(max.sub(min));
        let mut scale = V::splat(1.0).div(iscale);
        let mut best = zero;
        for i in 0..N {
            let v = V::load(&x[i]);
            let l = iscale.mul(v.sub(min)).round_clamp(0, p.nmax);
            best = best.add(V::load(&w[i]).mul(error(scale.mul(l).add(min).sub(v))));
        }
        // The winning codes are not kept: each lane keeps the `iscale` and `min` that made
        // them, from which [`Fit::code`] makes them again (the same operations; the fast
        // rounding of a candidate equals the exact one wherever it is taken, and a lane with a
        // NaN never takes a candidate).
        let (mut best_iscale, mut best_from) = (iscale, min);
        let mut aux = [zero; N];
        for is in 0..=p.nstep {
            let top = p.rmin + p.rdelta * is as f32 + p.nmax as f32;
            let iscale = V::splat(top).div(max.sub(min));
            // Flat lanes are overwritten at the end whatever their candidates. Every product
            // `iscale·(x − min)` lies between these two (IEEE rounding is monotone).
            let (lo, hi) = (iscale.mul(data_min.sub(min)), iscale.mul(max.sub(min)));
            let (sum_l, sum_l2, sum_xl) = if within(lo, hi, flat) {
                // Above −0.5 every code rounds to 0 or more; below `nmax + 0.5` to `nmax` or
                // less: those clamps are skipped where no lane needs them.
                let lo_free = V::all(V::or(flat, lo.gt(V::splat(-0.5))));
                let hi_free = V::all(V::or(flat, hi.lt(V::splat(p.nmax as f32 + 0.5))));
                // One pass per pair of clamps, each with its rounding inlined.
                macro_rules! pass {
                    ($lo:literal, $hi:literal) => {
                        candidate(
                            |v| round_fast::<V, L, $lo, $hi>(v, nmax),
                            iscale,
                            min,
                            x,
                            w,
                            &mut aux,
                        )
                    };
                }
                match (lo_free, hi_free) {
                    (true, true) => pass!(false, false),
                    (true, false) => pass!(false, true),
                    (false, true) => pass!(true, false),
                    (false, false) => pass!(true, true),
                }
            } else {
                let exact = |v: V| v.round_clamp(0, p.nmax);
                candidate(exact, iscale, min, x, w, &mut aux)
            };
            let d = sum_w.mul(sum_l2).sub(sum_l.mul(sum_l));
            let s = sum_w.mul(sum_xl).sub(sum_x.mul(sum_l)).div(d);
            let m = sum_l2.mul(sum_x).sub(sum_l.mul(sum_xl)).div(d);
            let clip = m.gt(zero);
            let this_min = V::sel(clip, zero, m);
            let this_scale = V::sel(clip, sum_xl.div(sum_l2), s);
            let mut cur = zero;
            for i in 0..N {
                let diff = this_scale.mul(aux[i]).add(this_min).sub(V::load(&x[i]));
                cur = cur.add(V::load(&w[i]).mul(error(diff)));
            }
            let take = V::and(d.gt(zero), cur.lt(best));
            best = V::sel(take, cur, best);
            scale = V::sel(take, this_scale, scale);
            best_iscale = V::sel(take, iscale, best_iscale);
            best_from = V::sel(take, min, best_from);
            min = V::sel(take, this_min, min);
        }
        let scale = V::sel(flat, zero, scale).store();
        let min = V::sel(flat, flat_min, min).neg().store();
        let (iscale, from) = (best_iscale.store(), best_from.store());
        let flat = V::sel(flat, V::splat(1.0), zero).store();
        std::array::from_fn(|j| Fit {
            scale: scale[j],
            min: min[j],
            iscale: iscale[j],
            from: from[j],
            flat: flat[j] != 0.0,
        })
    }
}

/// [`super::lanes::qx`] (`make_qx_quants`, Q6_K's search) for `L` groups of 16: their codes
/// (`0..2·nmax`) into `out`, and their scales.
///
/// # Safety
/// The CPU has `V`'s features; the caller is compiled with them.
#[inline(always)]
pub(super) unsafe fn qx<V: Wide<L>, const L: usize>(
    nmax: i32,
    x: &[[f32; L]; 16],
    out: &mut [[i8; L]; 16],
) -> [f32; L] {
    // SAFETY: the caller runs with `V`'s features.
    unsafe {
        let zero = V::splat(0.0);
        let (max, amax): (V, V) = signed_max(x);
        let mut no_nan = V::load(&x[0]).ordered();
        for row in &x[1..] {
            no_nan = V::and(no_nan, V::load(row).ordered());
        }
        let has_nan = !V::all(no_nan);
        // Lanes below the all-zero threshold are overwritten at the end whatever their codes.
        let small = amax.lt(V::splat(GROUP_MAX_EPS));
        let q = QxPass {
            x,
            amax,
            small,
            nmax,
            exact: has_nan,
        };
        let mut codes = [zero; 16];
        let mut aux = [zero; 16];
        let (sumlx, suml2) = q.pass(V::splat(-(nmax as f32)).div(max), &mut codes);
        let mut scale = V::sel(suml2.ne(zero), sumlx.div(suml2), zero);
        let mut best = scale.mul(sumlx);
        for is in -9..=9 {
            if is == 0 {
                continue;
            }
            let iscale = V::splat(-(nmax as f32 + 0.1 * is as f32)).div(max);
            let (sumlx, suml2) = q.pass(iscale, &mut aux);
            let take = V::and(suml2.gt(zero), sumlx.mul(sumlx).gt(best.mul(suml2)));
            if V::any(take) {
                scale = V::sel(take, sumlx.div(suml2), scale);
                best = V::sel(take, scale.mul(sumlx), best);
                for i in 0..16 {
                    codes[i] = V::sel(take, aux[i], codes[i]);
                }
            }
        }
        for (o, &c) in out.iter_mut().zip(&codes) {
            *o = V::sel(small, zero, c).bytes().map(|c| c as i8);
        }
        V::sel(small, zero, scale).store()
    }
}

/// The value of largest magnitude per lane (the first on ties; NaN never) and that magnitude.
///
/// # Safety
/// The CPU has `V`'s features; the caller is compiled with them.
#[inline(always)]
unsafe fn signed_max<V: Wide<L>, const L: usize>(x: &[[f32; L]; 16]) -> (V, V) {
    // SAFETY: the caller runs with `V`'s features.
    unsafe {
        let (mut max, mut amax) = (V::splat(0.0), V::splat(0.0));
        for row in x {
            let v = V::load(row);
            let ax = v.abs();
            let take = ax.gt(amax);
            amax = V::sel(take, ax, amax);
            max = V::sel(take, v, max);
        }
        (max, amax)
    }
}

/// [`super::lanes::q3`] (`make_q3_quants`, Q3_K's search) for `L` groups of 16: their codes
/// (`0..2·nmax`) into `out`, and their scales. Each lane's refinement is a chain of dependent
/// steps (a division in each), so many lanes in flight — several registers side by side — keep
/// the vector units busy where one register would wait on its chain.
///
/// # Safety
/// The CPU has `V`'s features; the caller is compiled with them.
#[inline(always)]
pub(super) unsafe fn q3<V: Wide<L>, const L: usize>(
    nmax: i32,
    x: &[[f32; L]; 16],
    out: &mut [[i8; L]; 16],
) -> [f32; L] {
    // SAFETY: the caller runs with `V`'s features.
    unsafe {
        let zero = V::splat(0.0);
        let (max, amax): (V, V) = signed_max(x);
        let iscale = V::splat(-(nmax as f32)).div(max);
        let (mut sumlx, mut suml2) = (zero, zero);
        let mut codes = [zero; 16];
        for (code, row) in codes.iter_mut().zip(x) {
            let v = V::load(row);
            let l = iscale.mul(v).round_clamp(-nmax, nmax - 1);
            *code = l;
            let w = v.mul(v);
            sumlx = sumlx.add(w.mul(v).mul(l));
            suml2 = suml2.add(w.mul(l).mul(l));
        }
        // A lane whose pass changed nothing would change nothing in another pass either (its
        // state is the same), so passes run until no lane changes, at most five.
        for _ in 0..5 {
            let mut changed = zero.ne(zero);
            for (code, row) in codes.iter_mut().zip(x) {
                let v = V::load(row);
                let (w, l) = (v.mul(v), *code);
                let wx = w.mul(v);
                let slx = sumlx.sub(wx.mul(l));
                let sl2 = suml2.sub(w.mul(l).mul(l));
                // ggml's rounding of any quotient, however large (its trick wraps past 2^22).
                let new_l = v.mul(sl2).div(slx).round_clamp(-nmax, nmax - 1);
                let slx2 = slx.add(wx.mul(new_l));
                let sl22 = sl2.add(w.mul(new_l).mul(new_l));
                let better = slx2.mul(slx2).mul(suml2).gt(sumlx.mul(sumlx).mul(sl22));
                let take = V::and(
                    V::and(slx.gt(zero), new_l.ne(l)),
                    V::and(sl22.gt(zero), better),
                );
                *code = V::sel(take, new_l, l);
                sumlx = V::sel(take, slx2, sumlx);
                suml2 = V::sel(take, sl22, suml2);
                changed = V::or(changed, take);
            }
            if !V::any(changed) {
                break;
            }
        }
        let scale = V::sel(suml2.gt(zero), sumlx.div(suml2), zero);
        // Lanes below the all-zero threshold are all zeros, codes included.
        let small = amax.lt(V::splat(GROUP_MAX_EPS));
        let nmax_f = V::splat(nmax as f32);
        for (o, &c) in out.iter_mut().zip(&codes) {
            *o = V::sel(small, zero, c.add(nmax_f)).bytes().map(|c| c as i8);
        }
        V::sel(small, zero, scale).store()
    }
}

/// One candidate scale's pass of [`qx`] over its groups. A function rather than a closure: a
/// closure is compiled without the caller's CPU features, and one this size is not inlined.
struct QxPass<'a, V: Wide<L>, const L: usize> {
    x: &'a [[f32; L]; 16],
    amax: V,
    small: V::Mask,
    nmax: i32,
    /// Some lane holds a NaN: every pass takes the exact rounding.
    exact: bool,
}

impl<V: Wide<L>, const L: usize> QxPass<'_, V, L> {
    /// Each value's code (`nearest_int(iscale·x)` clamped to `[−nmax, nmax − 1]`, plus `nmax`)
    /// into `codes`, and the x²-weighted sums of the codes times the values and of their squares.
    #[inline(always)]
    unsafe fn pass(&self, iscale: V, codes: &mut [V; 16]) -> (V, V) {
        // SAFETY: the caller runs with `V`'s features.
        unsafe {
            let zero = V::splat(0.0);
            let nmax_f = V::splat(self.nmax as f32);
            let (lo, hi) = (
                V::splat(-(self.nmax as f32)),
                V::splat((self.nmax - 1) as f32),
            );
            let (mut sumlx, mut suml2) = (zero, zero);
            // Without NaN, `|iscale·v| ≤ |iscale|·amax`: one check for the pass.
            let bound = iscale.abs().mul(self.amax);
            let fast = !self.exact && within(bound, bound, self.small);
            for (code, row) in codes.iter_mut().zip(self.x) {
                let v = V::load(row);
                let l = if fast {
                    iscale.mul(v).round_near().min(hi).max(lo)
                } else {
                    iscale.mul(v).round_clamp(-self.nmax, self.nmax - 1)
                };
                *code = l.add(nmax_f);
                let w = v.mul(v);
                sumlx = sumlx.add(w.mul(v).mul(l));
                suml2 = suml2.add(w.mul(l).mul(l));
            }
            (sumlx, suml2)
        }
    }
}
