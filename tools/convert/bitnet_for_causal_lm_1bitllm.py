"""HF `BitnetForCausalLM` (lower-case n: 1bitLLM/bitnet_b1_58-large, -3B) → `bitnet` (SiLU).

(The module name carries "1bitllm" because `BitnetForCausalLM` and `BitNetForCausalLM` differ only
in case.) fp16 latent masters ternarised by absmean at convert time (spec §5.3), sub-norms
`self_attn.inner_attn_ln` (before o_proj) and `mlp.ffn_layernorm` (before down_proj), NEOX rope,
tied head, SentencePiece `tokenizer.model` (spec §4.2). The graph still comes from `hidden_act`
(silu → `bitnet`), never from the class name (trap 16). The 3B's FFN of 8640 is padded for I2_S
(decoder.py, docs/formats.md "Padded FFN").
"""

from __future__ import annotations

from . import register
from .decoder import TernaryDecoder


@register("BitnetForCausalLM")
class BitnetForCausalLMConverter(TernaryDecoder):
    """1bitLLM's reproduction of BitNet b1.58."""

    sub_norms = ("self_attn.inner_attn_ln", "mlp.ffn_layernorm")
