//! PyTorch checkpoints as inputs, with the real binary: an A1111/Lightning `.ckpt` and a
//! diffusers pipeline of `.bin` files convert to the same checkpoint as their safetensors forms,
//! and a pickle that would run code is refused by name with nothing run and nothing written.

mod common;

use std::path::{Path, PathBuf};

use common::cli::{assert_refused, copy_tree, files_under, ok_path, run};
use common::same_tensors;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn convert(cwd: &Path, input: &Path, out: &str) -> Vec<u8> {
    let args = [
        "convert",
        input.to_str().unwrap(),
        "--output-dir",
        out,
        "--dtype",
        "f16",
        "--quiet",
    ];
    std::fs::read(ok_path(cwd, &args)).unwrap()
}

#[test]
fn a_ckpt_converts_like_its_safetensors_form() {
    // Regression: `convert old.ckpt` answered "safetensors header of 578712552184433488 bytes
    // exceeds the 100000000-byte limit".
    let dir = tempfile::tempdir().unwrap();
    let ckpt = convert(dir.path(), &fixtures().join("torch/sd15.ckpt"), "a");
    let st = fixtures().join("diffusers/sd15/checkpoint.safetensors");
    let reference = convert(dir.path(), &st, "b");
    same_tensors(&ckpt, &reference, "sd15.ckpt vs checkpoint.safetensors");
}

#[test]
fn a_pipeline_of_bin_files_converts_like_its_safetensors_form() {
    let dir = tempfile::tempdir().unwrap();
    let original = fixtures().join("diffusers/sd15/pipeline");
    let bins = dir.path().join("pipeline");
    copy_tree(&original, &bins);
    std::fs::remove_file(bins.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    std::fs::remove_file(bins.join("text_encoder/model.safetensors")).unwrap();
    let torch = fixtures().join("torch");
    std::fs::copy(
        torch.join("unet.bin"),
        bins.join("unet/diffusion_pytorch_model.bin"),
    )
    .unwrap();
    std::fs::copy(
        torch.join("text_encoder.bin"),
        bins.join("text_encoder/pytorch_model.bin"),
    )
    .unwrap();
    let from_bins = convert(dir.path(), &bins, "a");
    let reference = convert(dir.path(), &original, "b");
    same_tensors(&from_bins, &reference, "pipeline of .bin vs .safetensors");
}

#[test]
fn inspect_says_what_kind_of_file_it_read() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = fixtures().join("torch/sd15.ckpt");
    let r = run(dir.path(), &["inspect", ckpt.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let json: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(json["format"], "pytorch");
    assert_eq!(json["arch"], "sd15");
    assert_eq!(
        json["left_out"],
        serde_json::json!(["epoch", "global_step"])
    );
    let r = run(dir.path(), &["inspect", ckpt.to_str().unwrap()]);
    assert!(
        r.stdout.contains("format:       PyTorch checkpoint"),
        "{}",
        r.stdout
    );
}

#[test]
fn a_pickle_that_would_run_code_is_refused_and_nothing_runs() {
    for (file, global) in [
        ("hostile_system.ckpt", "posix.system"),
        ("hostile_exec.ckpt", "builtins.exec"),
        ("hostile_popen.ckpt", "subprocess.Popen"),
        ("hostile_class.ckpt", "__main__.Unknown"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let input = fixtures().join("torch").join(file);
        let out = dir.path().join("out");
        for job in [
            vec!["convert", input.to_str().unwrap(), "--output-dir", "out"],
            vec!["inspect", input.to_str().unwrap()],
            vec![
                "merge",
                input.to_str().unwrap(),
                input.to_str().unwrap(),
                "--ratio",
                "0.5",
                "--output-dir",
                "out",
            ],
        ] {
            let r = run(dir.path(), &job);
            assert_refused(&r, &format!("refused global `{global}`"), &out);
        }
        // Each payload would create `pwned` in the working directory.
        assert_eq!(files_under(dir.path()), Vec::<PathBuf>::new(), "{file}");
    }
}

#[test]
fn legacy_torch_formats_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = fixtures().join("torch/legacy.pt");
    let r = run(
        dir.path(),
        &["convert", legacy.to_str().unwrap(), "--output-dir", "out"],
    );
    assert_refused(
        &r,
        "legacy (pre-1.6) pickle format",
        &dir.path().join("out"),
    );
    let strided = fixtures().join("torch/strided.pt");
    let r = run(dir.path(), &["inspect", strided.to_str().unwrap()]);
    assert_refused(&r, "strided view", &dir.path().join("out"));
}
