"""The one table of opskit's actions: a name, the function ``run(ctx, ...)`` that does it, and who may call it.

The daemon's jobs and runbook steps find every verb here, so "add a verb" means one row in
:data:`ACTIONS`, one feature module and one thin CLI module. Each row says what its consumers
need beyond the callable:

- ``function``: the module's callable when it is not ``run`` (``backup/pin.py`` holds pin and unpin);
- ``cli``: the command path that runs it (``("backup", "verify")`` is ``opskit backup verify``);
  ``tests/cli/test_actions.py`` checks that every path exists and that every top-level command
  is an action's (or one of the few tool commands), so the CLI's own table cannot drift;
- ``schedulable``: a ``jobs/*.toml`` file may name it (the daemon refuses the others);
- ``step_summary``: a runbook ``opskit`` step may call it (``action = "..."``), and this
  ``"module:function"`` turns its result into the step's output text;
- ``step_args``: a runbook step's argument names that differ from ``run()``'s keywords
  (the step format predates some verbs' names and stays as written in ``runbooks/*.toml``).

Modules are named, not imported: a backup started from cron pays for no migration code, and
this table sits below every layer that uses it (cli, daemon, runbooks) without importing the
features it names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from opskit.core.errors import ConfigError

# The signature varies per action (keyword arguments of its run()), and so does its result.
Action = Callable[..., Any]
StepSummary = Callable[[Any], str]


@dataclass(frozen=True)
class ActionSpec:
    """One row of the action table (see the module docstring for what each field is for)."""

    name: str
    module: str
    function: str = "run"
    cli: tuple[str, ...] | None = None
    schedulable: bool = False
    step_summary: str | None = None
    step_args: Mapping[str, str] = field(default_factory=dict)


def _table(*specs: ActionSpec) -> dict[str, ActionSpec]:
    return {spec.name: spec for spec in specs}


# The schedulable rows come first, in the order a job's error message lists them.
ACTIONS: dict[str, ActionSpec] = _table(
    ActionSpec("backup", "opskit.backup.kinds", cli=("backup", "now"), schedulable=True),
    ActionSpec("copy", "opskit.backup.copy", cli=("copy",), schedulable=True),
    ActionSpec("prune", "opskit.ops.prune", cli=("prune",), schedulable=True),
    ActionSpec(
        "verify",
        "opskit.restore.verify",
        cli=("backup", "verify"),
        schedulable=True,
        step_summary="opskit.runbooks.summaries:verify_summary",
        step_args={"backup": "selector"},
    ),
    ActionSpec("drill", "opskit.drill.drill", cli=("drill", "restore"), schedulable=True),
    ActionSpec(
        "status",
        "opskit.ops.status",
        cli=("status",),
        schedulable=True,
        step_summary="opskit.runbooks.summaries:status_summary",
    ),
    ActionSpec("runbook", "opskit.runbooks.runbook", cli=("runbook", "run"), schedulable=True),
    ActionSpec("pin", "opskit.backup.pin", function="pin", cli=("backup", "pin")),
    ActionSpec("unpin", "opskit.backup.pin", function="unpin", cli=("backup", "unpin")),
    ActionSpec("restore", "opskit.restore.restore", cli=("restore",)),
    ActionSpec("migrate", "opskit.migrate.migrate", cli=("migrate",)),
    ActionSpec("config_check", "opskit.ops.config_check", cli=("config", "check")),
    ActionSpec("unlock", "opskit.ops.unlock", cli=("unlock",)),
    # PostgreSQL's archive_command and restore_command (point-in-time recovery).
    ActionSpec("wal-push", "opskit.wal.archive", cli=("wal", "push")),
    ActionSpec("wal-fetch", "opskit.wal.archive", function="fetch", cli=("wal", "fetch")),
    ActionSpec("wal-verify", "opskit.wal.verify", cli=("wal", "verify")),
    ActionSpec("wal-stream", "opskit.wal.stream", cli=("wal", "stream"), schedulable=True),
    # Only runbooks replay globals on their own (opskit restore does it as part of a restore).
    ActionSpec(
        "restore-globals",
        "opskit.runbooks.restore_globals",
        step_summary="opskit.runbooks.summaries:restore_globals_summary",
    ),
)


def spec(name: str) -> ActionSpec:
    """Return the row of action ``name``. Raises ConfigError naming the known actions when there is none."""
    row = ACTIONS.get(name)
    if row is None:
        raise ConfigError(f"unknown action '{name}'", hint=f"use one of: {', '.join(sorted(ACTIONS))}")
    return row


def schedulable() -> tuple[str, ...]:
    """Return the names a daemon job may use, in table order."""
    return tuple(row.name for row in ACTIONS.values() if row.schedulable)


def step_actions() -> tuple[str, ...]:
    """Return the names a runbook ``opskit`` step may call with ``action = "..."``, in table order."""
    return tuple(row.name for row in ACTIONS.values() if row.step_summary is not None)


def resolve(name: str) -> Action:
    """Return the callable of action ``name`` (its module's ``run``, unless the row names another), importing it.

    Raises ConfigError when the name is unknown or its module is not part of this build.
    """
    row = spec(name)
    run = getattr(_import(name, row.module), row.function, None)
    if not callable(run):
        raise ConfigError(f"module {row.module} has no {row.function}() function")
    action: Action = run
    return action


def call(
    action_name: str,
    ctx: Any,
    /,
    *,
    job: str | None = None,
    slot: str | None = None,
    raise_outcome: bool = False,
    function: Action | None = None,
    **kwargs: Any,
) -> Any:
    """Run action ``action_name`` with ``kwargs`` as one observed run and return its result.

    The one door both the daemon and the CLI use for a verb a job may schedule, so both send the
    same hooks, pings, notifications and run records (:mod:`opskit.ops.signals`). ``function``
    replaces the table's callable (the daemon's test doubles); ``raise_outcome`` makes a result
    that did not succeed raise its error (the daemon), else it is returned for the CLI to render.
    Raises what the action or a failing hook raised.
    """
    from opskit.ops.signals import observed  # imported on use, like every feature this table names

    action = function or resolve(action_name)
    target = kwargs.get("target")
    return observed(
        ctx,
        action_name,
        lambda: action(ctx, **kwargs),
        target=target if isinstance(target, str) else None,
        job=job,
        slot=slot,
        raise_outcome=raise_outcome,
    )


def resolve_step_summary(name: str) -> StepSummary:
    """Return the function that renders action ``name``'s result as a runbook step's output.

    Raises ConfigError when the action is unknown or runbook steps may not call it.
    """
    row = spec(name)
    if row.step_summary is None:
        raise ConfigError(
            f"action '{name}' cannot run as a runbook step", hint=f"use one of: {', '.join(sorted(step_actions()))}"
        )
    module_name, _, function_name = row.step_summary.partition(":")
    summary = getattr(_import(name, module_name), function_name, None)
    if not callable(summary):
        raise ConfigError(f"module {module_name} has no {function_name}() function")
    render: StepSummary = summary
    return render


def _import(name: str, module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ConfigError(
            f"action '{name}' is not available in this opskit build", hint="upgrade opskit or drop the job"
        ) from exc
