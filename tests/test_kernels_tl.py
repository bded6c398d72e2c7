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


@pytest.mark.parametrize("k", [8, 45, 200, 256, 392, 2560])
def test_quantize_matches_reference(tl: kernels_lib.TLKernels, tl_path: str, k: int) -> None:
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
def test_mul_mat_random(tl, tl_path: str, qtype: str, shape, nt: int) -> None:
    rng = np.random.default_rng(hash((qtype, shape, nt)) % 2**32)
    m, k = shape
    codes = rng.integers(-1, 2, size=shape).astype(np.int8)
    scale = float(np.float32(rng.uniform(0.01, 3)))
    q, d = ref_quantize_tl(random_acts(rng, nt, k))
    got = tl.mul_mat(qtype, pack(qtype, codes, scale), shape, q, d)
    assert_bits_equal(got, ref_tl(codes, scale, q, d))


@pytest.mark.parametrize(("qtype", "shape"), ALL)
@pytest.mark.parametrize("fill", [-1, 0, 1])
def test_mul_mat_constant_weights_and_extremes(
    tl, tl_path: str, qtype: str, shape, fill: int
) -> None:
    m, k = shape
    codes = np.full(shape, fill, np.int8)
    q = np.full((3, k), -128, np.int8)
    q[1] = 127
    q[2, ::2] = 127  # alternating extremes
    d = np.array([1.0, 0.5, 3.0], np.float32)
    got = tl.mul_mat(qtype, pack(qtype, codes, 1.5), shape, q, d)
    assert_bits_equal(got, ref_tl(codes, 1.5, q, d))


@pytest.mark.parametrize(("qtype", "shape"), ALL)
def test_mul_mat_zero_activations(tl, tl_path: str, qtype: str, shape) -> None:
    m, k = shape
    codes = np.random.default_rng(0).integers(-1, 2, size=shape).astype(np.int8)
    q, d = tl.quantize_rows(np.zeros((3, k), np.float32))
    got = tl.mul_mat(qtype, pack(qtype, codes, 0.7), shape, q, d)
    assert np.isfinite(d).all()
    assert_bits_equal(got, np.zeros((3, m), np.float32))


@pytest.mark.parametrize("qtype", ["tl1", "tl2"])
def test_mul_mat_tile_range_and_stride(tl, tl_path: str, qtype: str) -> None:
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


# TL2 tilings default_tiling never picks but the kernels accept (bitnet_tl_tiling_valid): BK 192
# (the SIMD paths' largest K-tile buffers; AVX2's int16 sum of a K-tile reaches 64 * 384 = 24576),
# 168, 24 (one sign block per K-tile) and five two-part 32-column steps (two_k 160).
TL2_OTHER_TILINGS = [((64, 416), (32, 192)), ((96, 352), (96, 192)), ((64, 368), (64, 168)),
                     ((64, 288), (32, 24))]  # fmt: skip


@pytest.mark.parametrize(("shape", "tiles"), TL2_OTHER_TILINGS)
@pytest.mark.parametrize("nt", [1, 12])
def test_tl2_other_tilings(tl, tl_path: str, monkeypatch, shape, tiles, nt: int) -> None:
    from bitnet.tools.quants import tiling

    real = tiling.default_tiling

    def forced(m: int, k: int, qtype):
        if (m, k) == shape:
            return tiling.Tiling(BM=tiles[0], BK=tiles[1], bm=32)
        return real(m, k, qtype)

    monkeypatch.setattr(tiling, "default_tiling", forced)  # packer and kernel agree on it
    assert tl.valid("tl2", tl.tiling("tl2", *shape))
    rng = np.random.default_rng(shape[1] + nt)
    codes = rng.integers(-1, 2, size=shape).astype(np.int8)
    codes[: shape[0] // 2, : tiles[1]] = -1  # a full K-tile of -1 against all -128: |sum| max
    q, d = ref_quantize_tl(random_acts(rng, nt, shape[1]))
    q[0] = -128
    if nt > 2:
        q[1, ::2], q[1, 1::2] = 127, -128
    got = tl.mul_mat("tl2", pack("tl2", codes, 0.5), shape, q, d)
    assert_bits_equal(got, ref_tl(codes, 0.5, q, d))


# --- TL1 and TL2 on ARM under qemu-user ------------------------------------------------------
#
# One driver run computes every case of a manifest with one forced lookup path, so the whole
# matrix (2 paths x 2 CPUs, ~40 cases each) costs a handful of qemu runs.

TL_DRIVER = r"""
#include "bitnet-tl.h"
/* driver PATH MANIFEST OUTDIR: force lookup path PATH ("auto" = the best), print "path NAME",
 * then per manifest line `type M K BM BK bm nt mode in out`: mode x -> `in` holds nt*K float
 * activations (quantized here), mode q -> nt*K int8 q then nt float d; writes nt*M floats. */
int main(int argc, char **argv) {
    if (argc != 4) return 2;
    if (!bitnet_tl_set_kernel(argv[1])) return 7;
    printf("path %s\n", bitnet_tl_kernel_name());
    FILE *man = fopen(argv[2], "r");
    if (!man) return 4;
    int type, BM, BK, bm;
    long M, K, nt;
    char mode, in[1024], out[256], path[1400];
    while (fscanf(man, "%d %ld %ld %d %d %d %ld %c %1023s %255s", &type, &M, &K, &BM, &BK, &bm,
                  &nt, &mode, in, out) == 10) {
        bitnet_tl_tiling t = {M, K, BM, BK, bm};
        if (!bitnet_tl_tiling_valid(type, &t)) return 3;
        const uint8_t *w = NULL;
        const int64_t n = bitnet_tl_lut_len(type, &t);
        int16_t *lut = malloc(sizeof *lut * (size_t)(n * nt));
        float *d = malloc(sizeof *d * (size_t)nt), *y = malloc(sizeof *y * (size_t)(nt * M));
        snprintf(path, sizeof path, "%s.w", in);
        w = slurp(path, (size_t)bitnet_tl_nbytes(type, M, K));
        if (mode == 'x') {
            const float *x = slurp(in, sizeof(float) * (size_t)(nt * K));
            int8_t *q = malloc((size_t)K);
            for (long j = 0; j < nt; j++) {
                d[j] = bitnet_tl_quantize_row(x + j * K, q, K);
                bitnet_tl_build_lut(type, &t, q, lut + j * n);
            }
            free(q);
            free((void *)x);
        } else {
            const int8_t *q = slurp(in, (size_t)(nt * K) + sizeof(float) * (size_t)nt);
            memcpy(d, q + nt * K, sizeof(float) * (size_t)nt);
            for (long j = 0; j < nt; j++) bitnet_tl_build_lut(type, &t, q + j * K, lut + j * n);
            free((void *)q);
        }
        bitnet_tl_mul_mat(type, &t, 0, M / BM, nt, w, bitnet_tl_scale(type, w, M, K), lut, n, d,
                          y, M);
        snprintf(path, sizeof path, "%s/%s", argv[3], out);
        spill(path, y, sizeof(float) * (size_t)(nt * M));
        free((void *)w);
        free(lut);
        free(d);
        free(y);
    }
    fclose(man);
    return 0;
}
"""


def pack_tl1_tiled(codes: np.ndarray, scale: float, bm_tile: int, bk: int, bm: int) -> np.ndarray:
    """TL1 bytes for any valid tiling (the converter only writes `default_tiling`'s): pair codes
    in the order [M/BM][K/BK][BM/bm][BK/by][bm/16][by/4][16 rows] (docs/formats.md "TL1")."""
    m, k = codes.shape
    by = 256 // bm
    idx = (3 * codes[:, 0::2].astype(np.int64) + codes[:, 1::2] + 4).astype(np.uint8)
    grid = idx.reshape(m // bm_tile, bm_tile // bm, bm // 16, 16, k // bk, bk // by, by // 4, 2)
    grid = grid.transpose(0, 4, 1, 5, 2, 6, 3, 7)
    body = (grid[..., 0] << 4 | grid[..., 1]).reshape(-1)
    tail = np.zeros(32, np.uint8)
    tail[:4] = np.array([scale], np.float32).view(np.uint8)
    tail[4:16] = np.array([bm_tile, bk, bm], "<u4").view(np.uint8)  # the tile record
    return np.concatenate([body, tail])


def extreme_acts(k: int) -> tuple[np.ndarray, np.ndarray]:
    """q rows all -128, all 127, alternating 127/-128 (the int16 worst cases) and their d."""
    q = np.full((3, k), -128, np.int8)
    q[1] = 127
    q[2, ::2] = 127
    return q, np.array([1.0, 0.5, 3.0], np.float32)


def arm_cases(folder: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Writes the inputs and manifest of every ARM case; returns it and the expected outputs."""
    lines, want = [], {}

    def add(name, qtype, codes, scale, tiling, x=None, q=None, d=None) -> None:
        m, k = codes.shape
        w = pack(qtype, codes, scale) if tiling is None else pack_tl1_tiled(codes, scale, *tiling)
        t = tiling or tuple(getattr(kernels_lib.TLKernels.tiling(qtype, m, k), a)
                            for a in ("BM", "BK", "bm"))  # fmt: skip
        (folder / f"{name}.in.w").write_bytes(w.tobytes())
        if x is not None:
            (folder / f"{name}.in").write_bytes(x.tobytes())
            q, d = ref_quantize_tl(x)
        else:
            (folder / f"{name}.in").write_bytes(q.tobytes() + d.tobytes())
        nt, mode = q.shape[0], "x" if x is not None else "q"
        lines.append(f"{kernels_lib.TL_TYPES[qtype]} {m} {k} {t[0]} {t[1]} {t[2]} {nt} {mode} "
                     f"{folder / name}.in {name}.y")  # fmt: skip
        want[name] = ref_tl(codes, scale, q, d)

    rng = np.random.default_rng(2024)
    random_cases = [("tl1", s, nt) for s in [(32, 8), (64, 256), (128, 260), (320, 384)]
                    for nt in (1, 3, 8, 17)]  # fmt: skip
    random_cases += [("tl2", s, nt) for s in [(32, 256), (96, 320), (320, 392)]
                     for nt in (1, 3, 8, 17)]  # fmt: skip
    random_cases += [("tl1", (64, 256), 128), ("tl2", (32, 256), 128)]
    for qtype, shape, nt in random_cases:
        codes = rng.integers(-1, 2, size=shape).astype(np.int8)
        x = random_acts(rng, nt, shape[1])
        x[0] = 0.0  # an all-zero token
        add(f"{qtype}-{shape[0]}x{shape[1]}-nt{nt}", qtype, codes, 0.5, None, x=x)
    # constant weights with the extreme activations; the last shape uses BK = 256 (valid, never
    # picked by default_tiling): 128 pairs of 256 would overflow an unsplit int16 sum
    for qtype, shape, tiling in [("tl1", (128, 260), None), ("tl2", (96, 320), None),
                                 ("tl1", (64, 512), (64, 256, 32))]:  # fmt: skip
        q, d = extreme_acts(shape[1])
        for fill in (-1, 0, 1):
            codes = np.full(shape, fill, np.int8)
            tag = "bk256" if tiling else qtype
            add(f"{tag}-{shape[0]}x{shape[1]}-fill{fill}", qtype, codes, 1.5, tiling, q=q, d=d)
    manifest = folder / "manifest.txt"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, want


@pytest.fixture(scope="module")
def arm_driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tl-arm")
    srcs = sorted(kernels_lib.kernels_dir().glob("bitnet-tl*.c"))
    return cross_build(d, TL_DRIVER, srcs, "TL kernels on ARM")


@pytest.fixture(scope="module")
def arm_manifest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    return arm_cases(tmp_path_factory.mktemp("tl-arm-cases"))


def test_pack_tl1_tiled_matches_packer() -> None:
    """The test's any-tiling TL1 packer agrees with the converter's on the default tiling."""
    codes = np.random.default_rng(3).integers(-1, 2, size=(128, 260)).astype(np.int8)
    t = kernels_lib.TLKernels.tiling("tl1", 128, 260)
    got = pack_tl1_tiled(codes, 0.5, t.BM, t.BK, t.bm)
    np.testing.assert_array_equal(got, pack("tl1", codes, 0.5))


@pytest.mark.parametrize("cpu", ["max", "cortex-a53"])  # with and without dotprod
@pytest.mark.parametrize("kernel", ["neon", "scalar"])
def test_arm_qemu_bit_exact(arm_driver: Path, arm_manifest, tmp_path: Path, cpu: str, kernel):
    manifest, want = arm_manifest
    proc = qemu(arm_driver, kernel, manifest, tmp_path, cpu=cpu)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == f"path {kernel}"
    bad = []
    for name, y_ref in want.items():
        y = np.fromfile(tmp_path / f"{name}.y", dtype=np.float32).reshape(y_ref.shape)
        if not np.array_equal(y.view(np.uint32), y_ref.astype(np.float32).view(np.uint32)):
            bad.append(name)
    assert not bad, f"{kernel} on {cpu}: not bit-exact for {bad}"


def test_arm_qemu_path_choice(arm_driver: Path, tmp_path: Path) -> None:
    """NEON is baseline on aarch64: "auto" picks it; an x86 path is refused (exit 7)."""
    empty = tmp_path / "none.txt"
    empty.write_text("")
    proc = qemu(arm_driver, "auto", empty, tmp_path, cpu="cortex-a53")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "path neon"
    assert qemu(arm_driver, "avx2", empty, tmp_path).returncode == 7
