//! `ties_sum_extended`, `add_difference_ties_extended` and DARE's `apply_median` against TIES,
//! model stock and Weiszfeld written out here over small tensors.

use super::*;

/// TIES's filtered deltas written out: each delta's values below its k-th magnitude dropped,
/// then those whose sign is not the elected one (`vote_sgn`: the sign of the sum of the kept
/// values, else of the sum of their signs); with the count that agree, per element.
fn filtered_ref(deltas: &[Vec<f64>], k: f64, vote_sgn: bool) -> (Vec<Vec<f64>>, Vec<f64>) {
    let n = deltas[0].len();
    let sgn = |x: f64| {
        if x > 0.0 {
            1.0
        } else if x < 0.0 {
            -1.0
        } else {
            0.0
        }
    };
    let kept: Vec<Vec<f64>> = deltas
        .iter()
        .map(|d| {
            let mut mags: Vec<f64> = d.iter().map(|x| x.abs()).collect();
            mags.sort_by(|x, y| x.partial_cmp(y).unwrap());
            let t = mags[(((1.0 - k) * n as f64) as usize).max(1) - 1];
            d.iter()
                .map(|&x| if x.abs() >= t { x } else { 0.0 })
                .collect()
        })
        .collect();
    let mut out = vec![vec![0.0; n]; deltas.len()];
    let mut counts = vec![0.0; n];
    for j in 0..n {
        let vote: f64 = kept
            .iter()
            .map(|d| if vote_sgn { d[j] } else { sgn(d[j]) })
            .sum();
        let s = sgn(vote);
        for (o, d) in out.iter_mut().zip(&kept) {
            if sgn(d[j]) == s {
                o[j] = d[j];
                counts[j] += 1.0;
            }
        }
    }
    (out, counts)
}

fn finite_or_zero(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

#[test]
fn ties_sum_extended_without_stock_or_median_is_ties_sum() {
    let d: Vec<Vec<f32>> = (0..3).map(|s| values(120, 70 + s)).collect();
    let d6: Vec<Vec<f64>> = d.iter().map(|v| f64s(v)).collect();
    let got = run("ties_sum_extended", &[("k", "0.4")], &d, &[120]);
    let (f, c) = filtered_ref(&d6, 0.4, false);
    let want: Vec<f64> = (0..120)
        .map(|j| finite_or_zero(f.iter().map(|v| v[j]).sum::<f64>() / c[j]))
        .collect();
    close(&got, &want, 1e-6, "ties_sum_extended");
    // The default k is sd-mecha's 0.2 (ties_sum's is 1).
    let got = run("ties_sum_extended", &[("vote_sgn", "true")], &d, &[120]);
    let (f, c) = filtered_ref(&d6, 0.2, true);
    let want: Vec<f64> = (0..120)
        .map(|j| finite_or_zero(f.iter().map(|v| v[j]).sum::<f64>() / c[j]))
        .collect();
    close(&got, &want, 1e-6, "ties_sum_extended k=0.2 vote_sgn");
}

#[test]
fn apply_median_takes_the_geometric_median_of_the_filtered_deltas() {
    let base = values(96, 80);
    let mut models = vec![base.clone()];
    for s in 0..4 {
        let mut m: Vec<f32> = values(96, 81 + s)
            .iter()
            .zip(&base)
            .map(|(d, b)| b + d)
            .collect();
        if s == 3 {
            // An outlier the median resists and the mean does not.
            m.iter_mut().for_each(|v| *v += 3.0);
        }
        models.push(m);
    }
    let deltas: Vec<Vec<f64>> = models[1..]
        .iter()
        .map(|m| {
            m.iter()
                .zip(&base)
                .map(|(&x, &b)| f64::from(x - b))
                .collect()
        })
        .collect();
    let p = [("k", "0.5"), ("apply_median", "true"), ("alpha", "0.7")];
    let got = run("add_difference_ties_extended", &p, &models, &[8, 12]);
    let (f, _) = filtered_ref(&deltas, 0.5, false);
    let med = median_ref(&f, 1e-6, 100, 1e-20);
    let want: Vec<f64> = (0..96)
        .map(|j| f64::from(base[j]) + 0.7 * finite_or_zero(med[j]))
        .collect();
    close(
        &got,
        &want,
        2e-5,
        "add_difference_ties_extended apply_median",
    );
    // The median is not the mean of the filtered deltas.
    let (f, c) = filtered_ref(&deltas, 0.5, false);
    let mean: Vec<f64> = (0..96)
        .map(|j| {
            f64::from(base[j]) + 0.7 * finite_or_zero(f.iter().map(|v| v[j]).sum::<f64>() / c[j])
        })
        .collect();
    let off = got
        .iter()
        .zip(&mean)
        .map(|(&g, m)| (f64::from(g) - m).abs())
        .fold(0.0, f64::max);
    assert!(off > 0.05, "{off}");
    // apply_median wins over apply_stock, as in sd-mecha.
    let p2 = [
        ("k", "0.5"),
        ("apply_median", "true"),
        ("apply_stock", "true"),
        ("alpha", "0.7"),
    ];
    assert_eq!(
        run("add_difference_ties_extended", &p2, &models, &[8, 12]),
        got
    );
    // Over the deltas themselves, without a base.
    let d32: Vec<Vec<f32>> = deltas
        .iter()
        .map(|d| d.iter().map(|&v| v as f32).collect())
        .collect();
    let got = run(
        "ties_sum_extended",
        &[("k", "0.5"), ("apply_median", "true")],
        &d32,
        &[96],
    );
    close(&got, &med, 2e-5, "ties_sum_extended apply_median");
}

#[test]
fn apply_stock_scales_the_ties_mean_by_model_stock_t_per_row() {
    let base = values(48, 90);
    let mut models = vec![base.clone()];
    for s in 0..3 {
        models.push(
            values(48, 91 + s)
                .iter()
                .zip(&base)
                .map(|(d, b)| b + d)
                .collect(),
        );
    }
    let deltas: Vec<Vec<f64>> = models[1..]
        .iter()
        .map(|m| {
            m.iter()
                .zip(&base)
                .map(|(&x, &b)| f64::from(x - b))
                .collect()
        })
        .collect();
    let p = [("k", "1"), ("apply_stock", "true")];
    let got = run("add_difference_ties_extended", &p, &models, &[4, 12]);
    let (f, c) = filtered_ref(&deltas, 1.0, false);
    let mut want = vec![0.0; 48];
    for s in (0..48).step_by(12) {
        let rows: Vec<&[f64]> = f.iter().map(|v| &v[s..s + 12]).collect();
        let cos: f64 = rows
            .windows(2)
            .map(|w| dot(w[0], w[1]) / (dot(w[0], w[0]).sqrt() * dot(w[1], w[1]).sqrt()))
            .sum::<f64>()
            / 2.0;
        let t = 3.0 * cos / (1.0 + 2.0 * cos);
        for j in s..s + 12 {
            let sum: f64 = rows.iter().map(|r| r[j - s]).sum();
            want[j] = f64::from(base[j]) + finite_or_zero(sum * t / c[j]);
        }
    }
    close(
        &got,
        &want,
        1e-5,
        "add_difference_ties_extended apply_stock",
    );
}

#[test]
fn dare_with_apply_median_and_nothing_dropped_is_the_ties_median() {
    let base = values(64, 100);
    let models: Vec<Vec<f32>> = std::iter::once(base.clone())
        .chain((0..3).map(|s| values(64, 101 + s)))
        .collect();
    let median = [("k", "0.6"), ("apply_median", "true")];
    let want = run("add_difference_ties_extended", &median, &models, &[64]);
    let p = [("k", "0.6"), ("apply_median", "true"), ("probability", "0")];
    assert_eq!(run("dare", &p, &models, &[64]), want);
    // With a dropout: the rescale divides the combined delta by 1 − p.
    let kept = |rescale: &str| {
        let p = [
            ("apply_median", "true"),
            ("probability", "0.5"),
            ("seed", "7"),
            ("rescale", rescale),
        ];
        run("dare", &p, &models, &[64])
    };
    let (on, off) = (kept("true"), kept("false"));
    let mut changed = 0;
    for j in 0..64 {
        let (d_on, d_off) = (on[j] - base[j], off[j] - base[j]);
        assert!(
            (d_on - 2.0 * d_off).abs() <= 1e-5 * (1.0 + d_on.abs()),
            "{j}"
        );
        changed += usize::from(d_off != 0.0);
    }
    assert!(changed > 10, "{changed}");
}

#[test]
fn median_parameters_out_of_range_are_refused() {
    for (p, v) in [("maxiter", "-1"), ("eps", "-0.1"), ("ftol", "-1")] {
        let e = method(
            "ties_sum_extended",
            2,
            &params(&[("apply_median", "true"), (p, v)]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("eps, maxiter and ftol are ≥ 0"), "{e}");
    }
    let e = method(
        "add_difference_ties_extended",
        3,
        &params(&[("della_eps", "0.1")]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("apply_median (default false)"), "{e}");
    let e = method("ties_sum_extended", 2, &params(&[("k", "0")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("outside (0, 1]"), "{e}");
}
