//! Write: the crate's one byte writer. Every file the crate produces — a save, a split, a
//! training-loop checkpoint, a benchmark run — goes through [`write`].
//!
//! The data section is cut into [units](units) that worker threads take in file order; each unit
//! is filled (cast fused, [`crate::offload`]) and written in steps at its offset into the
//! preallocated temporary file, through a [`sink::Sink`]: positional writes, a memory map, or
//! direct I/O. Pieces that a device pipeline fills ([`offload::device::pipeline_source`]: tensors
//! on a CUDA device, with the `cuda` feature) are left out of the units and filled by one
//! pipeline per GPU, which hands its pinned buffers back to the same sink. Host memory in flight
//! is bounded by the staging budget. Before any worker starts, the calling thread waits for the
//! work that produced the device tensors the plan reads ([`offload::order`]).

pub(crate) mod sink;
mod staging;
mod units;

use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::offload::{self, cuda, Scratch};
use crate::plan::{Piece, PieceSource, Plan, QuantTarget};
use crate::progress::Progress;
use crate::reduce::Frontier;
use sink::preallocate;
pub(crate) use sink::Method;
pub(crate) use sink::Sink;
pub(crate) use staging::stage;
pub use staging::AlignedBuf;
use units::Unit;

/// Bytes filled and written at a time inside a unit: small enough that what was just filled is
/// still in the core's L2 cache when `pwrite` copies it, so each byte crosses memory once.
pub(crate) const STEP: usize = 1 << 20;

/// Bytes per direct write. The device reads them by DMA, so cache locality does not matter here,
/// while larger writes keep more requests in flight: on the ext4/virtio disk, 8 MiB wrote a kept
/// sdxl 1.63-1.74 GB/s against 1.56-1.58 for 1 MiB (same run; casts were equal either way).
const DIRECT_STEP: usize = 8 << 20;

/// How chunks reach the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// The measured-fastest backend for the target: [`Backend::Direct`] on disks (ext4: 1.7x the
    /// buffered ceiling at 40 % of the CPU time, see benches/RESULTS.md), [`Backend::Pwrite`] on
    /// tmpfs, where direct I/O is a copy like any other, and wherever a device pipeline writes.
    #[default]
    Auto,
    /// Positional writes (`pwrite`) from per-worker staging buffers.
    Pwrite,
    /// Units filled directly in a writable memory map of the file, one window per unit (no
    /// staging buffer at all). Only where the file's blocks can be reserved up front (also on
    /// tmpfs, at the cost of a zeroing pass); elsewhere the save writes with [`Backend::Pwrite`],
    /// since a store into a full disk through a map kills the process with SIGBUS.
    Mmap,
    /// Direct I/O (`O_DIRECT`) from aligned staging buffers: the disk reads them by DMA instead
    /// of the CPU copying into the page cache. The data section is aligned to 4096 bytes in the
    /// file (the header is padded with spaces, which readers ignore); falls back to
    /// [`Backend::Pwrite`] where the platform or file system refuses direct I/O.
    Direct,
}

impl Backend {
    /// The write method for a save into `folder`, decided once, before planning. `devices`: some
    /// tensors go through a device pipeline, which writes at arbitrary offsets (no direct I/O).
    pub(crate) fn resolve(self, folder: &Path, devices: bool) -> Method {
        match self {
            Backend::Pwrite => Method::Pwrite,
            Backend::Mmap => Method::Mmap,
            Backend::Direct if !devices && crate::sys::HAS_DIRECT_IO => Method::Direct,
            Backend::Direct => Method::Pwrite,
            Backend::Auto if devices || !crate::sys::HAS_DIRECT_IO || folder_is_tmpfs(folder) => {
                Method::Pwrite
            }
            Backend::Auto => Method::Direct,
        }
    }
}

/// Whether `folder` (or, if it does not exist yet, its nearest existing parent) is on tmpfs.
fn folder_is_tmpfs(folder: &Path) -> bool {
    folder
        .ancestors()
        .find_map(|p| File::open(p).ok())
        .is_some_and(|f| crate::sys::is_tmpfs(&f))
}

impl std::str::FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Backend::Auto),
            "pwrite" => Ok(Backend::Pwrite),
            "mmap" => Ok(Backend::Mmap),
            "direct" => Ok(Backend::Direct),
            _ => Err(Error::InvalidInput(format!(
                "unknown write backend `{s}`; choose auto, pwrite, mmap or direct"
            ))),
        }
    }
}

/// The most worker threads one write starts, whatever [`EngineOptions::threads`] asks: past a few
/// per core, more threads only add switching (100 000 asked for with 4 KiB units ran a 300 MB
/// convert for minutes).
pub const MAX_WRITER_THREADS: usize = 256;

/// The most worker threads per core one write starts: a worker waits on its reads and its writes
/// in turn, and two per core already keep a core busy through direct I/O.
pub const MAX_WORKERS_PER_CORE: usize = 8;

/// Settings of the writer.
///
/// Each worker holds one staging buffer of at most 1 MiB (a unit is filled and written in
/// 1 MiB steps), or 8 MiB (never more than a unit) when writing with direct I/O; `chunk_size` is
/// the unit of scheduling between workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Bytes per unit of work (rounded up to a multiple of 4096).
    pub chunk_size: u64,
    /// Host memory the engine may hold for staging; workers × chunk size never exceeds it.
    pub staging_budget: u64,
    /// Worker threads (0 = one per core, two per core through direct I/O). Whatever is asked,
    /// the writer starts at most [`MAX_WRITER_THREADS`] workers and at most
    /// [`MAX_WORKERS_PER_CORE`] per core.
    pub threads: usize,
    /// How chunks reach the file.
    pub backend: Backend,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            chunk_size: 32 << 20,
            staging_budget: 256 << 20,
            threads: 0,
            backend: Backend::Auto,
        }
    }
}

impl EngineOptions {
    /// Worker count and chunk size after applying the budget and the caps on workers
    /// ([`MAX_WRITER_THREADS`], [`MAX_WORKERS_PER_CORE`] per core).
    pub fn effective(&self) -> (usize, u64) {
        self.effective_per_core(1)
    }

    /// [`EngineOptions::effective`] for a write through direct I/O to a disk: with `threads`
    /// left at 0, two workers per core. Each worker waits on its input reads and its output
    /// writes in turn; a second one per core keeps the core busy meanwhile (a Flux-size convert
    /// from a file the page cache cannot hold: 28.6 s with 2 workers, 18.6 s with 4,
    /// benches/RESULTS.md). Saves from memory neither gain nor lose by it.
    pub fn effective_direct(&self) -> (usize, u64) {
        self.effective_per_core(2)
    }

    fn effective_per_core(&self, per_core: usize) -> (usize, u64) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = if self.threads == 0 {
            cores * per_core
        } else {
            self.threads
        };
        let budget = self.staging_budget.max(4096);
        let chunk = self.chunk_size.clamp(4096, budget) / 4096 * 4096;
        let cap = cores
            .saturating_mul(MAX_WORKERS_PER_CORE)
            .min(MAX_WRITER_THREADS);
        let workers = threads
            .min(usize::try_from(budget / chunk).unwrap_or(usize::MAX))
            .min(cap)
            .max(1);
        (workers, chunk)
    }
}

/// What a write saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct WriteReport {
    /// Non-finite (NaN/Inf) source values per planned tensor, in file order.
    pub non_finite: Vec<u64>,
}

/// Writes the whole plan into `file` (a new, empty temporary file), preallocated to its size.
///
/// # Errors
/// I/O errors (out of space is reported when preallocating, before any data is written where the
/// file system supports it), device-copy and cast errors, and [`Error::Cancelled`].
pub(crate) fn write(
    plan: &Plan,
    file: &File,
    method: Method,
    opts: &EngineOptions,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<WriteReport> {
    // Before the first read of a device tensor, by any worker: on this thread, whose stream
    // candle queued the caller's work on.
    offload::order::wait_for_producers(offload::order::plan_tensors(plan))?;
    let method = preallocate(file, plan.file_len(), method)?;
    let sink = Sink::new(file, method, plan.data_offset());
    sink.write_header(plan.header())?;
    progress.inc(plan.header().len() as u64);

    let (workers, chunk_size) = if sink.is_direct() {
        opts.effective_direct()
    } else {
        opts.effective()
    };
    // Direct I/O's units cover the whole data section, so with it the workers fill every piece
    // (the save never chooses it when a pipeline would run: `save::write_method`).
    let gpu = DevicePipelines::new(plan, chunk_size, !sink.is_direct());
    let units = if sink.is_direct() {
        units::aligned(plan, chunk_size, sink.direct_phase())
    } else {
        units::cut(plan, chunk_size, |i| !gpu.owns(i))
    };
    let workers = gpu.cpu_workers(workers, opts, chunk_size);
    let counts: Vec<AtomicU64> = plan.tensors().iter().map(|_| AtomicU64::new(0)).collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let record = |e: Error| {
        failed.store(true, Ordering::Relaxed);
        let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(e);
    };
    let done = |n: u64| {
        progress.inc(n);
        fault::wrote(n);
    };
    // The reductions of quantized outputs, computed ahead of the workers (see `prefetch`).
    let ahead = reductions_ahead(plan);
    let frontier = Frontier::default();
    let live = AtomicUsize::new(workers);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers + gpu.groups.len() + usize::from(!ahead.is_empty()))
        .thread_name(|i| format!("checkpoint-save-writer-{i}"))
        .stack_size(offload::EVAL_STACK)
        .build()
        .map_err(|e| Error::InvalidInput(format!("cannot start writer threads: {e}")))?;
    pool.scope(|s| {
        for group in &gpu.groups {
            let (sink, counts, failed, record, done) = (&sink, &counts, &failed, &record, &done);
            s.spawn(move |_| {
                let to_file = |buf: &[u8], at: u64| {
                    sink.write_parts(buf, at, workers)?;
                    done(buf.len() as u64);
                    Ok(())
                };
                let r = cuda::run_group(plan, group, &gpu.opts, &to_file, counts, cancel, failed);
                if let Err(e) = r {
                    record(e);
                }
            });
        }
        if !ahead.is_empty() {
            let (frontier, failed, ahead) = (&frontier, &failed, &ahead);
            s.spawn(move |_| prefetch(ahead, frontier, failed, cancel));
        }
        for _ in 0..workers {
            s.spawn(|_| {
                let mut staging = Staging::default();
                loop {
                    if failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(unit) = units.get(i) else { break };
                    frontier.reached(unit.span(plan).start);
                    let result = if cancel.load(Ordering::Acquire) {
                        Err(Error::Cancelled)
                    } else {
                        write_unit(plan, &sink, unit, &mut staging, &counts)
                    };
                    match result {
                        Ok(n) => done(n),
                        Err(e) => {
                            record(e);
                            break;
                        }
                    }
                }
                // The last worker out releases the prefetcher.
                if live.fetch_sub(1, Ordering::AcqRel) == 1 {
                    frontier.close();
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(WriteReport {
        non_finite: counts.into_iter().map(AtomicU64::into_inner).collect(),
    })
}

/// A tensor whose whole-tensor facts are computed before its first byte.
enum Ahead<'a> {
    /// A quantized output's scales.
    Scales(&'a QuantTarget),
    /// A merge method's facts (norms, dots, k-th magnitudes).
    Method(&'a crate::model::Merged),
}

/// The quantized outputs whose scales need a reduction pass and the merges whose methods read
/// their operands ahead, in the order the file reaches them, each with the data-section offset
/// of its first byte.
fn reductions_ahead(plan: &Plan) -> Vec<(u64, Ahead<'_>)> {
    let mut out: Vec<(u64, Ahead<'_>)> = Vec::new();
    for t in plan.targets().iter().filter(|t| t.needs_reduction()) {
        let first = plan.pieces().iter().find_map(|p| match &p.source {
            PieceSource::Encoded { target, .. } if std::sync::Arc::ptr_eq(target, t) => {
                Some(p.start)
            }
            _ => None,
        });
        if let Some(at) = first {
            out.push((at, Ahead::Scales(t)));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for p in plan.pieces() {
        if let PieceSource::Merged { merged, .. } = &p.source {
            let id = std::sync::Arc::as_ptr(merged) as usize;
            if seen.insert(id) && crate::offload::method::reads_ahead(merged) {
                out.push((p.start, Ahead::Method(merged)));
            }
        }
    }
    out.sort_by_key(|(at, _)| *at);
    out
}

/// Computes the reductions of the tensors ahead of the workers: tensor n+1's while tensor n is
/// written (it waits until a worker has reached tensor n), so the second read of a source
/// overlaps writes instead of stalling a worker. A worker that reaches a tensor first computes
/// its reduction itself (the other waits for it: [`crate::reduce::Computed`]); an error is left
/// for that worker to report.
fn prefetch(
    ahead: &[(u64, Ahead<'_>)],
    frontier: &Frontier,
    failed: &AtomicBool,
    cancel: &AtomicBool,
) {
    let mut scratch = Scratch::default();
    let mut previous = 0u64;
    for (at, item) in ahead {
        if !frontier.wait_for(previous)
            || failed.load(Ordering::Relaxed)
            || cancel.load(Ordering::Relaxed)
        {
            return;
        }
        let r = match item {
            Ahead::Scales(target) => target.scales(&mut scratch).map(|_| ()),
            Ahead::Method(m) => crate::offload::method::prepare_ahead(m, &mut scratch),
        };
        if r.is_err() {
            return;
        }
        previous = *at;
    }
}

/// The device pipelines of a write (the CUDA fast path; none without the `cuda` feature or
/// without CUDA tensors): which pieces they own and how they are sized.
struct DevicePipelines {
    groups: Vec<cuda::DeviceGroup>,
    owned: Vec<bool>,
    opts: cuda::PipelineOptions,
}

impl DevicePipelines {
    /// The pipelines of `plan`'s device pieces, or none when `enabled` is false.
    fn new(plan: &Plan, chunk: u64, enabled: bool) -> Self {
        let groups = match enabled {
            true => cuda::device_groups(plan),
            false => Vec::new(),
        };
        let mut owned = vec![false; plan.pieces().len()];
        for &i in groups.iter().flat_map(|g| &g.pieces) {
            owned[i] = true;
        }
        let opts = cuda::PipelineOptions {
            buffer_size: chunk as usize,
        };
        Self {
            groups,
            owned,
            opts,
        }
    }

    fn owns(&self, piece: usize) -> bool {
        self.owned[piece]
    }

    /// CPU workers left once each pipeline's pinned buffers are taken out of the staging budget.
    fn cpu_workers(&self, workers: usize, engine: &EngineOptions, chunk: u64) -> usize {
        let pinned = (self.groups.len() * cuda::PIPELINE_DEPTH) as u64 * chunk;
        let left = engine.staging_budget.saturating_sub(pinned) / chunk.max(1);
        (left as usize).clamp(1, workers.max(1))
    }
}

/// A worker's staging memory: a plain buffer, an aligned one for direct I/O, and the fills' own.
#[derive(Default)]
struct Staging {
    plain: Vec<u8>,
    aligned: Option<AlignedBuf>,
    scratch: Scratch,
}

/// Writes one unit; returns the bytes written.
fn write_unit(
    plan: &Plan,
    sink: &Sink<'_>,
    unit: &Unit,
    staging: &mut Staging,
    counts: &[AtomicU64],
) -> Result<u64> {
    let span = unit.span(plan);
    let len = (span.end - span.start) as usize;
    let mut window = match sink.is_mmap() {
        true => Some(sink.window(span.start, len)?),
        false => None,
    };
    match unit {
        Unit::InPlace { piece, bytes } => {
            let p = &plan.pieces()[*piece];
            let w = crate::plan::unit_width(p.dst_dtype) as u64;
            let units = (bytes.start / w) as usize..(bytes.end / w) as usize;
            let step = if sink.is_direct() { DIRECT_STEP } else { STEP };
            let at = into_tensor(plan, p) + bytes.start;
            let count = offload::with_bytes_in_place(p, units, |src| {
                let mut count = 0;
                for (k, part) in src.chunks(step).enumerate() {
                    let off = k * step;
                    count += count_non_finite(plan, p, part, at + off as u64);
                    match &mut window {
                        Some(win) => win.bytes()[off..off + part.len()].copy_from_slice(part),
                        None => sink.write_at(part, span.start + off as u64)?,
                    }
                }
                Ok(count)
            })?;
            counts[p.tensor].fetch_add(count, Ordering::Relaxed);
        }
        Unit::Staged { range, pieces } => {
            let mapped = window.is_some();
            let step_len = if sink.is_direct() { DIRECT_STEP } else { STEP };
            let mut step_start = range.start;
            while step_start < range.end {
                let step = step_start..(step_start + step_len as u64).min(range.end);
                let n = (step.end - step.start) as usize;
                let off = (step.start - range.start) as usize;
                let Staging {
                    plain,
                    aligned,
                    scratch,
                } = staging;
                let fill: &mut [u8] = match &mut window {
                    Some(win) => &mut win.bytes()[off..off + n],
                    None if sink.is_direct() => {
                        // Sized by the first step; grown if a later step is larger.
                        let buf = match aligned.take() {
                            Some(b) if b.as_slice().len() >= n => b,
                            _ => AlignedBuf::zeroed(n)?,
                        };
                        &mut aligned.insert(buf).as_mut_slice()[..n]
                    }
                    None => {
                        plain.resize(n, 0);
                        &mut plain[..n]
                    }
                };
                fill_pieces(plan, pieces.clone(), &step, fill, scratch, |t, c| {
                    counts[t].fetch_add(c, Ordering::Relaxed);
                })?;
                if !mapped {
                    sink.write_at(fill, step.start)?;
                }
                step_start = step.end;
            }
        }
    }
    Ok(len as u64)
}

/// Fills `out` with the bytes of data-section range `range`, casting on the way: what a staged
/// unit holds before it is written. Reports each piece's non-finite count to `count(tensor, n)`.
/// Device tensors are read as they are: the caller has waited for the work that produced them
/// (as [`write`] does, see the offload stage's `order`).
///
/// # Errors
/// [`Error::InvalidInput`] when `out` does not have the range's length or the range cuts an
/// element; cast and device errors.
pub fn fill_range(
    plan: &Plan,
    range: Range<u64>,
    out: &mut [u8],
    scratch: &mut Scratch,
    count: impl FnMut(usize, u64),
) -> Result<()> {
    if range.end < range.start
        || out.len() as u64 != range.end - range.start
        || range.end > plan.data_len()
    {
        return Err(Error::InvalidInput(format!(
            "cannot fill {} bytes from data-section range {range:?} of {} bytes",
            out.len(),
            plan.data_len()
        )));
    }
    let first = plan
        .pieces()
        .partition_point(|p| p.end() <= range.start && !p.is_empty());
    let last = plan.pieces().partition_point(|p| p.start < range.end);
    fill_pieces(plan, first..last.max(first), &range, out, scratch, count)
}

fn fill_pieces(
    plan: &Plan,
    pieces: Range<usize>,
    range: &Range<u64>,
    out: &mut [u8],
    scratch: &mut Scratch,
    mut count: impl FnMut(usize, u64),
) -> Result<()> {
    for p in &plan.pieces()[pieces] {
        let Some((units, bytes)) = units::overlap(p, range) else {
            continue;
        };
        let name = &plan.tensors()[p.tensor].name;
        let size = crate::plan::unit_width(p.dst_dtype);
        if units.len() * size != bytes.len() {
            return Err(Error::InvalidInput(format!(
                "range {range:?} cuts an element of `{name}` ({size}-byte elements); use boundaries that are multiples of 8"
            )));
        }
        let at = into_tensor(plan, p) + (units.start * size) as u64;
        let mut n = offload::fill(p, name, units, &mut out[bytes.clone()], scratch)?;
        if plan.kept_blocks(p.tensor).is_some() {
            n = count_non_finite(plan, p, &out[bytes], at);
        }
        count(p.tensor, n);
    }
    Ok(())
}

/// Bytes from the start of `p`'s tensor to the start of `p`.
fn into_tensor(plan: &Plan, p: &Piece) -> u64 {
    p.start - plan.tensors()[p.tensor].offsets.0
}

/// The NaN/±Inf values in `bytes` of piece `p`, which lie `at` bytes into its tensor: by the
/// source dtype, or for ggml blocks copied as they are, by their scales.
fn count_non_finite(plan: &Plan, p: &Piece, bytes: &[u8], at: u64) -> u64 {
    match plan.kept_blocks(p.tensor) {
        Some(t) => {
            let phase = (at % t.block_bytes() as u64) as usize;
            crate::quant::ggml::finite::count_non_finite(t, bytes, phase)
        }
        None => crate::cast::count_non_finite(bytes, p.src_dtype),
    }
}

mod fault;

#[cfg(test)]
mod tests;
