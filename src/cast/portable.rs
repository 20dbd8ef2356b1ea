//! The portable conversion path: blocks of [`BLOCK`] elements converted through f32 scratch (or
//! byte-to-byte for the common pairs) and counted for NaN/Inf while still in L1. The SIMD kernels
//! of [`super::x86`] finish their tails here and are tested against it.

use half::{f16, slice::HalfFloatSliceExt};

use super::scalar::{
    f16_bits_to_f32_bits, f32_bits_to_bf16, f32_bits_to_f8e4m3, f32_bits_to_f8e5m2, f32_to_bf16,
    f32_to_f8e4m3, f32_to_f8e5m2, f64_to_f32_round_odd, f8e4m3_to_f32, f8e5m2_to_f32,
};
use super::{count_non_finite, width, BLOCK};
use crate::model::dtype::Dtype;

/// [`convert`] without the SIMD kernels, on checked arguments; also finishes the kernels' tails.
pub(super) fn convert_portable(src: &[u8], from: Dtype, dst: &mut [u8], to: Dtype) -> u64 {
    let (ss, ds) = (width(from), width(to));
    // Identity copies (most small tensors of a staged chunk) need no scratch at all.
    let mut scratch: Option<Scratch> = None;
    let mut count = 0;
    for (s, d) in src.chunks(BLOCK * ss).zip(dst.chunks_mut(BLOCK * ds)) {
        if from == to {
            d.copy_from_slice(s);
            count += count_non_finite(s, from);
        } else {
            convert_block(s, from, d, to, scratch.get_or_insert_with(Scratch::new));
            count += count_block(s, from);
        }
    }
    count
}

/// [`count_non_finite`] without the SIMD kernels; also finishes the kernels' tails.
pub(super) fn count_portable(src: &[u8], dtype: Dtype) -> u64 {
    src.chunks(BLOCK * width(dtype).max(1))
        .map(|b| count_block(b, dtype))
        .sum()
}

/// Per-call scratch: one block as f32 (the common intermediate) and as f16 (for `half`'s SIMD
/// encoder).
pub(super) struct Scratch {
    f32s: Box<[f32]>,
    f16s: Box<[f16]>,
}

impl Scratch {
    pub(super) fn new() -> Self {
        Scratch {
            f32s: vec![0.0; BLOCK].into_boxed_slice(),
            f16s: vec![f16::ZERO; BLOCK].into_boxed_slice(),
        }
    }
}

/// Maps `N`-byte source elements to `M`-byte destination elements.
#[inline(always)]
fn map_bytes<const N: usize, const M: usize>(
    src: &[u8],
    dst: &mut [u8],
    f: impl Fn([u8; N]) -> [u8; M],
) {
    let (s, _) = src.as_chunks::<N>();
    let (d, _) = dst.as_chunks_mut::<M>();
    for (d, s) in d.iter_mut().zip(s) {
        *d = f(*s);
    }
}

/// Converts one block of at most [`BLOCK`] elements; `from != to`, both in [`FLOATS`].
pub(super) fn convert_block(
    src: &[u8],
    from: Dtype,
    dst: &mut [u8],
    to: Dtype,
    scratch: &mut Scratch,
) {
    // Direct byte-to-byte loops for the common pairs that need no f32 scratch.
    match (from, to) {
        (Dtype::F32, Dtype::BF16) => {
            return map_bytes(src, dst, |b: [u8; 4]| {
                f32_bits_to_bf16(u32::from_le_bytes(b)).to_le_bytes()
            })
        }
        (Dtype::BF16, Dtype::F32) => {
            return map_bytes(src, dst, |b: [u8; 2]| {
                (u32::from(u16::from_le_bytes(b)) << 16).to_le_bytes()
            })
        }
        (Dtype::F32, Dtype::F8_E4M3) => {
            return map_bytes(src, dst, |b: [u8; 4]| {
                [f32_bits_to_f8e4m3(u32::from_le_bytes(b))]
            })
        }
        (Dtype::F32, Dtype::F8_E5M2) => {
            return map_bytes(src, dst, |b: [u8; 4]| {
                [f32_bits_to_f8e5m2(u32::from_le_bytes(b))]
            })
        }
        (Dtype::F16, Dtype::F32) => {
            return map_bytes(src, dst, |b: [u8; 2]| {
                f16_bits_to_f32_bits(u16::from_le_bytes(b)).to_le_bytes()
            })
        }
        (Dtype::F64, Dtype::F32) => {
            return map_bytes(src, dst, |b: [u8; 8]| {
                (f64::from_le_bytes(b) as f32).to_le_bytes()
            })
        }
        _ => {}
    }
    let n = src.len() / width(from);
    let Scratch { f32s, f16s } = scratch;
    let f32s = &mut f32s[..n];
    let f16s = &mut f16s[..n];
    decode(src, from, f32s);
    encode(f32s, f16s, dst, to);
}

/// Decodes `src` into `out` (exact, except F64 which is rounded to odd for the second rounding).
fn decode(src: &[u8], from: Dtype, out: &mut [f32]) {
    fn each<const N: usize>(src: &[u8], out: &mut [f32], f: impl Fn([u8; N]) -> f32) {
        for (o, s) in out.iter_mut().zip(src.as_chunks::<N>().0) {
            *o = f(*s);
        }
    }
    match from {
        Dtype::F32 => each(src, out, f32::from_le_bytes),
        Dtype::F16 => each(src, out, |b: [u8; 2]| {
            f32::from_bits(f16_bits_to_f32_bits(u16::from_le_bytes(b)))
        }),
        Dtype::BF16 => each(src, out, |b: [u8; 2]| {
            f32::from_bits(u32::from(u16::from_le_bytes(b)) << 16)
        }),
        Dtype::F8_E4M3 => each(src, out, |[b]: [u8; 1]| f8e4m3_to_f32(b)),
        Dtype::F8_E5M2 => each(src, out, |[b]: [u8; 1]| f8e5m2_to_f32(b)),
        Dtype::F64 => each(src, out, |b: [u8; 8]| {
            f64_to_f32_round_odd(f64::from_le_bytes(b))
        }),
        // Unreachable: `convert` admits only FLOATS here.
        _ => {}
    }
}

/// Encodes `vals` into `dst` with one round-to-nearest-even (saturating for fp8).
fn encode(vals: &[f32], f16s: &mut [f16], dst: &mut [u8], to: Dtype) {
    fn each<const M: usize>(vals: &[f32], dst: &mut [u8], f: impl Fn(f32) -> [u8; M]) {
        for (d, v) in dst.as_chunks_mut::<M>().0.iter_mut().zip(vals) {
            *d = f(*v);
        }
    }
    match to {
        Dtype::F32 => each(vals, dst, f32::to_le_bytes),
        Dtype::F16 => {
            f16s.convert_from_f32_slice(vals);
            for (d, h) in dst.as_chunks_mut::<2>().0.iter_mut().zip(f16s.iter()) {
                *d = h.to_le_bytes();
            }
        }
        Dtype::BF16 => each(vals, dst, |v| f32_to_bf16(v).to_le_bytes()),
        Dtype::F8_E4M3 => each(vals, dst, |v| [f32_to_f8e4m3(v)]),
        Dtype::F8_E5M2 => each(vals, dst, |v| [f32_to_f8e5m2(v)]),
        Dtype::F64 => each(vals, dst, |v| f64::from(v).to_le_bytes()),
        // Unreachable: `convert` admits only FLOATS here.
        _ => {}
    }
}

/// Counts elements of `src` matching `pred`; `src` is at most a few blocks, so a `u32` lane sum
/// cannot overflow and keeps the loop vectorised at full width.
#[inline(always)]
fn count_where<const N: usize>(src: &[u8], pred: impl Fn([u8; N]) -> bool) -> u64 {
    let sum: u32 = src
        .as_chunks::<N>()
        .0
        .iter()
        .map(|e| u32::from(pred(*e)))
        .sum();
    u64::from(sum)
}

/// NaN/Inf count of one block (at most [`BLOCK`] elements).
pub(super) fn count_block(src: &[u8], dtype: Dtype) -> u64 {
    match dtype {
        Dtype::F32 => count_where(src, |b: [u8; 4]| {
            (u32::from_le_bytes(b) & 0x7fff_ffff) >= 0x7f80_0000
        }),
        Dtype::F64 => count_where(src, |b: [u8; 8]| {
            (u64::from_le_bytes(b) & 0x7fff_ffff_ffff_ffff) >= 0x7ff0_0000_0000_0000
        }),
        Dtype::F16 => count_where(src, |b: [u8; 2]| (u16::from_le_bytes(b) & 0x7fff) >= 0x7c00),
        Dtype::BF16 => count_where(src, |b: [u8; 2]| (u16::from_le_bytes(b) & 0x7fff) >= 0x7f80),
        Dtype::F8_E4M3 => count_where(src, |[b]: [u8; 1]| (b & 0x7f) == 0x7f),
        Dtype::F8_E5M2 => count_where(src, |[b]: [u8; 1]| (b & 0x7f) >= 0x7c),
        Dtype::F8_E4M3FNUZ | Dtype::F8_E5M2FNUZ => count_where(src, |[b]: [u8; 1]| b == 0x80),
        Dtype::F8_E8M0 => count_where(src, |[b]: [u8; 1]| b == 0xff),
        Dtype::C64 => count_where(src, |b: [u8; 8]| {
            let v = u64::from_le_bytes(b);
            let (re, im) = (v as u32, (v >> 32) as u32);
            ((re & 0x7fff_ffff) >= 0x7f80_0000) | ((im & 0x7fff_ffff) >= 0x7f80_0000)
        }),
        _ => 0,
    }
}
