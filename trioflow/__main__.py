"""Command line: ``python -m trioflow demo``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trioflow", description="trioflow command line")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the demo pipeline (synthetic readings into SQLite)")
    demo.add_argument("--records", type=int, default=50_000, help="lines to generate")
    demo.add_argument("--db", type=Path, default=None, help="SQLite file (default: a temp file)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.records < 0:
            parser.error("--records must be >= 0")
        from ._demo import run_demo

        trio.run(run_demo, args.records, args.db)
    return 0


if __name__ == "__main__":
    sys.exit(main())
