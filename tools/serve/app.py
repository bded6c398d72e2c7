"""The HTTP server of `bitnet serve`: routes, the API key, relaying llama-server's streams.

Python's threading HTTP server (one thread per connection, HTTP/1.1 keep-alive, chunked
streaming) is enough for a local server and adds no dependency: each request costs one loopback
hop to llama-server, where the work happens; the benchmark measures that hop.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hmac
import http.client
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import bitnet

from ..errors import BitnetError, UsageError, debug_enabled
from . import ollama
from .backends import Backend, BusyError, LoadError, Pool, ServerOptions
from .catalog import Catalog, ModelEntry
from .ollama import HTTPError, field

PAGE = Path(__file__).with_name("chat.html")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: OpenAI routes relayed to the model's llama-server as they are
OPENAI_POST = ("/v1/chat/completions", "/v1/completions")
#: the token budget fields of OpenAI requests (and llama-server's own)
BUDGET_FIELDS = ("max_tokens", "max_completion_tokens", "n_predict")


class Server(ThreadingHTTPServer):
    """The listening socket plus what every request needs: catalog, pool and key."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], catalog: Catalog, pool: Pool, key: str | None):
        self.catalog = catalog
        self.pool = pool
        self.api_key = key
        self.page = PAGE.read_bytes()
        super().__init__(address, Handler)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # streamed pieces are small: send each at once
    server: Server
    _raw: bytes = b""
    server_version = f"bitnet/{bitnet.__version__}"

    # --- plumbing ---------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if debug_enabled():
            super().log_message(format, *args)

    def _openai_style(self) -> bool:
        return self.path.startswith("/v1/")

    def send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def send_error_json(self, err: HTTPError) -> None:
        if self._openai_style():
            kind = {401: "authentication_error", 404: "not_found_error"}.get(
                err.status, "invalid_request_error" if err.status < 500 else "server_error"
            )
            error = {"code": err.status, "message": err.message, "type": kind, **err.extra}
            body: dict[str, Any] = {"error": error}
        else:
            body = {"error": err.message, **err.extra}
        headers = {"WWW-Authenticate": 'Basic realm="bitnet"'} if err.status == 401 else None
        self.send_json(err.status, body, headers)

    def start_stream(self, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()

    def chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def read_body(self) -> dict[str, Any]:
        raw = self._raw
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HTTPError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "request body must be a JSON object")
        return body

    def authorized(self) -> bool:
        key = self.server.api_key
        if not key:
            return True
        auth = self.headers.get("Authorization", "")
        given = self.headers.get("X-Api-Key", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        elif auth[:6].lower() == "basic ":  # a browser's login prompt for the page: any user
            try:
                given = base64.b64decode(auth[6:].strip()).decode().partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                given = ""
        return hmac.compare_digest(given.encode(), key.encode())

    def entry_for(self, body: dict[str, Any], required: bool) -> ModelEntry:
        name = field(body, "model", "str")
        if required and not name:
            raise HTTPError(400, "field 'model' is required")
        entry = self.server.catalog.find(name)
        if entry is None:
            names = ", ".join(self.server.catalog.names())
            raise HTTPError(404, f"model '{name}' not found; this server has: {names}")
        return entry

    # --- dispatch ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        # Read the whole body first, whatever the answer: on a kept-alive connection, an unread
        # body would be taken for the next request.
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self.send_error_json(HTTPError(411, "send the body with a Content-Length"))
            return
        self._raw = self.rfile.read(length) if length else b""
        routes = {
            ("GET", "/health"): self.get_health,
            ("GET", "/"): self.get_page,
            ("HEAD", "/"): self.get_page,
            ("GET", "/api/version"): self.get_version,
            ("GET", "/api/tags"): self.get_tags,
            ("GET", "/api/ps"): self.get_ps,
            ("POST", "/api/show"): self.post_show,
            ("POST", "/api/generate"): lambda: self.post_ollama(chat=False),
            ("POST", "/api/chat"): lambda: self.post_ollama(chat=True),
            ("GET", "/v1/models"): self.get_models,
            **{("POST", p): self.post_openai for p in OPENAI_POST},
        }
        try:
            if path != "/health" and not self.authorized():
                raise HTTPError(401, "missing or wrong API key")
            handler = routes.get((method, path))
            if handler is None:
                known = any(p == path for _, p in routes)
                raise HTTPError(405 if known else 404, f"no route {method} {path}")
            handler()
        except HTTPError as err:
            self.send_error_json(err)
        except LoadError as exc:
            self.send_error_json(HTTPError(500, str(exc)))
        except BusyError as exc:
            self.send_error_json(HTTPError(503, str(exc)))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client left; nothing to tell it
        except (OSError, http.client.HTTPException) as exc:  # llama-server went away mid-request
            self.close_connection = True
            try:
                self.send_error_json(HTTPError(502, f"llama-server failed: {exc}"))
            except OSError:
                pass

    # --- routes -----------------------------------------------------------------------------

    def get_health(self) -> None:
        self.send_json(200, {"status": "ok"})

    def get_page(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.server.page)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.server.page)

    def get_version(self) -> None:
        self.send_json(200, {"version": bitnet.__version__})

    def get_tags(self) -> None:
        self.send_json(200, {"models": [e.listing() for e in self.server.catalog.entries.values()]})

    def get_ps(self) -> None:
        models = []
        for b in self.server.pool.loaded():
            models.append(
                {
                    **b.entry.listing(),
                    "expires_at": "0001-01-01T00:00:00Z",
                    "size_vram": 0,
                    "context_length": b.n_ctx,
                    "rss": b.rss_bytes(),
                }
            )
        self.send_json(200, {"models": models})

    def post_show(self) -> None:
        self.send_json(200, ollama.show(self.entry_for(self.read_body(), required=True)))

    def get_models(self) -> None:
        data = [
            {"id": e.name, "object": "model", "created": 0, "owned_by": "bitnet"}
            for e in self.server.catalog.entries.values()
        ]
        self.send_json(200, {"object": "list", "data": data})

    def post_openai(self) -> None:
        body = self.read_body()
        entry = self.entry_for(body, required=False)
        chat = self.path.startswith("/v1/chat/")
        if chat:
            _check_openai_messages(body)
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, (str, list)):
                raise HTTPError(400, "field 'prompt' must be a string or a list")
        field(body, "stream", "bool")
        for name in ("temperature", "top_p"):
            field(body, name, "number")
        for name in (*BUDGET_FIELDS, "seed", "n"):
            field(body, name, "int")
        body["model"] = entry.name
        with self.server.pool.use(entry) as (backend, _):
            warning = None
            for name in BUDGET_FIELDS:
                warning = ollama.clamp_predict(body, backend.n_ctx, name) or warning
            headers = {"X-Bitnet-Warning": warning} if warning else {}
            conn = backend.connection()
            try:
                conn.request("POST", self.path, json.dumps(body), _json_headers())
                resp = conn.getresponse()
                ctype = resp.getheader("Content-Type", "application/json")
                if resp.status == 200 and ctype.startswith("text/event-stream"):
                    self.start_stream(ctype, headers)
                    for data in _chunks(resp):
                        self.chunk(data)
                    self.end_stream()
                    return
                raw = resp.read()
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError:
                    obj = None
                if isinstance(obj, dict) and warning and resp.status == 200:
                    obj["warning"] = warning
                self.send_json(resp.status, obj if obj is not None else raw.decode(), headers)
            finally:
                conn.close()

    def post_ollama(self, chat: bool) -> None:
        body = self.read_body()
        entry = self.entry_for(body, required=True)
        stream = field(body, "stream", "bool", True)
        params = ollama.sampling(body)
        if chat:
            turns = ollama.messages(body)
        else:
            prompt = field(body, "prompt", "str", "")
            system = field(body, "system", "str")
            raw = field(body, "raw", "bool", False)
            turns = [{"role": "system", "content": system}] if system else []
            turns += [{"role": "user", "content": prompt}] if prompt else []
        started = time.monotonic_ns()
        with self.server.pool.use(entry) as (backend, load_s):
            reply = ollama.Reply(entry, chat, int(load_s * 1e9), started)
            reply.warning = ollama.clamp_predict(params, backend.n_ctx)
            if not any(t["role"] != "system" for t in turns):  # Ollama: no prompt = load only
                obj = reply.final({}, time.monotonic_ns())
                obj["done_reason"] = "load"
                self.send_json(200, obj)
                return
            text = prompt if (not chat and raw) else _apply_template(backend, turns)
            request = {"prompt": text, "stream": stream, "cache_prompt": True, **params}
            conn = backend.connection()
            try:
                conn.request("POST", "/completion", json.dumps(request), _json_headers())
                resp = conn.getresponse()
                if resp.status != 200:
                    raise _upstream_error(resp.status, resp.read())
                if not stream:
                    last = json.loads(resp.read())
                    self.send_json(200, reply.final(last, time.monotonic_ns(), last["content"]))
                    return
                self.start_stream("application/x-ndjson")
                for kind, obj in _sse_events(resp):
                    if kind == "error":  # after the headers: Ollama's error object, then the end
                        self.chunk(json.dumps({"error": _message_of(obj)}).encode() + b"\n")
                        break
                    if obj.get("stop"):
                        out = reply.final(obj, time.monotonic_ns(), obj.get("content", ""))
                    else:
                        out = reply.piece(obj.get("content", ""))
                    self.chunk(json.dumps(out).encode() + b"\n")
                self.end_stream()
            finally:
                conn.close()


# --- helpers ----------------------------------------------------------------------------------


def _check_openai_messages(body: dict[str, Any]) -> None:
    """OpenAI `messages`: a non-empty list of objects with a string `role` (content may be a
    string, a list of parts or null; llama-server checks the rest)."""
    items = field(body, "messages", "list")
    if not items:
        raise HTTPError(400, "field 'messages' is required and must be a non-empty list")
    for i, m in enumerate(items):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise HTTPError(400, f"field 'messages[{i}]' must be an object with a string 'role'")


def _json_headers() -> dict[str, str]:
    return {"Content-Type": "application/json"}


def _chunks(resp: http.client.HTTPResponse) -> Iterator[bytes]:
    """The body of a streamed reply as it arrives."""
    while True:
        data = resp.read1(65536)
        if not data:
            return
        yield data


def _sse_events(resp: http.client.HTTPResponse) -> Iterator[tuple[str, Any]]:
    """(`data` or `error`, parsed JSON) for each server-sent event line."""
    buf = b""
    for data in _chunks(resp):
        buf += data
        *lines, buf = buf.split(b"\n")
        for line in lines:
            kind, _, payload = line.strip().partition(b":")
            if kind in (b"data", b"error") and payload.strip() not in (b"", b"[DONE]"):
                yield kind.decode(), json.loads(payload)


def _message_of(payload: Any) -> str:
    err = payload.get("error", payload) if isinstance(payload, dict) else payload
    return err.get("message", str(err)) if isinstance(err, dict) else str(err)


def _upstream_error(status: int, raw: bytes) -> HTTPError:
    try:
        payload = json.loads(raw)
    except json.JSONDecodeError:
        payload = raw.decode("utf-8", "replace")
    return HTTPError(status, _message_of(payload))


def _apply_template(backend: Backend, turns: list[dict[str, str]]) -> str:
    """The model's chat template over `turns`, rendered by llama-server (as its own chat route
    does), ending with the assistant's turn."""
    conn = backend.connection(timeout=60)
    try:
        conn.request("POST", "/apply-template", json.dumps({"messages": turns}), _json_headers())
        resp = conn.getresponse()
        raw = resp.read()
        if resp.status != 200:
            raise _upstream_error(resp.status, raw)
        return str(json.loads(raw)["prompt"])
    finally:
        conn.close()


# --- the command's library function -----------------------------------------------------------


def serve(
    models: list[Path],
    host: str = "127.0.0.1",
    port: int = 11434,
    api_key: str | None = None,
    opts: ServerOptions | None = None,
    max_loaded: int = 1,
    log: Callable[[str, str], None] | None = None,
) -> None:
    """Serve `models` until SIGINT/SIGTERM; `log(kind, message)` reports status lines."""
    log = log or (lambda kind, message: None)
    catalog = Catalog(models)
    for e in catalog.entries.values():
        if e.error:
            log("warn", f"{e.name}: {e.error} (the server reports it to requests for it)")
    if host not in LOOPBACK and not api_key:
        log("warn", f"listening on {host} without --api-key: anyone who can reach it may use it")
    pool = Pool(opts or ServerOptions(), max_loaded, log)
    try:
        server = Server((host, port), catalog, pool, api_key)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(
                f"port {port} on {host} is in use.",
                hint=f"pick another: bitnet serve --port {port + 1}",
            ) from None
        raise BitnetError(f"cannot listen on {host}:{port}: {exc.strerror}.") from None
    stop = threading.Event()

    def shutdown(signum: int, frame: Any) -> None:
        if not stop.is_set():
            stop.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    previous = {s: signal.signal(s, shutdown) for s in (signal.SIGINT, signal.SIGTERM)}
    bound = server.server_address
    log("info", f"bitnet serve: http://{bound[0]}:{bound[1]}/ serving {', '.join(catalog.names())}")
    threading.Thread(target=_preload, args=(pool, catalog, log), daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        log("info", "bitnet serve: shutting down")
        server.server_close()
        pool.close()
        for s, h in previous.items():
            signal.signal(s, h)


def _preload(pool: Pool, catalog: Catalog, log: Callable[[str, str], None]) -> None:
    """Load the default model at start so the first request does not wait (errors are logged
    and reported again to the requests for that model)."""
    entry = catalog.entries[catalog.default]
    if entry.error:
        return
    try:
        with pool.use(entry, wait=1.0) as (b, seconds):
            log("info", f"loaded {entry.name} in {seconds:.1f} s (n_ctx per slot {b.n_ctx})")
    except BitnetError as exc:
        log("warn", str(exc))
