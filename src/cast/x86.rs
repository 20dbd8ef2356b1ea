//! AVX2 kernels for the pairs that dominate saves (f32 → f16 / bf16, bf16 models saved as f16 or
//! f32, f16 saved as f32): convert 8 values per instruction and count non-finite inputs in the
//! same loop, and the NaN/Inf counts of tensors written as they are. They give the same bits as
//! the portable path (tested), and are used only when the CPU has exactly the features each
//! kernel is compiled with.

use std::arch::x86_64::*;

use super::portable::{convert_portable, count_portable};
use super::Dtype;

/// A kernel: converts (or only counts) whole steps from the start of `src` and returns the
/// NaN/Inf count and how many elements it covered; the portable path does the rest.
type Kernel = unsafe fn(&[u8], &mut [u8]) -> (u64, usize);

/// The CPU features a kernel may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cpu {
    pub(super) avx2: bool,
    pub(super) f16c: bool,
}

impl Cpu {
    /// What this CPU has (std caches the detection).
    fn detected() -> Self {
        Cpu {
            avx2: is_x86_feature_detected!("avx2"),
            f16c: is_x86_feature_detected!("f16c"),
        }
    }

    /// Whether every feature of a `target_feature` list (`"avx2,f16c"`) is present.
    pub(super) fn has(self, features: &str) -> bool {
        features.split(',').all(|f| match f {
            "avx2" => self.avx2,
            "f16c" => self.f16c,
            _ => false,
        })
    }
}

/// One conversion kernel and the features it is compiled with: `features` repeats the kernel's
/// `#[target_feature(enable = …)]` list exactly (a test reads this file to check), and a kernel
/// is only ever selected when the CPU has all of them.
pub(super) struct Entry {
    pub(super) from: Dtype,
    pub(super) to: Dtype,
    #[allow(
        dead_code,
        reason = "read by the test that checks each kernel's attribute"
    )]
    pub(super) name: &'static str,
    pub(super) features: &'static str,
    run: Kernel,
}

pub(super) const KERNELS: [Entry; 5] = [
    Entry {
        from: Dtype::F32,
        to: Dtype::F16,
        name: "f32_to_f16",
        features: "avx2,f16c",
        run: f32_to_f16,
    },
    Entry {
        from: Dtype::F32,
        to: Dtype::BF16,
        name: "f32_to_bf16",
        features: "avx2",
        run: f32_to_bf16,
    },
    Entry {
        from: Dtype::BF16,
        to: Dtype::F16,
        name: "bf16_to_f16",
        features: "avx2,f16c",
        run: bf16_to_f16,
    },
    Entry {
        from: Dtype::BF16,
        to: Dtype::F32,
        name: "bf16_to_f32",
        features: "avx2",
        run: bf16_to_f32,
    },
    Entry {
        from: Dtype::F16,
        to: Dtype::F32,
        name: "f16_to_f32",
        features: "avx2,f16c",
        run: f16_to_f32,
    },
];

/// The kernel for a pair on a CPU with `cpu`'s features.
pub(super) fn select(from: Dtype, to: Dtype, cpu: Cpu) -> Option<&'static Entry> {
    KERNELS
        .iter()
        .find(|k| k.from == from && k.to == to && cpu.has(k.features))
}

/// Converts with a fused count, or returns `None` when no kernel applies on this CPU.
pub(super) fn convert(src: &[u8], from: Dtype, dst: &mut [u8], to: Dtype) -> Option<u64> {
    let kernel = select(from, to, Cpu::detected())?;
    // SAFETY: `select` checked that the CPU has every feature the kernel is compiled with; the
    // caller checked that `dst` holds as many elements of `to` as `src` holds of `from`.
    let (count, done) = unsafe { (kernel.run)(src, dst) };
    let (ss, ds) = (from.bitsize() / 8, to.bitsize() / 8);
    Some(count + convert_portable(&src[done * ss..], from, &mut dst[done * ds..], to))
}

/// Counts NaN/Inf among f32, f16 or bf16 values (exponent bits all ones), 64 bytes at a
/// time; `None` for other dtypes or without AVX2. A trailing partial element is ignored.
pub(super) fn count_non_finite(src: &[u8], dtype: Dtype) -> Option<u64> {
    if !is_x86_feature_detected!("avx2") {
        return None;
    }
    // SAFETY: AVX2 was detected above.
    let (count, done) = match dtype {
        Dtype::F32 => unsafe { count_exp32(src, 0x7f80_0000) },
        Dtype::F16 => unsafe { count_exp16(src, 0x7c00) },
        Dtype::BF16 => unsafe { count_exp16(src, 0x7f80) },
        _ => return None,
    };
    let w = dtype.bitsize() / 8;
    Some(count + count_portable(&src[done * w..], dtype))
}

/// Elements counted between horizontal sums: per-lane counters stay far below overflow
/// (16-bit lanes take at most `FLUSH / 16` hits each).
const FLUSH: usize = 1 << 16;

/// The loop every kernel shares: `step(i, acc)` for i = 0, W, 2W, … while W elements from i
/// lie below `n`. A step subtracts its non-finite lanes' compare masks (-1 each) from `acc`,
/// and `sum` totals the lanes once per FLUSH elements. Returns the count and the first element
/// not covered (fewer than W remain). Counting in lanes matters: a movemask + popcount per
/// vector made the count compute-bound at ~5 GB/s.
#[inline(always)]
fn steps<const W: usize>(
    n: usize,
    zero: __m256i,
    mut step: impl FnMut(usize, __m256i) -> __m256i,
    sum: impl Fn(__m256i) -> u64,
) -> (u64, usize) {
    let mut count = 0;
    let mut i = 0;
    while i + W <= n {
        let end = n.min(i + FLUSH);
        let mut acc = zero;
        while i + W <= end {
            acc = step(i, acc);
            i += W;
        }
        count += sum(acc);
    }
    (count, i)
}

/// Sum of the eight 32-bit lanes (each a small non-negative count).
#[inline]
#[target_feature(enable = "avx2")]
fn hsum_epi32(v: __m256i) -> u64 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    u64::from(_mm_cvtsi128_si32(s) as u32)
}

/// Two 32-byte vectors starting at byte `at`.
///
/// # Safety
/// `at + 64 <= src.len()`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load2(src: &[u8], at: usize) -> (__m256i, __m256i) {
    // SAFETY: the caller keeps the 64 bytes inside src; unaligned loads.
    unsafe {
        let p = src.as_ptr().add(at);
        (
            _mm256_loadu_si256(p.cast()),
            _mm256_loadu_si256(p.add(32).cast()),
        )
    }
}

/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
unsafe fn count_exp16(src: &[u8], exp: u16) -> (u64, usize) {
    let m = _mm256_set1_epi16(exp as i16);
    let hit = |v| _mm256_cmpeq_epi16(_mm256_and_si256(v, m), m);
    let step = |i: usize, acc| {
        // SAFETY: 32 elements (64 bytes) from i lie inside src.
        let (v0, v1) = unsafe { load2(src, i * 2) };
        _mm256_sub_epi16(_mm256_sub_epi16(acc, hit(v0)), hit(v1))
    };
    // Pairs of 16-bit lane counts widen to 32 bits.
    let sum = |acc| hsum_epi32(_mm256_madd_epi16(acc, _mm256_set1_epi16(1)));
    steps::<32>(src.len() / 2, _mm256_setzero_si256(), step, sum)
}

/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
unsafe fn count_exp32(src: &[u8], exp: u32) -> (u64, usize) {
    let m = _mm256_set1_epi32(exp as i32);
    let hit = |v| _mm256_cmpeq_epi32(_mm256_and_si256(v, m), m);
    let step = |i: usize, acc| {
        // SAFETY: 16 elements (64 bytes) from i lie inside src.
        let (v0, v1) = unsafe { load2(src, i * 4) };
        _mm256_sub_epi32(_mm256_sub_epi32(acc, hit(v0)), hit(v1))
    };
    steps::<16>(src.len() / 4, _mm256_setzero_si256(), step, |acc| {
        hsum_epi32(acc)
    })
}

/// # Safety
/// The CPU must support AVX2 and F16C; `dst.len() == src.len() / 2`, `src.len() % 4 == 0`.
#[target_feature(enable = "avx2,f16c")]
unsafe fn f32_to_f16(src: &[u8], dst: &mut [u8]) -> (u64, usize) {
    let exp = _mm256_set1_epi32(0x7f80_0000);
    let step = |i: usize, acc| {
        // SAFETY: i + 8 <= n elements lie inside both slices; unaligned loads/stores.
        let v = unsafe { _mm256_loadu_ps(src.as_ptr().add(i * 4).cast()) };
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
        // SAFETY: as above.
        unsafe { _mm_storeu_si128(dst.as_mut_ptr().add(i * 2).cast(), h) };
        let e = _mm256_and_si256(_mm256_castps_si256(v), exp);
        _mm256_sub_epi32(acc, _mm256_cmpeq_epi32(e, exp))
    };
    steps::<8>(src.len() / 4, _mm256_setzero_si256(), step, |acc| {
        hsum_epi32(acc)
    })
}

/// The exact widening of 8 bf16 values at element `i` to f32 lanes (a 16-bit shift) and their
/// NaN/Inf compare mask; shared by the two bf16 kernels, inlined into each with its features.
///
/// # Safety
/// 8 elements (16 bytes) from `i` lie inside `src`.
#[inline(always)]
unsafe fn bf16_lanes_at(src: &[u8], i: usize) -> (__m256i, __m256i) {
    // SAFETY: the caller keeps the 16 bytes inside src; unaligned load.
    let h = unsafe { _mm_loadu_si128(src.as_ptr().add(i * 2).cast()) };
    let w = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h));
    let exp = _mm256_set1_epi32(0x7f80_0000);
    (w, _mm256_cmpeq_epi32(_mm256_and_si256(w, exp), exp))
}

/// bf16 → f16: exact widening to f32, then one rounding like [`f32_to_f16`]. Counts NaN/Inf of
/// the source.
///
/// # Safety
/// The CPU must support AVX2 and F16C; `src.len()` is even and `dst.len() == src.len()`.
#[target_feature(enable = "avx2,f16c")]
unsafe fn bf16_to_f16(src: &[u8], dst: &mut [u8]) -> (u64, usize) {
    let step = |i: usize, acc| {
        // SAFETY: i + 8 <= n elements lie inside src and dst; unaligned loads/stores.
        let (w, hit) = unsafe { bf16_lanes_at(src, i) };
        let out = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_castsi256_ps(w));
        // SAFETY: as above.
        unsafe { _mm_storeu_si128(dst.as_mut_ptr().add(i * 2).cast(), out) };
        _mm256_sub_epi32(acc, hit)
    };
    steps::<8>(src.len() / 2, _mm256_setzero_si256(), step, |acc| {
        hsum_epi32(acc)
    })
}

/// bf16 → f32, exact (a 16-bit shift). Counts NaN/Inf of the source. Needs AVX2 only.
///
/// # Safety
/// The CPU must support AVX2; `src.len()` is even and `dst.len() == src.len() * 2`.
#[target_feature(enable = "avx2")]
unsafe fn bf16_to_f32(src: &[u8], dst: &mut [u8]) -> (u64, usize) {
    let step = |i: usize, acc| {
        // SAFETY: i + 8 <= n elements lie inside src and dst; unaligned loads/stores.
        let (w, hit) = unsafe { bf16_lanes_at(src, i) };
        // SAFETY: as above.
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().add(i * 4).cast(), w) };
        _mm256_sub_epi32(acc, hit)
    };
    steps::<8>(src.len() / 2, _mm256_setzero_si256(), step, |acc| {
        hsum_epi32(acc)
    })
}

/// f16 → f32, exact. F16C converts every finite value and ±Inf; NaN lanes are rebuilt from
/// their bits (sign, payload shifted up) because the portable path keeps signalling NaNs
/// signalling, as PyTorch does. Counts NaN/Inf of the source.
///
/// # Safety
/// The CPU must support AVX2 and F16C; `src.len()` is even and `dst.len() == src.len() * 2`.
#[target_feature(enable = "avx2,f16c")]
unsafe fn f16_to_f32(src: &[u8], dst: &mut [u8]) -> (u64, usize) {
    let abs_mask = _mm256_set1_epi32(0x7fff);
    let max_finite = _mm256_set1_epi32(0x7bff);
    let inf = _mm256_set1_epi32(0x7c00);
    let step = |i: usize, acc| {
        // SAFETY: i + 8 <= n elements lie inside src and dst; unaligned loads/stores.
        let h = unsafe { _mm_loadu_si128(src.as_ptr().add(i * 2).cast()) };
        let f = _mm256_castps_si256(_mm256_cvtph_ps(h));
        let w = _mm256_cvtepu16_epi32(h);
        let abs = _mm256_and_si256(w, abs_mask);
        let nan = _mm256_cmpgt_epi32(abs, inf);
        let nan_bits = _mm256_or_si256(
            _mm256_slli_epi32::<16>(_mm256_andnot_si256(abs_mask, w)),
            _mm256_or_si256(
                _mm256_set1_epi32(0x7f80_0000),
                _mm256_slli_epi32::<13>(_mm256_and_si256(w, _mm256_set1_epi32(0x3ff))),
            ),
        );
        let out = _mm256_blendv_epi8(f, nan_bits, nan);
        // SAFETY: as above.
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().add(i * 4).cast(), out) };
        _mm256_sub_epi32(acc, _mm256_cmpgt_epi32(abs, max_finite))
    };
    steps::<8>(src.len() / 2, _mm256_setzero_si256(), step, |acc| {
        hsum_epi32(acc)
    })
}

/// Round-to-nearest-even f32 bits → bf16 bits in the low half of each lane; NaN kept quiet.
#[inline]
#[target_feature(enable = "avx2")]
fn bf16_lanes(x: __m256i) -> (__m256i, __m256i) {
    let one = _mm256_set1_epi32(1);
    let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(x), one);
    let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(
        x,
        _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb),
    ));
    let abs = _mm256_and_si256(x, _mm256_set1_epi32(0x7fff_ffff));
    let nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f80_0000));
    let quiet = _mm256_or_si256(_mm256_srli_epi32::<16>(x), _mm256_set1_epi32(0x40));
    let non_finite = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f7f_ffff));
    (_mm256_blendv_epi8(rounded, quiet, nan), non_finite)
}

/// # Safety
/// The CPU must support AVX2; `dst.len() == src.len() / 2`, `src.len() % 4 == 0`.
#[target_feature(enable = "avx2")]
unsafe fn f32_to_bf16(src: &[u8], dst: &mut [u8]) -> (u64, usize) {
    let step = |i: usize, acc| {
        // SAFETY: i + 16 <= n elements lie inside both slices; unaligned loads/stores.
        let (a, b) = unsafe { load2(src, i * 4) };
        let (ra, na) = bf16_lanes(a);
        let (rb, nb) = bf16_lanes(b);
        // packus interleaves 128-bit lanes; the permute restores element order.
        let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(ra, rb));
        // SAFETY: as above.
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().add(i * 2).cast(), packed) };
        _mm256_sub_epi32(_mm256_sub_epi32(acc, na), nb)
    };
    steps::<16>(src.len() / 4, _mm256_setzero_si256(), step, |acc| {
        hsum_epi32(acc)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These tests check the kernels themselves, so they fail (rather than pass without testing
    /// anything) on a CPU that cannot run them.
    const NEEDS: &str = "this test checks the AVX2/F16C kernels and this CPU lacks them; run the \
                         suite on an x86-64-v3 CPU (Haswell or later)";

    #[test]
    fn kernels_are_selected_by_exactly_the_features_they_are_compiled_with() {
        // The `features` of each table entry must be the kernel's own `target_feature` list.
        let source = include_str!("x86.rs");
        for k in &KERNELS {
            let decl = format!("unsafe fn {}(", k.name);
            let at = source
                .find(&decl)
                .unwrap_or_else(|| panic!("no kernel {}", k.name));
            let before = &source[..at];
            let attr_at = before
                .rfind("#[target_feature(enable = \"")
                .expect("attribute");
            let attr = &before[attr_at + 27..];
            let compiled = &attr[..attr.find('"').expect("closing quote")];
            assert_eq!(
                compiled, k.features,
                "{}: table and attribute differ",
                k.name
            );
        }
        // A CPU with AVX2 but no F16C (some VIA/Zhaoxin parts, virtual CPUs with F16C masked)
        // gets exactly the kernels that need AVX2 alone.
        let avx2_only = Cpu {
            avx2: true,
            f16c: false,
        };
        for k in &KERNELS {
            let picked = select(k.from, k.to, avx2_only);
            assert_eq!(picked.is_some(), !k.features.contains("f16c"), "{}", k.name);
        }
        assert_eq!(
            select(Dtype::BF16, Dtype::F32, avx2_only).map(|k| k.name),
            Some("bf16_to_f32")
        );
        let none = Cpu {
            avx2: false,
            f16c: false,
        };
        assert!(KERNELS.iter().all(|k| select(k.from, k.to, none).is_none()));
        assert!(
            !Cpu {
                avx2: true,
                f16c: true
            }
            .has("avx512f"),
            "unknown features are missing"
        );
    }

    #[test]
    fn sixteen_bit_kernels_match_the_portable_path_bit_for_bit() {
        // Every 16-bit pattern (NaN payloads, signalling NaNs, Inf, subnormals, bf16 values
        // past f16's range), twice over with an odd tail, converted at an odd offset too.
        let mut src: Vec<u8> = (0..=u16::MAX).flat_map(|b| b.to_le_bytes()).collect();
        src.extend_from_within(..);
        src.extend([0x80, 0x3f, 0x80, 0x7f, 0xc1, 0xff]);
        let n = src.len() / 2;
        for (from, to) in [
            (Dtype::BF16, Dtype::F16),
            (Dtype::BF16, Dtype::F32),
            (Dtype::F16, Dtype::F32),
        ] {
            let w = to.bitsize() / 8;
            let mut fast = vec![0u8; n * w];
            let count = convert(&src, from, &mut fast, to).expect(NEEDS);
            let mut want = vec![0u8; n * w];
            let mut scratch = super::super::portable::Scratch::new();
            let mut want_count = 0;
            for (s, d) in src
                .chunks(super::super::BLOCK * 2)
                .zip(want.chunks_mut(super::super::BLOCK * w))
            {
                super::super::portable::convert_block(s, from, d, to, &mut scratch);
                want_count += super::super::portable::count_block(s, from);
            }
            assert_eq!(count, want_count, "{from} -> {to}");
            for (k, (a, b)) in fast.chunks(w).zip(want.chunks(w)).enumerate() {
                assert_eq!(a, b, "{from} -> {to}: input {:#06x}", k % 65536);
            }
            let mut shifted = vec![0u8; n * w + 1];
            let c = convert(&src[2..], from, &mut shifted[1..1 + (n - 1) * w], to);
            // The dropped first element (0x0000) is finite.
            assert_eq!(c, Some(want_count), "{from} -> {to} shifted count");
            assert_eq!(
                &shifted[1..1 + (n - 1) * w],
                &want[w..],
                "{from} -> {to} shifted"
            );
        }
    }

    fn portable(src: &[u8], to: Dtype) -> (Vec<u8>, u64) {
        let mut dst = vec![0u8; src.len() / 2];
        let mut scratch = super::super::portable::Scratch::new();
        let mut count = 0;
        for (s, d) in src
            .chunks(super::super::BLOCK * 4)
            .zip(dst.chunks_mut(super::super::BLOCK * 2))
        {
            super::super::portable::convert_block(s, Dtype::F32, d, to, &mut scratch);
            count += super::super::portable::count_block(s, Dtype::F32);
        }
        (dst, count)
    }

    #[test]
    fn counts_match_the_portable_count() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        // Over two FLUSH blocks of 16-bit elements, so the lane sums are exercised.
        let mut bytes: Vec<u8> = (0..300_003)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8 | if x.is_multiple_of(5) { 0x7f } else { 0 }
            })
            .collect();
        bytes.extend([0x00, 0x7c, 0x00, 0xfc, 0x80, 0x7f, 0xc0, 0x7f]);
        for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
            for start in [0, 1, 3] {
                let s = &bytes[start..];
                let fast = count_non_finite(s, dtype).expect(NEEDS);
                let w = dtype.bitsize() / 8;
                assert_eq!(
                    fast,
                    super::super::portable::count_block(&s[..s.len() / w * w], dtype),
                    "{dtype} at {start}"
                );
            }
        }
        // Every element a hit, over several blocks: no lane counter may wrap.
        let all = vec![0xffu8; 4 * FLUSH * 4 + 6];
        for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
            let w = dtype.bitsize() / 8;
            let fast = count_non_finite(&all, dtype).expect(NEEDS);
            assert_eq!(fast, (all.len() / w) as u64, "{dtype}");
        }
    }

    #[test]
    fn kernels_match_the_portable_path_bit_for_bit() {
        // Random bit patterns (every class: NaN payloads, Inf, subnormals, ties) plus edges.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut bits: Vec<u32> = (0..200_003)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 16) as u32
            })
            .collect();
        bits.extend([
            0,
            0x8000_0000,
            0x7f80_0000,
            0xff80_0000,
            0x7fc0_0001,
            0x7f80_0001,
            0x3f80_8000,
            0x3f81_8000,
            0x477f_f000,
            0x4780_0000,
            0x3380_0000,
            0x0000_0001,
        ]);
        let src: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        for to in [Dtype::F16, Dtype::BF16] {
            let mut fast = vec![0u8; src.len() / 2];
            let count = convert(&src, Dtype::F32, &mut fast, to).expect(NEEDS);
            let (want, want_count) = portable(&src, to);
            assert_eq!(count, want_count, "{to}");
            for (k, (a, b)) in fast.chunks(2).zip(want.chunks(2)).enumerate() {
                assert_eq!(a, b, "{to}: input {:#010x}", bits[k]);
            }
            // Unaligned slices give the same result.
            let mut off = vec![0u8; src.len() / 2 + 1];
            let c2 = convert(
                &src[4..src.len()],
                Dtype::F32,
                &mut off[1..src.len() / 2 - 1],
                to,
            );
            assert_eq!(&off[1..src.len() / 2 - 1], &want[2..]);
            assert!(c2.is_some());
        }
    }
}
