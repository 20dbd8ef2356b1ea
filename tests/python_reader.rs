//! An independent reader: the Python `safetensors` package opens what this crate writes.
//!
//! The test writes a JSON sidecar from the library's own view of the checkpoint (layout, dtype
//! choice, metadata, and every value computed here from the components with candle), then runs a
//! Python script that reads the file with `safetensors.safe_open(path, "np")` and compares.
//! Without `safetensors` and `numpy` the test is skipped, except under `CI`, where it fails.

use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use checkpoint_save::layout::Source;
use checkpoint_save::model::dtype::candle_dtype;
use checkpoint_save::synthetic::{self, SyntheticOptions};
use checkpoint_save::{
    inspect, lay_out, save, Arch, ComponentDtypes, Components, Prediction, SaveOptions, TargetDtype,
};
use serde_json::{json, Map, Value};

const READER: &str = r#"
import json, sys
import numpy as np
from safetensors import safe_open

path, sidecar = sys.argv[1], sys.argv[2]
with open(sidecar) as f:
    want = json.load(f)
NP = {"F16": np.float16, "F32": np.float32, "I64": np.int64}
with safe_open(path, "np") as f:
    meta = f.metadata() or {}
    assert meta == want["metadata"], ("metadata", meta, want["metadata"])
    keys = sorted(f.keys())
    missing = set(want["tensors"]) ^ set(keys)
    assert not missing, ("keys differ", sorted(missing)[:10])
    for k in keys:
        t = f.get_tensor(k)
        w = want["tensors"][k]
        assert t.dtype == NP[w["dtype"]], (k, str(t.dtype), w["dtype"])
        assert list(t.shape) == w["shape"], (k, t.shape, w["shape"])
        got = t.astype(np.float64).ravel()
        exp = np.array(w["values"], dtype=np.float64)
        assert np.array_equal(got, exp), (k, got[:4], exp[:4])
print("OK", len(keys))
"#;

/// Whether the Python reader can run here; under `CI` it must.
fn python_ready() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import safetensors, numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but `python3 -c \"import safetensors, numpy\"` fails; .ci/run installs them"
        );
        eprintln!("skipped: python3 with safetensors and numpy is not available");
    }
    ok
}

/// The checkpoint tensor a layout entry describes, computed from the components with candle.
fn expected_tensor(source: &Source, components: &Components) -> Tensor {
    let get = |c, k: &str| components.candle(c, k).expect("component tensor").clone();
    match source {
        Source::Copy { component, key } => get(*component, key),
        Source::Transpose { component, key } => get(*component, key).t().unwrap(),
        Source::FuseQkv { component, keys } => {
            let parts: Vec<Tensor> = keys.iter().map(|k| get(*component, k)).collect();
            Tensor::cat(&parts, 0).unwrap()
        }
        Source::PositionIds { len } => Tensor::arange(0i64, *len as i64, &Device::Cpu)
            .unwrap()
            .reshape((1, *len))
            .unwrap(),
        Source::EmptyMarker => Tensor::zeros(0, DType::F32, &Device::Cpu).unwrap(),
        Source::ScalarF32(v) => Tensor::new(*v, &Device::Cpu).unwrap(),
    }
}

/// Keys, dtypes, shapes and values of the checkpoint as the library sees it, and the metadata
/// its header holds as Rust's safetensors crate reads it.
fn sidecar(components: &Components, opts: &SaveOptions, path: &Path) -> Value {
    let (_, _, layout) = lay_out(components, &opts.layout, opts.prediction).unwrap();
    let mut tensors = Map::new();
    for entry in &layout.entries {
        let choice = entry
            .source
            .component()
            .map_or(TargetDtype::Keep, |c| opts.dtypes.get(c));
        let dtype = choice.resolve(&entry.key, entry.dtype).unwrap();
        let t = expected_tensor(&entry.source, components)
            .to_dtype(candle_dtype(dtype).expect("candle dtype"))
            .unwrap();
        let values: Vec<f64> = t
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(t.dims(), entry.shape.as_slice(), "{}", entry.key);
        tensors.insert(
            entry.key.clone(),
            json!({"dtype": dtype.to_string(), "shape": entry.shape, "values": values}),
        );
    }
    let meta = inspect(path).unwrap().metadata;
    assert!(meta.contains_key("checkpoint_save.tool"), "{meta:?}");
    json!({"metadata": meta, "tensors": tensors})
}

fn check_with_python(dir: &Path, name: &str, synth: SyntheticOptions, opts: SaveOptions) {
    let components = synthetic::build(&synth, &Device::Cpu).unwrap();
    let opts = SaveOptions {
        output_dir: dir.join(name),
        ..opts
    };
    let saved = save(&components, &opts).unwrap();
    let sidecar_path = dir.join(format!("{name}.json"));
    let want = sidecar(&components, &opts, &saved.path);
    std::fs::write(&sidecar_path, serde_json::to_vec(&want).unwrap()).unwrap();
    let script = dir.join("reader.py");
    std::fs::write(&script, READER).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .arg(&saved.path)
        .arg(&sidecar_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("OK"),
        "{name}: python reader failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_safetensors_reads_what_we_write() {
    if !python_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    check_with_python(
        dir.path(),
        "sdxl_f16",
        SyntheticOptions::new(Arch::Sdxl)
            .with_seed(3)
            .with_max_dim(4),
        SaveOptions {
            dtypes: ComponentDtypes::all(TargetDtype::F16),
            ..SaveOptions::default()
        },
    );
    let mut sd2 = SaveOptions {
        prediction: Some(Prediction::V),
        ..SaveOptions::default()
    };
    sd2.metadata.prompt = Some(json!({"1": {"class_type": "CheckpointLoaderSimple"}}));
    check_with_python(
        dir.path(),
        "sd2_v",
        SyntheticOptions::new(Arch::Sd2)
            .with_seed(5)
            .with_max_dim(4),
        sd2,
    );
}
