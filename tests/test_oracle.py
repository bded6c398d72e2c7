"""Golden test: the NumPy reference (on our converted GGUF) against an independent torch oracle.

The oracle is Hugging Face transformers' own `BitNetForCausalLM` (transformers 5.x,
models/bitnet/modeling_bitnet.py) loading the tiny dummy checkpoint in float32: embeddings,
RMSNorm, NEOX RoPE (`rotate_half`), GQA (`repeat_kv`), eager softmax attention with the causal
mask, the sub-norms, ReLU² and the tied head all come from transformers. The reference reads the
GGUF that `bitnet convert` made from the same checkpoint (I2_S linears, f32 embedding, so the
bf16 embedding values travel exactly).

What transformers does with the linears (integrations/bitnet.py), and what the oracle changes:

* `quantization_config.linear_class = "autobitlinear"` (both dummy layouts, like 2B-4T) swaps
  every q/k/v/o/gate/up/down `nn.Linear` for `AutoBitLinear`; lm_head stays a float Linear.
  - packed layout, `quantization_mode = "offline"`: the uint8 [out/4, in] weight is unpacked at
    load time (`unpack_weights`, LSB first along the output rows) to ternary floats, and forward
    is `F.linear(ActQuant(x), W_t) * weight_scale`.
  - bf16 layout, `"online"`: forward re-ternarises the bf16 master every call (`WeightQuant`:
    W_t = clamp(round(W / mean|W|), -1, 1) with the *float32* mean as the scale) and then does
    the same `F.linear(ActQuant(x), W_t)`.
  - `ActQuant` is fake quantization: d = 127 / clamp(max|x|, 1e-5) per token, round (half to
    even), clamp to [-128, 127], then *divide by d again* and run a float matmul.
  - (`linear_class = "bitlinear"` would instead divide by weight_scale: a reciprocal scale.)
* Differences from the bitnet.cpp W1.58A8 contract that matter, so the oracle replaces each
  `AutoBitLinear` by `W158A8Linear` below (explicit torch ops, weights taken from the loaded HF
  module, so unpacking / ternarisation is still transformers' own):
  1. torch evaluates `127 / t` as `127 * (1 / t)`: d is one ulp off the true quotient for about
     a quarter of the rows. Inputs derived from bf16 values land *exactly* on .5 after scaling
     surprisingly often, so that ulp flips round-half-even ties and moves logits by ~1e-3
     relative. The oracle uses a true division, like the C kernel's `(float)(127.0 / amax)`.
  2. Fake quantization sums q/d·w in float; the contract sums integers Σ w·q exactly and then
     applies `/ d * scale` in float32. The oracle does the latter (a float32 GEMM of int8-range
     values is exact: every partial sum is an integer ≤ 128·K < 2**24).
  3. online mode scales by the float32 mean|W|; our converter stores the scale rounded to bf16
     (the precision of Microsoft's packed `weight_scale`, so both layouts of one model convert
     to identical bytes). The oracle rounds the scale to bf16 as well: a 2**-9 relative scale
     change is ~1e-3 of the logits, the size of the effects this test must resolve.
  4. `@torch.compile` on ActQuant / unpack_weights is switched off (`torch._dynamo.config
     .disable`): same math, no C++ toolchain or minutes of compiling.

Tolerance. Agreement is float32 noise (measured ≤ 5e-7 · max|logit|) until an int8 activation
rounding *flips*: two float32 computations of the same x·d straddle a .5 boundary. A flip moves
later logits by up to ~1e-2 relative, while real graph bugs on this model move them by only
~1e-3 (no activation quantization, interleaved instead of NEOX RoPE, wrong rope θ, a 2**-9
scale error — all measured), so one loose tolerance cannot separate the two. Instead the test
records every BitLinear's int8 activations in both runs and finds the first token row t* where
any of them differ; there the first differing module must differ only at near-ties (|x·d| within
1e-3 of k + ½ in both runs) — a genuine rounding flip, not a semantic difference. Rows before
t* must agree within STRICT = 1e-5·max|logit| (20× the measured noise, 100× below the bugs
above); rows from t* on within LOOSE = 5e-2·max|logit| (a sanity bound), and at least half of
all rows must be checked strictly. Greedy tokens must be equal step by step until the first step
whose oracle top-1 margin is below the tolerance of that step (a legitimate near-tie).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers' BitNet quantizer requires it at load time

from bitnet.tools.convert import convert_checkpoint  # noqa: E402
from bitnet.tools.dummy import make_dummy  # noqa: E402
from bitnet.tools.reference import ReferenceModel, TernaryWeight  # noqa: E402

pytestmark = [
    pytest.mark.oracle,
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]

STRICT = 1e-5  # × max|logit|: float32 noise before the first activation-rounding flip
LOOSE = 5e-2  # × max|logit|: after a flip (sanity bound only)
NEAR_TIE = 1e-3  # |x·d − (k + ½)| below this counts as a rounding tie
PROMPT_LEN = 24
N_GREEDY = 8

#: HF module path inside a decoder layer → GGUF tensor short name.
HF_LINEARS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


# --- the oracle ---------------------------------------------------------------------------------


@dataclass
class ActLog:
    """Per BitLinear call (in execution order): GGUF name, float input x, int8 q and scale d."""

    calls: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)

    def record(self, name: str, x: np.ndarray, q: np.ndarray, d: np.ndarray) -> None:
        self.calls.append((name, x.copy(), q.astype(np.int8), d.reshape(-1).copy()))


class W158A8Linear(torch.nn.Module):
    """BitLinear as the bitnet.cpp contract defines it, in plain torch ops (see module doc)."""

    def __init__(self, name: str, codes: torch.Tensor, scale: float, log: ActLog) -> None:
        super().__init__()
        self.name, self.log = name, log
        self.register_buffer("codes", codes.to(torch.float32))  # (M, K) in {-1, 0, 1}
        self.scale = torch.tensor(scale, dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        amax = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
        d = torch.full_like(amax, 127.0) / amax  # a true division (not 127 * (1/amax))
        q = torch.round(x * d).clamp(-128, 127)  # torch.round: half to even
        raw = q @ self.codes.T  # exact integer sums in float32 (|raw| ≤ 128·K < 2**24)
        self.log.record(self.name, x.reshape(-1, x.shape[-1]).numpy(),
                        q.reshape(-1, x.shape[-1]).numpy(), d.numpy())  # fmt: skip
        return raw / d * self.scale  # float32, in the kernel's order


def _bf16(x: torch.Tensor) -> float:
    return float(x.detach().to(torch.float32).to(torch.bfloat16).to(torch.float32).reshape(()))


def load_transformers(folder) -> torch.nn.Module:
    """transformers' BitNetForCausalLM as it is, in float32, eager attention, no torch.compile."""
    from transformers import BitNetForCausalLM

    torch._dynamo.config.disable = True
    transformers.logging.set_verbosity_error()
    model = BitNetForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    # The quantizer keeps non-linear tensors in the checkpoint's bf16; widen them (exactly).
    for t in [*model.parameters(), *model.buffers()]:
        t.data = t.data.to(torch.float32)
    return model


def load_oracle(folder) -> tuple[torch.nn.Module, ActLog]:
    """transformers' BitNetForCausalLM in float32 with every AutoBitLinear → W158A8Linear."""
    from transformers.integrations.bitnet import AutoBitLinear

    model = load_transformers(folder)
    log = ActLog()
    n_swapped = 0
    for i, layer in enumerate(model.model.layers):
        for path, short in HF_LINEARS.items():
            mod = layer.get_submodule(path)
            assert isinstance(mod, AutoBitLinear), f"transformers did not quantize {path}"
            w = mod.weight.detach().to(torch.float32)
            if mod.online_quant:  # bf16 masters: transformers' WeightQuant, bf16-rounded scale
                s = w.abs().mean().clamp(min=1e-5)
                codes, scale = (w * (1.0 / s)).round().clamp(-1, 1), _bf16(s)
            else:  # packed: already unpacked to ternary by transformers at load time
                codes, scale = w, float(mod.weight_scale.detach().reshape(()))
            layer.set_submodule(path, W158A8Linear(f"blk.{i}.{short}.weight", codes, scale, log))
            n_swapped += 1
    assert n_swapped == 7 * len(model.model.layers)
    assert type(model.lm_head) is torch.nn.Linear  # the head stays a float matmul
    return model, log


def oracle_logits(model, log: ActLog, tokens: list[int]) -> np.ndarray:
    log.calls.clear()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy()


# --- fixtures -----------------------------------------------------------------------------------


@dataclass
class Pair:
    ref: ReferenceModel
    oracle: torch.nn.Module
    log: ActLog
    folder: object


@pytest.fixture(scope="module", params=["packed", "bf16", "packed-untied"])
def pair(request, tmp_path_factory) -> Pair:
    """One dummy checkpoint, its GGUF (I2_S linears, f32 embedding), the reference and oracle."""
    layout, _, untied = request.param.partition("-")
    base = tmp_path_factory.mktemp(f"oracle-{request.param}")
    folder = make_dummy(base / "hf", "tiny", layout, seed=0, tie_embeddings=not untied)
    gguf = base / "model.gguf"
    convert_checkpoint(folder, gguf, "i2_s", "f32")
    oracle, log = load_oracle(folder)
    ref = ReferenceModel.from_gguf(gguf)
    # An untied checkpoint must bring its own output.weight (lm_head) into the GGUF.
    assert bool(untied) == (oracle.lm_head.weight is not oracle.model.embed_tokens.weight)
    if untied:
        np.testing.assert_array_equal(
            ref.tensor("output.weight"), oracle.lm_head.weight.detach().numpy()
        )
    return Pair(ref, oracle, log, folder)


def tie_tokens(ref: ReferenceModel) -> list[int]:
    """Tokens whose layer-0 BitLinear input lands exactly on a .5 after scaling by d.

    bf16 embedding values make exact ties common enough to matter; a prompt of such tokens
    exercises round-half-to-even and the exact division in d = 127 / max|x| on both sides.
    """
    from bitnet.tools.reference import rms_norm

    h = rms_norm(ref.tensor("token_embd.weight"), ref.tensor("blk.0.attn_norm.weight"),
                 ref.hparams.rms_eps)  # fmt: skip
    d = np.float32(127) / np.maximum(np.abs(h).max(axis=1), np.float32(1e-5))  # spec §2.4
    v = h * d[:, None]
    return np.nonzero((np.abs(v - np.floor(v)) == 0.5).any(axis=1))[0].tolist()


def _prompts(ref: ReferenceModel) -> list[list[int]]:
    rng = np.random.default_rng(1234)
    prompts = [rng.integers(0, ref.hparams.n_vocab, PROMPT_LEN).tolist() for _ in range(3)]
    ties = tie_tokens(ref)[: PROMPT_LEN // 2]
    if ties:  # ordinary and tie tokens alternate, so ties meet a populated KV cache too
        filler = rng.integers(0, ref.hparams.n_vocab, PROMPT_LEN - len(ties)).tolist()
        mixed = [tok for pair in zip(filler, ties, strict=False) for tok in pair]
        prompts.append(mixed + filler[len(ties) :])
    return prompts


# --- comparison ---------------------------------------------------------------------------------


def reference_acts(ref: ReferenceModel, tokens: list[int]) -> tuple[np.ndarray, list]:
    """Reference logits plus, per BitLinear call, (name, x, q, d) from its own quantizer."""
    from bitnet.tools.reference import quantize_activations

    calls = []

    def trace(name: str, x: np.ndarray) -> None:
        q, d = quantize_activations(x)
        calls.append((name, x.copy(), q, d))

    ref.trace = trace
    try:
        logits = ref.forward(tokens)
    finally:
        ref.trace = None
    return logits, calls


def first_flip(ours: list, theirs: list, n_tok: int) -> int:
    """First token row whose int8 activations differ anywhere (n_tok if none), after checking
    that the first differing module there differs only at rounding near-ties."""
    assert [c[0] for c in ours] == [c[0] for c in theirs], "BitLinear call order differs"
    diff_rows = [(c0[2] != c1[2]).any(axis=1) for c0, c1 in zip(ours, theirs, strict=True)]
    flipped = [int(np.argmax(r)) for r in diff_rows if r.any()]
    if not flipped:
        return n_tok
    t = min(flipped)
    for (name, x0, q0, d0), (_, x1, q1, d1), rows in zip(ours, theirs, diff_rows, strict=True):
        if rows[t]:  # the first module, in execution order, that differs in row t
            where = f"{name} row {t}"
            # Bit-identical inputs must quantize identically: else d or the rounding differ.
            assert not np.array_equal(x0[t], x1[t]), (
                f"{where}: same float input, different int8 activations (d {d0[t]!r} vs "
                f"{d1[t]!r}): the activation quantizers disagree"
            )
            idx = np.nonzero(q0[t] != q1[t])[0]
            for v in (x0[t, idx] * d0[t], x1[t, idx] * d1[t]):
                gap = np.abs(np.abs(v - np.floor(v)) - 0.5)
                assert gap.max() <= NEAR_TIE, (
                    f"{where}: int8 activations differ away from a rounding tie "
                    f"(x·d = {v.tolist()}): the graphs disagree, not just rounding"
                )
            return t
    raise AssertionError("unreachable")


def test_weights_agree(pair):
    """The GGUF holds exactly transformers' ternary codes and the (bf16) scale, per linear."""
    for mod in pair.oracle.modules():
        if isinstance(mod, W158A8Linear):
            w = pair.ref.tensor(mod.name)
            assert isinstance(w, TernaryWeight)
            np.testing.assert_array_equal(w.codes, mod.codes.numpy(), err_msg=mod.name)
            assert w.scale == np.float32(mod.scale.item()), mod.name


def test_bitlinear_bitwise(pair):
    """Same input → the same float32 bits from our BitLinear and the oracle's, on the layer-0
    inputs of every token (tie-rich: see `tie_tokens`) and on random rows (incl. all-zero)."""
    from bitnet.tools.reference import bitlinear, rms_norm

    ref = pair.ref
    h = rms_norm(ref.tensor("token_embd.weight"), ref.tensor("blk.0.attn_norm.weight"),
                 ref.hparams.rms_eps)  # fmt: skip
    rng = np.random.default_rng(7)
    extra = rng.standard_normal((8, h.shape[1])).astype(np.float32) * np.float32(3)
    extra[0] = 0
    x = np.concatenate([h, extra])
    n_tie_rows = len(tie_tokens(ref))
    for mod in pair.oracle.modules():
        if isinstance(mod, W158A8Linear) and mod.codes.shape[1] == x.shape[1]:
            with torch.no_grad():
                want = mod(torch.from_numpy(x)).numpy()
            got = bitlinear(x, ref.tensor(mod.name))
            np.testing.assert_array_equal(got, want, err_msg=f"{mod.name} ({n_tie_rows} tie rows)")


def test_next_token_logits(pair):
    strict_rows = total_rows = 0
    for tokens in _prompts(pair.ref):
        want = oracle_logits(pair.oracle, pair.log, tokens)
        got, acts = reference_acts(pair.ref, tokens)
        t_star = first_flip(acts, pair.log.calls, len(tokens))
        scale = np.abs(want).max(axis=1)
        err = np.abs(got - want).max(axis=1) / scale
        assert err[:t_star].max(initial=0) <= STRICT, (
            f"logits differ by {err[:t_star].max():.2e}·max|logit| before any rounding flip"
        )
        assert err[t_star:].max(initial=0) <= LOOSE, f"{err.max():.2e}·max|logit| after a flip"
        strict_rows += t_star
        total_rows += len(tokens)
    assert strict_rows >= total_rows // 2, (
        f"only {strict_rows}/{total_rows} rows before the first rounding flip: test too weak"
    )


def test_greedy_tokens(pair):
    prompt = _prompts(pair.ref)[0][:8]
    got = pair.ref.generate(prompt, N_GREEDY)
    assert len(got) == N_GREEDY
    seq = list(prompt)
    for step, token in enumerate(got):
        logits = oracle_logits(pair.oracle, pair.log, seq)
        _, acts = reference_acts(pair.ref, seq)
        flipped = first_flip(acts, pair.log.calls, len(seq)) < len(seq)
        last = logits[-1]
        want = int(np.argmax(last))
        if want != token:
            top2 = np.sort(last)[-2:]
            tol = (LOOSE if flipped else STRICT) * np.abs(last).max()
            assert top2[1] - top2[0] <= tol, (
                f"greedy step {step}: reference chose {token}, oracle {want} with margin "
                f"{top2[1] - top2[0]:.3g} > {tol:.3g}"
            )
            return  # a legitimate near-tie: the sequences may part here
        seq.append(want)


def test_unpatched_transformers_is_close(pair):
    """transformers as it is (fake-quant ActQuant, `127 / t`, float32 online scale) stays within
    the loose bound: the oracle's changes are rounding-level, not a different model."""
    model = load_transformers(pair.folder)
    for tokens in _prompts(pair.ref):
        with torch.no_grad():
            want = model(torch.tensor([tokens])).logits[0].numpy()
        err = np.abs(pair.ref.forward(tokens) - want).max(axis=1) / np.abs(want).max(axis=1)
        assert err.max() <= LOOSE, f"{err.max():.2e}·max|logit|"
