//! Jobs that start from files, with the real binary: every input layout `convert` and `save`
//! read, and every kind of bad input refused with a clear error and nothing written.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::{assert_refused, copy_tree, files_under, ok_path, run};

fn fixture(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/diffusers")
        .join(arch)
}

fn tensor_names(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let mut names: Vec<String> = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap()
        .names()
        .into_iter()
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

#[test]
fn convert_reads_single_files_and_pipeline_folders() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    let file = fixture("sdxl").join("checkpoint.safetensors");
    let a = ok_path(
        dir.path(),
        &[
            "convert",
            file.to_str().unwrap(),
            "--output-dir",
            o,
            "--dtype",
            "bf16",
        ],
    );
    let folder = fixture("sdxl").join("pipeline");
    let r = run(
        dir.path(),
        &[
            "convert",
            folder.to_str().unwrap(),
            "--output-dir",
            o,
            "--dtype",
            "bf16",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let b = dir.path().join(r.stdout.trim());
    assert!(
        r.stderr.starts_with("saved sdxl (eps) checkpoint: "),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("read ") && r.stderr.contains("GB/s"),
        "{}",
        r.stderr
    );
    assert_eq!(tensor_names(&a), tensor_names(&b));
    assert!(a.ends_with("checkpoints/ComfyUI_00001_.safetensors"));
    assert!(b.ends_with("checkpoints/ComfyUI_00002_.safetensors"));
}

#[test]
fn save_reads_component_files_in_either_naming() {
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("out");
    let o = o.to_str().unwrap();
    let p = fixture("sdxl").join("pipeline");
    let s = |sub: &str| p.join(sub).to_str().unwrap().to_string();
    // diffusers model folders (and their files), one per text encoder in pipeline order.
    let diffusers = ok_path(
        dir.path(),
        &[
            "save",
            "--model",
            &s("unet"),
            "--clip",
            &s("text_encoder/model.safetensors"),
            "--clip",
            &s("text_encoder_2"),
            "--vae",
            &s("vae"),
            "--output-dir",
            o,
        ],
    );
    // ComfyUI's in-memory names, as `split` writes them.
    let parts = dir.path().join("parts");
    let ckpt = fixture("sdxl").join("checkpoint.safetensors");
    let r = run(
        dir.path(),
        &[
            "split",
            ckpt.to_str().unwrap(),
            "--output-dir",
            parts.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let q = |f: &str| parts.join(f).to_str().unwrap().to_string();
    let comfy = ok_path(
        dir.path(),
        &[
            "save",
            "--model",
            &q("model.safetensors"),
            "--clip",
            &q("clip.safetensors"),
            "--vae",
            &q("vae.safetensors"),
            "--output-dir",
            o,
        ],
    );
    assert_eq!(tensor_names(&diffusers), tensor_names(&comfy));
    // A sharded diffusers transformer as --model, by its index.
    let f = fixture("flux").join("pipeline");
    let fs = |sub: &str| f.join(sub).to_str().unwrap().to_string();
    ok_path(
        dir.path(),
        &[
            "save",
            "--model",
            &fs("transformer/diffusion_pytorch_model.safetensors.index.json"),
            "--clip",
            &fs("text_encoder"),
            "--clip",
            &fs("text_encoder_2"),
            "--vae",
            &fs("vae"),
            "--output-dir",
            o,
        ],
    );
}

#[test]
fn a_folder_that_is_not_a_pipeline_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    let folder = dir.path().join("half");
    copy_tree(&fixture("sdxl").join("pipeline"), &folder);
    std::fs::remove_file(folder.join("model_index.json")).unwrap();
    let r = run(
        dir.path(),
        &["convert", folder.to_str().unwrap(), "--output-dir", o],
    );
    assert_refused(&r, "model_index.json is missing (found: ", &out);
    assert!(r.stderr.contains("unet"), "{}", r.stderr);
    // A pipeline without one of its models.
    copy_tree(&fixture("sdxl").join("pipeline"), &dir.path().join("p2"));
    std::fs::remove_dir_all(dir.path().join("p2/text_encoder_2")).unwrap();
    let r = run(
        dir.path(),
        &[
            "convert",
            dir.path().join("p2").to_str().unwrap(),
            "--output-dir",
            o,
        ],
    );
    assert_refused(&r, "text_encoder_2/ is missing", &out);
}

#[test]
fn a_missing_shard_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let folder = dir.path().join("flux");
    copy_tree(&fixture("flux").join("pipeline"), &folder);
    let shard = "transformer/diffusion_pytorch_model-00002-of-00003.safetensors";
    std::fs::remove_file(folder.join(shard)).unwrap();
    let r = run(
        dir.path(),
        &[
            "convert",
            folder.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert_refused(
        &r,
        "diffusion_pytorch_model-00002-of-00003.safetensors",
        &out,
    );
    assert!(r.stderr.contains("missing"), "{}", r.stderr);
}

#[test]
fn a_component_file_in_the_wrong_slot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let p = fixture("sd15").join("pipeline");
    let s = |sub: &str| p.join(sub).to_str().unwrap().to_string();
    let r = run(
        dir.path(),
        &[
            "save",
            "--model",
            &s("vae"),
            "--clip",
            &s("text_encoder"),
            "--vae",
            &s("vae"),
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert_refused(&r, "holds a AutoencoderKL", &out);
    assert!(r.stderr.contains("not a denoiser"), "{}", r.stderr);
    let r = run(
        dir.path(),
        &[
            "save",
            "--model",
            &s("unet"),
            "--clip",
            &s("unet"),
            "--vae",
            &s("vae"),
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert_refused(&r, "not text encoders", &out);
    // A single-file checkpoint is not a component, nor a component a checkpoint (but for a
    // denoiser alone, which a job reads as ModelSave's input: tests/denoiser_files.rs).
    let r = run(
        dir.path(),
        &[
            "convert",
            &s("vae/diffusion_pytorch_model.safetensors"),
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert_refused(&r, "is not a single-file checkpoint", &out);
}

#[test]
fn shapes_that_do_not_fit_the_architecture_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let folder = fixture("sdxl").join("pipeline");
    let r = run(
        dir.path(),
        &[
            "convert",
            folder.to_str().unwrap(),
            "--arch",
            "flux",
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert_refused(&r, "flux", &out);
    let file = fixture("sd15").join("checkpoint.safetensors");
    let r = run(
        dir.path(),
        &[
            "convert",
            file.to_str().unwrap(),
            "--arch",
            "sdxl",
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert_refused(&r, "sdxl layout", &out);
}

/// Waits until `child` blocks on a file lock (an entry with `->` in /proc/locks).
fn wait_until_waiting_on_a_lock(child: &mut std::process::Child) {
    let start = Instant::now();
    loop {
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        let pid = child.id().to_string();
        if locks.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"->") && f.get(5) == Some(&pid.as_str())
        }) {
            return;
        }
        if let Ok(Some(s)) = child.try_wait() {
            panic!("the child exited ({s}) instead of waiting for the folder's lock");
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the child never waited"
        );
        std::thread::yield_now();
    }
}

/// Runs `convert INPUT` with the output folder locked, so the child opens its input and then
/// waits; `meanwhile` changes the input; the job then runs and must refuse.
fn changed_while_read(meanwhile: impl FnOnce(&Path), needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    std::fs::copy(fixture("sd15").join("checkpoint.safetensors"), &input).unwrap();
    let out = dir.path().join("out");
    let folder = out.join("checkpoints");
    std::fs::create_dir_all(&folder).unwrap();
    let lock = File::open(&folder).unwrap();
    lock.lock().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_checkpoint-save"))
        .args([
            "convert",
            input.to_str().unwrap(),
            "--dtype",
            "f16",
            "--output-dir",
            out.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until_waiting_on_a_lock(&mut child);
    meanwhile(&input);
    drop(lock);
    let done = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(needle), "`{needle}` in {stderr}");
    assert_eq!(
        files_under(&out),
        Vec::<PathBuf>::new(),
        "nothing published, no temp left"
    );
}

#[test]
fn an_input_truncated_while_read_publishes_nothing() {
    changed_while_read(
        |p| {
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_len(200_000)
                .unwrap()
        },
        "truncated or replaced",
    );
}

#[test]
fn an_input_modified_while_read_publishes_nothing() {
    changed_while_read(
        |p| {
            let f = File::options().write(true).open(p).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 64], 100_000).unwrap();
            f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1000))
                .unwrap();
        },
        "modified or replaced while the job read it",
    );
}

#[test]
fn an_input_that_is_also_the_output_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    std::fs::copy(fixture("sd15").join("checkpoint.safetensors"), &path).unwrap();
    let before = std::fs::read(&path).unwrap();
    let input = checkpoint_save::open_input(&path, None).unwrap();
    let err =
        checkpoint_save::save_to_path(&input.components, &path, &Default::default()).unwrap_err();
    assert!(err.to_string().contains("is an input of this job"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
