"""Time the TL2 lookup kernels (kernels/bitnet-tl*.c) per path, side by side with I2_S.

    .venv/bin/python benchmarks/bench_tl.py                        # every TL path + I2_S
    .venv/bin/python benchmarks/bench_tl.py --paths avx2 avx512 --nt 1 8 64 --json

Cases (numpy shape (M, K) = (rows, columns), BitNet b1.58 2B-4T; ref: shared/spec/fast-kernels.md
§1): 2560×2560 (attn_q/attn_output), 6912×2560 (ffn_gate/up), 2560×6912 (ffn_down), each with
--nt tokens (default 1, the decode GEMV, and 64, a prompt chunk). Weights are random ternary
codes packed by the project's packers (tools/quants), activations random normal; the LUTs are
built once beforehand (llama.cpp builds them once per node, before the lookups), so the figures
are the lookups alone, bitnet_tl_mul_mat over every BM tile on one thread. The I2_S rows run
bitnet_i2s_mul_mat (its default path, named in the row) on the same codes and activations.

Timing is interleaved in --rounds rounds: each round runs every kernel in turn, one untimed
call (warm-up: its weights and LUTs back in the cache) then --inner timed calls (divided by nt,
at least 1), so drifting load on the machine hits all kernels alike. Each figure is the median
of the rounds x inner timed calls, with the best call and the spread (interquartile range in
percent of the median). GMAC/s counts M·K·nt; "vs avx2" is avx2's median divided by the row's
(> 1: faster). The weights are in the cache ("hot"): decode on a whole model streams them from
memory instead, which llama-bench measures.
This is a benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from bitnet.cli import _output as out
from bitnet.tools import kernels_lib, quants

SHAPES = [(2560, 2560), (6912, 2560), (2560, 6912)]  # (M, K)
Call = tuple[Callable[[], object], Callable[[], None]]  # (setup once per block, the timed call)


@dataclass
class Result:
    kernel: str
    shape: str
    nt: int
    median_ms: float
    best_ms: float
    spread_pct: float
    gmac_s: float
    vs_avx2: float | None = None


@dataclass
class _Case:
    """One (shape, nt): packed weights, activations and LUTs, and the calls to time."""

    m: int
    k: int
    nt: int
    calls: dict[str, Call]
    keep: list[object]


def _case(lib: kernels_lib.KernelLib, m: int, k: int, nt: int, paths: list[str]) -> _Case:
    tl = lib.tl
    rng = np.random.default_rng(m * 7 + k + nt)
    codes = rng.integers(-1, 2, size=(m, k)).astype(np.int8)
    x = rng.standard_normal((nt, k)).astype(np.float32)
    # TL2: packed tensor, per-token int8 activations, LUTs (nt, lut_len), output
    w = quants.get("tl2").pack(codes, 0.5)
    t = tl.tiling("tl2", m, k)
    q, d = tl.quantize_rows(x)
    lut = tl.build_lut("tl2", t, q)
    y = np.empty((nt, m), np.float32)
    scale = tl.scale("tl2", w, m, k)
    tiles = (0, m // t.BM)
    # I2_S: the same codes (rows of k/4 bytes) and the I8_S blocks of the same floats
    wi = quants.get("i2_s").pack(codes, 0.5)[: m * k // 4]
    acts = lib.quantize_rows(x)

    def run_tl() -> None:
        tl.mul_mat_raw(
            "tl2", t, tiles, nt, w.ctypes.data, scale, lut.ctypes.data, lut.shape[1],
            d.ctypes.data, y.ctypes.data, m,
        )  # fmt: skip

    def run_i2s() -> None:
        lib.mul_mat_raw(k, m, nt, wi.ctypes.data, 0.5, acts.ctypes.data, y.ctypes.data, m)

    # the path is chosen once per block of calls (choosing may run CPUID, slow in a VM)
    calls: dict[str, Call] = {
        f"tl2/{p}": (functools.partial(tl.set_kernel, p), run_tl) for p in paths
    }
    calls[f"i2_s/{lib.kernel_name()}"] = (lambda: None, run_i2s)
    return _Case(m, k, nt, calls, [w, t, q, d, lut, y, wi, acts])


def _interleaved(calls: dict[str, Call], rounds: int, inner: int) -> dict[str, list[float]]:
    """Per call name, rounds * inner timings in ms. Each round runs every call in turn: its
    setup, one untimed call (its data back in the cache), then `inner` timed ones."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, (setup, fn) in calls.items():
            setup()
            fn()
            for _ in range(inner):
                t0 = time.perf_counter_ns()
                fn()
                times[name].append((time.perf_counter_ns() - t0) / 1e6)
    return times


def _result(name: str, c: _Case, ms: list[float]) -> Result:
    med = statistics.median(ms)
    q = statistics.quantiles(ms, n=4) if len(ms) >= 2 else [med, med, med]
    return Result(
        name,
        f"{c.m}x{c.k}",
        c.nt,
        round(med, 4),
        round(min(ms), 4),
        round((q[2] - q[0]) / med * 100, 1),
        round(c.m * c.k * c.nt / med / 1e6, 1),
    )


def bench(args: argparse.Namespace) -> list[Result]:
    lib = kernels_lib.load()
    tl = lib.tl
    previous = tl.kernel_name()
    available = tl.available()
    paths = [p for p in (args.paths or available) if p in available]
    results: list[Result] = []
    try:
        for m, k in SHAPES:
            for nt in args.nt:
                c = _case(lib, m, k, nt, paths)
                inner = max(1, args.inner // nt)
                times = _interleaved(c.calls, args.rounds, inner)
                rows = [_result(name, c, ms) for name, ms in times.items()]
                base = next((r.median_ms for r in rows if r.kernel == "tl2/avx2"), None)
                for r in rows:
                    r.vs_avx2 = round(base / r.median_ms, 2) if base else None
                results.extend(rows)
    finally:
        tl.set_kernel(previous)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--paths", nargs="*", help="TL paths (default: all available here)")
    p.add_argument("--nt", type=int, nargs="+", default=[1, 64], help="token counts (1 64)")
    p.add_argument("--rounds", type=int, default=7, help="rounds over all kernels (default 7)")
    p.add_argument("--inner", type=int, default=20, help="timed calls per round for nt=1 (/nt)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args()
    results = bench(args)
    if args.json:
        out.emit_json([asdict(r) for r in results])
        return
    out.table(
        ["kernel", "shape", "nt", "median ms", "best ms", "IQR %", "GMAC/s", "vs avx2"],
        [
            [r.kernel, r.shape, r.nt, r.median_ms, r.best_ms, r.spread_pct, r.gmac_s, r.vs_avx2]
            for r in results
        ],
        title=f"TL2 vs I2_S kernels, 1 thread, library {kernels_lib.load().path.parent.name}",
    )


if __name__ == "__main__":
    main()
