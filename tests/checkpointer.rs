//! Training-loop checkpoints: retention, resume, error propagation, snapshot isolation, crash
//! safety and the in-flight policy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use checkpoint_save::checkpointer::{
    load_latest, read_manifest, Checkpointer, InFlight, MetricOrder, SaveOutcome,
};
use checkpoint_save::Error;

/// A VarMap with `layer{i}.weight` of `rows × cols`, every value `fill`.
fn model(layers: usize, rows: usize, cols: usize, fill: f32) -> VarMap {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    for i in 0..layers {
        vb.get_with_hints(
            (rows, cols),
            &format!("layer{i}.weight"),
            candle_nn::Init::Const(f64::from(fill)),
        )
        .unwrap();
    }
    vm
}

fn set_all(vm: &VarMap, value: f32) {
    for var in vm.all_vars() {
        let t = Tensor::full(value, var.shape(), &Device::Cpu).unwrap();
        var.set(&t).unwrap();
    }
}

fn values(vm: &VarMap) -> Vec<f32> {
    let data = vm.data().lock().unwrap();
    let mut names: Vec<_> = data.keys().cloned().collect();
    names.sort();
    names
        .iter()
        .flat_map(|n| {
            data[n]
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

fn steps_on_disk(dir: &Path, stem: &str) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let rest = name.strip_prefix(&format!("{stem}-step"))?;
            rest.strip_suffix(".safetensors")?.parse().ok()
        })
        .collect();
    steps.sort();
    steps
}

#[test]
fn retention_keeps_last_n_and_best_k() {
    let dir = tempfile::tempdir().unwrap();
    let vm = model(2, 8, 8, 0.0);
    let mut ck = Checkpointer::builder(dir.path())
        .stem("run")
        .keep_last(2)
        .keep_best(2, MetricOrder::LowerIsBetter)
        .build()
        .unwrap();
    let losses = [5.0, 1.0, 4.0, 2.0, 3.0, 6.0, 7.0];
    for (i, loss) in losses.iter().enumerate() {
        ck.save(&vm, i as u64 * 10, Some(*loss)).unwrap();
    }
    let done = ck.finish().unwrap().unwrap();
    assert_eq!(done.entry.step, 60);
    // Last two: 50, 60. Best two: 10 (1.0), 30 (2.0).
    assert_eq!(steps_on_disk(dir.path(), "run"), vec![10, 30, 50, 60]);
    let manifest = read_manifest(dir.path()).unwrap().unwrap();
    let listed: Vec<u64> = manifest.entries.iter().map(|e| e.step).collect();
    assert_eq!(listed, vec![10, 30, 50, 60]);
    assert!(manifest
        .entries
        .iter()
        .all(|e| e.header_checksum.starts_with("fnv1a64:")));

    // Higher-is-better, last 1 only, in a new checkpointer over the same folder.
    let mut ck = Checkpointer::builder(dir.path())
        .stem("run")
        .keep_last(1)
        .keep_best(1, MetricOrder::HigherIsBetter)
        .build()
        .unwrap();
    ck.save(&vm, 70, Some(0.5)).unwrap();
    ck.finish().unwrap();
    // Best (highest) is 60 (7.0); last is 70.
    assert_eq!(steps_on_disk(dir.path(), "run"), vec![60, 70]);
}

#[test]
fn resume_into_varmap_and_mismatch_loads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let vm = model(3, 4, 5, 1.5);
    let moments: HashMap<String, Tensor> = [(
        "m.layer0".to_string(),
        Tensor::full(7f32, (4, 5), &Device::Cpu).unwrap(),
    )]
    .into_iter()
    .collect();
    let mut ck = Checkpointer::builder(dir.path()).build().unwrap();
    ck.save_with_extra(&vm, [("optim.", &moments)], 42, Some(0.25))
        .unwrap();
    ck.finish().unwrap();

    let resumed = load_latest(dir.path(), Some("checkpoint"))
        .unwrap()
        .unwrap();
    assert_eq!(resumed.step, 42);
    assert_eq!(resumed.metric, Some(0.25));
    assert!(resumed.rejected.is_empty());

    // Into a fresh model of the same shape.
    let target = model(3, 4, 5, 0.0);
    resumed.load_into(&target, &Device::Cpu).unwrap();
    assert!(values(&target).iter().all(|&v| v == 1.5));
    let extra = resumed.extra("optim.", &Device::Cpu).unwrap();
    assert_eq!(extra.keys().collect::<Vec<_>>(), vec!["m.layer0"]);
    let m = extra["m.layer0"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(m.iter().all(|&v| v == 7.0));
    assert!(resumed.extra("nope.", &Device::Cpu).is_err());

    // A model with one extra layer, one missing layer and one wrong shape.
    let other = VarMap::new();
    let vb = VarBuilder::from_varmap(&other, DType::F32, &Device::Cpu);
    let init = candle_nn::Init::Const(-1.0);
    vb.get_with_hints((4, 5), "layer0.weight", init).unwrap();
    vb.get_with_hints((5, 4), "layer1.weight", init).unwrap();
    vb.get_with_hints((4, 5), "head.weight", init).unwrap();
    let err = resumed.load_into(&other, &Device::Cpu).unwrap_err();
    let msg = err.to_string();
    match err {
        Error::StateMismatch {
            missing,
            unexpected,
            mismatched,
            ..
        } => {
            assert_eq!(missing, vec!["head.weight"]);
            assert_eq!(unexpected, vec!["layer2.weight"]);
            assert_eq!(mismatched.len(), 1);
            assert_eq!(mismatched[0].0, "layer1.weight");
        }
        other => panic!("unexpected error {other}"),
    }
    for name in [
        "head.weight",
        "layer2.weight",
        "layer1.weight",
        "nothing was loaded",
    ] {
        assert!(msg.contains(name), "{msg}");
    }
    // Nothing was loaded: layer0 (which matched) keeps its old values.
    assert!(values(&other).iter().all(|&v| v == -1.0));
}

/// Holds the folder's lock, so a background save stays in flight (it waits to reserve its file
/// name, after its snapshot is taken) until the guard is dropped.
fn hold_folder(dir: &Path) -> std::fs::File {
    let f = std::fs::File::open(dir).unwrap();
    f.lock().unwrap();
    f
}

/// Starts a save of `step` whose background write will fail: a file appears under its name
/// while the write waits for the folder (the publish never replaces it).
fn start_doomed_save(ck: &mut Checkpointer, vm: &VarMap, dir: &Path, step: u64) -> PathBuf {
    let held = hold_folder(dir);
    let SaveOutcome::Started { path, .. } = ck.save(vm, step, None).unwrap() else {
        panic!("the save must start");
    };
    std::fs::write(&path, b"someone else's file").unwrap();
    drop(held);
    path
}

#[test]
fn background_error_surfaces_on_next_call_and_wait() {
    let dir = tempfile::tempdir().unwrap();
    let vm = model(1, 8, 8, 0.0);
    let mut ck = Checkpointer::builder(dir.path()).build().unwrap();
    let taken = start_doomed_save(&mut ck, &vm, dir.path(), 1);
    let err = ck.save(&vm, 2, None).unwrap_err();
    match &err {
        Error::Io { source, .. } => {
            assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists, "{err}")
        }
        other => panic!("expected the publish's refusal, got {other}"),
    }
    assert_eq!(std::fs::read(&taken).unwrap(), b"someone else's file");
    // The failed call took no snapshot; the next one starts, and its error reaches wait().
    start_doomed_save(&mut ck, &vm, dir.path(), 3);
    assert!(ck.wait().is_err());
    assert!(ck.wait().unwrap().is_none());
    // And finish() reports it too.
    start_doomed_save(&mut ck, &vm, dir.path(), 4);
    assert!(ck.finish().is_err());
    assert!(
        read_manifest(dir.path()).unwrap().is_none(),
        "nothing was listed"
    );
}

#[test]
fn snapshot_isolation_file_holds_values_at_save_time() {
    let dir = tempfile::tempdir().unwrap();
    let vm = model(8, 256, 256, 1.0);
    let mut ck = Checkpointer::builder(dir.path()).build().unwrap();
    let held = hold_folder(dir.path());
    ck.save(&vm, 1, None).unwrap();
    // The background write has not read anything yet: only the snapshot can keep the 1.0s.
    set_all(&vm, 2.0);
    drop(held);
    ck.wait().unwrap();
    let resumed = load_latest(dir.path(), None).unwrap().unwrap();
    let back = model(8, 256, 256, 0.0);
    resumed.load_into(&back, &Device::Cpu).unwrap();
    assert!(values(&back).iter().all(|&v| v == 1.0));
    assert!(values(&vm).iter().all(|&v| v == 2.0));
}

#[test]
fn skip_policy_reports_skipped_while_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let vm = model(2, 64, 64, 1.0);
    let mut ck = Checkpointer::builder(dir.path())
        .in_flight(InFlight::Skip)
        .build()
        .unwrap();
    let held = hold_folder(dir.path());
    assert!(matches!(
        ck.save(&vm, 1, None).unwrap(),
        SaveOutcome::Started { .. }
    ));
    match ck.save(&vm, 2, None).unwrap() {
        SaveOutcome::Skipped {
            step,
            in_flight_step,
        } => assert_eq!((step, in_flight_step), (2, 1)),
        other => panic!("expected a skip, got {other:?}"),
    }
    drop(held);
    ck.wait().unwrap();
    assert!(matches!(
        ck.save(&vm, 3, None).unwrap(),
        SaveOutcome::Started { .. }
    ));
    ck.finish().unwrap();
    assert_eq!(steps_on_disk(dir.path(), "checkpoint"), vec![1, 3]);
}

#[test]
fn a_cancelled_save_reports_cancelled_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let vm = model(2, 64, 64, 1.0);
    let mut ck = Checkpointer::builder(dir.path()).build().unwrap();
    ck.save(&vm, 1, None).unwrap();
    ck.wait().unwrap();
    let held = hold_folder(dir.path());
    ck.save(&vm, 2, None).unwrap();
    ck.cancel();
    drop(held);
    assert!(matches!(ck.wait(), Err(Error::Cancelled)));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".partial")), "{names:?}");
    assert_eq!(steps_on_disk(dir.path(), "checkpoint"), vec![1]);
    let listed: Vec<u64> = read_manifest(dir.path())
        .unwrap()
        .unwrap()
        .entries
        .iter()
        .map(|e| e.step)
        .collect();
    assert_eq!(listed, vec![1], "the manifest is untouched");

    // abandon() cancels whatever is in flight and swallows only the cancellation: a save that
    // already finished stays published.
    ck.save(&vm, 3, None).unwrap();
    ck.wait().unwrap();
    ck.abandon().unwrap();
    assert_eq!(steps_on_disk(dir.path(), "checkpoint"), vec![1, 3]);
}

/// A save that fails once its file is published, before the manifest lists it (here the
/// manifest was damaged meanwhile), removes that file: retention removes listed files only, so
/// every such save would otherwise leave another full checkpoint behind.
#[test]
fn a_save_the_manifest_cannot_list_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let vm = model(1, 8, 8, 0.0);
    let mut ck = Checkpointer::builder(dir.path())
        .stem("run")
        .keep_last(1)
        .build()
        .unwrap();
    ck.save(&vm, 1, None).unwrap();
    ck.wait().unwrap();
    std::fs::write(dir.path().join("manifest.json"), b"{ damaged").unwrap();
    for step in [2, 3] {
        ck.save(&vm, step, None).unwrap();
        let err = ck.wait().unwrap_err().to_string();
        assert!(err.contains("manifest"), "{err}");
    }
    assert_eq!(steps_on_disk(dir.path(), "run"), vec![1]);
}
