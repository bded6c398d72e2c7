"""Where a model comes from: a local folder, or a Hugging Face repo id downloaded into the cache.

`resolve_source` turns what the user typed into a checkpoint folder. Downloads go through
`huggingface_hub.snapshot_download` into the normal HF cache (so `hf` and transformers share
them, and a second run is instant or works offline), fetching only config, tokenizer and
safetensors files. Every hub failure becomes one of our errors with one sentence and a hint.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CorruptFileError, InputNotFoundError, NetworkError
from .safetensors import CONFIG_FILE, Checkpoint

ProgressFn = Callable[[int, int, str], None]

#: Files a conversion can need; everything else in a repo (PyTorch .bin, ONNX, GGUF...) is skipped.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken"]

#: "owner/name" with the characters the hub allows.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9_.][\w.-]{0,95}$")

#: Bytes sampled per tensor by the all-zero check (spread over the tensor).
_ZERO_SAMPLE_BYTES = 1 << 16


def looks_like_repo_id(src: str) -> bool:
    """True for "owner/name" (the only form we download; bare names are taken as folders)."""
    return bool(_REPO_ID.match(src)) and ".." not in src and "--" not in src


def resolve_source(
    src: str | Path,
    revision: str | None = None,
    progress: ProgressFn | None = None,
    *,
    cache_dir: str | Path | None = None,
    endpoint: str | None = None,
) -> Path:
    """Return a checkpoint folder for `src`: an existing local folder, or a downloaded repo.

    A local folder is used as it is and must hold config.json. Anything else must be a repo id
    ("owner/name"), downloaded at `revision` (default: main) into the HF cache (`cache_dir`
    overrides it; `endpoint` points at a hub mirror, default $HF_ENDPOINT or huggingface.co).
    A downloaded checkpoint is checked: readable safetensors headers, file sizes that match them
    and no all-zero weight tensor (spec §5.1: such revisions have been published).
    """
    text = str(src)
    local = Path(text).expanduser()
    if local.exists():
        if not local.is_dir():
            raise InputNotFoundError(
                f"{local} is a file, not a checkpoint folder.",
                hint="pass the folder that holds config.json and the *.safetensors files",
            )
        if not (local / CONFIG_FILE).is_file():
            raise InputNotFoundError(
                f"{local} has no config.json, so it is not a Hugging Face checkpoint.",
                hint="pass the folder that holds config.json and the *.safetensors files",
            )
        return local.resolve()
    if text.startswith((".", "/", "~", "\\")) or local.is_absolute():
        raise InputNotFoundError(f"folder {local} does not exist.", hint="check the path")
    if not looks_like_repo_id(text):
        raise InputNotFoundError(
            f"{text} is neither an existing folder nor a repo id of the form owner/name.",
            hint="check the path, or give a repo id such as microsoft/bitnet-b1.58-2B-4T",
        )
    folder = download(text, revision, progress, cache_dir=cache_dir, endpoint=endpoint)
    verify_checkpoint(folder, what=f"the download of {text}")
    return folder


# --- downloading --------------------------------------------------------------------------------


def _network_exceptions() -> tuple[type[BaseException], ...]:
    """Transport-level errors of whichever HTTP client this huggingface_hub uses."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (
        ("httpx2", ("TransportError", "TimeoutException")),
        ("httpx", ("TransportError", "TimeoutException")),
        ("requests", ("ConnectionError", "Timeout")),
    ):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        found += [getattr(mod, n) for n in names if isinstance(getattr(mod, n, None), type)]
    return tuple(found)


def _tqdm_adapter(progress: ProgressFn, desc: str) -> type | None:
    """A silent tqdm class that forwards the byte counts of snapshot_download to `progress`."""
    try:
        from huggingface_hub.utils import tqdm as hf_tqdm
    except ImportError:  # pragma: no cover - every supported huggingface_hub has it
        return None

    class _Forward(hf_tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._bytes = kwargs.get("unit") == "B" and kwargs.get("name", "").endswith(
                "snapshot_download"
            )
            self._done = int(kwargs.get("initial", 0) or 0)
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            if self._bytes and n:
                self._done += int(n)
                progress(self._done, int(self.total or 0), desc)
            return None

    return _Forward


def download(
    repo_id: str,
    revision: str | None = None,
    progress: ProgressFn | None = None,
    *,
    cache_dir: str | Path | None = None,
    endpoint: str | None = None,
) -> Path:
    """Download (or find in the cache) the convertible files of `repo_id`; return the folder."""
    try:
        from huggingface_hub import errors as hf_errors
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a declared dependency
        raise NetworkError(
            "huggingface_hub is not installed, so repo ids cannot be downloaded.",
            hint="pip install huggingface_hub, or pass a local folder",
        ) from None

    where = f"{repo_id}" + (f" at revision {revision}" if revision else "")
    kwargs: dict[str, Any] = {"allow_patterns": ALLOW_PATTERNS}
    # huggingface_hub reads HF_ENDPOINT once, at import; a mirror set later still counts
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    if cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    if endpoint is not None:
        kwargs["endpoint"] = endpoint
    if progress is not None:
        bar = _tqdm_adapter(progress, f"downloading {repo_id}")
        if bar is not None:
            kwargs["tqdm_class"] = bar
    try:
        folder = snapshot_download(repo_id, revision=revision, **kwargs)
    except hf_errors.RevisionNotFoundError:
        raise InputNotFoundError(
            f"{repo_id} has no revision {revision or 'main'!r} on the hub.",
            hint="check the branch, tag or commit name given with --revision",
        ) from None
    except hf_errors.GatedRepoError:
        raise InputNotFoundError(
            f"{repo_id} is gated: its files need an accepted licence and a login.",
            hint="accept the terms on the model's page, then run: hf auth login",
        ) from None
    except hf_errors.RepositoryNotFoundError:
        raise InputNotFoundError(
            f"repository {repo_id} was not found on the hub (or it is private).",
            hint="check the repo id; for a private repo run: hf auth login",
        ) from None
    except hf_errors.IncompleteSnapshotError:
        raise NetworkError(
            f"the hub cannot be reached and the cached copy of {where} is incomplete.",
            hint="connect to the network and run the command again to finish the download",
        ) from None
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled):
        raise NetworkError(
            f"cannot download {where}: the hub is unreachable (or HF_HUB_OFFLINE is set) "
            "and no copy is in the local cache.",
            hint="check the network, or pass a local checkpoint folder instead of a repo id",
        ) from None
    except hf_errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        raise NetworkError(
            f"the hub answered HTTP {status} while downloading {where}.",
            hint="try again later, or pass a local checkpoint folder",
        ) from None
    except _network_exceptions() as exc:
        raise NetworkError(
            f"cannot reach the hub to download {where} ({exc.__class__.__name__}).",
            hint="check the network, or pass a local checkpoint folder instead of a repo id",
        ) from None
    path = Path(folder)
    if not (path / CONFIG_FILE).is_file():
        raise InputNotFoundError(
            f"{repo_id} has no config.json, so it is not a transformers checkpoint.",
            hint="choose a repo with config.json and *.safetensors weights",
        )
    return path


# --- checking what arrived ----------------------------------------------------------------------


def _sample_is_zero(raw: np.ndarray) -> bool:
    """Whether evenly spread slices of the tensor's bytes are all zero (cheap, memory-mapped)."""
    flat = raw.reshape(-1).view(np.uint8)
    n = flat.size
    if n <= _ZERO_SAMPLE_BYTES:
        return not flat.any()
    piece = _ZERO_SAMPLE_BYTES // 8
    for i in range(8):
        start = (n - piece) * i // 7
        if flat[start : start + piece].any():
            return False
    return True


def verify_checkpoint(folder: Path | str, what: str | None = None) -> None:
    """Raise CorruptFileError if a checkpoint's weights are unreadable or a matrix is all zero.

    Opening the checkpoint validates every safetensors header against its file size; then each
    tensor of two or more dimensions is sampled, and read fully if the sample is all zero.
    """
    folder = Path(folder)
    with Checkpoint(folder) as ckpt:
        for name in ckpt.names():
            if len(ckpt.shape(name)) < 2 or ckpt.nbytes(name) == 0:
                continue
            raw = ckpt.raw(name)
            if _sample_is_zero(raw) and not raw.reshape(-1).view(np.uint8).any():
                raise CorruptFileError(
                    f"tensor {name} in {what or folder} is all zeros, so the files are damaged.",
                    hint=f"delete {folder} (or its copy in the HF cache) and download again",
                )
