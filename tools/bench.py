"""`bitnet bench`: tokens/s, memory and energy of GGUF models, measured with llama-bench.

One `llama-bench` process runs per (model, thread count), so that its peak resident memory
(`ru_maxrss` of the reaped child) belongs to that model alone. It runs with `-o jsonl
--progress`: every "prompt run k/R" / "generation run k/R" line on its stderr and every result
line on its stdout is an event at which we read the energy counters (RAPL) and the child's CPU
time (/proc). The intervals that start at a timed run are the timed part of a test, so each
test gets the energy (or CPU time, for the estimate) of its own timed repetitions: no model
loading, warm-up or depth fill. Tokens/s statistics come from llama-bench's own per-repetition
samples (`samples_ts`).

Energy: measured (RAPL) or estimated, see `energy.py`; memory-bandwidth bound: `bandwidth.py`.
The report is one JSON document (REPORT_SCHEMA, documented in docs/bench.md); the table, CSV
and plot are views of it. Library code: nothing here prints.
"""

from __future__ import annotations

import collections
import csv
import datetime
import hashlib
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import energy as E
from .bandwidth import Bandwidth, Traffic, bound_tokens_per_second, measure_read_bandwidth
from .build import check_tl_served, ensure_tl_kernels, find_binary
from .errors import (
    BitnetError,
    BuildError,
    InputNotFoundError,
    RuntimeFailure,
    ShapeError,
    UsageError,
)
from .fsutil import atomic_output, check_output
from .gguf import GGUFReader, describe
from .runtime import llama_env, spawn

ProgressFn = Callable[[int, int, str], None]

SCHEMA_ID = "bitnet-bench/1"

#: Types `--compare` converts to by default (q4_0 via llama-quantize from the f16 file).
COMPARE_TYPES = ("i2_s", "tq1_0", "tq2_0", "q4_0", "f16", "tl2")
#: Types made by llama-quantize from the f16 conversion: our type name -> llama-quantize's.
QUANTIZE_TYPES = {"q4_0": "Q4_0"}

#: Signals of a crashed (not interrupted) llama-bench: such a run is retried with --repack 0.
CRASH_SIGNALS = frozenset(
    int(getattr(signal, n)) for n in ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT")
    if hasattr(signal, n)
)  # fmt: skip
#: CPUs kept busy by other processes (see busy_cpus) above which the report warns.
BUSY_LOAD = 0.25
#: Shortest timed window (seconds) whose CPU time is taken from /proc (its clock ticks are
#: 10 ms: over a second the rounding stays within a few percent).
MIN_CPU_WINDOW = 1.0


# --- options and models -----------------------------------------------------------------------


@dataclass
class BenchOptions:
    """What to measure (llama-bench's -p/-n/-t/-r/-d) and how to account energy."""

    n_prompt: list[int] = field(default_factory=lambda: [128])
    n_gen: list[int] = field(default_factory=lambda: [64])
    threads: list[int] = field(default_factory=lambda: [1])
    repetitions: int = 5
    depth: list[int] = field(default_factory=lambda: [0])
    warmup: bool = True
    energy: str = "auto"  # auto | rapl | estimate
    cpu_watts: float = E.DEFAULT_CPU_WATTS
    dram_pj_per_byte: float = E.DEFAULT_DRAM_PJ_PER_BYTE
    bandwidth_probe: bool = True
    powercap_root: Path = E.POWERCAP_ROOT
    retry_without_repack: bool = True

    def check(self) -> None:
        """Raise UsageError for impossible values (before anything runs)."""
        if self.repetitions < 1:
            raise UsageError("-r/--repetitions must be at least 1.")
        if not self.threads or min(self.threads) < 1:
            raise UsageError("-t/--threads must list thread counts of at least 1.")
        if min(self.n_prompt + self.n_gen + self.depth) < 0:
            raise UsageError("-p, -n and --depth must not be negative.")
        if not any(self.n_prompt) and not any(self.n_gen):
            raise UsageError("nothing to measure: -p and -n are both 0.")

    def tests_per_process(self) -> int:
        kinds = sum(1 for p in self.n_prompt if p > 0) + sum(1 for n in self.n_gen if n > 0)
        return kinds * len(self.depth)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_prompt": list(self.n_prompt),
            "n_gen": list(self.n_gen),
            "threads": list(self.threads),
            "repetitions": self.repetitions,
            "depth": list(self.depth),
            "warmup": self.warmup,
        }


def parse_int_list(text: str | int | Sequence[int], option: str) -> list[int]:
    """'1,2' -> [1, 2] (duplicates dropped, order kept); UsageError naming `option` otherwise."""
    if isinstance(text, int):
        return [text]
    if not isinstance(text, str):
        return list(dict.fromkeys(int(v) for v in text))
    values: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not re.fullmatch(r"\d+", part):
            raise UsageError(f"{option} takes comma-separated whole numbers, not {text!r}.")
        values.append(int(part))
    return list(dict.fromkeys(values))


def parse_names(text: str) -> list[str]:
    """'i2_s, TQ2_0' -> ['i2_s', 'tq2_0'] (lower case, duplicates dropped)."""
    return list(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))


@dataclass
class ModelSpec:
    """A GGUF file to benchmark; `name` overrides the file stem shown in tables."""

    path: Path
    name: str | None = None


@dataclass
class ModelInfo:
    """Facts about a model file, from our GGUF reader (no tensor data read)."""

    path: Path
    name: str
    type: str  # the dominant type of its linear layers: "I2_S", "TQ2_0", "F16", "Q4_0" ...
    file_size: int
    n_params: int
    bpw: float
    bpw_linears: float | None
    traffic: Traffic

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "type": self.type,
            "file_size": self.file_size,
            "n_params": self.n_params,
            "bpw": self.bpw,
            "bpw_linears": self.bpw_linears,
            "traffic": self.traffic.to_dict(),
        }


def model_info(spec: ModelSpec) -> ModelInfo:
    """Read a model's size, parameter count, bits per weight, type and traffic."""
    path = Path(spec.path)
    if not path.is_file():
        raise InputNotFoundError(
            f"model file {path} does not exist.",
            hint="convert one with: bitnet convert <hf-folder> -o model.gguf",
        )
    reader = GGUFReader(path)
    summary = describe(reader)
    by_type: collections.Counter[str] = collections.Counter()
    for t in reader.tensors.values():
        if len(t.shape) == 2 and t.name.startswith("blk."):
            by_type[t.type_name] += t.nbytes
    dominant = by_type.most_common(1)[0][0] if by_type else "?"
    return ModelInfo(
        path=path,
        name=spec.name or path.stem,
        type=dominant,
        file_size=reader.file_size,
        n_params=summary["n_parameters"],
        bpw=summary["bpw_overall"] or 0.0,
        bpw_linears=summary["bpw_linears"],
        traffic=Traffic.from_gguf(reader),
    )


# --- llama-bench: command, output, events -----------------------------------------------------


def llama_bench_command(
    binary: Path | str, model: Path, opts: BenchOptions, threads: int
) -> list[str]:
    """The llama-bench command line for one (model, thread count)."""

    def joined(values: Iterable[int]) -> str:
        return ",".join(str(v) for v in values)

    cmd = [
        str(binary),
        "-m", str(model),
        "-p", joined(opts.n_prompt),
        "-n", joined(opts.n_gen),
        "-d", joined(opts.depth),
        "-t", str(threads),
        "-r", str(opts.repetitions),
        "-o", "jsonl",
        "--progress",
    ]  # fmt: skip
    if not opts.warmup:
        cmd.append("--no-warmup")
    return cmd


def parse_llama_bench_output(text: str) -> list[dict[str, Any]]:
    """Test records from llama-bench's `-o json` (one array) or `-o jsonl` (one per line)."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RuntimeFailure(f"llama-bench printed malformed JSON ({exc.msg}).") from None
        return [r for r in records if isinstance(r, dict)]
    records = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise RuntimeFailure(f"llama-bench printed malformed JSON ({exc.msg}).") from None
    return records


_PROGRESS = re.compile(r"^llama-bench: benchmark (\d+)/(\d+): (.+?)\s*$")
_PHASES = (
    ("starting", "starting"),
    ("warmup", "warmup"),
    ("depth run", "depth"),
    ("prompt run", "prompt"),
    ("generation run", "generation"),
)
#: Phases whose intervals are the timed part of a test (what samples_ns measures).
TIMED_PHASES = frozenset({"prompt", "generation"})


def parse_progress(line: str) -> tuple[int, int, str] | None:
    """'llama-bench: benchmark 2/4: generation run 1/5' -> (2, 4, 'generation'); else None."""
    m = _PROGRESS.match(line)
    if not m:
        return None
    text = m.group(3)
    for prefix, phase in _PHASES:
        if text.startswith(prefix):
            return int(m.group(1)), int(m.group(2)), phase
    return int(m.group(1)), int(m.group(2)), "other"


@dataclass
class Event:
    """A moment of a llama-bench run with the counters read at it."""

    t: float
    index: int  # 1-based test number in the process (0: none)
    phase: str  # starting|warmup|depth|prompt|generation|result|other|spawn|exit
    energy_uj: dict[str, int] | None = None
    cpu_seconds: float | None = None


@dataclass
class Window:
    """The timed part of one test: wall seconds, CPU seconds of the child, joules per domain."""

    seconds: float = 0.0
    cpu_seconds: float | None = 0.0
    joules: dict[str, float] | None = None


def timed_windows(events: Sequence[Event], meter: E.RaplMeter | None) -> dict[int, Window]:
    """Sum, per test, the intervals that begin at a timed-run event (see the module docstring).

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


@dataclass
class ProcessRun:
    """One finished llama-bench process."""

    command: list[str]
    records: list[dict[str, Any]]
    events: list[Event]
    returncode: int
    peak_rss_bytes: int
    cpu_seconds: float
    wall_seconds: float
    stderr_tail: list[str]
    peak_rss_source: str = "VmHWM"


def _maxrss_bytes(ru_maxrss: int) -> int:
    # Linux reports kilobytes, macOS bytes (ref: getrusage(2), Darwin getrusage(2)).
    return ru_maxrss if platform.system() == "Darwin" else ru_maxrss * 1024


def vm_hwm_bytes(pid: int, proc: Path = Path("/proc")) -> int | None:
    """Peak resident memory of `pid` since its exec (VmHWM of /proc/<pid>/status), or None.

    Preferred over the reaped child's ru_maxrss, which on Linux also holds the *parent's*
    peak at fork/exec time (exec folds the old mm's high-water mark into the child's maxrss):
    after this process has run the 2 GiB bandwidth probe, every child would report 2 GiB.
    """
    try:
        with open(proc / str(pid) / "status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def run_llama_bench(
    cmd: Sequence[str],
    meter: E.RaplMeter | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> ProcessRun:
    """Run one llama-bench process to completion, reading counters at each of its events.

    Peak RSS is the largest VmHWM seen (read at every event and every 50 ms by a watcher
    thread); ru_maxrss of the reaped child is the fallback where there is no /proc. The child
    is reaped with os.wait4 so that its rusage (CPU time) is its own.
    """
    lock = threading.Lock()
    events: list[Event] = []
    records: list[dict[str, Any]] = []
    tail: collections.deque[str] = collections.deque(maxlen=40)

    def read_energy() -> dict[str, int] | None:
        if meter is None:
            return None
        try:
            return meter.read()
        except (OSError, ValueError):
            return None

    proc = spawn(cmd, stdout=subprocess.PIPE)
    pid = proc.pid

    hwm: list[int] = []

    def sample_hwm() -> None:
        v = vm_hwm_bytes(pid)
        if v is not None:
            with lock:
                hwm.append(v)

    def snap(index: int, phase: str) -> None:
        e = Event(time.perf_counter(), index, phase, read_energy(), E.process_cpu_seconds(pid))
        sample_hwm()
        with lock:
            events.append(e)
        if on_event is not None:
            on_event(e)

    def read_stdout() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("{"):
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                tail.append(f"malformed result line: {line[:200]}")
                continue
            with lock:
                records.append(rec)
                n = len(records)
            snap(n, "result")

    def read_stderr() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            parsed = parse_progress(line)
            if parsed:
                snap(parsed[0], parsed[2])
            else:
                tail.append(line)

    stop = threading.Event()

    def watch_memory() -> None:
        while not stop.wait(0.05):
            sample_hwm()

    t0 = time.perf_counter()
    snap(0, "spawn")
    readers = [
        threading.Thread(target=f, daemon=True) for f in (read_stdout, read_stderr, watch_memory)
    ]
    for r in readers:
        r.start()
    try:
        _, status, usage = os.wait4(pid, 0)
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        raise
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    stop.set()
    for r in readers:
        r.join()
    with lock:
        events.append(Event(time.perf_counter(), 0, "exit", read_energy(), None))
    return ProcessRun(
        command=list(cmd),
        records=records,
        events=events,
        returncode=proc.returncode,
        peak_rss_bytes=max(hwm) if hwm else _maxrss_bytes(usage.ru_maxrss),
        peak_rss_source="VmHWM" if hwm else "ru_maxrss",
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        wall_seconds=wall,
        stderr_tail=list(tail),
    )


def explain_failure(run: ProcessRun) -> str:
    """One sentence on why a llama-bench process failed."""
    code = run.returncode
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        how = f"was killed by {name}"
    else:
        how = f"exited with status {code}"
    lines = [ln.strip() for ln in run.stderr_tail if ln.strip()]
    why = next(
        (ln for ln in reversed(lines) if re.search(r"error|failed|invalid", ln, re.I)),
        lines[-1] if lines else "",
    )
    return f"llama-bench {how}" + (f": {why}" if why else "")


# --- statistics and energy per test -----------------------------------------------------------


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


# --- the benchmark ----------------------------------------------------------------------------


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
    """Benchmark every model at every thread count; return the report (REPORT_SCHEMA).

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
        "schema": SCHEMA_ID,
        "bitnet_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": _host(),
        "llama_bench": {"path": str(binary), "build_commit": None},
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


# --- --compare: one checkpoint, several types -------------------------------------------------


def compare_cache_dir(checkpoint: Path, root: Path | None = None) -> Path:
    """`$BITNET_CACHE/bench/<name>-<key>`: the key changes when the checkpoint's files do."""
    from .build import default_cache

    checkpoint = Path(checkpoint).resolve()
    h = hashlib.sha256(str(checkpoint).encode())
    for p in sorted(checkpoint.iterdir()):
        if p.is_file() and (p.suffix in (".json", ".safetensors")):
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return (root or default_cache() / "bench") / f"{checkpoint.name}-{h.hexdigest()[:10]}"


def prepare_compare(
    checkpoint: Path,
    types: Sequence[str],
    cache_dir: Path | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> tuple[list[ModelSpec], list[dict[str, str]]]:
    """Convert `checkpoint` to each of `types` (reusing earlier conversions in the cache).

    Returns (models to bench, skipped types with the reason). A type that cannot hold the
    model's shapes is skipped — not an error. TL1/TL2 conversions get their kernels built in
    first (only when the build lacks the model's shapes).
    """
    from .convert import OUTTYPES, convert_checkpoint

    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir() or not (checkpoint / "config.json").is_file():
        raise InputNotFoundError(
            f"{checkpoint} is not a checkpoint folder (no config.json).",
            hint="pass a Hugging Face checkpoint folder (make one with: bitnet dummy -o DIR)",
        )
    known = set(OUTTYPES) | set(QUANTIZE_TYPES)
    types = [t.lower() for t in types]
    unknown = [t for t in types if t not in known]
    if unknown:
        raise UsageError(
            f"unknown --types {', '.join(unknown)}; choose from {', '.join(sorted(known))}."
        )
    folder = cache_dir or compare_cache_dir(checkpoint)
    folder.mkdir(parents=True, exist_ok=True)
    specs: list[ModelSpec] = []
    skipped: list[dict[str, str]] = []

    def converted(outtype: str) -> Path:
        out = folder / f"{outtype}.gguf"
        if force or not out.is_file():
            convert_checkpoint(checkpoint, out, outtype, force=True, progress=progress)
        return out

    for t in dict.fromkeys(types):
        try:
            if t in QUANTIZE_TYPES:
                out = _quantize(converted("f16"), folder / f"{t}.gguf", QUANTIZE_TYPES[t], force)
            else:
                out = converted(t)
            if t in ("tl1", "tl2"):  # the build must serve the model's TL shapes
                ensure_tl_kernels(out, progress=progress)
        except (ShapeError, UsageError, RuntimeFailure, BuildError) as exc:
            skipped.append({"type": t, "reason": str(exc)})
            continue
        specs.append(ModelSpec(out, name=t))
    return specs, skipped


def _quantize(src: Path, out: Path, qtype: str, force: bool) -> Path:
    """llama-quantize `src` (an f16 GGUF) to `qtype`, through a temporary file."""
    if out.is_file() and not force:
        return out
    binary = find_binary("llama-quantize")
    with atomic_output(out, force=True) as tmp:
        proc = subprocess.run(
            [str(binary), str(src), str(tmp), qtype],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            env=llama_env(),
        )
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            raise RuntimeFailure(
                f"llama-quantize to {qtype} failed: {lines[-1] if lines else proc.returncode}"
            )
    return out


# --- views: table rows, CSV, plot -------------------------------------------------------------


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def _fmt_ts(x: float) -> str:
    return f"{x:.0f}" if x >= 1000 else f"{x:.2f}"


def energy_label(report: dict[str, Any]) -> str:
    """'estimated' or 'measured' — how every J/token of this report was obtained."""
    return str(report["energy_model"]["method"])


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(columns, rows) of the result table, one row per test."""
    models = report["models"]
    label = energy_label(report)
    cols = ["model", "type", "size", "bpw", "threads", "test", "t/s mean ± sd", "median",
            "min", "max", "peak RSS", f"J/token ({label})", "% of bw bound"]  # fmt: skip
    with_ratio = any(r.get("vs_baseline") for r in report["results"])
    if with_ratio:
        cols += ["speed × base", "J/token × base"]
    rows = []
    for r in report["results"]:
        m = models[r["model"]]
        ts = r["tokens_per_second"]
        jpt = r["energy"]["joules_per_token"]
        pct = (r.get("bound") or {}).get("percent")
        row = [
            m["name"],
            m["type"],
            _fmt_bytes(m["file_size"]),
            f"{m['bpw']:.2f}",
            str(r["threads"]),
            r["test"],
            f"{_fmt_ts(ts['mean'])} ± {_fmt_ts(ts['stddev'])}",
            _fmt_ts(ts["median"]),
            _fmt_ts(ts["min"]),
            _fmt_ts(ts["max"]),
            _fmt_bytes(r["peak_rss_bytes"]),
            (f"{jpt:.3g}" + (" est." if label == "estimated" else "")) if jpt is not None else "-",
            f"{pct:.0f}%" if pct is not None else "-",
        ]
        if with_ratio:
            v = r.get("vs_baseline") or {}
            row += [
                f"{v['speed']:.2f}×" if v.get("speed") else "-",
                f"{v['energy_per_token']:.2f}×" if v.get("energy_per_token") else "-",
            ]
        rows.append(row)
    return cols, rows


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The lines printed under the table: bandwidth, traffic per token, how energy was got."""
    lines = []
    bws = report["bandwidth"]
    if bws:
        parts = [f"{b['threads']} thread(s) {b['bytes_per_second'] / 1e9:.1f} GB/s" for b in bws]
        lines.append(
            f"read bandwidth (NumPy streaming probe, {_fmt_bytes(bws[0]['buffer_bytes'])} buffer, "
            f"best of {bws[0]['passes']}): " + "; ".join(parts)
        )
    for m in report["models"]:
        t = m["traffic"]
        head = "tied head: whole embedding read" if t["tied_head"] else "untied head"
        lines.append(
            f"{m['name']}: {_fmt_bytes(t['weight_bytes'])} of weights read per generated token "
            f"({head}) + {_fmt_bytes(t['kv_bytes_per_position'])} of KV per context position"
        )
    em = report["energy_model"]
    if em["method"] == "measured":
        lines.append(
            "energy: MEASURED with RAPL (" + ", ".join(em.get("domains", [])) + "; whole "
            "socket, other processes included), timed repetitions only"
        )
    return lines


CSV_COLUMNS = (
    "model", "path", "type", "file_size", "n_params", "bpw", "bpw_linears", "threads", "test",
    "n_prompt", "n_gen", "depth", "repetitions", "ts_mean", "ts_median", "ts_min", "ts_max",
    "ts_stddev", "peak_rss_bytes", "energy_method", "joules", "joules_per_token",
    "bytes_per_token", "bandwidth_bytes_per_second", "bound_tokens_per_second",
    "bound_percent", "speed_vs_baseline", "energy_vs_baseline",
)  # fmt: skip


def csv_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat rows for --csv (CSV_COLUMNS)."""
    rows = []
    for r in report["results"]:
        m = report["models"][r["model"]]
        ts, bound, vs = r["tokens_per_second"], r.get("bound") or {}, r.get("vs_baseline") or {}
        rows.append(
            {
                "model": m["name"], "path": m["path"], "type": m["type"],
                "file_size": m["file_size"], "n_params": m["n_params"], "bpw": m["bpw"],
                "bpw_linears": m["bpw_linears"], "threads": r["threads"], "test": r["test"],
                "n_prompt": r["n_prompt"], "n_gen": r["n_gen"], "depth": r["depth"],
                "repetitions": r["repetitions"], "ts_mean": ts["mean"],
                "ts_median": ts["median"], "ts_min": ts["min"], "ts_max": ts["max"],
                "ts_stddev": ts["stddev"], "peak_rss_bytes": r["peak_rss_bytes"],
                "energy_method": r["energy"]["method"], "joules": r["energy"]["joules"],
                "joules_per_token": r["energy"]["joules_per_token"],
                "bytes_per_token": bound.get("bytes_per_token"),
                "bandwidth_bytes_per_second": bound.get("bandwidth_bytes_per_second"),
                "bound_tokens_per_second": bound.get("tokens_per_second"),
                "bound_percent": bound.get("percent"),
                "speed_vs_baseline": vs.get("speed"),
                "energy_vs_baseline": vs.get("energy_per_token"),
            }
        )  # fmt: skip
    return rows


def write_csv(report: dict[str, Any], path: Path, force: bool = False) -> Path:
    """Write the results as CSV (through a temporary file)."""
    with atomic_output(Path(path), force) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        w.writeheader()
        for row in csv_rows(report):
            w.writerow({k: "" if v is None else v for k, v in row.items()})
    return Path(path)


def require_matplotlib() -> Any:
    """matplotlib.pyplot with the file-only Agg backend, or UsageError saying how to get it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed.",
            hint="pip install 'bitnet[plot]' (or pip install matplotlib)",
        ) from None
    return plt


def check_outputs(paths: Iterable[Path | None], force: bool) -> None:
    """Refuse existing outputs before anything runs (a bench can take long)."""
    for p in paths:
        if p is not None:
            check_output(Path(p), force)


def write_plot(report: dict[str, Any], path: Path, force: bool = False) -> Path:
    """tokens/s by threads (one line per model, min-max as error bars) for pp and tg, and
    J/token per model, labelled measured or estimated."""
    plt = require_matplotlib()
    label = energy_label(report)
    models = report["models"]
    kinds = [("pp", "prompt processing"), ("tg", "generation")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, (kind, title) in zip(axes[:2], kinds, strict=False):
        for mi, m in enumerate(models):
            rs = sorted(
                (r for r in report["results"] if r["model"] == mi and r["test"].startswith(kind)),
                key=lambda r: r["threads"],
            )
            if not rs:
                continue
            xs = [r["threads"] for r in rs]
            ys = [r["tokens_per_second"]["mean"] for r in rs]
            lo = [y - r["tokens_per_second"]["min"] for y, r in zip(ys, rs, strict=True)]
            hi = [r["tokens_per_second"]["max"] - y for y, r in zip(ys, rs, strict=True)]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=m["name"])
        ax.set_title(f"{title} (tokens/s)")
        ax.set_xlabel("threads")
        ax.set_xticks(sorted({r["threads"] for r in report["results"]}) or [1])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    ax = axes[2]
    tg = [r for r in report["results"] if r["test"].startswith("tg")] or report["results"]
    names = [f"{models[r['model']]['name']}\nt={r['threads']}" for r in tg]
    vals = [r["energy"]["joules_per_token"] or 0.0 for r in tg]
    ax.bar(range(len(vals)), vals, color="tab:gray" if label == "estimated" else "tab:green")
    ax.set_xticks(range(len(vals)), names, fontsize=7)
    ax.set_title(f"J/token, {tg[0]['test'] if tg else ''} — {label.upper()}")
    ax.set_ylabel(f"J/token ({label})")
    if label == "estimated":
        ax.set_xlabel("ESTIMATED, no RAPL here: CPU time × W/core + DRAM bytes × pJ/B", fontsize=8)
    fig.suptitle(f"bitnet bench — {report['host']['cpu']}", fontsize=10)
    fig.tight_layout()
    with atomic_output(Path(path), force) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)


# --- the documented JSON schema ---------------------------------------------------------------

_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_INT = {"type": "integer", "minimum": 0}
_STR = {"type": "string"}
_INTS = {"type": "array", "items": {"type": "integer", "minimum": 0}}

_STATS = {
    "type": "object",
    "required": ["mean", "median", "min", "max", "stddev", "samples"],
    "properties": {
        "mean": _NUM,
        "median": _NUM,
        "min": _NUM,
        "max": _NUM,
        "stddev": _NUM,
        "samples": {"type": "array", "items": _NUM},
    },
}

_ENERGY = {
    "type": "object",
    "required": ["method", "joules", "joules_per_token", "tokens", "window_seconds"],
    "properties": {
        "method": {"enum": ["measured", "estimated"]},
        "joules": _NUM,
        "joules_per_token": _NUM_OR_NULL,
        "tokens": _INT,
        "window_seconds": _NUM,
        "domains": {"type": "object"},
        "cpu_seconds": _NUM,
        "cpu_seconds_source": {"enum": ["proc", "threads-x-wall"]},
        "dram_bytes": _NUM,
        "cpu_joules": _NUM,
        "dram_joules": _NUM,
    },
}

_BOUND = {
    "type": ["object", "null"],
    "required": ["bytes_per_token", "bandwidth_bytes_per_second", "tokens_per_second", "percent"],
    "properties": {
        "bytes_per_token": _NUM,
        "bandwidth_bytes_per_second": _NUM_OR_NULL,
        "tokens_per_second": _NUM_OR_NULL,
        "percent": _NUM_OR_NULL,
    },
}

#: JSON Schema (draft 2020-12 subset) of `bitnet bench --json`; documented in docs/bench.md.
REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "bitnet bench report",
    "type": "object",
    "required": [
        "schema",
        "bitnet_version",
        "created",
        "host",
        "llama_bench",
        "params",
        "energy_model",
        "bandwidth",
        "models",
        "runs",
        "results",
        "skipped",
        "failures",
        "baseline",
        "notes",
    ],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "bitnet_version": _STR,
        "created": _STR,
        "host": {
            "type": "object",
            "required": ["cpu", "n_cpus", "machine", "system"],
            "properties": {"cpu": _STR, "n_cpus": _INT, "machine": _STR, "system": _STR},
        },
        "llama_bench": {
            "type": "object",
            "required": ["path", "build_commit"],
            "properties": {"path": _STR, "build_commit": {"type": ["string", "null"]}},
        },
        "params": {
            "type": "object",
            "required": ["n_prompt", "n_gen", "threads", "repetitions", "depth", "warmup"],
            "properties": {
                "n_prompt": _INTS,
                "n_gen": _INTS,
                "threads": _INTS,
                "depth": _INTS,
                "repetitions": {"type": "integer", "minimum": 1},
                "warmup": {"type": "boolean"},
            },
        },
        "energy_model": {
            "type": "object",
            "required": ["method", "note"],
            "properties": {
                "method": {"enum": ["measured", "estimated"]},
                "note": _STR,
                "cpu_watts": _NUM,
                "dram_pj_per_byte": _NUM,
                "domains": {"type": "array", "items": _STR},
            },
        },
        "bandwidth": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["threads", "bytes_per_second", "buffer_bytes", "passes", "method"],
                "properties": {
                    "threads": {"type": "integer", "minimum": 1},
                    "bytes_per_second": _NUM,
                    "buffer_bytes": _INT,
                    "passes": _INT,
                    "llc_bytes": {"type": ["integer", "null"]},
                    "method": _STR,
                },
            },
        },
        "models": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "name",
                    "path",
                    "type",
                    "file_size",
                    "n_params",
                    "bpw",
                    "bpw_linears",
                    "traffic",
                ],
                "properties": {
                    "name": _STR,
                    "path": _STR,
                    "type": _STR,
                    "file_size": _INT,
                    "n_params": _INT,
                    "bpw": _NUM,
                    "bpw_linears": _NUM_OR_NULL,
                    "traffic": {
                        "type": "object",
                        "required": [
                            "weight_bytes",
                            "head_bytes",
                            "embedding_row_bytes",
                            "tied_head",
                            "kv_bytes_per_position",
                        ],
                    },
                },
            },
        },
        "runs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "model",
                    "threads",
                    "command",
                    "returncode",
                    "peak_rss_bytes",
                    "cpu_seconds",
                    "wall_seconds",
                ],
                "properties": {
                    "model": _INT,
                    "threads": _INT,
                    "peak_rss_bytes": _INT,
                    "command": {"type": "array", "items": _STR},
                    "returncode": {"type": "integer"},
                    "cpu_seconds": _NUM,
                    "wall_seconds": _NUM,
                },
            },
        },
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "model",
                    "name",
                    "type",
                    "threads",
                    "test",
                    "n_prompt",
                    "n_gen",
                    "depth",
                    "repetitions",
                    "tokens_per_second",
                    "peak_rss_bytes",
                    "energy",
                    "bound",
                    "vs_baseline",
                ],
                "properties": {
                    "model": _INT,
                    "name": _STR,
                    "type": _STR,
                    "threads": _INT,
                    "test": _STR,
                    "n_prompt": _INT,
                    "n_gen": _INT,
                    "depth": _INT,
                    "repetitions": _INT,
                    "tokens_per_second": _STATS,
                    "peak_rss_bytes": _INT,
                    "energy": _ENERGY,
                    "bound": _BOUND,
                    "vs_baseline": {"type": ["object", "null"]},
                },
                "additionalProperties": False,
            },
        },
        "skipped": {
            "type": "array",
            "items": {"type": "object", "required": ["type", "reason"]},
        },
        "failures": {
            "type": "array",
            "items": {"type": "object", "required": ["model", "threads", "error"]},
        },
        "baseline": {"type": ["string", "null"]},
        "notes": {"type": "array", "items": _STR},
    },
}

_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def schema_errors(doc: Any, schema: dict[str, Any] = REPORT_SCHEMA, at: str = "$") -> list[str]:
    """Validate `doc` against the JSON Schema subset REPORT_SCHEMA uses (type, const, enum,
    required, properties, additionalProperties: false, items, minimum); [] when valid.

    Kept small so that the schema can be checked without the jsonschema package.
    """
    errs: list[str] = []
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_JSON_TYPES[t](doc) for t in names):
            return [f"{at}: expected {' or '.join(names)}, got {type(doc).__name__}"]
    if "const" in schema and doc != schema["const"]:
        errs.append(f"{at}: expected {schema['const']!r}")
    if "enum" in schema and doc not in schema["enum"]:
        errs.append(f"{at}: {doc!r} is not one of {schema['enum']}")
    if "minimum" in schema and _JSON_TYPES["number"](doc) and doc < schema["minimum"]:
        errs.append(f"{at}: {doc} < {schema['minimum']}")
    if isinstance(doc, dict):
        for key in schema.get("required", []):
            if key not in doc:
                errs.append(f"{at}: missing {key!r}")
        props = schema.get("properties", {})
        for key, value in doc.items():
            if key in props:
                errs += schema_errors(value, props[key], f"{at}.{key}")
            elif schema.get("additionalProperties") is False:
                errs.append(f"{at}: unexpected {key!r}")
    if isinstance(doc, list) and "items" in schema:
        for i, item in enumerate(doc):
            errs += schema_errors(item, schema["items"], f"{at}[{i}]")
    return errs


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
