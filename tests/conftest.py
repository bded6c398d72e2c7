"""Shared fixtures: tiny BitNet b1.58 checkpoints made from a fixed seed (never downloaded)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: The checkout. Its top-level folders are the `bitnet.*` packages (mapped by pyproject.toml);
#: under their bare names (`kernels`, `tools`, `cli`) they would shadow PyPI packages of those
#: names (transformers imports `kernels`). `python -m pytest` puts the working directory first on
#: sys.path, so it is taken off here, before any test imports a third-party package.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or os.getcwd()).resolve() != ROOT]

import pytest  # noqa: E402

from bitnet.tools.dummy import make_dummy  # noqa: E402

# Tests run llama.cpp binaries directly: an abort must end the process, never fork a debugger to
# print a backtrace (which can hang when several threads abort at once).
os.environ.setdefault("GGML_NO_BACKTRACE", "1")

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


# --- the TL kernel library (tests/test_kernels_tl.py, tests/test_tl_tiles.py) ------------------


@pytest.fixture(scope="session")
def tl():
    """The TL1/TL2 kernels of the ctypes test library (built from kernels/ once per source hash)."""
    from bitnet.tools import kernels_lib

    return kernels_lib.load().tl


def _tl_path_names() -> tuple[str, ...]:
    from bitnet.tools import kernels_lib

    return kernels_lib.TL_KERNEL_NAMES


@pytest.fixture(params=_tl_path_names())
def tl_path(request: pytest.FixtureRequest, tl):
    """Runs the test once per TL lookup path, forced; skipped where this CPU/build lacks it."""
    if request.param not in tl.available():
        pytest.skip(f"TL path {request.param} not available on this CPU/build")
    with tl.use(request.param):
        yield request.param


@pytest.fixture
def fake_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """The thread-count measurement injected (tools/threads.py): 2 physical cores, 1 thread
    fastest for decode and 2 for prompts, the cache under tmp_path; returns the (model file
    name, threads) measured."""
    from bitnet.tools import threads

    calls: list[tuple[str, int]] = []

    def measure(path: Path, t: int) -> tuple[float, float]:
        calls.append((path.name, t))
        return 10.0 - t, 50.0 - abs(t - 2)

    monkeypatch.setattr(threads, "measure_llama_bench", measure)
    monkeypatch.setattr(threads, "physical_cores", lambda: 2)
    monkeypatch.setattr(threads, "cache_file", lambda: tmp_path / threads.CACHE_NAME)
    return calls


@pytest.fixture
def small_gguf(tmp_path: Path) -> Path:
    """A GGUF our reader accepts (no tensors): for commands stopped before llama.cpp runs."""
    from bitnet.tools.gguf import GGUFWriter

    path = tmp_path / "small.gguf"
    w = GGUFWriter(path)
    w.add_kv("general.architecture", "bitnet")
    w.write(lambda name: b"")
    return path
