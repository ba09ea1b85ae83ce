"""Typical sqlite3 programs, unchanged but for the connect call, and a library on top."""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from tests.conftest import WAIT

import safestore

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "threaded_fetch.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("threaded_fetch", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_stores_every_page(tmp_path: Path) -> None:
    """examples/threaded_fetch.py with safestore.connect: one thread per page, all stored."""
    example = load_example()
    summary = example.run(str(tmp_path / "pages.db"), 40, safestore.connect)
    assert summary["stored"] == 40
    assert 0 < summary["ok"] <= 40


def test_example_runs_unchanged_on_sqlite3(tmp_path: Path) -> None:
    """The same code runs on sqlite3.connect (in a child: sharing a sqlite3 connection is
    unsafe); the same program with safestore stores every page."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for flag, engine in (("--sqlite3", "sqlite3"), (None, "safestore")):
        args = [
            sys.executable,
            str(EXAMPLE),
            "--tasks",
            "30",
            "--db",
            str(tmp_path / f"{engine}.db"),
        ]
        if flag:
            args.append(flag)
        proc = subprocess.run(args, capture_output=True, text=True, timeout=WAIT, env=env)
        if engine == "safestore":
            assert proc.returncode == 0, proc.stderr
            assert "safestore: stored 30 pages" in proc.stdout
        else:
            # sqlite3 runs the same code, but sharing its connection is broken: runs here
            # lost rows, raised OperationalError or even SystemError. It did run, though.
            db = sqlite3.connect(tmp_path / "sqlite3.db")
            try:
                (stored,) = db.execute("SELECT count(*) FROM pages").fetchone()
            finally:
                db.close()
            assert 1 <= stored <= 30


def typical_program(connect: Any, path: str) -> list[tuple[Any, ...]]:
    """A single-threaded sqlite3 program as found in tutorials."""
    con = connect(path)
    cur = con.cursor()
    cur.execute("CREATE TABLE movie(title, year, score)")
    cur.execute(
        """
        INSERT INTO movie VALUES
            ('Monty Python and the Holy Grail', 1975, 8.2),
            ('And Now for Something Completely Different', 1971, 7.5)
        """
    )
    con.commit()
    data = [
        ("Monty Python Live at the Hollywood Bowl", 1982, 7.9),
        ("Monty Python's The Meaning of Life", 1983, 7.5),
        ("Monty Python's Life of Brian", 1979, 8.0),
    ]
    cur.executemany("INSERT INTO movie VALUES(?, ?, ?)", data)
    con.commit()
    try:
        with con:
            con.execute("INSERT INTO movie VALUES(?, ?, ?)", ("dup", 1, 1))
            raise sqlite3.IntegrityError("pretend")
    except sqlite3.IntegrityError:
        pass
    con.row_factory = sqlite3.Row
    rows = [
        (row["year"], row["title"])
        for row in con.execute("SELECT year, title FROM movie ORDER BY year")
    ]
    con.close()
    return rows


def test_typical_program_same_result(tmp_path: Path) -> None:
    """A tutorial sqlite3 program gives the same result on sqlite3 and on safestore."""
    expected = typical_program(sqlite3.connect, str(tmp_path / "a.db"))
    assert typical_program(safestore.connect, str(tmp_path / "b.db")) == expected
    assert len(expected) == 5


def test_pandas_reads_and_writes(tmp_path: Path) -> None:
    """pandas' DB-API path (read_sql / to_sql) runs on a shared safestore connection."""
    pd = pytest.importorskip("pandas")
    conn = safestore.connect(str(tmp_path / "pd.db"), timeout=WAIT)
    try:
        frame = pd.DataFrame({"name": ["a", "b", "c"], "score": [1.5, 2.5, 3.5]})
        with warnings.catch_warnings():
            # pandas warns that it only tests sqlite3/SQLAlchemy connections.
            warnings.filterwarnings("ignore", message=".*pandas only supports SQLAlchemy.*")
            frame.to_sql("scores", conn, index=False)
            back = pd.read_sql("SELECT name, score FROM scores ORDER BY name", conn)
        assert back.to_dict("list") == frame.to_dict("list")
    finally:
        conn.close()
