/*
 * bitnet-i2s-neon-tile.h — body of the NEON I2_S kernel, included twice by bitnet-i2s-neon.c:
 * once with the plain NEON multiply-accumulate and once with the dot-product instruction.
 *
 * Before including, define:
 *   NEON_SUFFIX  name suffix of the generated functions (neon, neon_dotprod)
 *   NEON_TARGET  function attribute enabling the instructions (may be empty)
 *   NEON_MAC     NEON_MAC(acc, codes_u8x16, acts_s8x16) -> int32x4_t: acc + Σ code·q (exact)
 *
 * Layout (ref: spec §2.1): the same 128-element / 32-byte blocks as on x86 (DESIGN.md: "one I2_S
 * layout on every CPU"; the fork's 64/16 ARM layout misreads x86 files, fast-kernels §4). A block
 * is two 16-byte vectors w0 = bytes 0..15 and w1 = bytes 16..31; byte j holds elements j, j+32,
 * j+64, j+96 in bits 7:6, 5:4, 3:2, 1:0, so (w0 >> (6 − 2g)) & 3 are the codes of elements
 * 32g .. 32g+15 and (w1 >> (6 − 2g)) & 3 those of 32g+16 .. 32g+31.
 */
#define NEON_CAT2(a, b) a##_##b
#define NEON_CAT(a, b) NEON_CAT2(a, b)
#define NEON_FN(name) NEON_CAT(name, NEON_SUFFIX)

/* raw[r*T + t] = Σ code·q for R rows × T tokens (compile-time constants after inlining). */
NEON_TARGET static inline __attribute__((always_inline)) void NEON_FN(tile)(
    const int R, const int T, int64_t nb, const uint8_t *w, int64_t row_bytes,
    const bitnet_block_i8s *a, int32_t *raw) {
    const uint8x16_t mask3 = vdupq_n_u8(3);
    int32x4_t acc[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) acc[i] = vdupq_n_s32(0);

    for (int64_t b = 0; b < nb; b++) {
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            /* 1. unpack the block into 8 vectors of 16 codes, in element order */
            const uint8_t *wb = w + r * row_bytes + b * 32;
            const uint8x16_t w0 = vld1q_u8(wb), w1 = vld1q_u8(wb + 16);
            int8x16_t c[8];
            c[0] = vreinterpretq_s8_u8(vshrq_n_u8(w0, 6)); /* a byte shift by 6 needs no mask */
            c[1] = vreinterpretq_s8_u8(vshrq_n_u8(w1, 6));
            c[2] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(w0, 4), mask3));
            c[3] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(w1, 4), mask3));
            c[4] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(w0, 2), mask3));
            c[5] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(w1, 2), mask3));
            c[6] = vreinterpretq_s8_u8(vandq_u8(w0, mask3));
            c[7] = vreinterpretq_s8_u8(vandq_u8(w1, mask3));
            /* 2. multiply-accumulate with each token's 128 activations (c[i] ↔ q[16i..16i+15]) */
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) {
                const int8_t *q = a[t * nb + b].qs;
                int32x4_t s = acc[r * T + t];
#pragma GCC unroll 8
                for (int i = 0; i < 8; i++) s = NEON_MAC(s, c[i], vld1q_s8(q + 16 * i));
                acc[r * T + t] = s;
            }
        }
    }
    /* 3. horizontal sums (one `addv` each) */
#pragma GCC unroll 8
    for (int i = 0; i < R * T; i++) raw[i] = vaddvq_s32(acc[i]);
}

#define NEON_TILE_FN(R_, T_)                                                                  \
    NEON_TARGET static void NEON_FN(tile_##R_##x##T_)(int64_t nb, const uint8_t *w,           \
                                                      int64_t row_bytes,                     \
                                                      const bitnet_block_i8s *a, int32_t *raw) { \
        NEON_FN(tile)(R_, T_, nb, w, row_bytes, a, raw);                                      \
    }
NEON_TILE_FN(4, 1)
NEON_TILE_FN(1, 1)
NEON_TILE_FN(2, 2)
NEON_TILE_FN(2, 3)
NEON_TILE_FN(2, 4)
NEON_TILE_FN(1, 2)
NEON_TILE_FN(1, 3)
NEON_TILE_FN(1, 4)
#undef NEON_TILE_FN

/* GEMV = 4 rows × 1 token; GEMM = 2 rows × up to 4 tokens (each block unpacked once for T
 * tokens, fast-kernels §2 "Reuse unpacked weights"); tails use 1-row tiles. */
NEON_TARGET void NEON_CAT(bitnet_i2s_mul_mat, NEON_SUFFIX)(int64_t k, int64_t nr, int64_t nt,
                                                          const uint8_t *w, float w_scale,
                                                          const bitnet_block_i8s *a, float *y,
                                                          int64_t y_stride) {
    typedef void (*tile_fn)(int64_t, const uint8_t *, int64_t, const bitnet_block_i8s *,
                            int32_t *);
    static const tile_fn tiles2[4] = {0, NEON_FN(tile_2x2), NEON_FN(tile_2x3), NEON_FN(tile_2x4)};
    static const tile_fn tiles1[4] = {NEON_FN(tile_1x1), NEON_FN(tile_1x2), NEON_FN(tile_1x3),
                                      NEON_FN(tile_1x4)};
    const int64_t nb = k / BITNET_QK_I2S;
    const int64_t row_bytes = k / 4;
    int32_t raw[8], act_sum[4];
    float d[4];

    for (int64_t t0 = 0; t0 < nt; t0 += 4) {
        const int T = (int)(nt - t0 < 4 ? nt - t0 : 4);
        const bitnet_block_i8s *at = a + t0 * nb;
        float *yt = y + t0 * y_stride;
        for (int t = 0; t < T; t++) {
            act_sum[t] = bitnet_token_sum(at + t * nb, nb);
            d[t] = at[t * nb].d;
        }
        /* 4 rows per tile for one token, 2 rows × T tokens otherwise, then single rows */
        const int R = T == 1 ? 4 : 2;
        int64_t r = 0;
        for (; r + R <= nr; r += R) {
            if (T == 1) NEON_FN(tile_4x1)(nb, w + r * row_bytes, row_bytes, at, raw);
            else tiles2[T - 1](nb, w + r * row_bytes, row_bytes, at, raw);
            for (int i = 0; i < R; i++)
                for (int t = 0; t < T; t++)
                    yt[t * y_stride + r + i] =
                        bitnet_i2s_output(raw[i * T + t], act_sum[t], d[t], w_scale);
        }
        for (; r < nr; r++) {
            tiles1[T - 1](nb, w + r * row_bytes, row_bytes, at, raw);
            for (int t = 0; t < T; t++)
                yt[t * y_stride + r] = bitnet_i2s_output(raw[t], act_sum[t], d[t], w_scale);
        }
    }
}

#undef NEON_FN
#undef NEON_CAT
#undef NEON_CAT2
