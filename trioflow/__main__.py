"""Command line: ``python -m trioflow demo``.

Exit codes of ``demo``: 0 when the run completed (its input ended, or the first Ctrl-C or
SIGTERM drained it), 130 when it was aborted (a second signal, or the drain's deadline) or
interrupted outside the run; the final statistics are printed in both cases.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

#: Exit code after an abort or an interruption: 128 + SIGINT, as a shell reports Ctrl-C.
EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trioflow", description="trioflow command line")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="run the demo pipeline (synthetic readings into SQLite)",
        description="Run the demo pipeline. Ctrl-C (or SIGTERM) drains it and prints the "
                    "final statistics (exit code 0); a second one aborts it (exit code 130).")
    size = demo.add_mutually_exclusive_group()
    size.add_argument("--records", type=int, default=50_000, help="lines to generate")
    size.add_argument("--forever", action="store_true",
                      help="generate lines until Ctrl-C or SIGTERM")
    demo.add_argument("--db", type=Path, default=None, help="SQLite file (default: a temp file)")
    demo.add_argument("--write-delay", type=float, default=0.0, metavar="SECONDS",
                      help="wait this long before each batch write, as a slow database would")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.records < 0:
            parser.error("--records must be >= 0")
        if not args.write_delay >= 0:
            parser.error("--write-delay must be >= 0")
        from ._demo import run_demo
        from ._stats import RunState

        try:
            state = trio.run(run_demo, None if args.forever else args.records, args.db, 1,
                             args.write_delay)
        except KeyboardInterrupt:  # a Ctrl-C before the run started or after it ended
            print("trioflow demo: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        return 0 if state is RunState.COMPLETED else EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
