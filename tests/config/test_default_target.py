"""Which target a command means without -t, and a backup list that names every storage holding a backup."""

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

STORAGE = '[storages.local]\nurl = "file:///tmp/opskit-unit-never-written"\n'


def test_the_only_target_that_is_not_a_staging_target_is_the_default() -> None:
    config = parse_config(STORAGE + '[targets.app]\nstaging = "stage"\n[targets.stage]\ndsn = "dbname=s"\n')
    assert config.target(None).name == "app"


def test_two_protected_targets_need_a_choice_or_a_default_target() -> None:
    two = STORAGE + '[targets.a]\ndsn = "dbname=a"\n[targets.b]\ndsn = "dbname=b"\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(two).target(None)
    assert "pass -t/--target with one of: a, b, or set default_target" in caught.value.one_line()
    assert parse_config('default_target = "b"\n' + two).target(None).name == "b"


def test_a_default_target_that_is_not_configured_is_an_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config('default_target = "nope"\n' + STORAGE + '[targets.a]\ndsn = "dbname=a"\n')
    assert caught.value.problems == [
        "At 'default_target': names target 'nope', which is not configured under [targets]"
    ]


def test_backup_list_names_every_storage_that_holds_a_backup(tmp_path: Path, pg_database: str) -> None:
    config = tmp_path / "opskit.toml"
    config.write_text(
        f'[tools]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[storages.local]\nurl = "file://{tmp_path / "local"}"\n'
        f'[storages.offsite]\nurl = "file://{tmp_path / "offsite"}"\n'
        f'[targets.app]\ndsn = "{dsn_for(pg_database)}"\nstorages = ["local", "offsite"]\nstaging = "stage"\n'
        f'[targets.stage]\ndsn = "{dsn_for(pg_database)}_stage"\nstorages = ["local"]\n'
    )

    def opskit(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "opskit", "--config", str(config), *args]
        return subprocess.run(argv, capture_output=True, text=True, env=cli_env(), cwd=tmp_path)

    taken = opskit("backup", "now", "--json")  # no -t: the one target that is not a staging target
    assert taken.returncode == 0, taken.stderr
    backup_id = json.loads(taken.stdout)["id"]
    (tmp_path / "offsite" / "app" / backup_id / "manifest.json").unlink()  # the offsite copy is gone
    second = opskit("backup", "now", "-t", "app", "--json")
    assert second.returncode == 0, second.stderr
    listed = json.loads(opskit("backup", "list", "-t", "app", "--json").stdout)
    assert [entry["storages"] for entry in listed] == [["local", "offsite"], ["local"]]
    table = opskit("backup", "list").stdout.splitlines()
    assert table[0].split()[-2:] == ["STORAGE", "LABELS"]  # then a rule, then the newest backup
    assert "local,offsite" in table[2] and backup_id in table[3] and "offsite" not in table[3]
