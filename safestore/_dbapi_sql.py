"""How the DB-API facade sorts statements before running them.

sqlite3 decides transaction control from the statement's first keyword (after comments
and whitespace): an implicit BEGIN goes before INSERT, UPDATE, DELETE and REPLACE only.
The facade uses the same rule, so programs see the same transaction boundaries, and it
additionally recognises transaction control statements (BEGIN, COMMIT, ROLLBACK ...),
which it maps onto the calling thread's transaction instead of sending them to the
shared writer connection. Everything here is pure text processing: thread-safe.
"""

from __future__ import annotations

import enum
import functools
import re
import sqlite3

from .errors import ProgrammingError

__all__ = ["Kind", "check_control", "classify", "has_returning", "split_script"]


class Kind(enum.Enum):
    """What a statement is, as far as transaction control is concerned."""

    BEGIN = "begin"  # BEGIN [DEFERRED|IMMEDIATE|EXCLUSIVE] [TRANSACTION], START TRANSACTION
    COMMIT = "commit"  # COMMIT, END [TRANSACTION]
    ROLLBACK = "rollback"  # ROLLBACK, ABORT (not ROLLBACK TO a savepoint)
    SAVEPOINT = "savepoint"  # SAVEPOINT name: opens a transaction if none is open
    DML = "dml"  # INSERT, UPDATE, DELETE, REPLACE: sqlite3's implicit BEGIN goes first
    READ = "read"  # looks like a read; the engine has the last word (a reader refuses writes)
    OTHER = "other"  # DDL, PRAGMA with a value, RELEASE, ROLLBACK TO, ...


# Leading whitespace and comments, as sqlite3 skips them before looking at the keyword.
_LEAD = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?(?:\*/|$))*", re.DOTALL)
# ... and empty statements (";"), which the engine skips too before the one it runs.
_STATEMENT_LEAD = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?(?:\*/|$)|;)*", re.DOTALL)
_WORD = re.compile(r"[A-Za-z_]+")
_READ_WORDS = {
    "select",
    "with",
    "values",
    "explain",
    "pragma",
    # DuckDB's query statements.
    "from",
    "show",
    "describe",
    "summarize",
    "table",
    "call",
}
_DML_WORDS = {"insert", "update", "delete", "replace"}
# One token: a keyword or bare name (SQLite takes any character from U+0080 up in
# one), a quoted name ("x", [x], `x`, 'x'), "." or "(".
_TOKEN = re.compile(
    r"""[A-Za-z_\u0080-\U0010ffff][\w$\u0080-\U0010ffff]*"""
    r"""|"(?:[^"]|"")*"|\[[^\]]*\]|`(?:[^`]|``)*`|'(?:[^']|'')*'|[.(]"""
)
# SQLite folds the case of ASCII letters only, in keywords and names alike.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_PRAGMA_SET = re.compile(r"pragma\s+[\w.]+\s*=", re.IGNORECASE)
_RETURNING = re.compile(r"\breturning\b", re.IGNORECASE)


def _body(sql: str) -> str:
    """`sql` from its first word on, as sqlite3 looks at it (for its implicit BEGIN)."""
    match = _LEAD.match(sql)
    return sql[match.end() :] if match else sql


def engine_text(sql: str) -> str:
    """`sql` from the statement the engine runs on: past empty statements too."""
    match = _STATEMENT_LEAD.match(sql)
    return sql[match.end() :] if match else sql


@functools.lru_cache(maxsize=128)
def is_empty(sql: str) -> bool:
    """Nothing to run: only whitespace, comments and semicolons (sqlite3 then leaves
    the cursor's lastrowid as it was)."""
    return not engine_text(sql)


def _tokens(sql: str, most: int) -> list[str]:
    """The first `most` tokens of the statement `sql` runs, skipping comments;
    keywords in lower case."""
    tokens: list[str] = []
    pos = len(sql) - len(engine_text(sql))
    while len(tokens) < most:
        lead = _LEAD.match(sql, pos)
        pos = lead.end() if lead else pos
        match = _TOKEN.match(sql, pos)
        if match is None:
            break
        token = match.group(0)
        tokens.append(token if token[0] in "\"[`'.(" else token.translate(_ASCII_LOWER))
        pos = match.end()
    return tokens


def classify(sql: str) -> Kind:
    """Sort one statement by its first keyword (the way sqlite3 does)."""
    body = engine_text(sql)
    match = _WORD.match(body)
    if match is None:
        return Kind.OTHER
    word = match.group(0).lower()
    if word in _DML_WORDS:
        # sqlite3 does not look past an empty statement (";") for its implicit BEGIN,
        # but the engine does: after one, transaction control is still recognised.
        return Kind.DML if _body(sql)[:1] != ";" else Kind.OTHER
    if word == "begin":
        return Kind.BEGIN
    if word == "start" and body[match.end() :].lstrip().lower().startswith("transaction"):
        return Kind.BEGIN
    if word in ("commit", "end"):
        return Kind.COMMIT
    if word == "rollback":
        return Kind.OTHER if savepoint_action(body) is not None else Kind.ROLLBACK
    if word == "abort":
        return Kind.ROLLBACK
    if word == "savepoint":
        return Kind.SAVEPOINT
    if word == "pragma" and _PRAGMA_SET.match(body):
        return Kind.OTHER
    if word in _READ_WORDS:
        return Kind.READ
    return Kind.OTHER


@functools.lru_cache(maxsize=128)
def check_control(sql: str, sqlite: bool) -> None:
    """Raise the engine's own error unless `sql`, which `classify` took for BEGIN, COMMIT
    or ROLLBACK by its first word, is exactly one valid statement.

    The facade acts on the thread's transaction instead of sending such a statement to
    the engine, so the engine is asked to parse it here, alone, on a throwaway
    in-memory database: ``BEGIN GARBAGE`` is a syntax error and ``COMMIT; INSERT ...``
    is refused whole, as sqlite3 does. Valid texts are remembered (they repeat).
    """
    if sqlite:
        probe = sqlite3.connect(":memory:")
        try:
            probe.execute(f"EXPLAIN {engine_text(sql)}").fetchall()  # prepares; runs nothing
        finally:
            probe.close()
        return
    import duckdb

    parser = duckdb.connect()
    try:
        statements = parser.extract_statements(sql)
    finally:
        parser.close()
    if len(statements) != 1:
        raise ProgrammingError("You can only execute one statement at a time.")


def has_returning(sql: str) -> bool:
    """Whether the statement may return rows although it writes (a RETURNING clause).

    A false positive (the word inside a string) only costs a slower path, never a
    wrong answer.
    """
    return _RETURNING.search(sql) is not None


@functools.lru_cache(maxsize=256)
def insert_target(sql: str) -> str | None:
    """The table of ``INSERT [OR ...] INTO [schema.]name`` or ``REPLACE INTO
    [schema.]name``, quoted (``"name"`` or ``"schema"."name"``); None for any other
    statement."""
    words = _tokens(sql, 8)
    if words[:2] == ["insert", "or"]:
        words = words[3:]  # past the conflict clause's word
    elif words[:1] in (["insert"], ["replace"]):
        words = words[1:]
    else:
        return None
    if words[:1] != ["into"] or len(words) < 2:
        return None
    qualified = words[2:3] == ["."]
    names = words[1:4:2] if qualified else words[1:2]  # [schema, name] or [name]
    if len(names) != 1 + qualified or any(n in (".", "(") or n[0] == "'" for n in names):
        return None
    return ".".join('"' + _unquoted(n).replace('"', '""') + '"' for n in names)


@functools.lru_cache(maxsize=256)  # texts repeat; run on every write
def starts_with_cte(sql: str) -> bool:
    """WITH ...: a query, or an INSERT, UPDATE or DELETE after its common table
    expressions (which sqlite3 does not count as DML)."""
    match = _WORD.match(engine_text(sql))
    return match is not None and match.group(0).lower() == "with"


@functools.lru_cache(maxsize=256)  # texts repeat; run on every write
def uncounted(sql: str) -> bool:
    """A statement whose rows sqlite3 does not count (its rowcount is -1) even if it
    writes: one after a WITH clause, or an INSERT, UPDATE, DELETE or REPLACE after an
    empty statement (";")."""
    if starts_with_cte(sql):
        return True
    match = _WORD.match(engine_text(sql)) if _body(sql)[:1] == ";" else None
    return match is not None and match.group(0).lower() in _DML_WORDS


@functools.lru_cache(maxsize=256)  # texts repeat; run on every write
def is_insert(sql: str) -> bool:
    """INSERT or REPLACE: the statements after which sqlite3 updates `lastrowid`."""
    match = _WORD.match(engine_text(sql))
    return match is not None and match.group(0).lower() in ("insert", "replace")


@functools.lru_cache(maxsize=256)  # texts repeat; run on every write
def is_upsert(sql: str) -> bool:
    """Whether an INSERT may have an ON CONFLICT clause, which can update instead of
    inserting. A false positive (the word inside a string) only costs a check."""
    return "conflict" in sql.lower()


@functools.lru_cache(maxsize=256)  # texts repeat; run on every write
def savepoint_action(sql: str) -> tuple[str, str | None] | None:
    """("savepoint" | "release" | "rollback", name) for SAVEPOINT name, RELEASE
    [SAVEPOINT] name and ROLLBACK [TRANSACTION] TO [SAVEPOINT] name, with None for a
    name that cannot be read; None for any other statement.

    The name is compared as SQLite compares savepoint names: unquoted, ASCII letters
    in any case.
    """
    words = _tokens(sql, 6)
    if not words:
        return None
    if words[0] == "savepoint":
        return ("savepoint", _name(words[1:2]))
    if words[0] == "release":
        rest = words[2:] if words[1:2] == ["savepoint"] and len(words) > 2 else words[1:]
        return ("release", _name(rest[:1]))
    if words[0] == "rollback":
        rest = words[1:]
        if rest[:1] == ["transaction"]:
            rest = rest[1:]
        if rest[:1] != ["to"]:
            return None
        rest = rest[1:]
        if rest[:1] == ["savepoint"] and len(rest) > 1:
            rest = rest[1:]
        return ("rollback", _name(rest[:1]))
    return None


def _name(tokens: list[str]) -> str | None:
    if not tokens or tokens[0] in (".", "("):
        return None
    return _unquoted(tokens[0]).translate(_ASCII_LOWER)


def _unquoted(token: str) -> str:
    """A name token as SQLite reads it: without its quotes ("x", [x], `x`, 'x')."""
    if token[0] in "\"`'":
        return token[1:-1].replace(token[0] * 2, token[0])
    if token[0] == "[":
        return token[1:-1]
    return token


_SCHEMA_WORDS = frozenset({"create", "drop", "alter", "attach", "detach", "pragma"})


@functools.lru_cache(maxsize=256)  # texts repeat; run on every write
def may_change_schema(sql: str) -> bool:
    """Whether the statement may change which tables exist or what columns they have
    (by its first keyword; PRAGMA counts, as `writable_schema` and the like can)."""
    match = _WORD.match(engine_text(sql))
    return match is None or match.group(0).lower() in _SCHEMA_WORDS


def split_duckdb_script(script: str) -> list[str]:
    """Split a DuckDB script into statements with DuckDB's own parser (it knows
    dollar-quoted strings, which SQLite's notion of a statement does not)."""
    import duckdb

    parser = duckdb.connect()  # a throwaway in-memory database: parsing only
    try:
        return [statement.query for statement in parser.extract_statements(script)]
    finally:
        parser.close()


def split_script(script: str) -> list[str]:
    """Split an SQL script into complete statements, in order.

    Uses SQLite's own notion of a complete statement (it knows string literals,
    comments and ``CREATE TRIGGER ... BEGIN ...; END;``). Text after the last complete
    statement that is only whitespace or comments is dropped; anything else is kept as a
    final (incomplete) statement so that the engine reports the syntax error.
    """
    statements: list[str] = []
    start = 0
    pos = script.find(";")
    while pos != -1:
        candidate = script[start : pos + 1]
        if sqlite3.complete_statement(candidate):
            if _body(candidate).strip(" \t\r\n;"):
                statements.append(candidate)
            start = pos + 1
        pos = script.find(";", pos + 1)
    rest = script[start:]
    if _body(rest).strip():
        statements.append(rest)
    return statements
