// The scale searches of ggml's K-quant reference quantizers for kernels/ggml_quantize.cu:
// search.rs's make_qx_quants, make_q3_quants and make_qkx2_quants, one sub-block at a time, with
// the arithmetic helpers they share (x86's IEEE results, nearest_int). See ggml_quantize.cu for
// what matches what.
#pragma once

#include "halfbits.cuh"

#define GROUP_MAX_EPS 1e-15f

// ---- x86's IEEE results ----

__device__ __forceinline__ float quiet(float v) {
    return __uint_as_float(__float_as_uint(v) | 0x00400000u);
}

__device__ __forceinline__ float x86(float a, float b, float r) {
    if (a != a) return quiet(a);
    if (b != b) return quiet(b);
    if (r != r) return __uint_as_float(0xffc00000u);
    return r;
}

__device__ __forceinline__ float add(float a, float b) { return x86(a, b, __fadd_rn(a, b)); }
__device__ __forceinline__ float sub(float a, float b) { return x86(a, b, __fsub_rn(a, b)); }
__device__ __forceinline__ float mul(float a, float b) { return x86(a, b, __fmul_rn(a, b)); }
__device__ __forceinline__ float div(float a, float b) { return x86(a, b, __fdiv_rn(a, b)); }

__device__ __forceinline__ float sqrt_(float a) {
    if (a != a) return quiet(a);
    float r = __fsqrt_rn(a);
    return r != r ? __uint_as_float(0xffc00000u) : r;
}

// Sign flip and sign clear of the bits (Rust's `-x` and `abs`, NaN payloads kept).
__device__ __forceinline__ float neg(float a) { return __uint_as_float(__float_as_uint(a) ^ 0x80000000u); }
__device__ __forceinline__ float absf(float a) { return __uint_as_float(__float_as_uint(a) & 0x7fffffffu); }

// The value of largest magnitude among x[0..n) (the first of equal magnitudes) into *max, and
// that magnitude: the group maxima of make_qx_quants / make_q3_quants and of the K-quants'
// sub-block scales.
__device__ __forceinline__ float signed_max(const float* x, int n, float* max) {
    float m = 0.0f, amax = 0.0f;
    #pragma unroll 1
    for (int i = 0; i < n; i++) {
        float ax = absf(x[i]);
        if (ax > amax) {
            amax = ax;
            m = x[i];
        }
    }
    *max = m;
    return amax;
}

// ---- integer conversions as the reference does them ----

// search.rs nearest_int: add 1.5*2^23, read the mantissa.
__device__ __forceinline__ int nearest_int(float f) {
    int i = __float_as_int(add(f, 12582912.0f));
    return (i & 0x007fffff) - 0x00400000;
}

__device__ __forceinline__ int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// ---- the scale searches (search.rs) ----

// make_qx_quants(16, nmax, x, L, 1, NULL): codes in 0..2*nmax, returns the scale.
__device__ __noinline__ float make_qx_quants(int nmax, const float* x, signed char* L) {
    float max;
    float amax = signed_max(x, 16, &max);
    if (amax < GROUP_MAX_EPS) {
        #pragma unroll 1
        for (int i = 0; i < 16; i++) L[i] = 0;
        return 0.0f;
    }
    float fnmax = (float)nmax;
    float iscale = div(neg(fnmax), max);
    float sumlx = 0.0f, suml2 = 0.0f;
    #pragma unroll 1
    for (int i = 0; i < 16; i++) {
        int l = clampi(nearest_int(mul(iscale, x[i])), -nmax, nmax - 1);
        L[i] = (signed char)(l + nmax);
        float fl = (float)l, w = mul(x[i], x[i]);
        sumlx = add(sumlx, mul(mul(w, x[i]), fl));
        suml2 = add(suml2, mul(mul(w, fl), fl));
    }
    float scale = suml2 != 0.0f ? div(sumlx, suml2) : 0.0f;
    float best = mul(scale, sumlx);
    #pragma unroll 1
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = div(neg(add(fnmax, mul(0.1f, (float)is))), max);
        sumlx = 0.0f;
        suml2 = 0.0f;
        #pragma unroll 1
        for (int i = 0; i < 16; i++) {
            float fl = (float)clampi(nearest_int(mul(iscale, x[i])), -nmax, nmax - 1);
            float w = mul(x[i], x[i]);
            sumlx = add(sumlx, mul(mul(w, x[i]), fl));
            suml2 = add(suml2, mul(mul(w, fl), fl));
        }
        if (suml2 > 0.0f && mul(sumlx, sumlx) > mul(best, suml2)) {
            #pragma unroll 1
            for (int i = 0; i < 16; i++)
                L[i] = (signed char)(clampi(nearest_int(mul(iscale, x[i])), -nmax, nmax - 1) + nmax);
            scale = div(sumlx, suml2);
            best = mul(scale, sumlx);
        }
    }
    return scale;
}

// make_q3_quants(16, nmax, x, L, true): codes in 0..2*nmax, returns the scale.
__device__ __noinline__ float make_q3_quants(int nmax, const float* x, signed char* L) {
    float max;
    float amax = signed_max(x, 16, &max);
    if (amax < GROUP_MAX_EPS) {
        #pragma unroll 1
        for (int i = 0; i < 16; i++) L[i] = 0;
        return 0.0f;
    }
    float iscale = div(neg((float)nmax), max);
    float sumlx = 0.0f, suml2 = 0.0f;
    #pragma unroll 1
    for (int i = 0; i < 16; i++) {
        int l = clampi(nearest_int(mul(iscale, x[i])), -nmax, nmax - 1);
        L[i] = (signed char)l;
        float fl = (float)l, w = mul(x[i], x[i]);
        sumlx = add(sumlx, mul(mul(w, x[i]), fl));
        suml2 = add(suml2, mul(mul(w, fl), fl));
    }
    #pragma unroll 1
    for (int itry = 0; itry < 5; itry++) {
        bool changed = false;
        #pragma unroll 1
        for (int i = 0; i < 16; i++) {
            float v = x[i], w = mul(v, v), l = (float)L[i];
            float slx = sub(sumlx, mul(mul(w, v), l));
            if (slx > 0.0f) {
                float sl2 = sub(suml2, mul(mul(w, l), l));
                int new_l = clampi(nearest_int(div(mul(v, sl2), slx)), -nmax, nmax - 1);
                if (new_l != (int)L[i]) {
                    float fn = (float)new_l;
                    slx = add(slx, mul(mul(w, v), fn));
                    sl2 = add(sl2, mul(mul(w, fn), fn));
                    if (sl2 > 0.0f && mul(mul(slx, slx), suml2) > mul(mul(sumlx, sumlx), sl2)) {
                        L[i] = (signed char)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if (!changed) break;
    }
    #pragma unroll 1
    for (int i = 0; i < 16; i++) L[i] = (signed char)(L[i] + nmax);
    return suml2 > 0.0f ? div(sumlx, suml2) : 0.0f;
}

// make_qkx2_quants over N values: codes in 0..=nmax into L, the scale into *scale and the
// negated minimum into *the_min.
template <int N>
__device__ __noinline__ void make_qkx2_quants(int nmax, float rmin, float rdelta, int nstep, bool use_mad,
                                 const float* x, const float* weights, u8* L, float* scale_out,
                                 float* min_out) {
    float min = x[0], max = x[0];
    float sum_w = weights[0];
    float sum_x = mul(sum_w, x[0]);
    #pragma unroll 1
    for (int i = 1; i < N; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w = add(sum_w, weights[i]);
        sum_x = add(sum_x, mul(weights[i], x[i]));
    }
    if (min > 0.0f) min = 0.0f;
    if (max == min) {
        #pragma unroll 1
        for (int i = 0; i < N; i++) L[i] = 0;
        *scale_out = 0.0f;
        *min_out = neg(min);
        return;
    }
    float fnmax = (float)nmax;
    float iscale = div(fnmax, sub(max, min));
    float scale = div(1.0f, iscale);
    float best_error = 0.0f;
    #pragma unroll 1
    for (int i = 0; i < N; i++) {
        int l = clampi(nearest_int(mul(iscale, sub(x[i], min))), 0, nmax);
        L[i] = (u8)l;
        float diff = sub(add(mul(scale, (float)l), min), x[i]);
        best_error = add(best_error, mul(weights[i], use_mad ? absf(diff) : mul(diff, diff)));
    }
    u8 aux[N];
    #pragma unroll 1
    for (int is = 0; is <= nstep; is++) {
        iscale = div(add(add(rmin, mul(rdelta, (float)is)), fnmax), sub(max, min));
        float sum_l = 0.0f, sum_l2 = 0.0f, sum_xl = 0.0f;
        #pragma unroll 1
        for (int i = 0; i < N; i++) {
            int l = clampi(nearest_int(mul(iscale, sub(x[i], min))), 0, nmax);
            aux[i] = (u8)l;
            float w = weights[i], fl = (float)l;
            sum_l = add(sum_l, mul(w, fl));
            sum_l2 = add(sum_l2, mul(mul(w, fl), fl));
            sum_xl = add(sum_xl, mul(mul(w, fl), x[i]));
        }
        float D = sub(mul(sum_w, sum_l2), mul(sum_l, sum_l));
        if (D > 0.0f) {
            float this_scale = div(sub(mul(sum_w, sum_xl), mul(sum_x, sum_l)), D);
            float this_min = div(sub(mul(sum_l2, sum_x), mul(sum_l, sum_xl)), D);
            if (this_min > 0.0f) {
                this_min = 0.0f;
                this_scale = div(sum_xl, sum_l2);
            }
            float cur_error = 0.0f;
            #pragma unroll 1
            for (int i = 0; i < N; i++) {
                float diff = sub(add(mul(this_scale, (float)aux[i]), this_min), x[i]);
                cur_error = add(cur_error, mul(weights[i], use_mad ? absf(diff) : mul(diff, diff)));
            }
            if (cur_error < best_error) {
                #pragma unroll 1
                for (int i = 0; i < N; i++) L[i] = aux[i];
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *scale_out = scale;
    *min_out = neg(min);
}
