"""PostgreSQL fixtures: a fresh, uniquely named database per test on the local server.

The server is the machine's PostgreSQL (127.0.0.1:5432, trust auth, superuser postgres)
unless OPSKIT_TEST_PG says otherwise. Other tests run against the same server at the
same time, so every database a test makes has a random name and is dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from opskit.config.load import build_config
from opskit.context import AppContext

ADMIN_DSN = os.environ.get("OPSKIT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def admin_connection() -> psycopg.Connection[Any]:
    """Return an autocommit superuser connection to the maintenance database."""
    return psycopg.connect(ADMIN_DSN, autocommit=True)


def dsn_for(dbname: str) -> str:
    """Return the test server's DSN for another database."""
    return ADMIN_DSN.rsplit("/", 1)[0] + "/" + dbname


def create_database(prefix: str) -> str:
    """Create an empty database with a random name starting with ``prefix``; return its name."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    with admin_connection() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def drop_databases(prefix: str) -> None:
    """Drop every database whose name starts with ``prefix`` (restores a test made, too)."""
    with admin_connection() as conn:
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + "%",))]
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def pg_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """Yield the name of a fresh empty database; drop it and any restore of it afterwards."""
    prefix = f"opskit_t_{secrets.token_hex(3)}"
    name = create_database(prefix)
    try:
        yield name
    finally:
        drop_databases(prefix)


def run_sql(dbname: str, statements: str) -> None:
    """Run SQL text in ``dbname`` (autocommit, several statements allowed)."""
    with psycopg.connect(dsn_for(dbname), autocommit=True) as conn:
        conn.execute(statements.encode())


@pytest.fixture
def make_context(tmp_path: Path) -> Callable[..., AppContext]:
    """Return a factory: (config dict) -> AppContext with the state directory under tmp_path."""

    def factory(raw: dict[str, Any], **kwargs: Any) -> AppContext:
        raw = dict(raw)
        raw.setdefault("tools", {}).setdefault("state_dir", str(tmp_path / "state"))
        return AppContext(config=build_config(raw), **kwargs)

    return factory


def local_config(dbname: str, backups: Path, **target: Any) -> dict[str, Any]:
    """Return a config dict with target ``app`` on ``dbname`` and a local storage at ``backups``."""
    return {
        "targets": {"app": {"dsn": dsn_for(dbname), **target}},
        "storages": {"local": {"url": f"file://{backups}"}},
    }


def storage_table(storage: Any) -> dict[str, Any]:
    """Return the config table for a StorageConfig made by the server fixtures (secrets as references)."""
    from opskit.secrets.references import SecretRef

    table: dict[str, Any] = {"url": storage.url}
    for key, value in storage.options.items():
        table[key] = value.reference if isinstance(value, SecretRef) else value
    return table


def schema_dump(dbname: str) -> str:
    """Return pg_dump --schema-only of a database without its version header."""
    out = subprocess.run(["pg_dump", "--schema-only", dsn_for(dbname)], capture_output=True, text=True, check=True)
    return "\n".join(
        line for line in out.stdout.splitlines() if not line.startswith(("-- Dumped", "\\restrict", "\\unrestrict"))
    )


def content_hashes(dbname: str) -> dict[str, str]:
    """Return md5 of every user table's rows in a stable order, by qualified name."""
    with psycopg.connect(dsn_for(dbname)) as conn:
        tables = conn.execute(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        hashes = {}
        for (name,) in tables:
            row = conn.execute(
                f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {name} t"
            ).fetchone()
            assert row is not None
            hashes[name] = row[0]
        row = conn.execute(
            "SELECT md5(string_agg(encode(data, 'hex'), '' ORDER BY loid, pageno)) FROM pg_largeobject"
        ).fetchone()
        assert row is not None
        hashes["pg_largeobject"] = row[0]
    return hashes
