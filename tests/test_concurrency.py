"""Many threads, one store: exact counts, isolation inside a batch, transactions, timeouts."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import (
    SCHEMA,
    WAIT,
    Gate,
    SignallingLock,
    Worker,
    count,
    db_path,
    freeze,
    in_thread,
)

import safestore


def run_threads(n: int, target: Callable[[int], None]) -> list[BaseException]:
    """Start n threads behind a barrier, join them (bounded), return their errors."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def wrapped(i: int) -> None:
        try:
            barrier.wait(WAIT)
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 4)
        assert not t.is_alive(), "a worker thread hung"
    return errors


def test_fifty_writers_and_readers_exact_counts(store: safestore.Store) -> None:
    """50 writer threads x 100 inserts plus 5 readers: every row lands, no error."""
    writers, per = 50, 100
    done = threading.Event()
    seen: list[int] = []

    def work(i: int) -> None:
        if i >= writers:  # a reader: counts only grow, reads never fail
            last = 0
            while not done.is_set():
                n = count(store)
                assert n >= last
                last = n
            seen.append(last)
            return
        ids = []
        for j in range(per):
            res = store.insert("t", {"v": f"{i}-{j}", "n": i})
            ids.append(res.lastrowid)
            # A thread sees its own acknowledged write at once, from its reader.
            if j % 25 == 0:
                assert store.query_one("SELECT n FROM t WHERE v = ?", (f"{i}-{j}",)) == (i,)
        if store.backend == "sqlite":
            # lastrowid is exact even when inserts were merged into one statement.
            got = dict(store.query(f"SELECT id, v FROM t WHERE n = {i}"))
            assert [got[r] for r in ids] == [f"{i}-{j}" for j in range(per)]

    def target(i: int) -> None:
        try:
            work(i)
        finally:
            if i < writers:
                finished.append(i)
                if len(finished) == writers:
                    done.set()

    finished: list[int] = []
    errors = run_threads(writers + 5, target)
    assert not errors, errors[:3]
    assert count(store) == writers * per
    assert store.query_one("SELECT count(DISTINCT v) FROM t") == (writers * per,)
    st = store.stats()
    assert st.writes_accepted == st.writes_committed == writers * per
    assert st.writes_failed == 0
    assert len(seen) == 5


def test_failure_isolated_within_one_batch(store: safestore.Store) -> None:
    """A bad request in a group commit fails only its caller; the rest commit."""
    store.insert("t", {"v": "dup"})
    gate, held = freeze(store)
    futures: list[Future[Any]] = []
    for v in ["a", "dup", "b"]:
        futures.append(store.insert("t", {"v": v}, wait=False))
    futures.append(store.execute("INSERT INTO t (v) VALUES ('c')", wait=False))
    futures.append(store.execute("INSERT INTO nowhere VALUES (1)", wait=False))
    futures.append(store.insert("t", [{"v": "d"}, {"v": "e"}], wait=False))
    futures.append(store.run(lambda conn: 1 / 0, wait=False))
    futures.append(store.insert("t", {"v": "f"}, wait=False))
    gate.release()
    assert held.result(WAIT) == "held"
    outcomes = [f.exception(WAIT) for f in futures]
    assert outcomes[0] is None and outcomes[2] is None and outcomes[3] is None
    assert isinstance(outcomes[1], safestore.IntegrityError)
    assert isinstance(outcomes[4], safestore.DatabaseError)
    assert outcomes[5] is None
    assert isinstance(outcomes[6], ZeroDivisionError)
    assert outcomes[7] is None
    assert sorted(r[0] for r in store.query("SELECT v FROM t")) == [
        "a",
        "b",
        "c",
        "d",
        "dup",
        "e",
        "f",
    ]
    if store.mode == "queue":
        # One group: its five writes that succeeded committed in one transaction.
        assert store.stats().largest_batch >= 5


def test_merged_insert_finds_bad_rows(store: safestore.Store) -> None:
    """Inserts merged into one statement: one bad row fails only its own request."""
    gate, held = freeze(store)
    futs = [store.insert("t", {"v": f"r{i}"}, wait=False) for i in range(20)]
    futs.append(store.insert("t", [{"v": "x"}, {"v": "x"}], wait=False))  # dup in itself
    futs += [store.insert("t", {"v": f"s{i}"}, wait=False) for i in range(20)]
    gate.release()
    held.result(WAIT)
    errors = [f.exception(WAIT) for f in futs]
    assert isinstance(errors[20], safestore.IntegrityError)
    assert all(e is None for i, e in enumerate(errors) if i != 20)
    assert count(store) == 40
    assert store.query("SELECT v FROM t WHERE v = 'x'") == []


@pytest.mark.parametrize("ignores", ["conflict clause", "trigger"])
def test_inserts_the_engine_ignores_report_no_row(tmp_path: Path, mode: str, ignores: str) -> None:
    """SQLite may skip rows without an error (ON CONFLICT IGNORE, RAISE(IGNORE)).
    Inserts merged into one statement must still give each caller its own rowcount and
    the rowid of its own last inserted row, never another caller's."""
    schema = {
        "conflict clause": "CREATE TABLE u (id INTEGER PRIMARY KEY, v TEXT UNIQUE ON CONFLICT IGNORE)",
        "trigger": "CREATE TABLE u (id INTEGER PRIMARY KEY, v TEXT);"
        "CREATE TRIGGER skip BEFORE INSERT ON u WHEN NEW.v = 'skip'"
        " BEGIN SELECT RAISE(IGNORE); END;",
    }[ignores]
    with safestore.Store(db_path(tmp_path, "sqlite"), mode=mode, setup=schema) as store:
        if ignores == "conflict clause":
            store.execute("INSERT INTO u (v) VALUES ('skip')")
        gate, held = freeze(store)
        rows: list[Any] = [
            {"v": "a"},
            {"v": "skip"},
            [{"v": "c"}, {"v": "skip"}],
            [{"v": "skip"}, {"v": "skip"}],
            {"v": "d"},
        ]
        futures = [store.insert("u", r, wait=False) for r in rows]
        gate.release()
        assert held.result(WAIT) == "held"
        results = [f.result(WAIT) for f in futures]
        ids = dict(store.query("SELECT v, id FROM u"))
        assert [r.rowcount for r in results] == [1, 0, 1, 0, 1]
        assert [r.lastrowid for r in results] == [ids["a"], None, ids["c"], None, ids["d"]]
        # And once more, each insert on its own.
        alone = [store.insert("u", r) for r in ({"v": "skip"}, [{"v": "e"}, {"v": "skip"}])]
        e = store.query_one("SELECT id FROM u WHERE v = 'e'")
        assert e is not None
        assert [(r.rowcount, r.lastrowid) for r in alone] == [(0, None), (1, e[0])]


@pytest.mark.parametrize("target", ["without rowid", "view"])
def test_inserts_into_a_table_without_rowids_report_none(
    tmp_path: Path, mode: str, target: str
) -> None:
    """Inserts into a WITHOUT ROWID table, or into a view through an INSTEAD OF trigger,
    leave the connection's last rowid at an earlier insert's, perhaps another caller's:
    their `lastrowid` is None. (SQLite does not count a view's rows as inserted.)"""
    schema = (
        "CREATE TABLE r (id INTEGER PRIMARY KEY, v TEXT);"
        "CREATE TABLE w (k TEXT PRIMARY KEY) WITHOUT ROWID;"
        "CREATE VIEW vw AS SELECT v AS k FROM r;"
        "CREATE TRIGGER vw_insert INSTEAD OF INSERT ON vw"
        " BEGIN INSERT INTO r (v) VALUES (NEW.k); END;"
    )
    name = "w" if target == "without rowid" else "vw"
    counted = 1 if target == "without rowid" else 0
    with safestore.Store(db_path(tmp_path, "sqlite"), mode=mode, setup=schema) as store:
        assert store.insert("r", {"v": "first"}).lastrowid == 1
        gate, held = freeze(store)
        futures = [
            store.insert(name, {"k": "a"}, wait=False),
            store.insert(name, [{"k": "b"}, {"k": "c"}], wait=False),
        ]
        gate.release()
        assert held.result(WAIT) == "held"
        results = [f.result(WAIT) for f in futures]
        results.append(store.insert(name, {"k": "d"}))
        results.append(store.insert(name, [{"k": f"e{i}"} for i in range(300)]))
        results.append(store.execute(f"INSERT INTO {name} (k) VALUES ('f')"))
        results.append(store.execute(f"INSERT OR REPLACE INTO [{name}] (k) VALUES (?)", ("g",)))
        results.append(store.execute(f'INSERT INTO main."{name}" (k) VALUES (?)', ("h",)))
        assert [(r.rowcount, r.lastrowid) for r in results] == [
            (counted, None),
            (2 * counted, None),
            (counted, None),
            (300 * counted, None),
            (counted, None),
            (counted, None),
            (counted, None),
        ]
        assert count(store, "r" if target == "view" else "w") == (308 if target == "view" else 307)
        # Named with its schema, a table that has rowids reports them.
        res = store.execute("INSERT INTO main . r (v) VALUES ('x')")
        assert res.lastrowid == store.query("SELECT max(id) FROM r")[0][0]


def test_insert_rowids_follow_schema_changes(tmp_path: Path, mode: str) -> None:
    """What insert() knows of a table's rowids is forgotten whenever the schema may
    have changed: by execute(), by run(), and by a rolled-back transaction."""
    with safestore.Store(
        db_path(tmp_path, "sqlite"), mode=mode, setup="CREATE TABLE t (k TEXT PRIMARY KEY)"
    ) as store:
        assert store.insert("t", {"k": "a"}).lastrowid == 1
        store.execute("/* gone */ DROP TABLE t")
        store.execute("CREATE TABLE t (k TEXT PRIMARY KEY) WITHOUT ROWID")
        assert store.insert("t", {"k": "a"}).lastrowid is None
        with pytest.raises(ZeroDivisionError), store.transaction() as tx:
            tx.execute("DROP TABLE t")
            tx.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
            assert tx.insert("t", {"k": "b"}).lastrowid == 1
            raise ZeroDivisionError  # rolls the new table back
        assert store.insert("t", {"k": "b"}).lastrowid is None

        def recreate(conn: Any) -> None:
            conn.execute("DROP TABLE t")
            conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")

        store.run(recreate)
        assert store.insert("t", {"k": "c"}).lastrowid == 1


def test_upsert_that_updates_reports_no_rowid(tmp_path: Path, mode: str) -> None:
    """An upsert that updated instead of inserting leaves SQLite's last rowid at an
    earlier insert's, here another caller's in the same group: its lastrowid is None.
    One that inserted reports its row's, and so does a row whose rowid is 0."""
    schema = (
        "CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER); CREATE TABLE o (id INTEGER PRIMARY KEY)"
    )
    upsert = "INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v"
    cte = (
        "WITH r(k, v) AS (VALUES (?, ?)) INSERT INTO kv (k, v) SELECT k, v FROM r WHERE true"
        " ON CONFLICT (k) DO UPDATE SET v = excluded.v"
    )
    with safestore.Store(db_path(tmp_path, "sqlite"), mode=mode, setup=schema) as store:
        store.execute(upsert, ("a", 1))
        gate, held = freeze(store)
        other = store.insert("o", {"id": 999}, wait=False)
        updated = store.execute(upsert, ("a", 2), wait=False)
        gate.release()
        assert held.result(WAIT) == "held"
        assert other.result(WAIT).lastrowid == 999
        assert (updated.result(WAIT).rowcount, updated.result(WAIT).lastrowid) == (1, None)
        assert store.insert("o", {"id": 1000}).lastrowid == 1000
        assert store.execute(cte, ("a", 3)).lastrowid is None
        inserted = store.execute(upsert, ("b", 1))
        assert inserted.lastrowid == store.query("SELECT rowid FROM kv WHERE k = 'b'")[0][0]
        assert store.insert("o", {"id": 0}).lastrowid == 0
        assert store.insert("o", [{"id": 5}, {"id": -7}]).lastrowid == -7


def test_insert_rowids_follow_attached_schema_changes_made_elsewhere(
    tmp_path: Path, mode: str
) -> None:
    """An attached database's table that another connection rebuilds WITHOUT ROWID:
    execute("INSERT INTO aux.w ...") then reports lastrowid None, not a stale rowid
    (the main database's schema version does not see that change)."""
    aux = tmp_path / "aux.db"
    plain = sqlite3.connect(aux)
    plain.execute("CREATE TABLE w (k INTEGER PRIMARY KEY, v TEXT)")
    plain.commit()
    plain.close()
    setup = f"ATTACH DATABASE '{aux}' AS aux; CREATE TABLE t (v TEXT)"
    with safestore.Store(db_path(tmp_path, "sqlite"), mode=mode, setup=setup) as store:
        assert store.execute("INSERT INTO aux.w (v) VALUES ('a')").lastrowid == 1
        assert store.execute("INSERT INTO aux.w (v) VALUES ('b')").lastrowid == 2
        plain = sqlite3.connect(aux)
        plain.executescript(
            "DROP TABLE w; CREATE TABLE w (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID"
        )
        plain.close()
        assert store.insert("t", {"v": "x"}).lastrowid == 1
        res = store.execute("INSERT INTO aux.w (k, v) VALUES ('c', 'c')")
        assert (res.rowcount, res.lastrowid) == (1, None)


def test_insert_rowids_follow_schema_changes_made_elsewhere(tmp_path: Path, mode: str) -> None:
    """Another connection (here a plain sqlite3 one, as another process would) turns a
    view into a table, then gives the table a column named rowid: insert() reports the
    real rowids all along, merged or not."""
    path = db_path(tmp_path, "sqlite")
    schema = (
        "CREATE TABLE r (id INTEGER PRIMARY KEY, v TEXT);"
        "CREATE VIEW x AS SELECT v AS k FROM r;"
        "CREATE TRIGGER xi INSTEAD OF INSERT ON x BEGIN INSERT INTO r (v) VALUES (NEW.k); END;"
    )

    def change(script: str) -> None:
        other = sqlite3.connect(path)
        try:
            other.executescript(script)
        finally:
            other.close()

    def insert_some(values: str) -> list[int | None]:
        if mode == "lock":  # one insert after another
            return [store.insert("x", {"k": v}).lastrowid for v in values]
        # Queue mode: merged into one statement. The writer is held by a transaction
        # block (not by a run() function, after which nothing of the schema is assumed).
        entered, release = threading.Event(), threading.Event()

        def hold() -> None:
            with store.transaction():
                entered.set()
                assert release.wait(WAIT)

        holder = Worker(hold)
        assert entered.wait(WAIT)
        futures = [store.insert("x", {"k": v}, wait=False) for v in values]
        release.set()
        holder.join()
        return [f.result(WAIT).lastrowid for f in futures]

    def rowids(values: str) -> list[int]:
        marks = ",".join("?" * len(values))
        found = store.query(f"SELECT _rowid_ FROM x WHERE k IN ({marks}) ORDER BY k", tuple(values))
        return [r[0] for r in found]

    with safestore.Store(path, mode=mode, setup=schema) as store:
        assert store.insert("x", {"k": "a"}).lastrowid is None  # a view
        change("DROP VIEW x; CREATE TABLE x (k TEXT);")
        assert insert_some("bcd") == rowids("bcd")
        assert store.insert("x", {"k": "e"}).lastrowid == rowids("e")[0]
        change("ALTER TABLE x ADD COLUMN rowid INTEGER DEFAULT 777;")
        assert insert_some("fgh") == rowids("fgh")


def test_merged_inserts_into_a_virtual_table_report_its_rowids(tmp_path: Path, mode: str) -> None:
    """SQLite's RETURNING gives -1 for a virtual table's rowids (FTS5 here): inserts
    into one are not merged that way, and each caller gets its row's real rowid."""
    path = db_path(tmp_path, "sqlite")
    with safestore.Store(
        path, mode=mode, setup="CREATE VIRTUAL TABLE doc USING fts5(body)"
    ) as store:
        assert store.insert("doc", {"body": "first"}).lastrowid == 1
        gate, held = freeze(store)
        futures = [store.insert("doc", {"body": b}, wait=False) for b in ("x", "y", "z")]
        gate.release()
        assert held.result(WAIT) == "held"
        assert [f.result(WAIT).lastrowid for f in futures] == [2, 3, 4]


def test_writes_keep_each_threads_order(store: safestore.Store) -> None:
    """Writes run in the order each thread issued them."""

    def work(i: int) -> None:
        store.insert("t", {"id": 1000 + i, "v": f"t{i}", "n": 0})
        for j in range(1, 30):
            store.execute("UPDATE t SET n = ? WHERE id = ?", (j, 1000 + i), wait=False)
        store.flush()

    assert not run_threads(10, work)
    assert store.query("SELECT DISTINCT n FROM t") == [(29,)]


def test_transaction_commits_atomically(store: safestore.Store) -> None:
    """A transaction's writes are invisible to others until it commits; tx.query sees them."""
    inside = threading.Event()
    checked = threading.Event()
    observed: list[int] = []

    def other() -> None:
        assert inside.wait(WAIT)
        if store.mode == "queue":  # lock mode: the reader waits for the lock instead
            observed.append(count(store))
        checked.set()

    t = threading.Thread(target=other)
    t.start()
    with store.transaction() as tx:
        tx.insert("t", {"v": "a"})
        tx.execute("INSERT INTO t (v) VALUES (?)", ("b",))
        tx.executemany("INSERT INTO t (v) VALUES (?)", [("c",), ("d",)])
        assert tx.query_one("SELECT count(*) FROM t") == (4,)
        inside.set()
        if store.mode == "queue":
            assert checked.wait(WAIT)
    t.join(WAIT)
    assert observed in ([0], [])
    assert count(store) == 4


def test_transaction_rollback_leaves_nothing(store: safestore.Store) -> None:
    """If the block raises, none of it is visible anywhere and the error propagates."""
    with pytest.raises(KeyError), store.transaction() as tx:
        tx.insert("t", {"v": "a"})
        assert tx.query("SELECT v FROM t") == [("a",)]
        raise KeyError("no")
    assert count(store) == 0
    store.insert("t", {"v": "b"})
    assert count(store) == 1


def test_failed_statement_inside_transaction_raises_engine_error(store: safestore.Store) -> None:
    """A failing statement in a block raises the engine's (dual-class) error there."""
    store.insert("t", {"v": "a"})
    with pytest.raises(safestore.IntegrityError), store.transaction() as tx:
        tx.insert("t", {"v": "b"})
        tx.insert("t", {"v": "a"})
    assert store.query("SELECT v FROM t") == [("a",)]


@pytest.mark.parametrize("call", ["insert", "executemany", "execute"])
def test_failed_call_inside_transaction_leaves_none_of_its_rows(
    store: safestore.Store, call: str
) -> None:
    """A tx call that fails part-way (here on its last row, after several statements'
    worth of rows) keeps none of its rows: on SQLite the block goes on and commits
    without them; on DuckDB the failure aborts the block, which commits nothing."""
    store.insert("t", {"v": "taken"})
    values = [f"r{i}" for i in range(1000)] + ["taken"]
    sqlite = store.backend == "sqlite"
    with contextlib.ExitStack() as stack:
        if not sqlite:
            stack.enter_context(pytest.raises(safestore.OperationalError, match="rolled back"))
        with store.transaction() as tx:
            tx.insert("t", {"v": "kept"})
            with pytest.raises(safestore.IntegrityError):
                if call == "insert":
                    tx.insert("t", [{"v": v} for v in values])
                elif call == "executemany":
                    tx.executemany("INSERT INTO t (v) VALUES (?)", [(v,) for v in values])
                else:  # one statement, which SQLite's FAIL leaves half done
                    verb = "INSERT OR FAIL" if sqlite else "INSERT"
                    tx.execute(f"{verb} INTO t (v) VALUES ('x1'), ('x2'), ('taken')")
            if sqlite:
                assert tx.query("SELECT count(*) FROM t") == [(2,)]
    expected = ["kept", "taken"] if sqlite else ["taken"]
    assert sorted(r[0] for r in store.query("SELECT v FROM t")) == expected


def test_own_savepoints_inside_a_transaction_block(tmp_path: Path, mode: str) -> None:
    """SQLite: a block's own SAVEPOINT, ROLLBACK TO and RELEASE work through tx.execute
    (safestore's savepoint around each call must not swallow them)."""
    with safestore.Store(
        db_path(tmp_path, "sqlite"), mode=mode, setup="CREATE TABLE s (v)"
    ) as store:
        with store.transaction() as tx:
            tx.insert("s", {"v": "keep"})
            tx.execute("SAVEPOINT sp")
            tx.insert("s", {"v": "undone"})
            tx.execute("ROLLBACK TO sp")
            tx.insert("s", {"v": "kept too"})
            tx.execute("RELEASE sp")
        assert sorted(r[0] for r in store.query("SELECT v FROM s")) == ["keep", "kept too"]


@pytest.mark.parametrize("fails", ["conflict clause", "trigger"])
def test_insert_the_engine_fails_part_way_inside_transaction_leaves_nothing(
    tmp_path: Path, mode: str, fails: str
) -> None:
    """SQLite's FAIL (a table's ON CONFLICT FAIL, a trigger's RAISE(FAIL)) keeps the rows
    a statement inserted before the failing one: a tx.insert() of one statement must
    still leave none of them in the block."""
    schema = {
        "conflict clause": "CREATE TABLE f (x INTEGER UNIQUE ON CONFLICT FAIL)",
        "trigger": "CREATE TABLE f (x INTEGER);"
        "CREATE TRIGGER no3 BEFORE INSERT ON f WHEN NEW.x = 3"
        " BEGIN SELECT RAISE(FAIL, 'no 3'); END;",
    }[fails]
    with safestore.Store(db_path(tmp_path, "sqlite"), mode=mode, setup=schema) as store:
        with store.transaction() as tx:
            tx.insert("f", {"x": 3 if fails == "conflict clause" else 0})
            with pytest.raises(safestore.DatabaseError):
                tx.insert("f", [{"x": 1}, {"x": 2}, {"x": 3}])
        assert store.query("SELECT x FROM f") == [(3 if fails == "conflict clause" else 0,)]


@pytest.mark.parametrize("clause", ["conflict", "raise"])
def test_transaction_the_engine_rolled_back_commits_nothing(
    tmp_path: Path, mode: str, clause: str
) -> None:
    """A statement that makes SQLite roll back the whole transaction (a ROLLBACK
    conflict clause, RAISE(ROLLBACK)) ends the block's atomicity: later statements and
    the commit are refused instead of autocommitting one by one."""
    schema = (
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);"
        "CREATE TRIGGER refuse BEFORE INSERT ON t WHEN NEW.v = 'refused'"
        " BEGIN SELECT RAISE(ROLLBACK, 'refused'); END;"
        "INSERT INTO t VALUES (1, 'before');"
    )
    failing = {
        "conflict": "INSERT OR ROLLBACK INTO t VALUES (1, 'dup')",
        "raise": "INSERT INTO t VALUES (2, 'refused')",
    }[clause]
    with safestore.Store(db_path(tmp_path, "sqlite"), mode=mode, setup=schema) as store:
        with pytest.raises(safestore.StoreError, match="rolled back by the engine"):
            with store.transaction() as tx:
                tx.execute("INSERT INTO t VALUES (10, 'a')")
                with pytest.raises(safestore.DatabaseError):
                    tx.execute(failing)
                with pytest.raises(safestore.StoreError, match="rolled back by the engine"):
                    tx.execute("INSERT INTO t VALUES (11, 'b')")
                # Leaving the block normally would commit: refused too.
        assert store.query("SELECT v FROM t") == [("before",)]
        store.insert("t", {"v": "after"})
        assert count(store) == 2


@pytest.mark.parametrize("culprit", ["statement", "run-raises", "run-raises-own", "run-swallows"])
def test_group_the_engine_rolled_back_fails_only_the_culprit(
    tmp_path: Path, mode: str, culprit: str
) -> None:
    """A write that makes SQLite roll back the whole group transaction (a ROLLBACK
    conflict clause, RAISE(ROLLBACK), also inside a run() function that swallows the
    error) fails only its own caller: the run() functions and writes around it commit,
    each exactly once, and the culprit's function is not called again."""
    schema = (
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);"
        "CREATE TRIGGER refuse BEFORE INSERT ON t WHEN NEW.v = 'refused'"
        " BEGIN SELECT RAISE(ROLLBACK, 'refused'); END;"
        "INSERT INTO t VALUES (1, 'before');"
    )
    calls: dict[str, int] = {"before": 0, "after": 0, "culprit": 0}

    def innocent(conn: Any, name: str, row_id: int) -> str:
        calls[name] += 1
        conn.execute("INSERT INTO t VALUES (?, ?)", (row_id, name))
        return name

    def guilty(conn: Any) -> str:
        calls["culprit"] += 1
        try:
            conn.execute("INSERT INTO t VALUES (20, 'refused')")
        except sqlite3.DatabaseError:
            if culprit == "run-raises":
                raise
            if culprit == "run-raises-own":
                raise ValueError("the function's own error") from None
        return "swallowed"

    with safestore.Store(db_path(tmp_path, "sqlite"), mode=mode, setup=schema) as store:
        gate, held = freeze(store)  # queue mode: what follows is one group
        futures = {
            "before": store.run(innocent, "before", 10, wait=False),
            "insert": store.insert("t", {"id": 11, "v": "insert"}, wait=False),
            "culprit": (
                store.execute("INSERT OR ROLLBACK INTO t VALUES (1, 'dup')", wait=False)
                if culprit == "statement"
                else store.run(guilty, wait=False)
            ),
            "after": store.run(innocent, "after", 12, wait=False),
            "execute": store.execute("INSERT INTO t VALUES (13, 'execute')", wait=False),
        }
        gate.release()
        assert held.result(WAIT) == "held"
        expected = {
            "statement": safestore.IntegrityError,
            "run-raises": safestore.IntegrityError,
            "run-raises-own": ValueError,
            "run-swallows": safestore.StoreError,
        }[culprit]
        with pytest.raises(expected):
            futures.pop("culprit").result(WAIT)
        assert {k: f.result(WAIT) is not None for k, f in futures.items()} == dict.fromkeys(
            futures, True
        )
        assert store.query("SELECT id, v FROM t ORDER BY id") == [
            (1, "before"),
            (10, "before"),
            (11, "insert"),
            (12, "after"),
            (13, "execute"),
        ]
        assert calls["after"] == 1  # never ran before the rollback: runs once
        assert calls["before"] in (1, 2)  # rolled back with the group, then run again
        assert calls["culprit"] == (0 if culprit == "statement" else 1)


@pytest.mark.parametrize("target", ["file", ":memory:"])
def test_read_inside_own_write_on_a_shared_connection_is_refused(
    make_store: Callable[..., safestore.Store], target: str
) -> None:
    """Where reads share the writer's connection (lock mode, in-memory SQLite), a
    store.query() from inside the thread's own transaction() or run() function would
    run inside that transaction (or wait for it): StoreError at once. Elsewhere the read
    runs on the thread's own read connection and sees committed data only."""
    store = make_store(target=None if target == "file" else ":memory:", setup=SCHEMA)
    shared = store._readers.shared_lock is not None
    store.insert("t", {"v": "committed"})
    with store.transaction() as tx:
        tx.insert("t", {"v": "uncommitted"})
        if shared:
            with pytest.raises(safestore.StoreError, match=r"tx\.query"):
                store.query("SELECT v FROM t")
        else:
            assert store.query("SELECT v FROM t") == [("committed",)]
        assert len(tx.query("SELECT v FROM t")) == 2

    def fn(conn: Any) -> Any:
        return store.query("SELECT count(*) FROM t")

    if shared:
        with pytest.raises(safestore.StoreError, match="run\\(\\) function"):
            store.run(fn)
    else:
        assert store.run(fn) == [(2,)]


def test_others_wait_while_transaction_open(store: safestore.Store) -> None:
    """Other threads' writes wait (queued, not failed) while a transaction is open."""
    started = threading.Event()
    finished = threading.Event()
    results: list[Any] = []

    def writer() -> None:
        started.set()
        results.append(store.insert("t", {"v": "other"}))
        finished.set()

    with store.transaction() as tx:
        tx.insert("t", {"v": "mine"})
        t = threading.Thread(target=writer)
        t.start()
        assert started.wait(WAIT)
        assert not finished.wait(0.3), "a write got through an open transaction"
    assert finished.wait(WAIT)
    t.join(WAIT)
    assert results[0].rowcount == 1
    assert count(store) == 2


def test_store_write_inside_own_transaction_is_refused(store: safestore.Store) -> None:
    """store.insert() from the thread that holds a transaction raises instead of deadlocking."""
    with store.transaction() as tx:
        tx.insert("t", {"v": "a"})
        with pytest.raises(safestore.StoreError, match="tx"):
            store.insert("t", {"v": "b"})
        with pytest.raises(safestore.StoreError, match="nest"), store.transaction():
            pass
    assert count(store) == 1


def test_idle_transaction_is_rolled_back(make_store: Callable[..., safestore.Store]) -> None:
    """Queue mode: a transaction idle past `timeout` is rolled back; others go on."""
    store = make_store(setup=SCHEMA, timeout=0.5)
    if store.mode == "lock":
        pytest.skip("lock mode has no writer to expire a transaction")
    with pytest.raises(safestore.StoreError, match="idle"), store.transaction() as tx:
        tx.insert("t", {"v": "stuck"})
        # Another thread's write can only commit once the stuck block is rolled back.
        futs: list[Future[Any]] = []
        other = threading.Thread(
            target=lambda: futs.append(store.insert("t", {"v": "other"}, wait=False))
        )
        other.start()
        other.join(WAIT)
        assert futs[0].result(WAIT).rowcount == 1
        tx.insert("t", {"v": "late"})
    assert store.query("SELECT v FROM t") == [("other",)]


def test_idle_transaction_nobody_waits_for_is_kept(
    make_store: Callable[..., safestore.Store],
) -> None:
    """Queue mode: past its idle timeout, a transaction that holds up no other write is
    not rolled back: idling harms no one (the expiry exists to free waiting writes)."""
    store = make_store(setup=SCHEMA, timeout=0.3)
    if store.mode == "lock":
        pytest.skip("lock mode has no writer to expire a transaction")
    with store.transaction() as tx:
        tx.insert("t", {"v": "a"})
        threading.Event().wait(0.8)  # idle well past the timeout (the subject here)
        tx.insert("t", {"v": "b"})
    assert sorted(store.query("SELECT v FROM t")) == [("a",), ("b",)]


def test_idle_transaction_gives_way_to_a_waiting_read_in_memory(
    make_store: Callable[..., safestore.Store],
) -> None:
    """In-memory SQLite, queue mode: reads share the writer's connection, so a read
    waiting for it counts as waiting: the idle transaction is rolled back for it."""
    store = make_store(target=":memory:", setup=SCHEMA, timeout=0.5)
    if store.mode == "lock" or store.backend == "duckdb":
        pytest.skip("only in-memory SQLite in queue mode shares the writer's connection")
    store.insert("t", {"v": "before"})
    inside, finish = threading.Event(), threading.Event()

    def owner() -> None:
        with store.transaction() as tx:
            tx.insert("t", {"v": "in the block"})
            inside.set()
            assert finish.wait(WAIT)

    w = Worker(owner)
    assert inside.wait(WAIT)
    threading.Event().wait(0.8)  # idle past its timeout, with nobody waiting: kept
    assert store.query("SELECT v FROM t") == [("before",)]  # waits, then it gives way
    finish.set()
    with pytest.raises(safestore.StoreError, match="idle"):
        w.join()


def test_full_queue_times_out_and_writes_nothing(
    make_store: Callable[..., safestore.Store],
) -> None:
    """With the writer stalled, a caller gets TimeoutError and nothing of its request lands."""
    store = make_store(setup=SCHEMA, timeout=0.3, max_queue=2)
    gate = Gate()
    if store.mode == "queue":
        held = store.run(gate.hold, wait=False)
        assert gate.entered.wait(WAIT)
        queued = [store.insert("t", {"v": f"q{i}"}, wait=False) for i in range(2)]
        with pytest.raises(safestore.TimeoutError, match="queue") as info:
            store.insert("t", {"v": "late"})
        assert isinstance(info.value, TimeoutError)
        gate.release()
        held.result(WAIT)
        for f in queued:
            f.result(WAIT)
    else:
        # Lock mode: a transaction held by another thread stalls writers instead.
        entered, leave = threading.Event(), threading.Event()

        def holder() -> None:
            with store.transaction() as tx:
                tx.insert("t", {"v": "q0"})
                entered.set()
                assert leave.wait(WAIT)

        t = threading.Thread(target=holder)
        t.start()
        assert entered.wait(WAIT)
        with pytest.raises(safestore.TimeoutError):
            store.insert("t", {"v": "late"})
        leave.set()
        t.join(WAIT)
    store.flush()
    assert store.query("SELECT v FROM t WHERE v = 'late'") == []


def test_result_timeout_withdraws_queued_request(
    make_store: Callable[..., safestore.Store],
) -> None:
    """Queue mode: a caller whose result does not come in time withdraws its request."""
    store = make_store(setup=SCHEMA, timeout=0.3)
    if store.mode == "lock":
        pytest.skip("lock mode runs the call on the caller's thread")
    gate = Gate()
    held = store.run(gate.hold, wait=False)
    assert gate.entered.wait(WAIT)
    with pytest.raises(safestore.TimeoutError, match="withdrawn"):
        store.insert("t", {"v": "late"})
    gate.release()
    held.result(WAIT)
    store.flush()
    assert count(store) == 0


def test_shuffled_mixed_workload(store: safestore.Store) -> None:
    """Threads mixing inserts, updates, transactions and reads end in the exact state."""

    def work(i: int) -> None:
        rng = random.Random(i)
        for j in range(20):
            op = rng.choice(["insert", "tx", "read", "nowait"])
            key = f"{i}-{j}"
            if op == "insert":
                store.insert("t", {"v": key, "n": 1})
            elif op == "tx":
                with store.transaction() as tx:
                    tx.insert("t", {"v": key, "n": 0})
                    tx.execute("UPDATE t SET n = 1 WHERE v = ?", (key,))
            elif op == "nowait":
                store.insert("t", {"v": key, "n": 1}, wait=False)
            else:
                store.insert("t", {"v": key, "n": 1})
                assert store.query_one("SELECT n FROM t WHERE v = ?", (key,)) == (1,)

    assert not run_threads(12, work)
    store.flush()
    assert store.query("SELECT count(*), sum(n) FROM t") == [(240, 240)]


def test_reads_do_not_wait_for_queued_writes(make_store: Callable[..., safestore.Store]) -> None:
    """Queue mode on a file: reads run while the writer is stalled."""
    store = make_store(setup=SCHEMA)
    if store.mode == "lock":
        pytest.skip("lock mode serialises reads with writes by design")
    store.insert("t", {"v": "a"})
    gate = Gate()
    held = store.run(gate.hold, wait=False)
    assert gate.entered.wait(WAIT)
    pending = store.insert("t", {"v": "b"}, wait=False)
    assert count(store) == 1  # answered at once, from committed data
    gate.release()
    held.result(WAIT)
    pending.result(WAIT)
    assert count(store) == 2


def test_reader_sees_tables_created_later(store: safestore.Store) -> None:
    """A thread's read connection follows schema changes made by the writer."""
    assert count(store) == 0
    store.execute("CREATE TABLE later (a INTEGER)")
    store.insert("later", {"a": 1})
    assert count(store, "later") == 1
    with pytest.raises(safestore.ReadOnlyError):
        store.query("DELETE FROM later")


def _held_after_a_group_of_nine(store: safestore.Store) -> Gate:
    """Make the writer commit a group of 9 requests (8 inserts and a run() function)
    and stay inside that run() until the returned gate is released."""
    gate1, _ = freeze(store)
    for i in range(8):
        store.insert("t", {"v": f"a{i}"}, wait=False)
    gate2 = Gate()
    store.run(gate2.hold, wait=False)
    gate1.release()
    assert gate2.entered.wait(WAIT)
    return gate2


@pytest.mark.parametrize("mode", ["queue"], indirect=True)
@pytest.mark.parametrize("group_target", [4, None])
def test_writer_stops_waiting_for_stragglers_at_group_target(
    make_store: Callable[..., safestore.Store],
    backend: str,
    group_target: int | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The writer waits for a group to grow back to the previous group's size, but not
    past the backend's `group_target`: with enough requests queued it commits at once."""
    from safestore._backends import _duckdb, _sqlite

    cls = _duckdb.DuckDBBackend if backend == "duckdb" else _sqlite.SQLiteBackend
    monkeypatch.setattr(cls, "group_target", group_target)
    store = make_store(setup=SCHEMA)
    gate2 = _held_after_a_group_of_nine(store)
    for i in range(5):  # fewer than that, but more than 4
        store.insert("t", {"v": f"b{i}"}, wait=False)
    state = store._engine.state
    waits: list[int] = []
    real_wait = state.wait_for_depth

    def recording_wait(target: int, timeout: float, gap: float) -> None:
        waits.append(target)
        real_wait(target, timeout, gap)

    monkeypatch.setattr(state, "wait_for_depth", recording_wait)
    gate2.release()
    store.flush(timeout=WAIT)
    monkeypatch.undo()
    assert count(store) == 13
    if group_target is None:
        assert waits == [9], "the writer did not wait for the group to grow back to 9"
    else:
        assert waits == [], "the writer waited although the group had reached its target"


def test_lingering_writer_is_woken_by_the_request_that_fills_its_group() -> None:
    """_State.wait_for_depth: the caller whose request brings the queue to the depth the
    writer waits for wakes it at once; a wait that times out, or finds no new request
    within its gap, ends early and leaves the state clean."""
    import time

    from safestore._requests import Flush
    from safestore._writer import QueueEngine, _State

    state = _State(max_queue=100)
    real_filled = state.filled
    filled = SignallingLock(real_filled)  # signals that the writer has started waiting
    waiting = filled.acquiring
    state.filled = filled  # type: ignore[assignment]
    woken = threading.Event()

    def writer() -> None:
        state.wait_for_depth(3, WAIT, WAIT)
        woken.set()

    t = threading.Thread(target=writer)
    t.start()
    assert waiting.wait(WAIT)
    enqueue = QueueEngine._enqueue
    for _ in range(2):
        enqueue(None, state, Flush(), float("inf"))  # type: ignore[arg-type]
    assert not woken.wait(0.1), "woken before the group was full"
    enqueue(None, state, Flush(), float("inf"))  # type: ignore[arg-type]
    assert woken.wait(WAIT / 2), "the third request did not wake the writer"
    t.join(WAIT)
    assert state.wanted == 0 and real_filled.locked()

    state.wait_for_depth(10, 0.01, WAIT)  # times out: nobody comes
    assert state.wanted == 0 and real_filled.locked()
    started = time.monotonic()
    state.wait_for_depth(10, WAIT, 0.01)  # nobody comes within the gap: ends early
    assert time.monotonic() - started < WAIT / 2
    assert state.wanted == 0 and real_filled.locked()
    state.wait_for_depth(3, WAIT, WAIT)  # already deep enough: returns at once


@pytest.mark.parametrize("mode", ["queue"], indirect=True)
def test_interrupted_wait_for_a_transaction_gives_it_up(
    make_store: Callable[..., safestore.Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt while transaction() waits for the writer withdraws the
    session: the writer does not hand its connection to nobody while others wait."""
    import time

    from safestore import _requests

    store = make_store(setup=SCHEMA, timeout=10.0)
    gate, held = freeze(store)

    class InterruptedWait(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            raise KeyboardInterrupt

    init = _requests.TxSession.__init__

    def interrupted_session(self: _requests.TxSession, idle_timeout: float) -> None:
        init(self, idle_timeout)
        self.granted = InterruptedWait()

    monkeypatch.setattr(_requests.TxSession, "__init__", interrupted_session)
    with pytest.raises(KeyboardInterrupt), store.transaction():
        pass
    monkeypatch.undo()
    gate.release()
    assert held.result(WAIT) == "held"
    start = time.monotonic()
    in_thread(lambda: store.insert("t", {"v": "after"}))
    assert time.monotonic() - start < 5.0  # not the 10 s idle timeout of a lost session
    assert count(store) == 1


@pytest.mark.parametrize("mode", ["queue"], indirect=True)
def test_interrupted_caller_does_not_hold_up_the_rest_of_its_group(
    make_store: Callable[..., safestore.Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt between queueing a write and waiting for it (the caller never
    waits) must not leave the other callers of its group waiting for a wake-up."""
    import time

    from safestore import _store

    store = make_store(setup=SCHEMA, timeout=10.0)
    gate, held = freeze(store)
    real_wait_result = _store.wait_result

    def interrupted(*args: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(_store, "wait_result", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.insert("t", {"v": "interrupted"})  # queued first: the head of the group
    monkeypatch.setattr(_store, "wait_result", real_wait_result)
    done = threading.Barrier(6)
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            store.insert("t", {"v": f"w{i}"})
            done.wait(WAIT)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=write, args=(i,)) for i in range(5)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + WAIT
    while store.stats().queue_depth < 6:  # all five queued behind the interrupted one
        assert not errors, errors
        assert time.monotonic() < deadline, "the writers never queued"
        threading.Event().wait(0.001)
    gate.release()
    # Far less than the store's timeout: woken in turn, not at their deadline.
    done.wait(WAIT / 10)
    for w in workers:
        w.join(WAIT)
    assert not errors, errors
    assert held.result(WAIT) == "held"
    assert count(store) == 6


@pytest.mark.parametrize("mode", ["queue"], indirect=True)
def test_writer_dying_while_a_group_fills_fails_that_group_at_once(
    make_store: Callable[..., safestore.Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests the writer has taken off the queue but not yet started fail with the
    writer's death at once, not at their timeout, wherever in its loop it dies."""
    store = make_store(setup=SCHEMA)
    gate2 = _held_after_a_group_of_nine(store)  # the next group will wait for 9 requests
    futures = [store.insert("t", {"v": f"b{i}"}, wait=False) for i in range(3)]

    def broken(*args: Any) -> None:
        raise RuntimeError("broken group commit window")

    monkeypatch.setattr(store._engine.state, "wait_for_depth", broken)
    gate2.release()
    for fut in futures:
        with pytest.raises(safestore.StoreError, match="writer thread died"):
            fut.result(WAIT / 3)


def test_interrupt_after_waking_the_writer_leaves_the_queue_count_right() -> None:
    """_enqueue puts the request on the queue before it wakes a lingering writer, so a
    KeyboardInterrupt delivered just after the wake-up cannot leave the depth counting
    a request that was never queued (which would stop lending for good)."""
    from safestore._requests import Flush
    from safestore._writer import QueueEngine, _State

    state = _State(max_queue=100)
    state.wanted = 1  # as if the writer were waiting for one request
    real_filled = state.filled

    class Interrupting:
        def acquire(self, *args: Any, **kwargs: Any) -> bool:
            return real_filled.acquire(*args, **kwargs)

        def release(self) -> None:
            real_filled.release()
            raise KeyboardInterrupt

    state.filled = Interrupting()  # type: ignore[assignment]
    req = Flush()
    with pytest.raises(KeyboardInterrupt):
        QueueEngine._enqueue(None, state, req, float("inf"))  # type: ignore[arg-type]
    assert state.depth == 1
    assert state.queue.get_nowait() is req  # counted and queued: the writer will run it


def _interrupt_once_after(
    monkeypatch: pytest.MonkeyPatch, cls: type, name: str, thread: threading.Thread
) -> None:
    """Make `cls.name` raise KeyboardInterrupt once, in `thread`, just after it returns
    (as if Ctrl-C landed there)."""
    real = getattr(cls, name)
    fired = threading.Event()

    def interrupted(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = real(self, *args, **kwargs)
        if threading.current_thread() is thread and not fired.is_set():
            fired.set()
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(cls, name, interrupted)


@pytest.mark.parametrize("where", ["begin", "deferred BEGIN"])
def test_keyboard_interrupt_in_a_write_leaves_no_transaction_open(
    make_store: Callable[..., safestore.Store], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Ctrl-C just after a write's transaction began (lock mode, or a caller running its
    write on the lent connection) rolls it back: later writes of every thread are not
    refused ("cannot start a transaction within a transaction"), nor acknowledged
    inside a transaction nobody commits (DuckDB), and all of them reach the file."""
    store = make_store(setup=SCHEMA)
    backend = store._engine.backend
    if where == "deferred BEGIN":
        if store.backend != "duckdb":
            pytest.skip("only DuckDB defers BEGIN to the first statement")
        _interrupt_once_after(monkeypatch, type(backend), "_started", threading.main_thread())
    else:
        _interrupt_once_after(monkeypatch, type(backend), "begin", threading.main_thread())
    with pytest.raises(KeyboardInterrupt):
        store.execute("INSERT INTO t (v) VALUES ('interrupted')")
    store.insert("t", {"v": "mine"})
    in_thread(lambda: store.insert("t", {"v": "theirs"}))
    store.insert("t", {"v": "mine again"})
    store.close()
    with safestore.Store(store.path, backend=store.backend, timeout=WAIT) as again:
        rows = {v for (v,) in again.query("SELECT v FROM t")}
    assert (
        {"mine", "theirs", "mine again"} <= rows <= {"interrupted", "mine", "theirs", "mine again"}
    )


def test_keyboard_interrupt_as_a_transaction_begins_ends_it(
    make_store: Callable[..., safestore.Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C between the start of a transaction() and its block: the session is ended
    at once (lock mode: the lock is released; queue mode: the writer does not wait for
    the idle timeout), so other threads' writes go on."""
    store = make_store(setup=SCHEMA)
    _interrupt_once_after(
        monkeypatch, type(store._engine), "begin_session", threading.main_thread()
    )
    with pytest.raises(KeyboardInterrupt), store.transaction() as tx:
        tx.insert("t", {"v": "never"})
    start = time.monotonic()
    in_thread(lambda: store.insert("t", {"v": "theirs"}))
    assert time.monotonic() - start < WAIT / 2  # not the store's timeout, or forever
    store.insert("t", {"v": "mine"})
    assert sorted(store.query("SELECT v FROM t")) == [("mine",), ("theirs",)]


@pytest.mark.parametrize("mode", ["lock"], indirect=True)
def test_keyboard_interrupt_as_lock_mode_grants_a_transaction(
    make_store: Callable[..., safestore.Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C right after lock mode granted a block (inside `Event.set`): the lock is
    released once, by the block's end, and the store goes on (it used to be released
    twice, the second time with RuntimeError hiding the KeyboardInterrupt)."""
    from safestore import _requests

    class InterruptedGrant(threading.Event):
        def set(self) -> None:
            super().set()
            raise KeyboardInterrupt

    init = _requests.TxSession.__init__

    def interrupted_session(self: _requests.TxSession, idle_timeout: float) -> None:
        init(self, idle_timeout)
        self.granted = InterruptedGrant()

    store = make_store(setup=SCHEMA)
    monkeypatch.setattr(_requests.TxSession, "__init__", interrupted_session)
    with pytest.raises(KeyboardInterrupt), store.transaction() as tx:
        tx.insert("t", {"v": "never"})
    monkeypatch.undo()
    in_thread(lambda: store.insert("t", {"v": "theirs"}))
    store.insert("t", {"v": "mine"})
    assert sorted(store.query("SELECT v FROM t")) == [("mine",), ("theirs",)]
