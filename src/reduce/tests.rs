use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// Values held in memory, counting what is read and refusing ranges larger than a chunk.
struct Held {
    v: Vec<f32>,
    cols: usize,
    read: AtomicUsize,
}

impl Held {
    fn new(v: Vec<f32>, cols: usize) -> Self {
        Held {
            v,
            cols,
            read: AtomicUsize::new(0),
        }
    }
}

impl Values for Held {
    fn len(&self) -> usize {
        self.v.len()
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn read(&self, range: Range<usize>, out: &mut [f32], _: &mut Scratch) -> Result<()> {
        assert!(range.len() <= CHUNK, "a range of {} values", range.len());
        self.read.fetch_add(range.len(), Ordering::Relaxed);
        out.copy_from_slice(&self.v[range]);
        Ok(())
    }
}

/// Seeded values with a spread of magnitudes and signs.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let m = (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            m * [1e-3f32, 1.0, 30.0][(x % 3) as usize]
        })
        .collect()
}

fn run(h: &Held, others: &[&dyn Values], wants: &[Reduction]) -> Reduced {
    reduce(h, others, wants, &mut Scratch::default()).unwrap()
}

#[test]
fn one_pass_reductions_equal_direct_computation() {
    // Rows that fit a chunk several times, and rows longer than a chunk (cut inside the row).
    for (rows, cols) in [(300, 700), (3, CHUNK + 1000), (1, 5), (77, 1)] {
        let v = values(rows * cols, rows as u64);
        let w = values(rows * cols, 99);
        let (h, g) = (Held::new(v.clone(), cols), Held::new(w.clone(), cols));
        let r = run(
            &h,
            &[&g],
            &[
                Reduction::AbsMax,
                Reduction::RowAbsMax,
                Reduction::BlockAbsMax { block: 16 },
                Reduction::SumSquares,
                Reduction::Dot(0),
            ],
        );
        let amax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert_eq!(r.abs_max, Some(amax));
        let row_max: Vec<f32> = v
            .chunks(cols)
            .map(|r| r.iter().fold(0f32, |m, x| m.max(x.abs())))
            .collect();
        assert_eq!(r.row_abs_max.as_ref(), Some(&row_max));
        let blocks: Vec<f32> = v
            .chunks(cols)
            .flat_map(|r| {
                r.chunks(16)
                    .map(|b| b.iter().fold(0f32, |m, x| m.max(x.abs())))
            })
            .collect();
        assert_eq!(r.block_abs_max.as_ref(), Some(&blocks));
        let ss: f64 = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        let dot: f64 = v
            .iter()
            .zip(&w)
            .map(|(&a, &b)| f64::from(a) * f64::from(b))
            .sum();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        assert!(close(r.sum_squares.unwrap(), ss), "{rows}x{cols}");
        assert!(close(r.dots[0].unwrap(), dot), "{rows}x{cols}");
        // One read of each source.
        assert_eq!(h.read.load(Ordering::Relaxed), v.len());
        assert_eq!(g.read.load(Ordering::Relaxed), w.len());
    }
}

#[test]
fn a_nan_makes_the_maxima_nan_where_it_lies() {
    let mut v = values(64, 3);
    v[37] = f32::NAN;
    let r = run(
        &Held::new(v, 32),
        &[],
        &[
            Reduction::AbsMax,
            Reduction::RowAbsMax,
            Reduction::BlockAbsMax { block: 16 },
        ],
    );
    assert!(r.abs_max.unwrap().is_nan());
    let rows = r.row_abs_max.unwrap();
    assert!(!rows[0].is_nan() && rows[1].is_nan());
    let blocks = r.block_abs_max.unwrap();
    let nan: Vec<bool> = blocks.iter().map(|b| b.is_nan()).collect();
    assert_eq!(nan, [false, false, true, false]);
}

#[test]
fn the_kth_magnitude_is_exact_in_two_passes_of_bounded_memory() {
    let mut v = values(200_000, 7);
    v[5] = -0.0;
    v[6] = f32::INFINITY;
    let mut sorted: Vec<f32> = v.iter().map(|x| x.abs()).collect();
    sorted.sort_by(|a, b| b.total_cmp(a));
    for k in [1u64, 2, 3, 1000, 99_999, 199_999, 200_000] {
        let h = Held::new(v.clone(), 100);
        let r = run(&h, &[], &[Reduction::KthMagnitude(k)]);
        assert_eq!(
            r.kth_magnitude.unwrap().to_bits(),
            sorted[k as usize - 1].to_bits(),
            "k = {k}"
        );
        assert_eq!(h.read.load(Ordering::Relaxed), 2 * v.len(), "two passes");
    }
    // Ties count as they occur; NaN is the largest.
    let h = Held::new(vec![1.0, -2.0, 2.0, f32::NAN, 0.5], 1);
    assert!(run(&h, &[], &[Reduction::KthMagnitude(1)])
        .kth_magnitude
        .unwrap()
        .is_nan());
    for (k, want) in [(2, 2.0), (3, 2.0), (4, 1.0), (5, 0.5)] {
        let got = run(&h, &[], &[Reduction::KthMagnitude(k)]).kth_magnitude;
        assert_eq!(got, Some(want), "k = {k}");
    }
}

#[test]
fn impossible_requests_are_refused() {
    let h = Held::new(values(10, 1), 5);
    let mut s = Scratch::default();
    for wants in [
        vec![Reduction::KthMagnitude(0)],
        vec![Reduction::KthMagnitude(11)],
        vec![Reduction::Dot(0)],
        vec![Reduction::BlockAbsMax { block: 0 }],
    ] {
        assert!(reduce(&h, &[], &wants, &mut s).is_err(), "{wants:?}");
    }
    let short = Held::new(values(9, 1), 3);
    assert!(reduce(&h, &[&short], &[Reduction::Dot(0)], &mut s).is_err());
}

#[test]
fn chunks_cover_everything_and_never_cut_a_row_or_block() {
    for (n, cols, block) in [
        (1000, 10, 1),
        (CHUNK * 3 + 7, 1, 1),
        (2 * (CHUNK + 48), CHUNK + 48, 16),
    ] {
        let mut at = 0;
        for r in chunks(n, cols, block) {
            assert_eq!(r.start, at);
            assert!(r.len() <= CHUNK && !r.is_empty());
            if cols <= CHUNK {
                assert_eq!(r.start % cols, 0);
            } else {
                assert_eq!(r.start / cols, (r.end - 1) / cols, "one row");
                assert_eq!(r.start % cols % block, 0);
            }
            at = r.end;
        }
        assert_eq!(at, n);
    }
}
