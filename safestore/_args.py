"""Checking what users pass to `Store` and its methods, before anything is queued.

Each check raises `TypeError` or `ValueError` (or `ProgrammingError` for SQL text that
cannot reach an engine) with a message that names the argument and what was wrong.
"""

from __future__ import annotations

import math
import os
import threading

from .errors import ProgrammingError

_DUCKDB_SUFFIXES = (".duckdb", ".ddb")
_SCHEMES = {"sqlite": "sqlite", "sqlite3": "sqlite", "duckdb": "duckdb"}


def resolve_target(target: object, backend: object) -> tuple[str, str]:
    """Return (backend name, path) for a target and an optional explicit backend."""
    if not isinstance(target, str | os.PathLike):
        raise TypeError(f"target must be a str or os.PathLike, not {type(target).__name__}")
    text = os.fspath(target)
    if isinstance(text, bytes):
        raise TypeError("target must be a text path, not bytes")
    if not text:
        raise ValueError("target must not be empty (use ':memory:' for an in-memory database)")
    scheme_backend = None
    if "://" in text and isinstance(target, str):
        scheme, _, rest = text.partition("://")
        scheme_backend = _SCHEMES.get(scheme.lower())
        if scheme_backend is None:
            raise ValueError(
                f"unknown URL scheme {scheme!r} in {text!r}; use sqlite:/// or duckdb:///"
            )
        if not rest.startswith("/") or rest == "/":
            raise ValueError(
                f"{text!r}: a URL target is {scheme}:///relative/path or {scheme}:////absolute"
            )
        text = rest[1:]
    if backend is not None and backend not in ("sqlite", "duckdb"):
        raise ValueError(f"backend must be 'sqlite', 'duckdb' or None, not {backend!r}")
    if backend is not None and scheme_backend is not None and backend != scheme_backend:
        raise ValueError(f"backend={backend!r} contradicts the URL scheme of {target!r}")
    name = backend or scheme_backend
    if name is None:
        name = "duckdb" if text.lower().endswith(_DUCKDB_SUFFIXES) else "sqlite"
    if "\x00" in text:
        raise ValueError("target contains a NUL character")
    return str(name), text


def check_timeout(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{what} must be a positive finite number of seconds, not {value!r}")
    if value > threading.TIMEOUT_MAX:
        raise ValueError(
            f"{what} must be at most {threading.TIMEOUT_MAX:.0f} seconds (threading.TIMEOUT_MAX), "
            f"not {value!r}"
        )
    return float(value)


def check_sql(sql: object) -> None:
    if not isinstance(sql, str):
        raise TypeError(f"sql must be a str, not {type(sql).__name__}")
    if not sql.isascii():
        # Lone surrogates cannot reach an engine: sqlite3 raised UnicodeEncodeError, and
        # duckdb a bare "std::bad_cast" RuntimeError. Say what is wrong, before queueing.
        try:
            sql.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ProgrammingError(
                f"sql is not valid UTF-8 text ({exc.reason} at position {exc.start})"
            ) from None
