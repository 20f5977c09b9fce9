"""Run every ``examples/*.py`` script (except ``_*.py``) in a subprocess.

Each example gets ``TIMEOUT`` seconds; any failure or timeout stops the run
with a non-zero exit code.  Names given on the command line restrict the run
to those examples (e.g. ``python examples/_run_all.py basic.py``).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

TIMEOUT = 120.0
HERE = Path(__file__).resolve().parent
#: servers that run until stopped: exercised as real processes (clients, signals, SIGKILL)
#: by their own tests, not here
SERVERS = {"socket_to_db.py": "tests/test_socket_to_db.py", "redis_to_db.py": "tests/test_redis_to_db.py"}


def main(argv: list[str]) -> int:
    scripts = sorted(p for p in HERE.glob("*.py") if not p.name.startswith("_") and p.name not in SERVERS)
    if argv:
        wanted = {Path(a).name for a in argv}
        scripts = [p for p in scripts if p.name in wanted]
    if not scripts:
        print("no examples found", flush=True)
        return 0
    for path in scripts:
        start = time.monotonic()
        try:
            subprocess.run([sys.executable, str(path)], timeout=TIMEOUT, check=True)
        except subprocess.TimeoutExpired:
            print(f"FAIL {path.name}: timed out after {TIMEOUT:.0f} s", flush=True)
            return 1
        except subprocess.CalledProcessError as exc:
            print(f"FAIL {path.name}: exit code {exc.returncode}", flush=True)
            return 1
        print(f"ok   {path.name} ({time.monotonic() - start:.2f} s)", flush=True)
    print(f"{len(scripts)} examples ran", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
