"""The shared converter of ternary Llama-style decoders (every family bitnet runs).

One class, `TernaryDecoder`, reads what a checkpoint says and writes one of three llama.cpp
graphs; the registered per-architecture modules (bitnet_for_causal_lm, bitnet_for_causal_lm_1bitllm,
llama_for_causal_lm) only name their tensors and pick the graph from the config:

* sub-norms (BitNet) or none (Llama): the HF names of the attention / FFN sub-norms, if any;
* the FFN activation from `hidden_act` (relu2 → `bitnet-b1.58`, silu → `bitnet` or `llama`);
* the linears' storage, per tensor (spec §5):
  - packed (`quantization_config.quant_method = "bitnet"`): uint8 [out/4, in], 4 codes per byte
    LSB first along the OUTPUT dim (code (byte >> 2i) & 3 is row i·(out/4) + p, value = code − 1),
    plus a `weight_scale` [1] that multiplies for `linear_class = "autobitlinear"` (W ≈ t·s) and
    is a reciprocal for "bitlinear", the default (W ≈ t/s) (spec §5.1, trap 15);
  - float masters (bf16/fp16/f32): ternarised here by absmean (spec §2.3, §5.3) —
    `quants.ternarize_absmean`, whose bf16-rounded scale makes both layouts of one model convert
    to identical bytes;
* q/k: left in HF's rotate_half order for the NEOX-rope BitNet graphs, permuted to llama.cpp's
  interleaved order for the `llama` graph (trap 18).

An FFN width that the chosen type cannot hold as K (1bitLLM 3B: 8640 % 128 = 64) is padded with
zero weights up to the next width that fits (docs/formats.md "Padded FFN").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from .. import quants
from ..constants import ARCH_BITNET, ARCH_BITNET_B158, ARCH_LLAMA, GGUFValueType, Keys
from ..errors import CorruptFileError, ShapeError, UnsupportedArchitectureError
from ..safetensors import DTYPES
from . import FILE_TYPES, OUTTYPES, ArchConverter, TensorPlan
from .vocab import load_vocab

U32, F32 = GGUFValueType.UINT32, GGUFValueType.FLOAT32
FLOAT_OUTTYPES = ("f16", "f32")
#: Float tensors are converted in row slices of about this many float32 bytes (bounds peak RSS).
CHUNK_BYTES = 32 << 20
#: Checkpoint tensors that carry nothing the GGUF needs.
IGNORABLE_SUFFIXES = ("rotary_emb.inv_freq",)
#: How far past the checkpoint's FFN width we look for one the output type can hold.
MAX_FFN_PADDING = 1024
#: GGUF key recording the checkpoint's FFN width when the file's is padded (docs/formats.md).
FFN_TRUE_LENGTH = "bitnet.ffn_true_length"

#: hidden_act → the GGUF graph, for BitNet (sub-norm) models.
SUB_NORM_GRAPHS = {"relu2": ARCH_BITNET_B158, "silu": ARCH_BITNET}


def _int(config: dict[str, Any], key: str, default: int | None = None) -> int:
    value = config.get(key)
    if value is None:
        value = default
    # GGUF stores these as uint32: a larger value is as invalid as a negative one
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**32:
        raise CorruptFileError(
            f"config.json has no valid {key!r} (got {value!r}).",
            hint="re-download the checkpoint's config.json",
        )
    return value


def _float(config: dict[str, Any], key: str, default: float) -> float:
    value = config.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise CorruptFileError(f"config.json has an invalid {key!r} ({value!r}).")
    return float(value)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate_half row order → llama.cpp's interleaved (NORM rope) order, per head.

    ref: llama.cpp convert_hf_to_gguf `LlamaModel.permute`: within each head the rows
    [x0 … x(d/2−1), y0 … y(d/2−1)] become [x0, y0, x1, y1, …].
    """
    m = w.shape[0]
    return w.reshape(n_head, 2, m // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class TernaryDecoder(ArchConverter):
    """A Llama-style decoder whose seven linears per layer are ternary.

    Subclasses set `sub_norms` (HF suffixes of the attention and FFN sub-norms, or None) and
    `permute_qk`, and may override `graph()` and `check_config()`.
    """

    #: (attention sub-norm, FFN sub-norm) HF suffixes within a layer, or None (Llama graph).
    sub_norms: tuple[str, str] | None = None
    #: Permute q/k rows for llama.cpp's NORM rope (Llama graph) instead of keeping NEOX order.
    permute_qk: bool = False

    def __init__(self, checkpoint: Any, name: str) -> None:
        super().__init__(checkpoint, name)
        cfg = checkpoint.config
        self.check_config(cfg)
        self.hidden_act = str(cfg.get("hidden_act", "silu")).lower()
        self.gguf_arch = self.graph()
        if cfg.get("rope_scaling"):
            raise UnsupportedArchitectureError(
                f"rope_scaling {cfg['rope_scaling']!r} is not supported by the "
                f"{self.gguf_arch} graph."
            )
        self.hidden = _int(cfg, "hidden_size")
        self.n_layer = _int(cfg, "num_hidden_layers")
        self.n_head = _int(cfg, "num_attention_heads")
        self.n_head_kv = _int(cfg, "num_key_value_heads", self.n_head)
        self.n_ff = _int(cfg, "intermediate_size")
        self.n_ff_file = self.n_ff  # padded in plan() when the output type needs it
        self.vocab_size = _int(cfg, "vocab_size")
        self.n_ctx = _int(cfg, "max_position_embeddings", 4096)
        self.rope_theta = _float(cfg, "rope_theta", 10000.0)
        self.eps = _float(cfg, "rms_norm_eps", 1e-5)
        self.head_dim = _int(cfg, "head_dim", self.hidden // self.n_head or 1)
        if self.head_dim * self.n_head != self.hidden or self.n_head % self.n_head_kv:
            raise UnsupportedArchitectureError(
                f"heads {self.n_head}/{self.n_head_kv} × head_dim {self.head_dim} do not tile "
                f"hidden_size {self.hidden}; the {self.gguf_arch} graph needs "
                "n_head·head_dim = hidden."
            )
        qc = cfg.get("quantization_config") or {}
        if not isinstance(qc, dict):
            raise CorruptFileError(
                f"config.json has an invalid 'quantization_config' ({qc!r}); it must be an object."
            )
        self.linear_class = str(qc.get("linear_class", "bitlinear")).lower()
        self.has_quant_config = bool(qc)
        if qc.get("use_rms_norm"):  # transformers' BitLinear option: an RMSNorm inside each linear
            raise UnsupportedArchitectureError(
                "quantization_config.use_rms_norm = true (an RMSNorm inside every BitLinear) has "
                "no llama.cpp graph.",
                hint="convert a checkpoint without per-linear norms",
            )
        self.tie = bool(cfg.get("tie_word_embeddings", self.sub_norms is not None))
        self._sources: dict[str, str] = {}  # HF names consumed by the plan

    # --- what the checkpoint says -------------------------------------------------------------

    def check_config(self, cfg: dict[str, Any]) -> None:
        """Raise for configs this converter cannot represent (before anything is read)."""

    def graph(self) -> str:
        """The GGUF architecture for this checkpoint's activation (from `hidden_act`)."""
        if self.sub_norms is None:
            if self.hidden_act != "silu":
                raise UnsupportedArchitectureError(
                    f"hidden_act {self.hidden_act!r} without sub-norms is not supported; the "
                    "llama graph is SiLU-gated.",
                    hint="convert a checkpoint with hidden_act silu",
                )
            return ARCH_LLAMA
        graph = SUB_NORM_GRAPHS.get(self.hidden_act)
        if graph is None:
            raise UnsupportedArchitectureError(
                f"{self.hf_architecture} with hidden_act {self.hidden_act!r} is not supported; "
                f"supported: {', '.join(SUB_NORM_GRAPHS)}.",
                hint="convert a checkpoint with hidden_act relu2 or silu",
            )
        return graph

    # --- planning -----------------------------------------------------------------------------

    def layer_tensors(self) -> list[tuple[str, str, str]]:
        """(GGUF suffix, HF suffix, kind) of one block, in file order."""
        attn_sub, ffn_sub = self.sub_norms or (None, None)
        rows = [
            ("attn_norm", "input_layernorm.weight", "norm"),
            ("attn_q", "self_attn.q_proj.weight", "linear"),
            ("attn_k", "self_attn.k_proj.weight", "linear"),
            ("attn_v", "self_attn.v_proj.weight", "linear"),
            ("attn_output", "self_attn.o_proj.weight", "linear"),
            ("attn_sub_norm", f"{attn_sub}.weight", "norm"),
            ("ffn_norm", "post_attention_layernorm.weight", "norm"),
            ("ffn_gate", "mlp.gate_proj.weight", "linear"),
            ("ffn_up", "mlp.up_proj.weight", "linear"),
            ("ffn_down", "mlp.down_proj.weight", "linear"),
            ("ffn_sub_norm", f"{ffn_sub}.weight", "norm"),
        ]
        return [r for r in rows if self.sub_norms is not None or "sub_norm" not in r[0]]

    def _layer_shapes(self, n_ff: int | None = None) -> dict[str, tuple[int, ...]]:
        d, q, kv = self.hidden, self.n_head * self.head_dim, self.n_head_kv * self.head_dim
        f = self.n_ff_file if n_ff is None else n_ff
        return {
            "attn_norm": (d,), "attn_q": (q, d), "attn_k": (kv, d), "attn_v": (kv, d),
            "attn_output": (d, q), "attn_sub_norm": (q,), "ffn_norm": (d,), "ffn_gate": (f, d),
            "ffn_up": (f, d), "ffn_down": (d, f), "ffn_sub_norm": (f,),
        }  # fmt: skip

    def _fits(self, qt: Any, n_ff: int) -> bool:
        return all(qt.can_hold(s) for s in self._layer_shapes(n_ff).values() if len(s) == 2)

    def _ffn_width(self, outtype: str) -> int:
        """The FFN width to write: the checkpoint's, or the next one `outtype` can hold as K."""
        qt = quants.get(outtype)
        for n_ff in range(self.n_ff, self.n_ff + MAX_FFN_PADDING + 1):
            if self._fits(qt, n_ff):
                return n_ff
        return self.n_ff  # no padding helps: plan() reports the tensor and the types that fit

    def _need(self, hf_name: str) -> None:
        if hf_name not in self.ckpt:
            raise CorruptFileError(
                f"the checkpoint in {self.ckpt.folder} lacks tensor {hf_name!r}.",
                hint="re-download the complete checkpoint",
            )
        self._sources[hf_name] = hf_name

    def _check_float(self, hf_name: str, shape: tuple[int, ...]) -> None:
        self._need(hf_name)
        dtype, stored = self.ckpt.dtype(hf_name), tuple(self.ckpt.shape(hf_name))
        if dtype not in ("BF16", "F16", "F32") or stored != shape:
            raise CorruptFileError(
                f"tensor {hf_name!r} is {dtype}{list(stored)}; config.json implies a float "
                f"tensor of shape {list(shape)}.",
                hint="check that config.json belongs to these weights",
            )

    def _linear_layout(self, hf_name: str, shape: tuple[int, ...]) -> str:
        """'packed' or 'master' for one linear, after checking its stored shape."""
        self._need(hf_name)
        if self.ckpt.dtype(hf_name) != "U8":
            self._check_float(hf_name, shape)
            return "master"
        m, k = shape
        stored = tuple(self.ckpt.shape(hf_name))
        if m % 4 or stored != (m // 4, k):
            raise CorruptFileError(
                f"packed tensor {hf_name!r} has shape {list(stored)}; expected "
                f"[{m // 4}, {k}] (4 output rows per byte).",
                hint="check that config.json belongs to these weights",
            )
        scale = hf_name + "_scale"
        self._need(scale)
        if int(np.prod(self.ckpt.shape(scale))) != 1:
            raise CorruptFileError(f"{scale!r} should hold one value (a per-tensor scale).")
        if not self.has_quant_config:
            raise CorruptFileError(
                f"{hf_name!r} is packed uint8 but config.json has no quantization_config.",
                hint="re-download config.json together with the weights",
            )
        if self.linear_class not in ("autobitlinear", "bitlinear"):
            raise UnsupportedArchitectureError(
                f"quantization_config.linear_class {self.linear_class!r} is not supported "
                "(known: autobitlinear, bitlinear)."
            )
        return "packed"

    def plan(self, outtype: str, embedding_type: str) -> tuple[list, list[TensorPlan], str]:
        arch = self.gguf_arch
        lin_q = quants.get(outtype)
        emb_q = quants.get(embedding_type)
        f32_q = quants.get("f32")
        self.n_ff_file = self._ffn_width(outtype)

        def plan_tensor(
            name: str, shape: tuple[int, ...], qt: Any, source: str, ternary: bool = False
        ) -> TensorPlan:
            qt.check_shape(shape, name)  # ShapeError naming the tensor and the types that fit
            nbytes = int(qt.nbytes(shape))
            return TensorPlan(
                name, shape, qt.name.lower(), int(qt.type_id), nbytes, source, ternary
            )

        tensors: list[TensorPlan] = []
        emb_shape = (self.vocab_size, self.hidden)
        self._check_float("model.embed_tokens.weight", emb_shape)
        tensors.append(
            plan_tensor("token_embd.weight", emb_shape, emb_q, "model.embed_tokens.weight")
        )

        layouts: set[str] = set()
        shapes, true_shapes = self._layer_shapes(), self._layer_shapes(self.n_ff)
        for i in range(self.n_layer):
            for suffix, hf_suffix, kind in self.layer_tensors():
                name, hf = f"blk.{i}.{suffix}.weight", f"model.layers.{i}.{hf_suffix}"
                shape = shapes[suffix]
                if kind == "norm":
                    self._check_float(hf, true_shapes[suffix])
                    tensors.append(plan_tensor(name, shape, f32_q, hf))
                else:
                    layouts.add(self._linear_layout(hf, true_shapes[suffix]))
                    try:
                        tensors.append(plan_tensor(name, shape, lin_q, hf, ternary=True))
                    except ShapeError as exc:
                        raise ShapeError(str(exc), hint=self._outtype_hint()) from None

        self._check_float("model.norm.weight", (self.hidden,))
        tensors.append(
            plan_tensor("output_norm.weight", (self.hidden,), f32_q, "model.norm.weight")
        )
        if not self.tie and "lm_head.weight" not in self.ckpt:
            raise CorruptFileError(
                "config.json says tie_word_embeddings = false but the checkpoint has no "
                "lm_head.weight.",
                hint="re-download the complete checkpoint",
            )
        if not self.tie:
            self._check_float("lm_head.weight", emb_shape)
            if arch != ARCH_BITNET:
                tensors.append(plan_tensor("output.weight", emb_shape, emb_q, "lm_head.weight"))
            elif not self._head_is_embedding():  # the bitnet graph's head is token_embd
                raise UnsupportedArchitectureError(
                    "an lm_head that differs from the embedding, with hidden_act silu and "
                    "sub-norms, has no llama.cpp graph (the bitnet graph's head is token_embd)."
                )

        known = set(self._sources) | {"lm_head.weight"}
        unknown = [
            n for n in self.ckpt.names() if n not in known and not n.endswith(IGNORABLE_SUFFIXES)
        ]
        if unknown:
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise UnsupportedArchitectureError(
                f"the checkpoint has tensors the {self.hf_architecture} converter does not know: "
                f"{', '.join(unknown[:5])}{more}.",
                hint="this looks like a different architecture; check config.json",
            )

        layout = " + ".join(
            sorted(
                f"packed ({self.linear_class} scales)"
                if lay == "packed"
                else "float masters (absmean)"
                for lay in layouts
            )
        )
        if self.n_ff_file != self.n_ff:
            layout += f"; FFN {self.n_ff} padded to {self.n_ff_file} for {outtype}"
        vocab = load_vocab(self.ckpt.folder, self.ckpt.config)
        kv: list[tuple[str, Any, GGUFValueType | None]] = [
            (Keys.ARCHITECTURE, arch, GGUFValueType.STRING),
            (Keys.NAME, self.name, GGUFValueType.STRING),
            (Keys.FILE_TYPE, int(FILE_TYPES[outtype]), U32),
            (Keys.QUANTIZATION_VERSION, 2, U32),
            (Keys.VOCAB_SIZE.format(arch=arch), self.vocab_size, U32),
            (Keys.CONTEXT_LENGTH.format(arch=arch), self.n_ctx, U32),
            (Keys.EMBEDDING_LENGTH.format(arch=arch), self.hidden, U32),
            (Keys.BLOCK_COUNT.format(arch=arch), self.n_layer, U32),
            (Keys.FEED_FORWARD_LENGTH.format(arch=arch), self.n_ff_file, U32),
            (Keys.HEAD_COUNT.format(arch=arch), self.n_head, U32),
            (Keys.HEAD_COUNT_KV.format(arch=arch), self.n_head_kv, U32),
            (Keys.ROPE_FREQ_BASE.format(arch=arch), self.rope_theta, F32),
            (Keys.LAYERNORM_RMS_EPS.format(arch=arch), self.eps, F32),
            (Keys.ROPE_DIMENSION_COUNT.format(arch=arch), self.head_dim, U32),
            *vocab.kv_items(),
        ]
        if self.n_ff_file != self.n_ff:
            kv.append((FFN_TRUE_LENGTH, self.n_ff, U32))
        return kv, tensors, layout

    def _head_is_embedding(self) -> bool:
        """Whether lm_head holds exactly the embedding (a tied head saved twice, as checkpoints
        written with tie_word_embeddings = false but trained tied do)."""
        rows = self.vocab_size
        step = max(1, CHUNK_BYTES // (4 * self.hidden))
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            a = self._rows("lm_head.weight", start, stop)
            if not np.array_equal(a, self._rows("model.embed_tokens.weight", start, stop)):
                return False
        return True

    def _outtype_hint(self) -> str:
        """Which --outtype values can hold EVERY linear of this model (FFN padding included)."""
        able = [
            t
            for t in OUTTYPES
            if any(
                self._fits(quants.get(t), n)
                for n in range(self.n_ff, self.n_ff + MAX_FFN_PADDING + 1)
            )
        ]
        return (
            f"use type {' or '.join(able)} (each holds every linear of this model): "
            "--outtype for convert, --type for pull"
        )

    def ignored(self) -> list[str]:
        return [n for n in self.ckpt.names() if n not in self._sources]

    # --- producing ----------------------------------------------------------------------------

    def produce(self, tensor: TensorPlan) -> np.ndarray | Iterable[np.ndarray]:
        if tensor.ternary:
            codes, scale = self._ternary(tensor.source, tensor.shape)
            qt = quants.get(tensor.qtype)
            if tensor.qtype in FLOAT_OUTTYPES:  # dequantized t·s (spec: f16/f32 outtypes)
                return qt.quantize(codes.astype(np.float32) * np.float32(scale))
            if tensor.tiling is not None:  # TL1/TL2 with tuned tiles (recorded in the tail)
                return qt.pack(codes, scale, tiling=tensor.tiling)
            return qt.pack(codes, scale)
        if len(tensor.shape) == 1:
            v = np.ascontiguousarray(self._rows(tensor.source, 0, None), dtype="<f4")
            if v.shape != tensor.shape:  # the FFN sub-norm of a padded FFN
                v = self._pad_sub_norm(v, tensor.shape[0])
            return v.view(np.uint8)
        return self._float_chunks(tensor)

    def _pad_sub_norm(self, w: np.ndarray, width: int) -> np.ndarray:
        """The FFN sub-norm for a zero-padded FFN (docs/formats.md "Padded FFN").

        RMSNorm over the padded width divides Σf² by `width` instead of n_ff; the zero tail adds
        nothing to Σf². Scaling the weight by √(n_ff/width) restores the checkpoint's norm
        exactly up to eps, which acts as eps·width/n_ff (< 1 % larger for 1bitLLM 3B).
        """
        out = np.zeros(width, dtype="<f4")
        out[: w.size] = w * np.float32(math.sqrt(self.n_ff / width))
        return out

    def _raw(self, hf_name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of a checkpoint tensor as stored (BF16 as uint16 bits).

        Read with plain file reads into private memory rather than through the checkpoint's
        memory map: touched pages of a map stay in the process's RSS until the map closes, so
        streaming a 1-5 GB checkpoint through it would make peak RSS the checkpoint's size.
        """
        e = self.ckpt.entry(hf_name)
        dtype = DTYPES[e.dtype]
        rows = e.shape[0] if e.shape else 1
        stop = rows if stop is None else min(stop, rows)
        row_items = int(np.prod(e.shape[1:], dtype=np.int64)) if len(e.shape) > 1 else 1
        count = max(0, stop - start) * row_items
        with open(e.file, "rb") as f:
            f.seek(e.start + start * row_items * dtype.itemsize)
            data = np.fromfile(f, dtype=dtype, count=count)
        if data.size != count:
            raise CorruptFileError(f"{e.file} ends inside tensor {hf_name!r} (truncated?).")
        return data.reshape((max(0, stop - start), *e.shape[1:]) if e.shape else ())

    def _rows(self, hf_name: str, start: int, stop: int | None) -> np.ndarray:
        """Rows [start, stop) of a float tensor as float32 (converting only that slice)."""
        raw = self._raw(hf_name, start, stop)
        if self.ckpt.dtype(hf_name) == "BF16":
            return quants.bf16_bits_to_f32(raw)
        return np.asarray(raw, dtype=np.float32)

    def _float_chunks(self, tensor: TensorPlan) -> Iterator[np.ndarray]:
        """A 2-D float tensor (embedding / untied head) quantized in row slices."""
        qt = quants.get(tensor.qtype)
        rows, k = tensor.shape
        step = max(1, CHUNK_BYTES // (4 * k))
        for start in range(0, rows, step):
            yield qt.quantize(self._rows(tensor.source, start, min(rows, start + step)))

    def _ternary(self, hf_name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, float]:
        """(codes int8 `shape` in {-1, 0, 1}, per-tensor scale) of one linear, either layout:
        q/k rows permuted for the llama graph, zero rows/columns for a padded FFN."""
        stored = self.ckpt.shape(hf_name)
        true_shape = (stored[0] * 4, stored[1]) if self.ckpt.dtype(hf_name) == "U8" else stored
        codes, scale = self._ternary_codes(hf_name, tuple(true_shape))
        if self.permute_qk and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = self.n_head if hf_name.endswith("q_proj.weight") else self.n_head_kv
            codes = permute_qk(codes, heads)
        if codes.shape != tuple(shape):  # a padded FFN: zero weights in the new rows/columns
            padded = np.zeros(shape, dtype=np.int8)
            padded[: codes.shape[0], : codes.shape[1]] = codes
            codes = padded
        return codes, scale

    def _ternary_codes(self, hf_name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, float]:
        if self.ckpt.dtype(hf_name) != "U8":
            w = self._rows(hf_name, 0, None)
            if not w.any():
                raise CorruptFileError(
                    f"tensor {hf_name!r} is all zeros (a broken download?).",
                    hint="re-download the checkpoint",
                )
            codes, scale = quants.ternarize_absmean(w)
            return codes, float(scale)
        packed = self._raw(hf_name)
        if not packed.any():  # every code 0 = every weight -1: a zero-filled download (spec §5.1)
            raise CorruptFileError(
                f"tensor {hf_name!r} is all zero bytes (a broken download?).",
                hint="re-download the checkpoint",
            )
        if (packed & (packed >> 1) & 0x55).any():  # code 0b11 is never written
            raise CorruptFileError(f"packed tensor {hf_name!r} holds the invalid code 0b11.")
        # ref: spec §5.1 — byte (p, c) holds rows i·R + p, i = 0..3, LSB first; value = code − 1.
        r = packed.shape[0]
        codes = np.empty(shape, dtype=np.int8)
        for i in range(4):  # in place, on a uint8 view: (byte >> 2i) & 3, then − 1 (wraps to -1)
            dst = codes[i * r : (i + 1) * r].view(np.uint8)
            np.right_shift(packed, 2 * i, out=dst)
            np.bitwise_and(dst, 3, out=dst)
            np.subtract(dst, 1, out=dst)
        s = float(self._rows(hf_name + "_scale", 0, None).reshape(-1)[0])
        if not np.isfinite(s) or s <= 0:
            raise CorruptFileError(f"{hf_name + '_scale'!r} is {s}, not a positive scale.")
        # autobitlinear: W ≈ t·s; bitlinear: W ≈ t/s (spec §5.1, trap 15).
        scale = (
            s if self.linear_class == "autobitlinear" else float(np.float32(1.0) / np.float32(s))
        )
        return codes, scale
