"""The Store API: writes, reads, results, argument checking, on every backend and mode."""

from __future__ import annotations

import copy
import os
import pickle
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import SCHEMA, WAIT, count, db_path

import safestore


def test_insert_one_and_many(store: safestore.Store) -> None:
    """insert() takes one mapping or a sequence; rowcount counts the rows."""
    assert store.insert("t", {"v": "a", "n": 1}).rowcount == 1
    assert store.insert("t", [{"v": "b", "n": 2}, {"v": "c", "n": 3}]).rowcount == 2
    assert store.query("SELECT v, n FROM t ORDER BY n") == [("a", 1), ("b", 2), ("c", 3)]


def test_insert_lastrowid_sqlite(store: safestore.Store) -> None:
    """On SQLite lastrowid is the rowid of the request's last row; DuckDB has none."""
    first = store.insert("t", {"v": "a"})
    second = store.insert("t", [{"v": "b"}, {"v": "c"}])
    if store.backend == "sqlite":
        assert first.lastrowid == 1
        assert second.lastrowid == 3
    else:
        assert first.lastrowid is None


def test_insert_columns_in_any_order(store: safestore.Store) -> None:
    """Rows may list their keys in any order; values go to the named columns."""
    store.insert("t", [{"v": "a", "n": 1}, {"n": 2, "v": "b"}])
    assert store.query("SELECT v, n FROM t ORDER BY n") == [("a", 1), ("b", 2)]


def test_insert_many_one_column_and_other_mappings(store: safestore.Store) -> None:
    """Many one-column rows, and rows that are mappings but not dicts, insert as given."""
    from types import MappingProxyType

    store.insert("t", [{"v": str(i)} for i in range(300)])
    assert store.query_one("SELECT count(*), min(v), max(v) FROM t") == (300, "0", "99")
    store.insert("t", [{"v": "x", "n": 1}, MappingProxyType({"n": 2, "v": "y"})])
    assert store.query("SELECT v, n FROM t WHERE n IS NOT NULL ORDER BY n") == [
        ("x", 1),
        ("y", 2),
    ]


def test_insert_walks_other_sequences_once(store: safestore.Store) -> None:
    """A Sequence that is not a list or tuple is iterated once, however it iterates."""
    from collections.abc import Sequence

    class OneShot(Sequence[dict[str, Any]]):  # every iter() continues the same iterator
        def __init__(self, rows: list[dict[str, Any]]) -> None:
            self._rows, self._it = rows, iter(rows)

        def __len__(self) -> int:
            return len(self._rows)

        def __getitem__(self, i: Any) -> Any:
            return self._rows[i]

        def __iter__(self) -> Any:
            return self._it

    assert store.insert("t", OneShot([{"v": str(i)} for i in range(3)])).rowcount == 3
    assert count(store) == 3


def test_execute_returns_result(store: safestore.Store) -> None:
    """execute() reports rowcount and RETURNING rows."""
    store.insert("t", [{"id": i, "v": str(i), "n": i} for i in range(1, 6)])
    res = store.execute("UPDATE t SET n = n + 10 WHERE id > ?", (2,))
    assert res.rowcount == 3
    assert res.rows == []
    res = store.execute("DELETE FROM t WHERE id = ? RETURNING v", (1,))
    assert res.rows == [("1",)]
    assert count(store) == 4


def test_execute_after_a_with_clause_counts_its_rows(store: safestore.Store) -> None:
    """INSERT, UPDATE and DELETE after a WITH clause report their real rowcount (and on
    SQLite the inserted rowid), where sqlite3 says -1; a WITH query stays at -1."""
    sqlite = store.backend == "sqlite"
    res = store.execute("WITH r(x) AS (VALUES ('a'), ('b')) INSERT INTO t (v) SELECT x FROM r")
    ids = [r[0] for r in store.query("SELECT id FROM t ORDER BY id")]
    assert (res.rowcount, res.lastrowid) == (2, ids[-1] if sqlite else None)
    res = store.execute("WITH r(x) AS (VALUES (5)) UPDATE t SET n = (SELECT x FROM r)")
    assert (res.rowcount, res.lastrowid) == (2, None)
    res = store.execute("WITH r(x) AS (VALUES (5)) UPDATE t SET n = 1 WHERE n <> 5")
    assert res.rowcount == 0
    res = store.execute(
        "WITH r(x) AS (VALUES ('a')) DELETE FROM t WHERE v IN (SELECT x FROM r) RETURNING v"
    )
    assert (res.rowcount, res.rows) == (1, [("a",)])
    res = store.execute("WITH r(x) AS (VALUES (7)) SELECT x FROM r")
    assert (res.rowcount, res.rows) == (-1, [(7,)])
    with store.transaction() as tx:
        res = tx.execute("WITH r(x) AS (VALUES ('c')) INSERT INTO t (v) SELECT x FROM r")
        assert res.rowcount == 1
    if sqlite:  # a new row whose rowid is the one the connection last reported
        store.execute("CREATE TABLE other (id INTEGER PRIMARY KEY)")
        store.execute("INSERT INTO other (id) VALUES (100)")
        res = store.execute(
            "WITH r(x) AS (VALUES (100)) INSERT INTO t (id, v) SELECT x, 'd' FROM r"
        )
        assert (res.rowcount, res.lastrowid) == (1, 100)


def test_execute_after_empty_statements_counts_its_rows(store: safestore.Store) -> None:
    """A write after empty statements (";", which the engine skips) reports its real
    rowcount and rowid as well, where sqlite3 says -1."""
    sqlite = store.backend == "sqlite"
    res = store.execute(" ; /* none */ ;INSERT INTO t (v) VALUES ('a')")
    ids = [r[0] for r in store.query("SELECT id FROM t")]
    assert (res.rowcount, res.lastrowid) == (1, ids[0] if sqlite else None)
    res = store.execute("; UPDATE t SET n = 3")
    assert (res.rowcount, res.lastrowid) == (1, None)
    with store.transaction() as tx:
        assert tx.execute(";DELETE FROM t").rowcount == 1
        # Other statements after one report -1, as without it (not the last count).
        assert tx.execute("; CREATE TABLE z (a INTEGER)").rowcount == -1
    assert count(store) == 0
    store.insert("t", {"v": "b"})
    for sql in ("; CREATE TABLE y (a INTEGER)", ";", " ; -- nothing", "; DROP TABLE z"):
        res = store.execute(sql)
        assert (res.rowcount, res.lastrowid) == (-1, None), sql
    assert store.query("SELECT count(*) FROM y") == [(0,)]


def test_executemany_sums_rowcount(store: safestore.Store) -> None:
    """executemany() runs the statement per parameter set; rowcount is summed."""
    res = store.executemany("INSERT INTO t (id, v) VALUES (?, ?)", [(i, str(i)) for i in range(7)])
    assert res.rowcount == 7
    assert count(store) == 7


def test_executemany_with_returning_counts_and_returns_the_rows(store: safestore.Store) -> None:
    """executemany() of a statement with RETURNING: rowcount is the real sum (sqlite3 says
    0 and duckdb -1) and `rows` holds every parameter set's RETURNING rows, in order;
    also inside a transaction, and with the word only inside a string."""
    res = store.executemany(
        "INSERT INTO t (id, v) VALUES (?, ?) RETURNING id", [(i, str(i)) for i in range(3)]
    )
    assert (res.rowcount, res.rows) == (3, [(0,), (1,), (2,)])
    res = store.executemany("UPDATE t SET n = 1 WHERE id <= ? RETURNING v", [(0,), (1,)])
    assert (res.rowcount, sorted(res.rows)) == (3, [("0",), ("0",), ("1",)])
    with store.transaction() as tx:
        res = tx.executemany("DELETE FROM t WHERE id = ? RETURNING id", [(0,), (9,), (2,)])
        assert (res.rowcount, res.rows) == (2, [(0,), (2,)])
    res = store.executemany(
        "INSERT INTO t (id, v) VALUES (?, 'returning' || ?)", [(7, "a"), (8, "b")]
    )
    assert (res.rowcount, res.rows) == (2, [])
    assert store.query("SELECT id FROM t ORDER BY id") == [(1,), (7,), (8,)]


def test_run_returns_value_and_commits(store: safestore.Store) -> None:
    """run(fn) returns fn's value; its writes commit."""

    def fn(conn: Any, a: int, *, b: int) -> int:
        conn.execute("INSERT INTO t (id, v) VALUES (?, ?)", (a, "x"))
        return a + b

    assert store.run(fn, 5, b=6) == 11
    assert store.query("SELECT id FROM t") == [(5,)]


def test_run_failure_rolls_back_and_reaches_caller(store: safestore.Store) -> None:
    """If fn raises, its work is rolled back and its exception reaches the caller."""

    def fn(conn: Any) -> None:
        conn.execute("INSERT INTO t (id, v) VALUES (1, 'x')")
        raise LookupError("boom")

    with pytest.raises(LookupError, match="boom"):
        store.run(fn)
    assert count(store) == 0
    store.insert("t", {"v": "still works"})
    assert count(store) == 1


def test_wait_false_returns_future(store: safestore.Store) -> None:
    """wait=False gives a Future of the same value; failures land in the future."""
    fut = store.insert("t", {"v": "a"}, wait=False)
    assert isinstance(fut, Future)
    assert fut.result(WAIT).rowcount == 1
    bad = store.insert("t", {"v": "a"}, wait=False)
    assert isinstance(bad.exception(WAIT), safestore.IntegrityError)
    assert store.run(lambda conn: 42, wait=False).result(WAIT) == 42


def test_query_results_pickle_and_copy_as_plain_lists(store: safestore.Store) -> None:
    """Rows go to other processes (pickle) and copies like any list of tuples, on every
    engine, from query() and from a transaction's tx.query()."""
    store.insert("t", {"v": "a", "n": 1})
    rows = store.query("SELECT v, n FROM t")
    with store.transaction() as tx:
        in_block = tx.query("SELECT v, n FROM t")
    for got in (rows, in_block):
        assert pickle.loads(pickle.dumps(got)) == [("a", 1)]
        assert copy.deepcopy(got) == [("a", 1)] and copy.copy(got) == [("a", 1)]


def test_query_one(store: safestore.Store) -> None:
    """query_one() gives the first row or None."""
    assert store.query_one("SELECT v FROM t") is None
    store.insert("t", [{"v": "a", "n": 1}, {"v": "b", "n": 2}])
    assert store.query_one("SELECT v FROM t ORDER BY n") == ("a",)


def test_query_params_named_and_positional(store: safestore.Store) -> None:
    """Parameters are bound, positional or named."""
    store.insert("t", {"v": "x'); DROP TABLE t; --", "n": 1})
    assert store.query("SELECT n FROM t WHERE v = ?", ("x'); DROP TABLE t; --",)) == [(1,)]
    named = "$v" if store.backend == "duckdb" else ":v"
    assert store.query(f"SELECT n FROM t WHERE v = {named}", {"v": "x'); DROP TABLE t; --"}) == [
        (1,)
    ]


def test_with_cte_select_is_a_read(store: safestore.Store) -> None:
    """A WITH ... SELECT is a read (routing does not look at the first word)."""
    store.insert("t", {"v": "a", "n": 1})
    assert store.query("WITH x AS (SELECT n FROM t) SELECT n + 1 FROM x") == [(2,)]


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM t",
        "INSERT INTO t (v) VALUES ('z')",
        "UPDATE t SET n = 0",
        "CREATE TABLE u (a INTEGER)",
        "DROP TABLE t",
        "CREATE TEMP TABLE tmp (a INTEGER)",
        "WITH x AS (SELECT 1) DELETE FROM t",
    ],
)
def test_query_refuses_writes(store: safestore.Store, sql: str) -> None:
    """query() raises ReadOnlyError for anything that would write, and changes nothing."""
    store.insert("t", {"v": "a", "n": 1})
    with pytest.raises(safestore.ReadOnlyError):
        store.query(sql)
    assert store.query("SELECT v, n FROM t") == [("a", 1)]
    assert store.query("SELECT count(*) FROM t") == [(1,)]


def test_query_reads_table_valued_functions_and_virtual_tables(
    make_store: Callable[..., safestore.Store], backend: str
) -> None:
    """Table-valued functions (json_each, pragma_table_info) and virtual tables (FTS5)
    are reads: SQLite's preparation of them asks the authorizer for an internal
    UPDATE of sqlite_master, which must not be taken for a write."""
    if backend == "sqlite":
        setup = (
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);"
            "CREATE VIRTUAL TABLE docs USING fts5(body);"
            "INSERT INTO docs VALUES ('hello world'), ('goodbye');"
        )
        reads = {
            "SELECT value FROM json_each('[1, 2, 3]')": [(1,), (2,), (3,)],
            "SELECT body FROM docs WHERE docs MATCH 'hello'": [("hello world",)],
        }
    else:
        setup = "CREATE TABLE t (id INTEGER, v TEXT)"
        reads = {"SELECT * FROM unnest([1, 2, 3])": [(1,), (2,), (3,)]}
    reads["SELECT name FROM pragma_table_info('t') ORDER BY name"] = [("id",), ("v",)]
    store = make_store(setup=setup)
    for _ in range(2):  # a fresh connection, then one that has run them before
        for sql, rows in reads.items():
            assert store.query(sql) == rows, sql
    if backend == "sqlite":  # the schema table itself stays out of reach
        schema = store.query("SELECT sql FROM sqlite_master ORDER BY name")
        # Even where the writer connection, which lock mode's reads share, was
        # allowed to change it: query_only refuses the write.
        store.run(lambda conn: conn.execute("PRAGMA writable_schema = ON"))
        with pytest.raises(safestore.Error):
            store.query("UPDATE sqlite_master SET sql = 'x' WHERE name = 't'")
        assert store.query("SELECT sql FROM sqlite_master ORDER BY name") == schema
        assert store.query("SELECT count(*) FROM t") == [(0,)]


def test_query_refuses_sqlite_pragmas_and_vacuum(
    make_store: Callable[..., safestore.Store],
) -> None:
    """SQLite: pragmas that set something and VACUUM are refused by query()."""
    store = make_store(setup=SCHEMA)
    if store.backend != "sqlite":
        pytest.skip("SQLite pragmas")
    for sql in ("PRAGMA user_version = 5", "PRAGMA query_only = 0", "VACUUM", "BEGIN"):
        with pytest.raises(safestore.ReadOnlyError):
            store.query(sql)
    assert store.query("PRAGMA user_version") == [(0,)]
    assert [r[1] for r in store.query("PRAGMA table_info(t)")] == ["id", "v", "n"]


def test_memory_store_shared_by_threads(make_store: Callable[..., safestore.Store]) -> None:
    """':memory:' is one database seen by every thread of the store."""
    import threading

    store = make_store(":memory:", setup=SCHEMA)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(20):
                store.insert("t", {"v": f"{i}-{j}", "n": i})
            assert store.query_one("SELECT count(*) FROM t WHERE n = ?", (i,)) == (20,)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not errors
    assert count(store) == 160


def test_setup_callable(make_store: Callable[..., safestore.Store]) -> None:
    """setup may be a callable run once with the writer connection."""
    calls: list[Any] = []

    def setup(conn: Any) -> None:
        calls.append(conn)
        conn.execute("CREATE TABLE IF NOT EXISTS s (a INTEGER)")

    store = make_store(setup=setup)
    assert len(calls) == 1
    store.insert("s", {"a": 1})
    assert count(store, "s") == 1


def test_setup_failure_raises_and_leaks_nothing(
    make_store: Callable[..., safestore.Store],
) -> None:
    """A failing setup script raises the engine's error from Store()."""
    with pytest.raises(safestore.DatabaseError):
        make_store(setup="CREATE TABLE ok (a INTEGER); THIS IS NOT SQL;")


def test_attributes_and_repr(store: safestore.Store, backend: str, mode: str) -> None:
    """backend, mode and path are read-only attributes."""
    assert store.backend == backend
    assert store.mode == mode
    assert store.path.endswith(".duckdb" if backend == "duckdb" else ".db")
    assert backend in repr(store)
    with pytest.raises(AttributeError):
        store.mode = "lock"  # type: ignore[misc]


def test_stats(store: safestore.Store) -> None:
    """stats() counts accepted, committed and failed writes and commits."""
    store.insert("t", {"v": "a"})
    with pytest.raises(safestore.IntegrityError):
        store.insert("t", {"v": "a"})
    st = store.stats()
    assert st.writes_accepted == 2
    assert st.writes_committed == 1
    assert st.writes_failed == 1
    assert st.commits >= 1
    assert st.largest_batch >= 1
    assert st.queue_depth == 0


def test_stats_count_only_commits_that_committed_something(store: safestore.Store) -> None:
    """Writes that all fail commit nothing: no commit is counted for them, and they
    never make up the largest batch."""
    store.insert("t", {"v": "a"})
    for _ in range(3):
        with pytest.raises(safestore.IntegrityError):
            store.insert("t", {"v": "a"})
    futures = [store.insert("t", {"v": "a"}, wait=False) for _ in range(5)]
    store.flush()
    assert all(isinstance(f.exception(WAIT), safestore.IntegrityError) for f in futures)
    st = store.stats()
    assert (st.writes_committed, st.writes_failed) == (1, 8)
    assert st.commits == 1
    assert st.largest_batch == 1


@pytest.mark.parametrize("durability", ["full", "normal"])
def test_durability_setting_sqlite(
    make_store: Callable[..., safestore.Store], durability: str
) -> None:
    """SQLite: durability maps to PRAGMA synchronous FULL (2) or NORMAL (1)."""
    store = make_store(durability=durability)
    if store.backend != "sqlite":
        pytest.skip("SQLite pragma")
    level = store.run(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0])
    assert level == (2 if durability == "full" else 1)
    mode = store.run(lambda conn: conn.execute("PRAGMA journal_mode").fetchone()[0])
    assert mode == "wal"


def test_read_only_store(tmp_path: Path, backend: str, mode: str) -> None:
    """read_only=True reads an existing database and refuses every write."""
    path = db_path(tmp_path, backend)
    with safestore.Store(path, setup=SCHEMA, timeout=WAIT) as writer:
        writer.insert("t", {"v": "a", "n": 1})
    with safestore.Store(path, mode=mode, read_only=True, timeout=WAIT) as ro:
        assert ro.query("SELECT v FROM t") == [("a",)]
        with pytest.raises(safestore.ReadOnlyError):
            ro.insert("t", {"v": "b"})
        with pytest.raises(safestore.ReadOnlyError):
            ro.execute("DELETE FROM t")
        with pytest.raises(safestore.ReadOnlyError), ro.transaction():
            pass
        with pytest.raises(safestore.ReadOnlyError):
            ro.query("DELETE FROM t")
        if backend == "duckdb":  # a write hidden in a SELECT, refused by the engine
            with pytest.raises(safestore.ReadOnlyError):
                ro.query("SELECT nextval('t_id')")


# --- targets and arguments -------------------------------------------------------------


def test_targets_choose_backend(tmp_path: Path) -> None:
    """The URL scheme, then the suffix, choose the backend; sqlite otherwise."""
    os.chdir(tmp_path)
    with safestore.Store("sqlite:///a.db") as s:
        assert (s.backend, s.path) == ("sqlite", "a.db")
    with safestore.Store(tmp_path / "b.sqlite3") as s:
        assert s.backend == "sqlite"
    with safestore.Store(f"sqlite:///{tmp_path}/c.db") as s:
        assert s.path == f"{tmp_path}/c.db"
    with safestore.Store(":memory:") as s:
        assert (s.backend, s.path) == ("sqlite", ":memory:")


def test_duckdb_targets(tmp_path: Path) -> None:
    """x.duckdb, duckdb:///x and backend='duckdb' open DuckDB."""
    os.chdir(tmp_path)
    for target, kwargs in [
        ("x.duckdb", {}),
        ("duckdb:///y.db", {}),
        ("z.ddb", {}),
        ("w.db", {"backend": "duckdb"}),
    ]:
        with safestore.Store(target, **kwargs) as s:
            assert s.backend == "duckdb"


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((), {}, TypeError, "target"),
        ((123,), {}, TypeError, "target"),
        (("",), {}, ValueError, "empty"),
        (("ftp:///x.db",), {}, ValueError, "scheme"),
        (("sqlite:///x.db",), {"backend": "duckdb"}, ValueError, "contradicts"),
        (("x.db",), {"backend": "postgres"}, ValueError, "backend"),
        (("x.db",), {"mode": "fast"}, ValueError, "mode"),
        (("x.db",), {"durability": "some"}, ValueError, "durability"),
        (("x.db",), {"timeout": 0}, ValueError, "timeout"),
        (("x.db",), {"timeout": float("inf")}, ValueError, "timeout"),
        (("x.db",), {"timeout": "1"}, TypeError, "timeout"),
        (("x.db",), {"max_queue": 0}, ValueError, "max_queue"),
        (("x.db",), {"setup": 5}, TypeError, "setup"),
        (("x.db",), {"read_only": 1}, TypeError, "read_only"),
        (("x.db",), {"read_only": True, "setup": "SELECT 1"}, ValueError, "setup"),
    ],
)
def test_bad_arguments(
    tmp_path: Path, args: tuple[Any, ...], kwargs: dict[str, Any], error: type, match: str
) -> None:
    """Bad arguments raise a clear error naming what was wrong; no thread is left."""
    os.chdir(tmp_path)
    with pytest.raises(error, match=match):
        safestore.Store(*args, **kwargs)


def test_public_names() -> None:
    """The package exports its API with __module__ == 'safestore'."""
    assert safestore.__version__ == "0.1.0"
    assert sorted(safestore.__all__) == safestore.__all__
    for name in ("Store", "Result", "Stats", "Transaction", "StoreError", "TimeoutError"):
        assert getattr(safestore, name).__module__ == "safestore"


@pytest.mark.parametrize("target", ["file", ":memory:"])
def test_threads_sharing_one_connection_read_their_own_rows(
    make_store: Callable[..., safestore.Store], tmp_path: Path, backend: str, target: str
) -> None:
    """Threads that use one engine connection in turn (lock mode; reads of a SQLite
    :memory: store) run the very same SQL texts, so on SQLite they share the
    connection's cached statements (CPython gh-118172 shows what that does to threads
    that do not take turns). Each thread must still get exactly its own rows, also
    while a run() function keeps a half-read cursor of the same query."""
    if target == ":memory:" and backend == "duckdb":
        pytest.skip("the :memory: case is SQLite's shared reader connection")
    store = make_store(":memory:" if target == ":memory:" else None, setup=SCHEMA)
    select = "SELECT n FROM t WHERE v LIKE ? ORDER BY n"

    def keep_half_read(conn: Any) -> Any:
        cur = conn.cursor()
        cur.execute(select, ["%"])
        cur.fetchone()  # the statement stays busy in the cursor
        return cur

    store.insert("t", [{"v": f"seed{i}", "n": i} for i in range(3)])
    held = store.run(keep_half_read)
    threads_n, rounds = 4, 60
    start = threading.Barrier(threads_n, timeout=WAIT)
    wrong: list[str] = []

    def work(k: int) -> None:
        start.wait()
        for i in range(rounds):
            store.insert("t", {"v": f"w{k}-{i}", "n": i})
            got = [r[0] for r in store.query(select, [f"w{k}-%"])]
            if got != list(range(i + 1)):
                wrong.append(f"thread {k} round {i}: {got}")
            one = store.query_one("SELECT count(*) FROM t WHERE v LIKE ?", [f"w{k}-%"])
            if one != (i + 1,):
                wrong.append(f"thread {k} round {i}: count {one}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(WAIT)
    assert not any(th.is_alive() for th in threads)
    assert wrong == []
    del held
    assert store.query(select, ["seed%"]) == [(0,), (1,), (2,)]


def test_failed_insert_leaves_nothing_even_with_on_conflict_fail(tmp_path: Path, mode: str) -> None:
    """An insert() is all or nothing also where SQLite keeps a failed statement's
    earlier changes (ON CONFLICT FAIL, RAISE(FAIL) in a trigger): it runs in a
    transaction of its own, never as a bare autocommit statement."""
    schema = (
        "CREATE TABLE t (x INTEGER UNIQUE ON CONFLICT FAIL);"
        "CREATE TABLE log (x INTEGER);"
        "CREATE TABLE u (x INTEGER);"
        "CREATE TRIGGER u_check BEFORE INSERT ON u BEGIN"
        "  INSERT INTO log VALUES (NEW.x);"
        "  SELECT RAISE(FAIL, 'refused') WHERE NEW.x < 0;"
        " END;"
    )
    with safestore.Store(db_path(tmp_path, "sqlite"), mode=mode, setup=schema) as store:
        with pytest.raises(safestore.IntegrityError):
            store.insert("t", [{"x": 1}, {"x": 2}, {"x": 1}])
        assert store.query("SELECT x FROM t") == []
        with pytest.raises(safestore.IntegrityError):
            store.insert("u", {"x": -1})
        assert store.query("SELECT x FROM log") == []
        store.insert("u", {"x": 5})
        assert store.query("SELECT x FROM log") == [(5,)]


def test_lone_insert_of_many_statements_is_atomic(store: safestore.Store) -> None:
    """An insert() too large for one statement is still all or nothing when it runs alone."""
    rows = [{"v": str(i), "n": i} for i in range(2000)]
    rows.append({"v": "7", "n": -1})  # duplicate of row 7: the last statement fails
    with pytest.raises(safestore.IntegrityError):
        store.insert("t", rows)
    assert count(store) == 0
    assert store.insert("t", rows[:-1]).rowcount == 2000
    assert count(store) == 2000


def test_execute_refuses_several_statements(store: safestore.Store) -> None:
    """execute() and executemany() run one statement: SQL holding two is refused on
    both engines (DuckDB would run both and report the last), and nothing of it is
    written; a trailing semicolon and a semicolon inside a string are fine."""
    two = "INSERT INTO t (v) VALUES ('a'); INSERT INTO t (v) VALUES ('b')"
    with pytest.raises(safestore.ProgrammingError):
        store.execute(two)
    with pytest.raises(safestore.ProgrammingError):
        with store.transaction() as tx:
            tx.execute(two)
    two_many = "INSERT INTO t (v) VALUES ('a'); INSERT INTO t (v) VALUES (?)"
    for many in (two_many, two_many + " RETURNING v"):
        with pytest.raises(safestore.ProgrammingError, match="statement"):
            store.executemany(many, [("b",), ("c",)])
        with pytest.raises(safestore.ProgrammingError, match="statement"):
            with store.transaction() as tx:
                tx.executemany(many, [("b",)])
    assert count(store) == 0
    assert store.execute("INSERT INTO t (v) VALUES ('x;y');").rowcount == 1
    assert store.query("SELECT v FROM t") == [("x;y",)]
