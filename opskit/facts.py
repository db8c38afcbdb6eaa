"""Facts about a database's content, taken inside one snapshot and compared after a restore.

The backup collects them on the connection that exported pg_dump's snapshot, so they
describe exactly what the dump contains. A restore or a drill collects them again on the
restored database with the same functions and compares.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from opskit.catalog import TableFacts

# Tables pg_dump dumps data for: ordinary tables and partitions outside system schemas,
# not owned by an extension (their data is the extension's, and is not dumped).
_TABLES_SQL = """
SELECT n.nspname, c.relname
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY n.nspname, c.relname
"""

_OBJECT_COUNTS_SQL = """
SELECT
  (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND {user_ns}) AS tables,
  (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('i', 'I') AND {user_ns}) AS indexes,
  (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'S' AND {user_ns}) AS sequences,
  (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('v', 'm') AND {user_ns}) AS views,
  (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE {user_ns} AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                                    AND d.objid = p.oid AND d.deptype = 'e')) AS functions
""".format(
    user_ns="n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'"
    " AND n.nspname NOT LIKE 'pg_temp%%'"
)


@dataclass
class SnapshotFacts:
    """Row counts per table, object counts and the Flyway schema version of one snapshot."""

    tables: list[TableFacts] = field(default_factory=list)
    objects: dict[str, int] = field(default_factory=dict)
    migration_version: str | None = None


def list_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """Return (schema, table) for every table whose data pg_dump dumps."""
    with conn.cursor() as cur:
        cur.execute(_TABLES_SQL)
        return [(row[0], row[1]) for row in cur.fetchall()]


def count_rows(conn: psycopg.Connection[Any], schema: str, table: str) -> int:
    """Return ``count(*)`` of one table (identifiers quoted by psycopg.sql)."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table)))
        row = cur.fetchone()
        return int(row[0]) if row else 0


def object_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Return counts of user tables, indexes, sequences, views and functions."""
    with conn.cursor() as cur:
        cur.execute(_OBJECT_COUNTS_SQL)
        row = cur.fetchone()
        assert row is not None and cur.description is not None
        return {col.name: int(value) for col, value in zip(cur.description, row, strict=True)}


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def migration_version(conn: psycopg.Connection[Any], table: str = "flyway_schema_history") -> str | None:
    """Return the highest successfully applied Flyway version, or None when there is no history table."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relname = %s AND c.relkind IN ('r', 'p') ORDER BY n.nspname = 'public' DESC LIMIT 1",
            (table,),
        )
        found = cur.fetchone()
        if found is None:
            return None
        cur.execute(
            sql.SQL("SELECT version FROM {}.{} WHERE success AND version IS NOT NULL AND type <> 'DELETE'").format(
                sql.Identifier(found[0]), sql.Identifier(table)
            )
        )
        versions = [row[0] for row in cur.fetchall() if row[0]]
    return max(versions, key=_version_key) if versions else None


def collect(conn: psycopg.Connection[Any], tables: Sequence[tuple[str, str]] | None = None) -> SnapshotFacts:
    """Collect row counts, object counts and the migration version on ``conn``'s current snapshot."""
    names = list(tables) if tables is not None else list_tables(conn)
    facts = SnapshotFacts()
    for schema, table in names:
        facts.tables.append(TableFacts(schema=schema, name=table, rows=count_rows(conn, schema, table)))
    facts.objects = object_counts(conn)
    facts.migration_version = migration_version(conn)
    return facts


@dataclass(frozen=True)
class RowMismatch:
    """A table whose row count after a restore differs from the manifest."""

    table: str
    expected: int | None
    actual: int | None


def compare_rows(expected: Sequence[TableFacts], actual: Sequence[TableFacts]) -> list[RowMismatch]:
    """Return every table whose row count differs, or that exists on one side only."""
    want = {t.qualified: t.rows for t in expected}
    have = {t.qualified: t.rows for t in actual}
    mismatches = []
    for name in sorted(set(want) | set(have)):
        if want.get(name) != have.get(name):
            mismatches.append(RowMismatch(name, want.get(name), have.get(name)))
    return mismatches
