"""Driving llama-bench: its command line, its output, and the events of one process.

Every "prompt run k/R" / "generation run k/R" line on its stderr (`--progress`) and every result
line on its stdout (`-o jsonl`) is an Event at which the energy counters (RAPL) and the child's
CPU time (/proc) are read; stats.timed_windows turns them into per-test windows.
"""

from __future__ import annotations

import collections
import json
import os
import platform
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import energy as E
from ..errors import RuntimeFailure
from ..runtime import spawn
from .options import BenchOptions

#: Signals of a crashed (not interrupted) llama-bench: such a run is retried with --repack 0.
CRASH_SIGNALS = frozenset(
    int(getattr(signal, n)) for n in ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT")
    if hasattr(signal, n)
)  # fmt: skip


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
