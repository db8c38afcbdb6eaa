"""The last differences from a real Flyway: a description cut inside a character, undo scripts,
duplicate-version messages and files starting with a UTF-8 BOM, against a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from opskit.config.migrations import MigrationSettings
from opskit.core.errors import ConfigError
from opskit.flyway.names import abbreviate_description, parse_name
from opskit.flyway.scripts import discover
from tests.databases import run_sql
from tests.flyway.test_engine import ROWS, flyway_checksum
from tests.migrate.support import engine_for, query

HISTORY = '"public"."flyway_schema_history"'
BOM = "\ufeff"


def write_bytes(root: Path, name: str, data: bytes) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_description_cut_inside_an_emoji_is_stored_with_a_question_mark_as_flyway_stores_it(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    name = "V1__" + "a" * 196 + "\U0001f600" + "bbb.sql"
    text = "CREATE TABLE t (id int);\n"
    root = scripts_dir({name: text})
    settings = MigrationSettings(locations=(str(root),))

    with engine_for(migrate_db, settings) as engine:
        engine.migrate()

    # Java's substring(0, 197) keeps the emoji's high surrogate; PgJDBC stores it as '?'.
    stored = "a" * 196 + "?..."
    assert query(migrate_db, ROWS.format(HISTORY)) == [
        (1, "1", stored, "SQL", name, flyway_checksum(text), "postgres", True, True),
    ]
    with engine_for(migrate_db, settings) as engine:
        assert engine.validate().infos[0].state == "Success"


def test_a_database_flyway_migrated_with_a_cut_emoji_validates(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    name = "V1__" + "a" * 196 + "\U0001f600" + "bbb.sql"
    text = "CREATE TABLE t (id int);\n"
    root = scripts_dir({name: text})
    settings = MigrationSettings(locations=(str(root),))
    with engine_for(migrate_db, settings) as engine:
        engine.baseline(version="0")  # only to have the table; the row below is what Flyway 13 writes
    run_sql(
        migrate_db,
        "CREATE TABLE t (id int); INSERT INTO flyway_schema_history (installed_rank, version, description, type,"
        f" script, checksum, installed_by, execution_time, success) VALUES (2, '1', '{'a' * 196}?...', 'SQL',"
        f" '{name}', {flyway_checksum(text)}, 'postgres', 3, true)",
    )
    with engine_for(migrate_db, settings) as engine:
        state = engine.validate()
    assert [(i.version_text, i.state) for i in state.infos] == [("0", "Baseline"), ("1", "Success")]


def test_descriptions_within_200_units_are_stored_whole() -> None:
    assert abbreviate_description("a" * 198 + "\U0001f600") == "a" * 198 + "\U0001f600"
    assert abbreviate_description("a" * 197 + "\U0001f600" + "b") == "a" * 197 + "\U0001f600" + "b"  # 200 units
    assert abbreviate_description("a" * 197 + "\U0001f600" + "bb") == "a" * 197 + "..."  # cut before the pair


def test_a_duplicate_version_is_named_as_flyway_names_it(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "V1__a.sql").write_text("SELECT 1;\n", encoding="utf-8")
    (tmp_path / "sub" / "V1.0__b.sql").write_text("SELECT 1;\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        discover([tmp_path])
    assert caught.value.message.splitlines() == [
        "Found more than one migration with version 1",
        "Offenders:",
        f"-> {tmp_path / 'V1__a.sql'} (SQL)",
        f"-> {tmp_path / 'sub' / 'V1.0__b.sql'} (SQL)",
    ]


def test_undo_scripts_are_ignored_as_flyway_community_ignores_them_not_called_bad_names(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    v1 = "CREATE TABLE t (id int);\n"
    root = scripts_dir({"V1__t.sql": v1, "U1__t.sql": "DROP TABLE t;\n"})
    found = discover([root], validate_naming=True)  # would raise if U1__ were a bad name
    assert found.invalid == ()
    assert [p.name for p in found.undo] == ["U1__t.sql"]
    assert parse_name("Upgrade.sql") == "the name must start with 'V' or 'R' (case-sensitive)"

    with engine_for(migrate_db, MigrationSettings(locations=(str(root),), validate_migration_naming=True)) as engine:
        engine.migrate()
    assert query(migrate_db, ROWS.format(HISTORY)) == [
        (1, "1", "t", "SQL", "V1__t.sql", flyway_checksum(v1), "postgres", True, True),
    ]
    assert query(migrate_db, "SELECT to_regclass('t')::text") == [("t",)]


def test_files_starting_with_a_bom_run_and_keep_flyways_checksums(migrate_db: str, tmp_path: Path) -> None:
    root = tmp_path / "sql"
    v1 = BOM + "CREATE TABLE t (id int);\r\n"
    v2 = BOM + "INSERT INTO t VALUES (${n});\n"
    rv = BOM + "CREATE OR REPLACE VIEW v AS SELECT id FROM t WHERE id = ${n};\n"
    write_bytes(root, "V1__t.sql", v1.encode())
    # a non-transactional script is split into statements: the BOM must not reach the first one
    write_bytes(root, "V1_1__index.sql", (BOM + "CREATE INDEX CONCURRENTLY t_id ON t (id);\n").encode())
    write_bytes(root, "V2__fill.sql", v2.encode())
    write_bytes(root, "R__view.sql", rv.encode())
    # a .conf saved with a BOM: its first key still counts (without it, ${literal} fails to resolve)
    write_bytes(root, "V3__literal.sql", b"COMMENT ON TABLE t IS '${literal}';\n")
    write_bytes(root, "V3__literal.sql.conf", (BOM + "placeholderReplacement=false\n").encode())
    write_bytes(root, "afterMigrate.sql", (BOM + "CREATE TABLE after_migrate AS SELECT ${n} AS n;\n").encode())
    settings = MigrationSettings(locations=(str(root),), placeholders={"n": "7"})

    with engine_for(migrate_db, settings) as engine:
        engine.migrate()

    literal = "COMMENT ON TABLE t IS '${literal}';\n"
    assert query(migrate_db, ROWS.format(HISTORY)) == [
        (1, "1", "t", "SQL", "V1__t.sql", flyway_checksum(v1), "postgres", True, True),
        (
            2,
            "1.1",
            "index",
            "SQL",
            "V1_1__index.sql",
            flyway_checksum(BOM + "CREATE INDEX CONCURRENTLY t_id ON t (id);\n"),
            "postgres",
            True,
            True,
        ),
        (3, "2", "fill", "SQL", "V2__fill.sql", flyway_checksum(v2), "postgres", True, True),
        (4, "3", "literal", "SQL", "V3__literal.sql", flyway_checksum(literal), "postgres", True, True),
        (5, None, "view", "SQL", "R__view.sql", flyway_checksum(rv.replace("${n}", "7")), "postgres", True, True),
    ]
    assert query(migrate_db, "SELECT id FROM v") == [(7,)]
    assert query(migrate_db, "SELECT obj_description('t'::regclass)") == [("${literal}",)]
    assert query(migrate_db, "SELECT n FROM after_migrate") == [(7,)]


def test_a_script_conf_saved_with_a_bom_keeps_its_first_key(tmp_path: Path) -> None:
    write_bytes(tmp_path, "V1__a.sql", b"SELECT 1;\n")
    write_bytes(tmp_path, "V1__a.sql.conf", (BOM + "executeInTransaction=false\n").encode())
    (script,) = discover([tmp_path]).scripts
    assert script.options.execute_in_transaction is False
