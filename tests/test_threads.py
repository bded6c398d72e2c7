"""tools/threads.py: the default thread count is measured once, cached, re-measured on demand;
and `bitnet run` takes it (serve, chat, load: in their own test files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from native_helpers import binary

from bitnet.tools import threads as T


def _model(tmp_path: Path, size: int = 1000) -> Path:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"\0" * size)
    return path


def test_physical_cores_counts_core_ids_not_smt_siblings(tmp_path: Path) -> None:
    for cpu, (pkg, core) in enumerate([(0, 0), (0, 0), (0, 1), (0, 1), (1, 0)]):
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text(f"{pkg}\n")
        (topo / "core_id").write_text(f"{core}\n")
    assert T.physical_cores(tmp_path) == 3
    assert T.candidates(3, 6) == [3, 2, 6]
    assert T.candidates(1, 1) == [1]


def test_measured_once_then_cached_then_remeasured(tmp_path: Path) -> None:
    model = _model(tmp_path)
    calls: list[int] = []
    speeds = {4: 10.0, 3: 12.0, 8: 9.0}

    def measure(path: Path, t: int) -> tuple[float, float]:
        calls.append(t)
        return speeds[t], 100.0 / t  # prompts: 3 threads fastest of the three

    kw = dict(cache_dir=tmp_path, measure=measure, physical=4, logical=8)
    first = T.choose_threads(model, **kw)
    assert (first.threads, first.prompt, first.source) == (3, 3, "measured")
    assert calls == [4, 3, 8]
    assert (
        first.describe() == "3 thread(s), measured fastest here (tg t/s: 3t 12.0, 4t 10.0, 8t 9.0)"
    )
    assert first.describe(prompt=True).endswith("; prompts: 3 (pp t/s: 3t 33.3, 4t 25.0, 8t 12.5)")
    again = T.choose_threads(model, **kw)
    assert (again.threads, again.source, again.figures) == (3, "cached", speeds)
    assert calls == [4, 3, 8]  # no new measurement
    speeds[4] = 20.0
    redo = T.choose_threads(model, remeasure=True, **kw)
    assert (redo.threads, redo.source) == (4, "measured")
    data = json.loads((tmp_path / T.CACHE_NAME).read_text())
    assert [v["threads"] for v in data.values()] == [4]
    # a model of another size class is measured on its own
    (tmp_path / "big").mkdir()
    other = T.choose_threads(_model(tmp_path / "big", 1 << 20), **kw)
    assert other.source == "measured"
    assert len(json.loads((tmp_path / T.CACHE_NAME).read_text())) == 2


def test_nothing_measurable_falls_back_to_physical_cores(tmp_path: Path) -> None:
    def broken(path: Path, t: int) -> tuple[float, float]:
        raise RuntimeError("no build")

    choice = T.choose_threads(_model(tmp_path), tmp_path, measure=broken, physical=2, logical=2)
    assert (choice.threads, choice.prompt, choice.source) == (2, 2, "physical cores")
    assert not (tmp_path / T.CACHE_NAME).exists()


def test_known_threads_never_measures(tmp_path: Path, monkeypatch) -> None:
    """`bitnet.load`'s default: the cached figure, else the physical cores."""
    model = _model(tmp_path)
    monkeypatch.setattr(T, "physical_cores", lambda: 3)
    monkeypatch.setattr(T, "measure_llama_bench", _no_measurement)
    first = T.known_threads(model, tmp_path)
    assert (first.threads, first.prompt, first.source) == (3, 3, "physical cores")
    assert first.describe(prompt=True).endswith("physical cores (not measured); prompts: 3")
    T.choose_threads(model, tmp_path, measure=lambda p, t: (2.0 if t == 2 else 1.0, 9 - abs(t - 3)))
    cached = T.known_threads(model, tmp_path)
    assert (cached.threads, cached.prompt, cached.source) == (2, 3, "cached")
    for broken in ({"threads": "x"}, {"threads": 2, "figures": {"2": 1.0}}):  # bad, or older
        (tmp_path / T.CACHE_NAME).write_text(json.dumps({cached.key: broken}))
        assert T.cached_choice(model, tmp_path) is None


def test_threads_given_after_the_double_dash_are_seen() -> None:
    assert T.gives_threads(["-t", "3"]) and T.gives_threads(["--threads=3"])
    assert T.gives_threads(["--threads", "3"])
    assert not T.gives_threads(["-tb", "3", "--threads-batch", "2", "-c", "64"])


def _no_measurement(path: Path, t: int) -> tuple[float, float]:
    raise AssertionError("measured")


def test_run_takes_the_measured_decode_and_prompt_counts(
    small_gguf: Path, fake_threads: list, monkeypatch
) -> None:
    from typer.testing import CliRunner

    from bitnet.cli.app import app
    from bitnet.tools import runtime

    seen: list[runtime.GenerationOptions] = []
    monkeypatch.setattr(runtime, "generate", lambda path, prompt, opts, reader: seen.append(opts))
    monkeypatch.setattr(runtime, "find_binary", lambda name: Path("/opt") / name)
    res = CliRunner().invoke(app, ["run", "-m", str(small_gguf), "-p", "hi"])
    assert res.exit_code == 0, res.stderr
    assert "threads: 1 thread(s), measured fastest here" in res.stderr
    assert "prompts: 2 (pp t/s: 1t 49.0, 2t 50.0" in res.stderr
    cmd = runtime.completion_command(small_gguf, "hi", seen[-1])
    assert cmd[cmd.index("-t") + 1 :][:4] == ["1", "-tb", "2", "-no-cnv"]
    measured = len(fake_threads)
    for given in (["-t", "3"], ["--", "--threads", "3"]):  # no measurement, llama.cpp's -tb
        res = CliRunner().invoke(app, ["run", "-m", str(small_gguf), "-p", "hi", *given])
        assert res.exit_code == 0 and "threads:" not in res.stderr
        assert "-tb" not in runtime.completion_command(small_gguf, "hi", seen[-1])
    assert len(fake_threads) == measured


@pytest.mark.native
def test_llama_bench_gives_decode_and_prompt_speeds(tiny_packed: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from bitnet.cli.app import app

    binary("llama-bench")
    gguf = tmp_path / "tiny.gguf"
    assert CliRunner().invoke(app, ["convert", str(tiny_packed), "-o", str(gguf)]).exit_code == 0
    tg, pp = T.measure_llama_bench(gguf, 1)
    assert tg > 0 and pp > 0
