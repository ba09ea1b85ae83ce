"""`python -m safestore bench`: safestore beside the usual alternatives, in one run.

Every strategy runs the same workload on a fresh file in a temporary folder, one after
another in one process (the sequential workload's strategies take turns, in rounds), so
the ratios printed at the end compare like with like on the machine at hand. Absolute numbers vary between machines and runs; the ratios are the
point.

This module holds the workloads (which strategies run, on which engines and
durabilities, and how each run is measured into an `Outcome`) and `main`. The strategies
themselves are in _bench_strategies.py; the table, ratios, JSON and chart in
_bench_report.py. Workloads run one after another in the main thread; threads exist
only inside one run.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ._bench_report import plot, render, set_ratios, write_json
from ._bench_strategies import (
    INSERT,
    TABLE,
    duckdb_cursor_per_thread,
    run_threads,
    safestore_strategy,
    sequential_inserter,
    sqlite_connect,
    sqlite_file,
    sqlite_new_connection,
    sqlite_per_thread,
    sqlite_shared_lock,
    time_calls,
)
from ._store import Store


@dataclass
class Outcome:
    """One strategy's run of one workload."""

    workload: str
    backend: str
    durability: str
    strategy: str
    ours: bool
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    rows_found: int
    rows_expected: int
    extra: dict[str, float] = field(default_factory=dict)
    ratio: float | None = None  # to the best alternative of the same group (ours only)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, round(q * (len(ordered) - 1)))
    return ordered[index] * 1e3


def _measured(
    workload: str,
    backend: str,
    durability: str,
    strategy: str,
    ours: bool,
    timing: tuple[float, list[float], int],
    found: int,
    expected: int,
) -> Outcome:
    """An Outcome from a timed run: (seconds, per-call latencies, errors)."""
    elapsed, lat, errors = timing
    return Outcome(
        workload,
        backend,
        durability,
        strategy,
        ours,
        found / elapsed if elapsed else 0.0,
        _percentile(lat, 0.5),
        _percentile(lat, 0.99),
        errors,
        found,
        expected,
    )


def _count(backend: str, path: Path) -> int:
    with Store(path, backend=backend, read_only=True) as store:  # type: ignore[arg-type]
        row = store.query_one("SELECT count(*) FROM bench")
    return int(row[0]) if row else 0


# --- workloads ---------------------------------------------------------------------------


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bench_threads(
    folder: Path, backends: list[str], durabilities: list[str], threads: int, rows: int, wait: bool
) -> list[Outcome]:
    """N threads x `rows` single-row inserts (waiting for commit, or wait=False + flush)."""
    workload = "threads-wait" if wait else "threads-nowait"
    out: list[Outcome] = []
    for backend in backends:
        for durability in durabilities:
            if backend == "duckdb" and durability == "normal":
                continue  # DuckDB has one durability level (see docs/duckdb.md)
            strategies: list[tuple[str, bool, Callable[..., tuple[float, list[float], int]]]] = []
            if wait:
                if backend == "sqlite":
                    strategies += [
                        ("sqlite3: new connection per insert", False, sqlite_new_connection),
                        ("sqlite3: connection per thread", False, sqlite_per_thread),
                        ("sqlite3: shared connection + Lock", False, sqlite_shared_lock),
                    ]
                else:
                    strategies += [
                        ("duckdb: cursor per thread (guide)", False, duckdb_cursor_per_thread)
                    ]
            for mode in ("queue", "lock"):
                run = safestore_strategy(mode, wait)
                strategies.append(
                    (
                        f"safestore {mode}{'' if wait else ' wait=False+flush'}",
                        True,
                        lambda p, d, t, r, run=run, backend=backend: run(p, d, t, r, backend),
                    )
                )
            for name, ours, fn in strategies:
                suffix = "duckdb" if backend == "duckdb" else "db"
                path = folder / f"{workload}-{backend}-{durability}-{len(out)}.{suffix}"
                _progress(f"  {workload} {backend}/{durability}: {name} ...")
                timing = fn(path, durability, threads, rows)
                found = _count(backend, path)
                out.append(
                    _measured(
                        workload, backend, durability, name, ours, timing, found, threads * rows
                    )
                )
    return out


#: The sequential workload runs its strategies in turns, this many rounds each, so that
#: the machine's drift (a disk whose fsync gets slower for a while) falls on all of them
#: alike instead of on whichever ran during the slow stretch.
SEQUENTIAL_ROUNDS = 5


def bench_sequential(
    folder: Path, backends: list[str], durabilities: list[str], rows: int
) -> list[Outcome]:
    """One thread, sequential inserts that wait: safestore vs the raw engine, commit per insert.

    The strategies stay open side by side and take turns (SEQUENTIAL_ROUNDS chunks
    each), and only their inserts are timed.
    """
    out: list[Outcome] = []
    for backend in backends:
        for durability in durabilities:
            if backend == "duckdb" and durability == "normal":
                continue
            suffix = "duckdb" if backend == "duckdb" else "db"
            raw = (
                "sqlite3: commit per insert"
                if backend == "sqlite"
                else "duckdb: autocommit per insert"
            )
            strategies = [(raw, "raw"), ("safestore queue", "queue"), ("safestore lock", "lock")]
            paths = {
                kind: folder / f"seq-{kind}-{backend}-{durability}.{suffix}"
                for _, kind in strategies
            }
            elapsed = dict.fromkeys(paths, 0.0)
            latencies: dict[str, list[float]] = {kind: [] for kind in paths}
            errors = dict.fromkeys(paths, 0)
            rounds = max(1, min(SEQUENTIAL_ROUNDS, rows))
            _progress(f"  sequential {backend}/{durability}: {rounds} rounds of each strategy ...")
            with contextlib.ExitStack() as stack:
                inserters = {
                    kind: stack.enter_context(sequential_inserter(kind, backend, path, durability))
                    for kind, path in paths.items()
                }
                for turn in range(rounds):
                    share = rows // rounds + (1 if turn < rows % rounds else 0)
                    for kind, (insert, failure) in inserters.items():
                        start = time.perf_counter()
                        errors[kind] += time_calls(share, latencies[kind], insert, failure)
                        elapsed[kind] += time.perf_counter() - start
            for name, kind in strategies:
                timing = (elapsed[kind], latencies[kind], errors[kind])
                found = _count(backend, paths[kind])
                out.append(
                    _measured(
                        "sequential", backend, durability, name, kind != "raw", timing, found, rows
                    )
                )
    return out


def bench_bulk(folder: Path, backends: list[str], rows: int) -> list[Outcome]:
    """One call inserting `rows` rows vs the engine's own bulk path in one transaction."""
    out: list[Outcome] = []
    data = [(0, i, "x" * 16) for i in range(rows)]
    dicts = [{"thread": 0, "seq": i, "payload": "x" * 16} for i in range(rows)]
    for backend in backends:
        suffix = "duckdb" if backend == "duckdb" else "db"
        path = folder / f"bulk-raw-{backend}.{suffix}"
        _progress(f"  bulk {backend}: engine's own bulk path ...")
        if backend == "sqlite":
            sqlite_file(path, "full")
            conn = sqlite_connect(path, "full")
            t = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT, data)
            conn.execute("COMMIT")
            elapsed = time.perf_counter() - t
            conn.close()
            raw_name = "sqlite3: executemany, one transaction"
        else:
            import duckdb

            dconn = duckdb.connect(str(path))
            dconn.execute(TABLE)
            t = time.perf_counter()
            appender = dconn.appender("bench")
            appender.append_rows(data)
            appender.flush()
            elapsed = time.perf_counter() - t
            dconn.close()
            raw_name = "duckdb: appender, one flush"
        found = _count(backend, path)
        out.append(
            Outcome(
                "bulk",
                backend,
                "full",
                raw_name,
                False,
                found / elapsed,
                elapsed * 1e3,
                elapsed * 1e3,
                0,
                found,
                rows,
            )
        )
        for mode in ("queue", "lock"):
            path = folder / f"bulk-{mode}-{backend}.{suffix}"
            _progress(f"  bulk {backend}: safestore {mode} insert() of {rows:,} rows ...")
            with Store(path, backend=backend, mode=mode, setup=TABLE, timeout=300) as store:  # type: ignore[arg-type]
                t = time.perf_counter()
                store.insert("bench", dicts)
                elapsed = time.perf_counter() - t
            found = _count(backend, path)
            out.append(
                Outcome(
                    "bulk",
                    backend,
                    "full",
                    f"safestore {mode}",
                    True,
                    found / elapsed,
                    elapsed * 1e3,
                    elapsed * 1e3,
                    0,
                    found,
                    rows,
                )
            )
    return out


def bench_reads(
    folder: Path, backends: list[str], threads: int, rows: int, readers: int
) -> list[Outcome]:
    """Read latency of the same readers on an idle store, then during a write storm."""
    return [_reads_one(folder, backend, threads, rows, readers) for backend in backends]


#: The rows written before the readers start; the queries each reader runs while idle.
SEED, IDLE_READS = 1000, 500
#: The readers' query reads the seed rows by rowid range: the same work whether the
#: table holds 1,000 rows (idle) or 11,000 (the end of the storm), so that the two
#: latencies compare the waiting, not the size of a scan. SQLite numbers rowids from 1,
#: DuckDB from 0.
SEED_QUERY = {
    "sqlite": f"SELECT count(*), max(seq) FROM bench WHERE rowid <= {SEED}",
    "duckdb": f"SELECT count(*), max(seq) FROM bench WHERE rowid < {SEED}",
}


def _read_latencies(
    store: Store,
    query: str,
    readers: int,
    storm: Callable[[], float],
    report: Callable[[str, BaseException], None],
) -> tuple[list[float], list[float], int, float]:
    """Time `readers` threads querying on the idle store, then while `storm()` writes.

    Each reader runs 50 queries and pauses 1 ms, as a dashboard does: IDLE_READS
    queries on the idle store, then again until the storm is over. The same threads,
    and so the same connections, read in both phases. Returns (idle latencies, storm
    latencies, wrong or failed reads, the storm's seconds).
    """
    idle_done = threading.Barrier(readers + 1)
    stop = threading.Event()
    idle: list[list[float]] = [[] for _ in range(readers)]
    during: list[list[float]] = [[] for _ in range(readers)]
    wrong = [0] * readers
    expect = (SEED, SEED - 1)

    def timed(k: int, lat: list[float]) -> None:
        t = time.perf_counter()
        try:
            ok = store.query_one(query) == expect
        except Exception as exc:
            report("a read", exc)
            ok = False
        lat.append(time.perf_counter() - t)
        wrong[k] += not ok

    def reader(k: int) -> None:
        timed(k, [])  # opens this thread's connection: not part of any latency
        while len(idle[k]) < IDLE_READS:
            for _ in range(50):
                timed(k, idle[k])
            stop.wait(0.001)
        try:
            idle_done.wait(120)
        except threading.BrokenBarrierError:
            return  # the main thread gave up (see below)
        while not stop.is_set():
            for _ in range(50):
                timed(k, during[k])
                if stop.is_set():
                    return
            stop.wait(0.001)

    workers = [threading.Thread(target=reader, args=(k,)) for k in range(readers)]
    for w in workers:
        w.start()
    elapsed = 0.0
    try:
        idle_done.wait(120)  # every reader is done with its idle queries
        elapsed = storm()
    finally:
        # However the storm ended, the readers stop: one still at the barrier is
        # released by abort(), the others see `stop`.
        stop.set()
        idle_done.abort()
        for w in workers:
            w.join()
    return [x for lat in idle for x in lat], [x for lat in during for x in lat], sum(wrong), elapsed


class _FirstFailure:
    """Shows the first failed call of a run on the progress stream (the table counts
    them all), so that an error count comes with a cause."""

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, what: str, exc: BaseException) -> None:
        if not self.seen:
            self.seen = True
            _progress(f"  {what} failed: {exc!r}")


def _reads_one(folder: Path, backend: str, threads: int, rows: int, readers: int) -> Outcome:
    """Read latency of one backend: the readers idle, then during a write storm."""
    suffix = "duckdb" if backend == "duckdb" else "db"
    path = folder / f"reads-{backend}.{suffix}"
    _progress(f"  reads {backend}: {readers} reader(s) idle, then during a write storm ...")
    write_errors = [0] * threads
    report = _FirstFailure()
    with Store(path, backend=backend, setup=TABLE, timeout=120) as store:  # type: ignore[arg-type]
        store.insert("bench", [{"thread": -1, "seq": i, "payload": "seed"} for i in range(SEED)])

        def writer(i: int, lat: list[float]) -> int:
            for j in range(rows):
                try:
                    store.insert("bench", {"thread": i, "seq": j, "payload": "x" * 16})
                except Exception as exc:
                    report("a write", exc)
                    write_errors[i] += 1
            return write_errors[i]

        def storm() -> float:
            return run_threads(threads, writer)[0]

        idle, during, wrong, elapsed = _read_latencies(
            store, SEED_QUERY[backend], readers, storm, report
        )
    found = _count(backend, path)
    idle_p99 = _percentile(idle, 0.99)
    storm_p99 = _percentile(during, 0.99)
    return Outcome(
        "reads",
        backend,
        "full",
        "safestore queue: reads during writes",
        True,
        (found - SEED) / elapsed,
        _percentile(during, 0.5),
        storm_p99,
        wrong + sum(write_errors),
        found,
        threads * rows + SEED,
        extra={
            "idle_p50_ms": _percentile(idle, 0.5),
            "idle_p99_ms": idle_p99,
            "p99_over_idle": storm_p99 / idle_p99 if idle_p99 else 0.0,
            "reads": float(len(during)),
            "idle_reads": float(len(idle)),
            "readers": float(readers),
        },
    )


def main(
    argv_threads: int,
    rows: int,
    backends: list[str],
    durabilities: list[str],
    json_file: str | None,
    plot_file: str | None,
    bulk_rows: int,
    readers: int = 1,
) -> int:
    """Run every workload and print the table; returns a process exit status."""
    _progress(
        f"safestore bench: {argv_threads} threads x {rows} rows, {os.cpu_count()} CPUs, "
        f"Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}"
    )
    with tempfile.TemporaryDirectory(prefix="safestore-bench-") as tmp:
        folder = Path(tmp)
        results = bench_threads(folder, backends, durabilities, argv_threads, rows, wait=True)
        results += bench_threads(folder, backends, durabilities, argv_threads, rows, wait=False)
        results += bench_sequential(folder, backends, durabilities, max(rows * 5, 100))
        results += bench_bulk(folder, backends, bulk_rows)
        results += bench_reads(folder, backends, argv_threads, rows, readers)
    set_ratios(results)
    print(render(results))
    if json_file:
        write_json(results, json_file, argv_threads, rows)
    if plot_file:
        plot(results, plot_file)
    bad = [r for r in results if r.ours and (r.errors or r.rows_found != r.rows_expected)]
    return 1 if bad else 0
