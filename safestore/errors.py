"""Exceptions raised by safestore.

The tree follows PEP 249, with safestore's own conditions under `StoreError`::

    Exception
     ├─ Error                      PEP 249 root
     │   ├─ InterfaceError
     │   ├─ DatabaseError
     │   │   ├─ DataError
     │   │   ├─ OperationalError
     │   │   ├─ IntegrityError
     │   │   ├─ InternalError
     │   │   ├─ ProgrammingError
     │   │   └─ NotSupportedError
     │   └─ StoreError             safestore's own conditions
     │       ├─ StoreClosedError
     │       ├─ ReadOnlyError
     │       └─ TimeoutError       also a builtins.TimeoutError
     └─ Warning                    PEP 249

An error raised by the engine (``sqlite3`` or ``duckdb``) reaches the caller as an
instance of a class that derives from *both* the engine's class and the matching
class above, so ``except sqlite3.IntegrityError`` and ``except
safestore.IntegrityError`` both catch it. `translate` builds those instances.
"""

from __future__ import annotations

import builtins
import threading
from typing import Any

__all__ = [
    "DataError",
    "DatabaseError",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "NotSupportedError",
    "OperationalError",
    "ProgrammingError",
    "ReadOnlyError",
    "StoreClosedError",
    "StoreError",
    "TimeoutError",
    "Warning",
    "translate",
]


class Warning(Exception):
    """PEP 249 warning: raised for important warnings such as data truncation."""


class Error(Exception):
    """PEP 249 root of every error safestore raises."""


class InterfaceError(Error):
    """The database interface, not the database, was misused."""


class DatabaseError(Error):
    """An error reported by the database engine."""


class DataError(DatabaseError):
    """A value was out of range, of the wrong type, or could not be processed."""


class OperationalError(DatabaseError):
    """The database could not carry out an operation (disk full, file locked, I/O error)."""


class IntegrityError(DatabaseError):
    """A constraint (unique, foreign key, not null, check) was violated."""


class InternalError(DatabaseError):
    """The engine reported an internal inconsistency."""


class ProgrammingError(DatabaseError):
    """The SQL or its parameters were wrong (syntax, unknown table, parameter count)."""


class NotSupportedError(DatabaseError):
    """The engine does not support the requested operation."""


class StoreError(Error):
    """A condition of safestore itself, not of the engine (closed, forked, writer died)."""


class StoreClosedError(StoreError):
    """A call was made on a store after `close()`."""


class ReadOnlyError(StoreError):
    """A statement that would change the database reached `query()` or a read-only store."""


class TimeoutError(StoreError, builtins.TimeoutError):
    """A call waited longer than the store's `timeout` (queue space, result, file lock)."""


for _cls in (
    Warning,
    Error,
    InterfaceError,
    DatabaseError,
    DataError,
    OperationalError,
    IntegrityError,
    InternalError,
    ProgrammingError,
    NotSupportedError,
    StoreError,
    StoreClosedError,
    ReadOnlyError,
    TimeoutError,
):
    _cls.__module__ = "safestore"

# PEP 249 class names, most specific first, used to find the safestore class that
# matches an engine class by walking the engine class's MRO.
_PEP249_NAMES: dict[str, type[Exception]] = {
    "DataError": DataError,
    "OperationalError": OperationalError,
    "IntegrityError": IntegrityError,
    "InternalError": InternalError,
    "ProgrammingError": ProgrammingError,
    "NotSupportedError": NotSupportedError,
    "InterfaceError": InterfaceError,
    "DatabaseError": DatabaseError,
    "Error": Error,
    "Warning": Warning,
}

# Engine classes whose names are not PEP 249 names but whose meaning is clear. Keyed by
# (module, name); consulted before the MRO walk.
_EXTRA: dict[tuple[str, str], type[Exception]] = {}

# Cache of dual classes, one per engine class. Guarded by _dual_lock: two threads
# translating the same class at once must get the same dual class, or `except` on a
# class obtained earlier could miss.
_dual_cache: dict[type[BaseException], type[BaseException]] = {}
_dual_lock = threading.Lock()


def register_mapping(engine_cls: type[BaseException], safe_cls: type[Exception]) -> None:
    """Map an engine class whose name is not a PEP 249 name to a safestore class."""
    _EXTRA[(engine_cls.__module__, engine_cls.__name__)] = safe_cls


def safe_class_for(engine_cls: type[BaseException]) -> type[Exception]:
    """Return the safestore class that matches `engine_cls` (walking its MRO)."""
    for klass in engine_cls.__mro__:
        extra = _EXTRA.get((klass.__module__, klass.__name__))
        if extra is not None:
            return extra
        if klass.__module__ in ("builtins", "safestore"):
            continue
        found = _PEP249_NAMES.get(klass.__name__)
        if found is not None:
            return found
    return Error


def dual_class(
    engine_cls: type[BaseException], safe_cls: type[Exception] | None = None
) -> type[BaseException]:
    """Return a class deriving from both `engine_cls` and its safestore counterpart
    (`safe_cls` if given, else the one `safe_class_for` finds)."""
    try:
        return _dual_cache[engine_cls]
    except KeyError:
        pass
    with _dual_lock:
        cached = _dual_cache.get(engine_cls)
        if cached is not None:
            return cached
        if safe_cls is None:
            safe_cls = safe_class_for(engine_cls)
        # Keep the engine's module and name so tracebacks read exactly as the
        # engine's own ("sqlite3.IntegrityError: UNIQUE constraint failed ...").
        dual = type(
            engine_cls.__name__,
            (engine_cls, safe_cls),
            {"__module__": engine_cls.__module__, "__qualname__": engine_cls.__qualname__},
        )
        _dual_cache[engine_cls] = dual
        return dual


def translate(exc: BaseException) -> BaseException:
    """Return `exc` as an instance of its dual class (engine class + safestore class).

    Exceptions that are already safestore errors, or not engine errors at all (a
    `ValueError` raised by a user's function), are returned unchanged. The new instance
    keeps the original's arguments, attributes (``sqlite_errorcode`` ...), traceback,
    cause and context.
    """
    if isinstance(exc, Error | Warning) or not _is_engine_error(exc):
        return exc
    return _as(dual_class(type(exc)), exc)


#: The builtin classes sqlite3 reports a parameter value it cannot bind with:
#: OverflowError for an int beyond 64 bits, UnicodeEncodeError for a str holding a lone
#: surrogate. `bind_error` makes them safestore.DataError too.
BIND_ERRORS = (OverflowError, UnicodeEncodeError)


def bind_error(exc: BaseException) -> BaseException:
    """sqlite3's error for a parameter it could not bind, as one that is also a
    `safestore.DataError` (DuckDB reports the same values with its own classes).

    Only for errors raised while safestore itself runs a statement: the same classes
    raised by a user's run() function are the user's, and stay as they are.
    """
    if type(exc) not in BIND_ERRORS:
        return exc
    return _as(dual_class(type(exc), DataError), exc)


def _as(dual: type[BaseException], exc: BaseException) -> BaseException:
    """A copy of `exc` of class `dual` (a subclass of its class)."""
    try:
        new = dual(*exc.args)
    except Exception:  # an engine class with an unusual __init__: set args directly
        new = dual.__new__(dual)
        new.args = exc.args
    new.__dict__.update(getattr(exc, "__dict__", {}))
    new.__cause__ = exc.__cause__
    new.__context__ = exc.__context__
    new.__suppress_context__ = exc.__suppress_context__
    return new.with_traceback(exc.__traceback__)


_ENGINE_MODULES = ("sqlite3", "_duckdb", "duckdb")


def _is_engine_error(exc: BaseException) -> bool:
    module: Any = type(exc).__module__
    return isinstance(module, str) and module.split(".")[0] in _ENGINE_MODULES
