"""``opskit copy``: replicate backups to secondary storages (3-2-1)."""

from __future__ import annotations

import sys

import click

from opskit import actions
from opskit.cli import pass_app
from opskit.cli.render import echo_json
from opskit.context import AppContext


@click.command("copy")
@click.option("--target", "-t", help="Only this target (default: every target).")
@click.option("--storage", "-s", help="Only this secondary storage.")
@click.option("--dry-run", is_flag=True, help="Say what would be copied; copy nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def copy(app: AppContext, target: str | None, storage: str | None, dry_run: bool, as_json: bool) -> None:
    """Copy every backup a target's primary storage has and a secondary lacks (idempotent).

    The archived WAL the secondary's base backups need goes too (first), so a copy can be
    recovered to a point in time from that storage. A backup the secondary's retention policy
    would delete is not copied (prune would delete it again).
    """
    app.dry_run = dry_run
    report = actions.call("copy", app, target=target, storage=storage, all_targets=target is None)
    if as_json:
        echo_json(
            {
                "copied": [dict(zip(("target", "storage", "backup"), row, strict=True)) for row in report.copied],
                "skipped": report.skipped,
                "not_retained": [
                    dict(zip(("target", "storage", "backup"), row, strict=True)) for row in report.not_retained
                ],
                "wal": [
                    {
                        "target": target_name,
                        "storage": storage_name,
                        "copied": wal.copied,
                        "present": wal.present,
                        "bytes": wal.bytes,
                    }
                    for target_name, storage_name, wal in report.wal
                ],
                "failed": [dict(zip(("target", "storage", "error"), row, strict=True)) for row in report.failed],
            }
        )
    else:
        verb = "would copy" if dry_run else "copied"
        for target_name, storage_name, wal in report.wal:
            click.echo(
                f"{verb} {len(wal.copied)} WAL file(s) of target '{target_name}' to '{storage_name}' "
                f"({wal.present} already present)"
            )
        for target_name, storage_name, backup_id in report.copied:
            click.echo(f"{verb} backup {backup_id} of target '{target_name}' to '{storage_name}'")
        for target_name, storage_name, backup_id in report.not_retained:
            click.echo(
                f"left out backup {backup_id} of target '{target_name}': "
                f"the retention policy would delete it from '{storage_name}'"
            )
        left_out = f", {len(report.not_retained)} left out by retention" if report.not_retained else ""
        click.echo(
            f"{len(report.copied)} {verb}, {report.skipped} already present{left_out}, {len(report.failed)} failed"
        )
    for target_name, storage_name, error in report.failed:
        click.echo(f"opskit: error: copy of target '{target_name}' to '{storage_name}' failed: {error}", err=True)
    if report.failed:
        sys.exit(report.exit_code)  # 3, 4, 5 or 7: core/errors.py's rule for verbs that carry on


def register(group: click.Group) -> None:
    """Add ``copy``."""
    group.add_command(copy)
