"""Time the I2_S C kernels (kernels/*.c) on BitNet b1.58 2B-4T shapes, per kernel path.

    .venv/bin/python benchmarks/bench_kernels.py                 # every path, hot + cold GEMV
    .venv/bin/python benchmarks/bench_kernels.py --paths avx512vnni --threads 2 --json

Cases (numpy shape (M, K) = (rows, columns); ref: shared/spec/fast-kernels.md §1):
  gemv  nt = 1    (decode): 2560×2560 (attn_q/attn_output), 6912×2560 (ffn_gate/up),
                            2560×6912 (ffn_down)
  gemm  nt = 128  (prompt): the same matrices
"hot" repeats the call on one matrix (it stays in L2/L3); "cold" (GEMV only) cycles through
copies filling --cold-mib of memory, larger than the last-level cache, so each call streams its
weights from DRAM like decode does; the "read" line times NumPy summing that memory, a reference
for the bandwidth the machine gives right now. Each figure is the median of --reps timed calls
after --warmup untimed ones, with the best call and the spread (interquartile range in percent
of the median). GB/s counts the weight bytes read (k/4 per row); GMAC/s counts nr·k·nt
multiply-adds. Timings are wall-clock: on a busy machine, trust the best column more.
With --threads N the rows are split into N contiguous parts, each run by its own thread through
ctypes (which releases the GIL); each thread loops over its part of every repetition and the
whole loop is timed. Python's per-call overhead (GIL hand-offs) is in those figures, which
matters for the small GEMV shapes; llama.cpp's own threads have none of it.
This is a benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

from bitnet.cli import _output as out
from bitnet.tools import kernels_lib

SHAPES = [(2560, 2560), (6912, 2560), (2560, 6912)]  # (rows nr, columns k)


@dataclass
class Result:
    path: str
    case: str
    shape: str
    nt: int
    median_us: float
    best_us: float
    spread_pct: float
    gb_s: float
    gmac_s: float


def _make_inputs(nr: int, k: int, nt: int, rng: np.random.Generator, lib: kernels_lib.KernelLib):
    """Random I2_S codes (bytes with 2-bit fields in 0..2) and quantized random activations."""
    codes = rng.integers(0, 3, size=(nr, k // 4, 4), dtype=np.uint8)
    w = (codes[..., 0] << 6) | (codes[..., 1] << 4) | (codes[..., 2] << 2) | codes[..., 3]
    acts = lib.quantize_rows(rng.standard_normal((nt, k)).astype(np.float32))
    return np.ascontiguousarray(w), acts


def _runner(lib: kernels_lib.KernelLib, k: int, nr: int, nt: int, acts, y, threads: int):
    """A function fn(w) that runs the whole product once, split over `threads` threads."""
    parts = np.linspace(0, nr, threads + 1).astype(int)
    a_ptr, y_ptr = acts.ctypes.data, y.ctypes.data

    def one(w: np.ndarray, r0: int, r1: int) -> None:
        lib.mul_mat_raw(k, r1 - r0, nt, w.ctypes.data + r0 * k // 4, 0.5, a_ptr, y_ptr + 4 * r0, nr)

    if threads == 1:
        return lambda w: one(w, 0, nr)

    def run(w: np.ndarray) -> None:
        ts = [
            threading.Thread(target=one, args=(w, parts[i], parts[i + 1])) for i in range(threads)
        ]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    return run


def _time_loop(fn, weights: list[np.ndarray], warmup: int, reps: int) -> list[float]:
    for i in range(warmup):
        fn(weights[i % len(weights)])
    times = []
    for i in range(reps):
        w = weights[(warmup + i) % len(weights)]
        t0 = time.perf_counter_ns()
        fn(w)
        times.append((time.perf_counter_ns() - t0) / 1e3)
    return times


def _time_threads_loop(lib, k, nr, nt, acts, y, weights, threads, warmup, reps) -> list[float]:
    """Several threads, each looping over its rows of every rep; timed per whole loop.

    Starting threads per call costs tens of microseconds, as much as a GEMV, so for threads > 1
    each thread runs all reps of its part back to back; one figure = total / reps, measured
    `rounds` times to get a median and spread.
    """
    parts = np.linspace(0, nr, threads + 1).astype(int)
    a_ptr, y_ptr = acts.ctypes.data, y.ctypes.data
    rounds = 7

    def worker(i: int, n: int, offset: int, barrier: threading.Barrier) -> None:
        r0, r1 = int(parts[i]), int(parts[i + 1])
        barrier.wait()
        for j in range(n):
            w = weights[(offset + j) % len(weights)]
            lib.mul_mat_raw(
                k, r1 - r0, nt, w.ctypes.data + r0 * k // 4, 0.5, a_ptr, y_ptr + 4 * r0, nr
            )

    def round_(n: int, offset: int) -> float:
        barrier = threading.Barrier(threads + 1)
        ts = [threading.Thread(target=worker, args=(i, n, offset, barrier)) for i in range(threads)]
        for t in ts:
            t.start()
        barrier.wait()
        t0 = time.perf_counter_ns()
        for t in ts:
            t.join()
        return (time.perf_counter_ns() - t0) / 1e3 / max(n, 1)

    round_(warmup, 0)
    per_round = max(1, reps // rounds)
    return [round_(per_round, warmup + i * per_round) for i in range(rounds)]


def _result(path: str, case: str, nr: int, k: int, nt: int, times: list[float]) -> Result:
    med = statistics.median(times)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [med, med, med]
    return Result(
        path,
        case,
        f"{nr}x{k}",
        nt,
        round(med, 1),
        round(min(times), 1),
        round((q[2] - q[0]) / med * 100, 1),
        round(nr * k / 4 / med / 1e3, 2),
        round(nr * k * nt / med / 1e3, 1),
    )


def _read_reference(weights: list[np.ndarray], nr: int, k: int) -> Result:
    """NumPy summing the same cold copies: what one thread reads from DRAM right now."""
    times = []
    for i in range(3 * len(weights)):
        w = weights[i % len(weights)].reshape(-1).view(np.uint64)
        t0 = time.perf_counter_ns()
        w.sum()
        times.append((time.perf_counter_ns() - t0) / 1e3)
    r = _result("numpy", "read-cold", nr, k, 1, times[len(weights) :])
    r.gmac_s = 0.0
    return r


def bench(args: argparse.Namespace) -> list[Result]:
    lib = kernels_lib.load()
    paths = args.paths or lib.available()
    rng = np.random.default_rng(0)
    results: list[Result] = []
    for nr, k in SHAPES:
        for case, nt in (("gemv", 1), ("gemm", args.nt)):
            w, acts = _make_inputs(nr, k, nt, rng, lib)
            y = np.empty((nt, nr), dtype=np.float32)
            modes = [("hot", [w])]
            if case == "gemv" and args.cold_mib > 0:
                copies = max(2, int(args.cold_mib * 2**20 // w.nbytes))
                modes.append(("cold", [w.copy() for _ in range(copies)]))
            for mode, weights in modes:
                for path in paths:
                    with lib.use(path):
                        # a GEMM call does 128× the work of a GEMV call: fewer repetitions
                        gemv = case == "gemv"
                        reps = args.reps if gemv else max(5, args.reps // 20)
                        warmup = args.warmup if gemv else max(1, args.warmup // 10)
                        if args.threads > 1:
                            times = _time_threads_loop(
                                lib, k, nr, nt, acts, y, weights, args.threads, warmup, reps
                            )
                        else:
                            fn = _runner(lib, k, nr, nt, acts, y, 1)
                            times = _time_loop(fn, weights, warmup, reps)
                    results.append(_result(path, f"{case}-{mode}", nr, k, nt, times))
                if mode == "cold":
                    results.append(_read_reference(weights, nr, k))
            del modes
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--paths", nargs="*", help="kernel paths (default: all available here)")
    p.add_argument("--nt", type=int, default=128, help="tokens of the GEMM case (default 128)")
    p.add_argument("--reps", type=int, default=200, help="timed GEMV calls (GEMM: reps/20)")
    p.add_argument("--warmup", type=int, default=20, help="untimed calls first (GEMM: /10)")
    p.add_argument("--threads", type=int, default=1, help="threads splitting the rows")
    p.add_argument("--cold-mib", type=float, default=1024, help="memory cycled by cold GEMV")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args()
    results = bench(args)
    if args.json:
        out.emit_json([asdict(r) for r in results])
        return
    lib = kernels_lib.load()
    out.table(
        ["path", "case", "shape", "nt", "median µs", "best µs", "IQR %", "GB/s", "GMAC/s"],
        [
            [r.path, r.case, r.shape, r.nt, r.median_us, r.best_us, r.spread_pct, r.gb_s, r.gmac_s]
            for r in results
        ],
        title=f"I2_S kernels, {args.threads} thread(s), library {lib.path.parent.name}",
    )


if __name__ == "__main__":
    main()
