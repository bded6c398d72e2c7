"""Cross-compiling a small C test driver for aarch64 and running it under qemu-user, shared by
the NEON I2_S and the TL kernel tests (imported by name: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from bitnet.tools import kernels_lib

CROSS_CC = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64"

#: File helpers every driver starts with: read exactly n bytes, write n bytes (exit != 0 on error).
DRIVER_PRELUDE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static void *slurp(const char *path, size_t n) {
    FILE *f = fopen(path, "rb");
    if (!f) exit(4);
    void *p = malloc(n ? n : 1);
    if (fread(p, 1, n, f) != n) exit(5);
    fclose(f);
    return p;
}
static void spill(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n) exit(6);
    fclose(f);
}
"""


def _sanitizer_flags() -> tuple[str, ...]:
    """UBSan when $BITNET_SANITIZE asks for it (kernels_lib.SANITIZE_ENV). Static aarch64
    binaries under qemu-user take UBSan only: ASan needs a dynamic runtime and its shadow memory."""
    wanted = os.environ.get(kernels_lib.SANITIZE_ENV, "").split(",")
    if "undefined" not in wanted:
        return ()
    return ("-fsanitize=undefined", "-fno-sanitize-recover=all")


def cross_build(out_dir: Path, driver: str, sources: Sequence[Path], what: str) -> Path:
    """Build DRIVER_PRELUDE + `driver` with `sources` into a static aarch64 executable.

    Skips the calling test (naming `what` is untested) when the toolchain or qemu is missing.
    """
    missing = [t for t in (CROSS_CC, QEMU) if shutil.which(t) is None]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not installed (apt-get install gcc-aarch64-linux-gnu"
            f" qemu-user) — {what} not tested"
        )
    (out_dir / "driver.c").write_text(DRIVER_PRELUDE + driver)
    exe = out_dir / "driver"
    cmd = [CROSS_CC, "-O2", "-std=c11", "-static", *_sanitizer_flags(),
           f"-I{kernels_lib.kernels_dir()}",
           str(out_dir / "driver.c"), *map(str, sources), "-o", str(exe), "-lm"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return exe


def qemu(exe: Path, *args: object, cpu: str = "max") -> subprocess.CompletedProcess:
    """Run `exe` under qemu-user as CPU model `cpu` ("cortex-a53" has no dot product)."""
    return subprocess.run(
        [QEMU, "-cpu", cpu, str(exe), *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
