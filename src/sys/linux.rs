//! Linux: direct I/O, block reservation, tmpfs detection, populate, thread priority, no-replace rename,
//! the boot id and the pid namespace.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::Preallocated;

pub(super) const HAS_DIRECT_IO: bool = true;

const TMPFS_MAGIC: i64 = 0x0102_1994;

pub(super) fn reopen_direct(file: &File) -> Option<File> {
    // The same open file through procfs, with O_DIRECT added (fcntl cannot add it portably).
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()
}

pub(super) fn preallocate(file: &File, len: u64, must_reserve: bool) -> io::Result<Preallocated> {
    let off_len =
        libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::FileTooLarge))?;
    // On tmpfs reserving means allocating and zeroing every page, a whole extra pass over
    // memory that the data then overwrites: only size the file there, unless asked to reserve.
    if !must_reserve && is_tmpfs(file) {
        return file.set_len(len).map(|()| Preallocated::SizedOnly);
    }
    // SAFETY: plain system call on a file descriptor we own for the duration of the call.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, off_len) } {
        0 => Ok(Preallocated::Reserved),
        // File systems without fallocate: a sparse file of the right size still works.
        libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS => {
            file.set_len(len).map(|()| Preallocated::SizedOnly)
        }
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

pub(super) fn is_tmpfs(file: &File) -> bool {
    // SAFETY: fstatfs only writes into the zeroed struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    rc == 0 && st.f_type as i64 == TMPFS_MAGIC
}

pub(super) fn populate_write(map: &memmap2::MmapMut) {
    // Older kernels lack it; the pages then fault in one by one.
    let _ = map.advise(memmap2::Advice::PopulateWrite);
}

pub(super) fn lower_thread_priority() {
    // SAFETY: plain system calls on the calling thread; failure only leaves the priority as is.
    unsafe {
        let tid = libc::gettid();
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

pub(super) fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free pages of the allocator's own arenas to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub(super) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both paths are NUL-terminated strings that live across the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // The file system (or an old kernel) cannot do it.
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => {
            Err(io::Error::from(io::ErrorKind::Unsupported))
        }
        _ => Err(e),
    }
}

pub(super) fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_string())
}

pub(super) fn pid_namespace() -> Option<u64> {
    // The namespace's inode number: equal exactly for processes in the same pid namespace.
    std::fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino())
}
