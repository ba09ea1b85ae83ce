"""One thread's open transaction on a DB-API connection, and the raw statement runners.

A thread's transaction is a transaction session on the store's writer (the same
mechanism as `Store.transaction()`, see `TxSession` in _requests.py): the writer hands
its connection to the owning thread and waits, so other threads' writes queue behind it
(queue mode), or the owner holds the store's lock for the whole transaction (lock mode).
Unlike a `with store.transaction()` block, a DB-API transaction is not lexical: it opens
at a statement and ends at a later `commit()`/`rollback()`, or never, if the thread dies
or forgets it. `ThreadTx` covers all of those endings:

- The owner ends it (commit, rollback, connection closed from its own thread).
- Another thread ends it (the connection is closed): queue mode rolls it back at once
  (the session lock orders this with the owner's statements); lock mode cannot, because
  the store's RLock belongs to the owner, so the rollback happens at the owner's next
  call or when it dies.
- The owner dies: a token object lives only in the owner's `threading.local`; CPython
  destroys it when the thread ends, in that thread, and its finalizer rolls back.
- The program drops the connection without commit() or close() (an exception skipped
  them): the connection's finalizer calls `dropped`, in whichever thread frees it,
  possibly from inside a garbage collection that interrupted anything, with any lock
  held. Queue mode rolls back in a thread of its own; lock mode rolls back at once in
  the owner thread, else at the owner's next call into the store, or its end.
- The owner idles past `timeout` (queue mode): the writer rolls back on its own; the
  owner learns it at its next call.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._backends._sqlite import last_insert_rowid, makes_rowids
from ._dbapi_sql import is_insert, is_upsert, starts_with_cte, uncounted
from ._locked import LockEngine
from ._requests import Run, TxSession
from ._transaction import Transaction
from .errors import ProgrammingError, StoreError, translate

if TYPE_CHECKING:
    from ._store import Store

log = logging.getLogger("safestore")


@dataclass(slots=True)
class Outcome:
    """What one statement produced, fetched completely while its connection was held."""

    rows: list[Any]
    description: Any = None
    rowcount: int = -1
    lastrowid: int | None = None  # the rowid of the row it inserted, else None
    #: Rows it changed for `total_changes`, those of triggers included (SQLite); None:
    #: as many as `rowcount` says.
    changes: int | None = None
    #: The statement's error, when the work it did before failing is to be committed
    #: all the same (see `run_sqlite_keeping`); raised once that is done.
    error: BaseException | None = None


class Token:
    """Lives only in the owner thread's `threading.local`; its death means the thread ended."""

    __slots__ = ("__weakref__", "finalizer")

    def __init__(self) -> None:
        self.finalizer: weakref.finalize[Any, Any] | None = None


# The tokens of the calling thread's transactions, on every connection. Not in the
# connection's own `threading.local`: that one dies with the connection, in whichever
# thread frees it, and a lock-mode transaction can be ended only by its owner thread.
_held = threading.local()


def _hold(token: Token) -> None:
    """Keep `token` for as long as the calling thread lives (or its transaction)."""
    tokens: set[Token] | None = getattr(_held, "tokens", None)
    if tokens is None:
        tokens = _held.tokens = set()
    else:  # forget those of transactions that have ended meanwhile
        tokens -= {t for t in tokens if t.finalizer is None or not t.finalizer.alive}
    tokens.add(token)


class ThreadTx:
    """The open transaction of one thread on one connection.

    Thread-safety: statements, commit and rollback run on the owner thread; `abort` may
    be called from any thread. `_end_lock` makes ending happen exactly once.
    """

    def __init__(self, store: Store, on_end: Callable[[ThreadTx], None]) -> None:
        self.store = store
        self.session = TxSession(store._timeout)
        self.owner = threading.get_ident()
        self.writes = 0
        self.ended = False
        self.doomed: str | None = None  # lock mode: why the owner must roll back at once
        # The open savepoints' names, oldest first, when an SQL SAVEPOINT opened this
        # transaction (None otherwise): in SQLite, releasing that first savepoint
        # commits the transaction, which the writer's own BEGIN would otherwise hide.
        self.savepoints: list[str] | None = None
        self._end_lock = threading.Lock()
        # Weak: the finalizer that watches the owner thread holds this object, and a
        # strong reference to the connection (whose method `on_end` is) would keep a
        # connection the program dropped alive with its transaction open, where
        # sqlite3 frees it and rolls back (see `dropped`).
        self._on_end = weakref.WeakMethod(on_end)
        deadline = time.monotonic() + store._timeout
        try:
            store._engine.begin_session(self.session, deadline)
        except Exception as exc:
            new = translate(exc)
            if new is exc:
                raise
            raise new from exc.__cause__
        self.tx = Transaction(store._engine_backend, self.session)
        # A direct store write from this thread now would wait for this very transaction:
        # make it fail at once instead (the flag Store.transaction() uses).
        store._tx_local.session = self.session
        self.finalizer: weakref.finalize[Any, Any] | None = None

    def watch(self) -> None:
        """Roll back when the owner thread (the calling one) has ended."""
        token = Token()
        self.finalizer = token.finalizer = weakref.finalize(token, _owner_gone, self)
        self.finalizer.atexit = False  # exit is handled by the connection's atexit hook
        _hold(token)

    @property
    def expired(self) -> bool:
        """The writer rolled it back after `timeout` idle (queue mode)."""
        return self.session.expired

    def run(self, fn: Callable[..., Outcome], *args: Any, write: bool) -> Outcome:
        """Run `fn(conn, *args)` on the writer connection inside this transaction."""
        if write:
            self.writes += 1
        backend = self.store._engine_backend
        # backend.apply(Run) sends DuckDB's deferred BEGIN and records a failure for the
        # error COMMIT will raise; on SQLite it just calls fn.
        req = Run(fn, args, {})
        try:
            out: Outcome = self.tx._use(lambda conn: backend.apply(conn, req))
        except BaseException:
            if self.session.lost is not None:
                # The engine ended the transaction (sqlite3 then reports
                # in_transaction False): end the thread's, so that its next statement
                # opens a new one, as with sqlite3.
                self.rollback()
            raise
        return out

    # --- ending ----------------------------------------------------------------------

    def _claim(self) -> bool:
        with self._end_lock:
            if self.ended:
                return False
            self.ended = True
        if self.finalizer is not None:
            self.finalizer.detach()
        return True

    def _finish(self, *, committed: bool) -> None:
        """Release the writer (or the lock) and count the block; owner thread or queue mode."""
        # Count the block before releasing the writer: the counters other than
        # `accepted` are the writer's, and it waits for this block until end_session.
        try:
            self.store._record_tx(self.writes, committed=committed)
        finally:
            self.store._engine.end_session(self.session)
            if threading.get_ident() == self.owner:
                self.store._tx_local.session = None
            on_end = self._on_end()
            if on_end is not None:  # None: the connection was dropped and freed
                on_end(self)

    def commit(self) -> None:
        """Commit (owner thread). Raises StoreError if the writer already rolled it back."""
        if not self._claim():
            return
        committed = False
        try:
            self.tx._commit()
            committed = True
        finally:
            self._finish(committed=committed)

    def rollback(self) -> None:
        """Roll back (owner thread, or any thread in queue mode). Idempotent."""
        if not self._claim():
            return
        try:
            self.tx._rollback()
        finally:
            self._finish(committed=False)

    def dropped(self) -> None:
        """The program dropped the connection with this transaction open.

        The connection's finalizer: runs in whichever thread freed the connection,
        possibly inside a garbage collection that interrupted anything, so it must not
        take a lock that this thread may already hold (see the module docstring).
        """
        self.doomed = "its connection was dropped without commit(), rollback() or close()"
        # Whatever happens next, the owner thread is no longer inside this transaction:
        # its own store calls must not be refused as if it were (`orphaned`).
        if isinstance(self.store._engine, LockEngine):
            if threading.get_ident() == self.owner:
                self.rollback()
                return
            # Only the owner can release the store's lock: its next call into the store
            # does it (Store._end_dropped_transaction), or its end. Set before
            # `orphaned`: an owner that sees that one must find this one.
            self.session.end_orphan = self.rollback
            self.session.orphaned = True
            return
        self.session.orphaned = True
        # Queue mode: rolling back waits for the session's lock (the writer may hold it,
        # as may this very thread if it is the writer) and takes the engine's, which
        # this thread may hold too: a short-lived thread of its own does it.
        try:
            rollback = threading.Thread(
                target=self._roll_back_dropped, name="safestore-dropped", daemon=True
            )
            rollback.start()
        except RuntimeError:  # interpreter shutdown: the exit hook closes the store
            self.session.idle_timeout = 0.0  # or the writer ends it when anyone waits

    def _roll_back_dropped(self) -> None:
        try:
            self.rollback()
        except Exception:  # nobody to raise to: the program dropped the connection
            log.debug("rolling back a dropped connection's transaction failed", exc_info=True)

    def abort(self, why: str) -> None:
        """Roll back from another thread (the connection is closing). Never blocks long.

        Lock mode: the store's lock is owned by the owner thread and only it can release
        it, so the rollback is left to the owner's next call (or its death).
        """
        self.doomed = why  # read by the connection's end hook, which logs it
        if isinstance(self.store._engine, LockEngine) and threading.get_ident() != self.owner:
            return
        self.rollback()


def connection_dropped(txs: set[ThreadTx]) -> None:
    """Finalizer of a connection the program dropped: end its open transactions."""
    for ttx in list(txs):  # nothing adds to it any more: the connection is gone
        try:
            ttx.dropped()
        except Exception:  # nothing to raise to
            log.debug("ending a dropped connection's transaction failed", exc_info=True)


def _owner_gone(ttx: ThreadTx) -> None:
    """Finalizer: the owner thread ended with the transaction open (runs in that thread)."""
    if ttx.ended:
        return
    # Logging here would make threading create a dummy Thread for the dying thread;
    # the connection logs the warning at its next use instead (see `on_end`).
    ttx.doomed = "the thread that opened it ended without commit() or rollback()"
    try:
        ttx.rollback()
    except Exception:  # nothing to raise to: the thread is gone
        log.debug("rolling back a dead thread's transaction failed", exc_info=True)


# --- raw statement runners: fn(conn, sql, params, many) on an engine connection -------


def run_sqlite(conn: Any, sql: str, params: Any, many: bool) -> Outcome:
    """Run one statement on a sqlite3 connection and fetch everything it returns."""
    return _run_sqlite(conn, sql, params, many, _RowidWatch(conn, sql))


def _run_sqlite(conn: Any, sql: str, params: Any, many: bool, rowid: _RowidWatch) -> Outcome:
    # The statement runs alone on the connection (its caller holds it), so the
    # connection's count of changes moves by exactly this statement's, as sqlite3's
    # total_changes counts them: triggers' rows included, whatever its first word.
    changes_before = conn.total_changes
    cur = conn.executemany(sql, params) if many else conn.execute(sql, params)
    try:
        description = cur.description
        rows = cur.fetchall() if description is not None else []
        rowcount = cur.rowcount
        changes = conn.total_changes - changes_before
        lastrowid = None
        if rowid.changed(rowcount, changes, many):
            after = last_insert_rowid(conn) if many else cur.lastrowid
            lastrowid = rowid.new(after, None if many else params)
        return Outcome(rows, description, rowcount, lastrowid, changes)
    finally:
        cur.close()


class _RowidWatch:
    """Tells whether a statement inserted a row, and so whether the connection's last
    rowid after it is the statement's (sqlite3's `lastrowid`), or still an earlier
    statement's, possibly another thread's.

    An INSERT or REPLACE that sqlite3 counts rows of (`rowcount`) inserted them,
    except an upsert that updated instead. For that, and for statements sqlite3 does
    not count (WITH ... INSERT, an INSERT after an empty statement), whose changes may
    be only their triggers', the rowid before the statement is noted, to compare.
    """

    __slots__ = ("_before", "_conn", "_counted", "_inserts", "_sql")

    def __init__(self, conn: Any, sql: str) -> None:
        self._conn = conn
        self._sql = sql
        insert = is_insert(sql)
        self._inserts = insert or starts_with_cte(sql)  # it may insert rows
        self._counted = insert and not uncounted(sql)
        compare = self._inserts and (not self._counted or is_upsert(sql))
        self._before = last_insert_rowid(conn) if compare else None

    def changed(self, rowcount: int, changes: int, many: bool) -> bool:
        """Whether the statement changed rows of its own, not only its triggers'."""
        if self._counted:  # executemany of INSERT ... RETURNING counts 0 in 3.11
            return rowcount > 0 or (many and changes > 0)
        return changes > 0

    def new(self, after: int, params: Any) -> int | None:
        """The statement's rowid, given that it changed rows and the connection's last
        rowid after it; None if it inserted none. `params`: its single parameter set,
        to tell by EXPLAIN whether an uncounted statement that left the rowid as it
        was inserted a row with that same rowid (None: not known, taken as not)."""
        if not self._inserts:
            return None
        if self._before is None or after != self._before:
            return after
        if not self._counted and params is not None and makes_rowids(self._conn, self._sql, params):
            return after  # a new row that got the same rowid
        return None


def run_sqlite_keeping(conn: Any, sql: str, params: Any, many: bool) -> Outcome:
    """`run_sqlite` where sqlite3 keeps what a failing statement did before it failed
    (the rows executemany inserted before the bad one, those a FAIL conflict kept):
    the error comes back in the outcome, with those changes and the last rowid. The
    caller counts them (`total_changes`, `lastrowid`) and raises the error after the
    write call has committed them (outside a transaction) or while they stay in the
    thread's transaction. An error that kept nothing (or after which the engine
    rolled everything back) is raised at once."""
    changes_before = conn.total_changes
    rowid = _RowidWatch(conn, sql)
    try:
        return _run_sqlite(conn, sql, params, many, rowid)
    except Exception as exc:
        changes = conn.total_changes - changes_before
        if not conn.in_transaction or changes == 0:
            raise
        lastrowid = rowid.new(last_insert_rowid(conn), None)
        return Outcome([], None, -1, lastrowid, changes, exc)


def duckdb_params(params: Any) -> Any:
    """duckdb binds only lists, tuples and dicts."""
    if params is None or isinstance(params, list | tuple | dict):
        return params
    if hasattr(params, "keys"):
        return dict(params)
    return list(params)


def run_duckdb(conn: Any, sql: str, params: Any, many: bool) -> Outcome:
    """Run one statement on a DuckDB connection and fetch everything it returns."""
    import duckdb

    statements = conn.extract_statements(sql)
    if len(statements) > 1:
        raise ProgrammingError("You can only execute one statement at a time.")
    st = duckdb.StatementType
    kind = statements[0].type if statements else None
    if many:
        seq = [duckdb_params(p) for p in params]
        if not seq:
            return Outcome([], None, 0)
        conn.executemany(sql, seq)
        rowcount = conn.rowcount
        conn.fetchall()
        return Outcome([], None, rowcount)
    conn.execute(sql, duckdb_params(params))
    rowcount = conn.rowcount
    description = conn.description
    rows = conn.fetchall() if description is not None else []
    if kind in (st.INSERT, st.UPDATE, st.DELETE, st.MERGE_INTO):
        if rowcount != -1:
            return Outcome([], None, rowcount)  # the engine's count row, not RETURNING
        return Outcome(rows, description, len(rows))
    if kind in (st.SELECT, st.EXPLAIN, st.PRAGMA, st.CALL):
        return Outcome(rows, description, -1)
    return Outcome([], None, -1)


def expired_error(ttx: ThreadTx) -> StoreError:
    return StoreError(
        f"this thread's transaction was rolled back, not committed: it was idle for more "
        f"than {ttx.session.idle_timeout:.1f}s while other threads' writes waited "
        "(commit sooner, or raise the connection's timeout)"
    )
