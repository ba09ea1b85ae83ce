"""What SQLite statements may do: reads cannot write, writes cannot end the transaction.

`SQLiteBackend` (``_sqlite.py``) owns the connections and the group commit; this module
decides what a statement is allowed to do on them, and turns a refusal into the error
the caller should see. It holds no state: every function takes the connection it works
on, and each guard is installed by whichever thread holds that connection at the time.

Reads. A reader connection is opened with ``PRAGMA query_only=1`` and keeps
`_read_authorizer` for its whole life (`_load_schema` installs it). The authorizer sees
every action the engine would take while preparing a statement and denies all but
reading: writes, DDL, transaction control, ATTACH (which VACUUM uses) and pragmas that
change something. Each reader connection belongs to one thread (``_readers.py``), so the
authorizer needs no lock. When a read has to use the writer connection (lock mode, or an
in-memory database, which cannot be opened twice), `_guarded_read` installs the same
guard for the length of that one call and removes it afterwards; the caller holds the
lock that serialises every use of that connection, so no write can run while the guard
is up and no read can run without it. The authorizer also denies the engine's own schema
reads, so a statement prepared while the schema had to be (re)loaded fails with
SQLITE_SCHEMA: the schema is loaded with the authorizer off and the statement tried once
more. A refused statement becomes `ReadOnlyError`, having written nothing.

Writes. Every write request runs inside a transaction safestore opened and will commit
(with the other requests of its group), so nothing may end it early. `execute()` and
`executemany()` text is classified, and transaction control (or a statement naming
safestore's own savepoints) is refused before it runs (`_refuse_transaction_control`). A
`run()` function gets the connection itself, so `_call_run` installs `_run_authorizer`
for exactly the length of the call: the engine then refuses BEGIN, COMMIT, ROLLBACK and
safestore's own savepoints, and the refusal becomes `ProgrammingError`. Only the thread
holding the writer connection calls it.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from .._dbapi_sql import Kind, classify, savepoint_action
from .._requests import Rows, Run
from ..errors import ProgrammingError, ReadOnlyError, translate

# --- reads -------------------------------------------------------------------------

# Authorizer for readers: allow only what a read does. The engine parses the statement
# and reports every action it would take; anything else (writes, DDL, transaction
# control, ATTACH - which VACUUM uses) is denied before it runs.
_READ_ACTIONS = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    getattr(sqlite3, "SQLITE_RECURSIVE", 33),
}
# Pragmas that only report; any argument they take names a table or index.
_INFO_PRAGMAS = {
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
    "collation_list",
    "database_list",
    "function_list",
    "module_list",
    "pragma_list",
    "compile_options",
}
# Pragmas that have side effects even without an argument.
_ACTIVE_PRAGMAS = {"optimize", "wal_checkpoint", "incremental_vacuum", "shrink_memory"}
# Preparing a read of a virtual table or a table-valued function (json_each, FTS5,
# pragma_table_info) has SQLite ask for UPDATE of the schema table's columns (the
# module declares its table as if it were created). Nothing is written by that, and a
# statement of the user's cannot change the schema table (SQLite refuses it unless
# `writable_schema`, a pragma with an argument, which is denied), so it is allowed.
_SCHEMA_TABLES = {"sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema"}


def _read_authorizer(
    action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None
) -> int:
    if action in _READ_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_UPDATE and arg1 is not None and arg1.lower() in _SCHEMA_TABLES:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and arg1 is not None:
        name = arg1.lower()
        if name in _INFO_PRAGMAS or (arg2 is None and name not in _ACTIVE_PRAGMAS):
            return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _load_schema(conn: Any) -> None:
    """Read the schema with the authorizer off (it would deny the schema's own reads)."""
    conn.set_authorizer(None)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
    finally:
        conn.set_authorizer(_read_authorizer)


def _guarded_read(conn: Any, sql: str, params: Any, *, shared: bool) -> list[tuple[Any, ...]]:
    """Run one read-only statement and return all its rows (`SQLiteBackend.read`).

    `shared` is True when `conn` is the writer connection, whose guard is up only
    for this call.
    """
    if shared:
        # The writer connection: make it read-only for the length of this call. The
        # caller holds the lock that serialises every use of this connection.
        conn.execute("PRAGMA query_only=1")
        conn.set_authorizer(_read_authorizer)
    try:
        try:
            return _fetch_all(conn, sql, params)
        except sqlite3.OperationalError as exc:
            # SQLITE_SCHEMA: the schema had to be (re)loaded while the statement was
            # prepared under the authorizer, which denies that; load it, try again.
            if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_SCHEMA:
                raise
            _load_schema(conn)
            return _fetch_all(conn, sql, params)
    except sqlite3.DatabaseError as exc:
        code = getattr(exc, "sqlite_errorcode", None)
        if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_AUTH):
            raise ReadOnlyError(
                f"query() runs read-only statements; this one would change the "
                f"database ({exc}): {sql[:200]!r}"
            ) from translate(exc)
        raise
    finally:
        if shared:
            conn.set_authorizer(None)
            conn.execute("PRAGMA query_only=0")


def _fetch_all(conn: Any, sql: str, params: Any) -> list[tuple[Any, ...]]:
    cur = conn.execute(sql, params)
    try:
        # fetchall() runs the statement to completion, so its implicit read transaction
        # ends here: no snapshot is held between calls.
        return Rows(cur.fetchall(), cur.description)
    finally:
        cur.close()


# --- writes ------------------------------------------------------------------------


def _refuse_transaction_control(sql: str) -> None:
    """execute() must not begin, commit or roll back: every write call is atomic already."""
    if classify(sql) in (Kind.BEGIN, Kind.COMMIT, Kind.ROLLBACK):
        raise ProgrammingError(
            "execute() cannot run BEGIN/COMMIT/ROLLBACK: every write call is already "
            "atomic; use store.transaction() for several statements"
        )
    action = savepoint_action(sql)
    if action is not None:
        name = action[1]
        if (
            name.lower().startswith("safestore_")
            if name is not None
            else "safestore_" in sql.lower()
        ):
            raise ProgrammingError(
                "execute() cannot use safestore's own savepoints (names starting with "
                "safestore_): they keep each write call atomic; name yours otherwise"
            )


def _run_authorizer(
    action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None
) -> int:
    if action == sqlite3.SQLITE_TRANSACTION:
        return sqlite3.SQLITE_DENY
    if action == getattr(sqlite3, "SQLITE_SAVEPOINT", 32) and (arg2 or "").startswith("safestore_"):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _call_run(conn: Any, request: Run) -> Any:
    """Call a run() function with transaction control refused (`SQLiteBackend.apply`)."""
    # While fn runs, the engine refuses COMMIT/ROLLBACK/BEGIN (conn.commit()
    # included) and safestore's own savepoints: fn must not end the group's
    # transaction under the other requests in it. Setting an authorizer expires
    # prepared statements, so this costs a re-prepare, only around run().
    conn.set_authorizer(_run_authorizer)
    try:
        return request.call(conn)
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_AUTH:
            raise ProgrammingError(
                "a run() function cannot begin, commit or roll back the transaction "
                "(safestore commits it); use savepoints of your own if you need them"
            ) from translate(exc)
        raise
    finally:
        conn.set_authorizer(None)
