"""Faults: SIGKILL mid-write, full disk, backpressure, stuck transactions, fork, exit.

Each test proves one of the guarantees of API.md under a fault, on both engines
(see docs/guarantees.md). Crash and exit tests run a child interpreter that prints every
write id the moment its call has been acknowledged, so the parent knows exactly which
writes were promised and can check them after the child is killed or has exited.
"""

from __future__ import annotations

import hashlib
import os
import random
import selectors
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
from tests.conftest import SCHEMA, WAIT, count, db_path, freeze

import safestore

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.fault


def _spawn(code: str, *args: str, stderr: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(stderr, "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *args],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )


def _read_until(proc: subprocess.Popen[bytes], enough: Callable[[list[str]], bool]) -> list[str]:
    """Collect the child's complete stdout lines until `enough(lines)` or it exits."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf, lines = b"", []
    deadline = time.monotonic() + WAIT
    try:
        while not enough(lines):
            assert time.monotonic() < deadline, f"child too slow; got {len(lines)} lines"
            if not sel.select(timeout=0.5):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            *done, buf = buf.split(b"\n")
            lines.extend(d.decode() for d in done)
    finally:
        sel.close()
    return lines


def _drain(proc: subprocess.Popen[bytes]) -> list[str]:
    """After the child died: every complete line it managed to write."""
    assert proc.stdout is not None
    rest = proc.stdout.read()
    proc.stdout.close()
    proc.wait(WAIT)
    return [line.decode() for line in rest.split(b"\n")[:-1]]


# --- crash: SIGKILL while many threads write ------------------------------------------

CRASH_CHILD = """
    import os, sys, threading
    import safestore

    path, backend, durability, mode, tag = sys.argv[1:6]
    store = safestore.Store(path, backend=backend, mode=mode, durability=durability,
                            timeout=60,
                            setup="CREATE TABLE IF NOT EXISTS acked (k TEXT PRIMARY KEY, pad TEXT)")
    if backend == "duckdb":
        # Checkpoint often, so that some kills land in the middle of one.
        store.run(lambda conn: conn.execute("SET checkpoint_threshold = '256KB'"))
    PAD = "p" * 300

    def ack(*keys):
        # One write(2) per line: lines from different threads never interleave.
        os.write(1, "".join(f"{k}\\n" for k in keys).encode())

    def worker(w):
        for i in range(10**9):
            key = f"{tag}-{w}-{i}"
            kind = i % 4
            if kind == 0:
                store.insert("acked", {"k": key, "pad": PAD})
                ack(key)
            elif kind == 1:
                keys = [f"{key}-{j}" for j in range(5)]
                store.insert("acked", [{"k": k, "pad": PAD} for k in keys])
                ack(*keys)
            elif kind == 2:
                with store.transaction() as tx:
                    tx.insert("acked", {"k": key + "-a", "pad": PAD})
                    tx.execute("INSERT INTO acked (k, pad) VALUES (?, ?)", (key + "-b", PAD))
                ack(key + "-a", key + "-b")
            else:
                fut = store.insert("acked", {"k": key, "pad": PAD}, wait=False)
                fut.add_done_callback(lambda f, key=key: f.exception() is None and ack(key))

    ack("ready")
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
"""


def _check_engine_integrity(path: str, backend: str) -> set[str]:
    """Open the file with the engine itself, verify it, return the keys it holds."""
    if backend == "sqlite":
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            keys = {k for (k,) in conn.execute("SELECT k FROM acked")}
        finally:
            conn.close()
        return keys
    # DuckDB has no integrity_check: opening replays the WAL, a full scan reads every
    # row group (checksummed blocks), FORCE CHECKPOINT rewrites the table from what was
    # read, and a second open must read back the same rows.
    con = duckdb.connect(path)
    try:
        keys = {k for (k,) in con.execute("SELECT k FROM acked").fetchall()}
        assert con.execute("SELECT count(*) = count(DISTINCT k) FROM acked").fetchone() == (True,)
        con.execute("PRAGMA storage_info('acked')").fetchall()
        con.execute("FORCE CHECKPOINT")
    finally:
        con.close()
    con = duckdb.connect(path, read_only=True)
    try:
        assert {k for (k,) in con.execute("SELECT k FROM acked").fetchall()} == keys
    finally:
        con.close()
    return keys


@pytest.mark.stress
@pytest.mark.timeout(300)
@pytest.mark.parametrize("durability", ["full", "normal"])
def test_sigkill_loses_no_acknowledged_write(tmp_path: Path, backend: str, durability: str) -> None:
    """SIGKILL at varied moments, repeatedly: every acknowledged write survives, file intact."""
    path = db_path(tmp_path, backend)
    rng = random.Random(f"{backend}-{durability}")
    acked_total: set[str] = set()
    # Kill after this many acknowledgements: at once, early, mid-batch, well into the run.
    moments = [0, 1, 40, 400]
    rng.shuffle(moments)
    for round_no, moment in enumerate(moments):
        mode = ("queue", "lock")[round_no % 2]
        proc = _spawn(
            CRASH_CHILD,
            path,
            backend,
            durability,
            mode,
            f"r{round_no}",
            stderr=tmp_path / f"err{round_no}",
        )
        try:
            lines = _read_until(proc, lambda ls, m=moment: len(ls) > m)
            assert lines and lines[0] == "ready", (tmp_path / f"err{round_no}").read_text()
            if moment == 0:
                time.sleep(rng.random() * 0.05)  # somewhere in the first writes
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
        lines += _drain(proc)
        assert proc.returncode == -signal.SIGKILL, (tmp_path / f"err{round_no}").read_text()
        acked = set(lines[1:])
        assert len(acked) >= moment
        acked_total |= acked
        present = _check_engine_integrity(path, backend)
        missing = acked_total - present
        assert not missing, f"round {round_no}: {len(missing)} acknowledged writes lost"
    # The store itself reopens the crashed file and keeps working.
    with safestore.Store(path, timeout=WAIT) as store:
        store.insert("acked", {"k": "after", "pad": ""})
        assert count(store, "acked") == len(_check_keys(store)) >= len(acked_total) + 1


def _check_keys(store: safestore.Store) -> list[Any]:
    return store.query("SELECT k FROM acked")


# --- full disk ------------------------------------------------------------------------


def _set_max_pages(store: safestore.Store, pages: int) -> None:
    # max_page_count is a property of the connection: set it on the writer connection.
    store.run(lambda conn: conn.execute(f"PRAGMA max_page_count = {pages}").fetchall())


def test_sqlite_full_disk_fails_only_the_commit_that_does_not_fit(
    make_store: Callable[..., safestore.Store], backend: str
) -> None:
    """SQLITE_FULL (max_page_count): the culprit gets the engine's error, others commit, recovers."""
    if backend != "sqlite":
        pytest.skip("max_page_count is SQLite's; DuckDB: see the RLIMIT_FSIZE test")
    store = make_store(setup=SCHEMA)
    store.insert("t", [{"v": f"early{i}", "n": i} for i in range(50)])
    pages = store.query_one("PRAGMA page_count")
    assert pages is not None
    _set_max_pages(store, pages[0] + 3)
    gate, held = freeze(store)
    small = [store.insert("t", {"v": f"small{i}"}, wait=False) for i in range(4)]
    big = store.insert("t", {"v": "x" * 200_000}, wait=False)
    small += [store.insert("t", {"v": f"small{i}"}, wait=False) for i in range(4, 8)]
    gate.release()
    assert held.result(WAIT) == "held"
    exc = big.exception(WAIT)
    assert isinstance(exc, sqlite3.OperationalError), exc
    assert isinstance(exc, safestore.OperationalError)
    assert exc.sqlite_errorcode == sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
    # One caller's full disk never fails the other callers of its batch.
    assert [f.exception(WAIT) for f in small] == [None] * 8
    assert count(store) == 58
    assert store.query_one("SELECT count(*) FROM t WHERE v LIKE 'early%'") == (50,)
    # Space returns: the same write now commits.
    _set_max_pages(store, 1_000_000)
    store.insert("t", {"v": "x" * 200_000})
    assert count(store) == 59
    assert store.query("PRAGMA integrity_check") == [("ok",)]


FULL_DISK_CHILD = """
    import os, resource, signal, sys
    import safestore

    path, mode = sys.argv[1], sys.argv[2]
    # A file-size limit is an honest, unprivileged full disk for both engines: write(2)
    # past it fails (EFBIG) exactly where ENOSPC would.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    store = safestore.Store(path, mode=mode, setup="CREATE TABLE t (i INTEGER, v TEXT)")
    store.insert("t", [{"i": i, "v": "early"} for i in range(100)])
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    biggest = max(os.path.getsize(path + s) for s in ("", ".wal", "-wal") if os.path.exists(path + s))
    resource.setrlimit(resource.RLIMIT_FSIZE, (biggest + 16384, hard))
    try:
        store.insert("t", {"i": -1, "v": "x" * 3_000_000})
    except safestore.OperationalError as exc:
        print("full:", type(exc).__module__, exc, flush=True)
    else:
        print("big write went through", flush=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    store.insert("t", {"i": 1000, "v": "x" * 3_000_000})
    print("recovered", store.query("SELECT count(*) FROM t")[0][0], flush=True)
    store.close()
"""


@pytest.mark.parametrize("mode", ["queue", "lock"])
def test_full_disk_by_file_size_limit(tmp_path: Path, backend: str, mode: str) -> None:
    """Disk full (RLIMIT_FSIZE): the caller gets the engine's error, earlier commits stay, recovers."""
    path = db_path(tmp_path, backend)
    proc = _spawn(FULL_DISK_CHILD, path, mode, stderr=tmp_path / "err")
    lines = _read_until(proc, lambda ls: len(ls) >= 2) + _drain(proc)
    err = (tmp_path / "err").read_text()
    assert proc.returncode == 0, err
    assert lines[0].startswith("full: " + ("sqlite3" if backend == "sqlite" else "_duckdb")), lines
    assert lines[1] == "recovered 101", lines
    assert _engine_rows(path, backend, "SELECT count(*), sum(i) FROM t") == [(101, 4950 + 1000)]


def _engine_rows(path: str, backend: str, sql: str) -> list[Any]:
    if backend == "sqlite":
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    con = duckdb.connect(path, read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


# --- backpressure ---------------------------------------------------------------------


def test_backpressure_every_caller_times_out_and_writes_nothing(
    make_store: Callable[..., safestore.Store], mode: str
) -> None:
    """Writer stalled, queue full: all kinds of calls end in TimeoutError in time; none lands."""
    if mode == "lock":
        pytest.skip("lock mode has no queue (its stall is in test_busy_transaction_*)")
    timeout = 0.4
    store = make_store(setup=SCHEMA, timeout=timeout, max_queue=3)
    gate, held = freeze(store)
    queued = [store.insert("t", {"v": f"q{i}"}, wait=False) for i in range(3)]
    calls: list[Callable[[], object]] = [
        lambda: store.insert("t", {"v": "late-wait"}),
        lambda: store.insert("t", {"v": "late-nowait"}, wait=False),
        lambda: store.execute("INSERT INTO t (v) VALUES ('late-exec')"),
        lambda: store.executemany("INSERT INTO t (v) VALUES (?)", [("late-many",)]),
        lambda: store.run(lambda conn: conn.execute("INSERT INTO t (v) VALUES ('late-run')")),
        lambda: store.transaction().__enter__(),
        lambda: store.flush(),
    ]
    outcomes: list[tuple[BaseException | None, float]] = [(None, 0.0)] * len(calls)
    go = threading.Barrier(len(calls))

    def call(i: int) -> None:
        go.wait(WAIT)
        start = time.monotonic()
        try:
            calls[i]()
        except BaseException as exc:
            outcomes[i] = (exc, time.monotonic() - start)
        else:
            outcomes[i] = (None, time.monotonic() - start)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    for exc, took in outcomes:
        assert isinstance(exc, safestore.TimeoutError), exc
        assert isinstance(exc, TimeoutError)
        assert timeout * 0.9 <= took < timeout + 5
    gate.release()
    assert held.result(WAIT) == "held"
    assert [f.result(WAIT).rowcount for f in queued] == [1, 1, 1]
    store.flush(WAIT)
    assert sorted(r[0] for r in store.query("SELECT v FROM t")) == ["q0", "q1", "q2"]
    store.insert("t", {"v": "after"})
    assert count(store) == 4


# --- a transaction that never ends ----------------------------------------------------


def test_busy_transaction_times_out_others(
    make_store: Callable[..., safestore.Store], mode: str
) -> None:
    """A block that never ends (and is never idle): others get TimeoutError, nothing of theirs lands."""
    timeout = 0.4
    store = make_store(setup=SCHEMA, timeout=timeout)
    entered, stop, done = threading.Event(), threading.Event(), threading.Event()

    def owner() -> None:
        with store.transaction() as tx:
            tx.insert("t", {"v": "owner"})
            entered.set()
            while not stop.wait(0.02):  # busy: keeps using the block, never idle
                assert tx.query("SELECT count(*) FROM t") == [(1,)]
        done.set()

    t = threading.Thread(target=owner)
    t.start()
    assert entered.wait(WAIT)
    for call in (
        lambda: store.insert("t", {"v": "other"}),
        lambda: store.transaction().__enter__(),
    ):
        start = time.monotonic()
        with pytest.raises(safestore.TimeoutError):
            call()
        assert time.monotonic() - start < timeout + 5
    if mode == "queue":
        assert count(store) == 0  # reads go on, and do not see the open block
    else:
        with pytest.raises(safestore.TimeoutError):
            count(store)  # lock mode: reads share the one connection, held by the block
    stop.set()
    assert done.wait(WAIT)
    t.join(WAIT)
    store.flush()
    assert store.query("SELECT v FROM t") == [("owner",)]  # the block committed at its end


def test_idle_transaction_fate(make_store: Callable[..., safestore.Store], mode: str) -> None:
    """A stuck, idle block: queue mode rolls it back after `timeout`; lock mode keeps it."""
    timeout = 0.6
    store = make_store(setup=SCHEMA, timeout=timeout)
    entered, release = threading.Event(), threading.Event()
    owner_error: list[BaseException] = []

    def owner() -> None:
        try:
            with store.transaction() as tx:
                tx.insert("t", {"v": "stuck"})
                entered.set()
                assert release.wait(WAIT)  # stuck: never touches the block
                tx.insert("t", {"v": "stuck-late"})
        except BaseException as exc:
            owner_error.append(exc)

    t = threading.Thread(target=owner)
    t.start()
    assert entered.wait(WAIT)
    if mode == "queue":
        # A write queued behind the stuck block commits once the writer has rolled the
        # block back (idle for `timeout`); with wait=False nobody waits for its result.
        start = time.monotonic()
        behind = store.insert("t", {"v": "behind"}, wait=False)
        assert behind.result(WAIT).rowcount == 1
        assert timeout * 0.5 <= time.monotonic() - start < timeout + 5
        release.set()
        t.join(WAIT)
        assert len(owner_error) == 1
        assert isinstance(owner_error[0], safestore.StoreError)
        assert "idle" in str(owner_error[0])
        assert store.query("SELECT v FROM t") == [("behind",)]
    else:
        # Lock mode has no writer to expire it: others time out, the block survives and
        # commits when it finally ends.
        with pytest.raises(safestore.TimeoutError):
            store.insert("t", {"v": "behind"})
        release.set()
        t.join(WAIT)
        assert owner_error == []
        assert sorted(r[0] for r in store.query("SELECT v FROM t")) == ["stuck", "stuck-late"]
    store.insert("t", {"v": "after"})


# --- fork -----------------------------------------------------------------------------

FORK_CHILD = """
    import glob, hashlib, os, sys, threading, time, warnings
    import safestore

    path, mode, other = sys.argv[1], sys.argv[2], sys.argv[3]
    warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads running
    store = safestore.Store(path, mode=mode, setup="CREATE TABLE t (w INTEGER, i INTEGER)")
    stop = threading.Event()
    acked = []

    def writer(w):
        i = 0
        while not stop.is_set():
            store.insert("t", {"w": w, "i": i})
            acked.append((w, i))
            i += 1

    def files():
        return {f: hashlib.sha1(open(f, "rb").read()).hexdigest() for f in sorted(glob.glob(path + "*"))}

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    while len(acked) < 50:
        time.sleep(0.001)
    for n in range(4):
        # Fork while the writers run (mid-transaction, sometimes).
        pid = os.fork()
        if pid == 0:
            for call in (lambda: store.insert("t", {"w": -1, "i": n}),
                         lambda: store.query("SELECT 1"), store.flush, store.close):
                try:
                    call()
                except safestore.StoreError:
                    pass
                else:
                    os._exit(3)
            with safestore.Store(other + str(n), setup="CREATE TABLE c (a INTEGER)") as fresh:
                fresh.insert("c", {"a": n})
            sys.exit(0)  # a normal exit: teardown must not close the parent's connections
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
    stop.set()
    for t in threads:
        t.join(30)
    store.flush()
    # The parent's store still works, and the children left its files alone.
    before = files()
    pid = os.fork()
    if pid == 0:
        sys.exit(0)
    os.waitpid(pid, 0)
    assert files() == before, "a child wrote into the parent's file"
    store.insert("t", {"w": 99, "i": 0})
    rows = set(store.query("SELECT w, i FROM t"))
    assert set(acked) | {(99, 0)} == rows, len(rows)
    store.close()
    print("ok", len(rows), flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fork_while_writing_never_touches_parent_file(
    tmp_path: Path, backend: str, mode: str
) -> None:
    """Forks during hard writing: children are refused, exit normally, never write the parent's file."""
    path = db_path(tmp_path, backend)
    other = str(tmp_path / ("child.duckdb" if backend == "duckdb" else "child.db"))
    proc = _spawn(FORK_CHILD, path, mode, other, stderr=tmp_path / "err")
    lines = _read_until(proc, lambda ls: bool(ls)) + _drain(proc)
    err = (tmp_path / "err").read_text()
    assert proc.returncode == 0, err[-3000:]
    assert lines and lines[0].startswith("ok"), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    _engine_rows(path, backend, "SELECT count(*) FROM t")  # integrity check (SQLite)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fork_child_leaves_parent_files_byte_identical(store: safestore.Store) -> None:
    """In-process: a refused child that exits changes no byte of the parent's files."""
    import warnings

    store.insert("t", {"v": "parent"})
    count(store)

    def snapshot() -> dict[str, str]:
        d = os.path.dirname(store.path)
        return {
            f: hashlib.sha1((Path(d) / f).read_bytes()).hexdigest()
            for f in sorted(os.listdir(d))
            if f.startswith(os.path.basename(store.path))
        }

    before = snapshot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            store.insert("t", {"v": "child"})
            code = 3
        except safestore.StoreError:
            pass
        except BaseException:
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert snapshot() == before
    store.insert("t", {"v": "parent again"})
    assert count(store) == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_child_store_on_the_same_file_survives_the_parent_closing(
    tmp_path: Path, backend: str, mode: str
) -> None:
    """A child's new Store on the parent's file keeps every acknowledged write when the
    parent closes its store meanwhile (SQLite: the inherited connections must not leave
    the child without real file locks, or the parent's close deletes the WAL)."""
    import select
    import warnings

    path = db_path(tmp_path, backend)
    if backend == "duckdb":
        pytest.skip("DuckDB allows one writing process per file")
    if sys.version_info < (3, 12):
        pytest.skip("needs sqlite3's Connection.setconfig (Python 3.12+), see processes.md")
    parent = safestore.Store(path, mode=mode, setup="CREATE TABLE t (who TEXT, n INTEGER)")
    parent.insert("t", {"who": "parent", "n": 0})
    assert count(parent) == 1  # a read connection too, inherited by the child
    to_parent_r, to_parent_w = os.pipe()
    to_child_r, to_child_w = os.pipe()

    def wait_byte(fd: int) -> bytes:
        assert select.select([fd], [], [], WAIT)[0], "the other process did not answer"
        return os.read(fd, 100)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            with safestore.Store(path, mode=mode) as mine:
                for n in range(1, 51):
                    mine.insert("t", {"who": "child", "n": n})
                    if n == 10:
                        os.write(to_parent_w, b"10")  # the parent closes now
                        wait_byte(to_child_r)
                seen = count(mine)
            os.write(to_parent_w, str(seen).encode())
        finally:
            os._exit(0)
    assert wait_byte(to_parent_r) == b"10"
    parent.close()
    os.write(to_child_w, b"go")
    seen = wait_byte(to_parent_r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert seen == b"51"
    with safestore.Store(path, mode=mode) as after:
        assert after.query("SELECT count(*) FROM t WHERE who = 'child'") == [(50,)]
    for fd in (to_parent_r, to_parent_w, to_child_r, to_child_w):
        os.close(fd)


# --- exit -----------------------------------------------------------------------------

EXIT_HARD_CHILD = """
    import os, sys, threading
    import safestore

    path, mode, how = sys.argv[1:4]
    store = safestore.Store(path, mode=mode, setup="CREATE TABLE t (k TEXT)")
    enough = threading.Event()
    n = [0]

    def writer(w):
        for i in range(10**9):
            try:
                if i % 2:
                    store.insert("t", {"k": f"{w}-{i}"})
                    os.write(1, f"{w}-{i}\\n".encode())
                else:
                    store.query("SELECT count(*) FROM t")
            except safestore.StoreError:
                return  # closed at exit
            n[0] += 1
            if n[0] > 300:
                enough.set()

    for w in range(6):
        threading.Thread(target=writer, args=(w,), daemon=True).start()
    assert enough.wait(60)
    pending = [store.insert("t", {"k": f"pending-{i}"}, wait=False) for i in range(200)]
    if how == "raise":
        raise RuntimeError("the program crashed with writes queued")
    sys.exit(0)
"""


def test_exit_while_daemon_threads_write(tmp_path: Path, backend: str, mode: str) -> None:
    """Exit (queue) or an uncaught error (lock) while daemon threads write: prompt, nothing lost."""
    how = "exit" if mode == "queue" else "raise"
    path = db_path(tmp_path, backend)
    start = time.monotonic()
    proc = _spawn(EXIT_HARD_CHILD, path, mode, how, stderr=tmp_path / "err")
    lines = _drain(proc)
    elapsed = time.monotonic() - start
    err = (tmp_path / "err").read_text()
    assert proc.returncode == (1 if how == "raise" else 0), err[-3000:]
    assert "terminate called" not in err and "Fatal Python error" not in err, err[-3000:]
    if how == "raise":
        assert "the program crashed with writes queued" in err
    assert elapsed < 20
    keys = {k for (k,) in _engine_rows(path, backend, "SELECT k FROM t")}
    assert set(lines) <= keys
    assert {f"pending-{i}" for i in range(200)} <= keys
