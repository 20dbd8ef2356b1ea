// Quantization of a CUDA tensor into ComfyUI's formats (src/offload/cuda/quantize.rs), so that
// only the codes and scales cross to the host.
//
// The CPU codecs in src/quant/ are the reference; every step here is the same IEEE operation in
// the same order (build with --fmad=false --ftz=false, and IEEE division, nvcc's default):
// - abs_max: the largest |x| as the integer maximum of the magnitudes' bits (NaN lies above
//   +Inf), as quant::numeric::abs_max;
// - tensorwise (fp8 e4m3/e5m2, int8): quant::tensorwise::encode_fp8 / encode_int8, with the
//   factor (the fp8 reciprocal already rounded to the source precision, or int8's divisor)
//   computed on the host;
// - blocks (mxfp8, nvfp4): quant::blocks::RowEncoder, one thread per block, scales written into
//   the swizzled layout of quant::numeric::swizzled. The output buffers are zeroed before the
//   launch, which gives the padding rows, padding blocks and band tails their zeros.
// The launch geometry and buffer sizes come from src/offload/quant_device.rs.

#include "halfbits.cuh"

// Source dtype codes; keep in sync with `SrcCode` in src/offload/quant_device.rs.
#define S_F32 0u
#define S_F16 1u
#define S_BF16 2u

// Formats; keep in sync with `Kernel` in src/offload/quant_device.rs.
#define Q_E4M3 0u
#define Q_E5M2 1u
#define Q_INT8 2u
#define Q_MXFP8 3u
#define Q_NVFP4 4u

// Precisions (the source dtype the quantizer computes in); `Precision` in src/quant/format.rs.
#define P_F32 0u
#define P_BF16 1u
#define P_F16 2u


// The source value at `i` as f32 (exact for every source dtype).
__device__ __forceinline__ float load(u64 src, u32 code, u64 i) {
    if (code == S_F32) return ((const float*)src)[i];
    u32 h = ((const u16*)src)[i];
    return __uint_as_float(code == S_F16 ? f16_to_f32_bits(h) : h << 16);
}

// Rounds to the precision and widens back (quant::numeric::round_bf16 / round_f16).
__device__ __forceinline__ float round_to(float x, u32 precision) {
    u32 b = __float_as_uint(x);
    if (precision == P_BF16) {
        u32 r = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
        if ((b & 0x7fffffffu) > 0x7f800000u) r = (b >> 16) | 0x40u;
        return __uint_as_float((r & 0xffffu) << 16);
    }
    if (precision == P_F16) return __uint_as_float(f16_to_f32_bits(f32_bits_to_f16(b)));
    return x;
}

// cast::scalar::f32_bits_to_f8: round to nearest even, overflow clamps to MAX, NaN to NAN_CODE.
__device__ __forceinline__ u32 f32_to_f8(float x, u32 man, u32 bias, u32 max, u32 nan_code) {
    u32 b = __float_as_uint(x);
    u32 sign = (b >> 24) & 0x80u;
    u32 a = b & 0x7fffffffu;
    u32 shift = 23u - man;
    u32 min_normal = (128u - bias) << 23;
    u32 rebased = a - ((127u - bias) << 23);
    u32 normal = (rebased + ((1u << (shift - 1u)) - 1u) + ((rebased >> shift) & 1u)) >> shift;
    if (normal > max) normal = max;
    u32 magic = (127u + 24u - bias - man) << 23;
    u32 sub = __float_as_uint(__fadd_rn(__uint_as_float(a), __uint_as_float(magic))) - magic;
    u32 mag = a > 0x7f800000u ? nan_code : (a < min_normal ? sub : normal);
    return (sign | mag) & 0xffu;
}

__device__ __forceinline__ u32 e4m3(float x) { return f32_to_f8(x, 3u, 7u, 0x7eu, 0x7fu); }

// torch's e5m2 conversion of a clamped value: NaN becomes 0x7F with its sign.
__device__ __forceinline__ u32 e5m2(float x) {
    u32 b = __float_as_uint(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) return ((b >> 24) & 0x80u) | 0x7fu;
    return f32_to_f8(x, 2u, 15u, 0x7bu, 0x7eu);
}

__device__ __forceinline__ float e4m3_to_f32(u32 c) {
    u32 sign = (c & 0x80u) << 24;
    u32 e = (c >> 3) & 0xfu;
    u32 m = c & 7u;
    if (e == 0xfu && m == 7u) return __uint_as_float(sign | 0x7fc00000u);
    if (e == 0u) {
        if (m == 0u) return __uint_as_float(sign);
        u32 p = 31u - __clz(m);
        return __uint_as_float(sign | ((p + 118u) << 23) | ((m - (1u << p)) << (23u - p)));
    }
    return __uint_as_float(sign | ((e + 120u) << 23) | (m << 20));
}

// Rust's f32::clamp: NaN passes unchanged.
__device__ __forceinline__ float clamp_keep_nan(float x, float lo, float hi) {
    if (x < lo) return lo;
    if (x > hi) return hi;
    return x;
}

// x86's IEEE results where the GPU's differ: a NaN operand comes back as itself, made quiet (the
// GPU returns a canonical positive NaN), and 0/0 is x86's negative default NaN.
__device__ __forceinline__ float quiet(float v) {
    return __uint_as_float(__float_as_uint(v) | 0x00400000u);
}

__device__ __forceinline__ float div_like_host(float v, float d) {
    if (v != v) return quiet(v);
    if (d == 0.0f && v == 0.0f) return __uint_as_float(0xffc00000u);
    return __fdiv_rn(v, d);
}

__device__ __forceinline__ float mul_like_host(float v, float f) {
    if (v != v) return quiet(v);
    return __fmul_rn(v, f);
}

__device__ __forceinline__ bool non_finite(float x) {
    return (__float_as_uint(x) & 0x7fffffffu) >= 0x7f800000u;
}

__device__ __forceinline__ u32 warp_max(u32 v) {
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_down_sync(0xffffffffu, v, o));
    return v;
}

// The largest magnitude's bits of `n` source values into `*out` (zeroed by the caller).
extern "C" __global__ void checkpoint_save_abs_max(u64 src, u64 n, u32 code, u32* out) {
    u32 m = 0u;
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        u32 b = __float_as_uint(load(src, code, i)) & 0x7fffffffu;
        m = max(m, b);
    }
    m = warp_max(m);
    if ((threadIdx.x & 31u) == 0u) atomicMax(out, m);
}

// One code per value: fp8 (`factor` = the reciprocal of the scale, rounded to the precision) or
// int8 (`factor` = the divisor). Counts the non-finite source values into `*count`.
extern "C" __global__ void checkpoint_save_quantize_tensorwise(u64 src, u64 n, u32 code,
                                                               u32 format, u32 precision,
                                                               float factor, u8* out,
                                                               u64* count) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float x = load(src, code, i);
        if (non_finite(x)) atomicAdd(count, 1ull);
        u32 c;
        if (format == Q_INT8) {
            const float ROUND = 12582912.0f;  // 1.5 * 2^23
            float q = clamp_keep_nan(round_to(div_like_host(x, factor), precision), -256.0f, 256.0f);
            q = __fsub_rn(__fadd_rn(q, ROUND), ROUND);
            q = clamp_keep_nan(q, -128.0f, 127.0f);
            c = q != q ? 0u : ((u32)(int)q) & 0xffu;
        } else {
            float t = round_to(mul_like_host(x, factor), precision);
            c = format == Q_E4M3 ? e4m3(clamp_keep_nan(t, -448.0f, 448.0f))
                                 : e5m2(clamp_keep_nan(t, -57344.0f, 57344.0f));
        }
        out[i] = (u8)c;
    }
}

// kitchen's e2m1 rounding (quant::numeric::e2m1_from_f32).
__device__ __forceinline__ u32 e2m1(float x) {
    u32 b = __float_as_uint(x);
    u32 sign = (b >> 28) & 0x8u;
    u32 n = b & 0x7fffffffu;
    float a = __uint_as_float(n);
    u32 mag = (a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) + (a > 2.5f) + (a >= 3.5f) +
              (a > 5.0f);
    // (1 - 127) << 23 as a two's-complement u32: 0xC1000000.
    if (a != a) mag = ((n + 0xC1000000u + ((1u << 21) - 1u) + ((n >> 22) & 1u)) >> 22) & 0xffu;
    return (mag | sign) & 0xffu;
}

// The e8m0 exponent kitchen's quantize_mxfp8 picks (quant::numeric::mxfp8_exponent).
__device__ __forceinline__ u32 mxfp8_exponent(float amax) {
    const float MIN = __uint_as_float(0x00400000u);  // 2^-127
    float needed = __fdiv_rn(amax, 448.0f);
    if (needed < MIN) needed = MIN;
    float l = ceilf((float)log2((double)needed));
    if (!isfinite(l)) return 0u;
    int e = (int)l + 127;
    return (u32)(e < 0 ? 0 : (e > 254 ? 254 : e));
}

// quant::numeric::swizzled: cuBLAS's blocked layout of the block scales.
__device__ __forceinline__ u64 swizzled(u64 row, u64 col, u64 cols) {
    u64 tile = (row / 128u) * (cols / 4u) + col / 4u;
    u64 r = row % 128u;
    return tile * 512u + (r % 32u) * 16u + (r / 32u) * 4u + col % 4u;
}

// One thread per block of a row: mxfp8 (32 values, e8m0 scale) or nvfp4 (16 values, e4m3 scale
// relative to `tensor`). Codes row-major (`row_bytes` per stored row), scales swizzled with
// `scale_cols` columns. Counts the non-finite source values into `*count`.
extern "C" __global__ void checkpoint_save_quantize_blocks(u64 src, u32 code, u32 format,
                                                           u64 rows, u64 cols, u64 blocks,
                                                           u64 row_bytes, u64 scale_cols,
                                                           float tensor, u8* codes, u8* scales,
                                                           u64* count) {
    u32 len = format == Q_MXFP8 ? 32u : 16u;
    u64 total = rows * blocks;
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += stride) {
        u64 row = t / blocks, b = t % blocks;
        u64 start = b * len;
        u32 n = cols > start ? (u32)min((u64)len, cols - start) : 0u;
        float x[32];
        u32 amax = 0u, bad = 0u;
        for (u32 k = 0; k < 32u; k++) {
            x[k] = k < n ? load(src, code, row * cols + start + k) : 0.0f;
            if (k < len) {
                amax = max(amax, __float_as_uint(x[k]) & 0x7fffffffu);
                bad += non_finite(x[k]) ? 1u : 0u;
            }
        }
        if (bad) atomicAdd(count, (u64)bad);
        float m = amax > 0x7f800000u ? __uint_as_float(0x7fc00000u) : __uint_as_float(amax);
        u8* out = codes + row * row_bytes;
        u32 s;
        if (format == Q_MXFP8) {
            s = m == 0.0f ? 0u : mxfp8_exponent(m);
            out += start;
            if (s == 0u) {
                // Scale byte 0 stands for 0: kitchen divides by it (all-zero blocks give +0).
                for (u32 k = 0; k < 32u; k++)
                    out[k] = m == 0.0f ? 0u : (u8)e4m3(clamp_keep_nan(div_like_host(x[k], 0.0f), -448.0f, 448.0f));
            } else {
                float inv = s == 254u ? __uint_as_float(0x00400000u) : __uint_as_float((254u - s) << 23);
                for (u32 k = 0; k < 32u; k++)
                    out[k] = (u8)e4m3(clamp_keep_nan(mul_like_host(x[k], inv), -448.0f, 448.0f));
            }
        } else {
            float blk = __fdiv_rn(__fdiv_rn(m, 6.0f), tensor);
            s = e4m3(blk > 448.0f ? 448.0f : blk);
            float whole = __fmul_rn(tensor, e4m3_to_f32(s));
            out += start / 2u;
            for (u32 k = 0; k < 16u; k += 2u) {
                u32 hi = whole == 0.0f ? 0u : e2m1(div_like_host(x[k], whole));
                u32 lo = whole == 0.0f ? 0u : e2m1(div_like_host(x[k + 1u], whole));
                out[k / 2u] = (u8)((hi << 4) | lo);
            }
        }
        scales[swizzled(row, b, scale_cols)] = (u8)s;
    }
}
