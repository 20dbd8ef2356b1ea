//! Resuming a training run: the newest complete checkpoint of a folder, read back through the
//! crate's one reader (every dtype the format has; `F8_E5M2` widens to F16 exactly) and loaded
//! into a `VarMap` only when every name and shape fits.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::Device;

use super::files;
use super::manifest::{read_manifest, ManifestEntry, MANIFEST_FILE_NAME};
use crate::error::{Error, Result};
use crate::load::candle_tensor;
use crate::model::TensorMap;
use crate::read::SafetensorsFile;

/// The checkpoint [`load_latest`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Resumed {
    /// The step it holds.
    pub step: u64,
    /// Its metric.
    pub metric: Option<f64>,
    /// The file.
    pub path: PathBuf,
    /// Its manifest entry.
    pub entry: ManifestEntry,
    /// Later entries passed over, with the reason (missing file, wrong size or checksum, a name
    /// that is not the checkpointer's or a file outside its folder, a symlink).
    pub rejected: Vec<(String, String)>,
}

/// Finds the most recently saved complete checkpoint in `dir` (of `stem`, or of any stem) and
/// falls back to earlier saves. An entry counts only for a file the checkpointer wrote: named
/// `<stem>-step<step:08>[-v<n>].safetensors` for its stem and step, directly in `dir`, a regular
/// file (never followed through a symlink) of the listed size and header checksum. The last
/// save is what training last reached, also after a rollback to an earlier step.
/// `Ok(None)` when there is no manifest or it lists no checkpoint (of that stem).
///
/// # Errors
/// [`Error::Io`] / [`Error::InvalidInput`] when the manifest cannot be read;
/// [`Error::InvalidCheckpoint`] when entries exist but none verifies (listing why), so a broken
/// folder is never mistaken for a fresh start.
pub fn load_latest(dir: &Path, stem: Option<&str>) -> Result<Option<Resumed>> {
    let Some(manifest) = read_manifest(dir)? else {
        return Ok(None);
    };
    // Newest save first.
    let entries: Vec<&ManifestEntry> = manifest
        .entries
        .iter()
        .rev()
        .filter(|e| stem.is_none_or(|s| e.stem == s))
        .collect();
    if entries.is_empty() {
        return Ok(None);
    }
    let mut rejected = Vec::new();
    for e in entries {
        match files::verify(dir, e) {
            Ok(path) => {
                return Ok(Some(Resumed {
                    step: e.step,
                    metric: e.metric,
                    path,
                    entry: e.clone(),
                    rejected,
                }))
            }
            Err(why) => rejected.push((e.file.clone(), why.reason())),
        }
    }
    Err(Error::InvalidCheckpoint {
        path: dir.join(MANIFEST_FILE_NAME),
        reason: format!(
            "no listed checkpoint is complete: {}",
            rejected
                .iter()
                .map(|(f, r)| format!("{f}: {r}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    })
}

impl Resumed {
    /// Every tensor of the file under its key in the file, on `device`.
    ///
    /// # Errors
    /// [`Error::InvalidCheckpoint`] when the file cannot be parsed; I/O and candle errors.
    pub fn all_tensors(&self, device: &Device) -> Result<TensorMap> {
        read_tensors(&self.path, device, |k| Some(k.to_string()))
    }

    /// The main tensors (extras excluded), under the names they were saved with.
    ///
    /// # Errors
    /// As [`Resumed::all_tensors`], plus [`Error::InvalidInput`] for a checkpoint written with a
    /// ComfyUI layout (its names were converted).
    pub fn tensors(&self, device: &Device) -> Result<TensorMap> {
        let prefix = self.model_prefix()?;
        let extras: Vec<String> = self
            .entry
            .extra_prefixes
            .iter()
            .map(|p| format!("{prefix}{p}"))
            .collect();
        read_tensors(&self.path, device, |k| {
            if extras.iter().any(|p| k.starts_with(p.as_str())) {
                return None;
            }
            k.strip_prefix(prefix).map(str::to_string)
        })
    }

    /// The extra tensors saved under `prefix`, with the prefix removed.
    ///
    /// # Errors
    /// As [`Resumed::tensors`], plus [`Error::InvalidInput`] when no extra set was saved under
    /// `prefix`.
    pub fn extra(&self, prefix: &str, device: &Device) -> Result<TensorMap> {
        let model = self.model_prefix()?;
        if !self.entry.extra_prefixes.iter().any(|p| p == prefix) {
            return Err(Error::InvalidInput(format!(
                "{} holds no extra tensors under `{prefix}` (it has: {:?})",
                self.path.display(),
                self.entry.extra_prefixes
            )));
        }
        let full = format!("{model}{prefix}");
        read_tensors(&self.path, device, |k| {
            k.strip_prefix(full.as_str()).map(str::to_string)
        })
    }

    /// Loads the main tensors into `varmap`'s variables (read on `device`, then converted to each
    /// variable's dtype and device). Everything is checked first: on any mismatch nothing is set.
    ///
    /// # Errors
    /// [`Error::StateMismatch`] listing missing, unexpected and mis-shaped names; errors of
    /// [`Resumed::tensors`]; candle errors of the conversion.
    pub fn load_into(&self, varmap: &candle_nn::VarMap, device: &Device) -> Result<()> {
        let tensors = self.tensors(device)?;
        load_into(varmap, &tensors)
    }

    fn model_prefix(&self) -> Result<&str> {
        self.entry.model_prefix.as_deref().ok_or_else(|| {
            Error::InvalidInput(format!(
                "{} was written with a ComfyUI layout, which renames keys; resume needs a \
                 checkpoint saved with the plain (or generic) layout",
                self.path.display()
            ))
        })
    }
}

/// Sets every variable of `varmap` from the tensor of the same name, after checking that the
/// names match exactly and every shape fits; on any mismatch nothing is set.
///
/// # Errors
/// [`Error::StateMismatch`] listing missing, unexpected and mis-shaped names; candle errors of
/// the dtype/device conversion (also before anything is set).
pub fn load_into(varmap: &candle_nn::VarMap, tensors: &TensorMap) -> Result<()> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let missing: Vec<String> = data
        .keys()
        .filter(|k| !tensors.contains_key(*k))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let unexpected: Vec<String> = tensors
        .keys()
        .filter(|k| !data.contains_key(*k))
        .cloned()
        .collect();
    let mut mismatched = Vec::new();
    let mut ready = Vec::with_capacity(data.len());
    for (name, var) in data.iter() {
        let Some(t) = tensors.get(name) else { continue };
        if t.dims() != var.dims() {
            mismatched.push((name.clone(), t.dims().to_vec(), var.dims().to_vec()));
        } else {
            ready.push((var, t));
        }
    }
    mismatched.sort();
    if !(missing.is_empty() && unexpected.is_empty() && mismatched.is_empty()) {
        return Err(mismatch_error(missing, unexpected, mismatched));
    }
    let converted = ready
        .into_iter()
        .map(|(var, t)| Ok((var, t.to_dtype(var.dtype())?.to_device(var.device())?)))
        .collect::<Result<Vec<_>>>()?;
    for (var, t) in converted {
        var.set(&t)?;
    }
    Ok(())
}

fn mismatch_error(
    missing: Vec<String>,
    unexpected: Vec<String>,
    mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
) -> Error {
    const SHOWN: usize = 20;
    fn list(names: impl Iterator<Item = String>, total: usize) -> String {
        let mut s: Vec<String> = names.take(SHOWN).collect();
        if total > SHOWN {
            s.push(format!("… and {} more", total - SHOWN));
        }
        s.join(", ")
    }
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!(
            "{} missing from the checkpoint: {}",
            missing.len(),
            list(missing.iter().cloned(), missing.len())
        ));
    }
    if !unexpected.is_empty() {
        parts.push(format!(
            "{} unexpected in the checkpoint: {}",
            unexpected.len(),
            list(unexpected.iter().cloned(), unexpected.len())
        ));
    }
    if !mismatched.is_empty() {
        parts.push(format!(
            "{} with another shape: {}",
            mismatched.len(),
            list(
                mismatched
                    .iter()
                    .map(|(n, file, var)| format!("{n} (checkpoint {file:?}, variable {var:?})")),
                mismatched.len()
            )
        ));
    }
    Error::StateMismatch {
        summary: format!(
            "the checkpoint does not fit the variables; nothing was loaded: {}",
            parts.join("; ")
        ),
        missing,
        unexpected,
        mismatched,
    }
}

/// Reads the tensors whose key `rename` maps to a name.
fn read_tensors(
    path: &Path,
    device: &Device,
    rename: impl Fn(&str) -> Option<String>,
) -> Result<TensorMap> {
    let st = SafetensorsFile::open(path)?;
    let mut out = BTreeMap::new();
    for t in st.tensors() {
        if let Some(name) = rename(&t.name) {
            out.insert(name, candle_tensor(&st, t, device)?);
        }
    }
    Ok(out)
}
