//! Units of work: the data section cut into pieces for the writer's workers.
//!
//! A unit is either a byte range of one piece that is already in memory in its file dtype
//! (written straight from where it lies, no copy), or a range of the data section that is filled
//! into a staging buffer piece by piece, the cast fused into that fill. Units are at most
//! `chunk_size` bytes, so host memory in flight is bounded by workers × chunk size.

use std::ops::Range;

use crate::offload::is_in_place;
use crate::plan::{unit_width, Piece, Plan};

/// Pieces smaller than this are staged even when they could be written in place: one staged
/// write of many small tensors beats many small writes.
pub(crate) const MIN_IN_PLACE: u64 = 1 << 20;

/// One unit of work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Bytes `bytes` (relative to the piece) of piece `piece`, written from where they lie.
    InPlace {
        /// Index into [`Plan::pieces`].
        piece: usize,
        /// Byte range within the piece.
        bytes: Range<u64>,
    },
    /// Data-section range `range`, filled from pieces `pieces` into staging.
    Staged {
        /// Byte range of the data section.
        range: Range<u64>,
        /// Indices of the pieces that overlap the range.
        pieces: Range<usize>,
    },
}

impl Unit {
    /// Data-section range written by this unit.
    pub fn span(&self, plan: &Plan) -> Range<u64> {
        match self {
            Unit::InPlace { piece, bytes } => {
                let start = plan.pieces()[*piece].start;
                start + bytes.start..start + bytes.end
            }
            Unit::Staged { range, .. } => range.clone(),
        }
    }
}

/// Cuts the plan's data section into units of at most `chunk_size` bytes (a multiple of 4096),
/// covering only the pieces for which `keep(index)` is true; the others (filled by a device
/// pipeline) are left out, and no unit spans them.
///
/// Boundaries inside a staged run fall on multiples of `chunk_size` from the run's start; since
/// file order never puts a wider element after a narrower one, every boundary is element-aligned.
pub(crate) fn cut(plan: &Plan, chunk_size: u64, keep: impl Fn(usize) -> bool) -> Vec<Unit> {
    let chunk_size = chunk_size.max(4096).next_multiple_of(4096);
    let pieces = plan.pieces();
    let mut out = Vec::new();
    let mut run: Option<(u64, usize)> = None; // (start offset, first piece) of the staged run
    let flush =
        |out: &mut Vec<Unit>, run: &mut Option<(u64, usize)>, end: u64, end_piece: usize| {
            if let Some((start, first)) = run.take() {
                let mut at = start;
                let mut p = first;
                while at < end {
                    let stop = (at + chunk_size).min(end);
                    while p < end_piece && pieces[p].end() <= at && !pieces[p].is_empty() {
                        p += 1;
                    }
                    let mut q = p;
                    while q < end_piece
                        && (pieces[q].start < stop
                            || (pieces[q].is_empty() && pieces[q].start <= stop))
                    {
                        q += 1;
                    }
                    out.push(Unit::Staged {
                        range: at..stop,
                        pieces: p..q,
                    });
                    at = stop;
                }
            }
        };
    for (i, piece) in pieces.iter().enumerate() {
        if !keep(i) {
            flush(&mut out, &mut run, piece.start, i);
        } else if is_in_place(piece) && piece.len() >= MIN_IN_PLACE {
            flush(&mut out, &mut run, piece.start, i);
            let mut at = 0;
            while at < piece.len() {
                let stop = (at + chunk_size).min(piece.len());
                out.push(Unit::InPlace {
                    piece: i,
                    bytes: at..stop,
                });
                at = stop;
            }
        } else if run.is_none() && !piece.is_empty() {
            run = Some((piece.start, i));
        }
    }
    flush(&mut out, &mut run, plan.data_len(), pieces.len());
    out
}

/// Units for direct I/O: the data section cut at `phase` and then at multiples of `chunk_size`
/// (a multiple of 4096) from there, so every unit but a first one of `phase` bytes starts at a
/// 4096-aligned file offset: `phase` is 0 where the data section starts aligned (a safetensors
/// header is padded to it), else what brings it there (a GGUF's starts at its 32-byte padding).
/// Units are staged into aligned buffers, except where the plan's one piece is a staged data
/// section itself (the checkpointer's snapshot), which is already aligned and written in place.
pub(crate) fn aligned(plan: &Plan, chunk_size: u64, phase: u64) -> Vec<Unit> {
    let chunk = chunk_size.max(4096).next_multiple_of(4096);
    let pieces = plan.pieces();
    let whole_image = matches!(pieces, [p] if is_in_place(p) && p.start == 0);
    let mut out = Vec::new();
    let mut at = 0;
    while at < plan.data_len() {
        let step = if at == 0 && phase > 0 { phase } else { chunk };
        let end = (at + step).min(plan.data_len());
        if whole_image {
            out.push(Unit::InPlace {
                piece: 0,
                bytes: at..end,
            });
        } else {
            let first = pieces.partition_point(|p| p.end() <= at);
            let last = pieces.partition_point(|p| p.start < end);
            out.push(Unit::Staged {
                range: at..end,
                pieces: first..last.max(first),
            });
        }
        at = end;
    }
    out
}

/// The part of `piece` that falls in data-section range `range`: (unit range, byte range
/// relative to `range.start`), or `None` when they do not overlap.
pub(crate) fn overlap(piece: &Piece, range: &Range<u64>) -> Option<(Range<usize>, Range<usize>)> {
    let start = piece.start.max(range.start);
    let end = piece.end().min(range.end);
    if start >= end {
        return None;
    }
    let size = unit_width(piece.dst_dtype) as u64;
    let units = ((start - piece.start) / size) as usize..((end - piece.start) / size) as usize;
    let bytes = (start - range.start) as usize..(end - range.start) as usize;
    Some((units, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{self, LayoutKind};
    use crate::model::Arch;
    use crate::plan::PlanOptions;
    use crate::synthetic::{self, SyntheticOptions};
    use candle_core::{DType, Device};
    use std::collections::BTreeMap;

    fn plan(max_dim: usize, dtype: DType) -> Plan {
        let c = synthetic::build(
            &SyntheticOptions::new(Arch::Sd15)
                .with_max_dim(max_dim)
                .with_dtype(dtype),
            &Device::Cpu,
        )
        .unwrap();
        let l = layout::layout(
            &LayoutKind::Arch(Arch::Sd15),
            &c.shapes(),
            Arch::Sd15.default_prediction(),
        )
        .unwrap();
        Plan::new(&l, &c, &BTreeMap::new(), &PlanOptions::default()).unwrap()
    }

    pub(crate) fn check_tiling(plan: &Plan, units: &[Unit], chunk_size: u64) {
        let mut spans: Vec<_> = units.iter().map(|c| c.span(plan)).collect();
        spans.sort_by_key(|r| r.start);
        let mut at = 0;
        for s in &spans {
            assert_eq!(s.start, at, "gap or overlap at {at}");
            assert!(s.end - s.start <= chunk_size.next_multiple_of(4096));
            at = s.end;
        }
        assert_eq!(at, plan.data_len());
        for c in units {
            if let Unit::Staged { range, pieces } = c {
                for (i, p) in plan.pieces().iter().enumerate() {
                    let overlaps = overlap(p, range).is_some();
                    assert!(
                        !overlaps || pieces.contains(&i),
                        "piece {i} overlaps {range:?} but is not listed"
                    );
                }
            }
        }
    }

    #[test]
    fn units_tile_the_data_section() {
        for (dim, dtype) in [(8, DType::F32), (64, DType::F16), (320, DType::F32)] {
            let p = plan(dim, dtype);
            for size in [4096, 1 << 16, 1 << 20, 32 << 20] {
                check_tiling(&p, &cut(&p, size, |_| true), size);
            }
        }
    }

    #[test]
    fn left_out_pieces_are_not_covered() {
        let p = plan(64, DType::F32);
        let skip = |i: usize| i % 3 == 1;
        let c = cut(&p, 1 << 16, |i| !skip(i));
        let spans: Vec<_> = c.iter().map(|u| u.span(&p)).collect();
        let mut kept = 0;
        for (i, piece) in p.pieces().iter().enumerate() {
            if skip(i) {
                assert!(spans
                    .iter()
                    .all(|s| s.end <= piece.start || s.start >= piece.end()));
            } else {
                kept += piece.len();
            }
        }
        let written: u64 = spans.iter().map(|s| s.end - s.start).sum();
        assert_eq!(written, kept);
    }

    #[test]
    fn aligned_units_tile_at_chunk_multiples() {
        let p = plan(64, DType::F16);
        let c = aligned(&p, 1 << 16, 0);
        check_tiling(&p, &c, 1 << 16);
        assert!(c.iter().all(|c| c.span(&p).start % (1 << 16) == 0));
        assert!(c.iter().all(|c| matches!(c, Unit::Staged { .. })));
        // A data section that starts 4096 − 100 bytes into a page: one unit of 100 bytes, then
        // every unit starts at a chunk multiple from there.
        let c = aligned(&p, 1 << 16, 100);
        check_tiling(&p, &c, 1 << 16);
        assert_eq!(c[0].span(&p), 0..100);
        assert!(c[1..]
            .iter()
            .all(|c| (c.span(&p).start - 100) % (1 << 16) == 0));
    }

    #[test]
    fn large_kept_tensors_are_written_in_place() {
        let p = plan(1280, DType::F32);
        let c = cut(&p, 1 << 20, |_| true);
        assert!(c.iter().any(|c| matches!(c, Unit::InPlace { .. })));
        check_tiling(&p, &c, 1 << 20);
    }

    #[test]
    fn overlap_is_element_aligned() {
        let p = plan(64, DType::F16);
        for piece in p.pieces() {
            let r = piece.start + 2..piece.end() + 10;
            if let Some((elems, bytes)) = overlap(piece, &r) {
                assert_eq!(elems.len() * 2, bytes.len());
            }
        }
    }
}
