//! Wider registers for the `make_qkx2_quants` search: two ([`Z2`], 32 lanes) and four ([`Z4`],
//! 64 lanes) AVX-512 registers side by side, each lane operation the 16-lane one of
//! [`Wide`]`<16>` on every register, so that the search's ordered chains of additions
//! run several at a time.

use std::arch::x86_64::*;

use super::super::wide::Wide;

/// Two AVX-512 registers as one of 32 lanes. The searches' sums are chains of dependent
/// additions whose order ggml's bits fix; two independent chains side by side keep the adders
/// busy where one chain waits on its own latency.
#[derive(Clone, Copy)]
pub(super) struct Z2(__m512, __m512);

/// `f` on both halves.
macro_rules! both {
    ($a:expr, $f:ident) => {
        Z2($a.0.$f(), $a.1.$f())
    };
    ($a:expr, $b:expr, $f:ident) => {
        Z2($a.0.$f($b.0), $a.1.$f($b.1))
    };
}

impl Wide<32> for Z2 {
    /// Lanes 0..16 in the low half, 16..32 in the high half.
    type Mask = u32;

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn splat(v: f32) -> Z2 {
        Z2(_mm512_set1_ps(v), _mm512_set1_ps(v))
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load(a: &[f32; 32]) -> Z2 {
        let (lo, hi) = a.split_at(16);
        // SAFETY (both): each half holds 16 f32; the loads are unaligned.
        unsafe { Z2(_mm512_loadu_ps(lo.as_ptr()), _mm512_loadu_ps(hi.as_ptr())) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store(self) -> [f32; 32] {
        let mut a = [0f32; 32];
        // SAFETY: `a` holds 32 f32; the stores are unaligned.
        unsafe {
            _mm512_storeu_ps(a.as_mut_ptr(), self.0);
            _mm512_storeu_ps(a.as_mut_ptr().add(16), self.1);
        }
        a
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn add(self, b: Z2) -> Z2 {
        unsafe { both!(self, b, add) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn sub(self, b: Z2) -> Z2 {
        unsafe { both!(self, b, sub) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn mul(self, b: Z2) -> Z2 {
        unsafe { both!(self, b, mul) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn div(self, b: Z2) -> Z2 {
        unsafe { both!(self, b, div) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn abs(self) -> Z2 {
        unsafe { both!(self, abs) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn neg(self) -> Z2 {
        unsafe { both!(self, neg) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn lt(self, b: Z2) -> u32 {
        unsafe { join(self.0.lt(b.0), self.1.lt(b.1)) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn gt(self, b: Z2) -> u32 {
        unsafe { join(self.0.gt(b.0), self.1.gt(b.1)) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn eq(self, b: Z2) -> u32 {
        unsafe { join(self.0.eq(b.0), self.1.eq(b.1)) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn ne(self, b: Z2) -> u32 {
        unsafe { join(self.0.ne(b.0), self.1.ne(b.1)) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn ordered(self) -> u32 {
        unsafe { join(self.0.ordered(), self.1.ordered()) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn and(a: u32, b: u32) -> u32 {
        a & b
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn or(a: u32, b: u32) -> u32 {
        a | b
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn sel(m: u32, a: Z2, b: Z2) -> Z2 {
        // SAFETY (both): AVX-512F, as the caller guarantees.
        unsafe {
            Z2(
                __m512::sel(m as __mmask16, a.0, b.0),
                __m512::sel((m >> 16) as __mmask16, a.1, b.1),
            )
        }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn any(m: u32) -> bool {
        m != 0
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn all(m: u32) -> bool {
        m == u32::MAX
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn round_clamp(self, lo: i32, hi: i32) -> Z2 {
        unsafe { Z2(self.0.round_clamp(lo, hi), self.1.round_clamp(lo, hi)) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn round_near(self) -> Z2 {
        unsafe { both!(self, round_near) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn max(self, b: Z2) -> Z2 {
        unsafe { both!(self, b, max) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn min(self, b: Z2) -> Z2 {
        unsafe { both!(self, b, min) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn bytes(self) -> [u8; 32] {
        let mut a = [0u8; 32];
        // SAFETY (both): AVX-512F, as the caller guarantees.
        unsafe {
            a[..16].copy_from_slice(&self.0.bytes());
            a[16..].copy_from_slice(&self.1.bytes());
        }
        a
    }
}

/// Two 16-lane masks as one of 32 lanes.
#[inline(always)]
fn join(lo: __mmask16, hi: __mmask16) -> u32 {
    u32::from(lo) | (u32::from(hi) << 16)
}

/// Four AVX-512 registers (two [`Z2`]) as one of 64 lanes: four independent chains of additions
/// side by side.
#[derive(Clone, Copy)]
pub(super) struct Z4(Z2, Z2);

/// `f` on both [`Z2`] halves of a [`Z4`].
macro_rules! halves {
    ($a:expr, $f:ident) => {
        Z4($a.0.$f(), $a.1.$f())
    };
    ($a:expr, $b:expr, $f:ident) => {
        Z4($a.0.$f($b.0), $a.1.$f($b.1))
    };
    (mask $a:expr, $b:expr, $f:ident) => {
        u64::from($a.0.$f($b.0)) | (u64::from($a.1.$f($b.1)) << 32)
    };
}

impl Wide<64> for Z4 {
    /// Lanes 0..32 in the low half, 32..64 in the high half.
    type Mask = u64;

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn splat(v: f32) -> Z4 {
        unsafe { Z4(Z2::splat(v), Z2::splat(v)) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load(a: &[f32; 64]) -> Z4 {
        let (lo, hi) = a.as_chunks::<32>().0.split_at(1);
        unsafe { Z4(Z2::load(&lo[0]), Z2::load(&hi[0])) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store(self) -> [f32; 64] {
        let mut a = [0f32; 64];
        unsafe {
            a[..32].copy_from_slice(&self.0.store());
            a[32..].copy_from_slice(&self.1.store());
        }
        a
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn add(self, b: Z4) -> Z4 {
        unsafe { halves!(self, b, add) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn sub(self, b: Z4) -> Z4 {
        unsafe { halves!(self, b, sub) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn mul(self, b: Z4) -> Z4 {
        unsafe { halves!(self, b, mul) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn div(self, b: Z4) -> Z4 {
        unsafe { halves!(self, b, div) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn abs(self) -> Z4 {
        unsafe { halves!(self, abs) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn neg(self) -> Z4 {
        unsafe { halves!(self, neg) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn lt(self, b: Z4) -> u64 {
        unsafe { halves!(mask self, b, lt) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn gt(self, b: Z4) -> u64 {
        unsafe { halves!(mask self, b, gt) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn eq(self, b: Z4) -> u64 {
        unsafe { halves!(mask self, b, eq) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn ne(self, b: Z4) -> u64 {
        unsafe { halves!(mask self, b, ne) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn ordered(self) -> u64 {
        unsafe { u64::from(self.0.ordered()) | (u64::from(self.1.ordered()) << 32) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn and(a: u64, b: u64) -> u64 {
        a & b
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn or(a: u64, b: u64) -> u64 {
        a | b
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn sel(m: u64, a: Z4, b: Z4) -> Z4 {
        unsafe {
            Z4(
                Z2::sel(m as u32, a.0, b.0),
                Z2::sel((m >> 32) as u32, a.1, b.1),
            )
        }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn any(m: u64) -> bool {
        m != 0
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn all(m: u64) -> bool {
        m == u64::MAX
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn round_clamp(self, lo: i32, hi: i32) -> Z4 {
        unsafe { Z4(self.0.round_clamp(lo, hi), self.1.round_clamp(lo, hi)) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn round_near(self) -> Z4 {
        unsafe { halves!(self, round_near) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn max(self, b: Z4) -> Z4 {
        unsafe { halves!(self, b, max) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn min(self, b: Z4) -> Z4 {
        unsafe { halves!(self, b, min) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn bytes(self) -> [u8; 64] {
        let mut a = [0u8; 64];
        unsafe {
            a[..32].copy_from_slice(&self.0.bytes());
            a[32..].copy_from_slice(&self.1.bytes());
        }
        a
    }
}
