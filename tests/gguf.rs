//! The GGUF container against gguf-py: files written by gguf-py's `GGUFWriter` (as ComfyUI-GGUF's
//! tools write them; `tests/fixtures/gguf/`, made by `make_fixtures.py`) read back with the keys,
//! metadata, shapes (ComfyUI-GGUF's `orig_shape` included), types, offsets and bytes gguf-py's
//! reader gives, their values decoded as gguf-py dequantizes them; the header this crate plans is
//! byte for byte gguf-py's; and a file written with it is read by gguf-py's reader (an optional
//! Python oracle, skipped with the reason when Python with `gguf` and `numpy` is missing, except
//! under `CI`) and by this crate's reader.

use std::path::Path;
use std::process::Command;

mod common;

use checkpoint_save::gguf::{
    gguf_header, GgufFile, GgufTensor, GgufTensorInfo, MetaArray, MetaValue,
};
use checkpoint_save::quant::{GgmlType, Precision, Scales};
use common::ggml::encode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gguf");

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A metadata value as gguf-py's reader shows it: its types (`["ARRAY", "INT32"]`) and value
/// (`None` for arrays of arrays, which gguf-py flattens).
fn as_gguf_py(v: &MetaValue) -> (Vec<String>, Value) {
    let scalar = |v: &MetaValue| -> Value {
        match v {
            MetaValue::U8(x) => json!(x),
            MetaValue::I8(x) => json!(x),
            MetaValue::U16(x) => json!(x),
            MetaValue::I16(x) => json!(x),
            MetaValue::U32(x) => json!(x),
            MetaValue::I32(x) => json!(x),
            MetaValue::F32(x) => json!(f64::from(*x)),
            MetaValue::Bool(x) => json!(x),
            MetaValue::String(x) => json!(x),
            MetaValue::U64(x) => json!(x),
            MetaValue::I64(x) => json!(x),
            MetaValue::F64(x) => json!(x),
            MetaValue::Array(_) => Value::Null,
        }
    };
    let MetaValue::Array(a) = v else {
        return (vec![v.kind().name().into()], scalar(v));
    };
    let mut types = vec!["ARRAY".to_string(), a.kind().name().to_string()];
    let value = match a {
        MetaArray::U8(x) => json!(x),
        MetaArray::I8(x) => json!(x),
        MetaArray::U16(x) => json!(x),
        MetaArray::I16(x) => json!(x),
        MetaArray::U32(x) => json!(x),
        MetaArray::I32(x) => json!(x),
        MetaArray::F32(x) => json!(x.iter().map(|f| f64::from(*f)).collect::<Vec<_>>()),
        MetaArray::Bool(x) => json!(x),
        MetaArray::String(x) => json!(x),
        MetaArray::U64(x) => json!(x),
        MetaArray::I64(x) => json!(x),
        MetaArray::F64(x) => json!(x),
        MetaArray::Array(inner) => {
            if let Some(first) = inner.first() {
                types.push(first.kind().name().into());
            }
            Value::Null
        }
    };
    (types, value)
}

/// The values of a tensor, decoded block by block through its layout, as f32 bytes.
fn decoded(file: &GgufFile, t: &GgufTensor) -> Vec<u8> {
    let layout = t.layout().unwrap();
    let span = layout.read_span(0..t.numel()).unwrap();
    let codes = file.read_tensor(t).unwrap();
    let mut out = vec![0f32; t.numel() as usize];
    layout
        .decode(
            &Scales::none(),
            Precision::F32,
            &span,
            &codes,
            &[],
            &mut out,
        )
        .unwrap();
    out.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Checks `file` against gguf-py's description of it (`gguf.json`'s format).
fn check_against(file: &GgufFile, want: &Value) {
    assert_eq!(file.version(), want["version"].as_u64().unwrap() as u32);
    assert_eq!(file.alignment(), want["alignment"].as_u64().unwrap());
    assert_eq!(file.data_start(), want["data_offset"].as_u64().unwrap());
    let meta = want["metadata"].as_object().unwrap();
    let keys: Vec<&str> = file.metadata().iter().map(|(k, _)| k.as_str()).collect();
    let want_keys: Vec<&str> = meta.keys().map(String::as_str).collect();
    assert_eq!(keys, want_keys, "metadata keys and their order");
    for (key, value) in file.metadata() {
        let (types, v) = as_gguf_py(value);
        assert_eq!(json!(types), meta[key]["types"], "{key}");
        assert_eq!(v, meta[key]["value"], "{key}");
    }
    let tensors = want["tensors"].as_array().unwrap();
    assert_eq!(file.tensors().len(), tensors.len());
    for (t, w) in file.tensors().iter().zip(tensors) {
        let name = &t.name;
        assert_eq!(name, w["name"].as_str().unwrap());
        assert_eq!(t.type_name(), w["type"].as_str().unwrap(), "{name}");
        let dims: Vec<usize> = t.stored_shape.iter().rev().copied().collect();
        assert_eq!(json!(dims), w["dims"], "{name}");
        assert_eq!(json!(t.shape), w["shape"], "{name}");
        assert_eq!(t.offsets.0, w["offset"].as_u64().unwrap(), "{name}");
        assert_eq!(t.byte_len(), w["bytes"].as_u64().unwrap(), "{name}");
        let bytes = file.read_tensor(t).unwrap();
        assert_eq!(sha(&bytes), w["sha256"].as_str().unwrap(), "{name}");
        let values = decoded(file, t);
        assert_eq!(
            sha(&values),
            w["values_sha256"].as_str().unwrap(),
            "{name} values"
        );
    }
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(format!("{DIR}/gguf.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn files_written_by_gguf_py_read_as_gguf_py_reads_them() {
    let manifest = manifest();
    for name in ["flux.gguf", "aligned.gguf"] {
        let file = GgufFile::open(Path::new(&format!("{DIR}/{name}"))).unwrap();
        check_against(&file, &manifest[name]);
        file.check_unchanged().unwrap();
    }
    let file = GgufFile::open(Path::new(&format!("{DIR}/flux.gguf"))).unwrap();
    assert_eq!(file.architecture(), Some("flux"));
    assert_eq!(
        file.get("test.nested"),
        Some(&MetaValue::Array(MetaArray::Array(vec![
            MetaArray::I32(vec![1, 2]),
            MetaArray::I32(vec![3]),
        ])))
    );
    let conv = file.tensor("input_blocks.0.0.weight").unwrap();
    assert!(conv.is_reshaped());
    assert_eq!(conv.shape, vec![64, 4, 3, 3]);
    assert_eq!(conv.stored_shape, vec![9, 256]);
    assert_eq!(conv.ggml_type(), Some(GgmlType::Q5_K));
    let five = file.tensor("patch_embedding.weight").unwrap();
    assert_eq!(five.shape, vec![4, 2, 1, 2, 2]);
}

#[test]
fn the_planned_header_is_gguf_pys_byte_for_byte() {
    for name in ["flux.gguf", "aligned.gguf"] {
        let path = format!("{DIR}/{name}");
        let file = GgufFile::open(Path::new(&path)).unwrap();
        let tensors: Vec<GgufTensorInfo> = file
            .tensors()
            .iter()
            .map(|t| GgufTensorInfo {
                name: t.name.clone(),
                shape: t.stored_shape.clone(),
                ggml_type: t.ggml_type().unwrap(),
            })
            .collect();
        let header = gguf_header(file.metadata(), &tensors).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(header.alignment, file.alignment());
        assert_eq!(header.bytes.len() as u64, file.data_start(), "{name}");
        assert!(
            header.bytes == bytes[..header.bytes.len()],
            "{name}: header bytes differ"
        );
        assert_eq!(
            header.bytes.len() as u64 + header.data_len,
            bytes.len() as u64,
            "{name}: gguf-py pads the last tensor too"
        );
        for (t, (begin, end)) in file.tensors().iter().zip(&header.offsets) {
            let start = file.data_start();
            assert_eq!(t.offsets, (start + begin, start + end), "{}", t.name);
        }
    }
}

/// A GGUF file written with this crate's header and codecs: header, then each tensor's blocks
/// at its offset, zero padding between and after.
fn write_file(path: &Path) -> (Vec<(String, MetaValue)>, Vec<GgufTensorInfo>) {
    let s = |x: &str| x.to_string();
    let metadata = vec![
        (s("general.architecture"), MetaValue::String(s("flux"))),
        (s("general.alignment"), MetaValue::U32(64)),
        (s("general.quantization_version"), MetaValue::U32(2)),
        (s("general.file_type"), MetaValue::U32(15)),
        (s("t.i8"), MetaValue::I8(-5)),
        (s("t.f64"), MetaValue::F64(-2.5e-300)),
        (s("t.bool"), MetaValue::Bool(false)),
        (
            s("t.u64s"),
            MetaValue::Array(MetaArray::U64(vec![0, u64::MAX])),
        ),
        (
            s("t.strings"),
            MetaValue::Array(MetaArray::String(vec![s("x"), s("日本")])),
        ),
        (
            s("comfy.gguf.orig_shape.conv.weight"),
            MetaValue::Array(MetaArray::I32(vec![32, 4, 2, 4])),
        ),
    ];
    let info = |name: &str, shape: &[usize], t| GgufTensorInfo {
        name: s(name),
        shape: shape.to_vec(),
        ggml_type: t,
    };
    let tensors = vec![
        info("img_in.weight", &[8, 256], GgmlType::Q4_K),
        info("img_in.bias", &[8], GgmlType::F32),
        info("conv.weight", &[4, 256], GgmlType::Q8_0),
        info("txt_in.weight", &[2, 512], GgmlType::Q6_K),
        info("norm.scale", &[64], GgmlType::BF16),
        info("proj.weight", &[3, 64], GgmlType::Q5_1),
    ];
    let header = gguf_header(&metadata, &tensors).unwrap();
    let mut bytes = header.bytes.clone();
    bytes.resize(header.bytes.len() + header.data_len as usize, 0);
    for (i, (t, (begin, _))) in tensors.iter().zip(&header.offsets).enumerate() {
        let n: usize = t.shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|j| ((j * 7919 + i * 104729) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let codes = encode(t.ggml_type, &t.shape, &values);
        let at = header.bytes.len() + *begin as usize;
        bytes[at..at + codes.len()].copy_from_slice(&codes);
    }
    std::fs::write(path, bytes).unwrap();
    (metadata, tensors)
}

/// What gguf-py's reader must see in a file this crate wrote (`gguf.json`'s format).
fn describe(file: &GgufFile) -> Value {
    let metadata: serde_json::Map<String, Value> = file
        .metadata()
        .iter()
        .map(|(k, v)| {
            let (types, value) = as_gguf_py(v);
            (k.clone(), json!({"types": types, "value": value}))
        })
        .collect();
    let tensors: Vec<Value> = file
        .tensors()
        .iter()
        .map(|t| {
            let dims: Vec<usize> = t.stored_shape.iter().rev().copied().collect();
            json!({
                "name": t.name, "type": t.type_name(), "dims": dims, "shape": t.shape,
                "offset": t.offsets.0, "bytes": t.byte_len(),
                "sha256": sha(&file.read_tensor(t).unwrap()),
                "values_sha256": sha(&decoded(file, t)),
            })
        })
        .collect();
    json!({
        "version": file.version(), "alignment": file.alignment(),
        "data_offset": file.data_start(), "metadata": metadata, "tensors": tensors,
    })
}

#[test]
fn a_file_written_with_the_planned_header_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.gguf");
    let (metadata, tensors) = write_file(&path);
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.metadata(), metadata.as_slice());
    for (t, w) in file.tensors().iter().zip(&tensors) {
        assert_eq!((&t.name, &t.stored_shape), (&w.name, &w.shape));
        assert_eq!(t.ggml_type(), Some(w.ggml_type));
    }
    assert_eq!(file.tensor("conv.weight").unwrap().shape, vec![32, 4, 2, 4]);
}

const GGUF_PY_READER: &str = r#"
import hashlib, json, sys
import numpy as np
import gguf

path, sidecar = sys.argv[1], sys.argv[2]
with open(sidecar) as f:
    want = json.load(f)
r = gguf.GGUFReader(path)
sha = lambda a: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()

def value(field):
    V = gguf.GGUFValueType
    if field.types[0] == V.STRING:
        return str(bytes(field.parts[field.data[0]]), "utf-8")
    if field.types[0] != V.ARRAY:
        return field.parts[field.data[0]].tolist()[0]
    if field.types[1] == V.STRING:
        return [str(bytes(field.parts[i]), "utf-8") for i in field.data]
    if field.types[1] == V.ARRAY:
        return None
    return [field.parts[i].tolist()[0] for i in field.data]

assert int(r.fields["GGUF.version"].parts[0][0]) == want["version"]
assert r.alignment == want["alignment"], (r.alignment, want["alignment"])
assert r.data_offset == want["data_offset"], (r.data_offset, want["data_offset"])
keys = [k for k in r.fields if not k.startswith("GGUF.")]
assert keys == list(want["metadata"]), (keys, list(want["metadata"]))
for k in keys:
    w = want["metadata"][k]
    types = [t.name for t in r.fields[k].types]
    assert types == w["types"], (k, types, w["types"])
    assert value(r.fields[k]) == w["value"], (k, value(r.fields[k]), w["value"])
assert [t.name for t in r.tensors] == [t["name"] for t in want["tensors"]]
for t, w in zip(r.tensors, want["tensors"]):
    assert t.tensor_type.name == w["type"], (t.name, t.tensor_type.name)
    assert [int(d) for d in t.shape] == w["dims"], (t.name, t.shape)
    assert t.data_offset == w["offset"], (t.name, t.data_offset)
    assert t.n_bytes == w["bytes"], (t.name, t.n_bytes)
    assert sha(r.data[t.data_offset:t.data_offset + t.n_bytes]) == w["sha256"], t.name
    values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    assert sha(values) == w["values_sha256"], (t.name, "values")
print("OK", len(r.tensors))
"#;

/// Whether gguf-py can run here; under `CI` it must.
fn gguf_py_ready() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import gguf, numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but `python3 -c \"import gguf, numpy\"` fails; .ci/run installs them"
        );
        eprintln!("skipped: python3 with the gguf package (gguf-py) and numpy is not available");
    }
    ok
}

#[test]
fn gguf_py_reads_a_file_written_with_the_planned_header() {
    if !gguf_py_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.gguf");
    write_file(&path);
    let file = GgufFile::open(&path).unwrap();
    let sidecar = dir.path().join("want.json");
    std::fs::write(&sidecar, describe(&file).to_string()).unwrap();
    let out = Command::new("python3")
        .arg("-c")
        .arg(GGUF_PY_READER)
        .arg(&path)
        .arg(&sidecar)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gguf-py disagrees:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn inspect_shows_a_gguf_files_tensors_per_type() {
    let i = checkpoint_save::inspect(Path::new(&format!("{DIR}/flux.gguf"))).unwrap();
    assert_eq!(i.format, checkpoint_save::FileFormat::Gguf);
    assert_eq!(i.tensors, 14);
    assert_eq!(i.parts.len(), 1);
    let part = &i.parts[0];
    assert_eq!(part.name, "model");
    assert_eq!(part.dtypes["Q4_K"], 1);
    assert_eq!(part.dtypes["F32"], 2);
    assert_eq!(part.dtypes["Q5_K"], 1);
    assert_eq!(i.metadata["general.architecture"], "flux");
    assert_eq!(
        i.metadata["comfy.gguf.orig_shape.input_blocks.0.0.weight"],
        "[INT32 × 4] [64, 4, 3, 3]"
    );
    let text = i.to_string();
    assert!(text.contains("GGUF") && text.contains("Q8_0×1"), "{text}");
}

#[test]
fn a_gguf_whose_tensors_are_not_its_stated_family_is_refused_by_name() {
    // flux.gguf says `flux` but holds one tensor of each type under assorted names.
    let err = checkpoint_save::open_input(Path::new(&format!("{DIR}/flux.gguf")), None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("`flux`") && err.contains("--arch"), "{err}");
}

#[test]
fn the_binary_inspects_a_gguf_file_and_refuses_to_convert_one_of_no_family() {
    let dir = tempfile::tempdir().unwrap();
    let path = format!("{DIR}/flux.gguf");
    let r = common::cli::run(dir.path(), &["inspect", &path]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("format:       GGUF") && r.stdout.contains("Q4_K×1"),
        "{}",
        r.stdout
    );
    let r = common::cli::run(dir.path(), &["inspect", "--json", &path]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["format"], "gguf");
    assert_eq!(v["parts"][0]["dtypes"]["Q8_0"], 1);
    let r = common::cli::run(dir.path(), &["convert", &path, "--output-dir", "out"]);
    common::cli::assert_refused(&r, "`flux` denoiser", &dir.path().join("out"));
}

#[test]
fn the_binary_names_a_truncated_gguf_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(format!("{DIR}/flux.gguf")).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let r = common::cli::run(dir.path(), &["inspect", cut.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("GGUF") && r.stderr.contains("past the end"),
        "{}",
        r.stderr
    );
}

/// A GGUF holding a tiny synthetic denoiser of `arch` (F32, zero data) under its ComfyUI names,
/// each prefixed with `prefix` (stable-diffusion.cpp writes `model.diffusion_model.`).
fn synthetic_gguf(arch: checkpoint_save::Arch, prefix: &str, path: &Path) {
    use checkpoint_save::synthetic::{build, SyntheticOptions};
    let components = build(
        &SyntheticOptions::new(arch).tiny(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let shapes = components.shapes();
    let model = shapes.get(checkpoint_save::ComponentKind::Model).unwrap();
    let tensors: Vec<GgufTensorInfo> = model
        .iter()
        .map(|(name, info)| GgufTensorInfo {
            name: format!("{prefix}{name}"),
            shape: info.shape.clone(),
            ggml_type: GgmlType::F32,
        })
        .collect();
    let meta = vec![(
        "general.architecture".to_string(),
        MetaValue::String(arch.name().to_string()),
    )];
    let header = gguf_header(&meta, &tensors).unwrap();
    let mut bytes = header.bytes;
    bytes.resize(bytes.len() + header.data_len as usize, 0);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn inspect_detects_the_architecture_of_a_gguf_denoiser() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, prefix) in [
        (checkpoint_save::Arch::Flux, ""),
        (checkpoint_save::Arch::Sdxl, "model.diffusion_model."),
    ] {
        let path = dir.path().join("m.gguf");
        synthetic_gguf(arch, prefix, &path);
        let i = checkpoint_save::inspect(&path).unwrap();
        assert_eq!(i.arch, Some(arch), "{prefix}");
        assert_eq!(i.parts[0].name, "model");
    }
}
