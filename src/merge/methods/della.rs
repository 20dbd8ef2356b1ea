//! DELLA (mergekit's `della`, Deep et al. 2024, "DELLA-Merging"): each task vector `mᵢ − base`
//! keeps an element with a probability that grows with its magnitude's rank within its row,
//! kept values are rescaled by 1/that probability, then TIES's sign election and disjoint mean,
//! times `lambda`, added to the base.
//!
//! Per row of `n` elements (a 2-D weight's rows, as mergekit ranks them; a 1-D tensor is one
//! row; a convolution's rows are its output channels, each over all its input channels and
//! kernel positions — mergekit ranks those along the input channels alone), the element of
//! ordinal rank `r` (1 = smallest magnitude, ties by position) keeps with probability
//! `pᵣ = density − ε + 2ε·(r − 1)/(n − 1)`, in `[density − ε, density + ε]` (mergekit's
//! `della_magprune`; its rank normalisation). The masks are this tool's seeded counter-based
//! generator's ([`Dropout`]), not torch's: the same seed gives the same file.

use crate::model::tensor::method::{Dropout, Vector};

/// DELLA's parameters.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Della {
    pub(super) density: f64,
    pub(super) epsilon: f64,
    pub(super) lambda: f64,
    pub(super) seed: i64,
    pub(super) rescale: bool,
}

impl Della {
    /// The output over rows of `row` elements starting at element `first` (a multiple of
    /// `row`): `deltas` are the task vectors with their masks' streams, `x[0]` the base.
    pub(super) fn apply(
        &self,
        deltas: &[(Vector, Dropout)],
        row: usize,
        first: usize,
        x: &[&[f32]],
        out: &mut [f32],
    ) {
        let m = deltas.len();
        let row = row.max(1);
        let mut d: Vec<Vec<f32>> = vec![vec![0f32; row]; m];
        let mut order: Vec<usize> = Vec::with_capacity(row);
        for start in (0..out.len()).step_by(row) {
            let end = (start + row).min(out.len());
            let len = end - start;
            let xs: Vec<&[f32]> = x.iter().map(|o| &o[start..end]).collect();
            for ((v, mask), dv) in deltas.iter().zip(d.iter_mut()) {
                v.fill(&xs, first + start, &mut dv[..len]);
                self.prune(*mask, &mut dv[..len], &mut order, first + start);
            }
            for j in 0..len {
                let mut sum = 0f32;
                for dv in &d {
                    sum += dv[j];
                }
                // mergekit's "sum" consensus: the sign of the sum of the kept, rescaled values.
                let elected = sign(sum);
                let (mut s, mut count) = (0f32, 0f32);
                for dv in &d {
                    if sign(dv[j]) == elected && elected != 0.0 {
                        s += dv[j];
                        count += 1.0;
                    }
                }
                let r = if count > 0.0 { s / count } else { 0.0 };
                let base = x[0][start + j];
                out[start + j] = base + r * self.lambda as f32;
            }
        }
    }

    /// Drops elements of one row `d` (elements `first…`) by magnitude rank, rescaling the kept.
    fn prune(&self, mask: Dropout, d: &mut [f32], order: &mut Vec<usize>, first: usize) {
        if self.density >= 1.0 {
            return;
        }
        let n = d.len();
        order.clear();
        order.extend(0..n);
        // Ordinal ranks by magnitude, ties by position (a stable sort).
        order.sort_by(|&i, &j| d[i].abs().total_cmp(&d[j].abs()));
        let span = (n - 1).max(1) as f64;
        for (rank, &i) in order.iter().enumerate() {
            let p = self.keep(rank as f64 / span);
            let kept = Dropout { keep: p, ..mask }.keeps(first + i);
            d[i] = match (kept, self.rescale) {
                (false, _) => 0.0,
                (true, true) => (f64::from(d[i]) / p) as f32,
                (true, false) => d[i],
            };
        }
    }

    /// The keep probability at normalized rank `t` in [0, 1].
    fn keep(&self, t: f64) -> f64 {
        if self.density >= 1.0 {
            return 1.0;
        }
        (self.density - self.epsilon + 2.0 * self.epsilon * t).clamp(0.0, 1.0)
    }
}

/// `torch.sign`.
fn sign(x: f32) -> f32 {
    f32::from(u8::from(x > 0.0)) - f32::from(u8::from(x < 0.0))
}
