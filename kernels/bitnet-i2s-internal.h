/*
 * bitnet-i2s-internal.h — what the I2_S kernel files share (not part of the public interface).
 *
 * Each instruction-set path lives in its own file and is compiled with a per-function target
 * attribute, so the translation units need no special -m flags and one library runs everywhere;
 * bitnet-i2s.c picks a path at run time (ref: shared/DESIGN.md "one binary"; the public contract
 * is bitnet-kernels.h).
 */
#ifndef BITNET_I2S_INTERNAL_H
#define BITNET_I2S_INTERNAL_H

#include <stdint.h>

#include "bitnet-kernels.h"

/* --- which paths this compiler can build ------------------------------------------------------
 * x86: GCC >= 8 or clang >= 7 know the AVX-512 VNNI intrinsics and `target` attributes; MSVC and
 * older compilers get the scalar path only. aarch64: NEON is part of the base ISA. */
#if (defined(__x86_64__) || defined(__i386__)) && !defined(BITNET_NO_SIMD) && \
    ((defined(__clang__) && __clang_major__ >= 7) || (!defined(__clang__) && __GNUC__ >= 8))
#define BITNET_HAVE_X86 1
#endif

/* The AVX-512 paths are chosen at run time on CPUs that have them, except in a build for AVX2
 * CPUs (setup_env.py --cpu avx2 defines BITNET_NO_AVX512): that build runs on an AVX-512 machine
 * exactly what it runs on an AVX2-only one, the ternary and F16 kernels included. */
#if defined(BITNET_HAVE_X86) && !defined(BITNET_NO_AVX512)
#define BITNET_HAVE_AVX512 1
#endif

#if defined(__aarch64__) && defined(__ARM_NEON) && !defined(BITNET_NO_SIMD) && defined(__GNUC__)
#define BITNET_HAVE_NEON 1
/* The dot-product path is built when the compiler targets it already, or when it can compile
 * one function for it: GCC >= 10 with `target("arch=armv8.2-a+dotprod")` (GCC 12's arm_neon.h
 * defines vdotq_s32 under that arch, so "+dotprod" alone fails to inline it), clang >= 16 with
 * `target("dotprod")` (older clang headers declare vdotq_s32 only under __ARM_FEATURE_DOTPROD).
 * It then runs only if the CPU reports the instructions (hwcaps, checked in bitnet-i2s.c). */
#if defined(__ARM_FEATURE_DOTPROD)
#define BITNET_HAVE_NEON_DOTPROD 1
#define BITNET_TARGET_DOTPROD
#elif defined(__clang__) && __clang_major__ >= 16
#define BITNET_HAVE_NEON_DOTPROD 1
#define BITNET_TARGET_DOTPROD __attribute__((target("dotprod")))
#elif !defined(__clang__) && __GNUC__ >= 10
#define BITNET_HAVE_NEON_DOTPROD 1
#define BITNET_TARGET_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#endif
#endif

/* Shapes every path may assume (checked once in the dispatcher): k % 128 == 0, k > 0, nr > 0,
 * nt > 0. nb = k / 128 blocks per row. */
typedef void (*bitnet_mul_mat_fn)(int64_t k, int64_t nr, int64_t nt, const uint8_t *w,
                                  float w_scale, const bitnet_block_i8s *a, float *y,
                                  int64_t y_stride);
typedef void (*bitnet_quantize_fn)(const float *x, bitnet_block_i8s *y, int64_t k);

/* --- the per-path entry points ------------------------------------------------------------- */
void bitnet_i2s_mul_mat_scalar(int64_t k, int64_t nr, int64_t nt, const uint8_t *w, float w_scale,
                               const bitnet_block_i8s *a, float *y, int64_t y_stride);
void bitnet_quantize_row_i8s_scalar(const float *x, bitnet_block_i8s *y, int64_t k);

#ifdef BITNET_HAVE_X86
/* CPUID leaf 7 feature bits that __builtin_cpu_supports names only in recent compilers
 * (ECX bit 8 = GFNI, bit 11 = AVX512_VNNI). */
int bitnet_cpuid7_ecx(int bit);
void bitnet_i2s_mul_mat_avx2(int64_t k, int64_t nr, int64_t nt, const uint8_t *w, float w_scale,
                             const bitnet_block_i8s *a, float *y, int64_t y_stride);
void bitnet_quantize_row_i8s_avx2(const float *x, bitnet_block_i8s *y, int64_t k);
void bitnet_i2s_mul_mat_avx512vnni(int64_t k, int64_t nr, int64_t nt, const uint8_t *w,
                                   float w_scale, const bitnet_block_i8s *a, float *y,
                                   int64_t y_stride);
void bitnet_i2s_mul_mat_avx512vnni_shift(int64_t k, int64_t nr, int64_t nt, const uint8_t *w,
                                         float w_scale, const bitnet_block_i8s *a, float *y,
                                         int64_t y_stride);
void bitnet_quantize_row_i8s_avx512(const float *x, bitnet_block_i8s *y, int64_t k);
#endif

#ifdef BITNET_HAVE_NEON
void bitnet_i2s_mul_mat_neon(int64_t k, int64_t nr, int64_t nt, const uint8_t *w, float w_scale,
                             const bitnet_block_i8s *a, float *y, int64_t y_stride);
#ifdef BITNET_HAVE_NEON_DOTPROD
void bitnet_i2s_mul_mat_neon_dotprod(int64_t k, int64_t nr, int64_t nt, const uint8_t *w,
                                     float w_scale, const bitnet_block_i8s *a, float *y,
                                     int64_t y_stride);
#endif
#endif

/* --- the tiled driver shared by the x86 paths (bitnet-i2s-tiled.c) --------------------------
 * A path supplies micro-kernels ("tiles") and a vector epilogue; the driver walks the matrix:
 *   for each band of BITNET_ROW_BAND rows (its weights stay in L2 while the token groups pass)
 *     for each group of up to max_tokens tokens
 *       for each chunk of blocks whose activations fit BITNET_ACT_BUF (usually one chunk)
 *         copy the group's activations into an aligned buffer laid out [block][token][128]
 *         (the I8_S blocks are 136 bytes apart, so most vector loads would straddle lines)
 *         run the tiles over the band, adding into int32 partial sums
 *       epilogue of every tile: y = (raw − Σq) / d · w_scale
 * The buffer and the partial sums live on the stack: about 49 KB per call (fine for pthread and
 * OpenMP workers, whose stacks are megabytes).
 * ref: fast-kernels §2 "Reuse unpacked weights across tokens", §3 (tiles), §4 (tails). */
#define BITNET_ROW_BAND 256  /* rows per band */
#define BITNET_ACT_BUF 32768 /* bytes of the aligned activation buffer (in L1) */

/* raw[r*T + t] (+)= Σ code·q over blocks [0, nb) for the tile's R rows × T tokens.
 * w: the tile's row 0 at the chunk's first block (row r at w + r*row_bytes); act: the buffer,
 * [block][T][128], 64-byte aligned; accumulate: add to raw instead of overwriting it. */
typedef void (*bitnet_tile_fn)(int64_t nb, const uint8_t *w, int64_t row_bytes,
                               const int8_t *act, int32_t *raw, int accumulate);
/* y[t*y_stride + r] = (float)(raw[r*T+t] − act_sum[lane]) / d[lane] · w_scale for r < R, t < T;
 * act_sum and d are laid out like raw (lane i → token i % T). */
typedef void (*bitnet_epilogue_fn)(const int32_t *raw, const int32_t *act_sum, const float *d,
                                   float w_scale, int R, int T, float *y, int64_t y_stride);
typedef struct {
    int max_tokens;             /* tokens per multi-token tile (≤ 8), R·T ≤ lanes */
    int gemv_rows[3];           /* one-token tiles: rows, largest first, last = 1 */
    bitnet_tile_fn gemv[3];     /* … and their functions */
    int gemm_rows;              /* rows of the multi-token tiles (1 or 2) */
    bitnet_tile_fn gemm[2][8];  /* [rows − 1][tokens − 1] for tokens ≥ 2 */
    bitnet_epilogue_fn epilogue;
} bitnet_tiled_kernel;

void bitnet_i2s_mul_mat_tiled(const bitnet_tiled_kernel *kern, int64_t k, int64_t nr, int64_t nt,
                              const uint8_t *w, float w_scale, const bitnet_block_i8s *a,
                              float *y, int64_t y_stride);

/* --- shared helpers ------------------------------------------------------------------------ */

/* Σ q over the token's blocks: the correction term of the offset trick Σ(c−1)q = Σcq − Σq
 * (ref: spec §2.5, fast-kernels §2 "Offset trick"). */
static inline int32_t bitnet_token_sum(const bitnet_block_i8s *a, int64_t nb) {
    int32_t s = 0;
    for (int64_t b = 0; b < nb; b++) s += a[b].sum;
    return s;
}

/* The output formula of the contract, float32 ops in exactly this order (ref: spec §2.5, fork
 * mul_mat `(raw − act_sum) / act_scale · w_scale`). Every path ends here, so all agree bit for
 * bit. */
static inline float bitnet_i2s_output(int32_t raw, int32_t act_sum, float d, float w_scale) {
    return (float)(raw - act_sum) / d * w_scale;
}

#endif /* BITNET_I2S_INTERNAL_H */
