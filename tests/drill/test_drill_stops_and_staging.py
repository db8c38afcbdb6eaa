"""A drill that cannot run or is stopped: the exit code says why, and it leaves no staging database or verdict.

Run through the real CLI against the local PostgreSQL: a drill interrupted while it checks the
restored database (a slow smoke query), a staging server that is down or refuses the role, and a
``--before`` moment that has not come yet (a mistyped incident time).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from opskit.cli import main
from tests.servers import REPO_ROOT

SERVER = "postgresql://postgres@127.0.0.1:5432"


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(f"{SERVER}/postgres", autocommit=True)


def _databases_like(prefix: str) -> list[str]:
    with _admin() as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,)).fetchall()
    return [str(r[0]) for r in rows]


def _free_port() -> int:
    """Return a loopback port nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def source_db() -> Iterator[str]:
    """A small database to back up; it and every staging database named after it are dropped afterwards."""
    name = f"opskit_t_dstop_{secrets.token_hex(4)}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(f"{SERVER}/{name}", autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, note text)")
        conn.execute("INSERT INTO orders (note) SELECT 'order ' || g FROM generate_series(1, 100) g")
    yield name
    with _admin() as conn:
        for db in [name, *_databases_like(f"{name}_drill")]:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def _config(tmp_path: Path, source: str, staging_dsn: str, checks_dir: Path | None = None) -> Path:
    """Write a config whose target ``app`` drills into ``staging_dsn``; return its path."""
    checks = checks_dir or tmp_path / "no-checks"
    path = tmp_path / "opskit.toml"
    path.write_text(
        f'[targets.app]\ndsn = "{SERVER}/{source}"\nstaging = "staging"\n'
        f'[targets.staging]\ndsn = "{staging_dsn}"\n'
        f'[storages.local]\nurl = "file://{tmp_path}/backups"\n'
        f'[tools]\nstate_dir = "{tmp_path}/state"\n'
        f'[drill]\nchecks_dir = "{checks}"\n'
    )
    return path


def _backup(config: Path) -> Path:
    """Take a backup of ``app``; return its folder in the local storage."""
    result = CliRunner().invoke(main, ["--config", str(config), "backup", "now", "--target", "app"])
    assert result.exit_code == 0, result.output
    folders = [p for p in (config.parent / "backups" / "app").iterdir() if (p / "manifest.json").is_file()]
    assert len(folders) == 1
    return folders[0]


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("opskit:")]


def test_a_drill_interrupted_while_it_checks_the_restored_database_drops_it_and_records_no_verdict(
    source_db: str, tmp_path: Path
) -> None:
    checks = tmp_path / "checks"
    checks.mkdir()
    (checks / "slow.sql").write_text("SELECT true FROM pg_sleep(60)")  # holds the drill in its verify phase
    config = _config(tmp_path, source_db, f"{SERVER}/postgres", checks)
    folder = _backup(config)
    staging_db = f"{source_db}_drill"
    drill = subprocess.Popen(
        [sys.executable, "-m", "opskit", "--config", str(config), "drill", "restore", "--database", staging_db],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # wait until the smoke query runs in the restored database
            with _admin() as conn:
                running = conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE datname = %s AND query LIKE %s", (staging_db, "%pg_sleep%")
                ).fetchone()
            if running or drill.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert running, "the drill never reached its smoke query"
        drill.send_signal(signal.SIGTERM)
        _stdout, stderr = drill.communicate(timeout=60)
    finally:
        if drill.poll() is None:
            drill.kill()
            drill.communicate()

    assert drill.returncode == 130, stderr
    assert _error_lines(stderr) == ["opskit: interrupted; nothing was committed for the run in progress"]
    assert staging_db not in _databases_like(source_db)  # the database the drill restored is gone
    assert not list(folder.glob("verify-*.json"))  # no verdict recorded for a drill that did not finish


@pytest.mark.parametrize("refusal", ["down", "unknown role"])
def test_a_drill_whose_staging_server_cannot_be_reached_exits_3_and_records_no_failure_against_the_backup(
    source_db: str, tmp_path: Path, refusal: str
) -> None:
    config = _config(tmp_path, source_db, f"{SERVER}/postgres")
    folder = _backup(config)
    staging = (
        f"postgresql://postgres@127.0.0.1:{_free_port()}/postgres"
        if refusal == "down"
        else f"postgresql://opskit_no_such_role_{secrets.token_hex(3)}@127.0.0.1:5432/postgres"
    )
    config = _config(tmp_path, source_db, staging)

    result = CliRunner().invoke(main, ["--config", str(config), "drill", "restore", "--target", "app"])

    assert result.exit_code == 3, result.output
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and errors[0].startswith("opskit: error: cannot connect to target 'staging'"), errors
    # The backup was never tried: no "fail" verdict next to it, no failed drill for status to report.
    assert not list(folder.glob("verify-*.json"))
    assert not (tmp_path / "backups" / "app" / "drills").exists()


def test_a_drill_before_a_moment_in_the_future_is_refused_with_exit_2_and_restores_nothing(
    source_db: str, tmp_path: Path
) -> None:
    config = _config(tmp_path, source_db, f"{SERVER}/postgres")
    folder = _backup(config)
    staging_db = f"{source_db}_drill"

    result = CliRunner().invoke(
        main,
        ["--config", str(config), "drill", "restore", "--before", "2999-06-01T00:00:00Z", "--database", staging_db],
    )

    assert result.exit_code == 2, result.output
    errors = _error_lines(result.stderr)
    assert len(errors) == 1, errors
    assert errors[0].startswith("opskit: error: --before 2999-06-01T00:00:00Z is in the future (it is now ")
    assert errors[0].endswith("; give the moment the incident began, in UTC (check the year and the time zone)")
    assert staging_db not in _databases_like(source_db)
    assert not list(folder.glob("verify-*.json"))


@pytest.fixture
def role_without_createdb() -> Iterator[str]:
    """A login role on the shared server that may connect but not create databases; dropped afterwards."""
    role = f"opskit_t_nocreatedb_{secrets.token_hex(4)}"
    with _admin() as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN NOCREATEDB NOSUPERUSER')
    yield role
    with _admin() as conn:
        conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_a_drill_whose_staging_role_lacks_createdb_exits_3_and_records_no_failure_against_the_backup(
    source_db: str, tmp_path: Path, role_without_createdb: str
) -> None:
    config = _config(tmp_path, source_db, f"{SERVER}/postgres")
    folder = _backup(config)
    config = _config(tmp_path, source_db, f"postgresql://{role_without_createdb}@127.0.0.1:5432/postgres")
    staging_db = f"{source_db}_drill"

    result = CliRunner().invoke(
        main, ["--config", str(config), "drill", "restore", "--target", "app", "--database", staging_db]
    )

    assert result.exit_code == 3, result.output
    assert _error_lines(result.stderr) == [
        f"opskit: error: staging target 'staging' refused to create the drill's database '{staging_db}': "
        "permission denied to create database; the staging role needs CREATEDB (ALTER ROLE ... CREATEDB) or to be "
        "a superuser; the backup was not tried, so no verdict was recorded"
    ]
    # The drill's environment, not the backup: no "fail" verdict, no failed drill report, no database.
    assert not list(folder.glob("verify-*.json"))
    assert not (tmp_path / "backups" / "app" / "drills").exists()
    assert staging_db not in _databases_like(source_db)
