"""Applying one pending migration: its SQL, its history row and its per-script callbacks (``docs/flyway-compat.md`` §4.1).

:class:`~opskit.flyway.engine.Engine` decides what runs and in which order; this module runs
one script on the engine's autocommit connection:

* a transactional script runs in its own transaction (a savepoint inside ``group = true``)
  together with its history row, so a failure leaves neither a row nor a partial change;
* a script PostgreSQL refuses inside a transaction runs statement by statement in autocommit;
  if one fails, a row with ``success = FALSE`` is written, as Flyway does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg

from opskit.core.errors import ConfigError, OpskitError
from opskit.core.log import get_logger
from opskit.flyway.callbacks import CallbackRunner
from opskit.flyway.history import HistoryTable, NewRow
from opskit.flyway.names import abbreviate_description, abbreviate_script
from opskit.flyway.results import Applied
from opskit.flyway.state import Info
from opskit.flyway.statements import split_statements
from opskit.flyway.transactions import migration_failure

# The runner's own log lines: they keep the logger name they have always carried.
log = get_logger("opskit.flyway.engine")


def applied_entry(info: Info, elapsed_ms: int, transactional: bool) -> Applied:
    """Return the report entry of ``info``'s script (a dry run's plan uses it with 0 ms)."""
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


def apply_script(
    conn: psycopg.Connection[Any],
    history: HistoryTable,
    callbacks: CallbackRunner,
    info: Info,
    text: str,
    transactional: bool,
    installed_by: str,
    reset_session: Callable[[], None],
) -> Applied:
    """Run ``text`` (``info``'s script, placeholders replaced) and record it in ``history``; return what ran.

    Raises MigrationFailed (exit 4) when the script fails, ConfigError when a script that cannot
    run in a transaction meets ``group = true``'s open one.
    """
    resolved = info.resolved
    assert resolved is not None
    script = resolved.script
    row = NewRow(
        version=script.version.text if script.version else None,
        description=abbreviate_description(script.description),
        type="SQL",
        script=abbreviate_script(script.script),
        checksum=resolved.checksum,
        installed_by=installed_by,
        execution_time=0,
        success=True,
    )
    log.info("applying migration", migration=script.script, transactional=transactional)
    reset_session()
    started = time.perf_counter_ns()

    def elapsed() -> int:
        return int((time.perf_counter_ns() - started) / 1_000_000)

    if transactional:
        try:
            # Inside a group this is a savepoint of the group's transaction.
            with conn.transaction():
                callbacks.fire_each("beforeEachMigrate", transactional=True)
                if split_statements(text):
                    conn.execute(text)
                callbacks.fire_each("afterEachMigrate", transactional=True)
                ms = elapsed()
                history.insert(conn, _with_time(row, ms))
        except psycopg.Error as exc:
            _after_each_error(conn, callbacks, transactional=True)
            raise migration_failure(script, exc, rolled_back=True) from exc
    else:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            raise ConfigError(
                f"migration {script.script} cannot run inside a transaction, and group = true "
                "puts every migration in one",
                hint="set migrations.group = false",
            )
        callbacks.fire_each("beforeEachMigrate", transactional=False)
        for statement in split_statements(text):
            try:
                conn.execute(statement)
            except psycopg.Error as exc:
                _after_each_error(conn, callbacks, transactional=False)
                _record_failure(conn, history, _with_time(row, elapsed()))
                raise migration_failure(script, exc, rolled_back=False) from exc
        callbacks.fire_each("afterEachMigrate", transactional=False)
        ms = elapsed()
        history.insert(conn, _with_time(row, ms))
    applied = applied_entry(info, ms, transactional)
    log.info("applied migration", migration=script.script, ms=applied.execution_ms)
    return applied


def _after_each_error(conn: psycopg.Connection[Any], callbacks: CallbackRunner, transactional: bool) -> None:
    # On PostgreSQL a failed statement aborts the migration's transaction, where Flyway's
    # afterEachMigrateError could not run a single statement; opskit runs it just after the
    # rollback, in a transaction of its own (docs/migrations.md). Its failure is only logged.
    try:
        if transactional:
            with conn.transaction():
                callbacks.fire_each("afterEachMigrateError", transactional=True)
        else:
            callbacks.fire_each("afterEachMigrateError", transactional=False)
    except (OpskitError, psycopg.Error) as exc:
        log.error("the afterEachMigrateError callback failed too", error=str(exc))


def _record_failure(conn: psycopg.Connection[Any], history: HistoryTable, row: NewRow) -> None:
    try:
        with conn.transaction():
            history.insert(
                conn,
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


def _with_time(row: NewRow, ms: int) -> NewRow:
    return NewRow(row.version, row.description, row.type, row.script, row.checksum, row.installed_by, ms, row.success)
