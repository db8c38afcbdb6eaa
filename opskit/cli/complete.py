"""Dynamic shell completion: configured target names after ``--target``/``-t``, backup ids after
a ``BACKUP_ID`` argument (``restore``, ``backup verify/pin/unpin``, ...).

click drives it (https://click.palletsprojects.com/en/stable/shell-completion/):
``eval "$(_OPSKIT_COMPLETE=bash_source opskit)"`` (``zsh_source``, ``fish_source``). The group
attaches these functions to every command it loads (:func:`attach`), so a verb module needs no
completion code. Completion never prints an error: a missing config or an unreachable storage
just completes nothing.
"""

from __future__ import annotations

from typing import Any

import click
from click.shell_completion import CompletionItem

# Options and arguments completed, by click parameter name.
TARGET_PARAMS = {"target"}
BACKUP_ID_PARAMS = {"backup_id"}


def _config(ctx: click.Context) -> Any:
    """Return the loaded config for the command line being completed, or None when it cannot load."""
    from opskit.config.load import load_config

    root = ctx.find_root()
    try:
        return load_config(root.params.get("config_path"))
    except Exception:  # completion must never print a traceback into the user's shell
        return None


def complete_target(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Return the configured target names starting with ``incomplete``."""
    config = _config(ctx)
    if config is None:
        return []
    return [CompletionItem(name) for name in sorted(config.targets) if name.startswith(incomplete)]


def complete_backup_id(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Return ``latest`` and the ids of the target's backups on its primary storage, newest first."""
    config = _config(ctx)
    if config is None:
        return []
    candidates = ["latest"]
    try:
        from opskit.catalog.repository import list_backups
        from opskit.context import AppContext

        app = AppContext(config=config)
        target = app.target(ctx.params.get("target"))
        backups = list_backups(app.storage(target.storages[0]), target.name)
        candidates += [manifest.id for manifest in sorted(backups, key=lambda m: m.id, reverse=True)]
    except Exception:  # several targets and no --target yet, a storage down: complete "latest" only
        pass
    return [CompletionItem(value) for value in candidates if value.startswith(incomplete)]


def attach(command: click.Command) -> click.Command:
    """Give ``command`` (and its subcommands) target and backup-id completion where not already set; return it."""
    for param in command.params:
        if getattr(param, "_custom_shell_complete", None) is not None:
            continue
        if param.name in TARGET_PARAMS:
            param._custom_shell_complete = complete_target
        elif param.name in BACKUP_ID_PARAMS:
            param._custom_shell_complete = complete_backup_id
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            attach(sub)
    return command
