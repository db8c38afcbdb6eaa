"""A server target backs up every database it selects, each as its own derived target, on the local PostgreSQL.

Each test makes its own throwaway databases ``opskit_t_<hex>_<name>`` and patterns that match
only them (other tests share the server), and drops them afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from opskit import catalog
from opskit.backup import kinds
from opskit.backup.server import ServerBackupResult
from opskit.drill import drill
from opskit.ops import config_check, metrics, prune, status
from opskit.restore import restore, verify
from tests.databases import admin_connection, drop_databases, dsn_for, run_sql

ROWS = {"orders": 3, "users": 5, "scratch": 7}


def opskit(
    config: Path | None, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI as a subprocess (``config`` None: no --config) and return its result."""
    head = ["--config", str(config)] if config else []
    return subprocess.run(
        [sys.executable, "-m", "opskit", *head, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture
def server_prefix() -> Iterator[str]:
    """Yield a prefix with three databases (orders, users, scratch), each with ROWS[name] rows; drop them after."""
    prefix = f"opskit_t_{secrets.token_hex(3)}"
    try:
        with admin_connection() as conn:
            for name in ROWS:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(f"{prefix}_{name}")))
        for name, rows in ROWS.items():
            run_sql(
                f"{prefix}_{name}",
                f"CREATE TABLE items (id int PRIMARY KEY, what text); "
                f"INSERT INTO items SELECT g, '{name}' FROM generate_series(1, {rows}) g;",
            )
        yield prefix
    finally:
        drop_databases(prefix)


def server_config(tmp_path: Path, prefix: str, dsn: str | None = None, **target: Any) -> Path:
    """Write a config with server target ``app`` (every ``<prefix>_*`` but scratch) and return its path."""
    table = {
        "dsn": dsn or dsn_for("postgres"),
        "databases": [f"{prefix}_*", "nothing_matches_*"],
        "exclude_databases": [f"{prefix}_scratch"],
        "retention": "one",
        **target,
    }
    lines = "\n".join(f"{key} = {json.dumps(value)}" for key, value in table.items())
    path = tmp_path / "opskit.toml"
    path.write_text(
        f"""
[storages.local]
url = "file://{tmp_path / "backups"}"

[tools]
state_dir = "{tmp_path / "state"}"

[retention.one]
keep_last = 1

[targets.app]
{lines}
""",
        encoding="utf-8",
    )
    return path


def context(config: Path) -> Any:
    from opskit.config.load import load_config
    from opskit.context import AppContext

    return AppContext(config=load_config(config))


def test_backup_now_of_a_server_target_backs_up_each_selected_database_and_lists_them(
    server_prefix: str, tmp_path: Path
) -> None:
    config = server_config(tmp_path, server_prefix)

    result = opskit(config, "backup", "now", "--target", "app", "--json")

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert [(d["database"], d["ok"]) for d in document["databases"]] == [
        (f"{server_prefix}_orders", True),
        (f"{server_prefix}_users", True),
    ]
    assert "opskit: warning: pattern 'nothing_matches_*' of target 'app' matched no database" in result.stderr
    listed = opskit(config, "backup", "list", "--target", "app", "--json")
    assert listed.returncode == 0, listed.stderr
    assert sorted(m["target"] for m in json.loads(listed.stdout)) == [
        f"app.{server_prefix}_orders",
        f"app.{server_prefix}_users",
    ]
    table = opskit(config, "backup", "list", "--target", "app")
    assert f"app.{server_prefix}_orders" in table.stdout and f"app.{server_prefix}_users" in table.stdout
    assert "scratch" not in table.stdout
    # Each derived target's backups live under its own prefix, with its own globals artifact.
    store = context(config).storage("local")
    for name in ("orders", "users"):
        (manifest,) = catalog.list_backups(store, f"app.{server_prefix}_{name}")
        assert manifest.artifact(catalog.GLOBALS_ARTIFACT).size > 0


def test_a_restore_of_one_derived_target_gives_its_rows(server_prefix: str, tmp_path: Path) -> None:
    ctx = context(server_config(tmp_path, server_prefix))
    outcome = kinds.run(ctx, target="app")
    assert isinstance(outcome, ServerBackupResult) and not outcome.errors

    restored = restore.run(ctx, target=f"app.{server_prefix}_users", to=dsn_for(f"{server_prefix}_users_copy"))

    assert restored.ok, restored.mismatches
    with psycopg.connect(dsn_for(f"{server_prefix}_users_copy")) as conn:
        row = conn.execute("SELECT count(*), min(what) FROM items").fetchone()
    assert row == (ROWS["users"], "users")


def test_verify_metrics_and_config_check_cover_every_database_of_a_server_target(
    server_prefix: str, tmp_path: Path
) -> None:
    ctx = context(server_config(tmp_path, server_prefix))
    outcome = kinds.run(ctx, target="app")
    assert isinstance(outcome, ServerBackupResult) and not outcome.errors

    verified = verify.run(ctx, target="app")
    exposition = metrics.collect(ctx).exposition().decode()
    checks = {r.check: r for r in config_check.run(ctx).results}

    assert sorted(v.target for v in verified.verifications) == sorted(outcome.results)
    assert all(v.passed for v in verified.verifications)
    for name in outcome.results:
        assert f'opskit_backup_last_success_timestamp_seconds{{target="{name}"}}' in exposition
    assert checks["target app databases"].detail == (
        f"backs up 2 database(s): {server_prefix}_orders, {server_prefix}_users; "
        "pattern 'nothing_matches_*' matches no database"
    )


def test_prune_and_status_work_per_database_and_from_the_catalog_when_the_server_is_down(
    server_prefix: str, tmp_path: Path
) -> None:
    ctx = context(server_config(tmp_path, server_prefix))
    first = kinds.run(ctx, target="app")
    second = kinds.run(ctx, target="app")
    assert isinstance(first, ServerBackupResult) and isinstance(second, ServerBackupResult)

    report = prune.run(ctx, target="app")

    store = ctx.storage("local")
    for name in ("orders", "users"):
        derived = f"app.{server_prefix}_{name}"
        assert [m.id for m in catalog.list_backups(store, derived)] == [second.results[derived].manifest.id]
    assert sorted(r.target for r in report.results) == [f"app.{server_prefix}_orders", f"app.{server_prefix}_users"]
    rows = status.run(ctx, target="app").targets
    assert [(r.target, r.newest is not None) for r in rows] == [
        (f"app.{server_prefix}_orders", True),
        (f"app.{server_prefix}_users", True),
    ]
    # The server is down (nothing listens on port 1): the catalog still knows the databases.
    down = server_config(tmp_path, server_prefix, dsn="host=127.0.0.1 port=1 user=postgres dbname=postgres")
    listed = opskit(down, "backup", "list", "--target", "app", "--json")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 2
    assert [r.target for r in status.run(context(down), target="app").targets] == [
        f"app.{server_prefix}_orders",
        f"app.{server_prefix}_users",
    ]


@pytest.fixture
def limited_role(server_prefix: str) -> Iterator[str]:
    """Yield a login role that may read orders and scratch but not connect to users; drop it after."""
    role = f"{server_prefix}_role"
    with admin_connection() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(f"{server_prefix}_users"))
        )
    for name in ROWS:
        run_sql(f"{server_prefix}_{name}", f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
    try:
        yield role
    finally:
        drop_databases(server_prefix)
        with admin_connection() as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_one_database_failing_leaves_the_others_backed_up_and_exits_non_zero_naming_it(
    server_prefix: str, limited_role: str, tmp_path: Path
) -> None:
    dsn = f"host=127.0.0.1 port=5432 user={limited_role} dbname=postgres"
    config = server_config(tmp_path, server_prefix, dsn=dsn, exclude_databases=[])

    result = opskit(config, "backup", "now", "--target", "app")

    assert result.returncode == 3, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("opskit: error:")]
    assert len(errors) == 1
    assert f"backup of target 'app.{server_prefix}_users' failed" in errors[0]
    store = context(config).storage("local")
    assert len(catalog.list_backups(store, f"app.{server_prefix}_orders")) == 1
    assert len(catalog.list_backups(store, f"app.{server_prefix}_scratch")) == 1
    assert catalog.list_backups(store, f"app.{server_prefix}_users") == []


def test_a_database_whose_name_cannot_be_stored_is_refused_with_one_line(server_prefix: str, tmp_path: Path) -> None:
    with admin_connection() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(f"{server_prefix}_bad name")))
    config = server_config(tmp_path, server_prefix)

    result = opskit(config, "backup", "now", "--target", "app", "--json")

    assert result.returncode == 2, result.stderr
    entries = {d["database"]: d for d in json.loads(result.stdout)["databases"]}
    assert entries[f"{server_prefix}_bad name"]["exit_code"] == 2
    assert entries[f"{server_prefix}_orders"]["ok"] and entries[f"{server_prefix}_users"]["ok"]
    errors = [line for line in result.stderr.splitlines() if line.startswith("opskit: error:")]
    assert len(errors) == 1 and f"'{server_prefix}_bad name'" in errors[0] and "exclude_databases" in errors[0]


def test_patterns_that_select_nothing_exit_2(server_prefix: str, tmp_path: Path) -> None:
    config = server_config(tmp_path, server_prefix, databases=[f"{server_prefix}_scratch"])

    result = opskit(config, "backup", "now", "--target", "app")

    assert result.returncode == 2
    assert "server target 'app' selects no database" in result.stderr


def test_a_server_target_configured_only_by_the_environment(server_prefix: str, tmp_path: Path) -> None:
    env = {
        "OPSKIT_TARGETS_APP_DSN": dsn_for("postgres"),
        "OPSKIT_TARGETS_APP_DATABASES": f'["{server_prefix}_o*", "{server_prefix}_u*"]',
        "OPSKIT_TARGETS_APP_EXCLUDE_DATABASES": f'["{server_prefix}_users"]',
        "OPSKIT_STORAGES_LOCAL_URL": f"file://{tmp_path / 'backups'}",
        "OPSKIT_TOOLS_STATE_DIR": str(tmp_path / "state"),
    }

    result = opskit(None, "backup", "now", "--target", "app", "--json", env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert [d["target"] for d in json.loads(result.stdout)["databases"]] == [f"app.{server_prefix}_orders"]
    listed = opskit(None, "backup", "list", "--target", f"app.{server_prefix}_orders", "--json", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 1


def test_a_drill_of_a_server_target_restores_one_of_its_databases(server_prefix: str, tmp_path: Path) -> None:
    config = server_config(tmp_path, server_prefix, staging="staging")
    with config.open("a", encoding="utf-8") as out:
        out.write(f'\n[targets.staging]\ndsn = "{dsn_for("postgres")}"\n')
    ctx = context(config)
    outcome = kinds.run(ctx, target="app")
    assert isinstance(outcome, ServerBackupResult) and not outcome.errors

    report = drill.run(ctx, target="app")

    assert report.target in outcome.results
    assert report.verdict == "pass", [c for c in report.checks if not c.ok]


def test_the_shipped_hourly_backup_and_nightly_prune_jobs_cover_every_database_of_a_server_target(
    server_prefix: str, tmp_path: Path, pg_database: str
) -> None:
    from datetime import UTC, datetime

    from opskit.config.load import load_config
    from opskit.daemon.jobs import load_job
    from opskit.daemon.ledger import SUCCESS, Ledger
    from opskit.daemon.scheduler import Runner
    from opskit.ops.metrics import Metrics
    from tests.servers import REPO_ROOT

    config = load_config(server_config(tmp_path, server_prefix))
    ledger = Ledger(dsn_for(pg_database), table="runs", owner="a")
    ledger.ensure_table()
    runner = Runner(config, ledger, Metrics())
    backup_job = load_job(REPO_ROOT / "jobs" / "hourly-backup.toml", config)
    prune_job = load_job(REPO_ROOT / "jobs" / "nightly-prune.toml", config)
    assert backup_job.target == prune_job.target == "app"

    for hour in (5, 6):
        outcome = runner.fire(backup_job, slot=datetime(2027, 1, 5, hour, tzinfo=UTC))
        assert outcome is not None and outcome.result == SUCCESS, outcome
    pruned = runner.fire(prune_job, slot=datetime(2027, 1, 5, 7, tzinfo=UTC))

    assert pruned is not None and pruned.result == SUCCESS, pruned
    store = context(tmp_path / "opskit.toml").storage("local")
    for name in ("orders", "users"):  # two backups each, keep_last = 1 per database
        assert len(catalog.list_backups(store, f"app.{server_prefix}_{name}")) == 1
    assert not catalog.list_backups(store, f"app.{server_prefix}_scratch")
