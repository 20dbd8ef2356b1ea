//! The checkpointer's contract, clause by clause (the module docs of `checkpointer` and the
//! README's "Training loops" section state it):
//!
//! 1. it deletes only files it wrote: named by its own pattern, directly inside its folder, still
//!    the size and header the manifest recorded; a manifest naming anything else (a downloaded
//!    run folder is hostile input) gets a refusal, never a deletion, and resume never follows it;
//! 2. retention is by save order, so a rollback keeps the new work and a step can be reached again;
//! 3. nothing under a final name is ever replaced: a taken name gets the next `-v<n>` version;
//! 4. two runs of one stem in one folder are refused (stems keep runs apart).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use checkpoint_save::checkpointer::{
    load_latest, read_manifest, Checkpointer, Manifest, ManifestEntry, SaveOutcome,
    MANIFEST_FILE_NAME,
};
use checkpoint_save::Error;

/// A VarMap of two `8 × 8` layers, every value `fill`.
fn model(fill: f32) -> VarMap {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    for i in 0..2 {
        vb.get_with_hints(
            (8, 8),
            &format!("layer{i}.weight"),
            candle_nn::Init::Const(f64::from(fill)),
        )
        .unwrap();
    }
    vm
}

fn set_all(vm: &VarMap, value: f32) {
    for var in vm.all_vars() {
        var.set(&Tensor::full(value, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
}

/// The value every tensor of a checkpoint file holds (asserting they are all equal).
fn fill_of(path: &Path) -> f32 {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let values: Vec<f32> = tensors
        .values()
        .flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect();
    assert!(
        values.windows(2).all(|w| w[0] == w[1]),
        "{}",
        path.display()
    );
    values[0]
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// The checkpoint files in `dir` (lock and manifest aside).
fn checkpoints(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.ends_with(".safetensors"))
        .collect()
}

fn listed(dir: &Path) -> Vec<String> {
    read_manifest(dir)
        .unwrap()
        .unwrap()
        .entries
        .iter()
        .map(|e| e.file.clone())
        .collect()
}

fn write_manifest(dir: &Path, manifest: &Manifest) {
    std::fs::write(
        dir.join(MANIFEST_FILE_NAME),
        serde_json::to_vec_pretty(manifest).unwrap(),
    )
    .unwrap();
}

/// One real checkpoint saved into its own folder, for its manifest entry (size and checksum).
fn real_entry(scratch: &Path, step: u64) -> (ManifestEntry, std::path::PathBuf) {
    let dir = scratch.join(format!("real{step}"));
    let mut ck = Checkpointer::builder(&dir).build().unwrap();
    ck.save(&model(step as f32), step, None).unwrap();
    let done = ck.finish().unwrap().unwrap();
    (done.entry, done.path)
}

#[test]
fn retention_deletes_nothing_outside_its_own_pattern_and_folder() {
    let scratch = tempfile::tempdir().unwrap();
    let run = scratch.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let (template, real) = real_entry(scratch.path(), 1);

    // Victims: files an entry of a hostile manifest names, each of the size and header the entry
    // claims (an attacker can compute both), so only the name rules can protect them.
    let victim = scratch.path().join("victim.safetensors");
    let absolute = scratch.path().join("absolute.safetensors");
    let in_sub = run.join("sub").join("checkpoint-step00000003.safetensors");
    let linked_to = scratch.path().join("linked-to.safetensors");
    let foreign = run.join("notes.safetensors");
    std::fs::create_dir(run.join("sub")).unwrap();
    for p in [&victim, &absolute, &in_sub, &linked_to, &foreign] {
        std::fs::copy(&real, p).unwrap();
    }
    std::os::unix::fs::symlink(&linked_to, run.join("checkpoint-step00000004.safetensors"))
        .unwrap();
    // A user's own file of the pattern's name, whose size and header the manifest does not match.
    std::fs::write(run.join("checkpoint-step00000005.safetensors"), b"mine").unwrap();

    let files = [
        "../victim.safetensors".to_string(),
        absolute.display().to_string(),
        "sub/checkpoint-step00000003.safetensors".to_string(),
        "checkpoint-step00000004.safetensors".to_string(),
        "checkpoint-step00000005.safetensors".to_string(),
        "notes.safetensors".to_string(),
    ];
    let entries = files
        .iter()
        .enumerate()
        .map(|(i, f)| ManifestEntry {
            step: i as u64 + 1,
            file: f.clone(),
            ..template.clone()
        })
        .collect();
    write_manifest(
        &run,
        &Manifest {
            version: 1,
            entries,
        },
    );

    let mut ck = Checkpointer::builder(&run).keep_last(1).build().unwrap();
    ck.save(&model(1.0), 100, None).unwrap();
    let done = ck.finish().unwrap().unwrap();

    // Each refusal is reported with what was refused and why; nothing was removed.
    assert!(done.removed.is_empty(), "{:?}", done.removed);
    let mut refused: Vec<&str> = done.refused.iter().map(|(f, _)| f.as_str()).collect();
    let mut expected: Vec<&str> = files.iter().map(String::as_str).collect();
    refused.sort();
    expected.sort();
    assert_eq!(refused, expected);
    let why = |f: &str| &done.refused.iter().find(|(g, _)| g == f).unwrap().1;
    assert!(why("../victim.safetensors").contains("not a name the checkpointer gives"));
    assert!(why("checkpoint-step00000004.safetensors").contains("symbolic link"));
    assert!(why("checkpoint-step00000005.safetensors").contains("bytes, the manifest says"));
    for p in [&victim, &absolute, &in_sub, &linked_to, &foreign] {
        assert!(p.is_file(), "{} was deleted", p.display());
    }
    assert!(run
        .join("checkpoint-step00000004.safetensors")
        .symlink_metadata()
        .is_ok());
    assert_eq!(
        std::fs::read(run.join("checkpoint-step00000005.safetensors")).unwrap(),
        b"mine"
    );
    assert_eq!(listed(&run), vec!["checkpoint-step00000100.safetensors"]);
}

#[test]
fn resume_never_follows_an_entry_outside_its_pattern_or_folder() {
    let scratch = tempfile::tempdir().unwrap();
    let run = scratch.path().join("run");
    let mut ck = Checkpointer::builder(&run).build().unwrap();
    ck.save(&model(3.0), 3, None).unwrap();
    let good = ck.finish().unwrap().unwrap().entry;

    // Newer entries (higher steps, saved later) that point elsewhere, each with the right size
    // and checksum of what they point at.
    let (template, real) = real_entry(scratch.path(), 9);
    std::fs::copy(&real, scratch.path().join("outside.safetensors")).unwrap();
    std::os::unix::fs::symlink(&real, run.join("checkpoint-step00000009.safetensors")).unwrap();
    std::fs::copy(&real, run.join("other.safetensors")).unwrap();
    let hostile = [
        "../outside.safetensors",
        "checkpoint-step00000009.safetensors",
        "other.safetensors",
    ];
    let mut entries = vec![good.clone()];
    for (i, f) in hostile.iter().enumerate() {
        entries.push(ManifestEntry {
            step: 10 + i as u64,
            file: (*f).into(),
            ..template.clone()
        });
    }
    write_manifest(
        &run,
        &Manifest {
            version: 1,
            entries,
        },
    );
    let resumed = load_latest(&run, Some("checkpoint")).unwrap().unwrap();
    assert_eq!(resumed.step, 3);
    assert_eq!(resumed.path, run.join(&good.file));
    let rejected: Vec<&str> = resumed.rejected.iter().map(|(f, _)| f.as_str()).collect();
    for f in hostile {
        assert!(
            rejected.contains(&f),
            "{f} not rejected: {:?}",
            resumed.rejected
        );
    }
}

#[test]
fn a_rollback_keeps_the_new_work_and_a_step_can_be_reached_again() {
    let dir = tempfile::tempdir().unwrap();
    let vm = model(0.0);
    let mut ck = Checkpointer::builder(dir.path())
        .keep_last(2)
        .build()
        .unwrap();
    for step in [10, 20, 30] {
        set_all(&vm, step as f32);
        ck.save(&vm, step, None).unwrap();
    }
    ck.finish().unwrap();

    // Training resumed from step 10 (a new process, a new checkpointer) on another branch.
    let mut ck = Checkpointer::builder(dir.path())
        .keep_last(2)
        .build()
        .unwrap();
    set_all(&vm, 1015.0);
    ck.save(&vm, 15, None).unwrap();
    ck.wait().unwrap();
    let p15 = dir.path().join("checkpoint-step00000015.safetensors");
    assert!(
        p15.is_file(),
        "the newest save was removed: {:?}",
        names(dir.path())
    );
    set_all(&vm, 1020.0);
    ck.save(&vm, 20, None).unwrap();
    ck.finish().unwrap();
    assert_eq!(
        checkpoints(dir.path()),
        vec![
            "checkpoint-step00000015.safetensors",
            "checkpoint-step00000020.safetensors"
        ]
    );
    let resumed = load_latest(dir.path(), None).unwrap().unwrap();
    assert_eq!(resumed.step, 20);
    assert_eq!(fill_of(&resumed.path), 1020.0);
    assert_eq!(fill_of(&p15), 1015.0);
}

#[test]
fn a_users_file_under_a_checkpoint_name_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mine = dir.path().join("checkpoint-step00000005.safetensors");
    std::fs::write(&mine, b"the user's own file").unwrap();
    let mut ck = Checkpointer::builder(dir.path())
        .keep_last(1)
        .build()
        .unwrap();
    match ck.save(&model(5.0), 5, None).unwrap() {
        SaveOutcome::Started { path, .. } => {
            assert_eq!(
                path,
                dir.path().join("checkpoint-step00000005-v1.safetensors")
            )
        }
        other => panic!("{other:?}"),
    }
    let done = ck.wait().unwrap().unwrap();
    assert_eq!(done.entry.file, "checkpoint-step00000005-v1.safetensors");
    assert_eq!(fill_of(&done.path), 5.0);
    ck.save(&model(6.0), 6, None).unwrap();
    ck.finish().unwrap();
    // Retention removed its own step-5 file, never the user's.
    assert_eq!(std::fs::read(&mine).unwrap(), b"the user's own file");
    assert_eq!(
        checkpoints(dir.path()),
        vec![
            "checkpoint-step00000005.safetensors",
            "checkpoint-step00000006.safetensors"
        ]
    );
}

#[test]
fn a_second_run_of_the_same_stem_in_one_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = Checkpointer::builder(dir.path()).build().unwrap();
    let err = Checkpointer::builder(dir.path())
        .build()
        .expect_err("two runs of one stem in one folder");
    let msg = err.to_string();
    match &err {
        Error::FolderInUse { stem, holder, .. } => {
            assert_eq!(stem, "checkpoint");
            assert!(
                holder.starts_with(&format!("pid {} on ", std::process::id())),
                "{holder}"
            );
            assert!(holder.contains("this process"), "{holder}");
        }
        other => panic!("expected FolderInUse, got {other}"),
    }
    assert!(msg.contains("one run per stem and folder"), "{msg}");
    // Another stem is another run: it shares the folder, each keeping only its own files.
    let mut ema = Checkpointer::builder(dir.path())
        .stem("ema")
        .keep_last(1)
        .build()
        .unwrap();
    let mut first = first;
    for step in [1, 2] {
        first.save(&model(1.0), step, None).unwrap();
        ema.save(&model(2.0), step, None).unwrap();
        first.wait().unwrap();
        ema.wait().unwrap();
    }
    assert_eq!(
        checkpoints(dir.path()),
        vec![
            "checkpoint-step00000001.safetensors",
            "checkpoint-step00000002.safetensors",
            "ema-step00000002.safetensors"
        ]
    );
    // Dropping a run releases its stem; the lock file stays (an OS lock marks a live run).
    drop(first);
    drop(ema);
    Checkpointer::builder(dir.path()).build().unwrap();
    assert!(names(dir.path()).contains(&".checkpoint.lock".to_string()));
}

#[test]
fn a_step_saved_again_while_its_old_file_is_kept_gets_a_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let vm = model(0.0);
    let mut ck = Checkpointer::builder(dir.path())
        .keep_last(4)
        .build()
        .unwrap();
    for step in [10, 20, 30] {
        set_all(&vm, step as f32);
        ck.save(&vm, step, None).unwrap();
    }
    ck.finish().unwrap();
    let old20 = dir.path().join("checkpoint-step00000020.safetensors");
    let before = std::fs::read(&old20).unwrap();

    let mut ck = Checkpointer::builder(dir.path())
        .keep_last(4)
        .build()
        .unwrap();
    for (step, fill) in [(15, 1015.0), (20, 1020.0)] {
        set_all(&vm, fill);
        ck.save(&vm, step, None).unwrap();
    }
    let done = ck.finish().unwrap().unwrap();
    assert_eq!(
        done.path,
        dir.path().join("checkpoint-step00000020-v1.safetensors")
    );
    // The abandoned branch's step 20 is untouched; step 10, the oldest save, aged out.
    assert_eq!(std::fs::read(&old20).unwrap(), before);
    assert_eq!(
        listed(dir.path()),
        vec![
            "checkpoint-step00000020.safetensors",
            "checkpoint-step00000030.safetensors",
            "checkpoint-step00000015.safetensors",
            "checkpoint-step00000020-v1.safetensors"
        ]
    );
    // Resume takes the last save, not the highest step.
    let resumed = load_latest(dir.path(), Some("checkpoint"))
        .unwrap()
        .unwrap();
    assert_eq!((resumed.step, fill_of(&resumed.path)), (20, 1020.0));
    assert_eq!(resumed.entry.file, "checkpoint-step00000020-v1.safetensors");
}
