"""Statistics and energy per test: tokens/s spread, timed windows, joules, the bandwidth bound."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import energy as E
from ..bandwidth import Bandwidth, bound_tokens_per_second
from .llama_bench import TIMED_PHASES, Event
from .options import ModelInfo

#: Shortest timed window (seconds) whose CPU time is taken from /proc (its clock ticks are
#: 10 ms: over a second the rounding stays within a few percent).
MIN_CPU_WINDOW = 1.0


@dataclass
class Window:
    """The timed part of one test: wall seconds, CPU seconds of the child, joules per domain."""

    seconds: float = 0.0
    cpu_seconds: float | None = 0.0
    joules: dict[str, float] | None = None


def timed_windows(events: Sequence[Event], meter: E.RaplMeter | None) -> dict[int, Window]:
    """Sum, per test, the intervals that begin at a timed-run event (see the package docstring).

    CPU time is None for a test if any of its intervals lacks a /proc reading; joules are None
    without a meter or a reading.
    """
    ev = sorted(events, key=lambda e: e.t)
    out: dict[int, Window] = {}
    for a, b in zip(ev, ev[1:], strict=False):
        if a.phase not in TIMED_PHASES:
            continue
        w = out.setdefault(a.index, Window(joules={} if meter else None))
        w.seconds += b.t - a.t
        if w.cpu_seconds is not None and a.cpu_seconds is not None and b.cpu_seconds is not None:
            w.cpu_seconds += max(0.0, b.cpu_seconds - a.cpu_seconds)
        else:
            w.cpu_seconds = None
        if meter is not None and w.joules is not None:
            if a.energy_uj is None or b.energy_uj is None:
                w.joules = None
            else:
                for k, j in meter.delta_joules(a.energy_uj, b.energy_uj).items():
                    w.joules[k] = w.joules.get(k, 0.0) + j
    return out


def stats(samples: Sequence[float]) -> dict[str, Any]:
    """mean, median, min, max, stddev (sample, 0 for one value) and the samples themselves."""
    xs = [float(x) for x in samples]
    if not xs:
        return {"mean": 0.0, "median": 0.0, "min": 0.0, "max": 0.0, "stddev": 0.0, "samples": []}
    return {
        "mean": statistics.fmean(xs),
        "median": statistics.median(xs),
        "min": min(xs),
        "max": max(xs),
        "stddev": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "samples": xs,
    }


def test_name(n_prompt: int, n_gen: int, depth: int) -> str:
    """llama-bench's naming: pp512, tg128, pp512+tg128, with ' @ d4096' for a depth."""
    parts = [f"pp{n_prompt}"] if n_prompt else []
    parts += [f"tg{n_gen}"] if n_gen else []
    name = "+".join(parts) or "none"
    return f"{name} @ d{depth}" if depth else name


def test_energy(
    rec: dict[str, Any],
    window: Window | None,
    info: ModelInfo,
    model: E.EnergyModel,
) -> dict[str, Any]:
    """The energy entry of one test: measured from its RAPL window, or estimated."""
    n_p, n_g, depth = int(rec["n_prompt"]), int(rec["n_gen"]), int(rec.get("n_depth", 0))
    reps = len(rec.get("samples_ns") or []) or 1
    tokens = reps * (n_p + n_g)
    timed = sum(rec.get("samples_ns") or []) / 1e9
    if model.method == "measured" and window is not None and window.joules:
        joules = sum(window.joules.values())
        return {
            "method": "measured",
            "joules": joules,
            "joules_per_token": joules / tokens if tokens else None,
            "tokens": tokens,
            "window_seconds": window.seconds,
            "domains": dict(window.joules),
        }
    threads = int(rec.get("n_threads", 1))
    if window is not None and window.cpu_seconds is not None and window.seconds >= MIN_CPU_WINDOW:
        cpu, cpu_source = window.cpu_seconds, "proc"
    else:  # no /proc, or a window too short for its 10 ms ticks: ggml's threads spin while
        # they wait for work, so count every thread busy for the whole timed part
        cpu, cpu_source = threads * timed, "threads-x-wall"
    dram = reps * info.traffic.run_bytes(n_p, n_g, depth)
    parts = E.estimate_joules(cpu, dram, model.cpu_watts, model.dram_pj_per_byte)
    return {
        "method": "estimated",
        "joules": parts["total"],
        "joules_per_token": parts["total"] / tokens if tokens else None,
        "tokens": tokens,
        "window_seconds": window.seconds if window is not None else timed,
        "cpu_seconds": cpu,
        "cpu_seconds_source": cpu_source,
        "dram_bytes": dram,
        "cpu_joules": parts["cpu"],
        "dram_joules": parts["dram"],
    }


def test_bound(
    rec: dict[str, Any], info: ModelInfo, bw: Bandwidth | None, mean_ts: float
) -> dict[str, Any] | None:
    """The memory-bandwidth bound of a generation-only test (None for prompt tests)."""
    n_p, n_g, depth = int(rec["n_prompt"]), int(rec["n_gen"]), int(rec.get("n_depth", 0))
    if n_p or not n_g:
        return None
    per_token = info.traffic.decode_bytes_per_token(depth, n_g)
    if bw is None:
        return {"bytes_per_token": per_token, "bandwidth_bytes_per_second": None,
                "tokens_per_second": None, "percent": None}  # fmt: skip
    bound = bound_tokens_per_second(bw.bytes_per_second, per_token)
    return {
        "bytes_per_token": per_token,
        "bandwidth_bytes_per_second": bw.bytes_per_second,
        "tokens_per_second": bound,
        "percent": 100.0 * mean_ts / bound if bound and math.isfinite(bound) else None,
    }
