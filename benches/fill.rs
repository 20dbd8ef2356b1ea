//! Criterion bench of the chunk fill: staging a data-section range from tensors, cast fused.

use std::collections::BTreeMap;

use candle_core::{DType, Device};
use checkpoint_save::internal::{fill_range, Plan, PlanOptions, Scratch};
use checkpoint_save::synthetic::{self, SyntheticOptions};
use checkpoint_save::{lay_out, Arch, ComponentDtypes, LayoutChoice, TargetDtype};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const STEP: u64 = 1 << 20;

fn bench_fill(c: &mut Criterion) {
    let mut group = c.benchmark_group("fill");
    // An SD1.5 with every key and dimensions capped at 640: ~150 MB of f32, many small tensors.
    let model = synthetic::build(
        &SyntheticOptions::new(Arch::Sd15)
            .with_max_dim(640)
            .with_dtype(DType::F32),
        &Device::Cpu,
    )
    .expect("synthetic model");
    let (_, _, layout) = lay_out(&model, &LayoutChoice::Arch(Arch::Sd15), None).expect("layout");
    for target in [
        TargetDtype::F16,
        TargetDtype::BF16,
        TargetDtype::Keep,
        TargetDtype::F8E4M3,
    ] {
        let opts = PlanOptions {
            dtypes: ComponentDtypes::all(target),
            ..Default::default()
        };
        let plan = Plan::new(&layout, &model, &BTreeMap::new(), &opts).expect("plan");
        let mut out = vec![0u8; STEP as usize];
        let mut scratch = Scratch::default();
        group.throughput(Throughput::Bytes(plan.data_len()));
        group.bench_function(format!("sd15 f32 -> {target}, 1 MiB steps"), |b| {
            b.iter(|| {
                let mut at = 0;
                while at < plan.data_len() {
                    let end = (at + STEP).min(plan.data_len());
                    let out = &mut out[..(end - at) as usize];
                    fill_range(&plan, at..end, out, &mut scratch, |_, _| {}).expect("fill");
                    at = end;
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_fill);
criterion_main!(benches);
