//! What crashes, interruptions and concurrency leave behind, with the real binary: a save killed
//! mid-write leaves nothing under a final name and the next save cleans up after it; Ctrl-C
//! removes the temporary file and exits 130, and so do SIGTERM and SIGHUP; a full disk fails clearly; concurrent processes get
//! distinct counters. Every test synchronises on an observable state (a fault injected at an
//! exact byte, a lock the child is seen waiting on), never on a timer.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_checkpoint-save");

/// Every file under `dir`, as paths relative to it.
fn names(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if let Ok(rel) = p.strip_prefix(root) {
                out.push(rel.display().to_string());
            }
        }
    }
}

#[test]
fn killed_save_leaves_no_final_file_and_the_next_save_cleans_up() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("output");
    // A ~20 MB checkpoint, killed (SIGKILL, no cleanup) once 1 MiB of it is written.
    let status = Command::new(BIN)
        .args([
            "save",
            "--synthetic",
            "sd15",
            "--max-dim",
            "64",
            "--quiet",
            "--output-dir",
        ])
        .arg(&out)
        .env("CHECKPOINT_SAVE_FAULT_KILL_AFTER", (1u64 << 20).to_string())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    let folder = out.join("checkpoints");
    let left = names(&folder);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        left[0].starts_with("ComfyUI_00001_.safetensors.") && left[0].ends_with(".partial"),
        "only the killed save's temporary file: {left:?}"
    );

    // The next save in that folder removes the stale temporary file and writes a complete one.
    let next = Command::new(BIN)
        .args([
            "save",
            "--synthetic",
            "sd15",
            "--tiny",
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
    assert_eq!(
        names(&folder),
        vec!["ComfyUI_00001_.safetensors".to_string()]
    );
    let path = String::from_utf8(next.stdout).unwrap();
    let bytes = std::fs::read(path.trim()).unwrap();
    assert!(safetensors::SafeTensors::deserialize(&bytes).is_ok());
}

/// Waits until process `pid` is blocked waiting for a file lock (a `->` entry of /proc/locks).
fn wait_until_waiting_on_a_lock(pid: u32, child: &mut std::process::Child) {
    let start = Instant::now();
    loop {
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        let waiting = locks.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"->") && f.get(5) == Some(&pid.to_string().as_str())
        });
        if waiting {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the child exited ({status}) instead of waiting for the folder's lock");
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the child never waited"
        );
        std::thread::yield_now();
    }
}

/// Starts a save whose folder lock the test holds, so the child validates everything and then
/// waits to reserve its name; `ignore_hangup` starts it as `nohup` would.
fn save_waiting_on_its_lock(out: &Path, ignore_hangup: bool) -> (std::process::Child, File) {
    use std::os::unix::process::CommandExt;
    let folder = out.join("checkpoints");
    std::fs::create_dir_all(&folder).unwrap();
    let lock = File::open(&folder).unwrap();
    lock.lock().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["save", "--synthetic", "sd15", "--tiny", "--output-dir"])
        .arg(out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Set either way: a test run under `nohup` would hand its own ignored SIGHUP down.
    let hangup = if ignore_hangup {
        libc::SIG_IGN
    } else {
        libc::SIG_DFL
    };
    // SAFETY: only `signal`, which is async-signal-safe, runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGHUP, hangup);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    wait_until_waiting_on_a_lock(child.id(), &mut child);
    (child, lock)
}

/// Ctrl-C, and the termination signals of `kill`, `timeout`, `docker stop` or a closed terminal,
/// all cancel the save the same way: the temporary file is removed and the exit code is 130.
#[test]
fn ctrl_c_sigterm_and_sighup_remove_the_temporary_file_and_exit_130() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("output");
        let (mut child, lock) = save_waiting_on_its_lock(&out, false);
        // A wait that lasts is said.
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut waiting = String::new();
        std::io::BufRead::read_line(&mut stderr, &mut waiting).unwrap();
        assert!(
            waiting.starts_with("waiting for") && waiting.contains("its lock is held"),
            "the wait is said: {waiting}"
        );
        // SAFETY: sends a signal to our own child process.
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        // The child says so once its cancel flag is set; only then may it go on.
        let mut first = String::new();
        std::io::BufRead::read_line(&mut stderr, &mut first).unwrap();
        assert!(first.starts_with("interrupted"), "signal {signal}: {first}");
        drop(lock);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
        let done = child.wait_with_output().unwrap();
        assert_eq!(done.status.code(), Some(130), "signal {signal}: {rest}");
        assert!(
            rest.starts_with("error: save cancelled") && rest.trim().lines().count() == 1,
            "signal {signal}: {rest}"
        );
        assert!(done.stdout.is_empty(), "no path is printed");
        assert_eq!(names(&out), Vec::<String>::new(), "nothing is left behind");
    }
}

/// A save that does not stop at the first Ctrl-C (here it waits on a folder another process
/// holds) exits at the second, with the final name never taken.
#[test]
fn a_second_ctrl_c_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("output");
    let (mut child, lock) = save_waiting_on_its_lock(&out, false);
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    assert!(line.starts_with("waiting for"), "{line}");
    // SAFETY: sends a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    line.clear();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    assert!(line.starts_with("interrupted: stopping"), "{line}");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let done = child.wait_with_output().unwrap();
    assert_eq!(done.status.code(), Some(130), "{rest}");
    assert!(rest.starts_with("interrupted again: exiting now"), "{rest}");
    drop(lock);
    assert!(
        names(&out).iter().all(|n| n.ends_with(".partial")),
        "no final name: {:?}",
        names(&out)
    );
}

/// Under `nohup` (SIGHUP ignored from the start) a hang-up does not cancel the save.
#[test]
fn sighup_ignored_at_start_stays_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("output");
    let (child, lock) = save_waiting_on_its_lock(&out, true);
    // SAFETY: sends a signal to our own child process.
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    drop(lock);
    let done = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{stderr}");
    assert!(!stderr.contains("interrupted"), "{stderr}");
    assert_eq!(
        names(&out),
        vec!["checkpoints/ComfyUI_00001_.safetensors".to_string()]
    );
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

#[test]
fn concurrent_processes_get_distinct_counters() {
    const N: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..N)
        .map(|i| {
            Command::new(BIN)
                .args(["save", "--synthetic", "sd15", "--tiny", "--quiet", "--seed"])
                .arg(i.to_string())
                .arg("--output-dir")
                .arg(dir.path())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut printed: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        })
        .collect();
    printed.sort();
    let want: Vec<String> = (1..=N)
        .map(|c| format!("checkpoints/ComfyUI_{c:05}_.safetensors"))
        .collect();
    assert_eq!(
        names(dir.path()),
        want,
        "only the checkpoints, one counter each"
    );
    for (p, w) in printed.iter().zip(&want) {
        assert_eq!(Path::new(p), dir.path().join(w));
        let bytes = std::fs::read(p).unwrap();
        assert!(
            safetensors::SafeTensors::deserialize(&bytes).is_ok(),
            "{p} is complete"
        );
    }
}
