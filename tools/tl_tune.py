"""`bitnet codegen --tune`: time every valid TL1/TL2 tiling of a weight shape on this machine and
keep the fastest (only when it beats the default clearly).

    shapes --candidate_tilings--> [Tiling] --timer (pack random ternary weights, time
        bitnet_tl_mul_mat through the ctypes kernel library)--> ms per tiling
        --choose (noise guard)--> TuneResult --save_tuned--> $BITNET_CACHE/codegen/tl-tuned.json
                                              --register--> the build registry (tools/codegen.py)

Tuned tiles change the bytes of a packed tensor, so they are used only when asked
(`bitnet convert --outtype tl2 --tuned`, which reads tl-tuned.json) and are always recorded in the
tensor's tail (tools/quants/tiling.py); the build serves them through the registry.

Measurement (a benchmark, not a test): one thread (the kernel library's best path on this CPU),
fixed-seed random weights, warm-up calls, then the median of `repeats` samples, each sample
a loop long enough (>= `min_sample_s`) that timer resolution does not matter. The choice uses
the one-token (decode) figure, scaled by how unevenly the tiling's M/BM row tiles split over
`threads` threads (ggml gives each thread a contiguous range of tiles); a batched (nt = 32)
figure is reported for the default and the chosen tiling.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bitnet.tools import codegen, quants
from bitnet.tools.errors import CorruptFileError, UsageError
from bitnet.tools.fsutil import atomic_output
from bitnet.tools.quants.tiling import Tiling, candidate_tilings, default_tiling, tiling_error

ProgressFn = Callable[[int, int, str], None]
#: (type, M, K, tiling, nt) -> median milliseconds of one bitnet_tl_mul_mat call.
Timer = Callable[[str, int, int, Tiling, int], float]

TUNED_NAME = "tl-tuned.json"
#: A candidate replaces the default only when its score is lower by more than this fraction.
NOISE_GUARD = 0.05
#: Tokens of the batched figure (a prompt chunk).
BATCH_NT = 32


# --- measuring ---------------------------------------------------------------------------------


class KernelTimer:
    """Times `bitnet_tl_mul_mat` of the ctypes kernel library (tools/kernels_lib.py) on random
    ternary weights packed with each tiling: warm-up, then the median of `repeats` samples."""

    def __init__(
        self, repeats: int = 7, warmup: int = 2, min_sample_s: float = 0.005, seed: int = 0
    ) -> None:
        from bitnet.tools import kernels_lib

        self.repeats = max(1, int(repeats))
        self.warmup = max(0, int(warmup))
        self.min_sample_s = float(min_sample_s)
        self.seed = int(seed)
        self._types = kernels_lib.TL_TYPES
        self._tiling_struct = kernels_lib.TLTiling
        self.tl = kernels_lib.load().tl
        # raw bitnet_tl_mul_mat: TLKernels.mul_mat always uses the default tiling
        self._mul_mat = self.tl._lib.bitnet_tl_mul_mat
        self._codes: dict[tuple[int, int], np.ndarray] = {}
        self._acts: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    @property
    def kernel(self) -> str:
        """The TL lookup path being timed ("avx2", ...)."""
        return self.tl.kernel_name()

    def _weights(self, m: int, k: int) -> np.ndarray:
        if (m, k) not in self._codes:
            self._codes.clear()  # one shape at a time: a 14336 x 4096 matrix is 59 MB
            rng = np.random.default_rng([self.seed, m, k])
            self._codes[m, k] = rng.integers(-1, 2, size=(m, k), dtype=np.int8)
        return self._codes[m, k]

    def _activations(self, k: int, nt: int) -> tuple[np.ndarray, np.ndarray]:
        if (k, nt) not in self._acts:
            x = np.random.default_rng([self.seed, k, nt]).standard_normal((nt, k))
            self._acts[k, nt] = self.tl.quantize_rows(x.astype(np.float32))
        return self._acts[k, nt]

    def __call__(self, qtype: str, m: int, k: int, tiling: Tiling, nt: int) -> float:
        qt: Any = quants.get(qtype)
        w = qt.pack(self._weights(m, k), 0.5, tiling=tiling)
        q, d = self._activations(k, nt)
        ct = self._tiling_struct(m, k, tiling.BM, tiling.BK, tiling.bm)
        lut = self.tl.build_lut(qtype, ct, q)
        y = np.zeros((nt, m), dtype=np.float32)
        args = (self._types[qtype], ctypes.byref(ct), 0, m // tiling.BM, nt,
                ctypes.c_void_p(w.ctypes.data), ctypes.c_float(0.5),
                ctypes.c_void_p(lut.ctypes.data), lut.shape[1], ctypes.c_void_p(d.ctypes.data),
                ctypes.c_void_p(y.ctypes.data), m)  # fmt: skip
        return time_call(self._mul_mat, args, self.warmup, self.repeats, self.min_sample_s)


def time_call(
    call: Callable[..., Any], args: tuple, warmup: int, repeats: int, min_sample_s: float
) -> float:
    """Median milliseconds of one `call(*args)`: warm-up, then `repeats` samples of enough calls
    each for the clock's resolution."""
    # 1. warm-up (caches, page faults of the fresh arrays) and a single-call estimate
    t0 = time.perf_counter()
    for _ in range(max(1, warmup)):
        call(*args)
    once = (time.perf_counter() - t0) / max(1, warmup)
    # 2. samples of `inner` calls each, long enough for the clock; the median call time
    inner = max(1, math.ceil(min_sample_s / max(once, 1e-9)))
    samples = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        for _ in range(inner):
            call(*args)
        samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples) * 1e3


# --- choosing -----------------------------------------------------------------------------------


def imbalance(n_tiles: int, threads: int) -> float:
    """How much longer than an even split the busiest of `threads` threads works when ggml
    deals out `n_tiles` row tiles in contiguous ranges (the largest range is ceil(n/T))."""
    threads = max(1, int(threads))
    return math.ceil(n_tiles / threads) * threads / n_tiles


@dataclass
class TuneResult:
    """The timings of one (type, M, K) and the tiling kept."""

    qtype: str
    M: int
    K: int
    default: Tiling
    default_ms: float
    chosen: Tiling
    chosen_ms: float
    best: Tiling  # the lowest score, even when the noise guard kept the default
    best_ms: float
    candidates: int
    threads: int = 1
    default_batch_ms: float | None = None
    chosen_batch_ms: float | None = None

    def score(self, t: Tiling, ms: float) -> float:
        """What the choice compares: one-token ms x the tile imbalance over `threads`."""
        return ms * imbalance(self.M // t.BM, self.threads)

    @property
    def speedup(self) -> float:
        """Estimated one-token speed-up on `threads` threads: default / chosen score (1.0 when
        the default is kept)."""
        chosen = self.score(self.chosen, self.chosen_ms)
        return self.score(self.default, self.default_ms) / chosen if chosen > 0 else 1.0

    @property
    def speedup_1t(self) -> float:
        """default / chosen one-token time on one thread, as measured."""
        return self.default_ms / self.chosen_ms if self.chosen_ms > 0 else 1.0

    @property
    def tuned(self) -> bool:
        return self.chosen != self.default

    @property
    def entry(self) -> codegen.ShapeEntry:
        return codegen.ShapeEntry.of(self.qtype, self.M, self.K, self.chosen)

    def to_dict(self) -> dict[str, Any]:
        def tiles(t: Tiling) -> list[int]:
            return [t.BM, t.BK, t.bm]

        return {
            "type": self.qtype, "M": self.M, "K": self.K,
            "BM": self.chosen.BM, "BK": self.chosen.BK, "bm": self.chosen.bm,
            "ms": round(self.chosen_ms, 5), "default": tiles(self.default),
            "default_ms": round(self.default_ms, 5), "speedup": round(self.speedup, 4),
            "speedup_1t": round(self.speedup_1t, 4),
            "best": tiles(self.best), "best_ms": round(self.best_ms, 5),
            "batch_nt": BATCH_NT, "batch_ms": _round(self.chosen_batch_ms),
            "default_batch_ms": _round(self.default_batch_ms),
            "candidates": self.candidates, "threads": self.threads,
        }  # fmt: skip


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 5)


def tune_shape(
    qtype: str,
    m: int,
    k: int,
    timer: Timer,
    threads: int = 1,
    noise: float = NOISE_GUARD,
    batch: bool = True,
    progress: Callable[[str], None] | None = None,
) -> TuneResult:
    """Time every candidate tiling of an (M, K) `qtype` weight for one token and keep the best
    one only when its score (ms x thread imbalance) beats the default's by more than `noise`."""
    default = default_tiling(m, k, qtype)
    cands = candidate_tilings(m, k, qtype)
    if default not in cands:  # cannot happen (default_tiling's choices are candidates)
        cands.insert(0, default)
    ms: dict[Tiling, float] = {}
    for t in cands:
        ms[t] = float(timer(qtype, m, k, t, 1))
        if progress:
            progress(f"{qtype} ({m}, {k}) BM {t.BM} BK {t.BK} bm {t.bm}")

    def score(t: Tiling) -> float:
        return ms[t] * imbalance(m // t.BM, threads)

    best = min(cands, key=lambda t: (score(t), t != default))  # ties keep the default
    chosen = best if score(best) < score(default) * (1.0 - noise) else default
    result = TuneResult(qtype, m, k, default, ms[default], chosen, ms[chosen], best, ms[best],
                        len(cands), max(1, int(threads)))  # fmt: skip
    if batch:
        result.default_batch_ms = float(timer(qtype, m, k, default, BATCH_NT))
        result.chosen_batch_ms = (
            result.default_batch_ms
            if chosen == default
            else float(timer(qtype, m, k, chosen, BATCH_NT))
        )
    return result


def tune(
    shapes: Iterable[tuple[str, int, int]],
    timer: Timer | None = None,
    threads: int | None = None,
    noise: float = NOISE_GUARD,
    batch: bool = True,
    progress: ProgressFn | None = None,
) -> list[TuneResult]:
    """Tune every (type, M, K) of `shapes` (sorted, each once). `timer` defaults to a
    KernelTimer; `threads` (for the imbalance factor) to this machine's CPU count."""
    todo = sorted(set(shapes))
    timer = timer or KernelTimer()
    threads = threads or os.cpu_count() or 1
    total = sum(len(candidate_tilings(m, k, q)) for q, m, k in todo)
    done = 0

    def step(desc: str) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total, desc)

    return [tune_shape(q, m, k, timer, threads, noise, batch, step) for q, m, k in todo]


def shapes_to_tune(
    models: Sequence[str | Path], types: Sequence[str], known: bool = False
) -> list[tuple[str, int, int]]:
    """(type, M, K) of every ternary shape of `models` in each of `types` (ShapeError when a
    model's shape cannot be held), plus the known models' shapes when `known`."""
    entries: set[codegen.ShapeEntry] = set()
    for model in models:
        entries |= set(codegen.plan_shapes(codegen.find_shapes(model), types, strict=True))
    if known:
        entries |= set(codegen.plan_shapes(codegen.known_shapes(), types, strict=False))
    if not entries:
        raise UsageError(
            "there is nothing to tune: pass MODEL (a GGUF or HF folder) or --known.",
            hint="bitnet codegen MODEL --tune",
        )
    return sorted({(e.qtype, e.M, e.K) for e in entries})


# --- the cache file -----------------------------------------------------------------------------


def tuned_path(cache: Path | None = None) -> Path:
    """`$BITNET_CACHE/codegen/tl-tuned.json`."""
    from bitnet.tools.build import default_cache

    return (cache or default_cache()).expanduser() / "codegen" / TUNED_NAME


def _read_rows(path: Path) -> list[dict[str, Any]]:
    try:
        rows = json.loads(path.read_text()).get("shapes", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def _row_tiling(row: Mapping[str, Any]) -> tuple[tuple[str, int, int], Tiling] | None:
    """((type, M, K), tiles) of a tl-tuned.json row; None when it is not a valid one."""
    try:
        qtype, m, k = str(row["type"]), int(row["M"]), int(row["K"])
        t = Tiling(int(row["BM"]), int(row["BK"]), int(row["bm"]))
    except (KeyError, TypeError, ValueError):
        return None
    if qtype not in codegen.TL_TYPES or tiling_error(m, k, qtype, t) is not None:
        return None
    return (qtype, m, k), t


def load_tuned(path: Path | None = None) -> dict[tuple[str, int, int], Tiling]:
    """{(type, M, K): tiles} saved by `bitnet codegen --tune` (invalid rows are dropped);
    UsageError when nothing was tuned yet, CorruptFileError when the file is not JSON."""
    path = path or tuned_path()
    if not path.is_file():
        raise UsageError(
            f"no tuned TL tiles yet ({path} does not exist).",
            hint="tune them first: bitnet codegen MODEL --tune (or convert without --tuned)",
        )
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        raise CorruptFileError(
            f"{path} is not a readable tl-tuned.json.",
            hint="tune again: bitnet codegen MODEL --tune (it rewrites the file)",
        ) from None
    return dict(filter(None, map(_row_tiling, _read_rows(path))))


def save_tuned(results: Sequence[TuneResult], cache: Path | None = None, kernel: str = "") -> Path:
    """Merge `results` into tl-tuned.json (a re-tuned shape replaces its row), atomically."""
    path = tuned_path(cache)
    rows = {}
    for row in _read_rows(path):
        got = _row_tiling(row)
        if got is not None:
            rows[got[0]] = row
    for r in results:
        rows[r.qtype, r.M, r.K] = r.to_dict() | ({"kernel": kernel} if kernel else {})
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"shapes": [rows[key] for key in sorted(rows)]}
    with atomic_output(path, True) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=1) + "\n")
    return path


def register_tuned(results: Sequence[TuneResult], cache: Path | None = None) -> bool:
    """Add the chosen tiles to the build registry (the next build serves them); True if new."""
    from bitnet.tools.build import default_cache, tl_registry

    registry = tl_registry((cache or default_cache()).expanduser())
    return codegen.register(registry, [r.entry for r in results])
