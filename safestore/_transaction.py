"""The object a `with store.transaction() as tx:` block works with."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from . import _lifecycle
from ._args import check_sql
from ._backends import Backend
from ._forksafe import gate
from ._requests import Execute, ExecuteMany, Request, Result, TxSession, build_insert
from .errors import StoreError, translate

T = TypeVar("T")


class Transaction:
    """Statements of one atomic block, run on the caller's thread on the writer connection.

    Only the thread that opened the block may use it. Each call blocks until its
    statement has run; nothing is visible to other threads until the block exits
    normally and commits. A failing statement raises here (the engine's error) and
    leaves the block open: catch it to carry on, or let it propagate to roll back.
    """

    def __init__(self, backend: Backend, session: TxSession) -> None:
        self._backend = backend
        self._session = session
        self.writes = 0  # write calls made in the block, for the store's stats
        self._generation = _lifecycle.fork_generation  # changes in a forked child

    def _forked(self) -> bool:
        # A process forked inside the block inherits the open transaction: committing
        # (or running anything) there would commit the parent's unfinished work.
        return self._generation != _lifecycle.fork_generation

    def _check_fork(self) -> None:
        if self._forked():
            raise StoreError(
                "this transaction was opened in the parent process and cannot be used "
                "after fork(); nothing of it is committed from the child"
            )

    def _use(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(conn)` while holding the session (see TxSession's handover protocol)."""
        self._check_fork()
        s = self._session
        with s.lock:
            if s.expired:
                raise StoreError(
                    f"this transaction was rolled back: it was idle for more than "
                    f"{s.idle_timeout:.1f}s while other writes waited"
                )
            if s.done.is_set() or s.conn is None:
                raise StoreError("this transaction has already ended")
            if s.lost is not None:
                raise _lost_error(s.lost)
            s.last_used = time.monotonic()
            try:
                with gate():  # fn may call the engine directly (the DB-API's runners)
                    return fn(s.conn)
            except Exception as exc:
                if not self._backend.in_transaction(s.conn):
                    # The engine rolled the whole transaction back (SQLite: a ROLLBACK
                    # conflict clause, RAISE(ROLLBACK), a full disk). Later statements
                    # would autocommit one by one: refuse them and the commit.
                    s.lost = exc
                new = translate(exc)
                if new is exc:
                    raise
                raise new from exc.__cause__
            finally:
                s.last_used = time.monotonic()

    def _write(self, req: Request) -> Result:
        self.writes += 1
        result: Result = self._use(lambda conn: self._backend.apply_in_block(conn, req))
        return result

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Result:
        """Run one statement in the transaction and return its `Result`."""
        check_sql(sql)
        return self._write(Execute(sql, params))

    def executemany(self, sql: str, seq_of_params: Iterable[Any]) -> Result:
        """Run one statement per parameter set; `rowcount` is summed."""
        check_sql(sql)
        return self._write(ExecuteMany(sql, list(seq_of_params)))

    def insert(self, table: str, row_or_rows: Any) -> Result:
        """Insert one mapping or a sequence of mappings (same keys) into `table`."""
        return self._write(build_insert(table, row_or_rows))

    def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[tuple[Any, ...]]:
        """Run a read-only statement; it sees this block's own uncommitted writes."""
        check_sql(sql)
        rows: list[tuple[Any, ...]] = self._use(
            lambda conn: self._backend.read(conn, sql, params, shared=True)
        )
        return rows

    def query_one(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> tuple[Any, ...] | None:
        """Like `query` but return only the first row, or None."""
        rows = self.query(sql, params)
        return rows[0] if rows else None

    # --- used by Store.transaction() ----------------------------------------------------

    def _commit(self) -> None:
        self._check_fork()
        s = self._session
        with s.lock:
            if s.expired:
                raise StoreError(
                    f"this transaction was rolled back, not committed: it was idle for more "
                    f"than {s.idle_timeout:.1f}s while other writes waited"
                )
            if s.lost is not None:
                raise _lost_error(s.lost)
            s.last_used = time.monotonic()
            try:
                self._backend.commit(s.conn)
            except Exception as exc:
                self._backend.rollback(s.conn)
                new = translate(exc)
                if new is exc:
                    raise
                raise new from exc.__cause__
            finally:
                # Under the lock, so the writer never sees a finished block as idle.
                s.done.set()

    def _rollback(self) -> None:
        s = self._session
        with s.lock:
            # In a forked child the connection is the parent's: leave it alone.
            if not s.expired and s.conn is not None and not self._forked():
                self._backend.rollback(s.conn)
            s.done.set()


def _lost_error(cause: BaseException) -> StoreError:
    err = StoreError(
        f"this transaction was rolled back by the engine when a statement failed "
        f"({cause}); nothing of it will be committed"
    )
    err.__cause__ = cause
    return err


Transaction.__module__ = "safestore"
