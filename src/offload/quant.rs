//! Quantized tensors in the fill: values decoded from codes and scales where a job needs them,
//! and quantized outputs encoded from their sources' values.
//!
//! Decoding reads only the bytes that hold the asked range ([`QuantLayout::read_span`]): codes
//! and, for block formats, the block-scale bands, which a worker keeps while it walks a band.
//! Encoding reads the source's values for whole rows (block formats) or the asked elements, and
//! asks the target for its scales, which the first filler of the tensor computes
//! ([`QuantTarget::scales`]).

use std::ops::Range;
use std::sync::Arc;

use super::ggml_device::GgmlLaunch;
use super::Scratch;
use crate::cast;
use crate::error::{Error, Result};
use crate::model::dtype::Dtype;
use crate::model::QuantTensor;
use crate::plan::{Piece, PieceSource, QuantTarget};
use crate::quant::{Format, GgmlType, Precision, QuantLayout, Role, BAND_ROWS};
use crate::reduce::{Values, CHUNK};

/// Per-worker buffers of the quantized fills, and the block-scale bytes last read.
#[derive(Default)]
pub(crate) struct QuantScratch {
    codes: Vec<u8>,
    scales: Vec<u8>,
    values: Vec<f32>,
    decoded: Vec<f32>,
    /// `(tensor, byte range)` of the block scales in `scales`, reused while a worker stays in
    /// the same bands.
    cached: Option<(usize, Range<u64>)>,
}

/// Fills `out` with elements `elements` of `q`'s values in `dst`; returns their NaN/Inf count.
pub(super) fn fill_dequant(
    q: &QuantTensor,
    name: &str,
    elements: Range<usize>,
    out: &mut [u8],
    dst: Dtype,
    scratch: &mut Scratch,
) -> Result<u64> {
    let layout = q.layout();
    let precision = Precision::of_output(dst);
    let dw = crate::plan::unit_width(dst);
    let id = q as *const QuantTensor as usize;
    let [code_pieces, scale_pieces] = q.raw_pieces()?;
    let mut count = 0;
    let mut at = elements.start;
    while at < elements.end {
        let n = (elements.end - at).min(CHUNK);
        let span = layout.read_span(at as u64..(at + n) as u64)?;
        let s = &mut scratch.quant;
        s.codes.resize(len(&span.codes), 0);
        read_raw(code_pieces, span.codes.clone(), &mut s.codes)?;
        let cached = s.cached.as_ref().is_some_and(|(t, r)| {
            *t == id && r.start <= span.block_scales.start && span.block_scales.end <= r.end
        });
        if !cached {
            s.scales.resize(len(&span.block_scales), 0);
            read_raw(scale_pieces, span.block_scales.clone(), &mut s.scales)?;
            s.cached = Some((id, span.block_scales.clone()));
        }
        let base = s.cached.as_ref().map_or(0, |(_, r)| r.start);
        let scales =
            &s.scales[(span.block_scales.start - base) as usize..][..len(&span.block_scales)];
        s.decoded.resize(len(&span.elements), 0.0);
        layout.decode(
            q.scales(),
            precision,
            &span,
            &s.codes,
            scales,
            &mut s.decoded,
        )?;
        let skip = at - span.elements.start as usize;
        let vals = &s.decoded[skip..skip + n];
        let o = (at - elements.start) * dw;
        count += cast::convert(
            name,
            super::merge::as_bytes(vals),
            Dtype::F32,
            &mut out[o..o + n * dw],
            dst,
        )?;
        at += n;
    }
    Ok(count)
}

/// Copies bytes `bytes` of `q`'s block-scale member into `out`, refusing a NaN or negative
/// scale: a kept layer is copied as it is, but not a damaged one.
pub(super) fn copy_block_scales(q: &QuantTensor, bytes: Range<u64>, out: &mut [u8]) -> Result<()> {
    let [_, pieces] = q.raw_pieces()?;
    read_raw(pieces, bytes, out)?;
    q.layout().check_block_scales(out)
}

/// Fills `out` with units `units` of member `role` of `target` (its bytes as the file holds
/// them); returns the NaN/Inf count of the values the codes encode (0 for the other members).
pub(super) fn fill_encoded(
    target: &Arc<QuantTarget>,
    role: Role,
    units: Range<usize>,
    out: &mut [u8],
    scratch: &mut Scratch,
) -> Result<u64> {
    if let (Format::Ggml(t), Role::Codes) = (target.layout().format(), role) {
        return encode_ggml(target, t, units, out, scratch);
    }
    let scales = target.scales(scratch)?;
    let layout = target.layout();
    if matches!(role, Role::Codes | Role::BlockScales) && target.device_source().is_some() {
        return target.fill_from_device(&scales, role, units, out);
    }
    match role {
        Role::Codes if layout.format().has_block_scales() => {
            encode_rows(target, &scales, units, out, scratch)
        }
        Role::Codes => {
            let mut count = 0;
            let mut at = units.start;
            while at < units.end {
                let n = (units.end - at).min(CHUNK);
                let mut values = std::mem::take(&mut scratch.quant.values);
                values.resize(n, 0.0);
                count += target.read_counted(at..at + n, &mut values, scratch)?;
                let span = layout.write_span(at as u64..(at + n) as u64)?;
                let o = at - units.start;
                layout.encode(
                    &scales,
                    target.precision(),
                    &span,
                    &values,
                    &mut out[o..o + n],
                    &mut [],
                )?;
                scratch.quant.values = values;
                at += n;
            }
            Ok(count)
        }
        Role::BlockScales => {
            block_scales(target, &scales, units, out, scratch)?;
            Ok(0)
        }
        Role::TensorScale | Role::RowScales => {
            let all: Vec<f32> = match (role, scales.tensor_scale(), scales.row_scales()) {
                (Role::TensorScale, Some(s), _) => vec![s],
                (Role::RowScales, _, Some(r)) => r.to_vec(),
                _ => return Err(missing(layout, role)),
            };
            let vals = all
                .get(units.clone())
                .ok_or_else(|| missing(layout, role))?;
            for (o, v) in out.chunks_exact_mut(4).zip(vals) {
                o.copy_from_slice(&v.to_le_bytes());
            }
            Ok(0)
        }
        other => Err(missing(layout, other)),
    }
}

fn missing(layout: &QuantLayout, role: Role) -> Error {
    Error::Quantized {
        layer: layout.layer().to_string(),
        reason: format!("no {role:?} to write: the plan and the scales disagree"),
    }
}

/// The codes of a block format: bytes `bytes` of the codes member, encoded from whole rows.
fn encode_rows(
    target: &QuantTarget,
    scales: &crate::quant::Scales,
    bytes: Range<usize>,
    out: &mut [u8],
    scratch: &mut Scratch,
) -> Result<u64> {
    let layout = target.layout();
    let cols = target.cols();
    let rows = target.len() / cols.max(1);
    let row_bytes = layout.members()[0].shape.get(1).copied().unwrap_or(0);
    if row_bytes == 0 {
        return Err(missing(layout, Role::Codes));
    }
    let group = (CHUNK / cols.max(1)).max(1);
    let (first, last) = (bytes.start / row_bytes, bytes.end.div_ceil(row_bytes));
    let mut count = 0;
    let mut row = first;
    while row < last {
        let o = row * row_bytes;
        if row >= rows {
            // Padding rows: zero codes.
            let (s, e) = (o.max(bytes.start), bytes.end);
            out[s - bytes.start..e - bytes.start].fill(0);
            break;
        }
        let end = (row + group).min(last).min(rows);
        let mut values = std::mem::take(&mut scratch.quant.values);
        values.resize((end - row) * cols, 0.0);
        count += target.read_counted(row * cols..end * cols, &mut values, scratch)?;
        let span = layout.write_span((row * cols) as u64..(end * cols) as u64)?;
        let s = &mut scratch.quant;
        s.codes.resize(len(&span.codes), 0);
        s.scales.resize(len(&span.block_scales), 0);
        s.cached = None;
        layout.encode(
            scales,
            target.precision(),
            &span,
            &values,
            &mut s.codes,
            &mut s.scales,
        )?;
        target
            .kept_block_scales()
            .keep(layout, &span, row..end, &s.scales);
        // The span covers the padding rows too when it ends at the last row.
        let (cs, ce) = (span.codes.start as usize, span.codes.end as usize);
        let (s0, e0) = (cs.max(bytes.start), ce.min(bytes.end));
        if s0 < e0 {
            out[s0 - bytes.start..e0 - bytes.start].copy_from_slice(&s.codes[s0 - cs..e0 - cs]);
        }
        scratch.quant.values = values;
        row = if end == rows { last } else { end };
    }
    Ok(count)
}

/// Bytes `bytes` of a ggml tensor's blocks, encoded from their values a few blocks at a time
/// (each block carries its own scales: nothing is computed over the tensor first). A block
/// that straddles the range's ends is encoded whole and only its bytes inside are written.
/// A contiguous CUDA source is encoded on its device instead ([`super::ggml_device`]): only
/// the range's blocks cross to the host.
///
/// Serial on purpose: the writer's workers fill ranges on every core, and they are long-running
/// jobs of one rayon pool, where a nested parallel loop's waiting thread could pick up another
/// long-running job (the reduction prefetcher, which waits for the workers) and stall.
fn encode_ggml(
    target: &QuantTarget,
    t: GgmlType,
    bytes: Range<usize>,
    out: &mut [u8],
    scratch: &mut Scratch,
) -> Result<u64> {
    if let Some((tensor, base)) = target.ggml_device_source() {
        let dtype = crate::model::dtype::file_dtype(tensor.dtype());
        let numel = target.len() as u64;
        if let Some(launch) = GgmlLaunch::new(t, numel, dtype, base, bytes.clone())? {
            return super::cuda::device_quantize_ggml(tensor, &launch, out);
        }
    }
    let (values_per, bytes_per) = (t.block_len(), t.block_bytes());
    let step = (CHUNK / values_per).max(1);
    let (first, last) = (bytes.start / bytes_per, bytes.end.div_ceil(bytes_per));
    let mut count = 0;
    let mut block = first;
    while block < last {
        let end = (block + step).min(last);
        let mut values = std::mem::take(&mut scratch.quant.values);
        values.resize((end - block) * values_per, 0.0);
        count += target.read_counted(block * values_per..end * values_per, &mut values, scratch)?;
        let (o, oe) = (block * bytes_per, end * bytes_per);
        let (s, e) = (o.max(bytes.start), oe.min(bytes.end));
        if (s, e) == (o, oe) {
            // Whole blocks of the range: encoded where they are written.
            crate::quant::ggml::encode(t, &values, &mut out[s - bytes.start..e - bytes.start]);
        } else {
            // A block cut by the range's ends: encoded whole, its part in the range copied.
            let codes = &mut scratch.quant.codes;
            codes.resize(oe - o, 0);
            crate::quant::ggml::encode(t, &values, codes);
            out[s - bytes.start..e - bytes.start].copy_from_slice(&codes[s - o..e - o]);
        }
        scratch.quant.values = values;
        block = end;
    }
    Ok(count)
}

/// Bytes `bytes` of the block-scale member, band by band, encoded from the band's rows.
fn block_scales(
    target: &QuantTarget,
    scales: &crate::quant::Scales,
    bytes: Range<usize>,
    out: &mut [u8],
    scratch: &mut Scratch,
) -> Result<()> {
    let layout = target.layout();
    let cols = target.cols();
    let rows = target.len() / cols.max(1);
    let band_bytes = layout
        .members()
        .into_iter()
        .find(|m| m.role == Role::BlockScales)
        .and_then(|m| m.shape.get(1).copied())
        .ok_or_else(|| missing(layout, Role::BlockScales))?
        * BAND_ROWS;
    let group = (CHUNK / cols.max(1)).clamp(1, BAND_ROWS);
    let mut band = vec![0u8; band_bytes];
    for b in bytes.start / band_bytes..bytes.end.div_ceil(band_bytes) {
        let (r0, r1) = (b * BAND_ROWS, ((b + 1) * BAND_ROWS).min(rows));
        // Kept from the codes' encoding, unless some of the band's rows are not encoded yet.
        let kept = target.kept_block_scales().band(layout, b, &mut band);
        if !kept {
            band.fill(0);
        }
        let mut row = if kept { r1 } else { r0 };
        while row < r1 {
            let end = (row + group).min(r1);
            let mut values = std::mem::take(&mut scratch.quant.values);
            values.resize((end - row) * cols, 0.0);
            target.read(row * cols..end * cols, &mut values, scratch)?;
            let span = layout.write_span((row * cols) as u64..(end * cols) as u64)?;
            let at = span.block_scales.start as usize - b * band_bytes;
            let len = len(&span.block_scales);
            layout.encode_block_scales(scales, &span, &values, &mut band[at..at + len])?;
            scratch.quant.values = values;
            row = end;
        }
        let o = b * band_bytes;
        let (s, e) = (o.max(bytes.start), (o + band_bytes).min(bytes.end));
        out[s - bytes.start..e - bytes.start].copy_from_slice(&band[s - o..e - o]);
    }
    target.kept_block_scales().served(layout, bytes.len());
    Ok(())
}

/// Bytes `bytes` of a member planned as raw 1-byte `pieces`, into `out`.
fn read_raw(pieces: &[Piece], bytes: Range<u64>, out: &mut [u8]) -> Result<()> {
    let mut scratch = None;
    let mut at = 0u64;
    for p in pieces {
        let n = p.units as u64;
        let (s, e) = (bytes.start.max(at), bytes.end.min(at + n));
        if s < e {
            let dst = &mut out[(s - bytes.start) as usize..(e - bytes.start) as usize];
            match &p.source {
                PieceSource::File {
                    file,
                    start,
                    offset,
                } => file.read_at(dst, start + *offset as u64 + (s - at))?,
                _ => {
                    let scratch = scratch.get_or_insert_with(Scratch::default);
                    let units = (s - at) as usize..(e - at) as usize;
                    super::fill(p, "quantized member", units, dst, scratch)?;
                }
            }
        }
        at += n;
    }
    Ok(())
}

fn len(r: &Range<u64>) -> usize {
    (r.end - r.start) as usize
}
