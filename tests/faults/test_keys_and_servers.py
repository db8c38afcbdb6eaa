"""Faults around keys, tools and the server: a wrong or missing age identity, a pg_dump older
than the server, and the server ending pg_dump's session mid-dump.

A restore that cannot decrypt stops before any data moves (exit 4, the recipients
message, no database and no spool left). A too-old pg_dump is refused in preflight (exit
3) before anything is written. A dump whose backend is terminated fails with exit 4 and
commits nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pyrage
import pytest

from opskit.storage.base import StorageConfig
from tests.faults.helpers import (
    PG_ADMIN_DSN,
    databases_like,
    fake_old_pg_dump_dir,
    local_files,
    one_line_error,
    slow_tools_dir,
    wait_for,
    write_setup,
)


def identity_file(path: Path) -> tuple[Path, str]:
    """Write a new age identity to ``path``; return (path, its recipient)."""
    identity = pyrage.x25519.Identity.generate()
    path.write_text(f"# test identity\n{identity}\n")
    return path, str(identity.to_public())


@pytest.mark.parametrize("problem", ["wrong identity", "missing identity"])
def test_restore_without_the_right_age_identity_exits_4_and_leaves_nothing(
    tmp_path: Path, database: str, local_storage: StorageConfig, problem: str
) -> None:
    _, recipient = identity_file(tmp_path / "right.key")
    encrypted = f'[encryption]\nrecipients = ["{recipient}"]\n'
    setup = write_setup(tmp_path, database, local_storage, extra=encrypted)
    backed_up = setup.run("backup", "now")
    assert backed_up.returncode == 0, backed_up.stderr
    if problem == "wrong identity":
        wrong, _ = identity_file(tmp_path / "wrong.key")
        encrypted += f'identity = "file:{wrong}"\n'
    setup = write_setup(tmp_path, database, local_storage, extra=encrypted)

    for jobs in ("1", "2"):
        result = setup.run("restore", "latest", "--jobs", jobs)

        assert result.returncode == 4, result.stderr
        line = one_line_error(result.stderr)
        assert "is encrypted to recipients ['sha256:" in line
        assert ("matches none" if problem == "wrong identity" else "no identity is configured") in line
        assert databases_like(database + "_restore_") == []
        assert list(setup.state_dir.iterdir()) == []


def test_a_pg_dump_older_than_the_server_is_refused_with_exit_3_before_anything_is_written(
    tmp_path: Path, database: str, local_storage: StorageConfig
) -> None:
    old = fake_old_pg_dump_dir(tmp_path)
    setup = write_setup(tmp_path, database, local_storage, target_extra=f'pg_bin_dir = "{old}"')

    result = setup.run("backup", "now")

    assert result.returncode == 3, result.stderr
    line = one_line_error(result.stderr)
    assert "no pg_dump of major version 15 or newer" in line and "found: pg_dump 9.2 " in line
    assert "postgresql-client-15" in line
    assert local_files(local_storage) == []


def pg_dump_backend(database: str) -> int | None:
    """Return the pid of the server backend serving pg_dump on ``database`` (None until it connects)."""
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = 'pg_dump'", (database,)
        ).fetchone()
    return int(row[0]) if row else None


def test_a_server_that_ends_the_dump_session_mid_dump_fails_the_backup_with_exit_4(
    tmp_path: Path, database: str, local_storage: StorageConfig
) -> None:
    slow = slow_tools_dir(tmp_path, bytes_per_second=1024 * 1024)
    setup = write_setup(tmp_path, database, local_storage, target_extra=f'pg_bin_dir = "{slow}"')
    cli = setup.start("backup", "now")
    backend = wait_for(lambda: pg_dump_backend(database), what="pg_dump's backend")
    time.sleep(0.5)  # let it stream a little first
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (backend,))
    _, stderr = cli.communicate(timeout=60)

    assert cli.returncode == 4, stderr
    line = one_line_error(stderr)
    assert "pg_dump of target 'app' failed" in line and "terminat" in line
    assert setup.backups() == []
    assert local_files(local_storage) == []
