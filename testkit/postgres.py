"""A private PostgreSQL server for tests and benchmarks: initdb in a temporary folder,
listening on a free loopback port and a socket folder of its own, never the system service.

PostgreSQL refuses to run as root, so when the suite runs as root the server runs as the
``postgres`` system user (``runuser``) in a folder that user owns.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg

from testkit.net import free_port


def _server_binaries() -> Path:
    """``$OSTEOFLAG_PG_BIN``, else the newest Debian ``/usr/lib/postgresql/N/bin``."""
    if "OSTEOFLAG_PG_BIN" in os.environ:
        return Path(os.environ["OSTEOFLAG_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    return found[-1] if found else Path("/usr/lib/postgresql/15/bin")


BIN = _server_binaries()
USER = "osteoflag"


class PostgresServer:
    """``start()``, ``database()`` for a fresh empty database URL, ``stop()``."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="osteoflag-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self._runas: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
            self._runas = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [*self._runas, *args], capture_output=True, text=True, timeout=120, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}")

    def start(self) -> PostgresServer:
        if not (BIN / "initdb").exists():
            raise RuntimeError(f"{BIN}/initdb not found: run scripts/install-debian-tools.sh")
        self._run(
            str(BIN / "initdb"),
            "-D",
            str(self.data),
            f"--username={USER}",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.folder} -c fsync=off -c max_connections=200 "
            # A zone far from UTC (+12:45/+13:45): any naive or local-time handling shows up.
            "-c timezone=Pacific/Chatham"
        )
        self._run(
            str(BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.folder / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        )
        return self

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3 driver) of ``database`` on this server."""
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """Create a new empty database; return its SQLAlchemy URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        dsn = f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
