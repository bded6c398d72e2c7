"""The default thread count of `bitnet run/chat/serve/bench` (tools/threads.py), said aloud."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bitnet.tools.threads import choose_threads

from . import _output as out

ThreadsOption = Annotated[
    int | None,
    typer.Option(
        "-t",
        "--threads",
        metavar="N",
        help="CPU threads (default: the count measured fastest here, cached; prompts use every "
        "physical core).",
    ),
]
RetuneOption = Annotated[
    bool, typer.Option("--retune-threads", help="Measure the fastest thread count again.")
]


def default_threads(model: Path, retune: bool, prompt: int | None = None) -> int:
    """The count measured fastest here for `model`'s size (cached), printed to stderr (with
    `prompt`, the prompt-processing count too)."""
    choice = choose_threads(model, remeasure=retune)
    out.info(f"threads: {choice.describe(prompt)}")
    return choice.threads
