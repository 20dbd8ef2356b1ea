//! A LoRA's product added into a range of weights, without a full-size difference or any
//! allocation: `w[i, j] += s · Σ_k up[i, k] · down[k, j]` for the rows and columns a range
//! covers, the product accumulated in f32 (in `k` order, fused multiply-adds) and rounded, then
//! scaled, then added, as ComfyUI computes `weight += (s · (up @ down))`.
//!
//! `down` is packed once per LoRA module into panels of 16 columns (`[panel][k][16]`, the last
//! one padded with zeros), so a tile reads it sequentially. Tiles of 6 rows × 16 columns keep
//! their sums in registers while the rank is walked (the classic 6×16 AVX2 micro-kernel: 12
//! accumulators, 2 loads and 6 broadcasts per step): the work is bound by arithmetic, not by
//! memory. On x86 with AVX2+FMA (detected at run time) tiles take that kernel; tiles of fewer
//! rows, and other CPUs, take the same arithmetic in portable code.

/// Rows and columns of a tile.
const ROWS: usize = 6;
const COLS: usize = 16;
/// A tile's sums.
type Sums = [[f32; COLS]; ROWS];

/// `down [rank, cols]`, packed in panels of 16 columns.
pub(super) struct Packed {
    panels: Vec<f32>,
    rank: usize,
    cols: usize,
}

impl Packed {
    /// Packs row-major `down` of `rank` rows.
    pub(super) fn new(down: &[f32], rank: usize) -> Packed {
        let cols = down.len().checked_div(rank).unwrap_or(0);
        let n = cols.div_ceil(COLS);
        let mut panels = vec![0f32; n * rank * COLS];
        for p in 0..n {
            for k in 0..rank {
                let c = p * COLS;
                let w = (cols - c).min(COLS);
                let at = (p * rank + k) * COLS;
                panels[at..at + w].copy_from_slice(&down[k * cols + c..k * cols + c + w]);
            }
        }
        Packed { panels, rank, cols }
    }

    /// Panel `p`: `rank` rows of 16 columns.
    fn panel(&self, p: usize) -> &[f32] {
        &self.panels[p * self.rank * COLS..(p + 1) * self.rank * COLS]
    }
}

/// A tile's sums: rows `r..r + nr` of `up` (`[.., rank]`) by one panel of `down`.
type Kernel = fn(&[f32], &[f32], usize, usize, usize) -> Sums;

/// The product of `up` (`[.., rank]` row-major) and `down`: elements `first..first + out.len()`
/// of the row-major matrix they make, scaled by `s` and added into `out`. Tiles are laid from
/// row 0, so a range that starts on a multiple of 6 rows is covered by whole tiles; a tile's
/// rows outside the range are computed, not written.
pub(super) fn add_product(out: &mut [f32], first: usize, up: &[f32], down: &Packed, s: f32) {
    let (rank, cols) = (down.rank, down.cols);
    if out.is_empty() || cols == 0 || rank == 0 {
        return;
    }
    let (full, edge) = kernels();
    let rows = up.len() / rank;
    let end = first + out.len();
    let (row0, row1) = (first / cols / ROWS * ROWS, end.div_ceil(cols));
    let mut r = row0;
    while r < row1 {
        let nr = (rows - r).min(ROWS);
        let kernel = if nr == ROWS { full } else { edge };
        for p in 0..cols.div_ceil(COLS) {
            let acc = kernel(up, down.panel(p), rank, r, nr);
            let c = p * COLS;
            let nc = (cols - c).min(COLS);
            // Write back the tile's elements that lie inside the range.
            for (i, row) in acc.iter().enumerate().take(nr) {
                let base = (r + i) * cols + c;
                let (j0, j1) = (first.max(base), end.min(base + nc));
                if j0 < j1 {
                    let dst = &mut out[j0 - first..j1 - first];
                    for (o, v) in dst.iter_mut().zip(&row[j0 - base..j1 - base]) {
                        *o += s * v;
                    }
                }
            }
        }
        r += nr;
    }
}

/// The kernels this CPU runs best: for tiles of 6 rows, and of fewer. (An AVX-512 kernel of
/// 12 rows × 16 columns was tried and measured no faster on the build machine.)
fn kernels() -> (Kernel, Kernel) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return (
                // SAFETY (both): AVX2 and FMA were detected just above; `add_product` only
                // asks for rows inside `up` and whole panels.
                |up, panel, rank, r, _| unsafe { x86::tile(up, panel, rank, r) },
                |up, panel, rank, r, nr| unsafe { x86::edge(up, panel, rank, r, nr) },
            );
        }
    }
    (portable_tile, portable_tile)
}

/// One tile of `nr ≤ 6` rows in portable code, with fused multiply-adds in `k` order, as the
/// fast kernel computes it.
#[inline(always)]
fn portable_tile(up: &[f32], panel: &[f32], rank: usize, r: usize, nr: usize) -> Sums {
    let mut acc: Sums = [[0f32; COLS]; ROWS];
    for k in 0..rank {
        let d = &panel[k * COLS..(k + 1) * COLS];
        for (i, row) in acc.iter_mut().enumerate().take(nr) {
            let a = up[(r + i) * rank + k];
            for (x, y) in row.iter_mut().zip(d) {
                *x = a.mul_add(*y, *x);
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m256, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_ps,
        _mm256_storeu_ps,
    };

    use super::{portable_tile, Sums, COLS, ROWS};

    /// A tile of fewer than 6 rows: the portable loops, compiled with FMA so `mul_add` is one
    /// instruction.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn edge(up: &[f32], panel: &[f32], rank: usize, r: usize, nr: usize) -> Sums {
        portable_tile(up, panel, rank, r, nr)
    }

    /// The 6-row tile at row `r`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile(up: &[f32], panel: &[f32], rank: usize, r: usize) -> Sums {
        assert!((r + ROWS) * rank <= up.len() && rank * COLS <= panel.len());
        let mut acc: [[__m256; 2]; ROWS] = [[_mm256_setzero_ps(); 2]; ROWS];
        let (u, d) = (up.as_ptr(), panel.as_ptr());
        for k in 0..rank {
            // SAFETY: in bounds by the assertion above.
            let (d0, d1) = unsafe {
                (
                    _mm256_loadu_ps(d.add(k * COLS)),
                    _mm256_loadu_ps(d.add(k * COLS + 8)),
                )
            };
            for (i, a) in acc.iter_mut().enumerate() {
                // SAFETY: in bounds by the assertion above.
                let b = _mm256_set1_ps(unsafe { *u.add((r + i) * rank + k) });
                a[0] = _mm256_fmadd_ps(b, d0, a[0]);
                a[1] = _mm256_fmadd_ps(b, d1, a[1]);
            }
        }
        let mut out: Sums = [[0f32; COLS]; ROWS];
        for (o, a) in out.iter_mut().zip(&acc) {
            // SAFETY: each row of `out` holds 16 floats.
            unsafe {
                _mm256_storeu_ps(o.as_mut_ptr(), a[0]);
                _mm256_storeu_ps(o.as_mut_ptr().add(8), a[1]);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(up: &[f32], down: &[f32], rank: usize, cols: usize) -> Vec<f64> {
        let rows = up.len() / rank;
        let mut p = vec![0f64; rows * cols];
        for i in 0..rows {
            for k in 0..rank {
                for j in 0..cols {
                    p[i * cols + j] += up[i * rank + k] as f64 * down[k * cols + j] as f64;
                }
            }
        }
        p
    }

    #[test]
    fn every_range_gets_exactly_its_elements_of_the_product() {
        let (rows, rank, cols) = (13, 3, 70);
        let up: Vec<f32> = (0..rows * rank)
            .map(|i| (i % 7) as f32 * 0.25 - 0.5)
            .collect();
        let down: Vec<f32> = (0..rank * cols)
            .map(|i| (i % 11) as f32 * 0.125 - 0.6)
            .collect();
        let p = reference(&up, &down, rank, cols);
        let packed = Packed::new(&down, rank);
        for (first, len) in [
            (0, rows * cols),
            (5, 1),
            (69, 2),
            (70, 70),
            (13, 500),
            (840, 70),
        ] {
            let mut out = vec![1f32; len];
            add_product(&mut out, first, &up, &packed, 0.5);
            for (i, got) in out.iter().enumerate() {
                let want = 1.0 + 0.5 * p[first + i];
                assert!(
                    (*got as f64 - want).abs() < 1e-5,
                    "{first}+{i}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn the_fast_kernel_is_the_portable_one() {
        let (rank, cols) = (32, 48);
        let up: Vec<f32> = (0..2 * ROWS * rank)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let down: Vec<f32> = (0..rank * cols)
            .map(|i| ((i * 53) % 97) as f32 / 40.0 - 1.2)
            .collect();
        let packed = Packed::new(&down, rank);
        let (full, edge) = kernels();
        for p in 0..3 {
            let panel = packed.panel(p);
            // Both accumulate in k order with fused multiply-adds: the same bits.
            for r in [0, ROWS] {
                let slow = portable_tile(&up, panel, rank, r, ROWS);
                assert_eq!(
                    full(&up, panel, rank, r, ROWS),
                    slow,
                    "rows {r}.., panel {p}"
                );
                assert_eq!(
                    edge(&up, panel, rank, r, 5)[..5],
                    slow[..5],
                    "edge, panel {p}"
                );
            }
        }
    }
}
