"""Bit-exact tests of the I2_S C kernels (kernels/*.c) against a NumPy model of the C contract.

The NumPy functions below restate kernels/bitnet-kernels.h (ref: shared/spec/bitnet-formats.md
§2.4 activation quantization, §2.5 output formula); weights are packed with the project's I2_S
packer (`bitnet.tools.quants`), so the kernels and the packer must agree on the byte layout.
Every kernel path this CPU can run is tested; the others are skipped with the reason. The NEON
paths are cross-compiled and run under qemu-user when those tools are installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from arm_helpers import cross_build, qemu

from bitnet.tools import kernels_lib, quants
from bitnet.tools.constants import QK_I2_S
from bitnet.tools.errors import BuildError, ShapeError, ToolchainError, UsageError

QK = 128
BLOCK = kernels_lib.BLOCK_I8S


# --- the NumPy model of the contract -------------------------------------------------------------


def ref_quantize(x: np.ndarray) -> np.ndarray:
    """I8_S blocks of each row: d = 127 / max(max|x|, 1e-5), q = clip(rint(x·d)) in float32."""
    x = np.asarray(x, dtype=np.float32)
    nt, k = x.shape
    amax = np.max(np.abs(x), axis=1).astype(np.float64)
    d = (127.0 / np.maximum(amax, 1e-5)).astype(np.float32)
    q = np.clip(np.rint(x * d[:, None]), -128, 127).astype(np.int8)  # float32 product, ties even
    out = np.zeros((nt, k // QK), dtype=BLOCK)
    out["qs"] = q.reshape(nt, k // QK, QK)
    out["d"] = d[:, None]
    out["sum"] = out["qs"].astype(np.int32).sum(axis=-1)
    return out


def ref_mul_mat(values: np.ndarray, w_scale: float, acts: np.ndarray) -> np.ndarray:
    """y[t, r] = (float)(Σ code·q − Σq) / d_t · w_scale, float32 ops in that order."""
    nt = acts.shape[0]
    q = acts["qs"].reshape(nt, -1).astype(np.int64)
    raw = q @ (values.astype(np.int64) + 1).T  # codes = value + 1 in 0..2
    act_sum = acts["sum"].astype(np.int64).sum(axis=1)
    diff = raw - act_sum[:, None]
    assert np.all(np.abs(diff) < 2**31)
    d = acts["d"][:, 0].astype(np.float32)
    return diff.astype(np.float32) / d[:, None] * np.float32(w_scale)


def pack(values: np.ndarray) -> np.ndarray:
    """I2_S code bytes (nr, k/4) of a ternary matrix, from the project's packer."""
    nr, k = values.shape
    data = quants.get("i2_s").pack(values.astype(np.int8), 1.0)
    return data[: nr * k // 4].reshape(nr, k // 4)


def random_values(rng: np.random.Generator, nr: int, k: int) -> np.ndarray:
    return rng.integers(-1, 2, size=(nr, k)).astype(np.int8)


def random_acts(rng: np.random.Generator, nt: int, k: int) -> np.ndarray:
    """Rows with very different scales, some with an outlier (like real activations)."""
    x = rng.standard_normal((nt, k)).astype(np.float32)
    x *= np.float32(10.0) ** rng.uniform(-3, 3, size=(nt, 1)).astype(np.float32)
    x[::2, rng.integers(0, k)] *= 40
    return x


def blocks_with(qs: np.ndarray, d: float = 1.0) -> np.ndarray:
    """I8_S blocks from given int8 values (nt, k), e.g. extremes the quantizer never produces."""
    nt, k = qs.shape
    out = np.zeros((nt, k // QK), dtype=BLOCK)
    out["qs"] = qs.reshape(nt, k // QK, QK)
    out["d"] = np.float32(d)
    out["sum"] = out["qs"].astype(np.int32).sum(axis=-1)
    return out


def assert_blocks_equal(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_array_equal(got["qs"], want["qs"])
    np.testing.assert_array_equal(got["d"].view(np.uint32), want["d"].view(np.uint32))
    np.testing.assert_array_equal(got["sum"], want["sum"])


def assert_bits_equal(got: np.ndarray, want: np.ndarray) -> None:
    """Equal as float32 bit patterns (so -0.0 vs 0.0 or a NaN would fail too)."""
    assert got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint32), want.astype(np.float32).view(np.uint32))


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lib() -> kernels_lib.KernelLib:
    try:
        return kernels_lib.load()
    except ToolchainError as e:
        pytest.skip(f"no C compiler to build the kernel library: {e}")


@pytest.fixture(params=kernels_lib.KERNEL_NAMES)
def path(request: pytest.FixtureRequest, lib: kernels_lib.KernelLib):
    """Each kernel path in turn, forced with bitnet_set_kernel; skipped where it cannot run."""
    name = request.param
    if not lib.set_kernel(name):
        pytest.skip(f"kernel path {name!r} is not available on this CPU/build")
    yield name
    lib.set_kernel(None)


# --- dispatch ------------------------------------------------------------------------------------


def test_dispatch_names(lib: kernels_lib.KernelLib) -> None:
    lib.set_kernel(None)
    default = lib.kernel_name()
    available = lib.available()
    assert "scalar" in available and default in available
    assert default != "avx512vnni-nogfni"  # test-only entry, never the default
    assert not lib.set_kernel("no-such-path")
    assert lib.kernel_name() == default  # a refused name changes nothing
    with lib.use("scalar"):
        assert lib.kernel_name() == "scalar"
    assert lib.kernel_name() == default
    with pytest.raises(UsageError):
        with lib.use("no-such-path"):
            pass


# --- activation quantization -------------------------------------------------------------------


@pytest.mark.parametrize("k", [128, 384, 2560])
def test_quantize_random(lib: kernels_lib.KernelLib, path: str, k: int) -> None:
    x = random_acts(np.random.default_rng(k), 5, k)
    assert_blocks_equal(lib.quantize_rows(x), ref_quantize(x))


def test_quantize_ties_round_to_even(lib: kernels_lib.KernelLib, path: str) -> None:
    # max|x| = 127 makes d exactly 1, so x·d = x and the halves are exact ties
    halves = np.arange(-126.5, 127.0, 1.0, dtype=np.float32)  # -126.5 … 126.5
    x = np.zeros((1, 256), dtype=np.float32)
    x[0, 0] = 127.0
    x[0, 1 : 1 + halves.size] = halves
    got = lib.quantize_rows(x)
    assert got["d"][0, 0] == 1.0
    assert_blocks_equal(got, ref_quantize(x))
    q = got["qs"].reshape(-1)[1 : 1 + halves.size].astype(np.int32)
    assert np.all(q % 2 == 0)  # every tie went to the even neighbour


def test_quantize_zero_row(lib: kernels_lib.KernelLib, path: str) -> None:
    got = lib.quantize_rows(np.zeros((2, 256), dtype=np.float32))
    assert np.all(got["qs"] == 0) and np.all(got["sum"] == 0)
    assert np.all(got["d"] == np.float32(127.0 / 1e-5))  # clamped, not a division by zero
    assert np.all(np.isfinite(got["d"]))


def test_quantize_tiny_and_huge_rows(lib: kernels_lib.KernelLib, path: str) -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 512)).astype(np.float32)
    x[0] *= 1e-9  # below the 1e-5 clamp: d = 127/1e-5
    x[1] *= 1e30
    x[2] = -(x[2] ** 2)  # all negative: the extreme maps to exactly -127
    x[3, :] = 3.0  # constant row: every q is 127
    assert_blocks_equal(lib.quantize_rows(x), ref_quantize(x))


def test_quantize_paths_agree(lib: kernels_lib.KernelLib) -> None:
    x = random_acts(np.random.default_rng(3), 9, 6912)
    results = []
    for name in lib.available():
        with lib.use(name):
            results.append(lib.quantize_rows(x))
    for got in results[1:]:
        assert_blocks_equal(got, results[0])


# --- matrix product -----------------------------------------------------------------------------

# (k, nr, nt): every k the models use plus the edge cases, nr and nt odd and even, below and above
# every tile size (8 rows / 2 rows × 8 tokens / 1 row × 8 tokens), every token tail of an 8-token
# group (nt % 8 = 1..7), and k needing more than one chunk.
SHAPES = [
    (128, 1, 1),
    (128, 3, 5),
    (256, 5, 3),
    (384, 17, 1),
    (384, 64, 17),
    (2560, 1, 64),
    (2560, 17, 9),
    (2560, 64, 1),
    (2560, 33, 16),
    (2560, 9, 14),
    (256, 3, 15),
    (384, 5, 12),
    (6912, 5, 17),
    (6912, 64, 3),
    (8192 + 128, 3, 1),
    (8192 + 128, 17, 5),
    (32768 + 128, 3, 1),
    (32768 + 128, 9, 2),
]


@pytest.mark.parametrize(("k", "nr", "nt"), SHAPES)
def test_mul_mat_random(lib: kernels_lib.KernelLib, path: str, k: int, nr: int, nt: int) -> None:
    rng = np.random.default_rng(k * 1000 + nr * 10 + nt)
    values = random_values(rng, nr, k)
    acts = ref_quantize(random_acts(rng, nt, k))
    w_scale = float(rng.uniform(0.01, 3.0))
    y = lib.mul_mat(pack(values), w_scale, acts)
    assert_bits_equal(y, ref_mul_mat(values, w_scale, acts))


@pytest.mark.parametrize("fill", [-1, 0, 1])
def test_mul_mat_constant_weights(lib: kernels_lib.KernelLib, path: str, fill: int) -> None:
    rng = np.random.default_rng(fill + 5)
    k, nr, nt = 2560, 19, 11
    values = np.full((nr, k), fill, dtype=np.int8)
    acts = ref_quantize(random_acts(rng, nt, k))
    y = lib.mul_mat(pack(values), 0.75, acts)
    assert_bits_equal(y, ref_mul_mat(values, 0.75, acts))
    if fill == 0:
        assert np.all(y == 0)


def test_mul_mat_zero_activations(lib: kernels_lib.KernelLib, path: str) -> None:
    values = random_values(np.random.default_rng(1), 9, 512)
    acts = lib.quantize_rows(np.zeros((3, 512), dtype=np.float32))
    y = lib.mul_mat(pack(values), 1.5, acts)
    assert np.all(y == 0) and not np.any(np.signbit(y))


@pytest.mark.parametrize("k", [8192 + 128, 16384])
@pytest.mark.parametrize("act", [127, -128])
def test_mul_mat_extremes_do_not_overflow(
    lib: kernels_lib.KernelLib, path: str, k: int, act: int
) -> None:
    # all codes 2 (value +1) with every activation at the int8 limit: the largest |partial sums|
    # any kernel sees (|maddubs pair| = 512 on AVX2; spec fast-kernels §4 "int16 sums")
    nr, nt = 9, 11  # one full 8-token tile and a 3-token tail
    values = np.ones((nr, k), dtype=np.int8)
    acts = blocks_with(np.full((nt, k), act, dtype=np.int8))
    y = lib.mul_mat(pack(values), 1.0, acts)
    assert_bits_equal(y, ref_mul_mat(values, 1.0, acts))
    # value +1 everywhere: y = Σq = k·act exactly (k·128 < 2^24, so float32 holds it)
    assert np.all(y == np.float32(k * act))


def test_mul_mat_mixed_extremes(lib: kernels_lib.KernelLib, path: str) -> None:
    # activations alternating between the limits block by block and group by group
    k, nr, nt = 4096, 8, 2
    rng = np.random.default_rng(11)
    qs = np.where(rng.random((nt, k)) < 0.5, 127, -128).astype(np.int8)
    qs[:, : k // 2] = -128
    values = np.where(rng.random((nr, k)) < 0.9, 1, -1).astype(np.int8)
    acts = blocks_with(qs, d=0.25)
    y = lib.mul_mat(pack(values), 2.0, acts)
    assert_bits_equal(y, ref_mul_mat(values, 2.0, acts))


def test_mul_mat_output_stride(lib: kernels_lib.KernelLib, path: str) -> None:
    rng = np.random.default_rng(5)
    k, nr, nt = 384, 13, 10
    values = random_values(rng, nr, k)
    acts = ref_quantize(random_acts(rng, nt, k))
    out = np.full((nt, nr + 7), np.float32(-7.0))
    lib.mul_mat(pack(values), 0.5, acts, out=out)
    assert_bits_equal(out[:, :nr].copy(), ref_mul_mat(values, 0.5, acts))
    assert np.all(out[:, nr:] == -7.0)  # y_stride respected: nothing written past nr


def test_mul_mat_end_to_end_from_floats(lib: kernels_lib.KernelLib) -> None:
    """Through quantize_rows and the default path, y approximates the float product W·x."""
    rng = np.random.default_rng(9)
    values = random_values(rng, 32, 1024)
    x = rng.standard_normal((4, 1024)).astype(np.float32)
    y = lib.mul_mat(pack(values), 0.5, lib.quantize_rows(x))
    exact = x @ (values.astype(np.float32) * 0.5).T
    np.testing.assert_allclose(y, exact, rtol=0.05, atol=0.05 * np.abs(exact).max())


def test_mul_mat_paths_agree_on_row_subsets(lib: kernels_lib.KernelLib) -> None:
    """A caller splitting rows across threads (w + r*k/4, y + r) gets the same numbers."""
    rng = np.random.default_rng(21)
    k, nr, nt = 2560, 40, 9
    values = random_values(rng, nr, k)
    w = pack(values)
    acts = ref_quantize(random_acts(rng, nt, k))
    want = ref_mul_mat(values, 1.25, acts)
    for name in lib.available():
        with lib.use(name):
            out = np.empty((nt, nr), dtype=np.float32)
            for r0, r1 in [(0, 13), (13, 14), (14, 40)]:
                part = lib.mul_mat(w[r0:r1], 1.25, acts)
                out[:, r0:r1] = part
            assert_bits_equal(out, want)


def test_mul_mat_rejects_bad_shapes(lib: kernels_lib.KernelLib) -> None:
    acts = ref_quantize(np.ones((1, 256), dtype=np.float32))
    with pytest.raises(ShapeError):
        lib.mul_mat(np.zeros((2, 32), dtype=np.uint8), 1.0, acts)  # k = 128 vs 256
    with pytest.raises(ShapeError):
        lib.quantize_rows(np.zeros((1, 100), dtype=np.float32))


# --- the library build ----------------------------------------------------------------------------


def test_header_matches_python_constants() -> None:
    header = (kernels_lib.kernels_dir() / "bitnet-kernels.h").read_text()
    m = re.search(r"#define BITNET_QK_I2S (\d+)", header)
    assert m and int(m.group(1)) == QK_I2_S
    assert BLOCK.itemsize == 136 and "int8_t qs[128]; float d; int32_t sum;" in header


@pytest.mark.slow
def test_cmake_standalone_build(tmp_path: Path) -> None:
    """kernels/CMakeLists.txt builds the same library; it loads and agrees with NumPy."""
    cmake = shutil.which("cmake", path=str(Path(sys.executable).parent)) or shutil.which("cmake")
    if cmake is None or shutil.which("cc") is None:
        pytest.skip("cmake or cc not installed")
    build = tmp_path / "build"
    for cmd in (
        [cmake, "-S", str(kernels_lib.kernels_dir()), "-B", str(build)],
        [cmake, "--build", str(build)],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    lib = kernels_lib.KernelLib(next(build.glob("libbitnetkernels.*")))
    rng = np.random.default_rng(2)
    values = random_values(rng, 11, 2560)
    acts = ref_quantize(random_acts(rng, 3, 2560))
    assert_bits_equal(lib.mul_mat(pack(values), 0.5, acts), ref_mul_mat(values, 0.5, acts))


def test_build_reports_missing_compiler(tmp_path: Path) -> None:
    with pytest.raises(ToolchainError) as e:
        kernels_lib.build_library(cc="no-such-compiler-xyz", cache_dir=tmp_path)
    assert e.value.hint


def test_build_reports_compile_failure(tmp_path: Path) -> None:
    if shutil.which("cc") is None:
        pytest.skip("no cc")
    with pytest.raises(BuildError) as e:
        kernels_lib.build_library(cflags=("-O2", "--no-such-flag-xyz"), cache_dir=tmp_path)
    assert "failed" in str(e.value)
    assert not list(tmp_path.rglob("*.so")) and not list(tmp_path.rglob("*.tmp"))


# --- NEON under qemu-user -----------------------------------------------------------------------

# Reads inputs from files, writes the quantized activations and y (see _run_neon).
NEON_DRIVER = r"""
#include "bitnet-kernels.h"
int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--name") == 0) { puts(bitnet_kernel_name()); return 0; }
    if (argc == 3 && strcmp(argv[1], "--has") == 0) return bitnet_set_kernel(argv[2]) ? 0 : 1;
    if (argc != 10) return 2;
    if (!bitnet_set_kernel(argv[1])) return 3;
    const long k = atol(argv[2]), nr = atol(argv[3]), nt = atol(argv[4]);
    const float w_scale = (float)atof(argv[5]);
    const unsigned char *w = slurp(argv[6], (size_t)(nr * k / 4));
    const float *x = slurp(argv[7], (size_t)(nt * k) * 4);
    const long nb = k / BITNET_QK_I2S;
    bitnet_block_i8s *a = malloc(sizeof *a * (size_t)(nt * nb));
    for (long t = 0; t < nt; t++) bitnet_quantize_row_i8s(x + t * k, a + t * nb, k);
    float *y = malloc(sizeof *y * (size_t)(nt * nr));
    bitnet_i2s_mul_mat(k, nr, nt, w, w_scale, a, y, nr);
    spill(argv[8], a, sizeof *a * (size_t)(nt * nb));
    spill(argv[9], y, sizeof *y * (size_t)(nt * nr));
    return 0;
}
"""


@pytest.fixture(scope="module")
def neon_driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("neon")
    return cross_build(d, NEON_DRIVER, kernels_lib.sources(), "NEON paths")


def test_neon_dispatch(neon_driver: Path) -> None:
    assert qemu(neon_driver, "--name").stdout.strip() == "neon-dotprod"
    # a CPU without the dot-product extension falls back at run time (hwcaps)
    assert qemu(neon_driver, "--name", cpu="cortex-a53").stdout.strip() == "neon"
    assert qemu(neon_driver, "--has", "neon-dotprod", cpu="cortex-a53").returncode == 1
    assert qemu(neon_driver, "--has", "avx2").returncode == 1


@pytest.mark.parametrize("name", ["neon", "neon-dotprod", "scalar"])
def test_neon_paths_bit_exact(neon_driver: Path, tmp_path: Path, name: str) -> None:
    rng = np.random.default_rng(31)
    for k, nr, nt, extreme in [
        (128, 3, 1, False),
        (2560, 17, 5, False),
        (6912, 9, 2, False),
        (8192 + 128, 5, 3, True),
    ]:
        values = np.ones((nr, k), np.int8) if extreme else random_values(rng, nr, k)
        x = random_acts(rng, nt, k)
        if extreme:
            x[:] = -1.0  # every q = -127 with codes 2: the widest partial sums
        pack(values).tofile(tmp_path / "w.bin")
        x.tofile(tmp_path / "x.bin")
        args = [
            name,
            str(k),
            str(nr),
            str(nt),
            "0.625",
            str(tmp_path / "w.bin"),
            str(tmp_path / "x.bin"),
            str(tmp_path / "a.bin"),
            str(tmp_path / "y.bin"),
        ]
        proc = qemu(neon_driver, *args)
        assert proc.returncode == 0, (proc.returncode, proc.stderr)
        acts = np.fromfile(tmp_path / "a.bin", dtype=BLOCK).reshape(nt, k // QK)
        y = np.fromfile(tmp_path / "y.bin", dtype=np.float32).reshape(nt, nr)
        assert_blocks_equal(acts, ref_quantize(x))
        assert_bits_equal(y, ref_mul_mat(values, 0.625, acts))
