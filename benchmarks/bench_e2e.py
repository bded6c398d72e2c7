"""Side-by-side llama-bench of I2_S against upstream's TQ2_0 in our own build, with the ratios.

    .venv/bin/python benchmarks/bench_e2e.py                      # /tmp/bn-2b4t-{i2_s,tq2_0}.gguf
    .venv/bin/python benchmarks/bench_e2e.py -m A.gguf -m B.gguf -p 128 -n 64 -t 1,2 -r 5 --json

Every model runs in ONE llama-bench invocation (`-m A -m B -p P -n N -t T -r R -o json`), so the
figures share the machine's state; compare the ratios, never absolute numbers across runs. The
first model is the numerator of the ratios (speed of model 1 / speed of model i). Make the models
with `bitnet dummy` (2B-4T preset) and `bitnet convert --outtype i2_s|tq2_0` (the speed target of
issue 4: tg >= 1.6x and pp128 >= 3x TQ2_0, 2 threads).

Each row shows llama-bench's mean, the median and the best of the -r repetitions (tokens/s). On a
busy machine (other jobs take a core, and a descheduled thread makes the other one spin at the
barrier), the best repetition is the steadiest figure; ratios are given for median and best.
This is a benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from bitnet.cli import _output as out

DEFAULT_MODELS = ["/tmp/bn-2b4t-i2_s.gguf", "/tmp/bn-2b4t-tq2_0.gguf"]


def _llama_bench(binary: str | None) -> Path:
    if binary:
        return Path(binary)
    from bitnet.tools.build import find_binary

    return find_binary("llama-bench")


def run(
    models: list[str], p: int, n: int, threads: str, reps: int, binary: str | None, extra: list[str]
) -> list[dict]:
    """Run llama-bench once over every model: (one record per (model, test, threads), command)."""
    exe = _llama_bench(binary)
    cmd = [str(exe)]
    for m in models:
        cmd += ["-m", m]
    cmd += ["-p", str(p), "-n", str(n), "-t", threads, "-r", str(reps), "-o", "json", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise SystemExit(
            f"llama-bench failed ({proc.returncode}): {tail}\ncommand: {' '.join(cmd)}"
        )
    rows = []
    for rec in json.loads(proc.stdout):
        test = f"pp{rec['n_prompt']}" if rec["n_gen"] == 0 else f"tg{rec['n_gen']}"
        samples = rec.get("samples_ts") or [rec["avg_ts"]]
        rows.append(
            {
                "model": rec["model_filename"],
                "type": rec.get("model_type", ""),
                "test": test,
                "threads": rec["n_threads"],
                "mean": rec["avg_ts"],
                "median": statistics.median(samples),
                "best": max(samples),
                "samples": samples,
            }
        )
    return rows, " ".join(cmd[:-2] if cmd[-2:] == ["-o", "json"] else cmd)


def ratios(rows: list[dict], models: list[str]) -> list[dict]:
    """Speed of models[0] over every other model, per (test, threads)."""
    by = {(r["model"], r["test"], r["threads"]): r for r in rows}
    out_rows = []
    for (m, test, th), r in by.items():
        if m != models[0]:
            continue
        for other in models[1:]:
            o = by.get((other, test, th))
            if o:
                out_rows.append(
                    {
                        "test": test,
                        "threads": th,
                        "vs": Path(other).name,
                        "ratio_median": r["median"] / o["median"],
                        "ratio_best": r["best"] / o["best"],
                    }
                )
    return out_rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", action="append", help="GGUF (repeat; first = numerator)")
    ap.add_argument("-p", type=int, default=128, help="prompt tokens (0 = no pp test)")
    ap.add_argument("-n", type=int, default=64, help="generated tokens (0 = no tg test)")
    ap.add_argument("-t", "--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("-r", "--reps", type=int, default=5)
    ap.add_argument("--bin", help="llama-bench binary (default: the bitnet build's)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ap.add_argument("extra", nargs="*", help="after --: more llama-bench options")
    args = ap.parse_args(argv)
    models = args.model or DEFAULT_MODELS
    for m in models:
        if not Path(m).exists():
            raise SystemExit(f"model not found: {m} (make it with bitnet dummy + bitnet convert)")

    rows, cmd = run(models, args.p, args.n, args.threads, args.reps, args.bin, args.extra)
    rat = ratios(rows, models)
    if args.json:
        out.emit_json({"command": cmd, "results": rows, "ratios": rat})
        return 0
    out.info(f"command: {cmd}")
    out.table(
        ["model", "test", "threads", "mean t/s", "median t/s", "best t/s"],
        [
            [
                Path(r["model"]).name,
                r["test"],
                str(r["threads"]),
                f"{r['mean']:.2f}",
                f"{r['median']:.2f}",
                f"{r['best']:.2f}",
            ]
            for r in rows
        ],
        title="llama-bench, one run",
    )
    out.table(
        ["test", "threads", f"{Path(models[0]).name} vs", "ratio (median)", "ratio (best)"],
        [
            [
                r["test"],
                str(r["threads"]),
                r["vs"],
                f"{r['ratio_median']:.2f}x",
                f"{r['ratio_best']:.2f}x",
            ]
            for r in rat
        ],
        title="speed ratios",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
