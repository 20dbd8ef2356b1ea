// ggml's block quantizers on a CUDA device (src/offload/cuda/ggml.rs), so that only the blocks of
// a GGUF target cross to the host.
//
// The CPU codec in src/quant/ggml/ (ggml's quantize_row_*_ref of ggml-quants.c, bit for bit) is
// the reference; every float step here is the same IEEE operation in the same order (build with
// --fmad=false --ftz=false, IEEE division and square root: nvcc's defaults):
// - Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: legacy.rs's encode_q* (the signed absolute maximum or the
//   range, its f32 reciprocal, C's truncating float-to-int conversion as x86-64 does it, roundf
//   for Q8_0);
// - Q2_K, Q3_K, Q4_K, Q5_K, Q6_K: kquants.rs's encode_q*_k with the one-group searches of
//   search.rs (make_qkx2_quants, make_q3_quants, make_qx_quants, nearest_int's 1.5*2^23 trick),
//   one sub-block after another (in ggml_search.cuh); lanes.rs/avx2.rs run the same searches
//   eight sub-blocks at once;
// - the f16 scales: half's f32 -> f16 rounding (halfbits.cuh), widened back where ggml re-reads
//   them (GGML_FP16_TO_FP32);
// - the values: the source (f32, f16 or bf16) widened exactly, then rounded to the dtype of the
//   file the quantizer reads (QuantTarget's `base`), as quant::numeric::round_bf16/round_f16.
// Arithmetic goes through add/sub/mul/div (ggml_search.cuh), which give x86's NaN results (a
// NaN operand comes back quieted, the first one first; an invalid operation gives the negative
// default NaN) where the GPU would give its canonical NaN: NaN bits reach the bytes through
// nearest_int and the f16 scales. One thread per block (super-block for the K-quants), grid-stride.
// The launch geometry comes from src/offload/ggml_device.rs.

#include "halfbits.cuh"
#include "ggml_search.cuh"

// Source dtype codes; keep in sync with `SrcCode` in src/offload/quant_device.rs.
#define S_F32 0u
#define S_F16 1u
#define S_BF16 2u

// Precisions of the file the quantizer reads; `Precision` codes of src/offload/quant_device.rs.
#define P_F32 0u
#define P_BF16 1u
#define P_F16 2u

// ggml's type numbers (`enum ggml_type`); checked against `GgmlType::id` by a test of
// src/offload/ggml_device.rs.
#define G_Q4_0 2u
#define G_Q4_1 3u
#define G_Q5_0 6u
#define G_Q5_1 7u
#define G_Q8_0 8u
#define G_Q2_K 10u
#define G_Q3_K 11u
#define G_Q4_K 12u
#define G_Q5_K 13u
#define G_Q6_K 14u

#define QK_K 256

// ---- values ----

// The source value at `i` as f32 (exact), rounded to the file dtype `base`.
__device__ __forceinline__ float value(u64 src, u32 code, u32 base, u64 i) {
    float x;
    if (code == S_F32) {
        x = ((const float*)src)[i];
    } else {
        u32 h = ((const u16*)src)[i];
        x = __uint_as_float(code == S_F16 ? f16_to_f32_bits(h) : h << 16);
    }
    u32 b = __float_as_uint(x);
    if (base == P_BF16) {
        u32 r = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
        if ((b & 0x7fffffffu) > 0x7f800000u) r = (b >> 16) | 0x40u;
        return __uint_as_float((r & 0xffffu) << 16);
    }
    if (base == P_F16) return __uint_as_float(f16_to_f32_bits(f32_bits_to_f16(b)));
    return x;
}

__device__ __forceinline__ bool non_finite(float x) {
    return (__float_as_uint(x) & 0x7fffffffu) >= 0x7f800000u;
}

// ---- C's conversions (legacy.rs) ----

// legacy.rs c_trunc: x86's cvttss2si (truncation, INT_MIN for NaN and out of range).
__device__ __forceinline__ int c_trunc(float v) {
    if (v >= -2147483648.0f && v < 2147483648.0f) return (int)v;
    return (int)0x80000000u;
}

__device__ __forceinline__ float reciprocal(float d) { return d != 0.0f ? div(1.0f, d) : 0.0f; }

// GGML_FP32_TO_FP16 stored little-endian at `out`; returns the f16 widened back.
__device__ __forceinline__ float put_f16(u8* out, float x) {
    u32 h = f32_bits_to_f16(__float_as_uint(x));
    out[0] = (u8)(h & 0xffu);
    out[1] = (u8)(h >> 8);
    return __uint_as_float(f16_to_f32_bits(h));
}

__device__ __forceinline__ void put_u32(u8* out, u32 v) {
    #pragma unroll 1
    for (int k = 0; k < 4; k++) out[k] = (u8)(v >> (8 * k));
}

// ---- Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (legacy.rs) ----

// The value of largest magnitude, the first on ties.
__device__ __forceinline__ float signed_abs_max(const float* x) {
    float amax = 0.0f, max = 0.0f;
    #pragma unroll 1
    for (int j = 0; j < 32; j++) {
        if (amax < absf(x[j])) {
            amax = absf(x[j]);
            max = x[j];
        }
    }
    return max;
}

__device__ __forceinline__ void min_max(const float* x, float* mn, float* mx) {
    float min = 3.40282347e+38f, max = -3.40282347e+38f;
    #pragma unroll 1
    for (int j = 0; j < 32; j++) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
    }
    *mn = min;
    *mx = max;
}

// `MIN(nmax, (int8_t)c_trunc(v))` as a byte.
__device__ __forceinline__ u32 trunc_min(float v, int nmax) {
    int s = (int)(signed char)c_trunc(v);
    return (u32)(s > nmax ? nmax : s) & 0xffu;
}

__device__ __noinline__ void pack_q5(const u8* q, u8* qh, u8* qs) {
    u32 bits = 0u;
    #pragma unroll 1
    for (int j = 0; j < 16; j++) {
        qs[j] = (u8)((q[j] & 0x0fu) | ((q[j + 16] & 0x0fu) << 4));
        bits |= (u32)((q[j] & 0x10u) >> 4) << j;
        bits |= (u32)((q[j + 16] & 0x10u) >> 4) << (j + 16);
    }
    put_u32(qh, bits);
}

__device__ __noinline__ void encode_q4_0(const float* x, u8* b) {
    float d = div(signed_abs_max(x), -8.0f);
    float id = reciprocal(d);
    put_f16(b, d);
    #pragma unroll 1
    for (int j = 0; j < 16; j++) {
        u32 lo = trunc_min(add(mul(x[j], id), 8.5f), 15);
        u32 hi = trunc_min(add(mul(x[j + 16], id), 8.5f), 15);
        b[2 + j] = (u8)((lo | (hi << 4)) & 0xffu);
    }
}

__device__ __noinline__ void encode_q4_1(const float* x, u8* b) {
    float min, max;
    min_max(x, &min, &max);
    float d = div(sub(max, min), 15.0f);
    float id = reciprocal(d);
    put_f16(b, d);
    put_f16(b + 2, min);
    #pragma unroll 1
    for (int j = 0; j < 16; j++) {
        u32 lo = trunc_min(add(mul(sub(x[j], min), id), 0.5f), 15);
        u32 hi = trunc_min(add(mul(sub(x[j + 16], min), id), 0.5f), 15);
        b[4 + j] = (u8)((lo | (hi << 4)) & 0xffu);
    }
}

__device__ __noinline__ void encode_q5_0(const float* x, u8* b) {
    float d = div(signed_abs_max(x), -16.0f);
    float id = reciprocal(d);
    put_f16(b, d);
    u8 q[32];
    #pragma unroll 1
    for (int j = 0; j < 32; j++) q[j] = (u8)trunc_min(add(mul(x[j], id), 16.5f), 31);
    pack_q5(q, b + 2, b + 6);
}

__device__ __noinline__ void encode_q5_1(const float* x, u8* b) {
    float min, max;
    min_max(x, &min, &max);
    float d = div(sub(max, min), 31.0f);
    float id = reciprocal(d);
    put_f16(b, d);
    put_f16(b + 2, min);
    u8 q[32];
    // `(uint8_t)(x0 + 0.5f)`: no clamp in ggml.
    #pragma unroll 1
    for (int j = 0; j < 32; j++) q[j] = (u8)((u32)c_trunc(add(mul(sub(x[j], min), id), 0.5f)) & 0xffu);
    pack_q5(q, b + 4, b + 8);
}

__device__ __noinline__ void encode_q8_0(const float* x, u8* b) {
    float amax = 0.0f;
    #pragma unroll 1
    for (int j = 0; j < 32; j++) {
        float a = absf(x[j]);
        amax = amax > a ? amax : a;
    }
    float d = div(amax, 127.0f);
    float id = reciprocal(d);
    put_f16(b, d);
    #pragma unroll 1
    for (int j = 0; j < 32; j++) b[2 + j] = (u8)((u32)c_trunc(roundf(mul(x[j], id))) & 0xffu);
}

// ---- the K-quants (kquants.rs) ----

// Byte `l` of each 32-byte group holds values l, l+32, l+64, l+96 of its 128.
__device__ __noinline__ void pack_2bit(const u8* codes, u8* qs) {
    #pragma unroll 1
    for (int half = 0; half < 2; half++) {
        const u8* c = codes + half * 128;
        #pragma unroll 1
        for (int l = 0; l < 32; l++)
            qs[half * 32 + l] = (u8)((c[l] | (c[l + 32] << 2) | (c[l + 64] << 4) | (c[l + 96] << 6)) & 0xffu);
    }
}

__device__ __noinline__ void encode_q2_k(const float* x, u8* b) {
    u8 codes[QK_K];
    float scales[16], mins[16], weights[16];
    #pragma unroll 1
    for (int j = 0; j < 16; j++) {
        #pragma unroll 1
        for (int l = 0; l < 16; l++) weights[l] = absf(x[16 * j + l]);
        make_qkx2_quants<16>(3, -0.5f, 0.1f, 15, true, x + 16 * j, weights, codes + 16 * j,
                             &scales[j], &mins[j]);
    }
    float max_scale = 0.0f, max_min = 0.0f;
    #pragma unroll 1
    for (int j = 0; j < 16; j++) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    u8 sc[16];
    #pragma unroll 1
    for (int j = 0; j < 16; j++) sc[j] = 0;
    float d = 0.0f, dmin = 0.0f;
    if (max_scale > 0.0f) {
        float iscale = div(15.0f, max_scale);
        #pragma unroll 1
        for (int j = 0; j < 16; j++) sc[j] = (u8)((u32)nearest_int(mul(iscale, scales[j])) & 0xffu);
        d = div(max_scale, 15.0f);
    }
    if (max_min > 0.0f) {
        float iscale = div(15.0f, max_min);
        #pragma unroll 1
        for (int j = 0; j < 16; j++)
            sc[j] |= (u8)(((u32)nearest_int(mul(iscale, mins[j])) << 4) & 0xffu);
        dmin = div(max_min, 15.0f);
    }
    float dq = put_f16(b + 80, d);
    float mq = put_f16(b + 82, dmin);
    #pragma unroll 1
    for (int j = 0; j < 16; j++) {
        float dl = mul(dq, (float)(sc[j] & 0xfu));
        if (dl == 0.0f) continue;
        float dm = mul(mq, (float)(sc[j] >> 4));
        #pragma unroll 1
        for (int i = 0; i < 16; i++)
            codes[16 * j + i] = (u8)clampi(nearest_int(div(add(x[16 * j + i], dm), dl)), 0, 3);
    }
    #pragma unroll 1
    for (int j = 0; j < 16; j++) b[j] = sc[j];
    pack_2bit(codes, b + 16);
}

// The signed 6-bit scale of sub-block j of a Q3_K block.
__device__ __forceinline__ int q3_scale(const u8* sb, int j) {
    u32 low = j < 8 ? (sb[j] & 0xfu) : (sb[j - 8] >> 4);
    u32 high = (sb[8 + j % 4] >> (2 * (j / 4))) & 3u;
    return (int)(low | (high << 4)) - 32;
}

__device__ __noinline__ void encode_q3_k(const float* x, u8* b) {
    signed char codes[QK_K];
    float scales[16];
    #pragma unroll 1
    for (int j = 0; j < 16; j++) scales[j] = make_q3_quants(4, x + 16 * j, codes + 16 * j);
    float max_scale;
    float amax = signed_max(scales, 16, &max_scale);
    u8 sb[12];
    #pragma unroll 1
    for (int j = 0; j < 12; j++) sb[j] = 0;
    float d = 0.0f;
    if (max_scale != 0.0f) {
        float iscale = div(-32.0f, max_scale);
        #pragma unroll 1
        for (int j = 0; j < 16; j++) {
            // `int8_t l = nearest_int(..)` truncates, then clamps in int.
            int l = clampi((int)(signed char)nearest_int(mul(iscale, scales[j])), -32, 31) + 32;
            if (j < 8) {
                sb[j] = (u8)(l & 0xf);
            } else {
                sb[j - 8] |= (u8)((l & 0xf) << 4);
            }
            sb[j % 4 + 8] |= (u8)(((l >> 4) << (2 * (j / 4))) & 0xff);
        }
        d = div(1.0f, iscale);
    }
    float dq = put_f16(b + 108, d);
    #pragma unroll 1
    for (int j = 0; j < 16; j++) {
        float dl = mul(dq, (float)q3_scale(sb, j));
        if (dl == 0.0f) continue;
        #pragma unroll 1
        for (int i = 0; i < 16; i++)
            codes[16 * j + i] = (signed char)(clampi(nearest_int(div(x[16 * j + i], dl)), -4, 3) + 4);
    }
    u8* hmask = b;
    #pragma unroll 1
    for (int e = 0; e < 32; e++) hmask[e] = 0;
    u8 low[QK_K];
    #pragma unroll 1
    for (int e = 0; e < QK_K; e++) {
        u32 c = (u32)(u8)codes[e];
        if (c > 3u) {
            hmask[e % 32] |= (u8)(1u << (e / 32));
            c -= 4u;
        }
        low[e] = (u8)c;
    }
    pack_2bit(low, b + 32);
    #pragma unroll 1
    for (int j = 0; j < 12; j++) b[96 + j] = sb[j];
}

// get_scale_min_k4.
__device__ __forceinline__ void scale_min_k4(int j, const u8* q, u32* sc, u32* m) {
    if (j < 4) {
        *sc = q[j] & 63u;
        *m = q[j + 4] & 63u;
    } else {
        *sc = (q[j + 4] & 0xfu) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// The search and 6-bit scales shared by Q4_K (nmax 15) and Q5_K (31): codes, the 12 scale
// bytes into b + 4, d and dmin into b[0..4].
__device__ __noinline__ void encode_k4(const float* x, int nmax, float rmin, int nstep, u8* codes, u8* b) {
    float scales[8], mins[8], weights[32];
    #pragma unroll 1
    for (int j = 0; j < 8; j++) {
        const float* xs = x + 32 * j;
        float sum_x2 = 0.0f;
        #pragma unroll 1
        for (int i = 0; i < 32; i++) sum_x2 = add(sum_x2, mul(xs[i], xs[i]));
        float av_x = sqrt_(div(sum_x2, 32.0f));
        #pragma unroll 1
        for (int i = 0; i < 32; i++) weights[i] = add(av_x, absf(xs[i]));
        make_qkx2_quants<32>(nmax, rmin, 0.1f, nstep, false, xs, weights, codes + 32 * j,
                             &scales[j], &mins[j]);
    }
    float max_scale = 0.0f, max_min = 0.0f;
    #pragma unroll 1
    for (int j = 0; j < 8; j++) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    float inv_scale = max_scale > 0.0f ? div(63.0f, max_scale) : 0.0f;
    float inv_min = max_min > 0.0f ? div(63.0f, max_min) : 0.0f;
    u8* sb = b + 4;
    #pragma unroll 1
    for (int j = 0; j < 12; j++) sb[j] = 0;
    #pragma unroll 1
    for (int j = 0; j < 8; j++) {
        // `uint8_t ls = nearest_int(..)` truncates to a byte before the MIN.
        u32 ls = (u32)nearest_int(mul(inv_scale, scales[j])) & 0xffu;
        u32 lm = (u32)nearest_int(mul(inv_min, mins[j])) & 0xffu;
        ls = ls < 63u ? ls : 63u;
        lm = lm < 63u ? lm : 63u;
        if (j < 4) {
            sb[j] = (u8)ls;
            sb[j + 4] = (u8)lm;
        } else {
            sb[j + 4] = (u8)((ls & 0xfu) | ((lm & 0xfu) << 4));
            sb[j - 4] |= (u8)((ls >> 4) << 6);
            sb[j] |= (u8)((lm >> 4) << 6);
        }
    }
    float dq = put_f16(b, div(max_scale, 63.0f));
    float mq = put_f16(b + 2, div(max_min, 63.0f));
    #pragma unroll 1
    for (int j = 0; j < 8; j++) {
        u32 sc, m;
        scale_min_k4(j, sb, &sc, &m);
        float dl = mul(dq, (float)sc);
        if (dl == 0.0f) continue;
        float dm = mul(mq, (float)m);
        #pragma unroll 1
        for (int i = 0; i < 32; i++)
            codes[32 * j + i] = (u8)clampi(nearest_int(div(add(x[32 * j + i], dm), dl)), 0, nmax);
    }
}

__device__ __noinline__ void encode_q4_k(const float* x, u8* b) {
    u8 codes[QK_K];
    encode_k4(x, 15, -1.0f, 20, codes, b);
    #pragma unroll 1
    for (int c = 0; c < 4; c++) {
        #pragma unroll 1
        for (int l = 0; l < 32; l++)
            b[16 + 32 * c + l] = (u8)((codes[64 * c + l] | (codes[64 * c + l + 32] << 4)) & 0xffu);
    }
}

__device__ __noinline__ void encode_q5_k(const float* x, u8* b) {
    u8 codes[QK_K];
    encode_k4(x, 31, -0.5f, 15, codes, b);
    u8* qh = b + 16;
    u8* ql = b + 48;
    #pragma unroll 1
    for (int j = 0; j < 32; j++) qh[j] = 0;
    #pragma unroll 1
    for (int n = 0; n < 4; n++) {
        u32 m1 = 1u << (2 * n), m2 = 2u << (2 * n);
        #pragma unroll 1
        for (int j = 0; j < 32; j++) {
            u32 l1 = codes[64 * n + j], l2 = codes[64 * n + j + 32];
            if (l1 > 15u) {
                l1 -= 16u;
                qh[j] |= (u8)m1;
            }
            if (l2 > 15u) {
                l2 -= 16u;
                qh[j] |= (u8)m2;
            }
            ql[32 * n + j] = (u8)((l1 | (l2 << 4)) & 0xffu);
        }
    }
}

__device__ __noinline__ void encode_q6_k(const float* x, u8* b) {
    signed char codes[QK_K];
    float scales[16];
    #pragma unroll 1
    for (int j = 0; j < 16; j++) scales[j] = make_qx_quants(32, x + 16 * j, codes + 16 * j);
    float max_scale;
    float max_abs_scale = signed_max(scales, 16, &max_scale);
    if (max_abs_scale < GROUP_MAX_EPS) {
        #pragma unroll 1
        for (int k = 0; k < 210; k++) b[k] = 0;
        return;
    }
    float iscale = div(-128.0f, max_scale);
    float dq = put_f16(b + 208, div(1.0f, iscale));
    signed char sc[16];
    #pragma unroll 1
    for (int j = 0; j < 16; j++) {
        int s = nearest_int(mul(iscale, scales[j]));
        sc[j] = (signed char)(s < 127 ? s : 127);
    }
    #pragma unroll 1
    for (int j = 0; j < 16; j++) {
        float dl = mul(dq, (float)sc[j]);
        if (dl == 0.0f) continue;
        #pragma unroll 1
        for (int i = 0; i < 16; i++)
            codes[16 * j + i] = (signed char)(clampi(nearest_int(div(x[16 * j + i], dl)), -32, 31) + 32);
    }
    u8* ql = b;
    u8* qh = b + 128;
    #pragma unroll 1
    for (int half = 0; half < 2; half++) {
        const signed char* c = codes + half * 128;
        #pragma unroll 1
        for (int l = 0; l < 32; l++) {
            u32 q0 = (u8)c[l], q1 = (u8)c[l + 32], q2 = (u8)c[l + 64], q3 = (u8)c[l + 96];
            ql[64 * half + l] = (u8)(((q0 & 0xfu) | ((q2 & 0xfu) << 4)) & 0xffu);
            ql[64 * half + l + 32] = (u8)(((q1 & 0xfu) | ((q3 & 0xfu) << 4)) & 0xffu);
            qh[32 * half + l] =
                (u8)(((q0 >> 4) | ((q1 >> 4) << 2) | ((q2 >> 4) << 4) | ((q3 >> 4) << 6)) & 0xffu);
        }
    }
    #pragma unroll 1
    for (int j = 0; j < 16; j++) b[192 + j] = (u8)sc[j];
}

// Values per block of a type (32 or 256), bytes per block.
__device__ __forceinline__ u32 block_len(u32 type) { return type >= G_Q2_K ? 256u : 32u; }

__device__ __forceinline__ u32 block_bytes(u32 type) {
    switch (type) {
        case G_Q4_0: return 18u;
        case G_Q4_1: return 20u;
        case G_Q5_0: return 22u;
        case G_Q5_1: return 24u;
        case G_Q8_0: return 34u;
        case G_Q2_K: return 84u;
        case G_Q3_K: return 110u;
        case G_Q4_K: return 144u;
        case G_Q5_K: return 176u;
        default: return 210u;  // G_Q6_K
    }
}

// Blocks `first .. first + blocks` of the source's row-major values (`src` its first element),
// each encoded as ggml type `type` into `out` (block `first` at `out`). Counts the non-finite
// values read into `*count`.
extern "C" __global__ void checkpoint_save_ggml_quantize(u64 src, u32 code, u32 base, u32 type,
                                                         u64 first, u64 blocks, u8* out,
                                                         u64* count) {
    u32 len = block_len(type), bytes = block_bytes(type);
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x; t < blocks; t += stride) {
        float x[QK_K];
        u32 bad = 0u;
        u64 at = (first + t) * len;
        #pragma unroll 1
        for (u32 k = 0; k < len; k++) {
            x[k] = value(src, code, base, at + k);
            bad += non_finite(x[k]) ? 1u : 0u;
        }
        if (bad) atomicAdd(count, (u64)bad);
        u8* b = out + t * bytes;
        switch (type) {
            case G_Q4_0: encode_q4_0(x, b); break;
            case G_Q4_1: encode_q4_1(x, b); break;
            case G_Q5_0: encode_q5_0(x, b); break;
            case G_Q5_1: encode_q5_1(x, b); break;
            case G_Q8_0: encode_q8_0(x, b); break;
            case G_Q2_K: encode_q2_k(x, b); break;
            case G_Q3_K: encode_q3_k(x, b); break;
            case G_Q4_K: encode_q4_k(x, b); break;
            case G_Q5_K: encode_q5_k(x, b); break;
            case G_Q6_K: encode_q6_k(x, b); break;
            default: break;
        }
    }
}
