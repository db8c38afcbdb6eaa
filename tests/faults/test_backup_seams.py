"""Faults at the seams of ``opskit backup now``: what pg_dump alone survives, the backup must too.

- A database with more tables than the server's lock table holds twice: pg_dump locks every
  table once; the row counts read beside it inside the same snapshot must not lock them all
  again (and their indexes) in one transaction, or the backup fails with "out of shared memory"
  where pg_dump alone succeeds.
- A database whose name holds ``=`` (and a space, a quote, a backslash): pg_dumpall's
  ``--database`` is read by libpq as "a name or a connection string".
- A ``tools.state_dir`` that cannot be created: a backup without a password needs no state,
  and one with a password is refused with exit 2 before anything is written.

Each test runs the real CLI against real PostgreSQL servers (the shared one, or a throwaway
cluster with a small lock table) and asserts the exit code, the one error line and what is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from opskit.storage.base import StorageConfig
from tests.faults.helpers import (
    PG_ADMIN_DSN,
    PG_HOST,
    REAL_PG_BIN,
    drop_database,
    local_files,
    one_line_error,
    write_setup,
)
from tests.pgcluster import free_port, run_as_postgres

# A lock table of roughly 300 entries: 16 per connection slot, 8 connections, no WAL senders
# or background workers to add slots (https://www.postgresql.org/docs/current/runtime-config-locks.html).
SMALL_LOCK_TABLE = (
    "-c max_connections=8 -c max_locks_per_transaction=16 -c max_wal_senders=0 "
    "-c max_worker_processes=0 -c autovacuum=off"
)
# pg_dump alone locks each of them once (fits); each table and its primary key index locked again
# in one transaction by the row counts (three times as many locks as tables) does not fit.
MANY_TABLES = 150


def local_storage(tmp_path: Path) -> StorageConfig:
    """Return a ``file://`` storage named ``local`` under ``tmp_path``."""
    return StorageConfig(name="local", url=f"file://{tmp_path / 'backups'}")


@pytest.fixture(scope="module")
def small_lock_cluster() -> Iterator[str]:
    """Yield the address (``host=... port=...``) of a throwaway trust cluster with a small lock table."""
    bin_dir = REAL_PG_BIN
    if not os.access(os.path.join(bin_dir, "initdb"), os.X_OK):
        pytest.skip("PostgreSQL server binaries (initdb) are not installed")
    root = Path(tempfile.mkdtemp(prefix="opskit-locks-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    port = free_port()
    started = False
    try:
        run_as_postgres([f"{bin_dir}/initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"])
        options = f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root} -c fsync=off"
        log = str(root / "log")
        start = ["-w", "-t", "60", "start"]
        run_as_postgres(
            [f"{bin_dir}/pg_ctl", "-D", str(data), "-o", f"{options} {SMALL_LOCK_TABLE}", "-l", log, *start]
        )
        started = True
        yield f"host=127.0.0.1 port={port} user=postgres"
    finally:
        if started:
            with contextlib.suppress(RuntimeError):
                run_as_postgres([f"{bin_dir}/pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)


def create_many_tables(address: str, database: str, count: int) -> None:
    """Create ``database`` with ``count`` tables of one row, each with a primary key (a few per transaction)."""
    with psycopg.connect(f"{address} dbname=postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    with psycopg.connect(f"{address} dbname={database}", autocommit=True) as conn:
        for number in range(1, count + 1):
            conn.execute(f"CREATE TABLE t{number} (id int PRIMARY KEY)")
            conn.execute(f"INSERT INTO t{number} VALUES ({number})")


def test_a_database_with_more_tables_than_the_lock_table_holds_twice_is_backed_up_as_pg_dump_alone_is(
    small_lock_cluster: str, tmp_path: Path
) -> None:
    create_many_tables(small_lock_cluster, "many", MANY_TABLES)
    # What the server allows: pg_dump on its own dumps every table.
    alone = subprocess.run(
        [f"{REAL_PG_BIN}/pg_dump", f"--dbname={small_lock_cluster} dbname=many", "-Fc"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert alone.returncode == 0, alone.stderr
    storage = local_storage(tmp_path)
    setup = write_setup(tmp_path, "many", storage)
    setup.path.write_text(setup.path.read_text().replace(f"host={PG_HOST} user=postgres", small_lock_cluster))

    result = setup.run("backup", "now", "--json")

    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    counts = {table["name"]: table["rows"] for table in manifest["tables"]}
    assert counts == {f"t{number}": 1 for number in range(1, MANY_TABLES + 1)}
    verified = setup.run("backup", "verify", "latest")
    assert verified.returncode == 0, verified.stderr
    assert not [p for p in local_files(storage) if p.name.startswith(".opskit-tmp-")]


@pytest.fixture
def odd_database() -> Iterator[str]:
    """Yield a database named with a space, a quote, an ``=`` and a backslash, holding one table."""
    name = f"opskit_t_odd o'ne=two\\{secrets.token_hex(3)}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with psycopg.connect(host=PG_HOST, user="postgres", dbname=name, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
            conn.execute("INSERT INTO t SELECT generate_series(1, 7)")
        yield name
    finally:
        drop_database(name)


def test_a_database_whose_name_holds_an_equals_sign_is_backed_up_with_its_globals(
    odd_database: str, tmp_path: Path
) -> None:
    storage = local_storage(tmp_path)
    setup = write_setup(tmp_path, "unused", storage)
    quoted = odd_database.replace("\\", "\\\\").replace("'", "\\'")
    # In TOML a literal string ('''...''') keeps the libpq quoting as written.
    dsn = f"host={PG_HOST} user=postgres dbname='{quoted}'"
    setup.path.write_text(
        setup.path.read_text().replace(f'"host={PG_HOST} user=postgres dbname=unused"', f"'''{dsn}'''")
    )

    result = setup.run("backup", "now", "--json")

    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert {artifact["name"] for artifact in manifest["artifacts"]} == {"db", "globals"}
    assert [(t["name"], t["rows"]) for t in manifest["tables"]] == [("t", 7)]
    verified = setup.run("backup", "verify", "latest")
    assert verified.returncode == 0, verified.stderr


def test_a_state_dir_that_cannot_be_created_fails_no_backup_without_a_password(tmp_path: Path, database: str) -> None:
    storage = local_storage(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    setup = write_setup(tmp_path, database, storage, state_dir=tmp_path / "state")
    # A state_dir below a file cannot be created (as ./.opskit-state under a read-only working directory).
    setup.path.write_text(setup.path.read_text().replace(str(tmp_path / "state"), str(blocker / "state")))

    result = setup.run("backup", "now")

    assert result.returncode == 0, result.stderr
    assert len(setup.backups()) == 1


def test_a_password_with_a_state_dir_that_cannot_be_created_exits_2_before_anything_is_written(
    tmp_path: Path, database: str
) -> None:
    storage = local_storage(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    setup = write_setup(tmp_path, database, storage, target_extra='password = "env:OPSKIT_T_DB_PASSWORD"')
    setup.path.write_text(setup.path.read_text().replace(str(tmp_path / "state"), str(blocker / "state")))

    started = time.monotonic()
    result = setup.run("backup", "now", "--json", env={"OPSKIT_T_DB_PASSWORD": "unused-with-trust"})

    assert result.returncode == 2, result.stderr
    line = one_line_error(result.stderr)
    assert f"cannot prepare the password file directory {blocker / 'state' / 'pgpass'}" in line
    assert "tools.state_dir must be writable by opskit" in line
    assert json.loads(result.stdout)["error"]["type"] == "ConfigError"
    # Refused in preflight: no artifact, no temp file, no lock, nothing listed.
    assert local_files(storage) == []
    assert setup.backups() == []
    assert time.monotonic() - started < 60
