//! Temporary files (and split's staging folders): their names, the lock their writer holds, and
//! the rule that decides when one is garbage.
//!
//! # Names
//!
//! A writer's temporary file is `{final name}.{pid}-{machine}.partial`, where `machine` is 24
//! hex digits: FNV-1a 32 hashes of the host name, the kernel's boot id and the writer's pid
//! namespace (`00000000` where unknown). A staging folder is `.{folder name}.{pid}-{machine}.partial`.
//!
//! # Locks
//!
//! The writer holds an exclusive advisory lock (`flock`) on its temporary file from the moment it
//! creates it (under the folder's lock) until it publishes or removes it; a staging folder's
//! writer holds one on the folder's `.checkpoint-save.lock`. The operating system releases the
//! lock when the process ends, however it ends.
//!
//! # Cleanup
//!
//! An entry is removed only when all of these hold:
//!
//! 1. It was written on this machine: on the running kernel (the boot id is the same, whatever
//!    pid namespace or container the writer was in: locks are then exact), or on a machine of the
//!    same host name that has rebooted since (no writer from before a reboot can be running).
//!    Temporary files of other machines sharing the folder are left to those machines: a lock
//!    taken over a network file system may be local to one client.
//! 2. Its writer's pid is not a live process, when the name records our pid namespace (or, where
//!    the platform has no pid namespaces, always): a live one may be the writer.
//! 3. Its lock can be taken: no process anywhere holds it. It is removed holding that lock.
//!
//! Everything else stays. In particular names of earlier versions (`{final name}.{pid}.partial`,
//! written without a lock and without the machine), and files on file systems without `flock`,
//! are never removed by a cleanup: when in doubt, a file is left alone (remove it by hand once
//! no program writes it). Two machines that share a folder must not share a host name.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{Error, IoContext, Result};
use crate::sys;

/// Suffix of temporary files and staging folders.
pub(crate) const TEMP_SUFFIX: &str = ".partial";

/// The file inside a staging folder whose lock its writer holds.
pub(crate) const STAGING_LOCK: &str = ".checkpoint-save.lock";

/// The writer of a temporary file, as its name records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Writer {
    pub(crate) pid: u32,
    /// FNV-1a 32 of the host name (0: unknown).
    pub(crate) host: u32,
    /// FNV-1a 32 of the kernel's boot id (0: unknown).
    pub(crate) boot: u32,
    /// FNV-1a 32 of the pid namespace's id (0: unknown).
    pub(crate) pid_ns: u32,
}

impl Writer {
    /// This process.
    pub(crate) fn this() -> Writer {
        static MACHINE: OnceLock<(u32, u32, u32)> = OnceLock::new();
        let &(host, boot, pid_ns) = MACHINE.get_or_init(|| {
            (
                sys::hostname().map_or(0, |h| fnv1a32(h.as_bytes())),
                sys::boot_id().map_or(0, |b| fnv1a32(b.as_bytes())),
                sys::pid_namespace().map_or(0, |n| fnv1a32(&n.to_le_bytes())),
            )
        });
        Writer {
            pid: std::process::id(),
            host,
            boot,
            pid_ns,
        }
    }

    /// `{pid}-{host}{boot}{pid_ns}`, each hash as 8 lowercase hex digits.
    fn tag(&self) -> String {
        format!(
            "{}-{:08x}{:08x}{:08x}",
            self.pid, self.host, self.boot, self.pid_ns
        )
    }
}

/// Who wrote a temporary file, read from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TempOwner {
    /// `{name}.{pid}.partial` of earlier versions: no machine, no lock.
    Unplaced(u32),
    /// `{name}.{pid}-{machine}.partial`.
    Writer(Writer),
}

/// FNV-1a, 32-bit.
pub(crate) fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// `{name}.{pid}-{machine}.partial` for this process.
pub(crate) fn temp_name(name: &OsStr) -> OsString {
    written_by(name, &Writer::this())
}

/// `{name}.{pid}-{machine}.partial` for `writer`.
pub(crate) fn written_by(name: &OsStr, writer: &Writer) -> OsString {
    let mut temp = name.to_os_string();
    temp.push(format!(".{}{TEMP_SUFFIX}", writer.tag()));
    temp
}

/// The writer a temporary name records, if `name` is one (of this version or an earlier one).
pub(crate) fn temp_owner(name: &str) -> Option<TempOwner> {
    let stem = name.strip_suffix(TEMP_SUFFIX)?;
    let (base, tag) = stem.rsplit_once('.')?;
    if base.is_empty() {
        return None;
    }
    let (pid, machine) = match tag.split_once('-') {
        Some((pid, machine)) => (pid, Some(machine)),
        None => (tag, None),
    };
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let pid: u32 = pid.parse().ok()?;
    if pid == 0 || i32::try_from(pid).is_err() {
        return None;
    }
    let Some(machine) = machine else {
        return Some(TempOwner::Unplaced(pid));
    };
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if machine.len() != 24 || !machine.bytes().all(hex) {
        return None;
    }
    let part = |i: usize| u32::from_str_radix(&machine[i * 8..i * 8 + 8], 16).ok();
    Some(TempOwner::Writer(Writer {
        pid,
        host: part(0)?,
        boot: part(1)?,
        pid_ns: part(2)?,
    }))
}

/// Creates the temporary file for `final_name` in `folder` with `create_new`, locked for as long
/// as the returned file stays open. Call it holding the folder's lock, so no cleanup sees the
/// file before its lock is taken.
///
/// # Errors
/// The I/O error of `create_new` (kind `AlreadyExists` when this process already writes it).
pub(crate) fn create_temp(folder: &Path, final_name: &OsStr) -> io::Result<(File, PathBuf)> {
    let path = folder.join(temp_name(final_name));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    hold(&file);
    Ok((file, path))
}

/// Creates the staging folder `.{name}.{pid}-{machine}.partial` in `parent` and its locked
/// [`STAGING_LOCK`]; the folder stays ours while the returned file is open. Call it holding the
/// parent's lock.
///
/// # Errors
/// I/O errors creating either (the folder is removed again when the lock file fails).
pub(crate) fn create_staging(parent: &Path, name: &OsStr) -> io::Result<(File, PathBuf)> {
    let mut hidden = OsString::from(".");
    hidden.push(name);
    let path = parent.join(temp_name(&hidden));
    fs::create_dir(&path)?;
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path.join(STAGING_LOCK))
    {
        Ok(file) => {
            hold(&file);
            Ok((file, path))
        }
        Err(e) => {
            let _ = fs::remove_dir(&path);
            Err(e)
        }
    }
}

/// Takes the writer's lock. Where the file system has no `flock` the file stays unlocked, and a
/// cleanup cannot take its lock either, so it leaves the file alone.
fn hold(file: &File) {
    let _ = file.try_lock();
}

/// The lock of a garbage entry, held, or `None` when the entry must stay (see the module docs).
fn garbage(path: &Path, owner: TempOwner, is_dir: bool) -> Option<File> {
    let TempOwner::Writer(w) = owner else {
        return None;
    };
    let me = Writer::this();
    let same_kernel = w.boot != 0 && w.boot == me.boot;
    let same_host = w.host != 0 && w.host == me.host;
    if !(same_kernel || same_host) {
        return None;
    }
    // Its pid may be the writer: it ran in our pid namespace (or neither has one known).
    if w.pid_ns == me.pid_ns && sys::process_alive(w.pid) {
        return None;
    }
    let lock_path = if is_dir {
        path.join(STAGING_LOCK)
    } else {
        path.to_path_buf()
    };
    // Never through a symlink, and never blocking on a FIFO planted under the lock's name.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(lock_path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    file.try_lock().ok()?;
    Some(file)
}

/// Removes the temporary files and staging folders of finished writers from `folder` (see the
/// module docs); the caller holds the folder's lock. Returns how many were removed.
///
/// # Errors
/// [`Error::Io`] naming the path when the folder cannot be listed or a garbage entry cannot be
/// removed.
pub(crate) fn remove_stale_temps(folder: &Path) -> Result<usize> {
    let entries =
        fs::read_dir(folder).ctx(|| format!("cannot list the folder {}", folder.display()))?;
    let mut removed = 0;
    for entry in entries {
        let entry = entry.ctx(|| format!("cannot list the folder {}", folder.display()))?;
        let Some(owner) = entry.file_name().to_str().and_then(temp_owner) else {
            continue;
        };
        let path = entry.path();
        // The entry itself, not what a symlink points at.
        let kind = entry
            .file_type()
            .ctx(|| format!("cannot inspect {}", path.display()))?;
        if !(kind.is_file() || kind.is_dir()) {
            continue;
        }
        let Some(lock) = garbage(&path, owner, kind.is_dir()) else {
            continue;
        };
        let result = if kind.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        drop(lock);
        match result {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::io(
                    format!(
                        "cannot remove {}, left by a save that no longer runs",
                        path.display()
                    ),
                    e,
                ))
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        File::create(path).expect("create");
    }

    /// Cleans `dir` and says whether `name` survived.
    fn survives(dir: &Path, name: &OsStr) -> bool {
        remove_stale_temps(dir).expect("clean");
        fs::symlink_metadata(dir.join(name)).is_ok()
    }

    #[test]
    fn fnv1a32_reference_values() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn temp_names_round_trip_and_only_temp_names_parse() {
        let me = Writer::this();
        let name = temp_name("a.safetensors".as_ref())
            .into_string()
            .expect("utf-8");
        assert_eq!(temp_owner(&name), Some(TempOwner::Writer(me)));
        let w = Writer {
            pid: 42,
            host: 0xdead_beef,
            boot: 0,
            pid_ns: 0x0123_4567,
        };
        assert_eq!(
            written_by(".parts".as_ref(), &w),
            OsStr::new(".parts.42-deadbeef0000000001234567.partial")
        );
        assert_eq!(
            temp_owner(".parts.42-deadbeef0000000001234567.partial"),
            Some(TempOwner::Writer(w))
        );
        assert_eq!(
            temp_owner("a.safetensors.42.partial"),
            Some(TempOwner::Unplaced(42))
        );
        for not_temp in [
            ".42.partial",
            "a.0.partial",
            "a.+42.partial",
            "a.4294967295.partial",
            "a.42.partia",
            "a.42-deadbeef.partial",
            "a.42-DEADBEEF0000000001234567.partial",
            "a.42-deadbeef00000000012345678.partial",
            "a.-deadbeef0000000001234567.partial",
        ] {
            assert_eq!(temp_owner(not_temp), None, "{not_temp}");
        }
    }

    #[test]
    fn a_temp_is_removed_only_when_written_here_and_unlocked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = Writer::this();
        // Another pid namespace on this machine: the pid (ours here, so alive) means nothing;
        // the lock decides.
        let other_ns = Writer {
            pid_ns: me.pid_ns ^ 1,
            ..me
        };
        let free = written_by("free.safetensors".as_ref(), &other_ns);
        touch(&dir.path().join(&free));
        assert!(!survives(dir.path(), &free), "unlocked: its writer is gone");

        let held = written_by("held.safetensors".as_ref(), &other_ns);
        touch(&dir.path().join(&held));
        let writer = File::open(dir.path().join(&held)).expect("open");
        writer.try_lock().expect("lock");
        assert!(survives(dir.path(), &held), "its writer holds the lock");
        drop(writer);
        assert!(!survives(dir.path(), &held));

        // This host before a reboot: no writer from then runs.
        let rebooted = Writer {
            boot: me.boot ^ 1,
            pid_ns: me.pid_ns ^ 1,
            ..me
        };
        let old_boot = written_by("boot.safetensors".as_ref(), &rebooted);
        touch(&dir.path().join(&old_boot));
        assert!(!survives(dir.path(), &old_boot));

        // Another machine sharing the folder: its lock may not reach us; left to it.
        let elsewhere = Writer {
            host: me.host ^ 1,
            boot: me.boot ^ 1,
            ..me
        };
        let theirs = written_by("theirs.safetensors".as_ref(), &elsewhere);
        touch(&dir.path().join(&theirs));
        assert!(survives(dir.path(), &theirs));

        // Our own pid namespace and a live pid (this process): kept even unlocked.
        let ours = written_by("ours.safetensors".as_ref(), &me);
        touch(&dir.path().join(&ours));
        assert!(survives(dir.path(), &ours));
    }

    #[test]
    fn staging_folders_follow_the_same_rule() {
        let parent = tempfile::tempdir().expect("tempdir");
        let (lock, path) = create_staging(parent.path(), "parts".as_ref()).expect("staging");
        touch(&path.join("model.safetensors"));
        let name = path.file_name().expect("name").to_os_string();
        assert!(name.to_str().expect("utf-8").starts_with(".parts."));
        assert!(
            survives(parent.path(), &name),
            "a live split's folder stays"
        );
        // Renamed as a writer in another pid namespace would have named it: still locked.
        let other = Writer {
            pid: i32::MAX as u32,
            pid_ns: Writer::this().pid_ns ^ 1,
            ..Writer::this()
        };
        let alias = written_by(".parts".as_ref(), &other);
        fs::rename(&path, parent.path().join(&alias)).expect("rename");
        assert!(survives(parent.path(), &alias));
        // The split is killed: the OS releases its lock.
        drop(lock);
        assert!(!survives(parent.path(), &alias));
    }

    #[test]
    fn a_fifo_under_the_staging_lock_name_neither_blocks_nor_is_removed() {
        let parent = tempfile::tempdir().expect("tempdir");
        let other = Writer {
            pid_ns: Writer::this().pid_ns ^ 1,
            ..Writer::this()
        };
        let name = written_by(".parts".as_ref(), &other);
        let dir = parent.path().join(&name);
        fs::create_dir(&dir).expect("mkdir");
        let fifo = std::ffi::CString::new(
            dir.join(STAGING_LOCK)
                .into_os_string()
                .into_string()
                .expect("utf-8"),
        )
        .expect("path");
        // SAFETY: a NUL-terminated path that lives across the call.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(survives(parent.path(), &name));
    }
}
