//! ggml's block formats against their references, through the quantized-tensor interface
//! (`QuantLayout` spans, `encode`, `decode`) as a streaming engine drives it: codes equal ggml's
//! reference quantizers (`quantize_row_*_ref`, compiled from ggml's sources; gguf-py's for F16
//! and BF16) bit for bit, and values equal gguf-py's dequantization bit for bit. The fixtures in
//! `tests/fixtures/gguf/` were made by `make_fixtures.py` there.

use std::ops::Range;

use checkpoint_save::quant::{Format, GgmlType, Precision, QuantLayout, Scales};
use safetensors::SafeTensors;
use sha2::{Digest, Sha256};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gguf");

fn read(name: &str) -> Vec<u8> {
    std::fs::read(format!("{DIR}/{name}")).unwrap()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn layout(t: GgmlType, numel: usize) -> QuantLayout {
    QuantLayout::new("t", Format::Ggml(t), &[numel / 256, 256]).unwrap()
}

/// Cuts `0..numel` into write spans of 1, 2, 3, … blocks, as a writer filling ranges would.
fn write_ranges(t: GgmlType, numel: u64) -> Vec<Range<u64>> {
    let block = t.block_len() as u64;
    let (mut out, mut at, mut n) = (Vec::new(), 0, 1);
    while at < numel {
        let end = (at + n * block).min(numel);
        out.push(at..end);
        at = end;
        n = n % 5 + 1;
    }
    out
}

/// Encodes `values` range by range through `write_span`.
fn encode(t: GgmlType, values: &[f32]) -> Vec<u8> {
    let layout = layout(t, values.len());
    let total = t.byte_len(values.len() as u64).unwrap() as usize;
    let mut codes = vec![0xAAu8; total];
    for range in write_ranges(t, values.len() as u64) {
        let span = layout.write_span(range).unwrap();
        assert!(span.block_scales.is_empty());
        let (e, c) = (span.elements.clone(), span.codes.clone());
        layout
            .encode(
                &Scales::none(),
                Precision::F32,
                &span,
                &values[e.start as usize..e.end as usize],
                &mut codes[c.start as usize..c.end as usize],
                &mut [],
            )
            .unwrap();
    }
    codes
}

/// Decodes every value, asking for ranges that start and end inside blocks: each read span is
/// rounded out to whole blocks and only the asked values are kept.
fn decode(t: GgmlType, codes: &[u8], numel: usize, precision: Precision) -> Vec<f32> {
    let layout = layout(t, numel);
    let mut out = vec![f32::NAN; numel];
    let step = (t.block_len() as u64 * 3 / 2).max(7);
    let mut at = 0u64;
    while at < numel as u64 {
        let want = at..(at + step).min(numel as u64);
        let span = layout.read_span(want.clone()).unwrap();
        assert!(span.elements.start <= want.start && span.elements.end >= want.end);
        let (e, c) = (span.elements.clone(), span.codes.clone());
        let mut buf = vec![0f32; (e.end - e.start) as usize];
        layout
            .decode(
                &Scales::none(),
                precision,
                &span,
                &codes[c.start as usize..c.end as usize],
                &[],
                &mut buf,
            )
            .unwrap();
        let from = (want.start - e.start) as usize;
        out[want.start as usize..want.end as usize]
            .copy_from_slice(&buf[from..from + (want.end - want.start) as usize]);
        at = want.end;
    }
    out
}

fn input() -> Vec<f32> {
    let bytes = read("inputs.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    f32s(st.tensor("input").unwrap().data())
}

#[test]
fn codes_equal_the_reference_quantizers() {
    let x = input();
    let bytes = read("codes.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for t in GgmlType::ALL {
        let got = encode(t, &x);
        let want = match t {
            GgmlType::F32 => f32_bytes(&x),
            _ => st.tensor(t.name()).unwrap().data().to_vec(),
        };
        assert_eq!(got.len(), want.len(), "{t}");
        if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
            let block = i / t.block_bytes();
            panic!(
                "{t}: byte {i} (block {block}, input row {}) is {:#04x}, the reference wrote {:#04x}",
                block * t.block_len() / 256,
                got[i],
                want[i]
            );
        }
    }
}

#[test]
fn values_equal_gguf_py_dequantization() {
    let bytes = read("values.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for t in GgmlType::ALL {
        let codes = st.tensor(&format!("{}.codes", t.name())).unwrap().data();
        let want = f32s(st.tensor(&format!("{}.values", t.name())).unwrap().data());
        let got = decode(t, codes, want.len(), Precision::F32);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{t} value {i}: {g:e} vs gguf-py's {w:e}"
            );
        }
    }
}

#[test]
fn values_in_bf16_and_f16_are_gguf_py_values_rounded() {
    let bytes = read("values.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for t in [GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::Q6_K] {
        let codes = st.tensor(&format!("{}.codes", t.name())).unwrap().data();
        let want = f32s(st.tensor(&format!("{}.values", t.name())).unwrap().data());
        let bf16 = decode(t, codes, want.len(), Precision::Bf16);
        let f16 = decode(t, codes, want.len(), Precision::F16);
        for ((w, b), h) in want.iter().zip(&bf16).zip(&f16) {
            assert_eq!(
                half::bf16::from_f32(*w).to_f32().to_bits(),
                b.to_bits(),
                "{t}"
            );
            assert_eq!(
                half::f16::from_f32(*w).to_f32().to_bits(),
                h.to_bits(),
                "{t}"
            );
        }
    }
}

/// splitmix64 of state `seed + (i + 1) · golden` (`splitmix` of make_fixtures.py).
fn splitmix(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add((i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `generated` of make_fixtures.py: super-blocks of four kinds with their own power-of-two scale.
fn generated(n: u64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let z = splitmix(0x5EED, i);
            let c = (z >> 40) as f32 / 16_777_216.0 - 0.5;
            let b = i / 256;
            let exponent = (splitmix(0xB10C, b) >> 59) as i32 - 20;
            let scale = f32::from_bits(((127 + exponent) as u32) << 23);
            match b % 4 {
                0 => c * scale,
                1 => c * c * c * scale,
                2 if z & 7 == 0 => c * scale,
                2 => 0.0,
                _ => (c + 0.5) * scale + scale,
            }
        })
        .collect()
}

#[test]
fn many_generated_blocks_hash_as_the_reference() {
    let hashes: serde_json::Value = serde_json::from_slice(&read("hashes.json")).unwrap();
    let n = hashes["values"].as_u64().unwrap();
    let x = generated(n);
    assert_eq!(
        sha(&f32_bytes(&x)),
        hashes["input_sha256"].as_str().unwrap(),
        "the generator differs from make_fixtures.py's"
    );
    for t in GgmlType::ALL {
        let want = &hashes["types"][t.name()];
        let codes = encode(t, &x);
        assert_eq!(sha(&codes), want["codes"].as_str().unwrap(), "{t} codes");
        let values = decode(t, &codes, x.len(), Precision::F32);
        assert_eq!(
            sha(&f32_bytes(&values)),
            want["values"].as_str().unwrap(),
            "{t} values"
        );
    }
}

#[test]
fn quantized_then_dequantized_values_are_close() {
    // A sanity bound independent of the fixtures: relative RMS error per type on normal data.
    let x: Vec<f32> = generated(4096)
        .chunks(256)
        .step_by(4)
        .flatten()
        .copied()
        .collect();
    let bound = |t: GgmlType| match t {
        GgmlType::F32 => 0.0,
        GgmlType::F16 | GgmlType::BF16 => 0.004,
        GgmlType::Q8_0 => 0.01,
        GgmlType::Q6_K => 0.02,
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => 0.05,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K => 0.1,
        GgmlType::Q3_K => 0.2,
        _ => 0.4,
    };
    for t in GgmlType::ALL {
        let codes = encode(t, &x);
        let y = decode(t, &codes, x.len(), Precision::F32);
        let err: f64 = x
            .iter()
            .zip(&y)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum();
        let norm: f64 = x.iter().map(|a| f64::from(*a).powi(2)).sum();
        let rel = (err / norm).sqrt();
        assert!(rel <= bound(t), "{t}: relative error {rel}");
    }
}
