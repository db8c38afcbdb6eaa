"""``opskit migrate``: apply Flyway migrations behind a backup, optionally rehearsed on staging.

The order of a guarded run (``--rehearse --backup-first``), all of it under the migration lock
(Flyway's advisory lock, taken on one session before planning and held to the end, so the
backup is exactly the state the run starts from and no other migrator commits in between):

1. plan: everything the run would refuse (validation, a missing target version, a mixed
   script, a missing placeholder, a non-empty schema without history, ...) is refused here,
   before any backup;
2. take a ``pre-migrate`` backup (its manifest records the schema version before); if it
   fails nothing is migrated;
3. restore that backup (or, without ``--backup-first``, the newest one, taking one if there is
   none) into a fresh database on the target's staging server, apply the pending migrations
   there, time each one, drop the database; a failure stops before production;
4. apply the migrations to the target; if one fails after this run committed something, say
   exactly which ``opskit restore`` command undoes the run, and with ``--restore-on-failure``
   run it; if the run committed nothing, say so: there is nothing to undo, and a restore would
   only throw away other sessions' writes. A non-transactional migration that failed counts as
   committed only when a statement that may write ran before the failure (the engine's
   ``partial``; docs/migrations.md, "Guarded runs").
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from opskit.catalog import Manifest
from opskit.config.migrations import MigrationSettings, settings_of
from opskit.config.model import TargetConfig
from opskit.context import AppContext
from opskit.core.errors import ConfigError, MigrationFailed, OpskitError
from opskit.core.log import get_logger
from opskit.flyway.backend import EngineBackend, MigrationBackend, backend_for
from opskit.flyway.engine import Engine
from opskit.flyway.results import Applied, BaselineReport, InfoOutcome, MigrateReport, RepairReport
from opskit.flyway.state import InfoState, sort_infos_for_display
from opskit.pg import connection, databases
from opskit.secrets.references import SecretRef

log = get_logger(__name__)
COMPAT_FLYWAY_VERSION = "13.0.0"  # the Flyway release whose behaviour the engine follows


@dataclass
class Rehearsal:
    """A rehearsal on staging: which backup, where, and each migration's duration there."""

    backup_id: str
    server: str
    database: str
    applied: list[Applied] = field(default_factory=list)


@dataclass
class MigrateOutcome:
    """What ``opskit migrate`` did, for the CLI to render."""

    target: str
    report: MigrateReport
    backup_id: str | None = None
    restore_command: str | None = None
    rehearsal: Rehearsal | None = None


class MigrateInterrupted(KeyboardInterrupt):
    """An interrupted ``opskit migrate`` (SIGINT, SIGTERM) that had committed migrations already.

    A KeyboardInterrupt, so every caller treats it as the interrupt it is (exit 130); it carries
    what the run committed before it (``committed``, in order; ``partial``, the script of a
    non-transactional migration cut off half-way) and, after ``--backup-first``, the command
    that undoes the run (``restore_command``). Raised only when something was committed: an
    interrupt before that leaves the plain KeyboardInterrupt ("nothing was committed").
    """

    def __init__(self, target: str, committed: list[Applied], partial: str | None, restore_command: str | None) -> None:
        super().__init__("interrupted after committing migrations")
        self.target = target
        self.committed = committed
        self.partial = partial
        self.restore_command = restore_command

    def lines(self) -> list[str]:
        """Return what the CLI prints: what stays committed, and how to undo it."""
        parts = []
        if self.committed:
            done = ", ".join(a.script for a in self.committed)
            versions = [a.version for a in self.committed if a.version]
            now = f" (schema now at version {versions[-1]})" if versions else ""
            parts.append(
                f"this run had committed {len(self.committed)} migration(s) to target '{self.target}': {done}{now}"
            )
        if self.partial:
            parts.append(f"{self.partial} ran outside a transaction and was cut off: its completed statements stay")
        else:
            parts.append("the migration in progress, if any, was rolled back")
        lines = ["interrupted; " + "; ".join(parts)]
        if self.restore_command:
            lines.append(f"to undo this run, restore the pre-migrate backup: {self.restore_command}")
        return lines


# --------------------------------------------------------------------------- plumbing


def settings_for(ctx: AppContext) -> MigrationSettings:
    """Return the migration settings: ``[migrations]`` if configured, else Flyway files and ``FLYWAY_*``."""
    return settings_of(ctx.config.migrations)


def resolve_target(ctx: AppContext, name: str | None, settings: MigrationSettings) -> TargetConfig:
    """Return the target to migrate; a target with no DSN takes the Flyway URL when one is configured."""
    target = ctx.target(name)
    if target.is_server:
        # Its dsn names only the database discovery connects to: migrating that one is never meant.
        raise ConfigError(
            f"target '{target.name}' is a server target (databases = [...]): migrations run on one database",
            hint=f"name the database: -t {target.name}.<database>",
        )
    if not target.dsn and settings.conninfo:
        password = SecretRef(settings.password) if settings.password else target.password
        target = replace(target, dsn=settings.conninfo, password=password)
    return target


def backend(
    ctx: AppContext, settings: MigrationSettings, on_lock_wait: Callable[[int], None] | None = None
) -> MigrationBackend:
    """Return the migration backend ``settings`` choose, with the context's clock."""
    return backend_for(settings, clock=ctx.clock, on_lock_wait=on_lock_wait)


def refusal_error(plan: MigrateReport) -> ConfigError:
    """Return the ConfigError (exit 2) for a plan holding a migration opskit refuses to run."""
    first = plan.refused[0]
    before = plan.applied.index(first)
    return ConfigError(
        f"{first.refusal}; nothing was applied (Flyway would apply the {before} migration(s) before it and fail there)",
        hint="move the non-transactional statements (CREATE INDEX CONCURRENTLY, ...) into their own "
        "migration, or set migrations.mixed = true",
    )


def restore_command(backup_id: str, target: str) -> str:
    """Return the command that puts ``target`` back to backup ``backup_id``."""
    return f"opskit restore {backup_id} --target {target} --to {target} --replace --yes"


# --------------------------------------------------------------------------- migrate


def run(
    ctx: AppContext,
    target: str | None = None,
    *,
    version_target: str | None = None,
    backup_first: bool = False,
    rehearse: bool = False,
    dry_run: bool = False,
    restore_on_failure: bool = False,
    yes: bool = False,
    on_applied: Callable[[Applied], None] | None = None,
    on_event: Callable[[str], None] | None = None,
) -> MigrateOutcome:
    """Apply the pending migrations to ``target`` and return what ran.

    ``on_applied`` is called for each migration once it is committed. Raises ConfigError (2)
    for what planning refuses (before any backup; the dry run raises the same), BackupFailed
    (4) when the pre-migrate backup fails (nothing migrated), MigrationFailed (4) when a
    migration fails on staging (production untouched) or on the target (with the restore
    command in its hint when the run had committed something), VerificationFailed (5) when
    validation fails, LockHeld (7) when another migration holds the lock, MigrateInterrupted
    (a KeyboardInterrupt) when interrupted after committing migrations.
    """
    say = on_event or (lambda _msg: None)
    settings = settings_for(ctx)
    if version_target:
        settings = settings.with_overrides(target=version_target)
    target_config = resolve_target(ctx, target, settings)
    name = target_config.name

    def waiting(attempt: int) -> None:
        if attempt == 1:
            say("waiting for the migration lock: another migration (opskit or Flyway) is running")

    runner = backend(ctx, settings, on_lock_wait=waiting)
    if not runner.supports_guarded_runs or not isinstance(runner, EngineBackend):
        if backup_first or rehearse or restore_on_failure:
            raise ConfigError(
                '--backup-first, --rehearse and --restore-on-failure need engine = "opskit"',
                hint="run 'opskit backup now' first, or set migrations.engine = \"opskit\"",
            )
        return MigrateOutcome(name, runner.migrate(target_config, dry_run=dry_run))
    if rehearse:
        staging_of(target_config)  # refused up front, before the lock, the plan and any backup
    if restore_on_failure and not yes:
        _refuse_unconfirmed_restore(ctx, target_config)

    if dry_run:
        # No lock (docs/migrations.md): the plan raises whatever the real run would refuse.
        plan = runner.migrate(target_config, dry_run=True)
        if not plan.applied:
            say("nothing to migrate: the schema is up to date")
        return MigrateOutcome(name, plan)

    guarded = Guarded(ctx, target_config, settings, backup_first, rehearse, restore_on_failure, yes, on_applied, say)
    with runner.open(target_config) as engine, engine.locked():
        return guarded.run(engine)


def _refuse_unconfirmed_restore(ctx: AppContext, target: TargetConfig) -> None:
    """Raise ConfigError (2) when --restore-on-failure would restore over a database that needs confirmation.

    The restore runs after a failure, with nobody to ask (a protected target, the server's
    ``postgres`` database): asking for --yes now, before anything is planned or backed up,
    beats a failed migration whose restore then refuses.
    """
    from opskit.restore import restore

    needed = restore.confirmation_needed(ctx, target, connection.database_of(target))
    if needed is not None:
        raise ConfigError(
            f"--restore-on-failure on target '{target.name}': {needed[1]}, and restoring over it needs confirmation",
            hint="pass --yes to consent now to the restore a failure would run",
        )


@dataclass
class Guarded:
    """One real ``opskit migrate`` run on an engine that holds the migration lock (see the module docstring)."""

    ctx: AppContext
    target: TargetConfig
    settings: MigrationSettings
    backup_first: bool
    rehearse: bool
    restore_on_failure: bool
    yes: bool
    on_applied: Callable[[Applied], None] | None
    say: Callable[[str], None]

    def run(self, engine: Engine) -> MigrateOutcome:
        """Plan, back up, rehearse, apply; return what ran. Raises as :func:`run` says."""
        name = self.target.name
        plan = engine.plan()
        if plan.refused:
            # Flyway would apply the migrations before the refused one and fail there; opskit applies
            # none, before any backup is taken (docs/migrations.md, "Choices where opskit differs").
            raise refusal_error(plan)
        if not plan.applied:
            self.say("nothing to migrate: the schema is up to date")
            # Run anyway, without a backup: Flyway fires beforeMigrate/afterMigrate callbacks when
            # nothing is pending too, and teams rely on that to refresh grants on every deploy.
            return MigrateOutcome(name, self._apply(engine, MigrateOutcome(name, plan)))

        outcome = MigrateOutcome(name, plan)
        manifest = None
        if self.backup_first:
            from opskit.backup import backup

            self.say(f"taking a pre-migrate backup of target '{name}'")
            result = backup.run(
                self.ctx, target=name, labels=("pre-migrate",), extra={"schema_version_before": plan.initial_version}
            )
            manifest = result.manifest
            outcome.backup_id = manifest.id
            outcome.restore_command = restore_command(manifest.id, name)
            self.say(f"backup {manifest.id} committed; to undo this migration: {outcome.restore_command}")
        if self.rehearse:
            outcome.rehearsal = rehearse_on_staging(self.ctx, self.target, self.settings, manifest, say=self.say)
        try:
            outcome.report = self._apply(engine, outcome)
        except OpskitError as exc:
            self._after_failure(exc, outcome, engine)
            raise
        return outcome

    def _apply(self, engine: Engine, outcome: MigrateOutcome) -> MigrateReport:
        """Return the engine's migrate report; an interrupt after a commit becomes MigrateInterrupted."""
        try:
            return engine.migrate(on_applied=self.on_applied)
        except KeyboardInterrupt as exc:
            if engine.committed or engine.partial:
                raise MigrateInterrupted(
                    outcome.target, list(engine.committed), engine.partial, outcome.restore_command
                ) from exc
            raise

    def _after_failure(self, exc: OpskitError, outcome: MigrateOutcome, engine: Engine) -> None:
        """Tell the truth about what the failed run left, and restore only what it changed.

        A run that committed nothing (its one migration rolled back, a failing callback, a failed
        row it stopped at, a non-transactional migration that failed after read-only statements
        only, leaving just its failed row) leaves the database as it found it, plus whatever other
        sessions wrote meanwhile: restoring the backup would throw those writes away, so it is not
        restored and no undo command is offered.
        """
        committed = [a.script for a in engine.committed]
        if engine.partial and engine.partial not in committed:
            committed.append(engine.partial)
        fix = exc.hint or "fix the migration and run migrate again"
        failed = exc if isinstance(exc, MigrationFailed) else None  # the one kind that carries the command
        if not committed:
            if failed is not None:
                failed.restore_command = None
            if outcome.backup_id is None:
                return
            what = (
                f"backup {outcome.backup_id} was not restored (no restore was needed)"
                if self.restore_on_failure
                else "there is nothing to undo"
            )
            found = "the database is as the run found it"
            if engine.failed_unchanged:
                # Its failed row stays (Flyway writes one too): repair removes it, a restore is not needed for it.
                found = f"{found} (but for the failed history row of {engine.failed_unchanged})"
            exc.hint = f"nothing of this run was committed, so {found} and {what}; {fix}"
            return
        done = f"this run had committed {', '.join(committed)} before the failure"
        if failed is not None:
            failed.restore_command = outcome.restore_command
        if outcome.restore_command is None:
            exc.hint = f"{done}; {fix}"
            return
        if not self.restore_on_failure:
            exc.hint = f"{done}; to put the database back as it was before this run: {outcome.restore_command}"
            return
        from opskit.restore import restore

        self.say(f"restoring backup {outcome.backup_id} into target '{outcome.target}' (--restore-on-failure)")
        try:
            # The lock is still held: no other migrator can commit between the failure and the
            # restore (the swap ends this session, and its lock, with the old database).
            result = restore.run(
                self.ctx,
                selector=outcome.backup_id or "latest",
                target=outcome.target,
                to=outcome.target,
                replace=True,
                confirmed=self.yes,
            )
        except OpskitError as restore_error:
            exc.hint = (
                f"{done}; the automatic restore failed too ({restore_error.one_line()}); "
                f"run it by hand: {outcome.restore_command}"
            )
            return
        if not result.ok:
            names = ", ".join(sorted(m.table for m in result.mismatches)) if result.mismatches else "?"
            exc.hint = (
                f"{done}; backup {outcome.backup_id} was restored into '{outcome.target}', but "
                f"{len(result.mismatches)} table(s) differ from it ({names}): drop what the failed run created and check"
            )
        else:
            exc.hint = (
                f"{done}; backup {outcome.backup_id} was restored into '{outcome.target}'; "
                "fix the migration and run again"
            )
        if failed is not None:
            failed.restored = True


def staging_of(target: TargetConfig) -> str:
    """Return the name of ``target``'s staging target. Raises ConfigError (2) when it has none."""
    if not target.staging:
        raise ConfigError(
            f"target '{target.name}' has no staging target to rehearse on",
            hint=f"set targets.{target.name}.staging, or drop --rehearse",
        )
    return target.staging


def rehearse_on_staging(
    ctx: AppContext,
    target: TargetConfig,
    settings: MigrationSettings,
    manifest: Manifest | None,
    say: Callable[[str], None] = lambda _m: None,
) -> Rehearsal:
    """Restore a backup of ``target`` into a fresh database on its staging server and migrate it there.

    Uses ``manifest`` when given, else the newest backup (taking one if there is none). The
    rehearsal database is always dropped. Raises ConfigError when the target has no staging,
    MigrationFailed when a migration fails on staging (production is not touched).
    """
    from opskit.backup import backup
    from opskit.catalog import latest_backup, list_backups
    from opskit.restore import restore

    staging = ctx.target(staging_of(target))
    storage_name = target.primary_storage
    if manifest is None:
        # Never a future-dated backup (a host with a wrong clock): its age is unknown.
        manifest = latest_backup(list_backups(ctx.storage(storage_name), target.name), ctx.clock())
        if manifest is None:
            say(f"target '{target.name}' has no backup yet: taking one for the rehearsal")
            manifest = backup.run(ctx, target=target.name, labels=("pre-migrate",)).manifest
    # Named after the production database so it is recognisable (and cleaned up with it in tests).
    suffix = f"_rehearse_{secrets.token_hex(4)}"
    dbname = connection.database_of(target)[: 63 - len(suffix)] + suffix
    rehearsal = Rehearsal(manifest.id, staging.name, dbname)
    say(f"rehearsing on staging '{staging.name}': restoring backup {manifest.id} into database '{dbname}'")
    try:
        result = restore.restore_to_new_database(ctx, manifest, storage_name, server=staging, dbname=dbname)
        rehearsal.database = result.database
        try:
            EngineBackend(settings, clock=ctx.clock).migrate(
                staging, on_applied=rehearsal.applied.append, dbname=result.database
            )
        except MigrationFailed as exc:
            raise MigrationFailed(
                f"rehearsal on staging '{staging.name}' failed, production was not touched: {exc.message}",
                hint="fix the migration and rehearse again",
                migration=exc.migration,
                database_error=exc.database_error,
            ) from exc
    finally:
        try:
            databases.drop_database(staging, rehearsal.database)
        except OpskitError as exc:
            log.warning("could not drop the rehearsal database", database=rehearsal.database, error=exc.message)
        except Exception as exc:  # the rehearsal's own outcome matters more than the cleanup
            log.warning("could not drop the rehearsal database", database=rehearsal.database, error=str(exc))
    for applied in rehearsal.applied:
        say(f"rehearsed {applied.script} on staging in {applied.execution_ms} ms")
    return rehearsal


# --------------------------------------------------------------------------- info / validate / baseline / repair


def info(ctx: AppContext, target: str | None = None) -> InfoOutcome:
    """Return every migration with its state (``docs/flyway-compat.md`` §4.3). Raises UnreachableError, ConfigError."""
    settings = settings_for(ctx)
    return backend(ctx, settings).info(resolve_target(ctx, target, settings))


def validate(ctx: AppContext, target: str | None = None) -> InfoState:
    """Validate the scripts against the history. Raises VerificationFailed (5) with Flyway's messages."""
    settings = settings_for(ctx)
    return backend(ctx, settings).validate(resolve_target(ctx, target, settings))


def baseline(
    ctx: AppContext, target: str | None = None, version: str | None = None, description: str | None = None
) -> BaselineReport:
    """Baseline the target at ``version``. Raises VerificationFailed when it already has migrations."""
    settings = settings_for(ctx)
    return backend(ctx, settings).baseline(resolve_target(ctx, target, settings), version, description)


def repair(ctx: AppContext, target: str | None = None) -> RepairReport:
    """Repair the history: remove failed rows, mark missing ones deleted, realign checksums."""
    settings = settings_for(ctx)
    return backend(ctx, settings).repair(resolve_target(ctx, target, settings))


# --------------------------------------------------------------------------- JSON


def instant(moment: datetime | None, timezone: str | None) -> str:
    """Return Java's ``Instant.toString()`` of a TIMESTAMP read in the session time zone, or ``""``."""
    if moment is None:
        return ""
    if moment.tzinfo is None:
        try:
            from zoneinfo import ZoneInfo

            moment = moment.replace(tzinfo=ZoneInfo(timezone or "UTC"))
        except Exception:
            moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    micros = moment.microsecond
    if micros:
        text += f".{micros // 1000:03d}" if micros % 1000 == 0 else f".{micros:06d}"
    return text + "Z"


def info_json(outcome: InfoOutcome, now: datetime) -> dict[str, Any]:
    """Return the document ``flyway info -outputType=json`` prints, field for field (``docs/flyway-compat.md`` §6.1).

    ``now`` (from the context's clock) becomes ``timestamp``, a local time without zone as Flyway's
    ``LocalDateTime`` prints it. With the Flyway CLI backend this is Flyway's own document.
    """
    from opskit import __version__

    if outcome.flyway_document is not None:
        return outcome.flyway_document
    migrations = []
    for item in sort_infos_for_display(outcome.state.infos):
        applied = item.applied
        migrations.append(
            {
                "category": item.category,
                "version": item.version_text,
                "rawVersion": item.raw_version,
                "description": item.description,
                "type": item.type,
                "installedOnUTC": instant(applied.installed_on, outcome.session_timezone) if applied else "",
                "state": item.state,
                "undoable": "" if item.is_repeatable or item.is_synthetic else "No",
                "filepath": str(item.resolved.script.path) if item.resolved else "",
                "undoFilepath": "",
                "installedBy": applied.installed_by if applied else "",
                "shouldExecuteExpression": None,
                "executionTime": applied.execution_time if applied else 0,
            }
        )
    return {
        "schemaVersion": outcome.state.schema_version,
        "schemaName": outcome.schema_name,
        "migrations": migrations,
        "allSchemasEmpty": outcome.all_schemas_empty,
        "flywayVersion": COMPAT_FLYWAY_VERSION,
        "opskitVersion": __version__,
        "database": outcome.database,
        "operation": "info",
        "timestamp": now.astimezone().replace(tzinfo=None).isoformat(timespec="milliseconds"),
        "exception": None,
        "licenseFailed": False,
    }
