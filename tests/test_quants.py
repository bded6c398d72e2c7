"""Tests of `bitnet.tools.quants`: byte layouts, sizes, round trips, shape errors, registry.

Independent references used here: hand-written byte vectors (I2_S, TL1, TL2), slow per-element
loops written from the layout descriptions in docs/formats.md, the `gguf` package's quantizers,
and a digest of the pinned ggml tree's C `quantize_row_q6_K_ref` output.
"""

from __future__ import annotations

import hashlib

import gguf
import numpy as np
import pytest

from bitnet.tools import quants
from bitnet.tools.constants import GGMLType
from bitnet.tools.errors import CorruptFileError, ShapeError, UsageError
from bitnet.tools.quants import base, embedding, tl2

RNG_SEED = 1234


def rand_codes(shape: tuple[int, ...], seed: int = RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1, 2, size=shape).astype(np.int8)


#: (type, shapes) for ternary round trips: random, tiny and odd shapes each type accepts.
TERNARY_SHAPES = {
    "i2_s": [(1, 128), (3, 384), (5, 256), (256,)],
    "tl1": [(32, 8), (64, 256), (96, 384), (64, 260), (160, 1024)],
    "tl2": [(32, 256), (64, 280), (96, 288), (128, 512), (160, 1024)],
    "tq1_0": [(1, 256), (3, 512), (2, 768)],
    "tq2_0": [(1, 256), (3, 512), (2, 768)],
}

#: Weight shapes (M, K) of the models the TL presets were written for, plus 2B-4T.
MODEL_SHAPES = {
    "bitnet-b1.58-2B-4T": [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)],
    "bitnet_b1_58-large": [(1536, 4096), (1536, 1536), (4096, 1536)],
    "bitnet_b1_58-3B": [(3200, 8640), (3200, 3200), (8640, 3200)],
    "Llama3-8B-1.58": [(14336, 4096), (4096, 14336), (1024, 4096), (4096, 4096)],
}


# --- registry -----------------------------------------------------------------------------------


def test_registry_lookup_by_name_and_id():
    for name in quants.names():
        qt = quants.get(name)
        assert qt.name == name
        assert quants.get(name.upper()) is qt
        assert quants.get(qt.type_id) is qt
        assert quants.get(int(qt.type_id)) is qt
    assert quants.get("Q6_K").type_id == GGMLType.Q6_K
    assert quants.get(GGMLType.TL2).type_id == 43
    assert quants.get(36).name == "i2_s"


def test_registry_names_and_families():
    assert set(quants.names()) == set(quants.TERNARY_NAMES) | set(quants.EMBEDDING_NAMES)
    assert quants.names()[: len(quants.TERNARY_NAMES)] == list(quants.TERNARY_NAMES)
    for name in quants.TERNARY_NAMES:
        qt = quants.get(name)
        assert qt.ternary and hasattr(qt, "pack") and hasattr(qt, "unpack")
    for name in quants.EMBEDDING_NAMES:
        qt = quants.get(name)
        assert not qt.ternary and hasattr(qt, "quantize")


def test_registry_unknown_names_and_ids():
    with pytest.raises(UsageError, match="unknown tensor type"):
        quants.get("q5_k")
    with pytest.raises(UsageError, match="39"):
        quants.get(39)  # MXFP4 upstream: not ours
    with pytest.raises(TypeError):
        quants.get(1.5)  # type: ignore[arg-type]


# --- sizes ----------------------------------------------------------------------------------


def test_size_formulas():
    n = 2560 * 6912
    assert quants.get("i2_s").nbytes((6912, 2560)) == n // 4 + 32
    assert quants.get("tl1").nbytes((6912, 2560)) == n // 4 + 32
    p = (2560 - 256) * 6912 // 3 * 5 // 8 + 256 * 6912 // 2 * 4 // 8
    assert tl2.size_bound(6912, 2560) == p
    assert quants.get("tl2").nbytes((6912, 2560)) == (p + 31) // 32 * 32 + 32
    assert quants.get("tl2").nbytes((32, 256)) == 2048 + 32
    assert quants.get("tq1_0").nbytes((4, 512)) == 8 * 54
    assert quants.get("tq2_0").nbytes((4, 512)) == 8 * 66
    assert quants.get("f32").nbytes((3, 5)) == 60
    assert quants.get("f16").nbytes((3, 5)) == 30
    assert quants.get("bf16").nbytes((7,)) == 14
    assert quants.get("q8_0").nbytes((3, 64)) == 6 * 34
    assert quants.get("q4_0").nbytes((3, 64)) == 6 * 18
    assert quants.get("q6_k").nbytes((3, 512)) == 6 * 210


@pytest.mark.parametrize("name", quants.TERNARY_NAMES)
def test_packed_size_depends_on_shape_only(name):
    qt = quants.get(name)
    for shape in TERNARY_SHAPES[name]:
        a = qt.pack(rand_codes(shape, 1), 0.25)
        b = qt.pack(np.zeros(shape, np.int8), 3.0)
        assert a.dtype == np.uint8 and a.ndim == 1
        assert a.size == b.size == qt.nbytes(shape)


# --- ternary round trips --------------------------------------------------------------------


@pytest.mark.parametrize("name", quants.TERNARY_NAMES)
def test_ternary_round_trip(name):
    qt = quants.get(name)
    for i, shape in enumerate(TERNARY_SHAPES[name]):
        for codes in (
            rand_codes(shape, i),
            np.zeros(shape, np.int8),
            np.ones(shape, np.int8),
            -np.ones(shape, np.int8),
        ):
            data = qt.pack(codes, 0.8125)
            back, scale = qt.unpack(data, shape)
            assert back.dtype == np.int8 and back.shape == shape
            np.testing.assert_array_equal(back, codes)
            assert scale == np.float32(0.8125)
            deq = qt.dequantize(data, shape)
            assert deq.dtype == np.float32
            np.testing.assert_array_equal(deq, codes.astype(np.float32) * np.float32(0.8125))


@pytest.mark.parametrize("name", ["i2_s", "tl1", "tl2"])
def test_scale_is_stored_exactly_in_the_tail(name):
    qt = quants.get(name)
    shape = TERNARY_SHAPES[name][1]
    scale = 1.2345678e-3
    data = qt.pack(rand_codes(shape), scale)
    tail = data[-32:]
    assert tail[:4].view("<f4")[0] == np.float32(scale)
    if name == "i2_s":
        assert not tail[4:].any()
    else:  # TL1/TL2: the tiles, BM, BK, bm as uint32 LE, then zeros
        t = qt.tiling(shape)
        assert tail[4:16].view("<u4").tolist() == [t.BM, t.BK, t.bm]
        assert not tail[16:].any()
    assert qt.unpack(data, shape)[1] == np.float32(scale)


def test_pack_accepts_other_integer_dtypes_and_rejects_non_ternary():
    qt = quants.get("i2_s")
    codes = rand_codes((2, 128))
    ref = qt.pack(codes, 1.0)
    np.testing.assert_array_equal(qt.pack(codes.astype(np.int32), 1.0), ref)
    np.testing.assert_array_equal(qt.pack(codes.astype(np.float32), 1.0), ref)
    bad = codes.copy()
    bad[0, 0] = 2
    with pytest.raises(ValueError, match="-1, 0 or \\+1"):
        qt.pack(bad, 1.0)
    with pytest.raises(ValueError, match="-1, 0 or \\+1"):
        qt.pack(codes.astype(np.float32) * 0.5, 1.0)
    with pytest.raises(ValueError, match="finite"):
        qt.pack(codes, float("nan"))
    with pytest.raises(ShapeError):
        qt.pack(np.zeros((2, 100), np.int8), 1.0)


# --- I2_S bytes --------------------------------------------------------------------------------


def test_i2s_known_bytes():
    # One block: element 0 = +1 (byte 0, bits 7:6), element 33 = -1 (byte 1, bits 5:4),
    # element 127 = +1 (byte 31, bits 1:0); every other element 0 -> 0b01 -> 0x55 bytes.
    codes = np.zeros((1, 128), np.int8)
    codes[0, 0], codes[0, 33], codes[0, 127] = 1, -1, 1
    expected = bytes([0x95, 0x45] + [0x55] * 29 + [0x56])
    expected += bytes([0x00, 0x00, 0x00, 0x3F]) + bytes(28)  # 0.5 as f32 LE, then zeros
    assert quants.get("i2_s").pack(codes, 0.5).tobytes() == expected


def test_i2s_matches_the_per_element_formula():
    # spec §2.1: element e -> byte (e//128)*32 + e%32, shift 6 - 2*((e%128)//32).
    shape = (3, 256)
    codes = rand_codes(shape)
    data = quants.get("i2_s").pack(codes, 1.0)
    flat = codes.reshape(-1)
    expected = np.zeros(flat.size // 4, np.uint8)
    for e, v in enumerate(flat):
        b, p = divmod(e, 128)
        g, j = divmod(p, 32)
        expected[b * 32 + j] |= (int(v) + 1) << (6 - 2 * g)
    np.testing.assert_array_equal(data[: flat.size // 4], expected)


def test_i2s_unpack_rejects_code_3_and_wrong_sizes():
    qt = quants.get("i2_s")
    data = qt.pack(rand_codes((2, 128)), 1.0)
    bad = data.copy()
    bad[5] = 0xFF
    with pytest.raises(CorruptFileError, match="0b11"):
        qt.unpack(bad, (2, 128))
    with pytest.raises(CorruptFileError, match="must be 96 bytes"):
        qt.unpack(data[:-1], (2, 128))
    with pytest.raises(CorruptFileError):
        qt.unpack(np.concatenate([data, data[:1]]), (2, 128))
    nan_scale = data.copy()
    nan_scale[64:68] = np.array([np.nan], "<f4").view(np.uint8)
    with pytest.raises(CorruptFileError, match="scale"):
        qt.unpack(nan_scale, (2, 128))
    # Microsoft's C quantizer leaves the 28 bytes after the scale unset: they are ignored.
    junk_tail = data.copy()
    junk_tail[68:] = 0xAB
    np.testing.assert_array_equal(qt.unpack(junk_tail, (2, 128))[0], qt.unpack(data, (2, 128))[0])


# --- TL1 / TL2 layouts ----------------------------------------------------------------------


def tl1_reference(codes: np.ndarray, t: quants.Tiling) -> np.ndarray:
    """Slow TL1 packer written from the tile order [M/BM][K/BK][BM/bm][BK/by][bm/16][by/4][16]."""
    m, k = codes.shape
    by = 256 // t.bm
    out = np.zeros(m * k // 4, np.uint8)
    for r in range(m):
        for p in range(k // 2):
            idx = 3 * int(codes[r, 2 * p]) + int(codes[r, 2 * p + 1]) + 4
            col = 2 * p
            i0, rr = divmod(r, t.BM)
            i2, rs = divmod(rr, t.bm)
            i4, r16 = divmod(rs, 16)
            i1, kk = divmod(col, t.BK)
            i3, ks = divmod(kk, by)
            i5, kq = divmod(ks, 4)
            off = ((((i0 * (k // t.BK) + i1) * (t.BM // t.bm) + i2) * (t.BK // by) + i3)
                   * (t.bm // 16) + i4) * (by // 4) + i5  # fmt: skip
            out[off * 16 + r16] |= idx << (4 if kq == 0 else 0)
    return out


def tl2_reference(codes: np.ndarray, t: quants.Tiling) -> np.ndarray:
    """Slow TL2 packer written from docs/formats.md (index, sign and two-part sections)."""
    m, k = codes.shape
    three_k, two_k = t.three_k(k), t.two_k(k)
    chunk_pos = {0: 0, 2: 1, 1: 2, 3: 3}  # row chunk -> stored 8-byte chunk position
    idx_b = np.zeros(m * three_k // 6, np.uint8)
    sign_w = np.zeros(m * three_k // 48, np.uint16)  # 16 words per 32 rows x 24 columns
    two_b = np.zeros(m * two_k // 4, np.uint8)
    for r in range(m):
        i0, rr = divmod(r, t.BM)
        i2, r32 = divmod(rr, 32)
        pos = chunk_pos[r32 // 8] * 8 + r32 % 8
        for g in range(three_k // 3):
            w0, w1, w2 = (int(x) for x in codes[r, 3 * g : 3 * g + 3])
            v = 9 * w0 + 3 * w1 + w2
            i1, gg = divmod(g, t.BK // 3)
            i3, half = divmod(gg, 2)
            vec = ((i0 * (three_k // t.BK) + i1) * (t.BM // 32) + i2) * (t.BK // 6) + i3
            idx_b[vec * 32 + pos] |= abs(v) << (4 if half == 0 else 0)
            i3s, g8 = divmod(gg, 8)
            blk = ((i0 * (three_k // t.BK) + i1) * (t.BM // 32) + i2) * (t.BK // 24) + i3s
            h, j = divmod(r32, 16)
            if v < 0:
                sign_w[blk * 16 + j] |= 1 << (15 - (2 * g8 + h))
        for p in range(two_k // 2):
            idx = 3 * int(codes[r, three_k + 2 * p]) + int(codes[r, three_k + 2 * p + 1]) + 4
            i1, pp = divmod(p, 16)
            i3, half = divmod(pp, 2)
            vec = ((i0 * (two_k // 32) + i1) * (t.BM // 32) + i2) * 8 + i3
            two_b[vec * 32 + pos] |= idx << (4 if half == 0 else 0)
    return np.concatenate([idx_b, sign_w.astype("<u2").view(np.uint8), two_b])


@pytest.mark.parametrize("shape", [(32, 8), (64, 256), (64, 260), (96, 384)])
def test_tl1_matches_the_documented_tile_order(shape):
    qt = quants.get("tl1")
    codes = rand_codes(shape, 7)
    data = qt.pack(codes, 1.0)
    np.testing.assert_array_equal(data[:-32], tl1_reference(codes, qt.tiling(shape)))


@pytest.mark.parametrize("shape", [(32, 256), (64, 280), (96, 288)])
def test_tl2_matches_the_documented_tile_order(shape):
    qt = quants.get("tl2")
    codes = rand_codes(shape, 8)
    data = qt.pack(codes, 1.0)
    ref = tl2_reference(codes, qt.tiling(shape))
    body = data[:-32]
    np.testing.assert_array_equal(body[: ref.size], ref)
    assert not body[ref.size :].any()  # zero padding up to roundup32(P)


def test_tl1_known_bytes():
    codes = np.zeros((32, 8), np.int8)
    codes[0] = [1, -1, 0, 0, 1, 1, -1, -1]  # pairs 6, 4 | 8, 0
    codes[17] = [1, 1, 1, 1, -1, 0, 0, 1]  # pairs 8, 8 | 1, 5
    qt = quants.get("tl1")
    assert qt.tiling(codes.shape) == quants.Tiling(BM=32, BK=8, bm=32)
    data = qt.pack(codes, 1.0)
    expected = np.full(64, 0x44, np.uint8)  # all-zero pairs: idx 4 | 4
    expected[[0, 16, 33, 49]] = [0x64, 0x80, 0x88, 0x15]
    np.testing.assert_array_equal(data[:64], expected)
    assert data.size == 96


def test_tl2_known_bytes():
    codes = np.zeros((32, 256), np.int8)
    codes[0, :6] = [-1, 1, 1, 0, 0, 1]  # v = -5 (idx 5, sign 1), v = 1
    codes[9, :3] = [1, 1, 1]  # v = 13; row 9 sits in stored chunk 2 -> byte 16 + 1
    codes[0, 192:196] = [1, -1, 0, 1]  # two-part pairs 6, 5
    codes[9, 252:256] = [-1, -1, 1, 1]  # two-part tile 1, sub-tile 7: pairs 0, 8
    qt = quants.get("tl2")
    t = qt.tiling(codes.shape)
    assert (t, t.three_k(256), t.two_k(256)) == (quants.Tiling(32, 96, 32), 192, 64)
    data = qt.pack(codes, 2.0)
    assert data.size == 2080  # roundup32(P = 2048) + 32
    expected = np.zeros(2048, np.uint8)
    expected[1280:1792] = 0x44  # two-part zero pairs
    expected[0], expected[17] = 0x51, 0xD0
    expected[1025] = 0x80  # sign word 0 = 0x8000 (row 0, group 0), little-endian
    expected[1280], expected[1280 + 15 * 32 + 17] = 0x65, 0x08
    np.testing.assert_array_equal(data[:2048], expected)
    assert data[2048:2052].view("<f4")[0] == 2.0


def test_tl_unpack_rejects_invalid_indices():
    tl1 = quants.get("tl1")
    data = tl1.pack(rand_codes((32, 8)), 1.0)
    data[3] = 0x9F
    with pytest.raises(CorruptFileError, match="above 8"):
        tl1.unpack(data, (32, 8))
    tl2q = quants.get("tl2")
    data = tl2q.pack(rand_codes((32, 256)), 1.0)
    bad = data.copy()
    bad[0] = 0xE0  # index 14
    with pytest.raises(CorruptFileError, match="above 13"):
        tl2q.unpack(bad, (32, 256))
    bad = data.copy()
    bad[1280] = 0x9F
    with pytest.raises(CorruptFileError, match="above 8"):
        tl2q.unpack(bad, (32, 256))


# --- TL1 / TL2 with other tiles (recorded in the tail) --------------------------------------------

#: (type, shape, tiles) that are valid but not default_tiling's: small BM, bm 64, BK 256 (TL1);
#: BM up to 1024, every BK of the list, remainders two_k 0..128 (TL2).
OTHER_TILINGS = [
    ("tl1", (64, 256), quants.Tiling(32, 64, 32)),
    ("tl1", (128, 512), quants.Tiling(64, 256, 64)),
    ("tl1", (96, 200), quants.Tiling(32, 8, 32)),
    ("tl1", (1024, 64), quants.Tiling(1024, 32, 64)),
    ("tl2", (64, 256), quants.Tiling(32, 192, 32)),
    ("tl2", (96, 288), quants.Tiling(32, 72, 32)),
    ("tl2", (128, 512), quants.Tiling(64, 120, 32)),
    ("tl2", (1024, 264), quants.Tiling(1024, 24, 32)),
    ("tl2", (160, 1024), quants.Tiling(32, 120, 32)),
    ("tl2", (64, 368), quants.Tiling(64, 168, 32)),
]


@pytest.mark.parametrize(("name", "shape", "t"), OTHER_TILINGS)
def test_tl_other_tilings_round_trip_and_follow_the_tile_order(name, shape, t):
    qt = quants.get(name)
    assert t != qt.tiling(shape) and quants.tiling.tiling_error(*shape, name, t) is None
    codes = rand_codes(shape, 11)
    data = qt.pack(codes, 0.375, tiling=t)
    assert data.size == qt.nbytes(shape)  # the size depends on the shape only
    back, scale = qt.unpack(data, shape)  # the tiles come from the tail
    np.testing.assert_array_equal(back, codes)
    assert scale == np.float32(0.375)
    assert qt.recorded_tiling(data, shape) == t
    assert data[-28:-16].view("<u4").tolist() == [t.BM, t.BK, t.bm] and not data[-16:].any()
    ref = (tl1_reference if name == "tl1" else tl2_reference)(codes, t)
    np.testing.assert_array_equal(data[: ref.size], ref)
    # the default packing is a different byte stream of the same codes
    assert not np.array_equal(qt.pack(codes, 0.375), data)


@pytest.mark.parametrize("name", ["tl1", "tl2"])
def test_tl_every_candidate_tiling_round_trips(name):
    shape = (128, 264) if name == "tl2" else (128, 96)
    qt = quants.get(name)
    codes = rand_codes(shape, 5)
    cands = quants.tiling.candidate_tilings(*shape, name)
    assert qt.tiling(shape) in cands and len(cands) > 4
    for t in cands:
        np.testing.assert_array_equal(qt.unpack(qt.pack(codes, 1.0, tiling=t), shape)[0], codes)


@pytest.mark.parametrize("name", ["tl1", "tl2"])
def test_tl_unrecorded_tiles_mean_the_default(name):
    """Files from before the record have zeros after the scale: they unpack with the default."""
    shape = TERNARY_SHAPES[name][2]
    qt = quants.get(name)
    codes = rand_codes(shape, 2)
    data = qt.pack(codes, 0.5)
    assert qt.recorded_tiling(data, shape) == qt.tiling(shape)  # always written, even default
    old = data.copy()
    old[-28:] = 0
    assert qt.recorded_tiling(old, shape) is None
    back, scale = qt.unpack(old, shape)
    np.testing.assert_array_equal(back, codes)
    assert scale == np.float32(0.5)


@pytest.mark.parametrize(
    ("name", "record", "why"),
    [
        ("tl1", [48, 128, 32], "BM = 48 is not a multiple of bm = 32"),
        ("tl1", [64, 128, 48], "bm = 48 is not 32 or 64"),
        ("tl1", [64, 0, 32], "not positive"),
        ("tl1", [2048, 128, 32], "above 1024"),
        ("tl2", [64, 100, 32], "BK = 100 is not a multiple of 24"),
        ("tl2", [64, 96, 64], "bm = 64 is not 32"),
        ("tl2", [0xFFFFFFFF, 96, 32], "BM = 4294967295"),
    ],
)
def test_tl_invalid_tile_record_is_corrupt(name, record, why):
    shape = (128, 256) if name == "tl1" else (64, 256)
    qt = quants.get(name)
    data = qt.pack(rand_codes(shape), 1.0)
    data[-28:-16] = np.array(record, "<u4").view(np.uint8)
    for fn in (qt.unpack, qt.dequantize):
        with pytest.raises(CorruptFileError, match="records tiles") as exc:
            fn(data, shape)
        assert why in str(exc.value) and "convert the model again" in exc.value.hint


def test_tl_pack_refuses_tiles_that_do_not_fit():
    codes = rand_codes((64, 256))
    with pytest.raises(ShapeError, match="BM = 96 does not divide M = 64"):
        quants.get("tl1").pack(codes, 1.0, tiling=quants.Tiling(96, 128, 32))
    with pytest.raises(ShapeError, match="remainder K % BK = 112"):
        quants.get("tl2").pack(np.zeros((64, 400), np.int8), 1.0, tiling=quants.Tiling(64, 144, 32))
    with pytest.raises(ShapeError, match="BK = 512 is above 256") as exc:
        quants.get("tl1").pack(codes, 1.0, tiling=quants.Tiling(64, 512, 32))
    assert "--tune" in exc.value.hint
    with pytest.raises(TypeError):
        quants.get("tl1").pack(codes, 1.0, tiling=(64, 128, 32))


def test_default_tiling_is_the_first_preferred_valid_candidate():
    """default_tiling's search and tiling_error are one rule set."""
    T = quants.tiling
    for m, k in [(2560, 2560), (640, 2560), (3200, 8640), (96, 200), (128, 260), (320, 392)]:
        for name in ("tl1", "tl2"):
            if T.tiling_problem(m, k, name) is not None:
                assert T.candidate_tilings(m, k, name) == []
                continue
            t = T.default_tiling(m, k, name)
            assert T.tiling_error(m, k, name, t) is None
            assert t in T.candidate_tilings(m, k, name) and t.BM <= T.MAX_BM


@pytest.mark.parametrize("model", sorted(MODEL_SHAPES))
@pytest.mark.parametrize("name", ["tl1", "tl2"])
def test_tl_tilings_are_valid_for_model_shapes(model, name):
    for m, k in MODEL_SHAPES[model]:
        t = quants.default_tiling(m, k, name)
        assert t == quants.default_tiling(m, k, quants.get(name).type_id)  # deterministic
        assert m % t.BM == 0 and t.BM % t.bm == 0 and t.BM <= 256
        if name == "tl1":
            assert t.bm in (32, 64) and k % t.BK == 0 and t.BK % t.by == 0 and t.BK <= 256
        else:
            assert t.bm == 32 and t.BK % 24 == 0 and t.BK <= 192 and k >= 256
            assert t.two_k(k) % 32 == 0 and t.two_k(k) <= 256
            assert t.three_k(k) + t.two_k(k) == k
            n_idx, n_sign, n_two = (
                m * t.three_k(k) // 6,
                m * t.three_k(k) // 24,
                m * t.two_k(k) // 4,
            )
            assert n_idx + n_sign + n_two <= tl2.size_bound(m, k)
        quants.get(name).check_shape((m, k), "w")


def test_tl_round_trip_on_a_real_shape():
    shape = (640, 2560)  # 2B-4T attn_k / attn_v
    codes = rand_codes(shape, 3)
    for name in ("tl1", "tl2"):
        qt = quants.get(name)
        back, scale = qt.unpack(qt.pack(codes, 0.5), shape)
        np.testing.assert_array_equal(back, codes)


def test_default_tiling_errors_say_why_and_what_to_use():
    with pytest.raises(ShapeError, match="M = 48 is not a multiple of 32") as exc:
        quants.default_tiling(48, 2560, "tl2")
    assert "i2_s" in exc.value.hint
    with pytest.raises(ShapeError, match="below 256"):
        quants.default_tiling(64, 128, "tl2")
    with pytest.raises(ShapeError, match="multiple of 32"):
        quants.default_tiling(64, 260, "tl2")
    with pytest.raises(ShapeError, match="K = 36 is not a multiple of 8"):
        quants.default_tiling(32, 36, "tl1")
    with pytest.raises(ValueError):
        quants.default_tiling(64, 256, "i2_s")


# --- shape errors -------------------------------------------------------------------------------


def test_check_shape_names_tensor_shape_and_able_types():
    with pytest.raises(ShapeError) as exc:
        quants.get("tl2").check_shape((48, 2560), "blk.0.attn_k.weight")
    msg = str(exc.value)
    assert "'blk.0.attn_k.weight'" in msg and "(48, 2560)" in msg and "tl2" in msg
    assert "i2_s, tq1_0, tq2_0" in msg and "tl1" not in msg.split("hold it:")[1]
    assert "i2_s" in exc.value.hint

    with pytest.raises(ShapeError) as exc:
        quants.get("i2_s").check_shape((64, 100), "blk.3.ffn_down.weight")
    assert "K = 100" in str(exc.value) and "hold it: tl1." in str(exc.value)  # bm = 64, BK = 4
    with pytest.raises(ShapeError) as exc:
        quants.get("i2_s").check_shape((48, 100), "blk.3.ffn_down.weight")
    assert "hold it: none" in str(exc.value) and "shapes" in exc.value.hint

    with pytest.raises(ShapeError, match="q8_0.*f32, f16, bf16"):
        quants.get("q8_0").check_shape((10, 20), "token_embd.weight")
    with pytest.raises(ShapeError, match="2-D"):
        quants.get("tl1").check_shape((4096,), "x")
    with pytest.raises(ShapeError, match="no elements"):
        quants.get("f16").check_shape((0, 4))
    with pytest.raises(ShapeError):
        quants.get("tq2_0").nbytes((4, 128))


def test_types_for_shape():
    assert quants.types_for_shape((640, 2560), ternary=True) == list(quants.TERNARY_NAMES)
    assert quants.types_for_shape((3, 384), ternary=True) == ["i2_s"]
    assert quants.types_for_shape((7, 33)) == ["f32", "f16", "bf16"]


# --- TQ1_0 / TQ2_0 ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tq1_0", "tq2_0"])
def test_tq_pack_matches_gguf_quantizer(name):
    codes = rand_codes((4, 1024), 5)
    codes[0, :256] = 1
    codes[1, :256] = -1
    scale = 0.6875  # exact in fp16; gguf derives d = max|x| per block = scale
    x = codes.astype(np.float32) * np.float32(scale)
    ref = gguf.quants.quantize(x, gguf.GGMLQuantizationType[name.upper()]).reshape(-1)
    np.testing.assert_array_equal(quants.get(name).pack(codes, scale), ref)


@pytest.mark.parametrize("name", ["tq1_0", "tq2_0"])
def test_tq_dequantize_matches_gguf_on_arbitrary_blocks(name):
    qt = quants.get(name)
    shape = (2, 512)
    data = np.random.default_rng(9).integers(0, 256, qt.nbytes(shape), dtype=np.uint8)
    size = 54 if name == "tq1_0" else 66
    d = np.array([0.3, -2.0, 7.5, 0.001], "<f2").view(np.uint8).reshape(4, 2)
    data.reshape(-1, size)[:, -2:] = d  # a different finite d per block
    ref = gguf.quants.dequantize(data.reshape(2, -1), gguf.GGMLQuantizationType[name.upper()])
    np.testing.assert_array_equal(qt.dequantize(data, shape), ref.reshape(shape))
    with pytest.raises(UsageError, match="different scale"):
        qt.unpack(data, shape)


def test_tq2_0_layout_and_invalid_code():
    codes = np.zeros((1, 256), np.int8)
    codes[0, 0] = 1  # byte 0 bits 1:0 (LSB first)
    codes[0, 32] = -1  # byte 0 bits 3:2
    codes[0, 128 + 96 + 5] = 1  # byte 32 + 5, bits 7:6
    qt = quants.get("tq2_0")
    data = qt.pack(codes, 1.0)
    assert data[0] == 0b01_01_00_10 and data[37] == 0b10_01_01_01 and data[1] == 0x55
    assert data[64:66].tobytes() == np.array([1.0], "<f2").tobytes()
    data[3] = 0xFF
    with pytest.raises(CorruptFileError, match="0b11"):
        qt.unpack(data, (1, 256))


def test_tq1_0_layout():
    codes = np.zeros((1, 256), np.int8)  # all trits 1: q = 121 -> ceil(121*256/243) = 128
    data = quants.get("tq1_0").pack(codes, 1.0)
    assert (data[:48] == 128).all()
    assert (data[48:52] == (40 * 3 * 256 + 242) // 243).all()  # qh: 4 trits, then x3
    with pytest.raises(ValueError, match="fp16"):
        quants.get("tq1_0").pack(codes, 1e6)


# --- floats and embeddings ----------------------------------------------------------------------


def test_float_round_trips():
    x = np.random.default_rng(2).standard_normal((5, 7)).astype(np.float32)
    np.testing.assert_array_equal(
        quants.get("f32").dequantize(quants.get("f32").quantize(x), x.shape), x
    )
    f16 = quants.get("f16").dequantize(quants.get("f16").quantize(x), x.shape)
    np.testing.assert_array_equal(f16, x.astype(np.float16).astype(np.float32))
    bf = quants.get("bf16").dequantize(quants.get("bf16").quantize(x), x.shape)
    np.testing.assert_array_equal(bf, quants.round_to_bf16(x))
    assert quants.get("f16").quantize(x).size == quants.get("f16").nbytes(x.shape)


def test_bf16_helpers_round_half_even_and_specials():
    x = np.array(
        [1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-8 + 2**-20, -0.0, np.inf, -np.inf, 3e38],
        np.float32,
    )
    bits = quants.f32_to_bf16_bits(x)
    assert bits[0] == 0x3F80 and bits[1] == 0x3F80  # tie -> even
    assert bits[2] == 0x3F82  # tie -> even (up)
    assert bits[3] == 0x3F81  # above the tie -> up
    assert bits[4] == 0x8000 and bits[5] == 0x7F80 and bits[6] == 0xFF80
    nan = quants.f32_to_bf16_bits(np.array([np.nan], np.float32))
    assert np.isnan(quants.bf16_bits_to_f32(nan))[0]
    # Same as gguf-py's BF16 (a port of ggml_compute_fp32_to_bf16), specials included.
    y = np.concatenate([x, np.random.default_rng(0).standard_normal(1000).astype(np.float32)])
    ref = gguf.quants.quantize(y, gguf.GGMLQuantizationType.BF16).view("<u2")
    np.testing.assert_array_equal(quants.f32_to_bf16_bits(y), ref)
    np.testing.assert_array_equal(quants.bf16_bits_to_f32(bits)[:2], [1.0, 1.0])


@pytest.mark.parametrize("name", ["q8_0", "q4_0"])
def test_q8_0_q4_0_agree_with_gguf(name):
    x = np.random.default_rng(4).standard_normal((6, 96)).astype(np.float32)
    x[1] = 0.0
    qt = quants.get(name)
    data = qt.quantize(x)
    ref = gguf.quants.quantize(x, gguf.GGMLQuantizationType[name.upper()]).reshape(-1)
    np.testing.assert_array_equal(data, ref)
    deq = qt.dequantize(data, x.shape)
    np.testing.assert_array_equal(
        deq, gguf.quants.dequantize(ref.reshape(6, -1), gguf.GGMLQuantizationType[name.upper()])
    )
    assert np.abs(deq - x).max() < (0.02 if name == "q8_0" else 0.3)


def q6k_golden_input() -> np.ndarray:
    """Deterministic, platform-independent test data (integer hash, no RNG, no libm)."""
    i = np.arange(8 * 1024, dtype=np.int64)
    u = ((i * 2654435761) % (1 << 32)).astype(np.float64) / (1 << 32) - 0.5
    x = u.astype(np.float32).reshape(8, 1024)
    x[1] = 0.0  # all-zero super-blocks
    x[2, :16] = 0.0  # one all-zero sub-block
    x[2, 40:300:3] = 0.0
    x[3] *= np.float32(1e-3)
    x[4, ::17] *= np.float32(40.0)  # spikes
    x[5] = x[5] ** 3  # heavy tail
    x[6] = np.float32(0.02) * x[6]
    x[7, :256] = np.float32(0.25)  # a constant block
    return x


#: sha256 of the pinned tree's `quantize_row_q6_K_ref` on `q6k_golden_input()`
#: (ggml-quants.c compiled with gcc -O2 -ffp-contract=off).
Q6K_C_DIGEST = "ce98dbe004526057c7ecd033bdcf14aeceb2637d48a81f2a3bcb5feaba0d0e84"


def test_q6_k_matches_the_c_reference():
    x = q6k_golden_input()
    data = quants.get("q6_k").quantize(x)
    assert data.size == quants.get("q6_k").nbytes(x.shape)
    assert hashlib.sha256(data.tobytes()).hexdigest() == Q6K_C_DIGEST
    assert not data[1 * 4 * 210 : 2 * 4 * 210].any()  # all-zero blocks are all-zero bytes


def test_q6_k_dequantize_and_error():
    x = np.random.default_rng(6).standard_normal((4, 512)).astype(np.float32)
    qt = quants.get("q6_k")
    data = qt.quantize(x)
    deq = qt.dequantize(data, x.shape)
    ref = gguf.quants.dequantize(data.reshape(4, -1), gguf.GGMLQuantizationType.Q6_K)
    np.testing.assert_array_equal(deq, ref)
    assert np.sqrt(np.mean((deq - x) ** 2)) < 0.03


def test_q6_k_sequential_sum_is_in_order():
    t = np.random.default_rng(0).standard_normal((16, 999)).astype(np.float32)
    t *= np.float32(10.0) ** np.random.default_rng(1).integers(-6, 6, t.shape)
    acc = t[0].copy()
    for row in t[1:]:
        acc += row
    np.testing.assert_array_equal(embedding._seq_sum(t), acc)


def test_chunked_and_threaded_quantize_give_the_same_bytes(monkeypatch):
    x = q6k_golden_input()
    names = ("q6_k", "q8_0", "bf16")
    ref = {n: quants.get(n).quantize(x) for n in names}
    ref_deq = {n: quants.get(n).dequantize(ref[n], x.shape) for n in names}
    monkeypatch.setattr(base, "CHUNK_ELEMENTS", 1024)
    monkeypatch.setattr(embedding.Q6_K, "quantize_chunk", 512)
    monkeypatch.setattr(embedding.Q6_K, "quantize_threads", 3)
    for n in names:
        qt = quants.get(n)
        np.testing.assert_array_equal(qt.quantize(x), ref[n])
        np.testing.assert_array_equal(qt.dequantize(ref[n], x.shape), ref_deq[n])


def test_block_types_reject_wrong_sizes():
    with pytest.raises(CorruptFileError):
        quants.get("q8_0").dequantize(np.zeros(33, np.uint8), (1, 32))
    with pytest.raises(ValueError, match="uint8"):
        quants.get("f32").dequantize(np.zeros(4, np.float32), (4,))


# --- absmean ------------------------------------------------------------------------------------


def test_ternarize_absmean_rounds_half_to_even_and_rounds_scale_to_bf16():
    w = np.array([[2.5, 0.5, 0.5, 0.5]], np.float32)  # mean|W| = 1.0
    codes, scale = quants.ternarize_absmean(w)
    np.testing.assert_array_equal(codes, [[1, 0, 0, 0]])  # 2.5 -> 2 -> 1; 0.5 -> 0 (even)
    assert codes.dtype == np.int8 and scale == 1.0

    w = np.array([[1.0, 0.0, 0.0]], np.float32)  # mean = 1/3, not a bf16 value
    codes, scale = quants.ternarize_absmean(w)
    assert isinstance(scale, float)
    assert scale == float(quants.round_to_bf16(np.float32(1 / 3))) != float(np.float32(1 / 3))
    np.testing.assert_array_equal(codes, [[1, 0, 0]])


def test_ternarize_absmean_uses_the_unrounded_mean_for_codes():
    rng = np.random.default_rng(11)
    w = rng.standard_normal((64, 128)).astype(np.float32)
    codes, scale = quants.ternarize_absmean(w)
    mean = np.float32(np.abs(w.astype(np.float64)).mean())
    np.testing.assert_array_equal(codes, np.clip(np.rint(w / mean), -1, 1).astype(np.int8))
    assert scale == float(quants.round_to_bf16(mean))


def test_ternarize_absmean_all_zero_clamps_the_scale():
    codes, scale = quants.ternarize_absmean(np.zeros((4, 8), np.float32))
    assert not codes.any()
    assert scale == float(quants.round_to_bf16(np.float32(1e-5)))


def test_ternarize_then_pack_is_stable_for_ternary_inputs():
    # A tensor that is already t * s (the packed checkpoint) ternarises back to t exactly.
    codes = rand_codes((32, 256))
    codes[0, 0] = 1
    w = codes.astype(np.float32) * np.float32(0.75)
    again, _ = quants.ternarize_absmean(w)
    np.testing.assert_array_equal(again, codes)
