"""A throwaway PostgreSQL cluster that archives its WAL with ``opskit wal push`` (fixture ``archiving_cluster``).

Like ``tests/pgcluster.py``: ``initdb`` into a temporary directory as the ``postgres`` user
(initdb refuses root), a free loopback port, fsync off. On top: ``wal_level = replica``,
``archive_mode = on`` with ``archive_command`` running the real CLI against a config file and
a ``file://`` storage in the same directory, and trust authentication for replication
connections, so ``pg_basebackup`` works. The archive_command runs as ``postgres``, which
cannot enter root's home where the test interpreter lives: it uses the system's Python of the
same minor version with the virtualenv's site-packages on PYTHONPATH (the compiled wheels are
built for that ABI).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.pgcluster import free_port, run_as_postgres
from tests.servers import REPO_ROOT

PG_BIN_CANDIDATES = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")


def _pg_bin_dir() -> str | None:
    for candidate in PG_BIN_CANDIDATES:
        if os.access(os.path.join(candidate, "initdb"), os.X_OK):
            return candidate
    return None


def opskit_command() -> list[str]:
    """Return the argv prefix that runs this checkout's opskit as the server's user."""
    if os.geteuid() != 0:
        return [sys.executable, "-m", "opskit"]
    system_python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if not os.access(system_python, os.X_OK):
        pytest.skip(f"{system_python} is needed to run opskit as the postgres user")
    site = sysconfig.get_paths()["purelib"]
    return ["env", f"PYTHONPATH={REPO_ROOT}:{site}", system_python, "-m", "opskit"]


def pitr_start_args(pgdata: Path, *selection: str) -> list[str]:
    """Return ``restore --pitr SELECTION --pgdata PGDATA --start --json``, the server's restore_command this opskit."""
    return [
        "restore",
        "--pitr",
        *selection,
        "--pgdata",
        str(pgdata),
        "--start",
        "--opskit-command",
        shlex.join(opskit_command()),
        "--json",
    ]


def give_to_postgres(path: Path) -> None:
    """Make ``path`` (and everything under it) owned by postgres when the tests run as root."""
    if os.geteuid() != 0:
        return
    for dirpath, _dirs, files in os.walk(path):
        shutil.chown(dirpath, "postgres", "postgres")
        for name in files:
            shutil.chown(os.path.join(dirpath, name), "postgres", "postgres")


@dataclass
class ArchivingCluster:
    """A running cluster whose archive_command is ``opskit wal push``, and the opskit config it uses."""

    root: Path
    port: int
    bin_dir: str
    data_dir: Path
    config_path: Path
    archive_dir: Path
    running: bool = True
    extra_config: dict[str, Any] = field(default_factory=dict)

    def dsn(self, dbname: str = "postgres") -> str:
        """Return the libpq DSN of ``dbname`` on this cluster (trust auth, user postgres)."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        """Return an autocommit connection as the superuser."""
        return psycopg.connect(self.dsn(dbname), autocommit=True)

    def switch_wal(self) -> str:
        """Close the current WAL segment (so it is archived) and return the name of the closed one."""
        with self.connect() as conn:
            row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
        assert row is not None
        return str(row[0])

    def wait_archived(self, name: str, timeout: float = 60) -> None:
        """Wait until the server reports WAL file ``name`` (or a later one) archived."""
        deadline = time.monotonic() + timeout
        while True:
            with self.connect() as conn:
                row = conn.execute("SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver").fetchone()
            assert row is not None
            if row[0] is not None and row[0] >= name:
                return
            if time.monotonic() > deadline:
                log = (self.root / "server.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"{name} was not archived (last {row[0]}, failed {row[1]}):\n{log}")
            time.sleep(0.1)

    def opskit(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run the real CLI (as the test user) with this cluster's config and return its result."""
        return subprocess.run(
            [sys.executable, "-m", "opskit", "--config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=120,
        )

    def recover_and_start(self, pgdata: Path, *selection: str) -> dict[str, Any]:
        """Run ``restore --pitr SELECTION --pgdata PGDATA --start`` and return its JSON report (asserting exit 0).

        The recovered server runs opskit as ``postgres`` (:func:`opskit_command`) in its restore_command.
        """
        result = self.opskit(*pitr_start_args(pgdata, *selection))
        assert result.returncode == 0, result.stderr
        report: dict[str, Any] = json.loads(result.stdout)
        return report

    def stop(self) -> None:
        """Stop the server at once (no shutdown checkpoint) if it runs."""
        if self.running:
            with contextlib.suppress(RuntimeError):
                run_as_postgres([f"{self.bin_dir}/pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"])
            self.running = False


def config_text(cluster_dsn: str, archive_dir: Path, state_dir: Path, encryption: str = "") -> str:
    """Return an opskit config with target ``app`` on the cluster and the ``file://`` storage ``archive_dir``."""
    return (
        f'[targets.app]\ndsn = "{cluster_dsn}"\nstorages = ["local"]\n\n'
        f'[storages.local]\nurl = "file://{archive_dir}"\n\n'
        f'[tools]\nstate_dir = "{state_dir}"\n\n' + encryption
    )


def start_archiving_cluster(encryption: str = "") -> ArchivingCluster:
    """Create and start one archiving cluster (see the module docstring); the caller stops it."""
    bin_dir = _pg_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb) are not installed")
    root = Path(tempfile.mkdtemp(prefix="opskit-pitr-", dir="/tmp"))
    os.chmod(root, 0o755)
    data_dir = root / "data"
    archive_dir = root / "archive"
    state_dir = root / "state"
    # Made now so that it belongs to postgres: the archive_command (postgres) writes in it, and
    # folders the test's own opskit runs (root) create would not be writable for it.
    (archive_dir / "app" / "wal").mkdir(parents=True)
    state_dir.mkdir()
    port = free_port()
    config_path = root / "opskit.toml"
    config_path.write_text(
        config_text(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", archive_dir, state_dir, encryption)
    )
    give_to_postgres(root)
    run_as_postgres(
        [
            f"{bin_dir}/initdb",
            "-D",
            str(data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ]
    )
    push = " ".join([*opskit_command(), "--config", str(config_path), "wal", "push", "--target", "app", "%p"])
    settings = {
        "port": str(port),
        "listen_addresses": "'127.0.0.1'",
        "unix_socket_directories": f"'{root}'",
        "fsync": "off",
        "synchronous_commit": "off",
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": "'" + push.replace("'", "''") + "'",
        "max_wal_senders": "4",
        "log_line_prefix": "'%m '",
    }
    with open(data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
        conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
    run_as_postgres(
        [f"{bin_dir}/pg_ctl", "-D", str(data_dir), "-l", str(root / "server.log"), "-w", "-t", "60", "start"]
    )
    cluster = ArchivingCluster(root, port, bin_dir, data_dir, config_path, archive_dir)
    deadline = time.monotonic() + 30
    while True:
        try:
            cluster.connect().close()
            return cluster
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                cluster.stop()
                raise
            time.sleep(0.1)


@pytest.fixture
def archiving_cluster() -> Iterator[Callable[..., ArchivingCluster]]:
    """Yield a factory ``(encryption="") -> ArchivingCluster``; every cluster it made is stopped and removed after."""
    made: list[ArchivingCluster] = []

    def factory(encryption: str = "") -> ArchivingCluster:
        cluster = start_archiving_cluster(encryption)
        made.append(cluster)
        return cluster

    yield factory
    for cluster in made:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
def restored_dirs() -> Iterator[list[tuple[str, Path]]]:
    """(bin dir, data dir) of servers a test restores and starts; each still running is stopped at the end."""
    made: list[tuple[str, Path]] = []
    yield made
    for bin_dir, pgdata in made:
        if (pgdata / "postmaster.pid").exists():
            subprocess.run(
                ["runuser", "-u", "postgres", "--", f"{bin_dir}/pg_ctl", "-D", str(pgdata), "-m", "immediate", "stop"],
                capture_output=True,
                check=False,
            )


@dataclass(frozen=True)
class AgeKey:
    """An age identity in a key file the server's user can read, and the [encryption] table naming it."""

    identity: Any
    path: Path

    @property
    def encryption(self) -> str:
        return f'[encryption]\nrecipients = ["{self.identity.to_public()}"]\nidentity = "file:{self.path}"\n'


@pytest.fixture
def age_key() -> Iterator[AgeKey]:
    """Yield a fresh age identity written to a key file (0600, the server's user's); removed afterwards."""
    import pyrage

    key_dir = Path(tempfile.mkdtemp(prefix="opskit-age-", dir="/tmp"))
    identity = pyrage.x25519.Identity.generate()
    path = key_dir / "age.key"
    path.write_text(str(identity) + "\n")
    path.chmod(0o600)
    give_to_postgres(key_dir)
    try:
        yield AgeKey(identity, path)
    finally:
        shutil.rmtree(key_dir, ignore_errors=True)


@dataclass
class ArchivedHistory:
    """An archive written by a stopped cluster: a base backup, then ``segments`` each holding 2 marker rows.

    ``quiet_moment`` lies after the last commit and before a restore point and the last
    segment switch: inside the PITR window, with no transaction after it. ``rows`` is how
    many markers the cluster had when it stopped.
    """

    cluster: ArchivingCluster
    segments: list[str]
    quiet_moment: Any
    rows: int

    def copy(self, root: Path) -> ArchivingCluster:
        """Return the cluster seen through a copy of its archive under ``root`` (damage the copy, not this one)."""
        archive_dir = root / "archive"
        shutil.copytree(self.cluster.archive_dir, archive_dir)
        (root / "state").mkdir()
        config_path = root / "opskit.toml"
        config_path.write_text(config_text(self.cluster.dsn(), archive_dir, root / "state"))
        give_to_postgres(root)
        return dataclasses.replace(
            self.cluster, root=root, config_path=config_path, archive_dir=archive_dir, running=False
        )


def write_history(cluster: ArchivingCluster, segments: int = 4) -> ArchivedHistory:
    """Take a base backup of ``cluster``, archive ``segments`` segments of 2 markers each and a quiet end; stop it."""
    with cluster.connect() as conn:
        conn.execute("CREATE TABLE markers (id serial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())")
    backup = cluster.opskit("backup", "now", "--kind", "base")
    assert backup.returncode == 0, backup.stderr
    names = []
    for _ in range(segments):
        with cluster.connect() as conn:
            conn.execute("INSERT INTO markers DEFAULT VALUES")
            conn.execute("INSERT INTO markers DEFAULT VALUES")
        names.append(cluster.switch_wal())
        cluster.wait_archived(names[-1])
    time.sleep(0.3)
    with cluster.connect() as conn:
        row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        time.sleep(0.3)
        conn.execute("SELECT pg_create_restore_point('quiet')")  # WAL after the moment, but no transaction
    names.append(cluster.switch_wal())
    cluster.wait_archived(names[-1])
    cluster.stop()
    return ArchivedHistory(cluster, names, row[0], 2 * segments)


@pytest.fixture(scope="session")
def archived_history() -> Iterator[ArchivedHistory]:
    """Yield one ArchivedHistory for the session (built once: each test damages a copy of its archive)."""
    cluster = start_archiving_cluster()
    try:
        yield write_history(cluster)
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
def history_copy(archived_history: ArchivedHistory) -> Iterator[ArchivingCluster]:
    """Yield the session's history seen through a fresh copy of its archive; servers started in it are stopped after."""
    root = Path(tempfile.mkdtemp(prefix="opskit-pitr-copy-", dir="/tmp"))
    os.chmod(root, 0o755)
    copy = archived_history.copy(root)
    try:
        yield copy
    finally:
        for pid_file in root.rglob("postmaster.pid"):
            subprocess.run(
                [
                    "runuser",
                    "-u",
                    "postgres",
                    "--",
                    f"{copy.bin_dir}/pg_ctl",
                    "-D",
                    str(pid_file.parent),
                    "-m",
                    "immediate",
                    "stop",
                ],
                capture_output=True,
                check=False,
            )
        shutil.rmtree(root, ignore_errors=True)
