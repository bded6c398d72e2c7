"""Tests of the F16 × F32 few-token kernel (kernels/bitnet-f16.c, contract in bitnet-kernels.h).

`bitnet_f16_mul_mat` widens the F16 weights exactly to F32 and sums w·x in F32 in a path-dependent
order, so it is checked against a float64 reference within the F32 accumulation bound
(|error| ≤ k·2^-24·Σ|w·x|), and bit-exact where every partial sum is exactly representable (small
integers). Every path this CPU can run is tested (the scalar one always).
"""

from __future__ import annotations

import contextlib
import ctypes

import numpy as np
import pytest

from bitnet.tools import kernels_lib

PATHS = ("avx512", "avx2", "scalar")


@pytest.fixture(scope="module")
def lib():
    try:
        kl = kernels_lib.load()
    except Exception as exc:  # no compiler here: nothing to test
        pytest.skip(f"kernel library unavailable: {exc}")
    c = kl._lib
    i64, vp = ctypes.c_int64, ctypes.c_void_p
    c.bitnet_f16_mul_mat.argtypes = [i64, i64, i64, vp, i64, vp, i64, vp, i64]
    c.bitnet_f16_mul_mat.restype = None
    c.bitnet_f16_to_f32.argtypes = [ctypes.c_uint16]
    c.bitnet_f16_to_f32.restype = ctypes.c_float
    c.bitnet_f16_kernel_name.argtypes = []
    c.bitnet_f16_kernel_name.restype = ctypes.c_char_p
    c.bitnet_f16_set_kernel.argtypes = [ctypes.c_char_p]
    c.bitnet_f16_set_kernel.restype = ctypes.c_int
    yield c
    c.bitnet_f16_set_kernel(None)


@contextlib.contextmanager
def use(c, name: str):
    if not c.bitnet_f16_set_kernel(name.encode()):
        pytest.skip(f"F16 path {name!r} is not available on this CPU")
    try:
        yield
    finally:
        c.bitnet_f16_set_kernel(None)


def mul_mat(c, w16: np.ndarray, x: np.ndarray, k: int, y_stride: int | None = None) -> np.ndarray:
    """Call the kernel on (nr, w_stride) halves and (nt, x_stride) floats; columns [0, k)."""
    nr, ws = w16.shape
    nt, xs = x.shape
    ys = y_stride or nr
    y = np.full((nt, ys), np.float32(-7.0), dtype=np.float32)  # padding must stay untouched
    c.bitnet_f16_mul_mat(k, nr, nt, w16.ctypes.data, ws, x.ctypes.data, xs, y.ctypes.data, ys)
    assert np.all(y[:, nr:] == np.float32(-7.0))
    return y[:, :nr]


def reference(w16: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 Σ w·x and Σ|w·x| (the scale of the F32 rounding error)."""
    w = w16[:, :k].view(np.float16).astype(np.float64)
    xx = x[:, :k].astype(np.float64)
    return xx @ w.T, np.abs(xx) @ np.abs(w).T


def test_every_half_widens_exactly(lib):
    h = np.arange(65536, dtype=np.uint16)
    want = h.view(np.float16).astype(np.float32)
    got = np.array([lib.bitnet_f16_to_f32(int(v)) for v in h], dtype=np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(
        got[~nan].view(np.uint32), want[~nan].view(np.uint32)
    )  # incl. -0, subnormals


def test_default_path_and_selection(lib):
    name = lib.bitnet_f16_kernel_name().decode()
    assert name in PATHS
    assert lib.bitnet_f16_set_kernel(b"scalar") == 1
    assert lib.bitnet_f16_kernel_name() == b"scalar"
    assert lib.bitnet_f16_set_kernel(b"no-such-path") == 0
    assert lib.bitnet_f16_kernel_name() == b"scalar"  # unchanged
    assert lib.bitnet_f16_set_kernel(b"auto") == 1
    assert lib.bitnet_f16_kernel_name().decode() == name


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "k,nr,nt",
    [
        (1, 1, 1),
        (7, 3, 1),
        (16, 4, 1),
        (31, 5, 2),
        (128, 8, 3),
        (200, 17, 4),
        (2565, 9, 5),
        (64, 4, 7),
        # one token: the decode stream (rows one after another), with every tail length
        (100, 3, 1),
        (2565, 9, 1),
        (2560, 6, 1),
    ],
)
def test_matches_float64_reference(lib, path, k, nr, nt):
    rng = np.random.default_rng(k * 1000 + nr * 10 + nt)
    # padded rows (strides > k) check the strides; the padding holds NaN so reading it would show
    w16 = np.full((nr, k + 3), np.float16(np.nan), dtype=np.float16).view(np.uint16)
    w16[:, :k] = (rng.standard_normal((nr, k)) * 0.05).astype(np.float16).view(np.uint16)
    x = np.full((nt, k + 5), np.nan, dtype=np.float32)
    x[:, :k] = rng.standard_normal((nt, k)).astype(np.float32)
    with use(lib, path):
        y = mul_mat(lib, w16, x, k, y_stride=nr + 2)
    ref, mag = reference(w16, x, k)
    bound = k * 2.0**-24 * mag + 1e-30
    assert np.all(np.abs(y - ref) <= bound), np.max(np.abs(y - ref) / bound)


@pytest.mark.parametrize("path", PATHS)
def test_exact_when_sums_are_representable(lib, path):
    # small integers: every product and partial sum is an exact float32, so any order gives
    # the same bits
    rng = np.random.default_rng(3)
    k, nr, nt = 1000, 13, 3
    w16 = rng.integers(-8, 9, size=(nr, k)).astype(np.float16).view(np.uint16)
    x = rng.integers(-16, 17, size=(nt, k)).astype(np.float32)
    with use(lib, path):
        y = mul_mat(lib, w16, x, k)
    ref, _ = reference(w16, x, k)
    assert np.array_equal(y, ref.astype(np.float32))


@pytest.mark.parametrize("path", PATHS)
def test_special_values(lib, path):
    k = 40
    w16 = np.ones((4, k), dtype=np.float16)
    w16[1, 5] = np.float16(np.inf)
    w16[2, 7] = np.float16(np.nan)
    w16[3, :] = np.float16(6.0e-8)  # subnormal halves
    x = np.ones((1, k), dtype=np.float32)
    with use(lib, path):
        y = mul_mat(lib, w16.view(np.uint16), x, k)[0]
    assert y[0] == k and np.isposinf(y[1]) and np.isnan(y[2])
    assert y[3] == np.float32(np.float16(6.0e-8).astype(np.float32) * k)


def test_empty_sum_is_zero(lib):
    w16 = np.zeros((3, 1), dtype=np.uint16)
    x = np.zeros((2, 1), dtype=np.float32)
    assert np.array_equal(mul_mat(lib, w16, x, 0), np.zeros((2, 3), dtype=np.float32))
