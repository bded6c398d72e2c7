"""The project's exception hierarchy.

Library code raises these; `cli/_errors.py` maps each class to a one-line message, a hint naming
the next command to run and an exit code. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os


def debug_enabled() -> bool:
    """True when BITNET_DEBUG asks for tracebacks and llama.cpp's full output."""
    return os.environ.get("BITNET_DEBUG", "") not in ("", "0")


class BitnetError(Exception):
    """Base of every expected failure. `hint` says what to do next (one line, optional)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class UsageError(BitnetError):
    """The command line asks for something contradictory or impossible."""


class InputNotFoundError(BitnetError):
    """A file, folder or repository that the command needs does not exist."""


class CorruptFileError(BitnetError):
    """A file exists but is truncated, malformed or not what its name says."""


class UnsupportedArchitectureError(BitnetError):
    """A checkpoint's architecture has no converter."""


class ShapeError(BitnetError):
    """A tensor's shape cannot be held by the requested type."""


class OutputExistsError(BitnetError):
    """Refusing to overwrite an existing output without --force."""


class NetworkError(BitnetError):
    """The hub (or another remote) cannot be reached."""


class BuildError(BitnetError):
    """The native build is missing, stale or failed."""


class ToolchainError(BuildError):
    """A compiler, cmake or another build tool is missing."""


class RuntimeFailure(BitnetError):
    """A llama.cpp binary we drive exited with an error."""
