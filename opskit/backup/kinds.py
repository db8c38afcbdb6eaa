"""The ``backup`` action: a logical backup (pg_dump) or, with ``kind = "base"``, a base backup (pg_basebackup).

A job file chooses the kind in its ``[args]`` (``kind = "base"``); the CLI with
``opskit backup now --kind base``. Both kinds land in the same catalog under the same lock
protocol, so listing, retention, verify and status handle them alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opskit.backup import backup, base
from opskit.backup.backup import BackupResult
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
) -> BackupResult:
    """Take one backup of ``kind`` (``logical`` or ``base``) of ``target`` and return it once committed.

    Raises ConfigError (2) for an unknown kind, else whatever that kind's run raises.
    """
    if kind == "logical":
        return backup.run(ctx, target=target, labels=labels, extra=extra)
    if kind == "base":
        return base.run(ctx, target=target, labels=labels, extra=extra)
    raise ConfigError(f"backup kind '{kind}' is not one of {', '.join(KINDS)}")


def run_all(
    ctx: AppContext, labels: Sequence[str] = (), kind: str = "logical"
) -> tuple[list[BackupResult], dict[str, OpskitError]]:
    """Back up every target ``--all`` covers with ``kind``; return (results, errors by target)."""
    if kind == "logical":
        return backup.run_all(ctx, labels)
    results: list[BackupResult] = []
    errors: dict[str, OpskitError] = {}
    names = backup.backup_targets(ctx)
    if not names:
        raise ConfigError("no targets to back up")
    for name in names:
        try:
            results.append(run(ctx, target=name, labels=labels, kind=kind))
        except OpskitError as exc:
            log.error("backup failed", target=name, error=exc.one_line())
            errors[name] = exc
    return results, errors
