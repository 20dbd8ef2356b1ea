//! What a merged expression reads more than once, so its evaluation keeps it for the range of
//! the result being computed rather than reading or computing it again per use.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::merged::Merged;
use super::InputTensor;

/// What an expression reads more than once: each is computed (or read) once per range of the
/// result and kept meanwhile, so a graph node used by several later ones costs one evaluation,
/// not one per path to it.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// File tensors, by [`source_key`].
    pub(crate) sources: Vec<usize>,
    /// Nested expressions, by [`merged_key`].
    pub(crate) merged: Vec<usize>,
}

/// The references to each file tensor and nested expression in an expression, each nested
/// expression's own operands counted once (it is computed once).
#[derive(Default)]
pub(super) struct SharedWalk {
    pub(super) sources: BTreeMap<usize, usize>,
    pub(super) merged: BTreeMap<usize, usize>,
}

impl SharedWalk {
    pub(super) fn operands_of(&mut self, m: &Merged) {
        for t in m.tensor_operands().flatten() {
            match t {
                InputTensor::Merged(inner) => {
                    let n = self.merged.entry(merged_key(inner)).or_default();
                    *n += 1;
                    if *n == 1 {
                        self.operands_of(inner);
                    }
                }
                other => {
                    if let Some(k) = source_key(other) {
                        *self.sources.entry(k).or_default() += 1;
                    }
                }
            }
        }
    }
}

/// The identity of a nested expression (one graph node's result for one key, however many
/// later nodes use it).
pub(crate) fn merged_key(m: &Arc<Merged>) -> usize {
    Arc::as_ptr(m) as usize
}

/// The identity of a tensor stored in a file (its header entry, whatever shape it is read as),
/// for tensors read by ranges; `None` for anything else.
pub(crate) fn source_key(t: &InputTensor) -> Option<usize> {
    match t {
        InputTensor::File(f) => Some(f.entry() as *const _ as usize),
        _ => None,
    }
}
