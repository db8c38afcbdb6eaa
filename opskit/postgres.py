"""PostgreSQL: connections, server facts, choosing client tools, password files, argv builders.

A pg_dump older than the server fails, sometimes silently (GitLab's 2017 outage began with a
pg_dump 9.2 against a 9.6 server), so every tool is chosen by running ``--version`` on each
candidate and taking the lowest major version that is at least the server's.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from opskit.config import TargetConfig
from opskit.errors import ConfigError, OpskitError, RestoreFailed, UnreachableError
from opskit.execute import run as run_command
from opskit.log import redact_text

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


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


def quote_ident(name: str) -> sql.Identifier:
    """Return a safely quoted SQL identifier (for database, schema and table names)."""
    return sql.Identifier(name)


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


# --------------------------------------------------------------------------- client tools


@dataclass(frozen=True)
class Tool:
    """A PostgreSQL client program and the version it reported."""

    name: str
    path: str
    major: int
    version: str


@functools.lru_cache(maxsize=64)
def tool_version(path: str) -> tuple[int, str] | None:
    """Run ``path --version`` (once per process); return (major, full version) or None when it is not a PostgreSQL tool."""
    try:
        result = run_command([path, "--version"], timeout=15)
    except Exception:
        return None
    text = result.stdout.decode("utf-8", "replace").strip()
    match = _VERSION_RE.search(text)
    if result.returncode != 0 or not match:
        return None
    major = int(match.group(1))
    version = f"{match.group(1)}.{match.group(2)}" if match.group(2) else match.group(1)
    return major, version


def tool_candidates(name: str, configured_dir: str | None = None) -> list[str]:
    """Return every path where ``name`` may be: the configured directory, PATH, /usr/lib/postgresql/*/bin."""
    paths: list[str] = []
    if configured_dir:
        paths.append(str(Path(configured_dir) / name))
    on_path = shutil.which(name)
    versioned = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    # Debian's pg_wrapper (what /usr/bin/pg_dump points to) only dispatches to one of the versioned
    # binaries below, and is a Perl script that is slow to start: skip it when those are present.
    if on_path and not (versioned and os.path.basename(os.path.realpath(on_path)) == "pg_wrapper"):
        paths.append(os.path.realpath(on_path))
    paths.extend(versioned)
    paths.extend(sorted(glob.glob(f"/usr/pgsql-*/bin/{name}")))  # RHEL/PGDG layout
    seen: set[str] = set()
    unique = []
    for path in paths:
        if path not in seen and os.access(path, os.X_OK):
            seen.add(path)
            unique.append(path)
    return unique


def find_tool(name: str, min_major: int, configured_dir: str | None = None) -> Tool:
    """Return the ``name`` binary whose major version is the lowest one >= ``min_major``.

    A configured directory is authoritative: its tool is used if new enough, else refused.
    Raises UnreachableError (exit 3) naming what was found and what to install.
    """
    candidates = tool_candidates(name, configured_dir)
    found: list[Tool] = []
    for path in candidates:
        version = tool_version(path)
        if version is not None:
            found.append(Tool(name, path, version[0], version[1]))
    if configured_dir:
        configured = [t for t in found if t.path.startswith(str(Path(configured_dir)))]
        if configured:
            found = configured
    usable = sorted((t for t in found if t.major >= min_major), key=lambda t: (t.major, t.path))
    if usable:
        return usable[0]
    seen = ", ".join(f"{t.name} {t.version} ({t.path})" for t in found) or "none"
    raise UnreachableError(
        f"no {name} of major version {min_major} or newer was found (found: {seen}); an older {name} "
        f"cannot safely handle a PostgreSQL {min_major} server",
        hint=f"install postgresql-client-{min_major} or set tools.pg_bin_dir to its bin directory",
    )


# --------------------------------------------------------------------------- passwords for child tools


def _escape_pgpass(value: str) -> str:
    # https://www.postgresql.org/docs/current/libpq-pgpass.html: ':' and '\' are escaped with '\'.
    return value.replace("\\", "\\\\").replace(":", "\\:")


@contextmanager
def password_env(target: TargetConfig) -> Iterator[dict[str, str]]:
    """Yield extra environment for a client tool: a temporary 0600 PGPASSFILE when a password is set.

    The file is removed when the block exits, whatever happens. The password never
    appears in argv or in the child's environment.
    """
    secret = password(target)
    if not secret:
        yield {}
        return
    fd, path = tempfile.mkstemp(prefix="opskit-pgpass-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f"*:*:*:*:{_escape_pgpass(secret)}\n")
        yield {"PGPASSFILE": path}
    finally:
        with suppress(FileNotFoundError):
            os.unlink(path)


def dbname_arg(target: TargetConfig, dbname: str | None = None) -> str:
    """Return ``--dbname=<conninfo>`` for a client tool (password-free)."""
    return f"--dbname={conninfo(target, dbname)}"


def database_of(target: TargetConfig) -> str:
    """Return the database name the target's DSN (or libpq environment) points at."""
    parts = dsn_parts(target)
    return str(parts.get("dbname") or os.environ.get("PGDATABASE") or parts.get("user") or os.environ.get("PGUSER") or "postgres")


# --------------------------------------------------------------------------- databases


def _maintenance_connection(server: TargetConfig, database: str) -> psycopg.Connection[Any]:
    """Connect to a database on ``server`` other than ``database``, to create or drop it."""
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
        counts = _object_counts(conn)
    return not any(counts.values())


def create_database(server: TargetConfig, database: str, owner: str | None = None) -> None:
    """Create ``database`` from template0 (so nothing from template1 collides with the dump)."""
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
        row = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
    return str(row[0]) if row else None


def drop_database(server: TargetConfig, database: str) -> None:
    """Drop ``database`` (terminating its sessions); a missing database is not an error."""
    with _maintenance_connection(server, database) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


def _object_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    from opskit.facts import object_counts

    return object_counts(conn)
