"""`bitnet run`: generate text from a GGUF model with the patched llama.cpp."""

from __future__ import annotations

from typing import Annotated

import typer

from bitnet.tools import runtime
from bitnet.tools.store import resolve_model
from bitnet.tools.threads import gives_threads

from ._errors import handle_errors
from ._options import SeedOption, TempOption, TopKOption, TopPOption
from ._threads import RetuneOption, ThreadsOption, default_threads


@handle_errors
def run(
    model: Annotated[
        str,
        typer.Option(
            "-m", "--model", metavar="FILE|NAME", help="GGUF model file, or a store name."
        ),
    ],
    prompt: Annotated[
        str,
        typer.Option(
            "-p", "--prompt", metavar="TEXT", help="Prompt text (the user turn with --chat)."
        ),
    ],
    n_predict: Annotated[
        int, typer.Option("-n", "--n-predict", metavar="N", help="Tokens to generate.")
    ] = 128,
    threads: ThreadsOption = None,
    retune_threads: RetuneOption = False,
    ctx_size: Annotated[
        int, typer.Option("-c", "--ctx-size", metavar="N", help="Context in tokens.")
    ] = 2048,
    temp: TempOption = 0.8,
    top_k: TopKOption = 40,
    top_p: TopPOption = 0.95,
    seed: SeedOption = -1,
    chat: Annotated[
        bool, typer.Option("--chat", help="Wrap the prompt in the model's chat template.")
    ] = False,
    system: Annotated[
        str | None, typer.Option("--system", metavar="TEXT", help="System message (with --chat).")
    ] = None,
    display_prompt: Annotated[
        bool,
        typer.Option(
            "--display-prompt/--no-display-prompt", help="Echo the prompt before the output."
        ),
    ] = True,
    extra: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="ARGS",
            help="Anything after `--` goes to llama.cpp unchanged.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Generate text from a prompt with a GGUF model.

    Tokens stream to stdout as they are produced; generation stops at the end of the turn.
    """
    path = resolve_model(model)
    reader = runtime.check_model(path)  # a bad file is one error before threads are measured
    threads_batch = None
    if threads is None and not gives_threads(extra or ()):
        choice = default_threads(path, retune_threads, prompt=True)
        threads, threads_batch = choice.threads, choice.prompt
    opts = runtime.GenerationOptions(
        n_predict=n_predict,
        threads=threads,
        threads_batch=threads_batch,
        ctx_size=ctx_size,
        temperature=temp,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        chat=chat,
        system=system,
        display_prompt=display_prompt,
        extra=list(extra or []),
    )
    runtime.generate(path, prompt, opts, reader)
