//! A training loop killed in the middle of a checkpoint: the manifest lists only complete files,
//! resume finds the newest complete step, and the next run cleans up what the crash left.
//!
//! The crash is exact: the child process (this test binary, re-run with `CHILD_DIR` set) saves
//! in a loop with `CHECKPOINT_SAVE_FAULT_KILL_AFTER` set, so the writer kills it with SIGKILL
//! once a chosen number of data bytes is written. This file has its own `main` (no libtest
//! harness) so that the child mode is not a test of its own.

use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use checkpoint_save::checkpointer::{load_latest, read_manifest, Checkpointer};
use libtest_mimic::{Arguments, Trial};

const CHILD_DIR: &str = "CHECKPOINT_SAVE_TEST_CHILD_DIR";
const LAYERS: usize = 8;
const ROWS: usize = 256;
const COLS: usize = 1024;
/// Data bytes of one checkpoint: every layer in f32.
const DATA: u64 = (LAYERS * ROWS * COLS * 4) as u64;

fn model(fill: f32) -> VarMap {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    for i in 0..LAYERS {
        vb.get_with_hints(
            (ROWS, COLS),
            &format!("layer{i}.weight"),
            candle_nn::Init::Const(f64::from(fill)),
        )
        .unwrap();
    }
    vm
}

/// The child: resume after the newest complete checkpoint and save every step, each tensor
/// filled with the step number, until the injected fault kills the process.
fn child(dir: &Path) -> ! {
    let vm = model(0.0);
    let mut ck = Checkpointer::builder(dir).keep_last(2).build().unwrap();
    let first = load_latest(dir, None).unwrap().map_or(1, |r| r.step + 1);
    for step in first.. {
        for var in vm.all_vars() {
            var.set(&Tensor::full(step as f32, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
        ck.save(&vm, step, None).unwrap();
    }
    unreachable!("the loop only ends when the fault kills the process")
}

/// Runs the child until the fault kills it after `kill_after` data bytes.
fn run_child(dir: &Path, kill_after: u64) {
    use std::os::unix::process::ExitStatusExt;
    let status = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_DIR, dir)
        .env("CHECKPOINT_SAVE_FAULT_KILL_AFTER", kill_after.to_string())
        .status()
        .unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
}

fn check(dir: &Path, listed: &[u64]) {
    let manifest = read_manifest(dir).unwrap().unwrap();
    let steps: Vec<u64> = manifest.entries.iter().map(|e| e.step).collect();
    assert_eq!(
        steps, listed,
        "the manifest lists exactly the complete checkpoints"
    );
    for e in &manifest.entries {
        let len = std::fs::metadata(dir.join(&e.file)).unwrap().len();
        assert_eq!(len, e.bytes, "{} is complete", e.file);
    }
    let resumed = load_latest(dir, None).unwrap().unwrap();
    assert!(resumed.rejected.is_empty(), "{:?}", resumed.rejected);
    let newest = *listed.last().unwrap();
    assert_eq!(resumed.step, newest);
    let back = model(-1.0);
    resumed.load_into(&back, &Device::Cpu).unwrap();
    for var in back.all_vars() {
        let v = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(v.iter().all(|&x| x == newest as f32));
    }
    // What the crash left: the temporary file of the step being written, nothing else.
    let partial: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert_eq!(partial.len(), 1, "{partial:?}");
    assert!(partial[0].starts_with(&format!("checkpoint-step{:08}.safetensors.", newest + 1)));
}

fn killed_mid_save_leaves_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    // Killed halfway through step 2.
    run_child(dir.path(), DATA + DATA / 2);
    check(dir.path(), &[1]);
    // The next run resumes at step 2, removes the dead run's temporary file and is killed
    // halfway through step 3.
    run_child(dir.path(), DATA + DATA / 2);
    check(dir.path(), &[1, 2]);
    // Killed during its first save (step 3 again): steps 1 and 2 stay.
    run_child(dir.path(), DATA / 3);
    check(dir.path(), &[1, 2]);
}

fn main() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        child(Path::new(&dir));
    }
    let args = Arguments::from_args();
    let trials = vec![Trial::test(
        "killed_mid_save_leaves_the_previous_checkpoint",
        || {
            killed_mid_save_leaves_the_previous_checkpoint();
            Ok(())
        },
    )];
    libtest_mimic::run(&args, trials).exit();
}
