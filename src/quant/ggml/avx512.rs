//! The K-quant scale search `make_qkx2_quants` (Q2_K, Q4_K, Q5_K) on sixteen sub-blocks at
//! once, in the sixteen f32 lanes of an AVX-512 register ([`super::wide::qkx2`]); the other
//! searches are [`super::avx2`]'s. On CPUs whose vector units are 512 bits wide this doubles the
//! work per instruction of the AVX2 form, whose searches are bound by their additions.
//!
//! Each lane is the scalar search bit for bit, as in AVX2: the same IEEE operations in the same
//! order (no fused multiply-add), ordered comparisons into mask registers, selects as blends,
//! ggml's rounding trick on the bits.

use std::arch::x86_64::*;

use super::avx2;
use super::lanes::Searches;
use super::search::Qkx2;
use super::wide::{self, Wide, MAGIC};

/// The searches with AVX-512 (sixteen-lane `qkx2`) and AVX2 (the rest); only ever used when the
/// CPU has both.
pub(super) struct Avx512;

impl Searches for Avx512 {
    const WIDE: bool = true;

    #[inline(always)]
    unsafe fn qkx2<const N: usize, const MAD: bool>(
        p: Qkx2,
        x: &[[f32; 8]; N],
        w: &[[f32; 8]; N],
        out: &mut [[u8; 8]; N],
    ) -> ([f32; 8], [f32; 8]) {
        // SAFETY: the caller guarantees AVX-512 and AVX2.
        unsafe { avx2::qkx2::<N, MAD>(p, x, w, out) }
    }

    #[inline(always)]
    unsafe fn qkx2_16<const N: usize, const MAD: bool>(
        p: Qkx2,
        x: &[[f32; 16]; N],
        w: &[[f32; 16]; N],
        out: &mut [[u8; 16]; N],
    ) -> ([f32; 16], [f32; 16]) {
        // SAFETY: the caller guarantees AVX-512.
        unsafe { qkx2::<N, MAD>(p, x, w, out) }
    }

    #[inline(always)]
    unsafe fn qx(nmax: i32, x: &[[f32; 8]; 16], out: &mut [[i8; 8]; 16]) -> [f32; 8] {
        // SAFETY: the caller guarantees AVX2.
        unsafe { avx2::qx(nmax, x, out) }
    }

    #[inline(always)]
    unsafe fn q3(nmax: i32, x: &[[f32; 8]; 16], out: &mut [[i8; 8]; 16]) -> [f32; 8] {
        // SAFETY: the caller guarantees AVX2.
        unsafe { avx2::q3(nmax, x, out) }
    }
}

/// [`super::lanes::qkx2`] for sixteen groups.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn qkx2<const N: usize, const MAD: bool>(
    p: Qkx2,
    x: &[[f32; 16]; N],
    w: &[[f32; 16]; N],
    out: &mut [[u8; 16]; N],
) -> ([f32; 16], [f32; 16]) {
    // SAFETY: the caller guarantees AVX-512F, which `__m512`'s operations need.
    unsafe { wide::qkx2::<__m512, 16, N, MAD>(p, x, w, out) }
}

impl Wide<16> for __m512 {
    type Mask = __mmask16;

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn splat(v: f32) -> __m512 {
        _mm512_set1_ps(v)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load(a: &[f32; 16]) -> __m512 {
        // SAFETY: `a` holds 16 f32; the load is unaligned.
        unsafe { _mm512_loadu_ps(a.as_ptr()) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store(self) -> [f32; 16] {
        let mut a = [0f32; 16];
        // SAFETY: `a` holds 16 f32; the store is unaligned.
        unsafe { _mm512_storeu_ps(a.as_mut_ptr(), self) };
        a
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn add(self, b: __m512) -> __m512 {
        _mm512_add_ps(self, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn sub(self, b: __m512) -> __m512 {
        _mm512_sub_ps(self, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn mul(self, b: __m512) -> __m512 {
        _mm512_mul_ps(self, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn div(self, b: __m512) -> __m512 {
        _mm512_div_ps(self, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn abs(self) -> __m512 {
        _mm512_castsi512_ps(_mm512_and_si512(
            _mm512_castps_si512(self),
            _mm512_set1_epi32(0x7fff_ffff),
        ))
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn neg(self) -> __m512 {
        _mm512_castsi512_ps(_mm512_xor_si512(
            _mm512_castps_si512(self),
            _mm512_set1_epi32(i32::MIN),
        ))
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn lt(self, b: __m512) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_LT_OQ>(self, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn gt(self, b: __m512) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_GT_OQ>(self, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn eq(self, b: __m512) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(self, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn and(a: __mmask16, b: __mmask16) -> __mmask16 {
        a & b
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn or(a: __mmask16, b: __mmask16) -> __mmask16 {
        a | b
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn sel(m: __mmask16, a: __m512, b: __m512) -> __m512 {
        // The blend takes its second operand where the mask bit is set.
        _mm512_mask_blend_ps(m, b, a)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn any(m: __mmask16) -> bool {
        m != 0
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn all(m: __mmask16) -> bool {
        m == 0xffff
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn round_clamp(self, lo: i32, hi: i32) -> __m512 {
        let bits = _mm512_castps_si512(_mm512_add_ps(self, _mm512_set1_ps(MAGIC)));
        let i = _mm512_sub_epi32(
            _mm512_and_si512(bits, _mm512_set1_epi32(0x007f_ffff)),
            _mm512_set1_epi32(0x0040_0000),
        );
        let i = _mm512_min_epi32(
            _mm512_max_epi32(i, _mm512_set1_epi32(lo)),
            _mm512_set1_epi32(hi),
        );
        _mm512_cvtepi32_ps(i)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn round_near(self) -> __m512 {
        let magic = _mm512_set1_ps(MAGIC);
        _mm512_sub_ps(_mm512_add_ps(self, magic), magic)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn max(self, b: __m512) -> __m512 {
        _mm512_max_ps(self, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn min(self, b: __m512) -> __m512 {
        _mm512_min_ps(self, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn bytes(self) -> [u8; 16] {
        let mut a = [0u8; 16];
        let b = _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(self));
        // SAFETY: `a` holds 16 bytes; the store is unaligned.
        unsafe { _mm_storeu_si128(a.as_mut_ptr().cast(), b) };
        a
    }
}
