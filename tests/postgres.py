"""A real PostgreSQL server for the tests: ``initdb`` in a temporary folder, ``postgres`` on a free
localhost port, stopped and removed at the end.

The binaries are found on ``PATH`` or in Debian's ``/usr/lib/postgresql/<version>/bin`` (``.ci/run``
installs Debian's ``postgresql``). PostgreSQL refuses to run as root: as root the server runs as
the ``postgres`` system user (created when missing).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

USER = "autoquant"  # the database superuser, trusted on localhost


def binaries() -> Path | None:
    """The folder of ``initdb``, ``pg_ctl`` and ``postgres``, or None."""
    found = shutil.which("initdb")
    if found and Path(found).with_name("pg_ctl").exists():
        return Path(found).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parent.parent.name)
    return candidates[-1].parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _system_user() -> str | None:
    """The user to run the server as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"],
            check=True,
        )
    return "postgres"


class PostgresServer:
    """One server; :meth:`database` creates a fresh database and returns its SQLAlchemy URL."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.user = _system_user()
        self.root = Path(tempfile.mkdtemp(prefix="autoquant-pg-"))  # short: the socket path has a limit
        self.data = self.root / "data"
        self.port = _free_port()
        self._count = 0
        if self.user is not None:
            shutil.chown(self.root, self.user)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", USER, "--no-sync", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        command = [str(self.bindir / tool), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)

    def start(self) -> None:
        """Start the server (if it is not running) and wait until it accepts connections."""
        status = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"]
        if (
            subprocess.run(
                ["runuser", "-u", self.user, "--", *status] if self.user else status, capture_output=True
            ).returncode
            == 0
        ):
            return
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``immediate``: like a crash, connections cut at once)."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new, empty database; its URL."""
        import psycopg

        self._count += 1
        name = f"study{self._count}_{int(time.time() * 1000) % 100000}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres", autocommit=True
        ) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
