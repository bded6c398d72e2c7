"""The safetensors reader/writer: round trips, streaming, sharding and every kind of damage."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from bitnet.tools.errors import CorruptFileError, InputNotFoundError, ShapeError
from bitnet.tools.safetensors import (
    INDEX_FILE,
    Checkpoint,
    SafetensorsFile,
    TensorSpec,
    write_safetensors,
)

# --- helpers ------------------------------------------------------------------------------------


def _raw_file(path: Path, header: dict, data: bytes, pad: bool = False) -> Path:
    """Build a safetensors file by hand (independent of the writer under test)."""
    blob = json.dumps(header).encode()
    if pad:
        blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def _folder(tmp_path: Path, config: dict | None = None) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config or {"model_type": "bitnet"}))
    return folder


def _bf16_round(x: np.ndarray) -> np.ndarray:
    """Independent bf16 rounding (round half to even) via float64 arithmetic on the bits."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    low = u & 0xFFFF
    high = u >> 16
    up = (low > 0x8000) | ((low == 0x8000) & (high & 1 == 1))
    return ((high + up.astype(np.uint64)) << 16).astype(np.uint32).view(np.float32)


# --- round trips --------------------------------------------------------------------------------


def test_round_trip_every_dtype(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    f32 = rng.standard_normal((3, 5)).astype(np.float32)
    tensors = [
        ("a.f32", f32, "F32"),
        ("b.f16", f32.astype(np.float16), "F16"),
        ("c.bf16", f32, "BF16"),
        ("d.u8", rng.integers(0, 256, (4, 8), dtype=np.uint8), "U8"),
        ("e.i8", rng.integers(-128, 128, (7,), dtype=np.int8), "I8"),
        ("f.i32", np.arange(6, dtype=np.int32).reshape(2, 3), "I32"),
        ("g.empty", np.zeros((0, 4), dtype=np.float32), "F32"),
        ("h.scalar", np.array(2.5, dtype=np.float32), "F32"),
    ]
    path = write_safetensors(tmp_path / "x.safetensors", tensors, {"format": "pt"})
    f = SafetensorsFile(path)
    assert f.names() == [t[0] for t in tensors]
    assert f.metadata == {"format": "pt"}
    # the data section starts 8-byte aligned, like files written by the reference library
    assert f._data_start % 8 == 0

    folder = _folder(tmp_path)
    (folder / "model.safetensors").write_bytes(path.read_bytes())
    ckpt = Checkpoint(folder)
    assert ckpt.dtype("c.bf16") == "BF16" and ckpt.shape("c.bf16") == (3, 5)
    np.testing.assert_array_equal(ckpt.get("a.f32"), f32)
    np.testing.assert_array_equal(ckpt.get("b.f16"), f32.astype(np.float16))
    assert ckpt.get("b.f16").dtype == np.float16
    got = ckpt.get("c.bf16")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, _bf16_round(f32))
    np.testing.assert_array_equal(ckpt.get("d.u8"), tensors[3][1])
    np.testing.assert_array_equal(ckpt.get("e.i8"), tensors[4][1])
    np.testing.assert_array_equal(ckpt.get("f.i32"), tensors[5][1])
    assert ckpt.get("g.empty").shape == (0, 4)
    assert ckpt.get("h.scalar").shape == () and float(ckpt.get("h.scalar")) == 2.5
    assert ckpt.metadata == {"format": "pt"}


def test_views_are_memory_mapped_and_read_only(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    data = np.arange(64, dtype=np.uint8).reshape(8, 8)
    write_safetensors(folder / "model.safetensors", [("w", data, "U8")])
    arr = Checkpoint(folder).get("w")
    assert isinstance(arr.base, np.memmap) or isinstance(arr, np.memmap)
    assert not arr.flags.writeable


def test_bf16_rounding_ties_to_even(tmp_path: Path) -> None:
    # 1 + 2^-8 is exactly half-way between two bf16 values: rounds to the even one (1.0);
    # 1 + 3*2^-8 rounds up to 1 + 2^-6... check against the independent rounding.
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, -1 - 2**-8, 3.0e38, np.inf, 0.0], dtype=np.float32)
    folder = _folder(tmp_path)
    write_safetensors(folder / "model.safetensors", [("x", x, "BF16")])
    got = Checkpoint(folder).get("x")
    np.testing.assert_array_equal(got, _bf16_round(x))
    assert got[0] == 1.0


def test_uint16_input_is_taken_as_bf16_bits(tmp_path: Path) -> None:
    bits = np.array([0x3F80, 0xC000, 0x0000], dtype=np.uint16)  # 1.0, -2.0, 0.0
    folder = _folder(tmp_path)
    write_safetensors(folder / "model.safetensors", [("x", bits, "BF16")])
    np.testing.assert_array_equal(Checkpoint(folder).get("x"), [1.0, -2.0, 0.0])
    np.testing.assert_array_equal(Checkpoint(folder).raw("x"), bits)


def test_reads_a_hand_made_file_in_any_order(tmp_path: Path) -> None:
    # Header order differs from data order and the header is not padded: still valid.
    a = np.array([1, 2, 3], dtype="<i4").tobytes()
    b = np.array([[0.5, -1.0]], dtype="<f4").tobytes()
    header = {
        "b": {"dtype": "F32", "shape": [1, 2], "data_offsets": [len(a), len(a) + len(b)]},
        "a": {"dtype": "I32", "shape": [3], "data_offsets": [0, len(a)]},
    }
    folder = _folder(tmp_path)
    _raw_file(folder / "model.safetensors", header, a + b)
    ckpt = Checkpoint(folder)
    assert sorted(ckpt.names()) == ["a", "b"]
    np.testing.assert_array_equal(ckpt.get("a"), [1, 2, 3])
    np.testing.assert_array_equal(ckpt.get("b"), [[0.5, -1.0]])


def test_matches_the_reference_library(tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(2)
    tensors = {
        "w": rng.standard_normal((16, 8)).astype(np.float32),
        "h": rng.standard_normal((5,)).astype(np.float16),
        "q": rng.integers(0, 255, (4, 4), dtype=np.uint8),
    }
    folder = _folder(tmp_path)
    st.save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "np"})
    ckpt = Checkpoint(folder)
    for name, value in tensors.items():
        np.testing.assert_array_equal(ckpt.get(name), value)
    ours = tmp_path / "ours.safetensors"
    names = {"float32": "F32", "float16": "F16", "uint8": "U8"}
    write_safetensors(ours, [(n, v, names[str(v.dtype)]) for n, v in tensors.items()])
    back = st.load_file(str(ours))
    for name, value in tensors.items():
        np.testing.assert_array_equal(back[name], value)


# --- streaming writer ---------------------------------------------------------------------------


def test_streaming_with_specs_and_chunks(tmp_path: Path) -> None:
    rows = np.arange(40, dtype=np.float32).reshape(10, 4)
    produced: list[str] = []

    def gen():
        produced.append("big")
        yield "big", (rows[i : i + 3] for i in range(0, 10, 3)), "F32"
        produced.append("small")
        yield "small", np.ones(3, dtype=np.float32), "BF16"

    specs = [TensorSpec("big", (10, 4), "F32"), ("small", (3,), "BF16")]
    path = write_safetensors(tmp_path / "s.safetensors", gen(), specs=specs)
    assert produced == ["big", "small"]
    f = SafetensorsFile(path)
    np.testing.assert_array_equal(f.raw("big"), rows)
    np.testing.assert_array_equal(f.raw("small"), [0x3F80] * 3)


@pytest.mark.parametrize(
    "items, match",
    [
        ([("a", np.zeros((2, 2), np.float32), "F32")], "shape"),
        ([("b", np.zeros((2, 3), np.float32), "F32")], "expected tensor"),
        ([], "declared but not produced"),
        (
            [("a", np.zeros((2, 3), np.float32), "F32"), ("x", np.zeros(1, np.float32), "F32")],
            "more tensors",
        ),
        ([("a", iter([np.zeros((1, 3), np.float32)]), "F32")], "produced 12 bytes"),
    ],
)
def test_streaming_mismatch_leaves_no_file(tmp_path: Path, items, match) -> None:
    target = tmp_path / "s.safetensors"
    with pytest.raises(ShapeError, match=match):
        write_safetensors(target, iter(items), specs=[("a", (2, 3), "F32")])
    assert list(tmp_path.iterdir()) == []


def test_refuses_float_data_for_integer_dtype(tmp_path: Path) -> None:
    with pytest.raises(ShapeError):
        write_safetensors(tmp_path / "x.safetensors", [("w", np.ones(4, np.float32), "U8")])


# --- damage -------------------------------------------------------------------------------------


def _good(tmp_path: Path) -> Path:
    return write_safetensors(
        tmp_path / "good.safetensors",
        [("a", np.arange(8, dtype=np.float32), "F32"), ("b", np.arange(4, dtype=np.uint8), "U8")],
    )


def _damage_cases(tmp_path: Path) -> dict[str, Path]:
    good = _good(tmp_path).read_bytes()
    n = struct.unpack("<Q", good[:8])[0]
    header = json.loads(good[8 : 8 + n])
    data = good[8 + n :]
    cases: dict[str, Path] = {}

    def put(name: str, content: bytes) -> None:
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(content)
        cases[name] = p

    put("empty", b"")
    put("short_prefix", b"\x10\x00\x00")
    put("header_too_long", struct.pack("<Q", len(good)) + good[8:])
    put("header_huge", struct.pack("<Q", 1 << 62) + good[8:])
    put("truncated_data", good[:-5])
    put("bad_json", struct.pack("<Q", 8) + b"{nope!!}" + data)
    put("not_utf8", struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc" + data)
    put("json_list", struct.pack("<Q", 2) + b"[]")

    def edited(name: str, change) -> None:
        h = json.loads(json.dumps(header))
        change(h)
        blob = json.dumps(h).encode()
        put(name, struct.pack("<Q", len(blob)) + blob + data)

    edited("unknown_dtype", lambda h: h["a"].update(dtype="F7"))
    edited("bad_shape", lambda h: h["a"].update(shape=[-8]))
    edited("offsets_past_end", lambda h: h["b"].update(data_offsets=[32, 4000]))
    edited("offsets_reversed", lambda h: h["b"].update(data_offsets=[36, 32]))
    edited("size_mismatch", lambda h: h["a"].update(shape=[7]))
    edited("offsets_not_pair", lambda h: h["a"].update(data_offsets=[0]))
    edited("overlap", lambda h: h["b"].update(data_offsets=[28, 32]))
    edited("entry_not_object", lambda h: h.update(a=5))
    edited("bad_metadata", lambda h: h.update(__metadata__={"k": 1}))
    return cases


DAMAGE = [
    "empty",
    "short_prefix",
    "header_too_long",
    "header_huge",
    "truncated_data",
    "bad_json",
    "not_utf8",
    "json_list",
    "unknown_dtype",
    "bad_shape",
    "offsets_past_end",
    "offsets_reversed",
    "size_mismatch",
    "offsets_not_pair",
    "overlap",
    "entry_not_object",
    "bad_metadata",
]


@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_file_is_corrupt_file_error(tmp_path: Path, case: str) -> None:
    path = _damage_cases(tmp_path)[case]
    with pytest.raises(CorruptFileError) as info:
        SafetensorsFile(path)
    assert path.name in str(info.value)
    assert "\n" not in str(info.value)


def test_damaged_file_through_checkpoint(tmp_path: Path) -> None:
    good = _good(tmp_path).read_bytes()
    folder = _folder(tmp_path)
    (folder / "model.safetensors").write_bytes(good[:-3])
    with pytest.raises(CorruptFileError, match="model.safetensors"):
        Checkpoint(folder)


# --- folders and shards -------------------------------------------------------------------------


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError):
        Checkpoint(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputNotFoundError, match="config.json"):
        Checkpoint(empty)
    (empty / "config.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match="config.json"):
        Checkpoint(empty)
    (empty / "config.json").write_text("{}")
    with pytest.raises(InputNotFoundError, match="safetensors"):
        Checkpoint(empty)


def _sharded(tmp_path: Path) -> Path:
    folder = _folder(tmp_path)
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.arange(5, dtype=np.uint8)
    c = np.full((2, 2), 7, dtype=np.int8)
    write_safetensors(
        folder / "model-00001-of-00002.safetensors", [("a", a, "F32"), ("b", b, "U8")]
    )
    write_safetensors(folder / "model-00002-of-00002.safetensors", [("c", c, "I8")])
    index = {
        "metadata": {"total_size": a.nbytes + b.nbytes + c.nbytes},
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "c": "model-00002-of-00002.safetensors",
            "b": "model-00001-of-00002.safetensors",
        },
    }
    (folder / INDEX_FILE).write_text(json.dumps(index))
    return folder


def test_sharded_checkpoint(tmp_path: Path) -> None:
    ckpt = Checkpoint(_sharded(tmp_path))
    assert ckpt.names() == ["a", "c", "b"]
    assert "c" in ckpt and len(ckpt) == 3
    np.testing.assert_array_equal(ckpt.get("a"), np.arange(12, dtype=np.float32).reshape(3, 4))
    np.testing.assert_array_equal(ckpt.get("c"), np.full((2, 2), 7))
    assert ckpt.dtype("b") == "U8" and ckpt.shape("b") == (5,)
    assert len(ckpt.files) == 2
    with pytest.raises(InputNotFoundError, match="no tensor"):
        ckpt.get("zzz")


def test_sharded_missing_shard(tmp_path: Path) -> None:
    folder = _sharded(tmp_path)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(InputNotFoundError, match="model-00002-of-00002"):
        Checkpoint(folder)


def test_sharded_index_points_at_wrong_shard(tmp_path: Path) -> None:
    folder = _sharded(tmp_path)
    index = json.loads((folder / INDEX_FILE).read_text())
    index["weight_map"]["c"] = "model-00001-of-00002.safetensors"
    (folder / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CorruptFileError, match="'c'"):
        Checkpoint(folder)


def test_sharded_bad_index(tmp_path: Path) -> None:
    folder = _sharded(tmp_path)
    (folder / INDEX_FILE).write_text(json.dumps({"weight_map": ["a"]}))
    with pytest.raises(CorruptFileError, match="weight_map"):
        Checkpoint(folder)
    (folder / INDEX_FILE).write_text("{")
    with pytest.raises(CorruptFileError):
        Checkpoint(folder)


def test_unindexed_shards_are_merged_and_duplicates_refused(tmp_path: Path) -> None:
    folder = _sharded(tmp_path)
    (folder / INDEX_FILE).unlink()
    assert sorted(Checkpoint(folder).names()) == ["a", "b", "c"]
    write_safetensors(folder / "extra.safetensors", [("a", np.zeros(1, np.float32), "F32")])
    with pytest.raises(CorruptFileError, match="'a'"):
        Checkpoint(folder)
