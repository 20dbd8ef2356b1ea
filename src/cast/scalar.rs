//! Scalar conversions of single values: fp8 encode/decode, bf16 rounding, f16 widening and
//! f64 rounding to odd. Written on bits and branch-free where it matters, so the block loops of
//! [`super::portable`] auto-vectorise them.

/// Encodes `x` as `F8_E4M3` (`float8_e4m3fn`) bits, saturating like `__NV_SATFINITE`.
///
/// Round to nearest even; |x| > 448 (including ±Inf) gives ±448 (`0x7E`/`0xFE`); NaN gives
/// `0x7F`/`0xFF` (sign kept); subnormals (multiples of 2⁻⁹) are rounded exactly; -0.0 stays `0x80`.
#[inline]
pub fn f32_to_f8e4m3(x: f32) -> u8 {
    f32_bits_to_f8e4m3(x.to_bits())
}

/// Encodes `x` as `F8_E5M2` bits, saturating like `__NV_SATFINITE`.
///
/// Round to nearest even; |x| > 57344 (including ±Inf) gives ±57344 (`0x7B`/`0xFB`); NaN gives the
/// quiet NaN `0x7E`/`0xFE` (sign kept); subnormals (multiples of 2⁻¹⁶) are rounded exactly; -0.0
/// stays `0x80`.
#[inline]
pub fn f32_to_f8e5m2(x: f32) -> u8 {
    f32_bits_to_f8e5m2(x.to_bits())
}

/// Encodes `x` as `F8_E4M3` bits with a single rounding (same rules as [`f32_to_f8e4m3`]).
#[inline]
pub fn f64_to_f8e4m3(x: f64) -> u8 {
    f32_to_f8e4m3(f64_to_f32_round_odd(x))
}

/// Encodes `x` as `F8_E5M2` bits with a single rounding (same rules as [`f32_to_f8e5m2`]).
#[inline]
pub fn f64_to_f8e5m2(x: f64) -> u8 {
    f32_to_f8e5m2(f64_to_f32_round_odd(x))
}

/// Decodes `F8_E4M3` (`float8_e4m3fn`) bits exactly; `0x7F`/`0xFF` decode to NaN.
#[inline]
pub fn f8e4m3_to_f32(bits: u8) -> f32 {
    f32::from_bits(E4M3_TO_F32[bits as usize])
}

/// Decodes `F8_E5M2` bits exactly (Inf and NaN included).
#[inline]
pub fn f8e5m2_to_f32(bits: u8) -> f32 {
    f32::from_bits(E5M2_TO_F32[bits as usize])
}

/// Encodes `x` as bfloat16 bits: round to nearest even, overflow to ±Inf, NaN kept (made quiet).
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    f32_bits_to_bf16(x.to_bits())
}

/// Rounds `x` to f32 *to odd*: truncate toward zero, and set the last bit when inexact.
///
/// A value rounded to odd with at least two more bits than a narrower format rounds to that format
/// exactly as `x` itself would, so F64 → (F16, BF16, fp8) can go through f32 without double
/// rounding.
#[inline]
pub(super) fn f64_to_f32_round_odd(x: f64) -> f32 {
    let r = x as f32;
    let back = f64::from(r);
    if back == x || x.is_nan() {
        return r;
    }
    let mut bits = r.to_bits();
    if back.abs() > x.abs() {
        // Rounded away from zero (possibly to Inf): step back toward zero; sign-magnitude bits
        // make that a decrement, and `r` is not zero here.
        bits -= 1;
    }
    f32::from_bits(bits | 1)
}

/// f16 bits → f32 bits, exact and branch-free, so it auto-vectorises.
///
/// `half`'s F16C slice path calls a non-inlined intrinsic per 8 values; this integer form (after
/// F. Giesen's `half_to_float`) inlines into the block loop and measured slightly faster.
/// Subnormals are rescaled through one exact f32 subtraction; NaN payloads are kept.
#[inline(always)]
pub(super) fn f16_bits_to_f32_bits(h: u16) -> u32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let shifted = (h & 0x7fff) << 13;
    let exp = shifted & 0x0f80_0000;
    let normal = shifted + ((127 - 15) << 23);
    let inf_nan = shifted + ((255 - 31) << 23);
    // 2^-14 · (1 + m/1024) - 2^-14 = m · 2^-24, exactly.
    let sub = (f32::from_bits(shifted + (113 << 23)) - f32::from_bits(113 << 23)).to_bits();
    let mag = if exp == 0x0f80_0000 {
        inf_nan
    } else if exp == 0 {
        sub
    } else {
        normal
    };
    sign | mag
}

/// f32 bits → bf16 bits, branch-free (selects compile to blends).
#[inline(always)]
pub(super) fn f32_bits_to_bf16(x: u32) -> u16 {
    let rounded = x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16;
    let quiet_nan = (x >> 16) | 0x40;
    let is_nan = (x & 0x7fff_ffff) > 0x7f80_0000;
    (if is_nan { quiet_nan } else { rounded }) as u16
}

/// f32 bits → saturated fp8 bits, shared by both fp8 formats.
///
/// `MAN` mantissa bits, exponent `BIAS`, `MAX` the largest finite magnitude code, `NAN` the NaN
/// magnitude code. Normal results rebias the exponent and round the mantissa to nearest even in
/// integer arithmetic (a carry into the exponent is the correct result); overflow, Inf included,
/// clamps to `MAX`. Subnormal results come from adding `2^(24 - BIAS - MAN)`, the power of two
/// whose ulp is the fp8 subnormal step, so the FPU does the exact round-to-nearest-even.
#[inline(always)]
fn f32_bits_to_f8<const MAN: u32, const BIAS: u32, const MAX: u32, const NAN: u32>(x: u32) -> u8 {
    let sign = (x >> 24) & 0x80;
    let a = x & 0x7fff_ffff;
    let shift = 23 - MAN;
    // Smallest normal fp8 exponent is 1 - BIAS, i.e. f32 biased exponent 128 - BIAS.
    let min_normal = (128 - BIAS) << 23;
    let rebased = a.wrapping_sub((127 - BIAS) << 23);
    let normal =
        (rebased.wrapping_add((1 << (shift - 1)) - 1 + ((rebased >> shift) & 1)) >> shift).min(MAX);
    // Subnormal step is 2^(1 - BIAS - MAN); the power of two with that ulp is 2^(24 - BIAS - MAN).
    let magic_bits = (127 + 24 - BIAS - MAN) << 23;
    let sub = (f32::from_bits(a) + f32::from_bits(magic_bits))
        .to_bits()
        .wrapping_sub(magic_bits);
    let mag = if a > 0x7f80_0000 {
        NAN
    } else if a < min_normal {
        sub
    } else {
        normal
    };
    (sign | mag) as u8
}

#[inline(always)]
pub(super) fn f32_bits_to_f8e4m3(x: u32) -> u8 {
    f32_bits_to_f8::<3, 7, 0x7e, 0x7f>(x)
}

#[inline(always)]
pub(super) fn f32_bits_to_f8e5m2(x: u32) -> u8 {
    f32_bits_to_f8::<2, 15, 0x7b, 0x7e>(x)
}

/// Exact fp8 → f32 bits, for building the decode tables at compile time.
const fn fp8_to_f32_bits(b: u8, man: u32, bias: i32, finite_only: bool) -> u32 {
    let b = b as u32;
    let sign = (b & 0x80) << 24;
    let exp_max = 0x7f >> man;
    let e = (b >> man) & exp_max;
    let m = b & ((1 << man) - 1);
    if e == exp_max {
        if !finite_only {
            return if m == 0 {
                sign | 0x7f80_0000
            } else {
                sign | 0x7fc0_0000 | (m << (23 - man))
            };
        }
        if m == (1 << man) - 1 {
            return sign | 0x7fc0_0000;
        }
    }
    if e == 0 {
        if m == 0 {
            return sign;
        }
        // m · 2^(1 - bias - man), normalised on its highest set bit p.
        let p = 31 - m.leading_zeros();
        let exp = (p as i32 + 1 - bias - man as i32 + 127) as u32;
        return sign | (exp << 23) | ((m - (1 << p)) << (23 - p));
    }
    sign | (((e as i32 - bias + 127) as u32) << 23) | (m << (23 - man))
}

const fn fp8_table(man: u32, bias: i32, finite_only: bool) -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = fp8_to_f32_bits(i as u8, man, bias, finite_only);
        i += 1;
    }
    t
}

static E4M3_TO_F32: [u32; 256] = fp8_table(3, 7, true);
static E5M2_TO_F32: [u32; 256] = fp8_table(2, 15, false);
