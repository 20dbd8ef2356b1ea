//! The manifest of a checkpoint folder: which checkpoints are complete, their metrics, and
//! which ones the retention policy keeps. Rewritten atomically after every completed save.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::publish::sync_folder;

/// File name of the manifest in the output folder.
pub const MANIFEST_FILE_NAME: &str = "manifest.json";

/// Version written into the manifest.
const MANIFEST_VERSION: u32 = 1;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The newest `keep_last` checkpoints (by step) are kept; at least 1.
    pub keep_last: usize,
    /// The `keep_best` checkpoints with the best finite metric are kept too.
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
    /// File name inside the folder.
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

/// The manifest: every completed, retained checkpoint in the folder, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version (1).
    pub version: u32,
    /// The entries, sorted by stem then step.
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

/// Reads `dir/manifest.json`; `Ok(None)` when there is none.
///
/// # Errors
/// [`Error::Io`] when it cannot be read, [`Error::InvalidInput`] when it is not a manifest.
pub fn read_manifest(dir: &Path) -> Result<Option<Manifest>> {
    let path = dir.join(MANIFEST_FILE_NAME);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        Error::InvalidInput(format!(
            "{} is not a checkpoint manifest: {e}",
            path.display()
        ))
    })
}

/// Keeps the last N and best K entries of `stem`; returns the entries dropped.
pub(super) fn apply_retention(
    manifest: &mut Manifest,
    stem: &str,
    retention: &Retention,
) -> Vec<ManifestEntry> {
    let mut own: Vec<&ManifestEntry> = manifest.entries.iter().filter(|e| e.stem == stem).collect();
    own.sort_by_key(|e| std::cmp::Reverse(e.step));
    let mut keep: BTreeSet<u64> = own
        .iter()
        .take(retention.keep_last.max(1))
        .map(|e| e.step)
        .collect();
    let mut scored: Vec<(f64, u64)> = own
        .iter()
        .filter_map(|e| e.metric.filter(|m| m.is_finite()).map(|m| (m, e.step)))
        .collect();
    scored.sort_by(|a, b| {
        let by_metric = match retention.order {
            MetricOrder::LowerIsBetter => a.0.total_cmp(&b.0),
            MetricOrder::HigherIsBetter => b.0.total_cmp(&a.0),
        };
        by_metric.then(b.1.cmp(&a.1))
    });
    keep.extend(scored.iter().take(retention.keep_best).map(|s| s.1));
    let (kept, dropped): (Vec<_>, Vec<_>) = manifest
        .entries
        .drain(..)
        .partition(|e| e.stem != stem || keep.contains(&e.step));
    manifest.entries = kept;
    manifest
        .entries
        .sort_by(|a, b| a.stem.cmp(&b.stem).then(a.step.cmp(&b.step)));
    dropped
}

/// Writes the manifest atomically: temporary file, fsync, rename, fsync of the folder.
pub(super) fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let json = serde_json::to_vec_pretty(manifest)
        .map_err(|e| Error::InvalidInput(format!("cannot encode the manifest: {e}")))?;
    let temp = dir.join(format!(
        "{MANIFEST_FILE_NAME}.{}.partial",
        std::process::id()
    ));
    let final_path = dir.join(MANIFEST_FILE_NAME);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .ctx(|| format!("cannot create {}", temp.display()))?;
        f.write_all(&json)
            .and_then(|()| f.sync_all())
            .ctx(|| format!("cannot write {}", temp.display()))?;
        drop(f);
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
    let invalid = |reason: String| Error::InvalidCheckpoint {
        path: path.to_path_buf(),
        reason,
    };
    let mut f = File::open(path).ctx(|| format!("cannot open {}", path.display()))?;
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
}
