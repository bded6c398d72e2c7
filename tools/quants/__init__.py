"""Packed tensor types as NumPy pack/unpack: one small registered class per ggml type.

    from bitnet.tools import quants
    qt = quants.get("i2_s")                  # or quants.get(GGMLType.I2_S), quants.get(36)
    data = qt.pack(codes, scale)             # ternary: int8 codes (M, K) + one float scale
    codes, scale = qt.unpack(data, (M, K))
    emb = quants.get("q6_k").quantize(x)     # float/embedding types: quantize + dequantize

Byte layouts are documented in each module and in docs/formats.md.
ref: shared/spec/bitnet-formats.md §2 (I2_S), §3 (TL1/TL2); ggml-common.h / ggml-quants.c of
the pinned upstream tree for TQ1_0, TQ2_0, Q8_0, Q6_K, Q4_0.
"""

from __future__ import annotations

# Importing the type modules registers their classes (ternary types in this order).
from . import embedding, floats, i2s, tl1, tl2, tq  # noqa: F401
from .base import BlockType, QuantType, TernaryType, get, names, types_for_shape
from .ternary import (
    absmean_scale,
    bf16_bits_to_f32,
    f32_to_bf16_bits,
    round_to_bf16,
    ternarize_absmean,
)
from .tiling import Tiling, default_tiling

#: Types that hold ternary linear weights (pack/unpack).
TERNARY_NAMES: tuple[str, ...] = ("i2_s", "tl1", "tl2", "tq1_0", "tq2_0")
#: Types offered for the token embedding / output matrix (quantize/dequantize).
EMBEDDING_NAMES: tuple[str, ...] = ("f32", "f16", "bf16", "q8_0", "q6_k", "q4_0")

__all__ = [
    "EMBEDDING_NAMES",
    "TERNARY_NAMES",
    "BlockType",
    "QuantType",
    "TernaryType",
    "Tiling",
    "absmean_scale",
    "bf16_bits_to_f32",
    "default_tiling",
    "f32_to_bf16_bits",
    "get",
    "names",
    "round_to_bf16",
    "ternarize_absmean",
    "types_for_shape",
]
