//! Encoding a CUDA tensor's ggml blocks on its device: what `kernels/ggml_quantize.cu` is given
//! for a range of a GGUF target's bytes (type and source codes, which blocks, the buffer it
//! fills) and which part of that buffer the range is. Needs no GPU and is tested here; the
//! launch itself is `cuda/ggml.rs` (with the `cuda` feature).
//!
//! Each block carries its own scales, so the writer's range is encoded where it is asked for:
//! the whole blocks that hold it (a block cut by the range's ends is encoded whole, as on the
//! host), straight from the source's row-major values on the device, and only their bytes come
//! back to the host. sd1/sdxl's rows reshaped to 256 values change nothing here: ggml's blocks
//! run along the flat values, whatever the shape.

// The launch helpers are used by `cuda/ggml.rs`, which only the `cuda` feature builds; the
// tests below use them in every build.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use std::ops::Range;

use super::quant_device::{precision_code, SrcCode};
use crate::error::{Error, Result};
use crate::model::dtype::Dtype;
use crate::quant::{GgmlType, Precision};

/// The kernel's type code of `t` (ggml's type number, `G_*` in `kernels/ggml_quantize.cu`);
/// `None` for the plain float types, which are casts, not block quantizers.
pub(crate) fn type_code(t: GgmlType) -> Option<u32> {
    t.is_quantized().then(|| t.id())
}

/// One launch of `checkpoint_save_ggml_quantize` for a range of a target's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GgmlLaunch {
    /// The source dtype.
    pub src: SrcCode,
    /// The precision of the file the quantizer reads (`P_*`): the values are rounded to it.
    pub base: u32,
    /// ggml's type number.
    pub ty: u32,
    /// The first block and how many blocks (one thread each).
    pub first: u64,
    pub blocks: u64,
    /// Values per block and bytes per block.
    pub block_len: u64,
    pub block_bytes: usize,
    /// Where the asked range starts in the launch's output (bytes before it belong to a block
    /// cut by the range's start).
    pub skip: usize,
    /// Bytes asked.
    pub len: usize,
}

impl GgmlLaunch {
    /// The launch for bytes `bytes` of a tensor of `numel` values of `dtype` encoded as `t`,
    /// read as a file in `base` holds them; `None` where the kernel does not encode it (a plain
    /// float type, another source dtype, nothing asked), which the host then encodes.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `numel` is not whole blocks or the range lies past the end.
    pub(crate) fn new(
        t: GgmlType,
        numel: u64,
        dtype: Dtype,
        base: Precision,
        bytes: Range<usize>,
    ) -> Result<Option<GgmlLaunch>> {
        let (Some(ty), Some(src)) = (type_code(t), SrcCode::of(dtype)) else {
            return Ok(None);
        };
        if bytes.is_empty() {
            return Ok(None);
        }
        let total = t.byte_len(numel).ok_or_else(|| {
            Error::InvalidInput(format!(
                "{numel} values are not whole {t} blocks of {}",
                t.block_len()
            ))
        })?;
        if bytes.end as u64 > total {
            return Err(Error::InvalidInput(format!(
                "bytes {bytes:?} asked of a {t} tensor of {total} bytes"
            )));
        }
        let block_bytes = t.block_bytes();
        let (first, last) = (bytes.start / block_bytes, bytes.end.div_ceil(block_bytes));
        Ok(Some(GgmlLaunch {
            src,
            base: precision_code(base),
            ty,
            first: first as u64,
            blocks: (last - first) as u64,
            block_len: t.block_len() as u64,
            block_bytes,
            skip: bytes.start - first * block_bytes,
            len: bytes.len(),
        }))
    }

    /// Bytes the kernel writes: every block of the launch.
    pub(crate) fn out_len(&self) -> usize {
        self.blocks as usize * self.block_bytes
    }

    /// The source values the kernel reads (element indices of the flat tensor).
    pub(crate) fn values(&self) -> Range<u64> {
        self.first * self.block_len..(self.first + self.blocks) * self.block_len
    }

    /// The asked bytes within the kernel's output.
    pub(crate) fn asked(&self) -> Range<usize> {
        self.skip..self.skip + self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KERNEL: &str = include_str!("../../kernels/ggml_quantize.cu");

    /// The value of `#define NAME <n>u` in the kernel source.
    fn define(name: &str) -> u32 {
        let line = KERNEL
            .lines()
            .find(|l| l.split_whitespace().take(2).eq(["#define", name]))
            .unwrap_or_else(|| panic!("{name} is not defined in ggml_quantize.cu"));
        let v = line.split_whitespace().nth(2).unwrap();
        v.trim_end_matches('u').parse().unwrap()
    }

    #[test]
    fn type_source_and_precision_codes_match_the_kernel() {
        for t in GgmlType::ALL {
            match type_code(t) {
                Some(code) => assert_eq!(code, define(&format!("G_{}", t.name())), "{t}"),
                None => assert!(!t.is_quantized(), "{t}"),
            }
        }
        assert_eq!(type_code(GgmlType::Q6_K), Some(14), "ggml's number");
        for (src, name) in [
            (SrcCode::F32, "S_F32"),
            (SrcCode::F16, "S_F16"),
            (SrcCode::Bf16, "S_BF16"),
        ] {
            assert_eq!(src as u32, define(name), "{name}");
        }
        for (p, name) in [
            (Precision::F32, "P_F32"),
            (Precision::Bf16, "P_BF16"),
            (Precision::F16, "P_F16"),
        ] {
            assert_eq!(precision_code(p), define(name), "{name}");
        }
    }

    #[test]
    fn ranges_become_whole_blocks_and_the_asked_bytes_within_them() {
        // Q4_K: 256 values, 144 bytes per block; a tensor of 3 x 512 values has 6 blocks.
        let l = GgmlLaunch::new(GgmlType::Q4_K, 1536, Dtype::BF16, Precision::Bf16, 100..500)
            .unwrap()
            .unwrap();
        assert_eq!(
            (l.first, l.blocks),
            (0, 4),
            "bytes 100..500 lie in blocks 0..4"
        );
        assert_eq!(l.out_len(), 576);
        assert_eq!(l.asked(), 100..500);
        assert_eq!(l.values(), 0..1024);
        assert_eq!((l.src, l.base, l.ty), (SrcCode::Bf16, 1, 12));
        // A range of whole blocks in the middle: nothing skipped, nothing extra.
        let l = GgmlLaunch::new(GgmlType::Q8_0, 32 * 10, Dtype::F32, Precision::F32, 68..170)
            .unwrap()
            .unwrap();
        assert_eq!((l.first, l.blocks, l.skip, l.out_len()), (2, 3, 0, 102));
        assert_eq!(l.values(), 64..160);
        // The last byte of the tensor alone: its block, 33 bytes skipped.
        let l = GgmlLaunch::new(GgmlType::Q8_0, 320, Dtype::F16, Precision::F16, 339..340)
            .unwrap()
            .unwrap();
        assert_eq!((l.first, l.blocks, l.skip, l.len), (9, 1, 33, 1));
        assert_eq!(l.asked(), 33..34);
        assert_eq!((l.src, l.base), (SrcCode::F16, 2));
    }

    #[test]
    fn every_type_s_output_covers_the_range_with_its_block_sizes() {
        for t in GgmlType::ALL.into_iter().filter(|t| t.is_quantized()) {
            let (vals, bytes) = (t.block_len() as u64, t.block_bytes());
            let numel = vals * 7;
            let total = t.byte_len(numel).unwrap() as usize;
            for range in [
                0..total,
                1..total - 1,
                bytes..2 * bytes,
                bytes - 1..bytes + 1,
            ] {
                let l = GgmlLaunch::new(t, numel, Dtype::F32, Precision::F32, range.clone())
                    .unwrap()
                    .unwrap();
                let start = l.first as usize * bytes;
                assert!(
                    start <= range.start && range.end <= start + l.out_len(),
                    "{t}"
                );
                assert!(
                    l.skip < bytes && l.asked().end <= l.out_len(),
                    "{t} {range:?}"
                );
                assert!(l.out_len() - l.asked().end < bytes, "{t}: a block too many");
                assert!(l.values().end <= numel);
                assert_eq!(l.values().start, l.first * vals);
            }
        }
    }

    #[test]
    fn what_the_kernel_does_not_encode_stays_on_the_host_and_bad_ranges_are_refused() {
        let none = |t, dtype, bytes: Range<usize>| {
            GgmlLaunch::new(t, 256, dtype, Precision::F32, bytes)
                .unwrap()
                .is_none()
        };
        assert!(none(GgmlType::F16, Dtype::F32, 0..10), "a cast, not blocks");
        assert!(none(GgmlType::BF16, Dtype::F32, 0..10));
        assert!(none(GgmlType::Q4_0, Dtype::F64, 0..18), "f64 sources");
        assert!(none(GgmlType::Q4_0, Dtype::F32, 18..18), "nothing asked");
        assert!(GgmlLaunch::new(GgmlType::Q4_0, 256, Dtype::F32, Precision::F32, 0..145).is_err());
        assert!(GgmlLaunch::new(GgmlType::Q4_K, 300, Dtype::F32, Precision::F32, 0..1).is_err());
    }
}

#[cfg(test)]
#[path = "ggml_device_kernel_tests.rs"]
mod kernel_tests;
