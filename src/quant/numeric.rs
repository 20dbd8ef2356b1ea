//! Scalar arithmetic of the quantized formats, written to give torch's bits: rounding to bf16/f16
//! after an f32 operation, torch's fp8 encoders, comfy-kitchen's e2m1 and e8m0 conversions, the
//! ceiling of a correctly rounded log2, and the cuBLAS block-scale swizzle.
//!
//! Each is a pure function of its arguments with no branches on data beyond selects, so the block
//! loops that call them stay simple enough to vectorise.

use crate::cast::{f32_to_bf16, f32_to_f8e4m3, f32_to_f8e5m2};

/// Rounds an f32 to the nearest bf16 (ties to even) and widens it back, as torch does after every
/// bf16 operation (computed in f32, stored in bf16). NaN stays NaN with its sign.
#[inline(always)]
pub(crate) fn round_bf16(x: f32) -> f32 {
    f32::from_bits(u32::from(f32_to_bf16(x)) << 16)
}

/// Rounds an f32 to the nearest f16 (ties to even, subnormals exact, overflow to ±Inf) and widens
/// it back, as torch does after every f16 operation.
#[inline(always)]
pub(crate) fn round_f16(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// torch's `float8_e4m3fn` conversion (c10 `fp8e4m3fn_from_fp32_value`) for values the caller
/// has clamped to ±448: round to nearest even, subnormals exact, NaN to `0x7F` with its sign.
#[inline(always)]
pub(crate) fn e4m3_from_clamped(x: f32) -> u8 {
    f32_to_f8e4m3(x)
}

/// torch's `float8_e5m2` conversion for values clamped to ±57344; unlike NVIDIA's saturating
/// conversion, NaN becomes `0x7F` (with its sign).
#[inline(always)]
pub(crate) fn e5m2_from_clamped(x: f32) -> u8 {
    if x.is_nan() {
        ((x.to_bits() >> 24) as u8 & 0x80) | 0x7F
    } else {
        f32_to_f8e5m2(x)
    }
}

/// The values of the 16 e2m1 codes (sign in bit 3): kitchen's dequantization table.
pub(crate) const E2M1: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// comfy-kitchen's `_f32_to_floatx_unpacked(x, 2, 1)`: f32 to e2m1 in the low nibble.
///
/// Kitchen saturates |x| ≥ 6 to 6, sends |x| < 1 through its subnormal path (an add that rounds
/// to multiples of 0.5, ties to even) and rounds the rest to one mantissa bit, ties to even. For
/// numbers that is the count of the midpoints between grid values that |x| passes, a tie going
/// to the even neighbour (0.25 → 0, 0.75 → 1, 1.25 → 1, 1.75 → 2, 2.5 → 2, 3.5 → 4, 5 → 4):
/// seven compares and no table, so a block loop vectorises. A NaN passes no branch in kitchen
/// and goes through the normal path's integer arithmetic, which wraps as torch's int32 does; the
/// same arithmetic gives its byte here (it can exceed a nibble).
#[inline(always)]
pub(crate) fn e2m1_from_f32(x: f32) -> u8 {
    let bits = x.to_bits();
    let sign = (bits >> 28) as u8 & 0x8;
    let a = f32::from_bits(bits & 0x7FFF_FFFF);
    let mag = u8::from(a > 0.25)
        + u8::from(a >= 0.75)
        + u8::from(a > 1.25)
        + u8::from(a >= 1.75)
        + u8::from(a > 2.5)
        + u8::from(a >= 3.5)
        + u8::from(a > 5.0);
    let n = a.to_bits() as i32;
    let nan = (n
        .wrapping_add(((1 - 127) << 23) + ((1 << 21) - 1))
        .wrapping_add((n >> 22) & 1)
        >> 22) as u8;
    (if a.is_nan() { nan } else { mag }) | sign
}

/// comfy-kitchen's `e8m0_to_f32`: `2^(b - 127)`, except that byte 0 decodes to 0 (not 2^-127).
#[inline(always)]
pub(crate) fn e8m0_to_f32(b: u8) -> f32 {
    if b == 0 {
        0.0
    } else {
        f32::from_bits(u32::from(b) << 23)
    }
}

/// The e8m0 byte kitchen's `quantize_mxfp8` picks for a block whose absolute maximum is `amax`:
/// `ceil(log2(max(amax / 448, 2^-127))) + 127`, clamped to 0..=254. Non-finite logarithms (NaN or
/// Inf maxima) become 0, as torch's float-to-int32 conversion followed by the clamp gives.
///
/// torch's f32 `log2` is correctly rounded where it matters here (values just above a power of
/// two round down onto it); an f64 logarithm rounded to f32 gives the same f32 results.
#[inline]
pub(crate) fn mxfp8_exponent(amax: f32) -> u8 {
    const MIN: f32 = f32::from_bits(0x0040_0000); // 2^-127
    let needed = amax / 448.0;
    let needed = if needed < MIN { MIN } else { needed };
    let log2 = (f64::from(needed).log2() as f32).ceil();
    if !log2.is_finite() {
        return 0;
    }
    (log2 as i32 + 127).clamp(0, 254) as u8
}

/// The absolute maximum of `values` as torch's `amax(abs(x))` gives it: NaN if any value is NaN.
///
/// Computed on the magnitudes' bits: for floats without their sign the integer order is the
/// numeric order, and every NaN lies above +Inf, so one integer maximum (which vectorises, unlike
/// a float maximum that must track NaN) gives both the maximum and whether a NaN was seen.
#[inline]
pub(crate) fn abs_max(values: &[f32]) -> f32 {
    let max = values
        .iter()
        .fold(0u32, |m, v| m.max(v.to_bits() & 0x7FFF_FFFF));
    if max > 0x7F80_0000 {
        f32::NAN
    } else {
        f32::from_bits(max)
    }
}

/// Byte offset of block scale `(row, col)` in the cuBLAS "blocked" layout that comfy-kitchen's
/// `to_blocked` writes: tiles of 128 rows × 4 columns (512 bytes) ordered row band by row band,
/// and inside a tile `(row % 32) * 16 + (row % 128 / 32) * 4 + col % 4`. `cols` is the padded
/// column count (a multiple of 4).
#[inline(always)]
pub(crate) fn swizzled(row: usize, col: usize, cols: usize) -> usize {
    let tile = (row / 128) * (cols / 4) + col / 4;
    let r = row % 128;
    tile * 512 + (r % 32) * 16 + (r / 32) * 4 + col % 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2m1_rounds_to_nearest_even_and_saturates() {
        let cases = [
            (0.0, 0x0),
            (0.24, 0x0),
            (0.25, 0x0), // tie to even (0)
            (0.26, 0x1),
            (0.75, 0x2), // tie between 0.5 and 1.0 goes to 1.0 (even mantissa)
            (1.25, 0x2),
            (1.75, 0x4),
            (2.5, 0x4),
            (3.5, 0x6),
            (5.0, 0x6),
            (5.5, 0x7),
            (6.0, 0x7),
            (1e30, 0x7),
            (f32::INFINITY, 0x7),
            (-0.0, 0x8),
            (-3.0, 0xD),
            (-100.0, 0xF),
        ];
        for (x, code) in cases {
            assert_eq!(e2m1_from_f32(x), code, "{x}");
        }
        for code in 0..16u8 {
            assert_eq!(
                e2m1_from_f32(E2M1[code as usize]),
                code,
                "round trip {code}"
            );
        }
    }

    /// Kitchen's `_f32_to_floatx_unpacked(x, 2, 1)` restated branch by branch (saturation, the
    /// subnormal add, the integer rounding of normals), as the reference for the compare form.
    fn kitchen_e2m1(x: f32) -> u8 {
        const DENORM_MASK: i32 = 149 << 23;
        let bits = x.to_bits() as i32;
        let sign = (x.to_bits() >> 28) as u8 & 0x8;
        let a = f32::from_bits((bits & 0x7FFF_FFFF) as u32);
        let denormal = (a + f32::from_bits(DENORM_MASK as u32)).to_bits() as i32;
        let denormal = denormal.wrapping_sub(DENORM_MASK) as u8;
        let n = a.to_bits() as i32;
        let odd = (n >> 22) & 1;
        let normal = (n
            .wrapping_add(((1 - 127) << 23) + ((1 << 21) - 1))
            .wrapping_add(odd)
            >> 22) as u8;
        let mag = if a >= 6.0 {
            7
        } else if a < 1.0 {
            denormal
        } else {
            normal
        };
        mag | sign
    }

    #[test]
    fn e2m1_compares_equal_kitchens_arithmetic() {
        let check = |bits: u32| {
            let x = f32::from_bits(bits);
            assert_eq!(e2m1_from_f32(x), kitchen_e2m1(x), "{x:e} ({bits:#010x})");
        };
        // Every bit pattern near each rounding midpoint and grid value, both signs.
        for m in [
            0.25f32, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0,
        ] {
            for d in 0..=4096u32 {
                for b in [m.to_bits() + d, m.to_bits() - d] {
                    check(b);
                    check(b | 0x8000_0000);
                }
            }
        }
        // A stride through all finite values, the infinities, and NaNs with payloads.
        for bits in (0..=u32::MAX).step_by(4099) {
            check(bits);
        }
        for bits in [
            0x7F80_0000,
            0xFF80_0000,
            0x7FC0_0000,
            0x7F80_0001,
            0x7FFF_FFFF,
        ] {
            check(bits);
            check(bits | 0x8000_0000);
        }
    }

    #[test]
    fn e2m1_of_nan_is_kitchens_wrapped_byte() {
        // 0x7FC00000 + (-126 << 23) + 2^21 - 1 + 1, >> 22, low byte: 0x03.
        assert_eq!(e2m1_from_f32(f32::from_bits(0x7FC0_0000)), 0x03);
        assert_eq!(e2m1_from_f32(f32::from_bits(0xFFC0_0000)), 0x0B);
    }

    #[test]
    fn e8m0_zero_is_zero() {
        assert_eq!(e8m0_to_f32(0), 0.0);
        assert_eq!(e8m0_to_f32(127), 1.0);
        assert_eq!(e8m0_to_f32(1), f32::MIN_POSITIVE);
        assert_eq!(e8m0_to_f32(254), 2f32.powi(127));
    }

    #[test]
    fn mxfp8_exponent_rounds_the_scale_up_to_a_power_of_two() {
        assert_eq!(mxfp8_exponent(448.0), 127);
        assert_eq!(mxfp8_exponent(449.0), 128);
        assert_eq!(mxfp8_exponent(224.0), 126);
        assert_eq!(
            mxfp8_exponent(0.0),
            0,
            "2^-127 floor, then exponent -127 + 127"
        );
        assert_eq!(mxfp8_exponent(f32::NAN), 0);
        assert_eq!(mxfp8_exponent(f32::INFINITY), 0);
        assert_eq!(
            mxfp8_exponent(f32::MAX),
            127 + 120,
            "2^128 / 448 needs 2^120"
        );
        // |x| / 448 one ulp above 2^-12: log2 rounds onto -12, so the ceiling stays there.
        let just_above = f32::from_bits((448.0f32 * 2f32.powi(-12)).to_bits() + 1);
        assert_eq!(mxfp8_exponent(just_above), 127 - 12);
    }

    #[test]
    fn abs_max_propagates_nan() {
        assert_eq!(abs_max(&[1.0, -3.0, 2.0]), 3.0);
        assert!(abs_max(&[1.0, f32::NAN, 2.0]).is_nan());
        assert_eq!(abs_max(&[]), 0.0);
        assert_eq!(abs_max(&[-0.0]), 0.0);
        assert_eq!(abs_max(&[f32::NEG_INFINITY, 1.0]), f32::INFINITY);
        assert!(abs_max(&[-f32::NAN, f32::INFINITY]).is_nan());
        assert_eq!(
            abs_max(&[-f32::MIN_POSITIVE / 4.0]),
            f32::MIN_POSITIVE / 4.0
        );
    }

    #[test]
    fn swizzle_matches_the_blocked_layout() {
        // Independent restatement of kitchen's to_blocked for a 256 × 8 matrix: view as
        // (rb, 128, cb, 4), permute to (rb, cb, 128, 4), split 128 as (4, 32), swap them.
        let (rows, cols) = (256, 8);
        let mut seen = vec![false; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                let (rb, rt, cb, ct) = (r / 128, r % 128, c / 4, c % 4);
                let (i, j) = (rt / 32, rt % 32);
                let expect = ((rb * (cols / 4) + cb) * 32 + j) * 16 + i * 4 + ct;
                let got = swizzled(r, c, cols);
                assert_eq!(got, expect, "({r}, {c})");
                assert!(!seen[got]);
                seen[got] = true;
            }
        }
    }

    #[test]
    fn fp8_encoders_follow_torch_for_nan() {
        assert_eq!(e5m2_from_clamped(f32::NAN), 0x7F);
        assert_eq!(e5m2_from_clamped(-f32::NAN), 0xFF);
        assert_eq!(e4m3_from_clamped(-f32::NAN), 0xFF);
        assert_eq!(e5m2_from_clamped(-57344.0), 0xFB);
        assert_eq!(e4m3_from_clamped(448.0), 0x7E);
    }

    #[test]
    fn rounding_helpers_round_to_nearest_even() {
        assert_eq!(round_bf16(1.0 + 2f32.powi(-8)), 1.0, "tie to even");
        assert_eq!(round_bf16(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        assert_eq!(round_f16(65520.0), f32::INFINITY);
        assert_eq!(
            round_f16(2f32.powi(-25)),
            0.0,
            "tie to even at the smallest subnormal"
        );
        assert_eq!(round_f16(3.0 * 2f32.powi(-26)), 2f32.powi(-24));
    }
}
