//! File-to-file jobs run in bounded memory: `convert`, `split`, `save` and `merge` of checkpoints
//! many times larger than the staging budget stay under staging + the largest tensor + 64 MiB, measured on the real
//! process (its kernel-kept peak resident set, and its anonymous memory sampled while it runs);
//! a later family (Wan 2.1 14B, shrunk) through convert, merge and a LoRA bake likewise.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cli::ok_path;

const MIB: u64 = 1 << 20;

/// `RssAnon` of a running process, bytes.
fn anon_of(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("RssAnon:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Runs the binary, sampling its anonymous memory; returns (exit code, peak RssAnon, ru_maxrss).
fn run_measured(cwd: &Path, args: &[&str]) -> (i32, u64, u64) {
    let child = Command::new(env!("CARGO_BIN_EXE_checkpoint-save"))
        .current_dir(cwd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak_anon = 0;
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    loop {
        // SAFETY: waits for our own child without blocking; `status` and `usage` are ours.
        let r = unsafe { libc::wait4(pid as i32, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid as i32 {
            break;
        }
        assert_eq!(r, 0, "wait4: {}", std::io::Error::last_os_error());
        peak_anon = peak_anon.max(anon_of(pid).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(child);
    assert!(libc::WIFEXITED(status), "exited normally");
    let max_rss = u64::try_from(usage.ru_maxrss).unwrap() * 1024;
    (libc::WEXITSTATUS(status), peak_anon, max_rss)
}

/// The largest tensor's byte length, from the header alone: this process must stay small, since
/// a spawned child's peak RSS starts from its parent's (the kernel carries it across exec).
fn largest_tensor(path: &Path) -> u64 {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).unwrap();
    let mut header = vec![0u8; u64::from_le_bytes(n) as usize];
    f.read_exact(&mut header).unwrap();
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
    let header = header.as_object().unwrap();
    let len = |v: &serde_json::Value| {
        let o = v["data_offsets"].as_array().unwrap();
        o[1].as_u64().unwrap() - o[0].as_u64().unwrap()
    };
    header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, v)| len(v))
        .max()
        .unwrap()
}

fn is_tmpfs(dir: &Path) -> bool {
    let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    let mut s = unsafe { std::mem::zeroed::<libc::statfs>() };
    // SAFETY: a valid C string and a statfs we own.
    (unsafe { libc::statfs(c.as_ptr(), &mut s) } == 0) && s.f_type == libc::TMPFS_MAGIC
}

/// A 309 MB f32 SD1.5 (every key, dimensions capped at 256; its largest tensor is 2.4 MB).
fn model(dir: &Path, seed: &str) -> std::path::PathBuf {
    let out = dir.join("in");
    let args = [
        "save",
        "-q",
        "--synthetic",
        "sd15",
        "--max-dim",
        "256",
        "--dtype",
        "f32",
    ];
    let more = ["--seed", seed, "--output-dir", out.to_str().unwrap()];
    ok_path(dir, &[&args[..], &more].concat())
}

#[test]
fn jobs_over_models_larger_than_the_staging_budget_stay_in_bounded_memory() {
    // In the build folder rather than TMPDIR: a tmpfs would count the output's pages as the
    // process's own (shared memory) and blur the figure.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path().to_str().unwrap();
    let input = model(dir.path(), "1");
    let input_len = std::fs::metadata(&input).unwrap().len();
    let largest = largest_tensor(&input);
    let staging = 16 * MIB;
    let bound = staging + largest + 64 * MIB;
    assert!(
        input_len > 3 * bound,
        "the model is far larger than the bound"
    );

    let tmpfs = is_tmpfs(dir.path());
    let check_within = |what: &str, args: &[&str], bound: u64| {
        let (code, anon, max_rss) = run_measured(dir.path(), args);
        assert_eq!(code, 0, "{what}");
        assert!(anon > 0, "the sampler saw the process");
        let (a, b, r) = (anon / MIB, bound / MIB, max_rss / MIB);
        assert!(
            anon <= bound,
            "{what}: peak anonymous memory {a} MiB > bound {b} MiB"
        );
        // The kernel's peak counts every resident page (the binary's own too) and misses
        // nothing between samples; it is only about the job where the output is not in shared
        // memory.
        if !tmpfs {
            assert!(max_rss <= bound, "{what}: peak RSS {r} MiB > bound {b} MiB");
        }
    };
    let check = |what: &str, args: &[&str]| check_within(what, args, bound);
    let engine = ["--staging-mib", "16", "--chunk-mib", "4"];
    let i = input.to_str().unwrap();
    let out = format!("{d}/out");
    check(
        "convert",
        &[
            &["convert", i, "--dtype", "f16", "-q", "--output-dir", &out][..],
            &engine,
        ]
        .concat(),
    );
    let parts = format!("{d}/parts");
    check(
        "split",
        &[&["split", i, "-q", "--output-dir", &parts][..], &engine].concat(),
    );
    let (m, c, v) = (
        format!("{parts}/model.safetensors"),
        format!("{parts}/clip.safetensors"),
        format!("{parts}/vae.safetensors"),
    );
    check(
        "save",
        &[
            &[
                "save",
                "--model",
                &m,
                "--clip",
                &c,
                "--vae",
                &v,
                "--dtype",
                "f16",
                "-q",
                "--output-dir",
                &out,
            ][..],
            &engine,
        ]
        .concat(),
    );
    // A merge reads two such models and holds neither.
    let b = model(dir.path(), "2");
    let b = b.to_str().unwrap();
    let merge = [
        "merge",
        i,
        b,
        "--ratio",
        "0.3",
        "--clip-ratio",
        "0.3",
        "--dtype",
        "f16",
    ];
    check(
        "merge",
        &[&merge[..], &["-q", "--output-dir", &out], &engine].concat(),
    );
    // Whole-tensor methods read their inputs once more per tensor (norms and dots; two k-th
    // magnitude passes for TIES), range by range: the same bound.
    for method in [
        &["--method", "slerp", "--param", "alpha=0.3"][..],
        &["--method", "ties_sum", "--param", "k=0.5"],
    ] {
        check(
            method[1],
            &[
                &["merge", i, b, "--dtype", "f16", "-q", "--output-dir", &out][..],
                method,
                &engine,
            ]
            .concat(),
        );
    }
    // sd-mecha's DELLA holds each tensor's magnitude ranks while it is written (4 bytes per
    // element and delta: an f32 tensor's size here, one delta), for each tensor in flight (one
    // per worker, at most 4 with this budget, and the prefetcher's), plus the sort keys (8 bytes
    // per element) of the one being ranked.
    let della = bound + (4 + 1) * largest + 2 * largest;
    check_within(
        "della",
        &[
            &["merge", i, b, "--dtype", "f16", "-q", "--output-dir", &out][..],
            &["--method", "dare", "--param", "della_eps=0.3"],
            &["--param", "probability=0.5", "--param", "k=0.5"],
            &engine,
        ]
        .concat(),
        della,
    );
    let written = std::fs::read_dir(dir.path().join("out/checkpoints"))
        .unwrap()
        .count();
    assert_eq!(written, 6);
}

/// The keys and shapes of a safetensors file, from its header alone.
fn header_shapes(path: &Path) -> Vec<(String, Vec<usize>)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).unwrap();
    let mut header = vec![0u8; u64::from_le_bytes(n) as usize];
    f.read_exact(&mut header).unwrap();
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            (
                k.clone(),
                serde_json::from_value(v["shape"].clone()).unwrap(),
            )
        })
        .collect()
}

/// A lightx2v-style LoRA for `checkpoint`'s Wan denoiser: rank-4 `lora_down`/`lora_up` on every
/// attention projection and feed-forward weight, `diff` on the norms, `diff_b` on the biases,
/// in `diffusion_model.` names (small: a few MB whatever the model's size).
fn wan_lora(checkpoint: &Path, out: &Path) {
    let rank = 4;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let f32s = |n: usize, seed: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| (((i * 31 + seed * 17) % 97) as f32 / 970.0 - 0.05).to_le_bytes())
            .collect()
    };
    for (k, shape) in header_shapes(checkpoint) {
        let Some(name) = k.strip_prefix("model.diffusion_model.") else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".weight") else {
            if let Some(stem) = name.strip_suffix(".bias") {
                let n = shape.iter().product();
                tensors.push((format!("diffusion_model.{stem}.diff_b"), shape, f32s(n, 3)));
            }
            continue;
        };
        let i = tensors.len();
        let matrix = shape.len() == 2
            && (stem.contains("_attn.") || stem.contains(".ffn."))
            && !stem.contains("norm");
        if matrix {
            let (rows, cols) = (shape[0], shape[1]);
            let p = format!("diffusion_model.{stem}");
            tensors.push((
                format!("{p}.lora_down.weight"),
                vec![rank, cols],
                f32s(rank * cols, i),
            ));
            tensors.push((
                format!("{p}.lora_up.weight"),
                vec![rows, rank],
                f32s(rows * rank, i + 1),
            ));
            tensors.push((
                format!("{p}.alpha"),
                vec![],
                (rank as f32).to_le_bytes().to_vec(),
            ));
        } else if stem.contains("norm") && shape.len() == 1 {
            let n = shape[0];
            tensors.push((format!("diffusion_model.{stem}.diff"), shape, f32s(n, 5)));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(k, s, b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .unwrap();
            (k.clone(), v)
        })
        .collect();
    safetensors::serialize_to_file(views, None, out).unwrap();
}

/// A later family at the scale, shrunk: Wan 2.1 14B's every key (dimensions capped at
/// 256, f32: 400 MB, its largest tensor 13.5 MB) through `convert` (f32 → bf16), a two-model
/// `merge` and a LoRA bake (lightx2v's forms) with an 8 MiB staging budget, each under staging +
/// the largest tensor + 64 MiB.
#[test]
fn a_wan_checkpoint_larger_than_the_staging_budget_converts_merges_and_bakes_in_bounded_memory() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path().to_str().unwrap();
    let wan = |seed: &str| {
        let out = dir.path().join(format!("in{seed}"));
        let args = [
            "save",
            "-q",
            "--synthetic",
            "wan21-14b",
            "--max-dim",
            "256",
            "--dtype",
            "f32",
            "--seed",
            seed,
            "--output-dir",
            out.to_str().unwrap(),
        ];
        ok_path(dir.path(), &args)
    };
    let a = wan("1");
    let largest = largest_tensor(&a);
    let staging = 8 * MIB;
    let bound = staging + largest + 64 * MIB;
    let input_len = std::fs::metadata(&a).unwrap().len();
    assert!(
        input_len > 3 * bound,
        "the model is far larger than the bound"
    );
    let lora = dir.path().join("wan_lightx2v_style.safetensors");
    wan_lora(&a, &lora);
    let tmpfs = is_tmpfs(dir.path());
    let engine = ["--staging-mib", "8", "--chunk-mib", "2"];
    let out = format!("{d}/out");
    let a = a.to_str().unwrap();
    let b = wan("2");
    let lora_arg = format!("{}:0.8", lora.to_str().unwrap());
    let jobs: [(&str, Vec<&str>); 3] = [
        ("convert", vec!["convert", a, "--dtype", "bf16"]),
        (
            "merge",
            vec![
                "merge",
                a,
                b.to_str().unwrap(),
                "--ratio",
                "0.3",
                "--dtype",
                "bf16",
            ],
        ),
        (
            "LoRA bake",
            vec!["merge", a, "--lora", &lora_arg, "--dtype", "bf16"],
        ),
    ];
    for (what, args) in jobs {
        let args = [&args[..], &["-q", "--output-dir", &out], &engine].concat();
        let (code, anon, max_rss) = run_measured(dir.path(), &args);
        assert_eq!(code, 0, "{what}");
        assert!(anon > 0, "the sampler saw the process");
        let (an, bn, r) = (anon / MIB, bound / MIB, max_rss / MIB);
        assert!(
            anon <= bound,
            "{what}: peak anonymous memory {an} MiB > bound {bn} MiB"
        );
        if !tmpfs {
            assert!(
                max_rss <= bound,
                "{what}: peak RSS {r} MiB > bound {bn} MiB"
            );
        }
    }
    let written = std::fs::read_dir(dir.path().join("out/checkpoints"))
        .unwrap()
        .count();
    assert_eq!(written, 3);
}
