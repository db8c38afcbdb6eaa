"""``opskit drill restore``: restore a backup into staging, check it, measure RPO/RTO, report."""

from __future__ import annotations

from datetime import datetime

import click

from opskit import actions
from opskit.catalog import parse_time
from opskit.cli import pass_app
from opskit.cli.render import echo_json
from opskit.context import AppContext
from opskit.core.errors import ConfigError
from opskit.drill import drill as drill_action
from opskit.plan.objectives import short


def _parse_before(text: str | None, option: str = "--before") -> datetime | None:
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError:
        raise ConfigError(
            f"{option} '{text}' is not a timestamp with a time zone", hint="use e.g. 2026-11-26T17:00:00Z"
        ) from None


@click.group("drill")
def drill() -> None:
    """Restore drills: prove backups restore, and measure RPO and RTO."""


@drill.command("restore")
@click.option("--target", "-t", help="Target whose backup to drill (default: the default target).")
@click.option("--backup", "backup_id", metavar="ID", help="Backup id or id prefix (default: the latest).")
@click.option("--random", "random_pick", is_flag=True, help="Pick a random complete backup.")
@click.option("--before", metavar="TIME", help="Pick the newest backup whose snapshot is before TIME (UTC ISO 8601).")
@click.option("--staging", metavar="TARGET", help="Target to restore into (default: the target's staging).")
@click.option("--database", metavar="NAME", help="Staging database name (default: opskit_drill_<target>_<id>).")
@click.option("--keep", is_flag=True, help="Keep the staging database afterwards.")
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False),
    help="Also write the reports (JSON, Markdown, HTML) here.",
)
@click.option("--trigger", default="manual", show_default=True, help="Recorded in the report (manual, schedule, ...).")
@click.option(
    "--pitr", is_flag=True, help="Point-in-time drill: a base backup and the WAL archive on a scratch server."
)
@click.option("--to-time", metavar="TIME", help="--pitr: recover to this moment inside the window (UTC ISO 8601).")
@click.option("--random-time", is_flag=True, help="--pitr: recover to a random moment inside the PITR window.")
@click.option("--scratch-dir", type=click.Path(file_okay=False), help="--pitr: where the scratch data directory goes.")
@click.option(
    "--opskit-command", metavar="CMD", help="--pitr: how the server runs opskit in restore_command (default: this)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_app
def restore(
    app: AppContext,
    target: str | None,
    backup_id: str | None,
    random_pick: bool,
    before: str | None,
    staging: str | None,
    database: str | None,
    keep: bool,
    report_dir: str | None,
    trigger: str,
    pitr: bool,
    to_time: str | None,
    random_time: bool,
    scratch_dir: str | None,
    opskit_command: str | None,
    as_json: bool,
) -> None:
    """Restore a backup into staging, run every check, and report.

    With --pitr: recover a base backup and the WAL archive to --to-time, --random-time or the
    archive's end on a scratch server, check it (pg_verifybackup, pg_amcheck), then remove it.
    Exit 0 when it passed, 2 for a moment outside the window, 5 when a check failed, 6 when an
    objective (RPO/RTO) is breached.
    """
    chosen = sum(bool(x) for x in (backup_id, random_pick, before))
    if chosen > 1:
        raise ConfigError("--backup, --random and --before exclude each other", hint="pass one of them")
    if pitr and (chosen or staging or database):
        raise ConfigError(
            "--pitr picks its base backup from the moment, on a scratch server",
            hint="drop --backup/--random/--before/--staging/--database, or use --to-time/--random-time",
        )
    pitr_options = (
        {
            "pitr": True,
            "to_time": _parse_before(to_time, "--to-time"),
            "random_time": random_time,
            "scratch_dir": scratch_dir,
            "opskit_command": opskit_command,
        }
        if pitr
        else {"to_time": _parse_before(to_time, "--to-time"), "random_time": random_time}
        if (to_time or random_time)
        else {}
    )
    report = actions.call(
        "drill",
        app,
        target=target,
        backup=backup_id,
        random_pick=random_pick,
        staging=staging,
        keep=keep,
        report_dir=report_dir,
        trigger=trigger,
        before=_parse_before(before),
        database=database,
        **pitr_options,
    )
    if as_json:
        echo_json(report.to_dict())
    else:
        _summary(report)
    report.raise_for_verdict()


def _summary(report: drill_action.DrillReport) -> None:
    manifest = report.manifest
    click.echo(f"drill {report.drill_id} of target '{report.target}': {report.verdict.upper()}")
    if manifest is not None:
        click.echo(f"  backup {manifest.id} ({report.storage}), snapshot {manifest.snapshot_time:%Y-%m-%d %H:%M:%SZ}")
    for check in report.checks:
        mark = "ok  " if check.ok else "FAIL"
        detail = "" if check.ok else f": expected {check.expected}, got {check.actual}"
        click.echo(f"  {mark} {check.subject:<7} {check.name}{detail}")
    loss = report.data_loss
    if loss is not None:
        click.echo(f"  data-loss window {short(loss)} (RPO target {short(report.rpo_target)})")
    if report.rto is not None:
        click.echo(
            f"  RTO measured {short(report.rto.measured)}, estimated {short(report.rto.estimated)} "
            f"(target {short(report.rto.target)}): {report.rto.status}"
        )
    else:
        click.echo("  RTO not measured: the restore did not finish")
    for text in report.breaches + report.warnings:
        click.echo(f"  {text}")
    if report.pitr is not None:
        _pitr_summary(report)
    else:
        click.echo(f"  staging database: {report.cleanup.get('action', 'none')}")
    for kind, where in report.reports.items():
        click.echo(f"  report ({kind}): {where}")


def _pitr_summary(report: drill_action.DrillReport) -> None:
    """Print the moment, the point reached and what became of the scratch server (how to use a kept one)."""
    from opskit.drill.pitr import describe_kept

    pitr = report.pitr or {}
    window = pitr.get("window") or {}
    reached = pitr.get("reached") or {}
    chosen = " (random)" if pitr.get("random_time") else ""
    click.echo(f"  recovered to {pitr.get('target')}{chosen}; window {window.get('start')} .. {window.get('end')}")
    if reached:
        click.echo(
            f"  reached LSN {reached.get('replay_lsn')}, last transaction {reached.get('last_transaction_time')}, "
            f"timeline {reached.get('timeline')}"
        )
    for skipped in report.skipped:
        click.echo(f"  skip    {skipped['name']}: {skipped['reason']}")
    click.echo(f"  scratch server: {report.cleanup.get('action', 'none')}")
    for line in describe_kept(report.to_dict()):
        click.echo(f"  {line}")


def register(group: click.Group) -> None:
    """Add ``drill``."""
    group.add_command(drill)
