"""The engine against a real PostgreSQL: exact history rows, atomic failures, baseline, repair, interop."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from opskit.config.migrations import MigrationSettings
from opskit.core.errors import ConfigError, MigrationFailed, VerificationFailed
from opskit.flyway.history import HistoryTable
from tests.databases import run_sql
from tests.migrate.support import engine_for, query

ROWS = (
    "SELECT installed_rank, version, description, type, script, checksum, installed_by, execution_time >= 0,"
    " success FROM {} ORDER BY installed_rank"
)


def flyway_checksum(text: str) -> int:
    """The closed form of docs/flyway-compat.md §1.1, written independently of opskit's implementation."""
    value = zlib.crc32(text.removeprefix("\ufeff").replace("\r", "").replace("\n", "").encode("utf-8"))
    return value - (1 << 32) if value >= (1 << 31) else value


def test_rows_opskit_writes_match_flyways_column_values(migrate_db: str, scripts_dir: Callable[..., Path]) -> None:
    v1 = "CREATE TABLE t (id int);\n"
    v11 = "INSERT INTO t VALUES (1);\r\nCOMMENT ON TABLE t IS '${flyway:table} in ${Schema}';\r\n"
    rv = "CREATE OR REPLACE VIEW v AS SELECT id, '${schema}' AS s FROM t;\n"
    root = scripts_dir({"V1__create_table.sql": v1, "sub/V1_1__fill__it.sql": v11, "R__the_view.sql": rv})
    settings = MigrationSettings(locations=(str(root),), placeholders={"schema": "public"})

    with engine_for(migrate_db, settings) as engine:
        report = engine.migrate()

    assert [a.script for a in report.applied] == ["V1__create_table.sql", "sub/V1_1__fill__it.sql", "R__the_view.sql"]
    rows = query(migrate_db, ROWS.format('"public"."flyway_schema_history"'))
    assert rows == [
        (1, "1", "create table", "SQL", "V1__create_table.sql", flyway_checksum(v1), "postgres", True, True),
        (2, "1.1", "fill  it", "SQL", "sub/V1_1__fill__it.sql", flyway_checksum(v11), "postgres", True, True),
        (
            3,
            None,
            "the view",
            "SQL",
            "R__the_view.sql",
            flyway_checksum(rv.replace("${schema}", "public")),
            "postgres",
            True,
            True,
        ),
    ]
    assert query(migrate_db, "SELECT obj_description('t'::regclass)") == [("flyway_schema_history in public",)]


def test_the_history_table_has_flyways_exact_ddl(migrate_db: str, scripts_dir: Callable[..., Path]) -> None:
    settings = MigrationSettings(locations=(str(scripts_dir({"V1__a.sql": "SELECT 1;"})),))
    with engine_for(migrate_db, settings) as engine:
        engine.migrate()
    columns = query(
        migrate_db,
        "SELECT column_name, data_type, character_maximum_length, is_nullable, column_default"
        " FROM information_schema.columns WHERE table_name = 'flyway_schema_history'"
        " ORDER BY ordinal_position",
    )
    assert columns == [
        ("installed_rank", "integer", None, "NO", None),
        ("version", "character varying", 50, "YES", None),
        ("description", "character varying", 200, "NO", None),
        ("type", "character varying", 20, "NO", None),
        ("script", "character varying", 1000, "NO", None),
        ("checksum", "integer", None, "YES", None),
        ("installed_by", "character varying", 100, "NO", None),
        ("installed_on", "timestamp without time zone", None, "NO", "now()"),
        ("execution_time", "integer", None, "NO", None),
        ("success", "boolean", None, "NO", None),
    ]
    indexes = query(
        migrate_db,
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'flyway_schema_history' ORDER BY indexname",
    )
    assert [name for name, _ in indexes] == ["flyway_schema_history_pk", "flyway_schema_history_s_idx"]
    assert "(success)" in indexes[1][1]


def test_a_failing_migration_leaves_no_history_row_and_no_partial_change(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    root = scripts_dir(
        {
            "V1__ok.sql": "CREATE TABLE kept (id int);",
            "V2__breaks.sql": "CREATE TABLE half (id int);\nINSERT INTO half VALUES (1);\nSELECT 1/0;\n",
        }
    )
    settings = MigrationSettings(locations=(str(root),))
    with engine_for(migrate_db, settings) as engine, pytest.raises(MigrationFailed) as failure:
        engine.migrate()

    assert "V2__breaks.sql" in failure.value.message and "division by zero" in failure.value.message
    assert query(migrate_db, "SELECT version FROM flyway_schema_history ORDER BY installed_rank") == [("1",)]
    assert query(migrate_db, "SELECT to_regclass('half') IS NULL, to_regclass('kept') IS NOT NULL") == [(True, True)]


def test_non_transactional_migrations_run_in_autocommit_and_a_failure_is_recorded_then_repaired(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    root = scripts_dir(
        {
            "V1__table.sql": "CREATE TABLE t (id int);",
            "V2__index.sql": "CREATE INDEX CONCURRENTLY t_id ON t (id);\n",
            "V3__bad_index.sql": "CREATE INDEX CONCURRENTLY t_id2 ON t (id);\nCREATE INDEX CONCURRENTLY x ON nope (id);\n",
        }
    )
    settings = MigrationSettings(locations=(str(root),))
    with engine_for(migrate_db, settings) as engine, pytest.raises(MigrationFailed, match="outside a transaction"):
        engine.migrate()
    rows = query(migrate_db, "SELECT version, success FROM flyway_schema_history ORDER BY installed_rank")
    assert rows == [("1", True), ("2", True), ("3", False)]

    with engine_for(migrate_db, settings) as engine:
        with pytest.raises(VerificationFailed, match=r"Detected failed migration to version 3 \(bad index\)"):
            engine.migrate()
        report = engine.repair()
    assert report.actions == ["Removed failed migrations"]
    assert query(migrate_db, "SELECT version FROM flyway_schema_history ORDER BY installed_rank") == [("1",), ("2",)]


def test_mixing_transactional_and_non_transactional_statements_needs_mixed(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    root = scripts_dir({"V1__mixed.sql": "CREATE TABLE t (id int);\nCREATE INDEX CONCURRENTLY t_id ON t (id);\n"})
    with (
        engine_for(migrate_db, MigrationSettings(locations=(str(root),))) as engine,
        pytest.raises(ConfigError, match="even though mixed is false"),
    ):
        engine.migrate()
    with engine_for(migrate_db, MigrationSettings(locations=(str(root),), mixed=True)) as engine:
        assert engine.migrate().count == 1
    assert query(migrate_db, "SELECT count(*) FROM pg_indexes WHERE indexname = 't_id'") == [(1,)]


def test_a_history_table_filled_the_way_flyway_fills_it_is_read_validated_and_migrated_on(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    v1, v2, v3 = "CREATE TABLE legacy (id int);\n", "ALTER TABLE legacy ADD COLUMN name text;\n", "SELECT 3;\n"
    view = "CREATE OR REPLACE VIEW names AS SELECT name, '${env}' AS env FROM app.legacy;\n"
    root = scripts_dir(
        {
            "V1__legacy.sql": v1,
            "V2__add_name.sql": v2,
            "R__names.sql": view,
            "V4__new.sql": "CREATE TABLE app.fresh (id int);\n",
        }
    )
    # What Flyway leaves after: baseline at 1 (creating schema app), migrate V2 + R__names (stored with the raw,
    # pre-6.3 checksum), migrate V3, then V3's file removed and `flyway repair` writing a DELETE marker.
    run_sql(
        migrate_db,
        f"""
        CREATE SCHEMA app;
        CREATE TABLE app.legacy (id int, name text);
        CREATE VIEW app.names AS SELECT name, 'prod' AS env FROM app.legacy;
        CREATE TABLE "app"."flyway_schema_history" (
            "installed_rank" INT NOT NULL, "version" VARCHAR(50), "description" VARCHAR(200) NOT NULL,
            "type" VARCHAR(20) NOT NULL, "script" VARCHAR(1000) NOT NULL, "checksum" INTEGER,
            "installed_by" VARCHAR(100) NOT NULL, "installed_on" TIMESTAMP NOT NULL DEFAULT now(),
            "execution_time" INTEGER NOT NULL, "success" BOOLEAN NOT NULL);
        INSERT INTO app.flyway_schema_history VALUES
          (1, '1', '<< Flyway Baseline >>', 'BASELINE', '<< Flyway Baseline >>', NULL, 'deploy', now(), 0, TRUE),
          (2, NULL, '<< Flyway Schema Creation >>', 'SCHEMA', '"app"', NULL, 'deploy', now(), 0, TRUE),
          (3, '2', 'add name', 'SQL', 'V2__add_name.sql', {flyway_checksum(v2)}, 'deploy', now(), 12, TRUE),
          (4, NULL, 'names', 'SQL', 'R__names.sql', {flyway_checksum(view)}, 'deploy', now(), 3, TRUE),
          (5, '3', 'gone', 'SQL', 'V3__gone.sql', {flyway_checksum(v3)}, 'deploy', now(), 1, TRUE),
          (6, '3', 'gone', 'DELETE', 'V3__gone.sql', {flyway_checksum(v3)}, 'deploy', now(), 0, TRUE);
        ALTER TABLE "app"."flyway_schema_history" ADD CONSTRAINT "flyway_schema_history_pk" PRIMARY KEY ("installed_rank");
        CREATE INDEX "flyway_schema_history_s_idx" ON "app"."flyway_schema_history" ("success");
    """,
    )
    settings = MigrationSettings(locations=(str(root),), schemas=("app",), placeholders={"env": "prod"})

    with engine_for(migrate_db, settings) as engine:
        states = [(i.label, i.state) for i in engine.info().infos]
        assert states == [
            ("1", "Baseline"),
            ("<< Flyway Schema Creation >>", "Success"),
            ("2", "Success"),
            ("names", "Success"),
            ("3", "Deleted"),
            ("3", "Success"),
            ("1", "Ignored (Baseline)"),
            ("4", "Pending"),
        ]
        engine.validate(["*:pending"])
        report = engine.migrate()

    assert [a.script for a in report.applied] == ["V4__new.sql"]
    assert query(
        migrate_db, "SELECT installed_rank, version, checksum FROM app.flyway_schema_history WHERE installed_rank > 6"
    ) == [(7, "4", flyway_checksum("CREATE TABLE app.fresh (id int);\n"))]


def test_migrate_creates_a_missing_schema_with_a_schema_marker_at_rank_zero(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    settings = MigrationSettings(
        locations=(str(scripts_dir({"V1__a.sql": "CREATE TABLE a (id int);"})),), schemas=("shop",)
    )
    with engine_for(migrate_db, settings) as engine:
        engine.migrate()
    rows = query(migrate_db, ROWS.format("shop.flyway_schema_history"))
    assert rows == [
        (0, None, "<< Flyway Schema Creation >>", "SCHEMA", '"shop"', None, "postgres", True, True),
        (1, "1", "a", "SQL", "V1__a.sql", flyway_checksum("CREATE TABLE a (id int);"), "postgres", True, True),
    ]
    assert query(migrate_db, "SELECT to_regclass('shop.a') IS NOT NULL") == [(True,)]  # search_path led by shop


def test_baseline_writes_flyways_row_and_is_idempotent_only_for_the_same_baseline(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    root = scripts_dir(
        {"V1__old.sql": "SELECT 1;", "V2__old.sql": "SELECT 2;", "V3__new.sql": "CREATE TABLE n (i int);"}
    )
    run_sql(migrate_db, "CREATE TABLE existing (id int);")
    settings = MigrationSettings(locations=(str(root),))
    with engine_for(migrate_db, settings) as engine:
        with pytest.raises(ConfigError, match='Found non-empty schema\\(s\\) "public" but no schema history table'):
            engine.migrate()
        assert engine.baseline("2").created
        assert not engine.baseline("2").created
        with pytest.raises(VerificationFailed, match="already been baselined with \\(2,<< Flyway Baseline >>\\)"):
            engine.baseline("5")
        report = engine.migrate()
    assert [a.script for a in report.applied] == ["V3__new.sql"]
    assert query(migrate_db, ROWS.format("flyway_schema_history"))[0] == (
        1,
        "2",
        "<< Flyway Baseline >>",
        "BASELINE",
        "<< Flyway Baseline >>",
        None,
        "postgres",
        True,
        True,
    )


def test_baseline_on_migrate_baselines_a_non_empty_schema_first(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    root = scripts_dir({"V1__old.sql": "SELECT 1;", "V2__new.sql": "CREATE TABLE n (i int);"})
    run_sql(migrate_db, "CREATE TABLE existing (id int);")
    with engine_for(migrate_db, MigrationSettings(locations=(str(root),), baseline_on_migrate=True)) as engine:
        assert [a.script for a in engine.migrate(dry_run=True).applied] == ["V2__new.sql"]
        report = engine.migrate()
    assert report.baselined and [a.script for a in report.applied] == ["V2__new.sql"]


def test_repair_marks_missing_migrations_deleted_and_realigns_changed_checksums(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    root = scripts_dir({"V1__a.sql": "SELECT 1;", "V2__b.sql": "SELECT 2;", "V3__c.sql": "SELECT 3;"})
    settings = MigrationSettings(locations=(str(root),))
    with engine_for(migrate_db, settings) as engine:
        engine.migrate()
    (root / "V2__b.sql").unlink()
    (root / "V1__a.sql").write_text("SELECT 1; -- reformatted", encoding="utf-8")
    with engine_for(migrate_db, settings) as engine:
        with pytest.raises(VerificationFailed) as invalid:
            engine.validate()
        assert "Migration checksum mismatch for migration version 1" in invalid.value.message
        assert "Detected applied migration not resolved locally: 2." in invalid.value.message
        report = engine.repair()
        assert report.actions == ["Marked missing migrations as deleted", "Aligned applied migration checksums"]
        engine.validate()
    rows = query(
        migrate_db, "SELECT installed_rank, version, type, checksum FROM flyway_schema_history ORDER BY installed_rank"
    )
    assert rows[0] == (1, "1", "SQL", flyway_checksum("SELECT 1; -- reformatted"))
    assert rows[3] == (4, "2", "DELETE", flyway_checksum("SELECT 2;"))


def test_an_outdated_repeatable_runs_again(migrate_db: str, scripts_dir: Callable[..., Path]) -> None:
    root = scripts_dir(
        {"V1__t.sql": "CREATE TABLE t (id int);", "R__v.sql": "CREATE OR REPLACE VIEW v AS SELECT 1 AS x;"}
    )
    settings = MigrationSettings(locations=(str(root),))
    with engine_for(migrate_db, settings) as engine:
        engine.migrate()
        assert engine.migrate().count == 0
    (root / "R__v.sql").write_text("CREATE OR REPLACE VIEW v AS SELECT 1 AS x, 2 AS y;", encoding="utf-8")
    with engine_for(migrate_db, settings) as engine:
        assert [a.script for a in engine.migrate().applied] == ["R__v.sql"]
        assert [i.state for i in engine.info().infos] == ["Success", "Superseded", "Success"]


def test_out_of_order_and_targets_decide_what_is_applied(migrate_db: str, scripts_dir: Callable[..., Path]) -> None:
    root = scripts_dir({"V1__a.sql": "SELECT 1;", "V3__c.sql": "SELECT 3;", "V4__d.sql": "SELECT 4;"})
    with engine_for(migrate_db, MigrationSettings(locations=(str(root),), target="3")) as engine:
        assert [a.version for a in engine.migrate().applied] == ["1", "3"]
    scripts_dir({"V2__late.sql": "SELECT 2;"})
    with (
        engine_for(migrate_db, MigrationSettings(locations=(str(root),))) as engine,
        pytest.raises(VerificationFailed, match="Detected resolved migration not applied to database: 2"),
    ):
        engine.migrate()
    with engine_for(migrate_db, MigrationSettings(locations=(str(root),), out_of_order=True)) as engine:
        assert [a.version for a in engine.migrate().applied] == ["2", "4"]
        assert [i.state for i in engine.info().infos] == ["Success", "Success", "Out of Order", "Success"]
    with (
        engine_for(migrate_db, MigrationSettings(locations=(str(root),), target="9")) as engine,
        pytest.raises(ConfigError, match="No migration with a target version 9 could be found"),
    ):
        engine.migrate()


def test_the_lock_is_flyways_key_and_a_held_lock_makes_migrate_fail_with_lock_held(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    import psycopg

    from opskit.core.errors import LockHeld
    from tests.databases import dsn_for

    settings = MigrationSettings(locations=(str(scripts_dir({"V1__a.sql": "SELECT 1;"})),), lock_retry_count=1)
    assert HistoryTable("public").lock_key == 77433833903597
    with psycopg.connect(dsn_for(migrate_db), autocommit=True) as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(77433833903597)")  # what Flyway's default mode takes
        with engine_for(migrate_db, settings) as engine, pytest.raises(LockHeld, match="advisory lock"):
            engine.migrate()
        holder.execute("ROLLBACK")
    with engine_for(migrate_db, settings) as engine:
        assert engine.migrate().count == 1


def test_group_applies_every_pending_migration_in_one_transaction(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    root = scripts_dir({"V1__a.sql": "CREATE TABLE a (id int);", "V2__b.sql": "CREATE TABLE b (id int); SELECT 1/0;"})
    with (
        engine_for(migrate_db, MigrationSettings(locations=(str(root),), group=True)) as engine,
        pytest.raises(MigrationFailed, match=r"V2__b\.sql"),
    ):
        engine.migrate()
    assert query(migrate_db, "SELECT to_regclass('a'), count(*) FROM flyway_schema_history") == [(None, 0)]


def test_schema_version_reads_the_current_version_from_history_rows_alone(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    import psycopg

    from opskit.flyway.version import schema_version
    from tests.databases import dsn_for

    root = scripts_dir({"V1__a.sql": "SELECT 1;", "V1_10__b.sql": "SELECT 2;", "V1_9__c.sql": "SELECT 3;"})
    with engine_for(migrate_db, MigrationSettings(locations=(str(root),))) as engine:
        engine.migrate()
    run_sql(
        migrate_db,
        "INSERT INTO flyway_schema_history (installed_rank, version, description, type, script,"
        " installed_by, execution_time, success) VALUES (4, '1.10', 'b', 'DELETE', 'V1_10__b.sql',"
        " 'x', 0, TRUE)",
    )
    with psycopg.connect(dsn_for(migrate_db), autocommit=True) as conn:
        assert schema_version(conn) == "1.9"
        assert schema_version(conn, "nope") is None
