//! Platform calls, one module per platform, with the same signatures.
//!
//! Linux gets the fast paths: direct I/O (`O_DIRECT`), `posix_fallocate`, tmpfs detection,
//! `MADV_POPULATE_WRITE`, `renameat2(RENAME_NOREPLACE)` and per-thread priorities. Other Unix
//! systems (macOS, the only platform with Metal) get portable fallbacks: buffered writes, a sized
//! file instead of reserved blocks, no tmpfs special case. The `portable-sys` feature selects the
//! fallbacks on Linux too, so CI compiles and tests them on the build machine.
//!
//! Everything here is a thin wrapper: callers decide what to do when a fast path is missing.

#[cfg(all(target_os = "linux", not(feature = "portable-sys")))]
mod linux;
#[cfg(all(target_os = "linux", not(feature = "portable-sys")))]
use linux as imp;

#[cfg(not(all(target_os = "linux", not(feature = "portable-sys"))))]
mod portable;
#[cfg(not(all(target_os = "linux", not(feature = "portable-sys"))))]
use portable as imp;

use std::fs::File;
use std::io;
use std::path::Path;

/// Alignment of direct I/O: file offsets, lengths and memory addresses.
pub(crate) const DIRECT_ALIGN: usize = 4096;

/// Whether this build has direct I/O at all (false with the portable fallbacks).
pub(crate) const HAS_DIRECT_IO: bool = imp::HAS_DIRECT_IO;

/// A second handle on `file` that writes with direct I/O (the device reads the caller's buffer
/// by DMA, bypassing the page cache), or `None` where the platform or file system refuses it.
pub(crate) fn reopen_direct(file: &File) -> Option<File> {
    imp::reopen_direct(file)
}

/// What [`preallocate`] managed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Preallocated {
    /// The blocks are reserved: writing anywhere in the file cannot run out of space.
    // The portable fallbacks never reserve.
    #[cfg_attr(
        not(all(target_os = "linux", not(feature = "portable-sys"))),
        allow(dead_code)
    )]
    Reserved,
    /// The file only has its length (a sparse file): a write may still find the disk full, which
    /// a positional write reports as an error but a store through a memory map turns into SIGBUS.
    SizedOnly,
}

/// Reserves `len` bytes for `file` so a full disk fails before data is written; where blocks
/// cannot be reserved the file is only sized. On tmpfs, where reserving means zeroing every page
/// in an extra pass, the file is only sized unless `must_reserve` (a memory-mapped write needs
/// the blocks).
pub(crate) fn preallocate(file: &File, len: u64, must_reserve: bool) -> io::Result<Preallocated> {
    imp::preallocate(file, len, must_reserve)
}

/// Whether `file` lives on tmpfs (memory), where direct I/O is a copy like any other.
pub(crate) fn is_tmpfs(file: &File) -> bool {
    imp::is_tmpfs(file)
}

/// Asks the kernel to fault in a writable mapping's pages in one call (one fault per page
/// otherwise); a no-op where unsupported.
pub(crate) fn populate_write(map: &memmap2::MmapMut) {
    imp::populate_write(map)
}

/// Lowers the calling thread's CPU priority (threads it starts inherit it); a no-op where the
/// platform has no per-thread priority.
pub(crate) fn lower_thread_priority() {
    imp::lower_thread_priority()
}

/// Returns the heap memory the allocator holds free to the system (glibc's `malloc_trim`), so
/// a measurement that follows starts from what the process really uses; a no-op elsewhere.
pub(crate) fn release_free_heap() {
    imp::release_free_heap()
}

/// Renames `from` to `to`, failing with `AlreadyExists` instead of replacing `to`.
///
/// # Errors
/// `AlreadyExists` when `to` exists; `Unsupported` where the platform or file system cannot
/// rename without replacing (the caller then checks and renames, see `publish`); other I/O errors.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    imp::rename_noreplace(from, to)
}

/// Whether a process with this id exists (or might: without a way to ask, assume it does).
pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    if pid <= 0 {
        return true;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled; nothing is
    // sent, and `pid` is positive so it names one process, never a group.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// This machine's host name, if it has one.
pub(crate) fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    (!name.is_empty()).then_some(name)
}

/// An id of the running kernel since its last boot (Linux `boot_id`): two processes see the same
/// one exactly when they run on the same kernel, whatever their namespaces. `None` where the
/// platform has none.
pub(crate) fn boot_id() -> Option<String> {
    imp::boot_id()
}

/// An id of this process's pid namespace: process ids mean the same thing to two processes
/// exactly when these are equal. `None` where the platform has none.
pub(crate) fn pid_namespace() -> Option<u64> {
    imp::pid_namespace()
}

/// User + system CPU time of the whole process and of its children that have been waited for
/// (a benchmark's Python programs), in seconds (0 where unavailable).
pub(crate) fn cpu_seconds() -> f64 {
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN]
        .into_iter()
        .map(|who| {
            // SAFETY: getrusage only writes into the zeroed struct we pass.
            let mut u: libc::rusage = unsafe { std::mem::zeroed() };
            match unsafe { libc::getrusage(who, &mut u) } {
                0 => tv(u.ru_utime) + tv(u.ru_stime),
                _ => 0.0,
            }
        })
        .sum()
}

/// Whether a failed write means "direct I/O accepted at open but not for this request" (then
/// the page cache always works).
pub(crate) fn direct_refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

/// Whether a failed `hard_link` means "this file system has no hard links" (then rename instead).
pub(crate) fn links_unsupported(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Unsupported
        || matches!(
            e.raw_os_error(),
            Some(libc::EPERM | libc::EOPNOTSUPP | libc::ENOSYS | libc::EXDEV)
        )
}

/// Past a file-size limit (`ulimit -f`), let writes fail with `EFBIG` instead of the default
/// `SIGXFSZ` killing the process mid-save (so the error is reported and the temp file removed).
pub fn ignore_file_size_signal() {
    // SAFETY: setting a signal's disposition to "ignore"; no handler runs.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Whether SIGHUP is ignored in this process, as `nohup` (or a parent that detached it) sets it
/// up; read before a handler is installed, so that [`ignore_hangup`] can restore that choice.
pub fn hangup_ignored() -> bool {
    // SAFETY: with a null new action, sigaction only reads the current one into `old`.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Ignores SIGHUP again after a cancel handler took it over: a run started under `nohup` must
/// survive its terminal closing, not cancel its save.
pub fn ignore_hangup() {
    // SAFETY: setting a signal's disposition to "ignore"; no handler runs.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

/// Ends this process at once with SIGKILL, as a crash would (no destructor, no cleanup): the
/// crash tests' fault injection.
pub(crate) fn kill_self() -> ! {
    // SAFETY: sends a signal to this process; SIGKILL cannot be caught, so this does not return.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ids_are_stable_and_present_where_the_platform_has_them() {
        assert!(hostname().is_some_and(|h| !h.is_empty()));
        assert_eq!(boot_id(), boot_id());
        assert_eq!(pid_namespace(), pid_namespace());
        if HAS_DIRECT_IO {
            // The Linux implementation: both ids come from procfs.
            assert!(boot_id().is_some_and(|b| b.len() >= 32), "{:?}", boot_id());
            assert!(pid_namespace().is_some());
        }
    }

    #[test]
    fn this_process_is_alive_and_a_huge_pid_is_not() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(i32::MAX as u32));
        // Not representable as a pid: assumed alive, never treated as stale.
        assert!(process_alive(u32::MAX));
    }

    #[test]
    fn rename_noreplace_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        // Only the portable fallbacks may lack a no-replace rename.
        match (HAS_DIRECT_IO, rename_noreplace(&a, &b)) {
            (false, Err(e)) if e.kind() == io::ErrorKind::Unsupported => {}
            (_, Err(e)) => assert_eq!(e.kind(), io::ErrorKind::AlreadyExists),
            (_, Ok(())) => panic!("replaced an existing file"),
        }
        assert_eq!(std::fs::read(&b).unwrap(), b"b");
        let c = dir.path().join("c");
        if rename_noreplace(&a, &c).is_ok() {
            assert!(!a.exists() && c.exists());
        }
    }

    #[test]
    fn preallocate_sizes_the_file() {
        for must_reserve in [false, true] {
            let f = tempfile::tempfile().unwrap();
            let done = preallocate(&f, 10_000, must_reserve).unwrap();
            assert_eq!(f.metadata().unwrap().len(), 10_000);
            // The portable fallbacks can only size the file.
            if !HAS_DIRECT_IO {
                assert_eq!(done, Preallocated::SizedOnly);
            }
        }
    }

    #[test]
    fn direct_io_is_available_exactly_where_the_platform_has_it() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let direct = reopen_direct(f.as_file());
        if !HAS_DIRECT_IO {
            assert!(direct.is_none());
        }
        assert!(cpu_seconds() >= 0.0);
    }
}
