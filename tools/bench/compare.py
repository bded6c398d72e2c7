"""`bitnet bench --compare`: one checkpoint converted to several types, cached between runs."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ..build import ProgressFn, default_cache, ensure_tl_kernels, find_binary
from ..errors import BuildError, InputNotFoundError, RuntimeFailure, ShapeError, UsageError
from ..fsutil import atomic_output
from ..runtime import llama_env
from .options import ModelSpec

#: Types `--compare` converts to by default (q4_0 via llama-quantize from the f16 file).
COMPARE_TYPES = ("i2_s", "tq1_0", "tq2_0", "q4_0", "f16", "tl2")
#: Types made by llama-quantize from the f16 conversion: our type name -> llama-quantize's.
QUANTIZE_TYPES = {"q4_0": "Q4_0"}


def compare_cache_dir(checkpoint: Path, root: Path | None = None) -> Path:
    """`$BITNET_CACHE/bench/<name>-<key>`: the key changes when the checkpoint's files do."""
    checkpoint = Path(checkpoint).resolve()
    h = hashlib.sha256(str(checkpoint).encode())
    for p in sorted(checkpoint.iterdir()):
        if p.is_file() and (p.suffix in (".json", ".safetensors")):
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return (root or default_cache() / "bench") / f"{checkpoint.name}-{h.hexdigest()[:10]}"


def prepare_compare(
    checkpoint: Path,
    types: Sequence[str],
    cache_dir: Path | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> tuple[list[ModelSpec], list[dict[str, str]]]:
    """Convert `checkpoint` to each of `types` (reusing earlier conversions in the cache).

    Returns (models to bench, skipped types with the reason). A type that cannot hold the
    model's shapes is skipped — not an error. TL1/TL2 conversions get their kernels built in
    first (only when the build lacks the model's shapes).
    """
    from ..convert import OUTTYPES, convert_checkpoint

    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir() or not (checkpoint / "config.json").is_file():
        raise InputNotFoundError(
            f"{checkpoint} is not a checkpoint folder (no config.json).",
            hint="pass a Hugging Face checkpoint folder (make one with: bitnet dummy -o DIR)",
        )
    known = set(OUTTYPES) | set(QUANTIZE_TYPES)
    types = [t.lower() for t in types]
    unknown = [t for t in types if t not in known]
    if unknown:
        raise UsageError(
            f"unknown --types {', '.join(unknown)}; choose from {', '.join(sorted(known))}."
        )
    folder = cache_dir or compare_cache_dir(checkpoint)
    folder.mkdir(parents=True, exist_ok=True)
    specs: list[ModelSpec] = []
    skipped: list[dict[str, str]] = []

    def converted(outtype: str) -> Path:
        out = folder / f"{outtype}.gguf"
        if force or not out.is_file():
            convert_checkpoint(checkpoint, out, outtype, force=True, progress=progress)
        return out

    for t in dict.fromkeys(types):
        try:
            if t in QUANTIZE_TYPES:
                out = _quantize(converted("f16"), folder / f"{t}.gguf", QUANTIZE_TYPES[t], force)
            else:
                out = converted(t)
            if t in ("tl1", "tl2"):  # the build must serve the model's TL shapes
                ensure_tl_kernels(out, progress=progress)
        except (ShapeError, UsageError, RuntimeFailure, BuildError) as exc:
            skipped.append({"type": t, "reason": str(exc)})
            continue
        specs.append(ModelSpec(out, name=t))
    return specs, skipped


def _quantize(src: Path, out: Path, qtype: str, force: bool) -> Path:
    """llama-quantize `src` (an f16 GGUF) to `qtype`, through a temporary file."""
    if out.is_file() and not force:
        return out
    binary = find_binary("llama-quantize")
    with atomic_output(out, force=True) as tmp:
        proc = subprocess.run(
            [str(binary), str(src), str(tmp), qtype],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            env=llama_env(),
        )
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            raise RuntimeFailure(
                f"llama-quantize to {qtype} failed: {lines[-1] if lines else proc.returncode}"
            )
    return out
