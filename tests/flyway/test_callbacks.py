"""SQL callbacks run as Flyway runs them, against a real PostgreSQL, and never reach the history table."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from opskit.config.migrations import MigrationSettings
from opskit.core.errors import ConfigError, MigrationFailed
from opskit.flyway.callbacks import load_callbacks, parse_callback_name
from tests.databases import run_sql
from tests.flyway.test_engine import ROWS, flyway_checksum
from tests.migrate.support import engine_for, query

HISTORY = '"public"."flyway_schema_history"'
# Outside "public", so the schema migrate looks at stays empty.
LOG_TABLE = "CREATE SCHEMA cb; CREATE TABLE cb.callback_log (n serial, what text)"


def log_sql(what: str) -> str:
    return f"INSERT INTO cb.callback_log (what) VALUES ('{what}');\n"


def callback_log(dbname: str) -> list[str]:
    return [row[0] for row in query(dbname, "SELECT what FROM cb.callback_log ORDER BY n")]


def test_migrate_runs_each_callback_event_in_flyways_order_and_records_only_the_migrations(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    v1 = "CREATE TABLE t (tenant text);\nINSERT INTO t VALUES (current_setting('myapp.tenant'));\n"
    v2 = "CREATE TABLE u (id int);\n"
    root = scripts_dir(
        {
            "beforeMigrate.sql": "CREATE SCHEMA cb;\nCREATE TABLE cb.callback_log (n serial, what text);\n"
            + log_sql("beforeMigrate"),
            "callbacks/beforeEachMigrate.sql": "SET myapp.tenant = '${tenant}';\n"
            + log_sql("beforeEachMigrate ${flyway:filename}"),
            "afterEachMigrate.sql": log_sql("afterEachMigrate"),
            "afterVersioned.sql": log_sql("afterVersioned"),
            "afterMigrateApplied.sql": log_sql("afterMigrateApplied"),
            "afterMigrate__grants.sql": "CREATE TABLE grants AS SELECT tablename FROM pg_tables"
            " WHERE schemaname = 'public' AND tablename IN ('t', 'u') ORDER BY 1;\n"
            "GRANT SELECT ON t, u TO PUBLIC;\n" + log_sql("afterMigrate grants"),
            "afterMigrate__index.sql": "CREATE INDEX CONCURRENTLY t_tenant ON t (tenant);\n",
            "afterMigrate.sql": log_sql("afterMigrate"),
            "afterMigrateError.sql": log_sql("afterMigrateError"),
            "V1__t.sql": v1,
            "V2__u.sql": v2,
        }
    )
    settings = MigrationSettings(locations=(str(root),), placeholders={"tenant": "acme"})

    with engine_for(migrate_db, settings) as engine:
        report = engine.migrate()

    assert [a.script for a in report.applied] == ["V1__t.sql", "V2__u.sql"]
    assert callback_log(migrate_db) == [
        "beforeMigrate",
        "beforeEachMigrate beforeEachMigrate.sql",
        "afterEachMigrate",
        "beforeEachMigrate beforeEachMigrate.sql",
        "afterEachMigrate",
        "afterVersioned",
        "afterMigrateApplied",
        "afterMigrate",
        "afterMigrate grants",
    ]
    # the session setting from beforeEachMigrate was visible to the migration
    assert query(migrate_db, "SELECT tenant FROM t") == [("acme",)]
    assert query(migrate_db, "SELECT tablename FROM grants") == [("t",), ("u",)]
    assert query(migrate_db, "SELECT has_table_privilege('public', 'u', 'SELECT')") == [(True,)]
    # a callback PostgreSQL refuses in a transaction ran outside one
    assert query(migrate_db, "SELECT indexname FROM pg_indexes WHERE tablename = 't'") == [("t_tenant",)]
    assert query(migrate_db, ROWS.format(HISTORY)) == [
        (1, "1", "t", "SQL", "V1__t.sql", flyway_checksum(v1), "postgres", True, True),
        (2, "2", "u", "SQL", "V2__u.sql", flyway_checksum(v2), "postgres", True, True),
    ]


def test_a_failing_migration_runs_the_error_callbacks_and_not_after_migrate(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    run_sql(migrate_db, LOG_TABLE)
    v1 = "CREATE TABLE t (id int);\n"
    root = scripts_dir(
        {
            "V1__t.sql": v1,
            "V2__broken.sql": "INSERT INTO t VALUES (1);\nSELECT 1 / 0;\n",
            "afterEachMigrateError.sql": log_sql("afterEachMigrateError"),
            "afterMigrateError.sql": "CREATE TABLE migrate_failed AS SELECT version FROM flyway_schema_history;\n"
            + log_sql("afterMigrateError"),
            "afterMigrate.sql": log_sql("afterMigrate"),
        }
    )
    with (
        engine_for(migrate_db, MigrationSettings(locations=(str(root),))) as engine,
        pytest.raises(MigrationFailed, match="division by zero"),
    ):
        engine.migrate()

    assert callback_log(migrate_db) == ["afterEachMigrateError", "afterMigrateError"]
    assert query(migrate_db, "SELECT version FROM migrate_failed") == [("1",)]
    assert query(migrate_db, "SELECT count(*) FROM t") == [(0,)]
    assert query(migrate_db, ROWS.format(HISTORY)) == [
        (1, "1", "t", "SQL", "V1__t.sql", flyway_checksum(v1), "postgres", True, True),
    ]


def test_a_failing_before_migrate_callback_stops_the_run_with_its_name(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    root = scripts_dir({"beforeMigrate__check.sql": "SELECT 1 / 0;\n", "V1__t.sql": "CREATE TABLE t (id int);\n"})
    with (
        engine_for(migrate_db, MigrationSettings(locations=(str(root),))) as engine,
        pytest.raises(MigrationFailed, match=r"Error while executing beforeMigrate callback \(beforeMigrate__check"),
    ):
        engine.migrate()
    assert query(migrate_db, f"SELECT count(*) FROM {HISTORY}") == [(0,)]
    assert query(migrate_db, "SELECT to_regclass('t')") == [(None,)]


def test_baseline_validate_info_and_repair_run_their_own_callbacks(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    run_sql(migrate_db, LOG_TABLE)
    events = ["beforeBaseline", "afterBaseline", "beforeValidate", "afterValidate"]
    events += ["beforeInfo", "afterInfo", "beforeRepair", "afterRepair"]
    root = scripts_dir({f"{event}.sql": log_sql(event) for event in events})
    with engine_for(migrate_db, MigrationSettings(locations=(str(root),))) as engine:
        engine.baseline()
        engine.validate()
        engine.info()
        engine.repair()
    assert callback_log(migrate_db) == events
    assert query(migrate_db, "SELECT installed_rank, version, type FROM flyway_schema_history") == [
        (1, "1", "BASELINE")
    ]


def test_a_dry_run_runs_no_callback(migrate_db: str, scripts_dir: Callable[..., Path]) -> None:
    root = scripts_dir({"beforeMigrate.sql": "CREATE TABLE touched (id int);\n", "V1__t.sql": "SELECT 1;\n"})
    with engine_for(migrate_db, MigrationSettings(locations=(str(root),))) as engine:
        report = engine.migrate(dry_run=True)
    assert [a.script for a in report.applied] == ["V1__t.sql"]
    assert query(migrate_db, "SELECT to_regclass('touched')") == [(None,)]


def test_callback_names_parse_as_flyways_factory_does() -> None:
    assert parse_callback_name("afterMigrate__grants.sql", "__", (".sql",)) == ("afterMigrate", "grants")
    assert parse_callback_name("beforeEachMigrate.SQL", "__", (".sql",)) == ("beforeEachMigrate", None)
    assert parse_callback_name("afterMigrateX.sql", "__", (".sql",)) is None
    assert parse_callback_name("afterMigrate.txt", "__", (".sql",)) is None


def test_callbacks_of_one_event_run_without_description_first_then_by_description(tmp_path: Path) -> None:
    names = ["afterMigrate__b.sql", "afterMigrate__a.sql", "beforeMigrate.sql", "afterMigrate.sql"]
    for name in names:
        (tmp_path / name).write_text("SELECT 1;\n", encoding="utf-8")
    callbacks = load_callbacks([tmp_path / n for n in names], MigrationSettings())
    assert [c.name for c in callbacks] == [
        "beforeMigrate.sql",
        "afterMigrate.sql",
        "afterMigrate__a.sql",
        "afterMigrate__b.sql",
    ]


def test_two_callbacks_with_one_name_in_two_locations_are_an_error(tmp_path: Path) -> None:
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "afterMigrate.sql").write_text("SELECT 1;\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="Found more than 1 SQL callback script called afterMigrate!"):
        load_callbacks([tmp_path / "one/afterMigrate.sql", tmp_path / "two/afterMigrate.sql"], MigrationSettings())


def test_per_migration_callbacks_of_a_non_transactional_migration_share_its_session_in_autocommit(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    run_sql(migrate_db, "CREATE SCHEMA cb; CREATE TABLE cb.x (id int)")
    v1 = "CREATE INDEX CONCURRENTLY x_id ON cb.x (id);\n"
    root = scripts_dir(
        {
            "V1__index.sql": v1,
            "beforeEachMigrate.sql": "SET application_name = 'from_callback';\n",
            "afterEachMigrate.sql": "CREATE TABLE cb.seen AS SELECT current_setting('application_name') AS app;\n",
        }
    )
    with engine_for(migrate_db, MigrationSettings(locations=(str(root),))) as engine:
        report = engine.migrate()
    assert [(a.script, a.transactional) for a in report.applied] == [("V1__index.sql", False)]
    assert query(migrate_db, "SELECT app FROM cb.seen") == [("from_callback",)]
    assert query(migrate_db, "SELECT indexname FROM pg_indexes WHERE tablename = 'x'") == [("x_id",)]
    assert query(migrate_db, ROWS.format(HISTORY)) == [
        (1, "1", "index", "SQL", "V1__index.sql", flyway_checksum(v1), "postgres", True, True),
    ]
