/*
 * bitnet-i2s-avx512.c — I2_S × I8_S with AVX-512 VNNI (`vpdpbusd`), for Cascade Lake, Ice Lake,
 * Zen 4 and later.
 *
 * Sources: shared/spec/bitnet-formats.md §2.1 (I2_S layout), §2.4–2.5 (I8_S, formula);
 * shared/spec/fast-kernels.md §2 (unpack with shift+mask, offset trick, int32 accumulation,
 * reuse of unpacked weights across tokens), §3 (register-blocked tiles), §4 (pitfalls).
 *
 * Unpacking one 32-byte block (128 weights) into two zmm of codes:
 *   byte j of a block holds elements j, j+32, j+64, j+96 in bits 7:6, 5:4, 3:2, 1:0 (spec §2.1).
 *   We broadcast the 32 bytes to both 256-bit halves of a zmm and extract a different 2-bit
 *   field in each half: (7:6 | 5:4) then (3:2 | 1:0). The first zmm then holds the codes of
 *   elements 0..63 in order, the second those of 64..127, lined up byte for byte with two
 *   64-byte loads of the block's activations, so no activation shuffles are needed.
 *   - shift+mask: `vpsrlvw` with per-half counts (6 | 4), (2 | 0), then `and 3` (the mask drops
 *     the bits the 16-bit shift carries in from the neighbouring byte; fast-kernels §2 "Unpack");
 *   - GFNI: one `vgf2p8affineqb` per zmm does both, with a bit-selection matrix per half.
 *   GFNI saves 2 of the 6 vector instructions per row and block, which shows in the GEMV
 *   (about +25% when the weights are in cache); it is picked at run time when present.
 *
 * Multiplying: `vpdpbusd(acc, codes_u8, acts_s8)` adds four u8×s8 products into each int32 lane.
 *   |product| ≤ 2·128, so int32 never overflows for any k that fits in memory (fast-kernels §2
 *   "Accumulator width"). raw = Σ code·q; the output formula subtracts Σq (offset trick).
 *
 * Loop structure: bitnet_i2s_mul_mat_tiled (bitnet-i2s-tiled.c) walks bands of rows, groups of
 *   up to 8 tokens and chunks of blocks, with the activations copied to an aligned buffer.
 *   Tiles: one token → 8 rows per call, read one after another so the weights stream in memory
 *   order (decode is bandwidth-bound, fast-kernels §1); several tokens →
 *   2 rows × up to 8 tokens (each block unpacked once for 8 tokens: fast-kernels §2 "Reuse
 *   unpacked weights across tokens"; 16 accumulators + 4 code registers of the 32 zmm).
 */
#include "bitnet-act.h"
#include "bitnet-i2s-internal.h"

#ifdef BITNET_HAVE_X86

#include <immintrin.h>

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define TARGET_GFNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,gfni")))
#define INLINE static inline __attribute__((always_inline))

/* GCC's partial-redundancy elimination duplicates every accumulator's loop phi (once as
 * __m512i = 8 × int64, once as the 16 × int32 view vpdpbusd works on), which costs a register
 * copy per accumulator per block and spills four of them: measured 205 → 260 GMAC/s in the GEMM
 * tile without it. Both the tile body and its callers need the same setting to inline. */
#if defined(__GNUC__) && !defined(__clang__)
#define BITNET_NO_TREE_PRE __attribute__((optimize("no-tree-pre")))
#else
#define BITNET_NO_TREE_PRE
#endif

#define GEMM_T 8           /* tokens per multi-token tile (2 rows × 8 tokens = 16 accumulators) */
/* Bytes ahead of the weight stream that the GEMV prefetches: 8 KB, as on the AVX2 path (see
 * bitnet-i2s-avx2.c). Cold GEMV (weights from DRAM), 1 thread, thread CPU time, AMD EPYC Zen 5
 * VM: 2048 → 8192 bytes took 2560×2560 from 72 to 55 µs and 2560×6912 from 164 to 129 µs. */
#define GEMV_PREFETCH 8192

/* ============================================================================================
 * Horizontal reduction of up to 16 accumulators into one vector (lane i = Σ lanes of acc[i])
 * ============================================================================================ */

/* Within each 128-bit lane L: [Σa_L, Σb_L, Σc_L, Σd_L], where Σx_L is the sum of x's four int32
 * in lane L. Two unpack+add rounds: a pairwise transpose-and-add. */
TARGET INLINE __m512i sum4_in_lanes(__m512i a, __m512i b, __m512i c, __m512i d) {
    const __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    const __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
    return _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
}

/* [x0+x1, x2+x3 | y0+y1, y2+y3] over 128-bit lanes (x_i = lane i of x). */
TARGET INLINE __m512i add_lane_pairs(__m512i x, __m512i y) {
    return _mm512_add_epi32(_mm512_shuffle_i32x4(x, y, _MM_SHUFFLE(2, 0, 2, 0)),
                            _mm512_shuffle_i32x4(x, y, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* out lane i = horizontal sum of v[i], for i < 16 (about 45 instructions for all 16, instead
 * of 16 separate horizontal sums). */
TARGET INLINE __m512i reduce16(const __m512i *v) {
    const __m512i y0 = sum4_in_lanes(v[0], v[1], v[2], v[3]);
    const __m512i y1 = sum4_in_lanes(v[4], v[5], v[6], v[7]);
    const __m512i y2 = sum4_in_lanes(v[8], v[9], v[10], v[11]);
    const __m512i y3 = sum4_in_lanes(v[12], v[13], v[14], v[15]);
    /* lane j of the result = Σ over the four 128-bit lanes of y_j */
    return add_lane_pairs(add_lane_pairs(y0, y1), add_lane_pairs(y2, y3));
}

/* ============================================================================================
 * Epilogue: y = (float)(raw − Σq) / d · w_scale, vectorized over 16 (row, token) pairs
 * ============================================================================================ */

TARGET static void epilogue(const int32_t *raw, const int32_t *act_sum, const float *d,
                            float w_scale, int R, int T, float *y, int64_t y_stride) {
    const __m512i v = _mm512_sub_epi32(_mm512_loadu_si512((const void *)raw),
                                       _mm512_loadu_si512((const void *)act_sum));
    /* the same float32 operations, in the same order, as bitnet_i2s_output() */
    __m512 f = _mm512_cvtepi32_ps(v);
    f = _mm512_div_ps(f, _mm512_loadu_ps(d));
    f = _mm512_mul_ps(f, _mm512_set1_ps(w_scale));
    float out[16];
    _mm512_storeu_ps(out, f);
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) y[t * y_stride + r] = out[r * T + t];
}

/* ============================================================================================
 * The micro-kernels, instantiated for both unpack methods (bitnet-i2s-avx512-tile.h)
 * ============================================================================================ */

/* shift+mask: low half shifted by 6 (bits 7:6 → group 0), high half by 4 (group 1); then 2 | 0 */
#define UNPACK_SHIFT(wv, c01, c23)                                                              \
    do {                                                                                        \
        const __m512i m3_ = _mm512_set1_epi8(3);                                                \
        const __m512i s01_ = _mm512_inserti64x4(_mm512_set1_epi16(6), _mm256_set1_epi16(4), 1); \
        const __m512i s23_ = _mm512_inserti64x4(_mm512_set1_epi16(2), _mm256_set1_epi16(0), 1); \
        (c01) = _mm512_and_si512(_mm512_srlv_epi16((wv), s01_), m3_);                           \
        (c23) = _mm512_and_si512(_mm512_srlv_epi16((wv), s23_), m3_);                           \
    } while (0)

/* GFNI: result bit i of each byte = parity(matrix byte [7 − i] AND source byte). Selecting
 * source bits 6 → 0 and 7 → 1 (matrix bytes 7 = 0x40, 6 = 0x80) extracts bits 7:6 as a code;
 * likewise 0x10/0x20 for 5:4, 0x04/0x08 for 3:2 and 0x01/0x02 for 1:0. The matrix is per 64-bit
 * lane, so each 256-bit half gets its own field. */
#define GF_SEL_76 0x4080000000000000LL
#define GF_SEL_54 0x1020000000000000LL
#define GF_SEL_32 0x0408000000000000LL
#define GF_SEL_10 0x0102000000000000LL
#define UNPACK_GFNI(wv, c01, c23)                                                               \
    do {                                                                                        \
        const __m512i g01_ =                                                                    \
            _mm512_inserti64x4(_mm512_set1_epi64(GF_SEL_76), _mm256_set1_epi64x(GF_SEL_54), 1); \
        const __m512i g23_ =                                                                    \
            _mm512_inserti64x4(_mm512_set1_epi64(GF_SEL_32), _mm256_set1_epi64x(GF_SEL_10), 1); \
        (c01) = _mm512_gf2p8affine_epi64_epi8((wv), g01_, 0);                                   \
        (c23) = _mm512_gf2p8affine_epi64_epi8((wv), g23_, 0);                                   \
    } while (0)

#define AVX512_SUFFIX shift
#define AVX512_TARGET TARGET
#define AVX512_UNPACK UNPACK_SHIFT
#include "bitnet-i2s-avx512-tile.h"
#undef AVX512_SUFFIX
#undef AVX512_TARGET
#undef AVX512_UNPACK

#define AVX512_SUFFIX gfni
#define AVX512_TARGET TARGET_GFNI
#define AVX512_UNPACK UNPACK_GFNI
#include "bitnet-i2s-avx512-tile.h"
#undef AVX512_SUFFIX
#undef AVX512_TARGET
#undef AVX512_UNPACK

/* ============================================================================================
 * Epilogue: y = (float)(raw − Σq) / d · w_scale, vectorized over 16 (row, token) pairs
 * ============================================================================================ */

/* ============================================================================================
 * The two instantiations (bitnet-i2s-avx512-tile.h) and the entry points
 * ============================================================================================ */

/* The "avx512vnni" path: GFNI unpacking when the CPU has it. The answer is fixed per CPU, so
 * threads that meet the first call together only repeat the same query; the cache is read and
 * written atomically (relaxed), so that is not a data race (ThreadSanitizer found the plain int,
 * tests/test_kernels_threads.py). */
TARGET void bitnet_i2s_mul_mat_avx512vnni(int64_t k, int64_t nr, int64_t nt, const uint8_t *w,
                                          float w_scale, const bitnet_block_i8s *a, float *y,
                                          int64_t y_stride) {
    static int cached = -1;
    int has_gfni = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (has_gfni < 0) {
        has_gfni = bitnet_cpuid7_ecx(8);
        __atomic_store_n(&cached, has_gfni, __ATOMIC_RELAXED);
    }
    bitnet_i2s_mul_mat_tiled(has_gfni ? &kernel_gfni : &kernel_shift, k, nr, nt, w, w_scale, a, y,
                             y_stride);
}

/* The shift+mask variant on its own, so the tests can check it on CPUs that have GFNI. */
TARGET void bitnet_i2s_mul_mat_avx512vnni_shift(int64_t k, int64_t nr, int64_t nt,
                                                const uint8_t *w, float w_scale,
                                                const bitnet_block_i8s *a, float *y,
                                                int64_t y_stride) {
    bitnet_i2s_mul_mat_tiled(&kernel_shift, k, nr, nt, w, w_scale, a, y, y_stride);
}

/* ============================================================================================
 * Activation quantization (ref: spec §2.4), 16 floats per step
 * ============================================================================================ */

TARGET void bitnet_quantize_row_i8s_avx512(const float *x, bitnet_block_i8s *y, int64_t k) {
    const int64_t nb = k / BITNET_QK_I2S;

    /* 1. max|x| (max is exact, so the order does not matter; NaN elements are skipped because
     *    maxps returns its second operand when the first is NaN, like fmaxf in the scalar path) */
    __m512 vmax = _mm512_setzero_ps();
    for (int64_t i = 0; i < k; i += 16)
        vmax = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + i)), vmax);
    const float amax = _mm512_reduce_max_ps(vmax);

    /* 2. d = 127 / max(amax, 1e-5) (bitnet-act.h, as in the scalar path) */
    const float d = bitnet_act_scale(amax);
    const __m512 vd = _mm512_set1_ps(d);
    const __m512 lo = _mm512_set1_ps(-128.0f), hi = _mm512_set1_ps(127.0f);

    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * BITNET_QK_I2S;
        __m512i vsum = _mm512_setzero_si512();
        for (int j = 0; j < BITNET_QK_I2S; j += 16) {
            /* 3. x·d in float32, clamp (max(v, lo) maps NaN to lo like fmaxf), round with the
             *    current mode (round half to even by default) exactly like rintf in the scalar
             *    path, narrow to int8 (in range already, so the saturation never acts) */
            __m512 v = _mm512_mul_ps(_mm512_loadu_ps(xb + j), vd);
            v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
            const __m512i q = _mm512_cvtps_epi32(v);
            _mm_storeu_si128((__m128i *)(y[b].qs + j), _mm512_cvtsepi32_epi8(q));
            vsum = _mm512_add_epi32(vsum, q);
        }
        y[b].d = d;
        y[b].sum = _mm512_reduce_add_epi32(vsum);
    }
}

#endif /* BITNET_HAVE_X86 */
