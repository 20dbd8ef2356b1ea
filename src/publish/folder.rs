//! The output folder: its lock, and the fsync that makes a new name durable.
//!
//! The lock is an OS lock (`flock`) on the folder itself, so it works between threads and between
//! processes and leaves no file behind in the user's folder. Where a file system cannot lock a
//! folder (some network file systems), saves go on unlocked: names then stay unique through
//! `create_new` of the temporary file and the publish that never replaces, and a clash makes one
//! save fail instead of overwriting.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// An exclusive lock on a folder, released when dropped.
pub(crate) struct FolderLock {
    _dir: Option<File>,
}

impl FolderLock {
    /// Locks `folder` (which must exist), waiting for other holders; says so on stderr when the
    /// wait passes [`ANNOUNCE_AFTER`] (another save, split or checkpointer writing there, or a
    /// stuck process or a backup tool holding the folder's lock), so a long wait is never silent
    /// while the short ones of checkpointers sharing a folder stay quiet.
    ///
    /// # Errors
    /// [`Error::Io`] when the folder cannot be opened.
    pub(crate) fn acquire(folder: &Path) -> Result<Self> {
        let dir =
            File::open(folder).ctx(|| format!("cannot open the folder {}", folder.display()))?;
        match dir.try_lock() {
            Ok(()) => return Ok(FolderLock { _dir: Some(dir) }),
            // Held: wait, and say so if the wait lasts.
            Err(std::fs::TryLockError::WouldBlock) => {}
            // Unsupported or interrupted: the blocking call below decides.
            Err(std::fs::TryLockError::Error(_)) => return Ok(blocking(dir)),
        }
        let (acquired, announce) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            s.spawn(move || {
                if announce
                    .recv_timeout(ANNOUNCE_AFTER)
                    .is_err_and(|e| e == std::sync::mpsc::RecvTimeoutError::Timeout)
                {
                    eprintln!(
                        "waiting for {}: its lock is held (another save or split is writing \
                         there)",
                        folder.display()
                    );
                }
            });
            let lock = blocking(dir);
            drop(acquired);
            Ok(lock)
        })
    }
}

/// Waits for `dir`'s lock; without folder locks here, goes on unlocked (see the module docs).
fn blocking(dir: File) -> FolderLock {
    loop {
        match dir.lock() {
            Ok(()) => return FolderLock { _dir: Some(dir) },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return FolderLock { _dir: None },
        }
    }
}

/// How long a wait for a folder's lock goes unsaid.
const ANNOUNCE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// The folder `path` lies in: its parent, or `.` for a bare name (whose parent is empty).
pub(crate) fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates the folder and its parents.
///
/// # Errors
/// [`Error::Io`] naming the folder; when an entry that is not a folder is in the way (a file, a
/// dangling symlink), the message names that entry instead of only repeating the OS's
/// "File exists", which reads as if the folder existed.
pub(crate) fn create_folder(folder: &Path) -> Result<()> {
    fs::create_dir_all(folder).map_err(|e| {
        let blocked = matches!(
            e.kind(),
            io::ErrorKind::AlreadyExists | io::ErrorKind::NotADirectory
        );
        let why = blocked.then(|| blocking_entry(folder)).flatten();
        let msg = match why {
            Some(why) => format!(
                "cannot create the output folder {}: {why}; remove it or choose another folder",
                folder.display()
            ),
            None => format!("cannot create the output folder {}", folder.display()),
        };
        Error::io(msg, e)
    })
}

/// What is in the way of creating `folder`: its nearest existing ancestor (itself included),
/// when that is not a folder.
fn blocking_entry(folder: &Path) -> Option<String> {
    let p = folder
        .ancestors()
        .take_while(|p| !p.as_os_str().is_empty())
        .find(|p| fs::symlink_metadata(p).is_ok())?;
    let link = fs::symlink_metadata(p).ok()?.file_type().is_symlink();
    match (fs::metadata(p), link) {
        (Ok(m), _) if m.is_dir() => None,
        (Err(_), true) => Some(format!("{} is a symlink to nothing", p.display())),
        (_, true) => Some(format!(
            "{} is a symlink to a file, not a folder",
            p.display()
        )),
        _ => Some(format!("{} is a file, not a folder", p.display())),
    }
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
