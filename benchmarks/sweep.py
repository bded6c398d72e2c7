"""The paper's speed sweep on this machine: I2_S vs TQ2_0 vs F16 over model sizes and threads.

bitnet.cpp's README compares its ternary kernels with llama.cpp's on dummy models of the
paper's layouts (125M ... 100B). This script does the same with `bitnet dummy` checkpoints
(random ternary weights of exactly those shapes), `bitnet convert` and `bitnet bench`:

    .venv/bin/python benchmarks/sweep.py                                  # everything that fits
    .venv/bin/python benchmarks/sweep.py --sizes 125M -r 1                # one piece, quick
    .venv/bin/python benchmarks/sweep.py --sizes 3.8B,7B --types i2_s     # more pieces later
    .venv/bin/python benchmarks/sweep.py --report-only                    # table + plot again

It runs in pieces and resumes: every (size, type) result is saved to `<out>/results.json` as
soon as it is measured, and a later run skips what is already there with the same -p/-n/-r/-t
(--redo measures again). Checkpoints and GGUF files go to `<out>/models/` (deleted after each
size unless --keep-models: the 7B F16 file alone is 13.5 GB). F16 is benchmarked only where
its file fits in --f16-max-gib and in half of the available memory (an F16 model that pages
from disk measures the disk). At the end it writes `<out>/sweep.md` (the tables) and
`<out>/sweep.png` (the plot; needs matplotlib, the `plot` extra).

Energy figures are whatever `bitnet bench` reports on this machine: measured with RAPL where
readable, else an estimate that the tables label "estimated" (docs/bench.md).
This is a benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from bitnet.cli import _output as out
from bitnet.tools import dummy as D
from bitnet.tools.bandwidth import available_memory
from bitnet.tools.bench.options import BenchOptions, ModelSpec, parse_int_list, parse_names
from bitnet.tools.bench.report import require_matplotlib
from bitnet.tools.bench.run import run_bench
from bitnet.tools.build import default_cache
from bitnet.tools.errors import BitnetError

#: The paper's layouts that fit an ordinary machine, smallest first (tools/dummy.py PRESETS).
SIZES = ("125M", "700M", "2b4t", "3.8B", "7B")
TYPES = ("i2_s", "tq2_0", "f16")
SEED = 0


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=",".join(SIZES), help="dummy presets, comma-separated")
    p.add_argument("--types", default=",".join(TYPES), help="GGUF types, comma-separated")
    p.add_argument("-t", "--threads", default="1,2", help="thread counts (default 1,2)")
    p.add_argument("-p", "--n-prompt", default="128", help="prompt lengths (default 128)")
    p.add_argument("-n", "--n-gen", default="64", help="generated tokens (default 64)")
    p.add_argument("-r", "--repetitions", type=int, default=3, help="timed repetitions")
    p.add_argument("--out", type=Path, default=None, help="default: $BITNET_CACHE/sweep")
    p.add_argument("--f16-max-gib", type=float, default=8.0, help="largest F16 file to bench")
    p.add_argument("--checkpoint", action="append", default=[], metavar="SIZE=DIR",
                   help="use an existing packed dummy checkpoint for SIZE")  # fmt: skip
    p.add_argument("--keep-models", action="store_true", help="keep checkpoints and GGUFs")
    p.add_argument("--redo", action="store_true", help="measure again what results.json has")
    p.add_argument("--report-only", action="store_true", help="only write sweep.md/sweep.png")
    p.add_argument("--no-plot", action="store_true", help="skip sweep.png")
    return p.parse_args(argv)


# --- results.json -----------------------------------------------------------------------------


def load_results(path: Path) -> dict[str, Any]:
    """{"SIZE/TYPE": {"params": ..., "n_params": ..., "report": bench report | None,
    "skipped": reason | None}}."""
    return json.loads(path.read_text()) if path.is_file() else {}


def save_results(path: Path, results: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, path)  # a crash mid-write never loses earlier pieces


# --- one piece: a size ------------------------------------------------------------------------


def run_size(size: str, types: list[str], opts: BenchOptions, a: argparse.Namespace,
             models: Path, results: dict[str, Any], results_path: Path,
             checkpoints: dict[str, Path]) -> None:  # fmt: skip
    """Make the checkpoint of `size`, convert it to each type and bench it; save as we go."""
    from bitnet.tools.convert import convert_checkpoint

    params = opts.to_dict()
    todo = [
        t for t in types
        if a.redo or results.get(f"{size}/{t}", {}).get("params") != params
    ]  # fmt: skip
    if not todo:
        out.info(f"{size}: all of {', '.join(types)} already measured (--redo to repeat)")
        return
    plan = D.plan_dummy(size, "packed", SEED)
    ckpt = checkpoints.get(size.lower()) or models / f"{size}-packed"
    made_ckpt = False
    if not ckpt.is_dir():
        with out.progress(f"dummy {size}") as bar:
            D.make_dummy(ckpt, size, "packed", SEED, progress=bar)
        made_ckpt = True
    for t in todo:
        key = f"{size}/{t}"
        entry: dict[str, Any] = {"params": params, "n_params": plan.params, "report": None,
                                 "skipped": None}  # fmt: skip
        f16_bytes = 2 * plan.params
        too_big = f16_bytes > min(a.f16_max_gib * 2**30, (available_memory() or 1 << 62) / 2)
        if t == "f16" and too_big:
            entry["skipped"] = (
                f"F16 of {size} is {f16_bytes / 2**30:.1f} GiB: over --f16-max-gib "
                f"{a.f16_max_gib:g} or half the available memory"
            )
            out.warn(f"{key}: {entry['skipped']}")
        else:
            gguf = models / f"{size}-{t}.gguf"
            try:
                if not gguf.is_file():
                    with out.progress(f"converting {size} to {t}") as bar:
                        convert_checkpoint(ckpt, gguf, t, progress=bar, name=f"{size}-{t}")
                with out.progress(f"bench {key}") as bar:
                    entry["report"] = run_bench([ModelSpec(gguf, name=key)], opts, bar)
            except BitnetError as exc:
                entry["skipped"] = str(exc)
                out.warn(f"{key}: {exc}")
            if not a.keep_models:
                gguf.unlink(missing_ok=True)
        results[key] = entry
        save_results(results_path, results)
        _print_piece(key, entry)
    if made_ckpt and not a.keep_models:
        shutil.rmtree(ckpt, ignore_errors=True)


def _print_piece(key: str, entry: dict[str, Any]) -> None:
    rep = entry.get("report")
    if not rep:
        return
    for r in rep["results"]:
        ts = r["tokens_per_second"]
        out.info(f"  {key} t={r['threads']} {r['test']}: {ts['mean']:.2f} ± {ts['stddev']:.2f} t/s")


# --- the report -------------------------------------------------------------------------------


def _cells(results: dict[str, Any]) -> dict[tuple[str, str, int, str], dict[str, Any]]:
    """(size, type, threads, 'pp'|'tg') -> bench result."""
    cells = {}
    for key, entry in results.items():
        size, t = key.split("/")
        for r in (entry.get("report") or {}).get("results", []):
            cells[(size, t, r["threads"], r["test"][:2])] = r
    return cells


def _order(results: dict[str, Any]) -> tuple[list[str], list[str], list[int]]:
    sizes = sorted({k.split("/")[0] for k in results}, key=lambda s: _params(results, s))
    types = [t for t in TYPES if any(k.endswith("/" + t) for k in results)]
    types += sorted({k.split("/")[1] for k in results} - set(types))
    threads = sorted({th for (_, _, th, _) in _cells(results)})
    return sizes, types, threads


def _params(results: dict[str, Any], size: str) -> int:
    return next((e["n_params"] for k, e in results.items() if k.startswith(size + "/")), 0)


def markdown(results: dict[str, Any]) -> str:
    """Tables of tg and pp tokens/s (mean ± sd), ratios, J/token and memory, per size."""
    cells = _cells(results)
    sizes, types, threads = _order(results)
    if not cells:
        return "No results yet.\n"
    any_rep = next(e["report"] for e in results.values() if e.get("report"))
    method = any_rep["energy_model"]["method"]
    params = any_rep["params"]
    lines = [
        f"Machine: {any_rep['host']['cpu']} ({any_rep['host']['n_cpus']} CPUs), llama.cpp "
        f"{any_rep['llama_bench']['build_commit']}; -p {params['n_prompt']} -n "
        f"{params['n_gen']} -r {params['repetitions']}; dummy models (random ternary weights).",
        "",
    ]
    ratio_pairs = [(a, b) for a, b in (("i2_s", "tq2_0"), ("i2_s", "f16")) if a in types
                   and b in types]  # fmt: skip
    for kind, title in (("tg", "Generation"), ("pp", "Prompt processing")):
        test = next((r["test"] for (_, _, _, k), r in cells.items() if k == kind), kind)
        head = ["model", "params", "threads"] + [f"{t.upper()} t/s" for t in types]
        head += [f"{a.upper()} / {b.upper()}" for a, b in ratio_pairs]
        lines += [f"### {title} ({test}), tokens/s", "", _row(head), _row(["---"] * len(head))]
        for s in sizes:
            for th in threads:
                row = [s, f"{_params(results, s) / 1e6:.0f}M", str(th)]
                for t in types:
                    r = cells.get((s, t, th, kind))
                    skipped = results.get(f"{s}/{t}", {}).get("skipped")
                    row.append(_ts(r) if r else ("skipped" if skipped else "-"))
                for a_, b_ in ratio_pairs:
                    ra, rb = cells.get((s, a_, th, kind)), cells.get((s, b_, th, kind))
                    row.append(
                        f"{ra['tokens_per_second']['mean'] / rb['tokens_per_second']['mean']:.2f}×"
                        if ra and rb else "-"
                    )  # fmt: skip
                lines.append(_row(row))
        lines.append("")
    lines += [f"### Energy per generated token, J ({method.upper()})", ""]
    head = ["model", "threads"] + [t.upper() for t in types]
    lines += [_row(head), _row(["---"] * len(head))]
    for s in sizes:
        for th in threads:
            row = [s, str(th)]
            for t in types:
                r = cells.get((s, t, th, "tg"))
                jpt = r["energy"]["joules_per_token"] if r else None
                row.append(f"{jpt:.3f}" if jpt is not None else "-")
            lines.append(_row(row))
    if method == "estimated":
        em = any_rep["energy_model"]
        lines += ["", f"Estimated, not measured (no RAPL here): CPU time × {em['cpu_watts']} W "
                  f"per busy core + modelled DRAM bytes × {em['dram_pj_per_byte']} pJ/B; see "
                  "docs/bench.md."]  # fmt: skip
    lines += ["", "### File size and peak resident memory (1 thread)", ""]
    head = ["model"] + [f"{t.upper()} file / RSS" for t in types]
    lines += [_row(head), _row(["---"] * len(head))]
    for s in sizes:
        row = [s]
        for t in types:
            rep = (results.get(f"{s}/{t}") or {}).get("report")
            if not rep or not rep["runs"]:
                row.append("-")
                continue
            size = out.human_bytes(rep["models"][0]["file_size"])
            row.append(f"{size} / {out.human_bytes(rep['runs'][0]['peak_rss_bytes'])}")
        lines.append(_row(row))
    skipped = [(k, e["skipped"]) for k, e in results.items() if e.get("skipped")]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{k} ({why})" for k, why in skipped)]
    return "\n".join(lines) + "\n"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _ts(r: dict[str, Any]) -> str:
    ts = r["tokens_per_second"]
    return f"{ts['mean']:.2f} ± {ts['stddev']:.2f}"


def plot(results: dict[str, Any], path: Path) -> None:
    """tokens/s (pp, tg) and J/token against parameter count, one line per type, one column
    per thread count."""
    plt = require_matplotlib()
    cells = _cells(results)
    sizes, types, threads = _order(results)
    any_rep = next(e["report"] for e in results.values() if e.get("report"))
    method = any_rep["energy_model"]["method"]
    sizes_b = sorted({round(_params(results, s) / 1e9, 2) for s in sizes})
    fig, axes = plt.subplots(3, len(threads), figsize=(5 * len(threads), 11), squeeze=False)
    rows = [("pp", "prompt tokens/s"), ("tg", "generated tokens/s"),
            ("J", f"J per generated token ({method})")]  # fmt: skip
    for col, th in enumerate(threads):
        for row, (kind, label) in enumerate(rows):
            ax = axes[row][col]
            for t in types:
                xs, ys = [], []
                for s in sizes:
                    r = cells.get((s, t, th, "tg" if kind == "J" else kind))
                    if r:
                        xs.append(_params(results, s) / 1e9)
                        ys.append(
                            r["energy"]["joules_per_token"] if kind == "J"
                            else r["tokens_per_second"]["mean"]
                        )  # fmt: skip
                if xs:
                    ax.plot(xs, ys, marker="o", label=t.upper())
            ax.set_xscale("log")
            ax.set_yscale("log")
            # label the measured sizes only: log-axis minor labels overlap on a short range
            ax.set_xticks(sizes_b, [f"{x:g}" for x in sizes_b])
            ax.xaxis.set_minor_formatter(plt.NullFormatter())
            ax.set_title(f"{label}, {th} thread(s)", fontsize=10)
            ax.set_xlabel("parameters (billions)")
            ax.grid(alpha=0.3, which="both")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
            if kind == "J" and method == "estimated":
                ax.set_xlabel(
                    "parameters (billions)\nESTIMATED, no RAPL here: CPU time × W/core"
                    " + DRAM bytes × pJ/B",
                    fontsize=8,
                )
    fig.suptitle(f"bitnet sweep — {any_rep['host']['cpu']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    root = a.out or default_cache() / "sweep"
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    results_path = root / "results.json"
    results = load_results(results_path)
    try:
        if not a.no_plot:
            require_matplotlib()  # before hours of measuring, not after
        if not a.report_only:
            opts = BenchOptions(
                n_prompt=parse_int_list(a.n_prompt, "-p"),
                n_gen=parse_int_list(a.n_gen, "-n"),
                threads=parse_int_list(a.threads, "-t"),
                repetitions=a.repetitions,
            )
            opts.check()
            checkpoints = {}
            for item in a.checkpoint:
                size, _, folder = item.partition("=")
                checkpoints[size.lower()] = Path(folder)
            for size in parse_names(a.sizes):
                preset = {k.lower(): k for k in D.PRESETS}.get(size)
                if preset is None:
                    raise BitnetError(f"unknown size {size!r}; presets: {', '.join(D.PRESETS)}")
                run_size(preset, parse_names(a.types), opts, a, models, results,
                         results_path, checkpoints)  # fmt: skip
    except BitnetError as exc:
        out.error(str(exc), exc.hint)
        return 1
    (root / "sweep.md").write_text(markdown(results))
    out.info(f"wrote {root / 'sweep.md'}")
    if not a.no_plot and any(e.get("report") for e in results.values()):
        plot(results, root / "sweep.png")
        out.info(f"wrote {root / 'sweep.png'}")
    out.data(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
