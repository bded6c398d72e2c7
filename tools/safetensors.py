"""Reading and writing Hugging Face checkpoints stored as safetensors, with NumPy only.

A safetensors file is: 8 bytes (little-endian u64) giving the header length N, then N bytes of
JSON mapping each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets
relative to the first byte after the header; an optional ``"__metadata__"`` maps str to str),
then the raw little-endian tensor bytes. A sharded checkpoint adds
``model.safetensors.index.json`` whose ``weight_map`` names the file holding each tensor.

Tensors are memory-mapped, never read whole: a converter touches one tensor at a time, so peak
memory stays near the largest tensor it converts. Every header is validated before any tensor is
handed out; a truncated or malformed file raises CorruptFileError naming the file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CorruptFileError, InputNotFoundError, ShapeError, UsageError
from .fsutil import atomic_output
from .quants.ternary import bf16_bits_to_f32, f32_to_bf16_bits

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"

#: safetensors dtype string -> little-endian NumPy storage dtype. BF16 is stored as its raw bits.
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}

#: Refuse headers larger than this (the reference implementation's limit is 100 MB too).
MAX_HEADER_BYTES = 100_000_000

#: Conversions while writing happen in slices of about this many bytes (bounds temporaries).
_WRITE_SLICE_BYTES = 32 << 20


# --- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: its file, dtype, shape and absolute byte range in that file."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset of the first byte in `file`
    nbytes: int


class SafetensorsFile:
    """One validated ``.safetensors`` file; tensors are views of one read-only memory map."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.entries, self.metadata, self._data_start = _parse_header(self.path)
        self._map: np.memmap | None = None

    def names(self) -> list[str]:
        return list(self.entries)

    def _memmap(self) -> np.memmap:
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._map

    def raw(self, name: str) -> np.ndarray:
        """The tensor in its stored dtype (BF16 as uint16 bits), memory-mapped, read-only."""
        e = self.entries[name]
        storage = DTYPES[e.dtype]
        if e.nbytes == 0:
            return np.zeros(e.shape, dtype=storage)
        buf = self._memmap()[e.start : e.start + e.nbytes]
        return buf.view(storage).reshape(e.shape)

    def close(self) -> None:
        self._map = None


def _corrupt(path: Path, what: str) -> CorruptFileError:
    return CorruptFileError(
        f"{path} is not a valid safetensors file: {what}.",
        hint="re-download or re-create the checkpoint",
    )


def _parse_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str], int]:
    """Read and validate a safetensors header; return (entries, metadata, data start offset)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _corrupt(path, f"the file is only {size} bytes long")
            n = int.from_bytes(prefix, "little")
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise _corrupt(
                    path,
                    f"its header claims {n} bytes but the file holds {size - 8} after the prefix",
                )
            raw_header = f.read(n)
    except FileNotFoundError:
        raise InputNotFoundError(f"{path} does not exist.") from None
    except IsADirectoryError:
        raise InputNotFoundError(f"{path} is a folder, not a safetensors file.") from None
    try:
        header = json.loads(raw_header.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, > 4300-digit ints, nesting
        raise _corrupt(path, f"its header is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "its header is not a JSON object")

    data_start = 8 + n
    data_size = size - data_start
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _corrupt(path, "its __metadata__ is not a mapping of strings")

    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if not isinstance(info, dict):
            raise _corrupt(path, f"the entry of tensor {name!r} is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPES:
            raise _corrupt(path, f"tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise _corrupt(path, f"tensor {name!r} has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise _corrupt(path, f"tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise _corrupt(
                path,
                f"tensor {name!r} spans bytes {begin}..{end} but the data section has "
                f"{data_size} (truncated file?)",
            )
        expected = math.prod(shape) * DTYPES[dtype].itemsize
        if end - begin != expected:
            raise _corrupt(
                path,
                f"tensor {name!r} holds {end - begin} bytes but {dtype}{shape} needs {expected}",
            )
        entries[name] = TensorEntry(
            name, path, dtype, tuple(shape), data_start + begin, end - begin
        )

    # No two tensors may share bytes.
    spans = sorted((e.start, e.start + e.nbytes, e.name) for e in entries.values() if e.nbytes)
    for (_, end_a, a), (start_b, _, b) in zip(spans, spans[1:], strict=False):
        if start_b < end_a:
            raise _corrupt(path, f"tensors {a!r} and {b!r} overlap")
    return entries, metadata, data_start


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputNotFoundError(f"{path} does not exist.") from None
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, > 4300-digit ints, nesting
        raise CorruptFileError(
            f"{path} is not valid JSON ({exc.__class__.__name__}: {str(exc)[:120]}).",
            hint=f"re-download or re-create the {what}",
        ) from None


class Checkpoint:
    """A Hugging Face checkpoint folder: ``config.json`` plus safetensors weights.

    Weights come from ``model.safetensors``, or from the shards listed in
    ``model.safetensors.index.json``; failing both, from every ``*.safetensors`` in the folder.
    """

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InputNotFoundError(
                f"{self.folder} is not a folder.",
                hint="pass a Hugging Face checkpoint folder (config.json + *.safetensors)",
            )
        config_path = self.folder / CONFIG_FILE
        if not config_path.is_file():
            raise InputNotFoundError(
                f"{self.folder} has no config.json, so it is not a Hugging Face checkpoint.",
                hint="pass the folder that holds config.json and the *.safetensors files",
            )
        config = _read_json(config_path, "checkpoint")
        if not isinstance(config, dict):
            raise CorruptFileError(f"{config_path} is not a JSON object.")
        self.config: dict[str, Any] = config
        self._files: dict[Path, SafetensorsFile] = {}
        self._where: dict[str, SafetensorsFile] = {}
        self._load_weights()

    # -- discovery ------------------------------------------------------------------------------

    def _open(self, path: Path) -> SafetensorsFile:
        if path not in self._files:
            self._files[path] = SafetensorsFile(path)
        return self._files[path]

    def _load_weights(self) -> None:
        index_path = self.folder / INDEX_FILE
        single = self.folder / SINGLE_FILE
        if index_path.is_file():
            self._load_index(index_path)
        elif single.is_file():
            f = self._open(single)
            self._where = {name: f for name in f.entries}
        else:
            found = sorted(self.folder.glob("*.safetensors"))
            if not found:
                raise InputNotFoundError(
                    f"{self.folder} has no {SINGLE_FILE}, {INDEX_FILE} or *.safetensors file.",
                    hint="download the checkpoint's safetensors weights (PyTorch .bin is not read)",
                )
            for path in found:
                f = self._open(path)
                for name in f.entries:
                    if name in self._where:
                        raise CorruptFileError(
                            f"tensor {name!r} appears in both {self._where[name].path.name} "
                            f"and {path.name}."
                        )
                    self._where[name] = f

    def _load_index(self, index_path: Path) -> None:
        index = _read_json(index_path, "checkpoint")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise CorruptFileError(f"{index_path} has no valid weight_map.")
        for name, filename in weight_map.items():
            shard_path = self.folder / filename
            if Path(filename).name != filename:
                raise CorruptFileError(
                    f"{index_path} names a shard outside the folder: {filename!r}."
                )
            if not shard_path.is_file():
                raise InputNotFoundError(
                    f"shard {filename} listed in {index_path.name} is missing from {self.folder}.",
                    hint="download the complete checkpoint (every model-*.safetensors shard)",
                )
            f = self._open(shard_path)
            if name not in f.entries:
                raise CorruptFileError(
                    f"{index_path.name} places tensor {name!r} in {filename}, which lacks it."
                )
            self._where[name] = f

    # -- queries --------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every tensor name, in file order (shards in index order)."""
        return list(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def __len__(self) -> int:
        return len(self._where)

    def _entry(self, name: str) -> TensorEntry:
        try:
            return self._where[name].entries[name]
        except KeyError:
            raise InputNotFoundError(
                f"the checkpoint in {self.folder} has no tensor {name!r}."
            ) from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name).shape

    def dtype(self, name: str) -> str:
        """The stored dtype string: "BF16", "F16", "F32", "U8", "I8", ..."""
        return self._entry(name).dtype

    def nbytes(self, name: str) -> int:
        return self._entry(name).nbytes

    def entry(self, name: str) -> TensorEntry:
        return self._entry(name)

    @property
    def files(self) -> list[Path]:
        return list(self._files)

    @property
    def metadata(self) -> dict[str, str]:
        """The ``__metadata__`` of every file, merged."""
        merged: dict[str, str] = {}
        for f in self._files.values():
            merged.update(f.metadata)
        return merged

    def raw(self, name: str) -> np.ndarray:
        """The tensor as stored (BF16 as uint16 bits), memory-mapped and read-only."""
        self._entry(name)
        return self._where[name].raw(name)

    def get(self, name: str) -> np.ndarray:
        """The tensor as NumPy: BF16 -> float32 copy; every other dtype a read-only memmap view."""
        arr = self.raw(name)
        if self._entry(name).dtype == "BF16":
            return bf16_bits_to_f32(arr)
        return arr

    def close(self) -> None:
        for f in self._files.values():
            f.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- writing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """A tensor declared before its data exists: enough to write the header."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype].itemsize


#: What a producer may yield as a tensor's data: one array, or its consecutive slices along axis 0.
TensorData = np.ndarray | Iterable[np.ndarray]


def _as_spec(s: TensorSpec | tuple[str, Sequence[int], str]) -> TensorSpec:
    if isinstance(s, TensorSpec):
        spec = s
    else:
        name, shape, dtype = s
        spec = TensorSpec(str(name), tuple(int(d) for d in shape), str(dtype))
    if spec.dtype not in DTYPES:
        raise UsageError(f"tensor {spec.name!r}: unknown safetensors dtype {spec.dtype!r}.")
    return spec


def _encode(arr: np.ndarray, dtype: str, name: str) -> np.ndarray:
    """Convert `arr` to the little-endian storage dtype of `dtype` (no copy when possible)."""
    storage = DTYPES[dtype]
    if dtype == "BF16":
        if arr.dtype == np.uint16:  # already bf16 bits
            return np.ascontiguousarray(arr, dtype=storage)
        if arr.dtype.kind not in "fiu":
            raise ShapeError(f"tensor {name!r}: cannot store {arr.dtype} as BF16.")
        return f32_to_bf16_bits(arr.astype(np.float32, copy=False)).astype(storage, copy=False)
    if storage.kind in "iub" and arr.dtype.kind == "f":
        raise ShapeError(f"tensor {name!r}: refusing to store float data as {dtype}.")
    return np.ascontiguousarray(arr, dtype=storage)


def _write_array(f: Any, arr: np.ndarray, dtype: str, name: str) -> int:
    """Write one array (converted slice by slice along axis 0); return the bytes written."""
    arr = np.asarray(arr)
    written = 0
    if arr.ndim == 0 or arr.nbytes <= _WRITE_SLICE_BYTES:
        data = _encode(arr.reshape(-1), dtype, name)
        f.write(memoryview(data).cast("B"))
        return data.nbytes
    row_bytes = max(1, arr[0].nbytes)
    step = max(1, _WRITE_SLICE_BYTES // row_bytes)
    for i in range(0, arr.shape[0], step):
        data = _encode(arr[i : i + step].reshape(-1), dtype, name)
        f.write(memoryview(data).cast("B"))
        written += data.nbytes
    return written


def write_safetensors(
    path: Path | str,
    tensors: Iterable[tuple[str, TensorData, str]],
    metadata: Mapping[str, str] | None = None,
    *,
    specs: Sequence[TensorSpec | tuple[str, Sequence[int], str]] | None = None,
) -> Path:
    """Write a safetensors file, streaming tensor data one tensor at a time.

    `tensors` yields ``(name, data, dtype)``; dtype is a safetensors dtype string ("BF16", "F32",
    "U8", ...). Float data is converted to it (bf16 by round-to-nearest-even; a uint16 array given
    for "BF16" is taken as raw bf16 bits). `data` is an array, or an iterable of arrays that are
    consecutive slices along axis 0 — so even a tensor larger than memory can be produced piece
    by piece.

    Without `specs`, `tensors` is first collected into a list (fine for small checkpoints). For
    streaming, declare every tensor up front with `specs` — ``TensorSpec(name, shape, dtype)`` or
    ``(name, shape, dtype)`` — and pass a generator as `tensors` producing the same names in the
    same order: the header is written from the specs, then each tensor's bytes as it is produced,
    so peak memory is about one tensor (or one slice). Each produced tensor is checked against its
    spec. The file appears under `path` only when complete (written to a temporary name first).
    """
    path = Path(path)
    if specs is None:
        items = [
            (n, d if isinstance(d, np.ndarray) else np.concatenate(list(d)), t)
            for n, d, t in tensors
        ]
        decl = [_as_spec((n, np.shape(d), t)) for n, d, t in items]
        source: Iterable[tuple[str, TensorData, str]] = items
    else:
        decl = [_as_spec(s) for s in specs]
        source = tensors
    names = [s.name for s in decl]
    if len(set(names)) != len(names):
        raise UsageError("write_safetensors: tensor names must be unique.")

    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for s in decl:
        header[s.name] = {
            "dtype": s.dtype,
            "shape": list(s.shape),
            "data_offsets": [offset, offset + s.nbytes],
        }
        offset += s.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # keep the data section 8-byte aligned, like the reference

    with atomic_output(path, force=True) as tmp, open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        produced = iter(source)
        for s in decl:
            try:
                name, data, dtype = next(produced)
            except StopIteration:
                raise ShapeError(
                    f"write_safetensors: tensor {s.name!r} was declared but not produced."
                ) from None
            if name != s.name or dtype != s.dtype:
                raise ShapeError(
                    f"write_safetensors: expected tensor {s.name!r} ({s.dtype}), "
                    f"got {name!r} ({dtype})."
                )
            written = 0
            if isinstance(data, np.ndarray):
                if tuple(data.shape) != s.shape:
                    raise ShapeError(f"tensor {name!r} has shape {data.shape}, declared {s.shape}.")
                written = _write_array(f, data, dtype, name)
            else:
                for piece in data:
                    written += _write_array(f, np.asarray(piece), dtype, name)
            if written != s.nbytes:
                raise ShapeError(f"tensor {name!r}: produced {written} bytes, declared {s.nbytes}.")
        if next(produced, None) is not None:
            raise ShapeError("write_safetensors: more tensors produced than declared.")
    return path


def iter_safetensors_files(folder: Path | str) -> Iterator[Path]:
    """The safetensors files of a checkpoint folder (for size checks and listings)."""
    yield from sorted(Path(folder).glob("*.safetensors"))


def folder_nbytes(folder: Path | str) -> int:
    """Total size of the safetensors files in `folder`."""
    return sum(os.path.getsize(p) for p in iter_safetensors_files(folder))
