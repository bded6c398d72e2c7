"""Made-up BitNet b1.58 checkpoints in the Hugging Face layout of microsoft/bitnet-b1.58-2B-4T.

Tests and benchmarks need models of real shapes without downloading gigabytes: `make_dummy`
writes a complete HF folder (config.json, model.safetensors, tokenizer files, generation config)
from a seed. Two layouts, as Microsoft publishes them (spec §5.1, §5.2):

* ``packed`` — like ``bitnet-b1.58-2B-4T``: each ternary linear is uint8 [out/4, in] holding four
  codes per byte along the *output* dimension, plus a bf16 ``weight_scale`` [1];
* ``bf16``  — like ``bitnet-b1.58-2B-4T-bf16``: the latent bf16 master weights.

Both layouts of one (preset, seed) come from the same latent weights, and the packed one is made
with the project's absmean ternariser, so converting either gives identical ternary tensors.

Tensors are generated, ternarised and written one at a time (the embedding in row chunks), so
peak memory is about one linear layer, whatever the model size.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import hf_tokenizer
from .errors import ShapeError, UsageError
from .fsutil import atomic_output
from .quants.ternary import f32_to_bf16_bits, ternarize_absmean
from .safetensors import TensorSpec, write_safetensors

ProgressFn = Callable[[int, int, str], None]

LAYOUTS = ("packed", "bf16")

#: The quantization_config of each layout (the offline one is the published 2B-4T's).
QUANTIZATION_CONFIG = {
    layout: {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": mode}
    for layout, mode in (("packed", "offline"), ("bf16", "online"))
}


@dataclass(frozen=True)
class ModelShape:
    """The hyper-parameters a dummy checkpoint is made from."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    ctx: int = 4096
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.head_dim * self.kv_heads


def _paper(hidden: int, ffn: int, layers: int, heads: int) -> ModelShape:
    # The paper's dummy sizes (spec §6): MHA (kv heads = heads), the 1bitLLM vocab of 32002.
    return ModelShape(hidden, layers, heads, heads, ffn, vocab=32002, ctx=2048)


#: Named shapes. "tiny" is for tests (every K a multiple of 128, so I2_S can hold it);
#: "2b4t" is BitNet b1.58 2B-4T (spec §4.1); "700M"/"large" and "3B" are 1bitLLM's
#: bitnet_b1_58-large / -3B (spec §4.2; 3B's FFN of 8640 is not a multiple of 128); the rest is
#: the table of the paper's dummy models (spec §6: hidden/FFN/layers/heads).
PRESETS: dict[str, ModelShape] = {
    "tiny": ModelShape(hidden=128, layers=2, heads=4, kv_heads=2, ffn=256, vocab=512, ctx=512),
    "2b4t": ModelShape(hidden=2560, layers=30, heads=20, kv_heads=5, ffn=6912, vocab=128256),
    "700M": _paper(1536, 4096, 24, 16),
    "large": _paper(1536, 4096, 24, 16),
    "3B": _paper(3200, 8640, 26, 32),
    "125M": _paper(768, 3072, 11, 12),
    "350M": _paper(1024, 3072, 24, 16),
    "1B": _paper(2048, 3584, 24, 32),
    "1.5B": _paper(1536, 9216, 28, 32),
    "2.7B": _paper(3072, 7680, 24, 32),
    "3.8B": _paper(3840, 8192, 24, 32),
    "7B": _paper(4096, 12032, 32, 32),
    "13B": _paper(5120, 13824, 40, 40),
    "30B": _paper(6656, 16384, 60, 52),
    "70B": _paper(8192, 24576, 80, 64),
    "100B": _paper(8192, 45568, 72, 64),
}

#: Which override keyword changes which ModelShape field.
OVERRIDES = tuple(f.name for f in fields(ModelShape))

# Initialisation. Latent linears ~ N(0, 1/K): with ternary weights (scale ≈ 0.8/√K) each layer's
# output then has an RMS below 1, so the residual stream neither vanishes nor explodes. The
# embedding ~ N(0, (8/√hidden)²) makes logits (tied head) spread with std ≈ 8, so greedy tokens
# have clear margins — golden tests compare greedy tokens across implementations.
_EMBED_LOGIT_STD = 8.0
_NORM_JITTER = 0.1  # norm weights are 1 ± 0.1 (uniform)
_EMBED_CHUNK_ROWS = 2048  # fixed: the chunking is part of the deterministic stream


def preset_names() -> list[str]:
    return list(PRESETS)


def resolve_shape(preset: str = "tiny", **overrides: Any) -> ModelShape:
    """The preset's shape with `overrides` applied (keys: ModelShape field names), validated."""
    key = {k.lower(): k for k in PRESETS}.get(str(preset).lower())
    if key is None:
        raise UsageError(f"unknown preset {preset!r}.", hint=f"choose one of: {', '.join(PRESETS)}")
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise UsageError(
            f"unknown override(s) {', '.join(unknown)}; known: {', '.join(OVERRIDES)}."
        )
    shape = replace(PRESETS[key], **{k: v for k, v in overrides.items() if v is not None})
    _validate(shape)
    return shape


def _validate(s: ModelShape) -> None:
    for name in ("hidden", "layers", "heads", "kv_heads", "ffn", "vocab", "ctx"):
        value = getattr(s, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise UsageError(f"{name} must be a positive integer, not {value!r}.")
    if s.hidden % s.heads:
        raise ShapeError(f"hidden size {s.hidden} is not divisible by {s.heads} heads.")
    if s.heads % s.kv_heads:
        raise ShapeError(f"{s.heads} attention heads are not divisible by {s.kv_heads} kv heads.")
    if s.head_dim % 2:
        raise ShapeError(f"head dim {s.head_dim} is odd; RoPE rotates pairs of dimensions.")
    if s.rope_theta <= 0 or s.rms_norm_eps <= 0:
        raise UsageError("rope_theta and rms_norm_eps must be positive.")


# --- the tensor plan ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of the checkpoint: its spec and how to make it."""

    name: str
    shape: tuple[int, ...]  # stored shape
    dtype: str
    kind: str  # "embed", "norm", "linear" (latent bf16), "packed" (uint8 codes), "scale"
    source: str  # the latent tensor it derives from (the seed key)
    logical_shape: tuple[int, ...]  # (out, in) of a linear; == shape otherwise

    @property
    def nbytes(self) -> int:
        return TensorSpec(self.name, self.shape, self.dtype).nbytes


def _linears(s: ModelShape) -> list[tuple[str, int, int]]:
    """(HF name suffix, out_features, in_features) of one layer's ternary linears."""
    return [
        ("self_attn.q_proj", s.hidden, s.hidden),
        ("self_attn.k_proj", s.kv_dim, s.hidden),
        ("self_attn.v_proj", s.kv_dim, s.hidden),
        ("self_attn.o_proj", s.hidden, s.hidden),
        ("mlp.gate_proj", s.ffn, s.hidden),
        ("mlp.up_proj", s.ffn, s.hidden),
        ("mlp.down_proj", s.hidden, s.ffn),
    ]


def plan_tensors(s: ModelShape, layout: str) -> list[PlannedTensor]:
    """Every tensor in file order, HF 2B-4T names."""
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}.", hint=f"choose one of: {', '.join(LAYOUTS)}")
    out: list[PlannedTensor] = []

    def add(
        name: str,
        shape: tuple[int, ...],
        dtype: str,
        kind: str,
        source: str | None = None,
        logical: tuple[int, ...] | None = None,
    ) -> None:
        out.append(PlannedTensor(name, shape, dtype, kind, source or name, logical or shape))

    def linear(name: str, m: int, k: int) -> None:
        if layout == "bf16":
            add(name, (m, k), "BF16", "linear")
            return
        if m % 4:
            raise ShapeError(
                f"{name} has {m} output features; the packed layout stores 4 rows per byte and "
                "needs a multiple of 4.",
                hint="use --layout bf16, or change the shape",
            )
        add(name, (m // 4, k), "U8", "packed", logical=(m, k))
        add(name + "_scale", (1,), "BF16", "scale", source=name, logical=(m, k))

    add("model.embed_tokens.weight", (s.vocab, s.hidden), "BF16", "embed")
    for i in range(s.layers):
        p = f"model.layers.{i}."
        add(p + "input_layernorm.weight", (s.hidden,), "BF16", "norm")
        for suffix, m, k in _linears(s)[:4]:
            linear(f"{p}{suffix}.weight", m, k)
        add(p + "self_attn.attn_sub_norm.weight", (s.hidden,), "BF16", "norm")
        add(p + "post_attention_layernorm.weight", (s.hidden,), "BF16", "norm")
        for suffix, m, k in _linears(s)[4:]:
            linear(f"{p}{suffix}.weight", m, k)
        add(p + "mlp.ffn_sub_norm.weight", (s.ffn,), "BF16", "norm")
    add("model.norm.weight", (s.hidden,), "BF16", "norm")
    if not s.tie_embeddings:
        add("lm_head.weight", (s.vocab, s.hidden), "BF16", "embed")
    return out


def count_params(s: ModelShape) -> int:
    """Parameters of the model (tied head counted once), as HF counts them."""
    per_layer = sum(m * k for _, m, k in _linears(s)) + 3 * s.hidden + s.ffn
    head = 0 if s.tie_embeddings else s.vocab * s.hidden
    return s.vocab * s.hidden + s.layers * per_layer + s.hidden + head


# --- the config files ---------------------------------------------------------------------------


def hf_config(
    s: ModelShape, layout: str, tok: hf_tokenizer.BPETokenizer, *, preset: str = "", seed: int = 0
) -> dict[str, Any]:
    """config.json, field for field like the published 2B-4T's."""
    return {
        "architectures": ["BitNetForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.eos_id,
        "hidden_act": "relu2",
        "hidden_size": s.hidden,
        "initializer_range": 0.02,
        "intermediate_size": s.ffn,
        "max_position_embeddings": s.ctx,
        "model_type": "bitnet",
        "num_attention_heads": s.heads,
        "num_hidden_layers": s.layers,
        "num_key_value_heads": s.kv_heads,
        "quantization_config": dict(QUANTIZATION_CONFIG[layout]),
        "rms_norm_eps": s.rms_norm_eps,
        "rope_scaling": None,
        "rope_theta": float(s.rope_theta),
        "tie_word_embeddings": s.tie_embeddings,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": s.vocab,
        # Not an HF field: marks the folder as made up (and how), for `bitnet inspect` and humans.
        "bitnet_dummy": {"preset": preset, "seed": seed, "layout": layout},
    }


def generation_config(tok: hf_tokenizer.BPETokenizer) -> dict[str, Any]:
    return {
        "_from_model_config": True,
        "bos_token_id": tok.bos_id,
        "eos_token_id": [tok.eos_id, tok.eot_id],
    }


# --- weights ------------------------------------------------------------------------------------


def _rng(seed: int, source: str) -> np.random.Generator:
    """A generator keyed on (seed, latent tensor name): independent of layout and tensor order."""
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    key = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


def latent_linear_bits(seed: int, name: str, m: int, k: int) -> np.ndarray:
    """The bf16 latent master weight (m, k) of linear `name`, as uint16 bits."""
    w = _rng(seed, name).standard_normal((m, k), dtype=np.float32)
    w *= np.float32(1.0 / math.sqrt(k))
    return f32_to_bf16_bits(w)


def latent_linear(seed: int, name: str, m: int, k: int) -> np.ndarray:
    """The same latent weight as float32 (exactly the bf16 values)."""
    return (latent_linear_bits(seed, name, m, k).astype(np.uint32) << 16).view(np.float32)


def pack_hf_ternary(codes: np.ndarray) -> np.ndarray:
    """int8 codes (M, K) in {-1, 0, 1} -> HF packed uint8 (M/4, K).

    ref: spec §5.1 — byte (p, c) holds, for i = 0..3, code+1 of row i·(M/4) + p in bits 2i..2i+1
    (LSB first, along the output dimension).
    """
    m, k = codes.shape
    c = (codes.astype(np.int16) + 1).astype(np.uint8).reshape(4, m // 4, k)
    return c[0] | (c[1] << 2) | (c[2] << 4) | (c[3] << 6)


def _embed_chunks(seed: int, t: PlannedTensor) -> Iterator[np.ndarray]:
    rows, hidden = t.shape
    rng = _rng(seed, t.source)
    std = np.float32(_EMBED_LOGIT_STD / math.sqrt(hidden))
    for start in range(0, rows, _EMBED_CHUNK_ROWS):
        n = min(_EMBED_CHUNK_ROWS, rows - start)
        chunk = rng.standard_normal((n, hidden), dtype=np.float32)
        chunk *= std
        yield f32_to_bf16_bits(chunk)


def _norm(seed: int, t: PlannedTensor) -> np.ndarray:
    jitter = _rng(seed, t.source).uniform(-_NORM_JITTER, _NORM_JITTER, size=t.shape)
    return f32_to_bf16_bits((1.0 + jitter).astype(np.float32))


def _produce(seed: int, plan: list[PlannedTensor]) -> Iterator[tuple[str, Any, str]]:
    """Yield (name, data, dtype) for write_safetensors: one tensor (or embedding chunk) at once."""
    pending_scale: dict[str, float] = {}
    for t in plan:
        if t.kind == "embed":
            yield t.name, _embed_chunks(seed, t), t.dtype
        elif t.kind == "norm":
            yield t.name, _norm(seed, t), t.dtype
        elif t.kind == "linear":
            yield t.name, latent_linear_bits(seed, t.source, *t.logical_shape), t.dtype
        elif t.kind == "packed":
            w = latent_linear(seed, t.source, *t.logical_shape)
            codes, scale = ternarize_absmean(w)
            del w
            pending_scale[t.source] = scale
            yield t.name, pack_hf_ternary(codes), t.dtype
        elif t.kind == "scale":
            scale = pending_scale.pop(t.source)
            yield t.name, np.array([scale], dtype=np.float32), t.dtype
        else:  # pragma: no cover - plan_tensors makes only the kinds above
            raise AssertionError(t.kind)


# --- the public entry points --------------------------------------------------------------------


@dataclass
class DummyPlan:
    """What `make_dummy` would write (for --dry-run and for the report after writing)."""

    preset: str
    layout: str
    seed: int
    shape: ModelShape
    tensors: list[PlannedTensor]

    @property
    def weights_nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def params(self) -> int:
        return count_params(self.shape)

    def to_json(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "layout": self.layout,
            "seed": self.seed,
            "shape": asdict(self.shape),
            "params": self.params,
            "weights_bytes": self.weights_nbytes,
            "tensors": [
                {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "bytes": t.nbytes}
                for t in self.tensors
            ],
        }


def plan_dummy(
    preset: str = "tiny", layout: str = "packed", seed: int = 0, **overrides: Any
) -> DummyPlan:
    """Resolve the shape and list every tensor, without writing anything."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UsageError(f"seed must be a non-negative integer, not {seed!r}.")
    shape = resolve_shape(preset, **overrides)
    name = {k.lower(): k for k in PRESETS}[str(preset).lower()]
    return DummyPlan(name, layout, seed, shape, plan_tensors(shape, layout))


def make_dummy(
    out_dir: Path | str,
    preset: str = "tiny",
    layout: str = "packed",
    seed: int = 0,
    *,
    force: bool = False,
    progress: ProgressFn | None = None,
    **overrides: Any,
) -> Path:
    """Write a BitNet b1.58 HF checkpoint folder made from `seed`; return its path.

    `overrides` change the preset's shape: hidden, layers, heads, kv_heads, ffn, vocab, ctx,
    rope_theta, rms_norm_eps, tie_embeddings. The same (preset, overrides, seed) always gives the
    same bytes. An existing `out_dir` is replaced only with `force`; nothing is left behind on
    failure.
    """
    plan = plan_dummy(preset, layout, seed, **overrides)
    tok = hf_tokenizer.build_tokenizer(plan.shape.vocab)
    assert tok.vocab_size == plan.shape.vocab
    out_dir = Path(out_dir)
    total = plan.weights_nbytes
    done = 0

    def counted() -> Iterator[tuple[str, Any, str]]:
        nonlocal done
        for item, t in zip(_produce(seed, plan.tensors), plan.tensors, strict=True):
            yield item
            done += t.nbytes
            if progress:
                progress(done, total, f"writing {t.name}")

    with atomic_output(out_dir, force) as tmp:
        tmp.mkdir(parents=True)
        config = hf_config(plan.shape, layout, tok, preset=plan.preset, seed=seed)
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "generation_config.json", generation_config(tok))
        hf_tokenizer.write_tokenizer_files(tmp, tok, model_max_length=plan.shape.ctx)
        specs = [TensorSpec(t.name, t.shape, t.dtype) for t in plan.tensors]
        write_safetensors(tmp / "model.safetensors", counted(), {"format": "pt"}, specs=specs)
    return out_dir


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
