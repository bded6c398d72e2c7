"""Made-up ternary checkpoints in the Hugging Face layout of each family bitnet runs.

Tests and benchmarks need models of real shapes without downloading gigabytes: `make_dummy`
writes a complete HF folder (config.json, model.safetensors, tokenizer files, generation config)
from a seed. Families (`FAMILIES`, spec §9), each with its real config keys, tensor names,
tokenizer and storage:

* ``bitnet-b1.58`` — microsoft/bitnet-b1.58-2B-4T (`BitNetForCausalLM`, relu2, sub-norms
  `attn_sub_norm`/`ffn_sub_norm`, Llama-3 BPE, `autobitlinear` scales);
* ``1bitllm`` — 1bitLLM/bitnet_b1_58-* (`BitnetForCausalLM`, silu, sub-norms
  `inner_attn_ln`/`ffn_layernorm`, fp16 masters, SentencePiece `tokenizer.model`, vocab 32002);
* ``llama`` — Llama3-8B-1.58 / Falcon3-1.58bit / Falcon-E (`LlamaForCausalLM` with
  `quant_method: bitnet`, silu, no sub-norms, packed `bitlinear` scales = 1/mean|W|, untied
  lm_head, Llama-3 BPE).

Layouts:

* ``packed`` — like ``bitnet-b1.58-2B-4T``: each ternary linear is uint8 [out/4, in] holding four
  codes per byte along the *output* dimension, plus a bf16 ``weight_scale`` [1];
* ``bf16`` / ``fp16`` — latent master weights (``bitnet-b1.58-2B-4T-bf16``; 1bitLLM's fp16).

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

LAYOUTS = ("packed", "bf16", "fp16")

#: The quantization_config of each 2B-4T layout (the offline one is the published 2B-4T's).
QUANTIZATION_CONFIG = {
    layout: {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": mode}
    for layout, mode in (("packed", "offline"), ("bf16", "online"))
}


@dataclass(frozen=True)
class Family:
    """How one model family lays out its checkpoint (spec §9)."""

    architecture: str
    model_type: str
    hidden_act: str
    #: HF suffixes of the attention / FFN sub-norms, or None.
    sub_norms: tuple[str, str] | None
    layouts: tuple[str, ...]
    #: "bpe" (tokenizer.json, Llama-3 style) or "spm" (SentencePiece tokenizer.model).
    tokenizer: str
    #: linear_class of packed checkpoints: "autobitlinear" (scale multiplies) or "bitlinear".
    linear_class: str = "autobitlinear"
    #: tie_word_embeddings when a shape switches to this family without saying.
    tied: bool = True


FAMILIES: dict[str, Family] = {
    "bitnet-b1.58": Family(
        "BitNetForCausalLM", "bitnet", "relu2",
        ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm"), ("packed", "bf16"), "bpe",
    ),
    "1bitllm": Family(
        "BitnetForCausalLM", "llama", "silu",
        ("self_attn.inner_attn_ln", "mlp.ffn_layernorm"), ("fp16",), "spm",
    ),
    "llama": Family(
        "LlamaForCausalLM", "llama", "silu", None, ("packed",), "bpe", "bitlinear", tied=False,
    ),
}  # fmt: skip


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
    family: str = "bitnet-b1.58"
    #: None = the family's activation; "silu"/"relu2" to make the other graph of a family.
    hidden_act: str | None = None

    @property
    def act(self) -> str:
        return self.hidden_act or FAMILIES[self.family].hidden_act

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.head_dim * self.kv_heads


def _paper(hidden: int, ffn: int, layers: int, heads: int) -> ModelShape:
    # The paper's dummy sizes (spec §6): MHA (kv heads = heads), the 1bitLLM vocab of 32002.
    return ModelShape(hidden, layers, heads, heads, ffn, vocab=32002, ctx=2048)


def _1bitllm(hidden: int, ffn: int, layers: int, heads: int) -> ModelShape:
    # 1bitLLM/bitnet_b1_58-* (spec §4.2): MHA, vocab 32002, rope θ 10000, ctx 2048.
    return ModelShape(
        hidden, layers, heads, heads, ffn, 32002, 2048, 10000.0, 1e-5, True, "1bitllm"
    )


def _llama(
    hidden: int, layers: int, heads: int, kv: int, ffn: int, vocab: int, theta: float, ctx: int
) -> ModelShape:
    # LlamaForCausalLM + quant_method bitnet (spec §4.3, §9): untied lm_head.
    return ModelShape(hidden, layers, heads, kv, ffn, vocab, ctx, theta, 1e-5, False, "llama")


#: Named shapes. "tiny" is for tests (every K a multiple of 128, so I2_S can hold it);
#: "2b4t" is BitNet b1.58 2B-4T (spec §4.1); "700M"/"large" and "3B" are 1bitLLM's
#: bitnet_b1_58-large / -3B (spec §4.2; 3B's FFN of 8640 is not a multiple of 128: converted with
#: a padded FFN); "llama3-8b" and "falcon3-*" are the LlamaForCausalLM families (spec §9; Falcon3
#: head_dim 256, vocab 131072 — the 1B row of §9 is unconfirmed); the rest is the table of the
#: paper's dummy models (spec §6: hidden/FFN/layers/heads). Falcon-E has no preset: §9 gives only
#: its layer counts.
PRESETS: dict[str, ModelShape] = {
    "tiny": ModelShape(hidden=128, layers=2, heads=4, kv_heads=2, ffn=256, vocab=512, ctx=512),
    "2b4t": ModelShape(hidden=2560, layers=30, heads=20, kv_heads=5, ffn=6912, vocab=128256),
    "700M": _1bitllm(1536, 4096, 24, 16),
    "large": _1bitllm(1536, 4096, 24, 16),
    "3B": _1bitllm(3200, 8640, 26, 32),
    "llama3-8b": _llama(4096, 32, 32, 8, 14336, 128256, 500000.0, 8192),
    "falcon3-1b": _llama(2048, 18, 8, 4, 8192, 131072, 1000042.0, 8192),
    "falcon3-3b": _llama(3072, 22, 12, 4, 9216, 131072, 1000042.0, 32768),
    "falcon3-7b": _llama(3072, 28, 12, 4, 23040, 131072, 1000042.0, 32768),
    "falcon3-10b": _llama(3072, 40, 12, 4, 23040, 131072, 1000042.0, 32768),
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
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides.get("family") in FAMILIES and "tie_embeddings" not in overrides:
        overrides["tie_embeddings"] = FAMILIES[overrides["family"]].tied
    shape = replace(PRESETS[key], **overrides)
    _validate(shape)
    return shape


def _validate(s: ModelShape) -> None:
    if s.family not in FAMILIES:
        raise UsageError(
            f"unknown family {s.family!r}.", hint=f"choose one of: {', '.join(FAMILIES)}"
        )
    if s.act not in ("relu2", "silu"):
        raise UsageError(f"hidden_act must be relu2 or silu, not {s.act!r}.")
    if FAMILIES[s.family].sub_norms is None and s.act != "silu":
        raise UsageError("the llama family is SiLU-gated; hidden_act relu2 needs sub-norms.")
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
    """Every tensor in file order, with the family's HF names."""
    fam = FAMILIES[s.family]
    if layout not in fam.layouts:
        raise UsageError(
            f"layout {layout!r} is not one the {s.family} family uses.",
            hint=f"choose one of: {', '.join(fam.layouts)}",
        )
    master_dtype = "F16" if layout == "fp16" else "BF16"
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
        if layout != "packed":
            add(name, (m, k), master_dtype, "linear")
            return
        if m % 4:
            raise ShapeError(
                f"{name} has {m} output features; the packed layout stores 4 rows per byte and "
                "needs a multiple of 4.",
                hint="use --layout bf16, or change the shape",
            )
        add(name, (m // 4, k), "U8", "packed", logical=(m, k))
        add(name + "_scale", (1,), "BF16", "scale", source=name, logical=(m, k))

    fdt = master_dtype  # embeddings and norms share the masters' dtype
    add("model.embed_tokens.weight", (s.vocab, s.hidden), fdt, "embed")
    for i in range(s.layers):
        p = f"model.layers.{i}."
        add(p + "input_layernorm.weight", (s.hidden,), fdt, "norm")
        for suffix, m, k in _linears(s)[:4]:
            linear(f"{p}{suffix}.weight", m, k)
        if fam.sub_norms:
            add(f"{p}{fam.sub_norms[0]}.weight", (s.hidden,), fdt, "norm")
        add(p + "post_attention_layernorm.weight", (s.hidden,), fdt, "norm")
        for suffix, m, k in _linears(s)[4:]:
            linear(f"{p}{suffix}.weight", m, k)
        if fam.sub_norms:
            add(f"{p}{fam.sub_norms[1]}.weight", (s.ffn,), fdt, "norm")
    add("model.norm.weight", (s.hidden,), fdt, "norm")
    if not s.tie_embeddings:
        add("lm_head.weight", (s.vocab, s.hidden), fdt, "embed")
    return out


def count_params(s: ModelShape) -> int:
    """Parameters of the model (tied head counted once), as HF counts them."""
    norms = 3 * s.hidden + s.ffn if FAMILIES[s.family].sub_norms else 2 * s.hidden
    per_layer = sum(m * k for _, m, k in _linears(s)) + norms
    head = 0 if s.tie_embeddings else s.vocab * s.hidden
    return s.vocab * s.hidden + s.layers * per_layer + s.hidden + head


# --- the config files ---------------------------------------------------------------------------


def hf_config(
    s: ModelShape, layout: str, tok: Any, *, preset: str = "", seed: int = 0
) -> dict[str, Any]:
    """config.json, field for field like the family's published one (spec §9)."""
    fam = FAMILIES[s.family]
    cfg: dict[str, Any] = {
        "architectures": [fam.architecture],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.eos_id,
        "hidden_act": s.act,
        "hidden_size": s.hidden,
        "initializer_range": 0.02,
        "intermediate_size": s.ffn,
        "max_position_embeddings": s.ctx,
        "model_type": fam.model_type,
        "num_attention_heads": s.heads,
        "num_hidden_layers": s.layers,
        "num_key_value_heads": s.kv_heads,
        "rms_norm_eps": s.rms_norm_eps,
        "rope_scaling": None,
        "rope_theta": float(s.rope_theta),
        "tie_word_embeddings": s.tie_embeddings,
        "torch_dtype": "float16" if layout == "fp16" else "bfloat16",
        "use_cache": True,
        "vocab_size": s.vocab,
    }
    if s.family == "bitnet-b1.58":
        cfg["quantization_config"] = dict(QUANTIZATION_CONFIG[layout])
    elif s.family == "1bitllm":  # no quantization_config: the masters are ternarised at load
        cfg.update(input_bits=8, weight_bits=1, pad_token_id=tok.pad_id)
    else:  # LlamaForCausalLM + transformers' BitNet quantizer, as Falcon3-1.58bit ships it
        cfg["head_dim"] = s.head_dim
        cfg["mlp_bias"] = False
        cfg["quantization_config"] = {
            "quant_method": "bitnet",
            "linear_class": fam.linear_class,
            "modules_to_not_convert": ["lm_head"],
        }
    # Not an HF field: marks the folder as made up (and how), for `bitnet inspect` and humans.
    cfg["bitnet_dummy"] = {"preset": preset, "seed": seed, "layout": layout, "family": s.family}
    return cfg


def generation_config(tok: Any) -> dict[str, Any]:
    eos = [tok.eos_id, tok.eot_id] if getattr(tok, "eot_id", None) is not None else tok.eos_id
    return {"_from_model_config": True, "bos_token_id": tok.bos_id, "eos_token_id": eos}


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


def _stored(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values of a bf16-exact tensor in the checkpoint's float dtype."""
    return x.astype(np.float16) if dtype == "F16" else f32_to_bf16_bits(x)


def _embed_chunks(seed: int, t: PlannedTensor) -> Iterator[np.ndarray]:
    rows, hidden = t.shape
    rng = _rng(seed, t.source)
    std = np.float32(_EMBED_LOGIT_STD / math.sqrt(hidden))
    for start in range(0, rows, _EMBED_CHUNK_ROWS):
        n = min(_EMBED_CHUNK_ROWS, rows - start)
        chunk = rng.standard_normal((n, hidden), dtype=np.float32)
        chunk *= std
        yield _stored(chunk, t.dtype)


def _norm(seed: int, t: PlannedTensor) -> np.ndarray:
    jitter = _rng(seed, t.source).uniform(-_NORM_JITTER, _NORM_JITTER, size=t.shape)
    return _stored((1.0 + jitter).astype(np.float32), t.dtype)


def _produce(
    seed: int, plan: list[PlannedTensor], linear_class: str = "autobitlinear"
) -> Iterator[tuple[str, Any, str]]:
    """Yield (name, data, dtype) for write_safetensors: one tensor (or embedding chunk) at once.
    Packed scales are stored as the family's linear_class reads them: s, or 1/s for bitlinear."""
    pending_scale: dict[str, float] = {}
    for t in plan:
        if t.kind == "embed":
            yield t.name, _embed_chunks(seed, t), t.dtype
        elif t.kind == "norm":
            yield t.name, _norm(seed, t), t.dtype
        elif t.kind == "linear":
            if t.dtype == "F16":
                w = latent_linear(seed, t.source, *t.logical_shape)
                yield t.name, w.astype(np.float16), t.dtype
            else:
                yield t.name, latent_linear_bits(seed, t.source, *t.logical_shape), t.dtype
        elif t.kind == "packed":
            w = latent_linear(seed, t.source, *t.logical_shape)
            codes, scale = ternarize_absmean(w)
            del w
            if linear_class == "bitlinear":  # W ≈ t / weight_scale (spec §5.1)
                scale = float(np.float32(1.0) / np.float32(scale))
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
    preset: str = "tiny", layout: str | None = None, seed: int = 0, **overrides: Any
) -> DummyPlan:
    """Resolve the shape and list every tensor, without writing anything. `layout` None is the
    family's first layout (packed, or fp16 for 1bitllm)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UsageError(f"seed must be a non-negative integer, not {seed!r}.")
    shape = resolve_shape(preset, **overrides)
    if layout is None:
        layout = FAMILIES[shape.family].layouts[0]
    elif layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}.", hint=f"choose one of: {', '.join(LAYOUTS)}")
    name = {k.lower(): k for k in PRESETS}[str(preset).lower()]
    return DummyPlan(name, layout, seed, shape, plan_tensors(shape, layout))


def make_dummy(
    out_dir: Path | str,
    preset: str = "tiny",
    layout: str | None = None,
    seed: int = 0,
    *,
    force: bool = False,
    progress: ProgressFn | None = None,
    **overrides: Any,
) -> Path:
    """Write a ternary HF checkpoint folder made from `seed`; return its path.

    `overrides` change the preset's shape: hidden, layers, heads, kv_heads, ffn, vocab, ctx,
    rope_theta, rms_norm_eps, tie_embeddings, family, hidden_act. The same (preset, overrides,
    seed) always gives the same bytes. An existing `out_dir` is replaced only with `force`;
    nothing is left behind on
    failure.
    """
    plan = plan_dummy(preset, layout, seed, **overrides)
    fam = FAMILIES[plan.shape.family]
    if fam.tokenizer == "spm":
        tok: Any = hf_tokenizer.build_sentencepiece(plan.shape.vocab)
    else:
        tok = hf_tokenizer.build_tokenizer(plan.shape.vocab)
    assert tok.vocab_size == plan.shape.vocab
    out_dir = Path(out_dir)
    total = plan.weights_nbytes
    done = 0

    def counted() -> Iterator[tuple[str, Any, str]]:
        nonlocal done
        items = _produce(seed, plan.tensors, fam.linear_class)
        for item, t in zip(items, plan.tensors, strict=True):
            yield item
            done += t.nbytes
            if progress:
                progress(done, total, f"writing {t.name}")

    with atomic_output(out_dir, force) as tmp:
        tmp.mkdir(parents=True)
        config = hf_config(plan.shape, plan.layout, tok, preset=plan.preset, seed=seed)
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "generation_config.json", generation_config(tok))
        tok.write(tmp, model_max_length=plan.shape.ctx)
        specs = [TensorSpec(t.name, t.shape, t.dtype) for t in plan.tensors]
        write_safetensors(tmp / "model.safetensors", counted(), {"format": "pt"}, specs=specs)
    return out_dir


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
