"""safestore.connect(): one connection shared by threads, each with its own transaction."""

from __future__ import annotations

import gc
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import SCHEMA, WAIT, Worker, db_path, in_thread

import safestore
from safestore import dbapi


@pytest.fixture
def conn(tmp_path: Path, backend: str, mode: str) -> Iterator[dbapi.Connection]:
    """A shared connection with table t(id, v TEXT UNIQUE, n INTEGER)."""
    c = dbapi.connect(
        db_path(tmp_path, backend), backend=backend, mode=mode, timeout=WAIT, setup=SCHEMA
    )
    yield c
    c.close()


def values(conn: dbapi.Connection) -> list[str]:
    """Committed values of t, read from a fresh thread (its own view)."""
    return Worker(lambda: [r[0] for r in conn.execute("SELECT v FROM t ORDER BY v")]).join()  # type: ignore[no-any-return]


def test_uncommitted_writes_visible_only_to_their_thread(conn: dbapi.Connection, mode: str) -> None:
    """Thread A sees its own uncommitted insert on every cursor; thread B never does."""
    conn.execute("INSERT INTO t (v) VALUES ('a')")
    other_cursor = conn.cursor()
    assert other_cursor.execute("SELECT v FROM t").fetchall() == [("a",)]
    reader = Worker(lambda: conn.execute("SELECT count(*) FROM t").fetchone())
    if mode == "queue":
        # Queue mode: B reads the committed state at once, without waiting for A.
        assert reader.join() == (0,)
    assert reader.started.wait(WAIT)
    conn.rollback()
    # Lock mode: B waited for the store's lock; either way it never saw A's row.
    assert reader.join() == (0,)
    assert values(conn) == []


def test_other_threads_writes_wait_for_commit(conn: dbapi.Connection) -> None:
    """B's write waits while A's transaction is open, then runs; nothing fails."""
    conn.execute("INSERT INTO t (v) VALUES ('a')")

    def write_b() -> list[str]:
        conn.execute("INSERT INTO t (v) VALUES ('b')")
        seen = [r[0] for r in conn.execute("SELECT v FROM t ORDER BY v")]
        conn.commit()
        return seen

    b = Worker(write_b)
    assert b.started.wait(WAIT)
    assert not b.done.wait(0.3), "B's write ran while A's transaction was open"
    conn.commit()
    assert b.join() == ["a", "b"]  # B's transaction began after A's commit
    assert values(conn) == ["a", "b"]


def test_rollback_undoes_exactly_own_work(conn: dbapi.Connection) -> None:
    """A's rollback undoes A's statements only; B's queued write commits after it."""
    conn.execute("INSERT INTO t (v) VALUES ('before')")
    conn.commit()
    conn.execute("INSERT INTO t (v) VALUES ('a1')")
    conn.execute("UPDATE t SET n = 1")

    def write_b() -> None:
        with conn:
            conn.execute("INSERT INTO t (v) VALUES ('b')")

    b = Worker(write_b)
    assert b.started.wait(WAIT)
    conn.rollback()
    b.join()
    assert values(conn) == ["b", "before"]
    assert conn.execute("SELECT count(*) FROM t WHERE n IS NOT NULL").fetchone() == (0,)


def test_commit_from_a_thread_without_transaction_is_noop(conn: dbapi.Connection) -> None:
    """B's commit() and rollback() do not touch A's open transaction."""
    conn.execute("INSERT INTO t (v) VALUES ('a')")
    Worker(lambda: (conn.commit(), conn.rollback())).join()
    assert Worker(lambda: conn.in_transaction).join() is False
    assert conn.in_transaction
    conn.commit()
    assert values(conn) == ["a"]


def test_dead_thread_transaction_is_rolled_back(
    conn: dbapi.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """A thread that ends with an open transaction is rolled back at once, with a warning."""

    def forget() -> None:
        conn.execute("INSERT INTO t (v) VALUES ('lost')")

    Worker(forget).join()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="safestore"):
        with conn:
            conn.execute("INSERT INTO t (v) VALUES ('kept')")
    # Not the idle timeout (WAIT): the thread's end released the writer.
    assert time.monotonic() - started < WAIT / 3
    assert values(conn) == ["kept"]
    assert any("ended without commit" in r.getMessage() for r in caplog.records)


def join_rollbacks_of_dropped_connections() -> None:
    for thread in threading.enumerate():
        if thread.name == "safestore-dropped":
            thread.join(WAIT)
            assert not thread.is_alive()


def test_dropped_connection_rolls_back_its_transaction(
    tmp_path: Path, backend: str, mode: str
) -> None:
    """The sqlite3 pattern where an exception skips commit() and close(): the dropped
    connection is freed, its transaction rolled back and its store closed (with the
    ResourceWarning of an unclosed store), so the next connection writes at once
    instead of waiting for a transaction nobody can end."""
    path = db_path(tmp_path, backend)
    with safestore.Store(path, backend=backend, setup=SCHEMA):
        pass

    def save(v: str) -> None:
        conn = dbapi.connect(path, backend=backend, mode=mode, timeout=WAIT)
        conn.execute("INSERT INTO t (v) VALUES (?)", (v,))
        if v == "bad":
            raise ValueError(v)  # never reaches commit()
        conn.commit()
        conn.close()

    with pytest.warns(ResourceWarning, match="never closed"):
        with pytest.raises(ValueError):
            save("bad")
        gc.collect()
        join_rollbacks_of_dropped_connections()  # queue mode rolls back in a thread
        gc.collect()
    started = time.monotonic()
    save("good")
    assert time.monotonic() - started < WAIT / 3  # not a wait for the dropped one
    with safestore.Store(path, backend=backend) as store:
        assert store.query("SELECT v FROM t") == [("good",)]


def test_connection_dropped_by_another_thread(tmp_path: Path, backend: str, mode: str) -> None:
    """A shared connection dropped by one thread while another thread's transaction is
    open: queue mode rolls that transaction back at once; lock mode cannot (the store's
    lock is the owner thread's), so the owner's end rolls it back. Either way the store
    then works, and nothing of the transaction is kept."""
    store = safestore.Store(
        db_path(tmp_path, backend), backend=backend, mode=mode, setup=SCHEMA, timeout=WAIT
    )
    try:
        shared = {"conn": dbapi.connect(store)}  # the only strong reference
        wrote, leave = threading.Event(), threading.Event()

        def owner() -> None:
            shared["conn"].execute("INSERT INTO t (v) VALUES ('dropped')")
            wrote.set()
            assert leave.wait(WAIT)

        worker = Worker(owner)
        assert wrote.wait(WAIT)
        shared.clear()  # dropped here, in the main thread
        gc.collect()
        if mode == "queue":  # rolled back without the owner: the writer is free
            store.insert("t", {"v": "while the owner lives"})
        leave.set()
        worker.join()
        store.insert("t", {"v": "after"})
        expected = ["after", "while the owner lives"] if mode == "queue" else ["after"]
        assert sorted(r[0] for r in store.query("SELECT v FROM t")) == expected
    finally:
        store.close()


def test_owner_goes_on_after_another_thread_dropped_its_connection(
    tmp_path: Path, backend: str, mode: str
) -> None:
    """The owner of a transaction whose connection another thread dropped is not stuck
    inside it: its next store calls work (lock mode rolls back there, the only thread
    that can release the store's lock), and nothing of the transaction is kept."""
    store = safestore.Store(
        db_path(tmp_path, backend), backend=backend, mode=mode, setup=SCHEMA, timeout=WAIT
    )
    try:
        shared = {"conn": dbapi.connect(store)}
        shared["conn"].execute("INSERT INTO t (v) VALUES ('dropped')")  # this thread's

        def drop() -> None:
            shared.clear()
            gc.collect()

        Worker(drop).join()
        store.insert("t", {"v": "after"})
        assert in_thread(lambda: store.query("SELECT v FROM t")) == [("after",)]
        with dbapi.connect(store) as again:  # a new transaction of this thread
            again.execute("INSERT INTO t (v) VALUES ('again')")
        store.close(timeout=WAIT)
    finally:
        store.close()
    with safestore.Store(store.path, backend=backend) as reopened:
        assert sorted(r[0] for r in reopened.query("SELECT v FROM t")) == ["after", "again"]


def test_dropped_connection_collected_while_its_thread_holds_the_engine_lock(
    tmp_path: Path, backend: str
) -> None:
    """Queue mode: a collection can free a dropped connection while the collecting
    thread holds the engine's lock (say, inside a store call). Rolling back from there
    would wait for that lock forever; it happens in a thread of its own instead."""
    store = safestore.Store(db_path(tmp_path, backend), backend=backend, setup=SCHEMA)
    try:
        conn = dbapi.connect(store)
        conn.execute("INSERT INTO t (v) VALUES ('dropped')")
        cycle: list[Any] = [conn, None]
        cycle[1] = cycle  # freed only by a collection
        del conn, cycle

        def collect_under_the_lock() -> None:
            with store._engine.state.lock:  # type: ignore[union-attr]
                gc.collect()

        Worker(collect_under_the_lock).join()
        store.insert("t", {"v": "after"})
        assert store.query("SELECT v FROM t") == [("after",)]
    finally:
        store.close()


def test_dropped_connection_collected_on_the_writer_thread(tmp_path: Path, backend: str) -> None:
    """A dropped connection in a reference cycle can be collected by a garbage collection
    that runs on the writer thread while it holds the lock of that connection's own
    session (here: as it logs the session's expiry). Its finalizer must not wait for that
    lock: the writer expires the session, and the owner thread can write again."""
    store = safestore.Store(db_path(tmp_path, backend), backend=backend, setup=SCHEMA, timeout=1.0)
    collected = threading.Event()

    class CollectOnExpiry(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "idle" in record.getMessage() and not collected.is_set():
                gc.collect()  # on the writer thread, inside its expiry step
                collected.set()

    handler = CollectOnExpiry()
    logging.getLogger("safestore").addHandler(handler)
    gc.disable()
    try:
        conn = dbapi.connect(store)
        conn.execute("INSERT INTO t (v) VALUES ('dropped')")
        cycle: list[Any] = [conn]
        cycle.append(cycle)  # freed only by a collection
        del conn, cycle
        # Another thread's write makes the writer expire the idle block (that write
        # itself waits as long as the block idles, so it may time out just then).
        waiting = Worker(lambda: store.insert("t", {"v": "queued"}))
        assert collected.wait(WAIT)
        assert waiting.done.wait(WAIT)
        store.insert("t", {"v": "owner thread again"})  # not refused as "in a transaction"
        store.close(timeout=WAIT)  # the writer is not stuck
    finally:
        gc.enable()
        logging.getLogger("safestore").removeHandler(handler)
        store.close()
    with safestore.Store(store.path, backend=backend) as again:
        rows = {r[0] for r in again.query("SELECT v FROM t")}
    assert rows in ({"owner thread again"}, {"owner thread again", "queued"})


def test_idle_transaction_expires(tmp_path: Path, backend: str) -> None:
    """Queue mode: a transaction idle past `timeout` while another thread's write waits
    is rolled back; the waiting write goes on, and the owner's commit says so."""
    conn = dbapi.connect(db_path(tmp_path, backend), backend=backend, timeout=0.5, setup=SCHEMA)
    try:
        conn.execute("INSERT INTO t (v) VALUES ('a')")
        session = conn._local.tx.session
        # wait=False: its future waits as long as it takes (a waiting call would time
        # out at about the moment the expiry frees it, both timeouts being equal).
        other = Worker(lambda: conn._store.insert("t", {"v": "other"}, wait=False))
        assert session.done.wait(WAIT)  # the writer expired it
        assert other.join().result(WAIT).rowcount == 1
        assert session.expired
        assert not conn.in_transaction
        with pytest.raises(safestore.StoreError, match="rolled back"):
            conn.commit()
        conn.execute("INSERT INTO t (v) VALUES ('b')")
        conn.commit()
        assert values(conn) == ["b", "other"]
    finally:
        conn.close()


def test_close_rolls_back_other_threads(
    tmp_path: Path, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Queue mode: close() rolls back another thread's open transaction, with a warning."""
    conn = dbapi.connect(db_path(tmp_path, backend), backend=backend, timeout=WAIT, setup=SCHEMA)
    opened, closed = threading.Event(), threading.Event()

    def a() -> None:
        conn.execute("INSERT INTO t (v) VALUES ('a')")
        opened.set()
        assert closed.wait(WAIT)
        conn.commit()

    worker = Worker(a)
    assert opened.wait(WAIT)
    with caplog.at_level(logging.WARNING, logger="safestore"):
        conn.close()
    assert any("closed by another thread" in r.getMessage() for r in caplog.records)
    closed.set()
    with pytest.raises(dbapi.ProgrammingError, match="closed database"):
        worker.join()
    with safestore.Store(db_path(tmp_path, backend), backend=backend) as store:
        assert store.query("SELECT count(*) FROM t") == [(0,)]


def test_thread_whose_transaction_another_closed_can_write_again(
    tmp_path: Path, backend: str
) -> None:
    """Queue mode, a connection on a shared Store: after close() from another thread
    rolled back a worker's transaction, the worker can use the store again."""
    store = safestore.Store(db_path(tmp_path, backend), backend=backend, setup=SCHEMA)
    conn = dbapi.connect(store)
    opened, closed = threading.Event(), threading.Event()

    def worker() -> None:
        conn.execute("INSERT INTO t (v) VALUES ('rolled back')")
        opened.set()
        assert closed.wait(WAIT)
        store.insert("t", {"v": "after"})
        with store.transaction() as tx:
            tx.insert("t", {"v": "in a block"})

    w = Worker(worker)
    assert opened.wait(WAIT)
    conn.close()
    closed.set()
    w.join()
    assert sorted(store.query("SELECT v FROM t")) == [("after",), ("in a block",)]
    store.close()


def test_lastrowid_after_an_upsert_that_updated(tmp_path: Path) -> None:
    """An upsert that updated instead of inserting keeps the thread's lastrowid (as
    sqlite3), not the rowid of another thread's insert on the shared writer."""
    conn = dbapi.connect(db_path(tmp_path, "sqlite"), timeout=WAIT)
    conn.executescript(
        "CREATE TABLE kv (id INTEGER PRIMARY KEY, k TEXT UNIQUE, n INTEGER);"
        "CREATE TABLE other (id INTEGER PRIMARY KEY);"
    )
    cur = conn.cursor()
    cur.execute("INSERT INTO kv (k, n) VALUES ('a', 1)")
    conn.commit()
    assert cur.lastrowid == 1

    def other() -> None:
        conn.execute("INSERT INTO other (id) VALUES (4242)")
        conn.commit()

    Worker(other).join()
    cur.execute("INSERT INTO kv (k, n) VALUES ('a', 1) ON CONFLICT (k) DO UPDATE SET n = n + 1")
    conn.commit()
    assert (cur.rowcount, cur.lastrowid) == (1, 1)
    conn.close()


def test_lastrowid_after_executemany_when_another_thread_inserted_the_same_rowid(
    tmp_path: Path,
) -> None:
    """executemany's last row is the thread's lastrowid even when another thread's last
    insert, into another table, had the very same rowid (found by review)."""
    conn = dbapi.connect(db_path(tmp_path, "sqlite"), timeout=WAIT)
    conn.executescript("CREATE TABLE a (x INTEGER); CREATE TABLE b (x INTEGER);")

    def other() -> None:
        conn.execute("INSERT INTO a VALUES (1)")  # rowid 1 in a
        conn.commit()

    Worker(other).join()
    cur = conn.cursor()
    cur.executemany("INSERT INTO b VALUES (?)", [(1,)])  # rowid 1 in b
    conn.commit()
    assert cur.execute("SELECT 1").lastrowid == 1
    conn.close()


def test_lastrowid_is_per_thread(conn: dbapi.Connection, backend: str) -> None:
    """Each thread's cursor.lastrowid is its own last insert (SQLite)."""
    if backend != "sqlite":
        pytest.skip("DuckDB has no rowids")
    conn.isolation_level = None
    mine = conn.execute("INSERT INTO t (v) VALUES ('a')").lastrowid
    theirs = Worker(lambda: conn.execute("INSERT INTO t (v) VALUES ('b')").lastrowid).join()
    assert (mine, theirs) == (1, 2)
    assert conn.execute("SELECT 1").lastrowid == 1


@pytest.mark.parametrize("isolation_level", ["", None])
def test_many_threads_insert_and_commit(conn: dbapi.Connection, isolation_level: Any) -> None:
    """16 threads x 10 inserts, each committed, on one shared connection: every row lands."""
    conn.isolation_level = isolation_level
    barrier = threading.Barrier(16)

    def work(i: int) -> None:
        barrier.wait(WAIT)
        cur = conn.cursor()
        for j in range(10):
            cur.execute("INSERT INTO t (v, n) VALUES (?, ?)", (f"{i}-{j}", i))
            conn.commit()
        assert cur.execute("SELECT count(*) FROM t WHERE n = ?", (i,)).fetchone() == (10,)

    workers = [Worker(lambda i=i: work(i)) for i in range(16)]
    for w in workers:
        w.join()
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (160,)


def test_lock_mode_close_defers_to_owner(tmp_path: Path, backend: str) -> None:
    """Lock mode: close() leaves another thread's transaction to that thread, which rolls it
    back at its next call; the store closes then."""
    conn = dbapi.connect(
        db_path(tmp_path, backend), backend=backend, mode="lock", timeout=WAIT, setup=SCHEMA
    )
    opened, closed = threading.Event(), threading.Event()

    def a() -> None:
        conn.execute("INSERT INTO t (v) VALUES ('a')")
        opened.set()
        assert closed.wait(WAIT)
        conn.execute("INSERT INTO t (v) VALUES ('b')")

    worker = Worker(a)
    assert opened.wait(WAIT)
    conn.close()  # returns at once although A holds the store's lock
    assert not conn.store.closed
    closed.set()
    with pytest.raises(dbapi.ProgrammingError, match="closed database"):
        worker.join()
    assert conn.store.closed
    with safestore.Store(db_path(tmp_path, backend), backend=backend) as store:
        assert store.query("SELECT count(*) FROM t") == [(0,)]


def test_a_statement_that_rolls_back_its_transaction_fails_only_itself(tmp_path: Path) -> None:
    """INSERT OR ROLLBACK ends the whole group's transaction; the others still commit."""
    from tests.conftest import freeze

    store = safestore.Store(db_path(tmp_path, "sqlite"), timeout=WAIT, setup=SCHEMA)
    conn = dbapi.connect(store, isolation_level=None)
    conn.execute("INSERT INTO t (v) VALUES ('taken')")
    gate, held = freeze(store)
    culprit = Worker(lambda: conn.execute("INSERT OR ROLLBACK INTO t (v) VALUES ('taken')"))
    innocents = [
        Worker(lambda v=v: conn.execute("INSERT INTO t (v) VALUES (?)", (v,)))  # type: ignore[misc]
        for v in ("a", "b", "c")
    ]
    deadline = time.monotonic() + WAIT
    while store.stats().queue_depth < 4:  # all four in the next group
        assert time.monotonic() < deadline, "the statements never queued"
        threading.Event().wait(0.001)
    gate.release()
    assert held.result(WAIT) == "held"
    with pytest.raises(sqlite3.IntegrityError):
        culprit.join()
    for w in innocents:
        w.join()
    assert values(conn) == ["a", "b", "c", "taken"]
    conn.close()
    store.close()


def test_read_ended_by_close_from_another_thread_raises_programming_error(
    conn: dbapi.Connection, backend: str
) -> None:
    """A thread's long read that conn.close() from another thread interrupts raises what
    sqlite3 raises for a closed connection (ProgrammingError), not safestore's own
    StoreClosedError, so `except sqlite3.Error` still catches it."""
    endless = {
        "sqlite": "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c) "
        "SELECT count(*) FROM c",
        "duckdb": "SELECT count(*) FROM range(100000000000) t(i) WHERE hash(i) % 7 = 0",
    }[backend]
    reader = Worker(lambda: conn.execute(endless).fetchall())
    readers = conn._store._readers
    deadline = time.monotonic() + WAIT
    while not (  # the read is running
        readers._shared_read is not None
        if readers.shared_lock is not None
        else any(entry.use.locked() for entry in readers._entries)
    ):
        assert time.monotonic() < deadline, "the read never started"
        time.sleep(0.001)
    conn.close()
    with pytest.raises(safestore.ProgrammingError, match="closed database") as info:
        reader.join()
    if backend == "sqlite":
        assert isinstance(info.value, sqlite3.ProgrammingError)
