"""safestore: SQLite and DuckDB, safe and fast to share between threads.

One `Store` per database: writes go through a single writer thread that commits many
callers' writes together (group commit), reads run on per-thread connections, and a
lock mode is the simple fallback.
"""

from __future__ import annotations

from ._requests import Result
from ._store import Stats, Store
from ._transaction import Transaction
from .aio import AsyncStore, AsyncTransaction
from .dbapi import connect
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
    TimeoutError,
    Warning,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncStore",
    "AsyncTransaction",
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
    "Result",
    "Stats",
    "Store",
    "StoreClosedError",
    "StoreError",
    "TimeoutError",
    "Transaction",
    "Warning",
    "__version__",
    "connect",
    "dbapi",
]
