//! A training loop killed in the middle of a checkpoint: the manifest lists only complete files,
//! resume finds the newest complete step, and the next run cleans up what the crash left. And a
//! run in another process holds its folder: a second run of its stem is refused until it ends,
//! however it ends.
//!
//! The crash is exact: the child process (this test binary, re-run with `CHILD_DIR` set) saves
//! in a loop with `CHECKPOINT_SAVE_FAULT_KILL_AFTER` set, so the writer kills it with SIGKILL
//! once a chosen number of data bytes is written. This file has its own `main` (no libtest
//! harness) so that the child modes are not tests of their own.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use checkpoint_save::checkpointer::{load_latest, read_manifest, Checkpointer};
use checkpoint_save::Error;
use libtest_mimic::{Arguments, Trial};

const CHILD_DIR: &str = "CHECKPOINT_SAVE_TEST_CHILD_DIR";
/// The holding child: builds a checkpointer in this folder, says `ready`, and keeps it until
/// its stdin closes.
const HOLD_DIR: &str = "CHECKPOINT_SAVE_TEST_HOLD_DIR";
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

fn hold(dir: &Path) {
    let ck = Checkpointer::builder(dir).build().unwrap();
    println!("ready");
    let mut rest = Vec::new();
    std::io::stdin().read_to_end(&mut rest).unwrap();
    drop(ck);
}

fn a_run_in_another_process_holds_its_stem_until_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(HOLD_DIR, dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    match Checkpointer::builder(dir.path()).build() {
        Err(Error::FolderInUse { holder, .. }) => {
            assert!(
                holder.starts_with(&format!("pid {} on ", child.id())),
                "{holder}"
            );
            assert!(!holder.contains("this process"), "{holder}");
        }
        other => panic!("expected FolderInUse, got {other:?}"),
    }
    // Killed (no destructor runs): the operating system releases its lock.
    child.kill().unwrap();
    child.wait().unwrap();
    Checkpointer::builder(dir.path()).build().unwrap();
}

fn main() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        child(Path::new(&dir));
    }
    if let Some(dir) = std::env::var_os(HOLD_DIR) {
        hold(Path::new(&dir));
        return;
    }
    let args = Arguments::from_args();
    let trials = vec![
        Trial::test("killed_mid_save_leaves_the_previous_checkpoint", || {
            killed_mid_save_leaves_the_previous_checkpoint();
            Ok(())
        }),
        Trial::test(
            "a_run_in_another_process_holds_its_stem_until_it_ends",
            || {
                a_run_in_another_process_holds_its_stem_until_it_ends();
                Ok(())
            },
        ),
    ];
    libtest_mimic::run(&args, trials).exit();
}
