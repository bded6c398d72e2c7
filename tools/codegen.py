"""Generate the TL1/TL2 shape table the runtime kernels are built with.

The TL kernels (kernels/bitnet-tl.c) are generic in the tiling, so what has to be generated per
model is the list of weight shapes a build serves and the tiles each one was packed with:

    model (GGUF or HF folder) --find_shapes--> {(M, K): [tensor names]}
        --plan_shapes (default_tiling, the converter's default)--> [ShapeEntry]
    TL GGUF --tl_entries (the tiles recorded in each tensor's tail)--> {ShapeEntry}
        --render (kernels/templates/bitnet-tl-shapes.h.in)--> ggml-cpu-bitnet-tl-shapes.h

Default tiles come from `tools.quants.tiling.default_tiling` (never a model name); other tiles
only from a packed file's own record (e.g. tiles `bitnet codegen --tune` measured faster, see
tools/tl_tune.py, which a `convert --tuned` packed with). A shape may thus have several entries;
the one equal to `default_tiling` is flagged `is_default` (the glue uses it for tensors without
a record). A shape no tiling serves raises ShapeError naming the tensor, why, and which type
fits. The same input gives the same bytes (no dates, no absolute paths in the output).
ref: shared/spec/bitnet-formats.md §3.4 (what the fork generated and why it went wrong).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any

from bitnet.tools import quants
from bitnet.tools.errors import InputNotFoundError, ShapeError, UsageError
from bitnet.tools.fsutil import atomic_output, check_output
from bitnet.tools.quants.tiling import Tiling, default_tiling, tiling_error, tiling_problem

if TYPE_CHECKING:
    from bitnet.tools.gguf import GGUFReader

TL_TYPES = ("tl1", "tl2")
#: The "Sources" line of the committed table.
KNOWN_SOURCE = "known BitNet model shapes + test tiles (tools/codegen.py KNOWN_SHAPES, TEST_TILES)"
TEMPLATE = "bitnet-tl-shapes.h.in"
#: Where the committed table lives (copied into the llama.cpp tree by tools/build.py OVERLAY).
HEADER_NAME = "ggml-cpu-bitnet-tl-shapes.h"

#: Shapes of the published BitNet models (numpy (M, K) = (out, in); spec §3.4 / §4.1), plus the
#: test model of tests/test_tl_e2e.py. The committed header serves these, so a stock build runs
#: them; any other model is added with `setup_env.py --tl-shapes MODEL`. Used only to list
#: shapes: the tiles still come from the shape.
KNOWN_SHAPES: dict[str, tuple[tuple[int, int], ...]] = {
    "BitNet-b1.58-2B-4T": ((2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)),
    "bitnet_b1_58-large": ((1536, 4096), (1536, 1536), (4096, 1536)),
    "bitnet_b1_58-3B": ((3200, 8640), (3200, 3200), (8640, 3200)),
    "Llama3-8B-1.58-100B-tokens": ((14336, 4096), (4096, 14336), (1024, 4096), (4096, 4096)),
    "dummy tiny hidden=256 ffn=512": ((256, 256), (128, 256), (512, 256), (256, 512)),
}

#: Non-default tiles the committed table serves too: one per shape and type of the tiny test
#: model, so tests/test_tl_tuned_e2e.py runs a file packed with non-default (e.g. tuned) tiles
#: through a stock build. {type: (BM, BK, bm)}, valid for every tiny shape.
TEST_TILES: dict[str, tuple[int, int, int]] = {"tl1": (64, 64, 64), "tl2": (64, 192, 32)}
TEST_TILES_MODEL = "dummy tiny hidden=256 ffn=512"


@dataclass(frozen=True, order=True)
class ShapeEntry:
    """One (type, M, K) the build serves, with its tiles."""

    qtype: str
    M: int
    K: int
    BM: int
    BK: int
    bm: int

    @property
    def three_k(self) -> int:
        return (self.K // self.BK) * self.BK

    @property
    def two_k(self) -> int:
        return self.K - self.three_k

    @property
    def tiling(self) -> Tiling:
        return Tiling(self.BM, self.BK, self.bm)

    @property
    def is_default(self) -> bool:
        """True when the tiles are `default_tiling(M, K, type)` (what unrecorded files hold)."""
        return default_tiling(self.M, self.K, self.qtype) == self.tiling

    @property
    def key(self) -> tuple[str, int, int, int, int, int]:
        """(type, M, K, BM, BK, bm): a registry / stamp row."""
        return (self.qtype, self.M, self.K, self.BM, self.BK, self.bm)

    @classmethod
    def of(cls, qtype: str, m: int, k: int, tiling: Tiling | None = None) -> ShapeEntry:
        """The entry of an (M, K) weight of `qtype` with `tiling` (default: default_tiling)."""
        t = tiling or default_tiling(m, k, qtype)
        return cls(qtype, int(m), int(k), int(t.BM), int(t.BK), int(t.bm))

    def to_dict(self) -> dict[str, int | str | bool]:
        return {"type": self.qtype, "M": self.M, "K": self.K, "BM": self.BM, "BK": self.BK,
                "bm": self.bm, "default": self.is_default}  # fmt: skip


def entry_from_row(row: object) -> ShapeEntry | None:
    """A registry / stamp row [type, M, K] (default tiles: rows written before tiles were
    recorded) or [type, M, K, BM, BK, bm] as a ShapeEntry; None when it is not a valid one."""
    if not isinstance(row, (list, tuple)) or len(row) not in (3, 6):
        return None
    try:
        qtype, *nums = str(row[0]), *(int(v) for v in row[1:])
    except (TypeError, ValueError):
        return None
    if qtype not in TL_TYPES or nums[0] <= 0 or nums[1] <= 0:
        return None
    m, k = nums[0], nums[1]
    if tiling_problem(m, k, qtype) is not None:
        return None
    if len(nums) == 2:
        return ShapeEntry.of(qtype, m, k)
    t = Tiling(*nums[2:])
    return ShapeEntry.of(qtype, m, k, t) if tiling_error(m, k, qtype, t) is None else None


# --- finding shapes ------------------------------------------------------------------------------


def find_shapes(source: str | Path) -> dict[tuple[int, int], list[str]]:
    """Every ternary matrix shape (M, K) of a GGUF file or HF checkpoint folder -> tensor names."""
    path = Path(source)
    if path.is_dir():
        return _hf_shapes(path)
    if path.is_file():
        return _gguf_shapes(path)
    raise InputNotFoundError(
        f"{path} is neither a GGUF file nor a checkpoint folder.",
        hint="pass a model.gguf or a Hugging Face checkpoint folder",
    )


def _gguf_shapes(path: Path) -> dict[tuple[int, int], list[str]]:
    from bitnet.tools.gguf import GGUFReader

    shapes: dict[tuple[int, int], list[str]] = {}
    for info in GGUFReader(path).tensors.values():
        try:
            ternary = quants.get(int(info.type_id)).ternary
        except Exception:  # a type we do not know is not one of ours
            ternary = False
        if ternary and len(info.shape) == 2:
            shapes.setdefault((int(info.shape[0]), int(info.shape[1])), []).append(info.name)
    if not shapes:
        raise UsageError(
            f"{path} has no ternary weights, so there is no TL kernel shape to generate.",
            hint="pass a ternary GGUF (bitnet convert --outtype i2_s|tl1|tl2) or an HF folder",
        )
    return shapes


def _hf_shapes(folder: Path) -> dict[tuple[int, int], list[str]]:
    from bitnet.tools.convert import converter_for
    from bitnet.tools.safetensors import Checkpoint

    ckpt = Checkpoint(folder)
    conv = converter_for(ckpt.config)(ckpt, folder.resolve().name)
    _kv, tensors, _layout = conv.plan("f32", "f32")  # shapes only: f32 holds any shape
    shapes: dict[tuple[int, int], list[str]] = {}
    for t in tensors:
        if t.ternary and len(t.shape) == 2:
            shapes.setdefault((int(t.shape[0]), int(t.shape[1])), []).append(t.name)
    return shapes


def known_shapes() -> dict[tuple[int, int], list[str]]:
    """KNOWN_SHAPES as {(M, K): [model names]}."""
    out: dict[tuple[int, int], list[str]] = {}
    for model, shapes in KNOWN_SHAPES.items():
        for s in shapes:
            out.setdefault(s, []).append(model)
    return out


def known_entries(types: Sequence[str] = TL_TYPES) -> list[ShapeEntry]:
    """What the committed table serves: every known shape with its default tiles (in each type
    that holds it), plus TEST_TILES for the tiny test model's shapes."""
    entries = set(plan_shapes(known_shapes(), types, strict=False))
    for qtype in types:
        if qtype in TEST_TILES:
            t = Tiling(*TEST_TILES[qtype])
            entries |= {ShapeEntry.of(qtype, m, k, t) for m, k in KNOWN_SHAPES[TEST_TILES_MODEL]}
    return sorted(entries)


# --- planning ------------------------------------------------------------------------------------


def plan_shapes(
    shapes: dict[tuple[int, int], list[str]] | Iterable[tuple[int, int]],
    types: Sequence[str] = TL_TYPES,
    strict: bool = True,
) -> list[ShapeEntry]:
    """Tiles for every (type, shape), sorted. `strict`: a shape a type cannot serve raises
    ShapeError (naming a tensor, why, and the types that can); otherwise it is skipped."""
    named = shapes if isinstance(shapes, dict) else {tuple(s): [] for s in shapes}
    entries: set[ShapeEntry] = set()
    for qtype in types:
        if qtype not in TL_TYPES:
            raise UsageError(f"codegen makes tl1/tl2 kernels, not {qtype!r}.")
        for (m, k), names in sorted(named.items()):
            problem = tiling_problem(m, k, qtype)
            if problem is not None:
                if not strict:
                    continue
                where = f" ({names[0]}{' and others' if len(names) > 1 else ''})" if names else ""
                raise ShapeError(
                    f"the ({m}, {k}) weight{where} cannot use {qtype} because {problem}.",
                    hint=f"convert with --outtype {_fallback(m, k)} instead, which holds it",
                )
            t = default_tiling(m, k, qtype)
            entries.add(ShapeEntry(qtype, m, k, t.BM, t.BK, t.bm))
    return sorted(entries)


def with_defaults(entries: Iterable[ShapeEntry]) -> set[ShapeEntry]:
    """`entries` plus the default-tiles entry of each of their (type, M, K): a table that serves
    a shape with tuned tiles also serves files packed with the default ones."""
    entries = set(entries)
    return entries | {ShapeEntry.of(e.qtype, e.M, e.K) for e in entries}


def model_entries(model: str | Path, types: Sequence[str] = TL_TYPES) -> set[ShapeEntry]:
    """The entries a model needs: its ternary shapes with default tiles in each of `types`
    (ShapeError when one cannot be held), plus, for a TL GGUF, the tiles its tensors record."""
    entries = set(plan_shapes(find_shapes(model), types, strict=True))
    if Path(model).is_file():
        entries |= tl_entries(model, types)
    return entries


def _fallback(m: int, k: int) -> str:
    """The first ternary type that can hold an (M, K) weight (for error hints)."""
    for name in ("tl2", "tl1", "i2_s", "tq2_0", "tq1_0"):
        if quants.get(name).shape_problem((m, k)) is None:
            return name
    return "f16"


# --- rendering -----------------------------------------------------------------------------------


def template_path() -> Path:
    from bitnet import kernels

    return Path(kernels.__file__).resolve().parent / "templates" / TEMPLATE


def default_header_path() -> Path:
    from bitnet import kernels

    return Path(kernels.__file__).resolve().parent / "llama" / HEADER_NAME


def _row(e: ShapeEntry) -> str:
    ctype = "BITNET_TL1" if e.qtype == "tl1" else "BITNET_TL2"
    split = f"  /* {e.three_k} / {e.two_k} */" if e.qtype == "tl2" else ""
    tiles = f"{e.M:6d}, {e.K:6d}, {e.BM:4d}, {e.BK:4d}, {e.bm:3d}"
    return f"    {{{ctype}, {{{tiles}}}, {int(e.is_default)}}},{split}"


def render(entries: Sequence[ShapeEntry], sources: Sequence[str] = ()) -> str:
    """The header text for `entries` (deterministic: sorted, no dates or absolute paths)."""
    entries = sorted(set(entries))
    rows = [_row(e) for e in entries] or ["    {0, {0, 0, 0, 0, 0}, 0},"]
    digest = hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]
    text = Template(template_path().read_text()).substitute(
        sources=", ".join(sources) or "(none)",
        digest=digest,
        count=len(entries),
        rows="\n".join(rows),
    )
    return text


def parse_header(text: str) -> list[ShapeEntry]:
    """The entries of a generated header (used to check what a build serves)."""
    import re

    out = []
    pat = r"\{BITNET_TL([12]), \{\s*(\d+),\s*(\d+),\s*(\d+),\s*(\d+),\s*(\d+)\}(?:, [01])?\}"
    for m in re.finditer(pat, text):
        t, *nums = m.groups()
        out.append(ShapeEntry(f"tl{t}", *map(int, nums)))
    return out


def _is_generated(path: Path) -> bool:
    try:
        return "GENERATED by `bitnet codegen`" in path.read_text(errors="replace")[:400]
    except OSError:
        return False


def generate(
    models: Sequence[str | Path] = (),
    out: str | Path | None = None,
    types: Sequence[str] = TL_TYPES,
    include_known: bool = True,
    force: bool = False,
    extra: Iterable[ShapeEntry] = (),
    extra_source: str = "",
) -> tuple[Path, list[ShapeEntry], bool]:
    """Write the shape table for `models` (+ KNOWN_SHAPES, + `extra` entries, e.g. a build's
    registry) to `out`; return (path, entries, changed). Every shape of a named model must fit
    each requested type (else ShapeError; a TL GGUF also adds the tiles its tensors record);
    known shapes a type cannot hold are left out for that type. An identical file is left
    untouched (so builds keyed on its bytes do not rerun)."""
    out = Path(out) if out else default_header_path()
    entries: set[ShapeEntry] = set()
    sources: list[str] = []
    if include_known:
        entries |= set(known_entries(types))
        sources.append(KNOWN_SOURCE)
    for model in models:
        entries |= model_entries(model, types)
        sources.append(Path(model).name)
    extra = set(extra)
    if extra - entries:
        entries |= extra
        sources.append(extra_source or "extra shapes")
    entries |= with_defaults(entries)
    text = render(sorted(entries), sources)
    if out.is_file() and out.read_text() == text:
        return out, sorted(entries), False
    if out.exists() and not _is_generated(out):
        check_output(out, force)  # someone else's file: only with --force
    with atomic_output(out, True) as tmp:
        Path(tmp).write_text(text)
    return out, sorted(entries), True


# --- the shapes a build was asked to serve ------------------------------------------------------
#
# `setup_env.py --tl-shapes MODEL`, `bitnet convert --outtype tl1|tl2` and `bitnet codegen --tune`
# add entries to a registry in the build cache, so later builds keep serving them (a plain
# `setup_env.py` does not drop them). Rows are [type, M, K, BM, BK, bm]; rows [type, M, K] of
# registries written before tiles were recorded mean the default tiles.

REGISTRY_NAME = "tl-shapes.json"


def tl_entries(
    source: str | Path, types: Sequence[str] = TL_TYPES, reader: GGUFReader | None = None
) -> set[ShapeEntry]:
    """The TL entries a model needs: for a GGUF, the (type, M, K) of its TL1/TL2 tensors (of
    `types`) with the tiles recorded in each tensor's tail (none recorded: default tiles;
    CorruptFileError for an invalid record); for an HF folder, every ternary shape in each of
    `types` with default tiles (ShapeError if one cannot be held). `reader`: the GGUF already
    open (its header is not parsed again)."""
    path = Path(source)
    if path.is_dir():
        return set(plan_shapes(find_shapes(path), types, strict=True))
    return set(find_tl_tiles(path, types, reader))


def find_tl_tiles(
    path: str | Path, types: Sequence[str] = TL_TYPES, reader: GGUFReader | None = None
) -> dict[ShapeEntry, list[str]]:
    """{entry: tensor names} of the TL1/TL2 tensors (of `types`) of a GGUF, each with the tiles
    its tail records (reads the 12 record bytes of each tensor, nothing else). `reader`: the
    file already open."""
    from bitnet.tools.gguf import GGUFReader

    codes = {int(quants.get(t).type_id): t for t in types}
    found: dict[ShapeEntry, list[str]] = {}
    opened = contextlib.nullcontext(reader) if reader else GGUFReader(path)  # caller's stays open
    with opened as reader:
        for info in reader.tensors.values():
            qtype = codes.get(int(info.type_id))
            if not qtype or len(info.shape) != 2:
                continue
            shape = (int(info.shape[0]), int(info.shape[1]))
            qt: Any = quants.get(qtype)  # TL1 / TL2: a TiledTernaryMixin
            tiling = qt.recorded_tiling(reader.data(info.name), shape)
            found.setdefault(ShapeEntry.of(qtype, *shape, tiling), []).append(info.name)
    return found


def load_registry(path: Path) -> set[ShapeEntry]:
    """The registered entries; a missing or damaged file is empty, invalid rows are dropped."""
    import json

    try:
        rows = json.loads(path.read_text()).get("shapes", [])
    except (OSError, ValueError, AttributeError):
        return set()
    if not isinstance(rows, list):
        return set()
    return {e for e in map(entry_from_row, rows) if e is not None}


def register(path: Path, entries: Iterable[ShapeEntry]) -> bool:
    """Add `entries` to the registry at `path` (atomically); True when it changed."""
    import json

    have = load_registry(path)
    new = have | set(entries)
    if new == have and _rows_current(path):
        return False
    rows = ",\n".join("  " + json.dumps(list(e.key)) for e in sorted(new))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, True) as tmp:
        Path(tmp).write_text('{"shapes": [\n' + rows + "\n]}\n")  # one entry per line
    return True


def _rows_current(path: Path) -> bool:
    """True unless the registry holds old 3-element rows (rewritten with their tiles)."""
    import json

    try:
        rows = json.loads(path.read_text()).get("shapes", [])
    except (OSError, ValueError, AttributeError):
        return True
    return not any(isinstance(r, list) and len(r) == 3 for r in rows)
