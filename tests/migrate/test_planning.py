"""Planning refuses, before any backup and in ``--dry-run``, everything the real run would refuse.

Each case: the dry run fails exactly as the real run does, and ``--backup-first`` takes no
backup (the storage stays empty) and applies nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.databases import dsn_for
from tests.migrate.support import opskit, query, write_config


def _storage_files(tmp_path: Path) -> list[Path]:
    root = tmp_path / "backups"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _error_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("opskit: error: "))


def _tables(dbname: str) -> list[str]:
    return [r[0] for r in query(dbname, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]


CASES = {
    "a-placeholder-without-a-value": (
        {"V1__a.sql": "CREATE TABLE a (id int);", "V2__b.sql": "CREATE TABLE ${missing} (id int);"},
        "",
        "",
        2,
        "No value provided for placeholder: ${missing}",
    ),
    "a-callback-placeholder-without-a-value": (
        {"V1__a.sql": "CREATE TABLE a (id int);", "afterMigrate.sql": "GRANT SELECT ON a TO ${reader};"},
        "",
        "",
        2,
        "No value provided for placeholder: ${reader}",
    ),
    "a-non-empty-schema-without-history": (
        {"V1__a.sql": "CREATE TABLE a (id int);"},
        "",
        "CREATE TABLE existing (id int);",
        2,
        'Found non-empty schema(s) "public" but no schema history table',
    ),
    "group-with-a-non-transactional-migration": (
        {
            "V1__a.sql": "CREATE TABLE a (id int);",
            "V2__idx.sql": "CREATE INDEX CONCURRENTLY a_id ON a (id);",
        },
        "group = true\n",
        "",
        2,
        "migration V2__idx.sql cannot run inside a transaction, and group = true puts every migration in one",
    ),
    "a-script-that-commits-its-own-transaction": (
        {"V1__a.sql": "CREATE TABLE a (id int);", "V2__c.sql": "CREATE TABLE c (id int);\nCOMMIT;\n"},
        "",
        "",
        2,
        "migration V2__c.sql runs COMMIT, which would end the transaction opskit runs it in",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_dry_run_refuses_what_the_real_run_refuses_and_backup_first_takes_no_backup(
    case: str, migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    files, extra, setup_sql, code, message = CASES[case]
    scripts_dir(files)
    config = write_config(tmp_path, migrate_db, extra)
    if setup_sql:
        with psycopg.connect(dsn_for(migrate_db), autocommit=True) as conn:
            conn.execute(setup_sql)
    tables_before = _tables(migrate_db)

    dry = opskit(config, "migrate", "--dry-run")
    real = opskit(config, "migrate", "--backup-first", timeout=300)

    assert dry.returncode == code, dry.stderr
    assert message in _error_line(dry.stderr)
    assert real.returncode == code, real.stderr
    assert _error_line(real.stderr) == _error_line(dry.stderr)
    assert "applied" not in real.stdout
    assert _storage_files(tmp_path) == []
    assert _tables(migrate_db) == tables_before


def test_rehearse_without_a_staging_target_is_refused_before_any_backup(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    scripts_dir({"V1__a.sql": "CREATE TABLE a (id int);"})
    config = write_config(tmp_path, migrate_db)

    dry = opskit(config, "migrate", "--rehearse", "--dry-run")
    real = opskit(config, "migrate", "--backup-first", "--rehearse", timeout=300)

    assert dry.returncode == 2, dry.stderr
    assert "target 'app' has no staging target to rehearse on" in _error_line(dry.stderr)
    assert real.returncode == 2, real.stderr
    assert _error_line(real.stderr) == _error_line(dry.stderr)
    assert _storage_files(tmp_path) == []
    assert _tables(migrate_db) == []


def test_restore_on_failure_over_a_protected_target_without_yes_is_refused_before_any_backup(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    # The restore a failure would run has nobody to ask: consent is asked for up front.
    scripts_dir({"V1__a.sql": "CREATE TABLE a (id int);"})
    config = write_config(tmp_path, migrate_db)
    config.write_text(config.read_text().replace("[targets.app]\n", "[targets.app]\nprotected = true\n", 1))

    refused = opskit(config, "migrate", "--backup-first", "--restore-on-failure", timeout=300)
    consented = opskit(config, "migrate", "--backup-first", "--restore-on-failure", "--yes", timeout=300)

    assert refused.returncode == 2, refused.stderr
    assert _error_line(refused.stderr) == (
        "opskit: error: --restore-on-failure on target 'app': target 'app' is protected, and restoring over it "
        "needs confirmation; pass --yes to consent now to the restore a failure would run"
    )
    assert consented.returncode == 0, consented.stderr
    assert _tables(migrate_db) == ["a", "flyway_schema_history"]


def test_a_failed_row_with_validate_on_migrate_off_stops_the_dry_run_as_it_stops_the_real_run(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    # A non-transactional migration that fails leaves a success = FALSE row.
    scripts_dir({"V1__a.sql": "CREATE TABLE a (id int);", "V2__idx.sql": "CREATE INDEX CONCURRENTLY i ON nope (id);"})
    config = write_config(tmp_path, migrate_db, "validate_on_migrate = false\n")
    assert opskit(config, "migrate").returncode == 4
    scripts_dir({"V3__c.sql": "CREATE TABLE c (id int);"})

    dry = opskit(config, "migrate", "--dry-run")
    real = opskit(config, "migrate", "--backup-first", timeout=300)

    assert dry.returncode == 4, dry.stderr
    assert "would apply" not in dry.stdout
    assert 'Schema "public" contains a failed migration to version 2' in _error_line(dry.stderr)
    assert real.returncode == 4, real.stderr
    assert _error_line(real.stderr) == _error_line(dry.stderr)
    assert "migration failed: V2__idx.sql" in real.stderr
    assert "to undo this run" not in real.stderr
    assert _storage_files(tmp_path) == []
    assert _tables(migrate_db) == ["a", "flyway_schema_history"]


def test_a_server_target_is_refused_with_the_derived_target_to_name(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    scripts_dir({"V1__a.sql": "CREATE TABLE a (id int);"})
    config = write_config(tmp_path, migrate_db, "")
    text = config.read_text(encoding="utf-8")
    # Discovery connects to the test's own database (never a shared one: without the refusal,
    # migrate would migrate the discovery database).
    server = f'[targets.srv]\ndsn = "{dsn_for(migrate_db)}"\ndatabases = ["{migrate_db}"]\n\n'
    config.write_text(server + text, encoding="utf-8")

    results = [opskit(config, "migrate", "-t", "srv", *args) for args in ([], ["--dry-run"], ["info", "--json"])]
    derived = opskit(config, "migrate", "-t", f"srv.{migrate_db}", "--dry-run")

    for result in results:
        assert result.returncode == 2, result.stderr
        line = _error_line(result.stderr)
        assert "target 'srv' is a server target" in line and "-t srv.<database>" in line
    assert derived.returncode == 0, derived.stderr
    assert "would apply 1 migration(s)" in derived.stdout
    assert _tables(migrate_db) == []


def test_a_missing_to_version_names_the_to_version_option(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    scripts_dir({"V1__a.sql": "CREATE TABLE a (id int);"})
    config = write_config(tmp_path, migrate_db)

    result = opskit(config, "migrate", "--to-version", "99")

    assert result.returncode == 2, result.stderr
    line = _error_line(result.stderr)
    assert "No migration with a target version 99 could be found" in line
    assert "--to-version" in line and "--target" not in line
