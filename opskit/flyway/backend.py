"""One interface for the two migration backends, chosen once from ``migrations.engine``.

``engine = "opskit"`` (the default) is the built-in :class:`~opskit.flyway.engine.Engine`;
``engine = "flyway"`` runs a real Flyway binary (:mod:`opskit.flyway.cli_backend`). Both return
the typed results of :mod:`opskit.flyway.results`, so the migrate feature never asks which one runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Protocol

from opskit.config.migrations import MigrationSettings
from opskit.config.model import TargetConfig
from opskit.flyway.engine import Engine
from opskit.flyway.results import Applied, BaselineReport, InfoOutcome, MigrateReport, RepairReport
from opskit.flyway.state import InfoState
from opskit.pg import connection


class MigrationBackend(Protocol):
    """Flyway's commands against one target database."""

    supports_guarded_runs: bool  # True when --backup-first, --rehearse and --restore-on-failure can run

    def info(self, target: TargetConfig) -> InfoOutcome:
        """Return every migration with its state (``docs/flyway-compat.md`` §4.3)."""
        ...

    def validate(self, target: TargetConfig) -> InfoState:
        """Return the state when the scripts match the history. Raises MigrationValidationFailed (exit 5)."""
        ...

    def migrate(
        self, target: TargetConfig, *, dry_run: bool = False, on_applied: Callable[[Applied], None] | None = None
    ) -> MigrateReport:
        """Apply the pending migrations (list them for a dry run). Raises MigrationFailed, VerificationFailed."""
        ...

    def baseline(self, target: TargetConfig, version: str | None, description: str | None) -> BaselineReport:
        """Baseline the target at ``version``. Raises VerificationFailed when it already has migrations."""
        ...

    def repair(self, target: TargetConfig) -> RepairReport:
        """Remove failed rows, mark missing ones deleted, realign checksums; return what changed."""
        ...


class EngineBackend:
    """The built-in engine, on a fresh autocommit connection per command."""

    supports_guarded_runs = True

    def __init__(
        self,
        settings: MigrationSettings,
        *,
        clock: Callable[[], datetime],
        on_lock_wait: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.on_lock_wait = on_lock_wait

    @contextmanager
    def open(self, target: TargetConfig, dbname: str | None = None) -> Iterator[Engine]:
        """Yield an Engine connected to ``target`` (or to database ``dbname`` on its server); close it after."""
        conn = connection.connect(target, dbname=dbname, autocommit=True, application_name="opskit-migrate")
        try:
            yield Engine(conn, self.settings, clock=self.clock, on_lock_wait=self.on_lock_wait)
        finally:
            conn.close()

    def info(self, target: TargetConfig) -> InfoOutcome:
        """Return the state with what ``info --json`` needs. Raises UnreachableError, ConfigError."""
        with self.open(target) as engine:
            state = engine.info()
            schemas = self.settings.schemas or (engine.schema,)
            return InfoOutcome(
                target.name,
                state,
                ", ".join(self.settings.schemas),
                engine.database,
                all(engine.schema_empty(s) for s in schemas),
                engine.conn.info.parameter_status("TimeZone"),
            )

    def validate(self, target: TargetConfig) -> InfoState:
        """Validate the scripts against the history. Raises MigrationValidationFailed (exit 5)."""
        with self.open(target) as engine:
            return engine.validate()

    def migrate(
        self,
        target: TargetConfig,
        *,
        dry_run: bool = False,
        on_applied: Callable[[Applied], None] | None = None,
        dbname: str | None = None,
    ) -> MigrateReport:
        """Apply the pending migrations to ``target`` (or ``dbname`` on its server) and return what ran.

        Raises VerificationFailed, MigrationFailed (exit 4), LockHeld (exit 7), ConfigError.
        """
        with self.open(target, dbname) as engine:
            return engine.migrate(dry_run=dry_run, on_applied=on_applied)

    def baseline(self, target: TargetConfig, version: str | None, description: str | None) -> BaselineReport:
        """Baseline the target at ``version``. Raises VerificationFailed when it already has migrations."""
        with self.open(target) as engine:
            return engine.baseline(version, description)

    def repair(self, target: TargetConfig) -> RepairReport:
        """Repair the history and return what changed. Raises LockHeld."""
        with self.open(target) as engine:
            return engine.repair()


def backend_for(
    settings: MigrationSettings,
    *,
    clock: Callable[[], datetime],
    on_lock_wait: Callable[[int], None] | None = None,
) -> MigrationBackend:
    """Return the backend ``settings.engine`` names: the built-in engine, or the Flyway CLI for ``"flyway"``."""
    if settings.engine == "flyway":
        from opskit.flyway.cli_backend import FlywayCliBackend

        return FlywayCliBackend(settings)
    return EngineBackend(settings, clock=clock, on_lock_wait=on_lock_wait)
