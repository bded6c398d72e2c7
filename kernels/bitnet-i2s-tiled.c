/*
 * bitnet-i2s-tiled.c — the loop nest around the x86 micro-kernels (see bitnet-i2s-internal.h).
 *
 * Plain C: the paths hand in their tiles and epilogue as function pointers (each call does
 * thousands of multiply-adds, so the indirect call is free), and this file needs no target flags.
 * ref: shared/spec/fast-kernels.md §2 (reuse of unpacked weights, act-parallel tiles), §4 (tails).
 */
#include <string.h>

#include "bitnet-i2s-internal.h"

/* Rows of the next tile: the largest one-token tile that fits, or the multi-token height. */
static int tile_rows(const bitnet_tiled_kernel *kern, int T, int64_t rows_left) {
    if (T == 1) {
        for (int i = 0; i < 2; i++)
            if (rows_left >= kern->gemv_rows[i]) return kern->gemv_rows[i];
        return 1;
    }
    return rows_left >= kern->gemm_rows ? kern->gemm_rows : 1;
}

static bitnet_tile_fn pick_tile(const bitnet_tiled_kernel *kern, int R, int T) {
    if (T == 1) return kern->gemv[R == kern->gemv_rows[0] ? 0 : R == kern->gemv_rows[1] ? 1 : 2];
    return kern->gemm[R - 1][T - 1];
}

/* Copy T tokens' blocks [b0, b0 + n) into buf as [block][token][128 int8]. */
static void pack_acts(int8_t *buf, const bitnet_block_i8s *a, int64_t nb, int T, int64_t b0,
                      int64_t n) {
    for (int64_t b = 0; b < n; b++)
        for (int t = 0; t < T; t++)
            memcpy(buf + (b * T + t) * BITNET_QK_I2S, a[t * nb + b0 + b].qs, BITNET_QK_I2S);
}

void bitnet_i2s_mul_mat_tiled(const bitnet_tiled_kernel *kern, int64_t k, int64_t nr, int64_t nt,
                              const uint8_t *w, float w_scale, const bitnet_block_i8s *a,
                              float *y, int64_t y_stride) {
    const int64_t nb = k / BITNET_QK_I2S;
    const int64_t row_bytes = k / 4;
    _Alignas(64) int8_t buf[BITNET_ACT_BUF];
    _Alignas(64) int32_t raw[BITNET_ROW_BAND][16]; /* partial sums of every tile of a band */
    _Alignas(64) int32_t act_sum[16];              /* per-token terms, lane i → token i % T */
    _Alignas(64) float d[16];

    for (int64_t r0 = 0; r0 < nr; r0 += BITNET_ROW_BAND) {
        const int64_t band = nr - r0 < BITNET_ROW_BAND ? nr - r0 : BITNET_ROW_BAND;
        for (int64_t t0 = 0; t0 < nt; t0 += kern->max_tokens) {
            const int T = (int)(nt - t0 < kern->max_tokens ? nt - t0 : kern->max_tokens);
            const bitnet_block_i8s *at = a + t0 * nb;

            /* 1. raw sums, chunk by chunk: equal chunks of blocks that fit the buffer */
            const int64_t fit = BITNET_ACT_BUF / (T * BITNET_QK_I2S);
            const int64_t nchunks = (nb + fit - 1) / fit;
            const int64_t chunk = (nb + nchunks - 1) / nchunks;
            for (int64_t b0 = 0; b0 < nb; b0 += chunk) {
                const int64_t n = nb - b0 < chunk ? nb - b0 : chunk;
                pack_acts(buf, at, nb, T, b0, n);
                int64_t i = 0;
                for (int64_t r = 0; r < band; i++) {
                    const int R = tile_rows(kern, T, band - r);
                    pick_tile(kern, R, T)(n, w + (r0 + r) * row_bytes + b0 * 32, row_bytes, buf,
                                          raw[i], b0 > 0);
                    r += R;
                }
            }

            /* 2. the group's per-token terms: Σq over the row (offset trick) and the scale */
            for (int t = 0; t < T; t++) {
                act_sum[t] = bitnet_token_sum(at + t * nb, nb);
                d[t] = at[t * nb].d;
            }
            for (int i = T; i < 16; i++) {
                act_sum[i] = act_sum[i % T];
                d[i] = d[i % T];
            }

            /* 3. epilogue, tile by tile */
            int64_t i = 0;
            for (int64_t r = 0; r < band; i++) {
                const int R = tile_rows(kern, T, band - r);
                kern->epilogue(raw[i], act_sum, d, w_scale, R, T, y + t0 * y_stride + r0 + r,
                               y_stride);
                r += R;
            }
        }
    }
}
