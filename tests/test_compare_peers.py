"""benchmarks/compare_peers.py: interleaved passes, drift pass in reverse, failed peers reported."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from bitnet.tools.errors import BuildError

ROOT = Path(__file__).resolve().parent.parent


def _module():
    spec = importlib.util.spec_from_file_location(
        "compare_peers", ROOT / "benchmarks" / "compare_peers.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["compare_peers"] = mod  # dataclasses look the module up while it loads
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


cp = _module()


def _engines(tmp_path: Path) -> list:
    return [cp.Engine(n, tmp_path / f"{n}-bench", tmp_path / f"{n}.gguf") for n in "abc"]


def test_passes_interleave_and_the_drift_pass_runs_in_reverse(tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []

    def runner(cmd: list[str]):
        name = Path(cmd[0]).name.split("-")[0]
        t = cmd[cmd.index("-t") + 1]
        calls.append((name, t))
        if name == "b":
            return [], "llama-bench exited with status 1"
        speed = {"a": 10.0, "c": 20.0}[name] + len(calls)
        return [
            {"n_prompt": 128, "n_gen": 0, "avg_ts": 5 * speed},
            {"n_prompt": 0, "n_gen": 64, "avg_ts": speed},
        ], None

    engines = _engines(tmp_path)
    cells, errors = cp.compare(engines, [1, 2], runner=runner)
    # pass 1 in order, pass 2 reversed; the failed engine is not retried
    assert calls == [("a", "1"), ("a", "2"), ("b", "1"), ("c", "1"), ("c", "2"),
                     ("c", "1"), ("c", "2"), ("a", "1"), ("a", "2")]  # fmt: skip
    assert errors == {"b": "llama-bench exited with status 1"}
    assert cells[("a", "tg64", 1)].passes == [11.0, 18.0]
    assert cells[("c", "pp128", 2)].passes == [5 * 25.0, 5 * 27.0]
    cols, rows = cp.table(engines, cells, [1, 2], 128, 64, {1: 1e9, 2: 2e9},
                          {"a": 1e8, "b": None, "c": None})  # fmt: skip
    assert cols[0] == "engine" and cols[1] == "pp128 1t" and cols[-1] == "tg % bound 2t"
    assert rows[0][3] == "14.5 (11.0/18.0)"
    assert rows[0][5] == "145 %"  # 14.5 t/s × 0.1 GB / 1 GB/s
    assert rows[1][1:] == ["—"] * 6


def test_a_missing_binary_is_an_error_not_a_crash(tmp_path: Path) -> None:
    records, err = cp.run_command(cp.bench_command(_engines(tmp_path)[0], 8, 4, 1, 1))
    assert records == [] and "cannot start" in err


@pytest.mark.native
def test_our_llama_bench_twice(tiny_packed: Path, tmp_path: Path, capsys) -> None:
    from bitnet.tools.build import find_binary
    from bitnet.tools.convert import convert_checkpoint

    try:
        bench = find_binary("llama-bench")
    except BuildError:
        pytest.skip("no llama.cpp build with llama-bench: run python setup_env.py")
    model = tmp_path / "tiny-i2_s.gguf"
    convert_checkpoint(tiny_packed, model, "i2_s")
    args = ["--engine", "one", str(bench), str(model), "--engine", "two", str(bench), str(model)]
    args += ["--engine", "broken", str(tmp_path / "nope"), str(model)]
    rc = cp.main([*args, "-p", "16", "-n", "8", "-t", "1", "-r", "1", "--no-bandwidth"])
    assert rc == 0
    text = capsys.readouterr()
    assert "pp16 1t" in text.out and "CPU:" in text.out
    assert "broken failed" in text.err
    for name in ("one", "two"):
        assert any(line.lstrip("│ ").startswith(name) for line in text.out.splitlines())
