"""The benchmark: every model at every thread count, one llama-bench process each -> the report."""

from __future__ import annotations

import datetime
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import energy as E
from ..bandwidth import Bandwidth, measure_read_bandwidth
from ..build import ProgressFn, check_tl_served, find_binary
from ..errors import BitnetError, RuntimeFailure, UsageError
from ..kernels_lib import build_kernel_paths
from .llama_bench import (
    CRASH_SIGNALS,
    TIMED_PHASES,
    Event,
    ProcessRun,
    explain_failure,
    llama_bench_command,
    run_llama_bench,
)
from .options import BenchOptions, ModelInfo, ModelSpec, model_info
from .report import schema_id
from .stats import Window, stats, test_bound, test_energy, test_name, timed_windows

#: CPUs kept busy by other processes (see busy_cpus) above which the report warns.
BUSY_LOAD = 0.25


def _host() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "n_cpus": os.cpu_count() or 1,
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def _cpu_jiffies(stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from the first line of /proc/stat; None without it."""
    try:
        with open(stat) as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user/nice
    return total - idle, total


def _binary_stamp(path: Path) -> tuple[int, int]:
    try:
        st = Path(path).stat()
    except OSError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)


def busy_cpus(interval: float = 0.3) -> float | None:
    """How many CPUs other processes keep busy right now (sampled over `interval` seconds
    while this process sleeps). The load average would also count our own previous run."""
    a = _cpu_jiffies()
    time.sleep(interval)
    b = _cpu_jiffies()
    if a is None or b is None or b[1] <= a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1]) * (os.cpu_count() or 1)


def run_bench(
    specs: Sequence[ModelSpec],
    opts: BenchOptions,
    progress: ProgressFn | None = None,
    skipped: Sequence[dict[str, str]] = (),
    baseline: str | None = None,
) -> dict[str, Any]:
    """Benchmark every model at every thread count; return the report (report.schema.json).

    A llama-bench failure is recorded in `failures` and the other runs go on; the caller
    decides how to exit. Bad options, a missing model or a missing build raise at once.
    """
    from bitnet import __version__

    opts.check()
    infos = [model_info(s) for s in specs]
    if not infos:
        raise UsageError("no model to benchmark.", hint="pass -m MODEL.gguf or --compare DIR")
    if baseline and not any(_matches(i, baseline) for i in infos):
        names = ", ".join(sorted({i.type.lower() for i in infos} | {i.name for i in infos}))
        raise UsageError(f"--baseline {baseline} names none of the models ({names}).")
    binary = find_binary("llama-bench")
    for info in infos:
        check_tl_served(info.path, binary)
    meter, emodel = E.choose_meter(
        opts.energy, opts.powercap_root, opts.cpu_watts, opts.dram_pj_per_byte
    )
    report: dict[str, Any] = {
        "schema": schema_id(),
        "bitnet_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": _host(),
        "llama_bench": {
            "path": str(binary),
            "build_commit": None,
            "kernels": build_kernel_paths(Path(binary).parent),
        },
        "params": opts.to_dict(),
        "energy_model": emodel.to_dict(),
        "bandwidth": [],
        "models": [i.to_dict() for i in infos],
        "runs": [],
        "results": [],
        "skipped": list(skipped),
        "failures": [],
        "baseline": baseline,
        "notes": [],
    }
    if emodel.method == "estimated":
        report["notes"].append(
            f"energy is ESTIMATED (CPU time x {emodel.cpu_watts:g} W/core + modelled DRAM bytes "
            f"x {emodel.dram_pj_per_byte:g} pJ/B): {emodel.note}"
        )
    progress = progress or (lambda done, total, desc: None)

    bandwidths: dict[int, Bandwidth] = {}
    if opts.bandwidth_probe:
        for t in opts.threads:
            progress(0, 0, f"measuring read bandwidth with {t} thread(s)")
            bandwidths[t] = measure_read_bandwidth(t)
            report["bandwidth"].append(bandwidths[t].to_dict())

    total = len(infos) * len(opts.threads) * opts.tests_per_process() * opts.repetitions
    done = 0
    rapl_dead = False
    busy: list[str] = []
    stamps: set[tuple[int, int]] = set()
    for mi, info in enumerate(infos):
        for threads in opts.threads:
            cmd = llama_bench_command(binary, info.path, opts, threads)

            def on_event(e: Event, _info: ModelInfo = info, _t: int = threads) -> None:
                nonlocal done
                if e.phase in TIMED_PHASES:
                    done += 1
                    progress(min(done, total), total, f"{_info.name} t={_t} test {e.index}")

            stamps.add(_binary_stamp(binary))
            load = busy_cpus()
            if load is not None and load > BUSY_LOAD:
                busy.append(f"{info.name} t={threads}: {load:.1f}")
            run = run_llama_bench(cmd, meter, on_event)
            if -run.returncode in CRASH_SIGNALS and opts.retry_without_repack:
                # A crash in ggml's repacked/AMX matmuls (seen: Q4_0 prompts on AMX CPUs):
                # run once more without those buffer types, and say so.
                crash = explain_failure(run)
                run = run_llama_bench([*cmd, "--repack", "0"], meter, on_event)
                if run.returncode == 0:
                    report["notes"].append(
                        f"{info.name} t={threads}: {crash}; its figures are from a re-run "
                        "with --repack 0 (no repacked/AMX kernels)"
                    )
            report["runs"].append(
                {
                    "model": mi,
                    "threads": threads,
                    "command": run.command,
                    "returncode": run.returncode,
                    "peak_rss_bytes": run.peak_rss_bytes,
                    "peak_rss_source": run.peak_rss_source,
                    "cpu_seconds": run.cpu_seconds,
                    "wall_seconds": run.wall_seconds,
                    "busy_cpus_before": load,
                }
            )
            if run.returncode != 0 or not run.records:
                why = explain_failure(run) if run.returncode else "llama-bench printed no results"
                report["failures"].append({"model": info.name, "threads": threads, "error": why})
                continue
            if meter is not None:
                first = next((e for e in run.events if e.energy_uj), None)
                last = next((e for e in reversed(run.events) if e.energy_uj), None)
                if first and last and sum(meter.delta_joules(first.energy_uj, last.energy_uj)
                                          .values()) <= 0:  # fmt: skip
                    rapl_dead = True
            windows = timed_windows(run.events, meter)
            report["llama_bench"]["build_commit"] = run.records[0].get("build_commit")
            for k, rec in enumerate(run.records, start=1):
                report["results"].append(
                    _result(rec, mi, info, threads, run, windows.get(k), emodel, bandwidths)
                )
    if len(stamps | {_binary_stamp(binary)}) > 1:
        report["notes"].append(
            f"{binary} was rebuilt while the benchmark ran: the runs used different builds, "
            "so compare them with care (run again)"
        )
    if busy:
        report["notes"].append(
            "other processes kept CPUs busy before some runs (busy CPUs: "
            + "; ".join(busy)
            + "): their figures may be low"
        )
    if rapl_dead:  # counters that never move are not a measurement: estimate instead
        emodel = E.EnergyModel(
            "estimated", opts.cpu_watts, opts.dram_pj_per_byte,
            note="the RAPL counters did not advance during the runs",
        )  # fmt: skip
        report["energy_model"] = emodel.to_dict()
        for r in report["results"]:
            r["energy"] = test_energy(r["_record"], r["_window"], infos[r["model"]], emodel)
        report["notes"].append("energy is ESTIMATED: the RAPL counters did not advance")
    for r in report["results"]:
        r.pop("_record", None)
        r.pop("_window", None)
    if baseline:
        add_ratios(report, baseline)
    return report


def _result(
    rec: dict[str, Any],
    mi: int,
    info: ModelInfo,
    threads: int,
    run: ProcessRun,
    window: Window | None,
    emodel: E.EnergyModel,
    bandwidths: dict[int, Bandwidth],
) -> dict[str, Any]:
    n_p, n_g, depth = int(rec["n_prompt"]), int(rec["n_gen"]), int(rec.get("n_depth", 0))
    ts = stats(rec.get("samples_ts") or [])
    return {
        "model": mi,
        "name": info.name,
        "type": info.type,
        "threads": int(rec.get("n_threads", threads)),
        "test": test_name(n_p, n_g, depth),
        "n_prompt": n_p,
        "n_gen": n_g,
        "depth": depth,
        "repetitions": len(ts["samples"]),
        "tokens_per_second": ts,
        "peak_rss_bytes": run.peak_rss_bytes,
        "energy": test_energy(rec, window, info, emodel),
        "bound": test_bound(rec, info, bandwidths.get(threads), ts["mean"]),
        "vs_baseline": None,
        "_record": rec,  # kept until the report is final (see run_bench)
        "_window": window,
    }


def _matches(info: ModelInfo | dict[str, Any], baseline: str) -> bool:
    b = baseline.lower()
    if isinstance(info, ModelInfo):
        return b in (info.type.lower(), info.name.lower(), str(info.path).lower())
    return b in (str(info["type"]).lower(), str(info["name"]).lower(), str(info["path"]).lower())


def add_ratios(report: dict[str, Any], baseline: str) -> None:
    """Fill each result's `vs_baseline` (speed, energy per token, file size, peak RSS ratios)
    against the baseline model's result of the same test and thread count."""
    models = report["models"]
    base_ids = [i for i, m in enumerate(models) if _matches(m, baseline)]
    if not base_ids:
        report["notes"].append(f"no ratios: the baseline {baseline} was not benchmarked")
        return
    bid = base_ids[0]
    base = {(r["test"], r["threads"]): r for r in report["results"] if r["model"] == bid}

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    for r in report["results"]:
        b = base.get((r["test"], r["threads"]))
        if b is None:
            continue
        r["vs_baseline"] = {
            "baseline": models[bid]["name"],
            "speed": ratio(r["tokens_per_second"]["mean"], b["tokens_per_second"]["mean"]),
            "energy_per_token": ratio(
                r["energy"]["joules_per_token"], b["energy"]["joules_per_token"]
            ),
            "file_size": ratio(models[r["model"]]["file_size"], models[bid]["file_size"]),
            "peak_rss": ratio(r["peak_rss_bytes"], b["peak_rss_bytes"]),
        }


def failure_error(report: dict[str, Any]) -> BitnetError | None:
    """A RuntimeFailure summarising the failed runs of a report, or None."""
    fails = report["failures"]
    if not fails:
        return None
    n_runs = len(report["runs"])
    first = fails[0]
    return RuntimeFailure(
        f"{len(fails)} of {n_runs} llama-bench runs failed; first: {first['model']} "
        f"t={first['threads']}: {first['error']}"
    )
