/*
 * bitnet-tl.h — TL1 / TL2 lookup-table ternary matrix kernels (public interface).
 *
 * Plain C11, no ggml dependency: compiled into llama.cpp (patch 0007, glue
 * kernels/llama/ggml-cpu-bitnet-tl.c) and into the test library (tools/kernels_lib.py).
 *
 * The kernels are generic in the tiling: every function takes the (BM, BK, bm) of the weight,
 * which the converter packed it with (tools/quants/tiling.py `default_tiling(M, K, type)`, or
 * tiles `bitnet codegen --tune` measured faster) and recorded in the tensor's tail
 * (bitnet_tl_tail_tiling). `bitnet codegen` writes the tilings a build serves into a generated
 * table (kernels/llama/ggml-cpu-bitnet-tl-shapes.h) and the glue refuses a weight whose
 * (shape, tiles) is missing from it.
 *
 * Formats (ref: docs/formats.md "TL1", "TL2"; shared/spec/bitnet-formats.md §3.1, §3.2):
 *   TL1: pair (w0, w1) -> idx = 3*w0 + w1 + 4; byte = idx(pair 2q) << 4 | idx(pair 2q+1);
 *        order [M/BM][K/BK][BM/bm][BK/by][bm/16][by/4][16 rows], by = 256/bm; M*K/4 bytes + tail.
 *   TL2: three-part (first three_k = K/BK*BK columns): group v = 9*w0 + 3*w1 + w2, |v| in a
 *        nibble, byte = |v|(group 2q) << 4 | |v|(group 2q+1), order [M/BM][three_k/BK][BM/32]
 *        [BK/6][32 rows, 8-byte chunks rows 0-7, 16-23, 8-15, 24-31]; sign words per 32 rows x
 *        24 columns; two-part (last two_k columns): TL1 pair codes in [M/BM][two_k/32][BM/32][8]
 *        [32 rows, same chunk swap]. Then zeros up to roundup32(P), then the tail.
 *   Both: the 32-byte tail holds the f32 per-tensor scale in bytes 0-3 (bitnet_tl_scale) and
 *        the tiles BM, BK, bm as uint32 LE in bytes 4-15 (bitnet_tl_tail_tiling; all zero in
 *        files from before the record, which were packed with default_tiling), then zeros.
 *
 * Contract (the same numbers as I2_S, bit for bit):
 *   activations: per token, d = 127 / max(max|x|, 1e-5) (float32, the I2_S row scale: an all-zero
 *   token gives d = 1.27e7 and q = 0, never a division by zero), q = clamp(rint(x*d), -128, 127)
 *   with ties to even. LUT entries are int16 sums of q. The integer dot acc = Σ_i w_i*q_i is
 *   exact (int32), and y = (float)acc / d * w_scale in float32, in that order — identical to
 *   bitnet_i2s_mul_mat, whose (Σ code*q − Σ q) is the same integer.
 */
#ifndef BITNET_TL_H
#define BITNET_TL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BITNET_TL_TAIL_BYTES 32  /* after the packed data: f32 scale, tile record, zeros */
#define BITNET_TL_TILE_RECORD 4  /* tail offset of BM, BK, bm (3 x uint32 LE; 0 = unrecorded) */
#define BITNET_TL_LUT_ENTRIES 16 /* int16 entries per LUT slot (a pair or a group of 3) */

enum { BITNET_TL1 = 1, BITNET_TL2 = 2 };

/* One weight shape and its tiles: M rows (out features), K columns, BM-row tiles, BK-column
 * tiles, bm-row sub-tiles (TL2: bm = 32). */
typedef struct {
    int64_t M, K;
    int32_t BM, BK, bm;
} bitnet_tl_tiling;

/* 1 when the tiling satisfies the constraints of its type (docs/formats.md "Tile choice"). */
int bitnet_tl_tiling_valid(int type, const bitnet_tl_tiling *t);

/* Bytes of a whole tensor (data + tail): TL1 M*K/4 + 32, TL2 roundup32(P) + 32. */
int64_t bitnet_tl_nbytes(int type, int64_t m, int64_t k);
/* The per-tensor scale from the tail of a tensor of nbytes(type, M, K) bytes at w. */
float bitnet_tl_scale(int type, const uint8_t *w, int64_t m, int64_t k);
/* The tiles recorded in the tail of a tensor of nbytes(type, M, K) bytes at w (reads tail bytes
 * 4..15 only): 1 and *t = {M, K, BM, BK, bm} when recorded and valid for the shape; 0 when not
 * recorded (all zero: the file predates the record, its tiles are default_tiling's; *t is left
 * alone); -1 when recorded but invalid (*t holds the recorded values, for the error message). */
int bitnet_tl_tail_tiling(int type, const uint8_t *w, int64_t m, int64_t k, bitnet_tl_tiling *t);

/* Per-token int8 activations (the I2_S row scale): writes q[0..k), returns d. Any k > 0. */
float bitnet_tl_quantize_row(const float *x, int8_t *q, int64_t k);

/* int16 entries of one token's LUT: TL1 (K/2)*16; TL2 (three_k/3 + two_k/2)*16. */
int64_t bitnet_tl_lut_len(int type, const bitnet_tl_tiling *t);
/* LUT builder for one token (q = bitnet_tl_quantize_row output, K values).
 *   TL1 slot p (pair q[2p], q[2p+1] = b0, b1): entry idx = (idx/3-1)*b0 + (idx%3-1)*b1, 9..15 = 0.
 *   TL2 three-part slot g (b0, b1, b2 = q[3g..3g+2]): entry i = w0*b0 + w1*b1 + w2*b2 where
 *   9*w0 + 3*w1 + w2 = i (balanced ternary), 14..15 = 0; then the two-part slots as TL1. */
void bitnet_tl_build_lut(int type, const bitnet_tl_tiling *t, const int8_t *q, int16_t *lut);

/* y[j*y_stride + r] = (float)(Σ_i w[r,i]*q_j[i]) / d[j] * w_scale for the rows of BM-tiles
 * [tile0, tile1) and tokens j in [0, nt). w points at the tensor (row 0, tile 0); token j's LUT
 * starts at lut + j*lut_stride (int16 entries); y points at row 0 of token 0. */
void bitnet_tl_mul_mat(int type, const bitnet_tl_tiling *t, int64_t tile0, int64_t tile1,
                       int64_t nt, const uint8_t *w, float w_scale, const int16_t *lut,
                       int64_t lut_stride, const float *d, float *y, int64_t y_stride);

/* Path in use for TL lookups ("scalar", "avx2", ...: each names its TL1 and TL2 functions, a
 * path may keep the portable one for a type); force one with bitnet_tl_set_kernel (tests).
 * Returns 0 if the named path is unavailable here; NULL or "auto" picks the best. */
const char *bitnet_tl_kernel_name(void);
int bitnet_tl_set_kernel(const char *name);

#ifdef __cplusplus
}
#endif

#endif /* BITNET_TL_H */
