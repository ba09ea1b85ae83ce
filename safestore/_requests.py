"""Requests carried from callers to the writer, and the `Result` they produce.

Every request owns one future: a `concurrent.futures.Future` when the caller asked for
one (``wait=False``), else a lighter `Waiter` with the same methods. Whoever executes
the request (the writer thread in queue mode, the calling thread in lock mode) sets its
result or exception exactly once; the caller waits on it with a bound.
"""

from __future__ import annotations

import _thread
import builtins
import operator
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError, Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

from . import _lifecycle
from .errors import ProgrammingError


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one write call.

    Attributes:
        rowcount: rows changed by the call, or -1 where the engine does not know.
        lastrowid: rowid of the last row inserted by the call, or None.
        rows: the rows of a ``RETURNING`` clause, else an empty list.
    """

    rowcount: int
    lastrowid: int | None = None
    rows: list[tuple[Any, ...]] = field(default_factory=list)


Result.__module__ = "safestore"


class Rows(list[tuple[Any, ...]]):
    """The rows of a read, plus the engine cursor's ``description`` (None if unknown).

    A plain list to every caller of `Store.query`; the DB-API facade reads `description`.
    """

    __slots__ = ("description",)

    def __init__(self, rows: list[tuple[Any, ...]], description: Any = None) -> None:
        super().__init__(rows)
        self.description = description

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled and deep-copied as the plain list it is to callers: a description may
        # hold engine objects that cannot be pickled (DuckDB's column types).
        return (list, (list(self),))


_PENDING, _RUNNING, _CANCELLED, _FINISHED = range(4)


#: A turn that took longer than this to reach its caller means that something else
#: holds the GIL (a busy thread keeps it for whole switch intervals): the caller then
#: wakes everyone left in the chain at once instead of one more (see Waiter) ...
SLOW_TURN = 0.001
#: ... and the next this many groups are woken all at once, before turns are tried
#: again: with a CPU-bound thread around, every turn would cost a switch interval.
SLOW_GROUPS = 20


class Turns:
    """Whether a store's writer wakes a group's callers in turn (shared, per store).

    `skip` counts the groups still to be woken all at once; any caller that saw a slow
    turn sets it, the writer counts it down. A plain int: a lost update between threads
    only moves the moment turns are tried again.
    """

    __slots__ = ("skip",)

    def __init__(self) -> None:
        self.skip = 0


class Waiter:
    """The subset of `concurrent.futures.Future` the writer and a blocked caller use.

    A Future builds a Python-level `threading.Condition` and notifies it under an RLock;
    with dozens of threads contending for the GIL that costs more than the write itself.
    A Waiter is two C locks: `_state_lock` makes each state change atomic (the race
    between a caller's `cancel()` and the writer's `set_running_or_notify_cancel()` is
    decided there, exactly as in Future), and `_done` is held from creation until the
    caller may go on, so waiting is one blocking acquire.

    Waking in turn. When a group commits, its callers are woken one after another
    rather than all at once (`finish_in_turn`): the writer wakes the first, and each
    caller, as soon as it wakes, wakes the next (`_next`). Fifty callers woken at once
    all contend for the GIL, and each failed attempt is one more sleep and wake-up in
    the kernel; woken in turn, each finds the GIL free more often (measured: 50 threads
    commit 10-35% more rows per second). Nobody may be stranded by it:

    - a caller that gave up before the commit (`cancel()` of a running request) is
      marked `_abandoned`, and the writer does not make it a link;
    - a caller that leaves after it became a link (KeyboardInterrupt, or any error on
      its way out of `Store._submit`) passes its turn on as it leaves (`leave`);
    - a caller whose result is already set never waits for its turn: it takes the
      result and passes the turn on at once, and one whose wait times out checks for
      that first, so a broken chain costs at most a timeout, never a hang;
    - a turn that took longer than `SLOW_TURN` to arrive wakes all the rest at once,
      and the next `SLOW_GROUPS` groups are woken all at once (`Turns`).

    `_next` is taken and cleared under the link's `_state_lock`, so each turn is passed
    on exactly once and every `_done` is released exactly once.
    """

    __slots__ = (
        "_abandoned",
        "_done",
        "_error",
        "_next",
        "_state",
        "_state_lock",
        "_turn_at",
        "_turns",
        "_value",
    )

    def __init__(self) -> None:
        self._done = _thread.allocate_lock()
        self._done.acquire()
        self._state_lock = _thread.allocate_lock()
        self._state = _PENDING
        self._value: Any = None
        self._error: BaseException | None = None
        self._next: Waiter | None = None  # whom to wake when woken (see finish_in_turn)
        self._turn_at = 0.0  # when its turn was passed to it (time.monotonic())
        self._turns: Turns | None = None  # its store's policy, while it is a link
        self._abandoned = False  # the caller stopped waiting before the result came

    def set_running_or_notify_cancel(self) -> bool:
        """Claim it for execution; False if the caller cancelled first."""
        with self._state_lock:
            if self._state == _CANCELLED:
                return False
            self._state = _RUNNING
            return True

    def cancel(self) -> bool:
        """Withdraw it unless execution has started; True if it is (now) cancelled.

        Cancelling a running request only records that its caller stops waiting (see
        the class docstring); it still runs to the end.
        """
        with self._state_lock:
            if self._state == _PENDING:
                self._state = _CANCELLED
                self._done.release()
            elif self._state == _RUNNING:
                self._abandoned = True
            return self._state == _CANCELLED

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def done(self) -> bool:
        return self._state in (_CANCELLED, _FINISHED)

    def _finish(self, value: Any, error: BaseException | None) -> None:
        with self._state_lock:
            if self._state in (_CANCELLED, _FINISHED):
                raise InvalidStateError(
                    f"the request is already {'cancelled' if self._state == _CANCELLED else 'finished'}"
                )
            self._value, self._error = value, error
            self._state = _FINISHED
            self._done.release()

    def set_result(self, value: Any) -> None:
        self._finish(value, None)

    def set_exception(self, error: BaseException) -> None:
        self._finish(None, error)

    def finish_in_turn(
        self, value: Any, error: BaseException | None, then: Waiter | None, turns: Turns
    ) -> bool:
        """Resolve it without waking its caller, who wakes `then` once woken in turn.

        Returns False, and wakes the caller at once, if the caller has stopped waiting:
        it cannot pass a turn on, so it must not be a link of the chain.
        """
        with self._state_lock:
            if self._state != _RUNNING:
                raise InvalidStateError(f"the request is not running (state {self._state})")
            self._value, self._error = value, error
            self._state = _FINISHED
            if self._abandoned:
                self._done.release()
                return False
            self._next = then
            self._turns = turns
            return True

    def wake(self) -> None:
        """Give the first turn to a waiter resolved with `finish_in_turn`."""
        self._turn_at = time.monotonic()
        self._done.release()

    def leave(self) -> None:
        """Its caller stops waiting: keep it out of a chain, or pass its turn on."""
        with self._state_lock:
            if self._state in (_PENDING, _RUNNING):
                self._abandoned = True
        self._pass_on()

    def _pass_on(self, rest: bool = False) -> None:
        """Give the turn to the next caller of the chain; with `rest`, to all of them.

        Taking a link's `_next` and releasing it happen together, with no call in
        between: Python checks for signals after calls, and a KeyboardInterrupt between
        the two would lose the turn.
        """
        now = time.monotonic()
        link: Waiter = self
        while True:
            with link._state_lock:
                nxt = link._next
                if nxt is None:
                    return
                link._next = None
                nxt._turn_at = now
                nxt._done.release()
            if not rest:
                return
            link = nxt

    def _wait(self, timeout: float | None) -> None:
        try:
            if self._state == _FINISHED:  # resolved: no need to wait for a turn
                self._pass_on()
                return
            woken = self._done.acquire(timeout=-1 if timeout is None else max(0.0, timeout))
            if woken:
                self._done.release()  # stay released: later waits return at once
                # First thing, so that the next caller's wake-up overlaps ours.
                turn_at = self._turn_at
                slow = bool(turn_at) and time.monotonic() - turn_at > SLOW_TURN
                if slow and self._turns is not None:
                    self._turns.skip = SLOW_GROUPS
                self._pass_on(rest=slow)
            elif self._state == _FINISHED:  # resolved meanwhile; its turn is late
                self._pass_on()
                woken = True
        except BaseException:
            self.leave()
            raise
        if not woken:
            raise builtins.TimeoutError()
        if self._state == _CANCELLED:
            raise CancelledError()

    def result(self, timeout: float | None = None) -> Any:
        self._wait(timeout)
        if self._error is not None:
            raise self._error
        return self._value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return self._error


class Request:
    """Base of everything the writer executes. `future` is resolved exactly once."""

    __slots__ = ("future",)

    #: True for requests that change the database (counted in stats); False for markers.
    is_write = True
    #: True if the caller may run it itself on an idle writer's connection (see
    #: QueueEngine.submit). Not run() functions: they are promised the writer thread.
    lendable = False

    def __init__(self) -> None:
        # A Waiter unless the caller wants a real Future (Store._submit swaps it in).
        self.future: Future[Any] | Waiter = Waiter()


class Insert(Request):
    """Insert `rows` (tuples in `columns` order) into `table`. Names are already quoted."""

    __slots__ = ("columns", "rows", "table")
    lendable = True

    def __init__(self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        self.future = Waiter()  # as Request.__init__, without the super() call (hot path)
        self.table = table
        self.columns = columns
        self.rows = rows


class Execute(Request):
    """One SQL statement with its parameters."""

    __slots__ = ("params", "sql")
    lendable = True

    def __init__(self, sql: str, params: Any) -> None:
        super().__init__()
        self.sql = sql
        self.params = params


class ExecuteMany(Request):
    """One SQL statement run for each parameter set; `rowcount` is summed."""

    __slots__ = ("seq_of_params", "sql")
    lendable = True

    def __init__(self, sql: str, seq_of_params: list[Any]) -> None:
        super().__init__()
        self.sql = sql
        self.seq_of_params = seq_of_params


class Run(Request):
    """A user function called as ``fn(conn, *args, **kwargs)`` inside the write transaction."""

    __slots__ = ("args", "fn", "kwargs")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]):
        super().__init__()
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def call(self, conn: Any) -> Any:
        """Call ``fn(conn, *args, **kwargs)``; on the thread that holds the connection.

        A function that forks comes back twice. In the child it comes back inside the
        parent's write transaction (in queue mode on a copy of the writer, the child's
        only thread, where nothing of the caller's program runs): anything more done on
        the inherited connection (the rest of the group, the COMMIT) would write the
        parent's unfinished transaction into its file. So the child leaves at once,
        without a word to the database.
        """
        generation = _lifecycle.fork_generation
        try:
            return self.fn(conn, *self.args, **self.kwargs)
        finally:
            if _lifecycle.fork_generation != generation:
                _lifecycle.leave_forked_child(
                    "a run() function forked the process inside the store's write "
                    "transaction, which belongs to the parent: the child cannot go on "
                    "from there, so it exits now. Fork outside run() instead"
                )


class LendableRun(Run):
    """A function of safestore's own (the DB-API's statement runners) that needs no
    particular thread, so an idle writer may lend it the connection like a write."""

    __slots__ = ()
    lendable = True


class Flush(Request):
    """A marker: resolved once everything queued before it has committed or failed."""

    __slots__ = ()
    is_write = False


class TxSession(Request):
    """A `transaction()` block waiting for, then holding, the writer connection.

    Handover protocol (queue mode). The writer, on reaching this request, commits what
    came before it, begins a write transaction and sets `granted`. From then on the
    owning thread uses the writer connection directly while the writer waits for
    `done`. `lock` serialises the two threads' use of the session: the owner holds it
    for each statement and for commit/rollback; the writer takes it to expire an idle
    session. `future` resolves when the session has ended.

    Races and how they end:
    - The owner gives up waiting for the grant (timeout) just as the writer grants it:
      both sides decide under `lock`; the owner sets `abandoned` only if `granted` is
      not yet set, and the writer, after beginning, checks `abandoned` under `lock` and
      rolls back.
    - The session idles past `idle_timeout`: the writer, under `lock`, rolls back and
      sets `expired`; the owner's next call sees it under `lock` and raises.
    """

    __slots__ = (
        "abandoned",
        "conn",
        "done",
        "end_orphan",
        "error",
        "expired",
        "granted",
        "idle_timeout",
        "last_used",
        "lock",
        "lost",
        "orphaned",
    )
    is_write = False

    def __init__(self, idle_timeout: float) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.granted = threading.Event()
        self.done = threading.Event()
        self.conn: Any = None
        self.error: BaseException | None = None
        self.abandoned = False
        self.expired = False
        #: The error of the statement after which the engine had rolled the whole
        #: transaction back (SQLite's ROLLBACK conflict clause, a full disk), if any.
        self.lost: BaseException | None = None
        #: The owner's DB-API connection was dropped with this session open: the owner
        #: thread is no longer inside it, even if it is not ended yet.
        self.orphaned = False
        #: Lock mode: rolls back such a session; the owner thread must call it (only it
        #: can release the store's lock), at its next call into the store.
        self.end_orphan: Callable[[], None] | None = None
        self.idle_timeout = idle_timeout
        self.last_used = time.monotonic()

    def fail(self, exc: BaseException) -> None:
        """Refuse the session (writer died or closed) and wake its owner."""
        with self.lock:
            self.error = exc
            self.granted.set()
            self.done.set()
        try:
            self.future.set_exception(exc)
        except InvalidStateError:
            pass  # the owner withdrew (cancelled) it in the meantime


# --- argument checking for insert(), done on the caller's thread -----------------------


def quote_identifier(name: object, what: str) -> str:
    """Validate a table or column name and return it double-quoted for SQL.

    Any non-empty string without a NUL character is a valid SQL identifier once quoted
    (embedded double quotes are doubled), so nothing a user passes can escape the quotes.
    """
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    if not name:
        raise ProgrammingError(f"{what} must not be empty")
    if "\x00" in name:
        raise ProgrammingError(f"{what} {name!r} contains a NUL character")
    if len(name) > 1000:
        raise ProgrammingError(f"{what} is {len(name)} characters long (at most 1000)")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ProgrammingError(f"{what} {name!r} is not valid UTF-8 text") from exc
    return '"' + name.replace('"', '""') + '"'


def unquote_identifier(quoted: str) -> str:
    """The name `quote_identifier` quoted (for APIs that take names as they are)."""
    return quoted[1:-1].replace('""', '"')


class _Shape(NamedTuple):
    """What `build_insert` needs for one (table, keys): names validated and quoted."""

    table: str
    columns: tuple[str, ...]
    getter: operator.itemgetter[Any]  # a row's values in column order, in C
    single: bool  # one column: `getter` returns the bare value, not a 1-tuple


# (table, keys) -> _Shape. Callers insert the same few shapes over and over; checking
# and quoting them once saves most of build_insert's time. Plain dict operations, safe
# under concurrent use; cleared when it grows past 512.
_shapes: dict[tuple[object, tuple[Any, ...]], _Shape] = {}


def build_insert(table: object, row_or_rows: object) -> Insert:
    """Check `insert()`'s arguments and build the request (rows as tuples)."""
    if type(row_or_rows) is dict:  # the common case, without an ABC check
        # One plain dict of a shape seen before: its keys are the shape's, so nothing
        # is left to check (the most frequent call of a busy store, kept short).
        try:
            shape = _shapes[(table, tuple(row_or_rows))]
            value = shape.getter(row_or_rows)
        except (KeyError, TypeError):  # a new shape, or a bad one: the full check below
            pass
        else:
            return Insert(shape.table, shape.columns, [(value,) if shape.single else value])
        rows: Sequence[object] = (row_or_rows,)
    elif isinstance(row_or_rows, Mapping):
        rows = (row_or_rows,)
    elif isinstance(row_or_rows, Sequence) and not isinstance(row_or_rows, str | bytes):
        rows = row_or_rows
    else:
        raise TypeError(
            "insert() takes one mapping or a sequence of mappings, "
            f"not {type(row_or_rows).__name__}"
        )
    if not rows:
        raise ProgrammingError(f"insert() into {table!r} got no rows")
    first = rows[0]
    if type(first) is not dict and not isinstance(first, Mapping):
        raise TypeError(f"row 0 of insert() is a {type(first).__name__}, not a mapping")
    keys = tuple(first)
    try:
        shape = _shapes[(table, keys)]
    except (KeyError, TypeError):
        quoted_table = quote_identifier(table, "table name")
        if not keys:
            raise ProgrammingError(f"row 0 of insert() into {table!r} has no columns") from None
        columns = tuple(quote_identifier(k, "column name") for k in keys)
        # itemgetter pulls a row's values in C (3x faster than a generator on 100k
        # rows); with one key it returns the bare value, not a 1-tuple.
        shape = _Shape(quoted_table, columns, operator.itemgetter(*keys), len(keys) == 1)
        if len(_shapes) >= 512:
            _shapes.clear()
        _shapes[(table, keys)] = shape
    quoted_table, columns, getter, single = shape
    values: list[tuple[Any, ...]] | None = None
    if len(rows) > 1 and type(rows) in (list, tuple):  # walked three times: real sequences
        values = _dict_values(cast("list[dict[Any, Any]]", rows), getter, len(keys))
        if values is not None and single:
            values = [(v,) for v in values]
    if values is None:
        values = []
        key_set = first.keys()
        append = values.append
        for i, row in enumerate(rows):
            if (type(row) is not dict and not isinstance(row, Mapping)) or row.keys() != key_set:
                _bad_row(table, i, row, keys)
            append((getter(row),) if single else getter(row))  # type: ignore[arg-type]
    return Insert(quoted_table, columns, values)


def _dict_values(
    rows: list[dict[Any, Any]], getter: operator.itemgetter[Any], nkeys: int
) -> list[Any] | None:
    """`getter` applied to every row, checked and converted in C, or None to fall back.

    Only for plain dicts with `nkeys` keys, as many as row 0: each then has exactly
    row 0's keys if `getter` finds them all. Twice as fast as `build_insert`'s loop
    for a large insert. None for anything else, and for a row with other keys or one
    replaced meanwhile by another thread: the loop then names it.
    """
    if set(map(type, rows)) != {dict} or set(map(len, rows)) != {nkeys}:
        return None
    try:
        return list(map(getter, rows))
    except (KeyError, TypeError):
        return None


def _bad_row(table: object, i: int, row: object, keys: tuple[Any, ...]) -> None:
    if not isinstance(row, Mapping):
        raise TypeError(f"row {i} of insert() is a {type(row).__name__}, not a mapping")
    raise ProgrammingError(
        f"row {i} of insert() into {table!r} has keys {sorted(map(str, row))}, "
        f"row 0 has {sorted(map(str, keys))}: every row needs the same keys"
    )
