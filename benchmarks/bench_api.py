"""Tokens/s of the Python API (`bitnet.load(...).generate`) against `bitnet run`, side by side.

    .venv/bin/python benchmarks/bench_api.py -m tiny.gguf -m 2b4t.gguf -n 64 -t 1,2 -r 5 [--json]

For each model and repetition, alternately: `bitnet run`'s llama-completion (greedy, the same
prompt, its own timing lines parsed from its log) and a fresh `bitnet.load` + `generate` in this
process (llama.cpp's perf counters read through the bindings, so both sides count the same way).
Both generate the same greedy tokens, so the same number of them. Reported per side: prompt and
generation tokens/s (llama.cpp's counters: median, min-max over the repetitions), the time to the
first generated text from a cold start (run: process start; API: `bitnet.load` called), and for
the API the generation rate Python sees (first to last piece, wall clock), which adds the
bindings' per-token overhead. `bitnet run` itself also opens the GGUF in Python before starting
llama-completion (as `bitnet.load` does); that is not in its column. A benchmark, not a test: it
asserts nothing.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bitnet.cli import _output as out

PROMPT = (
    "The history of computing is a story of machines that became smaller, faster and cheaper, "
    "and of the people who found new uses for each generation of them."
)
_PERF = re.compile(
    r"(prompt eval|eval|load) time =\s*([\d.]+) ms(?: /\s*(\d+) (?:tokens|runs))?", re.M
)


def run_side(model: Path, prompt: str, n: int, threads: int, ctx: int) -> dict:
    """One `bitnet run --temp 0` (its llama-completion command), timed from its own log."""
    from bitnet.tools import runtime

    opts = runtime.GenerationOptions(
        n_predict=n, threads=threads, ctx_size=ctx, temperature=0.0, seed=1,
        display_prompt=False, extra=["--no-warmup"],
    )  # fmt: skip
    cmd = runtime.completion_command(model, prompt, opts)
    t0 = time.perf_counter()
    proc = subprocess.Popen(  # unbuffered: communicate() below reads the fds directly
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=runtime.llama_env(), bufsize=0
    )
    assert proc.stdout is not None
    first = proc.stdout.read(1)  # the first byte of generated text
    first_s = time.perf_counter() - t0
    rest, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"llama-completion failed: {err.decode(errors='replace')[-500:]}")
    stdout = (first + rest).decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    perf = {m.group(1): (float(m.group(2)), int(m.group(3) or 0)) for m in _PERF.finditer(stderr)}
    (pp_ms, pp_n), (tg_ms, tg_n) = perf["prompt eval"], perf["eval"]
    return {
        "text": stdout.removesuffix("\n\n"),  # llama-completion ends with a blank line
        "load_s": perf["load"][0] / 1e3,
        "process_s": wall,
        "first_s": first_s,
        "pp_ts": pp_n / pp_ms * 1e3,
        "tg_ts": tg_n / tg_ms * 1e3 if tg_ms else 0.0,
        "n_gen": tg_n,
    }


def api_side(model: Path, prompt: str, n: int, threads: int, ctx: int) -> dict:
    """A fresh `bitnet.load` + greedy `generate(stream=True)`, with llama.cpp's counters."""
    import bitnet

    t0 = time.perf_counter()
    llm = bitnet.load(model, n_threads=threads, n_ctx=ctx)
    load_s = time.perf_counter() - t0
    first_s = 0.0
    with llm:
        lib, ctx_ptr = llm._lib, llm._llama.ctx
        lib.llama_perf_context_reset(ctx_ptr)
        stamps = []
        stream = llm.generate(prompt, max_tokens=n, temperature=0, stream=True)
        pieces = []
        for piece in stream:
            stamps.append(time.perf_counter())
            pieces.append(piece)
        first_s = stamps[0] - t0 if stamps else 0.0
        perf = lib.llama_perf_context(ctx_ptr)
        n_tok = len(stream.tokens)
    wall_tg = (n_tok - 1) / (stamps[-1] - stamps[0]) if n_tok > 1 and stamps[-1] > stamps[0] else 0
    return {
        "text": "".join(pieces),
        "load_s": load_s,
        "first_s": first_s,
        "pp_ts": perf.n_p_eval / perf.t_p_eval_ms * 1e3,
        "tg_ts": perf.n_eval / perf.t_eval_ms * 1e3 if perf.t_eval_ms else 0.0,
        "tg_wall_ts": wall_tg,
        "n_gen": n_tok,
    }


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench(
    models: list[Path], prompt: str, n: int, thread_counts: list[int], ctx: int, reps: int
) -> list[dict]:
    rows = []
    for model, threads in ((m, t) for m in models for t in thread_counts):
        run_side(model, prompt, 4, threads, ctx)  # warm-up: page cache, CPU clocks
        api_side(model, prompt, 4, threads, ctx)
        runs, apis = [], []
        for _ in range(reps):
            runs.append(run_side(model, prompt, n, threads, ctx))
            apis.append(api_side(model, prompt, n, threads, ctx))
        # llama-completion prints a piece with printf("%s"): a NUL byte (random models make
        # them) ends it there, so compare without NULs.
        same = all(
            r["text"] == a["text"].replace("\0", "") for r, a in zip(runs, apis, strict=True)
        )
        row = {
            "model": model.name,
            "threads": threads,
            "n_gen": apis[0]["n_gen"],
            "same_text": same,
        }
        for side, recs in (("run", runs), ("api", apis)):
            for key in ("load_s", "first_s", "pp_ts", "tg_ts", "tg_wall_ts", "process_s"):
                if key in recs[0]:
                    row[f"{side}_{key}"] = _summary([r[key] for r in recs])
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", action="append", required=True, help="GGUF (repeatable)")
    p.add_argument("-n", type=int, default=64, help="tokens to generate")
    p.add_argument("-t", "--threads", default="2", help="thread counts, e.g. 1,2")
    p.add_argument("-c", "--ctx", type=int, default=512)
    p.add_argument("-r", "--reps", type=int, default=5)
    p.add_argument("-p", "--prompt", default=PROMPT)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    threads = [int(t) for t in a.threads.split(",")]
    rows = bench([Path(m) for m in a.model], a.prompt, a.n, threads, a.ctx, a.reps)
    if a.json:
        out.emit_json(rows)
        return 0

    def fmt(s: dict, digits: int = 1) -> str:
        return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"

    cols = ["model", "threads", "gen", "same", "run tg t/s", "api tg t/s", "api tg wall",
            "api/run tg", "run pp t/s", "api pp t/s", "run 1st s", "api 1st s"]  # fmt: skip
    table = []
    for r in rows:
        ratio = r["api_tg_ts"]["median"] / r["run_tg_ts"]["median"]
        table.append([
            r["model"], r["threads"], r["n_gen"], r["same_text"], fmt(r["run_tg_ts"]),
            fmt(r["api_tg_ts"]), fmt(r["api_tg_wall_ts"]), f"{ratio:.3f}", fmt(r["run_pp_ts"]),
            fmt(r["api_pp_ts"]),
            fmt(r["run_first_s"], 2), fmt(r["api_first_s"], 2),
        ])  # fmt: skip
    out.table(cols, table, title=f"{a.reps} reps, median (min-max); tokens/s unless marked s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
