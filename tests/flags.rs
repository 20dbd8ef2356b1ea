//! Flags a job cannot apply are refused with one line, never accepted and left unused; flags it
//! can apply change the output on every code path (the real binary, tiny synthetic models).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::cli::{assert_refused, files_under, ok_path, run};
use common::st;

/// Tiny sd15 (two seeds) and flux checkpoints, and flux's ModelSave-style denoiser files.
struct Inputs {
    a: PathBuf,
    b: PathBuf,
    flux: PathBuf,
    denoiser: PathBuf,
    denoiser2: PathBuf,
    t5: PathBuf,
}

fn inputs(dir: &Path) -> Inputs {
    let save = |arch: &str, seed: &str, prefix: &str| {
        ok_path(
            dir,
            &[
                "save",
                "--synthetic",
                arch,
                "--tiny",
                "--seed",
                seed,
                "--output-dir",
                "in",
                "--prefix",
                prefix,
                "-q",
            ],
        )
    };
    let (a, b) = (save("sd15", "1", "a"), save("sd15", "2", "b"));
    let (flux, flux2) = (save("flux", "1", "f1"), save("flux", "2", "f2"));
    let nodes = |ck: &Path, out: &str| {
        let r = run(
            dir,
            &[
                "split",
                ck.to_str().unwrap(),
                "--to",
                "nodes",
                "--output-dir",
                out,
                "-q",
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        dir.join(out)
    };
    let n1 = nodes(&flux, "n1");
    let n2 = nodes(&flux2, "n2");
    Inputs {
        a,
        b,
        flux,
        denoiser: n1.join("diffusion_models/ComfyUI_00001_.safetensors"),
        denoiser2: n2.join("diffusion_models/ComfyUI_00001_.safetensors"),
        t5: n1.join("clip/ComfyUI_t5xxl_00001_.safetensors"),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Refused (exit 1 or 2, one line naming `needle`), nothing under `out`.
fn refused(dir: &Path, args: &[&str], needle: &str) {
    let out = dir.join("refused");
    let mut all = args.to_vec();
    all.extend_from_slice(&["--output-dir", s(&out)]);
    let r = run(dir, &all);
    assert!(r.code == 1 || r.code == 2, "{args:?}: {}", r.stderr);
    assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
    assert!(
        r.stderr.contains(needle),
        "{args:?}: `{needle}` in {}",
        r.stderr
    );
    assert!(files_under(&out).is_empty(), "{args:?}: nothing written");
}

#[test]
fn merge_flags_of_another_operation_or_an_absent_part_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let i = inputs(dir.path());
    let d = dir.path();
    let (a, b) = (s(&i.a), s(&i.b));
    let (m, m2) = (s(&i.denoiser), s(&i.denoiser2));
    refused(
        d,
        &["merge", a, b, "--weights", "1,1", "--clip-method"],
        "--clip-method merges",
    );
    for op in [&["--ratio", "0.5"][..], &["--add"], &["--weights", "1,1"]] {
        let mut args = vec!["merge", a, b];
        args.extend_from_slice(op);
        refused(
            d,
            &[&args[..], &["--param", "alpha=1"]].concat(),
            "--param sets",
        );
    }
    for op in [&["--ratio", "0.5"][..], &["--method", "slerp"]] {
        let mut args = vec!["merge", a, b];
        args.extend_from_slice(op);
        let args = [&args[..], &["--clip-weights", "1,1"]].concat();
        refused(d, &args, "--clip-weights goes with --weights");
    }
    // Denoisers alone: no text encoders to merge or cast, no autoencoder to take.
    let cases: [(&[&str], &str); 7] = [
        (&[m2, "--ratio", "0.5", "--clip-ratio", "0.3"], "holds none"),
        (&[m2, "--ratio", "0.5", "--vae", "b"], "--vae b writes B's"),
        (
            &[m2, "--ratio", "0.5", "--clip-dtype", "f16"],
            "--clip-dtype",
        ),
        (&["--vae-dtype", "f16"], "--vae-dtype"),
        (&[m2, "--method", "slerp", "--clip-method"], "holds none"),
        (
            &[m2, "--weights", "1,1", "--clip-weights", "1,1"],
            "holds none",
        ),
        (
            &[m2, "--method", "slerp", "--vae", "b"],
            "--vae b writes B's",
        ),
    ];
    for (rest, needle) in cases {
        // One input: a convert; two: a merge.
        let job = match rest.first() == Some(&m2) {
            true => "merge",
            false => "convert",
        };
        refused(d, &[&[job, m][..], rest].concat(), needle);
    }
    let lora_dir = d.join("lora");
    let r = run(
        d,
        &[
            "extract-lora",
            a,
            b,
            "--rank",
            "4",
            "--output-dir",
            s(&lora_dir),
            "-q",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lora = d.join(r.stdout.trim());
    refused(
        d,
        &["merge", a, "--lora", s(&lora), "--clip-ratio", "0.5"],
        "one input given",
    );
}

#[test]
fn gguf_outputs_refuse_what_a_gguf_file_has_no_place_for() {
    let dir = tempfile::tempdir().unwrap();
    let i = inputs(dir.path());
    let d = dir.path();
    std::fs::write(d.join("p.json"), "{}").unwrap();
    for extra in [
        &["--clip-dtype", "f16"][..],
        &["--vae-dtype", "f16"],
        &["--prediction", "v"],
        &["--prompt", "p.json"],
        &["--workflow", "p.json"],
        &["--disable-metadata"],
    ] {
        for input in [&i.flux, &i.t5] {
            let args = [&["convert", s(input), "--gguf", "Q8_0"][..], extra].concat();
            refused(d, &args, "has no effect on a GGUF file");
        }
    }
    refused(
        d,
        &["convert", s(&i.t5), "--gguf", "Q8_0", "--arch", "generic"],
        "--arch generic",
    );
    refused(
        d,
        &["split", s(&i.a), "--to", "comfyui", "--gguf", "Q8_0"],
        "--to comfyui",
    );
    let out = d.join("split");
    let r = run(
        d,
        &[
            "split",
            s(&i.a),
            "--gguf",
            "Q8_0",
            "--output-dir",
            s(&out),
            "-q",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        out.join("diffusion_models").is_dir(),
        "--gguf alone writes the node files"
    );
}

/// A text encoder converted to GGUF warns of its NaN/Inf values, as every other job does.
#[test]
fn a_text_encoder_gguf_warns_of_non_finite_values() {
    let dir = tempfile::tempdir().unwrap();
    let i = inputs(dir.path());
    let d = dir.path();
    let (mut tensors, meta) = st::read(&i.t5);
    let (key, (dtype, _, bytes)) = tensors
        .iter_mut()
        .find(|(k, (_, shape, _))| k.ends_with(".weight") && shape.len() == 2)
        .unwrap();
    assert_eq!(*dtype, safetensors::Dtype::F16, "{key}");
    bytes[..2].copy_from_slice(&0x7E00u16.to_le_bytes());
    let key = key.clone();
    let nan = d.join("t5_nan.safetensors");
    st::write(&nan, &tensors, &meta);
    let r = run(
        d,
        &["convert", s(&nan), "--gguf", "Q8_0", "--output-dir", "t"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("NaN/Inf") && r.stderr.contains("1 NaN/Inf value"),
        "`{key}` warned of: {}",
        r.stderr
    );
}

/// A recipe's `-o` is the file: a GGUF needs a `.gguf` name and a `.gguf` name needs --gguf;
/// `--output-dir` cannot be given beside it; `--disable-metadata` leaves `prompt` out.
#[test]
fn recipe_outputs_refuse_mismatched_names_and_honour_disable_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let i = inputs(dir.path());
    let d = dir.path();
    let models = d.join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::copy(&i.a, models.join("a.safetensors")).unwrap();
    std::fs::copy(&i.b, models.join("b.safetensors")).unwrap();
    let recipe = d.join("r.mecha");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/mecha/recipes/weighted_sum.mecha"),
        &recipe,
    )
    .unwrap();
    let job = |extra: &[&str]| {
        let mut all = vec!["run", s(&recipe), "--models-dir", s(&models)];
        all.extend_from_slice(extra);
        run(d, &all)
    };
    let out = d.join("o");
    let gguf_named = out.join("x.gguf");
    let st_named = out.join("x.safetensors");
    assert_refused(
        &job(&["-o", s(&st_named), "--gguf", "Q8_0"]),
        "does not end in .gguf",
        &out,
    );
    assert_refused(&job(&["-o", s(&gguf_named)]), "ends in .gguf", &out);
    let r = job(&["-o", s(&st_named), "--output-dir", s(&out)]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(files_under(&out).is_empty());
    let r = job(&["-o", s(&gguf_named), "--gguf", "Q8_0", "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(&std::fs::read(&gguf_named).unwrap()[..4], b"GGUF");

    let r = job(&["-o", s(&st_named), "--disable-metadata", "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (_, meta): (_, BTreeMap<String, String>) = st::read(&st_named);
    assert!(!meta.contains_key("prompt"), "{meta:?}");
    assert!(!meta.contains_key("mecha_recipe"), "{meta:?}");
}

/// `--weights` and `--method` merge denoisers alone (a ModelSave file, a GGUF) as `--ratio`
/// does: the same tensors, into diffusion_models/; quantized with the family's high-precision
/// layers kept, as in its checkpoint.
#[test]
fn graph_merges_take_denoisers_alone_and_quantize_them_as_their_family() {
    let dir = tempfile::tempdir().unwrap();
    let i = inputs(dir.path());
    let d = dir.path();
    let (m, m2) = (s(&i.denoiser), s(&i.denoiser2));
    let job = |args: &[&str]| {
        let out = d.join(format!("o{}", args.join("_").replace(['/', '.'], "")));
        let all = [
            &["merge", m, m2][..],
            args,
            &["--output-dir", s(&out), "-q"],
        ]
        .concat();
        let r = run(d, &all);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        let p = d.join(r.stdout.trim());
        assert!(
            p.starts_with(out.join("diffusion_models")),
            "{}",
            p.display()
        );
        st::read(&p).0
    };
    let ratio = job(&["--ratio", "0.5"]);
    let weights = job(&["--weights", "1,1"]);
    assert_eq!(ratio, weights, "ModelMergeSimple at 0.5 either way");
    let sl = job(&["--method", "slerp"]);
    assert_eq!(
        sl.keys().collect::<Vec<_>>(),
        ratio.keys().collect::<Vec<_>>()
    );

    let full = ok_path(
        d,
        &[
            "convert",
            s(&i.flux),
            "--quantize",
            "fp8",
            "--output-dir",
            "q",
            "-q",
        ],
    );
    let scaled = |t: &BTreeMap<String, st::Raw>, prefix: &str| {
        let mut v: Vec<String> = t
            .keys()
            .filter_map(|k| k.strip_suffix(".weight_scale"))
            .filter_map(|k| k.strip_prefix(prefix))
            .map(str::to_string)
            .collect();
        v.sort();
        v
    };
    let want = scaled(&st::read(&full).0, "model.diffusion_model.");
    assert!(
        !want.iter().any(|k| k.starts_with("vector_in.")),
        "{want:?}"
    );
    for args in [
        &["--ratio", "0.5", "--quantize", "fp8"][..],
        &["--weights", "1,1", "--quantize", "fp8"],
        &["--method", "slerp", "--quantize", "fp8"],
    ] {
        let got = job(args);
        assert_eq!(scaled(&got, "model.diffusion_model."), want, "{args:?}");
    }
    let alone = ok_path(
        d,
        &[
            "convert",
            m,
            "--quantize",
            "fp8",
            "--output-dir",
            "qa",
            "-q",
        ],
    );
    assert_eq!(scaled(&st::read(&alone).0, "model.diffusion_model."), want);
}

#[test]
fn bench_and_extract_refuse_flags_their_job_does_not_use() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bench = |args: &[&str], needle: &str| {
        let all = [
            &["bench"][..],
            args,
            &["--synthetic", "sd15", "--max-dim", "16"],
        ]
        .concat();
        refused(d, &all, needle);
        assert!(!d.join("idir").exists(), "{args:?}: no folder made");
    };
    bench(&["run", "--quantize", "fp8"], "--quantize times");
    bench(
        &["merge", "--method", "slerp", "--quantize", "fp8"],
        "--quantize times",
    );
    bench(&["save", "--chain", "7"], "--chain");
    bench(&["merge", "--chain", "7"], "--chain");
    bench(&["save", "--input-dir", "idir"], "--input-dir");
    let i = inputs(d);
    refused(
        d,
        &[
            "extract-lora",
            s(&i.a),
            s(&i.b),
            "--lora-type",
            "full_diff",
            "--rank",
            "4",
        ],
        "there is no rank",
    );
    let r = run(
        d,
        &[
            "extract-lora",
            s(&i.a),
            s(&i.b),
            "--lora-type",
            "full_diff",
            "--output-dir",
            "x",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("extracted LoRA full_diff"),
        "{}",
        r.stderr
    );
}
