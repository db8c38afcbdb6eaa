"""``opskit backup now`` of a server target: every database it covers, each as its own derived target.

A server target (config/databases.py) names a server and database patterns. At run time this
module lists the server's databases (templates and databases that refuse connections left
out), selects those the patterns include and do not exclude, and backs each up with the
ordinary logical backup (:func:`opskit.backup.backup.run`) as the derived target
``<server>.<database>``: its own catalog prefix, advisory lock, repository lock and manifest,
so list, restore, verify, prune, drills and status treat it like any target.

Why every database's backup carries its own globals artifact (``pg_dumpall --globals-only``)
instead of one record per run: retention runs per database, so the one backup holding a
run's globals could be pruned while the others still need it; and a restore of one database
must be able to create the roles it owns on its own. Globals are a few KiB; the price is one
pg_dumpall per database.

One database's failure does not stop the others; the result carries every outcome and its
``raise_for_outcome`` raises the worst error (the highest exit code).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opskit import catalog
from opskit.backup import backup
from opskit.backup.backup import BackupResult
from opskit.config import databases
from opskit.config.model import TargetConfig
from opskit.context import AppContext
from opskit.core.errors import Cancelled, ConfigError, OpskitError, UnreachableError
from opskit.core.log import get_logger
from opskit.pg import connection

log = get_logger(__name__)

# Templates can be connected to but hold nothing of the operator's; datallowconn = false
# databases (template0, a database being retired) cannot be dumped at all.
_DISCOVERY_SQL = "SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn ORDER BY datname"


@dataclass
class ServerBackupResult:
    """The outcome of one server target's run: a backup or an error per derived target."""

    target: str
    databases: tuple[str, ...]
    results: dict[str, BackupResult] = field(default_factory=dict)
    errors: dict[str, OpskitError] = field(default_factory=dict)
    unmatched: tuple[str, ...] = ()

    @property
    def warnings(self) -> list[str]:
        """Return one line per include pattern that matched no database."""
        return [f"pattern '{p}' of target '{self.target}' matched no database" for p in self.unmatched]

    def raise_for_outcome(self) -> None:
        """Raise the worst database's error (the highest exit code), else a failed copy's CopyFailed (4)."""
        if self.errors:
            raise max(self.errors.values(), key=lambda error: error.exit_code)
        for result in self.results.values():
            result.raise_for_outcome()

    def to_dict(self) -> dict[str, Any]:
        """Return the run as JSON-ready data: one entry per database, in discovery order."""
        entries: list[dict[str, Any]] = []
        for database in self.databases:
            name = f"{self.target}.{database}"
            entry: dict[str, Any] = {"database": database, "target": name}
            if name in self.results:
                result = self.results[name]
                entry |= {"ok": True, "manifest": result.manifest.to_dict(), "copies": result.copies}
            elif name in self.errors:
                error = self.errors[name]
                entry |= {"ok": False, "error": error.one_line(), "exit_code": error.exit_code}
            entries.append(entry)
        return {"target": self.target, "databases": entries, "warnings": self.warnings}


def discover(target: TargetConfig) -> list[str]:
    """Return the names of the databases on ``target``'s server that can be backed up, sorted.

    Connects to the database the server target's dsn names. Raises UnreachableError (3).
    """
    with connection.connect(target, autocommit=True, application_name="opskit discovery") as conn:
        rows = conn.execute(_DISCOVERY_SQL).fetchall()
    return [str(row[0]) for row in rows]


def run(
    ctx: AppContext,
    target: TargetConfig,
    labels: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> ServerBackupResult:
    """Back up every database server target ``target`` covers; return every outcome.

    Raises UnreachableError (3) when discovery cannot connect, ConfigError (2) when the
    patterns select no database; a database's own failure is recorded, not raised.
    """
    selection = databases.select(target.databases, target.exclude_databases, discover(target))
    result = ServerBackupResult(target=target.name, databases=selection.databases, unmatched=selection.unmatched)
    for warning in result.warnings:
        log.warning(warning, target=target.name)
    if not selection.databases:
        raise ConfigError(
            f"server target '{target.name}' selects no database (databases = {list(target.databases)}, "
            f"exclude_databases = {list(target.exclude_databases)})",
            hint="check the patterns against the server's databases (templates are never included)",
        )
    for database in selection.databases:
        name = f"{target.name}.{database}"
        if ctx.cancel.is_set():
            result.errors[name] = Cancelled(f"backup of '{name}' not started: the run was cancelled")
            continue
        try:
            derived = target.derive(database)  # refuses a database whose name cannot be stored
            result.results[name] = backup.run(ctx, target=derived.name, labels=labels, extra=extra)
        except OpskitError as exc:
            log.error("backup failed", target=name, error=exc.one_line())
            result.errors[name] = exc
    log.info(
        "server backup finished",
        target=target.name,
        databases=len(selection.databases),
        failed=sorted(result.errors),
    )
    return result


def covered_targets(ctx: AppContext, target: TargetConfig, *, live: bool = False) -> list[TargetConfig]:
    """Return the targets ``target`` stands for: itself for a normal target, else its derived targets.

    The derived targets are those any of its storages holds (the catalog knows them while the
    server is down) and, with ``live``, those the server selects now (a new database without a
    backup yet). Never raises for a storage or server that does not answer (a warning each): when
    nothing answers, the server target itself is returned so the caller's row reports the failure.
    """
    if not target.is_server:
        return [target]
    names: set[str] = set()
    for storage_name in target.storages:
        try:
            names.update(catalog.derived_targets(ctx.storage(storage_name), target.name))
        except OpskitError as exc:
            log.warning("storage not listed", storage=storage_name, target=target.name, error=exc.one_line())
    if live:
        try:
            available = discover(target)
        except UnreachableError as exc:
            log.warning("databases not discovered", target=target.name, error=exc.one_line())
            available = []
        for database in databases.select(target.databases, target.exclude_databases, available).databases:
            try:
                names.add(target.derive(database).name)
            except ConfigError:
                continue  # a name that cannot be stored: the backup run reports it
    if not names:
        return [target]
    return [ctx.target(name) for name in sorted(names)]
