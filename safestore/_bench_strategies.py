"""The strategies `python -m safestore bench` compares: ways for N threads to insert.

Each strategy is a function ``(path, durability, threads, rows)`` that creates the
`bench` table in a fresh file, runs `rows` single-row inserts on each of `threads`
threads, and returns (seconds, every call's latency, calls that failed). The
alternatives are the ways programs share SQLite or DuckDB between threads without
safestore: a new sqlite3 connection per insert, one connection per thread, one shared
connection behind a `threading.Lock`, and a DuckDB cursor per thread (DuckDB's own
advice); `safestore_strategy(mode, wait)` makes the same run on a `Store` (its function
takes the backend as a fifth argument).

Concurrency: `run_threads` starts the clock only when every thread stands at one
`threading.Barrier`, so thread start-up is not timed, and stops it when the last one
has been joined. Where contention can make a call fail ("database is locked" after the
busy timeout), the strategy counts the failure and goes on instead of raising: how often
an alternative fails under load is part of the result.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._store import Store

__all__ = [
    "INSERT",
    "TABLE",
    "duckdb_cursor_per_thread",
    "run_threads",
    "safestore_strategy",
    "sqlite_connect",
    "sqlite_file",
    "sqlite_new_connection",
    "sqlite_per_thread",
    "sqlite_shared_lock",
]

TABLE = "CREATE TABLE IF NOT EXISTS bench (thread INTEGER, seq INTEGER, payload TEXT)"
INSERT = "INSERT INTO bench VALUES (?, ?, ?)"


def run_threads(
    threads: int, body: Callable[[int, list[float]], int]
) -> tuple[float, list[float], int]:
    """Run body(i, latencies) on `threads` threads started together; return
    (seconds, all latencies, errors)."""
    barrier = threading.Barrier(threads + 1)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads

    def target(i: int) -> None:
        barrier.wait()
        errors[i] = body(i, latencies[i])

    workers = [threading.Thread(target=target, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    return elapsed, [x for lat in latencies for x in lat], sum(errors)


def sqlite_file(path: Path, durability: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(TABLE)
    conn.close()


def sqlite_connect(path: Path, durability: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
    return conn


# --- strategies for "N threads x single-row inserts that wait for commit" --------------


def _one_insert(conn: Any, i: int, j: int) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(INSERT, (i, j, "x" * 16))
    conn.execute("COMMIT")


def time_calls(
    rows: int,
    lat: list[float],
    insert: Callable[[int], object],
    failure: type[BaseException] | tuple[type[BaseException], ...] = (),
    recover: Callable[[], object] | None = None,
) -> int:
    """Call ``insert(j)`` for each row, recording each call's latency in `lat`.

    Returns how many calls raised `failure` (after calling `recover`, if given).
    """
    errors = 0
    for j in range(rows):
        t = time.perf_counter()
        try:
            insert(j)
        except failure:
            errors += 1
            if recover is not None:
                recover()
        lat.append(time.perf_counter() - t)
    return errors


def sqlite_new_connection(
    path: Path, durability: str, threads: int, rows: int
) -> tuple[float, list[float], int]:
    sqlite_file(path, durability)

    def insert(i: int, j: int) -> None:
        conn = sqlite_connect(path, durability)
        try:
            _one_insert(conn, i, j)
        finally:
            conn.close()

    def body(i: int, lat: list[float]) -> int:
        return time_calls(rows, lat, lambda j: insert(i, j), sqlite3.Error)

    return run_threads(threads, body)


def sqlite_per_thread(
    path: Path, durability: str, threads: int, rows: int
) -> tuple[float, list[float], int]:
    sqlite_file(path, durability)

    def body(i: int, lat: list[float]) -> int:
        conn = sqlite_connect(path, durability)

        def recover() -> None:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

        try:
            return time_calls(rows, lat, lambda j: _one_insert(conn, i, j), sqlite3.Error, recover)
        finally:
            conn.close()

    return run_threads(threads, body)


def sqlite_shared_lock(
    path: Path, durability: str, threads: int, rows: int
) -> tuple[float, list[float], int]:
    sqlite_file(path, durability)
    conn = sqlite_connect(path, durability)
    lock = threading.Lock()

    def insert(i: int, j: int) -> None:
        with lock:
            _one_insert(conn, i, j)

    try:
        return run_threads(threads, lambda i, lat: time_calls(rows, lat, lambda j: insert(i, j)))
    finally:
        conn.close()


def duckdb_cursor_per_thread(
    path: Path, durability: str, threads: int, rows: int
) -> tuple[float, list[float], int]:
    import duckdb

    conn = duckdb.connect(str(path))
    conn.execute(TABLE)

    def body(i: int, lat: list[float]) -> int:
        cur = conn.cursor()
        try:
            return time_calls(
                rows, lat, lambda j: cur.execute(INSERT, (i, j, "x" * 16)), duckdb.Error
            )
        finally:
            cur.close()

    try:
        return run_threads(threads, body)
    finally:
        conn.close()


def safestore_strategy(mode: str, wait: bool) -> Callable[..., tuple[float, list[float], int]]:
    def run(
        path: Path, durability: str, threads: int, rows: int, backend: str = "sqlite"
    ) -> tuple[float, list[float], int]:
        options: dict[str, Any] = {"backend": backend, "mode": mode, "durability": durability}
        with Store(path, setup=TABLE, timeout=120, **options) as store:

            def body(i: int, lat: list[float]) -> int:
                futures: list[Any] = []

                def insert(j: int) -> None:
                    row = {"thread": i, "seq": j, "payload": "x" * 16}
                    if wait:
                        store.insert("bench", row)
                    else:
                        futures.append(store.insert("bench", row, wait=False))

                errors = time_calls(rows, lat, insert, Exception)
                if not wait:
                    store.flush()
                    errors += sum(1 for f in futures if f.exception() is not None)
                return errors

            return run_threads(threads, body)

    return run


# --- the sequential workload -------------------------------------------------------------


@contextmanager
def sequential_inserter(
    kind: str, backend: str, path: Path, durability: str
) -> Iterator[tuple[Callable[[int], object], type[BaseException]]]:
    """Open one strategy of the sequential workload and yield ``(insert, failure)``.

    `kind` is "raw" (the engine with a commit per insert) or a safestore mode. Opening
    and closing (connecting, a SQLite checkpoint at the last close) happen outside
    the caller's timing, for every strategy alike: only the inserts are timed.
    """
    payload = "x" * 16
    seq = itertools.count()  # row numbers go on from one round to the next
    if kind == "raw" and backend == "sqlite":
        sqlite_file(path, durability)
        conn = sqlite_connect(path, durability)

        def insert(_: int) -> None:
            try:
                _one_insert(conn, 0, next(seq))
            except sqlite3.Error:
                if conn.in_transaction:  # or every later insert fails too
                    conn.execute("ROLLBACK")
                raise

        try:
            yield insert, sqlite3.Error
        finally:
            conn.close()
    elif kind == "raw":
        import duckdb

        db = duckdb.connect(str(path))
        try:
            db.execute(TABLE)
            cur = db.cursor()
            try:
                yield (lambda _: cur.execute(INSERT, (0, next(seq), payload))), duckdb.Error
            finally:
                cur.close()
        finally:
            db.close()
    else:
        options: dict[str, Any] = {"backend": backend, "mode": kind, "durability": durability}
        with Store(path, setup=TABLE, timeout=120, **options) as store:
            row = {"thread": 0, "payload": payload}
            yield (lambda _: store.insert("bench", {**row, "seq": next(seq)})), Exception
