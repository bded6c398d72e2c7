/*
 * bitnet-tl.c — TL1 / TL2 lookup-table kernels: activation quantization, LUT builders, the
 * portable table-lookup matrix product and the run-time dispatcher (contract: bitnet-tl.h).
 *
 * The scalar functions define the results (bit-exact with the NumPy model in
 * tests/test_kernels_tl.py and with bitnet_i2s_mul_mat on the same weights). Sources:
 * docs/formats.md "TL1" / "TL2" (our byte layouts), shared/spec/bitnet-formats.md §3.1 / §3.2
 * (LUT contents, tile orders), §2.4 (per-token activation scale, shared with I2_S).
 */
#include <math.h>
#include <string.h>

#include "bitnet-act.h"
#include "bitnet-tl-internal.h"

/* ============================================================================================
 * Sizes, scale, tiling checks (ref: docs/formats.md table, "Tile choice")
 * ============================================================================================ */

/* P of spec §3.2 in exactly the integer-operation order of the packer (tools/quants/tl2.py). */
static int64_t tl2_size_bound(int64_t m, int64_t k) {
    return (k - 256) * m / 3 * 5 / 8 + 256 * m / 2 * 4 / 8;
}

static int64_t tl_body_bytes(int type, int64_t m, int64_t k) {
    if (type == BITNET_TL1) return m * k / 4;
    return (tl2_size_bound(m, k) + 31) / 32 * 32;
}

int64_t bitnet_tl_nbytes(int type, int64_t m, int64_t k) {
    return tl_body_bytes(type, m, k) + BITNET_TL_TAIL_BYTES;
}

float bitnet_tl_scale(int type, const uint8_t *w, int64_t m, int64_t k) {
    float s;
    memcpy(&s, w + tl_body_bytes(type, m, k), sizeof s); /* little-endian f32, first tail bytes */
    return s;
}

int bitnet_tl_tail_tiling(int type, const uint8_t *w, int64_t m, int64_t k, bitnet_tl_tiling *t) {
    /* BM, BK, bm as little-endian uint32 at tail bytes 4..15: inside the tensor's nbytes */
    const uint8_t *rec = w + tl_body_bytes(type, m, k) + BITNET_TL_TILE_RECORD;
    uint32_t v[3];
    for (int i = 0; i < 3; i++)
        v[i] = (uint32_t)rec[4 * i] | (uint32_t)rec[4 * i + 1] << 8 |
               (uint32_t)rec[4 * i + 2] << 16 | (uint32_t)rec[4 * i + 3] << 24;
    if (v[0] == 0 && v[1] == 0 && v[2] == 0) return 0; /* a file from before the record */
    t->M = m;
    t->K = k;
    t->BM = v[0] > INT32_MAX ? INT32_MAX : (int32_t)v[0]; /* too big is invalid anyway */
    t->BK = v[1] > INT32_MAX ? INT32_MAX : (int32_t)v[1];
    t->bm = v[2] > INT32_MAX ? INT32_MAX : (int32_t)v[2];
    return bitnet_tl_tiling_valid(type, t) ? 1 : -1;
}

int bitnet_tl_tiling_valid(int type, const bitnet_tl_tiling *t) {
    if (t->M <= 0 || t->K <= 0 || t->BM <= 0 || t->BK <= 0 || t->bm <= 0) return 0;
    if (t->BM > BITNET_TL_MAX_BM || t->M % t->BM || t->BM % t->bm) return 0;
    if (type == BITNET_TL1) {
        if (t->bm != 32 && t->bm != 64) return 0;
        const int by = 256 / t->bm;
        return t->K % t->BK == 0 && t->BK % by == 0 && t->BK <= 256;
    }
    if (type == BITNET_TL2) {
        const int64_t two_k = t->K % t->BK;
        return t->bm == 32 && t->BK % 24 == 0 && t->BK <= 192 && two_k % 32 == 0 &&
               two_k <= 256 && t->K >= 256;
    }
    return 0;
}

/* ============================================================================================
 * Activations: the I2_S per-token int8 quantization (ref: spec §2.4, kernels/bitnet-i2s.c)
 * ============================================================================================ */

float bitnet_tl_quantize_row_scalar(const float *x, int8_t *q, int64_t k) {
    const float d = bitnet_act_scale(bitnet_act_absmax(x, k)); /* contract: bitnet-act.h */
    for (int64_t i = 0; i < k; i++) q[i] = bitnet_act_q(x[i], d);
    return d;
}

/* ============================================================================================
 * LUT builders (ref: spec §3.1 TL1 LUT, §3.2 TL2 three-part LUT)
 * ============================================================================================ */

int64_t bitnet_tl_lut_len(int type, const bitnet_tl_tiling *t) {
    if (type == BITNET_TL1) return t->K / 2 * BITNET_TL_LUT_ENTRIES;
    const int64_t three_k = t->K / t->BK * t->BK, two_k = t->K - three_k;
    return (three_k / 3 + two_k / 2) * BITNET_TL_LUT_ENTRIES;
}

/* One pair slot: entry idx = 3*w0 + w1 + 4 holds w0*b0 + w1*b1; 9..15 are 0 (never valid). */
static void pair_slot(int16_t *L, int b0, int b1) {
    for (int i = 0; i < 9; i++) L[i] = (int16_t)((i / 3 - 1) * b0 + (i % 3 - 1) * b1);
    for (int i = 9; i < 16; i++) L[i] = 0;
}

/* One group slot: entry i = 9*w0 + 3*w1 + w2 (>= 0, balanced ternary) holds w0*b0+w1*b1+w2*b2;
 * negative groups use the same entry negated by the sign bit. 14, 15 are 0. */
static void group_slot(int16_t *L, int b0, int b1, int b2) {
    for (int i = 0; i < 14; i++) {
        const int w0 = (i + 13) / 9 - 1, w1 = (i + 13) / 3 % 3 - 1, w2 = (i + 13) % 3 - 1;
        L[i] = (int16_t)(w0 * b0 + w1 * b1 + w2 * b2);
    }
    L[14] = L[15] = 0;
}

void bitnet_tl_build_lut(int type, const bitnet_tl_tiling *t, const int8_t *q, int16_t *lut) {
    if (type == BITNET_TL1) {
        for (int64_t p = 0; p < t->K / 2; p++) pair_slot(lut + p * 16, q[2 * p], q[2 * p + 1]);
        return;
    }
    const int64_t three_k = t->K / t->BK * t->BK, n3 = three_k / 3;
    for (int64_t g = 0; g < n3; g++) group_slot(lut + g * 16, q[3 * g], q[3 * g + 1], q[3 * g + 2]);
    int16_t *two = lut + n3 * 16;
    const int8_t *q2 = q + three_k;
    for (int64_t p = 0; p < (t->K - three_k) / 2; p++)
        pair_slot(two + p * 16, q2[2 * p], q2[2 * p + 1]);
}

/* ============================================================================================
 * Table lookups, scalar (ref: docs/formats.md byte orders). One BM tile of rows at a time,
 * tokens in chunks of BITNET_TL_NT_CHUNK: each weight byte is decoded once per chunk and its
 * two LUT entries are added to every token's int32 accumulator of that row.
 * ============================================================================================ */

/* 8-byte chunk c of a stored 32-row TL2 vector holds rows 8*TL2_CHUNK_ROWS[c] .. +7 */
static const int TL2_CHUNK_ROWS[4] = {0, 2, 1, 3};

void bitnet_tl_write_out(const int32_t *acc, int64_t bm_tile, int64_t row0, int64_t nc,
                         const float *d, float w_scale, float *y, int64_t y_stride) {
    for (int64_t c = 0; c < nc; c++) {
        float *yc = y + c * y_stride + row0;
        for (int64_t r = 0; r < bm_tile; r++) {
            /* the I2_S formula: int -> float, then / d, then * w_scale (float32, this order) */
            yc[r] = (float)acc[c * bm_tile + r] / d[c] * w_scale;
        }
    }
}

static void tl1_tile(const bitnet_tl_tiling *t, int64_t i0, int64_t nc, const uint8_t *w,
                     const int16_t *lut, int64_t lut_stride, int32_t *acc) {
    const int64_t BM = t->BM, BK = t->BK, bm = t->bm, by = 256 / bm, nkt = t->K / BK;
    for (int64_t i1 = 0; i1 < nkt; i1++) {
        const uint8_t *p = w + (i0 * nkt + i1) * (BM * BK / 4);
        for (int64_t i2 = 0; i2 < BM / bm; i2++)
            for (int64_t i3 = 0; i3 < BK / by; i3++)
                for (int64_t i4 = 0; i4 < bm / 16; i4++)
                    for (int64_t i5 = 0; i5 < by / 4; i5++) {
                        /* 16 rows, each byte = pairs `pair` (high nibble) and `pair+1` */
                        const int64_t pair = (i1 * BK + i3 * by + i5 * 4) / 2;
                        int32_t *a = acc + i2 * bm + i4 * 16;
                        for (int r = 0; r < 16; r++, p++) {
                            const int hi = *p >> 4, lo = *p & 15;
                            const int16_t *L = lut + pair * 16;
                            for (int64_t c = 0; c < nc; c++, L += lut_stride)
                                a[c * BM + r] += L[hi] + L[16 + lo];
                        }
                    }
    }
}

static void tl2_tile_scalar(const bitnet_tl_tiling *t, int64_t i0, int64_t nc, const uint8_t *w,
                            const int16_t *lut, int64_t lut_stride, int32_t *acc) {
    const int64_t M = t->M, BM = t->BM, BK = t->BK, K = t->K;
    const int64_t nkt = K / BK, three_k = nkt * BK, two_k = K - three_k, n3 = three_k / 3;
    const uint8_t *idx = w, *sign = w + M * three_k / 6, *two = sign + M * three_k / 24;

    /* three-part: index bytes [BM/32][BK/6][32 rows], sign words per [BM/32][BK/24] block */
    for (int64_t i1 = 0; i1 < nkt; i1++) {
        const uint8_t *pi = idx + (i0 * nkt + i1) * (BM * BK / 6);
        const uint8_t *ps = sign + (i0 * nkt + i1) * (BM * BK / 24);
        for (int64_t i2 = 0; i2 < BM / 32; i2++)
            for (int64_t i4 = 0; i4 < BK / 24; i4++, ps += 32) {
                uint16_t words[16]; /* word j, bit 15 - (2g + h): group g of row 16h + j */
                for (int j = 0; j < 16; j++) words[j] = (uint16_t)(ps[2 * j] | ps[2 * j + 1] << 8);
                for (int qq = 0; qq < 4; qq++) {
                    const int64_t g0 = i1 * BK / 3 + i4 * 8 + 2 * qq; /* LUT slot, high nibble */
                    for (int pp = 0; pp < 32; pp++, pi++) {
                        const int rr = 8 * TL2_CHUNK_ROWS[pp >> 3] + (pp & 7);
                        const unsigned wd = words[rr & 15], h = (unsigned)rr >> 4;
                        /* s = 0 or -1; (x ^ s) - s negates x when the group's sign bit is set */
                        const int s0 = -(int)((wd >> (15 - (4 * qq + h))) & 1);
                        const int s1 = -(int)((wd >> (15 - (4 * qq + 2 + h))) & 1);
                        const int hi = *pi >> 4, lo = *pi & 15;
                        int32_t *a = acc + i2 * 32 + rr;
                        const int16_t *L = lut + g0 * 16;
                        for (int64_t c = 0; c < nc; c++, L += lut_stride)
                            a[c * BM] += ((L[hi] ^ s0) - s0) + ((L[16 + lo] ^ s1) - s1);
                    }
                }
            }
    }
    /* two-part: TL1 pair codes, [two_k/32][BM/32][8][32 rows] per BM tile */
    const int64_t nk2 = two_k / 32;
    for (int64_t j1 = 0; j1 < nk2; j1++) {
        const uint8_t *pt = two + (i0 * nk2 + j1) * (BM * 8);
        for (int64_t i2 = 0; i2 < BM / 32; i2++)
            for (int qq = 0; qq < 8; qq++) {
                const int64_t slot = n3 + j1 * 16 + 2 * qq;
                for (int pp = 0; pp < 32; pp++, pt++) {
                    const int rr = 8 * TL2_CHUNK_ROWS[pp >> 3] + (pp & 7);
                    const int hi = *pt >> 4, lo = *pt & 15;
                    int32_t *a = acc + i2 * 32 + rr;
                    const int16_t *L = lut + slot * 16;
                    for (int64_t c = 0; c < nc; c++, L += lut_stride)
                        a[c * BM] += L[hi] + L[16 + lo];
                }
            }
    }
}

/* ============================================================================================
 * Dispatcher
 * ============================================================================================ */

/* One lookup path: its TL1 and TL2 tile functions (a path may reuse the portable one for the
 * type it does not specialise) and whether this CPU can run it. */
typedef struct {
    const char *name;
    bitnet_tl_tile_fn tl1, tl2;
    bitnet_tl_quantize_fn quantize;
    int (*usable)(void);
} tl_kernel;

static int always(void) { return 1; }
#ifdef BITNET_TL_HAVE_AVX2
static int cpu_avx2(void) { return __builtin_cpu_supports("avx2"); }
#endif
#ifdef BITNET_TL_HAVE_AVX512
#include <cpuid.h>
/* AVX-512 F/BW/VL through __builtin_cpu_supports, which also checks that the OS saves the zmm
 * state (XGETBV); VBMI and VNNI (CPUID.(7,0):ECX bits 1 and 11) read directly, as older
 * compilers do not name them. CPUID is read once: in a virtual machine it traps to the
 * hypervisor (tens of microseconds), and bitnet_tl_set_kernel asks on every call. */
static int cpu_avx512(void) {
    static int cached = -1; /* every thread that races here computes the same value */
    int ecx7 = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (ecx7 < 0) {
        unsigned a, b, c = 0, d;
        ecx7 = __get_cpuid_count(7, 0, &a, &b, &c, &d) ? (int)(c & 0x7fffffff) : 0;
        __atomic_store_n(&cached, ecx7, __ATOMIC_RELAXED);
    }
    if (!(ecx7 >> 1 & 1) || !(ecx7 >> 11 & 1)) return 0;
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
}
#endif

static const tl_kernel TL_KERNELS[] = {
#ifdef BITNET_TL_HAVE_AVX512
    {"avx512", tl1_tile, bitnet_tl2_tile_avx512, bitnet_tl_quantize_row_avx2, cpu_avx512},
#endif
#ifdef BITNET_TL_HAVE_AVX2
    {"avx2", tl1_tile, bitnet_tl2_tile_avx2, bitnet_tl_quantize_row_avx2, cpu_avx2},
#endif
#ifdef BITNET_TL_HAVE_NEON
    /* aarch64 compilers inline rintf as one frintx: the portable quantizer is already fast */
    {"neon", bitnet_tl1_tile_neon, bitnet_tl2_tile_neon, bitnet_tl_quantize_row_scalar, always},
#endif
    {"scalar", tl1_tile, tl2_tile_scalar, bitnet_tl_quantize_row_scalar, always},
};
#define N_TL_KERNELS (sizeof TL_KERNELS / sizeof TL_KERNELS[0])

static const tl_kernel *g_tl_kernel;
#if defined(__GNUC__)
#define TL_LOAD() __atomic_load_n(&g_tl_kernel, __ATOMIC_ACQUIRE)
#define TL_STORE(p) __atomic_store_n(&g_tl_kernel, (p), __ATOMIC_RELEASE)
#else
#define TL_LOAD() (g_tl_kernel)
#define TL_STORE(p) (g_tl_kernel = (p))
#endif

static const tl_kernel *tl_best(void) {
    for (size_t i = 0; i < N_TL_KERNELS; i++)
        if (TL_KERNELS[i].usable()) return &TL_KERNELS[i];
    return &TL_KERNELS[N_TL_KERNELS - 1];
}

static const tl_kernel *tl_kernel_now(void) {
    const tl_kernel *k = TL_LOAD();
    if (!k) {
        k = tl_best();
        TL_STORE(k);
    }
    return k;
}

const char *bitnet_tl_kernel_name(void) { return tl_kernel_now()->name; }

int bitnet_tl_set_kernel(const char *name) {
    if (!name || strcmp(name, "auto") == 0) {
        TL_STORE(tl_best());
        return 1;
    }
    for (size_t i = 0; i < N_TL_KERNELS; i++)
        if (strcmp(TL_KERNELS[i].name, name) == 0 && TL_KERNELS[i].usable()) {
            TL_STORE(&TL_KERNELS[i]);
            return 1;
        }
    return 0;
}

float bitnet_tl_quantize_row(const float *x, int8_t *q, int64_t k) {
    return tl_kernel_now()->quantize(x, q, k);
}

void bitnet_tl_mul_mat(int type, const bitnet_tl_tiling *t, int64_t tile0, int64_t tile1,
                       int64_t nt, const uint8_t *w, float w_scale, const int16_t *lut,
                       int64_t lut_stride, const float *d, float *y, int64_t y_stride) {
    const int64_t BM = t->BM;
    int32_t acc[BITNET_TL_NT_CHUNK * BITNET_TL_MAX_BM];
    const tl_kernel *kern = tl_kernel_now();
    const bitnet_tl_tile_fn tile = type == BITNET_TL1 ? kern->tl1 : kern->tl2;
    for (int64_t i0 = tile0; i0 < tile1; i0++) {
        for (int64_t j0 = 0; j0 < nt; j0 += BITNET_TL_NT_CHUNK) {
            const int64_t nc = nt - j0 < BITNET_TL_NT_CHUNK ? nt - j0 : BITNET_TL_NT_CHUNK;
            memset(acc, 0, sizeof(int32_t) * (size_t)(nc * BM));
            const int16_t *lj = lut + j0 * lut_stride;
            tile(t, i0, nc, w, lj, lut_stride, acc);
            bitnet_tl_write_out(acc, BM, i0 * BM, nc, d + j0, w_scale, y + j0 * y_stride,
                                y_stride);
        }
    }
}
