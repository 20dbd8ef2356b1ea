//! Publishing: the temporary file, the commit that never replaces, cleanup after crashes.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;

use super::temp::{temp_name, written_by, Writer};
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
        folder.join(temp_name("ComfyUI_00001_.safetensors".as_ref()))
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
fn stale_temps_of_finished_writers_are_removed_and_nothing_else() {
    let out = tempfile::tempdir().expect("tempdir");
    let dead = i32::MAX as u32;
    assert!(!crate::sys::process_alive(dead));
    let gone = Writer {
        pid: dead,
        ..Writer::this()
    };
    let name = |base: &str, w: &Writer| written_by(base.as_ref(), w).into_string().expect("utf-8");
    let dead_temp = name("ComfyUI_00009_.safetensors", &gone);
    let live_temp = name("ComfyUI_00003_.safetensors", &Writer::this());
    // Earlier versions' names carry no machine and no lock: left alone even for a dead pid.
    let old_temp = format!("ComfyUI_00007_.safetensors.{dead}.partial");
    for n in [
        &dead_temp,
        &live_temp,
        &old_temp,
        "notes.123.txt",
        "x.0.partial",
        ".99.partial",
    ] {
        touch(&out.path().join(n));
    }
    // A symlink under a temporary name is not a writer's file.
    let link = name("link.safetensors", &gone);
    std::os::unix::fs::symlink(out.path().join(&live_temp), out.path().join(&link))
        .expect("symlink");
    // A folder under a temporary name without the staging lock inside is not a staging folder.
    let plain_dir = name("dir", &gone);
    fs::create_dir(out.path().join(&plain_dir)).expect("mkdir");

    assert_eq!(clean_stale_temps(out.path()).expect("clean"), 1);
    let left = names(out.path());
    assert!(!left.contains(&dead_temp));
    for kept in [&live_temp, &old_temp, &link, &plain_dir] {
        assert!(left.contains(kept), "{kept} was removed");
    }
    assert!(left.contains("notes.123.txt") && left.contains("x.0.partial"));

    // A reservation cleans too, before scanning: the dead temp no longer holds counter 9.
    touch(&out.path().join(&dead_temp));
    let r = target("ComfyUI", out.path()).reserve().expect("reserve");
    assert_eq!(r.counter(), Some(8));
    assert!(!out.path().join(&dead_temp).exists());
    assert_eq!(
        clean_stale_temps(&out.path().join("missing")).expect("clean"),
        0
    );
}

#[test]
fn reserve_at_uses_the_explicit_path_and_never_replaces() {
    let out = tempfile::tempdir().expect("tempdir");
    let path = out.path().join("runs/step_1000.safetensors");
    let r = reserve_at(&path).expect("reserve");
    assert_eq!(
        r.temp_path(),
        out.path()
            .join("runs")
            .join(temp_name("step_1000.safetensors".as_ref()))
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

/// Regression: a writer in another PID namespace (or on another host) has a pid that means
/// nothing here and looks dead; its temporary file used to be deleted mid-write.
#[test]
fn a_temp_whose_writer_is_alive_is_kept_whatever_its_pid_says() {
    let out = tempfile::tempdir().expect("tempdir");
    let r = reserve_at(&out.path().join("a.safetensors")).expect("reserve");
    let name = r.temp_path().file_name().unwrap().to_str().unwrap();
    let middle = name
        .strip_prefix("a.safetensors.")
        .and_then(|n| n.strip_suffix(".partial"))
        .expect("temp name");
    let rest = middle.trim_start_matches(|c: char| c.is_ascii_digit());
    let dead = i32::MAX as u32;
    assert!(!crate::sys::process_alive(dead));
    // The same open file under the name a writer whose pid is `dead` here would give it.
    let alias = out
        .path()
        .join(format!("a.safetensors.{dead}{rest}.partial"));
    fs::rename(r.temp_path(), &alias).expect("rename");
    assert_eq!(clean_stale_temps(out.path()).expect("clean"), 0);
    assert!(alias.is_file());
}
