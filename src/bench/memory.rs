//! Memory of one measured run, read from `/proc/self/status`: the peak resident set (`VmHWM`,
//! reset before the run) and the peak anonymous memory (`RssAnon`, which has no kernel-kept
//! peak, so a thread samples it while the run goes on).
//!
//! The two differ where a job's pages are not its own: file pages read through the page cache or
//! mapped read-only count in RSS but are reclaimable; anonymous pages are what the job allocated.
//! Where `/proc` is missing every figure reads 0.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the anonymous memory is sampled: short next to any allocation a save makes (a chunk
/// buffer is filled in milliseconds), and reading the status file costs microseconds.
const SAMPLE_EVERY: Duration = Duration::from_millis(2);

/// Watches one run's memory from its start to [`Watch::finish`].
pub(super) struct Watch {
    rss_before: u64,
    anon_before: u64,
    stop: Arc<AtomicBool>,
    anon_peak: Arc<AtomicU64>,
    sampler: Option<JoinHandle<()>>,
}

/// Memory peaks of a run, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Peaks {
    /// Resident set, above the level before the run.
    pub(super) rss: u64,
    /// Anonymous memory, above the level before the run.
    pub(super) anon: u64,
    /// Anonymous memory of the whole process: what the bound of a file-to-file job is about,
    /// since memory an allocator keeps from before the run is not "above" it.
    pub(super) anon_total: u64,
}

impl Watch {
    /// Resets the RSS peak and starts sampling anonymous memory.
    pub(super) fn start() -> Watch {
        // "5" resets VmHWM to the current RSS (Linux ≥ 4.0).
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let anon_before = status_bytes("RssAnon:");
        let stop = Arc::new(AtomicBool::new(false));
        let anon_peak = Arc::new(AtomicU64::new(anon_before));
        let sampler = {
            let (stop, peak) = (Arc::clone(&stop), Arc::clone(&anon_peak));
            std::thread::Builder::new()
                .name("bench-memory".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        peak.fetch_max(status_bytes("RssAnon:"), Ordering::Relaxed);
                        std::thread::sleep(SAMPLE_EVERY);
                    }
                })
                .ok()
        };
        Watch {
            rss_before: status_bytes("VmRSS:"),
            anon_before,
            stop,
            anon_peak,
            sampler,
        }
    }

    /// Stops sampling and returns the peaks above the levels at the start.
    pub(super) fn finish(mut self) -> Peaks {
        self.anon_peak
            .fetch_max(status_bytes("RssAnon:"), Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.sampler.take() {
            let _ = h.join();
        }
        let anon_total = self.anon_peak.load(Ordering::Relaxed);
        Peaks {
            rss: status_bytes("VmHWM:").saturating_sub(self.rss_before),
            anon: anon_total.saturating_sub(self.anon_before),
            anon_total,
        }
    }
}

/// Available memory (`MemAvailable` of `/proc/meminfo`), bytes; `None` where unknown.
pub(super) fn available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    kib_field(&s, "MemAvailable:").map(|k| k * 1024)
}

fn status_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| kib_field(&s, field))
        .map_or(0, |k| k * 1024)
}

fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// The RSS peak is process-wide: tests that watch memory take turns.
#[cfg(test)]
pub(super) static TESTS_TAKE_TURNS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allocation_during_the_run_shows_in_both_peaks() {
        let _turn = TESTS_TAKE_TURNS.lock();
        if !std::path::Path::new("/proc/self/status").exists() {
            return;
        }
        let w = Watch::start();
        let mut v = vec![0u8; 64 << 20];
        // Touch every page so it is resident, and keep it long enough to be sampled.
        for i in (0..v.len()).step_by(4096) {
            v[i] = 1;
        }
        std::thread::sleep(SAMPLE_EVERY * 10);
        drop(std::hint::black_box(v));
        let p = w.finish();
        assert!(p.anon >= 60 << 20, "anon peak {}", p.anon);
        assert!(p.anon_total >= p.anon);
        assert!(p.rss >= 60 << 20, "rss peak {}", p.rss);
        assert!(available().is_some_and(|a| a > 0));
    }
}
