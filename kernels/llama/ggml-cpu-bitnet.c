// ggml-cpu glue for BitNet's ternary I2_S weights: the mul_mat of one graph node, run by every
// thread of the ggml thread pool. The arithmetic lives in kernels/ (bitnet-kernels.h); this file
// only lays out the work buffer, splits the work and reads the weight scale.
//
// ref: shared/spec/bitnet-formats.md §2.2 (scale tail), §2.4 (I8_S activations), §2.5 (correction).

#include "ggml-cpu-bitnet.h"

#include "bitnet-kernels.h"
#include "ggml-cpu.h"
#include "ggml-cpu-impl.h"
#include "ggml-impl.h"

#include <assert.h>
#include <stdbool.h>
#include <string.h>

// ggml.c declares I8_S as 128 elements in 136 bytes and I2_S as 128 elements in 32 bytes, so that
// ggml_row_size() gives the sizes the kernels use; keep the three in step.
static_assert(sizeof(bitnet_block_i8s) == 136, "I8_S type_size in ggml.c must be sizeof(bitnet_block_i8s)");
static_assert(BITNET_QK_I2S == 128, "I2_S/I8_S blck_size in ggml.c must be BITNET_QK_I2S");

// Weight rows per thread are rounded up to this, so that threads write whole cache lines of dst.
#define BITNET_ROW_GRAIN 16

// Activation rows quantized on each thread's own stack instead of the shared work buffer: up to 16 KB
// (one token up to K = 16000; four tokens of K = 2560).
#define BITNET_LOCAL_ACTS 16384

// Token `it` (flattened over dims 1..3) of src1, int8-quantized into y.
static void quantize_token(const struct ggml_tensor * src1, int64_t it, int64_t K, bitnet_block_i8s * y) {
    const int64_t ne11 = src1->ne[1];
    const int64_t ne12 = src1->ne[2];
    const int64_t i13  = it / (ne11 * ne12);
    const int64_t i12  = (it / ne11) % ne12;
    const int64_t i11  = it % ne11;
    const float * x = (const float *) ((const char *) src1->data + i11*src1->nb[1] + i12*src1->nb[2] + i13*src1->nb[3]);
    bitnet_quantize_row_i8s(x, y, K);
}

void ggml_compute_forward_mul_mat_i2s(const struct ggml_compute_params * params, struct ggml_tensor * dst) {
    const struct ggml_tensor * src0 = dst->src[0];  // weights, I2_S
    const struct ggml_tensor * src1 = dst->src[1];  // activations, F32

    GGML_TENSOR_BINARY_OP_LOCALS

    const int ith = params->ith;
    const int nth = params->nth;

    GGML_ASSERT(src0->type == GGML_TYPE_I2_S);
    GGML_ASSERT(src1->type == GGML_TYPE_F32);
    GGML_ASSERT(dst->type == GGML_TYPE_F32);
    GGML_ASSERT(ne00 % BITNET_QK_I2S == 0);
    GGML_ASSERT(ggml_is_contiguous(src0));  // the scale tail sits after all rows
    GGML_ASSERT(nb10 == sizeof(float));
    GGML_ASSERT(nb0 == sizeof(float));
    GGML_ASSERT(ne0 == ne01 && ne1 == ne11 && ne2 == ne12 && ne3 == ne13);
    GGML_ASSERT(ne12 % ne02 == 0 && ne13 % ne03 == 0);

    const int64_t K     = ne00;
    const int64_t M     = ne01;
    const size_t  a_row = (size_t) (K / BITNET_QK_I2S) * sizeof(bitnet_block_i8s);  // one token
    char * const  wdata = (char *) params->wdata;

    // each thread will take a contiguous slice of weight rows, whole cache lines of dst
    const int64_t per = ((M + nth - 1) / nth + BITNET_ROW_GRAIN - 1) / BITNET_ROW_GRAIN * BITNET_ROW_GRAIN;
    const int64_t r0  = MIN(M, ith * per);
    const int64_t r1  = MIN(M, r0 + per);

    // 1. int8-quantize every activation row (token). A row cannot be split: its scale d = 127/max|x| spans
    //    the whole row (spec §2.4).
    //    - a few tokens (decode): every thread quantizes all of them into its own stack buffer. That costs
    //      about a microsecond and saves the barrier, and the wait for one thread's quantization, of each
    //      of the 210 ternary products of a 2B-4T decode step; the results are the same bytes.
    //    - more tokens: rows dealt round robin into the work buffer, then one barrier.
    const int64_t n_tok = ne11 * ne12 * ne13;
    _Alignas(64) char local[BITNET_LOCAL_ACTS];
    char * acts = wdata;
    if ((size_t) n_tok * a_row <= sizeof local) {
        if (r0 >= r1) {
            return;  // no rows here, and nobody waits for this thread's activations
        }
        acts = local;
        for (int64_t it = 0; it < n_tok; it++) {
            quantize_token(src1, it, K, (bitnet_block_i8s *) (acts + it * a_row));
        }
    } else {
        GGML_ASSERT(params->wsize >= (size_t) n_tok * a_row);
        for (int64_t it = ith; it < n_tok; it += nth) {
            quantize_token(src1, it, K, (bitnet_block_i8s *) (acts + it * a_row));
        }
        ggml_barrier(params->threadpool);
    }

    // 2. the per-tensor weight scale: f32 at byte n/4, right after the codes (spec §2.2)
    float w_scale;
    memcpy(&w_scale, (const char *) src0->data + ggml_nelements(src0) / 4, sizeof(float));

    // 3. each thread takes its contiguous slice of weight rows (r0, r1 above), for every token
    if (r0 >= r1) {
        return;
    }

    // src0 is broadcast over dims 2 and 3 of src1, as in ggml_compute_forward_mul_mat
    const int64_t bc2 = ne12 / ne02;
    const int64_t bc3 = ne13 / ne03;

    for (int64_t i13 = 0; i13 < ne13; i13++) {
        for (int64_t i12 = 0; i12 < ne12; i12++) {
            const uint8_t * w = (const uint8_t *) src0->data + (i12/bc2)*nb02 + (i13/bc3)*nb03 + r0*nb01;
            const bitnet_block_i8s * a = (const bitnet_block_i8s *) (acts + (i13*ne12 + i12)*ne11*a_row);
            float * y = (float *) ((char *) dst->data + i12*nb2 + i13*nb3) + r0;
            bitnet_i2s_mul_mat(K, r1 - r0, ne11, w, w_scale, a, y, (int64_t) (nb1 / sizeof(float)));
        }
    }
}

// --- F16 x F32 for few tokens: the tied output head -------------------------------------------------
//
// Upstream converts src1 to F16 and calls ggml_vec_dot_f16 per (row, token) in chunks of 16 rows: about
// 8.7 GB/s on one core for the 657 MB head of the 2B-4T model, against 12.5 GB/s for a plain read.
// bitnet_f16_mul_mat streams the rows once per 4 tokens at read speed.
// Rounding: the kernel takes f32 activations, but this glue first rounds src1 to F16 exactly as
// upstream does (ggml_cpu_fp32_to_fp16), so the head gives the same logits, up to the f32 summation
// order, as upstream's batched path (llamafile's F16 x F16 tinyBLAS, which keeps the batches of more
// than 4 tokens): single-token and batched evaluation agree (tests/test_native.py).
// ref: shared/spec/fast-kernels.md §1 (the head is 56% of the bytes of a decode step).

#define BITNET_F16_MAX_TOKENS 4
#define BITNET_F16_MAX_ACTS   16384  // f32 activations rounded on each thread's stack (64 KB)

bool ggml_compute_forward_mul_mat_f16_bitnet(const struct ggml_compute_params * params, struct ggml_tensor * dst) {
    const struct ggml_tensor * src0 = dst->src[0];
    const struct ggml_tensor * src1 = dst->src[1];

    if (src0->type != GGML_TYPE_F16 || src1->type != GGML_TYPE_F32 || dst->type != GGML_TYPE_F32) {
        return false;
    }

    GGML_TENSOR_BINARY_OP_LOCALS

    // a plain weight matrix times a few contiguous activation rows; everything else stays upstream's
    if (ne11 > BITNET_F16_MAX_TOKENS || ne02 != 1 || ne03 != 1 || ne12 != 1 || ne13 != 1 ||
        nb00 != sizeof(ggml_fp16_t) || nb01 != ne00 * sizeof(ggml_fp16_t) ||
        nb10 != sizeof(float) || nb11 % sizeof(float) != 0 || nb0 != sizeof(float) || nb1 % sizeof(float) != 0 ||
        ne0 != ne01 || ne1 != ne11 || ne10 * ne11 > BITNET_F16_MAX_ACTS) {
        return false;
    }
    // fixed per CPU: threads meeting the first call together repeat the same answer; atomic
    // (relaxed) loads and stores make that race-free, as in the kernels (ThreadSanitizer)
    static int cached_simd = -1;
    int have_simd = __atomic_load_n(&cached_simd, __ATOMIC_RELAXED);
    if (have_simd < 0) {
        have_simd = strcmp(bitnet_f16_kernel_name(), "scalar") != 0;
        __atomic_store_n(&cached_simd, have_simd, __ATOMIC_RELAXED);
    }
    if (!have_simd) {
        return false;
    }

    const int ith = params->ith;
    const int nth = params->nth;

    // each thread streams one contiguous slice of rows (whole cache lines of dst)
    const int64_t M   = ne01;
    const int64_t per = ((M + nth - 1) / nth + BITNET_ROW_GRAIN - 1) / BITNET_ROW_GRAIN * BITNET_ROW_GRAIN;
    const int64_t r0  = MIN(M, ith * per);
    const int64_t r1  = MIN(M, r0 + per);
    if (r0 < r1) {
        // src1 rounded to F16 precision, as upstream's from_float would (a few µs; no barrier needed)
        float       x[BITNET_F16_MAX_ACTS];
        ggml_fp16_t h[BITNET_F16_MAX_ACTS];
        for (int64_t t = 0; t < ne11; t++) {
            ggml_cpu_fp32_to_fp16((const float *) ((const char *) src1->data + t*nb11), h + t*ne10, ne10);
        }
        ggml_cpu_fp16_to_fp32(h, x, ne10 * ne11);
        const uint16_t * w = (const uint16_t *) ((const char *) src0->data + r0*nb01);
        bitnet_f16_mul_mat(ne00, r1 - r0, ne11, w, (int64_t) (nb01 / sizeof(ggml_fp16_t)),
                           x, ne10, (float *) dst->data + r0, (int64_t) (nb1 / sizeof(float)));
    }
    return true;
}
