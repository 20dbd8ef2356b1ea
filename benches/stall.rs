//! Stall of background checkpoints in a training loop, against a host copy of the same bytes.
//!
//! Runs the example's MLP training loop (momentum SGD, CPU) for `STALL_STEPS` steps without
//! saving and with a checkpoint every `STALL_EVERY` steps, interleaved over `STALL_ROUNDS`
//! rounds so background load from other programs hits both alike. Reports the step-time
//! distributions, the extra time per save ((saving run − plain run, final wait included) / saves)
//! and the time of a host copy of all checkpointed tensors (`Tensor::copy`, the snapshot's own
//! primitive) measured in the same process. Target on CPU: extra per save ≤ 1.2 × host copy.
//!
//! `cargo bench --bench stall` (environment: STALL_WIDTH, STALL_DEPTH, STALL_STEPS, STALL_EVERY,
//! STALL_ROUNDS).

#[path = "../examples/shared/mlp.rs"]
mod mlp;

use std::time::Instant;

use candle_core::Device;
use checkpoint_save::checkpointer::Checkpointer;
use rayon::prelude::*;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `steps` steps; returns per-step milliseconds, saving-step flags and total seconds.
fn run(
    trainer: &mut mlp::Trainer,
    ck: Option<&mut Checkpointer>,
    steps: u64,
    every: u64,
    first: u64,
) -> (Vec<f64>, Vec<f64>, f64, usize) {
    let (mut plain, mut during) = (Vec::new(), Vec::new());
    let start = Instant::now();
    let mut saves = 0;
    let mut ck = ck;
    for step in first..first + steps {
        let t = Instant::now();
        let busy = ck.as_ref().is_some_and(|c| c.is_saving());
        let loss = trainer.step().expect("training step");
        let mut saved = false;
        if let Some(c) = ck.as_deref_mut() {
            if step % every == 0 {
                let extra = [("optim.", &trainer.optim)];
                c.save_with_extra(&trainer.varmap, extra, step, Some(f64::from(loss)))
                    .expect("save");
                saves += 1;
                saved = true;
            }
        }
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if saved || busy {
            during.push(ms);
        } else {
            plain.push(ms);
        }
    }
    if let Some(c) = ck {
        c.wait().expect("background save");
    }
    (plain, during, start.elapsed().as_secs_f64(), saves)
}

fn main() {
    let width = env("STALL_WIDTH", 2048);
    let depth = env("STALL_DEPTH", 3);
    let steps = env("STALL_STEPS", 40) as u64;
    let every = env("STALL_EVERY", 10).max(1) as u64;
    let rounds = env("STALL_ROUNDS", 2);
    let device = Device::Cpu;
    let mut trainer = mlp::Trainer::new(width, depth, &device).expect("model");
    let bytes = trainer.bytes();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut ck = Checkpointer::builder(dir.path())
        .stem("bench")
        .keep_last(1)
        .build()
        .expect("checkpointer");
    println!(
        "width {width} depth {depth}: {:.1} MiB per checkpoint, {steps} steps per run, save every {every}",
        bytes as f64 / (1 << 20) as f64
    );
    // Warm up (page cache, allocator).
    run(&mut trainer, Some(&mut ck), every, every, 1);

    let (mut base_steps, mut save_plain, mut save_during) = (Vec::new(), Vec::new(), Vec::new());
    let (mut base_total, mut save_total, mut saves) = (0.0, 0.0, 0);
    let mut copies = Vec::new();
    let mut next = 1_000_000u64;
    for _ in 0..rounds {
        let (p, d, t, _) = run(&mut trainer, None, steps, every, next);
        base_steps.extend(p);
        base_steps.extend(d);
        base_total += t;
        let (p, d, t, n) = run(&mut trainer, Some(&mut ck), steps, every, next + steps);
        save_plain.extend(p);
        save_during.extend(d);
        save_total += t;
        saves += n;
        next += 2 * steps;
        // The host copy of the same tensors, as the snapshot does it (parallel Tensor::copy).
        for _ in 0..3 {
            let t = Instant::now();
            let vars: Vec<_> = [&trainer.varmap, &trainer.optim]
                .iter()
                .flat_map(|vm| vm.all_vars())
                .collect();
            let copied: Vec<_> = vars
                .par_iter()
                .map(|v| v.as_tensor().copy().expect("copy"))
                .collect();
            copies.push(t.elapsed().as_secs_f64());
            drop(copied);
        }
    }
    ck.finish().expect("finish");
    copies.sort_by(f64::total_cmp);
    let copy = copies[copies.len() / 2];
    let extra = (save_total - base_total) / saves.max(1) as f64;
    // Robust to outside load that hits whole runs: the saving run's save/overlap steps against
    // the median step of the plain runs.
    let base_p50 = mlp::stats(&mut base_steps.clone()).1 / 1e3;
    let during_total: f64 = save_during.iter().sum::<f64>() / 1e3;
    let extra_median = (during_total - save_during.len() as f64 * base_p50) / saves.max(1) as f64;
    for (what, v) in [
        ("no saving: all steps", &mut base_steps),
        ("saving: steps that saved or overlapped", &mut save_during),
        ("saving: other steps", &mut save_plain),
    ] {
        let n = v.len();
        let (mean, p50, p99) = mlp::stats(v);
        println!("{what:>40}: n={n:<4} mean {mean:8.2} ms  p50 {p50:8.2} ms  p99 {p99:8.2} ms");
    }
    println!(
        "total: no saving {base_total:.3} s, saving {save_total:.3} s, {saves} saves of {:.1} MiB",
        bytes as f64 / (1 << 20) as f64
    );
    println!(
        "extra per save {:.2} ms; host copy of the same bytes {:.2} ms ({:.2} GB/s); ratio {:.2} (target ≤ 1.2)",
        extra * 1e3,
        copy * 1e3,
        bytes as f64 / copy / 1e9,
        extra / copy
    );
    println!(
        "extra per save against the median plain step {:.2} ms; ratio {:.2}",
        extra_median * 1e3,
        extra_median / copy
    );
}
