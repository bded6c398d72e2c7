"""HF `LlamaForCausalLM` with `quantization_config.quant_method = "bitnet"` → `llama`.

HF1BitLLM/Llama3-8B-1.58-100B-tokens, tiiuae/Falcon3-*-1.58bit and tiiuae/Falcon-E-* (spec §4.3,
§9): packed uint8 linears + `weight_scale` with `bitlinear` semantics (the scale divides) unless
the config says `autobitlinear`, SiLU, no sub-norms, q/k permuted for llama.cpp's NORM rope, an
untied `lm_head` kept as the --embedding-type (never ternarised). Tokenizers: Llama-3 BPE with the
`llama-bpe`, `falcon3` or `falcon_e` pre-tokenizer (vocab.py). A Llama checkpoint without the
bitnet quantization is not ternary: llama.cpp's own converter handles it.
"""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedArchitectureError
from . import register
from .decoder import TernaryDecoder


@register("LlamaForCausalLM")
class LlamaForCausalLMConverter(TernaryDecoder):
    """Llama-architecture checkpoints quantized with transformers' BitNet method."""

    sub_norms = None
    permute_qk = True

    def check_config(self, cfg: dict[str, Any]) -> None:
        qc = cfg.get("quantization_config") or {}
        method = qc.get("quant_method") if isinstance(qc, dict) else None
        if method != "bitnet":
            what = f"quant_method {method!r}" if method else "no quantization_config"
            raise UnsupportedArchitectureError(
                f"this LlamaForCausalLM checkpoint has {what}, so it is not ternary; bitnet "
                "converts only quant_method 'bitnet'.",
                hint="convert it with llama.cpp's convert_hf_to_gguf.py instead",
            )
