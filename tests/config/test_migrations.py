"""Migration settings from opskit.toml, Flyway's own files and FLYWAY_* variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from opskit.config.jdbc import jdbc_to_conninfo
from opskit.config.load import parse_config
from opskit.config.migrations import MigrationSettings, _build
from opskit.config.schema import ConfigErrors, Section
from opskit.core.errors import ConfigError


def build(
    raw: dict[str, Any], env: dict[str, str] | None = None, cwd: Path | None = None, home: Path | None = None
) -> tuple[MigrationSettings, list[str]]:
    errors = ConfigErrors()
    base = cwd or Path("/nonexistent-cwd")
    settings = _build(Section(raw, "migrations", errors), env or {}, base, home or Path("/nonexistent-home"))
    return settings, errors.problems


def test_defaults_are_flyways() -> None:
    settings, problems = build({})
    assert problems == []
    assert settings.table == "flyway_schema_history"
    assert settings.baseline_version == "1"
    assert settings.baseline_description == "<< Flyway Baseline >>"
    assert settings.validate_on_migrate and not settings.out_of_order and settings.create_schemas
    assert settings.ignore_migration_patterns == ("*:future",)
    assert settings.lock_retry_count == 50
    assert settings.locations == ("sql",)


def test_opskit_toml_keys_are_read_and_unknown_keys_reported() -> None:
    settings, problems = build(
        {
            "locations": ["filesystem:db/migration", "more"],
            "table": "history",
            "schemas": ["app"],
            "out_of_order": True,
            "placeholders": {"Owner": "app_owner", "n": 3},
            "engine": "flyway",
            "nonsense": 1,
        }
    )
    assert settings.locations == ("db/migration", "more")
    assert settings.table == "history"
    assert settings.schemas == ("app",)
    assert settings.out_of_order is True
    assert settings.placeholders == {"owner": "app_owner", "n": "3"}
    assert settings.engine == "flyway"
    assert problems == ["At 'migrations.nonsense': unknown key"]


def test_classpath_locations_and_bad_engines_are_reported() -> None:
    _, problems = build({"locations": ["classpath:db/migration"], "engine": "liquibase"})
    assert any("engine" in p for p in problems)
    assert any("classpath:db/migration" in p for p in problems)


def test_config_py_hands_the_migrations_table_to_parse_settings() -> None:
    config = parse_config('[migrations]\nlocations = ["sql"]\nflyway_config = []\nbaseline_version = "3"\n')
    assert isinstance(config.migrations, MigrationSettings)
    assert config.migrations.baseline_version == "3"
    with pytest.raises(ConfigError, match=r"At 'migrations\.tabel': unknown key"):
        parse_config('[migrations]\nflyway_config = []\ntabel = "x"\n')


def test_a_flyway_conf_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / "flyway.conf").write_text(
        "# comment\nflyway.url=jdbc:postgresql://db.example:6543/shop?currentSchema=app\nflyway.user=deploy\n"
        "flyway.locations=filesystem:sql,filesystem:extra\nflyway.outOfOrder=true\n"
        "flyway.placeholders.Env=prod\nflyway.schemas=app, audit\nother.key=x\n",
        encoding="utf-8",
    )
    settings, problems = build({}, cwd=tmp_path)
    assert problems == []
    assert settings.locations == ("sql", "extra")
    assert settings.out_of_order is True
    assert settings.schemas == ("app", "audit")
    assert settings.placeholders == {"env": "prod"}
    assert settings.conninfo is not None
    assert "host=db.example" in settings.conninfo and "port=6543" in settings.conninfo
    assert "user=deploy" in settings.conninfo and "search_path=app" in settings.conninfo


def test_a_flyway_toml_environment_and_its_overrides_are_read(tmp_path: Path) -> None:
    (tmp_path / "flyway.toml").write_text(
        '[environments.default]\nurl = "jdbc:postgresql://h/db"\nschemas = ["s1"]\n'
        '[environments.default.flyway]\ntable = "env_table"\n'
        '[flyway]\nlocations = ["filesystem:migrations"]\ntable = "base_table"\nvalidateMigrationNaming = true\n'
        '[flyway.placeholders]\nA = "1"\n',
        encoding="utf-8",
    )
    settings, problems = build({}, cwd=tmp_path)
    assert problems == []
    assert settings.locations == ("migrations",)
    assert settings.table == "env_table"
    assert settings.schemas == ("s1",)
    assert settings.validate_migration_naming is True
    assert settings.placeholders == {"a": "1"}


def test_precedence_is_files_then_opskit_toml_then_environment(tmp_path: Path) -> None:
    (tmp_path / "flyway.conf").write_text(
        "flyway.table=from_file\nflyway.target=1\nflyway.placeholders.a=file\nflyway.placeholders.b=file\n",
        encoding="utf-8",
    )
    settings, _ = build(
        {"table": "from_toml", "target": "2", "placeholders": {"a": "toml"}},
        env={"FLYWAY_TARGET": "3", "FLYWAY_PLACEHOLDERS_B": "env"},
        cwd=tmp_path,
    )
    assert settings.table == "from_toml"
    assert settings.target == "3"
    assert settings.placeholders == {"a": "toml", "b": "env"}


def test_flyway_environment_variables_are_read() -> None:
    settings, problems = build(
        {},
        env={
            "FLYWAY_LOCATIONS": "filesystem:a,b",
            "FLYWAY_BASELINE_ON_MIGRATE": "true",
            "FLYWAY_LOCK_RETRY_COUNT": "3",
            "FLYWAY_PLACEHOLDERS_MY_NAME": "x",
            "FLYWAY_POSTGRESQL_TRANSACTIONAL_LOCK": "false",
        },
    )
    assert problems == []
    assert settings.locations == ("a", "b")
    assert settings.baseline_on_migrate is True
    assert settings.lock_retry_count == 3
    assert settings.placeholders == {"my_name": "x"}
    assert settings.transactional_lock is False


def test_bad_values_from_the_environment_are_reported_with_their_key() -> None:
    _, problems = build({}, env={"FLYWAY_OUT_OF_ORDER": "maybe"})
    assert problems and "outOfOrder" in problems[0]


def test_explicit_flyway_config_files_replace_discovery_and_must_exist(tmp_path: Path) -> None:
    (tmp_path / "flyway.conf").write_text("flyway.table=ignored\n", encoding="utf-8")
    chosen = tmp_path / "team.conf"
    chosen.write_text("flyway.table=chosen\n", encoding="utf-8")
    settings, problems = build({"flyway_config": [str(chosen), str(tmp_path / "missing.conf")]}, cwd=tmp_path)
    assert settings.table == "chosen"
    assert any("missing.conf" in p for p in problems)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("jdbc:postgresql://localhost/app", {"host": "localhost", "port": "5432", "dbname": "app"}),
        (
            "jdbc:postgresql://h1:5433,h2/app?ssl=true&ApplicationName=x",
            {"host": "h1,h2", "port": "5433,5432", "dbname": "app", "sslmode": "require", "application_name": "x"},
        ),
        (
            "jdbc:postgresql://[::1]:6000/app?sslmode=verify-full&user=u&password=secret",
            {"host": "::1", "port": "6000", "dbname": "app", "sslmode": "verify-full", "user": "u"},
        ),
        ("jdbc:postgresql:app", {"dbname": "app"}),
    ],
)
def test_jdbc_urls_translate_to_libpq_conninfo_without_passwords(url: str, expected: dict[str, str]) -> None:
    from psycopg.conninfo import conninfo_to_dict

    assert conninfo_to_dict(jdbc_to_conninfo(url)) == expected


def test_a_non_postgres_jdbc_url_is_refused() -> None:
    with pytest.raises(ValueError):
        jdbc_to_conninfo("jdbc:mysql://h/db")
