//! Other Unix systems (and Linux with the `portable-sys` feature): the portable fallbacks.

use std::fs::File;
use std::io;
use std::path::Path;

use super::Preallocated;

pub(super) const HAS_DIRECT_IO: bool = false;

pub(super) fn reopen_direct(_file: &File) -> Option<File> {
    None
}

pub(super) fn preallocate(file: &File, len: u64, _must_reserve: bool) -> io::Result<Preallocated> {
    file.set_len(len).map(|()| Preallocated::SizedOnly)
}

pub(super) fn is_tmpfs(_file: &File) -> bool {
    false
}

pub(super) fn populate_write(_map: &memmap2::MmapMut) {}

pub(super) fn lower_thread_priority() {}

pub(super) fn release_free_heap() {}

pub(super) fn rename_noreplace(_from: &Path, _to: &Path) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

pub(super) fn boot_id() -> Option<String> {
    None
}

pub(super) fn pid_namespace() -> Option<u64> {
    None
}
