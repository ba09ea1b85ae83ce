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
_TT = duckdb.token_type


def _tokens(sql: str) -> list[tuple[Any, str, int]]:
    """DuckDB's own tokens of `sql` as (type, text, position), comments included."""
    marks = duckdb.tokenize(sql)
    ends = [pos for pos, _ in marks[1:]] + [len(sql)]
    return [(kind, sql[pos:end].strip(), pos) for (pos, kind), end in zip(marks, ends, strict=True)]


def _bare(sql: str) -> str:
    """`sql` as the engine reads it, for the side-effect search: no comments, string
    literals emptied (a call written inside one is not a call), identifier quotes
    dropped (`"checkpoint"()` is a call of checkpoint)."""
    out = []
    for kind, text, _ in _tokens(sql):
        if kind == _TT.comment:
            continue
        if kind == _TT.string_const:
            out.append("''")
        elif kind == _TT.identifier and text.startswith('"') and text.endswith('"'):
            out.append(text[1:-1].replace('""', '"'))
        else:
            out.append(text)
    return " ".join(out)


def analyzed(sql: str) -> str | None:
    """For ``EXPLAIN ANALYZE <statement>`` (or ``EXPLAIN (ANALYZE, ...)``), which runs
    the statement it explains, that statement's text; None for anything else (a plain
    EXPLAIN only plans its statement)."""
    code = [(text.lower(), pos) for kind, text, pos in _tokens(sql) if kind != _TT.comment]
    if len(code) < 3 or code[0][0] != "explain":
        return None
    if code[1][0] in ("analyze", "analyse"):
        return sql[code[2][1] :]
    if code[1][0] == "(" and code[2][0] in ("analyze", "analyse", "format"):
        depth, i = 0, 1
        for i in range(1, len(code)):  # the options end at the matching ")"
            depth += {"(": 1, ")": -1}.get(code[i][0], 0)
            if depth == 0:
                break
        options = {text for text, _ in code[2:i]}
        if options & {"analyze", "analyse"} and i + 1 < len(code):
            return sql[code[i + 1][1] :]
    return None


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
        bare = _bare(text)
        if _CHECKPOINT.search(bare) or _SIDE_EFFECTS.search(bare):
            allowed = False
        elif stmt.type == _ST.EXPLAIN and (inner := analyzed(text)) is not None:
            try:
                allowed = _judge(conn, inner)
            except duckdb.Error:  # not a statement we can judge: refuse it
                allowed = False
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
