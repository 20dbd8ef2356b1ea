//! Q4_K and Q5_K (`quantize_row_q4_K_ref`, `quantize_row_q5_K_ref`): eight sub-blocks of 32 per
//! super-block, each with a 6-bit scale and min against the super-block's f16 `d` and `dmin`;
//! the weighted `make_qkx2_quants` search per sub-block, eight super-blocks per search where the
//! CPU has wide registers.

use super::super::lanes::Searches;
use super::super::search::{nearest_int, Fit, Qkx2};
use super::super::{f16_at, f16_bytes, QK_K};
use super::{fits_by_lanes, qkx2, sub, sub_mut};

// ---- Q4_K and Q5_K: d, dmin, scales[12], (Q5_K: qh[32]), qs[128] ----

/// `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (of 8).
#[inline(always)]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

#[inline(always)]
pub(in crate::quant::ggml) fn decode_q4_k(b: &[u8; 144], out: &mut [f32; QK_K]) {
    let (d, min, sb, qs) = (f16_at(b, 0), f16_at(b, 2), &b[4..16], &b[16..144]);
    for (s, out) in out.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(s, sb);
        let (d1, m1) = (d * sc as f32, min * m as f32);
        let (q, shift) = (&qs[32 * (s / 2)..], 4 * (s % 2));
        for (o, &q) in out.iter_mut().zip(q) {
            *o = d1 * ((q >> shift) & 0xF) as f32 - m1;
        }
    }
}

#[inline(always)]
pub(in crate::quant::ggml) fn decode_q5_k(b: &[u8; 176], out: &mut [f32; QK_K]) {
    let (d, min, sb) = (f16_at(b, 0), f16_at(b, 2), &b[4..16]);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for (s, out) in out.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(s, sb);
        let (d1, m1) = (d * sc as f32, min * m as f32);
        let (q, shift) = (&qs[32 * (s / 2)..], 4 * (s % 2));
        for (l, o) in out.iter_mut().enumerate() {
            let high = if qh[l] & (1 << s) != 0 { 16 } else { 0 };
            *o = d1 * (((q[l] >> shift) & 0xF) + high) as f32 - m1;
        }
    }
}

/// The weights of Q4_K's and Q5_K's searches for `L` sub-blocks of 32 (lane `j` is one):
/// `sqrt(Σx²/32) + |x|`, summed in value order as ggml does.
#[inline(always)]
fn k4_weights<const L: usize>(xt: &[[f32; L]; 32]) -> [[f32; L]; 32] {
    let mut sum_x2 = [0f32; L];
    for row in xt {
        for j in 0..L {
            sum_x2[j] += row[j] * row[j];
        }
    }
    let av_x = sum_x2.map(|s| (s / 32.0).sqrt());
    xt.map(|row| std::array::from_fn(|j| av_x[j] + row[j].abs()))
}

/// The searches of Q4_K (`nmax` 15) and Q5_K (31) for the `G` sub-blocks of 32 of `x` (8 per
/// super-block; 64 or 32, eight or four super-blocks, searched at once where `S` has wide
/// registers): what each finds.
///
/// # Safety
/// The CPU has the features of `S` (none for the portable searches).
#[inline(always)]
unsafe fn k4_search<S: Searches, const G: usize>(x: &[f32], p: Qkx2) -> [Fit; G] {
    if S::WIDE && G.is_multiple_of(64) {
        fits_by_lanes::<S, 32, G, 64>(x, |xt| {
            // SAFETY: the caller guarantees `S`'s features.
            unsafe { S::qkx2_64::<32, false>(p, xt, &k4_weights(xt)) }
        })
    } else if S::WIDE && G.is_multiple_of(32) {
        fits_by_lanes::<S, 32, G, 32>(x, |xt| {
            // SAFETY: the caller guarantees `S`'s features.
            unsafe { S::qkx2_32::<32, false>(p, xt, &k4_weights(xt)) }
        })
    } else {
        fits_by_lanes::<S, 32, G, 8>(x, |xt| {
            // SAFETY: the caller guarantees `S`'s features.
            unsafe { qkx2::<S, 32>(p, xt, &k4_weights(xt)) }
        })
    }
}

/// The 6-bit scales shared by Q4_K and Q5_K, from the searches' results `found`: codes every
/// value (`0..=nmax`) against them into `codes`, fills `sb` (the 12 packed scale bytes) and
/// returns `d` and `dmin` as f16 bytes.
#[inline(always)]
fn k4_scales(
    x: &[f32; QK_K],
    p: Qkx2,
    found: &[Fit],
    codes: &mut [u8; QK_K],
    sb: &mut [u8; 12],
) -> [u8; 4] {
    let scales: [f32; 8] = std::array::from_fn(|j| found[j].scale);
    let mins: [f32; 8] = std::array::from_fn(|j| found[j].min);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let (scale, min) = (scales[j], mins[j]);
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    for j in 0..8 {
        // `uint8_t ls = nearest_int(..)` truncates to a byte before the MIN.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            sb[j] = ls;
            sb[j + 4] = lm;
        } else {
            sb[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            sb[j - 4] |= (ls >> 4) << 6;
            sb[j] |= (lm >> 4) << 6;
        }
    }
    let (d, dmin) = (f16_bytes(max_scale / 63.0), f16_bytes(max_min / 63.0));
    let (dq, mq) = (f16_at(&d, 0), f16_at(&dmin, 0));
    for (j, fit) in found.iter().enumerate().take(8) {
        let (sc, m) = scale_min_k4(j, sb);
        let dl = dq * sc as f32;
        let (codes, x) = (sub_mut::<32, u8>(codes, j), sub::<32>(x, j));
        if dl == 0.0 {
            // ggml keeps the search's codes where the scale quantized to zero.
            for (c, &v) in codes.iter_mut().zip(x) {
                *c = fit.code(v, p.nmax);
            }
            continue;
        }
        let dm = mq * m as f32;
        for (c, &v) in codes.iter_mut().zip(x) {
            *c = nearest_int((v + dm) / dl).clamp(0, p.nmax) as u8;
        }
    }
    [d[0], d[1], dmin[0], dmin[1]]
}

/// Q4_K's search: codes 0..=15, 21 candidate scales.
pub(in crate::quant::ggml) const Q4_K: Qkx2 = Qkx2 {
    nmax: 15,
    rmin: -1.0,
    rdelta: 0.1,
    nstep: 20,
    use_mad: false,
};

/// Q5_K's search: codes 0..=31, 16 candidate scales.
pub(in crate::quant::ggml) const Q5_K: Qkx2 = Qkx2 {
    nmax: 31,
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: false,
};

/// Writes one block of `BYTES` from its codes, `d`/`dmin` bytes and scale bytes.
type Pack<const BYTES: usize> = fn(&[u8; QK_K], [u8; 4], &[u8; 12], &mut [u8; BYTES]);

/// Encodes the whole Q4_K (`BYTES` 144) or Q5_K (176) super-blocks of `values` into `blocks`
/// with `pack` (codes, `d`/`dmin` bytes, scale bytes), eight super-blocks per search where `S`
/// has wide registers. The caller checks the lengths.
///
/// # Safety
/// The CPU has the features of `S` (none for the portable searches).
#[inline(always)]
unsafe fn encode_k4_all<S: Searches, const BYTES: usize>(
    p: Qkx2,
    values: &[f32],
    blocks: &mut [u8],
    pack: Pack<BYTES>,
) {
    let (xs, bs) = (
        values.as_chunks::<QK_K>().0,
        blocks.as_chunks_mut::<BYTES>().0,
    );
    let step = if S::WIDE { 8 } else { 1 };
    for (x, b) in xs.chunks(step).zip(bs.chunks_mut(step)) {
        let mut found = [Fit::default(); 64];
        // SAFETY (all): the caller guarantees `S`'s features.
        if x.len() == 8 {
            found = unsafe { k4_search::<S, 64>(x.as_flattened(), p) };
        } else {
            // A tail: four super-blocks at once while there are four, then one at a time.
            let four = if S::WIDE && x.len() >= 4 { 4 } else { 0 };
            if four == 4 {
                let r = unsafe { k4_search::<S, 32>(x[..4].as_flattened(), p) };
                found[..32].copy_from_slice(&r);
            }
            for (h, x) in x.iter().enumerate().skip(four) {
                let one = unsafe { k4_search::<S, 8>(x, p) };
                found[8 * h..8 * h + 8].copy_from_slice(&one);
            }
        }
        for (h, (x, b)) in x.iter().zip(b).enumerate() {
            let (mut sb, mut codes) = ([0u8; 12], [0u8; QK_K]);
            let d = k4_scales(x, p, &found[8 * h..8 * h + 8], &mut codes, &mut sb);
            pack(&codes, d, &sb, b);
        }
    }
}

/// Encodes whole Q4_K super-blocks (`values` and `blocks` hold the same count).
///
/// # Safety
/// The CPU has the features of `S` (none for the portable searches).
#[inline(always)]
pub(in crate::quant::ggml) unsafe fn encode_q4_k_all<S: Searches>(
    values: &[f32],
    blocks: &mut [u8],
) {
    // SAFETY: the caller guarantees `S`'s features.
    unsafe { encode_k4_all::<S, 144>(Q4_K, values, blocks, pack_q4_k) }
}

/// A Q4_K block: `d`, `dmin`, the scale bytes, codes as nibbles (value `l` of each 64 low,
/// `l + 32` high).
fn pack_q4_k(codes: &[u8; QK_K], d: [u8; 4], sb: &[u8; 12], b: &mut [u8; 144]) {
    b[0..4].copy_from_slice(&d);
    b[4..16].copy_from_slice(sb);
    for (q, chunk) in b[16..144].chunks_exact_mut(32).zip(codes.chunks_exact(64)) {
        for l in 0..32 {
            q[l] = chunk[l] | (chunk[l + 32] << 4);
        }
    }
}

/// Encodes whole Q5_K super-blocks (`values` and `blocks` hold the same count).
///
/// # Safety
/// The CPU has the features of `S` (none for the portable searches).
#[inline(always)]
pub(in crate::quant::ggml) unsafe fn encode_q5_k_all<S: Searches>(
    values: &[f32],
    blocks: &mut [u8],
) {
    // SAFETY: the caller guarantees `S`'s features.
    unsafe { encode_k4_all::<S, 176>(Q5_K, values, blocks, pack_q5_k) }
}

/// A Q5_K block: as Q4_K's, with each code's fifth bit in `qh`.
fn pack_q5_k(codes: &[u8; QK_K], d: [u8; 4], sb: &[u8; 12], b: &mut [u8; 176]) {
    b[0..4].copy_from_slice(&d);
    b[4..16].copy_from_slice(sb);
    let (qh, ql) = b[16..176].split_at_mut(32);
    qh.fill(0);
    for (n, (q, chunk)) in ql
        .chunks_exact_mut(32)
        .zip(codes.chunks_exact(64))
        .enumerate()
    {
        // Codes are 0..=31: bit 4 goes to `qh` (bits 2n and 2n + 1), the rest to the nibbles;
        // without branches, which mispredict on every other value.
        for j in 0..32 {
            let (l1, l2) = (chunk[j], chunk[j + 32]);
            qh[j] |= ((l1 >> 4) << (2 * n)) | ((l2 >> 4) << (2 * n + 1));
            q[j] = (l1 & 0xF) | ((l2 & 0xF) << 4);
        }
    }
}
