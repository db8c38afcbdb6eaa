"""The one table of opskit's actions: a name, the module whose ``run(ctx, ...)`` does it.

The CLI, the daemon's jobs and runbooks all find a verb here, so "add a verb" means one row
in this table, one feature module and one thin CLI module. Modules are imported on first
use: a backup started from cron pays for no migration code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from opskit.core.errors import ConfigError

Action = Callable[..., Any]

# name -> the module that holds its ``run(ctx, ...)``
ACTIONS: dict[str, str] = {
    "backup": "opskit.backup.backup",
    "copy": "opskit.backup.copy",
    "verify": "opskit.backup.verify",
    "pin": "opskit.backup.pin",
    "restore": "opskit.restore.restore",
    "drill": "opskit.drill.drill",
    "migrate": "opskit.migrate.migrate",
    "runbook": "opskit.runbooks.runbook",
    "prune": "opskit.ops.prune",
    "status": "opskit.ops.status",
    "config_check": "opskit.ops.config_check",
}


def resolve(name: str) -> Action:
    """Return the ``run`` callable of action ``name``, importing its module on first use.

    Raises ConfigError when the name is unknown or its module is not part of this build.
    """
    module_name = ACTIONS.get(name)
    if module_name is None:
        raise ConfigError(f"unknown action '{name}'", hint=f"use one of: {', '.join(sorted(ACTIONS))}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ConfigError(
            f"action '{name}' is not available in this opskit build", hint="upgrade opskit or drop the job"
        ) from exc
    run = getattr(module, "run", None)
    if not callable(run):
        raise ConfigError(f"module {module_name} has no run() function")
    action: Action = run
    return action
