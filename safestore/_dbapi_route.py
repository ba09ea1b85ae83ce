"""Where one statement of a DB-API thread runs: the routing behind `Connection.execute`.

A `Connection` is shared by many threads, but each statement belongs to the thread that
sends it, and that thread's state alone decides its route:

- Transaction control written as SQL (BEGIN, COMMIT, ROLLBACK and their synonyms, see
  _dbapi_sql.py) never reaches an engine: it opens or ends the calling thread's
  `ThreadTx`. Sent to the writer connection, which every thread shares, it would end
  other threads' work too.
- A thread with an open transaction runs everything inside it, on the writer connection
  its session holds, so it sees its own uncommitted writes.
- The transaction mode decides whether a statement outside a transaction opens one
  first (sqlite3's implicit BEGIN): `LEGACY_TRANSACTION_CONTROL` with an
  `isolation_level` before INSERT/UPDATE/DELETE/REPLACE, ``autocommit=False`` before any
  write, ``autocommit=True`` never; SAVEPOINT always does, as in SQLite.
- A read outside a transaction runs on the calling thread's own read connection; if the
  engine finds that it writes after all (a reader refuses writes), it runs again as a
  write: in a new transaction with ``autocommit=False``, else through group commit.
- A write outside a transaction is one write call through the store's group commit.

Concurrency: no route holds a lock while a statement runs; the connection's `_lock` is
taken only to add to `total_changes` afterwards. What a route reads (the thread's
transaction, its last rowid) lives in the connection's `threading.local`, so one
thread's routing never sees another's state. The transaction mode (`autocommit`,
`isolation_level`) is read without a lock, as plain attribute reads.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from ._dbapi_sql import (
    Kind,
    check_control,
    classify,
    engine_text,
    has_returning,
    savepoint_action,
    split_duckdb_script,
    split_script,
)
from ._dbapi_tx import Outcome, ThreadTx, run_duckdb, run_sqlite, run_sqlite_keeping
from .errors import ReadOnlyError, translate

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._dbapi_conn import Connection

__all__ = ["LEGACY_TRANSACTION_CONTROL", "execute", "executescript"]

#: The value of `autocommit` that leaves transaction control to `isolation_level`
#: (the same value as Python 3.12's ``sqlite3.LEGACY_TRANSACTION_CONTROL``).
LEGACY_TRANSACTION_CONTROL = -1


def _runner(conn: Connection) -> Callable[..., Outcome]:
    return run_sqlite if conn._is_sqlite else run_duckdb


def _raise_kept(conn: Connection, out: Outcome) -> Outcome:
    """`out`, unless its statement failed after changing rows that stay (see
    `run_sqlite_keeping`): then count those, and raise the statement's error."""
    if out.error is None:
        return out
    _note(conn, out)
    new = translate(out.error)
    raise new from (None if new is out.error else out.error.__cause__)


def execute(conn: Connection, sql: str, params: Any, *, many: bool) -> tuple[Outcome, int | None]:
    """Run one statement for the calling thread; returns (outcome, cursor lastrowid)."""
    conn._check_open()
    if not isinstance(sql, str):
        raise TypeError(f"execute() argument 1 must be str, not {type(sql).__name__}")
    if many:
        params = list(params)
    kind = classify(sql)
    ttx = conn._thread_tx()
    if kind in (Kind.BEGIN, Kind.COMMIT, Kind.ROLLBACK):
        return _control(conn, kind, ttx, sql), _rowid(conn)
    opened = ttx is None and _implicit_begin(conn, kind, many)
    if opened:
        ttx = _open(conn, kind)
    if ttx is not None:
        runner = run_sqlite_keeping if conn._is_sqlite else run_duckdb
        try:
            out = ttx.run(runner, sql, params, many, write=kind is not Kind.READ)
            out = _raise_kept(conn, out)  # rows kept stay in the transaction, as in sqlite3
        except Exception:
            if opened:
                _end_if_it_does_not_prepare(conn, ttx, sql, params, many)
            if ttx.session.lost is not None and conn._autocommit is False:
                # The engine ended the transaction (INSERT OR ROLLBACK...): as after an
                # SQL ROLLBACK, statements now commit on their own until commit().
                conn._local.sql_ended = True
            raise
        _follow_savepoints(conn, ttx, sql)
    elif kind is Kind.READ and not many:
        read = _read(conn, sql, params)
        if read is not None:
            out = read
        elif conn._always_in_tx():  # the engine says it writes
            out = conn._begin().run(_runner(conn), sql, params, many, write=True)
        else:
            out = _write(conn, sql, params, many)
    else:
        out = _write(conn, sql, params, many)
    _note(conn, out)
    return out, _rowid(conn)


def _open(conn: Connection, kind: Kind) -> ThreadTx:
    """Open the thread's transaction for a statement that needs one."""
    # A SAVEPOINT that opens the transaction in SQLite (not inside the one sqlite3's
    # autocommit=False keeps open, unless an SQL COMMIT ended that) commits it when it
    # is released.
    by_savepoint = kind is Kind.SAVEPOINT and conn._is_sqlite and not conn._always_in_tx()
    ttx = conn._begin()
    if by_savepoint:
        ttx.savepoints = []
    return ttx


def _follow_savepoints(conn: Connection, ttx: ThreadTx, sql: str) -> None:
    """After a statement ran in `ttx`: track SAVEPOINT, RELEASE and ROLLBACK TO, and
    commit when the savepoint that opened the transaction is released, as SQLite does."""
    stack = ttx.savepoints
    if stack is None:
        return
    action = savepoint_action(sql)
    if action is None:
        return
    verb, name = action
    if name is None:  # the engine ran it, so it has a name, which this could not read:
        ttx.savepoints = None  # stop following rather than follow wrongly
        return
    if verb == "savepoint":
        stack.append(name)
        return
    if name not in stack:  # cannot be: the engine ran the statement
        return
    # The most recent savepoint of that name; RELEASE ends it and those after it,
    # ROLLBACK TO ends only those after it.
    at = len(stack) - 1 - stack[::-1].index(name)
    del stack[at + 1 if verb == "rollback" else at :]
    if not stack:
        conn._end(ttx, commit=True)


def _end_if_it_does_not_prepare(
    conn: Connection, ttx: ThreadTx, sql: str, params: Any, many: bool
) -> None:
    """End the transaction a failed statement opened if the statement does not even
    prepare (a typo, a missing table or column, two statements in one).

    sqlite3 prepares a statement before its implicit BEGIN, and binds its parameters
    and runs it after: a statement that does not prepare opens no transaction there,
    one that fails later keeps it. Here the transaction is opened first, as it holds
    the writer the statement runs on; EXPLAIN, given the same parameters, prepares and
    binds the statement again without running it, to tell the two apart. (DuckDB ends
    the transaction for a failed statement anyway: any failure ends it here.)
    """
    if ttx.ended:
        return
    if conn._is_sqlite and len(split_script(sql)) > 1:
        prepares = False  # sqlite3 refuses the text before its BEGIN
    else:
        probe = (params[0] if params else ()) if many else params
        try:
            ttx.run(_runner(conn), f"EXPLAIN {engine_text(sql)}", probe, False, write=False)
            prepares = True
        except Exception as exc:
            # An SQLite error (OperationalError) is the statement's preparation; sqlite3's
            # own errors (ProgrammingError, InterfaceError, OverflowError, ...) are
            # its binding, which comes after its BEGIN.
            prepares = conn._is_sqlite and not isinstance(exc, sqlite3.OperationalError)
    if not prepares:
        conn._end(ttx, commit=False)


def _note(conn: Connection, out: Outcome) -> None:
    """Add a statement's changed rows to the connection's `total_changes`, and its
    inserted rowid to the thread's `lastrowid`."""
    changes = max(out.rowcount, 0) if out.changes is None else out.changes
    if changes:
        with conn._lock:
            conn._changes += changes
    if out.lastrowid is not None:
        conn._local.rowid = out.lastrowid


def _rowid(conn: Connection) -> int | None:
    """sqlite3's cursor.lastrowid: this thread's last inserted rowid (0 before any)."""
    if not conn._is_sqlite:
        return None
    rowid: int = getattr(conn._local, "rowid", 0)
    return rowid


def _implicit_begin(conn: Connection, kind: Kind, many: bool) -> bool:
    if kind is Kind.SAVEPOINT:
        return True  # SAVEPOINT outside a transaction opens one, as in SQLite
    if conn._autocommit is True:
        return False
    if conn._autocommit is False:  # after an SQL COMMIT: each statement on its own
        # (executemany of a statement that looks like a read, WITH ... INSERT, writes)
        return (kind is not Kind.READ or many) and conn._always_in_tx()
    return kind is Kind.DML and conn._isolation_level is not None


def _control(conn: Connection, kind: Kind, ttx: ThreadTx | None, sql: str) -> Outcome:
    """BEGIN / COMMIT / ROLLBACK written as SQL: act on the calling thread's transaction."""
    try:
        check_control(sql, conn._is_sqlite)
    except Exception as exc:
        raise translate(exc) from None
    if ttx is None and conn._always_in_tx():
        # sqlite3 keeps a transaction open (this thread's opens at its first write):
        # BEGIN is one too many; COMMIT and ROLLBACK end it, with nothing in it.
        if kind is Kind.BEGIN:
            raise conn._misuse(
                "OperationalError", "cannot start a transaction within a transaction"
            )
        conn._local.sql_ended = True
        return Outcome([])
    if kind is Kind.BEGIN:
        if ttx is not None:
            raise conn._misuse(
                "OperationalError", "cannot start a transaction within a transaction"
            )
        conn._begin()
    elif ttx is None:
        verb = "commit" if kind is Kind.COMMIT else "rollback"
        raise conn._misuse("OperationalError", f"cannot {verb} - no transaction is active")
    else:
        conn._end(ttx, commit=kind is Kind.COMMIT)
        if conn._autocommit is False:  # until commit() or rollback(), as in sqlite3
            conn._local.sql_ended = True
    return Outcome([])


def _read(conn: Connection, sql: str, params: Any) -> Outcome | None:
    """A read on the calling thread's read connection; None if the statement writes."""
    try:
        rows = conn._store.query(sql, params)
    except ReadOnlyError:
        return None
    return Outcome(rows, getattr(rows, "description", None), -1)


def _write(conn: Connection, sql: str, params: Any, many: bool) -> Outcome:
    """A statement outside any transaction: one write call through group commit."""
    store = conn._store
    if conn._is_sqlite:
        # What it did before failing is committed, as in sqlite3.
        return _raise_kept(conn, store._run_lendable(run_sqlite_keeping, sql, params, many))
    if many:
        return Outcome([], None, store.executemany(sql, params).rowcount)
    if has_returning(sql) or ";" in sql.strip().rstrip(";") or classify(sql) is not Kind.DML:
        out = store._run_lendable(run_duckdb, sql, params, False)
        return out
    # A plain DuckDB INSERT/UPDATE/DELETE joins other threads' writes in one commit.
    return Outcome([], None, store.execute(sql, params).rowcount)


def executescript(conn: Connection, script: str) -> None:
    """sqlite3's executescript: commit this thread's pending transaction (legacy
    mode), then run each statement with no implicit BEGIN; BEGIN/COMMIT in the
    script act on the thread's transaction."""
    conn._check_open()
    if not isinstance(script, str):
        raise TypeError(f"script argument must be str, not {type(script).__name__}")
    if conn._autocommit == LEGACY_TRANSACTION_CONTROL:
        ttx = conn._thread_tx()
        if ttx is not None:
            conn._end(ttx, commit=True)
    saved = conn._autocommit
    statements = split_script(script) if conn._is_sqlite else split_duckdb_script(script)
    for statement in statements:
        kind = classify(statement)
        ttx = conn._thread_tx()
        out: Outcome | None = None
        if kind in (Kind.BEGIN, Kind.COMMIT, Kind.ROLLBACK):
            _control(conn, kind, ttx, statement)
        elif ttx is not None or kind is Kind.SAVEPOINT or (saved is False and conn._always_in_tx()):
            if ttx is None:
                ttx = _open(conn, kind)
            out = ttx.run(_runner(conn), statement, (), False, write=True)
            _follow_savepoints(conn, ttx, statement)
        else:
            out = _read(conn, statement, ()) if kind is Kind.READ else None
            if out is None:
                out = _write(conn, statement, (), False)
        if out is not None:  # total_changes and lastrowid count the script's rows too
            _note(conn, out)
