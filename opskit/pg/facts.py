"""Facts about a database's content, taken inside one snapshot and compared after a restore.

The backup collects them on the connection that exported pg_dump's snapshot, so they
describe exactly what the dump contains. A restore or a drill collects them again on the
restored database with the same functions and compares.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from opskit.core.log import get_logger

log = get_logger(__name__)

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


DEFAULT_FINGERPRINT_MAX_BYTES = 1024**3

# How many tables :func:`collect` reads in one transaction when it may start new ones. Every table
# it counts (and the indexes the planner opens for it) stays locked (AccessShareLock) until its
# transaction ends, on top of pg_dump's own lock on each table; in one transaction a database of a
# few thousand tables runs the server's shared lock table out ("out of shared memory", the limit is
# max_locks_per_transaction x max_connections for the whole server,
# https://www.postgresql.org/docs/current/runtime-config-locks.html) where pg_dump alone would not.
TABLES_PER_TRANSACTION = 50

# How a manifest's row counts were taken (its ``row_counts`` field): "only" each table's own rows
# (``count(*) FROM ONLY``, what pg_dump's COPY of the table holds), or "inclusive" with the rows of
# its inheritance children (``count(*)``), as manifests written before the field existed did.
ROW_COUNTS_ONLY = "only"
ROW_COUNTS_INCLUSIVE = "inclusive"
FINGERPRINT_PREFIX = "sha256:"

# Every setting that changes how a value is printed is pinned, so the same rows give the same
# bytes on the backed-up server and on the restored one (whatever their defaults).
_FINGERPRINT_SETTINGS = (
    ("DateStyle", "ISO, YMD"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("IntervalStyle", "iso_8601"),
)

_PRIMARY_KEY_SQL = """
SELECT a.attname, a.attcollation <> 0
FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
WHERE i.indrelid = %s::regclass AND i.indisprimary
ORDER BY array_position(i.indkey::int2[], a.attnum)
"""


@dataclass(frozen=True)
class TableFacts:
    """Facts about one table, taken inside pg_dump's own snapshot."""

    schema: str
    name: str
    rows: int
    fingerprint: str | None = None

    @property
    def qualified(self) -> str:
        """Return ``schema.name``."""
        return f"{self.schema}.{self.name}"


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


def count_rows(conn: psycopg.Connection[Any], schema: str, table: str, inclusive: bool = False) -> int:
    """Return the rows of one table: its own (``FROM ONLY``), or with its inheritance children's when ``inclusive``.

    A table's own rows are what pg_dump writes in its COPY, so they are what a restore loads and
    can compare; ``inclusive`` counts as opskit did before :data:`ROW_COUNTS_ONLY` (old manifests).
    """
    only = sql.SQL("") if inclusive else sql.SQL("ONLY ")
    query = sql.SQL("SELECT count(*) FROM {}{}.{}").format(only, sql.Identifier(schema), sql.Identifier(table))
    with conn.cursor() as cur:
        cur.execute(query)
        row = cur.fetchone()
        return int(row[0]) if row else 0


# Every (parent, child) pair of table inheritance among user tables; partitions are listed as
# tables of their own (relkind 'r'), and their partitioned parents (relkind 'p') are not counted.
_INHERITS_SQL = """
SELECT pn.nspname, p.relname, cn.nspname, c.relname
FROM pg_inherits i
JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace pn ON pn.oid = p.relnamespace
JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace
WHERE p.relkind = 'r'
"""


def inheritance_children(conn: psycopg.Connection[Any]) -> dict[str, list[str]]:
    """Return ``schema.table`` -> the ``schema.table`` of its direct inheritance children (tables with none are absent)."""
    children: dict[str, list[str]] = {}
    with conn.cursor() as cur:
        cur.execute(_INHERITS_SQL)
        for parent_schema, parent, child_schema, child in cur.fetchall():
            children.setdefault(f"{parent_schema}.{parent}", []).append(f"{child_schema}.{child}")
    return children


def include_children(own_rows: dict[str, int], children: dict[str, list[str]]) -> dict[str, int]:
    """Return ``count(*)``-style counts from each table's own rows: a table's plus all its descendants'.

    How an old manifest's inclusive counts are compared with the rows a restore loaded table by
    table. A child inheriting from two parents counts under both, as ``count(*)`` counts it.
    """

    def total(table: str, seen: frozenset[str]) -> int:
        below = (total(child, seen | {child}) for child in children.get(table, ()) if child not in seen)
        return own_rows.get(table, 0) + sum(below)

    return {table: total(table, frozenset({table})) for table in own_rows}


def object_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Return counts of user tables, indexes, sequences, views and functions."""
    with conn.cursor() as cur:
        cur.execute(_OBJECT_COUNTS_SQL)
        row = cur.fetchone()
        assert row is not None and cur.description is not None
        return {col.name: int(value) for col, value in zip(cur.description, row, strict=True)}


def collect(
    conn: psycopg.Connection[Any],
    tables: Sequence[tuple[str, str]] | None = None,
    fingerprint_tables: Sequence[str] = (),
    fingerprint_max_bytes: int = DEFAULT_FINGERPRINT_MAX_BYTES,
    inclusive: bool = False,
    restart: Callable[[], None] | None = None,
) -> SnapshotFacts:
    """Collect row counts, fingerprints and object counts on ``conn``'s snapshot; return them.

    Rows are each table's own (see :func:`count_rows`), or with its children's when
    ``inclusive`` (to compare with a manifest that counted so). ``fingerprint_tables`` are
    patterns (see :func:`select_fingerprint_tables`); fingerprints need a transaction
    (``SET LOCAL``), which the backup's snapshot connection and a non-autocommit connection both have.
    ``restart``, when given, ends ``conn``'s transaction and opens the next one on the same
    snapshot; it is called every :data:`TABLES_PER_TRANSACTION` tables, so the locks this
    collection holds stay bounded whatever the number of tables. Raises psycopg.Error.
    """
    names = list(tables) if tables is not None else list_tables(conn)
    facts = SnapshotFacts()
    for start in range(0, len(names), TABLES_PER_TRANSACTION):
        if start and restart is not None:
            restart()
        batch = names[start : start + TABLES_PER_TRANSACTION]
        # Chosen per batch: a glob's pg_table_size locks each table it measures, too.
        chosen = set(select_fingerprint_tables(conn, batch, fingerprint_tables, fingerprint_max_bytes))
        for schema, table in batch:
            fingerprint = fingerprint_table(conn, schema, table) if (schema, table) in chosen else None
            facts.tables.append(
                TableFacts(schema, table, rows=count_rows(conn, schema, table, inclusive), fingerprint=fingerprint)
            )
    facts.objects = object_counts(conn)
    return facts


def select_fingerprint_tables(
    conn: psycopg.Connection[Any],
    tables: Sequence[tuple[str, str]],
    patterns: Sequence[str],
    max_bytes: int = DEFAULT_FINGERPRINT_MAX_BYTES,
) -> list[tuple[str, str]]:
    """Return the tables to fingerprint: those named exactly, plus wildcard matches under ``max_bytes``.

    A pattern is ``schema.table``, a bare ``table`` (schema ``public``) or a glob such as
    ``*`` or ``sales.*``. Named tables are fingerprinted whatever their size (someone asked
    for them); glob matches only when ``pg_table_size`` is at most ``max_bytes``, so ``"*"``
    never turns a backup into a full read of a huge table.
    """
    if not patterns:
        return []
    exact = {p if "." in p else f"public.{p}" for p in patterns if not any(ch in p for ch in "*?[")}
    globs = [p for p in patterns if any(ch in p for ch in "*?[")]
    chosen: list[tuple[str, str]] = []
    for schema, table in tables:
        qualified = f"{schema}.{table}"
        matched = any(fnmatch.fnmatchcase(qualified, g) or fnmatch.fnmatchcase(table, g) for g in globs)
        if qualified in exact or (matched and table_size(conn, schema, table) <= max_bytes):
            chosen.append((schema, table))
    return chosen


def table_size(conn: psycopg.Connection[Any], schema: str, table: str) -> int:
    """Return ``pg_table_size`` of one table (heap + TOAST) in bytes."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_table_size(format('%%I.%%I', %s::text, %s::text)::regclass)", (schema, table))
        row = cur.fetchone()
        return int(row[0]) if row and row[0] is not None else 0


def primary_key(conn: psycopg.Connection[Any], schema: str, table: str) -> list[tuple[str, bool]]:
    """Return the table's primary key columns in key order as (name, collatable); [] without a key."""
    qualified = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table)).as_string(conn)
    with conn.cursor() as cur:
        cur.execute(_PRIMARY_KEY_SQL, (qualified,))
        return [(row[0], bool(row[1])) for row in cur.fetchall()]


def fingerprint_table(conn: psycopg.Connection[Any], schema: str, table: str) -> str:
    """Return ``sha256:<hex>`` of the table's rows as COPY text, in a deterministic order.

    Rows are ordered by the primary key, else by the whole row's text; text is compared with
    ``COLLATE "C"`` either way, because a restored database may have another default collation
    than the original (pg_dump without ``--create`` does not carry it). The COPY stream is
    hashed as it arrives: memory does not grow with the table. Must run inside a
    transaction, where ``SET LOCAL`` pins the output settings until it ends.
    """
    for name, value in _FINGERPRINT_SETTINGS:
        conn.execute(sql.SQL("SET LOCAL {} = {}").format(sql.Identifier(name), sql.Literal(value)))
    relation = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    keys = primary_key(conn, schema, table)
    order: sql.Composable = (
        sql.SQL(", ").join(
            sql.SQL('{} COLLATE "C"').format(sql.Identifier(k)) if collatable else sql.Identifier(k)
            for k, collatable in keys
        )
        if keys
        else sql.SQL('opskit_row::text COLLATE "C"')  # an alias no real column is likely to shadow
    )
    query = sql.SQL("COPY (SELECT * FROM {} AS opskit_row ORDER BY {}) TO STDOUT").format(relation, order)
    digest = hashlib.sha256()
    with conn.cursor() as cur, cur.copy(query) as copy:
        for block in copy:
            digest.update(block)
    return FINGERPRINT_PREFIX + digest.hexdigest()


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


@dataclass(frozen=True)
class FingerprintMismatch:
    """A table whose content fingerprint after a restore differs from the manifest."""

    table: str
    expected: str
    actual: str | None


def compare_fingerprints(expected: Sequence[TableFacts], actual: Sequence[TableFacts]) -> list[FingerprintMismatch]:
    """Return every table the manifest fingerprinted whose fingerprint differs (or is missing) now."""
    have = {t.qualified: t.fingerprint for t in actual}
    return [
        FingerprintMismatch(t.qualified, t.fingerprint, have.get(t.qualified))
        for t in expected
        if t.fingerprint is not None and have.get(t.qualified) != t.fingerprint
    ]


# --------------------------------------------------------------------------- health of a restored database


def invalid_indexes(conn: psycopg.Connection[Any]) -> list[str]:
    """Return the indexes PostgreSQL marks invalid (``pg_index.indisvalid`` false), schema-qualified."""
    with conn.cursor() as cur:
        cur.execute("SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid ORDER BY 1")
        return [row[0] for row in cur.fetchall()]


def unvalidated_constraints(conn: psycopg.Connection[Any]) -> list[str]:
    """Return ``table.constraint`` for every constraint that is NOT VALID (``convalidated`` false)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT conrelid::regclass::text || '.' || conname FROM pg_constraint c"
            " JOIN pg_namespace n ON n.oid = c.connamespace"
            " WHERE NOT c.convalidated AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
        )
        return [row[0] for row in cur.fetchall()]


# Sequences owned by a column (serial: deptype 'a'; identity: deptype 'i'), with their last value.
_OWNED_SEQUENCES_SQL = """
SELECT s.schemaname, s.sequencename, n.nspname, t.relname, a.attname, s.last_value, s.increment_by
FROM pg_sequences s
JOIN pg_class sc ON sc.relname = s.sequencename
JOIN pg_namespace sn ON sn.oid = sc.relnamespace AND sn.nspname = s.schemaname
JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = sc.oid
                AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
JOIN pg_class t ON t.oid = d.refobjid
JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
ORDER BY 1, 2
"""


@dataclass(frozen=True)
class SequenceLag:
    """A sequence whose last value is behind the column it feeds: the next insert would collide."""

    sequence: str
    column: str
    last_value: int | None
    column_max: int | None


def sequence_lags(conn: psycopg.Connection[Any]) -> tuple[int, list[SequenceLag]]:
    """Return (sequences checked, those whose last value is below the max of their owning column).

    A descending sequence (negative increment) is compared with the column's min instead.
    A sequence never called (last value NULL) is behind as soon as its column has a value.
    """
    with conn.cursor() as cur:
        cur.execute(_OWNED_SEQUENCES_SQL)
        owned = cur.fetchall()
        lags: list[SequenceLag] = []
        for seq_schema, seq_name, schema, table, column, last_value, increment in owned:
            extreme = sql.SQL("max") if increment > 0 else sql.SQL("min")
            cur.execute(
                sql.SQL("SELECT {}({})::bigint FROM {}.{}").format(
                    extreme, sql.Identifier(column), sql.Identifier(schema), sql.Identifier(table)
                )
            )
            row = cur.fetchone()
            column_extreme = row[0] if row else None
            if column_extreme is None:
                continue
            behind = last_value is None or (
                last_value < column_extreme if increment > 0 else last_value > column_extreme
            )
            if behind:
                lags.append(
                    SequenceLag(f"{seq_schema}.{seq_name}", f"{schema}.{table}.{column}", last_value, column_extreme)
                )
    return len(owned), lags
