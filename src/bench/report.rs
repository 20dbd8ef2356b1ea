//! The figures of a benchmark run, as a table or JSON.

use serde::Serialize;

use super::raw::Sample;

/// One measured quantity: median seconds, throughput, memory peaks.
#[derive(Debug, Clone, Serialize)]
pub struct Measure {
    /// Median wall time in seconds.
    pub median_s: f64,
    /// Every run's wall time in seconds.
    pub runs_s: Vec<f64>,
    /// Bytes per second (decimal GB/s) at the median.
    pub gbps: f64,
    /// Highest resident memory above the level before the run, in bytes (file pages read or
    /// mapped count here, reclaimable or not).
    pub peak_rss_extra_bytes: u64,
    /// Highest anonymous memory above the level before the run, in bytes: what the job
    /// allocated itself (sampled every 2 ms).
    pub peak_anon_extra_bytes: u64,
    /// Highest anonymous memory of the whole process during the run, in bytes (the extra, plus
    /// what the process held before: the benchmark's own buffers, heap an allocator kept).
    pub peak_anon_bytes: u64,
    /// Median CPU time (user + system, all threads) in seconds: less sensitive than wall time to
    /// other load on a shared machine.
    pub cpu_s: f64,
}

impl Measure {
    /// The median of `runs`, as throughput of `bytes`, and the highest peaks of any run.
    pub(super) fn of(runs: &[Sample], bytes: u64) -> Measure {
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };
        let runs_s: Vec<f64> = runs.iter().map(|r| r.secs).collect();
        let median_s = median(runs_s.clone());
        Measure {
            median_s,
            gbps: bytes as f64 / median_s / 1e9,
            runs_s,
            peak_rss_extra_bytes: runs.iter().map(|r| r.peaks.rss).max().unwrap_or(0),
            peak_anon_extra_bytes: runs.iter().map(|r| r.peaks.anon).max().unwrap_or(0),
            peak_anon_bytes: runs.iter().map(|r| r.peaks.anon_total).max().unwrap_or(0),
            cpu_s: median(runs.iter().map(|r| r.cpu).collect()),
        }
    }
}

/// The figures of one benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// What was timed: `save` (a model held by candle to a file) or `file-to-file` (a
    /// single-file checkpoint on disk converted into a new one).
    pub job: String,
    /// Architecture.
    pub arch: String,
    /// Saved dtype.
    pub dtype: String,
    /// Device of the model.
    pub device: String,
    /// Folder written into (and, for `file-to-file`, read from).
    pub output_dir: String,
    /// Checkpoint size in bytes.
    pub bytes: u64,
    /// Size of the input file (`file-to-file` only).
    pub input_bytes: Option<u64>,
    /// Folder of the input file (`file-to-file` only).
    pub input_dir: Option<String>,
    /// Tensors in the checkpoint.
    pub tensors: usize,
    /// Worker threads of our save (and of the parallel ceiling).
    pub threads: usize,
    /// Chunk size of our save.
    pub chunk_size: u64,
    /// Staging budget of our save.
    pub staging_budget: u64,
    /// Our job.
    pub ours: Measure,
    /// candle's program for the same job (`to_dtype` + `safetensors::save` + fsync, after
    /// `safetensors::load` for `file-to-file`); `None` when skipped.
    pub candle: Option<Measure>,
    /// Why candle's program was not run (it would not fit in memory).
    pub candle_skipped: Option<String>,
    /// One sequential stream of large writes + fsync.
    pub ceiling_sequential: Measure,
    /// Parallel positional writes with `threads` threads + fsync.
    pub ceiling_parallel: Measure,
    /// The same parallel writes with direct I/O (`None` where the folder refuses it). Not part of
    /// the ceiling, which is buffered writes as specified; it shows what the storage takes when
    /// the page cache is bypassed, as our save does on disks.
    pub raw_direct: Option<Measure>,
    /// The input files read in parallel through the page cache, GB/s of input (jobs that read
    /// files only).
    pub raw_read: Option<Measure>,
    /// The storage's time for the job — the longer of writing the output (the ceiling) and
    /// reading the inputs (`raw_read`) — over ours: the ceiling ratio with the reads counted.
    pub ratio_job_ceiling: Option<f64>,
    /// The fastest of the raw writers (one stream, parallel, direct), GB/s.
    pub raw_best_gbps: f64,
    /// raw_best / candle: the highest ratio to candle that any writer of these bytes could reach
    /// into this folder (within the noise of the measurement).
    pub ratio_candle_bound: Option<f64>,
    /// Our throughput, GB/s.
    pub ours_gbps: f64,
    /// candle's throughput, GB/s.
    pub candle_gbps: Option<f64>,
    /// Device→host copy into pinned memory, GB/s (GPU runs only).
    pub device_copy_gbps: Option<f64>,
    /// The storage ceiling (faster of one stream and parallel writes), or on a GPU the lower of
    /// that and the device→host copy, GB/s.
    pub ceiling_gbps: f64,
    /// ours / ceiling.
    pub ratio_ceiling: f64,
    /// ours / candle.
    pub ratio_candle: Option<f64>,
    /// Our bake of a LoRA into A (`merge` with a LoRA rank).
    pub lora_bake: Option<Measure>,
    /// A plain convert of A, beside the bake.
    pub plain_convert: Option<Measure>,
    /// Median bake time over median convert time.
    pub ratio_bake_to_convert: Option<f64>,
    /// Arithmetic of the bake's LoRA products, GFLOP (what the bake adds to the convert).
    pub lora_gflop: Option<f64>,
    /// The quantized format written, when the job quantizes.
    pub quantize: Option<String>,
    /// Our throughput in GB/s of input (jobs that read files).
    pub input_gbps: Option<f64>,
    /// The Python program a user writes for the job (a quantization: comfy-kitchen; a GGUF target:
    /// convert.py's rules with gguf-py's quantizer; a merge method: sd-mecha's recipe), when it ran.
    pub python: Option<Measure>,
    /// Why the Python program was not run.
    pub python_skipped: Option<String>,
    /// Python's median time over ours.
    pub ratio_python: Option<f64>,
    /// The Python program's peak resident memory, whole process, in bytes.
    pub python_peak_rss_bytes: Option<u64>,
    /// Our peak extra resident memory.
    pub peak_rss_bytes: u64,
    /// Our peak extra anonymous memory.
    pub peak_anon_extra_bytes: u64,
    /// Our peak anonymous memory, whole process.
    pub peak_anon_bytes: u64,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let gb = |b: u64| b as f64 / 1e9;
        let target = match &self.quantize {
            Some(q) => format!("{} + {q}", self.dtype),
            None => self.dtype.clone(),
        };
        write!(
            f,
            "{} {} → {} on {}, {:.2} GB ({} tensors) into {}",
            self.job,
            self.arch,
            target,
            self.device,
            gb(self.bytes),
            self.tensors,
            self.output_dir
        )?;
        match (self.input_bytes, &self.input_dir) {
            (Some(b), Some(d)) if *d != self.output_dir => {
                writeln!(f, ", from {:.2} GB of input files in {d}", gb(b))?
            }
            (Some(b), _) => writeln!(f, ", from {:.2} GB of input files there", gb(b))?,
            (None, _) => writeln!(f)?,
        }
        writeln!(
            f,
            "threads {}, chunk {} MiB, staging budget {} MiB",
            self.threads,
            mib(self.chunk_size),
            mib(self.staging_budget)
        )?;
        writeln!(
            f,
            "{:<34} {:>8} {:>9} {:>14} {:>14} {:>14} {:>7}",
            "", "median s", "GB/s", "peak RSS+", "peak anon+", "peak anon", "CPU s"
        )?;
        let candle = match self.job.as_str() {
            "file-to-file" => "(b) candle load + to_dtype + save",
            "merge" => "(b) candle load both + a*r+b*(1-r)",
            "run" => "(b) candle (not timed)",
            j if j.starts_with("merge --method") => "(b) candle (not timed)",
            _ => "(b) candle to_dtype + save",
        };
        let rows = [
            ("(a) checkpoint-save", Some(&self.ours)),
            (candle, self.candle.as_ref()),
            (
                "(e) checkpoint-save LoRA bake of A",
                self.lora_bake.as_ref(),
            ),
            (
                "(f) checkpoint-save convert of A",
                self.plain_convert.as_ref(),
            ),
            ("(c) raw, one stream", Some(&self.ceiling_sequential)),
            ("(c) raw, parallel pwrite", Some(&self.ceiling_parallel)),
            (
                "(d) raw, parallel O_DIRECT (info)",
                self.raw_direct.as_ref(),
            ),
            ("(g) raw read of inputs (GB/s in)", self.raw_read.as_ref()),
            (
                match self.quantize.as_deref() {
                    _ if self.job.starts_with("merge --method") => "(h) Python sd-mecha recipe",
                    Some(q) if q.starts_with("GGUF") => "(h) Python convert.py + gguf-py",
                    _ => "(h) Python load + kitchen + save",
                },
                self.python.as_ref(),
            ),
        ];
        for (name, m) in rows.into_iter().filter_map(|(n, m)| Some((n, m?))) {
            writeln!(
                f,
                "{name:<34} {:>8.3} {:>9.2} {:>10.0} MiB {:>10.0} MiB {:>10.0} MiB {:>7.2}",
                m.median_s,
                m.gbps,
                mib(m.peak_rss_extra_bytes),
                mib(m.peak_anon_extra_bytes),
                mib(m.peak_anon_bytes),
                m.cpu_s
            )?;
        }
        if let Some(why) = &self.candle_skipped {
            writeln!(f, "(b) not run: {why}")?;
        }
        if let Some(why) = &self.python_skipped {
            writeln!(f, "(h) not run: {why}")?;
        }
        if let (Some(g), Some(i)) = (self.input_gbps, self.input_bytes) {
            writeln!(f, "(a) reads {:.2} GB of input at {g:.2} GB/s", gb(i))?;
        }
        if let (Some(r), Some(m)) = (self.ratio_python, self.python_peak_rss_bytes) {
            writeln!(
                f,
                "(h) takes {r:.1}x as long as (a), with {:.0} MiB resident at its peak",
                mib(m)
            )?;
        }
        write!(f, "ratio to ceiling a/c = {:.2}", self.ratio_ceiling)?;
        if let Some(r) = self.ratio_job_ceiling {
            write!(f, " (a/max(c,g) = {r:.2}, the inputs' reads counted)")?;
        }
        if let (Some(r), Some(g)) = (self.ratio_bake_to_convert, self.lora_gflop) {
            write!(
                f,
                ", LoRA bake / plain convert e/f = {r:.2} ({g:.1} GFLOP of products)"
            )?;
        }
        if let (Some(r), Some(b)) = (self.ratio_candle, self.ratio_candle_bound) {
            write!(
                f,
                ", ratio to candle a/b = {r:.1} (the fastest raw writer here is {b:.1}x candle)"
            )?;
        }
        Ok(())
    }
}
