"""Engine errors are dual-class; bad input gets a clear error in its own thread."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
from tests.conftest import count

import safestore
from safestore.errors import translate

SQLITE_CLASSES = [
    (sqlite3.Warning, safestore.Warning),
    (sqlite3.Error, safestore.Error),
    (sqlite3.InterfaceError, safestore.InterfaceError),
    (sqlite3.DatabaseError, safestore.DatabaseError),
    (sqlite3.DataError, safestore.DataError),
    (sqlite3.OperationalError, safestore.OperationalError),
    (sqlite3.IntegrityError, safestore.IntegrityError),
    (sqlite3.InternalError, safestore.InternalError),
    (sqlite3.ProgrammingError, safestore.ProgrammingError),
    (sqlite3.NotSupportedError, safestore.NotSupportedError),
]


def test_every_sqlite_error_class_is_mapped() -> None:
    """Every sqlite3 exception class translates to one caught as both classes."""
    exported = {
        obj
        for obj in vars(sqlite3).values()
        if isinstance(obj, type) and issubclass(obj, BaseException)
    }
    assert exported == {engine for engine, _ in SQLITE_CLASSES}
    for engine_cls, safe_cls in SQLITE_CLASSES:
        original = engine_cls("boom")
        new = translate(original)
        assert isinstance(new, engine_cls)
        assert isinstance(new, safe_cls)
        assert new.args == ("boom",)
        assert type(new).__name__ == engine_cls.__name__


def test_translate_keeps_attributes_and_passes_others() -> None:
    """Engine attributes survive translation; non-engine errors pass through unchanged."""
    exc = sqlite3.IntegrityError("UNIQUE constraint failed: t.v")
    exc.sqlite_errorcode = 2067  # type: ignore[attr-defined]
    new = translate(exc)
    assert new.sqlite_errorcode == 2067  # type: ignore[attr-defined]
    other = ValueError("x")
    assert translate(other) is other


def test_error_tree() -> None:
    """The error tree is PEP 249's with safestore's own conditions under StoreError."""
    assert issubclass(safestore.TimeoutError, TimeoutError)
    assert issubclass(safestore.TimeoutError, safestore.StoreError)
    assert issubclass(safestore.StoreClosedError, safestore.StoreError)
    assert issubclass(safestore.ReadOnlyError, safestore.StoreError)
    assert issubclass(safestore.StoreError, safestore.Error)
    assert issubclass(safestore.IntegrityError, safestore.DatabaseError)
    assert not issubclass(safestore.Warning, safestore.Error)


def test_integrity_error_caught_both_ways(store: safestore.Store) -> None:
    """A constraint violation is catchable as the engine's class and as safestore's."""
    store.insert("t", {"v": "a"})
    with pytest.raises(safestore.IntegrityError) as info:
        store.insert("t", {"v": "a"})
    if store.backend == "sqlite":
        assert isinstance(info.value, sqlite3.IntegrityError)
    expected = safestore.OperationalError if store.backend == "sqlite" else safestore.DatabaseError
    with pytest.raises(expected):
        store.query("SELECT * FROM missing_table")


@pytest.mark.parametrize(
    "name",
    ['we"ird', "sp ace", "ünïcødé", "select", "x'; DROP TABLE t; --", "a.b", "[brackets]"],
)
def test_hostile_identifiers_are_quoted(store: safestore.Store, name: str) -> None:
    """Any table or column name is quoted; it can never break out of the statement."""
    quoted = '"' + name.replace('"', '""') + '"'
    store.execute(f"CREATE TABLE {quoted} ({quoted} INTEGER)")
    store.insert(name, {name: 7})
    assert store.query(f"SELECT {quoted} FROM {quoted}") == [(7,)]
    assert count(store) == 0  # t untouched


@pytest.mark.parametrize(
    ("table", "rows", "error", "match"),
    [
        ("", {"v": 1}, safestore.ProgrammingError, "empty"),
        ("t\x00x", {"v": 1}, safestore.ProgrammingError, "NUL"),
        (5, {"v": 1}, TypeError, "table name"),
        ("t", [], safestore.ProgrammingError, "no rows"),
        ("t", {}, safestore.ProgrammingError, "no columns"),
        ("t", "v=1", TypeError, "mapping"),
        ("t", [{"v": "a"}, ("b",)], TypeError, "row 1"),
        ("t", [{"v": "a"}, {"n": 1}], safestore.ProgrammingError, "same keys"),
        ("t", [{"v": "a"}, {"v": "b", "n": 1}], safestore.ProgrammingError, "same keys"),
        # Same number of keys, other names, further down: the row is named.
        ("t", [{"v": "a", "n": 1}] * 3 + [{"v": "b", "x": 1}], safestore.ProgrammingError, "row 3"),
        ("t", [{"v": "a"}, {"v": "b"}, ["c"]], TypeError, "row 2"),
        ("t", {1: "a"}, TypeError, "column name"),
        ("t", {"v\x00": "a"}, safestore.ProgrammingError, "NUL"),
        ("t", {"v": "\ud800"}, safestore.DatabaseError, ""),
    ],
)
def test_bad_insert_input(
    store: safestore.Store, table: Any, rows: Any, error: type, match: str
) -> None:
    """Bad insert() input raises a clear error, writes nothing, leaves the store usable."""
    with pytest.raises((error, UnicodeEncodeError)) as info:  # type: ignore[arg-type]
        store.insert(table, rows)
    if match:
        assert match in str(info.value)
    assert count(store) == 0
    store.insert("t", {"v": "fine"})
    assert count(store) == 1


def test_unsupported_value_type_fails_only_its_caller(store: safestore.Store) -> None:
    """A value the engine cannot bind fails its own call only."""
    with pytest.raises((safestore.Error, TypeError)):
        store.insert("t", {"v": object()})
    store.insert("t", {"v": "ok"})
    assert count(store) == 1


@pytest.mark.parametrize(
    ("column", "value", "builtin"),
    [("n", 2**70, OverflowError), ("v", "\ud800", UnicodeEncodeError)],
    ids=["int beyond 64 bits", "lone surrogate"],
)
def test_a_value_the_engine_cannot_bind_is_a_safestore_error(
    store: safestore.Store, column: str, value: Any, builtin: type[Exception]
) -> None:
    """sqlite3 reports these with builtin classes; safestore's come out as
    `safestore.DataError` too (and still as the builtin class, for sqlite3 code),
    from every write call, a transaction and a read. DuckDB uses its own classes."""
    sql = f"INSERT INTO t ({column}) VALUES (?)"
    calls = [
        lambda: store.insert("t", {column: value}),
        lambda: store.insert("t", {column: value}, wait=False).result(),
        lambda: store.insert("t", [{column: value}, {column: value}]),
        lambda: store.execute(sql, (value,)),
        lambda: store.executemany(sql, [(value,)]),
    ]
    for call in calls:
        with pytest.raises(safestore.Error) as info:
            call()
        if store.backend == "sqlite":
            assert isinstance(info.value, builtin) and isinstance(info.value, safestore.DataError)
    with pytest.raises(safestore.Error), store.transaction() as tx:
        tx.insert("t", {column: value})
    if store.backend == "sqlite":
        with pytest.raises(builtin) as info:
            store.query("SELECT ?", (value,))
        assert isinstance(info.value, safestore.DataError)
    store.insert("t", {"v": "ok"})
    assert count(store) == 1


def test_binding_error_after_a_rowid_probe_is_the_binding_error(
    make_store: Callable[..., safestore.Store], backend: str
) -> None:
    """safestore learns whether a table has rowids from a statement that fails on a
    WITHOUT ROWID table; sqlite3 would report that failure in place of a later
    binding error of a cached statement. The caller gets the binding error."""
    if backend != "sqlite":
        pytest.skip("SQLite's rowid probe")
    store = make_store(setup="CREATE TABLE w (a INTEGER PRIMARY KEY, b TEXT) WITHOUT ROWID")
    store.insert("w", {"b": "x", "a": 1})  # sqlite3 caches this INSERT
    for i, (value, builtin) in enumerate(
        [({"k": 1}, sqlite3.ProgrammingError), (10**20, OverflowError)]
    ):
        store.execute(f"CREATE TABLE other{i} (x)")  # safestore forgets what it knew of w
        with pytest.raises(builtin):
            store.insert("w", {"b": value, "a": 2})
    assert store.query("SELECT a FROM w") == [(1,)]


def test_wrong_parameter_count(store: safestore.Store) -> None:
    """A wrong number of parameters is the engine's ProgrammingError-like error."""
    with pytest.raises(safestore.DatabaseError):
        store.execute("INSERT INTO t (v, n) VALUES (?, ?)", ("only one",))
    with pytest.raises(safestore.DatabaseError):
        store.query("SELECT ?", (1, 2))
    assert count(store) == 0


def test_huge_and_binary_values_round_trip(store: safestore.Store) -> None:
    """Large values and NUL bytes in text and blobs survive."""
    big = "x" * 2_000_000
    store.insert("t", {"v": big, "n": 1})
    store.insert("t", {"v": "a\x00b", "n": 2})
    assert store.query_one("SELECT length(v) FROM t WHERE n = 1") == (2_000_000,)
    assert store.query_one("SELECT v FROM t WHERE n = 2") == ("a\x00b",)


def test_non_string_sql_is_a_type_error(store: safestore.Store) -> None:
    """sql must be a str."""
    with pytest.raises(TypeError, match="sql"):
        store.execute(b"DELETE FROM t")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sql"):
        store.query(None)  # type: ignore[arg-type]


def test_transaction_checks_sql_like_the_store(store: safestore.Store) -> None:
    """tx.execute, tx.executemany and tx.query refuse bad SQL text with the same errors
    as Store.execute, before anything reaches the engine; the block goes on."""
    with store.transaction() as tx:
        with pytest.raises(TypeError, match="sql must be a str"):
            tx.execute(None)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="sql must be a str"):
            tx.executemany(b"DELETE FROM t", [])  # type: ignore[arg-type]
        with pytest.raises(safestore.ProgrammingError, match="not valid UTF-8"):
            tx.query("SELECT '\ud800'")
        tx.insert("t", {"v": "kept", "n": 1})
    assert store.query("SELECT v FROM t") == [("kept",)]
