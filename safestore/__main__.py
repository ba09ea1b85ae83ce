"""Command line: ``python -m safestore demo``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m safestore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="many threads sharing one store, the naive way beside it")
    demo.add_argument(
        "--backend",
        choices=["sqlite", "duckdb", "both"],
        default="both",
        help="which engine(s) to show (default: both)",
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        from . import _demo

        backends = ("sqlite", "duckdb") if args.backend == "both" else (args.backend,)
        return _demo.main(backends)
    return 2  # pragma: no cover - argparse rejects other commands


if __name__ == "__main__":
    sys.exit(main())
