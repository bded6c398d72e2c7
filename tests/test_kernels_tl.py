"""TL1 / TL2 C kernels (kernels/bitnet-tl.c) against the NumPy model of their contract.

The contract (kernels/bitnet-tl.h): activations quantized per token exactly like I2_S, the integer
dot Σ w·q exact, y = (float)acc / d · scale in float32 — so TL results equal I2_S results bit for
bit. Weights are packed with the project's packers (tools/quants tl1.py / tl2.py), whose tiles
come from `default_tiling`. The ARM side of TL1 runs under qemu-user at the end of this file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from arm_helpers import cross_build, qemu

from bitnet.tools import kernels_lib, quants

# (M, K) shapes: TL2 needs K >= 256 and M % 32 == 0; these cover two_k = 0, 32, 64, 128,
# BM < M (several tiles), TL1 with bm = 64 (K % 8 != 0) and a small BK.
TL1_SHAPES = [(32, 8), (64, 256), (96, 200), (128, 260), (320, 384)]
TL2_SHAPES = [(32, 256), (64, 288), (96, 320), (160, 512), (320, 392)]
ALL = [("tl1", s) for s in TL1_SHAPES] + [("tl2", s) for s in TL2_SHAPES]
BATCHES = [1, 3, 8, 17, 128]


# --- the NumPy model -----------------------------------------------------------------------------


def random_acts(rng: np.random.Generator, nt: int, k: int) -> np.ndarray:
    """Rows with very different scales, some with an outlier (like real activations)."""
    x = rng.standard_normal((nt, k)).astype(np.float32)
    x *= np.float32(10.0) ** rng.uniform(-3, 3, size=(nt, 1)).astype(np.float32)
    x[::2, rng.integers(0, k)] *= 40
    return x


def assert_bits_equal(got: np.ndarray, want: np.ndarray) -> None:
    """Equal as float32 bit patterns (so -0.0 vs 0.0 or a NaN would fail too)."""
    assert got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint32), want.astype(np.float32).view(np.uint32))


def ref_quantize_tl(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """q (nt, K) int8 and d (nt,) float32: the I2_S per-token rule for any K."""
    x = np.asarray(x, dtype=np.float32)
    amax = np.max(np.abs(x), axis=1).astype(np.float64)
    d = (127.0 / np.maximum(amax, 1e-5)).astype(np.float32)
    q = np.clip(np.rint(x * d[:, None]), -128, 127).astype(np.int8)
    return q, d


def ref_tl(codes: np.ndarray, scale: float, q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """y[t, r] = (float)(Σ w·q) / d_t · scale (float32 ops in that order)."""
    acc = q.astype(np.int64) @ codes.astype(np.int64).T
    return acc.astype(np.float32) / d[:, None].astype(np.float32) * np.float32(scale)


def pack(qtype: str, codes: np.ndarray, scale: float) -> np.ndarray:
    return quants.get(qtype).pack(codes.astype(np.int8), scale)


@pytest.fixture(scope="module")
def tl() -> kernels_lib.TLKernels:
    return kernels_lib.load().tl


@pytest.fixture(params=kernels_lib.TL_KERNEL_NAMES)
def path(request: pytest.FixtureRequest, tl: kernels_lib.TLKernels):
    if request.param not in tl.available():
        pytest.skip(f"TL path {request.param} not available on this CPU/build")
    with tl.use(request.param):
        yield request.param


# --- sizes, scale, tiling -------------------------------------------------------------------------


@pytest.mark.parametrize(("qtype", "shape"), ALL)
def test_nbytes_and_scale_match_python(tl: kernels_lib.TLKernels, qtype: str, shape) -> None:
    m, k = shape
    assert tl.nbytes(qtype, m, k) == quants.get(qtype).nbytes(shape)
    data = pack(qtype, np.zeros(shape, np.int8), 0.375)
    assert tl.scale(qtype, data, m, k) == np.float32(0.375)
    assert tl.valid(qtype, tl.tiling(qtype, m, k))


def test_invalid_tilings_are_refused(tl: kernels_lib.TLKernels) -> None:
    T = kernels_lib.TLTiling
    assert not tl.valid("tl1", T(64, 256, 48, 128, 32))  # BM does not divide M
    assert not tl.valid("tl1", T(64, 256, 64, 128, 48))  # bm not 32/64
    assert not tl.valid("tl2", T(64, 256, 64, 100, 32))  # BK not a multiple of 24
    assert not tl.valid("tl2", T(64, 128, 64, 96, 32))  # K < 256
    assert not tl.valid("tl2", T(64, 260, 64, 96, 32))  # two_k = 68 not a multiple of 32


# --- activations and LUTs ---------------------------------------------------------------------


@pytest.mark.parametrize("k", [8, 200, 256, 392])
def test_quantize_matches_reference(tl: kernels_lib.TLKernels, k: int) -> None:
    x = random_acts(np.random.default_rng(k), 9, k)
    x[3] = 0.0  # all-zero token: epsilon, no division by zero
    x[4, :4] = [0.5, -0.5, 1.5, 2.5]  # ties after scaling by d = 127/2.5 are not exact; still ok
    q, d = tl.quantize_rows(x)
    rq, rd = ref_quantize_tl(x)
    np.testing.assert_array_equal(q, rq)
    np.testing.assert_array_equal(d.view(np.uint32), rd.view(np.uint32))
    assert np.isfinite(d).all() and d[3] == np.float32(127.0 / 1e-5)
    if k % 128 == 0:  # the same numbers as the I2_S C quantizer
        blocks = kernels_lib.load().quantize_rows(x)
        np.testing.assert_array_equal(q, blocks["qs"].reshape(9, k))
        np.testing.assert_array_equal(d.view(np.uint32), blocks["d"][:, 0].view(np.uint32))


@pytest.mark.parametrize("qtype", ["tl1", "tl2"])
def test_lut_contents(tl: kernels_lib.TLKernels, qtype: str) -> None:
    m, k = 32, 320  # TL2: BK 96 -> three_k 288 (96 groups), two_k 32 (16 pairs)
    t = tl.tiling(qtype, m, k)
    q = np.random.default_rng(1).integers(-128, 128, size=(1, k)).astype(np.int8)
    lut = tl.build_lut(qtype, t, q)[0].reshape(-1, 16).astype(np.int64)
    qi = q[0].astype(np.int64)
    idx = np.arange(16)
    pair_w = np.stack([idx // 3 - 1, idx % 3 - 1], axis=1)
    pair_w[9:] = 0
    three_k = k // t.BK * t.BK if qtype == "tl2" else 0
    n3 = three_k // 3
    if qtype == "tl2":
        v = np.arange(16) + 13
        grp_w = np.stack([v // 9 - 1, v // 3 % 3 - 1, v % 3 - 1], axis=1)
        grp_w[14:] = 0
        np.testing.assert_array_equal(lut[:n3], qi[:three_k].reshape(-1, 3) @ grp_w.T)
    np.testing.assert_array_equal(lut[n3:], qi[three_k:].reshape(-1, 2) @ pair_w.T)


# --- the matrix product ------------------------------------------------------------------------


@pytest.mark.parametrize(("qtype", "shape"), ALL)
@pytest.mark.parametrize("nt", BATCHES)
def test_mul_mat_random(tl, path: str, qtype: str, shape, nt: int) -> None:
    rng = np.random.default_rng(hash((qtype, shape, nt)) % 2**32)
    m, k = shape
    codes = rng.integers(-1, 2, size=shape).astype(np.int8)
    scale = float(np.float32(rng.uniform(0.01, 3)))
    q, d = ref_quantize_tl(random_acts(rng, nt, k))
    got = tl.mul_mat(qtype, pack(qtype, codes, scale), shape, q, d)
    assert_bits_equal(got, ref_tl(codes, scale, q, d))


@pytest.mark.parametrize(("qtype", "shape"), ALL)
@pytest.mark.parametrize("fill", [-1, 0, 1])
def test_mul_mat_constant_weights_and_extremes(tl, path: str, qtype: str, shape, fill: int) -> None:
    m, k = shape
    codes = np.full(shape, fill, np.int8)
    q = np.full((3, k), -128, np.int8)
    q[1] = 127
    q[2, ::2] = 127  # alternating extremes
    d = np.array([1.0, 0.5, 3.0], np.float32)
    got = tl.mul_mat(qtype, pack(qtype, codes, 1.5), shape, q, d)
    assert_bits_equal(got, ref_tl(codes, 1.5, q, d))


@pytest.mark.parametrize(("qtype", "shape"), ALL)
def test_mul_mat_zero_activations(tl, path: str, qtype: str, shape) -> None:
    m, k = shape
    codes = np.random.default_rng(0).integers(-1, 2, size=shape).astype(np.int8)
    q, d = tl.quantize_rows(np.zeros((3, k), np.float32))
    got = tl.mul_mat(qtype, pack(qtype, codes, 0.7), shape, q, d)
    assert np.isfinite(d).all()
    assert_bits_equal(got, np.zeros((3, m), np.float32))


@pytest.mark.parametrize("qtype", ["tl1", "tl2"])
def test_mul_mat_tile_range_and_stride(tl, path: str, qtype: str) -> None:
    shape = (320, 384)  # BM 160 -> two tiles
    rng = np.random.default_rng(5)
    codes = rng.integers(-1, 2, size=shape).astype(np.int8)
    q, d = ref_quantize_tl(random_acts(rng, 5, shape[1]))
    out = np.full((5, 400), 7.0, np.float32)  # y_stride 400 > M
    tl.mul_mat(qtype, pack(qtype, codes, 1.0), shape, q, d, tiles=(1, 2), out=out)
    want = ref_tl(codes, 1.0, q, d)
    assert_bits_equal(out[:, 160:320], want[:, 160:])
    assert (out[:, :160] == 7.0).all() and (out[:, 320:] == 7.0).all()


@pytest.mark.parametrize("qtype", ["tl1", "tl2"])
@pytest.mark.parametrize("nt", [1, 17])
def test_tl_equals_i2s_bit_exact(tl, qtype: str, nt: int) -> None:
    """The same weights and floats through I2_S and TL give the same float32 bits."""
    lib = kernels_lib.load()
    shape = (96, 640)
    rng = np.random.default_rng(nt)
    codes = rng.integers(-1, 2, size=shape).astype(np.int8)
    x = random_acts(rng, nt, shape[1])
    i2s = quants.get("i2_s").pack(codes, 0.25)[: shape[0] * shape[1] // 4].reshape(shape[0], -1)
    want = lib.mul_mat(i2s, 0.25, lib.quantize_rows(x))
    q, d = tl.quantize_rows(x)
    assert_bits_equal(tl.mul_mat(qtype, pack(qtype, codes, 0.25), shape, q, d), want)


# --- TL1 (and TL2) on ARM under qemu-user -----------------------------------------------------

TL_DRIVER = r"""
#include "bitnet-tl.h"
int main(int argc, char **argv) {
    /* type M K BM BK bm nt weights.bin x.bin y.bin */
    if (argc != 11) return 2;
    const int type = atoi(argv[1]);
    bitnet_tl_tiling t = {atol(argv[2]), atol(argv[3]), atoi(argv[4]), atoi(argv[5]),
                          atoi(argv[6])};
    const long nt = atol(argv[7]);
    if (!bitnet_tl_tiling_valid(type, &t)) return 3;
    const uint8_t *w = slurp(argv[8], (size_t)bitnet_tl_nbytes(type, t.M, t.K));
    const float *x = slurp(argv[9], (size_t)(nt * t.K) * 4);
    const int64_t n = bitnet_tl_lut_len(type, &t);
    int8_t *q = malloc((size_t)t.K);
    int16_t *lut = malloc(sizeof *lut * (size_t)(n * nt));
    float *d = malloc(sizeof *d * (size_t)nt), *y = malloc(sizeof *y * (size_t)(nt * t.M));
    for (long j = 0; j < nt; j++) {
        d[j] = bitnet_tl_quantize_row(x + j * t.K, q, t.K);
        bitnet_tl_build_lut(type, &t, q, lut + j * n);
    }
    bitnet_tl_mul_mat(type, &t, 0, t.M / t.BM, nt, w, bitnet_tl_scale(type, w, t.M, t.K), lut, n,
                      d, y, t.M);
    FILE *f = fopen(argv[10], "wb");
    if (!f || fwrite(y, 4, (size_t)(nt * t.M), f) != (size_t)(nt * t.M)) return 6;
    fclose(f);
    return 0;
}
"""


@pytest.fixture(scope="module")
def arm_driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tl-arm")
    srcs = sorted(kernels_lib.kernels_dir().glob("bitnet-tl*.c"))
    return cross_build(d, TL_DRIVER, srcs, "TL kernels on ARM")


@pytest.mark.parametrize("cpu", ["max", "cortex-a53"])  # with and without dotprod
@pytest.mark.parametrize(
    ("qtype", "shape"), [("tl1", (64, 256)), ("tl1", (128, 260)), ("tl2", (96, 320))]
)
@pytest.mark.parametrize("nt", [1, 17])
def test_arm_qemu_bit_exact(arm_driver: Path, tmp_path: Path, cpu: str, qtype, shape, nt) -> None:
    m, k = shape
    rng = np.random.default_rng(nt + m)
    codes = rng.integers(-1, 2, size=shape).astype(np.int8)
    x = random_acts(rng, nt, k)
    x[0] = 0.0  # an all-zero token
    (tmp_path / "w.bin").write_bytes(pack(qtype, codes, 0.5).tobytes())
    (tmp_path / "x.bin").write_bytes(x.tobytes())
    t = kernels_lib.TLKernels.tiling(qtype, m, k)
    args = [kernels_lib.TL_TYPES[qtype], m, k, t.BM, t.BK, t.bm, nt]
    files = [tmp_path / "w.bin", tmp_path / "x.bin", tmp_path / "y.bin"]
    proc = qemu(arm_driver, *args, *files, cpu=cpu)
    assert proc.returncode == 0, proc.stderr
    y = np.fromfile(tmp_path / "y.bin", dtype=np.float32).reshape(nt, m)
    q, d = ref_quantize_tl(x)
    assert_bits_equal(y, ref_tl(codes, 0.5, q, d))
