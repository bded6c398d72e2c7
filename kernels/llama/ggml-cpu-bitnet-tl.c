// ggml-cpu glue for BitNet's TL1/TL2 weights: the mul_mat of one graph node, run by every thread
// of the ggml pool. The arithmetic lives in kernels/bitnet-tl.c. A weight's tiles are the ones
// recorded in its tail (bitnet_tl_tail_tiling; the converter packed with them), and the build
// serves a (type, M, K, tiles) only if the generated table ggml-cpu-bitnet-tl-shapes.h
// (`bitnet codegen`) lists it. A tensor without a record (a file from before the record) was
// packed with tools/quants/tiling.py default_tiling: the entry the table flags is_default.
//
// ref: bitnet docs/formats.md (TL1/TL2 layouts, scale tail), kernels/bitnet-tl.h (contract).

#include "ggml-cpu-bitnet-tl.h"

#include "bitnet-tl.h"
#include "ggml-cpu-bitnet-tl-shapes.h"
#include "ggml-cpu.h"
#include "ggml-cpu-impl.h"
#include "ggml-impl.h"

#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define TL_ALIGN 64
#define TL_PAD(x) (((x) + TL_ALIGN - 1) / TL_ALIGN * TL_ALIGN)

int ggml_bitnet_tl_is_tl(const struct ggml_tensor * t) {
    return t != NULL && (t->type == GGML_TYPE_TL1 || t->type == GGML_TYPE_TL2);
}

// A file the build cannot run (corrupt tile record, shape not generated) is the user's error, not
// a bug: every pool thread meets it at once, so one of them prints the message and the process
// exits 1. Not GGML_ABORT: its backtrace forks a debugger per aborting thread, and two attaching
// at once can hang the process instead of ending it.
static _Noreturn void tl_fail(const char * fmt, ...) {
    static atomic_flag reported = ATOMIC_FLAG_INIT;
    if (!atomic_flag_test_and_set(&reported)) {
        va_list args;
        va_start(args, fmt);
        fputs("error: ", stderr);
        vfprintf(stderr, fmt, args);
        fputc('\n', stderr);
        va_end(args);
        fflush(stderr);
        _exit(1);
    }
    for (;;) {
        pause(); // the reporting thread ends the process
    }
}

static int tl_code(enum ggml_type type) {
    return type == GGML_TYPE_TL1 ? BITNET_TL1 : BITNET_TL2;
}

// The table entry of a (type, M, K) weight packed with tiles `rec` (NULL: not recorded, so the
// entry flagged is_default), or NULL when this build was not generated for them.
static const bitnet_tl_tiling * tl_find(int code, int64_t M, int64_t K,
                                        const bitnet_tl_tiling * rec) {
    for (int i = 0; i < BITNET_TL_N_SHAPES; i++) {
        const bitnet_tl_shape * s = &BITNET_TL_SHAPES[i];
        if (s->type != code || s->t.M != M || s->t.K != K) {
            continue;
        }
        const int same = rec && s->t.BM == rec->BM && s->t.BK == rec->BK && s->t.bm == rec->bm;
        if (rec ? same : s->is_default) {
            return &s->t;
        }
    }
    return NULL;
}

// The longest LUT (int16 entries per token) of any entry of (type, M, K), 0 when none: the work
// buffer is sized at graph-plan time without reading the weight's data (TL2's LUT length
// depends on BK through three_k / two_k, TL1's only on K).
static int64_t tl_max_lut_len(int code, int64_t M, int64_t K) {
    int64_t n = 0;
    for (int i = 0; i < BITNET_TL_N_SHAPES; i++) {
        const bitnet_tl_shape * s = &BITNET_TL_SHAPES[i];
        if (s->type == code && s->t.M == M && s->t.K == K) {
            const int64_t len = bitnet_tl_lut_len(code, &s->t);
            n = len > n ? len : n;
        }
    }
    return n;
}

// Work buffer layout: [d: n_tok floats][q: n_tok x pad(K) int8][LUT: n_tok x lut_len int16].
static size_t tl_lut_offset(int64_t n_tok, int64_t K) {
    return TL_PAD((size_t) n_tok * sizeof(float)) + (size_t) n_tok * TL_PAD((size_t) K);
}

// Load-time check of a ternary weight (I2_S, TL1, TL2) against its shape (patch 0008 calls it
// from llama's loader for every tensor it loads, with the tensor's bytes): the kernels trust the
// scale tail and the tile record, so a file that lies about them is refused here, by name, and
// never reaches a kernel. ggml_nbytes (patches 0001/0007) already sized the tensor from its shape
// and gguf checked that many bytes lie inside the file.
int ggml_bitnet_check_weight(const struct ggml_tensor * t, const void * data, char * msg, size_t msg_size) {
    if (t->type != GGML_TYPE_I2_S && !ggml_bitnet_tl_is_tl(t)) {
        return 0;
    }
    const char * type = ggml_type_name(t->type);
    const int64_t K = t->ne[0], M = t->ne[1];
    float scale;
    if (t->type == GGML_TYPE_I2_S) {
        // the f32 scale sits right after the n/4 code bytes (spec §2.2)
        memcpy(&scale, (const char *) data + ggml_nelements(t) / 4, sizeof scale);
    } else {
        const int code = tl_code(t->type);
        if (t->ne[2] != 1 || t->ne[3] != 1) {
            snprintf(msg, msg_size, "%s tensor '%s' has %lld x %lld matrices; a TL tensor is "
                     "one (M, K) matrix", type, t->name, (long long) t->ne[2], (long long) t->ne[3]);
            return 1;
        }
        if ((size_t) bitnet_tl_nbytes(code, M, K) != ggml_nbytes(t)) {
            snprintf(msg, msg_size, "%s tensor '%s' of shape (M = %lld, K = %lld) cannot be laid "
                     "out in %s tiles", type, t->name, (long long) M, (long long) K, type);
            return 1;
        }
        bitnet_tl_tiling rec;
        const int recorded = bitnet_tl_tail_tiling(code, (const uint8_t *) data, M, K, &rec);
        if (recorded < 0) {
            snprintf(msg, msg_size, "%s tensor '%s' of shape (M = %lld, K = %lld) records tiles "
                     "(BM %d, BK %d, bm %d) that cannot tile it", type, t->name, (long long) M,
                     (long long) K, (int) rec.BM, (int) rec.BK, (int) rec.bm);
            return 1;
        }
        if (tl_find(code, M, K, recorded ? &rec : NULL) == NULL) {
            char tiles[96];
            if (recorded) {
                snprintf(tiles, sizeof tiles, "tiles (BM %d, BK %d, bm %d)", (int) rec.BM,
                         (int) rec.BK, (int) rec.bm);
            } else {
                snprintf(tiles, sizeof tiles, "default tiles (none recorded)");
            }
            snprintf(msg, msg_size, "%s tensor '%s' has shape (M = %lld, K = %lld) and %s that "
                     "this build has no TL kernel for (shape set %s); rebuild with: python "
                     "setup_env.py --tl-shapes MODEL (or convert with --outtype i2_s)", type,
                     t->name, (long long) M, (long long) K, tiles, BITNET_TL_SHAPES_DIGEST);
            return 1;
        }
        scale = bitnet_tl_scale(code, (const uint8_t *) data, M, K);
    }
    if (!isfinite(scale)) {
        snprintf(msg, msg_size, "%s tensor '%s' has a non-finite scale (%g) in its tail", type,
                 t->name, (double) scale);
        return 1;
    }
    return 0;
}

size_t ggml_bitnet_tl_wsize(const struct ggml_tensor * src0, const struct ggml_tensor * src1) {
    const int64_t lut_len = tl_max_lut_len(tl_code(src0->type), src0->ne[1], src0->ne[0]);
    if (lut_len == 0) {
        return 0;  // refused with a clear message when the node runs
    }
    const int64_t n_tok = src1->ne[1] * src1->ne[2] * src1->ne[3];
    return tl_lut_offset(n_tok, src0->ne[0]) + (size_t) n_tok * (size_t) lut_len * sizeof(int16_t);
}

void ggml_compute_forward_mul_mat_tl(const struct ggml_compute_params * params, struct ggml_tensor * dst) {
    const struct ggml_tensor * src0 = dst->src[0];  // weights, TL1/TL2
    const struct ggml_tensor * src1 = dst->src[1];  // activations, F32

    GGML_TENSOR_BINARY_OP_LOCALS

    const int ith = params->ith;
    const int nth = params->nth;
    const int type = tl_code(src0->type);

    GGML_ASSERT(src1->type == GGML_TYPE_F32);
    GGML_ASSERT(dst->type == GGML_TYPE_F32);
    GGML_ASSERT(ne02 == 1 && ne03 == 1);   // a TL tensor is one tiled matrix
    GGML_ASSERT(ggml_is_contiguous(src0)); // tiles and the scale tail span the whole tensor
    GGML_ASSERT(nb10 == sizeof(float));
    GGML_ASSERT(nb0 == sizeof(float));
    GGML_ASSERT(ne0 == ne01 && ne1 == ne11 && ne2 == ne12 && ne3 == ne13);

    // 0. the tiles the weight was packed with (its tail, within ggml_nbytes) and their entry
    bitnet_tl_tiling rec;
    const uint8_t * w = (const uint8_t *) src0->data;
    const int recorded = bitnet_tl_tail_tiling(type, w, ne01, ne00, &rec);
    if (recorded < 0) {
        tl_fail("bitnet: %s weight '%s' of shape (M = %lld, K = %lld) records tiles (BM %d, "
                   "BK %d, bm %d) that cannot tile it: the file is corrupt; convert the model "
                   "again",
                   ggml_type_name(src0->type), src0->name, (long long) ne01, (long long) ne00,
                   (int) rec.BM, (int) rec.BK, (int) rec.bm);
    }
    const bitnet_tl_tiling * t = tl_find(type, ne01, ne00, recorded ? &rec : NULL);
    if (t == NULL) {
        char tiles[96];
        if (recorded) {
            snprintf(tiles, sizeof tiles, "tiles (BM %d, BK %d, bm %d)",
                     (int) rec.BM, (int) rec.BK, (int) rec.bm);
        } else {
            snprintf(tiles, sizeof tiles, "default tiles (none recorded)");
        }
        tl_fail("bitnet: %s weight '%s' has shape (M = %lld, K = %lld) and %s, which this build "
                   "has no TL kernel table entry for (shape set %s); rebuild with: python "
                   "setup_env.py --tl-shapes MODEL (or convert with --outtype i2_s)",
                   ggml_type_name(src0->type), src0->name, (long long) ne01, (long long) ne00,
                   tiles, BITNET_TL_SHAPES_DIGEST);
    }

    const int64_t K       = ne00;
    const int64_t M       = ne01;
    const int64_t n_tok   = ne11 * ne12 * ne13;
    const int64_t lut_len = bitnet_tl_lut_len(type, t);
    char * const  wdata   = (char *) params->wdata;
    float   * const d   = (float *) wdata;
    int8_t  * const q   = (int8_t *) (wdata + TL_PAD((size_t) n_tok * sizeof(float)));
    int16_t * const lut = (int16_t *) (wdata + tl_lut_offset(n_tok, K));
    GGML_ASSERT(params->wsize >= ggml_bitnet_tl_wsize(src0, src1));

    // 1. per token (dealt round robin): int8 activations with the I2_S row scale, then its LUT
    for (int64_t it = ith; it < n_tok; it += nth) {
        const int64_t i13 = it / (ne11 * ne12);
        const int64_t i12 = (it / ne11) % ne12;
        const int64_t i11 = it % ne11;
        const float * x = (const float *) ((const char *) src1->data + i11*nb11 + i12*nb12 + i13*nb13);
        int8_t * qt = q + it * TL_PAD((size_t) K);
        d[it] = bitnet_tl_quantize_row(x, qt, K);
        bitnet_tl_build_lut(type, t, qt, lut + it * lut_len);
    }

    ggml_barrier(params->threadpool);

    // 2. the per-tensor scale from the tensor's own tail (docs/formats.md)
    const float w_scale = bitnet_tl_scale(type, (const uint8_t *) src0->data, M, K);

    // 3. each thread takes a contiguous range of BM-row tiles, for every token
    const int64_t n_tiles = M / t->BM;
    const int64_t tile0 = n_tiles * ith / nth;
    const int64_t tile1 = n_tiles * (ith + 1) / nth;
    if (tile0 >= tile1) {
        return;
    }
    for (int64_t i13 = 0; i13 < ne13; i13++) {
        for (int64_t i12 = 0; i12 < ne12; i12++) {
            const int64_t first = (i13*ne12 + i12)*ne11;  // first token of this batch slice
            float * y = (float *) ((char *) dst->data + i12*nb2 + i13*nb3);
            bitnet_tl_mul_mat(type, t, tile0, tile1, ne11, (const uint8_t *) src0->data, w_scale,
                              lut + first * lut_len, lut_len, d + first, y,
                              (int64_t) (nb1 / sizeof(float)));
        }
    }
}
