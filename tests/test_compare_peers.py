"""benchmarks/compare_peers.py: interleaved passes, drift pass in reverse, failed peers reported."""

from __future__ import annotations

import importlib.util
import json
import os
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


# --- peers built from source: fake peer repositories and a fake cmake -----------------------

FAKE_CMAKE = r"""#!PYTHON
import json, os, pathlib, shutil, sys
args = sys.argv[1:]
log = pathlib.Path(os.environ["FAKE_CMAKE_LOG"])
with log.open("a") as f:
    f.write(json.dumps(args) + "\n")
if args[0] == "--build":
    build = pathlib.Path(args[1])
    src = pathlib.Path((build / "src-path").read_text())
    if (src / "FAIL").exists():
        print("error: this fake peer does not compile")
        sys.exit(2)
    (build / "bin").mkdir(exist_ok=True)
    tools = next(src.glob("**/tools"))  # in the tree, or in its llama.cpp submodule
    for name in ("llama-bench", "llama-quantize"):
        dst = build / "bin" / name
        shutil.copyfile(tools / (name + ".py"), dst)
        dst.chmod(0o755)
else:  # configure: -S SRC -B BUILD ...
    build = pathlib.Path(args[args.index("-B") + 1])
    build.mkdir(parents=True, exist_ok=True)
    (build / "src-path").write_text(args[args.index("-S") + 1])
    (build / "build.ninja").write_text(" ".join(args))
"""

FAKE_BENCH = r"""#!PYTHON
import json, sys
a = sys.argv
p, n, fmt = int(a[a.index("-p") + 1]), int(a[a.index("-n") + 1]), a[a.index("-o") + 1]
recs = [{"n_prompt": p, "n_gen": 0, "avg_ts": 100.0}, {"n_prompt": 0, "n_gen": n, "avg_ts": 10.0}]
if fmt == "jsonl" and not JSONL:  # ik_llama.cpp's llama-bench: -o json only
    sys.exit("error: invalid parameter for argument: -o")
print("\n".join(map(json.dumps, recs)) if fmt == "jsonl" else json.dumps(recs, indent=2))
"""

FAKE_QUANTIZE = r"""#!PYTHON
import shutil, sys
pos = [x for i, x in enumerate(sys.argv[1:], 1) if not x.startswith("--")
       and not sys.argv[i - 1].startswith("--")]
src, dst, qtype = pos[:3]
shutil.copyfile(src, dst)
"""


def _git(*args: str, cwd: Path) -> str:
    import subprocess

    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": os.environ["PATH"], "HOME": str(cwd)}  # fmt: skip
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def _script(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.replace("PYTHON", sys.executable, 1))
    path.chmod(0o755)


def _fake_llama(root: Path, archs: list[str], types: list[str], jsonl: bool = True) -> str:
    """A llama.cpp-like git repo: arch names, quantize type names, stand-in tools."""
    root.mkdir(parents=True)
    (root / "src").mkdir()
    (root / "src" / "llama.cpp").write_text("\n".join(f'{{ X, "{a}" }},' for a in archs))
    (root / "examples" / "quantize").mkdir(parents=True)
    (root / "examples" / "quantize" / "quantize.cpp").write_text(
        "\n".join(f'{{ "{t}", X }},' for t in types) + '\n"--output-tensor-type"\n'
    )
    (root / "ggml").mkdir()
    (root / "ggml" / "CMakeLists.txt").write_text(
        'option(GGML_NATIVE "n" ON)\noption(GGML_AVX2 "a" ON)\noption(GGML_AVX512 "b" OFF)\n'
    )
    _script(root / "tools" / "llama-bench.py", FAKE_BENCH.replace("JSONL", str(jsonl)))
    _script(root / "tools" / "llama-quantize.py", FAKE_QUANTIZE)
    _git("init", "-q", cwd=root)
    _git("add", "-A", cwd=root)
    _git("commit", "-q", "-m", "fake", cwd=root)
    return _git("rev-parse", "HEAD", cwd=root)


def _fake_bitnet(root: Path, llama: Path, llama_commit: str) -> None:
    """A BitNet-like repo recording `llama` at `llama_commit` as its 3rdparty/llama.cpp."""
    (root / "preset_kernels" / "m").mkdir(parents=True)
    (root / "preset_kernels" / "m" / "bitnet-lut-kernels-tl2.h").write_text("// preset\n")
    (root / "include").mkdir()
    (root / "include" / "ggml-bitnet.h").write_text("// its own header\n")
    (root / "CMakeLists.txt").write_text('option(BITNET_X86_TL2 "tl2" OFF)\n')
    (root / ".gitmodules").write_text(
        f'[submodule "3rdparty/llama.cpp"]\n\tpath = 3rdparty/llama.cpp\n\turl = {llama}\n'
    )
    _git("init", "-q", cwd=root)
    _git("add", "-A", cwd=root)
    _git("update-index", "--add", "--cacheinfo", f"160000,{llama_commit},3rdparty/llama.cpp",
         cwd=root)  # fmt: skip
    _git("commit", "-q", "-m", "fake", cwd=root)


@pytest.fixture()
def fake_peers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_packed: Path):
    """Fake bitnet.cpp (+ its llama.cpp fork that knows only `bitnet`) and ik_llama.cpp
    sources, a fake cmake, a private cache and a tiny F16 model."""
    import dataclasses

    from bitnet.tools import build as build_mod
    from bitnet.tools.convert import convert_checkpoint

    fork_commit = _fake_llama(tmp_path / "fork", ["bitnet"], ["I2_S"])
    _fake_bitnet(tmp_path / "bitnet", tmp_path / "fork", fork_commit)
    # no IQ2_BN_R4 in this revision; a llama-bench without -o jsonl
    _fake_llama(tmp_path / "ik", ["bitnet", "bitnet-b1.58"], ["IQ2_BN"], jsonl=False)
    _script(tmp_path / "bin" / "cmake", FAKE_CMAKE)
    calls = tmp_path / "cmake-calls.jsonl"
    monkeypatch.setenv("FAKE_CMAKE_LOG", str(calls))
    monkeypatch.setenv("BITNET_CACHE", str(tmp_path / "cache"))
    tc = build_mod.Toolchain(str(tmp_path / "bin" / "cmake"), "cc", "c++", "Ninja", ("patch",))
    monkeypatch.setattr(build_mod, "find_toolchain", lambda: tc)
    monkeypatch.setattr(cp, "BITNET_CPP", dataclasses.replace(cp.BITNET_CPP, compilers=None))
    model = tmp_path / "tiny-f16.gguf"
    convert_checkpoint(tiny_packed, model, "f16")
    return tmp_path, calls, model


def _peer_args(root: Path, model: Path) -> list[str]:
    return [
        "--bitnet-cpp", str(root / "bitnet"), "--ik-llama", str(root / "ik"), "--cpu", "avx2",
        "--model", str(model), "-p", "16", "-n", "8", "-t", "1", "-r", "1", "--no-bandwidth",
    ]  # fmt: skip


def test_peers_are_built_once_and_quantize_the_same_model(fake_peers, capsys) -> None:
    from bitnet.tools.gguf import GGUFReader

    root, calls, model = fake_peers
    assert cp.main(_peer_args(root, model)) == 0
    text = capsys.readouterr()
    assert "bitnet.cpp I2_S" in text.out and "ik_llama.cpp IQ2_BN" in text.out, text.err
    assert "IQ2_BN_R4" not in text.out  # that revision has no such type
    assert "failed" not in text.err  # ik's llama-bench ran again with -o json
    (ik_row,) = [x for x in text.out.splitlines() if x.startswith("ik_llama.cpp IQ2_BN\t")]
    assert ik_row.split("\t")[1:3] == ["100.0 (100.0/100.0)", "10.0 (10.0/10.0)"]
    configures = [json.loads(x) for x in calls.read_text().splitlines() if "-S" in x]
    assert len(configures) == 2
    flags = {c[c.index("-S") + 1]: c for c in configures}
    ik_flags = next(v for k, v in flags.items() if "ik_llama.cpp" in k)
    # only the CPU options the peer declares, AVX-512 off
    assert "-DGGML_AVX2=ON" in ik_flags and "-DGGML_AVX512=OFF" in ik_flags
    assert not any("GGML_FMA" in f for f in ik_flags)
    bn = next(v for k, v in flags.items() if "bitnet.cpp" in k)
    assert "-DBITNET_X86_TL2=OFF" in bn
    peers = root / "cache" / "peers"
    (bn_dir,) = peers.glob("bitnet.cpp-*-avx2")
    assert (bn_dir / "src" / "include" / "bitnet-lut-kernels.h").read_text() == "// preset\n"
    assert (bn_dir / "src" / "3rdparty" / "llama.cpp" / "examples").is_dir()
    # the fork knows `bitnet`, not `bitnet-b1.58`: it quantized a renamed copy (then removed)
    (i2s,) = (bn_dir / "quant").glob("*-i2_s.gguf")
    renamed = GGUFReader(i2s)
    assert renamed.arch == "bitnet" and GGUFReader(model).arch == "bitnet-b1.58"
    assert renamed.kv["bitnet.block_count"] == GGUFReader(model).kv["bitnet-b1.58.block_count"]
    assert list(renamed.tensors) == list(GGUFReader(model).tensors)
    assert not list((bn_dir / "quant").glob(".*"))
    (iq2,) = next(peers.glob("ik_llama.cpp-*")).glob("quant/*-iq2_bn.gguf")
    assert GGUFReader(iq2).arch == "bitnet-b1.58"  # ik knows ours: no copy

    # second run: nothing rebuilt, nothing re-quantized
    n_calls, mtime = len(calls.read_text().splitlines()), i2s.stat().st_mtime_ns
    assert cp.main(_peer_args(root, model)) == 0
    assert len(calls.read_text().splitlines()) == n_calls and i2s.stat().st_mtime_ns == mtime
    # an interrupted build (no stamp) is built again
    (bn_dir / "peer-stamp.json").unlink()
    assert cp.main(_peer_args(root, model)) == 0
    assert len(calls.read_text().splitlines()) == n_calls + 2


def test_fa_goes_to_every_engine(tmp_path: Path) -> None:
    seen: list[list[str]] = []

    def runner(cmd: list[str]):
        seen.append(cmd)
        return [{"n_prompt": 0, "n_gen": 4, "avg_ts": 1.0}], None

    cp.compare(_engines(tmp_path), [1], 0, 4, 1, 1, runner=runner, extra=["-fa", "0"])
    assert all(c[-4:] == ["-fa", "0", "-o", "jsonl"] for c in seen) and len(seen) == 3


def test_a_peer_that_does_not_build_is_reported_and_the_others_run(fake_peers, capsys) -> None:
    root, _, model = fake_peers
    (root / "ik" / "FAIL").write_text("")
    _git("add", "FAIL", cwd=root / "ik")
    _git("commit", "-q", "-m", "break it", cwd=root / "ik")
    assert cp.main(_peer_args(root, model)) == 0
    text = capsys.readouterr()
    assert "bitnet.cpp I2_S" in text.out and "ik_llama.cpp IQ2_BN" not in text.out
    (line,) = [x for x in text.err.splitlines() if "ik_llama.cpp could not be built" in x]
    assert "build.log" in line


def test_source_parsing_and_revisions(fake_peers) -> None:
    root, _, _ = fake_peers
    assert cp.Source.parse("/x/BitNet@c82b5e6") == cp.Source("/x/BitNet", "c82b5e6")
    assert cp.Source.parse("git@example.org:o/r.git") == cp.Source("git@example.org:o/r.git")
    assert cp.Source.parse("https://h/o/r@v1.0") == cp.Source("https://h/o/r", "v1.0")
    head = _git("rev-parse", "HEAD", cwd=root / "ik")
    assert cp.resolve(root / "ik", head[:7]) == head
    with pytest.raises(BuildError):
        cp.resolve(root / "ik", "no-such-rev")
    # a URL is mirrored into the cache once, then fetched again (file:// works offline)
    url = cp.Source.parse(f"file://{root / 'ik'}@{head[:7]}")
    mirror = cp.local_repo(url, root / "cache")
    assert mirror.parent == root / "cache" / "peers" / "git"
    assert cp.resolve(mirror, url.rev) == head
    assert cp.local_repo(url, root / "cache") == mirror


def test_a_foreign_tensor_type_is_sized_by_its_place_in_the_file(fake_peers) -> None:
    import struct

    from bitnet.tools.errors import CorruptFileError
    from bitnet.tools.gguf import GGUFReader

    _, _, model = fake_peers
    ours = GGUFReader(model)
    name, info = next(iter(ours.tensors.items()))
    data = bytearray(model.read_bytes())
    at = data.index(struct.pack("<Q", len(name)) + name.encode()) + 8 + len(name)
    at += 4 + 8 * struct.unpack_from("<I", data, at)[0]  # n_dims, dims: then the type id
    struct.pack_into("<I", data, at, 250)  # a type no reader of ours knows (ik's own ids)
    foreign = model.with_name("foreign.gguf")
    foreign.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError):
        GGUFReader(foreign)
    read = GGUFReader(foreign, foreign_types=True)
    assert read.tensors[name].type_name == "type 250"
    assert 0 <= read.tensors[name].nbytes - info.nbytes < read.alignment
    nbytes, head = cp.decode_bytes(model, 8)
    assert nbytes and "tied token_embd" in head and head.startswith("F16")
