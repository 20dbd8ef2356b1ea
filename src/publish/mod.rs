//! Publish: a checkpoint appears under its final name complete or not at all.
//!
//! Data is written into a temporary file in the destination folder, named
//! `{final name}.{pid}-{machine}.partial`, created with `create_new` and locked by its writer
//! (see [`temp`] for the name, the lock and when a leftover one is garbage); [`Reservation::commit`] fsyncs it,
//! publishes it with a hard link (which fails rather than replace an existing file; a no-replace
//! rename where links are missing), removes the temporary name and fsyncs the folder. Dropping a
//! reservation without committing — an error, a cancellation — removes the temporary file; a
//! crash leaves it, and the next reservation in that folder removes it ([`clean_stale_temps`]).
//! Nothing else is ever created in the folder.

mod folder;
pub(crate) mod temp;
#[cfg(test)]
mod tests;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::sys;
pub(crate) use folder::{create_folder, exists, folder_of, sync_folder, FolderLock};
pub(crate) use temp::remove_stale_temps;

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
    title: String,
    counter: Option<u64>,
    /// Whether `temp_path` is still ours to remove.
    temp_present: bool,
}

impl Reservation {
    /// Creates the locked temporary file for `final_path` in `folder` (the caller holds the
    /// folder's lock and has checked that `final_path` is free). `title` is the `modelspec.title`.
    ///
    /// # Errors
    /// The I/O error of `create_new` (kind `AlreadyExists` when this process already writes it).
    pub(crate) fn create(
        folder: &Path,
        final_path: PathBuf,
        title: String,
        counter: Option<u64>,
    ) -> io::Result<Reservation> {
        let name = final_path.file_name().unwrap_or_default();
        let (file, temp_path) = temp::create_temp(folder, name)?;
        Ok(Reservation {
            file,
            final_path,
            temp_path,
            folder: folder.to_path_buf(),
            title,
            counter,
            temp_present: true,
        })
    }

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

    /// The `modelspec.title`: `"<filename> <counter>"` with the counter unpadded (`ComfyUI 1`), or
    /// the file name without extension for [`reserve_at`].
    pub fn title(&self) -> &str {
        &self.title
    }

    /// Makes the data durable and publishes it under the final name, never replacing a file.
    ///
    /// Order: fsync the file; hard-link it to the final name (fails if that name exists) and remove
    /// the temporary name; on a file system without hard links, rename without replacing (where
    /// the platform cannot, check and rename holding the folder's lock); fsync the folder. If
    /// removing the temporary name after a successful link fails, the checkpoint is still
    /// published and the leftover link is removed when this value is dropped (or by a later
    /// [`clean_stale_temps`]).
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
            Err(e) if sys::links_unsupported(&e) => self.rename_without_replacing()?,
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

    fn rename_without_replacing(&mut self) -> Result<()> {
        let ctx = || {
            format!(
                "cannot rename {} to {}",
                self.temp_path.display(),
                self.final_path.display()
            )
        };
        match sys::rename_noreplace(&self.temp_path, &self.final_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(refuse_replace(&self.final_path))
            }
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                let _lock = FolderLock::acquire(&self.folder)?;
                if exists(&self.final_path)? {
                    return Err(refuse_replace(&self.final_path));
                }
                fs::rename(&self.temp_path, &self.final_path).ctx(ctx)?;
            }
            Err(e) => return Err(Error::io(ctx(), e)),
        }
        self.temp_present = false;
        Ok(())
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

/// Reserves an explicit final path (training-loop checkpoints, split files and other callers
/// that choose the name themselves): creates the parent folder if needed and, holding its lock,
/// removes stale temporary files, checks that `path` does not exist and creates
/// `{file_name}.{pid}-{machine}.partial` next to it. The commit never replaces an existing file
/// either.
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
            "`{}` names no file; give a path such as `checkpoints/step_1000.safetensors`",
            path.display()
        )));
    };
    let folder = folder_of(path).to_path_buf();
    create_folder(&folder)?;
    let _lock = FolderLock::acquire(&folder)?;
    remove_stale_temps(&folder)?;
    if exists(path)? {
        return Err(refuse_replace(path));
    }
    let title = Path::new(file_name)
        .file_stem()
        .unwrap_or(file_name)
        .to_string_lossy()
        .into_owned();
    Reservation::create(&folder, path.to_path_buf(), title, None).map_err(|e| {
        let context = if e.kind() == io::ErrorKind::AlreadyExists {
            format!(
                "{} is already being written by this process",
                path.display()
            )
        } else {
            format!("cannot create the temporary file for {}", path.display())
        };
        Error::io(context, e)
    })
}

/// Removes the temporary files (and `split` staging folders) in `folder` left by saves that no
/// longer run, holding the folder's lock (the same cleanup every reservation does). Returns how
/// many were removed.
///
/// A temporary file is `{name}.{pid}-{machine}.partial`, locked (`flock`) by its writer while it
/// writes. One is removed only when it was written on this machine (the running kernel, or this
/// host name before a reboot), its writer is not a live process here and no process holds its
/// lock. Those of live writers (this process included, or in another pid namespace or
/// container), of other machines sharing the folder, names of earlier versions
/// (`{name}.{pid}.partial`, which carry no machine and no lock), entries on file systems without
/// `flock` and every other entry are left alone. A missing folder has nothing to clean.
///
/// # Errors
///
/// [`Error::Io`] naming the path when the folder cannot be listed, or a stale file cannot be
/// removed.
pub fn clean_stale_temps(folder: &Path) -> Result<usize> {
    match fs::metadata(folder) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(format!("cannot inspect {}", folder.display()), e)),
        Ok(_) => {}
    }
    let _lock = FolderLock::acquire(folder)?;
    remove_stale_temps(folder)
}

/// Renames `from` to `to` (a file or a folder), failing rather than replacing anything at `to`.
///
/// # Errors
/// [`Error::Io`] of kind `AlreadyExists` when `to` exists; other I/O errors naming both paths.
pub(crate) fn rename_no_replace(from: &Path, to: &Path) -> Result<()> {
    let ctx = || format!("cannot rename {} to {}", from.display(), to.display());
    match sys::rename_noreplace(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(refuse_replace(to)),
        Err(e) if e.kind() == io::ErrorKind::Unsupported => {
            if exists(to)? {
                return Err(refuse_replace(to));
            }
            fs::rename(from, to).ctx(ctx)
        }
        Err(e) => Err(Error::io(ctx(), e)),
    }
}

/// The error for a name that is taken.
pub(crate) fn refuse_replace(path: &Path) -> Error {
    let what = match path.is_dir() {
        true => "folder",
        false => "file",
    };
    Error::io(
        format!(
            "refusing to replace the existing {what} {}; nothing was overwritten: choose another \
             name or move that {what} away",
            path.display()
        ),
        io::Error::from(io::ErrorKind::AlreadyExists),
    )
}
