"""DuckDB-specific behaviour: threads, one writing process, group commit, read guard, errors."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import SCHEMA, WAIT, count, db_path, freeze

import safestore
from safestore.errors import safe_class_for, translate

duckdb = pytest.importorskip("duckdb")

ROOT = Path(__file__).resolve().parent.parent
# Runs for minutes unless interrupted ("range" alone has a shortcut).
LONG_QUERY = "SELECT count(*) FROM range(100000000000) t(i) WHERE hash(i) % 7 = 0"


@pytest.fixture
def backend() -> str:
    """Every test here runs on DuckDB (in both modes, through conftest's `mode`)."""
    return "duckdb"


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=WAIT * 4,
    )


# --- threads ------------------------------------------------------------------------


def test_duckdb_guide_multiple_threads(make_store: Any) -> None:
    """DuckDB's "multiple Python threads" scenario: 50 writers, 5 readers, shuffled."""
    store = make_store(setup="CREATE TABLE my_inserts (thread_name VARCHAR, i INTEGER)")
    writers, readers, per = 50, 5, 20
    barrier = threading.Barrier(writers + readers)
    writers_done = threading.Event()
    finished: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def write_from_thread(k: int) -> None:
        for i in range(per):
            res = store.insert("my_inserts", {"thread_name": f"w{k}", "i": i})
            assert res.rowcount == 1
        with lock:
            finished.append(k)
            if len(finished) == writers:
                writers_done.set()

    def read_from_thread(k: int) -> None:
        last = 0
        while not writers_done.is_set():
            (n,) = store.query_one("SELECT count(*) FROM my_inserts")
            assert n >= last, "a read went back in time"
            last = n

    def wrapped(fn: Any, k: int) -> None:
        try:
            barrier.wait(WAIT)
            fn(k)
        except BaseException as exc:
            errors.append(exc)
            writers_done.set()

    threads = [
        threading.Thread(target=wrapped, args=(write_from_thread, k)) for k in range(writers)
    ]
    threads += [
        threading.Thread(target=wrapped, args=(read_from_thread, k)) for k in range(readers)
    ]
    random.shuffle(threads)
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 4)
        assert not t.is_alive(), "a thread hung"
    assert not errors, errors[:3]
    assert count(store, "my_inserts") == writers * per
    per_thread = store.query(
        "SELECT thread_name, count(*), count(DISTINCT i) FROM my_inserts GROUP BY 1"
    )
    assert sorted(per_thread) == sorted((f"w{k}", per, per) for k in range(writers))


def test_memory_database_is_one_database(make_store: Any) -> None:
    """':memory:' is one database for the writer and every reading thread."""
    store = make_store(":memory:", setup=SCHEMA)
    store.insert("t", {"v": "a"})
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(count(store)))
    t.start()
    t.join(WAIT)
    assert seen == [1]


# --- one writing process ------------------------------------------------------------


LOCKED_CHILD = """
    import sys, duckdb, safestore
    path, read_only = sys.argv[1], sys.argv[2] == "1"
    try:
        safestore.Store(path, read_only=read_only)
    except safestore.StoreError as exc:
        cause = exc.__cause__
        assert isinstance(cause, duckdb.IOException), repr(cause)
        assert isinstance(cause, safestore.OperationalError), repr(cause)
        print(exc)
    else:
        sys.exit("opened a file another process writes")
"""


@pytest.mark.parametrize("read_only", [False, True])
def test_second_process_gets_store_error_with_pid(
    make_store: Any, tmp_path: Path, read_only: bool
) -> None:
    """A second process opening a written file gets StoreError naming this process's PID."""
    store = make_store(setup=SCHEMA)
    store.insert("t", {"v": "a"})
    proc = _python(LOCKED_CHILD, store.path, "1" if read_only else "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "another process" in proc.stdout
    assert f"PID {os.getpid()}" in proc.stdout
    assert count(store) == 1  # the holder is unaffected


def test_same_process_read_only_and_read_write(make_store: Any, tmp_path: Path) -> None:
    """One process cannot hold a file both read-only and read-write: a clear StoreError."""
    store = make_store(setup=SCHEMA)
    with pytest.raises(safestore.StoreError, match="different settings"):
        safestore.Store(store.path, read_only=True)


READER_CHILD = """
    import sys, safestore
    with safestore.Store(sys.argv[1], read_only=True, mode=sys.argv[2]) as s:
        print(s.query_one("SELECT count(*) FROM t")[0])
        try:
            s.insert("t", {"v": "no"})
        except safestore.ReadOnlyError:
            print("refused")
"""


def test_read_only_stores_in_several_processes(tmp_path: Path, mode: str) -> None:
    """With no writer, read_only stores in this and other processes all read the file."""
    path = db_path(tmp_path, "duckdb")
    with safestore.Store(path, setup=SCHEMA) as writer:
        writer.insert("t", [{"v": str(i)} for i in range(7)])
    with safestore.Store(path, read_only=True, mode=mode) as mine:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(READER_CHILD), path, mode],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(3)
        ]
        assert count(mine) == 7
        for p in procs:
            out, err = p.communicate(timeout=WAIT * 4)
            assert p.returncode == 0, err[-2000:]
            assert out.split() == ["7", "refused"]
        with pytest.raises(safestore.ReadOnlyError):
            mine.execute("DELETE FROM t")
        assert count(mine) == 7


# --- reads cannot write -------------------------------------------------------------


def test_query_refuses_nextval_and_changes_nothing(make_store: Any) -> None:
    """SELECT nextval() writes (typed SELECT): query() refuses it, the sequence is untouched."""
    store = make_store(setup="CREATE SEQUENCE s")
    with pytest.raises(safestore.ReadOnlyError):
        store.query("SELECT nextval('s')")
    assert store.execute("SELECT nextval('s')").rows == [(1,)]


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t (v) VALUES ('x')",
        "UPDATE t SET n = 1",
        "CREATE TEMP TABLE tmp (a INTEGER)",
        "SET threads = 1",
        "PRAGMA threads = 1",
        "RESET threads",
        "CHECKPOINT",
        "FORCE CHECKPOINT",
        "SELECT * FROM checkpoint()",
        "PRAGMA enable_profiling",
        "LOAD json",
        # EXPLAIN ANALYZE runs what it explains; calls hidden behind quotes or comments
        "EXPLAIN ANALYZE SET threads = 1",
        "EXPLAIN ANALYZE CREATE TEMP TABLE tmp AS SELECT 1 AS a",
        "EXPLAIN ANALYZE INSERT INTO t (v) VALUES ('x')",
        "EXPLAIN ANALYZE CHECKPOINT",
        "EXPLAIN (ANALYZE) SET threads = 1",
        'CALL "checkpoint"()',
        "CALL checkpoint/**/()",
        "CALL enable_logging()",
        "SELECT * FROM enable_profiling()",
        "SELECT * FROM query('CHECKPOINT')",
        # a comment marker inside a string literal must not hide the rest
        "SELECT '--' AS a, * FROM checkpoint()",
        "SELECT '/*' AS a, * FROM enable_logging() WHERE '*/' = '*/'",
    ],
)
def test_query_refuses_writes_and_settings(store: safestore.Store, sql: str) -> None:
    """Writes and statements that a read-only transaction lets through raise ReadOnlyError."""
    threads = store.query_one("SELECT current_setting('threads')")
    for _ in range(2):  # a refusal is never remembered as allowed
        with pytest.raises(safestore.ReadOnlyError):
            store.query(sql)
    assert count(store) == 0
    assert store.query_one("SELECT current_setting('threads')") == threads


def test_repeated_queries_are_parsed_once(
    store: safestore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The statement check's verdict on an allowed SQL text is reused, not re-parsed."""
    from safestore._backends import _duckdb_guard

    judged: list[str] = []
    judge = _duckdb_guard._judge

    def counting(conn: Any, sql: str) -> bool:
        judged.append(sql)
        return judge(conn, sql)

    monkeypatch.setattr(_duckdb_guard, "_judge", counting)
    store.insert("t", {"v": "a"})
    for _ in range(3):
        assert store.query("SELECT v FROM t") == [("a",)]
        assert store.query("-- nothing") == []
    assert judged == ["SELECT v FROM t", "-- nothing"]


def test_query_allows_explaining_reads_and_informational_calls(store: safestore.Store) -> None:
    """EXPLAIN (ANALYZE) of a read and informational table functions still run."""
    store.insert("t", {"v": "a"})
    for sql in (
        "EXPLAIN SELECT v FROM t",
        "EXPLAIN ANALYZE SELECT v FROM t",
        "EXPLAIN (SELECT 1)",
        "EXPLAIN (SELECT v FROM t) UNION ALL (SELECT 'x')",
        "EXPLAIN SELECT 'a--b', 'http://x/*y*/'",
        "SELECT 'checkpoint()' AS text_not_a_call",
        "CALL pragma_version()",
        "SELECT count(*) FROM duckdb_tables()",
    ):
        assert store.query(sql)


def test_query_refuses_attach_and_copy_without_touching_files(
    store: safestore.Store, tmp_path: Path
) -> None:
    """ATTACH and COPY ... TO would create files even in a read-only transaction."""
    attached, copied = tmp_path / "other.duckdb", tmp_path / "out.csv"
    explained = tmp_path / "explained.csv"
    for sql in (
        f"ATTACH '{attached}' AS o",
        f"COPY t TO '{copied}'",
        f"EXPLAIN ANALYZE COPY (SELECT 42) TO '{explained}'",
    ):
        with pytest.raises(safestore.ReadOnlyError):
            store.query(sql)
    assert not attached.exists()
    assert not copied.exists()
    assert not explained.exists()


def test_query_one_statement_and_transaction_control(store: safestore.Store) -> None:
    """query() runs one statement; COMMIT cannot smuggle a write out of the read guard."""
    with pytest.raises(safestore.ProgrammingError):
        store.query("COMMIT; INSERT INTO t (v) VALUES ('x')")
    with pytest.raises(safestore.ReadOnlyError):
        store.query("COMMIT")
    assert count(store) == 0
    assert store.query("PRAGMA table_info('t')")[0][1] == "id"
    assert store.query("") == []


def test_execute_refuses_transaction_control(store: safestore.Store) -> None:
    """execute('COMMIT') would end the group's transaction: refused, nothing else harmed."""
    with pytest.raises(safestore.ProgrammingError, match=r"store\.transaction"):
        store.execute("BEGIN; INSERT INTO t (v) VALUES ('x'); COMMIT")
    store.insert("t", {"v": "ok"})
    assert count(store) == 1


def test_explain_analyze_cannot_end_a_group_or_a_block(store: safestore.Store) -> None:
    """EXPLAIN ANALYZE COMMIT/ROLLBACK would run the COMMIT: refused in a group and in
    a transaction() block, and every row of the group is written exactly once."""
    gate, held = freeze(store)
    futs = [
        store.insert("t", {"v": "a"}, wait=False),
        store.execute("EXPLAIN ANALYZE COMMIT", wait=False),
        store.insert("t", {"v": "b"}, wait=False),
        store.execute("EXPLAIN ANALYZE ROLLBACK", wait=False),
        store.insert("t", {"v": "c"}, wait=False),
    ]
    gate.release()
    assert held.result(WAIT) == "held"
    for i, fut in enumerate(futs):
        if i % 2:
            assert isinstance(fut.exception(WAIT), safestore.ProgrammingError)
        else:
            assert fut.result(WAIT).rowcount == 1
    assert sorted(store.query("SELECT v FROM t")) == [("a",), ("b",), ("c",)]
    with pytest.raises(RuntimeError, match="undo"), store.transaction() as tx:
        tx.insert("t", {"v": "d"})
        with pytest.raises(safestore.ProgrammingError):
            tx.execute("EXPLAIN ANALYZE COMMIT")
        raise RuntimeError("undo the block")
    assert count(store) == 3


# --- group commit and failure isolation ---------------------------------------------


def _outcome(fut: Future[Any]) -> Any:
    exc = fut.exception(WAIT)
    return exc if exc is not None else fut.result(0)


def test_failure_isolation_inside_one_group(store: safestore.Store) -> None:
    """Good/bad/good requests of every kind, committed by one group: only the bad fail."""
    store.insert("t", {"id": 1000, "v": "taken"})

    def good_fn(conn: Any) -> str:
        conn.execute("INSERT INTO t (v) VALUES ('from run')")
        return "ran"

    def bad_fn(conn: Any) -> None:
        conn.execute("INSERT INTO t (v) VALUES ('run rolled back')")
        raise LookupError("boom")

    gate, held = freeze(store)
    before = store.stats()
    futs = [
        store.insert("t", {"v": "g1"}, wait=False),
        store.insert("t", {"v": "taken"}, wait=False),  # duplicate: fails
        store.insert("t", [{"v": "g2"}, {"v": "g3"}], wait=False),
        store.execute("UPDATE t SET n = 7 WHERE v = 'g1'", wait=False),
        store.execute("INSERT INTO missing (v) VALUES (1)", wait=False),  # fails
        store.executemany("INSERT INTO t (v) VALUES (?)", [("m1",), ("m2",)], wait=False),
        store.executemany("INSERT INTO t (v) VALUES (?)", [("m3",), ("g1",)], wait=False),  # fails
        store.run(good_fn, wait=False),
        store.run(bad_fn, wait=False),
        store.insert("t", {"v": "g4"}, wait=False),
        store.execute("DELETE FROM t WHERE v = 'g2' RETURNING v", wait=False),
    ]
    gate.release()
    assert held.result(WAIT) == "held"
    got = [_outcome(f) for f in futs]
    assert got[0].rowcount == 1
    assert isinstance(got[1], duckdb.ConstraintException)
    assert isinstance(got[1], safestore.IntegrityError)
    assert got[2].rowcount == 2
    assert got[3].rowcount == 1
    assert isinstance(got[4], duckdb.CatalogException)
    assert isinstance(got[4], safestore.ProgrammingError)
    assert got[5].rowcount == 2
    assert isinstance(got[6], safestore.IntegrityError)
    assert got[7] == "ran"
    assert isinstance(got[8], LookupError)
    assert got[9].rowcount == 1
    assert got[10].rows == [("g2",)]
    assert got[10].rowcount == 1
    assert sorted(r[0] for r in store.query("SELECT v FROM t")) == sorted(
        ["taken", "g1", "g3", "m1", "m2", "from run", "g4"]
    )
    assert store.query_one("SELECT n FROM t WHERE v = 'g1'") == (7,)
    after = store.stats()
    assert after.writes_failed - before.writes_failed == 4
    if store.mode == "queue":
        # One group: its writes that succeeded count as one batch (failures do not).
        assert after.largest_batch >= len(futs) - 4


def test_insert_of_a_column_the_table_lacks_raises_the_binder_error(
    store: safestore.Store,
) -> None:
    """insert() names a bad column with the engine error execute("INSERT ...") gets (the
    appender words it differently), alone or among other callers' inserts."""
    with pytest.raises(duckdb.BinderException) as plain:
        store.execute("INSERT INTO t (nope) VALUES (1)")
    with pytest.raises(duckdb.BinderException) as alone:
        store.insert("t", {"nope": 1})
    assert isinstance(alone.value, safestore.ProgrammingError)
    assert str(alone.value) == str(plain.value)
    gate, held = freeze(store)
    futures = [store.insert("t", row, wait=False) for row in ({"v": "a"}, {"nope": 2}, {"v": "b"})]
    gate.release()
    held.result(WAIT)
    assert isinstance(futures[1].exception(WAIT), duckdb.BinderException)
    assert futures[0].result(WAIT).rowcount == futures[2].result(WAIT).rowcount == 1
    assert sorted(r[0] for r in store.query("SELECT v FROM t")) == ["a", "b"]


def test_merged_inserts_find_the_culprits(store: safestore.Store) -> None:
    """Of 40 single-row inserts merged into one appender flush, exactly the bad ones fail."""
    store.insert("t", [{"v": "dup1"}, {"v": "dup2"}])
    gate, held = freeze(store)
    bad = {5, 17, 30}
    futs = []
    for i in range(40):
        if i == 5:
            row: dict[str, Any] = {"v": "dup1", "n": i}
        elif i == 17:
            row = {"v": "dup2", "n": i}
        elif i == 30:
            row = {"v": "x30", "n": "not a number"}  # fails when appended, not at flush
        else:
            row = {"v": f"x{i}", "n": i}
        futs.append(store.insert("t", row, wait=False))
    gate.release()
    held.result(WAIT)
    failed = {i for i, f in enumerate(futs) if f.exception(WAIT) is not None}
    assert failed == bad
    assert isinstance(futs[5].exception(0), safestore.IntegrityError)
    assert isinstance(futs[30].exception(0), safestore.DataError)
    assert count(store) == 2 + 40 - len(bad)
    assert store.query("SELECT n FROM t WHERE n IS NOT NULL ORDER BY n") == [
        (i,) for i in range(40) if i not in bad
    ]


def test_insert_uses_defaults_and_keeps_types(make_store: Any) -> None:
    """Inserts fill missing columns with DEFAULT (sequences too); values round-trip."""
    import datetime
    import decimal
    import uuid

    store = make_store(
        setup="""
        CREATE SEQUENCE k;
        CREATE TABLE v (
            id BIGINT DEFAULT nextval('k'), flag BOOLEAN, b BLOB, ts TIMESTAMP,
            d DECIMAL(10, 3), day DATE, f DOUBLE, l INTEGER[], u UUID, s VARCHAR DEFAULT 'dflt'
        )
        """
    )
    row = {
        "flag": True,
        "b": b"\x00\xff",
        "ts": datetime.datetime(2024, 5, 6, 7, 8, 9, 123456),
        "d": decimal.Decimal("1.250"),
        "day": datetime.date(2024, 5, 6),
        "f": 0.5,
        "l": [1, 2, 3],
        "u": uuid.UUID(int=5),
    }
    store.insert("v", [row, {**row, "flag": None, "l": None}])
    got = store.query("SELECT * FROM v ORDER BY id")
    assert got[0] == (1, *row.values(), "dflt")
    assert got[1][:2] == (2, None)
    assert all(type(r) is tuple for r in got)


def test_big_insert_is_one_flush(store: safestore.Store) -> None:
    """A 100,000-row insert goes through the appender as one all-or-nothing request."""
    rows = [{"v": str(i), "n": i} for i in range(100_000)]
    assert store.insert("t", rows).rowcount == 100_000
    with pytest.raises(safestore.IntegrityError):
        store.insert("t", [{"v": "new"}, {"v": "5"}])  # second row duplicates
    assert count(store) == 100_000
    assert store.query_one("SELECT count(*) FROM t WHERE v = 'new'") == (0,)


# --- COMMIT after a failed statement silently rolls back: never report success ------


def test_run_that_swallows_an_error_is_not_reported_committed(store: safestore.Store) -> None:
    """A run() function that catches a failed statement: DuckDB aborted it; the caller hears."""

    def fn(conn: Any) -> str:
        conn.execute("INSERT INTO t (id, v) VALUES (1, 'kept?')")
        try:
            conn.execute("INSERT INTO t (id, v) VALUES (1, 'dup')")
        except duckdb.ConstraintException:
            pass
        return "looks fine"

    with pytest.raises(safestore.OperationalError, match="rolled back") as info:
        store.run(fn)
    assert isinstance(info.value, duckdb.TransactionException)
    assert count(store) == 0
    store.insert("t", {"v": "after"})
    assert count(store) == 1


def test_transaction_block_with_caught_failure_does_not_commit(store: safestore.Store) -> None:
    """A caught failure inside transaction() aborts it on DuckDB: the exit raises, nothing lands."""
    with pytest.raises(safestore.OperationalError, match="rolled back"):
        with store.transaction() as tx:
            tx.insert("t", {"v": "a"})
            with pytest.raises(safestore.IntegrityError):
                tx.insert("t", {"v": "a"})
    assert count(store) == 0
    with store.transaction() as tx:
        tx.insert("t", {"v": "b"})
        assert tx.query("SELECT v FROM t") == [("b",)]
    assert count(store) == 1


# --- interpreter exit ---------------------------------------------------------------


EXIT_CHILD = """
    import sys, threading, safestore
    path, mode = sys.argv[1], sys.argv[2]
    store = safestore.Store(path, mode=mode, setup="CREATE TABLE t (i INTEGER)")
    futs = [store.insert("t", {"i": i}, wait=False) for i in range(500)]
    reading = threading.Event()

    def reader():
        store.query("SELECT 1")
        reading.set()
        try:
            while True:
                store.query(sys.argv[3])
        except safestore.Error:
            pass

    threading.Thread(target=reader, daemon=True).start()
    assert reading.wait(30)
    print("exiting", flush=True)
    # no close(): the atexit hook must commit the 500 inserts and stop the reader
"""


def test_exit_without_close_never_aborts(tmp_path: Path, mode: str) -> None:
    """Exit with an unclosed store and a reading daemon thread: rc 0, nothing lost."""
    path = db_path(tmp_path, "duckdb")
    # In lock mode a read holds the store's lock, so exit waits for it: use a short one.
    query = LONG_QUERY if mode == "queue" else "SELECT count(*) FROM t"
    proc = _python(EXIT_CHILD, path, mode, query)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "terminate called" not in proc.stderr
    assert proc.stdout.strip() == "exiting"
    with safestore.Store(path) as store:
        assert count(store) == 500


def test_exit_after_close_never_aborts(tmp_path: Path) -> None:
    """A closed DuckDB store and a closed read cursor at exit: rc 0."""
    code = """
        import sys, threading, safestore
        s = safestore.Store(sys.argv[1])
        s.execute("CREATE TABLE t (i INTEGER)")
        t = threading.Thread(target=lambda: s.query("SELECT count(*) FROM t"))
        t.start(); t.join(30)
        s.close()
    """
    proc = _python(code, db_path(tmp_path, "duckdb"))
    assert proc.returncode == 0, proc.stderr[-2000:]


# --- errors -------------------------------------------------------------------------

EXPECTED = {
    "Error": safestore.Error,
    "Warning": safestore.Warning,
    "DatabaseError": safestore.DatabaseError,
    "DataError": safestore.DataError,
    "IntegrityError": safestore.IntegrityError,
    "InternalError": safestore.InternalError,
    "NotSupportedError": safestore.NotSupportedError,
    "OperationalError": safestore.OperationalError,
    "ProgrammingError": safestore.ProgrammingError,
    "BinderException": safestore.ProgrammingError,
    "CatalogException": safestore.ProgrammingError,
    "InvalidInputException": safestore.ProgrammingError,
    "InvalidTypeException": safestore.ProgrammingError,
    "ParserException": safestore.ProgrammingError,
    "SyntaxException": safestore.ProgrammingError,
    "ConstraintException": safestore.IntegrityError,
    "DependencyException": safestore.IntegrityError,
    "ConversionException": safestore.DataError,
    "OutOfRangeException": safestore.DataError,
    "TypeMismatchException": safestore.DataError,
    "SequenceException": safestore.DataError,
    "InternalException": safestore.InternalError,
    "FatalException": safestore.InternalError,
    "NotImplementedException": safestore.NotSupportedError,
    "ConnectionException": safestore.OperationalError,
    "IOException": safestore.OperationalError,
    "HTTPException": safestore.OperationalError,
    "OutOfMemoryException": safestore.OperationalError,
    "ResourceInUseException": safestore.OperationalError,
    "SerializationException": safestore.OperationalError,
    "TransactionException": safestore.OperationalError,
    "InterruptException": safestore.OperationalError,
    "PermissionException": safestore.OperationalError,
}


def _duckdb_exception_classes() -> list[type[BaseException]]:
    return [
        obj
        for name in dir(duckdb)
        if isinstance(obj := getattr(duckdb, name), type) and issubclass(obj, BaseException)
    ]


def test_every_duckdb_exception_class_is_mapped() -> None:
    """Each exception class duckdb exports maps to a safestore class; instances are both."""
    import safestore._backends._duckdb  # noqa: F401 - registers the mappings

    classes = _duckdb_exception_classes()
    assert {c.__name__ for c in classes} == set(EXPECTED), "duckdb's exception list changed"
    for cls in classes:
        safe = EXPECTED[cls.__name__]
        assert safe_class_for(cls) is safe, cls
        try:
            raise translate(cls(f"{cls.__name__} message"))
        except cls as caught:
            assert isinstance(caught, safe)
            assert str(caught) == f"{cls.__name__} message"
        try:
            raise translate(cls("again"))
        except safe as caught:
            assert isinstance(caught, cls)


def test_engine_errors_reach_callers_dual_class(store: safestore.Store) -> None:
    """Errors raised through the store are caught as duckdb's class and safestore's."""
    store.insert("t", {"v": "a"})
    cases: list[tuple[Any, type[BaseException], type[BaseException]]] = [
        (
            lambda: store.insert("t", {"v": "a"}),
            duckdb.ConstraintException,
            safestore.IntegrityError,
        ),
        (
            lambda: store.query("SELECT * FROM nope"),
            duckdb.CatalogException,
            safestore.ProgrammingError,
        ),
        (lambda: store.query("SELEC 1"), duckdb.ParserException, safestore.ProgrammingError),
        (
            lambda: store.query("SELECT 'x'::INTEGER"),
            duckdb.ConversionException,
            safestore.DataError,
        ),
        (
            lambda: store.execute("SELECT ?", ()),
            duckdb.InvalidInputException,
            safestore.ProgrammingError,
        ),
    ]
    for call, engine_cls, safe_cls in cases:
        with pytest.raises(engine_cls) as info:
            call()
        assert isinstance(info.value, safe_cls), (engine_cls, type(info.value).__mro__)
    assert count(store) == 1


def test_errors_that_mention_read_only_keep_their_class(store: safestore.Store) -> None:
    """Only the engine's refusal of a write is ReadOnlyError; other errors whose text
    says "read only" keep their own (dual) class."""
    with pytest.raises(duckdb.ConversionException) as info:
        store.query("SELECT 'read-only'::INTEGER")
    assert isinstance(info.value, safestore.DataError)
    assert not isinstance(info.value, safestore.ReadOnlyError)
    with pytest.raises(duckdb.BinderException) as binder:
        store.query('SELECT "read only" FROM t')
    assert not isinstance(binder.value, safestore.ReadOnlyError)


def test_checkpoint_after_other_writes_of_its_group(store: safestore.Store) -> None:
    """CHECKPOINT refuses to run after writes in its transaction: in a group it runs
    again in a transaction of its own instead of failing because of the others."""
    gate, held = freeze(store)
    futs = [
        store.insert("t", {"v": "a"}, wait=False),
        store.execute("CHECKPOINT", wait=False),
        store.insert("t", {"v": "b"}, wait=False),
    ]
    gate.release()
    assert held.result(WAIT) == "held"
    for fut in futs:
        assert fut.exception(WAIT) is None
    assert sorted(store.query("SELECT v FROM t")) == [("a",), ("b",)]
