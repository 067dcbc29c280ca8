// edgeseg CUDA kernels: grid loops over cpp_ext/include/pixel_ops.h, the same per-pixel maths the
// CPU extension runs. Compiled at first use by NVRTC (edgeseg/runtime/cuda_driver.py) with --fmad=false
// (see pixel_ops.h), and compile-checked by nvcc in the tests. Everything works on device
// pointers and runs on the caller's stream: a uint8 frame goes in, uint8 labels come out.
//
// extern "C" entry points, so the host side finds them by name without C++ mangling.

#include "pixel_ops.h"

using namespace edgeseg;

namespace {

template <typename T>
__device__ void preprocess_px(const u8* __restrict__ img, int H, int W, i64 pitch, T* __restrict__ out, int h,
                              int w, float3 mean, float3 inv_std) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= w || y >= h) return;
    const float m[3] = {mean.x, mean.y, mean.z};
    const float s[3] = {inv_std.x, inv_std.y, inv_std.z};
    float rgb[3];
    sample_bgr_normalized(img, pitch, linear_tap(y, H, h), linear_tap(x, W, w), m, s, rgb);
    const i64 plane = (i64)h * w, i = (i64)y * w + x;
    store_float(out, i, rgb[0]);
    store_float(out, plane + i, rgb[1]);
    store_float(out, 2 * plane + i, rgb[2]);
}

template <typename T>
__device__ void argmax_px(const T* __restrict__ scores, int C, int h, int w, u8* __restrict__ labels) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= w || y >= h) return;
    const i64 i = (i64)y * w + x;
    labels[i] = (u8)argmax_classes(scores + i, C, (i64)h * w);  // neighbours read neighbours: coalesced
}

template <typename T>
__device__ void bilinear_argmax_px(const T* __restrict__ scores, int C, int h, int w, u8* __restrict__ labels,
                                   int H, int W) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= W || y >= H) return;
    labels[(i64)y * W + x] = (u8)bilinear_argmax(scores, C, (i64)h * w, w, linear_tap(y, h, H), linear_tap(x, w, W));
}

// The argmax and, in the same thread, the confidence of the same pixel (pixel_ops.h).
template <typename T>
__device__ void argmax_conf_px(const T* __restrict__ scores, int C, int h, int w, u8* __restrict__ labels,
                               u8* __restrict__ conf) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= w || y >= h) return;
    const i64 i = (i64)y * w + x, plane = (i64)h * w;
    labels[i] = (u8)argmax_classes(scores + i, C, plane);
    conf[i] = confidence_classes(scores + i, C, plane);
}

template <typename T>
__device__ void bilinear_argmax_conf_px(const T* __restrict__ scores, int C, int h, int w, u8* __restrict__ labels,
                                        u8* __restrict__ conf, int H, int W) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= W || y >= H) return;
    const LinearTap ty = linear_tap(y, h, H), tx = linear_tap(x, w, W);
    const i64 i = (i64)y * W + x, plane = (i64)h * w;
    labels[i] = (u8)bilinear_argmax(scores, C, plane, w, ty, tx);
    conf[i] = bilinear_confidence(scores, C, plane, w, ty, tx);
}

template <typename T>
__device__ void ema_votes_px(const T* __restrict__ x, const float* __restrict__ ema, int C, i64 n, u32* count) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    const bool vote = i < n && ema_vote(x + i, ema + i, C, n);
    // One atomic a warp: every lane reaches the ballot (blocks are whole warps).
    const unsigned votes = __ballot_sync(0xffffffffu, vote);
    if ((threadIdx.x & 31) == 0 && votes) atomicAdd(count, (u32)__popc(votes));
}

template <typename T>
__device__ void ema_apply_px(const T* __restrict__ x, float* __restrict__ ema, int C, i64 n, float keep,
                             float fresh, const u32* words, long long limit) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const bool restart = words[1] != 0u || (long long)words[0] > limit;  // forced, or a scene cut
    for (int c = 0; c < C; ++c) {
        const i64 k = (i64)c * n + i;
        const float v = load_float(x, k);
        ema[k] = restart ? v : ema[k] * keep + v * fresh;
    }
}

}  // namespace

extern "C" {

// uint8 BGR (H, W, 3) with row pitch in bytes -> (1, 3, h, w) normalised RGB.
__global__ void preprocess_f32(const u8* img, int H, int W, i64 pitch, float* out, int h, int w, float3 mean,
                               float3 inv_std) {
    preprocess_px(img, H, W, pitch, out, h, w, mean, inv_std);
}

__global__ void preprocess_f16(const u8* img, int H, int W, i64 pitch, u16* out, int h, int w, float3 mean,
                               float3 inv_std) {
    preprocess_px(img, H, W, pitch, out, h, w, mean, inv_std);
}

// (1, C, h, w) logits -> (h, w) labels at model size.
__global__ void argmax_f32(const float* scores, int C, int h, int w, u8* labels) {
    argmax_px(scores, C, h, w, labels);
}

__global__ void argmax_f16(const u16* scores, int C, int h, int w, u8* labels) {
    argmax_px(scores, C, h, w, labels);
}

// The same, with each pixel's confidence (round(255 x the top class's softmax probability)) into
// ``conf`` beside the labels.
__global__ void argmax_conf_f32(const float* scores, int C, int h, int w, u8* labels, u8* conf) {
    argmax_conf_px(scores, C, h, w, labels, conf);
}

__global__ void argmax_conf_f16(const u16* scores, int C, int h, int w, u8* labels, u8* conf) {
    argmax_conf_px(scores, C, h, w, labels, conf);
}

// Integer labels from an in-graph ArgMax (int64 or int32) -> uint8, wrapping like NumPy.
__global__ void labels_from_i64(const i64* src, i64 n, u8* labels) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) labels[i] = (u8)src[i];
}

__global__ void labels_from_i32(const int* src, i64 n, u8* labels) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) labels[i] = (u8)src[i];
}

// (1, C, h, w) logits -> (H, W) labels, logits upsampled bilinearly before the argmax.
__global__ void bilinear_argmax_f32(const float* scores, int C, int h, int w, u8* labels, int H, int W) {
    bilinear_argmax_px(scores, C, h, w, labels, H, W);
}

__global__ void bilinear_argmax_f16(const u16* scores, int C, int h, int w, u8* labels, int H, int W) {
    bilinear_argmax_px(scores, C, h, w, labels, H, W);
}

__global__ void bilinear_argmax_conf_f32(const float* scores, int C, int h, int w, u8* labels, u8* conf, int H,
                                         int W) {
    bilinear_argmax_conf_px(scores, C, h, w, labels, conf, H, W);
}

__global__ void bilinear_argmax_conf_f16(const u16* scores, int C, int h, int w, u8* labels, u8* conf, int H,
                                         int W) {
    bilinear_argmax_conf_px(scores, C, h, w, labels, conf, H, W);
}

// (h, w) labels -> (H, W) labels (nearest) and, when ``overlay`` is not null, the palette blend
// onto ``frame`` in the same pass. ``colour_q`` holds 256 x 4 u16 (BGR + pad), see blend_q.
// With h == H and w == W this is the overlay alone.
__global__ void upsample_blend(const u8* small, int h, int w, u8* labels, int H, int W, const u8* frame,
                               i64 frame_pitch, u8* overlay, const u16* colour_q, u16 keep_q) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= W || y >= H) return;
    const u8 l = small[(i64)nearest_tap(y, h, H) * w + nearest_tap(x, w, W)];
    labels[(i64)y * W + x] = l;
    if (overlay == nullptr) return;
    const u8* f = frame + (i64)y * frame_pitch + 3 * (i64)x;
    u8* o = overlay + ((i64)y * W + x) * 3;
    const u16* k = colour_q + 4 * (int)l;
    o[0] = blend_q(f[0], keep_q, k[0]);
    o[1] = blend_q(f[1], keep_q, k[1]);
    o[2] = blend_q(f[2], keep_q, k[2]);
}

// Temporal smoothing of (1, C, h, w) logits into a float32 moving average ``ema`` (n = h * w),
// three launches on one stream: ``ema_reset_count`` zeroes words[0]; ``ema_votes_*`` counts the
// pixels whose argmax differs between x and the old average into words[0]; ``ema_apply_*``
// restarts the average from x when words[1] (set by the host: a new stream, a reconnect, a size
// change) or more than ``limit`` votes say so, else blends x in. No host sync, graph-capturable.
__global__ void ema_reset_count(u32* words) { words[0] = 0u; }

__global__ void ema_votes_f32(const float* x, const float* ema, int C, i64 n, u32* words) {
    ema_votes_px(x, ema, C, n, words);
}

__global__ void ema_votes_f16(const u16* x, const float* ema, int C, i64 n, u32* words) {
    ema_votes_px(x, ema, C, n, words);
}

__global__ void ema_apply_f32(const float* x, float* ema, int C, i64 n, float keep, float fresh, const u32* words,
                              long long limit) {
    ema_apply_px(x, ema, C, n, keep, fresh, words, limit);
}

__global__ void ema_apply_f16(const u16* x, float* ema, int C, i64 n, float keep, float fresh, const u32* words,
                              long long limit) {
    ema_apply_px(x, ema, C, n, keep, fresh, words, limit);
}

}  // extern "C"
