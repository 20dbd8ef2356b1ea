//! `kernels/ggml_quantize.cu` compiled for the host (a C++ compiler and a few lines standing in
//! for CUDA's intrinsics, one thread walking every block) against the CPU codec: the kernel's
//! transcription of ggml's quantizers is checked here, byte for byte, without a GPU. What only a
//! GPU can show (its float operations, x86's NaN results emulated) is `tests/gpu.rs`'s.
//!
//! Needs `c++` (or `$CXX`); where none is installed the test says so and checks nothing.

use std::path::Path;
use std::process::Command;

use crate::quant::{GgmlType, Precision};

/// The CUDA names the kernel uses, for a host compiler: IEEE f32 operations (compiled with
/// `-ffp-contract=off`), one thread in one block.
const SHIM: &str = r#"
#include <cstring>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>
#define __device__
#define __forceinline__ inline
#define __noinline__
#define __global__
static inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
static inline int __float_as_int(float f) { int u; memcpy(&u, &f, 4); return u; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
static inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    unsigned long long o = *p; *p += v; return o;
}
struct Dim { unsigned x; };
static Dim gridDim{1}, blockDim{1}, blockIdx{0}, threadIdx{0};
#include "ggml_quantize.cu"
// args: SOURCE-BYTES SRC-CODE BASE TYPE FIRST BLOCKS OUT; prints the non-finite count.
int main(int argc, char** argv) {
    if (argc != 8) return 2;
    FILE* f = fopen(argv[1], "rb");
    if (!f) return 3;
    std::vector<unsigned char> src;
    int c;
    while ((c = fgetc(f)) != EOF) src.push_back((unsigned char)c);
    fclose(f);
    unsigned code = atoi(argv[2]), base = atoi(argv[3]), type = atoi(argv[4]);
    unsigned long long first = strtoull(argv[5], 0, 10), blocks = strtoull(argv[6], 0, 10);
    std::vector<unsigned char> out(blocks * block_bytes(type));
    unsigned long long count = 0;
    checkpoint_save_ggml_quantize((u64)src.data(), code, base, type, first, blocks, out.data(), &count);
    FILE* o = fopen(argv[7], "wb");
    if (!o) return 4;
    fwrite(out.data(), 1, out.size(), o);
    fclose(o);
    printf("%llu\n", count);
    return 0;
}
"#;

/// Values that meet every branch of the searches: zero, constant, subnormal, huge and tiny
/// blocks, one outlier, sparse sub-blocks, integers, all positive, and NaN and infinities.
fn values() -> Vec<f32> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut v: Vec<f32> = (0..256 * 160)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    for (r, row) in v.chunks_exact_mut(256).enumerate() {
        match r % 16 {
            0 => row.fill(0.0),
            1 => row.fill(-0.75),
            2 => (0..256).for_each(|i| row[i] = (i % 7) as f32 * 1e-41),
            3 => row.iter_mut().for_each(|x| *x *= 3e4),
            4 => row.iter_mut().for_each(|x| *x *= 1e-30),
            5 => row[77] = 40.0,
            6 => row.iter_mut().step_by(2).for_each(|x| *x = -x.abs()),
            7 => row.iter_mut().for_each(|x| *x = x.powi(5)),
            8 => (0..256).filter(|i| i % 16 != 3).for_each(|i| row[i] = 0.0),
            9 => row.iter_mut().for_each(|x| *x = (*x * 4.0).round()),
            10 => row.iter_mut().for_each(|x| *x = x.abs() + 1.0),
            11 => row[r % 256] = f32::INFINITY,
            12 => row[(r * 7) % 256] = f32::NAN,
            13 => row[3] = f32::NEG_INFINITY,
            _ => {}
        }
    }
    v
}

fn compile(dir: &Path) -> Option<std::path::PathBuf> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    std::fs::write(dir.join("main.cpp"), SHIM).unwrap();
    let exe = dir.join("ggml_kernel");
    let kernels = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels");
    let status = Command::new(&cxx)
        .args([
            "-O1",
            "-ffp-contract=off",
            "-std=c++17",
            "-w",
            "-I",
            kernels,
        ])
        .arg(dir.join("main.cpp"))
        .arg("-o")
        .arg(&exe)
        .status();
    match status {
        Ok(s) => {
            assert!(
                s.success(),
                "`{cxx}` failed to compile ggml_quantize.cu for the host"
            );
            Some(exe)
        }
        Err(e) => {
            eprintln!(
                "no C++ compiler (`{cxx}`: {e}): the host build of the kernel is not checked"
            );
            None
        }
    }
}

#[test]
fn the_kernel_built_for_the_host_writes_the_cpu_codec_s_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let Some(exe) = compile(dir.path()) else {
        return;
    };
    let values = values();
    let f32_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let bf16_bytes: Vec<u8> = values
        .iter()
        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
        .collect();
    let sources = [
        ("f32", 0u32, f32_bytes, Precision::F32),
        ("bf16", 2, bf16_bytes, Precision::Bf16),
    ];
    for (name, code, bytes, exact) in &sources {
        let src = dir.path().join(name);
        std::fs::write(&src, bytes).unwrap();
        for (base, base_code) in [
            (Precision::F32, 0),
            (Precision::Bf16, 1),
            (Precision::F16, 2),
        ] {
            // The values as the host's target reads them: the source's, rounded to the base.
            let seen: Vec<f32> = values.iter().map(|v| base.round(exact.round(*v))).collect();
            for t in GgmlType::ALL.into_iter().filter(|t| t.is_quantized()) {
                // Blocks 3.. of the tensor: the kernel's `first` offsets the reads.
                let (len, per) = (t.block_len(), t.block_bytes());
                let first = 3;
                let blocks = seen.len() / len - first;
                let mut want = vec![0u8; blocks * per];
                crate::quant::ggml::encode(t, &seen[first * len..], &mut want);
                let out = dir.path().join("out");
                let run = Command::new(&exe)
                    .arg(&src)
                    .args([code, &base_code, &t.id()].map(|c| c.to_string()))
                    .args([first.to_string(), blocks.to_string()])
                    .arg(&out)
                    .output()
                    .unwrap();
                assert!(run.status.success(), "{t}: {run:?}");
                let got = std::fs::read(&out).unwrap();
                let what = format!("{t} from {name} read as {base:?}");
                assert_eq!(got.len(), want.len(), "{what}");
                if let Some(at) = got.iter().zip(&want).position(|(a, b)| a != b) {
                    panic!(
                        "{what}: block {} differs at byte {} ({} vs the codec's {})",
                        first + at / per,
                        at % per,
                        got[at],
                        want[at]
                    );
                }
                let count: u64 = String::from_utf8_lossy(&run.stdout).trim().parse().unwrap();
                let non_finite = seen[first * len..]
                    .iter()
                    .filter(|v| !v.is_finite())
                    .count();
                assert_eq!(count, non_finite as u64, "{what}: non-finite count");
            }
        }
    }
}
