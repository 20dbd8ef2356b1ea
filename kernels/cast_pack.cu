// Fused cast-and-pack for the CUDA offload fast path (src/offload/cuda.rs).
//
// One launch packs many tensors into one contiguous staging region in their file dtype and counts
// the non-finite source values of each, so thousands of small tensors cost one kernel and one copy
// instead of one of each per tensor. blockIdx.y selects a table entry; the x dimension is a
// grid-stride loop over that entry's elements.
//
// Every conversion is written in integer arithmetic (or single IEEE operations that are exact) to
// give the same bits as the CPU path in src/cast.rs, NaN payloads included:
// - f16 -> f32 is exact; f32 -> f16 rounds to nearest even, NaN keeps the top payload bits and is
//   made quiet (what x86 F16C and the `half` crate do);
// - f32 -> bf16 rounds to nearest even, NaN made quiet;
// - fp8 follows __NV_SATFINITE: round to nearest even, overflow and +-Inf saturate to +-max finite,
//   NaN stays NaN;
// - f64 -> f32 rounds to nearest even; f64 -> anything narrower goes through f32 rounded to odd.
// Build with --fmad=false and --ftz=false: the two float additions below must be exact IEEE ops.

#include "halfbits.cuh"

// Dtype codes; keep in sync with `Code` in src/offload/cuda.rs.
#define C_F32 0u
#define C_F16 1u
#define C_BF16 2u
#define C_F64 3u
#define C_F8E4M3 4u
#define C_F8E5M2 5u
#define C_RAW1 6u
#define C_RAW2 7u
#define C_RAW4 8u
#define C_RAW8 9u

struct Entry {
    u64 src;      // device address of the first source element
    u64 numel;    // elements
    u64 dst_off;  // byte offset in the staging region
    u32 src_code;
    u32 dst_code;
};


__device__ __forceinline__ u32 f32_bits_to_bf16(u32 x) {
    u32 rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    if ((x & 0x7fffffffu) > 0x7f800000u) return ((x >> 16) | 0x40u) & 0xffffu;
    return rounded & 0xffffu;
}

template <u32 MAN, u32 BIAS, u32 MAX, u32 NAN_CODE>
__device__ __forceinline__ u32 f32_bits_to_f8(u32 x) {
    u32 sign = (x >> 24) & 0x80u;
    u32 a = x & 0x7fffffffu;
    const u32 shift = 23u - MAN;
    const u32 min_normal = (128u - BIAS) << 23;
    if (a > 0x7f800000u) return sign | NAN_CODE;
    if (a < min_normal) {
        const u32 magic = (127u + 24u - BIAS - MAN) << 23;
        float s = __fadd_rn(__uint_as_float(a), __uint_as_float(magic));
        return sign | (__float_as_uint(s) - magic);
    }
    u32 rebased = a - ((127u - BIAS) << 23);
    u32 normal = (rebased + ((1u << (shift - 1u)) - 1u) + ((rebased >> shift) & 1u)) >> shift;
    return sign | (normal < MAX ? normal : MAX);
}

__device__ __forceinline__ u32 f8_to_f32_bits(u32 b, u32 man, int bias, bool finite_only) {
    u32 sign = (b & 0x80u) << 24;
    u32 exp_max = 0x7fu >> man;
    u32 e = (b >> man) & exp_max;
    u32 m = b & ((1u << man) - 1u);
    if (e == exp_max) {
        if (!finite_only) return m == 0u ? (sign | 0x7f800000u) : (sign | 0x7fc00000u | (m << (23u - man)));
        if (m == (1u << man) - 1u) return sign | 0x7fc00000u;
    }
    if (e == 0u) {
        if (m == 0u) return sign;
        u32 p = 31u - __clz(m);
        u32 exp = (u32)((int)p + 1 - bias - (int)man + 127);
        return sign | (exp << 23) | ((m - (1u << p)) << (23u - p));
    }
    return sign | ((u32)((int)e - bias + 127) << 23) | (m << (23u - man));
}

// f64 -> f32, round to nearest even; NaN keeps its top payload bits and is made quiet.
__device__ __forceinline__ u32 f64_to_f32_rne(u64 d) {
    if ((d & 0x7fffffffffffffffull) > 0x7ff0000000000000ull) {
        return ((u32)(d >> 32) & 0x80000000u) | 0x7fc00000u | (u32)((d >> 29) & 0x3fffffu);
    }
    return __float_as_uint(__double2float_rn(__longlong_as_double((long long)d)));
}

// f64 -> f32 rounded to odd, so one more rounding to a narrower format rounds like rounding once.
__device__ __forceinline__ u32 f64_to_f32_odd(u64 d) {
    u32 r = f64_to_f32_rne(d);
    double x = __longlong_as_double((long long)d);
    if ((d & 0x7fffffffffffffffull) > 0x7ff0000000000000ull) return r;
    double back = (double)__uint_as_float(r);
    if (back == x) return r;
    if (fabs(back) > fabs(x)) r -= 1u;
    return r | 1u;
}

__device__ __forceinline__ bool non_finite(u64 v, u32 code) {
    switch (code) {
        case C_F32: return (v & 0x7fffffffull) >= 0x7f800000ull;
        case C_F16: return (v & 0x7fffull) >= 0x7c00ull;
        case C_BF16: return (v & 0x7fffull) >= 0x7f80ull;
        case C_F64: return (v & 0x7fffffffffffffffull) >= 0x7ff0000000000000ull;
        case C_F8E4M3: return (v & 0x7full) == 0x7full;
        case C_F8E5M2: return (v & 0x7full) >= 0x7cull;
        default: return false;
    }
}

__device__ __forceinline__ u32 width(u32 code) {
    switch (code) {
        case C_F32: case C_RAW4: return 4u;
        case C_F16: case C_BF16: case C_RAW2: return 2u;
        case C_F64: case C_RAW8: return 8u;
        default: return 1u;
    }
}

__device__ __forceinline__ u64 load(const u8* p, u32 w) {
    switch (w) {
        case 8: return *(const u64*)p;
        case 4: return *(const u32*)p;
        case 2: return *(const u16*)p;
        default: return *p;
    }
}

__device__ __forceinline__ void store(u8* p, u32 w, u64 v) {
    switch (w) {
        case 8: *(u64*)p = v; break;
        case 4: *(u32*)p = (u32)v; break;
        case 2: *(u16*)p = (u16)v; break;
        default: *p = (u8)v; break;
    }
}

// Source bits -> f32 bits, exact (f64 is rounded to odd; see above).
__device__ __forceinline__ u32 decode(u64 v, u32 code) {
    switch (code) {
        case C_F32: return (u32)v;
        case C_F16: return f16_to_f32_bits((u32)v);
        case C_BF16: return (u32)v << 16;
        case C_F64: return f64_to_f32_odd(v);
        case C_F8E4M3: return f8_to_f32_bits((u32)v, 3u, 7, true);
        default: return f8_to_f32_bits((u32)v, 2u, 15, false);  // C_F8E5M2
    }
}

__device__ __forceinline__ u64 encode(u32 f, u32 code) {
    switch (code) {
        case C_F32: return f;
        case C_F16: return f32_bits_to_f16(f);
        case C_BF16: return f32_bits_to_bf16(f);
        case C_F8E4M3: return f32_bits_to_f8<3u, 7u, 0x7eu, 0x7fu>(f);
        default: return f32_bits_to_f8<2u, 15u, 0x7bu, 0x7eu>(f);  // C_F8E5M2
    }
}

extern "C" __global__ void cast_pack(const Entry* table, u8* dst, u64* counters) {
    const Entry e = table[blockIdx.y];
    const u32 sw = width(e.src_code);
    const u32 dw = width(e.dst_code);
    const u8* src = (const u8*)e.src;
    u8* out = dst + e.dst_off;
    u32 count = 0;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < e.numel; i += stride) {
        u64 v = load(src + i * sw, sw);
        count += non_finite(v, e.src_code) ? 1u : 0u;
        u64 w;
        if (e.src_code == e.dst_code) {
            w = v;
        } else if (e.src_code == C_F64 && e.dst_code == C_F32) {
            w = f64_to_f32_rne(v);
        } else {
            w = encode(decode(v, e.src_code), e.dst_code);
        }
        store(out + i * dw, dw, w);
    }
    for (int o = 16; o > 0; o >>= 1) count += __shfl_down_sync(0xffffffffu, count, o);
    if ((threadIdx.x & 31u) == 0u && count != 0u) atomicAdd(&counters[blockIdx.y], (u64)count);
}
