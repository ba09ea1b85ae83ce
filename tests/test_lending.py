"""Queue mode lends an idle writer's connection to a lone caller that waits for its write.

The caller then runs its write as a group of one on its own thread, saving two thread
switches (see safestore._writer). These tests pin down when that may happen and what
must stay true: a thread's writes keep their order, queued work is never overtaken,
run() stays on the writer thread, and close() never closes the connection under a
caller that borrowed it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import SCHEMA, WAIT, count, db_path, freeze

import safestore


def _wait_for(cond: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for a condition another thread makes true."""
    deadline = time.monotonic() + WAIT
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def _sqlite_setup(**functions: Callable[[], object]) -> Callable[[sqlite3.Connection], None]:
    """A SQLite `setup`: table t, who() (the id of the executing thread) and `functions`."""

    def setup(conn: sqlite3.Connection) -> None:
        SCHEMA(conn)
        conn.create_function("who", 0, threading.get_ident)
        for name, fn in functions.items():
            conn.create_function(name, 0, fn)

    return setup


def _who_store(make_store: Callable[..., safestore.Store], **kwargs: Any) -> safestore.Store:
    """A SQLite store whose writer connection has who(): the id of the executing thread."""
    return make_store(setup=_sqlite_setup(), **kwargs)


class _Hold:
    """An SQL function that stays inside the engine until `release` is set."""

    def __init__(self, value: int = 0) -> None:
        self.value = value
        self.inside = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> int:
        self.inside.set()
        assert self.release.wait(WAIT)
        return self.value


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("mode", ["queue"], indirect=True)
def test_lone_write_runs_on_the_callers_thread(make_store: Callable[..., safestore.Store]) -> None:
    """An idle writer lends its connection: the statement runs on the calling thread."""
    store = _who_store(make_store)
    store.execute("INSERT INTO t (v, n) VALUES ('main', who())")
    assert store.query_one("SELECT n FROM t WHERE v = 'main'") == (threading.get_ident(),)
    # run() is promised the writer thread, idle or not.
    assert store.run(lambda conn: threading.get_ident()) == store._engine.thread.ident  # type: ignore[union-attr]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("mode", ["queue"], indirect=True)
def test_write_queues_while_the_writer_is_busy(make_store: Callable[..., safestore.Store]) -> None:
    """With a group in progress, a waiting write queues and the writer thread runs it."""
    store = _who_store(make_store)
    gate, held = freeze(store)
    done = threading.Event()

    def write() -> None:
        store.execute("INSERT INTO t (v, n) VALUES ('queued', who())")
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    _wait_for(lambda: store.stats().queue_depth == 1, "the write to queue")
    assert not done.is_set()
    gate.release()
    assert held.result(WAIT) == "held"
    assert done.wait(WAIT)
    thread.join(WAIT)
    writer = store._engine.thread.ident  # type: ignore[union-attr]
    assert store.query_one("SELECT n FROM t WHERE v = 'queued'") == (writer,)


@pytest.mark.parametrize("mode", ["queue"], indirect=True)
def test_a_threads_writes_keep_their_order(
    store: safestore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A waiting write is not lent the connection while earlier writes are still queued.

    The writer is held just after taking requests off the queue and before it marks
    itself busy: the moment when only the queue depth tells that work is pending.
    """
    state = store._engine.state  # type: ignore[union-attr]
    taking, go = threading.Event(), threading.Event()
    real_taken = state.taken

    def held_taken(n: int) -> None:
        taking.set()
        assert go.wait(WAIT)
        real_taken(n)

    monkeypatch.setattr(state, "taken", held_taken)
    futures = [store.insert("t", {"v": f"early-{i}", "n": i}, wait=False) for i in range(5)]
    assert taking.wait(WAIT)

    last_done = threading.Event()

    def release_once_queued() -> None:
        # Queued behind the five (depth 6), or (wrongly) already run on the caller's thread.
        _wait_for(lambda: state.depth >= 6 or last_done.is_set(), "the waiting write")
        go.set()

    releaser = threading.Thread(target=release_once_queued)
    releaser.start()
    store.insert("t", {"v": "last", "n": 5})
    last_done.set()
    releaser.join(WAIT)
    assert [f.result(WAIT).rowcount for f in futures] == [1] * 5
    assert store.query("SELECT n FROM t ORDER BY id") == [(i,) for i in range(6)]


@pytest.mark.parametrize("mode", ["queue"], indirect=True)
def test_close_waits_for_a_borrowed_connection(tmp_path: Path, mode: str) -> None:
    """close() lets a caller that borrowed the connection finish; its write is kept."""
    hold = _Hold(7)
    path = db_path(tmp_path, "sqlite")
    store = safestore.Store(path, mode=mode, setup=_sqlite_setup(hold=hold), timeout=WAIT)
    results: list[Any] = []
    writer = threading.Thread(
        target=lambda: results.append(store.execute("INSERT INTO t (v, n) VALUES ('x', hold())"))
    )
    writer.start()
    assert hold.inside.wait(WAIT)  # the caller's thread is inside the engine, on the connection
    closed = threading.Event()
    closer = threading.Thread(target=lambda: (store.close(WAIT), closed.set()))
    closer.start()
    # close() cannot finish while the borrowed connection is in use (bounded check).
    assert not closed.wait(0.2)
    with pytest.raises(safestore.StoreClosedError):
        store.insert("t", {"v": "after close"})
    hold.release.set()
    writer.join(WAIT)
    closer.join(WAIT)
    assert closed.is_set()
    assert results and results[0].rowcount == 1
    with safestore.Store(path, read_only=True) as again:
        assert again.query("SELECT v, n FROM t") == [("x", 7)]


def test_sequential_and_concurrent_writes_all_land(store: safestore.Store) -> None:
    """Lent and queued groups interleave freely; every write lands exactly once."""
    barrier = threading.Barrier(8)

    def work(w: int) -> None:
        barrier.wait(WAIT)
        for i in range(40):
            store.insert("t", {"v": f"{w}-{i}", "n": w})

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    for i in range(20):  # alone again: lent
        store.insert("t", {"v": f"solo-{i}", "n": -1})
    assert count(store) == 8 * 40 + 20
    stats = store.stats()
    assert stats.writes_accepted == stats.writes_committed == 8 * 40 + 20


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("mode", ["queue"], indirect=True)
def test_lending_stops_under_concurrency_until_a_lone_request(
    make_store: Callable[..., safestore.Store],
) -> None:
    """After a group of several requests, writes go to the writer until one comes alone.

    Lending a call the connection while others queue behind it would split one group
    commit (one disk sync) into two.
    """
    store = _who_store(make_store)
    writer = store._engine.thread.ident  # type: ignore[union-attr]
    me = threading.get_ident()
    gate, held = freeze(store)
    futures = [store.insert("t", {"v": f"q{i}"}, wait=False) for i in range(3)]
    gate.release()
    assert held.result(WAIT) == "held"
    for f in futures:
        f.result(WAIT)  # committed as one group of three
    store.execute("INSERT INTO t (v, n) VALUES ('a', who())")  # the writer: it saw a crowd
    store.execute("INSERT INTO t (v, n) VALUES ('b', who())")  # that one came alone: lent
    store.execute("INSERT INTO t (v, n) VALUES ('c', who())")
    rows = dict(store.query("SELECT v, n FROM t WHERE v IN ('a', 'b', 'c')"))
    assert rows == {"a": writer, "b": me, "c": me}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("mode", ["queue"], indirect=True)
def test_no_lending_while_the_writer_holds_a_batch(
    make_store: Callable[..., safestore.Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch the writer took while a caller had the connection runs before later writes.

    Thread X borrows the connection; meanwhile this thread queues A (wait=False) and the
    writer takes it, then waits for X. X finishes, and the writer is held just before
    it runs A: this thread's next write B must queue behind A, not borrow the connection.
    """
    hold = _Hold()
    store = make_store(setup=_sqlite_setup(hold=hold))
    state = store._engine.state  # type: ignore[union-attr]
    writer = store._engine.thread.ident  # type: ignore[union-attr]
    b_sent = threading.Event()
    real_wait = state.wait_for_lender

    def held_wait() -> None:
        real_wait()
        if not b_sent.is_set():  # the batch with A: let B arrive first
            assert b_sent.wait(WAIT)

    monkeypatch.setattr(state, "wait_for_lender", held_wait)
    x = threading.Thread(target=store.execute, args=("INSERT INTO t (v, n) VALUES ('x', hold())",))
    x.start()
    assert hold.inside.wait(WAIT)  # X has the connection
    a = store.insert("t", {"v": "A"}, wait=False)
    _wait_for(lambda: state.writer_busy, "the writer to take A")
    hold.release.set()
    x.join(WAIT)

    def mark_b_sent() -> None:
        # B queued behind A (depth 1), or (wrongly) already run on this thread.
        _wait_for(lambda: state.depth >= 1 or b_done.is_set(), "B to be sent")
        b_sent.set()

    b_done = threading.Event()
    marker = threading.Thread(target=mark_b_sent)
    marker.start()
    store.execute("INSERT INTO t (v, n) VALUES ('B', who())")
    b_done.set()
    marker.join(WAIT)
    assert a.result(WAIT).rowcount == 1
    assert [v for (v,) in store.query("SELECT v FROM t ORDER BY id")] == ["x", "A", "B"]
    assert store.query_one("SELECT n FROM t WHERE v = 'B'") == (writer,)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("mode", ["queue"], indirect=True)
def test_writes_from_inside_a_lent_write(make_store: Callable[..., safestore.Store]) -> None:
    """An SQL function of a lent write may queue a write; one that would wait is refused."""
    stores: list[safestore.Store] = []
    outcome: list[object] = []

    def audit() -> int:
        store = stores[0]
        outcome.append(store.insert("t", {"v": "audit"}, wait=False))
        try:
            store.insert("t", {"v": "waits"})
        except safestore.StoreError as exc:
            outcome.append(exc)
        return 1

    store = make_store(setup=_sqlite_setup(audit=audit))
    stores.append(store)
    store.execute("INSERT INTO t (v, n) VALUES ('main', audit())")  # lent: the writer is idle
    queued, refused = outcome
    assert queued.result(WAIT).rowcount == 1  # type: ignore[attr-defined]
    assert "would wait for that write itself" in str(refused)
    assert sorted(v for (v,) in store.query("SELECT v FROM t")) == ["audit", "main"]


@pytest.mark.parametrize("mode", ["queue"], indirect=True)
@pytest.mark.parametrize("where", ["before BEGIN", "after BEGIN"])
def test_interrupted_lent_write_leaves_the_store_usable(
    store: safestore.Store, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A KeyboardInterrupt in a borrowed-connection write gives the connection back,
    rolled back, and counts the write as failed."""
    from safestore import _writer

    engine = store._engine
    assert isinstance(engine, _writer.QueueEngine)

    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    if where == "before BEGIN":
        monkeypatch.setattr(_writer, "_commit_segment", interrupted)
    else:  # inside the transaction, before the write is applied
        monkeypatch.setattr(engine.backend, "commit_group", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.insert("t", {"v": "interrupted"})
    monkeypatch.undo()
    assert engine.state.lender is None
    assert not engine.backend.in_transaction(engine.conn)
    store.insert("t", {"v": "after"}, wait=False)
    store.insert("t", {"v": "after, waiting"})
    store.flush(timeout=WAIT)
    assert [v for (v,) in store.query("SELECT v FROM t ORDER BY id")] == [
        "after",
        "after, waiting",
    ]
    stats = store.stats()
    assert (stats.writes_accepted, stats.writes_committed, stats.writes_failed) == (3, 2, 1)
