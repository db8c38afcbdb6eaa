"""Command lines of PostgreSQL's client tools: the one place that knows their options, per major version.

Features never write a tool's argv themselves: they choose a tool with
:func:`opskit.pg.tools.find_tool` (the lowest major that is at least the server's or the dump's)
and ask a builder here for its command line. Supporting a new PostgreSQL major means checking
the options below against that release's notes, adding a branch on ``tool.major`` where one
changed, and teaching :mod:`opskit.pg.toc` the new archive version if pg_dump bumped it.

What each option is for, and since when it exists (the oldest archives opskit reads are 9.6's,
archive version 1.12):

pg_dump (one database, custom format, streamed to stdout)
    ``--format=custom``        the only format pg_restore can restore in parallel and list (9.6+)
    ``--compress=0``           opskit compresses with zstd in threads; in 16+ the option also takes
                               ``method[:detail]``, and ``0`` still means "none"
    ``--snapshot=ID``          dump the snapshot the backup exported, so the facts match (9.2+)
    ``--no-password``          never prompt: passwords arrive through a temporary PGPASSFILE
pg_dumpall (roles and tablespaces)
    ``--globals-only``         no databases, only what ``CREATE DATABASE`` cannot recreate
    ``--no-role-passwords``    for a role that is not a superuser: pg_authid, where the password
                               hashes live, is unreadable to it (10+)
pg_basebackup (a base backup for point-in-time recovery, 13+ for ``backup_manifest``)
    ``--format=tar --pgdata=-``  one tar stream on stdout (single tablespace only)
    ``--wal-method=none``      the WAL comes from the archive (``opskit wal push``)
    ``--checkpoint=fast``      do not wait for the next scheduled checkpoint
pg_restore
    ``--exit-on-error``, ``--clean --if-exists``, ``--no-owner --no-privileges``, ``--section``,
    ``--jobs`` (a file only, never stdin), ``--file=-`` (the SQL script instead of a database),
    ``--list`` (the table of contents), ``--single-transaction`` (with ``--clean``: a failed or
    killed run rolls the drops back; pg_restore refuses it with ``--jobs``); all 9.6+
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from psycopg.conninfo import make_conninfo

from opskit.config.model import TargetConfig
from opskit.pg.connection import conninfo
from opskit.pg.tools import Tool

Section = Literal["pre-data", "data", "post-data"]


def dbname_arg(target: TargetConfig, dbname: str | None = None) -> str:
    """Return ``--dbname=<conninfo>`` for ``target`` (or another database on its server), without a password."""
    return f"--dbname={conninfo(target, dbname)}"


# --------------------------------------------------------------------------- pg_dump, pg_dumpall


def pg_dump_argv(tool: Tool, target: TargetConfig, *, snapshot: str) -> list[str]:
    """Return the pg_dump command line that streams ``target``'s database in custom format to stdout.

    The archive is uncompressed (opskit compresses it) and dumps the exported ``snapshot``.
    """
    return [
        tool.path,
        dbname_arg(target),
        "--format=custom",
        "--compress=0",
        f"--snapshot={snapshot}",
        "--no-password",
    ]


def pg_dumpall_globals_argv(tool: Tool, target: TargetConfig, *, database: str, superuser: bool) -> list[str]:
    """Return the pg_dumpall command line that writes the cluster's roles and tablespaces to stdout.

    ``database`` is the one pg_dumpall connects to; a role that is not a ``superuser`` gets
    ``--no-role-passwords``, since only superusers may read pg_authid, where password hashes live.
    """
    argv = [tool.path, dbname_arg(target), f"--database={database_arg(database)}", "--globals-only", "--no-password"]
    if not superuser:
        argv.append("--no-role-passwords")
    return argv


def database_arg(database: str) -> str:
    """Return ``database`` as a value libpq reads as that name where it takes a dbname "or a connection string".

    pg_dumpall's ``--database`` goes to libpq as ``dbname`` with expand_dbname on, so a name with
    an ``=`` or a ``postgresql://`` prefix would be parsed as a connection string and fail
    (https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-PQCONNECTDBPARAMS). Such a
    name is passed as the connection string ``dbname='...'`` (quoted as libpq quotes), any other as it is.
    """
    if "=" not in database and not database.startswith(("postgresql://", "postgres://")):
        return database
    return make_conninfo(dbname=database)


def pg_basebackup_argv(tool: Tool, target: TargetConfig) -> list[str]:
    """Return the pg_basebackup command line that streams ``target``'s cluster as one tar to stdout.

    ``-Ft -D -`` writes the base tar (with ``backup_manifest``, 13+) to stdout, which only works
    for a cluster with a single tablespace; ``-X none`` leaves the WAL to the archive (the
    server waits until the backup's last segment is archived before it returns);
    ``--checkpoint=fast`` starts at once instead of after the next scheduled checkpoint.
    """
    return [
        tool.path,
        dbname_arg(target),
        "--format=tar",
        "--pgdata=-",
        "--wal-method=none",
        "--checkpoint=fast",
        "--no-password",
    ]


def pg_receivewal_argv(tool: Tool, target: TargetConfig, *, directory: str, slot: str) -> list[str]:
    """Return the pg_receivewal command line that streams ``target``'s WAL into ``directory`` on ``slot``.

    ``--no-loop`` makes a lost connection an exit the caller sees (and restarts), instead of
    a silent retry loop; the slot keeps the server from recycling WAL until it is streamed.
    """
    return [
        tool.path,
        dbname_arg(target),
        f"--directory={directory}",
        f"--slot={slot}",
        "--no-loop",
        "--no-password",
    ]


def without_connection(argv: list[str]) -> list[str]:
    """Return ``argv`` without its ``--dbname=`` argument, to record in a manifest (it names a host)."""
    return [a for a in argv if not a.startswith("--dbname=")]


# --------------------------------------------------------------------------- pg_restore


@dataclass(frozen=True)
class PgRestoreCommand:
    """pg_restore into one database, with the options every run of one restore shares.

    A restore may run pg_restore several times (schema, data script, indexes, or one run from a
    spool file); each method returns one of those command lines. ``clean`` restores over an
    existing database in ONE transaction (``--single-transaction``), so a failure or a kill
    leaves it as it was; such a command has one job only (``from_stdin``).
    """

    tool: Tool
    target: TargetConfig
    database: str
    exit_on_error: bool = True
    clean: bool = False
    no_owner: bool = False

    def options(self) -> list[str]:
        """Return the command line up to the archive: pg_restore reads the archive from stdin."""
        argv = [self.tool.path, dbname_arg(self.target, self.database), "--no-password"]
        if self.exit_on_error:
            argv.append("--exit-on-error")
        if self.clean:
            # The drops and the restore commit together or not at all (pg_restore then stops at
            # the first error, as --exit-on-error does).
            argv += ["--clean", "--if-exists", "--single-transaction"]
        if self.no_owner:
            argv += ["--no-owner", "--no-privileges"]
        return argv

    def from_stdin(self) -> list[str]:
        """Return the command line restoring the whole archive fed to stdin (one job: stdin cannot seek)."""
        return self.options()

    def section_from_file(self, section: Section, archive: Path, jobs: int | None = None) -> list[str]:
        """Return the command line restoring one ``section`` of the ``archive`` file, with ``jobs`` if given.

        Raises ValueError for a ``clean`` command with ``jobs``: one transaction is one connection.
        """
        if jobs is not None and jobs > 1:
            self._check_parallel()
        argv = [*self.options(), f"--section={section}"]
        if jobs is not None:
            argv.append(f"--jobs={jobs}")
        return [*argv, str(archive)]

    def from_file(self, archive: Path, jobs: int) -> list[str]:
        """Return the command line restoring the whole ``archive`` file with ``jobs`` parallel jobs.

        Raises ValueError for a ``clean`` command with more than one job (see :meth:`section_from_file`).
        """
        if jobs > 1:
            self._check_parallel()
        return [*self.options(), f"--jobs={jobs}", str(archive)]

    def _check_parallel(self) -> None:
        if self.clean:
            raise ValueError("a --clean restore runs in one transaction, which pg_restore cannot split over --jobs")

    def data_script(self) -> list[str]:
        """Return the command line printing the data section of the archive on stdin as SQL to stdout.

        It connects to no database, so it takes none of the restore's options.
        """
        return pg_restore_data_script_argv(self.tool)


def pg_restore_data_script_argv(tool: Tool) -> list[str]:
    """Return the pg_restore command line that turns the data section on stdin into an SQL script on stdout."""
    return [tool.path, "--section=data", "--file=-"]


def pg_restore_list_argv(tool: Tool) -> list[str]:
    """Return the pg_restore command line that prints the table of contents of the archive on stdin."""
    return [tool.path, "--list"]


def psql_script_argv(tool: Tool, target: TargetConfig) -> list[str]:
    """Return the psql command line that runs the SQL on stdin in ``target``'s database, past any error.

    No ``.psqlrc``, no prompt, no chatter; ``ON_ERROR_STOP=0`` so that, say, a role that already
    exists does not stop the rest of a globals script.
    """
    return [tool.path, dbname_arg(target), "--no-password", "--quiet", "--no-psqlrc", "-v", "ON_ERROR_STOP=0"]
