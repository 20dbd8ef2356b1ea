//! Conversions against independent references (half, float8) on every value that matters.

use super::scalar::*;
use super::*;
use float8::{F8E4M3, F8E5M2};
use half::{bf16, f16};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn bytes_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn conv(src: &[u8], from: Dtype, to: Dtype) -> (Vec<u8>, u64) {
    let n = src.len() / width(from);
    let mut dst = vec![0u8; n * width(to)];
    let count = convert("t", src, from, &mut dst, to).unwrap();
    (dst, count)
}

/// f32 bit patterns that probe every rounding point of the 8- and 16-bit formats: all top-16-bit
/// prefixes combined with low halves at, just below and just above the halfway points.
fn probe_f32_bits() -> impl Iterator<Item = u32> {
    (0u32..=0xffff).flat_map(|hi| {
        [0u32, 1, 0x7fff, 0x8000, 0x8001, 0xffff]
            .into_iter()
            .map(move |lo| (hi << 16) | lo)
    })
}

fn random_f32_bits(n: usize) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(1);
    (0..n).map(|_| rng.random()).collect()
}

fn same_fp8(ours: u8, reference: u8, nan: u8) -> bool {
    // NaN encodings may differ in payload; both sides must be NaN then.
    let is_nan = |b: u8| {
        if nan == 0x7f {
            b & 0x7f == 0x7f
        } else {
            b & 0x7f > 0x7c
        }
    };
    ours == reference || (is_nan(ours) && is_nan(reference))
}

#[test]
fn fp8_tables_decode_like_float8() {
    for b in 0..=255u8 {
        let (ours, theirs) = (f8e4m3_to_f32(b), F8E4M3::from_bits(b).to_f32());
        assert!(ours.to_bits() == theirs.to_bits() || (ours.is_nan() && theirs.is_nan()));
        let (ours, theirs) = (f8e5m2_to_f32(b), F8E5M2::from_bits(b).to_f32());
        assert!(ours.to_bits() == theirs.to_bits() || (ours.is_nan() && theirs.is_nan()));
    }
    assert_eq!(f8e4m3_to_f32(0x7e), 448.0);
    assert_eq!(f8e4m3_to_f32(0x01), 2f32.powi(-9));
    assert!(f8e4m3_to_f32(0xff).is_nan());
    assert_eq!(f8e5m2_to_f32(0x7b), 57344.0);
    assert_eq!(f8e5m2_to_f32(0x01), 2f32.powi(-16));
    assert_eq!(f8e5m2_to_f32(0xfc), f32::NEG_INFINITY);
}

#[test]
fn fp8_encode_matches_float8_on_all_f16_values() {
    for h in 0..=u16::MAX {
        let x = f16::from_bits(h).to_f32();
        let (e4, e5) = (f32_to_f8e4m3(x), f32_to_f8e5m2(x));
        assert!(
            same_fp8(e4, F8E4M3::from_f32(x).to_bits(), 0x7f),
            "{h:#06x}"
        );
        assert!(
            same_fp8(e5, F8E5M2::from_f32(x).to_bits(), 0x7e),
            "{h:#06x}"
        );
    }
}

#[test]
fn fp8_encode_matches_float8_on_rounding_probes_and_random_f32() {
    let random = random_f32_bits(1 << 20);
    for bits in probe_f32_bits().chain(random) {
        let x = f32::from_bits(bits);
        let (e4, e5) = (f32_to_f8e4m3(x), f32_to_f8e5m2(x));
        assert!(
            same_fp8(e4, F8E4M3::from_f32(x).to_bits(), 0x7f),
            "{bits:#010x}"
        );
        assert!(
            same_fp8(e5, F8E5M2::from_f32(x).to_bits(), 0x7e),
            "{bits:#010x}"
        );
    }
}

#[test]
fn fp8_from_f64_rounds_once() {
    let mut rng = StdRng::seed_from_u64(2);
    for _ in 0..(1 << 18) {
        // Exponents around the fp8 range, full 52-bit mantissas.
        let e: i32 = rng.random_range(-30..20);
        let m: f64 = rng.random_range(1.0..2.0);
        let x = if rng.random() { -m } else { m } * 2f64.powi(e);
        assert_eq!(f64_to_f8e4m3(x), F8E4M3::from_f64(x).to_bits(), "{x:e}");
        assert!(same_fp8(
            f64_to_f8e5m2(x),
            F8E5M2::from_f64(x).to_bits(),
            0x7e
        ));
    }
    // Just above a tie in f64 but a tie after rounding to nearest f32: must round up.
    let x = 1.0 + 2f64.powi(-4) + 2f64.powi(-40);
    assert_eq!(f64_to_f8e4m3(x), F8E4M3::from_f64(x).to_bits());
    assert_eq!(f64_to_f8e4m3(x), 0x39);
}

#[test]
fn fp8_edge_cases() {
    let min_sub4 = 2f32.powi(-9);
    let cases_e4m3: &[(f32, u8)] = &[
        (0.0, 0x00),
        (-0.0, 0x80),
        (448.0, 0x7e),
        (-448.0, 0xfe),
        (464.0, 0x7e), // max + half ulp: tie, rounds to even (448)
        (480.0, 0x7e), // max + ulp saturates
        (1e30, 0x7e),  // finite overflow saturates
        (f32::INFINITY, 0x7e),
        (f32::NEG_INFINITY, 0xfe),
        (f32::NAN, 0x7f),
        (-f32::NAN, 0xff),
        (min_sub4, 0x01),
        (min_sub4 * 0.5, 0x00),                        // tie with zero: even
        (min_sub4 * 0.5 * (1.0 + f32::EPSILON), 0x01), // just above half
        (min_sub4 * 0.5 * (1.0 - f32::EPSILON / 2.0), 0x00),
        (min_sub4 * 1.5, 0x02), // tie between 1 and 2: even
        (min_sub4 * 2.5, 0x02), // tie between 2 and 3: even
        (-min_sub4 * 3.5, 0x84),
        (2f32.powi(-6), 0x08), // min normal
        (2f32.powi(-6) - min_sub4 / 4.0, 0x08),
        (1.0 + 1.0 / 16.0, 0x38),  // tie 1.0 / 1.125 → 1.0
        (1.0 + 3.0 / 16.0, 0x3a),  // tie 1.125 / 1.25 → 1.25
        (f32::from_bits(1), 0x00), // f32 subnormal
    ];
    for &(x, want) in cases_e4m3 {
        assert_eq!(f32_to_f8e4m3(x), want, "e4m3 {x:e}");
    }
    let min_sub5 = 2f32.powi(-16);
    let cases_e5m2: &[(f32, u8)] = &[
        (-0.0, 0x80),
        (57344.0, 0x7b),
        (61440.0, 0x7b), // max + half ulp: tie would round to Inf; saturates
        (65536.0, 0x7b),
        (f32::INFINITY, 0x7b),
        (f32::NEG_INFINITY, 0xfb),
        (f32::NAN, 0x7e),
        (-f32::NAN, 0xfe),
        (min_sub5, 0x01),
        (min_sub5 * 0.5, 0x00),
        (min_sub5 * 0.5 * (1.0 + f32::EPSILON), 0x01),
        (min_sub5 * 1.5, 0x02),
        (2f32.powi(-14), 0x04),
    ];
    for &(x, want) in cases_e5m2 {
        assert_eq!(f32_to_f8e5m2(x), want, "e5m2 {x:e}");
    }
}

#[test]
fn fp8_round_trips_every_code() {
    for b in 0..=255u8 {
        let x = f8e4m3_to_f32(b);
        if !x.is_nan() {
            assert_eq!(f32_to_f8e4m3(x), b);
        }
        let x = f8e5m2_to_f32(b);
        if x.is_finite() {
            assert_eq!(f32_to_f8e5m2(x), b);
        }
    }
}

#[test]
fn f16_decode_matches_half_on_every_value() {
    for h in 0..=u16::MAX {
        let (ours, theirs) = (
            f32::from_bits(f16_bits_to_f32_bits(h)),
            f16::from_bits(h).to_f32(),
        );
        assert!(
            ours.to_bits() == theirs.to_bits() || (ours.is_nan() && theirs.is_nan()),
            "{h:#06x}"
        );
    }
}

#[test]
fn bf16_matches_half_and_ties_to_even() {
    for bits in probe_f32_bits().chain(random_f32_bits(1 << 18)) {
        let x = f32::from_bits(bits);
        assert_eq!(f32_to_bf16(x), bf16::from_f32(x).to_bits(), "{bits:#010x}");
    }
    assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80); // tie → even
    assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82); // tie → even
    assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
    assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_7fff)), 0x3f80);
    assert_eq!(f32_to_bf16(f32::MAX), 0x7f80); // RNE overflow
    let nan = f32_to_bf16(f32::from_bits(0x7f80_0001)); // signalling NaN, low payload
    assert!(bf16::from_bits(nan).is_nan() && nan & 0x40 != 0);
    assert_eq!(f32_to_bf16(-0.0), 0x8000);
}

#[test]
fn slice_conversions_agree_with_scalar_references() {
    let vals: Vec<f32> = probe_f32_bits().map(f32::from_bits).collect();
    let src = bytes_f32(&vals);
    let (h, _) = conv(&src, Dtype::F32, Dtype::F16);
    let (b, _) = conv(&src, Dtype::F32, Dtype::BF16);
    let (e4, _) = conv(&src, Dtype::F32, Dtype::F8_E4M3);
    let (e5, _) = conv(&src, Dtype::F32, Dtype::F8_E5M2);
    for (i, &x) in vals.iter().enumerate() {
        let hv = f16::from_le_bytes([h[2 * i], h[2 * i + 1]]);
        let hr = f16::from_f32(x);
        assert!(
            hv.to_bits() == hr.to_bits() || (hv.is_nan() && hr.is_nan()),
            "{x:e}"
        );
        assert_eq!(u16::from_le_bytes([b[2 * i], b[2 * i + 1]]), f32_to_bf16(x));
        assert_eq!(e4[i], f32_to_f8e4m3(x));
        assert_eq!(e5[i], f32_to_f8e5m2(x));
    }
}

#[test]
fn every_f16_survives_the_round_trip_through_wider_formats() {
    let src: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
    for wide in [Dtype::F32, Dtype::F64] {
        let (w, _) = conv(&src, Dtype::F16, wide);
        let (back, _) = conv(&w, wide, Dtype::F16);
        for (i, (a, b)) in src.chunks(2).zip(back.chunks(2)).enumerate() {
            let (a, b) = (
                f16::from_le_bytes([a[0], a[1]]),
                f16::from_le_bytes([b[0], b[1]]),
            );
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{i:#x}"
            );
        }
    }
    // Through f32 the f16 values are exact, and bf16 → f32 → bf16 is the identity.
    let bsrc: Vec<u8> = (0..=u16::MAX)
        .filter(|b| !bf16::from_bits(*b).is_nan())
        .flat_map(|b| b.to_le_bytes())
        .collect();
    let (w, _) = conv(&bsrc, Dtype::BF16, Dtype::F32);
    assert_eq!(conv(&w, Dtype::F32, Dtype::BF16).0, bsrc);
}

#[test]
fn every_fp8_pair_converts_like_decode_then_encode() {
    let src: Vec<u8> = (0..=255).collect();
    for (from, dec) in [
        (Dtype::F8_E4M3, f8e4m3_to_f32 as fn(u8) -> f32),
        (Dtype::F8_E5M2, f8e5m2_to_f32),
    ] {
        for (to, enc) in [
            (Dtype::F8_E4M3, f32_to_f8e4m3 as fn(f32) -> u8),
            (Dtype::F8_E5M2, f32_to_f8e5m2),
        ] {
            let (out, _) = conv(&src, from, to);
            for (&b, &o) in src.iter().zip(&out) {
                if from == to {
                    assert_eq!(o, b);
                } else {
                    assert_eq!(o, enc(dec(b)), "{from}->{to} {b:#04x}");
                }
            }
        }
        for to in [Dtype::F16, Dtype::BF16, Dtype::F32, Dtype::F64] {
            let (wide, _) = conv(&src, from, to);
            let (back, _) = conv(&wide, to, from);
            for (&b, &o) in src.iter().zip(&back) {
                let x = dec(b);
                if x.is_finite() {
                    assert_eq!(o, b, "{from}->{to}->{from} {b:#04x}");
                } else if x.is_infinite() {
                    assert_eq!(o, (b & 0x80) | 0x7b, "Inf saturates");
                } else {
                    assert!(dec(o).is_nan());
                }
            }
        }
    }
}

#[test]
fn f64_narrowing_rounds_once() {
    // 1 + 2^-11 + 2^-40 is a tie for f16 after a round-to-nearest f32 step, but not really.
    let x = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
    let (h, _) = conv(&x.to_le_bytes(), Dtype::F64, Dtype::F16);
    assert_eq!(u16::from_le_bytes([h[0], h[1]]), 0x3c01);
    let x = 1.0 + 2f64.powi(-8) + 2f64.powi(-40);
    let (b, _) = conv(&x.to_le_bytes(), Dtype::F64, Dtype::BF16);
    assert_eq!(u16::from_le_bytes([b[0], b[1]]), 0x3f81);
    // F64 → F32 is plain round-to-nearest-even.
    let x = 1.0 + 2f64.powi(-24);
    let (f, _) = conv(&x.to_le_bytes(), Dtype::F64, Dtype::F32);
    assert_eq!(f32::from_le_bytes([f[0], f[1], f[2], f[3]]), 1.0);
    // Beyond f32 range: still Inf in f16 and bf16, max in fp8.
    let big = (1e300f64).to_le_bytes();
    assert_eq!(
        conv(&big, Dtype::F64, Dtype::BF16).0,
        0x7f80u16.to_le_bytes()
    );
    assert_eq!(conv(&big, Dtype::F64, Dtype::F8_E4M3).0, [0x7e]);
    let tiny = (-1e-300f64).to_le_bytes();
    assert_eq!(
        conv(&tiny, Dtype::F64, Dtype::F16).0,
        0x8000u16.to_le_bytes()
    );
}

#[test]
fn non_finite_values_are_counted_in_every_source_dtype() {
    // 3 NaN, 2 Inf, and finite values, spread over more than one block.
    let mut vals = vec![1.5f32; 3 * BLOCK + 17];
    for (i, v) in [
        f32::NAN,
        -f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ]
    .into_iter()
    .enumerate()
    {
        vals[i * (BLOCK / 2) + 1] = v;
    }
    vals[7] = 1e30; // finite in f32; overflows f16 but is not a non-finite *source* value
    let f32s = bytes_f32(&vals);
    assert_eq!(count_non_finite(&f32s, Dtype::F32), 5);
    for dtype in FLOATS {
        let (src, _) = conv(&f32s, Dtype::F32, dtype);
        // fp8 saturates Inf, so only the NaNs survive there; 1e30 becomes Inf in F16.
        let want = match dtype {
            Dtype::F8_E4M3 | Dtype::F8_E5M2 => 3,
            Dtype::F16 => 6,
            _ => 5,
        };
        assert_eq!(count_non_finite(&src, dtype), want, "{dtype}");
        for to in FLOATS {
            assert_eq!(conv(&src, dtype, to).1, want, "{dtype}->{to}");
        }
    }
    let ints: Vec<u8> = (0..64).collect();
    assert_eq!(count_non_finite(&ints, Dtype::I64), 0);
    assert_eq!(conv(&ints, Dtype::U8, Dtype::U8).1, 0);
}

#[test]
fn unaligned_slices_convert_like_aligned_ones() {
    let mut rng = StdRng::seed_from_u64(3);
    let vals: Vec<f32> = (0..BLOCK + 333)
        .map(|_| rng.random_range(-500.0..500.0))
        .collect();
    let base = bytes_f32(&vals);
    for from in FLOATS {
        let (aligned_src, _) = conv(&base, Dtype::F32, from);
        for to in FLOATS {
            let (want, _) = conv(&aligned_src, from, to);
            for (so, dof) in [(1, 3), (3, 5), (2, 1)] {
                let mut src = vec![0u8; aligned_src.len() + so];
                src[so..].copy_from_slice(&aligned_src);
                let mut dst = vec![0u8; want.len() + dof];
                convert("t", &src[so..], from, &mut dst[dof..], to).unwrap();
                assert_eq!(&dst[dof..], &want[..], "{from}->{to} at +{so}/+{dof}");
            }
        }
    }
}

#[test]
fn wrong_lengths_and_impossible_casts_are_errors() {
    let src = [0u8; 16];
    let mut dst = [0u8; 7];
    let err = convert("w.weight", &src, Dtype::F32, &mut dst, Dtype::F16).unwrap_err();
    assert!(matches!(err, Error::ImpossibleCast { .. }));
    let msg = err.to_string();
    assert!(msg.contains("w.weight") && msg.contains("7 bytes") && msg.contains("need 8"));
    let err = convert("w", &src[..15], Dtype::F32, &mut dst, Dtype::F16).unwrap_err();
    assert!(err.to_string().contains("whole number"), "{err}");
    let mut dst = [0u8; 8];
    for (from, to) in [
        (Dtype::I64, Dtype::F32),
        (Dtype::F32, Dtype::I32),
        (Dtype::F4, Dtype::F16),
        (Dtype::F8_E4M3FNUZ, Dtype::F8_E4M3),
    ] {
        assert!(!is_supported(from, to));
        let err = convert("w", &src[..8], from, &mut dst, to).unwrap_err();
        assert!(matches!(err, Error::ImpossibleCast { .. }), "{from}->{to}");
    }
}

#[test]
fn identity_copies_integers_and_packed_formats() {
    let mut rng = StdRng::seed_from_u64(4);
    let src: Vec<u8> = (0..(BLOCK * 8 + 24)).map(|_| rng.random()).collect();
    for dtype in [Dtype::I64, Dtype::U8, Dtype::I32, Dtype::BOOL, Dtype::F4] {
        let mut dst = vec![0u8; src.len()];
        assert_eq!(convert("ids", &src, dtype, &mut dst, dtype).unwrap(), 0);
        assert_eq!(dst, src, "{dtype}");
    }
    // Float identity copies still count.
    let mut dst = vec![0u8; src.len()];
    let n = convert("x", &src, Dtype::F8_E4M3, &mut dst, Dtype::F8_E4M3).unwrap();
    assert_eq!(dst, src);
    assert_eq!(n, src.iter().filter(|b| *b & 0x7f == 0x7f).count() as u64);
}
