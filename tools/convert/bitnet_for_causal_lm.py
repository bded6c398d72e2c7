"""HF `BitNetForCausalLM` (microsoft/bitnet-b1.58-2B-4T and its -bf16 masters).

Sub-norms `self_attn.attn_sub_norm` / `mlp.ffn_sub_norm`, NEOX rope (q/k kept in HF order), tied
head. `hidden_act` picks the graph: relu2 (2B-4T) → `bitnet-b1.58`, silu → upstream's `bitnet`
(spec §4.1, trap 16). Packed (`autobitlinear` multiplies) or bf16 masters: see decoder.py.
"""

from __future__ import annotations

from . import register
from .decoder import TernaryDecoder


@register("BitNetForCausalLM")
class BitNetForCausalLMConverter(TernaryDecoder):
    """Microsoft's BitNet b1.58 (2B-4T family)."""

    sub_norms = ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm")
