"""Options several commands share, declared once (sampling as llama.cpp names it)."""

from __future__ import annotations

from typing import Annotated

import typer

TempOption = Annotated[float, typer.Option("--temp", metavar="T", help="Temperature; 0 = greedy.")]
TopKOption = Annotated[int, typer.Option("--top-k", metavar="K", help="Top-k sampling.")]
TopPOption = Annotated[float, typer.Option("--top-p", metavar="P", help="Top-p sampling.")]
SeedOption = Annotated[
    int, typer.Option("--seed", metavar="N", help="Sampling seed (-1 = random).")
]
