"""Whether a migration runs in a transaction, and the error a failed migration raises."""

from __future__ import annotations

import psycopg

from opskit.config.migrations import MigrationSettings
from opskit.core.errors import ConfigError, MigrationFailed
from opskit.flyway.scripts import Script
from opskit.flyway.statements import can_run_in_transaction, split_statements


def runs_in_transaction(script: Script, settings: MigrationSettings, server_version_num: int) -> bool:
    """Return True when ``script`` runs inside a transaction (``docs/flyway-compat.md`` §4.1 item 5).

    The script's ``.conf`` decides first, then ``executeInTransaction``, then its statements: all
    transactional -> True, none -> False, both -> False with ``mixed``. Raises ConfigError for a
    script mixing both kinds without ``mixed``.
    """
    if script.options.execute_in_transaction is not None:
        return script.options.execute_in_transaction
    if not settings.execute_in_transaction:
        return False
    statements = split_statements(script.text)
    kinds = {can_run_in_transaction(s, server_version_num) for s in statements}
    if kinds == {False}:
        return False
    if kinds == {True, False}:
        if not settings.mixed:
            raise ConfigError(
                f"Detected both transactional and non-transactional statements within the same migration "
                f"(even though mixed is false). Offending migration: {script.script}",
                hint="move the non-transactional statements (CREATE INDEX CONCURRENTLY, ...) into their own "
                "migration, or set migrations.mixed = true",
            )
        return False
    return True


def migration_failure(script: Script, exc: psycopg.Error, rolled_back: bool) -> MigrationFailed:
    """Return the MigrationFailed for ``script`` failing with ``exc``; ``rolled_back`` says what stayed behind."""
    diag = exc.diag
    reason = (diag.message_primary or str(exc)).strip()
    detail = f" (SQL State: {diag.sqlstate})" if diag.sqlstate else ""
    where = f" at position {diag.statement_position}" if diag.statement_position else ""
    outcome = (
        "its changes were rolled back and no history row was written"
        if rolled_back
        else "it ran outside a transaction, so its completed statements stay and a failed row was recorded"
    )
    return MigrationFailed(
        f"Migration {script.script} failed: {reason}{detail}{where}; {outcome}",
        hint="fix the migration and run migrate again"
        if rolled_back
        else "undo its completed statements, run 'opskit migrate repair', fix it and migrate again",
        migration=script.script,
        database_error=reason,
    )
