"""Command line: ``python -m safestore demo`` and ``python -m safestore bench``."""

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
    bench = sub.add_parser("bench", help="safestore beside the usual alternatives, side by side")
    bench.add_argument("--threads", type=int, default=50, help="writer threads (default 50)")
    bench.add_argument("--rows", type=int, default=200, help="inserts per thread (default 200)")
    bench.add_argument("--backend", choices=["sqlite", "duckdb", "both"], default="both")
    bench.add_argument("--durability", choices=["full", "normal", "both"], default="both")
    bench.add_argument("--bulk-rows", type=int, default=100_000, help="rows of the bulk insert")
    bench.add_argument(
        "--readers", type=int, default=1, help="reader threads of the 'reads' workload (default 1)"
    )
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bench.add_argument("--plot", metavar="FILE.png", help="also draw a chart (needs matplotlib)")
    args = parser.parse_args(argv)
    if args.command == "bench":
        from . import _bench

        for name in ("threads", "rows", "bulk_rows", "readers"):
            if getattr(args, name) < 1:
                parser.error(f"--{name.replace('_', '-')} must be at least 1")
        return _bench.main(
            args.threads,
            args.rows,
            ["sqlite", "duckdb"] if args.backend == "both" else [args.backend],
            ["full", "normal"] if args.durability == "both" else [args.durability],
            args.json,
            args.plot,
            args.bulk_rows,
            args.readers,
        )
    if args.command == "demo":
        from . import _demo

        backends = ("sqlite", "duckdb") if args.backend == "both" else (args.backend,)
        return _demo.main(backends)
    return 2  # pragma: no cover - argparse rejects other commands


if __name__ == "__main__":
    sys.exit(main())
