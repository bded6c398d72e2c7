// ggml-cpu glue for BitNet's ternary I2_S weights.
//
// setup_env.py copies this file into the pinned llama.cpp tree at ggml/src/ggml-cpu/bitnet/, next
// to the kernels of kernels/ (bitnet-kernels.h); patch 0002 compiles the folder into ggml-cpu and
// calls ggml_compute_forward_mul_mat_i2s from ggml_compute_forward_mul_mat.
#pragma once

#include "ggml.h"

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

struct ggml_compute_params;

// dst = src0 (I2_S, [K, M, ne02, ne03]) x src1 (F32, [K, N, ne12, ne13]) -> F32 [M, N, ne12, ne13].
// Needs params->wdata of ggml_row_size(GGML_TYPE_I8_S, ggml_nelements(src1)) bytes, which
// ggml_graph_plan reserves because I2_S's vec_dot_type is I8_S.
void ggml_compute_forward_mul_mat_i2s(const struct ggml_compute_params * params, struct ggml_tensor * dst);

// dst = src0 (F16, 2-D weight [K, M]) x src1 (F32, [K, N]) for N <= 4 tokens (the tied F16 output head in
// decode) through bitnet_f16_mul_mat, rows split evenly across threads. Returns false, having done nothing,
// when the node is not of that shape or the CPU has no SIMD path for it (every thread gets the same answer);
// ggml's own F16 path then runs. Needs no work buffer.
bool ggml_compute_forward_mul_mat_f16_bitnet(const struct ggml_compute_params * params, struct ggml_tensor * dst);

#ifdef __cplusplus
}
#endif
