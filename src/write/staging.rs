//! Staging memory: aligned host buffers, and a whole data section filled at once (the
//! checkpointer's snapshot).

use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use super::{fill_range, STEP};
use crate::error::{Error, Result};
use crate::offload::Scratch;
use crate::plan::Plan;
use crate::sys::DIRECT_ALIGN;

/// Host memory aligned to 4096 bytes, so it can be written with direct I/O: the disk reads it by
/// DMA, without a CPU copy into the page cache.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    layout: std::alloc::Layout,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed, aligned buffer of `len` bytes.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the allocation fails (out of host memory).
    pub fn zeroed(len: usize) -> Result<Self> {
        let size = len.max(1).next_multiple_of(DIRECT_ALIGN);
        let layout = std::alloc::Layout::from_size_align(size, DIRECT_ALIGN)
            .map_err(|e| Error::InvalidInput(format!("cannot stage {len} bytes: {e}")))?;
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(raw).ok_or_else(|| {
            Error::InvalidInput(format!("out of host memory staging {len} bytes"))
        })?;
        Ok(Self { ptr, len, layout })
    }

    /// This buffer resized to `len` when its allocation is large enough, else a new one.
    ///
    /// # Errors
    /// As [`AlignedBuf::zeroed`].
    pub fn reuse(reuse: Option<AlignedBuf>, len: usize) -> Result<Self> {
        match reuse {
            Some(mut buf) if buf.layout.size() >= len => {
                buf.len = len;
                Ok(buf)
            }
            _ => Self::zeroed(len),
        }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised (zeroed, then written) bytes while self lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

/// Fills an aligned buffer with the plan's whole data section (casts fused, in parallel on the
/// rayon pool): one read of every source tensor. Returns the buffer and the non-finite counts.
///
/// This holds the whole data section in host memory — it is the training loop's snapshot, which
/// must be taken before the loop changes its weights; saves stream instead. `reuse` is the buffer
/// of an earlier snapshot, used when large enough, which spares the kernel faulting in and
/// zeroing fresh pages (every byte is overwritten).
///
/// # Errors
/// Allocation, cast and device-copy errors.
pub(crate) fn stage(plan: &Plan, reuse: Option<AlignedBuf>) -> Result<(AlignedBuf, Vec<u64>)> {
    let len = usize::try_from(plan.data_len()).map_err(|_| {
        Error::InvalidInput("the checkpoint does not fit in this machine's address space".into())
    })?;
    // The fills run on the pool's threads: the producers' work must be done before.
    crate::offload::order::wait_for_producers(crate::offload::order::plan_tensors(plan))?;
    let mut image = AlignedBuf::reuse(reuse, len)?;
    let counts: Vec<AtomicU64> = plan.tensors().iter().map(|_| AtomicU64::new(0)).collect();
    // Steps aligned to STEP from the start of the data section: element-aligned.
    image
        .as_mut_slice()
        .par_chunks_mut(STEP)
        .enumerate()
        .try_for_each_init(Scratch::default, |scratch, (i, out)| {
            let start = (i * STEP) as u64;
            fill_range(
                plan,
                start..start + out.len() as u64,
                out,
                scratch,
                |t, n| {
                    counts[t].fetch_add(n, Ordering::Relaxed);
                },
            )
        })?;
    Ok((
        image,
        counts.into_iter().map(AtomicU64::into_inner).collect(),
    ))
}
