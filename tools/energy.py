"""Energy of a benchmark: measured with Linux RAPL where the machine has it, else estimated.

Measured: Intel/AMD RAPL counters under `/sys/class/powercap/intel-rapl:*` (ref: Linux
`Documentation/power/powercap/powercap.rst`). Each zone has `name` ("package-0", "core",
"uncore", "dram", "psys"), `energy_uj` (a monotonically increasing counter in microjoules that
wraps to 0 after `max_energy_range_uj`) and sub-zones `intel-rapl:N:M`. We read the package
zones and the DRAM zones; core/uncore are parts of a package (counting them would count twice)
and psys overlaps everything. RAPL measures the whole socket, including other processes.
Since Linux 5.10 `energy_uj` is readable by root only (CVE-2020-8694): then we say so and fall
back to the estimate.

Estimated (virtual machines, like ours, and anything without RAPL):

    E = CPU seconds of the benchmark process × watts per busy core
      + bytes moved to/from DRAM (modelled from the GGUF, see bandwidth.py) × joules per byte

Both constants are options of `bitnet bench` (`--cpu-watts`, `--dram-pj-per-byte`); the
defaults and their sources are DEFAULT_CPU_WATTS and DEFAULT_DRAM_PJ_PER_BYTE below. An estimate
is always labelled "estimated" — never reported as if it were measured.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BitnetError, UsageError

#: Where the kernel exposes RAPL (the `intel-rapl` powercap control type; AMD uses it too).
POWERCAP_ROOT = Path("/sys/class/powercap")

#: Watts drawn per busy core. ref: Intel Xeon Platinum 8480+ (Sapphire Rapids, the CPU family of
#: this project's build machine): 350 W TDP over 56 cores = 6.25 W per core at full load, the
#: core's share of package power including uncore. Desktop parts land close to it (e.g. 65 W
#: over 8 cores ≈ 8 W); bitnet.cpp's script instead charges a fixed 200 W × utilisation, which
#: bills a 2-thread run as if it used a whole server socket.
DEFAULT_CPU_WATTS = 6.25

#: DRAM energy per byte moved, in picojoules. ref: M. Horowitz, "Computing's energy problem
#: (and what we can do about it)", ISSCC 2014, energy table (45 nm): a 64-bit DRAM access costs
#: 1.3-2.6 nJ; the low end over 8 bytes is 162.5 pJ/byte (20 pJ/bit). Newer DDR4/DDR5 cost less
#: per byte, so this errs high; DRAM is a small share of the total either way (docs/bench.md).
DEFAULT_DRAM_PJ_PER_BYTE = 162.5

#: Zone names we add up: packages and DRAM (see the module docstring for the others).
_COUNTED = ("package", "dram")


class RaplUnavailable(BitnetError):
    """RAPL counters are absent, unreadable or not advancing on this machine."""


# --- RAPL -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RaplDomain:
    """One RAPL zone: `key` is unique ("package-0", "dram", "dram-1" ...)."""

    key: str
    name: str
    path: Path
    max_range_uj: int

    def read_uj(self) -> int:
        return int((self.path / "energy_uj").read_text().strip())


@dataclass
class RaplMeter:
    """Read a set of RAPL zones together; `delta_joules` turns two readings into joules."""

    domains: list[RaplDomain]

    def read(self) -> dict[str, int]:
        """Raw counters in microjoules, keyed by domain key."""
        return {d.key: d.read_uj() for d in self.domains}

    def delta_joules(self, before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
        """Joules per domain between two readings; a counter that wrapped is unwrapped once.

        The counter runs from 0 to max_energy_range_uj and then restarts at 0, so a reading
        smaller than the one before means it wrapped: add the range back (readings are taken
        far more often than one wrap, which takes minutes even at hundreds of watts).
        """
        out: dict[str, float] = {}
        for d in self.domains:
            diff = after[d.key] - before[d.key]
            if diff < 0:
                diff += d.max_range_uj + 1
            out[d.key] = diff / 1e6
        return out


def _permission_error(path: Path) -> RaplUnavailable:
    return RaplUnavailable(
        f"RAPL energy counters exist but {path} is readable by root only "
        "(Linux >= 5.10, CVE-2020-8694), so energy cannot be measured.",
        hint="run as root, or allow reading: sudo chmod o+r "
        "/sys/class/powercap/intel-rapl:*/energy_uj (bench falls back to an estimate)",
    )


def find_rapl(root: Path = POWERCAP_ROOT) -> RaplMeter:
    """The package and DRAM RAPL zones under `root`, each checked readable.

    Raises RaplUnavailable (one sentence saying why) when there are none or they cannot be read.
    """
    root = Path(root)
    zones = sorted(p for p in root.glob("intel-rapl:*") if p.is_dir()) if root.is_dir() else []
    if not zones:
        raise RaplUnavailable(
            f"this machine has no RAPL energy counters ({root}/intel-rapl:* not found; "
            "virtual machines usually hide them).",
            hint="energy is reported as an estimate; see docs/bench.md",
        )
    found: list[tuple[str, Path, int]] = []
    for z in zones:
        try:
            name = (z / "name").read_text().strip()
            if not name.startswith(_COUNTED):
                continue
            rng = int((z / "max_energy_range_uj").read_text().strip())
            int((z / "energy_uj").read_text().strip())  # readable now, or fail here
        except PermissionError:
            raise _permission_error(z / "energy_uj") from None
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise _permission_error(z / "energy_uj") from None
            continue  # a zone without counters (some psys or firmware zones): skip it
        except ValueError:
            continue
        found.append((name, z, rng))
    if not found:
        raise RaplUnavailable(
            f"{root} has RAPL zones but none for a package or DRAM.",
            hint="energy is reported as an estimate; see docs/bench.md",
        )
    counts: dict[str, int] = {}
    for name, _, _ in found:
        counts[name] = counts.get(name, 0) + 1
    seen: dict[str, int] = {}
    domains = []
    for name, path, rng in found:
        key = name
        if counts[name] > 1:  # e.g. one "dram" zone per socket
            key = f"{name}-{seen.get(name, 0)}"
            seen[name] = seen.get(name, 0) + 1
        domains.append(RaplDomain(key, name, path, rng))
    return RaplMeter(domains)


# --- the estimate -----------------------------------------------------------------------------


@dataclass(frozen=True)
class EnergyModel:
    """How energy is obtained for one bench run; goes into the report as `energy_model`."""

    method: str  # "measured" (RAPL) or "estimated"
    cpu_watts: float = DEFAULT_CPU_WATTS
    dram_pj_per_byte: float = DEFAULT_DRAM_PJ_PER_BYTE
    domains: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def dram_joules_per_byte(self) -> float:
        return self.dram_pj_per_byte * 1e-12

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"method": self.method, "note": self.note}
        if self.method == "measured":
            d.update(source="RAPL (/sys/class/powercap)", domains=list(self.domains))
        else:
            d.update(
                formula="cpu_seconds * cpu_watts + dram_bytes * dram_pj_per_byte * 1e-12",
                cpu_watts=self.cpu_watts,
                cpu_watts_source="Intel Xeon Platinum 8480+: 350 W TDP / 56 cores",
                dram_pj_per_byte=self.dram_pj_per_byte,
                dram_source="Horowitz, ISSCC 2014: 1.3 nJ per 64-bit DRAM access",
            )
        return d


def estimate_joules(
    cpu_seconds: float,
    dram_bytes: float,
    cpu_watts: float = DEFAULT_CPU_WATTS,
    dram_pj_per_byte: float = DEFAULT_DRAM_PJ_PER_BYTE,
) -> dict[str, float]:
    """The estimate's parts in joules: {"cpu": ..., "dram": ..., "total": ...}."""
    cpu = cpu_seconds * cpu_watts
    dram = dram_bytes * dram_pj_per_byte * 1e-12
    return {"cpu": cpu, "dram": dram, "total": cpu + dram}


def choose_meter(
    mode: str = "auto",
    root: Path = POWERCAP_ROOT,
    cpu_watts: float = DEFAULT_CPU_WATTS,
    dram_pj_per_byte: float = DEFAULT_DRAM_PJ_PER_BYTE,
) -> tuple[RaplMeter | None, EnergyModel]:
    """(meter or None, model) for `mode`: "auto" (RAPL if readable, else estimate), "rapl"
    (RAPL or RaplUnavailable) or "estimate". The model's `note` says why RAPL was not used."""
    if mode not in ("auto", "rapl", "estimate"):
        raise UsageError(f"unknown energy mode {mode!r}; choose auto, rapl or estimate.")
    if cpu_watts < 0 or dram_pj_per_byte < 0:
        raise UsageError("--cpu-watts and --dram-pj-per-byte must not be negative.")
    if mode == "estimate":
        return None, EnergyModel("estimated", cpu_watts, dram_pj_per_byte, note="asked for")
    try:
        meter = find_rapl(root)
    except RaplUnavailable as exc:
        if mode == "rapl":
            raise
        return None, EnergyModel("estimated", cpu_watts, dram_pj_per_byte, note=str(exc))
    keys = [d.key for d in meter.domains]
    return meter, EnergyModel("measured", cpu_watts, dram_pj_per_byte, domains=keys)


# --- CPU time of a running process -------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int, proc: Path = Path("/proc")) -> float | None:
    """User + system CPU seconds of process `pid` (all its threads, including exited ones).

    From `/proc/<pid>/stat` fields 14 and 15 (clock ticks; ref: proc(5)); None where there is
    no /proc or the process is gone.
    """
    try:
        raw = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may contain spaces: split after it
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (IndexError, ValueError):
        return None
