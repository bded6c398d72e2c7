"""`--outtype auto`: the ternary type this CPU runs fastest for a model's shapes, measured.

Candidates: I2_S and the lookup-table type of the architecture (TL2 on x86, TL1 on ARM). For
each candidate the converter plans the checkpoint (so shapes, FFN padding and "this type cannot
hold that tensor" are the converter's own), then every distinct (M, K) of its ternary linears is
timed as a one-token product (decode, the latency users feel) with the same C kernels llama.cpp
runs (`kernels_lib`, one thread): the per-token cost is Σ count × median ms. The cheaper type
wins; a type that cannot hold the model is out.

Measurements are cached in `$BITNET_HOME/autotype.json` keyed by the CPU (model name and the
kernel paths it picks) and the shape list, so a second pull of a model with the same shapes
measures nothing.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import platform
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BitnetError
from .fsutil import atomic_output

CACHE_FILE = "autotype.json"


def lookup_type() -> str:
    """The lookup-table candidate of this machine: TL1 on ARM, TL2 elsewhere."""
    return "tl1" if platform.machine().lower() in ("arm64", "aarch64") else "tl2"


def _cpu_key(lib: Any) -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "CPU part")):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} | i2s {lib.kernel_name()} | tl {lib.tl.kernel_name()}"


def model_shapes(folder: Path, qtype: str) -> Counter[tuple[int, int]] | None:
    """{(M, K): count} of the ternary linears the converter would write as `qtype`, or None when
    the type cannot hold the model."""
    from .convert import plan_conversion

    try:
        plan, _ = plan_conversion(folder, folder / "unused.gguf", qtype, "f16")
    except BitnetError:
        return None
    return Counter((int(t.shape[0]), int(t.shape[1])) for t in plan.tensors if t.ternary)


class ShapeTimer:
    """One-token milliseconds of an (M, K) product per type, with random ternary weights."""

    def __init__(self, repeats: int = 5, warmup: int = 2, min_sample_s: float = 0.005) -> None:
        from . import kernels_lib
        from .tl_tune import KernelTimer

        self.lib = kernels_lib.load()
        self.tl_timer = KernelTimer(repeats=repeats, warmup=warmup, min_sample_s=min_sample_s)
        self.repeats, self.warmup, self.min_sample_s = repeats, warmup, min_sample_s

    def __call__(self, qtype: str, m: int, k: int) -> float:
        from .quants.tiling import default_tiling
        from .tl_tune import time_call

        if qtype in ("tl1", "tl2"):
            return float(self.tl_timer(qtype, m, k, default_tiling(m, k, qtype), 1))
        from . import quants

        codes = np.random.default_rng([m, k]).integers(-1, 2, size=(m, k), dtype=np.int8)
        w = np.ascontiguousarray(quants.get("i2_s").pack(codes, 0.5)[: m * k // 4])
        x = np.random.default_rng([k]).standard_normal((1, k)).astype(np.float32)
        acts = self.lib.quantize_rows(x)
        y = np.empty((1, m), dtype=np.float32)
        ptr = ctypes.c_void_p
        args = (k, m, 1, ptr(w.ctypes.data), ctypes.c_float(0.5), ptr(acts.ctypes.data),
                ptr(y.ctypes.data), m)  # fmt: skip
        return time_call(
            self.lib._lib.bitnet_i2s_mul_mat, args, self.warmup, self.repeats, self.min_sample_s
        )


def _load_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def choose_outtype(folder: Path, cache: Path | None = None, timer: Any = None) -> tuple[str, str]:
    """(type, one-line reason) for the checkpoint in `folder`; see the module doc."""
    from .store import store_dir

    cache = cache or store_dir() / CACHE_FILE
    candidates = ["i2_s", lookup_type()]
    shapes = {t: model_shapes(Path(folder), t) for t in candidates}
    usable = [t for t in candidates if shapes[t]]
    if not usable:
        return "i2_s", "no ternary type holds every linear; i2_s reports the tensor"
    if len(usable) == 1:
        return usable[0], f"only {usable[0]} holds every linear of this model"
    timer = timer or ShapeTimer()
    cpu = _cpu_key(timer.lib) if hasattr(timer, "lib") else "test timer"
    key_src = json.dumps([cpu, {t: sorted(shapes[t].items()) for t in usable}], default=str)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    known = _load_cache(cache)
    entry = known.get(key)
    if not isinstance(entry, dict) or set(entry.get("ms_per_token", {})) != set(usable):
        per_token = {
            t: sum(n * float(timer(t, m, k)) for (m, k), n in shapes[t].items()) for t in usable
        }
        entry = {"cpu": cpu, "ms_per_token": per_token}
        known[key] = entry
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(cache, force=True) as tmp:
            tmp.write_text(json.dumps(known, indent=2) + "\n", encoding="utf-8")
    ms = entry["ms_per_token"]
    best = min(usable, key=lambda t: (ms[t], t != "i2_s"))  # ties keep I2_S
    others = ", ".join(f"{t} {ms[t]:.3g} ms" for t in usable)
    return best, f"measured one-token linears on {entry['cpu']}: {others} (1 thread)"
