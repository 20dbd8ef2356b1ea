//! The summary a job prints on stderr: one line, then one warning per tensor with NaN/Inf.

use std::time::Duration;

use checkpoint_save::{Arch, Saved};

/// What a job read and how, besides what its save reports.
#[derive(Debug, Default)]
pub(crate) struct Job {
    /// The architecture the inputs said.
    pub arch: Option<Arch>,
    /// Bytes of tensor data in the input files (0 for tensors built in memory).
    pub read_bytes: u64,
    /// Input keys not carried over.
    pub left_out: Vec<String>,
    /// Keys the inputs lacked, made with ComfyUI's defaults.
    pub created: Vec<String>,
}

/// The architecture a summary names: the one laid out, or a family written in the generic layout
/// (a denoiser alone) as detected.
pub(crate) fn arch_label(laid_out: Option<Arch>, family: Option<Arch>) -> String {
    match (laid_out, family) {
        (Some(a), _) => a.to_string(),
        (None, Some(a)) => format!("generic-layout {a}"),
        (None, None) => "generic".to_string(),
    }
}

/// One summary line on stderr, then one warning per tensor holding NaN/Inf values. The GB/s is of
/// the whole job (reading inputs included), timed by the caller from its start.
pub(crate) fn report(saved: &Saved, job: &Job, elapsed: Duration) {
    let arch = arch_label(saved.arch, job.arch);
    let secs = elapsed.as_secs_f64().max(1e-9);
    let mut line = format!(
        "saved {arch} ({}) checkpoint: {} tensors, {} bytes in {secs:.2} s ({:.2} GB/s)",
        saved.prediction,
        saved.tensors,
        saved.bytes,
        saved.bytes as f64 / secs / 1e9,
    );
    if job.read_bytes > 0 {
        line.push_str(&format!("; read {} bytes of inputs", job.read_bytes));
    }
    if !job.left_out.is_empty() {
        line.push_str(&format!(
            "; {} input key(s) left out (first: `{}`)",
            job.left_out.len(),
            job.left_out[0]
        ));
    }
    if !job.created.is_empty() {
        line.push_str(&format!(
            "; {} key(s) the input lacks written with ComfyUI's defaults (first: `{}`)",
            job.created.len(),
            job.created[0]
        ));
    }
    if !saved.dropped.is_empty() {
        line.push_str(&format!(
            "; {} key(s) dropped as the reference does",
            saved.dropped.len()
        ));
    }
    if !saved.non_finite.is_empty() {
        line.push_str(&format!(
            "; {} tensor(s) hold NaN/Inf",
            saved.non_finite.len()
        ));
    }
    eprintln!("{line}");
    for (name, count) in &saved.non_finite {
        eprintln!("warning: tensor `{name}` holds {count} NaN/Inf value(s)");
    }
}
