"""The configuration model: defaults, validation with paths, unknown keys, the shipped example."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest

from opskit.config.load import default_config, load_config, parse_config
from opskit.config.wal import WalSettings
from opskit.core.errors import ConfigError
from tests.servers import REPO_ROOT

REPO = REPO_ROOT


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as failure:
        parse_config(text)
    return list(failure.value.problems)


def test_the_shipped_example_config_loads_and_uses_every_section() -> None:
    config = load_config(REPO / "config.example.toml")

    assert config.objectives.rpo == timedelta(hours=1)
    assert config.objectives.rto == timedelta(hours=4)
    assert set(config.targets) >= {"app", "staging"}
    assert config.targets["app"].staging == "staging"
    assert config.targets["app"].protected
    assert {s.kind for s in config.storages.values()} >= {"file", "s3", "gs", "az"}
    assert set(config.retention) == {"gfs"}
    for section in ("migrations", "notify", "daemon", "drill"):
        assert getattr(config, section) is not None, section


def test_the_example_wal_section_names_every_key_at_its_default() -> None:
    config = load_config(REPO / "config.example.toml")
    section = (REPO / "config.example.toml").read_text().split("\n[wal]\n", 1)[1].split("\n[", 1)[0]
    keys = {line.split("=", 1)[0].strip() for line in section.splitlines() if "=" in line and not line.startswith("#")}

    assert config.wal == WalSettings()
    assert keys == {field.name for field in dataclasses.fields(WalSettings)}


def test_wal_partial_bytes_is_zero_for_off_or_at_least_64_kib() -> None:
    assert parse_config('[wal]\npartial_bytes = "0"\n').wal == WalSettings(partial_bytes=0)
    assert parse_config('[wal]\npartial_bytes = "1MiB"\n').wal == WalSettings(partial_bytes=1024**2)
    assert problems_of('[wal]\npartial_bytes = "1KiB"\n') == [
        "At 'wal.partial_bytes': must be \"0\" (off) or at least 64KiB"
    ]


def test_with_no_config_at_all_there_is_a_default_target_and_a_local_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPSKIT_CONFIG", raising=False)

    config = load_config(None)

    assert config == default_config()
    assert config.targets["default"].dsn == ""  # libpq's environment fills it in
    assert config.storages["local"].url == "file://./opskit-backups"


def test_opskit_config_environment_variable_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "elsewhere.toml"
    path.write_text('[targets.db]\ndsn = "dbname=x"\n')
    monkeypatch.setenv("OPSKIT_CONFIG", str(path))

    assert list(load_config(None).targets) == ["db"]


def test_a_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_every_problem_is_reported_at_once_with_its_path() -> None:
    problems = problems_of("""
[objectives]
rpo = "soon"
[targets.app]
dsn = 5
storages = ["missing"]
colour = "blue"
[storages.local]
url = "ftp://x"
[compression]
level = 40
""")

    assert "At 'objectives.rpo': 'soon' is not a duration (use e.g. 90m, 1h30m, 30d, 2w)" in problems
    assert "At 'targets.app.dsn': must be a string, not an integer" in problems
    assert any(p.startswith("At 'targets.app.storages': names storage 'missing'") for p in problems)
    assert "At 'targets.app.colour': unknown key" in problems
    assert any(p.startswith("At 'storages.local.url': unknown scheme") for p in problems)
    assert "At 'compression.level': must be at most 19, not 40" in problems


def test_unknown_top_level_sections_are_errors() -> None:
    assert "At 'targetz': unknown key" in problems_of('[targetz.app]\ndsn = ""\n')


def test_storage_options_belong_to_their_backend() -> None:
    problems = problems_of('[storages.disk]\nurl = "file:///x"\nregion = "eu-west-1"\n')

    assert problems == ["At 'storages.disk.region': unknown key"]


def test_secret_options_are_references_and_never_resolved_while_loading() -> None:
    config = parse_config("""
[storages.s3]
url = "s3://bucket/prefix"
secret_access_key = "env:SURELY_NOT_SET_ANYWHERE"
[targets.app]
dsn = "dbname=app"
password = "file:/run/secrets/nope"
""")

    assert config.targets["app"].password is not None
    assert config.targets["app"].password.reference == "file:/run/secrets/nope"
    assert repr(config.storages["s3"].options["secret_access_key"]) == "SecretRef('env:SURELY_NOT_SET_ANYWHERE')"


def test_a_staging_target_must_exist_and_differ_from_the_target() -> None:
    problems = problems_of('[targets.app]\ndsn = ""\nstaging = "app"\n[targets.b]\ndsn = ""\nstaging = "nope"\n')

    assert "At 'targets.app.staging': cannot be the target itself" in problems
    assert "At 'targets.b.staging': names target 'nope', which is not configured" in problems


def test_encryption_recipients_must_be_public_keys() -> None:
    problems = problems_of('[encryption]\nrecipients = ["AGE-SECRET-KEY-1XYZ"]\n')

    assert problems[0].startswith("At 'encryption.recipients[0]': must be an age public key")


def test_invalid_toml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config("[targets\n")
