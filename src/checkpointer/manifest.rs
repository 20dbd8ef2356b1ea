//! The manifest of a checkpoint folder: which checkpoints are complete, in the order they were
//! saved, their metrics, and which ones the retention policy keeps. Rewritten atomically after
//! every completed save.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::publish::{sync_folder, temp};

/// File name of the manifest in the output folder.
pub const MANIFEST_FILE_NAME: &str = "manifest.json";

/// Version written into the manifest: 2 lists the entries in save order; 1 sorted them by stem
/// then step, and is read in the order of the entries' unix times.
const MANIFEST_VERSION: u32 = 2;

/// Which metric values are better, for [`Retention::keep_best`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetricOrder {
    /// Lower is better (a loss; the default).
    #[default]
    LowerIsBetter,
    /// Higher is better (an accuracy).
    HigherIsBetter,
}

/// Which checkpoints of this stem are kept.
///
/// Retention is by save order, not by step number: after a rollback (training resumed from an
/// earlier checkpoint) the new saves are the newest whatever their steps, and the abandoned
/// branch's files age out like any older save.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The `keep_last` most recently saved checkpoints are kept; at least 1.
    pub keep_last: usize,
    /// The `keep_best` checkpoints with the best finite metric are kept too (ties: the later
    /// save).
    pub keep_best: usize,
    /// What "best" means.
    pub order: MetricOrder,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            keep_last: 3,
            keep_best: 0,
            order: MetricOrder::LowerIsBetter,
        }
    }
}

/// One checkpoint as listed in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// The checkpointer's file-name stem.
    pub stem: String,
    /// Training step.
    pub step: u64,
    /// The metric given with the save (`None` when not given or not finite).
    pub metric: Option<f64>,
    /// Seconds since the Unix epoch when the save completed.
    pub unix_time: u64,
    /// File name inside the folder: `<stem>-step<step:08>.safetensors`, or with `-v<n>` before
    /// the extension when that name was taken.
    pub file: String,
    /// File size in bytes.
    pub bytes: u64,
    /// `fnv1a64:<16 hex digits>` of the file's first `8 + header length` bytes.
    pub header_checksum: String,
    /// Prefix of the main tensors' keys in the file (`""` for the plain layout); `None` when a
    /// ComfyUI layout renamed them.
    pub model_prefix: Option<String>,
    /// Prefixes under which extra tensors were saved (after `model_prefix`).
    pub extra_prefixes: Vec<String>,
}

/// The manifest: every completed, retained checkpoint in the folder, in save order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version (2; [`read_manifest`] also reads 1).
    pub version: u32,
    /// The entries in the order they were saved, oldest first (all stems together).
    pub entries: Vec<ManifestEntry>,
}

impl Default for Manifest {
    fn default() -> Self {
        Self {
            version: MANIFEST_VERSION,
            entries: Vec::new(),
        }
    }
}

/// Reads `dir/manifest.json`, its entries in save order; `Ok(None)` when there is none.
///
/// # Errors
/// [`Error::Io`] when it cannot be read, [`Error::InvalidInput`] when it is not a manifest or has
/// a version this library does not know.
pub fn read_manifest(dir: &Path) -> Result<Option<Manifest>> {
    let path = dir.join(MANIFEST_FILE_NAME);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
    };
    let mut manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
        Error::InvalidInput(format!(
            "{} is not a checkpoint manifest: {e}; move it aside (the run's checkpoints stay \
             where they are) to start a new manifest",
            path.display()
        ))
    })?;
    match manifest.version {
        // Sorted by stem then step: the unix times give the save order (stable for equal times).
        1 => manifest.entries.sort_by_key(|e| e.unix_time),
        MANIFEST_VERSION => {}
        v => {
            return Err(Error::InvalidInput(format!(
                "{} has manifest version {v}, which this version of checkpoint-save does not \
                 know (it reads 1 and 2); use the version that wrote it",
                path.display()
            )))
        }
    }
    manifest.version = MANIFEST_VERSION;
    Ok(Some(manifest))
}

/// Keeps the `keep_last` most recently saved and the `keep_best` best entries of `stem` (the
/// entries are in save order); returns the entries dropped, in save order.
pub(super) fn apply_retention(
    manifest: &mut Manifest,
    stem: &str,
    retention: &Retention,
) -> Vec<ManifestEntry> {
    // Positions in save order of this stem's entries.
    let own: Vec<usize> = (0..manifest.entries.len())
        .filter(|&i| manifest.entries[i].stem == stem)
        .collect();
    let mut keep: BTreeSet<usize> = own
        .iter()
        .rev()
        .take(retention.keep_last.max(1))
        .copied()
        .collect();
    let mut scored: Vec<(f64, usize)> = own
        .iter()
        .filter_map(|&i| {
            let m = manifest.entries[i].metric.filter(|m| m.is_finite())?;
            Some((m, i))
        })
        .collect();
    scored.sort_by(|a, b| {
        let by_metric = match retention.order {
            MetricOrder::LowerIsBetter => a.0.total_cmp(&b.0),
            MetricOrder::HigherIsBetter => b.0.total_cmp(&a.0),
        };
        by_metric.then(b.1.cmp(&a.1))
    });
    keep.extend(scored.iter().take(retention.keep_best).map(|s| s.1));
    let mut dropped = Vec::new();
    let mut kept = Vec::with_capacity(manifest.entries.len());
    for (i, e) in manifest.entries.drain(..).enumerate() {
        if e.stem != stem || keep.contains(&i) {
            kept.push(e);
        } else {
            dropped.push(e);
        }
    }
    manifest.entries = kept;
    dropped
}

/// Writes the manifest atomically: temporary file, fsync, rename, fsync of the folder.
pub(super) fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let json = serde_json::to_vec_pretty(manifest)
        .map_err(|e| Error::InvalidInput(format!("cannot encode the manifest: {e}")))?;
    let final_path = dir.join(MANIFEST_FILE_NAME);
    // A locked temporary file of this process: a crash leaves garbage the next cleanup removes.
    let (mut f, temp) = temp::create_temp(dir, MANIFEST_FILE_NAME.as_ref()).ctx(|| {
        format!(
            "cannot create the temporary file for {}",
            final_path.display()
        )
    })?;
    // Renamed while still open, so its lock is held until the name is gone.
    let result = (|| {
        f.write_all(&json)
            .and_then(|()| f.sync_all())
            .ctx(|| format!("cannot write {}", temp.display()))?;
        fs::rename(&temp, &final_path).ctx(|| {
            format!(
                "cannot rename {} to {}",
                temp.display(),
                final_path.display()
            )
        })
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result?;
    sync_folder(dir)
}

/// FNV-1a, 64-bit.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `fnv1a64:<hex>` of the file's length prefix and JSON header.
pub(super) fn header_checksum(path: &Path) -> Result<String> {
    let f = File::open(path).ctx(|| format!("cannot open {}", path.display()))?;
    header_checksum_of(&f, path)
}

/// [`header_checksum`] of the open file `f` (at offset 0), which is `path`.
pub(super) fn header_checksum_of(mut f: &File, path: &Path) -> Result<String> {
    let invalid = |reason: String| Error::InvalidCheckpoint {
        path: path.to_path_buf(),
        reason,
    };
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| invalid(format!("cannot read the header length: {e}")))?;
    let n = u64::from_le_bytes(len);
    if n > crate::read::MAX_HEADER_LEN {
        return Err(invalid(format!("header length {n} exceeds the limit")));
    }
    let mut buf = len.to_vec();
    buf.resize(8 + n as usize, 0);
    f.read_exact(&mut buf[8..])
        .map_err(|e| invalid(format!("cannot read the {n}-byte header: {e}")))?;
    Ok(format!("fnv1a64:{:016x}", fnv1a64(&buf)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(step: u64, metric: Option<f64>) -> ManifestEntry {
        ManifestEntry {
            stem: "m".into(),
            step,
            metric,
            unix_time: 0,
            file: format!("m-step{step:08}.safetensors"),
            bytes: 0,
            header_checksum: String::new(),
            model_prefix: Some(String::new()),
            extra_prefixes: vec![],
        }
    }

    #[test]
    fn fnv1a_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn retention_keeps_last_and_best() {
        let mut m = Manifest::default();
        let metrics = [5.0, 1.0, 4.0, 2.0, 3.0, 6.0];
        for (i, v) in metrics.iter().enumerate() {
            m.entries.push(entry(i as u64 * 10, Some(*v)));
        }
        let mut other = entry(5, None);
        other.stem = "x".into();
        m.entries.push(other);
        let r = Retention {
            keep_last: 2,
            keep_best: 2,
            order: MetricOrder::LowerIsBetter,
        };
        let dropped = apply_retention(&mut m, "m", &r);
        let kept: Vec<_> = m
            .entries
            .iter()
            .map(|e| (e.stem.as_str(), e.step))
            .collect();
        assert_eq!(
            kept,
            vec![("m", 10), ("m", 30), ("m", 40), ("m", 50), ("x", 5)]
        );
        let mut d: Vec<u64> = dropped.iter().map(|e| e.step).collect();
        d.sort();
        assert_eq!(d, vec![0, 20]);
        let r = Retention {
            keep_last: 1,
            keep_best: 1,
            order: MetricOrder::HigherIsBetter,
        };
        apply_retention(&mut m, "m", &r);
        let kept: Vec<_> = m.entries.iter().map(|e| e.step).collect();
        assert_eq!(kept, vec![50, 5]);
    }

    #[test]
    fn retention_is_by_save_order_not_by_step() {
        // Saved 10, 20, 30, then training rolled back to 10 and saved 15 and 20 again.
        let mut m = Manifest::default();
        for (step, metric) in [(10, 0.5), (20, 0.9), (30, 0.8), (15, 0.7)] {
            m.entries.push(entry(step, Some(metric)));
        }
        let mut again = entry(20, Some(0.6));
        again.file = "m-step00000020-v1.safetensors".into();
        m.entries.push(again);
        let r = Retention {
            keep_last: 2,
            keep_best: 1,
            order: MetricOrder::LowerIsBetter,
        };
        let dropped = apply_retention(&mut m, "m", &r);
        let files = |v: &[ManifestEntry]| v.iter().map(|e| e.file.clone()).collect::<Vec<_>>();
        assert_eq!(
            files(&m.entries),
            vec![
                "m-step00000010.safetensors",
                "m-step00000015.safetensors",
                "m-step00000020-v1.safetensors"
            ]
        );
        assert_eq!(
            files(&dropped),
            vec!["m-step00000020.safetensors", "m-step00000030.safetensors"]
        );
    }

    #[test]
    fn version_1_manifests_are_read_in_save_order_and_unknown_versions_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = entry(10, None);
        a.unix_time = 300;
        let mut b = entry(20, None);
        b.unix_time = 100;
        let mut x = entry(5, None);
        x.stem = "x".into();
        x.unix_time = 200;
        let v1 = Manifest {
            version: 1,
            entries: vec![b.clone(), a.clone(), x.clone()],
        };
        fs::write(
            dir.path().join(MANIFEST_FILE_NAME),
            serde_json::to_vec(&v1).unwrap(),
        )
        .unwrap();
        let read = read_manifest(dir.path()).unwrap().unwrap();
        assert_eq!(read.version, 2);
        assert_eq!(read.entries, vec![b, x, a]);

        let v3 = Manifest {
            version: 3,
            entries: vec![],
        };
        write_manifest(dir.path(), &v3).unwrap();
        let err = read_manifest(dir.path()).unwrap_err();
        assert!(err.to_string().contains("manifest version 3"), "{err}");
        // The write left nothing but the manifest.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(MANIFEST_FILE_NAME)]);
    }
}
