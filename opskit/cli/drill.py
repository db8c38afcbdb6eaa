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


def _parse_before(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError:
        raise ConfigError(
            f"--before '{text}' is not a timestamp with a time zone", hint="use e.g. 2026-11-26T17:00:00Z"
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
    as_json: bool,
) -> None:
    """Restore a backup into staging, run every check, and report.

    Exit 0 when it passed, 5 when a check failed, 6 when an objective (RPO/RTO) is breached.
    """
    chosen = sum(bool(x) for x in (backup_id, random_pick, before))
    if chosen > 1:
        raise ConfigError("--backup, --random and --before exclude each other", hint="pass one of them")
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
    click.echo(f"  staging database: {report.cleanup.get('action', 'none')}")
    for kind, where in report.reports.items():
        click.echo(f"  report ({kind}): {where}")


def register(group: click.Group) -> None:
    """Add ``drill``."""
    group.add_command(drill)
