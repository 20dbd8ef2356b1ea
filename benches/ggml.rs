//! Single-core throughput of ggml's block codecs (`quant::ggml`), through the quantized-tensor
//! interface a streaming engine uses: encoding (ggml's reference quantizers, the K-quants'
//! scale searches included) and decoding (gguf-py's dequantization), in MB of f32 values per
//! second (4 bytes per value, whatever the type stores).
//!
//! Run: `cargo bench --bench ggml` (add `-- encode/Q4_K` for one case). The input is 1 MiB of
//! seeded values shaped like model weights (normal-ish, a few outliers, every block nonzero).

use checkpoint_save::quant::{Format, GgmlType, Precision, QuantLayout, Scales};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::hint::black_box;

const VALUES: usize = 1 << 18;

/// Sums of uniforms (close to normal), scaled like weights, with a rare outlier.
fn weights() -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(23);
    (0..VALUES)
        .map(|_| {
            let v: f32 = (0..4).map(|_| rng.random_range(-1.0f32..1.0)).sum::<f32>() * 0.02;
            if rng.random_range(0..1000) == 0 {
                v * 40.0
            } else {
                v
            }
        })
        .collect()
}

fn layout(t: GgmlType) -> QuantLayout {
    QuantLayout::new("bench", Format::Ggml(t), &[VALUES / 1024, 1024]).expect("whole blocks")
}

fn bench_ggml(c: &mut Criterion) {
    let x = weights();
    let mut group = c.benchmark_group("encode");
    group.sample_size(10);
    group.throughput(Throughput::Bytes((VALUES * 4) as u64));
    let mut all_codes = Vec::new();
    for t in GgmlType::ALL {
        let layout = layout(t);
        let span = layout.write_span(0..VALUES as u64).expect("whole tensor");
        let mut codes = vec![0u8; (span.codes.end - span.codes.start) as usize];
        group.bench_function(t.name(), |b| {
            b.iter(|| {
                layout
                    .encode(
                        &Scales::none(),
                        Precision::F32,
                        &span,
                        black_box(&x),
                        &mut codes,
                        &mut [],
                    )
                    .expect("encodes")
            })
        });
        all_codes.push((t, codes));
    }
    group.finish();
    let mut group = c.benchmark_group("decode");
    group.sample_size(10);
    group.throughput(Throughput::Bytes((VALUES * 4) as u64));
    let mut out = vec![0f32; VALUES];
    for (t, codes) in &all_codes {
        let layout = layout(*t);
        let span = layout.read_span(0..VALUES as u64).expect("whole tensor");
        group.bench_function(t.name(), |b| {
            b.iter(|| {
                layout
                    .decode(
                        &Scales::none(),
                        Precision::F32,
                        &span,
                        black_box(codes),
                        &[],
                        &mut out,
                    )
                    .expect("decodes")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_ggml);
criterion_main!(benches);
