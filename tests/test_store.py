"""The model store: `bitnet pull` from the local fake hub (tests/test_hub.py), then `bitnet list`,
`bitnet run NAME`, `bitnet rm`; `--type auto` measured and cached. No request leaves the machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_hub import FakeHub
from typer.testing import CliRunner

from bitnet.cli.app import app
from bitnet.tools import autotype, store
from bitnet.tools.dummy import make_dummy
from bitnet.tools.errors import InputNotFoundError, UsageError


@pytest.fixture(scope="module")
def llama_ckpt(tmp_path_factory) -> Path:
    return make_dummy(
        tmp_path_factory.mktemp("ll") / "m", "tiny", seed=3, family="llama", hidden=256, ffn=512
    )


@pytest.fixture
def hub(tmp_path, monkeypatch, tiny_packed, llama_ckpt) -> Iterator[FakeHub]:
    """A fake hub with bitnet-2b and an unknown repo, the HF cache and the store in tmp_path."""
    import huggingface_hub.constants as hf_constants

    with FakeHub() as fh:
        fh.add_folder("microsoft/bitnet-b1.58-2B-4T", tiny_packed)
        fh.add_folder("acme/Tiny-Llama-1.58", llama_ckpt)
        monkeypatch.setenv("HF_ENDPOINT", fh.url)
        monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
        monkeypatch.setenv("BITNET_HOME", str(tmp_path / "store"))
        yield fh


def _cli(*args: str, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.stdout, result.stderr)
    return result


def _downloads(fh: FakeHub) -> int:
    return sum(1 for method, path in fh.requests if method == "GET" and "/resolve/" in path)


def test_pull_list_rm(hub, tmp_path):
    _cli("pull", "bitnet-2b", "--type", "i2_s")
    _cli("pull", "acme/Tiny-Llama-1.58", "--type", "tq2_0", "--embedding-type", "q8_0")
    listed = json.loads(_cli("list", "--json").stdout)
    assert [m["name"] for m in listed] == ["acme/tiny-llama-1.58", "bitnet-2b"]
    llama, bitnet = listed
    assert (bitnet["type"], bitnet["family"], bitnet["repo_id"]) == (
        "i2_s", "bitnet-b1.58", "microsoft/bitnet-b1.58-2B-4T")  # fmt: skip
    assert (llama["type"], llama["family"], llama["embedding_type"]) == ("tq2_0", "llama", "q8_0")
    assert bitnet["parameters"] > 0 and bitnet["size"] == Path(bitnet["path"]).stat().st_size
    assert Path(bitnet["path"]).parent.parent == tmp_path / "store"
    assert store.resolve_model("bitnet-2b") == Path(bitnet["path"])
    assert store.resolve_model("microsoft/bitnet-b1.58-2B-4T") == Path(bitnet["path"])
    assert "bitnet-2b" in _cli("list").stdout
    _cli("rm", "bitnet-2b")
    assert [m.name for m in store.list_models()] == ["acme/tiny-llama-1.58"]
    res = _cli("rm", "bitnet-2b", code=3)
    assert "in the store: acme/tiny-llama-1.58" in res.stderr


def test_pull_of_a_stored_model_does_nothing_unless_forced(hub):
    first = store.pull("bitnet-2b", "i2_s")
    n = _downloads(hub)
    mtime = Path(first.model.path).stat().st_mtime_ns
    again = store.pull("bitnet-2b", "tl2")  # a different type changes nothing either
    assert not again.pulled and again.model.type == "i2_s" and _downloads(hub) == n
    assert Path(first.model.path).stat().st_mtime_ns == mtime
    forced = store.pull("bitnet-2b", "f16", force=True)
    assert forced.pulled and forced.model.type == "f16"
    assert [m.type for m in store.list_models()] == ["f16"]


def test_interrupted_pull_leaves_no_half_model(hub, monkeypatch):
    from bitnet.tools import convert

    real = convert.convert_checkpoint

    def interrupted(src, out, *args, **kwargs):
        Path(out).write_bytes(b"GGUF half")  # what a killed conversion leaves behind
        raise KeyboardInterrupt

    monkeypatch.setattr(convert, "convert_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.pull("bitnet-2b", "i2_s")
    assert store.list_models() == []
    assert not any(store.store_dir().iterdir())
    # a partial folder left by a killed process is ignored, then replaced by the next pull
    (store.store_dir() / ".bitnet-2b.partial").mkdir()
    assert store.list_models() == []
    monkeypatch.setattr(convert, "convert_checkpoint", real)
    assert store.pull("bitnet-2b", "i2_s").pulled
    assert [p.name for p in store.store_dir().iterdir()] == ["bitnet-2b"]


def test_unknown_names(hub, tmp_path):
    with pytest.raises(InputNotFoundError, match="store is empty"):
        store.resolve_model("bitnet-2b")
    store.pull("bitnet-2b", "i2_s")
    with pytest.raises(InputNotFoundError, match="in the store: bitnet-2b") as exc:
        store.resolve_model("falcon3-7b")
    assert exc.value.hint == "pull it first: bitnet pull falcon3-7b"
    with pytest.raises(InputNotFoundError, match="does not exist"):
        store.resolve_model(tmp_path / "missing.gguf")
    with pytest.raises(InputNotFoundError, match="neither a known model name") as exc:
        store.pull("not a model")
    assert exc.value.hint.startswith("known names: bitnet-2b, ")
    with pytest.raises(UsageError, match="unknown --type"):
        store.pull("acme/tiny-llama-1.58", "q4_k")
    res = _cli("run", "-m", "nope", "-p", "hi", code=3)
    assert res.stderr.count("error:") == 1 and "in the store: bitnet-2b" in res.stderr
    assert "Traceback" not in res.stderr


def test_run_and_bench_take_a_store_name(hub):
    from native_helpers import binary

    binary("llama-completion"), binary("llama-bench")
    store.pull("bitnet-2b", "i2_s")
    cmd = [sys.executable, "-m", "bitnet.cli.app", "run", "-m", "bitnet-2b", "-p", "Once upon",
           "-n", "8", "--temp", "0", "-t", "2", "-c", "128", "--", "--no-warmup"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, timeout=300, env=os.environ.copy())
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    assert res.stdout.decode().startswith("Once upon") and len(res.stdout.strip()) > 9
    bench = [sys.executable, "-m", "bitnet.cli.app", "bench", "-m", "bitnet-2b", "-p", "0",
             "-n", "4", "-t", "1", "-r", "1", "--no-warmup", "--no-bandwidth",
             "--json"]  # fmt: skip
    res = subprocess.run(bench, capture_output=True, timeout=300, env=os.environ.copy())
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    assert "model.gguf" in res.stdout.decode()


# --- --type auto --------------------------------------------------------------------------------


class CountingTimer:
    """Pretends TL2 is twice as fast as I2_S; counts the shapes it is asked to time."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, qtype: str, m: int, k: int) -> float:
        self.calls.append((qtype, m, k))
        return m * k * (0.5 if qtype == "tl2" else 1.0) * 1e-6


@pytest.fixture(scope="module")
def tl_ckpt(tmp_path_factory) -> Path:
    """Shapes both I2_S and TL2 hold (hidden 256, FFN 512)."""
    return make_dummy(tmp_path_factory.mktemp("tl") / "m", "tiny", seed=1, hidden=256, ffn=512)


def test_auto_type_is_measured_once_then_cached(tl_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(autotype, "lookup_type", lambda: "tl2")
    cache = tmp_path / "autotype.json"
    timer = CountingTimer()
    chosen, reason = autotype.choose_outtype(tl_ckpt, cache, timer)
    assert chosen == "tl2" and "i2_s" in reason and "tl2" in reason
    shapes = {(m, k) for _, m, k in timer.calls}
    assert shapes == {(256, 256), (128, 256), (512, 256), (256, 512)}  # each distinct shape once
    n = len(timer.calls)
    assert autotype.choose_outtype(tl_ckpt, cache, timer) == (chosen, reason)
    assert len(timer.calls) == n  # the second answer came from the cache
    assert json.loads(cache.read_text())


def test_auto_type_keeps_i2_s_when_the_lookup_type_cannot_hold_the_model(tiny_packed, tmp_path):
    timer = CountingTimer()
    chosen, reason = autotype.choose_outtype(tiny_packed, tmp_path / "c.json", timer)
    assert chosen == "i2_s" and "only i2_s" in reason and not timer.calls  # hidden 128: no TL


def test_auto_type_real_measurement(tl_ckpt, tmp_path):
    """The real timer (the C kernels llama.cpp runs) gives a positive cost for both types."""
    pytest.importorskip("ctypes")
    try:
        timer = autotype.ShapeTimer(repeats=2, warmup=1, min_sample_s=0.001)
    except Exception as exc:  # no C compiler for the kernel library
        pytest.skip(f"kernel library unavailable: {exc}")
    chosen, reason = autotype.choose_outtype(tl_ckpt, tmp_path / "c.json", timer)
    assert chosen in ("i2_s", autotype.lookup_type()) and "ms" in reason


def test_pull_auto_records_the_choice(hub, monkeypatch):
    monkeypatch.setattr(autotype, "choose_outtype", lambda folder: ("f16", "measured (test)"))
    result = store.pull("bitnet-2b")
    assert result.model.type == "f16" and result.outtype_reason == "measured (test)"
