"""Flyway's ``jdbc:postgresql://`` URLs translated to libpq conninfo, for ``migrations.url``/``FLYWAY_URL``."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, unquote

# pgJDBC parameter -> libpq keyword, for the parameters with a libpq equivalent.
_JDBC_PARAMS = {
    "sslmode": "sslmode",
    "sslrootcert": "sslrootcert",
    "sslcert": "sslcert",
    "sslkey": "sslkey",
    "applicationname": "application_name",
    "connecttimeout": "connect_timeout",
    "targetservertype": "target_session_attrs",
    "user": "user",
}
_TARGET_SERVER_TYPES = {
    "any": "any",
    "primary": "read-write",
    "master": "read-write",
    "secondary": "read-only",
    "standby": "read-only",
    "preferSecondary": "prefer-standby",
}


def jdbc_to_conninfo(url: str, user: str | None = None) -> str:
    """Translate ``jdbc:postgresql://host[:port][,host2[:port2]]/db?params`` into libpq conninfo.

    ``currentSchema`` becomes ``options=-csearch_path=...``; ``ssl=true`` becomes
    ``sslmode=require`` unless ``sslmode`` is given. A password in the URL is dropped (give it
    as ``password``/``FLYWAY_PASSWORD`` or, better, the target's password reference).
    Raises ValueError for a URL that is not ``jdbc:postgresql:``.
    """
    if not url.startswith("jdbc:postgresql:"):
        raise ValueError(f"not a jdbc:postgresql: URL: {url.split('?')[0]}")
    rest = url[len("jdbc:postgresql:") :]
    rest, _, query = rest.partition("?")
    parts: dict[str, Any] = {}
    if rest.startswith("//"):
        netloc, _, dbname = rest[2:].partition("/")
        hosts, ports = [], []
        for item in filter(None, netloc.split(",")):
            match = re.fullmatch(r"\[(?P<v6>[^\]]+)\](?::(?P<p6>\d+))?|(?P<h>[^:]+)(?::(?P<p>\d+))?", item)
            if not match:
                raise ValueError(f"cannot parse host '{item}'")
            hosts.append(match.group("v6") or match.group("h"))
            ports.append(match.group("p6") or match.group("p") or "5432")
        if hosts:
            parts["host"] = ",".join(hosts)
            parts["port"] = ",".join(ports)
    else:
        dbname = rest.lstrip("/")
    if dbname:
        parts["dbname"] = unquote(dbname)
    ssl = None
    for key, value in parse_qsl(query, keep_blank_values=True):
        lowered = key.lower()
        if lowered == "currentschema":
            parts["options"] = f"-csearch_path={value}"
        elif lowered == "ssl":
            ssl = value.lower() in ("", "true")
        elif lowered == "targetservertype":
            parts["target_session_attrs"] = _TARGET_SERVER_TYPES.get(value, value)
        elif lowered in _JDBC_PARAMS:
            parts[_JDBC_PARAMS[lowered]] = value
    if ssl and "sslmode" not in parts:
        parts["sslmode"] = "require"
    if user:
        parts["user"] = user
    from psycopg.conninfo import make_conninfo  # here: loading a config must not pay for psycopg

    return make_conninfo(**parts)
