"""The ``[hooks]`` table: what it accepts, and one clear error for what it does not."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from opskit.config.load import load_config, parse_config
from opskit.core.errors import ConfigError

BASE = '[storages.local]\nurl = "file:///tmp/opskit-unit-never-written"\n[targets.app]\ndsn = "dbname=app"\n'
REPO = Path(__file__).resolve().parents[2]


def test_the_example_config_has_a_hook_of_each_moment() -> None:
    hooks = load_config(REPO / "config.example.toml").hooks
    assert hooks is not None
    assert [h.when for h in hooks.hooks] == ["before", "after", "on_error"]
    assert hooks.for_run("before", "backup")[0].command[0] == "/usr/local/bin/app-quiesce"
    assert hooks.for_run("before", "prune") == []
    assert hooks.for_run("on_error", "prune")[0].timeout == timedelta(seconds=30)
    assert hooks.for_run("after", "backup")[0].on_failure == "warn"


def test_the_section_defaults_apply_to_each_hook() -> None:
    config = parse_config(BASE + '[hooks]\ntimeout = "1m"\non_failure = "warn"\n[[hooks.after]]\nsql = "SELECT 1"\n')
    assert config.hooks is not None
    (hook,) = config.hooks.hooks
    assert hook.timeout == timedelta(minutes=1) and hook.on_failure == "warn" and hook.verbs == ()


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('[[hooks.before]]\ncommand = ["x"]\nsql = "SELECT 1"\n', "At 'hooks.before[0]': give exactly one of"),
        ("[[hooks.after]]\nverbs = []\n", "At 'hooks.after[0]': give exactly one of"),
        ('[[hooks.on_error]]\ncommand = ["x"]\non_failure = "ignore"\n', "At 'hooks.on_error[0].on_failure'"),
        ('[[hooks.before]]\ncommand = ["x"]\ntarget = "app"\n', "At 'hooks.before[0].target': only an 'sql'"),
        ('[[hooks.before]]\ncommand = "x"\n', "At 'hooks.before[0].command': must be a list"),
        ('[[hooks.before]]\ncommnd = ["x"]\n', "At 'hooks.before[0].commnd': unknown key"),
        ('[hooks]\nafter_backup = ["x"]\n', "At 'hooks.after_backup': unknown key"),
    ],
)
def test_a_wrong_hook_is_one_error_naming_its_path(table: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + table)
    assert any(line.startswith(problem) for line in caught.value.problems), caught.value.problems
