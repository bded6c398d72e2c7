"""`bitnet codegen`: the TL1/TL2 shape table (tiles per weight shape) a llama.cpp build serves;
with `--tune`, time every valid tiling of the shapes on this machine and keep the fastest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bitnet.tools import codegen as cg
from bitnet.tools.errors import UsageError
from bitnet.tools.quants import Tiling

from . import _output as out
from ._errors import handle_errors


@handle_errors
def codegen(
    models: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="MODEL",
            help="GGUF files or HF checkpoint folders whose ternary shapes to serve.",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o", "--output", metavar="FILE", help="Header to write (default: the committed one)."
        ),
    ] = None,
    types: Annotated[
        str, typer.Option("--types", metavar="TYPE,...", help="Comma-separated: tl1, tl2.")
    ] = "tl1,tl2",
    known: Annotated[
        bool | None,
        typer.Option(
            "--known/--no-known",
            help="Also serve the published models' shapes (default), or tune them (--tune).",
            show_default=False,
        ),
    ] = None,
    tune: Annotated[
        bool,
        typer.Option(
            "--tune",
            help="Time every valid tiling of the shapes here, keep the fastest (> 5% faster than "
            "the default), save it for `bitnet convert --tuned` and the next build.",
        ),
    ] = False,
    repeats: Annotated[
        int,
        typer.Option(
            "--repeats", min=1, metavar="N", help="--tune: timed samples per tiling (median)."
        ),
    ] = 7,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            metavar="N",
            help="--tune: threads the model runs with (default: all cores).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the table (or the timings), write nothing.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite a file not made by codegen.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the table as JSON.")] = False,
) -> None:
    """Choose TL1/TL2 tiles and write the kernel table.

    Every ternary weight shape of MODELS gets its tiles (and, with --tune, the fastest ones).
    """
    type_list = [t.strip().lower() for t in types.split(",") if t.strip()]
    models = models or []
    if tune:
        _tune(models, type_list, bool(known), repeats, threads, dry_run, json_out)
        return
    known = True if known is None else known
    if dry_run:
        entries: set[cg.ShapeEntry] = set()
        if known:
            entries |= set(cg.known_entries(type_list))
        for m in models:
            entries |= cg.model_entries(m, type_list)
        path, rows, changed = output or cg.default_header_path(), sorted(entries), False
    else:
        path, rows, changed = cg.generate(models, output, type_list, known, force)
    if json_out:
        out.emit_json(
            {"path": str(path), "changed": changed, "shapes": [e.to_dict() for e in rows]}
        )
        return
    table = [(e.qtype, e.M, e.K, e.BM, e.BK, e.bm, e.two_k if e.qtype == "tl2" else "-",
              "yes" if e.is_default else "no") for e in rows]  # fmt: skip
    out.table(["type", "M", "K", "BM", "BK", "bm", "two_k", "default"], table, title=str(path))
    if not dry_run:
        out.info(f"{'wrote' if changed else 'unchanged:'} {path} ({len(rows)} shapes)")


def _tiles(t: Tiling) -> str:
    return f"{t.BM}x{t.BK}x{t.bm}"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _tune(
    models: list[Path],
    types: list[str],
    known: bool,
    repeats: int,
    threads: int | None,
    dry_run: bool,
    json_out: bool,
) -> None:
    from bitnet.tools import tl_tune

    for t in types:
        if t not in cg.TL_TYPES:
            raise UsageError(f"codegen tunes tl1/tl2 tilings, not {t!r}.")
    shapes = tl_tune.shapes_to_tune(models, types, known)
    timer = tl_tune.KernelTimer(repeats=repeats)
    with out.progress(f"timing TL tilings ({timer.kernel})") as cb:
        results = tl_tune.tune(shapes, timer=timer, threads=threads, progress=cb)
    saved = registered = None
    if not dry_run:
        saved = tl_tune.save_tuned(results, kernel=timer.kernel)
        registered = tl_tune.register_tuned(results)
    if json_out:
        out.emit_json({"kernel": timer.kernel, "saved": str(saved) if saved else None,
                       "registered": registered,
                       "shapes": [r.to_dict() for r in results]})  # fmt: skip
        return
    nt = tl_tune.BATCH_NT
    threads_n = results[0].threads
    columns = ["type", "M", "K", "tilings", "default", "ms", "chosen", "ms", "speed-up",
               f"nt={nt} default ms", f"nt={nt} chosen ms"]  # fmt: skip
    rows = [(r.qtype, r.M, r.K, r.candidates, _tiles(r.default), _ms(r.default_ms),
             _tiles(r.chosen), _ms(r.chosen_ms), f"{r.speedup:.2f}x",
             _ms(r.default_batch_ms), _ms(r.chosen_batch_ms)) for r in results]  # fmt: skip
    title = (f"TL tilings BMxBKxbm: ms per mul_mat on one thread ({timer.kernel} path, median "
             f"of {repeats}); speed-up = ms x tile imbalance over {threads_n} threads, default "
             f"vs chosen; chosen only if > {tl_tune.NOISE_GUARD:.0%}")  # fmt: skip
    out.table(columns, rows, title=title)
    if dry_run:
        out.info("dry run: nothing saved")
        return
    news = "added the chosen tiles to" if registered else "the chosen tiles were already in"
    out.info(f"saved {saved}; {news} the build's shape registry")
    out.info("next: bitnet convert CHECKPOINT --outtype tl2 --tuned (rebuilds llama.cpp if needed)")
