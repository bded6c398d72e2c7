"""tools/build.py and setup_env.py without compiling anything: plan, stamp, fetch, patch, find."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from bitnet.tools import build as B
from bitnet.tools.errors import BuildError, ToolchainError, UsageError

ROOT = Path(__file__).resolve().parents[1]

FAKE_TC = B.Toolchain(
    cmake="cmake", cc="cc", cxx="c++", generator="Ninja", patch=("patch", "-p1"), ccache=None
)


def _patch_cmd() -> tuple[str, ...]:
    """The real patch command of this machine (the tests that apply patches need one)."""
    try:
        return B.find_toolchain().patch
    except ToolchainError:
        pass
    if shutil.which("patch"):
        return (shutil.which("patch"), "-p1", "--forward", "--batch", "--fuzz=0")
    pytest.skip("neither patch nor git is installed")


@pytest.fixture
def repo_copy(tmp_path, monkeypatch):
    """third_party/ and kernels/ copied to tmp, so tests can change patches and kernel files."""
    tp = tmp_path / "third_party"
    kd = tmp_path / "kernels"
    shutil.copytree(ROOT / "third_party", tp, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "kernels", kd, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(B, "third_party_dir", lambda: tp)
    monkeypatch.setattr(B, "kernels_dir", lambda: kd)
    return tp, kd


def _fake_build(plan: B.BuildPlan) -> None:
    """Pretend `plan` was built: the binaries and a matching stamp."""
    plan.bin_dir.mkdir(parents=True)
    for t in B.TARGETS:
        exe = plan.bin_dir / t
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    plan.stamp_file.write_text(json.dumps({"stamp": plan.stamp}))


# --- plan and dry run -------------------------------------------------------------------------


def test_plan_lists_every_step(tmp_path, repo_copy):
    plan = B.plan_build(B.BuildOptions(cache=tmp_path / "cache"), toolchain=FAKE_TC)
    assert not plan.up_to_date
    text = "\n".join(B.describe(plan))
    assert "download llama-cpp-python==0.3.36" in text
    for p in plan.patches:
        assert p.name in text
    assert "kernels/bitnet-kernels.h -> ggml/src/ggml-cpu/bitnet/bitnet-kernels.h" in text
    assert "kernels/llama/bitnet-logits.cpp -> tools/bitnet-logits/bitnet-logits.cpp" in text
    assert "-DGGML_NATIVE=ON" in text and "-DLLAMA_CURL=OFF" in text
    assert "--target " + " ".join(B.TARGETS) in text
    assert plan.build_dir == tmp_path / "cache" / "build-native"
    assert not (tmp_path / "cache").exists()  # planning writes nothing


def test_patch_series_is_ordered_and_parsable():
    patches = B.patch_files()
    assert [p.name[:4] for p in patches] == [f"{i:04d}" for i in range(1, len(patches) + 1)]
    for p in patches:
        assert B.paths_in_patch(p), p.name
        assert not p.read_text().startswith("diff"), f"{p.name} needs a header saying why"


def test_cpu_choices_map_to_cmake_flags():
    pin = B.load_pin()
    generic = B.cmake_flags("generic", FAKE_TC, pin)
    assert generic["GGML_NATIVE"] == "OFF"
    if generic.get("GGML_AVX2"):  # x86
        assert generic["GGML_AVX2"] == "OFF" and generic["GGML_AVX512"] == "OFF"
        avx512 = B.cmake_flags("avx512", FAKE_TC, pin)
        assert avx512["GGML_AVX512"] == "ON" and avx512["GGML_AVX2"] == "ON"
        avx2 = B.cmake_flags("avx2", FAKE_TC, pin)
        assert avx2["GGML_AVX512"] == "OFF"
        assert "-DBITNET_NO_AVX512" in avx2["CMAKE_C_FLAGS"]  # our kernels' AVX-512 paths too
    with pytest.raises(UsageError, match="unknown --cpu"):
        B.cmake_flags("sse9", FAKE_TC, pin)


def test_build_dir_is_keyed_by_cpu(tmp_path, repo_copy):
    plan = B.plan_build(B.BuildOptions(cpu="generic", cache=tmp_path), toolchain=FAKE_TC)
    assert plan.build_dir.name == "build-generic"


# --- stamp ------------------------------------------------------------------------------------


def test_second_run_with_nothing_changed_does_nothing(tmp_path, repo_copy):
    opts = B.BuildOptions(cache=tmp_path)
    _fake_build(B.plan_build(opts, toolchain=FAKE_TC))
    plan = B.plan_build(opts, toolchain=FAKE_TC)
    assert plan.up_to_date
    assert "up to date" in B.describe(plan)[0]
    res = B.run_build(plan)  # must not fetch, patch or call cmake
    assert not res.built
    assert not (tmp_path / "dl").exists() and not (tmp_path / "src").exists()


@pytest.mark.parametrize("change", ["kernel", "patch", "cpu-flags", "force", "binary"])
def test_any_input_change_makes_the_build_stale(tmp_path, repo_copy, change):
    tp, kd = repo_copy
    opts = B.BuildOptions(cache=tmp_path)
    plan = B.plan_build(opts, toolchain=FAKE_TC)
    _fake_build(plan)
    tc = FAKE_TC
    if change == "kernel":
        (kd / "bitnet-kernels.h").write_text((kd / "bitnet-kernels.h").read_text() + "\n")
    elif change == "patch":
        p = sorted((tp / "patches").glob("*.patch"))[0]
        p.write_text("comment\n" + p.read_text())
    elif change == "cpu-flags":
        tc = B.Toolchain(**{**FAKE_TC.__dict__, "ccache": "/usr/bin/ccache"})
    elif change == "force":
        opts = B.BuildOptions(cache=tmp_path, force=True)
    elif change == "binary":
        (plan.bin_dir / "llama-server").unlink()
    again = B.plan_build(opts, toolchain=tc)
    assert not again.up_to_date


# --- fetch ------------------------------------------------------------------------------------


def test_sha256_mismatch_is_a_build_error(tmp_path):
    pin = B.load_pin()
    dl = tmp_path / "dl"
    dl.mkdir()
    (dl / pin.filename).write_bytes(b"not the sdist")
    with pytest.raises(BuildError, match="sha256") as ei:
        B.fetch_sdist(pin, dl)
    assert "setup_env.py" in ei.value.hint


def test_verify_sha256_accepts_the_right_hash(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"abc")
    B.verify_sha256(f, hashlib.sha256(b"abc").hexdigest())


def _tar(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))


def test_extract_pristine_takes_the_vendored_tree_once(tmp_path):
    sdist = tmp_path / "pkg-1.0.tar.gz"
    _tar(
        sdist,
        {
            "pkg-1.0/setup.py": b"x",
            "pkg-1.0/vendor/llama.cpp/CMakeLists.txt": b"project(x)\n",
            "pkg-1.0/vendor/llama.cpp/src/a.c": b"int a;\n",
            "pkg-1.0/vendor/llama.cpp/docs/big.md": b"docs",
            "pkg-1.0/vendor/llama.cpp/.git": b"gitdir: ../../x",
        },
    )
    pin = B.Pin("pkg", "1.0", sdist.name, B.sha256_of(sdist), "pkg-1.0/vendor/llama.cpp", "abc")
    dest = tmp_path / "pristine"
    B.extract_pristine(sdist, pin, dest)
    assert (dest / "src" / "a.c").read_text() == "int a;\n"
    assert not (dest / "docs").exists() and not (dest / ".git").exists()
    assert not (dest / "setup.py").exists()
    (dest / "src" / "a.c").write_text("edited")
    B.extract_pristine(sdist, pin, dest)  # marker present: not extracted again
    assert (dest / "src" / "a.c").read_text() == "edited"


# --- toolchain --------------------------------------------------------------------------------


def _which_without(*missing: str):
    return lambda name: None if name in missing else f"/usr/bin/{name}"


def test_missing_cmake_is_a_toolchain_error(monkeypatch):
    monkeypatch.setattr(B, "_venv_program", lambda name: None)
    with pytest.raises(ToolchainError, match="cmake") as ei:
        B.find_toolchain(which=_which_without("cmake"))
    assert "pip install cmake" in ei.value.hint


def test_missing_compiler_names_what_to_install(monkeypatch):
    monkeypatch.setattr(B, "_venv_program", lambda name: None)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ToolchainError, match="C\\+\\+ compiler") as ei:
        B.find_toolchain(which=_which_without("c++", "g++", "clang++"))
    assert "apt-get install g++" in ei.value.hint


def test_missing_patch_and_git_is_a_toolchain_error(monkeypatch):
    monkeypatch.setattr(B, "_venv_program", lambda name: None)
    with pytest.raises(ToolchainError, match="patch") as ei:
        B.find_toolchain(which=_which_without("patch", "git"))
    assert "apt-get install patch" in ei.value.hint


def test_ninja_is_optional(monkeypatch):
    monkeypatch.setattr(B, "_venv_program", lambda name: None)
    assert B.find_toolchain(which=_which_without("ninja")).generator == "Unix Makefiles"


# --- patched tree -----------------------------------------------------------------------------

PATCH_OK = """\
change one line and add a file

--- a/src/a.c
+++ b/src/a.c
@@ -1,3 +1,3 @@
 int a;
-int b;
+int b = 2;
 int c;
--- /dev/null
+++ b/src/new.c
@@ -0,0 +1 @@
+int n;
"""

PATCH_BAD = """\
does not match the tree

--- a/src/a.c
+++ b/src/a.c
@@ -1,3 +1,3 @@
 int a;
-int zzz;
+int b = 2;
 int c;
"""


@pytest.fixture
def fake_tree(tmp_path):
    pristine = tmp_path / "pristine"
    (pristine / "src").mkdir(parents=True)
    (pristine / "src" / "a.c").write_text("int a;\nint b;\nint c;\n")
    (pristine / "README").write_text("hi\n")
    patches = tmp_path / "patches"
    patches.mkdir()
    return pristine, patches


def test_patches_apply_and_sync_writes_only_changes(tmp_path, fake_tree):
    pristine, pdir = fake_tree
    (pdir / "0001-ok.patch").write_text(PATCH_OK)
    kern = tmp_path / "k.c"
    kern.write_text("int k;\n")
    overlay = {"src/bitnet/k.c": kern}
    dest = tmp_path / "tree"
    cmd = _patch_cmd()
    st = B.make_source_tree(pristine, dest, B.patch_files(pdir), overlay, cmd)
    assert (dest / "src" / "a.c").read_text() == "int a;\nint b = 2;\nint c;\n"
    assert (dest / "src" / "new.c").read_text() == "int n;\n"
    assert (dest / "src" / "bitnet" / "k.c").read_text() == "int k;\n"
    assert st.written == 4
    mtime = (dest / "src" / "a.c").stat().st_mtime_ns

    st = B.make_source_tree(pristine, dest, B.patch_files(pdir), overlay, cmd)
    assert (st.written, st.removed, st.unchanged) == (0, 0, 4)
    assert (dest / "src" / "a.c").stat().st_mtime_ns == mtime  # cmake sees nothing new

    kern.write_text("int k2;\n")
    st = B.make_source_tree(pristine, dest, B.patch_files(pdir), overlay, cmd)
    assert st.written == 1 and (dest / "src" / "bitnet" / "k.c").read_text() == "int k2;\n"

    (pdir / "0001-ok.patch").unlink()  # dropping a patch restores pristine files
    st = B.make_source_tree(pristine, dest, [], {}, cmd)
    assert (dest / "src" / "a.c").read_text() == "int a;\nint b;\nint c;\n"
    assert not (dest / "src" / "new.c").exists() and not (dest / "src" / "bitnet").exists()


def test_a_patch_that_does_not_apply_is_named(tmp_path, fake_tree):
    pristine, pdir = fake_tree
    (pdir / "0001-ok.patch").write_text(PATCH_OK)
    (pdir / "0002-bad.patch").write_text(PATCH_BAD)
    dest = tmp_path / "tree"
    with pytest.raises(BuildError, match="0002-bad.patch does not apply") as ei:
        B.make_source_tree(pristine, dest, B.patch_files(pdir), {}, _patch_cmd())
    assert "0002-bad.patch" in ei.value.hint
    assert not dest.exists()  # nothing was synced
    assert not list(tmp_path.glob(".patching-*"))  # scratch folder cleaned up


def test_pinned_patches_apply_to_the_pristine_tree(tmp_path):
    """The real series against the real tree (only the files it touches; skipped before setup)."""
    pin = B.load_pin()
    pristine = B.default_cache() / "src" / f"llama.cpp-{pin.upstream_commit}"
    if not B._pristine_ok(pristine, pin):
        pytest.skip(f"no pristine llama.cpp in {pristine}: run python setup_env.py")
    patches = B.patch_files()
    touched = set().union(*(B.paths_in_patch(p) for p in patches))
    mini = tmp_path / "mini"
    for rel in touched:
        if (pristine / rel).is_file():
            (mini / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(pristine / rel, mini / rel)
    B.apply_patches(mini, patches, _patch_cmd(), pin.upstream_commit)
    header = (mini / "ggml" / "include" / "ggml.h").read_text()
    assert "GGML_TYPE_I2_S    = 36" in header


# --- finding binaries -------------------------------------------------------------------------


def test_find_binary_honours_bitnet_build_dir(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    for name in ("llama-cli", "ggml-rpc-server"):
        exe = tmp_path / "bin" / name
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    monkeypatch.setenv("BITNET_BUILD_DIR", str(tmp_path))
    assert B.find_binary("llama-cli") == tmp_path / "bin" / "llama-cli"
    assert B.find_binary("rpc-server") == tmp_path / "bin" / "ggml-rpc-server"
    with pytest.raises(BuildError, match="llama-server is not built") as ei:
        B.find_binary("llama-server")
    assert ei.value.hint.startswith("run: python setup_env.py")


def test_find_binary_looks_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("BITNET_BUILD_DIR", raising=False)
    monkeypatch.setenv("BITNET_CACHE", str(tmp_path))
    with pytest.raises(BuildError, match="not built"):
        B.find_binary("llama-bench")
    exe = tmp_path / "build-generic" / "bin" / "llama-bench"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert B.find_binary("llama-bench") == exe
    with pytest.raises(BuildError, match="build-avx2") as ei:
        B.find_binary("llama-bench", cpu="avx2")
    assert ei.value.hint == "run: python setup_env.py --cpu avx2"


# --- setup_env.py -----------------------------------------------------------------------------


def test_setup_env_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    try:
        B.find_toolchain()
    except ToolchainError as exc:
        pytest.skip(f"no build toolchain here: {exc}")
    env = dict(os.environ, BITNET_SETUP_STAGE="2", BITNET_CACHE=str(tmp_path / "cache"))
    res = subprocess.run(
        [sys.executable, str(ROOT / "setup_env.py"), "--dry-run", "--cpu", "generic"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert "configure:" in res.stdout and "-DGGML_NATIVE=OFF" in res.stdout
    assert "-DBUILD_SHARED_LIBS=ON" in res.stdout  # the Python API loads the same build
    assert "the Python bindings" in res.stdout
    assert "0001-" in res.stdout
    assert not (tmp_path / "cache").exists()
    assert "Traceback" not in res.stderr


def test_setup_env_rejects_an_unknown_cpu(tmp_path):
    env = dict(os.environ, BITNET_SETUP_STAGE="2")
    res = subprocess.run(
        [sys.executable, str(ROOT / "setup_env.py"), "--cpu", "pentium"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert res.returncode == 2
    assert "invalid choice" in res.stderr


def test_a_cmake_cache_of_another_tree_is_dropped(tmp_path, repo_copy):
    plan = B.plan_build(B.BuildOptions(cache=tmp_path), toolchain=FAKE_TC)
    plan.build_dir.mkdir(parents=True)
    cache = plan.build_dir / "CMakeCache.txt"
    cache.write_text(
        f"CMAKE_HOME_DIRECTORY:INTERNAL={plan.source}\nCMAKE_GENERATOR:INTERNAL=Ninja\n"
    )
    B._drop_foreign_cmake_cache(plan)
    assert cache.exists()  # same tree, same generator: kept for an incremental build
    cache.write_text("CMAKE_HOME_DIRECTORY:INTERNAL=/elsewhere\nCMAKE_GENERATOR:INTERNAL=Ninja\n")
    (plan.build_dir / "CMakeFiles").mkdir()
    B._drop_foreign_cmake_cache(plan)
    assert not cache.exists() and not (plan.build_dir / "CMakeFiles").exists()


def test_a_second_build_waits_for_the_first_and_reuses_it(tmp_path):
    # Two set-ups at once share the cache: the second waits on the lock, then finds the build the
    # first one finished and does nothing (it would fail here if it fetched: no sdist, no network).
    import fcntl
    import threading

    plan = B.plan_build(B.BuildOptions(cache=tmp_path), toolchain=FAKE_TC)
    assert not plan.up_to_date
    held, lock = threading.Event(), tmp_path / ".build.lock"

    def first_build() -> None:
        with open(lock, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            held.set()
            time.sleep(0.3)
            plan.bin_dir.mkdir(parents=True)
            for t in plan.targets:
                (plan.bin_dir / t).write_text("")
            plan.stamp_file.write_text(json.dumps({"stamp": plan.stamp}))

    t = threading.Thread(target=first_build)
    t.start()
    held.wait()
    seen: list[str] = []
    res = B.run_build(plan, lambda done, total, desc: seen.append(desc))
    t.join()
    assert res.built is False
    assert any("waiting for another build" in d for d in seen)
