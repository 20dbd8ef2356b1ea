//! One test body per device, as candle does: each body saves tensors held on a device and checks
//! every byte of the file against the CPU cast of the same values (`cast::convert`, itself tested
//! against `half` and `float8`), and every NaN/Inf count against a count made here.
//!
//! The `cpu` variant of each body always runs. The `cuda` variants run when CUDA device 0 exists
//! (a build with `--features cuda` on a GPU machine); without one they are reported as ignored,
//! unless `CHECKPOINT_SAVE_REQUIRE_GPU=1` is set, in which case they run and fail. The two-device
//! body needs two CUDA devices. This file has its own `main` (libtest-mimic), because whether a
//! test is ignored depends on the machine it runs on.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use checkpoint_save::cast;
use checkpoint_save::checkpointer::{Checkpointer, SnapshotStrategy};
use checkpoint_save::layout::Source;
use checkpoint_save::merge::{merge, Lora, LoraBake, Operation, Recipe};
use checkpoint_save::model::{Merged, Patch, PatchValue};
use checkpoint_save::synthetic::{self, SyntheticOptions};
use checkpoint_save::{
    lay_out, pinned_copy_ceiling, save_to_path, Arch, Backend, ComponentDtypes, ComponentKind,
    Components, Dtype, EngineOptions, GenericPrefixes, InputTensor, LayoutChoice, SaveOptions,
    Saved, TargetDtype,
};
use common::bytes_of;
use libtest_mimic::{Arguments, Failed, Trial};

type Body = fn(&[Device]) -> Result<(), Failed>;

const TARGETS: [TargetDtype; 6] = [
    TargetDtype::Keep,
    TargetDtype::F32,
    TargetDtype::F16,
    TargetDtype::BF16,
    TargetDtype::F8E4M3,
    TargetDtype::F8E5M2,
];

/// Values that exercise every rounding and saturation edge, plus their negatives.
fn edge_values() -> Vec<f32> {
    let mut v = vec![
        0.0,
        f32::NAN,
        f32::INFINITY,
        65504.0,
        65519.0,
        65520.0,
        1e-8,
        5.96e-8,
        2.98e-8,
        1e-40,
        f32::MIN_POSITIVE,
        448.0,
        464.0,
        500.0,
        57344.0,
        61440.0,
        1e30,
        f32::MAX,
        1.0 + f32::EPSILON,
        0.1,
        3.0e-3,
        1.9531e-3,
        0.0009765625,
    ];
    let negs: Vec<f32> = v.iter().map(|x| -x).collect();
    v.extend(negs);
    // Every f16 and bf16 bit pattern, as f32 (NaN payloads included).
    v.extend((0..=u16::MAX).map(|h| half::f16::from_bits(h).to_f32()));
    v.extend((0..=u16::MAX).map(|b| f32::from_bits(u32::from(b) << 16)));
    // A spread of f32 bit patterns, with a NaN payload or two.
    v.extend((0..200_000u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761))));
    v.push(f32::from_bits(0x7f80_0001));
    v.push(f32::from_bits(0xffbf_ffff));
    v
}

/// Generic-layout components on the CPU: the edge values (whole, a transposed view, and many
/// small tensors) in `dtype`, and an integer tensor.
fn edge_components(dtype: DType) -> Components {
    let values = edge_values();
    let n = values.len();
    let whole = Tensor::from_vec(values, n, &Device::Cpu).unwrap();
    let mut model = BTreeMap::new();
    model.insert("edge".to_string(), whole.to_dtype(dtype).unwrap());
    let rows = n / 64 * 64;
    let square = whole
        .narrow(0, 0, rows)
        .unwrap()
        .reshape((rows / 64, 64))
        .unwrap();
    model.insert(
        "strided".to_string(),
        square.to_dtype(dtype).unwrap().t().unwrap(),
    );
    for i in 0..300 {
        let t = whole.narrow(0, i * 17, 1 + i % 13).unwrap();
        model.insert(format!("small.{i:03}"), t.to_dtype(dtype).unwrap());
    }
    model.insert(
        "ids".to_string(),
        Tensor::arange(0i64, 77, &Device::Cpu).unwrap(),
    );
    Components::new(model)
}

/// The same components with each component's tensors moved to `device(kind)`.
fn moved(c: &Components, device: impl Fn(ComponentKind) -> Device) -> Components {
    let mut out = Components::default();
    for (kind, map) in c.iter() {
        let d = device(kind);
        let m: BTreeMap<String, Tensor> = map
            .iter()
            .map(|(k, t)| (k.clone(), t.as_candle().unwrap().to_device(&d).unwrap()))
            .collect();
        out.set(kind, m);
    }
    out
}

fn options(layout: LayoutChoice, dtype: TargetDtype) -> SaveOptions {
    let mut opts = SaveOptions {
        layout,
        dtypes: ComponentDtypes::all(dtype),
        // Small chunks: large tensors are split across batches and the ring wraps many times.
        writer: EngineOptions {
            chunk_size: 64 << 10,
            ..EngineOptions::default()
        },
        ..SaveOptions::default()
    };
    opts.metadata.provenance = false;
    opts
}

fn save_in(dir: &Path, sub: &str, c: &Components, opts: &SaveOptions) -> (Saved, Vec<u8>) {
    let folder = dir.join(sub);
    std::fs::create_dir_all(&folder).unwrap();
    let path = folder.join("x.safetensors");
    let saved = save_to_path(c, &path, opts).unwrap();
    (saved, std::fs::read(&path).unwrap())
}

/// Checks the file written from `held` (the tensors on their devices) against the CPU cast of
/// `cpu` (the same values on the CPU): every tensor's bytes, every NaN/Inf count.
fn check_against_cpu(cpu: &Components, opts: &SaveOptions, saved: &Saved, file: &[u8], what: &str) {
    let (_, _, layout) = lay_out(cpu, &opts.layout, opts.prediction).unwrap();
    let st = safetensors::SafeTensors::deserialize(file).unwrap();
    let mut want_non_finite = Vec::new();
    for e in &layout.entries {
        let get = |c, k: &str| cpu.candle(c, k).unwrap().clone();
        let source = match &e.source {
            Source::Copy { component, key } => get(*component, key),
            Source::Transpose { component, key } => get(*component, key).t().unwrap(),
            Source::FuseQkv { component, keys } => {
                let parts: Vec<Tensor> = keys.iter().map(|k| get(*component, k)).collect();
                Tensor::cat(&parts, 0).unwrap()
            }
            _ => continue,
        };
        let from: Dtype = source.dtype().into();
        let to = e
            .source
            .component()
            .map_or(from, |c| opts.dtypes.get(c).resolve(&e.key, from).unwrap());
        let src = bytes_of(&source.contiguous().unwrap());
        let mut want = vec![0u8; src.len() / (from.bitsize() / 8) * (to.bitsize() / 8)];
        let count = cast::convert(&e.key, &src, from, &mut want, to).unwrap();
        if count > 0 {
            want_non_finite.push((e.key.clone(), count));
        }
        let view = st.tensor(&e.key).unwrap();
        assert_eq!(view.dtype(), to, "{what}: {}", e.key);
        if let Some(at) = view.data().iter().zip(&want).position(|(a, b)| a != b) {
            panic!("{what}: `{}` differs from the CPU cast at byte {at}", e.key);
        }
    }
    want_non_finite.sort();
    let mut got = saved.non_finite.clone();
    got.sort();
    assert_eq!(got, want_non_finite, "{what}: NaN/Inf counts");
}

fn every_dtype_pair_matches_the_cpu_cast(devices: &[Device]) -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    for src in [DType::F32, DType::F16, DType::BF16, DType::F64] {
        let cpu = edge_components(src);
        let held = moved(&cpu, |_| devices[0].clone());
        for dst in TARGETS {
            let opts = options(LayoutChoice::Generic(GenericPrefixes::default()), dst);
            let what = format!("{src:?} -> {dst}");
            let (saved, file) = save_in(dir.path(), &format!("{src:?}-{dst}"), &held, &opts);
            check_against_cpu(&cpu, &opts, &saved, &file, &what);
        }
    }
    Ok(())
}

fn planted_nan_and_inf_are_counted_exactly(devices: &[Device]) -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let mut values: Vec<f32> = (0..1_000_000).map(|i| (i as f32 * 0.37).sin()).collect();
    let planted = [3usize, 17, 4096, 65_537, 999_999];
    for (k, &i) in planted.iter().enumerate() {
        values[i] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][k % 3];
    }
    let t = Tensor::from_vec(values, (1000, 1000), &devices[0])?;
    let mut model = BTreeMap::new();
    model.insert("planted".to_string(), t);
    model.insert(
        "clean".to_string(),
        Tensor::ones((64, 64), DType::F32, &devices[0])?,
    );
    let c = Components::new(model);
    for dst in [TargetDtype::Keep, TargetDtype::F16, TargetDtype::F8E4M3] {
        let opts = options(LayoutChoice::Generic(GenericPrefixes::default()), dst);
        let (saved, _) = save_in(dir.path(), &format!("{dst}"), &c, &opts);
        let want = vec![(
            "model.diffusion_model.planted".to_string(),
            planted.len() as u64,
        )];
        assert_eq!(saved.non_finite, want, "{dst}");
    }
    Ok(())
}

fn architecture_layouts_match_the_cpu_cast(devices: &[Device]) -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    // SDXL: OpenCLIP q/k/v fusion (three pieces per tensor) and transposed projections.
    for src in [DType::F32, DType::F16] {
        let synth = SyntheticOptions::new(Arch::Sdxl).tiny().with_dtype(src);
        let cpu = synthetic::build(&synth, &Device::Cpu)?;
        let held = moved(&cpu, |_| devices[0].clone());
        for dst in [TargetDtype::Keep, TargetDtype::BF16, TargetDtype::F8E5M2] {
            let opts = options(LayoutChoice::Arch(Arch::Sdxl), dst);
            let what = format!("sdxl {src:?} -> {dst}");
            let (saved, file) = save_in(dir.path(), &format!("{src:?}-{dst}"), &held, &opts);
            check_against_cpu(&cpu, &opts, &saved, &file, &what);
        }
    }
    Ok(())
}

fn components_on_two_devices_save_into_one_file(devices: &[Device]) -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let synth = SyntheticOptions::new(Arch::Sdxl)
        .tiny()
        .with_dtype(DType::F32);
    let cpu = synthetic::build(&synth, &Device::Cpu)?;
    let spread = moved(&cpu, |kind| match kind {
        ComponentKind::Model => devices[0].clone(),
        ComponentKind::Clip => devices[1].clone(),
        _ => Device::Cpu,
    });
    for dst in [TargetDtype::Keep, TargetDtype::F16] {
        let opts = options(LayoutChoice::Arch(Arch::Sdxl), dst);
        let (saved, file) = save_in(dir.path(), &format!("{dst}"), &spread, &opts);
        check_against_cpu(&cpu, &opts, &saved, &file, &format!("two devices -> {dst}"));
    }
    Ok(())
}

fn pinned_copy_ceiling_is_measured_on_cuda_only(devices: &[Device]) -> Result<(), Failed> {
    match &devices[0] {
        Device::Cpu => assert!(pinned_copy_ceiling(&Device::Cpu, 1 << 20).is_err()),
        d => {
            let gbps = pinned_copy_ceiling(d, 256 << 20)?;
            eprintln!("pinned device-to-host copy: {gbps:.1} GB/s");
            assert!(gbps > 0.1);
        }
    }
    Ok(())
}

/// Two tiny f32 SD1.5 models on `device` and a rank-3 LoRA for the first, in a file.
fn merge_inputs(device: &Device, dir: &Path) -> (Components, Components, Lora) {
    let model = |seed| {
        let mut o = SyntheticOptions::new(Arch::Sd15)
            .with_seed(seed)
            .with_max_dim(16);
        o.dtype = Some(DType::F32);
        synthetic::build(&o, device).unwrap()
    };
    let a = model(1);
    let l = synthetic::lora::lora(Arch::Sd15, &a, 3, 7).unwrap();
    let path = dir.join("lora.safetensors");
    let generic = SaveOptions {
        layout: LayoutChoice::Generic(GenericPrefixes {
            model: String::new(),
            ..GenericPrefixes::default()
        }),
        ..options(LayoutChoice::Arch(Arch::Sd15), TargetDtype::Keep)
    };
    save_to_path(&Components::new(l), &path, &generic).unwrap();
    (a, model(2), Lora::open(&path).unwrap())
}

/// Every tensor of a saved f32 file, by key.
fn f32_tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
    checkpoint_save::load_tensors(path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            let v = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
            (k, v.to_vec1().unwrap())
        })
        .collect()
}

fn merges_on_the_device_match_the_host(devices: &[Device]) -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let (a, b, lora) = merge_inputs(&devices[0], dir.path());
    let recipe = |device: Option<Device>| Recipe {
        operation: Operation::WeightedSum { ratio: 0.3 },
        clip: Some(0.3),
        loras: vec![LoraBake {
            lora: lora.clone(),
            strength_model: 0.8,
            strength_clip: 1.0,
        }],
        device,
        ..Recipe::default()
    };
    let opts = options(LayoutChoice::Arch(Arch::Sd15), TargetDtype::F32);
    let mut files = Vec::new();
    for (name, device) in [("host", None), ("device", Some(devices[0].clone()))] {
        let (c, report) = merge(&[&a, &b], &[], &recipe(device))?;
        assert!(report.merged > 0 && report.loras[0].matched > 0);
        let path = dir.path().join(format!("{name}.safetensors"));
        save_to_path(&c, &path, &opts)?;
        files.push(f32_tensors(&path));
    }
    assert_eq!(
        files[0].keys().collect::<Vec<_>>(),
        files[1].keys().collect::<Vec<_>>()
    );
    // f32 arithmetic on both; a device may contract `a·r + b·(1−r)` into one FMA and sums the
    // LoRA's products in another order, so values agree to f32 rounding, not bit for bit.
    for (k, host) in &files[0] {
        for (x, y) in host.iter().zip(&files[1][k]) {
            let tol = 1e-5 * (1.0 + x.abs());
            assert!((x - y).abs() <= tol, "{k}: host {x}, device {y}");
        }
    }
    Ok(())
}

fn bench_merge_runs_on_the_device(devices: &[Device]) -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let opts = checkpoint_save::bench::BenchOptions {
        arch: Arch::Sd15,
        variant: None,
        dtype: TargetDtype::F16,
        model_dtype: None,
        output_dir: dir.path().to_path_buf(),
        runs: 1,
        engine: EngineOptions::default(),
        max_dim: Some(16),
        device: devices[0].clone(),
        from_file: false,
        input_dir: None,
        input: None,
        merge: true,
        lora_rank: Some(2),
        chain: None,
        quantize: None,
        gguf: None,
        method: None,
    };
    let r = checkpoint_save::bench::run(&opts)?;
    eprintln!("{r}");
    assert!(r.ours_gbps > 0.0 && r.lora_bake.is_some());
    // On a GPU the report carries the device-to-host copy rate measured in the same run.
    assert_eq!(r.device_copy_gbps.is_some(), !devices[0].is_cpu());
    assert_eq!(std::fs::read_dir(dir.path())?.count(), 0);
    Ok(())
}

/// Pairs `(a, b)` whose sums `a + b` cover every non-finite case: NaN and Inf in an input, NaN
/// and Inf made by the f32 arithmetic (counted), and finite sums that overflow or saturate only
/// in the rounding into the file dtype (not counted).
const PLANTED: [(f32, f32); 8] = [
    (f32::NAN, 1.0),
    (f32::INFINITY, 1.0),
    (f32::INFINITY, f32::NEG_INFINITY),
    (3e38, 3e38),
    (60000.0, 60000.0),
    (400.0, 100.0),
    (f32::MAX, 0.0),
    (-1e5, 0.5),
];

/// Regression (issue 20): a merge evaluated on the device was rounded there first and its NaN/Inf
/// counted after the rounding, so f16 overflows were counted and fp8-saturated Infs were not; the
/// host evaluator counts the f32 results. Both must now report the same counts and bytes.
fn device_merges_count_before_the_rounding(devices: &[Device]) -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let n = 4096;
    let side = |pick: fn(&(f32, f32)) -> f32, seed: f32| -> Vec<f32> {
        let mut v: Vec<f32> = (0..n).map(|i| (i as f32 * seed).sin()).collect();
        for (x, p) in v.iter_mut().zip(&PLANTED) {
            *x = pick(p);
        }
        v
    };
    let (va, vb) = (side(|p| p.0, 0.37), side(|p| p.1, 0.71));
    let want = va
        .iter()
        .zip(&vb)
        .filter(|(x, y)| !(**x + **y).is_finite())
        .count() as u64;
    let on = |d: &Device| {
        let t = |v: &Vec<f32>| Tensor::from_vec(v.clone(), n, d).unwrap();
        let patch = Patch {
            strength: 1.0,
            strength_model: 1.0,
            value: PatchValue::Tensor(InputTensor::Candle(t(&vb))),
        };
        let m = Merged::new("w", InputTensor::Candle(t(&va)), vec![patch]).unwrap();
        let mut model = BTreeMap::new();
        model.insert("w".to_string(), InputTensor::Merged(Arc::new(m)));
        let mut c = Components::default();
        c.set_inputs(ComponentKind::Model, model);
        c
    };
    // Operands on the device: evaluated there; on the CPU: the host's fused evaluator.
    let (held, host) = (on(&devices[0]), on(&Device::Cpu));
    for dst in TARGETS {
        let opts = options(LayoutChoice::Generic(GenericPrefixes::default()), dst);
        let (hs, hb) = save_in(dir.path(), &format!("host-{dst}"), &host, &opts);
        let (ds, db) = save_in(dir.path(), &format!("device-{dst}"), &held, &opts);
        let key = "model.diffusion_model.w".to_string();
        assert_eq!(hs.non_finite, vec![(key.clone(), want)], "host {dst}");
        assert_eq!(ds.non_finite, vec![(key, want)], "device {dst}");
        // Equal bytes, but for NaN payloads (the device's cast may make its own NaN).
        let ((h, to), (d, _)) = (tensor_data(&hb), tensor_data(&db));
        for (i, (x, y)) in h
            .chunks(to.bitsize() / 8)
            .zip(d.chunks(to.bitsize() / 8))
            .enumerate()
        {
            let nan = is_nan(x, to) && is_nan(y, to);
            assert!(x == y || nan, "{dst}: element {i} differs: {x:?} vs {y:?}");
        }
    }
    Ok(())
}

/// The one tensor's bytes and dtype of a single-tensor file.
fn tensor_data(file: &[u8]) -> (Vec<u8>, Dtype) {
    let st = safetensors::SafeTensors::deserialize(file).unwrap();
    let (_, view) = st.tensors().into_iter().next().unwrap();
    (view.data().to_vec(), view.dtype())
}

/// Whether one little-endian element of `dtype` is a NaN.
fn is_nan(b: &[u8], dtype: Dtype) -> bool {
    match dtype {
        Dtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_nan(),
        Dtype::F16 => half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).is_nan(),
        Dtype::BF16 => half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).is_nan(),
        Dtype::F8_E4M3 => b[0] & 0x7f == 0x7f,
        Dtype::F8_E5M2 => b[0] & 0x7c == 0x7c && b[0] & 0x03 != 0,
        _ => false,
    }
}

/// Regression (issue 20): the save chose direct I/O when no *held* tensor was a device tensor,
/// while the writer gave the pieces of nested ones (a `Joined`, a `Transposed`) to a device
/// pipeline: direct I/O's units wrote them a second time and counted their NaNs twice.
fn nested_device_tensors_are_written_once(devices: &[Device]) -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = &devices[0];
    let mut v: Vec<f32> = (0..8192).map(|i| (i as f32 * 0.3).cos()).collect();
    v[5] = f32::NAN;
    v[6000] = f32::INFINITY;
    let whole = Tensor::from_vec(v.clone(), 8192, d)?;
    let square = Tensor::from_vec(v[..4096].to_vec(), (64, 64), d)?;
    let joined = InputTensor::joined(
        "qkv",
        vec![
            (InputTensor::Candle(whole.clone()), 4096..8192),
            (InputTensor::Candle(whole.clone()), 0..4096),
        ],
        vec![2, 4096],
    )?;
    let mut model = BTreeMap::new();
    model.insert("joined".to_string(), joined);
    model.insert(
        "proj".to_string(),
        InputTensor::Candle(square.clone()).transposed(),
    );
    model.insert(
        "on_host".to_string(),
        InputTensor::Candle(Tensor::ones(4096, DType::F32, &Device::Cpu)?),
    );
    let mut c = Components::default();
    c.set_inputs(ComponentKind::Model, model);
    for dst in [TargetDtype::Keep, TargetDtype::F16] {
        let mut opts = options(LayoutChoice::Generic(GenericPrefixes::default()), dst);
        opts.writer.backend = Backend::Direct;
        let (saved, file) = save_in(dir.path(), &format!("{dst}"), &c, &opts);
        let name = |k: &str| format!("model.diffusion_model.{k}");
        let mut got = saved.non_finite.clone();
        got.sort();
        let want = vec![(name("joined"), 2), (name("proj"), 1)];
        assert_eq!(got, want, "{dst}");
        let st = safetensors::SafeTensors::deserialize(&file)?;
        let to = match dst {
            TargetDtype::Keep => Dtype::F32,
            _ => Dtype::F16,
        };
        let rotated: Vec<f32> = v[4096..].iter().chain(&v[..4096]).copied().collect();
        let transposed: Vec<f32> = (0..4096).map(|i| v[(i % 64) * 64 + i / 64]).collect();
        for (key, values) in [("joined", rotated), ("proj", transposed)] {
            let src: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
            let mut want = vec![0u8; values.len() * to.bitsize() / 8];
            cast::convert(key, &src, Dtype::F32, &mut want, to)?;
            assert!(st.tensor(&name(key))?.data() == want, "{dst}: {key}");
        }
    }
    Ok(())
}

/// Regression (issue 20): the checkpointer's device snapshot queued its copies and returned;
/// the background write, on its own thread and stream, could read them before they finished.
/// The tensors here come out of a long chain of kernels queued just before the save.
fn checkpointer_snapshot_copies_finish_before_the_write(devices: &[Device]) -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = &devices[0];
    let n = if d.is_cpu() { 64 } else { 4096 };
    let mut x = Tensor::rand(-1f32, 1f32, (n, n), d)?;
    let y = (Tensor::rand(-1f32, 1f32, (n, n), d)? / n as f64)?;
    for _ in 0..16 {
        x = x.matmul(&y)?.tanh()?;
    }
    let mut ck = Checkpointer::builder(dir.path())
        .snapshot(SnapshotStrategy::DeviceCopy)
        .build()?;
    let mut model = BTreeMap::new();
    model.insert("x".to_string(), x.clone());
    ck.save(Components::new(model), 1, None)?;
    let path = ck.path_for(1);
    ck.finish()?;
    let want: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let back = checkpoint_save::load_tensors(&path, &Device::Cpu)?;
    let got: Vec<f32> = back["x"].flatten_all()?.to_vec1()?;
    assert!(
        got == want,
        "the file holds values the copy had not finished writing"
    );
    Ok(())
}

/// A quantized save (every format, per-tensor and block scales, padded nvfp4 rows) of tensors held
/// on the device writes the same bytes as the same tensors saved from the host: the scales'
/// reductions and the codes do not depend on where the values live. On CUDA the device reduces
/// and quantizes them (`kernels/quantize.cu`), so this compares the kernels' bytes with the CPU
/// codec's, from f32, bf16 and f16 sources, with blocks that are all zeros, subnormal or huge,
/// and, for mxfp8 (which has no tensor scale to refuse them), NaN and blocks whose scale byte is
/// 0 (kitchen divides by zero there).
fn quantized_saves_from_the_device_match_the_host(devices: &[Device]) -> Result<(), Failed> {
    use checkpoint_save::quant::{Format, Fp8, Quantize};
    let dir = tempfile::tempdir()?;
    let values: Vec<f32> = (0..70 * 96)
        .map(|i| ((i as f32 * 0.731).sin() * 3.0).powi(3))
        .collect();
    let x = Tensor::from_vec(values, (70, 96), &Device::Cpu)?;
    // 40 rows of 64: row 0 zeros, row 1 subnormal, row 2 up to 6e4, the rest spread over
    // magnitudes 2^-20..2^12, so blocks and tensor scales meet every rounding regime.
    let edge: Vec<f32> = (0..40 * 64)
        .map(|i| match i / 64 {
            0 => 0.0,
            1 => (i % 7) as f32 * 1e-41,
            2 => (i % 64) as f32 * 937.5 - 30000.0,
            r => ((i as f32 * 1.37).cos()) * 2f32.powi(r % 33 - 20),
        })
        .collect();
    let edge = Tensor::from_vec(edge, (40, 64), &Device::Cpu)?;
    let mut odd: Vec<f32> = (0..32 * 64).map(|i| (i as f32 * 0.11).sin()).collect();
    odd[5] = f32::NAN;
    odd[70] = -f32::NAN;
    odd[64 * 3..64 * 4].fill(1e-40); // scale byte 0: ±Inf codes
    odd[64 * 4 + 1] = -1e-40;
    let odd = Tensor::from_vec(odd, (32, 64), &Device::Cpu)?;
    for src in [DType::F32, DType::BF16, DType::F16] {
        for format in [
            Format::ScaledFp8(Fp8::E4M3),
            Format::Float8(Fp8::E4M3),
            Format::Float8(Fp8::E5M2),
            Format::Int8Tensorwise,
            Format::Mxfp8,
            Format::Nvfp4,
        ] {
            let mut host = BTreeMap::new();
            host.insert("blocks.0.attn.qkv.weight".to_string(), x.to_dtype(src)?);
            host.insert(
                "blocks.0.attn.qkv.bias".to_string(),
                x.get(0)?.to_dtype(src)?,
            );
            host.insert("blocks.1.attn.qkv.weight".to_string(), edge.to_dtype(src)?);
            if format == Format::Mxfp8 {
                host.insert("blocks.2.attn.qkv.weight".to_string(), odd.to_dtype(src)?);
            }
            let host = Components::new(host);
            let held = moved(&host, |_| devices[0].clone());
            let mut opts = options(
                LayoutChoice::Generic(GenericPrefixes::default()),
                TargetDtype::Keep,
            );
            opts.quantize = Some(Quantize::new(format));
            let what = format!("{src:?} -> {format}");
            let (_, h) = save_in(dir.path(), &format!("host-{src:?}-{format}"), &host, &opts);
            let (_, d) = save_in(dir.path(), &format!("dev-{src:?}-{format}"), &held, &opts);
            let st = safetensors::SafeTensors::deserialize(&h)?;
            let quantized = st
                .names()
                .iter()
                .filter(|n| n.ends_with("scale_weight") || n.ends_with("weight_scale"))
                .count();
            let expected = if format == Format::Mxfp8 { 3 } else { 2 };
            assert_eq!(quantized, expected, "{what}: layers quantized");
            if h != d {
                let dst = safetensors::SafeTensors::deserialize(&d)?;
                for name in st.names() {
                    let (a, b) = (st.tensor(name)?, dst.tensor(name)?);
                    let first = a.data().iter().zip(b.data()).position(|(x, y)| x != y);
                    assert!(
                        first.is_none(),
                        "{what}: `{name}` differs first at byte {first:?} (host {:?}, device {:?})",
                        first.map(|i| a.data()[i]),
                        first.map(|i| b.data()[i])
                    );
                }
                panic!("{what}: the device's file differs from the host's");
            }
        }
    }
    Ok(())
}

/// A GGUF save of every ggml block type (the `_S` types, Q2_K and the legacy mixes cover them all)
/// from tensors held on the device writes the same bytes as from the host. On CUDA the device
/// encodes the blocks (`kernels/ggml_quantize.cu`) range by range, so this compares the kernel's
/// blocks with the CPU codec's: from f32, bf16 and f16 sources, with more blocks than one
/// launch's first grid block (partial grids), ranges that cut blocks (64 KiB chunks), and blocks
/// that are all zeros, constant, subnormal, huge, tiny or one outlier; a transposed view, which
/// the host encodes, beside them.
fn gguf_saves_from_the_device_match_the_host(devices: &[Device]) -> Result<(), Failed> {
    use checkpoint_save::gguf::GgufFile;
    use checkpoint_save::GgufType;
    let dir = tempfile::tempdir()?;
    let spread = |n: usize, seed: f32| -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * 0.7311 + seed).sin() * 2.5).powi(3) * 0.01)
            .collect()
    };
    // 300 rows of 256: 300 super-blocks, 2400 blocks of 32 (one thread each, 256 per grid block).
    let mut edge = spread(300 * 256, 0.3);
    for (r, row) in edge.chunks_exact_mut(256).enumerate() {
        match r % 10 {
            0 => row.fill(0.0),
            1 => row.fill(-0.75),
            2 => row
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = (i % 7) as f32 * 1e-41),
            3 => row.iter_mut().for_each(|v| *v *= 3e6),
            4 => row.iter_mut().for_each(|v| *v *= 1e-30),
            5 => row[77] = 40.0,
            6 => row.iter_mut().step_by(2).for_each(|v| *v = -v.abs()),
            _ => {}
        }
    }
    let tensors = [
        (
            "double_blocks.0.img_attn.qkv.weight",
            spread(24 * 512, 1.0),
            (24, 512),
        ),
        (
            "double_blocks.0.img_attn.proj.weight",
            spread(512 * 256, 4.0),
            (512, 256),
        ),
        (
            "double_blocks.0.img_mlp.2.weight",
            spread(40 * 256, 2.0),
            (40, 256),
        ),
        ("single_blocks.0.linear1.weight", edge, (300, 256)),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for src in [DType::F32, DType::BF16, DType::F16] {
        let mut held = BTreeMap::new();
        for (key, values, shape) in &tensors {
            let t = Tensor::from_vec(values.clone(), *shape, &Device::Cpu)?.to_dtype(src)?;
            held.insert(key.to_string(), t.to_device(&devices[0])?);
        }
        // A transposed view: not contiguous, so encoded on the host from the device's values.
        let t = Tensor::from_vec(spread(256 * 512, 3.0), (256, 512), &Device::Cpu)?;
        let view = t.to_dtype(src)?.to_device(&devices[0])?.t()?;
        assert!(!view.is_contiguous());
        held.insert("single_blocks.0.linear2.weight".into(), view);
        let mut host = BTreeMap::new();
        for (k, t) in &held {
            host.insert(k.clone(), t.to_device(&Device::Cpu)?);
        }
        let (held, host) = (Components::new(held), Components::new(host));
        let opts = options(LayoutChoice::Arch(Arch::Flux), TargetDtype::Keep);
        for ty in [
            GgufType::Q8_0,
            GgufType::Q6_K,
            GgufType::Q5_K_S,
            GgufType::Q5_1,
            GgufType::Q5_0,
            GgufType::Q4_K_S,
            GgufType::Q4_1,
            GgufType::Q4_0,
            GgufType::Q3_K_S,
            GgufType::Q2_K,
        ] {
            let what = format!("{src:?} -> {ty}");
            let save = |sub: &str, c: &Components| {
                let path = dir.path().join(format!("{sub}-{src:?}-{ty}.gguf"));
                checkpoint_save::save_gguf_to_path(c, &path, ty, &opts).unwrap();
                path
            };
            let (hp, dp) = (save("host", &host), save("dev", &held));
            let file = GgufFile::open(&hp)?;
            seen.extend(file.tensors().iter().filter_map(|t| t.ggml_type()));
            let (h, d) = (std::fs::read(&hp)?, std::fs::read(&dp)?);
            if h != d {
                let dfile = GgufFile::open(&dp)?;
                for (a, b) in file.tensors().iter().zip(dfile.tensors()) {
                    let at = |t: &checkpoint_save::gguf::GgufTensor| {
                        t.offsets.0 as usize..t.offsets.1 as usize
                    };
                    let (x, y) = (&h[at(a)], &d[at(b)]);
                    let first = x.iter().zip(y).position(|(p, q)| p != q);
                    assert!(
                        first.is_none(),
                        "{what}: `{}` ({:?}) differs first at byte {first:?} of the tensor",
                        a.name,
                        a.ggml_type()
                    );
                }
                panic!("{what}: the device's file differs from the host's");
            }
        }
    }
    let quantized: Vec<_> = seen.iter().filter(|t| t.is_quantized()).collect();
    assert_eq!(quantized.len(), 10, "every block type written: {seen:?}");
    Ok(())
}

/// The bodies that run on one device, by name.
const ONE_DEVICE: [(&str, Body); 11] = [
    (
        "gguf_saves_from_the_device_match_the_host",
        gguf_saves_from_the_device_match_the_host,
    ),
    (
        "quantized_saves_from_the_device_match_the_host",
        quantized_saves_from_the_device_match_the_host,
    ),
    (
        "device_merges_count_before_the_rounding",
        device_merges_count_before_the_rounding,
    ),
    (
        "nested_device_tensors_are_written_once",
        nested_device_tensors_are_written_once,
    ),
    (
        "checkpointer_snapshot_copies_finish_before_the_write",
        checkpointer_snapshot_copies_finish_before_the_write,
    ),
    (
        "merges_on_the_device_match_the_host",
        merges_on_the_device_match_the_host,
    ),
    (
        "bench_merge_runs_on_the_device",
        bench_merge_runs_on_the_device,
    ),
    (
        "every_dtype_pair_matches_the_cpu_cast",
        every_dtype_pair_matches_the_cpu_cast,
    ),
    (
        "planted_nan_and_inf_are_counted_exactly",
        planted_nan_and_inf_are_counted_exactly,
    ),
    (
        "architecture_layouts_match_the_cpu_cast",
        architecture_layouts_match_the_cpu_cast,
    ),
    (
        "pinned_copy_ceiling_is_measured_on_cuda_only",
        pinned_copy_ceiling_is_measured_on_cuda_only,
    ),
];

fn cuda(ordinal: usize) -> Result<Device, Failed> {
    Device::new_cuda(ordinal).map_err(|e| Failed::from(format!("no CUDA device {ordinal}: {e}")))
}

fn main() {
    let args = Arguments::from_args();
    let require = std::env::var("CHECKPOINT_SAVE_REQUIRE_GPU").is_ok_and(|v| v == "1");
    let gpus = (0..2).take_while(|&i| Device::new_cuda(i).is_ok()).count();
    if gpus == 0 && !require {
        eprintln!(
            "cuda variants ignored: no CUDA device (build with --features cuda and run on a GPU \
             machine, or set CHECKPOINT_SAVE_REQUIRE_GPU=1 to make their absence a failure)"
        );
    }
    let mut trials = Vec::new();
    for (name, body) in ONE_DEVICE {
        trials.push(Trial::test(format!("{name}::cpu"), move || {
            body(&[Device::Cpu])
        }));
        trials.push(
            Trial::test(format!("{name}::cuda"), move || body(&[cuda(0)?]))
                .with_ignored_flag(gpus == 0 && !require),
        );
    }
    // Needs two devices; not required by CHECKPOINT_SAVE_REQUIRE_GPU (most GPU machines have one).
    trials.push(
        Trial::test("components_on_two_devices_save_into_one_file::cuda", || {
            components_on_two_devices_save_into_one_file(&[cuda(0)?, cuda(1)?])
        })
        .with_ignored_flag(gpus < 2),
    );
    libtest_mimic::run(&args, trials).exit();
}
