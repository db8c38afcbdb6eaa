"""The ``flyway_schema_history`` table: create, read, write rows, and Flyway's advisory lock.

Rows are written exactly as Flyway writes them (``docs/flyway-compat.md`` §2.2, §2.3) so that Flyway can later run
against the same database and find nothing to complain about. Every identifier goes
through :mod:`psycopg.sql`; every value is a bind parameter (Flyway inlines the baseline row
unescaped; opskit binds it, which gives the same stored values).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from opskit.core.errors import LockHeld
from opskit.core.log import get_logger
from opskit.flyway.names import Version
from opskit.pg import locks

log = get_logger(__name__)

FLYWAY_LOCK_BASE = 0x466C79776179  # the ASCII bytes of "Flyway" (77431708279161)
BASELINE_TYPES = frozenset({"BASELINE", "SQL_BASELINE", "JDBC_BASELINE"})
SYNTHETIC_TYPES = frozenset({"SCHEMA", "DELETE", "BASELINE"})
# Every type Flyway (OSS or not) writes; any engine sharing the table must accept them all.
KNOWN_TYPES = frozenset(
    {
        "SQL",
        "BASELINE",
        "SCHEMA",
        "DELETE",
        "JDBC",
        "SCRIPT",
        "SQL_BASELINE",
        "JDBC_BASELINE",
        "SCRIPT_BASELINE",
        "UNDO_SQL",
        "UNDO_JDBC",
        "UNDO_SCRIPT",
        "CUSTOM",
        "UNDO_CUSTOM",
        "JDBC_STATE_SCRIPT",
    }
)
SCHEMA_DESCRIPTION = "<< Flyway Schema Creation >>"


def java_string_hash(text: str) -> int:
    """Return Java's ``String.hashCode()`` of ``text``: over UTF-16 code units, as a signed int32."""
    units = text.encode("utf-16-be", "surrogatepass")
    value = 0
    for index in range(0, len(units), 2):
        value = (31 * value + int.from_bytes(units[index : index + 2], "big")) & 0xFFFFFFFF
    return value - (1 << 32) if value >= (1 << 31) else value


def quote_java(name: str) -> str:
    """Return ``"name"`` with embedded quotes doubled, as Flyway's ``Database.doQuote`` does."""
    return '"' + name.replace('"', '""') + '"'


def lock_key(schema: str, table: str) -> int:
    """Return Flyway's advisory lock key for the table: "Flyway" + hashCode of ``"schema"."table"``."""
    return FLYWAY_LOCK_BASE + java_string_hash(f"{quote_java(schema)}.{quote_java(table)}")


@dataclass(frozen=True)
class AppliedRow:
    """One row of the history table, as read back."""

    installed_rank: int
    version: str | None
    description: str
    type: str
    script: str
    checksum: int | None
    installed_by: str
    installed_on: datetime | None
    execution_time: int
    success: bool

    @property
    def parsed_version(self) -> Version | None:
        """Return the row's version parsed (None for repeatables and rows without one)."""
        return Version.parse(self.version) if self.version else None

    @property
    def is_baseline(self) -> bool:
        """Return True for BASELINE and SQL_BASELINE rows."""
        return self.type in BASELINE_TYPES

    @property
    def is_synthetic(self) -> bool:
        """Return True for the markers Flyway writes itself: SCHEMA, DELETE, BASELINE."""
        return self.type in SYNTHETIC_TYPES


@dataclass(frozen=True)
class NewRow:
    """A row to insert; ``installed_rank`` is computed under the lock and ``installed_on`` defaults."""

    version: str | None
    description: str
    type: str
    script: str
    checksum: int | None
    installed_by: str
    execution_time: int
    success: bool


class HistoryTable:
    """The history table ``schema.table`` on one connection."""

    def __init__(self, schema: str, table: str = "flyway_schema_history", tablespace: str | None = None) -> None:
        self.schema = schema
        self.table = table
        self.tablespace = tablespace
        self.ident = sql.Identifier(schema, table)

    @property
    def display(self) -> str:
        """Return ``"schema"."table"`` as Flyway prints it."""
        return f"{quote_java(self.schema)}.{quote_java(self.table)}"

    @property
    def lock_key(self) -> int:
        """Return the advisory lock key Flyway uses for this table."""
        return lock_key(self.schema, self.table)

    # ------------------------------------------------------------------ schema and table

    def exists(self, conn: psycopg.Connection[Any]) -> bool:
        """Return True when the table exists (pg_class + pg_namespace, relkind 'r', as Flyway checks)."""
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'r')",
            (self.schema, self.table),
        ).fetchone()
        return bool(row and row[0])

    def create(self, conn: psycopg.Connection[Any], baseline: NewRow | None = None) -> None:
        """Create the table with Flyway's exact DDL (``docs/flyway-compat.md`` §2.1); ``baseline`` is inserted between CREATE and PK."""
        space = sql.SQL(" TABLESPACE {}").format(sql.Identifier(self.tablespace)) if self.tablespace else sql.SQL("")
        index_space = (
            sql.SQL(" USING INDEX TABLESPACE {}").format(sql.Identifier(self.tablespace))
            if self.tablespace
            else sql.SQL("")
        )
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (\n"
                '    "installed_rank" INT NOT NULL,\n'
                '    "version" VARCHAR(50),\n'
                '    "description" VARCHAR(200) NOT NULL,\n'
                '    "type" VARCHAR(20) NOT NULL,\n'
                '    "script" VARCHAR(1000) NOT NULL,\n'
                '    "checksum" INTEGER,\n'
                '    "installed_by" VARCHAR(100) NOT NULL,\n'
                '    "installed_on" TIMESTAMP NOT NULL DEFAULT now(),\n'
                '    "execution_time" INTEGER NOT NULL,\n'
                '    "success" BOOLEAN NOT NULL\n'
                "){}"
            ).format(self.ident, space)
        )
        if baseline is not None:
            self._insert_at(conn, 1, baseline)
        # Constraint and index names come from the unquoted table name, as in Flyway.
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({}){}").format(
                self.ident, sql.Identifier(f"{self.table}_pk"), sql.Identifier("installed_rank"), index_space
            )
        )
        conn.execute(
            sql.SQL("CREATE INDEX {} ON {} ({}){}").format(
                sql.Identifier(f"{self.table}_s_idx"), self.ident, sql.Identifier("success"), space
            )
        )

    # ------------------------------------------------------------------ rows

    def read(self, conn: psycopg.Connection[Any]) -> list[AppliedRow]:
        """Return every row ordered by installed_rank (empty when the table does not exist)."""
        if not self.exists(conn):
            return []
        query = sql.SQL(
            'SELECT "installed_rank","version","description","type","script","checksum","installed_on",'
            '"installed_by","execution_time","success" FROM {} ORDER BY "installed_rank"'
        ).format(self.ident)
        rows = []
        for r in conn.execute(query).fetchall():
            kind = "JDBC" if r[3] == "SPRING_JDBC" else r[3]
            if kind not in KNOWN_TYPES:
                log.warning("unknown migration type in history", type=kind, installed_rank=r[0])
            rows.append(AppliedRow(r[0], r[1], r[2], kind, r[4], r[5], r[7], r[6], r[8], bool(r[9])))
        return rows

    def next_rank(self, conn: psycopg.Connection[Any], schema_marker: bool = False) -> int:
        """Return max(installed_rank) + 1, or 0 for a SCHEMA marker / 1 otherwise in an empty table."""
        row = conn.execute(sql.SQL('SELECT max("installed_rank") FROM {}').format(self.ident)).fetchone()
        if row is None or row[0] is None:
            return 0 if schema_marker else 1
        return int(row[0]) + 1

    def insert(self, conn: psycopg.Connection[Any], row: NewRow) -> int:
        """Insert ``row`` at the next rank (call under the lock); return the rank used."""
        rank = self.next_rank(conn, schema_marker=row.type == "SCHEMA")
        self._insert_at(conn, rank, row)
        return rank

    def _insert_at(self, conn: psycopg.Connection[Any], rank: int, row: NewRow) -> None:
        conn.execute(
            sql.SQL(
                'INSERT INTO {} ("installed_rank", "version", "description", "type", "script", "checksum", '
                '"installed_by", "execution_time", "success") VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)'
            ).format(self.ident),
            (
                rank,
                row.version,
                row.description,
                row.type,
                row.script,
                row.checksum,
                row.installed_by,
                row.execution_time,
                row.success,
            ),
        )

    def delete_failed(self, conn: psycopg.Connection[Any], row: AppliedRow) -> None:
        """Remove a failed row: by version, or for a repeatable by description (Flyway's repair)."""
        if row.version is not None:
            conn.execute(
                sql.SQL('DELETE FROM {} WHERE "success" = FALSE AND "version" = %s').format(self.ident), (row.version,)
            )
        else:
            conn.execute(
                sql.SQL('DELETE FROM {} WHERE "success" = FALSE AND "description" = %s').format(self.ident),
                (row.description,),
            )

    def realign(
        self, conn: psycopg.Connection[Any], rank: int, description: str, kind: str, checksum: int | None
    ) -> None:
        """Set description, type and checksum of the row at ``rank`` (repair's alignment)."""
        conn.execute(
            sql.SQL('UPDATE {} SET "description"=%s , "type"=%s , "checksum"=%s WHERE "installed_rank"=%s').format(
                self.ident
            ),
            (description, kind, checksum, rank),
        )


# --------------------------------------------------------------------------- locking


def acquire_lock(
    conn: psycopg.Connection[Any],
    key: int,
    retries: int = 50,
    *,
    session: bool = True,
    sleep: Callable[[float], None] = time.sleep,
    on_wait: Callable[[int], None] | None = None,
) -> None:
    """Take Flyway's advisory lock ``key``, trying once a second up to ``retries`` times (-1: forever).

    ``session`` takes ``pg_try_advisory_lock`` (held until released or the connection
    closes); otherwise ``pg_try_advisory_xact_lock`` (held until the transaction ends). Both
    conflict with either kind Flyway takes on the same key. Raises LockHeld (exit 7) when the
    retries run out.
    """
    if not locks.lock_with_retries(conn, key, retries, session=session, interval=1.0, sleep=sleep, on_wait=on_wait):
        raise LockHeld(
            f"Number of retries exceeded while attempting to acquire PostgreSQL advisory lock {key}: "
            f"another migration (opskit or Flyway) has held it for over {retries} s",
            hint="wait for the other migration to finish, or raise migrations.lock_retry_count",
        )
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS and session:
        conn.commit()  # do not leave a transaction open just for the lock


def release_lock(conn: psycopg.Connection[Any], key: int) -> None:
    """Release a session advisory lock taken by :func:`acquire_lock` (a closed connection releases it too)."""
    locks.release(conn, key)
