//! `merge A B [C…] --method NAME --param k=v` with the real binary: values as the methods'
//! formulas give them (written out here), the text encoders and VAE A's, the recipe recorded;
//! bad methods, parameters and inputs refused with nothing written.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use checkpoint_save::synthetic::{self, SyntheticOptions};
use checkpoint_save::{save_to_path, Arch, ComponentKind, Components, LayoutChoice, SaveOptions};
use common::cli::{assert_refused, run};

/// Tiny f32 SD1.5 checkpoints, one per seed (and the built components).
fn models(dir: &Path, seeds: &[u64], max_dim: Option<usize>) -> Vec<(PathBuf, Components)> {
    seeds
        .iter()
        .map(|&s| {
            let o = SyntheticOptions::new(Arch::Sd15)
                .with_seed(s)
                .with_dtype(DType::F32);
            // Tiny shapes, or every dimension capped at `max_dim`: another size of the model.
            let o = match max_dim {
                Some(d) => o.with_max_dim(d),
                None => o.tiny(),
            };
            let c = synthetic::build(&o, &Device::Cpu).unwrap();
            let opts = SaveOptions {
                layout: LayoutChoice::Arch(Arch::Sd15),
                ..SaveOptions::default()
            };
            let p = dir.join(format!("m{s}-{}.safetensors", max_dim.unwrap_or(0)));
            save_to_path(&c, &p, &opts).unwrap();
            (p, c)
        })
        .collect()
}

fn vals(c: &Components, kind: ComponentKind, key: &str) -> Vec<f64> {
    let v: Vec<f32> = c
        .candle(kind, key)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    v.into_iter().map(f64::from).collect()
}

/// Every tensor of a file as f32 values, and its metadata.
fn read(path: &Path) -> (BTreeMap<String, Vec<f32>>, BTreeMap<String, String>) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .filter(|(_, v)| v.dtype() == safetensors::Dtype::F32)
        .map(|(k, v)| {
            let t = Tensor::from_raw_buffer(v.data(), DType::F32, v.shape(), &Device::Cpu).unwrap();
            (k, t.flatten_all().unwrap().to_vec1().unwrap())
        })
        .collect();
    (
        tensors,
        meta.metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
    )
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!(
            (f64::from(*g) - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "{what}: {g} vs {w}"
        );
    }
}

const KEY: &str = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight";
const TE: &str = "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight";

/// `--clip-method`: the text encoders are merged by the method too (sd-mecha's whole-model
/// merge), with the same formula as the denoiser.
#[test]
fn clip_method_merges_the_text_encoders_with_the_method() {
    let dir = tempfile::tempdir().unwrap();
    let m = models(dir.path(), &[1, 2], None);
    let p = |i: usize| m[i].0.to_str().unwrap().to_string();
    let r = run(
        dir.path(),
        &[
            "merge",
            &p(0),
            &p(1),
            "--method",
            "slerp",
            "--param",
            "alpha=0.3",
            "--clip-method",
            "--output-dir",
            "out",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (file, _) = read(&dir.path().join(r.stdout.trim()));
    let te = "clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight";
    let (a, b) = (
        vals(&m[0].1, ComponentKind::Clip, te),
        vals(&m[1].1, ComponentKind::Clip, te),
    );
    let (na, nb) = (dot(&a, &a).sqrt(), dot(&b, &b).sqrt());
    let theta = (dot(&a, &b) / (na * nb)).acos();
    let scale = 0.7 * na + 0.3 * nb;
    let want: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(x, y)| {
            ((0.7 * theta).sin() * x / na + (0.3 * theta).sin() * y / nb) / theta.sin() * scale
        })
        .collect();
    close(&file[TE], &want, "clip slerp");
    // Without --method it is refused, nothing written.
    let out = dir.path().join("o2");
    let r = run(
        dir.path(),
        &[
            "merge",
            &p(0),
            &p(1),
            "--ratio",
            "0.5",
            "--clip-method",
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert_refused(&r, "give a method", &out);
}

#[test]
fn merge_method_slerp_and_ties_write_the_formulas_values() {
    let dir = tempfile::tempdir().unwrap();
    let m = models(dir.path(), &[1, 2, 3], None);
    let p = |i: usize| m[i].0.to_str().unwrap().to_string();
    let r = run(
        dir.path(),
        &[
            "merge",
            &p(0),
            &p(1),
            "--method",
            "slerp",
            "--param",
            "alpha=0.3",
            "--output-dir",
            "out",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("method slerp (alpha=0.3)"),
        "{}",
        r.stderr
    );
    let (file, meta) = read(&dir.path().join(r.stdout.trim()));
    let (a, b) = (
        vals(&m[0].1, ComponentKind::Model, KEY),
        vals(&m[1].1, ComponentKind::Model, KEY),
    );
    let (na, nb) = (dot(&a, &a).sqrt(), dot(&b, &b).sqrt());
    let theta = (dot(&a, &b) / (na * nb)).acos();
    let scale = 0.7 * na + 0.3 * nb;
    let want: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(x, y)| {
            ((0.7 * theta).sin() * x / na + (0.3 * theta).sin() * y / nb) / theta.sin() * scale
        })
        .collect();
    close(
        &file[&format!("model.diffusion_model.{KEY}")],
        &want,
        "slerp",
    );
    // The text encoders are A's.
    let te: Vec<f64> = vals(
        &m[0].1,
        ComponentKind::Clip,
        "clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
    );
    close(&file[TE], &te, "clip");
    let recipe: serde_json::Value = serde_json::from_str(&meta["checkpoint_save.recipe"]).unwrap();
    let node = recipe["nodes"]
        .as_object()
        .unwrap()
        .values()
        .find(|n| n["class_type"] == "MergeMethod")
        .expect("the method node in the recipe");
    assert_eq!(node["inputs"]["method"], "slerp");

    // TIES over B − A and C − A, k = 0.5, added to A.
    let r = run(
        dir.path(),
        &[
            "merge",
            &p(0),
            &p(1),
            &p(2),
            "--method",
            "add_difference_ties",
            "--param",
            "k=0.5",
            "--output-dir",
            "out",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (file, _) = read(&dir.path().join(r.stdout.trim()));
    let c = vals(&m[2].1, ComponentKind::Model, KEY);
    let n = a.len();
    let deltas: Vec<Vec<f64>> = [&b, &c]
        .iter()
        .map(|x| {
            x.iter()
                .zip(&a)
                .map(|(x, a)| f64::from(*x as f32 - *a as f32))
                .collect()
        })
        .collect();
    let kept: Vec<Vec<f64>> = deltas
        .iter()
        .map(|d| {
            let mut mags: Vec<f64> = d.iter().map(|v| v.abs()).collect();
            mags.sort_by(|x, y| x.partial_cmp(y).unwrap());
            let t = mags[((0.5 * n as f64) as usize).max(1) - 1];
            d.iter()
                .map(|&v| if v.abs() >= t { v } else { 0.0 })
                .collect()
        })
        .collect();
    let sgn = |v: f64| {
        if v > 0.0 {
            1.0
        } else if v < 0.0 {
            -1.0
        } else {
            0.0
        }
    };
    let want: Vec<f64> = (0..n)
        .map(|j| {
            let s = sgn(sgn(kept[0][j]) + sgn(kept[1][j]));
            let agree: Vec<f64> = kept.iter().map(|d| d[j]).filter(|v| sgn(*v) == s).collect();
            let r = agree.iter().sum::<f64>() / agree.len() as f64;
            a[j] + if r.is_finite() { r } else { 0.0 }
        })
        .collect();
    close(
        &file[&format!("model.diffusion_model.{KEY}")],
        &want,
        "add_difference_ties",
    );
}

#[test]
fn bad_methods_parameters_and_inputs_are_refused_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let m = models(dir.path(), &[1, 2], None);
    let other = models(dir.path(), &[3], Some(32));
    let (a, b) = (m[0].0.to_str().unwrap(), m[1].0.to_str().unwrap());
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    let refused = |args: &[&str], needle: &str| {
        let mut all = vec!["merge"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--output-dir", o]);
        assert_refused(&run(dir.path(), &all), needle, &out);
    };
    refused(
        &[a, b, "--method", "lerp"],
        "unknown merge method `lerp`; the known methods are weighted_sum",
    );
    refused(
        &[a, b, "--method", "slerp", "--param", "beta=1"],
        "its parameters are alpha (default 0.5)",
    );
    refused(
        &[a, b, "--method", "ties_sum", "--param", "k=0"],
        "outside (0, 1]",
    );
    refused(
        &[a, b, "--method", "ties_sum", "--param", "k=1.5"],
        "outside (0, 1]",
    );
    refused(
        &[a, b, "--method", "slerp", "--param", "alpha"],
        "NAME=VALUE",
    );
    refused(
        &[a, b, "--method", "della", "--param", "epsilon=0.7"],
        "della: epsilon = 0.7 with density 0.5",
    );
    refused(
        &[a, b, "--method", "dare", "--param", "della_eps=inf"],
        "dare: parameter `della_eps` takes a finite number; `inf` given",
    );
    refused(&[a, "--method", "slerp"], "takes 2 models; 1 given");
    let c = other[0].0.to_str().unwrap();
    refused(&[a, c, "--method", "slerp"], "shape");
}

/// `merge --method della`: the same seed writes the same tensors, another seed others; every
/// merged value is the base or the base plus a rescaled delta (one model: no sign conflict).
#[test]
fn della_is_seeded_and_writes_base_or_rescaled_deltas() {
    let dir = tempfile::tempdir().unwrap();
    let m = models(dir.path(), &[1, 2], None);
    let (a, b) = (m[0].0.to_str().unwrap(), m[1].0.to_str().unwrap());
    let merge = |seed: &str, out: &str| {
        let seed = format!("seed={seed}");
        let args = [
            "merge",
            a,
            b,
            "--method",
            "della",
            "--param",
            "density=0.4",
            "--param",
            "epsilon=0.3",
        ];
        let r = run(
            dir.path(),
            &[&args[..], &["--param", &seed, "--output-dir", out]].concat(),
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        read(&dir.path().join(r.stdout.trim())).0
    };
    let (one, again, other) = (merge("9", "o1"), merge("9", "o2"), merge("10", "o3"));
    assert_eq!(one, again);
    let key = format!("model.diffusion_model.{KEY}");
    assert_ne!(one[&key], other[&key]);
    let (base, model) = (
        vals(&m[0].1, ComponentKind::Model, KEY),
        vals(&m[1].1, ComponentKind::Model, KEY),
    );
    let mut kept = 0;
    for ((g, x), y) in one[&key].iter().zip(&base).zip(&model) {
        let (g, d) = (f64::from(*g), y - x);
        // Kept: x + d/p with p in [0.1, 0.7], so d/p is d times 1/0.7 … 1/0.1.
        if (g - x).abs() > 1e-3 * (1.0 + x.abs()) {
            let ratio = (g - x) / d;
            assert!(
                (1.0 / 0.7 - 0.02..=10.0 + 0.1).contains(&ratio),
                "{g} from {x} and {y}"
            );
            kept += 1;
        }
    }
    assert!(kept > 0 && kept < base.len(), "{kept} of {}", base.len());
}

/// `merge --method dare --param della_eps=…` (sd-mecha's DELLA): the same seed writes the same
/// file; each merged value is the base or the base plus the delta ÷ (1 − p); the kept deltas
/// are the larger magnitudes more often than DARE's (ε > 0) and the smaller ones with ε < 0.
#[test]
fn dare_with_della_eps_is_seeded_and_keeps_by_magnitude() {
    let dir = tempfile::tempdir().unwrap();
    let m = models(dir.path(), &[1, 2], None);
    let (a, b) = (m[0].0.to_str().unwrap(), m[1].0.to_str().unwrap());
    let merge = |eps: &str, out: &str| {
        let eps = format!("della_eps={eps}");
        let args = [
            "merge",
            a,
            b,
            "--method",
            "dare",
            "--param",
            "probability=0.5",
        ];
        let r = run(
            dir.path(),
            &[&args[..], &["--param", &eps, "--output-dir", out]].concat(),
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        read(&dir.path().join(r.stdout.trim())).0
    };
    let (one, again) = (merge("0.9", "o1"), merge("0.9", "o2"));
    assert_eq!(one, again);
    let key = format!("model.diffusion_model.{KEY}");
    let (base, model) = (
        vals(&m[0].1, ComponentKind::Model, KEY),
        vals(&m[1].1, ComponentKind::Model, KEY),
    );
    // The mean magnitude of the deltas kept, against that of all the deltas.
    let kept_mean = |got: &[f32]| {
        let (mut sum, mut count) = (0.0, 0.0);
        for ((g, x), y) in got.iter().zip(&base).zip(&model) {
            let (g, d) = (f64::from(*g), y - x);
            if (g - x).abs() > 1e-3 * (1.0 + x.abs()) {
                let ratio = (g - x) / d;
                assert!((ratio - 2.0).abs() < 0.02, "{g} from {x} and {y}");
                sum += d.abs();
                count += 1.0;
            }
        }
        sum / count
    };
    let all = base
        .iter()
        .zip(&model)
        .map(|(x, y)| (y - x).abs())
        .sum::<f64>()
        / base.len() as f64;
    let (high, low) = (kept_mean(&one[&key]), kept_mean(&merge("-0.9", "o3")[&key]));
    assert!(high > 1.1 * all && low < 0.9 * all, "{high} {low} {all}");
}

/// `merge --method dropout` (sd-mecha's n-supermario) of one model: the same seed writes the
/// same tensors, another seed others; every value is `a` or `a + alpha·d/(1 − p)`, about
/// `1 − p` of them the latter.
#[test]
fn dropout_is_seeded_and_writes_base_or_rescaled_deltas() {
    let dir = tempfile::tempdir().unwrap();
    let m = models(dir.path(), &[1, 2], None);
    let (a, b) = (m[0].0.to_str().unwrap(), m[1].0.to_str().unwrap());
    let merge = |seed: &str, out: &str| {
        let seed = format!("seed={seed}");
        let args = [
            "merge",
            a,
            b,
            "--method",
            "dropout",
            "--param",
            "probability=0.75",
            "--param",
            "alpha=0.8",
        ];
        let r = run(
            dir.path(),
            &[&args[..], &["--param", &seed, "--output-dir", out]].concat(),
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        read(&dir.path().join(r.stdout.trim())).0
    };
    let (one, again, other) = (merge("9", "o1"), merge("9", "o2"), merge("10", "o3"));
    assert_eq!(one, again);
    let key = format!("model.diffusion_model.{KEY}");
    assert_ne!(one[&key], other[&key]);
    let (base, model) = (
        vals(&m[0].1, ComponentKind::Model, KEY),
        vals(&m[1].1, ComponentKind::Model, KEY),
    );
    let mut kept = 0;
    for ((g, x), y) in one[&key].iter().zip(&base).zip(&model) {
        let g = f64::from(*g);
        if g != *x {
            let want = x + 0.8 * (y - x) / 0.25;
            assert!(
                (g - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{g} vs {want}"
            );
            kept += 1;
        }
    }
    let n = base.len() as f64;
    // Binomial(n, 0.25): within 5σ.
    let sigma = (n * 0.25 * 0.75).sqrt();
    assert!(
        (kept as f64 - 0.25 * n).abs() < 5.0 * sigma,
        "{kept} of {n}"
    );
}

/// SLERP of f16 and bf16 files, whose norms and dot product are summed from the bytes read:
/// the same file, tensor for tensor, as SLERP of the same values stored as f32 (summed from
/// the decoded values).
#[test]
fn slerp_of_half_files_equals_slerp_of_their_f32_copies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for dtype in ["f16", "bf16"] {
        let mut half = Vec::new();
        let mut wide = Vec::new();
        for seed in ["1", "2"] {
            let prefix = format!("{dtype}-{seed}");
            let p = common::cli::ok_path(
                d,
                &[
                    "save",
                    "--synthetic",
                    "sd15",
                    "--max-dim",
                    "40",
                    "--seed",
                    seed,
                    "--dtype",
                    dtype,
                    "--prefix",
                    &prefix,
                    "--output-dir",
                    "in",
                ],
            );
            let q = common::cli::ok_path(
                d,
                &[
                    "convert",
                    p.to_str().unwrap(),
                    "--dtype",
                    "f32",
                    "--prefix",
                    &format!("{prefix}-f32"),
                    "--output-dir",
                    "in32",
                ],
            );
            half.push(p);
            wide.push(q);
        }
        let merge = |inputs: &[PathBuf], out: &str| {
            let p = common::cli::ok_path(
                d,
                &[
                    "merge",
                    inputs[0].to_str().unwrap(),
                    inputs[1].to_str().unwrap(),
                    "--method",
                    "slerp",
                    "--param",
                    "alpha=0.35",
                    "--dtype",
                    "f16",
                    "--output-dir",
                    out,
                ],
            );
            let bytes = std::fs::read(p).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let mut t: Vec<(String, Vec<u8>)> = st
                .tensors()
                .into_iter()
                .map(|(k, v)| (k, v.data().to_vec()))
                .collect();
            t.sort();
            t
        };
        let (from_half, from_wide) = (
            merge(&half, &format!("o-{dtype}")),
            merge(&wide, &format!("o32-{dtype}")),
        );
        assert!(from_half.len() > 100, "{}", from_half.len());
        for ((k, a), (k2, b)) in from_half.iter().zip(&from_wide) {
            assert_eq!(k, k2);
            assert!(a == b, "{dtype}: `{k}` differs");
        }
    }
}

/// `--method` and `--weights` merges take the output flags every `merge` takes: `--dry-run`
/// (text and JSON) writes nothing and plans the file the run then writes, `--prediction` writes
/// its marker, `--quantize` the quantized layers, `--gguf` the denoiser as a GGUF file.
#[test]
fn method_and_weights_merges_take_the_output_flags_of_every_merge() {
    let dir = tempfile::tempdir().unwrap();
    let m = models(dir.path(), &[1, 2], None);
    let (a, b) = (m[0].0.to_str().unwrap(), m[1].0.to_str().unwrap());
    for (n, how) in [["--method", "slerp"], ["--weights", "1,3"]]
        .iter()
        .enumerate()
    {
        let out = dir.path().join(format!("out{n}"));
        let o = out.to_str().unwrap();
        let job = |extra: &[&str]| {
            let mut all = vec!["merge", a, b, how[0], how[1], "--output-dir", o];
            all.extend_from_slice(extra);
            run(dir.path(), &all)
        };
        let text = job(&["--dry-run"]);
        assert_eq!(text.code, 0, "{how:?}: {}", text.stderr);
        assert!(text.stdout.starts_with("would write "), "{}", text.stdout);
        let json = job(&["--dry-run", "--json"]);
        assert_eq!(json.code, 0, "{how:?}: {}", json.stderr);
        assert!(!out.exists(), "{how:?}: a dry run writes nothing");
        let plan: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();

        let written = job(&["-q"]);
        assert_eq!(written.code, 0, "{how:?}: {}", written.stderr);
        let path = dir.path().join(written.stdout.trim());
        assert_eq!(path, dir.path().join(plan["path"].as_str().unwrap()));
        let size = std::fs::metadata(&path).unwrap().len();
        assert_eq!(Some(size), plan["bytes_to_write"].as_u64(), "{how:?}");

        let keys = |p: &Path| {
            let bytes = std::fs::read(p).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            st.names()
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<String>>()
        };
        let v = dir
            .path()
            .join(job(&["-q", "--prediction", "v"]).stdout.trim());
        assert!(keys(&v).contains(&"v_pred".to_string()), "{how:?}");
        let q = dir
            .path()
            .join(job(&["-q", "--quantize", "fp8"]).stdout.trim());
        assert!(
            keys(&q).iter().any(|k| k.ends_with(".comfy_quant")),
            "{how:?}: quantized layers"
        );
        let g = job(&["-q", "--gguf", "Q8_0"]);
        assert_eq!(g.code, 0, "{how:?}: {}", g.stderr);
        let g = dir.path().join(g.stdout.trim());
        assert!(
            g.starts_with(out.join("diffusion_models")),
            "{}",
            g.display()
        );
        assert_eq!(&std::fs::read(&g).unwrap()[..4], b"GGUF", "{how:?}");
    }
}

/// `--method` and `--weights` refuse a B lacking keys of A as every `merge` does, and keep A's
/// tensors there with `--allow-missing`; `--requantize fresh` is refused (they requantize with
/// A's scales).
#[test]
fn method_and_weights_merges_refuse_missing_keys_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let m = models(dir.path(), &[1, 2], None);
    let mut lacking = m[1].1.clone();
    let mut model = lacking.take(ComponentKind::Model).unwrap();
    assert!(model.remove(KEY).is_some());
    lacking.set_inputs(ComponentKind::Model, model);
    let b = dir.path().join("lacking.safetensors");
    let opts = SaveOptions {
        layout: LayoutChoice::Arch(Arch::Sd15),
        ..SaveOptions::default()
    };
    save_to_path(&lacking, &b, &opts).unwrap();
    let (a, b) = (m[0].0.to_str().unwrap(), b.to_str().unwrap());
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    for how in [["--method", "slerp"], ["--weights", "1,3"]] {
        let job = |extra: &[&str]| {
            let mut all = vec!["merge", a, b, how[0], how[1], "--output-dir", o];
            all.extend_from_slice(extra);
            run(dir.path(), &all)
        };
        assert_refused(&job(&[]), "--allow-missing", &out);
        assert_refused(&job(&["--dry-run"]), "--allow-missing", &out);
        assert_refused(
            &job(&["--requantize", "fresh"]),
            "--requantize fresh is for --ratio",
            &out,
        );
        let r = job(&["-q", "--allow-missing"]);
        assert_eq!(r.code, 0, "{how:?}: {}", r.stderr);
        let path = dir.path().join(r.stdout.trim());
        let (tensors, _) = read(&path);
        let want = vals(&m[0].1, ComponentKind::Model, KEY);
        let got = &tensors[&format!("model.diffusion_model.{KEY}")];
        close(got, &want, "A's tensor where B lacks it");
        std::fs::remove_dir_all(&out).unwrap();
    }
}
