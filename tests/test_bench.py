"""`python -m safestore bench` in its small mode: every strategy runs and is reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import in_thread

import safestore
from safestore import _bench

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


def _seeded(path: Path) -> safestore.Store:
    store = safestore.Store(path, setup=_bench.TABLE)
    store.insert("bench", [{"thread": -1, "seq": i, "payload": "s"} for i in range(_bench.SEED)])
    return store


def test_bench_readers_stop_when_the_storm_fails(tmp_path: Path) -> None:
    """A storm that raises (an interrupt, say) still stops the readers; nothing hangs."""

    def storm() -> float:
        raise RuntimeError("storm failed")

    with _seeded(tmp_path / "r.db") as store:
        query = _bench.SEED_QUERY["sqlite"]
        with pytest.raises(RuntimeError, match="storm failed"):
            in_thread(lambda: _bench._read_latencies(store, query, 2, storm, lambda *a: None))


def test_bench_counts_wrong_reads(tmp_path: Path) -> None:
    """Every read that returns a wrong answer is counted, idle and during the storm."""
    failures: list[str] = []
    with _seeded(tmp_path / "r.db") as store:
        idle, during, wrong, _ = in_thread(
            lambda: _bench._read_latencies(
                store, "SELECT 1, 2", 2, lambda: 0.0, lambda what, exc: failures.append(what)
            )
        )
    assert len(idle) == 2 * _bench.IDLE_READS
    assert wrong == len(idle) + len(during) + 2  # and each reader's untimed first read
    assert failures == []  # wrong answers, not failed calls
