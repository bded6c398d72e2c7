"""The default thread count: the one measured fastest on this machine, measured once and cached.

    choice = choose_threads(model)          # cached figure, else measure now and cache it
    choice.threads, choice.source           # e.g. 2, "measured" | "cached"
    choose_threads(model, remeasure=True)   # measure again (`--retune-threads`)
    known_threads(model)                    # cached figure, else the physical cores: never measures


Start: the physical cores (SMT siblings share one core's vector units, so decode — memory-bound —
rarely gains from them, and a thread more than the cores spins at every barrier). Candidates:
the physical cores, one fewer (a core left for the rest of the system can be faster on a busy
machine) and the logical CPUs when SMT doubles them. Each is timed with a short llama-bench
decode (`-p 0 -n 16 -r 2`); the fastest tg wins. Results are cached per machine (CPU model,
logical CPUs) and model size class (the log2 of the GGUF's bytes: a 100 MB and a 1 GB model may
want different counts) in `$BITNET_CACHE/threads.json`.

This is the decode count (`-t`). Prompt processing is compute-bound and uses every physical core
(`-tb`, `prompt_threads()`): what suits a memory-bound decode on a busy machine would only slow it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fsutil import atomic_output

#: measure(model, threads) -> decode tokens/s. Injected in tests.
MeasureFn = Callable[[Path, int], float]
CACHE_NAME = "threads.json"


@dataclass
class ThreadChoice:
    threads: int
    source: str  # "measured" | "cached" | "physical cores" (nothing could be measured)
    figures: dict[int, float] = field(default_factory=dict)  # threads -> tg t/s
    key: str = ""

    def describe(self, prompt: int | None = None) -> str:
        """How the count was chosen; with `prompt`, the prompt-processing count too."""
        also = f"; prompts: {prompt} (the physical cores)" if prompt else ""
        if self.source == "physical cores":
            return f"{self.threads} thread(s): the physical cores (not measured){also}"
        figs = ", ".join(f"{t}t {v:.1f}" for t, v in sorted(self.figures.items()))
        again = "; --retune-threads measures again" if self.source == "cached" else ""
        return f"{self.threads} thread(s), {self.source} fastest here (tg t/s: {figs}){also}{again}"


def physical_cores(root: Path = Path("/sys/devices/system/cpu")) -> int:
    """Distinct (package, core) pairs of the online CPUs; os.cpu_count() where sysfs lacks them."""
    cores = set()
    for topo in root.glob("cpu[0-9]*/topology"):
        try:
            pkg = (topo / "physical_package_id").read_text().strip()
            core = (topo / "core_id").read_text().strip()
        except OSError:
            continue
        cores.add((pkg, core))
    return len(cores) or os.cpu_count() or 1


def prompt_threads() -> int:
    """Threads for prompt processing (llama.cpp's `-tb`): the physical cores."""
    return physical_cores()


def gives_threads(args: Iterable[str]) -> bool:
    """True when llama.cpp arguments (after `--`) set the decode thread count themselves."""
    return any(a in ("-t", "--threads") or a.startswith("--threads=") for a in args)


def candidates(physical: int, logical: int) -> list[int]:
    """Thread counts worth timing: the physical cores first, one fewer, the logical CPUs."""
    out = [physical]
    if physical > 1:
        out.append(physical - 1)
    if logical > physical:
        out.append(logical)
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def cache_key(model: Path, logical: int | None = None) -> str:
    """Machine (CPU model, logical CPUs) + model size class (round(log2(bytes)))."""
    size = max(Path(model).stat().st_size, 1)
    return f"{_cpu_model()}|{logical or os.cpu_count() or 1} cpus|2^{round(math.log2(size))} B"


def cache_file() -> Path:
    """`$BITNET_CACHE/threads.json` (by default ~/.cache/bitnet/threads.json)."""
    from .build import default_cache

    return default_cache() / CACHE_NAME


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def measure_llama_bench(model: Path, threads: int) -> float:
    """Decode t/s of a short llama-bench run (-p 0 -n 16 -r 2) with `threads` threads."""
    from .bench.llama_bench import run_llama_bench
    from .build import find_binary
    from .errors import RuntimeFailure

    cmd = [str(find_binary("llama-bench")), "-m", str(model), "-p", "0", "-n", "16", "-r", "2"]
    run = run_llama_bench([*cmd, "-t", str(threads), "-o", "jsonl"])
    speeds = [float(r["avg_ts"]) for r in run.records if int(r.get("n_gen", 0)) > 0]
    if run.returncode != 0 or not speeds:
        raise RuntimeFailure(f"llama-bench -t {threads} failed (exit status {run.returncode}).")
    return speeds[0]


def cached_choice(
    model: Path, cache_dir: Path | None = None, logical: int | None = None
) -> ThreadChoice | None:
    """The choice cached for this machine and `model`'s size class, None when never measured."""
    path = cache_dir / CACHE_NAME if cache_dir else cache_file()
    key = cache_key(model, logical)
    hit = _read_cache(path).get(key)
    try:
        figs = {int(t): float(v) for t, v in hit["figures"].items()}
        return ThreadChoice(int(hit["threads"]), "cached", figs, key)
    except (TypeError, KeyError, ValueError, AttributeError):  # absent or hand-edited badly
        return None


def known_threads(model: Path, cache_dir: Path | None = None) -> ThreadChoice:
    """The cached choice, else the physical cores: what a caller that must not spend seconds
    measuring (`bitnet.load`, a server start while other models serve requests) uses."""
    return cached_choice(model, cache_dir) or ThreadChoice(physical_cores(), "physical cores")


def choose_threads(
    model: Path,
    cache_dir: Path | None = None,
    remeasure: bool = False,
    measure: MeasureFn | None = None,
    physical: int | None = None,
    logical: int | None = None,
    counts: Sequence[int] | None = None,
) -> ThreadChoice:
    """The cached choice for this machine and model size, else measure the candidates now.

    A candidate whose run fails is skipped; if none runs, the physical cores are returned
    (source "physical cores") and nothing is cached.
    """
    measure = measure or measure_llama_bench
    physical = physical or physical_cores()
    logical = logical or os.cpu_count() or physical
    if not remeasure and (hit := cached_choice(model, cache_dir, logical)) is not None:
        return hit
    path = cache_dir / CACHE_NAME if cache_dir else cache_file()
    key = cache_key(model, logical)

    figures: dict[int, float] = {}
    for t in counts or candidates(physical, logical):
        try:
            figures[t] = measure(Path(model), t)
        except Exception:  # noqa: BLE001 - a failing count is just not a candidate
            continue
    if not figures:
        return ThreadChoice(physical, "physical cores", {}, key)
    best = max(figures, key=lambda t: figures[t])
    choice = ThreadChoice(best, "measured", figures, key)
    data = _read_cache(path)
    data[key] = {"threads": best, "figures": {str(t): v for t, v in figures.items()}}
    with atomic_output(path, force=True) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return choice
