//! The baselines of the benchmark — candle's own save and raw writes of the same bytes — and
//! the measurement of one run (wall time, CPU time, memory peaks).
//!
//! The raw writes go through the writer's own sink (positional writes, direct I/O where the
//! buffer and offsets allow), so the ceiling is measured with exactly the system calls a save
//! makes, minus everything else a save does.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::memory::{Peaks, Watch};
use crate::error::{Error, IoContext, Result};
use crate::model::dtype::candle_dtype;
use crate::model::{Components, TargetDtype};
use crate::sys::cpu_seconds;
use crate::write::{AlignedBuf, Method, Sink};

/// One run: wall seconds, memory peaks above the level before it, CPU seconds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sample {
    pub(super) secs: f64,
    pub(super) peaks: Peaks,
    pub(super) cpu: f64,
}

/// Runs `f`, measuring it, and removes `path` afterwards.
pub(super) fn timed(f: impl FnOnce() -> Result<()>, path: &Path) -> Result<Sample> {
    // What an earlier run freed is not this run's memory.
    crate::sys::release_free_heap();
    let watch = Watch::start();
    let cpu = cpu_seconds();
    let start = Instant::now();
    let r = f();
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    let peaks = watch.finish();
    remove(path)?;
    r.map(|()| Sample { secs, peaks, cpu })
}

/// Removes `path`; a missing file is fine.
pub(super) fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

/// candle's path as a new user writes it: cast every tensor, then `safetensors::save`, then fsync.
pub(super) fn candle_save(components: &Components, dtype: TargetDtype, path: &Path) -> Result<()> {
    let target = candle_target(dtype);
    let mut map = HashMap::new();
    for (kind, tensors) in components.iter() {
        for (k, t) in tensors {
            let t = t.as_candle().ok_or_else(|| {
                Error::InvalidInput("candle's save needs tensors held by candle".into())
            })?;
            let t = match target {
                Some(d) if t.dtype().is_float() => t.to_dtype(d)?,
                _ => t.clone(),
            };
            map.insert(format!("{kind}.{k}"), t);
        }
    }
    save_synced(&map, path)
}

/// candle's file-to-file program: `safetensors::load`, cast each tensor (dropping the loaded one
/// as it goes, as `into_iter` does), `safetensors::save`, fsync.
pub(super) fn candle_file_to_file(input: &Path, dtype: TargetDtype, path: &Path) -> Result<()> {
    let target = candle_target(dtype);
    let loaded = candle_core::safetensors::load(input, &candle_core::Device::Cpu)?;
    let map = loaded
        .into_iter()
        .map(|(k, t)| match target {
            Some(d) if t.dtype().is_float() => Ok((k, t.to_dtype(d)?)),
            _ => Ok((k, t)),
        })
        .collect::<Result<HashMap<_, _>>>()?;
    save_synced(&map, path)
}

fn candle_target(dtype: TargetDtype) -> Option<candle_core::DType> {
    dtype.file_dtype().and_then(candle_dtype)
}

pub(super) fn save_synced(map: &HashMap<String, candle_core::Tensor>, path: &Path) -> Result<()> {
    candle_core::safetensors::save(map, path)?;
    File::open(path)
        .and_then(|f| f.sync_all())
        .ctx(|| format!("syncing {}", path.display()))
}

/// `len` bytes of xorshift noise (never time zeros: some storage compresses them).
pub(super) fn random_block(len: usize) -> Result<AlignedBuf> {
    let mut block = AlignedBuf::zeroed(len)?;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for b in block.as_mut_slice() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 24) as u8;
    }
    Ok(block)
}

/// A new file for writing; refuses to touch one that exists.
fn create_new(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(path)
}

/// One stream of `block`-sized writes in file order, then fsync.
pub(super) fn raw_sequential(path: &Path, bytes: u64, block: &[u8]) -> Result<()> {
    raw_parallel(path, bytes, 1, bytes.max(1), block, false)
}

/// `threads` workers reading `files` (one after the other, as one run of bytes) `chunk` at a
/// time in order, `block` bytes per `pread`, through the page cache as a job's reads go: what
/// the storage takes to deliver a job's inputs.
pub(super) fn raw_read(files: &[&Path], threads: usize, chunk: u64, block: usize) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let opened: Vec<(File, u64)> = files
        .iter()
        .map(|p| {
            let ctx = || format!("raw read of {}", p.display());
            let f = File::open(p).ctx(ctx)?;
            let len = f.metadata().ctx(ctx)?.len();
            Ok((f, len))
        })
        .collect::<Result<_>>()?;
    let ranges: Vec<(usize, u64, u64)> = opened
        .iter()
        .enumerate()
        .flat_map(|(i, (_, len))| {
            (0..len.div_ceil(chunk.max(1)))
                .map(move |c| (i, c * chunk, (c * chunk + chunk).min(*len)))
        })
        .collect();
    let next = AtomicU64::new(0);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let mut buf = vec![0u8; block.max(1)];
                    loop {
                        let Some(&(i, start, end)) =
                            ranges.get(next.fetch_add(1, Ordering::Relaxed) as usize)
                        else {
                            return Ok(());
                        };
                        let (f, _) = &opened[i];
                        let mut at = start;
                        while at < end {
                            let n = (end - at).min(buf.len() as u64) as usize;
                            f.read_exact_at(&mut buf[..n], at)
                                .ctx(|| format!("raw read of {}", files[i].display()))?;
                            at += n as u64;
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(Error::InvalidInput("a reader thread panicked".into())))
        })
    })
}

/// Whether files in `dir` take direct I/O (the probe file `probe` is created and removed).
pub(super) fn accepts_direct_io(dir: &Path, probe: &Path) -> Result<bool> {
    let ctx = || format!("probing direct I/O in {}", dir.display());
    let f = create_new(probe).ctx(ctx)?;
    let ok = Sink::new(&f, Method::Direct, 0).is_direct();
    remove(probe)?;
    Ok(ok)
}

/// `threads` workers taking `chunk`-sized ranges in order and writing them `block` at a time,
/// then fsync. With `direct`, through direct I/O (`block` is aligned; the file's unaligned tail
/// goes through the page cache); the folder must accept it.
pub(super) fn raw_parallel(
    path: &Path,
    bytes: u64,
    threads: usize,
    chunk: u64,
    block: &[u8],
    direct: bool,
) -> Result<()> {
    let ctx = || format!("raw write to {}", path.display());
    let f = create_new(path).ctx(ctx)?;
    f.set_len(bytes).ctx(ctx)?;
    let method = if direct {
        Method::Direct
    } else {
        Method::Pwrite
    };
    let sink = Sink::new(&f, method, 0);
    if direct && !sink.is_direct() {
        return Err(Error::InvalidInput(format!(
            "{} refused direct I/O after the probe",
            path.display()
        )));
    }
    let next = AtomicU64::new(0);
    let result: Result<()> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let start = next.fetch_add(chunk, Ordering::Relaxed);
                        if start >= bytes {
                            return Ok(());
                        }
                        let end = (start + chunk).min(bytes);
                        let mut at = start;
                        while at < end {
                            let n = (end - at).min(block.len() as u64) as usize;
                            sink.write_at(&block[..n], at)?;
                            at += n as u64;
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(Error::InvalidInput("a writer thread panicked".into())))
        })
    });
    result?;
    f.sync_all().ctx(ctx)
}
