"""Faults at the seams of restores, drills and the checks around a backup, found beside ``backup now``'s.

- A database with more tables than the server's lock table holds: the row counts after a
  restore and a drill's post-checks must not lock every table (and its indexes) in one
  transaction, or the restore fails after its data is loaded.
- An empty database: its archive lists no entries, and is still a whole archive that verifies,
  restores and drills.
- A ``tools.state_dir`` that cannot be created: a restore and a base backup fail with exit 2
  and one line naming it, never with a raw OSError (exit 1).
- A malformed age recipient: refused in the backup's preflight, before it takes a
  lock or starts pg_dump.

Each test runs the real CLI against real PostgreSQL servers (the shared one, or a throwaway
cluster with a small lock table) and asserts the exit code, the one error line and what is left.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.faults.helpers import (
    PG_ADMIN_DSN,
    PG_HOST,
    Setup,
    databases_like,
    drop_database,
    local_files,
    one_line_error,
    write_setup,
)
from tests.faults.test_backup_seams import create_many_tables, local_storage, small_lock_cluster  # noqa: F401

# Backed up from the shared server (whose lock table holds them easily: 64 x 100 entries), restored
# into a throwaway cluster whose lock table holds some 300 (how many exactly varies with the shared
# memory left over): pg_restore locks each table in a transaction of its own; counting them all in
# one transaction locks each table and its primary key index, 1200 at once.
MANY_TABLES = 600


def databases_on(address: str) -> list[str]:
    """Return the names of the databases on the server at ``address``."""
    with psycopg.connect(f"{address} dbname=postgres", autocommit=True) as conn:
        return [row[0] for row in conn.execute("SELECT datname FROM pg_database ORDER BY 1").fetchall()]


@pytest.fixture(scope="module")
def many_tables() -> Iterator[str]:
    """Yield a database on the shared server holding MANY_TABLES tables of one row each; drop it afterwards."""
    name = f"opskit_t_many_{secrets.token_hex(4)}"
    try:
        create_many_tables(f"host={PG_HOST} user=postgres", name, MANY_TABLES)
        yield name
    finally:
        drop_database(name)


def backed_up(tmp_path: Path, database: str, staging: str) -> Setup:
    """Write a config whose target ``app`` is ``database`` and whose staging is ``staging``'s server; back it up."""
    setup = write_setup(
        tmp_path,
        database,
        local_storage(tmp_path),
        target_extra='staging = "staging"',
        extra=f'[targets.staging]\ndsn = "{staging} dbname=postgres"\n',
    )
    result = setup.run("backup", "now")
    assert result.returncode == 0, result.stderr
    return setup


def test_a_restore_of_more_tables_than_the_lock_table_holds_checks_every_table(
    many_tables: str,
    small_lock_cluster: str,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    setup = backed_up(tmp_path, many_tables, small_lock_cluster)

    result = setup.run("restore", "latest", "--to", f"{small_lock_cluster} dbname=many_restored", "--json")

    assert result.returncode == 0, result.stderr
    restored = json.loads(result.stdout)
    assert (restored["tables_checked"], restored["mismatches"]) == (MANY_TABLES, [])
    with psycopg.connect(f"{small_lock_cluster} dbname=many_restored") as conn:
        assert conn.execute(f"SELECT id FROM t{MANY_TABLES}").fetchall() == [(MANY_TABLES,)]


def test_a_drill_of_more_tables_than_the_lock_table_holds_passes_and_checks_every_table(
    many_tables: str,
    small_lock_cluster: str,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    setup = backed_up(tmp_path, many_tables, small_lock_cluster)

    result = setup.run("drill", "restore", "--target", "app", "--database", "many_drill", "--json")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"] == "pass"
    checks = {check["name"]: check for check in report["checks"]}
    assert checks["row counts"]["ok"] and checks["row counts"]["actual"] == f"{MANY_TABLES} tables match", checks
    assert "many_drill" not in databases_on(small_lock_cluster)


@pytest.fixture
def empty_database() -> Iterator[str]:
    """Yield a database without any object on the shared server; drop it and its restores afterwards."""
    name = f"opskit_t_empty_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        for database in databases_like(name):
            drop_database(database)


def test_the_backup_of_an_empty_database_verifies_drills_and_restores(empty_database: str, tmp_path: Path) -> None:
    staging = f"host={PG_HOST} user=postgres"
    setup = backed_up(tmp_path, empty_database, staging)

    verified = setup.run("backup", "verify", "latest", "--json")
    drilled = setup.run("drill", "restore", "--target", "app", "--database", f"{empty_database}_drill", "--json")
    restored = setup.run("restore", "latest", "--json")

    assert verified.returncode == 0, verified.stderr
    (verification,) = json.loads(verified.stdout)["verifications"]
    toc = next(check for check in verification["checks"] if check["check"] == "pg_restore --list")
    assert toc["ok"] and str(toc["actual"]).startswith("0 entries (a database without objects")
    assert drilled.returncode == 0, drilled.stderr
    assert json.loads(drilled.stdout)["verdict"] == "pass"
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["tables_checked"] == 0
    assert databases_like(f"{empty_database}_drill") == []


def test_a_restore_with_a_state_dir_that_cannot_be_created_exits_2_naming_it_and_leaves_no_database(
    tmp_path: Path, empty_database: str
) -> None:
    setup = backed_up(tmp_path, empty_database, f"host={PG_HOST} user=postgres")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    # Below a file, as the default ./.opskit-state is under a read-only working directory.
    setup.path.write_text(setup.path.read_text().replace(str(setup.state_dir), str(blocker / "state")))

    result = setup.run("restore", "latest", "--json")

    assert result.returncode == 2, result.stderr
    line = one_line_error(result.stderr)
    assert f"cannot create the state directory {blocker / 'state'}: Not a directory" in line
    assert "tools.state_dir" in line
    assert json.loads(result.stdout)["error"]["type"] == "ConfigError"
    assert databases_like(f"{empty_database}_restore_") == []


def test_a_malformed_age_recipient_fails_a_backup_with_exit_2_before_it_locks_or_dumps(
    tmp_path: Path, empty_database: str
) -> None:
    storage = local_storage(tmp_path)
    setup = write_setup(tmp_path, empty_database, storage, extra='[encryption]\nrecipients = ["age1notvalid"]\n')

    result = setup.run("backup", "now", "--json")

    assert result.returncode == 2, result.stderr
    line = one_line_error(result.stderr)
    assert "'age1notvalid' is not a valid age public key" in line
    assert json.loads(result.stdout)["error"]["type"] == "ConfigError"
    # Refused in the preflight: no backup started (no lock, no pg_dump), nothing stored.
    assert '"opskit.backup' not in result.stderr
    assert local_files(storage) == []
