"""The one output sink of the CLI.

Data (what a user may pipe somewhere) goes to stdout; progress, logs and errors go to stderr.
Rich formatting and progress bars appear only when the stream is a terminal, so piped output and
tests see plain, stable text.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from rich.console import Console

_width = int(os.environ["BITNET_COLUMNS"]) if os.environ.get("BITNET_COLUMNS") else None
_consoles: dict[str, Console] = {}

#: progress(done, total, description) — what library code receives instead of drawing itself.
ProgressFn = Callable[[int, int, str], None]


def _console(name: Literal["stdout", "stderr"]) -> Console:
    """The Rich console on sys.stdout or sys.stderr, made on first use: plain output (data,
    JSON, `--version`) never imports Rich, which costs a CLI start-up tens of milliseconds."""
    from rich.console import Console

    console = _consoles.get(name)
    if console is None:
        console = Console(highlight=False, soft_wrap=True, width=_width)
        _consoles[name] = console
    # Typer's test runner swaps sys.stdout/sys.stderr per invocation; follow it.
    console.file = getattr(sys, name)
    return console


def data(text: str) -> None:
    """Write a line of data to stdout, verbatim."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def stream(text: str) -> None:
    """Write generated text to stdout without a newline, flushed at once."""
    sys.stdout.write(text)
    sys.stdout.flush()


def emit_json(obj: Any) -> None:
    """Write one JSON document to stdout."""
    data(json.dumps(obj, indent=2, sort_keys=False, default=str))


def info(message: str) -> None:
    """A progress or status line, to stderr."""
    stderr = _console("stderr")
    if stderr.is_terminal:
        stderr.print(message)
    else:
        sys.stderr.write(message + "\n")


def warn(message: str) -> None:
    stderr = _console("stderr")
    if stderr.is_terminal:
        stderr.print(f"[yellow]warning:[/yellow] {message}")
    else:
        sys.stderr.write(f"warning: {message}\n")


def error(message: str, hint: str | None = None) -> None:
    """The one error line (and an optional hint line), to stderr."""
    stderr = _console("stderr")
    if stderr.is_terminal:
        stderr.print(f"[bold red]error:[/bold red] {message}")
        if hint:
            stderr.print(f"[dim]try:[/dim] {hint}")
    else:
        sys.stderr.write(f"error: {message}\n")
        if hint:
            sys.stderr.write(f"try: {hint}\n")


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    """A table of data to stdout: Rich on a terminal, tab-separated text otherwise."""
    stdout = _console("stdout")
    if stdout.is_terminal:
        from rich.table import Table

        t = Table(title=title)
        for c in columns:
            t.add_column(c, overflow="fold")
        for r in rows:
            t.add_row(*(str(v) for v in r))
        stdout.print(t)
        return
    if title:
        sys.stdout.write(f"# {title}\n")
    sys.stdout.write("\t".join(columns) + "\n")
    for r in rows:
        sys.stdout.write("\t".join(str(v) for v in r) + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def progress(description: str) -> Iterator[ProgressFn]:
    """Yield a progress callback; draws a bar on a terminal, stays silent otherwise."""
    stderr = _console("stderr")
    if not stderr.is_terminal:
        yield lambda done, total, desc="": None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
    )
    task = bar.add_task(description, total=None)

    def update(done: int, total: int, desc: str = "") -> None:
        bar.update(task, completed=done, total=total or None, description=desc or description)

    with bar:
        yield update


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"
