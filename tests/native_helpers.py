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
