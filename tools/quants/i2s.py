"""I2_S (ggml type 36): 2-bit ternary codes, one f32 scale per tensor.

ref: shared/spec/bitnet-formats.md §2.1 (codes, 128/32 block layout) and §2.2 (size n/4 + 32,
scale at byte n/4). This is the byte layout of Microsoft's published x86 GGUF files; we use it on
every CPU.

    code = value + 1            (-1 -> 0b00, 0 -> 0b01, +1 -> 0b10; 0b11 is never written)
    block of 128 elements -> 32 bytes; byte j holds elements j, j+32, j+64, j+96 in bits
    7:6, 5:4, 3:2, 1:0 (MSB first). Blocks follow the flat row-major element order.
    tensor = n/4 code bytes, then 32 tail bytes: f32 LE scale, 28 zero bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bitnet.tools.constants import QK_I2_S, TERNARY_TAIL_BYTES, GGMLType
from bitnet.tools.errors import CorruptFileError

from .base import Shape, TernaryType, as_shape, register

#: Bit shift of the 4 groups of 32 elements within a block's bytes (MSB first).
_SHIFTS = np.array([6, 4, 2, 0], dtype=np.uint8).reshape(1, 4, 1)
_GROUP = QK_I2_S // 4  # 32 elements per group = bytes per block


@register
class I2S(TernaryType):
    name = "i2_s"
    type_id = GGMLType.I2_S

    def shape_problem(self, shape: Shape) -> str | None:
        if shape[-1] % QK_I2_S:
            return f"its rows (K = {shape[-1]}) are not a multiple of {QK_I2_S}"
        return None

    def _nbytes(self, shape: Shape) -> int:
        return int(np.prod(shape, dtype=np.int64)) // 4 + TERNARY_TAIL_BYTES

    def pack(self, codes: np.ndarray, scale: float) -> np.ndarray:
        c = self._codes(codes)
        s = self._scale(scale)
        n = c.size
        out = np.empty(n // 4 + TERNARY_TAIL_BYTES, dtype=np.uint8)
        # (blocks, group g, position j): element 32*g + j of each block; code = value + 1.
        u = (c.reshape(-1, 4, _GROUP) + 1).view(np.uint8)
        packed = out[: n // 4].reshape(-1, _GROUP)
        np.left_shift(u[:, 0], 6, out=packed)
        packed |= u[:, 1] << 4
        packed |= u[:, 2] << 2
        packed |= u[:, 3]
        out[n // 4 :] = self._tail(s)
        return out

    def unpack(self, data: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.float32]:
        shape = as_shape(shape)
        flat = self._data(data, shape)
        n = int(np.prod(shape, dtype=np.int64))
        blocks = flat[: n // 4].reshape(-1, 1, _GROUP)
        codes = (blocks >> _SHIFTS) & np.uint8(3)  # (blocks, 4, 32) in element order
        if np.any(codes == 3):
            raise CorruptFileError(
                "i2_s tensor contains the invalid 2-bit code 0b11.",
                hint="the file is corrupt or not an I2_S tensor; convert the model again",
            )
        values = codes.view(np.int8)
        values -= 1
        return values.reshape(shape), self._read_scale(flat, n // 4)
