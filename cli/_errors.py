"""One table maps each expected error to its exit code and default hint; one function applies it."""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from bitnet.tools import errors as E

from . import _output as out

#: error class -> (exit code, default hint when the error carries none)
ERROR_TABLE: dict[type[E.BitnetError], tuple[int, str | None]] = {
    E.UsageError: (2, "see the command's --help"),
    E.InputNotFoundError: (3, "check the path or repository id"),
    E.CorruptFileError: (4, "re-download or re-create the file"),
    E.UnsupportedArchitectureError: (5, None),
    E.ShapeError: (6, None),
    E.OutputExistsError: (7, "pass --force to overwrite it"),
    E.NetworkError: (8, "check the network, or pass a local folder instead of a repo id"),
    E.ToolchainError: (9, None),
    E.BuildError: (10, "run: python setup_env.py"),
    E.RuntimeFailure: (11, "re-run with BITNET_DEBUG=1 to see llama.cpp's output"),
    E.BitnetError: (1, None),
}

F = TypeVar("F", bound=Callable[..., Any])


def exit_code_for(exc: E.BitnetError) -> tuple[int, str | None]:
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]  # type: ignore[index]
    return 1, None


def handle_errors(fn: F) -> F:
    """Decorator for a command: turn a BitnetError into one error line and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except E.BitnetError as exc:
            code, default_hint = exit_code_for(exc)
            if E.debug_enabled():
                traceback.print_exc()
            out.error(str(exc), exc.hint or default_hint)
            raise typer.Exit(code) from None
        except KeyboardInterrupt:
            out.error("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
