//! The CUDA fast path: cast on the device, pack, copy into pinned host memory, overlap with writes.
//!
//! The generic device path ([`super::device`]) works on any device but pays for it: one candle
//! cast and one pageable copy per tensor range, issued and waited for one after another, with the
//! write only starting when the copy is done. Into ordinary (pageable) memory a device→host copy
//! runs several times slower than into page-locked memory, and thousands of small tensors are
//! dominated by per-copy overhead. This module removes all three costs:
//!
//! - **Cast on the device, packed.** One launch of the `cast_pack` kernel (`kernels/cast_pack.cu`,
//!   compiled to PTX by `build.rs`, loaded once per device) converts many tensors into one
//!   contiguous device staging region in their file dtype, so an f32→f16 save moves half the bytes
//!   over PCIe, and hundreds of small tensors cost one launch and one copy. The same pass counts
//!   each tensor's non-finite source values, so `--check-finite` costs nothing extra. Conversions
//!   are bit-identical to [`crate::cast`] (including NaN payloads and fp8 saturation).
//! - **Pinned buffers, reused.** Copies land in page-locked host buffers from `cuMemHostAlloc`
//!   *without* write-combining (write-combined memory, what cudarc's `alloc_pinned` asks for, is
//!   slow for the CPU to read, and the writer reads it). Buffers are kept in a process-wide pool
//!   and reused by later saves (a training loop saving every N steps does not pay for pinning
//!   again); [`release_pinned_buffers`] hands them back to the OS.
//! - **Overlap.** Each device runs its own pipeline on a stream of our own with
//!   [`PIPELINE_DEPTH`] slots: while the file write of batch n runs, the copy of batch n+1 (and
//!   the kernel of batch n+2) are already queued, each slot completing on its own event.
//! - **Several devices.** Pieces are grouped by device ([`device_groups`]); the writer runs one
//!   pipeline per device concurrently, each writing its disjoint byte ranges of the same file.
//!
//! # Ordering with the caller's work
//! candle 0.11 creates CUDA devices on the per-thread default stream, so work the caller launched
//! from its own thread is not ordered before anything issued from our pipeline thread or stream
//! (see [`super::order`]). The save has already synchronized the context before its workers
//! start; each pipeline synchronizes it again (`cuCtxSynchronize`, every stream of every thread)
//! before its first read, so it is ordered on its own. Temporary contiguous copies (transposed
//! projections, strided views) are made by candle on the pipeline thread; our stream waits on an
//! event recorded on that thread's stream before reading them. cudarc's read guard of each source
//! is held until the kernel that reads it is queued, so its read event marks that kernel.
//!
//! While a save runs the caller may keep launching work on the device (training can go on), but
//! must not write into the tensors being saved (in-place updates such as an optimizer step on the
//! saved variables): the save reads them asynchronously until it returns. Tensors are kept alive
//! by the plan, so dropping the caller's handles is fine.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::cuda_backend::CudaStorageSlice;
use candle_core::{Device, Storage, Tensor};
use cudarc::driver::{
    result, CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr, DriverError, LaunchConfig,
    PushKernelArg, SyncOnDrop,
};

use super::device::{pipeline_source, Code};
use crate::error::{Error, Result};
use crate::model::dtype::file_dtype;
use crate::model::InputTensor;
use crate::plan::{PieceSource, Plan};
pub(crate) use ggml::device_quantize_ggml;
use pinned::PinnedBuffer;
pub use pinned::{pinned_copy_ceiling, release_pinned_buffers};
pub(crate) use quantize::{device_abs_max, device_quantize, quantizes_on_device};

mod ggml;
mod pinned;
mod quantize;

/// PTX of `kernels/cast_pack.cu`, compiled by `build.rs`.
const CAST_PACK_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/cast_pack.ptx"));

/// Slots in flight per device pipeline: batch n is written while batch n+1 is being copied.
pub const PIPELINE_DEPTH: usize = 2;

/// Most tensors (or tensor ranges) packed by one kernel launch.
const MAX_ENTRIES: usize = 4096;
/// Bytes of one kernel table entry (`struct Entry` in the kernel).
const ENTRY_BYTES: usize = 32;
/// Threads per block of the kernel.
const BLOCK_THREADS: u32 = 256;

/// The pieces of one device that the fast path fills, in file order.
#[derive(Debug, Clone)]
pub(crate) struct DeviceGroup {
    /// The device holding the pieces' tensors.
    pub device: Device,
    /// Indices into [`Plan::pieces`].
    pub pieces: Vec<usize>,
}

/// Sizes of a device pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PipelineOptions {
    /// Bytes per batch, i.e. per pinned buffer (rounded up to a multiple of 4096).
    pub buffer_size: usize,
}

/// Where a pipeline hands each filled buffer: the writer's `write(bytes, data-section offset)`.
pub(crate) type Sink<'a> = &'a (dyn Fn(&[u8], u64) -> Result<()> + Sync);

pub(super) fn driver(e: DriverError) -> Error {
    Error::Candle(candle_core::Error::wrap(e))
}

/// Whether pieces on `device` can go through a device pipeline: any CUDA device.
pub(crate) fn has_pipeline(device: &Device) -> bool {
    device.is_cuda()
}

/// Waits until every stream of `device`'s context, whichever thread queued the work, is idle
/// (`cuCtxSynchronize`); other devices synchronize as candle does.
///
/// # Errors
/// Device errors (a fault of an earlier kernel is reported here).
pub(crate) fn synchronize_context(device: &Device) -> Result<()> {
    match device {
        Device::Cuda(dev) => dev.cuda_stream().context().synchronize().map_err(driver),
        other => Ok(other.synchronize()?),
    }
}

/// Work queued so far on the calling thread's candle stream of a CUDA device, as an event that
/// another thread can wait for.
pub(crate) struct Produced(CudaEvent);

impl Produced {
    /// Records an event on `device`'s candle stream, which for candle's per-thread stream is the
    /// calling thread's own.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a device that is not CUDA; device errors.
    pub(crate) fn record(device: &Device) -> Result<Produced> {
        let Device::Cuda(dev) = device else {
            return Err(Error::InvalidInput(format!(
                "a CUDA event was asked for on {device:?}"
            )));
        };
        let stream = dev.cuda_stream();
        stream.context().bind_to_thread().map_err(driver)?;
        Ok(Produced(stream.record_event(None).map_err(driver)?))
    }

    /// Blocks until the recorded work has finished.
    ///
    /// # Errors
    /// Device errors.
    pub(crate) fn wait(&self) -> Result<()> {
        self.0.synchronize().map_err(driver)
    }
}

/// Groups the pieces the fast path handles by device (one group per candle device).
pub(crate) fn device_groups(plan: &Plan) -> Vec<DeviceGroup> {
    let mut groups: Vec<DeviceGroup> = Vec::new();
    for (i, piece) in plan.pieces().iter().enumerate() {
        let Some(t) = pipeline_source(piece) else {
            continue;
        };
        match groups.iter_mut().find(|g| g.device.same_device(t.device())) {
            Some(g) => g.pieces.push(i),
            None => groups.push(DeviceGroup {
                device: t.device().clone(),
                pieces: vec![i],
            }),
        }
    }
    groups
}

/// One packed element range of a piece.
#[derive(Debug, Clone)]
struct Item {
    piece: usize,
    elems: Range<usize>,
    dst_off: usize,
}

/// A contiguous byte range of the data section filled by one kernel launch and one copy.
#[derive(Debug, Clone, Default)]
struct Batch {
    at: u64,
    len: usize,
    items: Vec<Item>,
}

/// Cuts a group's pieces into batches of at most `cap` bytes and [`MAX_ENTRIES`] items; a batch
/// never spans a gap (bytes another device or the CPU writes).
fn batches(plan: &Plan, pieces: &[usize], cap: usize) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut cur: Option<Batch> = None;
    for &i in pieces {
        let p = &plan.pieces()[i];
        let w = crate::plan::unit_width(p.dst_dtype);
        let mut e = 0;
        while e < p.units {
            let off = p.start + (e * w) as u64;
            let full = cur.as_ref().is_none_or(|b| {
                b.at + b.len as u64 != off || cap - b.len < w || b.items.len() == MAX_ENTRIES
            });
            if full {
                out.extend(cur.take());
                cur = Some(Batch {
                    at: off,
                    ..Batch::default()
                });
            }
            let Some(b) = cur.as_mut() else { break };
            // File order puts wider elements first, so `b.len` is a multiple of `w` here.
            let take = ((cap - b.len) / w).min(p.units - e);
            b.items.push(Item {
                piece: i,
                elems: e..e + take,
                dst_off: b.len,
            });
            b.len += take * w;
            e += take;
        }
    }
    out.extend(cur);
    out
}

/// One slot of the ring: host and device staging for one batch, and the event that marks its
/// copies done.
struct Slot {
    /// `[data: cap | counters: MAX_ENTRIES × u64 | table: MAX_ENTRIES × ENTRY_BYTES]`.
    host: Option<PinnedBuffer>,
    /// Same layout on the device.
    dev: CudaSlice<u8>,
    done: CudaEvent,
    batch: Option<Batch>,
    /// Temporary contiguous copies read by the batch; dropped once it completes.
    keep: Vec<Tensor>,
}

/// A device pipeline. Dropping it waits for its stream, so no copy writes into a buffer after
/// the buffer went back to the pool.
struct Pipeline<'a> {
    plan: &'a Plan,
    sink: Sink<'a>,
    cap: usize,
    candle_stream: Arc<CudaStream>,
    stream: Arc<CudaStream>,
    func: CudaFunction,
    slots: Vec<Slot>,
    counts: &'a [AtomicU64],
    /// The most recent temporary contiguous copy, reused by the next batch of the same piece.
    temp: Option<(usize, Tensor)>,
}

impl Drop for Pipeline<'_> {
    fn drop(&mut self) {
        let _ = self.stream.synchronize();
        for slot in &mut self.slots {
            if let Some(b) = slot.host.take() {
                b.give_back();
            }
        }
    }
}

/// Fills a group's pieces through the device pipeline and hands each filled pinned buffer to
/// `sink` (the writer), adding each tensor's non-finite count to `counts`.
///
/// Returns early (with `Ok`) when `failed` becomes true, so another worker's error is reported.
///
/// # Errors
/// [`Error::Cancelled`] when `cancel` becomes true, device errors, the sink's errors.
pub(crate) fn run_group(
    plan: &Plan,
    group: &DeviceGroup,
    opts: &PipelineOptions,
    sink: Sink<'_>,
    counts: &[AtomicU64],
    cancel: &AtomicBool,
    failed: &AtomicBool,
) -> Result<()> {
    let Device::Cuda(dev) = &group.device else {
        return Err(Error::InvalidInput(
            "the CUDA fast path was given a tensor that is not on a CUDA device".into(),
        ));
    };
    let cap = opts.buffer_size.max(4096).next_multiple_of(4096);
    let candle_stream = dev.cuda_stream();
    let ctx = candle_stream.context().clone();
    ctx.bind_to_thread().map_err(driver)?;
    // Every stream of every thread: the caller's kernels that produce the tensors are done.
    ctx.synchronize().map_err(driver)?;
    let func = dev
        .get_or_load_custom_func("cast_pack", "checkpoint_save_cast_pack", CAST_PACK_PTX)?
        .into_cuda_function();
    let stream = ctx.new_stream().map_err(driver)?;
    let total = cap + MAX_ENTRIES * (8 + ENTRY_BYTES);
    let mut pipeline = Pipeline {
        plan,
        sink,
        cap,
        candle_stream,
        stream: stream.clone(),
        func,
        slots: Vec::with_capacity(PIPELINE_DEPTH),
        counts,
        temp: None,
    };
    for _ in 0..PIPELINE_DEPTH {
        // SAFETY: the device buffer is only read after the kernel or a copy wrote it.
        let dev_buf = unsafe { stream.alloc::<u8>(total) }.map_err(driver)?;
        pipeline.slots.push(Slot {
            host: Some(PinnedBuffer::take(&ctx, total)?),
            dev: dev_buf,
            done: ctx.new_event(None).map_err(driver)?,
            batch: None,
            keep: Vec::new(),
        });
    }
    for (n, batch) in batches(plan, &group.pieces, cap).into_iter().enumerate() {
        if failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let k = n % PIPELINE_DEPTH;
        pipeline.finish(k)?;
        pipeline.issue(k, batch)?;
    }
    for i in 0..PIPELINE_DEPTH {
        pipeline.finish(i)?;
    }
    Ok(())
}

impl Pipeline<'_> {
    /// The contiguous tensor that holds `item`'s elements and the index of its first element
    /// there, making a contiguous copy first when the source is transposed or strided.
    fn source(&mut self, item: &Item, slot: usize, made: &mut bool) -> Result<(Tensor, usize)> {
        let piece = &self.plan.pieces()[item.piece];
        let (t, offset) = match &piece.source {
            PieceSource::Candle { tensor, offset } if tensor.is_contiguous() => {
                (tensor.clone(), *offset)
            }
            PieceSource::Candle { tensor: t, offset }
            | PieceSource::Transposed {
                tensor: InputTensor::Candle(t),
                offset,
            } => {
                let offset = *offset;
                let c = match &self.temp {
                    Some((p, c)) if *p == item.piece => c.clone(),
                    _ => {
                        let c = match &piece.source {
                            PieceSource::Transposed { .. } => t.t()?.contiguous()?,
                            _ => t.contiguous()?,
                        };
                        *made = true;
                        self.temp = Some((item.piece, c.clone()));
                        c
                    }
                };
                // Dropped only once the slot's batch has completed.
                self.slots[slot].keep.push(c.clone());
                (c, offset)
            }
            _ => {
                return Err(Error::InvalidInput(
                    "a piece not held by candle given to the CUDA fast path".into(),
                ))
            }
        };
        Ok((t, offset + item.elems.start))
    }

    /// Queues batch `batch` in slot `k`: table upload, kernel, copies back, completion event.
    fn issue(&mut self, k: usize, batch: Batch) -> Result<()> {
        let mut made = false;
        let mut sources = Vec::with_capacity(batch.items.len());
        for item in &batch.items {
            sources.push(self.source(item, k, &mut made)?);
        }
        if made {
            // The contiguous copies ran on candle's stream of this thread.
            self.stream.join(&self.candle_stream).map_err(driver)?;
        }
        let stream = self.stream.clone();
        // Each distinct tensor's storage is read-locked once, and its device address taken with
        // cudarc's read guard, which is kept until the kernel that reads it is queued (below).
        // Two views of one storage lock it twice; only a writer waiting on that storage could
        // come between, and the saved tensors are not written while they are saved.
        let mut distinct: Vec<&Tensor> = Vec::new();
        let which: Vec<usize> = sources
            .iter()
            .map(
                |(t, _)| match distinct.iter().position(|d| d.id() == t.id()) {
                    Some(i) => i,
                    None => {
                        distinct.push(t);
                        distinct.len() - 1
                    }
                },
            )
            .collect();
        let locked: Vec<_> = distinct.iter().map(|t| t.storage_and_layout()).collect();
        let mut reads = Vec::with_capacity(locked.len());
        let mut bases = Vec::with_capacity(locked.len());
        for (storage, layout) in &locked {
            let (start, _) = layout.contiguous_offsets().ok_or_else(|| {
                Error::InvalidInput("contiguous tensor without contiguous offsets".into())
            })?;
            let (base, read) = device_address(storage, &stream)?;
            bases.push((base, start));
            reads.push(read);
        }
        let mut table = Vec::with_capacity(batch.items.len() * ENTRY_BYTES);
        let mut longest = 0usize;
        for ((item, (t, first)), &d) in batch.items.iter().zip(&sources).zip(&which) {
            let code = Code::of(file_dtype(t.dtype())).ok_or_else(|| Error::UnsupportedDtype {
                dtype: format!("{:?}", t.dtype()),
                hint: "the CUDA fast path cannot read it".into(),
            })?;
            let p = &self.plan.pieces()[item.piece];
            let dst = Code::of(p.dst_dtype).ok_or_else(|| Error::UnsupportedDtype {
                dtype: p.dst_dtype.to_string(),
                hint: "the CUDA fast path cannot write it".into(),
            })?;
            let (base, start) = bases[d];
            let src = base + (start + first) as u64 * t.dtype().size_in_bytes() as u64;
            longest = longest.max(item.elems.len());
            table.extend_from_slice(&src.to_le_bytes());
            table.extend_from_slice(&(item.elems.len() as u64).to_le_bytes());
            table.extend_from_slice(&(item.dst_off as u64).to_le_bytes());
            table.extend_from_slice(&(code as u32).to_le_bytes());
            table.extend_from_slice(&(dst as u32).to_le_bytes());
        }
        let (cap, n) = (self.cap, batch.items.len());
        let slot = &mut self.slots[k];
        let host = slot
            .host
            .as_mut()
            .ok_or_else(|| Error::InvalidInput("pipeline slot without a buffer".into()))?;
        let table_at = cap + MAX_ENTRIES * 8;
        host.as_mut_slice()[table_at..table_at + table.len()].copy_from_slice(&table);
        let (base, _rec) = slot.dev.device_ptr(&stream);
        let cu = stream.cu_stream();
        let grid_x = longest.div_ceil(BLOCK_THREADS as usize).clamp(1, 1024) as u32;
        let (dst_ptr, ctr_ptr, tab_ptr) = (base, base + cap as u64, base + table_at as u64);
        let host_slice = host.as_mut_slice();
        // SAFETY: every address lies inside the slot's device buffer or inside tensors the plan
        // (or `slot.keep`) holds alive until the slot's event completes; the host ranges lie in the
        // slot's pinned buffer, which is not touched again until then (`finish`).
        unsafe {
            result::memset_d8_async(ctr_ptr, 0, n * 8, cu).map_err(driver)?;
            result::memcpy_htod_async(tab_ptr, &host_slice[table_at..table_at + table.len()], cu)
                .map_err(driver)?;
            let mut launch = stream.launch_builder(&self.func);
            launch.arg(&tab_ptr).arg(&dst_ptr).arg(&ctr_ptr);
            launch
                .launch(LaunchConfig {
                    grid_dim: (grid_x, n as u32, 1),
                    block_dim: (BLOCK_THREADS, 1, 1),
                    shared_mem_bytes: 0,
                })
                .map_err(driver)?;
            result::memcpy_dtoh_async(&mut host_slice[..batch.len], dst_ptr, cu).map_err(driver)?;
            result::memcpy_dtoh_async(&mut host_slice[cap..cap + n * 8], ctr_ptr, cu)
                .map_err(driver)?;
        }
        slot.done.record(&stream).map_err(driver)?;
        slot.batch = Some(batch);
        // The kernel that reads the sources is queued: now the guards record their read events
        // on our stream (cudarc's contract: drop them after the read is scheduled), so a later
        // write or free of a source, in any stream, waits for this kernel.
        drop(reads);
        drop(locked);
        Ok(())
    }

    /// Waits for slot `k`'s batch (if any), writes it to the file and adds its counts.
    fn finish(&mut self, k: usize) -> Result<()> {
        let slot = &mut self.slots[k];
        let Some(batch) = slot.batch.take() else {
            return Ok(());
        };
        slot.done.synchronize().map_err(driver)?;
        slot.keep.clear();
        let host = slot
            .host
            .as_ref()
            .ok_or_else(|| Error::InvalidInput("pipeline slot without a buffer".into()))?;
        let bytes = host.as_slice();
        (self.sink)(&bytes[..batch.len], batch.at)?;
        for (i, item) in batch.items.iter().enumerate() {
            let c = self.cap + i * 8;
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[c..c + 8]);
            let tensor = self.plan.pieces()[item.piece].tensor;
            self.counts[tensor].fetch_add(u64::from_le_bytes(b), Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The device address of a CUDA storage's first element and cudarc's read guard for `stream`:
/// the stream waits for the storage's last recorded write, and the guard, when dropped, records
/// the read. Drop it only after the work that reads the address is queued.
///
/// # Errors
/// [`Error::InvalidInput`] for a storage that is not on CUDA; [`Error::UnsupportedDtype`] for the
/// packed formats, which the generic device path saves.
fn device_address<'a>(
    storage: &'a Storage,
    stream: &'a CudaStream,
) -> Result<(u64, SyncOnDrop<'a>)> {
    let Storage::Cuda(s) = storage else {
        return Err(Error::InvalidInput(
            "a CUDA tensor without CUDA storage".into(),
        ));
    };
    fn ptr<'a, T>(s: &'a CudaSlice<T>, stream: &'a CudaStream) -> (u64, SyncOnDrop<'a>) {
        s.device_ptr(stream)
    }
    let packed = |dtype: &str| Error::UnsupportedDtype {
        dtype: dtype.into(),
        hint: "packed formats are saved through the generic device path".into(),
    };
    Ok(match &s.slice {
        CudaStorageSlice::U8(v) => ptr(v, stream),
        CudaStorageSlice::U32(v) => ptr(v, stream),
        CudaStorageSlice::I16(v) => ptr(v, stream),
        CudaStorageSlice::I32(v) => ptr(v, stream),
        CudaStorageSlice::I64(v) => ptr(v, stream),
        CudaStorageSlice::BF16(v) => ptr(v, stream),
        CudaStorageSlice::F16(v) => ptr(v, stream),
        CudaStorageSlice::F32(v) => ptr(v, stream),
        CudaStorageSlice::F64(v) => ptr(v, stream),
        CudaStorageSlice::F8E4M3(v) => ptr(v, stream),
        CudaStorageSlice::F6E2M3(_) => return Err(packed("F6_E2M3")),
        CudaStorageSlice::F6E3M2(_) => return Err(packed("F6_E3M2")),
        CudaStorageSlice::F4(_) => return Err(packed("F4")),
        CudaStorageSlice::F8E8M0(_) => return Err(packed("F8_E8M0")),
    })
}
