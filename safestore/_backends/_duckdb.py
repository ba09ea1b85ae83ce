"""The DuckDB backend (duckdb >= 2.0), imported only when a DuckDB store is opened.

Threading model. A DuckDB connection must never be used by two threads at once (2.0
refuses overlapping calls; results can still mix), and a cursor is just another
connection to the same database. So the writer connection belongs to the writer thread
(queue mode) or to whoever holds the store's lock (lock mode), and every reading thread
gets its own cursor of the writer connection (`connect_reader`), which shares the
database, ``:memory:`` included. Closing order matters: readers' cursors are
interrupted and closed first (``_readers.py``), then the writer is joined, then the
writer connection is closed; closing the parent while a cursor is busy raises.

Group commit. DuckDB has no SAVEPOINT and aborts the whole transaction at its first
failing statement, so `commit_group` isolates failures by rolling back and replaying;
that machinery (with the appender units it commits and the check that refuses
transaction control) is the `GroupCommit` mixin in ``_duckdb_group.py``, which this
class inherits. This module keeps what the mixin works on: the per-connection
transaction state, the deferred BEGIN, the appender cache, and `_probe`, which turns a
silently aborted transaction into an error before COMMIT.

Durability. ``durability="full"`` and ``"normal"`` both mean DuckDB's default
``fsync_mode=STANDARD``: one fdatasync per commit, which the group commit amortises.
DuckDB's only weaker mode, ``fsync_mode=NONE``, is a setting of the whole database
instance (shared with every other connection to the file in this process), and it also
skips the syncs around checkpoints, so an OS crash or power loss can corrupt the file
rather than just lose the last commits as SQLite's ``synchronous=NORMAL`` does. No
correct equivalent exists, so "normal" is treated like "full".

Reads. `read` runs each statement inside ``BEGIN TRANSACTION READ ONLY`` on the
thread's cursor: the engine refuses every write (``nextval()`` included) and the error
becomes `ReadOnlyError`. The statement types are also checked first
(``_duckdb_guard.py``), to close the holes a read-only transaction leaves open.

One process writes. DuckDB locks the file for one process (a second one, even
read-only, fails at once); `connect_writer` turns that into `StoreError` naming the
process (PID) that holds the file.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb

from .. import _lifecycle
from .._dbapi_sql import has_returning
from .._requests import Execute, ExecuteMany, Flush, Insert, Request, Result, Rows, Run
from ..errors import (
    DataError,
    IntegrityError,
    InternalError,
    OperationalError,
    ProgrammingError,
    ReadOnlyError,
    StoreError,
    register_mapping,
    translate,
)
from . import Config
from ._duckdb_group import GroupCommit
from ._duckdb_guard import check_read

# Unless duckdb was imported before safestore, `import duckdb` registered DuckDB's exit
# cleanup after safestore's exit hooks, so that it would run first: put them back ahead.
if not _lifecycle.duckdb_imported_first:
    _lifecycle.exit_hooks_first()

log = logging.getLogger("safestore")

# duckdb classes that derive from DatabaseError directly, without a PEP 249 category.
register_mapping(duckdb.DependencyException, IntegrityError)  # other objects depend on it
register_mapping(duckdb.FatalException, InternalError)  # the database was invalidated
register_mapping(duckdb.InterruptException, OperationalError)  # as sqlite3 "interrupted"
register_mapping(duckdb.PermissionException, OperationalError)  # disabled by configuration
register_mapping(duckdb.SequenceException, DataError)  # a sequence ran out of values

_ST = duckdb.StatementType
_PID = re.compile(r"\(PID (\d+)\)")


def _refuse_several_statements(conn: Any, sql: str, call: str = "execute()") -> None:
    """Refuse SQL holding more than one statement, as SQLite does.

    DuckDB would run them all and report only the last one's result, so the caller's
    `Result` would describe part of what was written. Parsed only when the text holds
    a semicolon before its end (the common statement holds none).
    """
    if ";" not in sql.rstrip().rstrip(";"):
        return
    try:
        statements = conn.extract_statements(sql)
    except (duckdb.Error, ValueError):
        return  # let the engine report it when the statement runs
    if len(statements) > 1:
        raise ProgrammingError(
            f"{call} takes one statement, this SQL holds {len(statements)}; use "
            "store.transaction() to run several atomically"
        )


# DuckDB's refusals of a write: inside a read-only transaction (TransactionException),
# or on a database opened read-only (InvalidInputException).
_READ_ONLY_MSG = re.compile(r"transaction is launched in read-only mode|attached in read-only mode")
_READ_ONLY_ERRORS = (duckdb.TransactionException, duckdb.InvalidInputException)
_DML_TYPES = {_ST.INSERT, _ST.UPDATE, _ST.DELETE, _ST.MERGE_INTO}


def _params(params: Any) -> Any:
    """duckdb takes parameters only as a list, tuple or dict."""
    if params is None or isinstance(params, list | tuple | dict):
        return params
    if isinstance(params, Mapping):
        return dict(params)
    if isinstance(params, Sequence) and not isinstance(params, str | bytes):
        return list(params)
    return params


def _is_aborted(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.TransactionException) and "aborted" in str(exc)


class DuckDBBackend(GroupCommit):
    """`Backend` for DuckDB files and ``:memory:``.

    `commit_group`, its statement check and the appender units come from `GroupCommit`
    (``_duckdb_group.py``).
    """

    name = "duckdb"
    # A flush and commit take over a millisecond with the GIL released: committing 16
    # requests while the other callers prepare their next write overlaps the two. With
    # 50 threads this gave ~22k rows/s against ~15k when waiting for all 50; with 8 it
    # changes nothing (measured, 2 cores).
    group_target: int | None = 16
    # One that comes back from DuckDB then is unwound through its C++ frames, and the
    # process aborts ("FATAL: exception not rethrown").
    may_exit_mid_call = False

    def __init__(self, config: Config) -> None:
        self.config = config
        # id() of connections with a write transaction open (only the writer
        # connection ever has one). Touched only by the thread that holds that
        # connection (the writer, the lock holder, or a transaction's owner).
        self._open: set[int] = set()
        # The SQL texts query() has checked and allowed (see check_read), shared by
        # this store's reading threads.
        self._allowed_reads: dict[str, bool] = {}
        # The subset of `_open` whose BEGIN has not been sent yet. DuckDB's BEGIN never
        # waits (the file lock is held for the connection's life), so it is deferred to
        # the first statement: a group that is one appender flush then runs as one
        # autocommit statement, with no BEGIN/COMMIT round trips (each one a chance for
        # other threads to take the GIL from the writer).
        self._lazy: set[int] = set()
        # The first statement that failed in a transaction() block, to chain it to the
        # error its COMMIT raises (DuckDB aborted the transaction at that statement).
        self._failure: dict[int, BaseException] = {}
        # Appenders of the writer connection by (connection, table, columns), reused
        # across groups: creating one costs more than flushing a small batch. Writer-
        # thread state; cleared whenever the schema may have changed (any statement
        # other than an insert, any rollback) and after a failed flush.
        self._appenders: dict[tuple[int, str, tuple[str, ...]], Any] = {}
        self._writer: Any = None  # the writer connection, once open
        # Serialises cursor() calls on the writer connection from reader threads.
        self._cursor_lock = threading.Lock()

    # --- connections ---------------------------------------------------------------

    def connect_writer(self) -> duckdb.DuckDBPyConnection:
        cfg = self.config
        try:
            conn = duckdb.connect(cfg.path, read_only=cfg.read_only)
            self._writer = conn
            return conn
        except duckdb.IOException as exc:
            if "Could not set lock" not in str(exc):
                raise
            match = _PID.search(str(exc))
            who = f"another process (PID {match.group(1)})" if match else "another process"
            raise StoreError(
                f"{who} holds the DuckDB file {cfg.path!r}: DuckDB allows one writing "
                "process per file (read_only=True stores in several processes may share "
                "it only while no process writes)"
            ) from translate(exc)
        except duckdb.ConnectionException as exc:
            if "different configuration" not in str(exc):
                raise
            raise StoreError(
                f"this process already has {cfg.path!r} open with different settings "
                f"(read_only={not cfg.read_only}); DuckDB cannot open one file both "
                "read-only and read-write in one process: share one Store instead"
            ) from translate(exc)

    def connect_reader(self, writer: Any) -> Any:
        # A cursor shares the database (":memory:" too) with its own transactions. One
        # per thread; the readers registry never shares it.
        with self._cursor_lock:
            return writer.cursor()

    def close(self, conn: Any) -> None:
        if conn is self._writer:  # reader cursors are closed from other threads
            self._appenders.clear()
        self._open.discard(id(conn))
        self._lazy.discard(id(conn))
        self._failure.pop(id(conn), None)
        try:
            conn.close()
        except Exception as exc:  # closing must not mask the reason we are closing
            log.warning("closing a DuckDB connection failed: %s", exc)

    def release_in_child(self, conn: Any) -> bool:
        # Never: destroying the inherited database instance checkpoints into the
        # parent's file (and crashed the child). DuckDB's lock is not POSIX-inherited
        # bookkeeping, so keeping it open does not fool the child's own stores.
        return False

    def interrupt(self, conn: Any) -> None:
        try:
            conn.interrupt()
        except Exception:  # already closed: nothing to interrupt
            pass

    # --- transactions ----------------------------------------------------------------

    def begin(self, conn: Any) -> None:
        self._open.add(id(conn))
        self._lazy.add(id(conn))
        self._failure.pop(id(conn), None)

    def _started(self, conn: Any) -> None:
        """Send the deferred BEGIN of the open transaction, if not sent yet."""
        if id(conn) in self._lazy:
            # Marked sent before it is: a KeyboardInterrupt just after the BEGIN must
            # not leave a transaction that rollback() believes was never begun (later
            # writes would run in it and be acknowledged without a COMMIT). A ROLLBACK
            # with no transaction open is harmless.
            self._lazy.discard(id(conn))
            conn.execute("BEGIN TRANSACTION")

    def _ensure_tx(self, conn: Any) -> None:
        """Use the transaction the caller opened for the group, else begin a new one."""
        if id(conn) not in self._open:
            self.begin(conn)
        self._started(conn)

    def _forget_tx(self, conn: Any) -> None:
        self._open.discard(id(conn))
        self._lazy.discard(id(conn))
        self._failure.pop(id(conn), None)

    def _probe(self, conn: Any) -> None:
        """Raise if the open transaction was aborted (COMMIT would silently roll back).

        Also completes any result a run() function left half-read.
        """
        try:
            conn.execute("SELECT 1").fetchall()
        except duckdb.Error as exc:
            if not _is_aborted(exc):
                raise
            first = self._failure.get(id(conn))
            err = duckdb.TransactionException(
                "the transaction was rolled back, not committed: a statement in it failed "
                f"and DuckDB aborted it ({first or exc})"
            )
            raise translate(err) from (first or exc)

    def commit(self, conn: Any) -> None:
        if id(conn) in self._lazy:  # nothing ran in it
            self._forget_tx(conn)
            return
        try:
            self._probe(conn)
            conn.execute("COMMIT")
        except BaseException:
            self.rollback(conn)
            raise
        self._forget_tx(conn)

    def rollback(self, conn: Any) -> None:
        lazy = id(conn) in self._lazy
        self._forget_tx(conn)
        self._appenders.clear()  # a rolled-back CREATE/ALTER would leave them stale
        if lazy:
            return
        try:
            conn.execute("ROLLBACK")
        except duckdb.TransactionException:
            pass  # no transaction was open
        except Exception as exc:
            log.warning("ROLLBACK failed: %s", exc)

    def in_transaction(self, conn: Any) -> bool:
        return id(conn) in self._open

    def is_closed(self, conn: Any) -> bool:
        # A DuckDB connection cannot refuse close() (its methods cannot be replaced), and
        # says it is closed only when used.
        try:
            conn.execute("SELECT 1").fetchall()
        except duckdb.ConnectionException:
            return True
        except duckdb.Error:
            return False
        return False

    def run_script(self, conn: Any, script: str) -> None:
        statements = conn.extract_statements(script)
        if not statements:
            return
        self._appenders.clear()
        self._ensure_tx(conn)
        try:
            for stmt in statements:
                conn.execute(stmt).fetchall()
            self.commit(conn)
        except BaseException:
            self.rollback(conn)
            raise

    # --- group commit ----------------------------------------------------------------

    # `commit_group`, `_precheck` (the transaction-control refusal) and `_apply_unit`
    # (the appender) are inherited from GroupCommit, in _duckdb_group.py.

    # --- single requests -------------------------------------------------------------

    def _execute(self, conn: Any, sql: str, params: Any, call: str = "execute()") -> Result:
        _refuse_several_statements(conn, sql, call)
        conn.execute(sql, _params(params))
        if conn.description is None:
            # No statement at all (empty, or only comments): nothing ran, and there is
            # no result to drain. SQLite treats it the same way.
            return Result(-1, None, [])
        rowcount = conn.rowcount
        rows = conn.fetchall()  # always drain: an open result blocks appender flushes
        if rowcount == -1 and self._is_dml(conn, sql):
            rowcount = len(rows)  # DML with RETURNING: duckdb reports -1
        elif rowcount != -1:
            rows = []  # the engine's one-row count result, not RETURNING rows
        return Result(rowcount, None, rows)

    def _apply_one(self, conn: Any, request: Request) -> Any:
        if isinstance(request, Insert):
            return self._apply_unit(conn, (request,))[0]
        self._appenders.clear()  # the statement may change the schema
        if isinstance(request, Execute):
            return self._execute(conn, request.sql, request.params)
        if isinstance(request, ExecuteMany):
            _refuse_several_statements(conn, request.sql, "executemany()")
            if not request.seq_of_params:
                return Result(0, None, [])
            if has_returning(request.sql):
                # duckdb's executemany keeps only the last set's RETURNING rows and
                # reports rowcount -1: run each set on its own, and sum.
                each = [
                    self._execute(conn, request.sql, p, "executemany()")
                    for p in request.seq_of_params
                ]
                rows = [row for result in each for row in result.rows]
                return Result(sum(max(r.rowcount, 0) for r in each), None, rows)
            conn.executemany(request.sql, [_params(p) for p in request.seq_of_params])
            rowcount = conn.rowcount
            conn.fetchall()
            return Result(rowcount, None, [])
        if isinstance(request, Run):
            return request.call(conn)
        if isinstance(request, Flush):
            return None
        raise TypeError(f"the DuckDB backend cannot apply {type(request).__name__}")

    @staticmethod
    def _is_dml(conn: Any, sql: str) -> bool:
        try:
            statements = conn.extract_statements(sql)
        except (duckdb.Error, ValueError):
            return False
        return bool(statements) and statements[-1].type in _DML_TYPES

    def apply(self, conn: Any, request: Request) -> Any:
        problem = self._precheck(conn, request)
        if problem is not None:
            raise problem
        try:
            if id(conn) in self._open:
                self._started(conn)
            return self._apply_one(conn, request)
        except Exception as exc:
            # DuckDB has aborted the transaction: remember why, for commit's error.
            self._failure.setdefault(id(conn), exc)
            raise

    def apply_in_block(self, conn: Any, request: Request) -> Any:
        # A failed statement aborts DuckDB's whole transaction: nothing to isolate.
        return self.apply(conn, request)

    # --- reads -----------------------------------------------------------------------

    def read(self, conn: Any, sql: str, params: Any, *, shared: bool) -> list[tuple[Any, ...]]:
        if not check_read(conn, sql, self._allowed_reads):
            return []
        params = _params(params)
        if shared and id(conn) in self._open:
            # tx.query() inside a transaction() block: the write transaction is open on
            # this connection, so no read-only one can start; the statement check above
            # is the guard. A failure here aborts the block's transaction (DuckDB).
            try:
                self._started(conn)
                conn.execute(sql, params)
                return Rows(conn.fetchall(), conn.description)
            except Exception as exc:
                self._failure.setdefault(id(conn), exc)
                raise
        conn.execute("BEGIN TRANSACTION READ ONLY")
        try:
            conn.execute(sql, params)
            rows = Rows(conn.fetchall(), conn.description)
        except duckdb.Error as exc:
            self._end_read(conn, "ROLLBACK")
            if isinstance(exc, _READ_ONLY_ERRORS) and _READ_ONLY_MSG.search(str(exc)):
                raise ReadOnlyError(
                    f"query() runs read-only statements; this one would change the "
                    f"database ({exc}): {sql[:200]!r}"
                ) from translate(exc)
            raise
        except BaseException:
            self._end_read(conn, "ROLLBACK")
            raise
        self._end_read(conn, "COMMIT")
        return rows

    def restore_after_read(self, conn: Any) -> None:
        # The read's own COMMIT or ROLLBACK may have been interrupted, leaving its
        # read-only transaction open on the writer connection.
        try:
            conn.execute("ROLLBACK")
        except duckdb.TransactionException:
            pass  # no transaction was open: the read had ended it
        except Exception as exc:
            log.warning("restoring the connection after an interrupted read failed: %s", exc)

    @staticmethod
    def _end_read(conn: Any, how: str) -> None:
        try:
            conn.execute(how)
        except Exception as exc:  # the rows are already read; nothing was written
            log.debug("ending a read transaction failed: %s", exc)


def make_backend(config: Config) -> DuckDBBackend:
    """Entry point used by `open_backend`."""
    return DuckDBBackend(config)
