//! The recipe a merge records in the checkpoint's metadata (`checkpoint_save.recipe`), as A1111's
//! `sd_merge_recipe` and sd-mecha's `mecha_recipe` do: the inputs by name, size and a hash of
//! their headers, the operation, its ratios, the LoRAs and their strengths. A merge graph
//! records the graph itself under the same key (`"format": "graph"`, see
//! `merge::graph`), its inputs hashed by [`InputRecord`] in the same way.

use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{BlockRatios, MergeReport, Operation, Recipe};
use crate::cast;
use crate::error::{Error, Result};
use crate::model::{Arch, Dtype, InputTensor};
use crate::read::SafetensorsFile;

/// Bytes of data hashed at each end of a file for [`InputRecord::sample_sha256`].
const SAMPLE: u64 = 1 << 20;

/// The metadata key of the recipe.
pub const RECIPE_KEY: &str = "checkpoint_save.recipe";

/// One input of a merge, as the recipe names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputRecord {
    /// The file or folder name (no directories: recipes are shared).
    pub name: String,
    /// Bytes of its files.
    pub bytes: u64,
    /// SHA-256 of its safetensors headers (each file's length prefix and JSON, in path order).
    /// Models of one architecture and dtype often have the same header; see `sample_sha256`.
    pub header_sha256: String,
    /// SHA-256 of the headers and the first and last MiB of each file's data: what tells two
    /// fine-tunes of one model apart, read in milliseconds.
    pub sample_sha256: String,
    /// Keys the input's conversion made with ComfyUI's defaults ([`crate::Input::created`]):
    /// the other inputs are not required to have them (not written into the recipe).
    pub defaults: Vec<String>,
}

impl InputRecord {
    /// The record of an input named `name` made of `files`.
    ///
    /// # Errors
    /// The reader's errors for a file that is not a valid safetensors file; read errors.
    pub fn of_files(name: &str, files: &[&Path]) -> Result<InputRecord> {
        let mut files = files.to_vec();
        files.sort();
        files.dedup();
        let (mut header_hash, mut sample_hash) = (Sha256::new(), Sha256::new());
        let mut bytes = 0;
        for path in files {
            // Through the one reader, so every length below is one it validated.
            let st = SafetensorsFile::open(path)?;
            bytes += st.file_len();
            let header = st.raw_header()?;
            header_hash.update(&header);
            sample_hash.update(&header);
            let data = st.data_len();
            let sample = data.min(SAMPLE);
            let mut buf = vec![0u8; sample as usize];
            for at in [0, data - sample] {
                st.read_at(&mut buf, at)?;
                sample_hash.update(&buf);
            }
        }
        let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        Ok(InputRecord {
            name: name.to_string(),
            bytes,
            header_sha256: hex(&header_hash.finalize()),
            sample_sha256: hex(&sample_hash.finalize()),
            defaults: Vec::new(),
        })
    }

    /// The record of tensors held in memory.
    pub fn in_memory(name: &str) -> InputRecord {
        InputRecord {
            name: name.to_string(),
            bytes: 0,
            header_sha256: String::new(),
            sample_sha256: String::new(),
            defaults: Vec::new(),
        }
    }
}

/// The recipe as JSON.
pub(super) fn describe(
    recipe: &Recipe,
    blocks: &BlockRatios,
    arch: Option<Arch>,
    inputs: &[InputRecord],
    report: &MergeReport,
) -> String {
    let record = |r: &InputRecord| {
        json!({
            "name": r.name,
            "bytes": r.bytes,
            "header_sha256": r.header_sha256,
            "sample_sha256": r.sample_sha256,
        })
    };
    let op = recipe.operation;
    let vae = ["A", "B", "C"].get(recipe.vae_from).copied().unwrap_or("A");
    let mut v = json!({
        "tool": format!("checkpoint-save {}", env!("CARGO_PKG_VERSION")),
        "architecture": arch.map_or("generic".to_string(), |a| a.to_string()),
        "operation": op.name(),
        "convention": "ComfyUI: weighted_sum is A*ratio + B*(1-ratio); add_difference is A + (B-C)*multiplier",
        "inputs": inputs.iter().map(record).collect::<Vec<_>>(),
        "vae": vae,
        "clip": recipe.clip.map_or(Value::String("A".into()), |v| json!(v)),
    });
    // With block ratios the operation's own value is not used (each key takes a block's).
    if let Some(value) = op.value().filter(|_| blocks.is_empty()) {
        let name = if matches!(op, Operation::WeightedSum { .. }) {
            "ratio"
        } else {
            "multiplier"
        };
        v[name] = json!(value);
    }
    if !blocks.entries().is_empty() {
        v["block_ratios"] = blocks
            .entries()
            .iter()
            .map(|(p, r)| (p.clone(), json!(r)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        // ModelMergeBlocks' ratio of keys no block names: the first entry's.
        v["block_default"] = json!(blocks.default_ratio());
    }
    if !recipe.loras.is_empty() {
        v["loras"] = recipe
            .loras
            .iter()
            .zip(&report.loras)
            .map(|(b, r)| {
                json!({
                    "name": b.lora.name,
                    "strength_model": b.strength_model,
                    "strength_clip": b.strength_clip,
                    "modules": b.lora.len(),
                    "matched": r.matched,
                    "not_applied": r.not_applied.len(),
                })
            })
            .collect::<Vec<_>>()
            .into();
    }
    v.to_string()
}

/// The value of a one-element tensor (a LoRA's alpha), as f64.
pub(super) fn scalar(t: &InputTensor, name: &str) -> Result<f64> {
    let info = t.info();
    if info.numel() != 1 || !crate::model::dtype::can_decode(info.dtype) {
        return Err(Error::InvalidInput(format!(
            "{name}: alpha is {} {:?}, not one floating-point number",
            info.dtype, info.shape
        )));
    }
    let bytes = crate::offload::host_bytes(t)?;
    let mut out = [0u8; 8];
    cast::convert(name, &bytes, t.host_dtype(), &mut out, Dtype::F64)?;
    Ok(f64::from_le_bytes(out))
}
