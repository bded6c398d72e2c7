"""`bitnet run`: generate text from a GGUF model with the patched llama.cpp."""

from __future__ import annotations

from pathlib import Path

import typer

from bitnet.tools import runtime

from ._errors import handle_errors


@handle_errors
def run(
    model: Path = typer.Option(..., "-m", "--model", help="GGUF model file."),
    prompt: str = typer.Option(..., "-p", "--prompt", help="Prompt text (the user turn with --chat)."),
    n_predict: int = typer.Option(128, "-n", "--n-predict", help="Tokens to generate."),
    threads: int | None = typer.Option(None, "-t", "--threads", help="CPU threads."),
    ctx_size: int = typer.Option(2048, "-c", "--ctx-size", help="Context size in tokens."),
    temp: float = typer.Option(0.8, "--temp", help="Temperature; 0 = greedy."),
    top_k: int = typer.Option(40, "--top-k", help="Top-k sampling."),
    top_p: float = typer.Option(0.95, "--top-p", help="Top-p sampling."),
    seed: int = typer.Option(-1, "--seed", help="Sampling seed (-1 = random)."),
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt in the model's chat template."),
    system: str | None = typer.Option(None, "--system", help="System message (with --chat)."),
    display_prompt: bool = typer.Option(
        True, "--display-prompt/--no-display-prompt", help="Echo the prompt before the output."
    ),
    extra: list[str] | None = typer.Argument(
        None, help="Anything after `--` goes to llama.cpp unchanged.", show_default=False
    ),
) -> None:
    """Generate text: tokens stream to stdout as they are produced; stops at end of turn."""
    opts = runtime.GenerationOptions(
        n_predict=n_predict,
        threads=threads,
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
    runtime.generate(model, prompt, opts)
