//! Fuzzes the one safetensors reader through every entry point that reads a file — inspect, the
//! loaders, a LoRA, and a file as the input of a convert and of a merge — : any bytes must give
//! `Ok` or an error, never a panic, a hang or an allocation sized by a claim.
//!
//! Run (cargo-fuzz; its sanitizer flags need a nightly compiler, or `RUSTC_BOOTSTRAP=1`):
//!   cargo fuzz run read -- -max_total_time=300

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::Device;
use checkpoint_save::merge::{Operation, Recipe};
use checkpoint_save::{ComponentDtypes, SaveOptions, TargetDtype};
use libfuzzer_sys::fuzz_target;

/// One file per fuzzing process, on tmpfs when there is one.
fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::path::Path::new("/dev/shm");
        let dir = if dir.is_dir() {
            dir.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        dir.join(format!(
            "checkpoint-save-fuzz-{}.safetensors",
            std::process::id()
        ))
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
    let _ = checkpoint_save::merge::Lora::open(path);
    // The streaming jobs: a file opened as a job's input, then saved (each tensor read from the
    // file as the writer reaches it), and merged with itself.
    if let Ok(input) = checkpoint_save::open_input(path, None) {
        let out = path.with_extension("out.safetensors");
        let opts = SaveOptions {
            dtypes: ComponentDtypes::all(TargetDtype::F16),
            ..SaveOptions::default()
        };
        let _ = checkpoint_save::save_to_path(&input.components, &out, &opts);
        let _ = std::fs::remove_file(&out);
        let recipe = Recipe {
            operation: Operation::WeightedSum { ratio: 0.5 },
            ..Recipe::default()
        };
        let c = &input.components;
        if let Ok((merged, _)) = checkpoint_save::merge::merge(&[c, c], &[], &recipe) {
            let _ = checkpoint_save::save_to_path(&merged, &out, &opts);
            let _ = std::fs::remove_file(&out);
        }
    }
});
