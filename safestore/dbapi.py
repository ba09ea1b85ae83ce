"""Drop-in DB-API 2.0 (PEP 249): ``safestore.connect()``, shaped like ``sqlite3.connect()``.

One `Connection` may be shared by any number of threads, and each thread sees it as if
it had its own sqlite3 connection to the database:

- A thread's first INSERT/UPDATE/DELETE/REPLACE (sqlite3's implicit BEGIN), or its
  explicit BEGIN, opens *that thread's* transaction: a transaction session on the store's
  writer (see _dbapi_tx.py). The thread's later statements, on any cursor, run inside it
  and see its own writes; no other thread sees them. ``commit()`` and ``rollback()``
  end exactly the calling thread's transaction. Meanwhile other threads' writes wait
  (queued, at most `timeout`), and their reads see the last committed state (queue mode).
- Statements outside a transaction (``isolation_level=None``, ``autocommit=True``, DDL
  in sqlite3's legacy mode) go through the store's group commit; reads outside a
  transaction run on the calling thread's own read connection.
- A transaction whose thread ends is rolled back (with a logged warning); one left idle
  for `timeout` while others wait is rolled back by the writer (queue mode).

See docs/migrating-from-sqlite3.md for every difference from sqlite3.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from collections.abc import Callable
from typing import Any, Literal

from . import _lifecycle
from ._dbapi_conn import (
    LEGACY_TRANSACTION_CONTROL,
    Connection,
    _check_autocommit,
    _check_isolation_level,
    live,
)
from ._dbapi_cursor import Cursor
from ._dbapi_types import (
    BINARY,
    DATETIME,
    NUMBER,
    ROWID,
    STRING,
    Binary,
    Date,
    DateFromTicks,
    Time,
    TimeFromTicks,
    Timestamp,
    TimestampFromTicks,
)
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
    Warning,
)

__all__ = [
    "BINARY",
    "DATETIME",
    "LEGACY_TRANSACTION_CONTROL",
    "NUMBER",
    "ROWID",
    "STRING",
    "Binary",
    "Connection",
    "Cursor",
    "DataError",
    "DatabaseError",
    "Date",
    "DateFromTicks",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "NotSupportedError",
    "OperationalError",
    "ProgrammingError",
    "Time",
    "TimeFromTicks",
    "Timestamp",
    "TimestampFromTicks",
    "Warning",
    "apilevel",
    "connect",
    "paramstyle",
    "threadsafety",
]

log = logging.getLogger("safestore")

#: PEP 249: this module implements DB-API 2.0.
apilevel = "2.0"
#: PEP 249 level 2: threads may share the module and connections (that is the point).
#: Not 3: a cursor holds one statement's results, so sharing one between threads that
#: execute at the same time mixes their results up (it never corrupts anything).
threadsafety = 2
#: PEP 249: ``?`` placeholders, on both engines. SQLite also takes ``:name``, and
#: DuckDB ``$1``/``$name`` (see the migration guide).
paramstyle = "qmark"


# --- connect ---------------------------------------------------------------------------


def connect(
    database: str | bytes | os.PathLike[str] | os.PathLike[bytes] | Store,
    timeout: float | None = None,
    detect_types: int = 0,
    isolation_level: str | None = "",
    check_same_thread: bool = True,
    factory: type[Connection] | None = None,
    cached_statements: int = 128,
    uri: bool = False,
    *,
    autocommit: bool | int = LEGACY_TRANSACTION_CONTROL,
    backend: Literal["sqlite", "duckdb"] | None = None,
    mode: Literal["queue", "lock"] = "queue",
    durability: Literal["full", "normal"] = "full",
    max_queue: int = 10_000,
    setup: str | Callable[[Any], object] | None = None,
    read_only: bool = False,
) -> Connection:
    """Open a DB-API connection that any number of threads may share.

    Takes ``sqlite3.connect``'s arguments, in its order, plus `Store`'s keywords.
    `database` may also be an open `Store`, which the connection then uses (and does
    not close): the store and the connection share one writer and one group commit.

    Args:
        database: a path, ``":memory:"``, a ``sqlite:///``/``duckdb:///`` URL, a
            ``file:`` URI with ``uri=True``, or a `Store`.
        timeout: seconds any call may wait (for another thread's transaction, the
            queue, a file lock), and how long a thread's transaction may stay idle
            while others wait before it is rolled back. Default: Store's 30 s.
        detect_types: only 0 is supported (the converters would have to run on every
            thread's connection).
        isolation_level: ``""``, ``"DEFERRED"``, ``"IMMEDIATE"``, ``"EXCLUSIVE"``: an
            implicit BEGIN before INSERT/UPDATE/DELETE/REPLACE (all three kinds take
            the write lock at once here). None: every statement commits on its own.
        check_same_thread: ignored: sharing between threads is the point.
        factory: a subclass of `Connection`, or None.
        cached_statements: accepted for compatibility; each engine connection keeps
            its own cache.
        uri: treat `database` as an SQLite ``file:`` URI (``mode=ro``,
            ``mode=memory`` understood).
        autocommit: Python 3.12 semantics; see `Connection.autocommit`.
        backend, mode, durability, max_queue, setup, read_only: as for `Store`.

    Thread-safe. Blocks while the store opens (writer connection, `setup`).
    """
    del check_same_thread, cached_statements  # see the docstring
    if detect_types:
        raise NotSupportedError(
            "detect_types is not supported by safestore.connect(): adapt values in Python "
            "(or use SQL casts); converters would have to be installed on every thread's "
            "connection"
        )
    if factory is not None and not (isinstance(factory, type) and issubclass(factory, Connection)):
        raise NotSupportedError(
            f"factory must be a subclass of safestore.dbapi.Connection, not {factory!r}"
        )
    _check_isolation_level(isolation_level)
    _check_autocommit(autocommit)
    if isinstance(database, Store):
        if (backend, mode, durability, max_queue, setup, read_only, timeout, uri) != (
            None,
            "queue",
            "full",
            10_000,
            None,
            False,
            None,
            False,
        ):
            raise TypeError(
                "connect(store) uses the store's own settings: pass no Store keywords, "
                "timeout or uri with it"
            )
        store, owns = database, False
    else:
        # sqlite3 takes bytes paths too.
        target: str | os.PathLike[str] = (
            os.fsdecode(database) if isinstance(database, bytes | os.PathLike) else database
        )
        if uri:
            target, read_only = _parse_uri(target, read_only)
        store = Store(
            target,
            backend=backend,
            mode=mode,
            durability=durability,
            timeout=30.0 if timeout is None else timeout,
            max_queue=max_queue,
            setup=setup,
            read_only=read_only,
        )
        owns = True
    cls = factory or Connection
    try:
        return cls(store, isolation_level=isolation_level, autocommit=autocommit, _owns=owns)
    except BaseException:
        if owns:
            store.close()
        raise


def _parse_uri(database: object, read_only: bool) -> tuple[str, bool]:
    if not isinstance(database, str):
        raise TypeError(f"uri=True needs a str, not {type(database).__name__}")
    if not database.startswith("file:"):
        return database, read_only  # SQLite opens a name that is not a URI as a file name
    parts = urllib.parse.urlsplit(database)
    path = urllib.parse.unquote(parts.path)
    for key, value in urllib.parse.parse_qsl(parts.query):
        if key == "mode" and value == "ro":
            read_only = True
        elif key == "mode" and value == "memory":
            path = ":memory:"
        elif key == "mode" and value in ("rw", "rwc"):
            pass
        else:
            raise NotSupportedError(
                f"the URI parameter {key}={value} is not supported by safestore.connect() "
                "(mode=ro, mode=rw, mode=rwc and mode=memory are)"
            )
    return path or ":memory:", read_only


@_lifecycle.exit_hook
def _close_all_at_exit() -> None:
    """Roll back open thread transactions before the store's own exit hook commits.

    Registered after _lifecycle's hook, so it runs first: a transaction left open must not
    keep the writer waiting (up to `timeout`) while the process exits.
    """
    for conn in list(live):
        try:
            if conn._txs:
                with conn._lock:
                    conn._notes.append(
                        f"{len(conn._txs)} transaction(s) still open at exit on {conn!r}: "
                        "rolled back"
                    )
            conn.close()
        except Exception:
            log.exception("closing %r at exit failed", conn)
