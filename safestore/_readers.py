"""Reads on the calling thread: one read connection per thread, or the shared one.

Each thread that reads gets its own connection (SQLite) or cursor (DuckDB), created on
first use and kept in a `threading.local`, so reads never queue behind writes and never
share a connection between threads. A registry keeps every connection so that `close()`
reaches all of them, including other threads', and so that connections of threads that
have ended are closed (at the next new connection and at close; a connection is only
closed while holding its `use` lock, after interrupting any statement it runs).

When readers must share the writer connection (lock mode, in-memory SQLite), every read
takes the given `shared_lock` instead.

`close()` ends reads still running in other threads, so that it never waits for them:
it interrupts them (and the reader gets `StoreClosedError`). On the shared connection it
does so only while a read is flagged as running, and the reader puts the connection
back in its writing state afterwards, since the interrupt may hit the read's cleanup.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any

from ._backends import Backend
from .errors import StoreClosedError, TimeoutError

log = logging.getLogger("safestore")


class Waiting:
    """How many threads wait for a shared connection (its holder may yield it to them).

    Counted under a lock: the writer only asks whether anyone waits, but a lost update
    would leave the count wrong for good.
    """

    __slots__ = ("_lock", "count")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def __enter__(self) -> None:
        with self._lock:
            self.count += 1

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self.count -= 1


class _Entry:
    """One thread's read connection. `use` is held while a statement runs on it."""

    __slots__ = ("closed", "conn", "thread", "use")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.thread = weakref.ref(threading.current_thread())
        self.use = threading.Lock()
        self.closed = False

    def thread_alive(self) -> bool:
        thread = self.thread()
        return thread is not None and thread.is_alive()


class Readers:
    """Serves `read()` calls on per-thread connections (or one shared connection)."""

    def __init__(
        self,
        backend: Backend,
        writer_conn: Any,
        *,
        timeout: float,
        shared_lock: threading.Lock | threading.RLock | None = None,
        waiting: Waiting | None = None,
    ) -> None:
        self.backend = backend
        self.writer_conn = writer_conn
        self.timeout = timeout
        self.shared_lock = shared_lock
        self.waiting = waiting or Waiting()  # readers waiting for `shared_lock`
        self._local = threading.local()
        # Guards `_entries` and `_closed`. Never held while a statement runs.
        self._lock = threading.Lock()
        self._entries: list[_Entry] = []
        self._closed = False
        #: Set while a read runs on the shared connection (written under `_lock`), and
        #: whether close() has interrupted that read.
        self._shared_read: threading.Event | None = None
        self._interrupted = False

    def read(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        """Run a read-only statement on this thread's connection. Thread-safe."""
        if self.shared_lock is not None:
            return self._read_shared(sql, params)
        entry: _Entry | None = getattr(self._local, "entry", None)
        if entry is None or entry.closed:
            entry = self._open()
        with entry.use:
            if entry.closed:
                raise StoreClosedError("the store is closed")
            return self._run(entry.conn, sql, params, shared=False)

    def _read_shared(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        assert self.shared_lock is not None
        got = self.shared_lock.acquire(blocking=False)
        if not got:
            with self.waiting:  # the writer rolls back an idle transaction we wait for
                got = self.shared_lock.acquire(timeout=self.timeout)
        if not got:
            raise TimeoutError(
                f"the store's connection stayed busy with writes for {self.timeout:.1f}s"
            )
        try:
            with self._lock:
                if self._closed:
                    raise StoreClosedError("the store is closed")
                self._shared_read = done = threading.Event()
            try:
                return self._run(self.writer_conn, sql, params, shared=True)
            finally:
                # Cleared before the shared lock is released: close() interrupts the
                # connection only while this flag says a read runs on it, so its
                # interrupt can never hit a write that takes the lock after us.
                with self._lock:
                    self._shared_read = None
                    interrupted, self._interrupted = self._interrupted, False
                if interrupted:
                    # The interrupt may have landed on the read's setup or cleanup
                    # rather than its statement; no further one can come now.
                    self.backend.restore_after_read(self.writer_conn)
                done.set()
        finally:
            self.shared_lock.release()

    def _run(self, conn: Any, sql: str, params: Any, *, shared: bool) -> list[tuple[Any, ...]]:
        try:
            return self.backend.read(conn, sql, params, shared=shared)
        except Exception as exc:
            # close() interrupts running reads: say so, rather than "interrupted".
            if self._closed:
                raise StoreClosedError(
                    "the store was closed while this read ran; the read was interrupted"
                ) from exc
            raise

    def _open(self) -> _Entry:
        entry = _Entry(self.backend.connect_reader(self.writer_conn))
        with self._lock:
            if self._closed:
                self.backend.close(entry.conn)
                raise StoreClosedError("the store is closed")
            dead = [e for e in self._entries if not e.thread_alive()]
            self._entries = [e for e in self._entries if e.thread_alive()]
            self._entries.append(entry)
        self._local.entry = entry
        for e in dead:
            self._close_entry(e)
        return entry

    def _close_entry(self, entry: _Entry) -> None:
        # Interrupt first so a long statement in another thread ends quickly, then take
        # its `use` lock so we never close a connection while a statement runs on it.
        # Race: the interrupt can land just before the other thread starts its statement
        # (an interrupt of an idle connection does nothing), so repeat it while waiting.
        deadline = time.monotonic() + self.timeout
        while True:
            self.backend.interrupt(entry.conn)
            if entry.use.acquire(timeout=min(0.05, max(0.0, deadline - time.monotonic()))):
                break
            if time.monotonic() >= deadline:
                log.warning("a read connection stayed busy for %.1fs; left open", self.timeout)
                return
        try:
            if not entry.closed:
                entry.closed = True
                self.backend.close(entry.conn)
        finally:
            entry.use.release()

    def connections_in_child(self) -> list[Any]:
        """Every read connection still open, for the fork hook in a forked child.

        Without `_lock`: another thread of the parent may have held it at the fork, and
        in the child that thread is gone (only the forking thread exists there).
        """
        return [e.conn for e in list(self._entries) if not e.closed]

    def open_count(self) -> int:
        """How many read connections are open (for tests and stats)."""
        with self._lock:
            return sum(1 for e in self._entries if not e.closed)

    def close(self) -> None:
        """Close every read connection, other threads' included, and end a read running
        on the shared connection. Idempotent."""
        with self._lock:
            self._closed = True
            entries, self._entries = self._entries, []
        for entry in entries:
            self._close_entry(entry)
        self._interrupt_shared_read()

    def _interrupt_shared_read(self) -> None:
        # No read can start on the shared connection any more (`_closed` is set); end
        # the one running, if any, so that closing does not wait for it. The interrupt is
        # sent under `_lock` while `_shared_read` is set, so it lands on that read, never
        # on a write that follows it. It is repeated because one that lands before the
        # read's statement starts does nothing.
        deadline = time.monotonic() + self.timeout
        while True:
            with self._lock:
                done = self._shared_read
                if done is None:
                    return
                self._interrupted = True
                self.backend.interrupt(self.writer_conn)
            if done.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
                return
            if time.monotonic() >= deadline:
                return  # the engine close that follows waits for it, bounded on its own
