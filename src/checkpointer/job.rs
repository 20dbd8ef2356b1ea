//! The background half of a checkpoint: write the snapshot, publish it, update the manifest,
//! apply retention — in that order, so a crash at any moment leaves a manifest that points only
//! at complete files — and delete only the dropped files that pass [`files::verify`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::files::{self, Untrusted};
use super::manifest::{
    apply_retention, header_checksum, read_manifest, write_manifest, Manifest, ManifestEntry,
};
use super::snapshot::Snapshot;
use super::{Completed, Config};
use crate::error::{Error, Result};
use crate::publish::{sync_folder, FolderLock};

/// One background save: its snapshot, its file name and what the manifest will say of it.
pub(super) struct Job {
    pub(super) cfg: Arc<Config>,
    pub(super) snapshot: Snapshot,
    /// The free name chosen when the save was asked for.
    pub(super) file: String,
    pub(super) step: u64,
    pub(super) metric: Option<f64>,
    pub(super) extra_prefixes: Vec<String>,
    pub(super) cancel: Arc<AtomicBool>,
    pub(super) started: Instant,
}

/// What retention did with the files of the entries it dropped.
#[derive(Default)]
struct Pruned {
    removed: Vec<PathBuf>,
    refused: Vec<(String, String)>,
}

impl Job {
    /// Writes, publishes, records and prunes; runs on the checkpointer's background thread.
    pub(super) fn run(self) -> Result<Completed> {
        let b = &self.cfg.builder;
        if b.low_priority {
            crate::sys::lower_thread_priority();
        }
        let dir = &b.dir;
        // `reserve_at` refuses an existing file and the publish never replaces one.
        let saved = self
            .snapshot
            .write(&self.cfg, &dir.join(&self.file), &self.cancel)?;
        // Until the manifest lists it, the file is this save's alone and no retention would
        // ever remove it: a failure before then removes it (each save would leave another).
        let unlisted = |e: Error| unlisted(dir, &b.stem, &self.file, &saved.path, e);
        let header_checksum = header_checksum(&saved.path).map_err(unlisted)?;
        let entry = ManifestEntry {
            stem: b.stem.clone(),
            step: self.step,
            metric: self.metric,
            unix_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            file: self.file.clone(),
            bytes: saved.bytes,
            header_checksum,
            model_prefix: self.cfg.model_prefix.clone(),
            extra_prefixes: self.extra_prefixes,
        };
        let pruned = {
            let _lock = FolderLock::acquire(dir).map_err(unlisted)?;
            let mut manifest = read_manifest(dir).map_err(unlisted)?.unwrap_or_default();
            // A listing of this name is stale: nothing had the name when the save took it.
            manifest
                .entries
                .retain(|e| !(e.stem == entry.stem && e.file == entry.file));
            manifest.entries.push(entry.clone());
            let mut dropped = take_foreign(&mut manifest, &b.stem);
            dropped.extend(apply_retention(&mut manifest, &b.stem, &b.retention));
            write_manifest(dir, &manifest).map_err(unlisted)?;
            // Only now, with the new manifest durable, may the old files go.
            prune(dir, &dropped)?
        };
        for (file, why) in &pruned.refused {
            eprintln!(
                "checkpoint-save: the manifest of {} listed `{file}`, which the checkpointer \
                 left in place and stopped listing: {why}",
                dir.display()
            );
        }
        Ok(Completed {
            entry,
            path: saved.path,
            elapsed: self.started.elapsed(),
            removed: pruned.removed,
            refused: pruned.refused,
        })
    }
}

/// `e`, once the checkpoint `file` of `stem` just published at `path` is removed, unless the
/// manifest lists it after all (its write failed after the rename, when syncing the folder).
fn unlisted(dir: &Path, stem: &str, file: &str, path: &Path, e: Error) -> Error {
    let listed = read_manifest(dir)
        .ok()
        .flatten()
        .is_some_and(|m| m.entries.iter().any(|x| x.stem == stem && x.file == file));
    if !listed {
        let _ = std::fs::remove_file(path);
    }
    e
}

/// Takes out of the manifest the entries of `stem` whose file name is not one this checkpointer
/// gives (they were not written by it); [`prune`] then refuses their files.
fn take_foreign(manifest: &mut Manifest, stem: &str) -> Vec<ManifestEntry> {
    let (foreign, kept): (Vec<_>, Vec<_>) = manifest
        .entries
        .drain(..)
        .partition(|e| e.stem == stem && !files::is_own_name(&e.stem, e.step, &e.file));
    manifest.entries = kept;
    foreign
}

/// Deletes the files of `dropped` that this checkpointer wrote; reports the others.
fn prune(dir: &Path, dropped: &[ManifestEntry]) -> Result<Pruned> {
    let mut pruned = Pruned::default();
    for e in dropped {
        let path = match files::verify(dir, e) {
            Ok(path) => path,
            Err(Untrusted::Missing) => continue,
            Err(Untrusted::Refused(why)) => {
                pruned.refused.push((e.file.clone(), why));
                continue;
            }
        };
        match fs::remove_file(&path) {
            Ok(()) => pruned.removed.push(path),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(Error::io(
                    format!("cannot remove the old checkpoint {}", path.display()),
                    err,
                ))
            }
        }
    }
    if !pruned.removed.is_empty() {
        sync_folder(dir)?;
    }
    Ok(pruned)
}
