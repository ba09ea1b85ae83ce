"""Several processes on one SQLite file: no locking errors before `timeout`."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from tests.conftest import SCHEMA, WAIT, count

import safestore

ROOT = Path(__file__).resolve().parent.parent

WORKER = textwrap.dedent(
    """
    import os, sys, time
    import safestore
    path, me, rows, start_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    store = safestore.Store(path, timeout=120,
                            setup="CREATE TABLE IF NOT EXISTS t (p INTEGER, i INTEGER)")
    # Start together: wait (bounded) until the parent creates the start file.
    deadline = time.monotonic() + 120
    while not os.path.exists(start_file):
        if time.monotonic() > deadline:
            sys.exit("never started")
        time.sleep(0.005)
    for i in range(rows):
        store.insert("t", {"p": me, "i": i})
    store.close()
    """
)


def _many_processes(tmp_path: Path, n: int, rows: int) -> None:
    path = str(tmp_path / "shared.db")
    start = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, path, str(p), str(rows), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for p in range(n)
    ]
    start.touch()
    failures = []
    for p in procs:
        _, err = p.communicate(timeout=600)
        if p.returncode != 0:
            failures.append(err[-2000:])
    assert not failures, failures[0]
    with safestore.Store(path) as store:
        assert count(store) == n * rows
        assert store.query_one("SELECT count(DISTINCT p) FROM t") == (n,)


def test_fifty_processes_write_one_file(tmp_path: Path) -> None:
    """50 processes, each with its own Store, insert into one file: every row, no error."""
    _many_processes(tmp_path, 50, 20)


@pytest.mark.stress
@pytest.mark.timeout(900)
def test_five_hundred_processes_write_one_file(tmp_path: Path) -> None:
    """500 processes insert into one SQLite file at the same moment: every row lands."""
    _many_processes(tmp_path, 500, 5)


@pytest.mark.parametrize("mode", ["queue", "lock"])
def test_write_waits_for_another_process_lock(tmp_path: Path, mode: str) -> None:
    """A write blocked by another connection's lock waits, then succeeds (no 'locked')."""
    path = str(tmp_path / "a.db")
    with safestore.Store(path, mode=mode, setup=SCHEMA, timeout=WAIT) as store:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        started, done = threading.Event(), threading.Event()
        results: list[object] = []

        def write() -> None:
            started.set()
            try:
                results.append(store.insert("t", {"v": "a"}))
            except BaseException as exc:
                results.append(exc)
            done.set()

        t = threading.Thread(target=write)
        t.start()
        assert started.wait(WAIT)
        assert not done.wait(0.3), "the write did not wait for the lock"
        other.execute("COMMIT")
        other.close()
        assert done.wait(WAIT)
        t.join(WAIT)
        assert isinstance(results[0], safestore.Result), results
        assert count(store) == 1


@pytest.mark.parametrize("mode", ["queue", "lock"])
def test_lock_held_past_timeout_raises_timeout(tmp_path: Path, mode: str) -> None:
    """A lock held by another process past `timeout` ends in safestore.TimeoutError."""
    path = str(tmp_path / "a.db")
    with safestore.Store(path, mode=mode, setup=SCHEMA, timeout=0.5) as store:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(safestore.TimeoutError):
                store.insert("t", {"v": "a"})
        finally:
            other.execute("ROLLBACK")
            other.close()
        store.insert("t", {"v": "b"})
        assert store.query("SELECT v FROM t") == [("b",)]
