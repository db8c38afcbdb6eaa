"""``opskit unlock``: remove stale repository locks (or every lock with ``--all``)."""

from __future__ import annotations

import click

from opskit.cli import pass_app
from opskit.cli.render import echo_json
from opskit.context import AppContext


@click.command("unlock")
@click.option("--target", "-t", help="Only this target (default: every target).")
@click.option("--storage", "-s", help="Only this storage (default: all of the target's storages).")
@click.option(
    "--all",
    "all_locks",
    is_flag=True,
    help="Remove live locks too. Only when their holder is surely dead (a host that is gone).",
)
@click.option("--stale-only", is_flag=True, help="Remove only stale locks (the default).")
@click.option("--dry-run", is_flag=True, help="List the locks that would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def unlock(
    app: AppContext,
    target: str | None,
    storage: str | None,
    all_locks: bool,
    stale_only: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Remove stale repository locks: not refreshed for 10 minutes, or left by a process gone from this host.

    A live lock is kept (and listed) unless --all is given. Locks are aged by the storage's
    clock (read from a small probe object, written and removed, also with --dry-run), never
    by this host's.
    """
    from opskit.ops import unlock as action

    if all_locks and stale_only:
        raise click.UsageError("give --all or --stale-only, not both")
    report = action.run(app, target=target, storage=storage, all_locks=all_locks, dry_run=dry_run)
    if as_json:
        echo_json(report.to_dict())
        return
    verb = "would remove" if report.dry_run else "removed"
    for target_name, storage_name, key in report.removed:
        click.echo(f"{verb} lock {key} of target '{target_name}' in storage '{storage_name}'")
    for target_name, storage_name, holder in report.kept:
        click.echo(f"kept live lock of target '{target_name}' in storage '{storage_name}': {holder}")
    click.echo(f"{len(report.removed)} lock(s) {verb}, {len(report.kept)} live lock(s) kept")


def register(group: click.Group) -> None:
    """Add ``unlock``."""
    group.add_command(unlock)
