/*
 * bitnet-i2s-avx512-tile.h — the AVX-512 VNNI micro-kernels, included twice by
 * bitnet-i2s-avx512.c: once unpacking codes with shift + mask (every AVX-512 VNNI CPU, e.g.
 * Cascade Lake) and once with one GFNI affine instruction per half (Ice Lake, Zen 4 and later).
 *
 * Before including, define:
 *   AVX512_SUFFIX  name suffix of the generated functions (shift, gfni)
 *   AVX512_TARGET  the function attribute enabling the instructions used
 *   AVX512_UNPACK  AVX512_UNPACK(wv, c01, c23): from a 32-byte block broadcast to both halves
 *                  of wv, set c01 = codes of elements 0..63 and c23 = codes of 64..127
 *
 * ref: spec §2.1 (layout), fast-kernels §2 (unpack, vpdpbusd, reuse across tokens), §3 (tiles).
 */
#define AVX512_CAT2(a, b) a##_##b
#define AVX512_CAT(a, b) AVX512_CAT2(a, b)
#define AVX512_FN(name) AVX512_CAT(name, AVX512_SUFFIX)

/* raw[r*T + t] (+)= Σ code·q over blocks [0, nb) for R rows × T tokens.
 *   w:   row 0's first block; row r at w + r*row_bytes (32 bytes per block)
 *   act: activations re-laid by the caller as [block][T tokens][128 int8], 64-byte aligned, so
 *        each token's block is two aligned zmm loads (the I8_S blocks are 136 bytes apart, which
 *        would make almost every 64-byte load straddle two cache lines)
 *   accumulate: add to raw[] instead of overwriting it (later chunks of blocks)
 * R and T are compile-time constants at each instantiation (always_inline + unrolled loops), so
 * acc[] lives in registers: R·T ≤ 16 accumulators + 2R code registers of the 32 zmm.
 * Used for two or more tokens (one token: the gemv below). */
AVX512_TARGET BITNET_NO_TREE_PRE static inline __attribute__((always_inline)) void AVX512_FN(tile)(
    const int R, const int T, int64_t nb, const uint8_t *w, int64_t row_bytes,
    const int8_t *act, int32_t *raw, int accumulate) {
    __m512i acc[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_si512();

    const int8_t *qb = act;
    for (int64_t b = 0; b < nb; b++, w += 32, qb += T * BITNET_QK_I2S) {
        /* 1. unpack each row's block once: codes of elements 0..63 (c01) and 64..127 (c23) */
        __m512i c01[8], c23[8];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const __m512i wv =
                _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(w + r * row_bytes)));
            AVX512_UNPACK(wv, c01[r], c23[r]);
        }
        /* 2. for every token: two aligned loads, 2·R vpdpbusd (u8 codes × s8 activations, four
         *    products per int32 lane; |product| ≤ 256 so int32 cannot overflow) */
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            __m512i q01 = _mm512_load_si512((const void *)(qb + t * BITNET_QK_I2S));
            __m512i q23 = _mm512_load_si512((const void *)(qb + t * BITNET_QK_I2S + 64));
            /* keep the activations in registers: otherwise the compiler folds the load into
             * every vpdpbusd and loads each vector R times (measured: loads were the limit) */
            __asm__("" : "+v"(q01), "+v"(q23));
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                acc[r * T + t] = _mm512_dpbusd_epi32(acc[r * T + t], c01[r], q01);
                acc[r * T + t] = _mm512_dpbusd_epi32(acc[r * T + t], c23[r], q23);
            }
        }
    }
    /* 3. one transpose-add reduction for all R·T accumulators (lane i = Σ acc[i]) */
    __m512i sums = reduce16(acc);
    if (accumulate) sums = _mm512_add_epi32(sums, _mm512_loadu_si512((const void *)raw));
    _mm512_storeu_si512((void *)raw, sums);
}

/* One block of one row into two accumulators (codes 0..63 → *a01, 64..127 → *a23). */
AVX512_TARGET static inline __attribute__((always_inline)) void AVX512_FN(gemv_block)(
    __m512i *a01, __m512i *a23, const uint8_t *wb, const int8_t *q) {
    __m512i c01, c23;
    const __m512i wv = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)wb));
    AVX512_UNPACK(wv, c01, c23);
    *a01 = _mm512_dpbusd_epi32(*a01, c01, _mm512_load_si512((const void *)q));
    *a23 = _mm512_dpbusd_epi32(*a23, c23, _mm512_load_si512((const void *)(q + 64)));
}

/* One token (GEMV): raw[r] (+)= Σ code·q for R rows taken one after another, so the weights are
 * read strictly in memory order. Decode streams every weight once from DRAM, and a single long
 * sequential stream is what the hardware prefetcher follows best: measured +17–20% from DRAM and
 * +12% from L3 over 8 rows in lock-step (whose 8 short streams, k/4 bytes each, it barely
 * detects). Four blocks per step into eight accumulators keep vpdpbusd (latency ≈ 5 cycles) off
 * a dependency chain; act is the token's blocks, 64-byte aligned. */
AVX512_TARGET BITNET_NO_TREE_PRE static inline __attribute__((always_inline)) void AVX512_FN(gemv)(
    const int R, int64_t nb, const uint8_t *w, int64_t row_bytes, const int8_t *act, int32_t *raw,
    int accumulate) {
    __m512i acc[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_si512();
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        const uint8_t *wr = w + r * row_bytes;
        __m512i a[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) a[i] = _mm512_setzero_si512();
        int64_t b = 0;
        for (; b + 4 <= nb; b += 4) { /* blocks b .. b+3: two 64-byte lines of weights */
            /* software prefetch GEMV_PREFETCH ahead in the stream: +15% from DRAM over the
             * hardware prefetcher alone at 2 KB, more at 8 KB (measured, 1 thread); prefetches
             * never fault past the end */
            _mm_prefetch((const char *)(wr + b * 32 + GEMV_PREFETCH), _MM_HINT_T0);
            _mm_prefetch((const char *)(wr + b * 32 + 64 + GEMV_PREFETCH), _MM_HINT_T0);
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++)
                AVX512_FN(gemv_block)(&a[2 * j], &a[2 * j + 1], wr + (b + j) * 32,
                                      act + (b + j) * BITNET_QK_I2S);
        }
        for (; b < nb; b++) /* the last nb % 4 blocks */
            AVX512_FN(gemv_block)(&a[0], &a[1], wr + b * 32, act + b * BITNET_QK_I2S);
        acc[r] = _mm512_add_epi32(
            _mm512_add_epi32(_mm512_add_epi32(a[0], a[1]), _mm512_add_epi32(a[2], a[3])),
            _mm512_add_epi32(_mm512_add_epi32(a[4], a[5]), _mm512_add_epi32(a[6], a[7])));
    }
    __m512i sums = reduce16(acc); /* lane r = row r */
    if (accumulate) sums = _mm512_add_epi32(sums, _mm512_loadu_si512((const void *)raw));
    _mm512_storeu_si512((void *)raw, sums);
}

#define AVX512_GEMV(R_)                                                                        \
    AVX512_TARGET BITNET_NO_TREE_PRE static void AVX512_FN(gemv_##R_)(                          \
        int64_t nb, const uint8_t *w, int64_t row_bytes, const int8_t *act, int32_t *raw,      \
        int accumulate) {                                                                      \
        AVX512_FN(gemv)(R_, nb, w, row_bytes, act, raw, accumulate);                           \
    }
AVX512_GEMV(8)
AVX512_GEMV(4)
AVX512_GEMV(1)
#undef AVX512_GEMV

#define AVX512_TILE(R_, T_)                                                                    \
    AVX512_TARGET BITNET_NO_TREE_PRE static void AVX512_FN(tile_##R_##x##T_)(                   \
        int64_t nb, const uint8_t *w, int64_t row_bytes, const int8_t *act, int32_t *raw,      \
        int accumulate) {                                                                      \
        AVX512_FN(tile)(R_, T_, nb, w, row_bytes, act, raw, accumulate);                       \
    }
AVX512_TILE(2, 2)
AVX512_TILE(2, 3)
AVX512_TILE(2, 4)
AVX512_TILE(2, 5)
AVX512_TILE(2, 6)
AVX512_TILE(2, 7)
AVX512_TILE(2, 8)
AVX512_TILE(1, 2)
AVX512_TILE(1, 3)
AVX512_TILE(1, 4)
AVX512_TILE(1, 5)
AVX512_TILE(1, 6)
AVX512_TILE(1, 7)
AVX512_TILE(1, 8)
#undef AVX512_TILE

/* What the tiled driver (bitnet-i2s-tiled.c) calls. */
static const bitnet_tiled_kernel AVX512_FN(kernel) = {
    .max_tokens = GEMM_T,
    .gemv_rows = {8, 4, 1},
    .gemv = {AVX512_FN(gemv_8), AVX512_FN(gemv_4), AVX512_FN(gemv_1)},
    .gemm_rows = 2,
    .gemm = {{AVX512_FN(gemv_1), AVX512_FN(tile_1x2), AVX512_FN(tile_1x3), AVX512_FN(tile_1x4),
              AVX512_FN(tile_1x5), AVX512_FN(tile_1x6), AVX512_FN(tile_1x7), AVX512_FN(tile_1x8)},
             {NULL, AVX512_FN(tile_2x2), AVX512_FN(tile_2x3), AVX512_FN(tile_2x4),
              AVX512_FN(tile_2x5), AVX512_FN(tile_2x6), AVX512_FN(tile_2x7), AVX512_FN(tile_2x8)}},
    .epilogue = epilogue,
};

#undef AVX512_FN
#undef AVX512_CAT
#undef AVX512_CAT2
