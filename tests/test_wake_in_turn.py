"""Waking a committed group's callers in turn (safestore._group._wake_in_turn, Waiter).

The writer wakes the first waiting caller only and each caller wakes the next as it
wakes. These tests drive `settle` directly with hand-made requests, so that the order
of events is exact: which callers are waiting, which have given up, who is woken when.
The engine-level tests (50 threads, exact counts, on every backend and mode) exercise
the same code under load.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import pytest
from tests.conftest import WAIT, SignallingLock

from safestore import _group
from safestore._requests import Execute, Request, Turns, Waiter


class Interrupted(Exception):
    """Raised by the test's SIGALRM handler inside a blocked wait."""


def _claimed(n: int) -> list[Request]:
    reqs: list[Request] = [Execute("INSERT", ()) for _ in range(n)]
    for req in reqs:
        assert req.future.set_running_or_notify_cancel()
    return reqs


def _settle(
    reqs: list[Request], errors: dict[int, BaseException] | None = None, turns: Turns | None = None
) -> None:
    errors = errors or {}
    outcomes = [
        (r, None if i in errors else f"value {i}", errors.get(i)) for i, r in enumerate(reqs)
    ]
    _group.settle(_group.Counters(), reqs, outcomes, None, Turns() if turns is None else turns)


def _waiting(
    reqs: list[Request], timeout: float = WAIT
) -> tuple[list[Any], list[threading.Thread]]:
    """One thread per request, each waiting for its result; returns (results, threads)."""
    results: list[Any] = [None] * len(reqs)
    started = threading.Barrier(len(reqs) + 1)

    def wait(i: int) -> None:
        started.wait(WAIT)
        try:
            results[i] = reqs[i].future.result(timeout)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    started.wait(WAIT)
    return results, threads


def _probe(req: Request) -> threading.Event:
    """An event set when a caller starts blocking on `req`'s waiter (its real lock is
    wrapped), so that a test can act only once the caller really waits."""
    waiter = req.future
    assert isinstance(waiter, Waiter)
    probe = SignallingLock(waiter._done)
    waiter._done = probe  # type: ignore[assignment]
    return probe.acquiring


def _join(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive(), "a waiting caller was never woken"


def test_every_caller_of_a_group_is_woken_with_its_own_outcome() -> None:
    reqs = _claimed(20)
    results, threads = _waiting(reqs)
    boom = ValueError("row 7 failed")
    _settle(reqs, {7: boom})
    _join(threads)
    assert results == [boom if i == 7 else f"value {i}" for i in range(20)]
    for i, req in enumerate(reqs):  # every waiter stays released: asking again is instant
        assert req.future.exception(0) is (boom if i == 7 else None)


def test_a_caller_that_gave_up_before_the_commit_is_left_out_of_the_chain() -> None:
    reqs = _claimed(5)
    gave_up = reqs[2].future
    with pytest.raises(TimeoutError):
        gave_up.result(0.01)
    assert not gave_up.cancel()  # running: too late to withdraw, but marked as gone
    results, threads = _waiting([reqs[0], reqs[1], reqs[3], reqs[4]])
    _settle(reqs)
    _join(threads)
    assert results == ["value 0", "value 1", "value 3", "value 4"]
    assert gave_up.result(0) == "value 2"  # resolved (and released) all the same


def test_a_caller_interrupted_in_its_turn_passes_the_turn_on() -> None:
    """The main thread's wait is interrupted (a signal handler raises) after the writer
    made it a link and before its turn came: the callers after it are still woken."""
    first, middle, last = reqs = _claimed(3)
    results, threads = _waiting([last])
    waiter = middle.future
    assert isinstance(waiter, Waiter)
    blocked, settled = _probe(middle), threading.Event()

    def settler() -> None:
        assert blocked.wait(WAIT)
        _settle(reqs)  # wakes `first`, whose caller is not waiting: the turn stops there
        settled.set()

    def on_alarm(signum: int, frame: Any) -> None:
        if not settled.is_set():  # too early: the main thread is not a link yet
            signal.setitimer(signal.ITIMER_REAL, 0.02)
            return
        raise Interrupted

    helper = threading.Thread(target=settler)
    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        helper.start()
        signal.setitimer(signal.ITIMER_REAL, 0.02)
        with pytest.raises(Interrupted):
            waiter.result(WAIT)  # its turn never comes: `first` is not waiting
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    helper.join(WAIT)
    _join(threads)  # `middle` passed its turn on as it left
    assert results == ["value 2"]
    assert first.future.result(0) == "value 0"
    assert waiter.result(0) == "value 1"


def test_a_resolved_caller_never_waits_for_its_turn() -> None:
    """A caller that asks for its result after the commit gets it at once and passes
    the turn on, even if the callers before it never ask (a broken chain costs at most
    a timeout, never a hang)."""
    first, second, third = reqs = _claimed(3)
    _settle(reqs)  # wakes `first`, which nobody waits on
    assert third.future.result(0) == "value 2"  # not its turn yet: taken all the same
    assert second.future.result(0) == "value 1"
    assert first.future.result(0) == "value 0"
    for req in reqs:
        assert req.future.result(0) == f"value {reqs.index(req)}"  # again: still instant


def test_a_slow_turn_wakes_everyone_left(monkeypatch: pytest.MonkeyPatch) -> None:
    """When a turn took longer than SLOW_TURN to reach its caller (another thread held
    the GIL), that caller wakes all the rest of the chain at once."""
    from safestore import _requests

    monkeypatch.setattr(_requests, "SLOW_TURN", -1.0)  # every turn counts as slow
    turns = Turns()
    reqs = _claimed(4)
    blocked = _probe(reqs[0])
    results, threads = _waiting(reqs[:1])  # only the first caller waits
    assert blocked.wait(WAIT)
    _settle(reqs, turns=turns)  # wakes it: its turn is slow, so it wakes 1, 2 and 3
    _join(threads)
    assert results == ["value 0"]
    for i in (1, 2, 3):
        waiter = reqs[i].future
        assert isinstance(waiter, Waiter)
        assert waiter._done.acquire(False), f"caller {i} was not woken"
        waiter._done.release()
        assert waiter._next is None
    # ... and the next groups are woken all at once, until turns are tried again.
    assert turns.skip == _requests.SLOW_GROUPS
    for _ in range(_requests.SLOW_GROUPS):
        reqs = _claimed(3)
        _settle(reqs, turns=turns)
        for req in reqs:
            assert isinstance(req.future, Waiter) and req.future._done.acquire(False)
    assert turns.skip == 0
    reqs = _claimed(3)
    _settle(reqs, turns=turns)
    woken = []
    for req in reqs:
        assert isinstance(req.future, Waiter)
        woken.append(req.future._done.acquire(False))
    assert woken == [True, False, False]  # in turn again: only the first


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted


def test_failed_group_and_wait_false_futures_resolve_as_before() -> None:
    """A group that failed as a whole wakes everyone with its error; real Futures
    (wait=False) are resolved directly, between the links."""
    from concurrent.futures import Future

    reqs = _claimed(4)
    real: Future[Any] = Future()
    assert real.set_running_or_notify_cancel()
    reqs[1].future = real
    results, threads = _waiting([reqs[0], reqs[2], reqs[3]])
    _settle(reqs)
    _join(threads)
    assert results == ["value 0", "value 2", "value 3"]
    assert real.result(0) == "value 1"

    reqs = _claimed(3)
    results, threads = _waiting(reqs)
    err = RuntimeError("disk full")
    _group.settle(_group.Counters(), reqs, [], err, Turns())
    _join(threads)
    assert results == [err, err, err]


def test_finish_in_turn_refuses_a_request_that_is_not_running() -> None:
    waiter = Waiter()
    with pytest.raises(Exception, match="not running"):
        waiter.finish_in_turn(1, None, None, Turns())
    assert waiter.cancel()


def test_an_interrupt_while_passing_the_turn_on_loses_no_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A KeyboardInterrupt inside the hand-over itself (here: at its clock reading) must
    not lose the turn: the next caller is still woken, not left to its timeout."""
    import time
    import types

    from safestore import _requests

    calls = 0
    real_monotonic = time.monotonic

    def interrupting_monotonic() -> float:
        nonlocal calls
        if threading.current_thread() is threading.main_thread():
            calls += 1
            if calls == 2:  # the first is the slow-turn check; the second, the hand-over
                raise KeyboardInterrupt
        return real_monotonic()

    monkeypatch.setattr(_requests, "time", types.SimpleNamespace(monotonic=interrupting_monotonic))
    first, second = reqs = _claimed(2)
    blocked = _probe(second)
    results, threads = _waiting([second], timeout=WAIT)
    assert blocked.wait(WAIT)
    _settle(reqs)
    with pytest.raises(KeyboardInterrupt):
        first.future.result(WAIT)
    started = real_monotonic()
    _join(threads)
    assert results == ["value 1"]
    assert real_monotonic() - started < WAIT / 2, "the next caller waited for its timeout"
