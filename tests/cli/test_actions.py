"""The action table and the CLI agree: every action has its command, every command is an action's or a tool's."""

from __future__ import annotations

import inspect

import click
import pytest

from opskit import actions
from opskit.cli import COMMAND_MODULES, main

# Top-level commands that are tools around the actions, not actions: they run no ``run(ctx, ...)``
# of opskit/actions.py (the daemon schedules actions, keygen writes a key, metrics prints the catalog).
TOOL_COMMANDS = {"daemon", "keygen", "metrics"}


def command_at(path: tuple[str, ...]) -> click.Command | None:
    """Return the click command at ``path`` (``("backup", "verify")``), or None when there is none."""
    context = click.Context(main)
    command: click.Command | None = main
    for name in path:
        if not isinstance(command, click.Group):
            return None
        command = command.get_command(context, name)
    return command


@pytest.mark.parametrize("name", [name for name, row in actions.ACTIONS.items() if row.cli is not None])
def test_every_action_with_a_verb_has_that_command(name: str) -> None:
    path = actions.ACTIONS[name].cli
    assert path is not None
    assert command_at(path) is not None, f"action '{name}' names the command 'opskit {' '.join(path)}'"


def test_every_top_level_command_belongs_to_an_action_or_is_a_tool() -> None:
    verbs = {row.cli[0] for row in actions.ACTIONS.values() if row.cli is not None}

    assert set(COMMAND_MODULES) == verbs | TOOL_COMMANDS
    assert not verbs & TOOL_COMMANDS


def test_only_runbook_step_actions_go_without_a_command() -> None:
    without = [name for name, row in actions.ACTIONS.items() if row.cli is None]

    assert without == ["restore-globals"]
    assert set(without) <= set(actions.step_actions())


@pytest.mark.parametrize("name", list(actions.ACTIONS))
def test_every_action_resolves_to_a_run_taking_the_context_first(name: str) -> None:
    run = actions.resolve(name)

    assert next(iter(inspect.signature(run).parameters)) == "ctx"


@pytest.mark.parametrize("name", actions.step_actions())
def test_every_step_action_has_its_summary_and_renamed_arguments_exist(name: str) -> None:
    assert callable(actions.resolve_step_summary(name))
    parameters = inspect.signature(actions.resolve(name)).parameters
    for keyword in actions.ACTIONS[name].step_args.values():
        assert keyword in parameters


def test_the_daemon_schedules_the_same_actions_as_before() -> None:
    assert actions.schedulable() == ("backup", "copy", "prune", "verify", "drill", "status", "runbook", "wal-stream")


def test_an_unknown_action_or_a_non_step_action_is_a_config_error() -> None:
    from opskit.core.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown action 'explode'"):
        actions.resolve("explode")
    with pytest.raises(ConfigError, match="cannot run as a runbook step"):
        actions.resolve_step_summary("backup")
