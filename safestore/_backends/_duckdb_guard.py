"""What a DuckDB `query()` may run, checked before the read-only transaction runs it.

`read` (in ``_duckdb.py``) runs each statement inside ``BEGIN TRANSACTION READ ONLY``,
and the engine refuses every write there, ``nextval()`` included. But a read-only
transaction leaves holes: SET, CHECKPOINT, ATTACH, COPY ... TO, TEMP objects, LOAD and
EXPORT still change the database or the instance's settings. So the statement type is
checked first: only SELECT-like statements, EXPLAIN, informational PRAGMAs and CALLs
(except checkpoint) run; anything else raises `ReadOnlyError` having run nothing.
Any thread may call it; the only state is each store's memory of the texts it allowed.
"""

from __future__ import annotations

import re
from typing import Any

import duckdb

from ..errors import ProgrammingError, ReadOnlyError

_ST = duckdb.StatementType
# Statement types query() may run (the read-only transaction is still the real guard).
_READ_TYPES = {_ST.SELECT, _ST.EXPLAIN, _ST.PRAGMA, _ST.CALL}
# PRAGMAs that only report. Assigning ones (PRAGMA threads=1) are typed SET.
_INFO_PRAGMAS = {
    "collations",
    "database_list",
    "database_size",
    "functions",
    "metadata_info",
    "platform",
    "show",
    "show_databases",
    "show_tables",
    "show_tables_expanded",
    "storage_info",
    "table_info",
    "user_agent",
    "version",
}
_PRAGMA_NAME = re.compile(r"\s*pragma\s+(\w+)", re.IGNORECASE)
_CHECKPOINT = re.compile(r"^\s*(force\s+)?checkpoint\b", re.IGNORECASE)
# Table functions that change the database, the instance or its settings even inside
# a read-only transaction (or run SQL text of their own), wherever they are called.
_SIDE_EFFECTS = re.compile(
    r"\b(checkpoint|force_checkpoint|copy_database|import_database|add_parquet_key"
    r"|(?:create|destroy|register|deregister)_external_resource(?:_type)?"
    r"|truncate_duckdb_logs|verify_parallelism|json_execute_serialized_sql|query"
    r"|(?:enable|disable)_\w+)\s*\(",
    re.IGNORECASE,
)
_COMMENTS = re.compile(r"/\*.*?\*/|--[^\n]*", re.DOTALL)
# EXPLAIN ANALYZE runs the statement it explains; plain EXPLAIN only plans it.
_EXPLAIN = re.compile(
    r"^\s*explain\s+(?:analy[sz]e\b|\([^)]*\))?\s*(.*)$", re.IGNORECASE | re.DOTALL
)


def explained(sql: str) -> str | None:
    """The statement an EXPLAIN statement's text explains (None if it cannot tell)."""
    match = _EXPLAIN.match(_COMMENTS.sub(" ", sql))
    return match.group(1) if match else None


#: The most SQL texts a store remembers as allowed (see `check_read`).
ALLOWED_MAX = 256


def check_read(conn: Any, sql: str, allowed: dict[str, bool]) -> bool:
    """Refuse statements a read-only transaction would let change something.

    Returns False when `sql` holds no statement at all. `allowed` is the store's memory
    of the texts it allowed (True: one statement, False: none): readers run the same
    few queries over and over, and parsing one costs 20-80 µs, up to a tenth of a small
    query. Refusals are not kept; they raise every time. The memory is per store, so a
    store whose setup changes how its connections parse (a parser extension) shares no
    verdicts with others. Its threads share it safely: each dict operation is atomic
    under the GIL, and a lost entry only costs a parse.
    """
    verdict = allowed.get(sql)
    if verdict is None:
        verdict = _judge(conn, sql)  # raises if refused
        if len(allowed) >= ALLOWED_MAX:
            allowed.clear()
        allowed[sql] = verdict
    return verdict


def _judge(conn: Any, sql: str) -> bool:
    """`check_read` without the cache: parse `sql` on `conn` and judge its statement."""
    try:
        statements = conn.extract_statements(sql)
    except ValueError:  # a statement type this duckdb build cannot name
        statements = None
    if statements is not None and len(statements) > 1:
        raise ProgrammingError(
            f"query() runs one statement at a time; got {len(statements)}: {sql[:200]!r}"
        )
    if statements == []:
        return False
    stmt = statements[0] if statements else None
    allowed = stmt is not None and stmt.type in _READ_TYPES
    if allowed and stmt is not None:
        text = stmt.query
        # Comments and identifier quotes out of the way: `"checkpoint"/**/()` is
        # still a call of checkpoint (a false alarm in a string literal only refuses).
        bare = _COMMENTS.sub(" ", text).replace('"', "")
        if _CHECKPOINT.search(bare) or _SIDE_EFFECTS.search(bare):
            allowed = False
        elif stmt.type == _ST.EXPLAIN:
            inner = explained(text)
            allowed = inner is not None and _judge(conn, inner)
        elif stmt.type == _ST.PRAGMA:
            match = _PRAGMA_NAME.match(text)
            allowed = match is not None and match.group(1).lower() in _INFO_PRAGMAS
    if not allowed:
        kind = stmt.type.name if stmt is not None else "unknown"
        raise ReadOnlyError(
            f"query() runs read-only statements; a {kind} statement could change the "
            f"database or its settings: {sql[:200]!r}"
        )
    return True
