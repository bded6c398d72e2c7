"""The NumPy reference model: hand-checked pieces and whole-graph invariants (tiny shapes, fast)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bitnet.tools import reference as ref
from bitnet.tools.errors import CorruptFileError, ShapeError, UsageError
from bitnet.tools.reference import HParams, ReferenceModel, TernaryWeight

TINY = HParams(n_vocab=61, n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=96, rope_theta=10000.0)


def random_tensors(hp: HParams, seed: int = 0, with_output: bool = False) -> dict:
    """Random weights of the right shapes: ternary linears with a per-tensor scale, float rest."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in ref.tensor_shapes(hp, with_output=with_output).items():
        short = name.split(".")[-2]
        if short in ref.LINEAR_NAMES:
            codes = rng.integers(-1, 2, size=shape).astype(np.int8)
            tensors[name] = TernaryWeight(codes, rng.uniform(0.02, 0.2))
        elif len(shape) == 1:  # norms around 1
            tensors[name] = rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
        else:  # embeddings / output
            tensors[name] = rng.standard_normal(shape).astype(np.float32)
    return tensors


@pytest.fixture(scope="module")
def tiny() -> ReferenceModel:
    return ReferenceModel.from_arrays(TINY, random_tensors(TINY))


TOKENS = [3, 17, 42, 0, 60, 5, 5, 29, 11]


# --- pieces ---------------------------------------------------------------------------------------


def test_rms_norm_by_hand():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    w = np.array([1.0, 2.0], dtype=np.float32)
    y = ref.rms_norm(x, w, eps=1e-5)
    s = 1.0 / np.sqrt(12.5 + 1e-5)  # mean of 9 and 16
    np.testing.assert_allclose(y[0], [3 * s, 8 * s], rtol=1e-6)
    assert np.all(y[1] == 0) and y.dtype == np.float32


def test_rope_neox_matches_direct_rotation():
    rng = np.random.default_rng(1)
    n_tok, heads, hd, n_rot, base = 5, 3, 8, 8, 500000.0
    x = rng.standard_normal((n_tok, heads, hd)).astype(np.float32)
    pos = np.array([0, 1, 2, 7, 100])
    got = ref.rope_neox(x, pos, base, n_rot)
    want = np.empty_like(x, dtype=np.float64)
    half = n_rot // 2
    for t in range(n_tok):
        for h in range(heads):
            for i in range(half):  # NEOX pairs element i with element i + half
                theta = pos[t] * base ** (-2.0 * i / n_rot)
                rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
                want[t, h, [i, i + half]] = rot @ x[t, h, [i, i + half]].astype(np.float64)
    np.testing.assert_allclose(got, want, atol=2e-6)
    np.testing.assert_array_equal(got[0], x[0])  # position 0 is the identity


def test_rope_partial_rotation_leaves_tail():
    x = np.arange(2 * 1 * 8, dtype=np.float32).reshape(2, 1, 8)
    got = ref.rope_neox(x, np.array([3, 4]), 10000.0, n_rot=4)
    np.testing.assert_array_equal(got[..., 4:], x[..., 4:])
    assert not np.allclose(got[..., :4], x[..., :4])


def test_rope_scores_depend_on_relative_position_only():
    rng = np.random.default_rng(2)
    q = rng.standard_normal((1, 1, 16)).astype(np.float32)
    k = rng.standard_normal((1, 1, 16)).astype(np.float32)

    def score(m: int, n: int) -> float:
        qm = ref.rope_neox(q, np.array([m]), 10000.0, 16)
        kn = ref.rope_neox(k, np.array([n]), 10000.0, 16)
        return float(np.sum(qm * kn, dtype=np.float64))

    assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)


def test_activation_quant_ties_to_even():
    # max|x| = 127 makes d exactly 1, so x·d lands exactly on the .5 ties.
    x = np.array([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.49, -126.6]], dtype=np.float32)
    q, d = ref.quantize_activations(x)
    assert d.dtype == np.float32 and d[0] == 1.0
    assert q.dtype == np.int8
    assert q[0].tolist() == [127, 0, 2, 2, 0, -2, -2, 3, -127]


def test_activation_quant_scale_is_float32_per_row():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 37)).astype(np.float32) * np.float32([[1], [10], [1e-3], [3]])
    q, d = ref.quantize_activations(x)
    amax = np.abs(x).max(axis=1)
    np.testing.assert_array_equal(d, np.float32(127) / amax)
    np.testing.assert_array_equal(q, np.clip(np.rint(x * d[:, None]), -128, 127))
    assert np.abs(q).max(axis=1).tolist() == [127] * 4


def test_activation_quant_all_zero_row():
    x = np.zeros((2, 16), dtype=np.float32)
    x[1, 3] = 1e-7  # below the 1e-5 clamp: quantizes to 1 (1e-7·1.27e7 = 1.27)
    q, d = ref.quantize_activations(x)
    assert d[0] == np.float32(127) / np.float32(1e-5)
    assert not q[0].any()
    assert q[1].tolist() == [0, 0, 0, 1] + [0] * 12
    w = TernaryWeight(np.ones((3, 16), dtype=np.int8), 0.5)
    y = ref.bitlinear(x, w)
    assert not y[0].any() and np.isfinite(y).all()


def test_bitlinear_mirrors_the_c_kernel_contract():
    rng = np.random.default_rng(4)
    k, m, t = 256, 12, 5
    x = (rng.standard_normal((t, k)) * 3).astype(np.float32)
    codes = rng.integers(-1, 2, size=(m, k)).astype(np.int8)
    w = TernaryWeight(codes, 0.0371)
    q, d = ref.quantize_activations(x)
    # What the C kernel computes: codes offset by one (0..2), the activation sum subtracted.
    code_u = codes.astype(np.int64) + 1
    raw = q.astype(np.int64) @ code_u.T - q.astype(np.int64).sum(axis=1, keepdims=True)
    np.testing.assert_array_equal(raw, ref.ternary_dot(q, codes))
    want = np.empty((t, m), dtype=np.float32)
    for i in range(t):
        for r in range(m):  # (float)(int) / d * scale, one float32 op at a time
            want[i, r] = np.float32(np.float32(raw[i, r]) / d[i]) * np.float32(0.0371)
    np.testing.assert_array_equal(ref.bitlinear(x, w), want)


def test_ternary_dot_exact_at_extremes():
    k = 4096
    q = np.full((2, k), -128, dtype=np.int8)
    q[1] = 127
    codes = np.ones((1, k), dtype=np.int8)
    assert ref.ternary_dot(q, codes)[:, 0].tolist() == [-128 * k, 127 * k]


def test_bitlinear_float_close_to_integer_path():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 128)).astype(np.float32)
    w = TernaryWeight(rng.integers(-1, 2, size=(20, 128)), 0.25)
    a, b = ref.bitlinear(x, w), ref.bitlinear_float(x, w.dequantize())
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * np.abs(a).max())


def test_gqa_mapping():
    assert [ref.kv_head_of(h, 8, 2) for h in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [ref.kv_head_of(h, 4, 4) for h in range(4)] == [0, 1, 2, 3]
    rng = np.random.default_rng(6)
    t, hd = 4, 8
    q = rng.standard_normal((t, 4, hd)).astype(np.float32)
    k = rng.standard_normal((t, 2, hd)).astype(np.float32)
    v = rng.standard_normal((t, 2, hd)).astype(np.float32)
    pos = np.arange(t)
    base = ref.attention(q, k, v, pos, pos).reshape(t, 4, hd)
    # Naive attention with kv heads repeated like HF's repeat_kv (heads 0,1 → kv 0; 2,3 → kv 1).
    kr, vr = np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1)
    for h in range(4):
        s = (q[:, h] @ kr[:, h].T) / np.sqrt(hd)
        s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
        p = np.exp(s - s.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        np.testing.assert_allclose(base[:, h], p @ vr[:, h], rtol=1e-5, atol=1e-6)
    # Changing kv head 1 changes query heads 2 and 3 only.
    v2 = v.copy()
    v2[:, 1] += 1.0
    moved = ref.attention(q, k, v2, pos, pos).reshape(t, 4, hd)
    np.testing.assert_array_equal(moved[:, :2], base[:, :2])
    assert not np.allclose(moved[:, 2:], base[:, 2:])


def test_attention_first_token_sees_only_itself():
    rng = np.random.default_rng(7)
    q = rng.standard_normal((3, 2, 4)).astype(np.float32)
    k = rng.standard_normal((3, 1, 4)).astype(np.float32)
    v = rng.standard_normal((3, 1, 4)).astype(np.float32)
    out = ref.attention(q, k, v, np.arange(3), np.arange(3)).reshape(3, 2, 4)
    np.testing.assert_allclose(out[0, 0], v[0, 0], rtol=1e-6)
    np.testing.assert_allclose(out[0, 1], v[0, 0], rtol=1e-6)


# --- the whole graph ------------------------------------------------------------------------------


def test_forward_shape_and_dtype(tiny):
    logits = tiny.forward(TOKENS)
    assert logits.shape == (len(TOKENS), TINY.n_vocab) and logits.dtype == np.float32
    assert np.isfinite(logits).all()
    np.testing.assert_allclose(tiny.next_logits(TOKENS), logits[-1], rtol=1e-5, atol=1e-5)


def test_causality(tiny):
    full = tiny.forward(TOKENS)
    for i in (1, 4, len(TOKENS) - 1):
        prefix = tiny.forward(TOKENS[:i])
        np.testing.assert_allclose(prefix, full[:i], rtol=1e-5, atol=1e-5 * np.abs(full).max())


def test_incremental_matches_full_forward(tiny):
    full = tiny.forward(TOKENS)
    cache = tiny.new_cache()
    rows = [tiny.eval(TOKENS[:4], cache)]
    rows += [tiny.eval([t], cache) for t in TOKENS[4:]]
    assert cache.n_past == len(TOKENS)
    np.testing.assert_allclose(
        np.concatenate(rows), full, rtol=1e-5, atol=1e-5 * np.abs(full).max()
    )


def test_float_path_matches_integer_path():
    tensors = random_tensors(TINY, seed=8)
    exact = ReferenceModel.from_arrays(TINY, tensors).forward(TOKENS)
    floaty = ReferenceModel.from_arrays(TINY, tensors, int_matmul=False).forward(TOKENS)
    # Only float rounding differs (measured ~1.3e-7·max|logit|); an int8 activation rounding
    # flip (x·d straddling a .5) would show up as ~1e-3 and is absent for this seed.
    np.testing.assert_allclose(floaty, exact, atol=1e-5 * np.abs(exact).max())


def test_untied_output_weight_is_used():
    tensors = random_tensors(TINY, seed=9, with_output=True)
    untied = ReferenceModel.from_arrays(TINY, tensors)
    del tensors["output.weight"]
    tied = ReferenceModel.from_arrays(TINY, tensors)
    assert not np.allclose(untied.next_logits(TOKENS), tied.next_logits(TOKENS))


def test_head_f16_activations_is_a_small_change(tiny):
    tensors = random_tensors(TINY)
    f16 = ReferenceModel.from_arrays(TINY, tensors, head_f16_activations=True)
    a, b = tiny.forward(TOKENS), f16.forward(TOKENS)
    assert not np.array_equal(a, b)
    np.testing.assert_allclose(b, a, atol=2e-3 * np.abs(a).max())


def test_generate_is_greedy_argmax(tiny):
    prompt = TOKENS[:3]
    got = tiny.generate(prompt, 6)
    seq = list(prompt)
    for _ in range(6):
        seq.append(int(np.argmax(tiny.next_logits(seq))))
    assert got == seq[3:]
    stop = got[2]
    assert tiny.generate(prompt, 6, stop_ids=[stop, 10**6]) == got[: got.index(stop)]
    assert tiny.generate(prompt, 0) == []
    with pytest.raises(UsageError):
        tiny.generate(prompt, 2, greedy=False)


def test_hparams_and_tensor_checks():
    with pytest.raises(ShapeError):
        HParams(n_vocab=8, n_embd=64, n_layer=1, n_head=4, n_head_kv=3, n_ff=8).validate()
    with pytest.raises(UsageError):
        ReferenceModel.from_arrays({"n_vocab": 3, "bogus": 1}, {})
    tensors = random_tensors(TINY)
    del tensors["blk.1.ffn_sub_norm.weight"]
    with pytest.raises(CorruptFileError, match="blk.1.ffn_sub_norm"):
        ReferenceModel.from_arrays(TINY, tensors)
    tensors = random_tensors(TINY)
    tensors["blk.0.attn_k.weight"] = TernaryWeight(np.zeros((8, 64)), 1.0)
    with pytest.raises(ShapeError, match="blk.0.attn_k"):
        ReferenceModel.from_arrays(TINY, tensors)


def test_bad_tokens(tiny):
    with pytest.raises(UsageError):
        tiny.forward([])
    with pytest.raises(UsageError):
        tiny.forward([TINY.n_vocab])


def test_hparams_from_gguf_kv():
    kv = {
        "general.architecture": "bitnet-25",
        "bitnet-25.embedding_length": 64,
        "bitnet-25.block_count": 2,
        "bitnet-25.feed_forward_length": 96,
        "bitnet-25.attention.head_count": 4,
        "bitnet-25.attention.head_count_kv": 2,
        "bitnet-25.attention.layer_norm_rms_epsilon": 1e-6,
        "bitnet-25.rope.freq_base": 500000.0,
    }
    hp = HParams.from_gguf_kv(kv, n_vocab=61)
    assert (hp.n_vocab, hp.n_head_kv, hp.rms_eps, hp.rope_theta, hp.rot_dims) == (
        61, 2, 1e-6, 500000.0, 16
    )  # fmt: skip
    del kv["bitnet-25.attention.layer_norm_rms_epsilon"]
    with pytest.raises(CorruptFileError, match="layer_norm_rms_epsilon"):
        HParams.from_gguf_kv(kv, n_vocab=61)
    with pytest.raises(Exception, match="ternary decoder graphs only.*'gpt2'"):
        HParams.from_gguf_kv({"general.architecture": "gpt2"})


# --- from_gguf (needs the gguf writer and the quants package) -------------------------------------


def _have_gguf_io() -> bool:
    try:
        from bitnet.tools import quants
        from bitnet.tools.gguf import GGUFWriter  # noqa: F401
    except ImportError:
        return False
    return hasattr(quants, "get")


@pytest.mark.skipif(not _have_gguf_io(), reason="bitnet.tools.gguf / quants not available yet")
@pytest.mark.parametrize("ternary_type", ["i2_s", "tq2_0"])
def test_from_gguf_round_trip(tmp_path, ternary_type):
    from bitnet.tools import quants
    from bitnet.tools.constants import GGMLType, Keys
    from bitnet.tools.gguf import GGUFWriter

    hp = HParams(n_vocab=40, n_embd=256, n_layer=1, n_head=4, n_head_kv=2, n_ff=256,
                 rms_eps=1e-6, rope_theta=500000.0)  # fmt: skip
    tensors = random_tensors(hp, seed=10)
    arch = "bitnet-b1.58"
    path = tmp_path / "m.gguf"
    writer = GGUFWriter(path)
    writer.add_kv(Keys.ARCHITECTURE, arch)
    for key, value in [
        (Keys.EMBEDDING_LENGTH, hp.n_embd), (Keys.BLOCK_COUNT, hp.n_layer),
        (Keys.FEED_FORWARD_LENGTH, hp.n_ff), (Keys.HEAD_COUNT, hp.n_head),
        (Keys.HEAD_COUNT_KV, hp.n_head_kv), (Keys.VOCAB_SIZE, hp.n_vocab),
        (Keys.ROPE_DIMENSION_COUNT, hp.head_dim),
    ]:  # fmt: skip
        writer.add_kv(key.format(arch=arch), value)
    writer.add_kv(Keys.LAYERNORM_RMS_EPS.format(arch=arch), hp.rms_eps)
    writer.add_kv(Keys.ROPE_FREQ_BASE.format(arch=arch), hp.rope_theta)

    tq, f32 = quants.get(ternary_type), quants.get("f32")
    payload = {}
    for name, t in tensors.items():
        if isinstance(t, TernaryWeight):
            payload[name] = tq.pack(t.codes, float(t.scale))
            writer.add_tensor(name, t.shape, tq.type_id, tq.nbytes(t.shape))
        else:
            payload[name] = f32.quantize(t)
            writer.add_tensor(name, t.shape, GGMLType.F32, f32.nbytes(t.shape))
    writer.write(lambda name: payload[name])

    loaded = ReferenceModel.from_gguf(path)
    # GGUF stores eps as float32; llama.cpp computes with that float32 value, and so do we.
    assert loaded.hparams == replace(hp, rms_eps=float(np.float32(hp.rms_eps)), n_rot=hp.head_dim)
    # The scale passes through the type's own precision (f16 for TQ2_0); use what was stored.
    for name, t in tensors.items():
        if isinstance(t, TernaryWeight):
            codes, scale = tq.unpack(payload[name], t.shape)
            tensors[name] = TernaryWeight(codes, scale)
    want = ReferenceModel.from_arrays(loaded.hparams, tensors).forward([3, 17, 39, 0, 5])
    np.testing.assert_array_equal(loaded.forward([3, 17, 39, 0, 5]), want)
