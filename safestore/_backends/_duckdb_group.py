"""DuckDB group commit: many callers' writes in one transaction, each failure isolated.

This is the half of `DuckDBBackend` that `commit_group` needs: the grouping and replay
logic, the appender units, and `_precheck`, which refuses transaction control that would
end the group's transaction (`apply` uses it too). It is kept apart from the connection,
transaction and read handling in ``_duckdb.py``, and written as a mixin, `GroupCommit`,
which `DuckDBBackend` inherits: the algorithm lives here, while the state it works on
(which connections have a transaction open, whether its BEGIN was sent, the appender
cache) and the transaction primitives (`_ensure_tx`, `_forget_tx`, `_probe`, `rollback`)
stay with the backend that owns them. The `TYPE_CHECKING` block in the class names
exactly what the mixin borrows, and mypy checks the backend's versions against those
signatures. This module imports nothing from ``_duckdb.py`` (no import cycle) and only
``_duckdb.py`` imports it, so ``duckdb`` is still loaded only when a DuckDB store is
opened.

Group commit without savepoints. DuckDB has no SAVEPOINT, and the first failing
statement aborts the whole transaction (every later statement raises "Current
transaction is aborted", and COMMIT then *silently rolls back*). `commit_group`
therefore never lets a failure reach COMMIT: when a request fails, the transaction is
rolled back, the requests that had succeeded before it are replayed and committed in a
transaction of their own, the failing one gets its error, and the rest carry on in a new
transaction. Consecutive inserts into the same table and columns go through one appender
flush (all or nothing); if it fails, the run is split in halves until the culprit(s) are
found. `run()` functions cannot be replayed (they must run once), so each gets a
transaction of its own. Before every COMMIT a cheap statement probes the transaction: if
it was aborted (a statement failed that we did not see, e.g. inside a `run()` function
that caught the error), the work is rolled back and reported as failed, never as
committed.

Threads. Everything here runs on the thread that holds the writer connection: the writer
thread in queue mode, the lock holder in lock mode, or a `transaction()` block's owner
(which reaches `_precheck` and `_apply_unit` through `apply`). The connection changes
hands only between whole calls, so the appender cache is used by one thread at a time
and needs no lock of its own. Reader threads never get here: they read through `read`,
and an appender is only ever created on the writer connection.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import duckdb

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
from ..errors import ProgrammingError, translate
from . import Outcome
from ._duckdb_guard import analyzed

log = logging.getLogger("safestore")

_ST = duckdb.StatementType
# A cheap pre-filter: only statements containing one of these words are parsed to see
# whether they are transaction control (which would end the group's transaction).
_TX_WORDS = re.compile(r"\b(begin|commit|rollback|abort|end|start)\b", re.IGNORECASE)
_MAX_APPENDERS = 64

# A merged insert unit is a tuple of Insert requests; any other unit holds one request.
Unit = tuple[Request, ...]


class GroupCommit:
    """Group commit, its statement check and the appender, for `DuckDBBackend`.

    Holds no state of its own. Used only by the thread that holds the writer
    connection, so nothing here locks.
    """

    if TYPE_CHECKING:
        # Provided by DuckDBBackend (see its __init__ for what each one tracks).
        _open: set[int]
        _lazy: set[int]
        _appenders: dict[tuple[int, str, tuple[str, ...]], Any]

        def rollback(self, conn: Any) -> None: ...
        def _ensure_tx(self, conn: Any) -> None: ...
        def _forget_tx(self, conn: Any) -> None: ...
        def _probe(self, conn: Any) -> None: ...
        def _apply_one(self, conn: Any, request: Request) -> Any: ...

    def commit_group(self, conn: Any, requests: Sequence[Request]) -> list[Outcome]:
        # Entered inside the transaction the caller began; the first attempt (or run()
        # function) uses it, later ones begin their own. Parts of the group may commit
        # in separate transactions (in order), so a failing COMMIT never raises here:
        # it becomes the outcome of the requests it carried (retried one at a time).
        done: dict[int, Outcome] = {}
        units: list[Unit] = []

        def flush_units() -> None:
            if units:
                self._commit_units(conn, list(units), done)
                units.clear()

        for req in requests:
            problem = self._precheck(conn, req)
            if problem is not None:
                done[id(req)] = (req, None, problem)
            elif isinstance(req, Run):
                flush_units()
                done[id(req)] = self._run_alone(conn, req)
            elif isinstance(req, Flush):
                done[id(req)] = (req, None, None)
            elif (
                isinstance(req, Insert)
                and units
                and isinstance(last := units[-1][0], Insert)
                and last.table == req.table
                and last.columns == req.columns
            ):
                units[-1] = (*units[-1], req)
            else:
                units.append((req,))
        flush_units()
        if id(conn) in self._open:  # the caller's transaction was never used
            self.rollback(conn)
        return [done[id(req)] for req in requests]

    def _commit_units(self, conn: Any, queue: list[Unit], done: dict[int, Outcome]) -> None:
        """Commit `queue` in order, isolating failures (see the module docstring).

        Each failure costs at most two rollbacks (its request is tried again at the
        start of a transaction) and one extra commit (for the requests before it,
        replayed), so the work stays linear in the number of requests.
        """
        while queue:
            n_ok, values, exc = self._attempt(conn, queue)
            if exc is None:
                self._record(queue, values, done)
                return
            if n_ok == len(queue):
                # Every statement ran but COMMIT failed: no telling which request caused
                # it, so commit them one at a time.
                if len(queue) == 1 and len(queue[0]) == 1:
                    self._record_error(queue[0], exc, done)
                    return
                singles = [(req,) for unit in queue for req in unit]
                for unit in singles:
                    self._commit_units(conn, [unit], done)
                return
            # A unit that close() interrupted (it would not end) is never run again.
            interrupted = isinstance(exc, duckdb.InterruptException)
            if n_ok:
                # queue[:n_ok] succeeded but was rolled back with the failure: commit it
                # on its own (it is strictly shorter, so this terminates). The failing
                # request then runs again, first in a transaction of its own: it may
                # have failed only because of the others' changes (CHECKPOINT refuses
                # to run after writes in the same transaction).
                self._commit_units(conn, queue[:n_ok], done)
                queue = queue[n_ok:]
                if not interrupted:
                    continue
            head = queue[0]
            if len(head) > 1 and not interrupted:
                # A merged insert failed: try each half; the failing request(s) end up
                # alone and get their own error.
                mid = len(head) // 2
                queue = [head[:mid], head[mid:], *queue[1:]]
            else:
                self._record_error(head, exc, done)
                queue = queue[1:]

    def _attempt(
        self, conn: Any, queue: list[Unit]
    ) -> tuple[int, list[list[Any]], Exception | None]:
        """Apply `queue` in one transaction and commit it.

        Returns (units applied, their values, None) on success; on a failure, rolls back
        and returns (index of the failing unit, values before it, its error), or
        (len(queue), ..., error) when the commit itself failed.

        Every statement here is ours, and any failure is caught and rolled back before
        anything else runs, so no aborted transaction can reach this COMMIT: no probe
        is needed (unlike after a run() function).
        """
        if len(queue) == 1 and isinstance(queue[0][0], Insert) and id(conn) in self._lazy:
            # One appender flush is one statement, atomic in autocommit: no BEGIN or
            # COMMIT needed (a failed flush leaves nothing behind).
            self._forget_tx(conn)
            try:
                return 1, [self._apply_unit(conn, queue[0])], None
            except Exception as exc:
                return 0, [], exc
        try:
            self._ensure_tx(conn)
        except Exception as exc:
            self.rollback(conn)
            return 0, [], exc
        values: list[list[Any]] = []
        try:
            for i, unit in enumerate(queue):
                try:
                    values.append(self._apply_unit(conn, unit))
                except Exception as exc:
                    self.rollback(conn)
                    return i, values, exc
            try:
                conn.execute("COMMIT")
            except Exception as exc:
                self.rollback(conn)
                return len(queue), values, exc
        except BaseException:
            self.rollback(conn)
            raise
        self._forget_tx(conn)
        return len(queue), values, None

    @staticmethod
    def _record(queue: list[Unit], values: list[list[Any]], done: dict[int, Outcome]) -> None:
        for unit, unit_values in zip(queue, values, strict=True):
            for req, value in zip(unit, unit_values, strict=True):
                done[id(req)] = (req, value, None)

    @staticmethod
    def _record_error(unit: Unit, exc: BaseException, done: dict[int, Outcome]) -> None:
        err = translate(exc)
        for req in unit:
            done[id(req)] = (req, None, err)

    def _run_alone(self, conn: Any, req: Run) -> Outcome:
        """A run() function, called exactly once, in a transaction of its own."""
        try:
            self._ensure_tx(conn)
        except Exception as exc:
            self.rollback(conn)
            return (req, None, translate(exc))
        try:
            self._appenders.clear()  # fn may change the schema
            value = req.call(conn)
        except BaseException as exc:  # SystemExit from fn too: it is fn's own error
            self.rollback(conn)
            return (req, None, translate(exc))
        try:
            self._probe(conn)
            conn.execute("COMMIT")
        except duckdb.TransactionException as exc:
            self.rollback(conn)
            if "no transaction is active" in str(exc):
                # The function committed (or rolled back) itself; what it did stands.
                log.warning(
                    "a run() function ended the write transaction itself; do not commit in it"
                )
                return (req, value, None)
            return (req, None, translate(exc))
        except Exception as exc:
            self.rollback(conn)
            return (req, None, translate(exc))
        self._forget_tx(conn)
        return (req, value, None)

    # --- transaction-control refusal -------------------------------------------------

    def _precheck(self, conn: Any, req: Request) -> Exception | None:
        """Refuse, before anything runs, statements that would end our transaction."""
        if not isinstance(req, Execute | ExecuteMany) or not _TX_WORDS.search(req.sql):
            return None
        try:
            statements = conn.extract_statements(req.sql)
            # EXPLAIN ANALYZE COMMIT runs the COMMIT it explains.
            for explain in [s for s in statements if s.type == _ST.EXPLAIN]:
                inner = analyzed(explain.query)
                statements += conn.extract_statements(inner) if inner else []
        except (duckdb.Error, ValueError):
            return None  # let the engine report it when the statement runs
        if any(s.type == _ST.TRANSACTION for s in statements):
            return ProgrammingError(
                "execute() cannot run BEGIN/COMMIT/ROLLBACK: every write call is already "
                "atomic; use store.transaction() for several statements"
            )
        return None

    # --- appender units --------------------------------------------------------------

    def _apply_unit(self, conn: Any, unit: Unit) -> list[Any]:
        first = unit[0]
        if isinstance(first, Insert):
            key = (id(conn), first.table, first.columns)
            appender = self._appenders.get(key)
            if appender is None:
                if len(self._appenders) >= _MAX_APPENDERS:
                    self._appenders.clear()
                # The appender takes column names unquoted; `build_insert` quotes them.
                columns = [unquote_identifier(c) for c in first.columns]
                try:
                    appender = conn.appender(first.table, columns=columns)
                except duckdb.InvalidInputException as exc:
                    # A column the table lacks or generates: the appender words it as
                    # its own error, where execute("INSERT ...") gets the binder's.
                    # Raise the binder's, so the same except clause catches both.
                    raise _binder_error(conn, first) or exc from None
                self._appenders[key] = appender
            try:
                # One call for the whole unit: every call into duckdb may give up the
                # GIL and wait to get it back behind the callers this batch woke.
                if len(unit) == 1:
                    appender.append_rows(first.rows)
                else:
                    appender.append_rows([row for req in unit for row in req.rows])  # type: ignore[attr-defined]
                appender.flush()
            except BaseException:
                appender.clear()  # drop what an append that failed midway kept
                del self._appenders[key]
                raise
            return [Result(len(req.rows), None, []) for req in unit]  # type: ignore[attr-defined]
        return [self._apply_one(conn, first)]


def _binder_error(conn: Any, req: Insert) -> duckdb.Error | None:
    """The error the INSERT statement equivalent to `req` gets from the engine as it is
    planned (nothing runs), or None if it plans."""
    marks = ",".join("?" * len(req.columns))
    sql = f"EXPLAIN INSERT INTO {req.table} ({','.join(req.columns)}) VALUES ({marks})"
    try:
        conn.execute(sql, list(req.rows[0])).fetchall()
    except duckdb.Error as err:
        return err
    return None
