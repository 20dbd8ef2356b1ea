//! The GGUF header a GGUF target starts with, as a pure function of its metadata and tensors.
//!
//! Writing a GGUF file is the same plan → fill → publish as a safetensors file with another
//! header: this module gives the header bytes and where each tensor's blocks go, and the writer
//! fills the data section range by range as it does for safetensors. The layout is gguf-py's
//! `GGUFWriter`'s (what ComfyUI-GGUF's tools write), byte for byte: version 3, the tensor and
//! metadata counts, the metadata in the order given, one info per tensor (name, dimension count,
//! dimensions in ggml's order, type, offset), zero padding to the alignment; in the data section
//! each tensor starts at a multiple of the alignment and is followed by zero padding to the next
//! multiple, the last one included.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::quant::GgmlType;
use crate::read::gguf::{MetaValue, DEFAULT_ALIGNMENT, MAX_DIMS, MAX_GGUF_HEADER};

/// A tensor of a GGUF file to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// Its name.
    pub name: String,
    /// Its shape as stored (row-major: the last dimension is the row its blocks run along;
    /// ggml's dimensions are this reversed). A tensor reshaped to rows of whole blocks is given
    /// here reshaped, its real shape going into `comfy.gguf.orig_shape.<name>` metadata.
    pub shape: Vec<usize>,
    /// Its type.
    pub ggml_type: GgmlType,
}

/// A planned GGUF header: its bytes and the data section's layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufHeader {
    /// The header, padded: the data section starts right after it.
    pub bytes: Vec<u8>,
    /// The data section's alignment.
    pub alignment: u64,
    /// `[begin, end)` of each tensor's blocks in the data section, in the order given.
    pub offsets: Vec<(u64, u64)>,
    /// Length of the data section, the padding after the last tensor included.
    pub data_len: u64,
}

fn invalid(reason: String) -> Error {
    Error::InvalidInput(format!("cannot plan the GGUF header: {reason}"))
}

/// Plans a version-3 GGUF header for `metadata` (in this order; the alignment is
/// `general.alignment` if it is there, else 32) and `tensors` (in this order, each placed after
/// the previous one).
///
/// # Errors
/// [`Error::InvalidInput`] when a metadata key or tensor name appears twice, `general.alignment`
/// is not a UINT32 power of two, a tensor has more than [`MAX_DIMS`] dimensions, rows that are
/// not whole blocks of its type or a size that overflows, or the header would exceed
/// [`MAX_GGUF_HEADER`] (what readers of this crate accept).
pub fn gguf_header(
    metadata: &[(String, MetaValue)],
    tensors: &[GgufTensorInfo],
) -> Result<GgufHeader> {
    let mut keys = HashSet::with_capacity(metadata.len());
    for (key, _) in metadata {
        if !keys.insert(key.as_str()) {
            return Err(invalid(format!("the metadata key `{key}` is given twice")));
        }
    }
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, MetaValue::U32(a))) if a.is_power_of_two() => u64::from(*a),
        Some((_, v)) => {
            return Err(invalid(format!(
                "`general.alignment` must be a UINT32 power of two, not the {} {v}",
                v.kind()
            )))
        }
    };
    let mut out = Vec::with_capacity(64 + metadata.len() * 64 + tensors.len() * 96);
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        crate::read::gguf::encode_str(key, &mut out);
        out.extend_from_slice(&(value.kind() as u32).to_le_bytes());
        value.encode(&mut out);
    }
    let mut names = HashSet::with_capacity(tensors.len());
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut at = 0u64;
    for t in tensors {
        if !names.insert(t.name.as_str()) {
            return Err(invalid(format!("the tensor `{}` is given twice", t.name)));
        }
        let bytes = tensor_bytes(t)?;
        crate::read::gguf::encode_str(&t.name, &mut out);
        out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for &d in t.shape.iter().rev() {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
        out.extend_from_slice(&t.ggml_type.id().to_le_bytes());
        out.extend_from_slice(&at.to_le_bytes());
        offsets.push((at, at + bytes));
        at = (at + bytes)
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| invalid(format!("the data section overflows at `{}`", t.name)))?;
    }
    let len = (out.len() as u64).next_multiple_of(alignment);
    if len > MAX_GGUF_HEADER {
        return Err(invalid(format!(
            "it would take {len} bytes, more than the {MAX_GGUF_HEADER} that readers of this \
             tool accept; shorten the metadata"
        )));
    }
    out.resize(len as usize, 0);
    Ok(GgufHeader {
        bytes: out,
        alignment,
        offsets,
        data_len: at,
    })
}

/// Bytes of a tensor's blocks, checked as a reader checks them.
fn tensor_bytes(t: &GgufTensorInfo) -> Result<u64> {
    let name = &t.name;
    if t.shape.len() > MAX_DIMS {
        return Err(invalid(format!(
            "`{name}` has {} dimensions; GGUF readers take at most {MAX_DIMS}",
            t.shape.len()
        )));
    }
    let block = t.ggml_type.block_len();
    let row = t.shape.last().copied().unwrap_or(1);
    if !row.is_multiple_of(block) {
        return Err(invalid(format!(
            "`{name}` of shape {:?} has rows of {row} values, not whole {}-value blocks of {}; \
             reshape it to rows of a multiple of {block} or store it as F16",
            t.shape, block, t.ggml_type
        )));
    }
    t.shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
        .and_then(|numel| t.ggml_type.byte_len(numel))
        .ok_or_else(|| invalid(format!("the size of `{name}` ({:?}) overflows", t.shape)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::gguf::{parse_bytes, MetaArray};

    fn info(name: &str, shape: &[usize], t: GgmlType) -> GgufTensorInfo {
        GgufTensorInfo {
            name: name.into(),
            shape: shape.to_vec(),
            ggml_type: t,
        }
    }

    #[test]
    fn the_header_reads_back_with_its_offsets() {
        let meta = vec![
            (
                "general.architecture".to_string(),
                MetaValue::String("flux".into()),
            ),
            ("general.alignment".to_string(), MetaValue::U32(64)),
            (
                "comfy.gguf.orig_shape.c".to_string(),
                MetaValue::Array(MetaArray::I32(vec![2, 4, 4, 8])),
            ),
        ];
        let tensors = vec![
            info("a", &[3, 512], GgmlType::Q4_K),
            info("b", &[5], GgmlType::F32),
            info("c", &[1, 256], GgmlType::Q8_0),
        ];
        let h = gguf_header(&meta, &tensors).unwrap();
        assert_eq!(h.alignment, 64);
        assert_eq!(h.bytes.len() % 64, 0);
        assert_eq!(h.offsets, vec![(0, 864), (896, 916), (960, 1232)]);
        assert_eq!(h.data_len, 1280);
        let mut file = h.bytes.clone();
        file.resize(file.len() + h.data_len as usize, 0);
        let p = parse_bytes(&file).unwrap();
        assert_eq!((p.version, p.alignment), (3, 64));
        assert_eq!(p.data_start, h.bytes.len() as u64);
        assert_eq!(p.metadata, meta);
        let start = h.bytes.len() as u64;
        for ((t, want), off) in p.tensors.iter().zip(&tensors).zip(&h.offsets) {
            assert_eq!(t.name, want.name);
            assert_eq!(t.stored_shape, want.shape);
            assert_eq!(t.ggml_type(), Some(want.ggml_type));
            assert_eq!(t.offsets, (start + off.0, start + off.1));
        }
        assert_eq!(p.tensors[2].shape, vec![2, 4, 4, 8]);
    }

    #[test]
    fn bad_plans_are_refused_with_the_reason() {
        let err = |meta: &[(String, MetaValue)], t: &[GgufTensorInfo]| {
            gguf_header(meta, t).unwrap_err().to_string()
        };
        let e = err(&[], &[info("x", &[4, 100], GgmlType::Q4_0)]);
        assert!(e.contains("`x`") && e.contains("32-value blocks"), "{e}");
        let e = err(
            &[],
            &[
                info("x", &[32], GgmlType::F16),
                info("x", &[32], GgmlType::F16),
            ],
        );
        assert!(e.contains("given twice"), "{e}");
        let m = |v| vec![("general.alignment".to_string(), v)];
        let e = err(&m(MetaValue::U32(48)), &[]);
        assert!(e.contains("power of two"), "{e}");
        let e = err(&m(MetaValue::U64(64)), &[]);
        assert!(e.contains("UINT64"), "{e}");
        let e = err(&[], &[info("x", &[1; 9], GgmlType::F32)]);
        assert!(e.contains("9 dimensions"), "{e}");
        let e = err(&[], &[info("x", &[usize::MAX, 4], GgmlType::F32)]);
        assert!(e.contains("overflows"), "{e}");
        let two = vec![
            ("k".to_string(), MetaValue::Bool(true)),
            ("k".to_string(), MetaValue::Bool(false)),
        ];
        assert!(err(&two, &[]).contains("`k` is given twice"));
    }
}
