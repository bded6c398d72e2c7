"""Energy: the RAPL reader on fake sysfs trees, and the arithmetic of the estimate."""

from __future__ import annotations

import pathlib
from pathlib import Path

import pytest

from bitnet.tools import energy as E

MAX_RANGE = 262143328850  # a real package zone's max_energy_range_uj


def _zone(root: Path, name: str, zone: str, energy: int, max_range: int = MAX_RANGE) -> Path:
    d = root / zone
    d.mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{energy}\n")
    (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    return d


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    """A socket with package, core, uncore and DRAM zones, plus psys (like an Intel laptop)."""
    root = tmp_path / "powercap"
    _zone(root, "package-0", "intel-rapl:0", 1_000_000)
    _zone(root, "core", "intel-rapl:0:0", 500_000)
    _zone(root, "uncore", "intel-rapl:0:1", 100_000)
    _zone(root, "dram", "intel-rapl:0:2", 2_000_000, max_range=65532610987)
    _zone(root, "psys", "intel-rapl:1", 9_000_000)
    (root / "intel-rapl").mkdir()  # the control type folder itself is not a zone
    return root


def _set(root: Path, zone: str, value: int) -> None:
    (root / zone / "energy_uj").write_text(f"{value}\n")


def test_finds_package_and_dram_only(sysfs: Path) -> None:
    meter = E.find_rapl(sysfs)
    assert [(d.key, d.name) for d in meter.domains] == [
        ("package-0", "package-0"),
        ("dram", "dram"),
    ]
    assert meter.read() == {"package-0": 1_000_000, "dram": 2_000_000}


def test_delta_in_joules_for_two_domains(sysfs: Path) -> None:
    meter = E.find_rapl(sysfs)
    before = meter.read()
    _set(sysfs, "intel-rapl:0", 13_500_000)  # +12.5 J
    _set(sysfs, "intel-rapl:0:2", 2_750_000)  # +0.75 J
    assert meter.delta_joules(before, meter.read()) == pytest.approx(
        {"package-0": 12.5, "dram": 0.75}
    )


def test_wrap_around_is_unwrapped(sysfs: Path) -> None:
    meter = E.find_rapl(sysfs)
    _set(sysfs, "intel-rapl:0", MAX_RANGE - 1_000_000)  # 1 J before the top
    before = meter.read()
    _set(sysfs, "intel-rapl:0", 2_000_000)  # wrapped: 1 J to the top, 1 µJ to 0, 2 J after
    after = meter.read()
    assert meter.delta_joules(before, after)["package-0"] == pytest.approx(3.000001)
    assert meter.delta_joules(before, after)["dram"] == 0.0


def test_two_sockets_get_unique_keys(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    _zone(root, "package-0", "intel-rapl:0", 1)
    _zone(root, "dram", "intel-rapl:0:0", 1)
    _zone(root, "package-1", "intel-rapl:1", 1)
    _zone(root, "dram", "intel-rapl:1:0", 1)
    keys = [d.key for d in E.find_rapl(root).domains]
    assert sorted(keys) == ["dram-0", "dram-1", "package-0", "package-1"]


def test_no_rapl_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(E.RaplUnavailable, match="no RAPL energy counters"):
        E.find_rapl(tmp_path / "absent")
    root = tmp_path / "powercap"
    _zone(root, "psys", "intel-rapl:1", 5)
    with pytest.raises(E.RaplUnavailable, match="none for a package or DRAM"):
        E.find_rapl(root)


@pytest.fixture
def unreadable(monkeypatch: pytest.MonkeyPatch) -> None:
    """energy_uj raises EACCES, as for a non-root user on Linux >= 5.10 (tests may run as
    root, who can read a chmod 000 file, so the denial is simulated)."""
    real = pathlib.Path.read_text

    def read_text(self: Path, *a, **k) -> str:
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)


def test_permission_denied_says_why_and_what_to_do(sysfs: Path, unreadable: None) -> None:
    with pytest.raises(E.RaplUnavailable) as info:
        E.find_rapl(sysfs)
    msg = str(info.value)
    assert "readable by root only" in msg and "energy_uj" in msg
    assert "chmod" in (info.value.hint or "")


def test_auto_falls_back_to_an_estimate_and_says_why(sysfs: Path, unreadable: None) -> None:
    meter, model = E.choose_meter("auto", sysfs)
    assert meter is None
    assert model.method == "estimated"
    assert "readable by root only" in model.note
    with pytest.raises(E.RaplUnavailable):
        E.choose_meter("rapl", sysfs)


def test_choose_meter_modes(sysfs: Path) -> None:
    meter, model = E.choose_meter("auto", sysfs)
    assert meter is not None and model.method == "measured"
    assert model.to_dict()["domains"] == ["package-0", "dram"]
    meter, model = E.choose_meter("estimate", sysfs)
    assert meter is None and model.method == "estimated"
    from bitnet.tools.errors import UsageError

    with pytest.raises(UsageError):
        E.choose_meter("guess", sysfs)
    with pytest.raises(UsageError):
        E.choose_meter("estimate", sysfs, cpu_watts=-1)


def test_estimate_arithmetic() -> None:
    # 4 CPU-seconds at 6.25 W = 25 J; 1e9 bytes at 162.5 pJ/B = 0.1625 J
    parts = E.estimate_joules(4.0, 1e9, cpu_watts=6.25, dram_pj_per_byte=162.5)
    assert parts["cpu"] == pytest.approx(25.0)
    assert parts["dram"] == pytest.approx(0.1625)
    assert parts["total"] == pytest.approx(25.1625)
    assert E.estimate_joules(0, 0)["total"] == 0


def test_estimated_model_is_labelled_with_its_sources() -> None:
    d = E.EnergyModel("estimated", 6.25, 162.5, note="no RAPL").to_dict()
    assert d["method"] == "estimated"
    assert d["cpu_watts"] == 6.25 and d["dram_pj_per_byte"] == 162.5
    assert "Horowitz" in d["dram_source"] and "TDP" in d["cpu_watts_source"]
    assert "formula" in d


def test_process_cpu_seconds_parses_proc_stat(tmp_path: Path) -> None:
    # the command name may hold spaces and parentheses; utime/stime are fields 14/15
    fields = ["S"] + ["0"] * 10 + ["250", "50"] + ["0"] * 30
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "stat").write_text("42 (llama bench (x)) " + " ".join(fields) + "\n")
    assert E.process_cpu_seconds(42, tmp_path) == pytest.approx(300 / E._CLK_TCK)
    assert E.process_cpu_seconds(43, tmp_path) is None
