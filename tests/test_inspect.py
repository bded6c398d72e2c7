"""`bitnet inspect`: summary of a converted file, JSON and table output, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bitnet.cli.app import app
from bitnet.tools.convert import convert_checkpoint
from bitnet.tools.gguf import GGUFWriter

runner = CliRunner()


@pytest.fixture(scope="module")
def i2s_file(tiny_packed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("inspect") / "tiny-i2_s.gguf"
    convert_checkpoint(tiny_packed, out, "i2_s")
    return out


def test_inspect_json(i2s_file: Path, tiny_packed: Path) -> None:
    result = runner.invoke(app, ["inspect", str(i2s_file), "--json"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    cfg = json.loads((tiny_packed / "config.json").read_text())
    assert s["architecture"] == "bitnet-b1.58"
    assert s["file_size"] == i2s_file.stat().st_size
    hp = s["hyperparameters"]
    assert hp["block_count"] == cfg["num_hidden_layers"]
    assert hp["embedding_length"] == cfg["hidden_size"]
    assert hp["attention.head_count_kv"] == cfg["num_key_value_heads"]
    tok = s["tokenizer"]
    assert (tok["model"], tok["pre"]) == ("gpt2", "llama-bpe")
    assert tok["n_tokens"] == cfg["vocab_size"] and tok["n_merges"] > 0
    assert tok["bos"]["id"] == cfg["bos_token_id"]
    assert tok["eot"]["token"] == "<|eot_id|>"
    assert tok["has_chat_template"] is True
    assert s["linear_types"] == ["I2_S"]
    # I2_S: 2 bits per weight plus the 32-byte scale tail of each 128×K / 64×K tensor.
    assert 2.0 < s["bpw_linears"] < 2.1
    assert s["bpw_overall"] > s["bpw_linears"]  # the f16 embedding and f32 norms cost more
    assert s["tensor_bytes"] == sum(t["bytes"] for t in s["tensors"])
    q = next(t for t in s["tensors"] if t["name"] == "blk.0.attn_q.weight")
    assert q == {"name": "blk.0.attn_q.weight", "type": "I2_S", "shape": [128, 128], "bytes": 4128}


def test_inspect_table_and_no_tensors(i2s_file: Path) -> None:
    result = runner.invoke(app, ["inspect", str(i2s_file)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "architecture\tbitnet-b1.58" in lines
    assert "chat template\tyes" in lines
    assert "blk.0.attn_q.weight\tI2_S\t128×128\t4128" in lines
    result = runner.invoke(app, ["inspect", str(i2s_file), "--no-tensors", "--json"])
    assert result.exit_code == 0
    assert "tensors" not in json.loads(result.stdout)
    result = runner.invoke(app, ["inspect", str(i2s_file), "--no-tensors"])
    assert "blk.0.attn_q.weight" not in result.stdout


def test_inspect_file_without_tokenizer(tmp_path: Path) -> None:
    path = tmp_path / "bare.gguf"
    w = GGUFWriter(path)
    w.add_tensor("x", (2, 32), 8)  # Q8_0
    w.write(lambda name: bytes(2 * 34))
    result = runner.invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["architecture"] == "" and s["tokenizer"]["n_tokens"] == 0
    assert s["bpw_linears"] is None and s["bpw_overall"] == 8.5


@pytest.mark.parametrize("kind", ["missing", "truncated", "not_gguf"])
def test_inspect_bad_files(i2s_file: Path, tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad.gguf"
    if kind == "truncated":
        path.write_bytes(i2s_file.read_bytes()[:5000])
    elif kind == "not_gguf":
        path.write_text("hello")
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code not in (0, None)
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and len(lines) <= 2
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
