/*
 * bitnet-kernels.h — I2_S ternary matrix kernels for CPUs (public interface).
 *
 * Plain C11 with no ggml dependency: compiled into llama.cpp by our patch series and, on its own,
 * into a small shared library for the tests (tools/kernels_lib.py, kernels/CMakeLists.txt).
 *
 * One binary is correct on every CPU: each SIMD path is compiled with a target attribute and the
 * fastest one the running CPU supports is picked at the first call (x86: __builtin_cpu_supports;
 * aarch64: NEON always, dot-product instructions when the compiler or the kernel's hwcaps say so).
 *
 * Formats (ref: shared/spec/bitnet-formats.md):
 *   - weights, I2_S (§2.1): code = value + 1 in 0..2, 128 elements per 32-byte block; byte j of a
 *     block holds elements j, j+32, j+64, j+96 in bits 7:6, 5:4, 3:2, 1:0 (MSB first). Row r of a
 *     K-column matrix starts at byte r*K/4. The same layout on x86 and ARM.
 *   - activations, I8_S (§2.4): per-token int8 with one scale d = 127 / max(max|x|, 1e-5).
 *   - output (§2.5): y = (raw - act_sum) / d * w_scale, raw = Σ code_i * q_i.
 */
#ifndef BITNET_KERNELS_H
#define BITNET_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BITNET_QK_I2S 128                      /* I2_S: 128 elements -> 32 bytes, MSB first (spec §2.1) */
typedef struct { int8_t qs[128]; float d; int32_t sum; } bitnet_block_i8s;  /* 136 bytes */
/* per-token int8 activations (spec §2.4): d = 127 / max(max|x|, 1e-5) computed once per ROW (every block of
   the row stores the same d), q = clamp(round_half_even(x * d), -128, 127) in float32, sum = Σ q of the block */
void bitnet_quantize_row_i8s(const float *x, bitnet_block_i8s *y, int64_t k);   /* k % 128 == 0 */
/* y[t*y_stride + r] = (float)(Σ_i code_i*q_i - Σ_i q_i) / d_t * w_scale   (code = value+1 in 0..2),
   float32 ops in exactly that order, for rows r in [0,nr) and tokens t in [0,nt). w points at row 0
   (row r at w + r*k/4). a points at token 0's first block, token t at a + t*(k/128). */
void bitnet_i2s_mul_mat(int64_t k, int64_t nr, int64_t nt, const uint8_t *w, float w_scale,
                        const bitnet_block_i8s *a, float *y, int64_t y_stride);
const char *bitnet_kernel_name(void);        /* "scalar", "avx2", "avx512vnni", "neon", "neon-dotprod" */
int bitnet_set_kernel(const char *name);      /* force a path (tests); returns 0 if unavailable here */

/* --- F16 weights x F32 activations, few tokens (the tied F16 output head in decode) -------------
   Implemented in bitnet-f16.c (fast-kernels §1 "The head"). y[t*y_stride + r] = Σ_i f32(w[r*w_stride + i])
   * x[t*x_stride + i] for rows r in [0,nr), tokens t in [0,nt); strides in elements. The halves are
   widened exactly to f32 and the activations stay f32 (upstream ggml rounds them to f16 first), summed
   in f32 with FMA in a path-dependent order: NOT bit-exact across paths (relative error ~ k * 2^-24 of
   Σ|w·x|). Streams the weights once per 4 (AVX-512) / 2 (AVX2) tokens: meant for nt <= 4. */
void bitnet_f16_mul_mat(int64_t k, int64_t nr, int64_t nt, const uint16_t *w, int64_t w_stride,
                        const float *x, int64_t x_stride, float *y, int64_t y_stride);
float bitnet_f16_to_f32(uint16_t h);          /* exact IEEE half -> float (scalar) */
const char *bitnet_f16_kernel_name(void);    /* "avx512", "avx2" (F16C+FMA) or "scalar" */
int bitnet_f16_set_kernel(const char *name);  /* force a path (tests); 0 if unavailable; NULL/"auto" = best */

#ifdef __cplusplus
}
#endif

#endif /* BITNET_KERNELS_H */
