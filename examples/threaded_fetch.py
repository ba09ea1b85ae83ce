"""The classic threaded program: one thread per task fetches something and stores it.

Written exactly as it would be for the standard library's sqlite3: one connection shared
by the worker threads (``check_same_thread=False``), a cursor per thread, an INSERT and a
``commit()`` per result. Only the ``connect`` call differs between the two engines:

    python examples/threaded_fetch.py                 # safestore.connect
    python examples/threaded_fetch.py --sqlite3       # sqlite3.connect, for comparison

The "fetch" is simulated locally (no network): a short pause and a computed page body.

With sqlite3 this sharing is unsafe: the threads' implicit transactions interleave on the
one connection, so runs here raised "cannot start a transaction within a transaction" or
silently stored fewer rows than were fetched (19 of 50). With safestore every thread
gets its own transaction and every page is stored.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import safestore


def fetch(url: str) -> tuple[int, str]:
    """Pretend to download `url`: wait a moment, return (status, body)."""
    time.sleep(0.001)  # network latency
    digest = hashlib.sha256(url.encode()).hexdigest()
    status = 404 if digest.startswith("0") else 200
    return status, digest * 8


def worker(conn: Any, url: str, errors: list[BaseException]) -> None:
    """Fetch one URL and store the result, sqlite3-style."""
    try:
        status, body = fetch(url)
        cur = conn.cursor()
        cur.execute(
            "INSERT INTO pages (url, status, body, fetched_at) VALUES (?, ?, ?, ?)",
            (url, status, body, time.time()),
        )
        conn.commit()
        cur.close()
    except BaseException as exc:  # report it from the main thread
        errors.append(exc)


def run(db: str, tasks: int, connect: Callable[..., Any]) -> dict[str, int]:
    """Fetch `tasks` pages, one thread each, and store them in `db`. Returns a summary."""
    conn = connect(db, check_same_thread=False)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS pages ("
        " id INTEGER PRIMARY KEY, url TEXT UNIQUE, status INTEGER, body TEXT, fetched_at REAL)"
    )
    conn.commit()
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=worker, args=(conn, f"https://example.test/page/{i}", errors))
        for i in range(tasks)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        conn.close()
        raise errors[0]
    stored, ok = conn.execute("SELECT count(*), sum(status = 200) FROM pages").fetchone()
    conn.close()
    return {"stored": stored, "ok": ok or 0}


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sqlite3", action="store_true", help="use sqlite3.connect instead")
    parser.add_argument("--tasks", type=int, default=50, help="pages to fetch (one thread each)")
    parser.add_argument("--db", help="database file (default: a temporary one)")
    args = parser.parse_args(argv)
    connect = sqlite3.connect if args.sqlite3 else safestore.connect
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or os.path.join(tmp, "pages.db")
        started = time.perf_counter()
        summary = run(db, args.tasks, connect)
        elapsed = time.perf_counter() - started
    engine = "sqlite3" if args.sqlite3 else "safestore"
    print(f"{engine}: stored {summary['stored']} pages ({summary['ok']} ok) in {elapsed:.2f}s")
    return summary


if __name__ == "__main__":
    main()
