/*
 * bitnet-i2s-avx2.c — I2_S × I8_S with AVX2 (`vpmaddubsw`), for x86 CPUs without AVX-512 VNNI.
 *
 * Sources: shared/spec/bitnet-formats.md §2.1 (layout), §2.5 (AVX2 kernel shape, formula);
 * shared/spec/fast-kernels.md §2 (unpack, offset trick, accumulator width), §4 (int16 sums).
 *
 * Unpacking one 32-byte block: byte j holds elements j, j+32, j+64, j+96 in bits 7:6, 5:4, 3:2,
 *   1:0 (spec §2.1), so `and(srli_epi16(v, 6 − 2g), 3)` gives the 32 codes of elements
 *   32g .. 32g+31, lined up with 32 contiguous activations (fast-kernels §2 "Unpack").
 *
 * Multiplying: `vpmaddubsw(codes_u8, acts_s8)` gives int16 lanes c0·q0 + c1·q1 with codes ≤ 2,
 *   so every lane is in [−512, 508] and never saturates. Four of them per block sum to at most
 *   2048 in magnitude; we add GROUP = 8 blocks in int16 (≤ 16384 < 32767, i.e. 32 results per
 *   lane, under the ≤ 64 of fast-kernels §4) and then widen with `vpmaddwd(x, 1)` into int32.
 *   So no input can overflow, including all codes 2 with all activations −128 or 127.
 *   (The original kernel adds 32 blocks in int16 and can wrap: spec §2.5, fast-kernels §2.)
 *
 * Tiles: GEMV = 4 rows × 1 token (one activation load serves 4 rows); GEMM = 1 row × 4 tokens
 *   (each block is unpacked once for 4 tokens). 16 ymm registers limit both.
 */
#include "bitnet-i2s-internal.h"

#ifdef BITNET_HAVE_X86

#include <immintrin.h>

#define TARGET __attribute__((target("avx2")))
#define INLINE static inline __attribute__((always_inline))

#define GROUP 8  /* blocks summed in int16 before widening (see header comment) */
#define GEMV_R 4 /* rows per tile for one token */
#define GEMM_T 4 /* tokens per tile for many tokens */

/* ============================================================================================
 * Horizontal reduction of up to 8 accumulators (lane i = Σ lanes of acc[i])
 * ============================================================================================ */

/* Within each 128-bit lane L: [Σa_L, Σb_L, Σc_L, Σd_L] (pairwise transpose-and-add). */
TARGET INLINE __m256i sum4_in_lanes(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i ab = _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
    const __m256i cd = _mm256_add_epi32(_mm256_unpacklo_epi32(c, d), _mm256_unpackhi_epi32(c, d));
    return _mm256_add_epi32(_mm256_unpacklo_epi64(ab, cd), _mm256_unpackhi_epi64(ab, cd));
}

TARGET INLINE __m256i reduce8(const __m256i *v) {
    const __m256i y0 = sum4_in_lanes(v[0], v[1], v[2], v[3]);
    const __m256i y1 = sum4_in_lanes(v[4], v[5], v[6], v[7]);
    /* lane 0: both 128-bit halves of y0 added; lane 1: those of y1 */
    return _mm256_add_epi32(_mm256_permute2x128_si256(y0, y1, 0x20),
                            _mm256_permute2x128_si256(y0, y1, 0x31));
}

/* ============================================================================================
 * The micro-kernel: R rows × T tokens (R·T ≤ 4), raw[r*T + t] = Σ code·q
 * ============================================================================================ */

TARGET INLINE void tile(const int R, const int T, int64_t nb, const uint8_t *w, int64_t row_bytes,
                        const bitnet_block_i8s *a, int32_t *raw) {
    const __m256i mask3 = _mm256_set1_epi8(3);
    const __m256i ones16 = _mm256_set1_epi16(1);
    __m256i acc[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_si256();

    for (int64_t b0 = 0; b0 < nb; b0 += GROUP) {
        const int64_t b1 = nb - b0 < GROUP ? nb : b0 + GROUP;
        __m256i acc16[4];
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) acc16[i] = _mm256_setzero_si256();

        for (int64_t b = b0; b < b1; b++) {
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                /* 1. unpack: codes of elements 0..31, 32..63, 64..95, 96..127 */
                const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + r * row_bytes + b * 32));
                const __m256i c0 = _mm256_and_si256(_mm256_srli_epi16(wv, 6), mask3);
                const __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(wv, 4), mask3);
                const __m256i c2 = _mm256_and_si256(_mm256_srli_epi16(wv, 2), mask3);
                const __m256i c3 = _mm256_and_si256(wv, mask3);
#pragma GCC unroll 4
                for (int t = 0; t < T; t++) {
                    /* 2. u8 codes × s8 activations → int16 pairs, four groups summed (≤ 2048) */
                    const int8_t *q = a[t * nb + b].qs;
                    const __m256i p0 = _mm256_maddubs_epi16(c0, _mm256_loadu_si256((const __m256i *)q));
                    const __m256i p1 = _mm256_maddubs_epi16(c1, _mm256_loadu_si256((const __m256i *)(q + 32)));
                    const __m256i p2 = _mm256_maddubs_epi16(c2, _mm256_loadu_si256((const __m256i *)(q + 64)));
                    const __m256i p3 = _mm256_maddubs_epi16(c3, _mm256_loadu_si256((const __m256i *)(q + 96)));
                    const __m256i p = _mm256_add_epi16(_mm256_add_epi16(p0, p1), _mm256_add_epi16(p2, p3));
                    acc16[r * T + t] = _mm256_add_epi16(acc16[r * T + t], p);
                }
            }
        }
        /* 3. widen the group's int16 sums (≤ 16384) into the int32 accumulators */
#pragma GCC unroll 4
        for (int i = 0; i < R * T; i++)
            acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(acc16[i], ones16));
    }
    _mm256_storeu_si256((__m256i *)raw, reduce8(acc));
}

/* ============================================================================================
 * Epilogue: y = (float)(raw − Σq) / d · w_scale for up to 8 (row, token) pairs
 * ============================================================================================ */

typedef struct {
    int32_t act_sum[8];
    float d[8];
} token_terms; /* lane i → token i % T; unused lanes get d = 1 */

static void token_terms_init(token_terms *tt, const bitnet_block_i8s *a, int64_t nb, int T) {
    for (int i = 0; i < 8; i++) {
        const int t = i % T;
        tt->act_sum[i] = i < T ? bitnet_token_sum(a + t * nb, nb) : tt->act_sum[t];
        tt->d[i] = a[t * nb].d;
    }
}

TARGET INLINE void epilogue(const int32_t *raw, const token_terms *tt, float w_scale, int R, int T,
                            float *y, int64_t y_stride) {
    const __m256i v = _mm256_sub_epi32(_mm256_loadu_si256((const __m256i *)raw),
                                       _mm256_loadu_si256((const __m256i *)tt->act_sum));
    /* same float32 operations, same order, as bitnet_i2s_output() */
    __m256 f = _mm256_cvtepi32_ps(v);
    f = _mm256_div_ps(f, _mm256_loadu_ps(tt->d));
    f = _mm256_mul_ps(f, _mm256_set1_ps(w_scale));
    float out[8];
    _mm256_storeu_ps(out, f);
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) y[t * y_stride + r] = out[r * T + t];
}

#define TILE_FN(R_, T_)                                                                     \
    TARGET static void tile_##R_##x##T_(int64_t nb, const uint8_t *w, int64_t row_bytes,    \
                                        const bitnet_block_i8s *a, int32_t *raw) {          \
        tile(R_, T_, nb, w, row_bytes, a, raw);                                             \
    }
TILE_FN(4, 1)
TILE_FN(1, 1)
TILE_FN(1, 2)
TILE_FN(1, 3)
TILE_FN(1, 4)

typedef void (*tile_fn)(int64_t, const uint8_t *, int64_t, const bitnet_block_i8s *, int32_t *);
static const tile_fn GEMM_TILES[GEMM_T] = {tile_1x1, tile_1x2, tile_1x3, tile_1x4};

TARGET void bitnet_i2s_mul_mat_avx2(int64_t k, int64_t nr, int64_t nt, const uint8_t *w,
                                    float w_scale, const bitnet_block_i8s *a, float *y,
                                    int64_t y_stride) {
    const int64_t nb = k / BITNET_QK_I2S;
    const int64_t row_bytes = k / 4;
    token_terms tt;
    int32_t raw[8];

    for (int64_t t0 = 0; t0 < nt; t0 += GEMM_T) {
        const int T = (int)(nt - t0 < GEMM_T ? nt - t0 : GEMM_T);
        const bitnet_block_i8s *at = a + t0 * nb;
        float *yt = y + t0 * y_stride;
        if (T == 1) { /* one token: 4 rows share each activation load */
            token_terms_init(&tt, at, nb, 1);
            int64_t r = 0;
            for (; r + GEMV_R <= nr; r += GEMV_R) {
                tile_4x1(nb, w + r * row_bytes, row_bytes, at, raw);
                epilogue(raw, &tt, w_scale, GEMV_R, 1, yt + r, y_stride);
            }
            for (; r < nr; r++) {
                tile_1x1(nb, w + r * row_bytes, row_bytes, at, raw);
                epilogue(raw, &tt, w_scale, 1, 1, yt + r, y_stride);
            }
            continue;
        }
        token_terms_init(&tt, at, nb, T); /* several tokens: unpack each row once for T tokens */
        for (int64_t r = 0; r < nr; r++) {
            GEMM_TILES[T - 1](nb, w + r * row_bytes, row_bytes, at, raw);
            epilogue(raw, &tt, w_scale, 1, T, yt + r, y_stride);
        }
    }
}

/* ============================================================================================
 * Activation quantization (ref: spec §2.4), 8 floats per step
 * ============================================================================================ */

TARGET void bitnet_quantize_row_i8s_avx2(const float *x, bitnet_block_i8s *y, int64_t k) {
    const int64_t nb = k / BITNET_QK_I2S;
    const __m256 sign = _mm256_set1_ps(-0.0f);

    /* 1. max|x|; maxps(new, running) keeps the running max when `new` is NaN (like fmaxf) */
    __m256 vmax = _mm256_setzero_ps();
    for (int64_t i = 0; i < k; i += 8)
        vmax = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)), vmax);
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);

    /* 2. d = 127 / max(amax, 1e-5), as in the scalar path */
    const double m = (double)amax < 1e-5 ? 1e-5 : (double)amax;
    const float d = (float)(127.0 / m);
    const __m256 vd = _mm256_set1_ps(d);
    const __m256 lo = _mm256_set1_ps(-128.0f), hi = _mm256_set1_ps(127.0f);
    /* undoes the lane interleave of the two pack instructions below */
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);

    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * BITNET_QK_I2S;
        __m256i vsum = _mm256_setzero_si256();
        for (int j = 0; j < BITNET_QK_I2S; j += 32) {
            /* 3. x·d, clamp, round half to even (MXCSR default), four vectors of 8 */
            __m256i q[4];
            for (int u = 0; u < 4; u++) {
                __m256 v = _mm256_mul_ps(_mm256_loadu_ps(xb + j + 8 * u), vd);
                v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
                q[u] = _mm256_cvtps_epi32(v);
                vsum = _mm256_add_epi32(vsum, q[u]);
            }
            /* 4. narrow 32 int32 → 32 int8 (values already in range, so no saturation) */
            const __m256i q01 = _mm256_packs_epi32(q[0], q[1]);
            const __m256i q23 = _mm256_packs_epi32(q[2], q[3]);
            const __m256i q8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(q01, q23), perm);
            _mm256_storeu_si256((__m256i *)(y[b].qs + j), q8);
        }
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(vsum), _mm256_extracti128_si256(vsum, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
        y[b].d = d;
        y[b].sum = _mm_cvtsi128_si32(s4);
    }
}

#endif /* BITNET_HAVE_X86 */
