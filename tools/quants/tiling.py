"""Tile sizes (BM, BK, bm) of the TL1/TL2 lookup-table layouts, chosen from (M, K) alone.

The packers (`tl1.py`, `tl2.py`) and the kernel code generator must agree on the tiles, so both
call `default_tiling`: a deterministic function of the weight shape (never of a model name —
spec §8 trap 12). ref: shared/spec/bitnet-formats.md §3.4 (constraints), §3.1/§3.2 (`by`).

TL1 (ARM): M % BM == 0, K % BK == 0, BM % bm == 0, bm in {32, 64}, by = 256 / bm and
    BK % by == 0. BK <= 256 keeps the int16 LUT accumulator of a BK tile in range
    (BK/2 pairs x |b0 + b1| <= 254 -> 32512).
TL2 (x86): bm == 32, M % BM == 0, BM % 32 == 0, BK % 24 == 0 (groups of 3, 2 per byte, 8 per
    sign word), two_k = K % BK a multiple of 32 and <= 256, K >= 256 (the size bound P of
    §3.2 assumes it). BK <= 192 keeps |acc16| <= (BK/3) x 381 = 24384.
"""

from __future__ import annotations

from dataclasses import dataclass

from bitnet.tools.constants import GGMLType
from bitnet.tools.errors import ShapeError

#: Largest BM we pick (a multiple of bm dividing M); bigger tiles mean fewer, longer tasks.
MAX_BM = 256
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
        by = 256 // bm
        bm_tile = _pick_bm_tile(m, bm)
        if bm_tile is None:
            continue
        for bk in TL1_BK:
            if bk % by == 0 and k % bk == 0:
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
        two_k = k % bk
        if two_k % TL2_TWO_BK == 0 and two_k <= 256:
            return Tiling(BM=bm_tile, BK=bk, bm=TL2_BM_SUB)
    return (
        f"K = {k} cannot be split into a multiple of BK (a multiple of 24, at most 192) "
        f"plus a multiple of 32"
    )


class TiledTernaryMixin:
    """Shape checks and tiles of a ternary type packed in (BM, BK, bm) tiles (TL1, TL2).

    The tiles are not stored in the file: packer, unpacker and kernels agree through
    `default_tiling` alone.
    """

    name: str

    def shape_problem(self, shape: tuple[int, ...]) -> str | None:
        if len(shape) != 2:
            return f"{self.name.upper()} stores 2-D (M, K) weights only"
        return tiling_problem(shape[0], shape[1], self.name)

    def tiling(self, shape: tuple[int, ...]) -> Tiling:
        """The tiles this type packs an (M, K) weight with."""
        m, k = (int(d) for d in shape)
        return default_tiling(m, k, self.name)
