"""Connections to a target's server: password-free conninfo, connect, server facts, PGPASSFILE.

A target's password never reaches a client tool's argv or environment: :func:`password_env`
writes it to a temporary 0600 PGPASSFILE in ``<tools.state_dir>/pgpass/`` for the tool's lifetime. Command lines are built in
:mod:`opskit.pg.commands`, tools chosen in :mod:`opskit.pg.tools`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from opskit.config.model import TargetConfig
from opskit.core.errors import ConfigError, UnreachableError
from opskit.core.redaction import REDACTED, redact_text, remember_secret
from opskit.pg import passfiles

# --------------------------------------------------------------------------- connections

# Connection parameters whose values are secrets: they never reach a child's argv or environment
# (https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-PARAMKEYWORDS).
SECRET_PARAMS = ("password", "sslpassword")
# Server settings every session opskit holds starts with, as pg_dump does for its own: a role's
# statement_timeout or idle_in_transaction_session_timeout would otherwise end the snapshot
# session (and release the advisory lock with it) while pg_dump still streams.
SESSION_SETTINGS = {"statement_timeout": "0", "lock_timeout": "0", "idle_in_transaction_session_timeout": "0"}
# SQLSTATEs of a session the server ended or a statement it cancelled, and what really happened.
_SERVER_CAUSES = {
    "25P03": "the server ended the session: idle_in_transaction_session_timeout",
    "57014": "the server cancelled the statement: statement_timeout (or a cancel request)",
    "55P03": "the server gave up waiting for a lock: lock_timeout",
    "57P01": "the server ended the session: an administrator or a shutdown terminated it",
    "57P05": "the server ended the session: idle_session_timeout",
}
_QUOTED_RE = re.compile(r'"([^"]*)"')


def dsn_parts(target: TargetConfig) -> dict[str, Any]:
    """Return the target's connection parameters as a dict (libpq env fills the gaps later).

    Secret values found in the DSN are remembered for redaction. Raises ConfigError for a DSN
    libpq cannot parse; its message never quotes a fragment of a secret.
    """
    try:
        parts = dict(conninfo_to_dict(target.dsn))
    except psycopg.ProgrammingError as exc:
        reason = _redact_fragments(str(exc).strip(), target.dsn)
        # ``from None``: the library's own message quotes the fragment, and --debug prints the chain.
        raise ConfigError(f"target '{target.name}' has an invalid dsn: {reason}") from None
    for key in SECRET_PARAMS:
        if parts.get(key):
            remember_secret(str(parts[key]))
    return parts


def _redact_fragments(message: str, dsn: str) -> str:
    """Return libpq's parse error with every quoted fragment that may belong to a secret hidden.

    libpq quotes the token it choked on (``missing "=" after "r3t"``); after a secret key
    that token can be a piece of the password, so any quoted fragment found past the first
    secret key of the DSN is replaced.
    """
    lowered = dsn.lower()
    starts = [i for i in (lowered.find(k + "=") for k in SECRET_PARAMS) if i >= 0]
    url_pw = re.search(r"://[^:/@\s]*:", dsn)  # postgresql://user:password@host
    if url_pw:
        starts.append(url_pw.end())
    tail = dsn[min(starts) :] if starts else ""

    def hide(match: re.Match[str]) -> str:
        fragment = match.group(1)
        return f'"{REDACTED}"' if fragment not in ("=", "") and fragment in tail else match.group(0)

    return redact_text(_QUOTED_RE.sub(hide, message.splitlines()[0] if message else message))


def conninfo(target: TargetConfig, dbname: str | None = None) -> str:
    """Return the target's conninfo without any secret parameter, optionally for another database.

    TLS settings (sslmode, sslrootcert, sslcert, sslkey) pass through unchanged; ``password``
    and ``sslpassword`` never do (:func:`password_env` hands them to child tools in files).
    """
    parts = dsn_parts(target)
    for key in SECRET_PARAMS:
        parts.pop(key, None)
    if dbname is not None:
        parts["dbname"] = dbname
    return make_conninfo(**parts)


def secret_params(target: TargetConfig) -> dict[str, str]:
    """Return the secret connection parameters other than the password (``sslpassword``) set in the DSN."""
    parts = dsn_parts(target)
    return {key: str(parts[key]) for key in SECRET_PARAMS if key != "password" and parts.get(key)}


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
    """Return ``user@host:port/db`` for messages (never a password); an IPv6 host is bracketed."""
    parts = dsn_parts(target)
    env = os.environ
    host = str(parts.get("host") or env.get("PGHOST") or "localhost")
    port = parts.get("port") or env.get("PGPORT") or "5432"
    user = parts.get("user") or env.get("PGUSER") or ""
    db = dbname or parts.get("dbname") or env.get("PGDATABASE") or user or "?"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{user + '@' if user else ''}{host}:{port}/{db}"


def session_options(existing: str | None = None) -> str:
    """Return libpq ``options`` that set :data:`SESSION_SETTINGS`, after any the DSN already had.

    The DSN's own ``-c`` settings come last, so an operator who configured a timeout keeps it.
    """
    ours = " ".join(f"-c {name}={value}" for name, value in SESSION_SETTINGS.items())
    return f"{ours} {existing}".strip() if existing else ours


def server_cause(exc: BaseException) -> str | None:
    """Return what the server did when ``exc`` is a session it ended or a statement it cancelled, else None."""
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate in _SERVER_CAUSES:
        return _SERVER_CAUSES[sqlstate]
    text = str(exc)
    if "idle-in-transaction timeout" in text:
        return _SERVER_CAUSES["25P03"]
    if "server closed the connection unexpectedly" in text:
        return "the server closed the session (a timeout, a terminated backend or a restart: see its log)"
    return None


def connect(
    target: TargetConfig, dbname: str | None = None, autocommit: bool = False, application_name: str = "opskit"
) -> psycopg.Connection[Any]:
    """Open a connection to the target (or another database on its server), its timeouts off.

    Raises UnreachableError naming the server and libpq's reason (its first line).
    """
    parts = dsn_parts(target)
    kwargs: dict[str, Any] = {
        "application_name": application_name,
        "connect_timeout": 10,
        # An explicit ``options`` replaces libpq's PGOPTIONS, so the environment's settings are carried over.
        "options": session_options(parts.get("options") or os.environ.get("PGOPTIONS")),
    }
    kwargs.update(secret_params(target))
    secret = password(target)
    if secret:
        kwargs["password"] = secret
    try:
        return psycopg.connect(conninfo(target, dbname), autocommit=autocommit, **kwargs)
    except psycopg.OperationalError as exc:
        raise UnreachableError(
            f"cannot connect to target '{target.name}' ({describe(target, dbname)}): {libpq_reason(exc)}",
            hint="check the dsn, the password reference and that the server accepts connections",
        ) from exc


def libpq_reason(exc: BaseException) -> str:
    """Return libpq's first line of ``exc`` without its ``connection to server ... failed:`` prefix, redacted.

    The first line carries the cause ("Connection refused", "password authentication failed");
    the second is a tab-indented guess ("Is the server running...").
    """
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    first = text.splitlines()[0].strip()
    first = re.sub(r"^connection failed:\s*", "", first)
    first = re.sub(r'^connection to server (at|on) ".*?"(, port \d+)? failed:\s*', "", first)
    return redact_text(first or text.splitlines()[0])


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

    Other secret parameters (``sslpassword``) go to a 0600 service file the same way.

    The file lives in ``<state_dir>/pgpass/`` (0700, :mod:`opskit.pg.passfiles`) and is
    removed when the block exits, whatever happens; a killed run's file is swept by the
    next run. The password never appears in argv or in the child's environment. Raises
    ConfigError when that directory cannot be prepared.
    """
    secret = password(target)
    with _service_env(target, state_dir) as env:
        if not secret:
            yield env
            return
        with passfiles.password_file(f"*:*:*:*:{_escape_pgpass(secret)}\n", state_dir) as path:
            yield env | {"PGPASSFILE": str(path)}


SERVICE_NAME = "opskit"


@contextmanager
def _service_env(target: TargetConfig, state_dir: Path) -> Iterator[dict[str, str]]:
    """Yield PGSERVICEFILE/PGSERVICE for a 0600 service file holding the DSN's other secrets (sslpassword).

    A PGPASSFILE carries only passwords; libpq reads every other connection parameter from
    a service file too (https://www.postgresql.org/docs/current/libpq-pgservice.html), and the
    DSN's own parameters still win over it. Raises ConfigError when the DSN names a service
    of its own (its file must then hold the secret).
    """
    extra = secret_params(target)
    if not extra:
        yield {}
        return
    if dsn_parts(target).get("service"):
        raise ConfigError(
            f"target '{target.name}' sets sslpassword in a dsn that also names a service",
            hint="move sslpassword into that service's entry in its pg_service.conf",
        )
    body = f"[{SERVICE_NAME}]\n" + "".join(f"{key}={value}\n" for key, value in extra.items())
    with passfiles.password_file(body, state_dir) as path:
        yield {"PGSERVICEFILE": str(path), "PGSERVICE": SERVICE_NAME}


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
