//! Fuzzes the one safetensors reader through every entry point that reads a file: any bytes
//! must give `Ok` or an error, never a panic, a hang or an allocation sized by a claim.
//!
//! Run (cargo-fuzz; its sanitizer flags need a nightly compiler, or `RUSTC_BOOTSTRAP=1`):
//!   cargo fuzz run read -- -max_total_time=300

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::Device;
use libfuzzer_sys::fuzz_target;

/// One file per fuzzing process, on tmpfs when there is one.
fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::path::Path::new("/dev/shm");
        let dir = if dir.is_dir() { dir.to_path_buf() } else { std::env::temp_dir() };
        dir.join(format!("checkpoint-save-fuzz-{}.safetensors", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = path();
    if std::fs::write(path, data).is_err() {
        return;
    }
    let _ = checkpoint_save::inspect(path);
    let _ = checkpoint_save::load_tensors(path, &Device::Cpu);
    let _ = checkpoint_save::load_checkpoint(path, &Device::Cpu, None);
});
