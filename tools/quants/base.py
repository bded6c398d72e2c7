"""The `QuantType` base classes and the registry of packed tensor types.

Every storable tensor type is one small class registered here with `@register`; the rest of the
project looks types up with `get("i2_s")` / `get(GGMLType.I2_S)` and never branches on names.
Shapes are NumPy shapes: a linear weight is (M, K) = (out_features, in_features), K contiguous.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import numpy as np

from bitnet.tools.constants import BLOCK_GEOMETRY, TERNARY_TAIL_BYTES, GGMLType
from bitnet.tools.errors import CorruptFileError, ShapeError, UsageError

Shape = tuple[int, ...]

#: Elements handled per step by the row-chunked loops (keeps temporaries to a few MB).
CHUNK_ELEMENTS = 1 << 20


def as_shape(shape: Sequence[int]) -> Shape:
    """Normalise a shape to a tuple of Python ints."""
    return tuple(int(d) for d in shape)


def as_bytes(data: np.ndarray | bytes | bytearray | memoryview) -> np.ndarray:
    """View `data` (an array of any shape, a memmap, or a bytes-like object) as flat uint8."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    arr = np.asarray(data)
    if arr.dtype != np.uint8:
        raise ValueError(f"packed tensor data must be uint8, not {arr.dtype}")
    return arr.reshape(-1)


def row_chunks(n_rows: int, row_elements: int, chunk: int = 0) -> Iterator[slice]:
    """Slices of rows holding about `chunk` (default `CHUNK_ELEMENTS`) elements each."""
    step = max(1, (chunk or CHUNK_ELEMENTS) // max(1, row_elements))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))


def fmt_shape(shape: Shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


# --- base classes -----------------------------------------------------------------------------


class QuantType:
    """One storable tensor type: its name, ggml id, exact byte size and decoder.

    Subclasses implement `shape_problem` (why a shape cannot be stored, or None), `_nbytes`
    and `dequantize`; float/embedding types add `quantize`, ternary types `pack`/`unpack`.
    """

    name: ClassVar[str]
    type_id: ClassVar[GGMLType]
    ternary: ClassVar[bool] = False

    # -- shape checks ---------------------------------------------------------------------

    def shape_problem(self, shape: Shape) -> str | None:
        """Why a tensor of `shape` cannot be stored as this type, or None if it can."""
        raise NotImplementedError

    def _problem(self, shape: Shape) -> str | None:
        if len(shape) == 0 or any(d <= 0 for d in shape):
            return "it has no elements"
        return self.shape_problem(shape)

    def can_hold(self, shape: Sequence[int]) -> bool:
        """True if a tensor of numpy shape `shape` can be stored as this type."""
        return self._problem(as_shape(shape)) is None

    def check_shape(self, shape: Sequence[int], tensor_name: str = "") -> None:
        """Raise ShapeError naming the tensor, its shape and the types that CAN hold it."""
        shape = as_shape(shape)
        problem = self._problem(shape)
        if problem is None:
            return
        able = types_for_shape(shape, ternary=self.ternary)
        what = f"tensor {tensor_name!r}" if tensor_name else "a tensor"
        can = ", ".join(able) if able else "none"
        raise ShapeError(
            f"{what} of shape {fmt_shape(shape)} cannot be stored as {self.name} because "
            f"{problem}; types that can hold it: {can}.",
            hint=f"choose one of: {can}" if able else "check the checkpoint's shapes",
        )

    # -- sizes and decoding ----------------------------------------------------------------

    def nbytes(self, shape: Sequence[int]) -> int:
        """Exact number of bytes of a tensor of numpy shape `shape` (K = shape[-1])."""
        shape = as_shape(shape)
        self.check_shape(shape)
        return self._nbytes(shape)

    def _nbytes(self, shape: Shape) -> int:
        raise NotImplementedError

    def dequantize(self, data: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        """Decode `data` (exactly `nbytes(shape)` uint8) into a float32 array of `shape`."""
        raise NotImplementedError

    def _data(self, data: np.ndarray | bytes, shape: Shape, what: str = "tensor") -> np.ndarray:
        """Flat uint8 view of `data`, checked to be exactly `nbytes(shape)` long."""
        self.check_shape(shape)
        flat = as_bytes(data)
        want = self._nbytes(shape)
        if flat.size != want:
            raise CorruptFileError(
                f"{self.name} {what} of shape {fmt_shape(shape)} must be {want} bytes, "
                f"got {flat.size}.",
                hint="the file is truncated or was written by an incompatible tool",
            )
        return flat

    def __repr__(self) -> str:
        return f"<QuantType {self.name} (ggml type {int(self.type_id)})>"


class BlockType(QuantType):
    """Float and block-quantized types (F32/F16/BF16/Q8_0/Q4_0/Q6_K): `quantize` + `dequantize`.

    Subclasses implement `_quantize_rows(x float32 (r, K)) -> uint8 (r, row_bytes)` and
    `_dequantize_rows(b uint8 (r, row_bytes), K) -> float32 (r, K)`; this class walks the
    tensor in row chunks so a 128256 x 2560 embedding never needs a full-size temporary.
    """

    #: Elements per `_quantize_rows` call (0: CHUNK_ELEMENTS), and worker threads for
    #: `quantize` (NumPy releases the GIL inside its loops, so a slow quantizer can use every core).
    quantize_chunk: ClassVar[int] = 0
    quantize_threads: ClassVar[int] = 1

    @property
    def block(self) -> tuple[int, int]:
        """(elements per block, bytes per block), from `constants.BLOCK_GEOMETRY`."""
        return BLOCK_GEOMETRY[self.type_id]

    def shape_problem(self, shape: Shape) -> str | None:
        blk = self.block[0]
        if shape[-1] % blk:
            return f"its rows (K = {shape[-1]}) are not a multiple of {blk}"
        return None

    def _nbytes(self, shape: Shape) -> int:
        blk, size = self.block
        return int(np.prod(shape, dtype=np.int64)) // blk * size

    def _row_bytes(self, k: int) -> int:
        blk, size = self.block
        return k // blk * size

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Encode a float array (K = last dim) into `nbytes(x.shape)` uint8 bytes (1-D)."""
        x = np.asarray(x)
        shape = as_shape(x.shape)
        self.check_shape(shape)
        k = shape[-1]
        rows = x.reshape(-1, k)
        row_bytes = self._row_bytes(k)
        out = np.empty((rows.shape[0], row_bytes), dtype=np.uint8)

        def work(sl: slice) -> None:
            out[sl] = self._quantize_rows(np.ascontiguousarray(rows[sl], dtype=np.float32))

        slices = list(row_chunks(rows.shape[0], k, self.quantize_chunk))
        threads = min(self.quantize_threads, os.cpu_count() or 1, len(slices))
        if threads > 1:
            with ThreadPoolExecutor(threads) as pool:
                for _ in pool.map(work, slices):
                    pass
        else:
            for sl in slices:
                work(sl)
        return out.reshape(-1)

    def dequantize(self, data: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        shape = as_shape(shape)
        flat = self._data(data, shape)
        k = shape[-1]
        rows = flat.reshape(-1, self._row_bytes(k))
        out = np.empty((rows.shape[0], k), dtype=np.float32)
        for sl in row_chunks(rows.shape[0], k):
            out[sl] = self._dequantize_rows(np.ascontiguousarray(rows[sl]), k)
        return out.reshape(shape)

    def _quantize_rows(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _dequantize_rows(self, b: np.ndarray, k: int) -> np.ndarray:
        raise NotImplementedError


class TernaryType(QuantType):
    """Ternary types: `pack(codes, scale)` / `unpack(data, shape)`; dequantize = codes * scale."""

    ternary: ClassVar[bool] = True

    def pack(self, codes: np.ndarray, scale: float) -> np.ndarray:
        """Pack int8 codes in {-1, 0, 1} of shape (M, K) and one float scale into uint8 bytes."""
        raise NotImplementedError

    def unpack(self, data: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.float32]:
        """Inverse of `pack`: (codes int8 of `shape`, scale float32)."""
        raise NotImplementedError

    def dequantize(self, data: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        codes, scale = self.unpack(data, shape)
        return codes.astype(np.float32) * np.float32(scale)

    # -- helpers shared by the ternary packers -----------------------------------------------

    def _codes(self, codes: np.ndarray) -> np.ndarray:
        """Validate ternary codes and return them as a C-contiguous int8 array."""
        arr = np.asarray(codes)
        if arr.dtype.kind not in "iuf":
            raise ValueError(f"{self.name}: codes must be an integer array, not {arr.dtype}")
        self.check_shape(as_shape(arr.shape))
        c8 = np.ascontiguousarray(arr, dtype=np.int8) if arr.dtype != np.int8 else arr
        if c8 is not arr and not np.array_equal(c8, arr):
            raise ValueError(f"{self.name}: codes must be -1, 0 or +1")
        if np.any((c8 < -1) | (c8 > 1)):
            raise ValueError(f"{self.name}: codes must be -1, 0 or +1")
        return np.ascontiguousarray(c8)

    @staticmethod
    def _scale(scale: float) -> np.float32:
        s = np.float32(scale)
        if not np.isfinite(s):
            raise ValueError(f"scale must be a finite number, got {scale!r}")
        return s

    @staticmethod
    def _tail(scale: np.float32) -> np.ndarray:
        """The 32 bytes after the codes: f32 little-endian scale, then 28 zero bytes."""
        tail = np.zeros(TERNARY_TAIL_BYTES, dtype=np.uint8)
        tail[:4] = np.array([scale], dtype="<f4").view(np.uint8)
        return tail

    def _read_scale(self, flat: np.ndarray, offset: int) -> np.float32:
        scale = flat[offset : offset + 4].copy().view("<f4")[0]
        if not np.isfinite(scale):
            raise CorruptFileError(
                f"{self.name} tensor has a non-finite scale ({scale}).",
                hint="the file is corrupt; convert the model again",
            )
        return np.float32(scale)


# --- registry ---------------------------------------------------------------------------------

_BY_NAME: dict[str, QuantType] = {}
_BY_ID: dict[int, QuantType] = {}


def register(cls: type[QuantType]) -> type[QuantType]:
    """Class decorator: instantiate `cls` once and make it findable by name and id."""
    inst = cls()
    key = cls.name.lower()
    if key in _BY_NAME or int(cls.type_id) in _BY_ID:
        raise RuntimeError(f"quant type {cls.name} registered twice")
    _BY_NAME[key] = inst
    _BY_ID[int(cls.type_id)] = inst
    return cls


def get(name_or_id: str | int | GGMLType) -> QuantType:
    """Look a type up by name ("i2_s", "Q6_K", case-insensitive) or ggml id (GGMLType/int)."""
    if isinstance(name_or_id, str):
        inst = _BY_NAME.get(name_or_id.strip().lower())
        if inst is None:
            raise UsageError(
                f"unknown tensor type {name_or_id!r}.",
                hint=f"known types: {', '.join(names())}",
            )
        return inst
    if isinstance(name_or_id, (int, np.integer)) and not isinstance(name_or_id, bool):
        inst = _BY_ID.get(int(name_or_id))
        if inst is None:
            raise UsageError(
                f"ggml tensor type {int(name_or_id)} is not supported here.",
                hint=f"supported types: {', '.join(names())}",
            )
        return inst
    raise TypeError(f"expected a type name or id, got {type(name_or_id).__name__}")


def names() -> list[str]:
    """Names of every registered type: ternary types first, then the others by ggml id."""
    ternary = [n for n, t in _BY_NAME.items() if t.ternary]
    others = sorted((t for t in _BY_NAME.values() if not t.ternary), key=lambda t: t.type_id)
    return ternary + [t.name for t in others]


def types_for_shape(shape: Sequence[int], ternary: bool | None = None) -> list[str]:
    """Names of the registered types that can hold a tensor of `shape` (optionally filtered)."""
    shape = as_shape(shape)
    return [
        n
        for n in names()
        if (ternary is None or _BY_NAME[n].ternary == ternary)
        and _BY_NAME[n]._problem(shape) is None
    ]
