"""``opskit migrate`` as a user runs it: the real CLI in subprocesses against a real database."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from tests.migrate.support import opskit, query, start_opskit, write_config


def test_two_concurrent_migrate_processes_one_applies_the_other_waits_then_finds_nothing_pending(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    scripts_dir({"V1__slow.sql": "SELECT pg_sleep(3);\nCREATE TABLE slow (id int);\n"})
    config = write_config(tmp_path, migrate_db)

    first = start_opskit(config, "migrate")
    deadline = time.monotonic() + 30
    while not query(
        migrate_db, "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = %s", (77433833903597 & 0xFFFFFFFF,)
    ):
        assert time.monotonic() < deadline, "the first migrate never took the lock"
        time.sleep(0.1)
    second = start_opskit(config, "migrate")
    out1, err1 = first.communicate(timeout=60)
    out2, err2 = second.communicate(timeout=60)

    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    assert "applied V1__slow.sql" in out1
    assert "waiting for the migration lock" in err2
    assert "applied" not in out2 and "up to date" in out2
    assert query(migrate_db, "SELECT version, success FROM flyway_schema_history") == [("1", True)]


def test_dry_run_lists_what_would_run_and_changes_nothing(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    scripts_dir({"V1__a.sql": "CREATE TABLE a (id int);", "R__v.sql": "CREATE VIEW v AS SELECT 1;"})
    config = write_config(tmp_path, migrate_db)
    result = opskit(config, "migrate", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would apply 2 migration(s)" in result.stdout
    assert "V1__a.sql" in result.stdout and "R__v.sql" in result.stdout
    assert query(migrate_db, "SELECT to_regclass('flyway_schema_history'), to_regclass('a')") == [(None, None)]


def test_migrate_prints_each_migration_with_its_duration_and_info_json_mirrors_flyway(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    scripts_dir({"V1_1__a.sql": "CREATE TABLE a (id int);", "V2__b.sql": "SELECT 1;"})
    config = write_config(tmp_path, migrate_db)
    applied = opskit(config, "migrate", "--to-version", "1.1")
    assert applied.returncode == 0, applied.stderr
    assert [line.split("]")[0] for line in applied.stdout.splitlines() if line.startswith("applied")] == [
        "applied V1_1__a.sql  [version 1.1: a"
    ]
    assert " ms" in applied.stdout

    info = opskit(config, "migrate", "info", "--json")
    assert info.returncode == 0, info.stderr
    document = json.loads(info.stdout)
    assert document["schemaVersion"] == "1.1"
    assert document["operation"] == "info" and document["database"] == migrate_db
    first, second = document["migrations"]
    assert set(first) == {
        "category",
        "version",
        "rawVersion",
        "description",
        "type",
        "installedOnUTC",
        "state",
        "undoable",
        "filepath",
        "undoFilepath",
        "installedBy",
        "shouldExecuteExpression",
        "executionTime",
    }
    assert (first["category"], first["version"], first["rawVersion"], first["state"], first["undoable"]) == (
        "Versioned",
        "1.1",
        "1_1",
        "Success",
        "No",
    )
    assert first["installedOnUTC"].endswith("Z") and first["filepath"].endswith("/sql/V1_1__a.sql")
    assert (second["version"], second["state"], second["installedOnUTC"]) == ("2", "Pending", "")


def test_validate_exits_5_with_flyways_message_when_an_applied_script_changed(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    root = scripts_dir({"V1__a.sql": "CREATE TABLE a (id int);"})
    config = write_config(tmp_path, migrate_db)
    assert opskit(config, "migrate").returncode == 0
    assert opskit(config, "migrate", "validate").returncode == 0
    (root / "V1__a.sql").write_text("CREATE TABLE a (id bigint);", encoding="utf-8")
    result = opskit(config, "migrate", "validate")
    assert result.returncode == 5
    assert "Migration checksum mismatch for migration version 1" in result.stderr
    assert opskit(config, "migrate").returncode == 5  # validateOnMigrate


def test_baseline_and_repair_commands(migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path) -> None:
    scripts_dir({"V1__old.sql": "SELECT 1;", "V2__new.sql": "CREATE TABLE n (id int);"})
    config = write_config(tmp_path, migrate_db)
    baseline = opskit(config, "migrate", "baseline", "--version", "1")
    assert baseline.returncode == 0, baseline.stderr
    assert "Successfully baselined schema with version: 1" in baseline.stdout
    assert opskit(config, "migrate").returncode == 0
    repair = opskit(config, "migrate", "repair")
    assert repair.returncode == 0 and "not needed" in repair.stdout
    assert query(migrate_db, "SELECT version, type FROM flyway_schema_history ORDER BY 1") == [
        ("1", "BASELINE"),
        ("2", "SQL"),
    ]


def test_another_process_holding_the_lock_past_the_retries_gives_exit_7(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    import psycopg

    from tests.databases import dsn_for

    scripts_dir({"V1__a.sql": "SELECT 1;"})
    config = write_config(tmp_path, migrate_db, "lock_retry_count = 1\n")
    with psycopg.connect(dsn_for(migrate_db), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(77433833903597)")
        result = opskit(config, "migrate")
    assert result.returncode == 7, result.stderr


def test_a_flyway_project_runs_unchanged_with_no_opskit_config(migrate_db: str, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "V1__t.sql").write_text("CREATE TABLE t (w text DEFAULT '${who}');\n", encoding="utf-8")
    (tmp_path / "flyway.conf").write_text(
        f"flyway.url=jdbc:postgresql://127.0.0.1:5432/{migrate_db}\nflyway.user=postgres\n"
        "flyway.locations=filesystem:sql\nflyway.placeholders.who=team\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPSKIT_", "FLYWAY_", "PG"))}
    result = subprocess.run(
        [sys.executable, "-m", "opskit", "migrate"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "HOME": str(tmp_path)},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert query(migrate_db, "SELECT column_default FROM information_schema.columns WHERE table_name = 't'") == [
        ("'team'::text",)
    ]
