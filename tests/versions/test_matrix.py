"""Backup, restore (both routes), verify and a drill on PostgreSQL 13, 14, 16, 17 and 18; restores across versions.

The servers are the matrix of tests/versions/servers.py, started once per session; the client
tools are the local ones plus the matrix's 16, 17 and 18, all named in ``tools.pg_bin_dir`` (a
list), so opskit picks per server and per direction as it would in production.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from opskit.backup import backup
from opskit.config.load import build_config
from opskit.context import AppContext
from opskit.core.errors import UnreachableError
from opskit.drill import drill
from opskit.ops import config_check
from opskit.restore import restore, verify
from tests.servers import REPO_ROOT
from tests.versions.servers import CLIENT_MAJORS, SERVER_MAJORS, PgServer, client_bin_dir, require

CHECKS_DIR = REPO_ROOT / "runbooks" / "checks"
SOURCE_SQL = """
CREATE TABLE parent (a int);
CREATE TABLE child () INHERITS (parent);
INSERT INTO child VALUES (1);
CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, at timestamptz DEFAULT now());
INSERT INTO items (name) SELECT 'item ' || g FROM generate_series(1, 500) g;
CREATE INDEX items_name ON items (name);
CREATE VIEW recent AS SELECT * FROM items WHERE id > 400;
"""


def bin_dirs(*majors: int) -> list[str]:
    """Return the installed client bin directories of ``majors`` (the local 15 is found by the search)."""
    return [str(d) for d in (client_bin_dir(m) for m in majors) if d is not None]


def source_database(server: PgServer) -> str:
    """Create a database with inheritance, a serial table, an index and a view on ``server``; return its name."""
    name = f"opskit_v_{secrets.token_hex(4)}"
    with server.connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with server.connect(name) as conn:
        conn.execute(SOURCE_SQL)
    return name


def context(tmp_path: Path, targets: dict[str, str], pg_bin_dir: list[str], **drill: Any) -> AppContext:
    """Return a context with ``targets`` (name -> DSN) on one local storage, and ``staging`` as drill staging."""
    raw: dict[str, Any] = {
        "targets": {name: {"dsn": dsn} for name, dsn in targets.items()},
        "storages": {"local": {"url": f"file://{tmp_path / 'backups'}"}},
        "tools": {"state_dir": str(tmp_path / "state"), "pg_bin_dir": pg_bin_dir},
        "drill": drill,
    }
    raw["targets"]["app"]["staging"] = "staging"
    return AppContext(config=build_config(raw))


@pytest.mark.parametrize("major", SERVER_MAJORS)
def test_backup_restore_verify_and_drill_work_on_each_major(
    pg_servers: dict[int, Any], tmp_path: Path, major: int
) -> None:
    server = require(pg_servers, major)
    source = source_database(server)
    ctx = context(
        tmp_path,
        {"app": server.dsn(source), "staging": server.dsn()},
        bin_dirs(*CLIENT_MAJORS),
        jobs=2,
        checks_dir=str(CHECKS_DIR),
    )

    manifest = backup.run(ctx, target="app").manifest
    one_job = restore.run(ctx, target="app", to=server.dsn(f"{source}_one"))
    two_jobs = restore.run(ctx, target="app", to=server.dsn(f"{source}_two"), jobs=2)
    verified = verify.run(ctx, target="app")
    report = drill.run(ctx, target="app", trigger="test")

    assert manifest.server["major"] == major and manifest.tools["pg_dump"]["major"] >= major
    assert one_job.ok and one_job.route != "loader", one_job.mismatches
    assert two_jobs.ok and two_jobs.route == "loader", two_jobs.mismatches
    assert verified.verifications and not verified.failures
    assert report.verdict == "pass", [c for c in report.checks if not c.ok]


def test_a_postgresql_13_backup_restores_into_postgresql_18(pg_servers: dict[int, Any], tmp_path: Path) -> None:
    old, new = require(pg_servers, 13), require(pg_servers, 18)
    source = source_database(old)
    ctx = context(tmp_path, {"app": old.dsn(source), "staging": new.dsn(), "new": new.dsn()}, bin_dirs(*CLIENT_MAJORS))
    backup.run(ctx, target="app")

    for jobs in (1, 2):
        restored = restore.run(ctx, target="app", to=new.dsn(f"{source}_upgraded_{jobs}"), jobs=jobs)

        assert restored.ok, restored.mismatches
    with new.connect(f"{source}_upgraded_2") as conn:
        assert conn.execute("SELECT count(*) FROM parent").fetchone() == (1,)


def test_pg_restore_18_into_a_postgresql_13_server_is_refused_up_front_with_the_reason(
    pg_servers: dict[int, Any], tmp_path: Path
) -> None:
    server = require(pg_servers, 13)
    if client_bin_dir(18) is None:
        pytest.skip("client tools 18 are not installed (run scripts/setup-pg-versions.sh)")
    source = source_database(server)
    ctx = context(tmp_path, {"app": server.dsn(source), "staging": server.dsn()}, bin_dirs(18))
    manifest = backup.run(ctx, target="app").manifest
    destination = f"{source}_back"

    with pytest.raises(UnreachableError, match="sends SET transaction_timeout, which a PostgreSQL 13 server rejects"):
        restore.run(ctx, target="app", to=server.dsn(destination))

    assert manifest.tools["pg_dump"]["major"] == 18
    with server.connect() as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (destination,)).fetchone() is None


def test_config_check_says_which_tools_back_up_and_restore_a_postgresql_13_target(
    pg_servers: dict[int, Any], tmp_path: Path
) -> None:
    server = require(pg_servers, 13)
    if client_bin_dir(18) is None:
        pytest.skip("client tools 18 are not installed (run scripts/setup-pg-versions.sh)")
    every = context(tmp_path, {"app": server.dsn(), "staging": server.dsn()}, bin_dirs(*CLIENT_MAJORS))
    only_18 = context(tmp_path, {"app": server.dsn(), "staging": server.dsn()}, bin_dirs(18))

    good = {r.check: r for r in config_check.run(every).results}
    bad = {r.check: r for r in config_check.run(only_18).results}

    assert good["target app pg_dump"].detail.startswith("backup: pg_dump 15.")
    assert good["target app pg_restore"].detail.startswith("restore into it: pg_restore 15.")
    assert good["target app restore of its backups"].status == "OK"
    assert bad["target app restore of its backups"].status == "FAIL"
    assert (
        "sends SET transaction_timeout, which a PostgreSQL 13 server rejects"
        in bad["target app restore of its backups"].detail
    )
