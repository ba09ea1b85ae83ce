"""`Cursor` of the DB-API facade, and how its rows are built.

A cursor never holds an engine cursor between calls: every statement runs to completion
and its rows are fetched while the engine connection is held (the connections are shared
between threads), then `fetchone`/`fetchmany`/`fetchall` hand them out from memory.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ._dbapi_sql import is_empty
from ._dbapi_tx import Outcome
from ._forksafe import gate

if TYPE_CHECKING:
    from .dbapi import Connection

__all__ = ["Cursor"]


class Cursor:
    """A PEP 249 cursor, shaped like `sqlite3.Cursor`.

    Each thread should use its own cursors (PEP 249 threadsafety 2); a cursor shared by
    mistake stays consistent (its state is guarded by a lock) but its results belong to
    whichever thread executed last. Statements run in the transaction of the thread
    that executes them. Blocks like the statement it runs (see `Connection`).
    """

    def __init__(self, connection: Connection) -> None:
        from .dbapi import Connection

        if not isinstance(connection, Connection):
            raise TypeError(
                f"Cursor() needs a safestore.dbapi.Connection, not {type(connection).__name__}"
            )
        self._connection = connection
        #: Rows `fetchmany()` returns by default (PEP 249).
        self.arraysize = 1
        #: Called as ``row_factory(cursor, row)`` for every row fetched; copied from the
        #: connection when the cursor is made, like sqlite3.
        self.row_factory: Any = connection.row_factory
        self._lock = threading.Lock()  # guards every field below
        self._rows: list[Any] = []
        self._pos = 0
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None
        self._closed = False

    # --- attributes -----------------------------------------------------------------

    @property
    def connection(self) -> Connection:
        """The connection this cursor belongs to."""
        return self._connection

    @property
    def description(self) -> Any:
        """One 7-item sequence per result column (name first), or None (PEP 249)."""
        return self._description

    @property
    def rowcount(self) -> int:
        """Rows changed by the last INSERT/UPDATE/DELETE/REPLACE (summed by executemany);
        -1 for other statements and before any (sqlite3's rule)."""
        return self._rowcount

    @property
    def lastrowid(self) -> int | None:
        """Rowid of the last row this thread inserted through the connection (SQLite).

        None before the first statement, and always None on DuckDB (no rowids).
        """
        return self._lastrowid

    # --- executing ------------------------------------------------------------------

    def _check(self) -> None:
        self._connection._check_open()
        if self._closed:
            raise self._connection._misuse("ProgrammingError", "Cannot operate on a closed cursor.")

    def _set(self, out: Outcome | None, lastrowid: int | None) -> None:
        with self._lock:
            if out is None:
                self._rows, self._description, self._rowcount = [], None, -1
            else:
                self._rows, self._description, self._rowcount = (
                    out.rows,
                    out.description,
                    out.rowcount,
                )
            self._pos = 0
            self._lastrowid = lastrowid

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        """Run one statement; returns the cursor. Blocks until it has run (or `timeout`)."""
        self._check()
        try:
            out, lastrowid = self._connection._execute(sql, parameters, many=False)
        except BaseException:
            self._set(None, self._lastrowid)
            raise
        # With nothing to run (only comments or ";"), sqlite3 leaves lastrowid alone.
        self._set(out, self._lastrowid if is_empty(sql) else lastrowid)
        return self

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> Cursor:
        """Run one DML statement for every parameter set; `rowcount` is summed."""
        self._check()
        try:
            out, _ = self._connection._execute(sql, seq_of_parameters, many=True)
        except BaseException:
            self._set(None, self._lastrowid)
            raise
        # sqlite3 leaves lastrowid as it was; the next execute() reports the last row
        # this one inserted (the thread's rowid, see _dbapi_route.execute).
        self._set(out, self._lastrowid)
        return self

    def executescript(self, sql_script: str, /) -> Cursor:
        """Run several statements (sqlite3's executescript, same transaction rules)."""
        self._check()
        # sqlite3 leaves the cursor as it was: rowcount, description, lastrowid and the
        # rows a query before it left to fetch.
        self._connection._executescript(sql_script)
        return self

    # --- fetching -------------------------------------------------------------------

    def _build(self, row: Any) -> Any:
        conn = self._connection
        if conn.text_factory is not str:
            factory = conn.text_factory
            row = tuple(factory(v.encode()) if isinstance(v, str) else v for v in row)
        elif not isinstance(row, tuple):
            row = tuple(row)
        row_factory = self.row_factory
        if row_factory is None:
            return row
        if isinstance(row_factory, type) and issubclass(row_factory, sqlite3.Row):
            return row_factory(_row_cursor(self._description), row)
        return row_factory(self, row)

    def _take(self, n: int | None) -> list[Any]:
        with self._lock:
            end = len(self._rows) if n is None else min(len(self._rows), self._pos + n)
            taken = self._rows[self._pos : end]
            self._pos = end
            if self._pos >= len(self._rows):
                self._rows, self._pos = [], 0  # free the memory of a drained result
        return [self._build(row) for row in taken]

    def fetchone(self) -> Any:
        """The next row, or None when there are no more (also before any execute)."""
        self._check()
        rows = self._take(1)
        return rows[0] if rows else None

    def fetchmany(self, size: int | None = None) -> list[Any]:
        """Up to `size` (default `arraysize`) next rows; all of them if `size` <= 0,
        as sqlite3 does."""
        self._check()
        n = self.arraysize if size is None else size
        return self._take(n if n > 0 else None)

    def fetchall(self) -> list[Any]:
        """All remaining rows."""
        self._check()
        return self._take(None)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        row = self.fetchone()
        if row is None:
            raise StopIteration
        return row

    # --- the rest of PEP 249 --------------------------------------------------------

    def setinputsizes(self, sizes: Any, /) -> None:
        """Does nothing (allowed by PEP 249)."""

    def setoutputsize(self, size: Any, column: Any = None, /) -> None:
        """Does nothing (allowed by PEP 249)."""

    def close(self) -> None:
        """Close the cursor; later use raises ProgrammingError. Closing twice is fine."""
        with self._lock:
            self._closed = True
            self._rows, self._pos = [], 0


# --- sqlite3.Row support ---------------------------------------------------------------
# sqlite3.Row(cursor, row) accepts only a real sqlite3.Cursor and reads just its
# description. A private in-memory connection runs `SELECT NULL AS "name", ...` once per
# column layout to get a cursor whose description carries the same names; Row reads that
# C field without touching the connection again, so these cursors may serve any thread.

_row_lock = threading.Lock()  # guards _row_conn and _row_cursors
_row_conn: sqlite3.Connection | None = None
_row_cursors: dict[tuple[str, ...], sqlite3.Cursor] = {}
_MAX_LAYOUTS = 256


def _row_cursor(description: Any) -> sqlite3.Cursor:
    global _row_conn
    names = tuple(str(col[0]) for col in description or ())
    cur = _row_cursors.get(names)
    if cur is not None:
        return cur
    with _row_lock:
        cur = _row_cursors.get(names)
        if cur is not None:
            return cur
        if len(_row_cursors) >= _MAX_LAYOUTS:
            _row_cursors.clear()
        columns = ", ".join('NULL AS "' + n.replace('"', '""') + '"' for n in names) or "NULL"
        with gate():  # SQLite calls: see safestore._forksafe
            if _row_conn is None:
                _row_conn = sqlite3.connect(":memory:", check_same_thread=False)
            cur = _row_conn.execute(f"SELECT {columns}")
            cur.fetchall()
        _row_cursors[names] = cur
        return cur
