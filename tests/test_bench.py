"""`python -m safestore bench` in its small mode: every strategy runs and is reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_bench_small_mode(tmp_path: Path) -> None:
    """The bench runs every workload and strategy, writes JSON, and finds every row."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "safestore",
            "bench",
            "--threads",
            "4",
            "--rows",
            "10",
            "--bulk-rows",
            "500",
            "--readers",
            "2",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "threads-wait" in proc.stdout and "ratio" in proc.stdout
    assert "threads-wait sqlite/full: safestore queue ..." in proc.stderr  # progress
    data = json.loads(out.read_text())
    results = data["results"]
    strategies = {(r["workload"], r["backend"], r["durability"], r["strategy"]) for r in results}
    for backend, durability in [("sqlite", "full"), ("sqlite", "normal"), ("duckdb", "full")]:
        for mode in ("queue", "lock"):
            assert ("threads-wait", backend, durability, f"safestore {mode}") in strategies
    assert ("threads-wait", "sqlite", "full", "sqlite3: shared connection + Lock") in strategies
    assert ("threads-wait", "duckdb", "full", "duckdb: cursor per thread (guide)") in strategies
    assert {r["workload"] for r in results} == {
        "threads-wait",
        "threads-nowait",
        "sequential",
        "bulk",
        "reads",
    }
    for r in results:
        assert r["rows_found"] == r["rows_expected"], r
        assert r["rows_per_s"] > 0, r
        if r["ours"]:
            assert r["errors"] == 0, r
            if r["workload"] != "reads":
                assert r["ratio"] is not None or r["workload"] == "threads-nowait", r
    reads = [r for r in results if r["workload"] == "reads"]
    assert {r["backend"] for r in reads} == {"sqlite", "duckdb"}
    for r in reads:  # the same two readers read idle, then during the writes
        extra = r["extra"]
        assert extra["readers"] == 2 and extra["reads"] >= 2, r
        assert extra["idle_reads"] == 2 * 500, r
        assert 0 < extra["idle_p50_ms"] <= extra["idle_p99_ms"], r
        assert extra["p99_over_idle"] == pytest.approx(r["p99_ms"] / extra["idle_p99_ms"]), r


@pytest.mark.parametrize("option", ["--threads", "--readers"])
def test_bench_rejects_bad_numbers(option: str) -> None:
    """--threads 0 or --readers 0 is refused with a clear message."""
    proc = subprocess.run(
        [sys.executable, "-m", "safestore", "bench", option, "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == 2
    assert f"{option} must be at least 1" in proc.stderr
