//! Where a checkpoint goes: ComfyUI's Save Checkpoint file naming, with the name reserved atomically.
//!
//! A user who moves from ComfyUI to this tool expects the same prefix to produce the same file: the
//! `%year%`… tokens, the `subfolder/filename` split, the refusal to write outside the output folder
//! and the `{filename}_{counter:05}_.safetensors` counter (highest existing + 1, shared with every
//! entry named `{filename}_…`). So [`SaveTarget::resolve`] and [`SaveTarget::next_counter`] follow
//! `folder_paths.get_save_image_path` step by step (see `docs/checkpoint-format.md` §2), quirks
//! included: the counter never fills gaps, files of any type and directories bump it, `L` is the
//! length of the prefix's basename *as given* (not normalised), unknown `%xxx%` tokens stay verbatim,
//! symlinks are not resolved by the sandbox check.
//!
//! # Deliberate deviations from the reference
//!
//! * **A prefix ending in `/` names a folder.** The reference turns `checkpoints/` into a file
//!   `checkpoints_00001_.safetensors` in the *parent* folder and, because `L` is then 0, never sees
//!   its own files, so every save overwrites the previous one. Here the file name becomes the default
//!   [`DEFAULT_FILENAME`] inside that folder: `checkpoints/ComfyUI_00001_.safetensors`, then
//!   `_00002_`.
//! * **Names are reserved atomically and nothing is ever replaced.** The reference has no lock and no
//!   existence check, so two concurrent saves can pick the same counter and the later one overwrites
//!   the earlier. Here [`SaveTarget::reserve`] takes an exclusive lock on [`LOCK_FILE_NAME`] in the
//!   target folder (an OS file lock, so it works between threads and between processes), and under
//!   it removes stale temporary files, scans, skips any counter whose final name already exists, and
//!   creates the temporary file `{filename}_{counter:05}_.safetensors.{pid}.partial` with
//!   `create_new`. That name starts with `{filename}_` and carries the counter, so both this scan and
//!   ComfyUI's own count it as taken while the data is being written. [`Reservation::commit`]
//!   publishes with a hard link, which fails rather than replace an existing file.
//! * **Prefixes that name no file are refused** ([`Error::InvalidInput`]): an empty prefix, or one
//!   that normalises to `.` or `..` (the reference would write a hidden `._00001_.safetensors`).
//! * **Counters stay positive and bounded.** The reference parses the counter part with Python's
//!   `int()`, so an entry such as `ComfyUI_-5_.png` alone would give counter -4; here the counter is
//!   at least 1. An entry whose counter does not fit in 64 bits is reported as an error instead of
//!   producing a name with a 20-digit counter.
//!
//! Paths follow POSIX rules (the reference's `posixpath`); Windows drive letters and case-folding
//! (`normcase`) are not reproduced. Stale temporary files are found by the process id in their name:
//! a process that no longer exists cannot finish its save, so its temp file is garbage. A process
//! in another PID namespace sharing the folder looks dead; removing its temp file makes its commit
//! fail, it never makes anything overwrite anything.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Component, Path, PathBuf};

use chrono::{Datelike, Timelike};

use crate::error::{Error, IoContext, Result};

/// The file name used when a prefix names only a folder (ends in `/`), as in ComfyUI's default
/// prefix `checkpoints/ComfyUI`.
pub const DEFAULT_FILENAME: &str = "ComfyUI";

/// The lock file created (and left in place) in every folder this crate saves into.
///
/// It is never removed: removing a lock file while another process waits on it would let two
/// processes hold "the" lock at once.
pub const LOCK_FILE_NAME: &str = ".checkpoint-save.lock";

/// Extension of the checkpoints written under a prefix.
const EXTENSION: &str = "safetensors";

/// Suffix of temporary files (after the process id).
const TEMP_SUFFIX: &str = ".partial";

/// A local wall-clock time, the input of the `%year%`… tokens.
///
/// The reference takes one `time.localtime()` snapshot per save; [`LocalTime::now`] does the same.
/// Tests build one directly to get a fixed time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocalTime {
    /// Year, e.g. 2025 (written without padding, like Python's `str(tm_year)`).
    pub year: i32,
    /// Month, 1–12.
    pub month: u32,
    /// Day of month, 1–31.
    pub day: u32,
    /// Hour, 0–23.
    pub hour: u32,
    /// Minute, 0–59.
    pub minute: u32,
    /// Second, 0–60 (a leap second shows as 60, as in `time.localtime()`).
    pub second: u32,
}

impl LocalTime {
    /// The current local time (one snapshot).
    pub fn now() -> Self {
        let now = chrono::Local::now();
        LocalTime {
            year: now.year(),
            month: now.month(),
            day: now.day(),
            hour: now.hour(),
            minute: now.minute(),
            // chrono reports a leap second as second 59 with nanoseconds ≥ 1e9.
            second: now.second() + u32::from(now.nanosecond() >= 1_000_000_000),
        }
    }
}

/// Replaces the backend tokens in `prefix`, exactly as ComfyUI's `compute_vars` does for a
/// checkpoint save.
///
/// Only if `prefix` contains `%` is `clock` called (once), and then every occurrence of `%width%`
/// and `%height%` becomes `0` and `%year%`, `%month%`, `%day%`, `%hour%`, `%minute%`, `%second%` the
/// snapshot's fields (all but the year zero-padded to 2), replaced in that order. Any other
/// `%xxx%` text, such as the frontend-only `%date:yyyy-MM-dd%`, stays verbatim.
pub fn expand_tokens(prefix: &str, clock: impl FnOnce() -> LocalTime) -> String {
    if !prefix.contains('%') {
        return prefix.to_owned();
    }
    let now = clock();
    prefix
        .replace("%width%", "0")
        .replace("%height%", "0")
        .replace("%year%", &now.year.to_string())
        .replace("%month%", &format!("{:02}", now.month))
        .replace("%day%", &format!("{:02}", now.day))
        .replace("%hour%", &format!("{:02}", now.hour))
        .replace("%minute%", &format!("{:02}", now.minute))
        .replace("%second%", &format!("{:02}", now.second))
}

/// Python's `posixpath.normpath`: collapses `//`, `.` and `a/..` without touching the file system.
///
/// An empty path becomes `.`; a leading `//` (exactly two slashes) is kept, as POSIX allows it a
/// special meaning; `..` segments at the start of a relative path are kept.
pub fn normpath(path: &str) -> String {
    if path.is_empty() {
        return ".".to_owned();
    }
    let initial_slashes = if path.starts_with("//") && !path.starts_with("///") {
        2
    } else if path.starts_with('/') {
        1
    } else {
        0
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if (initial_slashes > 0 || !parts.is_empty()) && parts.last() != Some(&"..") => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    let joined = format!("{}{}", "/".repeat(initial_slashes), parts.join("/"));
    if joined.is_empty() {
        ".".to_owned()
    } else {
        joined
    }
}

/// Python's `posixpath.split`: `(dirname, basename)`, with trailing slashes stripped from a
/// dirname that is not all slashes.
fn split_path(path: &str) -> (&str, &str) {
    let cut = path.rfind('/').map_or(0, |i| i + 1);
    let (head, tail) = path.split_at(cut);
    let trimmed = head.trim_end_matches('/');
    let head = if trimmed.is_empty() { head } else { trimmed };
    (head, tail)
}

/// Where saves under one prefix go: the result of ComfyUI's name resolution, before the counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveTarget {
    /// The folder the files go into: `output_dir` joined with [`SaveTarget::subfolder`].
    pub folder: PathBuf,
    /// The folder relative to the output root, as the reference reports it (`""` for the root).
    pub subfolder: String,
    /// The file name stem, before `_{counter:05}_.safetensors`.
    pub filename: String,
    /// The reference's `L`: the length in characters of the basename of the prefix as given (after
    /// token expansion, before normalisation). The counter scan looks at the `L + 1` first
    /// characters of each entry.
    pub prefix_len: usize,
}

impl SaveTarget {
    /// Resolves `prefix` under `output_dir`, expanding `%…%` tokens with the current local time.
    ///
    /// See [`SaveTarget::resolve_with_clock`].
    ///
    /// # Errors
    ///
    /// As [`SaveTarget::resolve_with_clock`].
    pub fn resolve(prefix: &str, output_dir: &Path) -> Result<Self> {
        Self::resolve_with_clock(prefix, output_dir, LocalTime::now)
    }

    /// Resolves `prefix` under `output_dir`, taking the time for the `%…%` tokens from `clock`
    /// (called at most once, and only if the prefix contains `%`).
    ///
    /// Steps: [`expand_tokens`]; a prefix ending in `/` gets [`DEFAULT_FILENAME`] appended (a
    /// deviation, see the module docs); [`normpath`]; split into subfolder and filename; folder =
    /// `output_dir/subfolder`; then the reference's sandbox check: the common path of the absolute
    /// output folder and the absolute target folder (computed lexically, symlinks not resolved)
    /// must be the output folder. Nothing is created on disk.
    ///
    /// # Errors
    ///
    /// * [`Error::OutsideOutputFolder`] for an absolute prefix or one whose `..` segments leave the
    ///   output folder (same message as the reference).
    /// * [`Error::InvalidInput`] when the prefix names no file (empty, `.`, `..`).
    /// * [`Error::Io`] when the current directory is needed (relative `output_dir`) and cannot be read.
    pub fn resolve_with_clock(
        prefix: &str,
        output_dir: &Path,
        clock: impl FnOnce() -> LocalTime,
    ) -> Result<Self> {
        let mut given = expand_tokens(prefix, clock);
        if given.ends_with('/') {
            given.push_str(DEFAULT_FILENAME);
        }
        let prefix_len = split_path(&given).1.chars().count();
        let normalised = normpath(&given);
        let (subfolder, filename) = split_path(&normalised);

        let folder = if subfolder.is_empty() {
            output_dir.to_path_buf()
        } else {
            output_dir.join(subfolder)
        };
        let output_abs = lexical_absolute(output_dir)?;
        let folder_abs = lexical_absolute(&folder)?;
        let common: PathBuf = output_abs
            .components()
            .zip(folder_abs.components())
            .take_while(|(a, b)| a == b)
            .map(|(a, _)| a)
            .collect();
        if common != output_abs {
            return Err(Error::OutsideOutputFolder {
                full_output_folder: folder_abs.display().to_string(),
                output_dir: output_abs.display().to_string(),
                common: common.display().to_string(),
            });
        }
        if matches!(filename, "" | "." | "..") {
            return Err(Error::InvalidInput(format!(
                "the filename prefix `{prefix}` names no file (its last part is `{filename}`); give \
                 a name such as `checkpoints/ComfyUI`, or end it with `/` to save as \
                 `{DEFAULT_FILENAME}` in that folder"
            )));
        }
        Ok(SaveTarget {
            folder,
            subfolder: subfolder.to_owned(),
            filename: filename.to_owned(),
            prefix_len,
        })
    }

    /// The final file name for `counter`: `{filename}_{counter:05}_.safetensors`.
    pub fn file_name(&self, counter: u64) -> String {
        format!("{}_{counter:05}_.{EXTENSION}", self.filename)
    }

    /// The reference's counter scan, without lock or reservation: highest counter among the
    /// folder's entries (files and directories of any type) named `{filename}_…`, plus one; 1 if
    /// there is none. A missing folder is created (with its parents) and gives 1.
    ///
    /// Use [`SaveTarget::reserve`] to actually save: a counter returned here can be taken by a
    /// concurrent save before it is used.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming the folder when it cannot be listed or created (for example because a
    /// parent is a regular file); [`Error::InvalidInput`] when an entry carries a counter too large
    /// to continue from.
    pub fn next_counter(&self) -> Result<u64> {
        let entries = match fs::read_dir(&self.folder) {
            Ok(entries) => entries,
            // A parent that is a regular file (NotADirectory) goes the same way, so the error
            // says that the folder cannot be created.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                create_folder(&self.folder)?;
                return Ok(1);
            }
            Err(e) => {
                return Err(Error::io(
                    format!("cannot list the output folder {}", self.folder.display()),
                    e,
                ))
            }
        };
        let mut highest: Option<i128> = None;
        for entry in entries {
            let entry =
                entry.ctx(|| format!("cannot list the output folder {}", self.folder.display()))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Some(digits) = entry_counter(&name, &self.filename, self.prefix_len) else {
                continue;
            };
            let value = match digits {
                Ok(value) if value < i128::from(u64::MAX) => value,
                _ => {
                    return Err(Error::InvalidInput(format!(
                        "{} holds `{name}`, whose counter is too large to continue from; rename or \
                         move it, or use another prefix",
                        self.folder.display()
                    )))
                }
            };
            highest = highest.max(Some(value));
        }
        // `value < u64::MAX` above, so `highest + 1` fits in a u64.
        Ok(highest.map_or(1, |h| u64::try_from(h + 1).unwrap_or(1).max(1)))
    }

    /// Reserves the next free name atomically: creates the folder if needed, then, holding the
    /// folder's lock, removes stale temporary files ([`clean_stale_temps`]), scans for the counter
    /// ([`SaveTarget::next_counter`]'s rules), skips counters whose final name exists, and creates
    /// the temporary file `{filename}_{counter:05}_.safetensors.{pid}.partial` with `create_new`.
    ///
    /// Concurrent reservations with the same prefix, from threads or processes, get distinct
    /// counters; the returned [`Reservation`] is published with [`Reservation::commit`].
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming the path when the folder cannot be created or listed, the lock file
    /// cannot be opened or locked, a stale temp file cannot be removed or the temp file cannot be
    /// created; [`Error::InvalidInput`] when the counter would overflow.
    pub fn reserve(&self) -> Result<Reservation> {
        create_folder(&self.folder)?;
        let _lock = FolderLock::acquire(&self.folder)?;
        remove_stale_temps(&self.folder)?;
        let mut counter = self.next_counter()?;
        loop {
            let name = self.file_name(counter);
            let final_path = self.folder.join(&name);
            if !exists(&final_path)? {
                let temp_path = self.folder.join(temp_name(name.as_ref()));
                match create_temp(&temp_path) {
                    Ok(file) => {
                        return Ok(Reservation {
                            file,
                            final_path,
                            temp_path,
                            folder: self.folder.clone(),
                            filename: self.filename.clone(),
                            subfolder: Some(self.subfolder.clone()),
                            counter: Some(counter),
                            temp_present: true,
                        })
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        return Err(Error::io(
                            format!("cannot create the temporary file {}", temp_path.display()),
                            e,
                        ))
                    }
                }
            }
            counter = counter.checked_add(1).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "no free counter left for `{}` in {}",
                    self.filename,
                    self.folder.display()
                ))
            })?;
        }
    }
}

/// Resolves `prefix` under `output_dir` (with the current local time) and reserves the next free
/// name: [`SaveTarget::resolve`] then [`SaveTarget::reserve`].
///
/// # Errors
///
/// As [`SaveTarget::resolve`] and [`SaveTarget::reserve`].
pub fn reserve(prefix: &str, output_dir: &Path) -> Result<Reservation> {
    SaveTarget::resolve(prefix, output_dir)?.reserve()
}

/// Reserves an explicit final path (training-loop checkpoints and other callers that choose the
/// name themselves): creates the parent folder if needed and, holding its lock, removes stale
/// temporary files, checks that `path` does not exist and creates `{file_name}.{pid}.partial` next
/// to it. The commit never replaces an existing file either.
///
/// # Errors
///
/// * [`Error::InvalidInput`] when `path` has no file name (ends in `..`, is a root).
/// * [`Error::Io`] with kind [`io::ErrorKind::AlreadyExists`] when `path` already exists, or when
///   this process is already writing it.
/// * [`Error::Io`] naming the path when the folder cannot be created, locked or listed, or the temp
///   file cannot be created.
pub fn reserve_at(path: &Path) -> Result<Reservation> {
    let Some(file_name) = path.file_name() else {
        return Err(Error::InvalidInput(format!(
            "{} names no file; give a path such as `checkpoints/step_1000.safetensors`",
            path.display()
        )));
    };
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    create_folder(&folder)?;
    let _lock = FolderLock::acquire(&folder)?;
    remove_stale_temps(&folder)?;
    if exists(path)? {
        return Err(refuse_replace(path));
    }
    let temp_path = folder.join(temp_name(file_name));
    let file = create_temp(&temp_path).map_err(|e| {
        let context = if e.kind() == io::ErrorKind::AlreadyExists {
            format!(
                "{} is already being written by this process (temporary file {})",
                path.display(),
                temp_path.display()
            )
        } else {
            format!("cannot create the temporary file {}", temp_path.display())
        };
        Error::io(context, e)
    })?;
    let stem = Path::new(file_name)
        .file_stem()
        .unwrap_or(file_name)
        .to_string_lossy()
        .into_owned();
    Ok(Reservation {
        file,
        final_path: path.to_path_buf(),
        temp_path,
        folder,
        filename: stem,
        subfolder: None,
        counter: None,
        temp_present: true,
    })
}

/// Removes the temporary files in `folder` left by saves whose process no longer exists, holding
/// the folder's lock (the same cleanup every reservation does). Returns how many were removed.
///
/// A temporary file is a regular file named `{name}.{pid}.partial`; it is removed only if no
/// process with that id exists. Temp files of live processes (this one included) and every other
/// entry are left alone. A missing folder has nothing to clean.
///
/// # Errors
///
/// [`Error::Io`] naming the path when the folder cannot be listed or locked, or a stale file cannot
/// be removed.
pub fn clean_stale_temps(folder: &Path) -> Result<usize> {
    match fs::metadata(folder) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(format!("cannot inspect {}", folder.display()), e)),
        Ok(_) => {}
    }
    let _lock = FolderLock::acquire(folder)?;
    remove_stale_temps(folder)
}

/// A name reserved for one checkpoint: the open temporary file, and where it will be published.
///
/// Write the data through [`Reservation::file`], then call [`Reservation::commit`]. Dropping a
/// reservation without committing (an error, a cancellation) removes the temporary file.
#[derive(Debug)]
pub struct Reservation {
    file: File,
    final_path: PathBuf,
    temp_path: PathBuf,
    folder: PathBuf,
    filename: String,
    subfolder: Option<String>,
    counter: Option<u64>,
    /// Whether `temp_path` is still ours to remove.
    temp_present: bool,
}

impl Reservation {
    /// The temporary file, open for reading and writing (positional writes work through `&File`).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where the checkpoint will be once committed.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// The temporary file's path (same folder as the final path).
    pub fn temp_path(&self) -> &Path {
        &self.temp_path
    }

    /// The counter, for names reserved from a prefix; `None` for [`reserve_at`].
    pub fn counter(&self) -> Option<u64> {
        self.counter
    }

    /// The prefix's file name (`ComfyUI`), or for [`reserve_at`] the final file name without its
    /// extension.
    pub fn filename(&self) -> &str {
        &self.filename
    }

    /// The folder relative to the output root (`""` for the root), for names reserved from a
    /// prefix; `None` for [`reserve_at`].
    pub fn subfolder(&self) -> Option<&str> {
        self.subfolder.as_deref()
    }

    /// The `modelspec.title`: `"<filename> <counter>"` with the counter unpadded (`ComfyUI 1`), or
    /// the file name without extension for [`reserve_at`].
    pub fn title(&self) -> String {
        match self.counter {
            Some(counter) => format!("{} {counter}", self.filename),
            None => self.filename.clone(),
        }
    }

    /// Makes the data durable and publishes it under the final name, never replacing a file.
    ///
    /// Order: fsync the file; hard-link it to the final name (fails if that name exists) and remove
    /// the temporary name; on a file system without hard links, rename instead, holding the
    /// folder's lock, after checking the final name is free; fsync the folder. If removing the
    /// temporary name after a successful link fails, the checkpoint is still published and the
    /// leftover link is removed when this value is dropped (or by a later [`clean_stale_temps`]).
    ///
    /// # Errors
    ///
    /// * [`Error::Io`] with kind [`io::ErrorKind::AlreadyExists`] when the final name exists (another
    ///   program wrote it); the temporary file is removed and nothing is replaced.
    /// * [`Error::Io`] naming the path when the fsync, link or rename fails (the temporary file is
    ///   removed), or when the folder's fsync fails (the checkpoint is then in place, but its
    ///   directory entry may not survive a crash).
    pub fn commit(mut self) -> Result<PathBuf> {
        self.file
            .sync_all()
            .ctx(|| format!("cannot flush {} to disk", self.temp_path.display()))?;
        match fs::hard_link(&self.temp_path, &self.final_path) {
            Ok(()) => {
                if fs::remove_file(&self.temp_path).is_ok() {
                    self.temp_present = false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(refuse_replace(&self.final_path))
            }
            Err(e) if links_unsupported(&e) => {
                let _lock = FolderLock::acquire(&self.folder)?;
                if exists(&self.final_path)? {
                    return Err(refuse_replace(&self.final_path));
                }
                fs::rename(&self.temp_path, &self.final_path).ctx(|| {
                    format!(
                        "cannot rename {} to {}",
                        self.temp_path.display(),
                        self.final_path.display()
                    )
                })?;
                self.temp_present = false;
            }
            Err(e) => {
                return Err(Error::io(
                    format!(
                        "cannot publish {} as {}",
                        self.temp_path.display(),
                        self.final_path.display()
                    ),
                    e,
                ))
            }
        }
        sync_folder(&self.folder)?;
        Ok(self.final_path.clone())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.temp_present {
            // Nothing useful can be done with a failure here; a later cleanup retries once this
            // process has exited.
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}

/// An exclusive OS lock on a lock file in a folder ([`LOCK_FILE_NAME`] unless named otherwise),
/// released when dropped (the file is closed).
pub(crate) struct FolderLock {
    _file: File,
}

impl FolderLock {
    fn acquire(folder: &Path) -> Result<Self> {
        Self::acquire_named(folder, LOCK_FILE_NAME)
    }

    /// Locks `folder/name`, creating the (empty, never removed) lock file if needed.
    pub(crate) fn acquire_named(folder: &Path, name: &str) -> Result<Self> {
        let path = folder.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .ctx(|| format!("cannot open the lock file {}", path.display()))?;
        file.lock()
            .ctx(|| format!("cannot lock {}", path.display()))?;
        Ok(FolderLock { _file: file })
    }
}

/// `{name}.{pid}.partial`.
fn temp_name(name: &std::ffi::OsStr) -> OsString {
    let mut temp = name.to_os_string();
    temp.push(format!(".{}{TEMP_SUFFIX}", std::process::id()));
    temp
}

fn create_temp(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
}

fn create_folder(folder: &Path) -> Result<()> {
    fs::create_dir_all(folder)
        .ctx(|| format!("cannot create the output folder {}", folder.display()))
}

/// Whether anything (a dangling symlink included) has this name.
fn exists(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(format!("cannot inspect {}", path.display()), e)),
    }
}

fn refuse_replace(path: &Path) -> Error {
    Error::io(
        format!(
            "refusing to replace the existing file {}; nothing was overwritten: choose another \
             name or move that file away",
            path.display()
        ),
        io::Error::from(io::ErrorKind::AlreadyExists),
    )
}

/// Whether a failed `hard_link` means "this file system has no hard links" (then rename instead).
fn links_unsupported(e: &io::Error) -> bool {
    if e.kind() == io::ErrorKind::Unsupported {
        return true;
    }
    #[cfg(unix)]
    {
        matches!(
            e.raw_os_error(),
            Some(libc::EPERM | libc::EOPNOTSUPP | libc::ENOSYS | libc::EXDEV)
        )
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// fsyncs a folder so a new directory entry survives a crash. File systems that cannot fsync a
/// directory (EINVAL, unsupported) are not an error.
pub(crate) fn sync_folder(folder: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let result = File::open(folder).and_then(|dir| dir.sync_all());
        match result {
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
    #[cfg(not(unix))]
    {
        let _ = folder;
        Ok(())
    }
}

/// The process id in a temporary file's name `{name}.{pid}.partial`, if it is one.
fn temp_pid(name: &str) -> Option<u32> {
    let stem = name.strip_suffix(TEMP_SUFFIX)?;
    let (base, pid) = stem.rsplit_once('.')?;
    if base.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let pid: u32 = pid.parse().ok()?;
    (pid > 0 && i32::try_from(pid).is_ok()).then_some(pid)
}

/// Whether a process with this id exists (or might: without a way to ask, assume it does).
fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
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
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// The cleanup itself; the caller holds the folder's lock.
fn remove_stale_temps(folder: &Path) -> Result<usize> {
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
        if !is_file || process_alive(pid) {
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

/// The reference's `map_filename` + filter for one entry: `None` if the entry does not count,
/// otherwise its counter as Python's `int()` parses it (`Ok(0)` when that fails), or `Err(())`
/// when the number does not fit in an `i128`.
fn entry_counter(name: &str, filename: &str, prefix_len: usize) -> Option<Result<i128, ()>> {
    let cut = name
        .char_indices()
        .nth(prefix_len + 1)
        .map_or(name.len(), |(i, _)| i);
    let (candidate, rest) = name.split_at(cut);
    let mut chars = candidate.chars();
    if chars.next_back() != Some('_') || chars.as_str() != filename {
        return None;
    }
    let digits = rest.split('_').next().unwrap_or_default();
    Some(match parse_python_int(digits) {
        PyInt::Value(v) => Ok(v),
        PyInt::Invalid => Ok(0),
        PyInt::TooLarge => Err(()),
    })
}

/// Outcome of [`parse_python_int`].
#[derive(Debug, PartialEq, Eq)]
enum PyInt {
    Value(i128),
    Invalid,
    TooLarge,
}

/// Python's `int(text)` in base 10, as far as a file name can exercise it: surrounding whitespace
/// (Unicode `White_Space`, which is what `int()` strips), one optional sign, then one or more
/// decimal digits of any script. Underscores never reach here (the caller cuts at the first `_`).
fn parse_python_int(text: &str) -> PyInt {
    let trimmed = text.trim_matches(char::is_whitespace);
    let (negative, body) = match trimmed.strip_prefix('-') {
        Some(body) => (true, body),
        None => (false, trimmed.strip_prefix('+').unwrap_or(trimmed)),
    };
    if body.is_empty() {
        return PyInt::Invalid;
    }
    let mut value: i128 = 0;
    for c in body.chars() {
        let Some(digit) = decimal_digit(c) else {
            return PyInt::Invalid;
        };
        match value
            .checked_mul(10)
            .and_then(|v| v.checked_add(i128::from(digit)))
        {
            Some(v) => value = v,
            None => return PyInt::TooLarge,
        }
    }
    PyInt::Value(if negative { -value } else { value })
}

/// Code points of the digit zero of every run of Unicode decimal digits (category Nd, Unicode 14,
/// as in Python 3.11's `unicodedata`); each run holds the ten digits 0–9 in order.
const DIGIT_ZEROS: [u32; 66] = [
    0x0030, 0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6, 0x0C66, 0x0CE6,
    0x0D66, 0x0DE6, 0x0E50, 0x0ED0, 0x0F20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80,
    0x1A90, 0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0,
    0xFF10, 0x104A0, 0x10D30, 0x11066, 0x110F0, 0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0,
    0x11650, 0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x16A60, 0x16AC0,
    0x16B50, 0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E950, 0x1FBF0,
];

/// The value of a decimal digit of any script, like Python's `unicodedata.decimal`.
fn decimal_digit(c: char) -> Option<u32> {
    let cp = u32::from(c);
    let i = DIGIT_ZEROS.partition_point(|&zero| zero <= cp);
    let zero = DIGIT_ZEROS.get(i.checked_sub(1)?)?;
    let value = cp - zero;
    (value < 10).then_some(value)
}

/// Python's `os.path.abspath`, on `Path` components: made absolute against the current directory,
/// then `.` and `..` collapsed lexically (symlinks are not resolved).
fn lexical_absolute(path: &Path) -> Result<PathBuf> {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .ctx(|| "cannot read the current directory to resolve the output folder".to_owned())?
            .join(path)
    };
    let mut out = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::io::Write;
    use std::sync::{Arc, Barrier};

    use super::*;

    const T: LocalTime = LocalTime {
        year: 2025,
        month: 3,
        day: 7,
        hour: 9,
        minute: 5,
        second: 1,
    };

    fn no_clock() -> LocalTime {
        panic!("the clock must not be read for a prefix without '%'")
    }

    fn target(prefix: &str, out: &Path) -> SaveTarget {
        SaveTarget::resolve_with_clock(prefix, out, || T).expect("prefix resolves")
    }

    fn touch(path: &Path) {
        fs::write(path, b"x").expect("write fixture");
    }

    fn names(dir: &Path) -> BTreeSet<String> {
        fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn tokens_are_expanded_from_one_snapshot() {
        let mut calls = 0;
        let out = expand_tokens(
            "%year%-%month%-%day%_%hour%%minute%%second%_%width%x%height%_%year%",
            || {
                calls += 1;
                T
            },
        );
        assert_eq!(out, "2025-03-07_090501_0x0_2025");
        assert_eq!(calls, 1);
    }

    #[test]
    fn unknown_tokens_are_kept_verbatim() {
        assert_eq!(
            expand_tokens("ckpt/%date:yyyy-MM-dd%_%year%_%foo%", || T),
            "ckpt/%date:yyyy-MM-dd%_2025_%foo%"
        );
    }

    #[test]
    fn no_percent_means_no_clock() {
        assert_eq!(
            expand_tokens("checkpoints/ComfyUI", no_clock),
            "checkpoints/ComfyUI"
        );
    }

    #[test]
    fn normpath_matches_python() {
        for (input, expected) in [
            ("", "."),
            (".", "."),
            ("a//b/./c/", "a/b/c"),
            ("a/../..", ".."),
            ("../a/../../b", "../../b"),
            ("/..", "/"),
            ("/../a", "/a"),
            ("//a//b", "//a/b"),
            ("///a", "/a"),
            ("a/b/..", "a"),
        ] {
            assert_eq!(normpath(input), expected, "normpath({input:?})");
        }
    }

    #[test]
    fn prefix_splits_into_subfolder_and_filename() {
        let out = Path::new("/srv/output");
        let t =
            SaveTarget::resolve_with_clock("checkpoints/ComfyUI", out, no_clock).expect("resolves");
        assert_eq!(t.subfolder, "checkpoints");
        assert_eq!(t.filename, "ComfyUI");
        assert_eq!(t.folder, out.join("checkpoints"));
        assert_eq!(t.prefix_len, 7);
        assert_eq!(t.file_name(1), "ComfyUI_00001_.safetensors");
        assert_eq!(t.file_name(123_456), "ComfyUI_123456_.safetensors");

        let t = target("a/./b/../c//name", out);
        assert_eq!((t.subfolder.as_str(), t.filename.as_str()), ("a/c", "name"));
        assert_eq!(t.folder, out.join("a/c"));

        let t = target("ComfyUI", out);
        assert_eq!((t.subfolder.as_str(), t.filename.as_str()), ("", "ComfyUI"));
        assert_eq!(t.folder, out);

        let t = target("sub/../x_%year%", out);
        assert_eq!((t.subfolder.as_str(), t.filename.as_str()), ("", "x_2025"));
    }

    #[test]
    fn sandbox_refuses_escapes_and_absolute_prefixes() {
        let out = Path::new("/srv/output");
        match SaveTarget::resolve_with_clock("../evil", out, no_clock) {
            Err(Error::OutsideOutputFolder {
                full_output_folder,
                output_dir,
                common,
            }) => {
                assert_eq!(full_output_folder, "/srv");
                assert_eq!(output_dir, "/srv/output");
                assert_eq!(common, "/srv");
            }
            other => panic!("expected OutsideOutputFolder, got {other:?}"),
        }
        for prefix in [
            "/tmp/abs/ComfyUI",
            "a/../../evil",
            "../output2/x",
            "//net/x",
        ] {
            let err = SaveTarget::resolve_with_clock(prefix, out, no_clock).expect_err(prefix);
            assert!(
                matches!(err, Error::OutsideOutputFolder { .. }),
                "{prefix}: {err}"
            );
            assert!(err
                .to_string()
                .starts_with("**** ERROR: Saving image outside the output folder is not allowed.\n full_output_folder: "));
        }
        // `..` that comes back inside is fine.
        let t = target("a/../../output/x", Path::new("/srv/output/"));
        assert_eq!(
            (t.subfolder.as_str(), t.filename.as_str()),
            ("../output", "x")
        );
    }

    #[test]
    fn symlinked_subfolder_is_not_resolved() {
        let out = tempfile::tempdir().expect("tempdir");
        let elsewhere = tempfile::tempdir().expect("tempdir");
        #[cfg(unix)]
        std::os::unix::fs::symlink(elsewhere.path(), out.path().join("link")).expect("symlink");
        #[cfg(unix)]
        assert_eq!(
            target("link/ComfyUI", out.path()).folder,
            out.path().join("link")
        );
    }

    #[test]
    fn prefixes_naming_no_file_are_refused() {
        let out = Path::new("/srv/output");
        for prefix in ["", ".", "..", "a/..", "a/b/../.."] {
            let err = SaveTarget::resolve_with_clock(prefix, out, no_clock).expect_err(prefix);
            assert!(matches!(err, Error::InvalidInput(_)), "{prefix}: {err}");
            assert!(err.to_string().contains("names no file"), "{err}");
        }
    }

    #[test]
    fn reference_counter_example_gives_8() {
        let out = tempfile::tempdir().expect("tempdir");
        for name in [
            "ComfyUI_00001_.safetensors",
            "ComfyUI_00007_.png",
            "ComfyUI_clip_l_00003_.safetensors",
            "comfyui_00020_.safetensors",
        ] {
            touch(&out.path().join(name));
        }
        let t = target("ComfyUI", out.path());
        assert_eq!(t.next_counter().expect("scan"), 8);
        let r = t.reserve().expect("reserve");
        assert_eq!(r.counter(), Some(8));
        assert_eq!(
            r.final_path(),
            out.path().join("ComfyUI_00008_.safetensors")
        );
    }

    #[test]
    fn directories_count_like_files() {
        let out = tempfile::tempdir().expect("tempdir");
        fs::create_dir(out.path().join("ComfyUI_00004_")).expect("mkdir");
        touch(&out.path().join("ComfyUI_00002_.txt"));
        assert_eq!(
            target("ComfyUI", out.path()).next_counter().expect("scan"),
            5
        );
    }

    #[test]
    fn gaps_are_never_filled() {
        let out = tempfile::tempdir().expect("tempdir");
        touch(&out.path().join("ComfyUI_00001_.safetensors"));
        touch(&out.path().join("ComfyUI_00003_.safetensors"));
        let r = target("ComfyUI", out.path()).reserve().expect("reserve");
        assert_eq!(r.counter(), Some(4));
    }

    #[test]
    fn counter_digits_parse_like_python_int() {
        let out = tempfile::tempdir().expect("tempdir");
        let t = target("ComfyUI", out.path());
        let count = |name: &str| entry_counter(name, &t.filename, t.prefix_len);
        assert_eq!(count("ComfyUI_00012_.safetensors"), Some(Ok(12)));
        assert_eq!(count("ComfyUI_ 7 _x"), Some(Ok(7)));
        assert_eq!(count("ComfyUI_+7"), Some(Ok(7)));
        assert_eq!(count("ComfyUI_-3_"), Some(Ok(-3)));
        assert_eq!(count("ComfyUI_\u{663}\u{661}_"), Some(Ok(31)));
        assert_eq!(count("ComfyUI_\u{3000}9\u{a0}_"), Some(Ok(9)));
        assert_eq!(count("ComfyUI_7x_"), Some(Ok(0)));
        assert_eq!(count("ComfyUI_- 7_"), Some(Ok(0)));
        assert_eq!(count("ComfyUI_\u{1c}7_"), Some(Ok(0)));
        assert_eq!(count("ComfyUI_"), Some(Ok(0)));
        assert_eq!(count("ComfyUI_clip_l_00003_.safetensors"), Some(Ok(0)));
        assert_eq!(count("comfyui_00020_.safetensors"), None);
        assert_eq!(count("ComfyUI-00020_.safetensors"), None);
        assert_eq!(count("ComfyUI"), None);
        assert_eq!(
            count("ComfyUI_9999999999999999999999999999999999999999_"),
            Some(Err(()))
        );
        // A negative maximum does not give a counter below 1.
        touch(&out.path().join("ComfyUI_-5_.png"));
        assert_eq!(t.next_counter().expect("scan"), 1);
        // A counter that cannot be continued is reported, naming the entry.
        touch(&out.path().join("ComfyUI_18446744073709551615_.png"));
        let err = t.next_counter().expect_err("too large");
        assert!(
            err.to_string()
                .contains("ComfyUI_18446744073709551615_.png"),
            "{err}"
        );
    }

    #[test]
    fn prefix_len_is_taken_from_the_prefix_as_given() {
        let out = tempfile::tempdir().expect("tempdir");
        touch(&out.path().join("ComfyUI_00005_.safetensors"));
        touch(&out.path().join("ComfyUI_00001_.safetensors"));
        // `ComfyUI/.` normalises to `ComfyUI` but L = len(".") = 1, so no entry matches.
        let t = target("ComfyUI/.", out.path());
        assert_eq!((t.filename.as_str(), t.prefix_len), ("ComfyUI", 1));
        assert_eq!(t.next_counter().expect("scan"), 1);
        // The reference would overwrite `_00001_`; the reservation skips the taken name.
        let r = t.reserve().expect("reserve");
        assert_eq!(r.counter(), Some(2));
        // Single-letter names: L = 1 matches `b_…`.
        let out2 = tempfile::tempdir().expect("tempdir");
        touch(&out2.path().join("b_00003_.png"));
        let t = target("b/.", out2.path());
        assert_eq!(t.next_counter().expect("scan"), 4);
    }

    #[test]
    fn missing_folder_is_created_and_counts_from_1() {
        let out = tempfile::tempdir().expect("tempdir");
        let t = target("a/b/ComfyUI", out.path());
        assert_eq!(t.next_counter().expect("scan"), 1);
        assert!(out.path().join("a/b").is_dir());
    }

    #[test]
    fn folder_that_cannot_be_created_is_a_clear_error() {
        let out = tempfile::tempdir().expect("tempdir");
        touch(&out.path().join("blocker"));
        let t = target("blocker/sub/ComfyUI", out.path());
        for err in [
            t.next_counter().expect_err("scan"),
            t.reserve().expect_err("reserve"),
        ] {
            assert!(matches!(err, Error::Io { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains("cannot create the output folder"), "{msg}");
            assert!(
                msg.contains(&out.path().join("blocker/sub").display().to_string()),
                "{msg}"
            );
        }
    }

    #[test]
    fn trailing_slash_names_a_folder() {
        let out = tempfile::tempdir().expect("tempdir");
        touch(&out.path().join("checkpoints_00001_.safetensors"));
        let t = target("checkpoints/", out.path());
        assert_eq!(
            (t.subfolder.as_str(), t.filename.as_str()),
            ("checkpoints", "ComfyUI")
        );
        for expected in 1..=2u64 {
            let r = t.reserve().expect("reserve");
            assert_eq!(r.counter(), Some(expected));
            let path = r.commit().expect("commit");
            assert_eq!(
                path,
                out.path()
                    .join(format!("checkpoints/ComfyUI_{expected:05}_.safetensors"))
            );
        }
        assert_eq!(
            fs::read(out.path().join("checkpoints_00001_.safetensors")).expect("read"),
            b"x"
        );
    }

    #[test]
    fn reservation_commit_publishes_and_titles() {
        let out = tempfile::tempdir().expect("tempdir");
        let r = reserve("checkpoints/ComfyUI", out.path()).expect("reserve");
        assert_eq!(r.title(), "ComfyUI 1");
        assert_eq!(
            (r.filename(), r.subfolder()),
            ("ComfyUI", Some("checkpoints"))
        );
        let folder = out.path().join("checkpoints");
        assert_eq!(
            r.temp_path(),
            folder.join(format!(
                "ComfyUI_00001_.safetensors.{}.partial",
                std::process::id()
            ))
        );
        r.file().write_all(b"payload").expect("write");
        let temp = r.temp_path().to_path_buf();
        let path = r.commit().expect("commit");
        assert_eq!(path, folder.join("ComfyUI_00001_.safetensors"));
        assert_eq!(fs::read(&path).expect("read"), b"payload");
        assert!(!temp.exists());
        assert_eq!(
            names(&folder),
            BTreeSet::from([
                LOCK_FILE_NAME.to_owned(),
                "ComfyUI_00001_.safetensors".to_owned()
            ])
        );
    }

    #[test]
    fn pending_temp_file_takes_its_counter() {
        let out = tempfile::tempdir().expect("tempdir");
        let t = target("ComfyUI", out.path());
        let first = t.reserve().expect("first");
        let second = t.reserve().expect("second");
        assert_eq!((first.counter(), second.counter()), (Some(1), Some(2)));
        // ComfyUI's own scan would also see the temp file as counter 1.
        assert_eq!(t.next_counter().expect("scan"), 3);
    }

    #[test]
    fn dropping_an_uncommitted_reservation_removes_the_temp_file() {
        let out = tempfile::tempdir().expect("tempdir");
        let r = reserve("ComfyUI", out.path()).expect("reserve");
        r.file().write_all(b"half").expect("write");
        let temp = r.temp_path().to_path_buf();
        assert!(temp.is_file());
        drop(r);
        assert!(!temp.exists());
        assert_eq!(
            names(out.path()),
            BTreeSet::from([LOCK_FILE_NAME.to_owned()])
        );
    }

    #[test]
    fn commit_refuses_to_replace_an_existing_file() {
        let out = tempfile::tempdir().expect("tempdir");
        let r = reserve("ComfyUI", out.path()).expect("reserve");
        r.file().write_all(b"ours").expect("write");
        let temp = r.temp_path().to_path_buf();
        let final_path = r.final_path().to_path_buf();
        fs::write(&final_path, b"theirs").expect("someone else writes");
        let err = r.commit().expect_err("must not replace");
        match &err {
            Error::Io { source, .. } => assert_eq!(source.kind(), io::ErrorKind::AlreadyExists),
            other => panic!("expected Io, got {other:?}"),
        }
        assert!(err.to_string().contains("refusing to replace"), "{err}");
        assert_eq!(fs::read(&final_path).expect("read"), b"theirs");
        assert!(!temp.exists());
    }

    #[test]
    fn concurrent_reservations_get_distinct_counters() {
        const N: usize = 16;
        let out = tempfile::tempdir().expect("tempdir");
        let barrier = Arc::new(Barrier::new(N));
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let dir = out.path().to_path_buf();
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    let r = reserve("ckpt/ComfyUI", &dir).expect("reserve");
                    let payload = format!("thread {i} counter {:?}", r.counter()).repeat(1000);
                    r.file().write_all(payload.as_bytes()).expect("write");
                    let counter = r.counter().expect("counted");
                    let path = r.commit().expect("commit");
                    (counter, path, payload)
                })
            })
            .collect();
        let mut counters = BTreeSet::new();
        for handle in handles {
            let (counter, path, payload) = handle.join().expect("thread");
            assert_eq!(fs::read(&path).expect("read"), payload.as_bytes());
            counters.insert(counter);
        }
        assert_eq!(counters, (1..=N as u64).collect());
        let files = names(&out.path().join("ckpt"));
        assert_eq!(files.len(), N + 1, "{files:?}");
        assert!(files.iter().all(|f| !f.ends_with(TEMP_SUFFIX)), "{files:?}");
    }

    /// Environment variable that turns [`child_process_save`] into a real save (set by
    /// [`concurrent_processes_get_distinct_counters`]).
    const CHILD_DIR: &str = "CHECKPOINT_SAVE_NAMING_CHILD_DIR";

    /// Helper run in child processes: one save under `ComfyUI` in the folder given by the parent.
    #[test]
    #[ignore = "run by concurrent_processes_get_distinct_counters in child processes"]
    fn child_process_save() {
        let Some(dir) = std::env::var_os(CHILD_DIR) else {
            return;
        };
        let r = reserve("ComfyUI", Path::new(&dir)).expect("reserve");
        let payload = format!("pid {}", std::process::id()).repeat(10_000);
        r.file().write_all(payload.as_bytes()).expect("write");
        r.commit().expect("commit");
    }

    #[test]
    fn concurrent_processes_get_distinct_counters() {
        const N: usize = 4;
        let out = tempfile::tempdir().expect("tempdir");
        let exe = std::env::current_exe().expect("test binary");
        let children: Vec<_> = (0..N)
            .map(|_| {
                std::process::Command::new(&exe)
                    .args([
                        "--exact",
                        "naming::tests::child_process_save",
                        "--ignored",
                        "--quiet",
                    ])
                    .env(CHILD_DIR, out.path())
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        for mut child in children {
            assert!(child.wait().expect("wait").success());
        }
        let expected: BTreeSet<String> = (1..=N)
            .map(|c| format!("ComfyUI_{c:05}_.safetensors"))
            .chain([LOCK_FILE_NAME.to_owned()])
            .collect();
        assert_eq!(names(out.path()), expected);
        for c in 1..=N {
            let data =
                fs::read(out.path().join(format!("ComfyUI_{c:05}_.safetensors"))).expect("read");
            assert_eq!(data.len() % 10_000, 0, "a complete payload");
        }
    }

    #[test]
    fn stale_temps_of_dead_processes_are_removed() {
        let out = tempfile::tempdir().expect("tempdir");
        let dead = i32::MAX as u32;
        assert!(!process_alive(dead));
        let own = std::process::id();
        let dead_temp = format!("ComfyUI_00009_.safetensors.{dead}.partial");
        let live_temp = format!("ComfyUI_00003_.safetensors.{own}.partial");
        for name in [
            &dead_temp,
            &live_temp,
            "notes.123.txt",
            "x.0.partial",
            ".99.partial",
        ] {
            touch(&out.path().join(name));
        }
        fs::create_dir(out.path().join(format!("dir.{dead}.partial"))).expect("mkdir");

        assert_eq!(clean_stale_temps(out.path()).expect("clean"), 1);
        let left = names(out.path());
        assert!(!left.contains(&dead_temp));
        assert!(left.contains(&live_temp));
        assert!(left.contains("notes.123.txt") && left.contains("x.0.partial"));
        assert!(left.contains(&format!("dir.{dead}.partial")));

        // A reservation cleans too, before scanning: the dead temp no longer holds counter 9.
        touch(&out.path().join(&dead_temp));
        let r = target("ComfyUI", out.path()).reserve().expect("reserve");
        assert_eq!(r.counter(), Some(4));
        assert!(!out.path().join(&dead_temp).exists());
        assert_eq!(
            clean_stale_temps(&out.path().join("missing")).expect("clean"),
            0
        );
    }

    #[test]
    fn temp_pid_parses_only_temp_names() {
        assert_eq!(temp_pid("a.safetensors.42.partial"), Some(42));
        assert_eq!(temp_pid("a.42.partial"), Some(42));
        assert_eq!(temp_pid(".42.partial"), None);
        assert_eq!(temp_pid("a.0.partial"), None);
        assert_eq!(temp_pid("a.+42.partial"), None);
        assert_eq!(temp_pid("a.4294967295.partial"), None);
        assert_eq!(temp_pid("a.42.partia"), None);
    }

    #[test]
    fn reserve_at_uses_the_explicit_path_and_never_replaces() {
        let out = tempfile::tempdir().expect("tempdir");
        let path = out.path().join("runs/step_1000.safetensors");
        let r = reserve_at(&path).expect("reserve");
        assert_eq!(
            r.temp_path(),
            out.path().join(format!(
                "runs/step_1000.safetensors.{}.partial",
                std::process::id()
            ))
        );
        assert_eq!(
            (r.counter(), r.subfolder(), r.title()),
            (None, None, "step_1000".to_owned())
        );
        // The same path cannot be reserved twice at once.
        let err = reserve_at(&path).expect_err("already being written");
        assert!(err.to_string().contains("already being written"), "{err}");
        r.file().write_all(b"step").expect("write");
        assert_eq!(r.commit().expect("commit"), path);
        assert_eq!(fs::read(&path).expect("read"), b"step");

        let err = reserve_at(&path).expect_err("exists");
        match &err {
            Error::Io { source, .. } => assert_eq!(source.kind(), io::ErrorKind::AlreadyExists),
            other => panic!("expected Io, got {other:?}"),
        }
        assert_eq!(fs::read(&path).expect("read"), b"step");
        assert!(matches!(
            reserve_at(Path::new("/")).expect_err("no file"),
            Error::InvalidInput(_)
        ));
    }

    #[test]
    fn decimal_digits_of_other_scripts() {
        assert_eq!(decimal_digit('7'), Some(7));
        assert_eq!(decimal_digit('\u{0669}'), Some(9));
        assert_eq!(decimal_digit('\u{FF15}'), Some(5));
        assert_eq!(decimal_digit('\u{1D7CE}'), Some(0));
        assert_eq!(decimal_digit('\u{1FBF9}'), Some(9));
        assert_eq!(decimal_digit('a'), None);
        assert_eq!(decimal_digit('\u{00B2}'), None);
        assert_eq!(decimal_digit('/'), None);
    }
}
