"""The ``restore-globals`` action: replay a backup's roles and tablespaces onto another server.

``opskit restore`` replays globals as part of a restore; a runbook that moves to a new
server does it as a step of its own, before the databases (see ``runbooks/restore-to-new-server.toml``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from psycopg.conninfo import make_conninfo

from opskit import catalog
from opskit.context import AppContext
from opskit.restore.restore import restore_globals


@dataclass(frozen=True)
class GlobalsReplay:
    """Which backup's globals went onto which target, and the error lines ``psql`` reported."""

    backup_id: str
    to: str
    errors: list[str]


def run(
    ctx: AppContext,
    target: str | None = None,
    to: str = "",
    backup: str = "latest",
    storage: str | None = None,
) -> GlobalsReplay:
    """Replay the globals of ``target``'s backup ``backup`` onto the configured target ``to``.

    Reads from ``storage`` (default: the target's primary). Returns the GlobalsReplay; raises
    ConfigError for unknown names or backups, OpskitError when the globals cannot be read.
    """
    source = ctx.target(target)
    storage_name = storage or source.primary_storage
    manifest = catalog.find_backup(ctx.storage(storage_name), source.name, backup, now=ctx.clock())
    # Roles and tablespaces are cluster-wide; the target's own database may not exist yet on a new server.
    server = ctx.target(to)
    maintenance = dataclasses.replace(server, dsn=make_conninfo(server.dsn, dbname="postgres"))
    errors = restore_globals(ctx, manifest, storage_name, maintenance)
    return GlobalsReplay(manifest.id, to, list(errors))
