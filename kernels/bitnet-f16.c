/*
 * bitnet-f16.c — F16 weights × F32 activations for a few tokens: the GEMV of the tied F16 output
 * head in decode (128256 × 2560 halves = 657 MB, 56% of the bytes read per token; fast-kernels
 * §1 "The head"). Public contract: bitnet-kernels.h (bitnet_f16_mul_mat).
 *
 * Upstream ggml rounds the activations to F16 first and calls ggml_vec_dot_f16 once per row and
 * token; here the F16 weights are widened exactly to F32 (vcvtph2ps) and multiplied with the F32
 * activations as they are, so the only rounding is the F32 accumulation: at least as exact as
 * upstream. The sum order is not fixed (paths differ in the last bits; tests use a tolerance).
 *
 * Speed: the GEMV is bandwidth-bound (0.5 MAC per byte), so the kernel is a stream. One token
 * (decode) reads the rows one after another: each thread's slice of the head is a single
 * sequential stream with a software prefetch 8 KB ahead, which the hardware prefetcher follows
 * best (as the I2_S GEMV; 1.4–1.5× the bandwidth of reading four rows in lock-step, measured on
 * an AMD EPYC Zen 5 VM, see f16_gemv_256). Two to four tokens: four rows in lock-step (one
 * activation load serves four rows), 1 KB prefetch per row; up to 4 (AVX-512) or 2 (AVX2) tokens
 * share each pass over the weights (ggml_vec_dot_f16: ≈ 8.7 GB/s at 1 thread on the Xeon).
 */
#include <stdint.h>
#include <string.h>

#include "bitnet-i2s-internal.h" /* BITNET_HAVE_X86, bitnet-kernels.h */

#ifdef BITNET_HAVE_X86
#include <cpuid.h>
#include <immintrin.h>
#endif

/* ============================================================================================
 * Scalar reference (every CPU)
 * ============================================================================================ */

/* IEEE half → float, exact for every input (normals, subnormals, ±0, ±inf, NaN payloads). */
static float f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1fu) {
        bits = sign | 0x7f800000u | (man << 13); /* inf / NaN */
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13); /* normal: rebias 15 → 127 */
    } else if (man == 0) {
        bits = sign; /* ±0 */
    } else {
        /* subnormal: m·2^-24; normalise the mantissa */
        exp = 113u;
        while ((man & 0x400u) == 0) {
            man <<= 1;
            exp--;
        }
        bits = sign | (exp << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

float bitnet_f16_to_f32(uint16_t h) { return f16_to_f32(h); }

static void f16_mul_mat_scalar(int64_t k, int64_t nr, int64_t nt, const uint16_t *w,
                               int64_t w_stride, const float *x, int64_t x_stride, float *y,
                               int64_t y_stride) {
    for (int64_t t = 0; t < nt; t++) {
        const float *xt = x + t * x_stride;
        for (int64_t r = 0; r < nr; r++) {
            const uint16_t *wr = w + r * w_stride;
            float s = 0.0f;
            for (int64_t i = 0; i < k; i++) s += f16_to_f32(wr[i]) * xt[i];
            y[t * y_stride + r] = s;
        }
    }
}

#ifdef BITNET_HAVE_X86

#define F16_PREFETCH 1024 /* tiles: bytes ahead in each row stream (measured best of 0/1/2/4 KB) */
#define F16_STREAM_PREFETCH 8192 /* one-token GEMV: bytes ahead in its single stream */
#define INLINE static inline __attribute__((always_inline))

typedef void (*f16_tile_fn)(int64_t k, const uint16_t *w, int64_t ws, const float *x, int64_t xs,
                            float *y, int64_t ys);

#ifdef BITNET_HAVE_AVX512
/* ============================================================================================
 * AVX-512F (+F16C): 16 halves per vcvtph2ps, R = 4 rows × T ≤ 4 tokens in registers
 * ============================================================================================ */

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma")))

/* y[t*ys + r] = Σ w[r]·x[t] for R rows (R ≤ 4) and T tokens (T ≤ 4); R, T compile-time. */
T512 INLINE void f16_tile_512(const int R, const int T, int64_t k, const uint16_t *w,
                              int64_t ws, const float *x, int64_t xs, float *y, int64_t ys) {
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();

    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        __m512 xv[4];
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) xv[t] = _mm512_loadu_ps(x + t * xs + i);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const uint16_t *wr = w + r * ws + i;
            if ((i & 31) == 0) _mm_prefetch((const char *)wr + F16_PREFETCH, _MM_HINT_T0);
            const __m512 wv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)wr));
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    if (i < k) { /* the last k % 16 columns, masked (masked loads never fault) */
        const __mmask16 m = (__mmask16)((1u << (k - i)) - 1u);
        __m512 xv[4];
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) xv[t] = _mm512_maskz_loadu_ps(m, x + t * xs + i);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const __m512 wv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w + r * ws + i));
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) y[t * ys + r] = _mm512_reduce_add_ps(acc[r][t]);
}

#define F16_TILE512(R_, T_)                                                                     \
    T512 static void f16_tile_512_##R_##x##T_(int64_t k, const uint16_t *w, int64_t ws,         \
                                              const float *x, int64_t xs, float *y, int64_t ys) { \
        f16_tile_512(R_, T_, k, w, ws, x, xs, y, ys);                                           \
    }
F16_TILE512(4, 1)
F16_TILE512(4, 2)
F16_TILE512(4, 3)
F16_TILE512(4, 4)
F16_TILE512(1, 1)
F16_TILE512(1, 2)
F16_TILE512(1, 3)
F16_TILE512(1, 4)

static const f16_tile_fn TILES_512[2][4] = {
    {f16_tile_512_4x1, f16_tile_512_4x2, f16_tile_512_4x3, f16_tile_512_4x4},
    {f16_tile_512_1x1, f16_tile_512_1x2, f16_tile_512_1x3, f16_tile_512_1x4},
};

/* One token (decode): see f16_gemv_256. 64 halves (two cache lines) per step. */
T512 static void f16_gemv_512(int64_t k, int64_t nr, const uint16_t *w, int64_t ws,
                              const float *x, float *y) {
    for (int64_t r = 0; r < nr; r++) {
        const uint16_t *wr = w + r * ws;
        __m512 a[4];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) a[j] = _mm512_setzero_ps();
        int64_t i = 0;
        for (; i + 64 <= k; i += 64) {
            _mm_prefetch((const char *)(wr + i) + F16_STREAM_PREFETCH, _MM_HINT_T0);
            _mm_prefetch((const char *)(wr + i) + 64 + F16_STREAM_PREFETCH, _MM_HINT_T0);
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++)
                a[j] = _mm512_fmadd_ps(
                    _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wr + i + 16 * j))),
                    _mm512_loadu_ps(x + i + 16 * j), a[j]);
        }
        for (; i < k; i += 16) { /* the last k % 64 columns, masked (masked loads never fault) */
            const __mmask16 m = k - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (k - i)) - 1u);
            a[0] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, wr + i)),
                                   _mm512_maskz_loadu_ps(m, x + i), a[0]);
        }
        y[r] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[0], a[1]),
                                                  _mm512_add_ps(a[2], a[3])));
    }
}
#endif /* BITNET_HAVE_AVX512 */

/* ============================================================================================
 * AVX2 + F16C + FMA: 8 halves per vcvtph2ps, R = 4 rows × T ≤ 2 tokens (16 ymm registers)
 * ============================================================================================ */

#define T256 __attribute__((target("avx2,f16c,fma")))

T256 INLINE float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

T256 INLINE void f16_tile_256(const int R, const int T, int64_t k, const uint16_t *w,
                              int64_t ws, const float *x, int64_t xs, float *y, int64_t ys) {
    __m256 acc[4][2];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();

    int64_t i = 0;
    for (; i + 8 <= k; i += 8) {
        __m256 xv[2];
#pragma GCC unroll 2
        for (int t = 0; t < T; t++) xv[t] = _mm256_loadu_ps(x + t * xs + i);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const uint16_t *wr = w + r * ws + i;
            if ((i & 31) == 0) _mm_prefetch((const char *)wr + F16_PREFETCH, _MM_HINT_T0);
            const __m256 wv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)wr));
#pragma GCC unroll 2
            for (int t = 0; t < T; t++) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    float tail[4][2] = {{0}};
    for (; i < k; i++) /* the last k % 8 columns */
        for (int r = 0; r < R; r++)
            for (int t = 0; t < T; t++) tail[r][t] += f16_to_f32(w[r * ws + i]) * x[t * xs + i];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int t = 0; t < T; t++) y[t * ys + r] = hsum256(acc[r][t]) + tail[r][t];
}

#define F16_TILE256(R_, T_)                                                                     \
    T256 static void f16_tile_256_##R_##x##T_(int64_t k, const uint16_t *w, int64_t ws,         \
                                              const float *x, int64_t xs, float *y, int64_t ys) { \
        f16_tile_256(R_, T_, k, w, ws, x, xs, y, ys);                                           \
    }
F16_TILE256(4, 1)
F16_TILE256(4, 2)
F16_TILE256(1, 1)
F16_TILE256(1, 2)

static const f16_tile_fn TILES_256[2][4] = {
    {f16_tile_256_4x1, f16_tile_256_4x2, NULL, NULL},
    {f16_tile_256_1x1, f16_tile_256_1x2, NULL, NULL},
};

/* One token (decode, the head): rows one after another, so that each thread's weights are one
 * sequential stream, prefetched F16_STREAM_PREFETCH ahead; four accumulators per row hide the
 * FMA latency. Against the 4-row tiles (four streams k halves apart, 1 KB prefetch each): cold,
 * half the 2B-4T head (335 MB), 1 thread, thread CPU time, AMD EPYC Zen 5 VM, two runs:
 * 20.0 → 30.6 and 21.4 → 32.5 GB/s on this path (AVX-512: 23.0 → 31.7); prefetch 0 / 2 / 4 / 8 /
 * 16 / 32 KB ahead in a third, quiet run: 32.2 / – / 33.4 / 36.6 / 34.8 / 36.0 GB/s, and NumPy's
 * plain read 37.3 GB/s. 32 halves (one line) per step. */
T256 static void f16_gemv_256(int64_t k, int64_t nr, const uint16_t *w, int64_t ws,
                              const float *x, float *y) {
    for (int64_t r = 0; r < nr; r++) {
        const uint16_t *wr = w + r * ws;
        __m256 a[4];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) a[j] = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 32 <= k; i += 32) {
            _mm_prefetch((const char *)(wr + i) + F16_STREAM_PREFETCH, _MM_HINT_T0);
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++)
                a[j] = _mm256_fmadd_ps(
                    _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wr + i + 8 * j))),
                    _mm256_loadu_ps(x + i + 8 * j), a[j]);
        }
        float tail = 0;
        for (; i < k; i++) /* the last k % 32 columns */
            tail += f16_to_f32(wr[i]) * x[i];
        y[r] = hsum256(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]))) + tail;
    }
}

/* Rows in groups of 4 (then single rows), tokens in groups of max_t: each group is one pass over
 * the rows' weights, which stay in L1/L2 between token groups only for tiny matrices; the head
 * case is one token, one pass. */
static void f16_mul_mat_tiles(const f16_tile_fn tiles[2][4], int max_t, int64_t k, int64_t nr,
                              int64_t nt, const uint16_t *w, int64_t ws, const float *x,
                              int64_t xs, float *y, int64_t ys) {
    for (int64_t t0 = 0; t0 < nt; t0 += max_t) {
        const int T = (int)(nt - t0 < max_t ? nt - t0 : max_t);
        int64_t r = 0;
        for (; r + 4 <= nr; r += 4)
            tiles[0][T - 1](k, w + r * ws, ws, x + t0 * xs, xs, y + t0 * ys + r, ys);
        for (; r < nr; r++)
            tiles[1][T - 1](k, w + r * ws, ws, x + t0 * xs, xs, y + t0 * ys + r, ys);
    }
}

#ifdef BITNET_HAVE_AVX512
static void f16_mul_mat_avx512(int64_t k, int64_t nr, int64_t nt, const uint16_t *w, int64_t ws,
                               const float *x, int64_t xs, float *y, int64_t ys) {
    if (nt == 1)
        f16_gemv_512(k, nr, w, ws, x, y);
    else
        f16_mul_mat_tiles(TILES_512, 4, k, nr, nt, w, ws, x, xs, y, ys);
}
#endif

static void f16_mul_mat_avx2(int64_t k, int64_t nr, int64_t nt, const uint16_t *w, int64_t ws,
                             const float *x, int64_t xs, float *y, int64_t ys) {
    if (nt == 1)
        f16_gemv_256(k, nr, w, ws, x, y);
    else
        f16_mul_mat_tiles(TILES_256, 2, k, nr, nt, w, ws, x, xs, y, ys);
}

/* F16C from CPUID leaf 1 (ECX bit 29): clang before 15 has no __builtin_cpu_supports("f16c"). */
static int cpu_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
}
#ifdef BITNET_HAVE_AVX512
static int cpu_f16_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && cpu_f16c() && __builtin_cpu_supports("fma");
}
#endif
static int cpu_f16_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && cpu_f16c() && __builtin_cpu_supports("fma");
}
#endif /* BITNET_HAVE_X86 */

/* ============================================================================================
 * Run-time dispatch (independent of the I2_S path choice)
 * ============================================================================================ */

typedef void (*f16_mul_mat_fn)(int64_t k, int64_t nr, int64_t nt, const uint16_t *w, int64_t ws,
                               const float *x, int64_t xs, float *y, int64_t ys);
typedef struct {
    const char *name;
    f16_mul_mat_fn mul_mat;
    int (*supported)(void);
} f16_kernel;

static int f16_always(void) { return 1; }

/* In order of preference; "scalar" last. */
static const f16_kernel F16_KERNELS[] = {
#ifdef BITNET_HAVE_AVX512
    {"avx512", f16_mul_mat_avx512, cpu_f16_avx512},
#endif
#ifdef BITNET_HAVE_X86
    {"avx2", f16_mul_mat_avx2, cpu_f16_avx2},
#endif
    {"scalar", f16_mul_mat_scalar, f16_always},
};
#define N_F16_KERNELS (sizeof F16_KERNELS / sizeof F16_KERNELS[0])

static const f16_kernel *g_f16; /* benign race on first use: every thread finds the same one */

#if defined(__GNUC__)
#define F16_LOAD() __atomic_load_n(&g_f16, __ATOMIC_ACQUIRE)
#define F16_STORE(p) __atomic_store_n(&g_f16, (p), __ATOMIC_RELEASE)
#else
#define F16_LOAD() (g_f16)
#define F16_STORE(p) (g_f16 = (p))
#endif

static const f16_kernel *f16_best(void) {
    for (size_t i = 0; i < N_F16_KERNELS; i++)
        if (F16_KERNELS[i].supported()) return &F16_KERNELS[i];
    return &F16_KERNELS[N_F16_KERNELS - 1];
}

static const f16_kernel *f16_current(void) {
    const f16_kernel *kern = F16_LOAD();
    if (kern == NULL) {
        kern = f16_best();
        F16_STORE(kern);
    }
    return kern;
}

const char *bitnet_f16_kernel_name(void) { return f16_current()->name; }

int bitnet_f16_set_kernel(const char *name) {
    if (name == NULL || strcmp(name, "auto") == 0) {
        F16_STORE(f16_best());
        return 1;
    }
    for (size_t i = 0; i < N_F16_KERNELS; i++) {
        if (strcmp(F16_KERNELS[i].name, name) == 0) {
            if (!F16_KERNELS[i].supported()) return 0;
            F16_STORE(&F16_KERNELS[i]);
            return 1;
        }
    }
    return 0;
}

void bitnet_f16_mul_mat(int64_t k, int64_t nr, int64_t nt, const uint16_t *w, int64_t w_stride,
                        const float *x, int64_t x_stride, float *y, int64_t y_stride) {
    if (nr <= 0 || nt <= 0) return;
    if (k <= 0) { /* an empty sum */
        for (int64_t t = 0; t < nt; t++)
            for (int64_t r = 0; r < nr; r++) y[t * y_stride + r] = 0.0f;
        return;
    }
    f16_current()->mul_mat(k, nr, nt, w, w_stride, x, x_stride, y, y_stride);
}
