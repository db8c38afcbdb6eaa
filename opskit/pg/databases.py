"""Creating, inspecting and dropping databases on a target's server."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from opskit.config.model import TargetConfig
from opskit.core.errors import OpskitError, RestoreFailed
from opskit.pg.connection import connect, database_of
from opskit.pg.facts import object_counts


def _maintenance_connection(server: TargetConfig, database: str) -> psycopg.Connection[Any]:
    """Return a connection to a database on ``server`` other than ``database``, to create or drop it.

    Tries the target's own database, then postgres, then template1; raises the last one's error (UnreachableError).
    """
    candidates = [database_of(server), "postgres", "template1"]
    last: OpskitError | None = None
    for name in candidates:
        if name == database:
            continue
        try:
            return connect(server, dbname=name, autocommit=True, application_name="opskit restore")
        except OpskitError as exc:
            last = exc
    assert last is not None
    raise last


def database_exists(server: TargetConfig, database: str) -> bool:
    """Return True when ``database`` exists on the server."""
    with _maintenance_connection(server, database) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
    return row is not None


def database_is_empty(server: TargetConfig, database: str) -> bool:
    """Return True when ``database`` holds no user tables, views, sequences or functions."""
    with connect(server, dbname=database, application_name="opskit restore") as conn:
        counts = object_counts(conn)
    return not any(counts.values())


def create_database(server: TargetConfig, database: str, owner: str | None = None) -> None:
    """Create ``database`` from template0 (so nothing from template1 collides with the dump).

    Raises RestoreFailed when the server refuses (most often: the role lacks CREATEDB).
    """
    statement = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(database))
    if owner:
        statement = sql.SQL("{} OWNER {}").format(statement, sql.Identifier(owner))
    with _maintenance_connection(server, database) as conn:
        try:
            conn.execute(statement)
        except psycopg.Error as exc:
            raise RestoreFailed(
                f"cannot create database '{database}' on target '{server.name}': {exc.diag.message_primary or exc}",
                hint="the role needs CREATEDB, or create the database and pass --to",
            ) from exc


def database_owner(server: TargetConfig, database: str) -> str | None:
    """Return the role that owns ``database``, or None when it does not exist."""
    with _maintenance_connection(server, database) as conn:
        row = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (database,)).fetchone()
    return str(row[0]) if row else None


def drop_database(server: TargetConfig, database: str) -> None:
    """Drop ``database`` (terminating its sessions: ``WITH (FORCE)``, PostgreSQL 13+); a missing one is no error."""
    with _maintenance_connection(server, database) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
