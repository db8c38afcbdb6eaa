"""Small configuration mistakes get a precise answer: a directory for --config, versions written as numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from opskit.config.load import find_config_path, parse_config
from opskit.core.errors import ConfigError
from tests.config.test_migrations import build


def test_a_config_option_naming_a_directory_says_it_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        find_config_path(tmp_path)
    assert caught.value.one_line() == (
        f"config file {tmp_path} (from --config) is a directory; name the file itself, e.g. {tmp_path / 'opskit.toml'}"
    )
    result = subprocess.run(
        [sys.executable, "-m", "opskit", "--config", str(tmp_path), "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "is a directory" in result.stderr and "does not exist" not in result.stderr


def test_a_baseline_version_or_target_written_as_an_integer_is_that_version() -> None:
    settings, problems = build({"baseline_version": 3, "target": 5})
    assert problems == []
    assert settings.baseline_version == "3" and settings.target == "5"
    config = parse_config("[migrations]\nflyway_config = []\nbaseline_version = 3\n")
    assert config.migrations is not None and config.migrations.baseline_version == "3"


@pytest.mark.parametrize("value", [1.1, True])
def test_a_baseline_version_as_a_float_or_boolean_is_refused(value: object) -> None:
    _, problems = build({"baseline_version": value})
    assert len(problems) == 1 and problems[0].startswith("At 'migrations.baseline_version': must be a version")


def test_the_environment_variable_for_the_baseline_version_may_be_a_bare_number(tmp_path: Path) -> None:
    (tmp_path / "opskit.toml").write_text(
        f'[storages.local]\nurl = "file://{tmp_path}/b"\n[targets.app]\ndsn = "dbname=app"\n'
        "[migrations]\nflyway_config = []\n",
        encoding="utf-8",
    )
    show = "from opskit.config.load import load_config; print(load_config('opskit.toml').migrations.baseline_version)"
    result = subprocess.run(
        [sys.executable, "-c", show],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "OPSKIT_MIGRATIONS_BASELINE_VERSION": "3"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3"
