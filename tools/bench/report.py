"""The report's schema (report.schema.json, beside this file) and its views: table, CSV, plot."""

from __future__ import annotations

import csv
import functools
import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..fsutil import atomic_output, check_output

#: The JSON Schema (2020-12) of `bitnet bench --json`, a data file of this package.
SCHEMA_FILE = "report.schema.json"


@functools.cache
def report_schema() -> dict[str, Any]:
    """The report's JSON Schema, read from the package's report.schema.json."""
    text = resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def schema_id() -> str:
    """The `schema` value every report carries ("bitnet-bench/1")."""
    return str(report_schema()["properties"]["schema"]["const"])


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def _fmt_ts(x: float) -> str:
    return f"{x:.0f}" if x >= 1000 else f"{x:.2f}"


def energy_label(report: dict[str, Any]) -> str:
    """'estimated' or 'measured' — how every J/token of this report was obtained."""
    return str(report["energy_model"]["method"])


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(columns, rows) of the result table, one row per test."""
    models = report["models"]
    label = energy_label(report)
    cols = ["model", "type", "size", "bpw", "threads", "test", "t/s mean ± sd", "median",
            "min", "max", "peak RSS", f"J/token ({label})", "% of bw bound"]  # fmt: skip
    with_ratio = any(r.get("vs_baseline") for r in report["results"])
    if with_ratio:
        cols += ["speed × base", "J/token × base"]
    rows = []
    for r in report["results"]:
        m = models[r["model"]]
        ts = r["tokens_per_second"]
        jpt = r["energy"]["joules_per_token"]
        pct = (r.get("bound") or {}).get("percent")
        row = [
            m["name"],
            m["type"],
            _fmt_bytes(m["file_size"]),
            f"{m['bpw']:.2f}",
            str(r["threads"]),
            r["test"],
            f"{_fmt_ts(ts['mean'])} ± {_fmt_ts(ts['stddev'])}",
            _fmt_ts(ts["median"]),
            _fmt_ts(ts["min"]),
            _fmt_ts(ts["max"]),
            _fmt_bytes(r["peak_rss_bytes"]),
            (f"{jpt:.3g}" + (" est." if label == "estimated" else "")) if jpt is not None else "-",
            f"{pct:.0f}%" if pct is not None else "-",
        ]
        if with_ratio:
            v = r.get("vs_baseline") or {}
            row += [
                f"{v['speed']:.2f}×" if v.get("speed") else "-",
                f"{v['energy_per_token']:.2f}×" if v.get("energy_per_token") else "-",
            ]
        rows.append(row)
    return cols, rows


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The lines printed under the table: bandwidth, traffic per token, how energy was got."""
    lines = []
    bws = report["bandwidth"]
    if bws:
        parts = [f"{b['threads']} thread(s) {b['bytes_per_second'] / 1e9:.1f} GB/s" for b in bws]
        lines.append(
            f"read bandwidth (NumPy streaming probe, {_fmt_bytes(bws[0]['buffer_bytes'])} buffer, "
            f"best of {bws[0]['passes']}): " + "; ".join(parts)
        )
    for m in report["models"]:
        t = m["traffic"]
        head = "tied head: whole embedding read" if t["tied_head"] else "untied head"
        lines.append(
            f"{m['name']}: {_fmt_bytes(t['weight_bytes'])} of weights read per generated token "
            f"({head}) + {_fmt_bytes(t['kv_bytes_per_position'])} of KV per context position"
        )
    em = report["energy_model"]
    if em["method"] == "measured":
        lines.append(
            "energy: MEASURED with RAPL (" + ", ".join(em.get("domains", [])) + "; whole "
            "socket, other processes included), timed repetitions only"
        )
    return lines


CSV_COLUMNS = (
    "model", "path", "type", "file_size", "n_params", "bpw", "bpw_linears", "threads", "test",
    "n_prompt", "n_gen", "depth", "repetitions", "ts_mean", "ts_median", "ts_min", "ts_max",
    "ts_stddev", "peak_rss_bytes", "energy_method", "joules", "joules_per_token",
    "bytes_per_token", "bandwidth_bytes_per_second", "bound_tokens_per_second",
    "bound_percent", "speed_vs_baseline", "energy_vs_baseline",
)  # fmt: skip


def csv_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat rows for --csv (CSV_COLUMNS)."""
    rows = []
    for r in report["results"]:
        m = report["models"][r["model"]]
        ts, bound, vs = r["tokens_per_second"], r.get("bound") or {}, r.get("vs_baseline") or {}
        rows.append(
            {
                "model": m["name"], "path": m["path"], "type": m["type"],
                "file_size": m["file_size"], "n_params": m["n_params"], "bpw": m["bpw"],
                "bpw_linears": m["bpw_linears"], "threads": r["threads"], "test": r["test"],
                "n_prompt": r["n_prompt"], "n_gen": r["n_gen"], "depth": r["depth"],
                "repetitions": r["repetitions"], "ts_mean": ts["mean"],
                "ts_median": ts["median"], "ts_min": ts["min"], "ts_max": ts["max"],
                "ts_stddev": ts["stddev"], "peak_rss_bytes": r["peak_rss_bytes"],
                "energy_method": r["energy"]["method"], "joules": r["energy"]["joules"],
                "joules_per_token": r["energy"]["joules_per_token"],
                "bytes_per_token": bound.get("bytes_per_token"),
                "bandwidth_bytes_per_second": bound.get("bandwidth_bytes_per_second"),
                "bound_tokens_per_second": bound.get("tokens_per_second"),
                "bound_percent": bound.get("percent"),
                "speed_vs_baseline": vs.get("speed"),
                "energy_vs_baseline": vs.get("energy_per_token"),
            }
        )  # fmt: skip
    return rows


def write_csv(report: dict[str, Any], path: Path, force: bool = False) -> Path:
    """Write the results as CSV (through a temporary file)."""
    with atomic_output(Path(path), force) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        w.writeheader()
        for row in csv_rows(report):
            w.writerow({k: "" if v is None else v for k, v in row.items()})
    return Path(path)


def require_matplotlib() -> Any:
    """matplotlib.pyplot with the file-only Agg backend, or UsageError saying how to get it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed.",
            hint="pip install 'bitnet[plot]' (or pip install matplotlib)",
        ) from None
    return plt


def check_outputs(paths: Iterable[Path | None], force: bool) -> None:
    """Refuse existing outputs before anything runs (a bench can take long)."""
    for p in paths:
        if p is not None:
            check_output(Path(p), force)


def write_plot(report: dict[str, Any], path: Path, force: bool = False) -> Path:
    """tokens/s by threads (one line per model, min-max as error bars) for pp and tg, and
    J/token per model, labelled measured or estimated."""
    plt = require_matplotlib()
    label = energy_label(report)
    models = report["models"]
    kinds = [("pp", "prompt processing"), ("tg", "generation")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, (kind, title) in zip(axes[:2], kinds, strict=False):
        for mi, m in enumerate(models):
            rs = sorted(
                (r for r in report["results"] if r["model"] == mi and r["test"].startswith(kind)),
                key=lambda r: r["threads"],
            )
            if not rs:
                continue
            xs = [r["threads"] for r in rs]
            ys = [r["tokens_per_second"]["mean"] for r in rs]
            lo = [y - r["tokens_per_second"]["min"] for y, r in zip(ys, rs, strict=True)]
            hi = [r["tokens_per_second"]["max"] - y for y, r in zip(ys, rs, strict=True)]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=m["name"])
        ax.set_title(f"{title} (tokens/s)")
        ax.set_xlabel("threads")
        ax.set_xticks(sorted({r["threads"] for r in report["results"]}) or [1])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    ax = axes[2]
    tg = [r for r in report["results"] if r["test"].startswith("tg")] or report["results"]
    names = [f"{models[r['model']]['name']}\nt={r['threads']}" for r in tg]
    vals = [r["energy"]["joules_per_token"] or 0.0 for r in tg]
    ax.bar(range(len(vals)), vals, color="tab:gray" if label == "estimated" else "tab:green")
    ax.set_xticks(range(len(vals)), names, fontsize=7)
    ax.set_title(f"J/token, {tg[0]['test'] if tg else ''} — {label.upper()}")
    ax.set_ylabel(f"J/token ({label})")
    if label == "estimated":
        ax.set_xlabel("ESTIMATED, no RAPL here: CPU time × W/core + DRAM bytes × pJ/B", fontsize=8)
    fig.suptitle(f"bitnet bench — {report['host']['cpu']}", fontsize=10)
    fig.tight_layout()
    with atomic_output(Path(path), force) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)
