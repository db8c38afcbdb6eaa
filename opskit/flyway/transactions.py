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


def migration_failure(script: Script, exc: psycopg.Error, rolled_back: bool, changed: bool = True) -> MigrationFailed:
    """Return the MigrationFailed for ``script`` failing with ``exc``; ``rolled_back`` and ``changed`` say what stayed.

    ``changed`` (of a script run outside a transaction, ``rolled_back`` False) is False when none
    of its completed statements could change the database (``SELECT 1``, ``SET``): only its failed
    row stays.
    """
    diag = exc.diag
    reason = (diag.message_primary or str(exc)).strip()
    detail = f" (SQL State: {diag.sqlstate})" if diag.sqlstate else ""
    where = f" at position {diag.statement_position}" if diag.statement_position else ""
    if rolled_back:
        outcome = "its changes were rolled back and no history row was written"
        hint = "fix the migration and run migrate again"
    elif changed:
        outcome = "it ran outside a transaction, so its completed statements stay and a failed row was recorded"
        hint = "undo its completed statements, run 'opskit migrate repair', fix it and migrate again"
    else:
        outcome = (
            "it ran outside a transaction, but none of its completed statements could change the database "
            "(read-only); a failed row was recorded"
        )
        hint = "run 'opskit migrate repair' (it removes the failed row), fix the migration and migrate again"
    return MigrationFailed(
        f"Migration {script.script} failed: {reason}{detail}{where}; {outcome}",
        hint=hint,
        migration=script.script,
        database_error=reason,
    )
