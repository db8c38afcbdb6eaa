"""What Flyway would report about a database, read from its schema history table alone.

A backup records the schema version in its manifest and a drill compares it after the
restore; both read it here, with Flyway's own rules (a DELETE marker cancels a version,
baselines count), so a manifest and ``flyway info`` never disagree.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from opskit.core.log import get_logger
from opskit.flyway.history import HistoryTable
from opskit.flyway.state import version_from_rows

log = get_logger(__name__)


def schema_version(
    conn: psycopg.Connection[Any], schema: str = "public", table: str = "flyway_schema_history"
) -> str | None:
    """Return the schema version Flyway's ``info`` would report, from the history rows alone.

    The highest applied versioned row that no DELETE marker cancelled (baselines count), or
    None when the table is missing or holds no versioned row. Raises psycopg.Error when the
    table cannot be read.
    """
    return version_from_rows(HistoryTable(schema, table).read(conn))


def history_schema(conn: psycopg.Connection[Any], table: str = "flyway_schema_history") -> str | None:
    """Return the schema holding the Flyway history ``table`` (``public`` first), or None when there is none."""
    row = conn.execute(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relname = %s AND c.relkind IN ('r', 'p') ORDER BY n.nspname = 'public' DESC LIMIT 1",
        (table,),
    ).fetchone()
    return None if row is None else str(row[0])


def migration_version(conn: psycopg.Connection[Any], table: str = "flyway_schema_history") -> str | None:
    """Return the schema version Flyway's ``info`` would report, or None when there is no history table.

    Flyway's rules decide (a DELETE marker cancels a version, baselines count), so a manifest and
    ``flyway info`` never disagree.
    """
    schema = history_schema(conn, table)
    if schema is None:
        return None
    # A history table that is not Flyway's shape must not fail a backup: read it inside a
    # savepoint (when in a transaction) and report no version if it cannot be read.
    in_transaction = conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
    try:
        if in_transaction:
            conn.execute("SAVEPOINT opskit_schema_version")
        version = schema_version(conn, schema=schema, table=table)
        if in_transaction:
            conn.execute("RELEASE SAVEPOINT opskit_schema_version")
        return version
    except psycopg.Error as exc:
        if in_transaction:
            conn.execute("ROLLBACK TO SAVEPOINT opskit_schema_version")
        log.warning(
            "the schema history table cannot be read; no migration version recorded",
            table=f"{schema}.{table}",
            error=str(exc).strip(),
        )
        return None


def failed_migrations(conn: psycopg.Connection[Any], table: str = "flyway_schema_history") -> list[str]:
    """Return the versions (or descriptions) of failed rows in the Flyway history ([] when there is none)."""
    schema = history_schema(conn, table)
    if schema is None:
        return []
    rows = conn.execute(
        sql.SQL("SELECT coalesce(version, description) FROM {}.{} WHERE NOT success ORDER BY installed_rank").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
    ).fetchall()
    return [str(row[0]) for row in rows]
