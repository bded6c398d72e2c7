/*
 * bitnet-tl-internal.h — what the TL kernel files share (not part of the public interface,
 * which is bitnet-tl.h).
 */
#ifndef BITNET_TL_INTERNAL_H
#define BITNET_TL_INTERNAL_H

#include <stdint.h>

#include "bitnet-tl.h"

/* Largest BM tile the kernels accept (default_tiling picks <= 256) and tokens per accumulator
 * chunk: the int32 accumulators of one chunk (8 x 1024 x 4 B = 32 KiB) live on the stack. */
#define BITNET_TL_MAX_BM 1024
#define BITNET_TL_NT_CHUNK 8

/* Adds the TL2 dot products of BM-tile i0 for nc tokens to acc[c*BM + row] (int32). */
typedef void (*bitnet_tl_tile_fn)(const bitnet_tl_tiling *t, int64_t i0, int64_t nc,
                                  const uint8_t *w, const int16_t *lut, int64_t lut_stride,
                                  int32_t *acc);

/* Per-token int8 activations, the contract of bitnet_tl_quantize_row (every path: same bits). */
typedef float (*bitnet_tl_quantize_fn)(const float *x, int8_t *q, int64_t k);
float bitnet_tl_quantize_row_scalar(const float *x, int8_t *q, int64_t k);

void bitnet_tl_write_out(const int32_t *acc, int64_t bm_tile, int64_t row0, int64_t nc,
                         const float *d, float w_scale, float *y, int64_t y_stride);

/* The AVX2 TL2 lookups and quantizer live in bitnet-tl-avx2.c (x86, selected at run time). */
#define BITNET_TL_AVX2_READY 1

#if (defined(__x86_64__) || defined(__i386__)) && !defined(BITNET_NO_SIMD) && \
    ((defined(__clang__) && __clang_major__ >= 7) || (!defined(__clang__) && __GNUC__ >= 8)) && \
    defined(BITNET_TL_AVX2_READY)
#define BITNET_TL_HAVE_AVX2 1
void bitnet_tl2_tile_avx2(const bitnet_tl_tiling *t, int64_t i0, int64_t nc, const uint8_t *w,
                          const int16_t *lut, int64_t lut_stride, int32_t *acc);
float bitnet_tl_quantize_row_avx2(const float *x, int8_t *q, int64_t k);
#endif

/* The AVX-512 TL2 lookups (`vpermb` + `vpdpbusd`: F/BW/VL/VBMI/VNNI, checked at run time) live
 * in bitnet-tl-avx512.c. The same compilers as AVX2: GCC >= 8 and clang >= 7 know the VBMI and
 * VNNI intrinsics and target attributes. */
#if defined(BITNET_TL_HAVE_AVX2) && !defined(BITNET_NO_AVX512) /* see bitnet-i2s-internal.h */
#define BITNET_TL_HAVE_AVX512 1
void bitnet_tl2_tile_avx512(const bitnet_tl_tiling *t, int64_t i0, int64_t nc,
                            const uint8_t *w, const int16_t *lut, int64_t lut_stride,
                            int32_t *acc);
#endif

/* The NEON TL1 and TL2 lookups live in bitnet-tl-neon.c (aarch64: NEON is baseline, always
 * usable). The LUT byte planes assume little-endian lanes, so aarch64_be keeps the scalar path;
 * GCC or Clang for always_inline and `#pragma GCC unroll`. */
#if defined(__aarch64__) && defined(__ARM_NEON) && !defined(__ARM_BIG_ENDIAN) && \
    !defined(BITNET_NO_SIMD) && defined(__GNUC__)
#define BITNET_TL_HAVE_NEON 1
void bitnet_tl1_tile_neon(const bitnet_tl_tiling *t, int64_t i0, int64_t nc, const uint8_t *w,
                          const int16_t *lut, int64_t lut_stride, int32_t *acc);
void bitnet_tl2_tile_neon(const bitnet_tl_tiling *t, int64_t i0, int64_t nc, const uint8_t *w,
                          const int16_t *lut, int64_t lut_stride, int32_t *acc);
#endif

#endif /* BITNET_TL_INTERNAL_H */
