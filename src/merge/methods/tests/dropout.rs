//! sd-mecha's `dropout` (n-supermario): its seeded independent masks checked by their
//! statistics, each value against the mean of the kept deltas written out, the rescale.

use super::*;

/// `a + alpha·dᵢ` for seeded deltas, with `a`, the models and the deltas in f32.
fn models(n: usize, count: u64) -> (Vec<f32>, Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let base = values(n, 110);
    let mut inputs = vec![base.clone()];
    let mut deltas = Vec::new();
    for s in 0..count {
        let m: Vec<f32> = values(n, 111 + s)
            .iter()
            .zip(&base)
            .map(|(d, b)| b + d)
            .collect();
        deltas.push(m.iter().zip(&base).map(|(x, b)| x - b).collect());
        inputs.push(m);
    }
    (base, inputs, deltas)
}

#[test]
fn dropout_averages_the_kept_deltas_of_independent_seeded_masks() {
    let n = 20_000;
    let (base, inputs, d) = models(n, 2);
    let p = [("probability", "0.6"), ("alpha", "0.5"), ("seed", "3")];
    let got = run("dropout", &p, &inputs, &[100, 200]);
    let r = 0.4f32;
    // Which deltas each element kept: none, the first, the second, both.
    let mut seen = [0usize; 4];
    for j in 0..n {
        let candidates = [
            0f32,
            d[0][j] / 1.0 / r,
            d[1][j] / 1.0 / r,
            (d[0][j] + d[1][j]) / 2.0 / r,
        ];
        let hit = candidates
            .iter()
            .position(|&c| (base[j] + c * 0.5).to_bits() == got[j].to_bits())
            .unwrap_or_else(|| panic!("element {j}: {} is no mean of kept deltas", got[j]));
        seen[hit] += 1;
    }
    // Binomial(20000, q): σ ≤ 0.0035 of n; 5σ bounds.
    for (count, q) in seen.iter().zip([0.36, 0.24, 0.24, 0.16]) {
        let f = *count as f64 / n as f64;
        assert!((f - q).abs() < 0.018, "{seen:?}");
    }
    // The same seed gives the same values, another seed others.
    assert_eq!(run("dropout", &p, &inputs, &[n]), got);
    let other = run(
        "dropout",
        &[("probability", "0.6"), ("alpha", "0.5"), ("seed", "4")],
        &inputs,
        &[n],
    );
    assert!(other.iter().zip(&got).filter(|(a, b)| a != b).count() > n / 4);
}

#[test]
fn dropout_of_one_model_preserves_the_mean_and_rescales_by_a_power() {
    let n = 40_000;
    let (base, inputs, d) = models(n, 1);
    // rescale 1: kept values ÷ (1 − p), so the mean delta is kept.
    let got = run(
        "dropout",
        &[("probability", "0.8"), ("alpha", "1")],
        &inputs,
        &[n],
    );
    let sum: f64 = got.iter().zip(&base).map(|(g, b)| f64::from(g - b)).sum();
    let want: f64 = d[0].iter().map(|&v| f64::from(v.abs())).sum();
    let signed: f64 = d[0].iter().map(|&v| f64::from(v)).sum();
    // Each delta is kept ÷ 0.2 with probability 0.2: the sum's σ ≈ 2·sqrt(Σd²) ≈ 2·sqrt(n/3).
    let sigma = 2.0 * (n as f64 / 3.0).sqrt();
    assert!((sum - signed).abs() < 5.0 * sigma, "{sum} vs {signed}");
    assert!(want > 10.0 * sigma);
    let kept = got.iter().zip(&base).filter(|(g, b)| g != b).count();
    assert!((kept as f64 / n as f64 - 0.2).abs() < 0.01, "{kept}");
    // rescale 0.5: ÷ (1 − p)^0.5.
    let half = run(
        "dropout",
        &[("probability", "0.8"), ("alpha", "1"), ("rescale", "0.5")],
        &inputs,
        &[n],
    );
    let r = 0.2f64.powf(0.5) as f32;
    for j in 0..n {
        let want = if got[j] == base[j] {
            base[j]
        } else {
            base[j] + d[0][j] / 1.0 / r
        };
        assert_eq!(half[j].to_bits(), want.to_bits(), "{j}");
    }
    // probability 1 drops everything: a.
    let all = run("dropout", &[("probability", "1")], &inputs, &[n]);
    assert_eq!(all, base);
}

#[test]
fn dropout_refuses_what_sd_mecha_does_not_run() {
    let e = method("dropout", 3, &params(&[("overlap", "2")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("dropout: overlap = 2"), "{e}");
    assert!(e.contains("sd-mecha 1.1.8 itself fails"), "{e}");
    assert!(method("dropout", 3, &params(&[("overlap", "3")])).is_ok());
    assert!(method("dropout", 3, &params(&[("overlap", "-1")])).is_ok());
    let e = method("dropout", 3, &params(&[("probability", "1.5")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("outside [0, 1]"), "{e}");
    let e = method("dropout", 1, &params(&[])).unwrap_err().to_string();
    assert!(
        e.contains("dropout(a, *models) takes 2 or more models"),
        "{e}"
    );
}
