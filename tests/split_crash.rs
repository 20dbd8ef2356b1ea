//! A `split` killed mid-write leaves its staging folder beside a new output folder (or inside an
//! existing empty one); the next split (or save) there removes it, as it removes a killed save's
//! temporary file.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use common::cli::{ok_path, run};

#[test]
fn a_killed_splits_staging_folder_is_removed_by_the_next_split() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = ok_path(
        dir.path(),
        &["save", "--synthetic", "sd15", "--max-dim", "64", "-q"],
    );
    let ckpt = ckpt.to_str().unwrap();
    killed_split(dir.path(), ckpt);
    let staging: Vec<String> = entries(dir.path())
        .into_iter()
        .filter(|n| n.starts_with(".parts.") && n.ends_with(".partial"))
        .collect();
    assert_eq!(staging.len(), 1, "{:?}", entries(dir.path()));
    assert!(dir.path().join(&staging[0]).is_dir());

    let r = run(dir.path(), &["split", ckpt, "--output-dir", "parts"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(entries(dir.path()), vec!["output", "parts"]);
    assert_eq!(
        entries(&dir.path().join("parts")),
        vec!["clip.safetensors", "model.safetensors", "vae.safetensors"]
    );
}

/// Into an existing empty folder the staging folder is inside it (the folder is kept): a killed
/// split leaves it there, and the next split into that folder removes it and succeeds.
#[test]
fn a_killed_split_into_an_existing_empty_folder_is_cleaned_up_by_the_next() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let ckpt = ok_path(
        dir.path(),
        &["save", "--synthetic", "sd15", "--max-dim", "64", "-q"],
    );
    let ckpt = ckpt.to_str().unwrap();
    let parts = dir.path().join("parts");
    std::fs::create_dir(&parts).unwrap();
    let ino = std::fs::metadata(&parts).unwrap().ino();
    killed_split(dir.path(), ckpt);
    let left = entries(&parts);
    assert!(
        left.len() == 1 && left[0].starts_with(".split.") && left[0].ends_with(".partial"),
        "{left:?}"
    );

    let r = run(dir.path(), &["split", ckpt, "--output-dir", "parts"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        entries(&parts),
        vec!["clip.safetensors", "model.safetensors", "vae.safetensors"]
    );
    assert_eq!(
        std::fs::metadata(&parts).unwrap().ino(),
        ino,
        "the same folder"
    );
}

/// `split CKPT --output-dir parts` in `dir`, killed (SIGKILL, no cleanup) once 1 MiB of the
/// first part is written.
fn killed_split(dir: &std::path::Path, ckpt: &str) {
    let status = Command::new(env!("CARGO_BIN_EXE_checkpoint-save"))
        .current_dir(dir)
        .args(["split", ckpt, "--output-dir", "parts"])
        .env("CHECKPOINT_SAVE_FAULT_KILL_AFTER", (1u64 << 20).to_string())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
}

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}
