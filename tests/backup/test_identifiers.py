"""Names with quotes, spaces, semicolons and non-ASCII letters survive a backup and a restore.

Every database, schema and table name reaches PostgreSQL through ``psycopg.sql.Identifier``
or a libpq conninfo, never string formatting; a name that was spliced into SQL text would
break these statements (or run the ``DROP`` hidden in them).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from opskit.backup import backup
from opskit.config.load import build_config
from opskit.context import AppContext
from opskit.drill import drill
from opskit.restore import restore
from tests.databases import ADMIN_DSN, admin_connection, drop_databases

# Quotes of both kinds, spaces, a semicolon, a dot, an SQL keyword, and letters outside ASCII (2 bytes each).
AWKWARD = " Ünï Жд \"q\" 'a'; DROP"
SCHEMA = 'Schéma "x"; DROP SCHEMA public; --'
TABLE = "tåble.'y' ; Ω"
COLUMN = 'cöl "z"'


def dsn(dbname: str) -> str:
    return make_conninfo(ADMIN_DSN, dbname=dbname)


@pytest.fixture
def awkward_database() -> Iterator[str]:
    prefix = f"opskit_t_ident_{secrets.token_hex(3)}"
    name = prefix + AWKWARD
    with admin_connection() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with psycopg.connect(dsn(name), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
            conn.execute(
                sql.SQL("CREATE TABLE {}.{} (id serial PRIMARY KEY, {} text)").format(
                    sql.Identifier(SCHEMA), sql.Identifier(TABLE), sql.Identifier(COLUMN)
                )
            )
            conn.execute(
                sql.SQL("INSERT INTO {}.{} ({}) VALUES (%s), (%s), (NULL)").format(
                    sql.Identifier(SCHEMA), sql.Identifier(TABLE), sql.Identifier(COLUMN)
                ),
                ("Grüße; DROP TABLE x; --", "'quoted'"),
            )
        yield name
    finally:
        drop_databases(prefix)


def _rows(dbname: str) -> list[Any]:
    with psycopg.connect(dsn(dbname)) as conn:
        query = sql.SQL("SELECT id, {} FROM {}.{} ORDER BY id").format(
            sql.Identifier(COLUMN), sql.Identifier(SCHEMA), sql.Identifier(TABLE)
        )
        return conn.execute(query).fetchall()


def test_awkward_names_survive_backup_restore_and_a_drill(awkward_database: str, tmp_path: Path) -> None:
    config = build_config(
        {
            "targets": {
                "app": {"dsn": dsn(awkward_database), "fingerprint_tables": ["*"], "staging": "staging"},
                "staging": {"dsn": dsn("postgres")},
            },
            "storages": {"local": {"url": f"file://{tmp_path / 'backups'}"}},
            "tools": {"state_dir": str(tmp_path / "state")},
        }
    )
    ctx = AppContext(config=config)

    taken = backup.run(ctx, target="app")
    manifest = taken.manifest
    assert manifest.database == awkward_database
    assert [(t.schema, t.name, t.rows) for t in manifest.tables] == [(SCHEMA, TABLE, 3)]

    restored = restore.run(ctx, selector="latest", target="app", to=None)
    assert restored.ok, restored.mismatches
    assert restored.tables_checked == 1
    with admin_connection() as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (restored.database,)).fetchone()
    assert found is not None, f"restored database {restored.database!r} does not exist under that exact name"
    assert len(restored.database.encode("utf-8")) <= 63
    assert _rows(restored.database) == _rows(awkward_database)
    # The original is untouched and the DROPs hidden in the names never ran.
    with psycopg.connect(dsn(awkward_database)) as conn:
        schemas = {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace").fetchall()}
    assert {"public", SCHEMA} <= schemas

    # A drill restores into staging and checks rows, fingerprints and sequences by those names.
    report = drill.run(ctx, target="app")
    failed = [c for c in report.checks if not c.ok]
    assert report.passed, failed
    names = {c.name for c in report.checks}
    assert {"row counts", "content fingerprints", "sequences at or past their columns"} <= names
