"""Lock mode: one connection, one `threading.RLock` held for every use, no thread.

The simple fallback. Each write call takes the lock (waiting at most `timeout`), runs in
its own transaction on the calling thread and commits before the lock is released.
Reads take the same lock: sharing a SQLite connection between threads without holding
a lock for every use, reads included, returns wrong rows or crashes (FACTS.md). A
`transaction()` block holds the lock from start to end; its reads go through `tx.query`.
The lock is reentrant so that a thread's own store calls from inside its block or its
running write never deadlock on it: Store refuses them with a clear `StoreError`.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import Any

from ._backends import Backend
from ._group import Counters, lost_connection, run_group, settle
from ._requests import Request, TxSession, Waiter
from .errors import StoreClosedError, TimeoutError

log = logging.getLogger("safestore")


class LockEngine:
    """Runs every call on the caller's thread under one lock; same interface as QueueEngine."""

    def __init__(self, backend: Backend, conn: Any, *, timeout: float) -> None:
        self.backend = backend
        self.conn = conn
        self.timeout = timeout
        #: Held for every use of `conn`. Invariant: whoever holds it may use `conn`;
        #: `closed` is read and written under it.
        self.lock = threading.RLock()
        self.closed = False
        self.counters = Counters()
        self.accept_lock = threading.Lock()  # guards counters.accepted
        #: The thread running a write call under the lock, if any (written under it).
        #: The lock is reentrant, so a store call from inside that write (a run()
        #: function, an SQL function) would otherwise start a write inside its
        #: transaction; Store refuses it with `running_here`.
        self._runner: int | None = None

    def acquire(self, deadline: float) -> None:
        """Take the lock by `deadline` or raise TimeoutError; raise if closed."""
        if not self.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise TimeoutError(
                f"the store's lock stayed held by another thread for {self.timeout:.1f}s"
            )
        if self.closed:
            self.lock.release()
            raise StoreClosedError("the store is closed")

    def submit(self, req: Request, deadline: float, *, lend: bool = False) -> Future[Any] | Waiter:
        """Execute `req` now, in its own transaction; return an already-resolved future.

        (`lend` is QueueEngine's; here every call runs on the caller's thread anyway.)
        """
        self.acquire(deadline)
        try:
            self._runner = threading.get_ident()
            if req.is_write:
                with self.accept_lock:
                    self.counters.accepted += 1
            # A request withdrawn before run_group claims it (AsyncStore cancels a
            # waiting write) is skipped there: nothing of it runs.
            live, outcomes, error = run_group(self.backend, self.conn, [req])
            lost = lost_connection(self.backend, self.conn, outcomes, error)
            if lost is not None:  # every later write fails the same way, at once
                outcomes, error = [], lost
            settle(self.counters, live, outcomes, error)
            if req.is_write and req.future.cancelled():
                # Withdrawn before it ran: counted as failed, as queue mode counts it.
                self.counters.failed += 1
            return req.future
        except BaseException:
            # A KeyboardInterrupt anywhere in the group (say, just after BEGIN) must not
            # leave a transaction open on the shared connection for the next holder.
            self.backend.rollback(self.conn)
            raise
        finally:
            self._runner = None
            self.lock.release()

    def running_here(self) -> bool:
        """Whether the calling thread is inside a write call of this store."""
        return self._runner == threading.get_ident()

    def begin_session(self, session: TxSession, deadline: float) -> None:
        """Take the lock for the length of a transaction block and begin it."""
        self.acquire(deadline)
        try:
            self.backend.begin(self.conn)
            session.future.set_running_or_notify_cancel()
            session.conn = self.conn
            # Lock mode has no writer to expire an idle transaction: other threads simply
            # time out waiting for the lock.
            session.idle_timeout = float("inf")
            session.granted.set()  # from here on, end_session releases the lock
        except BaseException:
            # Once granted (a KeyboardInterrupt inside Event.set, just after), the
            # transaction's owner ends the session, which rolls back and releases.
            if not session.granted.is_set():
                self.backend.rollback(self.conn)
                self.lock.release()
            raise

    def end_session(self, session: TxSession) -> None:
        try:
            session.done.set()
            session.conn = None
            # Normally committed or rolled back by now; not if the owner was interrupted
            # (KeyboardInterrupt) before its block began.
            if self.backend.in_transaction(self.conn):
                self.backend.rollback(self.conn)
            if not session.future.done():
                session.future.set_result(None)
        finally:
            self.lock.release()

    def flush(self, deadline: float) -> None:
        """Nothing is ever pending in lock mode; only waits for a running call."""
        self.acquire(deadline)
        self.lock.release()

    def close(self, timeout: float | None) -> None:
        """Wait for the call in progress, then close the connection.

        Nothing is queued in lock mode, so there is nothing to wait for but the thread
        holding the lock, which may never let go (stuck in a transaction, or waiting
        for this very close): without `timeout` the wait is bounded by the store's, and
        if the lock is still held then, the statement running on the connection (if
        any: one that never ends) is interrupted and the wait starts once more.
        """
        limit = self.timeout if timeout is None else timeout
        got = self.lock.acquire(timeout=limit)
        if not got and timeout is None:
            self.backend.interrupt(self.conn)
            got = self.lock.acquire(timeout=limit)
        if not got:
            raise TimeoutError(f"a call still held the store's lock after {limit:.1f}s")
        try:
            if not self.closed:
                self.closed = True
                self.backend.close(self.conn)
        finally:
            self.lock.release()

    def abandon_at_exit(self, store: object) -> None:
        """The interpreter is exiting and close() gave up waiting for the lock."""
        log.warning(
            "at exit, another thread still held the lock of %r after %.1fs; its "
            "uncommitted transaction is discarded",
            store,
            self.timeout,
        )

    def queue_depth(self) -> int:
        return 0
