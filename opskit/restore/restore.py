"""``opskit restore``: a backup back into a database, checked against its manifest.

The default destination is a NEW database ``<db>_restore_<id>`` on the target's own server,
so a restore never overwrites anything unless asked to. A non-empty destination needs
``--clean`` (restore over it, dropping the objects the dump contains) or ``--replace`` (a new
database swapped in for it, so objects created after the backup go too); neither touches the
destination before the backup is proven readable (see :mod:`opskit.restore.replace`), and
``--clean`` runs pg_restore in one transaction, so a failure or an interrupt rolls everything
back. A ``--to`` connection string must name its database (``dbname=``), never a template
database. A destination is protected when its server and database are those of a
``protected`` target, however ``--to`` spells them; it needs confirmation (the typed database
name on a terminal, ``--yes`` otherwise), as does the server's ``postgres`` database.

A new database gets the backup's encoding, collation, ctype and locale provider (recorded in
the manifest), unless ``--encoding``/``--locale`` override them.

``--jobs 1`` streams storage -> [age] -> zstd -> ``pg_restore`` stdin with no temp file.
``--jobs N`` streams too, and loads the data over N connections, one big table included
(``restore_parallel``); only archives with large objects spool the dump to a file for
``pg_restore --jobs N``, and the spool is removed whatever happens (``--clean`` is one
transaction, so one job). Either way, a database this run created is dropped again if the
restore fails or its row counts differ from the manifest (retrying while the server restarts),
so no partial restore is left behind; when it cannot be dropped, the error or warning names it
with the command that drops it.
"""

from __future__ import annotations

import contextlib
import re
import secrets as random_tokens
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from opskit.catalog import GLOBALS_ARTIFACT, Manifest, TableFacts, find_backup
from opskit.config.model import TargetConfig
from opskit.context import AppContext
from opskit.core.errors import ConfigError, RestoreFailed, VerificationFailed
from opskit.core.execute import Child, spawn
from opskit.core.log import get_logger
from opskit.core.progress import ByteProgress
from opskit.pg import clean_order, connection, databases, facts, tools
from opskit.pg.commands import PgRestoreCommand, psql_script_argv
from opskit.pg.toc import TocEntry
from opskit.restore import parallel
from opskit.restore import replace as replace_route
from opskit.restore.reader import OpenedBackup, open_backup
from opskit.restore.result import RestoreResult, clean_lock_advice, failure_note

__all__ = ["Confirm", "RestoreResult", "default_database_name", "restore_backup", "restore_globals", "run"]

log = get_logger(__name__)

# (why it needs confirmation, e.g. "Target 'app' is protected"; database) -> confirmed?
Confirm = Callable[[str, str], bool]

# The maintenance database every server has: restoring into it needs the same confirmation as a protected target.
MAINTENANCE_DATABASE = "postgres"


def default_database_name(manifest: Manifest) -> str:
    """Return ``<db>_restore_<id>`` lower-cased, within PostgreSQL's 63-byte identifier limit."""
    suffix = "_restore_" + re.sub(r"[^a-z0-9]", "_", manifest.id.lower())
    base = manifest.database or manifest.target
    # The limit is in bytes: cut the UTF-8 form, dropping a character split in two.
    base = base.encode("utf-8")[: 63 - len(suffix)].decode("utf-8", "ignore")
    return base + suffix


def resolve_destination(
    ctx: AppContext, source: TargetConfig, to: str | None, manifest: Manifest
) -> tuple[TargetConfig, str, bool]:
    """Return (server target, database, is_new_default) for ``--to``: None, a target name, or a DSN.

    Raises ConfigError (2) for a name that is neither, or a DSN without ``dbname``.
    """
    if to is None:
        return source, default_database_name(manifest), True
    if to in ctx.config.targets:
        dest = ctx.config.targets[to]
        return dest, connection.database_of(dest), False
    if "=" in to or "://" in to:
        dest = TargetConfig(name="--to", dsn=to)
        parts = connection.dsn_parts(dest)
        if not parts.get("dbname"):
            # libpq would pick a database itself (PGDATABASE, else the user name: often postgres).
            # A service's dbname lives in pg_service.conf, which opskit does not read: it must
            # know the database before it connects, to check it is empty or confirm replacing it.
            via = " itself (a service's dbname in pg_service.conf is not read)" if parts.get("service") else ""
            raise ConfigError(
                f"the --to connection string names no database{via}",
                hint="name the database with dbname=... (or .../<database> in a postgresql:// URI)",
            )
        return dest, connection.database_of(dest), False
    raise ConfigError(
        f"--to '{to}' is neither a configured target nor a connection string",
        hint=f"configured targets: {', '.join(sorted(ctx.config.targets))}",
    )


def protected_target(ctx: AppContext, server: TargetConfig, database: str) -> TargetConfig | None:
    """Return the protected target that ``database`` on ``server`` is, however it is spelled; None if none.

    A configured target that is ``protected`` is protected under its own name. An ad-hoc DSN
    (or another target) is compared by identity: the same database name on the same server
    (system identifier, or host:port when that cannot be read, see ``databases.server_identity``).
    """
    if server.protected:
        return server
    candidates = [t for t in ctx.config.targets.values() if t.protected and connection.database_of(t) == database]
    if not candidates:
        return None
    destination = databases.server_identity(server)
    for candidate in candidates:
        if databases.server_identity(candidate).same_as(destination):
            return candidate
    return None


def chosen_identity(manifest: Manifest, encoding: str | None, locale: str | None) -> databases.DatabaseIdentity | None:
    """Return the encoding and locale a new database gets: the backup's, with ``--encoding``/``--locale`` applied.

    Returns None (the server's defaults) for an old manifest without them and no override.
    ``--locale`` sets the collation and ctype with the libc provider.
    """
    recorded = manifest.database_identity
    if encoding is None and locale is None:
        return recorded
    base = recorded or databases.DatabaseIdentity(encoding="UTF8", collate="C.UTF-8", ctype="C.UTF-8")
    if locale is not None:
        base = databases.DatabaseIdentity(base.encoding, locale, locale, provider="c" if base.provider else None)
    if encoding is not None:
        base = databases.DatabaseIdentity(encoding, base.collate, base.ctype, base.provider, base.locale)
    return base


def run(
    ctx: AppContext,
    selector: str = "latest",
    target: str | None = None,
    to: str | None = None,
    storage: str | None = None,
    jobs: int = 1,
    clean: bool = False,
    confirmed: bool = False,
    confirm: Confirm | None = None,
    no_owner: bool = False,
    replace: bool = False,
    keep_old: bool = False,
    encoding: str | None = None,
    locale: str | None = None,
) -> RestoreResult:
    """Restore the backup ``selector`` names (id, id prefix or ``latest``) of ``target``.

    Raises ConfigError (2) for a refused destination (a ``--to`` DSN without ``dbname``, a
    template database) or a missing confirmation (a protected target, ``postgres``),
    UnreachableError (3), RestoreFailed (4) when pg_restore or decryption fails (``--clean``:
    rolled back), VerificationFailed (5) when a hash differs, or when the row counts of a
    database this run created differ (it is dropped first; ``--replace``: the destination is
    untouched). Row-count mismatches in an existing database (``--clean``, an empty one) are
    returned in the result (the CLI exits 5 on them).
    """
    if clean and replace:
        raise ConfigError("--clean and --replace exclude each other", hint="--replace alone also removes newer objects")
    if keep_old and not replace:
        raise ConfigError("--keep-old only applies to --replace")
    source = ctx.target(target)
    storage_name = storage or source.primary_storage
    manifest = find_backup(ctx.storage(storage_name), source.name, selector, now=ctx.clock(), kind="logical")
    server, database, is_default = resolve_destination(ctx, source, to, manifest)
    if databases.is_template(server, database):
        raise ConfigError(
            f"database '{database}' on target '{server.name}' is a template database; opskit never restores into one",
            hint="new databases are copied from it: restore into another database (omit --to for a new one)",
        )
    if is_default and not (clean or replace) and databases.database_exists(server, database):
        raise ConfigError(
            f"database '{database}' already exists on target '{server.name}' (restored earlier, or left by a "
            "restore the server interrupted?)",
            hint=f"drop it ({databases.drop_command(server, database)}), or pass --clean to restore over it",
        )
    _confirm_destination(ctx, server, database, confirmed, confirm)
    identity = chosen_identity(manifest, encoding, locale)
    if replace and databases.database_exists(server, database):
        return replace_route.replace_database(
            restore_backup,
            ctx,
            manifest,
            storage_name,
            server,
            database,
            jobs=jobs,
            no_owner=no_owner,
            keep_old=keep_old,
            identity=identity,
        )
    result = restore_backup(
        ctx, manifest, storage_name, server, database, jobs=jobs, clean=clean, no_owner=no_owner, identity=identity
    )
    if result.created and not result.ok:
        # A copy that differs from its manifest is no restore: remove it as any failed run's database.
        dropped = _drop_after_failure(server, database, "row counts differ from the manifest")
        left = (
            f"database '{database}' was dropped"
            if dropped
            else f"database '{database}' could not be dropped: {databases.drop_command(server, database)}"
        )
        raise replace_route.mismatch_error(manifest, result, left)
    return result


def confirmation_needed(ctx: AppContext, server: TargetConfig, database: str) -> tuple[str, str] | None:
    """Return (the prompt's reason, the refusal's words) when restoring over ``database`` needs confirmation, else None.

    It does for a protected target and for the server's ``postgres`` database.
    """
    protected = protected_target(ctx, server, database)
    if protected is not None:
        return f"Target '{protected.name}' is protected", f"target '{protected.name}' is protected"
    if database == MAINTENANCE_DATABASE:
        return (
            f"Database '{database}' is the server's maintenance database",
            f"'{database}' is the server's maintenance database",
        )
    return None


def _confirm_destination(
    ctx: AppContext, server: TargetConfig, database: str, confirmed: bool, confirm: Confirm | None
) -> None:
    """Ask for confirmation where :func:`confirmation_needed` says so.

    Raises ConfigError (2) when it is needed and neither ``confirmed`` (--yes) nor given by ``confirm``.
    """
    needed = confirmation_needed(ctx, server, database)
    if needed is None:
        return
    why, what = needed
    if confirmed or (confirm is not None and confirm(why, database)):
        return
    raise ConfigError(
        f"{what}; restoring into database '{database}' needs confirmation",
        hint="type the database name when asked, or pass --yes",
    )


def restore_to_new_database(
    ctx: AppContext,
    manifest: Manifest,
    storage_name: str,
    server: TargetConfig,
    dbname: str | None = None,
    jobs: int = 1,
    exit_on_error: bool = True,
    no_owner: bool = False,
    backup: OpenedBackup | None = None,
) -> RestoreResult:
    """Restore ``manifest`` into a fresh database on ``server`` (drills and rehearsals).

    ``dbname`` defaults to ``<db>_restore_<id>``; it must not exist yet. ``backup`` is the
    backup already opened by the caller (a drill's pre-checks), so its identity is not parsed again.
    """
    name = dbname or default_database_name(manifest)
    if databases.database_exists(server, name):
        raise ConfigError(
            f"database '{name}' already exists on target '{server.name}'", hint="drop it or pick another name"
        )
    return restore_backup(
        ctx,
        manifest,
        storage_name,
        server,
        name,
        jobs=jobs,
        exit_on_error=exit_on_error,
        no_owner=no_owner,
        backup=backup,
    )


def restore_backup(
    ctx: AppContext,
    manifest: Manifest,
    storage_name: str,
    server: TargetConfig,
    database: str,
    jobs: int = 1,
    clean: bool = False,
    exit_on_error: bool = True,
    no_owner: bool = False,
    backup: OpenedBackup | None = None,
    owner: str | None = None,
    identity: databases.DatabaseIdentity | None = None,
) -> RestoreResult:
    """Restore ``manifest`` into ``database`` on ``server``, creating it when missing.

    A database this creates gets ``owner`` and ``identity`` (encoding and locale; default: the
    manifest's). An existing one must be empty unless ``clean``, and then the whole backup is
    read once first (:func:`replace.prove_readable`), so a corrupt one cleans nothing, and
    pg_restore runs in one transaction with one job, so a failure or an interrupt leaves the
    database as it was.
    ``backup`` is ``manifest`` already opened in ``storage_name`` (see :func:`restore_to_new_database`).

    With ``exit_on_error`` False, pg_restore carries on past errors and they are returned
    in ``pg_restore_errors`` (a drill judges them against its allow-list).
    """
    storage = ctx.storage(storage_name)
    if backup is None:
        backup = open_backup(ctx, storage, manifest, server.pg_bin_dir or ctx.config.tools.pg_bin_dir)
    backup.check_can_decrypt()
    pg_restore = backup.pg_restore()
    # The maintenance database: the destination may not exist yet.
    with connection.connect(server, dbname="postgres", application_name="opskit restore") as conn:
        tools.check_restore_into(pg_restore, connection.server_facts(conn).major, backup.dump_major)

    if clean and jobs > 1:
        # One transaction is one connection: pg_restore refuses --single-transaction with --jobs.
        log.warning("--clean restores in one transaction, on one connection: --jobs is ignored", jobs=jobs)
        jobs = 1
    # The state directory is checked before anything is created or cleaned: one that cannot be made
    # is exit 2 with one line, not an OSError after the new database exists. The --jobs routes and
    # --clean's order file need it; --jobs 1 needs it only for a password file.
    state_dir = ctx.state_dir if jobs > 1 or clean else ctx.password_state_dir(server)
    created = False
    order: list[TocEntry] | None = None  # --clean over an existing database: the entries in an order it can drop
    if databases.database_exists(server, database):
        if not clean and not databases.database_is_empty(server, database):
            raise ConfigError(
                f"database '{database}' on target '{server.name}' is not empty",
                hint="pass --replace to swap in a restored copy, --clean to restore over its objects, "
                "or omit --to for a new database",
            )
        if clean:
            log.info("reading the whole backup before cleaning the destination", backup_id=manifest.id)
            toc = replace_route.prove_readable(backup)
            order = clean_order.drop_safe_order(toc) if toc is not None else None
    else:
        databases.create_database(
            server, database, owner=owner, identity=identity if identity is not None else manifest.database_identity
        )
        created = True
    result = RestoreResult(manifest, storage.name, server.name, database, created, jobs)
    log.info("restore started", backup_id=manifest.id, database=database, server=server.name, jobs=jobs)
    try:
        command = PgRestoreCommand(
            pg_restore, server, database, exit_on_error=exit_on_error, clean=clean, no_owner=no_owner
        )
        with connection.password_env(server, state_dir) as env:
            if jobs > 1:
                parallel.restore(ctx, backup, command, env, jobs, result)
            else:
                _restore_streaming(ctx, backup, command, env, result, order)
        started = time.monotonic()
        _check_rows(server, database, manifest, result)
        result.phases["verify"] = time.monotonic() - started
    except BaseException as exc:
        if created:
            _drop_after_failure(server, database, exc)
        raise
    log.info(
        "restore finished",
        backup_id=manifest.id,
        database=database,
        tables=result.tables_checked,
        mismatches=len(result.mismatches),
        duration_seconds=round(sum(result.phases.values()), 2),
    )
    return result


def _restore_streaming(
    ctx: AppContext,
    backup: OpenedBackup,
    command: PgRestoreCommand,
    env: dict[str, str],
    result: RestoreResult,
    order: list[TocEntry] | None = None,
) -> None:
    """Stream the archive into one pg_restore's stdin (no temp file); fill ``result``.

    ``order`` is every TOC entry in the order to restore them (see :mod:`opskit.pg.clean_order`);
    None keeps the archive's. Raises VerificationFailed (5) when a hash differs or the stored
    object is corrupt, RestoreFailed (4) when pg_restore fails.
    """
    started = time.monotonic()
    manifest = backup.manifest
    plain_size = manifest.artifact("db").plain_size  # what the progress counts: percent and ETA
    with (
        _order_options(ctx.state_dir, manifest.id, order) as ordered,
        spawn([*command.from_stdin(), *ordered], env=env, stdin=subprocess.PIPE) as child,
        ByteProgress(f"restore {manifest.id}", ctx.interactive, expected=plain_size) as progress,
    ):
        try:
            stats = backup.read("db", child.stdin, progress=progress)
            result.bytes_restored = stats.plain.size
            result.cpu = stats.cpu
            child.stdin.close()
        except BrokenPipeError:
            # pg_restore stopped reading. A corrupt object confuses it into odd errors ("out of
            # memory"), so check the stored bytes first and blame the object when they differ.
            child.wait()
            backup.check_stored_bytes("db")
        except VerificationFailed:
            child.kill()
            raise
        _finish_pg_restore(child, result, manifest, command.clean)
    result.phases["restore"] = time.monotonic() - started


@contextlib.contextmanager
def _order_options(state_dir: Path, backup_id: str, order: list[TocEntry] | None) -> Iterator[list[str]]:
    """Yield the pg_restore options restoring in ``order``: a ``-L`` list in ``state_dir``, removed after; none for None.

    Raises RestoreFailed (4) when the list cannot be written (before pg_restore starts).
    """
    if order is None:
        yield []
        return
    listing = state_dir / f"clean-{backup_id}-{random_tokens.token_hex(3)}.list"
    try:
        try:
            listing.write_text(clean_order.list_file_text(order))
        except OSError as exc:
            raise RestoreFailed(
                f"cannot write the order of the restore to {listing}: {exc.strerror or exc}; nothing was cleaned",
                hint="check tools.state_dir: it must be writable and have a little free space",
            ) from exc
        yield [f"--use-list={listing}"]
    finally:
        listing.unlink(missing_ok=True)


def _finish_pg_restore(child: Child, result: RestoreResult, manifest: Manifest, clean: bool) -> None:
    """Wait for pg_restore; raise RestoreFailed (4) when it failed and errors stop the restore."""
    code = child.wait()
    result.pg_restore_errors = list(child.error_lines)
    if code == 0:
        return
    if "--exit-on-error" in child.argv or not child.error_lines:
        child.check(
            RestoreFailed,
            f"pg_restore of backup {manifest.id} into '{result.database}' failed",
            hint=f"the message above is pg_restore's; {failure_note(result.database, result.created, clean)}"
            + clean_lock_advice(clean, child.stderr_tail()),
        )


def _check_rows(server: TargetConfig, database: str, manifest: Manifest, result: RestoreResult) -> None:
    """Compare every table's row count with the manifest, filling ``mismatches`` and ``tables_checked``.

    After the loader route the counts are the ones PostgreSQL reported for the COPYs into the new
    database, so the tables are not scanned again (on a large database that scan would add
    minutes to the restore); otherwise, or when a table of the manifest is not among the loaded
    ones, every table is counted, a few tables per transaction. Into an existing database
    (``--clean``), tables the backup does not hold were left alone: they are listed in
    ``extra_tables``, not compared.
    """
    loaded = result.rows_loaded
    if loaded is not None and all(t.qualified in loaded for t in manifest.tables):
        actual = [TableFacts(t.schema, t.name, loaded[t.qualified]) for t in manifest.tables]
    else:  # not loaded by opskit, or a table's name did not match: count them
        with connection.connect(server, dbname=database, application_name="opskit restore check") as conn:
            # A commit every few tables: in one transaction every table counted (and its indexes)
            # stays locked, and thousands of tables run the server's lock table out after the load.
            actual = facts.collect(conn, inclusive=manifest.counts_children, restart=conn.commit).tables
    if not result.created:
        backed_up = {t.qualified for t in manifest.tables}
        result.extra_tables = sorted(t.qualified for t in actual if t.qualified not in backed_up)
        actual = [t for t in actual if t.qualified in backed_up]
    result.tables_checked = len(actual)
    result.mismatches = facts.compare_rows(manifest.tables, actual)


def _drop_after_failure(server: TargetConfig, database: str, cause: BaseException | str) -> bool:
    """Drop the database this run created, waiting for a restarting server; return False (and name it) if that fails."""
    try:
        databases.drop_database(server, database, wait=databases.DROP_RETRY_SECONDS)
        log.info("dropped the partially restored database", database=database)
        return True
    except Exception as exc:  # the original failure matters more
        log.warning(
            "could not drop the partially restored database; drop it by hand",
            database=database,
            command=databases.drop_command(server, database),
            error=str(exc),
            cause=str(cause),
        )
        return False


def restore_globals(ctx: AppContext, manifest: Manifest, storage_name: str, server: TargetConfig) -> list[str]:
    """Replay the backup's ``globals.sql`` (roles, tablespaces) with psql; return psql's error lines.

    Roles that already exist produce harmless errors, so psql carries on past them.
    """
    backup = open_backup(ctx, ctx.storage(storage_name), manifest)
    backup.check_can_decrypt(GLOBALS_ARTIFACT)
    psql = tools.find_tool("psql", 0, server.pg_bin_dir or ctx.config.tools.pg_bin_dir)
    argv = psql_script_argv(psql, server)
    with (
        connection.password_env(server, ctx.state_dir) as env,
        spawn(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL) as child,
    ):
        try:
            backup.read(GLOBALS_ARTIFACT, child.stdin)
            child.stdin.close()
        except BrokenPipeError:
            pass
        child.check(RestoreFailed, f"replaying the globals of backup {manifest.id} failed")
        return list(child.error_lines)
