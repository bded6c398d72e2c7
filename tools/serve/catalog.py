"""The models a server may serve: Ollama-style names (`name:tag`) and what their GGUF says."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BitnetError, UsageError
from ..gguf import GGUFReader, describe
from ..store import resolve_model

DEFAULT_TAG = "latest"


def name_for(path: Path) -> str:
    """`models/BitNet-2B.I2_S.gguf` -> `bitnet-2b.i2_s:latest` (Ollama names are lower case)."""
    stem = re.sub(r"[^a-z0-9._-]+", "-", Path(path).stem.lower()).strip("-") or "model"
    return f"{stem}:{DEFAULT_TAG}"


def normalize(name: str) -> str:
    """A requested name with the default tag added when it has none."""
    name = name.strip().lower()
    return name if ":" in name else f"{name}:{DEFAULT_TAG}"


def parameter_size(n: int) -> str:
    """2_412_000_000 -> '2.4B' (Ollama's `parameter_size`)."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


@dataclass
class ModelEntry:
    """One servable model. `error` is set when its file cannot be read: the server keeps running
    and reports the error to whoever asks for this model."""

    name: str
    path: Path
    size: int = 0
    modified_at: str = ""
    family: str = ""
    parameter_count: int = 0
    quantization: str = ""
    context_length: int | None = None
    chat_template: str = ""
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def details(self) -> dict[str, Any]:
        """Ollama's `details` object."""
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family] if self.family else None,
            "parameter_size": parameter_size(self.parameter_count),
            "quantization_level": self.quantization,
        }

    def listing(self) -> dict[str, Any]:
        """One entry of `/api/tags`."""
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": self.modified_at,
            "size": self.size,
            "details": self.details(),
        }


def read_entry(path: Path, name: str) -> ModelEntry:
    """The entry for `path`; a file our GGUF reader rejects gives an entry with `error` set."""
    stat = path.stat()
    entry = ModelEntry(
        name=name,
        path=path,
        size=stat.st_size,
        modified_at=dt.datetime.fromtimestamp(stat.st_mtime, dt.timezone.utc).isoformat(),
    )
    try:
        with GGUFReader(path) as reader:
            summary = describe(reader)
            entry.chat_template = str(reader.kv.get("tokenizer.chat_template") or "")
    except BitnetError as exc:
        entry.error = str(exc)
        return entry
    hp = summary["hyperparameters"]
    entry.family = summary["architecture"] or ""
    entry.parameter_count = int(summary["n_parameters"])
    entry.quantization = ",".join(summary["linear_types"]) or str(
        summary["general"].get("general.file_type", "")
    )
    entry.context_length = hp.get("context_length")
    entry.info = {
        "general.architecture": entry.family,
        "general.parameter_count": entry.parameter_count,
        **{f"{entry.family}.{k}": v for k, v in hp.items()},
    }
    return entry


class Catalog:
    """The models named on the command line, addressable by name (`name:tag`, tag `latest` by
    default). Two files with the same stem get `-2`, `-3` ... added to the later names."""

    def __init__(self, paths: list[str | Path]) -> None:
        if not paths:
            raise UsageError("no model given.", hint="bitnet serve -m model.gguf")
        self.entries: dict[str, ModelEntry] = {}
        for given in paths:
            # A file, or a model of the store (named as it is there).
            path = resolve_model(given)
            name, n = name_for(path if Path(given).is_file() else Path(str(given))), 2
            while name in self.entries:
                name = name_for(path).replace(f":{DEFAULT_TAG}", f"-{n}:{DEFAULT_TAG}")
                n += 1
            self.entries[name] = read_entry(path, name)

    @property
    def default(self) -> str:
        """The first model given: used when a request names none."""
        return next(iter(self.entries))

    def names(self) -> list[str]:
        return list(self.entries)

    def find(self, name: str | None) -> ModelEntry | None:
        """The entry a request names (None or '' = the default), or None when there is none."""
        if not name:
            return self.entries[self.default]
        key = normalize(name)
        if key in self.entries:
            return self.entries[key]
        # OpenAI clients often send the file name or path the user knows.
        for entry in self.entries.values():
            if name in (str(entry.path), entry.path.name):
                return entry
        return None
