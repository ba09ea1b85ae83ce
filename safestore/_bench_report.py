"""The output side of `python -m safestore bench`: ratios, the table, JSON and a chart.

_bench.py measures and hands over a list of `Outcome`s; this module only reads them
(and sets `Outcome.ratio`), after every workload has finished, in the main thread.
The ratio compares within a group of one workload, backend and durability: safestore's
rows/s over the best alternative of that group that ran without errors (one whose calls
failed did less work, so its rows/s do not compare).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._bench import Outcome

__all__ = ["plot", "render", "set_ratios", "write_json"]


def set_ratios(results: list[Outcome]) -> None:
    """Set `ratio` on each of safestore's results (see the legend `render` prints)."""
    groups: dict[tuple[str, str, str], list[Outcome]] = {}
    for r in results:
        groups.setdefault((r.workload, r.backend, r.durability), []).append(r)
    for members in groups.values():
        alternatives = [m.rows_per_s for m in members if not m.ours and m.errors == 0]
        best = max(alternatives, default=0.0)
        for m in members:
            if m.ours and best:
                m.ratio = m.rows_per_s / best


def render(results: list[Outcome]) -> str:
    """The results as a text table."""
    head = f"{'workload':<15} {'backend':<7} {'dur.':<6} {'strategy':<38} {'rows/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'rows':>9} {'ratio':>7}"
    lines = [head, "-" * len(head)]
    for r in results:
        ratio = f"{r.ratio:.1f}x" if r.ratio is not None else ""
        rows = f"{r.rows_found}" + (
            "" if r.rows_found == r.rows_expected else f"/{r.rows_expected}"
        )
        lines.append(
            f"{r.workload:<15} {r.backend:<7} {r.durability:<6} {r.strategy:<38} "
            f"{r.rows_per_s:>10,.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.errors:>6} {rows:>9} {ratio:>7}"
        )
        if r.extra.get("idle_p99_ms"):
            n = int(r.extra.get("readers", 1))
            idle = f"  the same {n} readers, no writes" if n > 1 else "  the same reader, no writes"
            lines.append(
                f"{'':<15} {'':<7} {'':<6} {idle:<38} {'':>10} "
                f"{r.extra['idle_p50_ms']:>8.2f} {r.extra['idle_p99_ms']:>8.2f} {'':>6} {'':>9} "
                f"{r.extra['p99_over_idle']:>6.1f}x"
            )
    lines.append(
        "ratio: safestore's rows/s over the best error-free alternative in the same group;"
    )
    lines.append(
        "       for 'reads': the readers' p99 latency during the write storm over their idle p99."
    )
    return "\n".join(lines)


def plot(results: list[Outcome], file: str) -> None:
    """Bar chart of rows/s per strategy, one panel per (workload, backend, durability)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the optional extra
        raise SystemExit("--plot needs matplotlib: pip install 'safestore[plot]'") from exc
    groups: dict[str, list[Outcome]] = {}
    for r in results:
        if r.workload != "reads":
            groups.setdefault(f"{r.workload} / {r.backend} / {r.durability}", []).append(r)
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 2.2 * len(groups)), squeeze=False)
    for ax, (title, members) in zip(axes[:, 0], groups.items(), strict=True):
        names = [m.strategy for m in members]
        values = [m.rows_per_s for m in members]
        colors = ["tab:green" if m.ours else "tab:gray" for m in members]
        ax.barh(names, values, color=colors)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("rows/s", fontsize=7)
    fig.tight_layout()
    fig.savefig(file, dpi=110)


def write_json(results: list[Outcome], file: str, threads: int, rows: int) -> None:
    """The results and the machine they ran on, as JSON in `file`."""
    Path(file).write_text(
        json.dumps(
            {
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
                "sqlite": sqlite3.sqlite_version,
                "threads": threads,
                "rows": rows,
                "results": [asdict(r) for r in results],
            },
            indent=2,
        )
    )
