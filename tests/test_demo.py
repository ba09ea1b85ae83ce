"""`python -m safestore demo` runs and reports a clean run on both engines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_on_both_engines() -> None:
    """The demo writes every row with no error on SQLite and DuckDB, in under a minute."""
    proc = subprocess.run(
        [sys.executable, "-m", "safestore", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "safestore Store (sqlite, queue)     10000 rows  errors: 0" in out
    assert "safestore Store (duckdb, queue)     10000 rows  errors: 0" in out
    assert out.count("x the rows/s of the naive way") == 2


def test_demo_rejects_unknown_command() -> None:
    """An unknown command is an argparse error (exit status 2)."""
    proc = subprocess.run(
        [sys.executable, "-m", "safestore", "frobnicate"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
