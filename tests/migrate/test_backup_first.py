"""``--backup-first``, ``--restore-on-failure`` and ``--rehearse`` with real backups and restores."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

from tests.migrate.support import opskit, query, write_config, write_staged_config

BASE = {"V1__base.sql": "CREATE TABLE base (id int); INSERT INTO base VALUES (1);"}
FAILING = {
    "V2__alters_base.sql": "ALTER TABLE base ADD COLUMN extra int;\nUPDATE base SET extra = 7;\n",
    "V3__breaks.sql": "INSERT INTO base VALUES (2);\nSELECT 1/0;\n",
}


def _tables(dbname: str) -> list[str]:
    return [r[0] for r in query(dbname, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]


def _versions(dbname: str) -> list[str]:
    return [r[0] for r in query(dbname, "SELECT version FROM flyway_schema_history ORDER BY installed_rank")]


def _columns(dbname: str) -> list[str]:
    return [
        r[0]
        for r in query(
            dbname,
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'base' ORDER BY ordinal_position",
        )
    ]


def _migrated_base(config: Path, scripts_dir: Callable[..., Path]) -> None:
    scripts_dir(BASE)
    assert opskit(config, "migrate").returncode == 0
    scripts_dir(FAILING)


def test_a_failed_migration_after_backup_first_prints_a_restore_command_that_works(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    config = write_config(tmp_path, migrate_db)
    _migrated_base(config, scripts_dir)

    result = opskit(config, "migrate", "--backup-first", timeout=300)

    assert result.returncode == 4, result.stderr
    assert "migration failed: V3__breaks.sql" in result.stderr
    assert "database error: division by zero" in result.stderr
    command = next(line.split(": ", 1)[1] for line in result.stderr.splitlines() if line.startswith("to undo this run"))
    argv = shlex.split(command)
    assert argv[:2] == ["opskit", "restore"] and argv[3:] == ["--target", "app", "--to", "app", "--replace", "--yes"]
    assert _versions(migrate_db) == ["1", "2"] and _columns(migrate_db) == ["id", "extra"]

    restored = opskit(config, *argv[1:], timeout=300)

    assert restored.returncode == 0, restored.stderr
    assert _versions(migrate_db) == ["1"]
    assert _columns(migrate_db) == ["id"]
    assert query(migrate_db, "SELECT id FROM base") == [(1,)]
    listing = opskit(config, "backup", "list", "--json")
    assert "pre-migrate" in listing.stdout


def test_restore_on_failure_puts_the_database_back(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    config = write_config(tmp_path, migrate_db)
    _migrated_base(config, scripts_dir)
    result = opskit(config, "migrate", "--backup-first", "--restore-on-failure", "--yes", timeout=300)
    assert result.returncode == 4, result.stderr
    assert "was restored into 'app'" in result.stderr
    assert _versions(migrate_db) == ["1"] and _columns(migrate_db) == ["id"]


def test_restoring_the_pre_migrate_backup_also_removes_tables_the_failed_run_created(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    config = write_config(tmp_path, migrate_db)
    scripts_dir(BASE)
    assert opskit(config, "migrate").returncode == 0
    scripts_dir({"V2__new_table.sql": "CREATE TABLE added (id int);", "V3__breaks.sql": "SELECT 1/0;"})
    result = opskit(config, "migrate", "--backup-first", "--restore-on-failure", "--yes", timeout=300)
    assert result.returncode == 4, result.stderr
    assert _tables(migrate_db) == ["base", "flyway_schema_history"]


def test_rehearse_stops_before_production_when_a_migration_fails_on_staging(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    scripts_dir(BASE)
    config = write_staged_config(tmp_path, migrate_db)
    first = opskit(config, "migrate", "--target", "app", "--rehearse", timeout=300)
    assert first.returncode == 0, first.stderr
    assert "rehearsed V1__base.sql on staging" in first.stderr
    assert _versions(migrate_db) == ["1"]

    scripts_dir({"V1_5__adds_table.sql": "CREATE TABLE added (id int);", **FAILING})
    result = opskit(config, "migrate", "--target", "app", "--rehearse", timeout=300)

    assert result.returncode == 4, result.stderr
    assert "rehearsal on staging 'stage' failed, production was not touched" in result.stderr
    assert _versions(migrate_db) == ["1"] and "added" not in _tables(migrate_db)
    leftovers = query(
        migrate_db, "SELECT datname FROM pg_database WHERE datname LIKE %s", (migrate_db + "_rehearse_%",)
    )
    assert leftovers == []
