"""HF `BitNetForCausalLM` (microsoft/bitnet-b1.58-2B-4T and its -bf16 masters) → `bitnet-b1.58`.

Two checkpoint layouts hold the same model (spec §5):
  * packed (`quantization_config.quantization_mode = "offline"`): each ternary linear is uint8
    [out/4, in], 4 codes per byte LSB first along the OUTPUT dim (code (byte >> 2i) & 3 is row
    i·(out/4) + p, value = code − 1), plus a bf16 `weight_scale` [1]. The scale multiplies for
    `linear_class = "autobitlinear"` (W ≈ t·s) and is a reciprocal for "bitlinear" (W ≈ t/s)
    (spec §5.1, trap 15).
  * bf16 masters (`online` or no quantization_config): latent weights, ternarised here by
    absmean (spec §2.3) — `quants.ternarize_absmean`, whose bf16-rounded scale makes both
    layouts of one model convert to identical bytes.
The graph is ReLU²-gated with attention/FFN sub-norms, NEOX RoPE, so q/k are NOT permuted
(trap 18). Tensor names and metadata keys follow spec §4.1.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from .. import quants
from ..constants import ARCH_BITNET_B158, GGUFValueType, Keys
from ..errors import CorruptFileError, ShapeError, UnsupportedArchitectureError
from ..safetensors import DTYPES
from . import FILE_TYPES, OUTTYPES, ArchConverter, TensorPlan, register
from .vocab import load_vocab

U32, F32 = GGUFValueType.UINT32, GGUFValueType.FLOAT32
FLOAT_OUTTYPES = ("f16", "f32")
#: Float tensors are converted in row slices of about this many float32 bytes (bounds peak RSS).
CHUNK_BYTES = 32 << 20
#: Checkpoint tensors that carry nothing the GGUF needs.
IGNORABLE_SUFFIXES = ("rotary_emb.inv_freq",)

# Per block: (GGUF suffix, HF suffix, kind); shapes come from the config (see _layer_shapes).
LAYER_TENSORS = (
    ("attn_norm", "input_layernorm.weight", "norm"),
    ("attn_q", "self_attn.q_proj.weight", "linear"),
    ("attn_k", "self_attn.k_proj.weight", "linear"),
    ("attn_v", "self_attn.v_proj.weight", "linear"),
    ("attn_output", "self_attn.o_proj.weight", "linear"),
    ("attn_sub_norm", "self_attn.attn_sub_norm.weight", "norm"),
    ("ffn_norm", "post_attention_layernorm.weight", "norm"),
    ("ffn_gate", "mlp.gate_proj.weight", "linear"),
    ("ffn_up", "mlp.up_proj.weight", "linear"),
    ("ffn_down", "mlp.down_proj.weight", "linear"),
    ("ffn_sub_norm", "mlp.ffn_sub_norm.weight", "norm"),
)


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


@register("BitNetForCausalLM")
class BitNetForCausalLMConverter(ArchConverter):
    """Microsoft's BitNet b1.58 (2B-4T family): ReLU² FFN, sub-norms, tied head."""

    gguf_arch = ARCH_BITNET_B158

    def __init__(self, checkpoint: Any, name: str) -> None:
        super().__init__(checkpoint, name)
        cfg = checkpoint.config
        act = cfg.get("hidden_act")
        if act != "relu2":
            raise UnsupportedArchitectureError(
                f"BitNetForCausalLM with hidden_act {act!r} is not supported yet; only 'relu2' "
                "(the bitnet-b1.58 graph) is.",
                hint="convert a BitNet b1.58 2B-4T style checkpoint (hidden_act relu2)",
            )
        if cfg.get("rope_scaling"):
            raise UnsupportedArchitectureError(
                f"rope_scaling {cfg['rope_scaling']!r} is not supported by the bitnet-b1.58 graph."
            )
        self.hidden = _int(cfg, "hidden_size")
        self.n_layer = _int(cfg, "num_hidden_layers")
        self.n_head = _int(cfg, "num_attention_heads")
        self.n_head_kv = _int(cfg, "num_key_value_heads", self.n_head)
        self.n_ff = _int(cfg, "intermediate_size")
        self.vocab_size = _int(cfg, "vocab_size")
        self.n_ctx = _int(cfg, "max_position_embeddings", 4096)
        self.rope_theta = _float(cfg, "rope_theta", 10000.0)
        self.eps = _float(cfg, "rms_norm_eps", 1e-5)
        self.head_dim = _int(cfg, "head_dim", self.hidden // self.n_head or 1)
        if self.head_dim * self.n_head != self.hidden or self.n_head % self.n_head_kv:
            raise UnsupportedArchitectureError(
                f"heads {self.n_head}/{self.n_head_kv} × head_dim {self.head_dim} do not tile "
                f"hidden_size {self.hidden}; the bitnet-b1.58 graph needs n_head·head_dim = hidden."
            )
        qc = cfg.get("quantization_config") or {}
        if not isinstance(qc, dict):
            raise CorruptFileError(
                f"config.json has an invalid 'quantization_config' ({qc!r}); it must be an object."
            )
        self.linear_class = str(qc.get("linear_class", "bitlinear")).lower()
        self.has_quant_config = bool(qc)
        self.tie = bool(cfg.get("tie_word_embeddings", True))
        self._sources: dict[str, str] = {}  # HF names consumed by the plan

    # --- planning -----------------------------------------------------------------------------

    def _layer_shapes(self) -> dict[str, tuple[int, ...]]:
        d, q, kv, f = (
            self.hidden,
            self.n_head * self.head_dim,
            self.n_head_kv * self.head_dim,
            self.n_ff,
        )
        return {
            "attn_norm": (d,), "attn_q": (q, d), "attn_k": (kv, d), "attn_v": (kv, d),
            "attn_output": (d, q), "attn_sub_norm": (q,), "ffn_norm": (d,), "ffn_gate": (f, d),
            "ffn_up": (f, d), "ffn_down": (d, f), "ffn_sub_norm": (f,),
        }  # fmt: skip

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
        shapes = self._layer_shapes()
        for i in range(self.n_layer):
            for suffix, hf_suffix, kind in LAYER_TENSORS:
                name, hf = f"blk.{i}.{suffix}.weight", f"model.layers.{i}.{hf_suffix}"
                shape = shapes[suffix]
                if kind == "norm":
                    self._check_float(hf, shape)
                    tensors.append(plan_tensor(name, shape, f32_q, hf))
                else:
                    layouts.add(self._linear_layout(hf, shape))
                    try:
                        tensors.append(plan_tensor(name, shape, lin_q, hf, ternary=True))
                    except ShapeError as exc:
                        raise ShapeError(str(exc), hint=self._outtype_hint()) from None

        self._check_float("model.norm.weight", (self.hidden,))
        tensors.append(
            plan_tensor("output_norm.weight", (self.hidden,), f32_q, "model.norm.weight")
        )
        if "lm_head.weight" in self.ckpt and not self.tie:
            self._check_float("lm_head.weight", emb_shape)
            tensors.append(plan_tensor("output.weight", emb_shape, emb_q, "lm_head.weight"))

        known = set(self._sources) | {"lm_head.weight"}
        unknown = [
            n for n in self.ckpt.names() if n not in known and not n.endswith(IGNORABLE_SUFFIXES)
        ]
        if unknown:
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise UnsupportedArchitectureError(
                f"the checkpoint has tensors the BitNetForCausalLM converter does not know: "
                f"{', '.join(unknown[:5])}{more}.",
                hint="this looks like a different architecture; check config.json",
            )

        layout = " + ".join(
            sorted(
                f"packed ({self.linear_class} scales)"
                if lay == "packed"
                else "bf16 masters (absmean)"
                for lay in layouts
            )
        )
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
            (Keys.FEED_FORWARD_LENGTH.format(arch=arch), self.n_ff, U32),
            (Keys.HEAD_COUNT.format(arch=arch), self.n_head, U32),
            (Keys.HEAD_COUNT_KV.format(arch=arch), self.n_head_kv, U32),
            (Keys.ROPE_FREQ_BASE.format(arch=arch), self.rope_theta, F32),
            (Keys.LAYERNORM_RMS_EPS.format(arch=arch), self.eps, F32),
            (Keys.ROPE_DIMENSION_COUNT.format(arch=arch), self.head_dim, U32),
            *vocab.kv_items(),
        ]
        return kv, tensors, layout

    def _outtype_hint(self) -> str:
        """Which --outtype values can hold EVERY linear of this model (not just one tensor)."""
        shapes = {v for k, v in self._layer_shapes().items() if len(v) == 2}
        able = [t for t in OUTTYPES if all(quants.get(t).can_hold(shape) for shape in shapes)]
        return f"pass --outtype {' or '.join(able)} (each holds every linear of this model)"

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
            return np.ascontiguousarray(self._rows(tensor.source, 0, None), dtype="<f4").view(
                np.uint8
            )
        return self._float_chunks(tensor)

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
        """(codes int8 (M, K) in {-1, 0, 1}, per-tensor scale) of one linear, either layout."""
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
