"""``opskit restore``."""

from __future__ import annotations

import sys

import click

from opskit.cli import pass_app
from opskit.cli.render import echo_json
from opskit.context import AppContext
from opskit.core.errors import VerificationFailed
from opskit.core.units import format_size
from opskit.restore import restore as restore_action


def _confirm_on_tty(target: str, database: str) -> bool:
    typed = click.prompt(
        f"Target '{target}' is protected. Type the database name '{database}' to restore into it",
        default="",
        show_default=False,
        err=True,
    )
    return bool(typed == database)


@click.command("restore")
@click.argument("backup_id", metavar="ID|latest")
@click.option("--target", "-t", help="Target whose backup to restore (default: the only one).")
@click.option("--to", "to", metavar="TARGET|DSN", help="Destination (default: a NEW database <db>_restore_<id>).")
@click.option("--storage", "-s", help="Storage to read from (default: the target's primary).")
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Connections loading the data (one big table too) and pg_restore jobs for indexes; "
    "--clean or large objects spool the dump to the state directory instead.",
)
@click.option("--clean", is_flag=True, help="Drop the destination's objects first (needed if it is not empty).")
@click.option(
    "--replace",
    is_flag=True,
    help="Drop and recreate the destination database first (also removes objects made after the backup).",
)
@click.option("--no-owner", is_flag=True, help="Skip ownership and privileges (restoring onto another server).")
@click.option("--yes", "-y", is_flag=True, help="Confirm a restore into a protected target without a prompt.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def restore(
    app: AppContext,
    backup_id: str,
    target: str | None,
    to: str | None,
    storage: str | None,
    jobs: int,
    clean: bool,
    replace: bool,
    no_owner: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Restore a backup (ID, an ID prefix, or 'latest') and check row counts against its manifest."""
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
                "bytes": result.bytes_restored,
                "tables_checked": result.tables_checked,
                "mismatches": [m.__dict__ for m in result.mismatches],
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
            click.echo(f"row count mismatch: {mismatch.table}: expected {mismatch.expected}, got {mismatch.actual}")
    if not result.ok:
        click.echo(f"opskit: error: {len(result.mismatches)} tables differ from the manifest", err=True)
        sys.exit(VerificationFailed.exit_code)


def register(group: click.Group) -> None:
    """Add ``restore``."""
    group.add_command(restore)
