//! The plain float types and ggml's one-pass block formats: Q4_0, Q4_1, Q5_0, Q5_1 (4- and 5-bit
//! codes with an f16 scale, and an f16 minimum for the `_1` types) and Q8_0.
//!
//! Each encoder is `quantize_row_*_ref` of `ggml-quants.c` for one block of 32: the scale from
//! the block's absolute maximum (keeping its sign: `max / -8`) or range (`(max − min) / 15`),
//! values multiplied by its f32 reciprocal, then truncated after adding `8.5` / `16.5` / `0.5`
//! (Q8_0 rounds half away from zero). Each decoder is `dequantize_row_*`.

use super::{f16_at, f16_bytes};

#[inline(always)]
pub(super) fn decode_f32(codes: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(codes.chunks_exact(4)) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

#[inline(always)]
pub(super) fn encode_f32(values: &[f32], codes: &mut [u8]) {
    for (v, b) in values.iter().zip(codes.chunks_exact_mut(4)) {
        b.copy_from_slice(&v.to_le_bytes());
    }
}

#[inline(always)]
pub(super) fn decode_f16(codes: &[u8], out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = f16_at(codes, 2 * i);
    }
}

/// numpy's `astype(np.float16)` (what gguf-py writes): round to nearest even, overflow to
/// infinity, subnormals exact; NaN stays a quiet NaN with its sign.
#[inline(always)]
pub(super) fn encode_f16(values: &[f32], codes: &mut [u8]) {
    for (v, b) in values.iter().zip(codes.chunks_exact_mut(2)) {
        b.copy_from_slice(&f16_bytes(*v));
    }
}

#[inline(always)]
pub(super) fn decode_bf16(codes: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(codes.chunks_exact(2)) {
        *o = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
    }
}

/// `ggml_compute_fp32_to_bf16` (and gguf-py's BF16 quantizer): NaN keeps its sign and top
/// payload bits and is made quiet; everything else rounds to nearest even.
#[inline(always)]
pub(super) fn bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

#[inline(always)]
pub(super) fn encode_bf16(values: &[f32], codes: &mut [u8]) {
    for (v, b) in values.iter().zip(codes.chunks_exact_mut(2)) {
        b.copy_from_slice(&bf16_bits(*v).to_le_bytes());
    }
}

/// The value of largest magnitude, the first one on ties (what `amax < fabsf(v)` keeps).
#[inline(always)]
fn signed_abs_max(x: &[f32; 32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// `min` and `max` as ggml's loops find them (`v < min`, `v > max` from ±FLT_MAX).
#[inline(always)]
fn min_max(x: &[f32; 32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// C's conversion of a float to an integer as x86-64 performs it (`cvttss2si`): truncation
/// toward zero, and `0x8000_0000` for NaN and values outside the `int` range; the callers keep
/// the low byte, as C's narrowing does. ggml reaches those values when a block's reciprocal scale
/// overflows to infinity (a block of f32 subnormals, whose scale underflows to 0 in f16 anyway).
#[inline(always)]
fn c_trunc(v: f32) -> i32 {
    if (-2_147_483_648.0..2_147_483_648.0).contains(&v) {
        v as i32
    } else {
        i32::MIN
    }
}

/// `d ? 1.0f/d : 0.0f`.
#[inline(always)]
fn reciprocal(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

#[inline(always)]
pub(super) fn decode_q4_0(b: &[u8; 18], out: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        out[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
        out[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

#[inline(always)]
pub(super) fn encode_q4_0(x: &[f32; 32], b: &mut [u8; 18]) {
    let d = signed_abs_max(x) / -8.0;
    let id = reciprocal(d);
    b[0..2].copy_from_slice(&f16_bytes(d));
    // `MIN(15, (int8_t)(x0 + 8.5f))`
    let q = |v: f32| (c_trunc(v * id + 8.5) as i8).min(15) as u8;
    for j in 0..16 {
        b[2 + j] = q(x[j]) | (q(x[j + 16]) << 4);
    }
}

#[inline(always)]
pub(super) fn decode_q4_1(b: &[u8; 20], out: &mut [f32; 32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for j in 0..16 {
        let q = b[4 + j];
        out[j] = (q & 0x0F) as f32 * d + m;
        out[j + 16] = (q >> 4) as f32 * d + m;
    }
}

#[inline(always)]
pub(super) fn encode_q4_1(x: &[f32; 32], b: &mut [u8; 20]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = reciprocal(d);
    b[0..2].copy_from_slice(&f16_bytes(d));
    b[2..4].copy_from_slice(&f16_bytes(min));
    let q = |v: f32| (c_trunc((v - min) * id + 0.5) as i8).min(15) as u8;
    for j in 0..16 {
        b[4 + j] = q(x[j]) | (q(x[j + 16]) << 4);
    }
}

/// The 5-bit codes of a Q5 block: low nibbles from `qs`, fifth bits from the u32 `qh`.
#[inline(always)]
fn q5_codes(qh: &[u8], qs: &[u8], j: usize) -> (u8, u8) {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let lo = (qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
    let hi = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    (lo, hi)
}

/// Packs 5-bit codes: the low nibbles of `q[j]` and `q[j + 16]` into `qs[j]`, the fifth bits
/// into the u32 `qh` (bit `j` and bit `j + 16`).
#[inline(always)]
fn pack_q5(q: &[u8; 32], qh: &mut [u8], qs: &mut [u8]) {
    let mut bits = 0u32;
    for j in 0..16 {
        qs[j] = (q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4);
        bits |= u32::from((q[j] & 0x10) >> 4) << j;
        bits |= u32::from((q[j + 16] & 0x10) >> 4) << (j + 16);
    }
    qh.copy_from_slice(&bits.to_le_bytes());
}

#[inline(always)]
pub(super) fn decode_q5_0(b: &[u8; 22], out: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let (lo, hi) = q5_codes(&b[2..6], &b[6..], j);
        out[j] = (lo as i32 - 16) as f32 * d;
        out[j + 16] = (hi as i32 - 16) as f32 * d;
    }
}

#[inline(always)]
pub(super) fn encode_q5_0(x: &[f32; 32], b: &mut [u8; 22]) {
    let d = signed_abs_max(x) / -16.0;
    let id = reciprocal(d);
    b[0..2].copy_from_slice(&f16_bytes(d));
    let mut q = [0u8; 32];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (c_trunc(v * id + 16.5) as i8).min(31) as u8;
    }
    let (qh, qs) = b[2..].split_at_mut(4);
    pack_q5(&q, qh, qs);
}

#[inline(always)]
pub(super) fn decode_q5_1(b: &[u8; 24], out: &mut [f32; 32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for j in 0..16 {
        let (lo, hi) = q5_codes(&b[4..8], &b[8..], j);
        out[j] = lo as f32 * d + m;
        out[j + 16] = hi as f32 * d + m;
    }
}

#[inline(always)]
pub(super) fn encode_q5_1(x: &[f32; 32], b: &mut [u8; 24]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = reciprocal(d);
    b[0..2].copy_from_slice(&f16_bytes(d));
    b[2..4].copy_from_slice(&f16_bytes(min));
    let mut q = [0u8; 32];
    for (q, &v) in q.iter_mut().zip(x) {
        // `(uint8_t)(x0 + 0.5f)`: no clamp in ggml.
        *q = c_trunc((v - min) * id + 0.5) as u8;
    }
    let (qh, qs) = b[4..].split_at_mut(4);
    pack_q5(&q, qh, qs);
}

#[inline(always)]
pub(super) fn decode_q8_0(b: &[u8; 34], out: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..]) {
        *o = q as i8 as f32 * d;
    }
}

#[inline(always)]
pub(super) fn encode_q8_0(x: &[f32; 32], b: &mut [u8; 34]) {
    let mut amax = 0f32;
    for &v in x {
        // `MAX(amax, fabsf(v))`
        let a = v.abs();
        amax = if amax > a { amax } else { a };
    }
    let d = amax / 127.0;
    let id = reciprocal(d);
    b[0..2].copy_from_slice(&f16_bytes(d));
    for (q, &v) in b[2..].iter_mut().zip(x) {
        // `roundf` (half away from zero, as Rust's `round`), then C's conversion to int8.
        *q = c_trunc((v * id).round()) as u8;
    }
}
