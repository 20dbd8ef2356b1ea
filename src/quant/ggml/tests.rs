//! Unit tests of the ggml types and their place in the quantized-tensor interface. The codecs are
//! tested against ggml's and gguf-py's fixtures in `tests/ggml.rs`; here, hand-computed blocks.

use super::*;
use crate::quant::{Format, Precision, QuantLayout, Role, Scales, StoredMember};

#[test]
fn ids_names_and_sizes_are_ggmls() {
    for t in GgmlType::ALL {
        assert_eq!(GgmlType::from_id(t.id()), Some(t));
        assert_eq!(GgmlType::name_of_id(t.id()), Some(t.name()));
        assert_eq!(
            GgmlType::block_of_id(t.id()),
            Some((t.block_len(), t.block_bytes()))
        );
        assert_eq!(t.name().to_lowercase().parse::<GgmlType>().unwrap(), t);
    }
    assert_eq!(GgmlType::Q4_K.id(), 12);
    assert_eq!(GgmlType::BF16.id(), 30);
    assert_eq!(GgmlType::from_id(23), None);
    assert_eq!(GgmlType::name_of_id(23), Some("IQ4_XS"));
    assert_eq!(GgmlType::name_of_id(36), None);
    assert_eq!(GgmlType::block_of_id(23), Some((256, 136)));
    assert_eq!(GgmlType::block_of_id(4), None);
    assert_eq!(GgmlType::Q6_K.byte_len(512), Some(420));
    assert_eq!(GgmlType::Q8_0.byte_len(33), None);
    assert_eq!(GgmlType::F32.byte_len(u64::MAX / 2), None);
    assert_eq!(GgmlType::F16.plain_dtype(), Some(Dtype::F16));
    assert_eq!(GgmlType::Q5_1.plain_dtype(), None);
    let err = "q4_k_m".parse::<GgmlType>().unwrap_err().to_string();
    assert!(err.contains("`q4_k_m`") && err.contains("Q4_K"), "{err}");
}

#[test]
fn a_q8_0_block_by_hand() {
    // amax 2.54 → d = 0.02 → codes = round(x / 0.02), half away from zero.
    let mut x = [0f32; 32];
    x[0] = 2.54;
    x[1] = -1.0;
    x[2] = 0.01; // 0.5 → 1 (away from zero)
    x[3] = -0.03; // -1.5 → -2
    let mut b = [0u8; 34];
    legacy::encode_q8_0(&x, &mut b);
    let d = 2.54f32 / 127.0;
    assert_eq!(b[0..2], half::f16::from_f32(d).to_le_bytes());
    let id = 1.0 / d;
    let want = |v: f32| (v * id).round() as i8 as u8;
    assert_eq!(b[2..6], [want(2.54), want(-1.0), want(0.01), want(-0.03)]);
    assert_eq!(b[2], 127);
    let mut y = [0f32; 32];
    legacy::decode_q8_0(&b, &mut y);
    let d16 = half::f16::from_f32(d).to_f32();
    assert_eq!(y[0], 127.0 * d16);
    assert_eq!(y[1], (b[3] as i8) as f32 * d16);
}

#[test]
fn a_q4_0_block_by_hand() {
    // The value of largest magnitude (the first of ties) sets d = max / -8.
    let mut x = [0.5f32; 32];
    x[5] = -4.0;
    x[6] = 4.0;
    let mut b = [0u8; 18];
    legacy::encode_q4_0(&x, &mut b);
    assert_eq!(f16_at(&b, 0), 0.5); // -4 / -8
                                    // 0.5 · 2 + 8.5 = 9.5 → 9; -4 · 2 + 8.5 = 0.5 → 0; 4 · 2 + 8.5 = 16.5 → 16 → 15.
    assert_eq!(b[2 + 5] & 0xF, 0);
    assert_eq!(b[2 + 6] & 0xF, 15);
    assert_eq!(b[2] & 0xF, 9);
    let mut y = [0f32; 32];
    legacy::decode_q4_0(&b, &mut y);
    assert_eq!((y[0], y[5], y[6]), (0.5, -4.0, 3.5));
}

#[test]
fn blocks_of_subnormals_code_as_x86_converts_infinity() {
    // amax / 127 is a nonzero f32 whose reciprocal overflows: x · inf converts to 0x8000_0000,
    // whose low byte is 0, as ggml's C code on x86-64 writes it.
    let x = [1e-41f32; 32];
    let mut b = [0xFFu8; 34];
    legacy::encode_q8_0(&x, &mut b);
    assert_eq!(b[0..2], [0, 0]);
    assert!(b[2..].iter().all(|&c| c == 0));
    let mut b = [0xFFu8; 18];
    legacy::encode_q4_0(&x, &mut b);
    assert!(b[2..].iter().all(|&c| c == 0));
}

#[test]
fn bf16_keeps_nan_sign_and_rounds_to_even() {
    assert_eq!(legacy::bf16_bits(1.0), 0x3F80);
    assert_eq!(legacy::bf16_bits(f32::from_bits(0x3F80_8000)), 0x3F80); // tie to even
    assert_eq!(legacy::bf16_bits(f32::from_bits(0x3F81_8000)), 0x3F82);
    assert_eq!(legacy::bf16_bits(f32::from_bits(0xFF80_0001)), 0xFFC0);
    assert_eq!(legacy::bf16_bits(f32::INFINITY), 0x7F80);
}

/// The K-quant types, whose blocks are super-blocks of 256 with a scale search per sub-block.
const K_QUANTS: [GgmlType; 5] = [
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

#[test]
fn k_quant_blocks_of_zeros_are_zeros() {
    let x = [0f32; QK_K];
    let mut codes = vec![0xEEu8; 210];
    for t in K_QUANTS {
        let codes = &mut codes[..t.block_bytes()];
        encode(t, &x, codes);
        let mut y = [1f32; QK_K];
        decode(t, codes, &mut y);
        assert!(y.iter().all(|&v| v == 0.0), "{t}");
    }
}

#[test]
fn a_ggml_layout_has_one_member_and_block_spans() {
    let l = QuantLayout::new("blk", Format::Ggml(GgmlType::Q4_K), &[3, 512]).unwrap();
    let members = l.members();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].role, Role::Codes);
    assert_eq!(members[0].dtype, Dtype::U8);
    assert_eq!(members[0].shape, vec![3, 288]);
    assert!(l.reductions().is_empty());
    assert_eq!(l.description(), None);
    assert_eq!(l.write_unit(), 256);
    let s = l.read_span(300..700).unwrap();
    assert_eq!(
        (s.elements, s.codes, s.block_scales),
        (256..768, 144..432, 0..0)
    );
    let s = l.read_span(5..5).unwrap();
    assert!(s.elements.is_empty() && s.codes.is_empty());
    let err = l.write_span(0..100).unwrap_err().to_string();
    assert!(err.contains("whole blocks of 256"), "{err}");
    let plain = QuantLayout::new("b", Format::Ggml(GgmlType::BF16), &[3, 5]).unwrap();
    assert_eq!(plain.members()[0].dtype, Dtype::BF16);
    assert_eq!(plain.members()[0].shape, vec![3, 5]);
    assert_eq!(plain.read_span(4..9).unwrap().codes, 8..18);
    assert!(l.fresh_scales(&Default::default(), Precision::F32).is_ok());
}

#[test]
fn rows_that_are_not_whole_blocks_are_refused() {
    let err = QuantLayout::new("conv", Format::Ggml(GgmlType::Q8_0), &[64, 4, 3, 3])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("conv") && err.contains("blocks of 32") && err.contains("F16"),
        "{err}"
    );
    assert!(QuantLayout::new("b", Format::Ggml(GgmlType::F32), &[7]).is_ok());
}

#[test]
fn stored_ggml_codes_give_their_logical_shape() {
    let shape = [4usize, 420];
    let members = [StoredMember {
        name: "weight",
        dtype: Dtype::U8,
        shape: &shape,
    }];
    let l = QuantLayout::from_stored("x", Format::Ggml(GgmlType::Q6_K), &members, None).unwrap();
    assert_eq!(l.shape(), &[4, 512]);
    let bad = [4usize, 400];
    let members = [StoredMember {
        name: "weight",
        dtype: Dtype::U8,
        shape: &bad,
    }];
    let err = QuantLayout::from_stored("x", Format::Ggml(GgmlType::Q6_K), &members, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("210-byte blocks"), "{err}");
    let scale: [usize; 0] = [];
    let members = [
        StoredMember {
            name: "weight",
            dtype: Dtype::U8,
            shape: &shape,
        },
        StoredMember {
            name: "weight_scale",
            dtype: Dtype::F32,
            shape: &scale,
        },
    ];
    assert!(QuantLayout::from_stored("x", Format::Ggml(GgmlType::Q6_K), &members, None).is_err());
}

#[test]
fn decode_and_encode_check_their_buffers() {
    let l = QuantLayout::new("t", Format::Ggml(GgmlType::Q8_0), &[64]).unwrap();
    let span = l.read_span(0..64).unwrap();
    let mut out = vec![0f32; 64];
    let err = l
        .decode(
            &Scales::none(),
            Precision::F32,
            &span,
            &[0; 67],
            &[],
            &mut out,
        )
        .unwrap_err();
    assert!(err.to_string().contains("do not fit"), "{err}");
    let mut codes = vec![0u8; 68];
    l.encode(
        &Scales::none(),
        Precision::F32,
        &span,
        &out,
        &mut codes,
        &mut [],
    )
    .unwrap();
}

#[test]
fn the_portable_and_dispatched_encoders_write_the_same_bytes() {
    use rand::{Rng, SeedableRng};
    // The integration tests pin `encode` (AVX-512 or AVX2 where the CPU has it) to ggml's bytes;
    // this pins the portable path, which CPUs without AVX2 run, and the AVX2 one to `encode`.
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    // 63 super-blocks: the wide encoders search eight at a time, then four, then one.
    let values: Vec<f32> = (0..63 * QK_K)
        .map(|i| {
            let block = i / QK_K;
            let v: f32 = rng.random_range(-1.0..1.0);
            match block % 4 {
                0 => v * 0.02,
                1 => v * v * v * 3.0,
                2 if i % 7 == 0 => v,
                2 => 0.0,
                _ => v.abs() * 1e-3 + 0.1,
            }
        })
        .collect();
    for t in GgmlType::ALL {
        let n = values.len() / t.block_len() * t.block_bytes();
        let (mut a, mut b) = (vec![0u8; n], vec![1u8; n]);
        encode(t, &values, &mut a);
        // SAFETY: the portable searches need no CPU feature.
        unsafe { encode_any::<lanes::Portable>(t, &values, &mut b) };
        assert!(a == b, "{t}");
        // Where `encode` takes AVX-512, the AVX2 path (CPUs without it) is pinned too.
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            b.fill(1);
            // SAFETY: the CPU has AVX2.
            unsafe { encode_avx2(t, &values, &mut b) };
            assert!(a == b, "{t} (AVX2)");
        }
    }
}

/// Q8_0 blocks that test every rule of the scalar encoder: ties at a half (either sign, both
/// sides of zero), values just below a half, blocks with NaN (first, last, alone), infinity,
/// subnormal maxima whose reciprocal overflows, the largest floats, zeros: the dispatched
/// encoder (AVX-512 where the CPU has it) writes the scalar encoder's bytes.
#[test]
fn q8_0_blocks_with_every_rounding_case_encode_as_the_scalar_encoder() {
    let mut blocks: Vec<[f32; 32]> = Vec::new();
    // amax 127 makes the scale 1: the values are the products that get rounded.
    let mut ties = [0f32; 32];
    for (i, v) in ties.iter_mut().enumerate() {
        let k = i as f32 - 16.0;
        *v = k + if i % 2 == 0 { 0.5 } else { -0.5 };
    }
    ties[0] = 127.0;
    ties[31] = -126.5;
    blocks.push(ties);
    let mut below = [0.499_999_97f32; 32];
    below[1] = -0.499_999_97;
    below[2] = 127.0;
    below[3] = 2.499_999_8;
    blocks.push(below);
    for at in [0, 13, 31] {
        let mut b = [1.5f32; 32];
        b[at] = f32::NAN;
        b[(at + 7) % 32] = -3.0;
        blocks.push(b);
    }
    blocks.push([f32::NAN; 32]);
    let mut inf = [2.0f32; 32];
    inf[5] = f32::INFINITY;
    inf[6] = f32::NEG_INFINITY;
    blocks.push(inf);
    let mut tiny = [0f32; 32];
    tiny[0] = 1e-44;
    tiny[1] = -3e-45;
    tiny[2] = 1e-45;
    blocks.push(tiny);
    let mut sub = [1e-39f32; 32];
    sub[9] = -2e-39;
    blocks.push(sub);
    let mut big = [f32::MAX; 32];
    big[3] = -f32::MAX;
    big[4] = 1.0;
    blocks.push(big);
    blocks.push([0.0; 32]);
    blocks.push([-0.0; 32]);
    let values: Vec<f32> = blocks.iter().flatten().copied().collect();
    let mut got = vec![0u8; blocks.len() * 34];
    encode(GgmlType::Q8_0, &values, &mut got);
    for (i, (x, g)) in blocks.iter().zip(got.chunks_exact(34)).enumerate() {
        let mut want = [0u8; 34];
        legacy::encode_q8_0(x, &mut want);
        assert_eq!(g, &want[..], "block {i}: {x:?}");
    }
}

/// Where a sub-block's scale quantizes to zero, ggml keeps its search's codes (the only codes
/// not re-made against the quantized scales): the encoders (eight super-blocks at once, four,
/// one) make them again from what the search found (Q6_K: read them out of the search's lanes),
/// equal to the one-group search's codes.
#[test]
fn a_sub_block_whose_scale_quantizes_to_zero_keeps_the_search_codes() {
    use kquants::{Q2_K, Q4_K, Q5_K};
    use search::make_qkx2_quants;
    // Every super-block: its first 32 values tiny and uneven, the rest of magnitude 1.
    let blocks = 13;
    let values: Vec<f32> = (0..blocks * QK_K)
        .map(|i| {
            let (b, e) = (i / QK_K, i % QK_K);
            let wave = ((i * 37 + b * 11) % 29) as f32 - 9.5;
            if e < 32 {
                wave * 1e-6
            } else {
                wave / 10.0
            }
        })
        .collect();
    for t in K_QUANTS {
        let mut codes = vec![0u8; blocks * t.block_bytes()];
        encode(t, &values, &mut codes);
        for (x, b) in values
            .chunks_exact(QK_K)
            .zip(codes.chunks_exact(t.block_bytes()))
        {
            let g: &[f32; 32] = x[..32].try_into().unwrap();
            let (scale, got, want): (u8, Vec<u8>, Vec<u8>) = match t {
                GgmlType::Q2_K => {
                    // Sub-block 0 is values 0..16, weighted by |x|; codes in the low bits.
                    let g: &[f32; 16] = g[..16].try_into().unwrap();
                    let mut l = [0u8; 16];
                    make_qkx2_quants(Q2_K, g, &g.map(f32::abs), &mut l);
                    let got = (0..16).map(|e| b[16 + e] & 3).collect();
                    (b[0] & 0xF, got, l.to_vec())
                }
                GgmlType::Q3_K => {
                    // Sub-block 0 is values 0..16: two low bits in `qs` (from byte 32), the
                    // third in bit 0 of `hmask`; its 6-bit scale (offset 32) in the low nibble
                    // of scale byte 0 and the low two bits of scale byte 8 (from byte 96).
                    let g: &[f32; 16] = g[..16].try_into().unwrap();
                    let mut l = [0i8; 16];
                    search::make_q3_quants(4, g, &mut l);
                    let got = (0..16)
                        .map(|e| (b[32 + e] & 3) | ((b[e] & 1) << 2))
                        .collect();
                    let scale = (b[96] & 0xF) | ((b[104] & 3) << 4);
                    (scale.wrapping_sub(32), got, l.map(|c| c as u8).to_vec())
                }
                GgmlType::Q6_K => {
                    // Sub-block 0 is values 0..16: low nibbles in `ql`, high bits in `qh`.
                    let g: &[f32; 16] = g[..16].try_into().unwrap();
                    let mut l = [0i8; 16];
                    search::make_qx_quants(32, g, &mut l);
                    let got = (0..16)
                        .map(|e| (b[e] & 0xF) | ((b[128 + e] & 3) << 4))
                        .collect();
                    (b[192], got, l.map(|c| c as u8).to_vec())
                }
                _ => {
                    let av = (g.iter().map(|v| v * v).sum::<f32>() / 32.0).sqrt();
                    let w = g.map(|v| av + v.abs());
                    let mut l = [0u8; 32];
                    let got: Vec<u8> = if t == GgmlType::Q4_K {
                        make_qkx2_quants(Q4_K, g, &w, &mut l);
                        (0..32).map(|e| b[16 + e] & 0xF).collect()
                    } else {
                        make_qkx2_quants(Q5_K, g, &w, &mut l);
                        (0..32)
                            .map(|e| (b[48 + e] & 0xF) | ((b[16 + e] & 1) << 4))
                            .collect()
                    };
                    (b[4] & 63, got, l.to_vec())
                }
            };
            assert_eq!(
                scale, 0,
                "{t}: the test needs a scale that quantizes to zero"
            );
            assert!(want.iter().any(|&c| c != 0), "{t}: the test needs codes");
            assert_eq!(got, want, "{t}");
        }
    }
}
