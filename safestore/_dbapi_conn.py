"""`Connection` of the DB-API facade: per-thread transactions over one `Store`.

See the docstring of `safestore.dbapi` for the model. This module holds the
connection's public surface and its state: the attributes, `commit`/`rollback`, the
set of open thread transactions, and `close`. Where each statement runs is decided in
_dbapi_route.py; how one thread's transaction is held and ended is in _dbapi_tx.py.

Concurrency: the connection's state shared between threads (closed or not, the open
transactions, warnings waiting to be logged, `total_changes`) is guarded by one lock,
never held while a statement runs. Each thread's own state (its transaction, its last
rowid) lives in a `threading.local`: only that thread runs statements in its
transaction; another thread ends it only by `close()` (see `ThreadTx.abort`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

from . import _dbapi_route, errors
from ._dbapi_cursor import Cursor
from ._dbapi_route import LEGACY_TRANSACTION_CONTROL
from ._dbapi_tx import Outcome, ThreadTx, connection_dropped, expired_error
from ._store import Store
from .errors import (
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    ReadOnlyError,
    StoreClosedError,
    StoreError,
    Warning,
)

__all__ = ["LEGACY_TRANSACTION_CONTROL", "Connection", "live"]

log = logging.getLogger("safestore")

_ISOLATION_LEVELS = ("", "DEFERRED", "IMMEDIATE", "EXCLUSIVE")


def _check_isolation_level(value: object) -> str | None:
    """`value` checked and, as sqlite3 keeps it, in capitals."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"isolation_level must be str or None, not {type(value).__name__}")
    if value.upper() not in _ISOLATION_LEVELS:
        raise ValueError(
            "isolation_level string must be '', 'DEFERRED', 'IMMEDIATE', or 'EXCLUSIVE'"
        )
    return value.upper()


def _check_autocommit(value: object) -> None:
    if value is True or value is False:
        return
    if type(value) is int and value == LEGACY_TRANSACTION_CONTROL:
        return
    raise ValueError(
        "autocommit must be True, False, or safestore.dbapi.LEGACY_TRANSACTION_CONTROL"
    )


class Connection:
    """A DB-API connection shared safely by any number of threads. Made by `connect()`.

    Thread-safe: every method may be called from any thread, and acts on the calling
    thread's transaction. Statements block until they have run, at most `timeout`
    (also while another thread's transaction holds the writer).
    """

    Warning = Warning
    Error = Error
    InterfaceError = InterfaceError
    DatabaseError = DatabaseError
    DataError = DataError
    OperationalError = OperationalError
    IntegrityError = IntegrityError
    InternalError = InternalError
    ProgrammingError = ProgrammingError
    NotSupportedError = NotSupportedError

    def __init__(
        self,
        store: Store,
        *,
        isolation_level: str | None = "",
        autocommit: bool | int = LEGACY_TRANSACTION_CONTROL,
        _owns: bool = True,
    ) -> None:
        _check_autocommit(autocommit)
        self._store = store
        self._owns = _owns
        self._is_sqlite = store.backend == "sqlite"
        self._isolation_level = _check_isolation_level(isolation_level)
        self._autocommit: bool | int = autocommit
        #: Called as ``row_factory(cursor, row)``; `sqlite3.Row` works. Copied to new cursors.
        self.row_factory: Any = None
        #: What TEXT values become: `str` (default), `bytes`, or a callable given bytes.
        self.text_factory: Any = str
        # Guards _closed, _txs, _notes and _changes. Never held while a statement runs.
        self._lock = threading.Lock()
        self._closed = False
        self._store_closed = False
        self._txs: set[ThreadTx] = set()  # every open thread transaction
        self._notes: list[str] = []  # warnings from dying threads, logged by a live one
        self._changes = 0
        self._local = threading.local()  # .tx: ThreadTx | None, .rowid, .sql_ended
        # Dropped without close() (sqlite3 then rolls back as it frees the connection).
        self._dropped = weakref.finalize(self, connection_dropped, self._txs)
        self._dropped.atexit = False  # exit: _close_all_at_exit closes live connections
        live.add(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<safestore.dbapi.Connection {self._store.backend} {self._store.path!r} {state}>"

    # --- attributes -----------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The `Store` underneath (its writer, readers and group commit)."""
        return self._store

    @property
    def isolation_level(self) -> str | None:
        """sqlite3's legacy transaction control: ``""``/``"DEFERRED"``/... or None.

        Setting None commits the calling thread's open transaction (as sqlite3 does).
        """
        return self._isolation_level

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        level = _check_isolation_level(value)
        if level is None:  # commit() does what the autocommit mode says (3.12+ sqlite3)
            self.commit()
        self._isolation_level = level

    @property
    def autocommit(self) -> bool | int:
        """Python 3.12's transaction control attribute.

        `LEGACY_TRANSACTION_CONTROL` (default): `isolation_level` decides. True: every
        statement commits on its own; `commit()`/`rollback()` do nothing. False: every
        write runs in a transaction that only `commit()`/`rollback()` end. Setting True
        commits the calling thread's open transaction.
        """
        return self._autocommit

    @autocommit.setter
    def autocommit(self, value: bool | int) -> None:
        _check_autocommit(value)
        if value is True:  # commits even when it was True already, as sqlite3 does
            ttx = self._thread_tx()
            if ttx is not None:
                self._end(ttx, commit=True)
        if value is False:  # sqlite3 opens a transaction
            self._local.sql_ended = False
        self._autocommit = value

    @property
    def in_transaction(self) -> bool:
        """Whether the calling thread has an open transaction on this connection.

        With ``autocommit=False`` always True, as in sqlite3 (the transaction itself
        opens at the thread's first write).
        """
        self._check_open()
        if self._always_in_tx():
            return True
        ttx: ThreadTx | None = getattr(self._local, "tx", None)
        return ttx is not None and not ttx.ended and not ttx.expired

    def _always_in_tx(self) -> bool:
        """sqlite3 3.12's ``autocommit=False`` keeps a transaction open at all times,
        until SQL COMMIT or ROLLBACK ends it; then statements commit on their own until
        `commit()` or `rollback()` opens the next (`sql_ended`, per thread)."""
        return self._autocommit is False and not getattr(self._local, "sql_ended", False)

    @property
    def total_changes(self) -> int:
        """Rows changed through this connection, by every thread, since it opened."""
        self._check_open()
        return self._changes

    # --- errors ---------------------------------------------------------------------

    def _misuse(self, name: str, message: str) -> Exception:
        """An error for a misuse: sqlite3's own class (also safestore's) on SQLite."""
        if self._is_sqlite:
            return errors.dual_class(getattr(sqlite3, name))(message)  # type: ignore[return-value]
        cls: type[Exception] = getattr(errors, name)
        return cls(message)

    def _check_open(self) -> None:
        if self._closed:
            # Lock mode: this thread's transaction could not be ended by close() from
            # another thread (the store's lock is this thread's); end it now.
            ttx = getattr(self._local, "tx", None)
            if ttx is not None:
                self._local.tx = None
                ttx.rollback()
            raise self._misuse("ProgrammingError", "Cannot operate on a closed database.")
        if self._store._forked():
            raise StoreError(
                "this connection was opened in the parent process and cannot be used "
                "after fork(); connect again in the child"
            )
        if self._notes:
            self._flush_notes()

    def _flush_notes(self) -> None:
        with self._lock:
            notes, self._notes = self._notes, []
        for note in notes:
            log.warning("%s", note)

    # --- cursors and shortcuts ------------------------------------------------------

    def cursor(self, factory: Callable[[Connection], Cursor] | None = None) -> Cursor:
        """A new cursor (PEP 249). `factory` may be a `Cursor` subclass."""
        self._check_open()
        cur = (factory or Cursor)(self)
        if not isinstance(cur, Cursor):
            raise TypeError("factory must return a safestore.dbapi.Cursor")
        return cur

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        """sqlite3 shortcut: a new cursor's `execute`."""
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> Cursor:
        """sqlite3 shortcut: a new cursor's `executemany`."""
        return self.cursor().executemany(sql, seq_of_parameters)

    def executescript(self, sql_script: str, /) -> Cursor:
        """sqlite3 shortcut: a new cursor's `executescript`."""
        return self.cursor().executescript(sql_script)

    # --- transactions ---------------------------------------------------------------

    def commit(self) -> None:
        """Commit the calling thread's transaction; nothing else. No-op without one.

        Raises StoreError if the writer rolled it back for idling past `timeout`.
        """
        self._check_open()
        if self._autocommit is True:
            return
        self._local.sql_ended = False  # autocommit=False: a transaction is open again
        ttx = self._thread_tx(raise_expired=False)
        if ttx is not None:
            self._end(ttx, commit=True)

    def rollback(self) -> None:
        """Roll back the calling thread's transaction; nothing else. No-op without one."""
        self._check_open()
        if self._autocommit is True:
            return
        self._local.sql_ended = False  # autocommit=False: a transaction is open again
        ttx = self._thread_tx(raise_expired=False)
        if ttx is not None:
            self._end(ttx, commit=False)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> Literal[False]:
        """Commit the calling thread's work, or roll it back if the block raised.

        Does not close the connection (as in sqlite3).
        """
        if exc_type is None:
            self.commit()
        else:
            self.rollback()
        return False

    def _thread_tx(self, *, raise_expired: bool = True) -> ThreadTx | None:
        """The calling thread's open transaction, or None.

        A transaction the writer expired is cleared here; with `raise_expired` the
        caller learns that its work was rolled back.
        """
        ttx: ThreadTx | None = getattr(self._local, "tx", None)
        if ttx is None:
            return None
        if ttx.expired or ttx.ended:
            self._local.tx = None
            expired = ttx.expired
            ttx.rollback()  # release the session (idempotent)
            if expired and raise_expired:
                raise expired_error(ttx)
            if expired:
                # commit()/rollback(): still report the loss on commit.
                return ttx
            return None
        return ttx

    def _begin(self) -> ThreadTx:
        """Open the calling thread's transaction on the writer (waits at most `timeout`)."""
        self._store._check_usable()
        if self._store._read_only:
            raise ReadOnlyError(f"the store {self._store.path!r} was opened read-only")
        ttx = ThreadTx(self._store, self._on_tx_end)
        with self._lock:
            closed = self._closed
            if not closed:
                self._txs.add(ttx)
        if closed:  # close() ran meanwhile
            ttx.rollback()
            raise self._misuse("ProgrammingError", "Cannot operate on a closed database.")
        ttx.watch()
        self._local.tx = ttx
        return ttx

    def _end(self, ttx: ThreadTx, *, commit: bool) -> None:
        self._local.tx = None
        if ttx.expired:
            ttx.rollback()
            if commit:
                raise expired_error(ttx)
            return
        if commit:
            ttx.commit()
        else:
            ttx.rollback()

    def _on_tx_end(self, ttx: ThreadTx) -> None:
        """Called once when any thread transaction ends (in whichever thread ends it)."""
        with self._lock:
            self._txs.discard(ttx)
            if ttx.doomed is not None:
                self._notes.append(f"rolled back a transaction on {self!r}: {ttx.doomed}")
            close_store = self._closed and not self._txs and self._owns and not self._store_closed
            if close_store:
                self._store_closed = True
        if close_store:
            # Possibly in a dying owner thread (its finalizer): closing the store joins
            # the writer, which is fine from there too.
            self._close_store()

    # --- running statements (routed in _dbapi_route.py) -----------------------------

    def _execute(self, sql: str, params: Any, *, many: bool) -> tuple[Outcome, int | None]:
        """Run one statement for the calling thread (the cursors' entry point)."""
        try:
            return _dbapi_route.execute(self, sql, params, many=many)
        except StoreClosedError as exc:
            # close() from another thread while this statement ran (it interrupts
            # reads) or waited: the error sqlite3 gives for a closed connection.
            raise self._misuse("ProgrammingError", "Cannot operate on a closed database.") from exc

    def _executescript(self, script: str) -> None:
        """Run a script for the calling thread (the cursors' entry point)."""
        _dbapi_route.executescript(self, script)

    # --- sqlite3 extras ---------------------------------------------------------------

    def iterdump(self) -> Iterator[str]:
        """SQL text that recreates the database (SQLite only), as the calling thread
        sees it: the committed state, plus its own open transaction's changes."""
        self._check_open()
        if not self._is_sqlite:
            raise NotSupportedError("iterdump() is for SQLite; DuckDB has EXPORT DATABASE")
        ttx = self._thread_tx()
        if ttx is not None:  # the store's writer waits for this transaction: dump in it
            dumped = ttx.run(lambda conn: Outcome(list(conn.iterdump())), write=False)
            return iter(dumped.rows)
        lines: list[str] = self._store.run(lambda conn: list(conn.iterdump()))
        return iter(lines)

    def interrupt(self) -> None:
        """Not supported: raises NotSupportedError (statements are bounded by `timeout`)."""
        raise self._misuse(
            "NotSupportedError",
            "interrupt() is not supported by safestore connections: every call is bounded "
            "by the connection's timeout",
        )

    # --- closing --------------------------------------------------------------------

    def close(self) -> None:
        """Roll back every thread's open transaction and close the store (if owned).

        Idempotent. Later use raises ProgrammingError, from any thread. The calling
        thread's own transaction is rolled back silently (as sqlite3 does); other
        threads' are rolled back with a logged warning. In lock mode another thread's
        transaction can only end in that thread (it owns the store's lock): it is rolled
        back at its next call or when it ends, and the store closes then.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            txs = list(self._txs)
        self._dropped.detach()  # ends them itself, below
        live.discard(self)
        mine = getattr(self._local, "tx", None)
        self._local.tx = None
        for ttx in txs:
            if ttx is mine:
                ttx.rollback()
            else:
                ttx.abort("the connection was closed by another thread")
        if self._notes:
            self._flush_notes()
        with self._lock:
            close_store = not self._txs and self._owns and not self._store_closed
            if close_store:
                self._store_closed = True
        if close_store:
            self._close_store()

    def _close_store(self) -> None:
        try:
            self._store.close()
        except Exception:
            log.exception("closing the store of %r failed", self)


def _unsupported(name: str, why: str) -> Callable[..., Any]:
    def method(self: Connection, *args: Any, **kwargs: Any) -> Any:
        raise self._misuse(
            "NotSupportedError",
            f"{name}() is not supported by safestore connections: {why}",
        )

    method.__name__ = name
    method.__doc__ = f"Not supported: raises NotSupportedError ({why})."
    return method


_PER_CONNECTION = (
    "each thread reads on its own engine connection, so it would have to be installed on "
    "all of them; use setup= for per-database SQL"
)
for _name in (
    "create_function",
    "create_aggregate",
    "create_window_function",
    "create_collation",
    "set_authorizer",
    "set_progress_handler",
    "set_trace_callback",
    "enable_load_extension",
    "load_extension",
    "setlimit",
    "getlimit",
    "setconfig",
    "getconfig",
):
    setattr(Connection, _name, _unsupported(_name, _PER_CONNECTION))
for _name in ("backup", "blobopen", "serialize", "deserialize"):
    setattr(Connection, _name, _unsupported(_name, "it needs exclusive use of one connection"))

Connection.__module__ = "safestore.dbapi"
Cursor.__module__ = "safestore.dbapi"

# Every open connection, weakly, so the exit hook can roll back open transactions.
live: weakref.WeakSet[Connection] = weakref.WeakSet()
