//! The lane searches of [`super::lanes`] written with AVX2 intrinsics: eight sub-blocks in the
//! eight f32 lanes of a register. The compiler keeps the portable version's per-lane running
//! sums in scalar registers (it splits the arrays, then cannot put the sums back into vectors),
//! so the vector form is spelled out here.
//!
//! Every operation is the lane-wise IEEE operation of the portable code, in the same order: adds,
//! multiplies and divisions are never fused or reassociated, comparisons are ordered (false on
//! NaN) where Rust's `<`, `>`, `==` are and unordered where `!=` is, selects are blends, and
//! `nearest_int` is the same add-and-mask on the bits. The results are the portable (and so
//! ggml's) bits; the tests compare them on every kind of group.

use std::arch::x86_64::*;

use super::lanes::Searches;
use super::search::{Fit, Qkx2};
use super::wide::{self, Wide};

/// The searches with AVX2 intrinsics; only ever used when the CPU has AVX2.
pub(super) struct Avx2;

impl Searches for Avx2 {
    #[inline(always)]
    unsafe fn qkx2<const N: usize, const MAD: bool>(
        p: Qkx2,
        x: &[[f32; 8]; N],
        w: &[[f32; 8]; N],
    ) -> [Fit; 8] {
        // SAFETY: the caller guarantees AVX2.
        unsafe { qkx2::<N, MAD>(p, x, w) }
    }

    #[inline(always)]
    unsafe fn qx(nmax: i32, x: &[[f32; 8]; 16], out: &mut [[i8; 8]; 16]) -> [f32; 8] {
        // SAFETY: the caller guarantees AVX2.
        unsafe { qx(nmax, x, out) }
    }

    #[inline(always)]
    unsafe fn q3(nmax: i32, x: &[[f32; 8]; 16], out: &mut [[i8; 8]; 16]) -> [f32; 8] {
        // SAFETY: the caller guarantees AVX2.
        unsafe { q3(nmax, x, out) }
    }
}

type V = __m256;

#[inline]
#[target_feature(enable = "avx2")]
fn splat(v: f32) -> V {
    _mm256_set1_ps(v)
}

#[inline]
#[target_feature(enable = "avx2")]
fn load(a: &[f32; 8]) -> V {
    // SAFETY: `a` holds 8 f32; the load is unaligned.
    unsafe { _mm256_loadu_ps(a.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn store(v: V) -> [f32; 8] {
    let mut a = [0f32; 8];
    // SAFETY: `a` holds 8 f32; the store is unaligned.
    unsafe { _mm256_storeu_ps(a.as_mut_ptr(), v) };
    a
}

#[inline]
#[target_feature(enable = "avx2")]
fn add(a: V, b: V) -> V {
    _mm256_add_ps(a, b)
}

#[inline]
#[target_feature(enable = "avx2")]
fn sub(a: V, b: V) -> V {
    _mm256_sub_ps(a, b)
}

#[inline]
#[target_feature(enable = "avx2")]
fn mul(a: V, b: V) -> V {
    _mm256_mul_ps(a, b)
}

#[inline]
#[target_feature(enable = "avx2")]
fn div(a: V, b: V) -> V {
    _mm256_div_ps(a, b)
}

/// `|a|`: the sign bit cleared, as `f32::abs`.
#[inline]
#[target_feature(enable = "avx2")]
fn abs(a: V) -> V {
    _mm256_castsi256_ps(_mm256_and_si256(
        _mm256_castps_si256(a),
        _mm256_set1_epi32(0x7fff_ffff),
    ))
}

/// `-a`: the sign bit flipped, as Rust's `-`.
#[inline]
#[target_feature(enable = "avx2")]
fn neg(a: V) -> V {
    _mm256_castsi256_ps(_mm256_xor_si256(
        _mm256_castps_si256(a),
        _mm256_set1_epi32(i32::MIN),
    ))
}

#[inline]
#[target_feature(enable = "avx2")]
fn lt(a: V, b: V) -> V {
    _mm256_cmp_ps::<_CMP_LT_OQ>(a, b)
}

#[inline]
#[target_feature(enable = "avx2")]
fn gt(a: V, b: V) -> V {
    _mm256_cmp_ps::<_CMP_GT_OQ>(a, b)
}

#[inline]
#[target_feature(enable = "avx2")]
fn eq(a: V, b: V) -> V {
    _mm256_cmp_ps::<_CMP_EQ_OQ>(a, b)
}

/// `a != b` as Rust computes it: true when either is NaN.
#[inline]
#[target_feature(enable = "avx2")]
fn ne(a: V, b: V) -> V {
    _mm256_cmp_ps::<_CMP_NEQ_UQ>(a, b)
}

#[inline]
#[target_feature(enable = "avx2")]
fn and(a: V, b: V) -> V {
    _mm256_and_ps(a, b)
}

#[inline]
#[target_feature(enable = "avx2")]
fn or(a: V, b: V) -> V {
    _mm256_or_ps(a, b)
}

/// `if m { a } else { b }` per lane.
#[inline]
#[target_feature(enable = "avx2")]
fn sel(m: V, a: V, b: V) -> V {
    _mm256_blendv_ps(b, a, m)
}

#[inline]
#[target_feature(enable = "avx2")]
fn any(m: V) -> bool {
    _mm256_movemask_ps(m) != 0
}

/// `nearest_int(v)` clamped to `[lo, hi]`, as an f32 (exact: a small integer).
#[inline]
#[target_feature(enable = "avx2")]
fn round_clamp(v: V, lo: i32, hi: i32) -> V {
    let bits = _mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(12_582_912.0)));
    let i = _mm256_sub_epi32(
        _mm256_and_si256(bits, _mm256_set1_epi32(0x007f_ffff)),
        _mm256_set1_epi32(0x0040_0000),
    );
    let i = _mm256_min_epi32(
        _mm256_max_epi32(i, _mm256_set1_epi32(lo)),
        _mm256_set1_epi32(hi),
    );
    _mm256_cvtepi32_ps(i)
}

/// Lanes of `v` that are not NaN.
#[inline]
#[target_feature(enable = "avx2")]
fn ordered(v: V) -> V {
    _mm256_cmp_ps::<_CMP_ORD_Q>(v, v)
}

/// The lanes' small integer values as integers (exact).
#[inline]
#[target_feature(enable = "avx2")]
fn ints(v: V) -> [i32; 8] {
    let mut a = [0i32; 8];
    // SAFETY: `a` holds 8 i32; the store is unaligned.
    unsafe { _mm256_storeu_si256(a.as_mut_ptr().cast(), _mm256_cvttps_epi32(v)) };
    a
}

/// [`super::lanes::qkx2`] for eight groups ([`wide::qkx2`] on AVX2 registers).
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn qkx2<const N: usize, const MAD: bool>(
    p: Qkx2,
    x: &[[f32; 8]; N],
    w: &[[f32; 8]; N],
) -> [Fit; 8] {
    // SAFETY: the caller guarantees AVX2, which `V`'s operations need.
    unsafe { wide::qkx2::<V, 8, N, MAD>(p, x, w) }
}

impl Wide<8> for V {
    type Mask = V;

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn splat(v: f32) -> V {
        splat(v)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load(a: &[f32; 8]) -> V {
        load(a)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn store(self) -> [f32; 8] {
        store(self)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn add(self, b: V) -> V {
        add(self, b)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn sub(self, b: V) -> V {
        sub(self, b)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn mul(self, b: V) -> V {
        mul(self, b)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn div(self, b: V) -> V {
        div(self, b)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn abs(self) -> V {
        abs(self)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn neg(self) -> V {
        neg(self)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn lt(self, b: V) -> V {
        lt(self, b)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn gt(self, b: V) -> V {
        gt(self, b)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn eq(self, b: V) -> V {
        eq(self, b)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn ne(self, b: V) -> V {
        ne(self, b)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn ordered(self) -> V {
        ordered(self)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn and(a: V, b: V) -> V {
        and(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn or(a: V, b: V) -> V {
        or(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn sel(m: V, a: V, b: V) -> V {
        sel(m, a, b)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn any(m: V) -> bool {
        any(m)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn all(m: V) -> bool {
        _mm256_movemask_ps(m) == 0xff
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn round_clamp(self, lo: i32, hi: i32) -> V {
        round_clamp(self, lo, hi)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn round_near(self) -> V {
        _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(self)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn max(self, b: V) -> V {
        _mm256_max_ps(self, b)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn min(self, b: V) -> V {
        _mm256_min_ps(self, b)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn bytes(self) -> [u8; 8] {
        ints(self).map(|c| c as u8)
    }
}

/// [`super::lanes::qx`] for eight groups ([`wide::qx`] on AVX2 registers).
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn qx(nmax: i32, x: &[[f32; 8]; 16], out: &mut [[i8; 8]; 16]) -> [f32; 8] {
    // SAFETY: the caller guarantees AVX2, which `V`'s operations need.
    unsafe { wide::qx::<V, 8>(nmax, x, out) }
}

/// [`super::lanes::q3`] for eight groups ([`wide::q3`] on AVX2 registers).
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn q3(nmax: i32, x: &[[f32; 8]; 16], out: &mut [[i8; 8]; 16]) -> [f32; 8] {
    // SAFETY: the caller guarantees AVX2, which `V`'s operations need.
    unsafe { wide::q3::<V, 8>(nmax, x, out) }
}

#[cfg(test)]
mod tests {
    use super::super::search::nearest_int;
    use super::super::wide::{within, FAST_LIMIT};
    use super::*;

    /// The fast rounding is `nearest_int` clamped below 2^22, and [`within`] refuses what is not.
    #[test]
    fn fast_rounding_is_nearest_int_below_the_limit_only() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        let mut vals: Vec<f32> = vec![
            0.5,
            1.5,
            2.5,
            -0.5,
            -2.5,
            14.5,
            15.49,
            15.5,
            4_194_302.5,
            -4_194_302.5,
        ];
        let mut bits = 0x1234_5678u32;
        for _ in 0..4000 {
            bits = bits.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let v = f32::from_bits(bits);
            if v.is_finite() && v.abs() < FAST_LIMIT {
                vals.push(v);
            }
            vals.push((bits >> 8) as f32 / 65536.0 - 128.0);
        }
        for chunk in vals.chunks_exact(8) {
            let a: [f32; 8] = std::array::from_fn(|j| chunk[j]);
            // SAFETY: the CPU has AVX2 (checked above).
            let (got, ok) = unsafe {
                let v = load(&a);
                (
                    store(wide::round_fast::<V, 8, true, true>(v, splat(15.0))),
                    within(v, v, splat(0.0)),
                )
            };
            assert!(ok, "{a:?}");
            for (g, v) in got.iter().zip(a) {
                assert_eq!(*g, nearest_int(v).clamp(0, 15) as f32, "{v}");
            }
        }
        // At the limit the bit trick wraps (ggml's codes differ from rounding), and NaN's
        // payload is read: both must take the exact path.
        assert_eq!(nearest_int(FAST_LIMIT + 0.5).clamp(0, 15), 0);
        for bad in [FAST_LIMIT, -FAST_LIMIT, f32::NAN, f32::INFINITY] {
            let a = [bad; 8];
            // SAFETY: the CPU has AVX2 (checked above).
            let ok = unsafe { within(load(&a), splat(0.0), splat(0.0)) };
            assert!(!ok, "{bad}");
            // SAFETY: as above; a skipped lane passes whatever its values.
            let skipped = unsafe { within(load(&a), splat(0.0), eq(splat(0.0), splat(0.0))) };
            assert!(skipped, "{bad}");
        }
    }
}
