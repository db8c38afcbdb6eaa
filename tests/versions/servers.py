"""The PostgreSQL version matrix: servers 13, 14, 16, 17 and 18 beside the machine's 15 (fixture ``pg_servers``).

``scripts/setup-pg-versions.sh`` (run by ``make test``) installs the servers under ``.tools/pg/<major>``
and the client tools 17 and 18 under ``.tools/pgclient/<major>``. The session fixture initdbs every
installed major into a temporary directory (fsync off, trust auth, a free loopback port) and starts
them all at once in threads, so the matrix costs one server start, not five; they are stopped
(immediate mode) and removed when the session ends. A major whose package is not installed, or
whose server does not start, is reported and its tests are skipped with that reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.pgcluster import free_port, run_as_postgres

ROOT = Path(__file__).resolve().parents[2]
SERVER_MAJORS = (13, 14, 16, 17, 18)
CLIENT_MAJORS = (15, 16, 17, 18)  # 15: the machine's own (Debian's), the others the matrix's


@dataclass(frozen=True)
class PgServer:
    """One running server of the matrix: its major version, loopback port and bin directory."""

    major: int
    port: int
    bin_dir: str

    def dsn(self, dbname: str = "postgres") -> str:
        """Return a libpq URL for ``dbname`` as the trusted superuser postgres."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        """Return an autocommit connection to ``dbname``."""
        return psycopg.connect(self.dsn(dbname), autocommit=True)


def server_bin_dir(major: int) -> Path:
    """Return where setup-pg-versions.sh installs server ``major``'s binaries."""
    return ROOT / ".tools" / "pg" / str(major) / "bin"


def client_bin_dir(major: int) -> Path | None:
    """Return the installed bin directory of client tools ``major`` (the matrix's or Debian's), or None."""
    for candidate in (ROOT / ".tools" / "pgclient" / str(major) / "bin", Path(f"/usr/lib/postgresql/{major}/bin")):
        if os.access(candidate / "pg_restore", os.X_OK):
            return candidate
    return None


def _start(major: int, root: Path) -> PgServer:
    """initdb and start server ``major`` under ``root``; return it. Raises RuntimeError saying why it could not."""
    bin_dir = server_bin_dir(major)
    if not os.access(bin_dir / "postgres", os.X_OK):
        raise RuntimeError(f"PostgreSQL {major} is not installed (run scripts/setup-pg-versions.sh)")
    data_dir = root / str(major)
    run_as_postgres([str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8",
          "--locale=C"])  # fmt: skip
    port = free_port()
    options = (
        f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=40"
    )
    run_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-o", options, "-l", str(root / f"{major}.log"), "-w",
          "-t", "60", "start"])  # fmt: skip
    return PgServer(major, port, str(bin_dir))


def _stop(server: PgServer, root: Path) -> None:
    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
        run_as_postgres(
            [f"{server.bin_dir}/pg_ctl", "-D", str(root / str(server.major)), "-m", "immediate", "-w", "stop"]
        )


@pytest.fixture(scope="session")
def pg_servers() -> Iterator[dict[int, PgServer | str]]:
    """Yield {major: running PgServer, or the reason it is not running}; stop them all at the end."""
    root = Path(tempfile.mkdtemp(prefix="opskit-versions-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    servers: dict[int, PgServer | str] = {}
    with ThreadPoolExecutor(max_workers=len(SERVER_MAJORS)) as pool:
        futures = {major: pool.submit(_start, major, root) for major in SERVER_MAJORS}
        for major, future in futures.items():
            try:
                servers[major] = future.result()
            except Exception as exc:  # a missing package or a failed start: those tests skip with the reason
                servers[major] = str(exc)
    try:
        yield servers
    finally:
        for server in servers.values():
            if isinstance(server, PgServer):
                _stop(server, root)
        shutil.rmtree(root, ignore_errors=True)


def require(servers: dict[int, PgServer | str], major: int) -> PgServer:
    """Return server ``major`` or skip the test with the reason it is not running."""
    server = servers[major]
    if isinstance(server, str):
        pytest.skip(server)
    return server
