"""`bitnet bench`: llama-bench output parsing, per-test attribution, traffic and bound
arithmetic, the report schema, ratios, views and CLI errors. Behaviour only, never speed.

Most tests drive a fake llama-bench (a Python script replaying a recorded run from
tests/fixtures/bench/) so the process machinery — events, /proc sampling, wait4, failures —
is exercised without the native build; the `native` test runs the real one.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from typer.testing import CliRunner

from bitnet.cli.app import app
from bitnet.tools import energy as E
from bitnet.tools.bandwidth import (
    Bandwidth,
    Traffic,
    bound_tokens_per_second,
    measure_read_bandwidth,
    probe_buffer_bytes,
)
from bitnet.tools.bench import compare, llama_bench, options, stats
from bitnet.tools.bench import report as bench_report
from bitnet.tools.bench import run as bench_run
from bitnet.tools.bench.options import BenchOptions, ModelSpec
from bitnet.tools.bench.run import run_bench
from bitnet.tools.constants import GGMLType, GGUFValueType
from bitnet.tools.errors import BuildError, InputNotFoundError, UsageError
from bitnet.tools.gguf import GGUFReader, GGUFWriter

FIXTURES = Path(__file__).parent / "fixtures" / "bench"
RECORDS = (FIXTURES / "llama-bench.jsonl").read_text()
PROGRESS = (FIXTURES / "llama-bench-progress.txt").read_text().splitlines()
runner = CliRunner()


# --- a GGUF with known sizes ------------------------------------------------------------------

ARCH = "bitnet-b1.58"
EMBD = (100, 64)  # vocab × hidden, F16: 12800 bytes, one row 128 bytes
MAT = (64, 64)  # F32: 16384 bytes
KV_POS = 2 * 2 * (16 + 16) * 2  # layers × kv heads × (k + v head dim) × f16 = 256 bytes


def _gguf(path: Path, tied: bool = True) -> Path:
    w = GGUFWriter(path)
    w.add_kv("general.architecture", ARCH)
    for key, value in (("block_count", 2), ("embedding_length", 64),
                       ("attention.head_count", 4), ("attention.head_count_kv", 2)):  # fmt: skip
        w.add_kv(f"{ARCH}.{key}", value, GGUFValueType.UINT32)
    w.add_tensor("token_embd.weight", EMBD, GGMLType.F16)
    w.add_tensor("blk.0.attn_q.weight", MAT, GGMLType.F32)
    w.add_tensor("blk.1.attn_q.weight", MAT, GGMLType.F32)
    w.add_tensor("output_norm.weight", (64,), GGMLType.F32)
    if not tied:
        w.add_tensor("output.weight", EMBD, GGMLType.F16)
    sizes = {"token_embd.weight": 12800, "output.weight": 12800, "output_norm.weight": 256}
    w.write(lambda name: np.zeros(sizes.get(name, 16384), np.uint8))
    return path


def test_traffic_tied_head_reads_the_whole_embedding(tmp_path: Path) -> None:
    t = Traffic.from_gguf(GGUFReader(_gguf(tmp_path / "m.gguf")))
    assert t.tied_head and t.head_bytes == 12800 and t.embedding_row_bytes == 128
    assert t.weight_bytes == 12800 + 2 * 16384 + 256
    assert t.kv_bytes_per_position == KV_POS


def test_traffic_untied_reads_one_embedding_row(tmp_path: Path) -> None:
    t = Traffic.from_gguf(GGUFReader(_gguf(tmp_path / "m.gguf", tied=False)))
    assert not t.tied_head and t.head_bytes == 12800
    assert t.weight_bytes == 128 + 2 * 16384 + 256 + 12800


def test_bytes_per_token_and_bound_arithmetic(tmp_path: Path) -> None:
    t = Traffic.from_gguf(GGUFReader(_gguf(tmp_path / "m.gguf")))
    w = t.weight_bytes
    # token j of 4 after 10 filled positions reads 11+j positions: mean 12.5
    assert t.decode_bytes_per_token(depth=10, n_gen=4) == w + KV_POS * 12.5
    # a 600-token prompt in 512-token micro-batches: weights twice, KV read to each batch's end
    assert t.run_bytes(600, 0) == (w + KV_POS * 512 * 2) + (w + KV_POS * 600 + KV_POS * 88)
    assert t.run_bytes(0, 2, depth=5) == (w + KV_POS * 6 + KV_POS) + (w + KV_POS * 7 + KV_POS)
    assert bound_tokens_per_second(1e9, 1e8) == 10.0
    assert bound_tokens_per_second(1e9, 0) == float("inf")


def test_bound_percent_is_tg_over_bandwidth_bound(tmp_path: Path) -> None:
    info = options.model_info(ModelSpec(_gguf(tmp_path / "m.gguf")))
    bw = Bandwidth(1, 1e9, 1 << 28, 3, None)
    per_token = info.traffic.decode_bytes_per_token(0, 8)
    rec = {"n_prompt": 0, "n_gen": 8, "n_depth": 0}
    bound = stats.test_bound(rec, info, bw, mean_ts=100.0)
    assert bound["tokens_per_second"] == pytest.approx(1e9 / per_token)
    assert bound["percent"] == pytest.approx(100 * 100.0 / (1e9 / per_token))
    assert stats.test_bound({"n_prompt": 16, "n_gen": 0}, info, bw, 1.0) is None
    assert stats.test_bound(rec, info, None, 1.0)["percent"] is None


def test_probe_buffer_size_rules() -> None:
    assert probe_buffer_bytes(480 << 20, 24 << 30) == 1920 << 20  # 4x L3
    assert probe_buffer_bytes(8 << 20, 24 << 30) == 256 << 20  # at least 256 MiB
    assert probe_buffer_bytes(2 << 30, 64 << 30) == 4 << 30  # at most 4 GiB
    assert probe_buffer_bytes(480 << 20, 1 << 30) == 256 << 20  # at most 1/4 of free memory


def test_bandwidth_probe_runs_with_threads() -> None:
    bw = measure_read_bandwidth(threads=2, nbytes=4 << 20, passes=1)
    assert bw.threads == 2 and bw.buffer_bytes == 4 << 20 and bw.bytes_per_second > 0


# --- llama-bench output and events ------------------------------------------------------------


def test_parse_recorded_jsonl_and_json_array() -> None:
    recs = llama_bench.parse_llama_bench_output(RECORDS)
    assert [(r["n_prompt"], r["n_gen"], r["n_depth"]) for r in recs] == [
        (16, 0, 0), (0, 8, 0), (16, 0, 32), (0, 8, 32)
    ]  # fmt: skip
    assert all(len(r["samples_ts"]) == 2 and len(r["samples_ns"]) == 2 for r in recs)
    assert llama_bench.parse_llama_bench_output(json.dumps(recs)) == recs
    assert llama_bench.parse_llama_bench_output("") == []
    from bitnet.tools.errors import RuntimeFailure

    with pytest.raises(RuntimeFailure):
        llama_bench.parse_llama_bench_output("[{not json")


def test_parse_progress_lines() -> None:
    phases = [llama_bench.parse_progress(line) for line in PROGRESS]
    assert phases[0] == (1, 4, "starting")
    assert phases[1] == (1, 4, "warmup")
    assert phases[2] == (1, 4, "prompt")
    assert (3, 4, "depth") in phases and (4, 4, "generation") in phases
    assert llama_bench.parse_progress("llama_model_loader: loaded meta data") is None


def test_stats_and_names() -> None:
    s = stats.stats([10.0, 12.0, 11.0, 30.0])
    assert (s["mean"], s["median"], s["min"], s["max"]) == (15.75, 11.5, 10.0, 30.0)
    assert s["stddev"] == pytest.approx(9.5351, rel=1e-4)
    assert stats.stats([5.0])["stddev"] == 0.0
    assert stats.test_name(128, 0, 0) == "pp128"
    assert stats.test_name(0, 64, 512) == "tg64 @ d512"
    assert options.parse_int_list("1, 2,2", "-t") == [1, 2]
    with pytest.raises(UsageError, match="-t"):
        options.parse_int_list("1,x", "-t")


def _events(meter: E.RaplMeter | None) -> list[llama_bench.Event]:
    """Test 1: two timed prompt runs of 1 s each; test 2 has a depth fill between its runs."""
    ev = [
        (0.0, 1, "starting", 0, 0.0),
        (0.5, 1, "warmup", 1_000_000, 0.5),
        (1.0, 1, "prompt", 2_000_000, 1.0),  # timed: 1 s, 2 J, 2 CPU-s
        (2.0, 1, "prompt", 4_000_000, 3.0),  # timed: 1 s, 2 J, 2 CPU-s
        (3.0, 1, "result", 6_000_000, 5.0),
        (3.5, 2, "starting", 7_000_000, 5.5),
        (4.0, 2, "depth", 8_000_000, 6.0),  # untimed
        (6.0, 2, "generation", 18_000_000, 8.0),  # timed: 0.5 s, 1 J, 1 CPU-s
        (6.5, 2, "depth", 19_000_000, 9.0),
        (7.0, 2, "generation", 20_000_000, 9.5),  # timed: 1 s, 3 J, 2 CPU-s
        (8.0, 2, "result", 23_000_000, 11.5),
    ]
    return [
        llama_bench.Event(t, i, ph, {"package-0": uj} if meter else None, cpu)
        for t, i, ph, uj, cpu in ev
    ]


def test_timed_windows_attribute_only_timed_runs(tmp_path: Path) -> None:
    root = tmp_path / "pc"
    (root / "intel-rapl:0").mkdir(parents=True)
    for f, v in (("name", "package-0"), ("energy_uj", "0"), ("max_energy_range_uj", "1000")):
        (root / "intel-rapl:0" / f).write_text(v)
    meter = E.RaplMeter([E.RaplDomain("package-0", "package-0", root / "intel-rapl:0", 10**12)])
    w = stats.timed_windows(_events(meter), meter)
    assert set(w) == {1, 2}
    assert (w[1].seconds, w[1].cpu_seconds, w[1].joules) == (2.0, 4.0, {"package-0": 4.0})
    assert (w[2].seconds, w[2].cpu_seconds, w[2].joules) == (1.5, 3.0, {"package-0": 4.0})
    w = stats.timed_windows(_events(None), None)
    assert w[2].joules is None and w[2].cpu_seconds == 3.0


def _info(tmp_path: Path) -> options.ModelInfo:
    return options.model_info(ModelSpec(_gguf(tmp_path / "m.gguf")))


def test_estimated_energy_of_a_test(tmp_path: Path) -> None:
    info = _info(tmp_path)
    rec = {"n_prompt": 16, "n_gen": 0, "n_depth": 0, "n_threads": 2,
           "samples_ns": [1_000_000_000, 1_000_000_000]}  # fmt: skip
    model = E.EnergyModel("estimated", cpu_watts=5.0, dram_pj_per_byte=100.0)
    e = stats.test_energy(rec, stats.Window(seconds=2.0, cpu_seconds=3.0), info, model)
    dram = 2 * info.traffic.run_bytes(16, 0)
    assert e["method"] == "estimated" and e["cpu_seconds_source"] == "proc"
    assert e["joules"] == pytest.approx(3.0 * 5.0 + dram * 100e-12)
    assert e["joules_per_token"] == pytest.approx(e["joules"] / 32)
    # a window too short for /proc's 10 ms ticks: every thread counted busy for the timed part
    e = stats.test_energy(rec, stats.Window(seconds=0.2, cpu_seconds=0.0), info, model)
    assert e["cpu_seconds_source"] == "threads-x-wall" and e["cpu_seconds"] == 2 * 2.0


def test_measured_energy_of_a_test(tmp_path: Path) -> None:
    rec = {"n_prompt": 0, "n_gen": 8, "n_depth": 0, "n_threads": 1, "samples_ns": [1, 1]}
    model = E.EnergyModel("measured", domains=["package-0", "dram"])
    window = stats.Window(seconds=1.0, cpu_seconds=1.0, joules={"package-0": 3.0, "dram": 1.0})
    e = stats.test_energy(rec, window, _info(tmp_path), model)
    assert e["method"] == "measured" and e["joules"] == 4.0
    assert e["joules_per_token"] == 4.0 / 16 and e["domains"] == {"package-0": 3.0, "dram": 1.0}


# --- a fake llama-bench -----------------------------------------------------------------------

FAKE = """#!{python}
import json, os, signal, sys, time
from pathlib import Path
if {crash} and "--repack" not in sys.argv:
    os.kill(os.getpid(), signal.SIGSEGV)
if {fail}:
    print("llama_model_load: error loading model: tensor data is not within file bounds",
          file=sys.stderr)
    sys.exit(1)
fix = Path({fixtures!r})
energy = {energy!r}
records = [l for l in (fix / "llama-bench.jsonl").read_text().splitlines() if l.strip()]
progress = (fix / "llama-bench-progress.txt").read_text().splitlines()
threads = int(sys.argv[sys.argv.index("-t") + 1])

def tick():
    if energy:
        p = Path(energy)
        tmp = p.with_name("energy_uj.tmp")
        tmp.write_text(str(int(p.read_text()) + 1000000))
        os.replace(tmp, p)  # sysfs reads never see a half-written value

for k, line in enumerate(records, start=1):
    for p in progress:
        if p.startswith(f"llama-bench: benchmark {{k}}/"):
            tick()
            print(p, file=sys.stderr, flush=True)
            time.sleep(0.002)
    rec = json.loads(line)
    rec["n_threads"] = threads
    tick()
    print(json.dumps(rec), flush=True)
"""


def _fake(tmp_path: Path, crash: bool = False, fail: bool = False, energy: str = "") -> Path:
    path = tmp_path / "llama-bench"
    path.write_text(
        FAKE.format(
            python=sys.executable, crash=crash, fail=fail, energy=energy, fixtures=str(FIXTURES)
        )  # fmt: skip
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def fake_bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Install a fake llama-bench; returns a function to re-install a variant."""

    def install(**kw) -> Path:
        d = tmp_path / f"fake-{len(list(tmp_path.glob('fake-*')))}"
        d.mkdir()
        exe = _fake(d, **kw)
        monkeypatch.setattr(bench_run, "find_binary", lambda name, cpu=None: exe)
        return exe

    monkeypatch.setattr(bench_run, "busy_cpus", lambda interval=0.3: None)
    install()
    return install


def _validate(report: dict) -> None:
    """Validate a report against the schema file the package ships (and docs/bench.md cites)."""
    jsonschema.validate(report, bench_report.report_schema())


def _opts(**kw) -> BenchOptions:
    base = dict(n_prompt=[16], n_gen=[8], depth=[0, 32], threads=[1, 2], repetitions=2,
                energy="estimate", bandwidth_probe=False)  # fmt: skip
    base.update(kw)
    return BenchOptions(**base)


def test_report_validates_against_the_documented_schema(tmp_path: Path, fake_bench) -> None:
    model = _gguf(tmp_path / "m.gguf")
    seen: list[tuple[int, int]] = []
    report = run_bench([ModelSpec(model)], _opts(), progress=lambda d, t, _: seen.append((d, t)))
    _validate(report)
    json.dumps(report)  # plain JSON, nothing left over from the run
    assert report["energy_model"]["method"] == "estimated"
    assert len(report["runs"]) == 2 and len(report["results"]) == 8
    assert {r["test"] for r in report["results"]} == {"pp16", "tg8", "pp16 @ d32", "tg8 @ d32"}
    first = llama_bench.parse_llama_bench_output(RECORDS)[0]
    r0 = report["results"][0]
    assert r0["tokens_per_second"]["samples"] == first["samples_ts"]
    assert r0["energy"]["joules_per_token"] == pytest.approx(r0["energy"]["joules"] / 32)
    tg = next(r for r in report["results"] if r["test"] == "tg8")
    assert tg["bound"]["bytes_per_token"] > 0 and tg["bound"]["percent"] is None
    assert all(run["peak_rss_bytes"] > 0 for run in report["runs"])
    assert seen and seen[-1] == (16, 16)  # 2 runs × 4 tests × 2 repetitions


def test_the_schema_file_is_a_valid_schema_of_this_report_version() -> None:
    schema = bench_report.report_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert bench_report.schema_id() == "bitnet-bench/1"


def test_the_schema_rejects_bad_documents(tmp_path: Path, fake_bench) -> None:
    report = run_bench([ModelSpec(_gguf(tmp_path / "m.gguf"))], _opts(threads=[1]))
    _validate(report)
    for bad in ({**report, "schema": "nope"}, {k: v for k, v in report.items() if k != "results"},
                {**report, "results": [{**report["results"][0], "extra": 1}]},
                {**report, "runs": [{**report["runs"][0], "threads": True}]}):  # fmt: skip
        with pytest.raises(jsonschema.ValidationError):
            _validate(bad)


def test_measured_energy_through_a_run(tmp_path: Path, fake_bench) -> None:
    root = tmp_path / "powercap"
    (root / "intel-rapl:0").mkdir(parents=True)
    for f, v in (("name", "package-0"), ("energy_uj", "0"), ("max_energy_range_uj", "10000000")):
        (root / "intel-rapl:0" / f).write_text(v)
    fake_bench(energy=str(root / "intel-rapl:0" / "energy_uj"))
    opts = _opts(threads=[1], energy="auto", powercap_root=root)
    report = run_bench([ModelSpec(_gguf(tmp_path / "m.gguf"))], opts)
    assert report["energy_model"]["method"] == "measured"
    _validate(report)
    for r in report["results"]:
        assert r["energy"]["method"] == "measured" and r["energy"]["joules"] > 0


def test_counters_that_never_move_are_not_a_measurement(tmp_path: Path, fake_bench) -> None:
    root = tmp_path / "powercap"
    (root / "intel-rapl:0").mkdir(parents=True)
    for f, v in (("name", "package-0"), ("energy_uj", "5"), ("max_energy_range_uj", "100")):
        (root / "intel-rapl:0" / f).write_text(v)
    opts = _opts(threads=[1], energy="auto", powercap_root=root)
    report = run_bench([ModelSpec(_gguf(tmp_path / "m.gguf"))], opts)
    assert report["energy_model"]["method"] == "estimated"
    assert all(r["energy"]["method"] == "estimated" for r in report["results"])
    assert any("did not advance" in n for n in report["notes"])


def test_a_failed_run_is_recorded_and_the_rest_goes_on(tmp_path: Path, fake_bench) -> None:
    fake_bench(fail=True)
    report = run_bench([ModelSpec(_gguf(tmp_path / "m.gguf"))], _opts(threads=[1]))
    assert report["results"] == [] and len(report["failures"]) == 1
    assert "tensor data is not within file bounds" in report["failures"][0]["error"]
    _validate(report)
    err = bench_run.failure_error(report)
    assert err is not None and "1 of 1 llama-bench runs failed" in str(err)


def test_a_crash_is_retried_without_repack(tmp_path: Path, fake_bench) -> None:
    fake_bench(crash=True)
    report = run_bench([ModelSpec(_gguf(tmp_path / "m.gguf"))], _opts(threads=[1]))
    assert not report["failures"] and len(report["results"]) == 4
    assert report["runs"][0]["command"][-2:] == ["--repack", "0"]
    assert any("SIGSEGV" in n and "--repack 0" in n for n in report["notes"])


def test_ratios_against_a_baseline(tmp_path: Path, fake_bench) -> None:
    a = _gguf(tmp_path / "a.gguf")
    b = _gguf(tmp_path / "b.gguf", tied=False)
    opts = _opts(threads=[1], depth=[0])
    report = run_bench([ModelSpec(a), ModelSpec(b)], opts, baseline="b")
    for r in report["results"]:
        v = r["vs_baseline"]
        assert v["baseline"] == "b"
        if r["name"] == "b":
            assert v["speed"] == 1.0 and v["energy_per_token"] == 1.0
    a_pp = next(r for r in report["results"] if r["name"] == "a" and r["test"] == "pp16")
    assert a_pp["vs_baseline"]["file_size"] == pytest.approx(
        report["models"][0]["file_size"] / report["models"][1]["file_size"]
    )
    with pytest.raises(UsageError, match="--baseline"):
        run_bench([ModelSpec(a)], opts, baseline="q4_0")


def test_views_label_the_estimate(tmp_path: Path, fake_bench) -> None:
    report = run_bench([ModelSpec(_gguf(tmp_path / "m.gguf"))], _opts(threads=[1]))
    cols, rows = bench_report.table_rows(report)
    assert "J/token (estimated)" in cols
    assert all(row[cols.index("J/token (estimated)")].endswith("est.") for row in rows)
    path = bench_report.write_csv(report, tmp_path / "r.csv")
    lines = path.read_text().splitlines()
    assert lines[0].split(",") == list(bench_report.CSV_COLUMNS) and len(lines) == 1 + 4
    assert ",estimated," in lines[1]
    with pytest.raises(Exception, match="already exists"):
        bench_report.write_csv(report, path)


def test_plot_is_written_and_labelled(tmp_path: Path, fake_bench) -> None:
    pytest.importorskip("matplotlib")
    report = run_bench([ModelSpec(_gguf(tmp_path / "m.gguf"))], _opts())
    png = bench_report.write_plot(report, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_matplotlib_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UsageError, match="matplotlib") as info:
        bench_report.require_matplotlib()
    assert "bitnet[plot]" in (info.value.hint or "")


# --- --compare ----------------------------------------------------------------------------------


def test_compare_converts_skips_and_reuses(tiny_packed: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    specs, skipped = compare.prepare_compare(tiny_packed, ["i2_s", "tq2_0", "tl2", "f16"], cache)
    assert [s.name for s in specs] == ["i2_s", "f16"]
    reasons = {s["type"]: s["reason"] for s in skipped}
    assert set(reasons) == {"tq2_0", "tl2"}
    assert "TQ2_0" in reasons["tq2_0"] or "tq2_0" in reasons["tq2_0"].lower()
    assert "TL2" in reasons["tl2"]
    mtime = specs[0].path.stat().st_mtime_ns
    again, _ = compare.prepare_compare(tiny_packed, ["i2_s"], cache)
    assert again[0].path.stat().st_mtime_ns == mtime  # converted once, reused
    with pytest.raises(UsageError, match="q9"):
        compare.prepare_compare(tiny_packed, ["q9"], cache)
    with pytest.raises(InputNotFoundError):
        compare.prepare_compare(tmp_path / "nope", ["i2_s"], cache)


def test_compare_cache_key_follows_the_checkpoint(tiny_packed: Path, tmp_path: Path) -> None:
    a = compare.compare_cache_dir(tiny_packed, tmp_path)
    assert a == compare.compare_cache_dir(tiny_packed, tmp_path)
    assert a.parent == tmp_path and a.name.startswith(tiny_packed.name)


# --- the command ----------------------------------------------------------------------------------


def _one_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("error: ") and len([x for x in lines if x.startswith("error")]) == 1
    return lines[0]


def test_cli_missing_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BITNET_DEBUG", raising=False)
    out_csv = tmp_path / "r.csv"
    result = runner.invoke(app, ["bench", "-m", str(tmp_path / "nope.gguf"), "--csv", str(out_csv)])
    assert result.exit_code == 3
    assert "nope.gguf does not exist" in _one_error(result)
    assert not out_csv.exists()


def test_cli_bad_option_values(tmp_path: Path) -> None:
    model = _gguf(tmp_path / "m.gguf")
    result = runner.invoke(app, ["bench", "-m", str(model), "-t", "1,two"])
    assert result.exit_code == 2 and "-t" in _one_error(result)
    result = runner.invoke(app, ["bench", "-m", str(model), "-p", "0", "-n", "0"])
    assert result.exit_code == 2 and "nothing to measure" in _one_error(result)
    result = runner.invoke(app, ["bench"])
    assert result.exit_code == 2 and "no model" in _one_error(result)


def test_cli_refuses_existing_outputs_before_running(tmp_path: Path, fake_bench) -> None:
    model = _gguf(tmp_path / "m.gguf")
    existing = tmp_path / "r.csv"
    existing.write_text("keep me")
    result = runner.invoke(app, ["bench", "-m", str(model), "--csv", str(existing)])
    assert result.exit_code == 7 and "already exists" in _one_error(result)
    assert existing.read_text() == "keep me"


def test_cli_plot_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    model = _gguf(tmp_path / "m.gguf")
    result = runner.invoke(app, ["bench", "-m", str(model), "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 2 and "matplotlib" in _one_error(result)


def test_cli_missing_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str, cpu: str | None = None) -> Path:
        raise BuildError(f"{name} is not built (looked in /x).", hint="run: python setup_env.py")

    monkeypatch.setattr(bench_run, "find_binary", missing)
    args = ["bench", "-m", str(_gguf(tmp_path / "m.gguf")), "-t", "1", "--no-bandwidth"]
    result = runner.invoke(app, args)
    assert result.exit_code == 10 and "llama-bench is not built" in _one_error(result)


def test_cli_json_run(tmp_path: Path, fake_bench) -> None:
    model = _gguf(tmp_path / "m.gguf")
    args = ["bench", "-m", str(model), "-p", "16", "-n", "8", "-d", "0,32", "-t", "1", "-r", "2",
            "--no-bandwidth", "--energy", "estimate", "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    _validate(report)
    assert "ESTIMATED" in result.stderr


def test_cli_default_threads_are_measured_and_named(
    tmp_path: Path, fake_bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bitnet.tools import threads

    monkeypatch.setattr(
        threads, "measure_llama_bench", lambda path, t: (10.0 + t, 1.0)
    )  # 2 is fastest
    monkeypatch.setattr(threads, "physical_cores", lambda: 2)
    monkeypatch.setattr(threads, "cache_file", lambda: tmp_path / "threads.json")
    model = _gguf(tmp_path / "m.gguf")
    args = ["bench", "-m", str(model), "-p", "16", "-n", "8", "-r", "2", "--no-bandwidth",
            "--energy", "estimate", "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert sorted({r["threads"] for r in json.loads(result.stdout)["runs"]}) == [1, 2]
    assert "threads: 2 thread(s), measured fastest here" in result.stderr
    result = runner.invoke(app, args)
    assert "threads: 2 thread(s), cached fastest here" in result.stderr


def test_cli_table_run(tmp_path: Path, fake_bench) -> None:
    model = _gguf(tmp_path / "m.gguf")
    args = ["bench", "-m", str(model), "-t", "1", "-r", "2", "--no-bandwidth", "--energy",
            "estimate"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    header = result.stdout.splitlines()[1].split("\t")
    assert header[:6] == ["model", "type", "size", "bpw", "threads", "test"]
    assert "J/token (estimated)" in header and "peak RSS" in header


# --- the real llama-bench -------------------------------------------------------------------------


@pytest.mark.native
def test_native_bench_smoke(tiny_packed: Path, tmp_path: Path) -> None:
    from bitnet.tools.build import find_binary
    from bitnet.tools.convert import convert_checkpoint

    try:
        find_binary("llama-bench")
    except BuildError:
        pytest.skip("no llama.cpp build with llama-bench: run python setup_env.py")
    model = tmp_path / "tiny-i2_s.gguf"
    convert_checkpoint(tiny_packed, model, "i2_s")
    opts = BenchOptions(n_prompt=[16], n_gen=[8], threads=[1], repetitions=1,
                          bandwidth_probe=False)  # fmt: skip
    report = run_bench([ModelSpec(model)], opts)
    _validate(report)
    assert not report["failures"]
    assert [r["test"] for r in report["results"]] == ["pp16", "tg8"]
    for r in report["results"]:
        assert r["tokens_per_second"]["mean"] > 0 and r["repetitions"] == 1
        assert r["energy"]["joules_per_token"] > 0
    # the child's own peak (VmHWM), not this test process's (which ru_maxrss would include)
    assert 0 < report["runs"][0]["peak_rss_bytes"] < 1 << 30
    assert report["llama_bench"]["build_commit"]
    # the SIMD path of each kernel family, read from the build itself
    kernels = report["llama_bench"]["kernels"]
    assert set(kernels) == {"I2_S", "F16", "TL"} and all(kernels.values())
    # --compare's q4_0 comes from llama-quantize on the f16 conversion
    specs, _ = compare.prepare_compare(tiny_packed, ["q4_0"], tmp_path / "c")
    assert GGUFReader(specs[0].path).tensors["blk.0.attn_q.weight"].type_id == GGMLType.Q4_0


def test_docs_describe_every_report_field() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "bench.md").read_text()
    for key in bench_report.report_schema()["properties"]:
        assert f"`{key}" in doc, key
    assert "CSV_COLUMNS" in doc and "--cpu-watts" in doc and "Horowitz" in doc


def test_a_rebuild_during_the_run_is_noted(tmp_path: Path, fake_bench, monkeypatch) -> None:
    stamps = iter([(1, 1), (2, 1), (2, 1), (2, 1)])
    monkeypatch.setattr(bench_run, "_binary_stamp", lambda path: next(stamps))
    report = run_bench([ModelSpec(_gguf(tmp_path / "m.gguf"))], _opts())
    assert any("was rebuilt while the benchmark ran" in n for n in report["notes"])
