"""Several threads on one matmul, under ThreadSanitizer: the kernels as llama.cpp's thread pool runs
them (kernels/llama/ggml-cpu-bitnet*.c), with no data race and the single-thread result.

A small C driver (below) splits one product across threads exactly as the ggml glue does:
  * I2_S, few tokens: every thread quantizes all tokens on its own stack and takes a slice of
    16-row multiples, no barrier (the barrier-free decode path);
  * I2_S, many tokens: tokens quantized round robin into one shared buffer, a barrier, then row
    slices through the tiled GEMM (bitnet_i2s_mul_mat with nt > 1);
  * TL2 (and TL1): per-token LUTs built round robin, a barrier, then BM-row tile ranges.
The kernel path is left on auto, so the threads also race to pick it on first use, as in
llama.cpp. Built with `cc -fsanitize=thread` against kernels/bitnet-*.c; a TSan report or a
result that differs from the single-thread library's (bit for bit) fails the test.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from arm_helpers import DRIVER_PRELUDE

from bitnet.tools import kernels_lib, quants

THREADS = 4

DRIVER = (
    "#define _POSIX_C_SOURCE 200809L  /* pthread_barrier_t under -std=c11 */\n"
    "#include <pthread.h>\n"
    "#include <stdint.h>\n"
    + DRIVER_PRELUDE
    + r"""
#include "bitnet-kernels.h"
#include "bitnet-tl.h"

/* the product: type 0 = I2_S, 1 = TL1, 2 = TL2; W is the whole tensor (tail included) */
static int TYPE, NTH;
static int64_t M, K, NT;
static const uint8_t *W;
static const float *X;
static float *Y;
static pthread_barrier_t BAR;
static bitnet_block_i8s *ACTS;                 /* I2_S, many tokens: shared activations */
static bitnet_tl_tiling T;                     /* TL: tiles */
static int8_t *Q; static float *D; static int16_t *LUT; static int64_t LUT_LEN;

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define FEW_TOKENS 4

static void *worker(void *arg) {
    const int ith = (int) (intptr_t) arg;
    if (TYPE == 0) {
        const size_t a_row = (size_t) (K / 128) * sizeof(bitnet_block_i8s);
        const int64_t per = ((M + NTH - 1) / NTH + 15) / 16 * 16;
        const int64_t r0 = MIN(M, ith * per), r1 = MIN(M, r0 + per);
        bitnet_block_i8s *acts = ACTS;
        if (NT <= FEW_TOKENS) {                  /* decode: own copy, no barrier */
            if (r0 >= r1) return NULL;
            acts = malloc(NT * a_row);
            for (int64_t t = 0; t < NT; t++)
                bitnet_quantize_row_i8s(X + t * K, (bitnet_block_i8s *) ((char *) acts + t * a_row),
                                        K);
        } else {                                 /* prompt: shared buffer, one barrier */
            for (int64_t t = ith; t < NT; t += NTH)
                bitnet_quantize_row_i8s(X + t * K, (bitnet_block_i8s *) ((char *) ACTS + t * a_row),
                                        K);
            pthread_barrier_wait(&BAR);
        }
        float scale;
        memcpy(&scale, W + M * K / 4, sizeof scale);
        if (r0 < r1) bitnet_i2s_mul_mat(K, r1 - r0, NT, W + r0 * K / 4, scale, acts, Y + r0, M);
        if (acts != ACTS) free(acts);
        return NULL;
    }
    for (int64_t t = ith; t < NT; t += NTH) {
        D[t] = bitnet_tl_quantize_row(X + t * K, Q + t * K, K);
        bitnet_tl_build_lut(TYPE, &T, Q + t * K, LUT + t * LUT_LEN);
    }
    pthread_barrier_wait(&BAR);
    const float scale = bitnet_tl_scale(TYPE, W, M, K);
    const int64_t n_tiles = M / T.BM;
    const int64_t tile0 = n_tiles * ith / NTH, tile1 = n_tiles * (ith + 1) / NTH;
    if (tile0 < tile1)
        bitnet_tl_mul_mat(TYPE, &T, tile0, tile1, NT, W, scale, LUT, LUT_LEN, D, Y, M);
    return NULL;
}

/* driver TYPE THREADS M K NT WEIGHTS NBYTES ACTS OUT [BM BK bm] */
int main(int argc, char **argv) {
    if (argc < 10) return 2;
    TYPE = atoi(argv[1]); NTH = atoi(argv[2]);
    M = atoll(argv[3]); K = atoll(argv[4]); NT = atoll(argv[5]);
    W = slurp(argv[6], (size_t) atoll(argv[7]));
    X = slurp(argv[8], (size_t) (NT * K) * sizeof(float));
    Y = calloc((size_t) (NT * M), sizeof(float));
    ACTS = malloc((size_t) NT * (size_t) (K / 128 + 1) * sizeof(bitnet_block_i8s));
    if (TYPE != 0) {
        T = (bitnet_tl_tiling) {M, K, atoi(argv[10]), atoi(argv[11]), atoi(argv[12])};
        if (bitnet_tl_tail_tiling(TYPE, W, M, K, &T) < 0) return 3;
        LUT_LEN = bitnet_tl_lut_len(TYPE, &T);
        Q = malloc((size_t) (NT * K)); D = malloc((size_t) NT * sizeof(float));
        LUT = malloc((size_t) (NT * LUT_LEN) * sizeof(int16_t));
    }
    pthread_barrier_init(&BAR, NULL, (unsigned) NTH);
    pthread_t th[64];
    for (int i = 0; i < NTH; i++) pthread_create(&th[i], NULL, worker, (void *) (intptr_t) i);
    for (int i = 0; i < NTH; i++) pthread_join(th[i], NULL);
    FILE *f = fopen(argv[9], "wb");
    if (!f || fwrite(Y, sizeof(float), (size_t) (NT * M), f) != (size_t) (NT * M)) return 6;
    fclose(f);
    printf("%s\n", TYPE == 0 ? bitnet_kernel_name() : bitnet_tl_kernel_name());
    return 0;
}
"""
)


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The driver built with -fsanitize=thread (skips, with the compiler's reason, without TSan)."""
    folder = tmp_path_factory.mktemp("tsan")
    (folder / "driver.c").write_text(DRIVER)
    exe = folder / "driver"
    cmd = [
        "cc", "-O1", "-g", "-std=c11", "-fsanitize=thread", "-pthread",
        f"-I{kernels_lib.kernels_dir()}", str(folder / "driver.c"),
        *map(str, kernels_lib.sources()), "-o", str(exe), "-lm",
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        pytest.skip("no C compiler (cc): the threaded kernels are not tested")
    if proc.returncode != 0:
        last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or ["?"]
        pytest.skip(f"cc cannot build with -fsanitize=thread: {last[0]}")
    return exe


def _run(driver: Path, tmp: Path, qtype: str, m: int, k: int, nt: int) -> np.ndarray:
    rng = np.random.default_rng(m * 7 + nt)
    codes = rng.integers(-1, 2, size=(m, k)).astype(np.int8)
    w = quants.get(qtype).pack(codes, 0.75)
    x = rng.standard_normal((nt, k)).astype(np.float32)
    (tmp / "w.bin").write_bytes(w.tobytes())
    (tmp / "x.bin").write_bytes(x.tobytes())
    args = [{"i2_s": 0, "tl1": 1, "tl2": 2}[qtype], THREADS, m, k, nt, tmp / "w.bin", w.size]
    args += [tmp / "x.bin", tmp / "y.bin"]
    if qtype != "i2_s":
        t = kernels_lib.TLKernels.tiling(qtype, m, k)
        args += [t.BM, t.BK, t.bm]
    proc = subprocess.run(
        [str(driver), *map(str, args)], capture_output=True, text=True, check=False, timeout=300
    )
    assert "ThreadSanitizer" not in proc.stderr, proc.stderr[-4000:]
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = np.fromfile(tmp / "y.bin", dtype=np.float32).reshape(nt, m)

    # the same product on one thread, through the (unsanitized) library
    lib = kernels_lib.load()
    if qtype == "i2_s":
        want = lib.mul_mat(w[: m * k // 4].reshape(m, k // 4), 0.75, lib.quantize_rows(x))
    else:
        q, d = lib.tl.quantize_rows(x)
        want = lib.tl.mul_mat(qtype, w, (m, k), q, d)
    return got, want


@pytest.mark.parametrize(
    ("qtype", "m", "k", "nt"),
    [
        ("i2_s", 256, 512, 1),  # decode: barrier-free, per-thread activations
        ("i2_s", 200, 256, 3),  # rows not a multiple of 16 x threads: uneven slices
        ("i2_s", 256, 384, 24),  # prompt: shared activations, barrier, tiled GEMM
        ("tl2", 256, 512, 1),
        ("tl2", 256, 256, 9),
        ("tl1", 256, 512, 5),
    ],
)
def test_threads_race_free_and_exact(driver: Path, tmp_path: Path, qtype, m, k, nt) -> None:
    got, want = _run(driver, tmp_path, qtype, m, k, nt)
    assert got.tobytes() == want.tobytes()
