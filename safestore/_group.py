"""One group of requests, from both sides: the side that runs it, the side that waits.

`run_group` opens a transaction, claims the requests whose callers still want them,
applies them through the backend and commits; `settle` then resolves each request's
future and counts the outcome in `Counters`. Queue mode runs groups on the writer thread
(or on a lone caller's thread it lends the connection to); lock mode runs a group of one
on every calling thread under the store's lock. Either way a group is run by one thread
at a time, which is what makes the plain counters safe.

`wait_result` is the other side: a caller waiting for its request until its deadline,
withdrawing it if it has not started by then, so that a `TimeoutError` can say whether
anything of it may still be written.
"""

from __future__ import annotations

import builtins
import time
from concurrent.futures import Future
from typing import Any

from ._backends import Backend, Outcome
from ._requests import Request, Turns, Waiter
from .errors import StoreError, TimeoutError, translate


class Counters:
    """Statistics. Writer-only fields are written by one thread; `accepted` under a lock."""

    __slots__ = ("accepted", "commits", "committed", "failed", "largest_batch")

    def __init__(self) -> None:
        self.accepted = 0
        self.committed = 0
        self.failed = 0
        self.commits = 0
        self.largest_batch = 0


def run_group(
    backend: Backend, conn: Any, segment: list[Request]
) -> tuple[list[Request], list[Outcome], BaseException | None]:
    """Begin, claim the requests still wanted, apply and commit them.

    Returns the claimed requests, their outcomes, and the error that failed the group
    as a whole (could not begin within the timeout, or COMMIT failed), if any.

    Futures are claimed only once the write lock is held: a caller that timed out and
    withdrew while the writer waited for another process's lock is skipped, so its
    TimeoutError really means nothing of it was written. From the claim on, no caller
    can withdraw (its write is being attempted).
    """
    if not any(r.is_write for r in segment):
        return [r for r in segment if r.future.set_running_or_notify_cancel()], [], None
    try:
        backend.begin(conn)
    except Exception as exc:
        live = [r for r in segment if r.future.set_running_or_notify_cancel()]
        return live, [], translate(exc)
    live = [r for r in segment if r.future.set_running_or_notify_cancel()]
    writes = [r for r in live if r.is_write]
    if not writes:
        backend.rollback(conn)
        return live, [], None
    try:
        return live, backend.commit_group(conn, writes), None
    except Exception as exc:
        # The group as a whole failed: nothing of it is committed, and every caller
        # in it gets the engine's error.
        backend.rollback(conn)
        return live, [], translate(exc)


def lost_connection(
    backend: Backend, conn: Any, outcomes: list[Outcome], error: BaseException | None
) -> StoreError | None:
    """The error for a group that failed because `conn` was closed behind safestore's
    back (a run() function that closed the connection it was lent), else None.

    Checked only when something in the group failed. SQLite's writer connection refuses
    close(); a DuckDB connection cannot, and every later write on it would fail with the
    engine's "Connection already closed!", which names no culprit.
    """
    if error is None and all(out[2] is None for out in outcomes):
        return None
    if not backend.is_closed(conn):
        return None
    return StoreError(
        "the store's connection was closed by something other than safestore (a run() "
        "function that called close()?); nothing of this group was committed, and the "
        "store cannot write any more: close it and open a new Store"
    )


def settle(
    counters: Counters,
    live: list[Request],
    outcomes: list[Outcome],
    error: BaseException | None,
    turns: Turns | None = None,
) -> None:
    """Resolve the futures of a group that `run_group` ran, and count it in the stats.

    With `turns` (the writer thread's groups), the callers are woken in turn.
    """
    writes = [r for r in live if r.is_write]
    if writes:
        if error is not None:
            for req in writes:
                req.future.set_exception(error)
            counters.failed += len(writes)
        else:
            before = counters.committed
            _wake_in_turn(counters, outcomes, turns)
            committed = counters.committed - before
            if committed:  # a group whose every write failed committed nothing
                counters.commits += 1
                counters.largest_batch = max(counters.largest_batch, committed)
    for req in live:
        if not req.is_write:
            req.future.set_result(None)


def _wake_in_turn(counters: Counters, outcomes: list[Outcome], turns: Turns | None) -> None:
    """Resolve a committed group's futures; wake the waiting callers one after another.

    See `Waiter`: the writer wakes the first caller only, and each wakes the next.
    concurrent.futures Futures (``wait=False`` calls) are resolved first, in order. The
    chain is then built from the last waiter backwards, so that each link is resolved
    and linked in one step under its own lock; a caller that has stopped waiting is
    woken at once and left out. Without `turns`, or while `turns.skip` says so, all are
    woken at once.
    """
    chain = turns if turns is not None and len(outcomes) > 1 else None
    if chain is not None and chain.skip > 0:
        chain.skip -= 1
        chain = None
    waiters: list[tuple[Waiter, Any, BaseException | None]] = []
    then: Waiter | None = None
    try:
        for req, value, req_error in outcomes:
            if req_error is None:
                counters.committed += 1
            else:
                counters.failed += 1
            fut = req.future
            if chain is not None and type(fut) is Waiter:
                waiters.append((fut, value, req_error))
            elif req_error is None:
                fut.set_result(value)
            else:
                fut.set_exception(req_error)
        if chain is not None:
            for waiter, value, req_error in reversed(waiters):
                if waiter.finish_in_turn(value, req_error, then, chain):
                    then = waiter
    finally:
        if then is not None:  # whatever happened, the chain built so far must move
            then.wake()


def wait_result(fut: Future[Any] | Waiter, deadline: float, timeout: float) -> Any:
    """Wait for a request's future until `deadline`; on timeout withdraw it if possible."""
    try:
        return fut.result(max(0.0, deadline - time.monotonic()))
    except builtins.TimeoutError:
        return after_timeout(fut, timeout)


def after_timeout(fut: Future[Any] | Waiter, timeout: float) -> Any:
    """A caller gave up waiting: withdraw the request if it has not started, and raise.

    Returns its value instead if it finished in the meantime.
    """
    started = not fut.cancel()
    if started and fut.done():  # finished in the meantime
        return fut.result()
    what = (
        "it had already started and may still commit"
        if started
        else "it was withdrawn and nothing of it was written"
    )
    raise TimeoutError(f"no result after {timeout:.1f}s; {what}") from None
