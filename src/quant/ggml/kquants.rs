//! ggml's K-quants: super-blocks of 256 values cut into sub-blocks of 16 (Q2_K, Q3_K, Q6_K) or
//! 32 (Q4_K, Q5_K), each with a scale (and a min) quantized to a few bits against the
//! super-block's f16 `d` (and `dmin`).
//!
//! Encoders are `quantize_row_q*_K_ref` of `ggml-quants.c`: a scale search per sub-block
//! ([`super::search`]), the sub-block scales quantized against their maximum, then every value
//! re-coded against the scale it will be decoded with. Decoders are `dequantize_row_q*_K`.

use super::search::GROUP_MAX_EPS;
use super::search::{make_q3_quants, make_qkx2_quants, make_qx_quants, nearest_int, Qkx2};
use super::{f16_at, f16_bytes, QK_K};

/// Packs 2-bit codes as Q2_K and Q3_K store them: byte `l` of each 32-byte group holds values
/// `l`, `l + 32`, `l + 64`, `l + 96` of its 128 (low bits first).
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

pub(super) fn encode_q2_k(x: &[f32; QK_K], b: &mut [u8; 84]) {
    const Q4SCALE: f32 = 15.0;
    let p = Qkx2 {
        nmax: 3,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: true,
    };
    let mut codes = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; 16], [0f32; 16]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..16 {
        let xs: &[f32; 16] = sub(x, j);
        let weights = xs.map(f32::abs);
        let (scale, min) = make_qkx2_quants(p, xs, &weights, sub_mut(&mut codes, j));
        (scales[j], mins[j]) = (scale, min);
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
    for j in 0..16 {
        let dl = dq * (sc[j] & 0xF) as f32;
        if dl == 0.0 {
            continue;
        }
        let dm = mq * (sc[j] >> 4) as f32;
        for (c, &v) in sub_mut::<16, u8>(&mut codes, j)
            .iter_mut()
            .zip(sub::<16>(x, j))
        {
            *c = nearest_int((v + dm) / dl).clamp(0, 3) as u8;
        }
    }
    b[0..16].copy_from_slice(&sc);
    pack_2bit(&codes, &mut b[16..80]);
    b[80..82].copy_from_slice(&d);
    b[82..84].copy_from_slice(&dmin);
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

pub(super) fn decode_q3_k(b: &[u8; 110], out: &mut [f32; QK_K]) {
    let (hmask, qs, sb) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    for (s, out) in out.chunks_exact_mut(16).enumerate() {
        let dl = d * q3_scale(sb, s) as f32;
        for (i, o) in out.iter_mut().enumerate() {
            let e = 16 * s + i;
            let high = if hmask[e % 32] & (1 << (e / 32)) != 0 {
                0
            } else {
                4
            };
            *o = dl * (code_2bit(qs, e) as i32 - high) as f32;
        }
    }
}

pub(super) fn encode_q3_k(x: &[f32; QK_K], b: &mut [u8; 110]) {
    let mut codes = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut amax) = (0f32, 0f32);
    for j in 0..16 {
        scales[j] = make_q3_quants(4, sub(x, j), sub_mut(&mut codes, j));
        let scale = scales[j].abs();
        if scale > amax {
            amax = scale;
            max_scale = scales[j];
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
    for j in 0..16 {
        let dl = dq * q3_scale(&sb, j) as f32;
        if dl == 0.0 {
            continue;
        }
        for (c, &v) in sub_mut::<16, i8>(&mut codes, j)
            .iter_mut()
            .zip(sub::<16>(x, j))
        {
            *c = (nearest_int(v / dl).clamp(-4, 3) + 4) as i8;
        }
    }
    let (hmask, rest) = b.split_at_mut(32);
    hmask.fill(0);
    let mut low = [0u8; QK_K];
    for (e, (&c, low)) in codes.iter().zip(low.iter_mut()).enumerate() {
        let mut c = c as u8;
        if c > 3 {
            hmask[e % 32] |= 1 << (e / 32);
            c -= 4;
        }
        *low = c;
    }
    pack_2bit(&low, &mut rest[0..64]);
    rest[64..76].copy_from_slice(&sb);
    rest[76..78].copy_from_slice(&d);
}

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

pub(super) fn decode_q4_k(b: &[u8; 144], out: &mut [f32; QK_K]) {
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

pub(super) fn decode_q5_k(b: &[u8; 176], out: &mut [f32; QK_K]) {
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

/// The search and the 6-bit scales shared by Q4_K (`nmax` 15) and Q5_K (31): fills `codes`
/// (each in `0..=nmax`), `sb` (the 12 packed scale bytes) and returns `d` and `dmin` as f16
/// bytes.
fn encode_k4(x: &[f32; QK_K], p: Qkx2, codes: &mut [u8; QK_K], sb: &mut [u8; 12]) -> [u8; 4] {
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xs: &[f32; 32] = sub(x, j);
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights = xs.map(|v| av_x + v.abs());
        let (scale, min) = make_qkx2_quants(p, xs, &weights, sub_mut(codes, j));
        (scales[j], mins[j]) = (scale, min);
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
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, sb);
        let dl = dq * sc as f32;
        if dl == 0.0 {
            continue;
        }
        let dm = mq * m as f32;
        for (c, &v) in sub_mut::<32, u8>(codes, j).iter_mut().zip(sub::<32>(x, j)) {
            *c = nearest_int((v + dm) / dl).clamp(0, p.nmax) as u8;
        }
    }
    [d[0], d[1], dmin[0], dmin[1]]
}

pub(super) fn encode_q4_k(x: &[f32; QK_K], b: &mut [u8; 144]) {
    let p = Qkx2 {
        nmax: 15,
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
        use_mad: false,
    };
    let mut codes = [0u8; QK_K];
    let mut sb = [0u8; 12];
    let d = encode_k4(x, p, &mut codes, &mut sb);
    b[0..4].copy_from_slice(&d);
    b[4..16].copy_from_slice(&sb);
    for (q, chunk) in b[16..144].chunks_exact_mut(32).zip(codes.chunks_exact(64)) {
        for l in 0..32 {
            q[l] = chunk[l] | (chunk[l + 32] << 4);
        }
    }
}

pub(super) fn encode_q5_k(x: &[f32; QK_K], b: &mut [u8; 176]) {
    let p = Qkx2 {
        nmax: 31,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: false,
    };
    let mut codes = [0u8; QK_K];
    let mut sb = [0u8; 12];
    let d = encode_k4(x, p, &mut codes, &mut sb);
    b[0..4].copy_from_slice(&d);
    b[4..16].copy_from_slice(&sb);
    let (qh, ql) = b[16..176].split_at_mut(32);
    qh.fill(0);
    for (n, (q, chunk)) in ql
        .chunks_exact_mut(32)
        .zip(codes.chunks_exact(64))
        .enumerate()
    {
        let (m1, m2) = (1u8 << (2 * n), 2u8 << (2 * n));
        for j in 0..32 {
            let (mut l1, mut l2) = (chunk[j], chunk[j + 32]);
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            q[j] = l1 | (l2 << 4);
        }
    }
}

// ---- Q6_K: ql[128], qh[64], scales[16] (int8), d ----

pub(super) fn decode_q6_k(b: &[u8; 210], out: &mut [f32; QK_K]) {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for (e, o) in out.iter_mut().enumerate() {
        let (half, r) = (e / 128, e % 128);
        let (which, l) = (r / 32, r % 32);
        let low = ql[64 * half + l + 32 * (which % 2)] >> (4 * (which / 2)) & 0xF;
        let high = (qh[32 * half + l] >> (2 * which)) & 3;
        let q = (low | (high << 4)) as i32 - 32;
        *o = d * (sc[e / 16] as i8) as f32 * q as f32;
    }
}

pub(super) fn encode_q6_k(x: &[f32; QK_K], b: &mut [u8; 210]) {
    let mut codes = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for j in 0..16 {
        let scale = make_qx_quants(32, sub(x, j), sub_mut(&mut codes, j));
        scales[j] = scale;
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
    let mut sc = [0i8; 16];
    for j in 0..16 {
        sc[j] = nearest_int(iscale * scales[j]).min(127) as i8;
    }
    let dq = f16_at(&d, 0);
    for j in 0..16 {
        let dl = dq * sc[j] as f32;
        if dl == 0.0 {
            continue;
        }
        for (c, &v) in sub_mut::<16, i8>(&mut codes, j)
            .iter_mut()
            .zip(sub::<16>(x, j))
        {
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
