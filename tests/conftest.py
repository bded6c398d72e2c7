"""Shared fixtures: tiny BitNet b1.58 checkpoints made from a fixed seed (never downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitnet.tools.dummy import make_dummy

#: The seed every shared tiny checkpoint is made from.
TINY_SEED = 0


@pytest.fixture(scope="session")
def tiny_packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The "tiny" preset in the packed layout of bitnet-b1.58-2B-4T (uint8 + weight_scale)."""
    return make_dummy(tmp_path_factory.mktemp("dummy") / "tiny-packed", "tiny", "packed", TINY_SEED)


@pytest.fixture(scope="session")
def tiny_bf16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model as `tiny_packed`, as bf16 latent masters (bitnet-b1.58-2B-4T-bf16 layout)."""
    return make_dummy(tmp_path_factory.mktemp("dummy") / "tiny-bf16", "tiny", "bf16", TINY_SEED)


@pytest.fixture(scope="session")
def tiny_checkpoints(tiny_packed: Path, tiny_bf16: Path) -> dict[str, Path]:
    """Both layouts of the tiny model, keyed by layout name."""
    return {"packed": tiny_packed, "bf16": tiny_bf16}
