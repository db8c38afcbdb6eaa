"""``opskit drill restore``: prove a backup restores, and measure RPO and RTO (docs/operations.md §3).

A drill picks a backup (latest, ``--random``, ``--backup ID`` or the newest before a time),
checks it before restoring (manifest, object size against the target's recent backups,
stored sha256, decryption, ``pg_restore --list``, pg_restore's version), restores it into
a fresh database on the staging target with pg_restore carrying on past errors (any error
not on ``[drill] allowed_restore_errors`` fails the drill), compares the restored database
with the facts the manifest took inside pg_dump's own snapshot, runs the smoke queries in
``runbooks/checks/*.sql``, drops the staging database (unless kept), and writes a report.

Phases timed, and what the measured RTO adds up: ``fetch`` (stream and hash the stored
object), ``decrypt`` (decrypt, decompress, check the plain hash, read the TOC), ``restore``
(pg_restore) and ``verify`` (the checks afterwards). Estimated RTO = measured + the
configured allowances. Only a restore that finished measures an RTO: a drill stopped before
or during the restore reports it as not measured (never as met). The data-loss window is
drill start - the backup's recovery point.

Reports go next to the backups, ``<target>/drills/<drill_id>.json|.md|.html``, and to
``--report-dir``. The verdict is also recorded as a verification of the backup (kind
``drill``), so retention keeps the newest backup that passed one (:mod:`opskit.drill.finish`).
``pitr=True`` runs a point-in-time drill instead (:mod:`opskit.drill.pitr`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import psycopg

from opskit import catalog
from opskit.backup import server as server_backup
from opskit.catalog import Check, Manifest
from opskit.config.drill import DrillSettings
from opskit.config.model import TargetConfig
from opskit.context import AppContext
from opskit.core.errors import ConfigError, ManifestError, OpskitError, UnreachableError
from opskit.core.log import get_logger
from opskit.drill import finish
from opskit.drill.checks import PreCheckContext, run_post_checks, run_pre_checks
from opskit.drill.result import FAIL, PASS, REPORT_FORMAT, DrillReport
from opskit.drill.timing import PhaseClock
from opskit.pg import connection, databases
from opskit.plan import timeline
from opskit.restore.reader import BackupReader, OpenedBackup
from opskit.restore.restore import restore_to_new_database
from opskit.storage.base import Storage

__all__ = [
    "FAIL",
    "PASS",
    "REPORT_FORMAT",
    "BeforeChecks",
    "DrillReport",
    "run",
    "staging_database_name",
]

log = get_logger(__name__)

# (staging target, staging database) -> None; tests use it to damage the restored data.
BeforeChecks = Callable[[TargetConfig, str], None]


# --------------------------------------------------------------------------- the action


def run(
    ctx: AppContext,
    target: str | None = None,
    backup: str | None = None,
    random_pick: bool = False,
    staging: str | None = None,
    keep: bool = False,
    report_dir: str | Path | None = None,
    trigger: str = "manual",
    before: datetime | None = None,
    database: str | None = None,
    before_checks: BeforeChecks | None = None,
    pitr: bool = False,
    to_time: datetime | None = None,
    random_time: bool = False,
    scratch_dir: str | Path | None = None,
    opskit_command: str | None = None,
) -> DrillReport:
    """Run one restore drill of ``target`` and return its report (stored before returning).

    With ``pitr`` it is a point-in-time drill (:mod:`opskit.drill.pitr`: a base backup and the
    WAL archive recovered to ``to_time``, a ``random_time`` in the window, or the archive's
    end, on a scratch server under ``scratch_dir``); the logical options do not apply to it.

    ``backup`` names a backup (id or prefix); ``random_pick`` picks any complete one;
    ``before`` picks the newest whose recovery point is earlier; otherwise the latest.
    ``database`` names the staging database (default ``opskit_drill_<target>_<id>``).
    Failed checks and breached objectives are in the report (``report.raise_for_verdict()``
    turns them into exit 5 / 6). Raises ConfigError (2) when no staging target is configured
    or no backup matches, UnreachableError (3) when staging or the storage cannot be reached,
    or the staging role may not create the staging database (no CREATEDB).
    """
    if pitr:
        from opskit.drill import pitr as pitr_drill  # a logical drill pays for none of it

        return pitr_drill.run(
            ctx,
            target=target,
            to_time=to_time,
            random_time=random_time,
            keep=keep,
            report_dir=report_dir,
            trigger=trigger,
            scratch_dir=scratch_dir,
            opskit_command=opskit_command,
        )
    if to_time is not None or random_time:
        raise ConfigError("--to-time and --random-time need --pitr", hint="add --pitr, or use --before / --random")
    settings: DrillSettings = ctx.config.drill or DrillSettings()
    source = _source_target(ctx, target)
    staging_target = _staging_target(ctx, source, staging)
    storage_name = source.primary_storage
    store = ctx.storage(storage_name)
    started_at = ctx.clock()
    drill_id = catalog.new_backup_id(started_at)
    db_name = database or staging_database_name(source.name, drill_id)
    result = DrillReport(
        drill_id=drill_id,
        trigger=trigger,
        target=source.name,
        staging_target=staging_target.name,
        staging_database=db_name,
        started_at=started_at,
        storage=storage_name,
        rpo_target=ctx.config.objectives.rpo,
    )
    clock = PhaseClock(started_at)
    log.info("drill started", target=source.name, drill_id=drill_id, staging=staging_target.name)
    manifest, recent = _pick(ctx, store, source.name, backup, random_pick, before, result)
    if manifest is not None:
        result.manifest = manifest
        backup_reader = BackupReader(ctx, store, staging_target.pg_bin_dir or ctx.config.tools.pg_bin_dir)
        pre = PreCheckContext(
            backup_reader.open(manifest), recent, clock, result.phases, settings=settings, warnings=result.warnings
        )
        if run_pre_checks(pre, result.checks):
            restored = _restore(
                ctx, manifest, storage_name, staging_target, db_name, settings, result, clock, pre.backup
            )
            if restored:
                result.restored = True
                try:
                    if before_checks is not None:
                        before_checks(staging_target, db_name)
                    with (
                        clock.phase(result.phases, "verify"),
                        connection.connect(staging_target, dbname=db_name, application_name="opskit drill") as conn,
                    ):
                        run_post_checks(ctx, settings, manifest, conn, result.checks)
                except BaseException:
                    # Interrupted (SIGINT/SIGTERM) or the staging database stopped answering while
                    # it was checked: the error goes up with no verdict, but the database this drill
                    # created must not outlive it (the next drill would never find it).
                    _drop_after_error(staging_target, db_name, keep)
                    raise
                _cleanup(staging_target, db_name, keep, settings, result)
            else:
                result.cleanup = {
                    "action": "none",
                    "reason": "the restore failed; opskit dropped what it created",
                }
        else:
            result.cleanup = {
                "action": "none",
                "reason": "nothing was restored (a check before restoring failed)",
            }
    else:
        result.cleanup = {"action": "none", "reason": "no backup was restored"}
    finish.finish(ctx, store, result, clock, report_dir or settings.report_dir)
    return result


def staging_database_name(target: str, drill_id: str) -> str:
    """Return ``opskit_drill_<target>_<drill id>``, lower-cased, within PostgreSQL's 63-byte limit."""
    suffix = "_" + re.sub(r"[^a-z0-9]", "_", drill_id.lower())
    base = "opskit_drill_" + re.sub(r"[^a-z0-9]", "_", target.lower())
    return base[: 63 - len(suffix)] + suffix


def _source_target(ctx: AppContext, target: str | None) -> TargetConfig:
    """Return the named target; with none named, the only target that is not a staging target.

    A server target drills one database: a random one of the derived targets its storages hold
    (``--target app.orders`` chooses), so repeated drills cover every database over time.
    Raises ConfigError (2) for an unknown name or a server target without any backup.
    """
    if target is None:
        staging = {t.staging for t in ctx.config.targets.values() if t.staging}
        candidates = [name for name in ctx.config.targets if name not in staging]
        if len(candidates) == 1:
            target = candidates[0]
    chosen = ctx.target(target)
    if not chosen.is_server:
        return chosen
    derived = [t for t in server_backup.covered_targets(ctx, chosen) if not t.is_server]
    if not derived:
        raise ConfigError(
            f"server target '{chosen.name}' has no database backups to drill",
            hint=f"run 'opskit backup now --target {chosen.name}' first",
        )
    pick = random.choice(derived)  # which database to drill, not a secret: random is enough
    log.info("drill picked a database", target=chosen.name, database=pick.database)
    return pick


def _staging_target(ctx: AppContext, source: TargetConfig, staging: str | None) -> TargetConfig:
    name = staging or source.staging
    if not name:
        raise ConfigError(
            f"target '{source.name}' has no staging target to restore drills into",
            hint=f"set targets.{source.name}.staging to a target name, or pass --staging",
        )
    if name == source.name:
        raise ConfigError("a drill cannot restore into the target it tests", hint="pass another --staging")
    return ctx.target(name)


# --------------------------------------------------------------------------- picking and pre-restore checks


def _pick(
    ctx: AppContext,
    store: Storage,
    target: str,
    backup: str | None,
    random_pick: bool,
    before: datetime | None,
    result: DrillReport,
) -> tuple[Manifest | None, list[Manifest]]:
    """Return (the chosen backup or None when its manifest is unreadable, every readable backup).

    Raises ConfigError when no backup matches, or when ``before`` lies in the future (beyond
    the clock-skew allowance of :mod:`opskit.plan.timeline`).
    """
    bad: list[catalog.BadManifest] = []
    backups = catalog.list_backups(store, target, bad=bad)
    manifest: Manifest | None
    if backup is not None:
        try:
            manifest = catalog.find_backup(store, target, backup, now=ctx.clock())
        except ManifestError as exc:
            result.checks.append(Check("pre", "manifest readable", "a valid manifest", exc.message, False))
            return None, backups
    elif before is not None:
        now = ctx.clock()
        if timeline.is_future(before, now):
            # A moment that has not come yet is a mistyped one (a year, a time zone): "the newest
            # backup before it" would be one taken after the real incident, holding its damage.
            raise ConfigError(
                f"--before {catalog.format_time(before)} is in the future (it is now {catalog.format_time(now)})",
                hint="give the moment the incident began, in UTC (check the year and the time zone)",
            )
        earlier = timeline.present([m for m in backups if m.snapshot_time < before], now)
        if not earlier:
            raise ConfigError(
                f"target '{target}' has no backup taken before {catalog.format_time(before)} in storage '{store.name}'",
                hint="pick a later time, or look at 'opskit backup list'",
            )
        manifest = earlier[0]
    elif not backups:
        detail = f"; {len(bad)} unreadable manifest(s): {bad[0].error}" if bad else ""
        raise ConfigError(
            f"target '{target}' has no complete backup in storage '{store.name}' to drill{detail}",
            hint="take one with 'opskit backup now'",
        )
    else:
        # Never a future-dated backup (a host with a wrong clock): its age is unknown.
        present = timeline.present(backups, ctx.clock())
        if not present:
            raise ConfigError(
                f"target '{target}' has only future-dated backups in storage '{store.name}' to drill",
                hint="fix the clock of the host that took them, then take a backup with 'opskit backup now'",
            )
        manifest = random.choice(present) if random_pick else present[0]
    result.checks.append(
        Check(
            "pre",
            "manifest readable",
            f"format_version {catalog.FORMAT_VERSION}",
            f"format_version {manifest.format_version}, {len(manifest.tables)} tables",
            True,
        )
    )
    return manifest, backups


# --------------------------------------------------------------------------- restore and post-restore checks


def _restore(
    ctx: AppContext,
    manifest: Manifest,
    storage_name: str,
    staging: TargetConfig,
    database: str,
    settings: DrillSettings,
    result: DrillReport,
    clock: PhaseClock,
    backup: OpenedBackup,
) -> bool:
    """Restore into a fresh staging database; return True when there is a database to check.

    A failed restore is a failed check (False). Raises ConfigError when the staging database
    exists already, and any error with exit code 3 (staging or the storage unreachable or
    refusing the credentials), including UnreachableError when the staging role may not create
    the database (no CREATEDB): the drill could not run, which is no verdict on the backup.
    """
    with clock.phase(result.phases, "restore") as timing:
        try:
            restored = restore_to_new_database(
                ctx,
                manifest,
                storage_name,
                staging,
                database,
                jobs=settings.jobs,
                exit_on_error=False,
                no_owner=settings.no_owner,
                backup=backup,
            )
        except ConfigError:
            raise  # the staging database exists already: the operator must decide, not the drill
        except OpskitError as exc:
            if exc.exit_code == UnreachableError.exit_code:
                # Staging (or the storage) cannot be reached or refuses the credentials: the drill
                # could not run, which says nothing about the backup. Exit 3, and no "fail" verdict
                # recorded against a backup that was never tried.
                raise
            if isinstance(exc.__cause__, psycopg.errors.InsufficientPrivilege):
                # CREATE DATABASE refused (pg/databases.py raises RestoreFailed from it): the staging
                # role lacks CREATEDB, so not one byte of the backup reached pg_restore. The staging
                # server refuses us, like one refusing the credentials: exit 3, no verdict.
                reason = exc.__cause__.diag.message_primary or str(exc.__cause__)
                raise UnreachableError(
                    f"staging target '{staging.name}' refused to create the drill's database '{database}': {reason}",
                    hint="the staging role needs CREATEDB (ALTER ROLE ... CREATEDB) or to be a superuser; "
                    "the backup was not tried, so no verdict was recorded",
                ) from exc
            result.checks.append(Check("restore", "pg_restore completes", "exit 0", exc.message, False))
            return False
        timing.bytes = restored.bytes_restored
    patterns = [re.compile(p) for p in settings.allowed_restore_errors]
    for line in restored.pg_restore_errors:
        (result.allowed_errors if any(p.search(line) for p in patterns) else result.unexpected_errors).append(line)
    result.checks.append(
        Check(
            "restore",
            "pg_restore errors outside the allow-list",
            [],
            result.unexpected_errors,
            not result.unexpected_errors,
        )
    )
    return True


def _drop_after_error(staging: TargetConfig, database: str, keep: bool) -> None:
    """Drop the staging database of a drill stopped after its restore, unless ``--keep``; never raises.

    The error that stopped the drill is the one the operator must see, so a failing drop is
    logged (with the statement to run by hand) instead of replacing it.
    """
    if keep:
        log.warning("drill stopped after the restore; the staging database is kept (--keep)", database=database)
        return
    try:
        databases.drop_database(staging, database)
    except (OpskitError, psycopg.Error) as exc:
        log.error(
            "drill stopped after the restore and its staging database could not be dropped",
            database=database,
            error=exc.message if isinstance(exc, OpskitError) else str(exc),
            drop=f'DROP DATABASE "{database}" WITH (FORCE)',
        )
        return
    log.warning("drill stopped after the restore; dropped its staging database", database=database)


def _cleanup(staging: TargetConfig, database: str, keep: bool, settings: DrillSettings, result: DrillReport) -> None:
    """Drop the staging database unless kept; record what happened."""
    failed = not result.passed
    if keep or (failed and settings.keep_on_failure):
        reason = "--keep" if keep else "keep_on_failure: a check failed"
        result.cleanup = {"action": "kept", "database": database, "reason": reason}
        return
    try:
        databases.drop_database(staging, database)
        result.cleanup = {"action": "dropped", "database": database}
    except (OpskitError, psycopg.Error) as exc:
        message = exc.message if isinstance(exc, OpskitError) else str(exc)
        result.cleanup = {"action": "drop failed", "database": database, "error": message}
        result.warnings.append(f"could not drop staging database '{database}': {message}")
