"""Writing outputs safely: to a temporary name first, renamed when complete."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputExistsError


def check_output(path: Path, force: bool) -> None:
    """Raise OutputExistsError if `path` exists and `force` is false."""
    if path.exists() and not force:
        raise OutputExistsError(
            f"{path} already exists.", hint="pass --force to overwrite it, or choose another -o"
        )


@contextlib.contextmanager
def atomic_output(path: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    On any exception the temporary file (or folder) is removed and `path` is left untouched.
    """
    path = Path(path)
    check_output(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            import shutil

            shutil.rmtree(path)  # only reached with force: check_output refused otherwise
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise
