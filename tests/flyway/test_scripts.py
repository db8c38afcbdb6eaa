"""Script discovery, names, versions and statement classification, as Flyway does them."""

from __future__ import annotations

from pathlib import Path

import pytest

from opskit.config.migrations import Naming
from opskit.core.errors import ConfigError
from opskit.flyway.names import ParsedName, Version, abbreviate_description, abbreviate_script, parse_name
from opskit.flyway.scripts import discover
from opskit.flyway.statements import (
    can_run_in_transaction,
    leaves_changes_on_error,
    may_write,
    read_only_tag,
    split_statements,
)


def test_versions_compare_numerically_part_by_part() -> None:
    assert Version("1.10") > Version("1.9")
    assert Version("1_10") > Version("1.9")
    assert Version("2") > Version("1.999")
    assert Version("1.0") == Version("1") == Version("1.0.0") == Version("001")
    assert hash(Version("1.0")) == hash(Version("1"))


def test_version_text_keeps_leading_zeros_and_turns_underscores_into_dots() -> None:
    assert Version("001").text == "001"
    assert Version("1_0").text == "1.0"
    assert Version("1_0").raw == "1_0"


@pytest.mark.parametrize("raw", ["1.1.x", "a", "", "1.", "1..2", "1-2"])
def test_invalid_versions_are_rejected(raw: str) -> None:
    with pytest.raises(ValueError):
        Version(raw)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("V1__init.sql", ParsedName("versioned", Version("1"), "init")),
        ("V1_1__add_the__table.SQL", ParsedName("versioned", Version("1.1"), "add the  table")),
        ("V12.sql", ParsedName("versioned", Version("12"), "")),
        ("R__views.sql", ParsedName("repeatable", None, "views")),
        ("R__.sql", ParsedName("repeatable", None, "")),
    ],
)
def test_valid_names_parse_to_kind_version_and_description(name: str, expected: ParsedName) -> None:
    assert parse_name(name) == expected


@pytest.mark.parametrize("name", ["v1__x.sql", "V1_1_x.sql", "R1__x.sql", "Vabc__x.sql", "V__x.sql", "U1__x.sql"])
def test_invalid_names_give_a_reason(name: str) -> None:
    assert isinstance(parse_name(name), str)
    assert parse_name(name) not in ("not sql", "callback")


def test_other_files_and_callbacks_are_not_migrations() -> None:
    assert parse_name("README.md") == "not sql"
    assert parse_name("afterMigrate.sql") == "callback"
    assert parse_name("beforeEachMigrate__grants.sql") == "callback"


def test_custom_prefixes_and_suffixes_are_honoured() -> None:
    naming = Naming(versioned_prefix="M", separator="-", suffixes=(".pgsql",))
    assert parse_name("M2-x_y.PGSQL", naming) == ParsedName("versioned", Version("2"), "x y")


def _write(root: Path, relative: str, text: str = "SELECT 1;\n") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_discovery_is_recursive_ordered_and_skips_hidden_directories(tmp_path: Path) -> None:
    _write(tmp_path, "V1_10__ten.sql")
    _write(tmp_path, "sub/V1_9__nine.sql")
    _write(tmp_path, "R__b.sql")
    _write(tmp_path, "deeper/R__a.sql")
    _write(tmp_path, ".hidden/V5__no.sql")
    _write(tmp_path, "notes.txt")
    found = discover([tmp_path])
    assert [s.script for s in found.scripts] == ["sub/V1_9__nine.sql", "V1_10__ten.sql", "deeper/R__a.sql", "R__b.sql"]


def test_repeatables_are_ordered_by_utf16_code_units_case_sensitively(tmp_path: Path) -> None:
    for name in ("R__b.sql", "R__B.sql", "R__😀.sql", "R__\uff21.sql"):
        _write(tmp_path, name)
    # Java compares UTF-16 units: 'B' < 'b' < U+D83D (the emoji's high surrogate) < U+FF21.
    assert [s.description for s in discover([tmp_path]).scripts] == ["B", "b", "😀", "\uff21"]


def test_invalid_names_are_skipped_with_a_warning_or_refused_when_validating_naming(tmp_path: Path) -> None:
    _write(tmp_path, "V1__ok.sql")
    _write(tmp_path, "v2__lower.sql")
    found = discover([tmp_path])
    assert [s.script for s in found.scripts] == ["V1__ok.sql"]
    assert [i.path.name for i in found.invalid] == ["v2__lower.sql"]
    with pytest.raises(ConfigError, match="did not follow the filename convention"):
        discover([tmp_path], validate_naming=True)


def test_duplicate_versions_are_an_error(tmp_path: Path) -> None:
    _write(tmp_path, "V1__a.sql")
    _write(tmp_path, "sub/V1_0__b.sql")
    with pytest.raises(ConfigError, match="Found more than one migration with version 1"):
        discover([tmp_path])


def test_duplicate_repeatable_descriptions_are_an_error(tmp_path: Path) -> None:
    _write(tmp_path, "R__a.sql")
    _write(tmp_path, "sub/R__a.sql")
    with pytest.raises(ConfigError, match="more than one repeatable migration with description a"):
        discover([tmp_path])


def test_a_missing_location_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        discover([tmp_path / "nope"])


def test_a_script_conf_beside_the_script_is_read(tmp_path: Path) -> None:
    _write(tmp_path, "V1__x.sql")
    _write(tmp_path, "V1__x.sql.conf", "executeInTransaction=false\nplaceholderReplacement=false\n")
    script = discover([tmp_path]).scripts[0]
    assert script.options.execute_in_transaction is False
    assert script.options.placeholder_replacement is False


def test_statements_split_at_top_level_semicolons_only() -> None:
    text = (
        "CREATE TABLE t (a text DEFAULT 'x;y');\n"
        "/* a; /* nested; */ still; */ SELECT E'it\\'s;';\n"
        "DO $body$ BEGIN PERFORM 1; END $body$;\n"
        'SELECT 1 AS "a;b"; -- trailing; comment\n'
        "-- only a comment;\n"
    )
    assert len(split_statements(text)) == 4


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE INDEX CONCURRENTLY i ON t (a)",
        "create unique index concurrently if not exists i on t (a)",
        "DROP INDEX CONCURRENTLY i",
        "-- why\nVACUUM ANALYZE t",
        "CREATE DATABASE x",
        "ALTER SYSTEM SET work_mem = '8MB'",
        "REINDEX (VERBOSE) DATABASE x",
        "DISCARD ALL",
    ],
)
def test_statements_postgres_refuses_in_a_transaction_are_detected(statement: str) -> None:
    assert not can_run_in_transaction(statement)


def test_ordinary_statements_and_enum_values_on_new_servers_run_in_a_transaction() -> None:
    assert can_run_in_transaction("CREATE INDEX i ON t (a)")
    assert can_run_in_transaction("ALTER TYPE mood ADD VALUE 'meh'", 150000)
    assert not can_run_in_transaction("ALTER TYPE mood ADD VALUE 'meh'", 110000)


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT 1",
        "-- a check (of nothing)\nSELECT 'f(x)' AS \"g(\", $$h()$$",
        "SELECT id FROM t WHERE id IN (1, 2) AND EXISTS (SELECT 1 FROM u) OR id = ANY ('{3}')",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "VALUES (1), (2)",
        "TABLE t",
        "SHOW search_path",
        "SET lock_timeout = '5s'",
        "SET ROLE app_owner",
        "RESET ALL",
        "EXPLAIN (FORMAT JSON) SELECT * FROM t",
        "SELECT count(*) FROM t WHERE a > 1",
        "SELECT max(a), coalesce(min(b), 0) FROM t",
        "SELECT 1.5::numeric(10, 2), CAST(a AS varchar(3)) FROM t",
    ],
)
def test_read_only_statements_are_not_writes(statement: str) -> None:
    assert may_write(statement) is False


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT setval('s', 1)",
        "SELECT my_func()",
        'SELECT "My Func" (1)',
        "SELECT app.refresh(1)",
        "SELECT app.count(*) FROM t",
        "SELECT max(a), my_func(a) FROM t",
        "SELECT * INTO t2 FROM t",
        "SELECT * FROM t FOR UPDATE",
        "SELECT * FROM t FOR KEY SHARE",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        "EXPLAIN ANALYZE DELETE FROM t",
        "EXPLAIN (ANALYZE, BUFFERS) SELECT 1",
        "DO $$ BEGIN PERFORM 1; END $$",
        "CALL p()",
        "INSERT INTO t VALUES (1)",
        "BEGIN",
        "ANALYZE t",
        "CREATE INDEX CONCURRENTLY i ON t (a)",
    ],
)
def test_statements_that_may_write_count_as_writes(statement: str) -> None:
    assert may_write(statement) is True


def test_only_statements_that_commit_on_their_way_leave_changes_when_they_fail() -> None:
    for statement in (
        "CREATE UNIQUE INDEX CONCURRENTLY i ON t (a)",
        "REINDEX TABLE CONCURRENTLY t",
        "DROP INDEX CONCURRENTLY i",
        "DO $$ BEGIN COMMIT; END $$",
        "CALL p()",
    ):
        assert leaves_changes_on_error(statement), statement
    assert not leaves_changes_on_error("ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0)")
    assert not leaves_changes_on_error("INSERT INTO t VALUES (1)")


def test_only_the_status_tags_of_read_only_statements_read_as_read_only() -> None:
    assert all(read_only_tag(tag) for tag in ("SELECT 1", "SHOW", "SET", "RESET", "EXPLAIN"))
    assert not any(read_only_tag(tag) for tag in ("INSERT 0 1", "CREATE TABLE", "DO", "", None))


def test_long_descriptions_and_scripts_are_abbreviated_as_flyway_does() -> None:
    assert abbreviate_description("d" * 200) == "d" * 200
    assert abbreviate_description("d" * 201) == "d" * 197 + "..."
    script = "".join(str(i % 10) for i in range(1200))
    assert abbreviate_script(script) == "..." + script[3:1000]
