"""safestore.connect(): PEP 249 conformance and sqlite3 compatibility, on every backend."""

from __future__ import annotations

import datetime
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import SCHEMA, WAIT, db_path, in_thread

import safestore
from safestore import dbapi


@pytest.fixture
def connect(tmp_path: Path, backend: str, mode: str) -> Iterator[Callable[..., dbapi.Connection]]:
    """Open connections on this test's backend and mode; all are closed at teardown."""
    made: list[dbapi.Connection] = []

    def make(target: Any = None, **kwargs: Any) -> dbapi.Connection:
        if not isinstance(target, safestore.Store):
            kwargs.setdefault("backend", backend)
            kwargs.setdefault("mode", mode)
            kwargs.setdefault("timeout", WAIT)
        conn = dbapi.connect(target or db_path(tmp_path, backend), **kwargs)
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.close()


@pytest.fixture
def conn(connect: Callable[..., dbapi.Connection]) -> dbapi.Connection:
    """A connection with table t(id auto-assigned, v TEXT UNIQUE, n INTEGER)."""
    return connect(setup=SCHEMA)


# --- the module ------------------------------------------------------------------------


def test_module_globals() -> None:
    """apilevel, threadsafety and paramstyle have PEP 249 values."""
    assert dbapi.apilevel == "2.0"
    assert dbapi.threadsafety == 2
    assert dbapi.paramstyle == "qmark"
    assert safestore.connect is dbapi.connect
    assert safestore.dbapi is dbapi


def test_exception_hierarchy() -> None:
    """The PEP 249 exception tree is exposed by the module and by connections."""
    assert issubclass(dbapi.Warning, Exception)
    assert issubclass(dbapi.Error, Exception)
    assert issubclass(dbapi.InterfaceError, dbapi.Error)
    assert issubclass(dbapi.DatabaseError, dbapi.Error)
    for name in (
        "DataError",
        "OperationalError",
        "IntegrityError",
        "InternalError",
        "ProgrammingError",
        "NotSupportedError",
    ):
        assert issubclass(getattr(dbapi, name), dbapi.DatabaseError)
        assert getattr(dbapi.Connection, name) is getattr(dbapi, name)
    assert dbapi.Connection.Error is dbapi.Error
    assert dbapi.Connection.Warning is dbapi.Warning


def test_type_objects_and_constructors() -> None:
    """Type objects compare equal to their engine type codes; constructors build values."""
    assert dbapi.NUMBER == "INTEGER"
    assert dbapi.NUMBER == "DECIMAL(18,3)"
    assert dbapi.STRING == "VARCHAR"
    assert dbapi.BINARY == "BLOB"
    assert dbapi.DATETIME == "TIMESTAMP"
    assert dbapi.ROWID == "ROWID"
    assert dbapi.NUMBER != "VARCHAR"
    assert dbapi.STRING != None  # noqa: E711 (SQLite's type_code is None)
    assert dbapi.Date(2024, 1, 2) == datetime.date(2024, 1, 2)
    assert dbapi.Time(1, 2, 3) == datetime.time(1, 2, 3)
    assert dbapi.Timestamp(2024, 1, 2, 3, 4, 5) == datetime.datetime(2024, 1, 2, 3, 4, 5)
    ticks = 1_700_000_000.0
    assert dbapi.DateFromTicks(ticks) == datetime.date.fromtimestamp(ticks)
    assert dbapi.TimestampFromTicks(ticks) == datetime.datetime.fromtimestamp(ticks)
    assert dbapi.TimeFromTicks(ticks) == datetime.datetime.fromtimestamp(ticks).time()
    assert bytes(dbapi.Binary(b"\x00\x01")) == b"\x00\x01"


def test_duckdb_type_codes(connect: Callable[..., dbapi.Connection], backend: str) -> None:
    """DuckDB's description type codes compare equal to the matching type objects."""
    if backend != "duckdb":
        pytest.skip("SQLite reports no column types (None), like sqlite3")
    conn = connect()
    cur = conn.execute(
        "SELECT 1::INTEGER AS i, 'x' AS s, BLOB 'a' AS b, TIMESTAMP '2024-01-01' AS t"
    )
    codes = [d[1] for d in cur.description]
    assert codes == [dbapi.NUMBER, dbapi.STRING, dbapi.BINARY, dbapi.DATETIME]


# --- cursors ---------------------------------------------------------------------------


def test_cursor_attributes_before_execute(conn: dbapi.Connection) -> None:
    """A fresh cursor: no description, rowcount -1, arraysize 1, fetch returns None/[]."""
    cur = conn.cursor()
    assert cur.description is None
    assert cur.rowcount == -1
    assert cur.lastrowid is None
    assert cur.arraysize == 1
    assert cur.connection is conn
    assert cur.fetchone() is None  # sqlite3's behaviour (PEP 249 would raise)
    assert cur.fetchall() == []
    cur.setinputsizes([None])
    cur.setoutputsize(10)
    cur.setoutputsize(10, 0)


def test_execute_fetch_and_description(conn: dbapi.Connection) -> None:
    """execute returns the cursor; fetchone/many/all and iteration hand out the rows."""
    cur = conn.cursor()
    assert (
        cur.executemany(
            "INSERT INTO t (v, n) VALUES (?, ?)", [(c, i) for i, c in enumerate("abcde")]
        )
        is cur
    )
    assert cur.rowcount == 5
    assert cur.execute("SELECT v, n FROM t ORDER BY n") is cur
    assert [d[0] for d in cur.description] == ["v", "n"]
    assert all(len(d) == 7 for d in cur.description)
    assert cur.rowcount == -1
    assert cur.fetchone() == ("a", 0)
    assert cur.fetchmany() == [("b", 1)]
    cur.arraysize = 2
    assert cur.fetchmany() == [("c", 2), ("d", 3)]
    assert cur.fetchmany(5) == [("e", 4)]
    assert cur.fetchone() is None
    cur.execute("SELECT v FROM t ORDER BY n")
    assert [row for row in cur] == [(c,) for c in "abcde"]
    cur.execute("SELECT v FROM t WHERE n >= ? ORDER BY n", (3,))
    assert cur.fetchall() == [("d",), ("e",)]
    assert cur.fetchall() == []
    for size in (0, -1):  # sqlite3: every remaining row
        cur.execute("SELECT v FROM t WHERE n >= ? ORDER BY n", (3,))
        assert cur.fetchmany(size) == [("d",), ("e",)]


def test_table_valued_functions_read_outside_a_transaction(
    conn: dbapi.Connection, backend: str
) -> None:
    """Reads of table-valued functions work as in sqlite3, in and out of a transaction."""
    sql = (
        "SELECT value FROM json_each('[1, 2]')"
        if backend == "sqlite"
        else "SELECT * FROM unnest([1, 2])"
    )
    info = "SELECT name FROM pragma_table_info('t') ORDER BY name"
    assert conn.execute(sql).fetchall() == [(1,), (2,)]
    assert conn.execute(info).fetchall() == [("id",), ("n",), ("v",)]
    conn.execute("INSERT INTO t (v) VALUES ('a')")  # opens a transaction (sqlite3's rule)
    assert conn.execute(sql).fetchall() == [(1,), (2,)]
    conn.commit()


def test_rowcount_and_lastrowid(conn: dbapi.Connection, backend: str) -> None:
    """rowcount counts changed rows; lastrowid is the inserted rowid (SQLite), None on DuckDB."""
    cur = conn.execute("INSERT INTO t (v, n) VALUES ('a', 1)")
    assert cur.rowcount == 1
    if backend == "sqlite":
        assert cur.lastrowid == 1
        assert conn.execute("INSERT INTO t (v) VALUES ('b')").lastrowid == 2
        assert conn.execute("SELECT 1").lastrowid == 2  # unchanged by a read, as sqlite3
    else:
        assert cur.lastrowid is None
    conn.execute("INSERT INTO t (v, n) VALUES ('c', 1)")
    assert conn.execute("UPDATE t SET n = 5 WHERE n = 1").rowcount == 2
    assert conn.execute("DELETE FROM t WHERE v = 'zzz'").rowcount == 0


def as_in_sqlite3(
    script: Callable[[Any], list[Any]], connect: Callable[..., dbapi.Connection], tmp_path: Path
) -> list[Any]:
    """Run `script` on a plain sqlite3 connection and on ours (fresh files); check they
    saw the same, and return it."""
    plain = sqlite3.connect(tmp_path / "plain.db")
    try:
        expected = script(plain)
    finally:
        plain.close()
    assert script(connect(tmp_path / "ours.db")) == expected
    return expected


def test_lastrowid_around_executemany_is_sqlite3s(
    connect: Callable[..., dbapi.Connection], backend: str, tmp_path: Path
) -> None:
    """executemany leaves a cursor's lastrowid as it was, and the next statement
    reports the last row executemany inserted, exactly as sqlite3 does."""
    if backend != "sqlite":
        pytest.skip("lastrowid is always None on DuckDB (no rowids)")

    def script(conn: Any) -> list[Any]:
        conn.execute("CREATE TABLE r (x INTEGER)")
        cur, other = conn.cursor(), conn.cursor()
        seen = [cur.lastrowid]
        cur.execute("INSERT INTO r VALUES (1)")
        seen.append(cur.lastrowid)
        cur.executemany("INSERT INTO r VALUES (?)", [(2,), (3,)])
        seen.append(cur.lastrowid)  # unchanged
        cur.execute("SELECT 1")
        seen.append(cur.lastrowid)  # the last row executemany inserted
        other.executemany("INSERT INTO r VALUES (?)", [(4,), (5,)])
        seen.append(other.lastrowid)  # still None: it never ran execute()
        cur.executemany("UPDATE r SET x = x + ?", [(1,), (2,)])
        cur.execute("UPDATE r SET x = x")
        seen.append(cur.lastrowid)
        conn.commit()
        return seen

    assert as_in_sqlite3(script, connect, tmp_path) == [None, 1, 1, 3, None, 5]


def test_cursor_state_around_executescript_and_empty_statements_is_sqlite3s(
    connect: Callable[..., dbapi.Connection], backend: str, tmp_path: Path
) -> None:
    """executescript() leaves a cursor's rowcount, description, lastrowid and unread
    rows as they were, and a statement with nothing to run leaves lastrowid alone,
    exactly as sqlite3 does."""
    if backend != "sqlite":
        pytest.skip("compared with sqlite3")

    def script(conn: Any) -> list[Any]:
        conn.execute("CREATE TABLE r (x INTEGER)")
        cur = conn.cursor()
        cur.execute("-- nothing to run")
        seen: list[Any] = [cur.lastrowid, cur.rowcount]
        cur.execute("INSERT INTO r VALUES (1), (2)")
        cur.executescript("INSERT INTO r VALUES (3);")
        seen += [cur.rowcount, cur.description, cur.lastrowid]
        cur.execute("SELECT x FROM r ORDER BY x")
        seen.append(cur.fetchone())
        cur.executescript("UPDATE r SET x = x;")
        seen += [cur.rowcount, cur.description, cur.lastrowid, cur.fetchone()]
        cur.execute(" ; /* */ ;")
        seen += [cur.lastrowid, cur.rowcount, cur.description, cur.fetchall()]
        return seen

    expected = as_in_sqlite3(script, connect, tmp_path)
    assert expected[:2] == [None, -1] and expected[2] == 2


def test_returning(conn: dbapi.Connection) -> None:
    """INSERT ... RETURNING gives rows and a description, in and out of transactions."""
    cur = conn.execute("INSERT INTO t (v, n) VALUES ('a', 7) RETURNING v, n")
    assert [d[0] for d in cur.description] == ["v", "n"]
    assert cur.fetchall() == [("a", 7)]
    conn.commit()
    conn.isolation_level = None
    cur = conn.execute("INSERT INTO t (v, n) VALUES ('b', 8) RETURNING n")
    assert cur.fetchall() == [(8,)]


def test_closed_cursor_and_connection(conn: dbapi.Connection, backend: str) -> None:
    """Use after close raises ProgrammingError (sqlite3's class on SQLite); close twice is fine."""
    expected: type[Exception] = (
        sqlite3.ProgrammingError if backend == "sqlite" else dbapi.ProgrammingError
    )
    cur = conn.cursor()
    cur.close()
    cur.close()
    with pytest.raises(expected, match="closed cursor"):
        cur.execute("SELECT 1")
    with pytest.raises(dbapi.ProgrammingError):
        cur.fetchone()
    live = conn.cursor()
    conn.close()
    conn.close()
    for call in (conn.cursor, conn.commit, conn.rollback, lambda: conn.execute("SELECT 1")):
        with pytest.raises(expected, match="closed database"):
            call()
    with pytest.raises(dbapi.ProgrammingError, match="closed database"):
        live.fetchall()


def test_statement_errors_keep_engine_classes(conn: dbapi.Connection, backend: str) -> None:
    """Engine errors are both the engine's class and safestore's (sqlite3 code keeps working)."""
    conn.execute("INSERT INTO t (v) VALUES ('a')")
    conn.commit()
    with pytest.raises(dbapi.IntegrityError) as info:
        conn.execute("INSERT INTO t (v) VALUES ('a')")
    assert isinstance(info.value, conn.IntegrityError)
    if backend == "sqlite":
        assert isinstance(info.value, sqlite3.IntegrityError)
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT ?", (1, 2))
        with pytest.raises(sqlite3.ProgrammingError, match="one statement"):
            conn.execute("SELECT 1; SELECT 2")
        with pytest.raises(sqlite3.OperationalError):
            conn.execute("SELECT * FROM missing")
    else:
        import duckdb

        assert isinstance(info.value, duckdb.ConstraintException)
        with pytest.raises(dbapi.ProgrammingError):
            conn.execute("INSERT INTO t (v) VALUES ('x'); INSERT INTO t (v) VALUES ('y')")
    conn.rollback()
    with pytest.raises(TypeError):
        conn.execute(42)  # type: ignore[arg-type]


# --- transactions on one thread --------------------------------------------------------


def test_commit_and_rollback(conn: dbapi.Connection) -> None:
    """DML opens a transaction; rollback undoes it, commit keeps it."""
    assert not conn.in_transaction
    conn.execute("INSERT INTO t (v) VALUES ('a')")
    assert conn.in_transaction
    conn.rollback()
    assert not conn.in_transaction
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    conn.execute("INSERT INTO t (v) VALUES ('b')")
    conn.commit()
    conn.commit()  # nothing open: a no-op
    conn.rollback()
    assert conn.execute("SELECT v FROM t").fetchall() == [("b",)]


def test_a_statement_that_does_not_prepare_opens_no_transaction(
    conn: dbapi.Connection, backend: str
) -> None:
    """sqlite3 prepares a statement before its implicit BEGIN: one that does not prepare
    (a missing table or column, two statements) leaves no transaction open, so the
    classic fallback of creating the missing table is not caught in one, and the
    thread does not hold the writer. A statement that prepares and then fails keeps
    the transaction its BEGIN opened, as in sqlite3."""
    with pytest.raises(dbapi.DatabaseError):
        conn.execute("INSERT INTO log (msg) VALUES ('hello')")
    assert not conn.in_transaction
    conn.execute("CREATE TABLE log (msg TEXT)")  # DDL: committed on its own
    with pytest.raises(dbapi.DatabaseError):
        conn.execute("INSERT INTO t (missing) VALUES (1)")
    assert not conn.in_transaction
    if backend == "sqlite":
        with pytest.raises(dbapi.ProgrammingError, match="one statement"):
            conn.execute("INSERT INTO t (v) VALUES ('a'); INSERT INTO t (v) VALUES ('b')")
        assert not conn.in_transaction
    # Another thread writes at once (it would wait for a transaction held here).
    in_thread(lambda: (conn.execute("INSERT INTO log VALUES ('other thread')"), conn.commit()))
    conn.execute("INSERT INTO t (v) VALUES ('a')")
    conn.commit()
    with pytest.raises(dbapi.IntegrityError):
        conn.execute("INSERT INTO t (v) VALUES ('a')")
    if backend == "sqlite":
        assert conn.in_transaction
    conn.rollback()
    assert conn.execute("SELECT msg FROM log").fetchall() == [("other thread",)]
    if backend != "sqlite":
        return
    # With parameters too: the rows executemany wrote before its failing one stay in
    # the open transaction, and a binding error comes after sqlite3's BEGIN.
    with pytest.raises(dbapi.IntegrityError):
        conn.executemany("INSERT INTO t (v) VALUES (?)", [("p",), ("q",), ("p",)])
    assert conn.in_transaction
    conn.commit()
    assert conn.execute("SELECT v FROM t ORDER BY v").fetchall() == [("a",), ("p",), ("q",)]
    with pytest.raises(sqlite3.ProgrammingError, match="bindings"):
        conn.execute("INSERT INTO t (v) VALUES (?)", ())
    assert conn.in_transaction
    conn.rollback()
    with pytest.raises(sqlite3.OperationalError):
        conn.execute("INSERT INTO t (missing) VALUES (?)", (1,))
    assert not conn.in_transaction


def test_with_block_commits_or_rolls_back(conn: dbapi.Connection) -> None:
    """`with conn:` commits on success and rolls back on an exception, and does not close."""
    with conn:
        conn.execute("INSERT INTO t (v) VALUES ('a')")
    with pytest.raises(ZeroDivisionError), conn:
        conn.execute("INSERT INTO t (v) VALUES ('b')")
        raise ZeroDivisionError
    assert conn.execute("SELECT v FROM t").fetchall() == [("a",)]
    assert in_thread(lambda: conn.execute("SELECT count(*) FROM t").fetchone()) == (1,)


def test_isolation_level_none_autocommits(conn: dbapi.Connection) -> None:
    """With isolation_level=None each statement commits at once; others see it."""
    assert conn.isolation_level == ""
    conn.execute("INSERT INTO t (v) VALUES ('a')")
    conn.isolation_level = None  # commits the open transaction, as sqlite3 does
    assert not conn.in_transaction
    conn.execute("INSERT INTO t (v) VALUES ('b')")
    assert not conn.in_transaction
    assert in_thread(lambda: conn.execute("SELECT count(*) FROM t").fetchone()) == (2,)
    with pytest.raises(ValueError, match="isolation_level"):
        conn.isolation_level = "SOMETIMES"
    conn.isolation_level = "IMMEDIATE"
    conn.execute("INSERT INTO t (v) VALUES ('c')")
    assert conn.in_transaction


def test_explicit_transaction_sql(conn: dbapi.Connection, backend: str) -> None:
    """BEGIN/COMMIT/ROLLBACK written as SQL act on the calling thread's transaction."""
    expected: type[Exception] = (
        sqlite3.OperationalError if backend == "sqlite" else dbapi.OperationalError
    )
    conn.isolation_level = None
    conn.execute("BEGIN")
    assert conn.in_transaction
    conn.execute("INSERT INTO t (v) VALUES ('a')")
    with pytest.raises(expected, match="within a transaction"):
        conn.execute("BEGIN")
    conn.execute("ROLLBACK")
    with pytest.raises(expected, match="no transaction is active"):
        conn.execute("COMMIT")
    conn.execute("BEGIN TRANSACTION")
    conn.execute("INSERT INTO t (v) VALUES ('b')")
    conn.execute("COMMIT")
    assert conn.execute("SELECT v FROM t").fetchall() == [("b",)]


def test_transaction_control_sql_is_checked_whole(conn: dbapi.Connection, backend: str) -> None:
    """Transaction control written as SQL is parsed by the engine, not judged by its
    first word: trailing garbage is a syntax error and a second statement refuses the
    whole text, so nothing of it happens (sqlite3 behaves the same)."""
    conn.isolation_level = None
    for bad in ("BEGIN GARBAGE", "BEGIN; INSERT INTO t (v) VALUES ('a')"):
        with pytest.raises(dbapi.DatabaseError):
            conn.execute(bad)
        assert not conn.in_transaction
    if backend == "sqlite":  # SQLite has no START TRANSACTION
        with pytest.raises(sqlite3.OperationalError, match="syntax error"):
            conn.execute("START TRANSACTION")
        with pytest.raises(sqlite3.OperationalError, match="syntax error"):
            conn.executescript("BEGIN GARBAGE;")
    conn.execute("BEGIN")
    conn.execute("DELETE FROM t")
    with pytest.raises(dbapi.ProgrammingError, match="one statement"):
        conn.execute("COMMIT; INSERT INTO t (v) VALUES ('b')")
    assert conn.in_transaction  # the COMMIT did not happen either
    conn.execute("ROLLBACK")
    assert conn.execute("SELECT v FROM t").fetchall() == []


def test_autocommit_attribute(connect: Callable[..., dbapi.Connection]) -> None:
    """Python 3.12 `autocommit`: True commits each statement, False keeps a transaction."""
    conn = connect(setup=SCHEMA, autocommit=True)
    assert conn.autocommit is True
    conn.execute("INSERT INTO t (v) VALUES ('a')")
    assert not conn.in_transaction
    conn.rollback()  # does nothing in autocommit mode
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
    conn.autocommit = False
    assert conn.in_transaction
    conn.execute("CREATE TABLE u (x INTEGER)")
    conn.execute("INSERT INTO t (v) VALUES ('b')")
    conn.rollback()  # undoes the DDL too
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
    conn.execute("INSERT INTO t (v) VALUES ('c')")
    conn.autocommit = True  # commits the open transaction
    assert in_thread(lambda: conn.execute("SELECT count(*) FROM t").fetchone()) == (2,)
    assert conn.autocommit is True
    conn.autocommit = dbapi.LEGACY_TRANSACTION_CONTROL
    with pytest.raises(ValueError, match="autocommit"):
        conn.autocommit = 5


def test_autocommit_false_transaction_sql_and_isolation_level(
    connect: Callable[..., dbapi.Connection], backend: str
) -> None:
    """autocommit=False as in sqlite3 3.12: a transaction is always open, so SQL COMMIT
    and ROLLBACK succeed before the first write and BEGIN is refused; setting
    isolation_level to None commits (sqlite3 calls commit())."""
    expected: type[Exception] = (
        sqlite3.OperationalError if backend == "sqlite" else dbapi.OperationalError
    )
    conn = connect(setup=SCHEMA, autocommit=False)
    conn.execute("SELECT count(*) FROM t").fetchall()
    conn.execute("COMMIT")
    conn.execute("BEGIN")
    conn.commit()  # commits, and opens the next one
    conn.execute("ROLLBACK")
    conn.execute("BEGIN")
    conn.commit()
    with pytest.raises(expected, match="within a transaction"):
        conn.execute("BEGIN")
    conn.execute("INSERT INTO t (v) VALUES ('a')")
    conn.isolation_level = None
    assert conn.autocommit is False and conn.in_transaction
    conn.execute("INSERT INTO t (v) VALUES ('b')")
    conn.rollback()
    assert in_thread(lambda: conn.execute("SELECT v FROM t").fetchall()) == [("a",)]
    # An SQL COMMIT ends sqlite3's ever-open transaction: statements then commit on
    # their own and BEGIN works, until commit() or rollback() opens the next one.
    conn.execute("INSERT INTO t (v) VALUES ('c')")
    conn.execute("COMMIT")
    assert not conn.in_transaction
    conn.execute("INSERT INTO t (v) VALUES ('d')")  # committed at once
    assert in_thread(lambda: conn.execute("SELECT count(*) FROM t").fetchone()) == (3,)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t (v) VALUES ('e')")
    conn.execute("ROLLBACK")
    with pytest.raises(expected, match="no transaction is active"):
        conn.execute("COMMIT")
    conn.execute("BEGIN")
    conn.commit()  # opens sqlite3's next transaction
    assert conn.in_transaction
    with pytest.raises(expected, match="within a transaction"):
        conn.execute("BEGIN")
    conn.execute("INSERT INTO t (v) VALUES ('f')")
    conn.rollback()
    assert [r[0] for r in conn.execute("SELECT v FROM t ORDER BY v")] == ["a", "c", "d"]


def test_executescript(conn: dbapi.Connection) -> None:
    """executescript commits pending work first, then runs every statement."""
    conn.execute("INSERT INTO t (v) VALUES ('a')")
    cur = conn.executescript(
        """
        -- a comment; with a semicolon
        CREATE TABLE s (x TEXT);
        INSERT INTO s VALUES ('1;2');
        BEGIN;
        INSERT INTO s VALUES ('3');
        ROLLBACK;
        """
    )
    assert isinstance(cur, dbapi.Cursor)
    assert not conn.in_transaction
    assert conn.execute("SELECT x FROM s").fetchall() == [("1;2",)]
    assert in_thread(lambda: conn.execute("SELECT count(*) FROM t").fetchone()) == (1,)


def test_executescript_with_dollar_quoted_strings_on_duckdb(
    connect: Callable[..., dbapi.Connection], backend: str
) -> None:
    """DuckDB scripts are split by DuckDB's parser: a ; inside $$...$$ stays put."""
    if backend != "duckdb":
        pytest.skip("dollar-quoted strings are DuckDB syntax")
    conn = connect(isolation_level=None)
    conn.executescript("CREATE TABLE d (v VARCHAR); INSERT INTO d VALUES ($$a;b$$);")
    assert conn.execute("SELECT v FROM d").fetchall() == [("a;b",)]


def test_total_changes(conn: dbapi.Connection) -> None:
    """total_changes counts rows changed through the connection."""
    assert conn.total_changes == 0
    conn.executemany("INSERT INTO t (v) VALUES (?)", [("a",), ("b",)])
    conn.execute("UPDATE t SET n = 1")
    conn.commit()
    assert conn.total_changes == 4
    # Rows changed by a script count too, as in sqlite3.
    conn.executescript("UPDATE t SET n = 2; DELETE FROM t WHERE v = 'a';")
    assert conn.total_changes == 7


def test_total_changes_and_lastrowid_follow_sqlite3(conn: dbapi.Connection, backend: str) -> None:
    """SQLite: total_changes counts a WITH ... INSERT and rows changed by triggers, and
    lastrowid reflects a script's inserts, as sqlite3's do."""
    if backend != "sqlite":
        pytest.skip("sqlite3's counters")
    cur = conn.execute(
        "WITH r(x) AS (VALUES ('a'), ('b'), ('c')) INSERT INTO t (v) SELECT x FROM r"
    )
    assert cur.lastrowid == 3  # the statement's last row, though sqlite3 counts it no DML
    conn.commit()
    assert conn.total_changes == 3
    cur = conn.execute("WITH r(x) AS (VALUES (1)) UPDATE t SET n = 1 WHERE id = 1")
    assert cur.lastrowid == 3  # an update after a CTE inserts nothing
    cur = conn.execute("WITH r(x) AS (VALUES (0)) DELETE FROM t WHERE id = 3")
    cur = conn.execute("WITH r(x) AS (VALUES ('c')) INSERT INTO t (v) SELECT x FROM r")
    assert cur.lastrowid == 3  # a new row, which got the rowid of the one before
    conn.commit()
    conn.executescript(
        "CREATE TABLE audit (v TEXT);"
        "CREATE TRIGGER log AFTER INSERT ON t BEGIN INSERT INTO audit VALUES (new.v); END;"
    )
    conn.execute("INSERT INTO t (v) VALUES ('d')")
    conn.commit()
    assert conn.total_changes == 8  # and the row and the trigger's row
    conn.executescript("INSERT INTO t (id, v) VALUES (42, 'e');")
    assert conn.execute("SELECT 1").lastrowid == 42


# --- rows ------------------------------------------------------------------------------


def test_row_factories(conn: dbapi.Connection) -> None:
    """sqlite3.Row, a custom factory and text_factory all shape fetched rows."""
    conn.execute("INSERT INTO t (v, n) VALUES ('a', 1)")
    conn.commit()
    conn.row_factory = sqlite3.Row
    row = conn.execute('SELECT v, n AS "the n" FROM t').fetchone()
    assert isinstance(row, sqlite3.Row)
    assert row["v"] == "a" and row["the n"] == 1 and row[0] == "a"
    assert row.keys() == ["v", "the n"]
    assert dict(row) == {"v": "a", "the n": 1}
    cur = conn.cursor()
    cur.row_factory = lambda c, r: {d[0]: v for d, v in zip(c.description, r, strict=True)}
    assert cur.execute("SELECT v FROM t").fetchall() == [{"v": "a"}]
    conn.row_factory = None
    conn.text_factory = bytes
    assert conn.execute("SELECT v, n FROM t").fetchone() == (b"a", 1)


# --- connect() options ---------------------------------------------------------------


def test_memory_database(backend: str, mode: str) -> None:
    """':memory:' works, shared by the connection's threads."""
    conn = dbapi.connect(":memory:", backend=backend, mode=mode, timeout=WAIT)
    try:
        conn.execute("CREATE TABLE m (x INTEGER)")
        conn.execute("INSERT INTO m VALUES (1)")
        conn.commit()
        assert in_thread(lambda: conn.execute("SELECT x FROM m").fetchall()) == [(1,)]
    finally:
        conn.close()


def test_connect_to_a_store(connect: Callable[..., dbapi.Connection], make_store: Any) -> None:
    """connect(store) shares the store's writer; closing the connection keeps the store open."""
    store = make_store(setup=SCHEMA)
    conn = connect(store)
    store.insert("t", {"v": "from store"})
    conn.execute("INSERT INTO t (v) VALUES ('from conn')")
    if store.mode == "queue":  # lock mode: another thread's read waits for the commit
        assert in_thread(lambda: store.query("SELECT count(*) FROM t")) == [(1,)]
    conn.commit()
    assert store.query("SELECT count(*) FROM t") == [(2,)]
    conn.close()
    assert not store.closed
    with pytest.raises(TypeError, match="store's own settings"):
        dbapi.connect(store, timeout=1)


def test_iterdump_sees_what_the_thread_sees(conn: dbapi.Connection, backend: str) -> None:
    """iterdump() dumps the committed state, or inside the calling thread's open
    transaction, that state with the transaction's own changes (as sqlite3 does)."""
    if backend != "sqlite":
        pytest.skip("iterdump() is SQLite's")
    conn.execute("INSERT INTO t (v) VALUES ('committed')")
    conn.commit()
    assert any("'committed'" in line for line in conn.iterdump())
    conn.execute("INSERT INTO t (v) VALUES ('pending')")
    assert conn.in_transaction
    dump = list(conn.iterdump())
    assert any("'pending'" in line for line in dump)
    conn.rollback()
    assert not any("'pending'" in line for line in conn.iterdump())


def test_unsupported_options(tmp_path: Path) -> None:
    """Options that cannot be honoured are refused clearly; harmless ones are accepted."""
    path = str(tmp_path / "u.db")
    with pytest.raises(dbapi.NotSupportedError, match="detect_types"):
        dbapi.connect(path, detect_types=sqlite3.PARSE_DECLTYPES)
    with pytest.raises(dbapi.NotSupportedError, match="factory"):
        dbapi.connect(path, factory=sqlite3.Connection)  # type: ignore[arg-type]
    conn = dbapi.connect(path, 5.0, check_same_thread=True, cached_statements=10)
    try:
        with pytest.raises(sqlite3.NotSupportedError, match="create_function"):
            conn.create_function("f", 1, abs)  # type: ignore[attr-defined]
        assert any("CREATE" in line for line in conn.iterdump()) is False
    finally:
        conn.close()


def test_database_as_bytes_and_plain_name_with_uri(tmp_path: Path) -> None:
    """As sqlite3: a bytes path opens the file, and with uri=True a name that is not a
    file: URI is a plain path."""
    path = tmp_path / "b.db"
    with dbapi.connect(os.fsencode(path), isolation_level=None) as first:
        first.execute("CREATE TABLE b (x INTEGER)")
        first.execute("INSERT INTO b VALUES (1)")
    first.close()
    again = dbapi.connect(str(path), uri=True)
    try:
        assert again.execute("SELECT x FROM b").fetchall() == [(1,)]
    finally:
        again.close()


def test_isolation_level_reads_back_in_capitals(connect: Callable[..., dbapi.Connection]) -> None:
    """isolation_level is kept as sqlite3 keeps it: checked, in capitals."""
    conn = connect(isolation_level="deferred")
    assert conn.isolation_level == "DEFERRED"
    conn.isolation_level = "exclusive"
    assert conn.isolation_level == "EXCLUSIVE"
    with pytest.raises(ValueError, match="isolation_level"):
        conn.isolation_level = "serializable"
    assert conn.isolation_level == "EXCLUSIVE"


def test_uri_read_only(tmp_path: Path) -> None:
    """uri=True understands file: URIs with mode=ro (writes are refused)."""
    path = tmp_path / "ro.db"
    writer = dbapi.connect(str(path), isolation_level=None)
    writer.execute("CREATE TABLE r (x INTEGER)")
    writer.execute("INSERT INTO r VALUES (1)")
    writer.close()
    conn = dbapi.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT x FROM r").fetchall() == [(1,)]
        with pytest.raises(safestore.ReadOnlyError):
            conn.execute("INSERT INTO r VALUES (2)")
    finally:
        conn.close()
    with pytest.raises(dbapi.NotSupportedError, match="cache"):
        dbapi.connect(f"file:{path}?cache=shared", uri=True)


def test_a_rolled_back_transaction_ends_as_in_sqlite3(tmp_path: Path, mode: str) -> None:
    """After INSERT OR ROLLBACK ends the thread's transaction, the connection behaves
    as sqlite3's: no transaction, the next write opens a new one, rollback undoes it."""

    def scenario(connect: Callable[[str], Any], path: str) -> list[Any]:
        c = connect(path)
        c.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")
        c.execute("INSERT INTO t VALUES (1)")
        c.commit()
        c.execute("INSERT INTO t VALUES (2)")
        with pytest.raises(sqlite3.IntegrityError):
            c.execute("INSERT OR ROLLBACK INTO t VALUES (1)")
        seen: list[Any] = [c.in_transaction]
        c.execute("INSERT INTO t VALUES (3)")
        c.rollback()
        c.execute("INSERT INTO t VALUES (4)")
        c.commit()
        seen.append(c.execute("SELECT x FROM t ORDER BY x").fetchall())
        c.close()
        return seen

    expected = scenario(sqlite3.connect, str(tmp_path / "raw.db"))
    assert expected == [False, [(1,), (4,)]]
    ours = scenario(lambda p: dbapi.connect(p, mode=mode, timeout=WAIT), str(tmp_path / "ours.db"))
    assert ours == expected


SAVEPOINT_SCENARIOS = {
    # Inside a transaction: ROLLBACK TO undoes the savepoint's work only (comments
    # between the words included); the transaction goes on.
    "rollback to, inside": [
        "INSERT INTO t VALUES ('a')",
        "SAVEPOINT sp",
        "INSERT INTO t VALUES ('b')",
        "ROLLBACK /* undo b */ TRANSACTION -- only b\n TO SAVEPOINT sp",
        "RELEASE sp",
    ],
    # A SAVEPOINT outside a transaction opens one; releasing it commits.
    "release commits": ["SAVEPOINT sp", "INSERT INTO t VALUES ('a')", "RELEASE SAVEPOINT SP"],
    "rollback to, then release": [
        'SAVEPOINT "Outer"',
        "INSERT INTO t VALUES ('a')",
        "SAVEPOINT inner",
        "INSERT INTO t VALUES ('b')",
        "ROLLBACK TO outer",
        "INSERT INTO t VALUES ('c')",
        "SAVEPOINT outer",
        "RELEASE outer",  # the inner one of that name: the transaction goes on
        "INSERT INTO t VALUES ('d')",
        "RELEASE outer",
    ],
    # Released inside a transaction BEGIN opened: nothing is committed by it.
    "release inside begin": ["BEGIN", "SAVEPOINT sp", "INSERT INTO t VALUES ('a')", "RELEASE sp"],
    # Names beyond ASCII (SQLite folds the case of ASCII letters only).
    "names beyond ascii": [
        "SAVEPOINT üOuter",
        "INSERT INTO t VALUES ('a')",
        "SAVEPOINT inner",
        "RELEASE inner",  # not the first: the transaction goes on
        "SAVEPOINT [Ωmega]",
        "INSERT INTO t VALUES ('b')",
        "RELEASE Ωmega",
        "RELEASE üouter",  # the first one (O and o are one letter to SQLite)
    ],
}

SAVEPOINT_MODES = {
    "isolation_level DEFERRED": {"isolation_level": "DEFERRED"},
    "isolation_level None": {"isolation_level": None},
    "autocommit=False after an SQL COMMIT": {"autocommit": False},
}


@pytest.mark.parametrize("txmode", list(SAVEPOINT_MODES))
@pytest.mark.parametrize("scenario", list(SAVEPOINT_SCENARIOS))
def test_savepoints_as_in_sqlite3(tmp_path: Path, mode: str, scenario: str, txmode: str) -> None:
    """SQL savepoints on the thread's transaction behave as sqlite3's: when each
    statement leaves a transaction open, and what is committed in the end (the
    connection is closed without commit(), which rolls back anything still open)."""
    steps = SAVEPOINT_SCENARIOS[scenario]
    kwargs = SAVEPOINT_MODES[txmode]
    if "autocommit" in kwargs and sys.version_info < (3, 12):
        pytest.skip("sqlite3's autocommit is Python 3.12's")

    def run(connect: Callable[..., Any], path: str, script: bool) -> list[Any]:
        c = connect(path, **kwargs)
        c.execute("CREATE TABLE t (v TEXT)")
        if c.in_transaction:
            c.commit()
        if "autocommit" in kwargs:
            c.execute("COMMIT")  # statements now commit on their own, until commit()
        seen: list[Any] = []
        if script:
            c.executescript(";".join(steps))
            seen.append(c.in_transaction)
        else:
            for step in steps:
                c.execute(step)
                seen.append(c.in_transaction)
        c.close()
        check = sqlite3.connect(path)
        seen.append(check.execute("SELECT v FROM t ORDER BY v").fetchall())
        check.close()
        return seen

    def ours(path: str, **kwargs: Any) -> dbapi.Connection:
        return dbapi.connect(path, mode=mode, timeout=WAIT, **kwargs)

    for script in (False, True):
        name = f"{'script' if script else 'steps'}.db"
        expected = run(sqlite3.connect, str(tmp_path / f"raw-{name}"), script)
        assert run(ours, str(tmp_path / f"ours-{name}"), script) == expected, script


AUTOCOMMIT_EDGES: dict[str, tuple[dict[str, Any], list[tuple[Any, ...]]]] = {
    # Outside a transaction sqlite3 commits the rows before the one that fails.
    "executemany outside a transaction": (
        {"isolation_level": None},
        [("many", "INSERT INTO t (id, v) VALUES (?, ?)", [(1, "ok"), (2, None), (3, "ok")])],
    ),
    "executemany of WITH ... INSERT, autocommit=False": (
        {"autocommit": False},
        [
            (
                "many",
                "WITH r(x) AS (VALUES (?)) INSERT INTO t (id, v) SELECT x, 'w' FROM r",
                [(1,), (2,)],
            ),
            ("rollback",),
        ],
    ),
    "autocommit=True set again": (
        {"autocommit": True},
        [("one", "BEGIN"), ("one", "INSERT INTO t (id, v) VALUES (1, 'x')"), ("autocommit",)],
    ),
    "a ROLLBACK conflict, autocommit=False": (
        {"autocommit": False},
        [
            ("one", "INSERT INTO t (id, v) VALUES (1, 'a')"),
            ("commit",),
            ("one", "INSERT OR ROLLBACK INTO t (id, v) VALUES (1, 'dup')"),
            ("one", "INSERT INTO t (id, v) VALUES (2, 'kept')"),
        ],
    ),
    # Inside a transaction the rows before the failing one stay, and count.
    "executemany failing inside a transaction": (
        {},
        [
            ("one", "INSERT INTO t (id, v) VALUES (1, 'a')"),
            ("many", "INSERT INTO t (id, v) VALUES (?, ?)", [(2, "b"), (3, "c"), (4, None)]),
            ("one", "SELECT 1"),
            (
                "one",
                "INSERT OR FAIL INTO t (id, v) SELECT 10 + id, v FROM t UNION ALL SELECT 1, 'x'",
            ),
            ("one", "SELECT 2"),
            ("commit",),
        ],
    ),
    # Nothing to run leaves lastrowid alone; a statement after empty ones still runs.
    "empty statements": (
        {},
        [
            ("one", "-- nothing"),
            ("one", "INSERT INTO t (id, v) VALUES (5, 'x')"),
            ("one", " ; /* */ ;"),
            ("one", "; INSERT INTO t (id, v) VALUES (6, 'y')"),
            ("one", ";WITH r(x) AS (VALUES (7)) INSERT INTO t (id, v) SELECT x, 'z' FROM r"),
            ("one", "SELECT 3"),
        ],
    ),
}


@pytest.mark.parametrize("edge", list(AUTOCOMMIT_EDGES))
def test_transaction_edges_as_in_sqlite3(tmp_path: Path, mode: str, edge: str) -> None:
    """Corners of sqlite3's transaction handling, compared step by step with sqlite3:
    the error, in_transaction, total_changes and the cursor's lastrowid after each
    step, and what is committed once the connection is closed without commit()."""
    kwargs, steps = AUTOCOMMIT_EDGES[edge]
    if "autocommit" in kwargs and sys.version_info < (3, 12):
        pytest.skip("sqlite3's autocommit is Python 3.12's")

    def run(connect: Callable[..., Any], path: str) -> list[Any]:
        setup = sqlite3.connect(path)
        setup.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        setup.commit()
        setup.close()
        c = connect(path, **kwargs)
        cur = c.cursor()
        seen: list[Any] = []
        for step in steps:
            try:
                if step[0] == "many":
                    cur.executemany(step[1], step[2])
                elif step[0] == "one":
                    cur.execute(step[1])
                elif step[0] == "autocommit":
                    c.autocommit = True
                else:
                    getattr(c, step[0])()
                error = None
            except sqlite3.Error as exc:
                error = type(exc).__name__
            seen.append((error, c.in_transaction, c.total_changes, cur.lastrowid))
        c.close()
        check = sqlite3.connect(path)
        seen.append(check.execute("SELECT id, v FROM t ORDER BY id").fetchall())
        check.close()
        return seen

    expected = run(sqlite3.connect, str(tmp_path / "raw.db"))
    ours = run(
        lambda p, **kw: dbapi.connect(p, mode=mode, timeout=WAIT, **kw), str(tmp_path / "ours.db")
    )
    assert ours == expected
