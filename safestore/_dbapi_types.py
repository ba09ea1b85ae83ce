"""PEP 249 type objects and constructors of `safestore.dbapi`."""

from __future__ import annotations

import datetime
import time

__all__ = [
    "BINARY",
    "DATETIME",
    "NUMBER",
    "ROWID",
    "STRING",
    "Binary",
    "DBAPITypeObject",
    "Date",
    "DateFromTicks",
    "Time",
    "TimeFromTicks",
    "Timestamp",
    "TimestampFromTicks",
]


class DBAPITypeObject:
    """Compares equal to every `description` type code of its kind (PEP 249).

    DuckDB reports a type per column (``INTEGER``, ``VARCHAR`` ...). SQLite reports
    None, like sqlite3, which equals no type object.
    """

    def __init__(self, name: str, *type_names: str) -> None:
        self.name = name
        self.values = frozenset(type_names)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DBAPITypeObject):
            return self is other
        if other is None:
            return False
        base = str(other).upper().split("(", 1)[0].strip()
        return base in self.values

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"<safestore.dbapi.{self.name}>"


STRING = DBAPITypeObject("STRING", "VARCHAR", "TEXT", "CHAR", "STRING", "UUID", "ENUM", "JSON")
BINARY = DBAPITypeObject("BINARY", "BLOB", "BYTEA", "BINARY", "VARBINARY", "BIT", "BITSTRING")
NUMBER = DBAPITypeObject(
    "NUMBER",
    *[
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "INT",
        "BIGINT",
        "HUGEINT",
        "UTINYINT",
        "USMALLINT",
        "UINTEGER",
        "UBIGINT",
    ],
    *["UHUGEINT", "FLOAT", "REAL", "DOUBLE", "DECIMAL", "NUMERIC", "BOOLEAN"],
)
DATETIME = DBAPITypeObject(
    "DATETIME",
    *[
        "DATE",
        "TIME",
        "TIMESTAMP",
        "DATETIME",
        "INTERVAL",
        "TIMESTAMP_S",
        "TIMESTAMP_MS",
        "TIMESTAMP_NS",
    ],
    "TIMESTAMP WITH TIME ZONE",
    "TIME WITH TIME ZONE",
)
ROWID = DBAPITypeObject("ROWID", "ROWID")

Date = datetime.date
Time = datetime.time
Timestamp = datetime.datetime
#: sqlite3 returns BLOBs as bytes and binds any buffer; memoryview is its Binary too.
Binary = memoryview


def DateFromTicks(ticks: float) -> datetime.date:
    """The local date of a POSIX timestamp (PEP 249)."""
    return Date(*time.localtime(ticks)[:3])


def TimeFromTicks(ticks: float) -> datetime.time:
    """The local time of day of a POSIX timestamp (PEP 249)."""
    return Time(*time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks: float) -> datetime.datetime:
    """The local date and time of a POSIX timestamp (PEP 249)."""
    return Timestamp(*time.localtime(ticks)[:6])
