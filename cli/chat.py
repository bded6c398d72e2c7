"""`bitnet chat`: an interactive chat in the terminal, streamed, with the model's chat template."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bitnet.tools.errors import BitnetError, UsageError

from . import _output as out
from ._errors import handle_errors
from ._options import SeedOption, TempOption, TopKOption, TopPOption
from ._threads import RetuneOption, ThreadsOption, default_threads

if TYPE_CHECKING:
    from bitnet.tools.chat import ChatSession, Command

PROMPT = "> "


@handle_errors
def chat(
    model: Annotated[
        str,
        typer.Option(
            "-m", "--model", metavar="FILE|NAME", help="GGUF model file, or a store name."
        ),
    ],
    system: Annotated[
        str | None,
        typer.Option("--system", "-s", metavar="TEXT", help="System message for the conversation."),
    ] = None,
    n_predict: Annotated[
        int,
        typer.Option(
            "-n", "--n-predict", metavar="N", help="Tokens per reply at most (-1: no limit)."
        ),
    ] = -1,
    threads: ThreadsOption = None,
    retune_threads: RetuneOption = False,
    ctx_size: Annotated[
        int,
        typer.Option("-c", "--ctx-size", metavar="N", help="Context in tokens (history + reply)."),
    ] = 4096,
    temp: TempOption = 0.8,
    top_k: TopKOption = 40,
    top_p: TopPOption = 0.95,
    seed: SeedOption = -1,
) -> None:
    """Chat with a GGUF model in the terminal.

    Replies stream as they are generated; /help lists the commands, Ctrl-C stops a reply, Ctrl-D
    leaves. The oldest exchanges are dropped (with a notice) when the conversation outgrows the
    context."""
    import bitnet
    from bitnet.tools.chat import ChatSession
    from bitnet.tools.runtime import check_model
    from bitnet.tools.store import resolve_model

    path = resolve_model(model)
    reader = check_model(path)  # a bad file is one error before threads are measured
    threads_batch = None
    if threads is None:
        choice = default_threads(path, retune_threads, prompt=True)
        threads, threads_batch = choice.threads, choice.prompt
    with bitnet.load(
        path,
        n_threads=threads,
        n_threads_batch=threads_batch,
        n_ctx=ctx_size,
        seed=seed,
        reader=reader,
    ) as llm:
        llm.apply_chat_template([{"role": "user", "content": "hi"}])  # no template: fail now
        session = ChatSession(
            llm,
            system=system,
            max_reply=n_predict,
            sampling={"temperature": temp, "top_k": top_k, "top_p": top_p},
        )
        out.info(
            f"chatting with {Path(llm.path).name} ({llm.n_ctx} tokens of context). "
            "/help for commands, Ctrl-C stops a reply, Ctrl-D exits."
        )
        _loop(session)


def _loop(session: ChatSession) -> None:
    from bitnet.tools.chat import parse_command

    _line_editing()
    while True:
        try:
            line = input(PROMPT)
        except EOFError:  # Ctrl-D
            out.stream("\n")
            return
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh line, not the end
            out.stream("\n")
            out.info("(Ctrl-D or /exit leaves)")
            continue
        if not line.strip():
            continue
        try:
            cmd = parse_command(line)
            if cmd is None:
                text = line.strip()
                _reply(session, text[1:] if text.startswith("//") else text)
            elif cmd.name == "exit":
                return
            else:
                _command(session, cmd)
        except BitnetError as exc:  # a bad command or message: say so, keep the session
            out.error(str(exc), exc.hint)


def _command(session: ChatSession, cmd: Command) -> None:
    from bitnet.tools.chat import help_lines

    if cmd.name == "help":
        for h in help_lines():
            out.info(h)
    elif cmd.name == "reset":
        session.reset()
        out.info("(conversation cleared)")
    elif cmd.name == "system":
        session.set_system(cmd.arg)
        out.info(f"({'system message set' if cmd.arg else 'no system message'}; cleared)")
    elif cmd.name == "save":
        name = cmd.arg.removesuffix("--force").strip()
        if not name:
            raise UsageError("/save needs a file name.", hint="/save chat.json")
        path = session.save(Path(name).expanduser(), force=cmd.arg.endswith("--force"))
        out.info(f"(saved {len(session.turns)} turns to {path})")


def _reply(session: ChatSession, text: str) -> None:
    """Stream the reply to `text`; Ctrl-C stops it (what was shown is kept in the history)."""
    reply = session.ask(text)
    if reply.dropped:
        out.info(
            f"(context full: dropped the oldest {reply.dropped} exchange"
            f"{'s' if reply.dropped > 1 else ''}; {len(session.turns) // 2} kept)"
        )
    stopped = False

    def on_sigint(signum: int, frame: object) -> None:
        nonlocal stopped
        stopped = True

    shown: list[str] = []
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        for piece in reply.stream:
            out.stream(piece)
            shown.append(piece)
            if stopped:
                break
    finally:
        reply.stream.close()
        signal.signal(signal.SIGINT, previous)
    out.stream("\n")
    if stopped:
        out.info("(stopped)")
    elif reply.stream.stats.finish_reason == "length":
        out.info("(reply cut: the token limit or the end of the context)")
    session.commit(text, "".join(shown))


def _line_editing() -> None:
    """Arrow keys and history at the prompt, where Python has readline (not on Windows)."""
    import sys

    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401  (input() uses it once imported)
        except ImportError:
            pass
