"""The per-family converters without the native build: what each family's checkpoint becomes,
the 3B FFN padding, the pre-tokenizer names and every bad input of the families' issue."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bitnet.tools import quants
from bitnet.tools.constants import TokenType
from bitnet.tools.convert import convert_checkpoint, vocab
from bitnet.tools.convert.decoder import permute_qk
from bitnet.tools.dummy import make_dummy, plan_dummy
from bitnet.tools.errors import ShapeError, UnsupportedArchitectureError
from bitnet.tools.gguf import GGUFReader
from bitnet.tools.reference import ReferenceModel
from bitnet.tools.safetensors import Checkpoint


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("families")
    return {
        "1bitllm": make_dummy(tmp / "1bitllm", "tiny", seed=4, family="1bitllm"),
        "llama": make_dummy(tmp / "llama", "tiny", seed=4, family="llama"),
    }


def _copy_with_config(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


# --- what each family becomes -------------------------------------------------------------------


def test_1bitllm_sentencepiece_vocab(ckpts, tmp_path):
    out = convert_checkpoint(ckpts["1bitllm"], tmp_path / "m.gguf").path
    kv = GGUFReader(out).kv
    assert kv["general.architecture"] == "bitnet"  # SiLU graph, from hidden_act
    assert (kv["tokenizer.ggml.model"], kv["tokenizer.ggml.pre"]) == ("llama", "default")
    tokens, types = kv["tokenizer.ggml.tokens"], list(kv["tokenizer.ggml.token_type"])
    assert len(tokens) == 512 == len(kv["tokenizer.ggml.scores"])
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and tokens[3] == "<0x00>"
    assert types[3] == TokenType.BYTE and types[0] == TokenType.UNKNOWN
    assert tokens[-2:] == ["<pad>", "</line>"]  # 1bitLLM's two added tokens
    assert kv["tokenizer.ggml.bos_token_id"] == 1 and kv["tokenizer.ggml.eos_token_id"] == 2
    assert "tokenizer.ggml.merges" not in kv


def test_1bitllm_head_saved_twice_is_tied(ckpts, tmp_path):
    """tie_word_embeddings false + an lm_head equal to the embedding: the bitnet graph's tied head;
    a different lm_head has no graph there and is refused."""
    from bitnet.tools.safetensors import write_safetensors

    def variant(name: str, head) -> Path:
        src = _copy_with_config(ckpts["1bitllm"], tmp_path / name, tie_word_embeddings=False)
        ck = Checkpoint(src)
        tensors = {n: np.array(ck.get(n)) for n in ck.names()}
        ck.close()
        tensors["lm_head.weight"] = head(tensors["model.embed_tokens.weight"])
        items = [(n, a, "F16") for n, a in tensors.items()]
        write_safetensors(src / "model.safetensors", items, {"format": "pt"})
        return src

    same = convert_checkpoint(variant("same", lambda e: e.copy()), tmp_path / "s.gguf").path
    assert "output.weight" not in GGUFReader(same).tensors
    with pytest.raises(UnsupportedArchitectureError, match="differs from the embedding"):
        convert_checkpoint(variant("other", lambda e: e[::-1].copy()), tmp_path / "o.gguf")


def test_llama_family_layout(ckpts, tmp_path):
    out = convert_checkpoint(ckpts["llama"], tmp_path / "m.gguf", "i2_s", "q8_0").path
    r = GGUFReader(out)
    assert r.kv["general.architecture"] == "llama"
    assert "blk.0.attn_sub_norm.weight" not in r.tensors
    assert r.tensors["output.weight"].type_id == quants.get("q8_0").type_id  # never ternary
    ck = Checkpoint(ckpts["llama"])
    ws = float(ck.get("model.layers.0.self_attn.q_proj.weight_scale")[0])
    for hf, name, heads in (
        ("q_proj", "attn_q", 4),
        ("k_proj", "attn_k", 2),
        ("v_proj", "attn_v", 0),
    ):
        packed = ck.get(f"model.layers.0.self_attn.{hf}.weight")
        hf_codes = np.concatenate([((packed >> (2 * i)) & 3).astype(np.int8) - 1 for i in range(4)])
        shape = r.tensors[f"blk.0.{name}.weight"].shape
        codes, scale = quants.get("i2_s").unpack(r.data(f"blk.0.{name}.weight"), tuple(shape))
        want = permute_qk(hf_codes, heads) if heads else hf_codes  # v is never permuted
        np.testing.assert_array_equal(codes, want)
        if name == "attn_q":
            assert scale == np.float32(1) / np.float32(ws)  # bitlinear: the scale divides


def test_permute_qk_interleaves_halves():
    w = np.arange(8)[:, None]  # one head of 8 rows: x0..x3, y0..y3
    assert permute_qk(w, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_norm_rope_on_permuted_rows_is_neox_rope():
    """Why the llama graph gets permuted q/k: NORM rope of permuted heads = permuted NEOX rope."""
    from bitnet.tools.reference import rope_neox, rope_norm

    x = np.random.default_rng(0).standard_normal((5, 3, 16)).astype(np.float32)  # (T, heads, hd)
    pos = np.arange(5)

    def perm(a):  # per head, rows of the projection = dims of the head
        return permute_qk(a.reshape(-1, 16).T, 1).T.reshape(a.shape)

    np.testing.assert_array_equal(
        rope_norm(perm(x), pos, 1e4, 16), perm(rope_neox(x, pos, 1e4, 16))
    )


def test_presets_have_the_family_shapes():
    p = plan_dummy("falcon3-7b")
    assert (p.shape.family, p.shape.head_dim, p.shape.vocab) == ("llama", 256, 131072)
    assert not p.shape.tie_embeddings and p.layout == "packed"
    p = plan_dummy("3B")
    assert (p.shape.family, p.shape.hidden, p.shape.ffn, p.shape.layers) == (
        "1bitllm", 3200, 8640, 26)  # fmt: skip
    assert p.layout == "fp16"
    assert plan_dummy("llama3-8b").shape.kv_heads == 8


# --- the 3B shape: FFN 8640 ------------------------------------------------------------------


@pytest.fixture(scope="module")
def shape_3b(tmp_path_factory) -> Path:
    """1bitLLM 3B widths (hidden 3200, FFN 8640, 32 heads of 100) with 1 layer, small vocab."""
    tmp = tmp_path_factory.mktemp("3b")
    return make_dummy(tmp / "3b", "3B", seed=1, layers=1, vocab=512)


@pytest.fixture(scope="module")
def gguf_3b(shape_3b) -> Path:
    return convert_checkpoint(shape_3b, shape_3b.parent / "3b.gguf", "i2_s").path


def test_3b_ffn_is_padded_for_i2_s(shape_3b, gguf_3b):
    r = GGUFReader(gguf_3b)
    assert r.kv["bitnet.feed_forward_length"] == 8704 and r.kv["bitnet.ffn_true_length"] == 8640
    assert tuple(r.tensors["blk.0.ffn_down.weight"].shape) == (3200, 8704)
    ref = ReferenceModel.from_gguf(gguf_3b)
    down = ref.tensor("blk.0.ffn_down.weight")
    assert not down.codes[:, 8640:].any() and down.codes[:, :8640].any()
    assert not ref.tensor("blk.0.ffn_gate.weight").codes[8640:].any()
    sub = ref.tensor("blk.0.ffn_sub_norm.weight")
    assert not sub[8640:].any()
    master = Checkpoint(shape_3b).get("model.layers.0.mlp.ffn_layernorm.weight").astype(np.float32)
    np.testing.assert_array_equal(sub[:8640], master * np.float32(np.sqrt(8640 / 8704)))


@pytest.mark.native
def test_3b_shape_logits_match_the_reference(gguf_3b, tmp_path):
    """llama.cpp runs the padded 3B shape as I2_S and agrees with the NumPy reference (the
    padding's semantics against transformers: tests/test_families.py, 1bitllm-padded-ffn)."""
    import subprocess

    from native_helpers import binary

    ids = [1, 5, 9, 300, 42, 7, 100, 3]
    out = tmp_path / "logits.f32"
    res = subprocess.run(
        [str(binary("llama-bitnet-logits")), "-m", str(gguf_3b), "--ids", ",".join(map(str, ids)),
         "--all", "-t", "2", "-o", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    ours = np.fromfile(out, dtype="<f4").reshape(len(ids), -1)
    ref = np.asarray(ReferenceModel.from_gguf(gguf_3b).forward(ids), dtype=np.float32)
    row_err = np.abs(ours - ref).max(1) / np.abs(ref).max(1)
    assert row_err.max() < 2e-3, row_err
    assert (ours.argmax(1) == ref.argmax(1)).all()


def test_3b_shape_and_tq2_0_names_the_types(shape_3b, tmp_path):
    with pytest.raises(ShapeError, match=r"blk\.0\.attn_q\.weight.*i2_s") as exc:
        convert_checkpoint(shape_3b, tmp_path / "x.gguf", "tq2_0")
    assert "i2_s" in exc.value.hint and "tq2_0" not in exc.value.hint


# --- tokenizers ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(set(vocab.KNOWN_PRE_HASHES.values())))
def test_pre_tokenizer_named_by_hash(ckpts, tmp_path, monkeypatch, name):
    digest = next(h for h, n in vocab.KNOWN_PRE_HASHES.items() if n == name)
    monkeypatch.setattr(vocab, "probe_hash", lambda path: digest)
    out = convert_checkpoint(ckpts["llama"], tmp_path / "m.gguf").path
    assert GGUFReader(out).kv["tokenizer.ggml.pre"] == name


@pytest.mark.native
@pytest.mark.parametrize("name", ["falcon_e", "falcon3"])
def test_falcon_pre_tokenizers_load(ckpts, tmp_path, monkeypatch, name):
    """The pinned llama.cpp knows falcon3; `falcon_e` needs patch 0008 (bitnet.cpp issue #622).
    Both tokenize like llama-bpe (the Llama-3 regex)."""
    import subprocess

    from native_helpers import binary

    exe = binary("llama-bitnet-logits")
    tokens = {}
    for pre in (name, "llama-bpe"):
        digest = next(h for h, n in vocab.KNOWN_PRE_HASHES.items() if n == pre)
        monkeypatch.setattr(vocab, "probe_hash", lambda path, d=digest: d)
        out = convert_checkpoint(ckpts["llama"], tmp_path / f"{pre}.gguf").path
        cmd = [str(exe), "-m", str(out), "-p", "Hello world 12345 it's", "--tokenize-only"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-1500:]
        tokens[pre] = json.loads(res.stdout)["tokens"]
    assert tokens[name] == tokens["llama-bpe"]


def test_real_llama3_tokenizer_hashes_to_llama_bpe(tmp_path):
    pytest.importorskip("tokenizers")
    from bitnet.tools import hf_tokenizer

    if hf_tokenizer.llama3_ranks() is None:
        pytest.skip("quicktok-v1 (the real Llama-3 ranks) is not installed")
    tok = hf_tokenizer.build_tokenizer(hf_tokenizer.LLAMA3_VOCAB_SIZE)
    tok.write(tmp_path, 8192)
    path = tmp_path / "tokenizer.json"
    assert vocab.KNOWN_PRE_HASHES[vocab.probe_hash(path)] == "llama-bpe"


def test_unknown_hash_with_llama3_regex_is_llama_bpe(ckpts, tmp_path):
    # the small trained tokenizer splits with the Llama-3 regex but has its own vocabulary
    out = convert_checkpoint(ckpts["llama"], tmp_path / "m.gguf").path
    assert GGUFReader(out).kv["tokenizer.ggml.pre"] == "llama-bpe"


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("qc", [None, {"quant_method": "gptq", "bits": 4}])
def test_llama_without_bitnet_quantization_is_refused(ckpts, tmp_path, qc):
    src = _copy_with_config(ckpts["llama"], tmp_path / "c", quantization_config=qc)
    with pytest.raises(UnsupportedArchitectureError, match="not ternary") as exc:
        convert_checkpoint(src, tmp_path / "o.gguf")
    assert "convert_hf_to_gguf.py" in exc.value.hint


def test_unsupported_architecture_lists_the_supported_ones(ckpts, tmp_path):
    src = _copy_with_config(ckpts["llama"], tmp_path / "c", architectures=["GPT2LMHeadModel"])
    with pytest.raises(UnsupportedArchitectureError, match="BitnetForCausalLM, LlamaForCausalLM"):
        convert_checkpoint(src, tmp_path / "o.gguf")


def test_tokenizer_we_cannot_write(ckpts, tmp_path, monkeypatch):
    monkeypatch.setattr(vocab, "probe_hash", lambda path: None)
    src = tmp_path / "c"
    shutil.copytree(ckpts["llama"], src)
    tok = json.loads((src / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "Whitespace"}
    (src / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(UnsupportedArchitectureError, match="pre-tokenizer we cannot write"):
        convert_checkpoint(src, tmp_path / "o.gguf")


def test_broken_sentencepiece_model(ckpts, tmp_path):
    src = tmp_path / "c"
    shutil.copytree(ckpts["1bitllm"], src)
    (src / "tokenizer.model").write_bytes(b"\x0a\xff\xff")  # a field longer than the file
    from bitnet.tools.errors import CorruptFileError

    with pytest.raises(CorruptFileError, match="not a SentencePiece model"):
        convert_checkpoint(src, tmp_path / "o.gguf")


def test_per_linear_rms_norm_is_refused(ckpts, tmp_path):
    cfg = json.loads((ckpts["llama"] / "config.json").read_text())
    qc = {**cfg["quantization_config"], "use_rms_norm": True}
    src = _copy_with_config(ckpts["llama"], tmp_path / "c", quantization_config=qc)
    with pytest.raises(UnsupportedArchitectureError, match="use_rms_norm"):
        convert_checkpoint(src, tmp_path / "o.gguf")
