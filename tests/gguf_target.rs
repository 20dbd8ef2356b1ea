//! GGUF targets against ComfyUI-GGUF's own tools: tiny synthetic denoisers written with
//! `--gguf TYPE` are byte for byte the files `tools/convert.py` (and `fix_5d_tensors.py`) write
//! from the same tensors (`tests/fixtures/gguf/convert.json`, made by
//! `make_convert_fixtures.py`): architecture string, key set, types, shapes, SD1/SDXL's
//! rearranged rows with their `orig_shape`, 5-D tensors in F32, metadata, padding. A GGUF
//! written reads back through every job.

use std::path::Path;

mod common;

use checkpoint_save::gguf::GgufFile;
use common::cli::{assert_refused, ok_path, run};
use serde_json::Value;
use sha2::{Digest, Sha256};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gguf");

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A tiny synthetic checkpoint of `arch` (in `dtype`), as the fixture script makes it.
fn checkpoint(d: &Path, arch: &str, dtype: Option<&str>) -> std::path::PathBuf {
    let mut args = vec![
        "save",
        "--synthetic",
        arch,
        "--tiny",
        "--output-dir",
        "ck",
        "-q",
    ];
    if let Some(dt) = dtype {
        args.extend(["--dtype", dt]);
    }
    ok_path(d, &args)
}

#[test]
fn gguf_targets_are_convert_pys_files_byte_for_byte() {
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/convert.json")).unwrap())
            .unwrap();
    let cases = want.as_object().unwrap();
    assert_eq!(cases.len(), 5);
    for (name, case) in cases {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let arch = case["arch"].as_str().unwrap();
        let ckpt = checkpoint(d, arch, case["dtype"].as_str());
        let ty = case["gguf"].as_str().unwrap();
        let out = ok_path(
            d,
            &[
                "convert",
                ckpt.to_str().unwrap(),
                "--gguf",
                ty,
                "--output-dir",
                "out",
                "-q",
            ],
        );
        assert!(
            out.ends_with("out/diffusion_models/ComfyUI_00001_.gguf"),
            "{}",
            out.display()
        );
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(
            bytes.len() as u64,
            case["bytes"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(sha(&bytes), case["sha256"].as_str().unwrap(), "{name}");
    }
}

#[test]
fn gguf_files_are_the_same_bytes_through_direct_io_and_the_page_cache() {
    // A GGUF's data section starts at its 32-byte padding, not on a page: direct I/O writes a
    // first short unit through the page cache and every later one from a page boundary. Units
    // of 1 MiB over a few MiB of blocks cut Q4_K and Q8_0 blocks at unit edges.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ckpt = ok_path(
        d,
        &[
            "save",
            "--synthetic",
            "flux",
            "--max-dim",
            "256",
            "--dtype",
            "bf16",
            "--output-dir",
            "ck",
            "-q",
        ],
    );
    for ty in ["Q4_K", "Q8_0", "BF16"] {
        let (mut files, mut paths) = (Vec::new(), Vec::new());
        for backend in ["direct", "pwrite"] {
            let out = ok_path(
                d,
                &[
                    "convert",
                    ckpt.to_str().unwrap(),
                    "--gguf",
                    ty,
                    "--backend",
                    backend,
                    "--chunk-mib",
                    "1",
                    "--output-dir",
                    backend,
                    "-q",
                ],
            );
            files.push(std::fs::read(&out).unwrap());
            paths.push(out);
        }
        assert!(files[0].len() > 3 << 20, "{ty}: {} bytes", files[0].len());
        let data_start = GgufFile::open(&paths[1]).unwrap().data_start();
        assert_ne!(data_start % 4096, 0, "{ty}: the case this test is for");
        assert!(
            files[0] == files[1],
            "{ty}: direct and buffered files differ"
        );
    }
}

#[test]
fn a_gguf_written_reads_back_through_the_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ckpt = checkpoint(d, "sdxl", Some("f16"));
    let gguf = ok_path(
        d,
        &[
            "convert",
            ckpt.to_str().unwrap(),
            "--gguf",
            "F16",
            "--output-dir",
            "g",
            "-q",
        ],
    );
    let file = GgufFile::open(&gguf).unwrap();
    assert_eq!(file.architecture(), Some("sdxl"));
    assert!(
        file.tensors().iter().any(|t| t.is_reshaped()),
        "SDXL's convolutions are stored as rows of 256"
    );
    // Back to safetensors: the denoiser of the checkpoint, value for value (f16 in, f16 out).
    let back = ok_path(
        d,
        &["convert", gguf.to_str().unwrap(), "--output-dir", "b", "-q"],
    );
    let (orig, _) = common::st::read(&ckpt);
    let (round, _) = common::st::read(&back);
    let model: Vec<_> = orig
        .iter()
        .filter(|(k, _)| k.starts_with("model.diffusion_model."))
        .collect();
    assert!(!model.is_empty());
    for (k, (_, shape, bytes)) in model {
        let (dtype, s, b) = &round[k];
        assert_eq!(s, shape, "{k}");
        let a = common::st::floats(*dtype, b);
        let want = common::st::floats(safetensors::Dtype::F16, bytes);
        assert_eq!(a, want, "{k}");
    }
}

#[test]
fn gguf_targets_refuse_what_they_cannot_write_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ckpt = checkpoint(d, "flux", None);
    let c = ckpt.to_str().unwrap();
    let r = run(
        d,
        &["convert", c, "--gguf", "Q4_K_X", "--output-dir", "out"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("Q4_K_M"), "{}", r.stderr);
    let r = run(
        d,
        &[
            "convert",
            c,
            "--gguf",
            "F16",
            "--dtype",
            "bf16",
            "--output-dir",
            "out",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(!d.join("out").exists());
    let r = run(
        d,
        &[
            "convert",
            c,
            "--gguf",
            "F16",
            "--arch",
            "generic",
            "--output-dir",
            "out",
        ],
    );
    assert_refused(&r, "generic", &d.join("out"));
}
