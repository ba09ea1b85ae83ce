"""`AsyncStore`: the `Store` API for asyncio programs, without ever blocking the loop.

How each kind of call avoids blocking the event loop:

- Writes (queue mode). The request is put on the writer's queue from the loop thread
  with a deadline of "now", which never waits; the coroutine then awaits the request's
  `concurrent.futures.Future` through `asyncio.wrap_future`. Only when the queue is full
  (backpressure) is the submission handed to a write helper thread, which waits for
  room.
- Writes (lock mode, and read-only stores). The write runs on the caller's thread in
  `Store`, holding the store's lock and committing: here that thread is one of the
  store's write helper threads, never the loop's.
- Reads run on the read helper threads, `flush()` on the write helper threads: two
  `ThreadPoolExecutor`s per `AsyncStore` (threads named ``safestore-aio-read-<file>``
  and ``safestore-aio-write-<file>``), so that a read never waits for a helper thread
  held by a write waiting for queue room or for the lock (`Store` promises that reads
  are never queued behind writes). Each read helper keeps its own read connection, like
  any thread using a `Store`. `close()` runs on a thread of its own.
- A transaction runs on a thread of its own (a one-thread executor per
  `async with store.transaction()` block): the writer connection is handed to the thread
  that opened the block, and in lock mode the store's lock must be released by the
  thread that took it, so every statement, the commit and the rollback of one block run
  on the same thread.

Deadlines. Every call is bounded by the store's `timeout` (`flush(timeout)`: by its
own) counted from the moment it is called, however long it waits for a helper thread:
the coroutine awaits under one `asyncio.timeout` for the whole call, and the part that
waits inside `Store` gets only the time that is left. A call still waiting for a helper
thread at its deadline never starts; a write is then withdrawn (its future cancelled
before any engine could claim it), so its `TimeoutError` means nothing of it is written.

Cancellation. A write is never applied in part. When the task awaiting a write is
cancelled (or the store's `timeout` passes), the write is withdrawn if the engine has
not started it yet, and then nothing of it is written; once the engine has started it,
it runs to the end and commits (or fails) whole, and the task is cancelled all the
same. Whatever had committed before stays committed. A transaction block left by a
cancellation is rolled back, like one left by any other exception.
"""

from __future__ import annotations

import asyncio
import builtins
import contextvars
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, Literal, TypeVar

from ._args import check_sql, check_timeout
from ._group import after_timeout
from ._locked import LockEngine
from ._requests import Execute, ExecuteMany, Request, Result, Run, build_insert
from ._store import Stats, Store
from ._transaction import Transaction
from ._writer import QueueEngine
from .errors import StoreClosedError, StoreError, TimeoutError

__all__ = ["AsyncStore", "AsyncTransaction"]

T = TypeVar("T")

log = logging.getLogger("safestore")
Params = Sequence[Any] | Mapping[str, Any]


class _Rollback(Exception):
    """Thrown into the sync transaction block to make it roll back."""


class AsyncStore:
    """One database shared safely by any number of asyncio tasks (and threads).

    Takes the same arguments as `Store`, plus ``threads``, and has the same methods as
    coroutines. Use it as ``async with AsyncStore("app.db") as store:`` or call
    `close()`. Opening runs on the calling thread (it connects and runs `setup`); use
    ``await AsyncStore.open(...)`` to open it on a helper thread instead.

    Every coroutine is safe to run from any number of tasks at once, and none of them
    blocks the event loop: writes await the writer, reads and other blocking work run on
    helper threads. Each call is bounded by the store's `timeout`, counted from the
    moment it is called (time spent waiting for a helper thread included), and ends in
    `safestore.TimeoutError` past it, like `Store`'s.

    Helper threads come in two pools of ``threads`` each, started on first use. Reads
    run on the read pool; the calls that wait on a thread for the write side run on the
    write pool: a queue-mode write waiting for room in a full queue, every lock-mode
    write, and `flush()`. So reads never wait for a helper thread behind writes (in lock
    mode a read still waits for the store's lock, by design).

    Args:
        target: a path, ``":memory:"``, or a ``sqlite:///`` / ``duckdb:///`` URL.
        threads: size of each helper pool: at most this many reads run at once, and at
            most this many writes and flushes wait on threads at once (the others wait
            for a thread, within their `timeout`). Default 4.
        backend: ``"sqlite"``, ``"duckdb"`` or None (from the URL or file suffix).
        mode: ``"queue"`` (writer thread, group commit) or ``"lock"``.
        durability: ``"full"`` (survives power loss) or ``"normal"`` (a process crash).
        timeout: seconds any one call may wait, as for `Store`.
        max_queue: bound on queued writes (backpressure).
        setup: SQL script or callable ``fn(conn)`` run once at open.
        read_only: open for reading only.
    """

    def __init__(
        self,
        target: str | os.PathLike[str],
        *,
        threads: int = 4,
        backend: Literal["sqlite", "duckdb"] | None = None,
        mode: Literal["queue", "lock"] = "queue",
        durability: Literal["full", "normal"] = "full",
        timeout: float = 30.0,
        max_queue: int = 10_000,
        setup: str | Callable[[Any], object] | None = None,
        read_only: bool = False,
    ) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive int, not {threads!r}")
        self._store = Store(
            target,
            backend=backend,
            mode=mode,
            durability=durability,
            timeout=timeout,
            max_queue=max_queue,
            setup=setup,
            read_only=read_only,
        )
        self._timeout = timeout
        self._threads = threads
        # Queue mode can enqueue from the loop thread without waiting; everything else
        # that writes (lock mode, read-only stores refusing) goes through a helper.
        self._queued = isinstance(self._store._engine, QueueEngine)
        name = os.path.basename(self._store.path) or self._store.path
        # Two pools, so that reads never wait for a thread held by a write that waits for
        # queue room or for the lock (or by a flush waiting for the writer).
        self._reads = ThreadPoolExecutor(threads, thread_name_prefix=f"safestore-aio-read-{name}")
        self._writes = ThreadPoolExecutor(threads, thread_name_prefix=f"safestore-aio-write-{name}")
        # Lock mode: reads share the writer's connection under the engine's RLock, which
        # `Readers` waits for with the store's whole timeout. A read helper takes it first
        # with only what is left of the call's time (it is reentrant, so the read then
        # gets it at once): the call ends on time and the helper is free again.
        # (In-memory SQLite in queue mode shares a plain Lock: not reentrant, not taken.)
        # (Read-only stores read on their own connections: no lock either.)
        engine, shared = self._store._engine, self._store._readers.shared_lock
        self._read_lock = (
            shared if isinstance(engine, LockEngine) and shared is engine.lock else None
        )
        # Set by the first close(): calls after it raise StoreClosedError.
        self._close_started = False
        # The close in progress (or done), shared by concurrent close() calls so that at
        # most one thread closes at a time; each caller waits within its own timeout.
        self._closing: Future[None] | None = None
        self._close_lock = threading.Lock()  # guards _closing (close() from several loops)
        # Tasks inside one of this store's transaction blocks. A store write from such a
        # task would queue behind its own block and wait for it to end, which it never
        # would: it is refused instead. (Only the task itself: a task it started may
        # write, and simply waits for the block to end.) Touched only on loop threads.
        self._block_tasks: set[asyncio.Task[Any] | None] = set()

    @classmethod
    async def open(cls, target: str | os.PathLike[str], **kwargs: Any) -> AsyncStore:
        """Open a store on a helper thread, so that connecting and `setup` never block
        the loop. Takes the same arguments as `AsyncStore`.

        If the awaiting task is cancelled, the opening goes on (it cannot be stopped
        half-way), and the store is closed as soon as it is open.
        """
        opening = asyncio.get_running_loop().run_in_executor(
            None, functools.partial(contextvars.copy_context().run, cls, target, **kwargs)
        )
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_unwanted)
            raise

    # --- attributes ---------------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The underlying `Store`, to share with threads of the same program."""
        return self._store

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"duckdb"``."""
        return self._store.backend

    @property
    def mode(self) -> str:
        """``"queue"`` or ``"lock"``."""
        return self._store.mode

    @property
    def path(self) -> str:
        """The database file path, or ``":memory:"``."""
        return self._store.path

    @property
    def closed(self) -> bool:
        """Whether `close()` has been called."""
        return self._close_started or self._store.closed

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<safestore.AsyncStore {self.backend} {self.path!r} mode={self.mode} {state}>"

    # --- writes -------------------------------------------------------------------------

    async def insert(
        self, table: str, row_or_rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> Result:
        """Insert one row (a mapping) or many rows (mappings with the same keys).

        Returns once committed, with a `Result`. See `Store.insert`.
        """
        self._check_write()
        result: Result = await self._write(build_insert(table, row_or_rows))
        return result

    async def execute(self, sql: str, params: Params = ()) -> Result:
        """Run one write statement on the writer; returns once committed."""
        self._check_write()
        check_sql(sql)
        result: Result = await self._write(Execute(sql, params))
        return result

    async def executemany(self, sql: str, seq_of_params: Iterable[Params]) -> Result:
        """Run one statement for every parameter set, atomically; `rowcount` is summed."""
        self._check_write()
        check_sql(sql)
        result: Result = await self._write(ExecuteMany(sql, list(seq_of_params)))
        return result

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Call ``fn(conn, *args, **kwargs)`` on the writer inside one transaction.

        `fn` is a plain (not async) function; it runs on the writer thread (queue mode)
        or a helper thread (lock mode), never on the loop. See `Store.run`.
        """
        self._check_write()
        if not callable(fn):
            raise TypeError(f"run() needs a callable, not {type(fn).__name__}")
        value: T = await self._write(Run(fn, args, kwargs))
        return value

    async def _write(self, req: Request) -> Any:
        """Submit `req` without blocking the loop and await its outcome (see the module
        docstring for what cancellation and timeouts do)."""
        store = self._store
        deadline = time.monotonic() + self._timeout
        # The future exists before the request leaves this thread, so that a
        # cancellation (or the deadline) at any moment cancels the one the engine will
        # look at, even while the request still waits for a helper thread.
        req.future = Future()
        handed_off: Future[None] | None = None
        if self._queued:
            try:
                # A deadline already passed: takes a free queue slot or fails at once.
                store._submit(req, False, time.monotonic())
            except TimeoutError:
                # The queue is full: wait for room on a write helper thread.
                handed_off = self._to_pool(self._writes, self._submit_by, req, deadline)
        else:
            handed_off = self._to_pool(self._writes, self._submit_by, req, deadline)
        scope: asyncio.Timeout | None = None
        try:
            # One bound for the whole call, from the moment it was made: waiting for a
            # helper thread, for queue room or the lock, and for the result.
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())) as scope:
                if handed_off is not None:
                    # Raises what submitting raised: closed store, no room or lock in
                    # time. Cancelling this await (the deadline, the task) also takes the
                    # job off the write pool if no helper thread has picked it up.
                    await asyncio.wrap_future(handed_off)
                # Wrapping ties cancellation of this await to req.future.cancel(), which
                # withdraws the request if the engine has not claimed it.
                assert isinstance(req.future, Future)  # _submit(wait=False) made it one
                return await asyncio.wrap_future(req.future)
        except builtins.TimeoutError:
            if scope is not None and scope.expired():
                # Withdraws it unless the engine has claimed it: a helper thread that
                # submits it after this point submits a cancelled request, which no
                # engine runs (`run_group` claims only futures not cancelled).
                return self._after_timeout(req)
            req.future.cancel()  # never submitted, or already failed: a no-op for safety
            raise  # the write's own error, or no room in the queue / no lock in time
        except BaseException:
            # Cancelled (or the submission failed): withdraw the request if the engine
            # has not started it. The race with the engine is decided by the future's
            # own lock: either cancel() wins (nothing written) or the engine's claim
            # does (it is written whole).
            req.future.cancel()
            raise

    def _submit_by(self, req: Request, deadline: float) -> None:
        """On a write helper thread: submit `req` unless its caller gave up, waiting
        for queue room (queue mode) or running it under the lock (lock mode) at most
        until the call's own `deadline`."""
        if req.future.cancelled():
            return  # the task was cancelled or timed out while this waited for a thread
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"no write helper thread was free within {self._timeout:.1f}s (all "
                f"{self._threads} busy); nothing of this request was written"
            )
        self._store._submit(req, False, deadline)

    def _after_timeout(self, req: Request) -> Any:
        return after_timeout(req.future, self._timeout)

    def _check_write(self) -> None:
        self._check_open()
        if self._in_block():
            raise StoreError(
                "this task has an open transaction() on this store: write through the "
                "`tx` object (a store write here would wait for the block to end: a deadlock)"
            )

    # --- reads --------------------------------------------------------------------------

    async def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Run a read-only statement on a helper thread and return all rows.

        Never queued behind writes (queue mode). Raises `ReadOnlyError` if the
        statement would write. See `Store.query`.
        """
        self._check_read()
        deadline = time.monotonic() + self._timeout
        rows: list[tuple[Any, ...]] = await self._bounded(
            self._reads, deadline, self._timeout, "query()", self._read_by, deadline, sql, params
        )
        return rows

    def _read_by(self, deadline: float, sql: str, params: Params) -> list[tuple[Any, ...]]:
        """On a read helper thread: run the read unless its deadline has passed."""
        if time.monotonic() >= deadline:
            # Picked up just as the call timed out: a read that has not started by its
            # deadline does not start (its caller has its TimeoutError already).
            raise TimeoutError(
                f"no read helper thread was free within {self._timeout:.1f}s "
                f"(all {self._threads} busy); the read did not run"
            )
        lock = self._read_lock
        if lock is None:
            return self._store.query(sql, params)
        if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise TimeoutError(
                f"the store's lock stayed held by another thread for {self._timeout:.1f}s "
                "(lock mode); the read did not run"
            )
        try:
            return self._store.query(sql, params)
        finally:
            lock.release()

    async def query_one(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        """Like `query` but return only the first row, or None."""
        rows = await self.query(sql, params)
        return rows[0] if rows else None

    def _check_read(self) -> None:
        self._check_open()
        if self._store._readers.shared_lock is not None and self._in_block():
            # Lock mode and in-memory SQLite: reads share the writer's connection, which
            # the block holds until it ends.
            raise StoreError(
                "this task has an open transaction() on a store whose reads share the "
                "writer's connection (lock mode, ':memory:'): read through the `tx` "
                "object (a store read here would wait for the block to end)"
            )

    # --- transactions -------------------------------------------------------------------

    def transaction(self) -> _TransactionBlock:
        """Run several statements atomically: ``async with store.transaction() as tx:``.

        Commits when the block exits normally; rolls back if it raises or its task is
        cancelled. Other writers wait while it is open, so keep it short. Opening waits
        (without blocking the loop) until the writer can start it, at most `timeout`.
        """
        return _TransactionBlock(self)

    # --- lifecycle ----------------------------------------------------------------------

    async def flush(self, timeout: float | None = None) -> None:
        """Return once every write accepted before this call has committed or failed."""
        self._check_open()
        self._refuse_in_block("flush()")
        limit = self._timeout if timeout is None else check_timeout(timeout, "timeout")
        deadline = time.monotonic() + limit
        await self._bounded(self._writes, deadline, limit, "flush()", self._flush_by, deadline)

    def _flush_by(self, deadline: float) -> None:
        """On a write helper thread: flush with what is left of the call's time."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(
                f"no write helper thread was free for flush() in time (all {self._threads} busy)"
            )
        self._store.flush(left)

    async def close(self, timeout: float | None = None) -> None:
        """Commit everything accepted, stop the writer, close every connection.

        Idempotent; later calls raise `StoreClosedError`. The work runs on a thread and
        is not interrupted if the awaiting task is cancelled.
        """
        self._refuse_in_block("close()")
        if timeout is not None:  # before anything starts closing
            timeout = check_timeout(timeout, "timeout")
        self._close_started = True
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0.0:  # only after another caller's failed
                raise TimeoutError(
                    f"the store was still closing after {timeout:g}s (another task's "
                    "close timed out); it goes on in the background"
                )
            with self._close_lock:
                closing = self._closing
                mine = closing is None or (closing.done() and closing.exception() is not None)
                if mine:  # none yet, or the last one failed: try (again), as Store.close()
                    closing = self._closing = _start_thread(self._close_now, left)
            assert closing is not None
            outcome = asyncio.wrap_future(closing)
            try:  # ours is bounded by `left` already; cancelling us leaves it running
                await asyncio.wait([outcome], timeout=None if mine else left)
            finally:
                if not outcome.done():  # nobody here will wait for it any more
                    outcome.add_done_callback(_take_outcome)
            if not outcome.done():  # another caller's close, still going: our time is up
                raise TimeoutError(
                    f"the store was still closing after {timeout:g}s (another task's "
                    "close); it goes on in the background"
                )
            error = outcome.exception()
            if error is None:
                return
            if mine or not isinstance(error, builtins.TimeoutError):
                raise error
            # Another caller's close ran out of its time, and this one has some left.

    def _close_now(self, timeout: float | None) -> None:
        # Calls still queued for a helper thread then run and raise StoreClosedError
        # (the store is closed); cancelling them would end tasks nobody cancelled.
        try:
            self._store.close(timeout)
        except BaseException:
            # A close that timed out returns on time.
            self._reads.shutdown(wait=False)
            self._writes.shutdown(wait=False)
            raise
        self._reads.shutdown(wait=True)
        self._writes.shutdown(wait=True)

    async def stats(self) -> Stats:
        """A snapshot of the store's counters (never waits; a coroutine to mirror the
        rest of the API)."""
        return self._store.stats()

    async def __aenter__(self) -> AsyncStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- helpers ------------------------------------------------------------------------

    def _in_block(self) -> bool:
        return bool(self._block_tasks) and asyncio.current_task() in self._block_tasks

    def _refuse_in_block(self, what: str) -> None:
        if self._in_block():
            raise StoreError(
                f"{what} inside this task's open transaction() would wait for the block "
                "itself; finish the block first"
            )

    def _check_open(self) -> None:
        if self.closed:
            raise StoreClosedError(f"{self!r} is closed")
        # In a forked child the helper pools are the parent's: their threads are gone,
        # yet they count them as idle and would start none, so a call would wait its
        # whole timeout. Refuse at once, as Store does.
        self._store._refuse_if_forked()

    async def _bounded(
        self,
        pool: ThreadPoolExecutor,
        deadline: float,
        limit: float,
        what: str,
        fn: Callable[..., T],
        *args: Any,
    ) -> T:
        """Run ``fn(*args)`` on `pool` and await it until `deadline` (time.monotonic()).

        For calls with nothing to withdraw (reads, flush). At the deadline the job is
        taken off the pool if no thread has picked it up (and `fn` itself refuses to
        start late, for the one a thread picks up at that very moment); one already
        running is left to finish on its thread, its result unused.
        """
        job = self._to_pool(pool, fn, *args)
        scope: asyncio.Timeout | None = None
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())) as scope:
                return await asyncio.wrap_future(job)
        except builtins.TimeoutError:
            if scope is None or not scope.expired():
                raise  # the call's own TimeoutError (the lock, the writer), message and all
            state = "never started" if job.cancelled() else "was still waiting or running"
            raise TimeoutError(f"{what} got no result within {limit:.1f}s; it {state}") from None

    def _to_pool(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> Future[T]:
        try:
            return pool.submit(fn, *args)
        except RuntimeError:
            # The pool was shut down by a close() that raced with this call.
            raise StoreClosedError(f"{self!r} is closed") from None


AsyncStore.__module__ = "safestore"


class AsyncTransaction:
    """The statements of one ``async with store.transaction() as tx:`` block.

    Every call runs on the block's own thread, one at a time, on the writer connection;
    nothing is visible to others until the block exits normally and commits. A failing
    statement raises here and leaves the block open.
    """

    def __init__(self, thread: ThreadPoolExecutor, tx: Transaction) -> None:
        self._thread = thread
        self._tx = tx
        self._ended = False

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._ended:
            raise StoreError("this transaction has already ended")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, fn, *args)

    async def execute(self, sql: str, params: Params = ()) -> Result:
        """Run one statement in the transaction and return its `Result`."""
        return await self._call(self._tx.execute, sql, params)

    async def executemany(self, sql: str, seq_of_params: Iterable[Params]) -> Result:
        """Run one statement per parameter set; `rowcount` is summed."""
        return await self._call(self._tx.executemany, sql, list(seq_of_params))

    async def insert(
        self, table: str, row_or_rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> Result:
        """Insert one mapping or a sequence of mappings (same keys) into `table`."""
        return await self._call(self._tx.insert, table, row_or_rows)

    async def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Run a read-only statement; it sees this block's own uncommitted writes."""
        return await self._call(self._tx.query, sql, params)

    async def query_one(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        """Like `query` but return only the first row, or None."""
        return await self._call(self._tx.query_one, sql, params)


AsyncTransaction.__module__ = "safestore"


class _TransactionBlock:
    """The async context manager returned by `AsyncStore.transaction()`.

    It drives the sync `Store.transaction()` context manager on a one-thread executor.
    Entering and leaving are submitted to that executor directly (not cancelled with
    the task): once submitted they run, in order, so a block that was granted is always
    committed or rolled back on the thread that owns it, even if its task is cancelled
    while it waits.
    """

    def __init__(self, owner: AsyncStore) -> None:
        self._owner = owner
        self._thread: ThreadPoolExecutor | None = None
        self._cm: Any = None
        self._tx: AsyncTransaction | None = None
        self._task: asyncio.Task[Any] | None = None

    async def __aenter__(self) -> AsyncTransaction:
        owner = self._owner
        owner._check_open()
        if owner._in_block():
            raise StoreError("transactions do not nest: this task already has one open")
        name = os.path.basename(owner.path) or owner.path
        thread = ThreadPoolExecutor(1, thread_name_prefix=f"safestore-aio-tx-{name}")
        cm = owner._store.transaction()
        entering = thread.submit(cm.__enter__)
        try:
            tx: Transaction = await asyncio.shield(asyncio.wrap_future(entering))
        except BaseException:
            # Cancelled while waiting for the grant (or it failed): the queued undo runs
            # after the enter on the same thread, and rolls back if it was granted.
            thread.submit(_undo_enter, entering, cm)
            thread.shutdown(wait=False)
            raise
        self._thread, self._cm = thread, cm
        self._tx = AsyncTransaction(thread, tx)
        self._task = asyncio.current_task()
        owner._block_tasks.add(self._task)
        return self._tx

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._thread is not None and self._tx is not None
        self._tx._ended = True
        if exc_type is None:
            leaving = self._thread.submit(self._cm.__exit__, None, None, None)
        else:
            leaving = self._thread.submit(_exit_rolling_back, self._cm)
        try:
            # Shielded: a second cancellation cannot stop the commit or rollback, which
            # is already submitted; it only stops this task from waiting for it.
            await asyncio.shield(asyncio.wrap_future(leaving))
        finally:
            self._thread.shutdown(wait=False)
            self._owner._block_tasks.discard(self._task)


def _undo_enter(entering: Future[Transaction], cm: Any) -> None:
    """Roll back a block whose task gave up while waiting for it to start."""
    if entering.cancelled() or entering.exception() is not None:
        return
    _exit_rolling_back(cm)


def _exit_rolling_back(cm: Any) -> None:
    """Leave the sync block with an exception, which rolls it back."""
    try:
        cm.__exit__(_Rollback, _Rollback(), None)
    except _Rollback:
        pass


def _take_outcome(outcome: asyncio.Future[None]) -> None:
    """Fetch a close's outcome that no caller waits for any more, so that asyncio does
    not log its error as never retrieved (the caller that started it raises it)."""
    if not outcome.cancelled():
        outcome.exception()


def _close_unwanted(opening: asyncio.Future[AsyncStore]) -> None:
    """Close a store whose `open()` was cancelled: nobody else can (on a thread of its
    own, as closing waits for the writer)."""
    if opening.cancelled() or opening.exception() is not None:
        return  # nothing was opened (and the error is taken, not logged as lost)
    astore = opening.result()
    astore._close_started = True
    astore._closing = closing = _start_thread(astore._close_now, None)
    closing.add_done_callback(_log_failed_close)


def _log_failed_close(closing: Future[None]) -> None:
    if closing.exception() is not None:
        log.error("closing a store whose open() was cancelled failed", exc_info=closing.exception())


def _start_thread(fn: Callable[..., None], *args: Any) -> Future[None]:
    """Run `fn(*args)` on a new thread (not a pool's: close() shuts the pools down).

    The thread is a daemon (a close that never ends must not keep the process alive),
    and the awaiting task may well let the interpreter exit before the thread has
    returned: a daemon thread still alive then is frozen for good, with whatever its
    frames hold. So it lets go of `fn` and `args` (for close(), the store and its
    connections) before it resolves the future that lets the task go on; after that it
    holds only the future.
    """
    fut: Future[None] = Future()
    fut.set_running_or_notify_cancel()
    work = [(fn, args)]  # emptied by the thread, which then holds no reference to fn
    del fn, args

    def main() -> None:
        call, call_args = work.pop()
        error: BaseException | None = None
        try:
            call(*call_args)
        except BaseException as exc:
            error = exc
        del call, call_args
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)
            del error  # its traceback holds the frames of `call`

    threading.Thread(target=main, name="safestore-aio-close", daemon=True).start()
    return fut
