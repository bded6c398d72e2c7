"""Property tests of our readers on bad bytes (Hypothesis, fixed seed, bounded example counts).

Any byte string given to `tools/gguf.GGUFReader`, the safetensors reader (`tools/safetensors`) or
the converter's config reading either parses or raises one of our own errors (`BitnetError`):
never IndexError, struct.error, UnicodeDecodeError, RecursionError, MemoryError, ..., and never a
large allocation driven by a length field that lies (traced with tracemalloc). Through the CLI
the same bytes give one `error:` line, a non-zero exit and no traceback. The inputs are random
bytes, valid files with bytes overwritten (lying lengths and counts among them) or cut short,
and structurally valid containers with random JSON. docs/bad-input.md lists the classes.
"""

from __future__ import annotations

import json
import shutil
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from bitnet.cli.app import app
from bitnet.tools.constants import GGMLType, GGUFValueType
from bitnet.tools.errors import BitnetError
from bitnet.tools.gguf import GGUFReader, GGUFWriter
from bitnet.tools.safetensors import Checkpoint, SafetensorsFile, write_safetensors

#: Fixed seed (derandomize) and bounded examples: the same inputs on every run, a few seconds.
BOUNDED = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CLI_BOUNDED = settings(BOUNDED, max_examples=30)
#: No input here may make a reader allocate more than this (the files are a few KB).
MAX_ALLOC = 16 << 20

#: Values that length and count fields lie with.
LIES = (2**64 - 1, 2**63 - 1, 2**63, 2**32 - 1, 2**32, 2**31, 1 << 40, 0xFFFF_FFF0)

runner = CliRunner()


def _bounded_call(fn: Callable[[], object]) -> None:
    """Run `fn`; it may raise only a BitnetError, and may not allocate more than MAX_ALLOC."""
    tracemalloc.start()
    try:
        fn()
    except BitnetError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < MAX_ALLOC, f"peak allocation {peak} bytes"


def _mutations(size: int) -> st.SearchStrategy:
    """Edits of a `size`-byte file: overwritten bytes, a lying u32/u64 at some offset, a cut."""
    byte = st.tuples(st.just("byte"), st.integers(0, size - 1), st.integers(0, 255))
    lie = st.tuples(
        st.sampled_from(["u64", "u32"]), st.integers(0, size - 1), st.sampled_from(LIES)
    )
    cut = st.tuples(st.just("cut"), st.integers(0, size), st.just(0))
    return st.lists(st.one_of(byte, lie, cut), min_size=1, max_size=6)


def _apply(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, value in edits:
        if kind == "cut":
            del buf[pos:]
        elif kind == "byte" and pos < len(buf):
            buf[pos] = value
        elif kind in ("u64", "u32"):
            raw = (
                struct.pack("<Q", value) if kind == "u64" else struct.pack("<I", value & 0xFFFFFFFF)
            )
            buf[pos : pos + len(raw)] = raw[: max(0, len(buf) - pos)]
    return bytes(buf)


# --- GGUF ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A small valid GGUF: strings, arrays, a bool; I2_S, TL2 and F32 tensors (about 13 KB)."""
    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    w = GGUFWriter(path)
    w.add_kv("general.architecture", "bitnet-b1.58", GGUFValueType.STRING)
    w.add_kv("bitnet-b1.58.block_count", 1, GGUFValueType.UINT32)
    w.add_kv("tokenizer.ggml.tokens", ["a", "bc", "déf"], GGUFValueType.STRING)
    w.add_kv("tokenizer.ggml.scores", [0.0, 1.0, 2.0], GGUFValueType.FLOAT32)
    w.add_kv("tokenizer.ggml.add_bos_token", True, GGUFValueType.BOOL)
    from bitnet.tools import quants

    rng = np.random.default_rng(0)
    blobs = {
        "blk.0.attn_q.weight": (
            (128, 128), GGMLType.I2_S,
            quants.get("i2_s").pack(rng.integers(-1, 2, (128, 128)).astype(np.int8), 0.5),
        ),
        "blk.0.ffn_up.weight": (
            (128, 256), GGMLType.TL2,
            quants.get("tl2").pack(rng.integers(-1, 2, (128, 256)).astype(np.int8), 0.5),
        ),
        "output_norm.weight": ((16,), GGMLType.F32, np.ones(16, np.float32)),
    }  # fmt: skip
    for name, (shape, t, blob) in blobs.items():
        w.add_tensor(name, shape, t, np.asarray(blob).nbytes)
    w.write(lambda name: blobs[name][2])
    return path.read_bytes()


def _read_gguf(path: Path) -> None:
    with GGUFReader(path) as r:
        for name in r.tensors:
            np.asarray(r.data(name)).sum()  # every tensor's bytes are readable


def test_gguf_header_lies_are_ours(tmp_path: Path, small_gguf: bytes) -> None:
    """Every u64 of the header set to each lie (n_tensors, n_kv, string and array lengths, dims,
    offsets): an error of ours, never a huge allocation."""
    header_end = small_gguf.index(b"output_norm.weight") + 64
    for pos in range(8, header_end - 8, 8):
        for lie in (2**64 - 1, 2**63, 1 << 40):
            path = tmp_path / "x.gguf"
            path.write_bytes(_apply(small_gguf, [("u64", pos, lie)]))
            _bounded_call(lambda p=path: _read_gguf(p))


# --- safetensors --------------------------------------------------------------------------------

_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8)
)
_json = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def small_safetensors(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("st") / "model.safetensors"
    rng = np.random.default_rng(1)
    tensors = [
        ("a.weight", rng.standard_normal((8, 4)).astype(np.float32), "F32"),
        ("b.weight", rng.integers(0, 255, (4, 4)).astype(np.uint8), "U8"),
    ]
    write_safetensors(path, tensors, metadata={"format": "pt"})
    return path.read_bytes()


def _read_safetensors(path: Path) -> None:
    f = SafetensorsFile(path)
    try:
        for name in f.names():
            np.asarray(f.raw(name)).sum()
    finally:
        f.close()


#: format -> (file name, reader) for the properties both containers share
READERS = {"gguf": ("x.gguf", _read_gguf), "safetensors": ("model.safetensors", _read_safetensors)}


@pytest.mark.parametrize("fmt", READERS)
@BOUNDED
@given(data=st.binary(max_size=512))
def test_random_bytes(tmp_path: Path, fmt: str, data: bytes) -> None:
    name, read = READERS[fmt]
    (tmp_path / name).write_bytes(data)
    _bounded_call(lambda: read(tmp_path / name))


@pytest.mark.parametrize("fmt", READERS)
@BOUNDED
@given(data=st.data())
def test_damaged(tmp_path: Path, request: pytest.FixtureRequest, fmt: str, data: st.DataObject):
    """A small valid file with bytes overwritten, u32/u64 fields set to lies, or cut short."""
    name, read = READERS[fmt]
    valid = request.getfixturevalue(f"small_{fmt}")
    (tmp_path / name).write_bytes(_apply(valid, data.draw(_mutations(len(valid)))))
    _bounded_call(lambda: read(tmp_path / name))


@BOUNDED
@given(header=_json, tail=st.binary(max_size=64))
def test_safetensors_random_json_header(tmp_path: Path, header: object, tail: bytes) -> None:
    blob = json.dumps(header).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + tail)
    _bounded_call(lambda: _read_safetensors(path))


@pytest.mark.parametrize(
    "header",
    [b"[" * 100_000, b'{"a": ' + b"1" * 5000 + b"}", b'{"a": {"dtype": "F32", "shape": [1e999]}}'],
    ids=["deep-nesting", "5000-digit-int", "float-overflow"],
)
def test_safetensors_json_parser_limits_are_ours(tmp_path: Path, header: bytes) -> None:
    """Inputs that make Python's json raise RecursionError / a plain ValueError (int digits)."""
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(BitnetError):
        _read_safetensors(path)


# --- the converter's config.json ----------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt_folder(tmp_path_factory: pytest.TempPathFactory, tiny_packed: Path) -> Path:
    return tiny_packed


def _plan(folder: Path) -> None:
    from bitnet.tools.convert import plan_conversion

    with Checkpoint(folder):
        pass
    plan_conversion(folder, folder / "out.gguf", outtype="i2_s")


def _copy(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


@BOUNDED
@given(edits=st.dictionaries(st.sampled_from(
    ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
     "intermediate_size", "vocab_size", "max_position_embeddings", "rope_theta", "rms_norm_eps",
     "head_dim", "architectures", "hidden_act", "quantization_config", "rope_scaling",
     "tie_word_embeddings", "bos_token_id", "eos_token_id"]), _json | st.sampled_from(LIES),
    min_size=1, max_size=4))  # fmt: skip
def test_config_values(tmp_path: Path, ckpt_folder: Path, edits: dict) -> None:
    folder = _copy(ckpt_folder, tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config.update(edits)
    (folder / "config.json").write_text(json.dumps(config))
    _bounded_call(lambda: _plan(folder))


@BOUNDED
@given(data=st.binary(max_size=256))
def test_config_random_bytes(tmp_path: Path, ckpt_folder: Path, data: bytes) -> None:
    folder = _copy(ckpt_folder, tmp_path / "ckpt")
    (folder / "config.json").write_bytes(data)
    _bounded_call(lambda: _plan(folder))


def test_config_json_parser_limits_are_ours(tmp_path: Path, ckpt_folder: Path) -> None:
    for text in ("[" * 100_000, '{"vocab_size": ' + "9" * 5000 + "}"):
        folder = _copy(ckpt_folder, tmp_path / "ckpt")
        (folder / "config.json").write_text(text)
        with pytest.raises(BitnetError):
            _plan(folder)


# --- through the CLI ----------------------------------------------------------------------------


def _assert_one_error_line(args: list[str]) -> None:
    result = runner.invoke(app, args)
    if result.exit_code == 0:
        return  # the damage did not matter (e.g. a changed tensor byte)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    text = result.output
    assert "Traceback" not in text
    assert sum(line.startswith("error:") for line in text.splitlines()) == 1, text


@CLI_BOUNDED
@given(data=st.data())
def test_cli_inspect_damaged_gguf(tmp_path: Path, small_gguf: bytes, data: st.DataObject) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(_apply(small_gguf, data.draw(_mutations(len(small_gguf)))))
    _assert_one_error_line(["inspect", str(path)])
    _assert_one_error_line(["inspect", str(path), "--json"])


@CLI_BOUNDED
@given(data=st.data())
def test_cli_convert_damaged_checkpoint(
    tmp_path: Path, ckpt_folder: Path, small_safetensors: bytes, data: st.DataObject
) -> None:
    folder = _copy(ckpt_folder, tmp_path / "ckpt")
    target = data.draw(st.sampled_from(["config.json", "model.safetensors", "tokenizer.json"]))
    raw = (folder / target).read_bytes()
    (folder / target).write_bytes(_apply(raw, data.draw(_mutations(len(raw)))))
    _assert_one_error_line(["convert", str(folder), "-o", str(tmp_path / "o.gguf"), "--dry-run"])
