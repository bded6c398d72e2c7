"""`bitnet bench`: tokens/s, peak memory and energy per token of GGUF models, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bitnet.tools import energy as E
from bitnet.tools.bench.compare import COMPARE_TYPES, prepare_compare
from bitnet.tools.bench.options import (
    BenchOptions,
    ModelSpec,
    model_info,
    parse_int_list,
    parse_names,
)
from bitnet.tools.bench.report import (
    check_outputs,
    require_matplotlib,
    summary_lines,
    table_rows,
    write_csv,
    write_plot,
)
from bitnet.tools.bench.run import failure_error, run_bench
from bitnet.tools.errors import UsageError
from bitnet.tools.kernels_lib import describe_kernel_paths
from bitnet.tools.store import resolve_model

from . import _output as out
from ._errors import handle_errors
from ._threads import RetuneOption, default_threads


@handle_errors
def bench(
    models: Annotated[
        list[str] | None,
        typer.Option(
            "-m",
            "--model",
            metavar="FILE|NAME",
            help="GGUF model or store name to benchmark (repeat for several).",
        ),
    ] = None,
    n_prompt: Annotated[
        str,
        typer.Option(
            "-p", "--n-prompt", metavar="N,...", help="Prompt lengths, e.g. 128,512 (0: none)."
        ),
    ] = "128",
    n_gen: Annotated[
        str,
        typer.Option("-n", "--n-gen", metavar="N,...", help="Generated tokens, e.g. 64 (0: none)."),
    ] = "64",
    threads: Annotated[
        str | None,
        typer.Option(
            "-t",
            "--threads",
            metavar="N,...",
            help="Thread counts, e.g. 1,2 (default: 1 and the count measured fastest here).",
        ),
    ] = None,
    retune_threads: RetuneOption = False,
    repetitions: Annotated[
        int, typer.Option("-r", "--repetitions", metavar="N", help="Timed repetitions per test.")
    ] = 5,
    depth: Annotated[
        str,
        typer.Option(
            "-d",
            "--depth",
            metavar="N,...",
            help="Context already filled before each test, e.g. 0,512.",
        ),
    ] = "0",
    warmup: Annotated[
        bool, typer.Option("--warmup/--no-warmup", help="One untimed run before each test.")
    ] = True,
    compare: Annotated[
        Path | None,
        typer.Option(
            "--compare",
            metavar="DIR",
            help="HF checkpoint folder: convert it to --types and bench them all.",
        ),
    ] = None,
    types: Annotated[
        str,
        typer.Option("--types", metavar="TYPE,...", help="Types for --compare (comma-separated)."),
    ] = ",".join(COMPARE_TYPES),
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline",
            metavar="NAME",
            help="Type or model name the ratios are against (--compare: f16).",
        ),
    ] = None,
    energy: Annotated[
        str,
        typer.Option(
            "--energy",
            metavar="MODE",
            help="auto (RAPL if readable, else estimate), rapl or estimate.",
        ),
    ] = "auto",
    cpu_watts: Annotated[
        float,
        typer.Option(
            "--cpu-watts", metavar="W", help="Estimate: watts per busy core (see docs/bench.md)."
        ),
    ] = E.DEFAULT_CPU_WATTS,
    dram_pj: Annotated[
        float,
        typer.Option(
            "--dram-pj-per-byte", metavar="PJ", help="Estimate: DRAM energy per byte moved, pJ."
        ),
    ] = E.DEFAULT_DRAM_PJ_PER_BYTE,
    probe: Annotated[
        bool,
        typer.Option(
            "--bandwidth/--no-bandwidth", help="Measure read bandwidth for the % of bound column."
        ),
    ] = True,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON (schema: docs/bench.md).")
    ] = False,
    csv_path: Annotated[
        Path | None, typer.Option("--csv", metavar="FILE", help="Also write the results as CSV.")
    ] = None,
    plot_path: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            metavar="FILE.png",
            help="Also draw tokens/s and J/token to a PNG (needs matplotlib).",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Overwrite existing --csv/--plot files; reconvert --compare."),
    ] = False,
) -> None:
    """Benchmark the speed, memory and energy of GGUF models.

    Prompt processing (pp) and generation (tg): tokens/s with spread, peak RSS, file size,
    bits per weight, J/token (measured with RAPL, else a labelled estimate) and generation as
    a percentage of the memory-bandwidth bound.
    """
    opts = BenchOptions(
        n_prompt=parse_int_list(n_prompt, "-p"),
        n_gen=parse_int_list(n_gen, "-n"),
        threads=parse_int_list(threads, "-t") if threads else [1],
        repetitions=repetitions,
        depth=parse_int_list(depth, "--depth"),
        warmup=warmup,
        energy=energy.lower(),
        cpu_watts=cpu_watts,
        dram_pj_per_byte=dram_pj,
        bandwidth_probe=probe,
    )
    opts.check()
    if plot_path is not None:
        require_matplotlib()
    check_outputs([csv_path, plot_path], force)
    specs = [ModelSpec(resolve_model(m)) for m in models or []]
    for s in specs:  # fail on a missing file before converting or measuring anything
        model_info(s)
    skipped: list[dict[str, str]] = []
    if compare is not None:
        with out.progress(f"converting {compare.name}") as bar:
            more, skipped = prepare_compare(compare, parse_names(types), force=force, progress=bar)
        specs += more
        if baseline is None and any(s.name == "f16" for s in more):
            baseline = "f16"
        for s in skipped:
            out.warn(f"skipping {s['type']}: {s['reason']}")
    if not specs:
        raise UsageError("no model to benchmark.", hint="pass -m MODEL.gguf or --compare DIR")
    if threads is None:  # 1 and the fastest count for the first model's size (measured once)
        opts.threads = sorted({1, default_threads(specs[0].path, retune_threads).threads})

    with out.progress("benchmarking") as bar:
        report = run_bench(specs, opts, progress=bar, skipped=skipped, baseline=baseline)

    if json_out:
        out.emit_json(report)
    else:
        cols, rows = table_rows(report)
        kernels = describe_kernel_paths(report["llama_bench"].get("kernels"))
        out.table(cols, rows, title=f"bitnet bench — {report['host']['cpu']} — kernels: {kernels}")
        for line in summary_lines(report):
            out.info(line)
    for note in report["notes"]:
        out.warn(note)
    if csv_path is not None:
        out.info(f"wrote {write_csv(report, csv_path, force)}")
    if plot_path is not None:
        out.info(f"wrote {write_plot(report, plot_path, force)}")
    err = failure_error(report)
    if err is not None:
        raise err
