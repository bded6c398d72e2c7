"""Concurrent streaming clients for `bitnet serve` (or llama-server itself): the load benchmark
(benchmarks/bench_serve.py) and the load test drive the server through this module.

Each client sends its requests one after another; each request streams a reply (OpenAI SSE from
/v1/chat/completions or Ollama NDJSON from /api/chat) and records when the first piece arrived,
when the last did, how many tokens came and whether the reply was complete and well-formed.
"""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .backends import process_rss

ROUTES = ("openai", "ollama")


@dataclass
class Result:
    """One streamed request."""

    ok: bool = False
    error: str = ""
    ttft: float = 0.0  # seconds to the first content piece
    latency: float = 0.0  # seconds to the end of the reply
    tokens: int = 0
    text: str = ""
    finish: str = ""


@dataclass
class LoadSpec:
    """What to send: `clients` threads, each `requests` requests of up to `max_tokens` tokens."""

    url: str
    model: str
    route: str = "openai"
    clients: int = 4
    requests: int = 4
    max_tokens: int = 32
    prompt: str = "Write a short story about a robot."
    api_key: str | None = None
    timeout: float = 600.0
    disconnect_after: int = 0  # >0: one extra client drops each stream after this many pieces
    temperature: float = 0.0


def _request(spec: LoadSpec) -> tuple[str, dict[str, Any]]:
    messages = [{"role": "user", "content": spec.prompt}]
    if spec.route == "openai":
        body = {
            "model": spec.model,
            "messages": messages,
            "max_tokens": spec.max_tokens,
            "temperature": spec.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        return "/v1/chat/completions", body
    body = {
        "model": spec.model,
        "messages": messages,
        "stream": True,
        "options": {"num_predict": spec.max_tokens, "temperature": spec.temperature},
    }
    return "/api/chat", body


def _lines(resp: http.client.HTTPResponse) -> Iterator[bytes]:
    buf = b""
    while True:
        data = resp.read1(65536)
        if not data:
            break
        buf += data
        *lines, buf = buf.split(b"\n")
        yield from (ln.strip() for ln in lines if ln.strip())
    if buf.strip():
        yield buf.strip()


def stream_once(spec: LoadSpec, drop_after: int = 0) -> Result:
    """Send one streaming request and read the reply (or drop it after `drop_after` pieces)."""
    u = urlsplit(spec.url)
    path, body = _request(spec)
    headers = {"Content-Type": "application/json"}
    if spec.api_key:
        headers["Authorization"] = f"Bearer {spec.api_key}"
    res = Result()
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=spec.timeout)
    t0 = time.perf_counter()
    pieces = 0
    try:
        conn.request("POST", path, json.dumps(body), headers)
        resp = conn.getresponse()
        if resp.status != 200:
            res.error = f"HTTP {resp.status}: {resp.read()[:200]!r}"
            return res
        done = False
        for line in _lines(resp):
            if spec.route == "openai":
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    continue
                obj = json.loads(payload)
                if obj.get("usage"):
                    res.tokens = int(obj["usage"].get("completion_tokens", res.tokens))
                for choice in obj.get("choices", []):
                    piece = (choice.get("delta") or {}).get("content") or ""
                    res.finish = choice.get("finish_reason") or res.finish
                    if piece:
                        pieces += 1
                        res.text += piece
                        res.ttft = res.ttft or time.perf_counter() - t0
            else:
                obj = json.loads(line)
                if "error" in obj:
                    res.error = str(obj["error"])
                    return res
                piece = obj.get("message", {}).get("content", "")
                if piece:
                    pieces += 1
                    res.text += piece
                    res.ttft = res.ttft or time.perf_counter() - t0
                if obj.get("done"):
                    done = True
                    res.tokens = int(obj.get("eval_count", 0))
                    res.finish = obj.get("done_reason", "")
            if drop_after and pieces >= drop_after:
                res.error = "dropped"
                return res
        res.latency = time.perf_counter() - t0
        res.ok = done and bool(res.finish)
        if not res.ok:
            res.error = "stream ended before its last object"
    except (OSError, http.client.HTTPException, json.JSONDecodeError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    return res


@dataclass
class LoadReport:
    """What a load run measured."""

    spec: dict[str, Any]
    wall: float
    results: list[Result] = field(default_factory=list)
    dropped: list[Result] = field(default_factory=list)

    @property
    def ok(self) -> list[Result]:
        return [r for r in self.results if r.ok]

    def summary(self) -> dict[str, Any]:
        ok = self.ok
        tokens = sum(r.tokens for r in ok)
        return {
            "requests": len(self.results),
            "failed": len(self.results) - len(ok),
            "wall_s": round(self.wall, 3),
            "requests_per_s": round(len(ok) / self.wall, 3) if self.wall else 0.0,
            "tokens_per_s": round(tokens / self.wall, 2) if self.wall else 0.0,
            "tokens": tokens,
            "ttft_ms": percentiles([r.ttft * 1e3 for r in ok]),
            "latency_ms": percentiles([r.latency * 1e3 for r in ok]),
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.summary(), "spec": self.spec, "errors": [asdict(r) for r in self.failed()]}

    def failed(self) -> list[Result]:
        return [r for r in self.results if not r.ok]


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p95/p99 (nearest rank) and the mean, in the unit given."""
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "mean": 0.0}
    s = sorted(values)

    def rank(p: float) -> float:
        return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]

    return {
        "p50": round(rank(50), 2),
        "p95": round(rank(95), 2),
        "p99": round(rank(99), 2),
        "mean": round(statistics.fmean(s), 2),
    }


def run_load(spec: LoadSpec) -> LoadReport:
    """`spec.clients` threads × `spec.requests` streamed requests; plus, with
    `disconnect_after`, one client that drops each of its streams early."""
    results: list[Result] = []
    dropped: list[Result] = []
    lock = threading.Lock()

    def client(drop: int) -> None:
        for _ in range(spec.requests):
            r = stream_once(spec, drop_after=drop)
            with lock:
                (dropped if drop else results).append(r)

    threads = [threading.Thread(target=client, args=(0,)) for _ in range(spec.clients)]
    if spec.disconnect_after:
        threads.append(threading.Thread(target=client, args=(spec.disconnect_after,)))
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=spec.timeout * spec.requests)
    wall = time.perf_counter() - t0
    public = {k: v for k, v in asdict(spec).items() if k != "api_key"}
    return LoadReport(spec=public, wall=wall, results=results, dropped=dropped)


def tree_rss(pid: int) -> int:
    """Resident bytes of process `pid` and all its descendants (Linux /proc), 0 if unknown."""
    return process_rss(pid) + sum(tree_rss(c) for c in children(pid))


def children(pid: int) -> list[int]:
    """The direct child processes of `pid` (Linux /proc)."""
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    except (OSError, ValueError):
        pass
    return out
