//! Non-finite values of ggml blocks copied as they are (a GGUF tensor kept in its type): counted
//! from the blocks' f16 scales, without decoding them.
//!
//! Every value of a block is its scale `d` (and, for the types with one, its min `m`/`dmin`)
//! times or plus finite integers and 6-bit scales, so a block's values are all finite when its
//! f16 fields are, and all NaN or infinite when one is not (`Inf · 0` is NaN); the test checks
//! this against the decoder for every type.

use super::{f16_at, GgmlType};

/// Byte offsets of a block's f16 fields (ggml's `block_q*` structs).
fn scale_fields(t: GgmlType) -> &'static [usize] {
    match t {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => &[],
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
    }
}

/// The NaN/±Inf values of the blocks of `t` whose scale fields lie in `bytes`, where `bytes[0]`
/// is `phase` bytes into a block (the offset from the tensor's first byte, modulo the block
/// size). A block is counted by the part of a tensor that holds its fields: they lie within 4
/// aligned bytes, and the writer cuts a tensor at multiples of 4 from its start (GGUF data is
/// 32-aligned, units are multiples of 4096), so each block is counted once.
pub(crate) fn count_non_finite(t: GgmlType, bytes: &[u8], phase: usize) -> u64 {
    if let Some(d) = t.plain_dtype() {
        return crate::cast::count_non_finite(bytes, d);
    }
    let fields = scale_fields(t);
    let (first, end) = (fields[0] as isize, fields[fields.len() - 1] as isize + 2);
    let (size, len) = (t.block_bytes() as isize, bytes.len() as isize);
    let mut count = 0;
    let mut block = -((phase % t.block_bytes()) as isize);
    while block + first < len {
        if block + first >= 0 && block + end <= len {
            let bad = fields
                .iter()
                .any(|&f| !f16_at(bytes, (block + f as isize) as usize).is_finite());
            if bad {
                count += t.block_len() as u64;
            }
        }
        block += size;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of `t` from values, with some scale fields set to NaN or ±Inf.
    fn blocks(t: GgmlType, n: usize) -> Vec<u8> {
        let values: Vec<f32> = (0..n * t.block_len())
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3)
            .collect();
        let mut codes = vec![0u8; n * t.block_bytes()];
        super::super::encode(t, &values, &mut codes);
        let bad = [half::f16::NAN, half::f16::INFINITY, half::f16::NEG_INFINITY];
        for (k, f) in scale_fields(t).iter().enumerate() {
            for b in (k..n).step_by(5) {
                let at = b * t.block_bytes() + f;
                codes[at..at + 2].copy_from_slice(&bad[b % 3].to_le_bytes());
            }
        }
        codes
    }

    #[test]
    fn counts_what_the_decoder_makes_of_the_blocks_wherever_a_tensor_is_cut() {
        for t in GgmlType::ALL
            .into_iter()
            .filter(|t| t.plain_dtype().is_none())
        {
            let n = 23;
            let codes = blocks(t, n);
            let mut values = vec![0f32; n * t.block_len()];
            super::super::decode(t, &codes, &mut values);
            let want = values.iter().filter(|v| !v.is_finite()).count() as u64;
            assert!(want > 0, "{t}");
            assert_eq!(count_non_finite(t, &codes, 0), want, "{t}");
            // Cut at every multiple of 4 (the writer's cuts): the parts' counts add up.
            for cut in (4..codes.len()).step_by(4 * 7) {
                let (a, b) = codes.split_at(cut);
                let got = count_non_finite(t, a, 0) + count_non_finite(t, b, cut);
                assert_eq!(got, want, "{t} cut at {cut}");
            }
        }
    }
}
