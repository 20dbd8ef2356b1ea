//! The safetensors header: compact JSON, `__metadata__` first, then each tensor in file order,
//! padded with spaces so the data section starts where the writer needs it.

use std::collections::BTreeMap;

use serde::Serialize;

use super::PlannedTensor;
use crate::error::{Error, Result};
use crate::model::dtype::Dtype;
use crate::read::MAX_HEADER_LEN;

#[derive(Serialize)]
struct HeaderEntry<'a> {
    dtype: Dtype,
    shape: &'a [usize],
    data_offsets: (u64, u64),
}

/// Serialises the header exactly as safetensors does (compact JSON, `__metadata__` first),
/// padded with spaces so the data section starts at a multiple of `align` (a multiple of 8).
///
/// # Errors
/// [`Error::HeaderTooLarge`] past [`MAX_HEADER_LEN`]; [`Error::InvalidInput`] when a value cannot
/// be encoded.
pub(crate) fn header_bytes(
    metadata: &BTreeMap<String, String>,
    tensors: &[PlannedTensor],
    align: u64,
) -> Result<Vec<u8>> {
    let encode =
        |e: serde_json::Error| Error::InvalidInput(format!("cannot encode the header: {e}"));
    let mut json = Vec::with_capacity(64 + tensors.len() * 160);
    json.push(b'{');
    json.extend_from_slice(b"\"__metadata__\":");
    serde_json::to_writer(&mut json, metadata).map_err(encode)?;
    for t in tensors {
        json.push(b',');
        serde_json::to_writer(&mut json, &t.name).map_err(encode)?;
        json.push(b':');
        let entry = HeaderEntry {
            dtype: t.dtype,
            shape: &t.shape,
            data_offsets: t.offsets,
        };
        serde_json::to_writer(&mut json, &entry).map_err(encode)?;
    }
    json.push(b'}');
    let padded = (8 + json.len() as u64).next_multiple_of(align) - 8;
    if padded > MAX_HEADER_LEN {
        return Err(Error::HeaderTooLarge {
            size: padded,
            limit: MAX_HEADER_LEN,
        });
    }
    let mut header = Vec::with_capacity(8 + padded as usize);
    header.extend_from_slice(&padded.to_le_bytes());
    header.extend_from_slice(&json);
    header.resize(8 + padded as usize, b' ');
    Ok(header)
}
