"""Shared fixtures: every behaviour runs on {sqlite, duckdb} x {queue, lock}."""

from __future__ import annotations

import gc
import os
import sqlite3
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import safestore

BACKENDS = ["sqlite", "duckdb"]
MODES = ["queue", "lock"]
WAIT = 30.0  # bound on every wait in the tests; a hang becomes a failure, not a stall

SQLITE_SCHEMA = "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE, n INTEGER)"
# DuckDB has no rowid alias: the ids come from a sequence instead.
DUCKDB_SCHEMA = (
    "CREATE SEQUENCE t_id; "
    "CREATE TABLE t (id INTEGER PRIMARY KEY DEFAULT nextval('t_id'), v TEXT UNIQUE, n INTEGER)"
)


def SCHEMA(conn: Any) -> None:
    """`setup` callable: table t(id auto-assigned, v TEXT UNIQUE, n INTEGER) on either engine."""
    sqlite = isinstance(conn, sqlite3.Connection)
    conn.execute(SQLITE_SCHEMA if sqlite else DUCKDB_SCHEMA)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    del items


def db_path(tmp_path: Path, backend: str, name: str = "test") -> str:
    return str(tmp_path / (f"{name}.duckdb" if backend == "duckdb" else f"{name}.db"))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(tmp_path: Path, backend: str, mode: str) -> Iterator[Callable[..., safestore.Store]]:
    """Build stores on this test's backend and mode; all are closed at teardown."""
    made: list[safestore.Store] = []

    def make(target: str | None = None, **kwargs: Any) -> safestore.Store:
        kwargs.setdefault("mode", mode)
        kwargs.setdefault("backend", backend)
        kwargs.setdefault("timeout", WAIT)
        store = safestore.Store(target or db_path(tmp_path, backend), **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        if not store._forked():
            store.close()


@pytest.fixture
def store(make_store: Callable[..., safestore.Store]) -> safestore.Store:
    """A store with table t(id INTEGER PRIMARY KEY, v TEXT UNIQUE, n INTEGER)."""
    return make_store(setup=SCHEMA)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail any test that leaves a safestore-* thread running."""
    before = {t for t in threading.enumerate() if t.name.startswith("safestore")}
    yield
    gc.collect()
    leaked = [
        t for t in threading.enumerate() if t.name.startswith("safestore") and t not in before
    ]
    for t in leaked:
        t.join(WAIT)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"leaked threads: {still}"


def _open_files_under(base: str) -> set[tuple[int, str]]:
    """(fd, path) of this process's descriptors on files under `base` (Linux /proc)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (the listing's own descriptor, another thread)
            continue
        if target.startswith(base):
            found.add((int(fd), target))
    return found


@pytest.fixture(autouse=True)
def no_leaked_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail any test that leaves a descriptor open on a file in pytest's temp directory.

    Every file-backed connection, SQLite or DuckDB, writer or reader, holds descriptors
    on its database files, so this also catches connections left open. (In-memory
    connections hold none; their stores' threads are checked above.)
    """
    if not os.path.isdir("/proc/self/fd"):
        yield
        return
    base = str(tmp_path_factory.getbasetemp())
    before = _open_files_under(base)
    yield
    gc.collect()
    leaked = _open_files_under(base) - before
    assert not leaked, f"open file descriptors left behind: {sorted(leaked)}"


def count(store: safestore.Store, table: str = "t") -> int:
    row = store.query_one(f"SELECT count(*) FROM {table}")
    assert row is not None
    return int(row[0])


def in_thread(fn: Callable[[], Any]) -> Any:
    """Run `fn` in a new thread and return its result (or raise its exception).

    The wait is bounded by WAIT: a hang fails the test instead of stalling the run.
    """
    return Worker(fn).join()


class Worker:
    """A thread that runs `fn` and keeps its result or exception; `done` is set after.

    A daemon, and `join` is bounded by WAIT: a hang fails the test instead of stalling
    the run (or the interpreter's exit).
    """

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.started = threading.Event()
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        self.started.set()
        try:
            self.result = self.fn()
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def join(self) -> Any:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "worker thread hung"
        if self.error is not None:
            raise self.error
        return self.result


def fork_and_report(fn: Callable[[], str]) -> str:
    """Run fn in a forked child; return what it reported through a pipe."""
    r, w = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads running
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            msg = fn()
        except BaseException as exc:
            msg, code = f"child raised {exc!r}", 1
        os.write(w, msg.encode())
        os._exit(code)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(r) as f:
        out = f.read()
    assert os.waitstatus_to_exitcode(status) == 0, out
    return out


class SignallingLock:
    """A lock's stand-in that sets `acquiring` when someone starts to acquire it, so a
    test can act only once a thread really waits on the lock it wraps."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.acquiring = threading.Event()

    def acquire(self, *args: Any, **kwargs: Any) -> bool:
        self.acquiring.set()
        return bool(self.lock.acquire(*args, **kwargs))

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class Gate:
    """Freeze the writer on demand: `store.run(gate.hold, wait=False)` blocks the
    writer (queue mode) inside its transaction until `release()`."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()

    def hold(self, conn: Any) -> str:
        self.entered.set()
        assert self.released.wait(WAIT), "gate never released"
        return "held"

    def release(self) -> None:
        self.released.set()


def freeze(store: safestore.Store) -> tuple[Gate, Any]:
    """Stall the writer (queue mode) until `gate.release()`; returns (gate, its future).

    In lock mode calls run on the caller's thread, so there is nothing to stall: the
    gate is released at once and later writes simply run one after another.
    """
    gate = Gate()
    if store.mode == "lock":
        gate.release()
    held = store.run(gate.hold, wait=False)
    assert gate.entered.wait(WAIT)
    return gate, held
