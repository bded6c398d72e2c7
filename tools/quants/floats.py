"""F32 (ggml type 0), F16 (1) and BF16 (30): plain little-endian floats, one per element.

F16 and BF16 round to nearest even (NumPy's float16 cast; `f32_to_bf16_bits`, which matches
ggml's `ggml_compute_fp32_to_bf16`, NaN kept quiet). Values beyond the fp16 range become inf.
"""

from __future__ import annotations

import numpy as np

from bitnet.tools.constants import GGMLType

from .base import BlockType, register
from .ternary import bf16_bits_to_f32, f32_to_bf16_bits


@register
class F32(BlockType):
    name = "f32"
    type_id = GGMLType.F32

    def _quantize_rows(self, x: np.ndarray) -> np.ndarray:
        return x.astype("<f4", copy=False).view(np.uint8)

    def _dequantize_rows(self, b: np.ndarray, k: int) -> np.ndarray:
        return b.view("<f4").astype(np.float32)


@register
class F16(BlockType):
    name = "f16"
    type_id = GGMLType.F16

    def _quantize_rows(self, x: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return x.astype("<f2").view(np.uint8)

    def _dequantize_rows(self, b: np.ndarray, k: int) -> np.ndarray:
        return b.view("<f2").astype(np.float32)


@register
class BF16(BlockType):
    name = "bf16"
    type_id = GGMLType.BF16

    def _quantize_rows(self, x: np.ndarray) -> np.ndarray:
        return f32_to_bf16_bits(x).astype("<u2").view(np.uint8)

    def _dequantize_rows(self, b: np.ndarray, k: int) -> np.ndarray:
        return bf16_bits_to_f32(b.view("<u2"))
