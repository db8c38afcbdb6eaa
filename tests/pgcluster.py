"""A throwaway PostgreSQL cluster that demands scram-sha-256 passwords (fixture ``scram_cluster``).

The machine's shared server trusts everyone, so a wrong password cannot be tested on it.
This fixture runs ``initdb`` into a temporary directory (as the ``postgres`` user when the
tests run as root: initdb refuses root), starts it on a free loopback port with fsync off,
yields its address and superuser credentials, and stops and removes it at the end of the
session. It takes about a second.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

PG_BIN_CANDIDATES = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")


@dataclass(frozen=True)
class ScramCluster:
    """Where the throwaway cluster listens and how to log in (the password is random per session)."""

    host: str
    port: int
    user: str
    password: str
    bin_dir: str
    data_dir: Path

    def dsn(self, dbname: str = "postgres") -> str:
        """Return a password-free libpq DSN (key/value form) for ``dbname``."""
        return f"host={self.host} port={self.port} user={self.user} dbname={dbname}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        """Return an autocommit connection as the superuser."""
        return psycopg.connect(self.dsn(dbname), password=self.password, autocommit=True)


def _pg_bin_dir() -> str | None:
    for candidate in PG_BIN_CANDIDATES:
        if os.access(os.path.join(candidate, "initdb"), os.X_OK):
            return candidate
    return None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def as_postgres(argv: list[str]) -> list[str]:
    """Return ``argv`` run as the postgres user when the tests run as root (initdb and postgres refuse root)."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def run_as_postgres(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as the server's user; raise RuntimeError with its stderr when it fails."""
    result = subprocess.run(as_postgres(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result


@pytest.fixture(scope="session")
def scram_cluster() -> Iterator[ScramCluster]:
    """Yield a running cluster with scram-sha-256 auth for TCP and socket; stop and remove it after."""
    bin_dir = _pg_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb) are not installed")
    root = Path(tempfile.mkdtemp(prefix="opskit-scram-"))
    data_dir = root / "data"
    password = "Sc-" + secrets.token_urlsafe(24)
    user = "opskit_admin"
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
    os.chmod(pwfile, 0o600)
    port = free_port()
    started = False
    try:
        run_as_postgres(
            [
                f"{bin_dir}/initdb",
                "-D",
                str(data_dir),
                "-U",
                user,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ]
        )
        pwfile.unlink()
        options = (
            f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c password_encryption=scram-sha-256"
        )
        run_as_postgres(
            [
                f"{bin_dir}/pg_ctl",
                "-D",
                str(data_dir),
                "-o",
                options,
                "-l",
                str(root / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        started = True
        cluster = ScramCluster("127.0.0.1", port, user, password, bin_dir, data_dir)
        _wait_until_ready(cluster)
        yield cluster
    finally:
        if started:
            with contextlib.suppress(RuntimeError):
                run_as_postgres([f"{bin_dir}/pg_ctl", "-D", str(data_dir), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)


def _wait_until_ready(cluster: ScramCluster) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            cluster.connect().close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
