"""`bitnet dummy` and its library: shapes, determinism, layouts, tokenizer files and the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bitnet.cli.app import app
from bitnet.tools import dummy as dummy_lib
from bitnet.tools import hf_tokenizer
from bitnet.tools.dummy import PRESETS, make_dummy, plan_dummy
from bitnet.tools.errors import OutputExistsError, ShapeError, UsageError
from bitnet.tools.safetensors import Checkpoint

runner = CliRunner()

LINEARS = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
]


def _unpack_hf(packed: np.ndarray) -> np.ndarray:
    """Independent HF unpacking (spec §5.1): code=(byte>>2i)&3 -> row i*R+p, value=code-1."""
    r, k = packed.shape
    out = np.empty((4 * r, k), dtype=np.int8)
    for p in range(r):
        for i in range(4):
            out[i * r + p] = ((packed[p].astype(np.int16) >> (2 * i)) & 3) - 1
    return out


def _absmean_codes(w: np.ndarray) -> tuple[np.ndarray, float]:
    """Independent absmean: s = mean|W| (exact, float64 sum), codes = clip(rint(W/s)) in f32."""
    s = np.float32(np.abs(w.astype(np.float64)).sum() / w.size)
    codes = np.clip(np.rint(w.astype(np.float32) / s), -1, 1).astype(np.int8)
    return codes, float(s)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# --- the checkpoint -----------------------------------------------------------------------------


def test_tiny_packed_layout(tiny_packed: Path) -> None:
    ckpt = Checkpoint(tiny_packed)
    cfg = ckpt.config
    s = PRESETS["tiny"]
    assert cfg["architectures"] == ["BitNetForCausalLM"]
    assert cfg["model_type"] == "bitnet" and cfg["hidden_act"] == "relu2"
    assert cfg["quantization_config"] == {
        "quant_method": "bitnet",
        "linear_class": "autobitlinear",
        "quantization_mode": "offline",
    }
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]) == (128, 2, 4)
    assert (cfg["num_key_value_heads"], cfg["intermediate_size"], cfg["vocab_size"]) == (
        2,
        256,
        512,
    )
    assert cfg["tie_word_embeddings"] is True and cfg["rms_norm_eps"] == 1e-5
    assert cfg["torch_dtype"] == "bfloat16" and cfg["rope_theta"] == 500000.0

    names = set(ckpt.names())
    assert "lm_head.weight" not in names
    assert ckpt.shape("model.embed_tokens.weight") == (512, 128)
    assert ckpt.dtype("model.norm.weight") == "BF16"
    outs = {"q": s.hidden, "k": s.kv_dim, "v": s.kv_dim, "o": s.hidden}
    for layer in range(s.layers):
        p = f"model.layers.{layer}."
        for norm, n in [
            ("input_layernorm", 128),
            ("self_attn.attn_sub_norm", 128),
            ("post_attention_layernorm", 128),
            ("mlp.ffn_sub_norm", 256),
        ]:
            assert ckpt.shape(f"{p}{norm}.weight") == (n,)
        for lin in LINEARS:
            m = outs.get(lin.split(".")[1][0], 256 if "gate" in lin or "up" in lin else 128)
            k = 256 if "down" in lin else 128
            assert ckpt.dtype(f"{p}{lin}.weight") == "U8"
            assert ckpt.shape(f"{p}{lin}.weight") == (m // 4, k), lin
            assert ckpt.shape(f"{p}{lin}.weight_scale") == (1,)
            assert ckpt.dtype(f"{p}{lin}.weight_scale") == "BF16"
    assert len(names) == 1 + 2 * (4 + 7 * 2) + 1


def test_tiny_bf16_layout(tiny_bf16: Path) -> None:
    ckpt = Checkpoint(tiny_bf16)
    assert ckpt.config["quantization_config"]["quantization_mode"] == "online"
    assert ckpt.dtype("model.layers.0.mlp.down_proj.weight") == "BF16"
    assert ckpt.shape("model.layers.0.mlp.down_proj.weight") == (128, 256)
    assert not any(n.endswith("weight_scale") for n in ckpt.names())


def test_packed_and_bf16_give_the_same_ternary_codes(tiny_packed: Path, tiny_bf16: Path) -> None:
    packed, master = Checkpoint(tiny_packed), Checkpoint(tiny_bf16)
    for layer in range(2):
        for lin in LINEARS:
            name = f"model.layers.{layer}.{lin}.weight"
            codes = _unpack_hf(np.asarray(packed.get(name)))
            w = master.get(name)
            expect, s = _absmean_codes(w)
            np.testing.assert_array_equal(codes, expect, err_msg=name)
            assert set(np.unique(codes)) <= {-1, 0, 1}
            # the stored scale is mean|W| rounded to bf16 (relative error < 2^-8)
            scale = float(packed.get(name + "_scale")[0])
            assert abs(scale - s) <= s * 2**-8
    for name in master.names():  # everything else is the same tensor in both layouts
        if not any(lin in name for lin in LINEARS):
            np.testing.assert_array_equal(master.raw(name), packed.raw(name), err_msg=name)


def test_weights_look_like_a_model(tiny_bf16: Path) -> None:
    ckpt = Checkpoint(tiny_bf16)
    norm = ckpt.get("model.layers.0.input_layernorm.weight")
    assert np.all(np.abs(norm - 1) <= 0.1 + 2**-7) and norm.std() > 0.01  # bf16 step 2^-7
    w = ckpt.get("model.layers.1.mlp.up_proj.weight")
    assert abs(w.std() * np.sqrt(128) - 1) < 0.05  # latent ~ N(0, 1/K)
    emb = ckpt.get("model.embed_tokens.weight")
    assert np.isfinite(emb).all() and emb.std() > 0


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path, tiny_packed: Path) -> None:
    again = make_dummy(tmp_path / "again", "tiny", "packed", seed=0)
    assert _files(again) == _files(tiny_packed)
    other = make_dummy(tmp_path / "other", "tiny", "packed", seed=1)
    a, b = _files(other), _files(tiny_packed)
    assert a["model.safetensors"] != b["model.safetensors"]
    assert a["tokenizer.json"] == b["tokenizer.json"]


def test_overrides_and_untied_head(tmp_path: Path) -> None:
    path = make_dummy(
        tmp_path / "m", "tiny", "bf16", layers=1, ffn=384, vocab=600, tie_embeddings=False
    )
    ckpt = Checkpoint(path)
    assert ckpt.config["num_hidden_layers"] == 1 and ckpt.config["intermediate_size"] == 384
    assert ckpt.config["tie_word_embeddings"] is False
    assert ckpt.shape("lm_head.weight") == (600, 128)
    tok = json.loads((path / "tokenizer.json").read_text())
    assert len(tok["model"]["vocab"]) + len(tok["added_tokens"]) == 600


def test_plan_of_the_real_2b4t_shape() -> None:
    plan = plan_dummy("2b4t")
    assert plan.params == 2_412_820_480  # spec §4.1
    shapes = {t.name: t.shape for t in plan.tensors}
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (640 // 4, 2560)
    assert shapes["model.layers.29.mlp.down_proj.weight"] == (2560 // 4, 6912)
    assert shapes["model.embed_tokens.weight"] == (128256, 2560)
    assert len([n for n in shapes if n.endswith("weight_scale")]) == 30 * 7
    assert plan_dummy("125m").shape.hidden == 768  # preset names are case-insensitive


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"preset": "nope"}, UsageError),
        ({"layout": "int4"}, UsageError),
        ({"heads": 3}, ShapeError),  # 128 % 3
        ({"kv_heads": 3}, ShapeError),  # 4 % 3
        ({"hidden": 132, "heads": 4}, ShapeError),  # head_dim 33 is odd (RoPE)
        ({"ffn": 250}, ShapeError),  # packed layout needs out % 4
        ({"vocab": 100}, UsageError),
        ({"layers": 0}, UsageError),
        ({"seed": -1}, UsageError),
        ({"bogus": 1}, UsageError),
    ],
)
def test_invalid_requests(tmp_path: Path, kwargs, error) -> None:
    with pytest.raises(error):
        make_dummy(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        make_dummy(out)
    assert (out / "keep.txt").read_text() == "mine"
    make_dummy(out, force=True, layers=1)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_failure_midway_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    real = dummy_lib._produce

    def failing(seed, plan):
        gen = real(seed, plan)
        yield next(gen)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(dummy_lib, "_produce", failing)
    with pytest.raises(RuntimeError):
        make_dummy(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_progress_reports_every_byte(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    make_dummy(tmp_path / "out", layers=1, progress=lambda d, t, _: calls.append((d, t)))
    assert calls and calls[-1][0] == calls[-1][1] == plan_dummy(layers=1).weights_nbytes
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


# --- tokenizer files ----------------------------------------------------------------------------


def test_tokenizer_files_are_consistent(tiny_packed: Path) -> None:
    tok = json.loads((tiny_packed / "tokenizer.json").read_text())
    tcfg = json.loads((tiny_packed / "tokenizer_config.json").read_text())
    cfg = json.loads((tiny_packed / "config.json").read_text())
    gen = json.loads((tiny_packed / "generation_config.json").read_text())
    model = tok["model"]
    assert model["type"] == "BPE" and model["ignore_merges"] is True
    assert len(model["vocab"]) == 256 + len(model["merges"])
    assert sorted(model["vocab"].values()) == list(range(len(model["vocab"])))
    specials = {t["content"]: t["id"] for t in tok["added_tokens"]}
    assert specials[tcfg["bos_token"]] == cfg["bos_token_id"]
    assert specials[tcfg["eos_token"]] == cfg["eos_token_id"]
    assert gen["eos_token_id"] == [cfg["eos_token_id"], specials["<|eot_id|>"]]
    assert {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"} <= set(specials)
    assert max(specials.values()) == cfg["vocab_size"] - 1
    pre = tok["pre_tokenizer"]["pretokenizers"]
    assert pre[0]["pattern"]["Regex"] == hf_tokenizer.LLAMA3_PATTERN
    assert pre[1]["type"] == "ByteLevel"
    for merge in model["merges"]:  # every merge produces a vocab entry from two vocab entries
        a, b = merge  # ["a", "b"] pairs, as tokenizers >= 0.20 writes them (older files: "a b")
        assert a in model["vocab"] and b in model["vocab"] and a + b in model["vocab"]


def test_tokenizer_loads_in_hf_tokenizers(tiny_packed: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(tiny_packed / "tokenizer.json"))
    text = "The model is fast, isn't it? 2048 tokens\n\tnaïve café 日本"
    enc = tok.encode(text)
    assert enc.ids[0] == Checkpoint(tiny_packed).config["bos_token_id"]
    assert tok.decode(enc.ids, skip_special_tokens=True) == text
    assert len(enc.ids) < len(text.encode())  # the merges do something
    assert tok.get_vocab_size() == 512
    eot = tok.encode("<|eot_id|>", add_special_tokens=False).ids
    assert eot == [tok.token_to_id("<|eot_id|>")]


@pytest.mark.oracle
def test_tokenizer_loads_in_transformers(tiny_packed: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_packed))
    ref = tokenizers.Tokenizer.from_file(str(tiny_packed / "tokenizer.json"))
    text = "The model is fast, isn't it? 2048 tokens naïve café"
    assert tok(text)["input_ids"] == ref.encode(text).ids
    assert tok.bos_token_id == Checkpoint(tiny_packed).config["bos_token_id"]
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|begin_of_text|>User: Hi<|eot_id|>Assistant: "


def test_chat_template_renders_the_2b4t_format(tiny_packed: Path) -> None:
    jinja2 = pytest.importorskip("jinja2")
    tcfg = json.loads((tiny_packed / "tokenizer_config.json").read_text())
    template = jinja2.Environment().from_string(tcfg["chat_template"])
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": " Hi "},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    text = template.render(
        messages=messages, bos_token=tcfg["bos_token"], add_generation_prompt=True
    )
    assert text == (
        "<|begin_of_text|>System: Be brief.<|eot_id|>User: Hi<|eot_id|>"
        "Assistant: Hello.<|eot_id|>User: Bye<|eot_id|>Assistant: "
    )


def test_trained_tokenizer_is_deterministic_and_frequency_ordered() -> None:
    a = hf_tokenizer.tokenizer_json(hf_tokenizer.build_tokenizer(600, use_llama3=False))
    b = hf_tokenizer.tokenizer_json(hf_tokenizer.build_tokenizer(600, use_llama3=False))
    assert a == b
    merges = a["model"]["merges"]
    assert merges[0] == ["Ġ", "t"]  # " t" is the most frequent pair of the embedded English text
    assert len(a["model"]["vocab"]) == 256 + len(merges) <= 600 - hf_tokenizer.MIN_SPECIALS


def test_missing_tokenizers_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(UsageError, match="tokenizers package") as info:
        hf_tokenizer.build_tokenizer(512)
    assert "pip install" in (info.value.hint or "")


def test_merges_from_ranks_orders_by_produced_token() -> None:
    ranks = [b"a", b"b", b"c", b"ab", b"bc", b"abc"]
    merges = hf_tokenizer.merges_from_ranks(ranks)
    # abc splits both as (a, bc) and (ab, c): both kept, ordered by the parts' ranks
    assert merges == [(b"a", b"b"), (b"b", b"c"), (b"a", b"bc"), (b"ab", b"c")]


def test_byte_level_map_is_gpt2s() -> None:
    m = hf_tokenizer.byte_to_unicode()
    assert len(set(m.values())) == 256
    assert m[ord(" ")] == "Ġ" and m[ord("\n")] == "Ċ" and m[ord("A")] == "A"


@pytest.mark.slow
def test_llama3_vocab_from_quicktok_matches_its_encoder() -> None:
    quicktok = pytest.importorskip("quicktok")
    tokenizers = pytest.importorskip("tokenizers")
    tok = hf_tokenizer.build_tokenizer(128256)
    if tok.source != "llama3 ranks (quicktok)":
        pytest.skip("quicktok installed without Llama-3 data")
    doc = hf_tokenizer.tokenizer_json(tok)
    assert len(doc["model"]["merges"]) == 280147 and tok.bos_id == 128000 and tok.eot_id == 128009
    hf = tokenizers.Tokenizer.from_str(json.dumps(doc))
    ref = quicktok.get_encoding("llama3")
    for text in ["Hello world! 12345", "naïve café — 日本語 🚀", "  a\n\n\tb", "I'm sure they'll"]:
        assert hf.encode(text, add_special_tokens=False).ids == list(ref.encode(text))


def test_padding_with_reserved_specials_when_no_real_vocab() -> None:
    tok = hf_tokenizer.build_tokenizer(2000, use_llama3=False)
    assert tok.vocab_size == 2000 and tok.source == "trained on embedded text"
    assert tok.specials[-1] == f"<|reserved_special_token_{len(tok.specials) - 6}|>"
    assert len(set(tok.specials)) == len(tok.specials)


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_writes_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "m"
    result = runner.invoke(app, ["dummy", "-o", str(out), "--layers", "1"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert (out / "model.safetensors").is_file()
    before = _files(out)

    result = runner.invoke(app, ["dummy", "-o", str(out), "--layers", "1", "--seed", "5"])
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and "already exists" in lines[0]
    assert all(ln.startswith(("error: ", "try: ")) for ln in lines) and len(lines) <= 2
    assert "Traceback" not in result.output
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]

    result = runner.invoke(
        app, ["dummy", "-o", str(out), "--layers", "1", "--seed", "5", "--force"]
    )
    assert result.exit_code == 0
    assert _files(out) != before


def test_cli_bad_shape_is_one_error_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["dummy", "-o", str(tmp_path / "m"), "--kv-heads", "3"])
    assert result.exit_code != 0
    assert result.stderr.startswith("error: ") and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_cli_dry_run_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "m"
    result = runner.invoke(
        app, ["dummy", "-o", str(out), "--preset", "2b4t", "--dry-run", "--json"]
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["params"] == 2_412_820_480 and plan["shape"]["hidden"] == 2560
    assert plan["weights_bytes"] == sum(t["bytes"] for t in plan["tensors"])
    assert not out.exists()
    result = runner.invoke(app, ["dummy", "--dry-run", "--layout", "bf16"])
    assert result.exit_code == 0
    assert "model.layers.1.mlp.down_proj.weight\t128x256\tBF16" in result.stdout


def test_cli_needs_an_output(tmp_path: Path) -> None:
    result = runner.invoke(app, ["dummy"])
    assert result.exit_code != 0 and "-o" in result.stderr
