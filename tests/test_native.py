"""The patched llama.cpp build: type ids, and a tiny I2_S model that loads, runs and agrees.

Needs the binaries of `python setup_env.py`; skipped (with that reason) when they are absent.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from native_helpers import binary as _binary

from bitnet.tools.constants import GGML_TYPE_COUNT, QK_I2_S, GGMLType, LlamaFileType

pytestmark = pytest.mark.native

TIMEOUT = 300


@pytest.fixture(scope="module")
def source_tree() -> Path:
    """The llama.cpp tree the found binaries were built from (read from the cmake cache)."""
    build_dir = _binary("llama-bitnet-logits").parent.parent
    cache = build_dir / "CMakeCache.txt"
    if not cache.is_file():
        pytest.skip(f"{build_dir} has no CMakeCache.txt, so its source tree is unknown")
    m = re.search(r"^CMAKE_HOME_DIRECTORY:INTERNAL=(.+)$", cache.read_text(), re.M)
    assert m, "CMakeCache.txt names no source directory"
    return Path(m.group(1))


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=TIMEOUT, **kw
    )


# --- the C side agrees with tools/constants.py ------------------------------------------------


def test_ggml_type_ids_match_constants(source_tree):
    header = (source_tree / "ggml" / "include" / "ggml.h").read_text()
    ids = {m[0]: int(m[1]) for m in re.findall(r"^\s*GGML_TYPE_(\w+)\s*=\s*(\d+),", header, re.M)}
    for t in GGMLType:
        assert ids.get(t.name) == t.value, f"GGML_TYPE_{t.name}"
    assert ids["COUNT"] == GGML_TYPE_COUNT


def test_llama_file_types_match_constants(source_tree):
    header = (source_tree / "include" / "llama.h").read_text()
    ids = dict(re.findall(r"^\s*LLAMA_FTYPE_MOSTLY_(\w+)\s*=\s*(\d+),", header, re.M))
    for t in (LlamaFileType.MOSTLY_I2_S, LlamaFileType.MOSTLY_TL1, LlamaFileType.MOSTLY_TL2):
        assert int(ids.get(t.name.removeprefix("MOSTLY_"), -1)) == t.value, f"LLAMA_FTYPE_{t.name}"


def _traits(ggml_c: str, name: str) -> tuple[int, int]:
    m = re.search(
        rf"\[GGML_TYPE_{name}\] = \{{.*?\.blck_size\s*=\s*(\d+),.*?\.type_size\s*=\s*(\d+),",
        ggml_c,
        re.S,
    )
    assert m, f"no type_traits entry for {name}"
    return int(m[1]), int(m[2])


def test_block_geometry_matches(source_tree):
    ggml_c = (source_tree / "ggml" / "src" / "ggml.c").read_text()
    assert _traits(ggml_c, "I2_S") == (QK_I2_S, QK_I2_S // 4)
    assert _traits(ggml_c, "I8_S") == (QK_I2_S, QK_I2_S + 8)  # int8[128], f32 d, i32 sum


def test_llama_file_type_matches(source_tree):
    header = (source_tree / "include" / "llama.h").read_text()
    m = re.search(r"LLAMA_FTYPE_MOSTLY_I2_S\s*=\s*(\d+)", header)
    assert m and int(m[1]) == LlamaFileType.MOSTLY_I2_S


# --- a tiny I2_S model ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    _binary("llama-bitnet-logits")
    try:
        from bitnet.tools.convert import convert_checkpoint
        from bitnet.tools.dummy import make_dummy
    except ImportError as exc:  # pragma: no cover - written by other parts
        pytest.skip(f"dummy/convert not available: {exc}")
    tmp = tmp_path_factory.mktemp("tiny")
    ckpt = make_dummy(tmp / "ckpt", preset="tiny", layout="packed", seed=0)
    out = tmp / "tiny-i2_s.gguf"
    convert_checkpoint(ckpt, out, outtype="i2_s")
    return out


def _logits(gguf: Path, ids: list[int], tmp: Path, *extra: str) -> tuple[dict, np.ndarray]:
    out = tmp / f"logits{len(list(tmp.iterdir()))}.f32"
    res = _run(
        [_binary("llama-bitnet-logits"), "-m", gguf, "--ids", ",".join(map(str, ids)),
         "--all", "-t", "2", "-o", out, *extra]
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    meta = json.loads(res.stdout)
    data = np.fromfile(out, dtype="<f4").reshape(meta["n_rows"], meta["n_vocab"])
    return meta, data


IDS = [1, 17, 42, 7, 300, 5, 99, 256, 3, 64, 12, 480]


def test_tiny_model_loads_and_generates_greedily(tiny_gguf):
    cmd = [
        _binary("llama-completion"), "-m", tiny_gguf, "-p", "Hello world", "-n", "12",
        "--temp", "0", "-t", "2", "-c", "128", "-no-cnv", "--no-warmup", "--seed", "1",
    ]  # fmt: skip
    first = _run(cmd)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.startswith("Hello world") and len(first.stdout.strip()) > len("Hello world")
    for _ in range(3):  # greedy and complete every time (patch 0006: no output lost at exit)
        again = _run(cmd)
        assert again.returncode == 0
        assert again.stdout == first.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_i2_s_runs_through_the_rpc_server(tiny_gguf):
    """Scale-out path (DESIGN.md): the whole model offloaded to a local ggml-rpc-server."""
    port = _free_port()
    server = subprocess.Popen(
        [str(_binary("rpc-server")), "-H", "127.0.0.1", "-p", str(port), "-t", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "ggml-rpc-server did not start"
            time.sleep(0.05)
        cmd = [
            _binary("llama-completion"), "-m", tiny_gguf, "-p", "Hello world", "-n", "8",
            "--temp", "0", "-t", "1", "-c", "128", "-no-cnv", "--no-warmup",
        ]  # fmt: skip
        local = _run(cmd)
        remote = _run([*cmd, "--rpc", f"127.0.0.1:{port}", "-ngl", "99", "-v"])
        assert remote.returncode == 0, remote.stderr[-2000:]
        assert re.search(r"RPC0\[127\.0\.0\.1:\d+\] model buffer", remote.stderr)
        assert remote.stdout == local.stdout and local.stdout.strip()
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_logits_are_finite_and_batching_does_not_change_them(tiny_gguf, tmp_path):
    meta, full = _logits(tiny_gguf, IDS, tmp_path)
    assert meta["tokens"] == IDS and full.shape == (len(IDS), meta["n_vocab"])
    assert np.isfinite(full).all() and full.std() > 0
    # one token per ubatch takes the single-token path of the I2_S mul_mat
    _, single = _logits(tiny_gguf, IDS, tmp_path, "--ubatch", "1")
    np.testing.assert_allclose(single, full, rtol=1e-4, atol=1e-4)
    assert (single.argmax(1) == full.argmax(1)).all()


def test_logits_match_the_numpy_reference(tiny_gguf, tmp_path):
    try:
        from bitnet.tools.reference import ReferenceModel
    except ImportError as exc:  # pragma: no cover
        pytest.skip(f"reference not available: {exc}")
    _, ours = _logits(tiny_gguf, IDS, tmp_path)
    ref = np.asarray(ReferenceModel.from_gguf(tiny_gguf).forward(IDS), dtype=np.float32)
    _check_close(ours, ref)


def _check_close(ours: np.ndarray, ref: np.ndarray) -> None:
    """llama-bitnet-logits runs with an f32 KV cache and without flash attention (which rounds Q
    to f16), so only float32 op order differs from the reference: no int8 activation flips, and
    each row agrees to ~1e-4 of its largest |logit|. One flip would cost ~1e-2 (reference.py)."""
    assert ref.shape == ours.shape
    row_err = np.abs(ours - ref).max(1) / np.abs(ref).max(1)
    assert row_err.max() < 2e-3, row_err
    assert (ours.argmax(1) == ref.argmax(1)).all()


def _rename_arch(src: Path, dst: Path, arch: str) -> None:
    """Rewrite a bitnet-b1.58 GGUF under another architecture name (same tensors)."""
    from bitnet.tools.gguf import GGUFReader, GGUFWriter

    r = GGUFReader(src)
    w = GGUFWriter(dst)
    old = r.kv["general.architecture"]
    for key, value in r.kv.items():
        vtype = r.kv_types[key]
        new_key = arch + key[len(old) :] if key.startswith(old + ".") else key
        new_value = arch if key == "general.architecture" else value
        w.add_kv(new_key, new_value, vtype[1] if isinstance(vtype, tuple) else vtype)
    for name, t in r.tensors.items():
        w.add_tensor(name, t.shape, t.type_id, t.nbytes)
    w.write(lambda name: np.asarray(r.data(name)))


def test_bitnet_25_is_the_same_graph(tiny_gguf, tmp_path):
    alias = tmp_path / "tiny-bitnet-25.gguf"
    _rename_arch(tiny_gguf, alias, "bitnet-25")
    _, a = _logits(tiny_gguf, IDS, tmp_path)
    _, b = _logits(alias, IDS, tmp_path)
    np.testing.assert_array_equal(a, b)


def test_untied_output_weight_is_used(tmp_path):
    _binary("llama-bitnet-logits")
    from bitnet.tools.convert import convert_checkpoint
    from bitnet.tools.dummy import make_dummy
    from bitnet.tools.reference import ReferenceModel

    ckpt = make_dummy(tmp_path / "ckpt", preset="tiny", seed=3, tie_embeddings=False)
    gguf = tmp_path / "untied.gguf"
    convert_checkpoint(ckpt, gguf, outtype="i2_s")
    work = tmp_path / "out"
    work.mkdir()
    _, ours = _logits(gguf, IDS, work)
    ref = np.asarray(ReferenceModel.from_gguf(gguf).forward(IDS), dtype=np.float32)
    _check_close(ours, ref)


def test_quantized_head_prefill(tmp_path):
    """A Q8_0 token_embd/head through a 100-token prompt: the path where ggml's AMX code faults
    on VMs that list AMX without enabling it (native builds leave AMX out)."""
    _binary("llama-bitnet-logits")
    from bitnet.tools.convert import convert_checkpoint
    from bitnet.tools.dummy import make_dummy
    from bitnet.tools.reference import ReferenceModel

    ckpt = make_dummy(tmp_path / "ckpt", preset="tiny", seed=1)
    gguf = tmp_path / "q8-head.gguf"
    convert_checkpoint(ckpt, gguf, outtype="i2_s", embedding_type="q8_0")
    work = tmp_path / "out"
    work.mkdir()
    ids = [(7 * i + 3) % 500 for i in range(100)]
    _, ours = _logits(gguf, ids, work)
    assert np.isfinite(ours).all()
    ref = np.asarray(ReferenceModel.from_gguf(gguf).forward(ids), dtype=np.float32)
    # llama.cpp quantizes the head's activations to Q8_0 (the reference keeps them in float32):
    # ~0.3% of a row's largest |logit|
    row_err = np.abs(ours - ref).max(1) / np.abs(ref).max(1)
    assert row_err.max() < 0.02 and np.median(row_err) < 0.008, row_err
    assert (ours.argmax(1) == ref.argmax(1)).mean() >= 0.95


def test_tokenizer_round_trip(tiny_gguf):
    res = _run([_binary("llama-bitnet-logits"), "-m", tiny_gguf, "-p", "Hello", "--tokenize-only"])
    assert res.returncode == 0, res.stderr
    meta = json.loads(res.stdout)
    assert meta["tokens"] and all(0 <= t < meta["n_vocab"] for t in meta["tokens"])


def test_llama_quantize_refuses_to_write_i2_s(tiny_gguf, tmp_path):
    out = tmp_path / "q.gguf"
    res = _run([_binary("llama-quantize"), "--tensor-type", "attn_q=i2_s", tiny_gguf, out, "q8_0"])
    assert res.returncode != 0
    assert "cannot write i2_s" in res.stdout + res.stderr
