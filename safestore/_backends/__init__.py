"""What differs between engines, behind one small interface.

The writer loop (`safestore._writer`), lock mode (`safestore._locked`) and the readers
(`safestore._readers`) only talk to a `Backend`; each engine module implements it. The
engine modules are imported by name when a store of that kind is opened, so SQLite users
never import ``duckdb``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .._forksafe import gated
from .._requests import Request

__all__ = ["Backend", "Config", "Outcome", "open_backend"]

#: What one request came to: its value, or the exception its caller gets.
Outcome = tuple[Request, Any, BaseException | None]


@dataclass(frozen=True, slots=True)
class Config:
    """The store's settings that a backend needs to open connections."""

    path: str  # a file path, or ":memory:"
    durability: str  # "full" | "normal"
    timeout: float
    read_only: bool
    #: True when readers must share the writer connection (an in-memory SQLite database
    #: cannot be opened twice); the owner then serialises every use with one lock.
    in_memory: bool


class Backend(Protocol):
    """One engine. Connections are opaque to everything outside the backend module."""

    name: str
    #: How many requests the writer waits for before it commits a group, at most
    #: (None: as many as the previous group held). See `safestore._writer._loop`.
    group_target: int | None
    #: Whether the interpreter may exit while a daemon thread is inside an engine call
    #: (see QueueEngine.abandon_at_exit).
    may_exit_mid_call: bool

    def connect_writer(self) -> Any:
        """Open the connection all writes go through (also lock mode's only connection)."""

    def connect_reader(self, writer: Any) -> Any:
        """Open a read-only connection (or cursor) for the calling thread."""

    def close(self, conn: Any) -> None:
        """Close a connection; never raises."""

    def interrupt(self, conn: Any) -> None:
        """Abort whatever statement `conn` is running in another thread; never raises."""

    def commit_group(self, conn: Any, requests: Sequence[Request]) -> list[Outcome]:
        """Apply `requests` in order and commit them together.

        Called inside a transaction the caller opened with `begin` (so the caller can
        withdraw requests whose callers gave up while it waited for the file lock). A
        request that fails gets its exception in the outcome and leaves no trace; the
        others commit. If the commit itself fails, raises (after rolling back), and
        nothing of the group is committed.
        """

    def begin(self, conn: Any) -> None:
        """Open a write transaction; waits up to the store timeout for other processes."""

    def commit(self, conn: Any) -> None:
        """Commit the open transaction (raises if the engine rolled it back instead)."""

    def rollback(self, conn: Any) -> None:
        """Roll back the open transaction, if any; never raises."""

    def run_script(self, conn: Any, script: str) -> None:
        """Run a multi-statement SQL script in one transaction (the `setup` script)."""

    def in_transaction(self, conn: Any) -> bool:
        """Whether a transaction is open on `conn`."""

    def is_closed(self, conn: Any) -> bool:
        """Whether `conn` was closed behind safestore's back (by a run() function).

        May run a statement: called only after a write failed."""

    def release_in_child(self, conn: Any) -> bool:
        """In a forked child, close inherited `conn` if that is safe; True if closed."""

    def apply(self, conn: Any, request: Request) -> Any:
        """Execute one request inside the open transaction, without isolation.

        Used inside `transaction()` blocks, where a failing statement fails the block's
        owner, who decides what to do.
        """

    def apply_in_block(self, conn: Any, request: Request) -> Any:
        """`apply` for a call made through a `transaction()` block's `tx`: a call that
        fails leaves nothing of itself in the block, which stays open (on engines that
        keep a transaction open after a failed statement)."""

    def restore_after_read(self, conn: Any) -> None:
        """Put the writer connection back in its writing state after a shared read that
        close() interrupted: the interrupt may have hit the read's own cleanup (SQLite's
        ``PRAGMA query_only=0``, DuckDB's read-only COMMIT). Never raises."""

    def read(self, conn: Any, sql: str, params: Any, *, shared: bool) -> list[tuple[Any, ...]]:
        """Run a read-only statement and return all its rows.

        Raises ReadOnlyError, and changes nothing, if the statement would write.
        `shared` is True when `conn` is the writer connection (lock mode, in-memory).
        """


#: The Backend methods that call into the engine. Each runs under the calling thread's
#: fork gate (see safestore._forksafe), so that a fork never copies an engine mid-call.
ENGINE_CALLS = (
    "connect_writer",
    "connect_reader",
    "close",
    "interrupt",
    "commit_group",
    "begin",
    "commit",
    "rollback",
    "run_script",
    "in_transaction",
    "is_closed",
    "apply",
    "apply_in_block",
    "read",
    "restore_after_read",
)


def open_backend(name: str, config: Config) -> Backend:
    """Import the engine module for `name` and build its backend (fork-gated)."""
    module = importlib.import_module(f"{__name__}._{name}")
    backend: Backend = module.make_backend(config)
    # The gated methods live on a subclass, not on the instance: bound methods stored
    # on the backend itself would form a reference cycle, and a closed store's backend
    # (its connection objects, DuckDB's appenders) would wait for the cyclic GC.
    backend.__class__ = _gated_class(type(backend))
    return backend


_gated_classes: dict[type, type] = {}


def _gated_class(cls: type) -> type:
    """`cls` with every method of ENGINE_CALLS wrapped by `gated`; built once per class."""
    sub = _gated_classes.get(cls)
    if sub is None:
        namespace: dict[str, Any] = {m: gated(getattr(cls, m)) for m in ENGINE_CALLS}
        namespace["__slots__"] = ()  # the same layout, so instances can switch to it
        namespace["__qualname__"] = cls.__qualname__
        namespace["__module__"] = cls.__module__
        sub = _gated_classes.setdefault(cls, type(cls.__name__, (cls,), namespace))
    return sub
