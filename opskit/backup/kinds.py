"""The ``backup`` action: a logical backup (pg_dump) or, with ``kind = "base"``, a base backup (pg_basebackup).

A job file chooses the kind in its ``[args]`` (``kind = "base"``); the CLI with
``opskit backup now --kind base``. Both kinds land in the same catalog under the same lock
protocol, so listing, retention, verify and status handle them alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opskit.backup import backup, base, server
from opskit.backup.backup import BackupResult
from opskit.backup.server import ServerBackupResult
from opskit.context import AppContext
from opskit.core.errors import ConfigError, OpskitError
from opskit.core.log import get_logger

log = get_logger(__name__)

KINDS = ("logical", "base")


def run(
    ctx: AppContext,
    target: str | None = None,
    labels: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
    kind: str = "logical",
) -> BackupResult | ServerBackupResult:
    """Take one backup of ``kind`` (``logical`` or ``base``) of ``target`` and return it once committed.

    A server target (``databases = [...]``) backs up each database it covers as its own derived
    target and returns every outcome (backup/server.py). Raises ConfigError (2) for an unknown
    kind or a base backup of a server target, else whatever that kind's run raises.
    """
    config = ctx.target(target)
    if config.is_server:
        if kind != "logical":
            raise ConfigError(
                f"target '{config.name}' is a server target: only logical backups are taken per database",
                hint="a base backup covers the whole cluster: configure a target without databases for it",
            )
        return server.run(ctx, config, labels=labels, extra=extra)
    if kind == "logical":
        return backup.run(ctx, target=target, labels=labels, extra=extra)
    if kind == "base":
        return base.run(ctx, target=target, labels=labels, extra=extra)
    raise ConfigError(f"backup kind '{kind}' is not one of {', '.join(KINDS)}")


def run_all(
    ctx: AppContext, labels: Sequence[str] = (), kind: str = "logical"
) -> tuple[list[BackupResult], dict[str, OpskitError]]:
    """Back up every target ``--all`` covers with ``kind``; return (results, errors by target).

    A server target contributes one result or error per database (its derived targets).
    """
    results: list[BackupResult] = []
    errors: dict[str, OpskitError] = {}
    names = backup.backup_targets(ctx)
    if not names:
        raise ConfigError("no targets to back up")
    for name in names:
        try:
            outcome = run(ctx, target=name, labels=labels, kind=kind)
            if isinstance(outcome, ServerBackupResult):
                results.extend(outcome.results.values())
                errors.update(outcome.errors)
            else:
                results.append(outcome)
        except OpskitError as exc:
            log.error("backup failed", target=name, error=exc.one_line())
            errors[name] = exc
    return results, errors
