"""`bitnet pull`, `bitnet list`, `bitnet rm`: the local model store (tools/store.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bitnet.tools import store
from bitnet.tools.convert import EMBEDDING_TYPES, OUTTYPES

from . import _output as out
from ._errors import handle_errors


@handle_errors
def pull(
    model: Annotated[
        str, typer.Argument(help=f"A known name ({', '.join(store.KNOWN_MODELS)}) or a repo id.")
    ],
    outtype: Annotated[
        str,
        typer.Option(
            "--type", help=f"auto (measured: the fastest here) or one of {', '.join(OUTTYPES)}."
        ),
    ] = "auto",
    embedding_type: Annotated[
        str | None,
        typer.Option(help=f"Type of token_embd / lm_head: {', '.join(EMBEDDING_TYPES)}."),
    ] = None,
    revision: Annotated[str | None, typer.Option(help="Hub revision.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Download and convert again if already stored.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the stored model as JSON.")
    ] = False,
) -> None:
    """Download a model and convert it into the store.

    The store is $BITNET_HOME; run, bench and the other commands then take the model's name.
    """
    with out.progress(f"pulling {model}") as cb:
        result = store.pull(
            model, outtype.lower(), embedding_type, force=force, revision=revision, progress=cb
        )
    m = result.model
    if m.type in ("tl1", "tl2") and result.pulled:
        from .convert import _tl_kernels

        _tl_kernels(Path(m.path))
    if json_out:
        out.emit_json(m.to_dict() | {"pulled": result.pulled, "type_reason": result.outtype_reason})
        return
    if not result.pulled:
        out.info(f"{m.name} is already in the store ({m.type}); --force pulls it again")
    else:
        if result.outtype_reason:
            out.info(f"type {m.type}: {result.outtype_reason}")
        out.info(f"stored {m.name} ({m.type}, {out.human_bytes(m.size)}) at {m.path}")
    out.info(f"next: bitnet run -m {m.name} -p 'Hello'")


@handle_errors
def list_(
    json_out: Annotated[bool, typer.Option("--json", help="Print the models as JSON.")] = False,
) -> None:
    """List the models in the store.

    Name, type, size, parameters, family and path of each.
    """
    models = store.list_models()
    if json_out:
        out.emit_json([m.to_dict() for m in models])
        return
    if not models:
        out.info(f"the store ({store.store_dir()}) is empty; try: bitnet pull bitnet-2b")
        return
    rows = [
        (m.name, m.type.upper(), out.human_bytes(m.size), f"{m.parameters / 1e9:.2f} B", m.family,
         m.path)
        for m in models
    ]  # fmt: skip
    out.table(["name", "type", "size", "parameters", "family", "path"], rows)


@handle_errors
def rm(
    model: Annotated[str, typer.Argument(help="Name of a stored model (see bitnet list).")],
) -> None:
    """Delete a model from the store."""
    m = store.remove(model)
    out.info(f"removed {m.name} ({out.human_bytes(m.size)})")
