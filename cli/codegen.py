"""`bitnet codegen`: the TL1/TL2 shape table (tiles per weight shape) a llama.cpp build serves."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bitnet.tools import codegen as cg

from . import _output as out
from ._errors import handle_errors


@handle_errors
def codegen(
    models: Annotated[
        list[Path] | None,
        typer.Argument(help="GGUF files or HF checkpoint folders whose ternary shapes to serve."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Header to write (default: the committed one)."),
    ] = None,
    types: Annotated[str, typer.Option("--types", help="Comma-separated: tl1, tl2.")] = "tl1,tl2",
    known: Annotated[
        bool, typer.Option("--known/--no-known", help="Also serve the published models' shapes.")
    ] = True,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the table, write nothing.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite a file not made by codegen.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the table as JSON.")] = False,
) -> None:
    """Choose TL1/TL2 tiles for every ternary weight shape of MODELS and write the kernel table."""
    type_list = [t.strip().lower() for t in types.split(",") if t.strip()]
    models = models or []
    if dry_run:
        entries: set[cg.ShapeEntry] = set()
        if known:
            entries |= set(cg.plan_shapes(cg.known_shapes(), type_list, strict=False))
        for m in models:
            entries |= set(cg.plan_shapes(cg.find_shapes(m), type_list))
        path, rows, changed = output or cg.default_header_path(), sorted(entries), False
    else:
        path, rows, changed = cg.generate(models, output, type_list, known, force)
    if json_out:
        out.emit_json(
            {"path": str(path), "changed": changed, "shapes": [e.to_dict() for e in rows]}
        )
        return
    out.table(
        ["type", "M", "K", "BM", "BK", "bm", "two_k"],
        [(e.qtype, e.M, e.K, e.BM, e.BK, e.bm, e.two_k if e.qtype == "tl2" else "-") for e in rows],
        title=str(path),
    )
    if not dry_run:
        out.info(f"{'wrote' if changed else 'unchanged:'} {path} ({len(rows)} shapes)")
