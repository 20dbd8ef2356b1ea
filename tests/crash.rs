//! A save killed mid-write leaves nothing under a final name, the next save cleans up after it,
//! and a save that runs out of space fails clearly and leaves no file.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_checkpoint-save");

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = walk(dir)
        .into_iter()
        .filter(|n| !n.ends_with(".checkpoint-save.lock"))
        .collect();
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(
                    p.strip_prefix(dir)
                        .map(|r| r.display().to_string())
                        .unwrap_or_default(),
                );
            }
        }
    }
    out
}

#[test]
fn killed_save_leaves_no_final_file_and_the_next_save_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("output");
    // A full-size SD1.5 kept in f32 (4.3 GB): long enough to be caught mid-write.
    let mut child = Command::new(BIN)
        .args(["save", "--synthetic", "sd15", "--quiet", "--output-dir"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let folder = out.join("checkpoints");
    let start = Instant::now();
    let partial = loop {
        let found = names(&folder).into_iter().find(|n| n.ends_with(".partial"));
        if let Some(p) = found {
            break p;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the save finished ({status}) before it could be killed");
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no temporary file appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    std::thread::sleep(Duration::from_millis(150));
    child.kill().unwrap(); // SIGKILL: no handler runs, nothing is cleaned up by the child.
    let status = child.wait().unwrap();
    assert!(!status.success());
    let left = names(&folder);
    assert!(
        left.iter().all(|n| !n.ends_with(".safetensors")),
        "a final file appeared: {left:?}"
    );
    assert!(
        left.contains(&partial),
        "the killed save's temporary file should still be there: {left:?}"
    );
    assert!(partial.contains(&format!(".{}.partial", status_pid(&partial))));

    // The next save in that folder removes the stale temporary file and writes a complete one.
    let next = Command::new(BIN)
        .args([
            "save",
            "--synthetic",
            "sd15",
            "--max-dim",
            "4",
            "--quiet",
            "--output-dir",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        next.status.success(),
        "{}",
        String::from_utf8_lossy(&next.stderr)
    );
    let left = names(&folder);
    assert_eq!(
        left,
        vec!["ComfyUI_00001_.safetensors".to_string()],
        "stale files remain"
    );
    let path = String::from_utf8(next.stdout).unwrap();
    let bytes = std::fs::read(path.trim()).unwrap();
    assert!(safetensors::SafeTensors::deserialize(&bytes).is_ok());
}

/// The pid embedded in `<name>.<pid>.partial`.
fn status_pid(partial: &str) -> String {
    partial
        .trim_end_matches(".partial")
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn out_of_space_fails_clearly_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    for folder in [
        dir.path().to_path_buf(),
        Path::new("/dev/shm").join(format!("cs-test-{}", std::process::id())),
    ] {
        let out = folder.join("output");
        // A 2 MiB file-size limit (ulimit -f counts KiB in bash) against a ~20 MB checkpoint.
        let script = format!(
            "ulimit -f 2048 && exec '{BIN}' save --synthetic sd15 --max-dim 64 --quiet --output-dir '{}'",
            out.display()
        );
        let run = Command::new("bash").args(["-c", &script]).output().unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.trim().lines().count() == 1,
            "{stderr}"
        );
        assert!(
            stderr.contains("File too large") || stderr.contains("No space"),
            "{stderr}"
        );
        assert_eq!(names(&out), Vec::<String>::new(), "files left behind");
        if folder.starts_with("/dev/shm") {
            let _ = std::fs::remove_dir_all(&folder);
        }
    }
}
