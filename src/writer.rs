//! Writer: puts a plan's bytes into an open file.
//!
//! [`write_sequential`] is the simple, obviously-correct writer: header, then every piece in
//! order, casting through one reusable buffer. Same-dtype CPU tensors are written straight from
//! their storage. It is the reference the parallel engine is tested against.
//!
//! [`write_parallel`] cuts the data section into chunks for CPU workers; pieces whose tensors sit
//! on a CUDA device (with the `cuda` feature) are left out of those chunks and written by one
//! device pipeline per GPU ([`crate::offload::cuda`]) running beside the workers.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::cast;
use crate::error::{Error, IoContext, Result};
use crate::offload::{cuda, with_host_range};
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

/// How chunks reach the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// The measured-fastest backend for the target: [`Backend::Direct`] on disks (ext4: 1.7x the
    /// buffered ceiling at 40 % of the CPU time, see benches/RESULTS.md), [`Backend::Pwrite`] on
    /// tmpfs, where direct I/O is a copy like any other.
    #[default]
    Auto,
    /// Positional writes (`pwrite`) from per-worker staging buffers.
    Pwrite,
    /// Chunks filled directly in a writable memory map of the file, one window per chunk (no
    /// staging buffer at all).
    Mmap,
    /// Direct I/O (`O_DIRECT`) from aligned staging buffers: the disk reads them by DMA instead
    /// of the CPU copying into the page cache. Needs the data section aligned to 4096 in the file
    /// (the save pads the header); falls back to [`Backend::Pwrite`] where unavailable.
    Direct,
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

/// Settings of the parallel engine.
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
    /// Worker threads (0 = one per core).
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
    /// Worker count and chunk size after applying the budget.
    pub fn effective(&self) -> (usize, u64) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = if self.threads == 0 {
            cores
        } else {
            self.threads
        };
        let budget = self.staging_budget.max(4096);
        let chunk = self.chunk_size.clamp(4096, budget) / 4096 * 4096;
        let workers = threads.min((budget / chunk) as usize).max(1);
        (workers, chunk)
    }
}

/// Writes the plan with parallel workers at their offsets into `file`, preallocated to the
/// final size. Same bytes as [`write_sequential`].
///
/// # Errors
/// I/O errors (out of space is reported when preallocating, before any data is written where the
/// file system supports it), device-copy and cast errors, and [`Error::Cancelled`].
pub fn write_parallel(
    plan: &Plan,
    file: &File,
    opts: &EngineOptions,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<WriteReport> {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicU64, AtomicUsize};
    use std::sync::Mutex;

    preallocate(file, plan.file_len())?;
    file.write_all_at(plan.header(), 0)
        .ctx(|| "writing the checkpoint header".into())?;
    progress.inc(plan.header().len() as u64);

    let (workers, chunk_size) = opts.effective();
    let gpu = DevicePipelines::new(plan, opts);
    let wants_direct = match opts.backend {
        Backend::Direct => true,
        Backend::Auto => !is_tmpfs(file),
        Backend::Pwrite | Backend::Mmap => false,
    };
    let direct = if wants_direct
        && gpu.groups.is_empty()
        && plan.data_offset().is_multiple_of(DIRECT_ALIGN as u64)
    {
        reopen_direct(file)
    } else {
        None
    };
    let units = match direct {
        Some(_) => crate::chunks::aligned(plan, chunk_size),
        None => crate::chunks::chunks_where(plan, chunk_size, |i| !gpu.owns(i)),
    };
    let workers = gpu.cpu_workers(workers, opts, chunk_size);
    let counts: Vec<AtomicU64> = plan.tensors().iter().map(|_| AtomicU64::new(0)).collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers + gpu.groups.len())
        .thread_name(|i| format!("checkpoint-save-writer-{i}"))
        .build()
        .map_err(|e| Error::InvalidInput(format!("cannot start writer threads: {e}")))?;
    let backend = match opts.backend {
        Backend::Auto | Backend::Pwrite | Backend::Direct => Backend::Pwrite,
        Backend::Mmap => Backend::Mmap,
    };
    let record = |e: Error| {
        failed.store(true, Ordering::Relaxed);
        let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(e);
    };
    pool.scope(|s| {
        for group in &gpu.groups {
            let (counts, failed, record) = (&counts, &failed, &record);
            s.spawn(move |_| {
                let r = cuda::write_group(
                    plan, file, group, &gpu.opts, counts, progress, cancel, failed,
                );
                if let Err(e) = r {
                    record(e);
                }
            });
        }
        for _ in 0..workers {
            s.spawn(|_| {
                let mut staging = Staging::default();
                loop {
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(unit) = units.get(i) else { return };
                    let result = if cancel.load(Ordering::Relaxed) {
                        Err(Error::Cancelled)
                    } else {
                        write_unit(
                            plan,
                            file,
                            direct.as_ref(),
                            unit,
                            backend,
                            &mut staging,
                            &counts,
                        )
                    };
                    match result {
                        Ok(n) => progress.inc(n),
                        Err(e) => return record(e),
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(WriteReport {
        non_finite: counts.into_iter().map(AtomicU64::into_inner).collect(),
        bytes: plan.file_len(),
    })
}

/// The device pipelines of a parallel write (the CUDA fast path; none without the `cuda`
/// feature or without CUDA tensors): which pieces they own and how they are sized.
struct DevicePipelines {
    groups: Vec<cuda::DeviceGroup>,
    owned: Vec<bool>,
    opts: cuda::PipelineOptions,
}

impl DevicePipelines {
    fn new(plan: &Plan, engine: &EngineOptions) -> Self {
        let groups = cuda::device_groups(plan);
        let mut owned = vec![false; plan.pieces().len()];
        for &i in groups.iter().flat_map(|g| &g.pieces) {
            owned[i] = true;
        }
        let (threads, chunk) = engine.effective();
        let opts = cuda::PipelineOptions {
            buffer_size: chunk as usize,
            write_threads: threads,
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

/// Reserves the file's blocks up front, so a full disk fails before data is written.
///
/// On tmpfs, reserving means allocating and zeroing every page, a whole extra pass over memory
/// that the data then overwrites; there the file is only sized, and a full tmpfs is reported by
/// the write that hits it (the temporary file is removed either way).
fn preallocate(file: &File, len: u64) -> Result<()> {
    use std::os::fd::AsRawFd;
    let ctx = || format!("reserving {len} bytes for the checkpoint (is the disk full?)");
    let Ok(off_len) = libc::off_t::try_from(len) else {
        return Err(Error::io(
            ctx(),
            std::io::Error::from(std::io::ErrorKind::FileTooLarge),
        ));
    };
    if is_tmpfs(file) {
        return file.set_len(len).ctx(ctx);
    }
    // SAFETY: plain system call on a file descriptor we own for the duration of the call.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, off_len) };
    match rc {
        0 => Ok(()),
        // File systems without fallocate: a sparse file of the right size still works.
        libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS => file.set_len(len).ctx(ctx),
        errno => Err(Error::io(ctx(), std::io::Error::from_raw_os_error(errno))),
    }
}

/// Whether the file lives on tmpfs (where direct I/O is no cheaper and preallocation zeroes).
pub fn is_tmpfs(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    // SAFETY: fstatfs only writes into the zeroed struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    rc == 0 && st.f_type as i64 == TMPFS_MAGIC
}

/// A worker's staging memory: a plain buffer, or an aligned one for direct I/O.
#[derive(Default)]
struct Staging {
    plain: Vec<u8>,
    aligned: Option<HostImage>,
}

/// A direct-I/O handle on the same file (through /proc/self/fd), or `None` where refused.
pub(crate) fn reopen_direct(file: &File) -> Option<File> {
    use std::os::fd::AsRawFd;
    open_direct(std::path::Path::new(&format!(
        "/proc/self/fd/{}",
        file.as_raw_fd()
    )))
}

/// Bytes filled and written at a time inside a unit: small enough that what was just filled is
/// still in the core's L2 cache when `pwrite` copies it, so each byte crosses memory once.
const STEP: usize = 1 << 20;

/// Bytes per direct write. The device reads them by DMA, so cache locality does not matter here,
/// while larger writes keep more requests in flight: on the ext4/virtio disk, 8 MiB wrote a kept
/// sdxl 1.63-1.74 GB/s against 1.56-1.58 for 1 MiB (same run; casts were equal either way).
const DIRECT_STEP: usize = 8 << 20;

/// Writes one unit; returns the bytes written.
fn write_unit(
    plan: &Plan,
    file: &File,
    direct: Option<&File>,
    unit: &crate::chunks::Chunk,
    backend: Backend,
    staging: &mut Staging,
    counts: &[std::sync::atomic::AtomicU64],
) -> Result<u64> {
    use crate::chunks::Chunk;
    use std::os::unix::fs::FileExt;

    let span = unit.span(plan);
    let at = plan.data_offset() + span.start;
    let len = (span.end - span.start) as usize;
    let ctx = || format!("writing {len} bytes at offset {at} of the checkpoint");
    let mut window = match backend {
        Backend::Mmap => Some(map_window(file, at, len).ctx(ctx)?),
        _ => None,
    };
    match unit {
        Chunk::InPlace { piece, bytes } => {
            let p = &plan.pieces()[*piece];
            let size = (p.dst_dtype.bitsize() / 8).max(1) as u64;
            let elems = (bytes.start / size) as usize..(bytes.end / size) as usize;
            let count = with_host_range(p, elems, |src, dtype| {
                let mut count = 0;
                for (k, part) in src.chunks(STEP).enumerate() {
                    let off = k * STEP;
                    count += cast::count_non_finite(part, dtype);
                    match &mut window {
                        Some((map, skip)) => {
                            map[*skip + off..*skip + off + part.len()].copy_from_slice(part)
                        }
                        None => file.write_all_at(part, at + off as u64).ctx(ctx)?,
                    }
                }
                Ok(count)
            })?;
            counts[p.tensor].fetch_add(count, Ordering::Relaxed);
        }
        Chunk::Staged { range, pieces } => {
            let mapped = window.is_some();
            let step_len = if direct.is_some() && !mapped {
                DIRECT_STEP
            } else {
                STEP
            };
            let mut step_start = range.start;
            while step_start < range.end {
                let step = step_start..(step_start + step_len as u64).min(range.end);
                let n = (step.end - step.start) as usize;
                let off = (step.start - range.start) as usize;
                let fill: &mut [u8] = match (&mut window, direct) {
                    (Some((map, skip)), _) => &mut map[*skip + off..*skip + off + n],
                    (None, Some(_)) => {
                        // Sized by the first step (a small chunk size gives small steps);
                        // grown if a later step is larger.
                        let image = match staging.aligned.take() {
                            Some(image) if image.as_slice().len() >= n => image,
                            _ => HostImage::zeroed(n)?,
                        };
                        &mut staging.aligned.insert(image).as_mut_slice()[..n]
                    }
                    (None, None) => {
                        staging.plain.resize(n, 0);
                        &mut staging.plain[..n]
                    }
                };
                fill_pieces(plan, pieces.clone(), &step, fill, |t, n| {
                    counts[t].fetch_add(n, Ordering::Relaxed);
                })?;
                if !mapped {
                    // Direct I/O takes whole 4096-byte blocks; the file's unaligned tail goes
                    // through the page cache.
                    let pos = at + off as u64;
                    match direct {
                        Some(d) if n.is_multiple_of(DIRECT_ALIGN) => {
                            match d.write_all_at(fill, pos) {
                                // Accepted at open but not for this write: the page cache always works.
                                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                                    file.write_all_at(fill, pos).ctx(ctx)?
                                }
                                r => r.ctx(ctx)?,
                            }
                        }
                        _ => file.write_all_at(fill, pos).ctx(ctx)?,
                    }
                }
                step_start = step.end;
            }
        }
    }
    Ok(len as u64)
}

/// Fills `out` with the bytes of data-section range `range`, casting on the way: what a staged
/// chunk holds before it is written. Reports each piece's non-finite count to `count(tensor, n)`.
///
/// # Errors
/// [`Error::InvalidInput`] when `out` does not have the range's length; cast and device errors.
pub fn fill_range(
    plan: &Plan,
    range: std::ops::Range<u64>,
    out: &mut [u8],
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
    fill_pieces(plan, first..last.max(first), &range, out, count)
}

fn fill_pieces(
    plan: &Plan,
    pieces: std::ops::Range<usize>,
    range: &std::ops::Range<u64>,
    out: &mut [u8],
    mut count: impl FnMut(usize, u64),
) -> Result<()> {
    for p in &plan.pieces()[pieces] {
        let Some((elems, bytes)) = crate::chunks::overlap(p, range) else {
            continue;
        };
        let name = &plan.tensors()[p.tensor].name;
        let size = (p.dst_dtype.bitsize() / 8).max(1);
        if elems.len() * size != bytes.len() {
            return Err(Error::InvalidInput(format!(
                "range {range:?} cuts an element of `{name}` ({size}-byte elements); use boundaries that are multiples of 8"
            )));
        }
        let n = with_host_range(p, elems, |src, dtype| {
            cast::convert(name, src, dtype, &mut out[bytes], p.dst_dtype)
        })?;
        count(p.tensor, n);
    }
    Ok(())
}

/// Maps `[at, at + len)` of the file writable; returns the map and the offset of `at` in it.
fn map_window(file: &File, at: u64, len: usize) -> std::io::Result<(memmap2::MmapMut, usize)> {
    const PAGE: u64 = 4096;
    let base = at / PAGE * PAGE;
    let skip = (at - base) as usize;
    // SAFETY: the file is our private temporary file; nothing else maps or truncates it while
    // the save runs, and each window is written by one worker only.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(base)
            .len(skip + len)
            .map_mut(file)?
    };
    // Fault the pages in one call instead of one fault per page; older kernels lack it.
    let _ = map.advise(memmap2::Advice::PopulateWrite);
    Ok((map, skip))
}

/// Alignment of direct I/O: file offsets, lengths and memory addresses.
pub const DIRECT_ALIGN: usize = 4096;

/// A checkpoint's data section staged in host memory, 4096-byte aligned so it can be written
/// with direct I/O: the disk reads it by DMA, without a CPU copy into the page cache.
pub struct HostImage {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    layout: std::alloc::Layout,
}

// SAFETY: HostImage owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for HostImage {}
// SAFETY: shared access only reads.
unsafe impl Sync for HostImage {}

impl HostImage {
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
            Error::InvalidInput(format!(
                "out of host memory staging a {len}-byte checkpoint"
            ))
        })?;
        Ok(Self { ptr, len, layout })
    }

    /// The staged bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised (zeroed, then written) bytes while self lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for HostImage {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl std::fmt::Debug for HostImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostImage({} bytes)", self.len)
    }
}

/// Fills a [`HostImage`] with the plan's whole data section (casts fused, in parallel on the
/// rayon pool): one read of every source tensor. Returns the image and the non-finite counts.
///
/// `reuse` is an image from an earlier save: used when it is large enough, which spares the
/// kernel faulting in and zeroing fresh pages (every byte is overwritten).
///
/// # Errors
/// Allocation, cast and device-copy errors.
pub fn stage_image(plan: &Plan, reuse: Option<HostImage>) -> Result<(HostImage, Vec<u64>)> {
    use rayon::prelude::*;
    use std::sync::atomic::AtomicU64;
    let len = usize::try_from(plan.data_len()).map_err(|_| {
        Error::InvalidInput("the checkpoint does not fit in this machine's address space".into())
    })?;
    let mut image = match reuse {
        Some(mut image) if image.layout.size() >= len => {
            image.len = len;
            image
        }
        _ => HostImage::zeroed(len)?,
    };
    let counts: Vec<AtomicU64> = plan.tensors().iter().map(|_| AtomicU64::new(0)).collect();
    // Steps of 1 MiB, aligned to 8 from the start of the data section: element-aligned.
    image
        .as_mut_slice()
        .par_chunks_mut(STEP)
        .enumerate()
        .try_for_each(|(i, out)| {
            let start = (i * STEP) as u64;
            fill_range(plan, start..start + out.len() as u64, out, |t, n| {
                counts[t].fetch_add(n, Ordering::Relaxed);
            })
        })?;
    Ok((
        image,
        counts.into_iter().map(AtomicU64::into_inner).collect(),
    ))
}

/// Writes the header and a staged image into `file` (whose path is `path`): with direct I/O when
/// the data section is 4096-aligned in the file and the file system supports it, else with
/// ordinary positional writes.
///
/// # Errors
/// I/O errors, and [`Error::Cancelled`] when `cancel` becomes true between blocks.
pub fn write_image(
    plan: &Plan,
    image: &HostImage,
    file: &File,
    path: &std::path::Path,
    cancel: &AtomicBool,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let ctx = || format!("writing the checkpoint {}", path.display());
    preallocate(file, plan.file_len())?;
    file.write_all_at(plan.header(), 0).ctx(ctx)?;
    let data = image.as_slice();
    let at = plan.data_offset();
    let direct = if at.is_multiple_of(DIRECT_ALIGN as u64) {
        open_direct(path)
    } else {
        None
    };
    let mut off = 0;
    if let Some(d) = &direct {
        let aligned = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
        while off < aligned {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let n = (aligned - off).min(DIRECT_STEP);
            match d.write_all_at(&data[off..off + n], at + off as u64) {
                Ok(()) => off += n,
                // Some file systems accept O_DIRECT at open but not at write: finish buffered.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
                Err(e) => return Err(Error::io(ctx(), e)),
            }
        }
    }
    while off < data.len() {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let n = (data.len() - off).min(DIRECT_STEP);
        file.write_all_at(&data[off..off + n], at + off as u64)
            .ctx(ctx)?;
        off += n;
    }
    Ok(())
}

/// A second, direct-I/O handle on the file, or `None` where the file system refuses it (tmpfs).
fn open_direct(path: &std::path::Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Arch;
    use crate::plan::{ComponentDtypes, PlanOptions};
    use crate::save::{lay_out, LayoutChoice};
    use crate::synthetic::{self, SyntheticOptions};
    use candle_core::Device;
    use std::collections::BTreeMap;
    use std::io::Read;

    #[test]
    fn fill_range_reproduces_the_written_data_section() {
        let c = synthetic::build(
            &SyntheticOptions::new(Arch::Sdxl).with_max_dim(24),
            &Device::Cpu,
        )
        .unwrap();
        let (_, _, layout) = lay_out(&c, &LayoutChoice::Arch(Arch::Sdxl), None).unwrap();
        let opts = PlanOptions {
            dtypes: ComponentDtypes::all(crate::dtype::TargetDtype::BF16),
            ..Default::default()
        };
        let plan = Plan::new(&layout, &c, &BTreeMap::new(), &opts).unwrap();
        let file = tempfile::tempfile().unwrap();
        let report =
            write_sequential(&plan, &file, &Progress::hidden(), &AtomicBool::new(false)).unwrap();
        let mut written = Vec::new();
        let mut f = &file;
        std::io::Seek::rewind(&mut f).unwrap();
        f.read_to_end(&mut written).unwrap();
        let data = &written[plan.data_offset() as usize..];
        // Odd, unaligned-to-pieces ranges, each filled independently.
        let cuts = [0, 16, 4096, 10_000, (data.len() - 6) / 8 * 8, data.len()];
        let mut counts = vec![0u64; plan.tensors().len()];
        for w in cuts.windows(2) {
            let mut out = vec![0u8; w[1] - w[0]];
            fill_range(&plan, w[0] as u64..w[1] as u64, &mut out, |t, n| {
                counts[t] += n
            })
            .unwrap();
            assert!(out == data[w[0]..w[1]], "range {w:?}");
        }
        assert_eq!(counts, report.non_finite);
        let mut wrong = vec![0u8; 3];
        assert!(fill_range(&plan, 0..4, &mut wrong, |_, _| {}).is_err());
        let mut cut = vec![0u8; 14];
        let err = fill_range(&plan, 0..14, &mut cut, |_, _| {}).unwrap_err();
        assert!(err.to_string().contains("cuts an element"), "{err}");
    }

    #[test]
    fn budget_bounds_workers_and_chunks() {
        let o = EngineOptions {
            chunk_size: 32 << 20,
            staging_budget: 40 << 20,
            threads: 8,
            ..Default::default()
        };
        assert_eq!(o.effective(), (1, 32 << 20));
        let o = EngineOptions {
            chunk_size: 32 << 20,
            staging_budget: 8 << 20,
            threads: 4,
            ..Default::default()
        };
        assert_eq!(o.effective(), (1, 8 << 20));
        let o = EngineOptions {
            chunk_size: 1 << 20,
            staging_budget: 256 << 20,
            threads: 3,
            ..Default::default()
        };
        assert_eq!(o.effective(), (3, 1 << 20));
    }
}
