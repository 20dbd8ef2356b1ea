//! Sinks: how bytes reach the file — positional writes through the page cache, a writable memory
//! map, or direct I/O — and the one fallback from direct to buffered writes.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::error::{Error, IoContext, Result};
use crate::sys::{self, DIRECT_ALIGN};

/// How a write's bytes reach the file, decided once per save (before planning, since direct I/O
/// needs the data section aligned) by [`super::Backend::resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    /// Positional writes through the page cache.
    Pwrite,
    /// Units filled in a writable map of the file, one window per unit.
    Mmap,
    /// Direct I/O from aligned buffers at aligned offsets; the rest through the page cache.
    Direct,
}

impl Method {
    /// Where the data section must start in the file for this method.
    pub fn data_alignment(self) -> u64 {
        match self {
            Method::Direct => DIRECT_ALIGN as u64,
            Method::Pwrite | Method::Mmap => 8,
        }
    }
}

/// The open temporary file of a save, with the handles its method needs.
pub(crate) struct Sink<'a> {
    file: &'a File,
    direct: Option<File>,
    mmap: bool,
    data_offset: u64,
}

impl<'a> Sink<'a> {
    /// A sink writing the data section that starts at `data_offset`. With [`Method::Direct`],
    /// a file system that refuses direct I/O at open gets buffered writes instead; a data
    /// section that does not start on a page is written direct from [`Sink::direct_phase`] on.
    pub fn new(file: &'a File, method: Method, data_offset: u64) -> Self {
        let direct = match method {
            Method::Direct => sys::reopen_direct(file),
            _ => None,
        };
        Sink {
            file,
            direct,
            mmap: method == Method::Mmap,
            data_offset,
        }
    }

    /// Whether writes go through direct I/O.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Bytes from the data section's start to the first page-aligned file offset (0 when it
    /// starts on a page): where direct I/O's units begin.
    pub fn direct_phase(&self) -> u64 {
        let align = DIRECT_ALIGN as u64;
        (align - self.data_offset % align) % align
    }

    /// Whether units are filled in a map of the file.
    pub fn is_mmap(&self) -> bool {
        self.mmap
    }

    /// Writes `buf` at file offset `pos` (not relative to the data section: the header too).
    fn write_file_at(&self, buf: &[u8], pos: u64) -> Result<()> {
        let ctx = || {
            format!(
                "writing {} bytes at offset {pos} of the checkpoint",
                buf.len()
            )
        };
        let aligned = buf.len().is_multiple_of(DIRECT_ALIGN)
            && pos.is_multiple_of(DIRECT_ALIGN as u64)
            && (buf.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN);
        let r = match &self.direct {
            Some(d) if aligned => match d.write_all_at(buf, pos) {
                // Accepted at open but not for this write: the page cache always works.
                Err(e) if sys::direct_refused(&e) => self.file.write_all_at(buf, pos),
                r => r,
            },
            _ => self.file.write_all_at(buf, pos),
        };
        r.map_err(|e| write_error(ctx(), e))
    }

    /// Writes the header at the start of the file.
    pub fn write_header(&self, header: &[u8]) -> Result<()> {
        self.file
            .write_all_at(header, 0)
            .map_err(|e| write_error("writing the checkpoint header".into(), e))
    }

    /// Writes `buf` at data-section offset `at` (direct I/O where `buf`, the offset and the
    /// length allow it).
    pub fn write_at(&self, buf: &[u8], at: u64) -> Result<()> {
        self.write_file_at(buf, self.data_offset + at)
    }

    /// Writes `buf` at data-section offset `at` in up to `threads` parts at once: one writer
    /// per part keeps page-cache and NVMe writes of a large buffer from being limited by one core.
    pub fn write_parts(&self, buf: &[u8], at: u64, threads: usize) -> Result<()> {
        const MIN_PART: usize = 4 << 20;
        let parts = threads.clamp(1, buf.len().div_ceil(MIN_PART).max(1));
        if parts == 1 {
            return self.write_at(buf, at);
        }
        let part = buf.len().div_ceil(parts).next_multiple_of(DIRECT_ALIGN);
        std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(part)
                .enumerate()
                .map(|(i, b)| s.spawn(move || self.write_at(b, at + (i * part) as u64)))
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::InvalidInput(
                        "a checkpoint writer thread panicked".into(),
                    ))
                })
            })
        })
    }

    /// A writable map of data-section range `[at, at + len)` (for [`Method::Mmap`]).
    pub fn window(&self, at: u64, len: usize) -> Result<Window> {
        const PAGE: u64 = 4096;
        let pos = self.data_offset + at;
        let base = pos / PAGE * PAGE;
        let skip = (pos - base) as usize;
        // SAFETY: the file is our private temporary file; nothing else maps or truncates it while
        // the save runs, and each window is written by one worker only.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(base)
                .len(skip + len)
                .map_mut(self.file)
        }
        .ctx(|| format!("mapping {len} bytes at offset {pos} of the checkpoint"))?;
        sys::populate_write(&map);
        Ok(Window { map, skip })
    }
}

/// The error of a failed write. Where preallocation could only size the file a full disk shows
/// up here, and the OS says only "No space left on device": add what to do.
pub(crate) fn write_error(what: String, e: std::io::Error) -> Error {
    let full = matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    );
    let what = if full {
        format!("{what}: the disk is full; free space there or save to another folder")
    } else {
        what
    };
    Error::io(what, e)
}

/// A writable window of the file: bytes `[skip, skip + len)` of the map.
pub(crate) struct Window {
    map: memmap2::MmapMut,
    skip: usize,
}

impl Window {
    /// The window's bytes.
    pub fn bytes(&mut self) -> &mut [u8] {
        &mut self.map[self.skip..]
    }
}

/// Reserves the file's blocks up front, so a full disk fails before data is written, and returns
/// the method to write with: `method`, except that [`Method::Mmap`] becomes [`Method::Pwrite`]
/// where the blocks could not be reserved (see [`method_after_preallocation`]).
pub(crate) fn preallocate(file: &File, len: u64, method: Method) -> Result<Method> {
    let done = sys::preallocate(file, len, method == Method::Mmap)
        .ctx(|| format!("reserving {len} bytes for the checkpoint (is the disk full?)"))?;
    Ok(method_after_preallocation(method, done))
}

/// A store through a memory map into a page with no block behind it gets SIGBUS when the disk is
/// full, which kills the process and leaves its temporary file: so a map is written only where
/// every block is reserved, and positional writes (which report a full disk as an error) are used
/// otherwise.
pub(crate) fn method_after_preallocation(method: Method, done: sys::Preallocated) -> Method {
    match (method, done) {
        (Method::Mmap, sys::Preallocated::SizedOnly) => Method::Pwrite,
        (method, _) => method,
    }
}
