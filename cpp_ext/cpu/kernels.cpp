// edgeseg._cpu: the CPU twin of the CUDA kernels — Python bindings of the loops in
// kernels_impl.h (over pixel_ops.h).
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

#include "kernels_impl.h"

namespace py = pybind11;
using namespace edgeseg;

namespace {

// dtype codes shared with the Python front
enum DType { F32 = 0, F16 = 1, U8 = 2, I32 = 3, I64 = 4 };

void require(bool ok, const std::string& msg) {
    if (!ok) throw py::value_error(msg);
}

const void* cptr(const py::array& a) { return a.data(); }
void* mptr(py::array& a) { return a.mutable_data(); }

void require_c_contiguous(const py::array& a, const char* name) {
    require((a.flags() & py::array::c_style) != 0, std::string(name) + " must be C-contiguous");
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
// x``upsample`` bilinear resize, which happens here, fused with the argmax. ``conf_out`` (None or
// uint8 (H, W), logits only) receives the top class's probability where the argmax is taken.
void postprocess(const py::array& scores, int dtype, py::array& labels_out, bool bilinear, const py::object& frame,
                 const py::object& overlay_out, const py::object& lut_bgr, double alpha, int upsample,
                 const py::object& conf_out) {
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
    u8* conf = nullptr;
    if (!conf_out.is_none()) {
        py::array c = conf_out.cast<py::array>();
        require(logits, "confidence needs logits, not labels");
        require(c.ndim() == 2 && c.shape(0) == H && c.shape(1) == W && c.itemsize() == 1,
                "conf_out must be uint8 (H, W) like the labels");
        require_c_contiguous(c, "conf_out");
        conf = static_cast<u8*>(mptr(c));
    }
    const void* s = cptr(scores);
    u8* lab = static_cast<u8*>(mptr(labels_out));

    py::gil_scoped_release nogil;
    if (bilinear && logits) {
        if (dtype == F32) bilinear_labels(static_cast<const float*>(s), C, h, w, lab, H, W, conf);
        else bilinear_labels(static_cast<const u16*>(s), C, h, w, lab, H, W, conf);
        if (ov.out) blend_only(lab, H, W, ov.frame, ov.pitch, ov.out, ov.colour_q.data(), ov.keep_q);
        return;
    }
    // Nearest mode: the confidence of the scores' own grid (before a fused upsample), upsampled to
    // the frame with nearest taps (docs/kernels.md, "how the upsample interacts").
    thread_local std::vector<u8> small, small_conf, grid_labels;
    u8* sc = conf ? (small_conf.resize((size_t)h * w), small_conf.data()) : nullptr;
    if (upsample > 1) {
        const int hu = h * upsample, wu = w * upsample;
        small.resize((size_t)hu * wu);
        if (dtype == F32) bilinear_labels(static_cast<const float*>(s), C, h, w, small.data(), hu, wu);
        else bilinear_labels(static_cast<const u16*>(s), C, h, w, small.data(), hu, wu);
        if (conf) {
            grid_labels.resize((size_t)h * w);
            if (dtype == F32) argmax_rows(static_cast<const float*>(s), C, h, w, grid_labels.data(), sc);
            else argmax_rows(static_cast<const u16*>(s), C, h, w, grid_labels.data(), sc);
            upsample_and_blend(sc, h, w, conf, H, W, nullptr, 0, nullptr, nullptr, 0);
        }
        upsample_and_blend(small.data(), hu, wu, lab, H, W, ov.frame, ov.pitch, ov.out, ov.colour_q.data(), ov.keep_q);
        return;
    }
    small.resize((size_t)h * w);
    switch (dtype) {
        case F32: argmax_rows(static_cast<const float*>(s), C, h, w, small.data(), sc); break;
        case F16: argmax_rows(static_cast<const u16*>(s), C, h, w, small.data(), sc); break;
        case U8: std::memcpy(small.data(), s, (size_t)h * w); break;
        case I32: cast_labels(static_cast<const int32_t*>(s), (i64)h * w, small.data()); break;
        default: cast_labels(static_cast<const int64_t*>(s), (i64)h * w, small.data()); break;
    }
    upsample_and_blend(small.data(), h, w, lab, H, W, ov.frame, ov.pitch, ov.out, ov.colour_q.data(), ov.keep_q, sc,
                       conf);
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
          py::arg("frame"), py::arg("overlay_out"), py::arg("lut_bgr"), py::arg("alpha"), py::arg("upsample") = 1,
          py::arg("conf_out") = py::none());
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
