"""Drive the llama.cpp binaries built by `setup_env.py` with the right arguments.

The binaries stay llama.cpp's own: we only check the model up front (so a bad file is one clear
line, not a C++ abort), assemble the command line and relay the output. Generated text goes to our
stdout as llama.cpp produces it; llama.cpp's log goes to stderr only with BITNET_DEBUG=1, and its
last lines become the error message when it fails.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .build import check_tl_served, find_binary
from .errors import InputNotFoundError, RuntimeFailure, debug_enabled
from .gguf import GGUFReader


def llama_env() -> dict[str, str]:
    """The environment for a llama.cpp binary: no debugger-attach backtrace on an abort unless
    BITNET_DEBUG is set (ggml forks gdb for it, which can hang a process several threads abort in).
    """
    env = dict(os.environ)
    if not debug_enabled():
        env.setdefault("GGML_NO_BACKTRACE", "1")
    return env


def spawn(cmd: Sequence[str], stdout: Any) -> subprocess.Popen[bytes]:
    """Start the llama.cpp binary `cmd` with stderr piped, no stdin and `llama_env()`; a
    RuntimeFailure if it cannot start."""
    try:
        return subprocess.Popen(
            list(cmd),
            stdout=stdout,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=llama_env(),
        )
    except OSError as exc:
        raise RuntimeFailure(f"cannot start {cmd[0]}: {exc.strerror}.") from exc


@dataclass
class GenerationOptions:
    """The familiar llama.cpp sampling and context options, with llama.cpp's defaults."""

    n_predict: int = 128
    threads: int | None = None
    threads_batch: int | None = None  # prompt processing (-tb); None: llama.cpp's (= threads)
    ctx_size: int = 2048
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    seed: int = -1
    chat: bool = False
    system: str | None = None
    display_prompt: bool = True
    extra: list[str] = field(default_factory=list)


def check_model(path: Path) -> GGUFReader:
    """Open `path` with our GGUF reader so that a missing or corrupt file fails here, clearly."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(
            f"model file {path} does not exist.",
            hint="convert one with: bitnet convert <hf-folder-or-repo> -o model.gguf",
        )
    return GGUFReader(path)


def completion_command(model: Path, prompt: str, opts: GenerationOptions) -> list[str]:
    """The llama-completion command line for one prompt."""
    cmd = [
        str(find_binary("llama-completion")),
        "-m", str(model),
        "-p", prompt,
        "-n", str(opts.n_predict),
        "-c", str(opts.ctx_size),
        "--temp", str(opts.temperature),
        "--top-k", str(opts.top_k),
        "--top-p", str(opts.top_p),
        "--seed", str(opts.seed),
    ]  # fmt: skip
    if opts.threads:
        cmd += ["-t", str(opts.threads)]
    if opts.threads_batch:
        cmd += ["-tb", str(opts.threads_batch)]
    if opts.chat:
        # One user turn through the model's own chat template, then exit.
        cmd += ["-cnv", "-st", "--jinja"]
        if opts.system:
            cmd += ["-sys", opts.system]
    else:
        cmd += ["-no-cnv"]
    if not opts.display_prompt:
        cmd += ["--no-display-prompt"]
    return cmd + list(opts.extra)


def run_streaming(cmd: Sequence[str], what: str) -> None:
    """Run `cmd` with stdout passed straight through; raise RuntimeFailure if it fails.

    stderr is kept (its last lines) to explain a failure, and echoed live with BITNET_DEBUG=1.
    """
    debug = debug_enabled()
    tail: collections.deque[str] = collections.deque(maxlen=40)
    proc = spawn(cmd, stdout=sys.stdout)

    def drain() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            tail.append(line)
            if debug:
                sys.stderr.write(line + "\n")

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        raise
    reader.join()
    if code != 0:
        raise RuntimeFailure(f"{what} failed (exit {code}): {explain_log(tail) or 'no output'}")


def explain_log(lines: collections.abc.Iterable[str]) -> str:
    """The most telling line of a llama.cpp log: its last error, else its last line."""
    lines = [ln.strip() for ln in lines if ln.strip()]
    for ln in reversed(lines):
        low = ln.lower()
        if "error" in low or "failed" in low or "invalid" in low:
            return ln
    return lines[-1] if lines else ""


def generate(
    model: Path, prompt: str, opts: GenerationOptions, reader: GGUFReader | None = None
) -> None:
    """Generate text for `prompt`, streaming it to stdout as it is produced. `reader`: the
    model's reader when the caller has checked it already (the file is parsed once)."""
    reader = reader or check_model(model)
    cmd = completion_command(Path(model), prompt, opts)
    check_tl_served(Path(model), Path(cmd[0]), reader)
    run_streaming(cmd, "llama-completion")
