//! ggml's block formats (the tensor types of GGUF files) as bit-exact codecs.
//!
//! A ggml tensor's values are cut, in row-major order, into blocks of a fixed number of values;
//! each block is stored as a fixed number of bytes that carry its own scales, so a block decodes
//! and encodes from its own bytes alone. These are [`super::Format::Ggml`] formats of the same
//! interface as ComfyUI's layouts: one member (`weight`) holding the blocks, no block-scale
//! member, no reductions (nothing is computed over the whole tensor first).
//!
//! | type | values per block | bytes per block | block layout (in file order) |
//! |------|-----:|----:|------|
//! | F32  | 1 | 4 | little-endian f32 |
//! | F16  | 1 | 2 | IEEE half |
//! | BF16 | 1 | 2 | bfloat16 |
//! | Q4_0 | 32 | 18 | `d` f16, 16 bytes of 4-bit codes |
//! | Q4_1 | 32 | 20 | `d` f16, `m` f16, 16 bytes of 4-bit codes |
//! | Q5_0 | 32 | 22 | `d` f16, 4 bytes of fifth bits, 16 bytes of low nibbles |
//! | Q5_1 | 32 | 24 | `d` f16, `m` f16, 4 bytes of fifth bits, 16 bytes of low nibbles |
//! | Q8_0 | 32 | 34 | `d` f16, 32 int8 codes |
//! | Q2_K | 256 | 84 | 16 bytes of 4-bit scale and min pairs, 64 bytes of 2-bit codes, `d`, `dmin` |
//! | Q3_K | 256 | 110 | 32 bytes of high bits, 64 bytes of 2-bit codes, 12 bytes of 6-bit scales, `d` |
//! | Q4_K | 256 | 144 | `d`, `dmin`, 12 bytes of 6-bit scales and mins, 128 bytes of 4-bit codes |
//! | Q5_K | 256 | 176 | `d`, `dmin`, 12 bytes of scales and mins, 32 bytes of fifth bits, 128 bytes of nibbles |
//! | Q6_K | 256 | 210 | 128 bytes of low nibbles, 64 bytes of high pairs, 16 int8 scales, `d` |
//!
//! The K-quants' super-blocks of 256 hold 16 (Q2_K, Q3_K, Q6_K) or 8 (Q4_K, Q5_K) sub-blocks,
//! each with its own scale (and min) quantized against the super-block's f16 `d` (and `dmin`).
//!
//! # Values
//! Decoding computes exactly what gguf-py's `gguf.quants.dequantize` (0.19) and ggml's
//! `dequantize_row_*` compute, in f32 and in their operation order (`(d·scale)·q` for Q6_K,
//! `(d·sc)·q − dmin·m` for Q2_K/Q4_K/Q5_K, …): the same bits. A dequantizer that computes in
//! f16 (ComfyUI-GGUF's default `dequant_dtype`) rounds intermediate products and gives other
//! values; with `dequant_dtype=float32` it gives these.
//!
//! # Codes
//! Encoding gives the bytes ggml's reference quantizers (`quantize_row_*_ref` in
//! `ggml-quants.c`, which llama-quantize runs when no importance matrix is given) write, bit for
//! bit, from f32 values (ggml quantizes f32; an f16 or bf16 source converts to f32 exactly
//! first). gguf-py's quantizers for F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 give the same bytes.
//! Note that candle's Q2_K, Q4_K and Q5_K quantizers use ggml's older `make_qkx1_quants` search;
//! ggml's current reference, and this module, use the weighted `make_qkx2_quants`.
//!
//! The reference is C compiled for x86-64 without contracting `a·b + c` into fused
//! multiply-adds (ggml's CPU-independent code as llama.cpp builds it there); a build that fuses
//! (clang's default on arm64) can round a search step differently and pick other codes for a
//! rare block. NaN values give codes that depend on the order of comparisons, as in ggml; they
//! are not meaningful in any of these formats.
//!
//! # What the K-quants' search costs
//! The legacy types and Q8_0 find a block's scale in one pass (its absolute maximum, or its
//! range) and code it in a second: a few operations per value. The K-quants search a scale per
//! sub-block, trying candidates that each round every value of the sub-block again:
//! - Q4_K and Q5_K (`make_qkx2_quants`, sub-blocks of 32): 21 (Q4_K) or 16 (Q5_K) candidate
//!   scales, each a pass that rounds the 32 values and accumulates three weighted sums, then a
//!   least-squares fit of scale and offset and a second pass for its weighted error: about 17
//!   operations per value per candidate, some 350 (Q4_K) per value in all;
//! - Q2_K (the same search, 16 candidates over sub-blocks of 16, absolute error): ~300 per value;
//! - Q6_K (`make_qx_quants`: 19 candidate scales over sub-blocks of 16, x²-weighted): ~150;
//! - Q3_K (`make_q3_quants`: one x²-weighted rounding, then up to five passes that move one code
//!   at a time while the fit improves): ~100;
//!
//! Then, for all of them, the sub-block scales are quantized against their maximum and every
//! value re-coded against the scale it will be decoded with (a division per value). The search's
//! own codes survive only in a sub-block whose scale quantizes to zero, so `make_qkx2_quants`'s
//! searches return how their codes are made (`search::Fit`) rather than the codes, and Q6_K
//! and Q3_K read such a sub-block's codes out of the search's lanes instead of transposing them
//! all.
//!
//! The cost is fixed per block: no whole-tensor pass, no buffer beyond one super-block (a few KB
//! on the stack). Each search's sums are chains of dependent additions whose order is fixed by
//! ggml's bits, so a sub-block cannot be split across vector lanes; instead sub-blocks are
//! searched together, one per lane, each lane doing exactly the scalar search: the eight (or
//! sixteen) of a super-block in `lanes.rs`, and with intrinsics where the CPU has them: AVX2
//! (`avx2.rs`, eight lanes) and AVX-512 (`avx512.rs`: Q2_K's sub-blocks of four super-blocks in
//! four registers, Q4_K's and Q5_K's `make_qkx2_quants` on eight super-blocks at once in four registers
//! side by side, whose dependent additions interleave, Q3_K's `make_q3_quants` on four
//! super-blocks, whose refinement steps each wait on a division; the search is written once over the
//! lane width in `wide.rs`; Q8_0 sixteen values per register). Measured on one core of the
//! shared 2-vCPU build machine (AMD EPYC Zen 5 with 512-bit vector units; `cargo bench --bench
//! ggml`, f32 values in): Q4_K ~1.4 GiB/s with AVX-512 (~0.7 µs per super-block), ~540 MiB/s
//! with AVX2, Q5_K 1.7 GiB/s, Q6_K 1.6 GiB/s, Q3_K 1.6 GiB/s; Q8_0 18.7 GiB/s with AVX-512 (6.4 ns per
//! 32-value block; 1.5 GiB/s block by block in scalar code);
//! the one-sub-block-at-a-time form ran Q4_K at ~45 MiB/s. `benches/RESULTS.md` has the table.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub(crate) mod finite;
mod kquants;
mod lanes;
mod legacy;
mod search;
pub(crate) mod shapes;
#[cfg(target_arch = "x86_64")]
mod wide;

#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::model::dtype::Dtype;

/// Values per K-quant super-block (`QK_K`).
pub(crate) const QK_K: usize = 256;

/// A ggml tensor type this crate decodes and encodes.
///
/// The discriminants are ggml's type numbers (`enum ggml_type`), as GGUF files store them.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum GgmlType {
    /// 32-bit float.
    F32 = 0,
    /// IEEE half.
    F16 = 1,
    /// 4-bit codes times an f16 scale, blocks of 32.
    Q4_0 = 2,
    /// 4-bit codes times an f16 scale plus an f16 minimum, blocks of 32.
    Q4_1 = 3,
    /// 5-bit codes times an f16 scale, blocks of 32.
    Q5_0 = 6,
    /// 5-bit codes times an f16 scale plus an f16 minimum, blocks of 32.
    Q5_1 = 7,
    /// 8-bit codes times an f16 scale, blocks of 32.
    Q8_0 = 8,
    /// 2-bit codes, 4-bit sub-block scales and mins, super-blocks of 256.
    Q2_K = 10,
    /// 3-bit codes, 6-bit signed sub-block scales, super-blocks of 256.
    Q3_K = 11,
    /// 4-bit codes, 6-bit sub-block scales and mins, super-blocks of 256.
    Q4_K = 12,
    /// 5-bit codes, 6-bit sub-block scales and mins, super-blocks of 256.
    Q5_K = 13,
    /// 6-bit codes, 8-bit signed sub-block scales, super-blocks of 256.
    Q6_K = 14,
    /// bfloat16.
    BF16 = 30,
}

/// Every type number ggml defines (or once defined): its name, and its values and bytes per
/// block (gguf-py's `GGML_QUANT_SIZES`; 0 for the removed types, whose sizes GGUF readers no
/// longer know), so that a file can be sized and checked, and a refusal can name what it holds.
const GGML_TYPES: [(u32, &str, usize, usize); 39] = [
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (4, "Q4_2 (removed from ggml)", 0, 0),
    (5, "Q4_3 (removed from ggml)", 0, 0),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (31, "Q4_0_4_4 (removed from GGUF)", 0, 0),
    (32, "Q4_0_4_8 (removed from GGUF)", 0, 0),
    (33, "Q4_0_8_8 (removed from GGUF)", 0, 0),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
    (40, "NVFP4", 64, 36),
    (41, "Q1_0", 128, 18),
];

impl GgmlType {
    /// Every type, in ggml's numbering order.
    pub const ALL: [GgmlType; 13] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::BF16,
    ];

    /// The names this crate accepts, for help texts.
    pub const NAMES: &'static str =
        "F32, F16, BF16, Q8_0, Q6_K, Q5_K, Q5_1, Q5_0, Q4_K, Q4_1, Q4_0, Q3_K, Q2_K";

    /// ggml's type number (what a GGUF tensor info stores).
    pub fn id(self) -> u32 {
        self as u32
    }

    /// The type of ggml type number `id`, if this crate decodes it.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.id() == id)
    }

    /// ggml's name of any type number (`IQ4_XS` for 23), whether this crate decodes it or not;
    /// `None` for a number ggml does not define.
    pub fn name_of_id(id: u32) -> Option<&'static str> {
        GGML_TYPES.iter().find(|t| t.0 == id).map(|t| t.1)
    }

    /// Values and bytes per block of any type number whose size ggml defines (also the types
    /// this crate does not decode, so that their tensors can be sized and checked).
    pub fn block_of_id(id: u32) -> Option<(usize, usize)> {
        GGML_TYPES
            .iter()
            .find(|t| t.0 == id && t.2 > 0)
            .map(|t| (t.2, t.3))
    }

    /// ggml's name (`Q4_K`, `BF16`).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q2_K => "Q2_K",
            GgmlType::Q3_K => "Q3_K",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
            GgmlType::BF16 => "BF16",
        }
    }

    /// Values per block (`ggml_blck_size`).
    pub fn block_len(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
                32
            }
            _ => QK_K,
        }
    }

    /// Bytes per block (`ggml_type_size`).
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q2_K => 84,
            GgmlType::Q3_K => 110,
            GgmlType::Q4_K => 144,
            GgmlType::Q5_K => 176,
            GgmlType::Q6_K => 210,
        }
    }

    /// Whether the type is quantized (blocks with scales), as opposed to a plain float.
    pub fn is_quantized(self) -> bool {
        self.block_len() > 1
    }

    /// The file dtype of a plain float type (F32, F16, BF16); `None` for quantized types, whose
    /// blocks are bytes.
    pub fn plain_dtype(self) -> Option<Dtype> {
        match self {
            GgmlType::F32 => Some(Dtype::F32),
            GgmlType::F16 => Some(Dtype::F16),
            GgmlType::BF16 => Some(Dtype::BF16),
            _ => None,
        }
    }

    /// Bytes of `numel` values, `None` when `numel` is not a whole number of blocks or the size
    /// overflows.
    pub fn byte_len(self, numel: u64) -> Option<u64> {
        let block = self.block_len() as u64;
        if !numel.is_multiple_of(block) {
            return None;
        }
        (numel / block).checked_mul(self.block_bytes() as u64)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GgmlType {
    type Err = Error;

    /// ggml's names, in any case (`q4_k`, `Q8_0`, `bf16`).
    fn from_str(s: &str) -> Result<Self> {
        let upper = s.to_ascii_uppercase();
        GgmlType::ALL
            .into_iter()
            .find(|t| t.name() == upper)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "unknown ggml type `{s}`: choose one of {}",
                    GgmlType::NAMES
                ))
            })
    }
}

/// Runs a block decoder (`fn(&[u8; B], &mut [f32; N])`) over every block, called directly so
/// that it inlines into its caller (and into the AVX2 build of it).
macro_rules! blocks {
    ($codes:expr, $out:expr, $f:path) => {
        for (block, values) in $codes.as_chunks().0.iter().zip($out.as_chunks_mut().0) {
            $f(block, values)
        }
    };
}

/// Runs a block encoder (`fn(&[f32; N], &mut [u8; B])`) over every block, called directly.
macro_rules! blocks_mut {
    ($values:expr, $codes:expr, $f:path) => {
        for (values, block) in $values.as_chunks().0.iter().zip($codes.as_chunks_mut().0) {
            // SAFETY: K-quant encoders need `S`'s features, which `encode_any`'s caller
            // guarantees; the others need none.
            #[allow(unused_unsafe)]
            unsafe {
                $f(values, block)
            }
        }
    };
}

/// Decodes whole blocks: `codes` holds `out.len() / block_len` blocks of `t`, and `out` gets
/// their values in f32 (see the module docs for the exact arithmetic).
///
/// The caller checks the lengths ([`super::QuantLayout::decode`] does).
pub(crate) fn decode(t: GgmlType, codes: &[u8], out: &mut [f32]) {
    debug_assert_eq!(
        codes.len() / t.block_bytes(),
        out.len() / t.block_len(),
        "{t}"
    );
    match t {
        GgmlType::F32 => legacy::decode_f32(codes, out),
        GgmlType::F16 => legacy::decode_f16(codes, out),
        GgmlType::BF16 => legacy::decode_bf16(codes, out),
        GgmlType::Q4_0 => blocks!(codes, out, legacy::decode_q4_0),
        GgmlType::Q4_1 => blocks!(codes, out, legacy::decode_q4_1),
        GgmlType::Q5_0 => blocks!(codes, out, legacy::decode_q5_0),
        GgmlType::Q5_1 => blocks!(codes, out, legacy::decode_q5_1),
        GgmlType::Q8_0 => blocks!(codes, out, legacy::decode_q8_0),
        GgmlType::Q2_K => blocks!(codes, out, kquants::decode_q2_k),
        GgmlType::Q3_K => blocks!(codes, out, kquants::decode_q3_k),
        GgmlType::Q4_K => blocks!(codes, out, kquants::decode_q4_k),
        GgmlType::Q5_K => blocks!(codes, out, kquants::decode_q5_k),
        GgmlType::Q6_K => blocks!(codes, out, kquants::decode_q6_k),
    }
}

/// Encodes whole blocks: `values` holds `codes.len() / block_bytes` blocks of `t`'s values, and
/// `codes` gets the bytes ggml's reference quantizer writes for them.
///
/// The caller checks the lengths ([`super::QuantLayout::encode`] does).
pub(crate) fn encode(t: GgmlType, values: &[f32], codes: &mut [u8]) {
    debug_assert_eq!(
        codes.len() / t.block_bytes(),
        values.len() / t.block_len(),
        "{t}"
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx2")
    {
        // SAFETY: the CPU has AVX-512F and AVX2, the features `encode_avx512` is compiled with.
        unsafe { encode_avx512(t, values, codes) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, the only feature `encode_avx2` is compiled with.
        unsafe { encode_avx2(t, values, codes) };
        return;
    }
    // SAFETY: the portable searches need no CPU feature.
    unsafe { encode_any::<lanes::Portable>(t, values, codes) };
}

/// [`encode`] compiled for AVX2, with the K-quants' searches in AVX2 intrinsics
/// ([`avx2`]): the same operations in the same order, never fused into multiply-adds, so the
/// same bits.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn encode_avx2(t: GgmlType, values: &[f32], codes: &mut [u8]) {
    // SAFETY: the caller guarantees AVX2.
    unsafe { encode_any::<avx2::Avx2>(t, values, codes) };
}

/// [`encode`] compiled for AVX-512F and AVX2: the `make_qkx2_quants` searches (Q2_K, Q4_K,
/// Q5_K) on sixteen lanes ([`avx512`]), the others as [`encode_avx2`]; the same bits.
///
/// # Safety
/// The CPU has AVX-512F and AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
unsafe fn encode_avx512(t: GgmlType, values: &[f32], codes: &mut [u8]) {
    // SAFETY: the caller guarantees AVX-512F and AVX2.
    unsafe { encode_any::<avx512::Avx512>(t, values, codes) };
}

/// # Safety
/// The CPU has the features of `S`.
#[inline(always)]
unsafe fn encode_any<S: lanes::Searches>(t: GgmlType, values: &[f32], codes: &mut [u8]) {
    match t {
        GgmlType::F32 => legacy::encode_f32(values, codes),
        GgmlType::F16 => legacy::encode_f16(values, codes),
        GgmlType::BF16 => legacy::encode_bf16(values, codes),
        GgmlType::Q4_0 => blocks_mut!(values, codes, legacy::encode_q4_0),
        GgmlType::Q4_1 => blocks_mut!(values, codes, legacy::encode_q4_1),
        GgmlType::Q5_0 => blocks_mut!(values, codes, legacy::encode_q5_0),
        GgmlType::Q5_1 => blocks_mut!(values, codes, legacy::encode_q5_1),
        // SAFETY: the caller guarantees `S`'s features.
        GgmlType::Q8_0 => unsafe { S::encode_q8_0_all(values, codes) },
        // SAFETY (all four): the caller guarantees `S`'s features.
        GgmlType::Q2_K => unsafe { kquants::encode_q2_k_all::<S>(values, codes) },
        GgmlType::Q3_K => unsafe { kquants::encode_q3_k_all::<S>(values, codes) },
        GgmlType::Q4_K => unsafe { kquants::encode_q4_k_all::<S>(values, codes) },
        GgmlType::Q5_K => unsafe { kquants::encode_q5_k_all::<S>(values, codes) },
        GgmlType::Q6_K => blocks_mut!(values, codes, kquants::encode_q6_k::<S>),
    }
}

/// The f16 at `bytes[at..at + 2]` as f32 (`GGML_FP16_TO_FP32`, exact).
#[inline(always)]
pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// `GGML_FP32_TO_FP16` (round to nearest even, overflow to infinity) as little-endian bytes.
#[inline(always)]
pub(crate) fn f16_bytes(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}
