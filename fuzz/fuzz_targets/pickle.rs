//! Fuzzes the pickle parser and the state-dict rules of the PyTorch reader with raw bytes as a
//! checkpoint's `data.pkl`: any bytes must give `Ok` or an error, never a panic, a hang, a stack
//! overflow or an allocation sized by a claim. (Whole files, zip and all, go through the `read`
//! target: the reader tells a PyTorch zip from a safetensors file by its first bytes.)
//!
//! Run (cargo-fuzz; its sanitizer flags need a nightly compiler, or `RUSTC_BOOTSTRAP=1`):
//!   cargo fuzz run pickle -- -max_total_time=300
//! Seeds: the `data.pkl` of each fixture in `tests/fixtures/torch/` (`unzip -p FILE '*/data.pkl'`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = checkpoint_save::internal::read_torch_pickle(data);
});
