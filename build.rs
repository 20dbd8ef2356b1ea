//! Compiles the CUDA kernels in `kernels/` to PTX when the `cuda` feature is on.
//!
//! The PTX lands in `OUT_DIR` and is embedded with `include_str!` by `src/offload/cuda.rs`, so the
//! default build needs no CUDA toolkit at all. The PTX targets `compute_75`, the oldest
//! architecture CUDA 13 supports, and the driver compiles it for the GPU it runs on. `NVCC` picks
//! the compiler (default `nvcc` on `PATH`).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    // One file per kernel module; add new ones to this list.
    let kernels: &[&str] = &["cast_pack", "quantize", "ggml_quantize"];
    for kernel in kernels {
        let src = format!("kernels/{kernel}.cu");
        let ptx = out.join(format!("{kernel}.ptx"));
        // Exact IEEE float operations: the conversions must match the CPU path bit for bit.
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-arch=compute_75", "--fmad=false", "--ftz=false"])
            .arg(&src)
            .arg("-o")
            .arg(&ptx)
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run `{nvcc}` to compile {src} ({e}); install the CUDA toolkit or source ../shared/gpu/cuda-toolchain.sh, or set NVCC")
            });
        assert!(status.success(), "`{nvcc}` failed to compile {src}");
    }
}
