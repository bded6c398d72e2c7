"""`bitnet convert`: a Hugging Face checkpoint (folder or repo id) → one GGUF file."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Annotated

import typer

from bitnet.tools.convert import EMBEDDING_TYPES, OUTTYPES, ConvertPlan, convert_checkpoint

from . import _output as out
from ._errors import handle_errors


def _source_name(src: str) -> str:
    """'microsoft/bitnet-b1.58-2B-4T' or './models/x/' → the model's short name."""
    local = Path(src)
    if local.exists():
        return local.resolve().name
    return src.rstrip("/").split("/")[-1]


def _print_plan(plan: ConvertPlan) -> None:
    rows = [
        (t.name, t.qtype.upper(), "×".join(str(d) for d in t.shape), t.nbytes) for t in plan.tensors
    ]
    rows.append(("total", "", f"{len(plan.tensors)} tensors", plan.tensor_bytes))
    out.table(
        ["tensor", "type", "shape", "bytes"],
        rows,
        title=f"{plan.source} → {plan.output} ({plan.arch}, {plan.layout})",
    )
    out.info(f"file size: {plan.file_size} bytes ({out.human_bytes(plan.file_size)}); dry run")


@handle_errors
def convert(
    src: Annotated[
        str, typer.Argument(metavar="SRC", help="Checkpoint folder, or a Hugging Face repo id.")
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            metavar="FILE",
            help="Output .gguf (default: <name>-<outtype>.gguf here).",
        ),
    ] = None,
    outtype: Annotated[
        str,
        typer.Option(metavar="TYPE", help=f"Type of the ternary linears: {', '.join(OUTTYPES)}."),
    ] = "i2_s",
    embedding_type: Annotated[
        str | None,
        typer.Option(
            metavar="TYPE",
            help=f"Type of token_embd: {', '.join(EMBEDDING_TYPES)} "
            "(default f16; f32 with --outtype f32).",
            show_default=False,
        ),
    ] = None,
    revision: Annotated[
        str | None, typer.Option(metavar="REV", help="Hub revision (for repo ids).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print every tensor (type, shape, bytes); write nothing."),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print plan/result as JSON.")] = False,
    build: Annotated[
        bool,
        typer.Option(
            "--build/--no-build",
            help="tl1/tl2: rebuild llama.cpp if it lacks kernels for the model's shapes.",
        ),
    ] = True,
    tuned: Annotated[
        bool,
        typer.Option(
            "--tuned",
            help="tl1/tl2: pack with the tiles `bitnet codegen MODEL --tune` chose on this "
            "machine (default tiles for shapes it did not tune).",
        ),
    ] = False,
) -> None:
    """Convert a BitNet b1.58 checkpoint to GGUF.

    I2_S by default; tensors are read, packed and written one at a time.
    """
    from bitnet.tools import hub

    tiles = _tuned_tiles(outtype) if tuned else None
    name = _source_name(src)
    output = output or Path.cwd() / f"{name}-{outtype.lower()}.gguf"
    if Path(src).expanduser().exists():  # a local folder: nothing to fetch, no bar
        folder = hub.resolve_source(src, revision=revision)
    else:
        with out.progress(f"downloading {src}") as cb:
            folder = hub.resolve_source(src, revision=revision, progress=cb)
    if dry_run:
        plan = convert_checkpoint(
            folder, output, outtype, embedding_type, dry_run=True, name=name, tiles=tiles
        )
        if json_out:
            out.emit_json(plan.to_dict())
        else:
            _print_plan(plan)
        return
    with out.progress(f"converting to {output.name}") as cb:
        result = convert_checkpoint(
            folder, output, outtype, embedding_type, force=force, progress=cb, name=name,
            tiles=tiles,
        )  # fmt: skip
    if outtype.lower() == "tl1" and platform.machine().lower() in ("x86_64", "amd64"):
        out.warn("TL1 is the ARM layout: on x86 it runs on the portable C path, far slower than "
                 "tl2 or i2_s (the x86 types)")  # fmt: skip
    kernels = _tl_kernels(result.path) if build and outtype.lower() in ("tl1", "tl2") else None
    if json_out:
        out.emit_json(result.to_dict() | ({"tl_kernels": kernels} if kernels else {}))
    else:
        out.info(
            f"wrote {result.path} ({out.human_bytes(result.bytes_written)}, "
            f"{len(result.plan.tensors)} tensors, {result.seconds:.1f} s)"
        )
        out.info(f"next: bitnet inspect {result.path}")


def _tuned_tiles(outtype: str) -> dict:
    """The tiles of `bitnet codegen --tune` (UsageError when not tl1/tl2 or nothing is tuned)."""
    from bitnet.tools import tl_tune
    from bitnet.tools.errors import UsageError

    if outtype.lower() not in ("tl1", "tl2"):
        raise UsageError(
            f"--tuned applies to --outtype tl1 or tl2, not {outtype}.",
            hint="drop --tuned, or convert with --outtype tl2 --tuned",
        )
    return tl_tune.load_tuned()


def _tl_kernels(model: Path) -> dict:
    """Make the llama.cpp builds serve the TL shapes of `model` (rebuild only if one lacks them)."""
    from bitnet.tools import build as B

    with out.progress("building TL kernels for the model's shapes") as cb:
        check = B.ensure_tl_kernels(model, progress=cb)
    for d in check.rebuilt:
        out.info(f"rebuilt {d} with TL kernels for {len(check.needed)} weight shapes")
    if not check.rebuilt and not check.up_to_date:
        out.info("no llama.cpp build yet: the next `python setup_env.py` builds the TL kernels")
    return {
        "shapes": sorted(list(s) for s in check.needed),
        "rebuilt": [str(d) for d in check.rebuilt],
        "up_to_date": [str(d) for d in check.up_to_date],
    }
