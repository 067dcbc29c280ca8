// kernels_impl.h — the CPU kernels' loops over pixel_ops.h, free of Python.
//
// kernels.cpp binds them to Python (edgeseg._cpu); cpp_ext/tests/kernel_check.cpp runs them
// natively and, cross-compiled, on aarch64 under qemu-user, against pixel_ops.h's per-pixel
// functions: the vector paths (AVX on x86-64, NEON on aarch64) cannot drift from the scalar
// maths. Include it from one translation unit per binary (its functions have internal linkage).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>
#ifdef __AVX__
#include <immintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#include "pixel_ops.h"

namespace edgeseg {
namespace {

int num_threads_for(i64 work) {
#ifdef _OPENMP
    // Below ~64k elements thread start-up costs more than it saves.
    return work < (1 << 16) ? 1 : omp_get_max_threads();
#else
    (void)work;
    return 1;
#endif
}

// Taps of every output sample along one axis, computed once a call.
std::vector<LinearTap>& linear_taps(std::vector<LinearTap>& v, int n_in, int n_out) {
    v.resize(n_out);
    for (int i = 0; i < n_out; ++i) v[i] = linear_tap(i, n_in, n_out);
    return v;
}

std::vector<int>& nearest_taps(std::vector<int>& v, int n_in, int n_out) {
    v.resize(n_out);
    for (int i = 0; i < n_out; ++i) v[i] = nearest_tap(i, n_in, n_out);
    return v;
}

// ----------------------------------------------------------------------------------- preprocess

// Rows first over the whole source row (contiguous: vectorises), then columns at the taps —
// the reference's order of operations, so results are bit-identical to bilinear sampling.
template <typename T>
void preprocess_impl(const u8* img, int H, int W, i64 pitch, T* out, int h, int w, const float mean[3],
                     const float inv_std[3]) {
    thread_local std::vector<LinearTap> ty, tx;
    linear_taps(ty, H, h);
    linear_taps(tx, W, w);
    thread_local std::vector<int> ia, ib;
    thread_local std::vector<float> wa, wb;
    ia.resize(w), ib.resize(w), wa.resize(w), wb.resize(w);
    for (int x = 0; x < w; ++x) {
        ia[x] = 3 * tx[x].i0, ib[x] = 3 * tx[x].i1, wb[x] = tx[x].w, wa[x] = 1.0f - tx[x].w;
    }
    const i64 plane = (i64)h * w;
    const LinearTap* typ = ty.data();
    const int *iap = ia.data(), *ibp = ib.data();
    const float *wap = wa.data(), *wbp = wb.data();
#pragma omp parallel num_threads(num_threads_for(plane))
    {
        thread_local std::vector<float> vrow;
        vrow.resize((size_t)W * 3);
        float* v = vrow.data();
#pragma omp for schedule(static)
        for (int y = 0; y < h; ++y) {
            const u8* r0 = img + (i64)typ[y].i0 * pitch;
            const u8* r1 = img + (i64)typ[y].i1 * pitch;
            const float w1 = typ[y].w, w0 = 1.0f - typ[y].w;
            for (int j = 0; j < W * 3; ++j) v[j] = (float)r0[j] * w0 + (float)r1[j] * w1;
            T* o = out + (i64)y * w;
            for (int x = 0; x < w; ++x) {  // RGB plane c reads BGR byte 2 - c
                const float* a = v + iap[x];
                const float* b = v + ibp[x];
                const float w0 = wap[x], w1 = wbp[x];
                store_float(o, x, normalize(a[2] * w0 + b[2] * w1, mean[0], inv_std[0]));
                store_float(o + plane, x, normalize(a[1] * w0 + b[1] * w1, mean[1], inv_std[1]));
                store_float(o + 2 * plane, x, normalize(a[0] * w0 + b[0] * w1, mean[2], inv_std[2]));
            }
        }
    }
}

// ---------------------------------------------------------------------------------- postprocess

// Argmax over classes with the running maximum in registers, a block of pixels at a time.
// Class-outer loops over a whole row kept it in memory, and GCC wrote it back with masked
// stores: those are microcoded on AMD Zen and the next class's load of the same line waited on
// them (the argmax ran 3x slower). Left to the auto-vectoriser, a pixel-outer loop was unrolled
// into scalar code, so a block is two vectors of the widest native size (GCC/Clang vector
// extensions: 8 floats with AVX, 4 with SSE or NEON). Same comparisons in the same order as
// argmax_classes: a class replaces the best only when strictly greater, so the first maximum wins.
#ifdef __AVX__
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif
typedef float fvec __attribute__((vector_size(4 * kLanes)));
typedef int ivec __attribute__((vector_size(4 * kLanes)));
constexpr int kBlock = 2 * kLanes;

inline fvec loadv(const float* p) {
    fvec v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// Whether any lane of a comparison's mask is set.
inline bool any_lane(ivec m) {
#ifdef __AVX__
    return !_mm256_testz_si256((__m256i)m, (__m256i)m);
#else
    bool any = false;
    for (int l = 0; l < kLanes; ++l) any |= m[l] != 0;
    return any;
#endif
}

// pixel_ops.h exp_nonpositive, a vector of lanes at a time (the same operations in the same order).
// ``live``: the lanes at or above the cutoff; the others are 0, as there (the caller skips
// vectors with no live lane).
inline fvec exp_nonpositive_v(fvec x, ivec live) {
    x = live ? x : fvec{};  // keeps the dead lanes' k in range
    const fvec t = x * ES_EXP_LOG2E;
    const ivec k = __builtin_convertvector(t - 0.5f, ivec);
    const fvec f = t - __builtin_convertvector(k, fvec);
    fvec p = fvec{} + 5.50087206e-2f;
    p = p * f + 2.42210463e-1f;
    p = p * f + 6.93282902e-1f;
    p = p * f + 1.0f;
    const ivec bits = (k + 127) << 23;
    fvec scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return live ? p * scale : fvec{};
}

// pixel_ops.h confidence_u8 a vector of lanes at a time: one vector division instead of one
// scalar division a pixel (IEEE division either way, so the same bits).
inline ivec confidence_u8_v(fvec sum) {
    const fvec q = 255.0f / sum + 0.5f;
    return __builtin_convertvector(sum >= 1.0f ? q : fvec{}, ivec);  // no out-of-range conversion
}

// ``value(c, half)``: class c of lanes [kLanes * half, kLanes * (half + 1)). Lane l's label goes
// to ``out[l * stride]``, and with ``conf`` its confidence (pixel_ops.h confidence_u8) to
// ``conf[l * stride]``: a second pass over the classes, whose values are still in cache. ``Conf``
// is a template parameter so that the loop without it compiles as if it did not exist.
template <bool Conf = false, typename F>
inline void argmax_block(int C, F value, u8* out, i64 stride, u8* conf = nullptr) {
    fvec b0 = value(0, 0), b1 = value(0, 1);
    ivec a0 = {}, a1 = {};
    for (int c = 1; c < C; ++c) {
        const fvec v0 = value(c, 0), v1 = value(c, 1);
        const ivec g0 = v0 > b0, g1 = v1 > b1;
        const ivec cv = ivec{} + c;
        b0 = g0 ? v0 : b0;
        a0 = g0 ? cv : a0;
        b1 = g1 ? v1 : b1;
        a1 = g1 ? cv : a1;
    }
    for (int l = 0; l < kLanes; ++l) {
        out[l * stride] = (u8)a0[l];
        out[(l + kLanes) * stride] = (u8)a1[l];
    }
    if constexpr (!Conf) return;
    fvec s0 = {}, s1 = {};
    const fvec cutoff = fvec{} + ES_EXP_CUTOFF;
    for (int c = 0; c < C; ++c) {  // adding a dead vector's 0 would change nothing: skipped
        const fvec d0 = value(c, 0) - b0, d1 = value(c, 1) - b1;
        const ivec live0 = d0 >= cutoff, live1 = d1 >= cutoff;
        if (any_lane(live0)) s0 += exp_nonpositive_v(d0, live0);
        if (any_lane(live1)) s1 += exp_nonpositive_v(d1, live1);
    }
    const ivec q0 = confidence_u8_v(s0), q1 = confidence_u8_v(s1);
    for (int l = 0; l < kLanes; ++l) {
        conf[l * stride] = (u8)q0[l];
        conf[(l + kLanes) * stride] = (u8)q1[l];
    }
}

// Argmax of (C, h, w) scores into (h, w) labels, a block of pixels of a row at a time (float logits;
// float16 ones go pixel by pixel); with ``conf``, each pixel's confidence too.
template <bool Conf, typename T>
void argmax_rows_impl(const T* s, int C, int h, int w, u8* labels, u8* conf) {
    const i64 plane = (i64)h * w;
#pragma omp parallel for schedule(static) num_threads(num_threads_for(plane * C))
    for (int y = 0; y < h; ++y) {
        const T* row = s + (i64)y * w;
        u8* l = labels + (i64)y * w;
        u8* cf = Conf ? conf + (i64)y * w : nullptr;
        int x = 0;
        if constexpr (sizeof(T) == sizeof(float)) {
            for (; x + kBlock <= w; x += kBlock)
                argmax_block<Conf>(C, [&](int c, int half) { return loadv(row + (i64)c * plane + x + kLanes * half); },
                                   l + x, 1, cf + x);
        }
        for (; x < w; ++x) {
            l[x] = (u8)argmax_classes(row + x, C, plane);
            if constexpr (Conf) cf[x] = confidence_classes(row + x, C, plane);
        }
    }
}

// Argmax of (C, h, w) scores into (h, w) labels; with ``conf``, each pixel's confidence too.
template <typename T>
void argmax_rows(const T* s, int C, int h, int w, u8* labels, u8* conf = nullptr) {
    if (conf) argmax_rows_impl<true>(s, C, h, w, labels, conf);
    else argmax_rows_impl<false>(s, C, h, w, labels, conf);
}

template <typename T>
void cast_labels(const T* s, i64 n, u8* labels) {
    for (i64 i = 0; i < n; ++i) labels[i] = (u8)s[i];  // wraps like NumPy's astype(uint8)
}

// Nearest taps of one row as 16-byte shuffles: output bytes [16 i, 16 i + 16) are source bytes
// base[i] + mask[i][l]. While the image grows (or shrinks a little), 16 neighbouring taps span
// fewer than 16 source bytes, and a row's gather is one load, shuffle and store per 16 bytes
// instead of a byte at a time (GCC's __builtin_shuffle: pshufb on x86-64, tbl on aarch64).
// Chunks whose taps spread wider, or whose 16-byte load would pass the source row's end, and
// the row's last W % 16 bytes, use the taps one by one; ``n_vec`` chunks lead the row.
typedef u8 u8x16 __attribute__((vector_size(16)));

struct ShuffleTaps {
    std::vector<int> base;
    std::vector<u8x16> mask;
    int n_vec = 0;
};

void shuffle_taps(ShuffleTaps& st, const std::vector<int>& tx, int w) {
    const int W = (int)tx.size();
    st.base.resize(W / 16);
    st.mask.resize(W / 16);
    st.n_vec = 0;
    for (int i = 0; i < W / 16; ++i, ++st.n_vec) {
        const int b = tx[16 * i];
        // the first chunk that cannot (its taps spread, or the row ends) ends the vector part
        if (tx[16 * i + 15] - b >= 16 || b + 16 > w) break;
        st.base[i] = b;
        for (int l = 0; l < 16; ++l) st.mask[i][l] = (u8)(tx[16 * i + l] - b);
    }
}

// One output row of nearest taps: ``dst[x] = src[tx[x]]``.
inline void gather_row(const u8* src, const int* tx, const ShuffleTaps& st, int W, u8* dst) {
    const int* base = st.base.data();
    const u8x16* mask = st.mask.data();
    for (int i = 0; i < st.n_vec; ++i) {
        u8x16 v;
        std::memcpy(&v, src + base[i], 16);
        v = __builtin_shuffle(v, mask[i]);
        std::memcpy(dst + 16 * i, &v, 16);
    }
    for (int x = 16 * st.n_vec; x < W; ++x) dst[x] = src[tx[x]];
}

// The colour term of every byte of a row: one 8-byte store a pixel (3 colour lanes + one that
// the next pixel overwrites; ``krow`` has one spare lane at the end).
inline void colour_row(const u8* labels, int W, const u16* colour_q, u16* krow) {
    const uint64_t* cq = reinterpret_cast<const uint64_t*>(colour_q);
    for (int x = 0; x < W; ++x) std::memcpy(krow + 3 * x, cq + labels[x], 8);
}

// A straight 16-bit loop over the row's bytes (vectorises).
inline void blend_row(const u8* frame, const u16* krow, int W, u16 keep_q, u8* out) {
    for (int j = 0; j < W * 3; ++j) out[j] = blend_q(frame[j], keep_q, krow[j]);
}

// Labels at model size -> labels at frame size (nearest), and the overlay in the same pass; with
// ``conf_small``, the confidence at model size goes to ``conf`` at frame size the same way.
// Output rows that sample the same model row share its upsampled labels and colour terms, so
// those are built once; the blend itself is a straight 16-bit loop over the row's bytes.
// ``Conf`` is a template parameter so that the loop without it compiles as it did before it.
template <bool Conf>
void upsample_and_blend_impl(const u8* small, int h, int w, u8* labels, int H, int W, const u8* frame,
                             i64 frame_pitch, u8* overlay, const u16* colour_q, u16 keep_q,
                             const u8* conf_small, u8* conf) {
    thread_local std::vector<int> ty, tx;
    thread_local ShuffleTaps stx;
    nearest_taps(ty, h, H);
    nearest_taps(tx, w, W);
    shuffle_taps(stx, tx, w);
    const int* typ = ty.data();
    const int* txp = tx.data();
    const ShuffleTaps* st = &stx;  // a plain pointer into the parallel region: one TLS lookup
#pragma omp parallel num_threads(num_threads_for((i64)H * W))
    {
        thread_local std::vector<u8> lrow, crow;
        thread_local std::vector<u16> krow;
        lrow.resize(W);
        if constexpr (Conf) crow.resize(W);
        krow.resize((size_t)W * 3 + 1);  // +1: the 8-byte stores below overrun by one lane
        int last = -1;
#pragma omp for schedule(static)
        for (int y = 0; y < H; ++y) {
            u8* l = labels + (i64)y * W;
            if (typ[y] != last) {
                last = typ[y];
                gather_row(small + (i64)last * w, txp, *st, W, lrow.data());
                if (overlay != nullptr) colour_row(lrow.data(), W, colour_q, krow.data());
                if constexpr (Conf) gather_row(conf_small + (i64)last * w, txp, *st, W, crow.data());
            }
            std::memcpy(l, lrow.data(), W);
            if constexpr (Conf) std::memcpy(conf + (i64)y * W, crow.data(), W);
            if (overlay != nullptr)
                blend_row(frame + (i64)y * frame_pitch, krow.data(), W, keep_q, overlay + (i64)y * W * 3);
        }
    }
}

void upsample_and_blend(const u8* small, int h, int w, u8* labels, int H, int W, const u8* frame,
                        i64 frame_pitch, u8* overlay, const u16* colour_q, u16 keep_q,
                        const u8* conf_small = nullptr, u8* conf = nullptr) {
    if (conf) upsample_and_blend_impl<true>(small, h, w, labels, H, W, frame, frame_pitch, overlay, colour_q, keep_q,
                                            conf_small, conf);
    else upsample_and_blend_impl<false>(small, h, w, labels, H, W, frame, frame_pitch, overlay, colour_q, keep_q,
                                        nullptr, nullptr);
}

// Logits upsampled bilinearly to (H, W), then the argmax: the accuracy path, and the model's own
// trailing resize when the runtime lifted it out of the graph (postprocess ``upsample``).
// Separable, a row at a time: each output row first blends its two source rows for every class
// (bilerp's column terms), then every output pixel blends two of those and updates the argmax.
// The operations and their order are bilerp's, so labels equal bilinear_argmax bit for bit.
//
// Output columns are visited by phase: for W = k * w, the columns x = k * i + j of one phase j
// read source columns i + off_j and i + off_j + 1 for every interior i: contiguous loads, 16
// pixels of a phase in two vectors through every class (argmax_block), labels stored k apart.
// The few edge pixels, and ratios that are not integers (one phase), use gathered taps.
struct PhaseTaps {
    int off = 0, lo = 0, hi = 0;     // interior i in [lo, hi): taps i + off, i + off + 1
    std::vector<int> i0, i1;          // every i's taps (used outside the interior)
    std::vector<float> w, keep;       // weight of i1, and 1 - weight
};

static void phase_taps(std::vector<PhaseTaps>& phases, int& k, int& n, int w_in, int W) {
    thread_local std::vector<LinearTap> tx;
    linear_taps(tx, w_in, W);
    k = (W % w_in == 0) ? W / w_in : 1;
    n = W / k;
    phases.resize(k);
    for (int j = 0; j < k; ++j) {
        PhaseTaps& p = phases[j];
        p.i0.resize(n);
        p.i1.resize(n);
        p.w.resize(n);
        p.keep.resize(n);
        for (int i = 0; i < n; ++i) {
            const LinearTap t = tx[(i64)k * i + j];
            p.i0[i] = t.i0;
            p.i1[i] = t.i1;
            p.w[i] = t.w;
            p.keep[i] = 1.0f - t.w;
        }
        // the longest run where the taps are (i + off, i + off + 1) for one off
        const int mid = n / 2;
        p.off = p.i0[mid] - mid;
        p.lo = p.hi = mid;
        auto regular = [&](int i) { return p.i0[i] == i + p.off && p.i1[i] == i + p.off + 1; };
        if (k == 1 || !regular(mid)) continue;
        while (p.lo > 0 && regular(p.lo - 1)) --p.lo;
        while (p.hi < n && regular(p.hi)) ++p.hi;
    }
}

template <bool Conf, typename T>
void bilinear_labels_impl(const T* s, int C, int h, int w, u8* labels, int H, int W, u8* conf) {
    thread_local std::vector<LinearTap> ty;
    linear_taps(ty, h, H);
    const LinearTap* typ = ty.data();
    thread_local std::vector<PhaseTaps> phases;
    int k = 1, n = W;
    phase_taps(phases, k, n, w, W);
    const PhaseTaps* ph = phases.data();
    const i64 plane = (i64)h * w;
#pragma omp parallel num_threads(num_threads_for((i64)H * W * C))
    {
        thread_local std::vector<float> rows;
        rows.resize((size_t)C * w);
        const float* r = rows.data();
#pragma omp for schedule(static)
        for (int y = 0; y < H; ++y) {
            const LinearTap t = typ[y];
            const float wy = t.w;
            for (int c = 0; c < C; ++c) {
                const T* top = s + (i64)c * plane + (i64)t.i0 * w;
                const T* bot = s + (i64)c * plane + (i64)t.i1 * w;
                float* rc = rows.data() + (i64)c * w;
                for (int x = 0; x < w; ++x) rc[x] = load_float(top, x) * (1.0f - wy) + load_float(bot, x) * wy;
            }
            u8* l = labels + (i64)y * W;
            u8* cf = Conf ? conf + (i64)y * W : nullptr;
            for (int j = 0; j < k; ++j) {
                const PhaseTaps& p = ph[j];
                const int* i0 = p.i0.data();
                const int* i1 = p.i1.data();
                const float* wx = p.w.data();
                const float* kx = p.keep.data();
                auto gathered = [&](int i) {  // one pixel, taps looked up
                    float best = r[i0[i]] * kx[i] + r[i1[i]] * wx[i];
                    int arg = 0;
                    for (int c = 1; c < C; ++c) {
                        const float* rc = r + (i64)c * w;
                        argmax_update(rc[i0[i]] * kx[i] + rc[i1[i]] * wx[i], c, best, arg);
                    }
                    l[(i64)k * i + j] = (u8)arg;
                    if constexpr (!Conf) return;
                    float sum = 0.0f;
                    for (int c = 0; c < C; ++c) {
                        const float* rc = r + (i64)c * w;
                        sum += exp_nonpositive(rc[i0[i]] * kx[i] + rc[i1[i]] * wx[i] - best);
                    }
                    cf[(i64)k * i + j] = confidence_u8(sum);
                };
                int i = 0;
                for (; i < p.lo; ++i) gathered(i);
                // the interior: taps i + off and i + off + 1, contiguous, kBlock pixels at a time
                for (; i + kBlock <= p.hi; i += kBlock) {
                    const float* r0 = r + i + p.off;
                    const fvec k0 = loadv(kx + i), k1 = loadv(kx + i + kLanes);
                    const fvec w0 = loadv(wx + i), w1 = loadv(wx + i + kLanes);
                    argmax_block<Conf>(C, [&](int c, int half) {
                        const float* rc = r0 + (i64)c * w + kLanes * half;
                        return half ? loadv(rc) * k1 + loadv(rc + 1) * w1 : loadv(rc) * k0 + loadv(rc + 1) * w0;
                    }, l + (i64)k * i + j, k, cf + (i64)k * i + j);
                }
                for (; i < n; ++i) gathered(i);
            }
        }
    }
}

// Bilinear upsample then argmax (see above); with ``conf``, each output pixel's confidence.
template <typename T>
void bilinear_labels(const T* s, int C, int h, int w, u8* labels, int H, int W, u8* conf = nullptr) {
    if (conf) bilinear_labels_impl<true>(s, C, h, w, labels, H, W, conf);
    else bilinear_labels_impl<false>(s, C, h, w, labels, H, W, conf);
}

void blend_only(const u8* labels, int H, int W, const u8* frame, i64 frame_pitch, u8* overlay,
                const u16* colour_q, u16 keep_q) {
#pragma omp parallel num_threads(num_threads_for((i64)H * W))
    {
        thread_local std::vector<u16> krow;
        krow.resize((size_t)W * 3 + 1);
#pragma omp for schedule(static)
        for (int y = 0; y < H; ++y) {
            colour_row(labels + (i64)y * W, W, colour_q, krow.data());
            blend_row(frame + (i64)y * frame_pitch, krow.data(), W, keep_q, overlay + (i64)y * W * 3);
        }
    }
}

// ---------------------------------------------------------------------------- temporal smoothing

inline void storev(float* p, fvec v) { std::memcpy(p, &v, sizeof v); }

// The moving average of (C, h, w) scores updated in place (pixel_ops.h ema_update, a vector of
// pixels at a time for float32); returns how many pixels' argmax differed from the old average's.
template <typename T>
i64 ema_rows(const T* x, float* ema, int C, int h, int w, float keep, float fresh) {
    const i64 plane = (i64)h * w;
    i64 changed = 0;
#pragma omp parallel for schedule(static) reduction(+ : changed) num_threads(num_threads_for(plane * C))
    for (int y = 0; y < h; ++y) {
        const T* xr = x + (i64)y * w;
        float* er = ema + (i64)y * w;
        int px = 0;
        if constexpr (sizeof(T) == sizeof(float)) {
            for (; px + kLanes <= w; px += kLanes) {
                fvec bx = loadv(xr + px), be = loadv(er + px);
                ivec ax = {}, ae = {};
                storev(er + px, be * keep + bx * fresh);
                for (int c = 1; c < C; ++c) {
                    const fvec v = loadv(xr + (i64)c * plane + px), e = loadv(er + (i64)c * plane + px);
                    const ivec gx = v > bx, ge = e > be, cv = ivec{} + c;
                    bx = gx ? v : bx;
                    ax = gx ? cv : ax;
                    be = ge ? e : be;
                    ae = ge ? cv : ae;
                    storev(er + (i64)c * plane + px, e * keep + v * fresh);
                }
                const ivec differ = ax != ae;
                for (int l = 0; l < kLanes; ++l) changed += differ[l] != 0;
            }
        }
        for (; px < w; ++px) changed += ema_update(xr + px, er + px, C, plane, keep, fresh);
    }
    return changed;
}

template <typename T>
void copy_scores(const T* x, float* ema, i64 n) {
    for (i64 i = 0; i < n; ++i) ema[i] = load_float(x, i);
}

}  // namespace
}  // namespace edgeseg
