//! `--dry-run`: everything a save would write — the planned header (keys, shapes, dtypes,
//! metadata), the family with the evidence it was told by, the name the file would get and the
//! bytes to read and to write — computed by the save's own layout and plan, with nothing written
//! and nothing created (not even the output folder).
//!
//! A 30 GB job can be checked before it runs, and tests compare layouts without writing bytes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::error::Result;
use crate::family;
use crate::layout::Source;
use crate::model::{ComponentKind, Components, InputTensor};
use crate::naming::SaveTarget;
use crate::plan::metadata;
use crate::save::{lay_out, plan_for_write, SaveOptions};

/// What a save would write.
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    /// The path the file would get now (another save may take the counter before a real run).
    pub path: PathBuf,
    /// The layout: a family's name, or `generic`.
    pub layout: String,
    /// What the denoiser's keys say about its family (also for the generic layout, when they say
    /// something); `None` when detection found nothing.
    pub family: Option<FamilyReport>,
    /// The prediction type written (`unknown` when nothing states one for a generic layout).
    pub prediction: String,
    /// Every tensor of the file, in file order.
    pub tensors: Vec<PlannedTensor>,
    /// The header's `__metadata__`.
    pub metadata: BTreeMap<String, String>,
    /// Length of the JSON header (padding included), without its 8-byte length prefix.
    pub header_bytes: u64,
    /// Bytes of the file.
    pub bytes_to_write: u64,
    /// Bytes read from input files to write it (0 for tensors held in memory).
    pub bytes_to_read: u64,
    /// Component keys the layout leaves out, as the reference does.
    pub dropped: Vec<String>,
}

/// The family the denoiser's keys belong to, and why.
#[derive(Debug, Clone, Serialize)]
pub struct FamilyReport {
    /// The family's name.
    pub name: String,
    /// What it is.
    pub title: String,
    /// The known configuration the keys place it in, if one fits.
    pub variant: Option<String>,
    /// That configuration's description.
    pub variant_title: Option<String>,
    /// Whether it is a test-sized synthetic model of that variant.
    pub test_size: bool,
    /// The tells that held.
    pub evidence: Vec<String>,
    /// The configuration values derived from keys and shapes.
    pub config: BTreeMap<String, usize>,
}

/// One tensor of the planned file.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedTensor {
    /// Checkpoint key.
    pub key: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Dtype in the file.
    pub dtype: String,
    /// Where its bytes come from (`model:blocks.0.ffn.0.weight`, `created:position_ids`, …).
    pub source: String,
}

/// Plans the save of `components` under `opts` and reports it, writing nothing.
///
/// # Errors
/// Every error the save would raise before writing: detection, layout, plan (casts, duplicate
/// keys, header size) and naming (a prefix outside the output folder); [`crate::Error::Io`] when
/// the output folder exists but cannot be listed.
pub fn dry_run(components: &Components, opts: &SaveOptions) -> Result<DryRun> {
    let (arch, prediction, layout) = lay_out(components, &opts.layout, opts.prediction)?;
    let target = SaveTarget::resolve(&opts.prefix, &opts.output_dir)?;
    // `next_counter` would create a missing folder; a dry run creates nothing.
    let counter = if target.folder.is_dir() {
        target.next_counter()?
    } else {
        1
    };
    // The real save refuses a name the file system cannot hold; so does the dry run.
    target.check_name_length(counter)?;
    let title = format!("{} {counter}", target.filename);
    let meta = metadata::build(arch, prediction, &title, &opts.metadata);
    let (plan, _) = plan_for_write(&layout, arch, components, &meta, opts, &target.folder)?;
    let sources: BTreeMap<&str, &Source> = layout
        .entries
        .iter()
        .map(|e| (e.key.as_str(), &e.source))
        .collect();
    let tensors = plan
        .tensors()
        .iter()
        .map(|t| PlannedTensor {
            key: t.name.clone(),
            shape: t.shape.clone(),
            dtype: t.dtype.to_string(),
            source: sources
                .get(t.name.as_str())
                .map_or_else(String::new, |s| describe(s)),
        })
        .collect();
    let bytes_to_read = layout
        .entries
        .iter()
        .map(|e| source_read_bytes(components, &e.source))
        .sum();
    Ok(DryRun {
        path: target.folder.join(target.file_name(counter)),
        layout: arch.map_or("generic".to_string(), |a| a.name().to_string()),
        family: family_report(components),
        prediction: prediction.to_string(),
        tensors,
        metadata: plan.metadata().clone(),
        header_bytes: plan.data_offset() - 8,
        bytes_to_write: plan.file_len(),
        bytes_to_read,
        dropped: layout
            .dropped
            .iter()
            .map(|(c, k)| format!("{c}:{k}"))
            .collect(),
    })
}

/// Detection over the denoiser, as evidence for people; `None` when it finds nothing.
fn family_report(components: &Components) -> Option<FamilyReport> {
    let shapes = components.shapes();
    let d = family::detect(shapes.get(ComponentKind::Model)?).ok()?;
    let f = d.arch.family();
    Some(FamilyReport {
        name: f.name.to_string(),
        title: f.title.to_string(),
        variant: d.variant.map(|v| v.name.to_string()),
        variant_title: d.variant.map(|v| v.title.to_string()),
        test_size: d.test_size,
        evidence: d.evidence,
        config: d
            .params
            .iter()
            .map(|(k, v)| ((*k).to_string(), *v))
            .collect(),
    })
}

fn describe(s: &Source) -> String {
    match s {
        Source::Copy { component, key } => format!("{component}:{key}"),
        Source::FuseQkv { component, keys } => {
            format!("{component}:{} (q, k, v fused)", keys[0])
        }
        Source::Transpose { component, key } => format!("{component}:{key} (transposed)"),
        Source::PositionIds { len } => format!("created:position_ids 0..{len}"),
        Source::EmptyMarker => "created:marker".into(),
        Source::ScalarF32(v) => format!("created:marker {v}"),
    }
}

/// Bytes read from input files to produce the bytes of `s`.
fn source_read_bytes(components: &Components, s: &Source) -> u64 {
    let tensor = |c: &ComponentKind, k: &str| components.tensor(*c, k).map_or(0, read_bytes);
    match s {
        Source::Copy { component, key } | Source::Transpose { component, key } => {
            tensor(component, key)
        }
        Source::FuseQkv { component, keys } => keys.iter().map(|k| tensor(component, k)).sum(),
        Source::PositionIds { .. } | Source::EmptyMarker | Source::ScalarF32(_) => 0,
    }
}

/// Bytes of input files a tensor is read from (tensors held in memory read none); a merged
/// expression a graph uses more than once is computed, and read, once.
fn read_bytes(t: &InputTensor) -> u64 {
    read_bytes_from(t, &mut std::collections::HashSet::new())
}

fn read_bytes_from(t: &InputTensor, seen: &mut std::collections::HashSet<usize>) -> u64 {
    match t {
        InputTensor::File(_) => t.byte_len(),
        InputTensor::Joined(j) => j
            .parts()
            .iter()
            .map(|(p, range)| {
                let info = p.info();
                let whole = read_bytes_from(p, seen);
                // A part is read for its range only.
                let n = info.numel().max(1) as u64;
                whole * range.len() as u64 / n
            })
            .sum(),
        InputTensor::Transposed(inner) => read_bytes_from(inner, seen),
        InputTensor::Merged(m) if seen.insert(std::sync::Arc::as_ptr(m) as usize) => m
            .operands()
            .into_iter()
            .map(|o| read_bytes_from(o, seen))
            .sum(),
        InputTensor::Quantized(q) => q
            .members()
            .iter()
            .map(|(_, t)| read_bytes_from(t, seen))
            .sum(),
        _ => 0,
    }
}
