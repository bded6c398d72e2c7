"""TL kernels follow the model: the shape registry, `bitnet convert --outtype tl*` rebuilding only
when a build lacks the model's shapes, and a clear error before llama.cpp would abort on one.

Nothing is compiled here: `run_build` is replaced by a recorder that writes the stamp a real
build would (tests/test_tl_e2e.py runs the real kernels)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bitnet.cli.app import app
from bitnet.tools import build as B
from bitnet.tools import codegen
from bitnet.tools.convert import convert_checkpoint
from bitnet.tools.dummy import make_dummy
from bitnet.tools.errors import BuildError

FAKE_TC = B.Toolchain(
    cmake="cmake", cc="cc", cxx="c++", generator="Ninja", patch=("patch", "-p1"), ccache=None
)
ODD = (384, 384)  # a shape of the hidden-384 dummy that the committed table does not serve


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory) -> dict[str, Path]:
    """A hidden-384 tiny model as TL2, TL1 and I2_S GGUFs."""
    tmp = tmp_path_factory.mktemp("tl-build")
    ckpt = make_dummy(tmp / "ckpt", preset="tiny", hidden=384, ffn=768, seed=0)
    out = {"hf": ckpt}
    for qtype in ("tl2", "tl1", "i2_s"):
        out[qtype] = tmp / f"odd-{qtype}.gguf"
        convert_checkpoint(ckpt, out[qtype], outtype=qtype)
    return out


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty build cache; builds are recorded, not run."""
    c = tmp_path / "cache"
    monkeypatch.setenv("BITNET_CACHE", str(c))
    monkeypatch.setattr(B, "find_toolchain", lambda *a, **k: FAKE_TC)
    return c


@pytest.fixture
def builds(monkeypatch) -> list[B.BuildPlan]:
    """Replace run_build: record the plan and write the binaries and stamp a build leaves."""
    done: list[B.BuildPlan] = []

    def fake_run_build(plan: B.BuildPlan, progress=None) -> B.BuildResult:
        if not plan.up_to_date:
            done.append(plan)
            plan.bin_dir.mkdir(parents=True, exist_ok=True)
            for t in B.TARGETS:
                (plan.bin_dir / t).write_text("")
            stamp = {"stamp": plan.stamp, "cpu": plan.options.cpu,
                     "tl_shapes": B._tl_shapes_of(plan)}  # fmt: skip
            plan.stamp_file.write_text(json.dumps(stamp))
        return B.BuildResult(plan.bin_dir, not plan.up_to_date, 0.0)

    monkeypatch.setattr(B, "run_build", fake_run_build)
    return done


def _keys(entries) -> set[tuple[str, int, int]]:
    return {(e.qtype, e.M, e.K) for e in entries}


def _served(build_dir: Path) -> set[tuple[str, int, int]]:
    """(type, M, K) of the entries a build serves (served_tl_shapes gives them with tiles)."""
    return {row[:3] for row in B.served_tl_shapes(build_dir)}


# --- registry -------------------------------------------------------------------------------------


def test_tl_entries_of_a_gguf_are_its_own_type_only(odd_models) -> None:
    tl2 = _keys(codegen.tl_entries(odd_models["tl2"]))
    assert ("tl2", *ODD) in tl2 and all(t == "tl2" for t, _, _ in tl2)
    assert {t for t, _, _ in _keys(codegen.tl_entries(odd_models["tl1"]))} == {"tl1"}
    assert codegen.tl_entries(odd_models["i2_s"]) == set()  # no TL tensors: nothing to serve
    both = _keys(codegen.tl_entries(odd_models["hf"]))  # a checkpoint: every TL type
    assert ("tl1", *ODD) in both and ("tl2", *ODD) in both


def test_registry_round_trip_and_change_detection(tmp_path, odd_models) -> None:
    reg = tmp_path / "reg" / codegen.REGISTRY_NAME
    assert codegen.load_registry(reg) == set()
    entries = codegen.tl_entries(odd_models["tl2"])
    assert codegen.register(reg, entries) is True
    assert codegen.register(reg, entries) is False  # nothing new: file untouched
    assert codegen.load_registry(reg) == entries  # tiles recomputed from the shapes
    reg.write_text("{not json")
    assert codegen.load_registry(reg) == set()  # a damaged registry is empty, not a crash
    reg.write_text(json.dumps({"shapes": [["tl2", 100, 256], ["tl9", 1, 1], ["tl1", 64, 256]]}))
    assert _keys(codegen.load_registry(reg)) == {("tl1", 64, 256)}  # invalid rows dropped


def test_registry_of_known_shapes_keeps_the_committed_table(cache, builds) -> None:
    plain = B.plan_build(B.BuildOptions(cache=cache))
    codegen.register(B.tl_registry(cache), codegen.plan_shapes([(2560, 2560)], ["tl2"]))
    with_known = B.plan_build(B.BuildOptions(cache=cache))
    assert with_known.stamp == plain.stamp  # same bytes as kernels/llama/...-tl-shapes.h


# --- convert rebuilds only when needed -----------------------------------------------------------


def test_ensure_rebuilds_the_build_in_use_only_when_it_lacks_the_shapes(
    cache, builds, odd_models
) -> None:
    for cpu in ("native", "generic"):
        B.run_build(B.plan_build(B.BuildOptions(cpu=cpu, cache=cache)))
    assert len(builds) == 2 and all(("tl2", *ODD) not in _served(p.build_dir)
                                    for p in builds)  # fmt: skip

    check = B.ensure_tl_kernels(odd_models["tl2"])
    assert [p.name for p in check.rebuilt] == ["build-native"]  # the one `bitnet run` uses
    assert len(builds) == 3 and builds[2].options.cpu == "native"
    assert ("tl2", *ODD) in _served(cache / "build-native")
    header = builds[2].overlay[f"{B.TL_SHAPES_DEST}/{codegen.HEADER_NAME}"]
    assert header.parent == cache / "codegen" and "GENERATED" in header.read_text()

    again = B.ensure_tl_kernels(odd_models["tl2"])  # served now: no build
    assert again.rebuilt == [] and len(again.up_to_date) == 1 and len(builds) == 3
    # a plain setup_env build keeps serving the registered shapes (no rebuild, no loss) and
    # the other build gets them on its next setup_env run
    assert B.plan_build(B.BuildOptions(cache=cache)).up_to_date
    assert not B.plan_build(B.BuildOptions(cpu="generic", cache=cache)).up_to_date
    assert B.ensure_tl_kernels(odd_models["i2_s"]).needed == set()


def test_known_shapes_need_no_rebuild(cache, builds, tmp_path) -> None:
    B.run_build(B.plan_build(B.BuildOptions(cache=cache)))
    ckpt = make_dummy(tmp_path / "ckpt", preset="tiny", hidden=256, ffn=512, seed=1)
    gguf = tmp_path / "known-tl2.gguf"
    convert_checkpoint(ckpt, gguf, outtype="tl2")
    check = B.ensure_tl_kernels(gguf)
    assert check.rebuilt == [] and len(check.up_to_date) == 1 and len(builds) == 1


def test_setup_env_tl_shapes_registers_and_rebuilds(cache, builds, odd_models) -> None:
    B.run_build(B.plan_build(B.BuildOptions(cache=cache)))
    opts = B.BuildOptions(cache=cache, tl_shapes=(str(odd_models["hf"]),))
    B.run_build(B.plan_build(opts))
    served = _served(builds[-1].build_dir)
    assert len(builds) == 2 and {("tl1", *ODD), ("tl2", *ODD)} <= served
    assert B.plan_build(B.BuildOptions(cache=cache)).up_to_date  # remembered without the flag


# --- the run-time check --------------------------------------------------------------------------


def test_missing_shape_is_refused_before_llama_cpp_runs(cache, builds, odd_models) -> None:
    B.run_build(B.plan_build(B.BuildOptions(cache=cache)))
    exe = cache / "build-native" / "bin" / "llama-completion"
    with pytest.raises(BuildError) as err:
        B.check_tl_served(odd_models["tl2"], exe)
    assert "TL2 weights of shape (192, 384) with tiles (BM 192, BK 96, bm 32) and 3 more" in str(
        err.value
    )
    assert "--tl-shapes" in err.value.hint
    B.check_tl_served(odd_models["i2_s"], exe)  # no TL tensors: fine
    B.ensure_tl_kernels(odd_models["tl2"])
    B.check_tl_served(odd_models["tl2"], exe)  # served after the rebuild


def test_cli_convert_tl_registers_shapes_without_a_build(cache, builds, odd_models, tmp_path):
    runner = CliRunner()
    out = tmp_path / "m.gguf"
    r = runner.invoke(app, ["convert", str(odd_models["hf"]), "--outtype", "tl2", "-o", str(out),
                            "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert ["tl2", *ODD, 192, 96, 32] in doc["tl_kernels"]["shapes"]  # with the default tiles
    assert doc["tl_kernels"]["rebuilt"] == []
    assert ("tl2", *ODD) in _keys(codegen.load_registry(B.tl_registry(cache)))

    B.run_build(B.plan_build(B.BuildOptions(cache=cache)))  # the next setup_env.py
    assert ("tl2", *ODD) in _served(cache / "build-native")

    r = runner.invoke(app, ["convert", str(odd_models["hf"]), "--outtype", "tl1", "-o",
                            str(tmp_path / "n.gguf"), "--no-build"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert ("tl1", *ODD) not in _keys(codegen.load_registry(B.tl_registry(cache)))
    if platform.machine().lower() in ("x86_64", "amd64"):  # TL1 has no x86 SIMD path: say so
        assert "TL1 is the ARM layout" in r.output


# --- tiles other than the default (bitnet codegen --tune, convert --tuned) ---------------------


@pytest.fixture(scope="module")
def tuned_models(tmp_path_factory, odd_models) -> dict[str, Path]:
    """The hidden-384 model as TL2 with tuned tiles for (384, 384), and the tiny (hidden 256)
    model as TL2 with the committed table's TEST_TILES and with tiles no table serves."""
    from bitnet.tools.quants import Tiling

    tmp = tmp_path_factory.mktemp("tl-tuned")
    tiny = make_dummy(tmp / "tiny", preset="tiny", hidden=256, ffn=512, seed=0)
    shapes = codegen.KNOWN_SHAPES[codegen.TEST_TILES_MODEL]
    test_tiles = Tiling(*codegen.TEST_TILES["tl2"])
    plans = {
        "odd": (odd_models["hf"], {("tl2", *ODD): Tiling(128, 192, 32)}),
        "test-tiles": (tiny, {("tl2", m, k): test_tiles for m, k in shapes}),
        "unserved": (tiny, {("tl2", 256, 256): Tiling(32, 96, 32)}),
    }
    out = {}
    for name, (ckpt, tiles) in plans.items():
        out[name] = tmp / f"{name}.gguf"
        convert_checkpoint(ckpt, out[name], outtype="tl2", tiles=tiles)
    return out


def test_ensure_registers_and_serves_the_recorded_tiles(cache, builds, tuned_models) -> None:
    B.run_build(B.plan_build(B.BuildOptions(cache=cache)))
    tuned = ("tl2", *ODD, 128, 192, 32)
    check = B.ensure_tl_kernels(tuned_models["odd"])
    assert tuned in check.needed and ("tl2", *ODD, 192, 96, 32) not in check.needed
    assert [p.name for p in check.rebuilt] == ["build-native"]
    served = B.served_tl_shapes(cache / "build-native")
    assert tuned in served and ("tl2", *ODD, 192, 96, 32) in served  # + the shape's default
    header = builds[-1].overlay[f"{B.TL_SHAPES_DEST}/{codegen.HEADER_NAME}"].read_text()
    assert "{BITNET_TL2, {   384,    384,  128,  192,  32}, 0}," in header
    B.check_tl_served(tuned_models["odd"], cache / "build-native" / "bin" / "llama-completion")
    assert B.ensure_tl_kernels(tuned_models["odd"]).rebuilt == []


def test_the_committed_table_serves_the_test_tiles_only(cache, builds, tuned_models) -> None:
    B.run_build(B.plan_build(B.BuildOptions(cache=cache)))
    exe = cache / "build-native" / "bin" / "llama-completion"
    B.check_tl_served(tuned_models["test-tiles"], exe)
    assert B.ensure_tl_kernels(tuned_models["test-tiles"]).rebuilt == []  # nothing to build
    with pytest.raises(BuildError) as err:
        B.check_tl_served(tuned_models["unserved"], exe)
    assert "shape (256, 256) with tiles (BM 32, BK 96, bm 32)" in str(err.value)
    assert "--tl-shapes" in err.value.hint


def test_old_stamp_rows_mean_default_tiles(cache, builds, tuned_models, odd_models) -> None:
    B.run_build(B.plan_build(B.BuildOptions(cache=cache)))
    stamp_file = cache / "build-native" / "bitnet-stamp.json"
    stamp = json.loads(stamp_file.read_text())
    stamp["tl_shapes"] = [["tl2", *ODD], ["tl2", 192, 384], ["tl2", 384, 768], ["tl2", 768, 384],
                          ["tl2", 100, 256]]  # fmt: skip
    stamp_file.write_text(json.dumps(stamp))
    served = B.served_tl_shapes(cache / "build-native")
    assert ("tl2", *ODD, 192, 96, 32) in served and len(served) == 4  # (100, 256) cannot be TL2
    exe = cache / "build-native" / "bin" / "llama-completion"
    B.check_tl_served(odd_models["tl2"], exe)  # default tiles: served by the old build
    with pytest.raises(BuildError, match=r"tiles \(BM 128, BK 192, bm 32\)"):
        B.check_tl_served(tuned_models["odd"], exe)
