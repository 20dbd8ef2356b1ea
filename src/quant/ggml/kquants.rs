//! ggml's K-quants: super-blocks of 256 values cut into sub-blocks of 16 (Q2_K, Q3_K, Q6_K) or
//! 32 (Q4_K, Q5_K), each with a scale (and a min) quantized to a few bits against the
//! super-block's f16 `d` (and `dmin`).
//!
//! Encoders are `quantize_row_q*_K_ref` of `ggml-quants.c`: a scale search per sub-block
//! ([`super::search`], run on all sub-blocks at once by [`super::lanes`]), the sub-block scales quantized against their maximum, then every value
//! re-coded against the scale it will be decoded with. Decoders are `dequantize_row_q*_K`.

use super::lanes::Searches;
use super::search::{nearest_int, Fit, Qkx2, GROUP_MAX_EPS};
use super::{f16_at, f16_bytes, QK_K};

/// Packs 2-bit codes as Q2_K and Q3_K store them: byte `l` of each 32-byte group holds values
/// `l`, `l + 32`, `l + 64`, `l + 96` of its 128 (low bits first).
#[inline(always)]
fn pack_2bit(codes: &[u8; QK_K], qs: &mut [u8]) {
    for (half, qs) in qs.chunks_exact_mut(32).enumerate() {
        let c = &codes[half * 128..];
        for l in 0..32 {
            qs[l] = c[l] | (c[l + 32] << 2) | (c[l + 64] << 4) | (c[l + 96] << 6);
        }
    }
}

/// The 2-bit code of value `e` (in `0..256`) from `qs` packed by [`pack_2bit`].
#[inline(always)]
fn code_2bit(qs: &[u8], e: usize) -> u8 {
    let (half, r) = (e / 128, e % 128);
    (qs[half * 32 + r % 32] >> (2 * (r / 32))) & 3
}

// ---- Q2_K: scales[16], qs[64], d, dmin ----

#[inline(always)]
pub(super) fn decode_q2_k(b: &[u8; 84], out: &mut [f32; QK_K]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, min) = (f16_at(b, 80), f16_at(b, 82));
    for (s, out) in out.chunks_exact_mut(16).enumerate() {
        let sc = scales[s];
        let dl = d * (sc & 0xF) as f32;
        let ml = min * (sc >> 4) as f32;
        for (i, o) in out.iter_mut().enumerate() {
            *o = dl * code_2bit(qs, 16 * s + i) as f32 - ml;
        }
    }
}

/// Q2_K's search: codes 0..=3, 16 candidate scales, absolute error.
pub(super) const Q2_K: Qkx2 = Qkx2 {
    nmax: 3,
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: true,
};

/// Encodes whole Q2_K super-blocks (`values` and `blocks` hold the same count), four per search
/// (64 sub-blocks in four registers) where `S` has wide registers, then one at a time.
///
/// # Safety
/// The CPU has the features of `S` (none for the portable searches).
#[inline(always)]
pub(super) unsafe fn encode_q2_k_all<S: Searches>(values: &[f32], blocks: &mut [u8]) {
    let p = Q2_K;
    let (xs, bs) = (values.as_chunks::<QK_K>().0, blocks.as_chunks_mut::<84>().0);
    let step = if S::WIDE { 4 } else { 1 };
    for (x, b) in xs.chunks(step).zip(bs.chunks_mut(step)) {
        // SAFETY (all searches): the caller guarantees `S`'s features.
        if x.len() == 4 {
            let found = unsafe {
                fits_by_lanes::<S, 16, 64, 64>(x.as_flattened(), |xt| {
                    S::qkx2_64::<16, true>(p, xt, &xt.map(abs_row))
                })
            };
            for (h, (x, b)) in x.iter().zip(b).enumerate() {
                encode_q2_k(x, &std::array::from_fn(|j| found[16 * h + j]), b);
            }
            continue;
        }
        // `qkx2_16` is one wide search, or two eight-lane ones where `S` has no wide registers.
        for (x, b) in x.iter().zip(b) {
            let found: [Fit; 16] = unsafe {
                fits_by_lanes::<S, 16, 16, 16>(x, |xt| {
                    S::qkx2_16::<16, true>(p, xt, &xt.map(abs_row))
                })
            };
            encode_q2_k(x, &found, b);
        }
    }
}

/// One Q2_K super-block from what its sub-blocks' searches `found`.
#[inline(always)]
fn encode_q2_k(x: &[f32; QK_K], found: &[Fit; 16], b: &mut [u8; 84]) {
    const Q4SCALE: f32 = 15.0;
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    let (scales, mins) = (found.map(|f| f.scale), found.map(|f| f.min));
    for j in 0..16 {
        let (scale, min) = (scales[j], mins[j]);
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }
    let mut sc = [0u8; 16];
    let d = if max_scale > 0.0 {
        let iscale = Q4SCALE / max_scale;
        for j in 0..16 {
            sc[j] = nearest_int(iscale * scales[j]) as u8;
        }
        max_scale / Q4SCALE
    } else {
        0.0
    };
    let dmin = if max_min > 0.0 {
        let iscale = Q4SCALE / max_min;
        for j in 0..16 {
            sc[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
        }
        max_min / Q4SCALE
    } else {
        0.0
    };
    let (d, dmin) = (f16_bytes(d), f16_bytes(dmin));
    let (dq, mq) = (f16_at(&d, 0), f16_at(&dmin, 0));
    let mut codes = [0u8; QK_K];
    for (j, &sc) in sc.iter().enumerate() {
        let dl = dq * (sc & 0xF) as f32;
        let dm = mq * (sc >> 4) as f32;
        let (codes, x) = (sub_mut::<16, u8>(&mut codes, j), sub::<16>(x, j));
        if dl == 0.0 {
            // ggml keeps the search's codes where the scale quantized to zero.
            for (c, &v) in codes.iter_mut().zip(x) {
                *c = found[j].code(v, 3);
            }
            continue;
        }
        for (c, &v) in codes.iter_mut().zip(x) {
            *c = nearest_int((v + dm) / dl).clamp(0, 3) as u8;
        }
    }
    b[0..16].copy_from_slice(&sc);
    pack_2bit(&codes, &mut b[16..80]);
    b[80..82].copy_from_slice(&d);
    b[82..84].copy_from_slice(&dmin);
}

/// Q2_K's search weights: `|x|` of a row of lanes.
#[inline(always)]
fn abs_row<const L: usize>(row: [f32; L]) -> [f32; L] {
    row.map(f32::abs)
}

/// Runs `search` on the `G` sub-blocks of `N` values of `x`, `L` at a time (lane `j` is a
/// sub-block): what it finds for each, in sub-block order.
///
/// # Safety
/// The CPU has the features of `S`.
#[inline(always)]
unsafe fn fits_by_lanes<S: Searches, const N: usize, const G: usize, const L: usize>(
    x: &[f32],
    mut search: impl FnMut(&[[f32; L]; N]) -> [Fit; L],
) -> [Fit; G] {
    let mut found = [Fit::default(); G];
    for g in 0..G / L {
        // SAFETY: the caller guarantees `S`'s features.
        let r = search(&unsafe { S::transpose_lanes::<N, L>(&x[L * N * g..]) });
        found[L * g..L * g + L].copy_from_slice(&r);
    }
    found
}

/// `S`'s `qkx2` search with `p.use_mad` as the const parameter it is.
///
/// # Safety
/// The CPU has the features of `S`.
#[inline(always)]
unsafe fn qkx2<S: Searches, const N: usize>(
    p: Qkx2,
    x: &[[f32; 8]; N],
    w: &[[f32; 8]; N],
) -> [Fit; 8] {
    // SAFETY: the caller guarantees `S`'s features.
    unsafe {
        if p.use_mad {
            S::qkx2::<N, true>(p, x, w)
        } else {
            S::qkx2::<N, false>(p, x, w)
        }
    }
}

/// Sub-block `j` of `N` values.
#[inline(always)]
fn sub<const N: usize>(x: &[f32; QK_K], j: usize) -> &[f32; N] {
    &x.as_chunks::<N>().0[j]
}

/// Sub-block `j` of `N` codes.
#[inline(always)]
fn sub_mut<const N: usize, T>(codes: &mut [T; QK_K], j: usize) -> &mut [T; N] {
    &mut codes.as_chunks_mut::<N>().0[j]
}

// ---- Q3_K: hmask[32], qs[64], scales[12], d ----

/// The 16 signed 6-bit scales of a Q3_K block: low nibbles in bytes 0..8 (sub-blocks 8..16 in
/// the high halves), top two bits in bytes 8..12 (`j % 4`, shifted by `2 · (j / 4)`).
#[inline(always)]
fn q3_scale(sb: &[u8], j: usize) -> i32 {
    let low = if j < 8 { sb[j] & 0xF } else { sb[j - 8] >> 4 };
    let high = (sb[8 + j % 4] >> (2 * (j / 4))) & 3;
    (low | (high << 4)) as i32 - 32
}

#[inline(always)]
pub(super) fn decode_q3_k(b: &[u8; 110], out: &mut [f32; QK_K]) {
    let (hmask, qs, sb) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    // Runs of 32 values share a 2-bit field of `qs` and a bit of `hmask`; each run has two
    // 16-value scales.
    for (run, out) in out.chunks_exact_mut(32).enumerate() {
        let (qs, shift) = (&qs[32 * (run / 4)..][..32], 2 * (run % 4));
        let bit = 1u8 << run;
        for (k, out) in out.chunks_exact_mut(16).enumerate() {
            let dl = d * q3_scale(sb, 2 * run + k) as f32;
            for (l, o) in out.iter_mut().enumerate() {
                let l = 16 * k + l;
                let high = if hmask[l] & bit != 0 { 0 } else { 4 };
                *o = dl * (((qs[l] >> shift) & 3) as i32 - high) as f32;
            }
        }
    }
}

/// Encodes whole Q3_K super-blocks (`values` and `blocks` hold the same count), four per search
/// where `S` has wide registers, then one at a time.
///
/// # Safety
/// The CPU has the features of `S` (none for the portable searches).
#[inline(always)]
pub(super) unsafe fn encode_q3_k_all<S: Searches>(values: &[f32], blocks: &mut [u8]) {
    let (xs, bs) = (
        values.as_chunks::<QK_K>().0,
        blocks.as_chunks_mut::<110>().0,
    );
    let step = if S::WIDE { 4 } else { 1 };
    for (x, b) in xs.chunks(step).zip(bs.chunks_mut(step)) {
        // SAFETY (both searches): the caller guarantees `S`'s features.
        if x.len() == 4 {
            // The search's codes stay in lane order (`searched[i][16·h + j]`: value `i` of
            // sub-block `j` of super-block `h`); ggml keeps them only where a sub-block's scale
            // quantizes to zero, and only such a sub-block's are read out.
            let mut searched = [[0i8; 64]; 16];
            let xt = unsafe { S::transpose_lanes::<16, 64>(x.as_flattened()) };
            let scales = unsafe { S::q3_64(4, &xt, &mut searched) };
            for (h, (x, b)) in x.iter().zip(b).enumerate() {
                let scales: [f32; 16] = std::array::from_fn(|j| scales[16 * h + j]);
                encode_q3_k(x, &scales, |i, j| searched[i][16 * h + j], b);
            }
        } else {
            for (x, b) in x.iter().zip(b) {
                let mut searched = [[0i8; 16]; 16];
                let xt = unsafe { S::transpose_lanes::<16, 16>(x) };
                let scales = unsafe { S::q3_16(4, &xt, &mut searched) };
                encode_q3_k(x, &scales, |i, j| searched[i][j], b);
            }
        }
    }
}

/// One Q3_K super-block from its sub-blocks' searched `scales`; `searched(i, j)` is the
/// search's code of value `i` of sub-block `j`.
#[inline(always)]
fn encode_q3_k(
    x: &[f32; QK_K],
    scales: &[f32; 16],
    searched: impl Fn(usize, usize) -> i8,
    b: &mut [u8; 110],
) {
    let (mut max_scale, mut amax) = (0f32, 0f32);
    for &s in scales {
        if s.abs() > amax {
            amax = s.abs();
            max_scale = s;
        }
    }
    let mut sb = [0u8; 12];
    // C's `if (max_scale)`: true for NaN too.
    let d = if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for j in 0..16 {
            // `int8_t l = nearest_int(..)` truncates, then clamps in int.
            let l = ((nearest_int(iscale * scales[j]) as i8) as i32).clamp(-32, 31) + 32;
            if j < 8 {
                sb[j] = (l & 0xF) as u8;
            } else {
                sb[j - 8] |= ((l & 0xF) << 4) as u8;
            }
            sb[j % 4 + 8] |= ((l >> 4) << (2 * (j / 4))) as u8;
        }
        1.0 / iscale
    } else {
        0.0
    };
    let d = f16_bytes(d);
    let dq = f16_at(&d, 0);
    let mut codes = [0i8; QK_K];
    for j in 0..16 {
        let dl = dq * q3_scale(&sb, j) as f32;
        let codes = sub_mut::<16, i8>(&mut codes, j);
        if dl == 0.0 {
            // ggml keeps the search's codes where the scale quantized to zero.
            for (i, c) in codes.iter_mut().enumerate() {
                *c = searched(i, j);
            }
            continue;
        }
        for (c, &v) in codes.iter_mut().zip(sub::<16>(x, j)) {
            *c = (nearest_int(v / dl).clamp(-4, 3) + 4) as i8;
        }
    }
    let (hmask, rest) = b.split_at_mut(32);
    // A code's third bit (codes are 0..8: ggml's `if (L > 3) { set; L -= 4 }`) goes to bit
    // `e / 32` of `hmask[e % 32]`, its low two bits to `qs`; without a branch per value, whose
    // outcome is a coin toss.
    hmask.fill(0);
    let mut low = [0u8; QK_K];
    for (k, (run, low)) in codes
        .chunks_exact(32)
        .zip(low.chunks_exact_mut(32))
        .enumerate()
    {
        for ((h, &c), l) in hmask.iter_mut().zip(run).zip(low) {
            let c = c as u8;
            *h |= ((c >> 2) & 1) << k;
            *l = c & 3;
        }
    }
    pack_2bit(&low, &mut rest[0..64]);
    rest[64..76].copy_from_slice(&sb);
    rest[76..78].copy_from_slice(&d);
}

mod k4;
pub(super) use k4::{decode_q4_k, decode_q5_k, encode_q4_k_all, encode_q5_k_all};
#[cfg(test)]
pub(super) use k4::{Q4_K, Q5_K};

// ---- Q6_K: ql[128], qh[64], scales[16] (int8), d ----

#[inline(always)]
pub(super) fn decode_q6_k(b: &[u8; 210], out: &mut [f32; QK_K]) {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    // Runs of 32 values: `which` picks the low or high nibbles of the first or second 32
    // bytes of `ql`, and a 2-bit field of `qh`; each run has two 16-value scales.
    for (run, out) in out.chunks_exact_mut(32).enumerate() {
        let (half, which) = (run / 4, run % 4);
        let ql = &ql[64 * half + 32 * (which % 2)..][..32];
        let qh = &qh[32 * half..][..32];
        let (shift, hshift) = (4 * (which / 2), 2 * which);
        for (k, out) in out.chunks_exact_mut(16).enumerate() {
            let scale = d * (sc[2 * run + k] as i8) as f32;
            for (l, o) in out.iter_mut().enumerate() {
                let l = 16 * k + l;
                let low = (ql[l] >> shift) & 0xF;
                let high = (qh[l] >> hshift) & 3;
                *o = scale * ((low | (high << 4)) as i32 - 32) as f32;
            }
        }
    }
}

/// # Safety
/// The CPU has the features of `S` (none for the portable searches).
#[inline(always)]
pub(super) unsafe fn encode_q6_k<S: Searches>(x: &[f32; QK_K], b: &mut [u8; 210]) {
    // The search's codes, `searched[i][j]` value `i` of sub-block `j`: ggml keeps them only in
    // a sub-block whose scale quantizes to zero (below), so they stay in lane order and only
    // such a sub-block's are read out of it.
    let mut searched = [[0i8; 16]; 16];
    // SAFETY: the caller guarantees `S`'s features.
    let scales = unsafe { S::qx_16(32, &S::transpose_lanes::<16, 16>(x), &mut searched) };
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for &scale in &scales {
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        b.fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = f16_bytes(1.0 / iscale);
    let sc = scales.map(|s| nearest_int(iscale * s).min(127) as i8);
    let dq = f16_at(&d, 0);
    let mut codes = [0i8; QK_K];
    for (j, &sc) in sc.iter().enumerate() {
        let dl = dq * sc as f32;
        let codes = sub_mut::<16, i8>(&mut codes, j);
        if dl == 0.0 {
            for (i, c) in codes.iter_mut().enumerate() {
                *c = searched[i][j];
            }
            continue;
        }
        for (c, &v) in codes.iter_mut().zip(sub::<16>(x, j)) {
            *c = (nearest_int(v / dl).clamp(-32, 31) + 32) as i8;
        }
    }
    let (ql, rest) = b.split_at_mut(128);
    let (qh, rest) = rest.split_at_mut(64);
    for half in 0..2 {
        let c = &codes[half * 128..];
        let (ql, qh) = (&mut ql[64 * half..], &mut qh[32 * half..]);
        for l in 0..32 {
            let q = |k: usize| c[l + 32 * k] as u8;
            ql[l] = (q(0) & 0xF) | ((q(2) & 0xF) << 4);
            ql[l + 32] = (q(1) & 0xF) | ((q(3) & 0xF) << 4);
            qh[l] = (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
        }
    }
    for (o, &s) in rest[0..16].iter_mut().zip(&sc) {
        *o = s as u8;
    }
    rest[16..18].copy_from_slice(&d);
}
