//! Whole-tensor merge methods as expression nodes: what a method needs of its operands before
//! it produces values, and how it then produces them range by range.
//!
//! A method ([`TensorMethod`]) declares [`Needs`]: vectors (linear combinations of its
//! operands, `x₁ − x₀` for a task vector, optionally thinned by a seeded [`Dropout`]), the Gram
//! matrix of those vectors (norms, dot products, cosines), the k-th largest magnitude of some of
//! them, the ordinal ranks of their magnitudes over the whole tensor (sd-mecha's DELLA), and an
//! alignment when a value depends on whole runs of elements (sd-mecha's model stock takes
//! cosines along the last dimension). The engine computes the [`Facts`] once per output
//! tensor (`offload::method`), in passes of bounded size over the operands, hands them to
//! [`TensorMethod::prepare`], which turns them into a few scalars, and then evaluates output
//! ranges elementwise with [`TensorMethod::apply`], fused with the cast as any merge is.

use std::fmt;
use std::sync::Arc;

use crate::error::Result;

/// A linear combination of a method's operands, `Σ cᵢ·xᵢ` computed in f32 term by term in order
/// (`1·x₁ + (−1)·x₀` is `x₁ − x₀` exactly), each element then kept or dropped by `dropout`.
#[derive(Debug, Clone, PartialEq)]
pub struct Vector {
    /// `(operand index, coefficient)`, in order.
    pub terms: Vec<(usize, f32)>,
    /// Elements dropped at random (DARE), when set.
    pub dropout: Option<Dropout>,
    /// The ordinal ranks of this vector's magnitudes (before its dropout) over the whole tensor,
    /// which a dropout with [`Dropout::eps`] ≠ 0 draws by (sd-mecha's DELLA): the engine sets
    /// them from [`Facts::ranks`] when [`Needs::ranks`] asks for them.
    pub ranks: Option<Arc<Ranks>>,
}

impl Vector {
    /// Operand `i` itself.
    pub fn operand(i: usize) -> Vector {
        Vector {
            terms: vec![(i, 1.0)],
            dropout: None,
            ranks: None,
        }
    }

    /// `x_i − x_base`.
    pub fn difference(i: usize, base: usize) -> Vector {
        Vector {
            terms: vec![(i, 1.0), (base, -1.0)],
            dropout: None,
            ranks: None,
        }
    }

    /// The values of elements `first..first + out.len()` from the operands' values over the
    /// same elements: [`Vector::at`] for each, computed a term at a time over the whole range.
    pub fn fill(&self, operands: &[&[f32]], first: usize, out: &mut [f32]) {
        let len = out.len();
        let mut from = 0;
        // `x_i − x_base` (and `x_i + c·x_k`) in one loop instead of a copy and a second pass.
        if let [(a, 1.0), (b, c)] = self.terms[..] {
            add_scaled(out, &operands[a][..len], &operands[b][..len], c);
            from = 2;
        }
        for (n, &(i, c)) in self.terms.iter().enumerate().skip(from) {
            let x = &operands[i][..out.len()];
            match (n, c == 1.0) {
                (0, true) => out.copy_from_slice(x),
                (0, false) => out.iter_mut().zip(x).for_each(|(o, &v)| *o = c * v),
                (_, true) => out.iter_mut().zip(x).for_each(|(o, &v)| *o += v),
                (_, false) => out.iter_mut().zip(x).for_each(|(o, &v)| *o += c * v),
            }
        }
        if self.terms.is_empty() {
            out.fill(0.0);
        }
        if self.dropout.is_some() {
            for (j, o) in out.iter_mut().enumerate() {
                if !self.keeps(first + j) {
                    *o = 0.0;
                }
            }
        }
    }

    /// Whether element `element` survives the dropout (always, without one): with
    /// [`Dropout::eps`] ≠ 0, at the probability of its magnitude's rank ([`Dropout::ranked`]).
    pub fn keeps(&self, element: usize) -> bool {
        match &self.dropout {
            None => true,
            Some(d) if d.eps == 0.0 => d.keeps(element),
            Some(d) => {
                debug_assert!(self.ranks.is_some(), "a DELLA dropout without ranks");
                let (rank, n) = match &self.ranks {
                    Some(r) => (r.get(element), r.n),
                    None => (None, 0),
                };
                d.keeps_with(element, d.ranked(rank, n))
            }
        }
    }

    /// Element `j`'s value from the operands' values at `j`.
    pub fn at(&self, operands: &[&[f32]], j: usize, element: usize) -> f32 {
        if !self.keeps(element) {
            return 0.0;
        }
        let mut v = 0f32;
        for (n, &(i, c)) in self.terms.iter().enumerate() {
            let x = operands[i][j];
            let t = if c == 1.0 { x } else { c * x };
            v = if n == 0 { t } else { v + t };
        }
        v
    }
}

/// `out = x + c·y` (`x + y` when c is 1, as [`Vector::fill`] adds a term), in the widest vectors
/// the CPU has (compiled for AVX2 and for the baseline).
fn add_scaled(out: &mut [f32], x: &[f32], y: &[f32], c: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, the only feature the function is compiled for.
        return unsafe { add_scaled_avx2(out, x, y, c) };
    }
    add_scaled_lanes(out, x, y, c);
}

/// [`add_scaled_lanes`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_scaled_avx2(out: &mut [f32], x: &[f32], y: &[f32], c: f32) {
    add_scaled_lanes(out, x, y, c);
}

/// [`add_scaled`] in whichever lanes the function it is inlined into is compiled for.
#[inline(always)]
fn add_scaled_lanes(out: &mut [f32], x: &[f32], y: &[f32], c: f32) {
    let pairs = out.iter_mut().zip(x.iter().zip(y));
    match c == 1.0 {
        true => pairs.for_each(|(o, (&p, &q))| *o = p + q),
        false => pairs.for_each(|(o, (&p, &q))| *o = p + c * q),
    }
}

/// A counter-based dropout mask: element `e` is kept with probability `keep`, decided by a hash
/// of `(seed, stream, e)` alone, so the mask does not depend on the ranges the writer asks for,
/// the number of threads, or the order tensors are written in. It is not torch's generator: the
/// same seed gives the same file with this tool, not the same mask as sd-mecha.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    /// The user's seed.
    pub seed: u64,
    /// What sets this mask apart from others of the same seed (the tensor's key and the model).
    pub stream: u64,
    /// The probability that an element is kept, in `[0, 1]`.
    pub keep: f64,
    /// sd-mecha's `della_eps`: how far the keep probability moves with the element's magnitude
    /// rank over the whole tensor ([`Dropout::ranked`]); 0 for DARE's uniform `keep`.
    pub eps: f64,
}

impl Dropout {
    /// Whether element `element` is kept, at probability [`Dropout::keep`].
    pub fn keeps(&self, element: usize) -> bool {
        self.keeps_with(element, self.keep)
    }

    /// Whether element `element` is kept at probability `keep`: the same uniform draw as
    /// [`Dropout::keeps`], so that `eps = 0` is DARE's mask exactly.
    pub fn keeps_with(&self, element: usize, keep: f64) -> bool {
        let h = mix(mix(self.seed ^ mix(self.stream)) ^ element as u64);
        // 53 random bits as a uniform number in [0, 1).
        let u = (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        u < keep
    }

    /// sd-mecha's DELLA keep probability (`find_della_dropout`) of the element of ordinal
    /// magnitude rank `rank` (1-based) among `n`: `clamp(keep + eps·(rank/n − (n + 1)/2n), 0, 1)`;
    /// [`Dropout::keep`] without a rank (a tensor with a NaN value: scipy's `rankdata` ranks
    /// every element NaN, which sd-mecha's `nan_to_num` makes no offset).
    pub fn ranked(&self, rank: Option<u32>, n: usize) -> f64 {
        let offset = match rank {
            Some(r) if n > 0 => {
                let n = n as f64;
                (f64::from(r) / n - (n + 1.0) / (2.0 * n)) * self.eps
            }
            _ => 0.0,
        };
        (self.keep + offset).clamp(0.0, 1.0)
    }
}

/// The ordinal ranks of a vector's magnitudes over a whole tensor, as scipy's
/// `rankdata(|v|, method="ordinal")` numbers them: 1 for the smallest, ties (`-0.0` and `0.0`
/// included) in order of position.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ranks {
    /// How many elements were ranked (the tensor's).
    pub n: usize,
    /// `rank[e]`, element `e`'s rank; empty when a value is NaN (scipy's `rankdata` then ranks
    /// every element NaN).
    pub rank: Vec<u32>,
}

impl Ranks {
    /// Element `element`'s rank (`None` for a tensor with a NaN value).
    pub fn get(&self, element: usize) -> Option<u32> {
        self.rank.get(element).copied()
    }
}

/// SplitMix64's finalizer: a bijection of u64 whose outputs pass statistical tests of
/// independence for consecutive inputs.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What a method needs of its operands before the first output value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Needs {
    /// The vectors the facts are about.
    pub vectors: Vec<Vector>,
    /// The Gram matrix of all of `vectors` (one read of the operands, accumulated in f64).
    pub gram: bool,
    /// `(vector, k)`: the k-th largest magnitude of that vector (two reads of its operands).
    pub kth: Vec<(usize, u64)>,
    /// Vectors whose magnitudes' ordinal ranks over the whole tensor the method needs (one read
    /// of its operands each): held, 4 bytes per element, while the tensor's values are
    /// produced, and set on those vectors ([`Vector::ranks`]) for the other facts.
    pub ranks: Vec<usize>,
    /// Output elements are produced in whole runs of this many (1: elementwise).
    pub align: usize,
    /// How many vectors the method derives itself from the operands and the facts above
    /// ([`TensorMethod::derive`]: TIES's filtered deltas, which depend on the k-th magnitudes
    /// and on a sign elected across the operands); their Gram matrix is computed in one more
    /// read of the operands, after the other facts.
    pub derived: usize,
}

impl Needs {
    /// Nothing: an elementwise method.
    pub fn elementwise() -> Needs {
        Needs {
            align: 1,
            ..Needs::default()
        }
    }

    /// Whether the operands are read before the values are (a whole-tensor method).
    pub fn reads_ahead(&self) -> bool {
        self.gram || !self.kth.is_empty() || self.derived > 0 || !self.ranks.is_empty()
    }
}

/// What the engine computed of [`Needs`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// How many vectors the Gram matrix is of.
    pub vectors: usize,
    /// `gram[i · n + j]` = `vᵢ · vⱼ` over the `n` vectors (empty when not asked for); a NaN or
    /// ±Inf value in a vector makes its entries non-finite.
    pub gram: Vec<f64>,
    /// The k-th magnitudes, in the order [`Needs::kth`] asks for them.
    pub kth: Vec<f32>,
    /// The ranks, in the order [`Needs::ranks`] asks for them.
    pub ranks: Vec<Arc<Ranks>>,
    /// How many derived vectors ([`Needs::derived`]) `derived_gram` is of.
    pub derived: usize,
    /// `derived_gram[i · n + j]` = `dᵢ · dⱼ` over the `n` derived vectors (empty when none).
    pub derived_gram: Vec<f64>,
}

impl Facts {
    /// `vᵢ · vⱼ`.
    pub fn dot(&self, i: usize, j: usize) -> f64 {
        self.gram[i * self.vectors + j]
    }

    /// `dᵢ · dⱼ` of the derived vectors.
    pub fn derived_dot(&self, i: usize, j: usize) -> f64 {
        self.derived_gram[i * self.derived + j]
    }
}

/// A merge method over whole tensors (see the [module docs](self)).
pub trait TensorMethod: Send + Sync + fmt::Debug {
    /// The method's name, for messages.
    fn name(&self) -> &str;

    /// What it needs of the operands of a tensor of `shape`.
    fn needs(&self, shape: &[usize]) -> Needs;

    /// The scalars [`TensorMethod::apply`] takes, from the facts.
    ///
    /// # Errors
    /// A method may refuse a tensor whose facts make it undefined.
    fn prepare(&self, facts: &Facts) -> Result<Vec<f64>>;

    /// The [`Needs::derived`] vectors over elements `first..first + out[i].len()`, from the
    /// operands' values over the same elements and the facts computed so far (all but
    /// `derived_gram`); `first` is a multiple of [`Needs::align`]. A method that derives no
    /// vectors leaves this as it is: it is never called then.
    fn derive(&self, facts: &Facts, first: usize, operands: &[&[f32]], out: &mut [Vec<f32>]) {
        let _ = (facts, first, operands, out);
    }

    /// Output elements `first..first + out.len()` from the operands' values over the same
    /// elements (`operands[i]` for operand `i`) and the ranks [`Needs::ranks`] asked for (in
    /// that order; empty when none); `first` and `out.len()` are multiples of [`Needs::align`]
    /// (or `out` ends the tensor).
    fn apply(
        &self,
        scalars: &[f64],
        ranks: &[Arc<Ranks>],
        first: usize,
        operands: &[&[f32]],
        out: &mut [f32],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vector_filled_over_a_range_is_its_elements_one_by_one() {
        let x: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let y: Vec<f32> = (0..100).map(|i| (i as f32 * 0.11).cos()).collect();
        let ops = [x.as_slice(), y.as_slice()];
        let mut v = Vector::difference(1, 0);
        v.terms.push((0, 0.25));
        v.dropout = Some(Dropout {
            seed: 3,
            stream: 9,
            keep: 0.5,
            eps: 0.0,
        });
        let mut out = vec![0f32; 60];
        let views: Vec<&[f32]> = ops.iter().map(|o| &o[40..]).collect();
        v.fill(&views, 40, &mut out);
        for (j, o) in out.iter().enumerate() {
            assert_eq!(o.to_bits(), v.at(&views, j, 40 + j).to_bits());
        }
        let kept = out.iter().filter(|o| **o != 0.0).count();
        assert!((15..=45).contains(&kept), "{kept}");
    }

    #[test]
    fn a_dropout_mask_depends_on_seed_stream_and_element_only() {
        let d = |seed, stream| Dropout {
            seed,
            stream,
            keep: 0.3,
            eps: 0.0,
        };
        let mask = |d: Dropout| (0..10_000).map(|e| d.keeps(e)).collect::<Vec<_>>();
        assert_eq!(mask(d(1, 2)), mask(d(1, 2)));
        assert_ne!(mask(d(1, 2)), mask(d(2, 2)));
        assert_ne!(mask(d(1, 2)), mask(d(1, 3)));
        let kept = mask(d(1, 2)).iter().filter(|k| **k).count();
        // Binomial(10000, 0.3): σ ≈ 46.
        assert!((2_800..=3_200).contains(&kept), "{kept}");
    }
}
