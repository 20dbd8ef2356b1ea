//! A candle training loop that checkpoints in the background and resumes.
//!
//! ```text
//! cargo run --release --example train_loop -- --dir runs/a --steps 200 --every 20 --width 512
//! cargo run --release --example train_loop -- --dir runs/a --steps 400 --every 20 --width 512 --resume
//! ```
//!
//! Prints the step-time distribution of steps that called `save` (the snapshot stall), steps that
//! ran while a background write was in flight, and steps that ran alone.

#[path = "shared/mlp.rs"]
mod mlp;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use checkpoint_save::checkpointer::{self, Checkpointer, InFlight, MetricOrder, SaveOutcome};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Checkpoint folder.
    #[arg(long, default_value = "checkpoints")]
    dir: PathBuf,
    /// Train until this step.
    #[arg(long, default_value_t = 200)]
    steps: u64,
    /// Checkpoint every N steps (0: never).
    #[arg(long, default_value_t = 50)]
    every: u64,
    /// Hidden width (model size).
    #[arg(long, default_value_t = 256)]
    width: usize,
    /// Hidden layers.
    #[arg(long, default_value_t = 3)]
    depth: usize,
    /// Checkpoints kept besides the best one.
    #[arg(long, default_value_t = 3)]
    keep: usize,
    /// Skip a checkpoint while the previous one is still being written (default: wait).
    #[arg(long)]
    skip: bool,
    /// Continue from the newest checkpoint in --dir, if any.
    #[arg(long)]
    resume: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let device = Device::Cpu;
    let mut trainer = mlp::Trainer::new(args.width, args.depth, &device)?;
    let mut first = 1;
    if args.resume {
        match checkpointer::load_latest(&args.dir, Some("train"))? {
            Some(r) => {
                r.load_into(&trainer.varmap, &device)
                    .context("restoring the weights")?;
                checkpointer::load_into(&trainer.optim, &r.extra("optim.", &device)?)
                    .context("restoring the optimizer state")?;
                println!("resumed from step {} ({})", r.step, r.path.display());
                first = r.step + 1;
            }
            None => println!(
                "nothing to resume in {}; starting fresh",
                args.dir.display()
            ),
        }
    }
    let mut ck = Checkpointer::builder(&args.dir)
        .stem("train")
        .keep_last(args.keep.max(1))
        .keep_best(1, MetricOrder::LowerIsBetter)
        .in_flight(if args.skip {
            InFlight::Skip
        } else {
            InFlight::Wait
        })
        .build()?;
    println!(
        "width {} depth {}: {:.1} MiB of weights and momentum per checkpoint",
        args.width,
        args.depth,
        trainer.bytes() as f64 / (1 << 20) as f64
    );
    let (mut saving, mut overlapped, mut alone) = (Vec::new(), Vec::new(), Vec::new());
    let (mut stalls, mut waits) = (Vec::new(), Vec::new());
    let mut loss = f32::NAN;
    for step in first..=args.steps {
        let start = Instant::now();
        let busy = ck.is_saving();
        loss = trainer.step()?;
        let mut saved = false;
        if args.every > 0 && step % args.every == 0 {
            let extra = [("optim.", &trainer.optim)];
            match ck.save_with_extra(&trainer.varmap, extra, step, Some(f64::from(loss)))? {
                SaveOutcome::Started {
                    snapshot, waited, ..
                } => {
                    stalls.push(snapshot.as_secs_f64() * 1e3);
                    waits.push(waited.as_secs_f64() * 1e3);
                    saved = true;
                }
                SaveOutcome::Skipped { in_flight_step, .. } => {
                    println!("step {step}: skipped, step {in_flight_step} still being written")
                }
            }
        }
        let ms = start.elapsed().as_secs_f64() * 1e3;
        match (saved, busy) {
            (true, _) => saving.push(ms),
            (false, true) => overlapped.push(ms),
            (false, false) => alone.push(ms),
        }
    }
    let last = ck.finish()?;
    println!("final loss {loss:.5}");
    if let Some(done) = last {
        println!(
            "last checkpoint: step {} → {} ({} bytes)",
            done.entry.step,
            done.path.display(),
            done.entry.bytes
        );
    }
    for (what, v) in [
        ("steps that saved (snapshot stall)", &mut saving),
        ("steps during a background write", &mut overlapped),
        ("steps without saving", &mut alone),
        ("snapshot stall alone", &mut stalls),
        ("waiting for the previous write", &mut waits),
    ] {
        let n = v.len();
        let (mean, p50, p99) = mlp::stats(v);
        println!("{what:>36}: n={n:<5} mean {mean:8.3} ms  p50 {p50:8.3} ms  p99 {p99:8.3} ms");
    }
    Ok(())
}
