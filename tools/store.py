"""The local model store, Ollama-style: `bitnet pull NAME`, `bitnet list`, `bitnet rm`, run by name.

Layout: one folder per model under `$BITNET_HOME` (default `~/.cache/bitnet/models`, or
`$XDG_CACHE_HOME/bitnet/models`): `<folder>/model.gguf` plus `<folder>/manifest.json` (name,
repo id, type, size, parameters, family). A model's folder is written under a temporary name and
renamed when the conversion is complete, so an interrupted pull leaves no half model in the store
(only a `.partial` folder that `list` ignores and the next pull of that name replaces).

Names: a short list of known names (`KNOWN_MODELS`) maps to Hugging Face repo ids; any repo id
("owner/name") is accepted too and stored under its lower-cased id. Downloads go through
`hub.resolve_source` (the HF cache: resumable, with progress). Every command that takes a model
file resolves it through `resolve_model`, so a store name works wherever a path does.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import InputNotFoundError, UsageError

ProgressFn = Callable[[int, int, str], None]

MANIFEST = "manifest.json"
MODEL_FILE = "model.gguf"

#: Short names → Hugging Face repo ids (spec §9: the families bitnet.cpp's setup_env.py lists).
#: Base checkpoints have the bare name, instruction-tuned ones end in -instruct.
KNOWN_MODELS: dict[str, str] = {
    "bitnet-2b": "microsoft/bitnet-b1.58-2B-4T",
    "bitnet-large": "1bitLLM/bitnet_b1_58-large",
    "bitnet-3b": "1bitLLM/bitnet_b1_58-3B",
    "llama3-8b-1.58": "HF1BitLLM/Llama3-8B-1.58-100B-tokens",
    "falcon3-1b-instruct": "tiiuae/Falcon3-1B-Instruct-1.58bit",
    "falcon3-3b": "tiiuae/Falcon3-3B-1.58bit",
    "falcon3-3b-instruct": "tiiuae/Falcon3-3B-Instruct-1.58bit",
    "falcon3-7b": "tiiuae/Falcon3-7B-1.58bit",
    "falcon3-7b-instruct": "tiiuae/Falcon3-7B-Instruct-1.58bit",
    "falcon3-10b": "tiiuae/Falcon3-10B-1.58bit",
    "falcon3-10b-instruct": "tiiuae/Falcon3-10B-Instruct-1.58bit",
    "falcon-e-1b": "tiiuae/Falcon-E-1B-Base",
    "falcon-e-1b-instruct": "tiiuae/Falcon-E-1B-Instruct",
    "falcon-e-3b": "tiiuae/Falcon-E-3B-Base",
    "falcon-e-3b-instruct": "tiiuae/Falcon-E-3B-Instruct",
}


def store_dir() -> Path:
    """`$BITNET_HOME`, else the user's cache dir: `$XDG_CACHE_HOME/bitnet/models`."""
    env = os.environ.get("BITNET_HOME")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "bitnet" / "models"


def _folder_name(name: str) -> str:
    return name.replace("/", "--")


@dataclass
class StoredModel:
    """One model of the store (its manifest plus where it lives)."""

    name: str
    repo_id: str
    type: str
    embedding_type: str
    size: int
    parameters: int
    family: str
    hf_architecture: str
    created: str
    path: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_name(name_or_repo: str) -> tuple[str, str]:
    """(store name, repo id) for a known name or a repo id (what `pull` accepts)."""
    from .hub import looks_like_repo_id

    key = name_or_repo.strip()
    if key.lower() in KNOWN_MODELS:
        return key.lower(), KNOWN_MODELS[key.lower()]
    for short, repo in KNOWN_MODELS.items():  # a known repo id gets its short name
        if repo.lower() == key.lower():
            return short, repo
    if looks_like_repo_id(key):
        return key.lower(), key
    raise InputNotFoundError(
        f"{name_or_repo!r} is neither a known model name nor a repo id (owner/name).",
        hint=f"known names: {', '.join(KNOWN_MODELS)}",
    )


def _load(folder: Path) -> StoredModel | None:
    manifest, model = folder / MANIFEST, folder / MODEL_FILE
    if folder.name.startswith(".") or not manifest.is_file() or not model.is_file():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        data["path"] = str(model)
        data["size"] = model.stat().st_size
        return StoredModel(**{k: data[k] for k in StoredModel.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged entry is not a model; `rm` can still remove it by name


def list_models(root: Path | None = None) -> list[StoredModel]:
    """Every complete model in the store, by name."""
    root = root or store_dir()
    if not root.is_dir():
        return []
    found = [m for d in sorted(root.iterdir()) if d.is_dir() and (m := _load(d)) is not None]
    return sorted(found, key=lambda m: m.name)


def find(name: str, root: Path | None = None) -> StoredModel | None:
    """The stored model called `name` (a short name, or a repo id in any case), if any."""
    models = list_models(root)
    key = name.strip().lower()
    for m in models:
        if key in (m.name, m.repo_id.lower()):
            return m
    with contextlib.suppress(InputNotFoundError):
        short, _ = resolve_name(name)
        return next((m for m in models if m.name == short), None)
    return None


def _unknown(name: str, root: Path | None) -> InputNotFoundError:
    names = [m.name for m in list_models(root)]
    have = f"in the store: {', '.join(names)}" if names else "the store is empty"
    return InputNotFoundError(
        f"no model file or stored model called {name!r}; {have}.",
        hint=f"pull it first: bitnet pull {name}",
    )


def resolve_model(name_or_path: str | Path, root: Path | None = None) -> Path:
    """The GGUF file for what the user typed: an existing file as it is, else a store name.

    The one function every command that runs a model (run, bench, chat, serve) goes through.
    An unknown name raises InputNotFoundError naming the models the store has.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.is_dir() and (path / MODEL_FILE).is_file():
        return path / MODEL_FILE
    stored = find(text, root)
    if stored is not None:
        return Path(stored.path)
    if text.endswith(".gguf") or text.startswith((".", "/", "~")):
        raise InputNotFoundError(f"model file {path} does not exist.", hint="check the path")
    raise _unknown(text, root)


def remove(name: str, root: Path | None = None) -> StoredModel:
    """Delete a stored model; return what was removed."""
    root = root or store_dir()
    stored = find(name, root)
    if stored is None:
        raise _unknown(name, root)
    shutil.rmtree(Path(stored.path).parent)
    return stored


# --- pull -----------------------------------------------------------------------------------------


@dataclass
class PullResult:
    model: StoredModel
    pulled: bool  # False: it was already in the store (nothing done)
    outtype_reason: str = ""


def _parameters(plan: Any) -> int:
    total = 0
    for t in plan.tensors:
        n = 1
        for d in t.shape:
            n *= int(d)
        total += n
    return total


def pull(
    name_or_repo: str,
    outtype: str = "auto",
    embedding_type: str | None = None,
    *,
    force: bool = False,
    revision: str | None = None,
    root: Path | None = None,
    progress: ProgressFn | None = None,
    choose_type: Callable[[Path], tuple[str, str]] | None = None,
    cache_dir: str | Path | None = None,
    endpoint: str | None = None,
) -> PullResult:
    """Download `name_or_repo` and convert it into the store; a stored model is kept unless
    `force`. `outtype` "auto" asks `choose_type(checkpoint folder) -> (type, reason)`
    (default `autotype.choose_outtype`). `cache_dir`/`endpoint` go to the hub download."""
    from . import hub
    from .convert import OUTTYPES, convert_checkpoint

    root = root or store_dir()
    name, repo_id = resolve_name(name_or_repo)
    existing = find(name, root)
    if existing is not None and not force:
        return PullResult(existing, pulled=False)
    if outtype != "auto" and outtype not in OUTTYPES:
        raise UsageError(
            f"unknown --type {outtype!r}; choose auto or one of: {', '.join(OUTTYPES)}."
        )
    folder = hub.resolve_source(
        repo_id, revision=revision, progress=progress, cache_dir=cache_dir, endpoint=endpoint
    )
    reason = ""
    if outtype == "auto":
        if choose_type is None:
            from .autotype import choose_outtype as choose_type
        outtype, reason = choose_type(folder)
    dest = root / _folder_name(name)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{dest.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)  # what an interrupted pull of this name left
    try:
        tmp.mkdir()
        result = convert_checkpoint(
            folder, tmp / MODEL_FILE, outtype, embedding_type, progress=progress, name=name
        )
        manifest = {
            "name": name,
            "repo_id": repo_id,
            "type": result.plan.outtype,
            "embedding_type": result.plan.embedding_type,
            "parameters": _parameters(result.plan),
            "family": result.plan.arch,
            "hf_architecture": result.plan.hf_architecture,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "revision": revision,
            "outtype_reason": reason,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if (
            dest.exists()
        ):  # only with force (or a damaged entry): replaced when the new one is whole
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    stored = _load(dest)
    assert stored is not None
    return PullResult(stored, pulled=True, outtype_reason=reason)
