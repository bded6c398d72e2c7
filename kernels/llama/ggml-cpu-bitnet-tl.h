// ggml-cpu glue for BitNet's TL1/TL2 lookup-table weights (patch 0007).
//
// setup_env.py copies this file into ggml/src/ggml-cpu/bitnet/ with the kernels (bitnet-tl.[ch])
// and the generated shape table (ggml-cpu-bitnet-tl-shapes.h). ggml_compute_forward routes
// MUL_MAT with a TL src0 here; ggml_graph_plan asks ggml_bitnet_tl_wsize for the work buffer.
#pragma once

#include "ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ggml_compute_params;

// 1 when t is a TL1 or TL2 tensor.
int ggml_bitnet_tl_is_tl(const struct ggml_tensor * t);
// Work buffer bytes of dst = src0 (TL) x src1 (F32): per token its d, int8 activations and LUT.
size_t ggml_bitnet_tl_wsize(const struct ggml_tensor * src0, const struct ggml_tensor * src1);
// dst = src0 (TL1/TL2, [K, M]) x src1 (F32, [K, N, ne12, ne13]) -> F32 [M, N, ne12, ne13].
// Aborts with a "rebuild with" message when (type, M, K) is not in the build's shape table.
void ggml_compute_forward_mul_mat_tl(const struct ggml_compute_params * params, struct ggml_tensor * dst);

#ifdef __cplusplus
}
#endif
