//! Block loops of the block-scaled formats: mxfp8 (32 e4m3 codes per e8m0 scale) and nvfp4 (16
//! e2m1 codes, two per byte, per e4m3 scale times the tensor's f32 scale). Each block is decoded
//! or encoded from its own bytes and its scale byte, found through the swizzled layout.

use crate::cast::f8e4m3_to_f32;
use crate::error::Result;

use super::format::{Format, Precision};
use super::layout::{quant_error, QuantLayout, Span, BAND_ROWS};
use super::numeric::{
    abs_max, e2m1_from_f32, e4m3_from_clamped, e8m0_to_f32, mxfp8_exponent, swizzled, E2M1,
};
use super::scales::Scales;

/// Largest block of any format, for stack buffers.
const MAX_BLOCK: usize = 32;

/// Decodes a read span (see [`QuantLayout::read_span`]) of an mxfp8 or nvfp4 tensor.
pub(super) fn decode(
    layout: &QuantLayout,
    scales: &Scales,
    precision: Precision,
    span: &Span,
    codes: &[u8],
    block_scales: &[u8],
    out: &mut [f32],
) -> Result<()> {
    let (cols, block) = (layout.cols, layout.format.block_len());
    let (row_bytes, block_bytes) = (layout.row_bytes() as usize, layout.block_bytes() as usize);
    let (scale_cols, band_start) = (layout.scale_cols(), span.block_scales.start as usize);
    let tensor = scales.tensor.unwrap_or(1.0);
    // kitchen's nvfp4 dequantize rounds the tensor scale to the output dtype first.
    let tensor_p = precision.round(tensor);
    // Walk block by block with counters: no division per block.
    let (mut row, mut col) = (
        (span.elements.start / cols as u64) as usize,
        (span.elements.start % cols as u64) as usize,
    );
    let mut done = 0;
    while done < out.len() {
        let b = col / block;
        let n = (cols - col).min(block);
        let code_at = row * row_bytes + b * block_bytes - span.codes.start as usize;
        let scale_byte = block_scales[swizzled(row, b, scale_cols) - band_start];
        let out = &mut out[done..done + n];
        match layout.format {
            Format::Mxfp8 => {
                if scale_byte == 0xFF {
                    return Err(bad_scale(layout, row, b, "the e8m0 NaN (0xFF)"));
                }
                let s = e8m0_to_f32(scale_byte);
                for (o, &c) in out.iter_mut().zip(&codes[code_at..code_at + n]) {
                    *o = precision.round(f8e4m3_to_f32(c) * s);
                }
            }
            _ => {
                if scale_byte & 0x80 != 0 || scale_byte & 0x7F == 0x7F {
                    return Err(bad_scale(layout, row, b, &format!("{scale_byte:#04x}")));
                }
                let bs = f8e4m3_to_f32(scale_byte);
                let total = match precision {
                    Precision::F32 => tensor * bs,
                    p => p.round(tensor_p * bs),
                };
                // A value is a function of its nibble alone within the block: look it up.
                let table: [f32; 16] = std::array::from_fn(|i| precision.round(E2M1[i] * total));
                let bytes = &codes[code_at..code_at + n.div_ceil(2)];
                for (pair, &byte) in out.chunks_exact_mut(2).zip(bytes) {
                    pair[0] = table[usize::from(byte >> 4)];
                    pair[1] = table[usize::from(byte & 0x0F)];
                }
                if n % 2 == 1 {
                    out[n - 1] = table[usize::from(bytes[n / 2] >> 4)];
                }
                if let Some(factors) = &scales.pre_quant {
                    for (o, &f) in out.iter_mut().zip(&factors[col..col + n]) {
                        *o = precision.round(*o * f);
                    }
                }
            }
        }
        done += n;
        col += n;
        if col == cols {
            (row, col) = (row + 1, 0);
        }
    }
    Ok(())
}

fn bad_scale(layout: &QuantLayout, row: usize, block: usize, what: &str) -> crate::Error {
    quant_error(
        &layout.layer,
        format!(
            "the block scale of row {row}, block {block} is {what}: block scales must be finite \
             and not negative; the file is damaged"
        ),
    )
}

/// Checks every block scale of a tensor (all of its block-scale member's bytes): no NaN, and for
/// nvfp4 no negative scale.
pub(super) fn check_block_scales(layout: &QuantLayout, bytes: &[u8]) -> Result<()> {
    let bad = |i: usize, b: u8| {
        quant_error(
            &layout.layer,
            format!(
                "block scale byte {i} of `{}.weight_scale` is {b:#04x}, {}: block scales must be \
                 finite and not negative; the file is damaged",
                layout.layer,
                if layout.format == Format::Mxfp8 {
                    "the e8m0 NaN"
                } else if b & 0x7F == 0x7F {
                    "an e4m3 NaN"
                } else {
                    "negative"
                }
            ),
        )
    };
    let nvfp4 = layout.format == Format::Nvfp4;
    match bytes.iter().position(|&b| {
        if nvfp4 {
            b & 0x80 != 0 || b == 0x7F
        } else {
            b == 0xFF
        }
    }) {
        Some(i) => Err(bad(i, bytes[i])),
        None => Ok(()),
    }
}

/// Encodes a write span (see [`QuantLayout::write_span`]): whole logical rows, plus the padding
/// rows when the span ends at the last row. With `codes` `None` only the block scales are
/// computed (the same bytes: each block's scale is a function of its maximum alone).
///
/// Rows are independent: each is encoded into its codes and its row of block scales (row-major
/// first), then the scales are scattered into the swizzled layout.
///
/// Serial on purpose: the writer's fill workers already keep every core busy, and they are
/// long-running jobs of one rayon pool, where a nested parallel loop's waiting thread could pick
/// up another long-running job (the reduction prefetcher, which waits for the workers) and stall.
pub(super) fn encode(
    layout: &QuantLayout,
    scales: &Scales,
    span: &Span,
    values: &[f32],
    codes: Option<&mut [u8]>,
    block_scales: &mut [u8],
) -> Result<()> {
    let cols = layout.cols;
    let blocks = layout.stored_cols / layout.format.block_len();
    let scale_cols = layout.scale_cols();
    let row_bytes = layout.row_bytes() as usize;
    let first_row = (span.elements.start / cols as u64) as usize;
    let end_row = first_row + (span.codes.end - span.codes.start) as usize / row_bytes;
    let value_rows = end_row.min(layout.rows).saturating_sub(first_row);
    let encoder = RowEncoder {
        format: layout.format,
        cols,
        tensor: scales.tensor.unwrap_or(1.0),
    };
    let mut row_scales = vec![0u8; value_rows * blocks];
    match codes {
        Some(codes) => {
            // Padding rows: zero codes.
            codes[value_rows * row_bytes..].fill(0);
            codes[..value_rows * row_bytes]
                .chunks_mut(row_bytes)
                .zip(row_scales.chunks_mut(blocks))
                .zip(values.chunks(cols))
                .for_each(|((c, s), v)| encoder.row(v, Some(c), s));
        }
        None => {
            for (s, v) in row_scales.chunks_mut(blocks).zip(values.chunks(cols)) {
                encoder.row(v, None, s);
            }
        }
    }
    // The last span also owns the band's rows past the stored ones: zero scales there.
    let band_end = if end_row == layout.stored_rows {
        end_row.div_ceil(BAND_ROWS) * BAND_ROWS
    } else {
        end_row
    };
    for row in first_row..band_end {
        let here = row - first_row;
        for b in 0..scale_cols {
            block_scales[layout.scale_offset(span, row, b)] = if here < value_rows && b < blocks {
                row_scales[here * blocks + b]
            } else {
                0
            };
        }
    }
    Ok(())
}

/// Encodes one logical row of a block format.
#[derive(Clone, Copy)]
struct RowEncoder {
    format: Format,
    cols: usize,
    tensor: f32,
}

impl RowEncoder {
    /// Encodes `values` (one row, `cols` values) into its block scales `scales` (one byte per
    /// stored block) and, if asked, its codes `codes` (the stored row's bytes). A partial last
    /// block is padded with zeros, as kitchen pads.
    #[inline]
    fn row(&self, values: &[f32], mut codes: Option<&mut [u8]>, scales: &mut [u8]) {
        let block = self.format.block_len();
        let block_bytes = match self.format {
            Format::Mxfp8 => block,
            _ => block / 2,
        };
        let mut buf = [0f32; MAX_BLOCK];
        for (b, scale_out) in scales.iter_mut().enumerate() {
            let start = b * block;
            let n = self.cols.saturating_sub(start).min(block);
            let x = if n == block {
                &values[start..start + block]
            } else {
                buf[..n].copy_from_slice(&values[start..start + n]);
                buf[n..block].fill(0.0);
                &buf[..block]
            };
            let scale = block_scale(self.format, abs_max(x), self.tensor);
            *scale_out = scale;
            if let Some(c) = codes.as_deref_mut() {
                let out = &mut c[b * block_bytes..][..block_bytes];
                match self.format {
                    Format::Mxfp8 => encode_mxfp8(x, scale, out),
                    _ => encode_nvfp4(x, self.tensor, scale, out),
                }
            }
        }
    }
}

/// The scale byte of a block whose absolute maximum is `amax`: mxfp8's e8m0 exponent (0 for an
/// all-zero block), nvfp4's e4m3 `amax / 6 / tensor` clamped to 448.
fn block_scale(format: Format, amax: f32, tensor: f32) -> u8 {
    match format {
        Format::Mxfp8 if amax == 0.0 => 0,
        Format::Mxfp8 => mxfp8_exponent(amax),
        _ => {
            let block = amax / 6.0 / tensor;
            e4m3_from_clamped(if block > 448.0 { 448.0 } else { block })
        }
    }
}

/// kitchen's `quantize_mxfp8` for one block of 32 whose scale byte is `exponent`: the values
/// divided by the power of two, clamped to ±448, converted by torch's e4m3 conversion. An
/// all-zero block (scale byte 0) gets +0 codes.
fn encode_mxfp8(x: &[f32], exponent: u8, out: &mut [u8]) {
    if exponent == 0 {
        if abs_max(x) == 0.0 {
            out.fill(0);
            return;
        }
        // Scale byte 0 stands for 0: kitchen divides by zero (±Inf, or NaN for zeros).
        for (o, &v) in out.iter_mut().zip(x) {
            *o = e4m3_from_clamped((v / 0.0).clamp(-448.0, 448.0));
        }
        return;
    }
    // Dividing by 2^k and multiplying by 2^-k (exact: k is in -126..=127) round the same real
    // number, so they give the same f32; the product vectorises.
    let inverse = power_of_two_inverse(exponent);
    for (o, &v) in out.iter_mut().zip(x) {
        *o = e4m3_from_clamped((v * inverse).clamp(-448.0, 448.0));
    }
}

/// `1 / e8m0_to_f32(exponent)` for exponent bytes 1..=254: `2^(127 - e)`, subnormal for 254.
fn power_of_two_inverse(exponent: u8) -> f32 {
    match exponent {
        254 => f32::from_bits(0x0040_0000), // 2^-127
        e => f32::from_bits(u32::from(254 - e) << 23),
    }
}

/// Values per nvfp4 block.
const NVFP4_BLOCK: usize = 16;

/// kitchen's `quantize_nvfp4` for one block of 16 whose e4m3 scale byte is `code`: values
/// divided by `tensor · block scale`, clamped to ±6, rounded to e2m1 and packed two per byte,
/// the even element in the high nibble. A block whose total scale rounds to 0 gets all-zero
/// codes.
///
/// The 16 lanes are rounded first and packed after, so the division and the compares of
/// [`e2m1_from_f32`] run as vector operations; the clamp is left out because every |x| > 5
/// rounds to 6 anyway (and a NaN passes a clamp unchanged).
fn encode_nvfp4(x: &[f32], tensor: f32, code: u8, out: &mut [u8]) {
    let total = tensor * f8e4m3_to_f32(code);
    if total == 0.0 {
        out.fill(0);
        return;
    }
    // Fixed lengths (a block, its bytes) let the compiler drop the bounds checks and unroll.
    let (x, out) = (&x[..NVFP4_BLOCK], &mut out[..NVFP4_BLOCK / 2]);
    let q: [u8; NVFP4_BLOCK] = std::array::from_fn(|i| e2m1_from_f32(x[i] / total));
    for (i, o) in out.iter_mut().enumerate() {
        *o = (q[2 * i] << 4) | q[2 * i + 1];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiplying_by_the_inverse_power_of_two_equals_dividing() {
        let xs = [1.0f32, -3.5, 447.9, 1e-38, -2.7e-45, 3.4e38, 0.1, -0.0];
        for e in 1..=254u8 {
            let (scale, inverse) = (e8m0_to_f32(e), power_of_two_inverse(e));
            assert_eq!(inverse, 1.0 / scale, "exponent {e}");
            for x in xs {
                assert_eq!((x * inverse).to_bits(), (x / scale).to_bits(), "{x} at {e}");
            }
        }
    }
}
