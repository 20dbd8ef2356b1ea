//! Throughput of the CPU conversions the writer runs while filling staging chunks.
//!
//! Each case converts a 32 MiB source buffer of random, never-zero values and reports source bytes
//! per second; the save must keep these well above storage speed (2–3 GB/s per core). The `count`
//! group is the NaN/Inf count run over every tensor written straight from its storage.

use checkpoint_save::cast::{convert, count_non_finite};
use checkpoint_save::Dtype;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::hint::black_box;

const SRC_BYTES: usize = 32 << 20;

/// Random values in ±[0.01, 100): normal in every target format, never zero.
fn random_f32(n: usize) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(7);
    (0..n)
        .map(|_| {
            let v: f32 = rng.random_range(0.01..100.0);
            if rng.random::<bool>() {
                -v
            } else {
                v
            }
        })
        .collect()
}

/// `SRC_BYTES` of source data in `dtype`, made from random f32 values.
fn source(dtype: Dtype) -> Vec<u8> {
    let vals = random_f32(SRC_BYTES / (dtype.bitsize() / 8));
    let raw: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    if dtype == Dtype::F32 {
        return raw;
    }
    let mut out = vec![0u8; vals.len() * (dtype.bitsize() / 8)];
    convert("bench", &raw, Dtype::F32, &mut out, dtype).expect("supported cast");
    out
}

fn bench_cast(c: &mut Criterion) {
    let cases = [
        (Dtype::F32, Dtype::F16),
        (Dtype::F32, Dtype::BF16),
        (Dtype::F16, Dtype::F32),
        (Dtype::BF16, Dtype::F16),
        (Dtype::BF16, Dtype::F32),
        (Dtype::F32, Dtype::F8_E4M3),
        (Dtype::BF16, Dtype::BF16),
    ];
    let mut group = c.benchmark_group("cast");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(SRC_BYTES as u64));
    for (from, to) in cases {
        let src = source(from);
        let mut dst = vec![0u8; src.len() / (from.bitsize() / 8) * (to.bitsize() / 8)];
        group.bench_function(format!("{from}->{to}"), |b| {
            b.iter(|| {
                let n = convert("bench", black_box(&src), from, &mut dst, to).expect("supported");
                black_box(n)
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("count");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(SRC_BYTES as u64));
    for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
        let src = source(dtype);
        group.bench_function(format!("{dtype}"), |b| {
            b.iter(|| black_box(count_non_finite(black_box(&src), dtype)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_cast);
criterion_main!(benches);
