//! The output folder: its lock, the cleanup of temporary files left by dead processes, and the
//! fsync that makes a new name durable.
//!
//! The lock is an OS lock (`flock`) on the folder itself, so it works between threads and between
//! processes and leaves no file behind in the user's folder. Where a file system cannot lock a
//! folder (some network file systems), saves go on unlocked: names then stay unique through
//! `create_new` of the temporary file and the publish that never replaces, and a clash makes one
//! save fail instead of overwriting.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::sys;

/// Suffix of temporary files (after the process id).
pub(crate) const TEMP_SUFFIX: &str = ".partial";

/// An exclusive lock on a folder, released when dropped.
pub(crate) struct FolderLock {
    _dir: Option<File>,
}

impl FolderLock {
    /// Locks `folder` (which must exist), waiting for other holders.
    ///
    /// # Errors
    /// [`Error::Io`] when the folder cannot be opened.
    pub(crate) fn acquire(folder: &Path) -> Result<Self> {
        let dir =
            File::open(folder).ctx(|| format!("cannot open the folder {}", folder.display()))?;
        loop {
            match dir.lock() {
                Ok(()) => return Ok(FolderLock { _dir: Some(dir) }),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // No folder locks here: go on unlocked (see the module docs).
                Err(_) => return Ok(FolderLock { _dir: None }),
            }
        }
    }
}

/// `{name}.{pid}.partial`.
pub(crate) fn temp_name(name: &std::ffi::OsStr) -> OsString {
    let mut temp = name.to_os_string();
    temp.push(format!(".{}{TEMP_SUFFIX}", std::process::id()));
    temp
}

/// Creates the folder and its parents.
pub(crate) fn create_folder(folder: &Path) -> Result<()> {
    fs::create_dir_all(folder)
        .ctx(|| format!("cannot create the output folder {}", folder.display()))
}

/// Whether anything (a dangling symlink included) has this name.
pub(crate) fn exists(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(format!("cannot inspect {}", path.display()), e)),
    }
}

/// fsyncs a folder so a new directory entry survives a crash. File systems that cannot fsync a
/// directory (EINVAL, unsupported) are not an error.
pub(crate) fn sync_folder(folder: &Path) -> Result<()> {
    match File::open(folder).and_then(|dir| dir.sync_all()) {
        Err(e)
            if !matches!(
                e.kind(),
                io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
            ) =>
        {
            Err(Error::io(
                format!("cannot flush the folder {} to disk", folder.display()),
                e,
            ))
        }
        _ => Ok(()),
    }
}

/// The process id in a temporary file's name `{name}.{pid}.partial`, if it is one.
pub(crate) fn temp_pid(name: &str) -> Option<u32> {
    let stem = name.strip_suffix(TEMP_SUFFIX)?;
    let (base, pid) = stem.rsplit_once('.')?;
    if base.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let pid: u32 = pid.parse().ok()?;
    (pid > 0 && i32::try_from(pid).is_ok()).then_some(pid)
}

/// Removes the temporary files of dead processes from `folder`; the caller holds its lock.
///
/// Stale temporary files are found by the process id in their name: a process that no longer
/// exists cannot finish its save, so its temp file is garbage. A process in another PID namespace
/// sharing the folder looks dead; removing its temp file makes its commit fail, it never makes
/// anything overwrite anything.
pub(crate) fn remove_stale_temps(folder: &Path) -> Result<usize> {
    let entries =
        fs::read_dir(folder).ctx(|| format!("cannot list the folder {}", folder.display()))?;
    let mut removed = 0;
    for entry in entries {
        let entry = entry.ctx(|| format!("cannot list the folder {}", folder.display()))?;
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temp_pid) else {
            continue;
        };
        let is_file = entry
            .file_type()
            .ctx(|| format!("cannot inspect {}", entry.path().display()))?
            .is_file();
        if !is_file || sys::process_alive(pid) {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::io(
                    format!(
                        "cannot remove the stale temporary file {} (left by process {pid}, which \
                         no longer exists)",
                        entry.path().display()
                    ),
                    e,
                ))
            }
        }
    }
    Ok(removed)
}
