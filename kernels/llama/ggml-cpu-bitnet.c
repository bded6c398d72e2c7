// ggml-cpu glue for BitNet's ternary I2_S weights: the mul_mat of one graph node, run by every
// thread of the ggml thread pool. The arithmetic lives in kernels/ (bitnet-kernels.h); this file
// only lays out the work buffer, splits the work and reads the weight scale.
//
// ref: shared/spec/bitnet-formats.md §2.2 (scale tail), §2.4 (I8_S activations), §2.5 (correction).

#include "ggml-cpu-bitnet.h"

#include "bitnet-kernels.h"
#include "ggml-cpu-impl.h"
#include "ggml-impl.h"

#include <assert.h>
#include <string.h>

// ggml.c declares I8_S as 128 elements in 136 bytes and I2_S as 128 elements in 32 bytes, so that
// ggml_row_size() gives the sizes the kernels use; keep the three in step.
static_assert(sizeof(bitnet_block_i8s) == 136, "I8_S type_size in ggml.c must be sizeof(bitnet_block_i8s)");
static_assert(BITNET_QK_I2S == 128, "I2_S/I8_S blck_size in ggml.c must be BITNET_QK_I2S");

// Weight rows per thread are rounded up to this, so that threads write whole cache lines of dst.
#define BITNET_ROW_GRAIN 16

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

    // 1. int8-quantize every activation row (token) into the work buffer, rows dealt round robin.
    //    A row cannot be split: its scale d = 127/max|x| spans the whole row (spec §2.4).
    const int64_t n_tok = ne11 * ne12 * ne13;
    GGML_ASSERT(params->wsize >= (size_t) n_tok * a_row);
    for (int64_t it = ith; it < n_tok; it += nth) {
        const int64_t i13 = it / (ne11 * ne12);
        const int64_t i12 = (it / ne11) % ne12;
        const int64_t i11 = it % ne11;
        const float * x = (const float *) ((const char *) src1->data + i11*nb11 + i12*nb12 + i13*nb13);
        bitnet_quantize_row_i8s(x, (bitnet_block_i8s *) (wdata + it * a_row), K);
    }

    ggml_barrier(params->threadpool);

    // 2. the per-tensor weight scale: f32 at byte n/4, right after the codes (spec §2.2)
    float w_scale;
    memcpy(&w_scale, (const char *) src0->data + ggml_nelements(src0) / 4, sizeof(float));

    // 3. each thread takes a contiguous slice of weight rows, for every token
    const int64_t per = ((M + nth - 1) / nth + BITNET_ROW_GRAIN - 1) / BITNET_ROW_GRAIN * BITNET_ROW_GRAIN;
    const int64_t r0  = MIN(M, ith * per);
    const int64_t r1  = MIN(M, r0 + per);
    if (r0 >= r1) {
        return;
    }

    // src0 is broadcast over dims 2 and 3 of src1, as in ggml_compute_forward_mul_mat
    const int64_t bc2 = ne12 / ne02;
    const int64_t bc3 = ne13 / ne03;

    for (int64_t i13 = 0; i13 < ne13; i13++) {
        for (int64_t i12 = 0; i12 < ne12; i12++) {
            const uint8_t * w = (const uint8_t *) src0->data + (i12/bc2)*nb02 + (i13/bc3)*nb03 + r0*nb01;
            const bitnet_block_i8s * a = (const bitnet_block_i8s *) (wdata + (i13*ne12 + i12)*ne11*a_row);
            float * y = (float *) ((char *) dst->data + i12*nb2 + i13*nb3) + r0;
            bitnet_i2s_mul_mat(K, r1 - r0, ne11, w, w_scale, a, y, (int64_t) (nb1 / sizeof(float)));
        }
    }
}
