"""Build and run the libFuzzer harness over llama.cpp's GGUF loader (tests/fuzz/fuzz_load.cpp).

    .venv/bin/python tests/fuzz/fuzz.py build              # the sanitizer build, cached by content
    .venv/bin/python tests/fuzz/fuzz.py run --seconds 60   # regressions, then fuzz for 60 s
    .venv/bin/python tests/fuzz/fuzz.py seeds -o DIR       # write the seed corpus only

The harness is compiled with clang (-fsanitize=fuzzer,address,undefined) and linked against
llama.cpp's own libraries (llama, ggml, ggml-base, ggml-cpu), built from the same patched tree as
the product build (tools/build.py: pin, patches, kernels/), with the same sanitizers and nothing
else (no tools, server, RPC or OpenMP). The build lives outside the checkout, in
`$BITNET_CACHE/fuzz` (default ~/.cache/bitnet/fuzz), with a stamp of every input (the product
build's stamp inputs, the harness, the compiler and its flags): an unchanged tree is not rebuilt,
and ccache (when installed) keeps a changed one to the changed files.

The seed corpus is made here from a fixed seed (one tiny `bitnet dummy` checkpoint converted to
I2_S, TL1, TL2 and TQ2_0, and the I2_S file in Microsoft's published layout: arch `bitnet-25`,
file type 137, as tests/test_e2e.py checks; plus files that once crashed or leaked, made the same
way: an out-of-range file type, an architecture that is not a string): the same bytes on every
run. Files that once crashed the harness live in tests/fuzz/regressions/ (committed); `run`
replays them first, then fuzzes with seeds + regressions + the working corpus (kept in the cache)
and the dictionary gguf.dict.
Exit code: 0 when nothing was found, libFuzzer's code (non-zero) otherwise, with the crashing
input written to the cache's artifacts folder and named on stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bitnet.tools import build as B
from bitnet.tools.errors import BitnetError

HERE = Path(__file__).resolve().parent
HARNESS = HERE / "fuzz_load.cpp"
DICT = HERE / "gguf.dict"
REGRESSIONS = HERE / "regressions"

SANITIZE = "-fsanitize=address,undefined"
#: Compile flags of llama.cpp and the harness: sanitizers, coverage (fuzzer-no-link), line tables
#: for readable reports, -O1 (builds fast, keeps reports exact). UBSan findings are fatal, except
#: -fsanitize=function: ggml calls every vec_dot (e.g. ggml_vec_dot_f16, whose arguments are
#: ggml_fp16_t pointers) through one generic function-pointer type, on every F16 matmul.
CFLAGS = (
    f"{SANITIZE},fuzzer-no-link -fno-sanitize=function -fno-sanitize-recover=all "
    "-fno-omit-frame-pointer "
    "-gline-tables-only -O1 " + B._NO_AMX
)
#: llama.cpp's libraries that the harness links (static), in link order.
LIBS = ("src/libllama.a", "ggml/src/libggml.a", "ggml/src/libggml-cpu.a", "ggml/src/libggml-base.a")
#: What the loader and one decode need; everything else of the product build is left out.
CMAKE_FLAGS = {
    "CMAKE_BUILD_TYPE": "",
    "BUILD_SHARED_LIBS": "OFF",
    "LLAMA_CURL": "OFF",
    "LLAMA_OPENSSL": "OFF",
    "LLAMA_BUILD_COMMON": "OFF",
    "LLAMA_BUILD_TESTS": "OFF",
    "LLAMA_BUILD_EXAMPLES": "OFF",
    "LLAMA_BUILD_TOOLS": "OFF",
    "LLAMA_BUILD_SERVER": "OFF",
    "LLAMA_BUILD_APP": "OFF",
    "LLAMA_BUILD_UI": "OFF",
    "LLAMA_USE_PREBUILT_UI": "OFF",
    "GGML_RPC": "OFF",
    "GGML_OPENMP": "OFF",  # ggml's own thread pool: libgomp is not instrumented
    "GGML_NATIVE": "ON",
    "CMAKE_C_FLAGS": CFLAGS,
    "CMAKE_CXX_FLAGS": CFLAGS,
}
#: libFuzzer options of every run: bounded memory per input, no hangs, the GGUF dictionary.
FUZZ_OPTIONS = ("-rss_limit_mb=2048", "-malloc_limit_mb=1024", "-timeout=20", "-max_len=262144")
#: ASan/UBSan options: leak checks on, and reports that name source lines.
SAN_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:symbolize=1",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    "GGML_NO_BACKTRACE": "1",  # an abort reports through libFuzzer, not a gdb attach
}


def say(msg: str) -> None:
    """Progress to stderr (stdout stays libFuzzer's)."""
    sys.stderr.write(f"fuzz: {msg}\n")
    sys.stderr.flush()


def clang() -> tuple[str, str]:
    """clang and clang++ (from $FUZZ_CC / $FUZZ_CXX, else PATH); SystemExit when missing."""
    cc = os.environ.get("FUZZ_CC") or shutil.which("clang")
    cxx = os.environ.get("FUZZ_CXX") or shutil.which("clang++")
    if not cc or not cxx:
        hint = "try: apt-get install clang libclang-rt-dev"
        raise SystemExit(f"error: clang is not installed\n{hint}")
    return cc, cxx


def fuzz_dir() -> Path:
    return B.default_cache() / "fuzz"


def _stamp(plan: B.BuildPlan, flags: dict[str, str], cc: str) -> str:
    h = hashlib.sha256()
    h.update(plan.stamp.encode())  # pin, patches, kernels/ and the TL shape table
    h.update(json.dumps(flags, sort_keys=True).encode())
    h.update(HARNESS.read_bytes())
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    h.update(version.encode())
    return h.hexdigest()


def build(jobs: int | None = None) -> Path:
    """Build (or reuse) the sanitizer build of llama.cpp and link the harness; return its path."""
    cc, cxx = clang()
    plan = B.plan_build(B.BuildOptions(cpu="native"))
    tc = plan.toolchain
    flags = dict(CMAKE_FLAGS, CMAKE_C_COMPILER=cc, CMAKE_CXX_COMPILER=cxx)
    flags["GGML_CCACHE"] = "ON" if tc.ccache else "OFF"
    flags["LLAMA_BUILD_COMMIT"] = f"{plan.pin.upstream_commit}-bitnet-fuzz"
    stamp = _stamp(plan, flags, cc)
    root = fuzz_dir()
    build_dir, exe = root / "build", root / "fuzz_load"
    stamp_file = root / "stamp.json"
    try:
        old = json.loads(stamp_file.read_text()).get("stamp")
    except (OSError, ValueError):
        old = None
    if old == stamp and exe.is_file():
        say(f"sanitizer build up to date ({exe})")
        return exe
    start = time.perf_counter()
    sdist = B.fetch_sdist(plan.pin, plan.sdist.parent)
    B.extract_pristine(sdist, plan.pin, plan.pristine)
    B.make_source_tree(
        plan.pristine, plan.source, plan.patches, plan.overlay, tc.patch, plan.pin.upstream_commit
    )
    build_dir.mkdir(parents=True, exist_ok=True)
    stamp_file.unlink(missing_ok=True)
    log_path = root / "build.log"
    configure = [tc.cmake, "-S", str(plan.source), "-B", str(build_dir), "-G", tc.generator]
    configure += [f"-D{k}={v}" for k, v in flags.items()]
    jobs = jobs or os.cpu_count() or 1
    make = [tc.cmake, "--build", str(build_dir), "-j", str(jobs), "--target", "llama"]
    say(f"building llama.cpp with ASan + UBSan + coverage in {build_dir} (log: {log_path})")
    with open(log_path, "w") as log:
        B._run_logged(configure, log, "cmake configure (fuzz)", None, log_path, plan.cache)
        B._run_logged(make, log, "building llama.cpp (fuzz)", None, log_path, plan.cache)
        link = [
            cxx, *CFLAGS.split(), "-fsanitize=fuzzer", "-std=c++17", str(HARNESS),
            "-I", str(plan.source / "include"), "-I", str(plan.source / "ggml" / "include"),
            "-Wl,--start-group", *(str(build_dir / lib) for lib in LIBS), "-Wl,--end-group",
            "-lpthread", "-ldl", "-lm", "-o", str(exe),
        ]  # fmt: skip
        B._run_logged(link, log, "linking the fuzz harness", None, log_path, plan.cache)
    stamp_file.write_text(json.dumps({"stamp": stamp, "built_in_s": time.perf_counter() - start}))
    say(f"built {exe} in {time.perf_counter() - start:.0f} s")
    return exe


# --- the seed corpus --------------------------------------------------------------------------

#: The seed model: the TL test shapes (hidden 256, ffn 256: every (M, K) is in the committed TL
#: shape table), one layer, the smallest vocabulary, Q4_0 embeddings: about 100 KB per file.
SEED_SHAPE = {"hidden": 256, "ffn": 256, "layers": 1, "heads": 2, "kv_heads": 1, "ctx": 64}
SEED_TYPES = ("i2_s", "tl1", "tl2", "tq2_0")
#: A `general.file_type` no llama_ftype can hold (the enum tops out at LLAMA_FTYPE_GUESSED = 1024).
OUT_OF_RANGE_FILE_TYPE = 63013


def make_seeds(out: Path) -> list[Path]:
    """Write the seed corpus into `out` (deterministic bytes); return the files."""
    from bitnet.tools.constants import GGUFValueType
    from bitnet.tools.convert import convert_checkpoint
    from bitnet.tools.dummy import make_dummy
    from bitnet.tools.gguf import GGUFReader, GGUFWriter, rewrite_arch
    from bitnet.tools.hf_tokenizer import MIN_SPECIALS

    out.mkdir(parents=True, exist_ok=True)
    files = []
    with tempfile.TemporaryDirectory(prefix="bitnet-fuzz-") as tmp:
        vocab = 256 + MIN_SPECIALS
        ckpt = make_dummy(Path(tmp) / "ckpt", preset="tiny", seed=0, vocab=vocab, **SEED_SHAPE)
        for qtype in SEED_TYPES:
            dst = out / f"seed-{qtype}.gguf"
            convert_checkpoint(ckpt, dst, outtype=qtype, embedding_type="q4_0", force=True)
            files.append(dst)
        official = out / "seed-i2_s-microsoft-layout.gguf"
        rewrite_arch(out / "seed-i2_s.gguf", official, "bitnet-25", 137)  # Microsoft's layout
        files.append(official)
        # A file type past llama_ftype's range: once undefined behaviour in the loader (fuzz find).
        damaged = out / "seed-tq2_0-file-type-63013.gguf"
        arch = GGUFReader(out / "seed-tq2_0.gguf").kv["general.architecture"]
        rewrite_arch(out / "seed-tq2_0.gguf", damaged, arch, OUT_OF_RANGE_FILE_TYPE)
        files.append(damaged)
        # general.architecture not a string: the loader threw before owning the metadata's ggml
        # context, which leaked (a fuzz find, patch 0015); LeakSanitizer checks it every run.
        not_a_string = out / "seed-arch-not-a-string.gguf"
        w = GGUFWriter(not_a_string)
        w.add_kv("general.architecture", 7, GGUFValueType.INT8)
        w.write(lambda name: b"")
        files.append(not_a_string)
    return files


# --- running ------------------------------------------------------------------------------------


def run(seconds: int, jobs: int | None, extra: list[str]) -> int:
    """Replay the regressions, then fuzz for `seconds`; libFuzzer's exit code."""
    exe = build(jobs)
    root = fuzz_dir()
    seeds, work, artifacts = root / "seeds", root / "corpus", root / "artifacts"
    shutil.rmtree(seeds, ignore_errors=True)
    make_seeds(seeds)
    work.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **SAN_ENV)
    common = [*FUZZ_OPTIONS, f"-artifact_prefix={artifacts}/"]
    regressions = sorted(p for p in REGRESSIONS.glob("*") if p.is_file())
    if regressions:
        say(f"replaying {len(regressions)} regression files")
        rc = subprocess.run([str(exe), *common, *map(str, regressions)], env=env).returncode
        if rc != 0:
            return rc
    say(f"fuzzing for {seconds} s (corpus: {work})")
    cmd = [
        str(exe), *common, f"-dict={DICT}", f"-max_total_time={seconds}", "-print_final_stats=1",
        *extra, str(work), str(seeds), *([str(REGRESSIONS)] if regressions else []),
    ]  # fmt: skip
    return subprocess.run(cmd, env=env).returncode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pb = sub.add_parser("build", help="build the sanitizer build and the harness")
    pr = sub.add_parser("run", help="replay regressions, then fuzz for --seconds")
    ps = sub.add_parser("seeds", help="write the seed corpus")
    for q in (pb, pr):
        q.add_argument("-j", "--jobs", type=int, help="build jobs (default: all cores)")
    pr.add_argument("--seconds", type=int, default=60, help="fuzzing time (default 60)")
    pr.add_argument("extra", nargs="*", help="more libFuzzer options (after --)")
    ps.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    args = p.parse_args()
    try:
        _main(args)
    except BitnetError as exc:  # one error line, as the CLI does
        raise SystemExit(f"error: {exc}" + (f"\ntry: {exc.hint}" if exc.hint else "")) from None


def _main(args: argparse.Namespace) -> None:
    if args.cmd == "build":
        build(args.jobs)
    elif args.cmd == "seeds":
        for f in make_seeds(args.out):
            say(f"{f} ({f.stat().st_size} bytes)")
    else:
        sys.exit(run(args.seconds, args.jobs, args.extra))


if __name__ == "__main__":
    main()
