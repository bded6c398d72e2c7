"""The default thread count of `bitnet run` and `bitnet bench` (tools/threads.py), said aloud."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bitnet.tools.threads import choose_threads

from . import _output as out

RetuneOption = Annotated[
    bool, typer.Option("--retune-threads", help="Measure the fastest thread count again.")
]


def default_threads(model: Path, retune: bool) -> int:
    """The count measured fastest here for `model`'s size (cached), printed to stderr."""
    choice = choose_threads(model, remeasure=retune)
    out.info(f"threads: {choice.describe()}")
    return choice.threads
