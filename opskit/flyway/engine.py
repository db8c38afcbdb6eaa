"""The migration runner: Flyway's migrate, info, validate, baseline and repair on one database.

The state it acts on is computed by the pure :mod:`opskit.flyway.state` and checked by
:mod:`opskit.flyway.validation`; this module does the database I/O (``docs/flyway-compat.md`` §2, §4).
The engine works on one autocommit connection it is given:

* the whole ``migrate``/``baseline``/``repair`` run holds Flyway's advisory lock as a *session*
  lock (``pg_try_advisory_lock``), which conflicts with both lock modes Flyway uses, so opskit
  and Flyway never migrate one database at once, and two opskit runs never interleave (§2.7);
* each transactional migration runs in its own transaction together with its history row, so
  a failure leaves neither a row nor a partial change;
* a migration with statements PostgreSQL refuses inside a transaction (``CREATE INDEX
  CONCURRENTLY``, ...) runs statement by statement in autocommit; if it fails, a row with
  ``success = FALSE`` is written, as Flyway does, and ``repair`` removes it. It counts as
  ``partial`` (changed half-way) unless only read-only statements ran before the failure.

One script's execution lives in :mod:`opskit.flyway.apply`, repair's writes in
:mod:`opskit.flyway.repair_run`; the :class:`Engine` is the public face of both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any

import psycopg

from opskit.config.migrations import MigrationSettings
from opskit.core.errors import ConfigError, MigrationFailed, OpskitError
from opskit.core.log import get_logger
from opskit.flyway.apply import Progress, applied_entry, apply_script, refuse_transaction_control
from opskit.flyway.baseline import baseline_table, create_schemas
from opskit.flyway.callbacks import CallbackRunner, load_callbacks
from opskit.flyway.history import (
    HistoryTable,
    acquire_lock,
    quote_java,
    release_lock,
)
from opskit.flyway.names import Version, abbreviate_script
from opskit.flyway.placeholders import check_placeholders, executable_text, placeholder_values, resolved_checksums
from opskit.flyway.repair_run import run_repair
from opskit.flyway.results import Applied, BaselineReport, MigrateReport, RepairReport
from opskit.flyway.scripts import Discovery, Script, discover
from opskit.flyway.session import reset_session, schema_exists, schema_is_empty
from opskit.flyway.state import (
    Info,
    InfoState,
    Resolved,
    Target,
    build_state,
)
from opskit.flyway.statements import split_statements
from opskit.flyway.transactions import runs_in_transaction
from opskit.flyway.validation import check_target, state_ignored, validation_errors, validation_failed

log = get_logger(__name__)

# The callback events a ``migrate`` may fire (docs/migrations.md, Callbacks): planning checks
# their placeholders, as the real run would fail on them after the backup.
MIGRATE_EVENTS = frozenset(
    {
        "beforeValidate",
        "afterValidate",
        "afterValidateError",
        "createSchema",
        "beforeBaseline",
        "afterBaseline",
        "afterBaselineError",
        "beforeMigrate",
        "beforeEachMigrate",
        "afterEachMigrate",
        "afterEachMigrateError",
        "afterVersioned",
        "beforeRepeatables",
        "afterMigrateApplied",
        "afterMigrate",
        "afterMigrateOperationFinish",
        "afterMigrateError",
    }
)


class Engine:
    """Flyway's commands on one database connection (autocommit; the engine opens transactions itself)."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        settings: MigrationSettings,
        *,
        clock: Callable[[], datetime],
        on_lock_wait: Callable[[int], None] | None = None,
    ) -> None:
        if not conn.autocommit:
            conn.autocommit = True
        self.conn = conn
        self.settings = settings
        self.clock = clock
        self.on_lock_wait = on_lock_wait
        self._user: str | None = None
        self._discovery: Discovery | None = None
        self._callbacks: CallbackRunner | None = None
        # What this engine's migrate runs committed, in order (a group's only once the group
        # committed), and the non-transactional migration that failed or was interrupted half-way
        # after a statement that may have changed the database (its completed statements stay):
        # the migrate feature decides from these whether a restore is needed and what an
        # interrupted run reports. ``failed_unchanged`` is the non-transactional migration that
        # failed having run only read-only statements: its failed history row is all it left.
        self.committed: list[Applied] = []
        self.partial: str | None = None
        self.failed_unchanged: str | None = None
        row = conn.execute(
            "SELECT current_user, current_setting('search_path'), current_database(),"
            " current_schema(), current_setting('server_version_num')::int"
        ).fetchone()
        assert row is not None
        self.original_role, self.original_search_path, self.database = row[0], row[1], row[2]
        self.server_version_num = int(row[4])
        schema = settings.default_schema or (settings.schemas[0] if settings.schemas else row[3])
        if not schema:
            raise ConfigError(
                "no default schema: the search_path names no existing schema",
                hint="set migrations.default_schema or migrations.schemas",
            )
        self.schema: str = schema
        self.history = HistoryTable(schema, settings.table, settings.tablespace)
        # ${flyway:timestamp} is the JVM's local time, computed once per command (§5); astimezone()
        # turns the injected clock's instant (aware or naive local) into local time.
        self.timestamp = self.clock().astimezone().strftime("%Y-%m-%d %H:%M:%S")

    # ------------------------------------------------------------------ facts

    @property
    def installed_by(self) -> str:
        """Return installedBy, else ``current_user`` (queried once, as Flyway does)."""
        if self.settings.installed_by:
            return self.settings.installed_by
        if self._user is None:
            self._user = self.original_role
        return self._user

    def placeholder_values(self) -> dict[str, str]:
        """Return user placeholders (lowercase keys) with the ``flyway:*`` built-ins on top."""
        return placeholder_values(self.settings, self.schema, self.original_role, self.database, self.timestamp)

    def scripts(self) -> tuple[Script, ...]:
        """Return the discovered scripts (scanned once per engine)."""
        if self._discovery is None:
            s = self.settings
            self._discovery = discover(s.locations, s.naming, s.encoding, s.validate_migration_naming)
        return self._discovery.scripts

    @property
    def callbacks(self) -> CallbackRunner:
        """Return the runner of the SQL callbacks found beside the migrations (read once per engine)."""
        if self._callbacks is None:
            self.scripts()
            assert self._discovery is not None
            self._callbacks = CallbackRunner(
                self.conn,
                load_callbacks(self._discovery.callbacks, self.settings),
                self.settings,
                self.server_version_num,
                self.placeholder_values(),
                self._reset_session,
            )
        return self._callbacks

    def _around(self, before: str, after: str, error: str, work: Callable[[], Any]) -> Any:
        """Run ``work`` between the ``before`` and ``after`` callbacks; ``error``'s callbacks when it raises.

        The error callbacks' own failure is logged, never raised over the command's error.
        """
        self.callbacks.fire(before)
        try:
            result = work()
        except OpskitError:
            self._fire_quietly(error)
            raise
        self.callbacks.fire(after)
        return result

    def _fire_quietly(self, event: str) -> None:
        try:
            self.callbacks.fire(event)
        except OpskitError as exc:
            log.error("an error callback failed too", callback_event=event, error=exc.message)

    def resolved(self) -> list[Resolved]:
        """Return every script with its resolved checksums."""
        values = self.placeholder_values()
        syntax = self.settings.placeholder_syntax
        return [Resolved(s, *resolved_checksums(s, values, syntax)) for s in self.scripts()]

    def state(self, target: Target | None = None, out_of_order: bool | None = None) -> InfoState:
        """Return the info state (history rows paired with scripts)."""
        target = target or Target.parse(self.settings.target)
        return build_state(
            self.resolved(),
            self.history.read(self.conn),
            target,
            self.settings.out_of_order if out_of_order is None else out_of_order,
        )

    def _schema_exists(self, schema: str) -> bool:
        return schema_exists(self.conn, schema)

    def schema_empty(self, schema: str) -> bool:
        """Return True when ``schema`` holds no relation, type or function outside extensions (PG doEmpty)."""
        return schema_is_empty(self.conn, schema)

    def _transactional(self, script: Script) -> bool:
        return runs_in_transaction(script, self.settings, self.server_version_num)

    def _reset_session(self) -> None:
        # Flyway restores role and search_path before each migration (§4.1 item 6).
        reset_session(self.conn, self.original_role, self.original_search_path, self.schema)

    # ------------------------------------------------------------------ info / validate

    def info(self) -> InfoState:
        """Return the state of every migration, as ``flyway info`` shows it (with the info callbacks)."""
        state: InfoState = self._around("beforeInfo", "afterInfo", "afterInfoError", self.state)
        self.callbacks.fire("afterInfoOperationFinish")
        return state

    def validate(self, extra_patterns: Sequence[str] = (), fire_callbacks: bool = True) -> InfoState:
        """Validate scripts against the history (§4.2); return the state when valid.

        Runs the validate callbacks unless ``fire_callbacks`` is False (a dry run changes nothing).
        Raises VerificationFailed (exit 5) carrying Flyway's messages in ``errors``.
        """
        if fire_callbacks:
            return self._around(
                "beforeValidate", "afterValidate", "afterValidateError", lambda: self._validate(extra_patterns)
            )
        return self._validate(extra_patterns)

    def _validate(self, extra_patterns: Sequence[str]) -> InfoState:
        patterns = list(self.settings.ignore_migration_patterns) + list(extra_patterns)
        state = self.state()
        errors: list[str] = []
        if not self._schema_exists(self.schema) and state.infos and not state_ignored(patterns, "pending", False):
            errors.append(f"Schema {quote_java(self.schema)} doesn't exist yet")
        else:
            errors = validation_errors(state, patterns)
        if errors:
            raise validation_failed(errors)
        return state

    # ------------------------------------------------------------------ migrate

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold Flyway's advisory lock (a session lock, §2.7) for the block; release it after.

        Re-entrant: ``migrate``, ``baseline`` and ``repair`` inside the block take it again on the
        same session, which PostgreSQL grants at once. A connection that died meanwhile (a
        restore that swapped the database) has released it already. Raises LockHeld (exit 7)
        when another run holds it past ``lock_retry_count``.
        """
        acquire_lock(
            self.conn, self.history.lock_key, self.settings.lock_retry_count, session=True, on_wait=self.on_lock_wait
        )
        try:
            yield
        finally:
            release_lock(self.conn, self.history.lock_key)

    def migrate(self, dry_run: bool = False, on_applied: Callable[[Applied], None] | None = None) -> MigrateReport:
        """Apply the pending migrations, one transaction each (§4.1); return what ran.

        ``on_applied`` is called for each migration once it is committed (with ``group = true``,
        for all of them after the group's transaction committed). ``dry_run`` returns
        :meth:`plan`'s report instead. Raises VerificationFailed when validation fails,
        MigrationFailed (exit 4) when a migration fails (after rolling it back), LockHeld when
        another run holds the lock.
        """
        target = Target.parse(self.settings.target)
        if dry_run:
            return self.plan()
        with self.locked():
            return self._migrate_locked(target, on_applied)

    def plan(self) -> MigrateReport:
        """Return what ``migrate`` would apply, raising what the real run would refuse, changing nothing.

        Runs no callback and takes no lock (a caller holding :meth:`locked` plans exactly the
        state the run starts from). Raises as the real run: VerificationFailed (validation),
        ConfigError (a missing target version, a non-empty schema without history and without
        ``baseline_on_migrate``, a non-transactional migration in ``group = true``, a callback
        mixing statement kinds), PlaceholderError (a placeholder with no value, in a pending
        script or a callback migrate fires), MigrationFailed (a failed row with
        ``validate_on_migrate = false``). A script mixing statement kinds without ``mixed`` is
        reported in ``refusal``, not raised, so a dry run shows the whole plan.
        """
        target = Target.parse(self.settings.target)
        if self.settings.validate_on_migrate:
            self.validate(["*:pending"], fire_callbacks=False)
        state = self.state(target)
        check_target(state, target)
        report = MigrateReport(state.schema_version, None, dry_run=True)
        pending = state.pending()
        if not self.history.exists(self.conn):
            report.created_table = True
            schemas = self.settings.schemas or (self.schema,)
            # createSchemas creates the missing configured schemas, and the table with them.
            creates = self.settings.create_schemas and any(not self._schema_exists(s) for s in self.settings.schemas)
            non_empty = [] if creates else [s for s in schemas if self._schema_exists(s) and not self.schema_empty(s)]
            if non_empty and not self.settings.baseline_on_migrate:
                raise non_empty_error(non_empty)
            if non_empty:
                # migrate would baseline first; what is at or below the baseline would not run.
                report.baselined = True
                floor = Version.parse(self.settings.baseline_version)
                pending = [
                    i for i in pending if i.resolved is None or i.resolved.version is None or i.resolved.version > floor
                ]
        self._refuse_failed(state)
        values = self.placeholder_values()
        for info in pending:
            script = info.resolved.script  # type: ignore[union-attr]
            try:
                transactional = self._transactional(script)
            except ConfigError as exc:
                # Reported, not raised: the dry run shows the whole plan and where it stops (a mixed
                # script with mixed = false); migrate refuses the run up front from this report.
                report.applied.append(replace(applied_entry(info, 0, False), refusal=exc.message))
                continue
            if self.settings.group and not transactional:
                raise group_refusal(script.script)
            if transactional:  # refused here, before any backup, not when its turn comes
                refuse_transaction_control(script.script, split_statements(script.text), script.text)
            check_placeholders(script, values, self.settings.placeholder_syntax)
            report.applied.append(applied_entry(info, 0, transactional))
        for callback in self.callbacks.callbacks:
            if callback.event in MIGRATE_EVENTS:
                check_placeholders(callback.script, values, self.settings.placeholder_syntax)
        report.target_version = _last_version(report.applied) or None
        return report

    def _refuse_failed(self, state: InfoState) -> None:
        """Raise MigrationFailed when the history holds a failed row migrate stops at (§4.1 item 4)."""
        failed = state.failed(future_ignored=state_ignored(self.settings.ignore_migration_patterns, "future", False))
        if failed:
            info = failed[0]
            script = info.resolved.script.script if info.resolved else (info.applied.script if info.applied else None)
            raise MigrationFailed(
                f"Schema {quote_java(self.schema)} contains a failed migration to version {info.label} !",
                hint="remove its half-completed changes, then run 'opskit migrate repair'",
                migration=script,
            )

    def _migrate_locked(self, target: Target, on_applied: Callable[[Applied], None] | None) -> MigrateReport:
        if self.settings.validate_on_migrate:
            self.validate(["*:pending"])
        report = MigrateReport(None, None)
        if self.settings.create_schemas and not self.history.exists(self.conn):
            self.callbacks.fire("createSchema")  # Flyway fires it whenever it may create schemas
        report.created_schemas = self._create_schemas()
        if not self.history.exists(self.conn):
            non_empty = [s for s in (self.settings.schemas or (self.schema,)) if not self.schema_empty(s)]
            if non_empty and self.settings.baseline_on_migrate:
                self._baseline_with_callbacks(self.settings.baseline_version, self.settings.baseline_description)
                report.baselined = True
            elif non_empty:
                raise non_empty_error(non_empty)
            else:
                with self.conn.transaction():
                    self.history.create(self.conn)
                report.created_table = True
        self.callbacks.fire("beforeMigrate")
        try:
            state = self.state(target)
            report.initial_version = state.schema_version
            check_target(state, target)
            values = self.placeholder_values()
            if self.settings.group:
                # group = true: every pending migration in one transaction, all or nothing. Nothing
                # counts as applied (committed, reported) before that transaction commits.
                try:
                    with self.conn.transaction():
                        self._apply_pending(state, target, values, report, None)
                except MigrationFailed as exc:
                    rolled_back = [a.script for a in report.applied]
                    report.applied.clear()
                    if not rolled_back:
                        raise  # the first of the group failed: its message says all there is
                    raise group_rolled_back(exc, rolled_back) from exc
                except BaseException:
                    report.applied.clear()
                    raise
                self._committed(report.applied, on_applied)
            else:
                self._apply_pending(state, target, values, report, on_applied)
        except OpskitError:
            self._fire_quietly("afterMigrateError")
            raise
        if report.applied:
            self.callbacks.fire("afterMigrateApplied")
        self.callbacks.fire("afterMigrate")
        self.callbacks.fire("afterMigrateOperationFinish")
        report.target_version = _last_version(report.applied) or None
        return report

    def _apply_pending(
        self,
        state: InfoState,
        target: Target,
        values: dict[str, str],
        report: MigrateReport,
        on_applied: Callable[[Applied], None] | None,
    ) -> None:
        """Apply ``state``'s pending migrations in order into ``report``.

        Outside a group each one is recorded as committed (and given to ``on_applied``) as soon
        as it is; in a group the caller does that once the group's transaction committed.
        """
        previous_versioned = True  # Flyway's isPreviousVersioned: afterVersioned fires once, even for none
        while True:
            self._refuse_failed(state)
            pending = state.pending()
            if not pending:
                break
            if previous_versioned and pending[0].version is None:
                self.callbacks.fire("afterVersioned")
                self.callbacks.fire("beforeRepeatables")
                previous_versioned = False
            applied = self._apply(pending[0], values)
            report.applied.append(applied)
            if not self.settings.group:
                self._committed([applied], on_applied)
            if target.kind == "next":
                break
            state = self.state(target)
        if previous_versioned:
            self.callbacks.fire("afterVersioned")

    def _committed(self, applied: Sequence[Applied], on_applied: Callable[[Applied], None] | None) -> None:
        """Record ``applied`` as committed by this engine and tell ``on_applied`` about each."""
        for entry in applied:
            self.committed.append(entry)
            if on_applied is not None:
                on_applied(entry)

    def _create_schemas(self) -> tuple[str, ...]:
        return create_schemas(self.conn, self.history, self.settings, self.installed_by)

    def _apply(self, info: Info, values: dict[str, str]) -> Applied:
        resolved = info.resolved
        assert resolved is not None
        script = resolved.script
        text = executable_text(script, values, self.settings.placeholder_syntax)
        transactional = self._transactional(script)
        progress = Progress()
        try:
            return apply_script(
                self.conn,
                self.history,
                self.callbacks,
                info,
                text,
                transactional,
                self.installed_by,
                self._reset_session,
                progress,
            )
        except BaseException as exc:
            # Autocommit, statement by statement: what ran before the failure (or the interrupt)
            # is committed, and so may be its success = FALSE row; it counts as a change unless
            # every statement that ran was read-only (progress). A transactional script is rolled
            # back, unless it ended its transaction itself: then apply recorded a failed row.
            if transactional:
                if self._failed_row_recorded(script):
                    self.partial = script.script
            elif progress.changed:
                self.partial = script.script
            elif isinstance(exc, MigrationFailed) and self._failed_row_recorded(script):
                self.failed_unchanged = script.script  # an interrupt writes no failed row
            raise

    def _failed_row_recorded(self, script: Script) -> bool:
        """Return True when the history's newest row is a failed row of ``script`` (written just now)."""
        try:
            rows = self.history.read(self.conn)
        except (psycopg.Error, OpskitError):
            return False  # the session is gone: nothing more can have been committed on it
        if not rows:
            return False
        newest = max(rows, key=lambda r: r.installed_rank)
        return not newest.success and newest.script == abbreviate_script(script.script)

    # ------------------------------------------------------------------ baseline

    def baseline(self, version: str | None = None, description: str | None = None) -> BaselineReport:
        """Baseline the database at ``version`` (§4.4) under the lock.

        Raises VerificationFailed when the table already holds a different baseline or migrations.
        """
        with self.locked():
            return self._baseline_with_callbacks(
                version or self.settings.baseline_version, description or self.settings.baseline_description
            )

    def _baseline_with_callbacks(self, version_text: str, description: str) -> BaselineReport:
        report: BaselineReport = self._around(
            "beforeBaseline",
            "afterBaseline",
            "afterBaselineError",
            lambda: self._baseline_locked(version_text, description),
        )
        return report

    def _baseline_locked(self, version_text: str, description: str) -> BaselineReport:
        return baseline_table(
            self.conn, self.history, self.settings, self.schema, self.installed_by, version_text, description
        )

    # ------------------------------------------------------------------ repair

    def repair(self) -> RepairReport:
        """Remove failed rows, mark missing migrations deleted, realign checksums (§4.5), under the lock."""
        with self.locked():

            def work() -> RepairReport:
                with self.conn.transaction():
                    return self._repair_locked()

            report: RepairReport = self._around("beforeRepair", "afterRepair", "afterRepairError", work)
            return report

    def _repair_locked(self) -> RepairReport:
        latest = Target("latest")
        return run_repair(
            self.conn,
            self.history,
            lambda: self.state(latest, out_of_order=True),
            self.settings.ignore_migration_patterns,
            self.installed_by,
        )


def non_empty_error(schemas: Sequence[str]) -> ConfigError:
    """Return Flyway's error for non-empty ``schemas`` without a history table (exit 2)."""
    names = ", ".join(quote_java(s) for s in schemas)
    return ConfigError(
        f"Found non-empty schema(s) {names} but no schema history table. Use baseline() or set "
        "baselineOnMigrate to true to initialize the schema history table.",
        hint="run 'opskit migrate baseline' or set migrations.baseline_on_migrate = true",
    )


def group_refusal(script: str) -> ConfigError:
    """Return the ConfigError for ``script``, which cannot run in a transaction, under ``group = true`` (exit 2).

    The words :func:`opskit.flyway.apply.apply_script` uses when it meets the open group.
    """
    return ConfigError(
        f"migration {script} cannot run inside a transaction, and group = true puts every migration in one",
        hint="set migrations.group = false",
    )


def group_rolled_back(exc: MigrationFailed, scripts: Sequence[str]) -> MigrationFailed:
    """Return ``exc`` restated for ``group = true``: the failure rolled back every migration of the group.

    ``scripts`` are the group's migrations that ran before the failing one (at least one).
    """
    names = [*scripts, exc.migration] if exc.migration and exc.migration not in scripts else list(scripts)
    return MigrationFailed(
        f"{exc.message.rstrip('.')}; group = true, so all {len(names)} migration(s) of the group "
        f"({', '.join(names)}) were rolled back with it and none was applied",
        hint=exc.hint,
        migration=exc.migration,
        database_error=exc.database_error,
    )


def _last_version(applied: Iterable[Applied]) -> str:
    versions = [a.version for a in applied if a.version]
    return versions[-1] if versions else ""
