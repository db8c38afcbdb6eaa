"""Connections to a target's server: password-free conninfo, connect, server facts, PGPASSFILE.

A target's password never reaches a client tool's argv or environment: :func:`password_env`
writes it to a temporary 0600 PGPASSFILE in ``<tools.state_dir>/pgpass/`` for the tool's lifetime. Command lines are built in
:mod:`opskit.pg.commands`, tools chosen in :mod:`opskit.pg.tools`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from opskit.config.model import TargetConfig
from opskit.core.errors import ConfigError, UnreachableError
from opskit.core.redaction import redact_text
from opskit.pg import passfiles

# --------------------------------------------------------------------------- connections


def dsn_parts(target: TargetConfig) -> dict[str, Any]:
    """Return the target's connection parameters as a dict (libpq env fills the gaps later).

    Raises ConfigError for a DSN libpq cannot parse.
    """
    try:
        return dict(conninfo_to_dict(target.dsn))
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"target '{target.name}' has an invalid dsn: {redact_text(str(exc))}") from exc


def conninfo(target: TargetConfig, dbname: str | None = None) -> str:
    """Return the target's conninfo without any password, optionally for another database.

    TLS settings (sslmode, sslrootcert, sslcert, sslkey) pass through unchanged.
    """
    parts = dsn_parts(target)
    parts.pop("password", None)
    if dbname is not None:
        parts["dbname"] = dbname
    return make_conninfo(**parts)


def password(target: TargetConfig) -> str | None:
    """Return the target's password: the secret reference, else one inside the DSN, else ``$PGPASSWORD``.

    ``$PGPASSWORD`` is read here because child tools never see it (execute.child_env removes
    it): it reaches them through the temporary PGPASSFILE like any other password.
    """
    if target.password is not None:
        return target.password.resolve().reveal()
    inline = dsn_parts(target).get("password")
    if inline:
        return str(inline)
    return os.environ.get("PGPASSWORD") or None


def describe(target: TargetConfig, dbname: str | None = None) -> str:
    """Return ``user@host:port/db`` for messages (never a password)."""
    parts = dsn_parts(target)
    env = os.environ
    host = parts.get("host") or env.get("PGHOST") or "localhost"
    port = parts.get("port") or env.get("PGPORT") or "5432"
    user = parts.get("user") or env.get("PGUSER") or ""
    db = dbname or parts.get("dbname") or env.get("PGDATABASE") or user or "?"
    return f"{user + '@' if user else ''}{host}:{port}/{db}"


def connect(
    target: TargetConfig, dbname: str | None = None, autocommit: bool = False, application_name: str = "opskit"
) -> psycopg.Connection[Any]:
    """Open a connection to the target (or another database on its server).

    Raises UnreachableError naming the server and libpq's reason.
    """
    kwargs: dict[str, Any] = {"application_name": application_name, "connect_timeout": 10}
    secret = password(target)
    if secret:
        kwargs["password"] = secret
    try:
        return psycopg.connect(conninfo(target, dbname), autocommit=autocommit, **kwargs)
    except psycopg.OperationalError as exc:
        reason = redact_text(str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__)
        raise UnreachableError(
            f"cannot connect to target '{target.name}' ({describe(target, dbname)}): {reason}",
            hint="check the dsn, the password reference and that the server accepts connections",
        ) from exc


# --------------------------------------------------------------------------- server facts


@dataclass(frozen=True)
class ServerFacts:
    """What a backup records about the server it ran against."""

    version: str
    version_num: int
    system_identifier: str | None
    database: str
    size_bytes: int
    user: str
    is_superuser: bool

    @property
    def major(self) -> int:
        """Return the server's major version (15 for 150004)."""
        return self.version_num // 10000

    def to_dict(self) -> dict[str, Any]:
        """Return the facts as recorded in a manifest."""
        return {
            "version": self.version,
            "version_num": self.version_num,
            "major": self.major,
            "system_identifier": self.system_identifier,
            "database": self.database,
            "size_bytes": self.size_bytes,
        }


def server_facts(conn: psycopg.Connection[Any]) -> ServerFacts:
    """Read version, system identifier, database, size and role of the connected server."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int,"
            " current_database(), pg_database_size(current_database()), current_user,"
            " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
        )
        row = cur.fetchone()
        assert row is not None
        # pg_control_system() is restricted to superusers and pg_monitor members by default.
        cur.execute(
            "SELECT CASE WHEN has_function_privilege('pg_control_system()', 'EXECUTE')"
            " THEN (SELECT system_identifier::text FROM pg_control_system()) END"
        )
        found = cur.fetchone()
        system_identifier = found[0] if found else None
    return ServerFacts(
        version=row[0],
        version_num=row[1],
        system_identifier=system_identifier,
        database=row[2],
        size_bytes=row[3],
        user=row[4],
        is_superuser=bool(row[5]),
    )


# --------------------------------------------------------------------------- passwords for child tools


def _escape_pgpass(value: str) -> str:
    # https://www.postgresql.org/docs/current/libpq-pgpass.html: ':' and '\' are escaped with '\'.
    return value.replace("\\", "\\\\").replace(":", "\\:")


@contextmanager
def password_env(target: TargetConfig, state_dir: Path) -> Iterator[dict[str, str]]:
    """Yield extra environment for a client tool: a temporary 0600 PGPASSFILE when a password is set.

    The file lives in ``<state_dir>/pgpass/`` (0700, :mod:`opskit.pg.passfiles`) and is
    removed when the block exits, whatever happens; a killed run's file is swept by the
    next run. The password never appears in argv or in the child's environment. Raises
    ConfigError when that directory cannot be prepared.
    """
    secret = password(target)
    if not secret:
        yield {}
        return
    with passfiles.password_file(f"*:*:*:*:{_escape_pgpass(secret)}\n", state_dir) as path:
        yield {"PGPASSFILE": str(path)}


def database_of(target: TargetConfig) -> str:
    """Return the database name the target's DSN (or libpq environment) points at."""
    parts = dsn_parts(target)
    return str(
        parts.get("dbname")
        or os.environ.get("PGDATABASE")
        or parts.get("user")
        or os.environ.get("PGUSER")
        or "postgres"
    )
