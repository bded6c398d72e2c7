#!/usr/bin/env python3
"""Set up bitnet: install the package, build the patched llama.cpp, convert and run a model.

    python setup_env.py                       # venv, install, build, convert + run a tiny model
    python setup_env.py --cpu generic         # a build with no SIMD flags (kernels still dispatch)
    python setup_env.py --dry-run             # print the plan, change nothing
    python setup_env.py --hf-repo microsoft/bitnet-b1.58-2B-4T -q i2_s
    python setup_env.py --model-dir ./my-checkpoint
    python setup_env.py --dev --no-model      # CI: + the oracle extra (torch), no model

Stage 1 (this file, standard library only, so a bare `python3` runs it): create `.venv` in the
checkout unless a virtual environment is already active, `pip install -e .[test]` into it (with
--dev `.[test,oracle]`; skipped when pyproject.toml has not changed since the last install), then
re-run this file with the venv's python. Stage 2 calls `bitnet.tools.build`: fetch the pinned
llama.cpp sdist into $BITNET_CACHE (default ~/.cache/bitnet), patch it, build it; then installs
the Python bindings of that sdist without compiling anything (`bitnet.tools.bindings`). A second
run with nothing changed does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
STAGE_ENV = "BITNET_SETUP_STAGE"
INSTALL_MARK = ".bitnet-installed"


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
    return subprocess.call([str(python), "-c", "import bitnet.tools.build"], cwd=ROOT) == 0


def extras(args: argparse.Namespace) -> str:
    return "test,oracle" if args.dev else "test"


def install_stamp(args: argparse.Namespace) -> str:
    h = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    return h.hexdigest() + " " + extras(args)


def stage1(args: argparse.Namespace, argv: list[str]) -> int:
    if in_venv():
        python = Path(sys.executable)
        prefix = Path(sys.prefix)
        say(f"using the active virtual environment {prefix}")
    else:
        prefix = ROOT / ".venv"
        python = venv_python(prefix)
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
        say(f"installing bitnet: pip install -e {spec}")
        rc = subprocess.call([str(python), "-m", "pip", "install", "-e", spec], cwd=ROOT)
        if rc != 0:
            say("error: pip install failed (see its output above)")
            say("try: check the network and pip's index settings, then run: python setup_env.py")
            return rc
        mark.write_text(install_stamp(args) + "\n")

    env = dict(os.environ, **{STAGE_ENV: "2"})
    cmd = [str(python), str(Path(__file__).resolve()), *argv]
    if os.name == "nt":  # no exec on Windows
        return subprocess.call(cmd, env=env)
    os.execve(str(python), cmd, env)
    return 0  # not reached


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
    return stage1(args, argv)


if __name__ == "__main__":
    sys.exit(main())
