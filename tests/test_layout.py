"""The checkout never shadows an installed package: its folders import only as `bitnet.*`."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Top-level folders of the checkout that are packages only under `bitnet.` (pyproject.toml), and
#: whose bare names are also packages on PyPI.
BARE_NAMES = ("kernels", "tools", "cli", "third_party")


def _locations(name: str) -> list[Path]:
    spec = importlib.util.find_spec(name)
    if spec is None:
        return []
    found = list(spec.submodule_search_locations or [])
    if spec.origin and spec.has_location:
        found.append(spec.origin)
    return [Path(p).resolve() for p in found]


@pytest.mark.parametrize("name", BARE_NAMES)
def test_a_bare_name_does_not_resolve_into_the_checkout(name: str) -> None:
    # (The venv may live in the checkout too: only the folder of that name is the shadow.)
    inside = [p for p in _locations(name) if p.is_relative_to(ROOT / name)]
    assert not inside, f"`import {name}` resolves into the checkout: {inside}"


def test_python_m_pytest_from_the_checkout_does_not_shadow_either() -> None:
    # `python -m pytest` (cwd = the checkout, which it puts first on sys.path) is the common way
    # to run a suite; the check above must hold under it too, not only under `pytest`.
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"{Path(__file__).name}::test_a_bare_name_does_not_resolve_into_the_checkout"],
        cwd=ROOT / "tests", capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"tests/{Path(__file__).name}::test_a_bare_name_does_not_resolve_into_the_checkout"],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_package_maps_every_folder_under_bitnet() -> None:
    import bitnet.cli
    import bitnet.kernels
    import bitnet.third_party
    import bitnet.tools

    for mod, folder in (
        (bitnet.cli, "cli"),
        (bitnet.tools, "tools"),
        (bitnet.kernels, "kernels"),
        (bitnet.third_party, "third_party"),
    ):
        assert Path(mod.__file__).resolve().parent == ROOT / folder


# --- the lock of the test environment ----------------------------------------------------------


def _setup_env():
    spec = importlib.util.spec_from_file_location("setup_env", ROOT / "setup_env.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _name(requirement: str) -> str:
    import re

    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_lock_pins_every_dependency_of_the_tested_extras() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [
        r for extra in ("test", "oracle") for r in project["optional-dependencies"][extra]
    ]
    pins = _setup_env().read_lock(ROOT / "requirements" / "test.lock")
    missing = sorted({_name(r) for r in wanted} - pins.keys())
    assert not missing, f"requirements/test.lock lacks {missing}: run python setup_env.py --lock"


def test_lock_lines_drop_local_labels_and_round_trip() -> None:
    se = _setup_env()
    pins = se.read_lock_text("# c\nTorch==2.13.0+cpu\nquicktok_v1==0.4.0\nbitnet @ file:///x\n")
    assert pins == {"torch": "2.13.0", "quicktok-v1": "0.4.0"}
    assert se.read_lock_text(se.lock_text(pins)) == pins
