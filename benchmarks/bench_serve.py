"""Load and overhead of `bitnet serve`, measured against its own llama-server in the same run.

    .venv/bin/python benchmarks/bench_serve.py -m /tmp/tiny.gguf
    .venv/bin/python benchmarks/bench_serve.py -m /tmp/bn-2b4t.gguf -t 2 --clients 4 --requests 4

One run starts `bitnet serve` on loopback, which starts one llama-server for the model; the
benchmark also talks to that llama-server directly (its private port, read from /proc), so both
paths share one process, one KV cache and one moment of the machine. Then:

1. overhead: one client, requests in turn (`--reps` rounds of: the OpenAI route on llama-server
   directly, the same route through `bitnet serve`, the Ollama route /api/chat through it), after
   one warm-up request each: time to first token and tokens/s (over the whole request), medians
   and spread (min..max) per route, and the ratio to llama-server alone;
2. load: `--clients` concurrent streaming clients × `--requests` each through `bitnet serve`
   (OpenAI route, greedy): requests/s, aggregate tokens/s, TTFT and latency p50/p95/p99, failed
   requests, and the resident memory of `bitnet serve` with its llama-server.

Figures depend on the machine's load at the time: compare the ratios of one run, not absolute
numbers across runs. This is a benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bitnet.cli import _output as out
from bitnet.tools.serve.backends import free_port
from bitnet.tools.serve.catalog import name_for, read_entry
from bitnet.tools.serve.load import LoadSpec, children, run_load, stream_once, tree_rss


def _wait_healthy(url: str, proc: subprocess.Popen, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what} did not become healthy in {timeout} s")


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def overhead(routes: dict[str, LoadSpec], reps: int) -> dict[str, dict]:
    """TTFT (ms) and tokens/s (tokens over the whole request) of one request at a time on
    each route, interleaved."""
    samples: dict[str, dict[str, list[float]]] = {k: {"ttft": [], "tps": []} for k in routes}
    for spec in routes.values():  # warm-up: load, caches, first-connection costs
        stream_once(spec)
    for _ in range(reps):
        for name, spec in routes.items():
            r = stream_once(spec)
            if not r.ok:
                raise SystemExit(f"{name}: {r.error}")
            samples[name]["ttft"].append(r.ttft * 1e3)
            samples[name]["tps"].append(r.tokens / r.latency)
    return {k: {m: _spread(v) for m, v in s.items()} for k, s in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-m", "--model", required=True, type=Path, help="GGUF model")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-c", "--ctx-size", type=int, default=4096)
    ap.add_argument("--parallel", type=int, default=4, help="llama-server slots")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=20, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5, help="overhead rounds")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    args = ap.parse_args()

    entry = read_entry(args.model, name_for(args.model))
    serve_port = free_port()
    serve_cmd = [sys.executable, "-m", "bitnet.cli.app", "serve", "-m", str(args.model)]
    serve_cmd += ["--port", str(serve_port), "-t", str(args.threads), "-c", str(args.ctx_size)]
    serve_cmd += ["--parallel", str(args.parallel)]
    serve = subprocess.Popen(serve_cmd, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        serve_url = f"http://127.0.0.1:{serve_port}"
        _wait_healthy(serve_url, serve, "bitnet serve")
        base = LoadSpec(url=serve_url, model=entry.name, max_tokens=args.max_tokens)
        stream_once(base)  # loads the model: its llama-server is running after this
        direct_url = f"http://127.0.0.1:{_child_port(serve.pid)}"
        routes = {
            "llama-server /v1/chat/completions": LoadSpec(**{**vars(base), "url": direct_url}),
            "bitnet serve /v1/chat/completions": base,
            "bitnet serve /api/chat": LoadSpec(**{**vars(base), "route": "ollama"}),
        }
        over = overhead(routes, args.reps)
        spec = LoadSpec(
            **{**vars(base), "clients": args.clients, "requests": args.requests, "timeout": 900}
        )
        report = run_load(spec)
        rss = tree_rss(serve.pid)
    finally:
        serve.terminate()
        serve.wait(timeout=60)

    cpu = _cpu_name()
    load = {**report.summary(), "rss_bytes": rss}
    if args.json:
        out.emit_json({"cpu": cpu, "args": vars(args) | {"model": str(args.model)},
                       "overhead": over, "load": load})  # fmt: skip
        return
    ref = over["llama-server /v1/chat/completions"]
    rows = []
    for name, o in over.items():
        ttft, tps = o["ttft"], o["tps"]
        rows.append((
            name,
            f"{ttft['median']:.1f} ({ttft['min']:.1f}..{ttft['max']:.1f})",
            f"{tps['median']:.2f} ({tps['min']:.2f}..{tps['max']:.2f})",
            f"{ttft['median'] / ref['ttft']['median']:.3f}",
            f"{tps['median'] / ref['tps']['median']:.3f}" if ref["tps"]["median"] else "-",
        ))  # fmt: skip
    title = (f"{args.model.name}, {args.threads} threads, one client, {args.reps} reps after a "
             f"warm-up, max_tokens {args.max_tokens}; {cpu}")  # fmt: skip
    out.table(["route", "TTFT ms median (min..max)", "tok/s median (min..max)",
               "TTFT ratio", "tok/s ratio"], rows, title=title)  # fmt: skip
    lrows = [
        ("requests (failed)", f"{load['requests']} ({load['failed']})"),
        ("wall s", load["wall_s"]),
        ("requests/s", load["requests_per_s"]),
        ("aggregate tokens/s", load["tokens_per_s"]),
        *((f"TTFT ms {p}", load["ttft_ms"][p]) for p in ("p50", "p95", "p99")),
        *((f"latency ms {p}", load["latency_ms"][p]) for p in ("p50", "p95", "p99")),
        ("RSS of bitnet serve + llama-server", out.human_bytes(rss)),
    ]
    out.table(["load", "value"], lrows, title=(
        f"{args.clients} clients x {args.requests} streaming requests, /v1/chat/completions via "
        f"bitnet serve, --parallel {args.parallel}, -c {args.ctx_size}"))  # fmt: skip


def _child_port(pid: int) -> int:
    """The --port of the llama-server that `bitnet serve` (process `pid`) started."""
    for child in children(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--port" in argv:
            return int(argv[argv.index(b"--port") + 1])
    raise SystemExit("bitnet serve has no llama-server child")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
