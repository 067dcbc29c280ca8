// edgeseg._cpu: the CPU twin of the CUDA kernels — loops over pixel_ops.h.
//
// Every entry point works in caller-provided buffers (nothing is allocated per frame except
// thread-local scratch that grows once), releases the GIL, and spreads rows over OpenMP threads.
// Argument checking beyond what keeps memory safe lives in edgeseg/runtime/kernels/__init__.py,
// which is the only caller; here a wrong shape or dtype is a ValueError, never a crash.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "pixel_ops.h"

namespace py = pybind11;
using namespace edgeseg;

namespace {

// dtype codes shared with the Python front
enum DType { F32 = 0, F16 = 1, U8 = 2, I32 = 3, I64 = 4 };

int num_threads_for(i64 work) {
#ifdef _OPENMP
    // Below ~64k elements thread start-up costs more than it saves.
    return work < (1 << 16) ? 1 : omp_get_max_threads();
#else
    (void)work;
    return 1;
#endif
}

void require(bool ok, const std::string& msg) {
    if (!ok) throw py::value_error(msg);
}

const void* cptr(const py::array& a) { return a.data(); }
void* mptr(py::array& a) { return a.mutable_data(); }

void require_c_contiguous(const py::array& a, const char* name) {
    require((a.flags() & py::array::c_style) != 0, std::string(name) + " must be C-contiguous");
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

void preprocess(const py::array& frame, py::array& out, int out_dtype, std::vector<float> mean,
                std::vector<float> inv_std) {
    require(frame.ndim() == 3 && frame.shape(2) == 3 && frame.itemsize() == 1, "frame must be uint8 (H, W, 3)");
    require(frame.strides(2) == 1 && frame.strides(1) == 3, "frame rows must be packed BGR pixels");
    require(out.ndim() == 4 && out.shape(0) == 1 && out.shape(1) == 3, "out must be (1, 3, h, w)");
    require_c_contiguous(out, "out");
    require(mean.size() == 3 && inv_std.size() == 3, "mean and inv_std need 3 values");
    require(out.itemsize() == (out_dtype == F32 ? 4 : 2) && (out_dtype == F32 || out_dtype == F16),
            "out dtype must be float32 or float16");
    const int H = (int)frame.shape(0), W = (int)frame.shape(1);
    const int h = (int)out.shape(2), w = (int)out.shape(3);
    const i64 pitch = frame.strides(0);
    const u8* img = static_cast<const u8*>(cptr(frame));
    void* dst = mptr(out);
    py::gil_scoped_release nogil;
    if (out_dtype == F32)
        preprocess_impl(img, H, W, pitch, static_cast<float*>(dst), h, w, mean.data(), inv_std.data());
    else
        preprocess_impl(img, H, W, pitch, static_cast<u16*>(dst), h, w, mean.data(), inv_std.data());
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

// ``value(c, half)``: class c of lanes [kLanes * half, kLanes * (half + 1)). Lane l's label goes
// to ``out[l * stride]``.
template <typename F>
inline void argmax_block(int C, F value, u8* out, i64 stride) {
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
}

// Argmax of (C, h, w) scores into (h, w) labels, a block of pixels of a row at a time (float logits;
// float16 ones go pixel by pixel).
template <typename T>
void argmax_rows(const T* s, int C, int h, int w, u8* labels) {
    const i64 plane = (i64)h * w;
#pragma omp parallel for schedule(static) num_threads(num_threads_for(plane * C))
    for (int y = 0; y < h; ++y) {
        const T* row = s + (i64)y * w;
        u8* l = labels + (i64)y * w;
        int x = 0;
        if constexpr (sizeof(T) == sizeof(float)) {
            for (; x + kBlock <= w; x += kBlock)
                argmax_block(C, [&](int c, int half) { return loadv(row + (i64)c * plane + x + kLanes * half); }, l + x, 1);
        }
        for (; x < w; ++x) l[x] = (u8)argmax_classes(row + x, C, plane);
    }
}

template <typename T>
void cast_labels(const T* s, i64 n, u8* labels) {
    for (i64 i = 0; i < n; ++i) labels[i] = (u8)s[i];  // wraps like NumPy's astype(uint8)
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

// Labels at model size -> labels at frame size (nearest), and the overlay in the same pass.
// Output rows that sample the same model row share its upsampled labels and colour terms, so
// those are built once; the blend itself is a straight 16-bit loop over the row's bytes.
void upsample_and_blend(const u8* small, int h, int w, u8* labels, int H, int W, const u8* frame,
                        i64 frame_pitch, u8* overlay, const u16* colour_q, u16 keep_q) {
    thread_local std::vector<int> ty, tx;
    nearest_taps(ty, h, H);
    nearest_taps(tx, w, W);
    const int* typ = ty.data();
    const int* txp = tx.data();
#pragma omp parallel num_threads(num_threads_for((i64)H * W))
    {
        thread_local std::vector<u8> lrow;
        thread_local std::vector<u16> krow;
        lrow.resize(W);
        krow.resize((size_t)W * 3 + 1);  // +1: the 8-byte stores below overrun by one lane
        int last = -1;
#pragma omp for schedule(static)
        for (int y = 0; y < H; ++y) {
            u8* l = labels + (i64)y * W;
            if (typ[y] != last) {
                last = typ[y];
                const u8* src = small + (i64)last * w;
                u8* lr = lrow.data();
                for (int x = 0; x < W; ++x) lr[x] = src[txp[x]];
                if (overlay != nullptr) colour_row(lr, W, colour_q, krow.data());
            }
            std::memcpy(l, lrow.data(), W);
            if (overlay != nullptr)
                blend_row(frame + (i64)y * frame_pitch, krow.data(), W, keep_q, overlay + (i64)y * W * 3);
        }
    }
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

template <typename T>
void bilinear_labels(const T* s, int C, int h, int w, u8* labels, int H, int W) {
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
                };
                int i = 0;
                for (; i < p.lo; ++i) gathered(i);
                // the interior: taps i + off and i + off + 1, contiguous, kBlock pixels at a time
                for (; i + kBlock <= p.hi; i += kBlock) {
                    const float* r0 = r + i + p.off;
                    const fvec k0 = loadv(kx + i), k1 = loadv(kx + i + kLanes);
                    const fvec w0 = loadv(wx + i), w1 = loadv(wx + i + kLanes);
                    argmax_block(C, [&](int c, int half) {
                        const float* rc = r0 + (i64)c * w + kLanes * half;
                        return half ? loadv(rc) * k1 + loadv(rc + 1) * w1 : loadv(rc) * k0 + loadv(rc + 1) * w0;
                    }, l + (i64)k * i + j, k);
                }
                for (; i < n; ++i) gathered(i);
            }
        }
    }
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

struct Overlay {
    const u8* frame = nullptr;
    i64 pitch = 0;
    u8* out = nullptr;
    std::vector<u16> colour_q;  // 256 x 4 (BGR + padding), fixed point, see blend_q
    u16 keep_q = 0;
};

Overlay make_overlay(const py::object& frame, const py::object& overlay_out, const py::object& lut_bgr, double alpha,
                     int H, int W) {
    Overlay ov;
    if (frame.is_none()) return ov;
    py::array f = frame.cast<py::array>();
    py::array o = overlay_out.cast<py::array>();
    py::array lut = lut_bgr.cast<py::array>();
    require(f.ndim() == 3 && f.shape(0) == H && f.shape(1) == W && f.shape(2) == 3 && f.itemsize() == 1,
            "frame must be uint8 (H, W, 3) at the labels' size");
    require(f.strides(2) == 1 && f.strides(1) == 3, "frame rows must be packed BGR pixels");
    require(o.ndim() == 3 && o.shape(0) == H && o.shape(1) == W && o.shape(2) == 3 && o.itemsize() == 1,
            "overlay_out must be uint8 (H, W, 3)");
    require_c_contiguous(o, "overlay_out");
    require(lut.ndim() == 2 && lut.shape(0) == 256 && lut.shape(1) == 3 && lut.itemsize() == 1,
            "lut must be uint8 (256, 3)");
    require_c_contiguous(lut, "lut");
    ov.frame = static_cast<const u8*>(cptr(f));
    ov.pitch = f.strides(0);
    ov.out = static_cast<u8*>(mptr(o));
    // as NumPy computes them: float32(1 - alpha) and float32(colour) * float32(alpha)
    ov.keep_q = blend_keep_q((float)(1.0 - alpha));
    ov.colour_q.assign(256 * 4, 0);
    const u8* l = static_cast<const u8*>(cptr(lut));
    for (int i = 0; i < 256; ++i)
        for (int c = 0; c < 3; ++c) ov.colour_q[4 * i + c] = blend_colour_q((float)l[3 * i + c] * (float)alpha);
    return ov;
}

// scores: (1, C, h, w) float32/float16 logits, or (1, h, w) integer labels (dtype code given).
// upsample > 1 (nearest mode, logits only): the scores are the model's logits before its trailing
// x``upsample`` bilinear resize, which happens here, fused with the argmax.
void postprocess(const py::array& scores, int dtype, py::array& labels_out, bool bilinear, const py::object& frame,
                 const py::object& overlay_out, const py::object& lut_bgr, double alpha, int upsample) {
    require_c_contiguous(scores, "scores");
    require_c_contiguous(labels_out, "out");
    require(labels_out.ndim() == 2 && labels_out.itemsize() == 1, "out must be uint8 (H, W)");
    const bool logits = dtype == F32 || dtype == F16;
    require(logits ? scores.ndim() == 4 : scores.ndim() == 3, "scores must be (1, C, h, w) or (1, h, w)");
    require(scores.shape(0) == 1, "scores must hold one image");
    const int C = logits ? (int)scores.shape(1) : 1;
    const int h = (int)scores.shape(scores.ndim() - 2), w = (int)scores.shape(scores.ndim() - 1);
    const int H = (int)labels_out.shape(0), W = (int)labels_out.shape(1);
    require(C >= 1 && C <= 256 && h >= 1 && w >= 1 && H >= 1 && W >= 1, "empty or >256-class scores");
    require(upsample >= 1 && (upsample == 1 || (logits && !bilinear)), "upsample needs logits in nearest mode");
    static const int item[] = {4, 2, 1, 4, 8};
    require(dtype >= 0 && dtype <= 4 && scores.itemsize() == item[dtype], "scores dtype code does not match");
    Overlay ov = make_overlay(frame, overlay_out, lut_bgr, alpha, H, W);
    const void* s = cptr(scores);
    u8* lab = static_cast<u8*>(mptr(labels_out));

    py::gil_scoped_release nogil;
    if (bilinear && logits) {
        if (dtype == F32) bilinear_labels(static_cast<const float*>(s), C, h, w, lab, H, W);
        else bilinear_labels(static_cast<const u16*>(s), C, h, w, lab, H, W);
        if (ov.out) blend_only(lab, H, W, ov.frame, ov.pitch, ov.out, ov.colour_q.data(), ov.keep_q);
        return;
    }
    thread_local std::vector<u8> small;
    if (upsample > 1) {
        const int hu = h * upsample, wu = w * upsample;
        small.resize((size_t)hu * wu);
        if (dtype == F32) bilinear_labels(static_cast<const float*>(s), C, h, w, small.data(), hu, wu);
        else bilinear_labels(static_cast<const u16*>(s), C, h, w, small.data(), hu, wu);
        upsample_and_blend(small.data(), hu, wu, lab, H, W, ov.frame, ov.pitch, ov.out, ov.colour_q.data(), ov.keep_q);
        return;
    }
    small.resize((size_t)h * w);
    switch (dtype) {
        case F32: argmax_rows(static_cast<const float*>(s), C, h, w, small.data()); break;
        case F16: argmax_rows(static_cast<const u16*>(s), C, h, w, small.data()); break;
        case U8: std::memcpy(small.data(), s, (size_t)h * w); break;
        case I32: cast_labels(static_cast<const int32_t*>(s), (i64)h * w, small.data()); break;
        default: cast_labels(static_cast<const int64_t*>(s), (i64)h * w, small.data()); break;
    }
    upsample_and_blend(small.data(), h, w, lab, H, W, ov.frame, ov.pitch, ov.out, ov.colour_q.data(), ov.keep_q);
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

// state <- state * keep + scores * (1 - keep), or state <- scores when more than ``limit`` pixels
// changed class (a scene cut). Returns whether the average restarted.
bool smooth(const py::array& scores, int dtype, py::array& state, double keep, i64 limit) {
    require_c_contiguous(scores, "scores");
    require_c_contiguous(state, "state");
    require(dtype == F32 || dtype == F16, "smoothing needs float32 or float16 logits");
    require(scores.ndim() == 4 && scores.shape(0) == 1, "scores must be (1, C, h, w)");
    require(scores.itemsize() == (dtype == F32 ? 4 : 2), "scores dtype code does not match");
    require(state.ndim() == 4 && state.itemsize() == 4, "state must be float32 (1, C, h, w)");
    for (int d = 0; d < 4; ++d) require(state.shape(d) == scores.shape(d), "state and scores differ in shape");
    const int C = (int)scores.shape(1), h = (int)scores.shape(2), w = (int)scores.shape(3);
    const float k = (float)keep, fresh = (float)(1.0 - keep);
    const void* x = cptr(scores);
    float* ema = static_cast<float*>(mptr(state));
    py::gil_scoped_release nogil;
    const i64 changed = dtype == F32 ? ema_rows(static_cast<const float*>(x), ema, C, h, w, k, fresh)
                                     : ema_rows(static_cast<const u16*>(x), ema, C, h, w, k, fresh);
    if (changed <= limit) return false;
    if (dtype == F32) copy_scores(static_cast<const float*>(x), ema, (i64)C * h * w);
    else copy_scores(static_cast<const u16*>(x), ema, (i64)C * h * w);
    return true;
}

void overlay(const py::array& labels, const py::array& frame, py::array& out, const py::array& lut_bgr, double alpha) {
    require_c_contiguous(labels, "labels");
    require(labels.ndim() == 2 && labels.itemsize() == 1, "labels must be uint8 (H, W)");
    const int H = (int)labels.shape(0), W = (int)labels.shape(1);
    Overlay ov = make_overlay(frame, out, lut_bgr, alpha, H, W);
    const u8* l = static_cast<const u8*>(cptr(labels));
    py::gil_scoped_release nogil;
    blend_only(l, H, W, ov.frame, ov.pitch, ov.out, ov.colour_q.data(), ov.keep_q);
}

int get_num_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

void set_num_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(std::max(1, n));
#else
    (void)n;
#endif
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
    m.doc() = "edgeseg CPU kernels over cpp_ext/include/pixel_ops.h (use edgeseg.runtime.kernels)";
    m.attr("F32") = (int)F32;
    m.attr("F16") = (int)F16;
    m.attr("U8") = (int)U8;
    m.attr("I32") = (int)I32;
    m.attr("I64") = (int)I64;
    m.def("preprocess", &preprocess, py::arg("frame"), py::arg("out"), py::arg("out_dtype"), py::arg("mean"),
          py::arg("inv_std"));
    m.def("postprocess", &postprocess, py::arg("scores"), py::arg("dtype"), py::arg("out"), py::arg("bilinear"),
          py::arg("frame"), py::arg("overlay_out"), py::arg("lut_bgr"), py::arg("alpha"), py::arg("upsample") = 1);
    m.def("smooth", &smooth, py::arg("scores"), py::arg("dtype"), py::arg("state"), py::arg("keep"),
          py::arg("limit"));
    m.def("overlay", &overlay, py::arg("labels"), py::arg("frame"), py::arg("out"), py::arg("lut_bgr"),
          py::arg("alpha"));
    m.def("get_num_threads", &get_num_threads);
    m.def("set_num_threads", &set_num_threads, py::arg("n"));
#ifdef _OPENMP
    m.attr("openmp") = true;
#else
    m.attr("openmp") = false;
#endif
}
