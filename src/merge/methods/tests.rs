//! Each method against its formula written out here over small tensors (f64 where sd-mecha's
//! torch code is exact up to rounding), the whole-tensor cases (zero norms, parallel and
//! opposite tensors, ties at the k-th magnitude, signs that cancel), DARE's statistics, and
//! evaluation that does not depend on the ranges asked for.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use super::*;
use crate::offload::Scratch;

fn tensor(v: &[f32], shape: &[usize]) -> InputTensor {
    InputTensor::Candle(Tensor::from_slice(v, shape, &Device::Cpu).unwrap())
}

fn params(p: &[(&str, &str)]) -> BTreeMap<String, Param> {
    p.iter()
        .map(|(k, v)| (k.to_string(), Param::Str(v.to_string())))
        .collect()
}

/// Reads `t` over `ranges` (in order, covering it), with a fresh scratch each time as another
/// worker would.
fn read(t: &InputTensor, ranges: &[std::ops::Range<usize>]) -> Vec<f32> {
    let pieces = crate::plan::operand_pieces("k", t).unwrap();
    let mut out = Vec::new();
    for r in ranges {
        let mut v = vec![0f32; r.len()];
        crate::offload::read_f32(&pieces, r.clone(), &mut v, &mut Scratch::default()).unwrap();
        out.extend(v);
    }
    out
}

/// The method's output over `inputs` (each of `shape`), read whole and in ranges of 7 values;
/// both must agree bit for bit, and the facts must have been computed once.
fn run(name: &str, p: &[(&str, &str)], inputs: &[Vec<f32>], shape: &[usize]) -> Vec<f32> {
    let m = method(name, inputs.len(), &params(p)).unwrap();
    let t = m
        .tensor("model.w", inputs.iter().map(|v| tensor(v, shape)).collect())
        .unwrap();
    let n: usize = shape.iter().product();
    let whole = read(&t, std::slice::from_ref(&(0..n)));
    let pieces: Vec<_> = (0..n).step_by(7).map(|s| s..(s + 7).min(n)).collect();
    let parts = read(&t, &pieces);
    assert_eq!(
        whole.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        parts.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        "{name}: ranges change the result"
    );
    if let InputTensor::Merged(mm) = &t {
        assert!(mm.method_node().unwrap().scalars.runs() <= 1);
    }
    whole
}

/// Seeded values with a spread of signs and magnitudes.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        })
        .collect()
}

fn close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(*g) - w).abs();
        assert!(
            err <= tol * (1.0 + w.abs()),
            "{what}: element {i} is {g}, expected {w}"
        );
    }
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn weighted_sum_n_average_and_add_difference_follow_their_formulas() {
    let (a, b, c) = (values(50, 1), values(50, 2), values(50, 3));
    let (a6, b6, c6) = (f64s(&a), f64s(&b), f64s(&c));
    let got = run(
        "weighted_sum",
        &[("alpha", "0.3")],
        &[a.clone(), b.clone()],
        &[5, 10],
    );
    let want: Vec<f64> = a6.iter().zip(&b6).map(|(x, y)| x + 0.3 * (y - x)).collect();
    close(&got, &want, 1e-6, "weighted_sum");
    // sd-mecha returns an input itself at 0 and 1.
    assert_eq!(
        run(
            "weighted_sum",
            &[("alpha", "0")],
            &[a.clone(), b.clone()],
            &[50]
        ),
        a
    );
    assert_eq!(
        run(
            "weighted_sum",
            &[("alpha", "1")],
            &[a.clone(), b.clone()],
            &[50]
        ),
        b
    );

    let got = run("n_average", &[], &[a.clone(), b.clone(), c.clone()], &[50]);
    let want: Vec<f64> = (0..50).map(|i| (a6[i] + b6[i] + c6[i]) / 3.0).collect();
    close(&got, &want, 1e-6, "n_average");

    let got = run(
        "add_difference",
        &[("alpha", "0.7")],
        &[a.clone(), b.clone(), c.clone()],
        &[50],
    );
    let want: Vec<f64> = (0..50).map(|i| a6[i] + 0.7 * (b6[i] - c6[i])).collect();
    close(&got, &want, 1e-6, "add_difference");
    let got = run(
        "add_difference",
        &[("alpha", "2")],
        &[a.clone(), b.clone()],
        &[50],
    );
    let want: Vec<f64> = (0..50).map(|i| a6[i] + 2.0 * b6[i]).collect();
    close(&got, &want, 1e-6, "add_difference of a delta");

    let p = [("alpha", "1.5"), ("clamp_to_ab", "true")];
    let got = run(
        "add_difference",
        &p,
        &[a.clone(), b.clone(), c.clone()],
        &[50],
    );
    let want: Vec<f64> = (0..50)
        .map(|i| {
            let r = a6[i] + 1.5 * (b6[i] - c6[i]);
            r.clamp(a6[i].min(b6[i]), a6[i].max(b6[i]))
        })
        .collect();
    close(&got, &want, 1e-6, "add_difference clamped");
    let clipped = (0..50)
        .filter(|&i| (want[i] - (a6[i] + 1.5 * (b6[i] - c6[i]))).abs() > 1e-3)
        .count();
    assert!(clipped > 5, "the clamp changes values: {clipped}");
}

/// SLERP written out: normalized tensors, the angle, and the norms interpolated.
fn slerp_ref(a: &[f64], b: &[f64], t: f64) -> Vec<f64> {
    let (na, nb) = (dot(a, a).sqrt(), dot(b, b).sqrt());
    let theta = (dot(a, b) / (na * nb)).clamp(-1.0, 1.0).acos();
    let (sa, sb) = (
        ((1.0 - t) * theta).sin() / theta.sin(),
        (t * theta).sin() / theta.sin(),
    );
    let scale = (1.0 - t) * na + t * nb;
    a.iter()
        .zip(b)
        .map(|(x, y)| (sa * x / na + sb * y / nb) * scale)
        .collect()
}

#[test]
fn slerp_interpolates_angle_and_norm_and_falls_back_to_lerp() {
    let (a, b) = (values(60, 4), values(60, 5));
    let got = run(
        "slerp",
        &[("alpha", "0.35")],
        &[a.clone(), b.clone()],
        &[6, 10],
    );
    close(&got, &slerp_ref(&f64s(&a), &f64s(&b), 0.35), 1e-5, "slerp");
    let norm = dot(&f64s(&got), &f64s(&got)).sqrt();
    let (na, nb) = (
        dot(&f64s(&a), &f64s(&a)).sqrt(),
        dot(&f64s(&b), &f64s(&b)).sqrt(),
    );
    assert!((norm - (0.65 * na + 0.35 * nb)).abs() < 1e-4 * norm);

    let lerp = |a: &[f32], b: &[f32], t: f64| -> Vec<f64> {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| f64::from(x) + t * (f64::from(y) - f64::from(x)))
            .collect()
    };
    // A zero tensor has no direction; parallel tensors have no angle: sd-mecha's NaN → lerp.
    let zero = vec![0f32; 60];
    let got = run(
        "slerp",
        &[("alpha", "0.4")],
        &[zero.clone(), b.clone()],
        &[60],
    );
    close(&got, &lerp(&zero, &b, 0.4), 1e-6, "slerp from zero");
    let twice: Vec<f32> = a.iter().map(|x| 2.0 * x).collect();
    let got = run(
        "slerp",
        &[("alpha", "0.4")],
        &[a.clone(), twice.clone()],
        &[60],
    );
    close(
        &got,
        &lerp(&a, &twice, 0.4),
        1e-6,
        "slerp of parallel tensors",
    );
    // Opposite tensors of one norm meet at zero halfway.
    let minus: Vec<f32> = a.iter().map(|x| -x).collect();
    let got = run("slerp", &[("alpha", "0.5")], &[a.clone(), minus], &[60]);
    assert!(got.iter().all(|v| v.abs() < 1e-5), "{got:?}");
}

#[test]
fn add_perpendicular_adds_the_part_orthogonal_to_a_minus_c() {
    let (a, b, c) = (values(40, 6), values(40, 7), values(40, 8));
    let (a6, b6, c6) = (f64s(&a), f64s(&b), f64s(&c));
    let ad: Vec<f64> = (0..40).map(|i| a6[i] - c6[i]).collect();
    let bd: Vec<f64> = (0..40).map(|i| b6[i] - c6[i]).collect();
    let r = dot(&ad, &bd) / dot(&ad, &ad);
    let want: Vec<f64> = (0..40).map(|i| a6[i] + 0.8 * (bd[i] - ad[i] * r)).collect();
    let got = run(
        "add_perpendicular",
        &[("alpha", "0.8")],
        &[a.clone(), b.clone(), c.clone()],
        &[4, 10],
    );
    close(&got, &want, 1e-5, "add_perpendicular");
    let added: Vec<f64> = (0..40).map(|i| f64::from(got[i]) - a6[i]).collect();
    assert!(dot(&added, &ad).abs() < 1e-4 * dot(&ad, &ad).sqrt() * dot(&added, &added).sqrt());
    // a = c: no direction to be perpendicular to; sd-mecha adds zeros.
    let got = run("add_perpendicular", &[], &[a.clone(), b, a.clone()], &[40]);
    assert_eq!(got, a);
}

#[test]
fn train_difference_and_clamp_follow_their_formulas() {
    let (a, b, c) = (values(30, 9), values(30, 10), values(30, 11));
    let got = run(
        "train_difference",
        &[("alpha", "0.5")],
        &[a.clone(), b.clone(), c.clone()],
        &[30],
    );
    let want: Vec<f64> = (0..30)
        .map(|i| {
            let (a, b, c) = (f64::from(a[i]), f64::from(b[i]), f64::from(c[i]));
            let m = (b - a).abs() / ((b - a).abs() + (b - c).abs());
            a + (b - c) * 0.5 * 1.8 * m
        })
        .collect();
    close(&got, &want, 1e-5, "train_difference");
    // b = a = c: 0/0 is 0 (nan_to_num).
    let got = run(
        "train_difference",
        &[],
        &[a.clone(), a.clone(), a.clone()],
        &[30],
    );
    assert_eq!(got, a);

    let got = run("clamp", &[], &[a.clone(), b.clone(), c.clone()], &[30]);
    let want: Vec<f64> = (0..30)
        .map(|i| {
            let (lo, hi) = (b[i].min(c[i]), b[i].max(c[i]));
            f64::from(a[i].clamp(lo, hi))
        })
        .collect();
    close(&got, &want, 0.0, "clamp");
    // Stiffness pulls the bounds toward the nearest bound on each side of the bounds' mean.
    let d = values(30, 12);
    let got = run(
        "clamp",
        &[("stiffness", "0.5")],
        &[a.clone(), b.clone(), c.clone(), d.clone()],
        &[30],
    );
    let want: Vec<f64> = (0..30)
        .map(|i| {
            let bs = [f64::from(b[i]), f64::from(c[i]), f64::from(d[i])];
            let avg = bs.iter().sum::<f64>() / 3.0;
            let hi = bs.iter().cloned().fold(f64::MIN, f64::max);
            let lo = bs.iter().cloned().fold(f64::MAX, f64::min);
            let sp = bs.iter().cloned().filter(|v| *v >= avg).fold(hi, f64::min);
            let ln = bs.iter().cloned().filter(|v| *v <= avg).fold(lo, f64::max);
            let (hi, lo) = (0.5 * hi + 0.5 * sp, 0.5 * lo + 0.5 * ln);
            f64::from(a[i]).max(lo).min(hi)
        })
        .collect();
    close(&got, &want, 1e-6, "clamp with stiffness");
}

/// TIES written out: each delta's values below its k-th magnitude dropped (sd-mecha keeps
/// `|x| ≥` the `max(int((1 − k)·n), 1)`-th smallest magnitude), the sign with the larger count
/// elected, the mean of the deltas that agree.
fn ties_ref(deltas: &[Vec<f64>], k: f64) -> Vec<f64> {
    let n = deltas[0].len();
    let kept: Vec<Vec<f64>> = deltas
        .iter()
        .map(|d| {
            let mut mags: Vec<f64> = d.iter().map(|x| x.abs()).collect();
            mags.sort_by(|x, y| x.partial_cmp(y).unwrap());
            let idx = (((1.0 - k) * n as f64) as usize).max(1);
            let t = mags[idx - 1];
            d.iter()
                .map(|&x| if x.abs() >= t { x } else { 0.0 })
                .collect()
        })
        .collect();
    (0..n)
        .map(|j| {
            let vote: f64 = kept
                .iter()
                .map(|d| d[j].signum() * f64::from(u8::from(d[j] != 0.0)))
                .sum();
            let s = vote.signum() * f64::from(u8::from(vote != 0.0));
            let agree: Vec<f64> = kept
                .iter()
                .map(|d| d[j])
                .filter(|v| (v.signum() * f64::from(u8::from(*v != 0.0))) == s)
                .collect();
            let r = agree.iter().sum::<f64>() / agree.len() as f64;
            if r.is_finite() {
                r
            } else {
                0.0
            }
        })
        .collect()
}

#[test]
fn ties_keeps_the_top_k_elects_signs_and_averages_agreeing_deltas() {
    let d: Vec<Vec<f32>> = (0..3).map(|s| values(200, 20 + s)).collect();
    let d6: Vec<Vec<f64>> = d.iter().map(|v| f64s(v)).collect();
    for k in ["1", "0.5", "0.2", "0.01"] {
        let got = run("ties_sum", &[("k", k)], &d, &[10, 20]);
        close(
            &got,
            &ties_ref(&d6, k.parse().unwrap()),
            1e-6,
            &format!("ties_sum k={k}"),
        );
    }
    // add_difference_ties: the deltas are the models minus the base.
    let base = values(200, 30);
    let models: Vec<Vec<f32>> = d
        .iter()
        .map(|v| v.iter().zip(&base).map(|(x, b)| x + b).collect())
        .collect();
    let deltas: Vec<Vec<f64>> = models
        .iter()
        .map(|m| {
            m.iter()
                .zip(&base)
                .map(|(&x, &b)| f64::from(x - b))
                .collect()
        })
        .collect();
    let mut inputs = vec![base.clone()];
    inputs.extend(models);
    let got = run(
        "add_difference_ties",
        &[("k", "0.3"), ("alpha", "0.6")],
        &inputs,
        &[200],
    );
    let r = ties_ref(&deltas, 0.3);
    let want: Vec<f64> = (0..200).map(|j| f64::from(base[j]) + 0.6 * r[j]).collect();
    close(&got, &want, 1e-5, "add_difference_ties");
}

#[test]
fn ties_keeps_every_value_tied_at_the_kth_magnitude_and_zeroes_cancelled_signs() {
    // Magnitudes 1, 2, 2, 2, 3, …: k = 0.7 of 10 keeps |x| ≥ the int(0.3·10) = 3rd smallest
    // (2): all three 2s. (k = 0.8 would keep everything: Python's int(0.2·10) is 1.)
    let d = vec![1.0f32, -2.0, 2.0, 2.0, 3.0, -4.0, 5.0, 6.0, -7.0, 8.0];
    let got = run("ties_sum", &[("k", "0.8")], std::slice::from_ref(&d), &[10]);
    assert_eq!(got, d);
    let got = run("ties_sum", &[("k", "0.7")], std::slice::from_ref(&d), &[10]);
    assert_eq!(got, [0.0, -2.0, 2.0, 2.0, 3.0, -4.0, 5.0, 6.0, -7.0, 8.0]);
    // Two deltas of opposite signs: no sign wins, nothing is added.
    let minus: Vec<f32> = d.iter().map(|x| -x).collect();
    let got = run("ties_sum", &[], &[d.clone(), minus], &[10]);
    assert!(got.iter().all(|v| *v == 0.0), "{got:?}");
    // vote_sgn elects by the sum of values: 3 + (−1) + (−1) votes positive.
    let got = run(
        "ties_sum",
        &[("vote_sgn", "true")],
        &[vec![3.0], vec![-1.0], vec![-1.0]],
        &[1],
    );
    assert_eq!(got, [3.0]);
    let got = run("ties_sum", &[], &[vec![3.0], vec![-1.0], vec![-1.0]], &[1]);
    assert_eq!(got, [-1.0]);
}

/// Model stock written out per run of the last dimension.
fn stock_ref(deltas: &[Vec<f64>], last: usize, eps: f64) -> Vec<f64> {
    let n = deltas.len() as f64;
    let len = deltas[0].len();
    let mut out = vec![0.0; len];
    for s in (0..len).step_by(last) {
        let rows: Vec<&[f64]> = deltas.iter().map(|d| &d[s..s + last]).collect();
        let cos: f64 = rows
            .windows(2)
            .map(|w| {
                dot(w[0], w[1])
                    / (dot(w[0], w[0]).sqrt().max(eps) * dot(w[1], w[1]).sqrt().max(eps))
            })
            .sum::<f64>()
            / (n - 1.0);
        let t = n * cos / (1.0 + (n - 1.0) * cos);
        for j in s..s + last {
            out[j] = t * rows.iter().map(|r| r[j - s]).sum::<f64>() / n;
        }
    }
    out
}

#[test]
fn model_stock_weights_the_mean_delta_by_the_cosines_of_each_row() {
    let d: Vec<Vec<f32>> = (0..3).map(|s| values(48, 40 + s)).collect();
    let mut d6: Vec<Vec<f64>> = d.iter().map(|v| f64s(v)).collect();
    let got = run("model_stock", &[], &d, &[4, 12]);
    close(&got, &stock_ref(&d6, 12, 1e-6), 1e-5, "model_stock");
    // A row of zeros: its cosines are 0 (eps), so t is 0.
    let mut z = d.clone();
    for v in z.iter_mut() {
        v[..12].fill(0.0);
    }
    for v in d6.iter_mut() {
        v[..12].fill(0.0);
    }
    let got = run("model_stock", &[], &z, &[4, 12]);
    assert!(got[..12].iter().all(|v| *v == 0.0));
    close(
        &got,
        &stock_ref(&d6, 12, 1e-6),
        1e-5,
        "model_stock with a zero row",
    );
    // n_model_stock: over models minus the base, added to it.
    let base = values(48, 50);
    let mut inputs = vec![base.clone()];
    inputs.extend(d.iter().map(|v| {
        v.iter()
            .zip(&base)
            .map(|(x, b)| x + b)
            .collect::<Vec<f32>>()
    }));
    let deltas: Vec<Vec<f64>> = inputs[1..]
        .iter()
        .map(|m| {
            m.iter()
                .zip(&base)
                .map(|(&x, &b)| f64::from(x - b))
                .collect()
        })
        .collect();
    let got = run("n_model_stock", &[], &inputs, &[4, 12]);
    let s = stock_ref(&deltas, 12, 1e-6);
    let want: Vec<f64> = (0..48).map(|j| f64::from(base[j]) + s[j]).collect();
    close(&got, &want, 1e-5, "n_model_stock");
}

/// Weiszfeld's iterations on the points themselves, as sd-mecha runs them.
fn median_ref(points: &[Vec<f64>], eps: f64, maxiter: usize, ftol: f64) -> Vec<f64> {
    let n = points.len();
    let len = points[0].len();
    let avg = |w: &[f64]| -> Vec<f64> {
        let s: f64 = w.iter().sum();
        (0..len)
            .map(|j| (0..n).map(|i| points[i][j] * w[i]).sum::<f64>() / s)
            .collect()
    };
    let dist = |m: &[f64], p: &[f64]| {
        m.iter()
            .zip(p)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f64>()
            .sqrt()
    };
    let mut median = avg(&vec![1.0; n]);
    let mut w = vec![1.0; n];
    let mut obj = points.iter().map(|p| dist(&median, p)).sum::<f64>() / n as f64;
    for _ in 0..maxiter {
        let prev = obj;
        w = points
            .iter()
            .map(|p| 1.0 / dist(&median, p).max(eps))
            .collect();
        median = avg(&w);
        obj = points.iter().map(|p| dist(&median, p)).sum::<f64>() / n as f64;
        if (prev - obj).abs() <= ftol * obj {
            break;
        }
    }
    avg(&w)
}

#[test]
fn geometric_median_follows_weiszfeld_and_resists_an_outlier() {
    let base = values(64, 60);
    let mut pts: Vec<Vec<f32>> = (0..4)
        .map(|s| {
            let noise = values(64, 61 + s);
            base.iter().zip(noise).map(|(b, n)| b + 0.01 * n).collect()
        })
        .collect();
    pts.push(base.iter().map(|b| b + 50.0).collect());
    let p6: Vec<Vec<f64>> = pts.iter().map(|v| f64s(v)).collect();
    let got = run("geometric_median", &[], &pts, &[8, 8]);
    close(
        &got,
        &median_ref(&p6, 1e-6, 100, 1e-20),
        1e-5,
        "geometric_median",
    );
    // The outlier moves the mean by 10, the median by far less.
    let off: f64 = got
        .iter()
        .zip(&base)
        .map(|(g, b)| f64::from(g - b).abs())
        .sum::<f64>()
        / 64.0;
    assert!(off < 0.1, "median off by {off}");
    // Three iterations only, and none: the mean.
    let got = run("geometric_median", &[("maxiter", "3")], &pts, &[64]);
    close(
        &got,
        &median_ref(&p6, 1e-6, 3, 1e-20),
        1e-5,
        "geometric_median, 3 iterations",
    );
    let got = run("geometric_median", &[("maxiter", "0")], &pts, &[64]);
    close(
        &got,
        &median_ref(&p6, 1e-6, 0, 1e-20),
        1e-5,
        "geometric_median, the mean",
    );
    // One model is its own median; identical models too (their distances are under eps).
    assert_eq!(
        run("geometric_median", &[], std::slice::from_ref(&base), &[64]),
        base
    );
    let got = run(
        "geometric_median",
        &[],
        &[base.clone(), base.clone()],
        &[64],
    );
    close(&got, &f64s(&base), 1e-6, "identical models");
}

#[test]
fn dare_keeps_a_seeded_fraction_rescaled_so_the_mean_is_preserved() {
    let n = 100_000;
    let base = vec![0f32; n];
    let delta: Vec<f32> = values(n, 70).iter().map(|v| v + 1.0).collect();
    let model: Vec<f32> = delta.clone();
    let p = [("probability", "0.9"), ("seed", "7")];
    let got = run("dare", &p, &[base.clone(), model.clone()], &[100, 1000]);
    let kept = got.iter().filter(|v| **v != 0.0).count();
    // Binomial(n, 0.1): σ ≈ 95.
    assert!((kept as f64 - 10_000.0).abs() < 500.0, "kept {kept}");
    for (g, d) in got.iter().zip(&delta) {
        assert!(
            *g == 0.0
                || (f64::from(*g) - f64::from(*d) / 0.1).abs() < 1e-4 * f64::from(d.abs()) * 10.0
        );
    }
    let mean = |v: &[f32]| v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
    assert!(
        (mean(&got) - mean(&delta)).abs() < 0.05 * mean(&delta),
        "{} vs {}",
        mean(&got),
        mean(&delta)
    );
    // The same seed gives the same values, another seed others; without rescale, no 1/(1 − p).
    assert_eq!(run("dare", &p, &[base.clone(), model.clone()], &[n]), got);
    let other = run(
        "dare",
        &[("probability", "0.9"), ("seed", "8")],
        &[base.clone(), model.clone()],
        &[n],
    );
    assert_ne!(other, got);
    let plain = run(
        "dare",
        &[("probability", "0.5"), ("rescale", "false")],
        &[base.clone(), model.clone()],
        &[n],
    );
    assert!(plain.iter().zip(&delta).all(|(g, d)| *g == 0.0 || g == d));
    // Everything dropped: the base.
    assert_eq!(
        run(
            "dare",
            &[("probability", "1")],
            &[base.clone(), model],
            &[n]
        ),
        base
    );
}

/// DELLA over one model: element `j` of each row (whose magnitudes rise with `j`, so its rank
/// is `j + 1`) is kept with probability `p_j = density − ε + 2ε·j/(n − 1)` and then is
/// `d / p_j`; the kept fraction per band of ranks follows `p_j`, and the mean is preserved.
#[test]
fn della_keeps_by_magnitude_rank_within_rows_and_rescales() {
    let (rows, n) = (400, 250);
    let delta: Vec<f32> = (0..rows * n)
        .map(|e| {
            let (r, j) = (e / n, e % n);
            let sign = if (r + j) % 3 == 0 { -1.0 } else { 1.0 };
            sign * (1.0 + j as f32 / n as f32)
        })
        .collect();
    let base = vec![0f32; rows * n];
    let (density, eps) = (0.5, 0.2);
    let p = [("density", "0.5"), ("epsilon", "0.2"), ("seed", "3")];
    let got = run("della", &p, &[base.clone(), delta.clone()], &[rows, n]);
    let keep = |j: usize| density - eps + 2.0 * eps * j as f64 / (n - 1) as f64;
    for (e, (g, d)) in got.iter().zip(&delta).enumerate() {
        let want = f64::from(*d) / keep(e % n);
        assert!(
            *g == 0.0 || (f64::from(*g) - want).abs() <= 1e-6 * want.abs(),
            "element {e}: {g}, expected 0 or {want}"
        );
    }
    // Five bands of ranks: kept fraction within 4σ of the mean probability (σ ≈ 0.0035).
    let bands = 5;
    for b in 0..bands {
        let cols = b * n / bands..(b + 1) * n / bands;
        let expected = cols.clone().map(keep).sum::<f64>() / cols.len() as f64;
        let mut kept = 0usize;
        for r in 0..rows {
            kept += cols.clone().filter(|&j| got[r * n + j] != 0.0).count();
        }
        let frac = kept as f64 / (rows * cols.len()) as f64;
        assert!(
            (frac - expected).abs() < 0.015,
            "band {b}: kept {frac}, expected {expected}"
        );
    }
    // Unbiased: Σ d·got / Σ d² ≈ 1 (each kept value is d/p with probability p).
    let num: f64 = got
        .iter()
        .zip(&delta)
        .map(|(g, d)| f64::from(*g) * f64::from(*d))
        .sum();
    let den: f64 = delta.iter().map(|d| f64::from(*d).powi(2)).sum();
    assert!((num / den - 1.0).abs() < 0.02, "{}", num / den);
    // Seeded: the same seed, the same values; another, others. Without rescale: d itself.
    assert_eq!(
        run("della", &p, &[base.clone(), delta.clone()], &[rows, n]),
        got
    );
    let other = [("density", "0.5"), ("epsilon", "0.2"), ("seed", "4")];
    assert_ne!(
        run("della", &other, &[base.clone(), delta.clone()], &[rows, n]),
        got
    );
    let plain = [("density", "0.5"), ("rescale", "false")];
    let unscaled = run("della", &plain, &[base.clone(), delta.clone()], &[rows, n]);
    assert!(unscaled
        .iter()
        .zip(&delta)
        .all(|(g, d)| *g == 0.0 || g == d));
}

/// With density 1 nothing is dropped: the sign of the sum of the deltas is elected, the deltas
/// of that sign averaged (0 where the sum is 0), times lambda, added to the base.
#[test]
fn della_elects_signs_and_averages_agreeing_deltas() {
    let base = vec![1.0, 0.0, -1.0, 0.5];
    let m1: Vec<f32> = [1.0, -2.0, 3.0, 0.5]
        .iter()
        .zip(&base)
        .map(|(d, b)| d + b)
        .collect();
    let m2: Vec<f32> = [2.0, 1.0, -1.0, -0.5]
        .iter()
        .zip(&base)
        .map(|(d, b)| d + b)
        .collect();
    let got = run(
        "della",
        &[("density", "1"), ("lambda", "0.5")],
        &[base.clone(), m1, m2],
        &[4],
    );
    // Sums 3, −1, 2, 0: means 1.5, −2, 3, 0.
    let want: Vec<f64> = [1.5, -2.0, 3.0, 0.0]
        .iter()
        .zip(&base)
        .map(|(r, b)| f64::from(*b) + 0.5 * r)
        .collect();
    close(&got, &want, 1e-6, "della density 1");
    for (p, needle) in [
        (("density", "0"), "della: density = 0 is outside (0, 1]"),
        (("epsilon", "0.6"), "della: epsilon = 0.6 with density 0.5"),
    ] {
        let Err(Error::InvalidInput(m)) = method("della", 2, &params(&[p])) else {
            panic!("{p:?} accepted");
        };
        assert!(m.contains(needle), "{m}");
    }
}

#[test]
fn bad_methods_and_parameters_are_refused_naming_what_is_accepted() {
    let e = method("lerp", 2, &params(&[])).unwrap_err().to_string();
    assert!(
        e.contains("unknown merge method `lerp`") && e.contains("slerp") && e.contains("ties_sum"),
        "{e}"
    );
    let e = method("slerp", 2, &params(&[("beta", "1")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`beta`") && e.contains("alpha (default 0.5)"),
        "{e}"
    );
    let e = method("slerp", 3, &params(&[])).unwrap_err().to_string();
    assert!(e.contains("takes 2 models; 3 given"), "{e}");
    for k in ["0", "1.5", "-0.1"] {
        let e = method("ties_sum", 2, &params(&[("k", k)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside (0, 1]"), "{e}");
    }
    let e = method("dare", 2, &params(&[("probability", "2")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("outside [0, 1]"), "{e}");
    let e = method("slerp", 2, &params(&[("alpha", "x")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("takes a number"), "{e}");
    let e = method("slerp", 2, &params(&[("alpha", "nan")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("finite"), "{e}");
    assert!(method("add_difference", 2, &params(&[("clamp_to_ab", "true")])).is_err());
    let m = method("slerp", 2, &params(&[])).unwrap();
    let e = m
        .tensor(
            "k",
            vec![tensor(&[1.0, 2.0], &[2]), tensor(&[1.0, 2.0, 3.0], &[3])],
        )
        .unwrap_err();
    assert!(matches!(e, Error::BadShape { .. }), "{e}");
    // Every known method's defaults are accepted.
    for info in KNOWN {
        method(
            info.name,
            info.min_inputs.max(3).min(info.max_inputs.unwrap_or(9)),
            &params(&[]),
        )
        .unwrap();
    }
}

mod della_eps;
mod dropout;
mod ties;

/// TIES of tensors large enough for the sampled bracket of the k-th magnitude, on spread values
/// (the bracket holds the rank), values of a few levels and a zero delta (a bracket of one
/// value: counted), and two magnitudes with the k-th at the step between them (the bracket
/// holds too many: the counting passes), against the formula.
#[test]
fn ties_of_large_tensors_keeps_the_exact_top_k() {
    let n = 64 * crate::reduce::CHUNK + 1001;
    let spread: Vec<Vec<f32>> = (0..2).map(|s| values(n, 60 + s)).collect();
    let levels: Vec<Vec<f32>> = spread
        .iter()
        .map(|v| v.iter().map(|x| (x * 3.0).round() / 3.0).collect())
        .collect();
    // Magnitudes 2 (three in ten) and 1, the k-th at the step between them: the bracket spans
    // both and holds every value.
    let edge: Vec<Vec<f32>> = spread
        .iter()
        .map(|v| {
            v.iter()
                .enumerate()
                .map(|(i, x)| x.signum() * if i % 10 < 3 { 2.0 } else { 1.0 })
                .collect()
        })
        .collect();
    let zero = vec![vec![0f32; n], spread[0].clone()];
    for (what, d) in [
        ("spread", spread),
        ("levels", levels),
        ("edge", edge),
        ("zero", zero),
    ] {
        let m = method("ties_sum", 2, &params(&[("k", "0.3")])).unwrap();
        let t = m
            .tensor("model.w", d.iter().map(|v| tensor(v, &[n])).collect())
            .unwrap();
        let got = read(&t, std::slice::from_ref(&(0..n)));
        let want = ties_ref(&d.iter().map(|v| f64s(v)).collect::<Vec<_>>(), 0.3);
        close(&got, &want, 1e-6, what);
    }
}
