"""TL2 (our ggml type 43): the x86 lookup-table layout, 3 weights -> sign bit + 4-bit index.

ref: shared/spec/bitnet-formats.md §3.2 (encoding, tile orders, size bound P), §3.3 (scale),
§1 (id: Microsoft's 39 is GGML_TYPE_MXFP4 in the pinned upstream tree, so TL2 takes 43).

Tiles (BM, BK, 32), by default `default_tiling(M, K, "tl2")`: three_k = (K // BK) * BK,
two_k = K - three_k.

    three-part (first three_k columns), groups (w0, w1, w2) = w[3g .. 3g+2] of one row:
        v = 9*w0 + 3*w1 + w2 in [-13, 13];  idx = |v| (4 bits), sign = 1 if v < 0
        index bytes: byte = idx(group 2q) << 4 | idx(group 2q+1), order
            [M/BM][three_k/BK][BM/32][BK/6][32 rows], and in every 32-byte row vector the
            8-byte chunks are stored as rows [0-7, 16-23, 8-15, 24-31]      (M*three_k/6 B)
        sign bytes: per block of 32 rows x 8 groups (24 columns) 16 uint16 LE words; word j,
            bit 15 - (2g + h) = sign of group g of row 16h + j; blocks in order
            [M/BM][three_k/BK][BM/32][BK/24]                                 (M*three_k/24 B)
    two-part (last two_k columns): TL1 pair index 3*w0 + w1 + 4, byte = p(2q) << 4 | p(2q+1),
        order [M/BM][two_k/32][BM/32][8][32 rows] with the same 8-byte chunk swap (M*two_k/4 B)

    tensor = [index bytes][sign bytes][two-part bytes], zero-padded to roundup32(P) with
        P = (K - 256) * M // 3 * 5 // 8 + 256 * M // 2 * 4 // 8   (integer ops in this order),
    then 32 tail bytes: f32 LE scale, BM, BK, bm as uint32 LE (all zero in files from before
    the record: default tiles), 16 zero bytes. So nbytes depends on (M, K) only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bitnet.tools.constants import TERNARY_TAIL_BYTES, GGMLType
from bitnet.tools.errors import CorruptFileError

from .base import Shape, TernaryType, as_shape, register
from .tiling import TL2_TWO_BK, TiledTernaryMixin, Tiling
from .tl1 import pair_codes, pair_index

#: Output 8-byte chunk c of a 32-row vector holds rows 8*_CHUNKS[c] .. +7 (self-inverse).
_CHUNKS = [0, 2, 1, 3]
#: (i0, i2, chunk, row8, i1, i3) -> on-disk (i0, i1, i2, i3, chunk, row8).
_TILE_ORDER = (0, 4, 1, 5, 2, 3)
_TILE_INVERSE = tuple(int(i) for i in np.argsort(_TILE_ORDER))
#: Sign bit position of (h, g): bit 15 - (2g + h).
_SIGN_SHIFT = (15 - (2 * np.arange(8)[None, :] + np.arange(2)[:, None])).astype(np.uint16)

#: Balanced-ternary digits (w0, w1, w2) of v = 9*w0 + 3*w1 + w2, indexed by v + 13.
_V = np.arange(-13, 14)
_DIGITS = np.stack(
    [(_V + 13) // 9 - 1, ((_V + 13) // 3) % 3 - 1, (_V + 13) % 3 - 1], axis=1
).astype(np.int8)


def size_bound(m: int, k: int) -> int:
    """P of spec §3.2: the byte bound Microsoft pads TL2 data to (integer ops in this order)."""
    return (k - 256) * m // 3 * 5 // 8 + 256 * m // 2 * 4 // 8


def _roundup32(n: int) -> int:
    return (n + 31) // 32 * 32


def _tile_pairs(idx: np.ndarray, bm_tile: int, per_tile: int) -> np.ndarray:
    """(M, G) 4-bit indices -> TL2-tiled bytes; `per_tile` = indices per K tile (2 per byte)."""
    m, g = idx.shape
    a = idx.reshape(m // bm_tile, bm_tile // 32, 4, 8, g // per_tile, per_tile // 2, 2)
    b = (a[..., 0] << 4) | a[..., 1]  # (i0, i2, chunk, row8, i1, i3)
    b = b[:, :, _CHUNKS]
    return np.ascontiguousarray(b.transpose(_TILE_ORDER)).reshape(-1)


def _untile_pairs(data: np.ndarray, m: int, g: int, bm_tile: int, per_tile: int) -> np.ndarray:
    """Inverse of `_tile_pairs`: bytes -> (M, G) 4-bit indices."""
    split = (m // bm_tile, bm_tile // 32, 4, 8, g // per_tile, per_tile // 2)
    b = data.reshape(tuple(split[i] for i in _TILE_ORDER)).transpose(_TILE_INVERSE)
    b = b[:, :, _CHUNKS]
    return np.stack([b >> 4, b & np.uint8(15)], axis=-1).reshape(m, g)


def _pack_signs(sign: np.ndarray, bm_tile: int, per_tile: int) -> np.ndarray:
    """(M, G) sign bits -> uint16 LE words, blocks of 32 rows x 8 groups (see module doc)."""
    m, g = sign.shape
    a = sign.astype(np.uint16).reshape(
        m // bm_tile, bm_tile // 32, 2, 16, g // per_tile, per_tile // 8, 8
    )  # (i0, i2, h, j, i1, i3, g8)
    shifted = a << _SIGN_SHIFT[None, None, :, None, None, None, :]
    words = shifted.sum(axis=(2, 6), dtype=np.uint16)  # (i0, i2, j, i1, i3); bits are disjoint
    words = words.transpose(0, 3, 1, 4, 2)  # (i0, i1, i2, i3, j)
    return np.ascontiguousarray(words, dtype="<u2").view(np.uint8).reshape(-1)


def _unpack_signs(data: np.ndarray, m: int, g: int, bm_tile: int, per_tile: int) -> np.ndarray:
    """Inverse of `_pack_signs`: bytes -> (M, G) sign bits (uint8 0/1)."""
    words = np.ascontiguousarray(data).view("<u2")
    words = words.reshape(m // bm_tile, g // per_tile, bm_tile // 32, per_tile // 8, 16)
    words = words.transpose(0, 2, 4, 1, 3)[:, :, None, :, :, :, None]  # (i0,i2,1,j,i1,i3,1)
    bits = (words >> _SIGN_SHIFT[None, None, :, None, None, None, :]) & np.uint16(1)
    return bits.astype(np.uint8).reshape(m, g)  # (i0, i2, h, j, i1, i3, g8) -> rows, groups


@register
class TL2(TiledTernaryMixin, TernaryType):
    name = "tl2"
    type_id = GGMLType.TL2

    def _nbytes(self, shape: Shape) -> int:
        m, k = shape
        return _roundup32(size_bound(m, k)) + TERNARY_TAIL_BYTES

    @staticmethod
    def _sections(m: int, k: int, t: Tiling) -> tuple[int, int, int]:
        """Byte lengths of the index, sign and two-part sections."""
        three_k, two_k = t.three_k(k), t.two_k(k)
        return m * three_k // 6, m * three_k // 24, m * two_k // 4

    def pack(self, codes: np.ndarray, scale: float, tiling: Tiling | None = None) -> np.ndarray:
        """Pack (M, K) codes and a scale with `tiling` (default: `default_tiling`), recorded in
        the tail."""
        c = self._codes(codes)
        s = self._scale(scale)
        m, k = c.shape
        t = self._pack_tiling(c.shape, tiling)
        three_k = t.three_k(k)
        n_idx, n_sign, n_two = self._sections(m, k, t)
        body = _roundup32(size_bound(m, k))
        assert n_idx + n_sign + n_two <= body, "TL2 data exceeds its size bound"
        out = np.zeros(body + TERNARY_TAIL_BYTES, dtype=np.uint8)

        # Three-part: v = 9*w0 + 3*w1 + w2 per group of 3 columns; |v| and sign stored apart.
        c3 = c[:, :three_k]
        v = 9 * c3[:, 0::3] + 3 * c3[:, 1::3] + c3[:, 2::3]  # int8, (M, three_k/3)
        if three_k:
            per_tile = t.BK // 3
            out[:n_idx] = _tile_pairs(np.abs(v).astype(np.uint8), t.BM, per_tile)
            out[n_idx : n_idx + n_sign] = _pack_signs((v < 0).astype(np.uint8), t.BM, per_tile)
        # Two-part: TL1 pair indices on the last two_k columns, 16 pairs per 32-column tile.
        if n_two:
            pairs = pair_index(np.ascontiguousarray(c[:, three_k:]))
            out[n_idx + n_sign : n_idx + n_sign + n_two] = _tile_pairs(pairs, t.BM, TL2_TWO_BK // 2)
        out[body:] = self._tl_tail(s, t)
        return out

    def unpack(self, data: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.float32]:
        shape = as_shape(shape)
        flat = self._data(data, shape)
        m, k = shape
        t = self._unpack_tiling(flat, shape)
        three_k, two_k = t.three_k(k), t.two_k(k)
        n_idx, n_sign, n_two = self._sections(m, k, t)
        codes = np.empty((m, k), dtype=np.int8)
        if three_k:
            per_tile = t.BK // 3
            g = three_k // 3
            idx = _untile_pairs(flat[:n_idx], m, g, t.BM, per_tile)
            sign = _unpack_signs(flat[n_idx : n_idx + n_sign], m, g, t.BM, per_tile)
            if np.any(idx > 13):
                raise CorruptFileError(
                    "tl2 tensor contains a group index above 13.",
                    hint="the file is corrupt or not a TL2 tensor; convert the model again",
                )
            v = np.where(sign.astype(bool), -idx.astype(np.int8), idx.astype(np.int8))
            codes[:, :three_k] = _DIGITS[v + 13].reshape(m, three_k)
        if two_k:
            pairs = _untile_pairs(
                flat[n_idx + n_sign : n_idx + n_sign + n_two], m, two_k // 2, t.BM, TL2_TWO_BK // 2
            )
            if np.any(pairs > 8):
                raise CorruptFileError(
                    "tl2 tensor contains a pair index above 8.",
                    hint="the file is corrupt or not a TL2 tensor; convert the model again",
                )
            codes[:, three_k:] = pair_codes(pairs)
        return codes, self._read_scale(flat, _roundup32(size_bound(m, k)))
