// kernel_check: the CPU kernels' vector loops (kernels_impl.h) against pixel_ops.h's per-pixel
// functions, bit for bit, without Python. tests/test_cpp_ext.py builds it natively and for
// aarch64 (-march=armv8.2-a: NEON), and runs the aarch64 build under qemu-user, so the paths a
// Jetson runs are exercised on every CI run. Exit status 0 when every check passes.

#include <cstdio>
#include <cstring>
#include <vector>

#include "../cpu/kernels_impl.h"

using namespace edgeseg;

namespace {

unsigned long long rng_state = 88172645463325252ull;

unsigned next_u32() {  // xorshift64: the same data on every machine
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (unsigned)(rng_state >> 32);
}

float next_float(bool ties) {  // small integers make ties, which the first maximum must win
    return ties ? (float)(int)(next_u32() % 5) - 2.0f : (float)(int)(next_u32() % 2001 - 1000) / 97.0f;
}

int failures = 0, checks = 0;

void expect(bool ok, const char* what, int a, int b, int c) {
    ++checks;
    if (!ok && failures++ < 10) std::printf("MISMATCH %s (%d, %d, %d)\n", what, a, b, c);
}

template <typename T>
std::vector<T> logits(int n, bool ties) {
    std::vector<T> v(n);
    for (auto& x : v) {
        const float f = next_float(ties);
        if constexpr (sizeof(T) == 2) x = float_to_half(f);
        else x = f;
    }
    return v;
}

template <typename T>
void check_argmax(int C, int h, int w, bool ties) {
    const auto s = logits<T>(C * h * w, ties);
    std::vector<u8> got((size_t)h * w), with_conf((size_t)h * w), conf((size_t)h * w);
    argmax_rows(s.data(), C, h, w, got.data());
    argmax_rows(s.data(), C, h, w, with_conf.data(), conf.data());
    for (int i = 0; i < h * w; ++i) {
        expect(got[i] == argmax_classes(s.data() + i, C, (i64)h * w), "argmax", C, h, w);
        expect(with_conf[i] == got[i], "argmax with confidence", C, h, w);
        expect(conf[i] == confidence_classes(s.data() + i, C, (i64)h * w), "confidence", C, h, w);
    }
}

template <typename T>
void check_bilinear(int C, int h, int w, int H, int W, bool ties) {
    const auto s = logits<T>(C * h * w, ties);
    std::vector<u8> got((size_t)H * W), conf((size_t)H * W);
    bilinear_labels(s.data(), C, h, w, got.data(), H, W, conf.data());
    for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x) {
            const LinearTap ty = linear_tap(y, h, H), tx = linear_tap(x, w, W);
            const int want = bilinear_argmax(s.data(), C, (i64)h * w, w, ty, tx);
            expect(got[(i64)y * W + x] == want, "bilinear argmax", C, H, W);
            const u8 want_conf = bilinear_confidence(s.data(), C, (i64)h * w, w, ty, tx);
            expect(conf[(i64)y * W + x] == want_conf, "bilinear confidence", C, H, W);
        }
}

template <typename T>
void check_ema(int C, int h, int w, bool ties) {
    const auto x = logits<T>(C * h * w, ties);
    auto got = logits<float>(C * h * w, ties);
    auto want = got;
    const float keep = 0.625f, fresh = (float)(1.0 - 0.625);
    const i64 changed = ema_rows(x.data(), got.data(), C, h, w, keep, fresh);
    i64 want_changed = 0;
    for (int i = 0; i < h * w; ++i) want_changed += ema_update(x.data() + i, want.data() + i, C, (i64)h * w, keep, fresh);
    expect(changed == want_changed, "ema votes", C, h, w);
    expect(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0, "ema average", C, h, w);
}

void check_preprocess(int H, int W, int h, int w) {
    std::vector<u8> img((size_t)H * W * 3);
    for (auto& b : img) b = (u8)next_u32();
    const float mean[3] = {123.675f, 116.28f, 103.53f};
    const float inv_std[3] = {1.0f / 58.395f, 1.0f / 57.12f, 1.0f / 57.375f};
    std::vector<float> got((size_t)3 * h * w);
    preprocess_impl(img.data(), H, W, (i64)W * 3, got.data(), h, w, mean, inv_std);
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
            float rgb[3];
            sample_bgr_normalized(img.data(), (i64)W * 3, linear_tap(y, H, h), linear_tap(x, W, w), mean, inv_std, rgb);
            for (int c = 0; c < 3; ++c)
                expect(got[(i64)c * h * w + (i64)y * w + x] == rgb[c], "preprocess", H, W, c);
        }
}

void check_upsample_blend(int h, int w, int H, int W) {
    std::vector<u8> small((size_t)h * w), frame((size_t)H * W * 3), labels((size_t)H * W), vis((size_t)H * W * 3);
    for (auto& b : small) b = (u8)(next_u32() % 12);
    for (auto& b : frame) b = (u8)next_u32();
    std::vector<u16> colour_q(256 * 4);
    for (auto& q : colour_q) q = blend_colour_q((float)(next_u32() % 256) * 0.4f);
    const u16 keep_q = blend_keep_q(0.6f);
    upsample_and_blend(small.data(), h, w, labels.data(), H, W, frame.data(), (i64)W * 3, vis.data(), colour_q.data(),
                       keep_q);
    for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x) {
            const u8 l = small[(i64)nearest_tap(y, h, H) * w + nearest_tap(x, w, W)];
            const i64 i = (i64)y * W + x;
            expect(labels[i] == l, "nearest labels", h, H, W);
            for (int c = 0; c < 3; ++c)
                expect(vis[3 * i + c] == blend_q(frame[3 * i + c], keep_q, colour_q[4 * l + c]), "blend", H, W, c);
        }
}

void check_blend_only(int H, int W) {
    std::vector<u8> labels((size_t)H * W), frame((size_t)H * W * 3), vis((size_t)H * W * 3);
    for (auto& b : labels) b = (u8)next_u32();
    for (auto& b : frame) b = (u8)next_u32();
    std::vector<u16> colour_q(256 * 4);
    for (auto& q : colour_q) q = blend_colour_q((float)(next_u32() % 256) * 0.25f);
    const u16 keep_q = blend_keep_q(0.75f);
    blend_only(labels.data(), H, W, frame.data(), (i64)W * 3, vis.data(), colour_q.data(), keep_q);
    for (i64 i = 0; i < (i64)H * W; ++i)
        for (int c = 0; c < 3; ++c)
            expect(vis[3 * i + c] == blend_q(frame[3 * i + c], keep_q, colour_q[4 * labels[i] + c]), "overlay", H, W, c);
}

}  // namespace

int main() {
    for (bool ties : {false, true}) {
        for (int C : {1, 2, 11, 19}) {
            check_argmax<float>(C, 7, 37, ties);
            check_argmax<u16>(C, 5, 21, ties);
            check_bilinear<float>(C, 9, 13, 36, 52, ties);   // x4: the vector interior
            check_bilinear<float>(C, 6, 17, 23, 50, ties);   // non-integer ratios
            check_bilinear<u16>(C, 4, 9, 8, 72, ties);       // x8
        }
    }
    for (bool ties : {false, true}) {
        for (int C : {1, 3, 11}) {
            check_ema<float>(C, 5, 45, ties);
            check_ema<u16>(C, 3, 19, ties);
        }
    }
    check_preprocess(37, 53, 16, 24);
    check_preprocess(90, 160, 96, 128);
    check_upsample_blend(11, 17, 45, 70);
    // row gathers 16 bytes a shuffle: upscales, a downscale, widths around 16, tails
    for (int w : {1, 15, 16, 17, 60, 240})
        for (int W : {16, 31, 48, 200, 961}) check_upsample_blend(3, w, 5, W);
    check_blend_only(23, 41);
    std::printf("lanes %d%s: %d checks, %d failures\n", kLanes,
#if defined(__ARM_NEON)
                " __ARM_NEON",
#elif defined(__AVX__)
                " __AVX__",
#else
                "",
#endif
                checks, failures);
    return failures == 0 ? 0 : 1;
}
