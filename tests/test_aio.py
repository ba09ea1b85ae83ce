"""AsyncStore on {sqlite, duckdb} x {queue, lock}: the API, a loop that never blocks,
cancellation and timeouts."""

from __future__ import annotations

import asyncio
import gc
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import SCHEMA, WAIT, Gate, SignallingLock, db_path, fork_and_report

import safestore
from safestore import AsyncStore, aio

Make = Callable[..., AsyncStore]


@pytest.fixture
def make_astore(tmp_path: Path, backend: str, mode: str) -> Iterator[Make]:
    """Build async stores on this test's backend and mode; all are closed at teardown."""
    made: list[AsyncStore] = []

    def make(**kwargs: Any) -> AsyncStore:
        kwargs.setdefault("mode", mode)
        kwargs.setdefault("backend", backend)
        kwargs.setdefault("timeout", WAIT)
        kwargs.setdefault("setup", SCHEMA)
        astore = AsyncStore(db_path(tmp_path, backend), **kwargs)
        made.append(astore)
        return astore

    yield make
    for astore in made:
        asyncio.run(astore.close())


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a test coroutine with a bound on its whole length."""

    async def bounded() -> Any:
        async with asyncio.timeout(WAIT * 2):
            return await coro

    return asyncio.run(bounded())


class Blocker:
    """Keep the engine busy from another thread until `release()`.

    Queue mode: the writer runs `gate.hold`, so queued writes wait. Lock mode: the
    helper thread holds the store's lock inside `run`, so every call waits for it.
    """

    def __init__(self, astore: AsyncStore) -> None:
        self.gate = Gate()
        # wait=False: in queue mode the thread ends at once while the writer holds the
        # gate; in lock mode the call runs (holding the lock) on the thread anyway.
        self.thread = threading.Thread(
            target=astore.store.run, args=(self.gate.hold,), kwargs={"wait": False}
        )
        self.thread.start()
        assert self.gate.entered.wait(WAIT)

    def release(self) -> None:
        self.gate.release()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


async def count(astore: AsyncStore) -> int:
    row = await astore.query_one("SELECT count(*) FROM t")
    assert row is not None
    return int(row[0])


async def write_helpers_idle(astore: AsyncStore) -> None:
    """Return once every write helper thread has finished what it was doing: each
    takes one of these jobs only when free, and all of them wait for one another."""
    n = astore._threads
    barrier = threading.Barrier(n + 1)
    for _ in range(n):
        astore._writes.submit(barrier.wait, WAIT)
    await asyncio.to_thread(barrier.wait, WAIT)


async def spin(n: int = 20) -> None:
    """Give the loop `n` turns (other tasks run in between)."""
    for _ in range(n):
        await asyncio.sleep(0)


# --- the API -------------------------------------------------------------------------


def test_api_round_trip(make_astore: Make) -> None:
    """Every write and read coroutine works and returns what Store's method returns."""
    astore = make_astore()

    async def main() -> None:
        r = await astore.insert("t", [{"v": "a", "n": 1}, {"v": "b", "n": 2}])
        assert r.rowcount == 2
        r = await astore.execute("UPDATE t SET n = n + 10 WHERE v = ?", ("a",))
        assert r.rowcount == 1
        r = await astore.executemany("INSERT INTO t (v, n) VALUES (?, ?)", [("c", 3), ("d", 4)])
        assert r.rowcount == 2

        def total(conn: Any, plus: int) -> int:
            return int(conn.execute("SELECT sum(n) FROM t").fetchone()[0]) + plus

        assert await astore.run(total, 100) == 11 + 2 + 3 + 4 + 100
        assert await astore.query("SELECT v, n FROM t ORDER BY v") == [
            ("a", 11),
            ("b", 2),
            ("c", 3),
            ("d", 4),
        ]
        assert await astore.query_one("SELECT n FROM t WHERE v = ?", ("b",)) == (2,)
        assert await astore.query_one("SELECT n FROM t WHERE v = 'zz'") is None
        await astore.flush()
        stats = await astore.stats()
        assert stats.writes_committed == stats.writes_accepted == 4
        assert (astore.backend, astore.path.endswith(("db", "duckdb"))) == (
            astore.store.backend,
            True,
        )

    run(main())


def test_errors_reach_the_awaiting_task(make_astore: Make) -> None:
    """A failing write raises in its task as both classes; read-only refusals too."""
    astore = make_astore()

    async def main() -> None:
        await astore.insert("t", {"v": "x", "n": 1})
        with pytest.raises(safestore.IntegrityError):
            await astore.insert("t", {"v": "x", "n": 2})
        if astore.backend == "sqlite":
            with pytest.raises(sqlite3.IntegrityError):
                await astore.insert("t", {"v": "x", "n": 3})
        with pytest.raises(safestore.ReadOnlyError):
            await astore.query("DELETE FROM t")

        def boom(conn: Any) -> None:
            conn.execute("INSERT INTO t (v, n) VALUES ('y', 1)")
            raise ValueError("boom")

        with pytest.raises(ValueError, match="boom"):
            await astore.run(boom)
        assert await count(astore) == 1

    run(main())


def test_sql_is_checked_like_store(make_astore: Make) -> None:
    """SQL that is not a str, or not valid UTF-8 text, is refused as Store refuses it."""
    astore = make_astore()

    async def main() -> None:
        with pytest.raises(TypeError, match="sql"):
            await astore.execute(b"DELETE FROM t")  # type: ignore[arg-type]
        with pytest.raises(safestore.ProgrammingError, match="UTF-8"):
            await astore.execute("INSERT INTO t (v) VALUES ('\ud800')")
        with pytest.raises(safestore.ProgrammingError, match="UTF-8"):
            await astore.query("SELECT '\ud800'")
        assert await count(astore) == 0

    run(main())


def test_many_tasks_share_one_store(make_astore: Make) -> None:
    """200 concurrent tasks each insert a row; all commit, in fewer commits (queue mode)."""
    astore = make_astore()

    async def main() -> None:
        await asyncio.gather(*(astore.insert("t", {"v": str(i), "n": i}) for i in range(200)))
        assert await count(astore) == 200
        stats = await astore.stats()
        assert stats.writes_committed == 200
        if astore.mode == "queue":
            assert stats.commits < 200

    run(main())


def test_close_is_idempotent_and_final(make_astore: Make) -> None:
    """async with closes; close() twice is fine; later calls raise StoreClosedError."""
    astore = make_astore()

    async def main() -> None:
        async with astore as s:
            await s.insert("t", {"v": "a", "n": 1})
        await astore.close()
        assert astore.closed and astore.store.closed
        with pytest.raises(safestore.StoreClosedError):
            await astore.insert("t", {"v": "b", "n": 2})
        with pytest.raises(safestore.StoreClosedError):
            await astore.query("SELECT 1")
        with pytest.raises(safestore.StoreClosedError):
            async with astore.transaction():
                pass

    run(main())
    with safestore.Store(astore.path, backend=astore.backend) as again:  # type: ignore[arg-type]
        assert again.query("SELECT v FROM t") == [("a",)]


@pytest.mark.parametrize("bad", [-1, float("nan"), "5"])
def test_close_with_a_bad_timeout_changes_nothing(make_astore: Make, bad: Any) -> None:
    """close(timeout=<not a duration>) is refused before anything starts closing, as
    Store.close() refuses it: the store stays open and usable."""
    astore = make_astore()

    async def main() -> None:
        with pytest.raises((ValueError, TypeError)):
            await astore.close(timeout=bad)
        assert not astore.closed and not astore.store.closed
        await astore.insert("t", {"v": "after", "n": 1})
        assert await astore.query("SELECT v FROM t") == [("after",)]
        await astore.close()
        assert astore.closed and astore.store.closed

    run(main())


@pytest.mark.parametrize("first", ["without a timeout", "with a short timeout"])
def test_concurrent_closes_keep_their_own_timeouts(make_astore: Make, first: str) -> None:
    """Two tasks close at once while the engine is busy: each close() is bounded by
    its own timeout, as Store.close() is, whichever came first. One without a timeout
    is not handed the other's TimeoutError: after a close that timed out, it tries
    again, and waits until the store is closed."""
    astore = make_astore()

    async def main() -> None:
        await astore.insert("t", {"v": "kept", "n": 1})
        blocker = Blocker(astore)
        try:
            if first == "without a timeout":
                patient = asyncio.create_task(astore.close())
                await spin()
                hasty = asyncio.create_task(astore.close(timeout=0.05))
            else:
                hasty = asyncio.create_task(astore.close(timeout=0.05))
                await spin()
                patient = asyncio.create_task(astore.close())
            with pytest.raises(safestore.TimeoutError):
                await hasty
            with pytest.raises(safestore.TimeoutError):
                await astore.close(timeout=0.05)
            await spin()
            assert not patient.done()
        finally:
            blocker.release()
        await asyncio.wait_for(patient, WAIT)
        assert astore.closed and astore.store.closed

    run(main())
    with safestore.Store(astore.path, backend=astore.backend) as again:  # type: ignore[arg-type]
        assert again.query("SELECT v FROM t") == [("kept",)]


def test_close_whose_time_is_up_when_another_times_out(
    make_astore: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A close() that waits on another task's close, and whose own time is up by the
    moment that one times out, raises TimeoutError (it does not try again with no
    time left)."""
    astore = make_astore()
    ahead = [0.0]

    class Clock:  # AsyncStore's view of time; the event loop keeps the real one
        @staticmethod
        def monotonic() -> float:
            return time.monotonic() + ahead[0]

    monkeypatch.setattr(aio, "time", Clock)

    async def main() -> None:
        blocker = Blocker(astore)
        try:
            hasty = asyncio.create_task(astore.close(timeout=0.05))
            await spin()
            later = asyncio.create_task(astore.close(timeout=WAIT))
            await spin()
            ahead[0] = 2 * WAIT  # the later one's deadline has passed, as far as it knows
            with pytest.raises(safestore.TimeoutError):
                await hasty
            with pytest.raises(safestore.TimeoutError, match="still closing"):
                await later
        finally:
            blocker.release()
        await asyncio.wait_for(astore.close(), WAIT)

    run(main())


def test_cut_short_closes_share_one_closing_thread(
    make_astore: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() calls cut short while the engine is busy (asyncio.wait_for, their own
    timeouts) wait for one closing thread rather than each starting another."""
    astore = make_astore()
    start_thread = aio._start_thread
    started: list[Any] = []

    def start_and_count(fn: Callable[..., None], *args: Any) -> Any:
        started.append(args)
        return start_thread(fn, *args)

    monkeypatch.setattr(aio, "_start_thread", start_and_count)

    async def main() -> None:
        blocker = Blocker(astore)
        try:
            for _ in range(10):
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(astore.close(), 0.01)
                with pytest.raises(safestore.TimeoutError):
                    await astore.close(timeout=0.01)
            assert started == [(None,)]
        finally:
            blocker.release()
        await asyncio.wait_for(astore.close(), WAIT)
        await astore.close()  # closed already: nothing more to start
        assert started == [(None,)]

    run(main())


def test_open_classmethod(tmp_path: Path, backend: str, mode: str) -> None:
    """AsyncStore.open() opens on a helper thread and gives a working store."""

    async def main() -> None:
        async with await AsyncStore.open(
            db_path(tmp_path, backend), backend=backend, mode=mode, setup=SCHEMA
        ) as astore:
            await astore.insert("t", {"v": "a", "n": 1})
            assert await count(astore) == 1

    run(main())


def test_cancelled_open_closes_what_it_opened(
    tmp_path: Path, backend: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task cancelled while AsyncStore.open() runs: the opening goes on, and the
    store it opened, which nobody gets, is closed (not left to a finalizer)."""
    entered, go, closing = threading.Event(), threading.Event(), threading.Event()
    closes: list[tuple[AsyncStore, Any]] = []
    start_thread = aio._start_thread

    def start_and_watch(fn: Callable[..., None], *args: Any) -> Any:
        fut = start_thread(fn, *args)
        closes.append((fn.__self__, fut))  # type: ignore[attr-defined]
        closing.set()
        return fut

    monkeypatch.setattr(aio, "_start_thread", start_and_watch)

    def slow_setup(conn: Any) -> None:
        conn.execute("CREATE TABLE t (v TEXT)")
        entered.set()
        assert go.wait(WAIT)

    async def main() -> None:
        task = asyncio.create_task(
            AsyncStore.open(
                db_path(tmp_path, backend), backend=backend, mode=mode, setup=slow_setup
            )
        )
        assert await asyncio.to_thread(entered.wait, WAIT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        go.set()
        assert await asyncio.to_thread(closing.wait, WAIT)  # once the store is open

    run(main())
    [(astore, fut)] = closes
    fut.result(WAIT)
    assert astore.closed and astore.store.closed
    with safestore.Store(db_path(tmp_path, backend), backend=backend) as again:  # type: ignore[arg-type]
        assert again.query("SELECT count(*) FROM t") == [(0,)]


def test_calls_run_off_the_loop_thread(make_astore: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads, flush and lock-mode writes run on helper threads, never the loop's."""
    astore = make_astore()
    seen: dict[str, str] = {}
    for name in ("query", "flush", "_submit"):
        original = getattr(astore.store, name)

        def spy(*args: Any, _name: str = name, _orig: Any = original) -> Any:
            seen.setdefault(_name, threading.current_thread().name)
            return _orig(*args)

        monkeypatch.setattr(astore.store, name, spy)

    async def main() -> None:
        await astore.insert("t", {"v": "a", "n": 1})
        await astore.query("SELECT * FROM t")
        await astore.flush()

    run(main())
    assert seen["query"].startswith("safestore-aio-")
    assert seen["flush"].startswith("safestore-aio-")
    # Queue mode enqueues from the loop (it never waits); lock mode writes on a helper.
    assert seen["_submit"].startswith("safestore-aio-") == (astore.mode == "lock")


# --- the loop never blocks -------------------------------------------------------------


def test_loop_runs_while_a_write_waits(make_astore: Make) -> None:
    """While the engine is busy elsewhere, an awaiting write leaves the loop free."""
    astore = make_astore(timeout=5.0)

    async def main() -> None:
        blocker = Blocker(astore)
        try:
            task = asyncio.create_task(astore.insert("t", {"v": "a", "n": 1}))
            await spin()  # would never get here if insert had blocked the loop
            assert not task.done()
        finally:
            blocker.release()
        assert (await asyncio.wait_for(task, WAIT)).rowcount == 1
        assert await count(astore) == 1

    run(main())


@pytest.mark.parametrize("mode", ["lock"])  # queue-mode reads never wait for writes
def test_loop_runs_while_a_read_waits_for_the_lock(make_astore: Make) -> None:
    """In lock mode a read waits for the lock on a helper thread, not on the loop."""
    astore = make_astore(timeout=5.0)

    async def main() -> None:
        blocker = Blocker(astore)
        try:
            task = asyncio.create_task(astore.query("SELECT count(*) FROM t"))
            await spin()
            assert not task.done()
        finally:
            blocker.release()
        assert await asyncio.wait_for(task, WAIT) == [(0,)]

    run(main())


@pytest.mark.parametrize("mode", ["queue"])
def test_full_queue_waits_off_the_loop(make_astore: Make) -> None:
    """With the queue full, a write waits for room on a helper thread, then commits."""
    astore = make_astore(max_queue=1, timeout=5.0)

    async def main() -> None:
        blocker = Blocker(astore)
        try:
            first = astore.store.insert("t", {"v": "a", "n": 1}, wait=False)  # fills it
            task = asyncio.create_task(astore.insert("t", {"v": "b", "n": 2}))
            await spin()
            assert not task.done()
        finally:
            blocker.release()
        await asyncio.wait_for(task, WAIT)
        assert first.result(WAIT).rowcount == 1
        assert await count(astore) == 2

    run(main())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fork_child_gets_clear_error_at_once(make_astore: Make) -> None:
    """After fork the child gets StoreError from the parent's AsyncStore, on every
    call, rather than waiting for helper threads that the fork did not copy."""
    astore = make_astore(timeout=WAIT)

    async def warm() -> None:  # the parent's helper pools have run calls
        await astore.insert("t", {"v": "parent", "n": 1})
        assert await count(astore) == 1
        await astore.flush()

    run(warm())

    def child() -> str:
        async def calls() -> list[str]:
            seen = []
            for call in (
                lambda: astore.query("SELECT 1"),
                lambda: astore.insert("t", {"v": "child", "n": 2}),
                lambda: astore.execute("DELETE FROM t"),
                astore.flush,
            ):
                try:
                    await asyncio.wait_for(call(), WAIT)
                    seen.append("went through")
                except safestore.StoreError as exc:
                    seen.append("fork" if "fork" in str(exc) else repr(exc))
                except Exception as exc:  # TimeoutError: the bug this guards against
                    seen.append(repr(exc))
            return seen

        return ",".join(asyncio.run(calls()))

    assert fork_and_report(child) == "fork,fork,fork,fork"

    async def parent_again() -> None:  # the parent's store goes on working
        await astore.insert("t", {"v": "parent again", "n": 3})
        assert await count(astore) == 2

    run(parent_again())


# --- cancellation and timeouts ---------------------------------------------------------


def test_cancelled_waiting_write_is_withdrawn(make_astore: Make) -> None:
    """Cancelling a write the engine has not started writes nothing of it; what had
    committed before stays committed, and the store goes on working."""
    astore = make_astore()

    async def main() -> None:
        await astore.insert("t", {"v": "kept", "n": 0})
        blocker = Blocker(astore)
        try:
            rows = [{"v": f"r{i}", "n": i} for i in range(100)]
            task = asyncio.create_task(astore.insert("t", rows))
            await spin()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            blocker.release()
        await astore.flush()
        assert await astore.query("SELECT v FROM t") == [("kept",)]
        await astore.insert("t", {"v": "after", "n": 1})
        assert await count(astore) == 2
        # The withdrawn write is a failed one in the counters, on every mode (lock
        # mode's helper thread may still be on its way through the lock: wait for it).
        await write_helpers_idle(astore)
        st = await astore.stats()
        assert st.writes_accepted == st.writes_committed + st.writes_failed, st

    run(main())


def test_write_withdrawn_while_waiting_for_the_lock_counts_as_failed(
    make_astore: Make, mode: str
) -> None:
    """Lock mode: a write whose task is cancelled while its helper thread waits for the
    store's lock is skipped once the lock comes, and counted as failed (queue mode
    counts a withdrawn queued write so): accepted = committed + failed."""
    if mode != "lock":
        pytest.skip("queue mode: test_cancelled_waiting_write_is_withdrawn")
    astore = make_astore()
    engine = astore.store._engine

    async def main() -> None:
        blocker = Blocker(astore)
        try:
            engine.lock = waited_on = SignallingLock(engine.lock)  # type: ignore[union-attr]
            task = asyncio.create_task(astore.insert("t", {"v": "withdrawn", "n": 1}))
            assert await asyncio.to_thread(waited_on.acquiring.wait, WAIT)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            blocker.release()
        # The helper thread takes the lock some time after the blocker lets go of it.
        await write_helpers_idle(astore)
        st = await astore.stats()
        assert (st.writes_accepted, st.writes_committed, st.writes_failed) == (2, 1, 1)
        assert await count(astore) == 0

    run(main())


def test_cancelled_running_write_commits_whole(make_astore: Make) -> None:
    """Cancelling a write the engine has started does not cut it short: all of it
    commits, and the task is still cancelled."""
    astore = make_astore()
    started, go = threading.Event(), threading.Event()

    def two_halves(conn: Any) -> None:
        conn.executemany("INSERT INTO t (v, n) VALUES (?, ?)", [(f"a{i}", i) for i in range(50)])
        started.set()
        assert go.wait(WAIT)
        conn.executemany("INSERT INTO t (v, n) VALUES (?, ?)", [(f"b{i}", i) for i in range(50)])

    async def main() -> None:
        task = asyncio.create_task(astore.run(two_halves))
        assert await asyncio.to_thread(started.wait, WAIT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        go.set()
        await astore.flush()
        assert await count(astore) == 100

    try:
        run(main())
    finally:
        go.set()


def test_timeout_withdraws_a_waiting_write(make_astore: Make) -> None:
    """A write that gets no result within `timeout` raises TimeoutError and, having
    not started, leaves nothing behind."""
    astore = make_astore(timeout=0.3)

    async def main() -> None:
        blocker = Blocker(astore)
        try:
            with pytest.raises(safestore.TimeoutError):
                await astore.insert("t", {"v": "late", "n": 1})
        finally:
            blocker.release()
        await astore.flush()
        assert await count(astore) == 0

    run(main())


# --- transactions ------------------------------------------------------------------------


def test_transaction_commits_and_sees_its_own_writes(make_astore: Make) -> None:
    """A block commits at exit; tx.query sees its uncommitted rows, others do not."""
    astore = make_astore()

    async def main() -> None:
        async with astore.transaction() as tx:
            await tx.insert("t", {"v": "a", "n": 1})
            await tx.execute("INSERT INTO t (v, n) VALUES (?, ?)", ("b", 2))
            await tx.executemany("INSERT INTO t (v, n) VALUES (?, ?)", [("c", 3)])
            assert await tx.query("SELECT count(*) FROM t") == [(3,)]
            assert await tx.query_one("SELECT n FROM t WHERE v = 'b'") == (2,)
            if astore.mode == "queue":
                assert await count(astore) == 0  # not visible outside the block
        assert await count(astore) == 3

    run(main())


def test_transaction_rolls_back_on_error(make_astore: Make) -> None:
    """An exception leaving the block rolls all of it back and reaches the task."""
    astore = make_astore()

    async def main() -> None:
        with pytest.raises(RuntimeError, match="oops"):
            async with astore.transaction() as tx:
                await tx.insert("t", {"v": "a", "n": 1})
                raise RuntimeError("oops")
        with pytest.raises(safestore.IntegrityError):
            async with astore.transaction() as tx:
                await tx.insert("t", {"v": "b", "n": 1})
                await tx.insert("t", {"v": "b", "n": 2})
        assert await count(astore) == 0
        await astore.insert("t", {"v": "c", "n": 3})
        assert await count(astore) == 1

    run(main())


def test_cancelled_transaction_rolls_back(make_astore: Make) -> None:
    """A task cancelled inside its block rolls the block back; the store goes on."""
    astore = make_astore()

    async def main() -> None:
        inside = asyncio.Event()

        async def worker() -> None:
            async with astore.transaction() as tx:
                await tx.insert("t", {"v": "a", "n": 1})
                inside.set()
                await asyncio.Event().wait()  # until cancelled

        task = asyncio.create_task(worker())
        await asyncio.wait_for(inside.wait(), WAIT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await count(astore) == 0
        await astore.insert("t", {"v": "b", "n": 2})
        assert await astore.query("SELECT v FROM t") == [("b",)]

    run(main())


def test_cancelled_while_waiting_to_begin(make_astore: Make) -> None:
    """A task cancelled while its block waits to start leaves no open transaction."""
    astore = make_astore()

    async def main() -> None:
        blocker = Blocker(astore)
        try:

            async def worker() -> None:
                async with astore.transaction() as tx:
                    await tx.insert("t", {"v": "never", "n": 1})

            task = asyncio.create_task(worker())
            await spin()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            blocker.release()
        # Were the abandoned block still holding the writer, this would time out.
        await asyncio.wait_for(astore.insert("t", {"v": "after", "n": 1}), WAIT)
        assert await astore.query("SELECT v FROM t") == [("after",)]

    run(main())


def test_store_calls_inside_own_block_are_refused(make_astore: Make) -> None:
    """A store write (and a lock-mode read) from inside the task's own block raises
    StoreError at once instead of deadlocking; blocks do not nest."""
    astore = make_astore()

    async def main() -> None:
        async with astore.transaction() as tx:
            await tx.insert("t", {"v": "a", "n": 1})
            with pytest.raises(safestore.StoreError, match="tx"):
                await astore.insert("t", {"v": "b", "n": 2})
            with pytest.raises(safestore.StoreError, match="nest"):
                async with astore.transaction():
                    pass
            if astore.mode == "lock":
                with pytest.raises(safestore.StoreError, match="tx"):
                    await astore.query("SELECT 1")
            # flush() and close() would wait for the block itself (lock mode: forever).
            for call in (astore.flush, astore.close):
                with pytest.raises(safestore.StoreError, match="block"):
                    await call()
        assert not astore.closed
        assert await astore.query("SELECT v FROM t") == [("a",)]
        with pytest.raises(safestore.StoreError, match="ended"):
            await tx.insert("t", {"v": "c", "n": 3})

    run(main())


def test_other_tasks_writes_wait_for_a_block(make_astore: Make) -> None:
    """Another task's write waits (queued, not failed) until the block commits."""
    astore = make_astore()

    async def main() -> None:
        async with astore.transaction() as tx:
            await tx.insert("t", {"v": "a", "n": 1})
            other = asyncio.create_task(astore.insert("t", {"v": "b", "n": 2}))
            await spin()
            assert not other.done()
        await asyncio.wait_for(other, WAIT)
        assert await astore.query("SELECT v FROM t ORDER BY v") == [("a",), ("b",)]

    run(main())


def test_close_that_times_out_fails_queued_calls_and_can_be_retried(make_astore: Make) -> None:
    """A close(timeout) that times out returns on time; a call still waiting for a
    helper thread then raises StoreClosedError (it is not cancelled), and a later
    close() finishes the job."""
    astore = make_astore(threads=1)
    blocker = Blocker(astore)

    async def main() -> None:
        # The only write helper thread waits in flush() (for the writer, or for the
        # lock), and the second flush() waits for that thread.
        busy = asyncio.create_task(astore.flush())
        queued = asyncio.create_task(astore.flush())
        await spin()
        with pytest.raises(safestore.TimeoutError):
            await astore.close(timeout=0.2)
        blocker.release()
        await asyncio.gather(busy, return_exceptions=True)
        with pytest.raises(safestore.StoreClosedError):
            await queued
        assert not queued.cancelled()
        await astore.close()  # tried again, and this time it completes
        assert astore.closed
        with pytest.raises(safestore.StoreClosedError):
            await astore.query("SELECT 1")

    run(main())


def test_write_cancelled_while_handed_to_a_helper_is_withdrawn(
    make_astore: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancellation that lands while a helper thread is about to submit the write
    withdraws it: the future the engine looks at is the one the task cancelled."""
    astore = make_astore(max_queue=1)
    blocker = Blocker(astore)
    if astore.mode == "queue":
        astore.store.insert("t", {"v": "fills the queue", "n": 0}, wait=False)
    on_helper, go_on = threading.Event(), threading.Event()
    check = safestore.Store._check_usable

    def paused(store: safestore.Store) -> None:
        if threading.current_thread().name.startswith("safestore-aio"):
            on_helper.set()
            assert go_on.wait(WAIT)
        check(store)

    async def main() -> None:
        monkeypatch.setattr(safestore.Store, "_check_usable", paused)
        task = asyncio.create_task(astore.insert("t", {"v": "cancelled", "n": 1}))
        assert await asyncio.to_thread(on_helper.wait, WAIT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        monkeypatch.undo()
        go_on.set()
        blocker.release()
        await astore.flush()
        assert await astore.query("SELECT v FROM t WHERE v = 'cancelled'") == []

    run(main())


# --- helper threads and deadlines --------------------------------------------------------


def flush_started(astore: AsyncStore, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """An event set once the store's flush() has started on a helper thread."""
    started = threading.Event()
    flush = astore.store.flush

    def spy(*args: Any) -> None:
        started.set()
        flush(*args)

    monkeypatch.setattr(astore.store, "flush", spy)
    return started


@pytest.mark.parametrize("mode", ["queue"])  # lock mode: a read waits for the lock anyway
def test_reads_never_wait_behind_writes_for_a_helper_thread(
    make_astore: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the writer stalled and the queue full, a write waiting for room and a
    flush() hold the helper threads for writes; a read still runs at once."""
    astore = make_astore(threads=1, max_queue=1, timeout=5.0)
    blocker = Blocker(astore)
    flushing = flush_started(astore, monkeypatch)

    async def main() -> None:
        try:
            astore.store.insert("t", {"v": "fills the queue", "n": 0}, wait=False)
            flusher = asyncio.create_task(astore.flush())
            # The only write helper thread is now in flush(), waiting for the writer.
            assert await asyncio.to_thread(flushing.wait, WAIT)
            write = asyncio.create_task(astore.insert("t", {"v": "waits", "n": 1}))
            await spin()
            assert await astore.query("SELECT count(*) FROM t") == [(0,)]
            # Had the read waited for a helper thread, the stalled write and flush would
            # have timed out (store timeout) before it got one.
            assert not write.done() and not flusher.done()
        finally:
            blocker.release()
        await asyncio.wait_for(asyncio.gather(write, flusher), WAIT)
        assert await count(astore) == 2

    run(main())


def test_a_read_waiting_for_a_helper_thread_times_out_on_time(
    make_astore: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read's `timeout` counts from the call, not from when a helper thread takes it:
    a read still waiting for one at its deadline raises TimeoutError then and never runs."""
    timeout = 0.4
    astore = make_astore(threads=1, timeout=timeout)
    release = threading.Event()
    ran: list[str] = []
    query = astore.store.query

    def slow_first(sql: str, params: Any = ()) -> Any:
        ran.append(sql)
        if len(ran) == 1:  # a long read holds the only read helper thread
            assert release.wait(WAIT)
        return query(sql, params)

    monkeypatch.setattr(astore.store, "query", slow_first)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ended: list[float] = []

        async def timed(sql: str) -> None:
            start = loop.time()
            with pytest.raises(safestore.TimeoutError):
                await astore.query(sql)
            ended.append(loop.time() - start)

        try:
            calls = [asyncio.create_task(timed(f"SELECT {i}")) for i in (1, 2, 3)]
            # Bounded well below the release: without per-call deadlines the queued
            # reads would wait for the long one, and then for `timeout` each in turn.
            done, _ = await asyncio.wait(calls, timeout=10 * timeout)
            assert len(done) == 3
            for call in calls:
                call.result()
            assert max(ended) < 5 * timeout  # loose: a loaded machine is slow
        finally:
            release.set()
        # Once the helper thread is free, a new read runs; the two that timed out never did.
        assert await astore.query("SELECT 4") == [(4,)]
        assert ran == ["SELECT 1", "SELECT 4"]

    run(main())


def test_a_write_waiting_for_a_helper_thread_is_withdrawn_at_its_deadline(
    make_astore: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write still waiting for a helper thread at its deadline raises TimeoutError
    then, and nothing of it is written later, when a thread comes free."""
    timeout = 0.4
    astore = make_astore(threads=1, max_queue=1, timeout=timeout)
    flushing = flush_started(astore, monkeypatch)
    blocker = Blocker(astore)

    async def main() -> None:
        try:
            if astore.mode == "queue":  # queue mode: a write needs a helper only when full
                astore.store.insert("t", {"v": "fills the queue", "n": 0}, wait=False)
            # A flush with a long timeout of its own holds the only write helper thread,
            # waiting for queue room for its marker (queue mode) or for the lock.
            flusher = asyncio.create_task(astore.flush(timeout=WAIT))
            assert await asyncio.to_thread(flushing.wait, WAIT)
            write = asyncio.create_task(astore.insert("t", {"v": "late", "n": 1}))
            done, _ = await asyncio.wait([write], timeout=10 * timeout)
            assert done, "the write waited past its timeout"
            with pytest.raises(safestore.TimeoutError, match="nothing of"):
                write.result()
        finally:
            blocker.release()
        await asyncio.wait_for(flusher, WAIT)
        await astore.flush()
        assert await astore.query("SELECT v FROM t WHERE v = 'late'") == []

    run(main())


def test_close_thread_lets_go_of_the_store_before_the_task_resumes(
    tmp_path: Path, backend: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once `await close()` returns, nothing on close()'s thread keeps the store (and
    its connections) alive, even if that daemon thread has not ended yet: one frozen by
    interpreter exit would keep them past teardown (DuckDB then reports leaks)."""
    astore = AsyncStore(db_path(tmp_path, backend), backend=backend, mode=mode, setup=SCHEMA)  # type: ignore[arg-type]
    refs = [weakref.ref(astore), weakref.ref(astore.store)]
    blocker = Blocker(astore)  # close() waits for it, on its thread
    resolved, leave = threading.Event(), threading.Event()

    def pause(fut: Any) -> None:  # runs on close()'s thread, inside set_result()
        resolved.set()
        assert leave.wait(WAIT)

    start_thread = aio._start_thread
    started: list[Any] = []

    def start_and_watch(fn: Callable[..., None], *args: Any) -> Any:
        fut = start_thread(fn, *args)
        # After close() has wrapped the future (whose callback wakes the task); close()
        # waits for the blocker, so the future is not done yet.
        asyncio.get_running_loop().call_soon(fut.add_done_callback, pause)
        started.append(fut)
        return fut

    monkeypatch.setattr(aio, "_start_thread", start_and_watch)

    async def main(astore: AsyncStore, blocker: Blocker) -> None:
        closing = asyncio.create_task(astore.close())
        await spin()
        assert len(started) == 1
        blocker.release()
        await asyncio.wait_for(closing, WAIT)

    try:
        run(main(astore, blocker))
        # The close thread runs this callback just after the one that wakes the task.
        assert resolved.wait(WAIT)
        del astore, blocker
        gc.collect()
        assert [ref() for ref in refs] == [None, None]
    finally:
        leave.set()
