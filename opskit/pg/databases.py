"""Creating, inspecting, renaming and dropping databases on a target's server.

Also the two identities a restore relies on: a database's own (encoding, collation, ctype,
locale provider and ICU/builtin locale, :class:`DatabaseIdentity`, recorded in the manifest
and reused by ``CREATE DATABASE``) and a server's (:func:`server_identity`: the system
identifier, or host:port when it cannot be read), which decides whether a destination is a
protected target however it is spelled.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import sql

from opskit.config.model import TargetConfig
from opskit.core.errors import OpskitError, RestoreFailed, UnreachableError
from opskit.pg.connection import connect, database_of, dsn_parts
from opskit.pg.facts import object_counts

# How long a drop waits for a restarting server before it reports the leftover (seconds).
DROP_RETRY_SECONDS = 90.0


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


# --------------------------------------------------------------------------- identities


@dataclass(frozen=True)
class DatabaseIdentity:
    """What makes a database's text mean the same after a restore: encoding and locale.

    ``provider`` is PostgreSQL's ``datlocprovider`` ("c" libc, "i" icu, "b" builtin; None
    before PostgreSQL 15); ``locale`` is its ICU or builtin locale (``daticulocale`` on 15-16,
    ``datlocale`` from 17), None for libc.
    """

    encoding: str
    collate: str
    ctype: str
    provider: str | None = None
    locale: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form recorded in a manifest (``server.identity``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> DatabaseIdentity | None:
        """Return the identity recorded in a manifest, or None when absent or not of this shape."""
        if not isinstance(data, Mapping):
            return None
        fields = ("encoding", "collate", "ctype")
        if not all(isinstance(data.get(f), str) for f in fields):
            return None
        provider, locale = data.get("provider"), data.get("locale")
        return cls(
            encoding=data["encoding"],
            collate=data["collate"],
            ctype=data["ctype"],
            provider=provider if isinstance(provider, str) else None,
            locale=locale if isinstance(locale, str) else None,
        )

    def describe(self) -> str:
        """Return ``LATIN1 / C`` (or ``UTF8 / icu und-x-icu``) for messages."""
        if self.provider in ("i", "b") and self.locale:
            return f"{self.encoding} / {'icu' if self.provider == 'i' else 'builtin'} {self.locale}"
        return f"{self.encoding} / {self.collate}" + (f" (ctype {self.ctype})" if self.ctype != self.collate else "")


def database_identity(conn: psycopg.Connection[Any]) -> DatabaseIdentity:
    """Return the connected database's encoding and locale.

    ``to_jsonb`` of the pg_database row reads the columns each major has (``datlocprovider``
    from 15, ``daticulocale`` on 15-16, ``datlocale`` from 17) without a query per version.
    """
    row = conn.execute(
        "SELECT pg_encoding_to_char(d.encoding), to_jsonb(d) FROM pg_database d WHERE d.datname = current_database()"
    ).fetchone()
    assert row is not None
    columns: dict[str, Any] = row[1]
    locale = columns.get("datlocale") or columns.get("daticulocale")
    return DatabaseIdentity(
        encoding=str(row[0]),
        collate=str(columns["datcollate"]),
        ctype=str(columns["datctype"]),
        provider=columns.get("datlocprovider"),
        locale=str(locale) if locale else None,
    )


@dataclass(frozen=True)
class ServerIdentity:
    """Who a server is: its system identifier (None when it cannot be read) and its host:port."""

    system_identifier: str | None
    address: str

    def same_as(self, other: ServerIdentity) -> bool:
        """Return True when both are one server: equal system identifiers, or (one unknown) equal addresses."""
        if self.system_identifier and other.system_identifier:
            return self.system_identifier == other.system_identifier
        return self.address == other.address


def server_identity(server: TargetConfig) -> ServerIdentity:
    """Return who ``server`` is, however its DSN spells it.

    The system identifier (``pg_control_system()``, superusers and pg_monitor only) names a
    cluster however it is reached; host:port is the fallback, with libpq's defaults filled in.
    An unreachable server has only its address (it cannot be written to anyway).
    """
    system_identifier = None
    try:
        with _maintenance_connection(server, "") as conn:
            row = conn.execute(
                "SELECT CASE WHEN has_function_privilege('pg_control_system()', 'EXECUTE')"
                " THEN (SELECT system_identifier::text FROM pg_control_system()) END"
            ).fetchone()
        system_identifier = str(row[0]) if row and row[0] else None
    except UnreachableError:
        pass
    return ServerIdentity(system_identifier, server_address(server))


def server_address(server: TargetConfig) -> str:
    """Return ``host:port`` of ``server`` as libpq would use them (a socket directory for an empty host)."""
    parts = dsn_parts(server)
    host = str(parts.get("host") or os.environ.get("PGHOST") or "/var/run/postgresql")
    port = str(parts.get("port") or os.environ.get("PGPORT") or "5432")
    if host in ("localhost", "::1"):
        host = "127.0.0.1"
    return f"{host.split(',')[0]}:{port.split(',')[0]}"


# --------------------------------------------------------------------------- inspecting


def database_exists(server: TargetConfig, database: str) -> bool:
    """Return True when ``database`` exists on the server."""
    with _maintenance_connection(server, database) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
    return row is not None


# Databases CREATE DATABASE copies (template1 by default, template0 for opskit's own): never a destination.
TEMPLATE_DATABASES = ("template0", "template1")


def is_template(server: TargetConfig, database: str) -> bool:
    """Return True when ``database`` is template0, template1, or marked ``datistemplate`` on the server.

    A restore into one would put the backup's objects into every database created from it
    afterwards (and ``--replace`` would turn it into a database that is no template).
    """
    if database in TEMPLATE_DATABASES:
        return True
    with _maintenance_connection(server, database) as conn:
        row = conn.execute("SELECT datistemplate FROM pg_database WHERE datname = %s", (database,)).fetchone()
    return bool(row and row[0])


def database_is_empty(server: TargetConfig, database: str) -> bool:
    """Return True when ``database`` holds no user tables, views, sequences or functions."""
    with connect(server, dbname=database, application_name="opskit restore") as conn:
        counts = object_counts(conn)
    return not any(counts.values())


def database_owner(server: TargetConfig, database: str) -> str | None:
    """Return the role that owns ``database``, or None when it does not exist."""
    with _maintenance_connection(server, database) as conn:
        row = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (database,)).fetchone()
    return str(row[0]) if row else None


def replace_refusal(server: TargetConfig, database: str) -> str | None:
    """Return why this role cannot build a database beside ``database`` and swap the names, or None.

    Renaming needs ownership (or superuser) and CREATEDB; creating the new one needs CREATEDB.
    """
    with _maintenance_connection(server, database) as conn:
        row = conn.execute(
            "SELECT r.rolsuper, r.rolcreatedb, pg_has_role(current_user, d.datdba, 'MEMBER')"
            " FROM pg_roles r, pg_database d WHERE r.rolname = current_user AND d.datname = %s",
            (database,),
        ).fetchone()
    if row is None:
        return None
    superuser, createdb, owner = row
    if superuser:
        return None
    if not createdb:
        return "the role lacks CREATEDB (needed to create the new database and to rename)"
    if not owner:
        return f"the role does not own database '{database}' (needed to rename it aside)"
    return None


def connected_sessions(server: TargetConfig, database: str) -> int:
    """Return how many other sessions are connected to ``database``."""
    with _maintenance_connection(server, database) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (database,)
        ).fetchone()
    return int(row[0]) if row else 0


# --------------------------------------------------------------------------- changing


def create_database(
    server: TargetConfig, database: str, owner: str | None = None, identity: DatabaseIdentity | None = None
) -> None:
    """Create ``database`` from template0 (so nothing from template1 collides with the dump).

    With ``identity`` the new database gets that encoding, collation, ctype and locale provider
    (the provider only on PostgreSQL 15+, which has them). Raises RestoreFailed when the server
    refuses: the name was taken since the caller checked it (another run creating the same
    database at the same time: that database is left alone), the role lacks CREATEDB, or the
    server lacks the locale (named).
    """
    statement = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(database))
    if owner:
        statement = sql.SQL("{} OWNER {}").format(statement, sql.Identifier(owner))
    with _maintenance_connection(server, database) as conn:
        if identity is not None:
            statement = sql.SQL("{} {}").format(statement, _identity_clause(identity, conn.info.server_version))
        try:
            conn.execute(statement)
        except psycopg.errors.DuplicateDatabase as exc:
            # The callers check that the name is free first: someone made it in between.
            raise RestoreFailed(
                f"database '{database}' was created by another run at the same time on target '{server.name}'; "
                "this run left it alone",
                hint="let the other run finish and check its result, or restore with --to into another database",
            ) from exc
        except psycopg.Error as exc:
            reason = exc.diag.message_primary or str(exc)
            # "invalid locale name", "encoding ... does not match locale ...": the server lacks the identity.
            if identity is not None and any(word in reason for word in ("locale", "encoding", "collation")):
                raise RestoreFailed(
                    f"target '{server.name}' cannot create database '{database}' as {identity.describe()} "
                    f"(the backup's encoding and locale): {reason}",
                    hint="install that locale on the server, or pass --encoding and --locale "
                    "(e.g. --encoding UTF8 --locale C.UTF-8) to choose ones it has",
                ) from exc
            raise RestoreFailed(
                f"cannot create database '{database}' on target '{server.name}': {reason}",
                hint="the role needs CREATEDB, or create the database and pass --to",
            ) from exc


def _identity_clause(identity: DatabaseIdentity, server_version: int) -> sql.Composable:
    parts = [
        sql.SQL("ENCODING {}").format(sql.Literal(identity.encoding)),
        sql.SQL("LC_COLLATE {}").format(sql.Literal(identity.collate)),
        sql.SQL("LC_CTYPE {}").format(sql.Literal(identity.ctype)),
    ]
    if server_version >= 150000 and identity.provider is not None:
        provider = {"c": "libc", "i": "icu", "b": "builtin"}.get(identity.provider, identity.provider)
        parts.append(sql.SQL("LOCALE_PROVIDER {}").format(sql.SQL(provider)))
        if provider == "icu" and identity.locale:
            parts.append(sql.SQL("ICU_LOCALE {}").format(sql.Literal(identity.locale)))
        elif provider == "builtin" and identity.locale:
            parts.append(sql.SQL("BUILTIN_LOCALE {}").format(sql.Literal(identity.locale)))
    return sql.SQL(" ").join(parts)


def rename_database(server: TargetConfig, old: str, new: str) -> None:
    """Rename ``old`` to ``new``, terminating the sessions connected to ``old`` first.

    A session may connect between the terminate and the rename, so both are tried a few times.
    Raises RestoreFailed naming the database when it still has sessions.
    """
    statement = sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new))
    with _maintenance_connection(server, old) as conn:
        for attempt in range(10):
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (old,),
            )
            try:
                conn.execute(statement)
                return
            except psycopg.errors.ObjectInUse as exc:
                if attempt == 9:
                    raise RestoreFailed(
                        f"cannot rename database '{old}' on target '{server.name}': other sessions keep connecting",
                        hint=f"stop the clients of '{old}' and run the restore again",
                    ) from exc
                time.sleep(0.2 * (attempt + 1))
            except psycopg.Error as exc:
                raise RestoreFailed(
                    f"cannot rename database '{old}' to '{new}' on target '{server.name}': "
                    f"{exc.diag.message_primary or exc}"
                ) from exc


def drop_command(server: TargetConfig, database: str) -> str:
    """Return the shell command an operator runs to drop ``database`` by hand."""
    parts = dsn_parts(server)
    parts.pop("password", None)
    parts["dbname"] = "postgres"
    conninfo = " ".join(f"{k}={v}" for k, v in parts.items())
    statement = sql.Identifier(database).as_string(None)
    return f"psql {shlex.quote(conninfo)} -c {shlex.quote(f'DROP DATABASE {statement} WITH (FORCE)')}"


def drop_database(server: TargetConfig, database: str, wait: float = 0.0) -> None:
    """Drop ``database`` (terminating its sessions: ``WITH (FORCE)``, PostgreSQL 13+); a missing one is no error.

    ``wait`` > 0 retries for that many seconds while the server cannot be reached or is
    starting up (a restart mid-restore), then raises. Raises UnreachableError or RestoreFailed.
    """
    deadline = time.monotonic() + wait
    delay = 0.2
    while True:
        try:
            with _maintenance_connection(server, database) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
            return
        except (UnreachableError, psycopg.OperationalError) as exc:
            if time.monotonic() + delay > deadline:
                if isinstance(exc, UnreachableError):
                    raise
                raise UnreachableError(f"cannot drop database '{database}' on target '{server.name}': {exc}") from exc
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        except psycopg.Error as exc:
            raise RestoreFailed(
                f"cannot drop database '{database}' on target '{server.name}': {exc.diag.message_primary or exc}"
            ) from exc
