//! sd-mecha recipes (`tests/fixtures/mecha`, written by sd-mecha's own serializer with
//! `make_fixtures.py`) run with the real binary: the outputs of every deterministic method equal
//! sd-mecha 1.1.8's within 1 f16 ulp on the denoiser and text encoders (the VAE is the first
//! model's, and says so; the whole-tensor methods' oracles hold every 8th key); a method this
//! build does not run is refused naming it; the dry run writes nothing; the output is never
//! replaced.

mod common;

use std::path::{Path, PathBuf};

use common::cli::{assert_refused, files_under, run};
use common::st::{floats, read};
use safetensors::Dtype;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mecha")
}

fn recipe(name: &str) -> String {
    fixtures()
        .join(format!("recipes/{name}.mecha"))
        .display()
        .to_string()
}

fn models() -> String {
    fixtures().join("models").display().to_string()
}

/// An f16 value's position on the line of f16 values, so that adjacent values differ by 1.
fn ordered(bits: u16) -> i32 {
    let v = i32::from(bits & 0x7fff);
    if bits & 0x8000 != 0 {
        -v
    } else {
        v
    }
}

fn f16_bits(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// Runs `name`'s recipe and compares every key with sd-mecha's output; returns the run's
/// standard error.
fn check_against_sd_mecha(name: &str) -> String {
    check_against_sd_mecha_where(name, &|_| true)
}

/// [`check_against_sd_mecha`] comparing the keys whose shape `compared` accepts (the others
/// are the same dtype and shape), most of them.
fn check_against_sd_mecha_where(name: &str, compared: &dyn Fn(&[usize]) -> bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged.safetensors");
    let r = run(
        dir.path(),
        &[
            "run",
            &recipe(name),
            "--models-dir",
            &models(),
            "--output",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), out.display().to_string());
    assert!(
        r.stderr
            .contains("the autoencoder (VAE) is `a.safetensors`'s"),
        "{}",
        r.stderr
    );
    let (ours, meta) = read(&out);
    let (oracle, _) = read(&fixtures().join(format!("oracles/{name}.safetensors")));
    let (a, _) = read(&fixtures().join("models/a.safetensors"));
    let text = std::fs::read_to_string(recipe(name)).unwrap();
    assert_eq!(
        meta.get("mecha_recipe"),
        Some(&text),
        "the recipe as metadata"
    );
    if oracle.len() == ours.len() {
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            oracle.keys().collect::<Vec<_>>(),
            "the same keys as sd-mecha"
        );
    } else {
        // A sample: every 8th of sd-mecha's keys, sorted.
        assert_eq!(
            oracle.len(),
            ours.len().div_ceil(8),
            "{name}: the oracle's sample"
        );
        let sample: Vec<&String> = ours.keys().step_by(8).collect();
        assert_eq!(oracle.keys().collect::<Vec<_>>(), sample, "{name}");
    }
    let mut merged = 0;
    for (key, (dtype, shape, bytes)) in &oracle {
        let (our_dtype, our_shape, our_bytes) = &ours[key.as_str()];
        assert_eq!((our_dtype, our_shape), (dtype, shape), "{key}");
        assert_eq!(*dtype, Dtype::F16, "{key}: sd-mecha's output dtype");
        if !compared(shape) {
            continue;
        }
        if key.starts_with("first_stage_model.") {
            assert_eq!(our_bytes, &a[key.as_str()].2, "{key}: the VAE is a's");
            continue;
        }
        for (i, (x, y)) in f16_bits(our_bytes)
            .into_iter()
            .zip(f16_bits(bytes))
            .enumerate()
        {
            let ulps = (ordered(x) - ordered(y)).abs();
            assert!(
                ulps <= 1,
                "{key}[{i}]: ours {} vs sd-mecha {} ({ulps} ulp)",
                floats(Dtype::F16, &x.to_le_bytes())[0],
                floats(Dtype::F16, &y.to_le_bytes())[0]
            );
        }
        if bytes != &a[key.as_str()].2 {
            merged += 1;
        }
    }
    // Every tensor but the VAE's (a fifth of the keys) and the integer ones.
    assert!(
        merged * 10 > oracle.len() * 7,
        "{name}: the merge changed {merged} of {} tensors",
        oracle.len()
    );
    r.stderr
}

#[test]
fn weighted_sum_equals_sd_mecha() {
    check_against_sd_mecha("weighted_sum");
}

#[test]
fn n_average_equals_sd_mecha() {
    check_against_sd_mecha("n_average");
}

#[test]
fn add_difference_equals_sd_mecha() {
    check_against_sd_mecha("add_difference");
}

#[test]
fn add_difference_of_a_scaled_difference_equals_sd_mecha() {
    check_against_sd_mecha("add_difference_scaled");
}

#[test]
fn slerp_equals_sd_mecha() {
    check_against_sd_mecha("slerp");
}

#[test]
fn add_perpendicular_equals_sd_mecha() {
    check_against_sd_mecha("add_perpendicular");
}

#[test]
fn train_difference_equals_sd_mecha() {
    check_against_sd_mecha("train_difference");
}

#[test]
fn ties_sum_with_vote_by_value_equals_sd_mecha() {
    check_against_sd_mecha("ties_sum");
}

#[test]
fn add_difference_ties_equals_sd_mecha() {
    check_against_sd_mecha("add_difference_ties");
}

#[test]
fn model_stock_equals_sd_mecha() {
    check_against_sd_mecha("model_stock");
}

/// sd-mecha's Weiszfeld iterations run in f32 and stop when two objectives in a row round to
/// the same f32 (with its `ftol` of 1e-20), at an iteration that depends on that rounding; the
/// median still moves by up to 1e-3 then. So the check is the method's own: our median's sum of
/// distances to the three models is no larger than sd-mecha's (both as written, in f16), and
/// the two are within 0.2 % of each other.
#[test]
fn geometric_median_is_at_least_as_close_as_sd_mecha() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged.safetensors");
    let args = [
        "run",
        &recipe("geometric_median"),
        "--models-dir",
        &models(),
    ];
    let r = run(
        dir.path(),
        &[&args[..], &["-o", out.to_str().unwrap()]].concat(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (ours, _) = read(&out);
    let (oracle, _) = read(&fixtures().join("oracles/geometric_median.safetensors"));
    let inputs: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| read(&fixtures().join(format!("models/{n}.safetensors"))).0)
        .collect();
    let values = |raw: &(Dtype, Vec<usize>, Vec<u8>)| -> Vec<f64> {
        floats(raw.0, &raw.2).into_iter().map(f64::from).collect()
    };
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let mut checked = 0;
    for (key, raw) in &oracle {
        if key.starts_with("first_stage_model.") || raw.0 != Dtype::F16 {
            continue;
        }
        let (s, m) = (values(raw), values(&ours[key.as_str()]));
        let xs: Vec<Vec<f64>> = inputs.iter().map(|i| values(&i[key.as_str()])).collect();
        let objective = |p: &[f64]| -> f64 {
            let d = |x: &Vec<f64>| norm(&x.iter().zip(p).map(|(a, b)| a - b).collect::<Vec<_>>());
            xs.iter().map(d).sum()
        };
        let diff: Vec<f64> = s.iter().zip(&m).map(|(a, b)| a - b).collect();
        assert!(
            norm(&diff) <= 2e-3 * norm(&s),
            "{key}: {m:?} vs sd-mecha {s:?}"
        );
        assert!(
            objective(&m) <= objective(&s) * (1.0 + 1e-6),
            "{key}: sum of distances {} vs sd-mecha's {}",
            objective(&m),
            objective(&s)
        );
        checked += 1;
    }
    assert!(checked > 100, "{checked}");
}

/// sd-mecha 1.1.8's `ties_sum_extended` applies model stock's t when `apply_stock` is false
/// (its default), and the run does the same, saying so.
#[test]
fn ties_sum_extended_equals_sd_mecha_with_its_inverted_apply_stock() {
    let stderr = check_against_sd_mecha("ties_sum_extended");
    assert!(
        stderr.contains("line 22: `ties_sum_extended` applies model stock's t"),
        "{stderr}"
    );
    let stderr = check_against_sd_mecha("ties_sum_extended_apply_stock");
    assert!(
        stderr.contains("does not apply model stock's t, though apply_stock is true"),
        "{stderr}"
    );
}

/// DARE that drops nothing (probability 0) is deterministic in sd-mecha too: its TIES, model
/// stock (apply_stock false) and rescale by 1 − 0.
#[test]
fn add_ties_with_dare_dropping_nothing_equals_sd_mecha() {
    check_against_sd_mecha("add_ties_with_dare_p0");
}

/// sd-mecha's DELLA (`della_eps` of `add_ties_with_dare`) with keep probabilities all clamped
/// to 0 or 1: the half of each delta's magnitudes kept is set by the ordinal ranks over the
/// whole tensor (ties by position), then TIES with k (and model stock's t, as sd-mecha runs
/// apply_stock=false). A tensor of an odd number of elements keeps its middle rank with
/// probability 0.5 (a draw of torch's generator there, of ours here): those are not compared.
#[test]
fn add_ties_with_della_clamped_to_halves_equals_sd_mecha() {
    let even = |shape: &[usize]| shape.iter().product::<usize>() % 2 == 0;
    check_against_sd_mecha_where("add_ties_with_della_top_half", &even);
    check_against_sd_mecha_where("add_ties_with_della_low_half", &even);
}

/// A `della_eps` that is not a finite number (1e400 overflows to infinity) is refused at the
/// first line that takes it as a number (its `convert_singleton`), nothing written.
#[test]
fn a_della_eps_that_is_not_finite_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(recipe("add_ties_with_della_top_half")).unwrap();
    let bad = text.replace("dict key=1000000.0", "dict key=1e400");
    assert_ne!(bad, text);
    std::fs::write(dir.path().join("r.mecha"), bad).unwrap();
    let out = dir.path().join("out");
    let r = run(
        dir.path(),
        &[
            "run",
            "r.mecha",
            "--models-dir",
            &models(),
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert_refused(
        &r,
        "line 12: `convert_singleton`: a = inf is not a finite number",
        &out,
    );
}

/// `apply_median`: the geometric median of the filtered deltas. sd-mecha's f32 Weiszfeld stops
/// at an iteration set by f32 rounding (see `geometric_median_is_at_least_as_close_as_sd_mecha`),
/// so the merged deltas are compared by norm, per key.
#[test]
fn ties_sum_extended_with_apply_median_is_close_to_sd_mecha() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged.safetensors");
    let args = [
        "run",
        &recipe("ties_sum_extended_median"),
        "--models-dir",
        &models(),
    ];
    let r = run(
        dir.path(),
        &[&args[..], &["-o", out.to_str().unwrap()]].concat(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("model stock"), "{}", r.stderr);
    let (ours, _) = read(&out);
    let (oracle, _) = read(&fixtures().join("oracles/ties_sum_extended_median.safetensors"));
    let (a, _) = read(&fixtures().join("models/a.safetensors"));
    let values = |raw: &(Dtype, Vec<usize>, Vec<u8>)| -> Vec<f64> {
        floats(raw.0, &raw.2).into_iter().map(f64::from).collect()
    };
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let (mut checked, mut worst) = (0, 0f64);
    for (key, raw) in &oracle {
        if key.starts_with("first_stage_model.") || raw.0 != Dtype::F16 {
            continue;
        }
        let base = values(&a[key.as_str()]);
        let (s, m) = (values(raw), values(&ours[key.as_str()]));
        let sd: Vec<f64> = s.iter().zip(&base).map(|(x, b)| x - b).collect();
        let diff: Vec<f64> = s.iter().zip(&m).map(|(x, y)| x - y).collect();
        // The deltas agree to 0.2 % of their norm, plus half an f16 ulp of the values per element.
        let ulp: f64 = base
            .iter()
            .map(|b| (b.abs() * 4.9e-4).powi(2))
            .sum::<f64>()
            .sqrt();
        let rel = norm(&diff) / (norm(&sd) + ulp);
        worst = worst.max(rel);
        assert!(norm(&diff) <= 2e-3 * norm(&sd) + ulp, "{key}: {rel}");
        checked += 1;
    }
    assert!(checked > 100, "{checked}");
    eprintln!("worst relative difference {worst}");
}

/// sd-mecha's `dropout` (n-supermario) dropping nothing: the mean of the deltas, with alpha.
#[test]
fn dropout_dropping_nothing_equals_sd_mecha() {
    check_against_sd_mecha("dropout_p0");
}

#[test]
fn clamp_equals_sd_mecha() {
    check_against_sd_mecha("clamp");
}

#[test]
fn add_difference_clamped_to_a_and_b_equals_sd_mecha() {
    check_against_sd_mecha("add_difference_clamped");
}

/// A method this build does not run is refused at its merge line, naming it and the ones it
/// runs, with nothing written.
#[test]
fn methods_not_translated_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let text = "version 0.1.0\nmodel \"a.safetensors\"\nmodel \"b.safetensors\"\n\
                merge \"crossover\" &0 &1\n";
    std::fs::write(dir.path().join("r.mecha"), text).unwrap();
    let out = dir.path().join("out");
    let r = run(
        dir.path(),
        &[
            "run",
            "r.mecha",
            "--models-dir",
            &models(),
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert_refused(
        &r,
        "line 4: merge method `crossover` is not run by this build; it runs: weighted_sum",
        &out,
    );
    assert!(r.stderr.contains("ties_sum_with_dropout"), "{}", r.stderr);
}

#[test]
fn dry_run_plans_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        dir.path(),
        &[
            "run",
            &recipe("add_difference"),
            "--models-dir",
            &models(),
            "--dry-run",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.starts_with("recipe: sd-mecha, format 0.1.0"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("inputs: 3"), "{}", r.stdout);
    assert!(
        r.stdout.contains(&format!(
            "{}",
            Path::new("output")
                .join("add_difference.safetensors")
                .display()
        )),
        "the default output: {}",
        r.stdout
    );
    assert!(r.stdout.contains("note: the autoencoder"), "{}", r.stdout);
    assert!(files_under(dir.path()).is_empty());
}

/// Default naming: `<output-dir>/<recipe name>.safetensors`; a second run does not replace it.
#[test]
fn default_output_is_named_after_the_recipe_and_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["run", &recipe("weighted_sum"), "--models-dir", &models()];
    let r = run(dir.path(), &args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = dir.path().join("output/weighted_sum.safetensors");
    assert_eq!(dir.path().join(r.stdout.trim()), out);
    let before = std::fs::read(&out).unwrap();
    let again = run(dir.path(), &args);
    assert_eq!(again.code, 1, "{}", again.stderr);
    assert!(again.stderr.contains("exists"), "{}", again.stderr);
    assert_eq!(std::fs::read(&out).unwrap(), before);
    assert_eq!(files_under(dir.path()), vec![out]);
}

/// Model paths relative to the working directory (sd-mecha's fallback), and `.safetensors`
/// appended to a path written without it; a missing model names where it was looked for.
#[test]
fn model_paths_resolve_as_sd_mecha_resolves_them() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("models/a.safetensors"),
        dir.path().join("a.safetensors"),
    )
    .unwrap();
    std::fs::copy(
        fixtures().join("models/b.safetensors"),
        dir.path().join("b.safetensors"),
    )
    .unwrap();
    let text = "version 0.1.0\nmodel \"a\" model_config=\"sd1-ldm\" merge_space=\"weight\"\n\
                model \"b.safetensors\"\nmerge \"weighted_sum\" &0 &1 alpha=0.25\n";
    std::fs::write(dir.path().join("r.mecha"), text).unwrap();
    let r = run(dir.path(), &["run", "r.mecha", "-o", "m.safetensors", "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(dir.path().join("m.safetensors").is_file());
    // A recipe name with dots keeps them in the default output name.
    std::fs::write(dir.path().join("v1.2.mecha"), text).unwrap();
    let r = run(dir.path(), &["run", "v1.2.mecha", "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(dir.path().join("output/v1.2.safetensors").is_file());

    let missing = "version 0.1.0\nmodel \"nowhere\"\n";
    std::fs::write(dir.path().join("bad.mecha"), missing).unwrap();
    let out = dir.path().join("out");
    let r = run(
        dir.path(),
        &["run", "bad.mecha", "--output-dir", out.to_str().unwrap()],
    );
    assert_refused(&r, "line 2: model `nowhere` not found", &out);
    assert!(r.stderr.contains("nowhere.safetensors"), "{}", r.stderr);
}

/// A file without the `.mecha` extension is told by its first line; a bad line names itself.
#[test]
fn recipe_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    for (text, needle) in [
        (
            "version 0.2.0\nmodel \"a\"\n",
            "line 1: recipe format version `0.2.0`: this build reads version 0.1.0",
        ),
        (
            "version 0.1.0\nmodel \"a\"\nmerge \"weighted_sum\" &0 &3\n",
            "line 3: argument 3 (`&3`): the reference &3 is not an earlier instruction",
        ),
        (
            "version 0.1.0\nmodel \"a\nunclosed\n",
            "line 2: a quote is not closed",
        ),
    ] {
        std::fs::write(dir.path().join("recipe.txt"), text).unwrap();
        let r = run(
            dir.path(),
            &["run", "recipe.txt", "--output-dir", out.to_str().unwrap()],
        );
        assert_refused(&r, needle, &out);
    }
}
