/*
 * bitnet-act.h — the per-token int8 activation quantization every ternary kernel shares (I2_S's
 * I8_S blocks and the TL1/TL2 LUT inputs give the same numbers, bit for bit). Internal header:
 * static inline pieces, included by bitnet-i2s*.c and bitnet-tl*.c.
 *
 * Contract (ref: shared/spec/bitnet-formats.md §2.4, fork `quantize_row_i8_s`):
 *   d = 127 / max(max|x|, 1e-5), the clamp taken in double ("double max, float s"; for float
 *   inputs this equals the float32 division), so an all-zero token gets d = 12700000 and q = 0,
 *   never a division by zero (fast-kernels §4);
 *   q = rint(clamp(x * d, -128, 127)) in float32, ties to even (the default rounding mode; no
 *   x*d+magic trick, which FMA contraction breaks). Clamping before rounding gives the same
 *   integer as after, since the bounds are integers. NaN inputs: max|x| skips them (fmaxf, and
 *   maxps keeps its second operand) and the clamp maps them to -128 (fmaxf(NaN, -128) = -128,
 *   maxps(NaN, lo) = lo).
 */
#ifndef BITNET_ACT_H
#define BITNET_ACT_H

#include <math.h>
#include <stdint.h>

/* The per-token scale d for a token whose largest |x| is amax. */
static inline float bitnet_act_scale(float amax) {
    const double m = (double)amax < 1e-5 ? 1e-5 : (double)amax;
    return (float)(127.0 / m);
}

/* max|x| over k values (NaN skipped). */
static inline float bitnet_act_absmax(const float *x, int64_t k) {
    float amax = 0.0f;
    for (int64_t i = 0; i < k; i++) amax = fmaxf(amax, fabsf(x[i]));
    return amax;
}

/* One activation: q = rint(clamp(x * d)). */
static inline int8_t bitnet_act_q(float x, float d) {
    float v = x * d;
    v = fminf(fmaxf(v, -128.0f), 127.0f);
    return (int8_t)rintf(v);
}

/* --- AVX2: 8 floats per step, the same float32 operations in the same order ----------------- */
#if (defined(__x86_64__) || defined(__i386__)) && !defined(BITNET_NO_SIMD) && \
    ((defined(__clang__) && __clang_major__ >= 7) || (!defined(__clang__) && __GNUC__ >= 8))
#include <immintrin.h>

#define BITNET_ACT_AVX2 static inline __attribute__((always_inline, target("avx2")))

/* max|x| over k values: maxps(new, running) keeps the running max when `new` is NaN. */
BITNET_ACT_AVX2 float bitnet_act_absmax_avx2(const float *x, int64_t k) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const int64_t kv = k / 8 * 8;
    __m256 vmax = _mm256_setzero_ps();
    for (int64_t i = 0; i < kv; i += 8)
        vmax = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)), vmax);
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float amax = _mm_cvtss_f32(m4);
    for (int64_t i = kv; i < k; i++) amax = fmaxf(amax, fabsf(x[i]));
    return amax;
}

/* q[0..32) = the int8 activations of x[0..32) for scale vd (= d in every lane); returns the
 * eight int32 lane sums of those 32 values (Σq, for I2_S's offset correction). */
BITNET_ACT_AVX2 __m256i bitnet_act_q32_avx2(const float *x, __m256 vd, int8_t *q) {
    const __m256 lo = _mm256_set1_ps(-128.0f), hi = _mm256_set1_ps(127.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7); /* undo the pack interleave */
    __m256i v[4];
    for (int u = 0; u < 4; u++) {
        const __m256 f = _mm256_mul_ps(_mm256_loadu_ps(x + 8 * u), vd);
        v[u] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(f, lo), hi));
    }
    /* narrow 32 int32 -> 32 int8 (already in range, so the saturation never acts) */
    const __m256i q16a = _mm256_packs_epi32(v[0], v[1]), q16b = _mm256_packs_epi32(v[2], v[3]);
    _mm256_storeu_si256((__m256i *)q,
                        _mm256_permutevar8x32_epi32(_mm256_packs_epi16(q16a, q16b), perm));
    return _mm256_add_epi32(_mm256_add_epi32(v[0], v[1]), _mm256_add_epi32(v[2], v[3]));
}
#endif

#endif /* BITNET_ACT_H */
