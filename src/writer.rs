//! Writer: puts a plan's bytes into an open file.
//!
//! [`write_sequential`] is the simple, obviously-correct writer: header, then every piece in
//! order, casting through one reusable buffer. Same-dtype CPU tensors are written straight from
//! their storage. It is the reference the parallel engine is tested against.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::cast;
use crate::error::{Error, IoContext, Result};
use crate::offload::with_host_range;
use crate::plan::Plan;
use crate::progress::Progress;

/// Bytes converted at a time by the sequential writer.
const CAST_BLOCK: usize = 8 << 20;

/// What a write saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteReport {
    /// Non-finite (NaN/Inf) source values per planned tensor, in file order.
    pub non_finite: Vec<u64>,
    /// Bytes written, header included.
    pub bytes: u64,
}

/// Writes the whole plan into `file` from its start, one piece after another.
///
/// # Errors
/// I/O errors, device-copy errors, and [`Error::Cancelled`] when `cancel` becomes true.
pub fn write_sequential(
    plan: &Plan,
    file: &File,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<WriteReport> {
    let mut out = file;
    let ctx = || "writing the checkpoint".to_string();
    out.write_all(plan.header()).ctx(ctx)?;
    progress.inc(plan.header().len() as u64);
    let mut non_finite = vec![0u64; plan.tensors().len()];
    let mut buf = Vec::new();
    for piece in plan.pieces() {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let name = &plan.tensors()[piece.tensor].name;
        let count = with_host_range(piece, 0..piece.numel, |src, src_dtype| {
            if src_dtype == piece.dst_dtype {
                out.write_all(src).ctx(ctx)?;
                progress.inc(src.len() as u64);
                return Ok(cast::count_non_finite(src, src_dtype));
            }
            let (ss, ds) = (src_dtype.bitsize() / 8, piece.dst_dtype.bitsize() / 8);
            let per_block = (CAST_BLOCK / ds.max(1)).max(1);
            let mut count = 0;
            for s in src.chunks(per_block * ss) {
                buf.resize(s.len() / ss * ds, 0);
                count += cast::convert(name, s, src_dtype, &mut buf, piece.dst_dtype)?;
                out.write_all(&buf).ctx(ctx)?;
                progress.inc(buf.len() as u64);
            }
            Ok(count)
        })?;
        non_finite[piece.tensor] += count;
    }
    Ok(WriteReport {
        non_finite,
        bytes: plan.file_len(),
    })
}
