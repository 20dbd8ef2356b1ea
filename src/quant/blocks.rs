//! Block loops of the block-scaled formats: mxfp8 (32 e4m3 codes per e8m0 scale) and nvfp4 (16
//! e2m1 codes, two per byte, per e4m3 scale times the tensor's f32 scale). Each block is decoded
//! or encoded from its own bytes and its scale byte, found through the swizzled layout.

use crate::cast::f8e4m3_to_f32;
use crate::error::Result;

use super::format::{Format, Precision};
use super::layout::{quant_error, QuantLayout, Span, BAND_ROWS};
use super::numeric::{
    abs_max, e2m1_from_f32, e4m3_from_clamped, e8m0_to_f32, mxfp8_exponent, E2M1,
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
    let (cols, block) = (layout.cols as u64, layout.format.block_len() as u64);
    let tensor = scales.tensor.unwrap_or(1.0);
    // kitchen's nvfp4 dequantize rounds the tensor scale to the output dtype first.
    let tensor_p = precision.round(tensor);
    let mut e = span.elements.start;
    let mut done = 0;
    while e < span.elements.end {
        let (row, col) = ((e / cols) as usize, e % cols);
        let b = (col / block) as usize;
        let n = (cols - col).min(block) as usize;
        let code_at = (row as u64 * layout.row_bytes() + b as u64 * layout.block_bytes()
            - span.codes.start) as usize;
        let scale_byte = block_scales[layout.scale_offset(span, row, b)];
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
                for (i, o) in out.iter_mut().enumerate() {
                    let byte = codes[code_at + i / 2];
                    let nibble = if i % 2 == 0 { byte >> 4 } else { byte & 0x0F };
                    *o = precision.round(E2M1[nibble as usize] * total);
                }
                if let Some(factors) = &scales.pre_quant {
                    let first = col as usize;
                    for (o, &f) in out.iter_mut().zip(&factors[first..first + n]) {
                        *o = precision.round(*o * f);
                    }
                }
            }
        }
        e += n as u64;
        done += n;
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
/// rows when the span ends at the last row.
pub(super) fn encode(
    layout: &QuantLayout,
    scales: &Scales,
    span: &Span,
    values: &[f32],
    codes: &mut [u8],
    block_scales: &mut [u8],
) -> Result<()> {
    let (cols, block) = (layout.cols, layout.format.block_len());
    let blocks = layout.stored_cols / block;
    let scale_cols = layout.scale_cols();
    let row_bytes = layout.row_bytes() as usize;
    let block_bytes = layout.block_bytes() as usize;
    let first_row = (span.elements.start / cols as u64) as usize;
    let end_row = first_row + (span.codes.end - span.codes.start) as usize / row_bytes;
    let tensor = scales.tensor.unwrap_or(1.0);
    let mut buf = [0f32; MAX_BLOCK];
    for row in first_row..end_row {
        let codes_row = &mut codes[(row - first_row) * row_bytes..][..row_bytes];
        if row >= layout.rows {
            codes_row.fill(0);
        }
        for b in 0..scale_cols {
            let at = layout.scale_offset(span, row, b);
            if row >= layout.rows || b >= blocks {
                block_scales[at] = 0;
                continue;
            }
            let start = b * block;
            let n = cols.saturating_sub(start).min(block);
            let src = &values[(row - first_row) * cols + start..][..n];
            buf[..n].copy_from_slice(src);
            buf[n..block].fill(0.0);
            let out = &mut codes_row[b * block_bytes..][..block_bytes];
            block_scales[at] = match layout.format {
                Format::Mxfp8 => encode_mxfp8(&buf[..block], out),
                _ => encode_nvfp4(&buf[..block], tensor, out),
            };
        }
    }
    if end_row == layout.stored_rows {
        // The last span also owns the band's rows past the stored ones.
        let band_end = end_row.div_ceil(BAND_ROWS) * BAND_ROWS;
        for row in end_row..band_end {
            for b in 0..scale_cols {
                block_scales[layout.scale_offset(span, row, b)] = 0;
            }
        }
    }
    Ok(())
}

/// kitchen's `quantize_mxfp8` for one block of 32: the power-of-two scale from the block's
/// maximum, values divided by it, clamped to ±448, converted by torch's e4m3 conversion. An
/// all-zero block gets scale byte 0 and +0 codes.
fn encode_mxfp8(x: &[f32], out: &mut [u8]) -> u8 {
    let amax = abs_max(x);
    if amax == 0.0 {
        out.fill(0);
        return 0;
    }
    let exponent = mxfp8_exponent(amax);
    let scale = e8m0_to_f32(exponent);
    for (o, &v) in out.iter_mut().zip(x) {
        let d = v / scale;
        *o = e4m3_from_clamped(d.clamp(-448.0, 448.0));
    }
    exponent
}

/// kitchen's `quantize_nvfp4` for one block of 16: the e4m3 block scale `amax / 6 / tensor`
/// (clamped to 448), values divided by `tensor · block scale`, clamped to ±6, rounded to e2m1 and
/// packed two per byte, the even element in the high nibble. A block whose total scale rounds to
/// 0 gets all-zero codes.
fn encode_nvfp4(x: &[f32], tensor: f32, out: &mut [u8]) -> u8 {
    let block = abs_max(x) / 6.0 / tensor;
    let code = e4m3_from_clamped(if block > 448.0 { 448.0 } else { block });
    let total = tensor * f8e4m3_to_f32(code);
    if total == 0.0 {
        out.fill(0);
        return code;
    }
    let q = |v: f32| {
        let d = v / total;
        e2m1_from_f32(d.clamp(-6.0, 6.0))
    };
    for (o, pair) in out.iter_mut().zip(x.chunks_exact(2)) {
        *o = (q(pair[0]) << 4) | q(pair[1]);
    }
    code
}
