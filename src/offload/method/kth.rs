//! The k-th largest magnitude of a method's vectors (TIES's and DARE's `k`), exact.
//!
//! Magnitudes are compared by their f32 bit patterns with the sign cleared, which order as the
//! magnitudes do (NaN patterns above Inf). A tensor first has a bracket of the answer estimated
//! from a sample (a run of 1/[`SAMPLE_PART`] of every chunk), then one pass over all of it counts
//! the values above the bracket and keeps those inside it, and the answer is selected among
//! those: one read of the operands, plus the sample's (split over two threads for a large
//! tensor, eight values at a time in AVX2 where the CPU has it). Where the sample misled (the
//! answer falls outside the bracket, or the bracket holds too many values), and for small
//! tensors, two passes of radix counting find it instead: the top 16 bits, then the low 16 bits
//! of the values in the bucket that holds it. Either way the result is the exact k-th value.

use std::ops::Range;

use super::{chunks, each_range, used_operands, Scratch};
use crate::error::{Error, Result};
use crate::model::tensor::method::Vector;
use crate::model::Merged;
use crate::reduce::{select, CHUNK};

/// The sample is a run of 1/this of every chunk.
const SAMPLE_PART: usize = 16;

/// Tensors of fewer chunks than this take the two counting passes (too few values for a
/// sample to bracket the rank narrowly).
const SAMPLE_MIN_CHUNKS: usize = 4;

/// Values of each picked vector made and counted at a time (16 KiB: they stay in L1).
const RUN: usize = 4 << 10;

/// Values counted before the bracket's are looked for among them (most groups hold none).
const GROUP: usize = 8;

/// Tensors of at least this many chunks have their bracket pass split over two threads.
const SPLIT_CHUNKS: usize = 16;

/// The most values a bracket may hold, as a fraction of the tensor (1/`MAX_KEPT_PART`).
const MAX_KEPT_PART: usize = 16;

/// The k-th largest magnitude of each `(vector, k)` of `wants`, exact, for `m`'s `n` values.
///
/// # Errors
/// A vector or rank that does not exist; read errors of the operands.
pub(super) fn magnitudes(
    m: &Merged,
    vectors: &[Vector],
    wants: &[(usize, u64)],
    n: usize,
    scratch: &mut Scratch,
) -> Result<Vec<f32>> {
    let mut picked = Vec::with_capacity(wants.len());
    for &(v, k) in wants {
        let vector = vectors.get(v).ok_or_else(|| {
            Error::InvalidInput(format!(
                "a k-th magnitude of vector {v} of {}",
                vectors.len()
            ))
        })?;
        if k == 0 || k > n as u64 {
            return Err(Error::InvalidInput(format!(
                "the {k}-th largest magnitude of {n} values does not exist"
            )));
        }
        picked.push(vector.clone());
    }
    let used = used_operands(&picked);
    let ranks: Vec<u64> = wants.iter().map(|&(_, k)| k).collect();
    let mut pass = Pass {
        m,
        used: &used,
        picked: &picked,
        n,
        buf: vec![0f32; RUN.min(n).max(1)],
    };
    if n.div_ceil(CHUNK) >= SAMPLE_MIN_CHUNKS {
        if let Some(found) = by_bracket(&mut pass, &ranks, scratch)? {
            return Ok(found);
        }
    }
    by_counting(&mut pass, &ranks, scratch)
}

/// The sign-cleared bit pattern of a value.
fn magnitude(v: f32) -> u32 {
    v.to_bits() & 0x7FFF_FFFF
}

/// A bracket `[low, high]` of bit patterns around each rank from a sample of the chunks, then
/// one pass that counts the values above it and keeps those in it; `None` when any rank falls
/// outside its bracket or a bracket holds too many values.
fn by_bracket(
    pass: &mut Pass<'_>,
    ranks: &[u64],
    scratch: &mut Scratch,
) -> Result<Option<Vec<f32>>> {
    let n = pass.n;
    // One buffer per vector, reused: the sample's magnitudes, then those in the bracket.
    let mut samples = std::mem::take(&mut scratch.method.kept);
    samples.resize_with(ranks.len(), Vec::new);
    samples.iter_mut().for_each(Vec::clear);
    pass.run(sample_ranges(n, CHUNK), scratch, |w, values| {
        samples[w].extend(values.iter().map(|&v| magnitude(v)));
        true
    })?;
    let brackets: Vec<(u32, u32)> = samples
        .iter_mut()
        .zip(ranks)
        .map(|(s, &k)| bracket(s, k, n))
        .collect();
    let mut kept = samples;
    kept.iter_mut().for_each(Vec::clear);
    let limit = n / MAX_KEPT_PART + 1;
    let ranges: Vec<Range<usize>> = chunks(n, CHUNK).collect();
    // Inside the writer's pool (its workers and the prefetcher), only when it has two or more
    // workers: `--threads 1` keeps to one thread of work.
    let cores = rayon::current_thread_index().is_none() || rayon::current_num_threads() > 2;
    let counted = if ranges.len() >= SPLIT_CHUNKS && cores {
        // Half the chunks on a second thread: the facts of a large tensor are on the writers'
        // critical path (they wait for them), and the second core is often idle meanwhile.
        let (first, second) = ranges.split_at(ranges.len() / 2);
        let mut other = Pass {
            buf: vec![0f32; pass.buf.len()],
            ..*pass
        };
        let brackets = &brackets;
        let (a, b) = std::thread::scope(|s| {
            let helper = std::thread::Builder::new()
                .stack_size(super::super::EVAL_STACK)
                .spawn_scoped(s, move || {
                    let mut own = Scratch::default();
                    count_chunks(&mut other, second, brackets, limit, Vec::new(), &mut own)
                });
            let a = count_chunks(pass, first, brackets, limit, kept, scratch);
            let b = match helper {
                Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                Err(e) => Err(Error::io("starting a thread for a k-th magnitude", e)),
            };
            (a, b)
        });
        a?.join(b?, limit)
    } else {
        count_chunks(pass, &ranges, &brackets, limit, kept, scratch)?
    };
    let Counted {
        above,
        equal,
        mut kept,
        overflow,
    } = counted;
    let found = match overflow {
        true => None,
        false => select_in_brackets(&mut kept, ranks, &brackets, &above, &equal),
    };
    scratch.method.kept = kept;
    Ok(found)
}

/// What the bracket pass counts over some chunks, per vector.
struct Counted {
    /// Values above the bracket.
    above: Vec<u64>,
    /// Values equal to a bracket of one pattern.
    equal: Vec<u64>,
    /// The magnitudes in the bracket.
    kept: Vec<Vec<u32>>,
    /// A bracket held more than its limit (the pass stopped).
    overflow: bool,
}

impl Counted {
    /// Both counts together.
    fn join(mut self, other: Counted, limit: usize) -> Counted {
        for (w, k) in other.kept.into_iter().enumerate() {
            self.above[w] += other.above[w];
            self.equal[w] += other.equal[w];
            self.kept[w].extend_from_slice(&k);
        }
        let over = self.kept.iter().any(|k| k.len() > limit);
        self.overflow |= other.overflow || over;
        self
    }
}

/// The bracket pass over `ranges`: counts the values above each vector's bracket and keeps
/// those in it (into `kept`, one cleared buffer per vector or none), until a bracket holds more
/// than `limit`.
fn count_chunks(
    pass: &mut Pass<'_>,
    ranges: &[Range<usize>],
    brackets: &[(u32, u32)],
    limit: usize,
    mut kept: Vec<Vec<u32>>,
    scratch: &mut Scratch,
) -> Result<Counted> {
    let vectors = brackets.len();
    kept.resize_with(vectors, Vec::new);
    let mut above = vec![0u64; vectors];
    // A bracket of one bit pattern (a tensor of equal values, zero differences) only counts.
    let mut equal = vec![0u64; vectors];
    let mut overflow = false;
    pass.run(ranges.iter().cloned(), scratch, |w, values| {
        let (low, high) = brackets[w];
        if low == high {
            let mut count = (0u32, 0u32);
            for &v in values {
                let b = magnitude(v);
                count.0 += u32::from(b > high);
                count.1 += u32::from(b == high);
            }
            above[w] += u64::from(count.0);
            equal[w] += u64::from(count.1);
            return true;
        }
        let span = high.wrapping_sub(low);
        let kept = &mut kept[w];
        let count = count_bracket(values, low, span, high, kept);
        above[w] += u64::from(count);
        // Too many in the bracket: the counting passes will do better than this one.
        overflow = kept.len() > limit;
        !overflow
    })?;
    Ok(Counted {
        above,
        equal,
        kept,
        overflow,
    })
}

/// The k-th largest magnitude for each of `ranks` from the values `kept` in its bracket and the
/// counts `above` it (`equal` to it for a bracket of one pattern); `None` when a rank falls
/// outside its bracket.
fn select_in_brackets(
    kept: &mut [Vec<u32>],
    ranks: &[u64],
    brackets: &[(u32, u32)],
    above: &[u64],
    equal: &[u64],
) -> Option<Vec<f32>> {
    let mut found = Vec::with_capacity(ranks.len());
    for (w, (inside, &k)) in kept.iter_mut().zip(ranks).enumerate() {
        let over = above[w];
        let (low, high) = brackets[w];
        if low == high {
            match k > over && k <= over + equal[w] {
                true => found.push(f32::from_bits(low)),
                false => return None,
            }
            continue;
        }
        // The k-th largest is the (k − over)-th largest of the bracket's values.
        let r = k
            .checked_sub(over)
            .filter(|&r| r >= 1 && r <= inside.len() as u64)?;
        let at = inside.len() - r as usize;
        let (_, &mut bits, _) = inside.select_nth_unstable(at);
        found.push(f32::from_bits(bits));
    }
    Some(found)
}

/// How many of `values` have magnitudes above `high`; those in the bracket `low..=low + span`
/// are appended to `kept`. In the widest vectors the CPU has (compiled for AVX2 and for the
/// baseline).
fn count_bracket(values: &[f32], low: u32, span: u32, high: u32, kept: &mut Vec<u32>) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, the only feature the function is compiled for.
        return unsafe { count_bracket_avx2(values, low, span, high, kept) };
    }
    count_bracket_lanes(values, low, span, high, kept)
}

/// [`count_bracket`] in AVX2: eight values at a time, those in the bracket left-packed by a
/// permutation looked up from their mask and stored together (no branch on the values).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn count_bracket_avx2(
    values: &[f32],
    low: u32,
    span: u32,
    high: u32,
    kept: &mut Vec<u32>,
) -> u32 {
    use std::arch::x86_64::*;
    let groups = values.chunks_exact(8);
    let rest = groups.remainder();
    // At most every value is kept, and a store of eight at the end of the kept ones ends at or
    // before its group's end.
    kept.reserve(values.len());
    let start = kept.len();
    let mut end = 0usize;
    // Unsigned comparisons as signed ones of values with their top bit flipped.
    let bias = _mm256_set1_epi32(i32::MIN);
    let clear = _mm256_set1_epi32(i32::MAX);
    let high_b = _mm256_set1_epi32((high ^ 0x8000_0000) as i32);
    let span_b = _mm256_set1_epi32((span ^ 0x8000_0000) as i32);
    let low_v = _mm256_set1_epi32(low as i32);
    let mut over = _mm256_setzero_si256();
    for group in groups {
        // SAFETY (of every load and store): the group holds eight f32; the store writes eight
        // u32 at kept's `start + end`, inside the capacity reserved above (end ≤ this group's
        // offset, which is at most values.len() − 8).
        let b = _mm256_and_si256(_mm256_loadu_si256(group.as_ptr().cast()), clear);
        let above = _mm256_cmpgt_epi32(_mm256_xor_si256(b, bias), high_b);
        over = _mm256_sub_epi32(over, above);
        let off = _mm256_xor_si256(_mm256_sub_epi32(b, low_v), bias);
        let outside = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(off, span_b)));
        let inside = !outside as usize & 0xFF;
        let perm = _mm256_loadu_si256(LEFT_PACK[inside].as_ptr().cast());
        let packed = _mm256_permutevar8x32_epi32(b, perm);
        _mm256_storeu_si256(kept.as_mut_ptr().add(start + end).cast(), packed);
        end += inside.count_ones() as usize;
    }
    // SAFETY: the first `end` values past `start` were written above.
    kept.set_len(start + end);
    let mut lanes = [0u32; 8];
    _mm256_storeu_si256(lanes.as_mut_ptr().cast(), over);
    let in_bracket = |b: u32| b.wrapping_sub(low) <= span;
    let count = lanes.iter().sum::<u32>()
        + rest
            .iter()
            .map(|&v| u32::from(magnitude(v) > high))
            .sum::<u32>();
    keep(kept, rest, in_bracket);
    count
}

/// For each mask of eight lanes, the lanes it sets in order (then zeros): the permutation that
/// packs them to the front.
#[cfg(target_arch = "x86_64")]
const LEFT_PACK: [[u32; 8]; 256] = {
    let mut t = [[0u32; 8]; 256];
    let mut m = 0;
    while m < 256 {
        let (mut i, mut k) = (0, 0);
        while i < 8 {
            if (m >> i) & 1 == 1 {
                t[m][k] = i as u32;
                k += 1;
            }
            i += 1;
        }
        m += 1;
    }
    t
};

/// [`count_bracket`]: a group of [`GROUP`] values at a time.
#[inline(always)]
fn count_bracket_lanes(values: &[f32], low: u32, span: u32, high: u32, kept: &mut Vec<u32>) -> u32 {
    let in_bracket = |b: u32| b.wrapping_sub(low) <= span;
    let mut count = 0u32;
    let groups = values.chunks_exact(GROUP);
    let rest = groups.remainder();
    for group in groups {
        // Counted first, in a loop the compiler vectorizes; most groups hold no value of the
        // bracket and are done with that.
        let (mut over, mut inside) = (0u32, 0u32);
        for &v in group {
            let b = magnitude(v);
            over += u32::from(b > high);
            inside += u32::from(in_bracket(b));
        }
        count += over;
        if inside > 0 {
            keep(kept, group, in_bracket);
        }
    }
    count += rest
        .iter()
        .map(|&v| u32::from(magnitude(v) > high))
        .sum::<u32>();
    keep(kept, rest, in_bracket);
    count
}

/// Appends to `kept` the magnitudes of `values` that are `inside` the bracket, branch-free:
/// every one is stored at the end of the kept ones, and the end moves on only past those in
/// the bracket (which of them are is as good as random, so a branch would mispredict on a good
/// part of the values).
#[inline(always)]
fn keep(kept: &mut Vec<u32>, values: &[f32], inside: impl Fn(u32) -> bool) {
    let start = kept.len();
    kept.resize(start + values.len(), 0);
    let slots = &mut kept[start..];
    let mut end = 0usize;
    for &v in values {
        let b = magnitude(v);
        if let Some(s) = slots.get_mut(end) {
            *s = b;
        }
        end += usize::from(inside(b));
    }
    kept.truncate(start + end);
}

/// Bit patterns `[low, high]` that hold the k-th largest of `n` values with high probability,
/// from `sample` (reordered here): the sample's values at the rank's expected place, widened by
/// six standard deviations of a sampled rank and a fixed margin for samples that are not
/// independent (chunks are runs of rows).
fn bracket(sample: &mut [u32], k: u64, n: usize) -> (u32, u32) {
    let m = sample.len();
    if m == 0 {
        return (0, u32::MAX);
    }
    let p = k as f64 / n as f64;
    let spread = 6.0 * (m as f64 * p * (1.0 - p)).sqrt() + 0.01 * m as f64 + 8.0;
    // Ranks from the top, 1-based; the sample is ascending.
    let centre = p * m as f64;
    let top = centre - spread;
    let bottom = centre + spread;
    let at = |rank: f64| m - (rank.round() as usize).clamp(1, m);
    // Two selections, not a sort: the lower end, then the upper among the values above it.
    let from = match bottom > m as f64 {
        true => None,
        false => Some(at(bottom)),
    };
    let low = from.map_or(0, |i| *sample.select_nth_unstable(i).1);
    let high = match top < 1.0 {
        true => u32::MAX,
        false => {
            let (from, i) = (from.unwrap_or(0), at(top));
            *sample[from..].select_nth_unstable(i - from).1
        }
    };
    (low, high)
}

/// The two counting passes: a 32,768-entry histogram of the top bits (the sign is cleared),
/// then a 65,536-entry one of the low bits of the values in the bucket that holds the rank.
fn by_counting(pass: &mut Pass<'_>, ranks: &[u64], scratch: &mut Scratch) -> Result<Vec<f32>> {
    // u32 counters where they cannot overflow: half the cache the scattered increments touch.
    let mut high = vec![vec![0u32; 1 << 15]; ranks.len()];
    let wide = pass.n > u32::MAX as usize;
    let mut high_wide = vec![vec![0u64; if wide { 1 << 15 } else { 0 }]; ranks.len()];
    pass.run(chunks(pass.n, CHUNK), scratch, |w, values| {
        if wide {
            let h = &mut high_wide[w];
            for &v in values {
                h[(magnitude(v) >> 16) as usize] += 1;
            }
        } else {
            let h = &mut high[w];
            for &v in values {
                h[(magnitude(v) >> 16) as usize] += 1;
            }
        }
        true
    })?;
    let buckets: Vec<(usize, u64)> = ranks
        .iter()
        .enumerate()
        .map(|(w, &k)| match wide {
            true => select(&high_wide[w], k),
            false => {
                let h: Vec<u64> = high[w].iter().map(|&c| u64::from(c)).collect();
                select(&h, k)
            }
        })
        .collect();
    drop((high, high_wide));
    let mut low = vec![vec![0u64; 1 << 16]; ranks.len()];
    pass.run(chunks(pass.n, CHUNK), scratch, |w, values| {
        let (l, bucket) = (&mut low[w], buckets[w].0 as u32);
        for &v in values {
            let bits = magnitude(v);
            if bits >> 16 == bucket {
                l[(bits & 0xFFFF) as usize] += 1;
            }
        }
        true
    })?;
    Ok(low
        .iter()
        .zip(&buckets)
        .map(|(l, &(bucket, rank))| {
            let (bits, _) = select(l, rank);
            f32::from_bits(((bucket as u32) << 16) | bits as u32)
        })
        .collect())
}

/// A pass over the picked vectors' values, a chunk at a time.
struct Pass<'a> {
    m: &'a Merged,
    used: &'a [usize],
    picked: &'a [Vector],
    n: usize,
    buf: Vec<f32>,
}

impl Pass<'_> {
    /// Hands `count(vector index, values)` the values of every picked vector over each of
    /// `ranges` in turn (each at most a chunk), until it returns false.
    fn run(
        &mut self,
        ranges: impl IntoIterator<Item = Range<usize>>,
        scratch: &mut Scratch,
        mut count: impl FnMut(usize, &[f32]) -> bool,
    ) -> Result<()> {
        let (picked, buf) = (self.picked, &mut self.buf);
        each_range(self.m, self.used, ranges, scratch, |range, views| {
            let mut sub: Vec<&[f32]> = Vec::with_capacity(views.len());
            // A run of [`RUN`] values at a time: each vector's values are counted while they
            // are in L1, not after a round trip through L2.
            (range.start..range.end).step_by(RUN).all(|at| {
                let (from, len) = (at - range.start, RUN.min(range.end - at));
                sub.clear();
                sub.extend(views.iter().map(|o| o.get(from..).unwrap_or_default()));
                picked.iter().enumerate().all(|(w, v)| {
                    v.fill(&sub, at, &mut buf[..len]);
                    count(w, &buf[..len])
                })
            })
        })
    }
}

/// The sample: from the middle of every range of `chunk` values, a run of 1/[`SAMPLE_PART`]
/// of it (spread over the whole tensor: its rows differ).
fn sample_ranges(n: usize, chunk: usize) -> Vec<Range<usize>> {
    let run = (chunk / SAMPLE_PART).max(1);
    chunks(n, chunk)
        .filter_map(|r| {
            let start = r.start + r.len().saturating_sub(run) / 2;
            let end = (start + run).min(r.end);
            (start < end).then_some(start..end)
        })
        .collect()
}

#[cfg(test)]
mod tests;
