//! The real binary, run in a fresh temporary folder per test.

use std::path::{Path, PathBuf};

mod common;

use checkpoint_save::Arch;
use common::cli::{files_under, run, Run};
use safetensors::{Dtype, SafeTensors};

/// What one run of the binary produced.
/// Runs a save that must succeed; returns the one path it printed.
fn save_ok(cwd: &Path, args: &[&str]) -> PathBuf {
    let r = run(cwd, args);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout is only the path: {:?}", r.stdout);
    let path = cwd.join(lines[0]);
    assert!(path.is_file(), "{} exists", path.display());
    path
}

/// Asserts a failed run: the exit code, one `error:` line naming the problem, and no file written.
fn assert_fails(r: &Run, code: i32, needle: &str, out_dir: &Path) {
    assert_eq!(r.code, code, "stdout: {} stderr: {}", r.stdout, r.stderr);
    assert!(r.stdout.is_empty(), "nothing on stdout: {}", r.stdout);
    if code == 1 {
        assert_eq!(r.stderr.lines().count(), 1, "one line: {}", r.stderr);
        assert!(r.stderr.starts_with("error: "), "{}", r.stderr);
    }
    assert!(r.stderr.contains(needle), "`{needle}` in: {}", r.stderr);
    assert_eq!(files_under(out_dir), Vec::<PathBuf>::new());
}

fn dtypes_of(path: &Path) -> Vec<(String, Dtype)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| (k, v.dtype()))
        .collect()
}

#[test]
fn synthetic_save_of_every_architecture_prints_an_existing_path() {
    for arch in Arch::ALL {
        let dir = tempfile::tempdir().unwrap();
        let r = run(
            dir.path(),
            &[
                "save",
                "--synthetic",
                arch.name(),
                "--max-dim",
                "4",
                "--quiet",
            ],
        );
        assert_eq!(r.code, 0, "{arch}: {}", r.stderr);
        assert!(r.stderr.is_empty(), "--quiet prints nothing: {}", r.stderr);
        let path = dir.path().join(r.stdout.trim_end());
        assert_eq!(
            path,
            dir.path()
                .join("output/checkpoints/ComfyUI_00001_.safetensors")
        );
        assert!(path.is_file(), "{arch}");
    }
}

#[test]
fn summary_goes_to_stderr_and_counter_increments() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["save", "--synthetic", "sd15", "--max-dim", "4"];
    let r = run(dir.path(), &args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("sd15") && r.stderr.contains("tensors"));
    assert!(r.stderr.contains("2 key(s) dropped"), "{}", r.stderr);
    let second = save_ok(dir.path(), &args);
    assert!(second.ends_with("ComfyUI_00002_.safetensors"));
}

#[test]
fn dtype_options_change_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let base = ["save", "--synthetic", "sd15", "--max-dim", "4", "-q"];
    let keep = dtypes_of(&save_ok(dir.path(), &base));
    assert!(keep.iter().any(|(_, d)| *d == Dtype::F32));

    let f16 = dtypes_of(&save_ok(
        dir.path(),
        &[&base[..], &["--dtype", "f16"]].concat(),
    ));
    assert!(!f16.is_empty());
    for (k, d) in &f16 {
        assert!(
            *d == Dtype::F16 || !k.contains("weight"),
            "{k} is {d:?} under --dtype f16"
        );
    }

    let mixed = dtypes_of(&save_ok(
        dir.path(),
        &[&base[..], &["--dtype", "f16", "--vae-dtype", "bf16"]].concat(),
    ));
    for (k, d) in &mixed {
        if k.starts_with("first_stage_model.") {
            assert_eq!(*d, Dtype::BF16, "{k}");
        } else if k.starts_with("model.diffusion_model.") {
            assert_eq!(*d, Dtype::F16, "{k}");
        }
    }
}

#[test]
fn prefix_outside_the_output_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        dir.path(),
        &[
            "save",
            "--synthetic",
            "sd15",
            "--max-dim",
            "4",
            "--prefix",
            "../evil",
        ],
    );
    assert_fails(
        &r,
        1,
        "outside the output folder",
        &dir.path().join("output"),
    );
}

#[test]
fn wrong_architecture_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        dir.path(),
        &[
            "save",
            "--synthetic",
            "sd15",
            "--max-dim",
            "4",
            "--arch",
            "sdxl",
        ],
    );
    assert_fails(&r, 1, "clip_g", &dir.path().join("output"));
}

#[test]
fn unknown_dtype_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        dir.path(),
        &[
            "save",
            "--synthetic",
            "sd15",
            "--max-dim",
            "4",
            "--dtype",
            "f9",
        ],
    );
    assert_fails(&r, 2, "f9", &dir.path().join("output"));
}

/// Writer flags outside their ranges are usage errors (thousands of threads, or a MiB count that
/// overflows when turned into bytes, used to be accepted); the bounds themselves work.
#[test]
fn writer_flags_out_of_range_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let save = ["save", "--synthetic", "sd15", "--tiny", "-q"];
    for (flag, value) in [
        ("--threads", "257"),
        ("--threads", "100000"),
        ("--chunk-mib", "0"),
        ("--chunk-mib", "4097"),
        ("--chunk-mib", "18446744073709551615"),
        ("--staging-mib", "0"),
        ("--staging-mib", "1048577"),
    ] {
        let r = run(dir.path(), &[&save[..], &[flag, value]].concat());
        assert_fails(&r, 2, flag, &dir.path().join("output"));
    }
    save_ok(
        dir.path(),
        &[
            &save[..],
            &["--threads", "0", "--chunk-mib", "1", "--staging-mib", "1"],
        ]
        .concat(),
    );
    save_ok(
        dir.path(),
        &[
            &save[..],
            &[
                "--threads",
                "256",
                "--chunk-mib",
                "4096",
                "--staging-mib",
                "1048576",
            ],
        ]
        .concat(),
    );
}

/// A prefix whose temporary name would pass the file system's 255-byte limit is refused up front,
/// by `--dry-run` and the real save alike, with a message that says to shorten it.
#[test]
fn names_too_long_are_refused_by_save_and_dry_run_alike() {
    let dir = tempfile::tempdir().unwrap();
    for (prefix, dry) in [("b".repeat(200), false), ("b".repeat(240), true)] {
        let mut args = vec![
            "save",
            "--synthetic",
            "sd15",
            "--tiny",
            "-q",
            "--prefix",
            &prefix,
        ];
        if dry {
            args.push("--dry-run");
        }
        let r = run(dir.path(), &args);
        assert_fails(&r, 1, "255-byte limit", &dir.path().join("output"));
        assert!(r.stderr.contains("shorten"), "{}", r.stderr);
    }
}

#[test]
fn prompt_and_workflow_files_become_metadata() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("prompt.json"),
        r#"{"3": {"inputs": {"seed": 1}}}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("wf.json"), r#"{"nodes": []}"#).unwrap();
    let path = save_ok(
        dir.path(),
        &[
            "save",
            "--synthetic",
            "sdxl",
            "--max-dim",
            "4",
            "-q",
            "--prompt",
            "prompt.json",
            "--workflow",
            "wf.json",
        ],
    );
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["prompt"], r#"{"3": {"inputs": {"seed": 1}}}"#);
    assert_eq!(meta["workflow"], r#"{"nodes": []}"#);
    assert_eq!(meta["modelspec.title"], "ComfyUI 1");
}

#[test]
fn invalid_metadata_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.json"), "{not json").unwrap();
    let base = ["save", "--synthetic", "sd15", "--max-dim", "4"];
    let r = run(dir.path(), &[&base[..], &["--prompt", "bad.json"]].concat());
    assert_fails(
        &r,
        1,
        "bad.json is not valid JSON",
        &dir.path().join("output"),
    );
    let r = run(
        dir.path(),
        &[&base[..], &["--workflow", "missing.json"]].concat(),
    );
    assert_fails(
        &r,
        1,
        "cannot read the workflow file missing.json",
        &dir.path().join("output"),
    );
}

/// Saves a tiny synthetic checkpoint of `arch` and splits it into `parts/`; returns the checkpoint.
fn split_synthetic(cwd: &Path, arch: &str, extra: &[&str]) -> PathBuf {
    let ckpt = save_ok(
        cwd,
        &[
            &["save", "--synthetic", arch, "--max-dim", "4", "-q"][..],
            extra,
        ]
        .concat(),
    );
    let r = run(
        cwd,
        &["split", ckpt.to_str().unwrap(), "--output-dir", "parts"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.lines().count(), 3, "{}", r.stdout);
    ckpt
}

const PARTS: [&str; 6] = [
    "--model",
    "parts/model.safetensors",
    "--clip",
    "parts/clip.safetensors",
    "--vae",
    "parts/vae.safetensors",
];

#[test]
fn split_then_save_gives_the_same_bytes() {
    for (arch, extra) in [
        ("sd15", &[][..]),
        ("sdxl", &[][..]),
        ("sd2", &["--prediction", "v"][..]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let first = split_synthetic(dir.path(), arch, extra);
        let second = save_ok(
            dir.path(),
            &[&["save", "-q", "--output-dir", "again"][..], &PARTS, extra].concat(),
        );
        assert_ne!(first, second);
        assert!(second.ends_with("again/checkpoints/ComfyUI_00001_.safetensors"));
        assert!(
            std::fs::read(&first).unwrap() == std::fs::read(&second).unwrap(),
            "{arch}: split + save reproduces the file byte for byte"
        );
    }
}

#[test]
fn save_from_component_files_with_f16() {
    let dir = tempfile::tempdir().unwrap();
    split_synthetic(dir.path(), "sd15", &[]);
    let path = save_ok(
        dir.path(),
        &[&["save", "-q", "--dtype", "f16"][..], &PARTS].concat(),
    );
    for (k, d) in dtypes_of(&path) {
        assert_eq!(d, Dtype::F16, "{k}");
    }
}

#[test]
fn split_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = split_synthetic(dir.path(), "sd15", &[]);
    let before = std::fs::read(dir.path().join("parts/vae.safetensors")).unwrap();
    let r = run(
        dir.path(),
        &["split", ckpt.to_str().unwrap(), "--output-dir", "parts"],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    assert_eq!(
        std::fs::read(dir.path().join("parts/vae.safetensors")).unwrap(),
        before
    );
}

#[test]
fn missing_component_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    split_synthetic(dir.path(), "sd15", &[]);
    let mut args = [&["save", "--output-dir", "out"][..], &PARTS].concat();
    args[4] = "parts/missing.safetensors";
    let r = run(dir.path(), &args);
    assert_fails(&r, 1, "parts/missing.safetensors", &dir.path().join("out"));
    assert!(r.stderr.contains("--model"), "{}", r.stderr);
}

#[test]
fn file_that_is_not_safetensors_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    split_synthetic(dir.path(), "sd15", &[]);
    std::fs::write(
        dir.path().join("parts/notes.txt"),
        "just some text, not a checkpoint",
    )
    .unwrap();
    let mut args = [&["save", "--output-dir", "out"][..], &PARTS].concat();
    args[6] = "parts/notes.txt";
    let r = run(dir.path(), &args);
    assert_fails(&r, 1, "--clip", &dir.path().join("out"));
}

#[test]
fn sd15_components_under_arch_sdxl_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    split_synthetic(dir.path(), "sd15", &[]);
    let r = run(
        dir.path(),
        &[
            &["save", "--output-dir", "out", "--arch", "sdxl"][..],
            &PARTS,
        ]
        .concat(),
    );
    assert_fails(&r, 1, "sdxl", &dir.path().join("out"));
}

#[test]
fn inspect_json_reports_the_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = save_ok(
        dir.path(),
        &["save", "--synthetic", "sdxl", "--max-dim", "4", "-q"],
    );
    let r = run(dir.path(), &["inspect", "--json", ckpt.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("inspect --json is JSON");
    assert_eq!(v["arch"], "sdxl");
    let text = run(dir.path(), &["inspect", ckpt.to_str().unwrap()]);
    assert_eq!(text.code, 0);
    assert!(text.stdout.contains("sdxl"), "{}", text.stdout);
}

/// `bench --synthetic` takes a variant's name: the figures are about that variant's file (Wan
/// 2.1 14B has 40 blocks, the 1.3B 30), as `save --synthetic` writes it.
#[test]
fn bench_takes_variant_names() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench");
    let o = out.to_str().unwrap();
    let mut tensors = Vec::new();
    for variant in ["wan21-14b", "wan21-1.3b"] {
        let common = ["--synthetic", variant, "--dtype", "f16", "--max-dim", "8"];
        let bench = ["bench", "--runs", "1", "--json", "--output-dir", o];
        let r = run(dir.path(), &[&bench[..], &common].concat());
        assert_eq!(r.code, 0, "{variant}: {}", r.stderr);
        let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
        assert_eq!(v["arch"], variant);
        let save = [
            "save",
            "--seed",
            "1",
            "--disable-metadata",
            "-q",
            "--output-dir",
            o,
        ];
        let saved = run(dir.path(), &[&save[..], &common].concat());
        assert_eq!(saved.code, 0, "{variant}: {}", saved.stderr);
        let path = std::path::PathBuf::from(saved.stdout.trim());
        assert_eq!(
            v["bytes"].as_u64(),
            Some(std::fs::metadata(&path).unwrap().len()),
            "{variant}"
        );
        tensors.push(v["tensors"].as_u64().unwrap());
        std::fs::remove_file(&path).unwrap();
    }
    assert!(tensors[0] > tensors[1], "40 blocks against 30: {tensors:?}");
}

#[test]
fn bench_times_a_given_input_file_detected_and_left_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("bench");
    let saved = run(
        dir.path(),
        &[
            "save",
            "--synthetic",
            "flux",
            "--max-dim",
            "8",
            "--dtype",
            "bf16",
            "-q",
            "--output-dir",
            dir.path().to_str().unwrap(),
        ],
    );
    assert_eq!(saved.code, 0, "{}", saved.stderr);
    let input = saved.stdout.trim().to_string();
    let before = std::fs::read(&input).unwrap();
    let bench = [
        "bench",
        "--from-file",
        "--input",
        &input,
        "--gguf",
        "Q8_0",
        "--runs",
        "1",
        "--json",
        "--output-dir",
        o.to_str().unwrap(),
    ];
    let r = run(dir.path(), &bench);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    // The architecture comes from the file; its bytes are the input's.
    assert_eq!(v["arch"], "flux");
    assert_eq!(v["input_bytes"].as_u64(), Some(before.len() as u64));
    assert_eq!(std::fs::read(&input).unwrap(), before);
    assert_eq!(std::fs::read_dir(&o).unwrap().count(), 0);
    // A given input is only converted, never merged or built.
    let wrong = run(dir.path(), &["bench", "--input", &input, "--runs", "1"]);
    assert_eq!(wrong.code, 2, "{}", wrong.stderr);
    assert!(wrong.stderr.contains("--from-file"), "{}", wrong.stderr);
    let neither = run(dir.path(), &["bench", "--runs", "1"]);
    assert_eq!(neither.code, 2, "{}", neither.stderr);
    assert!(std::path::Path::new(&input).exists());
}

#[test]
fn bench_json_is_one_object_with_the_documented_figures() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench");
    let tiny = [
        "bench",
        "--synthetic",
        "sd15",
        "--dtype",
        "f16",
        "--max-dim",
        "16",
        "--runs",
        "1",
        "--output-dir",
        out.to_str().unwrap(),
    ];
    let r = run(dir.path(), &[&tiny[..], &["--json"]].concat());
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).expect("one JSON object");
    for field in [
        "ours_gbps",
        "candle_gbps",
        "ceiling_gbps",
        "ratio_ceiling",
        "ratio_candle",
        "peak_rss_bytes",
        "raw_best_gbps",
        "ratio_candle_bound",
    ] {
        assert!(v[field].is_number(), "{field} in {v}");
    }
    // The figures describe the file a save of the same model writes: same size, same tensors.
    let saved = run(
        dir.path(),
        &[
            "save",
            "--synthetic",
            "sd15",
            "--max-dim",
            "16",
            "--dtype",
            "f16",
            "--seed",
            "1",
            "--disable-metadata",
            "--quiet",
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(saved.code, 0, "stderr: {}", saved.stderr);
    let path = std::path::PathBuf::from(saved.stdout.trim());
    assert_eq!(
        v["bytes"].as_u64(),
        Some(std::fs::metadata(&path).unwrap().len())
    );
    let inspected = run(dir.path(), &["inspect", "--json", path.to_str().unwrap()]);
    let inspected: serde_json::Value = serde_json::from_str(inspected.stdout.trim()).unwrap();
    assert_eq!(v["tensors"], inspected["tensors"]);
    for m in ["ours", "candle", "ceiling_sequential", "ceiling_parallel"] {
        let runs = v[m]["runs_s"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{m}");
        assert_eq!(
            v[m]["median_s"], runs[0],
            "{m}: the median of one run is that run"
        );
    }
    std::fs::remove_file(&path).unwrap();
    // The measurement cleans up after itself: nothing at all is left in the folder.
    assert_eq!(files_under(&out), Vec::<std::path::PathBuf>::new());

    // Without --json: the table, with the ratios on the last line.
    let r = run(dir.path(), &tiny);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    for row in ["(a) checkpoint-save", "(b) candle", "(c) raw, one stream"] {
        assert!(r.stdout.contains(row), "{row} in {}", r.stdout);
    }
    let last = r.stdout.trim_end().lines().last().unwrap();
    assert!(last.starts_with("ratio to ceiling a/c = "), "{last}");
}

/// `bench --quantize`: ours timed against the Python program a user writes (comfy-kitchen), or
/// the reason it was skipped; with the scratch venv of this machine, the program runs.
#[test]
fn bench_quantize_times_the_python_program_or_says_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench");
    let args = [
        "bench",
        "--synthetic",
        "sd15",
        "--model-dtype",
        "bf16",
        "--from-file",
        "--quantize",
        "fp8",
        "--max-dim",
        "16",
        "--runs",
        "1",
        "--json",
        "--output-dir",
        out.to_str().unwrap(),
    ];
    let bench = |python: &Path| {
        let r = std::process::Command::new(env!("CARGO_BIN_EXE_checkpoint-save"))
            .current_dir(dir.path())
            .args(args)
            .env("CHECKPOINT_SAVE_PYTHON", python)
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        assert_eq!(v["quantize"], "float8_e4m3fn", "{v}");
        assert!(v["input_gbps"].as_f64().unwrap() > 0.0, "{v}");
        // Nothing is left behind in the output folder.
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
        v
    };
    let missing = bench(&dir.path().join("no-such-python"));
    let why = missing["python_skipped"].as_str().unwrap();
    assert!(why.contains("no Python found"), "{why}");
    assert!(missing["python"].is_null());
    let venv = Path::new("/tmp/qc/venv/bin/python");
    if venv.exists() {
        let ran = bench(venv);
        assert!(ran["python"]["median_s"].as_f64().unwrap() > 0.0, "{ran}");
        assert!(ran["ratio_python"].as_f64().unwrap() > 0.0, "{ran}");
    }
}

/// A path that cannot be printed (stdout on a full device) is said on stderr with the error, so
/// the file just written is not lost to the user.
#[test]
fn a_path_stdout_cannot_take_is_said_on_stderr() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        return; // No /dev/full on this system.
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let done = std::process::Command::new(env!("CARGO_BIN_EXE_checkpoint-save"))
        .args([
            "save",
            "--synthetic",
            "sd15",
            "--tiny",
            "-q",
            "--output-dir",
        ])
        .arg(&out)
        .stdout(full)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(1), "{stderr}");
    let written = files_under(&out);
    assert_eq!(written.len(), 1, "{written:?}");
    assert!(
        stderr.contains("cannot write to stdout")
            && stderr.contains(&written[0].display().to_string()),
        "{stderr}"
    );
}
