"""Calls that would break the store's promises are refused at once, with a clear error."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import SCHEMA, WAIT, count, db_path, freeze

import safestore

ROOT = Path(__file__).resolve().parent.parent


CONTROL = ["BEGIN", "COMMIT", "ROLLBACK", "END", "  -- c\n rollback", ";COMMIT", " ; /* */ ;commit"]


@pytest.mark.parametrize("sql", CONTROL)
def test_execute_refuses_transaction_control(store: safestore.Store, sql: str) -> None:
    """execute("ROLLBACK") could undo other callers' acknowledged writes: refused,
    also after empty statements (";"), which the engine skips."""
    store.insert("t", {"v": "kept"})
    with pytest.raises(safestore.ProgrammingError, match="BEGIN/COMMIT/ROLLBACK"):
        store.execute(sql)
    assert store.query("SELECT v FROM t") == [("kept",)]


@pytest.mark.parametrize(
    "sql", ["SAVEPOINT safestore_call", "RELEASE Safestore_Merge", "; ROLLBACK TO safestore_call"]
)
def test_execute_refuses_safestores_own_savepoints(store: safestore.Store, sql: str) -> None:
    """The savepoints that keep each write call atomic cannot be taken over; names that
    merely contain the word are the user's (a table safestore_log)."""
    if store.backend != "sqlite":
        pytest.skip("DuckDB has no savepoints")
    with pytest.raises(safestore.ProgrammingError, match="own savepoints"):
        store.execute(sql)
    store.execute("CREATE TABLE safestore_log (v TEXT)")
    store.insert("safestore_log", {"v": "safestore_x"})
    assert store.query("SELECT v FROM safestore_log") == [("safestore_x",)]
    store.execute("DROP TABLE safestore_log")


@pytest.mark.parametrize("sql", [";COMMIT", "; ROLLBACK"])
def test_transaction_block_refuses_transaction_control(store: safestore.Store, sql: str) -> None:
    """Inside a transaction() block a COMMIT would commit half of the block: refused,
    and the block still commits whole or not at all."""
    with store.transaction() as tx:
        tx.insert("t", {"v": "first"})
        with pytest.raises(safestore.ProgrammingError):
            tx.execute(sql)
        tx.insert("t", {"v": "second"})
    assert sorted(r[0] for r in store.query("SELECT v FROM t")) == ["first", "second"]
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.insert("t", {"v": "undone"})
        with pytest.raises(safestore.ProgrammingError):
            tx.execute(sql)
        raise RuntimeError("the block fails")
    assert count(store) == 2


def test_rollback_in_a_group_cannot_undo_others(store: safestore.Store) -> None:
    """A ROLLBACK queued between two inserts in one group fails alone; both inserts stay."""
    gate, held = freeze(store)
    a = store.insert("t", {"v": "a"}, wait=False)
    bad = store.execute("ROLLBACK", wait=False)
    c = store.insert("t", {"v": "c"}, wait=False)
    gate.release()
    held.result(WAIT)
    assert a.result(WAIT).rowcount == 1
    assert isinstance(bad.exception(WAIT), safestore.ProgrammingError)
    assert c.result(WAIT).rowcount == 1
    assert sorted(r[0] for r in store.query("SELECT v FROM t")) == ["a", "c"]


def test_run_cannot_commit_on_sqlite(make_store: Callable[..., safestore.Store]) -> None:
    """SQLite: a run() function that commits gets ProgrammingError; its work is undone."""
    store = make_store(setup=SCHEMA)
    if store.backend != "sqlite":
        pytest.skip("DuckDB runs each run() function in a transaction of its own")

    def fn(conn: Any) -> None:
        conn.execute("INSERT INTO t (v) VALUES ('x')")
        conn.commit()

    with pytest.raises(safestore.ProgrammingError, match="run\\(\\) function cannot"):
        store.run(fn)
    assert count(store) == 0
    # Savepoints of its own are fine.
    store.run(lambda c: (c.execute("SAVEPOINT mine"), c.execute("RELEASE mine")))


def test_lastrowid_of_insert_into_another_table(store: safestore.Store) -> None:
    """lastrowid is the inserted row's, even when it equals the previous insert's."""
    if store.backend != "sqlite":
        pytest.skip("DuckDB has no rowid")
    store.execute("CREATE TABLE u (id INTEGER PRIMARY KEY, a TEXT)")
    assert store.execute("INSERT INTO t (v) VALUES ('x')").lastrowid == 1
    assert store.execute("INSERT INTO u (a) VALUES ('y')").lastrowid == 1
    assert store.execute("UPDATE u SET a = 'z'").lastrowid is None


def test_waiting_on_itself_is_refused_at_once(make_store: Callable[..., safestore.Store]) -> None:
    """flush()/close()/store writes inside one's own transaction or run() raise at once."""
    store = make_store(setup=SCHEMA, timeout=WAIT)
    start = time.monotonic()
    with store.transaction() as tx:
        tx.insert("t", {"v": "a"})
        for call in (store.flush, store.close, lambda: store.insert("t", {"v": "b"})):
            with pytest.raises(safestore.StoreError, match="transaction"):
                call()
    # Queue mode: the writer would wait for itself. Lock mode: the lock is reentrant,
    # so the write would run inside the run() function's transaction and be undone
    # with it, after having been acknowledged.
    calls = (
        lambda: store.execute("DELETE FROM t"),
        lambda: store.insert("t", {"v": "inner"}, wait=False),
        store.flush,
        store.transaction().__enter__,
    )
    for call in calls:

        def fn(conn: Any, call: Callable[[], Any] = call) -> None:
            call()

        with pytest.raises(safestore.StoreError, match="run\\(\\) function"):
            store.run(fn)
    assert time.monotonic() - start < WAIT / 2
    assert store.query("SELECT v FROM t") == [("a",)]


def test_system_exit_in_run_reaches_its_caller_only(store: safestore.Store) -> None:
    """SystemExit raised by fn reaches the caller; the writer and the store live on."""
    with pytest.raises(SystemExit):
        store.run(lambda conn: sys.exit(3))
    store.insert("t", {"v": "after"})
    assert count(store) == 1


def test_run_cannot_close_the_connection(make_store: Callable[..., safestore.Store]) -> None:
    """A run() function that closes the connection it was lent never leaves the store
    failing later calls with the engine's puzzling "closed" errors: SQLite refuses the
    close() (the store lives on); DuckDB, whose connections cannot refuse it, fails that
    call and every later write at once with a StoreError that says what happened."""
    store = make_store(setup=SCHEMA)
    store.insert("t", {"v": "before"})

    def fn(conn: Any) -> None:
        conn.execute("INSERT INTO t (v) VALUES ('in fn')")
        conn.close()

    if store.backend == "sqlite":
        with pytest.raises(safestore.ProgrammingError, match="cannot close"):
            store.run(fn)
        store.insert("t", {"v": "after"})
        assert sorted(store.query("SELECT v FROM t")) == [("after",), ("before",)]
        return
    with pytest.raises(safestore.StoreError, match="connection was closed"):
        store.run(fn)
    start = time.monotonic()
    with pytest.raises(safestore.StoreError, match="connection was closed"):
        store.insert("t", {"v": "after"})
    assert time.monotonic() - start < WAIT / 2
    store.close()
    with safestore.Store(store.path, backend=store.backend, timeout=WAIT) as again:
        assert again.query("SELECT v FROM t") == [("before",)]


def test_run_cannot_back_up_from_its_connection(
    make_store: Callable[..., safestore.Store], tmp_path: Path
) -> None:
    """SQLite's backup API from the connection a run() function was lent would never
    finish (the connection is inside its write transaction, and sqlite3 retries the
    locked step forever): it is refused at once, and the store goes on. A connection
    of the program's own backs the live file up."""
    store = make_store(setup=SCHEMA)
    if store.backend != "sqlite":
        pytest.skip("SQLite's backup API")
    store.insert("t", {"v": "a"})
    copy = sqlite3.connect(tmp_path / "copy.db")
    try:
        with pytest.raises(safestore.ProgrammingError, match="backup"):
            store.run(lambda conn: conn.backup(copy))
        store.insert("t", {"v": "b"})
        own = sqlite3.connect(store.path)
        try:
            own.backup(copy)  # what docs/processes.md recommends
        finally:
            own.close()
        assert copy.execute("SELECT v FROM t ORDER BY v").fetchall() == [("a",), ("b",)]
    finally:
        copy.close()


def test_timeout_beyond_threading_limit_is_refused(tmp_path: Path) -> None:
    """A timeout larger than threading.TIMEOUT_MAX is refused up front."""
    with pytest.raises(ValueError, match="TIMEOUT_MAX"):
        safestore.Store(str(tmp_path / "x.db"), timeout=1e300)


CLOSE_TIMEOUT_SCRIPT = """
    import sys, threading, time
    import safestore
    store = safestore.Store(sys.argv[1], mode="queue", setup="CREATE TABLE t (v INTEGER)")
    started = threading.Event()
    def slow(conn):
        started.set()
        time.sleep(1.0)  # the writer is busy: close(timeout=0.2) cannot finish in time
    store.run(slow, wait=False)
    started.wait(30)
    for i in range(5):
        store.insert("t", {"v": i}, wait=False)
    try:
        store.close(timeout=0.2)
    except safestore.TimeoutError:
        print("timed out", flush=True)
"""


def test_close_that_times_out_still_commits_at_exit(tmp_path: Path, backend: str) -> None:
    """close(timeout=...) that times out: the writes it accepted still commit by exit."""
    path = db_path(tmp_path, backend)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CLOSE_TIMEOUT_SCRIPT), path],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == 0, proc.stderr
    assert "timed out" in proc.stdout
    with safestore.Store(path) as store:
        assert count(store) == 5


@pytest.mark.parametrize("sql", ["", "   ", "-- only a comment"])
def test_execute_of_no_statement_does_nothing(store: safestore.Store, sql: str) -> None:
    """execute() of SQL with no statement in it is a no-op on both engines (as in sqlite3)."""
    result = store.execute(sql)
    assert (result.rowcount, result.rows) == (-1, [])
    assert store.query(sql) == []
    store.insert("t", {"v": "still usable"})
    assert store.query_one("SELECT count(*) FROM t") == (1,)
