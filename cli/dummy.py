"""`bitnet dummy`: write a made-up BitNet b1.58 checkpoint (HF layout) of a chosen shape."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from bitnet.tools import dummy as dummy_lib
from bitnet.tools.errors import UsageError

from . import _output as out
from ._errors import handle_errors

_PRESET_HELP = f"Shape: {', '.join(dummy_lib.preset_names())}."


def _override(what: str) -> Any:
    """A `--NAME N` option that overrides one number of the preset's shape."""
    return typer.Option(metavar="N", help=f"Override {what}.")


@handle_errors
def dummy(
    output: Annotated[
        Path | None,
        typer.Option(
            "-o", "--output", metavar="DIR", help="Folder to write (config, weights, tokenizer)."
        ),
    ] = None,
    preset: Annotated[str, typer.Option(metavar="NAME", help=_PRESET_HELP)] = "tiny",
    layout: Annotated[
        str,
        typer.Option(
            metavar="NAME", help="packed (uint8 + weight_scale, like 2B-4T) or bf16 (masters)."
        ),
    ] = "packed",
    seed: Annotated[
        int, typer.Option(min=0, metavar="N", help="Random seed; same seed, same bytes.")
    ] = 0,
    hidden: Annotated[int | None, _override("the hidden size")] = None,
    layers: Annotated[int | None, _override("the number of layers")] = None,
    heads: Annotated[int | None, _override("the attention heads")] = None,
    kv_heads: Annotated[int | None, _override("the key/value heads")] = None,
    ffn: Annotated[int | None, _override("the FFN (intermediate) size")] = None,
    vocab: Annotated[int | None, _override("the vocabulary size")] = None,
    ctx: Annotated[int | None, _override("max_position_embeddings")] = None,
    untied: Annotated[
        bool, typer.Option("--untied", help="Write a separate lm_head.weight.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing output folder.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the tensors and size; write nothing.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the plan (and result) as JSON.")
    ] = False,
) -> None:
    """Make a random BitNet b1.58 checkpoint from a seed.

    For tests and benchmarks: real shapes, random ternary weights, no download.
    """
    overrides = {
        "hidden": hidden,
        "layers": layers,
        "heads": heads,
        "kv_heads": kv_heads,
        "ffn": ffn,
        "vocab": vocab,
        "ctx": ctx,
        "tie_embeddings": False if untied else None,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    plan = dummy_lib.plan_dummy(preset, layout, seed, **overrides)
    summary = (
        f"{plan.preset} ({plan.layout}): {_count(plan.params)} params, "
        f"{len(plan.tensors)} tensors, {out.human_bytes(plan.weights_nbytes)} of weights"
    )

    if dry_run:
        if as_json:
            out.emit_json({**plan.to_json(), "output": str(output) if output else None})
            return
        rows = [(t.name, "x".join(map(str, t.shape)), t.dtype, t.nbytes) for t in plan.tensors]
        out.table(["tensor", "shape", "dtype", "bytes"], rows, title=summary)
        out.info(f"would write {summary}" + (f" to {output}" if output else ""))
        return

    if output is None:
        raise UsageError("no output folder given.", hint="pass -o DIR (or --dry-run to only plan)")
    with out.progress(f"writing {plan.preset} dummy") as bar:
        path = dummy_lib.make_dummy(
            output, plan.preset, layout, seed, force=force, progress=bar, **overrides
        )
    if as_json:
        out.emit_json({**plan.to_json(), "output": str(path)})
        return
    out.info(f"wrote {summary}")
    out.data(str(path))


def _count(n: int) -> str:
    """2412820480 -> '2.41 B'; 1234567 -> '1.23 M'."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return str(n)
