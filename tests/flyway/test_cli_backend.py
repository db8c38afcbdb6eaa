"""``engine = "flyway"``: the real Flyway binary with opskit's settings (skipped where Flyway is absent)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from opskit.config.migrations import MigrationSettings
from opskit.config.model import TargetConfig
from opskit.flyway import cli_backend
from tests.migrate.support import opskit, query, write_config

needs_flyway = pytest.mark.skipif(shutil.which("flyway") is None, reason="no flyway binary on this machine")


def test_the_flyway_command_line_gets_opskits_settings_and_no_password_in_argv() -> None:
    target = TargetConfig(
        name="app", dsn="host=db.example port=6432 dbname=shop user=deploy password=s3cret sslmode=require"
    )
    settings = MigrationSettings(locations=("/m",), schemas=("app",), placeholders={"env": "prod"}, out_of_order=True)
    args, env = cli_backend._arguments(target, settings)
    assert "-url=jdbc:postgresql://db.example:6432/shop?sslmode=require" in args
    assert "-user=deploy" in args and "-locations=filesystem:/m" in args
    assert "-schemas=app" in args and "-outOfOrder=true" in args and "-placeholders.env=prod" in args
    assert "-outputType=json" in args
    assert not any("s3cret" in a for a in args)
    assert env == {"FLYWAY_PASSWORD": "s3cret"}


@needs_flyway
def test_flyway_engine_migrates_and_opskit_reads_the_same_history(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    scripts_dir({"V1__a.sql": "CREATE TABLE a (id int);\n", "R__v.sql": "CREATE OR REPLACE VIEW v AS SELECT 1 AS x;\n"})
    flyway_config = write_config(tmp_path, migrate_db, 'engine = "flyway"\n')
    assert opskit(flyway_config, "migrate", timeout=300).returncode == 0
    rows = query(migrate_db, "SELECT version, script FROM flyway_schema_history ORDER BY installed_rank")
    assert rows == [("1", "V1__a.sql"), (None, "R__v.sql")]
    opskit_config = tmp_path / "opskit-engine.toml"
    opskit_config.write_text(flyway_config.read_text().replace('engine = "flyway"\n', ""), encoding="utf-8")
    assert opskit(opskit_config, "migrate", "validate").returncode == 0
    info = json.loads(opskit(flyway_config, "migrate", "info", "--json").stdout)
    assert [m["state"] for m in info["migrations"]] == ["Success", "Success"]


def stub_flyway(tmp_path: Path, stdout: str, status: int) -> Path:
    """Write an executable stand-in for flyway that prints ``stdout`` and exits ``status``."""
    stub = tmp_path / "flyway-stub"
    (tmp_path / "flyway-stub.out").write_text(stdout, encoding="utf-8")
    stub.write_text(f'#!/bin/sh\ncat "{tmp_path / "flyway-stub.out"}"\nexit {status}\n', encoding="utf-8")
    stub.chmod(0o755)
    return stub


CONNECTION_ERROR = json.dumps(
    {"error": {"errorCode": "DB_CONNECTION", "message": "Unable to obtain connection from database: refused"}}
)


@pytest.mark.parametrize(
    "verb", [("migrate",), ("migrate", "info"), ("migrate", "validate"), ("migrate", "repair"), ("migrate", "baseline")]
)
def test_a_flyway_that_cannot_connect_exits_3_whatever_the_verb(
    migrate_db: str, tmp_path: Path, verb: tuple[str, ...]
) -> None:
    stub = stub_flyway(tmp_path, CONNECTION_ERROR, 1)
    (tmp_path / "sql").mkdir()
    config = write_config(tmp_path, migrate_db, f'engine = "flyway"\nflyway_binary = "{stub}"\n')
    result = opskit(config, *verb)
    assert result.returncode == 3, result.stderr
    assert "Unable to obtain connection from database: refused" in result.stderr


@pytest.mark.parametrize(
    ("stdout", "status", "code", "words"),
    [
        ("", 1, 4, "flyway migrate exited with status 1 and printed nothing"),
        (
            json.dumps({"error": {"errorCode": "CONFIGURATION", "message": "Unknown configuration property"}}),
            1,
            2,
            "Unknown configuration property",
        ),
        (
            json.dumps({"error": {"errorCode": "FAULT", "message": "NullPointerException"}}),
            1,
            4,
            "NullPointerException",
        ),
        ("Flyway says hello\n", 0, 2, "printed no JSON document"),
    ],
)
def test_a_flyway_failure_maps_to_the_documented_exit_codes(
    migrate_db: str, tmp_path: Path, stdout: str, status: int, code: int, words: str
) -> None:
    stub = stub_flyway(tmp_path, stdout, status)
    (tmp_path / "sql").mkdir()
    config = write_config(tmp_path, migrate_db, f'engine = "flyway"\nflyway_binary = "{stub}"\n')
    result = opskit(config, "migrate")
    assert result.returncode == code, result.stderr
    assert words in result.stderr
    assert "unexpected error" not in result.stderr
