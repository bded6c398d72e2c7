"""One llama-server process per loaded model, on a private loopback port, kept by an LRU pool.

At most `max_loaded` processes live at once: loading another model first stops the least
recently used one that no request is using. A model whose process cannot start or exits while
loading is reported (an error for that model); the pool and the other models go on.
"""

from __future__ import annotations

import collections
import collections.abc
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..build import check_tl_served, find_binary
from ..errors import BitnetError, debug_enabled
from ..runtime import explain_log, spawn
from ..threads import ThreadChoice, cache_key, choose_threads, gives_threads, known_threads
from .catalog import ModelEntry

CHILD_HOST = "127.0.0.1"


class LoadError(BitnetError):
    """A model's llama-server could not start or load the file."""


class BusyError(BitnetError):
    """Every loaded model is in use and no other may be loaded now."""


@dataclass(frozen=True)
class ServerOptions:
    """What every llama-server child gets: threads, context, parallel slots, extra flags.

    `threads` None: each model gets the decode and prompt counts measured fastest here for its
    size class (tools/threads.py; measured at its first start, cached) as `-t` and `-tb`. A count
    the user gives (here or as `-t` in `extra`) is used for both, as llama-server does.
    """

    threads: int | None = None
    retune_threads: bool = False  # measure again, once per size class in this server's life
    ctx_size: int = 4096
    parallel: int = 1
    extra: tuple[str, ...] = ()
    load_timeout: float = 600.0


def process_rss(pid: int) -> int:
    """Resident bytes of process `pid` (Linux /proc), 0 when unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def free_port() -> int:
    """A loopback port nothing listens on now (the child binds it a moment later)."""
    with socket.socket() as s:
        s.bind((CHILD_HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Backend:
    """A running llama-server for one model."""

    entry: ModelEntry
    port: int
    proc: subprocess.Popen[bytes]
    load_seconds: float = 0.0
    n_ctx: int = 0  # tokens per slot, from /props
    active: int = 0  # requests using it now
    last_used: float = field(default_factory=time.monotonic)
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=40))

    def connection(self, timeout: float | None = None) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(CHILD_HOST, self.port, timeout=timeout)

    def get_json(self, path: str) -> Any:
        conn = self.connection(timeout=30)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return json.loads(resp.read() or b"null") if resp.status == 200 else None
        finally:
            conn.close()

    def rss_bytes(self) -> int:
        return process_rss(self.proc.pid)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def server_command(
    entry: ModelEntry, port: int, opts: ServerOptions, choice: ThreadChoice | None = None
) -> list[str]:
    """The llama-server command line for one model; `choice`: the default thread counts (used
    when `opts.threads` is None)."""
    cmd = [
        str(find_binary("llama-server")),
        "-m", str(entry.path),
        "--host", CHILD_HOST,
        "--port", str(port),
        "-c", str(opts.ctx_size),
        "--parallel", str(opts.parallel),
        "--alias", entry.name,
        "--jinja",
        "--no-webui",
    ]  # fmt: skip
    if opts.threads:
        cmd += ["-t", str(opts.threads), "-tb", str(opts.threads)]
    elif choice:
        cmd += ["-t", str(choice.threads), "-tb", str(choice.prompt or choice.threads)]
    return cmd + list(opts.extra)  # last: a flag given after `--` wins


class Pool:
    """The loaded models, least recently used first; `use(entry)` loads on demand."""

    def __init__(
        self,
        opts: ServerOptions,
        max_loaded: int,
        log: collections.abc.Callable[[str, str], None] | None = None,
    ) -> None:
        self.opts = opts
        self.max_loaded = max(1, max_loaded)
        self.log = log or (lambda kind, message: None)
        self._loaded: collections.OrderedDict[str, Backend] = collections.OrderedDict()
        self._loading: dict[str, threading.Event] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._measuring = threading.Lock()  # one thread-count measurement at a time
        self._retuned: set[str] = set()  # size classes --retune-threads measured already

    # --- the public side -------------------------------------------------------------------

    @contextmanager
    def use(self, entry: ModelEntry, wait: float = 600.0) -> Iterator[tuple[Backend, float]]:
        """The backend of `entry` (loaded if needed) and the seconds this call spent loading it;
        the backend is not stopped while the block runs."""
        backend, loaded_in = self._acquire(entry, wait)
        try:
            yield backend, loaded_in
        finally:
            with self._cond:
                backend.active -= 1
                backend.last_used = time.monotonic()
                self._cond.notify_all()

    def loaded(self) -> list[Backend]:
        with self._cond:
            return list(self._loaded.values())

    def close(self) -> None:
        """Stop every child (shutdown)."""
        with self._cond:
            self._closed = True
            backends = list(self._loaded.values())
            self._loaded.clear()
            self._cond.notify_all()
        for b in backends:
            b.stop()

    # --- loading and eviction --------------------------------------------------------------

    def _acquire(self, entry: ModelEntry, wait: float) -> tuple[Backend, float]:
        if entry.error:
            raise LoadError(f"model {entry.name} cannot be loaded: {entry.error}")
        deadline = time.monotonic() + wait
        with self._cond:
            while True:
                if self._closed:
                    raise BusyError("the server is shutting down.")
                b = self._loaded.get(entry.name)
                if b is not None and b.proc.poll() is None:
                    b.active += 1
                    self._loaded.move_to_end(entry.name)
                    return b, 0.0
                if b is not None:  # the process died since: forget it, load again
                    del self._loaded[entry.name]
                if entry.name not in self._loading and self._make_room():
                    event = threading.Event()
                    self._loading[entry.name] = event
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BusyError(
                        f"all {self.max_loaded} loaded models are busy; {entry.name} cannot load."
                    )
                self._cond.wait(timeout=min(left, 1.0))
        t0 = time.monotonic()
        try:
            b = self._start(entry)
        except BaseException:
            with self._cond:
                del self._loading[entry.name]
                self._cond.notify_all()
            raise
        with self._cond:
            del self._loading[entry.name]
            b.active += 1
            self._loaded[entry.name] = b
            self._cond.notify_all()
        return b, time.monotonic() - t0

    def _make_room(self) -> bool:
        """With the lock held: stop idle backends, least recently used first, until one more
        fits. False when every slot is busy (or loading)."""
        while len(self._loaded) + len(self._loading) >= self.max_loaded:
            idle = next((n for n, b in self._loaded.items() if b.active == 0), None)
            if idle is None:
                return False
            self._loaded.pop(idle).stop()
        return True

    def _start(self, entry: ModelEntry) -> Backend:
        """Start llama-server for `entry` and wait until /health says it is ready."""
        binary = find_binary("llama-server")
        check_tl_served(entry.path, binary)
        choice = self._thread_choice(entry)
        port = free_port()
        cmd = server_command(entry, port, self.opts, choice)
        proc = spawn(cmd, stdout=subprocess.DEVNULL)
        b = Backend(entry=entry, port=port, proc=proc)
        threading.Thread(target=_drain, args=(b,), daemon=True).start()
        t0 = time.monotonic()
        deadline = t0 + self.opts.load_timeout
        while True:
            code = proc.poll()
            if code is not None:
                time.sleep(0.1)  # let the drain thread read the last lines
                raise LoadError(
                    f"model {entry.name} failed to load (llama-server exit {code}): "
                    f"{_load_reason(b.tail)}"
                )
            if time.monotonic() > deadline or self._closed:
                b.stop()
                raise LoadError(f"model {entry.name} did not load in {self.opts.load_timeout} s.")
            if _healthy(port):
                break
            time.sleep(0.05)
        b.load_seconds = time.monotonic() - t0
        props = b.get_json("/props") or {}
        b.n_ctx = int(props.get("default_generation_settings", {}).get("n_ctx", 0))
        return b

    def _thread_choice(self, entry: ModelEntry) -> ThreadChoice | None:
        """The default thread counts for `entry` (None when the user set one), logged.

        Only this loading thread waits for a measurement (the pool's lock is free meanwhile),
        but llama-bench would share the cores with requests other models are serving, slowing
        them and its own figures: then this start takes the physical cores, uncached, and a
        later quiet start measures."""
        if self.opts.threads or gives_threads(self.opts.extra):
            return None
        with self._measuring:  # a second model of the same size class finds the figure cached
            key = cache_key(entry.path)
            retune = self.opts.retune_threads and key not in self._retuned
            choice = known_threads(entry.path)
            wanted = retune or choice.source != "cached"
            busy = [b.entry.name for b in self.loaded() if b.active] if wanted else []
            if wanted and not busy:
                self._retuned.add(key)
                choice = choose_threads(entry.path, remeasure=retune)
        note = f"; not measured while {', '.join(busy)} served requests" if busy else ""
        self.log("info", f"{entry.name}: threads: {choice.describe(prompt=True)}{note}")
        return choice


def _load_reason(tail: collections.abc.Iterable[str]) -> str:
    """llama.cpp's own reason for a failed load (its `error loading model: ...` line), else the
    most telling line of its log."""
    for line in tail:
        if "error loading model:" in line:
            return line.split("error loading model:", 1)[1].strip()
    return explain_log(tail)


def _healthy(port: int) -> bool:
    conn = http.client.HTTPConnection(CHILD_HOST, port, timeout=5)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _drain(b: Backend) -> None:
    """Keep the last lines of a child's log (its error message), echoed with BITNET_DEBUG=1."""
    debug = debug_enabled()
    assert b.proc.stderr is not None
    for raw in b.proc.stderr:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        b.tail.append(line)
        if debug:
            sys.stderr.write(f"[{b.entry.name}] {line}\n")
