//! Writing and reading small safetensors files in the tests, independently of the crate.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// One tensor: dtype, shape, little-endian bytes.
pub type Raw = (Dtype, Vec<usize>, Vec<u8>);

/// Writes `tensors` (and `metadata`) as a safetensors file with the `safetensors` crate.
pub fn write(path: &Path, tensors: &BTreeMap<String, Raw>, metadata: &BTreeMap<String, String>) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(k, (d, s, b))| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let meta: Option<HashMap<String, String>> =
        (!metadata.is_empty()).then(|| metadata.clone().into_iter().collect());
    safetensors::serialize_to_file(views, meta, path).unwrap();
}

/// Every tensor of a file and its metadata.
pub fn read(path: &Path) -> (BTreeMap<String, Raw>, BTreeMap<String, String>) {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let metadata = meta
        .metadata()
        .clone()
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
    (tensors, metadata)
}

/// A float tensor's values as f32 (exact for F32, F16, BF16, F8_E4M3, F8_E5M2).
pub fn floats(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F8_E4M3 => bytes
            .iter()
            .map(|&b| float8::F8E4M3::from_bits(b).to_f32())
            .collect(),
        Dtype::F8_E5M2 => bytes
            .iter()
            .map(|&b| float8::F8E5M2::from_bits(b).to_f32())
            .collect(),
        other => panic!("{other} holds no float values"),
    }
}

/// f32 values as little-endian bytes.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// f32 values rounded to bf16, as little-endian bytes.
pub fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
        .collect()
}

/// Bit-equal, or both NaN.
pub fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}
