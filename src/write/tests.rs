use std::collections::BTreeMap;
use std::io::Read;

use candle_core::Device;

use super::*;
use crate::layout::{self, LayoutKind};
use crate::model::dtype::TargetDtype;
use crate::model::Arch;
use crate::plan::{ComponentDtypes, PlanOptions};
use crate::synthetic::{self, SyntheticOptions};

fn sdxl_plan(dtype: TargetDtype, align: u64) -> Plan {
    let c = synthetic::build(
        &SyntheticOptions::new(Arch::Sdxl).with_max_dim(24),
        &Device::Cpu,
    )
    .unwrap();
    let l = layout::layout(
        &LayoutKind::Arch(Arch::Sdxl),
        &c.shapes(),
        Arch::Sdxl.default_prediction(),
    )
    .unwrap();
    let opts = PlanOptions {
        dtypes: ComponentDtypes::all(dtype),
        data_alignment: align,
        ..PlanOptions::default()
    };
    Plan::new(&l, &c, &BTreeMap::new(), &opts).unwrap()
}

fn written(plan: &Plan, method: Method, opts: &EngineOptions) -> (Vec<u8>, WriteReport) {
    let file = tempfile::tempfile().unwrap();
    let report = write(
        plan,
        &file,
        method,
        opts,
        &Progress::hidden(),
        &AtomicBool::new(false),
    )
    .unwrap();
    let mut bytes = Vec::new();
    (&file).read_to_end(&mut bytes).unwrap();
    (bytes, report)
}

#[test]
fn fill_range_reproduces_the_written_data_section() {
    let plan = sdxl_plan(TargetDtype::BF16, 8);
    let (file, report) = written(&plan, Method::Pwrite, &EngineOptions::default());
    let data = &file[plan.data_offset() as usize..];
    // Odd, unaligned-to-pieces ranges, each filled independently.
    let cuts = [0, 16, 4096, 10_000, (data.len() - 6) / 8 * 8, data.len()];
    let mut counts = vec![0u64; plan.tensors().len()];
    let mut scratch = Scratch::default();
    for w in cuts.windows(2) {
        let mut out = vec![0u8; w[1] - w[0]];
        fill_range(
            &plan,
            w[0] as u64..w[1] as u64,
            &mut out,
            &mut scratch,
            |t, n| counts[t] += n,
        )
        .unwrap();
        assert!(out == data[w[0]..w[1]], "range {w:?}");
    }
    assert_eq!(counts, report.non_finite);
    let mut wrong = vec![0u8; 3];
    assert!(fill_range(&plan, 0..4, &mut wrong, &mut scratch, |_, _| {}).is_err());
    let mut cut = vec![0u8; 14];
    let err = fill_range(&plan, 0..14, &mut cut, &mut scratch, |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("cuts an element"), "{err}");
}

#[test]
fn every_method_writes_the_same_file() {
    for dtype in [TargetDtype::Keep, TargetDtype::F16, TargetDtype::F8E5M2] {
        let plan = sdxl_plan(dtype, 4096);
        let small = EngineOptions {
            chunk_size: 64 << 10,
            threads: 3,
            ..Default::default()
        };
        let (want, want_report) = written(&plan, Method::Pwrite, &small);
        assert_eq!(want.len() as u64, plan.file_len());
        for method in [Method::Mmap, Method::Direct] {
            for opts in [small, EngineOptions::default()] {
                let (got, report) = written(&plan, method, &opts);
                assert!(got == want, "{dtype} {method:?} {opts:?}");
                assert_eq!(report, want_report);
            }
        }
    }
}

#[test]
fn staged_snapshots_write_the_same_file() {
    let plan = sdxl_plan(TargetDtype::F16, 4096);
    let (want, _) = written(&plan, Method::Pwrite, &EngineOptions::default());
    let (image, _) = stage(&plan, None).unwrap();
    let staged = plan.with_data(std::sync::Arc::new(image)).unwrap();
    for method in [Method::Direct, Method::Pwrite] {
        let (got, _) = written(&staged, method, &EngineOptions::default());
        assert!(got == want, "{method:?}");
    }
}

#[test]
fn cancellation_is_seen_before_the_first_unit() {
    let plan = sdxl_plan(TargetDtype::Keep, 8);
    let file = tempfile::tempfile().unwrap();
    let err = write(
        &plan,
        &file,
        Method::Pwrite,
        &EngineOptions::default(),
        &Progress::hidden(),
        &AtomicBool::new(true),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
}

#[test]
fn budget_bounds_workers_and_chunks() {
    let o = EngineOptions {
        chunk_size: 32 << 20,
        staging_budget: 40 << 20,
        threads: 8,
        ..Default::default()
    };
    assert_eq!(o.effective(), (1, 32 << 20));
    let o = EngineOptions {
        chunk_size: 32 << 20,
        staging_budget: 8 << 20,
        threads: 4,
        ..Default::default()
    };
    assert_eq!(o.effective(), (1, 8 << 20));
    let o = EngineOptions {
        chunk_size: 1 << 20,
        staging_budget: 256 << 20,
        threads: 3,
        ..Default::default()
    };
    assert_eq!(o.effective(), (3, 1 << 20));
    // Threads as given are kept through direct I/O; left to the engine, two per core there,
    // within the budget.
    assert_eq!(o.effective_direct(), (3, 1 << 20));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let o = EngineOptions {
        chunk_size: 1 << 20,
        staging_budget: 256 << 20,
        threads: 0,
        ..Default::default()
    };
    assert_eq!(o.effective(), (cores.min(MAX_WRITER_THREADS), 1 << 20));
    assert_eq!(
        o.effective_direct(),
        ((2 * cores).min(MAX_WRITER_THREADS), 1 << 20)
    );
    let o = EngineOptions {
        staging_budget: 3 << 20,
        ..o
    };
    assert_eq!(o.effective_direct(), ((2 * cores).min(3), 1 << 20));
}

/// Thousands of threads for 4 KiB units made a 300 MB convert take minutes: whatever is asked,
/// the workers stay within the caps, and extreme sizes neither overflow nor panic.
#[test]
fn workers_are_capped_whatever_is_asked() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cap = (cores * MAX_WORKERS_PER_CORE).min(MAX_WRITER_THREADS);
    let o = EngineOptions {
        chunk_size: 0,
        staging_budget: u64::MAX,
        threads: 100_000,
        ..Default::default()
    };
    assert_eq!(o.effective(), (cap, 4096));
    assert_eq!(o.effective_direct(), (cap, 4096));
    let o = EngineOptions {
        chunk_size: u64::MAX,
        staging_budget: u64::MAX,
        threads: usize::MAX,
        ..Default::default()
    };
    assert_eq!(o.effective(), (1, u64::MAX / 4096 * 4096));
    let o = EngineOptions { threads: 0, ..o };
    assert_eq!(o.effective().0, 1);
}

#[test]
fn backend_is_resolved_once_from_the_folder_and_devices() {
    let disk = tempfile::tempdir().unwrap();
    let direct = if crate::sys::HAS_DIRECT_IO {
        Method::Direct
    } else {
        Method::Pwrite
    };
    assert_eq!(Backend::Direct.resolve(disk.path(), false), direct);
    // A device pipeline writes at arbitrary offsets: never direct, so no padded header.
    assert_eq!(Backend::Direct.resolve(disk.path(), true), Method::Pwrite);
    assert_eq!(Backend::Auto.resolve(disk.path(), true), Method::Pwrite);
    assert_eq!(Backend::Mmap.resolve(disk.path(), false), Method::Mmap);
    if std::path::Path::new("/dev/shm").is_dir() {
        let shm = std::path::Path::new("/dev/shm/not-yet-created/sub");
        assert_eq!(Backend::Auto.resolve(shm, false), Method::Pwrite);
    }
}

/// A store through a map into a page without a block gets SIGBUS on a full disk: the map is used
/// only where preallocation reserved every block, positional writes (an error, not a crash)
/// everywhere else.
#[test]
fn mmap_is_used_only_where_the_blocks_are_reserved() {
    use crate::sys::Preallocated::{Reserved, SizedOnly};
    use sink::method_after_preallocation as after;
    assert_eq!(after(Method::Mmap, SizedOnly), Method::Pwrite);
    assert_eq!(after(Method::Mmap, Reserved), Method::Mmap);
    for method in [Method::Pwrite, Method::Direct] {
        for done in [Reserved, SizedOnly] {
            assert_eq!(after(method, done), method);
        }
    }
    // tmpfs has fallocate: a mapped write there reserves its pages (so a full tmpfs fails before
    // the first byte), while the other methods only size the file.
    if crate::sys::HAS_DIRECT_IO && std::path::Path::new("/dev/shm").is_dir() {
        let f = tempfile::tempfile_in("/dev/shm").unwrap();
        assert_eq!(
            sink::preallocate(&f, 1 << 20, Method::Mmap).unwrap(),
            Method::Mmap
        );
        assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    }
}

/// A write that finds the disk full says what to do, not only the OS's "No space left".
#[test]
fn a_full_disk_while_writing_says_what_to_do() {
    let full = sink::write_error(
        "writing 1 bytes at offset 0 of the checkpoint".into(),
        std::io::Error::from(std::io::ErrorKind::StorageFull),
    );
    assert!(
        full.to_string().contains("the disk is full; free space"),
        "{full}"
    );
    let other = sink::write_error(
        "writing the checkpoint header".into(),
        std::io::Error::from(std::io::ErrorKind::PermissionDenied),
    );
    assert!(!other.to_string().contains("disk is full"), "{other}");
}
