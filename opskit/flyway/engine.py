"""The migration engine: migrate, info, validate, baseline and repair, with Flyway's semantics.

States, validation messages and history rows follow ``specs/flyway-compat.md`` sections 2-4.
The engine works on one autocommit connection it is given:

* the whole ``migrate``/``baseline``/``repair`` run holds Flyway's advisory lock as a *session*
  lock (``pg_try_advisory_lock``), which conflicts with both lock modes Flyway uses, so opskit
  and Flyway never migrate one database at once, and two opskit runs never interleave;
* each transactional migration runs in its own transaction together with its history row, so
  a failure leaves neither a row nor a partial change;
* a migration with statements PostgreSQL refuses inside a transaction (``CREATE INDEX
  CONCURRENTLY``, ...) runs statement by statement in autocommit; if it fails, a row with
  ``success = FALSE`` is written, as Flyway does, and ``repair`` removes it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from opskit.config.migrations import MigrationSettings
from opskit.core.errors import ConfigError, MigrationFailed, VerificationFailed
from opskit.core.log import get_logger
from opskit.flyway.history import (
    SCHEMA_DESCRIPTION,
    AppliedRow,
    HistoryTable,
    NewRow,
    acquire_lock,
    quote_java,
    release_lock,
)
from opskit.flyway.scripts import (
    Script,
    Version,
    abbreviate_description,
    abbreviate_script,
    can_run_in_transaction,
    discover,
    executable_text,
    order_key,
    resolved_checksums,
    split_statements,
)

log = get_logger(__name__)

# Display names of Flyway's MigrationState (the JSON "state" values).
PENDING = "Pending"
ABOVE_TARGET = "Above Target"
BELOW_BASELINE = "Below Baseline"
BASELINE_IGNORED = "Ignored (Baseline)"
BASELINE = "Baseline"
IGNORED = "Ignored"
SUCCESS = "Success"
OUT_OF_ORDER = "Out of Order"
FAILED = "Failed"
MISSING = "Missing"
MISSING_FAILED = "Failed (Missing)"
FUTURE = "Future"
FUTURE_FAILED = "Failed (Future)"
OUTDATED = "Outdated"
SUPERSEDED = "Superseded"
DELETED = "Deleted"
FAILED_STATES = frozenset({FAILED, MISSING_FAILED, FUTURE_FAILED})
APPLIED_STATES = frozenset(
    {
        BASELINE,
        SUCCESS,
        OUT_OF_ORDER,
        FAILED,
        MISSING,
        MISSING_FAILED,
        FUTURE,
        FUTURE_FAILED,
        OUTDATED,
        SUPERSEDED,
        DELETED,
    }
)


# --------------------------------------------------------------------------- resolved migrations


@dataclass(frozen=True)
class Resolved:
    """A script with the checksums Flyway resolves for it (placeholders applied for repeatables)."""

    script: Script
    checksum: int
    equivalent_checksum: int | None

    @property
    def version(self) -> Version | None:
        """Return the version (None for a repeatable)."""
        return self.script.version

    @property
    def description(self) -> str:
        """Return the description from the file name."""
        return self.script.description

    def checksum_matches(self, stored: int | None) -> bool:
        """Return True when ``stored`` equals the checksum or its raw equivalent (Flyway's checksumMatches)."""
        return stored == self.checksum or (self.equivalent_checksum is not None and stored == self.equivalent_checksum)


# --------------------------------------------------------------------------- info


@dataclass(frozen=True)
class Target:
    """The ``target`` setting: ``latest``, ``current``, ``next`` or a version (``2.0?`` may be missing)."""

    kind: str  # "latest" | "current" | "next" | "version"
    version: Version | None = None
    optional: bool = False

    @classmethod
    def parse(cls, text: str) -> Target:
        """Parse the setting. Raises ConfigError for something that is not a version or a keyword."""
        lowered = text.strip().lower()
        if lowered in ("latest", "current", "next"):
            return cls(lowered)
        optional = lowered.endswith("?")
        raw = text.strip().rstrip("?")
        try:
            return cls("version", Version.parse(raw), optional)
        except ValueError:
            raise ConfigError(
                f"invalid target '{text}'", hint="use latest, current, next or a version such as 2.1"
            ) from None


@dataclass
class Info:
    """One line of ``info``: a resolved script, an applied row, or both, and its state."""

    resolved: Resolved | None
    applied: AppliedRow | None
    state: str = PENDING
    out_of_order: bool = False
    deleted: bool = False

    @property
    def version(self) -> Version | None:
        """Return the version of the row or the script (None for repeatables and markers)."""
        if self.applied is not None:
            return self.applied.parsed_version
        return self.resolved.version if self.resolved else None

    @property
    def version_text(self) -> str:
        """Return the version as Flyway shows it, or ``""``."""
        if self.applied is not None:
            return self.applied.version or ""
        return self.resolved.version.text if self.resolved and self.resolved.version else ""

    @property
    def raw_version(self) -> str:
        """Return the version as spelled in the file name (``1_1``), or the stored one."""
        if self.resolved is not None and self.resolved.version is not None:
            return self.resolved.version.raw
        return self.version_text

    @property
    def description(self) -> str:
        """Return the stored description, else the resolved one."""
        if self.applied is not None:
            return self.applied.description
        return self.resolved.description if self.resolved else ""

    @property
    def type(self) -> str:
        """Return the row's type, or ``SQL`` for a script not applied yet."""
        return self.applied.type if self.applied is not None else "SQL"

    @property
    def is_repeatable(self) -> bool:
        """Return True for repeatable migrations (rows or scripts without a version, markers excluded)."""
        if self.applied is not None:
            return self.applied.version is None and not self.applied.is_synthetic
        return self.resolved is not None and self.resolved.version is None

    @property
    def is_synthetic(self) -> bool:
        """Return True for SCHEMA, DELETE and BASELINE rows."""
        return self.applied is not None and self.applied.is_synthetic

    @property
    def category(self) -> str:
        """Return the JSON ``category``: Versioned, Repeatable, Baseline, or ``""`` for markers."""
        if self.applied is not None and self.applied.is_baseline:
            return "Baseline" if self.applied.type != "BASELINE" else ""
        if self.is_synthetic:
            return ""
        return "Repeatable" if self.is_repeatable else "Versioned"

    @property
    def label(self) -> str:
        """Return how messages name it: the version, else the description."""
        return self.version_text or self.description

    @property
    def checksum(self) -> int | None:
        """Return the stored checksum, else the resolved one."""
        if self.applied is not None:
            return self.applied.checksum
        return self.resolved.checksum if self.resolved else None


@dataclass
class InfoState:
    """All migrations with their states, plus what Flyway's MigrationInfoContext knows."""

    infos: list[Info]
    baseline: Version | None = None
    last_applied: Version | None = None
    last_resolved: Version | None = None
    target: Version | None = None

    def pending(self) -> list[Info]:
        """Return the pending migrations in the order they would be applied."""
        waiting = [i for i in self.infos if i.state == PENDING and i.applied is None]
        return sorted(waiting, key=lambda i: order_key(i.resolved.script))  # type: ignore[union-attr]

    def current(self) -> Info | None:
        """Return the current version's migration: the highest applied non-deleted versioned one."""
        best: Info | None = None
        for info in self.infos:
            if info.applied is None or info.state == DELETED or info.applied.type in ("DELETE", "SCHEMA"):
                continue
            version = info.version
            if version is not None and (best is None or version > best.version):  # type: ignore[operator]
                best = info
        if best is not None:
            return best
        repeatables = [i for i in self.infos if i.applied is not None and i.is_repeatable and i.state != DELETED]
        return repeatables[-1] if repeatables else None

    @property
    def schema_version(self) -> str | None:
        """Return the current schema version text, or None when nothing versioned is applied."""
        current = self.current()
        return current.version_text or None if current is not None else None

    def failed(self, future_ignored: bool = True) -> list[Info]:
        """Return the failed rows (a Failed (Future) row counts only when future is not ignored)."""
        return [
            i
            for i in self.infos
            if i.state in (FAILED, MISSING_FAILED) or (i.state == FUTURE_FAILED and not future_ignored)
        ]


def build_state(
    resolved: Sequence[Resolved], applied: Sequence[AppliedRow], target: Target, out_of_order: bool
) -> InfoState:
    """Pair resolved scripts with history rows and compute every state (spec 4.3).

    Versioned rows pair by version; repeatable rows by description, where only the highest
    rank per description is the latest run. Returns the infos with applied rows first (by
    rank), then the rest in resolution order.
    """
    resolved_versioned: dict[Version, Resolved] = {}
    resolved_repeatable: dict[str, Resolved] = {}
    last_resolved: Version | None = None
    for item in resolved:
        if item.version is not None:
            resolved_versioned[item.version] = item
            if last_resolved is None or item.version > last_resolved:
                last_resolved = item.version
        else:
            resolved_repeatable[item.description] = item

    infos: list[Info] = [Info(None, row) for row in applied]
    baseline: Version | None = None
    # DELETE markers cancel the latest earlier live row with the same version (or description).
    for index, info in enumerate(infos):
        row = info.applied
        assert row is not None
        if row.is_baseline and row.version:
            baseline = row.parsed_version
        if row.type == "DELETE" and row.success:
            for earlier in reversed(infos[:index]):
                other = earlier.applied
                assert other is not None
                if other.is_synthetic or earlier.deleted:
                    continue
                if row.version is not None:
                    same = other.version is not None and other.parsed_version == row.parsed_version
                else:
                    same = other.version is None and other.description == row.description
                if same:
                    earlier.deleted = True
                    break

    last_applied: Version | None = None
    for info in infos:
        row = info.applied
        assert row is not None
        if row.version is None or info.deleted or row.type in ("DELETE", "SCHEMA"):
            continue
        version = row.parsed_version
        assert version is not None
        if last_applied is None or version > last_applied:
            last_applied = version
        else:
            info.out_of_order = True

    target_version: Version | None = target.version
    if target.kind == "current":
        target_version = last_applied

    pending_versioned = dict(resolved_versioned)
    latest_runs: dict[str, int] = {}
    for info in infos:
        row = info.applied
        assert row is not None
        if row.is_synthetic:
            continue
        if row.version is not None:
            match = resolved_versioned.get(row.parsed_version)  # type: ignore[arg-type]
            if match is not None and not info.deleted:
                info.resolved = match
                pending_versioned.pop(match.version, None)  # type: ignore[arg-type]
        else:
            info.resolved = resolved_repeatable.get(row.description)
            if not info.deleted:
                latest_runs[row.description] = max(
                    latest_runs.get(row.description, row.installed_rank), row.installed_rank
                )
    pending_repeatable = dict(resolved_repeatable)
    for info in infos:
        row = info.applied
        assert row is not None
        if (
            row.version is None
            and not row.is_synthetic
            and info.resolved is not None
            and not info.deleted
            and row.installed_rank == latest_runs.get(row.description)
            and info.resolved.checksum_matches(row.checksum)
        ):
            pending_repeatable.pop(row.description, None)

    state = InfoState(infos, baseline, last_applied, last_resolved, target_version)
    for info in infos:
        info.state = _applied_state(info, state, latest_runs)
    waiting = sorted(
        list(pending_versioned.values()) + list(pending_repeatable.values()), key=lambda r: order_key(r.script)
    )
    for item in waiting:
        info = Info(item, None)
        info.state = _unapplied_state(item, state, target, out_of_order)
        infos.append(info)
    if target.kind == "next":
        # Only the first pending migration is in reach; everything pending after it is above target.
        first = True
        for info in infos:
            if info.applied is None and info.state == PENDING:
                if not first and info.resolved is not None and info.resolved.version is not None:
                    info.state = ABOVE_TARGET
                first = False
    return state


def _applied_state(info: Info, context: InfoState, latest_runs: dict[str, int]) -> str:
    row = info.applied
    assert row is not None
    if info.deleted:
        return DELETED
    if row.is_baseline:
        return BASELINE
    if row.type in ("SCHEMA", "DELETE"):
        return SUCCESS
    if info.resolved is None:
        version = row.parsed_version
        if version is None or (context.last_resolved is not None and version < context.last_resolved):
            return MISSING if row.success else MISSING_FAILED
        return FUTURE if row.success else FUTURE_FAILED
    if not row.success:
        return FAILED
    if row.version is None:
        if row.installed_rank == latest_runs.get(row.description):
            return SUCCESS if info.resolved.checksum_matches(row.checksum) else OUTDATED
        return SUPERSEDED
    if info.out_of_order:
        return OUT_OF_ORDER
    return SUCCESS


def _unapplied_state(item: Resolved, context: InfoState, target: Target, out_of_order: bool) -> str:
    version = item.version
    if version is not None:
        if context.baseline is not None and version < context.baseline:
            return BELOW_BASELINE
        if context.baseline is not None and version == context.baseline:
            return BASELINE_IGNORED
        if target.kind != "next" and context.target is not None and version > context.target:
            return ABOVE_TARGET
        if context.last_applied is not None and version < context.last_applied and not out_of_order:
            return IGNORED
    if item.script.options.should_execute is False:
        return IGNORED
    return PENDING


# --------------------------------------------------------------------------- validation


def _pattern_matches(patterns: Iterable[str], info: Info) -> bool:
    for pattern in patterns:
        kind, _, state = pattern.lower().partition(":")
        kind_ok = kind == "*" or (kind == "repeatable") == info.is_repeatable
        if kind_ok and (state == "*" or state == info.state.lower()):
            return True
    return False


def _state_ignored(patterns: Iterable[str], state_name: str, repeatable: bool) -> bool:
    for pattern in patterns:
        kind, _, state = pattern.lower().partition(":")
        if (kind == "*" or (kind == "repeatable") == repeatable) and state in ("*", state_name):
            return True
    return False


def validation_errors(state: InfoState, patterns: Sequence[str]) -> list[str]:
    """Return Flyway's validation messages for every invalid migration, in info order (spec 4.2)."""
    errors: list[str] = []
    ok_always = (ABOVE_TARGET, DELETED)
    for info in state.infos:
        if info.state in ok_always or _pattern_matches(patterns, info):
            continue
        repeatable = info.is_repeatable
        future_ignored = _state_ignored(patterns, "future", repeatable)
        if info.state in FAILED_STATES and not (info.state == FUTURE_FAILED and future_ignored):
            if repeatable:
                errors.append(
                    f"Detected failed repeatable migration: {info.description}.\nPlease remove any "
                    "half-completed changes then run repair to fix the schema history."
                )
            else:
                errors.append(
                    f"Detected failed migration to version {info.version_text} ({info.description}).\n"
                    "Please remove any half-completed changes then run repair to fix the schema history."
                )
            continue
        if (
            info.applied is not None
            and info.resolved is None
            and not info.is_synthetic
            and info.state not in (SUPERSEDED, FUTURE_FAILED)
        ):
            if info.state == FUTURE and future_ignored:
                continue
            errors.append(
                f"Detected applied migration not resolved locally: {info.label}.\nIf you removed this "
                "migration intentionally, run repair to mark the migration as deleted."
            )
            continue
        pending_ignored = _state_ignored(patterns, "pending", repeatable)
        if info.state == IGNORED:
            errors.append(
                f"Detected resolved migration not applied to database: {info.label}.\nTo ignore this "
                "migration, set -ignoreMigrationPatterns='*:ignored'. To allow executing this migration, "
                "set -outOfOrder=true."
            )
            continue
        if info.state == PENDING and not pending_ignored:
            errors.append(
                f"Detected resolved migration not applied to database: {info.label}.\nTo fix this error, "
                "either run migrate, or set -ignoreMigrationPatterns='*:pending'."
            )
            continue
        if info.state == OUTDATED and not pending_ignored:
            errors.append(
                f"Detected outdated resolved repeatable migration that should be re-applied to database: "
                f"{info.description}.\nRun migrate to execute this migration."
            )
            continue
        if info.applied is None or info.resolved is None or info.is_synthetic:
            continue
        version = info.applied.parsed_version
        if version is not None and state.baseline is not None and not version > state.baseline:
            continue
        error = _mismatch(info)
        if error:
            errors.append(error)
    return errors


def _mismatch(info: Info) -> str | None:
    row, resolved = info.applied, info.resolved
    assert row is not None and resolved is not None
    what = f"version {row.version}" if row.version else f"description {row.description}"
    tail = "\nEither revert the changes to the migration, or run repair to update the schema history."
    if row.type != "SQL":
        return (
            f"Migration type mismatch for migration {what}\n-> Applied to database : {row.type}\n"
            f"-> Resolved locally    : SQL{tail}"
        )
    if row.version is not None and row.checksum is not None and not resolved.checksum_matches(row.checksum):
        return (
            f"Migration checksum mismatch for migration {what}\n-> Applied to database : {row.checksum}\n"
            f"-> Resolved locally    : {resolved.checksum}{tail}"
        )
    if abbreviate_description(resolved.description) != row.description:
        return (
            f"Migration description mismatch for migration {what}\n-> Applied to database : {row.description}\n"
            f"-> Resolved locally    : {resolved.description}{tail}"
        )
    return None


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Applied:
    """One migration the run applied (or, in a dry run, would apply)."""

    category: str
    version: str | None
    raw_version: str | None
    description: str
    script: str
    filepath: str
    execution_ms: int
    transactional: bool = True


@dataclass
class MigrateReport:
    """What ``migrate`` did."""

    initial_version: str | None
    target_version: str | None
    applied: list[Applied] = field(default_factory=list)
    dry_run: bool = False
    baselined: bool = False
    created_table: bool = False
    created_schemas: tuple[str, ...] = ()
    warnings: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Return how many migrations ran (or would run)."""
        return len(self.applied)


@dataclass
class RepairReport:
    """What ``repair`` changed."""

    actions: list[str] = field(default_factory=list)
    removed: list[Info] = field(default_factory=list)
    deleted: list[Info] = field(default_factory=list)
    aligned: list[Info] = field(default_factory=list)


@dataclass(frozen=True)
class BaselineReport:
    """What ``baseline`` did."""

    version: str
    description: str
    created: bool  # False when the same baseline was already there


# --------------------------------------------------------------------------- the engine


class Engine:
    """Flyway's commands on one database connection (autocommit; the engine opens transactions itself)."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        settings: MigrationSettings,
        *,
        clock: Callable[[], datetime] | None = None,
        on_lock_wait: Callable[[int], None] | None = None,
    ) -> None:
        if not conn.autocommit:
            conn.autocommit = True
        self.conn = conn
        self.settings = settings
        self.clock = clock or datetime.now
        self.on_lock_wait = on_lock_wait
        self._user: str | None = None
        self._scripts: tuple[Script, ...] | None = None
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
        self.timestamp = self.clock().strftime("%Y-%m-%d %H:%M:%S")

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
        sep = self.settings.placeholder_syntax.separator
        values = {k.lower(): v for k, v in self.settings.placeholders.items()}
        builtins = {
            "defaultSchema": self.schema,
            "user": self.original_role,
            "database": self.database,
            "timestamp": self.timestamp,
            "workingDirectory": os.getcwd(),
            "table": self.settings.table,
            "environment": self.settings.environment,
        }
        values.update({f"flyway{sep}{k}".lower(): v for k, v in builtins.items()})
        return values

    def scripts(self) -> tuple[Script, ...]:
        """Return the discovered scripts (scanned once per engine)."""
        if self._scripts is None:
            s = self.settings
            self._scripts = discover(s.locations, s.naming, s.encoding, s.validate_migration_naming).scripts
        return self._scripts

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
        row = self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s)", (schema,)
        ).fetchone()
        return bool(row and row[0])

    # ------------------------------------------------------------------ info / validate

    def info(self) -> InfoState:
        """Return the state of every migration, as ``flyway info`` shows it."""
        return self.state()

    def validate(self, extra_patterns: Sequence[str] = ()) -> InfoState:
        """Validate scripts against the history (spec 4.2); return the state when valid.

        Raises VerificationFailed (exit 5) carrying Flyway's messages in ``errors``.
        """
        patterns = list(self.settings.ignore_migration_patterns) + list(extra_patterns)
        state = self.state()
        errors: list[str] = []
        if not self._schema_exists(self.schema) and state.infos and not _state_ignored(patterns, "pending", False):
            errors.append(f"Schema {quote_java(self.schema)} doesn't exist yet")
        else:
            errors = validation_errors(state, patterns)
        if errors:
            raise validation_failed(errors)
        return state

    # ------------------------------------------------------------------ migrate

    def migrate(self, dry_run: bool = False, on_applied: Callable[[Applied], None] | None = None) -> MigrateReport:
        """Apply the pending migrations, one transaction each (spec 4.1); return what ran.

        Raises VerificationFailed when validation fails, MigrationFailed (exit 4) when a
        migration fails (after rolling it back), LockHeld when another run holds the lock.
        """
        target = Target.parse(self.settings.target)
        if dry_run:
            return self._plan(target)
        acquire_lock(
            self.conn, self.history.lock_key, self.settings.lock_retry_count, session=True, on_wait=self.on_lock_wait
        )
        try:
            return self._migrate_locked(target, on_applied)
        finally:
            release_lock(self.conn, self.history.lock_key)

    def _plan(self, target: Target) -> MigrateReport:
        if self.settings.validate_on_migrate:
            self.validate(["*:pending"])
        state = self.state(target)
        self._check_target(state, target)
        report = MigrateReport(state.schema_version, None, dry_run=True)
        pending = state.pending()
        if not self.history.exists(self.conn):
            report.created_table = True
            schemas = self.settings.schemas or (self.schema,)
            if self.settings.baseline_on_migrate and any(
                self._schema_exists(s) and not self.schema_empty(s) for s in schemas
            ):
                # migrate would baseline first; what is at or below the baseline would not run.
                report.baselined = True
                floor = Version.parse(self.settings.baseline_version)
                pending = [
                    i for i in pending if i.resolved is None or i.resolved.version is None or i.resolved.version > floor
                ]
        for info in pending:
            report.applied.append(self._describe(info, 0, self._transactional(info.resolved.script)))  # type: ignore[union-attr]
        report.target_version = _last_version(report.applied) or None
        return report

    def _migrate_locked(self, target: Target, on_applied: Callable[[Applied], None] | None) -> MigrateReport:
        if self.settings.validate_on_migrate:
            self.validate(["*:pending"])
        report = MigrateReport(None, None)
        report.created_schemas = self._create_schemas()
        if not self.history.exists(self.conn):
            non_empty = [s for s in (self.settings.schemas or (self.schema,)) if not self.schema_empty(s)]
            if non_empty and self.settings.baseline_on_migrate:
                self._baseline_locked(self.settings.baseline_version, self.settings.baseline_description)
                report.baselined = True
            elif non_empty:
                names = ", ".join(quote_java(s) for s in non_empty)
                raise ConfigError(
                    f"Found non-empty schema(s) {names} but no schema history table. Use baseline() or set "
                    "baselineOnMigrate to true to initialize the schema history table.",
                    hint="run 'opskit migrate baseline' or set migrations.baseline_on_migrate = true",
                )
            else:
                with self.conn.transaction():
                    self.history.create(self.conn)
                report.created_table = True
        state = self.state(target)
        report.initial_version = state.schema_version
        self._check_target(state, target)
        values = self.placeholder_values()
        if self.settings.group:
            # group = true: every pending migration in one transaction, all or nothing.
            try:
                with self.conn.transaction():
                    self._apply_pending(state, target, values, report, on_applied)
            except MigrationFailed:
                report.applied.clear()
                raise
        else:
            self._apply_pending(state, target, values, report, on_applied)
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
        while True:
            failed = state.failed(
                future_ignored=_state_ignored(self.settings.ignore_migration_patterns, "future", False)
            )
            if failed:
                info = failed[0]
                raise MigrationFailed(
                    f"Schema {quote_java(self.schema)} contains a failed migration to version {info.label} !",
                    hint="remove its half-completed changes, then run 'opskit migrate repair'",
                )
            pending = state.pending()
            if not pending:
                break
            applied = self._apply(pending[0], values)
            report.applied.append(applied)
            if on_applied is not None:
                on_applied(applied)
            if target.kind == "next":
                break
            state = self.state(target)

    def _check_target(self, state: InfoState, target: Target) -> None:
        if target.kind != "version" or target.optional or target.version is None:
            return
        known = {i.version for i in state.infos if i.version is not None}
        if target.version not in known:
            raise ConfigError(
                f"No migration with a target version {target.version} could be found. Ensure target is specified "
                "correctly and the migration exists.",
                hint="fix --target/migrations.target, or append '?' to allow a missing target",
            )

    def _create_schemas(self) -> tuple[str, ...]:
        if not self.settings.create_schemas or not self.settings.schemas:
            return ()
        missing = [s for s in self.settings.schemas if not self._schema_exists(s)]
        if not missing:
            return ()
        with self.conn.transaction():
            for schema in missing:
                self.conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            if not self.history.exists(self.conn):
                self.history.create(self.conn)
                self.history.insert(
                    self.conn,
                    NewRow(
                        None,
                        SCHEMA_DESCRIPTION,
                        "SCHEMA",
                        ",".join(quote_java(s) for s in missing),
                        None,
                        self.installed_by,
                        0,
                        True,
                    ),
                )
        return tuple(missing)

    def schema_empty(self, schema: str) -> bool:
        """Return True when ``schema`` holds no relation, type or function outside extensions (PG doEmpty)."""
        row = self.conn.execute(
            """
            SELECT NOT EXISTS (
                SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = %(s)s AND c.relkind IN ('r', 'v', 'S', 't', 'm', 'p', 'f')
                  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
            ) AND NOT EXISTS (
                SELECT 1 FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
                WHERE n.nspname = %(s)s AND t.typcategory NOT IN ('A', 'C')
                  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.objid = t.oid AND d.deptype = 'e')
            ) AND NOT EXISTS (
                SELECT 1 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                WHERE n.nspname = %(s)s
                  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
            )
            """,
            {"s": schema},
        ).fetchone()
        return bool(row and row[0])

    def _transactional(self, script: Script) -> bool:
        if script.options.execute_in_transaction is not None:
            return script.options.execute_in_transaction
        if not self.settings.execute_in_transaction:
            return False
        statements = split_statements(script.text)
        kinds = {can_run_in_transaction(s, self.server_version_num) for s in statements}
        if kinds == {False}:
            return False
        if kinds == {True, False}:
            if not self.settings.mixed:
                raise ConfigError(
                    f"Detected both transactional and non-transactional statements within the same migration "
                    f"(even though mixed is false). Offending migration: {script.script}",
                    hint="move the non-transactional statements (CREATE INDEX CONCURRENTLY, ...) into their own "
                    "migration, or set migrations.mixed = true",
                )
            return False
        return True

    def _reset_session(self) -> None:
        # Flyway restores role and search_path before each migration (spec 4.1 item 6).
        self.conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(self.original_role)))
        path = self.original_search_path
        first = path.split(",")[0].strip().strip('"') if path else ""
        if self._schema_exists(self.schema) and first != self.schema:
            path = f"{quote_java(self.schema)},{path}" if path else quote_java(self.schema)
        self.conn.execute("SELECT set_config('search_path', %s, false)", (path,))

    def _describe(self, info: Info, elapsed_ms: int, transactional: bool) -> Applied:
        script = info.resolved.script  # type: ignore[union-attr]
        return Applied(
            "Versioned" if script.version else "Repeatable",
            script.version.text if script.version else None,
            script.version.raw if script.version else None,
            script.description,
            script.script,
            str(script.path),
            elapsed_ms,
            transactional,
        )

    def _apply(self, info: Info, values: dict[str, str]) -> Applied:
        resolved = info.resolved
        assert resolved is not None
        script = resolved.script
        text = executable_text(script, values, self.settings.placeholder_syntax)
        transactional = self._transactional(script)
        row = NewRow(
            version=script.version.text if script.version else None,
            description=abbreviate_description(script.description),
            type="SQL",
            script=abbreviate_script(script.script),
            checksum=resolved.checksum,
            installed_by=self.installed_by,
            execution_time=0,
            success=True,
        )
        log.info("applying migration", migration=script.script, transactional=transactional)
        self._reset_session()
        started = time.perf_counter_ns()

        def elapsed() -> int:
            return int((time.perf_counter_ns() - started) / 1_000_000)

        if transactional:
            try:
                # Inside a group this is a savepoint of the group's transaction.
                with self.conn.transaction():
                    if split_statements(text):
                        self.conn.execute(text)
                    ms = elapsed()
                    self.history.insert(self.conn, _with_time(row, ms))
            except psycopg.Error as exc:
                raise _failure(script, exc, rolled_back=True) from exc
        else:
            if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                raise ConfigError(
                    f"migration {script.script} cannot run inside a transaction, and group = true "
                    "puts every migration in one",
                    hint="set migrations.group = false",
                )
            for statement in split_statements(text):
                try:
                    self.conn.execute(statement)
                except psycopg.Error as exc:
                    self._record_failure(_with_time(row, elapsed()))
                    raise _failure(script, exc, rolled_back=False) from exc
            ms = elapsed()
            self.history.insert(self.conn, _with_time(row, ms))
        applied = self._describe(info, ms, transactional)
        log.info("applied migration", migration=script.script, ms=applied.execution_ms)
        return applied

    def _record_failure(self, row: NewRow) -> None:
        try:
            with self.conn.transaction():
                self.history.insert(
                    self.conn,
                    NewRow(
                        row.version,
                        row.description,
                        row.type,
                        row.script,
                        row.checksum,
                        row.installed_by,
                        row.execution_time,
                        False,
                    ),
                )
        except psycopg.Error as exc:
            log.error("could not record the failed migration", error=str(exc))

    # ------------------------------------------------------------------ baseline

    def baseline(self, version: str | None = None, description: str | None = None) -> BaselineReport:
        """Baseline the database at ``version`` (spec 4.4) under the lock.

        Raises VerificationFailed when the table already holds a different baseline or migrations.
        """
        acquire_lock(
            self.conn, self.history.lock_key, self.settings.lock_retry_count, session=True, on_wait=self.on_lock_wait
        )
        try:
            return self._baseline_locked(
                version or self.settings.baseline_version, description or self.settings.baseline_description
            )
        finally:
            release_lock(self.conn, self.history.lock_key)

    def _baseline_locked(self, version_text: str, description: str) -> BaselineReport:
        try:
            version = Version.parse(version_text)
        except ValueError:
            raise ConfigError(f"invalid baseline version '{version_text}'") from None
        table = self.history.display
        if not self.history.exists(self.conn):
            with self.conn.transaction():
                created_schema = False
                if not self._schema_exists(self.schema):
                    if not self.settings.create_schemas:
                        raise ConfigError(
                            f"Schema {quote_java(self.schema)} doesn't exist yet",
                            hint="create it, or set migrations.create_schemas = true",
                        )
                    self.conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
                    created_schema = True
                self.history.create(
                    self.conn,
                    baseline=NewRow(
                        version.text, description, "BASELINE", description, None, self.installed_by, 0, True
                    ),
                )
                if created_schema:
                    self.history.insert(
                        self.conn,
                        NewRow(
                            None,
                            SCHEMA_DESCRIPTION,
                            "SCHEMA",
                            quote_java(self.schema),
                            None,
                            self.installed_by,
                            0,
                            True,
                        ),
                    )
            return BaselineReport(version.text, description, created=True)
        rows = self.history.read(self.conn)
        marker = next((r for r in rows[:2] if r.is_baseline), None)
        if marker is not None:
            if marker.parsed_version == version and marker.description == description:
                return BaselineReport(version.text, description, created=False)
            raise VerificationFailed(
                f"Unable to baseline schema history table {table} with ({version.text},{description}) as it has "
                f"already been baselined with ({marker.version},{marker.description})\nNeed to reset your "
                "baseline? Learn more: https://rd.gt/3CdwkXD",
            )
        if any(r.type == "SCHEMA" for r in rows) and version == Version.parse("0"):
            raise VerificationFailed(
                f"Unable to baseline schema history table {table} with version 0 as this "
                "version was used for schema creation"
            )
        if any(not r.is_synthetic for r in rows):
            raise VerificationFailed(
                f"Unable to baseline schema history table {table} as it already contains migrations"
            )
        if not rows:
            raise VerificationFailed(
                f"Unable to baseline schema history table {table} as it already exists, and is empty.\nDelete the "
                "schema history table with the clean command, and run baseline again."
            )
        raise VerificationFailed(f"Unable to baseline schema history table {table} as it already contains migrations")

    # ------------------------------------------------------------------ repair

    def repair(self) -> RepairReport:
        """Remove failed rows, mark missing migrations deleted, realign checksums (spec 4.5), under the lock."""
        acquire_lock(
            self.conn, self.history.lock_key, self.settings.lock_retry_count, session=True, on_wait=self.on_lock_wait
        )
        try:
            with self.conn.transaction():
                return self._repair_locked()
        finally:
            release_lock(self.conn, self.history.lock_key)

    def _repair_locked(self) -> RepairReport:
        report = RepairReport()
        latest = Target("latest")
        state = self.state(latest, out_of_order=True)
        for info in state.infos:
            if info.state in FAILED_STATES and info.applied is not None:
                self.history.delete_failed(self.conn, info.applied)
                report.removed.append(info)
        if report.removed:
            report.actions.append("Removed failed migrations")
            state = self.state(latest, out_of_order=True)
        patterns = self.settings.ignore_migration_patterns
        for info in state.infos:
            row = info.applied
            if (
                row is None
                or info.is_synthetic
                or info.state not in (MISSING, MISSING_FAILED, FUTURE, FUTURE_FAILED)
                or _pattern_matches(patterns, info)
            ):
                continue
            self.history.insert(
                self.conn,
                NewRow(
                    row.version, row.description, "DELETE", row.script, row.checksum, self.installed_by, 0, row.success
                ),
            )
            report.deleted.append(info)
        if report.deleted:
            report.actions.append("Marked missing migrations as deleted")
        for info in state.infos:
            row, resolved = info.applied, info.resolved
            if row is None or resolved is None or info.is_synthetic or info.state in (DELETED, IGNORED):
                continue
            description = abbreviate_description(resolved.description)
            if row.version is not None:
                if row.checksum == resolved.checksum and row.description == description and row.type == "SQL":
                    continue
            elif not (row.checksum == resolved.equivalent_checksum and row.checksum != resolved.checksum):
                continue
            self.history.realign(
                self.conn, row.installed_rank, description, row.type if row.is_synthetic else "SQL", resolved.checksum
            )
            report.aligned.append(info)
        if report.aligned:
            report.actions.append("Aligned applied migration checksums")
        return report


def _with_time(row: NewRow, ms: int) -> NewRow:
    return NewRow(row.version, row.description, row.type, row.script, row.checksum, row.installed_by, ms, row.success)


def _last_version(applied: Iterable[Applied]) -> str:
    versions = [a.version for a in applied if a.version]
    return versions[-1] if versions else ""


def _failure(script: Script, exc: psycopg.Error, rolled_back: bool) -> MigrationFailed:
    diag = exc.diag
    reason = (diag.message_primary or str(exc)).strip()
    detail = f" (SQL State: {diag.sqlstate})" if diag.sqlstate else ""
    where = f" at position {diag.statement_position}" if diag.statement_position else ""
    outcome = (
        "its changes were rolled back and no history row was written"
        if rolled_back
        else "it ran outside a transaction, so its completed statements stay and a failed row was recorded"
    )
    error = MigrationFailed(
        f"Migration {script.script} failed: {reason}{detail}{where}; {outcome}",
        hint="fix the migration and run migrate again"
        if rolled_back
        else "undo its completed statements, run 'opskit migrate repair', fix it and migrate again",
    )
    error.migration = script.script  # type: ignore[attr-defined]
    error.database_error = reason  # type: ignore[attr-defined]
    return error


def validation_failed(errors: Sequence[str]) -> VerificationFailed:
    """Return the VerificationFailed Flyway's validate raises, with every message in ``errors``."""
    error = VerificationFailed(
        "Validate failed: Migrations have failed validation\n" + "\n".join(errors),
        hint="see 'opskit migrate info'",
    )
    error.errors = list(errors)  # type: ignore[attr-defined]
    return error


def sort_infos_for_display(infos: Sequence[Info]) -> list[Info]:
    """Return infos with applied rows by rank first, then the rest in resolution order."""
    applied = sorted((i for i in infos if i.applied is not None), key=lambda i: i.applied.installed_rank)  # type: ignore[union-attr]
    rest = [i for i in infos if i.applied is None]
    return applied + rest


def schema_version(
    conn: psycopg.Connection[Any], schema: str = "public", table: str = "flyway_schema_history"
) -> str | None:
    """Return the schema version Flyway's ``info`` would report, from the history rows alone.

    The highest applied versioned row that no DELETE marker cancelled (baselines count), or
    None when the table is missing or holds no versioned row. Needs no migration scripts.
    """
    rows = HistoryTable(schema, table).read(conn)
    return build_state([], rows, Target("latest"), out_of_order=True).schema_version
