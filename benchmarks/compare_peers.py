"""Our llama-bench against the peers (bitnet.cpp, ik_llama.cpp) on this machine, in one run.

    .venv/bin/python benchmarks/compare_peers.py \\
        --bitnet-cpp ~/src/BitNet@c82b5e6 --bitnet-cpp-llama ~/src/bitnet-llama.cpp \\
        --ik-llama ~/src/ik_llama.cpp --cpu avx2 \\
        --engine "ours I2_S" ~/.cache/bitnet/build-avx2/bin/llama-bench /tmp/bn-2b4t-i2_s.gguf \\
        -p 128 -n 64 -t 1,2 -r 5

Peers given by source (`--bitnet-cpp SRC[@REV]`, `--ik-llama SRC[@REV]`; SRC a local clone, a
bare git folder or a git URL) are cloned, built (only llama-bench and llama-quantize, ccache when
present) in `$BITNET_CACHE/peers/<peer>-<commit12>-<cpu>/` and reused while complete (a stamp
written last: an interrupted build is redone). Each peer quantizes the same F16 file (`--model`,
default a 2B-4T-shaped `bitnet dummy`, seed 0, converted with `--outtype f16` and cached) with its
own llama-quantize, keeping token_embd (the tied head) F16; the files are cached next to the
build, keyed by the F16 file's path, size and mtime. Engines added: "bitnet.cpp I2_S",
"ik_llama.cpp IQ2_BN" and "ik_llama.cpp IQ2_BN_R4" (when that revision has it). A peer that does
not know the F16 file's architecture name (bitnet.cpp's Oct-2024 llama.cpp fork knows `bitnet`,
not `bitnet-b1.58`) quantizes a temporary copy under a name it loads (same tensors; its graph
may use another FFN activation, SiLU for ReLU², which costs the same). Already-built engines
(our own builds) are added with `--engine NAME LLAMA_BENCH GGUF`.

Every engine runs once per pass, one after another, for every thread count: pass 1 in the given
order, pass 2 (the drift pass) in reverse, so a machine that speeds up or slows down during the
run favours no engine. The table shows the mean of the passes and, in brackets, each pass
(llama-bench's own mean over -r repetitions). Below it: the CPU model, the read bandwidth
measured now (tools/bandwidth.py) per thread count, and for decode the per-cent of the bound
bandwidth / bytes read per token (from each engine's GGUF, printed with its token_embd type).
A peer that cannot be built, quantized or run is reported in one line (with its log) and the
others still run. Only the flags every llama-bench since 2024 knows are passed
(-m -p -n -t -r -o jsonl; -o json for a llama-bench without jsonl, ik_llama.cpp's; -fa
with --fa, else each llama-bench runs flash attention as it does by default).
This is a benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bitnet.cli import _output as out
from bitnet.tools.errors import BitnetError, BuildError

#: A runner: the llama-bench command -> (records, error or None). Injected in tests.
Runner = Callable[[list[str]], tuple[list[dict[str, Any]], str | None]]


@dataclass(frozen=True)
class Engine:
    name: str
    binary: Path
    model: Path


@dataclass
class Cell:
    """One (engine, test, threads) figure: llama-bench's mean t/s of each pass."""

    engine: str
    test: str  # "pp128" or "tg64"
    threads: int
    passes: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.passes) if self.passes else float("nan")


def bench_command(
    engine: Engine, n_prompt: int, n_gen: int, threads: int, reps: int, extra: Sequence[str] = ()
) -> list[str]:
    """The llama-bench command line (flags every llama-bench since 2024 accepts, `extra`
    such as -fa 0 before the output format)."""
    return [
        str(engine.binary),
        "-m", str(engine.model),
        "-p", str(n_prompt),
        "-n", str(n_gen),
        "-t", str(threads),
        "-r", str(reps),
        *extra,
        "-o", "jsonl",
    ]  # fmt: skip


#: llama-bench binaries that know `-o json` only (ik_llama.cpp): found out once per run.
_JSON_ONLY: set[str] = set()


def run_command(cmd: list[str]) -> tuple[list[dict[str, Any]], str | None]:
    """Run one llama-bench process: its records, or an error line when it failed. A
    llama-bench without `-o jsonl` is run again with `-o json` (one array at the end)."""
    from bitnet.tools.bench.llama_bench import (
        explain_failure,
        parse_llama_bench_output,
        run_llama_bench,
    )
    from bitnet.tools.errors import RuntimeFailure

    if cmd[0] not in _JSON_ONLY:
        try:
            run = run_llama_bench(cmd)
        except RuntimeFailure as exc:  # could not start it (missing, not executable)
            return [], str(exc)
        if run.returncode == 0 and run.records:
            return run.records, None
        err = explain_failure(run)
        if not re.search(r"(invalid|unknown)[^\n]*\s-o\b", err):
            return [], err
        _JSON_ONLY.add(cmd[0])
    json_cmd = [*cmd[:-1], "json"] if cmd[-2:] == ["-o", "jsonl"] else cmd
    proc = subprocess.run(json_cmd, capture_output=True, text=True, errors="replace", check=False)
    try:
        records = parse_llama_bench_output(proc.stdout) if proc.returncode == 0 else []
    except RuntimeFailure as exc:
        return [], str(exc)
    if not records:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:]
        return [], f"llama-bench exited with status {proc.returncode}: {' '.join(tail)}"
    return records, None


def _test_name(rec: dict[str, Any]) -> str | None:
    n_prompt, n_gen = int(rec.get("n_prompt", 0)), int(rec.get("n_gen", 0))
    if n_gen > 0:
        return f"tg{n_gen}"
    return f"pp{n_prompt}" if n_prompt > 0 else None


def compare(
    engines: Sequence[Engine],
    threads: Sequence[int],
    n_prompt: int = 128,
    n_gen: int = 64,
    reps: int = 5,
    passes: int = 2,
    runner: Runner = run_command,
    on_run: Callable[[str], None] | None = None,
    extra: Sequence[str] = (),
) -> tuple[dict[tuple[str, str, int], Cell], dict[str, str]]:
    """Interleaved passes over all engines (odd passes in reverse order).

    Returns the cells keyed by (engine, test, threads) and the first error of each engine
    that failed (a failed engine is not run again in later passes).
    """
    cells: dict[tuple[str, str, int], Cell] = {}
    errors: dict[str, str] = {}
    for p in range(passes):
        order = list(engines) if p % 2 == 0 else list(reversed(engines))
        for eng in order:
            for t in threads:
                if eng.name in errors:
                    continue
                if on_run:
                    on_run(f"pass {p + 1}/{passes}: {eng.name}, {t} thread(s)")
                records, err = runner(bench_command(eng, n_prompt, n_gen, t, reps, extra))
                if err:
                    errors[eng.name] = err
                    continue
                for rec in records:
                    test = _test_name(rec)
                    if test is None or "avg_ts" not in rec:
                        continue
                    key = (eng.name, test, t)
                    cells.setdefault(key, Cell(eng.name, test, t)).passes.append(
                        float(rec["avg_ts"])
                    )
    return cells, errors


# --- peers built from source ------------------------------------------------------------------

#: Bump when the build recipe changes: older stamps then no longer count as complete.
RECIPE = 1
TARGETS = ("llama-bench", "llama-quantize")
_AVX2_ON = ("GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2")
_AVX2_OFF = ("GGML_AVXVNNI", "GGML_AVX512", "GGML_AVX512_VBMI", "GGML_AVX512_VNNI",
             "GGML_AVX512_BF16", "GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")  # fmt: skip
#: -D options per --cpu, passed only where the peer's ggml declares them (their names differ).
_PEER_CPU_FLAGS: dict[str, dict[str, str]] = {
    "native": {"GGML_NATIVE": "ON"},
    "avx2": {
        "GGML_NATIVE": "OFF",
        **dict.fromkeys(_AVX2_ON, "ON"),
        **dict.fromkeys(_AVX2_OFF, "OFF"),
    },
}
#: Architecture names to try, in order, for a peer that does not know the F16 file's own.
ARCH_FALLBACKS = {"bitnet-b1.58": ("bitnet-25", "bitnet")}


@dataclass(frozen=True)
class Source:
    """`SRC[@REV]` of the command line: a local clone, a bare git folder or a git URL."""

    location: str
    rev: str | None = None

    @classmethod
    def parse(cls, text: str) -> Source:
        loc, at, rev = text.rpartition("@")
        # git@host:owner/repo has an @ too: a revision has no '/' or ':'
        if not at or not loc or "/" in rev or ":" in rev or not rev:
            return cls(text)
        return cls(loc, rev)

    @property
    def is_local(self) -> bool:
        return Path(self.location).expanduser().exists()


@dataclass(frozen=True)
class Peer:
    """How to build one peer: its name, where llama.cpp sits in its tree, what it needs."""

    name: str
    #: (engine name suffix, llama-quantize type), offered when its quantize tool lists the type
    quants: tuple[tuple[str, str], ...]
    llama_subdir: str = ""  # bitnet.cpp: "3rdparty/llama.cpp" (a submodule)
    #: what the peer's own set-up does to the checkout before cmake
    prepare: Callable[[Path], None] | None = None
    compilers: tuple[str, str] | None = None  # (C, C++) when the peer insists on one
    flags: tuple[tuple[str, str], ...] = ()

    def llama_root(self, tree: Path) -> Path:
        return tree / self.llama_subdir if self.llama_subdir else tree


def _prepare_bitnet_cpp(tree: Path) -> None:
    """What BitNet's setup_env.py does before cmake and an I2_S build needs: its sources
    include bitnet-lut-kernels.h (generated for TL1/TL2); with TL2 off any preset copy does,
    as its content is compiled only under GGML_BITNET_X86_TL2 / _ARM_TL1."""
    header = tree / "include" / "bitnet-lut-kernels.h"
    header.parent.mkdir(exist_ok=True)
    if header.exists():
        return
    presets = sorted((tree / "preset_kernels").glob("*/bitnet-lut-kernels-tl2.h"))
    if not presets:
        raise BuildError(f"{tree} has neither include/bitnet-lut-kernels.h nor a preset one")
    shutil.copyfile(presets[0], header)


BITNET_CPP = Peer(
    "bitnet.cpp",
    quants=(("I2_S", "I2_S"),),
    llama_subdir="3rdparty/llama.cpp",
    prepare=_prepare_bitnet_cpp,
    compilers=("clang", "clang++"),  # its CMakeLists refuses any other compiler
    # I2_S only: no TL2 kernel tables (setup_env.py's code generation) are compiled in
    flags=(("BITNET_X86_TL2", "OFF"), ("BITNET_ARM_TL1", "OFF")),
)
IK_LLAMA = Peer("ik_llama.cpp", quants=(("IQ2_BN", "IQ2_BN"), ("IQ2_BN_R4", "IQ2_BN_R4")))


@dataclass
class PeerBuild:
    """A peer's cache folder: src/ (the checkout), build/, build.log, the stamp, quant/."""

    peer: Peer
    commit: str
    cpu: str
    root: Path
    llama_commit: str | None = None

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def bin_dir(self) -> Path:
        return self.root / "build" / "bin"

    @property
    def log(self) -> Path:
        return self.root / "build.log"

    @property
    def stamp_file(self) -> Path:
        return self.root / "peer-stamp.json"

    def stamp(self) -> dict[str, Any]:
        return {
            "recipe": RECIPE,
            "peer": self.peer.name,
            "commit": self.commit,
            "llama_commit": self.llama_commit,
            "cpu": self.cpu,
        }

    def complete(self) -> bool:
        try:
            old = json.loads(self.stamp_file.read_text())
        except (OSError, ValueError):
            return False
        return old == self.stamp() and all((self.bin_dir / t).is_file() for t in TARGETS)


def _git(*args: str, cwd: Path | None = None) -> str:
    """Run git and return its stdout; raise BuildError with its stderr."""
    proc = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, errors="replace", check=False
    )
    if proc.returncode != 0:
        msg = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise BuildError(f"git {' '.join(args[:2])} failed: {msg}")
    return proc.stdout.strip()


def local_repo(src: Source, cache: Path) -> Path:
    """A local git folder holding `src`: itself, or a mirror of its URL under the cache
    (fetched again on every call; an existing mirror is used when the network fails)."""
    if src.is_local:
        return Path(src.location).expanduser().resolve()
    name = re.sub(r"[^A-Za-z0-9._-]+", "+", src.location.split("://")[-1]).strip("+")
    mirror = cache / "peers" / "git" / f"{name}.git"
    if mirror.is_dir():
        try:
            _git("--git-dir", str(mirror), "fetch", "--quiet", "--prune", "origin")
        except BuildError as exc:
            out.warn(f"{src.location}: {exc}; using the copy fetched before")
        return mirror
    tmp = mirror.with_name(mirror.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    _git("clone", "--quiet", "--mirror", src.location, str(tmp))
    os.replace(tmp, mirror)
    return mirror


def resolve(repo: Path, rev: str | None) -> str:
    """The full commit of `rev` (default HEAD) in the local git folder `repo`."""
    try:
        return _git(
            "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{rev or 'HEAD'}^{{commit}}"
        )
    except BuildError:
        raise BuildError(f"{repo} has no commit {rev or 'HEAD'}") from None


def _checkout(repo: Path, commit: str, dest: Path) -> None:
    _git("clone", "--quiet", "--no-checkout", str(repo), str(dest))
    _git("-C", str(dest), "-c", "advice.detachedHead=false", "checkout", "--quiet", commit)


def _head(tree: Path) -> str | None:
    try:
        return _git("-C", str(tree), "rev-parse", "HEAD") if (tree / ".git").exists() else None
    except BuildError:
        return None


def submodule_commit(repo: Path, commit: str, path: str) -> str:
    """The commit a tree records for its submodule at `path`."""
    line = _git("-C", str(repo), "ls-tree", commit, path)
    parts = line.split()
    if len(parts) < 3 or parts[1] != "commit":
        raise BuildError(f"{repo} at {commit[:12]} has no submodule {path}")
    return parts[2]


def submodule_source(repo: Path, commit: str, path: str) -> Source:
    """Where a submodule comes from when not given: the clone's own checkout of it, else the
    URL its .gitmodules names."""
    checked_out = repo / path
    if (checked_out / ".git").exists():
        return Source(str(checked_out))
    gitmodules = _git("-C", str(repo), "show", f"{commit}:.gitmodules")
    m = re.search(rf"path\s*=\s*{re.escape(path)}\s*\n\s*url\s*=\s*(\S+)", gitmodules)
    if not m:
        raise BuildError(f"{repo}'s .gitmodules names no URL for {path}")
    return Source(m.group(1))


def _declared_options(tree: Path) -> set[str]:
    names: set[str] = set()
    for f in (tree / "CMakeLists.txt", tree / "ggml" / "CMakeLists.txt"):
        if f.is_file():
            names |= set(re.findall(r"option\(\s*([A-Z0-9_]+)", f.read_text(errors="replace")))
    return names


def peer_cmake_flags(peer: Peer, tree: Path, cpu: str) -> dict[str, str]:
    """Every -D option of the peer's configure step (CPU options only where declared)."""
    root = peer.llama_root(tree)
    declared = _declared_options(root) | _declared_options(tree)
    flags = {"CMAKE_BUILD_TYPE": "Release"}
    flags |= {k: v for k, v in _PEER_CPU_FLAGS[cpu].items() if k in declared}
    for k, v in peer.flags:
        if k in declared:
            flags[k] = v
    for k, v in (("LLAMA_CURL", "OFF"), ("LLAMA_BUILD_TESTS", "OFF"), ("GGML_CCACHE", "ON")):
        if k in declared:
            flags[k] = v
    if peer.compilers:
        flags["CMAKE_C_COMPILER"], flags["CMAKE_CXX_COMPILER"] = peer.compilers
    return flags


def _check_isa(build: PeerBuild) -> None:
    """An avx2 build must not enable AVX-512 or -march=native anywhere (ninja's flags)."""
    ninja = build.root / "build" / "build.ninja"
    if build.cpu != "avx2" or not ninja.is_file():
        return
    text = ninja.read_text(errors="replace")
    for bad in ("-mavx512", "-march=native"):
        if bad in text:
            raise BuildError(f"the avx2 build of {build.peer.name} compiles with {bad}")


def build_peer(
    peer: Peer,
    src: Source,
    cpu: str,
    cache: Path,
    llama_src: Source | None = None,
    progress: Callable[[str], None] | None = None,
) -> PeerBuild:
    """Clone and build `peer` (only TARGETS) in the cache; reuse a complete build."""
    repo = local_repo(src, cache)
    commit = resolve(repo, src.rev)
    llama_commit = llama_repo = None
    key = f"{peer.name}-{commit[:12]}-{cpu}"
    if peer.llama_subdir:
        recorded = submodule_commit(repo, commit, peer.llama_subdir)
        lsrc = llama_src or submodule_source(repo, commit, peer.llama_subdir)
        llama_repo = local_repo(lsrc, cache)
        llama_commit = resolve(llama_repo, lsrc.rev or recorded)
        if llama_commit != recorded:
            key += f"-llama{llama_commit[:12]}"
    build = PeerBuild(peer, commit, cpu, cache / "peers" / key, llama_commit)
    if build.complete():
        return build
    build.root.mkdir(parents=True, exist_ok=True)
    with _flock(build.root / ".lock"):
        if build.complete():  # another run built it while we waited
            return build
        try:
            _build_locked(build, repo, llama_repo, cache, progress)
        except OSError as exc:
            raise BuildError(f"{exc} (while building in {build.root})") from exc
    return build


def _build_locked(
    build: PeerBuild,
    repo: Path,
    llama_repo: Path | None,
    cache: Path,
    progress: Callable[[str], None] | None,
) -> None:
    from bitnet.tools.build import _run_logged, find_toolchain

    peer, commit, cpu, llama_commit = build.peer, build.commit, build.cpu, build.llama_commit
    build.stamp_file.unlink(missing_ok=True)
    if progress:
        progress(f"building {peer.name} {commit[:12]} ({cpu}) in {build.root}")
    sub = peer.llama_root(build.src)
    if _head(build.src) != commit or (llama_repo and _head(sub) != llama_commit):
        tmp = build.root / "src.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        _checkout(repo, commit, tmp)
        if llama_repo and llama_commit:
            sub_tmp = peer.llama_root(tmp)
            shutil.rmtree(sub_tmp, ignore_errors=True)  # the empty submodule folder
            _checkout(llama_repo, llama_commit, sub_tmp)
        shutil.rmtree(build.src, ignore_errors=True)
        os.replace(tmp, build.src)
    if peer.prepare:
        peer.prepare(build.src)
    for prog in peer.compilers or ():
        if not shutil.which(prog):
            raise BuildError(f"{peer.name} needs {prog}, which is not installed")
    tc = find_toolchain()
    flags = peer_cmake_flags(peer, build.src, cpu)
    configure = [tc.cmake, "-S", str(build.src), "-B", str(build.root / "build")]
    configure += ["-G", tc.generator] + [f"-D{k}={v}" for k, v in flags.items()]
    make = [tc.cmake, "--build", str(build.root / "build"), "--config", "Release"]
    make += ["--target", *TARGETS]
    with open(build.log, "w") as log:
        for cmd, what in ((configure, "cmake configure"), (make, f"building {peer.name}")):
            _run_logged(cmd, log, what, None, build.log, cache)
    missing = [t for t in TARGETS if not (build.bin_dir / t).is_file()]
    if missing:
        raise BuildError(f"the build finished without {', '.join(missing)}")
    _check_isa(build)
    build.stamp_file.write_text(json.dumps(build.stamp(), indent=2) + "\n")


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock (Windows)
        yield
        return
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def knows_arch(llama_root: Path, arch: str) -> bool:
    """Whether the peer's llama.cpp names the architecture `arch` in its sources."""
    needle = f'"{arch}"'
    return any(needle in f.read_text(errors="replace") for f in (llama_root / "src").glob("*.cpp"))


def _mentions(llama_root: Path, text: str) -> bool:
    files = [*(llama_root / "examples" / "quantize").glob("*.cpp")]
    files += [*(llama_root / "tools" / "quantize").glob("*.cpp")]
    return any(text in f.read_text(errors="replace") for f in files)


def model_key(model: Path) -> str:
    """What identifies the F16 file for the peers' cached quantizations: path, size, mtime."""
    st = model.stat()
    ident = f"{model.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:12]


def quantize_peer(build: PeerBuild, model: Path, qtype: str) -> Path:
    """The peer's own llama-quantize of `model` to `qtype`, token_embd (tied head) kept F16;
    cached in the build's quant/ folder. Raises BuildError with the log's path."""
    from bitnet.tools.build import _run_logged
    from bitnet.tools.gguf import GGUFReader, rewrite_arch

    llama_root = build.peer.llama_root(build.src)
    qdir = build.root / "quant"
    dest = qdir / f"{model.stem}-{model_key(model)}-{qtype.lower()}.gguf"
    if dest.is_file():
        return dest
    qdir.mkdir(parents=True, exist_ok=True)
    log_path = dest.with_suffix(".log")
    arch = GGUFReader(model).arch
    src, renamed = model, None
    if not knows_arch(llama_root, arch):
        alt = next((a for a in ARCH_FALLBACKS.get(arch, ()) if knows_arch(llama_root, a)), None)
        if alt is None:
            raise BuildError(f"{build.peer.name} at {build.commit[:12]} loads no {arch!r} model")
        renamed = qdir / f".{model.stem}-as-{alt}.partial-{os.getpid()}.gguf"
        rewrite_arch(model, renamed, alt)
        src = renamed
    cmd = [str(build.bin_dir / "llama-quantize"), "--token-embedding-type", "f16"]
    if _mentions(llama_root, "--output-tensor-type"):
        cmd += ["--output-tensor-type", "f16"]
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    try:
        with open(log_path, "w") as log:
            _run_logged([*cmd, str(src), str(tmp), qtype], log, f"quantizing to {qtype}",
                        None, log_path, build.root)  # fmt: skip
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
        if renamed:
            renamed.unlink(missing_ok=True)
    return dest


def peer_engines(build: PeerBuild, model: Path, on_error: Callable[[str], None]) -> list[Engine]:
    """One engine per quantization type the peer's revision offers."""
    engines = []
    llama_root = build.peer.llama_root(build.src)
    for label, qtype in build.peer.quants:
        if not _mentions(llama_root, f'"{qtype}"'):
            continue  # an older revision without this type
        name = f"{build.peer.name} {label}"
        try:
            engines.append(
                Engine(name, build.bin_dir / "llama-bench", quantize_peer(build, model, qtype))
            )
        except (BitnetError, OSError) as exc:
            on_error(f"{name}: {exc}")
    return engines


def default_model(cache: Path, progress: Callable[[str], None] | None = None) -> Path:
    """The 2B-4T-shaped dummy (seed 0) as F16 GGUF, made once with our own tools and cached
    next to its checkpoint (models/2b4t-seed0/: convert it to i2_s for our own --engine)."""
    from bitnet.tools.convert import convert_checkpoint
    from bitnet.tools.dummy import make_dummy

    ckpt = cache / "peers" / "models" / "2b4t-seed0"
    dest = ckpt.with_name("2b4t-seed0-f16.gguf")
    if not (ckpt / "config.json").is_file():
        if progress:
            progress(f"making the 2B-4T dummy checkpoint {ckpt} (once)")
        make_dummy(ckpt, "2b4t", "packed", 0, force=True)
    if not dest.is_file():
        if progress:
            progress(f"converting it to F16: {dest} (once)")
        convert_checkpoint(ckpt, dest, "f16")
    return dest


def _fmt_cell(cell: Cell | None) -> str:
    if cell is None or not cell.passes:
        return "—"
    if len(cell.passes) == 1:
        return f"{cell.mean:.1f}"
    return f"{cell.mean:.1f} ({'/'.join(f'{v:.1f}' for v in cell.passes)})"


def decode_bytes(model: Path, n_gen: int) -> tuple[float | None, str]:
    """Bytes read per generated token (tools/bandwidth.py; a peer's own tensor types sized by
    their place in the file) and the type of the head (token_embd when tied), or (None, "")
    when the file cannot be read."""
    from bitnet.tools.bandwidth import Traffic
    from bitnet.tools.gguf import GGUFReader

    try:
        reader = GGUFReader(model, foreign_types=True)
        head = reader.tensors.get("output.weight") or reader.tensors.get("token_embd.weight")
        kind = f"{head.type_name} head" if head else "no head"
        if "output.weight" not in reader.tensors:
            kind += " (tied token_embd)"
        return Traffic.from_gguf(reader).decode_bytes_per_token(0, n_gen), kind
    except Exception:  # noqa: BLE001 - any unreadable file just has no bound
        return None, ""


def table(
    engines: Sequence[Engine],
    cells: dict[tuple[str, str, int], Cell],
    threads: Sequence[int],
    n_prompt: int,
    n_gen: int,
    bandwidth: dict[int, float],
    bytes_per_token: dict[str, float | None],
) -> tuple[list[str], list[list[str]]]:
    """The issue's table: one row per engine, pp and tg per thread count, % of the decode bound."""
    tests = [x for x, n in ((f"pp{n_prompt}", n_prompt), (f"tg{n_gen}", n_gen)) if n > 0]
    tg = f"tg{n_gen}"
    cols = ["engine"] + [f"{x} {t}t" for x in tests for t in threads]
    cols += [f"tg % bound {t}t" for t in threads] if n_gen > 0 else []
    rows = []
    for eng in engines:
        row = [eng.name]
        row += [_fmt_cell(cells.get((eng.name, x, t))) for x in tests for t in threads]
        for t in threads if n_gen > 0 else []:
            cell = cells.get((eng.name, tg, t))
            nbytes, bw = bytes_per_token.get(eng.name), bandwidth.get(t)
            if cell and cell.passes and nbytes and bw:
                row.append(f"{100 * cell.mean * nbytes / bw:.0f} %")
            else:
                row.append("—")
        rows.append(row)
    return cols, rows


def _add_peers(args: argparse.Namespace, on_error: Callable[[str], None]) -> list[Engine]:
    """Build the peers named on the command line and quantize the F16 file with each."""
    from bitnet.tools.build import default_cache

    wanted = [(BITNET_CPP, args.bitnet_cpp, args.bitnet_cpp_llama), (IK_LLAMA, args.ik_llama, None)]
    wanted = [(peer, src, sub) for peer, src, sub in wanted if src]
    if not wanted:
        return []
    cache = default_cache()
    model = Path(args.model) if args.model else default_model(cache, out.info)
    engines: list[Engine] = []
    for peer, src, sub in wanted:
        try:
            build = build_peer(
                peer, Source.parse(src), args.cpu, cache,
                Source.parse(sub) if sub else None, out.info,
            )  # fmt: skip
        except (BitnetError, OSError) as exc:
            on_error(f"{peer.name} could not be built: {exc}")
            continue
        out.info(f"{peer.name} {build.commit[:12]} ({args.cpu}): {build.bin_dir}")
        engines += peer_engines(build, model, on_error)
    return engines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--engine",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "LLAMA_BENCH", "GGUF"),
        help="an already-built engine: its name, its llama-bench binary and its GGUF (repeat)",
    )
    p.add_argument("--bitnet-cpp", metavar="SRC[@REV]", help="microsoft/BitNet to build")
    p.add_argument(
        "--bitnet-cpp-llama",
        metavar="SRC[@REV]",
        help="its 3rdparty/llama.cpp when SRC lacks it (default REV: the recorded commit)",
    )
    p.add_argument("--ik-llama", metavar="SRC[@REV]", help="ikawrakow/ik_llama.cpp to build")
    p.add_argument(
        "--cpu", choices=sorted(_PEER_CPU_FLAGS), default="native",
        help="ISA of the peer builds (avx2: no AVX-512)",
    )  # fmt: skip
    p.add_argument(
        "--model", metavar="GGUF_F16",
        help="F16 file the peers quantize (default: the 2B-4T dummy, cached)",
    )  # fmt: skip
    p.add_argument("-p", "--n-prompt", type=int, default=128)
    p.add_argument("-n", "--n-gen", type=int, default=64)
    p.add_argument("-t", "--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("-r", "--reps", type=int, default=5, help="llama-bench repetitions")
    p.add_argument("--passes", type=int, default=2, help="passes (every 2nd in reverse order)")
    p.add_argument(
        "--fa", choices=("0", "1"),
        help="flash attention for every engine (default: each llama-bench's own: ik's is on)",
    )  # fmt: skip
    p.add_argument("--no-bandwidth", action="store_true", help="skip the bandwidth probe")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    if not (args.engine or args.bitnet_cpp or args.ik_llama):
        p.error("give at least one --engine, --bitnet-cpp or --ik-llama")
    if args.bitnet_cpp_llama and not args.bitnet_cpp:
        p.error("--bitnet-cpp-llama goes with --bitnet-cpp")
    if args.cpu == "avx2" and platform.machine().lower() not in ("x86_64", "amd64"):
        p.error(f"--cpu avx2 is for x86 CPUs and this one is {platform.machine()}")

    setup_errors: list[str] = []

    def on_error(msg: str) -> None:
        setup_errors.append(msg)
        out.warn(msg)

    engines = [Engine(n, Path(b), Path(m)) for n, b, m in args.engine]
    engines += _add_peers(args, on_error)
    if len({e.name for e in engines}) != len(engines):
        p.error("engine names must differ")
    if not engines:
        out.error("no engine to run.", hint="see the warnings above")
        return 1
    threads = [int(t) for t in str(args.threads).split(",") if t.strip()]
    extra = ["-fa", args.fa] if args.fa else []
    cells, errors = compare(
        engines, threads, args.n_prompt, args.n_gen, args.reps, args.passes, on_run=out.info,
        extra=extra,
    )  # fmt: skip

    from bitnet.tools.bandwidth import measure_read_bandwidth
    from bitnet.tools.bench.run import _host
    from bitnet.tools.kernels_lib import build_kernel_paths, describe_kernel_paths

    bandwidth: dict[int, float] = {}
    if not args.no_bandwidth:
        for t in threads:
            bandwidth[t] = measure_read_bandwidth(t).bytes_per_second
    traffic = {e.name: decode_bytes(e.model, args.n_gen) for e in engines}
    nbytes = {name: b for name, (b, _) in traffic.items()}
    cpu = _host()["cpu"]
    # the SIMD path of each kernel family in our builds (peers' builds have none to report)
    kernels = {e.name: build_kernel_paths(e.binary.parent) for e in engines}
    if args.json:
        out.emit_json(
            {
                "cpu": cpu,
                "peer_cpu": args.cpu,
                "engines": [
                    {
                        "name": e.name,
                        "binary": str(e.binary),
                        "model": str(e.model),
                        "kernels": kernels[e.name],
                    }
                    for e in engines
                ],  # fmt: skip
                "bandwidth_bytes_per_s": bandwidth,
                "decode_bytes_per_token": nbytes,
                "cells": [asdict(c) | {"mean": c.mean} for c in cells.values()],
                "errors": errors,
                "setup_errors": setup_errors,
            }
        )
    else:
        cols, rows = table(engines, cells, threads, args.n_prompt, args.n_gen, bandwidth, nbytes)
        out.table(cols, rows, title=f"t/s, mean of {args.passes} interleaved passes (each)")
        out.data(f"CPU: {cpu}")
        for t, bw in bandwidth.items():
            out.data(f"read bandwidth, {t} thread(s): {bw / 1e9:.1f} GB/s")
        for name, (b, head) in traffic.items():
            out.data(
                f"{name}: {b / 1e9:.3f} GB read per token, {head}" if b else f"{name}: bytes n/a"
            )
        for e in engines:
            paths = kernels[e.name]
            used = f" (kernels: {describe_kernel_paths(paths)})" if paths else ""
            out.data(f"{e.name}: {e.binary} -m {e.model}{used}")
    for name, err in errors.items():
        out.warn(f"{name} failed: {err}")
    return 1 if errors and len(errors) == len(engines) else 0


if __name__ == "__main__":
    raise SystemExit(main())
