//! ggml block codes through the crate's own codecs (whose codes are ggml's reference
//! quantizers' and whose values gguf-py's: `tests/ggml.rs` pins both).

use checkpoint_save::quant::{Format, GgmlType, Precision, QuantLayout, Scales};

/// `values` of `shape` in `t`'s blocks, through the crate's encoder.
pub fn encode(t: GgmlType, shape: &[usize], values: &[f32]) -> Vec<u8> {
    let layout = QuantLayout::new("t", Format::Ggml(t), shape).unwrap();
    let span = layout.write_span(0..values.len() as u64).unwrap();
    let mut codes = vec![0u8; (span.codes.end - span.codes.start) as usize];
    layout
        .encode(
            &Scales::none(),
            Precision::F32,
            &span,
            values,
            &mut codes,
            &mut [],
        )
        .unwrap();
    codes
}

/// The values of `codes`, through the crate's decoder.
pub fn decode(t: GgmlType, shape: &[usize], codes: &[u8]) -> Vec<f32> {
    let layout = QuantLayout::new("t", Format::Ggml(t), shape).unwrap();
    let n: usize = shape.iter().product();
    let span = layout.read_span(0..n as u64).unwrap();
    let mut out = vec![0f32; n];
    layout
        .decode(&Scales::none(), Precision::F32, &span, codes, &[], &mut out)
        .unwrap();
    out
}
