#!/usr/bin/env python3
"""Set up bitnet: install the package, build the patched llama.cpp, convert and run a model.

    python setup_env.py                       # venv, install, build, convert + run a tiny model
    python setup_env.py --cpu generic         # a build with no SIMD flags (kernels still dispatch)
    python setup_env.py --dry-run             # print the plan, change nothing
    python setup_env.py --hf-repo microsoft/bitnet-b1.58-2B-4T -q i2_s
    python setup_env.py --model-dir ./my-checkpoint
    python setup_env.py --dev --no-model      # tests: + the oracle extra (torch), locked, no model
    python setup_env.py --check-updates       # newest allowed releases in a scratch venv + suite
    python setup_env.py --lock                # the same, then rewrite requirements/test.lock

Stage 1 (this file, standard library only, so a bare `python3` runs it): create `.venv` in the
checkout unless a virtual environment is already active, `pip install -e .[test]` into it (with
--dev `.[test,oracle]` at the exact versions of requirements/test.lock; skipped when neither
pyproject.toml nor the lock changed since the last install), then re-run this file with the
venv's python. Stage 2 calls `bitnet.tools.build`: fetch the pinned llama.cpp sdist into
$BITNET_CACHE (default ~/.cache/bitnet), patch it, build it; then installs the Python bindings of
that sdist without compiling anything (`bitnet.tools.bindings`). A second run with nothing
changed does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
STAGE_ENV = "BITNET_SETUP_STAGE"
INSTALL_MARK = ".bitnet-installed"
#: Exact versions of everything the test + oracle extras install (a pip constraints file).
LOCK = ROOT / "requirements" / "test.lock"

# `python setup_env.py` puts the checkout first on sys.path, where its folders `kernels/`,
# `tools/`, `cli/` would shadow PyPI packages of those names; they import only as `bitnet.*`.
sys.path[:] = [p for p in sys.path if Path(p or os.getcwd()).resolve() != ROOT]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="setup_env.py",
        description="Install bitnet and build its patched llama.cpp (and optionally a model).",
    )
    p.add_argument(
        "--cpu",
        default="native",
        choices=("native", "generic", "avx2", "avx512"),
        help="instruction set of the llama.cpp build (default: native = this machine's CPU)",
    )
    p.add_argument("-j", "--jobs", type=int, default=None, help="parallel compile jobs")
    p.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    p.add_argument("--force", action="store_true", help="rebuild (and reconvert) even if current")
    p.add_argument("--skip-install", action="store_true", help="do not run pip install")
    p.add_argument(
        "--dev",
        action="store_true",
        help="also install the oracle extra (torch + transformers) for the full test suite",
    )
    p.add_argument(
        "--no-lock",
        action="store_true",
        help="with --dev: resolve the extras from pyproject.toml's ranges, not the lock "
        "(requirements/test.lock)",
    )
    p.add_argument(
        "--new-venv",
        action="store_true",
        help="delete the checkout's .venv and make it anew (CI: nothing left from an earlier run)",
    )
    upd = p.add_mutually_exclusive_group()
    upd.add_argument(
        "--check-updates",
        action="store_true",
        help="install the newest releases pyproject.toml allows into a scratch venv, run the "
        "tests there and list what differs from requirements/test.lock",
    )
    upd.add_argument(
        "--lock",
        action="store_true",
        help="as --check-updates, then rewrite requirements/test.lock if the tests pass",
    )
    p.add_argument(
        "--no-model",
        action="store_true",
        help="only install and build (by default a model is converted and run: the one named "
        "by --hf-repo/--model-dir, else a tiny one made from a seed)",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--hf-repo", metavar="ID", help="download this Hugging Face repo and convert it"
    )
    src.add_argument("--model-dir", metavar="DIR", help="convert this local checkpoint folder")
    p.add_argument(
        "-q", "--quant-type", default="i2_s", help="ternary type of the converted model (i2_s)"
    )
    p.add_argument(
        "--tl-shapes",
        action="append",
        default=[],
        metavar="MODEL",
        help="also build TL1/TL2 kernels for this GGUF / HF folder's shapes (repeatable)",
    )
    p.add_argument("--model-out", metavar="PATH", help="output GGUF (default: models/<name>/...)")
    return p.parse_args(argv)


def say(msg: str) -> None:
    # Stage 1 runs before bitnet (and its output module) is installed.
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


# --- stage 1: a venv with bitnet installed ----------------------------------------------------


def in_venv() -> bool:
    return sys.prefix != getattr(sys, "base_prefix", sys.prefix)


def venv_python(venv_dir: Path) -> Path:
    sub = "Scripts/python.exe" if os.name == "nt" else "bin/python"
    return venv_dir / sub


def importable(python: Path) -> bool:
    # Run outside the checkout, where `python -c` would put it on sys.path (see the top).
    code = subprocess.call([str(python), "-c", "import bitnet.tools.build"], cwd=python.parent)
    return code == 0


def extras(args: argparse.Namespace) -> str:
    return "test,oracle" if args.dev else "test"


def locked(args: argparse.Namespace) -> bool:
    return args.dev and not args.no_lock


def install_cmd(python: Path, args: argparse.Namespace) -> list[str]:
    cmd = [str(python), "-m", "pip", "install", "-e", f".[{extras(args)}]"]
    return cmd + ["-c", str(LOCK)] if locked(args) else cmd


def install_stamp(args: argparse.Namespace) -> str:
    h = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    if locked(args):
        h.update(LOCK.read_bytes())
    return h.hexdigest() + " " + extras(args) + (" locked" if locked(args) else "")


def stage1(args: argparse.Namespace, argv: list[str]) -> int:
    if in_venv() and not args.new_venv:
        python = Path(sys.executable)
        prefix = Path(sys.prefix)
        say(f"using the active virtual environment {prefix}")
    else:
        prefix = ROOT / ".venv"
        python = venv_python(prefix)
        if args.new_venv and prefix.exists() and not args.dry_run:
            say(f"--new-venv: deleting {prefix}")
            shutil.rmtree(prefix)
        if not python.exists():
            if args.dry_run:
                say(f"would create a virtual environment in {prefix}")
                say("would run: pip install -e .[test], then build llama.cpp (plan needs bitnet)")
                return 0
            say(f"no virtual environment is active: creating {prefix}")
            venv.EnvBuilder(with_pip=True).create(prefix)
        else:
            say(f"using the virtual environment {prefix}")

    mark = prefix / INSTALL_MARK
    current = mark.read_text().strip() if mark.exists() else ""
    spec = f".[{extras(args)}]"
    if args.dry_run and not current and not importable(python):
        say(f"would run: pip install -e {spec}, then build llama.cpp (the plan needs bitnet)")
        return 0
    if args.skip_install or args.dry_run:
        pass
    elif current == install_stamp(args):
        say("bitnet is already installed (pyproject.toml unchanged)")
    else:
        cmd = install_cmd(python, args)
        say("installing bitnet: " + " ".join(["pip", *cmd[3:]]).replace(str(ROOT) + os.sep, ""))
        rc = subprocess.call(cmd, cwd=ROOT)
        if rc != 0:
            say("error: pip install failed (see its output above)")
            if locked(args):
                say(
                    "try: check the network; if a locked version has no build for this Python, "
                    "run: python setup_env.py --dev --no-lock"
                )
            else:
                say("try: check the network and pip's settings, then run: python setup_env.py")
            return rc
        mark.write_text(install_stamp(args) + "\n")

    env = dict(os.environ, **{STAGE_ENV: "2"})
    cmd = [str(python), str(Path(__file__).resolve()), *argv]
    if os.name == "nt":  # no exec on Windows
        return subprocess.call(cmd, env=env)
    os.execve(str(python), cmd, env)
    return 0  # not reached


# --- the lock: what the test + oracle extras install -------------------------------------------


def read_lock(path: Path) -> dict[str, str]:
    """{normalised name: version} of a constraints file (absent: empty)."""
    return read_lock_text(path.read_text()) if path.exists() else {}


def frozen(python: Path) -> dict[str, str]:
    """What `pip freeze` reports in a venv, without bitnet itself and without local version
    labels (`torch==2.13.0+cpu` locks `2.13.0`: the CPU wheel here, the PyPI wheel elsewhere)."""
    out = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--exclude-editable"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return read_lock_text(out)


def read_lock_text(text: str) -> dict[str, str]:
    """{normalised name: version} of `name==version` lines; local labels (`+cpu`) dropped."""
    pins = {}
    for line in text.splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.split("+", 1)[0].strip()
    return pins


def lock_text(pins: dict[str, str]) -> str:
    head = (
        "# Exact versions of everything `pip install -e .[test,oracle]` installs, used as pip\n"
        "# constraints by `python setup_env.py --dev` and .ci/run. Refresh deliberately with\n"
        "# `python setup_env.py --lock` (resolves the newest releases pyproject.toml allows in a\n"
        "# scratch venv, runs the test suite there, rewrites this file only if it passes).\n"
        f"# Resolved on CPython {sys.version.split()[0]}, {os.uname().machine}.\n"
    )
    return head + "".join(f"{n}=={v}\n" for n, v in sorted(pins.items()))


def check_updates(args: argparse.Namespace) -> int:
    """Install the newest releases the extras allow into a scratch venv, set up and run the tests
    with it, report how they differ from the lock, and (with --lock) rewrite the lock if green."""
    scratch = Path(tempfile.mkdtemp(prefix="bitnet-updates-"))
    try:
        say(f"making a scratch virtual environment in {scratch}")
        venv.EnvBuilder(with_pip=True).create(scratch)
        python = venv_python(scratch)
        env = {k: v for k, v in os.environ.items() if k not in (STAGE_ENV, "VIRTUAL_ENV")}
        # The normal set-up, unlocked, with the scratch venv's python (so it installs there).
        rc = subprocess.call(
            [str(python), str(ROOT / "setup_env.py"), "--dev", "--no-lock", "--no-model",
             "--cpu", args.cpu],
            cwd=ROOT, env=env,
        )  # fmt: skip
        if rc != 0:
            say("error: the newest allowed releases did not install or build (see above)")
            return rc
        new, old = frozen(python), read_lock(LOCK)
        changed = sorted(n for n in new.keys() | old.keys() if new.get(n) != old.get(n))
        for name in changed:
            say(f"  {name}: {old.get(name, '-')} -> {new.get(name, '-')}")
        say(f"{len(changed)} difference(s) from {LOCK.relative_to(ROOT)}; running the tests")
        before = LOCK.read_bytes() if LOCK.exists() else None
        if args.lock:  # the suite checks the lock too, so it runs with the new one in place
            write_atomic(LOCK, lock_text(new).encode())
        rc = subprocess.call([str(python), "-m", "pytest", "-q", "-x"], cwd=ROOT, env=env)
        if rc != 0:
            if args.lock and before is not None:  # only a lock the suite passed with is kept
                write_atomic(LOCK, before)
            elif args.lock:
                LOCK.unlink()
            say(f"error: the tests fail with the newest allowed releases (pytest exit code {rc})")
            say("try: pin the release that broke them in pyproject.toml, or fix the code")
            return rc or 1
        say("the tests pass with the newest allowed releases")
        if args.lock:
            say(f"wrote {LOCK.relative_to(ROOT)}: commit it")
        return 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name beside `path`, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --- stage 2: build (inside the venv) ---------------------------------------------------------


def stage2(args: argparse.Namespace) -> int:
    from bitnet.cli import _output as out
    from bitnet.cli._errors import exit_code_for
    from bitnet.tools import bindings
    from bitnet.tools import build as B
    from bitnet.tools.errors import BitnetError, BuildError, debug_enabled

    plan = None
    try:
        plan = B.plan_build(
            B.BuildOptions(
                cpu=args.cpu, jobs=args.jobs, force=args.force, tl_shapes=tuple(args.tl_shapes)
            )
        )
        if args.dry_run:
            for line in B.describe(plan):
                out.data(line)
            out.data(bindings.describe_install(plan.pin))
            if (args.hf_repo or args.model_dir) and not args.no_model:
                out.data(
                    f"then convert {args.hf_repo or args.model_dir} to {args.quant_type} "
                    f"({args.model_out or 'models/<name>/ggml-model-' + args.quant_type + '.gguf'})"
                )
            return 0
        if plan.up_to_date:
            out.info(f"llama.cpp is up to date in {plan.build_dir}")
        else:
            out.info(
                f"building llama.cpp {plan.pin.upstream_commit} + {len(plan.patches)} patches "
                f"(--cpu {args.cpu}, {plan.jobs} jobs) in {plan.build_dir}"
            )
            with out.progress("building llama.cpp") as bar:
                res = B.run_build(plan, bar)
            out.info(f"built in {res.seconds:.0f} s; binaries in {res.bin_dir}")
        with out.progress("installing the Python bindings") as bar:
            start = time.perf_counter()
            if bindings.ensure_installed(plan.cache, bar):
                out.info(
                    f"installed the Python bindings ({plan.pin.package} {plan.pin.version}, "
                    f"nothing compiled) in {time.perf_counter() - start:.0f} s"
                )
        if not args.no_model:
            source = args.hf_repo or args.model_dir
            if source is None:
                # No model named: the main job runs on a tiny checkpoint made here from a seed.
                from bitnet.tools.dummy import make_dummy

                source = ROOT / "models" / "bitnet-tiny-hf"
                if not source.exists():
                    out.info(f"no model named: making a tiny random BitNet checkpoint in {source}")
                    make_dummy(source, preset="tiny", layout="packed", seed=0)
            with out.progress("preparing the model") as bar:
                path = B.prepare_model(
                    source,
                    args.quant_type,
                    Path(args.model_out) if args.model_out else None,
                    args.force,
                    bar,
                )
            out.info(f"model ready: {path}; generating (greedy) from it:")
            from bitnet.tools import runtime

            runtime.generate(
                path,
                "Once upon a time",
                runtime.GenerationOptions(n_predict=24, temperature=0.0, seed=0),
            )
            out.data("")
            out.info(f"next: .venv/bin/bitnet run -m {path} -p 'Hello' -n 64")
        return 0
    except BitnetError as exc:
        code, default_hint = exit_code_for(exc)
        if debug_enabled():
            import traceback

            traceback.print_exc()
        if plan is not None and isinstance(exc, BuildError) and str(plan.log_file) in str(exc):
            for line in B.log_tail(plan.log_file):
                out.info(line)
        out.error(str(exc), exc.hint or default_hint)
        return code
    except KeyboardInterrupt:
        out.error("interrupted")
        return 130


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if os.environ.get(STAGE_ENV) == "2":
        return stage2(args)
    if args.check_updates or args.lock:
        return check_updates(args)
    return stage1(args, argv)


if __name__ == "__main__":
    sys.exit(main())
