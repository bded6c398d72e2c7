"""The default thread counts: the ones measured fastest on this machine, measured once and cached.

    choice = choose_threads(model)          # cached figures, else measure now and cache them
    choice.threads, choice.prompt           # decode (-t) and prompt (-tb) counts, e.g. 2, 2
    choice.source                           # "measured" | "cached" | "physical cores"
    choose_threads(model, remeasure=True)   # measure again (`--retune-threads`)
    known_threads(model)                    # cached, else the physical cores: never measures

Start: the physical cores (SMT siblings share one core's vector units, so decode — memory-bound —
rarely gains from them, and a thread more than the cores spins at every barrier). Candidates:
the physical cores, one fewer (a core left for the rest of the system can be faster on a busy
machine) and the logical CPUs when SMT doubles them. Each is timed with one short llama-bench
run (`-p 32 -n 16 -r 2`: a prompt and a decode test on one model load); the fastest tg gives the
decode count (`-t`), the fastest pp the prompt count (`-tb`). Prompts are compute-bound and
usually want every core, but on a machine other jobs keep busy a thread that is descheduled
stalls the others at every barrier, for prompts as for decode (a 2-core AMD EPYC Zen 5 VM at load 9:
pp64 101.6 t/s at 1 thread, 22.3 at 2), so both are measured, not assumed. Results are cached
per machine (CPU model, logical CPUs) and model size class (the log2 of the GGUF's bytes: a
100 MB and a 1 GB model may want different counts) in `$BITNET_CACHE/threads.json`.
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

#: measure(model, threads) -> (decode, prompt) tokens/s. Injected in tests.
MeasureFn = Callable[[Path, int], tuple[float, float]]
CACHE_NAME = "threads.json"


@dataclass
class ThreadChoice:
    threads: int  # decode (llama.cpp -t)
    source: str  # "measured" | "cached" | "physical cores" (nothing could be measured)
    figures: dict[int, float] = field(default_factory=dict)  # threads -> tg t/s
    key: str = ""
    prompt: int = 0  # prompt processing (llama.cpp -tb); 0: as `threads`
    prompt_figures: dict[int, float] = field(default_factory=dict)  # threads -> pp t/s

    def describe(self, prompt: bool = False) -> str:
        """How the decode count (with `prompt`, also the prompt count) was chosen."""
        if self.source == "physical cores":
            also = f"; prompts: {self.prompt or self.threads}" if prompt else ""
            return f"{self.threads} thread(s): the physical cores (not measured){also}"
        figs = ", ".join(f"{t}t {v:.1f}" for t, v in sorted(self.figures.items()))
        pp = ", ".join(f"{t}t {v:.1f}" for t, v in sorted(self.prompt_figures.items()))
        also = f"; prompts: {self.prompt} (pp t/s: {pp})" if prompt else ""
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


def measure_llama_bench(model: Path, threads: int) -> tuple[float, float]:
    """(decode, prompt) t/s of one short llama-bench run (-p 32 -n 16 -r 2) on `threads`."""
    from .bench.llama_bench import run_llama_bench
    from .build import find_binary
    from .errors import RuntimeFailure

    cmd = [str(find_binary("llama-bench")), "-m", str(model), "-p", "32", "-n", "16", "-r", "2"]
    run = run_llama_bench([*cmd, "-t", str(threads), "-o", "jsonl"])
    tg = [float(r["avg_ts"]) for r in run.records if int(r.get("n_gen", 0)) > 0]
    pp = [float(r["avg_ts"]) for r in run.records if int(r.get("n_prompt", 0)) > 0]
    if run.returncode != 0 or not tg or not pp:
        raise RuntimeFailure(f"llama-bench -t {threads} failed (exit status {run.returncode}).")
    return tg[0], pp[0]


def cached_choice(
    model: Path, cache_dir: Path | None = None, logical: int | None = None
) -> ThreadChoice | None:
    """The choice cached for this machine and `model`'s size class, None when never measured."""
    path = cache_dir / CACHE_NAME if cache_dir else cache_file()
    key = cache_key(model, logical)
    hit = _read_cache(path).get(key)
    try:
        figs = {int(t): float(v) for t, v in hit["figures"].items()}
        pp = {int(t): float(v) for t, v in hit["prompt_figures"].items()}
        return ThreadChoice(int(hit["threads"]), "cached", figs, key, int(hit["prompt"]), pp)
    except (TypeError, KeyError, ValueError, AttributeError):  # absent, older or edited badly
        return None


def known_threads(model: Path, cache_dir: Path | None = None) -> ThreadChoice:
    """The cached choice, else the physical cores: what a caller that must not spend seconds
    measuring (`bitnet.load`, a server start while other models serve requests) uses."""
    if (hit := cached_choice(model, cache_dir)) is not None:
        return hit
    return ThreadChoice(physical_cores(), "physical cores", prompt=physical_cores())


def choose_threads(
    model: Path,
    cache_dir: Path | None = None,
    remeasure: bool = False,
    measure: MeasureFn | None = None,
    physical: int | None = None,
    logical: int | None = None,
    counts: Sequence[int] | None = None,
) -> ThreadChoice:
    """The cached choices for this machine and model size, else measure the candidates now.

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
    prompt: dict[int, float] = {}
    for t in counts or candidates(physical, logical):
        try:
            figures[t], prompt[t] = measure(Path(model), t)
        except Exception:  # noqa: BLE001 - a failing count is just not a candidate
            continue
    if not figures:
        return ThreadChoice(physical, "physical cores", {}, key, physical)
    best = max(figures, key=lambda t: figures[t])
    best_pp = max(prompt, key=lambda t: prompt[t])
    choice = ThreadChoice(best, "measured", figures, key, best_pp, prompt)
    data = _read_cache(path)
    data[key] = {
        "threads": best,
        "figures": {str(t): v for t, v in figures.items()},
        "prompt": best_pp,
        "prompt_figures": {str(t): v for t, v in prompt.items()},
    }
    with atomic_output(path, force=True) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return choice
