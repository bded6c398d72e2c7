"""Our llama-bench against already-built peers (bitnet.cpp, ik_llama.cpp, …) on this machine.

    .venv/bin/python benchmarks/compare_peers.py \\
        --engine "ours I2_S" $(bitnet-build-dir)/bin/llama-bench /tmp/bn-2b4t-i2_s.gguf \\
        --engine "bitnet.cpp I2_S" ~/peers/bitnet.cpp/build/bin/llama-bench /tmp/ms-i2_s.gguf \\
        --engine "ik IQ2_BN_R4" ~/peers/ik_llama.cpp/build/bin/llama-bench /tmp/ik-iq2_bn_r4.gguf \\
        -p 128 -n 64 -t 1,2 -r 5

This project builds no peer (workplace rule): build each one yourself, quantize the same F16
dummy with its own tools, and pass `--engine NAME LLAMA_BENCH GGUF` once per engine.

Every engine runs once per pass, one after another, for every thread count: pass 1 in the given
order, pass 2 (the drift pass) in reverse, so a machine that speeds up or slows down during the
run favours no engine. The table shows the mean of the passes and, in brackets, each pass
(llama-bench's own mean over -r repetitions). Below it: the CPU model, the read bandwidth
measured now (tools/bandwidth.py) per thread count, and for decode the per-cent of the bound
bandwidth / bytes read per token (bytes from the engine's GGUF when our reader knows its types).
A peer whose binary is missing, fails or crashes is reported and the others still run.
Only the flags every llama-bench since 2024 knows are passed (-m -p -n -t -r -o jsonl).
This is a benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bitnet.cli import _output as out

#: A runner: the llama-bench command -> (records, error or None). Injected in tests.
Runner = Callable[[list[str]], tuple[list[dict[str, Any]], str | None]]


@dataclass(frozen=True)
class Engine:
    name: str
    binary: Path
    model: Path


@dataclass
class Cell:
    """One (engine, test, threads) figure: llama-bench's mean t/s of each pass."""

    engine: str
    test: str  # "pp128" or "tg64"
    threads: int
    passes: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.passes) if self.passes else float("nan")


def bench_command(engine: Engine, n_prompt: int, n_gen: int, threads: int, reps: int) -> list[str]:
    """The llama-bench command line (flags every llama-bench since 2024 accepts)."""
    return [
        str(engine.binary),
        "-m", str(engine.model),
        "-p", str(n_prompt),
        "-n", str(n_gen),
        "-t", str(threads),
        "-r", str(reps),
        "-o", "jsonl",
    ]  # fmt: skip


def run_command(cmd: list[str]) -> tuple[list[dict[str, Any]], str | None]:
    """Run one llama-bench process: its records, or an error line when it failed."""
    from bitnet.tools.bench.llama_bench import explain_failure, run_llama_bench
    from bitnet.tools.errors import RuntimeFailure

    try:
        run = run_llama_bench(cmd)
    except RuntimeFailure as exc:  # could not start it (missing, not executable)
        return [], str(exc)
    if run.returncode != 0 or not run.records:
        return [], explain_failure(run)
    return run.records, None


def _test_name(rec: dict[str, Any]) -> str | None:
    n_prompt, n_gen = int(rec.get("n_prompt", 0)), int(rec.get("n_gen", 0))
    if n_gen > 0:
        return f"tg{n_gen}"
    return f"pp{n_prompt}" if n_prompt > 0 else None


def compare(
    engines: Sequence[Engine],
    threads: Sequence[int],
    n_prompt: int = 128,
    n_gen: int = 64,
    reps: int = 5,
    passes: int = 2,
    runner: Runner = run_command,
    on_run: Callable[[str], None] | None = None,
) -> tuple[dict[tuple[str, str, int], Cell], dict[str, str]]:
    """Interleaved passes over all engines (odd passes in reverse order).

    Returns the cells keyed by (engine, test, threads) and the first error of each engine
    that failed (a failed engine is not run again in later passes).
    """
    cells: dict[tuple[str, str, int], Cell] = {}
    errors: dict[str, str] = {}
    for p in range(passes):
        order = list(engines) if p % 2 == 0 else list(reversed(engines))
        for eng in order:
            for t in threads:
                if eng.name in errors:
                    continue
                if on_run:
                    on_run(f"pass {p + 1}/{passes}: {eng.name}, {t} thread(s)")
                records, err = runner(bench_command(eng, n_prompt, n_gen, t, reps))
                if err:
                    errors[eng.name] = err
                    continue
                for rec in records:
                    test = _test_name(rec)
                    if test is None or "avg_ts" not in rec:
                        continue
                    key = (eng.name, test, t)
                    cells.setdefault(key, Cell(eng.name, test, t)).passes.append(
                        float(rec["avg_ts"])
                    )
    return cells, errors


def _fmt_cell(cell: Cell | None) -> str:
    if cell is None or not cell.passes:
        return "—"
    if len(cell.passes) == 1:
        return f"{cell.mean:.1f}"
    return f"{cell.mean:.1f} ({'/'.join(f'{v:.1f}' for v in cell.passes)})"


def decode_bytes(model: Path, n_gen: int) -> float | None:
    """Bytes read per generated token (tools/bandwidth.py), or None if the GGUF is not ours
    to read (a peer's own tensor types)."""
    from bitnet.tools.bandwidth import Traffic
    from bitnet.tools.gguf import GGUFReader

    try:
        return Traffic.from_gguf(GGUFReader(model)).decode_bytes_per_token(0, n_gen)
    except Exception:  # noqa: BLE001 - any unreadable file just has no bound
        return None


def table(
    engines: Sequence[Engine],
    cells: dict[tuple[str, str, int], Cell],
    threads: Sequence[int],
    n_prompt: int,
    n_gen: int,
    bandwidth: dict[int, float],
    bytes_per_token: dict[str, float | None],
) -> tuple[list[str], list[list[str]]]:
    """The issue's table: one row per engine, pp and tg per thread count, % of the decode bound."""
    tests = [x for x, n in ((f"pp{n_prompt}", n_prompt), (f"tg{n_gen}", n_gen)) if n > 0]
    tg = f"tg{n_gen}"
    cols = ["engine"] + [f"{x} {t}t" for x in tests for t in threads]
    cols += [f"tg % bound {t}t" for t in threads] if n_gen > 0 else []
    rows = []
    for eng in engines:
        row = [eng.name]
        row += [_fmt_cell(cells.get((eng.name, x, t))) for x in tests for t in threads]
        for t in threads if n_gen > 0 else []:
            cell = cells.get((eng.name, tg, t))
            nbytes, bw = bytes_per_token.get(eng.name), bandwidth.get(t)
            if cell and cell.passes and nbytes and bw:
                row.append(f"{100 * cell.mean * nbytes / bw:.0f} %")
            else:
                row.append("—")
        rows.append(row)
    return cols, rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--engine",
        nargs=3,
        action="append",
        required=True,
        metavar=("NAME", "LLAMA_BENCH", "GGUF"),
        help="an engine: its name, its llama-bench binary and the GGUF it runs (repeat)",
    )
    p.add_argument("-p", "--n-prompt", type=int, default=128)
    p.add_argument("-n", "--n-gen", type=int, default=64)
    p.add_argument("-t", "--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("-r", "--reps", type=int, default=5, help="llama-bench repetitions")
    p.add_argument("--passes", type=int, default=2, help="passes (every 2nd in reverse order)")
    p.add_argument("--no-bandwidth", action="store_true", help="skip the bandwidth probe")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)

    engines = [Engine(n, Path(b), Path(m)) for n, b, m in args.engine]
    if len({e.name for e in engines}) != len(engines):
        p.error("engine names must differ")
    threads = [int(t) for t in str(args.threads).split(",") if t.strip()]
    cells, errors = compare(
        engines, threads, args.n_prompt, args.n_gen, args.reps, args.passes, on_run=out.info
    )

    from bitnet.tools.bandwidth import measure_read_bandwidth
    from bitnet.tools.bench.run import _host

    bandwidth: dict[int, float] = {}
    if not args.no_bandwidth:
        for t in threads:
            bandwidth[t] = measure_read_bandwidth(t).bytes_per_second
    nbytes = {e.name: decode_bytes(e.model, args.n_gen) for e in engines}
    cpu = _host()["cpu"]
    if args.json:
        out.emit_json(
            {
                "cpu": cpu,
                "bandwidth_bytes_per_s": bandwidth,
                "decode_bytes_per_token": nbytes,
                "cells": [asdict(c) | {"mean": c.mean} for c in cells.values()],
                "errors": errors,
            }
        )
    else:
        cols, rows = table(engines, cells, threads, args.n_prompt, args.n_gen, bandwidth, nbytes)
        out.table(cols, rows, title=f"t/s, mean of {args.passes} interleaved passes (each)")
        out.data(f"CPU: {cpu}")
        for t, bw in bandwidth.items():
            out.data(f"read bandwidth, {t} thread(s): {bw / 1e9:.1f} GB/s")
        for name, b in nbytes.items():
            out.data(f"{name}: {b / 1e9:.3f} GB read per token" if b else f"{name}: bytes n/a")
    for name, err in errors.items():
        out.warn(f"{name} failed: {err}")
    return 1 if errors and len(errors) == len(engines) else 0


if __name__ == "__main__":
    raise SystemExit(main())
