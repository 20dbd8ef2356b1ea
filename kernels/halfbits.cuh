// Half-precision bit conversions shared by the kernels (cast_pack.cu, quantize.cu): the same
// bits as the CPU path (src/cast/), NaN payloads included.
#pragma once

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

__device__ __forceinline__ u32 f16_to_f32_bits(u32 h) {
    u32 sign = (h & 0x8000u) << 16;
    u32 e = (h >> 10) & 0x1fu;
    u32 m = h & 0x3ffu;
    if (e == 0x1fu) return sign | 0x7f800000u | (m << 13);
    if (e == 0u) {
        if (m == 0u) return sign;
        u32 p = 31u - __clz(m);  // highest set bit; value = m * 2^-24
        return sign | ((p + 103u) << 23) | ((m - (1u << p)) << (23u - p));
    }
    return sign | ((e + 112u) << 23) | (m << 13);
}

__device__ __forceinline__ u32 f32_bits_to_f16(u32 x) {
    u32 sign = (x >> 16) & 0x8000u;
    u32 a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u | ((a >> 13) & 0x3ffu);
    if (a >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to Inf
    if (a >= 0x38800000u) {                       // normal f16
        u32 r = a - 0x38000000u;
        return sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13);
    }
    if (a <= 0x33000000u) return sign;  // <= 2^-25 rounds to zero (the tie goes to even)
    u32 e = a >> 23;
    u32 m = (a & 0x7fffffu) | 0x800000u;
    u32 shift = 126u - e;  // 14..24: value / 2^-24 = m >> shift
    u32 r = m >> shift;
    u32 rem = m & ((1u << shift) - 1u);
    u32 half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) r += 1u;
    return sign | r;
}
