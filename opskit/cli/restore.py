"""``opskit restore``."""

from __future__ import annotations

import sys
from typing import Any

import click

from opskit.cli import pass_app
from opskit.cli.render import echo_json
from opskit.cli.restore_pitr import pitr_options, run_pitr
from opskit.context import AppContext
from opskit.core.errors import VerificationFailed
from opskit.core.units import format_size
from opskit.restore import restore as restore_action


def _confirm_on_tty(why: str, database: str) -> bool:
    """Return True when the user types ``database`` after being told ``why`` it needs confirmation."""
    typed = click.prompt(
        f"{why}. Type the database name '{database}' to restore into it",
        default="",
        show_default=False,
        err=True,
    )
    return bool(typed == database)


@click.command("restore")
@click.argument("backup_id", metavar="ID|latest", required=False)
@click.option("--target", "-t", help="Target whose backup to restore (default: the default target).")
@click.option(
    "--to",
    "to",
    metavar="TARGET|DSN",
    help="Destination (default: a NEW database <db>_restore_<id>); a DSN must name its database (dbname=...).",
)
@click.option("--storage", "-s", help="Storage to read from (default: the target's primary).")
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Connections loading the data (one big table too) and pg_restore jobs for indexes; "
    "large objects spool the dump to the state directory instead; --clean always uses one.",
)
@click.option(
    "--clean",
    is_flag=True,
    help="Restore over a non-empty destination, dropping the objects the dump holds first; the whole "
    "backup is read and checked before anything is dropped, and the restore is one transaction "
    "(a failure or an interrupt leaves the destination as it was).",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Restore into a new database beside the destination, check it, then swap the names (objects made "
    "after the backup go too; sessions on the old database are terminated at the swap).",
)
@click.option("--keep-old", is_flag=True, help="With --replace: keep the old database under <db>_opskit_old_<hex>.")
@click.option("--encoding", metavar="NAME", help="Encoding of a new database (default: the backup's).")
@click.option("--locale", metavar="NAME", help="Collation and ctype of a new database, libc (default: the backup's).")
@click.option("--no-owner", is_flag=True, help="Skip ownership and privileges (restoring onto another server).")
@click.option(
    "--yes", "-y", is_flag=True, help="Confirm a restore into a protected target or 'postgres' without a prompt."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pitr_options
@pass_app
def restore(
    app: AppContext,
    backup_id: str | None,
    target: str | None,
    to: str | None,
    storage: str | None,
    jobs: int,
    clean: bool,
    replace: bool,
    keep_old: bool,
    encoding: str | None,
    locale: str | None,
    no_owner: bool,
    yes: bool,
    as_json: bool,
    pitr: bool,
    **pitr_options: Any,
) -> None:
    """Restore a backup (ID, an ID prefix, or 'latest') and check row counts against its manifest.

    With --pitr: restore a base backup into --pgdata and recover it with archived WAL to
    --to-time, --to-lsn, --to-name or --latest.
    """
    if pitr:
        run_pitr(app, backup_id, target, storage, as_json, pitr_options)
        return
    if backup_id is None:
        raise click.UsageError("missing the backup to restore: ID, an ID prefix or 'latest'")
    given = sorted(f"--{name.replace('_', '-')}" for name, value in pitr_options.items() if value)
    if given:
        raise click.UsageError(f"{', '.join(given)} only apply to --pitr")
    result = restore_action.run(
        app,
        selector=backup_id,
        target=target,
        to=to,
        storage=storage,
        jobs=jobs,
        clean=clean,
        confirmed=yes,
        confirm=_confirm_on_tty if app.interactive else None,
        no_owner=no_owner,
        replace=replace,
        keep_old=keep_old,
        encoding=encoding,
        locale=locale,
    )
    seconds = sum(result.phases.values())
    if as_json:
        echo_json(
            {
                "backup": result.manifest.id,
                "storage": result.storage,
                "server": result.server,
                "database": result.database,
                "created": result.created,
                "jobs": result.jobs,
                "route": result.route,
                "phases": result.phases,
                "cpu": result.cpu,
                "bytes": result.bytes_restored,
                "tables_checked": result.tables_checked,
                "mismatches": [m.__dict__ for m in result.mismatches],
                "extra_tables": result.extra_tables,
                "kept_old": result.kept_old,
            }
        )
    else:
        click.echo(
            f"restored backup {result.manifest.id} into database '{result.database}' on target '{result.server}' "
            f"({format_size(result.bytes_restored)} dump, {seconds:.1f} s)"
        )
        if result.ok:
            click.echo(f"row counts match the manifest for all {result.tables_checked} tables")
        for mismatch in result.mismatches:
            click.echo(
                f"row count mismatch: {mismatch.table}: expected {_rows(mismatch.expected)}, got {_rows(mismatch.actual)}"
            )
        if result.extra_tables:
            click.echo(
                f"{len(result.extra_tables)} tables the backup does not hold were left as they were: "
                + ", ".join(result.extra_tables)
            )
        if result.kept_old:
            click.echo(f"the old database is kept as '{result.kept_old}'; drop it when no longer needed")
    if not result.ok:
        click.echo(f"opskit: error: {len(result.mismatches)} tables differ from the manifest", err=True)
        sys.exit(VerificationFailed.exit_code)


def _rows(value: int | None) -> str:
    return "no such table" if value is None else f"{value} rows"


def register(group: click.Group) -> None:
    """Add ``restore``."""
    group.add_command(restore)
