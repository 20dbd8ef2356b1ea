//! sd-mecha's DELLA (`della_eps` of `add_ties_with_dare`): keep probabilities by each element's
//! ordinal magnitude rank over the whole tensor, checked against ranks and probabilities
//! computed here (a stable sort of the positions by magnitude; sd-mecha's
//! `clamp(1 − p + ε·(r/n − (n + 1)/2n), 0, 1)`), by their statistics on large tensors, and in the
//! cases where the mask is certain (clamped at 0 and 1).

use super::*;

/// Ordinal ranks (1-based) of `|d|`, ties by position, by a stable sort.
fn ranks_ref(d: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..d.len()).collect();
    order.sort_by(|&a, &b| d[a].abs().partial_cmp(&d[b].abs()).unwrap());
    let mut rank = vec![0; d.len()];
    for (r, &i) in order.iter().enumerate() {
        rank[i] = r + 1;
    }
    rank
}

/// sd-mecha's keep probability of rank `r` among `n`.
fn keep_ref(p: f64, eps: f64, r: usize, n: usize) -> f64 {
    let (r, n) = (r as f64, n as f64);
    (1.0 - p + eps * (r / n - (n + 1.0) / (2.0 * n))).clamp(0.0, 1.0)
}

/// DARE over one model on a zero base: each output is the delta kept (÷ (1 − p)) or 0.
fn one_delta(p: &[(&str, &str)], delta: &[f32], shape: &[usize]) -> Vec<f32> {
    let base = vec![0f32; delta.len()];
    run("dare", p, &[base, delta.to_vec()], shape)
}

/// For each tenth of the ranks: the kept fraction is the mean keep probability within five
/// standard deviations of the binomial count.
fn check_deciles(got: &[f32], rank: &[usize], keep: &dyn Fn(usize) -> f64) {
    let n = got.len();
    for dec in 0..10 {
        let (lo, hi) = (dec * n / 10 + 1, (dec + 1) * n / 10);
        let (mut kept, mut count, mut mean, mut var) = (0usize, 0usize, 0f64, 0f64);
        for (g, &r) in got.iter().zip(rank) {
            if (lo..=hi).contains(&r) {
                let q = keep(r);
                kept += usize::from(*g != 0.0);
                count += 1;
                mean += q;
                var += q * (1.0 - q);
            }
        }
        let bound = 5.0 * var.sqrt() + 1.0;
        assert!(
            (kept as f64 - mean).abs() <= bound,
            "ranks {lo}..={hi}: kept {kept} of {count}, expected {mean:.1} ± {bound:.1}"
        );
    }
}

#[test]
fn della_keeps_each_rank_decile_at_its_probability_and_rescales_by_one_minus_p() {
    let (rows, cols) = (400, 500);
    let n = rows * cols;
    // Magnitudes that do not follow positions, of both signs.
    let delta: Vec<f32> = values(n, 901).iter().map(|v| v * 3.0).collect();
    let rank = ranks_ref(&delta);
    let (p, eps) = (0.6, 0.5);
    let params = [("probability", "0.6"), ("della_eps", "0.5"), ("seed", "11")];
    let got = one_delta(&params, &delta, &[rows, cols]);
    for (e, (g, d)) in got.iter().zip(&delta).enumerate() {
        let want = f64::from(*d) / (1.0 - p);
        assert!(
            *g == 0.0 || (f64::from(*g) - want).abs() <= 1e-6 * want.abs(),
            "element {e}: {g}, expected 0 or {want}"
        );
    }
    check_deciles(&got, &rank, &|r| keep_ref(p, eps, r, n));
    // The window moves the probability: the top tenth keeps far more than the bottom one.
    let frac = |lo: usize, hi: usize| {
        let sel: Vec<_> = (0..n).filter(|&e| (lo..=hi).contains(&rank[e])).collect();
        sel.iter().filter(|&&e| got[e] != 0.0).count() as f64 / sel.len() as f64
    };
    assert!(frac(1, n / 10) < 0.2 && frac(n - n / 10 + 1, n) > 0.6);
    // Seeded: the same seed, the same file; another seed, another mask.
    assert_eq!(one_delta(&params, &delta, &[rows, cols]), got);
    let other = [("probability", "0.6"), ("della_eps", "0.5"), ("seed", "12")];
    assert_ne!(one_delta(&other, &delta, &[rows, cols]), got);
}

/// A delta of one repeated value: its ranks are its positions (ties by position), and since
/// the window is centred, the rescale by 1 / (1 − p) preserves the mean; a negative ε flips the
/// preference to the first positions (the smallest ranks).
#[test]
fn della_breaks_ties_by_position_preserves_the_mean_and_flips_with_negative_eps() {
    let n = 100_000;
    let delta = vec![0.25f32; n];
    let position: Vec<usize> = (1..=n).collect();
    for (eps, seed) in [(0.6, "3"), (-0.6, "4")] {
        let e = eps.to_string();
        let params = [
            ("probability", "0.5"),
            ("della_eps", e.as_str()),
            ("seed", seed),
        ];
        let got = one_delta(&params, &delta, &[100, 1000]);
        check_deciles(&got, &position, &|r| keep_ref(0.5, eps, r, n));
        let mean = got.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
        // Σ p(1 − p) ≤ n/4: the mean of the kept 0.5's within five σ of 0.25.
        let sigma = 0.5 * (n as f64 / 4.0).sqrt() / n as f64;
        assert!((mean - 0.25).abs() < 5.0 * sigma, "ε {eps}: mean {mean}");
        let (first, last) = (
            got[..n / 10].iter().filter(|v| **v != 0.0).count(),
            got[n - n / 10..].iter().filter(|v| **v != 0.0).count(),
        );
        assert_eq!(first < last, eps > 0.0, "ε {eps}: {first} vs {last}");
    }
}

/// `della_eps = 0` is DARE: the same values bit for bit, with or without k and the median.
#[test]
fn della_eps_zero_is_dare_exactly() {
    let base = values(3000, 40);
    let models: Vec<Vec<f32>> = std::iter::once(base.clone())
        .chain((0..2).map(|s| values(3000, 41 + s)))
        .collect();
    for extra in [
        &[][..],
        &[("k", "0.4")][..],
        &[("apply_median", "true")][..],
    ] {
        let mut p = vec![("probability", "0.7"), ("seed", "9")];
        p.extend_from_slice(extra);
        let dare = run("dare", &p, &models, &[30, 100]);
        p.push(("della_eps", "0"));
        assert_eq!(run("dare", &p, &models, &[30, 100]), dare, "{extra:?}");
    }
}

/// ε large enough clamps every probability to 0 or 1: with p = 0.5 and an even n, exactly the
/// larger half of the magnitudes is kept (ε > 0) or the smaller half (ε < 0), whatever the seed;
/// then TIES's k keeps the top of what is left.
#[test]
fn della_clamped_at_zero_and_one_keeps_a_half_by_rank_and_then_the_top_k() {
    let n = 1000;
    let delta: Vec<f32> = values(n, 77)
        .iter()
        .enumerate()
        // A few exact ties across the middle.
        .map(|(i, v)| if i % 50 == 0 { 0.5 } else { *v })
        .collect();
    let rank = ranks_ref(&delta);
    for (eps, top) in [("1e6", true), ("-1e6", false)] {
        for seed in ["1", "2"] {
            let p = [("probability", "0.5"), ("della_eps", eps), ("seed", seed)];
            let got = one_delta(&p, &delta, &[n]);
            for e in 0..n {
                let kept = (rank[e] > n / 2) == top;
                let want = if kept { delta[e] * 2.0 } else { 0.0 };
                assert_eq!(got[e], want, "ε {eps}, element {e} of rank {}", rank[e]);
            }
        }
    }
    // k = 0.25 on the dropped delta: its values of at least the int(0.75·n)-th smallest
    // magnitude (the zeros of the dropped half count), × 2.
    let p = [("probability", "0.5"), ("della_eps", "1e6"), ("k", "0.25")];
    let got = one_delta(&p, &delta, &[n]);
    let dropped: Vec<f32> = (0..n)
        .map(|e| if rank[e] > n / 2 { delta[e] } else { 0.0 })
        .collect();
    let mut mags: Vec<f32> = dropped.iter().map(|v| v.abs()).collect();
    mags.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let t = mags[(0.75 * n as f64) as usize - 1];
    for e in 0..n {
        let want = if dropped[e].abs() >= t {
            dropped[e] * 2.0
        } else {
            0.0
        };
        assert_eq!(got[e], want, "k: element {e}");
    }
    assert_eq!(got.iter().filter(|v| **v != 0.0).count(), n / 4 + 1);
}

/// A NaN in a delta: scipy ranks every element NaN, sd-mecha's `nan_to_num` makes that no
/// offset, so the tensor is dropped as DARE drops it.
#[test]
fn a_delta_with_a_nan_is_dropped_as_dare_drops_it() {
    let mut delta = values(5000, 5);
    delta[1234] = f32::NAN;
    let dare = one_delta(&[("probability", "0.4"), ("seed", "2")], &delta, &[5000]);
    let della = one_delta(
        &[("probability", "0.4"), ("seed", "2"), ("della_eps", "0.8")],
        &delta,
        &[5000],
    );
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&della), bits(&dare));
}

/// The ranks are held only while the tensor is produced, computed once for it.
#[test]
fn the_ranks_are_dropped_once_the_tensor_is_written() {
    let n = 4096;
    let base = vec![0f32; n];
    let m = method(
        "dare",
        2,
        &params(&[("probability", "0.5"), ("della_eps", "0.3"), ("k", "0.5")]),
    )
    .unwrap();
    let t = m
        .tensor(
            "model.w",
            vec![tensor(&base, &[n]), tensor(&values(n, 8), &[n])],
        )
        .unwrap();
    let InputTensor::Merged(mm) = &t else {
        panic!("a method node");
    };
    let node = mm.method_node().unwrap();
    let half = read(&t, std::slice::from_ref(&(0..n / 2)));
    assert!(node.ranks.is_held(), "held while the tensor is produced");
    let rest = read(&t, std::slice::from_ref(&(n / 2..n)));
    assert!(!node.ranks.is_held(), "dropped once every element is");
    assert_eq!(node.ranks.runs(), 1);
    assert_eq!(
        [half, rest].concat(),
        read(&t, std::slice::from_ref(&(0..n)))
    );
}

#[test]
fn a_della_eps_that_is_not_a_finite_number_is_refused() {
    for v in ["inf", "-inf", "NaN", "abc"] {
        let e = method("add_ties_with_dare", 2, &params(&[("della_eps", v)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("della_eps"), "{e}");
        assert!(e.contains("number"), "{e}");
    }
    // Out-of-range probabilities are clamped, not refused: every rank keeps or drops all.
    assert!(method("dare", 2, &params(&[("della_eps", "50")])).is_ok());
}
