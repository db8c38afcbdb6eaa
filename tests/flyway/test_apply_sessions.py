"""What a migration's own session statements do to its run: COMMIT, ROLLBACK, SET ROLE, concurrent REINDEX."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import pytest

from opskit.config.migrations import MigrationSettings
from opskit.core.errors import ConfigError, MigrationFailed
from opskit.flyway.statements import can_run_in_transaction
from tests.databases import run_sql
from tests.migrate.support import engine_for, query

HISTORY = "SELECT version, success, installed_by FROM flyway_schema_history ORDER BY installed_rank"


@pytest.mark.parametrize("ending", ["COMMIT", "rollback", "END"])
def test_a_transactional_migration_that_commits_or_rolls_back_itself_is_refused_before_it_runs(
    migrate_db: str, scripts_dir: Callable[..., Path], ending: str
) -> None:
    root = scripts_dir(
        {
            "V1__ok.sql": "CREATE TABLE kept (id int);",
            "V2__c.sql": f"CREATE TABLE c1 (i int);\n{ending};\nSELECT 1/0;\n",
        }
    )
    with engine_for(migrate_db, MigrationSettings(locations=(str(root),))) as engine, pytest.raises(ConfigError) as err:
        engine.migrate()

    assert f"migration V2__c.sql runs {ending.upper()}" in err.value.one_line()
    assert "executeInTransaction=false" in err.value.one_line()
    assert query(migrate_db, HISTORY) == [("1", True, "postgres")]
    assert query(migrate_db, "SELECT to_regclass('c1') IS NULL") == [(True,)]


def test_a_script_that_commits_then_fails_is_recorded_failed_and_never_called_rolled_back(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    # A BEGIN ATOMIC body hides the END from the statement check: the check after the script
    # is what catches it.
    script = (
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;\n"
        "CREATE TABLE c1 (i int);\nEND;\nSELECT 1/0;\n"
    )
    root = scripts_dir({"V1__c.sql": script})
    with (
        engine_for(migrate_db, MigrationSettings(locations=(str(root),))) as engine,
        pytest.raises(MigrationFailed) as err,
    ):
        engine.migrate()

    line = err.value.one_line()
    assert "V1__c.sql failed (division by zero) after ending its own transaction" in line
    assert "cannot be rolled back, so a failed row was recorded" in line and "were rolled back" not in line
    assert err.value.migration == "V1__c.sql"
    assert query(migrate_db, HISTORY) == [("1", False, "postgres")]
    assert query(migrate_db, "SELECT to_regclass('c1') IS NOT NULL") == [(True,)]


def test_a_rollback_that_ends_the_migrations_transaction_never_records_success(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    root = scripts_dir({"beforeEachMigrate.sql": "ROLLBACK;\n", "V1__t.sql": "CREATE TABLE t (i int);\n"})
    with (
        engine_for(migrate_db, MigrationSettings(locations=(str(root),))) as engine,
        pytest.raises(MigrationFailed) as err,
    ):
        engine.migrate()

    assert "V1__t.sql ended its own transaction" in err.value.one_line()
    assert query(migrate_db, HISTORY) == [("1", False, "postgres")]


def test_a_migration_that_sets_a_role_without_rights_on_the_history_table_is_recorded_as_the_connecting_role(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    role = f"opskit_t_owner_{secrets.token_hex(3)}"
    run_sql(migrate_db, f"CREATE ROLE {role} NOLOGIN; GRANT USAGE, CREATE ON SCHEMA public TO {role}")
    try:
        root = scripts_dir(
            {
                "V1__role.sql": f"SET ROLE {role};\nCREATE TABLE owned (i int);\n",
                "V2__plain.sql": "CREATE TABLE after_it (i int);\n",
            }
        )
        with engine_for(migrate_db, MigrationSettings(locations=(str(root),))) as engine:
            report = engine.migrate()

        assert [a.script for a in report.applied] == ["V1__role.sql", "V2__plain.sql"]
        assert query(migrate_db, HISTORY) == [("1", True, "postgres"), ("2", True, "postgres")]
        owners = "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        assert dict(query(migrate_db, owners))["owned"] == role
        assert dict(query(migrate_db, owners))["after_it"] == "postgres"
    finally:
        run_sql(migrate_db, f"DROP OWNED BY {role}; DROP ROLE {role}")


@pytest.mark.parametrize(
    "statement",
    [
        "REINDEX (CONCURRENTLY) TABLE t",
        "reindex (verbose, concurrently true) index t_i",
        "REINDEX TABLE CONCURRENTLY t",
        "ALTER TABLE p DETACH PARTITION p1 CONCURRENTLY",
    ],
)
def test_concurrent_reindex_and_detach_in_every_spelling_cannot_run_in_a_transaction(statement: str) -> None:
    assert can_run_in_transaction(statement) is False


@pytest.mark.parametrize("statement", ["REINDEX (CONCURRENTLY false) TABLE t", "REINDEX TABLE t"])
def test_a_plain_reindex_still_runs_in_a_transaction(statement: str) -> None:
    assert can_run_in_transaction(statement) is True


def test_a_migration_reindexing_concurrently_in_the_option_form_applies_in_autocommit(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    root = scripts_dir(
        {
            "V1__t.sql": "CREATE TABLE t (i int);\nCREATE INDEX t_i ON t (i);\n",
            "V2__reindex.sql": "REINDEX (CONCURRENTLY) TABLE t;\n",
        }
    )
    with engine_for(migrate_db, MigrationSettings(locations=(str(root),))) as engine:
        report = engine.migrate()

    assert [(a.script, a.transactional) for a in report.applied] == [("V1__t.sql", True), ("V2__reindex.sql", False)]
    assert [row[:2] for row in query(migrate_db, HISTORY)] == [("1", True), ("2", True)]
