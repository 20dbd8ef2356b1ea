//! Fuzzes the GGUF reader with raw bytes as a whole file: its header parser, the checks of
//! every claim (counts, lengths, dimensions, types, offsets, alignment, `orig_shape`) and the
//! layout of each tensor: any bytes must give `Ok` or an error, never a panic, a hang or an
//! allocation sized by a claim. (Files through `inspect` go through the `read` target too: it
//! tells a GGUF file by its first bytes.)
//!
//! Run (cargo-fuzz; its sanitizer flags need a nightly compiler, or `RUSTC_BOOTSTRAP=1`):
//!   cargo fuzz run gguf -- -max_total_time=300
//! Seeds: the files in `tests/fixtures/gguf/*.gguf`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = checkpoint_save::internal::read_gguf(data);
});
