//! Page-locked host memory for the device pipelines, pooled across saves, and the measurement of
//! the pinned device→host copy ceiling.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::Device;
use cudarc::driver::{result, sys, CudaContext, DevicePtr};

use super::driver;
use crate::error::{Error, Result};

/// Pinned buffers kept in the pool for later saves.
const POOL_KEEP: usize = 8;

/// Page-locked host memory from `cuMemHostAlloc` with `CU_MEMHOSTALLOC_PORTABLE` only (not
/// write-combined: the CPU reads it at normal speed, and any context may copy into it).
pub(super) struct PinnedBuffer {
    ptr: *mut u8,
    len: usize,
    ctx: Arc<CudaContext>,
}

// SAFETY: the buffer is plain host memory owned by this value; nothing else aliases it, and the
// context handle is thread-safe.
unsafe impl Send for PinnedBuffer {}

impl PinnedBuffer {
    fn new(ctx: &Arc<CudaContext>, len: usize) -> Result<Self> {
        ctx.bind_to_thread().map_err(driver)?;
        // SAFETY: plain allocation call; a null or failed result is reported as an error.
        let ptr = unsafe { result::malloc_host(len.max(1), sys::CU_MEMHOSTALLOC_PORTABLE) }
            .map_err(driver)?
            .cast::<u8>();
        if ptr.is_null() {
            return Err(Error::InvalidInput(format!(
                "cuMemHostAlloc returned no memory for {len} bytes"
            )));
        }
        let mut buf = PinnedBuffer {
            ptr,
            len,
            ctx: ctx.clone(),
        };
        // Initialise once, so the buffer may be read as `&[u8]` from now on.
        buf.as_mut_slice().fill(0);
        Ok(buf)
    }

    /// A buffer of at least `len` bytes, from the pool when one is there.
    pub(super) fn take(ctx: &Arc<CudaContext>, len: usize) -> Result<Self> {
        let pooled = {
            let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
            pool.iter()
                .position(|b| b.len >= len)
                .map(|i| pool.swap_remove(i))
        };
        match pooled {
            Some(b) => Ok(b),
            None => Self::new(ctx, len),
        }
    }

    /// Returns the buffer to the pool (or frees it when the pool is full).
    pub(super) fn give_back(self) {
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_KEEP {
            pool.push(self);
        }
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised bytes owned by `self` (see `new`).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as `as_slice`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: `ptr` came from `malloc_host` and is freed once; no copy uses it any more
            // (pipelines synchronise their stream before giving buffers back).
            let _ = unsafe { result::free_host(self.ptr.cast()) };
        }
    }
}

static POOL: Mutex<Vec<PinnedBuffer>> = Mutex::new(Vec::new());

/// Frees the pinned host buffers kept for later saves.
pub fn release_pinned_buffers() {
    let drained: Vec<PinnedBuffer> = {
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        pool.drain(..).collect()
    };
    drop(drained);
}

/// Measures the device→host copy ceiling: GB/s (10⁹ bytes per second) of a `bytes`-byte copy
/// from device memory into a pinned (not write-combined) host buffer, median of 5 after a warm-up.
///
/// # Errors
/// [`Error::InvalidInput`] when `device` is not a CUDA device or `bytes` is 0; device errors
/// (out of memory, no driver).
pub fn pinned_copy_ceiling(device: &Device, bytes: usize) -> Result<f64> {
    let Device::Cuda(dev) = device else {
        return Err(Error::InvalidInput(format!(
            "the pinned copy ceiling needs a CUDA device, not {device:?}"
        )));
    };
    if bytes == 0 {
        return Err(Error::InvalidInput(
            "measure a copy of at least one byte".into(),
        ));
    }
    let ctx = dev.cuda_stream().context().clone();
    ctx.bind_to_thread().map_err(driver)?;
    let stream = ctx.new_stream().map_err(driver)?;
    // SAFETY: filled by the memset below before any read.
    let src = unsafe { stream.alloc::<u8>(bytes) }.map_err(driver)?;
    let mut host = PinnedBuffer::take(&ctx, bytes)?;
    let (ptr, _rec) = src.device_ptr(&stream);
    let cu = stream.cu_stream();
    let mut secs = Vec::with_capacity(5);
    for round in 0..6 {
        let t0 = Instant::now();
        // SAFETY: `ptr` holds `bytes` bytes; the host range lies in `host`, which outlives the
        // synchronisation below.
        unsafe {
            if round == 0 {
                // Not zeros: some interconnects compress; the copy must move real bytes.
                result::memset_d8_async(ptr, 0xa5, bytes, cu).map_err(driver)?;
            }
            result::memcpy_dtoh_async(&mut host.as_mut_slice()[..bytes], ptr, cu)
                .map_err(driver)?;
        }
        stream.synchronize().map_err(driver)?;
        if round > 0 {
            secs.push(t0.elapsed().as_secs_f64());
        }
    }
    host.give_back();
    secs.sort_by(f64::total_cmp);
    Ok(bytes as f64 / secs[secs.len() / 2].max(1e-12) / 1e9)
}
