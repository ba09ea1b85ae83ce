"""`Store`: the facade users share between threads.

It checks arguments, opens the backend, picks the mode (a `QueueEngine` with its writer
thread, or a `LockEngine`), and owns the store's lifecycle: close, flush, `with`, the
finalizer of a forgotten store, and refusing use after a fork (the process-wide exit
and fork hooks are in `_lifecycle`). No SQL lives here.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from . import _forksafe, _lifecycle
from ._args import check_sql, check_timeout, resolve_target
from ._backends import Backend, Config, open_backend
from ._group import run_group, wait_result
from ._locked import LockEngine
from ._readers import Readers
from ._requests import (
    Execute,
    ExecuteMany,
    LendableRun,
    Request,
    Run,
    TxSession,
    Waiter,
    build_insert,
)
from ._transaction import Transaction
from ._writer import QueueEngine
from .errors import ReadOnlyError, StoreClosedError, StoreError, translate

log = logging.getLogger("safestore")

T = TypeVar("T")
Params = Sequence[Any] | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot of a store's counters.

    Attributes:
        writes_accepted: write calls accepted (queued, or run in lock mode).
        writes_committed: write calls whose work committed.
        writes_failed: write calls that raised (their own error or a failed commit).
        commits: batches committed (one per group commit in queue mode; a failed write
            can make the engine commit a batch in several transactions).
        largest_batch: most write calls committed in one batch.
        queue_depth: requests waiting for the writer right now.
        read_connections: open per-thread read connections.
    """

    writes_accepted: int
    writes_committed: int
    writes_failed: int
    commits: int
    largest_batch: int
    queue_depth: int
    read_connections: int


Stats.__module__ = "safestore"


class Store:
    """One database shared safely by any number of threads.

    Writes go to one writer thread that commits many callers' writes together
    (``mode="queue"``), or run under one lock (``mode="lock"``). Reads run on the
    calling thread. Every method is thread-safe; see docs/api.md for the full contract.
    """

    def __init__(
        self,
        target: str | os.PathLike[str],
        *,
        backend: Literal["sqlite", "duckdb"] | None = None,
        mode: Literal["queue", "lock"] = "queue",
        durability: Literal["full", "normal"] = "full",
        timeout: float = 30.0,
        max_queue: int = 10_000,
        setup: str | Callable[[Any], object] | None = None,
        read_only: bool = False,
    ) -> None:
        name, path = resolve_target(target, backend)
        if mode not in ("queue", "lock"):
            raise ValueError(f"mode must be 'queue' or 'lock', not {mode!r}")
        if durability not in ("full", "normal"):
            raise ValueError(f"durability must be 'full' or 'normal', not {durability!r}")
        self._timeout = check_timeout(timeout, "timeout")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"max_queue must be a positive int, not {max_queue!r}")
        if setup is not None and not (isinstance(setup, str) or callable(setup)):
            raise TypeError(
                f"setup must be an SQL script, a callable or None, not {type(setup).__name__}"
            )
        if not isinstance(read_only, bool):
            raise TypeError(f"read_only must be a bool, not {type(read_only).__name__}")
        if read_only and setup is not None:
            raise ValueError("setup cannot run on a read_only store (it would write)")

        self._backend_name = name
        self._mode = mode
        self._path = path
        self._read_only = read_only
        self._generation = _lifecycle.fork_generation  # changes in a forked child
        self._closed = False
        self._lock = threading.Lock()  # guards _closed
        # .session: the TxSession of this thread's open transaction() (or DB-API
        # transaction); it counts while its `done` is not set, so that one ended from
        # another thread (a DB-API connection closed there) frees this thread too.
        self._tx_local = threading.local()
        in_memory = name == "sqlite" and path == ":memory:"
        self._engine_backend: Backend = open_backend(
            name, Config(path, durability, self._timeout, read_only, in_memory)
        )
        backend_obj = self._engine_backend
        try:
            conn = backend_obj.connect_writer()
        except Exception as exc:
            raise translate(exc) from exc.__cause__
        try:
            if setup is not None:
                _run_setup(backend_obj, conn, setup)
        except BaseException as exc:
            backend_obj.close(conn)
            if isinstance(exc, Exception):
                raise translate(exc) from exc.__cause__
            raise

        self._engine: QueueEngine | LockEngine
        if mode == "queue" and not read_only:
            conn_lock = threading.Lock() if in_memory else None
            self._engine = QueueEngine(
                backend_obj,
                conn,
                name=f"safestore-writer-{os.path.basename(path) or path}",
                timeout=self._timeout,
                max_queue=max_queue,
                conn_lock=conn_lock,
            )
            self._readers = Readers(
                backend_obj,
                conn,
                timeout=self._timeout,
                shared_lock=conn_lock,
                waiting=self._engine.state.readers_waiting,
            )
        else:
            self._engine = LockEngine(backend_obj, conn, timeout=self._timeout)
            shared = self._engine.lock if mode == "lock" else None
            self._readers = Readers(backend_obj, conn, timeout=self._timeout, shared_lock=shared)

        # A forgotten store: the finalizer holds the engine and readers, never `self`.
        self._finalizer = weakref.finalize(
            self, _finalize_unclosed, self._engine, self._readers, repr(self)
        )
        self._finalizer.atexit = False  # exit is handled by _lifecycle's hook, silently
        _lifecycle.live.add(self)

    # --- attributes ---------------------------------------------------------------------

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"duckdb"``."""
        return self._backend_name

    @property
    def mode(self) -> str:
        """``"queue"`` or ``"lock"``."""
        return self._mode

    @property
    def path(self) -> str:
        """The database file path, or ``":memory:"``."""
        return self._path

    @property
    def closed(self) -> bool:
        """Whether `close()` has been called."""
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<safestore.Store {self._backend_name} {self._path!r} mode={self._mode} {state}>"

    # --- writes -------------------------------------------------------------------------

    def _submit(self, req: Request, wait: bool, deadline: float | None = None) -> Any:
        # `deadline` (time.monotonic()) lets AsyncStore try to queue without waiting.
        self._check_usable()
        self._refuse_waiting_on_itself("a store write", waits=wait)
        if self._read_only:
            raise ReadOnlyError(f"the store {self._path!r} was opened with read_only=True")
        if deadline is None:
            deadline = time.monotonic() + self._timeout
        if not wait:
            if type(req.future) is not Future:  # AsyncStore brings its own
                req.future = Future()  # the caller gets a real concurrent.futures.Future
            return self._engine.submit(req, deadline)
        waiter = req.future
        try:
            return wait_result(
                self._engine.submit(req, deadline, lend=True), deadline, self._timeout
            )
        except BaseException:
            # However this caller leaves (its write's error, a timeout, an interrupt),
            # it must not hold up the callers of its group woken after it (see Waiter).
            if isinstance(waiter, Waiter):
                waiter.leave()
            raise

    def insert(
        self,
        table: str,
        row_or_rows: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        wait: bool = True,
    ) -> Any:
        """Insert one row (a mapping) or many rows (mappings with the same keys).

        Names are validated and quoted; values are bound as parameters. Thread-safe.
        Blocks until committed or `timeout` (returns a Future with ``wait=False``).

        Returns:
            `Result` with ``rowcount`` = rows inserted and ``lastrowid`` of the last row.
        """
        return self._submit(build_insert(table, row_or_rows), wait)

    def execute(self, sql: str, params: Params = (), *, wait: bool = True) -> Any:
        """Run one write statement on the writer. Thread-safe; blocks until committed."""
        check_sql(sql)
        return self._submit(Execute(sql, params), wait)

    def executemany(self, sql: str, seq_of_params: Iterable[Params], *, wait: bool = True) -> Any:
        """Run one statement for every parameter set, atomically; `rowcount` is summed."""
        check_sql(sql)
        return self._submit(ExecuteMany(sql, list(seq_of_params)), wait)

    def run(self, fn: Callable[..., T], /, *args: Any, wait: bool = True, **kwargs: Any) -> Any:
        """Call ``fn(conn, *args, **kwargs)`` on the writer inside one transaction.

        `conn` is the raw engine connection; do not commit, roll back or close it in `fn`. If `fn`
        raises, its work is rolled back and the exception reaches the caller.
        """
        if not callable(fn):
            raise TypeError(f"run() needs a callable, not {type(fn).__name__}")
        return self._submit(Run(fn, args, kwargs), wait)

    def _run_lendable(self, fn: Callable[..., T], /, *args: Any) -> T:
        """run(fn) for safestore's own functions, which may run on the caller's thread."""
        result: T = self._submit(LendableRun(fn, args, {}), True)
        return result

    # --- reads --------------------------------------------------------------------------

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Run a read-only statement on the calling thread and return all rows.

        Never queued behind writes. Raises `ReadOnlyError` (changing nothing) if the
        statement would write. Thread-safe.
        """
        self._check_usable()
        check_sql(sql)
        if self._readers.shared_lock is not None:
            self._refuse_read_inside_own_write()
        try:
            return self._readers.read(sql, params)
        except Exception as exc:
            raise translate(exc) from exc.__cause__

    def query_one(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        """Like `query` but return only the first row, or None."""
        rows = self.query(sql, params)
        return rows[0] if rows else None

    # --- transactions -------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Run several statements atomically: ``with store.transaction() as tx: ...``.

        Commits when the block exits normally; rolls back if it raises. While the block
        is open, other threads' writes wait in the queue. Blocks until the writer can
        start it, at most `timeout`.
        """
        self._check_usable()
        if self._read_only:
            raise ReadOnlyError(f"the store {self._path!r} was opened with read_only=True")
        if self._in_own_transaction():
            raise StoreError("transactions do not nest: this thread already has one open")
        self._refuse_waiting_on_itself("transaction()")
        session = TxSession(self._timeout)
        deadline = time.monotonic() + self._timeout
        try:
            # Inside the try: whatever interrupts the thread once the session is granted
            # (a KeyboardInterrupt before the block even starts), it is ended below.
            try:
                self._engine.begin_session(session, deadline)
            except Exception as exc:
                raise translate(exc) from exc.__cause__
            tx = Transaction(self._engine_backend, session)
            self._tx_local.session = session
            try:
                yield tx
            except BaseException:
                tx._rollback()
                self._record_tx(tx.writes, committed=False)
                raise
            try:
                tx._commit()
            except BaseException:
                self._record_tx(tx.writes, committed=False)
                raise
            self._record_tx(tx.writes, committed=True)
        finally:
            self._tx_local.session = None
            if session.granted.is_set():  # else begin_session cleaned up after itself
                self._engine.end_session(session)

    def _record_tx(self, writes: int, *, committed: bool) -> None:
        """Count a finished transaction block's write calls in the stats."""
        counters = self._engine.counters
        with self._engine.accept_lock:  # `accepted` is also bumped by other threads' submits
            counters.accepted += writes
        # The other counters are the writer's; it is waiting for this block to end.
        if committed:
            counters.commits += 1
            counters.committed += writes
            counters.largest_batch = max(counters.largest_batch, writes)
        else:
            counters.failed += writes

    # --- lifecycle ----------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Return once every write accepted before this call has committed or failed.

        Blocks at most `timeout` seconds (default: the store's timeout).
        """
        self._check_usable()
        self._refuse_waiting_on_itself("flush()")
        limit = self._timeout if timeout is None else check_timeout(timeout, "timeout")
        if self._read_only:
            return
        self._engine.flush(time.monotonic() + limit)

    def close(self, timeout: float | None = None) -> None:
        """Commit everything accepted, stop the writer, close every connection.

        Idempotent. Later calls raise `StoreClosedError`. With `timeout`, raises
        `TimeoutError` if the writer has not finished by then (it goes on committing in
        the background); by default waits until it has.
        """
        if timeout is not None:
            check_timeout(timeout, "timeout")
        if self._forked():
            raise StoreError(
                "this store belongs to the parent process; open a new Store after fork()"
            )
        self._refuse_waiting_on_itself("close()")
        with self._lock:
            self._closed = True
        self._readers.close()
        # If this times out, the store stays registered, so the exit hook still waits
        # for the writer to commit what was accepted.
        self._engine.close(timeout)
        self._finalizer.detach()
        _lifecycle.live.discard(self)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def stats(self) -> Stats:
        """A snapshot of the store's counters. Thread-safe; never blocks on writes."""
        engine = self._engine
        counters = engine.counters
        return Stats(
            writes_accepted=counters.accepted,
            writes_committed=counters.committed,
            writes_failed=counters.failed,
            commits=counters.commits,
            largest_batch=counters.largest_batch,
            queue_depth=engine.queue_depth(),
            read_connections=self._readers.open_count(),
        )

    # --- guards -------------------------------------------------------------------------

    def _refuse_waiting_on_itself(self, what: str, *, waits: bool = True) -> None:
        """Raise at once for a call that would wait for the caller's own work.

        From inside this thread's open transaction() (the writer waits for the block),
        from a run() function on the writer thread (the writer waits for fn), or, for a
        call that waits, from inside a write this thread runs on the borrowed writer
        connection (an SQL function): such a call could only end in a timeout.
        """
        if self._in_own_transaction():
            raise StoreError(
                f"{what} inside this thread's open transaction() would wait for the "
                "transaction itself; use the `tx` object, or finish the block first"
            )
        engine = self._engine
        if not isinstance(engine, QueueEngine):
            if self._in_own_write():
                # Lock mode: the lock is reentrant, so the call would run inside the
                # write's transaction and be undone with it.
                raise StoreError(
                    f"{what} from inside a run() function or a running write would run "
                    "inside that write's transaction; use the `conn` run() was given"
                )
            return
        if self._in_own_write():
            raise StoreError(
                f"{what} inside a run() function would wait for the writer that is "
                "running it; use the `conn` run() was given"
            )
        if waits and engine.borrowed_here():
            # An SQL function or a logging handler called from inside this thread's own
            # write, which runs on the borrowed writer connection.
            raise StoreError(
                f"{what} from inside this thread's running write would wait for that "
                "write itself; use wait=False, or write from another thread"
            )

    def _refuse_read_inside_own_write(self) -> None:
        """Reads that share the writer's connection (lock mode, in-memory SQLite) from
        inside this thread's own transaction or write would run inside it (seeing, and
        on DuckDB able to change, its uncommitted state) or, in queue mode, wait for
        it until the timeout: refuse them at once."""
        if self._in_own_write() or self._in_own_transaction():
            raise StoreError(
                "query() inside this thread's own transaction() or run() function, on a "
                "store whose reads share the writer's connection (lock mode, ':memory:'), "
                "would run inside that transaction: use tx.query, or the `conn` run() "
                "was given"
            )

    def _in_own_write(self) -> bool:
        """Whether the calling thread is running one of this store's writes: a run()
        function on the queue-mode writer thread, or any write call under the lock-mode
        lock."""
        engine = self._engine
        if isinstance(engine, QueueEngine):
            # The Thread object, not its ident: idents are reused once a thread has
            # ended, and a thread started after the writer stopped could inherit its.
            return threading.current_thread() is engine.thread
        return engine.running_here()

    def _in_own_transaction(self) -> bool:
        # A session the writer expired still counts until its owner leaves the block; one
        # ended otherwise (by close() from another thread), or whose DB-API connection
        # was dropped, no longer does.
        self._end_dropped_transaction()
        session: TxSession | None = getattr(self._tx_local, "session", None)
        return (
            session is not None
            and not session.orphaned
            and (not session.done.is_set() or session.expired)
        )

    def _end_dropped_transaction(self) -> None:
        """Lock mode: roll back this thread's transaction whose DB-API connection another
        thread dropped. Only this thread can release the store's lock it holds."""
        session: TxSession | None = getattr(self._tx_local, "session", None)
        if session is not None and session.end_orphan is not None:
            end, session.end_orphan = session.end_orphan, None
            end()

    def _detach_after_fork(self) -> tuple[Any, ...]:
        """In a forked child: never finalize this store, close the inherited connections
        the backend can safely close, and return what must stay alive."""
        self._finalizer.detach()
        if not _forksafe.clean_fork:
            # A thread was still inside an engine call at the fork: its connection may
            # hold an engine mutex that nobody in the child will ever release.
            return (self._engine, self._readers)
        backend = self._engine_backend
        for conn in [*self._readers.connections_in_child(), self._engine.conn]:
            try:
                backend.release_in_child(conn)
            except Exception:  # keeping a connection open is the safe failure
                log.debug("closing an inherited connection in a forked child failed")
        return (self._engine, self._readers)

    def _forked(self) -> bool:
        # A module global bumped by the at-fork hook: cheaper than os.getpid() (a system
        # call) on every call.
        return self._generation != _lifecycle.fork_generation

    def _check_usable(self) -> None:
        self._end_dropped_transaction()
        if self._closed:
            raise StoreClosedError(f"{self!r} is closed")
        self._refuse_if_forked()

    def _refuse_if_forked(self) -> None:
        if self._forked():
            raise StoreError(
                "this Store was opened in the parent process and cannot be used after "
                "fork(); open a new Store in the child"
            )


Store.__module__ = "safestore"


def _run_setup(backend: Backend, conn: Any, setup: str | Callable[[Any], object]) -> None:
    """Run the `setup` script or callable once, in one transaction, at open."""
    if isinstance(setup, str):
        backend.run_script(conn, setup)
        return
    req = Run(setup, (), {})
    _, outcomes, group_error = run_group(backend, conn, [req])
    if group_error is not None:
        raise group_error
    ((_, _, error),) = outcomes
    if error is not None:
        raise error


def _finalize_unclosed(engine: QueueEngine | LockEngine, readers: Readers, name: str) -> None:
    """Called when an unclosed store is garbage-collected: warn, then close it.

    Never runs in a forked child: the at-fork hook detaches the finalizers there.
    """
    warnings.warn(f"{name} was never closed; closing it now", ResourceWarning, stacklevel=2)
    readers.close()
    try:
        engine.close(None)
    except TimeoutError:  # a stuck writer: the exit hook waits for it (see close_at_exit)
        log.warning("%s: its writer is stuck; it is waited for at exit", name)
