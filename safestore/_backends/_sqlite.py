"""The SQLite backend, on the standard library's ``sqlite3``.

Connections run with ``isolation_level=None``: safestore issues BEGIN IMMEDIATE /
COMMIT itself, so every write transaction takes the write lock up front and waits for
other processes through the busy handler (a deferred transaction that reads and then
writes gets SQLITE_BUSY at once, ignoring the busy timeout).

Failure isolation inside a group commit uses one SAVEPOINT per request: a request that
fails is rolled back to its savepoint and the others still commit.

What a statement may do is decided in ``_sqlite_guard.py``: the authorizer that keeps
reads read-only, and the refusals that keep a write request (or a `run()` function) from
ending the group's transaction. This module calls it at three points: `connect_reader`
(the reader's permanent guard), `read`, and `apply`.
"""

from __future__ import annotations

import functools
import itertools
import logging
import pathlib
import re
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .._dbapi_sql import (
    engine_text,
    has_returning,
    insert_target,
    is_insert,
    is_upsert,
    may_change_schema,
    savepoint_action,
    uncounted,
)
from .._requests import (
    Execute,
    ExecuteMany,
    Flush,
    Insert,
    Request,
    Result,
    Run,
    unquote_identifier,
)
from ..errors import (
    BIND_ERRORS,
    ProgrammingError,
    StoreError,
    TimeoutError,
    bind_error,
    translate,
)
from . import Config, Outcome
from ._sqlite_guard import (
    _call_run,
    _guarded_read,
    _load_schema,
    _refuse_transaction_control,
)

log = logging.getLogger("safestore")
T = TypeVar("T")

_BUSY_CODES = {sqlite3.SQLITE_BUSY, getattr(sqlite3, "SQLITE_LOCKED", 6)}
_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
_ROWS_PER_STATEMENT = 256


@functools.lru_cache(maxsize=256)
def _insert_sql(table: str, columns: tuple[str, ...], nrows: int, returning: str) -> str:
    row = "(" + ",".join("?" * len(columns)) + ")"
    sql = f"INSERT INTO {table} ({','.join(columns)}) VALUES " + ",".join([row] * nrows)
    return f"{sql} RETURNING {returning}" if returning else sql


class _WriterConnection(sqlite3.Connection):
    """The writer's connection, which only safestore closes.

    It is lent to run() functions (and, in lock mode, used by every thread): one that
    closed it would leave every later call of the store failing with "Cannot operate on
    a closed database". safestore closes it with `_close`, the base class's method.
    """

    __slots__ = ()

    def close(self) -> None:
        raise ProgrammingError(
            "a run() function cannot close the store's connection (safestore closes it "
            "in Store.close())"
        )

    def backup(self, *args: Any, **kwargs: Any) -> None:
        # Lent to run() inside a write transaction, from which a backup's steps fail
        # with SQLITE_LOCKED, and sqlite3 retries them without end.
        raise ProgrammingError(
            "a run() function cannot back the database up from the store's connection: "
            "it is inside a write transaction, so the backup could never finish; back up "
            "from a connection of your own: sqlite3.connect(path).backup(target)"
        )


def _close(conn: sqlite3.Connection) -> None:
    sqlite3.Connection.close(conn)  # also for a _WriterConnection


def _interrupted(exc: BaseException) -> bool:
    """Whether `exc` (or the engine error it wraps) is SQLite's "interrupted"."""
    cause = exc.__cause__ if isinstance(exc, _TransactionEnded) else exc
    return getattr(cause, "sqlite_errorcode", None) == sqlite3.SQLITE_INTERRUPT


class _TransactionEnded(Exception):
    """A request returned after the engine had rolled back the group's transaction."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class SQLiteBackend:
    """`Backend` for SQLite files and ``:memory:``."""

    name = "sqlite"
    # A commit costs a few hundred microseconds: full groups are fastest (measured with
    # 50 threads, 16 or 32 instead were 5-10% slower).
    group_target: int | None = None
    # A daemon thread that comes back from SQLite while the interpreter exits just stops:
    # only C frames are unwound.
    may_exit_mid_call = True

    def __init__(self, config: Config) -> None:
        self.config = config
        # Writer-thread state (only the thread holding the writer connection touches it),
        # kept until the schema may have changed (`_forget_schema`): per table, whether
        # its inserts set the connection's last rowid and under which name RETURNING
        # can read the rowids; and the tables that merged inserts must leave alone.
        self._rowids: dict[str, tuple[bool, str]] = {}
        self._unmerged: set[str] = set()
        self._schema_version: int | None = None  # of the schema those facts describe
        self._max_vars = 999  # SQLITE_LIMIT_VARIABLE_NUMBER, read at connect

    # --- connections ---------------------------------------------------------------

    def _connect(
        self,
        *,
        read_only: bool,
        factory: type[sqlite3.Connection] = sqlite3.Connection,
    ) -> sqlite3.Connection:
        cfg = self.config
        if cfg.path == ":memory:":
            target, uri = ":memory:", False
        elif read_only:
            url = urllib.parse.quote(str(pathlib.Path(cfg.path).absolute()))
            target, uri = f"file:{url}?mode=ro", True
        else:
            target, uri = cfg.path, False
        conn = sqlite3.connect(
            target,
            timeout=cfg.timeout,
            isolation_level=None,
            # Connections are handed between threads (writer to transaction owner, any
            # thread to close()); every use is serialised by safestore's own locks.
            check_same_thread=False,
            uri=uri,
            factory=factory,
        )
        return conn

    def connect_writer(self) -> sqlite3.Connection:
        cfg = self.config
        # Lock mode and in-memory stores share this connection between threads, and so
        # its statement cache. CPython gh-118172 (wrong rows, crashes) needs threads
        # running statements of one connection at the same time; here every use is
        # under the store's lock, and a statement left half-read (a cursor a run()
        # function kept) stays busy, so sqlite3 prepares a fresh one for the next
        # user. The cache stays on: without it lock mode prepared every statement
        # anew, 2.6x slower for a 100,000-row insert.
        conn = self._connect(read_only=cfg.read_only, factory=_WriterConnection)
        try:
            if not cfg.read_only:
                self._retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchall())
            sync = "FULL" if cfg.durability == "full" else "NORMAL"
            conn.execute(f"PRAGMA synchronous={sync}")
            if cfg.read_only:
                conn.execute("PRAGMA query_only=1")
            self._max_vars = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        except BaseException:
            _close(conn)
            raise
        return conn

    def connect_reader(self, writer: Any) -> sqlite3.Connection:
        conn = self._connect(read_only=self.config.read_only)
        try:
            conn.execute("PRAGMA query_only=1")
            _load_schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self, conn: Any) -> None:
        try:
            _close(conn)
        except Exception as exc:  # closing must not mask the reason we are closing
            log.warning("closing a SQLite connection failed: %s", exc)

    def interrupt(self, conn: Any) -> None:
        try:
            conn.interrupt()
        except Exception:  # already closed: nothing to interrupt
            pass

    def release_in_child(self, conn: Any) -> bool:
        # SQLite keeps its file-lock records per process, shared by every connection to
        # one file. Left open in a forked child, inherited connections make a Store the
        # child opens on the same file believe it holds locks the kernel never gave it
        # (POSIX locks are not inherited), so the parent, closing its last connection,
        # would checkpoint and delete the WAL under the child's acknowledged writes.
        # Closed without the checkpoint a last connection runs (that would delete the
        # parent's WAL under it), which needs Connection.setconfig (Python 3.12+); on
        # 3.11 they stay open. Never with a write transaction open (a fork between a
        # group's BEGIN and COMMIT): its rollback would edit the wal-index the parent
        # shares.
        no_checkpoint = getattr(sqlite3, "SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE", None)
        if conn.in_transaction or no_checkpoint is None:
            return False
        conn.setconfig(no_checkpoint, True)
        self.close(conn)
        return True

    # --- transactions ----------------------------------------------------------------

    def _retry_busy(self, fn: Any) -> Any:
        """Call `fn`, retrying while another process holds the lock, up to the timeout.

        The busy handler (``timeout=`` on connect) already waits inside SQLite; this loop
        covers the cases where SQLite returns SQLITE_BUSY without calling it (WAL
        recovery, a deadlock it detects). Past the store's timeout the wait ends in
        safestore.TimeoutError, chained to the engine's error.
        """
        deadline = time.monotonic() + self.config.timeout
        pause = 0.001
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) not in _BUSY_CODES:
                    raise
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"the database file stayed locked by another connection for "
                        f"{self.config.timeout:.1f}s: {exc}"
                    ) from translate(exc)
                time.sleep(pause)
                pause = min(pause * 2, 0.05)

    def begin(self, conn: Any) -> None:
        self._retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"))

    def commit(self, conn: Any) -> None:
        conn.execute("COMMIT")

    def rollback(self, conn: Any) -> None:
        self._forget_schema()  # the transaction may have changed it
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except Exception as exc:
            log.warning("ROLLBACK failed: %s", exc)

    def run_script(self, conn: Any, script: str) -> None:
        # executescript() commits any open transaction before it starts, so the
        # transaction is part of the script; a failure leaves it open: roll back.
        try:
            self._retry_busy(lambda: conn.executescript(f"BEGIN IMMEDIATE;\n{script}\n;COMMIT;"))
        except BaseException:
            self.rollback(conn)
            raise

    def in_transaction(self, conn: Any) -> bool:
        return bool(conn.in_transaction)

    def is_closed(self, conn: Any) -> bool:
        # _WriterConnection refuses close(); sqlite3.Connection.close(conn) still works.
        try:
            conn.in_transaction  # noqa: B018 (raises on a closed connection)
        except sqlite3.ProgrammingError:
            return True
        return False

    # --- group commit ----------------------------------------------------------------

    def commit_group(self, conn: Any, requests: Sequence[Request]) -> list[Outcome]:
        if len(requests) == 1 and not isinstance(requests[0], Run):
            return self._alone(conn, requests[0])
        req: Request | None = None  # the request being applied, if the group fails
        try:
            outcomes: list[Outcome] = []
            i, n = 0, len(requests)
            while i < n:
                req = requests[i]
                if isinstance(req, Insert):
                    j = i + 1
                    while (
                        j < n
                        and isinstance(nxt := requests[j], Insert)
                        and nxt.table == req.table
                        and nxt.columns == req.columns
                    ):
                        j += 1
                    outcomes.extend(self._insert_run(conn, requests[i:j]))  # type: ignore[arg-type]
                    i = j
                    continue
                outcomes.append(self._isolated(conn, req))
                i += 1
            req = None  # from here on, a failure is the commit's: no single culprit
            self.commit(conn)
        except (sqlite3.Error, _TransactionEnded) as exc:
            self.rollback(conn)
            # The transaction as a whole failed, so the savepoints could not isolate the
            # culprit: a ROLLBACK conflict clause or RAISE(ROLLBACK), SQLITE_FULL or an
            # I/O error roll back the entire transaction, and a deferred constraint
            # fails only at COMMIT. Nothing is committed, so retry each request in a
            # transaction of its own: only the culprit(s) fail, never the other callers
            # (guarantee 3). Linear, and only on this path.
            culprit = None
            if req is not None and (
                (isinstance(req, Run) and not req.lendable) or _interrupted(exc)
            ):
                # A user's run() function that ended the transaction is not called
                # again, nor is a statement close() interrupted (it would not end).
                err = exc.error if isinstance(exc, _TransactionEnded) else translate(exc)
                culprit = (req, None, err)
            return self._one_by_one(conn, requests, culprit)
        except BaseException:
            self.rollback(conn)
            raise
        return outcomes

    def _one_by_one(
        self, conn: Any, requests: Sequence[Request], culprit: Outcome | None
    ) -> list[Outcome]:
        """Commit each request in its own transaction, in order; `culprit`, if given,
        is the outcome of the request that ended the group's transaction.

        User run() functions that ran before the culprit are called again here: the
        engine rolled back everything they did, and failing them would fail innocent
        callers. Those after it had not run yet.
        """
        outcomes: list[Outcome] = []
        for req in requests:
            if isinstance(req, Flush):
                outcomes.append((req, None, None))
                continue
            if culprit is not None and req is culprit[0]:
                outcomes.append(culprit)
                continue
            try:
                self.begin(conn)
                if isinstance(req, Run) and not req.lendable:
                    outcome = self._isolated(conn, req)  # fn may not leave it alone
                    if outcome[2] is None:
                        self.commit(conn)
                    else:
                        self.rollback(conn)
                    outcomes.append(outcome)
                else:
                    outcomes.extend(self._alone(conn, req))
            except _TransactionEnded as exc:
                self.rollback(conn)
                outcomes.append((req, None, exc.error))
            except Exception as exc:
                self.rollback(conn)
                outcomes.append((req, None, translate(exc)))
        return outcomes

    def _alone(self, conn: Any, req: Request) -> list[Outcome]:
        """A group of one statement-like request: the transaction is its savepoint.

        Saves the SAVEPOINT/RELEASE round trips, which matter when one thread writes
        sequentially. (A run() function may commit on its own, so it always takes the
        savepoint path.)
        """
        try:
            value = self.apply(conn, req)
        except BaseException as exc:
            self.rollback(conn)
            return [(req, None, translate(exc))]
        try:
            self.commit(conn)
        except BaseException:
            self.rollback(conn)
            raise
        return [(req, value, None)]

    def _isolated(self, conn: Any, req: Request) -> Outcome:
        """Apply one request inside its own savepoint."""
        if isinstance(req, Flush):
            return (req, None, None)
        conn.execute("SAVEPOINT safestore_req")
        try:
            value = self.apply(conn, req)
        except BaseException as exc:  # SystemExit from a run() function is its own error
            if not conn.in_transaction:  # the engine already rolled everything back
                raise _TransactionEnded(translate(exc)) from exc
            conn.execute("ROLLBACK TO safestore_req")
            conn.execute("RELEASE safestore_req")
            return (req, None, translate(exc))
        if not conn.in_transaction:
            # The request returned, but the engine rolled back the whole transaction
            # under it: a run() function that caught the error of a ROLLBACK conflict
            # clause or of RAISE(ROLLBACK). The group's earlier work is gone with it.
            raise _TransactionEnded(
                StoreError(
                    "the engine rolled back the whole transaction during this write (a "
                    "ROLLBACK conflict clause or RAISE(ROLLBACK) whose error was caught): "
                    "what it did before that was undone, but statements it ran after "
                    "that were committed one by one, outside any transaction"
                )
            )
        conn.execute("RELEASE safestore_req")
        return (req, value, None)

    def _insert_run(self, conn: Any, run: Sequence[Insert]) -> list[Outcome]:
        """Insert consecutive requests for one table with as few statements as possible."""
        if len(run) == 1:
            return [self._isolated(conn, run[0])]
        table = run[0].table
        has_rowid, returning = self._rowid_of(conn, table, merging=True)
        if not (_RETURNING and has_rowid and returning) or table in self._unmerged:
            return [self._isolated(conn, req) for req in run]
        conn.execute("SAVEPOINT safestore_merge")
        try:
            last_ids = self._merged_insert(conn, run, returning)
        except Exception:
            if not conn.in_transaction:
                raise
            conn.execute("ROLLBACK TO safestore_merge")
            conn.execute("RELEASE safestore_merge")
            # Find the failing request(s): each alone, in its own savepoint.
            outcomes = [self._isolated(conn, req) for req in run]
            if all(exc is None for _, _, exc in outcomes):
                # Every row was fine on its own, so the merged statement itself cannot
                # work on this table: stop merging into it.
                self._unmerged.add(table)
            return outcomes
        if last_ids is None:
            # The engine skipped rows without an error (ON CONFLICT IGNORE, a trigger's
            # RAISE(IGNORE)): which request each rowid belongs to is lost. Insert each
            # request on its own instead, and stop merging into this table until the
            # schema may have changed.
            conn.execute("ROLLBACK TO safestore_merge")
            conn.execute("RELEASE safestore_merge")
            self._unmerged.add(table)
            return [self._isolated(conn, req) for req in run]
        conn.execute("RELEASE safestore_merge")
        return [
            (req, Result(len(req.rows), rid), None) for req, rid in zip(run, last_ids, strict=True)
        ]

    def _rowid_of(self, conn: Any, table: str, *, merging: bool = False) -> tuple[bool, str]:
        """(whether inserts into `table` report their rowid, a name that selects it)."""
        known = self._rowids.get(table)
        if known is not None and (merging or not known[0]):
            # Another connection (process) may have changed the schema since: check
            # before a fact changes what is done, a merge or a rowid withheld. (An
            # insert into a table known to have rowids just reports the engine's.)
            self._check_schema(conn)
            known = self._rowids.get(table)
        if known is None:
            self._check_schema(conn)  # the version the new fact describes
            known = _probe_rowid(conn, table)
            if known is None:  # no such table (yet): ask again next time
                return (True, "")
            if not _in_attached(table):  # main's schema version does not cover those
                self._rowids[table] = known
        return known

    def _check_schema(self, conn: Any) -> None:
        version = conn.execute("PRAGMA schema_version").fetchone()[0]
        if version != self._schema_version:
            self._forget_schema()
            self._schema_version = version

    def _forget_schema(self) -> None:
        self._rowids.clear()
        self._unmerged.clear()
        self._schema_version = None

    def _merged_insert(
        self, conn: Any, run: Sequence[Insert], returning: str
    ) -> list[int | None] | None:
        """One multi-row INSERT per chunk of rows; returns each request's last rowid, or
        None if the engine skipped some rows (then RETURNING cannot tell whose is whose).

        RETURNING yields one rowid per inserted row, in insertion order, so the rowid of
        a request's last row is at the running offset of that request's rows.
        """
        first = run[0]
        ncols = len(first.columns)
        per_stmt = self._rows_per_statement(ncols)
        ids: list[Any] = []
        pending: list[Any] = []
        pending_rows = 0

        def flush_chunk() -> None:
            nonlocal pending, pending_rows
            sql = _insert_sql(first.table, first.columns, pending_rows, returning)
            ids.extend(r[0] for r in conn.execute(sql, pending).fetchall())
            pending, pending_rows = [], 0

        for req in run:
            for row in req.rows:
                pending.extend(row)
                pending_rows += 1
                if pending_rows == per_stmt:
                    flush_chunk()
        if pending_rows:
            flush_chunk()
        offsets = list(itertools.accumulate(len(req.rows) for req in run))
        if len(ids) != offsets[-1]:
            return None
        return [ids[offset - 1] for offset in offsets]

    def _rows_per_statement(self, ncols: int) -> int:
        # Multi-row VALUES beats executemany by ~2x (one prepare, one GIL round trip per
        # statement), but very long statements parse slowly: a few hundred rows each was
        # fastest when measured (100k rows: 200 -> 0.059s, 33,000 -> 0.141s).
        return max(1, min(_ROWS_PER_STATEMENT, self._max_vars // ncols))

    # --- single requests -------------------------------------------------------------

    def apply(self, conn: Any, request: Request) -> Any:
        if isinstance(request, Run):
            self._forget_schema()  # fn may change it
            return _call_run(conn, request)  # fn cannot end the transaction (_sqlite_guard)
        try:
            return self._apply_statement(conn, request)
        except BIND_ERRORS as exc:  # a value sqlite3 cannot bind
            raise bind_error(exc) from None

    def apply_in_block(self, conn: Any, request: Request) -> Any:
        # Even one statement can fail part-way (ON CONFLICT FAIL, RAISE(FAIL) keep the
        # rows before the failing one), and in a group only the request's savepoint
        # or transaction hides that: here a savepoint of its own does. Not around the
        # block's own SAVEPOINT, RELEASE or ROLLBACK TO, which it would undo at once;
        # they change no rows.
        if isinstance(request, Execute) and savepoint_action(request.sql) is not None:
            return self.apply(conn, request)
        return _all_or_nothing(conn, lambda: self.apply(conn, request))

    def _apply_statement(self, conn: Any, request: Request) -> Any:
        if isinstance(request, Insert):
            return self._insert_alone(conn, request)
        if isinstance(request, Execute):
            _refuse_transaction_control(request.sql)
            if may_change_schema(request.sql):
                self._forget_schema()
            if uncounted(request.sql):
                return _execute_uncounted(conn, request)
            insert = is_insert(request.sql)
            # An upsert that updated instead of inserting leaves the last rowid as it was.
            before = last_insert_rowid(conn) if insert and is_upsert(request.sql) else None
            cur = conn.execute(request.sql, request.params)
            try:
                rows = cur.fetchall()
                # sqlite3 reports the connection's last insert rowid after any
                # statement; it belongs to this one only if it inserted rows, into a
                # table that has rowids.
                lastrowid = None
                if cur.rowcount > 0 and insert and cur.lastrowid != before:
                    lastrowid = cur.lastrowid
                    target = insert_target(request.sql)
                    if target is not None and not self._rowid_of(conn, target)[0]:
                        lastrowid = None
                return Result(cur.rowcount, lastrowid, rows)
            finally:
                cur.close()
        if isinstance(request, ExecuteMany):
            _refuse_transaction_control(request.sql)
            if may_change_schema(request.sql):  # sqlite3 runs DDL here too
                self._forget_schema()
            return _execute_many(conn, request)
        if isinstance(request, Flush):
            return None
        raise TypeError(f"the SQLite backend cannot apply {type(request).__name__}")

    def _insert_alone(self, conn: Any, req: Insert) -> Result:
        rows = req.rows
        # The counts are the engine's: it may skip rows without an error (ON CONFLICT
        # IGNORE, a trigger's RAISE(IGNORE)); and a statement that inserted none, or
        # only into a table without rowids, leaves the connection's last rowid at an
        # earlier statement's, perhaps another caller's.
        has_rowid = self._rowid_of(conn, req.table)[0]
        if len(rows) == 1:  # the common case, without the chunking below
            cur = conn.execute(_insert_sql(req.table, req.columns, 1, ""), rows[0])
            inserted = cur.rowcount
            return Result(inserted, cur.lastrowid if inserted > 0 and has_rowid else None)
        per_stmt = self._rows_per_statement(len(req.columns))
        inserted, lastrowid = 0, None
        for start in range(0, len(rows), per_stmt):
            chunk = rows[start : start + per_stmt]
            sql = _insert_sql(req.table, req.columns, len(chunk), "")
            cur = conn.execute(sql, [v for row in chunk for v in row])
            if cur.rowcount > 0:
                inserted += cur.rowcount
                lastrowid = cur.lastrowid if has_rowid else None
        return Result(inserted, lastrowid)

    # --- reads -----------------------------------------------------------------------

    def restore_after_read(self, conn: Any) -> None:
        try:
            conn.set_authorizer(None)
            conn.execute("PRAGMA query_only=0")
        except Exception as exc:
            log.warning("restoring the connection after an interrupted read failed: %s", exc)

    def read(self, conn: Any, sql: str, params: Any, *, shared: bool) -> list[tuple[Any, ...]]:
        # The authorizer, the SQLITE_SCHEMA retry and ReadOnlyError: see _sqlite_guard.py.
        try:
            return _guarded_read(conn, sql, params, shared=shared)
        except BIND_ERRORS as exc:  # a value sqlite3 cannot bind
            raise bind_error(exc) from None


# The kind of a name as an unqualified name resolves it: temp first, then main.
_KIND_SQL = (
    "SELECT type, sql FROM sqlite_temp_master WHERE name = ? AND type IN ('table', 'view') "
    "UNION ALL "
    "SELECT type, sql FROM sqlite_master WHERE name = ? AND type IN ('table', 'view')"
)
_KIND_IN_SCHEMA_SQL = (
    "SELECT type, sql FROM {schema}.sqlite_master WHERE name = ? AND type IN ('table', 'view')"
)
_VIRTUAL = re.compile(r"\s*create\s+virtual\b", re.IGNORECASE)


_QUOTED = re.compile(r'"(?:[^"]|"")*"')


def _split_table(table: str) -> tuple[str | None, str]:
    """(schema or None, name), each still quoted, of ``"name"`` or ``"schema"."name"``."""
    *schema, name = _QUOTED.findall(table)
    return (schema[0] if schema else None), name


def _in_attached(table: str) -> bool:
    """Whether `table` (quoted) is named with the schema of an attached database."""
    schema = _split_table(table)[0]
    return schema is not None and unquote_identifier(schema).lower() not in ("main", "temp")


def _probe_rowid(conn: Any, table: str) -> tuple[bool, str] | None:
    """Whether inserts into `table` (quoted, possibly as ``"schema"."name"``) report
    their rowid, and a name that selects it (the first of SQLite's three aliases that
    no column shadows, "" if all are), or None if no such table or view exists."""
    schema, name = _split_table(table)
    raw = unquote_identifier(name)
    args: tuple[str, ...]
    if schema is not None:
        columns = conn.execute(
            "SELECT name FROM pragma_table_xinfo(?, ?)", (raw, unquote_identifier(schema))
        )
        kind_sql, args = _KIND_IN_SCHEMA_SQL.format(schema=schema), (raw,)
    else:
        columns = conn.execute("SELECT name FROM pragma_table_xinfo(?)", (raw,))
        kind_sql, args = _KIND_SQL, (raw, raw)
    names = {r[0].lower() for r in columns}
    if not names:
        return None
    kind = conn.execute(kind_sql, args).fetchone()
    if kind is not None and kind[0] == "view":
        return (False, "")  # an INSTEAD OF trigger's inserts do not set it for the caller
    if kind is not None and _VIRTUAL.match(kind[1] or ""):
        return (True, "")  # RETURNING gives -1 for its rowids: never merge into it
    alias = next((a for a in ("rowid", "_rowid_", "oid") if a not in names), "")
    if alias:
        try:
            conn.execute(f"SELECT {alias} FROM {table} LIMIT 0").close()
        except sqlite3.OperationalError:  # a WITHOUT ROWID table
            # The failure stays recorded on the connection, and sqlite3 would report it
            # in place of the next statement's own error if that statement (cached)
            # fails to bind a value: a statement that succeeds clears it.
            conn.execute("SELECT 1").close()
            return (False, "")
    return (True, alias)


def _all_or_nothing(conn: Any, fn: Callable[[], T]) -> T:
    """Run `fn`, whose changes must land together or not at all, in a savepoint."""
    conn.execute("SAVEPOINT safestore_call")
    try:
        value = fn()
    except BaseException:
        if conn.in_transaction:  # else the engine rolled everything back already
            conn.execute("ROLLBACK TO safestore_call")
            conn.execute("RELEASE safestore_call")
        raise
    conn.execute("RELEASE safestore_call")
    return value


def last_insert_rowid(conn: Any) -> int:
    """The connection's last inserted rowid (an earlier statement's, perhaps)."""
    rowid: int = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
    return rowid


def makes_rowids(conn: Any, sql: str, params: Any) -> bool:
    """Whether the statement's program allocates rowids (it inserts into a rowid
    table). For a statement that changed rows and left the connection's last rowid as
    it was: an UPDATE or DELETE does that, and so does an insert whose new row happens
    to get the very rowid an earlier insert reported."""
    explained = conn.execute(f"EXPLAIN {engine_text(sql)}", params)
    return any(row[1] == "NewRowid" for row in explained)


def _execute_uncounted(conn: Any, request: Execute) -> Result:
    """A statement whose rows sqlite3 does not count (it reports -1): after a WITH
    clause (a query, or an INSERT, UPDATE or DELETE) or after an empty statement. Ask
    the engine for the count, and for the rowid if the statement moved it."""
    rowid_before = last_insert_rowid(conn)
    changes_before = conn.total_changes
    cur = conn.execute(request.sql, request.params)
    try:
        rows = cur.fetchall()
        rowcount = cur.rowcount
        # A query always has columns; a write has none unless it returns rows, and
        # then it has changed some (total_changes also counts its triggers' rows).
        if rowcount == -1 and (cur.description is None or conn.total_changes != changes_before):
            rowcount, rowid = conn.execute("SELECT changes(), last_insert_rowid()").fetchone()
            # A new row may get the very rowid reported before (EXPLAIN tells whether
            # the statement makes rowids), except from an upsert, whose program always
            # can, and whose update leaves the rowid as it was.
            inserted = rowcount > 0 and (
                rowid != rowid_before
                or (not is_upsert(request.sql) and makes_rowids(conn, request.sql, request.params))
            )
            return Result(rowcount, rowid if inserted else None, rows)
        return Result(rowcount, None, rows)
    finally:
        cur.close()


def _execute_many(conn: Any, request: ExecuteMany) -> Result:
    if has_returning(request.sql):
        return _each_returning(conn, request)
    cur = conn.executemany(request.sql, request.seq_of_params)
    try:
        return Result(cur.rowcount, None, [])
    finally:
        cur.close()


def _each_returning(conn: Any, request: ExecuteMany) -> Result:
    """executemany() of a statement that may have a RETURNING clause, one parameter set
    at a time: sqlite3's executemany drops RETURNING rows and counts 0 for them."""
    rowcount, rows = 0, []
    for params in request.seq_of_params:
        cur = conn.execute(request.sql, params)
        try:
            rows.extend(cur.fetchall())
            rowcount += max(cur.rowcount, 0)  # -1 for a statement that changes nothing
        finally:
            cur.close()
    return Result(rowcount, None, rows)


def make_backend(config: Config) -> SQLiteBackend:
    """Entry point used by `open_backend`."""
    return SQLiteBackend(config)
