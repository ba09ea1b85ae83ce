"""Process-wide lifecycle of stores: interpreter exit and fork.

Every open `Store` registers itself in `live` (weakly, so a forgotten store can still
be garbage-collected). At interpreter exit the atexit hook closes each one, committing
everything it accepted. In a forked child the at-fork hook bumps `fork_generation`,
which every store inherited from the parent compares with the generation it was opened
in, so that any use of it in the child raises at once; and it makes sure the child
never closes (or checkpoints) the connections it inherited.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from ._store import Store

log = logging.getLogger("safestore")

#: Bumped in a forked child; a store opened before the fork sees it changed.
fork_generation = 0

#: Every open store. Weak, so it never keeps a forgotten store alive.
live: weakref.WeakSet[Store] = weakref.WeakSet()

# Writers told to close from their own thread (by a run() function, or by the finalizer
# of a store collected there), which could not wait for themselves: the exit hook
# waits for them to finish their queues. Strong references: the store may be gone.
_draining: list[Any] = []
_draining_lock = threading.Lock()

# Engines and readers inherited by a forked child. Kept referenced for the child's
# whole life so that the connections the backend could not close safely (see
# `release_in_child`) are never closed, or checkpointed, there: a SQLite connection's
# last close checkpoints and deletes the parent's WAL under it.
_orphaned: list[Any] = []
_pinned = False  # whether _orphaned has its never-dropped reference


_exit_hooks: list[Callable[[], None]] = []  # safestore's, in the order registered
_exit_hooks_run: set[Callable[[], None]] = set()
#: Whether duckdb was imported before safestore: its exit cleanup then runs after
#: safestore's hooks already (atexit runs the hook registered last first).
duckdb_imported_first = "duckdb" in sys.modules


def exit_hook(fn: Callable[[], None]) -> Callable[[], None]:
    """Register `fn` to run once at interpreter exit (as `atexit.register`), among
    safestore's hooks that `exit_hooks_first` can run ahead of others."""
    _exit_hooks.append(fn)
    atexit.register(_run_once, fn)
    return fn


def _run_once(fn: Callable[[], None]) -> None:
    if fn not in _exit_hooks_run:  # atexit runs hooks one at a time, in one thread
        _exit_hooks_run.add(fn)
        fn()


def exit_hooks_first() -> None:
    """Make safestore's exit hooks run before every other atexit hook registered so far.

    atexit runs the hook registered last first. `import duckdb` registers DuckDB's own
    cleanup, and safestore imports duckdb only when a DuckDB store opens, after its own
    hooks: that cleanup would then run first, and make the statements the writers
    still have to commit fail. One more hook, registered now, runs safestore's in
    their order, first; where they were registered first, they then do nothing. (So
    hooks registered between the two imports run after safestore's: docs/concurrency.md
    tells users to register theirs after opening the store.)

    Nothing is unregistered: during exit (a DuckDB store first opened by an atexit
    hook), atexit skips hooks registered meanwhile, and the original ones must still run.
    """
    atexit.register(_run_all)


def _run_all() -> None:
    for fn in reversed(_exit_hooks):  # the order atexit would run them in
        _run_once(fn)


@exit_hook
def _close_all_at_exit() -> None:
    """Commit every accepted write of every store still open at interpreter exit.

    Runs after non-daemon threads have been joined and before modules are torn down,
    so the writer threads (daemons) are still alive to drain their queues.
    """
    handled: set[int] = set()  # engines already waited for (or given up on) below
    for store in list(live):  # emptied in a forked child by _after_fork_in_child
        handled.add(id(store._engine))
        # Queue mode waits for the writer to commit everything queued, as long as it
        # makes progress (QueueEngine.close). Lock mode has nothing queued: it only
        # waits for the thread holding the lock, which may be a daemon thread inside a
        # transaction, or one that is gone for good (a thread pool that exit tears down
        # while one of its threads holds the lock); that wait is bounded by the store's
        # timeout (LockEngine.close). Either way a statement that never ends is
        # interrupted first.
        try:
            store.close()
        except TimeoutError:
            store._engine.abandon_at_exit(store)
        except Exception:  # keep closing the others
            log.exception("closing %r at exit failed", store)
    with _draining_lock:
        engines = list(_draining)
        _draining.clear()
    for engine in engines:
        if id(engine) in handled:
            continue
        try:
            engine.close(None)  # from this thread it waits, as Store.close() does
        except TimeoutError:
            engine.abandon_at_exit(engine)
        except Exception:
            log.exception("closing a store's writer at exit failed")


def close_at_exit(engine: Any) -> None:
    """Have the exit hook wait for `engine`'s writer, which was closed from its own thread.

    Engines whose writer has finished meanwhile are closed and dropped here, so the
    list stays short in a program that keeps forgetting stores.
    """
    with _draining_lock:
        done = [e for e in _draining if e.state.exited.is_set()]
        _draining[:] = [e for e in _draining if e not in done]
        _draining.append(engine)
    for e in done:
        e.close_connection()


def _after_fork_in_child() -> None:
    global fork_generation, _draining_lock
    fork_generation += 1
    # The parent's draining writers are not the child's to wait for or close (and the
    # lock may have been held by one of the parent's threads at the fork).
    _draining_lock = threading.Lock()
    _orphaned.extend(_draining)
    _draining.clear()
    if not live and not _orphaned:
        return
    for store in list(live):
        _orphaned.extend(store._detach_after_fork())
    live.clear()
    _never_free(_orphaned)


def leave_forked_child(why: str) -> NoReturn:
    """End a forked child that is running on a copy of one of our threads.

    `os._exit`: no atexit hooks, no flushing of the parent's buffers or closing of its
    inherited connections, none of which this child owns.
    """
    try:
        os.write(2, f"safestore: {why} (pid {os.getpid()})\n".encode())
    finally:
        os._exit(1)


def _never_free(obj: object) -> None:
    """Keep `obj` (and what it holds) alive past interpreter teardown in a forked child.

    A module-level reference is not enough: teardown clears module dicts, and the
    inherited connections would then be closed in the child. Closing the last SQLite
    connection to a WAL file checkpoints it and deletes the parent's -wal and -shm files;
    destroying the inherited DuckDB instance checkpoints into the parent's file (and
    crashed the child). One extra reference that is never dropped prevents both; the
    memory goes back to the OS when the child exits.
    """
    global _pinned
    if _pinned:
        return
    try:
        import ctypes

        ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))
        _pinned = True
    except Exception:  # no ctypes: the module reference is the best we can do
        pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
