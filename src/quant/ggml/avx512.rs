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
use super::search::{Fit, Qkx2};
use super::wide::{self, Wide, MAGIC};

mod regs;

use regs::{Z2, Z4};

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
    ) -> [Fit; 8] {
        // SAFETY: the caller guarantees AVX-512 and AVX2.
        unsafe { avx2::qkx2::<N, MAD>(p, x, w) }
    }

    #[inline(always)]
    unsafe fn qkx2_16<const N: usize, const MAD: bool>(
        p: Qkx2,
        x: &[[f32; 16]; N],
        w: &[[f32; 16]; N],
    ) -> [Fit; 16] {
        // SAFETY: the caller guarantees AVX-512.
        unsafe { qkx2::<N, MAD>(p, x, w) }
    }

    #[inline(always)]
    unsafe fn qkx2_32<const N: usize, const MAD: bool>(
        p: Qkx2,
        x: &[[f32; 32]; N],
        w: &[[f32; 32]; N],
    ) -> [Fit; 32] {
        // SAFETY: the caller guarantees AVX-512.
        unsafe { qkx2_pair::<N, MAD>(p, x, w) }
    }

    #[inline(always)]
    unsafe fn qkx2_64<const N: usize, const MAD: bool>(
        p: Qkx2,
        x: &[[f32; 64]; N],
        w: &[[f32; 64]; N],
    ) -> [Fit; 64] {
        // SAFETY: the caller guarantees AVX-512.
        unsafe { qkx2_quad::<N, MAD>(p, x, w) }
    }

    #[inline(always)]
    unsafe fn encode_q8_0_all(values: &[f32], codes: &mut [u8]) {
        // SAFETY: the caller guarantees AVX-512.
        unsafe { q8_0_all(values, codes) }
    }

    #[inline(always)]
    unsafe fn qx_16(nmax: i32, x: &[[f32; 16]; 16], out: &mut [[i8; 16]; 16]) -> [f32; 16] {
        // SAFETY: the caller guarantees AVX-512.
        unsafe { qx(nmax, x, out) }
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

    #[inline(always)]
    unsafe fn q3_16(nmax: i32, x: &[[f32; 16]; 16], out: &mut [[i8; 16]; 16]) -> [f32; 16] {
        // SAFETY: the caller guarantees AVX-512.
        unsafe { q3(nmax, x, out) }
    }

    #[inline(always)]
    unsafe fn q3_64(nmax: i32, x: &[[f32; 64]; 16], out: &mut [[i8; 64]; 16]) -> [f32; 64] {
        // SAFETY: the caller guarantees AVX-512.
        unsafe { q3_quad(nmax, x, out) }
    }

    #[inline(always)]
    unsafe fn transpose_lanes<const N: usize, const L: usize>(x: &[f32]) -> [[f32; L]; N] {
        if !(N.is_multiple_of(16) && L.is_multiple_of(16)) {
            return super::lanes::transpose(x);
        }
        // SAFETY: the caller guarantees AVX-512F.
        unsafe { transpose_tiles(x) }
    }
}

/// [`super::lanes::transpose`] for `N` and `L` multiples of 16, one 16 × 16 tile at a time in
/// registers ([`transpose16`]); the compiler's form gathered every row with a stride.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn transpose_tiles<const N: usize, const L: usize>(x: &[f32]) -> [[f32; L]; N] {
    let x = &x[..N * L];
    let mut t = [[0f32; L]; N];
    for tj in (0..L).step_by(16) {
        for ti in (0..N).step_by(16) {
            // Row `r` of the tile: values `ti..ti + 16` of sub-block `tj + r`. (Loops, not
            // closures: a closure is compiled without this function's features.)
            let mut rows = [_mm512_setzero_ps(); 16];
            for (r, v) in rows.iter_mut().enumerate() {
                let row = &x[N * (tj + r) + ti..][..16];
                // SAFETY: `row` holds 16 f32; the load is unaligned.
                *v = unsafe { _mm512_loadu_ps(row.as_ptr()) };
            }
            for (c, col) in transpose16(rows).into_iter().enumerate() {
                let out = &mut t[ti + c][tj..tj + 16];
                // SAFETY: `out` holds 16 f32; the store is unaligned.
                unsafe { _mm512_storeu_ps(out.as_mut_ptr(), col) };
            }
        }
    }
    t
}

/// The 16 × 16 transpose of rows `r`: output `c` holds lane `c` of every row. Within each
/// 128-bit lane two rounds of unpacks transpose 4 × 4 blocks; two rounds of 128-bit shuffles
/// then gather each column's four blocks.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // `u[4k + m]`, 128-bit lane `q`: column `4q + m` of rows `4k..4k + 4`.
    let mut u = [_mm512_setzero_ps(); 16];
    for k in 0..4 {
        let (r0, r1, r2, r3) = (r[4 * k], r[4 * k + 1], r[4 * k + 2], r[4 * k + 3]);
        let (t0, t1) = (_mm512_unpacklo_ps(r0, r1), _mm512_unpackhi_ps(r0, r1));
        let (t2, t3) = (_mm512_unpacklo_ps(r2, r3), _mm512_unpackhi_ps(r2, r3));
        u[4 * k] = lo_pd(t0, t2);
        u[4 * k + 1] = hi_pd(t0, t2);
        u[4 * k + 2] = lo_pd(t1, t3);
        u[4 * k + 3] = hi_pd(t1, t3);
    }
    let mut out = [_mm512_setzero_ps(); 16];
    for m in 0..4 {
        // Lanes 0, 1 (then 2, 3) of rows 0..8 and of rows 8..16.
        let x0 = _mm512_shuffle_f32x4::<0x44>(u[m], u[4 + m]);
        let x1 = _mm512_shuffle_f32x4::<0xEE>(u[m], u[4 + m]);
        let y0 = _mm512_shuffle_f32x4::<0x44>(u[8 + m], u[12 + m]);
        let y1 = _mm512_shuffle_f32x4::<0xEE>(u[8 + m], u[12 + m]);
        out[m] = _mm512_shuffle_f32x4::<0x88>(x0, y0);
        out[4 + m] = _mm512_shuffle_f32x4::<0xDD>(x0, y0);
        out[8 + m] = _mm512_shuffle_f32x4::<0x88>(x1, y1);
        out[12 + m] = _mm512_shuffle_f32x4::<0xDD>(x1, y1);
    }
    out
}

/// The low 64-bit halves of each 128-bit lane of `a` and `b`, interleaved.
#[inline]
#[target_feature(enable = "avx512f")]
fn lo_pd(a: __m512, b: __m512) -> __m512 {
    _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
}

/// The high 64-bit halves of each 128-bit lane of `a` and `b`, interleaved.
#[inline]
#[target_feature(enable = "avx512f")]
fn hi_pd(a: __m512, b: __m512) -> __m512 {
    _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
}

/// Whole Q8_0 blocks (`quantize_row_q8_0_ref`), sixteen values per register: the absolute
/// maximum reduced in a tree (ggml's running maximum where no value is NaN; a block holding a
/// NaN, whose running maximum depends on where it lies, takes the scalar encoder), `roundf` as a
/// truncation plus one step away from zero where the dropped part is at least a half (exact: the
/// part is), and C's float-to-int conversion as `cvttps2dq`, whose result for NaN and out of
/// range (`INT_MIN`) is C's on x86; then the low byte. The same bytes as
/// [`super::legacy::encode_q8_0`] (tested).
///
/// # Safety
/// The CPU has AVX-512F; `codes` holds 34 bytes per 32 values.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn q8_0_all(values: &[f32], codes: &mut [u8]) {
    let blocks = codes.as_chunks_mut::<34>().0;
    for (x, b) in values.as_chunks::<32>().0.iter().zip(blocks) {
        // SAFETY: `x` holds 32 f32; the loads are unaligned.
        let v = unsafe {
            [
                _mm512_loadu_ps(x.as_ptr()),
                _mm512_loadu_ps(x.as_ptr().add(16)),
            ]
        };
        if v[0].ordered() & v[1].ordered() != u16::MAX {
            super::legacy::encode_q8_0(x, b);
            continue;
        }
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(v[0].abs(), v[1].abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b[..2].copy_from_slice(&super::f16_bytes(d));
        let (idv, half) = (_mm512_set1_ps(id), _mm512_set1_ps(0.5));
        for (h, v) in v.into_iter().enumerate() {
            let t = _mm512_mul_ps(v, idv);
            let r = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(t);
            let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_sub_ps(t, r).abs(), half);
            // ±1 with `t`'s sign.
            let sign = _mm512_and_si512(_mm512_castps_si512(t), _mm512_set1_epi32(i32::MIN));
            let one = _mm512_castsi512_ps(_mm512_or_si512(
                sign,
                _mm512_castps_si512(_mm512_set1_ps(1.0)),
            ));
            let r = _mm512_mask_add_ps(r, up, r, one);
            let q = _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(r));
            // SAFETY: `b` holds 34 bytes: 16 from `2 + 16·h` lie inside; the store is unaligned.
            unsafe { _mm_storeu_si128(b.as_mut_ptr().add(2 + 16 * h).cast(), q) };
        }
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
) -> [Fit; 16] {
    // SAFETY: the caller guarantees AVX-512F, which `__m512`'s operations need.
    unsafe { wide::qkx2::<__m512, 16, N, MAD>(p, x, w) }
}

/// [`super::lanes::qkx2`] for thirty-two groups, in two registers side by side ([`Z2`]).
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn qkx2_pair<const N: usize, const MAD: bool>(
    p: Qkx2,
    x: &[[f32; 32]; N],
    w: &[[f32; 32]; N],
) -> [Fit; 32] {
    // SAFETY: the caller guarantees AVX-512F, which `Z2`'s operations need.
    unsafe { wide::qkx2::<Z2, 32, N, MAD>(p, x, w) }
}

/// [`super::lanes::qkx2`] for sixty-four groups, in four registers side by side ([`Z4`]).
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn qkx2_quad<const N: usize, const MAD: bool>(
    p: Qkx2,
    x: &[[f32; 64]; N],
    w: &[[f32; 64]; N],
) -> [Fit; 64] {
    // SAFETY: the caller guarantees AVX-512F, which `Z4`'s operations need.
    unsafe { wide::qkx2::<Z4, 64, N, MAD>(p, x, w) }
}

/// [`super::lanes::qx`] for sixteen groups (Q6_K's sixteen sub-blocks).
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn qx(nmax: i32, x: &[[f32; 16]; 16], out: &mut [[i8; 16]; 16]) -> [f32; 16] {
    // SAFETY: the caller guarantees AVX-512F, which `__m512`'s operations need.
    unsafe { wide::qx::<__m512, 16>(nmax, x, out) }
}

/// [`super::lanes::q3`] for sixteen groups (Q3_K's sixteen sub-blocks).
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn q3(nmax: i32, x: &[[f32; 16]; 16], out: &mut [[i8; 16]; 16]) -> [f32; 16] {
    // SAFETY: the caller guarantees AVX-512F, which `__m512`'s operations need.
    unsafe { wide::q3::<__m512, 16>(nmax, x, out) }
}

/// [`super::lanes::q3`] for sixty-four groups (four super-blocks), in four registers side by
/// side ([`Z4`]).
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn q3_quad(
    nmax: i32,
    x: &[[f32; 64]; 16],
    out: &mut [[i8; 64]; 16],
) -> [f32; 64] {
    // SAFETY: the caller guarantees AVX-512F, which `Z4`'s operations need.
    unsafe { wide::q3::<Z4, 64>(nmax, x, out) }
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
    unsafe fn ne(self, b: __m512) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(self, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn ordered(self) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_ORD_Q>(self, self)
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
        _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(self)
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
