//! Single-file checkpoints, as ComfyUI, A1111/Forge and kohya write them: the save layout read
//! backwards ([`crate::layout::invert`]), every tensor left where it lies in the file.

use std::collections::BTreeMap;

use super::files::TensorSet;
use super::{Input, InputLayout};
use crate::error::{Error, Result};
use crate::layout::invert::{invert_file, states_prediction, Move};
use crate::model::{Arch, ComponentKind, Components, Dtype, InputMap, InputTensor};

/// The in-memory key of CLIP's position buffer, which ComfyUI does not hold (SDXL's is created
/// by the save; older SD1/SD2 files carry one, often as floats).
const POSITION_IDS: &str = ".transformer.text_model.embeddings.position_ids";

/// Reads the F32 value of a sigma marker (`edm_vpred.*`) of `set`: 0 where it is not one F32.
pub(super) fn sigma_reader(set: &TensorSet) -> impl FnMut(&str) -> Result<f32> + '_ {
    |key: &str| -> Result<f32> {
        let Some(InputTensor::File(t)) = set.tensors.get(key) else {
            return Ok(0.0);
        };
        if t.dtype() != Dtype::F32 || t.entry().byte_len() < 4 {
            return Ok(0.0);
        }
        let mut b = [0u8; 4];
        t.file().read_at(&mut b, t.entry().offsets.0)?;
        Ok(f32::from_le_bytes(b))
    }
}

/// Reads a single-file checkpoint's layout: `arch` when given, else detected.
///
/// # Errors
/// As [`invert_file`]: an unknown architecture, keys that do not form the layout, a malformed
/// marker; and read errors of the sigma markers.
pub(super) fn open(set: TensorSet, arch: Option<Arch>) -> Result<Input> {
    let infos = set.infos();
    let (arch, inv) = invert_file(&set.path, &infos, &set.metadata, arch, sigma_reader(&set))?;
    let prediction_stated = states_prediction(&infos, &set.metadata);
    let mut maps: BTreeMap<ComponentKind, InputMap> = BTreeMap::new();
    let mut left_out = inv.leftover.clone();
    left_out.extend(set.left_out.iter().cloned());
    for (file_key, kind, mv) in inv.moves {
        let t = set.get(&file_key).ok_or_else(|| Error::InvalidCheckpoint {
            path: set.path.clone(),
            reason: format!("`{file_key}` disappeared from the header"),
        })?;
        let map = maps.entry(kind).or_default();
        match mv {
            // ComfyUI holds no CLIP position buffer; its save writes SDXL's itself.
            Move::Copy(k) if arch.is_some() && k.ends_with(POSITION_IDS) => {
                left_out.push(file_key);
            }
            Move::Copy(k) => {
                map.insert(k, t);
            }
            Move::Transpose(k) => {
                map.insert(k, t.transposed());
            }
            Move::Split(keys) => {
                let mut shape = t.info().shape;
                shape[0] /= 3;
                let n: usize = shape.iter().product();
                for (i, k) in keys.into_iter().enumerate() {
                    let part = InputTensor::joined(
                        &k,
                        vec![(t.clone(), i * n..(i + 1) * n)],
                        shape.clone(),
                    )?;
                    map.insert(k, part);
                }
            }
        }
    }
    let mut components = Components::default();
    for (kind, map) in maps {
        components.set_inputs(kind, map);
    }
    left_out.sort();
    Ok(Input {
        components,
        arch,
        prediction: Some(inv.prediction),
        prediction_stated,
        layout: InputLayout::SingleFile,
        metadata: set.metadata,
        left_out,
        created: Vec::new(),
        bytes: set.bytes,
    })
}
