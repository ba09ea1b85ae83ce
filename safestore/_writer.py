"""Queue mode: one writer thread per store, group commit.

Callers put requests on an unbounded `queue.SimpleQueue`; a depth count bounds how many
are waiting (`max_queue`, backpressure). The writer takes whatever is queued, up to
`MAX_BATCH` requests, and commits it as one transaction through the backend. Every
request's future is resolved only after the COMMIT that carries it (or with the error
that its own request raised).

When the writer is idle (nothing queued, no group in progress), a caller that will wait
for its write anyway runs it itself, on the writer's connection, as a group of one: the
connection is lent to it, exactly as it is lent to a `transaction()` block, and the
writer thread takes it back for the next group. Handing a lone request to the writer
thread and back costs two thread switches, more than the write itself when the engine
does not sync to disk; under load the queue is never empty, so groups form as before.
Order is kept: a thread's earlier writes are finished, still queued (the queue is not
empty) or in the writer's batch (`writer_busy`), and a caller borrows the connection
only when none of that is the case.

The writer thread receives the shared `_State`, the backend and the connection, never
the `Store`, so a store that the user forgets can be garbage-collected (its finalizer
then stops the writer).
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from . import _lifecycle
from ._backends import Backend
from ._group import Counters, lost_connection, run_group, settle, wait_result
from ._readers import Waiting
from ._requests import Request, Turns, TxSession, Waiter
from .errors import StoreClosedError, StoreError, TimeoutError, translate

log = logging.getLogger("safestore")

#: Most requests one group commit takes off the queue (bounds a batch's latency).
MAX_BATCH = 5000
#: Longest the writer waits for a group to fill back up to the previous group's size.
LINGER = 0.002
#: ... and it stops waiting once no request has come for this long. Woken in turn, the
#: callers of a busy store come back every 20-50 microseconds; callers that do other
#: work between writes come back much later, and waiting for them only adds latency
#: (measured: 8 threads pausing up to 5 ms between writes, p50 1.0 ms -> 0.5 ms).
GAP = 0.00025
#: How often the writer looks for waiting writes while a transaction it lent its
#: connection to has been idle past its timeout (see _serve_session).
IDLE_CHECK = 0.05


class _Stop(enum.Enum):
    """The marker that tells the writer to finish what is queued and exit."""

    STOP = enum.auto()


STOP = _Stop.STOP
Item = Request | _Stop


class _State:
    """What the callers and the writer thread share.

    `lock` protects `closed`, `broken`, `depth` and every `queue.put`: a request is
    enqueued only while the store is open and healthy, and the writer's death or
    `close()` flips the flag under the same lock, so no request can slip in after the
    last drain. `depth` counts requests queued and not yet taken by the writer; callers
    wait on `space` (a condition on `lock`) only while it is at `max_queue`, so the
    common path costs one lock round trip and no Python-level semaphore.
    """

    def __init__(self, max_queue: int) -> None:
        self.lock = threading.Lock()
        self.space = threading.Condition(self.lock)
        self.queue: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self.depth = 0
        #: True from the moment the writer takes a batch off the queue until it has
        #: settled it (for good if the writer dies in it). Under `lock`.
        self.writer_busy = False
        #: The request a caller runs on the borrowed writer connection (see
        #: QueueEngine.submit), or None. Set under `lock` and cleared by the borrowing
        #: caller only. The request, not the thread, is the token: a write submitted
        #: from inside the borrowed call (an SQL function, a logging handler) on the
        #: same thread must not give the connection back early.
        self.lender: Request | None = None
        self.lender_thread: int | None = None  # its thread, for borrowed_here()
        self.lender_gone = threading.Condition(self.lock)
        #: The queue depth at which the writer, lingering for a group to fill, wants to
        #: be woken (0: it does not). Under `lock`; the caller whose request brings the
        #: depth there releases `filled`, which the writer holds otherwise.
        self.wanted = 0
        self.filled = threading.Lock()
        self.filled.acquire()
        self.writer_waits = False  # the writer waits on `lender_gone` (under `lock`)
        #: Whether the store looks used by one thread at a time, so that lending the
        #: connection cannot split a group. Under `lock`; see `writer_idle`.
        self.lend_ok = True
        self.max_queue = max_queue
        self.closed = False
        self.broken: BaseException | None = None
        self.counters = Counters()
        #: Readers waiting for the writer connection (in-memory SQLite, where reads
        #: share it): an idle transaction holding them up is rolled back.
        self.readers_waiting = Waiting()
        self.turns = Turns()  # whether groups' callers are woken in turn (see Waiter)
        #: Bumped each time a group or a transaction block is done with the connection:
        #: close() reads it to tell a writer that is moving from one that is stuck. A
        #: plain int; only its changing matters.
        self.steps = 0
        #: The transaction block the writer has lent its connection to, if any: its
        #: statements are progress too (see QueueEngine._progress).
        self.serving: TxSession | None = None
        #: Set by the writer thread as it leaves (after its last engine call). close()
        #: waits for this, not for the thread: on 3.11 a `Thread.join()` interrupted by
        #: KeyboardInterrupt can mark a thread that is still running as stopped.
        self.exited = threading.Event()

    def fail_queued(self, exc_factory: Callable[[], BaseException]) -> None:
        """Fail every request still queued (called once no more can be enqueued)."""
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is not STOP:
                _fail(item, exc_factory())
        with self.lock:
            self.depth = 0
            self.space.notify_all()  # callers waiting for room see `broken` and raise

    def wait_for_depth(self, target: int, timeout: float, gap: float) -> None:
        """Wait until `target` requests are queued (writer thread only).

        The caller that enqueues the target-th request wakes the writer: one wake-up,
        where polling the queue would take the GIL from the very callers it waits for.
        The wait ends early once no request has come for `gap` (the callers it waits
        for are busy elsewhere: committing now beats waiting for them), and after
        `timeout` in any case.
        """
        deadline = time.monotonic() + timeout
        with self.lock:
            if self.depth >= target or self.closed:
                return
            self.wanted = target
            seen = self.depth
        while True:
            left = deadline - time.monotonic()
            if left > 0 and self.filled.acquire(timeout=min(gap, left)):
                return  # `wanted` was reached (the caller cleared it)
            with self.lock:
                if self.wanted == 0:
                    # A caller released `filled` just after our wait ended: take it
                    # back, so that the writer holds it again (this cannot block).
                    self.filled.acquire(False)
                    return
                if left <= 0 or self.depth == seen:
                    self.wanted = 0
                    return
                seen = self.depth

    def taken(self, n: int) -> None:
        """The writer took `n` requests off the queue: make room for that many.

        From here on no caller may borrow the connection; one that still has it is
        waited for (`wait_for_lender`) before the batch runs.
        """
        with self.lock:
            self.depth -= n
            self.writer_busy = True
            # notify_all: a notify() could go to a waiter that is just timing out.
            self.space.notify_all()

    def wait_for_lender(self) -> None:
        """Wait until no caller is using the writer connection (writer thread only)."""
        with self.lock:
            while self.lender is not None:
                # The timeout is only a backstop: the lender notifies when it is done.
                self.writer_waits = True
                self.lender_gone.wait(1.0)
            self.writer_waits = False

    def writer_idle(self, alone: bool) -> None:
        """The writer has settled its batch; `alone`: the batch held one request.

        Lending is only worth it while the store is used by one thread at a time.
        Under load a lent call would commit on its own while the others queue behind
        it: two commits (two disk syncs) where one group would have needed one. So one
        sign of concurrency stops lending until the writer again finds a single
        request in the queue.
        """
        with self.lock:
            self.writer_busy = False
            self.lend_ok = alone and not self.depth

    def lender_done(self) -> None:
        """The borrowing caller, which has cleared `lender`, is done: wake the writer."""
        with self.lock:
            # Others queued meanwhile, or the writer took a batch: that is concurrency.
            self.lend_ok = not self.depth and not self.writer_busy
            if self.writer_waits:  # notifying no one still costs a few microseconds
                self.lender_gone.notify_all()


def _fail(req: Request, exc: BaseException) -> None:
    if isinstance(req, TxSession):
        req.fail(exc)
        return
    try:
        req.future.set_exception(exc)
    except InvalidStateError:
        pass  # its caller cancelled it (or it finished) in the meantime: nothing to fail


class QueueEngine:
    """Runs writes on a dedicated thread; see the module docstring."""

    def __init__(
        self,
        backend: Backend,
        conn: Any,
        *,
        name: str,
        timeout: float,
        max_queue: int,
        conn_lock: threading.Lock | None,
    ) -> None:
        self.backend = backend
        self.conn = conn
        self.timeout = timeout
        self.state = _State(max_queue)
        # In-memory SQLite: readers share the writer connection under `conn_lock`, which
        # a borrowing caller would have to wait for without a deadline. Never lend then.
        self._can_lend = conn_lock is None
        #: Held while the connection is closed, and `_conn_closed` (read and written
        #: under it) says it is done. Two threads can close one store at once (a
        #: close() an AsyncStore task gave up on goes on in its thread while the exit
        #: hook closes the store too); the second must neither close the connection
        #: again nor return while the first is still inside the engine closing it
        #: (on DuckDB, interpreter teardown with a thread in there aborts the process).
        self._closing = threading.Lock()
        self._conn_closed = False
        self.thread = threading.Thread(
            target=_writer_main,
            args=(self.state, backend, conn, conn_lock),
            name=name,
            # A daemon, so a forgotten store never keeps the process alive; the atexit
            # hook in _store.py closes every live store (committing its queue) before
            # the interpreter tears down.
            daemon=True,
        )
        self.thread.start()

    # --- submitting ------------------------------------------------------------------

    def submit(self, req: Request, deadline: float, *, lend: bool = False) -> Future[Any] | Waiter:
        """Queue `req`; raises TimeoutError (nothing queued) if no space by `deadline`.

        With `lend` (the caller will wait for the result), a request that may run on the
        caller's thread runs there at once if the writer is idle; see the module
        docstring. Either way the returned future is the request's.
        """
        state = self.state
        try:
            with state.lock:
                self._check(state)
                if (
                    lend
                    and self._can_lend
                    and req.lendable
                    and not state.depth
                    and not state.writer_busy
                    and state.lender is None
                    and state.lend_ok
                ):
                    # One store: the connection is ours, or it is not (a
                    # KeyboardInterrupt cannot fall between taking it and recording it).
                    state.lender = req
                    state.lender_thread = threading.get_ident()
                    state.counters.accepted += 1
                else:
                    self._enqueue(state, req, deadline)
                    return req.future
            _commit_segment(state, self.backend, self.conn, [req], nullcontext)
        except BaseException:
            if state.lender is req:
                # Interrupted (KeyboardInterrupt in the main thread) or a bug: count the
                # write as failed if it was not settled (it may or may not have
                # committed), and never leave a transaction open on the connection.
                if req.is_write and not req.future.done():
                    state.counters.failed += 1
                self.backend.rollback(self.conn)
            raise
        finally:
            if state.lender is req:
                # Cleared here, before any call: Python checks for signals on entering
                # a function, and an interrupt must not leave the connection borrowed
                # (the writer re-checks `lender` at least every second).
                state.lender = None
                state.lender_thread = None
                state.lender_done()
        return req.future

    def borrowed_here(self) -> bool:
        """Whether the calling thread is running a write on the borrowed connection."""
        state = self.state
        return state.lender is not None and state.lender_thread == threading.get_ident()

    def _enqueue(self, state: _State, req: Request, deadline: float) -> None:
        """Put `req` on the queue, waiting for room until `deadline`. Holds `state.lock`."""
        while state.depth >= state.max_queue:  # full: wait for the writer to take some
            left = deadline - time.monotonic()
            if left <= 0 or not state.space.wait(left):
                raise TimeoutError(
                    f"no room in the write queue after {self.timeout:.1f}s "
                    f"(max_queue={state.max_queue}, queue depth {state.depth}); "
                    "nothing of this request was written"
                )
            self._check(state)
        state.depth += 1
        if req.is_write:
            state.counters.accepted += 1
        state.queue.put(req)
        # Only now, with the request on the queue, wake a writer waiting for it.
        if state.wanted and state.depth >= state.wanted:  # see _State.wait_for_depth
            state.wanted = 0
            state.filled.release()

    @staticmethod
    def _check(state: _State) -> None:
        if state.closed:
            raise StoreClosedError("the store is closed")
        if state.broken is not None:
            raise StoreError(f"the writer thread died: {state.broken!r}") from state.broken

    def begin_session(self, session: TxSession, deadline: float) -> None:
        """Queue a transaction and wait until the writer hands over its connection."""
        self.submit(session, deadline)
        try:
            granted = session.granted.wait(max(0.0, deadline - time.monotonic()))
        except BaseException:
            # Interrupted while waiting (KeyboardInterrupt): give the session up, or
            # the writer would hand its connection to nobody and hold everyone else's
            # writes until the idle timeout.
            with session.lock:
                if not session.granted.is_set():
                    session.future.cancel()
                    session.abandoned = True
                session.done.set()  # granted meanwhile: the writer rolls it back
            raise
        if granted:
            if session.error is not None:
                raise session.error
            return
        with session.lock:
            if not session.granted.is_set():
                # The writer has not granted it: withdraw. If the writer reaches it
                # later it sees `abandoned` (under this lock) and rolls back.
                session.future.cancel()
                session.abandoned = True
                session.done.set()
                raise TimeoutError(
                    f"the transaction could not start within {self.timeout:.1f}s "
                    f"(queue depth {self.state.depth})"
                )
        if session.error is not None:
            raise session.error

    def end_session(self, session: TxSession) -> None:
        """The owner is finished with the connection (committed or rolled back)."""
        session.done.set()

    # --- lifecycle ---------------------------------------------------------------------

    def flush(self, deadline: float) -> None:
        """Wait until everything queued before this call has committed or failed."""
        from ._requests import Flush

        marker = Flush()
        fut = self.submit(marker, deadline)
        wait_result(fut, deadline, self.timeout)

    def close(self, timeout: float | None) -> None:
        """Stop accepting, let the writer commit what is queued, then join it.

        With `timeout`, waits that long in all. Without, waits as long as the writer
        makes progress (see `_join_while_moving`).
        """
        state = self.state
        with state.lock:
            if not state.closed:
                state.closed = True
                state.queue.put(STOP)
        if threading.current_thread() is self.thread:
            # From a run() function, or the finalizer of a store collected on this
            # thread: the writer finishes the queue once this returns. It cannot wait
            # for itself, so the exit hook waits for it (and closes the connection).
            _lifecycle.close_at_exit(self)
            return
        if timeout is None:
            self._join_while_moving()
        elif not state.exited.wait(timeout):
            raise TimeoutError(
                f"the writer was still committing queued writes after {timeout:.1f}s; "
                "it goes on in the background"
            )
        self.close_connection()

    def close_connection(self) -> None:
        """Close the writer's connection, once; its writer must have exited."""
        with self._closing:
            if not self._conn_closed:
                self._conn_closed = True
                self.backend.close(self.conn)

    def _join_while_moving(self) -> None:
        """Wait for the writer to finish, for as long as it moves (see `_progress`).

        A queue of any length is committed: each group (or transaction block) finished
        restarts the wait, and so does each statement of a block being served. A step
        that has held the connection for the store's whole timeout without moving (a
        statement that never ends) is interrupted: that write fails with the engine's
        error, and the writer goes on with the rest. If the writer still does not move
        within another timeout, it is stuck outside the engine (a run() function that
        never returns): raise TimeoutError, and leave it running in the background.
        """
        state = self.state
        interrupted = False
        while True:
            progress = self._progress()
            if state.exited.wait(self.timeout):
                return
            if self._progress() != progress:
                interrupted = False
                continue
            if interrupted:
                # Registered for the exit hook: whoever called close() (a finalizer
                # that swallows this error, say), exit still waits for this writer.
                _lifecycle.close_at_exit(self)
                raise TimeoutError(
                    f"the writer has been in one step for more than {2 * self.timeout:.1f}s, "
                    "even after an interrupt (a run() function that does not return?); it "
                    "goes on in the background"
                )
            log.warning(
                "closing: the writer has been in one step for more than %.1fs; "
                "interrupting the statement it is running",
                self.timeout,
            )
            self.backend.interrupt(self.conn)
            interrupted = True

    def _progress(self) -> tuple[int, float]:
        """What changes while the writer moves: the steps it has finished, and the time
        of the last statement of the transaction block it serves (a block that keeps
        running statements is moving, however long it lasts)."""
        session = self.state.serving
        return self.state.steps, (session.last_used if session is not None else 0.0)

    def abandon_at_exit(self, store: object) -> None:
        """The interpreter is exiting and close() gave up on a stuck writer.

        Exiting with the writer still inside SQLite is harmless: the thread just stops.
        Inside DuckDB it is not: a daemon thread that comes back from DuckDB while the
        interpreter shuts down is unwound through DuckDB's C++ frames, which aborts the
        process. So on DuckDB keep waiting (the writer may still come back).
        """
        stuck = "at exit, the writer of %r is stuck in one step even after an interrupt"
        if self.backend.may_exit_mid_call:
            counters = self.state.counters
            log.error(
                stuck + " (a run() function that does not return?); %d accepted write(s), "
                "the stuck one included, are not committed",
                store,
                counters.accepted - counters.committed - counters.failed,
            )
            return
        progress = self._progress()
        while not self.state.exited.is_set():
            log.warning(stuck + "; waiting for it, as exiting now could abort the process", store)
            # An interrupt sent before the statement reached the engine is lost (DuckDB
            # clears it as a query starts): interrupt again while the writer has not
            # moved since the last look (at first: since close() gave up on it).
            if self._progress() == progress:
                self.backend.interrupt(self.conn)
            progress = self._progress()
            self.state.exited.wait(max(self.timeout, 10.0))
        self.close_connection()

    @property
    def counters(self) -> Counters:
        """The statistics (shared with the writer thread)."""
        return self.state.counters

    @property
    def accept_lock(self) -> threading.Lock:
        """Guards `counters.accepted` (bumped by callers as they enqueue)."""
        return self.state.lock

    def queue_depth(self) -> int:
        return max(0, self.state.depth)


# --- the writer thread -------------------------------------------------------------------


def _writer_main(
    state: _State, backend: Backend, conn: Any, conn_lock: threading.Lock | None
) -> None:
    try:
        _loop(state, backend, conn, conn_lock)
    except BaseException as exc:
        # Something escaped the loop: this store cannot write any more. Fail every
        # waiter now (not at its timeout) and make later calls fail at once.
        log.error("safestore writer thread died", exc_info=True)
        with state.lock:
            state.broken = exc
        cause = exc
        state.fail_queued(lambda: _died(cause))
    finally:
        state.exited.set()


def _died(cause: BaseException) -> StoreError:
    err = StoreError(f"the writer thread died: {cause!r}")
    err.__cause__ = cause
    return err


def _loop(state: _State, backend: Backend, conn: Any, conn_lock: threading.Lock | None) -> None:
    def guard() -> AbstractContextManager[Any]:
        # In-memory SQLite: readers share this connection, so hold their lock per group.
        return conn_lock if conn_lock is not None else nullcontext()

    q = state.queue
    expected = 1  # how many requests the previous group carried
    # Waiting for stragglers pays while a commit is cheap next to the callers' own
    # work (SQLite): one large group beats two. When a commit takes long and releases
    # the GIL (a DuckDB flush), committing part of the callers while the others prepare
    # their next write overlaps the two, so the window closes at `group_target`.
    cap = backend.group_target or MAX_BATCH
    while True:
        batch: list[Item] = [q.get()]
        stop = False
        try:
            _drain(q, batch)
            target = min(expected, cap)
            if len(batch) < target:
                # The group commit window. The callers released by the previous commit
                # are usually about to send their next write, but they wake one after
                # another (see _group._wake_in_turn), so the queue refills just after we
                # look. Wait until it holds as many requests as the previous group (or
                # `cap`), then drain it again: groups then stay as large as the number
                # of busy callers instead of shrinking. A lone caller (expected == 1)
                # never waits; if fewer callers are busy now, the wait ends after GAP
                # without a new request (or LINGER in all), and the next group expects
                # only as many as came.
                state.wait_for_depth(target, LINGER, GAP)
                _drain(q, batch)
            expected = min(len(batch), MAX_BATCH)
            state.taken(sum(1 for item in batch if item is not STOP))
            segment: list[Request] = []
            # Wait for a caller that borrowed the connection (it was idle) to finish.
            state.wait_for_lender()
            for item in batch:
                if item is STOP:
                    stop = True
                    continue
                if isinstance(item, TxSession):
                    _commit_segment(state, backend, conn, segment, guard)
                    segment = []
                    _serve_session(backend, conn, item, guard, state)
                    state.steps += 1
                else:
                    segment.append(item)
            _commit_segment(state, backend, conn, segment, guard)
        except BaseException as exc:
            # Dying mid-batch: the requests taken off the queue are failed here, the
            # ones still queued by _writer_main. `writer_busy` stays set: nobody may
            # borrow the connection of a dead writer (and _check refuses everyone).
            for item in batch:
                if item is not STOP:
                    _fail(item, _died(exc))
            raise
        state.writer_idle(alone=len(batch) == 1)
        if stop:
            # close() flipped `closed` before queueing STOP, so nothing follows it.
            return
        # Let go of the finished requests before blocking in q.get(): a run() function
        # (a bound method) can hold its store, which must stay collectable when the
        # program forgets it.
        del batch, segment, item


def _drain(q: queue.SimpleQueue[Item], batch: list[Item]) -> None:
    """Move whatever is queued into `batch`, up to MAX_BATCH items, without waiting."""
    while len(batch) < MAX_BATCH:
        try:
            batch.append(q.get_nowait())
        except queue.Empty:
            return


def _commit_segment(
    state: _State,
    backend: Backend,
    conn: Any,
    segment: list[Request],
    guard: Callable[[], AbstractContextManager[Any]],
) -> None:
    with guard():
        live, outcomes, error = run_group(backend, conn, segment)
        lost = lost_connection(backend, conn, outcomes, error)
    if lost is not None:
        # Nothing can be written any more: fail this group with the reason, and make
        # every later call fail at once (on the writer thread, by dying here).
        settle(state.counters, live, [], lost)
        with state.lock:
            state.broken = lost
        raise lost
    settle(state.counters, live, outcomes, error, state.turns)
    # Writes withdrawn by callers that timed out or were cancelled raised there.
    state.counters.failed += sum(1 for r in segment if r.is_write and r.future.cancelled())
    state.steps += 1


def _serve_session(
    backend: Backend,
    conn: Any,
    session: TxSession,
    guard: Callable[[], AbstractContextManager[Any]],
    state: _State,
) -> None:
    """Hand the connection to a transaction's owner and wait for it to finish.

    While the owner holds the connection the writer takes nothing else off the queue:
    that is how other threads' writes wait (queued, not failed) during a transaction.
    A transaction idle past its timeout is rolled back only once another write, a read
    of the shared in-memory connection, or close(), is waiting for it (checked every
    IDLE_CHECK): idling harms no one until then.
    """
    if not session.future.set_running_or_notify_cancel():
        return  # the owner gave up before we got here
    with guard():
        try:
            backend.begin(conn)
        except Exception as exc:
            session.fail(translate(exc))
            return
        with session.lock:
            if session.abandoned:
                backend.rollback(conn)
                session.future.set_result(None)
                return
            session.conn = conn
            session.last_used = time.monotonic()
            state.serving = session
            session.granted.set()
        while True:
            left = session.last_used + session.idle_timeout - time.monotonic()
            if left > 0:
                if session.done.wait(left):
                    break
                continue
            if not (state.depth or state.closed or state.readers_waiting.count):
                # Idle, but nobody waits for it (yet).
                if session.done.wait(IDLE_CHECK):
                    break
                continue
            with session.lock:
                if session.done.is_set():
                    break
                if time.monotonic() - session.last_used >= session.idle_timeout:
                    # Idle past the timeout: the owner is stuck or gone. Roll back so
                    # the queued writes behind it can go on; its next call raises.
                    backend.rollback(conn)
                    session.expired = True
                    session.done.set()
                    log.warning(
                        "rolled back a transaction idle for more than %.1fs", session.idle_timeout
                    )
                    break
        with session.lock:
            session.conn = None
            state.serving = None
            if backend.in_transaction(conn):  # owner left without commit or rollback
                backend.rollback(conn)
    session.future.set_result(None)
