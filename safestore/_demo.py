"""`python -m safestore demo`: many threads sharing one store, and the naive way beside it."""

from __future__ import annotations

import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ._store import Store

WRITERS = 40
READERS = 4
ROWS_PER_WRITER = 250
SCHEMA = "CREATE TABLE IF NOT EXISTS readings (sensor INTEGER, seq INTEGER, value REAL)"


@dataclass
class Report:
    """What one run did."""

    label: str
    rows: int
    errors: int
    seconds: float
    commits: int | None = None
    reads: int = 0

    def line(self) -> str:
        rate = self.rows / self.seconds if self.seconds else 0.0
        text = (
            f"  {self.label:<34} {self.rows:>6} rows  errors: {self.errors:<4} {rate:>9,.0f} rows/s"
        )
        if self.commits:
            text += f"  commits: {self.commits}, average batch {self.rows / self.commits:.1f}"
        if self.reads:
            text += f"  ({self.reads} reads meanwhile)"
        return text


def _start_together(n: int, target: object) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]  # type: ignore[arg-type]
    for t in threads:
        t.start()
    return threads


def run_store(path: Path, backend: str) -> Report:
    """Dozens of writer threads and a few readers sharing one Store."""
    errors: list[BaseException] = []
    reads = [0] * READERS
    writers_done = threading.Event()
    with Store(path, backend=backend, setup=SCHEMA) as store:  # type: ignore[arg-type]

        def writer(i: int) -> None:
            try:
                for seq in range(ROWS_PER_WRITER):
                    store.insert("readings", {"sensor": i, "seq": seq, "value": seq * 0.5})
            except BaseException as exc:
                errors.append(exc)

        def reader(i: int) -> None:
            try:
                # A dashboard-like reader: one query every 10 ms until the writers end.
                while not writers_done.wait(0.01):
                    store.query_one("SELECT count(*), max(seq) FROM readings")
                    reads[i] += 1
            except BaseException as exc:
                errors.append(exc)

        start = time.perf_counter()
        readers = _start_together(READERS, reader)
        writers = _start_together(WRITERS, writer)
        for t in writers:
            t.join()
        elapsed = time.perf_counter() - start
        writers_done.set()
        for t in readers:
            t.join()
        row = store.query_one("SELECT count(*) FROM readings")
        commits = store.stats().commits
    return Report(
        f"safestore Store ({backend}, queue)",
        int(row[0]) if row else 0,
        len(errors),
        elapsed,
        commits,
        sum(reads),
    )


def run_naive_sqlite(path: Path) -> Report:
    """The naive way: a sqlite3 connection per thread, one commit per row."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(SCHEMA)
    conn.commit()
    conn.close()
    errors = [0]
    lock = threading.Lock()

    def writer(i: int) -> None:
        own = sqlite3.connect(path, timeout=5.0)
        for seq in range(ROWS_PER_WRITER):
            try:
                own.execute("INSERT INTO readings VALUES (?, ?, ?)", (i, seq, seq * 0.5))
                own.commit()
            except sqlite3.OperationalError:  # "database is locked"
                own.rollback()
                with lock:
                    errors[0] += 1
        own.close()

    start = time.perf_counter()
    for t in _start_together(WRITERS, writer):
        t.join()
    elapsed = time.perf_counter() - start
    check = sqlite3.connect(path)
    rows = check.execute("SELECT count(*) FROM readings").fetchone()[0]
    check.close()
    return Report("naive: sqlite3 connection per thread", rows, errors[0], elapsed)


def run_naive_duckdb(path: Path) -> Report:
    """DuckDB's guide: a cursor per thread, one INSERT per row."""
    import duckdb

    con = duckdb.connect(str(path))
    con.execute(SCHEMA)
    errors = [0]
    lock = threading.Lock()

    def writer(i: int) -> None:
        cur = con.cursor()
        for seq in range(ROWS_PER_WRITER):
            try:
                cur.execute("INSERT INTO readings VALUES (?, ?, ?)", (i, seq, seq * 0.5))
            except duckdb.Error:
                with lock:
                    errors[0] += 1
        cur.close()

    start = time.perf_counter()
    for t in _start_together(WRITERS, writer):
        t.join()
    elapsed = time.perf_counter() - start
    row = con.execute("SELECT count(*) FROM readings").fetchone()
    con.close()
    return Report("naive: DuckDB cursor per thread", int(row[0]) if row else 0, errors[0], elapsed)


def main(backends: tuple[str, ...] = ("sqlite", "duckdb")) -> int:
    """Run the demo and print the report. Returns a process exit status."""
    total = WRITERS * ROWS_PER_WRITER
    print(
        f"safestore demo: {WRITERS} writer threads x {ROWS_PER_WRITER} single-row inserts "
        f"(each waits for its commit, durability full) + {READERS} reader threads"
    )
    failed = False
    with tempfile.TemporaryDirectory(prefix="safestore-demo-") as tmp:
        folder = Path(tmp)
        for backend in backends:
            suffix = "duckdb" if backend == "duckdb" else "db"
            print(f"\n{backend}:")
            ours = run_store(folder / f"store.{suffix}", backend)
            print(ours.line(), flush=True)
            if backend == "sqlite":
                naive = run_naive_sqlite(folder / "naive.db")
            else:
                naive = run_naive_duckdb(folder / "naive.duckdb")
            print(naive.line(), flush=True)
            if ours.rows != total or ours.errors:
                failed = True
            if naive.seconds and ours.seconds:
                ratio = (ours.rows / ours.seconds) / max(naive.rows / naive.seconds, 1e-9)
                print(f"  -> safestore: {ratio:.1f}x the rows/s of the naive way, 0 errors")
    return 1 if failed else 0
