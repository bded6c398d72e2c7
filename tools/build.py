"""Fetch, patch and build the pinned llama.cpp with bitnet's ternary kernels.

The one command a user runs is `python setup_env.py`; this module is its library:

1. fetch the PyPI sdist named in `third_party/llama-cpp.json` into `$BITNET_CACHE/dl` (default
   `~/.cache/bitnet`) and check its sha256;
2. extract its `vendor/llama.cpp` once into a pristine folder;
3. make the patched tree: apply `third_party/patches/*.patch` in order to copies of the files they
   touch, add the sources of `kernels/`, and sync the result into `src/llama.cpp-bitnet`, writing
   only files whose bytes changed so that cmake rebuilds incrementally;
4. configure with cmake (one build folder per `--cpu` choice) and build only the targets the CLI
   drives.

A stamp (a hash of the pin, the patches, the kernel sources and the cmake options) makes a second
run with nothing changed a no-op. `find_binary(name)` is how the rest of bitnet finds the tools.
Library code: nothing here prints; long steps report through a `progress(done, total, desc)`
callback and the tools' own output goes to a log file in the build folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from .errors import BuildError, NetworkError, ToolchainError, UsageError

if TYPE_CHECKING:
    from .gguf import GGUFReader

ProgressFn = Callable[[int, int, str], None]

#: Bump when a change here needs every existing build to be redone.
BUILD_SCHEME = 1

CPU_CHOICES = ("native", "generic", "avx2", "avx512")

#: cmake targets built (the binaries the CLI drives, plus our logits tool). At the pinned commit
#: `llama-cli` is the chat front end of the server code and `llama-completion` the plain
#: completion tool; the RPC server's target and binary are named `ggml-rpc-server`.
TARGETS = (
    "llama-cli",
    "llama-completion",
    "llama-server",
    "llama-bench",
    "llama-quantize",
    "llama-perplexity",
    "llama-tokenize",
    "ggml-rpc-server",
    "llama-bitnet-logits",
)

#: Other names accepted by find_binary.
BINARY_ALIASES = {"rpc-server": "ggml-rpc-server", "llama-rpc-server": "ggml-rpc-server"}

#: Top-level folders of the vendored tree that the build never reads (113 MB of docs and vocab
#: test files), and its `.git` pointer file, which refers to a repository that is not there.
EXCLUDED_TOP = frozenset({".git", "docs", "media", "models"})

#: Files of `kernels/` copied into the tree: (folder under kernels/, glob, destination folder).
#: Patch 0002 compiles every *.c/*.h of ggml-cpu/bitnet/; patch 0005 builds tools/bitnet-logits.
OVERLAY: tuple[tuple[str, str, str], ...] = (
    ("", "bitnet-*.[ch]", "ggml/src/ggml-cpu/bitnet"),
    ("llama", "ggml-cpu-*.[ch]", "ggml/src/ggml-cpu/bitnet"),
    ("llama", "bitnet-logits.cpp", "tools/bitnet-logits"),
)
#: Where the TL shape table (committed, or generated into the cache) goes in the tree.
TL_SHAPES_DEST = "ggml/src/ggml-cpu/bitnet"
REQUIRED_KERNEL_FILES = ("bitnet-kernels.h", "llama/ggml-cpu-bitnet.c", "llama/bitnet-logits.cpp")

SETUP_HINT = "run: python setup_env.py"

# cmake -D options per --cpu choice (x86 flags; `native` lets the compiler see the CPU).
_X86_BASE = ("GGML_SSE42", "GGML_AVX", "GGML_F16C", "GGML_FMA", "GGML_BMI2", "GGML_AVX2")
_CPU_FLAGS: dict[str, dict[str, str]] = {
    "native": {"GGML_NATIVE": "ON"},
    "generic": {"GGML_NATIVE": "OFF", **{f: "OFF" for f in _X86_BASE}, "GGML_AVX512": "OFF"},
    "avx2": {"GGML_NATIVE": "OFF", **{f: "ON" for f in _X86_BASE}, "GGML_AVX512": "OFF"},
    "avx512": {"GGML_NATIVE": "OFF", **{f: "ON" for f in _X86_BASE}, "GGML_AVX512": "ON"},
}

_NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"

#: Options common to every build: Release, only the tools we need, no network at build time (no
#: curl/openssl, no prebuilt web UI download). Shared libraries (libllama.so, libggml*.so next to
#: the binaries in bin/, found through the build's RPATH) so that the Python API's bindings load
#: the very same build: llama.cpp is compiled once.
_COMMON_FLAGS: dict[str, str] = {
    "CMAKE_BUILD_TYPE": "Release",
    "BUILD_SHARED_LIBS": "ON",
    "LLAMA_CURL": "OFF",
    "LLAMA_OPENSSL": "OFF",
    "LLAMA_BUILD_TESTS": "OFF",
    "LLAMA_BUILD_EXAMPLES": "OFF",
    "LLAMA_BUILD_TOOLS": "ON",
    "LLAMA_BUILD_SERVER": "ON",
    "LLAMA_BUILD_APP": "OFF",
    "LLAMA_BUILD_UI": "OFF",
    "LLAMA_USE_PREBUILT_UI": "OFF",
    "GGML_RPC": "ON",
}


# --- the pin ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    """Which llama.cpp we build: a file of a registry package, by exact version and sha256."""

    package: str
    version: str
    filename: str
    sha256: str
    subdir: str
    upstream_commit: str
    raw: bytes = field(repr=False, default=b"")


def third_party_dir() -> Path:
    from bitnet import third_party

    return Path(third_party.__file__).resolve().parent


def kernels_dir() -> Path:
    from bitnet import kernels

    return Path(kernels.__file__).resolve().parent


def load_pin(path: Path | None = None) -> Pin:
    """Read `third_party/llama-cpp.json`."""
    path = path or third_party_dir() / "llama-cpp.json"
    raw = path.read_bytes()
    d = json.loads(raw)
    return Pin(
        package=d["package"],
        version=d["version"],
        filename=d["filename"],
        sha256=d["sha256"].lower(),
        subdir=d["subdir"].strip("/"),
        upstream_commit=d["upstream_commit"],
        raw=raw,
    )


def patch_files(folder: Path | None = None) -> list[Path]:
    """The patch series, in the order it is applied (file name order: 0001-..., 0002-...)."""
    folder = folder or third_party_dir() / "patches"
    return sorted(folder.glob("*.patch"))


def overlay_files(kdir: Path | None = None) -> dict[str, Path]:
    """{path in the llama.cpp tree: source file in kernels/} for every file we copy in."""
    kdir = kdir or kernels_dir()
    for rel in REQUIRED_KERNEL_FILES:
        if not (kdir / rel).is_file():
            raise BuildError(
                f"kernels/{rel} is missing, so the ternary kernels cannot be built.",
                hint="restore it from the repository (git checkout -- kernels/), then "
                + SETUP_HINT,
            )
    files: dict[str, Path] = {}
    for sub, pattern, dest in OVERLAY:
        for src in sorted((kdir / sub).glob(pattern)):
            if src.is_file():
                files[f"{dest}/{src.name}"] = src
    return files


def default_cache() -> Path:
    """`$BITNET_CACHE`, else `~/.cache/bitnet`."""
    env = os.environ.get("BITNET_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bitnet"


# --- toolchain --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Toolchain:
    """The programs the build runs. `patch` is a command prefix (GNU patch or `git apply`)."""

    cmake: str
    cc: str
    cxx: str
    generator: str
    patch: tuple[str, ...]
    ccache: str | None = None


def _venv_program(name: str) -> str | None:
    # pip installs cmake (a dependency of bitnet) next to the interpreter, maybe not on PATH
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.is_file() and os.access(cand, os.X_OK) else None


def _first(names: Iterable[str], which: Callable[[str], str | None]) -> str | None:
    for n in names:
        found = which(n)
        if found:
            return found
    return None


def find_toolchain(which: Callable[[str], str | None] = shutil.which) -> Toolchain:
    """Locate cmake, C and C++ compilers, ninja or make, and patch (or git).

    Raises ToolchainError naming what to install when one is missing.
    """
    cmake = _venv_program("cmake") or which("cmake")
    if not cmake:
        raise ToolchainError(
            "cmake is not installed.",
            hint="pip install cmake (a dependency of bitnet: pip install -e .)",
        )
    cc = os.environ.get("CC") or _first(("cc", "gcc", "clang"), which)
    cxx = os.environ.get("CXX") or _first(("c++", "g++", "clang++"), which)
    if not cc or not cxx:
        missing = "C++" if cc else "C"
        raise ToolchainError(
            f"no {missing} compiler was found (looked for "
            + ("c++, g++ and clang++)." if cc else "cc, gcc and clang)."),
            hint="install one: apt-get install g++ (Debian/Ubuntu), dnf install gcc-c++ (Fedora),"
            " xcode-select --install (macOS)",
        )
    if _venv_program("ninja") or which("ninja"):
        generator = "Ninja"
    elif which("make"):
        generator = "Unix Makefiles"
    else:
        raise ToolchainError(
            "neither ninja nor make is installed.", hint="apt-get install make (or ninja-build)"
        )
    patch_prog = which("patch")
    git = which("git")
    if patch_prog:
        patch_cmd: tuple[str, ...] = (patch_prog, "-p1", "--forward", "--batch", "--fuzz=0")
    elif git:
        patch_cmd = (git, "apply", "-p1", "--whitespace=nowarn")
    else:
        raise ToolchainError("neither patch nor git is installed.", hint="apt-get install patch")
    return Toolchain(cmake, cc, cxx, generator, patch_cmd, which("ccache"))


def cmake_flags(cpu: str, tc: Toolchain, pin: Pin) -> dict[str, str]:
    """Every -D option of the configure step for `cpu`."""
    if cpu not in CPU_CHOICES:
        raise UsageError(f"unknown --cpu {cpu!r}.", hint="choose one of: " + ", ".join(CPU_CHOICES))
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    if cpu in ("avx2", "avx512") and not x86:
        raise UsageError(
            f"--cpu {cpu} is for x86 CPUs and this one is {platform.machine()}.",
            hint="use --cpu native (or generic)",
        )
    flags = dict(_COMMON_FLAGS)
    flags.update(_CPU_FLAGS[cpu] if x86 else {"GGML_NATIVE": "ON" if cpu == "native" else "OFF"})
    if x86 and cpu == "native":
        # -march=native turns on AMX where the CPU lists it, and ggml's AMX path (Q8_0/Q6_K
        # heads in prefill) then faults on VMs that list AMX without enabling it (seen on ours).
        # The ternary path never uses AMX, so native builds leave it out.
        flags["CMAKE_C_FLAGS"] = flags["CMAKE_CXX_FLAGS"] = _NO_AMX
    if x86 and cpu == "avx2":
        # bitnet's kernels choose their SIMD path at run time; a build for AVX2 CPUs leaves the
        # AVX-512 ones out, so that on an AVX-512 machine it runs what an AVX2-only CPU runs
        flags["CMAKE_C_FLAGS"] = "-DBITNET_NO_AVX512"
    flags["CMAKE_C_COMPILER"] = tc.cc
    flags["CMAKE_CXX_COMPILER"] = tc.cxx
    flags["GGML_CCACHE"] = "ON" if tc.ccache else "OFF"
    flags["LLAMA_BUILD_COMMIT"] = f"{pin.upstream_commit}-bitnet"
    return flags


# --- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildOptions:
    """What `setup_env.py` asks for."""

    cpu: str = "native"
    jobs: int | None = None
    cache: Path | None = None
    force: bool = False
    #: GGUF files / HF folders whose TL1/TL2 shapes the build must serve (bitnet codegen)
    tl_shapes: tuple[str, ...] = ()


@dataclass
class BuildPlan:
    """Everything a build would do, computed without side effects (see `describe`)."""

    options: BuildOptions
    pin: Pin
    toolchain: Toolchain
    cache: Path
    sdist: Path
    pristine: Path
    source: Path
    build_dir: Path
    patches: list[Path]
    overlay: dict[str, Path]
    flags: dict[str, str]
    targets: tuple[str, ...]
    jobs: int
    stamp: str
    up_to_date: bool

    @property
    def bin_dir(self) -> Path:
        return self.build_dir / "bin"

    @property
    def stamp_file(self) -> Path:
        return self.build_dir / "bitnet-stamp.json"

    @property
    def log_file(self) -> Path:
        return self.build_dir / "bitnet-build.log"

    def cmake_configure_cmd(self) -> list[str]:
        cmd = [self.toolchain.cmake, "-S", str(self.source), "-B", str(self.build_dir)]
        cmd += ["-G", self.toolchain.generator]
        return cmd + [f"-D{k}={v}" for k, v in self.flags.items()]

    def cmake_build_cmd(self) -> list[str]:
        return [
            self.toolchain.cmake, "--build", str(self.build_dir), "--config", "Release",
            "-j", str(self.jobs), "--target", *self.targets,
        ]  # fmt: skip


def compute_stamp(
    pin: Pin, patches: Sequence[Path], overlay: dict[str, Path], flags: dict[str, str]
) -> str:
    """Hash of every input of the build; a build whose stamp matches has nothing to do."""
    h = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        h.update(label.encode() + b"\0" + len(data).to_bytes(8, "little") + data)

    add("scheme", str(BUILD_SCHEME).encode())
    add("pin", pin.raw or pin.sha256.encode())
    for p in patches:
        add("patch:" + p.name, p.read_bytes())
    for rel in sorted(overlay):
        add("overlay:" + rel, overlay[rel].read_bytes())
    add("flags", json.dumps(flags, sort_keys=True).encode())
    return h.hexdigest()


def read_stamp(build_dir: Path) -> dict | None:
    try:
        return json.loads((build_dir / "bitnet-stamp.json").read_text())
    except (OSError, ValueError):
        return None


def plan_build(options: BuildOptions, toolchain: Toolchain | None = None) -> BuildPlan:
    """Work out what a build would do; reads files, changes nothing."""
    cache = (options.cache or default_cache()).expanduser()
    pin = load_pin()
    tc = toolchain or find_toolchain()
    flags = cmake_flags(options.cpu, tc, pin)
    patches = patch_files()
    overlay = overlay_files()
    registry = tl_registry(cache)
    if options.tl_shapes or registry.is_file():  # the generated table replaces the committed one
        header = tl_shapes_header(cache, options.tl_shapes)
        overlay[f"{TL_SHAPES_DEST}/{header.name}"] = header
    stamp = compute_stamp(pin, patches, overlay, flags)
    build_dir = cache / f"build-{options.cpu}"
    up_to_date = _built(build_dir, stamp, TARGETS) and not options.force
    return BuildPlan(
        options=options,
        pin=pin,
        toolchain=tc,
        cache=cache,
        sdist=cache / "dl" / pin.filename,
        pristine=cache / "src" / f"llama.cpp-{pin.upstream_commit}",
        source=cache / "src" / "llama.cpp-bitnet",
        build_dir=build_dir,
        patches=patches,
        overlay=overlay,
        flags=flags,
        targets=TARGETS,
        jobs=options.jobs or os.cpu_count() or 1,
        stamp=stamp,
        up_to_date=up_to_date,
    )


def tl_registry(cache: Path) -> Path:
    """The cache's list of TL shapes its builds serve beyond the known ones (tools/codegen.py)."""
    from bitnet.tools import codegen

    return cache / "codegen" / codegen.REGISTRY_NAME


def tl_shapes_header(cache: Path, models: Sequence[str]) -> Path:
    """Register the TL shapes of `models` in the cache's registry, then generate the shape table
    (known shapes + registry) into the cache; the file is rewritten only when its bytes change,
    so the build stamp changes only then."""
    from bitnet.tools import codegen

    registry = tl_registry(cache)
    for model in models:
        codegen.register(registry, codegen.tl_entries(model))
    out = cache / "codegen" / codegen.HEADER_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    extra = codegen.load_registry(registry)
    return codegen.generate(
        (), out, extra=extra, extra_source=f"shapes registered in {registry.name}"
    )[0]


def served_tl_shapes(build_dir: Path) -> set[tuple[str, int, int, int, int, int]] | None:
    """(type, M, K, BM, BK, bm) of every TL table entry a finished build serves (from its
    stamp; [type, M, K] rows of older stamps mean the default tiles); None when the build is
    missing or predates this record."""
    from bitnet.tools import codegen

    stamp = read_stamp(build_dir)
    if not stamp or "tl_shapes" not in stamp:
        return None
    entries = (codegen.entry_from_row(r) for r in stamp["tl_shapes"] or [])
    return {e.key for e in entries if e is not None}


def check_tl_served(model: Path, binary: Path, reader: GGUFReader | None = None) -> None:
    """Raise BuildError when `model` has TL1/TL2 weights of a shape the build of `binary` has no
    kernel table entry for (checked before llama.cpp would abort on it). Builds that predate the
    stamp's record are not checked here; their kernels refuse the shape themselves. `reader`:
    the model already open (its header is not parsed again)."""
    from bitnet.tools import codegen

    build_dir = Path(binary).resolve().parent.parent
    served = served_tl_shapes(build_dir)
    if served is None:
        return
    missing = sorted({e.key for e in codegen.tl_entries(model, reader=reader)} - served)
    if missing:
        qtype, m, k, bm_tile, bk, bm = missing[0]
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise BuildError(
            f"{Path(model).name} has {qtype.upper()} weights of shape ({m}, {k}) with tiles "
            f"(BM {bm_tile}, BK {bk}, bm {bm}){more} that the llama.cpp build in {build_dir} "
            "has no TL kernels for.",
            hint=f"rebuild with: python setup_env.py --tl-shapes {model} "
            "(or convert with --outtype i2_s)",
        )


@dataclass
class TLKernelCheck:
    """What `ensure_tl_kernels` found and did."""

    needed: set[tuple[str, int, int, int, int, int]]  # (type, M, K, BM, BK, bm)
    rebuilt: list[Path] = field(default_factory=list)
    up_to_date: list[Path] = field(default_factory=list)
    registered: bool = False


def ensure_tl_kernels(
    model: Path, cache: Path | None = None, progress: ProgressFn | None = None
) -> TLKernelCheck:
    """Make the llama.cpp build that `bitnet run` uses serve the TL1/TL2 shapes of `model`,
    with the tiles its tensors record.

    The entries are added to the cache's registry, so every later `setup_env.py` build (any
    --cpu) serves them too. The build in use (native first, as find_binary picks) is rebuilt if
    its stamp lacks one of them: the regenerated table changes, so its stamp does, and ccache
    keeps that to the changed file and a relink. A GGUF without TL tensors, or a build that
    already serves its shapes, costs nothing.
    """
    from bitnet.tools import codegen

    cache = (cache or default_cache()).expanduser()
    entries = codegen.tl_entries(model)
    check = TLKernelCheck({e.key for e in entries})
    if not entries:
        return check
    check.registered = codegen.register(tl_registry(cache), entries)
    dirs = build_dirs(cache)
    stamp = read_stamp(dirs[0]) if dirs else None
    if stamp is None:  # no finished build: the next setup_env.py builds it with the registry
        return check
    build_dir = dirs[0]
    served = served_tl_shapes(build_dir)
    if served is not None and check.needed <= served:
        check.up_to_date.append(build_dir)
        return check
    cpu = str(stamp.get("cpu") or build_dir.name.removeprefix("build-"))
    plan = plan_build(BuildOptions(cpu=cpu, cache=cache))
    if plan.up_to_date:  # the table did not change (a stamp older than the tl_shapes record)
        check.up_to_date.append(build_dir)
        return check
    run_build(plan, progress)
    check.rebuilt.append(build_dir)
    return check


def describe(plan: BuildPlan) -> list[str]:
    """The plan as lines of text (what `--dry-run` prints)."""
    if plan.up_to_date:
        return [f"llama.cpp build in {plan.build_dir} is up to date (stamp {plan.stamp[:12]})"]
    pin = plan.pin
    have = plan.sdist.is_file()
    lines = [
        (f"verify {plan.sdist} (sha256 {pin.sha256[:12]}...)" if have else
         f"download {pin.package}=={pin.version} with pip into {plan.sdist.parent} and verify "
         f"its sha256 {pin.sha256[:12]}..."),
        (f"pristine llama.cpp {pin.upstream_commit} at {plan.pristine}"
         + (" (already extracted)" if _pristine_ok(plan.pristine, pin) else
            f" (extract {pin.subdir} from the sdist)")),
        f"patched tree at {plan.source}: {len(plan.patches)} patches, "
        f"{len(plan.overlay)} kernel files; only changed files are rewritten",
        *[f"  patch {p.name}" for p in plan.patches],
        *[f"  copy kernels/{_rel_kernel(s)} -> {r}" for r, s in sorted(plan.overlay.items())],
        "configure: " + " ".join(plan.cmake_configure_cmd()),
        "build: " + " ".join(plan.cmake_build_cmd()),
        f"binaries in {plan.bin_dir}; stamp {plan.stamp[:12]} in {plan.stamp_file.name}",
    ]  # fmt: skip
    return lines


def _rel_kernel(src: Path) -> str:
    try:
        return str(src.relative_to(kernels_dir()))
    except ValueError:
        return str(src)


# --- step 1: fetch ----------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Raise BuildError if `path`'s sha256 is not `expected`."""
    got = sha256_of(path)
    if got != expected.lower():
        raise BuildError(
            f"{path.name} has sha256 {got[:16]}..., not the pinned {expected[:16]}... .",
            hint=f"delete {path} and run: python setup_env.py (it downloads the file again)",
        )


def fetch_sdist(pin: Pin, dl_dir: Path, progress: ProgressFn | None = None) -> Path:
    """Return the verified sdist in `dl_dir`, downloading it with pip when absent."""
    dest = dl_dir / pin.filename
    if not dest.is_file():
        dl_dir.mkdir(parents=True, exist_ok=True)
        if progress:
            progress(0, 0, f"downloading {pin.package}=={pin.version}")
        with tempfile.TemporaryDirectory(dir=dl_dir, prefix=".pip-") as tmp:
            cmd = [
                sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                f"{pin.package}=={pin.version}", "-d", tmp,
            ]  # fmt: skip
            res = subprocess.run(cmd, capture_output=True, text=True)
            got = Path(tmp) / pin.filename
            if res.returncode != 0 or not got.is_file():
                last = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
                raise NetworkError(
                    f"pip could not download {pin.package}=={pin.version} ({last[0][:160]}).",
                    hint=f"check the network and pip's index settings, or put {pin.filename} "
                    f"into {dl_dir} yourself",
                )
            os.replace(got, dest)
    verify_sha256(dest, pin.sha256)
    return dest


# --- step 2: pristine tree --------------------------------------------------------------------

_PRISTINE_MARK = ".bitnet-pristine"


def _pristine_ok(folder: Path, pin: Pin) -> bool:
    try:
        return (folder / _PRISTINE_MARK).read_text().strip() == pin.sha256
    except OSError:
        return False


def extract_pristine(sdist: Path, pin: Pin, dest: Path, progress: ProgressFn | None = None) -> Path:
    """Extract `pin.subdir` of the sdist into `dest` once (a marker records the sdist's sha256)."""
    if _pristine_ok(dest, pin):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
    prefix = pin.subdir + "/"
    n = 0
    try:
        with tarfile.open(sdist, "r:*") as tf:
            for m in tf:
                if not m.name.startswith(prefix) or not m.isfile():
                    continue
                rel = m.name[len(prefix) :]
                parts = Path(rel).parts
                if not parts or parts[0] in EXCLUDED_TOP:
                    continue
                if Path(rel).is_absolute() or ".." in parts:
                    raise BuildError(f"{sdist.name} holds an unsafe path: {m.name}")
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(m)
                assert src is not None
                with src, open(out, "wb") as f:
                    shutil.copyfileobj(src, f)
                os.chmod(out, 0o755 if m.mode & 0o111 else 0o644)
                os.utime(out, (m.mtime, m.mtime))
                n += 1
                if progress and n % 200 == 0:
                    progress(n, 0, "extracting llama.cpp")
        if n == 0:
            raise BuildError(f"{sdist.name} has no {pin.subdir} folder.")
        (tmp / _PRISTINE_MARK).write_text(pin.sha256 + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


# --- step 3: patched tree ---------------------------------------------------------------------

_DIFF_PATH = re.compile(r"^(?:---|\+\+\+) (?:[ab]/)?(\S+)")


def paths_in_patch(patch: Path) -> set[str]:
    """The tree-relative paths a unified diff reads or writes (`/dev/null` excluded)."""
    paths: set[str] = set()
    for line in patch.read_text(errors="replace").splitlines():
        m = _DIFF_PATH.match(line)
        if m and m.group(1) != "/dev/null":
            paths.add(m.group(1))
    return paths


def apply_patches(
    tree: Path, patches: Sequence[Path], patch_cmd: Sequence[str], commit: str
) -> None:
    """Apply `patches` in order inside `tree`; a patch that does not apply is a BuildError."""
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(tree.parent), LC_ALL="C")
    for p in patches:
        if Path(patch_cmd[0]).name.startswith("git"):
            cmd = [*patch_cmd, str(p)]
        else:
            cmd = [*patch_cmd, "--no-backup-if-mismatch", "-d", str(tree), "-i", str(p)]
        res = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            detail = " ".join((res.stdout + res.stderr).split())[:200]
            raise BuildError(
                f"patch {p.name} does not apply to llama.cpp {commit}: {detail}",
                hint=f"regenerate {p.name} against the pinned tree (see third_party/README.md)",
            )


@dataclass
class SyncStats:
    written: int = 0
    removed: int = 0
    unchanged: int = 0


def make_source_tree(
    pristine: Path,
    dest: Path,
    patches: Sequence[Path],
    overlay: dict[str, Path],
    patch_cmd: Sequence[str],
    commit: str = "pinned",
    progress: ProgressFn | None = None,
) -> SyncStats:
    """Make `dest` = pristine + patches + overlay, rewriting only files whose content changed.

    The patches are applied to copies of just the files they touch (in a scratch folder), so a
    patch that fails leaves `dest` as it was.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    touched: set[str] = set()
    for p in patches:
        touched |= paths_in_patch(p)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".patching-") as scratch:
        stage = Path(scratch)
        for rel in sorted(touched):
            src = pristine / rel
            if src.is_file():
                (stage / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, stage / rel)
        apply_patches(stage, patches, patch_cmd, commit)
        for rel, src in overlay.items():
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, stage / rel)

        # what dest must hold: pristine files, except those the patches or the overlay replace
        want: dict[str, tuple[Path, bool]] = {}  # rel -> (source, compare by content)
        for root, _dirs, files in os.walk(pristine):
            for name in files:
                full = Path(root) / name
                rel = full.relative_to(pristine).as_posix()
                if rel != _PRISTINE_MARK:
                    want[rel] = (full, False)
        for rel in touched | set(overlay):
            if (stage / rel).is_file():
                want[rel] = (stage / rel, True)
            else:
                want.pop(rel, None)  # deleted by a patch
        return _sync(want, dest, progress)


def _same(src: Path, dst: Path, by_content: bool) -> bool:
    try:
        a, b = src.stat(), dst.stat()
    except FileNotFoundError:
        return False
    if a.st_size != b.st_size:
        return False
    if not by_content:
        # pristine files are copied with their mtime, so size + mtime identify them
        return a.st_mtime_ns == b.st_mtime_ns
    return src.read_bytes() == dst.read_bytes()


def _sync(want: dict[str, tuple[Path, bool]], dest: Path, progress: ProgressFn | None) -> SyncStats:
    stats = SyncStats()
    total = len(want)
    for i, (rel, (src, by_content)) in enumerate(sorted(want.items())):
        dst = dest / rel
        if _same(src, dst, by_content):
            stats.unchanged += 1
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.tmp")
            if by_content:
                shutil.copyfile(src, tmp)  # new mtime: make and ninja see the change
                shutil.copymode(src, tmp)
            else:
                shutil.copy2(src, tmp)
            os.replace(tmp, dst)
            stats.written += 1
        if progress and i % 500 == 0:
            progress(i, total, "syncing the patched tree")
    if dest.is_dir():
        for root, dirs, files in os.walk(dest, topdown=False):
            for name in files:
                full = Path(root) / name
                if full.relative_to(dest).as_posix() not in want:
                    full.unlink()
                    stats.removed += 1
            for d in dirs:
                with_path = Path(root) / d
                if not any(with_path.iterdir()):
                    with_path.rmdir()
    return stats


# --- step 4: cmake ----------------------------------------------------------------------------

_NINJA_PROGRESS = re.compile(r"^\[(\d+)/(\d+)\]")
_MAKE_PROGRESS = re.compile(r"^\[\s*(\d+)%\]")


def _run_logged(
    cmd: Sequence[str], log: TextIO, what: str, progress: ProgressFn | None, log_path: Path,
    cache: Path,
) -> None:  # fmt: skip
    """Run `cmd`, appending its output to `log`; report ninja/make progress; raise on failure."""
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    env = dict(os.environ)
    env.setdefault("CCACHE_SLOPPINESS", "time_macros")
    # Paths under the cache reach ccache relative to it, so another cache ($BITNET_CACHE of a
    # second checkout, CI's) with the same sources hits the same ccache entries.
    env.setdefault("CCACHE_BASEDIR", str(cache))
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            env=env,
        )  # fmt: skip
    except OSError as exc:
        raise ToolchainError(f"cannot run {cmd[0]}: {exc.strerror}.") from None
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        if progress:
            m = _NINJA_PROGRESS.match(line)
            if m:
                progress(int(m.group(1)), int(m.group(2)), what)
            else:
                m = _MAKE_PROGRESS.match(line)
                if m:
                    progress(int(m.group(1)), 100, what)
    rc = proc.wait()
    log.flush()
    if rc != 0:
        raise BuildError(
            f"{what} failed (exit {rc}); the full output is in {log_path}.",
            hint=f"fix the first error shown near the end of {log_path}, then {SETUP_HINT}",
        )


def log_tail(path: Path, n: int = 25) -> list[str]:
    """The last `n` lines of a build log (for error reports)."""
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def _drop_foreign_cmake_cache(plan: BuildPlan) -> None:
    """cmake refuses a build folder made for another source tree or generator: start it afresh."""
    cache = plan.build_dir / "CMakeCache.txt"
    try:
        text = cache.read_text(errors="replace")
    except OSError:
        return
    home = re.search(r"^CMAKE_HOME_DIRECTORY:INTERNAL=(.*)$", text, re.M)
    gen = re.search(r"^CMAKE_GENERATOR:INTERNAL=(.*)$", text, re.M)
    same_home = bool(home) and Path(home.group(1)).resolve() == plan.source.resolve()
    if not same_home or not gen or gen.group(1) != plan.toolchain.generator:
        cache.unlink()
        shutil.rmtree(plan.build_dir / "CMakeFiles", ignore_errors=True)


@dataclass
class BuildResult:
    bin_dir: Path
    built: bool  # False: it was up to date
    seconds: float
    log: Path | None = None
    sync: SyncStats | None = None


@contextmanager
def _cache_lock(cache: Path, progress: ProgressFn | None) -> Iterator[None]:
    """Hold the cache's build lock: two set-ups at once share the source tree and build folders,
    so the second waits for the first instead of writing the same files under it."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): builds are not serialised there
        yield
        return
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".build.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                progress(0, 0, "waiting for another build in this cache to finish")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield  # the lock goes with the file


def _built(build_dir: Path, stamp: str, targets: Sequence[str]) -> bool:
    """Whether `build_dir` holds a finished build with this stamp and every target."""
    old = read_stamp(build_dir)
    built = all((build_dir / "bin" / t).is_file() for t in targets)
    return bool(old and old.get("stamp") == stamp and built)


def run_build(plan: BuildPlan, progress: ProgressFn | None = None) -> BuildResult:
    """Carry out `plan` (see the module docstring); a no-op when it is up to date."""
    start = time.perf_counter()
    if plan.up_to_date:
        return BuildResult(plan.bin_dir, False, time.perf_counter() - start)
    with _cache_lock(plan.cache, progress):
        # Another set-up may have built exactly this while we waited.
        if _built(plan.build_dir, plan.stamp, plan.targets) and not plan.options.force:
            return BuildResult(plan.bin_dir, False, time.perf_counter() - start)
        return _run_build_locked(plan, progress, start)


def _run_build_locked(plan: BuildPlan, progress: ProgressFn | None, start: float) -> BuildResult:
    pin = plan.pin
    sdist = fetch_sdist(pin, plan.sdist.parent, progress)
    extract_pristine(sdist, pin, plan.pristine, progress)
    stats = make_source_tree(
        plan.pristine, plan.source, plan.patches, plan.overlay, plan.toolchain.patch,
        pin.upstream_commit, progress,
    )  # fmt: skip
    plan.build_dir.mkdir(parents=True, exist_ok=True)
    plan.stamp_file.unlink(missing_ok=True)  # a build that stops half-way is not up to date
    _drop_foreign_cmake_cache(plan)
    with open(plan.log_file, "w") as log:
        for cmd, what in (
            (plan.cmake_configure_cmd(), "cmake configure"),
            (plan.cmake_build_cmd(), "building llama.cpp"),
        ):
            _run_logged(cmd, log, what, progress, plan.log_file, plan.cache)
    missing = [t for t in plan.targets if not (plan.bin_dir / t).is_file()]
    if missing:
        raise BuildError(
            f"the build finished but {', '.join(missing)} is missing from {plan.bin_dir}.",
            hint=f"see {plan.log_file}",
        )
    stamp = {
        "stamp": plan.stamp,
        "cpu": plan.options.cpu,
        "llama_cpp": pin.upstream_commit,
        "patches": [p.name for p in plan.patches],
        "targets": list(plan.targets),
        "tl_shapes": _tl_shapes_of(plan),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    plan.stamp_file.write_text(json.dumps(stamp, indent=2) + "\n")
    return BuildResult(plan.bin_dir, True, time.perf_counter() - start, plan.log_file, stats)


def _tl_shapes_of(plan: BuildPlan) -> list[list]:
    """[type, M, K, BM, BK, bm] of every entry of the shape table the plan compiles in."""
    from bitnet.tools import codegen

    header = plan.overlay.get(f"{TL_SHAPES_DEST}/{codegen.HEADER_NAME}")
    if header is None:
        return []
    return sorted(list(e.key) for e in codegen.parse_header(header.read_text()))


def build(options: BuildOptions, progress: ProgressFn | None = None) -> BuildResult:
    """Plan and run a build."""
    return run_build(plan_build(options), progress)


# --- finding the binaries ---------------------------------------------------------------------


def build_dirs(cache: Path | None = None) -> list[Path]:
    """Existing build folders, `native` first, then the others."""
    cache = cache or default_cache()
    return [cache / f"build-{c}" for c in CPU_CHOICES if (cache / f"build-{c}").is_dir()]


def find_binary(name: str, cpu: str | None = None) -> Path:
    """Path of a built llama.cpp tool (`llama-cli`, `llama-server`, `rpc-server`, ...).

    `$BITNET_BUILD_DIR` (a build folder or its `bin/`) overrides the cache; otherwise the build
    for `cpu` (default: the first of native, generic, avx2, avx512 that exists) is used.
    """
    exe = BINARY_ALIASES.get(name, name)
    if os.name == "nt":
        exe += ".exe"
    env = os.environ.get("BITNET_BUILD_DIR")
    if env:
        dirs = [Path(env).expanduser() / "bin", Path(env).expanduser()]
    elif cpu:
        dirs = [default_cache() / f"build-{cpu}" / "bin"]
    else:
        dirs = [d / "bin" for d in build_dirs()]
    for d in dirs:
        cand = d / exe
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    where = env or (f"{default_cache()}/build-{cpu or 'native'}/bin")
    raise BuildError(
        f"{exe} is not built (looked in {where}).",
        hint=SETUP_HINT + (f" --cpu {cpu}" if cpu and cpu != "native" else ""),
    )


# --- optional: a model ------------------------------------------------------------------------


def prepare_model(
    source: str | Path,
    outtype: str = "i2_s",
    out: Path | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> Path:
    """Download (repo id) or take (folder) a checkpoint and convert it to `models/<name>/`.

    Thin wiring over `bitnet.tools.hub.resolve_source` and
    `bitnet.tools.convert.convert_checkpoint`; an existing output is kept unless `force`.
    """
    from .convert import convert_checkpoint
    from .hub import resolve_source

    name = str(source).rstrip("/").split("/")[-1] or "model"
    out = out or Path("models") / name / f"ggml-model-{outtype}.gguf"
    if not out.exists() or force:
        folder = resolve_source(source, progress=progress)
        convert_checkpoint(folder, out, outtype=outtype, force=force, progress=progress)
    if outtype.lower() in ("tl1", "tl2"):  # the build must serve the model's TL shapes
        ensure_tl_kernels(out, progress=progress)
    return out
