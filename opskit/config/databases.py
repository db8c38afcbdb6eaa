"""Server targets: one target that backs up every database of a server, each as a *derived target*.

A target with ``databases = ["*"]`` (shell-style patterns, :mod:`fnmatch`, case-sensitive) and
optionally ``exclude_databases = ["template*", "scratch_*"]`` is a *server target*: its dsn's
database is only the one opskit connects to for discovery. Each database it covers becomes the
derived target ``<target>.<database>``, a :class:`TargetConfig` like any other (the same
storages, retention, staging, fingerprint settings; the dsn with the database replaced), so
``--target app.orders`` works on every command and its backups live under ``app.orders/``.

A database whose derived name is not a storable name (:mod:`opskit.config.names`: a space, a
non-ASCII letter, longer than 64 characters) is refused with one line rather than renamed: a
renamed prefix could not be mapped back to its database when the server is down.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass

from opskit.config.names import name_problem
from opskit.config.schema import ConfigErrors
from opskit.core.errors import ConfigError

# Templates and databases with datallowconn = false are never candidates (discovery's query
# leaves them out); these names are excluded whatever the patterns say, as pg_dumpall does.
ALWAYS_EXCLUDED = ("template0", "template1")


@dataclass(frozen=True)
class Selection:
    """The databases a server target covers, and the include patterns that matched nothing."""

    databases: tuple[str, ...]
    unmatched: tuple[str, ...]


def derived_name(server: str, database: str) -> str:
    """Return ``<server>.<database>``: the derived target's name and catalog prefix.

    Raises ConfigError (2) when that name cannot be stored (exclude the database, or rename it).
    """
    name = f"{server}.{database}"
    problem = name_problem(name)
    if problem is not None:
        raise ConfigError(
            f"database {database!r} of server target '{server}' cannot be backed up as target {name!r}: {problem}",
            hint=f"add it to targets.{server}.exclude_databases, or rename the database",
        )
    return name


def with_database(dsn: str, database: str) -> str:
    """Return ``dsn`` (key=value or URL) naming ``database`` instead of its own; other parameters kept.

    A dsn libpq cannot parse is returned unchanged: connecting reports it (without quoting secrets).
    """
    # Imported here: loading a config must not pay for psycopg (wal fetch runs once per WAL segment).
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return dsn
    parts["dbname"] = database
    return make_conninfo("", **parts)


def splits(name: str) -> Iterator[tuple[str, str]]:
    """Yield every (server target, database) reading of a derived name, the longest server name first.

    ``a.b.c`` gives ``("a.b", "c")`` then ``("a", "b.c")``; the caller takes the first whose
    server part is a configured server target (:func:`check_server_targets` keeps that unique).
    """
    for cut in range(len(name) - 1, 0, -1):
        if name[cut] == "." and cut < len(name) - 1:
            yield name[:cut], name[cut + 1 :]


def select(include: Sequence[str], exclude: Sequence[str], available: Iterable[str]) -> Selection:
    """Return the databases of ``available`` that ``include`` matches and ``exclude`` does not, sorted.

    The template databases are never selected; ``unmatched`` lists the include patterns that
    matched no database at all (before exclusion), for a warning.
    """
    names = sorted(set(available) - set(ALWAYS_EXCLUDED))
    included = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in include)]
    chosen = tuple(n for n in included if not any(fnmatch.fnmatchcase(n, p) for p in exclude))
    unmatched = tuple(p for p in include if not any(fnmatch.fnmatchcase(n, p) for n in names))
    return Selection(databases=chosen, unmatched=unmatched)


def check_server_targets(
    names: Iterable[str], servers: Collection[str], excluded_without_include: Iterable[str], errors: ConfigErrors
) -> None:
    """Record the configuration errors of server targets.

    ``names`` are every configured target, ``servers`` those that set ``databases``, and
    ``excluded_without_include`` those that set ``exclude_databases`` alone. A configured
    target ``app.orders`` next to server target ``app`` would share the derived target's
    catalog prefix, so two configurations would write one repository.
    """
    for name in names:
        for server, database in splits(name):
            if server in servers:
                errors.add(
                    f"targets.{name}",
                    f"is also the derived target of database '{database}' of server target "
                    f"'{server}' (their backups would share one prefix): rename one of them",
                )
                break
    for name in excluded_without_include:
        errors.add(
            f"targets.{name}.exclude_databases",
            'applies only to a server target: set databases (e.g. ["*"]) as well, or remove it',
        )
