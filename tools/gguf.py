"""GGUF v3 container: a streaming writer and a bounds-checked reader.

Layout (little-endian; ref: ggml `docs/gguf.md`, shared/spec/bitnet-formats.md §1-§2.2):

    u32 magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv × (string key | u32 value type | value)          string = u64 length + UTF-8 bytes
    n_tensors × (string name | u32 n_dims | u64 ne[n_dims] | u32 ggml type | u64 offset)
    zero padding to `general.alignment` (32 when absent)
    tensor data; each tensor starts at data_start + offset, offsets are the running sum of
    pad(nbytes, alignment) — exactly what upstream gguf.cpp checks.

Tensor sizes: float and block types use their (block elements, block bytes) geometry; I2_S, TL1
and TL2 are sized by `bitnet.tools.quants` (n/4 + 32 for I2_S: codes then the f32 scale in a
32-byte tail), which is what our patched `ggml_nbytes` computes.

The reader validates every length, count and offset against the file size before using it, so a
truncated or corrupt file raises CorruptFileError (never IndexError, MemoryError or a read past
the end). It reads our files, upstream files and Microsoft's official I2_S files (arch
`bitnet-b1.58` or `bitnet-25`, any `general.file_type`, `add_bos_token` stored as a bool).

PyPI `gguf` (0.19) `GGUFReader` interoperability, checked by tests/test_gguf.py:
  * our F32/F16/Q8_0/TQ1_0/TQ2_0 files open and show the same KVs, shapes and bytes;
  * a file holding an I2_S (36) or TL1 (38) tensor makes its constructor raise
    `ValueError: np.uint32(36) is not a valid GGMLQuantizationType` while reading the tensor
    infos — its enum has no 36..38; the same failure as on Microsoft's official I2_S file
    (spec §1). Nothing is returned, so not even the metadata can be read with it;
  * a TL2 tensor (our id 43) raises the same way (43 is unknown to gguf 0.19). gguf-dump and other
    gguf-py tools therefore cannot open ternary-packed files: use `bitnet inspect`.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .constants import (
    BLOCK_GEOMETRY,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGUF_VERSION,
    GGMLType,
    GGUFValueType,
    Keys,
)
from .errors import CorruptFileError, InputNotFoundError, ShapeError

#: GGML_MAX_DIMS and GGML_MAX_NAME of ggml: names must be shorter than 64 bytes.
MAX_DIMS = 4
MAX_NAME_BYTES = 63
#: GGUF versions whose layout we read (v2 and v3 are identical byte-wise for our purposes).
READABLE_VERSIONS = (2, 3)
#: Ternary types whose size is not block-regular; `quants` owns their nbytes.
PACKED_TYPES = frozenset({GGMLType.I2_S, GGMLType.TL1, GGMLType.TL2})

V = GGUFValueType
_SCALAR_FMT: dict[GGUFValueType, str] = {
    V.UINT8: "<B", V.INT8: "<b", V.UINT16: "<H", V.INT16: "<h", V.UINT32: "<I", V.INT32: "<i",
    V.FLOAT32: "<f", V.BOOL: "<?", V.UINT64: "<Q", V.INT64: "<q", V.FLOAT64: "<d",
}  # fmt: skip
_NP_DTYPE: dict[GGUFValueType, str] = {
    V.UINT8: "<u1", V.INT8: "<i1", V.UINT16: "<u2", V.INT16: "<i2", V.UINT32: "<u4",
    V.INT32: "<i4", V.FLOAT32: "<f4", V.BOOL: "<u1", V.UINT64: "<u8", V.INT64: "<i8",
    V.FLOAT64: "<f8",
}  # fmt: skip
_DTYPE_TO_VTYPE: dict[str, GGUFValueType] = {
    "uint8": V.UINT8, "int8": V.INT8, "uint16": V.UINT16, "int16": V.INT16, "uint32": V.UINT32,
    "int32": V.INT32, "float32": V.FLOAT32, "bool": V.BOOL, "uint64": V.UINT64, "int64": V.INT64,
    "float64": V.FLOAT64,
}  # fmt: skip


def pad(n: int, alignment: int) -> int:
    """Round `n` up to a multiple of `alignment`."""
    return (n + alignment - 1) // alignment * alignment


def _upstream_geometry(type_id: int) -> tuple[int, int] | None:
    """(block elements, block bytes) of an upstream-only type, from PyPI gguf's table."""
    if type_id in {int(t) for t in GGMLType if t not in BLOCK_GEOMETRY}:
        return None  # one of ours (or I8_S); never take gguf-py's meaning of our ids
    try:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        return GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
    except (ImportError, ValueError, KeyError):
        return None


def type_name(type_id: int) -> str:
    """A readable name for a ggml type id ('I2_S', 'Q4_K', 'type 99')."""
    try:
        return GGMLType(type_id).name
    except ValueError:
        pass
    try:
        from gguf.constants import GGMLQuantizationType

        if _upstream_geometry(type_id) is not None:
            return GGMLQuantizationType(type_id).name
    except (ImportError, ValueError):
        pass
    return f"type {type_id}"


def tensor_nbytes(type_id: int, shape: tuple[int, ...]) -> int:
    """Exact bytes of a tensor of numpy `shape` stored as `type_id` (what ggml_nbytes says).

    Raises ShapeError when the type cannot hold the shape and KeyError for an unknown type.
    """
    if int(type_id) in PACKED_TYPES:
        from . import quants

        return int(quants.get(GGMLType(type_id)).nbytes(tuple(shape)))
    geometry = BLOCK_GEOMETRY.get(type_id) or _upstream_geometry(type_id)
    if geometry is None:
        raise KeyError(type_id)
    block, size = geometry
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    k = shape[-1] if shape else 1
    if k % block:
        raise ShapeError(
            f"a {type_name(type_id)} tensor needs rows that are a multiple of {block} "
            f"elements, not {k}."
        )
    return n // block * size


# --- writer -----------------------------------------------------------------------------------


def _infer_scalar_vtype(value: Any) -> GGUFValueType:
    if isinstance(value, (bool, np.bool_)):
        return V.BOOL
    if isinstance(value, (int, np.integer)):
        v = int(value)
        if 0 <= v < 2**32:
            return V.UINT32
        if -(2**31) <= v < 0:
            return V.INT32
        return V.UINT64 if v > 0 else V.INT64
    if isinstance(value, (float, np.floating)):
        return V.FLOAT32
    if isinstance(value, str):
        return V.STRING
    raise TypeError(f"cannot store a {type(value).__name__} in GGUF")


def _infer_element_vtype(items: list[Any]) -> GGUFValueType:
    if not items:
        raise ValueError("an empty GGUF array needs an explicit element type (vtype=...)")
    first = items[0]
    if isinstance(first, (list, tuple, np.ndarray)):
        return V.ARRAY
    if isinstance(first, (bool, np.bool_)):
        return V.BOOL
    if isinstance(first, (int, np.integer)):
        lo, hi = min(items), max(items)
        return V.INT32 if -(2**31) <= lo and hi < 2**31 else V.INT64
    return _infer_scalar_vtype(first)


def _encode_string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _encode_value(value: Any, vtype: GGUFValueType, element: GGUFValueType | None) -> bytes:
    """Bytes of one value of type `vtype` (arrays: `element` is the element type)."""
    if vtype == V.STRING:
        return _encode_string(str(value))
    if vtype == V.ARRAY:
        if isinstance(value, np.ndarray) and value.ndim == 1 and element not in (V.STRING, V.ARRAY):
            etype = _DTYPE_TO_VTYPE[value.dtype.name] if element is None else element
            arr = np.asarray(value).astype(_NP_DTYPE[etype], copy=False)
            head = struct.pack("<IQ", etype, len(arr))
            return head + np.ascontiguousarray(arr).tobytes()
        items = list(value)
        etype = _infer_element_vtype(items) if element is None else element
        head = struct.pack("<IQ", etype, len(items))
        if etype == V.STRING:
            return head + b"".join(_encode_string(str(s)) for s in items)
        if etype == V.ARRAY:
            parts = [
                _encode_value(it, V.ARRAY, _infer_element_vtype(list(it)) if len(it) else V.UINT8)
                for it in items
            ]
            return head + b"".join(parts)
        arr = np.array(items, dtype=_NP_DTYPE[etype])
        if etype not in (V.FLOAT32, V.FLOAT64, V.BOOL) and not np.array_equal(arr, items):
            raise ValueError(f"array values out of range for {etype.name}")
        return head + arr.tobytes()
    try:
        return struct.pack(_SCALAR_FMT[vtype], value)
    except struct.error as exc:
        raise ValueError(f"value {value!r} does not fit GGUF type {vtype.name}") from exc


@dataclass
class _PendingTensor:
    name: str
    shape: tuple[int, ...]
    type_id: int
    nbytes: int
    offset: int


#: produce(name) -> the tensor's bytes, as one uint8 array or an iterable of uint8 chunks.
Produce = Callable[[str], "np.ndarray | Iterable[np.ndarray]"]


class GGUFWriter:
    """Write a GGUF v3 file tensor by tensor, never holding more than one tensor in memory.

    Declare every KV and tensor first, then call `write(produce)`: the header is written, then
    `produce(name)` is called for each tensor in insertion order and its bytes streamed out.
    """

    def __init__(self, path: str | os.PathLike[str], alignment: int = GGUF_DEFAULT_ALIGNMENT):
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError("alignment must be a positive power of two")
        self.path = Path(path)
        self.alignment = alignment
        self._kv: dict[str, bytes] = {}
        self._tensors: dict[str, _PendingTensor] = {}
        self._data_size = 0
        if alignment != GGUF_DEFAULT_ALIGNMENT:
            self.add_kv(Keys.ALIGNMENT, alignment, V.UINT32)

    def add_kv(self, key: str, value: Any, vtype: GGUFValueType | None = None) -> None:
        """Add one metadata key.

        `vtype` is inferred when omitted (bool → BOOL, int → UINT32 (INT32 if negative),
        float → FLOAT32, str → STRING, list/ndarray → ARRAY). For a list or array, `vtype` is
        the ELEMENT type (e.g. INT32 for token types); V.ARRAY infers the element type.
        """
        if key in self._kv:
            raise ValueError(f"duplicate GGUF key {key!r}")
        if key == Keys.ALIGNMENT and self._tensors:
            raise ValueError("set general.alignment before adding tensors")
        is_array = isinstance(value, (list, tuple, np.ndarray))
        if is_array:
            element = None if vtype in (None, V.ARRAY) else GGUFValueType(vtype)
            body = _encode_value(value, V.ARRAY, element)
            self._kv[key] = _encode_string(key) + struct.pack("<I", V.ARRAY) + body
        else:
            vt = GGUFValueType(vtype) if vtype is not None else _infer_scalar_vtype(value)
            body = _encode_value(value, vt, None)
            self._kv[key] = _encode_string(key) + struct.pack("<I", vt) + body
        if key == Keys.ALIGNMENT:
            if not isinstance(value, (int, np.integer)) or value <= 0 or value & (value - 1):
                raise ValueError("general.alignment must be a positive power of two")
            self.alignment = int(value)

    def add_tensor(
        self, name: str, shape: tuple[int, ...], type_id: int, nbytes: int | None = None
    ) -> None:
        """Declare a tensor of numpy `shape` (K = shape[-1] contiguous) and ggml `type_id`.

        `nbytes` defaults to the type's exact size; when given it must match it.
        """
        if name in self._tensors:
            raise ValueError(f"duplicate tensor name {name!r}")
        if len(name.encode("utf-8")) > MAX_NAME_BYTES:
            raise ValueError(f"tensor name {name!r} is longer than {MAX_NAME_BYTES} bytes")
        shape = tuple(int(d) for d in shape)
        if not 1 <= len(shape) <= MAX_DIMS:
            raise ValueError(f"tensor {name!r} has {len(shape)} dimensions; GGUF holds 1..4")
        expected = tensor_nbytes(int(type_id), shape)
        if nbytes is not None and int(nbytes) != expected:
            raise ValueError(f"tensor {name!r}: nbytes {nbytes} != {expected} for its type")
        self._tensors[name] = _PendingTensor(name, shape, int(type_id), expected, self._data_size)
        self._data_size += pad(expected, self.alignment)

    def header_bytes(self) -> bytes:
        """The header (KVs and tensor infos) up to, not including, the alignment padding."""
        parts = [struct.pack("<IIQQ", GGUF_MAGIC, GGUF_VERSION, len(self._tensors), len(self._kv))]
        parts.extend(self._kv.values())
        for t in self._tensors.values():
            ne = tuple(reversed(t.shape))
            parts.append(_encode_string(t.name))
            parts.append(struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, t.type_id, t.offset))
        return b"".join(parts)

    @property
    def file_size(self) -> int:
        """Total size of the file `write` produces, in bytes."""
        return pad(len(self.header_bytes()), self.alignment) + self._data_size

    @property
    def data_size(self) -> int:
        return self._data_size

    def write(
        self, produce: Produce, progress: Callable[[int, int, str], None] | None = None
    ) -> int:
        """Write the file; `produce(name)` supplies each tensor's bytes. Returns bytes written."""
        header = self.header_bytes()
        total = self._data_size
        done = 0
        with open(self.path, "wb") as f:
            f.write(header)
            f.write(b"\0" * (pad(len(header), self.alignment) - len(header)))
            for t in self._tensors.values():
                written = 0
                for chunk in _chunks(produce(t.name)):
                    f.write(chunk)
                    written += len(chunk)
                    if progress is not None:
                        progress(done + written, total, t.name)
                if written != t.nbytes:
                    raise ValueError(f"tensor {t.name!r}: produced {written} bytes, not {t.nbytes}")
                f.write(b"\0" * (pad(written, self.alignment) - written))
                done += pad(written, self.alignment)
            size = f.tell()
        return size


def _chunks(data: Any) -> Iterator[memoryview]:
    """Yield byte views of a produced tensor: one array/bytes object or an iterable of them."""
    if isinstance(data, (np.ndarray, bytes, bytearray, memoryview)):
        data = [data]
    for part in data:
        if isinstance(part, np.ndarray):
            part = np.ascontiguousarray(part)
            yield memoryview(part).cast("B")
        else:
            yield memoryview(part).cast("B")


# --- reader -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file. `shape` is numpy order, `ne` GGUF order, `offset` absolute."""

    name: str
    shape: tuple[int, ...]
    ne: tuple[int, ...]
    type_id: int
    offset: int
    nbytes: int

    @property
    def type_name(self) -> str:
        return type_name(self.type_id)

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class _Cursor:
    """Sequential little-endian reads over a buffer; every read is bounds-checked first."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path

    @property
    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def fail(self, what: str) -> CorruptFileError:
        return CorruptFileError(
            f"{self.path} is not a valid GGUF file: {what} (at byte {self.pos}).",
            hint="re-download or re-create the file (e.g. with: bitnet convert)",
        )

    def need(self, n: int, what: str) -> None:
        if n < 0 or n > self.remaining:
            raise self.fail(f"{what} runs past the end of the file")

    def unpack(self, fmt: str, what: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size, what)
        value = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value[0] if len(value) == 1 else value

    def string(self, what: str) -> str:
        n = self.unpack("<Q", what)
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8") from None

    def vtype(self, what: str) -> GGUFValueType:
        t = self.unpack("<I", what)
        try:
            return GGUFValueType(t)
        except ValueError:
            raise self.fail(f"{what} has unknown value type {t}") from None

    def value(self, vt: GGUFValueType, what: str, depth: int = 0) -> Any:
        if vt == V.STRING:
            return self.string(what)
        if vt == V.ARRAY:
            if depth > 8:
                raise self.fail(f"{what} nests arrays too deeply")
            et = self.vtype(what)
            n = self.unpack("<Q", what)
            # Bound the count by the bytes left before allocating or looping.
            min_size = {V.STRING: 8, V.ARRAY: 12}.get(et) or struct.calcsize(_SCALAR_FMT[et])
            if n > self.remaining // min_size:
                raise self.fail(f"{what} claims {n} elements, more than the file holds")
            if et in (V.STRING, V.ARRAY):
                return [self.value(et, what, depth + 1) for _ in range(n)]
            dt = np.dtype(_NP_DTYPE[et])
            arr = np.frombuffer(self.buf, dtype=dt, count=n, offset=self.pos)
            self.pos += n * dt.itemsize
            return (arr != 0).tolist() if et == V.BOOL else arr.tolist()
        raw = self.unpack(_SCALAR_FMT[vt], what)
        if vt == V.FLOAT32:
            return float(raw)
        return raw


class GGUFReader:
    """Read a GGUF file's metadata eagerly and its tensors lazily (memory-mapped).

    `.kv` maps keys to Python values (arrays as lists), `.kv_types` keys to their value type
    (arrays: `(ARRAY, element type)`), `.tensors` names to TensorInfo in file order.
    """

    def __init__(self, path: str | os.PathLike[str], foreign_types: bool = False) -> None:
        """`foreign_types`: read another engine's file (ik_llama.cpp's IQ2_BN, bitnet.cpp's
        I2_S, whose size differs from ours): any type id is accepted and every tensor is sized
        by where the next one starts (its `nbytes` includes the alignment padding). For sizes
        only: the data of such a reader is not to be decoded."""
        self.path = Path(path)
        self._foreign_types = foreign_types
        if not self.path.is_file():
            raise InputNotFoundError(
                f"{self.path} does not exist or is not a file.",
                hint="check the path, or create a model with: bitnet convert",
            )
        self.file_size = self.path.stat().st_size
        self.kv: dict[str, Any] = {}
        self.kv_types: dict[str, Any] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self._memmap: np.memmap | None = None
        if self.file_size == 0:
            raise CorruptFileError(f"{self.path} is empty, not a GGUF file.")
        with open(self.path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self._parse(_Cursor(memoryview(mm), self.path))
        finally:
            # An exception's traceback may still reference the view; then GC closes the map.
            with contextlib.suppress(BufferError):
                mm.close()

    # --- parsing ------------------------------------------------------------------------------

    def _parse(self, cur: _Cursor) -> None:
        if cur.remaining < 4 or struct.unpack_from("<I", cur.buf, 0)[0] != GGUF_MAGIC:
            raise CorruptFileError(
                f"{self.path} is not a GGUF file (bad magic).",
                hint="pass a .gguf model file; make one with: bitnet convert",
            )
        cur.pos = 4
        version = cur.unpack("<I", "version")
        if version not in READABLE_VERSIONS:
            swapped = struct.unpack("<I", struct.pack(">I", version))[0]
            what = "big-endian GGUF" if swapped in READABLE_VERSIONS else f"GGUF version {version}"
            raise CorruptFileError(f"{self.path} is {what}, which is not supported (need v3).")
        self.version = version
        n_tensors, n_kv = cur.unpack("<QQ", "header counts")
        # A KV takes ≥ 13 bytes and a tensor info ≥ 24: reject absurd counts up front.
        if n_kv > cur.remaining // 13 or n_tensors > cur.remaining // 24:
            raise cur.fail(f"header claims {n_kv} keys and {n_tensors} tensors")

        for _ in range(n_kv):
            key = cur.string("a metadata key")
            vt = cur.vtype(f"key {key!r}")
            start = cur.pos
            value = cur.value(vt, f"value of {key!r}")
            if key in self.kv:
                raise cur.fail(f"key {key!r} appears twice")
            self.kv[key] = value
            if vt == V.ARRAY:
                element = GGUFValueType(struct.unpack_from("<I", cur.buf, start)[0])
                self.kv_types[key] = (V.ARRAY, element)
            else:
                self.kv_types[key] = vt

        self.alignment = GGUF_DEFAULT_ALIGNMENT
        if Keys.ALIGNMENT in self.kv:
            a = self.kv[Keys.ALIGNMENT]
            if self.kv_types[Keys.ALIGNMENT] != V.UINT32 or a <= 0 or a & (a - 1):
                raise cur.fail(f"general.alignment {a!r} is not a power-of-two uint32")
            self.alignment = int(a)

        infos: list[tuple[str, tuple[int, ...], int, int]] = []
        names: set[str] = set()
        for _ in range(n_tensors):
            name = cur.string("a tensor name")
            if name in names:
                raise cur.fail(f"tensor {name!r} appears twice")
            names.add(name)
            n_dims = cur.unpack("<I", f"dimensions of {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise cur.fail(f"tensor {name!r} has {n_dims} dimensions")
            ne = tuple(int(x) for x in struct.unpack("<" + "Q" * n_dims, _take(cur, 8 * n_dims)))
            if any(x >= 2**62 for x in ne) or _product(ne) >= 2**62:
                raise cur.fail(f"tensor {name!r} has an impossible shape {list(ne)}")
            type_id, offset = cur.unpack("<IQ", f"type and offset of {name!r}")
            infos.append((name, ne, type_id, offset))

        data_start = pad(cur.pos, self.alignment)
        self.data_offset = data_start
        expected_offset = 0
        # foreign_types: a tensor ends where the next one (by offset) starts, or the file does
        starts = sorted({info[3] for info in infos} | {max(self.file_size - data_start, 0)})
        for name, ne, type_id, offset in infos:
            shape = tuple(reversed(ne))
            try:
                if self._foreign_types:
                    nbytes = next((o for o in starts if o > offset), offset) - offset
                    expected_offset = offset
                else:
                    nbytes = tensor_nbytes(type_id, shape)
            except KeyError:
                raise cur.fail(f"tensor {name!r} has unknown ggml type {type_id}") from None
            except ShapeError as exc:
                raise cur.fail(f"tensor {name!r}: {exc}") from None
            if offset != expected_offset:
                raise cur.fail(
                    f"tensor {name!r} starts at data offset {offset}, not {expected_offset} "
                    "(where the previous tensor ends)"
                )
            if data_start + offset + nbytes > self.file_size:
                raise cur.fail(f"tensor {name!r} ({nbytes} bytes) runs past the end of the file")
            self.tensors[name] = TensorInfo(name, shape, ne, type_id, data_start + offset, nbytes)
            expected_offset = offset + pad(nbytes, self.alignment)

    # --- access -------------------------------------------------------------------------------

    @property
    def arch(self) -> str:
        """`general.architecture` ('' when absent)."""
        value = self.kv.get(Keys.ARCHITECTURE, "")
        return value if isinstance(value, str) else ""

    def key(self, template: str, default: Any = None) -> Any:
        """Value of a Keys template such as Keys.BLOCK_COUNT, with `{arch}` filled in."""
        return self.kv.get(template.format(arch=self.arch), default)

    def data(self, name: str) -> np.memmap:
        """The raw bytes of tensor `name` (a read-only memory map, nbytes long)."""
        info = self._info(name)
        if self._memmap is None:
            self._memmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._memmap[info.offset : info.offset + info.nbytes]

    def array(self, name: str) -> np.ndarray:
        """Tensor `name` dequantized to float32, in numpy shape."""
        from . import quants

        info = self._info(name)
        return quants.get(info.type_id).dequantize(self.data(name), info.shape)

    def close(self) -> None:
        self._memmap = None

    def _info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.path} has no tensor {name!r}") from None

    def __enter__(self) -> GGUFReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def rewrite_arch(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    arch: str,
    file_type: int | None = None,
    name: str | None = None,
) -> None:
    """Copy the GGUF `src` to `dst` under the architecture name `arch` (its `OLD.*` keys become
    `ARCH.*`), with another `general.file_type` / `general.name` when given: how Microsoft's
    published I2_S files differ from ours (arch `bitnet-b1.58` or `bitnet-25`, file type 40 or
    137; spec §4.1). Used to make files in their layout for tests and the fuzz corpus."""
    r = GGUFReader(src)
    w = GGUFWriter(dst)
    old = r.kv["general.architecture"]
    new_values = {
        "general.architecture": arch,
        "general.file_type": file_type,
        "general.name": name,
    }
    for key, value in r.kv.items():
        vtype = r.kv_types[key]
        vtype = vtype[1] if isinstance(vtype, tuple) else vtype
        new_key = arch + key[len(old) :] if key.startswith(old + ".") else key
        if new_values.get(key) is not None:
            value = new_values[key]
        w.add_kv(new_key, value, vtype)
    for tname, t in r.tensors.items():
        w.add_tensor(tname, t.shape, t.type_id, t.nbytes)
    w.write(lambda tname: np.asarray(r.data(tname)))


def read_gguf(path: str | os.PathLike[str]) -> GGUFReader:
    """Open and validate a GGUF file (see GGUFReader)."""
    return GGUFReader(path)


def _take(cur: _Cursor, n: int) -> bytes:
    cur.need(n, "tensor dimensions")
    raw = bytes(cur.buf[cur.pos : cur.pos + n])
    cur.pos += n
    return raw


def _product(values: Iterable[int]) -> int:
    p = 1
    for v in values:
        p *= v
    return p


# --- summary (bitnet inspect) -----------------------------------------------------------------

#: Types that store ternary weights (bits per weight of the linears are computed over these).
TERNARY_TYPE_IDS = frozenset(
    {GGMLType.I2_S, GGMLType.TL1, GGMLType.TL2, GGMLType.TQ1_0, GGMLType.TQ2_0}
)


def _short(value: Any, vtype: Any = None) -> Any:
    if vtype == V.FLOAT32:  # shortest decimal that round-trips in float32: 1e-05, not 9.99e-06
        return float(str(np.float32(value)))
    if isinstance(value, list):
        return f"[{len(value)} items]"
    if isinstance(value, str) and len(value) > 80:
        return value[:77] + "..."
    return value


def describe(reader: GGUFReader) -> dict[str, Any]:
    """A JSON-ready summary of a GGUF file: arch, hyper-parameters, tokenizer, tensors, sizes.

    Bits per weight are given overall (all tensor bytes over all elements) and over the linear
    layers (2-D `blk.*` tensors) — the ternary part of a BitNet model.
    """
    arch = reader.arch
    prefix = f"{arch}."
    types = reader.kv_types
    hparams = {
        k[len(prefix) :]: _short(v, types[k]) for k, v in reader.kv.items() if k.startswith(prefix)
    }
    general = {k: _short(v, types[k]) for k, v in reader.kv.items() if k.startswith("general.")}
    tokens = reader.kv.get(Keys.TOKENIZER_TOKENS) or []

    def special(key: str) -> dict[str, Any] | None:
        idx = reader.kv.get(key)
        if not isinstance(idx, int) or isinstance(idx, bool):
            return None
        text = tokens[idx] if 0 <= idx < len(tokens) else None
        return {"id": idx, "token": text}

    tokenizer = {
        "model": reader.kv.get(Keys.TOKENIZER_MODEL),
        "pre": reader.kv.get(Keys.TOKENIZER_PRE),
        "n_tokens": len(tokens),
        "n_merges": len(reader.kv.get(Keys.TOKENIZER_MERGES) or []),
        "bos": special(Keys.TOKENIZER_BOS_ID),
        "eos": special(Keys.TOKENIZER_EOS_ID),
        "eot": special(Keys.TOKENIZER_EOT_ID),
        "add_bos_token": reader.kv.get(Keys.TOKENIZER_ADD_BOS),
        "has_chat_template": bool(reader.kv.get(Keys.CHAT_TEMPLATE)),
    }
    tensors = []
    total_bytes = total_elems = lin_bytes = lin_elems = 0
    ternary_types: set[str] = set()
    for t in reader.tensors.values():
        n = t.n_elements
        total_bytes += t.nbytes
        total_elems += n
        if len(t.shape) == 2 and t.name.startswith("blk."):
            lin_bytes += t.nbytes
            lin_elems += n
            if t.type_id in TERNARY_TYPE_IDS:
                ternary_types.add(t.type_name)
        tensors.append(
            {"name": t.name, "type": t.type_name, "shape": list(t.shape), "bytes": t.nbytes}
        )
    return {
        "path": str(reader.path),
        "file_size": reader.file_size,
        "gguf_version": reader.version,
        "architecture": arch,
        "general": general,
        "hyperparameters": hparams,
        "tokenizer": tokenizer,
        "n_tensors": len(tensors),
        "n_parameters": total_elems,
        "tensor_bytes": total_bytes,
        "linear_types": sorted(ternary_types),
        "bpw_linears": round(8 * lin_bytes / lin_elems, 4) if lin_elems else None,
        "bpw_overall": round(8 * total_bytes / total_elems, 4) if total_elems else None,
        "tensors": tensors,
    }
