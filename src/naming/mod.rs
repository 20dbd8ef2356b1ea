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
//!   the earlier. Here [`SaveTarget::reserve`] locks the target folder itself (an OS lock, so it
//!   works between threads and between processes, and leaves no file behind), and under the lock
//!   removes stale temporary files, scans, skips any counter whose final name already exists, and
//!   creates the temporary file `{filename}_{counter:05}_.safetensors.{pid}-{machine}.partial`
//!   with `create_new`. That name starts with `{filename}_` and carries the counter, so both this scan and
//!   ComfyUI's own count it as taken while the data is being written. [`Reservation::commit`]
//!   publishes without ever replacing an existing file (see [`crate::reserve_at`]).
//! * **Prefixes that name no file are refused** ([`Error::InvalidInput`]): an empty prefix, or one
//!   that normalises to `.` or `..` (the reference would write a hidden `._00001_.safetensors`).
//! * **Counters stay positive and bounded.** The reference parses the counter part with Python's
//!   `int()`, so an entry such as `ComfyUI_-5_.png` alone would give counter -4; here the counter is
//!   at least 1. An entry whose counter does not fit in 64 bits is reported as an error instead of
//!   producing a name with a 20-digit counter.
//!
//! Paths follow POSIX rules (the reference's `posixpath`); Windows drive letters and case-folding
//! (`normcase`) are not reproduced.

mod counter;
#[cfg(test)]
pub(crate) mod tests;

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use chrono::{Datelike, Timelike};

use crate::error::{Error, IoContext, Result};
use crate::publish::{create_folder, exists, remove_stale_temps, FolderLock, Reservation};
use counter::entry_counter;

/// The file name used when a prefix names only a folder (ends in `/`), as in ComfyUI's default
/// prefix `checkpoints/ComfyUI`.
pub const DEFAULT_FILENAME: &str = "ComfyUI";

/// The longest file name, in bytes, that Linux file systems (ext4, xfs, btrfs, tmpfs) accept.
pub const NAME_MAX: usize = 255;

/// Extension of the checkpoints written under a prefix.
const EXTENSION: &str = "safetensors";

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
    /// The folder the files go into: `output_dir` joined with [`SaveTarget::subfolder`] after
    /// normalising it against the output root, so it never holds a `..` that the kernel could
    /// resolve through a symlinked output folder to somewhere outside it.
    pub folder: PathBuf,
    /// The folder relative to the output root, as the reference reports it (`""` for the root).
    pub subfolder: String,
    /// The file name stem, before `_{counter:05}_.safetensors`.
    pub filename: String,
    /// The reference's `L`: the length in characters of the basename of the prefix as given (after
    /// token expansion, before normalisation). The counter scan looks at the `L + 1` first
    /// characters of each entry.
    pub prefix_len: usize,
    /// The file extension, without its dot (`safetensors`; `gguf` for GGUF targets).
    extension: &'static str,
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
    /// must be the output folder. The folder written is `output_dir` joined with the checked
    /// folder's part below the output root (no `..`), not the raw join, so a symlinked output
    /// folder cannot be left through `..`. Nothing is created on disk.
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

        let output_abs = lexical_absolute(output_dir)?;
        let folder_abs = lexical_absolute(&output_dir.join(subfolder))?;
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
        // Write to the folder that was checked: the part of the lexically normalised folder below
        // the output root, which has no `..` left. Joining the raw subfolder instead would let the
        // kernel resolve its `..` physically, so `--output-dir link --prefix ../link/x` with `link`
        // a symlink would land beside the link's target, outside the output folder.
        let inside =
            folder_abs
                .strip_prefix(&output_abs)
                .map_err(|_| Error::OutsideOutputFolder {
                    full_output_folder: folder_abs.display().to_string(),
                    output_dir: output_abs.display().to_string(),
                    common: common.display().to_string(),
                })?;
        let folder = if inside.as_os_str().is_empty() {
            output_dir.to_path_buf()
        } else {
            output_dir.join(inside)
        };
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
            extension: EXTENSION,
        })
    }

    /// The same target for files of another extension (`gguf`); the counter scan, which looks
    /// at names only up to the counter, is shared with every other file of the prefix.
    pub fn with_extension(mut self, extension: &'static str) -> Self {
        self.extension = extension;
        self
    }

    /// The final file name for `counter`: `{filename}_{counter:05}_.safetensors` (or the
    /// extension set with [`SaveTarget::with_extension`]).
    pub fn file_name(&self, counter: u64) -> String {
        format!("{}_{counter:05}_.{}", self.filename, self.extension)
    }

    /// Refuses a name that the file system cannot hold: the final name for `counter` and the
    /// temporary name written first (the final name plus `.{pid}-{machine}.partial`, about 40
    /// bytes) must each fit in [`NAME_MAX`] bytes. Checked by [`SaveTarget::reserve`] and by a
    /// dry run, so both agree, and before anything is written.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] saying how many bytes the prefix's file name must lose.
    pub fn check_name_length(&self, counter: u64) -> Result<()> {
        let name = self.file_name(counter);
        let temp = crate::publish::temp::temp_name(name.as_ref()).len();
        if temp > NAME_MAX {
            return Err(Error::InvalidInput(format!(
                "the file name `{name}` is {} bytes, and its temporary name {temp} bytes, over the                  file system's {NAME_MAX}-byte limit for one name; shorten the prefix's file name                  `{}` by at least {} bytes",
                name.len(),
                self.filename,
                temp - NAME_MAX
            )));
        }
        Ok(())
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
    /// folder's lock, removes stale temporary files ([`crate::publish::clean_stale_temps`]), scans for the counter
    /// ([`SaveTarget::next_counter`]'s rules), skips counters whose final name exists, and creates
    /// the temporary file `{filename}_{counter:05}_.safetensors.{pid}-{machine}.partial` with
    /// `create_new`.
    ///
    /// Concurrent reservations with the same prefix, from threads or processes, get distinct
    /// counters; the returned [`Reservation`] is published with [`Reservation::commit`].
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming the path when the folder cannot be created or listed, the lock file
    /// cannot be opened or locked, a stale temp file cannot be removed or the temp file cannot be
    /// created; [`Error::InvalidInput`] when the counter would overflow or the name is too long
    /// ([`SaveTarget::check_name_length`]).
    pub fn reserve(&self) -> Result<Reservation> {
        create_folder(&self.folder)?;
        let _lock = FolderLock::acquire(&self.folder)?;
        remove_stale_temps(&self.folder)?;
        let mut counter = self.next_counter()?;
        loop {
            self.check_name_length(counter)?;
            let final_path = self.folder.join(self.file_name(counter));
            if !exists(&final_path)? {
                let title = format!("{} {counter}", self.filename);
                match Reservation::create(&self.folder, final_path, title, Some(counter)) {
                    Ok(r) => return Ok(r),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        return Err(Error::io(
                            format!(
                                "cannot create a temporary file in {}",
                                self.folder.display()
                            ),
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
