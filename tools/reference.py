"""NumPy golden model of the ternary decoder graphs (W1.58A8), the spec runtimes are tested against.

Three GGUF architectures share it (`HParams.from_gguf_kv` reads which): `bitnet-b1.58` /
`bitnet-25` (below: ReLU², sub-norms, NEOX RoPE), upstream's `bitnet` (1bitLLM: the same with a
SiLU-gated FFN) and `llama` (Llama3-8B-1.58, Falcon3, Falcon-E: SiLU, no sub-norms, NORM RoPE —
adjacent pairs, on q/k rows the converter permuted — and an untied output.weight).

The graph (ref: shared/spec/bitnet-formats.md §4.1, the fork's `build_bitnet_158`), per layer:

    h = RMSNorm(x)·attn_norm
    q, k, v = BitLinear(h)                       (q, k: NEOX RoPE, θ = rope.freq_base)
    a = softmax(q·kᵀ/√head_dim + causal mask)·v  (GQA: q head h reads kv head h//(n_head/n_head_kv))
    a = RMSNorm(a)·attn_sub_norm;  x += BitLinear_o(a)
    h = RMSNorm(x)·ffn_norm
    f = relu(BitLinear_gate(h))² ⊙ BitLinear_up(h)
    f = RMSNorm(f)·ffn_sub_norm;   x += BitLinear_down(f)

then `RMSNorm(x)·output_norm` and logits = token_embd · x (tied), or output.weight when the file has
one. Every RMSNorm uses `attention.layer_norm_rms_epsilon`.

BitLinear (ref: spec §2.4–§2.5 and the C kernel contract `bitnet_i2s_mul_mat`) works on integers:
per token row, d = 127 / max(max|x|, 1e-5) and q = clip(rint(x·d), −128, 127) (ties to even), both
in float32; raw = Σ w·q exactly (= Σ code·q − Σ q with code = w + 1, what the kernel computes);
y = (float32)raw / d · w_scale, two float32 operations in that order. This module reproduces that
bit for bit, so a C kernel's BitLinear output can be compared with `==`.

Everything else is plain float32 math in the natural order (sums of squares in float64, like
ggml). Against llama.cpp the differences are rounding ones: a few ulp per op, llama.cpp's f16 KV
cache, and the head — for an F16 token_embd llama.cpp rounds the activations to f16 before the
dot products (the vec_dot_type of F16 is F16), for Q8_0/Q6_K it quantizes them to 8 bits; we keep
the head in float32 on the dequantized weights (`head_f16_activations=True` mimics the F16 case).
Rounding differences also move some x·d across a .5 boundary, and such an int8 activation flip
shifts later logits by up to ~1e-2·max|logit| on tiny random models. So compare runtimes with a
tolerance or flip-aware (find the first token whose int8 activations differ, via `trace`; see
tests/test_oracle.py), never with `==` on logits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .constants import ARCH_BITNET, ARCH_LLAMA, TERNARY_ARCHES, Keys
from .errors import CorruptFileError, ShapeError, UnsupportedArchitectureError, UsageError

# ref: spec §2.4 — the activation quantizer's clamp and range (int8, symmetric 127).
ACT_QMAX = 127
ACT_EPS = np.float32(1e-5)

#: Largest K for which a float32 GEMM of int8-range values is an exact integer sum:
#: every partial sum is an integer of magnitude ≤ 128·K, exactly representable while ≤ 2**24.
_F32_EXACT_MAX_K = 2**24 // 128

#: llama.cpp's default rope base when `rope.freq_base` is absent.
_DEFAULT_ROPE_THETA = 10000.0

_REQUIRED = object()  # sentinel: a GGUF key without a default

#: Per-layer ternary linears and norms (GGUF names without the `blk.N.` prefix and `.weight`).
LINEAR_NAMES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
NORM_NAMES = ("attn_norm", "attn_sub_norm", "ffn_norm", "ffn_sub_norm")


# --- hyper-parameters ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HParams:
    """Hyper-parameters of one BitNet b1.58 model (the `{arch}.*` keys of its GGUF)."""

    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    rms_eps: float = 1e-5
    rope_theta: float = _DEFAULT_ROPE_THETA
    #: `rope.dimension_count`: how many leading dims of each head RoPE rotates (default: all).
    n_rot: int | None = None
    context_length: int = 4096
    #: FFN gate activation: "relu2" (bitnet-b1.58) or "silu" (bitnet, llama).
    ffn_act: str = "relu2"
    #: attn_sub_norm / ffn_sub_norm present (BitNet graphs) or not (llama).
    sub_norms: bool = True
    #: "neox" (i ↔ i + n_rot/2, BitNet graphs) or "norm" (2i ↔ 2i+1, llama).
    rope_mode: str = "neox"

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def rot_dims(self) -> int:
        return self.head_dim if self.n_rot is None else self.n_rot

    def validate(self) -> None:
        """Raise ShapeError if the numbers cannot describe a BitNet graph."""
        problems = []
        if min(self.n_vocab, self.n_embd, self.n_layer, self.n_head, self.n_head_kv, self.n_ff) < 1:
            problems.append("every size must be positive")
        elif self.n_embd % self.n_head:
            problems.append(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        elif self.n_head % self.n_head_kv:
            problems.append(f"n_head {self.n_head} is not a multiple of n_head_kv {self.n_head_kv}")
        elif self.rot_dims % 2 or not 0 < self.rot_dims <= self.head_dim:
            problems.append(f"rope dimension count {self.rot_dims} must be even and ≤ head_dim")
        if problems:
            raise ShapeError(f"Invalid hyper-parameters: {problems[0]}.")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> HParams:
        """Build from a dict with this class's field names (unknown names are an error)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"Unknown hyper-parameter(s): {', '.join(unknown)}.")
        return cls(**values)

    @classmethod
    def from_gguf_kv(cls, kv: Mapping[str, Any], n_vocab: int | None = None) -> HParams:
        """Read the hyper-parameters of a GGUF's key-value section, keyed by its arch prefix."""
        arch = kv.get(Keys.ARCHITECTURE)
        if arch not in TERNARY_ARCHES:
            raise UnsupportedArchitectureError(
                f"The reference model runs ternary decoder graphs only, not architecture {arch!r}.",
                hint=f"supported architectures: {', '.join(TERNARY_ARCHES)}",
            )

        def get(key: str, cast: type, default: Any = _REQUIRED) -> Any:
            name = key.format(arch=arch)
            if name in kv:
                value = kv[name]
                return cast(value.item() if isinstance(value, np.ndarray) else value)
            if default is _REQUIRED:
                raise CorruptFileError(
                    f"The GGUF has no {name!r} key.", hint="re-create it with `bitnet convert`"
                )
            return default

        n_head = get(Keys.HEAD_COUNT, int)
        vocab = get(Keys.VOCAB_SIZE, int, _REQUIRED if n_vocab is None else n_vocab)
        return cls(
            n_vocab=vocab,
            n_embd=get(Keys.EMBEDDING_LENGTH, int),
            n_layer=get(Keys.BLOCK_COUNT, int),
            n_head=n_head,
            n_head_kv=get(Keys.HEAD_COUNT_KV, int, n_head),
            n_ff=get(Keys.FEED_FORWARD_LENGTH, int),
            rms_eps=get(Keys.LAYERNORM_RMS_EPS, float),
            rope_theta=get(Keys.ROPE_FREQ_BASE, float, _DEFAULT_ROPE_THETA),
            n_rot=get(Keys.ROPE_DIMENSION_COUNT, int, None),
            context_length=get(Keys.CONTEXT_LENGTH, int, 4096),
            ffn_act="silu" if arch in (ARCH_BITNET, ARCH_LLAMA) else "relu2",
            sub_norms=arch != ARCH_LLAMA,
            rope_mode="norm" if arch == ARCH_LLAMA else "neox",
        )


def tensor_shapes(hp: HParams, with_output: bool = False) -> dict[str, tuple[int, ...]]:
    """Numpy shapes of every tensor of the graph, by GGUF name (linears are (M, K))."""
    n_q, n_kv = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (hp.n_vocab, hp.n_embd),
        "output_norm.weight": (hp.n_embd,),
    }
    if with_output:
        shapes["output.weight"] = (hp.n_vocab, hp.n_embd)
    per_layer = {
        "attn_norm": (hp.n_embd,),
        "attn_sub_norm": (hp.n_embd,),
        "ffn_norm": (hp.n_embd,),
        "ffn_sub_norm": (hp.n_ff,),
        "attn_q": (n_q, hp.n_embd),
        "attn_k": (n_kv, hp.n_embd),
        "attn_v": (n_kv, hp.n_embd),
        "attn_output": (hp.n_embd, n_q),
        "ffn_gate": (hp.n_ff, hp.n_embd),
        "ffn_up": (hp.n_ff, hp.n_embd),
        "ffn_down": (hp.n_embd, hp.n_ff),
    }
    if not hp.sub_norms:
        del per_layer["attn_sub_norm"], per_layer["ffn_sub_norm"]
    for i in range(hp.n_layer):
        for short, shape in per_layer.items():
            shapes[f"blk.{i}.{short}.weight"] = shape
    return shapes


@dataclass(frozen=True)
class TernaryWeight:
    """A ternary linear weight: int8 codes (M, K) in {-1, 0, +1} and one float32 scale."""

    codes: np.ndarray
    scale: np.float32

    def __post_init__(self) -> None:
        codes = np.asarray(self.codes)
        if codes.ndim != 2:
            raise ShapeError(f"Ternary codes must be 2-D (M, K), not shape {codes.shape}.")
        object.__setattr__(self, "codes", codes.astype(np.int8, copy=False))
        object.__setattr__(self, "scale", np.float32(self.scale))

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape  # type: ignore[return-value]

    def dequantize(self) -> np.ndarray:
        """codes · scale in float32 (what quants' `dequantize` returns for a ternary type)."""
        return self.codes.astype(np.float32) * self.scale


# --- the pieces ---------------------------------------------------------------------------------


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm over the last axis, times `weight`. ref: ggml_compute_forward_rms_norm_f32.

    The sum of squares is accumulated in float64 (ggml_float), the scale 1/√(mean + eps) is rounded
    to float32, and the products are float32.
    """
    x = np.asarray(x, dtype=np.float32)
    mean_sq = np.mean(np.square(x.astype(np.float64)), axis=-1, keepdims=True)
    scale = (1.0 / np.sqrt(mean_sq + eps)).astype(np.float32)
    return (x * scale) * np.asarray(weight, dtype=np.float32)


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row int8 absmax quantization (ref: spec §2.4, `bitnet_quantize_row_i8s`).

    Returns `(q, d)`: q int8 with the shape of x, d float32 with one value per row, such that
    x ≈ q / d. Every step is float32: d = 127 / max(max|x|, 1e-5), q = clip(rint(x·d), −128, 127).
    `np.rint` rounds half to even, like the C kernels' rintf (and the fork's magic-number trick).
    An all-zero row gets d = 1.27e7 and q = 0.
    """
    x = np.asarray(x, dtype=np.float32)
    amax = np.max(np.abs(x), axis=-1)  # exact in float32
    d = np.float32(ACT_QMAX) / np.maximum(amax, ACT_EPS)  # float32 ÷ float32
    q = np.clip(np.rint(x * d[..., None]), -ACT_QMAX - 1, ACT_QMAX)
    return q.astype(np.int8), d.astype(np.float32)


def ternary_dot(q: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Exact integer products raw[t, r] = Σ_i codes[r, i]·q[t, i] as int64, shape (T, M).

    Equal to the kernel's Σ (code+1)·q − Σ q. A float32 GEMM is exact here because every partial
    sum is an integer of magnitude ≤ 128·K ≤ 2**24 (checked); for wider K we fall back to float64,
    exact up to 2**53.
    """
    k = q.shape[-1]
    acc_type = np.float32 if k <= _F32_EXACT_MAX_K else np.float64
    acc = q.astype(acc_type) @ codes.astype(acc_type).T
    return acc.astype(np.int64)


def bitlinear(x: np.ndarray, weight: TernaryWeight) -> np.ndarray:
    """W1.58A8 linear: int8 activations × ternary codes, exact integers, then the float epilogue.

    ref: spec §2.5 `y = (raw − act_sum) / act_scale · w_scale`; the C contract computes
    `(float)(Σ code·q − Σ q) / d * w_scale` in float32, exactly what this does.
    """
    q, d = quantize_activations(x)  # (T, K) int8, (T,) float32
    raw = ternary_dot(q, weight.codes)  # (T, M) int64, exact
    return raw.astype(np.float32) / d[:, None] * weight.scale


def bitlinear_float(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The same BitLinear with a float weight matrix (dequantized codes·scale, or a float tensor).

    Activations are still int8-quantized per token; the matmul is a float32 GEMM. With
    weight = codes·scale this equals `bitlinear` to within float32 rounding (a few ulp of the sum).
    """
    q, d = quantize_activations(x)
    return (q.astype(np.float32) @ np.asarray(weight, dtype=np.float32).T) / d[:, None]


def rope_neox(x: np.ndarray, positions: np.ndarray, theta_base: float, n_rot: int) -> np.ndarray:
    """NEOX rotary embedding on x of shape (T, heads, head_dim); returns a new float32 array.

    Pair i ↔ i + n_rot/2 for i < n_rot/2 is rotated by angle pos·θ_i with θ_i = base^(−2i/n_rot)
    (ref: ggml rope mode NEOX; HF `rotate_half`). Dims ≥ n_rot pass through unchanged. Angles,
    cos and sin are computed in float64 and rounded to float32; the rotation itself is float32.
    """
    x = np.asarray(x, dtype=np.float32)
    half = n_rot // 2
    inv_freq = float(theta_base) ** (-2.0 * np.arange(half, dtype=np.float64) / n_rot)
    angle = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]  # (T, half)
    cos = np.cos(angle).astype(np.float32)[:, None, :]  # broadcast over heads
    sin = np.sin(angle).astype(np.float32)[:, None, :]
    x0, x1 = x[..., :half], x[..., half:n_rot]
    out = x.copy()
    out[..., :half] = x0 * cos - x1 * sin
    out[..., half:n_rot] = x0 * sin + x1 * cos
    return out


def rope_norm(x: np.ndarray, positions: np.ndarray, theta_base: float, n_rot: int) -> np.ndarray:
    """NORM (GPT-J / Llama in llama.cpp) rotary embedding: pair 2i ↔ 2i+1 for 2i < n_rot, angle
    pos·base^(−2i/n_rot) (ref: ggml rope mode 0). Same precision choices as `rope_neox`."""
    x = np.asarray(x, dtype=np.float32)
    half = n_rot // 2
    inv_freq = float(theta_base) ** (-2.0 * np.arange(half, dtype=np.float64) / n_rot)
    angle = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    cos = np.cos(angle).astype(np.float32)[:, None, :]
    sin = np.sin(angle).astype(np.float32)[:, None, :]
    x0, x1 = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
    out = x.copy()
    out[..., 0:n_rot:2] = x0 * cos - x1 * sin
    out[..., 1:n_rot:2] = x0 * sin + x1 * cos
    return out


def kv_head_of(q_head: int, n_head: int, n_head_kv: int) -> int:
    """GQA: the kv head that query head `q_head` reads (ggml broadcast, HF `repeat_kv`)."""
    return q_head // (n_head // n_head_kv)


def attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, q_pos: np.ndarray, k_pos: np.ndarray
) -> np.ndarray:
    """Causal multi-head attention with GQA.

    q: (T, n_head, hd); k, v: (S, n_head_kv, hd); q_pos (T,), k_pos (S,) absolute positions.
    Query t sees key s iff k_pos[s] ≤ q_pos[t]. Returns (T, n_head·hd) float32.
    """
    n_tok, n_head, hd = q.shape
    n_head_kv = k.shape[1]
    group = n_head // n_head_kv
    scale = np.float32(1.0 / np.sqrt(hd))  # llama.cpp: 1.0f/sqrtf(n_embd_head)
    visible = k_pos[None, :] <= q_pos[:, None]  # (T, S) causal mask
    out = np.empty((n_tok, n_head, hd), dtype=np.float32)
    for h in range(n_head):
        kvh = h // group  # GQA: consecutive query heads share one kv head
        scores = (q[:, h, :] @ k[:, kvh, :].T) * scale  # (T, S)
        scores = np.where(visible, scores, np.float32(-np.inf))
        scores = scores - scores.max(axis=-1, keepdims=True)  # every row sees itself: finite max
        p = np.exp(scores)
        p /= p.sum(axis=-1, keepdims=True)
        out[:, h, :] = p @ v[:, kvh, :]
    return out.reshape(n_tok, n_head * hd)


def relu_sqr(x: np.ndarray) -> np.ndarray:
    """ReLU² (HF hidden_act "relu2", ggml LLM_FFN_RELU_SQR)."""
    r = np.maximum(x, np.float32(0))
    return r * r


def silu(x: np.ndarray) -> np.ndarray:
    """SiLU x·σ(x) = x / (1 + e^−x) in float32 (HF hidden_act "silu", ggml LLM_FFN_SILU)."""
    x = np.asarray(x, dtype=np.float32)
    return x / (np.float32(1) + np.exp(-x))


ACTIVATIONS = {"relu2": relu_sqr, "silu": silu}


# --- the model ----------------------------------------------------------------------------------


@dataclass
class KVCache:
    """Post-RoPE keys and values of every layer for the tokens seen so far."""

    k: list[np.ndarray] = field(default_factory=list)  # per layer (S, n_head_kv, hd)
    v: list[np.ndarray] = field(default_factory=list)
    n_past: int = 0


Linear = TernaryWeight | np.ndarray


class ReferenceModel:
    """The BitNet b1.58 forward pass in NumPy. Build it with `from_gguf` or `from_arrays`.

    `int_matmul=False` dequantizes every ternary weight to float32 and runs the float BitLinear
    (`bitlinear_float`) instead of the exact integer one — a cross-check, not the spec.
    """

    def __init__(
        self,
        hparams: HParams,
        tensors: Mapping[str, Any],
        *,
        int_matmul: bool = True,
        head_f16_activations: bool = False,
    ) -> None:
        hparams.validate()
        self.hparams = hparams
        self.int_matmul = int_matmul
        self.head_f16_activations = head_f16_activations
        #: Optional `trace(name, x)` called with the float input of every BitLinear, e.g.
        #: ("blk.0.attn_q.weight", x of shape (T, K)) — to find where two runtimes diverge.
        self.trace: Callable[[str, np.ndarray], None] | None = None
        self._tensors = {name: self._prepare(name, t) for name, t in tensors.items()}
        self._check_tensors()

    # --- construction ---

    @classmethod
    def from_arrays(
        cls, hparams: HParams | Mapping[str, Any], tensors: Mapping[str, Any], **options: Any
    ) -> ReferenceModel:
        """Build from in-memory arrays keyed by GGUF tensor name (numpy shapes, (M, K) linears).

        A linear may be a `TernaryWeight`, a `(codes, scale)` tuple, or a float array (then it
        runs through the float BitLinear). Norms and embeddings are float arrays.
        """
        if not isinstance(hparams, HParams):
            hparams = HParams.from_mapping(hparams)
        return cls(hparams, tensors, **options)

    @classmethod
    def from_gguf(cls, path: str | Path, **options: Any) -> ReferenceModel:
        """Load a `bitnet-b1.58` / `bitnet-25` GGUF: ternary tensors are unpacked to codes + scale
        (via `bitnet.tools.quants`), every other tensor is dequantized to float32."""
        from . import quants
        from .gguf import GGUFReader

        tensors: dict[str, Any] = {}
        with GGUFReader(path) as reader:
            kv = dict(reader.kv)
            for name, info in reader.tensors.items():
                qtype = quants.get(info.type_id)
                if qtype.ternary:
                    codes, scale = qtype.unpack(reader.data(name), tuple(info.shape))
                    tensors[name] = TernaryWeight(codes, scale)
                else:  # a copy: nothing may keep the file's memory map alive
                    tensors[name] = np.array(reader.array(name), dtype=np.float32)
        if "token_embd.weight" not in tensors:
            raise CorruptFileError(
                f"{path} has no token_embd.weight tensor.",
                hint="re-create it with `bitnet convert`",
            )
        n_vocab = int(np.shape(tensors["token_embd.weight"])[0])
        hparams = HParams.from_gguf_kv(kv, n_vocab=n_vocab)
        return cls(hparams, tensors, **options)

    def _prepare(self, name: str, tensor: Any) -> Any:
        if isinstance(tensor, tuple):
            tensor = TernaryWeight(*tensor)
        if isinstance(tensor, TernaryWeight):
            return tensor if self.int_matmul else tensor.dequantize()
        return np.ascontiguousarray(tensor, dtype=np.float32)

    def _check_tensors(self) -> None:
        expected = tensor_shapes(self.hparams, with_output="output.weight" in self._tensors)
        for name, shape in expected.items():
            if name not in self._tensors:
                raise CorruptFileError(
                    f"The model has no {name} tensor.", hint="re-create it with `bitnet convert`"
                )
            have = tuple(self._tensors[name].shape)
            if have != shape:
                raise ShapeError(f"Tensor {name} has shape {have}, expected {shape}.")

    # --- forward ---

    def new_cache(self) -> KVCache:
        """An empty KV cache for `eval`."""
        return KVCache()

    def tensor(self, name: str) -> TernaryWeight | np.ndarray:
        """The model's tensor `name` (a TernaryWeight, or float32 after dequantization)."""
        return self._tensors[name]

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        if self.trace is not None:
            self.trace(name, x)
        w = self._tensors[name]
        return bitlinear(x, w) if isinstance(w, TernaryWeight) else bitlinear_float(x, w)

    def eval(self, tokens: Sequence[int], cache: KVCache, *, last_only: bool = False) -> np.ndarray:
        """Run `tokens` at positions cache.n_past… and append their keys/values to `cache`.

        Returns logits (len(tokens), n_vocab) float32, or (1, n_vocab) with `last_only`.
        """
        hp = self.hparams
        tok = np.asarray(list(tokens), dtype=np.int64)
        if tok.ndim != 1 or tok.size == 0:
            raise UsageError("Give at least one token.")
        if tok.min() < 0 or tok.max() >= hp.n_vocab:
            raise UsageError(f"Token ids must be in [0, {hp.n_vocab}).")
        n_tok, hd = tok.size, hp.head_dim
        pos = np.arange(cache.n_past, cache.n_past + n_tok)
        t = self._tensors

        # Embedding lookup: rows of the dequantized token_embd (ggml get_rows).
        x = t["token_embd.weight"][tok].astype(np.float32)

        for i in range(hp.n_layer):
            b = f"blk.{i}."
            # --- attention block (spec §4.1) ---
            h = rms_norm(x, t[b + "attn_norm.weight"], hp.rms_eps)
            q = self._linear(h, b + "attn_q.weight").reshape(n_tok, hp.n_head, hd)
            k = self._linear(h, b + "attn_k.weight").reshape(n_tok, hp.n_head_kv, hd)
            v = self._linear(h, b + "attn_v.weight").reshape(n_tok, hp.n_head_kv, hd)
            rope = rope_norm if hp.rope_mode == "norm" else rope_neox
            q = rope(q, pos, hp.rope_theta, hp.rot_dims)
            k = rope(k, pos, hp.rope_theta, hp.rot_dims)
            if len(cache.k) <= i:  # first chunk for this cache
                cache.k.append(k)
                cache.v.append(v)
            else:
                cache.k[i] = np.concatenate([cache.k[i], k])
                cache.v[i] = np.concatenate([cache.v[i], v])
            a = attention(q, cache.k[i], cache.v[i], pos, np.arange(cache.n_past + n_tok))
            if hp.sub_norms:
                a = rms_norm(a, t[b + "attn_sub_norm.weight"], hp.rms_eps)
            x = x + self._linear(a, b + "attn_output.weight")

            # --- feed-forward block: ReLU²- or SiLU-gated, sub-norm before down ---
            h = rms_norm(x, t[b + "ffn_norm.weight"], hp.rms_eps)
            act = ACTIVATIONS[hp.ffn_act]
            f = act(self._linear(h, b + "ffn_gate.weight")) * self._linear(h, b + "ffn_up.weight")
            if hp.sub_norms:
                f = rms_norm(f, t[b + "ffn_sub_norm.weight"], hp.rms_eps)
            x = x + self._linear(f, b + "ffn_down.weight")
        cache.n_past += n_tok

        # --- head: final norm, then a plain float32 matmul with the (tied) embedding ---
        if last_only:
            x = x[-1:]
        x = rms_norm(x, t["output_norm.weight"], hp.rms_eps)
        if self.head_f16_activations:
            x = x.astype(np.float16).astype(np.float32)  # what ggml does for an F16 weight
        head = t.get("output.weight", t["token_embd.weight"])
        return (x @ head.T).astype(np.float32, copy=False)

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        """Full causal forward from position 0: logits (len(tokens), n_vocab) float32."""
        return self.eval(tokens, self.new_cache())

    def next_logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits (n_vocab,) for the token that follows `tokens`."""
        return self.eval(tokens, self.new_cache(), last_only=True)[0]

    def generate(
        self,
        prompt_tokens: Sequence[int],
        n_new: int,
        stop_ids: Iterable[int] = (),
        greedy: bool = True,
    ) -> list[int]:
        """Greedy decoding with a KV cache: up to `n_new` new tokens (the prompt is not returned).

        Generation ends early when a token of `stop_ids` is chosen; that token is not returned.
        Ties in the argmax go to the lowest token id.
        """
        if not greedy:
            raise UsageError("The reference model decodes greedily only.")
        stops = set(stop_ids)
        cache = self.new_cache()
        out: list[int] = []
        if n_new <= 0:
            return out
        logits = self.eval(prompt_tokens, cache, last_only=True)[0]
        while True:
            token = int(np.argmax(logits))
            if token in stops:
                break
            out.append(token)
            if len(out) == n_new:
                break
            logits = self.eval([token], cache, last_only=True)[0]
        return out
