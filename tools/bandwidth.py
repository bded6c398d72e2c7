"""Memory traffic of a model, and the read bandwidth of this machine: the decode speed bound.

Generating one token (decode) reads every weight the token touches once, plus the KV cache of
the context so far. On a CPU that is memory-bound, so

    tokens/s  <=  read bandwidth / bytes read per generated token

`Traffic` computes the bytes from a GGUF's tensor table and hyper-parameters; `measure_read_
bandwidth` measures the bandwidth with a streaming-read probe (NumPy reductions over a buffer
several times larger than the last-level cache, one contiguous slice per thread). `bitnet bench`
prints measured tg as a percentage of that bound.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .constants import Keys
from .gguf import GGUFReader

#: Bytes per element of llama.cpp's default KV cache type (f16; llama-bench -ctk/-ctv f16).
KV_TYPE_BYTES = 2
#: llama-bench's default micro-batch: a prompt is computed in chunks of this many tokens, and
#: each chunk reads the weights once.
DEFAULT_UBATCH = 512
#: GGUF keys of the per-head K/V sizes (absent: hidden / heads).
_KEY_LENGTH = "{arch}.attention.key_length"
_VALUE_LENGTH = "{arch}.attention.value_length"


# --- what a token moves -----------------------------------------------------------------------


@dataclass(frozen=True)
class Traffic:
    """Bytes moved per token by a model, from its GGUF (no tensor data read).

    `weight_bytes` is what one decode step reads: every tensor once (all blk.* matrices and
    norms, output_norm, the head) except the token embedding, of which only one row is read
    (a row lookup) — unless the head is tied to it, in which case the whole matrix is read as
    the head. `kv_bytes_per_position` is the K plus V cache of one context position over all
    layers.
    """

    weight_bytes: int
    head_bytes: int
    embedding_row_bytes: int
    tied_head: bool
    kv_bytes_per_position: int

    @classmethod
    def from_gguf(cls, reader: GGUFReader, kv_type_bytes: int = KV_TYPE_BYTES) -> Traffic:
        tensors = reader.tensors
        embd = tensors.get("token_embd.weight")
        head = tensors.get("output.weight")
        tied = head is None and embd is not None
        total = sum(t.nbytes for t in tensors.values())
        row = 0
        if embd is not None:
            rows = embd.shape[0] if embd.shape else 1
            row = embd.nbytes // max(rows, 1)
        if tied:
            weight = total  # the embedding is read whole as the head (its lookup row included)
            head_bytes = embd.nbytes  # type: ignore[union-attr]
        else:
            weight = total - (embd.nbytes if embd is not None else 0) + row
            head_bytes = head.nbytes if head is not None else 0
        return cls(weight, head_bytes, row, tied, kv_position_bytes(reader, kv_type_bytes))

    def decode_bytes_per_token(self, depth: int, n_gen: int) -> float:
        """Average bytes read per generated token of an `n_gen`-token run after `depth` tokens.

        Token j (0-based) attends to depth + j + 1 positions, so the mean KV read is
        depth + (n_gen + 1) / 2 positions; the weights are read once per token.
        """
        n_gen = max(n_gen, 1)
        return self.weight_bytes + self.kv_bytes_per_position * (depth + (n_gen + 1) / 2)

    def run_bytes(
        self, n_prompt: int, n_gen: int, depth: int = 0, n_ubatch: int = DEFAULT_UBATCH
    ) -> float:
        """DRAM bytes of one timed repetition of a llama-bench test (prompt and/or generation).

        Prompt: each micro-batch of up to `n_ubatch` tokens reads the weights once and the KV
        cache up to its last position, and writes its own positions. Generation: per token, the
        weights, the KV of its context, and one position written. Activations (a few KiB per
        token) are left out.
        """
        kv = self.kv_bytes_per_position
        total = 0.0
        pos = depth
        for start in range(0, n_prompt, n_ubatch):
            chunk = min(n_ubatch, n_prompt - start)
            pos += chunk
            total += self.weight_bytes + kv * pos + kv * chunk
        for _ in range(n_gen):
            pos += 1
            total += self.weight_bytes + kv * pos + kv
        return total

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def kv_position_bytes(reader: GGUFReader, kv_type_bytes: int = KV_TYPE_BYTES) -> int:
    """K + V cache bytes of one context position, all layers (0 if the GGUF lacks the keys)."""
    layers = reader.key(Keys.BLOCK_COUNT) or 0
    hidden = reader.key(Keys.EMBEDDING_LENGTH) or 0
    heads = reader.key(Keys.HEAD_COUNT) or 0
    kv_heads = reader.key(Keys.HEAD_COUNT_KV) or heads
    if isinstance(heads, list):  # per-layer head counts (some archs): take the first layer's
        heads = heads[0]
    if isinstance(kv_heads, list):
        kv_heads = kv_heads[0]
    if not (layers and hidden and heads):
        return 0
    k_len = reader.key(_KEY_LENGTH) or hidden // heads
    v_len = reader.key(_VALUE_LENGTH) or hidden // heads
    return int(layers) * int(kv_heads) * (int(k_len) + int(v_len)) * kv_type_bytes


def bound_tokens_per_second(bandwidth_bytes_per_s: float, bytes_per_token: float) -> float:
    """The memory-bandwidth bound on decode speed."""
    return bandwidth_bytes_per_s / bytes_per_token if bytes_per_token > 0 else math.inf


# --- the probe --------------------------------------------------------------------------------

#: Probe buffer limits: at least 256 MiB, 4x the last-level cache, at most 4 GiB and a quarter
#: of the available memory.
_MIN_BUFFER = 256 << 20
_MAX_BUFFER = 4 << 30
_CACHE_FACTOR = 4


@dataclass(frozen=True)
class Bandwidth:
    """One probe result: best-of-`passes` read bandwidth with `threads` threads."""

    threads: int
    bytes_per_second: float
    buffer_bytes: int
    passes: int
    llc_bytes: int | None
    method: str = "numpy bitwise_or.reduce over uint64, one contiguous slice per thread"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def last_level_cache_bytes(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int | None:
    """Size of the largest cache of CPU 0 (from sysfs; None where it is not exposed)."""
    best = None
    for idx in sorted(root.glob("index*")) if root.is_dir() else []:
        try:
            text = (idx / "size").read_text().strip().upper()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            size = int(digits) * mult
            best = size if best is None else max(best, size)
    return best


def available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def probe_buffer_bytes(llc: int | None, available: int | None) -> int:
    """The probe's buffer: 4x the last-level cache, within [256 MiB, 4 GiB] and ≤ ¼ of memory."""
    size = max(_MIN_BUFFER, _CACHE_FACTOR * (llc or 0))
    size = min(size, _MAX_BUFFER)
    if available:
        size = min(size, available // 4)
    return max(size - size % (1 << 20), 1 << 20)


def measure_read_bandwidth(
    threads: int = 1, nbytes: int | None = None, passes: int = 3
) -> Bandwidth:
    """Streaming-read bandwidth with `threads` threads, best of `passes` timed passes.

    The buffer (see probe_buffer_bytes) is written once so every page is resident, then split
    into `threads` contiguous slices; each thread reduces its slice with NumPy (which releases
    the GIL inside the loop, so the threads read in parallel). A pass lasts from the first
    thread's start to the last one's finish, each read by the worker itself: total bytes / that
    time.
    """
    threads = max(1, int(threads))
    llc = last_level_cache_bytes()
    nbytes = nbytes or probe_buffer_bytes(llc, available_memory())
    buf = np.empty(nbytes // 8, dtype=np.uint64)
    buf.fill(1)
    parts = np.array_split(buf, threads)
    start = threading.Barrier(threads + 1)
    done = threading.Barrier(threads + 1)

    # each worker times its own slice: a clock read by this thread after start.wait() could come
    # late (with as many workers as CPUs, this thread may not run again until they finish)
    spans = [[(math.inf, -math.inf)] * passes for _ in parts]

    def work(i: int, part: np.ndarray) -> None:
        for p in range(passes):
            start.wait()
            t0 = time.perf_counter()
            np.bitwise_or.reduce(part)
            spans[i][p] = (t0, time.perf_counter())
            done.wait()

    workers = [threading.Thread(target=work, args=a, daemon=True) for a in enumerate(parts)]
    for w in workers:
        w.start()
    for _ in range(passes):
        start.wait()
        done.wait()
    for w in workers:
        w.join()
    # a pass lasts from the first worker's start to the last one's end
    best = min(max(s[p][1] for s in spans) - min(s[p][0] for s in spans) for p in range(passes))
    del parts, buf
    return Bandwidth(threads, nbytes / best if best > 0 else math.inf, nbytes, passes, llc)
