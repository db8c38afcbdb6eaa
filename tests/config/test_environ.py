"""Every configuration key from the environment, by one rule, and an error for a variable that names none."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from opskit.config.load import parse_config
from opskit.core.errors import ConfigError
from tests.databases import dsn_for
from tests.faults.helpers import cli_env

BASE = '[storages.local]\nurl = "file:///tmp/opskit-unit-never-written"\n[targets.app]\ndsn = "dbname=app"\n'


def test_a_storage_url_from_the_environment_wins_over_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSKIT_STORAGES_LOCAL_URL", "file:///srv/backups")
    assert parse_config(BASE).storage("local").url == "file:///srv/backups"


def test_values_are_read_as_toml_values_when_they_are_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSKIT_COMPRESSION_LEVEL", "6")
    monkeypatch.setenv("OPSKIT_STORAGES_OFFSITE_URL", "s3://bucket/opskit")
    monkeypatch.setenv("OPSKIT_STORAGES_OFFSITE_OFFSITE", "true")
    monkeypatch.setenv("OPSKIT_STORAGES_OFFSITE_ENDPOINT_URL", "http://127.0.0.1:9000")  # longest key wins
    monkeypatch.setenv("OPSKIT_TARGETS_APP_STORAGES", '["local", "offsite"]')
    monkeypatch.setenv("OPSKIT_OBJECTIVES_RPO", "30m")
    monkeypatch.setenv("OPSKIT_NOTIFY_PING_URLS_BACKUP", "https://hc-ping.com/uuid")
    config = parse_config(BASE)
    assert config.compression.level == 6
    offsite = config.storage("offsite")
    assert offsite.url == "s3://bucket/opskit" and offsite.offsite is True
    assert offsite.options["endpoint_url"] == "http://127.0.0.1:9000"
    assert config.target("app").storages == ("local", "offsite")
    assert config.objectives.rpo.total_seconds() == 1800
    assert config.notify is not None and config.notify.ping_urls["backup"].reference == "https://hc-ping.com/uuid"


def test_a_name_the_file_has_is_matched_whatever_its_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSKIT_TARGETS_MAIN_DB_DSN", "dbname=other")
    config = parse_config(BASE.replace("[targets.app]", "[targets.Main-DB]"))
    assert set(config.targets) == {"Main-DB"} and config.target("Main-DB").dsn == "dbname=other"


def test_an_unknown_opskit_variable_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSKIT_STORAGE_LOCAL_URL", "file:///typo")  # STORAGE, not STORAGES
    monkeypatch.setenv("OPSKIT_COMPRESSION_LEVL", "3")
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE)
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "At 'OPSKIT_COMPRESSION_LEVL'",
        "At 'OPSKIT_STORAGE_LOCAL_URL'",
    ]
    assert "names no configuration key" in caught.value.problems[0]


def test_secret_references_and_secret_keys_keep_their_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSKIT_WEBHOOK_URL", "https://hooks.example/x")  # named by an env: reference
    monkeypatch.setenv("OPSKIT_TARGETS_APP_PASSWORD_FILE", "/run/secrets/pw")
    monkeypatch.setenv("OPSKIT_VERB", "backup")  # the run context opskit gives its hooks
    config = parse_config(BASE + '[notify]\nwebhooks = ["env:OPSKIT_WEBHOOK_URL"]\n')
    password = config.target("app").password
    assert password is not None and password.reference == "file:/run/secrets/pw"
    with pytest.raises(ConfigError) as caught:
        monkeypatch.setenv("OPSKIT_COMPRESSION_LEVEL_FILE", "/run/secrets/level")  # only secrets have _FILE
        parse_config(BASE)
    assert caught.value.problems[0].startswith("At 'OPSKIT_COMPRESSION_LEVEL_FILE'")


def test_a_container_with_only_environment_takes_a_backup(tmp_path: Path, pg_database: str) -> None:
    env = cli_env(
        {
            "OPSKIT_TARGETS_APP_DSN": dsn_for(pg_database),
            "OPSKIT_STORAGES_BACKUPS_URL": f"file://{tmp_path / 'backups'}",
            "OPSKIT_TOOLS_STATE_DIR": str(tmp_path / "state"),
        }
    )
    workdir = tmp_path / "work"  # no opskit.toml here, no --config, no OPSKIT_CONFIG
    workdir.mkdir()
    run = [sys.executable, "-m", "opskit"]
    taken = subprocess.run([*run, "backup", "now", "--json"], capture_output=True, text=True, env=env, cwd=workdir)
    assert taken.returncode == 0, taken.stderr
    manifest = json.loads(taken.stdout)
    assert manifest["target"] == "app"
    assert (tmp_path / "backups" / "app" / manifest["id"] / "manifest.json").is_file()
    typo = subprocess.run(
        [*run, "backup", "list"], capture_output=True, text=True, env=env | {"OPSKIT_TARGET_APP_DSN": "x"}, cwd=workdir
    )
    assert typo.returncode == 2
    assert "OPSKIT_TARGET_APP_DSN" in typo.stderr.splitlines()[-1]
