"""`bitnet inspect`: what a GGUF file holds — architecture, hyper-parameters, tokenizer, tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bitnet.tools.gguf import describe, read_gguf

from . import _output as out
from ._errors import handle_errors


def _special(entry: dict | None) -> str:
    return "-" if entry is None else f"{entry['id']} {entry['token']!r}"


@handle_errors
def inspect(
    path: Annotated[Path, typer.Argument(metavar="FILE", help="A .gguf model file.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    tensors: Annotated[
        bool, typer.Option("--tensors/--no-tensors", help="List every tensor.")
    ] = True,
) -> None:
    """Show what a GGUF file holds.

    Architecture, hyper-parameters, tokenizer, tensors and bits per weight.
    """
    summary = describe(read_gguf(path))
    if not tensors:
        summary.pop("tensors")
    if json_out:
        out.emit_json(summary)
        return

    tok = summary["tokenizer"]
    general = summary["general"]
    overview = [
        ("file", f"{summary['path']} ({out.human_bytes(summary['file_size'])})"),
        ("gguf version", summary["gguf_version"]),
        ("architecture", summary["architecture"] or "-"),
        ("name", general.get("general.name", "-")),
        ("file type", general.get("general.file_type", "-")),
        *((k, v) for k, v in summary["hyperparameters"].items()),
        ("tokenizer", f"{tok['model']} / {tok['pre']}"),
        ("tokens / merges", f"{tok['n_tokens']} / {tok['n_merges']}"),
        ("bos / eos / eot", " / ".join(_special(tok[k]) for k in ("bos", "eos", "eot"))),
        ("chat template", "yes" if tok["has_chat_template"] else "no"),
        ("tensors", summary["n_tensors"]),
        ("parameters", summary["n_parameters"]),
        ("tensor bytes", f"{summary['tensor_bytes']} ({out.human_bytes(summary['tensor_bytes'])})"),
        ("linear types", ", ".join(summary["linear_types"]) or "-"),
        ("bits/weight (linears)", summary["bpw_linears"]),
        ("bits/weight (overall)", summary["bpw_overall"]),
    ]
    out.table(["key", "value"], overview, title=str(path))
    if tensors:
        rows = [
            (t["name"], t["type"], "×".join(str(d) for d in t["shape"]), t["bytes"])
            for t in summary["tensors"]
        ]
        out.table(["tensor", "type", "shape", "bytes"], rows, title="tensors")
