//! The staging folder of a split: the parts are written into it and published together, so a
//! failed split leaves no partial output (see the [parent module](super)).

use std::path::{Path, PathBuf};

use super::Split;
use crate::error::{Error, IoContext, Result};
use crate::publish::{create_folder, remove_stale_temps, temp, FolderLock};

/// Runs `write` into a staging folder published as `out_dir` (new or empty) once it succeeds.
///
/// A new `out_dir` is staged beside it and renamed into place. An existing empty one (which may be
/// a mount point, a symlink, `.`, or a folder with its own owner, mode and ACLs, inside a parent
/// the user cannot write) is kept: the parts are staged in a hidden folder inside it and moved
/// up into it once all are written.
pub(super) fn staged(out_dir: &Path, write: impl FnOnce(&Path) -> Result<Split>) -> Result<Split> {
    let staging = if out_dir.is_dir() {
        TempDir::inside(out_dir)?
    } else {
        TempDir::beside(out_dir)?
    };
    let mut split = write(&staging.path)?;
    for f in &mut split.files {
        if let Ok(rel) = f.strip_prefix(&staging.path) {
            *f = out_dir.join(rel);
        }
    }
    staging.publish(out_dir)?;
    Ok(split)
}

/// Refuses an `out_dir` that holds anything but `ours` (our own staging folder, by name).
fn ensure_empty(out_dir: &Path, ours: Option<&std::ffi::OsStr>) -> Result<()> {
    let ctx = || format!("cannot list {}", out_dir.display());
    for entry in std::fs::read_dir(out_dir).ctx(ctx)? {
        let name = entry.ctx(ctx)?.file_name();
        if Some(name.as_os_str()) != ours {
            return Err(Error::InvalidInput(format!(
                "{} already exists and is not empty; split writes into a new or empty folder, so nothing is ever overwritten",
                out_dir.display()
            )));
        }
    }
    Ok(())
}

/// A folder that holds the parts until they are all written; removed (with what it holds) unless
/// published. Either beside a new output folder (renamed into place) or inside an existing empty
/// one (its entries moved up into it). Its name and lock are those of a temporary file
/// (`.{name}.{pid}-{machine}.partial`, see `publish::temp`), so when a split is killed the next
/// save or split into the folder that holds it removes what it left, by the same rule.
struct TempDir {
    path: PathBuf,
    /// The folder that holds the staging folder, whose lock guards it: the output folder's parent,
    /// or the output folder itself when `inside`.
    holder: PathBuf,
    /// Staged inside an existing empty output folder, which is kept.
    inside: bool,
    /// The staging lock, held while the folder is ours.
    _lock: std::fs::File,
    published: bool,
}

impl TempDir {
    /// Stages beside `out_dir`, which does not exist yet.
    fn beside(out_dir: &Path) -> Result<Self> {
        let name = out_dir.file_name().unwrap_or_default();
        // `file_name` is empty for `..`, `.` and roots.
        if name.is_empty() {
            return Err(Error::InvalidInput(format!(
                "{} names no folder; give a folder such as `parts`",
                out_dir.display()
            )));
        }
        let parent = crate::publish::folder_of(out_dir).to_path_buf();
        create_folder(&parent)?;
        let _lock = FolderLock::acquire(&parent)?;
        remove_stale_temps(&parent)?;
        let (lock, path) = temp::create_staging(&parent, name).ctx(|| {
            format!(
                "cannot create the staging folder for {} in {}",
                out_dir.display(),
                parent.display()
            )
        })?;
        Ok(TempDir {
            path,
            holder: parent,
            inside: false,
            _lock: lock,
            published: false,
        })
    }

    /// Stages inside `out_dir`, an existing folder that must be empty (but for what a killed
    /// split left, removed here).
    fn inside(out_dir: &Path) -> Result<Self> {
        let _lock = FolderLock::acquire(out_dir)?;
        remove_stale_temps(out_dir)?;
        ensure_empty(out_dir, None)?;
        let (lock, path) = temp::create_staging(out_dir, "split".as_ref()).ctx(|| {
            format!(
                "cannot create the staging folder inside {}",
                out_dir.display()
            )
        })?;
        Ok(TempDir {
            path,
            holder: out_dir.to_path_buf(),
            inside: true,
            _lock: lock,
            published: false,
        })
    }

    /// Publishes the parts as `out_dir`: renames the folder into place, or, when staged inside
    /// it, moves its entries up into it. Anything that appeared in `out_dir` meanwhile is refused.
    fn publish(mut self, out_dir: &Path) -> Result<()> {
        // Under the holder's lock, so no cleanup sees the folder between its lock file going and
        // the rename.
        let _lock = FolderLock::acquire(&self.holder)?;
        if self.inside {
            return self.move_up(out_dir);
        }
        let lock_file = self.path.join(temp::STAGING_LOCK);
        std::fs::remove_file(&lock_file)
            .ctx(|| format!("cannot remove {}", lock_file.display()))?;
        if out_dir.is_dir() {
            std::fs::remove_dir(out_dir).ctx(|| {
                format!(
                    "{} is no longer empty; nothing was written to it",
                    out_dir.display()
                )
            })?;
        }
        crate::publish::rename_no_replace(&self.path, out_dir)?;
        self.published = true;
        crate::publish::sync_folder(&self.holder)
    }

    /// Moves the staged entries into `out_dir` (which holds the staging folder) without replacing
    /// anything; if one cannot be moved, those already moved go back, so `out_dir` stays empty.
    fn move_up(&mut self, out_dir: &Path) -> Result<()> {
        ensure_empty(out_dir, self.path.file_name()).map_err(|_| {
            Error::InvalidInput(format!(
                "{} is no longer empty; nothing was written to it",
                out_dir.display()
            ))
        })?;
        let ctx = || format!("cannot list {}", self.path.display());
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.path).ctx(ctx)? {
            let name = entry.ctx(ctx)?.file_name();
            if name != temp::STAGING_LOCK {
                names.push(name);
            }
        }
        for (i, name) in names.iter().enumerate() {
            if let Err(e) =
                crate::publish::rename_no_replace(&self.path.join(name), &out_dir.join(name))
            {
                for back in &names[..i] {
                    // Best effort: the staging folder is removed with whatever it holds.
                    let _ = std::fs::rename(out_dir.join(back), self.path.join(back));
                }
                return Err(e);
            }
        }
        self.published = true;
        // Only the lock file is left in the staging folder.
        let _ = std::fs::remove_dir_all(&self.path);
        crate::publish::sync_folder(out_dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// A write that puts two parts (one in a subfolder) into the staging folder.
    fn two_parts(dir: &Path) -> Result<Split> {
        std::fs::write(dir.join("model.safetensors"), b"m").unwrap();
        std::fs::create_dir(dir.join("vae")).unwrap();
        std::fs::write(dir.join("vae/vae.safetensors"), b"v").unwrap();
        Ok(Split {
            files: vec![
                dir.join("model.safetensors"),
                dir.join("vae/vae.safetensors"),
            ],
            dropped: Vec::new(),
            bytes: 2,
        })
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn an_existing_empty_folder_is_kept_and_filled() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("parts");
        std::fs::create_dir(&out).unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o710)).unwrap();
        let before = std::fs::metadata(&out).unwrap();
        let split = staged(&out, two_parts).unwrap();
        let after = std::fs::metadata(&out).unwrap();
        assert_eq!(after.ino(), before.ino(), "the same folder, not a new one");
        assert_eq!(after.mode(), before.mode());
        assert_eq!(names(&out), ["model.safetensors", "vae"]);
        assert_eq!(
            split.files,
            [
                out.join("model.safetensors"),
                out.join("vae/vae.safetensors")
            ]
        );
        assert_eq!(
            std::fs::read(out.join("vae/vae.safetensors")).unwrap(),
            b"v"
        );
        assert_eq!(names(root.path()), ["parts"], "nothing staged beside it");
    }

    #[test]
    fn a_symlink_to_an_empty_folder_stays_a_symlink() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("target");
        std::fs::create_dir(&target).unwrap();
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        staged(&link, two_parts).unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(names(&target), ["model.safetensors", "vae"]);
    }

    #[test]
    fn a_failed_split_leaves_the_existing_folder_empty() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("parts");
        std::fs::create_dir(&out).unwrap();
        let ino = std::fs::metadata(&out).unwrap().ino();
        let err = staged(&out, |dir| {
            two_parts(dir)?;
            Err(Error::InvalidInput("late failure".into()))
        })
        .unwrap_err();
        assert!(err.to_string().contains("late failure"), "{err}");
        assert_eq!(names(&out), Vec::<String>::new());
        assert_eq!(std::fs::metadata(&out).unwrap().ino(), ino);

        // Something that appears in the folder meanwhile: refused, none of the parts moved in.
        let err = staged(&out, |dir| {
            std::fs::write(out.join("theirs"), b"t").unwrap();
            two_parts(dir)
        })
        .unwrap_err();
        assert!(err.to_string().contains("no longer empty"), "{err}");
        assert_eq!(names(&out), ["theirs"]);
    }

    #[test]
    fn a_new_folder_is_created_and_a_full_one_refused() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("new/parts");
        staged(&out, two_parts).unwrap();
        assert_eq!(names(&out), ["model.safetensors", "vae"]);
        assert_eq!(names(&root.path().join("new")), ["parts"]);
        let err = staged(&out, two_parts).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
    }
}
