"""Absmean ternarisation and bf16 helpers.

ref: shared/spec/bitnet-formats.md §2.3 and §5.3 (absmean `weight_quant`: one scale per whole
tensor, s = mean|W| clamped at 1e-5, codes = clip(round_half_even(W / s), -1, 1)).
"""

from __future__ import annotations

import numpy as np

from .base import row_chunks

#: Lower clamp of the absmean scale (HF `weight_quant`: `clamp_(min=1e-5)`).
ABSMEAN_EPS = np.float32(1e-5)


# --- bf16 -------------------------------------------------------------------------------------


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), round to nearest even; NaN stays a quiet NaN."""
    arr = np.asarray(x, dtype=np.float32)
    u = np.ascontiguousarray(arr).reshape(-1).view(np.uint32)
    # Round half to even on the 16 dropped bits: add 0x7fff plus the lowest kept bit.
    # No overflow: the largest non-NaN pattern (0xff800000, -inf) + 0x8000 fits in 32 bits.
    rounded = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    is_nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    # A NaN keeps its sign and top payload bits and gets the quiet bit (ggml does the same).
    quiet = (u >> np.uint32(16)) | np.uint32(0x40)
    return np.where(is_nan, quiet, rounded).astype(np.uint16).reshape(arr.shape)


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) -> float32 (exact: bf16 is the top half of an f32)."""
    u16 = np.asarray(bits, dtype=np.uint16)
    return (u16.astype(np.uint32) << np.uint32(16)).view(np.float32).reshape(u16.shape)


def round_to_bf16(x: np.ndarray | float) -> np.ndarray:
    """Round float32 values to the nearest bf16 value (returned as float32)."""
    return bf16_bits_to_f32(f32_to_bf16_bits(np.asarray(x, dtype=np.float32)))


# --- absmean ----------------------------------------------------------------------------------


def absmean_scale(w: np.ndarray) -> np.float32:
    """mean|W| over the whole tensor as float32, clamped at 1e-5 (not bf16-rounded).

    The sum is accumulated in float64 over row chunks, so the float32 result is the correctly
    rounded mean (independent of chunking and of NumPy's summation order).
    """
    w = np.asarray(w)
    k = w.shape[-1] if w.ndim else 1
    rows = w.reshape(-1, k)
    total = 0.0
    for sl in row_chunks(rows.shape[0], k):
        total += float(np.abs(rows[sl].astype(np.float64)).sum())
    mean = np.float32(total / max(1, w.size))
    return np.maximum(mean, ABSMEAN_EPS)


def ternarize_absmean(w: np.ndarray) -> tuple[np.ndarray, float]:
    """Ternarise a weight tensor with one absmean scale (spec §2.3 / §5.3).

    - s = mean|W| over the whole tensor (float32, exact mean), clamped at >= 1e-5;
    - codes = clip(round_half_even(W / s), -1, 1) as int8, computed in float32 with the
      *unrounded* s (like HF `weight_quant`);
    - the returned scale is s rounded to bf16 precision: the precision of the official packed
      checkpoint's `weight_scale`, so converting the bf16 master and the packed checkpoint of
      one model gives identical bytes.

    Returns (codes int8 with the shape of `w`, scale as a Python float).
    """
    w = np.asarray(w)
    s = absmean_scale(w)
    k = w.shape[-1] if w.ndim else 1
    rows = w.reshape(-1, k)
    codes = np.empty(rows.shape, dtype=np.int8)
    for sl in row_chunks(rows.shape[0], k):
        q = rows[sl].astype(np.float32) / s  # float32 division, like the f32 reference
        np.rint(q, out=q)  # round half to even
        np.clip(q, -1, 1, out=q)
        codes[sl] = q
    scale = float(round_to_bf16(s).reshape(()))
    return codes.reshape(w.shape), scale
