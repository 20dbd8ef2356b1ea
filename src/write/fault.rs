//! Fault injection for the crash tests: with `CHECKPOINT_SAVE_FAULT_KILL_AFTER=<bytes>` in the
//! environment, the process kills itself with SIGKILL once that many data bytes have been
//! written by all its saves together — a crash at an exact point (the middle of the third
//! checkpoint of a training loop, say), so a test can check what a crash leaves behind without
//! racing a timer. Unset (always, outside those tests), it costs one branch per unit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
static WRITTEN: AtomicU64 = AtomicU64::new(0);

pub(super) fn wrote(n: u64) {
    let limit = LIMIT.get_or_init(|| {
        std::env::var("CHECKPOINT_SAVE_FAULT_KILL_AFTER")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    if let Some(limit) = limit {
        if WRITTEN.fetch_add(n, Ordering::Relaxed) + n >= *limit {
            crate::sys::kill_self();
        }
    }
}
