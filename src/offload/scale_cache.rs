//! Block scales kept from the encoding of a block format's codes (mxfp8, nvfp4), so that the
//! block-scale member, which the file stores right after the codes, is copied instead of encoded
//! again from a second read of the values (each block's scale is a function of its own values
//! and the tensor scale, and encoding the codes computes it anyway).
//!
//! The member is small (one byte per 16 or 32 values) and is dropped as soon as all of its bytes
//! have been written. A band whose rows have not all been encoded yet (another worker is still at
//! them, or the block scales are reached first) is encoded from the values as before.

use std::ops::Range;
use std::sync::Mutex;

use crate::quant::{QuantLayout, Span, BAND_ROWS};

/// The kept block scales of one quantized output (see the [module docs](self)).
#[derive(Debug, Default)]
pub(crate) struct BlockScaleCache {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The whole block-scale member, swizzled; empty until the first rows are kept.
    bytes: Vec<u8>,
    row_kept: Vec<bool>,
    /// Rows kept per band.
    band_rows: Vec<usize>,
    /// Bytes of the member written so far.
    served: usize,
    /// Every byte was written: keep nothing more.
    closed: bool,
}

/// Bytes of `layout`'s block-scale member per band.
fn band_bytes(layout: &QuantLayout) -> usize {
    BAND_ROWS * layout.scale_cols()
}

/// Bytes of `layout`'s whole block-scale member.
fn member_bytes(layout: &QuantLayout) -> usize {
    layout.stored_rows.div_ceil(BAND_ROWS) * band_bytes(layout)
}

impl BlockScaleCache {
    /// Keeps the block scales of logical rows `rows`, which `encode` wrote into `scales` (the
    /// bytes of `span.block_scales`).
    pub(crate) fn keep(
        &self,
        layout: &QuantLayout,
        span: &Span,
        rows: Range<usize>,
        scales: &[u8],
    ) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        if s.closed {
            return;
        }
        if s.bytes.is_empty() {
            s.bytes = vec![0; member_bytes(layout)];
            s.row_kept = vec![false; layout.rows];
            s.band_rows = vec![0; layout.stored_rows.div_ceil(BAND_ROWS)];
        }
        let base = span.block_scales.start as usize;
        for row in rows.start..rows.end.min(layout.rows) {
            for b in 0..layout.scale_cols() {
                let at = layout.scale_offset(span, row, b);
                s.bytes[base + at] = scales[at];
            }
            if !s.row_kept[row] {
                s.row_kept[row] = true;
                s.band_rows[row / BAND_ROWS] += 1;
            }
        }
    }

    /// Copies band `band` of the member into `out` (one band's bytes) if every logical row of it
    /// has been kept; `false` otherwise.
    pub(crate) fn band(&self, layout: &QuantLayout, band: usize, out: &mut [u8]) -> bool {
        let Ok(s) = self.state.lock() else {
            return false;
        };
        let n = band_bytes(layout);
        let rows = layout.rows.saturating_sub(band * BAND_ROWS).min(BAND_ROWS);
        if s.bytes.len() < (band + 1) * n || s.band_rows.get(band) != Some(&rows) {
            return false;
        }
        out.copy_from_slice(&s.bytes[band * n..(band + 1) * n]);
        true
    }

    /// Records that `n` bytes of the member were written; drops the kept bytes once all were.
    pub(crate) fn served(&self, layout: &QuantLayout, n: usize) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        s.served += n;
        if s.served >= member_bytes(layout) {
            *s = State {
                closed: true,
                ..State::default()
            };
        }
    }

    /// Whether bytes are kept now.
    #[cfg(test)]
    fn holds(&self) -> bool {
        !self.state.lock().unwrap().bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{Format, Scales};

    /// Encoding rows in two spans, in any order, keeps exactly the bytes one encode of the whole
    /// tensor writes; a band is only given out once all its rows are kept; the bytes are dropped
    /// after the member was written, and nothing is kept after that.
    #[test]
    fn kept_bands_are_the_encoders_bytes_and_are_dropped_once_written() {
        let (rows, cols) = (200usize, 64usize);
        let layout = QuantLayout::new("l", Format::Nvfp4, &[rows, cols]).unwrap();
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) * (1.0 + (i / cols) as f32))
            .collect();
        let scales = Scales::tensor("l", 0.05).unwrap();
        let encode = |r: Range<usize>| {
            let span = layout
                .write_span((r.start * cols) as u64..(r.end * cols) as u64)
                .unwrap();
            let mut codes = vec![0u8; (span.codes.end - span.codes.start) as usize];
            let mut bs = vec![0u8; (span.block_scales.end - span.block_scales.start) as usize];
            let v = &values[r.start * cols..r.end * cols];
            layout
                .encode(
                    &scales,
                    crate::quant::Precision::F32,
                    &span,
                    v,
                    &mut codes,
                    &mut bs,
                )
                .unwrap();
            (span, bs)
        };
        let (whole_span, whole) = encode(0..rows);
        assert_eq!(whole_span.block_scales.start, 0);
        let cache = BlockScaleCache::default();
        let n = band_bytes(&layout);
        let mut band = vec![0u8; n];
        let (span, bs) = encode(150..rows);
        cache.keep(&layout, &span, 150..rows, &bs);
        assert!(!cache.band(&layout, 0, &mut band), "band 0 not encoded yet");
        assert!(
            !cache.band(&layout, 1, &mut band),
            "rows 128..150 not encoded yet"
        );
        let (span, bs) = encode(0..150);
        cache.keep(&layout, &span, 0..150, &bs);
        for b in 0..2 {
            assert!(cache.band(&layout, b, &mut band));
            assert_eq!(band, whole[b * n..(b + 1) * n], "band {b}");
        }
        cache.served(&layout, n);
        assert!(cache.holds());
        cache.served(&layout, n);
        assert!(!cache.holds(), "all written: dropped");
        cache.keep(&layout, &span, 0..150, &bs);
        assert!(!cache.holds(), "nothing kept once written");
        assert!(!cache.band(&layout, 0, &mut band));
    }
}
