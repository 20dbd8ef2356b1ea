//! Naming against the reference's rules, step by step, and under concurrency.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Barrier};

use super::counter::{decimal_digit, entry_counter};
use super::*;

/// The fixed time of every test here and in `publish`.
pub(crate) const T: LocalTime = LocalTime {
    year: 2025,
    month: 3,
    day: 7,
    hour: 9,
    minute: 5,
    second: 1,
};

fn no_clock() -> LocalTime {
    panic!("the clock must not be read for a prefix without '%'")
}

pub(crate) fn target(prefix: &str, out: &Path) -> SaveTarget {
    SaveTarget::resolve_with_clock(prefix, out, || T).expect("prefix resolves")
}

pub(crate) fn touch(path: &Path) {
    fs::write(path, b"x").expect("write fixture");
}

/// The names of the entries of `dir`.
pub(crate) fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn tokens_are_expanded_from_one_snapshot() {
    let mut calls = 0;
    let out = expand_tokens(
        "%year%-%month%-%day%_%hour%%minute%%second%_%width%x%height%_%year%",
        || {
            calls += 1;
            T
        },
    );
    assert_eq!(out, "2025-03-07_090501_0x0_2025");
    assert_eq!(calls, 1);
}

#[test]
fn unknown_tokens_are_kept_verbatim() {
    assert_eq!(
        expand_tokens("ckpt/%date:yyyy-MM-dd%_%year%_%foo%", || T),
        "ckpt/%date:yyyy-MM-dd%_2025_%foo%"
    );
}

#[test]
fn no_percent_means_no_clock() {
    assert_eq!(
        expand_tokens("checkpoints/ComfyUI", no_clock),
        "checkpoints/ComfyUI"
    );
}

#[test]
fn normpath_matches_python() {
    for (input, expected) in [
        ("", "."),
        (".", "."),
        ("a//b/./c/", "a/b/c"),
        ("a/../..", ".."),
        ("../a/../../b", "../../b"),
        ("/..", "/"),
        ("/../a", "/a"),
        ("//a//b", "//a/b"),
        ("///a", "/a"),
        ("a/b/..", "a"),
    ] {
        assert_eq!(normpath(input), expected, "normpath({input:?})");
    }
}

#[test]
fn prefix_splits_into_subfolder_and_filename() {
    let out = Path::new("/srv/output");
    let t = SaveTarget::resolve_with_clock("checkpoints/ComfyUI", out, no_clock).expect("resolves");
    assert_eq!(t.subfolder, "checkpoints");
    assert_eq!(t.filename, "ComfyUI");
    assert_eq!(t.folder, out.join("checkpoints"));
    assert_eq!(t.prefix_len, 7);
    assert_eq!(t.file_name(1), "ComfyUI_00001_.safetensors");
    assert_eq!(t.file_name(123_456), "ComfyUI_123456_.safetensors");

    let t = target("a/./b/../c//name", out);
    assert_eq!((t.subfolder.as_str(), t.filename.as_str()), ("a/c", "name"));
    assert_eq!(t.folder, out.join("a/c"));

    let t = target("ComfyUI", out);
    assert_eq!((t.subfolder.as_str(), t.filename.as_str()), ("", "ComfyUI"));
    assert_eq!(t.folder, out);

    let t = target("sub/../x_%year%", out);
    assert_eq!((t.subfolder.as_str(), t.filename.as_str()), ("", "x_2025"));
}

#[test]
fn sandbox_refuses_escapes_and_absolute_prefixes() {
    let out = Path::new("/srv/output");
    match SaveTarget::resolve_with_clock("../evil", out, no_clock) {
        Err(Error::OutsideOutputFolder {
            full_output_folder,
            output_dir,
            common,
        }) => {
            assert_eq!(full_output_folder, "/srv");
            assert_eq!(output_dir, "/srv/output");
            assert_eq!(common, "/srv");
        }
        other => panic!("expected OutsideOutputFolder, got {other:?}"),
    }
    for prefix in [
        "/tmp/abs/ComfyUI",
        "a/../../evil",
        "../output2/x",
        "//net/x",
    ] {
        let err = SaveTarget::resolve_with_clock(prefix, out, no_clock).expect_err(prefix);
        assert!(
            matches!(err, Error::OutsideOutputFolder { .. }),
            "{prefix}: {err}"
        );
        assert!(err
            .to_string()
            .starts_with("**** ERROR: Saving image outside the output folder is not allowed.\n full_output_folder: "));
    }
    // `..` that comes back inside is fine.
    let t = target("a/../../output/x", Path::new("/srv/output/"));
    assert_eq!(
        (t.subfolder.as_str(), t.filename.as_str()),
        ("../output", "x")
    );
}

#[test]
fn symlinked_subfolder_is_not_resolved() {
    let out = tempfile::tempdir().expect("tempdir");
    let elsewhere = tempfile::tempdir().expect("tempdir");
    #[cfg(unix)]
    std::os::unix::fs::symlink(elsewhere.path(), out.path().join("link")).expect("symlink");
    #[cfg(unix)]
    assert_eq!(
        target("link/ComfyUI", out.path()).folder,
        out.path().join("link")
    );
}

/// A symlinked output folder and a prefix whose `..` comes back through the link's name: the check
/// passes lexically, so the file must go into the folder that was checked (the link's target), not
/// wherever the kernel resolves `link/../link` physically (beside the target).
#[cfg(unix)]
#[test]
fn dotdot_through_a_symlinked_output_folder_stays_inside() {
    let root = tempfile::tempdir().expect("tempdir");
    let deep = root.path().join("real/deep");
    fs::create_dir_all(&deep).expect("mkdir");
    let link = root.path().join("esclink");
    std::os::unix::fs::symlink(&deep, &link).expect("symlink");

    let t = target("../esclink/x", &link);
    assert_eq!(t.folder, link, "no `..` reaches the file system");
    let r = t.reserve().expect("reserve");
    let path = r.commit().expect("commit");
    assert_eq!(path, link.join("x_00001_.safetensors"));
    assert!(deep.join("x_00001_.safetensors").is_file());
    assert!(
        !root.path().join("real/esclink").exists(),
        "nothing was created beside the link's target"
    );

    let t = target("a/../../esclink/sub/y", &link);
    assert_eq!(t.folder, link.join("sub"));
}

#[test]
fn prefixes_naming_no_file_are_refused() {
    let out = Path::new("/srv/output");
    for prefix in ["", ".", "..", "a/..", "a/b/../.."] {
        let err = SaveTarget::resolve_with_clock(prefix, out, no_clock).expect_err(prefix);
        assert!(matches!(err, Error::InvalidInput(_)), "{prefix}: {err}");
        assert!(err.to_string().contains("names no file"), "{err}");
    }
}

#[test]
fn reference_counter_example_gives_8() {
    let out = tempfile::tempdir().expect("tempdir");
    for name in [
        "ComfyUI_00001_.safetensors",
        "ComfyUI_00007_.png",
        "ComfyUI_clip_l_00003_.safetensors",
        "comfyui_00020_.safetensors",
    ] {
        touch(&out.path().join(name));
    }
    let t = target("ComfyUI", out.path());
    assert_eq!(t.next_counter().expect("scan"), 8);
    let r = t.reserve().expect("reserve");
    assert_eq!(r.counter(), Some(8));
    assert_eq!(
        r.final_path(),
        out.path().join("ComfyUI_00008_.safetensors")
    );
}

#[test]
fn directories_count_like_files() {
    let out = tempfile::tempdir().expect("tempdir");
    fs::create_dir(out.path().join("ComfyUI_00004_")).expect("mkdir");
    touch(&out.path().join("ComfyUI_00002_.txt"));
    assert_eq!(
        target("ComfyUI", out.path()).next_counter().expect("scan"),
        5
    );
}

#[test]
fn gaps_are_never_filled() {
    let out = tempfile::tempdir().expect("tempdir");
    touch(&out.path().join("ComfyUI_00001_.safetensors"));
    touch(&out.path().join("ComfyUI_00003_.safetensors"));
    let r = target("ComfyUI", out.path()).reserve().expect("reserve");
    assert_eq!(r.counter(), Some(4));
}

#[test]
fn counter_digits_parse_like_python_int() {
    let out = tempfile::tempdir().expect("tempdir");
    let t = target("ComfyUI", out.path());
    let count = |name: &str| entry_counter(name, &t.filename, t.prefix_len);
    assert_eq!(count("ComfyUI_00012_.safetensors"), Some(Ok(12)));
    assert_eq!(count("ComfyUI_ 7 _x"), Some(Ok(7)));
    assert_eq!(count("ComfyUI_+7"), Some(Ok(7)));
    assert_eq!(count("ComfyUI_-3_"), Some(Ok(-3)));
    assert_eq!(count("ComfyUI_\u{663}\u{661}_"), Some(Ok(31)));
    assert_eq!(count("ComfyUI_\u{3000}9\u{a0}_"), Some(Ok(9)));
    assert_eq!(count("ComfyUI_7x_"), Some(Ok(0)));
    assert_eq!(count("ComfyUI_- 7_"), Some(Ok(0)));
    assert_eq!(count("ComfyUI_\u{1c}7_"), Some(Ok(0)));
    assert_eq!(count("ComfyUI_"), Some(Ok(0)));
    assert_eq!(count("ComfyUI_clip_l_00003_.safetensors"), Some(Ok(0)));
    assert_eq!(count("comfyui_00020_.safetensors"), None);
    assert_eq!(count("ComfyUI-00020_.safetensors"), None);
    assert_eq!(count("ComfyUI"), None);
    assert_eq!(
        count("ComfyUI_9999999999999999999999999999999999999999_"),
        Some(Err(()))
    );
    // A negative maximum does not give a counter below 1.
    touch(&out.path().join("ComfyUI_-5_.png"));
    assert_eq!(t.next_counter().expect("scan"), 1);
    // A counter that cannot be continued is reported, naming the entry.
    touch(&out.path().join("ComfyUI_18446744073709551615_.png"));
    let err = t.next_counter().expect_err("too large");
    assert!(
        err.to_string()
            .contains("ComfyUI_18446744073709551615_.png"),
        "{err}"
    );
}

#[test]
fn prefix_len_is_taken_from_the_prefix_as_given() {
    let out = tempfile::tempdir().expect("tempdir");
    touch(&out.path().join("ComfyUI_00005_.safetensors"));
    touch(&out.path().join("ComfyUI_00001_.safetensors"));
    // `ComfyUI/.` normalises to `ComfyUI` but L = len(".") = 1, so no entry matches.
    let t = target("ComfyUI/.", out.path());
    assert_eq!((t.filename.as_str(), t.prefix_len), ("ComfyUI", 1));
    assert_eq!(t.next_counter().expect("scan"), 1);
    // The reference would overwrite `_00001_`; the reservation skips the taken name.
    let r = t.reserve().expect("reserve");
    assert_eq!(r.counter(), Some(2));
    // Single-letter names: L = 1 matches `b_…`.
    let out2 = tempfile::tempdir().expect("tempdir");
    touch(&out2.path().join("b_00003_.png"));
    let t = target("b/.", out2.path());
    assert_eq!(t.next_counter().expect("scan"), 4);
}

#[test]
fn missing_folder_is_created_and_counts_from_1() {
    let out = tempfile::tempdir().expect("tempdir");
    let t = target("a/b/ComfyUI", out.path());
    assert_eq!(t.next_counter().expect("scan"), 1);
    assert!(out.path().join("a/b").is_dir());
}

#[test]
fn folder_that_cannot_be_created_is_a_clear_error() {
    let out = tempfile::tempdir().expect("tempdir");
    touch(&out.path().join("blocker"));
    let t = target("blocker/sub/ComfyUI", out.path());
    for err in [
        t.next_counter().expect_err("scan"),
        t.reserve().expect_err("reserve"),
    ] {
        assert!(matches!(err, Error::Io { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("cannot create the output folder"), "{msg}");
        assert!(
            msg.contains(&out.path().join("blocker/sub").display().to_string()),
            "{msg}"
        );
        // Names what is in the way, not only the OS's "File exists".
        assert!(msg.contains("blocker is a file, not a folder"), "{msg}");
    }
    // A dangling symlink as the folder itself.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("nowhere", out.path().join("dangling")).expect("symlink");
        let err = target("dangling/ComfyUI", out.path())
            .reserve()
            .expect_err("reserve");
        assert!(
            err.to_string().contains("dangling is a symlink to nothing"),
            "{err}"
        );
    }
}

#[test]
fn trailing_slash_names_a_folder() {
    let out = tempfile::tempdir().expect("tempdir");
    touch(&out.path().join("checkpoints_00001_.safetensors"));
    let t = target("checkpoints/", out.path());
    assert_eq!(
        (t.subfolder.as_str(), t.filename.as_str()),
        ("checkpoints", "ComfyUI")
    );
    for expected in 1..=2u64 {
        let r = t.reserve().expect("reserve");
        assert_eq!(r.counter(), Some(expected));
        let path = r.commit().expect("commit");
        assert_eq!(
            path,
            out.path()
                .join(format!("checkpoints/ComfyUI_{expected:05}_.safetensors"))
        );
    }
    assert_eq!(
        fs::read(out.path().join("checkpoints_00001_.safetensors")).expect("read"),
        b"x"
    );
}

#[test]
fn pending_temp_file_takes_its_counter() {
    let out = tempfile::tempdir().expect("tempdir");
    let t = target("ComfyUI", out.path());
    let first = t.reserve().expect("first");
    let second = t.reserve().expect("second");
    assert_eq!((first.counter(), second.counter()), (Some(1), Some(2)));
    // ComfyUI's own scan would also see the temp file as counter 1.
    assert_eq!(t.next_counter().expect("scan"), 3);
}

#[test]
fn concurrent_reservations_get_distinct_counters() {
    const N: usize = 16;
    let out = tempfile::tempdir().expect("tempdir");
    let barrier = Arc::new(Barrier::new(N));
    let handles: Vec<_> = (0..N)
        .map(|i| {
            let dir = out.path().to_path_buf();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let r = reserve("ckpt/ComfyUI", &dir).expect("reserve");
                let payload = format!("thread {i} counter {:?}", r.counter()).repeat(1000);
                r.file().write_all(payload.as_bytes()).expect("write");
                let counter = r.counter().expect("counted");
                let path = r.commit().expect("commit");
                (counter, path, payload)
            })
        })
        .collect();
    let mut counters = BTreeSet::new();
    for handle in handles {
        let (counter, path, payload) = handle.join().expect("thread");
        assert_eq!(fs::read(&path).expect("read"), payload.as_bytes());
        counters.insert(counter);
    }
    assert_eq!(counters, (1..=N as u64).collect());
    let files = names(&out.path().join("ckpt"));
    assert_eq!(files.len(), N, "{files:?}");
    assert!(files.iter().all(|f| !f.ends_with(".partial")), "{files:?}");
}

#[test]
fn decimal_digits_of_other_scripts() {
    assert_eq!(decimal_digit('7'), Some(7));
    assert_eq!(decimal_digit('\u{0669}'), Some(9));
    assert_eq!(decimal_digit('\u{FF15}'), Some(5));
    assert_eq!(decimal_digit('\u{1D7CE}'), Some(0));
    assert_eq!(decimal_digit('\u{1FBF9}'), Some(9));
    assert_eq!(decimal_digit('a'), None);
    assert_eq!(decimal_digit('\u{00B2}'), None);
    assert_eq!(decimal_digit('/'), None);
}

/// A final name that fits but whose temporary name does not is refused with a clear message
/// (not the OS's "File name too long" from the temporary file), the same way the dry run checks.
#[test]
fn names_too_long_for_the_file_system_are_refused_up_front() {
    let out = tempfile::tempdir().expect("tempdir");
    let long = "b".repeat(230);
    let t = target(&long, out.path());
    let err = t.reserve().expect_err("too long");
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("255-byte limit") && msg.contains("shorten"),
        "{msg}"
    );
    assert!(
        names(out.path()).is_empty(),
        "nothing created in the folder"
    );
    assert!(t.check_name_length(1).is_err());

    let t = target(&"b".repeat(150), out.path());
    t.check_name_length(1).expect("fits");
    t.reserve().expect("reserve").commit().expect("commit");
}
