//! The checkpointer's own files: the names it gives, and the checks a listed file must pass before
//! retention deletes it or resume reads it.
//!
//! A manifest is input like any other (a run folder may have been downloaded), so an entry is
//! trusted only for a file that is, by name and content, one this checkpointer wrote:
//! `<stem>-step<step:08>[-v<n>].safetensors` for the entry's own stem and step, directly inside
//! the folder, a regular file (not a symlink), of the size and header checksum recorded when it
//! was written.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::manifest::{header_checksum_of, ManifestEntry};
use crate::error::{Error, Result};
use crate::publish::exists;

/// Checks a file-name stem: a plain, visible file-name part.
///
/// # Errors
/// [`Error::InvalidInput`] for an empty stem, or one holding `/` or NUL or starting with `.`.
pub(super) fn check_stem(stem: &str) -> Result<()> {
    if stem.is_empty() || stem.contains(['/', '\0']) || stem.starts_with('.') {
        return Err(Error::InvalidInput(format!(
            "invalid checkpoint stem `{stem}`: give a plain file-name part such as `model`"
        )));
    }
    Ok(())
}

/// `<stem>-step<step:08>.safetensors`, or with `-v<version>` before the extension when
/// `version > 0`.
pub(super) fn file_name(stem: &str, step: u64, version: u32) -> String {
    if version == 0 {
        format!("{stem}-step{step:08}.safetensors")
    } else {
        format!("{stem}-step{step:08}-v{version}.safetensors")
    }
}

/// Whether `file` is a name [`file_name`] gives for `stem` and `step` (any version).
pub(super) fn is_own_name(stem: &str, step: u64, file: &str) -> bool {
    if check_stem(stem).is_err() {
        return false;
    }
    let Some(rest) = file
        .strip_prefix(&format!("{stem}-step{step:08}"))
        .and_then(|r| r.strip_suffix(".safetensors"))
    else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    rest.strip_prefix("-v").is_some_and(|v| {
        !v.starts_with('0')
            && v.bytes().all(|b| b.is_ascii_digit())
            && v.parse::<u32>().is_ok_and(|n| n > 0)
    })
}

/// The first name of `step` nothing in `dir` has: the plain one, else `-v1`, `-v2`… A taken
/// name (an earlier save of this step, a file the checkpointer did not write) is never reused.
///
/// # Errors
/// [`Error::Io`] when an entry cannot be inspected.
pub(super) fn free_name(dir: &Path, stem: &str, step: u64) -> Result<String> {
    let mut version = 0;
    loop {
        let name = file_name(stem, step, version);
        if !exists(&dir.join(&name))? {
            return Ok(name);
        }
        version = version.checked_add(1).ok_or_else(|| {
            Error::InvalidInput(format!(
                "every name for step {step} in {} is taken",
                dir.display()
            ))
        })?;
    }
}

/// Why a listed file is not (or no longer) one this checkpointer wrote.
#[derive(Debug)]
pub(super) enum Untrusted {
    /// Nothing has that name (any more).
    Missing,
    /// Something else: the reason, for the warning or the resume report.
    Refused(String),
}

impl Untrusted {
    /// The reason, as reports show it.
    pub(super) fn reason(&self) -> String {
        match self {
            Untrusted::Missing => "missing".into(),
            Untrusted::Refused(r) => r.clone(),
        }
    }
}

/// The path of `e`'s file in `dir` when it is one this checkpointer wrote (see the module docs).
pub(super) fn verify(dir: &Path, e: &ManifestEntry) -> std::result::Result<PathBuf, Untrusted> {
    if !is_own_name(&e.stem, e.step, &e.file) {
        return Err(Untrusted::Refused(format!(
            "not a name the checkpointer gives to step {} of stem `{}` \
             (`<stem>-step<step:08>[-v<n>].safetensors` directly in its folder)",
            e.step, e.stem
        )));
    }
    let path = dir.join(&e.file);
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(Untrusted::Missing),
        Err(err) => return Err(Untrusted::Refused(format!("cannot inspect: {err}"))),
    };
    if meta.file_type().is_symlink() {
        return Err(Untrusted::Refused(
            "a symbolic link, which the checkpointer never writes".into(),
        ));
    }
    if !meta.is_file() {
        return Err(Untrusted::Refused("not a regular file".into()));
    }
    if meta.len() != e.bytes {
        return Err(Untrusted::Refused(format!(
            "{} bytes, the manifest says {}",
            meta.len(),
            e.bytes
        )));
    }
    // Never through a symlink swapped in since, never blocking on a FIFO.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|err| Untrusted::Refused(format!("cannot open: {err}")))?;
    let sum =
        header_checksum_of(&file, &path).map_err(|err| Untrusted::Refused(err.to_string()))?;
    if sum != e.header_checksum {
        return Err(Untrusted::Refused(format!(
            "header checksum {sum}, the manifest says {}",
            e.header_checksum
        )));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_names_are_exactly_the_given_ones() {
        assert_eq!(file_name("m", 7, 0), "m-step00000007.safetensors");
        assert_eq!(file_name("m", 7, 2), "m-step00000007-v2.safetensors");
        assert_eq!(
            file_name("m", 123_456_789, 0),
            "m-step123456789.safetensors"
        );
        for v in [0, 1, 12] {
            assert!(is_own_name("m", 7, &file_name("m", 7, v)));
        }
        for other in [
            "m-step00000008.safetensors",
            "m-step0000007.safetensors",
            "x-step00000007.safetensors",
            "m-step00000007-v0.safetensors",
            "m-step00000007-v01.safetensors",
            "m-step00000007-v.safetensors",
            "m-step00000007-v99999999999.safetensors",
            "m-step00000007.safetensors.1-0.partial",
            "../m-step00000007.safetensors",
            "sub/m-step00000007.safetensors",
            "/m-step00000007.safetensors",
        ] {
            assert!(!is_own_name("m", 7, other), "{other}");
        }
        // A stem that is not a plain name owns nothing.
        assert!(!is_own_name("../m", 7, "../m-step00000007.safetensors"));
        assert!(!is_own_name(".m", 7, ".m-step00000007.safetensors"));
    }

    #[test]
    fn free_names_skip_whatever_exists() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            free_name(dir.path(), "m", 5).unwrap(),
            "m-step00000005.safetensors"
        );
        fs::write(dir.path().join("m-step00000005.safetensors"), b"x").unwrap();
        std::os::unix::fs::symlink("nowhere", dir.path().join("m-step00000005-v1.safetensors"))
            .unwrap();
        assert_eq!(
            free_name(dir.path(), "m", 5).unwrap(),
            "m-step00000005-v2.safetensors"
        );
    }
}
