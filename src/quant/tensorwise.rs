//! Block loops of the per-tensor formats (fp8 with one scale, int8 with one scale per tensor or
//! per row): one code per value, so any element range is a span.
//!
//! Decoding builds a 256-entry table of the values each code decodes to (the arithmetic is a
//! function of the code alone), so the loop over codes is a table lookup.

use super::format::{Fp8, Precision};
use super::numeric::{e4m3_from_clamped, e5m2_from_clamped, round_bf16, round_f16};

/// kitchen's `dequantize_per_tensor_fp8(x, scale, out)`: `x.to(out) * scale.to(out)` in the
/// output precision (ComfyUI's legacy scaled fp8 computes the same).
pub(super) fn decode_fp8(
    fp8: Fp8,
    scale: f32,
    precision: Precision,
    codes: &[u8],
    out: &mut [f32],
) {
    let s = precision.round(scale);
    let table: [f32; 256] = std::array::from_fn(|c| precision.round(fp8.decode(c as u8) * s));
    lookup(&table, codes, out);
}

/// kitchen's `dequantize_int8_simple_dtype`: `q.float() * scale`, then cast to the output dtype.
pub(super) fn decode_int8(scale: f32, precision: Precision, codes: &[u8], out: &mut [f32]) {
    let table: [f32; 256] =
        std::array::from_fn(|c| precision.round(f32::from(c as u8 as i8) * scale));
    lookup(&table, codes, out);
}

/// [`decode_int8`] with one scale per row: `first` is the logical index of `codes[0]`.
pub(super) fn decode_int8_rows(
    rows: &[f32],
    cols: usize,
    first: u64,
    precision: Precision,
    codes: &[u8],
    out: &mut [f32],
) {
    for_each_row(cols, first, codes.len(), |row, range| {
        let s = rows[row];
        for (o, &c) in out[range.clone()].iter_mut().zip(&codes[range]) {
            *o = precision.round(f32::from(c as i8) * s);
        }
    });
}

fn lookup(table: &[f32; 256], codes: &[u8], out: &mut [f32]) {
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = table[c as usize];
    }
}

/// Calls `f(row, local range)` for each row's part of `len` elements starting at `first`.
fn for_each_row(
    cols: usize,
    first: u64,
    len: usize,
    mut f: impl FnMut(usize, std::ops::Range<usize>),
) {
    let cols = cols as u64;
    let mut done = 0usize;
    while done < len {
        let e = first + done as u64;
        let row = (e / cols) as usize;
        let n = (((e / cols) + 1) * cols - e).min((len - done) as u64) as usize;
        f(row, done..done + n);
        done += n;
    }
}

/// kitchen's `quantize_per_tensor_fp8(x, scale, fp8)`: `x * (1 / scale).to(x.dtype)` rounded to
/// the input's dtype, clamped to ±max (NaN stays), converted by torch's fp8 conversion.
pub(super) fn encode_fp8(
    fp8: Fp8,
    scale: f32,
    precision: Precision,
    values: &[f32],
    codes: &mut [u8],
) {
    // One loop per (fp8 type, precision): no per-value dispatch, so each loop vectorises.
    match fp8 {
        Fp8::E4M3 => encode_fp8_with(
            e4m3_from_clamped,
            fp8.max(),
            scale,
            precision,
            values,
            codes,
        ),
        Fp8::E5M2 => encode_fp8_with(
            e5m2_from_clamped,
            fp8.max(),
            scale,
            precision,
            values,
            codes,
        ),
    }
}

#[inline(always)]
fn encode_fp8_with(
    encode: impl Fn(f32) -> u8 + Copy,
    max: f32,
    scale: f32,
    precision: Precision,
    values: &[f32],
    codes: &mut [u8],
) {
    let inv = fp8_factor(scale, precision);
    // f32::clamp keeps NaN, as torch.clamp does.
    let clamp = |t: f32| t.clamp(-max, max);
    match precision {
        Precision::F32 => {
            for (c, &x) in codes.iter_mut().zip(values) {
                *c = encode(clamp(x * inv));
            }
        }
        Precision::Bf16 => {
            for (c, &x) in codes.iter_mut().zip(values) {
                *c = encode(clamp(round_bf16(x * inv)));
            }
        }
        Precision::F16 => {
            for (c, &x) in codes.iter_mut().zip(values) {
                *c = encode(clamp(round_f16(x * inv)));
            }
        }
    }
}

/// The factor kitchen's fp8 quantizer multiplies by: `(1 / scale).to(x.dtype)`.
pub(crate) fn fp8_factor(scale: f32, precision: Precision) -> f32 {
    precision.round(1.0 / scale)
}

/// The scale kitchen's `_int8_scale_for_math` divides by: the scale in the input's dtype, its
/// smallest normal value where that is 0.
pub(crate) fn int8_divisor(scale: f32, precision: Precision) -> f32 {
    let s = precision.round(scale);
    if s != 0.0 {
        s
    } else if precision == Precision::F16 {
        6.103_515_6e-5 // torch.finfo(float16).tiny, 2^-14
    } else {
        f32::MIN_POSITIVE // f32's and bf16's tiny, 2^-126
    }
}

/// One value of kitchen's `quantize_int8_tensorwise`: `x / s` rounded to the input's dtype, then
/// rounded half to even and clamped to -128..=127; NaN becomes 0 as torch's cast gives it.
#[inline(always)]
fn int8_code(x: f32, divisor: f32, precision: Precision) -> u8 {
    /// 1.5 · 2^23: adding and subtracting it rounds |q| ≤ 2^22 to an integer, ties to even,
    /// inline (`round_ties_even` can be a library call per value).
    const ROUND: f32 = 12_582_912.0;
    // Clamping to ±256 first changes no result of the final clamp to -128..=127.
    let q = precision.round(x / divisor).clamp(-256.0, 256.0);
    let q = (q + ROUND) - ROUND;
    // `as` saturates and maps NaN to 0, like torch's float-to-int8 conversion after the clamp.
    (q.clamp(-128.0, 127.0) as i8) as u8
}

/// kitchen's `quantize_int8_tensorwise` with a given scale.
pub(super) fn encode_int8(scale: f32, precision: Precision, values: &[f32], codes: &mut [u8]) {
    let divisor = int8_divisor(scale, precision);
    for (c, &x) in codes.iter_mut().zip(values) {
        *c = int8_code(x, divisor, precision);
    }
}

/// kitchen's `quantize_int8_rowwise` arithmetic with given row scales; `first` is the logical
/// index of `values[0]`.
pub(super) fn encode_int8_rows(
    rows: &[f32],
    cols: usize,
    first: u64,
    precision: Precision,
    values: &[f32],
    codes: &mut [u8],
) {
    for_each_row(cols, first, values.len(), |row, range| {
        let divisor = int8_divisor(rows[row], precision);
        for (c, &x) in codes[range.clone()].iter_mut().zip(&values[range]) {
            *c = int8_code(x, divisor, precision);
        }
    });
}
