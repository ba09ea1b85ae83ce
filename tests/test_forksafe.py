"""Fork safety: a fork never copies one of our threads in the middle of an engine call.

The at-fork hook of safestore._forksafe takes every thread's gate before the fork. These
tests drive the hook directly (to order threads exactly) and then fork for real while
the store is busy, checking that every child can use an engine.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.conftest import WAIT, Gate, db_path

import safestore
from safestore import _forksafe


def _in_engine(store: safestore.Store) -> tuple[Gate, threading.Thread]:
    """Start a thread whose `run()` call stays inside the engine until the gate opens.

    Queue mode runs the function on the writer thread, lock mode on the calling one:
    either way a thread sits inside a gated engine call.
    """
    gate = Gate()
    thread = threading.Thread(target=store.run, args=(gate.hold,))
    thread.start()
    assert gate.entered.wait(WAIT)
    return gate, thread


def test_fork_hook_waits_for_engine_calls_then_warns(
    store: safestore.Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A thread stuck inside the engine holds the fork back only FORK_WAIT seconds, with a warning."""
    monkeypatch.setattr(_forksafe, "FORK_WAIT", 0.2)
    gate, thread = _in_engine(store)
    try:
        with caplog.at_level(logging.WARNING, logger="safestore"):
            start = time.monotonic()
            _forksafe._before_fork()
            _forksafe._after_fork_in_parent()
        assert time.monotonic() - start < WAIT
        assert "stayed inside SQLite or DuckDB" in caplog.text
    finally:
        gate.release()
        thread.join(WAIT)
    assert not thread.is_alive()


def _held_back_by_a_fork(
    target: Callable[[], None], started: threading.Event, done: threading.Event
) -> None:
    """Run `target` on a thread started inside a fork (between the before- and
    after-fork hooks) and check that it cannot finish until the fork is over."""
    _forksafe._before_fork()
    try:
        thread = threading.Thread(target=target)
        thread.start()
        assert started.wait(WAIT)
        assert not done.wait(0.3)  # bounded check: it must wait for the fork to end
    finally:
        _forksafe._after_fork_in_parent()
    assert done.wait(WAIT)
    thread.join(WAIT)
    assert not thread.is_alive()


def test_engine_calls_wait_while_the_process_forks(store: safestore.Store) -> None:
    """Between the before- and after-fork hooks, no thread can enter the engine."""
    store.insert("t", {"v": "a"})
    store.query("SELECT 1")  # this thread (and the writer) now have gates
    started, done = threading.Event(), threading.Event()
    seen: list[object] = []

    def reader() -> None:
        started.set()
        seen.append(store.query_one("SELECT count(*) FROM t"))
        done.set()

    # Cannot finish while the hook holds the gates (a new thread waits for the
    # registry, one with a gate for its gate).
    _held_back_by_a_fork(reader, started, done)
    assert seen == [(1,)]


def test_forks_from_two_threads_take_turns() -> None:
    """Two threads forking at once: the second fork's hook waits for the first's to end."""
    gc_was = gc.isenabled()
    entered, done = threading.Event(), threading.Event()

    def other_fork() -> None:
        entered.set()
        _forksafe._before_fork()
        _forksafe._after_fork_in_parent()
        done.set()

    _held_back_by_a_fork(other_fork, entered, done)
    assert gc.isenabled() == gc_was
    assert _forksafe._registry.acquire(timeout=WAIT)
    _forksafe._registry.release()


@pytest.mark.fault
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_children_forked_mid_commit_can_open_stores(
    store: safestore.Store, tmp_path: Path, backend: str
) -> None:
    """Fork repeatedly while threads write hard: every child opens and uses a new store."""
    stop = threading.Event()

    def writer(w: int) -> None:
        i = 0
        while not stop.is_set():
            store.insert("t", {"v": f"{w}-{i}", "n": w})
            i += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    statuses = []
    try:
        for n in range(10):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
                pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                code = 1
                try:
                    with safestore.Store(
                        db_path(tmp_path, backend, f"child{n}"), setup="CREATE TABLE c (a INTEGER)"
                    ) as fresh:
                        fresh.insert("c", {"a": n})
                        code = 0 if fresh.query_one("SELECT a FROM c") == (n,) else 2
                finally:
                    os._exit(code)
            deadline = time.monotonic() + WAIT
            while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    pytest.fail(f"child {n} hung (forked mid-commit)")
                time.sleep(0.01)  # polling a child's exit, not ordering threads
            statuses.append(os.waitstatus_to_exitcode(done[1]))
    finally:
        stop.set()
        for t in threads:
            t.join(WAIT)
    assert statuses == [0] * 10
    assert store.query_one("SELECT count(*) FROM t") is not None


def test_fork_while_another_thread_holds_the_readers_lock(store: safestore.Store) -> None:
    """The child's fork hook never waits for a lock a parent thread held at the fork
    (the readers' registry lock, taken by stats(), a first read or close())."""
    import warnings

    store.query("SELECT 1")  # this thread has a read connection for the hook to find
    with store._readers._lock, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child: its hook ran, then it exits
            os._exit(0)
    deadline = time.monotonic() + WAIT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the child hung in the fork hook")
        threading.Event().wait(0.01)
    assert os.waitstatus_to_exitcode(status) == 0
