"""Shared by the tests that drive the llama.cpp build (imported by name: pytest puts tests/ on
sys.path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitnet.tools import build as B
from bitnet.tools.errors import BuildError


def binary(name: str) -> Path:
    """Path of a built llama.cpp tool; skips the calling test, with the reason, when absent."""
    try:
        return B.find_binary(name)
    except BuildError:
        pytest.skip(f"no llama.cpp build with {name}: run python setup_env.py")


def api_available() -> None:
    """Skip the calling test, with the reason, unless the Python API can load (our build's
    libllama.so and the bindings, both installed by setup_env.py)."""
    from bitnet.tools import bindings

    try:
        bindings.library_dir()
    except BuildError:
        pytest.skip("no llama.cpp build with libllama.so: run python setup_env.py")
    if bindings.installed_version() is None:
        pytest.skip("the Python bindings (llama_cpp) are not installed: run python setup_env.py")
