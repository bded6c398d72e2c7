"""Build and load the I2_S C kernels (`kernels/bitnet-*.c`) as a shared library, through ctypes.

The same sources are compiled into llama.cpp by the patch series; this standalone build exists so
that tests and benchmarks can call every kernel path directly:

    from bitnet.tools import kernels_lib
    lib = kernels_lib.load()                     # compiles once into the cache, then reuses it
    acts = lib.quantize_rows(x)                  # (nt, k) float32 -> (nt, k/128) I8_S blocks
    y = lib.mul_mat(w_bytes, w_scale, acts)      # (nr, k/4) uint8 I2_S codes -> (nt, nr) float32
    with lib.use("scalar"): ...                  # force one path (see lib.available())

The library lands in `~/.cache/bitnet/kernels-test/<hash>/libbitnetkernels.so` (the hash covers the
sources, the compiler and its flags), built with `cc -O2 -shared -fPIC` and renamed into place only
when complete, so concurrent test processes never see half a file.
ref: kernels/bitnet-kernels.h (the C contract), shared/spec/bitnet-formats.md §2.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from bitnet.tools.constants import QK_I2_S
from bitnet.tools.errors import BuildError, ShapeError, ToolchainError, UsageError

#: One I8_S activation block, laid out like `bitnet_block_i8s` (136 bytes, no padding).
BLOCK_I8S = np.dtype([("qs", np.int8, (QK_I2_S,)), ("d", "<f4"), ("sum", "<i4")])
#: Every path name the C library knows; `KernelLib.available()` says which run on this CPU.
KERNEL_NAMES: tuple[str, ...] = (
    "scalar",
    "avx2",
    "avx512vnni",
    "avx512vnni-nogfni",  # test-only: the AVX-512 path without GFNI (Cascade Lake)
    "neon",
    "neon-dotprod",
)
#: Compiler flags of the test library (the SIMD paths carry their own target attributes).
CFLAGS: tuple[str, ...] = ("-O2", "-std=c11", "-shared", "-fPIC")
LIB_NAME = "libbitnetkernels.so"
#: `$BITNET_SANITIZE` (e.g. "address,undefined", or "thread") builds the library with those
#: sanitizers, every finding fatal. A Python process loading an ASan build needs the runtime
#: preloaded: LD_PRELOAD=$(cc -print-file-name=libasan.so) (.ci/run does this).
SANITIZE_ENV = "BITNET_SANITIZE"


def sanitizer_flags() -> tuple[str, ...]:
    """The extra compiler flags `$BITNET_SANITIZE` asks for (none when unset)."""
    san = os.environ.get(SANITIZE_ENV, "").strip()
    if not san:
        return ()
    return (f"-fsanitize={san}", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g")


def kernels_dir() -> Path:
    """The folder holding the C sources (`bitnet.kernels`, i.e. the repository's `kernels/`)."""
    from bitnet import kernels

    return Path(kernels.__file__).resolve().parent


def sources() -> list[Path]:
    """The C files compiled into the library: `kernels/bitnet-*.c` (what llama.cpp gets too)."""
    return sorted(kernels_dir().glob("bitnet-*.c"))


def cache_root() -> Path:
    """`$XDG_CACHE_HOME/bitnet/kernels-test` (by default `~/.cache/bitnet/kernels-test`)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bitnet" / "kernels-test"


def _build_key(cc: str, cflags: Sequence[str]) -> str:
    """Hash of everything the binary depends on: compiler, flags, and every .c/.h byte."""
    h = hashlib.sha256()
    h.update(f"{cc}\0{' '.join(cflags)}\0".encode())
    for path in sorted(kernels_dir().glob("bitnet-*.[ch]")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build_library(
    cc: str | None = None,
    cflags: Sequence[str] | None = None,
    cache_dir: Path | None = None,
    force: bool = False,
) -> Path:
    """Compile `kernels/bitnet-*.c` into a shared library (once per source hash); return its path.

    `cc` defaults to `$CC`, then `cc`; `cflags` to CFLAGS plus `sanitizer_flags()`. Raises
    ToolchainError when the compiler is missing and BuildError (with the compiler's last message)
    when compilation fails.
    """
    cc = cc or os.environ.get("CC") or "cc"
    cflags = (*CFLAGS, *sanitizer_flags()) if cflags is None else tuple(cflags)
    if shutil.which(cc) is None:
        raise ToolchainError(
            f"the C compiler {cc!r} was not found.",
            hint="install one (apt-get install gcc) or point $CC at it",
        )
    out_dir = (cache_dir or cache_root()) / _build_key(cc, cflags)
    lib = out_dir / LIB_NAME
    if lib.exists() and not force:
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{LIB_NAME}.{os.getpid()}.tmp"
    cmd = [cc, *cflags, *map(str, sources()), "-o", str(tmp), "-lm"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            last = lines[-1] if lines else f"exit code {proc.returncode}"
            raise BuildError(
                f"compiling the kernel test library failed: {last}",
                hint=f"run `{' '.join(cmd)}` to see every message",
            )
        os.replace(tmp, lib)  # atomic: other processes see the old state or the whole file
    finally:
        tmp.unlink(missing_ok=True)
    return lib


def _c_ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


class _PathChoice:
    """Choosing among the kernel paths of one family in the loaded C library.

    The family's C functions are `<_prefix>_kernel_name()` and `<_prefix>_set_kernel(name)`.
    """

    _lib: ctypes.CDLL
    _prefix = "bitnet"
    _names: tuple[str, ...] = KERNEL_NAMES
    _what = "kernel path"

    def kernel_name(self) -> str:
        """The path in use, e.g. "scalar", "avx2", "avx512vnni", "neon" or "neon-dotprod"."""
        return getattr(self._lib, f"{self._prefix}_kernel_name")().decode()

    def set_kernel(self, name: str | None) -> bool:
        """Force a path (None or "auto": the best one); False if it cannot run here."""
        arg = None if name is None else name.encode()
        return bool(getattr(self._lib, f"{self._prefix}_set_kernel")(arg))

    def available(self) -> list[str]:
        """The paths this library has and this CPU can run (in `_names` order)."""
        current = self.kernel_name()
        names = [n for n in self._names if self.set_kernel(n)]
        self.set_kernel(current)
        return names

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[None]:
        """Run the block with path `name`; raises UsageError if it is unavailable here."""
        previous = self.kernel_name()
        if not self.set_kernel(name):
            raise UsageError(
                f"{self._what} {name!r} is not available on this CPU or in this build.",
                hint=f"choose one of {', '.join(self.available())}",
            )
        try:
            yield
        finally:
            self.set_kernel(previous)


class KernelLib(_PathChoice):
    """The loaded library with NumPy-friendly wrappers of `kernels/bitnet-kernels.h`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lib = ctypes.CDLL(str(self.path))
        i64, vp = ctypes.c_int64, ctypes.c_void_p
        self._lib.bitnet_quantize_row_i8s.argtypes = [vp, vp, i64]
        self._lib.bitnet_quantize_row_i8s.restype = None
        self._lib.bitnet_i2s_mul_mat.argtypes = [i64, i64, i64, vp, ctypes.c_float, vp, vp, i64]
        self._lib.bitnet_i2s_mul_mat.restype = None
        self._lib.bitnet_kernel_name.argtypes = []
        self._lib.bitnet_kernel_name.restype = ctypes.c_char_p
        self._lib.bitnet_set_kernel.argtypes = [ctypes.c_char_p]
        self._lib.bitnet_set_kernel.restype = ctypes.c_int
        _declare_tl(self._lib)

    # --- the kernels ------------------------------------------------------------------------
    def quantize_rows(self, x: np.ndarray) -> np.ndarray:
        """Quantize each row of `x` (nt, k) to I8_S: BLOCK_I8S blocks of shape (nt, k/128)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        nt, k = x.shape
        if k % QK_I2_S or k == 0:
            raise ShapeError(f"activation rows have {k} elements, not a positive multiple of 128.")
        out = np.zeros((nt, k // QK_I2_S), dtype=BLOCK_I8S)
        row_bytes = (k // QK_I2_S) * BLOCK_I8S.itemsize
        for t in range(nt):
            self._lib.bitnet_quantize_row_i8s(
                ctypes.c_void_p(x.ctypes.data + t * k * 4),
                ctypes.c_void_p(out.ctypes.data + t * row_bytes),
                k,
            )
        return out

    def mul_mat(
        self,
        w: np.ndarray,
        w_scale: float,
        acts: np.ndarray,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """y[t, r] = (Σ code·q − Σq) / d_t · w_scale for I2_S rows `w` (nr, k/4) and `acts`.

        `acts` is (nt, k/128) BLOCK_I8S (from `quantize_rows`). `out`, if given, is a float32
        (nt, >= nr) array whose rows are written with stride out.shape[1] (tests the y_stride).
        """
        w = np.ascontiguousarray(w, dtype=np.uint8)
        acts = np.ascontiguousarray(acts, dtype=BLOCK_I8S)
        if w.ndim != 2 or acts.ndim != 2:
            raise ShapeError("mul_mat needs w of shape (nr, k/4) and acts of shape (nt, k/128).")
        nr, k = w.shape[0], w.shape[1] * 4
        nt = acts.shape[0]
        if k % QK_I2_S or acts.shape[1] * QK_I2_S != k:
            raise ShapeError(f"weights have k = {k} but activations k = {acts.shape[1] * 128}.")
        if out is None:
            out = np.empty((nt, nr), dtype=np.float32)
        if out.dtype != np.float32 or not out.flags.c_contiguous or out.shape[0] != nt:
            raise ShapeError("out must be a C-contiguous float32 array of nt rows.")
        if out.shape[1] < nr:
            raise ShapeError(f"out rows hold {out.shape[1]} values, fewer than nr = {nr}.")
        self._lib.bitnet_i2s_mul_mat(
            k, nr, nt, _c_ptr(w), float(w_scale), _c_ptr(acts), _c_ptr(out), out.shape[1]
        )
        return out

    @property
    def tl(self) -> TLKernels:
        """The TL1/TL2 kernels of this library (`kernels/bitnet-tl.h`)."""
        return TLKernels(self._lib)

    def mul_mat_raw(
        self, k: int, nr: int, nt: int, w: int, w_scale: float, acts: int, y: int, y_stride: int
    ) -> None:
        """The C call with raw addresses and no checks (benchmarks: no per-call overhead)."""
        self._lib.bitnet_i2s_mul_mat(k, nr, nt, w, w_scale, acts, y, y_stride)


# --- TL1 / TL2 (kernels/bitnet-tl.h) ------------------------------------------------------------

#: ggml-independent type codes of bitnet-tl.h (BITNET_TL1, BITNET_TL2).
TL_TYPES = {"tl1": 1, "tl2": 2}
#: TL2 lookup paths the library knows; `TLKernels.available()` says which run here.
TL_KERNEL_NAMES: tuple[str, ...] = ("scalar", "avx2", "avx512", "neon")


class TLTiling(ctypes.Structure):
    """`bitnet_tl_tiling`: the shape and tiles of one weight."""

    _fields_ = [
        ("M", ctypes.c_int64),
        ("K", ctypes.c_int64),
        ("BM", ctypes.c_int32),
        ("BK", ctypes.c_int32),
        ("bm", ctypes.c_int32),
    ]


def _declare_tl(lib: ctypes.CDLL) -> None:
    i64, vp, i32, tp = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(TLTiling)
    sigs = {
        "bitnet_tl_tiling_valid": ([i32, tp], i32),
        "bitnet_tl_nbytes": ([i32, i64, i64], i64),
        "bitnet_tl_scale": ([i32, vp, i64, i64], ctypes.c_float),
        "bitnet_tl_quantize_row": ([vp, vp, i64], ctypes.c_float),
        "bitnet_tl_lut_len": ([i32, tp], i64),
        "bitnet_tl_build_lut": ([i32, tp, vp, vp], None),
        "bitnet_tl_mul_mat": (
            [i32, tp, i64, i64, i64, vp, ctypes.c_float, vp, i64, vp, vp, i64],
            None,
        ),
        "bitnet_tl_tail_tiling": ([i32, vp, i64, i64, tp], i32),
        "bitnet_tl_kernel_name": ([], ctypes.c_char_p),
        "bitnet_tl_set_kernel": ([ctypes.c_char_p], i32),
    }
    for name, (args, res) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = res


class TLKernels(_PathChoice):
    """NumPy wrappers of the TL1/TL2 kernels (`kernels/bitnet-tl.h`) of a loaded library.

    tl = kernels_lib.load().tl
    q, d = tl.quantize_rows(x)                        # (nt, K) int8, (nt,) float32
    y = tl.mul_mat("tl2", packed, (M, K), q, d)       # (nt, M) float32; scale, tiles: the tail
    """

    _prefix = "bitnet_tl"
    _names = TL_KERNEL_NAMES
    _what = "TL kernel path"

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib

    @staticmethod
    def tiling(qtype: str, m: int, k: int) -> TLTiling:
        """The converter's tiles for (M, K) (`default_tiling`) as a `bitnet_tl_tiling`."""
        from bitnet.tools.quants.tiling import default_tiling

        t = default_tiling(m, k, qtype)
        return TLTiling(m, k, t.BM, t.BK, t.bm)

    def tensor_tiling(self, qtype: str, w: np.ndarray, m: int, k: int) -> TLTiling:
        """The tiles a packed tensor records in its tail (default_tiling's when unrecorded)."""
        t = self.tiling(qtype, m, k)
        w = np.ascontiguousarray(w, dtype=np.uint8)
        rc = self._lib.bitnet_tl_tail_tiling(TL_TYPES[qtype], _c_ptr(w), m, k, ctypes.byref(t))
        if rc < 0:
            raise ShapeError(
                f"the {qtype} tensor records tiles ({t.BM}, {t.BK}, {t.bm}) that cannot tile "
                f"({m}, {k})."
            )
        return t

    def valid(self, qtype: str, t: TLTiling) -> bool:
        return bool(self._lib.bitnet_tl_tiling_valid(TL_TYPES[qtype], ctypes.byref(t)))

    def nbytes(self, qtype: str, m: int, k: int) -> int:
        return int(self._lib.bitnet_tl_nbytes(TL_TYPES[qtype], m, k))

    def scale(self, qtype: str, w: np.ndarray, m: int, k: int) -> float:
        w = np.ascontiguousarray(w, dtype=np.uint8)
        return float(self._lib.bitnet_tl_scale(TL_TYPES[qtype], _c_ptr(w), m, k))

    def quantize_rows(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-token int8 activations of `x` (nt, K): q (nt, K) int8 and d (nt,) float32."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        nt, k = x.shape
        q = np.zeros((nt, k), dtype=np.int8)
        d = np.zeros(nt, dtype=np.float32)
        for t in range(nt):
            xp = ctypes.c_void_p(x.ctypes.data + t * k * 4)
            d[t] = self._lib.bitnet_tl_quantize_row(xp, ctypes.c_void_p(q.ctypes.data + t * k), k)
        return q, d

    def build_lut(self, qtype: str, t: TLTiling, q: np.ndarray) -> np.ndarray:
        """LUTs of every token of `q` (nt, K): int16 (nt, lut_len)."""
        q = np.ascontiguousarray(q, dtype=np.int8)
        n = int(self._lib.bitnet_tl_lut_len(TL_TYPES[qtype], ctypes.byref(t)))
        lut = np.zeros((q.shape[0], n), dtype=np.int16)
        for j in range(q.shape[0]):
            self._lib.bitnet_tl_build_lut(
                TL_TYPES[qtype],
                ctypes.byref(t),
                ctypes.c_void_p(q.ctypes.data + j * q.shape[1]),
                ctypes.c_void_p(lut.ctypes.data + j * n * 2),
            )
        return lut

    def mul_mat(
        self,
        qtype: str,
        w: np.ndarray,
        shape: tuple[int, int],
        q: np.ndarray,
        d: np.ndarray,
        tiles: tuple[int, int] | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """y (nt, M) = (Σ w·q) / d · scale for the packed tensor `w` of numpy shape (M, K).

        `tiles` = (tile0, tile1) limits the BM-row tiles computed (others stay as in `out`).
        """
        m, k = shape
        w = np.ascontiguousarray(w, dtype=np.uint8)
        if w.size != self.nbytes(qtype, m, k):
            raise ShapeError(f"{qtype} tensor of shape {shape} has {w.size} bytes, not nbytes.")
        t = self.tensor_tiling(qtype, w, m, k)
        q = np.ascontiguousarray(q, dtype=np.int8).reshape(-1, k)
        d = np.ascontiguousarray(d, dtype=np.float32).reshape(-1)
        nt = q.shape[0]
        lut = self.build_lut(qtype, t, q)
        if out is None:
            out = np.zeros((nt, m), dtype=np.float32)
        tile0, tile1 = tiles or (0, m // t.BM)
        self._lib.bitnet_tl_mul_mat(
            TL_TYPES[qtype],
            ctypes.byref(t),
            tile0,
            tile1,
            nt,
            _c_ptr(w),
            self.scale(qtype, w, m, k),
            _c_ptr(lut),
            lut.shape[1],
            _c_ptr(d),
            _c_ptr(out),
            out.shape[1],
        )
        return out

    def mul_mat_raw(
        self,
        qtype: str,
        t: TLTiling,
        tiles: tuple[int, int],
        nt: int,
        w: int,
        w_scale: float,
        lut: int,
        lut_stride: int,
        d: int,
        y: int,
        y_stride: int,
    ) -> None:
        """`bitnet_tl_mul_mat` with raw addresses and no checks (benchmarks: no per-call cost);
        `lut_stride` and `y_stride` count int16 entries and floats."""
        self._lib.bitnet_tl_mul_mat(
            TL_TYPES[qtype], ctypes.byref(t), tiles[0], tiles[1], nt, w, w_scale, lut,
            lut_stride, d, y, y_stride,
        )  # fmt: skip


@functools.cache
def load(cc: str | None = None) -> KernelLib:
    """Build (if needed) and load the kernel library; one instance per process and compiler."""
    return KernelLib(build_library(cc))


#: The kernel families compiled into a llama.cpp build, each with the C function naming its path.
BUILD_PATH_FUNCTIONS: dict[str, str] = {
    "I2_S": "bitnet_kernel_name",
    "F16": "bitnet_f16_kernel_name",
    "TL": "bitnet_tl_kernel_name",
}


#: Run in a child process: loading another build's libggml-cpu here could bind it to the
#: libggml-base already loaded (same soname), and a crash must not take this process down.
_PATHS_PROBE = """
import ctypes, json, sys
lib = ctypes.CDLL(sys.argv[1])
paths = {}
for family, func in json.loads(sys.argv[2]).items():
    fn = getattr(lib, func)
    fn.argtypes, fn.restype = [], ctypes.c_char_p
    paths[family] = fn().decode()
print(json.dumps(paths))
"""


def build_kernel_paths(bin_dir: Path) -> dict[str, str] | None:
    """The SIMD path each kernel family of the llama.cpp build in `bin_dir` takes on this CPU,
    e.g. {"I2_S": "avx2", "F16": "avx2", "TL": "avx2"}: what a speed figure ran on. Read from
    the build's libggml-cpu (in a child process); None when that library is missing or is not
    ours (a peer's build)."""
    lib_path = Path(bin_dir) / "libggml-cpu.so"
    if not lib_path.is_file():
        return None
    cmd = [sys.executable, "-c", _PATHS_PROBE, str(lib_path), json.dumps(BUILD_PATH_FUNCTIONS)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None


def describe_kernel_paths(paths: dict[str, str] | None) -> str:
    """'I2_S avx2 · F16 avx2 · TL avx2', or 'unknown' when the build did not say."""
    if not paths:
        return "unknown"
    return " · ".join(f"{family} {name}" for family, name in paths.items())
