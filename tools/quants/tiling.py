"""Tile sizes (BM, BK, bm) of the TL1/TL2 lookup-table layouts.

`default_tiling` picks the tiles from (M, K) alone: a deterministic function of the weight shape
(never of a model name — spec §8 trap 12). Any other valid tiling (`tiling_error` is None, e.g.
one `bitnet codegen --tune` measured faster) can be packed too: the packers record the tiles in
bytes 4-15 of the tensor's 32-byte tail (BM, BK, bm as uint32 LE; all zero = not recorded = a
file from before the record, packed with `default_tiling`), and the kernels read them back.
ref: shared/spec/bitnet-formats.md §3.4 (constraints), §3.1/§3.2 (`by`).

TL1 (ARM): M % BM == 0, K % BK == 0, BM % bm == 0, bm in {32, 64}, by = 256 / bm and
    BK % by == 0. BK <= 256 keeps the int16 LUT accumulator of a BK tile in range
    (BK/2 pairs x |b0 + b1| <= 254 -> 32512).
TL2 (x86): bm == 32, M % BM == 0, BM % 32 == 0, BK % 24 == 0 (groups of 3, 2 per byte, 8 per
    sign word), two_k = K % BK a multiple of 32 and <= 256, K >= 256 (the size bound P of
    §3.2 assumes it). BK <= 192 keeps |acc16| <= (BK/3) x 381 = 24384.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bitnet.tools.constants import TERNARY_TAIL_BYTES, GGMLType
from bitnet.tools.errors import CorruptFileError, ShapeError

#: Largest BM default_tiling picks (a multiple of bm dividing M); bigger tiles mean fewer,
#: longer tasks.
MAX_BM = 256
#: Largest BM the kernels accept (BITNET_TL_MAX_BM in kernels/bitnet-tl-internal.h).
KERNEL_MAX_BM = 1024
#: Byte offset of the tile record (BM, BK, bm as uint32 LE) in the 32-byte tail, after the f32
#: scale (BITNET_TL_TILE_RECORD in kernels/bitnet-tl.h), and its length.
TILE_RECORD_OFFSET = 4
TILE_RECORD_BYTES = 12
#: TL1 BK candidates, in order of preference (the fork's presets use 128 or 64).
TL1_BK = (128, 64, 256, 32, 16, 8, 4)
#: TL2 BK candidates, in order of preference (presets use 96, also 192); all multiples of 24.
TL2_BK = (96, 192, 48, 144, 24, 72, 120, 168)
#: TL2 sub-tile rows (fixed by the AVX2 kernel) and the K width of one sign block.
TL2_BM_SUB = 32
TL2_SIGN_K = 24
#: K width of one two-part (pair-coded remainder) tile.
TL2_TWO_BK = 32


@dataclass(frozen=True)
class Tiling:
    """Tile sizes of one (M, K) weight: BM rows x BK columns per tile, bm rows per sub-tile."""

    BM: int
    BK: int
    bm: int

    @property
    def by(self) -> int:
        """TL1: K elements per sub-tile (256 / bm)."""
        return 256 // self.bm

    def three_k(self, k: int) -> int:
        """TL2: columns coded in groups of 3 (the largest multiple of BK <= K)."""
        return (k // self.BK) * self.BK

    def two_k(self, k: int) -> int:
        """TL2: trailing columns coded as TL1-style pairs (K - three_k)."""
        return k - self.three_k(k)


def _type_key(qtype: str | int | GGMLType) -> str:
    if isinstance(qtype, str):
        key = qtype.strip().lower()
    else:
        key = {int(GGMLType.TL1): "tl1", int(GGMLType.TL2): "tl2"}.get(int(qtype), "")
    if key not in ("tl1", "tl2"):
        raise ValueError(f"default_tiling only knows tl1 and tl2, not {qtype!r}")
    return key


def _pick_bm_tile(m: int, bm: int) -> int | None:
    """Largest multiple of bm that divides M and is at most MAX_BM."""
    for cand in range(MAX_BM - MAX_BM % bm, 0, -bm):
        if m % cand == 0:
            return cand
    return None


def tiling_error(m: int, k: int, qtype: str | int | GGMLType, t: Tiling) -> str | None:
    """Why the tiles `t` cannot tile an (M, K) weight of `qtype` (a clause), or None when they
    can. The rules of kernels/bitnet-tl.c `bitnet_tl_tiling_valid` (docs/formats.md "Tile
    choice"); `default_tiling` returns the first preferred tiling that passes them."""
    key = _type_key(qtype)
    m, k = int(m), int(k)
    bm_tile, bk, bm = int(t.BM), int(t.BK), int(t.bm)
    if m <= 0 or k <= 0:
        return "it has no elements"
    if bm_tile <= 0 or bk <= 0 or bm <= 0:
        return "a tile size is not positive"
    if key == "tl1" and bm not in (32, 64):
        return f"bm = {bm} is not 32 or 64"
    if key == "tl2" and bm != TL2_BM_SUB:
        return f"bm = {bm} is not {TL2_BM_SUB}"
    if bm_tile % bm:
        return f"BM = {bm_tile} is not a multiple of bm = {bm}"
    if bm_tile > KERNEL_MAX_BM:
        return f"BM = {bm_tile} is above {KERNEL_MAX_BM}"
    if m % bm_tile:
        return f"BM = {bm_tile} does not divide M = {m}"
    if key == "tl1":
        if bk > 256:
            return f"BK = {bk} is above 256 (the int16 LUT sums would overflow)"
        if k % bk:
            return f"BK = {bk} does not divide K = {k}"
        if bk % (256 // bm):
            return f"BK = {bk} is not a multiple of by = {256 // bm}"
        return None
    if k < 256:
        return f"K = {k} is below 256 (the TL2 size bound assumes K >= 256)"
    if bk % TL2_SIGN_K or bk > 192:
        return f"BK = {bk} is not a multiple of {TL2_SIGN_K} up to 192"
    two_k = k % bk
    if two_k % TL2_TWO_BK or two_k > 256:
        return f"the remainder K % BK = {two_k} is not a multiple of {TL2_TWO_BK} up to 256"
    return None


def check_tiling(m: int, k: int, qtype: str | int | GGMLType, t: Tiling) -> Tiling:
    """`t` as a Tiling when it can tile an (M, K) weight of `qtype`; ShapeError saying why not."""
    if not isinstance(t, Tiling):
        raise TypeError(f"tiles must be a Tiling(BM, BK, bm), not {type(t).__name__}")
    problem = tiling_error(m, k, qtype, t)
    if problem is not None:
        raise ShapeError(
            f"tiles (BM {t.BM}, BK {t.BK}, bm {t.bm}) cannot tile a ({m}, {k}) "
            f"{_type_key(qtype)} weight because {problem}.",
            hint="use default_tiling(M, K, type) or tiles from `bitnet codegen MODEL --tune`",
        )
    return t


def candidate_tilings(m: int, k: int, qtype: str | int | GGMLType) -> list[Tiling]:
    """Every valid tiling of an (M, K) weight `bitnet codegen --tune` tries: BM any multiple of
    bm dividing M up to KERNEL_MAX_BM, BK any of the type's candidates, bm 32 or 64 (TL1)."""
    key = _type_key(qtype)
    subs = (32, 64) if key == "tl1" else (TL2_BM_SUB,)
    bks = TL1_BK if key == "tl1" else TL2_BK
    out = []
    for bm in subs:
        for bm_tile in range(bm, min(int(m), KERNEL_MAX_BM) + 1, bm):
            for bk in bks:
                t = Tiling(bm_tile, bk, bm)
                if tiling_error(m, k, key, t) is None:
                    out.append(t)
    return out


def tiling_problem(m: int, k: int, qtype: str | int | GGMLType) -> str | None:
    """Why no valid tiling exists for (M, K) (a clause for an error message), or None."""
    found = _search(m, k, qtype)
    return found if isinstance(found, str) else None


def default_tiling(m: int, k: int, qtype: str | int | GGMLType) -> Tiling:
    """Deterministic valid tiles for an (M, K) weight stored as TL1 or TL2.

    Raises ShapeError saying why the shape cannot use the type and which type can.
    """
    found = _search(m, k, qtype)
    if isinstance(found, str):
        raise ShapeError(
            f"a ({m}, {k}) weight cannot use {_type_key(qtype)} because {found}.",
            hint="use i2_s (needs K % 128 == 0) or tq2_0 / tq1_0 (need K % 256 == 0)",
        )
    return found


def _search(m: int, k: int, qtype: str | int | GGMLType) -> Tiling | str:
    key = _type_key(qtype)
    m, k = int(m), int(k)
    if m <= 0 or k <= 0:
        return "it has no elements"
    return _tl1_tiling(m, k) if key == "tl1" else _tl2_tiling(m, k)


def _tl1_tiling(m: int, k: int) -> Tiling | str:
    for bm in (32, 64):
        bm_tile = _pick_bm_tile(m, bm)
        if bm_tile is None:
            continue
        for bk in TL1_BK:
            if tiling_error(m, k, "tl1", Tiling(BM=bm_tile, BK=bk, bm=bm)) is None:
                return Tiling(BM=bm_tile, BK=bk, bm=bm)
    if m % 32:
        return f"M = {m} is not a multiple of 32"
    if m % 64:
        return f"K = {k} is not a multiple of 8"
    return f"K = {k} is not a multiple of 4"


def _tl2_tiling(m: int, k: int) -> Tiling | str:
    bm_tile = _pick_bm_tile(m, TL2_BM_SUB)
    if bm_tile is None:
        return f"M = {m} is not a multiple of {TL2_BM_SUB}"
    if k < 256:
        return f"K = {k} is below 256 (the TL2 size bound assumes K >= 256)"
    for bk in TL2_BK:
        if tiling_error(m, k, "tl2", Tiling(BM=bm_tile, BK=bk, bm=TL2_BM_SUB)) is None:
            return Tiling(BM=bm_tile, BK=bk, bm=TL2_BM_SUB)
    return (
        f"K = {k} cannot be split into a multiple of BK (a multiple of 24, at most 192) "
        f"plus a multiple of 32"
    )


# --- the tile record in the tail ----------------------------------------------------------------


def encode_tile_record(t: Tiling) -> np.ndarray:
    """The 12 record bytes of the tail: BM, BK, bm as little-endian uint32."""
    return np.array([t.BM, t.BK, t.bm], dtype="<u4").view(np.uint8)


def decode_tile_record(tail: np.ndarray) -> tuple[int, int, int]:
    """(BM, BK, bm) from a tensor's 32 tail bytes; (0, 0, 0) = not recorded."""
    rec = np.ascontiguousarray(tail[TILE_RECORD_OFFSET : TILE_RECORD_OFFSET + TILE_RECORD_BYTES])
    bm_tile, bk, bm = (int(v) for v in rec.view("<u4"))
    return bm_tile, bk, bm


class TiledTernaryMixin:
    """Shape checks and tiles of a ternary type packed in (BM, BK, bm) tiles (TL1, TL2).

    `pack` takes any valid tiling (default: `default_tiling`) and records it in the tail;
    `unpack` reads the record back (none recorded: `default_tiling`, as files from before the
    record were packed).
    """

    name: str
    _nbytes: Callable[[tuple[int, ...]], int]

    def shape_problem(self, shape: tuple[int, ...]) -> str | None:
        if len(shape) != 2:
            return f"{self.name.upper()} stores 2-D (M, K) weights only"
        return tiling_problem(shape[0], shape[1], self.name)

    def tiling(self, shape: tuple[int, ...]) -> Tiling:
        """The default tiles of an (M, K) weight (what `pack` uses unless given others)."""
        m, k = (int(d) for d in shape)
        return default_tiling(m, k, self.name)

    def _pack_tiling(self, shape: tuple[int, ...], tiling: Tiling | None) -> Tiling:
        """The tiles to pack with: `tiling` checked against the shape, or the default."""
        if tiling is None:
            return self.tiling(shape)
        m, k = (int(d) for d in shape)
        return check_tiling(m, k, self.name, tiling)

    def _tl_tail(self, scale: np.float32, t: Tiling) -> np.ndarray:
        """The 32 tail bytes: f32 LE scale, the tile record, then zeros."""
        tail = np.zeros(TERNARY_TAIL_BYTES, dtype=np.uint8)
        tail[:4] = np.array([scale], dtype="<f4").view(np.uint8)
        tail[TILE_RECORD_OFFSET : TILE_RECORD_OFFSET + TILE_RECORD_BYTES] = encode_tile_record(t)
        return tail

    def recorded_tiling(self, data: np.ndarray, shape: tuple[int, ...]) -> Tiling | None:
        """The tiles recorded in a packed tensor's tail (None when not recorded: the default);
        CorruptFileError when the record cannot tile the shape."""
        m, k = (int(d) for d in shape)
        flat = np.asarray(data).reshape(-1)
        start = self._nbytes((m, k)) - TERNARY_TAIL_BYTES
        bm_tile, bk, bm = decode_tile_record(flat[start : start + TERNARY_TAIL_BYTES])
        if bm_tile == bk == bm == 0:
            return None
        t = Tiling(bm_tile, bk, bm)
        problem = tiling_error(m, k, self.name, t)
        if problem is not None:
            raise CorruptFileError(
                f"{self.name} tensor of shape ({m}, {k}) records tiles (BM {bm_tile}, BK {bk}, "
                f"bm {bm}) that cannot tile it: {problem}.",
                hint="the file is corrupt; convert the model again",
            )
        return t

    def _unpack_tiling(self, flat: np.ndarray, shape: tuple[int, ...]) -> Tiling:
        return self.recorded_tiling(flat, shape) or self.tiling(shape)
