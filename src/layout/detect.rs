//! Architecture detection from the denoiser's keys and shapes (checkpoint-format.md §10.1).
//!
//! The rules are the family table's ([`crate::family`]): each family's tells, preferring ones
//! that survive shrinking every dimension (key presence, block counts, tensor ranks) over exact
//! widths, so shrunk test models are detected like full-size ones.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::model::{Arch, TensorInfo};

/// Detects the architecture from the denoiser's in-memory keys (no prefix).
///
/// # Errors
/// [`crate::Error::UnknownArchitecture`] with what was found when no known family matches
/// (including families the reference knows but this crate does not lay out: SVD, Mochi…) or the
/// configuration fits none of the family's known variants; [`crate::Error::FamilyMismatch`] when
/// the keys of two families are present. See [`crate::family::detect()`] for the evidence.
pub fn detect_model(model: &BTreeMap<String, TensorInfo>) -> Result<Arch> {
    crate::family::detect(model).map(|d| d.arch)
}
