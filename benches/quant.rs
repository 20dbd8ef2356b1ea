//! Single-core throughput of the quantized-format codecs, span by span as a streaming engine
//! calls them: a 2048 × 2048 weight of bf16 values (given as f32), encoded and decoded in bands
//! of 128 rows. Reported as elements per second; one element is 2 bytes of bf16 input.

use checkpoint_save::quant::{Format, Fp8, Precision, QuantLayout, Role};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::hint::black_box;

const ROWS: usize = 2048;
const COLS: usize = 2048;
const BAND: u64 = 128 * COLS as u64;

/// bf16-representable normal values with a spread of magnitudes.
fn values() -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(3);
    (0..ROWS * COLS)
        .map(|_| {
            let v: f32 = rng.random_range(-1.0..1.0) * 0.05;
            half::bf16::from_f32(v).to_f32()
        })
        .collect()
}

fn member_len(layout: &QuantLayout, role: Role) -> usize {
    layout
        .members()
        .iter()
        .find(|m| m.role == role)
        .map_or(0, |m| {
            m.shape.iter().product::<usize>() * m.dtype.bitsize() / 8
        })
}

fn bench_codecs(c: &mut Criterion) {
    let values = values();
    let mut group = c.benchmark_group("quant");
    group.sample_size(10);
    group.throughput(Throughput::Elements((ROWS * COLS) as u64));
    for format in [
        Format::Float8(Fp8::E4M3),
        Format::Int8Tensorwise,
        Format::Mxfp8,
        Format::Nvfp4,
    ] {
        let layout = QuantLayout::new("bench", format, &[ROWS, COLS]).expect("2-D");
        let mut reducer = layout.reducer();
        reducer
            .update(0..values.len() as u64, &values)
            .expect("whole tensor");
        let scales = layout
            .fresh_scales(&reducer.finish(), Precision::Bf16)
            .expect("non-zero weight");
        let mut codes = vec![0u8; member_len(&layout, Role::Codes)];
        let mut block_scales = vec![0u8; member_len(&layout, Role::BlockScales)];
        let name = format.comfy_name().unwrap_or("?");
        group.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| {
                for start in (0..layout.numel()).step_by(BAND as usize) {
                    let span = layout.write_span(start..start + BAND).expect("band");
                    let (c, s) = (span.codes.clone(), span.block_scales.clone());
                    layout
                        .encode(
                            &scales,
                            Precision::Bf16,
                            &span,
                            black_box(&values[start as usize..(start + BAND) as usize]),
                            &mut codes[c.start as usize..c.end as usize],
                            &mut block_scales[s.start as usize..s.end as usize],
                        )
                        .expect("encode");
                }
            })
        });
        let mut out = vec![0f32; BAND as usize];
        group.bench_function(format!("decode-bf16/{name}"), |b| {
            b.iter(|| {
                for start in (0..layout.numel()).step_by(BAND as usize) {
                    let span = layout.read_span(start..start + BAND).expect("band");
                    let (c, s) = (span.codes.clone(), span.block_scales.clone());
                    layout
                        .decode(
                            &scales,
                            Precision::Bf16,
                            &span,
                            black_box(&codes[c.start as usize..c.end as usize]),
                            &block_scales[s.start as usize..s.end as usize],
                            &mut out,
                        )
                        .expect("decode");
                }
                black_box(&out);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_codecs);
criterion_main!(benches);
