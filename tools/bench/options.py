"""What `bitnet bench` measures (BenchOptions, the option parsers) and the facts of each model."""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import energy as E
from ..bandwidth import Traffic
from ..errors import InputNotFoundError, UsageError
from ..gguf import GGUFReader, describe


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
