//! GGUF denoisers as the input of every job, as ComfyUI-GGUF's loader reads them: keys (the
//! stable-diffusion.cpp prefix removed), shapes (`comfy.gguf.orig_shape` restored), values
//! dequantized as gguf-py dequantizes them (the fixture `tests/fixtures/gguf/flux.gguf`, whose
//! values gguf-py hashed in `gguf.json`), the architecture from `general.architecture`; and
//! bad files refused with nothing written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod common;

use candle_core::{DType, Device};
use checkpoint_save::gguf::{gguf_header, GgufFile, GgufTensorInfo, MetaArray, MetaValue};
use checkpoint_save::quant::GgmlType;
use checkpoint_save::synthetic::{build, SyntheticOptions};
use checkpoint_save::{Arch, ComponentKind};
use common::cli::{assert_refused, files_under, ok_path, run};
use common::ggml::{decode, encode};
use common::st;
use serde_json::Value;
use sha2::{Digest, Sha256};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gguf");

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// What a test GGUF holds per denoiser key: its logical shape, the values a reader must give,
/// and its ggml type.
type Expected = BTreeMap<String, (Vec<usize>, Vec<f32>, GgmlType)>;

/// Options of a test GGUF.
struct Make<'a> {
    arch: Arch,
    /// `general.architecture` (`None`: no such key, as stable-diffusion.cpp writes).
    arch_string: Option<&'a str>,
    /// Prefix before every name.
    prefix: &'a str,
    /// A quantized key whose first block's scale is NaN.
    poison: Option<&'a str>,
    seed: u64,
}

impl Make<'_> {
    fn flux(seed: u64) -> Self {
        Make {
            arch: Arch::Flux,
            arch_string: Some("flux"),
            prefix: "",
            poison: None,
            seed,
        }
    }
}

/// A tiny synthetic denoiser as a GGUF file, its tensors in every type their rows allow
/// (cycling through the K-quants for rows of 256, the 32-blocks for rows of 32, F16 otherwise,
/// F32 for 1-D); the first tensor whose rows are not 256 long stored reshaped to rows of 256
/// with its `comfy.gguf.orig_shape`, as convert.py stores SD1/SDXL tensors.
fn write_gguf(path: &Path, m: &Make<'_>) -> Expected {
    let components = build(
        &SyntheticOptions::new(m.arch).tiny().with_seed(m.seed),
        &Device::Cpu,
    )
    .unwrap();
    let model = components.get(ComponentKind::Model).unwrap();
    let k_types = [
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q3_K,
        GgmlType::Q2_K,
    ];
    let b_types = [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
    ];
    let (mut nk, mut nb, mut reshaped) = (0, 0, false);
    let mut infos = Vec::new();
    let mut blobs = Vec::new();
    let mut meta = Vec::new();
    if let Some(a) = m.arch_string {
        meta.push((
            "general.architecture".to_string(),
            MetaValue::String(a.to_string()),
        ));
    }
    let mut expected = Expected::new();
    for (key, t) in model {
        let t = t.as_candle().unwrap();
        let shape = t.dims().to_vec();
        let values: Vec<f32> = t
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let last = *shape.last().unwrap();
        let n = values.len();
        let (ty, stored) = if shape.len() == 1 {
            (GgmlType::F32, shape.clone())
        } else if last.is_multiple_of(256) {
            nk += 1;
            (k_types[nk % k_types.len()], shape.clone())
        } else if !reshaped && n.is_multiple_of(256) {
            reshaped = true;
            (GgmlType::Q4_K, vec![n / 256, 256])
        } else if last.is_multiple_of(32) {
            nb += 1;
            (b_types[nb % b_types.len()], shape.clone())
        } else {
            (GgmlType::F16, shape.clone())
        };
        let (blob, got) = match ty {
            GgmlType::F32 => (f32_bytes(&values), values.clone()),
            GgmlType::F16 => {
                let h: Vec<half::f16> = values.iter().map(|v| half::f16::from_f32(*v)).collect();
                let bytes = h.iter().flat_map(|v| v.to_le_bytes()).collect();
                (bytes, h.iter().map(|v| v.to_f32()).collect())
            }
            _ => {
                let mut codes = encode(ty, &stored, &values);
                if m.poison == Some(key.as_str()) {
                    // The first block's f16 scale made NaN: a damaged block.
                    codes[..2].copy_from_slice(&half::f16::NAN.to_le_bytes());
                }
                let got = decode(ty, &stored, &codes);
                (codes, got)
            }
        };
        if stored != shape {
            let dims = shape.iter().map(|&d| d as i32).collect();
            meta.push((
                format!("comfy.gguf.orig_shape.{}{key}", m.prefix),
                MetaValue::Array(MetaArray::I32(dims)),
            ));
        }
        infos.push(GgufTensorInfo {
            name: format!("{}{key}", m.prefix),
            shape: stored,
            ggml_type: ty,
        });
        blobs.push(blob);
        expected.insert(key.clone(), (shape, got, ty));
    }
    assert!(
        reshaped && nk > 0 && nb > 0,
        "the tiny model covers every case"
    );
    let header = gguf_header(&meta, &infos).unwrap();
    let mut bytes = header.bytes.clone();
    let start = bytes.len();
    bytes.resize(start + header.data_len as usize, 0);
    for (blob, (b, _)) in blobs.iter().zip(&header.offsets) {
        let at = start + *b as usize;
        bytes[at..at + blob.len()].copy_from_slice(blob);
    }
    std::fs::write(path, bytes).unwrap();
    expected
}

/// Checks a converted denoiser file against what the GGUF holds: every key under `prefix`, its
/// logical shape, and its values (exactly, in f32; rounded once into `dtype` otherwise).
fn check_output(path: &Path, expected: &Expected, prefix: &str) {
    let (tensors, _) = st::read(path);
    for (key, (shape, values, ty)) in expected {
        let (dtype, got_shape, bytes) = tensors
            .get(&format!("{prefix}{key}"))
            .unwrap_or_else(|| panic!("{key} is written"));
        assert_eq!(got_shape, shape, "{key}");
        let want = match ty {
            GgmlType::F16 => safetensors::Dtype::F16,
            _ => safetensors::Dtype::F32,
        };
        assert_eq!(*dtype, want, "{key}: --dtype keep gives the values exactly");
        let got = st::floats(*dtype, bytes);
        assert_eq!(got.len(), values.len(), "{key}");
        for (i, (a, b)) in got.iter().zip(values).enumerate() {
            assert!(st::same(*a, *b), "{key}[{i}]: {a} != {b}");
        }
    }
    let markers = tensors.keys().filter(|k| !k.starts_with(prefix)).count();
    assert_eq!(tensors.len(), expected.len() + markers);
}

#[test]
fn values_through_the_pipeline_equal_gguf_py_dequantization() {
    // flux.gguf holds a tensor of every type; gguf-py's dequantized values are in gguf.json.
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/gguf.json")).unwrap())
            .unwrap();
    let path = PathBuf::from(format!("{DIR}/flux.gguf"));
    let part = checkpoint_save::open_component(
        ComponentKind::Model,
        std::slice::from_ref(&path),
        Some(Arch::Flux),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("values.safetensors");
    let mut opts = checkpoint_save::SaveOptions::plain();
    opts.dtypes = checkpoint_save::ComponentDtypes::all(checkpoint_save::TargetDtype::F32);
    let mut components = checkpoint_save::Components::default();
    components.set_inputs(ComponentKind::Model, part.tensors);
    checkpoint_save::save_to_path(&components, &out, &opts).unwrap();
    let (tensors, _) = st::read(&out);
    let list = want["flux.gguf"]["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), list.len());
    for t in list {
        let name = t["name"].as_str().unwrap();
        let (dtype, shape, bytes) = &tensors[name];
        assert_eq!(*dtype, safetensors::Dtype::F32, "{name}");
        let want_shape: Vec<usize> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(shape, &want_shape, "{name}: the loader's shape");
        assert_eq!(
            sha(bytes),
            t["values_sha256"].as_str().unwrap(),
            "{name} ({}): gguf-py's values",
            t["type"]
        );
    }
}

#[test]
fn convert_writes_the_denoiser_as_modelsave_does() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gguf = d.join("flux.gguf");
    let expected = write_gguf(&gguf, &Make::flux(1));
    let out = ok_path(
        d,
        &[
            "convert",
            gguf.to_str().unwrap(),
            "--output-dir",
            "out",
            "-q",
        ],
    );
    assert!(
        out.ends_with("out/diffusion_models/ComfyUI_00001_.safetensors"),
        "{}",
        out.display()
    );
    check_output(&out, &expected, "model.diffusion_model.");
    // The file reads back as the same denoiser, and inspect says what it is.
    let r = run(d, &["inspect", gguf.to_str().unwrap()]);
    assert!(r.stdout.contains("architecture: flux"), "{}", r.stdout);
}

#[test]
fn stable_diffusion_cpp_files_without_an_architecture_string_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gguf = d.join("sdcpp.gguf");
    let expected = write_gguf(
        &gguf,
        &Make {
            arch_string: None,
            prefix: "model.diffusion_model.",
            ..Make::flux(2)
        },
    );
    let out = ok_path(
        d,
        &[
            "convert",
            gguf.to_str().unwrap(),
            "--output-dir",
            "out",
            "-q",
        ],
    );
    check_output(&out, &expected, "model.diffusion_model.");
}

#[test]
fn a_gguf_converts_into_other_dtypes_rounded_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gguf = d.join("flux.gguf");
    let expected = write_gguf(&gguf, &Make::flux(3));
    let out = ok_path(
        d,
        &[
            "convert",
            gguf.to_str().unwrap(),
            "--dtype",
            "bf16",
            "--output-dir",
            "out",
            "-q",
        ],
    );
    let (tensors, _) = st::read(&out);
    for (key, (_, values, _)) in &expected {
        let (dtype, _, bytes) = &tensors[&format!("model.diffusion_model.{key}")];
        assert_eq!(*dtype, safetensors::Dtype::BF16);
        assert_eq!(bytes, &st::bf16_bytes(values), "{key}");
    }
}

#[test]
fn dry_run_and_check_finite_with_a_gguf_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gguf = d.join("flux.gguf");
    let expected = write_gguf(
        &gguf,
        &Make {
            poison: Some("double_blocks.0.img_mlp.0.weight"),
            ..Make::flux(4)
        },
    );
    assert!(matches!(
        expected["double_blocks.0.img_mlp.0.weight"].2,
        t if t.is_quantized()
    ));
    let g = gguf.to_str().unwrap();
    let r = run(d, &["convert", g, "--output-dir", "out", "--dry-run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("diffusion_models/ComfyUI_00001_.safetensors")
            && r.stdout
                .contains("model.diffusion_model.double_blocks.0.img_mlp.0.weight"),
        "{}",
        r.stdout
    );
    assert!(!d.join("out").exists(), "a dry run writes nothing");
    let r = run(
        d,
        &["convert", g, "--output-dir", "out", "--check-finite", "-q"],
    );
    assert_refused(&r, "NaN", &d.join("out"));
}

#[test]
fn merges_and_lora_bakes_read_gguf_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b) = (d.join("a.gguf"), d.join("b.gguf"));
    let ea = write_gguf(&a, &Make::flux(5));
    let eb = write_gguf(&b, &Make::flux(6));
    let merged = ok_path(
        d,
        &[
            "merge",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--ratio",
            "0.25",
            "--dtype",
            "f32",
            "--output-dir",
            "m",
            "-q",
        ],
    );
    let (tensors, _) = st::read(&merged);
    for (key, (_, va, _)) in &ea {
        let vb = &eb[key].1;
        let (_, _, bytes) = &tensors[&format!("model.diffusion_model.{key}")];
        let got = st::floats(safetensors::Dtype::F32, bytes);
        for i in 0..got.len() {
            // ModelMergeSimple: a·r + b·(1−r), in f32.
            let want = va[i] * 0.25 + vb[i] * 0.75;
            assert!(
                (got[i] - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{key}[{i}]: {} != {want}",
                got[i]
            );
        }
    }
    // A LoRA baked into the GGUF equals the same LoRA baked into its values stored as F32.
    let values = d.join("values.gguf");
    write_values_gguf(&values, &ea);
    let components = checkpoint_save::open_input(&a, None).unwrap().components;
    let factors = checkpoint_save::synthetic::lora::lora(Arch::Flux, &components, 2, 9).unwrap();
    let lora = d.join("lora.safetensors");
    checkpoint_save::save_tensors(&factors, &lora).unwrap();
    let spec = format!("{}:0.8", lora.display());
    let bake = |input: &Path, out: &str| {
        ok_path(
            d,
            &[
                "merge",
                input.to_str().unwrap(),
                "--lora",
                &spec,
                "--dtype",
                "f32",
                "--output-dir",
                out,
                "-q",
            ],
        )
    };
    let (from_gguf, _) = st::read(&bake(&a, "b1"));
    let (from_values, _) = st::read(&bake(&values, "b2"));
    assert_eq!(from_gguf.len(), from_values.len());
    let mut changed = 0;
    for (k, t) in &from_gguf {
        assert_eq!(Some(t), from_values.get(k), "{k}");
        if let Some(key) = k.strip_prefix("model.diffusion_model.") {
            changed += usize::from(st::floats(t.0, &t.2) != ea[key].1);
        }
    }
    assert!(changed > 0, "the LoRA changed some weights");
}

/// A GGUF holding `expected`'s values as F32 tensors of their logical shapes.
fn write_values_gguf(path: &Path, expected: &Expected) {
    let meta = vec![(
        "general.architecture".to_string(),
        MetaValue::String("flux".into()),
    )];
    let infos: Vec<GgufTensorInfo> = expected
        .iter()
        .map(|(k, (shape, _, _))| GgufTensorInfo {
            name: k.clone(),
            shape: shape.clone(),
            ggml_type: GgmlType::F32,
        })
        .collect();
    let header = gguf_header(&meta, &infos).unwrap();
    let mut bytes = header.bytes.clone();
    let start = bytes.len();
    bytes.resize(start + header.data_len as usize, 0);
    for ((_, (_, v, _)), (b, _)) in expected.iter().zip(&header.offsets) {
        let at = start + *b as usize;
        bytes[at..at + 4 * v.len()].copy_from_slice(&f32_bytes(v));
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn split_reads_a_gguf_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gguf = d.join("flux.gguf");
    let expected = write_gguf(&gguf, &Make::flux(7));
    let r = run(
        d,
        &[
            "split",
            gguf.to_str().unwrap(),
            "--output-dir",
            "parts",
            "-q",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let files = files_under(&d.join("parts"));
    assert_eq!(files.len(), 1, "{files:?}");
    check_output(&files[0], &expected, "");
}

/// A one-tensor GGUF of type number `type_id` (blocks of `block` values in `bytes` bytes).
fn one_tensor_gguf(path: &Path, arch: &str, type_id: u32, block: u64, bytes: u64) {
    let mut h = Vec::new();
    let s = |h: &mut Vec<u8>, s: &str| {
        h.extend_from_slice(&(s.len() as u64).to_le_bytes());
        h.extend_from_slice(s.as_bytes());
    };
    h.extend_from_slice(b"GGUF");
    h.extend_from_slice(&3u32.to_le_bytes());
    h.extend_from_slice(&1u64.to_le_bytes());
    h.extend_from_slice(&1u64.to_le_bytes());
    s(&mut h, "general.architecture");
    h.extend_from_slice(&8u32.to_le_bytes());
    s(&mut h, arch);
    s(&mut h, "img_in.weight");
    h.extend_from_slice(&2u32.to_le_bytes());
    h.extend_from_slice(&block.to_le_bytes());
    h.extend_from_slice(&4u64.to_le_bytes());
    h.extend_from_slice(&type_id.to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes());
    h.resize(h.len().next_multiple_of(32), 0);
    h.resize(h.len() + 4 * bytes as usize, 0);
    std::fs::write(path, h).unwrap();
}

#[test]
fn bad_gguf_inputs_are_refused_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("out");
    // A type this tool does not decode: named, with the tensor.
    let iq = d.join("iq.gguf");
    one_tensor_gguf(&iq, "flux", 16, 256, 66);
    let r = run(d, &["convert", iq.to_str().unwrap(), "--output-dir", "out"]);
    assert_refused(&r, "IQ2_XXS", &out);
    assert!(r.stderr.contains("img_in"), "{}", r.stderr);
    // An architecture string this tool does not know: named, --arch suggested.
    let odd = d.join("odd.gguf");
    one_tensor_gguf(&odd, "mystery", 8, 32, 34);
    let r = run(
        d,
        &["convert", odd.to_str().unwrap(), "--output-dir", "out"],
    );
    assert_refused(&r, "`mystery`", &out);
    assert!(r.stderr.contains("--arch"), "{}", r.stderr);
    // A text encoder's file is not a denoiser.
    let t5 = d.join("t5.gguf");
    one_tensor_gguf(&t5, "t5", 8, 32, 34);
    let r = run(d, &["convert", t5.to_str().unwrap(), "--output-dir", "out"]);
    assert_refused(&r, "text encoder", &out);
    // A family the string names, but tensors of another.
    let sd = d.join("sdxl.gguf");
    write_gguf(
        &sd,
        &Make {
            arch_string: Some("sdxl"),
            ..Make::flux(8)
        },
    );
    let r = run(d, &["convert", sd.to_str().unwrap(), "--output-dir", "out"]);
    assert_refused(&r, "`sdxl`", &out);
    // Truncated: the data runs past the end.
    let good = d.join("good.gguf");
    write_gguf(&good, &Make::flux(9));
    let bytes = std::fs::read(&good).unwrap();
    let cut = d.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    for job in [
        vec!["convert", cut.to_str().unwrap(), "--output-dir", "out"],
        vec![
            "merge",
            good.to_str().unwrap(),
            cut.to_str().unwrap(),
            "--ratio",
            "0.5",
            "--output-dir",
            "out",
        ],
        vec!["split", cut.to_str().unwrap(), "--output-dir", "out"],
    ] {
        let r = run(d, &job);
        assert_refused(&r, "past the end", &out);
    }
    // The file the reader reads, unchanged: gguf-py-written `flux.gguf` opens.
    assert!(GgufFile::open(Path::new(&format!("{DIR}/flux.gguf"))).is_ok());
}

#[test]
fn save_takes_a_gguf_denoiser_with_text_encoders_and_autoencoder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gguf = d.join("flux.gguf");
    let expected = write_gguf(&gguf, &Make::flux(10));
    // Text encoders and autoencoder of the same family, as component files.
    let ckpt = ok_path(
        d,
        &[
            "save",
            "--synthetic",
            "flux",
            "--tiny",
            "--output-dir",
            "s",
            "-q",
        ],
    );
    let r = run(
        d,
        &[
            "split",
            ckpt.to_str().unwrap(),
            "--output-dir",
            "parts",
            "-q",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let part = |n: &str| d.join("parts").join(n).to_str().unwrap().to_string();
    let out = ok_path(
        d,
        &[
            "save",
            "--model",
            gguf.to_str().unwrap(),
            "--clip",
            &part("clip.safetensors"),
            "--vae",
            &part("vae.safetensors"),
            "--output-dir",
            "out",
            "-q",
        ],
    );
    assert!(out.ends_with("out/checkpoints/ComfyUI_00001_.safetensors"));
    check_output(&out, &expected, "model.diffusion_model.");
    // A GGUF is not a text encoder file, and is not loaded as candle tensors.
    let r = run(
        d,
        &[
            "save",
            "--model",
            &part("model.safetensors"),
            "--clip",
            gguf.to_str().unwrap(),
            "--vae",
            &part("vae.safetensors"),
            "--output-dir",
            "out2",
        ],
    );
    assert_refused(&r, "GGUF", &d.join("out2"));
    let err = checkpoint_save::load_checkpoint(&gguf, &Device::Cpu, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("GGUF") && err.contains("open_input"), "{err}");
}

/// A GGUF written again in the types it holds copies their blocks byte for byte: the NaN or
/// infinite scales of damaged blocks are still found (from the scales, wherever the writer cut
/// the tensor), refused with --check-finite and warned about without it.
#[test]
fn damaged_blocks_copied_as_they_are_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (ty, fields) in [("Q4_K", [0usize, 2]), ("Q6_K", [208, 208])] {
        let src = ok_path(
            d,
            &[
                "save",
                "--synthetic",
                "sd15",
                "--tiny",
                "--gguf",
                ty,
                "--output-dir",
                ty,
                "-q",
            ],
        );
        let file = GgufFile::open(&src).unwrap();
        let t = file
            .tensors()
            .iter()
            .find(|t| t.type_name() == ty && t.byte_len() >= 4 * 210)
            .unwrap_or_else(|| panic!("no {ty} tensor of four blocks"))
            .clone();
        let block = GgmlType::from_id(t.type_id).unwrap().block_bytes() as u64;
        let mut bytes = std::fs::read(&src).unwrap();
        // Block 1's first scale NaN, block 3's last one infinite: 2 blocks of 256 values.
        for (b, f, v) in [
            (1, fields[0], half::f16::NAN),
            (3, fields[1], half::f16::INFINITY),
        ] {
            let at = (t.offsets.0 + b * block) as usize + f;
            bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
        let damaged = d.join(format!("damaged-{ty}.gguf"));
        std::fs::write(&damaged, bytes).unwrap();
        let g = damaged.to_str().unwrap();
        let out = d.join(format!("out-{ty}"));
        let o = out.to_str().unwrap();
        let r = run(
            d,
            &[
                "convert",
                g,
                "--gguf",
                ty,
                "--output-dir",
                o,
                "--check-finite",
            ],
        );
        assert_refused(&r, &format!("`{}`, 512 non-finite", t.name), &out);
        let r = run(d, &["convert", g, "--gguf", ty, "--output-dir", o]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            r.stderr
                .contains(&format!("tensor `{}` holds 512 NaN/Inf value(s)", t.name)),
            "{}",
            r.stderr
        );
        // The blocks are the input's, byte for byte.
        let written = GgufFile::open(&d.join(r.stdout.trim())).unwrap();
        let w = written.tensors().iter().find(|w| w.name == t.name).unwrap();
        let (a, b) = (
            std::fs::read(&damaged).unwrap(),
            std::fs::read(written.path()).unwrap(),
        );
        assert_eq!(
            a[t.offsets.0 as usize..t.offsets.1 as usize],
            b[w.offsets.0 as usize..w.offsets.1 as usize]
        );
    }
}
