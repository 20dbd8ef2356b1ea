//! The `bench` measurement: our save against candle's path and the storage ceiling, side by side.
//!
//! Every figure comes from one run on one machine, so the ratios are meaningful even where the
//! absolute numbers are noisy: after a warm-up, each of (a) our save, (b) candle's `to_dtype` +
//! `safetensors::save` on the same tensors and cast, and (c) raw writes of the same byte count
//! into the same folder is timed `runs` times, interleaved, and the median is reported. All three
//! end with the same `fsync`, so none is credited for leaving data in the page cache. (d), the
//! same parallel raw writes through `O_DIRECT`, is reported beside them but is not part of the
//! ceiling: it bounds what any writer, ours included, could reach in that folder. Peak extra
//! resident memory is read from `/proc/self/status` after resetting the peak (`clear_refs`).

mod raw;

use std::path::PathBuf;

use candle_core::Device;
use serde::Serialize;

use crate::error::{IoContext, Result};
use crate::model::{Arch, TargetDtype};
use crate::plan::ComponentDtypes;
use crate::save::{save_to_path, LayoutChoice, SaveOptions};
use crate::synthetic::{self, SyntheticOptions};
use crate::write::EngineOptions;
use raw::{
    accepts_direct_io, candle_save, random_block, raw_parallel, raw_sequential, remove, timed,
    Sample,
};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Synthetic architecture to build.
    pub arch: Arch,
    /// Dtype the checkpoint is saved in.
    pub dtype: TargetDtype,
    /// Dtype the synthetic model is built in (`None`: the reference's defaults, F32 denoiser).
    pub model_dtype: Option<candle_core::DType>,
    /// Folder written into (a tmpfs or a disk folder).
    pub output_dir: PathBuf,
    /// Timed repetitions of each measurement (after one warm-up).
    pub runs: usize,
    /// Engine settings of our save.
    pub engine: EngineOptions,
    /// Cap on every dimension (for quick runs); `None` is full size.
    pub max_dim: Option<usize>,
    /// Device the model lives on.
    pub device: Device,
}

/// One measured quantity: median seconds, throughput, peak extra resident memory.
#[derive(Debug, Clone, Serialize)]
pub struct Measure {
    /// Median wall time in seconds.
    pub median_s: f64,
    /// Every run's wall time in seconds.
    pub runs_s: Vec<f64>,
    /// Bytes per second (decimal GB/s) at the median.
    pub gbps: f64,
    /// Highest resident memory above the level before the run, in bytes.
    pub peak_rss_extra_bytes: u64,
    /// Median CPU time (user + system, all threads) in seconds: less sensitive than wall time to
    /// other load on a shared machine.
    pub cpu_s: f64,
}

/// The figures of one benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Architecture.
    pub arch: String,
    /// Saved dtype.
    pub dtype: String,
    /// Device of the model.
    pub device: String,
    /// Folder written into.
    pub output_dir: String,
    /// Checkpoint size in bytes.
    pub bytes: u64,
    /// Tensors in the checkpoint.
    pub tensors: usize,
    /// Worker threads of our save (and of the parallel ceiling).
    pub threads: usize,
    /// Chunk size of our save.
    pub chunk_size: u64,
    /// Staging budget of our save.
    pub staging_budget: u64,
    /// Our save.
    pub ours: Measure,
    /// candle's `to_dtype` + `safetensors::save` + fsync.
    pub candle: Measure,
    /// One sequential stream of large writes + fsync.
    pub ceiling_sequential: Measure,
    /// Parallel positional writes with `threads` threads + fsync.
    pub ceiling_parallel: Measure,
    /// The same parallel writes with direct I/O (`None` where the folder refuses it). Not part of
    /// the ceiling, which is buffered writes as specified; it shows what the storage takes when
    /// the page cache is bypassed, as our save does on disks.
    pub raw_direct: Option<Measure>,
    /// The fastest of the raw writers (one stream, parallel, direct), GB/s.
    pub raw_best_gbps: f64,
    /// raw_best / candle: the highest ratio to candle that any writer of these bytes could reach
    /// into this folder (within the noise of the measurement).
    pub ratio_candle_bound: f64,
    /// Our throughput, GB/s.
    pub ours_gbps: f64,
    /// candle's throughput, GB/s.
    pub candle_gbps: f64,
    /// Device→host copy into pinned memory, GB/s (GPU runs only).
    pub device_copy_gbps: Option<f64>,
    /// The storage ceiling (faster of one stream and parallel writes), or on a GPU the lower of
    /// that and the device→host copy, GB/s.
    pub ceiling_gbps: f64,
    /// ours / ceiling.
    pub ratio_ceiling: f64,
    /// ours / candle.
    pub ratio_candle: f64,
    /// Our peak extra resident memory.
    pub peak_rss_bytes: u64,
}

/// Runs the benchmark.
///
/// # Errors
/// Errors of building the model, saving, or writing into the output folder.
pub fn run(opts: &BenchOptions) -> Result<BenchReport> {
    std::fs::create_dir_all(&opts.output_dir).ctx(|| {
        format!(
            "creating the benchmark folder {}",
            opts.output_dir.display()
        )
    })?;
    let mut syn = SyntheticOptions::new(opts.arch).with_seed(1);
    syn.max_dim = opts.max_dim;
    syn.dtype = opts.model_dtype;
    let components = synthetic::build(&syn, &opts.device)?;
    let (workers, chunk) = opts.engine.effective();
    let save_opts = {
        let mut s = SaveOptions {
            layout: LayoutChoice::Arch(opts.arch),
            dtypes: ComponentDtypes::all(opts.dtype),
            writer: opts.engine,
            ..Default::default()
        };
        s.metadata.disable = true;
        s
    };
    let path = |name: &str| {
        opts.output_dir.join(format!(
            "checkpoint-save-bench-{}-{name}.safetensors",
            std::process::id()
        ))
    };

    // Warm-up: page in the model, size the checkpoint, start thread pools.
    let ours_path = path("ours");
    let saved = save_to_path(&components, &ours_path, &save_opts)?;
    remove(&ours_path)?;
    let bytes = saved.bytes;
    let block = random_block(8 << 20)?;
    let block = block.as_slice();

    let mut ours = Vec::new();
    let mut candle = Vec::new();
    let mut seq = Vec::new();
    let mut par = Vec::new();
    let mut direct = Vec::new();
    let direct_ok = accepts_direct_io(&opts.output_dir, &path("probe"))?;
    let candle_path = path("candle");
    let raw_path = path("raw");
    timed(
        || candle_save(&components, opts.dtype, &candle_path),
        &candle_path,
    )?;
    for _ in 0..opts.runs.max(1) {
        ours.push(timed(
            || save_to_path(&components, &ours_path, &save_opts).map(drop),
            &ours_path,
        )?);
        candle.push(timed(
            || candle_save(&components, opts.dtype, &candle_path),
            &candle_path,
        )?);
        seq.push(timed(
            || raw_sequential(&raw_path, bytes, block),
            &raw_path,
        )?);
        par.push(timed(
            || raw_parallel(&raw_path, bytes, workers, chunk, block, false),
            &raw_path,
        )?);
        if direct_ok {
            direct.push(timed(
                || raw_parallel(&raw_path, bytes, workers, chunk, block, true),
                &raw_path,
            )?);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let summarize = |runs: Vec<Sample>| {
        let runs_s: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let median_s = median(runs_s.clone());
        Measure {
            median_s,
            gbps: bytes as f64 / median_s / 1e9,
            runs_s,
            peak_rss_extra_bytes: runs.iter().map(|r| r.1).max().unwrap_or(0),
            cpu_s: median(runs.iter().map(|r| r.2).collect()),
        }
    };
    let (ours, candle) = (summarize(ours), summarize(candle));
    let (seq, par) = (summarize(seq), summarize(par));
    let raw_direct = (!direct.is_empty()).then(|| summarize(direct));
    let raw_best_gbps = raw_direct
        .as_ref()
        .map_or(0.0, |m| m.gbps)
        .max(seq.gbps)
        .max(par.gbps);
    let device_copy_gbps = if opts.device.is_cpu() {
        None
    } else {
        let size = usize::try_from(bytes.min(1 << 30)).unwrap_or(1 << 30);
        Some(crate::offload::pinned_copy_ceiling(&opts.device, size)?)
    };
    let storage = seq.gbps.max(par.gbps);
    let ceiling_gbps = device_copy_gbps.map_or(storage, |d| d.min(storage));
    Ok(BenchReport {
        arch: opts.arch.to_string(),
        dtype: opts.dtype.to_string(),
        device: format!("{:?}", opts.device.location()),
        output_dir: opts.output_dir.display().to_string(),
        bytes,
        tensors: saved.tensors,
        threads: workers,
        chunk_size: chunk,
        staging_budget: opts.engine.staging_budget,
        ours_gbps: ours.gbps,
        candle_gbps: candle.gbps,
        device_copy_gbps,
        ceiling_gbps,
        ratio_ceiling: ours.gbps / ceiling_gbps,
        ratio_candle: ours.gbps / candle.gbps,
        raw_best_gbps,
        ratio_candle_bound: raw_best_gbps / candle.gbps,
        peak_rss_bytes: ours.peak_rss_extra_bytes,
        ours,
        candle,
        ceiling_sequential: seq,
        ceiling_parallel: par,
        raw_direct,
    })
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        writeln!(
            f,
            "{} → {} on {}, {:.2} GB ({} tensors) into {}",
            self.arch,
            self.dtype,
            self.device,
            self.bytes as f64 / 1e9,
            self.tensors,
            self.output_dir
        )?;
        writeln!(
            f,
            "threads {}, chunk {} MiB, staging budget {} MiB",
            self.threads,
            mib(self.chunk_size),
            mib(self.staging_budget)
        )?;
        writeln!(
            f,
            "{:<34} {:>8} {:>9} {:>16} {:>7}",
            "", "median s", "GB/s", "peak extra RSS", "CPU s"
        )?;
        let rows = [
            ("(a) checkpoint-save", Some(&self.ours)),
            ("(b) candle to_dtype + save", Some(&self.candle)),
            ("(c) raw, one stream", Some(&self.ceiling_sequential)),
            ("(c) raw, parallel pwrite", Some(&self.ceiling_parallel)),
            (
                "(d) raw, parallel O_DIRECT (info)",
                self.raw_direct.as_ref(),
            ),
        ];
        for (name, m) in rows.into_iter().filter_map(|(n, m)| Some((n, m?))) {
            writeln!(
                f,
                "{name:<34} {:>8.3} {:>9.2} {:>12.0} MiB {:>7.2}",
                m.median_s,
                m.gbps,
                mib(m.peak_rss_extra_bytes),
                m.cpu_s
            )?;
        }
        write!(
            f,
            "ratio to ceiling a/c = {:.2}, ratio to candle a/b = {:.1} \
             (the fastest raw writer here is {:.1}x candle)",
            self.ratio_ceiling, self.ratio_candle, self.ratio_candle_bound
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiny_bench_measures_the_file_a_save_writes_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let opts = BenchOptions {
            arch: Arch::Sd15,
            dtype: TargetDtype::F16,
            model_dtype: None,
            output_dir: dir.path().to_path_buf(),
            runs: 3,
            engine: EngineOptions::default(),
            max_dim: Some(16),
            device: Device::Cpu,
        };
        let r = run(&opts).unwrap();
        // The same save, made here: the figures are about exactly this file.
        let mut syn = SyntheticOptions::new(Arch::Sd15)
            .with_seed(1)
            .with_max_dim(16);
        syn.dtype = None;
        let c = synthetic::build(&syn, &Device::Cpu).unwrap();
        let mut save_opts = SaveOptions {
            layout: LayoutChoice::Arch(Arch::Sd15),
            dtypes: ComponentDtypes::all(TargetDtype::F16),
            ..Default::default()
        };
        save_opts.metadata.disable = true;
        let path = dir.path().join("same.safetensors");
        let saved = save_to_path(&c, &path, &save_opts).unwrap();
        assert_eq!(r.bytes, std::fs::metadata(&path).unwrap().len());
        assert_eq!(r.tensors, saved.tensors);
        std::fs::remove_file(&path).unwrap();
        for m in [
            &r.ours,
            &r.candle,
            &r.ceiling_sequential,
            &r.ceiling_parallel,
        ] {
            assert_eq!(m.runs_s.len(), 3);
            assert!(
                m.runs_s.contains(&m.median_s),
                "the median is one of the runs"
            );
            assert!(m.runs_s.iter().filter(|&&x| x < m.median_s).count() <= 1);
            assert!(m.cpu_s >= 0.0 && m.gbps > 0.0);
        }
        // Nothing is left behind in the folder.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(r.to_string().contains("ratio to ceiling"));
    }
}
