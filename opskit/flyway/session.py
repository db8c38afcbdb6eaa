"""What the runner asks PostgreSQL about schemas, and the session reset before each migration."""

from __future__ import annotations

from typing import Any

import psycopg

from opskit.flyway.history import quote_java


def schema_exists(conn: psycopg.Connection[Any], schema: str) -> bool:
    """Return True when ``schema`` exists in the connected database."""
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s)", (schema,)).fetchone()
    return bool(row and row[0])


def schema_is_empty(conn: psycopg.Connection[Any], schema: str) -> bool:
    """Return True when ``schema`` holds no relation, type or function outside extensions.

    The objects Flyway's ``PostgreSQLSchema.doEmpty`` looks for (``docs/flyway-compat.md`` §4.1 item 3).
    """
    row = conn.execute(
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


def reset_session(conn: psycopg.Connection[Any], role: str, search_path: str, schema: str) -> None:
    """Restore ``role`` and put ``schema`` at the head of ``search_path``, as Flyway does (§4.1 item 6).

    The schema is not added when it already heads the path or does not exist. Raises psycopg.Error.
    """
    from psycopg import sql

    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    path = search_path
    first = path.split(",")[0].strip().strip('"') if path else ""
    if schema_exists(conn, schema) and first != schema:
        path = f"{quote_java(schema)},{path}" if path else quote_java(schema)
    conn.execute("SELECT set_config('search_path', %s, false)", (path,))
