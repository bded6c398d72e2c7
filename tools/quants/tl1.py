"""TL1 (ggml type 38): the ARM lookup-table layout, 2 weights -> one 4-bit index.

ref: shared/spec/bitnet-formats.md §3.1 (encoding and tile order), §3.3 (scale location).

    pair (w0, w1) = (w[2p], w[2p+1]) of one row  ->  idx = 3*w0 + w1 + 4   (0..8, 4 = both zero)
    byte = idx(pair 2q) << 4 | idx(pair 2q+1)     (4 consecutive K elements of one row)
    byte order (outer -> inner), tiles (BM, BK, bm) (default: `default_tiling(M, K, "tl1")`),
    by = 256 / bm:
        [M/BM][K/BK][BM/bm][BK/by][bm/16][by/4][16 rows]
    tensor = M*K/4 index bytes, then 32 tail bytes: f32 LE scale, BM, BK, bm as uint32 LE
    (all zero in files from before the record: default tiles), 16 zero bytes.

Microsoft writes the scale as a separate `<name>_scale` F32 tensor that its kernels reach by
reading past the end of the weight; we keep it inside the tensor's own bytes (spec §8 trap 9).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bitnet.tools.constants import TERNARY_TAIL_BYTES, GGMLType
from bitnet.tools.errors import CorruptFileError

from .base import Shape, TernaryType, as_shape, register
from .tiling import TiledTernaryMixin, Tiling

#: Axis order taking the (M, K/2) pair-index grid, split as
#: (M/BM, BM/bm, bm/16, 16, K/BK, BK/by, by/4, 2), to the on-disk order.
_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)
_INVERSE = tuple(int(i) for i in np.argsort(_ORDER))


def _split_shape(m: int, k: int, t: Tiling) -> tuple[int, ...]:
    by = t.by
    return (m // t.BM, t.BM // t.bm, t.bm // 16, 16, k // t.BK, t.BK // by, by // 4, 2)


def pair_index(codes: np.ndarray) -> np.ndarray:
    """(M, K) ternary codes -> (M, K/2) TL1 pair indices 3*w0 + w1 + 4 (uint8)."""
    return (3 * codes[:, 0::2] + codes[:, 1::2] + 4).astype(np.uint8)


def pair_codes(idx: np.ndarray) -> np.ndarray:
    """(M, K/2) pair indices 0..8 -> (M, K) int8 codes (inverse of `pair_index`)."""
    m, half = idx.shape
    out = np.empty((m, 2 * half), dtype=np.int8)
    out[:, 0::2] = idx // 3
    out[:, 1::2] = idx % 3
    out -= 1
    return out


@register
class TL1(TiledTernaryMixin, TernaryType):
    name = "tl1"
    type_id = GGMLType.TL1

    def _nbytes(self, shape: Shape) -> int:
        return shape[0] * shape[1] // 4 + TERNARY_TAIL_BYTES

    def pack(self, codes: np.ndarray, scale: float, tiling: Tiling | None = None) -> np.ndarray:
        """Pack (M, K) codes and a scale with `tiling` (default: `default_tiling`), recorded in
        the tail."""
        c = self._codes(codes)
        s = self._scale(scale)
        m, k = c.shape
        t = self._pack_tiling(c.shape, tiling)
        grid = pair_index(c).reshape(_split_shape(m, k, t)).transpose(_ORDER)
        out = np.empty(m * k // 4 + TERNARY_TAIL_BYTES, dtype=np.uint8)
        body = out[: m * k // 4].reshape(grid.shape[:-1])
        np.left_shift(grid[..., 0], 4, out=body)
        body |= grid[..., 1]
        out[m * k // 4 :] = self._tl_tail(s, t)
        return out

    def unpack(self, data: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.float32]:
        shape = as_shape(shape)
        flat = self._data(data, shape)
        m, k = shape
        t = self._unpack_tiling(flat, shape)
        split = _split_shape(m, k, t)
        body = flat[: m * k // 4].reshape(tuple(split[i] for i in _ORDER[:-1]))
        grid = np.stack([body >> 4, body & np.uint8(15)], axis=-1)
        idx = grid.transpose(_INVERSE).reshape(m, k // 2)
        if np.any(idx > 8):
            raise CorruptFileError(
                "tl1 tensor contains a pair index above 8.",
                hint="the file is corrupt or not a TL1 tensor; convert the model again",
            )
        return pair_codes(idx), self._read_scale(flat, m * k // 4)
