"""`bitnet serve`: OpenAI- and Ollama-compatible HTTP server over the patched llama-server."""

from __future__ import annotations

from typing import Annotated

import typer

from bitnet.tools.serve.app import serve as run_server
from bitnet.tools.serve.backends import ServerOptions

from . import _output as out
from ._errors import handle_errors
from ._threads import RetuneOption, ThreadsOption


def _log(kind: str, message: str) -> None:
    (out.warn if kind == "warn" else out.info)(message)


@handle_errors
def serve(
    model: Annotated[
        list[str],
        typer.Option(
            "-m",
            "--model",
            metavar="FILE|NAME",
            help="GGUF model file or store name (repeat for several models).",
        ),
    ],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (Ollama's by default).")] = 11434,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", envvar="BITNET_API_KEY", help="Key every route but /health requires."
        ),
    ] = None,
    threads: ThreadsOption = None,
    retune_threads: RetuneOption = False,
    ctx_size: Annotated[
        int, typer.Option("-c", "--ctx-size", help="Context in tokens per model (all slots).")
    ] = 4096,
    parallel: Annotated[
        int, typer.Option("--parallel", help="Requests one model serves at once (slots).")
    ] = 1,
    max_loaded: Annotated[
        int,
        typer.Option("--max-loaded", help="Models loaded at once (least recently used unloads)."),
    ] = 1,
    extra: Annotated[
        list[str] | None,
        typer.Argument(help="Anything after `--` goes to llama-server.", show_default=False),
    ] = None,
) -> None:
    """Serve models over HTTP, with OpenAI and Ollama routes.

    OpenAI routes under /v1, Ollama routes under /api and a chat page at /. Loopback only unless
    --host says otherwise; stops on Ctrl-C or SIGTERM.
    """
    opts = ServerOptions(
        threads=threads,
        retune_threads=retune_threads,
        ctx_size=ctx_size,
        parallel=parallel,
        extra=tuple(extra or ()),
    )
    run_server(
        model, host=host, port=port, api_key=api_key, opts=opts, max_loaded=max_loaded, log=_log
    )
