"""End to end through the product's own commands: `bitnet dummy` → `bitnet convert` → `bitnet run`.

Greedy output of the patched llama.cpp is compared with the NumPy reference (the golden model) for
both checkpoint layouts, for Microsoft's published file layout, and across ternary/float types.
Tokens are compared up to the first step whose reference top-1 margin is below `MARGIN` of the
row's largest |logit|: there, float op order (or a different but legitimate rounding, for TQ2_0
and F16) may pick the other token. The I2_S logits agree with the reference to ~1e-4 of a row's
largest |logit| (tests/test_native.py), so 2e-3 is 20x that noise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from native_helpers import binary as _binary
from typer.testing import CliRunner

from bitnet.cli.app import app
from bitnet.tools.gguf import GGUFReader, rewrite_arch
from bitnet.tools.hf_tokenizer import byte_to_unicode
from bitnet.tools.reference import ReferenceModel

pytestmark = pytest.mark.native

PROMPT = "Once upon a time there was"
N_NEW = 16
MARGIN = 2e-3  # of max|logit|, for I2_S against the reference
MARGIN_OTHER_TYPE = 0.05  # TQ2_0 (fp16 scale, Q8_K activations) and F16 (float activations)


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def _convert(ckpt: Path, out: Path, outtype: str, *extra: str) -> Path:
    _cli("convert", ckpt, "-o", out, "--outtype", outtype, *extra)
    return out


def _run_text(gguf: Path) -> str:
    """`bitnet run --temp 0` output (generated text only). llama.cpp writes straight to fd 1."""
    cmd = [sys.executable, "-m", "bitnet.cli.app", "run", "-m", str(gguf), "-p", PROMPT]
    cmd += ["-n", str(N_NEW), "--temp", "0", "-t", "2", "-c", "256", "--seed", "1"]
    cmd += ["--no-display-prompt", "--", "--no-warmup"]
    res = subprocess.run(cmd, capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    return res.stdout.decode("utf-8", "replace")


def _prompt_ids(gguf: Path) -> list[int]:
    res = subprocess.run(
        [str(_binary("llama-bitnet-logits")), "-m", str(gguf), "-p", PROMPT, "--tokenize-only"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["tokens"]


def _decode(gguf: Path, ids: list[int]) -> str:
    tokens = GGUFReader(gguf).kv["tokenizer.ggml.tokens"]
    unbyte = {c: b for b, c in byte_to_unicode().items()}
    return bytes(unbyte[c] for i in ids for c in tokens[i]).decode("utf-8", "replace")


def _reference_greedy(gguf: Path) -> tuple[list[int], list[float]]:
    """Greedy tokens of the reference and, per step, its top-1 margin relative to max|logit|."""
    model = ReferenceModel.from_gguf(gguf)
    ids = _prompt_ids(gguf)
    out, margins = [], []
    for _ in range(N_NEW):
        logits = np.asarray(model.next_logits(ids + out), dtype=np.float64)
        top2 = np.sort(logits)[-2:]
        margins.append(float((top2[1] - top2[0]) / np.abs(logits).max()))
        out.append(int(logits.argmax()))
    return out, margins


def _confident_prefix(ids: list[int], margins: list[float], tol: float) -> list[int]:
    n = next((i for i, m in enumerate(margins) if m < tol), len(ids))
    return ids[:n]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    _binary("llama-completion")
    tmp = tmp_path_factory.mktemp("e2e")
    return {
        layout: Path(_cli("dummy", "-o", tmp / layout, "--layout", layout, "--seed", "5").strip())
        for layout in ("packed", "bf16")
    }


@pytest.mark.parametrize("layout", ["packed", "bf16"])
def test_bitnet_run_greedy_matches_reference(checkpoints, tmp_path, layout):
    gguf = _convert(checkpoints[layout], tmp_path / f"{layout}.gguf", "i2_s")
    ref_ids, margins = _reference_greedy(gguf)
    confident = _confident_prefix(ref_ids, margins, MARGIN)
    assert len(confident) >= N_NEW // 2, f"reference margins too small to compare: {margins}"
    text = _run_text(gguf)
    assert text.startswith(_decode(gguf, confident)), (text, _decode(gguf, ref_ids))


def test_both_layouts_give_the_same_output(checkpoints, tmp_path):
    a = _convert(checkpoints["packed"], tmp_path / "a.gguf", "i2_s")
    b = _convert(checkpoints["bf16"], tmp_path / "b.gguf", "i2_s")
    assert _run_text(a) == _run_text(b)


def _official_layout(src: Path, dst: Path, arch: str, file_type: int) -> None:
    """Rewrite our file as Microsoft's published one is laid out: arch name, `general.file_type`
    of a value our enum does not define, `general.name`, bool add_bos_token (spec §4.1)."""
    r = GGUFReader(src)
    assert "output.weight" not in r.tensors and r.tensors["token_embd.weight"].type_id == 1
    rewrite_arch(src, dst, arch, file_type, "bitnet2b")


@pytest.mark.parametrize(("arch", "file_type"), [("bitnet-b1.58", 40), ("bitnet-25", 137)])
def test_microsoft_file_layout_loads_and_matches(checkpoints, tmp_path, arch, file_type):
    ours = _convert(checkpoints["packed"], tmp_path / "ours.gguf", "i2_s")
    official = tmp_path / f"ggml-model-i2_s-{arch}.gguf"
    _official_layout(ours, official, arch, file_type)
    assert GGUFReader(official).kv["tokenizer.ggml.add_bos_token"] is True
    ref_ids, margins = _reference_greedy(official)
    text = _run_text(official)
    assert text.startswith(_decode(official, _confident_prefix(ref_ids, margins, MARGIN)))
    assert text == _run_text(ours)


def test_tq2_0_and_f16_give_the_same_greedy_tokens_as_i2_s(checkpoints, tmp_path):
    # TQ2_0 blocks are 256 wide: every K must be a multiple of 256
    ckpt = Path(
        _cli(
            "dummy", "-o", tmp_path / "ckpt", "--hidden", "256", "--ffn", "512", "--seed", "5"
        ).strip()
    )
    i2s = _convert(ckpt, tmp_path / "i2_s.gguf", "i2_s")
    ref_ids, margins = _reference_greedy(i2s)
    expect = _decode(i2s, _confident_prefix(ref_ids, margins, MARGIN_OTHER_TYPE))
    assert len(expect) > 0
    outputs = {"i2_s": _run_text(i2s)}
    for outtype in ("tq2_0", "f16"):
        outputs[outtype] = _run_text(_convert(ckpt, tmp_path / f"{outtype}.gguf", outtype))
    for outtype, text in outputs.items():
        assert text.startswith(expect), (outtype, outputs)
