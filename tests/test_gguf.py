"""The GGUF container: round trips, strict validation, official-file compatibility, gguf-py."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from bitnet.tools import quants
from bitnet.tools.constants import GGMLType, GGUFValueType, Keys
from bitnet.tools.errors import CorruptFileError, InputNotFoundError
from bitnet.tools.gguf import GGUFReader, GGUFWriter, describe, pad, read_gguf, tensor_nbytes

V = GGUFValueType

#: (key, value, vtype) covering every scalar type, strings, and arrays of every element type.
KV_CASES = [
    ("t.u8", 255, V.UINT8),
    ("t.i8", -128, V.INT8),
    ("t.u16", 65535, V.UINT16),
    ("t.i16", -32768, V.INT16),
    ("t.u32", 2**32 - 1, V.UINT32),
    ("t.i32", -(2**31), V.INT32),
    ("t.f32", 0.5, V.FLOAT32),
    ("t.bool.true", True, V.BOOL),
    ("t.bool.false", False, V.BOOL),
    ("t.str", "héllo ✓ <|eot_id|>", V.STRING),
    ("t.str.empty", "", V.STRING),
    ("t.u64", 2**64 - 1, V.UINT64),
    ("t.i64", -(2**63), V.INT64),
    ("t.f64", 1e-300, V.FLOAT64),
    ("a.u8", [0, 1, 255], V.UINT8),
    ("a.i8", [-1, 0, 1], V.INT8),
    ("a.u16", [1, 65535], V.UINT16),
    ("a.i16", [-5, 5], V.INT16),
    ("a.u32", [7, 2**32 - 1], V.UINT32),
    ("a.i32", [1, 3, 5], V.INT32),
    ("a.f32", [0.25, -1.5], V.FLOAT32),
    ("a.bool", [True, False, True], V.BOOL),
    ("a.str", ["Ġ t", "a b", ""], V.STRING),
    ("a.u64", [2**63], V.UINT64),
    ("a.i64", [-(2**40)], V.INT64),
    ("a.f64", [2.5], V.FLOAT64),
    ("a.empty", [], V.INT32),
    ("a.nested", [[1, 2], [3]], V.ARRAY),
]


def _shape_for(qtype: str) -> tuple[int, int]:
    """A small (M, K) the type can hold (TL1/TL2 have tiling constraints)."""
    qt = quants.get(qtype)
    for shape in [(32, 256), (64, 256), (128, 256), (256, 256), (128, 512), (256, 768)]:
        if qt.can_hold(shape):
            return shape
    raise AssertionError(f"no small shape for {qtype}")


TENSOR_TYPES = ["f32", "f16", "q8_0", "q4_0", "q6_k", "tq1_0", "tq2_0", "i2_s", "tl1", "tl2"]


def _write_all_types(path: Path, alignment: int = 32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    w = GGUFWriter(path, alignment=alignment)
    w.add_kv(Keys.ARCHITECTURE, "bitnet-b1.58")
    for key, value, vtype in KV_CASES:
        w.add_kv(key, value, vtype)
    data: dict[str, np.ndarray] = {}
    for qtype in TENSOR_TYPES:
        qt = quants.get(qtype)
        shape = _shape_for(qtype)
        n = qt.nbytes(shape)
        data[qtype] = rng.integers(0, 256, n, dtype=np.uint8)
        w.add_tensor(qtype, shape, qt.type_id)
    w.add_tensor("norm", (7,), GGMLType.F32)  # odd size: forces padding before the next one
    data["norm"] = rng.integers(0, 256, 28, dtype=np.uint8)
    size = w.write(lambda name: data[name])
    assert size == w.file_size == path.stat().st_size
    return data


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("alignment", [32, 64])
def test_round_trip_every_kv_and_tensor_type(tmp_path: Path, alignment: int) -> None:
    path = tmp_path / "all.gguf"
    data = _write_all_types(path, alignment)
    r = read_gguf(path)
    assert r.arch == "bitnet-b1.58"
    assert r.alignment == alignment
    for key, value, vtype in KV_CASES:
        assert r.kv[key] == value, key
        expected_type = (V.ARRAY, vtype) if isinstance(value, list) else vtype
        assert r.kv_types[key] == expected_type, key
    assert list(r.tensors) == [*TENSOR_TYPES, "norm"]
    running = 0
    for name, info in r.tensors.items():
        assert (info.offset - r.data_offset) == running
        assert info.offset % alignment == 0
        assert info.ne == tuple(reversed(info.shape))
        assert info.nbytes == len(data[name])
        assert bytes(r.data(name)) == data[name].tobytes()
        running += pad(info.nbytes, alignment)
    assert r.tensors["i2_s"].type_id == GGMLType.I2_S
    m, k = r.tensors["i2_s"].shape
    assert r.tensors["i2_s"].nbytes == m * k // 4 + 32


def test_float32_and_numpy_values(tmp_path: Path) -> None:
    w = GGUFWriter(tmp_path / "v.gguf")
    w.add_kv("eps", 1e-5)  # FLOAT32 by default
    w.add_kv("count", 30)  # UINT32 by default
    w.add_kv("neg", -3)  # INT32
    w.add_kv("types", np.array([1, 3, 5], dtype=np.int32))
    w.add_kv("scores", np.zeros(3, dtype=np.float32))
    w.write(lambda name: b"")
    r = GGUFReader(tmp_path / "v.gguf")
    assert r.kv["eps"] == pytest.approx(1e-5)
    assert r.kv_types["eps"] == V.FLOAT32
    assert (r.kv_types["count"], r.kv_types["neg"]) == (V.UINT32, V.INT32)
    assert r.kv["types"] == [1, 3, 5] and r.kv_types["types"] == (V.ARRAY, V.INT32)
    assert r.kv_types["scores"] == (V.ARRAY, V.FLOAT32)
    assert r.tensors == {}


def test_array_dequantizes(tmp_path: Path) -> None:
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    w = GGUFWriter(tmp_path / "f.gguf")
    w.add_tensor("x", x.shape, GGMLType.F32)
    w.add_tensor("h", x.shape, GGMLType.F16)
    w.write(lambda n: quants.get("f32" if n == "x" else "f16").quantize(x))
    r = GGUFReader(tmp_path / "f.gguf")
    np.testing.assert_array_equal(r.array("x"), x)
    np.testing.assert_array_equal(r.array("h"), x.astype(np.float16).astype(np.float32))


def test_writer_rejects_wrong_sizes_and_names(tmp_path: Path) -> None:
    w = GGUFWriter(tmp_path / "bad.gguf")
    with pytest.raises(ValueError):
        w.add_tensor("x", (4, 128), GGMLType.I2_S, nbytes=128)  # must be 128 + 32
    with pytest.raises(ValueError):
        w.add_tensor("n" * 64, (4,), GGMLType.F32)
    w.add_tensor("x", (4, 128), GGMLType.I2_S)
    with pytest.raises(ValueError):
        w.add_tensor("x", (4, 128), GGMLType.I2_S)
    with pytest.raises(ValueError):
        w.add_kv("k", [])  # empty array without an element type
    with pytest.raises(ValueError):
        w.add_kv("k", 300, V.UINT8)
    with pytest.raises(ValueError):
        w.write(lambda name: np.zeros(10, np.uint8))  # produced size != declared


def test_tensor_nbytes_matches_quants() -> None:
    assert tensor_nbytes(GGMLType.I2_S, (2560, 6912)) == 2560 * 6912 // 4 + 32
    assert tensor_nbytes(GGMLType.Q6_K, (2, 512)) == 2 * 2 * 210
    assert tensor_nbytes(12, (1, 256)) == 144  # Q4_K: an upstream type we only pass through
    with pytest.raises(KeyError):
        tensor_nbytes(37, (1, 128))  # I8_S is never stored


# --- corrupt and truncated files ----------------------------------------------------------------


def test_truncated_files_raise_corrupt_only(tmp_path: Path) -> None:
    path = tmp_path / "all.gguf"
    _write_all_types(path)
    blob = path.read_bytes()
    r = GGUFReader(path)
    last = max(t.offset + t.nbytes for t in r.tensors.values())
    header_end = r.data_offset
    cuts = sorted(set(range(0, header_end + 64)) | set(range(header_end, len(blob), 97)))
    cut_path = tmp_path / "cut.gguf"
    for cut in cuts:
        cut_path.write_bytes(blob[:cut])
        if cut >= last:  # only trailing padding is missing: still a complete file
            GGUFReader(cut_path)
            continue
        with pytest.raises(CorruptFileError):
            GGUFReader(cut_path)


def test_random_header_corruption_never_escapes_as_another_error(tmp_path: Path) -> None:
    path = tmp_path / "all.gguf"
    _write_all_types(path)
    blob = bytearray(path.read_bytes())
    header_end = GGUFReader(path).data_offset
    rng = np.random.default_rng(7)
    bad = tmp_path / "bad.gguf"
    for _ in range(400):
        mutated = bytearray(blob)
        for pos in rng.integers(0, header_end, size=rng.integers(1, 4)):
            mutated[pos] = int(rng.integers(0, 256))
        bad.write_bytes(bytes(mutated))
        try:
            GGUFReader(bad)
        except CorruptFileError:
            pass


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "empty"),
        (b"GGML" + b"\0" * 60, "not a GGUF file"),
        (struct.pack("<II", 0x46554747, 1) + b"\0" * 16, "version 1"),
        (struct.pack("<I", 0x46554747) + struct.pack(">I", 3) + b"\0" * 16, "big-endian"),
        (struct.pack("<IIQQ", 0x46554747, 3, 0, 2**62), "claims"),
        (struct.pack("<IIQQQ", 0x46554747, 3, 0, 1, 2**60) + b"\0" * 16, "past the end"),
    ],
)
def test_malformed_headers(tmp_path: Path, blob: bytes, message: str) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(blob)
    with pytest.raises(CorruptFileError, match=message):
        GGUFReader(path)


def _raw_kv_string(key: str, value: str) -> bytes:
    k, v = key.encode(), value.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<IQ", V.STRING, len(v)) + v


def test_huge_array_count_is_bounded(tmp_path: Path) -> None:
    k = b"tokenizer.ggml.tokens"
    body = struct.pack("<Q", len(k)) + k + struct.pack("<IIQ", V.ARRAY, V.STRING, 2**40)
    path = tmp_path / "x.gguf"
    path.write_bytes(struct.pack("<IIQQ", 0x46554747, 3, 0, 1) + body + b"\0" * 64)
    with pytest.raises(CorruptFileError, match="more than the file holds"):
        GGUFReader(path)


def test_bad_offsets_and_types(tmp_path: Path) -> None:
    def one_tensor(type_id: int, offset: int, ne: tuple[int, ...] = (128, 2)) -> Path:
        name = b"x"
        info = (
            struct.pack("<Q", 1)
            + name
            + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, type_id, offset)
        )
        head = struct.pack("<IIQQ", 0x46554747, 3, 1, 0) + info
        path = tmp_path / "t.gguf"
        path.write_bytes(head + b"\0" * (pad(len(head), 32) - len(head)) + b"\0" * 4096)
        return path

    assert GGUFReader(one_tensor(GGMLType.F32, 0)).tensors["x"].nbytes == 1024
    with pytest.raises(CorruptFileError, match="unknown ggml type"):
        GGUFReader(one_tensor(37, 0))
    with pytest.raises(CorruptFileError, match="not 0"):
        GGUFReader(one_tensor(GGMLType.F32, 32))
    with pytest.raises(CorruptFileError, match="past the end"):
        GGUFReader(one_tensor(GGMLType.F32, 0, (128, 100)))
    with pytest.raises(CorruptFileError, match="multiple"):
        GGUFReader(one_tensor(GGMLType.Q8_0, 0, (100, 2)))
    with pytest.raises(CorruptFileError, match="impossible shape"):
        GGUFReader(one_tensor(GGMLType.F32, 0, (2**40, 2**40)))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError):
        GGUFReader(tmp_path / "nope.gguf")


# --- Microsoft's official I2_S layout -------------------------------------------------------------


def _official_file(path: Path, arch: str) -> tuple[np.ndarray, float]:
    """A small file laid out like ggml-model-i2_s.gguf, written byte by byte (not by our writer)."""
    hidden, vocab = 128, 8
    rng = np.random.default_rng(3)
    codes = rng.integers(-1, 2, size=(hidden, hidden)).astype(np.int8)
    scale = 1.5
    i2s = quants.get("i2_s").pack(codes, scale)
    embd = rng.standard_normal((vocab, hidden)).astype(np.float16)
    tokens = [f"t{i}" for i in range(vocab)]

    def s(x: str) -> bytes:
        b = x.encode()
        return struct.pack("<Q", len(b)) + b

    def kv(key: str, vt: GGUFValueType, payload: bytes) -> bytes:
        return s(key) + struct.pack("<I", vt) + payload

    kvs = [
        kv("general.architecture", V.STRING, s(arch)),
        kv("general.name", V.STRING, s("bitnet2b_2501")),
        kv(f"{arch}.block_count", V.UINT32, struct.pack("<I", 1)),
        kv(f"{arch}.embedding_length", V.UINT32, struct.pack("<I", hidden)),
        kv("general.file_type", V.UINT32, struct.pack("<I", 137)),
        kv("tokenizer.ggml.model", V.STRING, s("gpt2")),
        kv("tokenizer.ggml.tokens", V.ARRAY,
           struct.pack("<IQ", V.STRING, vocab) + b"".join(s(t) for t in tokens)),
        kv("tokenizer.ggml.scores", V.ARRAY,
           struct.pack("<IQ", V.FLOAT32, vocab) + np.zeros(vocab, "<f4").tobytes()),
        kv("tokenizer.ggml.add_bos_token", V.BOOL, b"\x01"),
    ]  # fmt: skip
    tensors = [
        ("token_embd.weight", (hidden, vocab), GGMLType.F16, embd.tobytes()),
        ("blk.0.attn_q.weight", (hidden, hidden), GGMLType.I2_S, i2s.tobytes()),
        ("output_norm.weight", (hidden,), GGMLType.F32, np.ones(hidden, "<f4").tobytes()),
    ]
    infos, blobs, offset = [], [], 0
    for name, ne, t, blob in tensors:
        infos.append(s(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, t, offset))
        blobs.append(blob + b"\0" * (pad(len(blob), 32) - len(blob)))
        offset += pad(len(blob), 32)
    head = struct.pack("<IIQQ", 0x46554747, 3, len(tensors), len(kvs)) + b"".join(kvs + infos)
    path.write_bytes(head + b"\0" * (pad(len(head), 32) - len(head)) + b"".join(blobs))
    return codes, scale


@pytest.mark.parametrize("arch", ["bitnet-b1.58", "bitnet-25"])
def test_reads_official_i2s_layout(tmp_path: Path, arch: str) -> None:
    path = tmp_path / "ggml-model-i2_s.gguf"
    codes, scale = _official_file(path, arch)
    r = GGUFReader(path)
    assert r.arch == arch
    assert r.kv["general.file_type"] == 137
    assert r.kv["tokenizer.ggml.add_bos_token"] is True
    assert r.key(Keys.BLOCK_COUNT) == 1
    q = r.tensors["blk.0.attn_q.weight"]
    assert (q.type_id, q.shape, q.nbytes) == (GGMLType.I2_S, (128, 128), 128 * 128 // 4 + 32)
    got_codes, got_scale = quants.get("i2_s").unpack(r.data(q.name), q.shape)
    np.testing.assert_array_equal(got_codes, codes)
    assert got_scale == np.float32(scale)
    assert r.tensors["token_embd.weight"].type_id == GGMLType.F16
    summary = describe(r)
    assert summary["linear_types"] == ["I2_S"]
    assert summary["bpw_linears"] == pytest.approx(
        8 * (128 * 128 // 4 + 32) / (128 * 128), abs=1e-4
    )


# --- PyPI gguf interoperability -------------------------------------------------------------------


def _small_model_file(path: Path, qtype: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    w = GGUFWriter(path)
    w.add_kv(Keys.ARCHITECTURE, "bitnet-b1.58")
    w.add_kv("bitnet-b1.58.block_count", 1)
    w.add_kv(Keys.TOKENIZER_TOKENS, ["a", "b", "c"])
    w.add_kv(Keys.TOKENIZER_ADD_BOS, True)
    qt = quants.get(qtype)
    shape = (256, 256)
    data = {
        "token_embd.weight": quants.get("f16").quantize(rng.standard_normal((3, 256))),
        "blk.0.attn_q.weight": (
            qt.quantize(rng.standard_normal(shape).astype(np.float32))
            if not qt.ternary
            else qt.pack(rng.integers(-1, 2, size=shape).astype(np.int8), 0.75)
        ),
        "output_norm.weight": np.ones(256, "<f4").view(np.uint8),
    }
    w.add_tensor("token_embd.weight", (3, 256), GGMLType.F16)
    w.add_tensor("blk.0.attn_q.weight", shape, qt.type_id)
    w.add_tensor("output_norm.weight", (256,), GGMLType.F32)
    w.write(lambda n: data[n])
    return data


@pytest.mark.parametrize("qtype", ["f16", "tq2_0", "tq1_0", "q8_0"])
def test_pypi_gguf_reader_opens_our_files(tmp_path: Path, qtype: str) -> None:
    gguf = pytest.importorskip("gguf")
    path = tmp_path / f"{qtype}.gguf"
    data = _small_model_file(path, qtype)
    ours = GGUFReader(path)
    theirs = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in theirs.fields.items() if not k.startswith("GGUF.")}
    assert fields == ours.kv
    assert [t.name for t in theirs.tensors] == list(ours.tensors)
    for t in theirs.tensors:
        mine = ours.tensors[t.name]
        assert int(t.tensor_type) == mine.type_id
        assert tuple(int(d) for d in t.shape) == mine.ne
        assert int(t.n_bytes) == mine.nbytes
        assert int(t.data_offset) == mine.offset
        assert np.asarray(t.data).tobytes() == data[t.name].tobytes()


@pytest.mark.parametrize("qtype", ["i2_s", "tl1", "tl2"])
def test_pypi_gguf_reader_rejects_ternary_packed_types(tmp_path: Path, qtype: str) -> None:
    """Recorded behaviour (see the tools/gguf.py docstring): gguf 0.19 has no ids 36/38/43."""
    gguf = pytest.importorskip("gguf")
    path = tmp_path / f"{qtype}.gguf"
    shape = _shape_for(qtype)
    w = GGUFWriter(path)
    w.add_tensor("w", shape, quants.get(qtype).type_id)
    codes = np.zeros(shape, np.int8)
    w.write(lambda n: quants.get(qtype).pack(codes, 1.0))
    GGUFReader(path)  # ours reads it
    with pytest.raises(ValueError, match="is not a valid GGMLQuantizationType"):
        gguf.GGUFReader(path)
