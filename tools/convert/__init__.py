"""Hugging Face checkpoint → GGUF: a registry of per-architecture converters and the driver.

Each module here handles one HF architecture (`config.json` `architectures[0]`) and registers a
converter class with `@register("HFArchitectureName")`. A converter plans the file (metadata and
every tensor's name, type, shape and size) without touching tensor data, then produces tensors
one at a time; `convert_checkpoint` checks the plan, then streams it through `GGUFWriter` into a
temporary file that is renamed onto the output only when complete.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import GGUFValueType, LlamaFileType
from ..errors import InputNotFoundError, UnsupportedArchitectureError, UsageError
from ..fsutil import atomic_output, check_output
from ..gguf import GGUFWriter
from ..quants.tiling import Tiling, check_tiling

ProgressFn = Callable[[int, int, str], None]

#: --outtype choices: ternary packings, or dequantized floats (t·s) for debugging and oracles.
OUTTYPES = ("i2_s", "tl1", "tl2", "tq1_0", "tq2_0", "f16", "f32")
#: --embedding-type choices for token_embd (and an untied output.weight).
EMBEDDING_TYPES = ("f16", "bf16", "q8_0", "q6_k", "q4_0", "f32")

#: general.file_type written for each outtype (metadata only; readers never validate it).
FILE_TYPES: dict[str, LlamaFileType] = {
    "i2_s": LlamaFileType.MOSTLY_I2_S,
    "tl1": LlamaFileType.MOSTLY_TL1,
    "tl2": LlamaFileType.MOSTLY_TL2,
    "tq1_0": LlamaFileType.MOSTLY_TQ1_0,
    "tq2_0": LlamaFileType.MOSTLY_TQ2_0,
    "f16": LlamaFileType.MOSTLY_F16,
    "f32": LlamaFileType.ALL_F32,
}

#: Modules holding the built-in converters; imported on first use (they import this package).
_BUILTIN_MODULES = (
    "bitnet_for_causal_lm",
    "bitnet_for_causal_lm_1bitllm",
    "llama_for_causal_lm",
)
_REGISTRY: dict[str, type[ArchConverter]] = {}


# --- plan -------------------------------------------------------------------------------------


@dataclass
class TensorPlan:
    """One output tensor: GGUF name, numpy shape, quant type, exact bytes, HF source tensor."""

    name: str
    shape: tuple[int, ...]
    qtype: str
    type_id: int
    nbytes: int
    source: str
    ternary: bool = False
    #: TL1/TL2 tiles other than the default (`--tuned`); the packer records them in the tail.
    tiling: Tiling | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "name": self.name,
            "type": self.qtype.upper(),
            "shape": list(self.shape),
            "bytes": self.nbytes,
            "source": self.source,
        }
        if self.tiling is not None:
            d["tiles"] = [self.tiling.BM, self.tiling.BK, self.tiling.bm]
        return d


@dataclass
class ConvertPlan:
    """Everything `convert_checkpoint` will write, computed without reading tensor data."""

    source: Path
    output: Path
    hf_architecture: str
    arch: str
    outtype: str
    embedding_type: str
    layout: str
    kv: list[tuple[str, Any, GGUFValueType | None]]
    tensors: list[TensorPlan]
    file_size: int = 0
    ignored: list[str] = field(default_factory=list)
    _writer: GGUFWriter | None = field(default=None, repr=False, compare=False)

    def writer(self, path: Path) -> GGUFWriter:
        """A GGUFWriter to `path` with every KV and tensor of this plan declared."""
        if self._writer is None:  # encoding ~400k tokenizer strings takes a while: do it once
            w = GGUFWriter(path)
            for key, value, vtype in self.kv:
                w.add_kv(key, value, vtype)
            for t in self.tensors:
                w.add_tensor(t.name, t.shape, t.type_id, t.nbytes)
            self._writer = w
        self._writer.path = Path(path)
        return self._writer

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "output": str(self.output),
            "hf_architecture": self.hf_architecture,
            "architecture": self.arch,
            "outtype": self.outtype,
            "embedding_type": self.embedding_type,
            "layout": self.layout,
            "n_tensors": len(self.tensors),
            "tensor_bytes": self.tensor_bytes,
            "file_size": self.file_size,
            "tensors": [t.to_dict() for t in self.tensors],
            "ignored": self.ignored,
        }


@dataclass
class ConvertResult:
    """What a finished conversion wrote."""

    plan: ConvertPlan
    path: Path
    bytes_written: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = self.plan.to_dict()
        d.update(path=str(self.path), bytes_written=self.bytes_written, seconds=self.seconds)
        return d


# --- registry ---------------------------------------------------------------------------------


class ArchConverter:
    """Base of a per-architecture converter. Subclasses set `hf_architecture` via @register."""

    hf_architecture: str = ""

    def __init__(self, checkpoint: Any, name: str) -> None:
        self.ckpt = checkpoint
        self.name = name

    def plan(self, outtype: str, embedding_type: str) -> tuple[list, list[TensorPlan], str]:
        """(kv items, tensor plans, layout description) — raise ShapeError etc. here."""
        raise NotImplementedError

    def produce(self, tensor: TensorPlan) -> np.ndarray | Iterable[np.ndarray]:
        """The bytes of one planned tensor (one uint8 array or consecutive uint8 chunks)."""
        raise NotImplementedError

    def ignored(self) -> list[str]:
        """Checkpoint tensors this converter deliberately leaves out."""
        return []


def register(hf_architecture: str) -> Callable[[type[ArchConverter]], type[ArchConverter]]:
    """Class decorator: make a converter handle `config.json` architectures == [hf_architecture]."""

    def deco(cls: type[ArchConverter]) -> type[ArchConverter]:
        cls.hf_architecture = hf_architecture
        _REGISTRY[hf_architecture] = cls
        return cls

    return deco


def _load_builtins() -> None:
    for mod in _BUILTIN_MODULES:
        importlib.import_module(f"{__name__}.{mod}")


def supported_architectures() -> list[str]:
    """The HF architecture names we can convert."""
    _load_builtins()
    return sorted(_REGISTRY)


def converter_for(config: dict[str, Any]) -> type[ArchConverter]:
    """The converter class for a checkpoint's config.json, or UnsupportedArchitectureError."""
    _load_builtins()
    archs = config.get("architectures") or []
    names = [a for a in archs if isinstance(a, str)] if isinstance(archs, list) else []
    for a in names:
        if a in _REGISTRY:
            return _REGISTRY[a]
    found = ", ".join(names) if names else f"none (model_type {config.get('model_type')!r})"
    raise UnsupportedArchitectureError(
        f"architecture {found} is not supported; supported: {', '.join(sorted(_REGISTRY))}.",
        hint="convert a checkpoint of a supported architecture (see `bitnet convert --help`)",
    )


# --- driver -----------------------------------------------------------------------------------


def _check_type_names(outtype: str, embedding_type: str | None) -> tuple[str, str]:
    outtype = outtype.lower()
    if outtype not in OUTTYPES:
        raise UsageError(f"unknown --outtype {outtype!r}; choose one of: {', '.join(OUTTYPES)}.")
    if embedding_type is None:
        embedding_type = outtype if outtype in ("f16", "f32") else "f16"
    embedding_type = embedding_type.lower()
    if embedding_type not in EMBEDDING_TYPES:
        raise UsageError(
            f"unknown --embedding-type {embedding_type!r}; "
            f"choose one of: {', '.join(EMBEDDING_TYPES)}."
        )
    return outtype, embedding_type


#: {(type, M, K): tiles} for TL1/TL2 weights (`bitnet.tools.tl_tune.load_tuned()`).
Tiles = Mapping[tuple[str, int, int], Tiling]


def apply_tiles(tensors: Iterable[TensorPlan], tiles: Tiles | None) -> None:
    """Give each TL1/TL2 weight of a shape in `tiles` those tiles (checked against its shape);
    the others keep the default tiling."""
    for t in tensors:
        if not t.ternary or t.qtype not in ("tl1", "tl2") or len(t.shape) != 2:
            continue
        m, k = int(t.shape[0]), int(t.shape[1])
        tiling = (tiles or {}).get((t.qtype, m, k))
        t.tiling = None if tiling is None else check_tiling(m, k, t.qtype, tiling)


def plan_conversion(
    src_folder: str | Path,
    out: str | Path,
    outtype: str = "i2_s",
    embedding_type: str | None = None,
    name: str | None = None,
    tiles: Tiles | None = None,
) -> tuple[ConvertPlan, ArchConverter]:
    """Open a checkpoint and plan its conversion (every shape checked; no tensor data read).
    `tiles`: TL1/TL2 tiles per (type, M, K) to pack with instead of the default ones."""
    from ..safetensors import Checkpoint

    outtype, embedding_type = _check_type_names(outtype, embedding_type)
    src = Path(src_folder)
    if not src.is_dir():
        raise InputNotFoundError(
            f"{src} is not a folder.",
            hint="pass a checkpoint folder or a Hugging Face repo id",
        )
    ckpt = Checkpoint(src)
    conv = converter_for(ckpt.config)(ckpt, name or src.resolve().name)
    kv, tensors, layout = conv.plan(outtype, embedding_type)
    apply_tiles(tensors, tiles)
    plan = ConvertPlan(
        source=src,
        output=Path(out),
        hf_architecture=conv.hf_architecture,
        arch=str(next(v for k, v, _ in kv if k == "general.architecture")),
        outtype=outtype,
        embedding_type=embedding_type,
        layout=layout,
        kv=kv,
        tensors=tensors,
        ignored=conv.ignored(),
    )
    plan.file_size = plan.writer(plan.output).file_size
    return plan, conv


def convert_checkpoint(
    src_folder: str | Path,
    out: str | Path,
    outtype: str = "i2_s",
    embedding_type: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    progress: ProgressFn | None = None,
    name: str | None = None,
    tiles: Tiles | None = None,
) -> ConvertPlan | ConvertResult:
    """Convert the HF checkpoint in `src_folder` to the GGUF file `out`.

    `outtype`: one of OUTTYPES for the ternary linears. `embedding_type`: one of EMBEDDING_TYPES
    for token_embd; None means f16 (or the outtype itself for f16/f32). `name` is
    `general.name` (default: the folder's name). `tiles`: TL1/TL2 tiles per (type, M, K)
    (e.g. `tl_tune.load_tuned()`) for the shapes they name; every other TL weight is packed with
    `default_tiling`. Either way the tiles are recorded in each tensor and the bytes depend only
    on the inputs. With `dry_run`, returns the ConvertPlan and writes nothing; otherwise writes
    through a temporary file (never a half-written `out`; an existing `out` needs `force`) and
    returns a ConvertResult.
    """
    out = Path(out)
    if not dry_run:
        check_output(out, force)
    plan, conv = plan_conversion(src_folder, out, outtype, embedding_type, name, tiles)
    if dry_run:
        return plan
    start = time.perf_counter()
    by_name = {t.name: t for t in plan.tensors}
    with atomic_output(out, force) as tmp:
        written = plan.writer(tmp).write(lambda n: conv.produce(by_name[n]), progress)
    return ConvertResult(plan, out, written, time.perf_counter() - start)
