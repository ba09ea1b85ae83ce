"""`python -m safestore bench`: safestore beside the usual alternatives, in one run.

Every strategy runs the same workload on a fresh file in a temporary folder, one after
another in one process, so the ratios printed at the end compare like with like on the
machine at hand. Absolute numbers vary between machines and runs; the ratios are the
point.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._store import Store

TABLE = "CREATE TABLE IF NOT EXISTS bench (thread INTEGER, seq INTEGER, payload TEXT)"
INSERT = "INSERT INTO bench VALUES (?, ?, ?)"


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


def _run_threads(
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


def _sqlite_file(path: Path, durability: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(TABLE)
    conn.close()


def _sqlite_connect(path: Path, durability: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
    return conn


def _count(backend: str, path: Path) -> int:
    with Store(path, backend=backend, read_only=True) as store:  # type: ignore[arg-type]
        row = store.query_one("SELECT count(*) FROM bench")
    return int(row[0]) if row else 0


# --- strategies for "N threads x single-row inserts that wait for commit" --------------


def _one_insert(conn: Any, i: int, j: int) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(INSERT, (i, j, "x" * 16))
    conn.execute("COMMIT")


def _timed(
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
    _sqlite_file(path, durability)

    def insert(i: int, j: int) -> None:
        conn = _sqlite_connect(path, durability)
        try:
            _one_insert(conn, i, j)
        finally:
            conn.close()

    def body(i: int, lat: list[float]) -> int:
        return _timed(rows, lat, lambda j: insert(i, j), sqlite3.Error)

    return _run_threads(threads, body)


def sqlite_per_thread(
    path: Path, durability: str, threads: int, rows: int
) -> tuple[float, list[float], int]:
    _sqlite_file(path, durability)

    def body(i: int, lat: list[float]) -> int:
        conn = _sqlite_connect(path, durability)

        def recover() -> None:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

        try:
            return _timed(rows, lat, lambda j: _one_insert(conn, i, j), sqlite3.Error, recover)
        finally:
            conn.close()

    return _run_threads(threads, body)


def sqlite_shared_lock(
    path: Path, durability: str, threads: int, rows: int
) -> tuple[float, list[float], int]:
    _sqlite_file(path, durability)
    conn = _sqlite_connect(path, durability)
    lock = threading.Lock()

    def insert(i: int, j: int) -> None:
        with lock:
            _one_insert(conn, i, j)

    try:
        return _run_threads(threads, lambda i, lat: _timed(rows, lat, lambda j: insert(i, j)))
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
            return _timed(rows, lat, lambda j: cur.execute(INSERT, (i, j, "x" * 16)), duckdb.Error)
        finally:
            cur.close()

    try:
        return _run_threads(threads, body)
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

                errors = _timed(rows, lat, insert, Exception)
                if not wait:
                    store.flush()
                    errors += sum(1 for f in futures if f.exception() is not None)
                return errors

            return _run_threads(threads, body)

    return run


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


def bench_sequential(
    folder: Path, backends: list[str], durabilities: list[str], rows: int
) -> list[Outcome]:
    """One thread, sequential inserts that wait: safestore vs the raw engine, commit per insert."""
    out: list[Outcome] = []
    for backend in backends:
        for durability in durabilities:
            if backend == "duckdb" and durability == "normal":
                continue
            suffix = "duckdb" if backend == "duckdb" else "db"
            raw_path = folder / f"seq-raw-{backend}-{durability}.{suffix}"
            _progress(f"  sequential {backend}/{durability}: raw engine ...")
            if backend == "sqlite":
                timing = sqlite_per_thread(raw_path, durability, 1, rows)
                raw_name = "sqlite3: commit per insert"
            else:
                timing = duckdb_cursor_per_thread(raw_path, durability, 1, rows)
                raw_name = "duckdb: autocommit per insert"
            found = _count(backend, raw_path)
            out.append(
                _measured("sequential", backend, durability, raw_name, False, timing, found, rows)
            )
            for mode in ("queue", "lock"):
                path = folder / f"seq-{mode}-{backend}-{durability}.{suffix}"
                _progress(f"  sequential {backend}/{durability}: safestore {mode} ...")
                timing = safestore_strategy(mode, True)(path, durability, 1, rows, backend)
                found = _count(backend, path)
                name = f"safestore {mode}"
                out.append(
                    _measured("sequential", backend, durability, name, True, timing, found, rows)
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
            _sqlite_file(path, "full")
            conn = _sqlite_connect(path, "full")
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


def bench_reads(folder: Path, backends: list[str], threads: int, rows: int) -> list[Outcome]:
    """Read latency while idle and during a write storm (queue mode)."""
    out: list[Outcome] = []
    readers = 4
    for backend in backends:
        out.append(_reads_one(folder, backend, threads, rows, readers))
    return out


def _reads_one(folder: Path, backend: str, threads: int, rows: int, readers: int) -> Outcome:
    """Read latency of one backend: idle, then with `readers` readers during a write storm."""
    suffix = "duckdb" if backend == "duckdb" else "db"
    path = folder / f"reads-{backend}.{suffix}"
    _progress(f"  reads {backend}: idle, then during a write storm ...")
    with Store(path, backend=backend, setup=TABLE, timeout=120) as store:  # type: ignore[arg-type]
        store.insert("bench", [{"thread": -1, "seq": i, "payload": "seed"} for i in range(1000)])
        query = "SELECT count(*), max(seq) FROM bench WHERE thread = -1"

        def read_loop(stop: threading.Event, n: int) -> list[float]:
            lat: list[float] = []
            for _ in range(n):
                t = time.perf_counter()
                store.query_one(query)
                lat.append(time.perf_counter() - t)
                if stop.is_set():
                    break
            return lat

        idle = read_loop(threading.Event(), 2000)
        stop = threading.Event()
        storm_lat: list[list[float]] = [[] for _ in range(readers)]

        def reader(k: int) -> None:
            while not stop.is_set():
                storm_lat[k].extend(read_loop(stop, 50))
                stop.wait(0.001)  # a reader that pauses between queries, as dashboards do

        def writer(i: int, lat: list[float]) -> int:
            for j in range(rows):
                store.insert("bench", {"thread": i, "seq": j, "payload": "x" * 16})
            return 0

        rthreads = [threading.Thread(target=reader, args=(k,)) for k in range(readers)]
        for r in rthreads:
            r.start()
        elapsed, _, _ = _run_threads(threads, writer)
        stop.set()
        for r in rthreads:
            r.join()
        storm = [x for lat in storm_lat for x in lat]
    found = _count(backend, path)
    idle_p99 = _percentile(idle, 0.99)
    storm_p99 = _percentile(storm, 0.99)
    return Outcome(
        "reads",
        backend,
        "full",
        "safestore queue: reads during writes",
        True,
        (found - 1000) / elapsed,
        _percentile(storm, 0.5),
        storm_p99,
        0,
        found,
        threads * rows + 1000,
        extra={
            "idle_p50_ms": _percentile(idle, 0.5),
            "idle_p99_ms": idle_p99,
            "p99_over_idle": storm_p99 / idle_p99 if idle_p99 else 0.0,
            "reads": float(len(storm)),
        },
    )


def _ratios(results: list[Outcome]) -> None:
    groups: dict[tuple[str, str, str], list[Outcome]] = {}
    for r in results:
        groups.setdefault((r.workload, r.backend, r.durability), []).append(r)
    for members in groups.values():
        alternatives = [m.rows_per_s for m in members if not m.ours and m.errors == 0]
        best = max(alternatives, default=0.0)
        for m in members:
            if m.ours and best:
                m.ratio = m.rows_per_s / best


def render(results: list[Outcome]) -> str:
    """The results as a text table."""
    head = f"{'workload':<15} {'backend':<7} {'dur.':<6} {'strategy':<38} {'rows/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'rows':>9} {'ratio':>7}"
    lines = [head, "-" * len(head)]
    for r in results:
        ratio = f"{r.ratio:.1f}x" if r.ratio is not None else ""
        rows = f"{r.rows_found}" + (
            "" if r.rows_found == r.rows_expected else f"/{r.rows_expected}"
        )
        lines.append(
            f"{r.workload:<15} {r.backend:<7} {r.durability:<6} {r.strategy:<38} "
            f"{r.rows_per_s:>10,.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.errors:>6} {rows:>9} {ratio:>7}"
        )
        if r.extra.get("idle_p99_ms"):
            lines.append(
                f"{'':<15} {'':<7} {'':<6} {'  idle reads: p99 ' + format(r.extra['idle_p99_ms'], '.2f') + ' ms':<38}"
                f" {'':>10} {'':>8} {'':>8} {'':>6} {'':>9} {r.extra['p99_over_idle']:>6.1f}x"
            )
    lines.append(
        "ratio: safestore's rows/s over the best error-free alternative in the same group;"
    )
    lines.append("       for 'reads': p99 read latency during the write storm over the idle p99.")
    return "\n".join(lines)


def plot(results: list[Outcome], file: str) -> None:
    """Bar chart of rows/s per strategy, one panel per (workload, backend, durability)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the optional extra
        raise SystemExit("--plot needs matplotlib: pip install 'safestore[plot]'") from exc
    groups: dict[str, list[Outcome]] = {}
    for r in results:
        if r.workload != "reads":
            groups.setdefault(f"{r.workload} / {r.backend} / {r.durability}", []).append(r)
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 2.2 * len(groups)), squeeze=False)
    for ax, (title, members) in zip(axes[:, 0], groups.items(), strict=True):
        names = [m.strategy for m in members]
        values = [m.rows_per_s for m in members]
        colors = ["tab:green" if m.ours else "tab:gray" for m in members]
        ax.barh(names, values, color=colors)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("rows/s", fontsize=7)
    fig.tight_layout()
    fig.savefig(file, dpi=110)


def main(
    argv_threads: int,
    rows: int,
    backends: list[str],
    durabilities: list[str],
    json_file: str | None,
    plot_file: str | None,
    bulk_rows: int,
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
        results += bench_reads(folder, backends, argv_threads, rows)
    _ratios(results)
    print(render(results))
    if json_file:
        Path(json_file).write_text(
            json.dumps(
                {
                    "cpus": os.cpu_count(),
                    "python": sys.version.split()[0],
                    "sqlite": sqlite3.sqlite_version,
                    "threads": argv_threads,
                    "rows": rows,
                    "results": [asdict(r) for r in results],
                },
                indent=2,
            )
        )
    if plot_file:
        plot(results, plot_file)
    bad = [r for r in results if r.ours and (r.errors or r.rows_found != r.rows_expected)]
    return 1 if bad else 0
