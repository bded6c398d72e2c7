"""llama-cpp-python's bindings over our llama.cpp build: install them, find the library, import.

The pinned llama.cpp source is the sdist of `llama-cpp-python` (third_party/llama-cpp.json), so
its Python bindings match our tree's C API exactly. `setup_env.py` installs them from the sdist
already in the cache with the package's CMake option `LLAMA_BUILD=OFF`: its build compiles
nothing and installs only the Python files. At run time `LLAMA_CPP_LIB_PATH` points them at the
`libllama.so` of our build (shared libraries, see tools/build.py), so llama.cpp is compiled once,
with our kernels, for both the command-line tools and `import bitnet`.
"""

from __future__ import annotations

import collections
import ctypes
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from .build import Pin, ProgressFn, build_dirs, default_cache, fetch_sdist, find_binary, load_pin
from .errors import BuildError, UsageError

#: The distribution and import names of the bindings.
DIST = "llama_cpp_python"
MODULE = "llama_cpp"
#: The library the bindings load; it finds libggml*.so through the build's RPATH.
LIB_NAME = "libllama.so"
LIB_ENV = "LLAMA_CPP_LIB_PATH"
SETUP_HINT = "run: python setup_env.py (it builds llama.cpp and installs the bindings)"


def installed_version() -> str | None:
    """The installed bindings' version, without importing them (None when absent)."""
    try:
        return metadata.version(DIST)
    except metadata.PackageNotFoundError:
        return None


def install_command(sdist: Path) -> tuple[list[str], dict[str, str]]:
    """pip command and environment that install the bindings from `sdist`, compiling nothing.

    `--no-deps`: their dependencies (numpy, jinja2, diskcache, typing-extensions) are bitnet's.
    """
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", str(sdist)]
    env = dict(os.environ, CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF")
    return cmd, env


def describe_install(pin: Pin) -> str:
    """The install step as a line of text (what `setup_env.py --dry-run` prints)."""
    if installed_version() == pin.version:
        return f"the Python bindings ({pin.package} {pin.version}) are installed"
    return (
        f"install the Python bindings of {pin.filename} with pip (LLAMA_BUILD=OFF: nothing is "
        "compiled; they load the libllama.so of this build)"
    )


def ensure_installed(cache: Path | None = None, progress: ProgressFn | None = None) -> bool:
    """Install the pinned bindings unless that version is installed; True if it installed."""
    pin = load_pin()
    if installed_version() == pin.version:
        return False
    sdist = fetch_sdist(pin, (cache or default_cache()) / "dl", progress)
    if progress:
        progress(0, 0, f"installing the Python bindings ({pin.package}=={pin.version})")
    cmd, env = install_command(sdist)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        last = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BuildError(
            f"installing the Python bindings from {sdist.name} failed: {last[0][:200]}",
            hint="re-run with BITNET_DEBUG=1, or: " + " ".join(cmd),
        )
    return True


def library_dir() -> Path:
    """The folder holding our build's libllama.so: `$LLAMA_CPP_LIB_PATH` if set, else the bin/ of
    the build `bitnet run` uses (`$BITNET_BUILD_DIR`, else the cache's native build first)."""
    env = os.environ.get(LIB_ENV)
    if env:
        cands = [Path(env).expanduser()]
    elif os.environ.get("BITNET_BUILD_DIR"):
        cands = [find_binary("llama-completion").parent]
    else:
        cands = [d / "bin" for d in build_dirs()]
    for d in cands:
        if (d / LIB_NAME).is_file():
            return d
    where = ", ".join(str(d) for d in cands) or "there is no llama.cpp build"
    raise BuildError(f"{LIB_NAME} of the llama.cpp build was not found ({where}).", hint=SETUP_HINT)


def load() -> Any:
    """Import the bindings (`llama_cpp`) on our build's libllama.so."""
    lib_dir = library_dir()
    os.environ[LIB_ENV] = str(lib_dir)  # read by llama_cpp when it is first imported
    try:
        import llama_cpp
    except ImportError as exc:
        raise BuildError(
            f"the Python bindings ({MODULE}) are not installed ({exc}).", hint=SETUP_HINT
        ) from exc
    except (OSError, RuntimeError) as exc:  # a library that does not load
        raise BuildError(f"cannot load {lib_dir / LIB_NAME}: {exc}", hint=SETUP_HINT) from exc
    loaded = Path(llama_cpp.llama_cpp._base_path).resolve()
    if loaded != lib_dir.resolve():
        raise UsageError(
            f"{MODULE} was already imported with the libraries in {loaded}, not bitnet's build "
            f"in {lib_dir}.",
            hint=f"call bitnet.load before importing {MODULE} yourself",
        )
    if _log_callback is None:
        _capture_log(llama_cpp)
    return llama_cpp


# --- llama.cpp's log ----------------------------------------------------------------------------

#: The last lines llama.cpp logged (to explain a failure), and whether to echo them to stderr.
log_tail: collections.deque[str] = collections.deque(maxlen=40)
echo_log = False
_log_callback: Any = None  # kept alive: llama.cpp holds a pointer to it


def _capture_log(llama_cpp: Any) -> None:
    """Route llama.cpp's log into `log_tail` (echoed with `echo_log`). The bindings' own filter
    reads the pinned ggml's log levels off by one (WARN as ERROR), so warnings would print."""
    global _log_callback

    @llama_cpp.llama_log_callback
    def on_log(level: int, text: bytes, user_data: Any) -> None:
        line = text.decode("utf-8", "replace")
        log_tail.append(line)
        if echo_log:
            sys.stderr.write(line)

    llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
    _log_callback = on_log
