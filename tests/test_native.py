"""The patched llama.cpp build: type ids, and a tiny I2_S model that loads, runs and agrees.

Needs the binaries of `python setup_env.py`; skipped (with that reason) when they are absent.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from bitnet.tools import build as B
from bitnet.tools.constants import GGML_TYPE_COUNT, QK_I2_S, GGMLType, LlamaFileType
from bitnet.tools.errors import BuildError

pytestmark = pytest.mark.native

TIMEOUT = 300


def _binary(name: str) -> Path:
    try:
        return B.find_binary(name)
    except BuildError:
        pytest.skip(f"no llama.cpp build with {name}: run python setup_env.py")


@pytest.fixture(scope="module")
def source_tree() -> Path:
    """The llama.cpp tree the found binaries were built from (read from the cmake cache)."""
    build_dir = _binary("llama-bitnet-logits").parent.parent
    cache = build_dir / "CMakeCache.txt"
    if not cache.is_file():
        pytest.skip(f"{build_dir} has no CMakeCache.txt, so its source tree is unknown")
    m = re.search(r"^CMAKE_HOME_DIRECTORY:INTERNAL=(.+)$", cache.read_text(), re.M)
    assert m, "CMakeCache.txt names no source directory"
    return Path(m.group(1))


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=TIMEOUT, **kw
    )


# --- the C side agrees with tools/constants.py ------------------------------------------------


def test_ggml_type_ids_match_constants(source_tree):
    header = (source_tree / "ggml" / "include" / "ggml.h").read_text()
    ids = {m[0]: int(m[1]) for m in re.findall(r"^\s*GGML_TYPE_(\w+)\s*=\s*(\d+),", header, re.M)}
    for t in GGMLType:
        assert ids.get(t.name) == t.value, f"GGML_TYPE_{t.name}"
    assert ids["COUNT"] == GGML_TYPE_COUNT


def _traits(ggml_c: str, name: str) -> tuple[int, int]:
    m = re.search(
        rf"\[GGML_TYPE_{name}\] = \{{.*?\.blck_size\s*=\s*(\d+),.*?\.type_size\s*=\s*(\d+),",
        ggml_c,
        re.S,
    )
    assert m, f"no type_traits entry for {name}"
    return int(m[1]), int(m[2])


def test_block_geometry_matches(source_tree):
    ggml_c = (source_tree / "ggml" / "src" / "ggml.c").read_text()
    assert _traits(ggml_c, "I2_S") == (QK_I2_S, QK_I2_S // 4)
    assert _traits(ggml_c, "I8_S") == (QK_I2_S, QK_I2_S + 8)  # int8[128], f32 d, i32 sum


def test_llama_file_type_matches(source_tree):
    header = (source_tree / "include" / "llama.h").read_text()
    m = re.search(r"LLAMA_FTYPE_MOSTLY_I2_S\s*=\s*(\d+)", header)
    assert m and int(m[1]) == LlamaFileType.MOSTLY_I2_S


# --- a tiny I2_S model ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    _binary("llama-bitnet-logits")
    try:
        from bitnet.tools.convert import convert_checkpoint
        from bitnet.tools.dummy import make_dummy
    except ImportError as exc:  # pragma: no cover - written by other parts
        pytest.skip(f"dummy/convert not available: {exc}")
    tmp = tmp_path_factory.mktemp("tiny")
    ckpt = make_dummy(tmp / "ckpt", preset="tiny", layout="packed", seed=0)
    out = tmp / "tiny-i2_s.gguf"
    convert_checkpoint(ckpt, out, outtype="i2_s")
    return out


def _logits(gguf: Path, ids: list[int], tmp: Path, *extra: str) -> tuple[dict, np.ndarray]:
    out = tmp / f"logits{len(list(tmp.iterdir()))}.f32"
    res = _run(
        [_binary("llama-bitnet-logits"), "-m", gguf, "--ids", ",".join(map(str, ids)),
         "--all", "-t", "2", "-o", out, *extra]
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    meta = json.loads(res.stdout)
    data = np.fromfile(out, dtype="<f4").reshape(meta["n_rows"], meta["n_vocab"])
    return meta, data


IDS = [1, 17, 42, 7, 300, 5, 99, 256, 3, 64, 12, 480]


def test_tiny_model_loads_and_generates_greedily(tiny_gguf):
    cmd = [
        _binary("llama-completion"), "-m", tiny_gguf, "-p", "Hello world", "-n", "12",
        "--temp", "0", "-t", "2", "-c", "128", "-no-cnv", "--no-warmup", "--seed", "1",
    ]  # fmt: skip
    first = _run(cmd)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "bitnet-b1.58" in first.stderr  # the arch the loader saw
    assert "i2_s" in first.stderr.lower()
    second = _run(cmd)
    assert second.returncode == 0
    assert second.stdout == first.stdout and first.stdout.strip()


def test_logits_are_finite_and_batching_does_not_change_them(tiny_gguf, tmp_path):
    meta, full = _logits(tiny_gguf, IDS, tmp_path)
    assert meta["tokens"] == IDS and full.shape == (len(IDS), meta["n_vocab"])
    assert np.isfinite(full).all() and full.std() > 0
    # one token per ubatch takes the single-token path of the I2_S mul_mat
    _, single = _logits(tiny_gguf, IDS, tmp_path, "--ubatch", "1")
    np.testing.assert_allclose(single, full, rtol=1e-4, atol=1e-4)
    assert (single.argmax(1) == full.argmax(1)).all()


def test_logits_match_the_numpy_reference(tiny_gguf, tmp_path):
    try:
        from bitnet.tools.reference import ReferenceModel
    except ImportError as exc:  # pragma: no cover
        pytest.skip(f"reference not available: {exc}")
    _, ours = _logits(tiny_gguf, IDS, tmp_path)
    ref = np.asarray(ReferenceModel.from_gguf(tiny_gguf).forward(IDS), dtype=np.float32)
    assert ref.shape == ours.shape
    scale = float(np.abs(ref).max())
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-3 * scale)
    assert (ours.argmax(1) == ref.argmax(1)).mean() >= 0.9


def test_tokenizer_round_trip(tiny_gguf):
    res = _run([_binary("llama-bitnet-logits"), "-m", tiny_gguf, "-p", "Hello", "--tokenize-only"])
    assert res.returncode == 0, res.stderr
    meta = json.loads(res.stdout)
    assert meta["tokens"] and all(0 <= t < meta["n_vocab"] for t in meta["tokens"])


def test_llama_quantize_refuses_to_write_i2_s(tiny_gguf, tmp_path):
    out = tmp_path / "q.gguf"
    res = _run([_binary("llama-quantize"), "--tensor-type", "attn_q=i2_s", tiny_gguf, out, "q8_0"])
    assert res.returncode != 0
    assert "cannot write i2_s" in res.stdout + res.stderr
