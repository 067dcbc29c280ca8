// pixel_ops.h — the per-pixel maths of edgeseg's pre- and post-processing, written once.
//
// The C++ CPU extension (cpp_ext/cpu) and the CUDA kernels (cpp_ext/cuda) are loops over these
// functions, and edgeseg/runtime/kernels/reference.py is their NumPy statement. Every formula
// here reproduces that reference operation for operation, in the same precision and order, so
// labels agree bit for bit and floats to rounding:
//   - bilinear taps: src = (dst + 0.5) * in / out - 0.5 = ((2 dst + 1) in - out) / (2 out),
//     clamped to [0, in - 1], in 32-bit integers: the index is the exact quotient and the weight
//     the remainder over 2 out, one correctly rounded float division; rows are blended first,
//     then columns (INTER_LINEAR geometry, without OpenCV's fixed-point rounding);
//   - nearest taps: floor((2 * dst + 1) * in / (2 * out)) in 32-bit integers (exact);
//   - no double and no 64-bit division per pixel: both are slow on a Jetson's GPU (FP64 runs at
//     a small fraction of FP32 there). Sides are at most MAX_SIDE, so (2 dst + 1) in fits int32;
//   - argmax over classes: the first maximum wins;
//   - overlay: floor(frame * (1 - alpha) + colour * alpha + 0.5) in float.
// Build the translation units that include this with floating-point contraction off
// (-ffp-contract=off, nvcc/NVRTC --fmad=false): a fused multiply-add rounds once where NumPy
// rounds twice, and a tie in an argmax could then break the other way.
//
// No standard-library includes: NVRTC compiles this without a host toolchain.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define ES_HD __host__ __device__ __forceinline__
#else
#define ES_HD inline
#endif

namespace edgeseg {

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;

// ---------------------------------------------------------------------------- float16 <-> float

ES_HD float bits_as_float(u32 b) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(b);
#else
    union { u32 u; float f; } v;
    v.u = b;
    return v.f;
#endif
}

ES_HD u32 float_as_bits(float f) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(f);
#else
    union { float f; u32 u; } v;
    v.f = f;
    return v.u;
#endif
}

// IEEE binary16 bits -> float (exact: every half is a float).
ES_HD float half_to_float(u16 h) {
    u32 sign = (u32)(h & 0x8000u) << 16;
    u32 exp = (h >> 10) & 0x1fu;
    u32 man = h & 0x3ffu;
    if (exp == 0x1fu) return bits_as_float(sign | 0x7f800000u | (man << 13));  // inf / nan
    if (exp != 0) return bits_as_float(sign | ((exp + 112u) << 23) | (man << 13));
    // zero or subnormal: man * 2^-24, exactly representable
    float f = (float)man * 5.9604644775390625e-08f;
    return sign ? -f : f;
}

// float -> IEEE binary16 bits, round to nearest even (NumPy's astype(float16)).
ES_HD u16 float_to_half(float f) {
    u32 x = float_as_bits(f);
    u32 sign = (x >> 16) & 0x8000u;
    u32 ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u)  // inf or nan (keep nan quiet)
        return (u16)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    if (ax >= 0x477ff000u) return (u16)(sign | 0x7c00u);  // rounds past 65504: inf
    if (ax < 0x38800000u) {  // below the smallest normal half: subnormal or zero
        if (ax < 0x33000000u) return (u16)sign;  // < 2^-25 rounds to zero
        u32 e = ax >> 23;
        u32 m = (ax & 0x7fffffu) | 0x800000u;
        u32 shift = 126u - e;  // puts m's leading bit at the half's 2^-24 unit
        u32 h = m >> shift;
        u32 rem = m & ((1u << shift) - 1u);
        u32 halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (h & 1u))) ++h;
        return (u16)(sign | h);
    }
    u32 h = ((ax >> 13) - (112u << 10));
    u32 rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // carry into the exponent is right
    return (u16)(sign | h);
}

ES_HD float load_float(const float* p, i64 i) { return p[i]; }
ES_HD float load_float(const u16* p, i64 i) { return half_to_float(p[i]); }
ES_HD void store_float(float* p, i64 i, float v) { p[i] = v; }
ES_HD void store_float(u16* p, i64 i, float v) { p[i] = float_to_half(v); }

// ------------------------------------------------------------------------------------ sampling

struct LinearTap {
    int i0, i1;  // the two source samples
    float w;     // weight of i1; i0 gets (1 - w)
};

// The longest side any kernel takes: (2 * dst + 1) * in stays below 2^31.
#define ES_MAX_SIDE 32767

// Half-pixel-centre bilinear tap of output sample ``dst`` when ``n_in`` samples become ``n_out``:
// src = num / den with num = (2 dst + 1) n_in - n_out and den = 2 n_out, clamped to [0, n_in - 1].
ES_HD LinearTap linear_tap(int dst, int n_in, int n_out) {
    const int num = (2 * dst + 1) * n_in - n_out, den = 2 * n_out;
    LinearTap t;
    t.i0 = 0;
    t.w = 0.0f;
    if (num > 0) {
        const int q = num / den;  // num > 0: truncation is floor
        if (q >= n_in - 1) {
            t.i0 = n_in - 1;
        } else {
            t.i0 = q;
            t.w = (float)(num - q * den) / (float)den;  // exact integers below 2^24: one rounding
        }
    }
    t.i1 = t.i0 + 1 < n_in ? t.i0 + 1 : n_in - 1;
    return t;
}

// Centre-sampling nearest tap, in exact integer arithmetic.
ES_HD int nearest_tap(int dst, int n_in, int n_out) {
    const int i = ((2 * dst + 1) * n_in) / (2 * n_out);
    return i < n_in ? i : n_in - 1;
}

// Blend of four samples: rows (y) first, then columns (x), as the reference does.
ES_HD float bilerp(float v00, float v01, float v10, float v11, float wy, float wx) {
    float r0 = v00 * (1.0f - wy) + v10 * wy;  // column x0
    float r1 = v01 * (1.0f - wy) + v11 * wy;  // column x1
    return r0 * (1.0f - wx) + r1 * wx;
}

// --------------------------------------------------------------------------------- preprocess

// Normalisation of one channel value: (v - mean) * (1 / std), inv_std precomputed in float.
ES_HD float normalize(float v, float mean, float inv_std) { return (v - mean) * inv_std; }

// One output pixel of preprocess: bilinear sample of a BGR uint8 HWC image (row pitch
// ``pitch`` bytes, 3 bytes a pixel), swapped to RGB and normalised. ``rgb`` receives R, G, B.
ES_HD void sample_bgr_normalized(const u8* img, i64 pitch, LinearTap ty, LinearTap tx,
                                 const float mean_rgb[3], const float inv_std_rgb[3], float rgb[3]) {
    const u8* r0 = img + (i64)ty.i0 * pitch;
    const u8* r1 = img + (i64)ty.i1 * pitch;
    i64 a = (i64)tx.i0 * 3, b = (i64)tx.i1 * 3;
    for (int c = 0; c < 3; ++c) {  // c indexes BGR; RGB channel 2 - c
        float v = bilerp((float)r0[a + c], (float)r0[b + c], (float)r1[a + c], (float)r1[b + c], ty.w, tx.w);
        rgb[2 - c] = normalize(v, mean_rgb[2 - c], inv_std_rgb[2 - c]);
    }
}

// ---------------------------------------------------------------------------------- postprocess

// The argmax rule in one place: a class replaces the best so far only if strictly greater, so
// the first maximum wins (NumPy's argmax). Loops that vectorise over pixels call this per class.
ES_HD void argmax_update(float v, int c, float& best, int& arg) {
    bool gt = v > best;
    best = gt ? v : best;
    arg = gt ? c : arg;
}

// Argmax over ``C`` class scores ``stride`` elements apart.
template <typename T>
ES_HD int argmax_classes(const T* p, int C, i64 stride) {
    float best = load_float(p, 0);
    int arg = 0;
    for (int c = 1; c < C; ++c) argmax_update(load_float(p, (i64)c * stride), c, best, arg);
    return arg;
}

// Label of one output pixel when logits are upsampled bilinearly before the argmax.
// ``p`` points at class 0 of a (C, h, w) block (``plane`` = h * w elements per class).
template <typename T>
ES_HD int bilinear_argmax(const T* p, int C, i64 plane, int w, LinearTap ty, LinearTap tx) {
    i64 o00 = (i64)ty.i0 * w + tx.i0, o01 = (i64)ty.i0 * w + tx.i1;
    i64 o10 = (i64)ty.i1 * w + tx.i0, o11 = (i64)ty.i1 * w + tx.i1;
    float best = 0.0f;
    int arg = 0;
    for (int c = 0; c < C; ++c) {
        i64 base = (i64)c * plane;
        float v = bilerp(load_float(p, base + o00), load_float(p, base + o01), load_float(p, base + o10),
                         load_float(p, base + o11), ty.w, tx.w);
        if (c == 0) best = v;
        else argmax_update(v, c, best, arg);
    }
    return arg;
}

// ---------------------------------------------------------------------------------- confidence

// exp(x) for x <= 0, from float multiplies and adds only, so that the CPU, CUDA and NumPy agree
// bit for bit (library expf differs between them in the last place): 2^t with t = x log2(e),
// split into k + f (|f| <= 1/2), 2^f by a degree-3 polynomial, 2^k built in the exponent bits.
// Relative error about 1e-4 (1.01e-4 on [-1/2, 1/2]): the uint8 confidence resolves 1/255.
// Below ES_EXP_CUTOFF (and for NaN) it is 0: exp(-12) < 6.2e-6, so even 16 classes that far
// behind move a sum that holds the best class's 1 by less than the polynomial's own error, and
// vector code skips the polynomial for lanes all that far behind (most of a trained model's
// classes at most pixels: the confidence's cost, benchmarks/confidence.py).
#define ES_EXP_LOG2E 1.44269504f
#define ES_EXP_CUTOFF -12.0f
ES_HD float exp_nonpositive(float x) {
    if (!(x >= ES_EXP_CUTOFF)) return 0.0f;
    const float t = x * ES_EXP_LOG2E;
    const int k = (int)(t - 0.5f);  // t <= 0: truncation rounds half away from 0
    const float f = t - (float)k;
    float p = 5.50087206e-2f;  // degree 3, minimax relative error with p(0) = 1 exactly
    p = p * f + 2.42210463e-1f;
    p = p * f + 6.93282902e-1f;
    p = p * f + 1.0f;
    return p * bits_as_float((u32)(k + 127) << 23);
}

// The top class's softmax probability as uint8, round(255 / sum) with sum = the exp of every
// class's score minus the best (the best's own term is exactly 1, so sum >= 1). A best score
// that is NaN or infinite leaves no such term (sum 0 or NaN): confidence 0, not a float-to-int
// conversion out of range (which x86, CUDA and Arm would each answer differently).
ES_HD u8 confidence_u8(float sum) { return sum >= 1.0f ? (u8)(int)(255.0f / sum + 0.5f) : (u8)0; }

// Confidence of one pixel from ``C`` class scores ``stride`` elements apart: the max, then the
// sum in class order (the order NumPy's reference adds in).
template <typename T>
ES_HD u8 confidence_classes(const T* p, int C, i64 stride) {
    float best = load_float(p, 0);
    for (int c = 1; c < C; ++c) {
        const float v = load_float(p, (i64)c * stride);
        best = v > best ? v : best;
    }
    float sum = 0.0f;
    for (int c = 0; c < C; ++c) sum += exp_nonpositive(load_float(p, (i64)c * stride) - best);
    return confidence_u8(sum);
}

// Confidence of one output pixel when logits are upsampled bilinearly (the same blend as
// bilinear_argmax, then the softmax of the blended scores).
template <typename T>
ES_HD u8 bilinear_confidence(const T* p, int C, i64 plane, int w, LinearTap ty, LinearTap tx) {
    i64 o00 = (i64)ty.i0 * w + tx.i0, o01 = (i64)ty.i0 * w + tx.i1;
    i64 o10 = (i64)ty.i1 * w + tx.i0, o11 = (i64)ty.i1 * w + tx.i1;
    float best = 0.0f;
    for (int c = 0; c < C; ++c) {
        i64 base = (i64)c * plane;
        float v = bilerp(load_float(p, base + o00), load_float(p, base + o01), load_float(p, base + o10),
                         load_float(p, base + o11), ty.w, tx.w);
        best = (c == 0 || v > best) ? v : best;
    }
    float sum = 0.0f;
    for (int c = 0; c < C; ++c) {
        i64 base = (i64)c * plane;
        float v = bilerp(load_float(p, base + o00), load_float(p, base + o01), load_float(p, base + o10),
                         load_float(p, base + o11), ty.w, tx.w);
        sum += exp_nonpositive(v - best);
    }
    return confidence_u8(sum);
}

// ---------------------------------------------------------------------------- temporal smoothing

// One pixel of the moving average of class scores: ema[c] = ema[c] * keep + x[c] * fresh for every
// class (``fresh`` = (float)(1 - keep), two roundings and a sum, as NumPy computes it). Returns
// whether the argmax of ``x`` differs from that of the average before the update: the vote that
// tells a scene cut (most pixels changing class at once) from flicker.
template <typename T>
ES_HD bool ema_update(const T* x, float* ema, int C, i64 stride, float keep, float fresh) {
    float bx = load_float(x, 0), be = ema[0];
    int ax = 0, ae = 0;
    ema[0] = be * keep + bx * fresh;
    for (int c = 1; c < C; ++c) {
        const float v = load_float(x, (i64)c * stride), e = ema[(i64)c * stride];
        argmax_update(v, c, bx, ax);
        argmax_update(e, c, be, ae);
        ema[(i64)c * stride] = e * keep + v * fresh;
    }
    return ax != ae;
}

// Whether argmax(x) differs from argmax(ema) at one pixel (the vote alone, no update).
template <typename T>
ES_HD bool ema_vote(const T* x, const float* ema, int C, i64 stride) {
    return argmax_classes(x, C, stride) != argmax_classes(ema, C, stride);
}

// One overlay byte: floor(frame * (1 - alpha) + colour * alpha + 0.5), saturated to 0..255.
// ``keep`` is (float)(1 - alpha) and ``colour_alpha`` is (float)colour * (float)alpha.
// Branch-free so that loops over a row vectorise.
ES_HD u8 blend(u8 frame, float keep, float colour_alpha) {
    float v = (float)frame * keep + colour_alpha + 0.5f;
    v = v < 0.0f ? 0.0f : v;
    v = v > 255.0f ? 255.0f : v;
    return (u8)(int)v;  // v >= 0: truncation is floor
}

// Fixed-point overlay for the fast kernels (CPU SIMD and CUDA): 16-bit integer lanes instead of
// float, within 1 LSB of blend() (exact except where the true value lies within ~0.02 of a
// rounding boundary). keep_q = round((1 - alpha) * 2^15); colour_q = round(colour * alpha * 2^7)
// + 2^6 (the rounding half, in the same units). The product is a multiply-high, as SIMD does it.
ES_HD u16 blend_keep_q(float keep) { return (u16)(keep * 32768.0f + 0.5f); }
ES_HD u16 blend_colour_q(float colour_alpha) { return (u16)(colour_alpha * 128.0f + 0.5f) + 64; }
ES_HD u8 blend_q(u8 frame, u16 keep_q, u16 colour_q) {
    u16 t = (u16)(((u32)(u16)(frame << 8) * keep_q) >> 16);  // floor(frame * keep * 2^7)
    return (u8)((u16)(t + colour_q) >> 7);
}

}  // namespace edgeseg
