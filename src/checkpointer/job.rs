//! The background half of a checkpoint: write the snapshot, publish it, update the manifest,
//! apply retention — in that order, so a crash at any moment leaves a manifest that points only
//! at complete files.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::manifest::{
    apply_retention, header_checksum, read_manifest, write_manifest, ManifestEntry,
};
use super::snapshot::Snapshot;
use super::{Completed, Config};
use crate::error::{Error, IoContext, Result};
use crate::publish::{sync_folder, FolderLock};

/// One background save: its snapshot and what the manifest will say of it.
pub(super) struct Job {
    pub(super) cfg: Arc<Config>,
    pub(super) snapshot: Snapshot,
    pub(super) step: u64,
    pub(super) metric: Option<f64>,
    pub(super) extra_prefixes: Vec<String>,
    pub(super) cancel: Arc<AtomicBool>,
    pub(super) started: Instant,
}

impl Job {
    /// Writes, publishes, records and prunes; runs on the checkpointer's background thread.
    pub(super) fn run(self) -> Result<Completed> {
        let b = &self.cfg.builder;
        if b.low_priority {
            crate::sys::lower_thread_priority();
        }
        let dir = &b.dir;
        let file = self.cfg.file_name(self.step);
        let path = dir.join(&file);
        self.clear_orphan(&path)?;
        let saved = self.snapshot.write(&self.cfg, &path, &self.cancel)?;
        let header_checksum = header_checksum(&saved.path)?;
        let entry = ManifestEntry {
            stem: b.stem.clone(),
            step: self.step,
            metric: self.metric,
            unix_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            file,
            bytes: saved.bytes,
            header_checksum,
            model_prefix: self.cfg.model_prefix.clone(),
            extra_prefixes: self.extra_prefixes,
        };
        let removed = {
            let _lock = FolderLock::acquire(dir)?;
            let mut manifest = read_manifest(dir)?.unwrap_or_default();
            manifest
                .entries
                .retain(|e| !(e.stem == entry.stem && e.step == entry.step));
            manifest.entries.push(entry.clone());
            let dropped = apply_retention(&mut manifest, &b.stem, &b.retention);
            write_manifest(dir, &manifest)?;
            // Only now, with the new manifest durable, may the old files go.
            let mut removed = Vec::new();
            for e in dropped {
                let p = dir.join(&e.file);
                match fs::remove_file(&p) {
                    Ok(()) => removed.push(p),
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => {
                        return Err(Error::io(
                            format!("cannot remove the old checkpoint {}", p.display()),
                            err,
                        ))
                    }
                }
            }
            if !removed.is_empty() {
                sync_folder(dir)?;
            }
            removed
        };
        Ok(Completed {
            entry,
            path: saved.path,
            elapsed: self.started.elapsed(),
            removed,
        })
    }

    /// A file of this name the manifest does not list was left by an interrupted run (or by a
    /// run resumed from an earlier step): it is superseded. One the manifest lists is refused.
    fn clear_orphan(&self, path: &Path) -> Result<()> {
        if fs::symlink_metadata(path).is_err() {
            return Ok(());
        }
        let dir = &self.cfg.builder.dir;
        let _lock = FolderLock::acquire(dir)?;
        let listed = read_manifest(dir)?.is_some_and(|m| {
            m.entries
                .iter()
                .any(|e| e.stem == self.cfg.builder.stem && e.step == self.step)
        });
        if listed {
            return Err(Error::io(
                format!(
                    "step {} is already checkpointed as {}; use another stem or folder",
                    self.step,
                    path.display()
                ),
                io::Error::from(io::ErrorKind::AlreadyExists),
            ));
        }
        fs::remove_file(path).ctx(|| {
            format!(
                "cannot remove {}, a checkpoint the manifest does not list (left by an \
                 interrupted run)",
                path.display()
            )
        })
    }
}
