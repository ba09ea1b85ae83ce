"""Every Python example in README.md and docs/ runs as written.

Each ```python block is a complete program: it is written to a file in a fresh
temporary folder and run there with this interpreter, and must exit with status 0
within `BLOCK_TIMEOUT` seconds, printing no traceback or warning. A block that is
deliberately not runnable (it needs a server, or shows only a fragment) carries a
visible title that starts with "Sketch", as in ```python title="Sketch: ..."``` (the
docs site shows the title above the block); keep such blocks few. A block that needs
an optional package (one the `dev` extra installs) is preceded by an HTML comment such
as `<!-- requires: flask -->` and is skipped only where that package is missing.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK_TIMEOUT = 60.0
# An opening fence: ``` or ~~~ (3 or more), a language, and the rest of the info string.
# `<!-- requires: flask -->` on the line before a block.
REQUIRES = re.compile(r"<!--\s*requires:\s*(?P<names>[\w .-]+?)\s*-->")
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    info: str
    code: str
    requires: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def sketch(self) -> bool:
        return re.search(r'title="Sketch', self.info) is not None


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of one Markdown file (fences may be indented, e.g. in tabs)."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m["indent"], m["fence"], m["lang"].lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1  # the closing fence
        if lang in ("python", "py", "python3"):
            before = next((x.strip() for x in reversed(lines[:start]) if x.strip()), "")
            needs = REQUIRES.fullmatch(before)
            requires = tuple(needs["names"].split()) if needs else ()
            blocks.append(Block(path, start + 1, m["info"], "\n".join(body) + "\n", requires))
    return blocks


ALL = [b for p in doc_files() for b in python_blocks(p)]


def test_the_docs_have_examples() -> None:
    """The collector finds the examples (a broken parser would silently test nothing)."""
    assert len(ALL) >= 30
    assert any(b.path.name == "README.md" for b in ALL)
    sketches = [b.id for b in ALL if b.sketch]
    assert len(sketches) <= 5, f"too many untested sketches: {sketches}"
    # The site's Markdown (pymdownx.superfences) renders a fence whose info string it
    # does not understand as plain text: only a title may follow the language.
    odd = [b.id for b in ALL if b.info.strip() and not re.fullmatch(r'\s*title="[^"]*"\s*', b.info)]
    assert not odd, f"code fences the docs site cannot render: {odd}"


def run_block(block: Block, folder: Path) -> subprocess.CompletedProcess[str] | None:
    """Run one block as a program in `folder`; None if it timed out."""
    script = folder / "example.py"
    script.write_text(block.code, encoding="utf-8")
    env = dict(os.environ)
    # The checkout's package, whether or not it is installed in this interpreter.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONWARNINGS"] = "default"  # show any warning, so it fails the check below
    try:
        return subprocess.run(
            [sys.executable, str(script)],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return None


def runnable(block: Block) -> str | None:
    """Why `block` is not run here, or None if it is."""
    if block.sketch:
        return 'titled "Sketch": deliberately not runnable'
    missing = [m for m in block.requires if importlib.util.find_spec(m) is None]
    if missing:
        return f"needs {', '.join(missing)} (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def outcomes(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, subprocess.CompletedProcess[str] | None]:
    """Run every runnable block once, a few at a time (most of each is waiting for
    fsync or for a new interpreter), each in its own empty folder."""
    todo = [b for b in ALL if runnable(b) is None]
    with ThreadPoolExecutor(4) as pool:
        done = pool.map(lambda b: run_block(b, tmp_path_factory.mktemp("example")), todo)
        return {b.id: proc for b, proc in zip(todo, done, strict=True)}


@pytest.mark.parametrize("block", ALL, ids=[b.id for b in ALL])
def test_example_runs(
    block: Block, outcomes: dict[str, subprocess.CompletedProcess[str] | None]
) -> None:
    """This code block runs to completion in an empty folder, cleanly."""
    reason = runnable(block)
    if reason is not None:
        pytest.skip(reason)
    proc = outcomes[block.id]
    assert proc is not None, f"{block.id}: still running after {BLOCK_TIMEOUT:.0f}s"
    assert proc.returncode == 0, f"{block.id} exited {proc.returncode}:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, (
        f"{block.id} printed to stderr:\n{proc.stderr}"
    )
