//! One run per stem and folder: an exclusive OS lock (`flock`) on `.<stem>.lock` in the folder,
//! held from [`super::CheckpointerBuilder::build`] until the checkpointer is dropped.
//!
//! The operating system releases it when the process ends, however it ends, so a crashed run
//! never blocks the next one; the file itself stays (deleting a lock file races with a run
//! opening it). It holds one line naming its holder, for the error a second run gets. Where the
//! file system has no `flock`, runs go on unlocked: names still never clash with a file (a save
//! takes the next free name, the publish never replaces) and retention still deletes only
//! files that match what the manifest recorded.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// The lock of one run; released when dropped.
#[derive(Debug)]
pub(super) struct RunLock {
    _file: File,
}

/// The lock file of `stem`'s runs.
pub(super) fn lock_file_name(stem: &str) -> String {
    format!(".{stem}.lock")
}

impl RunLock {
    /// Takes the lock of `stem`'s runs in `dir` (which exists), without waiting.
    ///
    /// # Errors
    /// [`Error::FolderInUse`] when another run (in this process or another) holds it;
    /// [`Error::Io`] when the lock file cannot be opened (a symlink planted under its name
    /// included) or written.
    pub(super) fn acquire(dir: &Path, stem: &str) -> Result<RunLock> {
        let path = dir.join(lock_file_name(stem));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .ctx(|| format!("cannot open the run lock {}", path.display()))?;
        let meta = file
            .metadata()
            .ctx(|| format!("cannot inspect the run lock {}", path.display()))?;
        if !meta.is_file() {
            return Err(Error::InvalidInput(format!(
                "the run lock {} is not a regular file; remove it and start again",
                path.display()
            )));
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = describe_holder(holder.trim());
                return Err(Error::FolderInUse {
                    folder: dir.to_path_buf(),
                    stem: stem.to_string(),
                    holder,
                });
            }
            // No locks on this file system: go on unlocked (see the module docs).
            Err(std::fs::TryLockError::Error(_)) => return Ok(RunLock { _file: file }),
        }
        let me = holder_line();
        file.set_len(0)
            .and_then(|()| file.write_all(me.as_bytes()))
            .ctx(|| format!("cannot write the run lock {}", path.display()))?;
        Ok(RunLock { _file: file })
    }
}

/// `pid <pid> on <host>, since <local time>`: who holds the lock.
fn holder_line() -> String {
    format!(
        "{} on {}, since {}",
        this_process(),
        crate::sys::hostname().unwrap_or_else(|| "an unnamed host".into()),
        chrono::Local::now().format("%Y-%m-%d %H:%M:%S %:z")
    )
}

fn this_process() -> String {
    format!("pid {}", std::process::id())
}

/// The holder as the error shows it: its line, marked when it is this very process.
fn describe_holder(line: &str) -> String {
    if line.is_empty() {
        return "a run that has not written its name yet".into();
    }
    let ours = format!(
        "{} on {},",
        this_process(),
        crate::sys::hostname().unwrap_or_else(|| "an unnamed host".into())
    );
    if line.starts_with(&ours) {
        format!("{line} (this process: another checkpointer of the same stem)")
    } else {
        line.to_string()
    }
}
