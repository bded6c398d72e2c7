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
 * Loop structure: bitnet_i2s_mul_mat_tiled (bitnet-i2s-tiled.c), with the activations copied to
 *   an aligned buffer. Tiles: one token → rows read one after another (weights in memory order);
 *   several tokens → 1 row × up to 8 tokens, each quarter block unpacked once for 8 tokens
 *   (see tile()).
 */
#include "bitnet-act.h"
#include "bitnet-i2s-internal.h"

#ifdef BITNET_HAVE_X86

#include <immintrin.h>

#define TARGET __attribute__((target("avx2")))
#define INLINE static inline __attribute__((always_inline))

#define GROUP 8            /* blocks summed in int16 before widening (see header comment) */
#define GEMM_T 8           /* tokens per multi-token tile (1 row × 8 tokens) */
/* Bytes ahead of the weight stream that the GEMV prefetches. Cold GEMV (weights from DRAM),
 * 1 thread, thread CPU time, AMD EPYC Zen 5 VM: 2048 → 8192 bytes takes 2560×2560 from 76–82 to
 * 61–66 µs and 2560×6912 from 212–240 to 159–163 µs; 12–16 KB gain nothing more; hot (L2)
 * calls are unchanged. Not measured on Zen 3 or Intel (no such machine here). */
#define GEMV_PREFETCH 8192

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
 * Epilogue: y = (float)(raw − Σq) / d · w_scale for up to 8 (row, token) pairs
 * ============================================================================================ */

TARGET static void epilogue(const int32_t *raw, const int32_t *act_sum, const float *d,
                            float w_scale, int R, int T, float *y, int64_t y_stride) {
    const __m256i v = _mm256_sub_epi32(_mm256_loadu_si256((const __m256i *)raw),
                                       _mm256_loadu_si256((const __m256i *)act_sum));
    /* same float32 operations, same order, as bitnet_i2s_output() */
    __m256 f = _mm256_cvtepi32_ps(v);
    f = _mm256_div_ps(f, _mm256_loadu_ps(d));
    f = _mm256_mul_ps(f, _mm256_set1_ps(w_scale));
    float out[8];
    _mm256_storeu_ps(out, f);
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) y[t * y_stride + r] = out[r * T + t];
}

/* ============================================================================================
 * Micro-kernels (act: the token group's blocks, [block][T][128], 64-byte aligned)
 * ============================================================================================ */

/* The codes of one block, in element order: c[g] = codes of elements 32g .. 32g+31. */
TARGET INLINE void unpack(const uint8_t *wb, __m256i c[4]) {
    const __m256i mask3 = _mm256_set1_epi8(3);
    const __m256i wv = _mm256_loadu_si256((const __m256i *)wb);
    c[0] = _mm256_and_si256(_mm256_srli_epi16(wv, 6), mask3);
    c[1] = _mm256_and_si256(_mm256_srli_epi16(wv, 4), mask3);
    c[2] = _mm256_and_si256(_mm256_srli_epi16(wv, 2), mask3);
    c[3] = _mm256_and_si256(wv, mask3);
}

/* Σ code·q of one block as int16 lanes (|lane| ≤ 4·512 = 2048). */
TARGET INLINE __m256i block_dot16(const __m256i c[4], const int8_t *q) {
    const __m256i p0 = _mm256_maddubs_epi16(c[0], _mm256_load_si256((const __m256i *)q));
    const __m256i p1 = _mm256_maddubs_epi16(c[1], _mm256_load_si256((const __m256i *)(q + 32)));
    const __m256i p2 = _mm256_maddubs_epi16(c[2], _mm256_load_si256((const __m256i *)(q + 64)));
    const __m256i p3 = _mm256_maddubs_epi16(c[3], _mm256_load_si256((const __m256i *)(q + 96)));
    return _mm256_add_epi16(_mm256_add_epi16(p0, p1), _mm256_add_epi16(p2, p3));
}

TARGET INLINE void store_raw(__m256i sums, int32_t *raw, int accumulate) {
    if (accumulate) sums = _mm256_add_epi32(sums, _mm256_loadu_si256((const __m256i *)raw));
    _mm256_storeu_si256((__m256i *)raw, sums);
}

/* One token: R rows one after another, so the weights are read in memory order (one long
 * stream for the hardware prefetcher; see the AVX-512 GEMV). raw[r] (+)= Σ code·q of row r. */
TARGET INLINE void gemv(const int R, int64_t nb, const uint8_t *w, int64_t row_bytes,
                        const int8_t *act, int32_t *raw, int accumulate) {
    const __m256i ones16 = _mm256_set1_epi16(1);
    __m256i acc[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
        const uint8_t *wr = w + r * row_bytes;
        for (int64_t b0 = 0; b0 < nb; b0 += GROUP) {
            const int64_t b1 = nb - b0 < GROUP ? nb : b0 + GROUP;
            __m256i acc16 = _mm256_setzero_si256(); /* ≤ GROUP · 2048 = 16384 */
            for (int64_t b = b0; b < b1; b++) {
                __m256i c[4];
                if (b & 1) /* once per 64-byte line, GEMV_PREFETCH ahead */
                    _mm_prefetch((const char *)(wr + b * 32 + GEMV_PREFETCH), _MM_HINT_T0);
                unpack(wr + b * 32, c);
                acc16 = _mm256_add_epi16(acc16, block_dot16(c, act + b * BITNET_QK_I2S));
            }
            acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(acc16, ones16)); /* widen */
        }
    }
    store_raw(reduce8(acc), raw, accumulate);
}

/* Several tokens: R rows × T tokens (R·T ≤ 8), each block's codes made once for T tokens.
 * raw[r*T + t] (+)= Σ code·q.
 * The codes are made a quarter block at a time (32 elements: one shift + and per row) right
 * before use, so only R code registers are live: for 1×8, 8 int16 accumulators + the packed
 * block + codes + mask + activation + product = 13 of the 16 ymm; the int32 sums are touched
 * once per GROUP blocks and may live in memory. 2 rows × 4 tokens (activations loaded once per
 * 2 rows) was tried: more cycles per vpmaddubsw than 1×8 (llvm-mca: 0.85 / 0.94 against 0.78 /
 * 0.78 on Zen 3 / Skylake; 1×4 was 0.85 / 0.92), and 5–7 tokens per tile ran slower than 8.
 * Measured against 1×4 (nt = 128, 2B-4T shapes, thread CPU time, Zen 5 forced to AVX2): 1.03–1.09×
 * faster, 18–22 % fewer instructions (callgrind). */
TARGET INLINE void tile(const int R, const int T, int64_t nb, const uint8_t *w, int64_t row_bytes,
                        const int8_t *act, int32_t *raw, int accumulate) {
    const __m256i ones16 = _mm256_set1_epi16(1);
    const __m256i mask3 = _mm256_set1_epi8(3);
    __m256i acc32[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) acc32[i] = _mm256_setzero_si256();

    for (int64_t b0 = 0; b0 < nb; b0 += GROUP) {
        const int64_t b1 = nb - b0 < GROUP ? nb : b0 + GROUP;
        __m256i acc16[8]; /* each ≤ GROUP · 2048 = 16384 < 32767 */
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) acc16[i] = _mm256_setzero_si256();
        for (int64_t b = b0; b < b1; b++) {
            __m256i wv[2];
#pragma GCC unroll 2
            for (int r = 0; r < R; r++)
                wv[r] = _mm256_loadu_si256((const __m256i *)(w + r * row_bytes + b * 32));
            const int8_t *qb = act + b * T * BITNET_QK_I2S;
#pragma GCC unroll 4
            for (int g = 0; g < 4; g++) {
                /* 1. codes of elements 32g .. 32g+31 of each row (bits 7−2g : 6−2g) … */
                __m256i c[2];
#pragma GCC unroll 2
                for (int r = 0; r < R; r++)
                    c[r] = _mm256_and_si256(_mm256_srli_epi16(wv[r], 6 - 2 * g), mask3);
                /* 2. … times the same 32 activations of every token */
#pragma GCC unroll 8
                for (int t = 0; t < T; t++) {
                    const __m256i q =
                        _mm256_load_si256((const __m256i *)(qb + t * BITNET_QK_I2S + 32 * g));
#pragma GCC unroll 2
                    for (int r = 0; r < R; r++) {
                        acc16[r * T + t] =
                            _mm256_add_epi16(acc16[r * T + t], _mm256_maddubs_epi16(c[r], q));
                        /* keep the sum a chain in one register: otherwise GCC reassociates it,
                         * computes every product of the block first and spills most of them */
                        __asm__("" : "+x"(acc16[r * T + t]));
                    }
                }
            }
        }
        /* 3. widen the group's int16 sums into the int32 accumulators */
#pragma GCC unroll 8
        for (int i = 0; i < R * T; i++)
            acc32[i] = _mm256_add_epi32(acc32[i], _mm256_madd_epi16(acc16[i], ones16));
    }
    store_raw(reduce8(acc32), raw, accumulate);
}

#define GEMV_FN(R_)                                                                          \
    TARGET static void gemv_##R_(int64_t nb, const uint8_t *w, int64_t row_bytes,             \
                                 const int8_t *act, int32_t *raw, int accumulate) {           \
        gemv(R_, nb, w, row_bytes, act, raw, accumulate);                                     \
    }
#define TILE_FN(R_, T_)                                                                      \
    TARGET static void tile_##R_##x##T_(int64_t nb, const uint8_t *w, int64_t row_bytes,     \
                                        const int8_t *act, int32_t *raw, int accumulate) {   \
        tile(R_, T_, nb, w, row_bytes, act, raw, accumulate);                                \
    }
GEMV_FN(4)
GEMV_FN(2)
GEMV_FN(1)
TILE_FN(1, 2)
TILE_FN(1, 3)
TILE_FN(1, 4)
TILE_FN(1, 5)
TILE_FN(1, 6)
TILE_FN(1, 7)
TILE_FN(1, 8)

static const bitnet_tiled_kernel kernel_avx2 = {
    .max_tokens = GEMM_T,
    .gemv_rows = {4, 2, 1},
    .gemv = {gemv_4, gemv_2, gemv_1},
    .gemm_rows = 1,
    .gemm = {{gemv_1, tile_1x2, tile_1x3, tile_1x4, tile_1x5, tile_1x6, tile_1x7, tile_1x8}},
    .epilogue = epilogue,
};

TARGET void bitnet_i2s_mul_mat_avx2(int64_t k, int64_t nr, int64_t nt, const uint8_t *w,
                                    float w_scale, const bitnet_block_i8s *a, float *y,
                                    int64_t y_stride) {
    bitnet_i2s_mul_mat_tiled(&kernel_avx2, k, nr, nt, w, w_scale, a, y, y_stride);
}

/* ============================================================================================
 * Activation quantization (ref: spec §2.4; pieces in bitnet-act.h), 32 floats per step
 * ============================================================================================ */

TARGET void bitnet_quantize_row_i8s_avx2(const float *x, bitnet_block_i8s *y, int64_t k) {
    /* contract and NaN handling: bitnet-act.h (the scalar path's numbers, bit for bit) */
    const int64_t nb = k / BITNET_QK_I2S;
    const float d = bitnet_act_scale(bitnet_act_absmax_avx2(x, k));
    const __m256 vd = _mm256_set1_ps(d);
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * BITNET_QK_I2S;
        __m256i vsum = _mm256_setzero_si256();
        for (int j = 0; j < BITNET_QK_I2S; j += 32)
            vsum = _mm256_add_epi32(vsum, bitnet_act_q32_avx2(xb + j, vd, y[b].qs + j));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(vsum), _mm256_extracti128_si256(vsum, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
        y[b].d = d;
        y[b].sum = _mm_cvtsi128_si32(s4);
    }
}

#endif /* BITNET_HAVE_X86 */
