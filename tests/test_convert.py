"""HF BitNetForCausalLM → GGUF: every outtype and embedding type, both layouts, bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bitnet.cli.app import app
from bitnet.tools import quants
from bitnet.tools.constants import ARCH_BITNET_B158, GGMLType, Keys, TokenType
from bitnet.tools.convert import (
    OUTTYPES,
    ConvertPlan,
    ConvertResult,
    convert_checkpoint,
    converter_for,
    supported_architectures,
)
from bitnet.tools.convert.vocab import load_vocab
from bitnet.tools.dummy import latent_linear, make_dummy
from bitnet.tools.errors import (
    CorruptFileError,
    InputNotFoundError,
    OutputExistsError,
    ShapeError,
    UnsupportedArchitectureError,
)
from bitnet.tools.gguf import read_gguf
from bitnet.tools.safetensors import Checkpoint

runner = CliRunner()
SEED = 0
#: Wide enough for every outtype: K ∈ {256, 512} (TQ needs K % 256, TL2 needs K ≥ 256).
WIDE = {"hidden": 256, "heads": 4, "kv_heads": 2, "ffn": 512}
LAYER_NAMES = (
    "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "attn_sub_norm",
    "ffn_norm", "ffn_gate", "ffn_up", "ffn_down", "ffn_sub_norm",
)  # fmt: skip
LINEARS = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wide")
    return {
        layout: make_dummy(root / f"wide-{layout}", "tiny", layout, SEED, **WIDE)
        for layout in ("packed", "bf16")
    }


@pytest.fixture(scope="module")
def converted(wide: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """{(layout, outtype): GGUF path} for every outtype and both layouts."""
    out = tmp_path_factory.mktemp("gguf")
    paths = {}
    for layout, src in wide.items():
        for outtype in OUTTYPES:
            result = convert_checkpoint(src, out / f"{layout}-{outtype}.gguf", outtype)
            assert isinstance(result, ConvertResult)
            assert result.bytes_written == result.path.stat().st_size == result.plan.file_size
            paths[layout, outtype] = result.path
    return paths


# --- the output file ------------------------------------------------------------------------------


@pytest.mark.parametrize("outtype", OUTTYPES)
def test_every_outtype_both_layouts_identical(converted: dict, outtype: str) -> None:
    packed, bf16 = read_gguf(converted["packed", outtype]), read_gguf(converted["bf16", outtype])
    assert list(packed.tensors) == list(bf16.tensors)
    for name, info in packed.tensors.items():
        assert info == bf16.tensors[name]
        assert bytes(packed.data(name)) == bytes(bf16.data(name)), name
    names = {k for k in packed.kv if k != Keys.NAME}
    assert {k: packed.kv[k] for k in names} == {k: bf16.kv[k] for k in names}


@pytest.mark.parametrize("outtype", OUTTYPES)
def test_tensor_names_types_and_metadata(converted: dict, wide: dict, outtype: str) -> None:
    r = read_gguf(converted["packed", outtype])
    cfg = json.loads((wide["packed"] / "config.json").read_text())
    arch = ARCH_BITNET_B158
    assert r.arch == arch
    expected = ["token_embd.weight"]
    expected += [
        f"blk.{i}.{n}.weight" for i in range(cfg["num_hidden_layers"]) for n in LAYER_NAMES
    ]
    expected += ["output_norm.weight"]
    assert list(r.tensors) == expected  # tied head: no output.weight
    lin_type = quants.get(outtype).type_id
    emb_type = {"f32": GGMLType.F32}.get(outtype, GGMLType.F16)
    for name, t in r.tensors.items():
        part = name.split(".")[-2]
        if part in LINEARS:
            assert t.type_id == lin_type, name
        elif len(t.shape) == 1:
            assert t.type_id == GGMLType.F32, name
        else:
            assert t.type_id == emb_type, name
    assert r.tensors["blk.0.attn_k.weight"].shape == (128, 256)  # (out, in); no q/k permutation
    assert r.tensors["blk.0.ffn_down.weight"].ne == (512, 256)
    hp = {
        Keys.BLOCK_COUNT: cfg["num_hidden_layers"],
        Keys.CONTEXT_LENGTH: cfg["max_position_embeddings"],
        Keys.EMBEDDING_LENGTH: 256,
        Keys.FEED_FORWARD_LENGTH: 512,
        Keys.HEAD_COUNT: 4,
        Keys.HEAD_COUNT_KV: 2,
        Keys.ROPE_DIMENSION_COUNT: 64,
        Keys.VOCAB_SIZE: cfg["vocab_size"],
    }
    for key, value in hp.items():
        assert r.key(key) == value, key
    assert r.key(Keys.ROPE_FREQ_BASE) == pytest.approx(cfg["rope_theta"])
    assert r.key(Keys.LAYERNORM_RMS_EPS) == pytest.approx(cfg["rms_norm_eps"])
    assert r.kv[Keys.NAME] == "wide-packed"
    assert r.kv[Keys.QUANTIZATION_VERSION] == 2
    assert r.kv_types[Keys.FILE_TYPE].name == "UINT32"


def test_tokenizer_keys(converted: dict, wide: dict) -> None:
    r = read_gguf(converted["bf16", "i2_s"])
    folder = wide["bf16"]
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg = json.loads((folder / "config.json").read_text())
    tokens = r.kv[Keys.TOKENIZER_TOKENS]
    assert r.kv[Keys.TOKENIZER_MODEL] == "gpt2"
    assert r.kv[Keys.TOKENIZER_PRE] == "llama-bpe"
    assert len(tokens) == cfg["vocab_size"] == len(r.kv[Keys.TOKENIZER_TOKEN_TYPE])
    for text, idx in tok["model"]["vocab"].items():
        assert tokens[idx] == text
    for added in tok["added_tokens"]:
        assert tokens[added["id"]] == added["content"]
        assert r.kv[Keys.TOKENIZER_TOKEN_TYPE][added["id"]] == TokenType.CONTROL
    assert r.kv[Keys.TOKENIZER_TOKEN_TYPE][0] == TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    assert r.kv[Keys.TOKENIZER_MERGES] == merges
    assert r.kv[Keys.TOKENIZER_BOS_ID] == cfg["bos_token_id"]
    assert r.kv[Keys.TOKENIZER_EOS_ID] == cfg["eos_token_id"]
    assert tokens[r.kv[Keys.TOKENIZER_EOT_ID]] == "<|eot_id|>"
    assert r.kv[Keys.TOKENIZER_ADD_BOS] is True
    assert r.kv[Keys.CHAT_TEMPLATE] == tok_cfg["chat_template"]


def test_ternary_values_match_absmean_of_the_masters(converted: dict, wide: dict) -> None:
    """The packed layout's LSB-first output-dim unpacking gives the masters' absmean codes."""
    r = read_gguf(converted["packed", "i2_s"])
    for hf, gg, shape in [
        ("model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight", (256, 256)),
        ("model.layers.1.mlp.down_proj.weight", "blk.1.ffn_down.weight", (256, 512)),
        ("model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight", (128, 256)),
    ]:
        codes, scale = quants.ternarize_absmean(latent_linear(SEED, hf, *shape))
        got_codes, got_scale = quants.get("i2_s").unpack(r.data(gg), shape)
        np.testing.assert_array_equal(got_codes, codes)
        assert got_scale == np.float32(scale)
    f32 = read_gguf(converted["packed", "f32"])
    codes, scale = quants.ternarize_absmean(
        latent_linear(SEED, "model.layers.0.mlp.up_proj.weight", 512, 256)
    )
    np.testing.assert_array_equal(f32.array("blk.0.ffn_up.weight"), codes * np.float32(scale))


@pytest.mark.parametrize("embedding_type", ["f16", "bf16", "q8_0", "q6_k", "q4_0", "f32"])
def test_embedding_types(wide: dict, tmp_path: Path, embedding_type: str) -> None:
    out = tmp_path / "e.gguf"
    convert_checkpoint(wide["packed"], out, "i2_s", embedding_type)
    r = read_gguf(out)
    t = r.tensors["token_embd.weight"]
    assert t.type_id == quants.get(embedding_type).type_id
    want = Checkpoint(wide["packed"]).get("model.embed_tokens.weight")
    tol = {"f32": 0, "bf16": 0, "f16": 1e-3, "q8_0": 2e-2, "q6_k": 5e-2, "q4_0": 0.2}[
        embedding_type
    ]
    got = r.array("token_embd.weight")
    assert np.max(np.abs(got - want)) <= tol * np.max(np.abs(want))
    # Converting the embedding in row chunks is byte-identical to converting it whole.
    assert bytes(r.data(t.name)) == quants.get(embedding_type).quantize(want).tobytes()


def test_embedding_is_converted_in_chunks(wide: dict, tmp_path: Path, monkeypatch) -> None:
    from bitnet.tools.convert import decoder as mod

    whole = tmp_path / "whole.gguf"
    convert_checkpoint(wide["bf16"], whole, "i2_s", "q6_k")
    monkeypatch.setattr(mod, "CHUNK_BYTES", 3 * 4 * 256)  # 3 rows per chunk, uneven tail
    chunked = tmp_path / "chunked.gguf"
    convert_checkpoint(wide["bf16"], chunked, "i2_s", "q6_k")
    assert whole.read_bytes() == chunked.read_bytes()


def test_untied_head_and_bitlinear_scales(tmp_path: Path) -> None:
    src = make_dummy(tmp_path / "untied", "tiny", "packed", SEED, tie_embeddings=False)
    out = tmp_path / "u.gguf"
    convert_checkpoint(src, out, "i2_s", "q8_0")
    r = read_gguf(out)
    assert r.tensors["output.weight"].type_id == GGMLType.Q8_0
    _, scale = quants.get("i2_s").unpack(r.data("blk.0.attn_q.weight"), (128, 128))
    ws = float(Checkpoint(src).get("model.layers.0.self_attn.q_proj.weight_scale")[0])
    assert scale == np.float32(ws)  # autobitlinear: the scale multiplies

    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"]["linear_class"] = "bitlinear"
    (src / "config.json").write_text(json.dumps(cfg))
    convert_checkpoint(src, out, "i2_s", force=True)
    _, scale = quants.get("i2_s").unpack(read_gguf(out).data("blk.0.attn_q.weight"), (128, 128))
    assert scale == np.float32(np.float32(1.0) / np.float32(ws))  # bitlinear: a reciprocal


def test_dry_run_plans_without_writing(wide: dict, tmp_path: Path, converted: dict) -> None:
    out = tmp_path / "plan.gguf"
    plan = convert_checkpoint(wide["packed"], out, "i2_s", dry_run=True)
    assert isinstance(plan, ConvertPlan)
    assert not out.exists()
    assert plan.file_size == converted["packed", "i2_s"].stat().st_size
    d = plan.to_dict()
    assert d["tensor_bytes"] == sum(t["bytes"] for t in d["tensors"])
    q = next(t for t in d["tensors"] if t["name"] == "blk.0.attn_q.weight")
    assert q == {
        "name": "blk.0.attn_q.weight",
        "type": "I2_S",
        "shape": [256, 256],
        "bytes": 256 * 256 // 4 + 32,
        "source": "model.layers.0.self_attn.q_proj.weight",
    }


def test_vocab_padding_and_pair_merges(wide: dict, tmp_path: Path) -> None:
    folder = tmp_path / "tok"
    folder.mkdir()
    tok = json.loads((wide["bf16"] / "tokenizer.json").read_text())
    tok["model"]["merges"] = [
        m.split(" ") if isinstance(m, str) else m for m in tok["model"]["merges"]
    ]
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    cfg = json.loads((wide["bf16"] / "config.json").read_text())
    n = cfg["vocab_size"]
    vocab = load_vocab(folder, {**cfg, "vocab_size": n + 3, "eos_token_id": [7, 9]})
    assert vocab.tokens[n:] == [f"[PAD{n}]", f"[PAD{n + 1}]", f"[PAD{n + 2}]"]
    assert vocab.token_types[n:] == [TokenType.UNUSED] * 3
    assert all(" " in m for m in vocab.merges) and len(vocab.merges) == len(tok["model"]["merges"])
    assert vocab.eos_id == 7
    assert vocab.chat_template is None  # no tokenizer_config.json in this folder


def test_registry() -> None:
    assert "BitNetForCausalLM" in supported_architectures()
    with pytest.raises(UnsupportedArchitectureError, match="BitNetForCausalLM, BitnetForCausalLM"):
        converter_for({"architectures": ["MistralForCausalLM"]})


# --- bad inputs (library) -------------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_library_errors(tiny_packed: Path, tmp_path: Path) -> None:
    src = _copy(tiny_packed, tmp_path / "m")
    with pytest.raises(InputNotFoundError):
        convert_checkpoint(tmp_path / "missing", tmp_path / "o.gguf")
    _edit_config(src, hidden_act="gelu")
    with pytest.raises(UnsupportedArchitectureError, match="hidden_act 'gelu'.*relu2, silu"):
        convert_checkpoint(src, tmp_path / "o.gguf")
    _edit_config(src, hidden_act="relu2", hidden_size=64)
    with pytest.raises(CorruptFileError, match="config.json implies"):
        convert_checkpoint(src, tmp_path / "o.gguf")
    (tmp_path / "o.gguf").write_bytes(b"mine")
    with pytest.raises(OutputExistsError):
        convert_checkpoint(tiny_packed, tmp_path / "o.gguf")
    assert (tmp_path / "o.gguf").read_bytes() == b"mine"


def test_all_zero_packed_tensor_is_rejected(tiny_packed: Path, tmp_path: Path) -> None:
    src = _copy(tiny_packed, tmp_path / "z")
    ck = Checkpoint(src)
    e = ck.entry("model.layers.1.mlp.up_proj.weight")
    ck.close()
    blob = bytearray((src / "model.safetensors").read_bytes())
    blob[e.start : e.start + e.nbytes] = bytes(e.nbytes)
    (src / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CorruptFileError, match="all zero"):
        convert_checkpoint(src, tmp_path / "o.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*partial*"))


def test_invalid_packed_code_is_rejected(tiny_packed: Path, tmp_path: Path) -> None:
    src = _copy(tiny_packed, tmp_path / "c")
    ck = Checkpoint(src)
    e = ck.entry("model.layers.0.self_attn.v_proj.weight")
    ck.close()
    blob = bytearray((src / "model.safetensors").read_bytes())
    blob[e.start + 5] = 0b11_01_01_01  # code 3 in the last field: never written by a packer
    (src / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CorruptFileError, match="invalid code"):
        convert_checkpoint(src, tmp_path / "o.gguf")


# --- bad inputs (CLI): one error line, no traceback, no output left behind ------------------------


def _assert_clean_failure(result, out_dir: Path, *needles: str) -> None:
    assert result.exit_code not in (0, None), result.output
    lines = result.stderr.strip().splitlines()
    assert lines and lines[0].startswith("error: "), result.stderr
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("try: ")), result.stderr
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    assert isinstance(result.exception, SystemExit)
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    leftovers = [p for p in out_dir.rglob("*") if p.suffix == ".gguf" or "partial" in p.name]
    assert not leftovers, leftovers


def _cli(*args: str):
    return runner.invoke(app, ["convert", *args])


def test_cli_unknown_architecture(tiny_packed: Path, tmp_path: Path) -> None:
    src = _copy(tiny_packed, tmp_path / "m")
    _edit_config(src, architectures=["MambaForCausalLM"])
    out = tmp_path / "out"
    result = _cli(str(src), "-o", str(out / "x.gguf"))
    _assert_clean_failure(result, out, "MambaForCausalLM", "BitNetForCausalLM")


def test_cli_missing_folder(tmp_path: Path) -> None:
    result = _cli(str(tmp_path / "nope"), "-o", str(tmp_path / "x.gguf"))
    _assert_clean_failure(result, tmp_path)


def test_cli_corrupt_safetensors(tiny_packed: Path, tmp_path: Path) -> None:
    src = _copy(tiny_packed, tmp_path / "m")
    (src / "model.safetensors").write_bytes(b"\xff" * 8 + b"not json")
    result = _cli(str(src), "-o", str(tmp_path / "x.gguf"))
    _assert_clean_failure(result, tmp_path, "safetensors")


def test_cli_truncated_safetensors(tiny_packed: Path, tmp_path: Path) -> None:
    src = _copy(tiny_packed, tmp_path / "m")
    blob = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(blob[: len(blob) * 2 // 3])
    result = _cli(str(src), "-o", str(tmp_path / "x.gguf"))
    _assert_clean_failure(result, tmp_path)


def test_cli_existing_output_needs_force(tiny_packed: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.gguf"
    out.write_bytes(b"keep me")
    result = _cli(str(tiny_packed), "-o", str(out))
    assert result.exit_code != 0 and result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
    assert out.read_bytes() == b"keep me"
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]
    result = _cli(str(tiny_packed), "-o", str(out), "--force")
    assert result.exit_code == 0, result.output
    assert read_gguf(out).arch == ARCH_BITNET_B158


def test_cli_impossible_shape_names_tensor_and_types(tmp_path: Path) -> None:
    src = make_dummy(tmp_path / "h96", "tiny", "packed", SEED, hidden=96, heads=4, kv_heads=2)
    out = tmp_path / "out"
    result = _cli(str(src), "-o", str(out / "x.gguf"), "--outtype", "i2_s")
    _assert_clean_failure(result, out, "blk.0.attn_q.weight", "i2_s", "types that can hold it")
    with pytest.raises(ShapeError):
        convert_checkpoint(src, out / "x.gguf", "tq2_0")


def test_cli_bad_outtype(tiny_packed: Path, tmp_path: Path) -> None:
    result = _cli(str(tiny_packed), "-o", str(tmp_path / "x.gguf"), "--outtype", "q9_9")
    _assert_clean_failure(result, tmp_path, "q9_9")


def test_cli_offline_hub(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    result = _cli("microsoft/bitnet-b1.58-2B-4T")
    _assert_clean_failure(result, tmp_path)


# --- CLI success paths ----------------------------------------------------------------------------


def test_cli_default_output_name_and_json(tiny_bf16: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = _cli(str(tiny_bf16), "--json")
    assert result.exit_code == 0, result.output
    out = tmp_path / f"{tiny_bf16.name}-i2_s.gguf"
    report = json.loads(result.stdout)
    assert Path(report["path"]) == out and out.is_file()
    assert report["bytes_written"] == out.stat().st_size
    assert report["architecture"] == ARCH_BITNET_B158


def test_cli_dry_run_table_and_json(tiny_packed: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.gguf"
    result = _cli(str(tiny_packed), "-o", str(out), "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["n_tensors"] == len(plan["tensors"]) and not out.exists()
    result = _cli(str(tiny_packed), "-o", str(out), "--dry-run", "--outtype", "tl1")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "blk.0.attn_q.weight\tTL1\t128×128\t4128" in lines
    total = next(line for line in lines if line.startswith("total\t"))
    assert int(total.split("\t")[-1]) == plan["tensor_bytes"]
    assert not out.exists()


# --- TL tiles: always recorded; tuned ones only with --tuned --------------------------------------


def _records(path: Path) -> dict[str, tuple[int, int, int]]:
    """{tensor: (BM, BK, bm)} recorded in the tails of a GGUF's TL tensors."""
    r = read_gguf(path)
    tl = (int(GGMLType.TL1), int(GGMLType.TL2))
    return {
        n: tuple(int(v) for v in np.asarray(r.data(n)[-28:-16]).view("<u4"))
        for n, i in r.tensors.items()
        if i.type_id in tl
    }


def test_convert_tuned_tiles(wide: dict, converted: dict, tmp_path: Path, monkeypatch) -> None:
    from bitnet.tools import tl_tune

    monkeypatch.setenv("BITNET_CACHE", str(tmp_path / "cache"))
    src, out = wide["packed"], tmp_path / "out"
    # no tl-tuned.json yet: --tuned says what to run; --tuned needs a TL outtype
    r = _cli(str(src), "-o", str(out / "a.gguf"), "--outtype", "tl2", "--tuned", "--no-build")
    _assert_clean_failure(r, out, "no tuned TL tiles")
    assert "--tune" in r.stderr
    r = _cli(str(src), "-o", str(out / "a.gguf"), "--outtype", "i2_s", "--tuned")
    _assert_clean_failure(r, out, "--tuned applies to --outtype tl1 or tl2")

    path = tl_tune.tuned_path()
    path.parent.mkdir(parents=True)
    rows = [{"type": "tl2", "M": 256, "K": 256, "BM": 64, "BK": 192, "bm": 32},
            {"type": "tl2", "M": 512, "K": 256, "BM": 256, "BK": 96, "bm": 32},  # the default
            {"type": "tl1", "M": 256, "K": 256, "BM": 32, "BK": 64, "bm": 32}]  # fmt: skip
    path.write_text(json.dumps({"shapes": rows}))
    args = ("--outtype", "tl2", "--tuned", "--no-build")
    for name in ("a.gguf", "b.gguf"):
        r = _cli(str(src), "-o", str(out / name), *args)
        assert r.exit_code == 0, r.output
    a, b = (out / "a.gguf").read_bytes(), (out / "b.gguf").read_bytes()
    assert a == b  # deterministic with tuned tiles too
    plain = converted["packed", "tl2"]
    assert a != plain.read_bytes() and len(a) == plain.stat().st_size
    tuned, default = _records(out / "a.gguf"), _records(plain)
    shapes = {n: i.shape for n, i in read_gguf(plain).tensors.items()}
    for name, rec in tuned.items():
        t = quants.default_tiling(*shapes[name], "tl2")
        assert default[name] == (t.BM, t.BK, t.bm)
        assert rec == ((64, 192, 32) if shapes[name] == (256, 256) else default[name]), name
    assert (64, 192, 32) in tuned.values() and (256, 96, 32) in tuned.values()
    # the same weights: every tensor dequantizes to the same values
    ra, rp = read_gguf(out / "a.gguf"), read_gguf(plain)
    for name in tuned:
        np.testing.assert_array_equal(ra.array(name), rp.array(name))
    # without --tuned the output is the default one, byte for byte
    r = _cli(str(src), "-o", str(out / "c.gguf"), "--outtype", "tl2", "--no-build")
    assert r.exit_code == 0 and (out / "c.gguf").read_bytes() == plain.read_bytes()
    # the plan names the tuned tiles
    r = _cli(str(src), "-o", str(out / "d.gguf"), *args, "--dry-run", "--json")
    plan = {t["name"]: t for t in json.loads(r.stdout)["tensors"]}
    assert plan["blk.0.attn_q.weight"]["tiles"] == [64, 192, 32]
    assert "tiles" not in plan["blk.0.attn_k.weight"]
