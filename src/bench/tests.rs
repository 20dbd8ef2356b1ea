//! Units of the bench: each kind of job measured on tiny models (what is timed, what is left
//! behind), and a file-to-file bench on a GPU refused before anything is written.

use super::*;
use crate::save::save_to_path;
use crate::synthetic::{self, SyntheticOptions};

fn options(dir: &Path, from_file: bool) -> BenchOptions {
    BenchOptions {
        arch: Arch::Sd15,
        variant: None,
        dtype: TargetDtype::F16,
        model_dtype: None,
        output_dir: dir.to_path_buf(),
        runs: 3,
        engine: EngineOptions::default(),
        max_dim: Some(16),
        device: Device::Cpu,
        from_file,
        input_dir: None,
        input: None,
        merge: false,
        lora_rank: None,
        chain: None,
        quantize: None,
        gguf: None,
        method: None,
    }
}

/// The save the benchmark times, made here independently: the figures are about this file.
fn same_save(dir: &Path, model_dtype: Option<DType>) -> (u64, usize) {
    let mut syn = SyntheticOptions::new(Arch::Sd15)
        .with_seed(1)
        .with_max_dim(16);
    syn.dtype = model_dtype;
    let c = synthetic::build(&syn, &Device::Cpu).unwrap();
    let mut save_opts = SaveOptions {
        layout: LayoutChoice::Arch(Arch::Sd15),
        dtypes: ComponentDtypes::all(TargetDtype::F16),
        ..Default::default()
    };
    save_opts.metadata.disable = true;
    let path = dir.join("same.safetensors");
    let saved = save_to_path(&c, &path, &save_opts).unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::remove_file(&path).unwrap();
    (len, saved.tensors)
}

fn run_alone(o: &BenchOptions) -> BenchReport {
    let _turn = memory::TESTS_TAKE_TURNS.lock();
    run(o).unwrap()
}

fn check_runs(r: &BenchReport) {
    let candle = r.candle.as_ref().expect("a tiny model fits in memory");
    for m in [&r.ours, candle, &r.ceiling_sequential, &r.ceiling_parallel] {
        assert_eq!(m.runs_s.len(), 3);
        assert!(
            m.runs_s.contains(&m.median_s),
            "the median is one of the runs"
        );
        assert!(m.runs_s.iter().filter(|&&x| x < m.median_s).count() <= 1);
        assert!(m.cpu_s >= 0.0 && m.gbps > 0.0);
    }
    assert!(r.to_string().contains("ratio to ceiling"));
    assert!(r.to_string().contains("ratio to candle"));
    // A job that reads files has its reads timed, and the job's ceiling counts them: it is
    // never below the write-only one.
    match (&r.raw_read, r.ratio_job_ceiling, r.input_bytes) {
        (Some(read), Some(job), Some(input)) => {
            assert_eq!(read.runs_s.len(), 3);
            assert!((read.gbps - input as f64 / read.median_s / 1e9).abs() < 1e-9);
            assert!(job >= r.ratio_ceiling * (1.0 - 1e-12));
            assert!(r.to_string().contains("(g) raw read of inputs"));
        }
        (None, None, None) => assert!(!r.to_string().contains("(g)")),
        other => panic!("reads timed for a job without inputs or the reverse: {other:?}"),
    }
}

#[test]
fn a_tiny_bench_measures_the_file_a_save_writes_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let r = run_alone(&options(dir.path(), false));
    assert_eq!((r.bytes, r.tensors), same_save(dir.path(), None));
    assert_eq!((r.job.as_str(), r.input_bytes), ("save", None));
    check_runs(&r);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_file_to_file_bench_converts_an_f32_checkpoint_and_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let r = run_alone(&options(dir.path(), true));
    // The input is the model in f32, so the f16 output is smaller by about half (headers
    // weigh in a tiny model); the output is what a save of the same model in memory writes.
    assert_eq!(
        (r.bytes, r.tensors),
        same_save(dir.path(), Some(DType::F32))
    );
    let input = r.input_bytes.unwrap();
    assert!(
        input > r.bytes * 3 / 2 && input < r.bytes * 2,
        "{input} vs {}",
        r.bytes
    );
    assert_eq!(r.job, "file-to-file");
    check_runs(&r);
    assert!(r.to_string().contains("candle load + to_dtype + save"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_bench_of_a_given_input_converts_that_file_and_leaves_it_in_place() {
    let (dir, mine) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut syn = SyntheticOptions::new(Arch::Sd15)
        .with_seed(1)
        .with_max_dim(16);
    syn.dtype = Some(DType::F32);
    let c = synthetic::build(&syn, &Device::Cpu).unwrap();
    let input = mine.path().join("mine.safetensors");
    save_to_path(
        &c,
        &input,
        &SaveOptions {
            layout: LayoutChoice::Arch(Arch::Sd15),
            ..Default::default()
        },
    )
    .unwrap();
    let before = std::fs::read(&input).unwrap();
    let mut o = options(dir.path(), true);
    o.input = Some(input.clone());
    let r = run_alone(&o);
    assert_eq!(r.input_bytes, Some(before.len() as u64));
    assert_eq!(r.input_dir.as_deref(), Some(input.to_str().unwrap()));
    // The same model as the synthetic from-file bench writes: the same output.
    assert_eq!(
        (r.bytes, r.tensors),
        same_save(dir.path(), Some(DType::F32))
    );
    check_runs(&r);
    assert_eq!(
        std::fs::read(&input).unwrap(),
        before,
        "the input is untouched"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // A given input is only ever converted.
    o.chain = Some(2);
    let Err(Error::InvalidInput(m)) = run(&o) else {
        panic!("a chain over a given input ran")
    };
    assert!(m.contains("file-to-file"), "{m}");
    assert!(input.exists());
}

#[test]
fn a_merge_bench_times_the_merge_the_bake_and_the_convert_and_removes_its_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path(), false);
    (o.merge, o.lora_rank) = (true, Some(2));
    let r = run_alone(&o);
    // The merge writes what a save of A does: same keys and shapes, f16.
    assert_eq!(
        (r.bytes, r.tensors),
        same_save(dir.path(), Some(DType::F32))
    );
    // A and B in f32, each about twice the f16 output.
    let input = r.input_bytes.unwrap();
    assert!(input > 3 * r.bytes && input < 4 * r.bytes, "{input}");
    assert_eq!(r.job, "merge");
    check_runs(&r);
    let (bake, plain) = (
        r.lora_bake.as_ref().unwrap(),
        r.plain_convert.as_ref().unwrap(),
    );
    assert_eq!((bake.runs_s.len(), plain.runs_s.len()), (3, 3));
    let ratio = r.ratio_bake_to_convert.unwrap();
    assert!((ratio - bake.median_s / plain.median_s).abs() < 1e-12);
    assert!(r.lora_gflop.unwrap() > 0.0);
    let text = r.to_string();
    assert!(text.contains("LoRA bake / plain convert") && text.contains("a*r+b*(1-r)"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_run_bench_times_a_merge_graph_against_the_ceiling_and_removes_its_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path(), false);
    o.chain = Some(3);
    let _turn = memory::TESTS_TAKE_TURNS.lock();
    let r = run(&o).unwrap();
    // The chain writes what a save of its first input does, f16.
    assert_eq!(
        (r.bytes, r.tensors),
        same_save(dir.path(), Some(DType::F16))
    );
    // Three f16 inputs, each about the output's size.
    let input = r.input_bytes.unwrap();
    assert!(input > 2 * r.bytes && input < 4 * r.bytes, "{input}");
    assert_eq!(r.job, "run");
    assert!(r.candle.is_none() && r.candle_skipped.is_some());
    assert!(r.ratio_job_ceiling.is_some());
    assert_eq!(r.ours.runs_s.len(), 3);
    assert!(r
        .to_string()
        .contains("a chain is timed against the storage ceiling only"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_method_bench_times_slerp_and_ties_against_the_ceiling_and_removes_its_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let _turn = memory::TESTS_TAKE_TURNS.lock();
    for (name, n, k) in [("slerp", 2, None), ("ties_sum", 3, Some("0.2"))] {
        let mut o = options(dir.path(), false);
        o.chain = Some(n);
        o.runs = 1;
        let params = k
            .map(|k| [("k".to_string(), crate::merge::methods::Param::Str(k.into()))])
            .into_iter()
            .flatten()
            .collect();
        o.method = Some(BenchMethod {
            name: name.into(),
            params,
        });
        let r = run(&o).unwrap();
        assert_eq!(
            (r.bytes, r.tensors),
            same_save(dir.path(), Some(DType::F16))
        );
        let input = r.input_bytes.unwrap();
        assert!(input > (n as u64 - 1) * r.bytes, "{input}");
        assert_eq!(r.job, format!("merge --method {name}"));
        assert!(r.candle.is_none() && r.ratio_job_ceiling.is_some());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

#[test]
fn a_file_to_file_bench_on_a_gpu_is_refused_before_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(&dir.path().join("never"), true);
    o.device = Device::Cpu;
    assert!(candle_fits(1 << 20).is_none());
    assert!(candle_fits(u64::MAX / 2).is_some_and(|w| w.contains("available")));
    if let Ok(d) = Device::new_cuda(0) {
        o.device = d;
        assert!(matches!(run(&o), Err(Error::InvalidInput(_))));
        assert!(!dir.path().join("never").exists());
    }
}
