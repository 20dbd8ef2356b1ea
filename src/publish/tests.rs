//! Publishing: the temporary file, the commit that never replaces, cleanup after crashes.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;

use super::folder::temp_pid;
use super::*;
use crate::naming::reserve;
use crate::naming::tests::{names, target, touch};

#[test]
fn reservation_commit_publishes_and_titles() {
    let out = tempfile::tempdir().expect("tempdir");
    let r = reserve("checkpoints/ComfyUI", out.path()).expect("reserve");
    assert_eq!((r.title(), r.counter()), ("ComfyUI 1", Some(1)));
    let folder = out.path().join("checkpoints");
    assert_eq!(
        r.temp_path(),
        folder.join(format!(
            "ComfyUI_00001_.safetensors.{}.partial",
            std::process::id()
        ))
    );
    r.file().write_all(b"payload").expect("write");
    let temp = r.temp_path().to_path_buf();
    let path = r.commit().expect("commit");
    assert_eq!(path, folder.join("ComfyUI_00001_.safetensors"));
    assert_eq!(fs::read(&path).expect("read"), b"payload");
    assert!(!temp.exists());
    // Regression: every folder saved into used to keep a `.checkpoint-save.lock` file.
    assert_eq!(
        names(&folder),
        BTreeSet::from(["ComfyUI_00001_.safetensors".to_owned()])
    );
}

#[test]
fn dropping_an_uncommitted_reservation_removes_the_temp_file() {
    let out = tempfile::tempdir().expect("tempdir");
    let r = reserve("ComfyUI", out.path()).expect("reserve");
    r.file().write_all(b"half").expect("write");
    let temp = r.temp_path().to_path_buf();
    assert!(temp.is_file());
    drop(r);
    assert!(!temp.exists());
    assert_eq!(names(out.path()), BTreeSet::new());
}

#[test]
fn commit_refuses_to_replace_an_existing_file() {
    let out = tempfile::tempdir().expect("tempdir");
    let r = reserve("ComfyUI", out.path()).expect("reserve");
    r.file().write_all(b"ours").expect("write");
    let temp = r.temp_path().to_path_buf();
    let final_path = r.final_path().to_path_buf();
    fs::write(&final_path, b"theirs").expect("someone else writes");
    let err = r.commit().expect_err("must not replace");
    match &err {
        Error::Io { source, .. } => assert_eq!(source.kind(), io::ErrorKind::AlreadyExists),
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(err.to_string().contains("refusing to replace"), "{err}");
    assert_eq!(fs::read(&final_path).expect("read"), b"theirs");
    assert!(!temp.exists());
}

#[test]
fn stale_temps_of_dead_processes_are_removed() {
    let out = tempfile::tempdir().expect("tempdir");
    let dead = i32::MAX as u32;
    assert!(!crate::sys::process_alive(dead));
    let own = std::process::id();
    let dead_temp = format!("ComfyUI_00009_.safetensors.{dead}.partial");
    let live_temp = format!("ComfyUI_00003_.safetensors.{own}.partial");
    for name in [
        &dead_temp,
        &live_temp,
        "notes.123.txt",
        "x.0.partial",
        ".99.partial",
    ] {
        touch(&out.path().join(name));
    }
    fs::create_dir(out.path().join(format!("dir.{dead}.partial"))).expect("mkdir");

    assert_eq!(clean_stale_temps(out.path()).expect("clean"), 1);
    let left = names(out.path());
    assert!(!left.contains(&dead_temp));
    assert!(left.contains(&live_temp));
    assert!(left.contains("notes.123.txt") && left.contains("x.0.partial"));
    assert!(left.contains(&format!("dir.{dead}.partial")));

    // A reservation cleans too, before scanning: the dead temp no longer holds counter 9.
    touch(&out.path().join(&dead_temp));
    let r = target("ComfyUI", out.path()).reserve().expect("reserve");
    assert_eq!(r.counter(), Some(4));
    assert!(!out.path().join(&dead_temp).exists());
    assert_eq!(
        clean_stale_temps(&out.path().join("missing")).expect("clean"),
        0
    );
}

#[test]
fn temp_pid_parses_only_temp_names() {
    assert_eq!(temp_pid("a.safetensors.42.partial"), Some(42));
    assert_eq!(temp_pid("a.42.partial"), Some(42));
    assert_eq!(temp_pid(".42.partial"), None);
    assert_eq!(temp_pid("a.0.partial"), None);
    assert_eq!(temp_pid("a.+42.partial"), None);
    assert_eq!(temp_pid("a.4294967295.partial"), None);
    assert_eq!(temp_pid("a.42.partia"), None);
}

#[test]
fn reserve_at_uses_the_explicit_path_and_never_replaces() {
    let out = tempfile::tempdir().expect("tempdir");
    let path = out.path().join("runs/step_1000.safetensors");
    let r = reserve_at(&path).expect("reserve");
    assert_eq!(
        r.temp_path(),
        out.path().join(format!(
            "runs/step_1000.safetensors.{}.partial",
            std::process::id()
        ))
    );
    assert_eq!((r.counter(), r.title()), (None, "step_1000"));
    // The same path cannot be reserved twice at once.
    let err = reserve_at(&path).expect_err("already being written");
    assert!(err.to_string().contains("already being written"), "{err}");
    r.file().write_all(b"step").expect("write");
    assert_eq!(r.commit().expect("commit"), path);
    assert_eq!(fs::read(&path).expect("read"), b"step");

    let err = reserve_at(&path).expect_err("exists");
    match &err {
        Error::Io { source, .. } => assert_eq!(source.kind(), io::ErrorKind::AlreadyExists),
        other => panic!("expected Io, got {other:?}"),
    }
    assert_eq!(fs::read(&path).expect("read"), b"step");
    assert!(matches!(
        reserve_at(Path::new("/")).expect_err("no file"),
        Error::InvalidInput(_)
    ));
}
