"""TL1 / TL2 tiles other than default_tiling's, recorded in the tensor's tail: the C side.

`bitnet_tl_tail_tiling` reads the record the packers write (tools/quants/tiling.py), the C and
Python validity rules agree, and `bitnet_tl_mul_mat` computes bit-exactly with any valid tiling
(on every lookup path this CPU has), as `bitnet codegen --tune` and `convert --tuned` rely on.
"""

from __future__ import annotations

import ctypes
import re

import numpy as np
import pytest

from bitnet.tools import kernels_lib, quants
from bitnet.tools.quants import tiling
from bitnet.tools.quants.tiling import Tiling

#: (type, shape, tiles): valid, not default_tiling's. BM up to BITNET_TL_MAX_BM, TL1 bm 64 and
#: BK 256, TL2 BK 192 / 72 / 24 and two_k 0 / 32 / 64.
OTHER = [
    ("tl1", (64, 512), Tiling(64, 256, 32)),
    ("tl1", (128, 260), Tiling(64, 4, 64)),
    ("tl1", (320, 384), Tiling(64, 32, 64)),
    ("tl1", (1024, 64), Tiling(1024, 16, 32)),
    ("tl2", (32, 256), Tiling(32, 192, 32)),
    ("tl2", (96, 320), Tiling(32, 48, 32)),
    ("tl2", (320, 392), Tiling(320, 72, 32)),
    ("tl2", (1024, 264), Tiling(1024, 24, 32)),
]


def tail_tiling(tl, qtype: str, w: np.ndarray, m: int, k: int) -> tuple[int, tuple[int, ...]]:
    """bitnet_tl_tail_tiling through ctypes: (return code, (BM, BK, bm) written to *t)."""
    t = kernels_lib.TLTiling(0, 0, 7, 7, 7)
    w = np.ascontiguousarray(w, dtype=np.uint8)
    rc = tl._lib.bitnet_tl_tail_tiling(
        kernels_lib.TL_TYPES[qtype], ctypes.c_void_p(w.ctypes.data), m, k, ctypes.byref(t)
    )
    if rc == 1:
        assert (t.M, t.K) == (m, k)
    return rc, (t.BM, t.BK, t.bm)


def mul_mat_tiled(tl, qtype: str, w, shape, t: Tiling, q, d) -> np.ndarray:
    """TLKernels.mul_mat on a tensor packed with tiles `t` (it reads them from the record)."""
    got = tl.tensor_tiling(qtype, w, *shape)
    assert (got.BM, got.BK, got.bm) == (t.BM, t.BK, t.bm) and tl.valid(qtype, got)
    return tl.mul_mat(qtype, w, shape, q, d)


def ref_tl(codes: np.ndarray, scale: float, q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """y[t, r] = (float)(Σ w·q) / d_t · scale (the contract of kernels/bitnet-tl.h)."""
    acc = q.astype(np.int64) @ codes.astype(np.int64).T
    return acc.astype(np.float32) / d[:, None] * np.float32(scale)


# --- the record ---------------------------------------------------------------------------------


def test_record_constants_match_c() -> None:
    head = (kernels_lib.kernels_dir() / "bitnet-tl.h").read_text()
    internal = (kernels_lib.kernels_dir() / "bitnet-tl-internal.h").read_text()
    rec = re.search(r"#define BITNET_TL_TILE_RECORD (\d+)", head)
    max_bm = re.search(r"#define BITNET_TL_MAX_BM (\d+)", internal)
    assert int(rec.group(1)) == tiling.TILE_RECORD_OFFSET
    assert int(max_bm.group(1)) == tiling.KERNEL_MAX_BM


@pytest.mark.parametrize(("qtype", "shape", "t"), OTHER)
def test_tail_tiling_reads_the_record(tl, qtype: str, shape, t: Tiling) -> None:
    m, k = shape
    qt = quants.get(qtype)
    codes = np.zeros(shape, np.int8)
    w = qt.pack(codes, 0.5, tiling=t)
    assert tail_tiling(tl, qtype, w, m, k) == (1, (t.BM, t.BK, t.bm))
    d = qt.tiling(shape)
    assert tail_tiling(tl, qtype, qt.pack(codes, 0.5), m, k) == (1, (d.BM, d.BK, d.bm))
    old = w.copy()
    old[-28:-16] = 0  # a file from before the record
    assert tail_tiling(tl, qtype, old, m, k)[0] == 0
    assert tl.scale(qtype, old, m, k) == np.float32(0.5)  # the scale is untouched by the record


BAD_RECORDS = [[48, 128, 32], [64, 100, 32], [64, 96, 48], [2048, 96, 32], [0xFFFFFFFF, 96, 32],
               [0, 96, 32], [64, 0, 0]]  # fmt: skip


@pytest.mark.parametrize("record", BAD_RECORDS)
def test_tail_tiling_refuses_an_invalid_record(tl, record) -> None:
    for qtype in ("tl1", "tl2"):
        w = quants.get(qtype).pack(np.zeros((64, 384), np.int8), 1.0)
        w[-28:-16] = np.array(record, "<u4").view(np.uint8)
        rc, got = tail_tiling(tl, qtype, w, 64, 384)
        assert rc == -1
        assert got == tuple(min(v, 2**31 - 1) for v in record)  # for the error message
        assert tiling.tiling_error(64, 384, qtype, Tiling(*record)) is not None


def test_c_and_python_agree_on_which_tilings_are_valid(tl) -> None:
    grid = [(bm_tile, bk, bm) for bm_tile in (16, 32, 48, 64, 96, 128, 192, 256, 512, 1024, 2048)
            for bk in (4, 8, 16, 24, 32, 48, 64, 72, 96, 100, 128, 144, 168, 192, 216, 256, 512)
            for bm in (16, 32, 48, 64)]  # fmt: skip
    for m, k in [(64, 256), (96, 200), (1024, 264), (2048, 392), (128, 128), (512, 4096)]:
        for qtype in ("tl1", "tl2"):
            for t in grid:
                c_ok = tl.valid(qtype, kernels_lib.TLTiling(m, k, *t))
                assert c_ok == (tiling.tiling_error(m, k, qtype, Tiling(*t)) is None), (qtype, t)
            for t in tiling.candidate_tilings(m, k, qtype):  # what --tune tries is all valid
                assert tl.valid(qtype, kernels_lib.TLTiling(m, k, t.BM, t.BK, t.bm))


# --- the matrix product with other tiles --------------------------------------------------------


@pytest.mark.parametrize(("qtype", "shape", "t"), OTHER)
@pytest.mark.parametrize("nt", [1, 3, 17])
def test_mul_mat_other_tilings_bit_exact(
    tl, tl_path: str, qtype: str, shape, t: Tiling, nt
) -> None:
    m, k = shape
    rng = np.random.default_rng([m, k, nt, t.BM, t.BK])
    codes = rng.integers(-1, 2, size=shape).astype(np.int8)
    x = rng.standard_normal((nt, k)).astype(np.float32)
    x *= np.float32(10.0) ** rng.uniform(-2, 2, size=(nt, 1)).astype(np.float32)
    q, d = tl.quantize_rows(x)
    w = quants.get(qtype).pack(codes, 0.75, tiling=t)
    want = ref_tl(codes, 0.75, q, d)
    got = mul_mat_tiled(tl, qtype, w, shape, t, q, d)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_mul_mat_extreme_activations_with_the_largest_tiles(tl, tl_path: str) -> None:
    """int16 LUT sums at their limits with TL1 BK 256 and TL2 BK 192 (never default)."""
    for qtype, shape, t in [("tl1", (64, 512), Tiling(64, 256, 32)),
                            ("tl2", (64, 448), Tiling(64, 192, 32))]:  # fmt: skip
        k = shape[1]
        q = np.full((3, k), -128, np.int8)
        q[1] = 127
        q[2, ::2] = 127
        d = np.array([1.0, 0.5, 3.0], np.float32)
        for fill in (-1, 1):
            codes = np.full(shape, fill, np.int8)
            w = quants.get(qtype).pack(codes, 1.5, tiling=t)
            got = mul_mat_tiled(tl, qtype, w, shape, t, q, d)
            want = ref_tl(codes, 1.5, q, d)
            np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
