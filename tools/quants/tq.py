"""TQ1_0 (ggml type 34) and TQ2_0 (35): upstream ggml's ternary block types.

Byte layouts exactly as the pinned tree (ggml-common.h `block_tq1_0` / `block_tq2_0`,
ggml-quants.c `quantize_row_tq*_0_ref` / `dequantize_row_tq*_0`); blocks of QK_K = 256
elements along the rows, trit/code t = value + 1:

    TQ2_0 (66 B): qs[64], fp16 d. Element 128*c + 32*n + m sits in byte 32*c + m, bits 2n+1:2n
        (LSB first -- the opposite of I2_S).
    TQ1_0 (54 B): qs[48], qh[4], fp16 d. Five trits per byte as a base-3 fraction:
        byte = ceil(256 * q / 243) with q = sum t_i * 3^(4-i); digit i is read back as
        ((byte * 3^i) mod 256) * 3 >> 8. qs[0:32]: elements m + 32*i (i = 0..4) of the first
        160; qs[32:48]: elements 160 + m + 16*i; qh[0:4]: 4 trits, elements 240 + j + 4*i, with
        q multiplied by 3 first (the first trit is the most significant of five).

`pack(codes, scale)` writes d = fp16(scale) in every block, so `unpack` can return one per-tensor
scale. Files quantized by upstream llama-quantize carry a different d per block: `dequantize`
reads those exactly (per-block d, like the C code), `unpack` refuses them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bitnet.tools.constants import BLOCK_GEOMETRY, GGMLType
from bitnet.tools.errors import CorruptFileError, UsageError

from .base import Shape, TernaryType, as_shape, register

QK_K = 256
_POW3_5 = np.array([81, 27, 9, 3, 1], dtype=np.uint16)  # most significant trit first
_POW3_4 = np.array([27, 9, 3, 1], dtype=np.uint16)
_DIGIT_MUL = np.array([1, 3, 9, 27, 81], dtype=np.uint8)  # digit i: (byte * 3^i) mod 256


class _TQBase(TernaryType):
    """Shared geometry: whole 256-element blocks per row, fp16 d at the end of each block."""

    def shape_problem(self, shape: Shape) -> str | None:
        if shape[-1] % QK_K:
            return f"its rows (K = {shape[-1]}) are not a multiple of {QK_K}"
        return None

    def _nbytes(self, shape: Shape) -> int:
        blk, size = BLOCK_GEOMETRY[self.type_id]
        return int(np.prod(shape, dtype=np.int64)) // blk * size

    def _blocks(self, data: np.ndarray | bytes, shape: Shape) -> np.ndarray:
        size = BLOCK_GEOMETRY[self.type_id][1]
        return self._data(data, shape).reshape(-1, size)

    @staticmethod
    def _d16(scale: float) -> np.ndarray:
        s = TernaryType._scale(scale)
        with np.errstate(over="ignore"):
            d = np.array([s], dtype="<f2")
        if not np.isfinite(d[0]):
            raise ValueError(f"scale {float(s)} does not fit in fp16 (TQ block scale)")
        return d.view(np.uint8)

    def _values(self, blocks: np.ndarray) -> np.ndarray:
        """(nb, size) block bytes -> (nb, 256) codes t = value + 1 (uint8)."""
        raise NotImplementedError

    def unpack(self, data: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.float32]:
        shape = as_shape(shape)
        blocks = self._blocks(data, shape)
        d_bits = blocks[:, -2:].copy().view("<u2").reshape(-1)
        if np.any(d_bits != d_bits[0]):
            raise UsageError(
                f"{self.name} tensor has a different scale in each block (written by another "
                "tool), so it has no single per-tensor scale.",
                hint="read it with dequantize() instead of unpack()",
            )
        scale = np.float32(blocks[0, -2:].copy().view("<f2")[0])
        t = self._values(blocks)
        if np.any(t > 2):
            raise CorruptFileError(
                f"{self.name} tensor contains the invalid 2-bit code 0b11.",
                hint="the file is corrupt; convert the model again",
            )
        codes = t.view(np.int8)
        codes -= 1
        return codes.reshape(shape), scale

    def dequantize(self, data: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        """Per-block `(float)(t - 1) * d`, exactly like ggml's `dequantize_row_tq*_0`."""
        shape = as_shape(shape)
        blocks = self._blocks(data, shape)
        d = blocks[:, -2:].copy().view("<f2").astype(np.float32)  # (nb, 1)
        t = self._values(blocks).astype(np.int16) - 1
        return (t.astype(np.float32) * d).reshape(shape)


@register
class TQ1_0(_TQBase):
    name = "tq1_0"
    type_id = GGMLType.TQ1_0

    def pack(self, codes: np.ndarray, scale: float) -> np.ndarray:
        c = self._codes(codes)
        d = self._d16(scale)
        t = (c.reshape(-1, QK_K) + 1).astype(np.uint16)  # trits 0..2
        nb = t.shape[0]
        out = np.empty((nb, 54), dtype=np.uint8)
        # Five trits per byte, most significant first: 32 bytes over elements 0..159 ...
        q_a = (t[:, :160].reshape(nb, 5, 32) * _POW3_5[:, None]).sum(axis=1)
        # ... 16 bytes over elements 160..239 ...
        q_b = (t[:, 160:240].reshape(nb, 5, 16) * _POW3_5[:, None]).sum(axis=1)
        # ... and 4 trits per qh byte over 240..255, shifted up one trit (x3).
        q_c = (t[:, 240:].reshape(nb, 4, 4) * _POW3_4[:, None]).sum(axis=1) * 3
        q = np.concatenate([q_a, q_b, q_c], axis=1).astype(np.uint16)
        # Ceiling division: byte = ceil(q * 256 / 243) (243 = 3^5).
        out[:, :52] = (q * 256 + 242) // 243
        out[:, 52:] = d
        return out.reshape(-1)

    def _values(self, blocks: np.ndarray) -> np.ndarray:
        nb = blocks.shape[0]

        def digits(b: np.ndarray, n: int) -> np.ndarray:
            # digit i = ((byte * 3^i) mod 256) * 3 >> 8, laid out i-major.
            q = b[:, None, :] * _DIGIT_MUL[:n, None]  # uint8 multiply wraps mod 256
            return ((q.astype(np.uint16) * 3) >> 8).astype(np.uint8).reshape(nb, -1)

        return np.concatenate(
            [digits(blocks[:, :32], 5), digits(blocks[:, 32:48], 5), digits(blocks[:, 48:52], 4)],
            axis=1,
        )


@register
class TQ2_0(_TQBase):
    name = "tq2_0"
    type_id = GGMLType.TQ2_0

    def pack(self, codes: np.ndarray, scale: float) -> np.ndarray:
        c = self._codes(codes)
        d = self._d16(scale)
        t = (c.reshape(-1, 2, 4, 32) + 1).view(np.uint8)  # (nb, chunk c, group n, m)
        nb = t.shape[0]
        out = np.empty((nb, 66), dtype=np.uint8)
        qs = out[:, :64].reshape(nb, 2, 32)
        np.copyto(qs, t[:, :, 0])
        qs |= t[:, :, 1] << 2
        qs |= t[:, :, 2] << 4
        qs |= t[:, :, 3] << 6
        out[:, 64:] = d
        return out.reshape(-1)

    def _values(self, blocks: np.ndarray) -> np.ndarray:
        nb = blocks.shape[0]
        qs = blocks[:, :64].reshape(nb, 2, 1, 32)
        shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
        return ((qs >> shifts) & np.uint8(3)).reshape(nb, QK_K)
