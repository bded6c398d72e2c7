"""The default thread counts of `bitnet run/chat/serve/bench` (tools/threads.py), said aloud."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bitnet.tools.threads import ThreadChoice, choose_threads

from . import _output as out

ThreadsOption = Annotated[
    int | None,
    typer.Option(
        "-t",
        "--threads",
        metavar="N",
        help="CPU threads (default: the counts measured fastest here for decode and prompts, "
        "cached).",
    ),
]
RetuneOption = Annotated[
    bool, typer.Option("--retune-threads", help="Measure the fastest thread count again.")
]


def default_threads(model: Path, retune: bool, prompt: bool = False) -> ThreadChoice:
    """The counts measured fastest here for `model`'s size (cached), said on stderr (with
    `prompt`, the prompt-processing count too)."""
    choice = choose_threads(model, remeasure=retune)
    out.info(f"threads: {choice.describe(prompt)}")
    return choice
