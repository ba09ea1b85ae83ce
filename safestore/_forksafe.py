"""Fork safety: no thread of ours is inside an engine at the moment the process forks.

`fork()` copies only the thread that calls it. A lock that another thread held inside
SQLite or DuckDB at that instant stays locked forever in the child. SQLite, for one,
takes a process-wide mutex around every memory allocation, so a child forked while our
writer thread was committing hung as soon as it opened a connection of its own.

So every call into an engine runs under its thread's *gate*: an `RLock` private to that
thread, hence almost never contended and cheap to take. Just before a fork, a hook
takes every thread's gate; each comes free as soon as its thread leaves the engine
call it is in. After the fork, parent and child release them all. The gate is
reentrant so that a thread which forks from inside an engine call (a `run()` function
that forks) takes its own gate at once.

Waiting is bounded by `FORK_WAIT` seconds in total: if a statement runs longer than that
(or a `run()` function blocks), the fork goes ahead with a logged warning, and a child
that uses SQLite or DuckDB might then hang as before. Creating a gate takes the
registry lock, which the hook holds until the fork is done, so a thread that has never
called an engine cannot slip into one while the process forks. Garbage collection is
off from the first hook to the last, so that no finalizer closes a store (and waits
for its writer) while the gates are held.

A thread that waits for another process's write lock (SQLite's busy handler, our
retries around it) counts as inside the engine: a fork then waits the full
`FORK_WAIT`.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger("safestore")

#: Longest a fork waits, in total, for threads to leave the engine calls they are in.
FORK_WAIT = 5.0

F = TypeVar("F", bound=Callable[..., Any])


class _Gate:
    """One thread's gate. Referenced only by that thread's `threading.local`."""

    __slots__ = ("__weakref__", "lock")

    def __init__(self) -> None:
        self.lock = threading.RLock()


_local = threading.local()
# Every live gate. Weak: a gate goes away with its thread's locals.
_gates: weakref.WeakSet[_Gate] = weakref.WeakSet()
# Held while a gate is created, and by the fork hook from before to after the fork.
_registry = threading.Lock()
_held: list[_Gate] = []  # the gates the hook took; released after the fork


def gate() -> threading.RLock:
    """The calling thread's gate: hold it while calling into an engine."""
    try:
        g: _Gate = _local.gate
    except AttributeError:
        g = _Gate()
        # Ours before it is registered: a garbage collection inside `add` can run a
        # store's finalizer on this thread, whose engine calls must find this gate
        # rather than take `_registry` again.
        _local.gate = g
        # Bounded: if `_registry` stays taken (a fork waiting for a long statement, or
        # a finalizer that a garbage collection ran inside `add` on another thread,
        # waiting for this very thread), register anyway after FORK_WAIT.
        got = _registry.acquire(timeout=FORK_WAIT)
        try:
            _gates.add(g)
        finally:
            if got:
                _registry.release()
    return g.lock


def gated(fn: F) -> F:
    """Wrap `fn` so that it runs under the calling thread's gate."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with gate():
            return fn(*args, **kwargs)

    return call  # type: ignore[return-value]


def _before_fork() -> None:
    global _registry_held, _gc_was_enabled, clean_fork
    # One fork at a time: two threads forking at once would share the state below.
    # Bounded: the fork in progress waits at most FORK_WAIT for gates, then forks.
    _forking.acquire()
    # No garbage collection until the fork is done: a collected store's finalizer
    # would close it, joining a writer whose gate this hook may already hold.
    _gc_was_enabled = gc.isenabled()
    gc.disable()
    deadline = time.monotonic() + FORK_WAIT
    _registry_held = _registry.acquire(timeout=FORK_WAIT)
    busy = 0
    for g in list(_gates):
        if g.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            _held.append(g)
        else:
            busy += 1
    clean_fork = not busy and _registry_held
    if busy or not _registry_held:
        log.warning(
            "forking while %d thread(s) stayed inside SQLite or DuckDB for %.0fs; "
            "the child may hang if it uses an engine",
            max(busy, 1),
            FORK_WAIT,
        )


def _release_held() -> None:
    # In the child the forking thread still owns these locks (same thread identity),
    # so the same release works on both sides.
    for g in _held:
        try:
            g.lock.release()
        except RuntimeError:  # not ours after all (an interrupted hook): leave it
            pass
    _held.clear()
    if _gc_was_enabled:
        gc.enable()


def _after_fork_in_parent() -> None:
    global _registry_held
    _release_held()
    if _registry_held:
        _registry.release()
        _registry_held = False
    _forking.release()


def _after_fork_in_child() -> None:
    global _registry, _registry_held, _forking
    _release_held()
    # Only this thread exists in the child. Forget the other threads' gates (some may
    # be held for good: their owners are gone), and start with fresh locks, in case
    # a thread that no longer exists held one at the fork.
    mine = getattr(_local, "gate", None)
    _gates.clear()
    if mine is not None:
        _gates.add(mine)
    _registry = threading.Lock()
    _registry_held = False
    _forking = threading.Lock()


#: Whether the last fork took every thread's gate (no thread was inside an engine
#: call); read in the child, where it says whether inherited connections are usable.
clean_fork = True
_forking = threading.Lock()  # held from before a fork to after it
_registry_held = False  # whether _before_fork got `_registry`
_gc_was_enabled = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
