/*
 * bitnet-i2s.c — I2_S × I8_S kernels: the portable scalar reference and the run-time dispatcher.
 *
 * The scalar functions here define the results every SIMD path must reproduce bit for bit
 * (tests/test_kernels.py checks all of them against a NumPy model of the same formulas).
 * Sources: shared/spec/bitnet-formats.md §2.1 (layout), §2.4 (activation quantization),
 * §2.5 (dot product and correction); shared/spec/fast-kernels.md §2 (offset trick), §4 (pitfalls).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bitnet-act.h"
#include "bitnet-i2s-internal.h"

#ifdef BITNET_HAVE_X86
#include <cpuid.h>
#endif
#if defined(BITNET_HAVE_NEON) && defined(BITNET_HAVE_NEON_DOTPROD)
#if defined(__linux__)
#include <sys/auxv.h>
#elif defined(__APPLE__)
#include <sys/sysctl.h>
#endif
#endif

/* ============================================================================================
 * Activation quantization, scalar (ref: spec §2.4, fork `quantize_row_i8_s`)
 * ============================================================================================ */

void bitnet_quantize_row_i8s_scalar(const float *x, bitnet_block_i8s *y, int64_t k) {
    const int64_t nb = k / BITNET_QK_I2S;
    const float d = bitnet_act_scale(bitnet_act_absmax(x, k)); /* contract: bitnet-act.h */
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * BITNET_QK_I2S;
        int32_t sum = 0;
        for (int j = 0; j < BITNET_QK_I2S; j++) {
            const int8_t q = bitnet_act_q(xb[j], d);
            y[b].qs[j] = q;
            sum += q;
        }
        y[b].d = d;     /* every block of the row stores the row's scale (contract) */
        y[b].sum = sum; /* Σq of this block, for the offset correction (spec §2.5) */
    }
}

/* ============================================================================================
 * I2_S × I8_S matrix product, scalar (ref: spec §2.1 layout, §2.5 formula)
 * ============================================================================================ */

void bitnet_i2s_mul_mat_scalar(int64_t k, int64_t nr, int64_t nt, const uint8_t *w, float w_scale,
                               const bitnet_block_i8s *a, float *y, int64_t y_stride) {
    const int64_t nb = k / BITNET_QK_I2S; /* blocks per row */
    const int64_t row_bytes = k / 4;      /* 2 bits per weight: row r starts at byte r*k/4 */
    for (int64_t t = 0; t < nt; t++) {
        const bitnet_block_i8s *at = a + t * nb;
        const int32_t act_sum = bitnet_token_sum(at, nb);
        const float d = at[0].d;
        for (int64_t r = 0; r < nr; r++) {
            const uint8_t *wr = w + r * row_bytes;
            int32_t raw = 0; /* Σ code·q with unsigned codes 0..2; |raw| ≤ 256·k fits int32 */
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *wb = wr + b * 32;
                const int8_t *q = at[b].qs;
                /* byte j holds elements j, j+32, j+64, j+96 in bits 7:6, 5:4, 3:2, 1:0 */
                for (int j = 0; j < 32; j++) {
                    const int v = wb[j];
                    raw += (v >> 6) * q[j] + ((v >> 4) & 3) * q[j + 32] +
                           ((v >> 2) & 3) * q[j + 64] + (v & 3) * q[j + 96];
                }
            }
            y[t * y_stride + r] = bitnet_i2s_output(raw, act_sum, d, w_scale);
        }
    }
}

/* ============================================================================================
 * Run-time dispatch
 * ============================================================================================ */

typedef struct {
    const char *name;
    bitnet_mul_mat_fn mul_mat;
    bitnet_quantize_fn quantize;
    int (*supported)(void); /* does the running CPU (and OS) have what this path needs? */
} bitnet_kernel;

static int always(void) { return 1; }

#ifdef BITNET_HAVE_X86
int bitnet_cpuid7_ecx(int bit) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (int)((c >> bit) & 1u);
}

/* __builtin_cpu_supports also checks that the OS saves the ymm/zmm state (XGETBV); VNNI is read
 * from CPUID directly because older compilers do not know its name there. */
static int cpu_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}
#ifdef BITNET_HAVE_AVX512
static int cpu_avx512vnni(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && bitnet_cpuid7_ecx(11);
}
#endif
#endif

#if defined(BITNET_HAVE_NEON) && defined(BITNET_HAVE_NEON_DOTPROD)
static int cpu_dotprod(void) {
#if defined(__linux__)
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20) /* arch/arm64/include/uapi/asm/hwcap.h */
#endif
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#elif defined(__APPLE__)
    int v = 0;
    size_t n = sizeof v;
    if (sysctlbyname("hw.optional.arm.FEAT_DotProd", &v, &n, NULL, 0) != 0) return 0;
    return v != 0;
#elif defined(__ARM_FEATURE_DOTPROD)
    return 1; /* the whole build already assumes it */
#else
    return 0;
#endif
}
#endif

/* In order of preference: the first supported entry is the default. */
static const bitnet_kernel KERNELS[] = {
#ifdef BITNET_HAVE_AVX512
    {"avx512vnni", bitnet_i2s_mul_mat_avx512vnni, bitnet_quantize_row_i8s_avx512, cpu_avx512vnni},
#endif
#ifdef BITNET_HAVE_X86
    {"avx2", bitnet_i2s_mul_mat_avx2, bitnet_quantize_row_i8s_avx2, cpu_avx2},
#endif
#ifdef BITNET_HAVE_NEON
#ifdef BITNET_HAVE_NEON_DOTPROD
    {"neon-dotprod", bitnet_i2s_mul_mat_neon_dotprod, bitnet_quantize_row_i8s_scalar, cpu_dotprod},
#endif
    /* aarch64 compilers inline rintf as one frintx, so the scalar quantizer is already fast */
    {"neon", bitnet_i2s_mul_mat_neon, bitnet_quantize_row_i8s_scalar, always},
#endif
#ifdef BITNET_HAVE_AVX512
    /* test-only: the AVX-512 path without GFNI (what Cascade Lake runs), forced by name only */
    {"avx512vnni-nogfni", bitnet_i2s_mul_mat_avx512vnni_shift, bitnet_quantize_row_i8s_avx512,
     cpu_avx512vnni},
#endif
    {"scalar", bitnet_i2s_mul_mat_scalar, bitnet_quantize_row_i8s_scalar, always},
};
#define N_KERNELS (sizeof KERNELS / sizeof KERNELS[0])

/* The chosen path. Written once on first use (every thread computes the same answer, so the
 * benign race only repeats the CPU query) or by bitnet_set_kernel. */
static const bitnet_kernel *g_kernel;

#if defined(__GNUC__)
#define LOAD_KERNEL() __atomic_load_n(&g_kernel, __ATOMIC_ACQUIRE)
#define STORE_KERNEL(p) __atomic_store_n(&g_kernel, (p), __ATOMIC_RELEASE)
#else
#define LOAD_KERNEL() (g_kernel)
#define STORE_KERNEL(p) (g_kernel = (p))
#endif

static const bitnet_kernel *best_kernel(void) {
    for (size_t i = 0; i < N_KERNELS; i++)
        if (KERNELS[i].supported()) return &KERNELS[i];
    return &KERNELS[N_KERNELS - 1]; /* scalar: always last, always supported */
}

static const bitnet_kernel *current_kernel(void) {
    const bitnet_kernel *kern = LOAD_KERNEL();
    if (kern == NULL) {
        kern = best_kernel();
        STORE_KERNEL(kern);
    }
    return kern;
}

const char *bitnet_kernel_name(void) { return current_kernel()->name; }

/* Force a path by name; NULL or "auto" goes back to the best one. Returns 0 (and changes
 * nothing) when the name is unknown, not built into this library, or not supported by the CPU. */
int bitnet_set_kernel(const char *name) {
    if (name == NULL || strcmp(name, "auto") == 0) {
        STORE_KERNEL(best_kernel());
        return 1;
    }
    for (size_t i = 0; i < N_KERNELS; i++) {
        if (strcmp(KERNELS[i].name, name) == 0) {
            if (!KERNELS[i].supported()) return 0;
            STORE_KERNEL(&KERNELS[i]);
            return 1;
        }
    }
    return 0;
}

void bitnet_quantize_row_i8s(const float *x, bitnet_block_i8s *y, int64_t k) {
    if (k <= 0) return;
    if (k % BITNET_QK_I2S != 0) abort(); /* caller bug, like GGML_ASSERT: rows are whole blocks */
    current_kernel()->quantize(x, y, k);
}

void bitnet_i2s_mul_mat(int64_t k, int64_t nr, int64_t nt, const uint8_t *w, float w_scale,
                        const bitnet_block_i8s *a, float *y, int64_t y_stride) {
    if (k <= 0 || nr <= 0 || nt <= 0) return;
    if (k % BITNET_QK_I2S != 0) abort(); /* I2_S needs k % 128 == 0 (spec §2.1, fast-kernels §4) */
    current_kernel()->mul_mat(k, nr, nt, w, w_scale, a, y, y_stride);
}
