"""Embedding types Q8_0 (ggml type 8), Q4_0 (2) and Q6_K (14).

Q8_0 and Q4_0 use the PyPI `gguf` package's NumPy quantizers (bit-exact ports of
`quantize_row_q8_0_ref` / `quantize_row_q4_0_ref`); every dequantizer is gguf's. gguf 0.19 has
no Q6_K quantizer, so `_q6_k_quantize` below ports `quantize_row_q6_K_ref` + `make_qx_quants`
(ggml-quants.c of the pinned tree), vectorised over sub-blocks.

Layouts (ggml-common.h): block_q8_0 = fp16 d, int8 qs[32]; block_q4_0 = fp16 d, uint8 qs[16]
(element j in the low nibble of qs[j], element j + 16 in the high nibble, value = nibble - 8);
block_q6_K (256 elements) = ql[128], qh[64], int8 scales[16], fp16 d (see `_q6_k_quantize`).
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from bitnet.tools.constants import GGMLType

from .base import BlockType, register

#: ggml's GROUP_MAX_EPS: amax / scale below this counts as an all-zero group.
GROUP_MAX_EPS = np.float32(1e-15)


class _GGUFBlockType(BlockType):
    """A block type whose NumPy (de)quantizer comes from the `gguf` package."""

    def _gguf_type(self) -> GGMLQuantizationType:
        return GGMLQuantizationType(int(self.type_id))

    def _quantize_rows(self, x: np.ndarray) -> np.ndarray:
        return gguf_quantize(x, self._gguf_type())

    def _dequantize_rows(self, b: np.ndarray, k: int) -> np.ndarray:
        return gguf_dequantize(b, self._gguf_type()).astype(np.float32, copy=False)


@register
class Q8_0(_GGUFBlockType):
    name = "q8_0"
    type_id = GGMLType.Q8_0


@register
class Q4_0(_GGUFBlockType):
    name = "q4_0"
    type_id = GGMLType.Q4_0


@register
class Q6_K(_GGUFBlockType):
    """Q6_K: 256-element super-blocks of 16 sub-blocks, 6-bit codes, int8 sub-block scales.

    `quantize` ports ggml's `quantize_row_q6_K_ref` (the path llama-quantize takes without an
    imatrix) operation by operation in float32: `make_qx_quants(16, 32, x, L, rmse_type=1)` per
    sub-block (first guess -32/max, then the 18 trial scales -(32 + 0.1*is)/max, sums
    accumulated sequentially in element order), the super-block scale d = fp16(max_scale/-128),
    int8 sub-block scales, and the final codes. Verified against the pinned tree's C compiled
    with `-O2 -ffp-contract=off`: identical bytes for random normal, heavy-tailed, all-zero,
    partly-zero and tiny-valued data (tests keep a digest). With FMA contraction
    (`-march=native`) the C float sums can differ in the last bit, which changes a few int8
    scales; `dequantize` (gguf's) is exact for any Q6_K data.
    """

    name = "q6_k"
    type_id = GGMLType.Q6_K
    # ~256 super-blocks per call keeps the trial temporaries in cache; the trials are many
    # passes over the data, so use the cores too.
    quantize_chunk = 1 << 16
    quantize_threads = 8

    def _quantize_rows(self, x: np.ndarray) -> np.ndarray:
        return _q6_k_quantize(x.reshape(-1, 256)).reshape(x.shape[0], -1)


# --- Q6_K quantizer -----------------------------------------------------------------------------


def _seq_sum(t: np.ndarray) -> np.ndarray:
    """Sum over axis 0 strictly in order (t[0] + t[1] + ...), like the C loop's float adds.

    A NumPy reduction over the outer axis of a C-contiguous array adds whole rows one after
    the other (pairwise summation only applies along the contiguous axis); a test keeps this
    equal to an explicit loop.
    """
    return np.add.reduce(t, axis=0)


def _make_qx_quants_32(xt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`make_qx_quants(16, nmax=32, x, L, rmse_type=1, NULL)` over many sub-blocks.

    `xt` is (16, n) float32: column j is sub-block j. Returns (scale (n,), the iscale whose
    codes L the C code leaves in its output (n,), all-zero mask (n,)).
    ref: ggml-quants.c make_qx_quants.
    """
    nmax = np.float32(32)
    ax = np.abs(xt)
    cols = np.arange(xt.shape[1])
    imax = np.argmax(ax, axis=0)  # first index of the largest |x| (C uses a strict '>')
    amax = ax[imax, cols]
    zero = amax < GROUP_MAX_EPS
    mx = np.where(zero, np.float32(1), xt[imax, cols])  # the signed x with the largest |x|
    w = xt * xt  # rmse_type 1: weight = x^2
    wx = w * xt  # C evaluates w*x[i]*l as (w*x[i])*l
    lv = np.empty_like(xt)
    tmp = np.empty_like(xt)

    def sums(iscale: np.ndarray, top: float) -> tuple[np.ndarray, np.ndarray]:
        # l = clamp(nearest_int(iscale * x), -32, 31); |iscale * x| <= top = nmax + 0.1*is.
        np.multiply(iscale, xt, out=lv)
        np.rint(lv, out=lv)  # nearest_int: round half to even
        if top >= 31.5:  # otherwise rint cannot leave [-31, 31]: the clamp is a no-op
            np.clip(lv, -nmax, nmax - 1, out=lv)
        sumlx = _seq_sum(np.multiply(wx, lv, out=tmp))
        np.multiply(w, lv, out=tmp)
        np.multiply(tmp, lv, out=tmp)  # (w*l)*l, in that order
        return sumlx, _seq_sum(tmp)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = -nmax / mx
        best_iscale = iscale
        sumlx, suml2 = sums(iscale, 32.0)
        scale = np.where(suml2 != 0, sumlx / suml2, np.float32(0))
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(nmax + np.float32(0.1) * np.float32(step)) / mx
            sumlx, suml2 = sums(iscale, 32.0 + 0.1 * step)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            if not better.any():
                continue
            scale = np.where(better, sumlx / suml2, scale)
            best = np.where(better, scale * sumlx, best)
            best_iscale = np.where(better, iscale, best_iscale)
    scale = np.where(zero, np.float32(0), scale).astype(np.float32)
    return scale, best_iscale.astype(np.float32), zero


def _q6_k_quantize(x: np.ndarray) -> np.ndarray:
    """(nb, 256) float32 super-blocks -> (nb, 210) Q6_K block bytes.

    ref: ggml-quants.c quantize_row_q6_K_ref (pinned tree), step by step.
    """
    nb = x.shape[0]
    xt = np.ascontiguousarray(x.reshape(nb * 16, 16).T)  # (16, nb*16): one column per sub-block

    # 1. per sub-block scale (make_qx_quants) and the codes it leaves behind in L.
    sub_scale, sub_iscale, sub_zero = _make_qx_quants_32(xt)
    scales = sub_scale.reshape(nb, 16)

    # 2. super-block scale: the sub-block scale with the largest |scale| (first on ties).
    abs_scales = np.abs(scales)
    imax = np.argmax(abs_scales, axis=1)
    rows = np.arange(nb)
    max_scale = scales[rows, imax]
    zero_block = abs_scales[rows, imax] < GROUP_MAX_EPS
    max_scale = np.where(zero_block, np.float32(1), max_scale)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        iscale = np.float32(-128) / max_scale
        d16 = (np.float32(1) / iscale).astype("<f2")  # GGML_FP32_TO_FP16(1/iscale)
        # y.scales[ib] = MIN(127, nearest_int(iscale * scales[ib]))
        sc = np.minimum(np.float32(127), np.rint(iscale[:, None] * scales)).astype(np.int8)

        # 3. final codes with the rounded scales: l = nearest_int(x / d), clamp to [-32, 31].
        d = d16.astype(np.float32)[:, None] * sc.astype(np.float32)  # (nb, 16)
        dt = d.reshape(1, -1)  # matches the columns of xt
        lq = xt / np.where(dt == 0, np.float32(1), dt)
    np.rint(lq, out=lq)
    np.clip(lq, -32, 31, out=lq)
    lq += 32
    # Where d == 0 the C code skips the sub-block, so L keeps make_qx_quants' codes
    # (32 + clamp(nearest_int(best_iscale * x)), or 0 for an all-zero sub-block).
    keep = (dt == 0).reshape(-1)
    if keep.any():
        with np.errstate(over="ignore", invalid="ignore"):
            lk = np.rint(sub_iscale[keep] * xt[:, keep])
        lk = np.clip(lk, -32, 31) + 32
        lk[:, sub_zero[keep]] = 0
        lq[:, keep] = lk
    lcodes = lq.astype(np.uint8).T.reshape(nb, 2, 4, 32)  # (block, half, quarter, l)

    # 4. pack: per 128-element half, ql[l] = q1 | q3 << 4, ql[l+32] = q2 | q4 << 4,
    #    qh[l] = q1>>4 | (q2>>4) << 2 | (q3>>4) << 4 | (q4>>4) << 6.
    out = np.empty((nb, 210), dtype=np.uint8)
    lo = lcodes & np.uint8(15)
    hi = lcodes >> 4
    ql = out[:, :128].reshape(nb, 2, 2, 32)
    ql[:, :, 0] = lo[:, :, 0] | (lo[:, :, 2] << 4)
    ql[:, :, 1] = lo[:, :, 1] | (lo[:, :, 3] << 4)
    out[:, 128:192].reshape(nb, 2, 32)[:] = (
        hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    )
    out[:, 192:208] = sc.view(np.uint8)
    out[:, 208:210] = d16.reshape(nb, 1).view(np.uint8)
    # An all-zero super-block is written as 210 zero bytes (memset, d = fp16(0)).
    out[zero_block] = 0
    return out
