//! The CUDA fast path against the CPU path: same bytes for every dtype pair, exact NaN/Inf counts,
//! several devices into one file.
//!
//! Compiled in every build; each test prints why it skips and passes when `Device::new_cuda(0)`
//! fails (no `cuda` feature, no driver, no GPU). Run on a GPU machine with the binary built by
//! `scripts/gpu-run.sh`.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use checkpoint_save::synthetic::{self, SyntheticOptions};
use checkpoint_save::Arch;
use checkpoint_save::ComponentDtypes;
use checkpoint_save::EngineOptions;
use checkpoint_save::GenericPrefixes;
use checkpoint_save::TargetDtype;
use checkpoint_save::{save_to_path, LayoutChoice, SaveOptions, Saved};
use checkpoint_save::{ComponentKind, Components};

fn cuda(ordinal: usize) -> Option<Device> {
    match Device::new_cuda(ordinal) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipped: no CUDA device {ordinal} ({e})");
            None
        }
    }
}

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

fn non_finite(v: &[f32]) -> u64 {
    v.iter().filter(|x| !x.is_finite()).count() as u64
}

/// Generic-layout components: the edge values (whole, a strided view, and many small tensors)
/// in `dtype`, on the CPU.
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
    // A transposed view (strided, not contiguous); moving it to a device keeps the layout.
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

fn to_device(c: &Components, device: impl Fn(ComponentKind) -> Device) -> Components {
    let mut out = Components::default();
    for (kind, map) in c.iter() {
        let d = device(kind);
        let moved: BTreeMap<String, Tensor> = map
            .iter()
            .map(|(k, t)| (k.clone(), t.as_candle().unwrap().to_device(&d).unwrap()))
            .collect();
        out.set(kind, moved);
    }
    out
}

fn options(layout: LayoutChoice, dtype: TargetDtype) -> SaveOptions {
    SaveOptions {
        layout,
        dtypes: ComponentDtypes::all(dtype),
        // Small chunks: large tensors are split across batches and the ring wraps many times.
        writer: EngineOptions {
            chunk_size: 64 << 10,
            ..EngineOptions::default()
        },
        ..SaveOptions::default()
    }
}

fn save_in(dir: &Path, sub: &str, c: &Components, opts: &SaveOptions) -> (Saved, Vec<u8>) {
    let folder = dir.join(sub);
    std::fs::create_dir_all(&folder).unwrap();
    let path = folder.join("x.safetensors");
    let saved = save_to_path(c, &path, opts).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (saved, bytes)
}

fn assert_same(cpu: &(Saved, Vec<u8>), gpu: &(Saved, Vec<u8>), what: &str) {
    assert_eq!(cpu.1.len(), gpu.1.len(), "{what}: file sizes differ");
    if let Some(at) = cpu.1.iter().zip(&gpu.1).position(|(a, b)| a != b) {
        panic!("{what}: first differing byte at offset {at}");
    }
    assert_eq!(cpu.0.non_finite, gpu.0.non_finite, "{what}: NaN/Inf counts");
}

#[test]
fn every_dtype_pair_matches_the_cpu_bytes() {
    let Some(gpu) = cuda(0) else { return };
    let dir = tempfile::tempdir().unwrap();
    for src in [DType::F32, DType::F16, DType::BF16, DType::F64] {
        let cpu_c = edge_components(src);
        let gpu_c = to_device(&cpu_c, |_| gpu.clone());
        for dst in TARGETS {
            let opts = options(LayoutChoice::Generic(GenericPrefixes::default()), dst);
            let what = format!("{src:?} -> {dst}");
            let cpu = save_in(dir.path(), &format!("cpu-{src:?}-{dst}"), &cpu_c, &opts);
            let dev = save_in(dir.path(), &format!("gpu-{src:?}-{dst}"), &gpu_c, &opts);
            assert_same(&cpu, &dev, &what);
        }
    }
}

#[test]
fn planted_nan_and_inf_are_counted_exactly() {
    let Some(gpu) = cuda(0) else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut values: Vec<f32> = (0..1_000_000).map(|i| (i as f32 * 0.37).sin()).collect();
    let planted = [3usize, 17, 4096, 65_537, 999_999];
    for (k, &i) in planted.iter().enumerate() {
        values[i] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][k % 3];
    }
    let want = non_finite(&values);
    let t = Tensor::from_vec(values, (1000, 1000), &gpu).unwrap();
    let mut model = BTreeMap::new();
    model.insert("planted".to_string(), t.clone());
    model.insert(
        "clean".to_string(),
        Tensor::ones((64, 64), DType::F32, &gpu).unwrap(),
    );
    let c = Components::new(model);
    for dst in [TargetDtype::Keep, TargetDtype::F16, TargetDtype::F8E4M3] {
        let opts = options(LayoutChoice::Generic(GenericPrefixes::default()), dst);
        let (saved, _) = save_in(dir.path(), &format!("{dst}"), &c, &opts);
        let got: Vec<_> = saved
            .non_finite
            .iter()
            .filter(|(k, _)| k.ends_with("planted"))
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(got, vec![want], "{dst}");
        assert_eq!(
            saved.non_finite.len(),
            1,
            "{dst}: only `planted` has NaN/Inf"
        );
    }
}

#[test]
fn architecture_layouts_match_the_cpu_bytes() {
    let Some(gpu) = cuda(0) else { return };
    let dir = tempfile::tempdir().unwrap();
    // SDXL: OpenCLIP q/k/v fusion (three pieces per tensor) and transposed projections.
    for src in [DType::F32, DType::F16] {
        let cpu_c = synthetic::build(
            &SyntheticOptions::new(Arch::Sdxl)
                .with_max_dim(96)
                .with_dtype(src),
            &Device::Cpu,
        )
        .unwrap();
        let gpu_c = to_device(&cpu_c, |_| gpu.clone());
        for dst in [TargetDtype::Keep, TargetDtype::BF16, TargetDtype::F8E5M2] {
            let opts = options(LayoutChoice::Arch(Arch::Sdxl), dst);
            let cpu = save_in(dir.path(), &format!("cpu-{src:?}-{dst}"), &cpu_c, &opts);
            let dev = save_in(dir.path(), &format!("gpu-{src:?}-{dst}"), &gpu_c, &opts);
            assert_same(&cpu, &dev, &format!("sdxl {src:?} -> {dst}"));
        }
    }
}

#[test]
fn components_on_two_devices_save_into_one_file() {
    let Some(gpu0) = cuda(0) else { return };
    let Some(gpu1) = cuda(1) else { return };
    let dir = tempfile::tempdir().unwrap();
    let cpu_c = synthetic::build(
        &SyntheticOptions::new(Arch::Sdxl)
            .with_max_dim(128)
            .with_dtype(DType::F32),
        &Device::Cpu,
    )
    .unwrap();
    let spread = to_device(&cpu_c, |kind| match kind {
        ComponentKind::Model => gpu0.clone(),
        ComponentKind::Clip => gpu1.clone(),
        _ => Device::Cpu,
    });
    for dst in [TargetDtype::Keep, TargetDtype::F16] {
        let opts = options(LayoutChoice::Arch(Arch::Sdxl), dst);
        let cpu = save_in(dir.path(), &format!("cpu-{dst}"), &cpu_c, &opts);
        let dev = save_in(dir.path(), &format!("spread-{dst}"), &spread, &opts);
        assert_same(&cpu, &dev, &format!("two devices -> {dst}"));
    }
}

#[test]
fn pinned_copy_ceiling_is_positive_or_disabled() {
    let Some(gpu) = cuda(0) else {
        let e = checkpoint_save::pinned_copy_ceiling(&Device::Cpu, 1 << 20);
        assert!(e.is_err());
        return;
    };
    let gbps = checkpoint_save::pinned_copy_ceiling(&gpu, 256 << 20).unwrap();
    eprintln!("pinned device-to-host copy: {gbps:.1} GB/s");
    assert!(gbps > 0.1);
}
