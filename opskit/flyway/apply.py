"""Applying one pending migration: its SQL, its history row and its per-script callbacks (``docs/flyway-compat.md`` §4.1).

:class:`~opskit.flyway.engine.Engine` decides what runs and in which order; this module runs
one script on the engine's autocommit connection:

* a transactional script runs in its own transaction (a savepoint inside ``group = true``)
  together with its history row, so a failure leaves neither a row nor a partial change; the
  row is written as the connecting role (the session is reset after the script, as Flyway
  writes it on a connection of its own);
* a transactional script may not end that transaction: a top-level COMMIT or ROLLBACK is
  refused before it runs, and one the check cannot see (a callback's) is found after the
  script and recorded as a failed row, since what it committed cannot be rolled back;
* a script PostgreSQL refuses inside a transaction runs statement by statement in autocommit;
  if one fails, a row with ``success = FALSE`` is written, as Flyway does. Its :class:`Progress`
  says whether what ran before the failure may have changed the database (read-only statements,
  ``SELECT 1`` or ``SET``, do not; see :func:`~opskit.flyway.statements.may_write`), which decides
  whether ``opskit migrate --restore-on-failure`` restores.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from opskit.core.errors import ConfigError, MigrationFailed, OpskitError
from opskit.core.log import get_logger
from opskit.flyway.callbacks import CallbackRunner
from opskit.flyway.history import HistoryTable, NewRow
from opskit.flyway.names import abbreviate_description, abbreviate_script
from opskit.flyway.results import Applied
from opskit.flyway.state import Info
from opskit.flyway.statements import (
    ends_transaction,
    leaves_changes_on_error,
    may_write,
    read_only_tag,
    split_statements,
)
from opskit.flyway.transactions import migration_failure

# The runner's own log lines: they keep the logger name they have always carried.
log = get_logger("opskit.flyway.engine")


@dataclass
class Progress:
    """How far a non-transactional migration got: ``changed`` is True once anything of it may have changed the database.

    :func:`apply_script` fills it in as the statements run (before each one that may write, so an
    interrupt mid-statement counts it); the engine reads it when the script fails or is
    interrupted. Its failed history row does not count: it is the run's record, not a change.
    """

    changed: bool = False


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
    progress: Progress | None = None,
) -> Applied:
    """Run ``text`` (``info``'s script, placeholders replaced) and record it in ``history``; return what ran.

    A non-transactional script records in ``progress`` whether it may have changed anything.
    Raises MigrationFailed (exit 4) when the script fails, ConfigError when a script that cannot
    run in a transaction meets ``group = true``'s open one.
    """
    progress = progress if progress is not None else Progress()
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
        statements = split_statements(text)
        refuse_transaction_control(script.script, statements, text)
        try:
            # Inside a group this is a savepoint of the group's transaction.
            with conn.transaction():
                callbacks.fire_each("beforeEachMigrate", transactional=True)
                if statements:
                    _execute_in_transaction(conn, text)
                callbacks.fire_each("afterEachMigrate", transactional=True)
                _check_still_in_transaction(conn)
                ms = elapsed()
                # Flyway writes the row on its own connection, as the connecting role: a SET ROLE
                # (or search_path) in the script must not decide who writes it.
                reset_session()
                history.insert(conn, _with_time(row, ms))
        except _TransactionEnded as ended:
            # A COMMIT or ROLLBACK in the script ended the migration's transaction: what it
            # committed stays, so the run is recorded as a failed migration, as Flyway records a
            # failure it could not roll back, and repair is needed before the next migrate.
            _after_each_error(conn, callbacks, transactional=False)
            _record_failure(conn, history, _with_time(row, elapsed()), reset_session)
            raise _ended_failure(script.script, ended.error) from ended.error
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
        # The per-migration callbacks run in autocommit too: whatever they hold counts as a change.
        progress.changed = progress.changed or bool(callbacks.of("beforeEachMigrate"))
        callbacks.fire_each("beforeEachMigrate", transactional=False)
        for statement in split_statements(text):
            try:
                _execute_autocommit(conn, statement, progress)
            except psycopg.Error as exc:
                _after_each_error(conn, callbacks, transactional=False)
                _record_failure(conn, history, _with_time(row, elapsed()), reset_session)
                raise migration_failure(script, exc, rolled_back=False, changed=progress.changed) from exc
        progress.changed = progress.changed or bool(callbacks.of("afterEachMigrate"))
        callbacks.fire_each("afterEachMigrate", transactional=False)
        ms = elapsed()
        reset_session()  # the row is written as the connecting role (see above)
        history.insert(conn, _with_time(row, ms))
    applied = applied_entry(info, ms, transactional)
    log.info("applied migration", migration=script.script, ms=applied.execution_ms)
    return applied


def _execute_autocommit(conn: psycopg.Connection[Any], statement: str, progress: Progress) -> None:
    """Run one statement of a non-transactional script, keeping ``progress.changed`` true to what it may have done.

    Raises psycopg.Error when the statement fails.
    """
    writes = may_write(statement)
    changed_before = progress.changed
    # Set before it runs: an interrupt (or a lost connection) mid-statement leaves its outcome unknown.
    progress.changed = changed_before or writes
    try:
        cursor = conn.execute(statement)
    except psycopg.Error as exc:
        progress.changed = changed_before or _failure_may_have_left_changes(conn, statement, exc)
        raise
    if not read_only_tag(cursor.statusmessage):
        # The server ran something other than the read-only statement the check saw.
        progress.changed = True


def _failure_may_have_left_changes(conn: psycopg.Connection[Any], statement: str, exc: psycopg.Error) -> bool:
    """Return True unless ``statement``, failing with ``exc`` in autocommit, certainly left nothing behind.

    An error the server reported for the statement rolled it back, except for the statements of
    :func:`~opskit.flyway.statements.leaves_changes_on_error` (an INVALID index, a COMMIT in a
    ``DO``). A lost connection, or the server ending the session (SQLSTATE class 08, 57P: the
    commit may have happened just before, e.g. while waiting for a synchronous standby), leaves
    the outcome unknown.
    """
    if not may_write(statement):
        return False
    if conn.broken or conn.closed or exc.sqlstate is None or exc.sqlstate.startswith(("08", "57P")):
        return True
    return leaves_changes_on_error(statement)


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


def _record_failure(
    conn: psycopg.Connection[Any], history: HistoryTable, row: NewRow, reset_session: Callable[[], None]
) -> None:
    """Write ``row`` with ``success = FALSE`` as the connecting role; a failure to write it is only logged."""
    failed = NewRow(
        row.version, row.description, row.type, row.script, row.checksum, row.installed_by, row.execution_time, False
    )
    try:
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            # Autocommit, and no transaction open on the server: also the case of a script that
            # ended group = true's transaction, where psycopg still counts it as open and would
            # send a SAVEPOINT the server refuses.
            reset_session()
            history.insert(conn, failed)
        else:
            with conn.transaction():
                reset_session()
                history.insert(conn, failed)
    except psycopg.Error as exc:
        log.error("could not record the failed migration", error=str(exc))


class _TransactionEnded(Exception):
    """The script ended the migration's transaction (COMMIT, ROLLBACK); ``error`` is what failed after, if anything.

    Internal to this module: :func:`apply_script` turns it into a MigrationFailed.
    """

    def __init__(self, error: psycopg.Error | None = None) -> None:
        super().__init__("the migration's transaction was ended by its script")
        self.error = error


def _execute_in_transaction(conn: psycopg.Connection[Any], text: str) -> None:
    """Run ``text`` in the open transaction; raise _TransactionEnded when the script ended it, psycopg.Error else."""
    try:
        conn.execute(text)
    except psycopg.Error as exc:
        # A failure in the migration's own transaction leaves it aborted (INERROR); after a
        # COMMIT or ROLLBACK in the script the server runs the rest in an implicit transaction
        # of its own, and an error there leaves no transaction at all.
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            raise _TransactionEnded(exc) from exc
        raise
    _check_still_in_transaction(conn)


def _check_still_in_transaction(conn: psycopg.Connection[Any]) -> None:
    """Raise _TransactionEnded when no transaction is open any more (the script or a callback ended it)."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
        raise _TransactionEnded()


def refuse_transaction_control(script: str, statements: list[str], text: str) -> None:
    """Raise ConfigError (exit 2) when a transactional script ends its own transaction; nothing of it has run yet."""
    keyword = ends_transaction(statements, text)
    if keyword:
        raise ConfigError(
            f"migration {script} runs {keyword}, which would end the transaction opskit runs it in "
            "(a failure could then not be rolled back)",
            hint=f"remove the {keyword}, or set executeInTransaction=false in {script}.conf to run it "
            "statement by statement in autocommit",
        )


def _ended_failure(script: str, error: psycopg.Error | None) -> MigrationFailed:
    """Return the MigrationFailed for a script that ended its own transaction, failing after (``error``) or not."""
    reason = (error.diag.message_primary or str(error)).strip() if error is not None else None
    what = f"failed ({reason}) after ending" if reason else "ended"
    return MigrationFailed(
        f"Migration {script} {what} its own transaction (a COMMIT or ROLLBACK in the script): what it "
        "committed cannot be rolled back, so a failed row was recorded",
        hint="check what the script left, remove its COMMIT/ROLLBACK, run 'opskit migrate repair' and migrate again",
        migration=script,
        database_error=reason,
    )


def _with_time(row: NewRow, ms: int) -> NewRow:
    return NewRow(row.version, row.description, row.type, row.script, row.checksum, row.installed_by, ms, row.success)
